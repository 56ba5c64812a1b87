//! The anchor's resend rings: each path of a peer keeps its most recent downlink packets
//! ([`crate::resend`]), and when a flow's downlink leaves a path, the flow's packets still in
//! that path's ring go out again on the flow's new path at once.
//!
//! A flow leaves a path when:
//! - the client moves it (an applied `FlowMove`);
//! - its uplink data arrives on another path (the client moved it; this is usually the first
//!   news of a move, a half round trip before the `FlowMove`, which may come later still when
//!   the signal itself is lost);
//!
//!   these two resend only when the old path was said down or has been silent for
//!   [`MOVE_RESEND_SILENCE`]: a move by policy off a healthy path (a preferred uplink
//!   returning, a better RTT) lost nothing, and resending a whole ring there would only cost
//!   the new path a burst of duplicates;
//! - the client says the path is down (an applied `PathStatus`);
//! - the anchor's own view sends its downlink around the path (stale, see the module docs of
//!   [`super`]): once per outage, until the path is heard from again.
//!
//! Resends go out through `poll_transmit` after the anchor's own control datagrams, one peer
//! at a time in the order their rings were marked.

use super::peer::Peer;
use super::{Anchor, FlowKey};
use crate::resend::ResendRing;
use crate::time::Instant;
use crate::wire::Kind;
use crate::{HEADER_LEN, PathId, PeerId, TAG_LEN, Transmit, ip};
use core::time::Duration;

/// How long a path must have been silent for a move of one flow off it to resend: longer than
/// the client's active probe interval (200 ms), shorter than its fastest blackhole detection
/// (about 400 ms of silence).
pub const MOVE_RESEND_SILENCE: Duration = Duration::from_millis(300);

/// The flow of a downlink packet, as the client started it.
fn downlink_flow(packet: &[u8]) -> Option<FlowKey> {
    ip::parse(packet).map(|k| FlowKey::from(&k.reversed()))
}

impl Peer {
    /// Keeps a plain downlink packet in `path`'s ring, sized by the anchor's settings.
    pub(super) fn keep_for_resend(
        &mut self,
        path: PathId,
        packet: &[u8],
        reserved: u16,
        now: Instant,
        bounds: (usize, Duration),
    ) {
        let ring = &mut self.path_entry(path).ring;
        if !ring.enabled() {
            *ring = ResendRing::new(bounds.0, bounds.1);
        }
        ring.push(packet, reserved, now);
    }

    /// Marks the packets kept on `from` (of `only` that flow, or of every flow) whose downlink
    /// goes elsewhere now; returns how many.
    pub(super) fn mark_resend(
        &mut self,
        from: PathId,
        only: Option<FlowKey>,
        now: Instant,
        stale: Duration,
    ) -> usize {
        let Some(i) = self.paths.iter().position(|e| e.id == from) else {
            return 0;
        };
        let e = &self.paths[i];
        let failed = e.down
            || e.last_rx
                .is_none_or(|t| now.saturating_duration_since(t) >= MOVE_RESEND_SILENCE);
        if e.ring.is_empty() || (only.is_some() && !failed) {
            return 0;
        }
        // Taken out for the walk: routing reads the other paths. An empty ring allocates nothing.
        let mut ring =
            std::mem::replace(&mut self.paths[i].ring, ResendRing::new(0, Duration::ZERO));
        let n = ring.mark(now, |packet| {
            let flow = downlink_flow(packet)?;
            if only.is_some_and(|o| o != flow) {
                return None;
            }
            let (to, _) = self.downlink_path(&flow, now, stale)?;
            (to != from).then_some(to)
        });
        self.paths[i].ring = ring;
        n
    }

    /// The next marked packet of this peer, sealed into `buf` for its new path.
    fn next_resend(
        &mut self,
        buf: &mut [u8],
        now: Instant,
        reject_after: Duration,
    ) -> Option<Transmit> {
        for i in 0..self.paths.len() {
            while let Some(m) = self.paths[i].ring.pop_marked(now) {
                let (to, reserved, len) = (m.to, m.reserved, m.packet.len());
                let Some(slot) = buf.get_mut(HEADER_LEN..HEADER_LEN + len + TAG_LEN) else {
                    continue;
                };
                slot[..len].copy_from_slice(m.packet);
                let Some(dst) = self.endpoint(to) else {
                    continue;
                };
                let Ok(keys) = self.sending_keys(now, reject_after) else {
                    return None;
                };
                let Ok(n) = keys.seal_with(Kind::Data, to, buf, len, reserved) else {
                    continue;
                };
                self.tx_packets += 1;
                self.tx_bytes += n as u64;
                self.resent_bytes += n as u64;
                return Some(Transmit {
                    path: to,
                    dst: Some(dst),
                    len: n,
                });
            }
        }
        None
    }
}

impl Anchor {
    /// The resend bounds of this anchor, `None` when it keeps nothing.
    pub(super) fn resend_bounds(&self) -> Option<(usize, Duration)> {
        let (bytes, age) = (self.config.resend_bytes, self.config.resend_age);
        (bytes > 0 && !age.is_zero()).then_some((bytes, age))
    }

    /// Marks `id`'s packets on `from` (of one flow, or all) whose downlink moved, and queues the
    /// peer for `poll_transmit` when there are any.
    pub(super) fn resend_moved(
        &mut self,
        id: PeerId,
        from: PathId,
        only: Option<FlowKey>,
        now: Instant,
    ) {
        let stale = self.config.path_stale_after;
        let Some(peer) = self.peers.get_mut(id.0 as usize) else {
            return;
        };
        if peer.mark_resend(from, only, now, stale) > 0 && !peer.resend_queued {
            peer.resend_queued = true;
            self.resend_due.push_back(id);
        }
    }

    /// A flow moved to `to` by the client's signal: its packets on every other path go again.
    pub(super) fn resend_flow(&mut self, id: PeerId, flow: FlowKey, to: PathId, now: Instant) {
        let Some(peer) = self.peers.get(id.0 as usize) else {
            return;
        };
        let from: Vec<PathId> = peer
            .paths
            .iter()
            .filter(|e| e.id != to && !e.ring.is_empty())
            .map(|e| e.id)
            .collect();
        for p in from {
            self.resend_moved(id, p, Some(flow), now);
        }
    }

    /// The next resent datagram, if any peer has one marked.
    pub(super) fn poll_resend(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let reject_after = self.config.reject_after;
        while let Some(&id) = self.resend_due.front() {
            let Some(peer) = self.peers.get_mut(id.0 as usize) else {
                self.resend_due.pop_front();
                continue;
            };
            if let Some(t) = peer.next_resend(buf, now, reject_after) {
                self.stats.resent_packets = self.stats.resent_packets.saturating_add(1);
                self.stats.resent_bytes = self.stats.resent_bytes.saturating_add(t.len as u64);
                return Some(t);
            }
            peer.resend_queued = false;
            self.resend_due.pop_front();
        }
        None
    }
}
