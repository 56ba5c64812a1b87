//! Choices that keep state: the policy's measured `select` (`lowest_rtt`, `lowest_loss`) with
//! hysteresis, and `spread` by smooth weighted round robin over the uplinks' measured capacity.
//!
//! The policy says which uplinks are candidates for a flow ([`upmt_policy::Candidates`]); this
//! module is the [`Chooser`] that picks among them. Pure: the flow layer hands it `now` and
//! the bytes each uplink delivered, and ticks it ([`Selections::tick`]) every
//! [`SELECT_INTERVAL`] while data moves.
//!
//! **Hysteresis.** Per rule, the current choice changes only when another candidate is
//! better by a margin for a while, observed on every tick in between:
//! - RTT: at least [`RTT_MARGIN_PERCENT`] % and [`RTT_MARGIN_MIN`] lower, for [`RTT_HOLD`].
//!   The probes' smoothed RTT moves by a few milliseconds on an idle path and by tens when a
//!   queue builds; the relative margin ignores the first on slow paths, the absolute one on
//!   fast paths (3 ms against 4 ms is 25 % but worth nothing).
//! - Loss: at least [`LOSS_MARGIN`] (2 percentage points) lower, for [`LOSS_HOLD`]. Probe loss
//!   is smoothed over a handful of probes; one lost probe moves it by several points for about
//!   a second, which the hold outlasts.
//! - An unmeasured candidate never wins, and a current choice that is unmeasured (just came
//!   up) or no longer a candidate (down, or not allowed) is replaced at once: there is no flow
//!   to protect from a flip there. A fresh choice is the rule's first measured uplink unless
//!   another beats it by the margin already, so paths that measure alike keep the user's order.
//! - Without a tick for [`STALE`] (no data moved for a while: the host does not wake for
//!   this when idle), the next flow starts from the best measurement at that moment rather
//!   than from an old choice.
//!
//! **Spread.** New flows of a spreading rule go to the candidates in proportion to their
//! capacity, by smooth weighted round robin (deterministic: the same inputs give the same
//! sequence). Capacity is the peak rate (received or sent, whichever is higher) an uplink
//! delivered over a tick, decaying by half every [`CAPACITY_HALF_LIFE`]; a busy uplink's peak
//! is about its capacity. Until every candidate has a peak of at least [`MIN_CAPACITY`],
//! candidates count equally, so a quiet uplink is not starved of the flows that would show
//! what it can carry.

use std::collections::HashMap;
use std::time::Duration;

use upmt_policy::{Candidates, Chooser, Matched, Placing, Policy, Route, Strategy, UplinkStatus};

use crate::uplinks::MAX_UPLINKS;

/// How often the choices are looked at again while data moves.
pub const SELECT_INTERVAL: Duration = Duration::from_millis(250);
/// RTT: how much lower (relative) another uplink must be to take over.
pub const RTT_MARGIN_PERCENT: u32 = 20;
/// RTT: how much lower (absolute) another uplink must be to take over.
pub const RTT_MARGIN_MIN: Duration = Duration::from_millis(10);
/// RTT: for how long.
pub const RTT_HOLD: Duration = Duration::from_secs(2);
/// Loss: how much lower (fraction of probes) another uplink's loss must be to take over.
pub const LOSS_MARGIN: f32 = 0.02;
/// Loss: for how long.
pub const LOSS_HOLD: Duration = Duration::from_secs(3);
/// A choice not looked at for this long starts over from the best measurement.
pub const STALE: Duration = Duration::from_secs(2);
/// Spread: capacity peaks halve over this long.
pub const CAPACITY_HALF_LIFE: Duration = Duration::from_secs(10);
/// Spread: below this peak (bytes per second, 1 Mbit/s) an uplink counts as unmeasured.
pub const MIN_CAPACITY: f64 = 125_000.0;

/// Whether `other` beats `current` by the margin of `strategy`.
fn beats(strategy: Strategy, other: &UplinkStatus, current: &UplinkStatus) -> bool {
    match strategy {
        Strategy::Ordered => false,
        Strategy::LowestRtt => match (other.rtt, current.rtt) {
            (Some(o), Some(c)) => {
                let relative = o * 100 <= c * (100 - RTT_MARGIN_PERCENT);
                relative && c.saturating_sub(o) >= RTT_MARGIN_MIN
            }
            _ => false,
        },
        Strategy::LowestLoss => match (other.loss, current.loss) {
            (Some(o), Some(c)) => c - o >= LOSS_MARGIN,
            _ => false,
        },
    }
}

fn measured(strategy: Strategy, s: &UplinkStatus) -> bool {
    match strategy {
        Strategy::Ordered => true,
        Strategy::LowestRtt => s.rtt.is_some(),
        Strategy::LowestLoss => s.loss.is_some(),
    }
}

