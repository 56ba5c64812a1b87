//! The duplicate filter of redundant flows: the receiver delivers the first copy of a packet
//! that came over two paths and drops the second, as a duplicate (not as a replay).
//!
//! # Why not the replay windows
//! Each path has its own counter space (see [`crate::replay`]), so the two copies of one
//! packet carry different counters (and different nonces, as they must: the path id is in the
//! associated data, and reusing a nonce under one key with two different headers would hand an
//! attacker the Poly1305 key). Both copies pass their path's replay window. What they share is
//! a *dup sequence* the sender puts in both.
//!
//! # Where the sequence travels
//! In the transport header's reserved field, which is authenticated (it is part of the AEAD's
//! associated data), so only the peer can set it: [`DUP_FLAG`] marks a redundant packet and the
//! low 15 bits carry the sequence. Nothing is added to the packet, so the TUN MTU stays as it
//! is, and a receiver that predates this ignores the field and simply delivers both copies.
//!
//! # The window
//! The receiver extends each 15-bit sequence to 64 bits around the highest one seen (the
//! nearest value, as RTP does with its 16-bit sequence numbers) and checks it in a
//! [`ReplayWindow`] of [`WINDOW`] (8192) sequences: constant time per packet, 1 KiB per
//! session. 8192 packets cover a delay difference between the two paths of 6.5 s at 1250
//! packets/s and 82 ms at 100,000 packets/s; a copy later than that is *delivered* (the filter
//! fails open: an app sees a duplicate, never a loss).
//!
//! The filter lives with a receive key: both copies of a packet are sealed back to back under
//! the same key, and a restarted sender (whose sequence starts anew) handshakes first, so its
//! sequence always meets a fresh filter.
//!
//! # Resent packets
//! A packet resent after a handover (see [`crate::resend`]) is sealed again on its new path, so
//! it too needs an identity both copies share. Redundant packets already carry one; every other
//! Data packet a sender may resend carries a *resend sequence* in a second space of the same
//! field: [`RESEND_FLAG`] set, [`DUP_FLAG`] clear, 14 bits of sequence ([`resend_field`]),
//! checked by a second filter ([`DupFilter::resent`]). A separate space keeps bulk traffic from
//! sliding the window of a redundant stream. 14 bits wrap at 16,384, so that window is 8192
//! sequences, half the space: the nearest-value extension stays exact inside it. A receiver
//! that predates this ignores the flag and delivers a late original as well (the app sees a
//! duplicate, which TCP and real-time apps tolerate); the replay windows never see one, since
//! each copy has its own path's counter.
//!
//! A copy resent under newer keys than its original (a rekey in between) meets a fresh filter
//! and is delivered even if the original arrived: fail open again, once per rekey at most.

use crate::replay::{ReplayWindow, WINDOW};

/// Set in the reserved field of a redundant Data packet.
pub const DUP_FLAG: u16 = 0x8000;
/// The sequence's share of the reserved field.
const SEQ_MASK: u16 = 0x7fff;
/// Set (with [`DUP_FLAG`] clear) in the reserved field of a Data packet that may be resent.
pub const RESEND_FLAG: u16 = 0x4000;
/// The resend sequence's share of the reserved field.
const RESEND_MASK: u16 = 0x3fff;
/// Where the first extended sequence is put: far from 0, so that going back never underflows.
const ORIGIN: u64 = 1 << 40;

/// The reserved field of the `n`-th redundant packet of a sender.
pub const fn dup_field(n: u64) -> u16 {
    DUP_FLAG | (n as u16 & SEQ_MASK)
}

/// The reserved field of the `n`-th resendable (not redundant) packet of a sender.
pub const fn resend_field(n: u64) -> u16 {
    RESEND_FLAG | (n as u16 & RESEND_MASK)
}

/// What the filter says about a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DupVerdict {
    /// Not a redundant packet, or the first copy: deliver it.
    Deliver,
    /// The second copy: drop it and count it as a duplicate.
    Duplicate,
}

/// The receiver's state: one per session direction and sequence space.
#[derive(Clone, Debug)]
pub struct DupFilter {
    highest: Option<u64>,
    window: ReplayWindow,
    /// Which bits of the reserved field say a packet is in this space, and their value.
    flag_mask: u16,
    flag: u16,
    seq_mask: u16,
}

