use proptest::prelude::{prop_assert, prop_assert_eq, proptest};

use super::*;

const WIFI: usize = 0;
const CELL: usize = 1;
const TICK: Duration = SELECT_INTERVAL;

fn ms(m: u64) -> Option<Duration> {
    Some(Duration::from_millis(m))
}

fn two(wifi_rtt: Option<Duration>, cell_rtt: Option<Duration>) -> [UplinkStatus; 2] {
    [
        UplinkStatus {
            up: true,
            rtt: wifi_rtt,
            loss: wifi_rtt.map(|_| 0.0),
            metered: false,
            capped: false,
        },
        UplinkStatus {
            up: true,
            rtt: cell_rtt,
            loss: cell_rtt.map(|_| 0.0),
            metered: false,
            capped: false,
        },
    ]
}

fn lossy(wifi: f32, cell: f32) -> [UplinkStatus; 2] {
    let mut s = two(ms(20), ms(20));
    s[0].loss = Some(wifi);
    s[1].loss = Some(cell);
    s
}

/// Observes `statuses` every tick from `from` for `ticks`; returns the choice after each.
fn run(
    h: &mut Hysteresis,
    strategy: Strategy,
    statuses: &[UplinkStatus],
    from: Duration,
    ticks: u32,
) -> Vec<Option<usize>> {
    (0..ticks)
        .map(|k| {
            h.observe(
                strategy,
                &Candidates::new(&[], statuses, None),
                from + TICK * k,
            )
        })
        .collect()
}

#[test]
fn the_first_choice_is_the_best_measured_candidate() {
    let mut h = Hysteresis::default();
    let c = two(ms(80), ms(30));
    assert_eq!(
        h.observe(Strategy::LowestRtt, &Candidates::new(&[], &c, None), TICK),
        Some(CELL)
    );
}

#[test]
fn paths_that_measure_alike_keep_the_rules_order() {
    let mut h = Hysteresis::default();
    let alike = two(
        Some(Duration::from_micros(500)),
        Some(Duration::from_micros(300)),
    );
    let choices = run(&mut h, Strategy::LowestRtt, &alike, TICK, 20);
    assert!(choices.iter().all(|&c| c == Some(WIFI)), "{choices:?}");
}

#[test]
fn an_unmeasured_uplink_never_wins() {
    let mut h = Hysteresis::default();
    let c = two(ms(80), None);
    let choices = run(&mut h, Strategy::LowestRtt, &c, TICK, 40);
    assert!(choices.iter().all(|&c| c == Some(WIFI)), "{choices:?}");
}

#[test]
fn a_sustained_rtt_difference_switches_after_the_hold_and_not_before() {
    let mut h = Hysteresis::default();
    run(&mut h, Strategy::LowestRtt, &two(ms(30), ms(40)), TICK, 4);
    assert_eq!(h.current(), Some(WIFI));
    let start = TICK * 5;
    let choices = run(&mut h, Strategy::LowestRtt, &two(ms(90), ms(40)), start, 20);
    let first_cell = choices.iter().position(|&c| c == Some(CELL));
    let switched_at = TICK * u32::try_from(first_cell.expect("switched")).unwrap_or(0);
    assert_eq!(switched_at, RTT_HOLD, "switches once the hold has passed");
    assert!(
        choices[first_cell.unwrap_or(0)..]
            .iter()
            .all(|&c| c == Some(CELL)),
        "{choices:?}"
    );
}

#[test]
fn a_difference_shorter_than_the_hold_does_not_switch() {
    let mut h = Hysteresis::default();
    run(&mut h, Strategy::LowestRtt, &two(ms(30), ms(40)), TICK, 2);
    let short = RTT_HOLD.as_millis() / TICK.as_millis() - 1;
    run(
        &mut h,
        Strategy::LowestRtt,
        &two(ms(90), ms(40)),
        TICK * 3,
        u32::try_from(short).unwrap_or(0),
    );
    let after = run(
        &mut h,
        Strategy::LowestRtt,
        &two(ms(45), ms(40)),
        TICK * 10,
        40,
    );
    assert!(after.iter().all(|&c| c == Some(WIFI)), "{after:?}");
}

