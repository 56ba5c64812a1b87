//! Several anchors in order, and when the host leaves the one it talks to for the next.
//!
//! The host has one session with one anchor at a time. An anchor counts as gone when no path
//! to it has been up for [`Anchors::failover_after`] while the phone has a network (an uplink
//! with a socket, or an uplink's interface up with an address, whose socket toward this
//! anchor cannot be opened): nothing answers on any uplink (the probes of a live session, or
//! the handshakes of a new one), or the anchor cannot be reached at all (say, an IPv6-only
//! anchor from IPv4-only networks). Then the host moves to the next anchor in the list,
//! wrapping around to the first after the last. No network (airplane mode, no coverage) never
//! counts against the anchor.
//!
//! A failover costs every flow: each anchor has its own NAT, its own public address and may
//! give the host another virtual address, so a connection made through the old one cannot
//! continue through the new one. The host forgets its flows, and TCP ones are reset: their
//! keys are kept for [`LOST_FLOW_MEMORY`], and any segment an app still sends on one is
//! answered with a RST computed from it (as for blocked flows, see [`crate::rst`]); apps that
//! wait for data are asked for such a segment with two ACKs whose sequence numbers lie half the
//! sequence space apart, so at least one is outside the receive window and the app's TCP
//! answers it with a duplicate ACK at once (RFC 9293 3.10.7.4).
//!
//! The host stays on the anchor it failed over to until that one is gone too, or the daemon
//! restarts: going back to the first would reset every flow once more, and an anchor that came
//! back after an outage is not known to stay.
//!
//! A blackhole of every uplink at once that lasts longer than `failover_after` looks the same
//! as a gone anchor from the phone, and is handled the same.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use upmt_paft::FlowKey;
use upmt_proto::keys::PublicKey;
use upmt_proto::time::Instant;

/// How long no path may be up (with an uplink that has a socket) before the host moves to the
/// next anchor, unless the config says otherwise: a dead anchor's paths are Down within a
/// probe interval and a path timeout (<= 0.9 s while active), and this leaves about two
/// handshake attempts after that.
pub const DEFAULT_FAILOVER_AFTER: Duration = Duration::from_secs(5);
/// How long the keys of flows lost in a failover are kept, to reset what apps still send on
/// them.
pub const LOST_FLOW_MEMORY: Duration = Duration::from_secs(30);
/// Lost flows remembered at most; beyond, later ones are forgotten without a reset (the app's
/// TCP times out on its own).
pub const MAX_LOST_FLOWS: usize = 4096;

/// One anchor the host may talk to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnchorConfig {
    /// Its UDP endpoints, at most one per address family, preferred first.
    pub endpoints: Vec<SocketAddr>,
    /// Its static public key.
    pub public_key: PublicKey,
}

/// The last move to another anchor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failover {
    /// The position of the anchor left, in the config's order (0: the first).
    pub from: usize,
    /// When.
    pub at: Instant,
    /// TCP flows reset, and other flows forgotten.
    pub flows_reset: usize,
    pub flows_forgotten: usize,
}

/// The anchors in the config's order and which one is in use.
#[derive(Clone, Debug)]
pub struct Anchors {
    list: Vec<AnchorConfig>,
    failover_after: Duration,
    current: usize,
    /// Since when the current anchor is in use.
    since: Instant,
    /// Since when no path is up while an uplink has a socket.
    silent_since: Option<Instant>,
    last_failover: Option<Failover>,
    lost: HashSet<FlowKey>,
    lost_until: Option<Instant>,
}

impl Anchors {
    /// `first` alone, or followed by `fallbacks` in order; in use from `now`.
    pub fn new(
        first: AnchorConfig,
        fallbacks: Vec<AnchorConfig>,
        failover_after: Duration,
        now: Instant,
    ) -> Anchors {
        let mut list = Vec::with_capacity(1 + fallbacks.len());
        list.push(first);
        list.extend(fallbacks);
        Anchors {
            list,
            failover_after,
            current: 0,
            since: now,
            silent_since: None,
            last_failover: None,
            lost: HashSet::new(),
            lost_until: None,
        }
    }

    /// The anchor in use.
    pub fn current(&self) -> &AnchorConfig {
        &self.list[self.current]
    }

    /// Its position in the config's order (0: the first).
    pub fn index(&self) -> usize {
        self.current
    }

    /// How many anchors there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Never: there is always a first anchor.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The anchor at `index` in the config's order.
    pub fn get(&self, index: usize) -> Option<&AnchorConfig> {
        self.list.get(index)
    }

    /// Since when the anchor in use is.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// How long the host waits before it leaves a silent anchor.
    pub fn failover_after(&self) -> Duration {
        self.failover_after
    }

    /// The last move to another anchor, if any.
    pub fn last_failover(&self) -> Option<Failover> {
        self.last_failover
    }

    /// What the host's paths look like now: whether any path to the anchor is up, and whether
    /// the phone has a network.
    pub fn observe(&mut self, any_path_up: bool, any_network: bool, now: Instant) {
        if any_path_up || !any_network {
            self.silent_since = None;
        } else if self.silent_since.is_none() {
            self.silent_since = Some(now);
        }
    }

    /// Whether the anchor in use counts as gone at `now` (and there is another to try).
    pub fn failover_due(&self, now: Instant) -> bool {
        self.failover_deadline().is_some_and(|at| at <= now)
    }

    fn failover_deadline(&self) -> Option<Instant> {
        if self.list.len() < 2 {
            return None;
        }
        self.silent_since.map(|since| since + self.failover_after)
    }