impl Default for DupFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl DupFilter {
    /// The filter of redundant packets ([`DUP_FLAG`]); nothing seen yet.
    pub const fn new() -> Self {
        DupFilter {
            highest: None,
            window: ReplayWindow::new(),
            flag_mask: DUP_FLAG,
            flag: DUP_FLAG,
            seq_mask: SEQ_MASK,
        }
    }

    /// The filter of resendable packets ([`RESEND_FLAG`]); nothing seen yet.
    pub const fn resent() -> Self {
        DupFilter {
            highest: None,
            window: ReplayWindow::new(),
            flag_mask: DUP_FLAG | RESEND_FLAG,
            flag: RESEND_FLAG,
            seq_mask: RESEND_MASK,
        }
    }

    /// Checks the authenticated reserved field of a Data packet and records it; a packet of
    /// another space (or of none) is delivered and changes nothing.
    pub fn check(&mut self, reserved: u16) -> DupVerdict {
        if reserved & self.flag_mask != self.flag {
            return DupVerdict::Deliver;
        }
        let space = u64::from(self.seq_mask) + 1;
        let seq = u64::from(reserved & self.seq_mask);
        let ext = match self.highest {
            None => ORIGIN + seq,
            Some(h) => {
                let ahead = seq.wrapping_sub(h % space) % space;
                if ahead < space / 2 {
                    h + ahead
                } else {
                    h - (space - ahead)
                }
            }
        };
        let highest = self.highest.map_or(ext, |h| h.max(ext));
        if highest - ext >= WINDOW.min(space / 2) {
            // Older than the window: fail open.
            return DupVerdict::Deliver;
        }
        self.highest = Some(highest);
        if self.window.mark(ext) {
            DupVerdict::Deliver
        } else {
            DupVerdict::Duplicate
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_packets_are_always_delivered() {
        let mut f = DupFilter::new();
        for _ in 0..3 {
            assert_eq!(f.check(0), DupVerdict::Deliver);
        }
    }

    #[test]
    fn the_second_copy_is_a_duplicate_in_either_order() {
        let mut f = DupFilter::new();
        for n in 0..100_000u64 {
            assert_eq!(
                f.check(dup_field(n)),
                DupVerdict::Deliver,
                "first copy of {n}"
            );
            assert_eq!(
                f.check(dup_field(n)),
                DupVerdict::Duplicate,
                "second copy of {n}"
            );
        }
    }

    #[test]
    fn a_path_lagging_by_thousands_of_packets_still_has_its_copies_dropped() {
        let mut f = DupFilter::new();
        let lag = 5000u64;
        for n in 0..lag {
            assert_eq!(f.check(dup_field(n)), DupVerdict::Deliver);
        }
        for n in lag..40_000 {
            assert_eq!(f.check(dup_field(n)), DupVerdict::Deliver);
            assert_eq!(f.check(dup_field(n - lag)), DupVerdict::Duplicate, "{n}");
        }
    }

    #[test]
    fn resent_copies_are_duplicates_in_their_own_space() {
        let mut redundant = DupFilter::new();
        let mut resent = DupFilter::resent();
        for n in 0..50_000u64 {
            assert_eq!(resent.check(resend_field(n)), DupVerdict::Deliver);
            // The other filter lets the other space through untouched.
            assert_eq!(redundant.check(resend_field(n)), DupVerdict::Deliver);
            assert_eq!(resent.check(dup_field(n)), DupVerdict::Deliver);
            if n >= 100 {
                assert_eq!(
                    resent.check(resend_field(n - 100)),
                    DupVerdict::Duplicate,
                    "{n}"
                );
            }
        }
    }

    #[test]
    fn a_resent_copy_half_the_space_late_is_delivered_not_mistaken() {
        let mut f = DupFilter::resent();
        for n in 0..=8192u64 {
            assert_eq!(f.check(resend_field(n)), DupVerdict::Deliver);
        }
        // 8192 behind: out of the window, fails open.
        assert_eq!(f.check(resend_field(0)), DupVerdict::Deliver);
        assert_eq!(f.check(resend_field(1)), DupVerdict::Duplicate);
    }

    #[test]
    fn a_copy_older_than_the_window_is_delivered_not_lost() {
        let mut f = DupFilter::new();
        f.check(dup_field(0));
        for n in 1..=WINDOW + 10 {
            f.check(dup_field(n));
        }
        assert_eq!(f.check(dup_field(0)), DupVerdict::Deliver);
    }
}
