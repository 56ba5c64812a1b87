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

use crate::replay::{ReplayWindow, WINDOW};

/// Set in the reserved field of a redundant Data packet.
pub const DUP_FLAG: u16 = 0x8000;
/// The sequence's share of the reserved field.
const SEQ_MASK: u16 = 0x7fff;
/// Sequences before they wrap.
const SPACE: u64 = SEQ_MASK as u64 + 1;
/// Where the first extended sequence is put: far from 0, so that going back never underflows.
const ORIGIN: u64 = 1 << 40;

/// The reserved field of the `n`-th redundant packet of a sender.
pub const fn dup_field(n: u64) -> u16 {
    DUP_FLAG | (n as u16 & SEQ_MASK)
}

/// What the filter says about a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DupVerdict {
    /// Not a redundant packet, or the first copy: deliver it.
    Deliver,
    /// The second copy: drop it and count it as a duplicate.
    Duplicate,
}

/// The receiver's state: one per session direction.
#[derive(Clone, Debug, Default)]
pub struct DupFilter {
    highest: Option<u64>,
    window: ReplayWindow,
}

impl DupFilter {
    /// Nothing seen yet.
    pub const fn new() -> Self {
        DupFilter {
            highest: None,
            window: ReplayWindow::new(),
        }
    }

    /// Checks the authenticated reserved field of a Data packet and records it.
    pub fn check(&mut self, reserved: u16) -> DupVerdict {
        if reserved & DUP_FLAG == 0 {
            return DupVerdict::Deliver;
        }
        let seq = u64::from(reserved & SEQ_MASK);
        let ext = match self.highest {
            None => ORIGIN + seq,
            Some(h) => {
                let ahead = seq.wrapping_sub(h % SPACE) % SPACE;
                if ahead < SPACE / 2 {
                    h + ahead
                } else {
                    h - (SPACE - ahead)
                }
            }
        };
        let highest = self.highest.map_or(ext, |h| h.max(ext));
        if highest - ext >= WINDOW {
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
    fn a_copy_older_than_the_window_is_delivered_not_lost() {
        let mut f = DupFilter::new();
        f.check(dup_field(0));
        for n in 1..=WINDOW + 10 {
            f.check(dup_field(n));
        }
        assert_eq!(f.check(dup_field(0)), DupVerdict::Deliver);
    }
}
