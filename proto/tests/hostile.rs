//! Scenario tests of the cores against hostile input: source rewriting, replays, NAT rebinding,
//! handshake floods and full queues.

mod util;

use std::net::SocketAddr;
use std::time::Duration;
use upmt_proto::anchor::{self, MAX_QUEUED_TRANSMITS};
use upmt_proto::cookie::HANDSHAKE_BURST;
use upmt_proto::wire::INIT_LEN;
use upmt_proto::{DropReason, PathId, fuzzing};
use util::*;

const P0: PathId = PathId(0);
const P1: PathId = PathId(1);

fn attacker() -> SocketAddr {
    "203.0.113.66:6666".parse().unwrap()
}

fn connected_pair(delays: &[u64]) -> Pair {
    let mut pair = Pair::new(delays, |_| {});
    pair.run_for(Duration::from_secs(1));
    assert!(pair.connected(), "handshake did not complete");
    pair
}

fn endpoint(pair: &Pair, path: PathId) -> Option<SocketAddr> {
    let status = pair.anchor.peers().next().unwrap();
    status
        .paths
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, a)| *a)
}

#[test]
fn a_captured_packet_raced_from_another_address_does_not_steer_downlink() {
    let mut pair = connected_pair(&[20]);
    let real = pair.links[0].addr;
    pair.client_send(P0, &up(5000, 1)).unwrap();
    let (_, captured) = pair.uplink_log.last().unwrap().clone();
    pair.inflight.clear();
    // The attacker's copy wins the race: it is authentic, so it is delivered, but it only earns
    // a challenge to the attacker's address, which the attacker cannot read.
    pair.deliver_from(attacker(), captured.clone());
    assert_eq!(pair.anchor_rx.len(), 1);
    pair.flush();
    assert_eq!(pair.anchor.stats().challenges_sent, 1);
    assert!(
        pair.stray
            .iter()
            .all(|(dst, _, b)| *dst == attacker() && b[0] == 0x14)
    );
    assert_eq!(endpoint(&pair, P0), Some(real));
    // The genuine copy is now a replay; a later replay from the attacker too.
    pair.deliver(true, P0, captured.clone());
    pair.deliver_from(attacker(), captured);
    assert_eq!(
        pair.anchor_errs,
        vec![DropReason::Replayed, DropReason::Replayed]
    );
    // Downlink still goes to the real address (anchor_send asserts the destination).
    assert_eq!(pair.anchor_send(&down(5000, 1)), Ok(P0));
    pair.run_for(Duration::from_secs(2));
    assert_eq!(pair.client_rx.len(), 1);
    assert_eq!(endpoint(&pair, P0), Some(real));
    assert!(
        pair.stray.iter().all(|(_, _, b)| b[0] != 0x13),
        "data was sent to the attacker"
    );
}

#[test]
fn a_captured_path_response_replayed_from_the_attackers_address_validates_nothing() {
    let mut pair = Pair::new(&[10, 10], |_| {});
    pair.run_for(Duration::from_secs(1));
    // Path 1's first endpoint was validated by a challenge: its response is in the uplink log.
    assert!(pair.anchor.stats().challenges_sent >= 1);
    assert_eq!(endpoint(&pair, P1), Some(pair.links[1].addr));
    let responses: Vec<_> = pair
        .uplink_log
        .iter()
        .filter(|(p, b)| *p == P1 && b[0] == 0x14)
        .map(|(_, b)| b.clone())
        .collect();
    let before = pair.anchor.stats().paths_validated;
    for r in responses {
        pair.deliver_from(attacker(), r);
    }
    assert!(pair.anchor_errs.iter().all(|e| *e == DropReason::Replayed));
    assert_eq!(pair.anchor.stats().paths_validated, before);
    assert_eq!(endpoint(&pair, P1), Some(pair.links[1].addr));
}

