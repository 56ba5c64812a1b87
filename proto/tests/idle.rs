//! Scenario tests of what an idle session costs: which timers wake the client, and how often it
//! sends, on a simulated network with virtual time.

mod util;

use std::time::Duration;
use upmt_proto::timer::Timer;
use upmt_proto::wire::Kind;
use util::*;

const KEEPALIVE: Duration = Duration::from_secs(25);

/// Runs `pair` for `d` and returns every client timer that woke it (at rest: no datagram was
/// due before it).
fn client_wakes(pair: &mut Pair, d: Duration) -> Vec<(Duration, Timer)> {
    let start = pair.now;
    let end = start + d;
    let mut wakes = Vec::new();
    while let Some((at, timer)) = pair.client.poll_timeout() {
        if at > end {
            break;
        }
        let arrival = pair.inflight.iter().map(|f| f.at).min();
        if arrival.is_none_or(|a| at < a) {
            wakes.push((at.saturating_duration_since(start), timer));
        }
        pair.run_for(at.saturating_duration_since(pair.now));
    }
    pair.run_for(end.saturating_duration_since(pair.now));
    wakes
}

#[test]
fn an_idle_session_schedules_no_timer_earlier_than_its_next_keepalive_or_rekey_deadline() {
    let mut pair = Pair::new(&[20, 40], |c| c.keepalive = KEEPALIVE);
    // Connect, then let the active window after the handshake pass.
    pair.run_for(Duration::from_secs(30));
    assert!(pair.connected());
    let inits_before = pair
        .uplink_log
        .iter()
        .filter(|(_, b)| b[0] == Kind::HandshakeInit.first_byte())
        .count();
    let sent_before = pair.uplink_log.len();

    // Ten idle minutes: five rekey intervals, 24 keepalives per path.
    let wakes = client_wakes(&mut pair, Duration::from_secs(600));
    for (at, timer) in &wakes {
        assert_eq!(
            *timer,
            Timer::Probe,
            "an idle client woke at {at:?} for {timer}, not for a keepalive"
        );
    }
    // Both paths' keepalives may fall apart: at most one wake per keepalive per path.
    let most = 2 * (600 / KEEPALIVE.as_secs() as usize + 1);
    assert!(
        wakes.len() <= most,
        "{} wakes in 10 idle minutes, expected at most {most}: {wakes:?}",
        wakes.len()
    );
    // Consecutive wakes for the same path are a keepalive apart: none comes early.
    let mut gaps: Vec<Duration> = wakes.windows(3).map(|w| w[2].0 - w[0].0).collect();
    gaps.sort();
    if let Some(shortest) = gaps.first() {
        assert!(
            *shortest + Duration::from_millis(100) >= KEEPALIVE,
            "two wakes per path closer than a keepalive: {wakes:?}"
        );
    }

    // The keys were still replaced, lazily on keepalives, and the session never dropped.
    assert!(pair.connected());
    let inits = pair.uplink_log[sent_before..]
        .iter()
        .filter(|(_, b)| b[0] == Kind::HandshakeInit.first_byte())
        .count();
    assert!(
        inits >= 4,
        "expected a rekey about every 2 min, saw {inits} inits (and {inits_before} before)"
    );
    assert!(
        !pair
            .client_events
            .contains(&upmt_proto::client::Event::Disconnected),
        "the idle session dropped"
    );
}

#[test]
fn the_first_packet_after_the_rekey_interval_starts_the_rekey() {
    let mut pair = Pair::new(&[20], |c| {
        c.keepalive = Duration::from_secs(300);
        c.rekey_after = Duration::from_secs(60);
    });
    pair.run_for(Duration::from_secs(70));
    assert!(pair.connected());
    let inits = |pair: &Pair| {
        pair.uplink_log
            .iter()
            .filter(|(_, b)| b[0] == Kind::HandshakeInit.first_byte())
            .count()
    };
    // No timer rekeyed the idle session past its interval.
    assert_eq!(inits(&pair), 1);
    pair.client_send(upmt_proto::PathId(0), &up(5000, 1))
        .unwrap();
    pair.flush();
    assert_eq!(
        inits(&pair),
        2,
        "the packet after the interval did not start a rekey"
    );
    pair.run_for(Duration::from_secs(1));
    assert!(pair.connected());
    assert_eq!(pair.anchor_rx.len(), 1);
}

