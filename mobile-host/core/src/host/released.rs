//! The packets that waited for their flow's owner, sent once it is known: those of a redundant
//! flow go over both its uplinks like every later packet of the flow, so a handover right at
//! the start of a call loses nothing either.

use upmt_paft::{UplinkId, parse_key_lenient};
use upmt_proto::time::Instant;
use upmt_proto::{HEADER_LEN, Transmit};

use super::MobileHost;

impl MobileHost {
    /// Seals a released packet at `buf[HEADER_LEN..HEADER_LEN + len]` for `uplink`, and its
    /// copy for the flow's second uplink when the flow is redundant (sent by the next
    /// [`MobileHost::poll_transmit`]).
    pub(super) fn encapsulate_released(
        &mut self,
        uplink: UplinkId,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> Option<Transmit> {
        let redundancy = self.flows.redundancy();
        let second = buf
            .get(HEADER_LEN..HEADER_LEN + len)
            .and_then(|p| parse_key_lenient(p).ok())
            .filter(|_| !redundancy.is_empty())
            .and_then(|k| self.flows.paft().lookup(&k))
            .and_then(|e| Some((e.id(), redundancy.second(e.id())?)));
        match second {
            Some((flow, second)) if second != uplink => {
                self.encapsulate_redundant([uplink, second], flow, buf, len, now)
            }
            _ => self.encapsulate(uplink, buf, len, now),
        }
    }

    /// The copy of a released redundant packet, written at the start of `buf`.
    pub(super) fn pending_copy(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        let (path, len) = self.copy.ready?;
        let out = buf.get_mut(..len)?;
        out.copy_from_slice(self.copy.buf.as_deref()?.get(..len)?);
        self.copy.ready = None;
        Some(Transmit {
            path,
            dst: None,
            len,
        })
    }
}