#[test]
fn nat_rebinding_is_followed_within_about_one_round_trip() {
    let mut pair = connected_pair(&[20]);
    pair.run_for(Duration::from_secs(2));
    let rebound: SocketAddr = "198.51.100.1:51234".parse().unwrap();
    pair.links[0].addr = rebound;
    pair.anchor_events.clear();
    let start = pair.now;
    pair.client_send(P0, &up(5000, 1)).unwrap();
    while endpoint(&pair, P0) != Some(rebound) {
        pair.run_for(Duration::from_millis(1));
        assert!(
            pair.now - start <= Duration::from_millis(70),
            "not followed after {:?}",
            pair.now - start
        );
    }
    // One-way 20 ms: the data packet, the challenge back, the response: 60 ms.
    assert!(pair.now - start >= Duration::from_millis(60));
    assert!(
        pair.anchor_events
            .contains(&anchor::Event::PathEndpointChanged {
                peer: upmt_proto::PeerId(0),
                path: P0,
                endpoint: rebound,
            })
    );
    assert_eq!(pair.anchor_send(&down(5000, 2)), Ok(P0));
    pair.run_for(Duration::from_millis(50));
    assert_eq!(pair.client_rx, vec![down(5000, 2)]);
}

#[test]
fn the_second_path_is_validated_by_a_challenge_before_downlink_uses_it() {
    let mut pair = Pair::new(&[10, 10], |_| {});
    // Just past the handshake: path 0 (the handshake's) is validated, path 1 not yet.
    pair.run_for(Duration::from_millis(35));
    assert!(pair.connected());
    assert_eq!(endpoint(&pair, P0), Some(pair.links[0].addr));
    assert_eq!(endpoint(&pair, P1), None);
    pair.run_for(Duration::from_millis(30));
    assert_eq!(endpoint(&pair, P1), Some(pair.links[1].addr));
    assert_eq!(pair.anchor.stats().paths_validated, 2);
    assert_eq!(pair.anchor.stats().challenges_sent, 1);
}

/// An init with a valid mac1 and garbage where the Noise message should be.
fn junk_init(pair: &Pair, i: u32) -> Vec<u8> {
    let mut init = vec![0u8; INIT_LEN];
    init[0] = 0x11;
    init[4..8].copy_from_slice(&i.to_be_bytes());
    init[40..44].copy_from_slice(&i.to_le_bytes());
    fuzzing::seal_mac1(&pair.an_secret.public_key(), &mut init);
    init
}

#[test]
fn a_handshake_flood_from_ten_thousand_addresses_costs_mac_checks_and_the_client_still_connects() {
    let mut pair = Pair::new(&[10], |_| {});
    pair.inflight.clear(); // the client's first init is lost in the flood
    let mut sent = 0u32;
    // 100k inits over 2 s from 10k addresses, half with a valid mac1, half without.
    for _ms in 0..2000 {
        for _ in 0..50 {
            let mut init = junk_init(&pair, sent);
            if sent % 2 == 1 {
                init[9] ^= 0xff; // bad mac1
            }
            let n = sent % 10_000;
            let from: SocketAddr = SocketAddr::from((
                [198, 18, (n / 250) as u8, (n % 250) as u8 + 1],
                1024 + (n % 50_000) as u16,
            ));
            pair.deliver_from(from, init);
            sent += 1;
        }
        pair.flush();
        pair.run_for(Duration::from_millis(1));
    }
    assert_eq!(sent, 100_000);
    assert!(
        pair.connected(),
        "the legit client did not connect under flood"
    );
    let stats = pair.anchor.stats().clone();
    // DH ran only for the burst before load was detected, plus the legit client's init.
    assert!(
        stats.dh_operations <= HANDSHAKE_BURST + 3,
        "{} DH operations",
        stats.dh_operations
    );
    let drops = pair.anchor.drops();
    assert_eq!(drops.get(DropReason::BadMac), 50_000);
    let counts: Vec<_> = drops.iter().filter(|(_, n)| *n > 0).collect();
    assert!(
        drops.get(DropReason::CookieRequired) >= 49_000,
        "{counts:?} {stats:?}"
    );
    assert!(stats.cookies_sent >= 49_000);
    assert!(
        pair.client_events
            .iter()
            .any(|e| matches!(e, upmt_proto::client::Event::Connected(_)))
    );
    // Traffic flows.
    pair.client_send(PathId(0), &up(1, 1)).unwrap();
    pair.run_for(Duration::from_millis(50));
    assert_eq!(pair.anchor_rx.len(), 1);
}

