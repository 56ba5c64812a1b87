use super::*;

fn day(text: &str) -> Day {
    Day::parse(text).expect("a valid date")
}

#[test]
fn days_convert_to_and_from_dates() {
    assert_eq!(Day::from_ymd(1970, 1, 1), Some(Day(0)));
    assert_eq!(day("2000-03-01").to_string(), "2000-03-01");
    assert_eq!(day("2024-02-29").plus(1).to_string(), "2024-03-01");
    assert_eq!(day("2026-12-31").plus(1).to_string(), "2027-01-01");
    assert_eq!(Day::parse("2025-02-29"), None, "not a leap year");
    assert_eq!(Day::parse("2026-13-01"), None);
    assert_eq!(Day::parse("2026-1-01"), None);
    assert_eq!(Day::parse("yesterday"), None);
    for n in -800_000..800_000i64 {
        if n % 997 == 0 {
            let (y, m, d) = Day(n).ymd();
            assert_eq!(Day::from_ymd(y, m, d), Some(Day(n)));
        }
    }
}

#[test]
fn a_daily_period_is_the_day_itself() {
    assert_eq!(Period::Day.start(day("2026-12-01")), day("2026-12-01"));
    assert_eq!(Period::Day.next_start(day("2026-12-01")), day("2026-12-02"));
}

#[test]
fn a_monthly_period_starts_on_its_reset_day_this_month_or_last() {
    let p = Period::Month { reset_day: 15 };
    assert_eq!(p.start(day("2026-12-15")), day("2026-12-15"));
    assert_eq!(p.start(day("2026-12-31")), day("2026-12-15"));
    assert_eq!(p.start(day("2026-12-14")), day("2026-11-15"));
    assert_eq!(p.next_start(day("2026-12-14")), day("2026-12-15"));
    assert_eq!(p.next_start(day("2026-12-15")), day("2027-01-15"));
    // Across the year boundary.
    assert_eq!(p.start(day("2027-01-03")), day("2026-12-15"));
    let first = Period::Month { reset_day: 1 };
    assert_eq!(first.start(day("2024-02-29")), day("2024-02-01"));
    assert_eq!(first.next_start(day("2024-02-29")), day("2024-03-01"));
    let late = Period::Month { reset_day: 28 };
    assert_eq!(late.start(day("2025-03-01")), day("2025-02-28"));
}

#[test]
fn caps_parse_in_decimal_and_binary_units_per_day_or_month() {
    assert_eq!(parse_cap("2 GiB per month"), Ok((2 << 30, true)));
    assert_eq!(parse_cap("500 MB per day"), Ok((500_000_000, false)));
    assert_eq!(parse_cap("1.5 KiB per day"), Ok((1536, false)));
    assert_eq!(parse_cap("2MB per day"), Ok((2_000_000, false)));
    assert_eq!(parse_cap("100 B per month"), Ok((100, true)));
    for bad in [
        "2 GiB",
        "2 GiB per week",
        "2 gib per month",
        "-1 MB per day",
        "0 MB per day",
        "lots per day",
        "",
        "1e3 MB per day",
    ] {
        let e = parse_cap(bad).expect_err(bad);
        assert!(e.to_string().contains("expected"), "{e}");
    }
}

#[test]
fn the_ledger_keeps_bytes_per_day_app_and_uplink_and_sums_from_a_day_on() {
    let mut l = Ledger::default();
    l.add(day("2026-11-30"), "a", "cell", Bytes { tx: 1, rx: 10 });
    l.add(day("2026-12-01"), "a", "cell", Bytes { tx: 2, rx: 20 });
    l.add(day("2026-12-01"), "a", "wifi", Bytes { tx: 3, rx: 30 });
    l.add(day("2026-12-01"), "b", "cell", Bytes { tx: 4, rx: 40 });
    assert_eq!(
        l.uplink_total("cell", day("2026-12-01"), day("2026-12-01")),
        66
    );
    assert_eq!(
        l.uplink_total("cell", day("2026-11-01"), day("2026-12-01")),
        77
    );
    let sums = l.sum(day("2026-12-01"), day("2026-12-31"), Some("a"));
    assert_eq!(sums.len(), 1);
    assert_eq!(sums["a"]["cell"], Bytes { tx: 2, rx: 20 });
    assert_eq!(sums["a"]["wifi"], Bytes { tx: 3, rx: 30 });
}

