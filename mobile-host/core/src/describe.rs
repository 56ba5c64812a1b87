//! How the control replies name policy rules: one short line per rule as `upmt apps` shows it
//! ("com.example.* -> wifi, cell, else block"), from the parsed policy. Pure.

use upmt_paft::{AppId, Paft};
use upmt_policy::{AppIdentity, Matched, Matcher, Policy, Route, Strategy, WhenNone};

use crate::api::AppsReply;
use crate::flows::UNKNOWN_APP;

/// Fills in each app's `select`, `move_existing`, `avoid_metered` and `spread` from the rule
/// that matches it (found by its name, and by the uid of one of its flows in `paft` or `held`).
pub fn choices<'a>(
    reply: &mut AppsReply,
    policy: &Policy,
    paft: &Paft,
    held: impl Iterator<Item = (&'a AppId, Option<u32>, bool)>,
) {
    let held: Vec<(&AppId, Option<u32>)> = held.map(|(a, u, _)| (a, u)).collect();
    for app in &mut reply.apps {
        let uid = paft
            .flows_of_app(&app.name)
            .map(|(_, e)| e.uid())
            .next()
            .or_else(|| {
                held.iter()
                    .find(|(a, _)| a.as_str() == app.name)
                    .map(|(_, u)| *u)
            })
            .flatten();
        let who = AppIdentity {
            name: (app.name != UNKNOWN_APP).then_some(app.name.as_str()),
            uid,
        };
        if let (
            Route::Tunnel {
                strategy, choice, ..
            },
            _,
        ) = policy.route_for(&who)
        {
            app.select = Some(strategy.name().to_owned());
            app.move_existing = choice.move_existing;
            app.avoid_metered = choice.avoid_metered;
            app.spread = choice.spread;
        }
    }
}

/// The rule that made a decision, as one line.
pub fn matched_rule(policy: &Policy, matched: Matched) -> String {
    let names = policy.uplink_names();
    match matched {
        Matched::Rule(i) => match policy.rules().get(i) {
            Some(rule) => format!(
                "{} -> {}",
                matcher(&rule.matcher),
                route(&rule.route, names)
            ),
            None => format!("rule {}", i + 1),
        },
        Matched::Default => match policy.default_route() {
            Some(r) => format!("default -> {}", route(r, names)),
            None => "default -> any uplink".to_owned(),
        },
        Matched::Builtin => "(no rule) -> any uplink".to_owned(),
    }
}

fn matcher(m: &Matcher) -> String {
    match m {
        Matcher::App(name) => name.clone(),
        Matcher::Glob(glob, _) => glob.clone(),
        Matcher::Uid(uid) => format!("uid {uid}"),
    }
}

/// A route as "wifi, cell, else block", "bypass" or "block".
pub fn route(r: &Route, names: &[String]) -> String {
    match r {
        Route::Bypass => "bypass".to_owned(),
        Route::Block => "block".to_owned(),
        Route::Tunnel {
            uplinks,
            strategy,
            when_none,
            choice,
        } => {
            let mut s = if uplinks.is_empty() {
                "any uplink".to_owned()
            } else {
                uplinks
                    .iter()
                    .map(|&i| names.get(i).map_or("?", String::as_str))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            match strategy {
                Strategy::Ordered => {}
                Strategy::LowestRtt => s.push_str(" (lowest rtt)"),
                Strategy::LowestLoss => s.push_str(" (lowest loss)"),
            }
            if choice.move_existing {
                s.push_str(" (move existing)");
            }
            if choice.avoid_metered {
                s.push_str(" (avoid metered)");
            }
            if choice.spread {
                s.push_str(" (spread)");
            }
            if !uplinks.is_empty() {
                s.push_str(match when_none {
                    WhenNone::Block => ", else block",
                    WhenNone::Any => ", else any",
                });
            }
            if choice.essential {
                s.push_str(", essential");
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"version = 1

[[rule]]
app = "com.example.video"
uplinks = ["wifi", "cell"]

[[rule]]
app = "com.android.vending"
uplinks = ["wifi"]
when_none = "block"

[[rule]]
app = "com.example.bank"
action = "bypass"

[default]
uplinks = ["wifi"]
when_none = "any"
"#;

    #[test]
    fn measured_and_metered_choices_show_in_the_rule_and_the_apps_reply() {
        let p = Policy::parse(
            "version = 1\n[[rule]]\napp = \"call\"\nuplinks = [\"wifi\", \"cell\"]\nselect = \"lowest_rtt\"\nmove_existing = true\navoid_metered = true\n[default]\nspread = true\n",
            "policy.toml",
            &["wifi", "cell"],
        )
        .unwrap();
        assert_eq!(
            matched_rule(&p, Matched::Rule(0)),
            "call -> wifi, cell (lowest rtt) (move existing) (avoid metered), else block"
        );
        assert_eq!(
            matched_rule(&p, Matched::Default),
            "default -> any uplink (spread)"
        );
        let app = |name: &str| crate::api::AppStatus {
            name: name.into(),
            rule: String::new(),
            uplinks: vec![],
            flows: 0,
            blocked: 0,
            bytes: vec![],
            select: None,
            move_existing: false,
            avoid_metered: false,
            spread: false,
            duplicated_bytes: 0,
        };
        let mut reply = AppsReply {
            apps: vec![app("call"), app("other")],
        };
        let paft = Paft::new(upmt_paft::Config::default());
        choices(&mut reply, &p, &paft, std::iter::empty());
        let call = &reply.apps[0];
        assert_eq!(
            (
                call.select.as_deref(),
                call.move_existing,
                call.avoid_metered,
                call.spread
            ),
            (Some("lowest_rtt"), true, true, false)
        );
        let other = &reply.apps[1];
        assert_eq!(
            (
                other.select.as_deref(),
                other.move_existing,
                other.avoid_metered,
                other.spread
            ),
            (Some("order"), false, false, true)
        );
    }

    #[test]
    fn rules_are_named_by_their_matcher_and_route() {
        let p = Policy::parse(POLICY, "policy.toml", &["wifi", "cell"]).unwrap();
        let video = matched_rule(&p, Matched::Rule(0));
        assert!(
            video.starts_with("com.example.video -> wifi, cell, else "),
            "{video}"
        );
        assert_eq!(
            matched_rule(&p, Matched::Rule(1)),
            "com.android.vending -> wifi, else block"
        );
        assert_eq!(
            matched_rule(&p, Matched::Rule(2)),
            "com.example.bank -> bypass"
        );
        assert_eq!(
            matched_rule(&p, Matched::Default),
            "default -> wifi, else any"
        );
        assert_eq!(
            matched_rule(&p, Matched::Builtin),
            "(no rule) -> any uplink"
        );
    }
}
