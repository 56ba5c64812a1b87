use std::time::Duration;

use proptest::prelude::{Just, prop_assert, prop_oneof, proptest};
use proptest::strategy::Strategy as _;

use super::*;

const UPLINKS: &[&str] = &["wifi", "cell"];
const WIFI: usize = 0;
const CELL: usize = 1;

/// The example of docs/policy.md, kept identical to it.
const EXAMPLE: &str = r#"version = 1

# Video calls: Wi-Fi when there is one, else cellular.
[[rule]]
app = "com.example.video"
uplinks = ["wifi", "cell"]

# Store updates: only on Wi-Fi; blocked when Wi-Fi is down.
[[rule]]
app = "com.android.vending"
uplinks = ["wifi"]
when_none = "block"

# The bank talks to its servers directly, never through the tunnel.
[[rule]]
app = "com.example.bank"
action = "bypass"

# Everything else: Wi-Fi first, then any uplink that is up.
[default]
uplinks = ["wifi"]
when_none = "any"
"#;

fn status(wifi: bool, cell: bool) -> [UplinkStatus; 2] {
    [
        UplinkStatus {
            up: wifi,
            rtt: None,
            ..UplinkStatus::default()
        },
        UplinkStatus {
            up: cell,
            rtt: None,
            ..UplinkStatus::default()
        },
    ]
}

fn app(name: &str) -> AppIdentity<'_> {
    AppIdentity {
        name: Some(name),
        uid: None,
    }
}

fn policy(text: &str) -> Policy {
    match Policy::parse(text, "policy.toml", UPLINKS) {
        Ok(p) => p,
        Err(e) => panic!("test policy refused: {e}"),
    }
}

fn verdict(p: &Policy, who: &str, wifi: bool, cell: bool) -> Verdict {
    p.decide(&app(who), &status(wifi, cell)).verdict
}