#[test]
fn the_ledger_keeps_at_most_its_days_and_apps() {
    let mut l = Ledger::default();
    let first = day("2020-01-01");
    for n in 0..(MAX_DAYS as i64 + 10) {
        l.add(first.plus(n), "a", "wifi", Bytes { tx: 1, rx: 0 });
    }
    assert_eq!(l.days.len(), MAX_DAYS);
    assert_eq!(l.first_day(), Some(first.plus(10)));
    // A day older than every kept one is not booked.
    l.add(first, "a", "wifi", Bytes { tx: 1, rx: 0 });
    assert_eq!(l.first_day(), Some(first.plus(10)));

    let mut l = Ledger::default();
    let d = day("2026-12-01");
    for n in 0..(MAX_APPS_PER_DAY + 5) {
        l.add(d, &format!("app{n}"), "wifi", Bytes { tx: 1, rx: 0 });
    }
    let sums = l.sum(d, d, None);
    assert_eq!(sums.len(), MAX_APPS_PER_DAY + 1);
    assert_eq!(sums[OTHER_APPS]["wifi"].tx, 5);
}

#[test]
fn the_saved_file_reads_back_the_same_and_bad_days_or_versions_are_refused() {
    let mut l = Ledger::default();
    l.add(
        day("2026-12-01"),
        "com.example.a",
        "cell",
        Bytes { tx: 5, rx: 7 },
    );
    l.add(
        day("2026-11-02"),
        "(unknown)",
        "wifi",
        Bytes { tx: 1, rx: 2 },
    );
    let file = l.to_file();
    assert_eq!(file.version, FILE_VERSION);
    assert!(file.days.contains_key("2026-12-01"));
    assert_eq!(Ledger::from_file(file.clone()), Ok(l));
    let mut bad = file.clone();
    bad.days.insert("yesterday".into(), DayBook::new());
    assert_eq!(
        Ledger::from_file(bad),
        Err(UsageFileError::Day("yesterday".into()))
    );
    let mut future = file;
    future.version = 2;
    assert_eq!(Ledger::from_file(future), Err(UsageFileError::Version(2)));
}

// ---- the meter on a flow table ----

use upmt_paft::{AppId, Dir, NewFlow};

fn t(secs: u64) -> Instant {
    Instant::from_duration(Duration::from_secs(1000 + secs))
}

/// 2026-12-01 10:00 UTC.
const MORNING: i64 = 1_796_119_200;

fn key(port: u16) -> FlowKey {
    FlowKey {
        proto: 6,
        src: "10.9.0.2".parse().unwrap(),
        sport: port,
        dst: "198.51.100.1".parse().unwrap(),
        dport: 443,
    }
}

fn uplink(i: usize) -> upmt_paft::UplinkId {
    Uplinks::id_for_index(i).unwrap()
}

fn table_with(app: &str, port: u16, on: usize) -> Paft {
    let mut p = Paft::new(upmt_paft::Config::default());
    p.insert(
        key(port),
        NewFlow {
            app: AppId::from(app),
            uid: None,
            uplink: uplink(on),
            pinned: false,
        },
        t(0).as_duration(),
    )
    .unwrap();
    p
}

fn carry(p: &mut Paft, port: u16, dir: Dir, packets: usize, len: usize, at: Instant) {
    for _ in 0..packets {
        let k = match dir {
            Dir::Orig => key(port),
            Dir::Reply => key(port),
        };
        p.touch(&k, dir, len, 0, None, at.as_duration()).unwrap();
    }
}

fn meter(caps: Vec<Option<Cap>>) -> Meter {
    let mut m = Meter::new(vec!["wifi".into(), "cell".into()], caps, t(0));
    m.set_clock(MORNING, 0, t(0));
    m
}

