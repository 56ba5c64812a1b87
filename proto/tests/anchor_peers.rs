//! Changing the anchor's peers while it runs: removed peers are cut off at once, unchanged ones
//! keep their session, flows and counters.

mod util;

use std::net::Ipv4Addr;
use std::time::Duration;
use upmt_proto::anchor::{Event, PeerChanges, PeerConfig};
use upmt_proto::keys::StaticSecret;
use upmt_proto::{DropReason, PathId, PeerId};
use util::*;

const P0: PathId = PathId(0);
const P1: PathId = PathId(1);

fn connected_pair() -> Pair {
    let mut pair = Pair::new(&[10, 30], |_| {});
    pair.run_for(Duration::from_secs(1));
    assert!(pair.connected(), "handshake did not complete");
    pair
}

/// The pair's own peer, as the anchor was configured with it.
fn phone(pair: &Pair) -> PeerConfig {
    anchor_config(&pair.an_secret, &pair.mh_secret).peers[0].clone()
}

fn other_peer() -> PeerConfig {
    PeerConfig {
        name: "tablet".into(),
        public: StaticSecret::generate().unwrap().public_key(),
        virtual_ipv4: Ipv4Addr::new(10, 9, 0, 3),
        virtual_ipv6: None,
    }
}

#[test]
fn adding_and_removing_another_peer_leaves_a_live_session_its_flows_and_counters() {
    let mut pair = connected_pair();
    // One flow comes up on path 1: its downlink must keep going there.
    pair.client_send(P1, &up(6000, 1)).unwrap();
    pair.run_for(Duration::from_millis(100));
    let before = pair.anchor.peers().next().unwrap();
    assert_eq!(before.flows, 1);

    let tablet = other_peer();
    let changes = pair.anchor.set_peers(vec![phone(&pair), tablet.clone()]);
    assert_eq!(
        changes,
        PeerChanges {
            added: vec!["tablet".into()],
            removed: vec![],
            unchanged: 1,
        }
    );
    let status: Vec<_> = pair.anchor.peers().collect();
    assert_eq!(status.len(), 2);
    assert_eq!(
        status[0], before,
        "the phone's status did not change at all"
    );
    assert_eq!(status[1].name, "tablet");
    assert_eq!(status[1].peer, PeerId(1));

    let changes = pair.anchor.set_peers(vec![phone(&pair)]);
    assert_eq!(changes.removed, vec!["tablet".to_owned()]);
    assert_eq!(changes.unchanged, 1);
    assert_eq!(pair.anchor.peers().count(), 1);

    // Same session (no new handshake), same flow on the same path, both ways.
    assert_eq!(pair.anchor_send(&down(6000, 2)), Ok(P1));
    pair.client_send(P0, &up(5000, 3)).unwrap();
    pair.run_for(Duration::from_millis(100));
    assert_eq!(pair.client_rx, vec![down(6000, 2)]);
    assert_eq!(pair.anchor_rx.last(), Some(&(PeerId(0), up(5000, 3))));
    let after = pair.anchor.peers().next().unwrap();
    assert_eq!(after.last_handshake, before.last_handshake);
    assert_eq!(after.flows, 2);
    assert!(pair.anchor_errs.is_empty(), "{:?}", pair.anchor_errs);
}

#[test]
fn a_removed_peer_is_refused_at_once_both_ways_and_for_a_new_handshake() {
    let mut pair = connected_pair();
    pair.client_send(P0, &up(5000, 1)).unwrap();
    pair.run_for(Duration::from_millis(100));
    assert_eq!(pair.anchor_rx.len(), 1);
    pair.anchor_events.clear();

    let tablet = other_peer();
    let changes = pair.anchor.set_peers(vec![tablet]);
    assert_eq!(changes.removed, vec!["phone".to_owned()]);
    assert_eq!(changes.added, vec!["tablet".to_owned()]);
    pair.flush();
    assert!(
        pair.anchor_events.contains(&Event::PeerDisconnected {
            peer: PeerId(0),
            name: "phone".into()
        }),
        "{:?}",
        pair.anchor_events
    );
    assert_eq!(
        pair.anchor.peers().map(|p| p.name).collect::<Vec<_>>(),
        vec!["tablet".to_owned()]
    );

    // Downlink to its address has no peer any more.
    assert_eq!(
        pair.anchor_send(&down(5000, 2)),
        Err(DropReason::UnknownPeer)
    );
    // Its uplink, sealed with the session it still holds, opens nothing.
    pair.client_send(P0, &up(5000, 3)).unwrap();
    pair.run_for(Duration::from_millis(50));
    assert_eq!(pair.anchor_rx.len(), 1, "nothing more reached the TUN");
    assert!(
        pair.anchor_errs.contains(&DropReason::UnknownSession),
        "{:?}",
        pair.anchor_errs
    );
    // Nor does a new handshake from its key get anywhere.
    pair.anchor_errs.clear();
    pair.run_for(Duration::from_secs(200));
    assert!(
        pair.anchor_errs.contains(&DropReason::UnknownPeer),
        "{:?}",
        pair.anchor_errs
    );
    assert!(pair.anchor.peers().all(|p| !p.connected));
}

#[test]
fn a_peer_whose_address_changed_is_cut_off_and_comes_back_with_a_new_handshake() {
    let mut pair = connected_pair();
    let mut moved = phone(&pair);
    moved.virtual_ipv4 = Ipv4Addr::new(10, 9, 0, 7);
    let changes = pair.anchor.set_peers(vec![moved]);
    assert_eq!(changes.removed, vec!["phone".to_owned()]);
    assert_eq!(changes.added, vec!["phone".to_owned()]);
    let status = pair.anchor.peers().next().unwrap();
    assert_eq!(status.peer, PeerId(1), "a new id, never the old one");
    assert!(!status.connected);
    assert_eq!(status.last_handshake, None);
    // The client gives up on the dead session and handshakes again; the anchor takes it.
    pair.run_for(Duration::from_secs(200));
    let status = pair.anchor.peers().next().unwrap();
    assert!(status.connected, "the phone handshook again");
    assert_eq!(
        pair.client.session().map(|s| s.virtual_ipv4),
        Some(Ipv4Addr::new(10, 9, 0, 7))
    );
}
