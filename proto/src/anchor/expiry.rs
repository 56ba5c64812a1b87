//! Session expiry without scanning every peer: a deadline heap with one entry per peer that has
//! a session.
//!
//! A peer's real deadline (`Peer::deadline`) moves later with every authenticated packet; pushing
//! a heap entry per packet would make the heap as big as the traffic. Instead each entry holds a
//! time at or before the peer's real deadline, and is checked lazily when it comes due: a peer
//! that was heard from meanwhile gets one new entry at its real deadline, a silent one expires.
//! So a wake-up touches only the entries that are due, and a busy peer costs at most one heap
//! operation per `session_timeout`, whatever the number of peers.

use crate::PeerId;
use crate::time::Instant;
use core::cmp::Reverse;
use std::collections::BinaryHeap;

/// Earliest-first deadlines of the peers with a session.
#[derive(Default)]
pub(super) struct ExpiryQueue {
    heap: BinaryHeap<Reverse<(Instant, PeerId)>>,
    /// Entries taken off the heap because they were due, since the start.
    visits: u64,
}

impl ExpiryQueue {
    /// Adds an entry for `peer` at `at`. The caller keeps one entry per peer (see
    /// `Peer::expiry_scheduled`).
    pub(super) fn push(&mut self, at: Instant, peer: PeerId) {
        self.heap.push(Reverse((at, peer)));
    }

    /// The earliest entry's time.
    pub(super) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes the earliest entry off the heap if it is due at `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<PeerId> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => {
                self.visits += 1;
                self.heap.pop().map(|Reverse((_, peer))| peer)
            }
            _ => None,
        }
    }

    /// Entries visited so far (each one due when taken).
    pub(super) fn visits(&self) -> u64 {
        self.visits
    }

    /// Entries waiting.
    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::time::Duration;

    fn at(s: u64) -> Instant {
        Instant::ZERO + Duration::from_secs(s)
    }

    #[test]
    fn only_due_entries_come_off_the_heap_earliest_first() {
        let mut q = ExpiryQueue::default();
        q.push(at(30), PeerId(3));
        q.push(at(10), PeerId(1));
        q.push(at(20), PeerId(2));
        assert_eq!(q.next(), Some(at(10)));
        assert_eq!(q.pop_due(at(9)), None);
        assert_eq!(q.pop_due(at(20)), Some(PeerId(1)));
        assert_eq!(q.pop_due(at(20)), Some(PeerId(2)));
        assert_eq!(q.pop_due(at(20)), None);
        assert_eq!((q.visits(), q.len()), (2, 1));
    }
}
