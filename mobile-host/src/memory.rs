//! Gives freed heap back to the system after a burst of flows has ended.
//!
//! The flow table and the maps beside it shrink once a burst's flows have expired, but glibc's
//! malloc keeps the freed pages in its arenas (by itself it only trims the top of the main
//! heap), so the daemon's RSS would stay at the burst's high-water mark. After the number of
//! flows dropped by [`TRIM_AFTER_FLOWS`], `malloc_trim` hands the free pages back. It walks
//! every arena, so it runs at most every [`MIN_INTERVAL`] and never on the per-packet path.
//! Other C libraries (musl, bionic) return large frees by themselves; there it is a no-op.

use std::time::Duration;

use crate::setup::Instant;

/// How far the flow count must fall below its last peak before the heap is trimmed: below
/// this, what could come back is too little to be worth a walk over the arenas.
pub const TRIM_AFTER_FLOWS: usize = 4096;
/// The shortest time between two trims.
pub const MIN_INTERVAL: Duration = Duration::from_secs(10);

/// When to trim the heap, from the flow counts around each timer turn.
#[derive(Debug, Default)]
pub struct Trim {
    peak: usize,
    last: Option<Instant>,
}

impl Trim {
    /// Timers ran at `now`: `before` flows were live before them and `after` are live now.
    /// Trims the heap when flows fell far enough since their peak.
    pub fn after_timers(&mut self, before: usize, after: usize, now: Instant) {
        if self.due(before, after, now) {
            release_free_memory();
        }
    }

    fn due(&mut self, before: usize, after: usize, now: Instant) -> bool {
        self.peak = self.peak.max(before).max(after);
        // The interval is waived once three quarters of the flows since the last trim have
        // gone (at most a few times per burst): an MH left without flows has few timer turns
        // (one check per 120 s), and the drop would otherwise wait that long.
        let recent = self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < MIN_INTERVAL);
        if self.peak - after < TRIM_AFTER_FLOWS || (recent && after * 4 > self.peak) {
            return false;
        }
        self.last = Some(now);
        self.peak = after;
        true
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    // SAFETY: malloc_trim only walks glibc's own arenas; 0 keeps no padding at the top.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Instant {
        Instant::from_duration(Duration::from_secs(secs))
    }

    #[test]
    fn the_heap_is_trimmed_once_many_flows_have_ended_and_not_again_at_once() {
        let mut t = Trim::default();
        assert!(!t.due(0, 100, at(1)), "flows grew");
        assert!(!t.due(60_000, 59_000, at(2)), "a few ended");
        assert!(t.due(59_000, 1_000, at(3)), "most ended");
        assert!(!t.due(1_000, 1_000, at(4)), "nothing more ended");
        assert!(
            !t.due(30_000, 25_000, at(5)),
            "too soon after the last trim"
        );
        assert!(
            t.due(25_000, 25_000, at(16)),
            "the drop is owed once the interval passed"
        );
        assert!(
            !t.due(25_000, 20_000, at(17)),
            "too soon, and most flows are still live"
        );
        assert!(
            t.due(20_000, 0, at(18)),
            "everything ended: no need to wait"
        );
    }
}