#[test]
fn rtt_margins_are_both_relative_and_absolute() {
    let by = |cur, other| {
        beats(
            Strategy::LowestRtt,
            &two(ms(other), None)[0],
            &two(ms(cur), None)[0],
        )
    };
    assert!(by(100, 80), "20 % and 20 ms");
    assert!(!by(100, 81), "19 %");
    assert!(!by(40, 31), "22 % but 9 ms");
    assert!(by(50, 40), "20 % and 10 ms");
}

#[test]
fn loss_switches_on_two_points_held_three_seconds() {
    let mut h = Hysteresis::default();
    run(&mut h, Strategy::LowestLoss, &lossy(0.0, 0.0), TICK, 2);
    assert_eq!(h.current(), Some(WIFI));
    let small = run(
        &mut h,
        Strategy::LowestLoss,
        &lossy(0.015, 0.0),
        TICK * 3,
        30,
    );
    assert!(
        small.iter().all(|&c| c == Some(WIFI)),
        "1.5 points: {small:?}"
    );
    let big = run(
        &mut h,
        Strategy::LowestLoss,
        &lossy(0.05, 0.0),
        TICK * 33,
        30,
    );
    let first_cell = big.iter().position(|&c| c == Some(CELL)).expect("switched");
    assert_eq!(TICK * u32::try_from(first_cell).unwrap_or(0), LOSS_HOLD);
}

#[test]
fn a_choice_that_stops_being_a_candidate_is_replaced_at_once() {
    let mut h = Hysteresis::default();
    run(&mut h, Strategy::LowestRtt, &two(ms(30), ms(40)), TICK, 2);
    let mut wifi_down = two(ms(30), ms(40));
    wifi_down[0].up = false;
    assert_eq!(
        h.observe(
            Strategy::LowestRtt,
            &Candidates::new(&[], &wifi_down, None),
            TICK * 3
        ),
        Some(CELL)
    );
}

#[test]
fn smooth_wrr_interleaves_by_weight() {
    let mut w = Wrr::default();
    let picks: Vec<usize> = (0..6)
        .filter_map(|_| w.pick([(WIFI, 2), (CELL, 1)].into_iter()))
        .collect();
    assert_eq!(picks, vec![WIFI, CELL, WIFI, WIFI, CELL, WIFI]);
}

#[test]
fn capacity_counts_equally_until_every_candidate_is_measured_then_by_peak() {
    let mut c = Capacity::default();
    let s = two(ms(20), ms(20));
    let cands = Candidates::new(&[], &s, None);
    c.tick(Duration::ZERO);
    c.received(WIFI, 1_000_000);
    c.tick(Duration::from_millis(500));
    let w: Vec<(usize, u64)> = c.weights(&cands).collect();
    assert_eq!(w, vec![(WIFI, 1), (CELL, 1)], "cell has no measurement yet");
    c.received(WIFI, 1_000_000);
    c.sent(CELL, 500_000);
    c.tick(Duration::from_millis(1000));
    let w: Vec<(usize, u64)> = c.weights(&cands).collect();
    assert_eq!(w, vec![(WIFI, 2000), (CELL, 1000)]);
}

#[test]
fn a_spreading_rule_splits_new_flows_by_measured_capacity() {
    let policy = Policy::parse(
        "version = 1\n[default]\nspread = true\n",
        "p",
        &["wifi", "cell"],
    )
    .expect("valid");
    let s = two(ms(20), ms(20));
    let mut sel = Selections::new();
    let mut switches = Vec::new();
    sel.tick(&policy, &s, Duration::ZERO, &mut switches);
    sel.capacity_mut().received(WIFI, 1_250_000);
    sel.capacity_mut().received(CELL, 625_000);
    sel.tick(&policy, &s, Duration::from_secs(1), &mut switches);
    let who = upmt_policy::AppIdentity {
        name: Some("dl"),
        uid: None,
    };
    let mut on = [0; 2];
    for _ in 0..9 {
        if let upmt_policy::Verdict::Tunnel(i) =
            policy.decide_with(&who, &s, Placing::New, &mut sel).verdict
        {
            on[i] += 1;
        }
    }
    assert_eq!(on, [6, 3]);
    assert!(switches.is_empty(), "spreading is not a measured choice");
}

