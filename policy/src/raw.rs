//! The file as serde sees it, and its validation into a [`Policy`]. Every value that a
//! semantic check may refuse is `Spanned`, so the error can point at it.

use globset::GlobBuilder;
use serde::Deserialize;
use serde_spanned::Spanned;

use crate::error::{ErrorKind, KnownUplinks};
use crate::{Choice, Matcher, Policy, Route, Rule, Strategy, WhenNone};

type Failure = (usize, ErrorKind);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: Option<Spanned<i64>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    default: Option<RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    app: Option<Spanned<String>>,
    uid: Option<Spanned<u32>>,
    uplinks: Option<Spanned<Vec<Spanned<String>>>>,
    when_none: Option<Spanned<RawWhenNone>>,
    action: Option<Spanned<RawAction>>,
    strategy: Option<Spanned<RawStrategy>>,
    select: Option<Spanned<RawSelect>>,
    move_existing: Option<Spanned<bool>>,
    avoid_metered: Option<Spanned<bool>>,
    spread: Option<Spanned<bool>>,
    redundant: Option<Spanned<bool>>,
    essential: Option<Spanned<bool>>,
}

/// `[default]`: a rule without a matcher. A separate struct so that `app` there is refused
/// as an unknown field, with its position.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    uplinks: Option<Spanned<Vec<Spanned<String>>>>,
    when_none: Option<Spanned<RawWhenNone>>,
    action: Option<Spanned<RawAction>>,
    strategy: Option<Spanned<RawStrategy>>,
    select: Option<Spanned<RawSelect>>,
    move_existing: Option<Spanned<bool>>,
    avoid_metered: Option<Spanned<bool>>,
    spread: Option<Spanned<bool>>,
    essential: Option<Spanned<bool>>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum RawWhenNone {
    Block,
    Any,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum RawAction {
    Tunnel,
    Bypass,
    Block,
}

/// `select`: snake_case like every other key and value of the file.
#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawSelect {
    Order,
    LowestRtt,
    LowestLoss,
}

/// `strategy`, the older name of `select`, kept with its kebab-case values so that files
/// written for it keep working.
#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum RawStrategy {
    Ordered,
    LowestRtt,
    Redundant,
}

pub(crate) fn parse(text: &str, known: &[&str]) -> Result<Policy, Failure> {
    let raw: RawPolicy = toml::from_str(text).map_err(|e| {
        (
            e.span().map_or(0, |s| s.start),
            ErrorKind::Toml(e.message().to_owned()),
        )
    })?;
    match &raw.version {
        None => return Err((0, ErrorKind::MissingVersion)),
        Some(v) if *v.get_ref() != 1 => {
            return Err((v.span().start, ErrorKind::UnsupportedVersion(*v.get_ref())));
        }
        Some(_) => {}
    }
    let mut rules = Vec::with_capacity(raw.rule.len());
    for r in &raw.rule {
        let start = r.span().start;
        let r = r.get_ref();
        let matcher = match (&r.app, &r.uid) {
            (None, None) => return Err((start, ErrorKind::NoMatcher)),
            (Some(_), Some(u)) => return Err((u.span().start, ErrorKind::BothMatchers)),
            (None, Some(u)) => Matcher::Uid(*u.get_ref()),
            (Some(a), None) => app_matcher(a)?,
        };
        let route = route(
            RouteFields {
                uplinks: &r.uplinks,
                when_none: &r.when_none,
                action: &r.action,
                strategy: &r.strategy,
                select: &r.select,
                move_existing: &r.move_existing,
                avoid_metered: &r.avoid_metered,
                spread: &r.spread,
                essential: &r.essential,
            },
            known,
        )?;
        let redundant = match &r.redundant {
            Some(v) if *v.get_ref() && !matches!(route, Route::Tunnel { .. }) => {
                return Err((
                    v.span().start,
                    ErrorKind::MeaninglessKey {
                        key: "redundant",
                        action: if route == Route::Bypass {
                            "bypass"
                        } else {
                            "block"
                        },
                    },
                ));
            }
            Some(v) => *v.get_ref(),
            None => false,
        };
        rules.push(Rule {
            matcher,
            route,
            line: crate::line_col(text, start).0,
            redundant,
        });
    }
    let default = match &raw.default {
        None => None,
        Some(d) => Some(route(
            RouteFields {
                uplinks: &d.uplinks,
                when_none: &d.when_none,
                action: &d.action,
                strategy: &d.strategy,
                select: &d.select,
                move_existing: &d.move_existing,
                avoid_metered: &d.avoid_metered,
                spread: &d.spread,
                essential: &d.essential,
            },
            known,
        )?),
    };
    Ok(Policy {
        uplinks: known.iter().map(|s| (*s).to_owned()).collect(),
        rules,
        default,
    })
}

fn app_matcher(a: &Spanned<String>) -> Result<Matcher, Failure> {
    let name = a.get_ref();
    if name.is_empty() {
        return Err((a.span().start, ErrorKind::EmptyApp));
    }
    if !name.contains(['*', '?', '[', '{']) {
        return Ok(Matcher::App(name.clone()));
    }
    let glob = GlobBuilder::new(name)
        .literal_separator(false)
        .build()
        .map_err(|e| {
            (
                a.span().start,
                ErrorKind::BadGlob {
                    pattern: name.clone(),
                    reason: e.kind().to_string(),
                },
            )
        })?;
    Ok(Matcher::Glob(name.clone(), glob.compile_matcher()))
}

