//! The client's resend rings: each path keeps its most recent uplink packets
//! ([`crate::resend`]); when the driver moves flows off a path that went down, it names their
//! new paths with [`Client::resend_moved`] and their packets still in the ring go out again
//! there, through `poll_transmit`, after the client's own datagrams.

use super::Client;
use crate::dup::resend_field;
use crate::resend::ResendRing;
use crate::time::Instant;
use crate::wire::Kind;
use crate::{HEADER_LEN, PathId, TAG_LEN, Transmit};

impl Client {
    /// Keeps the plain packet at `buf[HEADER_LEN..HEADER_LEN + len]`, about to be sealed for
    /// `path`, in that path's ring; returns the reserved field to seal it with (0 when resending
    /// is off).
    pub(super) fn keep_for_resend(
        &mut self,
        path: PathId,
        buf: &[u8],
        len: usize,
        now: Instant,
    ) -> u16 {
        let (bytes, age) = (self.config.resend_bytes, self.config.resend_age);
        if bytes == 0 || age.is_zero() || self.current.is_none() {
            return 0;
        }
        let Some(packet) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
            return 0;
        };
        self.resend_seq = self.resend_seq.wrapping_add(1);
        let field = resend_field(self.resend_seq);
        let i = match self.rings.iter().position(|(p, _)| *p == path) {
            Some(i) => i,
            None => {
                self.rings.push((path, ResendRing::new(bytes, age)));
                self.rings.len() - 1
            }
        };
        self.rings[i].1.push(packet, field, now);
        field
    }

    /// Marks for resending the packets `from` carried recently (within the ring's bounds) for
    /// which `route` names another path: the flow's new one. The driver calls it when it moved
    /// flows off `from` (it went down); `route` gets each plain packet. Returns how many.
    pub fn resend_moved(
        &mut self,
        from: PathId,
        now: Instant,
        mut route: impl FnMut(&[u8]) -> Option<PathId>,
    ) -> usize {
        let Some((_, ring)) = self.rings.iter_mut().find(|(p, _)| *p == from) else {
            return 0;
        };
        ring.mark(now, |packet| route(packet).filter(|to| *to != from))
    }

    /// Bytes of the datagrams resent on `path` so far.
    pub fn resent_bytes(&self, path: PathId) -> u64 {
        self.resent
            .iter()
            .find(|(p, _)| *p == path)
            .map_or(0, |(_, b)| *b)
    }

    /// The next marked packet, sealed into `buf` for its new path.
    pub(super) fn poll_resend(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if self.keys_expired || self.current.is_none() {
            return None;
        }
        for i in 0..self.rings.len() {
            while let Some(m) = self.rings[i].1.pop_marked(now) {
                let (to, reserved, len) = (m.to, m.reserved, m.packet.len());
                let Some(slot) = buf.get_mut(HEADER_LEN..HEADER_LEN + len + TAG_LEN) else {
                    continue;
                };
                slot[..len].copy_from_slice(m.packet);
                if self.path(to).is_none() {
                    continue;
                }
                let keys = self.current.as_mut()?;
                let Ok(n) = keys.seal_with(Kind::Data, to, buf, len, reserved) else {
                    continue;
                };
                if let Some(p) = self.path_mut(to) {
                    p.on_sent(now);
                    p.on_data_sent(now);
                }
                match self.resent.iter_mut().find(|(p, _)| *p == to) {
                    Some((_, b)) => *b += n as u64,
                    None => self.resent.push((to, n as u64)),
                }
                return Some(Transmit {
                    path: to,
                    dst: None,
                    len: n,
                });
            }
        }
        None
    }
}
