//! A sliding anti-replay window over transport counters (RFC 6479 style, as in WireGuard).
//!
//! 8192 counters wide, so that two paths with very different delays (a fast Wi-Fi and a slow,
//! buffered cellular link) can interleave thousands of packets without false replays. Use in two
//! steps: `check` before decrypting (cheap rejection), `mark` only after the tag verified, so a
//! forged packet can never move the window.

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
