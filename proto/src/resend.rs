//! The resend ring: the most recent plain packets a sender put on one path, so that the ones
//! of a flow that moves off a failed path go out again on its new path at once, instead of
//! waiting for TCP's retransmission timer (or being lost, for UDP).
//!
//! # What is kept
//! The *plain* inner packet with the reserved field it was sealed with, not the sealed
//! datagram: a copy must be sealed again for its new path, with that path's counter (each path
//! has its own counter space, see [`crate::replay`], and the path id is in the associated
//! data). The reserved field carries the packet's dup or resend sequence (see [`crate::dup`]),
//! so the receiver delivers whichever copy comes first and drops the other as a duplicate,
//! never as a replay.
//!
//! # Bounds
//! Bytes ([`DEFAULT_RESEND_BYTES`]) and age ([`DEFAULT_RESEND_AGE`]). The age must cover the
//! time a failure takes to be noticed, not a round trip: the packets that matter are those
//! sent into a blackhole from its start until the path is declared down (at least 400 ms with
//! the client's fast detection, up to `path_timeout`), and a TCP sender stops sending a
//! round trip after the start, so they are the oldest in the ring. The byte bound keeps a bulk
//! flow's share honest: what a path carried in its last 256 KiB.
//!
//! # Cost
//! One copy of each packet into a byte ring that grows to the working size of the path and
//! then stays there: no allocation per packet in the steady state. A path carrying little
//! keeps a small buffer: the ring starts over at the front of its buffer whenever the front
//! is free and the write position is past twice what is live.
//!
//! Never reads a clock: `now` is passed in.

use crate::PathId;
use crate::time::Instant;
use core::time::Duration;
use std::collections::VecDeque;

/// Bytes of plain packets kept per path by default.
pub const DEFAULT_RESEND_BYTES: usize = 256 * 1024;
/// How long a packet is kept by default (see the module docs for why this long).
pub const DEFAULT_RESEND_AGE: Duration = Duration::from_secs(1);
/// The smallest buffer size worth starting over from the front for.
const MIN_REWIND: usize = 16 * 1024;

/// One kept packet.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Where it starts in the unbounded byte sequence; `pos % capacity` in the buffer.
    pos: u64,
    len: u32,
    at: Instant,
    reserved: u16,
    /// Where it goes again, once marked; taken when it went.
    to: Option<PathId>,
}

/// A packet marked for resending, as [`ResendRing::pop_marked`] gives it.
#[derive(Debug, PartialEq, Eq)]
pub struct Marked<'a> {
    /// The path it goes out on now.
    pub to: PathId,
    /// The reserved field it was first sealed with.
    pub reserved: u16,
    /// The plain inner packet.
    pub packet: &'a [u8],
}

/// The ring of one path. See the module docs.
#[derive(Debug)]
pub struct ResendRing {
    data: Vec<u8>,
    capacity: usize,
    max_age: Duration,
    entries: VecDeque<Entry>,
    /// Where the next packet goes in the unbounded byte sequence.
    head: u64,
    /// Marked entries not yet popped.
    marked: usize,
    /// No marked entry starts before this position.
    cursor: u64,
}

