//! upmt-policy: the per-application policy file. It parses and validates the TOML format
//! described in `docs/policy.md` (every error with file:line:column and what was expected),
//! and decides, for an app and the current state of the uplinks, whether its traffic is
//! tunnelled (over which uplink), sent straight out (bypass) or blocked.
//!
//! Pure: it never reads files, clocks or the network. The caller hands in the text, the
//! path to name in errors, and the uplink names of the daemon's config; uplinks are then
//! referred to by their index in that list.
//!
//! Decisions are per new flow (and on uplink changes), not per packet.
//!
//! `redundant = true` on a rule names a second uplink per flow
//! ([`Policy::redundant_uplink`]); the daemon and the protocol send every packet on both.
//!
//! Designed for, not built here: the "redundant" strategy is reserved in the format and
//! refused with "not supported yet" (the `redundant` key is how redundancy is asked for); hold-down before moving back to a preferred uplink and
//! per-flow pinning live in the daemon, which re-runs [`Policy::decide`] when uplinks change.
//! Choices by measurement keep state (hysteresis, spreading), so the policy only says which
//! uplinks are candidates and asks a [`Chooser`] the daemon owns ([`Policy::decide_with`]);
//! [`Policy::decide`] uses the stateless [`Immediate`].

mod error;
mod net;
mod raw;

use std::time::Duration;

use globset::GlobMatcher;

pub use error::{ErrorKind, KnownUplinks, PolicyError, line_col};
pub use net::is_never_tunnelled;

/// What to do when none of a rule's uplinks is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenNone {
    /// Block the traffic (never leak it onto an uplink the rule does not list).
    Block,
    /// Use any uplink that is up, in the config's order.
    Any,
}

/// How to pick among a rule's uplinks that are up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// The first one in the rule's list.
    Ordered,
    /// The one with the lowest measured RTT; unmeasured ones come last, ties go by order.
    LowestRtt,
    /// The one with the lowest measured probe loss; unmeasured ones come last, ties go by order.
    LowestLoss,
}

impl Strategy {
    /// Whether it picks by the probes' measurements (and so needs hysteresis).
    pub fn is_measured(self) -> bool {
        matches!(self, Strategy::LowestRtt | Strategy::LowestLoss)
    }

    /// Its name in the policy file's `select` key.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Ordered => "order",
            Strategy::LowestRtt => "lowest_rtt",
            Strategy::LowestLoss => "lowest_loss",
        }
    }
}

/// A tunnel rule's further choices (`move_existing`, `avoid_metered`, `spread`); all off by
/// default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Choice {
    /// Existing flows follow a measured choice when it changes (otherwise only new flows do,
    /// and existing ones move only when their uplink stops being a candidate).
    pub move_existing: bool,
    /// Metered uplinks are used only when no unmetered candidate is up.
    pub avoid_metered: bool,
    /// With `avoid_metered`, the rule also says `when_none = "block"` in so many words: metered
    /// uplinks are never used.
    pub never_metered: bool,
    /// New flows are spread over the candidates by the [`Chooser`]; each flow stays where it
    /// was put while that uplink remains a candidate.
    pub spread: bool,
    /// `essential = true`: the app keeps uplinks whose data cap is reached (see
    /// [`UplinkStatus::capped`]); other apps lose them until the cap's period ends.
    pub essential: bool,
}

/// Where a rule sends its traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Through the tunnel.
    Tunnel {
        /// Allowed uplinks (indices into the config's list), in preference order. Empty:
        /// any uplink, in the config's order.
        uplinks: Vec<usize>,
        /// How to pick among them.
        strategy: Strategy,
        /// What to do when none of them is up.
        when_none: WhenNone,
        /// Moving existing flows, metered uplinks, spreading.
        choice: Choice,
    },
    /// Never tunnelled: straight out a physical interface.
    Bypass,
    /// Dropped (and TCP reset by the daemon).
    Block,
}

