//! The clockwork both simulated networks of the core's tests share: when something happens
//! next, which datagrams are due, and running the two cores' timers. Each test file keeps its
//! own links and delivery rules.

#![allow(dead_code)]

use upmt_mh_core::MobileHost;
use upmt_proto::anchor::Anchor;
use upmt_proto::time::Instant;

/// The earliest of the host's and the anchor's timers and the datagrams' arrivals.
pub fn next_wake(
    host: &MobileHost,
    anchor: &Anchor,
    arrivals: impl Iterator<Item = Instant>,
) -> Option<Instant> {
    [
        host.poll_timeout(),
        arrivals.min(),
        anchor.poll_timeout().map(|(t, _)| t),
    ]
    .into_iter()
    .flatten()
    .min()
}

/// Takes the datagrams due at `now` out of `inflight`, earliest first.
pub fn take_due<F>(inflight: &mut Vec<F>, now: Instant, at: impl Fn(&F) -> Instant) -> Vec<F> {
    inflight.sort_by_key(&at);
    let due = inflight.iter().take_while(|f| at(f) <= now).count();
    inflight.drain(..due).collect()
}

/// Runs the timers of both cores that are due at `now` (the host's may run early).
pub fn run_timers(host: &mut MobileHost, anchor: &mut Anchor, now: Instant) {
    host.handle_timeout(now);
    if anchor.poll_timeout().is_some_and(|(t, _)| t <= now) {
        anchor.handle_timeout(now);
    }
}
