//! Handover scenarios of the client and anchor cores on virtual time: a link cut, a blackhole
//! (with and without the client's signal), explicit flow moves, signals lost, duplicated and
//! reordered, a preferred uplink returning, a flapping link, and an anchor restart under load.

mod util;

use std::net::IpAddr;
use std::time::Duration;
use upmt_proto::anchor::{self, Anchor};
use upmt_proto::client::{Event, FlowKey, PathState};
use upmt_proto::time::Instant;
use upmt_proto::{HEADER_LEN, PathId, TAG_LEN};
use util::*;

const P0: PathId = PathId(0);
const P1: PathId = PathId(1);
/// Downlink packets per second of the simulated download.
const TICK: Duration = Duration::from_millis(10);
/// Datagram lengths of control packets: header + message + tag.
const PATH_STATUS_DATAGRAM: usize = HEADER_LEN + 11 + TAG_LEN;
const SIGNAL_ACK_DATAGRAM: usize = HEADER_LEN + 9 + TAG_LEN;

/// The flow of `down(port, ..)` / `up(port, ..)` as the anchor keys it.
fn flow(port: u16) -> FlowKey {
    FlowKey {
        protocol: 17,
        remote: IpAddr::V4(CH_V4),
        remote_port: 443,
        local_port: port,
    }
}

/// A connected pair whose flow 5000 is known to ride P0, probes running at the active pace.
fn downloading_pair(
    delays: &[u64],
    tweak: impl FnOnce(&mut upmt_proto::client::ClientConfig),
) -> Pair {
    let mut pair = Pair::new(delays, tweak);
    pair.run_for(Duration::from_secs(1));
    assert!(pair.connected());
    pair.client_send(P0, &up(5000, 0)).unwrap();
    pair.run_for(Duration::from_millis(500));
    assert_eq!(pair.anchor_send(&down(5000, 0)), Ok(P0));
    pair
}

/// Runs a downlink-only stream on flow 5000 for `d` (the client sends nothing but probes and
/// signals, like a download whose ACKs are out); returns (virtual send time, path) per packet.
fn stream(pair: &mut Pair, d: Duration, tag: &mut u32) -> Vec<(Instant, PathId)> {
    let end = pair.now + d;
    let mut sent = Vec::new();
    while pair.now < end {
        if let Ok(p) = pair.anchor_send(&down(5000, *tag)) {
            sent.push((pair.now, p));
        }
        *tag += 1;
        pair.run_for(TICK);
    }
    sent
}

/// The longest time between two packets the client's TUN received, over the tags it got.
fn longest_gap(pair: &Pair, sent: &[(Instant, u32)]) -> Duration {
    let got: std::collections::HashSet<u32> = pair
        .client_rx
        .iter()
        .map(|p| u32::from_be_bytes([p[28], p[29], p[30], p[31]]))
        .collect();
    let times: Vec<Instant> = sent
        .iter()
        .filter(|(_, t)| got.contains(t))
        .map(|(at, _)| *at)
        .collect();
    times
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]))
        .max()
        .unwrap_or(Duration::MAX)
}

#[test]
fn a_cut_link_moves_the_downlink_within_one_round_trip_of_the_signal() {
    let mut pair = downloading_pair(&[10, 20], |_| {});
    pair.anchor_events.clear();
    pair.links[0].blackholed = true;
    let cut = pair.now;
    pair.client.handle_path_down(P0, pair.now);
    pair.flush();
    // One uplink trip on P1 (20 ms) and the anchor knows.
    pair.run_for(Duration::from_millis(25));
    assert!(
        pair.anchor_events
            .contains(&anchor::Event::PathStatusChanged {
                peer: upmt_proto::PeerId(0),
                path: P0,
                down: true
            })
    );
    assert_eq!(pair.anchor_send(&down(5000, 1)), Ok(P1));
    pair.run_for(Duration::from_millis(25));
    assert_eq!(pair.client.pending_signals(), 0, "the signal was acked");
    assert_eq!(pair.client_rx.last(), Some(&down(5000, 1)));
    assert!(pair.now - cut < Duration::from_millis(100));
}

