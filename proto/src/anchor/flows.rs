//! The anchor's data plane: which path each flow's downlink takes, and the uplink checks.

use super::peer::{PathEntry, Peer};
use super::{Anchor, FlowKey, MAX_FLOWS_PER_PEER};
use crate::dup::{dup_field, resend_field};
use crate::time::Instant;
use crate::wire::Kind;
use crate::{DropReason, HEADER_LEN, PathId, TAG_LEN, Transmit, ip};
use core::time::Duration;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

/// Where one flow's downlink goes.
#[derive(Clone, Copy, Debug)]
struct FlowRoute {
    /// The path it last came up on or was moved to.
    path: PathId,
    /// The sequence number of the last explicit move (0: none).
    seq: u64,
    /// A redundant flow's second path (set only by an explicit move).
    redundant: Option<PathId>,
}

/// Flow -> its [`FlowRoute`], bounded, oldest inserted evicted first.
#[derive(Default)]
pub(super) struct FlowTable {
    map: HashMap<FlowKey, FlowRoute>,
    order: VecDeque<FlowKey>,
}

impl FlowTable {
    /// Learns `path` from uplink data; returns the flow's previous path when it changed.
    pub(super) fn record(&mut self, key: FlowKey, path: PathId) -> Option<PathId> {
        if let Some(p) = self.map.get_mut(&key) {
            // A redundant flow's copies come up on both of its paths: neither changes the pair.
            if p.redundant != Some(path) && p.path != path {
                let old = p.path;
                p.path = path;
                return Some(old);
            }
            return None;
        }
        self.insert(
            key,
            FlowRoute {
                path,
                seq: 0,
                redundant: None,
            },
        );
        None
    }

    /// Applies an explicit move; false when an equal or newer move was already applied.
    pub(super) fn apply_move(
        &mut self,
        key: FlowKey,
        path: PathId,
        redundant: Option<PathId>,
        seq: u64,
    ) -> bool {
        let route = FlowRoute {
            path,
            seq,
            redundant: redundant.filter(|r| *r != path),
        };
        if let Some(p) = self.map.get_mut(&key) {
            if seq <= p.seq {
                return false;
            }
            *p = route;
            return true;
        }
        self.insert(key, route);
        true
    }

    fn insert(&mut self, key: FlowKey, value: FlowRoute) {
        if self.map.len() >= MAX_FLOWS_PER_PEER
            && let Some(old) = self.order.pop_front()
        {
            self.map.remove(&old);
        }
        self.map.insert(key, value);
        self.order.push_back(key);
    }

    pub(super) fn get(&self, key: &FlowKey) -> Option<PathId> {
        self.map.get(key).map(|v| v.path)
    }

    /// The two paths of a redundant flow.
    fn redundant_pair(&self, key: &FlowKey) -> Option<[PathId; 2]> {
        let v = self.map.get(key)?;
        Some([v.path, v.redundant?])
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Forgets every flow and frees the tables (an expired peer holds no flow memory).
    pub(super) fn clear(&mut self) {
        *self = FlowTable::default();
    }
}

impl Peer {
    /// An uplink inner packet: refused unless its source is the peer's own virtual address;
    /// otherwise its flow is recorded as living on `path`. Returns the flow's previous path
    /// and the flow when it came up on a new one.
    pub(super) fn uplink(
        &mut self,
        plain: &[u8],
        path: PathId,
    ) -> Result<Option<(PathId, FlowKey)>, DropReason> {
        let key = ip::parse(plain).ok_or(DropReason::NotIp)?;
        let own = match key.src {
            IpAddr::V4(a) => a == self.config.virtual_ipv4,
            IpAddr::V6(a) => Some(a) == self.config.virtual_ipv6,
        };
        if !own {
            return Err(DropReason::SpoofedSource);
        }
        let flow = FlowKey::from(&key);
        Ok(self.flows.record(flow, path).map(|old| (old, flow)))
    }