#[test]
fn a_tick_reports_a_measured_rule_switching_once() {
    let policy = Policy::parse(
        "version = 1\n[[rule]]\napp = \"call\"\nselect = \"lowest_rtt\"\nmove_existing = true\n",
        "p",
        &["wifi", "cell"],
    )
    .expect("valid");
    let mut sel = Selections::new();
    let mut switches = Vec::new();
    let mut now = Duration::ZERO;
    for _ in 0..4 {
        sel.tick(&policy, &two(ms(20), ms(30)), now, &mut switches);
        now += TICK;
    }
    assert_eq!(switches.len(), 1, "the first choice: {switches:?}");
    assert_eq!(switches[0].to, WIFI);
    switches.clear();
    for _ in 0..40 {
        sel.tick(&policy, &two(ms(120), ms(30)), now, &mut switches);
        now += TICK;
    }
    assert_eq!(
        switches,
        vec![Switch {
            rule: Matched::Rule(0),
            from: Some(WIFI),
            to: CELL,
            move_existing: true
        }]
    );
    assert_eq!(sel.deadline(&policy), None, "nothing moved: no wake-ups");
    sel.capacity_mut().received(WIFI, 1500);
    assert_eq!(sel.deadline(&policy), Some(now - TICK + SELECT_INTERVAL));
    sel.tick(&policy, &two(ms(120), ms(30)), now, &mut switches);
    assert_eq!(
        sel.deadline(&policy),
        Some(now + SELECT_INTERVAL),
        "one more look after data moved"
    );
}

proptest! {
    /// Noise under the absolute margin never moves the choice.
    #[test]
    fn rtt_noise_within_the_margin_never_flips(
        base in 5u64..300,
        noise in proptest::collection::vec((0u64..=8, 0u64..=8), 1..200),
    ) {
        let mut h = Hysteresis::default();
        let first = h.observe(
            Strategy::LowestRtt,
            &Candidates::new(&[], &two(ms(base + 4), ms(base + 4)), None),
            Duration::ZERO,
        );
        prop_assert_eq!(first, Some(WIFI));
        for (k, (a, b)) in noise.into_iter().enumerate() {
            let s = two(ms(base + a), ms(base + b));
            let now = TICK * (u32::try_from(k).unwrap_or(0) + 1);
            let c = h.observe(Strategy::LowestRtt, &Candidates::new(&[], &s, None), now);
            prop_assert_eq!(c, Some(WIFI));
        }
    }

    /// A difference past both margins that lasts switches exactly once, and never back
    /// while it lasts.
    #[test]
    fn a_sustained_difference_switches_exactly_once_and_never_back(
        quiet in proptest::collection::vec((0u64..=3, 0u64..=3), 0..40),
        slow in proptest::collection::vec((60u64..200, 5u64..=25), 9..120),
    ) {
        let mut h = Hysteresis::default();
        let mut choices = Vec::new();
        let mut now = Duration::ZERO;
        let equal = two(ms(60), ms(60));
        choices.push(h.observe(Strategy::LowestRtt, &Candidates::new(&[], &equal, None), now));
        for (a, b) in quiet {
            now += TICK;
            let s = two(ms(60 + a), ms(60 + b));
            choices.push(h.observe(Strategy::LowestRtt, &Candidates::new(&[], &s, None), now));
        }
        for &(wifi, cell) in &slow {
            now += TICK;
            let s = two(ms(wifi), ms(cell));
            choices.push(h.observe(Strategy::LowestRtt, &Candidates::new(&[], &s, None), now));
        }
        let flips = choices.windows(2).filter(|w| w[0] != w[1]).count();
        let needed = usize::try_from(RTT_HOLD.as_millis() / TICK.as_millis()).unwrap_or(0) + 1;
        if slow.len() >= needed {
            prop_assert_eq!(flips, 1, "{:?}", choices);
            prop_assert_eq!(choices.last().copied().flatten(), Some(CELL));
        } else {
            prop_assert_eq!(flips, 0, "{:?}", choices);
        }
    }

    /// Over whole rounds, smooth WRR gives each candidate exactly its weight.
    #[test]
    fn wrr_gives_each_candidate_its_share(
        weights in proptest::collection::vec(1u64..20, 1..=MAX_UPLINKS),
        rounds in 1u64..5,
    ) {
        let mut w = Wrr::default();
        let total: u64 = weights.iter().sum();
        let mut got = vec![0u64; weights.len()];
        for _ in 0..total * rounds {
            let i = w.pick(weights.iter().copied().enumerate());
            prop_assert!(i.is_some());
            got[i.unwrap_or(0)] += 1;
        }
        let want: Vec<u64> = weights.iter().map(|w| w * rounds).collect();
        prop_assert_eq!(got, want);
    }
}