#[test]
fn a_blackholed_link_under_a_download_is_detected_and_left_within_one_second() {
    let mut pair = downloading_pair(&[10, 20], |_| {});
    let mut tag = 1;
    let before = stream(&mut pair, Duration::from_secs(1), &mut tag);
    assert!(before.iter().all(|(_, p)| *p == P0));
    pair.links[0].blackholed = true;
    let cut = pair.now;
    let first_tag = tag;
    let after = stream(&mut pair, Duration::from_secs(3), &mut tag);
    pair.run_for(Duration::from_millis(100));
    let moved_at = after
        .iter()
        .find(|(_, p)| *p == P1)
        .map(|(at, _)| *at)
        .expect("the download never moved to P1");
    assert!(
        moved_at - cut <= Duration::from_secs(1),
        "moved after {:?}",
        moved_at - cut
    );
    assert!(pair.client_events.contains(&Event::PathDown(P0)));
    // Everything sent on P1 arrived.
    let on_p1 = after.iter().filter(|(_, p)| *p == P1).count();
    assert!(pair.client_rx.len() >= before.len() + on_p1);
    let tags: Vec<(Instant, u32)> = before
        .iter()
        .chain(after.iter())
        .zip(first_tag - before.len() as u32..)
        .map(|((at, _), t)| (*at, t))
        .collect();
    assert!(longest_gap(&pair, &tags) <= Duration::from_secs(1));
}

#[test]
fn the_anchor_leaves_a_stale_path_even_when_the_client_never_says_so() {
    // A client that would take a minute to call the path down: only the anchor's staleness
    // rule can move the download.
    let mut pair = downloading_pair(&[10, 20], |c| c.path_timeout = Duration::from_secs(60));
    let mut tag = 1;
    stream(&mut pair, Duration::from_millis(500), &mut tag);
    pair.links[0].blackholed = true;
    let cut = pair.now;
    let after = stream(&mut pair, Duration::from_secs(2), &mut tag);
    assert!(!pair.client_events.contains(&Event::PathDown(P0)));
    let moved_at = after
        .iter()
        .find(|(_, p)| *p == P1)
        .map(|(at, _)| *at)
        .expect("the anchor kept sending on the stale path");
    let stale = upmt_proto::anchor::DEFAULT_PATH_STALE_AFTER;
    assert!(moved_at - cut <= stale + Duration::from_millis(50));
    assert!(
        after
            .iter()
            .skip_while(|(_, p)| *p == P0)
            .all(|(_, p)| *p == P1)
    );
}

#[test]
fn a_lost_ack_makes_the_client_resend_and_the_anchor_applies_the_signal_once() {
    let mut pair = downloading_pair(&[10, 20], |_| {});
    pair.anchor_events.clear();
    pair.client.handle_path_down(P0, pair.now);
    pair.links[0].blackholed = true;
    pair.flush();
    // Drop every signal ack for 1 s.
    let end = pair.now + Duration::from_secs(1);
    while pair.now < end {
        pair.inflight
            .retain(|f| f.to_anchor || f.bytes.len() != SIGNAL_ACK_DATAGRAM);
        pair.run_for(Duration::from_millis(5));
    }
    let stats = pair.client.signal_stats();
    assert!(stats.sent >= 3, "{stats:?}");
    assert_eq!(pair.client.pending_signals(), 1);
    let applied = pair
        .anchor_events
        .iter()
        .filter(|e| {
            matches!(
                e,
                anchor::Event::PathStatusChanged {
                    path: P0,
                    down: true,
                    ..
                }
            )
        })
        .count();
    assert_eq!(applied, 1, "duplicates were applied again");
    pair.run_for(Duration::from_secs(3));
    assert_eq!(pair.client.pending_signals(), 0);
}