    /// The path and validated endpoint for `flow`'s downlink (see the module docs). Fresh
    /// first: the flow's path, else the freshest one; then, when nothing is fresh, the flow's
    /// or the latest path unless said down; then any validated one.
    pub(super) fn downlink_path(
        &self,
        flow: &FlowKey,
        now: Instant,
        stale: Duration,
    ) -> Option<(PathId, SocketAddr)> {
        let wanted = self.flows.get(flow).or(self.last_path);
        let entry = |p: PathId| self.paths.iter().find(|e| e.id == p);
        let fresh = |e: &&PathEntry| e.fresh(now, stale);
        wanted
            .and_then(entry)
            .filter(fresh)
            .or_else(|| self.paths.iter().filter(fresh).max_by_key(|e| e.last_rx))
            .or_else(|| {
                [self.flows.get(flow), self.last_path]
                    .into_iter()
                    .flatten()
                    .filter_map(entry)
                    .find(|e| e.endpoint.is_some() && !e.down)
            })
            .or_else(|| {
                self.paths
                    .iter()
                    .filter(|e| e.endpoint.is_some())
                    .min_by_key(|e| e.down)
            })
            .and_then(|e| Some((e.id, e.endpoint?)))
    }
}

impl Peer {
    /// The path and endpoint of the copy of a redundant flow's downlink packet going on
    /// `chosen`: the flow's other path, when validated and not said down. Freshness is not
    /// asked for: a copy on a path that just went silent is what redundancy is for.
    fn redundant_copy(&self, flow: &FlowKey, chosen: PathId) -> Option<(PathId, SocketAddr)> {
        let pair = self.flows.redundant_pair(flow)?;
        let other = *pair.iter().find(|p| **p != chosen)?;
        let e = self.paths.iter().find(|e| e.id == other && !e.down)?;
        Some((other, e.endpoint?))
    }
}

impl Anchor {
    /// `buf[HEADER_LEN..HEADER_LEN + len]` holds an inner packet read from the TUN; its
    /// destination picks the peer; the downlink path is the one the flow last came up on or was
    /// moved to, unless that path is down or stale (see the module docs), else the freshest path.
    pub fn encapsulate(
        &mut self,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> Result<Transmit, DropReason> {
        self.encapsulate_with_copy(buf, len, &mut [], now)
            .map(|(t, _)| t)
    }

    /// [`Anchor::encapsulate`] that also serves redundant flows: when the packet's flow is
    /// redundant (see [`crate::control::ControlMessage::FlowMove`]) a second datagram with the
    /// same dup sequence goes to the flow's other path, written into `copy` (which needs the
    /// same room as `buf`; an empty one means no copy).
    pub fn encapsulate_with_copy(
        &mut self,
        buf: &mut [u8],
        len: usize,
        copy: &mut [u8],
        now: Instant,
    ) -> Result<(Transmit, Option<Transmit>), DropReason> {
        let r = self.encapsulate_inner(buf, len, copy, now);
        if let Err(reason) = r {
            self.drops.add(reason);
        }
        r
    }

    fn encapsulate_inner(
        &mut self,
        buf: &mut [u8],
        len: usize,
        copy: &mut [u8],
        now: Instant,
    ) -> Result<(Transmit, Option<Transmit>), DropReason> {
        let end = HEADER_LEN.checked_add(len).ok_or(DropReason::TooBig)?;
        if end.checked_add(TAG_LEN).is_none_or(|n| n > buf.len()) {
            return Err(DropReason::TooBig);
        }
        let key = ip::parse(&buf[HEADER_LEN..end]).ok_or(DropReason::NotIp)?;
        let id = *self.by_addr.get(&key.dst).ok_or(DropReason::UnknownPeer)?;
        let resend = self.resend_bounds();
        let peer = &mut self.peers[id.0 as usize];
        // The flow as its first packet would have left the mobile host.
        let flow = FlowKey::from(&key.reversed());
        let (path, dst) = peer
            .downlink_path(&flow, now, self.config.path_stale_after)
            .ok_or(DropReason::NoSession)?;
        let second = peer
            .redundant_copy(&flow, path)
            .filter(|_| copy.len() >= end + TAG_LEN);
        let reserved = match (second, resend) {
            (Some(_), _) => {
                copy[HEADER_LEN..end].copy_from_slice(&buf[HEADER_LEN..end]);
                peer.dup_seq = peer.dup_seq.wrapping_add(1);
                dup_field(peer.dup_seq)
            }
            // A redundant flow's copy is its resend; every other packet may be resent.
            (None, Some(bounds)) => {
                peer.resend_seq = peer.resend_seq.wrapping_add(1);
                let field = resend_field(peer.resend_seq);
                peer.keep_for_resend(path, &buf[HEADER_LEN..end], field, now, bounds);
                field
            }
            (None, None) => 0,
        };
        // Downlink just went around the flow's own path (stale or said down): what that path
        // carried last goes again, once per outage.
        let own = peer.flows.get(&flow).or(peer.last_path);
        let diverted = own.filter(|o| {
            *o != path
                && peer
                    .paths
                    .iter()
                    .any(|e| e.id == *o && !e.drained && !e.ring.is_empty())
        });
        let keys = peer.sending_keys(now, self.config.reject_after)?;
        let n = keys.seal_with(Kind::Data, path, buf, len, reserved)?;
        let first = Transmit {
            path,
            dst: Some(dst),
            len: n,
        };
        let copied = second.and_then(|(p, dst)| {
            let n = keys.seal_with(Kind::Data, p, copy, len, reserved).ok()?;
            Some(Transmit {
                path: p,
                dst: Some(dst),
                len: n,
            })
        });
        peer.tx_packets += 1;
        peer.tx_bytes += n as u64;
        if let Some(o) = diverted {
            if let Some(e) = peer.paths.iter_mut().find(|e| e.id == o) {
                e.drained = true;
            }
            self.resend_moved(id, o, None, now);
        }
        let Some(peer) = self.peers.get_mut(id.0 as usize) else {
            return Ok((first, copied));
        };
        if let Some(c) = &copied {
            peer.tx_packets += 1;
            peer.tx_bytes += c.len as u64;
            self.stats.duplicated_packets = self.stats.duplicated_packets.saturating_add(1);
            self.stats.duplicated_bytes = self.stats.duplicated_bytes.saturating_add(c.len as u64);
        }
        Ok((first, copied))
    }
}
