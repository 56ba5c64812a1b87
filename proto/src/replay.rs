//! Anti-replay over transport counters: one sliding window (RFC 6479 style, as in WireGuard)
//! per path's counter space.
//!
//! # Counter spaces
//! A sender numbers each path on its own: the counter of a packet on path `p` is
//! `p << PATH_SHIFT | n`, `n` counting that path's packets under the key from 0 (multipath QUIC
//! does the same with its path id in the nonce). The counter is the AEAD nonce, so nonces stay
//! unique per key; the receiver keeps one [`ReplayWindow`] per space ([`PathWindows`]).
//!
//! Why: with one counter and one window per key, a packet on a slow path is refused as
//! "replayed" once the fast path has carried [`WINDOW`] later packets, i.e. when the delay
//! difference exceeds `WINDOW / rate`: 8192 / 44,000 packets/s = 186 ms at today's rate, and at
//! 5 Gbit/s of 1500-byte packets (416,667 packets/s) only 8192 / 416,667 = 19.7 ms, less than
//! Wi-Fi next to a bufferbloated cellular link. With a window per path, the delay difference
//! between paths does not matter at all; a window only has to cover the reordering *within* one
//! path: 8192 packets, 82 ms at 100,000 packets/s on that single path.
//!
//! Each window is 8192 counters wide. Use in two steps: `check` before decrypting (cheap
//! rejection), `mark` only after the tag verified, so a forged packet can never move a window
//! (nor allocate one).

/// Where the path id sits in a counter: the top byte.
pub const PATH_SHIFT: u32 = 56;
/// Packets one path may carry under one key; past it the key is expired for that path, well
/// before its space could run into the next one (WireGuard's REJECT_AFTER_MESSAGES margin).
pub const MAX_PATH_COUNTER: u64 = (1 << PATH_SHIFT) - (1 << 13) - 1;
/// Counter spaces one key accepts: more than the data path has uplinks. A packet in a space
/// past this is refused like a replay (an authenticated peer inventing paths, not a late packet).
pub const MAX_PATH_SPACES: usize = 16;

/// The counter of the `n`-th packet on `path`.
pub const fn path_counter(path: u8, n: u64) -> u64 {
    (path as u64) << PATH_SHIFT | n
}

/// How many counters below the highest one seen are still accepted.
pub const WINDOW: u64 = 8192;

const WORD_BITS: u64 = 64;
// One spare word: 8192 consecutive counters can straddle 129 words when not word-aligned.
const WORDS: usize = (WINDOW / WORD_BITS) as usize + 1;

/// The replay state of one receive key.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    highest: Option<u64>,
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window: every counter is new.
    pub const fn new() -> Self {
        ReplayWindow {
            highest: None,
            bits: [0; WORDS],
        }
    }

    fn slot(counter: u64) -> (usize, u64) {
        let word = ((counter / WORD_BITS) % WORDS as u64) as usize;
        (word, 1u64 << (counter % WORD_BITS))
    }

    /// Whether `counter` would be accepted (not seen, not too old). Does not change the window.
    pub fn check(&self, counter: u64) -> bool {
        match self.highest {
            None => true,
            Some(h) if counter > h => true,
            Some(h) if h - counter >= WINDOW => false,
            Some(_) => {
                let (w, bit) = Self::slot(counter);
                self.bits[w] & bit == 0
            }
        }
    }

    /// Records `counter` as received; returns false (and changes nothing) if it is a replay or
    /// too old.
    pub fn mark(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        match self.highest {
            Some(h) if counter <= h => {}
            prev => {
                // Clear the words the window slides over, at most the whole ring.
                let first = prev.map_or(0, |h| h / WORD_BITS + 1);
                let last = counter / WORD_BITS;
                let n = (last + 1).saturating_sub(first).min(WORDS as u64);
                for i in 0..n {
                    let word = ((last - i) % WORDS as u64) as usize;
                    self.bits[word] = 0;
                }
                self.highest = Some(counter);
            }
        }
        let (w, bit) = Self::slot(counter);
        self.bits[w] |= bit;
        true
    }
}

/// The replay state of one receive key: a window per counter space, made on first use.
#[derive(Clone, Debug, Default)]
pub struct PathWindows {
    windows: Vec<(u8, ReplayWindow)>,
}

impl PathWindows {
    /// No space seen yet.
    pub const fn new() -> Self {
        PathWindows {
            windows: Vec::new(),
        }
    }

    fn space(counter: u64) -> u8 {
        (counter >> PATH_SHIFT) as u8
    }