/// The error message of `text`, whole, as a user sees it.
fn error(text: &str) -> String {
    match Policy::parse(text, "policy.toml", UPLINKS) {
        Ok(_) => panic!("policy accepted, expected an error:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// Wi-Fi and cellular both up, cellular's data cap reached.
fn cell_capped() -> [UplinkStatus; 2] {
    let mut s = status(true, true);
    s[CELL].capped = true;
    s
}

const CAPS: &str = r#"version = 1

[[rule]]
app = "com.example.maps"
uplinks = ["cell", "wifi"]
essential = true

[[rule]]
app = "com.example.video"
uplinks = ["cell", "wifi"]

[[rule]]
app = "com.example.sync"
uplinks = ["cell"]
when_none = "any"

[[rule]]
app = "com.example.podcasts"
uplinks = ["cell"]
"#;

// ---- the documented example ----

#[test]
fn the_video_app_prefers_wifi_and_falls_back_to_cellular() {
    let p = policy(EXAMPLE);
    assert_eq!(
        verdict(&p, "com.example.video", true, true),
        Verdict::Tunnel(WIFI)
    );
    assert_eq!(
        verdict(&p, "com.example.video", false, true),
        Verdict::Tunnel(CELL)
    );
    assert_eq!(
        verdict(&p, "com.example.video", false, false),
        Verdict::NoUplinkUp
    );
}

#[test]
fn store_updates_run_only_on_wifi_and_are_blocked_on_cellular() {
    let p = policy(EXAMPLE);
    assert_eq!(
        verdict(&p, "com.android.vending", true, true),
        Verdict::Tunnel(WIFI)
    );
    assert_eq!(
        verdict(&p, "com.android.vending", false, true),
        Verdict::Block
    );
    assert_eq!(
        verdict(&p, "com.android.vending", false, false),
        Verdict::NoUplinkUp,
        "with nothing up nothing can leak: hold rather than reset"
    );
}

#[test]
fn the_bank_bypasses_the_tunnel_whatever_the_uplinks() {
    let p = policy(EXAMPLE);
    assert_eq!(verdict(&p, "com.example.bank", true, true), Verdict::Bypass);
    assert_eq!(
        verdict(&p, "com.example.bank", false, false),
        Verdict::Bypass
    );
    assert_eq!(
        p.decide(&app("com.example.bank"), &[]).matched,
        Matched::Rule(2)
    );
}

#[test]
fn other_apps_prefer_wifi_and_use_any_uplink_otherwise() {
    let p = policy(EXAMPLE);
    let d = p.decide(&app("org.mozilla.firefox"), &status(true, true));
    assert_eq!(
        d,
        Decision {
            verdict: Verdict::Tunnel(WIFI),
            matched: Matched::Default
        }
    );
    assert_eq!(
        verdict(&p, "org.mozilla.firefox", false, true),
        Verdict::Tunnel(CELL)
    );
    let unknown = p.decide(&AppIdentity::default(), &status(false, true));
    assert_eq!(
        unknown,
        Decision {
            verdict: Verdict::Tunnel(CELL),
            matched: Matched::Default
        }
    );
}

#[test]
fn the_example_in_the_docs_is_the_one_tested_here() {
    let doc = include_str!("../../docs/policy.md");
    let block = doc
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/policy.md has a toml block");
    assert_eq!(block, EXAMPLE);
}

#[test]
fn rules_remember_their_line_for_display() {
    let p = policy(EXAMPLE);
    let lines: Vec<usize> = p.rules().iter().map(|r| r.line).collect();
    assert_eq!(lines, vec![4, 9, 15]);
}

// ---- matching ----

#[test]
fn the_first_matching_rule_wins_even_over_a_later_exact_match() {
    let p = policy(
        r#"version = 1
[[rule]]
app = "com.google.*"
uplinks = ["cell"]
[[rule]]
app = "com.google.maps"
uplinks = ["wifi"]
"#,
    );
    let d = p.decide(&app("com.google.maps"), &status(true, true));
    assert_eq!(
        d,
        Decision {
            verdict: Verdict::Tunnel(CELL),
            matched: Matched::Rule(0)
        }
    );
}

#[test]
fn a_glob_matches_only_names_it_covers() {
    let p = policy("version = 1\n[[rule]]\napp = \"com.google.*\"\naction = \"block\"\n");
    assert_eq!(
        verdict(&p, "com.google.android.gms", true, true),
        Verdict::Block
    );
    assert_eq!(
        verdict(&p, "com.googlex", true, true),
        Verdict::Tunnel(WIFI)
    );
    assert_eq!(
        verdict(&p, "org.com.google.x", true, true),
        Verdict::Tunnel(WIFI)
    );
}

#[test]
fn an_exact_name_does_not_match_a_longer_one() {
    let p = policy("version = 1\n[[rule]]\napp = \"curl\"\naction = \"block\"\n");
    assert_eq!(verdict(&p, "curl", true, true), Verdict::Block);
    assert_eq!(verdict(&p, "curl2", true, true), Verdict::Tunnel(WIFI));
}

#[test]
fn a_uid_rule_matches_by_uid_only() {
    let p = policy("version = 1\n[[rule]]\nuid = 10123\nuplinks = [\"cell\"]\n");
    let who = AppIdentity {
        name: Some("whatever"),
        uid: Some(10_123),
    };
    assert_eq!(
        p.decide(&who, &status(true, true)).verdict,
        Verdict::Tunnel(CELL)
    );
    let other = AppIdentity {
        name: Some("whatever"),
        uid: Some(10_124),
    };
    assert_eq!(
        p.decide(&other, &status(true, true)).matched,
        Matched::Builtin
    );
}

#[test]
fn without_a_default_section_unmatched_traffic_uses_any_uplink_in_config_order() {
    let p = policy("version = 1\n");
    assert_eq!(
        p.decide(&app("x"), &status(false, true)),
        Decision {
            verdict: Verdict::Tunnel(CELL),
            matched: Matched::Builtin
        }
    );
    assert_eq!(verdict(&p, "x", false, false), Verdict::NoUplinkUp);
    let q = Policy::tunnel_everything(UPLINKS);
    assert_eq!(verdict(&q, "x", true, true), Verdict::Tunnel(WIFI));
}

// ---- fallbacks and strategies ----

#[test]
fn when_none_any_falls_back_to_an_unlisted_uplink() {
    let p =
        policy("version = 1\n[[rule]]\napp = \"a\"\nuplinks = [\"cell\"]\nwhen_none = \"any\"\n");
    assert_eq!(verdict(&p, "a", true, true), Verdict::Tunnel(CELL));
    assert_eq!(verdict(&p, "a", true, false), Verdict::Tunnel(WIFI));
}

#[test]
fn listed_uplinks_block_by_default_when_none_is_up() {
    let p = policy("version = 1\n[[rule]]\napp = \"a\"\nuplinks = [\"cell\"]\n");
    assert_eq!(verdict(&p, "a", true, false), Verdict::Block);
}

#[test]
fn a_default_section_can_block_everything_unlisted() {
    let p = policy("version = 1\n[[rule]]\napp = \"a\"\n[default]\naction = \"block\"\n");
    assert_eq!(verdict(&p, "a", true, true), Verdict::Tunnel(WIFI));
    assert_eq!(verdict(&p, "b", true, true), Verdict::Block);
}

#[test]
fn lowest_rtt_picks_the_fastest_measured_uplink() {
    let p = policy(
        "version = 1\n[[rule]]\napp = \"game\"\nuplinks = [\"wifi\", \"cell\"]\nstrategy = \"lowest-rtt\"\n",
    );
    let ms = |m| Some(Duration::from_millis(m));
    let who = app("game");
    let s = [
        UplinkStatus {
            up: true,
            rtt: ms(80),
            ..UplinkStatus::default()
        },
        UplinkStatus {
            up: true,
            rtt: ms(30),
            ..UplinkStatus::default()
        },
    ];
    assert_eq!(p.decide(&who, &s).verdict, Verdict::Tunnel(CELL));
    let unmeasured = [
        UplinkStatus {
            up: true,
            rtt: ms(80),
            ..UplinkStatus::default()
        },
        UplinkStatus {
            up: true,
            rtt: None,
            ..UplinkStatus::default()
        },
    ];
    assert_eq!(p.decide(&who, &unmeasured).verdict, Verdict::Tunnel(WIFI));
    let tie = [
        UplinkStatus {
            up: true,
            rtt: ms(5),
            ..UplinkStatus::default()
        },
        UplinkStatus {
            up: true,
            rtt: ms(5),
            ..UplinkStatus::default()
        },
    ];
    assert_eq!(
        p.decide(&who, &tie).verdict,
        Verdict::Tunnel(WIFI),
        "ties go to the preferred one"
    );
    let down = [
        UplinkStatus {
            up: true,
            rtt: ms(80),
            ..UplinkStatus::default()
        },
        UplinkStatus {
            up: false,
            rtt: ms(1),
            ..UplinkStatus::default()
        },
    ];
    assert_eq!(p.decide(&who, &down).verdict, Verdict::Tunnel(WIFI));
}

#[test]
fn uplinks_missing_from_the_status_slice_count_as_down() {
    let p = policy("version = 1\n[[rule]]\napp = \"a\"\nuplinks = [\"cell\"]\n");
    let only_wifi = [UplinkStatus {
        up: true,
        rtt: None,
        ..UplinkStatus::default()
    }];
    assert_eq!(p.decide(&app("a"), &only_wifi).verdict, Verdict::Block);
}

// ---- every error, with its position ----

#[test]
fn a_toml_syntax_error_names_its_position() {
    assert_eq!(
        error("version = 1\n[[rule]\n"),
        "policy.toml:2:8: unclosed array table, expected `]`"
    );
}

#[test]
fn an_unknown_key_in_a_rule_is_refused_with_the_keys_expected() {
    assert_eq!(
        error("version = 1\n\n[[rule]]\napp = \"a\"\nuplink = [\"wifi\"]\n"),
        "policy.toml:5:1: unknown field `uplink`, expected one of `app`, `uid`, `uplinks`, `when_none`, `action`, `strategy`, `select`, `move_existing`, `avoid_metered`, `spread`, `redundant`, `essential`"
    );
}

#[test]
fn an_unknown_top_level_key_is_refused() {
    let e = error("version = 1\nrules = []\n");
    assert!(
        e.starts_with("policy.toml:2:1: unknown field `rules`, expected one of"),
        "{e}"
    );
}

#[test]
fn a_matcher_in_the_default_section_is_refused() {
    assert_eq!(
        error("version = 1\n[default]\napp = \"x\"\n"),
        "policy.toml:3:1: unknown field `app`, expected one of `uplinks`, `when_none`, `action`, `strategy`, `select`, `move_existing`, `avoid_metered`, `spread`, `essential`"
    );
}

#[test]
fn a_misspelt_action_lists_the_valid_ones() {
    assert_eq!(
        error("version = 1\n[[rule]]\napp = \"a\"\naction = \"tunel\"\n"),
        "policy.toml:4:10: unknown variant `tunel`, expected one of `tunnel`, `bypass`, `block`"
    );
}

#[test]
fn a_misspelt_when_none_lists_the_valid_ones() {
    assert_eq!(
        error("version = 1\n[[rule]]\napp = \"a\"\nuplinks = [\"wifi\"]\nwhen_none = \"drop\"\n"),
        "policy.toml:5:13: unknown variant `drop`, expected `block` or `any`"
    );
}

#[test]
fn a_negative_uid_is_refused_where_it_stands() {
    assert_eq!(
        error("version = 1\n[[rule]]\nuid = -3\n"),
        "policy.toml:3:7: invalid value: integer `-3`, expected u32"
    );
}

#[test]
fn a_missing_version_is_refused_at_the_top() {
    assert_eq!(
        error("[default]\n"),
        "policy.toml:1:1: missing `version = 1`"
    );
}

#[test]
fn a_future_version_is_refused_at_its_value() {
    assert_eq!(
        error("version = 2\n"),
        "policy.toml:1:11: unsupported version 2; expected version = 1"
    );
}

#[test]
fn an_uplink_the_config_lacks_is_refused_with_the_ones_it_has() {
    assert_eq!(
        error("version = 1\n[[rule]]\napp = \"a\"\nuplinks = [\"wifi\", \"lte\"]\n"),
        "policy.toml:4:20: unknown uplink \"lte\"; the config has: wifi, cell"
    );
    let e = Policy::parse(
        "version = 1\n[default]\nuplinks = [\"wifi\"]\n",
        "p.toml",
        &[],
    )
    .map(|_| ());
    assert_eq!(
        e.map_err(|e| e.to_string()),
        Err("p.toml:3:12: unknown uplink \"wifi\"; the config has: none".to_owned())
    );
}

#[test]
fn an_uplink_listed_twice_is_refused_at_the_second() {
    assert_eq!(
        error("version = 1\n[default]\nuplinks = [\"cell\", \"wifi\", \"cell\"]\n"),
        "policy.toml:3:28: uplink \"cell\" is listed twice"
    );
}

#[test]
fn an_empty_uplink_list_is_refused() {
    assert_eq!(
        error("version = 1\n[[rule]]\napp = \"a\"\nuplinks = []\n"),
        "policy.toml:4:11: empty uplink list; expected at least one uplink (to block an app, use action = \"block\")"
    );
}

#[test]
fn a_rule_without_a_matcher_is_refused_at_its_header() {
    assert_eq!(
        error("version = 1\n[[rule]]\nuplinks = [\"wifi\"]\n"),
        "policy.toml:2:1: rule matches nothing; expected `app = \"name\"`, `app = \"glob.*\"` or `uid = N`"
    );
}

#[test]
fn a_rule_with_both_app_and_uid_is_refused_at_the_uid() {
    assert_eq!(
        error("version = 1\n[[rule]]\napp = \"a\"\nuid = 1000\n"),
        "policy.toml:4:7: rule has both `app` and `uid`; expected one of them (write two rules to match either)"
    );
}

#[test]
fn an_empty_app_name_is_refused() {
    assert_eq!(
        error("version = 1\n[[rule]]\napp = \"\"\n"),
        "policy.toml:3:7: empty app name; expected a name or a glob"
    );
}

#[test]
fn a_broken_glob_is_refused_with_the_reason() {
    let e = error("version = 1\n[[rule]]\napp = \"com.[abc\"\n");
    assert!(
        e.starts_with("policy.toml:3:7: invalid glob \"com.[abc\": unclosed character class"),
        "{e}"
    );
}

#[test]
fn uplinks_on_a_bypass_rule_are_refused() {
    assert_eq!(
        error("version = 1\n[[rule]]\napp = \"bank\"\naction = \"bypass\"\nuplinks = [\"wifi\"]\n"),
        "policy.toml:5:11: `uplinks` has no meaning with action = \"bypass\"; expected it only with action = \"tunnel\""
    );
}

#[test]
fn when_none_on_a_block_default_is_refused() {
    assert_eq!(
        error("version = 1\n[default]\naction = \"block\"\nwhen_none = \"any\"\n"),
        "policy.toml:4:13: `when_none` has no meaning with action = \"block\"; expected it only with action = \"tunnel\""
    );
}

#[test]
fn when_none_without_uplinks_is_refused() {
    assert_eq!(
        error("version = 1\n[[rule]]\nuid = 0\nwhen_none = \"block\"\n"),
        "policy.toml:4:13: `when_none` needs an `uplinks` list; expected `uplinks = [...]` in the same rule"
    );
}

#[test]
fn the_redundant_strategy_is_refused_as_not_supported_yet() {
    assert_eq!(
        error("version = 1\n[default]\nuplinks = [\"wifi\", \"cell\"]\nstrategy = \"redundant\"\n"),
        "policy.toml:4:12: strategy \"redundant\" is not supported yet; expected \"ordered\" or \"lowest-rtt\""
    );
}

#[test]
fn an_error_on_a_line_with_wide_characters_counts_columns_in_characters() {
    // "é" is two bytes; the column of the stray ";" must still count it as one.
    assert_eq!(
        error("version = 1\n[[rule]]\napp = \"é\"; \n"),
        "policy.toml:3:10: unexpected key or value, expected newline, `#`"
    );
}

#[test]
fn errors_expose_their_position_and_kind_to_callers() {
    let e = Policy::parse(
        "version = 1\n[[rule]]\nuid = 1\nuplinks = [\"lte\"]\n",
        "/etc/upmt/policy.toml",
        UPLINKS,
    )
    .map(|_| ())
    .expect_err("unknown uplink");
    assert_eq!(
        (e.path.as_str(), e.line, e.column),
        ("/etc/upmt/policy.toml", 4, 12)
    );
    assert!(matches!(e.kind, ErrorKind::UnknownUplink { ref name, .. } if name == "lte"));
}

// ---- select, move_existing, avoid_metered, spread ----

/// The select example of docs/policy.md, kept identical to it.
const SELECT_EXAMPLE: &str = r#"version = 1

# A video call: the uplink with the lowest RTT; the running call moves too.
[[rule]]
app = "org.example.call"
uplinks = ["wifi", "cell"]
select = "lowest_rtt"
move_existing = true

# Backups: never on metered cellular, blocked until Wi-Fi returns.
[[rule]]
app = "org.example.backup"
uplinks = ["wifi", "cell"]
avoid_metered = true
when_none = "block"

# A download manager: its connections spread over both uplinks.
[[rule]]
app = "org.example.downloads"
spread = true

# Everything else: the least lossy uplink, metered ones only when nothing else is up.
[default]
select = "lowest_loss"
avoid_metered = true
"#;

fn measured(up: bool, rtt_ms: u64, loss: f32, metered: bool) -> UplinkStatus {
    UplinkStatus {
        up,
        rtt: Some(Duration::from_millis(rtt_ms)),
        loss: Some(loss),
        metered,
        capped: false,
    }
}

/// A chooser that records what it was asked and answers `pick`.
struct Recording {
    asked: Vec<(Matched, Strategy, bool, Vec<usize>)>,
    pick: Option<usize>,
}

impl Chooser for Recording {
    fn choose(
        &mut self,
        rule: Matched,
        strategy: Strategy,
        spread: bool,
        candidates: &Candidates<'_>,
    ) -> Option<usize> {
        self.asked
            .push((rule, strategy, spread, candidates.iter().collect()));
        self.pick
    }
}

#[test]
fn the_select_example_parses_into_its_choices() {
    let p = policy(SELECT_EXAMPLE);
    let choices: Vec<(Strategy, Choice)> = p
        .routes()
        .map(|(r, _)| match r {
            Route::Tunnel {
                strategy, choice, ..
            } => (*strategy, *choice),
            other => panic!("not a tunnel route: {other:?}"),
        })
        .collect();
    let c = |move_existing, avoid_metered, never_metered, spread| Choice {
        move_existing,
        avoid_metered,
        never_metered,
        spread,
        essential: false,
    };
    assert_eq!(
        choices,
        vec![
            (Strategy::LowestRtt, c(true, false, false, false)),
            (Strategy::Ordered, c(false, true, true, false)),
            (Strategy::Ordered, c(false, false, false, true)),
            (Strategy::LowestLoss, c(false, true, false, false)),
        ]
    );
}

#[test]
fn the_select_example_in_the_docs_is_the_one_tested_here() {
    let doc = include_str!("../../docs/policy.md");
    let block = doc
        .split("```toml\n")
        .nth(2)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/policy.md has a second toml block");
    assert_eq!(block, SELECT_EXAMPLE);
}

#[test]
fn the_old_strategy_key_still_selects_by_rtt() {
    let old = policy("version = 1\n[default]\nstrategy = \"lowest-rtt\"\n");
    let new = policy("version = 1\n[default]\nselect = \"lowest_rtt\"\n");
    assert_eq!(old.default_route(), new.default_route());
}

#[test]
fn lowest_loss_picks_the_least_lossy_measured_uplink() {
    let p = policy("version = 1\n[default]\nselect = \"lowest_loss\"\n");
    let s = [
        measured(true, 10, 0.2, false),
        measured(true, 90, 0.0, false),
    ];
    assert_eq!(p.decide(&app("x"), &s).verdict, Verdict::Tunnel(CELL));
    let unmeasured = [
        measured(true, 10, 0.2, false),
        UplinkStatus {
            up: true,
            ..UplinkStatus::default()
        },
    ];
    assert_eq!(
        p.decide(&app("x"), &unmeasured).verdict,
        Verdict::Tunnel(WIFI),
        "an unmeasured uplink never wins"
    );
}

#[test]
fn avoid_metered_uses_metered_cellular_only_when_wifi_is_down() {
    let p = policy(SELECT_EXAMPLE);
    let both = [measured(true, 50, 0.0, false), measured(true, 5, 0.0, true)];
    let wifi_down = [
        measured(false, 50, 0.0, false),
        measured(true, 5, 0.0, true),
    ];
    assert_eq!(
        p.decide(&app("anything"), &both).verdict,
        Verdict::Tunnel(WIFI),
        "metered cellular loses even with the better loss tie and RTT"
    );
    assert_eq!(
        p.decide(&app("anything"), &wifi_down).verdict,
        Verdict::Tunnel(CELL)
    );
    assert_eq!(
        p.decide(&app("org.example.backup"), &both).verdict,
        Verdict::Tunnel(WIFI)
    );
    assert_eq!(
        p.decide(&app("org.example.backup"), &wifi_down).verdict,
        Verdict::Block,
        "when_none = block never uses a metered uplink"
    );
    let none = [
        measured(false, 50, 0.0, false),
        measured(false, 5, 0.0, true),
    ];
    assert_eq!(
        p.decide(&app("org.example.backup"), &none).verdict,
        Verdict::NoUplinkUp
    );
}

#[test]
fn avoid_metered_without_when_none_falls_back_to_a_listed_metered_uplink_then_blocks() {
    let p = policy(
        "version = 1\n[[rule]]\napp = \"saver\"\nuplinks = [\"wifi\", \"cell\"]\navoid_metered = true\n[[rule]]\napp = \"wifi-only\"\nuplinks = [\"wifi\"]\navoid_metered = true\n",
    );
    let wifi_down = [measured(false, 5, 0.0, false), measured(true, 5, 0.0, true)];
    assert_eq!(
        p.decide(&app("saver"), &wifi_down).verdict,
        Verdict::Tunnel(CELL)
    );
    assert_eq!(
        p.decide(&app("wifi-only"), &wifi_down).verdict,
        Verdict::Block,
        "an unlisted metered uplink is not a fallback"
    );
}

#[test]
fn avoid_metered_with_when_none_any_prefers_an_unlisted_unmetered_uplink() {
    let p = Policy::parse(
        "version = 1\n[default]\nuplinks = [\"cell\"]\nwhen_none = \"any\"\navoid_metered = true\n",
        "p",
        &["wifi", "cell", "eth"],
    )
    .expect("valid");
    let s = [
        measured(true, 5, 0.0, true),
        measured(false, 5, 0.0, true),
        measured(true, 5, 0.0, false),
    ];
    assert_eq!(p.decide(&app("x"), &s).verdict, Verdict::Tunnel(2));
}

#[test]
fn measured_and_spreading_rules_ask_the_chooser_among_the_candidates_only() {
    let p = policy(SELECT_EXAMPLE);
    let mut c = Recording {
        asked: Vec::new(),
        pick: Some(CELL),
    };
    let both = [measured(true, 50, 0.0, false), measured(true, 5, 0.0, true)];
    let d = p.decide_with(&app("org.example.downloads"), &both, Placing::New, &mut c);
    assert_eq!(d.verdict, Verdict::Tunnel(CELL));
    let d = p.decide_with(&app("org.example.call"), &both, Placing::New, &mut c);
    assert_eq!(d.verdict, Verdict::Tunnel(CELL));
    let d = p.decide_with(&app("other"), &both, Placing::New, &mut c);
    assert_eq!(
        d.verdict,
        Verdict::Tunnel(WIFI),
        "a pick outside the candidates (metered cell) falls to the first"
    );
    let d = p.decide_with(&app("org.example.backup"), &both, Placing::New, &mut c);
    assert_eq!(d.verdict, Verdict::Tunnel(WIFI));
    assert_eq!(
        c.asked,
        vec![
            (Matched::Rule(2), Strategy::Ordered, true, vec![WIFI, CELL]),
            (
                Matched::Rule(0),
                Strategy::LowestRtt,
                false,
                vec![WIFI, CELL]
            ),
            (Matched::Default, Strategy::LowestLoss, false, vec![WIFI]),
        ],
        "ordered rules never ask"
    );
}

#[test]
fn existing_flows_stay_put_unless_move_existing_says_otherwise() {
    let p = policy(
        "version = 1\n[[rule]]\napp = \"call\"\nselect = \"lowest_rtt\"\nmove_existing = true\n[[rule]]\napp = \"web\"\nselect = \"lowest_rtt\"\n[[rule]]\napp = \"dl\"\nspread = true\n",
    );
    let both = [
        measured(true, 50, 0.0, false),
        measured(true, 5, 0.0, false),
    ];
    let on_wifi = Placing::Existing(WIFI);
    let v = |who| {
        p.decide_with(&app(who), &both, on_wifi, &mut Immediate)
            .verdict
    };
    assert_eq!(v("call"), Verdict::Tunnel(CELL));
    assert_eq!(v("web"), Verdict::Tunnel(WIFI));
    assert_eq!(v("dl"), Verdict::Tunnel(WIFI));
    let wifi_down = [
        measured(false, 50, 0.0, false),
        measured(true, 5, 0.0, false),
    ];
    assert_eq!(
        p.decide_with(&app("web"), &wifi_down, on_wifi, &mut Immediate)
            .verdict,
        Verdict::Tunnel(CELL),
        "a flow whose uplink is no longer a candidate moves"
    );
}

#[test]
fn wrong_select_values_and_combinations_are_refused_where_they_are() {
    assert_eq!(
        error("version = 1\n[default]\nselect = \"fastest\"\n"),
        "policy.toml:3:10: unknown variant `fastest`, expected one of `order`, `lowest_rtt`, `lowest_loss`"
    );
    assert_eq!(
        error("version = 1\n[default]\nselect = \"lowest_rtt\"\nstrategy = \"lowest-rtt\"\n"),
        "policy.toml:4:12: `strategy` is the older name of `select`; expected only `select` in this rule"
    );
    assert_eq!(
        error("version = 1\n[[rule]]\napp = \"a\"\nselect = \"lowest_rtt\"\nspread = true\n"),
        "policy.toml:5:10: `spread` cannot be combined with select = \"lowest_rtt\"; expected select = \"order\" (the default) with spread"
    );
    assert_eq!(
        error("version = 1\n[[rule]]\napp = \"a\"\nmove_existing = true\n"),
        "policy.toml:4:17: `move_existing` needs select = \"lowest_rtt\" or \"lowest_loss\" (with select = \"order\" existing flows already follow the order)"
    );
    assert_eq!(
        error("version = 1\n[[rule]]\napp = \"a\"\naction = \"bypass\"\nspread = true\n"),
        "policy.toml:5:10: `spread` has no meaning with action = \"bypass\"; expected it only with action = \"tunnel\""
    );
    assert_eq!(
        error("version = 1\n[[rule]]\napp = \"a\"\naction = \"block\"\navoid_metered = true\n"),
        "policy.toml:5:17: `avoid_metered` has no meaning with action = \"block\"; expected it only with action = \"tunnel\""
    );
    assert_eq!(
        error("version = 1\n[[rule]]\napp = \"a\"\nspread = \"yes\"\n"),
        "policy.toml:4:10: invalid type: string \"yes\", expected a boolean"
    );
}

// ---- robustness ----

fn tomlish() -> impl proptest::strategy::Strategy<Value = String> {
    let atoms = prop_oneof![
        Just("version = 1\n".to_owned()),
        Just("[[rule]]\n".to_owned()),
        Just("[default]\n".to_owned()),
        Just("app = \"com.*\"\n".to_owned()),
        Just("app = \"[\"\n".to_owned()),
        Just("uid = 7\n".to_owned()),
        Just("uplinks = [\"wifi\", \"cell\"]\n".to_owned()),
        Just("uplinks = [\"x\"]\n".to_owned()),
        Just("when_none = \"any\"\n".to_owned()),
        Just("action = \"bypass\"\n".to_owned()),
        Just("strategy = \"lowest-rtt\"\n".to_owned()),
        Just("select = \"lowest_loss\"\n".to_owned()),
        Just("move_existing = true\n".to_owned()),
        Just("avoid_metered = true\n".to_owned()),
        Just("spread = true\n".to_owned()),
        "[ -~\n]{0,12}",
    ];
    proptest::collection::vec(atoms, 0..12).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn parsing_arbitrary_text_never_panics_and_positions_are_inside_the_text(text in "\\PC{0,200}") {
        if let Err(e) = Policy::parse(&text, "f", UPLINKS) {
            prop_assert!(e.line >= 1 && e.column >= 1);
            prop_assert!(e.line <= text.lines().count().max(1) + 1);
        }
    }

    #[test]
    fn parsing_policy_shaped_text_never_panics_and_decides_without_panicking(text in tomlish()) {
        match Policy::parse(&text, "f", UPLINKS) {
            Ok(p) => {
                for who in [app("com.x"), AppIdentity { name: None, uid: Some(7) }, AppIdentity::default()] {
                    let d = p.decide(&who, &status(false, true));
                    if let Verdict::Tunnel(i) = d.verdict {
                        prop_assert!(i < UPLINKS.len());
                    }
                }
            }
            Err(e) => prop_assert!(e.line >= 1 && e.column >= 1),
        }
    }
}

// ---- data caps and essential apps ----

#[test]
fn a_capped_uplink_is_left_by_apps_that_are_not_essential() {
    let p = policy(CAPS);
    let d = p.decide(&app("com.example.video"), &cell_capped());
    assert_eq!(d.verdict, Verdict::Tunnel(WIFI));
}

#[test]
fn an_essential_app_keeps_a_capped_uplink() {
    let p = policy(CAPS);
    let d = p.decide(&app("com.example.maps"), &cell_capped());
    assert_eq!(d.verdict, Verdict::Tunnel(CELL));
}

#[test]
fn an_app_whose_only_uplink_is_capped_is_blocked_not_held() {
    let p = policy(CAPS);
    // Held flows stay where they are: a capped uplink that is up must block instead.
    let only_cell = {
        let mut s = status(false, true);
        s[CELL].capped = true;
        s
    };
    for who in [
        "com.example.podcasts",
        "com.example.video",
        "com.example.sync",
    ] {
        assert_eq!(
            p.decide(&app(who), &only_cell).verdict,
            Verdict::Block,
            "{who}"
        );
    }
    assert_eq!(
        p.decide(&app("com.example.maps"), &only_cell).verdict,
        Verdict::Tunnel(CELL)
    );
}

#[test]
fn when_none_any_falls_back_to_an_uncapped_uplink_only() {
    let p = policy(CAPS);
    assert_eq!(
        p.decide(&app("com.example.sync"), &cell_capped()).verdict,
        Verdict::Tunnel(WIFI)
    );
    assert_eq!(
        p.decide(&app("com.example.podcasts"), &cell_capped())
            .verdict,
        Verdict::Block
    );
}

#[test]
fn the_builtin_rule_avoids_a_capped_uplink_too() {
    let p = Policy::tunnel_everything(&["cell", "wifi"]);
    let s = {
        let mut s = status(true, true);
        s[0].capped = true;
        s
    };
    assert_eq!(p.decide(&app("x"), &s).verdict, Verdict::Tunnel(1));
}

#[test]
fn essential_is_shown_and_defaults_to_false() {
    let p = policy(CAPS);
    let essential = |i: usize| {
        matches!(
            p.rules()[i].route,
            Route::Tunnel {
                choice: Choice {
                    essential: true,
                    ..
                },
                ..
            }
        )
    };
    assert!(essential(0));
    assert!(!essential(1));
}

#[test]
fn essential_on_a_bypass_rule_is_refused_where_it_stands() {
    let e = error("version = 1\n[[rule]]\napp = \"x\"\naction = \"bypass\"\nessential = true\n");
    assert!(
        e.starts_with("policy.toml:5:13: `essential` has no meaning"),
        "{e}"
    );
}

#[test]
fn essential_that_is_not_a_boolean_is_refused_where_it_stands() {
    let e = error("version = 1\n[[rule]]\napp = \"x\"\nessential = \"yes\"\n");
    assert!(e.starts_with("policy.toml:4:13:"), "{e}");
}

const MEASURED_CAPS: &str = r#"version = 1

[[rule]]
app = "com.example.call"
uplinks = ["wifi", "cell"]
select = "lowest_rtt"
move_existing = true
essential = true

[[rule]]
app = "com.example.video"
uplinks = ["wifi", "cell"]
select = "lowest_rtt"

[[rule]]
app = "com.example.sync"
avoid_metered = true
"#;

#[test]
fn a_capped_uplink_is_no_candidate_for_a_measured_rule_unless_it_is_essential() {
    let p = policy(MEASURED_CAPS);
    let mut s = [measured(true, 80, 0.0, false), measured(true, 5, 0.0, true)];
    s[CELL].capped = true;
    let mut c = Recording {
        asked: Vec::new(),
        pick: Some(CELL),
    };
    let d = p.decide_with(&app("com.example.call"), &s, Placing::New, &mut c);
    assert_eq!(d.verdict, Verdict::Tunnel(CELL));
    let d = p.decide_with(&app("com.example.video"), &s, Placing::New, &mut c);
    assert_eq!(
        d.verdict,
        Verdict::Tunnel(WIFI),
        "a chooser's capped pick is ignored"
    );
    let asked: Vec<Vec<usize>> = c.asked.iter().map(|a| a.3.clone()).collect();
    assert_eq!(asked, vec![vec![WIFI, CELL], vec![WIFI]]);
}

#[test]
fn a_flow_kept_on_a_capped_uplink_by_a_measured_rule_is_blocked_when_nothing_else_is_up() {
    let p = policy(MEASURED_CAPS);
    let mut s = [
        measured(false, 80, 0.0, false),
        measured(true, 5, 0.0, true),
    ];
    s[CELL].capped = true;
    let d = p.decide_with(
        &app("com.example.video"),
        &s,
        Placing::Existing(CELL),
        &mut Immediate,
    );
    assert_eq!(d.verdict, Verdict::Block, "never held on the capped uplink");
    let d = p.decide_with(
        &app("com.example.call"),
        &s,
        Placing::Existing(CELL),
        &mut Immediate,
    );
    assert_eq!(d.verdict, Verdict::Tunnel(CELL));
}

#[test]
fn avoid_metered_falls_back_only_to_an_uplink_that_is_not_capped() {
    let p = policy(MEASURED_CAPS);
    let mut s = [
        measured(false, 80, 0.0, false),
        measured(true, 5, 0.0, true),
    ];
    s[CELL].capped = true;
    let d = p.decide(&app("com.example.sync"), &s);
    assert_eq!(d.verdict, Verdict::Block);
    s[CELL].capped = false;
    let d = p.decide(&app("com.example.sync"), &s);
    assert_eq!(d.verdict, Verdict::Tunnel(CELL));
}

// ---- redundant ----

#[test]
fn a_redundant_rule_names_the_first_other_uplink_of_its_list_that_is_up() {
    let p = policy(
        "version = 1\n[[rule]]\napp = \"call\"\nuplinks = [\"cell\", \"wifi\"]\nredundant = true\n[[rule]]\napp = \"web\"\nuplinks = [\"wifi\", \"cell\"]\n",
    );
    let both = status(true, true);
    assert_eq!(p.decide(&app("call"), &both).verdict, Verdict::Tunnel(CELL));
    assert_eq!(p.redundant_uplink(&app("call"), &both, CELL), Some(WIFI));
    assert_eq!(
        p.redundant_uplink(&app("call"), &status(false, true), CELL),
        None,
        "nothing else is up"
    );
    assert_eq!(p.redundant_uplink(&app("web"), &both, WIFI), None);
    assert_eq!(p.redundant_uplink(&app("other"), &both, WIFI), None);
    assert!(p.rules()[0].redundant && !p.rules()[1].redundant);
}

#[test]
fn a_redundant_rule_without_uplinks_pairs_any_two_that_are_up() {
    let p = policy("version = 1\n[[rule]]\napp = \"game\"\nredundant = true\n");
    assert_eq!(
        p.redundant_uplink(&app("game"), &status(true, true), WIFI),
        Some(CELL)
    );
}

#[test]
fn redundant_is_refused_on_a_bypass_rule_and_in_default() {
    assert_eq!(
        error("version = 1\n[[rule]]\napp = \"bank\"\naction = \"bypass\"\nredundant = true\n"),
        "policy.toml:5:13: `redundant` has no meaning with action = \"bypass\"; expected it only with action = \"tunnel\""
    );
    assert!(
        error("version = 1\n[default]\nredundant = true\n")
            .starts_with("policy.toml:3:1: unknown field `redundant`")
    );
    assert!(
        error("version = 1\n[[rule]]\napp = \"a\"\nredundant = \"yes\"\n")
            .starts_with("policy.toml:4:13:")
    );
}