struct RouteFields<'a> {
    uplinks: &'a Option<Spanned<Vec<Spanned<String>>>>,
    when_none: &'a Option<Spanned<RawWhenNone>>,
    action: &'a Option<Spanned<RawAction>>,
    strategy: &'a Option<Spanned<RawStrategy>>,
    select: &'a Option<Spanned<RawSelect>>,
    move_existing: &'a Option<Spanned<bool>>,
    avoid_metered: &'a Option<Spanned<bool>>,
    spread: &'a Option<Spanned<bool>>,
    essential: &'a Option<Spanned<bool>>,
}

fn route(f: RouteFields<'_>, known: &[&str]) -> Result<Route, Failure> {
    let action = f
        .action
        .as_ref()
        .map_or(RawAction::Tunnel, |a| *a.get_ref());
    let action_name = match action {
        RawAction::Tunnel => "tunnel",
        RawAction::Bypass => "bypass",
        RawAction::Block => "block",
    };
    if !matches!(action, RawAction::Tunnel) {
        let meaningless = [
            ("uplinks", f.uplinks.as_ref().map(|s| s.span().start)),
            ("when_none", f.when_none.as_ref().map(|s| s.span().start)),
            ("strategy", f.strategy.as_ref().map(|s| s.span().start)),
            ("select", f.select.as_ref().map(|s| s.span().start)),
            (
                "move_existing",
                f.move_existing.as_ref().map(|s| s.span().start),
            ),
            (
                "avoid_metered",
                f.avoid_metered.as_ref().map(|s| s.span().start),
            ),
            ("spread", f.spread.as_ref().map(|s| s.span().start)),
            ("essential", f.essential.as_ref().map(|s| s.span().start)),
        ];
        if let Some((key, Some(at))) = meaningless.into_iter().find(|(_, at)| at.is_some()) {
            return Err((
                at,
                ErrorKind::MeaninglessKey {
                    key,
                    action: action_name,
                },
            ));
        }
        return Ok(match action {
            RawAction::Bypass => Route::Bypass,
            _ => Route::Block,
        });
    }
    if let (Some(_), Some(old)) = (f.select, f.strategy) {
        return Err((old.span().start, ErrorKind::SelectAndStrategy));
    }
    let strategy = match f.strategy.as_ref().map(|s| (s.span().start, *s.get_ref())) {
        None | Some((_, RawStrategy::Ordered)) => Strategy::Ordered,
        Some((_, RawStrategy::LowestRtt)) => Strategy::LowestRtt,
        Some((at, RawStrategy::Redundant)) => {
            return Err((at, ErrorKind::StrategyNotSupported("redundant")));
        }
    };
    let strategy = match f.select.as_ref().map(|s| *s.get_ref()) {
        None => strategy,
        Some(RawSelect::Order) => Strategy::Ordered,
        Some(RawSelect::LowestRtt) => Strategy::LowestRtt,
        Some(RawSelect::LowestLoss) => Strategy::LowestLoss,
    };
    let choice = choice(&f, strategy)?;
    let Some(list) = f.uplinks else {
        if let Some(w) = f.when_none {
            return Err((w.span().start, ErrorKind::WhenNoneWithoutUplinks));
        }
        return Ok(Route::Tunnel {
            uplinks: Vec::new(),
            strategy,
            when_none: WhenNone::Any,
            choice,
        });
    };
    if list.get_ref().is_empty() {
        return Err((list.span().start, ErrorKind::EmptyUplinks));
    }
    let mut uplinks = Vec::with_capacity(list.get_ref().len());
    for name in list.get_ref() {
        let at = name.span().start;
        let idx = known
            .iter()
            .position(|k| *k == name.get_ref())
            .ok_or_else(|| {
                (
                    at,
                    ErrorKind::UnknownUplink {
                        name: name.get_ref().clone(),
                        known: KnownUplinks(known.iter().map(|s| (*s).to_owned()).collect()),
                    },
                )
            })?;
        if uplinks.contains(&idx) {
            return Err((at, ErrorKind::DuplicateUplink(name.get_ref().clone())));
        }
        uplinks.push(idx);
    }
    let when_none = match f.when_none.as_ref().map(|w| *w.get_ref()) {
        None | Some(RawWhenNone::Block) => WhenNone::Block,
        Some(RawWhenNone::Any) => WhenNone::Any,
    };
    Ok(Route::Tunnel {
        uplinks,
        strategy,
        when_none,
        choice,
    })
}

/// `move_existing`, `avoid_metered`, `spread` and `essential`, checked against the rule's `strategy`.
fn choice(f: &RouteFields<'_>, strategy: Strategy) -> Result<Choice, Failure> {
    let flag = |v: &Option<Spanned<bool>>| v.as_ref().is_some_and(|b| *b.get_ref());
    let at = |v: &Option<Spanned<bool>>| v.as_ref().map_or(0, |b| b.span().start);
    let explicit_block = f
        .when_none
        .as_ref()
        .is_some_and(|w| matches!(w.get_ref(), RawWhenNone::Block));
    let choice = Choice {
        move_existing: flag(f.move_existing),
        avoid_metered: flag(f.avoid_metered),
        never_metered: flag(f.avoid_metered) && explicit_block,
        spread: flag(f.spread),
        essential: flag(f.essential),
    };
    if choice.spread && strategy.is_measured() {
        return Err((at(f.spread), ErrorKind::SpreadWithSelect(strategy.name())));
    }
    if choice.move_existing && !strategy.is_measured() {
        return Err((at(f.move_existing), ErrorKind::MoveExistingWithoutMeasure));
    }
    Ok(choice)
}