/// What a rule matches.
#[derive(Clone, Debug)]
pub enum Matcher {
    /// An app by exact name.
    App(String),
    /// Apps whose name matches a glob (`com.google.*`).
    Glob(String, GlobMatcher),
    /// An owner uid.
    Uid(u32),
}

impl Matcher {
    fn matches(&self, who: &AppIdentity<'_>) -> bool {
        match self {
            Matcher::App(n) => who.name == Some(n.as_str()),
            Matcher::Glob(_, g) => who.name.is_some_and(|n| g.is_match(n)),
            Matcher::Uid(u) => who.uid == Some(*u),
        }
    }
}

/// One `[[rule]]`.
#[derive(Clone, Debug)]
pub struct Rule {
    /// What it matches.
    pub matcher: Matcher,
    /// Where matching traffic goes.
    pub route: Route,
    /// The line of its `[[rule]]` header, for display.
    pub line: usize,
    /// `redundant = true`: every packet of its flows also goes over a second uplink (see
    /// [`Policy::redundant_uplink`]).
    pub redundant: bool,
}

/// Who owns a flow. Unknown owners have neither and fall to the default rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppIdentity<'a> {
    /// App name (Android package, Linux program name).
    pub name: Option<&'a str>,
    /// Owner uid.
    pub uid: Option<u32>,
}

/// The state of one of the config's uplinks, as the daemon sees it now.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct UplinkStatus {
    /// Usable now.
    pub up: bool,
    /// Smoothed RTT of its tunnel, if measured.
    pub rtt: Option<Duration>,
    /// Smoothed fraction of probes lost (0.0 to 1.0), once a probe was answered.
    pub loss: Option<f32>,
    /// Marked `metered = true` in the daemon's config (cellular data that costs).
    pub metered: bool,
    /// Its data cap for the current period is reached: only `essential` rules may use it.
    /// A capped uplink that is up still counts as up for "is anything up": an app it is
    /// taken from is blocked rather than held, so its flows never stay on the capped uplink.
    pub capped: bool,
}

/// The uplinks a tunnel rule may pick from right now: allowed by the rule, up, not capped (unless
/// the rule is essential), and of one
/// metering class (unmetered first when the rule avoids metered uplinks). Never empty when
/// handed to a [`Chooser`].
#[derive(Clone, Copy, Debug)]
pub struct Candidates<'a> {
    /// The rule's list; empty: every uplink, config order.
    listed: &'a [usize],
    statuses: &'a [UplinkStatus],
    /// `Some(m)`: only uplinks whose `metered` is `m`.
    metered: Option<bool>,
    /// Capped uplinks are candidates too (an essential rule).
    essential: bool,
}

impl<'a> Candidates<'a> {
    /// The candidates among `statuses` for a rule listing `listed` (empty: any uplink), only
    /// of metering `metered` when given.
    pub fn new(
        listed: &'a [usize],
        statuses: &'a [UplinkStatus],
        metered: Option<bool>,
    ) -> Candidates<'a> {
        Candidates {
            listed,
            statuses,
            metered,
            essential: false,
        }
    }

    /// The same candidates for an essential rule (`true`): capped uplinks stay candidates.
    pub fn essential(self, essential: bool) -> Candidates<'a> {
        Candidates { essential, ..self }
    }

    /// The candidates' indices, in the rule's order of preference.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        let all = self.listed.is_empty().then_some(0..self.statuses.len());
        self.listed
            .iter()
            .copied()
            .chain(all.into_iter().flatten())
            .filter(|&i| {
                self.statuses.get(i).is_some_and(|s| {
                    s.up && (self.essential || !s.capped)
                        && self.metered.is_none_or(|m| s.metered == m)
                })
            })
    }

    /// Whether uplink `index` is one of them.
    pub fn contains(&self, index: usize) -> bool {
        self.iter().any(|i| i == index)
    }

    /// The status of uplink `index` (default: down, unmeasured).
    pub fn status(&self, index: usize) -> UplinkStatus {
        self.statuses.get(index).copied().unwrap_or_default()
    }

    /// The statuses of every uplink, indexed like the config.
    pub fn statuses(&self) -> &'a [UplinkStatus] {
        self.statuses
    }
}

