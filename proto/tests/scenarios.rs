//! Scenario tests of the client and anchor cores on a simulated network with virtual time.

mod util;

use std::time::Duration;
use upmt_proto::anchor::Anchor;
use upmt_proto::client::{Client, ClientConfig, Event, PathState};
use upmt_proto::keys::StaticSecret;
use upmt_proto::time::Instant;
use upmt_proto::wire::Kind;
use upmt_proto::{DropReason, PathId, PeerId};
use util::*;

const P0: PathId = PathId(0);
const P1: PathId = PathId(1);

fn connected_pair(delays: &[u64]) -> Pair {
    let mut pair = Pair::new(delays, |_| {});
    pair.run_for(Duration::from_secs(1));
    assert!(pair.connected(), "handshake did not complete");
    pair
}

#[test]
fn handshake_completes_and_data_flows_both_ways() {
    let mut pair = connected_pair(&[10]);
    let params = *pair.client.session().unwrap();
    assert_eq!(params.virtual_ipv4, MH_V4);
    assert_eq!(params.virtual_ipv6, Some("fd00::2".parse().unwrap()));
    assert_eq!(params.mtu, 1420);
    assert!(pair.client_events.contains(&Event::Connected(params)));

    pair.client_send(P0, &up(5000, 1)).unwrap();
    pair.run_for(Duration::from_millis(100));
    assert_eq!(pair.anchor_rx, vec![(PeerId(0), up(5000, 1))]);

    assert_eq!(pair.anchor_send(&down(5000, 2)), Ok(P0));
    pair.run_for(Duration::from_millis(100));
    assert_eq!(pair.client_rx, vec![down(5000, 2)]);
    assert!(pair.anchor.peers().next().unwrap().connected);
    assert!(pair.client_errs.is_empty() && pair.anchor_errs.is_empty());
}

#[test]
fn data_before_the_handshake_is_refused_with_no_session() {
    let mut pair = Pair::new(&[10], |_| {});
    assert_eq!(pair.client_send(P0, &up(1, 1)), Err(DropReason::NoSession));
    assert_eq!(pair.client.drops().get(DropReason::NoSession), 1);
    assert_eq!(pair.anchor_send(&down(1, 1)), Err(DropReason::NoSession));
}

#[test]
fn rekey_happens_after_rekey_after_and_data_keeps_flowing_across_it() {
    let mut pair = Pair::new(&[20], |c| c.rekey_after = Duration::from_secs(10));
    pair.run_for(Duration::from_secs(1));
    let sent = pair.exchange_each_way(P0, 250);
    let rekeys = pair.client_rekeys();
    assert!(
        rekeys >= 2,
        "expected at least two rekeys in 25 s, got {rekeys}"
    );
    assert_eq!(
        pair.anchor_rx.len(),
        sent as usize,
        "uplink lost packets across rekeys"
    );
    assert_eq!(
        pair.client_rx.len(),
        sent as usize,
        "downlink lost packets across rekeys"
    );
    assert!(pair.client_errs.is_empty(), "{:?}", pair.client_errs);
    assert!(pair.anchor_errs.is_empty(), "{:?}", pair.anchor_errs);
}

#[test]
fn replayed_transport_packets_are_rejected() {
    let mut pair = connected_pair(&[10]);
    pair.client_send(P0, &up(5000, 7)).unwrap();
    let (path, captured) = pair.uplink_log.last().unwrap().clone();
    pair.run_for(Duration::from_millis(50));
    assert_eq!(pair.anchor_rx.len(), 1);
    pair.deliver(true, path, captured);
    assert_eq!(pair.anchor_rx.len(), 1);
    assert_eq!(pair.anchor_errs, vec![DropReason::Replayed]);
    assert_eq!(pair.anchor.drops().get(DropReason::Replayed), 1);
}

#[test]
fn a_forged_bit_flipped_packet_is_rejected() {
    let mut pair = connected_pair(&[10]);
    pair.client_send(P0, &up(5000, 7)).unwrap();
    let (path, mut captured) = pair.uplink_log.pop().unwrap();
    pair.inflight.clear();
    let mid = captured.len() / 2;
    captured[mid] ^= 0x01;
    pair.deliver(true, path, captured.clone());
    assert_eq!(pair.anchor_errs, vec![DropReason::Forged]);
    // The forgery did not burn the counter: the genuine packet still goes through.
    captured[mid] ^= 0x01;
    pair.deliver(true, path, captured);
    assert_eq!(pair.anchor_rx.len(), 1);
}

