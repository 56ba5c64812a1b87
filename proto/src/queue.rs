//! The bounded transmit and event queues of a core, and how their overflows are counted.
//!
//! Both cores count the same way:
//! - every transmit that did not fit adds one to [`QueueStats::queue_overflows`], every event
//!   that did not fit one to [`QueueStats::event_overflows`];
//! - when the transmit was the answer to a received datagram, that datagram is dropped with
//!   [`DropReason::QueueFull`] and counted once in the core's drop counters (by the core's
//!   `handle_datagram`, like every other drop). A transmit the core wanted on its own (a timer's
//!   probe or resend) costs no datagram, so it is only an overflow: the timer sends it later.

use crate::DropReason;
use std::collections::VecDeque;

/// Overflow counters of a core's bounded queues.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Datagrams not queued because the transmit queue was full.
    pub queue_overflows: u64,
    /// Events lost because the event queue was full.
    pub event_overflows: u64,
}

/// A transmit queue and an event queue, each allocated once at its bound.
pub(crate) struct Queues<T, E> {
    transmits: VecDeque<T>,
    events: VecDeque<E>,
    max_transmits: usize,
    max_events: usize,
    pub(crate) stats: QueueStats,
}

impl<T, E> Queues<T, E> {
    pub(crate) fn new(max_transmits: usize, max_events: usize) -> Self {
        Queues {
            transmits: VecDeque::with_capacity(max_transmits),
            events: VecDeque::with_capacity(max_events),
            max_transmits,
            max_events,
            stats: QueueStats::default(),
        }
    }

    /// `Err(QueueFull)` (an overflow, counted) when one more transmit would not fit: lets a core
    /// refuse a datagram before spending work on an answer it could not send.
    pub(crate) fn room_for_transmit(&mut self) -> Result<(), DropReason> {
        if self.transmits.len() >= self.max_transmits {
            self.stats.queue_overflows = self.stats.queue_overflows.saturating_add(1);
            return Err(DropReason::QueueFull);
        }
        Ok(())
    }

    /// Queues a transmit, or counts an overflow and returns `QueueFull`.
    pub(crate) fn push_transmit(&mut self, t: T) -> Result<(), DropReason> {
        self.room_for_transmit()?;
        self.transmits.push_back(t);
        Ok(())
    }

    pub(crate) fn pop_transmit(&mut self) -> Option<T> {
        self.transmits.pop_front()
    }

    /// Keeps only the queued transmits for which `keep` is true.
    pub(crate) fn retain_transmits(&mut self, keep: impl FnMut(&T) -> bool) {
        self.transmits.retain(keep);
    }

    /// Queues an event, or counts it lost.
    pub(crate) fn push_event(&mut self, e: E) {
        if self.events.len() >= self.max_events {
            self.stats.event_overflows = self.stats.event_overflows.saturating_add(1);
        } else {
            self.events.push_back(e);
        }
    }

    pub(crate) fn pop_event(&mut self) -> Option<E> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflows_are_counted_per_queue_and_the_transmit_is_refused() {
        let mut q: Queues<u8, u8> = Queues::new(2, 1);
        assert_eq!(q.push_transmit(1), Ok(()));
        assert_eq!(q.push_transmit(2), Ok(()));
        assert_eq!(q.push_transmit(3), Err(DropReason::QueueFull));
        assert_eq!(q.room_for_transmit(), Err(DropReason::QueueFull));
        q.push_event(1);
        q.push_event(2);
        assert_eq!(
            q.stats,
            QueueStats {
                queue_overflows: 2,
                event_overflows: 1
            }
        );
        assert_eq!(q.pop_transmit(), Some(1));
        assert_eq!(q.pop_event(), Some(1));
        assert_eq!(q.pop_event(), None);
    }
}
