//! Resending what was in flight: when a blackholed path is declared down and its flow moves,
//! the packets sent into the blackhole reach the other side over the new path, exactly once,
//! and a copy that still turns up late on the old path is dropped as a duplicate, not as a
//! replay.

mod util;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;
use upmt_proto::anchor::MOVE_RESEND_SILENCE;
use upmt_proto::client::{Event, FlowKey};
use upmt_proto::{DropReason, PathId};
use util::*;

const P0: PathId = PathId(0);
const P1: PathId = PathId(1);
const PORT: u16 = 5000;
const TICK: Duration = Duration::from_millis(2);

fn flow() -> FlowKey {
    FlowKey {
        protocol: 17,
        remote: IpAddr::V4(CH_V4),
        remote_port: 443,
        local_port: PORT,
    }
}

fn tag_of(p: &[u8]) -> u32 {
    u32::from_be_bytes([p[28], p[29], p[30], p[31]])
}

fn counts<'a>(packets: impl Iterator<Item = &'a Vec<u8>>) -> BTreeMap<u32, usize> {
    let mut seen = BTreeMap::new();
    for p in packets {
        *seen.entry(tag_of(p)).or_insert(0) += 1;
    }
    seen
}

fn each_once(seen: &BTreeMap<u32, usize>, n: u32, what: &str) {
    let missing: Vec<u32> = (0..n).filter(|t| !seen.contains_key(t)).collect();
    assert!(missing.is_empty(), "{what}: lost {missing:?}");
    let twice: Vec<_> = seen.iter().filter(|(_, c)| **c != 1).collect();
    assert!(twice.is_empty(), "{what}: delivered twice {twice:?}");
}

/// Traffic both ways on P0 until P0 is blackholed and the client declares it down; then the
/// driver's part: the flow moves to P1 (signalled to the anchor), the client's ring of P0 is
/// marked for P1. Returns the number of tags sent each way, and where the blackhole started in
/// the uplink and downlink logs.
fn blackhole_and_move(pair: &mut Pair) -> (u32, usize, usize) {
    let mut tag = 0;
    for _ in 0..50 {
        pair.client_send(P0, &up(PORT, tag)).unwrap();
        pair.anchor_send(&down(PORT, tag)).unwrap();
        tag += 1;
        pair.run_for(TICK);
    }
    pair.client_events.clear();
    pair.links[0].blackholed = true;
    let logs = (pair.uplink_log.len(), pair.downlink_log.len());
    while !pair.client_events.contains(&Event::PathDown(P0)) {
        assert!(tag < 1000, "the blackhole is never found");
        pair.client_send(P0, &up(PORT, tag)).unwrap();
        pair.anchor_send(&down(PORT, tag)).unwrap();
        tag += 1;
        pair.run_for(TICK);
    }
    pair.links[0].blackholed = false;
    let now = pair.now;
    pair.client.move_flows(&[flow()], P1, now);
    let marked = pair.client.resend_moved(P0, now, |_| Some(P1));
    assert!(
        marked > 0,
        "the client's ring had packets of the moved flow"
    );
    pair.flush();
    pair.run_for(Duration::from_millis(300));
    (tag, logs.0, logs.1)
}

#[test]
fn a_blackholed_paths_in_flight_packets_arrive_over_the_new_path_exactly_once() {
    let mut pair = Pair::new(&[10, 30], |_| {});
    pair.run_for(Duration::from_secs(1));
    assert!(pair.connected());
    let (n, _, _) = blackhole_and_move(&mut pair);

    each_once(&counts(pair.anchor_rx.iter().map(|(_, p)| p)), n, "uplink");
    each_once(&counts(pair.client_rx.iter()), n, "downlink");
    let anchor_resent = pair.anchor.stats().resent_bytes;
    assert!(anchor_resent > 0, "the anchor resent the downlink");
    assert!(
        pair.client.resent_bytes(P1) > 0,
        "the client resent the uplink"
    );
    assert_eq!(pair.client.resent_bytes(P0), 0);
    let peer = pair.anchor.peers().next().unwrap();
    assert_eq!(peer.resent_bytes, anchor_resent);
}