#[test]
fn garbage_datagrams_are_dropped_and_counted_never_panic() {
    let mut pair = connected_pair(&[10]);
    let mut seed = 0x1234_5678u32;
    for len in 0..300usize {
        let mut junk: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect();
        if let Some(b) = junk.first_mut() {
            *b = 0x10 | (len as u8 % 5);
        }
        pair.deliver(true, P0, junk.clone());
        pair.deliver(false, P0, junk);
    }
    assert!(pair.anchor_rx.is_empty() && pair.client_rx.is_empty());
    assert_eq!(pair.anchor.drops().total(), 300);
    assert_eq!(pair.client.drops().total(), 300);
}

#[test]
fn a_handshake_from_an_unknown_key_is_rejected_without_disturbing_the_live_session() {
    let mut pair = connected_pair(&[10]);
    let stranger = StaticSecret::generate().unwrap();
    let mut intruder = Client::new(
        ClientConfig::new(stranger, pair.an_secret.public_key()),
        pair.now,
        UNIX_START,
    );
    intruder.handle_path_up(P0, pair.now);
    let mut buf = [0u8; 2048];
    let t = intruder.poll_transmit(pair.now, &mut buf).unwrap();
    pair.deliver(true, P0, buf[..t.len].to_vec());
    assert_eq!(pair.anchor_errs, vec![DropReason::UnknownPeer]);
    pair.flush();

    pair.client_send(P0, &up(5000, 1)).unwrap();
    pair.anchor_send(&down(5000, 1)).unwrap();
    pair.run_for(Duration::from_millis(100));
    assert_eq!(pair.anchor_rx.len(), 1);
    assert_eq!(pair.client_rx.len(), 1);
}

#[test]
fn a_replayed_handshake_init_is_stale_and_does_not_break_the_session() {
    let mut pair = connected_pair(&[10]);
    let init = pair
        .uplink_log
        .iter()
        .find(|(_, b)| b[0] == 0x11)
        .cloned()
        .expect("the init was logged");
    pair.deliver(true, init.0, init.1);
    assert_eq!(pair.anchor_errs, vec![DropReason::StaleTimestamp]);
    pair.client_send(P0, &up(5000, 1)).unwrap();
    pair.anchor_send(&down(5000, 1)).unwrap();
    pair.run_for(Duration::from_millis(100));
    assert_eq!((pair.anchor_rx.len(), pair.client_rx.len()), (1, 1));
}

#[test]
fn a_handshake_init_for_another_anchor_fails_mac1() {
    let mut pair = connected_pair(&[10]);
    let other = StaticSecret::generate().unwrap();
    let mut c = Client::new(
        ClientConfig::new(pair.mh_secret.clone(), other.public_key()),
        pair.now,
        UNIX_START + 10_000_000_000,
    );
    c.handle_path_up(P0, pair.now);
    let mut buf = [0u8; 2048];
    let t = c.poll_transmit(pair.now, &mut buf).unwrap();
    pair.deliver(true, P0, buf[..t.len].to_vec());
    assert_eq!(pair.anchor_errs, vec![DropReason::BadMac]);
}

#[test]
fn inner_source_spoofing_is_rejected() {
    let mut pair = connected_pair(&[10]);
    let spoofed = udp4("10.9.0.99".parse().unwrap(), CH_V4, 5000, 443, 1);
    pair.client_send(P0, &spoofed).unwrap();
    pair.run_for(Duration::from_millis(50));
    assert!(pair.anchor_rx.is_empty());
    assert_eq!(pair.anchor_errs, vec![DropReason::SpoofedSource]);
}

#[test]
fn two_paths_0_and_300_ms_apart_at_100k_packets_per_second_carry_their_flows_without_replay_drops()
{
    // 300 ms at 50,000 packets/s per path: the fast path carries 15,000 packets while one of the
    // slow path's crosses, far more than one replay window (8192) holds.
    let mut pair = connected_pair(&[0, 300]);
    pair.uplink_log.clear();
    let per_ms = 50u32;
    let ms = 600u32;
    for t in 0..ms {
        for i in 0..per_ms {
            let tag = t * per_ms + i;
            pair.client_send(P0, &up(7000, tag)).unwrap();
            pair.client_send(P1, &up(7001, tag)).unwrap();
            // Downlink rides each flow's path back once the anchor has seen it there.
            if t >= 400 {
                let _ = pair.anchor_send(&down(7000, tag));
                let _ = pair.anchor_send(&down(7001, tag));
            }
        }
        pair.uplink_log.clear();
        pair.downlink_log.clear();
        pair.run_for(Duration::from_millis(1));
    }
    pair.run_for(Duration::from_secs(1));
    let replays = |errs: &[DropReason]| errs.iter().filter(|e| **e == DropReason::Replayed).count();
    assert_eq!(replays(&pair.anchor_errs), 0, "uplink replay drops");
    assert_eq!(replays(&pair.client_errs), 0, "downlink replay drops");
    assert_eq!(pair.anchor.drops().get(DropReason::Replayed), 0);
    assert_eq!(pair.client.drops().get(DropReason::Replayed), 0);
    assert_eq!(pair.anchor_rx.len(), (2 * per_ms * ms) as usize);
    assert_eq!(pair.client_rx.len(), (2 * per_ms * (ms - 400)) as usize);
    assert!(pair.downlink_count[0] > 0 && pair.downlink_count[1] > 0);
}