/// A pair on one path behind a NAT that forgets a binding after `nat_timeout` of outbound
/// silence, with keepalive learning up to 10 min; connected and past the active window.
fn pair_behind_nat(nat_timeout: Duration) -> Pair {
    let mut pair = Pair::new(&[20], |c| {
        c.keepalive = KEEPALIVE;
        c.keepalive_max = Some(Duration::from_secs(600));
    });
    pair.links[0].nat_timeout = Some(nat_timeout);
    pair.run_for(Duration::from_secs(10));
    assert!(pair.connected());
    pair
}

#[test]
fn keepalive_learning_rises_toward_the_nat_timeout_and_falls_back_when_a_binding_is_lost() {
    let p0 = upmt_proto::PathId(0);
    let nat = Duration::from_secs(90);
    let mut pair = pair_behind_nat(nat);
    pair.run_for(Duration::from_secs(3600));
    let learned = pair.client.path_keepalive(p0).unwrap();
    assert!(
        learned < nat && learned + Duration::from_secs(20) >= nat,
        "after an hour the keepalive is {learned:?}, the NAT forgets after {nat:?}"
    );
    assert!(
        pair.client.path_binding_lost_after(p0).is_some(),
        "the probe never found the NAT's limit"
    );
    // Once learned, the binding holds: no more rebinding in the next hour, fewer keepalives.
    let rebinds = pair.links[0].nat_rebinds;
    assert!(rebinds <= 2, "{rebinds} bindings lost while learning");
    let sent = pair.uplink_log.len();
    pair.run_for(Duration::from_secs(3600));
    assert_eq!(
        pair.links[0].nat_rebinds, rebinds,
        "a learned interval lost the binding"
    );
    let per_hour = pair.uplink_log.len() - sent;
    assert!(
        per_hour < 3600 / KEEPALIVE.as_secs() as usize,
        "{per_hour} datagrams in an idle hour: no fewer than at the fixed keepalive"
    );
    assert!(pair.connected());
    assert_eq!(
        pair.client.path_stats(p0).unwrap().state,
        upmt_proto::client::PathState::Up
    );

    // The NAT now forgets after 30 s: the first lost binding brings the interval below it at
    // once; relearning may lose one more, then it holds.
    let nat = Duration::from_secs(30);
    let rebinds = pair.links[0].nat_rebinds;
    pair.shorten_nat_until_a_binding_is_lost(0, nat, Duration::from_secs(200));
    let fallback = pair.client.path_keepalive(p0).unwrap();
    assert!(
        fallback < nat,
        "after a lost binding the keepalive is {fallback:?}"
    );
    pair.run_for(Duration::from_secs(1200));
    let after = pair.links[0].nat_rebinds;
    assert!(
        after <= rebinds + 2,
        "{} bindings lost relearning",
        after - rebinds
    );
    pair.run_for(Duration::from_secs(1200));
    assert_eq!(
        pair.links[0].nat_rebinds, after,
        "the relearned interval loses bindings"
    );
    assert!(pair.client.path_keepalive(p0).unwrap() < nat);
    assert!(pair.connected());
}

#[test]
fn without_learning_the_keepalive_stays_fixed_behind_any_nat() {
    let p0 = upmt_proto::PathId(0);
    let mut pair = Pair::new(&[20], |c| c.keepalive = KEEPALIVE);
    pair.links[0].nat_timeout = Some(Duration::from_secs(90));
    pair.run_for(Duration::from_secs(1800));
    assert_eq!(pair.client.path_keepalive(p0), Some(KEEPALIVE));
    assert_eq!(pair.links[0].nat_rebinds, 0);
}

/// Datagrams the client sent on `path` since `from` (an index into the uplink log).
fn sent_on(pair: &Pair, path: upmt_proto::PathId, from: usize) -> usize {
    pair.uplink_log[from..]
        .iter()
        .filter(|(p, _)| *p == path)
        .count()
}