#[test]
fn harvests_book_each_flows_new_bytes_with_the_tunnel_overhead_once() {
    let mut m = meter(vec![None, None]);
    let mut p = table_with("com.example.a", 1000, 1);
    carry(&mut p, 1000, Dir::Orig, 2, 100, t(1));
    carry(&mut p, 1000, Dir::Reply, 3, 1000, t(1));
    m.harvest(&p, t(1));
    m.harvest(&p, t(2));
    let sums = m.ledger().sum(day("2026-12-01"), day("2026-12-01"), None);
    assert_eq!(
        sums["com.example.a"]["cell"],
        Bytes {
            tx: 2 * (100 + OVERHEAD_V4),
            rx: 3 * (1000 + OVERHEAD_V4)
        }
    );
    // Bytes of a flow that expired between harvests are booked from its final counters.
    carry(&mut p, 1000, Dir::Reply, 1, 500, t(3));
    let mut gone = Vec::new();
    p.expire(t(100_000).as_duration(), &mut gone);
    assert_eq!(gone.len(), 1);
    m.harvest_removed(&gone, t(3));
    let sums = m.ledger().sum(day("2026-12-01"), day("2026-12-01"), None);
    assert_eq!(
        sums["com.example.a"]["cell"].rx,
        3 * (1000 + OVERHEAD_V4) + 500 + OVERHEAD_V4
    );
}

#[test]
fn an_idle_meter_sets_no_timer_and_traffic_sets_one_harvest_later() {
    let mut m = meter(vec![None, None]);
    assert_eq!(m.deadline(), None);
    let p = table_with("a", 1, 0);
    m.note(0, 100);
    m.harvest(&p, t(5));
    m.note(0, 100);
    assert_eq!(m.deadline(), Some(t(5) + HARVEST_INTERVAL));
}

#[test]
fn a_save_is_offered_only_after_new_bytes_and_a_minute() {
    let mut m = meter(vec![None, None]);
    let mut p = table_with("a", 1, 0);
    assert_eq!(m.take_save(t(120), false), None, "nothing new");
    carry(&mut p, 1, Dir::Orig, 1, 100, t(1));
    m.harvest(&p, t(1));
    assert_eq!(m.deadline(), Some(t(0) + SAVE_INTERVAL));
    assert_eq!(m.take_save(t(30), false), None, "too soon");
    assert!(m.take_save(t(60), false).is_some());
    assert_eq!(m.take_save(t(200), false), None, "saved already");
    assert!(m.take_save(t(200), true).is_some(), "at exit");
}

fn cell_cap(limit: u64) -> Vec<Option<Cap>> {
    vec![
        None,
        Some(Cap {
            limit,
            period: Period::Day,
        }),
    ]
}

#[test]
fn a_cap_is_reached_at_the_packet_that_uses_up_what_is_left() {
    let mut m = meter(cell_cap(10_000));
    let mut p = table_with("a", 1, 1);
    carry(&mut p, 1, Dir::Reply, 5, 1000, t(1));
    for _ in 0..5 {
        m.note(1, 1000);
    }
    assert!(!m.on_timeout(&p, t(1)));
    assert!(!m.is_capped(1));
    assert_eq!(m.poll_change(), None);
    // 4 more packets leave 10_000 - 9 * 1060 = 460 bytes: not yet.
    for _ in 0..4 {
        m.note(1, 1000);
    }
    assert_eq!(m.deadline(), Some(t(1) + HARVEST_INTERVAL));
    // The tenth goes past the cap: due at once.
    carry(&mut p, 1, Dir::Reply, 5, 1000, t(1));
    m.note(1, 1000);
    assert!(m.deadline().is_some_and(|at| at <= t(1)));
    assert!(m.on_timeout(&p, t(1)));
    assert!(m.is_capped(1));
    assert!(!m.is_capped(0));
    assert!(matches!(
        m.poll_change(),
        Some(CapChange::Reached { ref uplink, limit: 10_000, resets, .. })
            if uplink == "cell" && resets == day("2026-12-02")
    ));
}