#[test]
fn two_paths_with_different_delays_both_carry_data_and_reordering_is_accepted() {
    let mut pair = connected_pair(&[5, 300]);
    // 2000 packets alternating paths within 2 s: the slow path's packets arrive ~300 ms behind,
    // i.e. hundreds of counters out of order.
    for i in 0..2000u32 {
        let path = if i % 2 == 0 { P0 } else { P1 };
        pair.client_send(path, &up(6000 + (i % 2) as u16, i))
            .unwrap();
        pair.run_for(Duration::from_millis(1));
    }
    pair.run_for(Duration::from_secs(1));
    assert_eq!(pair.anchor_rx.len(), 2000);
    assert!(
        pair.anchor_errs.is_empty(),
        "{:?}",
        &pair.anchor_errs[..pair.anchor_errs.len().min(5)]
    );
    let tags: Vec<u32> = pair
        .anchor_rx
        .iter()
        .map(|(_, p)| u32::from_be_bytes([p[28], p[29], p[30], p[31]]))
        .collect();
    assert!(
        tags.windows(2).any(|w| w[0] > w[1]),
        "expected reordering across paths"
    );

    // Downlink follows each flow's uplink path.
    assert_eq!(pair.anchor_send(&down(6000, 1)), Ok(P0));
    assert_eq!(pair.anchor_send(&down(6001, 2)), Ok(P1));
    pair.run_for(Duration::from_secs(1));
    assert_eq!(pair.client_rx.len(), 2);
    for p in [P0, P1] {
        let s = pair.client.path_stats(p).unwrap();
        assert_eq!(s.state, PathState::Up);
        assert!(s.rtt.is_some());
    }
    let rtt0 = pair.client.path_stats(P0).unwrap().rtt.unwrap();
    let rtt1 = pair.client.path_stats(P1).unwrap().rtt.unwrap();
    assert!(
        rtt0 < Duration::from_millis(50) && rtt1 > Duration::from_millis(500),
        "{rtt0:?} {rtt1:?}"
    );
}

#[test]
fn an_unknown_flow_goes_down_the_path_that_last_carried_traffic() {
    let mut pair = connected_pair(&[5, 5]);
    pair.client_send(P1, &up(7000, 1)).unwrap();
    pair.run_for(Duration::from_millis(20));
    assert_eq!(pair.anchor_send(&down(9999, 1)), Ok(P1));
}

#[test]
fn a_silent_idle_path_is_marked_down_within_a_keepalive_and_comes_back_up() {
    let mut pair = Pair::new(&[10, 30], |c| c.keepalive = Duration::from_secs(2));
    pair.run_for(Duration::from_secs(1));
    pair.run_for(Duration::from_secs(2));
    assert_eq!(pair.client.path_stats(P1).unwrap().state, PathState::Up);
    pair.links[1].blackholed = true;
    pair.run_for(Duration::from_secs(5));
    assert!(pair.client_events.contains(&Event::PathDown(P1)));
    assert_eq!(pair.client.path_stats(P1).unwrap().state, PathState::Down);
    assert_eq!(pair.client.path_stats(P0).unwrap().state, PathState::Up);
    assert!(pair.connected(), "one live path keeps the session");

    pair.client_events.clear();
    pair.links[1].blackholed = false;
    pair.run_for(Duration::from_secs(3));
    assert!(pair.client_events.contains(&Event::PathUp(P1)));
    assert_eq!(pair.client.path_stats(P1).unwrap().state, PathState::Up);
    assert!(!pair.client_events.contains(&Event::Disconnected));
}

#[test]
fn a_path_the_driver_removes_reports_down_and_the_other_keeps_working() {
    let mut pair = connected_pair(&[10, 10]);
    pair.run_for(Duration::from_secs(2));
    pair.client.handle_path_down(P0, pair.now);
    pair.flush();
    assert!(pair.client_events.contains(&Event::PathDown(P0)));
    pair.client_send(P1, &up(1, 1)).unwrap();
    pair.run_for(Duration::from_millis(50));
    assert_eq!(pair.anchor_rx.len(), 1);
}

#[test]
fn handshake_retries_rotate_to_the_next_path_when_the_first_is_dead() {
    let mut pair = Pair::new(&[10, 10], |_| {});
    pair.inflight.clear(); // the first init on path 0 is lost
    pair.links[0].blackholed = true;
    pair.run_for(Duration::from_secs(3));
    assert!(pair.connected());
}

