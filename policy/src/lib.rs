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
//! Designed for, not built here: the "redundant" strategy is reserved in the format and
//! refused with "not supported yet"; hold-down before moving back to a preferred uplink and
//! per-flow pinning live in the daemon, which re-runs [`Policy::decide`] when uplinks change.

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
        /// `essential = true`: the app keeps uplinks whose data cap is reached (see
        /// [`UplinkStatus::capped`]); other apps lose them until the cap's period ends.
        essential: bool,
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UplinkStatus {
    /// Usable now.
    pub up: bool,
    /// Smoothed RTT of its tunnel, if measured.
    pub rtt: Option<Duration>,
    /// Its data cap for the current period is reached: only `essential` rules may use it.
    /// A capped uplink that is up still counts as up for "is anything up": an app it is
    /// taken from is blocked rather than held, so its flows never stay on the capped uplink.
    pub capped: bool,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

const ANY: Route = Route::Tunnel {
    uplinks: Vec::new(),
    strategy: Strategy::Ordered,
    when_none: WhenNone::Any,
    essential: false,
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
        let (route, matched) = match self.rules.iter().position(|r| r.matcher.matches(who)) {
            Some(i) => (&self.rules[i].route, Matched::Rule(i)),
            None => match &self.default {
                Some(d) => (d, Matched::Default),
                None => (&ANY, Matched::Builtin),
            },
        };
        Decision {
            verdict: route_verdict(route, uplinks),
            matched,
        }
    }
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

fn route_verdict(route: &Route, status: &[UplinkStatus]) -> Verdict {
    match route {
        Route::Bypass => Verdict::Bypass,
        Route::Block => Verdict::Block,
        Route::Tunnel {
            uplinks,
            strategy,
            when_none,
            essential,
        } => {
            let essential = *essential;
            if uplinks.is_empty() {
                return any_up(status, essential);
            }
            let mut allowed = uplinks
                .iter()
                .copied()
                .filter(|&i| usable(status, i, essential));
            let chosen = match strategy {
                Strategy::Ordered => allowed.next(),
                // Unmeasured RTT sorts last; min_by_key keeps the first of equals, so ties
                // go to the preferred uplink.
                Strategy::LowestRtt => {
                    allowed.min_by_key(|&i| status[i].rtt.unwrap_or(Duration::MAX))
                }
            };
            match (chosen, when_none) {
                (Some(i), _) => Verdict::Tunnel(i),
                (None, WhenNone::Any) => any_up(status, essential),
                (None, WhenNone::Block) => match any_up(status, essential) {
                    Verdict::NoUplinkUp => Verdict::NoUplinkUp,
                    _ => Verdict::Block,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests;