fn hold(strategy: Strategy) -> Duration {
    match strategy {
        Strategy::LowestLoss => LOSS_HOLD,
        _ => RTT_HOLD,
    }
}

/// One measured rule's choice and the candidate challenging it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hysteresis {
    current: Option<usize>,
    /// Another candidate better by the margin, and since when.
    challenger: Option<(usize, Duration)>,
    /// When it was last looked at.
    seen: Option<Duration>,
}

impl Hysteresis {
    /// The current choice.
    pub fn current(&self) -> Option<usize> {
        self.current
    }

    /// Looks at `candidates` (never empty) at `now`; returns the choice.
    pub fn observe(
        &mut self,
        strategy: Strategy,
        candidates: &Candidates<'_>,
        now: Duration,
    ) -> Option<usize> {
        let stale = self.seen.is_none_or(|t| now.saturating_sub(t) > STALE);
        self.seen = Some(now);
        let best = upmt_policy::best_measured(strategy, candidates);
        let current = match self.current {
            Some(c)
                if !stale
                    && candidates.contains(c)
                    && measured(strategy, &candidates.status(c)) =>
            {
                c
            }
            // Nothing to protect: start from the rule's first measured uplink, unless another
            // is already better by the margin (then that one), so that equal paths keep the
            // user's order.
            _ => {
                self.challenger = None;
                let first = candidates
                    .iter()
                    .find(|&i| measured(strategy, &candidates.status(i)));
                self.current = match (first, best) {
                    (Some(f), Some(b))
                        if beats(strategy, &candidates.status(b), &candidates.status(f)) =>
                    {
                        Some(b)
                    }
                    (Some(f), _) => Some(f),
                    (None, _) => candidates.iter().next(),
                };
                return self.current;
            }
        };
        match best {
            Some(b)
                if b != current
                    && beats(strategy, &candidates.status(b), &candidates.status(current)) =>
            {
                match self.challenger {
                    Some((c, since)) if c == b => {
                        if now.saturating_sub(since) >= hold(strategy) {
                            self.current = Some(b);
                            self.challenger = None;
                        }
                    }
                    _ => self.challenger = Some((b, now)),
                }
            }
            _ => self.challenger = None,
        }
        self.current
    }
}

/// Smooth weighted round robin (as nginx spreads over upstreams): each pick adds every
/// candidate's weight to its credit, takes the one with the most credit (the first of equals)
/// and takes the total off it. Over any run of picks each candidate gets its share, evenly
/// interleaved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wrr {
    credit: [i64; MAX_UPLINKS],
}

impl Wrr {
    /// Picks among `(index, weight)`; `None` when empty.
    pub fn pick(&mut self, weighted: impl Iterator<Item = (usize, u64)>) -> Option<usize> {
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for (i, w) in weighted {
            let Some(c) = self.credit.get_mut(i) else {
                continue;
            };
            let w = i64::try_from(w.max(1)).unwrap_or(i64::MAX / 2);
            *c = c.saturating_add(w);
            let mine = *c;
            total = total.saturating_add(w);
            if best.is_none_or(|b| mine > self.credit[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.credit[b] = self.credit[b].saturating_sub(total);
        Some(b)
    }
}

/// Each uplink's capacity estimate, from the bytes it delivered.
#[derive(Clone, Copy, Debug, Default)]
pub struct Capacity {
    rx: [u64; MAX_UPLINKS],
    tx: [u64; MAX_UPLINKS],
    /// Peak rate, bytes per second.
    peak: [f64; MAX_UPLINKS],
    last: Option<Duration>,
}

impl Capacity {
    /// Uplink `index` received `bytes`.
    pub fn received(&mut self, index: usize, bytes: usize) {
        if let Some(b) = self.rx.get_mut(index) {
            *b += bytes as u64;
        }
    }

    /// Uplink `index` sent `bytes`.
    pub fn sent(&mut self, index: usize, bytes: usize) {
        if let Some(b) = self.tx.get_mut(index) {
            *b += bytes as u64;
        }
    }

    /// Whether any uplink delivered bytes since the last tick.
    pub fn busy(&self) -> bool {
        self.rx.iter().chain(&self.tx).any(|&b| b > 0)
    }

    /// Folds the bytes since the last tick into the peaks.
    pub fn tick(&mut self, now: Duration) {
        let Some(last) = self.last.replace(now) else {
            self.rx = [0; MAX_UPLINKS];
            self.tx = [0; MAX_UPLINKS];
            return;
        };
        let dt = now.saturating_sub(last).as_secs_f64();
        if dt <= 0.0 {
            self.last = Some(last);
            return;
        }
        let decay = 0.5f64.powf(dt / CAPACITY_HALF_LIFE.as_secs_f64());
        for i in 0..MAX_UPLINKS {
            let rate = self.rx[i].max(self.tx[i]) as f64 / dt;
            self.peak[i] = rate.max(self.peak[i] * decay);
            self.rx[i] = 0;
            self.tx[i] = 0;
        }
    }

    /// The estimate for uplink `index`, bytes per second (0: none).
    pub fn peak(&self, index: usize) -> f64 {
        self.peak.get(index).copied().unwrap_or(0.0)
    }

    /// Weights for `candidates`: their peaks in kB/s when every one has at least
    /// [`MIN_CAPACITY`], else all equal.
    fn weights<'a>(
        &'a self,
        candidates: &'a Candidates<'_>,
    ) -> impl Iterator<Item = (usize, u64)> + 'a {
        let all_measured = candidates.iter().all(|i| self.peak(i) >= MIN_CAPACITY);
        candidates.iter().map(move |i| {
            let w = if all_measured {
                (self.peak(i) / 1000.0) as u64
            } else {
                1
            };
            (i, w)
        })
    }
}

/// A measured rule's choice changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switch {
    /// The rule.
    pub rule: Matched,
    /// Its choice before (`None`: first choice).
    pub from: Option<usize>,
    /// And now.
    pub to: usize,
    /// Whether the rule moves existing flows.
    pub move_existing: bool,
}