#[test]
fn anchor_restart_makes_the_client_rehandshake_and_traffic_resumes() {
    let mut pair = connected_pair(&[10, 40]);
    pair.run_for(Duration::from_secs(2));
    pair.client_events.clear();
    pair.anchor = Anchor::new(anchor_config(&pair.an_secret, &pair.mh_secret), pair.now);
    let restart = pair.now;
    pair.client_send(P0, &up(5000, 1)).unwrap();
    pair.run_for(Duration::from_millis(100));
    assert!(pair.anchor_errs.contains(&DropReason::UnknownSession));
    pair.run_for(Duration::from_secs(6));
    let reconnected = pair
        .client_events
        .iter()
        .any(|e| matches!(e, Event::Connected(_)));
    assert!(
        reconnected,
        "client did not re-handshake: {:?}",
        pair.client_events
    );
    assert!(pair.client_events.contains(&Event::Disconnected));
    assert!(pair.now - restart <= Duration::from_secs(7));

    let before = pair.anchor_rx.len();
    pair.client_send(P0, &up(5000, 2)).unwrap();
    pair.run_for(Duration::from_millis(100));
    assert_eq!(pair.anchor_rx.len(), before + 1);
    assert_eq!(pair.anchor_send(&down(5000, 3)), Ok(P0));
    pair.run_for(Duration::from_millis(100));
    assert_eq!(pair.client_rx.last(), Some(&down(5000, 3)));
}

#[test]
fn an_idle_session_expires_at_the_anchor() {
    // Keepalives more often than the anchor's (shortened) session timeout.
    let mut pair = Pair::new(&[10], |c| c.keepalive = Duration::from_secs(2));
    pair.run_for(Duration::from_secs(1));
    let mut cfg = anchor_config(&pair.an_secret, &pair.mh_secret);
    cfg.session_timeout = Duration::from_secs(5);
    pair.anchor = Anchor::new(cfg, pair.now);
    // The fresh anchor forces a re-handshake; the session then lives on probes.
    pair.run_for(Duration::from_secs(8));
    assert!(pair.connected());
    assert!(pair.anchor.peers().next().unwrap().connected);
    // Cut every link: the anchor must forget the peer after 5 s of silence.
    pair.links[0].blackholed = true;
    pair.anchor_events.clear();
    pair.run_for(Duration::from_secs(7));
    assert!(pair.anchor_events.iter().any(|e| matches!(
        e,
        upmt_proto::anchor::Event::PeerDisconnected {
            peer: PeerId(0),
            ..
        }
    )));
    assert!(!pair.anchor.peers().next().unwrap().connected);
}

#[test]
fn after_200_s_of_failed_rekeys_the_old_keys_are_refused_and_the_handshake_backs_off() {
    let mut pair = connected_pair(&[10, 10]);
    // From here on every handshake init is lost: the first rekey (at 120 s) and all after fail.
    pair.drop_if = Some(|d: &[u8]| d.first() == Some(&Kind::HandshakeInit.first_byte()));
    pair.uplink_log.clear();
    let mut held = None;
    let mut refused_at = None;
    let is_init = |d: &Vec<u8>| d[0] == Kind::HandshakeInit.first_byte();
    let (mut inits_total, mut max_per_second) = (0usize, 0usize);
    for s in 0..320u32 {
        // A packet each way every second: the session is in use all along.
        if let Err(e) = pair.client_send(P0, &up(9000, s)) {
            assert_eq!(e, DropReason::Expired);
            refused_at.get_or_insert(pair.now);
        }
        let _ = pair.anchor_send(&down(9000, s));
        if s == 170 {
            // Sealed with the old keys, delivered only after they expired.
            pair.client_send(P0, &up(9000, 170_000)).unwrap();
            held = pair.inflight.pop();
        }
        pair.run_for(Duration::from_secs(1));
        let inits = pair.uplink_log.iter().filter(|(_, d)| is_init(d)).count();
        pair.uplink_log.clear();
        inits_total += inits;
        max_per_second = max_per_second.max(inits);
    }
    let refused_at = refused_at.expect("the client kept sending on the old keys");
    assert!(
        refused_at >= Instant::ZERO + Duration::from_secs(180)
            && refused_at <= Instant::ZERO + Duration::from_secs(183),
        "the old keys stopped at {refused_at:?}"
    );
    assert!(pair.client_events.contains(&Event::Disconnected));
    assert!(!pair.connected());
    let held = held.expect("a held datagram");
    assert!(held.to_anchor);
    pair.anchor_errs.clear();
    pair.deliver(true, held.path, held.bytes);
    assert_eq!(pair.anchor_errs, vec![DropReason::Expired]);

    // 200 s of attempts since the first rekey: one every second would be 200 inits.
    assert!(
        (10..=50).contains(&inits_total),
        "{inits_total} handshake inits in 200 s"
    );
    assert!(
        max_per_second <= 1,
        "{max_per_second} inits within one second"
    );
}
