//! Path MTU per path on the simulated network: padded probes find each link's MTU, a lost MTU
//! probe never takes a path down, and a path whose MTU shrinks under data is searched again.

mod util;

use std::time::Duration;
use upmt_proto::PathId;
use upmt_proto::client::Event;
use upmt_proto::client::pmtu::GRANULARITY;
use util::*;

const P0: PathId = PathId(0);
const P1: PathId = PathId(1);
/// IPv4 and UDP headers, as the simulated links count them.
const V4: u16 = 28;

/// An uplink UDP packet of `len` bytes from the mobile host's virtual address.
fn big_up(len: usize, tag: u32) -> Vec<u8> {
    let mut p = up(5000, tag);
    p.resize(len, 0);
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[24..26].copy_from_slice(&((len - 20) as u16).to_be_bytes());
    p
}

fn connected_pair(mtus: [Option<u16>; 2]) -> Pair {
    let mut pair = Pair::new(&[10, 20], |_| {});
    pair.links[0].mtu = mtus[0];
    pair.links[1].mtu = mtus[1];
    pair.run_for(Duration::from_secs(1));
    assert!(pair.connected());
    let now = pair.now;
    pair.client.set_path_link_mtu(P0, 1500, V4, now);
    pair.client.set_path_link_mtu(P1, 1500, V4, now);
    pair
}

#[test]
fn each_path_mtu_is_found_by_padded_probes() {
    let mut pair = connected_pair([None, Some(1400)]);
    assert_eq!(pair.client.path_mtu(P0), None, "unknown until searched");
    pair.run_for(Duration::from_secs(5));
    assert_eq!(pair.client.path_mtu(P0), Some(1500));
    let mtu = pair.client.path_mtu(P1).unwrap();
    assert!(
        (1400 - GRANULARITY..=1400).contains(&mtu),
        "P1 carries 1400, found {mtu}"
    );
    assert_eq!(pair.client.path_stats(P1).unwrap().mtu, Some(mtu));
}

#[test]
fn a_path_without_a_reported_interface_mtu_is_not_probed_for_it() {
    let mut pair = Pair::new(&[10, 20], |_| {});
    pair.run_for(Duration::from_secs(3));
    assert_eq!(pair.client.path_mtu(P0), None);
    // Every uplink control datagram is a plain probe or smaller.
    assert!(pair.uplink_log.iter().all(|(_, b)| b.len() < 200));
}

#[test]
fn lost_mtu_probes_never_take_a_path_down_nor_count_as_probe_loss() {
    let mut pair = connected_pair([Some(1300), Some(1300)]);
    pair.client_events.clear();
    // Active for a while: the search runs alongside the fast liveness probes.
    for tag in 0..600 {
        pair.client_send(P0, &up(5000, tag)).unwrap();
        pair.run_for(Duration::from_millis(10));
    }
    assert!(
        !pair
            .client_events
            .iter()
            .any(|e| matches!(e, Event::PathDown(_))),
        "{:?}",
        pair.client_events
    );
    let stats = pair.client.path_stats(P0).unwrap();
    assert_eq!(stats.loss, 0.0);
    assert!(stats.mtu.unwrap() <= 1300);
}

#[test]
fn a_path_mtu_that_shrinks_under_data_is_found_again_without_losing_the_path() {
    let mut pair = connected_pair([None, None]);
    pair.run_for(Duration::from_secs(2));
    assert_eq!(pair.client.path_mtu(P0), Some(1500));
    pair.client_events.clear();
    // A router on P0 now carries 1300 and its ICMP never arrives.
    pair.links[0].mtu = Some(1300);
    let start = pair.now;
    let mut found = None;
    for tag in 0..300 {
        // Full-size packets are lost, so the upload hears nothing back but probe acks.
        pair.client_send(P0, &big_up(1400, tag)).unwrap();
        pair.run_for(Duration::from_millis(10));
        if pair.client.path_mtu(P0).is_some_and(|m| m <= 1300) {
            found = Some(pair.now - start);
            break;
        }
    }
    let took = found.expect("the smaller MTU is found");
    assert!(took <= Duration::from_secs(2), "took {took:?}");
    assert!(
        !pair.client_events.contains(&Event::PathDown(P0)),
        "{:?}",
        pair.client_events
    );
    // Three sizes to rule out below 1500, two lost probes of 500 ms each.
    pair.run_for(Duration::from_secs(5));
    let mtu = pair.client.path_mtu(P0).unwrap();
    assert!((1300 - GRANULARITY..=1300).contains(&mtu), "found {mtu}");
}

#[test]
fn a_path_that_shrinks_under_a_download_is_found_by_the_periodic_confirmation() {
    let mut pair = connected_pair([None, None]);
    pair.run_for(Duration::from_secs(2));
    assert_eq!(pair.client.path_mtu(P0), Some(1500));
    pair.links[0].mtu = Some(1300);
    let start = pair.now;
    let mut found = None;
    for tag in 0..2000 {
        // Small packets both ways, as the acks of a download and its segments that still fit:
        // nothing is lost, so only the confirmation can notice.
        pair.client_send(P0, &up(5000, tag)).unwrap();
        let _ = pair.anchor_send(&down(5000, tag));
        pair.run_for(Duration::from_millis(10));
        if pair.client.path_mtu(P0).is_some_and(|m| m <= 1300) {
            found = Some(pair.now - start);
            break;
        }
    }
    let took = found.expect("the smaller MTU is found");
    // Within a confirmation interval, plus two lost probes.
    assert!(took <= Duration::from_secs(7), "took {took:?}");
}