#[test]
fn a_session_without_flows_only_checks_each_path_once_per_flowless_interval() {
    use upmt_proto::client::Idle;
    let (p0, p1) = (upmt_proto::PathId(0), upmt_proto::PathId(1));
    let mut pair = Pair::new(&[20, 40], |c| c.keepalive = KEEPALIVE);
    pair.run_for(Duration::from_secs(30));
    assert!(pair.connected());
    let now = pair.now;
    pair.client.set_path_idle(p0, Idle::Check, now);
    pair.client.set_path_idle(p1, Idle::Check, now);
    let from = pair.uplink_log.len();

    // Ten idle minutes: at most one check per 120 s per path, plus the lazy rekeys riding on
    // them (an init on one path each time).
    let wakes = client_wakes(&mut pair, Duration::from_secs(600));
    let (s0, s1) = (sent_on(&pair, p0, from), sent_on(&pair, p1, from));
    let rekeys = 600 / 120 + 1;
    assert!(
        s0 + s1 <= 2 * (600 / 120 + 1) + rekeys,
        "{s0} + {s1} datagrams in 10 flowless minutes"
    );
    assert!(s0 >= 4 && s1 >= 4, "a path went unchecked: {s0}, {s1}");
    assert!(
        wakes.len() <= 2 * (600 / 120 + 1),
        "{} wakes in 10 flowless minutes: {wakes:?}",
        wakes.len()
    );
    assert!(pair.connected());
    assert!(
        !pair
            .client_events
            .contains(&upmt_proto::client::Event::Disconnected),
        "the flowless session dropped"
    );

    // Flows again: back to the binding's keepalive from the last thing sent.
    let now = pair.now;
    pair.client.set_path_idle(p0, Idle::Keepalive, now);
    let from = pair.uplink_log.len();
    pair.run_for(Duration::from_secs(120));
    assert!(
        sent_on(&pair, p0, from) >= 120 / KEEPALIVE.as_secs() as usize,
        "a path with flows went back to {} datagrams in 2 idle minutes",
        sent_on(&pair, p0, from)
    );
}

#[test]
fn an_asleep_path_sends_nothing_for_an_hour_and_its_first_packet_wakes_it() {
    use upmt_proto::client::{Idle, PathState};
    let (p0, p1) = (upmt_proto::PathId(0), upmt_proto::PathId(1));
    let mut pair = Pair::new(&[20, 40], |c| c.keepalive = KEEPALIVE);
    pair.run_for(Duration::from_secs(30));
    assert!(pair.connected());
    let now = pair.now;
    pair.client.set_path_idle(p1, Idle::Sleep, now);
    let from = pair.uplink_log.len();

    // An hour with traffic now and then on the other path: the sleeper stays silent through
    // active periods, keepalives and rekeys alike.
    for minute in 0..60u32 {
        if minute % 10 == 0 {
            pair.client_send(p0, &up(5000, minute)).unwrap();
        }
        pair.run_for(Duration::from_secs(60));
    }
    assert_eq!(
        sent_on(&pair, p1, from),
        0,
        "the asleep path sent during an hour"
    );
    assert!(sent_on(&pair, p0, from) > 0);
    assert!(pair.connected());
    assert_eq!(
        pair.client.path_stats(p1).unwrap().idle,
        Idle::Sleep,
        "status must say it is asleep"
    );

    // Behind a NAT that forgot it long ago, the first packet on it is delivered, and the path
    // is probed and validated again within a round trip.
    pair.links[1].nat_timeout = Some(Duration::from_secs(60));
    let delivered = pair.anchor_rx.len();
    let rebinds = pair.links[1].nat_rebinds;
    pair.client_send(p1, &up(6000, 1)).unwrap();
    pair.run_for(Duration::from_millis(100));
    assert_eq!(
        pair.anchor_rx.len(),
        delivered + 1,
        "the first packet was lost"
    );
    assert_eq!(pair.links[1].nat_rebinds, rebinds + 1);
    let stats = pair.client.path_stats(p1).unwrap();
    assert_eq!(stats.state, PathState::Up);
    assert_eq!(stats.idle, Idle::Keepalive, "data did not wake the path");
    let answered = stats.rx_packets;
    pair.run_for(Duration::from_millis(200));
    assert!(
        pair.client.path_stats(p1).unwrap().rx_packets > answered || stats.rtt.is_some(),
        "the woken path was not probed"
    );
    // Downlink for a flow on it reaches the client over its new binding.
    let got = pair.client_rx.len();
    pair.anchor_send(&down(6000, 2)).unwrap();
    pair.run_for(Duration::from_millis(100));
    assert_eq!(pair.client_rx.len(), got + 1, "downlink lost after waking");
}
