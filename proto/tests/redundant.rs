//! Redundant flows on the simulated network: every packet goes over two paths in both
//! directions, a path that drops everything costs nothing, and the second copies are dropped as
//! duplicates, never as replays.

mod util;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;
use upmt_proto::client::FlowKey;
use upmt_proto::{DropReason, PathId};
use util::*;

const P0: PathId = PathId(0);
const P1: PathId = PathId(1);
const PORT: u16 = 5000;
/// 1 packet per millisecond each way: a call's pace.
const TICK: Duration = Duration::from_millis(1);

fn flow(port: u16) -> FlowKey {
    FlowKey {
        protocol: 17,
        remote: IpAddr::V4(CH_V4),
        remote_port: 443,
        local_port: port,
    }
}

/// A connected pair whose flow [`PORT`] the anchor knows as redundant over P0 and P1.
fn redundant_pair() -> Pair {
    let mut pair = Pair::new(&[10, 30], |_| {});
    pair.run_for(Duration::from_secs(1));
    assert!(pair.connected());
    pair.client
        .move_flows_redundant(&[flow(PORT)], P0, Some(P1), pair.now);
    pair.flush();
    pair.run_for(Duration::from_millis(200));
    assert_eq!(pair.client.pending_signals(), 0, "the move is acked");
    pair
}

/// Sends `n` tagged packets each way on the redundant flow, one per [`TICK`], then lets
/// everything land; returns how often each tag arrived at the anchor and at the client.
fn exchange(pair: &mut Pair, n: u32) -> (BTreeMap<u32, usize>, BTreeMap<u32, usize>) {
    for tag in 0..n {
        pair.client_send_redundant([P0, P1], &up(PORT, tag))
            .unwrap();
        pair.anchor_send(&down(PORT, tag)).unwrap();
        pair.run_for(TICK);
    }
    pair.run_for(Duration::from_millis(500));
    let tag_of = |p: &[u8]| u32::from_be_bytes([p[28], p[29], p[30], p[31]]);
    let mut up_seen = BTreeMap::new();
    for (_, p) in &pair.anchor_rx {
        *up_seen.entry(tag_of(p)).or_insert(0) += 1;
    }
    let mut down_seen = BTreeMap::new();
    for p in &pair.client_rx {
        *down_seen.entry(tag_of(p)).or_insert(0) += 1;
    }
    (up_seen, down_seen)
}

fn each_once(seen: &BTreeMap<u32, usize>, n: u32) {
    assert_eq!(seen.len(), n as usize, "every packet arrived");
    assert!(
        seen.values().all(|c| *c == 1),
        "none twice: {:?}",
        seen.iter()
            .filter(|(_, c)| **c != 1)
            .take(5)
            .collect::<Vec<_>>()
    );
}

#[test]
fn every_packet_of_a_redundant_flow_arrives_once_and_the_copies_count_as_duplicates() {
    let mut pair = redundant_pair();
    let n = 500;
    let (up_seen, down_seen) = exchange(&mut pair, n);
    each_once(&up_seen, n);
    each_once(&down_seen, n);
    assert_eq!(pair.anchor.drops().get(DropReason::Duplicate), u64::from(n));
    assert_eq!(pair.client.drops().get(DropReason::Duplicate), u64::from(n));
    assert_eq!(pair.anchor.drops().get(DropReason::Replayed), 0);
    assert_eq!(pair.client.drops().get(DropReason::Replayed), 0);
    assert_eq!(pair.anchor.stats().duplicated_packets, u64::from(n));
    // Both paths carried every packet, each way.
    let on = |path: PathId| pair.downlink_log.iter().filter(|(p, _)| *p == path).count();
    assert!(on(P0) >= n as usize && on(P1) >= n as usize);
}

#[test]
fn a_path_that_drops_everything_loses_nothing_of_a_redundant_flow() {
    for dead in [P0, P1] {
        let mut pair = redundant_pair();
        pair.links[dead.0 as usize].blackholed = true;
        let n = 2000;
        let (up_seen, down_seen) = exchange(&mut pair, n);
        each_once(&up_seen, n);
        each_once(&down_seen, n);
        assert_eq!(pair.anchor.drops().get(DropReason::Replayed), 0);
    }
}

#[test]
fn a_flow_moved_without_redundancy_gets_one_copy_again() {
    let mut pair = redundant_pair();
    pair.client.move_flows(&[flow(PORT)], P1, pair.now);
    pair.flush();
    pair.run_for(Duration::from_millis(200));
    let before = pair.downlink_log.len();
    assert_eq!(pair.anchor_send(&down(PORT, 1)), Ok(P1));
    assert_eq!(pair.downlink_log.len(), before + 1);
    assert_eq!(pair.anchor.stats().duplicated_packets, 0);
}

#[test]
fn a_plain_flow_is_never_duplicated() {
    let mut pair = redundant_pair();
    pair.client_send(P0, &up(6000, 1)).unwrap();
    pair.run_for(Duration::from_millis(100));
    let before = pair.downlink_log.len();
    pair.anchor_send(&down(6000, 1)).unwrap();
    assert_eq!(pair.downlink_log.len(), before + 1);
}