#[test]
fn a_late_original_on_the_old_path_is_a_duplicate_never_a_replay() {
    let mut pair = Pair::new(&[10, 30], |_| {});
    pair.run_for(Duration::from_secs(1));
    let (_, up_from, down_from) = blackhole_and_move(&mut pair);
    // What went into the blackhole turns up after all, late, on P0.
    let data = |log: &[(PathId, Vec<u8>)]| -> Vec<Vec<u8>> {
        log.iter()
            .filter(|(p, b)| *p == P0 && b[0] == upmt_proto::wire::Kind::Data.first_byte())
            .map(|(_, b)| b.clone())
            .collect()
    };
    let late_up = data(&pair.uplink_log[up_from..]);
    let late_down = data(&pair.downlink_log[down_from..]);
    assert!(!late_up.is_empty() && !late_down.is_empty());
    let (up_before, down_before) = (pair.anchor_rx.len(), pair.client_rx.len());
    pair.anchor_errs.clear();
    pair.client_errs.clear();
    for b in &late_up {
        pair.deliver(true, P0, b.clone());
    }
    for b in &late_down {
        pair.deliver(false, P0, b.clone());
    }
    assert_eq!(pair.anchor_rx.len(), up_before, "no uplink packet twice");
    assert_eq!(
        pair.client_rx.len(),
        down_before,
        "no downlink packet twice"
    );
    assert_eq!(pair.anchor_errs, vec![DropReason::Duplicate; late_up.len()]);
    assert_eq!(
        pair.client_errs,
        vec![DropReason::Duplicate; late_down.len()]
    );
}

#[test]
fn the_anchor_resends_when_uplink_data_of_a_flow_arrives_on_a_new_path() {
    // No signal at all: the flow's first uplink packet on P1 is the news.
    let mut pair = Pair::new(&[10, 30], |_| {});
    pair.run_for(Duration::from_secs(1));
    let mut tag = 0;
    for _ in 0..20 {
        pair.client_send(P0, &up(PORT, tag)).unwrap();
        pair.anchor_send(&down(PORT, tag)).unwrap();
        tag += 1;
        pair.run_for(TICK);
    }
    pair.links[0].blackholed = true;
    // Silent long enough to be a failure, not yet stale.
    let silent = pair.now + MOVE_RESEND_SILENCE + Duration::from_millis(50);
    let before = tag;
    while pair.now < silent {
        assert_eq!(pair.anchor_send(&down(PORT, tag)), Ok(P0));
        tag += 1;
        pair.run_for(TICK);
    }
    pair.client_send(P1, &up(PORT, 9999)).unwrap();
    pair.run_for(Duration::from_millis(200));
    each_once(&counts(pair.client_rx.iter()), tag, "downlink");
    assert!(pair.anchor.stats().resent_packets >= u64::from(tag - before));
}

#[test]
fn a_move_off_a_healthy_path_resends_nothing() {
    // A policy move (a preferred uplink returning): nothing was lost, nothing goes twice.
    let mut pair = Pair::new(&[10, 30], |_| {});
    pair.run_for(Duration::from_secs(1));
    for tag in 0..50 {
        pair.client_send(P0, &up(PORT, tag)).unwrap();
        pair.anchor_send(&down(PORT, tag)).unwrap();
        pair.run_for(TICK);
    }
    let now = pair.now;
    pair.client.move_flows(&[flow()], P1, now);
    pair.client_send(P1, &up(PORT, 50)).unwrap();
    pair.run_for(Duration::from_millis(200));
    assert_eq!(pair.anchor.stats().resent_packets, 0);
    assert_eq!(pair.anchor.drops().get(DropReason::Duplicate), 0);
    assert_eq!(pair.anchor.peers().next().unwrap().flows, 1);
}

#[test]
fn with_resending_off_nothing_is_kept_or_resent() {
    let mut pair = Pair::new(&[10, 30], |c| c.resend_bytes = 0);
    pair.run_for(Duration::from_secs(1));
    for tag in 0..20 {
        pair.client_send(P0, &up(PORT, tag)).unwrap();
        pair.run_for(TICK);
    }
    assert_eq!(pair.client.resend_moved(P0, pair.now, |_| Some(P1)), 0);
}

#[test]
fn the_anchor_resends_once_when_its_own_view_sends_downlink_around_a_stale_path() {
    // The client never moves the flow (it sends nothing): only the anchor's staleness rule.
    let mut pair = Pair::new(&[10, 30], |_| {});
    pair.run_for(Duration::from_secs(1));
    pair.client_send(P0, &up(PORT, 0)).unwrap();
    pair.run_for(Duration::from_millis(50));
    pair.links[0].blackholed = true;
    let mut tag = 0;
    let mut diverted = None;
    while diverted.is_none() {
        assert!(tag < 1000, "downlink never leaves the stale path");
        if pair.anchor_send(&down(PORT, tag)).unwrap() == P1 {
            diverted = Some(tag);
        }
        tag += 1;
        pair.run_for(TICK);
    }
    pair.run_for(Duration::from_millis(200));
    each_once(&counts(pair.client_rx.iter()), tag, "downlink");
    let resent = pair.anchor.stats().resent_packets;
    assert!(resent >= u64::from(diverted.unwrap()), "{resent} resent");
    // Once per outage: more diverted packets resend nothing more.
    for t in tag..tag + 20 {
        pair.anchor_send(&down(PORT, t)).unwrap();
        pair.run_for(TICK);
    }
    assert_eq!(pair.anchor.stats().resent_packets, resent);
}