#[test]
fn a_late_signal_does_not_undo_a_newer_one() {
    let mut pair = downloading_pair(&[10, 20], |_| {});
    // P0 goes down, and its signal is held back in the network.
    pair.client.handle_path_down(P0, pair.now);
    pair.flush();
    let i = pair
        .inflight
        .iter()
        .position(|f| f.to_anchor && f.bytes.len() == PATH_STATUS_DATAGRAM)
        .expect("a path status in flight");
    let late = pair.inflight.remove(i);
    // P0 is back: the client says so, and that newer signal arrives first.
    pair.client.handle_path_up(P0, pair.now);
    pair.run_for(Duration::from_millis(300));
    assert_eq!(pair.client.path_stats(P0).unwrap().state, PathState::Up);
    pair.client_send(P0, &up(5000, 1)).unwrap();
    pair.run_for(Duration::from_millis(50));
    // The stale "down" arrives now: accepted (its counter is new), acked, not applied.
    pair.deliver(true, late.path, late.bytes);
    assert_eq!(pair.anchor_send(&down(5000, 2)), Ok(P0));
    pair.run_for(Duration::from_millis(100));
    assert!(pair.anchor_errs.is_empty(), "{:?}", pair.anchor_errs);
}

#[test]
fn an_explicit_flow_move_takes_effect_at_the_anchor_before_any_uplink_data() {
    let mut pair = downloading_pair(&[10, 20], |_| {});
    pair.anchor_events.clear();
    pair.client.move_flows(&[flow(5000)], P1, pair.now);
    pair.flush();
    pair.run_for(Duration::from_millis(25));
    assert!(pair.anchor_events.contains(&anchor::Event::FlowMoved {
        peer: upmt_proto::PeerId(0),
        flow: flow(5000),
        path: P1
    }));
    assert_eq!(pair.anchor_send(&down(5000, 1)), Ok(P1));
    // Other flows are not moved.
    pair.client_send(P0, &up(6000, 1)).unwrap();
    pair.run_for(Duration::from_millis(25));
    assert_eq!(pair.anchor_send(&down(6000, 1)), Ok(P0));
    pair.run_for(Duration::from_millis(50));
    assert_eq!(pair.client.pending_signals(), 0);
}

#[test]
fn reordered_flow_moves_leave_the_flow_on_the_newest_path() {
    let mut pair = downloading_pair(&[10, 10], |_| {});
    pair.client.move_flows(&[flow(5000)], P1, pair.now);
    pair.flush();
    let first: Vec<_> = pair.inflight.drain(..).filter(|f| f.to_anchor).collect();
    pair.run_for(Duration::from_millis(1));
    pair.client.move_flows(&[flow(5000)], P0, pair.now);
    pair.flush();
    pair.run_for(Duration::from_millis(50));
    for f in first {
        pair.deliver(true, f.path, f.bytes);
    }
    assert_eq!(pair.anchor_send(&down(5000, 1)), Ok(P0));
}

#[test]
fn a_returning_preferred_uplink_is_used_only_after_the_hold_down() {
    let mut pair = downloading_pair(&[10, 20], |_| {});
    pair.run_for(Duration::from_secs(4));
    assert!(pair.client.path_usable(P0, pair.now));
    pair.links[0].blackholed = true;
    pair.client.handle_path_down(P0, pair.now);
    pair.run_for(Duration::from_secs(2));
    assert!(!pair.client.path_usable(P0, pair.now));
    assert!(pair.client.path_usable(P1, pair.now));
    pair.links[0].blackholed = false;
    pair.client.handle_path_up(P0, pair.now);
    pair.run_for(Duration::from_millis(300));
    assert_eq!(pair.client.path_stats(P0).unwrap().state, PathState::Up);
    let up_at = pair.now;
    while !pair.client.path_usable(P0, pair.now) {
        assert!(
            pair.now - up_at < Duration::from_secs(4),
            "never usable again"
        );
        pair.run_for(Duration::from_millis(50));
    }
    let waited = pair.now - up_at;
    assert!(waited >= Duration::from_millis(2600), "{waited:?}");
}

