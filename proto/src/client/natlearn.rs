//! Learning how long a path's NAT keeps an idle binding, so keepalives are as rare as it allows.
//!
//! A keepalive exists only to keep the NAT binding between the phone and the anchor; sending
//! it more often than the NAT forgets costs radio wake-ups for nothing, sending it less often
//! costs the binding. The learner starts at the configured keepalive (25 s, safe behind every
//! common NAT) and, each time an idle keepalive after a silence of `gap` comes back on the same
//! binding, tries a longer interval next time (a quarter longer, at least 5 s), up to the
//! configured maximum. When the anchor challenges the path instead (it saw the keepalive come
//! from a new source address: the NAT had forgotten the binding and made a new one), the
//! binding is known to last less than `gap`: the interval falls back at once to the longest
//! one that worked, and never again climbs above `gap` minus a margin.
//!
//! A lost binding costs one round trip (the anchor's challenge), during which the path's
//! downlink goes to the old address; the margin keeps that rare. Pure: fed gaps, holds
//! durations.

use core::time::Duration;

/// The smallest step up and the smallest margin below a binding lifetime seen to fail.
const STEP_MIN: Duration = Duration::from_secs(5);

/// One path's keepalive interval and what is known of its NAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepaliveLearner {
    base: Duration,
    max: Duration,
    /// The interval to wait before the next idle keepalive.
    interval: Duration,
    /// The longest silence seen to keep the binding.
    held: Duration,
    /// The shortest silence seen to lose it.
    lost: Option<Duration>,
}

impl KeepaliveLearner {
    /// Starts at `base` (the configured keepalive) and never goes above `max` (nor below
    /// `base` unless a binding was lost sooner).
    pub fn new(base: Duration, max: Duration) -> Self {
        KeepaliveLearner {
            base,
            max: max.max(base),
            interval: base,
            held: Duration::ZERO,
            lost: None,
        }
    }

    /// The interval before the next idle keepalive.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The shortest silence seen to lose the binding, if any.
    pub fn lost(&self) -> Option<Duration> {
        self.lost
    }

    /// The highest interval allowed now: the maximum, or a margin below a lifetime seen to fail.
    fn ceiling(&self) -> Duration {
        match self.lost {
            Some(lost) => self.max.min(lost.saturating_sub((lost / 10).max(STEP_MIN))),
            None => self.max,
        }
    }

    /// An idle keepalive sent after `gap` of silence on the path was answered on the same
    /// binding: try longer next time.
    pub fn binding_held(&mut self, gap: Duration) {
        // Only a silence at least as long as the interval tested anything new.
        if gap + STEP_MIN / 5 < self.interval {
            return;
        }
        self.held = self.held.max(gap);
        let next = self.interval + (self.interval / 4).max(STEP_MIN);
        self.interval = next.min(self.ceiling());
    }

    /// The anchor saw a keepalive sent after `gap` of silence arrive from a new address: the
    /// NAT forgot the binding within `gap`. Falls back at once.
    pub fn binding_lost(&mut self, gap: Duration) {
        if self.held >= gap {
            // A silence this long held before: the NAT changed (or the path now crosses another
            // one). What was learned is void: start again from the base, below this loss.
            self.held = Duration::ZERO;
            self.lost = Some(gap);
            self.interval = self.base.min(self.ceiling()).max(Duration::from_secs(1));
            return;
        }
        self.lost = Some(self.lost.map_or(gap, |l| l.min(gap)));
        let ceiling = self.ceiling();
        let fallback = if self.held.is_zero() {
            ceiling
        } else {
            self.held.min(ceiling)
        };
        self.interval = self.interval.min(fallback).max(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn held_bindings_raise_the_interval_up_to_the_maximum() {
        let mut l = KeepaliveLearner::new(S(25), S(120));
        let mut seen = vec![l.interval()];
        for _ in 0..20 {
            l.binding_held(l.interval());
            seen.push(l.interval());
        }
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        assert_eq!(l.interval(), S(120));
    }

    #[test]
    fn a_lost_binding_falls_back_to_what_held_and_caps_below_the_loss() {
        let mut l = KeepaliveLearner::new(S(25), S(600));
        while l.interval() < S(60) {
            l.binding_held(l.interval());
        }
        let failed = l.interval();
        let held_before = {
            let mut probe = KeepaliveLearner::new(S(25), S(600));
            let mut last = probe.interval();
            while probe.interval() < failed {
                last = probe.interval();
                probe.binding_held(last);
            }
            last
        };
        l.binding_lost(failed);
        assert_eq!(l.interval(), held_before);
        for _ in 0..20 {
            l.binding_held(l.interval());
        }
        assert!(l.interval() < failed, "{:?} >= {failed:?}", l.interval());
        assert!(
            l.interval() + S(10) >= failed,
            "too cautious: {:?}",
            l.interval()
        );
    }

    #[test]
    fn a_loss_where_a_binding_held_before_starts_over_from_the_base() {
        let mut l = KeepaliveLearner::new(S(25), S(600));
        for _ in 0..10 {
            l.binding_held(l.interval());
        }
        let long = l.interval();
        assert!(long > S(60));
        l.binding_held(long);
        l.binding_lost(long);
        assert_eq!(l.interval(), S(25));
        assert_eq!(l.lost(), Some(long));
    }

    #[test]
    fn a_short_silence_teaches_nothing() {
        let mut l = KeepaliveLearner::new(S(25), S(120));
        l.binding_held(S(3));
        assert_eq!(l.interval(), S(25));
    }

    #[test]
    fn a_binding_lost_below_the_base_interval_goes_below_it() {
        let mut l = KeepaliveLearner::new(S(25), S(120));
        l.binding_lost(S(20));
        assert_eq!(l.interval(), S(15));
    }
}
