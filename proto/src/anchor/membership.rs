//! Changing the set of accepted peers while the anchor runs (a config reload).
//!
//! A peer is known by its public key. One whose key, name and addresses are all unchanged keeps
//! everything: its keypairs, paths, flows and counters, and its `PeerId`. One that is gone, or
//! whose name or addresses changed, is cut off at once: its keypairs are forgotten (so its next
//! datagram is refused as `UnknownSession`), its addresses no longer match a downlink packet
//! (`UnknownPeer`), and a new handshake from its key is refused (`UnknownPeer`). A changed peer
//! then comes back as a new one, so its phone has to handshake again and learns its new
//! addresses from the response.
//!
//! Ids are never reused: a removed peer's slot stays (emptied) so that a `PeerId` still in a
//! queued transmit or in the driver's hands can never name another peer. Added peers take the
//! next id. The slots cost a few hundred bytes per peer ever removed, until the next restart.

use super::peer::Peer;
use super::{Anchor, Event, PeerConfig};
use crate::PeerId;
use crate::keys::PublicKey;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

/// What [`Anchor::set_peers`] did, by peer name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerChanges {
    /// Peers that are new (or came back changed), in the order given.
    pub added: Vec<String>,
    /// Peers cut off (gone, or changed), in id order.
    pub removed: Vec<String>,
    /// Peers left untouched.
    pub unchanged: usize,
}

impl Anchor {
    /// Makes `peers` the accepted peers (see the module docs). A peer cut off while connected
    /// raises [`Event::PeerDisconnected`]. `peers` must hold no duplicate key or address (the
    /// config validation guarantees it); a later duplicate is ignored.
    pub fn set_peers(&mut self, peers: Vec<PeerConfig>) -> PeerChanges {
        let mut changes = PeerChanges::default();
        let wanted: HashMap<PublicKey, &PeerConfig> = peers.iter().map(|p| (p.public, p)).collect();
        for (i, peer) in self.peers.iter_mut().enumerate() {
            if peer.removed || wanted.get(&peer.config.public) == Some(&&peer.config) {
                continue;
            }
            let id = PeerId(i as u32);
            if self.by_key.get(&peer.config.public) == Some(&id) {
                self.by_key.remove(&peer.config.public);
            }
            let addrs = [
                Some(IpAddr::V4(peer.config.virtual_ipv4)),
                peer.config.virtual_ipv6.map(IpAddr::V6),
            ];
            for addr in addrs.into_iter().flatten() {
                if self.by_addr.get(&addr) == Some(&id) {
                    self.by_addr.remove(&addr);
                }
            }
            for index in peer.forget_session() {
                self.by_index.remove(&index.0);
            }
            if peer.connected {
                self.queues.push_event(Event::PeerDisconnected {
                    peer: id,
                    name: peer.config.name.clone(),
                });
            }
            changes.removed.push(peer.config.name.clone());
            // A fresh, empty peer: the flow table's memory and the counters go with the old one.
            let mut emptied = Peer::new(peer.config.clone());
            emptied.removed = true;
            *peer = emptied;
        }
        let mut added = HashSet::new();
        for pc in &peers {
            if self.by_key.contains_key(&pc.public) {
                if !added.contains(&pc.public) {
                    changes.unchanged += 1;
                }
                continue;
            }
            added.insert(pc.public);
            let id = PeerId(self.peers.len() as u32);
            self.by_key.insert(pc.public, id);
            self.by_addr.insert(IpAddr::V4(pc.virtual_ipv4), id);
            if let Some(v6) = pc.virtual_ipv6 {
                self.by_addr.insert(IpAddr::V6(v6), id);
            }
            self.peers.push(Peer::new(pc.clone()));
            changes.added.push(pc.name.clone());
        }
        self.config.peers = peers;
        changes
    }
}