    /// Whether `counter` would be accepted. Changes nothing.
    pub fn check(&self, counter: u64) -> bool {
        let space = Self::space(counter);
        match self.windows.iter().find(|(s, _)| *s == space) {
            Some((_, w)) => w.check(counter),
            None => self.windows.len() < MAX_PATH_SPACES,
        }
    }

    /// Records `counter` as received; false (and nothing changes) if it is a replay, too old
    /// for its space's window, or in one space too many.
    pub fn mark(&mut self, counter: u64) -> bool {
        let space = Self::space(counter);
        let i = match self.windows.iter().position(|(s, _)| *s == space) {
            Some(i) => i,
            None if self.windows.len() < MAX_PATH_SPACES => {
                self.windows.push((space, ReplayWindow::new()));
                self.windows.len() - 1
            }
            None => return false,
        };
        self.windows[i].1.mark(counter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn a_counter_is_accepted_once() {
        let mut w = ReplayWindow::new();
        assert!(w.check(0));
        assert!(w.mark(0));
        assert!(!w.check(0));
        assert!(!w.mark(0));
        assert!(w.mark(5));
        assert!(w.mark(3));
        assert!(!w.mark(3));
        assert!(w.mark(4));
    }

    #[test]
    fn counters_older_than_the_window_are_refused() {
        let mut w = ReplayWindow::new();
        assert!(w.mark(10_000));
        assert!(w.check(10_000 - WINDOW + 1));
        assert!(!w.check(10_000 - WINDOW));
        assert!(w.mark(10_000 - WINDOW + 1));
    }

    #[test]
    fn a_big_jump_forgets_old_bits() {
        let mut w = ReplayWindow::new();
        assert!(w.mark(1));
        assert!(w.mark(1 + 64 * WORDS as u64));
        // 1 is now far outside the window: refused as too old, not as seen.
        assert!(!w.check(1));
        // Counters inside the new window that were never seen are fresh even if their ring slot
        // held an old bit.
        assert!(w.check(1 + 64 * WORDS as u64 - 64));
    }

    #[test]
    fn two_paths_with_different_delays_interleave_without_false_replays() {
        // Even counters go over a fast path, odd over a path 3000 packets late.
        let mut w = ReplayWindow::new();
        let mut arrivals = Vec::new();
        for c in 0..20_000u64 {
            if c % 2 == 0 {
                arrivals.push((c, c));
            } else {
                arrivals.push((c + 3000, c));
            }
        }
        arrivals.sort();
        for (_, c) in &arrivals {
            assert!(w.mark(*c), "counter {c} refused");
        }
        for (_, c) in arrivals.iter().rev().take(100) {
            assert!(!w.mark(*c), "counter {c} accepted twice");
        }
    }

    #[test]
    fn a_slow_path_is_never_refused_however_far_ahead_the_fast_path_is() {
        // Path 0 carries 100,000 packets before the first of path 1 arrives.
        let mut w = PathWindows::new();
        for n in 0..100_000 {
            assert!(w.mark(path_counter(0, n)));
        }
        for n in 0..1_000 {
            assert!(w.mark(path_counter(1, n)), "slow path packet {n} refused");
        }
        assert!(
            !w.mark(path_counter(1, 10)),
            "a replay on the slow path is still refused"
        );
        assert!(!w.check(path_counter(0, 100_000 - WINDOW)));
    }

    #[test]
    fn spaces_past_the_limit_are_refused_without_growing() {
        let mut w = PathWindows::new();
        for p in 0..MAX_PATH_SPACES as u8 {
            assert!(w.mark(path_counter(p, 0)));
        }
        let extra = path_counter(MAX_PATH_SPACES as u8, 0);
        assert!(!w.check(extra));
        assert!(!w.mark(extra));
        assert_eq!(w.windows.len(), MAX_PATH_SPACES);
    }

    proptest! {
        #[test]
        fn window_agrees_with_a_naive_model(ops in proptest::collection::vec(0u64..40_000, 1..500)) {
            let mut w = ReplayWindow::new();
            let mut seen = HashSet::new();
            let mut highest: Option<u64> = None;
            for c in ops {
                let too_old = highest.is_some_and(|h| c + WINDOW <= h);
                let expect = !too_old && !seen.contains(&c);
                prop_assert_eq!(w.check(c), expect);
                prop_assert_eq!(w.mark(c), expect);
                if expect {
                    seen.insert(c);
                    highest = Some(highest.map_or(c, |h| h.max(c)));
                }
            }
        }
    }
}