/// The stateful choices of every rule: the [`Chooser`] the flow layer decides with.
#[derive(Debug, Default)]
pub struct Selections {
    best: HashMap<Matched, Hysteresis>,
    spread: HashMap<Matched, Wrr>,
    capacity: Capacity,
    now: Duration,
    next_tick: Option<Duration>,
    /// The last tick saw bytes delivered.
    was_busy: bool,
}

impl Selections {
    /// No choice made yet.
    pub fn new() -> Selections {
        Selections::default()
    }

    /// Forgets every rule's choice (the policy changed: rules are numbered anew). Capacity
    /// estimates stay.
    pub fn reset(&mut self) {
        self.best.clear();
        self.spread.clear();
    }

    /// The time decisions are made at from now on.
    pub fn at(&mut self, now: Duration) {
        self.now = now;
    }

    /// The capacity estimates, to feed and read.
    pub fn capacity(&self) -> &Capacity {
        &self.capacity
    }

    /// The capacity estimates, to feed.
    pub fn capacity_mut(&mut self) -> &mut Capacity {
        &mut self.capacity
    }

    /// The current choice of the measured rule `rule`, if it made one.
    pub fn current(&self, rule: Matched) -> Option<usize> {
        self.best.get(&rule).and_then(Hysteresis::current)
    }

    /// When [`Selections::tick`] is due: while `policy` has a measured or spreading rule and
    /// data moves (bytes since the last tick, or at it). `None` otherwise, so an idle host
    /// does not wake for it; the next byte asks for a tick again.
    pub fn deadline(&self, policy: &Policy) -> Option<Duration> {
        let moving = self.was_busy || self.capacity.busy();
        (moving && wants_ticks(policy)).then(|| self.next_tick.unwrap_or(self.now))
    }

    /// Looks at every measured rule of `policy` with the uplinks' `statuses` at `now`, and
    /// folds delivered bytes into the capacity estimates; every choice that changed goes to
    /// `switches`. Call at [`Selections::deadline`].
    pub fn tick(
        &mut self,
        policy: &Policy,
        statuses: &[UplinkStatus],
        now: Duration,
        switches: &mut Vec<Switch>,
    ) {
        self.now = now;
        self.next_tick = Some(now + SELECT_INTERVAL);
        self.was_busy = self.capacity.busy();
        self.capacity.tick(now);
        for (route, matched) in policy.routes() {
            let Route::Tunnel {
                strategy, choice, ..
            } = route
            else {
                continue;
            };
            if !strategy.is_measured() {
                continue;
            }
            let before = self.current(matched);
            let _ = route.verdict(matched, statuses, Placing::New, self);
            let after = self.current(matched);
            if let Some(to) = after
                && after != before
            {
                switches.push(Switch {
                    rule: matched,
                    from: before,
                    to,
                    move_existing: choice.move_existing,
                });
            }
        }
    }
}

fn wants_ticks(policy: &Policy) -> bool {
    policy.routes().any(|(r, _)| match r {
        Route::Tunnel {
            strategy, choice, ..
        } => strategy.is_measured() || choice.spread,
        _ => false,
    })
}

impl Chooser for Selections {
    fn choose(
        &mut self,
        rule: Matched,
        strategy: Strategy,
        spread: bool,
        candidates: &Candidates<'_>,
    ) -> Option<usize> {
        if spread {
            let weights = self.capacity.weights(candidates);
            return self.spread.entry(rule).or_default().pick(weights);
        }
        self.best
            .entry(rule)
            .or_default()
            .observe(strategy, candidates, self.now)
    }
}

#[cfg(test)]
mod tests;
