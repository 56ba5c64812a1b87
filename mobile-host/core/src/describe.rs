//! How the control replies name policy rules: one short line per rule as `upmt apps` shows it
//! ("com.example.* -> wifi, cell, else block"), from the parsed policy. Pure.

use upmt_policy::{Matched, Matcher, Policy, Route, Strategy, WhenNone};

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
            essential,
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
            if *strategy == Strategy::LowestRtt {
                s.push_str(" (lowest rtt)");
            }
            if !uplinks.is_empty() {
                s.push_str(match when_none {
                    WhenNone::Block => ", else block",
                    WhenNone::Any => ", else any",
                });
            }
            if *essential {
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
