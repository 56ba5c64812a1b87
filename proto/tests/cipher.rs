//! Scenario tests of the transport cipher negotiation: AES-256-GCM only where both ends run it
//! fast, ChaCha20-Poly1305 otherwise, and every transport guarantee holds under either.

mod util;

use std::time::Duration;
use upmt_proto::anchor::Anchor;
use upmt_proto::{Cipher, DropReason, PathId, PeerId};
use util::*;

const P0: PathId = PathId(0);

/// A pair whose client offers AES-256-GCM when `client_aes` and whose anchor accepts it when
/// `anchor_aes`, run until connected.
fn pair_with(client_aes: bool, anchor_aes: bool, delays: &[u64]) -> Pair {
    let mut pair = Pair::with_anchor(
        delays,
        |c| {
            c.fast_aes = client_aes;
            c.rekey_after = Duration::from_secs(10);
        },
        |a| a.fast_aes = anchor_aes,
    );
    pair.run_for(Duration::from_secs(1));
    assert!(pair.connected(), "handshake did not complete");
    pair
}

fn negotiated(pair: &Pair) -> (Cipher, Option<Cipher>) {
    (
        pair.client.session().unwrap().cipher,
        pair.anchor.peer_cipher(PeerId(0)),
    )
}

fn exchange(pair: &mut Pair, n: u32) {
    for i in 0..n {
        pair.client_send(P0, &up(5000, i)).unwrap();
        assert_eq!(pair.anchor_send(&down(5000, i)), Ok(P0));
    }
    pair.run_for(Duration::from_millis(100));
}

#[test]
fn both_ends_with_aes_hardware_agree_on_aes_256_gcm_and_data_flows_both_ways() {
    let mut pair = pair_with(true, true, &[10]);
    assert_eq!(
        negotiated(&pair),
        (Cipher::Aes256Gcm, Some(Cipher::Aes256Gcm))
    );
    exchange(&mut pair, 3);
    assert_eq!(
        pair.anchor_rx,
        (0..3).map(|i| (PeerId(0), up(5000, i))).collect::<Vec<_>>()
    );
    assert_eq!(
        pair.client_rx,
        (0..3).map(|i| down(5000, i)).collect::<Vec<_>>()
    );
    let status = pair.anchor.peers().next().unwrap();
    assert_eq!(status.cipher, Some(Cipher::Aes256Gcm));
    assert!(pair.client_errs.is_empty() && pair.anchor_errs.is_empty());
}

#[test]
fn without_aes_on_either_side_the_session_is_chacha20_and_data_flows() {
    for (client_aes, anchor_aes) in [(false, false), (true, false), (false, true)] {
        let mut pair = pair_with(client_aes, anchor_aes, &[10]);
        assert_eq!(
            negotiated(&pair),
            (Cipher::ChaCha20Poly1305, Some(Cipher::ChaCha20Poly1305)),
            "client_aes {client_aes}, anchor_aes {anchor_aes}"
        );
        exchange(&mut pair, 2);
        assert_eq!(pair.anchor_rx.len(), 2);
        assert_eq!(pair.client_rx.len(), 2);
        assert!(pair.client_errs.is_empty() && pair.anchor_errs.is_empty());
    }
}

#[test]
fn the_default_configs_keep_chacha20_as_before() {
    let mut pair = Pair::new(&[10], |_| {});
    pair.run_for(Duration::from_secs(1));
    assert_eq!(
        negotiated(&pair),
        (Cipher::ChaCha20Poly1305, Some(Cipher::ChaCha20Poly1305))
    );
}

#[test]
fn aes_sessions_rekey_without_losing_a_packet_and_stay_aes() {
    let mut pair = pair_with(true, true, &[20]);
    let sent = pair.exchange_each_way(P0, 250);
    let rekeys = pair.client_rekeys();
    assert!(
        rekeys >= 2,
        "expected at least two rekeys in 25 s, got {rekeys}"
    );
    assert_eq!(pair.anchor_rx.len(), sent as usize, "uplink lost packets");
    assert_eq!(pair.client_rx.len(), sent as usize, "downlink lost packets");
    assert_eq!(
        negotiated(&pair),
        (Cipher::Aes256Gcm, Some(Cipher::Aes256Gcm))
    );
    assert!(pair.client_errs.is_empty(), "{:?}", pair.client_errs);
    assert!(pair.anchor_errs.is_empty(), "{:?}", pair.anchor_errs);
}

#[test]
fn aes_packets_replayed_are_rejected() {
    let mut pair = pair_with(true, true, &[10]);
    pair.client_send(P0, &up(5000, 7)).unwrap();
    let (path, captured) = pair.uplink_log.last().unwrap().clone();
    pair.run_for(Duration::from_millis(50));
    assert_eq!(pair.anchor_rx.len(), 1);
    pair.deliver(true, path, captured);
    assert_eq!(pair.anchor_rx.len(), 1);
    assert_eq!(pair.anchor_errs, vec![DropReason::Replayed]);
}

#[test]
fn aes_packets_with_a_flipped_bit_are_forged_and_do_not_burn_the_counter() {
    let mut pair = pair_with(true, true, &[10]);
    pair.client_send(P0, &up(5000, 7)).unwrap();
    let (path, mut captured) = pair.uplink_log.pop().unwrap();
    pair.inflight.clear();
    let mid = captured.len() / 2;
    captured[mid] ^= 0x01;
    pair.deliver(true, path, captured.clone());
    assert_eq!(pair.anchor_errs, vec![DropReason::Forged]);
    captured[mid] ^= 0x01;
    pair.deliver(true, path, captured);
    assert_eq!(pair.anchor_rx, vec![(PeerId(0), up(5000, 7))]);
}

#[test]
fn an_anchor_restarted_without_aes_moves_the_session_to_chacha20() {
    let mut pair = pair_with(true, true, &[10]);
    assert_eq!(negotiated(&pair).0, Cipher::Aes256Gcm);
    // The restarted anchor does not know the session: the client's next packets are refused
    // until it handshakes again, this time with an anchor that only runs ChaCha20.
    pair.anchor = Anchor::new(anchor_config(&pair.an_secret, &pair.mh_secret), pair.now);
    pair.client_send(P0, &up(5000, 1)).unwrap();
    pair.run_for(Duration::from_secs(6));
    assert_eq!(
        negotiated(&pair),
        (Cipher::ChaCha20Poly1305, Some(Cipher::ChaCha20Poly1305))
    );
    let before = pair.anchor_rx.len();
    exchange(&mut pair, 1);
    assert_eq!(pair.anchor_rx.len(), before + 1);
}