impl ResendRing {
    /// An empty ring of at most `capacity` bytes and `max_age`; allocates nothing yet.
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        ResendRing {
            data: Vec::new(),
            capacity,
            max_age,
            entries: VecDeque::new(),
            head: 0,
            marked: 0,
            cursor: 0,
        }
    }

    /// Whether it keeps anything at all.
    pub fn enabled(&self) -> bool {
        self.capacity > 0 && !self.max_age.is_zero()
    }

    /// Packets kept now (marked or not).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of the packets kept now.
    pub fn live_bytes(&self) -> usize {
        match (self.entries.front(), self.entries.back()) {
            (Some(f), Some(b)) => (b.pos + u64::from(b.len) - f.pos) as usize,
            _ => 0,
        }
    }

    /// Bytes the buffer holds allocated (its working size).
    pub fn allocated(&self) -> usize {
        self.data.capacity()
    }

    /// Packets marked and not yet popped.
    pub fn marked(&self) -> usize {
        self.marked
    }

    fn offset(&self, pos: u64) -> usize {
        (pos % self.capacity as u64) as usize
    }

    /// Forgets what is older than the age bound at `now`.
    fn expire(&mut self, now: Instant) {
        while let Some(e) = self.entries.front() {
            if now.saturating_duration_since(e.at) <= self.max_age {
                break;
            }
            if e.to.is_some() {
                self.marked -= 1;
            }
            self.entries.pop_front();
        }
    }

    /// Keeps a copy of `packet`, sealed with `reserved` and sent at `now`, dropping the oldest
    /// packets to make room. A packet bigger than the ring is not kept.
    pub fn push(&mut self, packet: &[u8], reserved: u16, now: Instant) {
        let len = packet.len();
        if !self.enabled() || len == 0 || len > self.capacity {
            return;
        }
        self.expire(now);
        let cap = self.capacity as u64;
        let off = self.offset(self.head);
        let live = self.live_bytes();
        let front_free = self
            .entries
            .front()
            .is_none_or(|f| f.pos / cap == self.head / cap && self.offset(f.pos) >= len);
        let rewind = off > 0
            && (off + len > self.capacity
                || (front_free && off >= MIN_REWIND.max(2 * (live + len))));
        if rewind {
            self.head = (self.head / cap + 1) * cap;
        }
        // Drop the oldest until the new packet's bytes are free.
        while let Some(f) = self.entries.front() {
            if self.head + len as u64 - f.pos <= cap {
                break;
            }
            if f.to.is_some() {
                self.marked -= 1;
            }
            self.entries.pop_front();
        }
        let off = self.offset(self.head);
        if self.data.len() < off + len {
            let want = (off + len).max(self.data.len() * 2).min(self.capacity);
            self.data.reserve_exact(want - self.data.len());
            self.data.resize(want, 0);
        }
        self.data[off..off + len].copy_from_slice(packet);
        self.entries.push_back(Entry {
            pos: self.head,
            len: len as u32,
            at: now,
            reserved,
            to: None,
        });
        self.head += len as u64;
    }

    /// Marks for resending every kept packet younger than the age bound for which `route`
    /// names a new path (it gets the plain packet); returns how many it marked. A packet
    /// already marked gets its new route, so a flow that moves twice goes where it is now.
    pub fn mark(&mut self, now: Instant, mut route: impl FnMut(&[u8]) -> Option<PathId>) -> usize {
        self.expire(now);
        let mut n = 0;
        for i in 0..self.entries.len() {
            let e = self.entries[i];
            if e.len == 0 {
                continue;
            }
            let off = self.offset(e.pos);
            let Some(to) = route(&self.data[off..off + e.len as usize]) else {
                continue;
            };
            if e.to.is_none() {
                self.marked += 1;
            }
            self.cursor = self.cursor.min(e.pos);
            self.entries[i].to = Some(to);
            n += 1;
        }
        n
    }

    /// The oldest marked packet still within the age bound, taken out of the ring (it is not
    /// resent twice).
    pub fn pop_marked(&mut self, now: Instant) -> Option<Marked<'_>> {
        self.expire(now);
        if self.marked == 0 {
            return None;
        }
        let from = self.entries.partition_point(|e| e.pos < self.cursor);
        let i = from + self.entries.range(from..).position(|e| e.to.is_some())?;
        let e = self.entries[i];
        self.cursor = e.pos + 1;
        self.marked -= 1;
        // Unmarked and empty: it keeps its place in the byte order, but is never marked again.
        self.entries[i].to = None;
        self.entries[i].len = 0;
        if i == 0 {
            self.entries.pop_front();
        }
        let off = self.offset(e.pos);
        Some(Marked {
            to: e.to?,
            reserved: e.reserved,
            packet: &self.data[off..off + e.len as usize],
        })
    }

    /// Forgets everything and frees the buffer.
    pub fn clear(&mut self) {
        *self = ResendRing::new(self.capacity, self.max_age);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn at(ms: u64) -> Instant {
        Instant::ZERO + MS * ms as u32
    }

    fn packet(n: u32, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len.max(4)];
        p[..4].copy_from_slice(&n.to_be_bytes());
        p
    }

    fn id(p: &[u8]) -> u32 {
        u32::from_be_bytes([p[0], p[1], p[2], p[3]])
    }

    fn drain(r: &mut ResendRing, now: Instant) -> Vec<(PathId, u16, u32)> {
        let mut out = Vec::new();
        while let Some(m) = r.pop_marked(now) {
            out.push((m.to, m.reserved, id(m.packet)));
        }
        out
    }

    #[test]
    fn marked_packets_come_back_once_in_order_with_their_field() {
        let mut r = ResendRing::new(4096, Duration::from_secs(1));
        for n in 0..10u32 {
            r.push(&packet(n, 100), n as u16, at(u64::from(n)));
        }
        let marked = r.mark(at(20), |p| id(p).is_multiple_of(2).then_some(PathId(1)));
        assert_eq!(marked, 5);
        let got = drain(&mut r, at(21));
        assert_eq!(
            got,
            (0..10u32)
                .filter(|n| n % 2 == 0)
                .map(|n| (PathId(1), n as u16, n))
                .collect::<Vec<_>>()
        );
        assert_eq!(r.marked(), 0);
        // Gone once resent: marking everything again finds only the odd ones.
        assert_eq!(r.mark(at(22), |_| Some(PathId(2))), 5);
        assert!(drain(&mut r, at(22)).iter().all(|(_, _, n)| n % 2 == 1));
    }

    #[test]
    fn packets_older_than_the_age_bound_are_not_resent() {
        let mut r = ResendRing::new(4096, Duration::from_millis(100));
        r.push(&packet(1, 100), 0, at(0));
        r.push(&packet(2, 100), 0, at(50));
        assert_eq!(r.mark(at(120), |_| Some(PathId(1))), 1);
        assert_eq!(drain(&mut r, at(120)), vec![(PathId(1), 0, 2)]);
        // Marked, then too old before it went.
        r.push(&packet(3, 100), 0, at(130));
        r.mark(at(130), |_| Some(PathId(1)));
        assert!(drain(&mut r, at(300)).is_empty());
        assert_eq!(r.marked(), 0);
    }

    #[test]
    fn the_byte_bound_drops_the_oldest_and_a_too_big_packet_is_not_kept() {
        let mut r = ResendRing::new(1000, Duration::from_secs(1));
        for n in 0..25u32 {
            r.push(&packet(n, 100), 0, at(0));
        }
        assert!(r.live_bytes() <= 1000);
        assert_eq!(r.len(), 10);
        r.mark(at(0), |_| Some(PathId(0)));
        let ids: Vec<u32> = drain(&mut r, at(0)).iter().map(|m| m.2).collect();
        assert_eq!(ids, (15..25).collect::<Vec<_>>());
        r.push(&packet(99, 1001), 0, at(0));
        assert_eq!(r.mark(at(0), |_| Some(PathId(0))), 0);
    }

    #[test]
    fn a_disabled_ring_keeps_nothing_and_allocates_nothing() {
        for mut r in [
            ResendRing::new(0, Duration::from_secs(1)),
            ResendRing::new(4096, Duration::ZERO),
        ] {
            r.push(&packet(1, 100), 0, at(0));
            assert!(r.is_empty());
            assert_eq!(r.allocated(), 0);
        }
    }

    #[test]
    fn steady_traffic_stops_allocating_and_light_traffic_keeps_a_small_buffer() {
        let mut r = ResendRing::new(256 * 1024, Duration::from_millis(100));
        for n in 0..10_000u32 {
            r.push(&packet(n, 1400), 0, at(0));
        }
        let size = r.allocated();
        assert!(size <= 256 * 1024);
        for n in 0..100_000u32 {
            r.push(&packet(n, 1 + (n as usize * 7) % 1400), 0, at(0));
        }
        assert_eq!(r.allocated(), size, "no allocation in the steady state");

        // 10 packets of 100 bytes a second, kept 100 ms: a few live at a time.
        let mut light = ResendRing::new(256 * 1024, Duration::from_millis(100));
        for n in 0..100_000u32 {
            light.push(&packet(n, 100), 0, at(u64::from(n) * 100));
        }
        assert!(light.allocated() <= 2 * MIN_REWIND, "{}", light.allocated());
    }

    proptest! {
        /// Whatever is pushed and marked, what comes back is each marked packet still within
        /// both bounds exactly once, oldest first, byte for byte.
        #[test]
        fn what_comes_back_is_the_marked_recent_packets_exactly_once(
            ops in proptest::collection::vec((1usize..600, 0u64..30, any::<bool>(), 0u8..4), 1..400),
            capacity in 1usize..8192,
        ) {
            let age = Duration::from_millis(200);
            let mut r = ResendRing::new(capacity, age);
            // The model: every pushed packet with its time and size.
            let mut model: Vec<(u32, Instant, usize, bool)> = Vec::new();
            let mut now = at(0);
            for (n, (len, step, mark, op)) in ops.into_iter().enumerate() {
                now += MS * step as u32;
                let n = n as u32;
                r.push(&packet(n, len), n as u16, now);
                model.push((n, now, len.max(4), false));
                if op == 0 {
                    let marked = r.mark(now, |p| (mark || id(p).is_multiple_of(3)).then_some(PathId(7)));
                    prop_assert!(marked <= r.len());
                }
                if op == 1 {
                    let got = drain(&mut r, now);
                    let mut last = None;
                    for (to, reserved, id) in got {
                        prop_assert_eq!(to, PathId(7));
                        prop_assert_eq!(reserved, id as u16);
                        prop_assert!(last < Some(id), "oldest first, once");
                        last = Some(id);
                        let m = &mut model[id as usize];
                        prop_assert!(!m.3, "resent twice");
                        m.3 = true;
                        prop_assert!(now.saturating_duration_since(m.1) <= age);
                        // Within the byte bound: what was pushed after it fits with it.
                        let after: usize = model[id as usize..]
                            .iter()
                            .map(|m| m.2)
                            .filter(|len| *len <= capacity)
                            .sum();
                        prop_assert!(after <= capacity, "{after} > {capacity}");
                    }
                }
                prop_assert!(r.live_bytes() <= capacity);
                prop_assert!(r.allocated() <= capacity.max(1) * 2);
            }
        }
    }
}