#[test]
fn inits_that_reach_dh_are_rate_limited_per_source_ip() {
    let mut pair = Pair::new(&[10], |_| {});
    pair.inflight.clear();
    let from: SocketAddr = "192.0.2.9:1000".parse().unwrap();
    for i in 0..20 {
        let init = junk_init(&pair, i);
        pair.deliver_from(from, init);
    }
    let drops = pair.anchor.drops();
    assert_eq!(drops.get(DropReason::HandshakeFailed), 5);
    assert_eq!(drops.get(DropReason::RateLimited), 15);
    assert_eq!(pair.anchor.stats().dh_operations, 5);
}

#[test]
fn a_full_transmit_queue_is_counted_and_answers_nothing_more() {
    let mut pair = Pair::new(&[10], |_| {});
    pair.inflight.clear();
    // Without draining poll_transmit, load makes every init queue a cookie.
    for i in 0..(MAX_QUEUED_TRANSMITS as u32 + 500) {
        let init = junk_init(&pair, i);
        let from = SocketAddr::from(([198, 18, (i / 250) as u8, (i % 250) as u8], 9));
        pair.deliver_from(from, init);
    }
    let overflows = pair.anchor.stats().queue_overflows;
    assert!(overflows >= 400, "{overflows}");
    assert_eq!(pair.anchor.drops().get(DropReason::QueueFull), overflows);
    let mut buf = [0u8; 1600];
    let mut queued = 0;
    while pair.anchor.poll_transmit(pair.now, &mut buf).is_some() {
        queued += 1;
    }
    assert_eq!(queued, MAX_QUEUED_TRANSMITS);
}

#[test]
fn a_peer_moving_flows_nonstop_is_obeyed_but_raises_a_bounded_number_of_events() {
    let mut pair = connected_pair(&[5, 5]);
    pair.anchor_events.clear();
    let moves = 300u16;
    for i in 0..moves {
        let flow = upmt_proto::control::FlowKey {
            protocol: 17,
            remote: CH_V4.into(),
            remote_port: 443,
            local_port: 8000 + i,
        };
        pair.client.move_flows(&[flow], P1, pair.now);
        pair.flush();
        pair.run_for(Duration::from_millis(1));
    }
    // Soon enough that the moved-to path is still fresh at the anchor.
    pair.run_for(Duration::from_millis(200));
    assert_eq!(pair.client.pending_signals(), 0, "every move was acked");
    let raised = pair
        .anchor_events
        .iter()
        .filter(|e| matches!(e, anchor::Event::FlowMoved { .. }))
        .count() as u64;
    // 300 ms of moves: the burst plus three refills at most.
    let budget = u64::from(anchor::SIGNAL_EVENT_BURST)
        + 300 / anchor::SIGNAL_EVENT_REFILL.as_millis() as u64;
    assert!(raised <= budget, "{raised} events for {moves} moves");
    assert!(raised >= u64::from(anchor::SIGNAL_EVENT_BURST));
    assert_eq!(
        raised + pair.anchor.stats().signal_events_suppressed,
        u64::from(moves)
    );
    // The moves themselves all took effect, the last ones included.
    assert_eq!(pair.anchor_send(&down(8000 + moves - 1, 1)), Ok(P1));
    assert_eq!(pair.anchor_send(&down(8000, 2)), Ok(P1));
}