#[test]
fn a_flapping_link_never_becomes_usable_while_it_flaps() {
    let mut pair = downloading_pair(&[10, 20], |_| {});
    pair.run_for(Duration::from_secs(4));
    let mut tag = 1;
    for cycle in 0..6 {
        pair.links[0].blackholed = true;
        stream(&mut pair, Duration::from_millis(1500), &mut tag);
        assert!(!pair.client.path_usable(P0, pair.now), "cycle {cycle}");
        pair.links[0].blackholed = false;
        let end = pair.now + Duration::from_millis(1500);
        while pair.now < end {
            assert!(!pair.client.path_usable(P0, pair.now), "cycle {cycle}");
            stream(&mut pair, Duration::from_millis(50), &mut tag);
        }
    }
    let downs = pair
        .client_events
        .iter()
        .filter(|e| **e == Event::PathDown(P0))
        .count();
    assert!(downs >= 5, "the flaps were not seen: {downs}");
    assert!(pair.client.path_usable(P1, pair.now));
    // Stable again: usable after the hold-down.
    pair.run_for(Duration::from_secs(4));
    assert!(pair.client.path_usable(P0, pair.now));
}

#[test]
fn an_anchor_restart_under_a_download_costs_about_a_second() {
    let mut pair = downloading_pair(&[10, 20], |_| {});
    let mut tag = 1;
    stream(&mut pair, Duration::from_millis(500), &mut tag);
    pair.client_events.clear();
    pair.anchor = Anchor::new(anchor_config(&pair.an_secret, &pair.mh_secret), pair.now);
    let restart = pair.now;
    // The new anchor has no session: downlink fails until the client handshakes again, and the
    // client keeps sending uplink data, which the new anchor cannot read.
    let mut reconnected = None;
    while pair.now - restart < Duration::from_secs(5) {
        let _ = pair.client_send(P0, &up(5000, tag));
        tag += 1;
        pair.run_for(TICK);
        if reconnected.is_none()
            && pair
                .client_events
                .iter()
                .any(|e| matches!(e, Event::Connected(_)))
        {
            reconnected = Some(pair.now);
        }
    }
    let at = reconnected.expect("no re-handshake");
    assert!(
        at - restart <= Duration::from_millis(1500),
        "{:?}",
        at - restart
    );
    assert_eq!(pair.anchor_send(&down(5000, tag)), Ok(P0));
    pair.run_for(Duration::from_millis(50));
    assert_eq!(pair.client_rx.last(), Some(&down(5000, tag)));
}

#[test]
fn an_idle_client_probes_at_the_keepalive_pace_only() {
    let mut pair = Pair::new(&[10, 20], |_| {});
    pair.run_for(Duration::from_secs(10)); // past the active window of the handshake's probes
    let before = pair.uplink_log.len();
    pair.run_for(Duration::from_secs(60));
    let probes = pair.uplink_log.len() - before;
    // 2 paths, one probe per 25 s each (plus nothing else).
    assert!((4..=6).contains(&probes), "{probes} datagrams in 60 s idle");
    assert_eq!(pair.client.path_stats(P0).unwrap().state, PathState::Up);
    assert_eq!(pair.client.path_stats(P1).unwrap().state, PathState::Up);
}

#[test]
fn a_lossy_path_is_measured_as_lossy_but_kept_and_the_download_continues() {
    let mut pair = downloading_pair(&[10, 20], |_| {});
    // One datagram in four vanishes on P0, both ways, at random; P1 is clean.
    pair.links[0].drop_one_in = 4;
    let mut tag = 1;
    let sent = stream(&mut pair, Duration::from_secs(10), &mut tag);
    pair.run_for(Duration::from_millis(100));
    let p0 = pair.client.path_stats(P0).expect("P0 stats");
    let p1 = pair.client.path_stats(P1).expect("P1 stats");
    assert!(p0.loss > 0.1, "P0 loss measured as {}", p0.loss);
    assert!(p1.loss < 0.05, "P1 loss measured as {}", p1.loss);
    // Loss alone does not take the path down or the session with it.
    assert_eq!(p0.state, PathState::Up);
    assert!(!pair.client_events.contains(&Event::PathDown(P0)));
    assert!(!pair.client_events.contains(&Event::Disconnected));
    // Most of the download arrived, and none of it twice.
    let got = pair.client_rx.len();
    assert!(
        got * 10 >= sent.len() * 6,
        "{got} of {} arrived",
        sent.len()
    );
    assert!(got <= sent.len());
}