#[test]
fn a_reached_cap_is_lifted_when_the_next_period_begins() {
    let mut m = meter(cell_cap(1000));
    let mut p = table_with("a", 1, 1);
    carry(&mut p, 1, Dir::Reply, 1, 2000, t(1));
    m.note(1, 2000);
    assert!(m.on_timeout(&p, t(1)));
    assert!(m.is_capped(1));
    let _ = m.poll_change();
    let _ = m.take_save(t(1), true);
    // 10:00 UTC: the next day starts in 14 hours; the timer is set for it.
    let midnight = t(0) + Duration::from_secs(14 * 3600);
    assert_eq!(m.deadline(), Some(midnight));
    assert!(!m.on_timeout(&p, t(14 * 3600 - 1)));
    assert!(m.on_timeout(&p, midnight));
    assert!(!m.is_capped(1));
    assert_eq!(
        m.poll_change(),
        Some(CapChange::Restored {
            uplink: "cell".into()
        })
    );
}

#[test]
fn the_local_offset_moves_the_day_boundary() {
    let mut m = Meter::new(vec!["wifi".into()], vec![None], t(0));
    // 2026-12-01 23:30 UTC is already 2026-12-02 at UTC+1.
    m.set_clock(MORNING + 13 * 3600 + 1800, 3600, t(0));
    assert_eq!(m.today(t(0)), Some(day("2026-12-02")));
    m.set_clock(MORNING + 13 * 3600 + 1800, 0, t(0));
    assert_eq!(m.today(t(0)), Some(day("2026-12-01")));
    assert_eq!(m.today(t(1800)), Some(day("2026-12-02")));
}

#[test]
fn usage_loaded_at_start_over_the_cap_caps_the_uplink_at_once() {
    let mut m = Meter::new(vec!["wifi".into(), "cell".into()], cell_cap(1000), t(0));
    let mut l = Ledger::default();
    l.add(day("2026-12-01"), "a", "cell", Bytes { tx: 0, rx: 5000 });
    m.load(l.clone(), t(0));
    assert!(!m.is_capped(1), "no date yet");
    m.set_clock(MORNING, 0, t(0));
    assert!(m.is_capped(1));
    // Yesterday's usage does not count against today's cap.
    let mut m = Meter::new(vec!["wifi".into(), "cell".into()], cell_cap(1000), t(0));
    m.load(l, t(0));
    m.set_clock(MORNING + 86_400, 0, t(0));
    assert!(!m.is_capped(1));
}

#[test]
fn the_reply_shows_apps_uplinks_totals_and_what_is_left_of_a_cap() {
    let mut m = meter(cell_cap(1_000_000));
    let mut l = Ledger::default();
    l.add(day("2026-11-30"), "a", "cell", Bytes { tx: 1, rx: 1 });
    l.add(day("2026-12-01"), "a", "cell", Bytes { tx: 100, rx: 900 });
    l.add(day("2026-12-01"), "b", "wifi", Bytes { tx: 5, rx: 5 });
    m.load(l, t(0));
    let r = m.reply(None, None, t(0)).unwrap();
    assert_eq!(
        (r.since.as_str(), r.until.as_str()),
        ("2026-11-30", "2026-12-01")
    );
    assert_eq!((r.tx_bytes, r.rx_bytes), (106, 906));
    assert_eq!(r.apps.len(), 2);
    assert_eq!(r.uplinks[0].uplink, "wifi");
    assert_eq!(r.uplinks[0].cap, None);
    let cap = r.uplinks[1].cap.clone().expect("cell has a cap");
    assert_eq!(cap.used_bytes, 1000, "today only");
    assert_eq!(cap.left_bytes, 999_000);
    assert_eq!(cap.resets, "2026-12-02");
    assert!(!cap.reached);
    let only_a_today = m.reply(Some("a"), Some(day("2026-12-01")), t(0)).unwrap();
    assert_eq!(only_a_today.apps.len(), 1);
    assert_eq!((only_a_today.tx_bytes, only_a_today.rx_bytes), (100, 900));
}