#[test]
fn captured_packets_raced_from_alternating_addresses_earn_one_challenge_per_resend_interval() {
    let mut pair = connected_pair(&[20]);
    let real = pair.links[0].addr;
    let other: SocketAddr = "203.0.113.67:7777".parse().unwrap();
    let before = pair.anchor.stats().challenges_sent;
    pair.stray.clear();
    // 20 authentic packets in 200 ms, each raced from the other of two attacker addresses,
    // with the genuine host's own packets in between (each of which abandons the pending
    // challenge): without a per-path limit every one would earn a challenge.
    for i in 0..20u32 {
        pair.client_send(P0, &up(5000, 2 * i)).unwrap();
        let (_, captured) = pair.uplink_log.last().unwrap().clone();
        pair.inflight.clear();
        pair.deliver_from(if i % 2 == 0 { attacker() } else { other }, captured);
        pair.client_send(P0, &up(5000, 2 * i + 1)).unwrap();
        pair.run_for(Duration::from_millis(10));
    }
    assert_eq!(pair.anchor.stats().challenges_sent - before, 1);
    let challenges: Vec<_> = pair.stray.iter().filter(|(_, _, b)| b[0] == 0x14).collect();
    assert_eq!(challenges.len(), 1, "{:?}", pair.stray);
    // Never more bytes toward the unvalidated address than the packet that came from it.
    assert!(
        challenges
            .iter()
            .all(|(_, _, b)| b.len() <= up(5000, 0).len() + 32)
    );
    assert_eq!(endpoint(&pair, P0), Some(real));
}

#[test]
fn a_slash_64_with_ten_thousand_sources_and_valid_cookies_gets_one_sources_dh_rate() {
    use upmt_proto::cookie::{PER_IP_BURST, PER_IP_RATE};
    let mut pair = Pair::new(&[10], |_| {});
    pair.run_for(Duration::from_secs(1));
    assert!(pair.connected());
    let an_public = pair.an_secret.public_key();
    let from = |i: u32| -> SocketAddr {
        let ip = std::net::Ipv6Addr::from((0x2001_0db8_0066_0001u128 << 64) | (u128::from(i) + 1));
        SocketAddr::new(ip.into(), 40_000)
    };
    // Spend the handshake bucket from elsewhere so the anchor is under load and asks for cookies.
    for i in 0..HANDSHAKE_BURST as u32 + 1 {
        let init = junk_init(&pair, 1_000_000 + i);
        pair.deliver_from(SocketAddr::from(([198, 18, 9, (i % 200) as u8], 9)), init);
    }
    // The attacker owns the /64 and receives there: one cookie round trip is all it needs.
    pair.stray.clear();
    let first = junk_init(&pair, 0);
    pair.deliver_from(from(0), first.clone());
    pair.flush();
    let reply = pair
        .stray
        .iter()
        .find(|(dst, _, _)| *dst == from(0))
        .map(|(_, _, b)| b.clone())
        .expect("a cookie reply to the first init");
    let cookie = fuzzing::cookie_from_reply(&an_public, &first, &reply).expect("cookie opens");
    let before = pair.anchor.stats().dh_operations;
    // 10,000 inits with a valid mac2 over 1 s, each from another address of the /64.
    for ms in 0..1000u32 {
        for k in 0..10 {
            let i = 1 + ms * 10 + k;
            let mut init = junk_init(&pair, i);
            fuzzing::seal_mac2(&cookie, &mut init);
            pair.deliver_from(from(i), init);
        }
        pair.flush();
        pair.run_for(Duration::from_millis(1));
    }
    let dh = pair.anchor.stats().dh_operations - before;
    assert!(dh <= PER_IP_BURST + PER_IP_RATE + 1, "{dh} DH operations");
    assert!(dh >= PER_IP_BURST, "{dh}: the cookie did not work");
    assert!(pair.anchor.drops().get(DropReason::RateLimited) >= 9_900);
    assert!(pair.anchor.rate_limited_sources() <= 2 + HANDSHAKE_BURST as usize);
    assert!(pair.connected(), "the legit client lost its session");
}

#[test]
fn the_client_learns_each_paths_public_endpoint_from_the_anchors_probe_answers() {
    let mut pair = connected_pair(&[10, 10]);
    pair.run_for(Duration::from_secs(2));
    for (i, p) in [P0, P1].into_iter().enumerate() {
        assert_eq!(
            pair.client.path_stats(p).unwrap().observed,
            Some(pair.links[i].addr)
        );
    }
    // After a NAT rebinding the next answers (an idle client's keepalives) tell the new one.
    let rebound: SocketAddr = "198.51.100.1:51234".parse().unwrap();
    pair.links[0].addr = rebound;
    pair.run_for(Duration::from_secs(60));
    assert_eq!(pair.client.path_stats(P0).unwrap().observed, Some(rebound));
}