/// A flow being placed, as [`Policy::decide_with`] and a [`Chooser`] see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placing {
    /// A new flow.
    New,
    /// A flow already on this uplink (index), decided again after a change.
    Existing(usize),
}

/// Picks one uplink among a rule's candidates when the pick depends on more than their order:
/// a measured `select`, or `spread`. The daemon's chooser keeps state (hysteresis, weighted
/// round robin); [`Immediate`] is stateless.
pub trait Chooser {
    /// The uplink for a flow of the rule `rule` picking by `strategy` (`spread`: spreading
    /// flows), among `candidates` (never empty). `None` or an index that is not a candidate
    /// means the first candidate.
    fn choose(
        &mut self,
        rule: Matched,
        strategy: Strategy,
        spread: bool,
        candidates: &Candidates<'_>,
    ) -> Option<usize>;
}

/// The stateless chooser: the best measurement now (unmeasured last, ties by order), and no
/// spreading (the first candidate).
#[derive(Clone, Copy, Debug, Default)]
pub struct Immediate;

impl Chooser for Immediate {
    fn choose(
        &mut self,
        _rule: Matched,
        strategy: Strategy,
        spread: bool,
        candidates: &Candidates<'_>,
    ) -> Option<usize> {
        if spread {
            return candidates.iter().next();
        }
        best_measured(strategy, candidates).or_else(|| candidates.iter().next())
    }
}

/// The candidate with the best measurement for `strategy` (min_by keeps the first of equals,
/// so ties go to the preferred uplink); `None` when none is measured or `strategy` is not a
/// measured one.
pub fn best_measured(strategy: Strategy, candidates: &Candidates<'_>) -> Option<usize> {
    match strategy {
        Strategy::Ordered => None,
        Strategy::LowestRtt => candidates
            .iter()
            .filter_map(|i| candidates.status(i).rtt.map(|r| (i, r)))
            .min_by_key(|&(_, r)| r)
            .map(|(i, _)| i),
        Strategy::LowestLoss => candidates
            .iter()
            .filter_map(|i| candidates.status(i).loss.map(|l| (i, l)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i),
    }
}

/// The outcome for one app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Tunnel over this uplink (index into the config's list).
    Tunnel(usize),
    /// Send straight out a physical interface.
    Bypass,
    /// Block: the policy forbids every uplink that is up.
    Block,
    /// The policy would allow tunnelling but no uplink is up at all. Nothing can leak, so
    /// the daemon drops silently (no TCP reset) and decides again when an uplink comes up:
    /// connections survive a short total outage.
    NoUplinkUp,
}

/// Which part of the policy decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Matched {
    /// The `[[rule]]` at this index (0-based, file order).
    Rule(usize),
    /// The `[default]` section.
    Default,
    /// No rule matched and the file has no `[default]`: tunnel over any uplink.
    Builtin,
}

/// A decision and what made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// What to do.
    pub verdict: Verdict,
    /// Which rule said so.
    pub matched: Matched,
}

/// A validated policy.
#[derive(Clone, Debug)]
pub struct Policy {
    uplinks: Vec<String>,
    rules: Vec<Rule>,
    default: Option<Route>,
}

static ANY: Route = Route::Tunnel {
    uplinks: Vec::new(),
    strategy: Strategy::Ordered,
    when_none: WhenNone::Any,
    choice: Choice {
        move_existing: false,
        avoid_metered: false,
        never_metered: false,
        spread: false,
        essential: false,
    },
};