    /// When [`Anchors::housekeeping`] or a failover check must run next.
    pub fn deadline(&self) -> Option<Instant> {
        [self.failover_deadline(), self.lost_until]
            .into_iter()
            .flatten()
            .min()
    }

    /// Forgets lost flows once their memory ran out.
    pub fn housekeeping(&mut self, now: Instant) {
        if self.lost_until.is_some_and(|at| at <= now) {
            self.lost = HashSet::new();
            self.lost_until = None;
        }
    }

    /// Moves to the next anchor (after the last: the first), remembering the TCP flows in
    /// `lost_tcp` (those of the old anchor) and how many others were forgotten. Returns the
    /// new anchor.
    pub fn fail_over(
        &mut self,
        lost_tcp: impl IntoIterator<Item = FlowKey>,
        forgotten: usize,
        now: Instant,
    ) -> &AnchorConfig {
        let from = self.current;
        self.current = (self.current + 1) % self.list.len();
        self.since = now;
        self.silent_since = None;
        let before = self.lost.len();
        for key in lost_tcp {
            if self.lost.len() >= MAX_LOST_FLOWS {
                break;
            }
            self.lost.insert(key);
        }
        self.lost_until = (!self.lost.is_empty()).then_some(now + LOST_FLOW_MEMORY);
        self.last_failover = Some(Failover {
            from,
            at: now,
            flows_reset: self.lost.len() - before,
            flows_forgotten: forgotten,
        });
        self.current()
    }

    /// Whether flows lost in a failover are still remembered (so TUN packets must be looked
    /// at for them).
    pub fn has_lost_flows(&self) -> bool {
        !self.lost.is_empty()
    }

    /// Whether `key` (either direction) is a TCP flow lost in a failover.
    pub fn is_lost(&self, key: &FlowKey) -> bool {
        !self.lost.is_empty() && (self.lost.contains(key) || self.lost.contains(&key.reversed()))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn anchor(n: u8) -> AnchorConfig {
        AnchorConfig {
            endpoints: vec![SocketAddr::new(Ipv4Addr::new(192, 0, 2, n).into(), 51900)],
            public_key: PublicKey::from_bytes([n; 32]),
        }
    }

    fn three(now: Instant) -> Anchors {
        Anchors::new(
            anchor(1),
            vec![anchor(2), anchor(3)],
            Duration::from_secs(5),
            now,
        )
    }

    fn at(ms: u64) -> Instant {
        Instant::ZERO + Duration::from_millis(ms)
    }

    fn key(sport: u16) -> FlowKey {
        FlowKey {
            proto: 6,
            src: IpAddr::V4(Ipv4Addr::new(10, 9, 0, 2)),
            dst: IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34)),
            sport,
            dport: 443,
        }
    }

    #[test]
    fn a_single_anchor_never_fails_over() {
        let mut a = Anchors::new(anchor(1), Vec::new(), Duration::from_secs(5), at(0));
        a.observe(false, true, at(0));
        assert!(!a.failover_due(at(60_000)));
        assert_eq!(a.deadline(), None);
    }

    #[test]
    fn silence_with_an_uplink_up_fails_over_after_the_wait_and_no_earlier() {
        let mut a = three(at(0));
        a.observe(true, true, at(0));
        assert_eq!(a.deadline(), None, "a path is up");
        a.observe(false, true, at(1_000));
        // Later observations of the same silence do not restart the wait.
        a.observe(false, true, at(3_000));
        assert_eq!(a.deadline(), Some(at(6_000)));
        assert!(!a.failover_due(at(5_999)));
        assert!(a.failover_due(at(6_000)));
    }

    #[test]
    fn no_uplink_with_a_socket_is_not_the_anchors_fault() {
        let mut a = three(at(0));
        a.observe(false, false, at(0));
        assert!(!a.failover_due(at(60_000)));
        a.observe(false, true, at(60_000));
        assert!(!a.failover_due(at(64_000)));
        assert!(a.failover_due(at(65_000)));
    }

    #[test]
    fn a_path_coming_back_cancels_the_wait() {
        let mut a = three(at(0));
        a.observe(false, true, at(0));
        a.observe(true, true, at(4_000));
        assert!(!a.failover_due(at(10_000)));
    }

    #[test]
    fn failover_takes_the_next_anchor_and_wraps_around_to_the_first() {
        let mut a = three(at(0));
        assert_eq!(a.fail_over([], 0, at(1)), &anchor(2));
        assert_eq!((a.index(), a.since()), (1, at(1)));
        assert_eq!(a.fail_over([], 0, at(2)).public_key, anchor(3).public_key);
        assert_eq!(a.fail_over([], 0, at(3)), &anchor(1));
        assert_eq!(a.last_failover().map(|f| f.from), Some(2));
    }

    #[test]
    fn lost_tcp_flows_are_known_in_both_directions_until_their_memory_runs_out() {
        let mut a = three(at(0));
        a.fail_over([key(5000)], 2, at(1_000));
        let f = a.last_failover().expect("failed over");
        assert_eq!((f.flows_reset, f.flows_forgotten), (1, 2));
        assert!(a.is_lost(&key(5000)));
        assert!(a.is_lost(&key(5000).reversed()));
        assert!(!a.is_lost(&key(5001)));
        assert_eq!(a.deadline(), Some(at(1_000) + LOST_FLOW_MEMORY));
        a.housekeeping(at(1_000) + LOST_FLOW_MEMORY);
        assert!(!a.has_lost_flows());
        assert!(!a.is_lost(&key(5000)));
    }
}