impl Policy {
    /// Parses and validates `text`. `path` names the file in errors; `known_uplinks` are
    /// the uplink names of the daemon's config, in its order. Never panics, whatever the text.
    pub fn parse(text: &str, path: &str, known_uplinks: &[&str]) -> Result<Policy, PolicyError> {
        raw::parse(text, known_uplinks).map_err(|(offset, kind)| {
            let (line, column) = line_col(text, offset);
            PolicyError {
                path: path.to_owned(),
                line,
                column,
                kind,
            }
        })
    }

    /// The policy used when there is no file: everything tunnelled over any uplink.
    pub fn tunnel_everything(known_uplinks: &[&str]) -> Policy {
        Policy {
            uplinks: known_uplinks.iter().map(|s| (*s).to_owned()).collect(),
            rules: Vec::new(),
            default: None,
        }
    }

    /// The config's uplink names this policy was resolved against.
    pub fn uplink_names(&self) -> &[String] {
        &self.uplinks
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The `[default]` section, if the file has one.
    pub fn default_route(&self) -> Option<&Route> {
        self.default.as_ref()
    }

    /// Decides for `who`, given the status of each of the config's uplinks (indexed like
    /// the config; missing entries count as down). First matching rule wins, then
    /// `[default]`, then tunnel over any uplink.
    pub fn decide(&self, who: &AppIdentity<'_>, uplinks: &[UplinkStatus]) -> Decision {
        self.decide_with(who, uplinks, Placing::New, &mut Immediate)
    }

    /// [`Policy::decide`] for a flow being placed as `placing`, asking `chooser` when the
    /// rule picks by measurement or spreads. An existing flow of a spreading rule, or of a
    /// measured rule without `move_existing`, stays on its uplink while that is a candidate.
    pub fn decide_with(
        &self,
        who: &AppIdentity<'_>,
        uplinks: &[UplinkStatus],
        placing: Placing,
        chooser: &mut impl Chooser,
    ) -> Decision {
        let (route, matched) = self.route_for(who);
        Decision {
            verdict: route.verdict(matched, uplinks, placing, chooser),
            matched,
        }
    }

    /// The route that applies to `who`, and which part of the policy it is.
    pub fn route_for(&self, who: &AppIdentity<'_>) -> (&Route, Matched) {
        match self.rules.iter().position(|r| r.matcher.matches(who)) {
            Some(i) => (&self.rules[i].route, Matched::Rule(i)),
            None => match &self.default {
                Some(d) => (d, Matched::Default),
                None => (&ANY, Matched::Builtin),
            },
        }
    }

    /// Every route of the policy and which part it is: rules in file order, then `[default]`
    /// (or the built-in route without one).
    pub fn routes(&self) -> impl Iterator<Item = (&Route, Matched)> {
        self.rules
            .iter()
            .enumerate()
            .map(|(i, r)| (&r.route, Matched::Rule(i)))
            .chain(std::iter::once(match &self.default {
                Some(d) => (d, Matched::Default),
                None => (&ANY, Matched::Builtin),
            }))
    }
}

impl Policy {
    /// The second uplink of a flow of `who` tunnelled over `chosen`, when the rule that
    /// decides for `who` is redundant: the first other uplink of the rule's list that is up
    /// (of the config's list when the rule names none). `None`: not redundant, or nothing else
    /// is up. Called per new flow and on uplink changes, like [`Policy::decide`].
    pub fn redundant_uplink(
        &self,
        who: &AppIdentity<'_>,
        uplinks: &[UplinkStatus],
        chosen: usize,
    ) -> Option<usize> {
        let rule = self.rules.iter().find(|r| r.matcher.matches(who))?;
        let Route::Tunnel { uplinks: list, .. } = &rule.route else {
            return None;
        };
        if !rule.redundant {
            return None;
        }
        let other = |&i: &usize| i != chosen && is_up(uplinks, i);
        if list.is_empty() {
            (0..uplinks.len()).find(other)
        } else {
            list.iter().copied().find(other)
        }
    }
}

fn is_up(uplinks: &[UplinkStatus], i: usize) -> bool {
    uplinks.get(i).is_some_and(|s| s.up)
}

/// Whether uplink `i` may carry the traffic of a rule: up, and not capped unless the rule is
/// essential.
fn usable(uplinks: &[UplinkStatus], i: usize, essential: bool) -> bool {
    uplinks
        .get(i)
        .is_some_and(|s| s.up && (essential || !s.capped))
}

/// The first usable uplink in the config's order; none usable: `Block` when one is up but
/// capped (the traffic must leave it), `NoUplinkUp` when nothing is up at all.
fn any_up(uplinks: &[UplinkStatus], essential: bool) -> Verdict {
    match (0..uplinks.len()).find(|&i| usable(uplinks, i, essential)) {
        Some(i) => Verdict::Tunnel(i),
        None if uplinks.iter().any(|s| s.up) => Verdict::Block,
        None => Verdict::NoUplinkUp,
    }
}

/// The first usable uplink in the config's order, unmetered ones first when `avoid`.
fn any_up_avoiding(uplinks: &[UplinkStatus], avoid: bool, essential: bool) -> Verdict {
    let unmetered =
        (0..uplinks.len()).find(|&i| usable(uplinks, i, essential) && !uplinks[i].metered);
    match unmetered {
        Some(i) if avoid => Verdict::Tunnel(i),
        _ => any_up(uplinks, essential),
    }
}

impl Route {
    /// The verdict of this route (the part of the policy `matched`) for a flow placed as
    /// `placing`, given the uplinks' `status`, asking `chooser` when it picks by measurement or
    /// spreads. [`Policy::decide_with`] for a route already found.
    pub fn verdict(
        &self,
        matched: Matched,
        status: &[UplinkStatus],
        placing: Placing,
        chooser: &mut impl Chooser,
    ) -> Verdict {
        route_verdict(self, matched, status, placing, chooser)
    }
}

fn route_verdict(
    route: &Route,
    matched: Matched,
    status: &[UplinkStatus],
    placing: Placing,
    chooser: &mut impl Chooser,
) -> Verdict {
    match route {
        Route::Bypass => Verdict::Bypass,
        Route::Block => Verdict::Block,
        Route::Tunnel {
            uplinks,
            strategy,
            when_none,
            choice,
        } => {
            let essential = choice.essential;
            // An empty list means any uplink: there is nothing else to fall back to.
            let when_none = if uplinks.is_empty() {
                WhenNone::Any
            } else {
                *when_none
            };
            // Unmetered candidates first; metered ones only when none is up, and never when
            // the rule says when_none = "block" itself.
            let classes: &[Option<bool>] = match (choice.avoid_metered, choice.never_metered) {
                (false, _) => &[None],
                (true, false) => &[Some(false), Some(true)],
                (true, true) => &[Some(false)],
            };
            for &metered in classes {
                let candidates = Candidates::new(uplinks, status, metered).essential(essential);
                let Some(first) = candidates.iter().next() else {
                    continue;
                };
                let sticky = choice.spread || (strategy.is_measured() && !choice.move_existing);
                if let Placing::Existing(current) = placing
                    && sticky
                    && candidates.contains(current)
                {
                    return Verdict::Tunnel(current);
                }
                if *strategy == Strategy::Ordered && !choice.spread {
                    return Verdict::Tunnel(first);
                }
                let picked = chooser
                    .choose(matched, *strategy, choice.spread, &candidates)
                    .filter(|&i| candidates.contains(i));
                return Verdict::Tunnel(picked.unwrap_or(first));
            }
            match when_none {
                WhenNone::Any => any_up_avoiding(status, choice.avoid_metered, essential),
                WhenNone::Block => match any_up(status, essential) {
                    Verdict::NoUplinkUp => Verdict::NoUplinkUp,
                    _ => Verdict::Block,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests;
