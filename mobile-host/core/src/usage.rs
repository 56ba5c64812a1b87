//! Data usage that outlives flows, and data caps.
//!
//! Flows count their bytes in the PAFT and vanish when they expire. The [`Meter`] takes what
//! they carried since it last looked (a *harvest*) into a [`Ledger`] of bytes per day, per app,
//! per uplink, so usage survives the flows, and the driver saves the ledger to a file and loads
//! it at start, so it survives the daemon.
//!
//! What is counted is what the carrier sees: every tunnelled packet of an app's flows with the
//! tunnel's overhead (outer IP and UDP headers, the upmt header and tag), in both directions.
//! Probes, keepalives and handshakes belong to no app and are not counted.
//!
//! Days are the host's local calendar days: the driver hands in the wall clock and its UTC
//! offset ([`Meter::set_clock`]); the meter never reads a clock.
//!
//! Bounds: the ledger keeps [`MAX_DAYS`] days (the oldest go first) and at most
//! [`MAX_APPS_PER_DAY`] apps a day; past that a day's further apps are counted together under
//! [`OTHER_APPS`].
//!
//! Caps: an uplink's [`Cap`] is a byte limit per day or per month (starting on a reset day).
//! Usage counted against it is the uplink's total over all apps in the current period. When it
//! is reached the uplink is *capped*: the policy keeps it for `essential` rules only, until the
//! next period. The meter checks a cap at each harvest and, between harvests, counts each
//! packet's bytes against what is left (one addition and a comparison), so a cap reached in the
//! middle of a download is seen at that packet, not a second later.
//!
//! Timers are lazy: a harvest is due [`HARVEST_INTERVAL`] after traffic (never while idle), a
//! save [`SAVE_INTERVAL`] after the last one when something new was counted, a period boundary
//! only while an uplink is capped.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use upmt_paft::{Entry, FlowId, FlowKey, MAX_UPLINKS, Paft, UplinkCounters};
use upmt_proto::time::Instant;

use crate::api::{AppUsage, CapStatus, UplinkBytes, UplinkUsage, UsageReply};
use crate::uplinks::Uplinks;

/// Days kept in the ledger; older days are dropped.
pub const MAX_DAYS: usize = 400;
/// Apps counted apart in one day; further apps that day are counted under [`OTHER_APPS`].
pub const MAX_APPS_PER_DAY: usize = 1024;
/// The name under which apps past [`MAX_APPS_PER_DAY`] are counted.
pub const OTHER_APPS: &str = "(other)";
/// The name under which flows whose owner is unknown are counted.
pub const UNKNOWN_APP: &str = "(unknown)";
/// Live flows' bytes are taken into the ledger this long after traffic (not while idle).
pub const HARVEST_INTERVAL: Duration = Duration::from_secs(1);
/// The ledger is handed to the driver to save at most this often, and only when it changed.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(60);
/// The format version of [`UsageFile`].
pub const FILE_VERSION: u32 = 1;
/// Outer IPv4 + UDP headers, the upmt header and the AEAD tag: what a tunnelled packet costs
/// on the wire besides the app's own packet.
pub const OVERHEAD_V4: u64 = 20 + 8 + (upmt_proto::HEADER_LEN + upmt_proto::TAG_LEN) as u64;
/// [`OVERHEAD_V4`] with an IPv6 outer header.
pub const OVERHEAD_V6: u64 = OVERHEAD_V4 + 20;

const SECS_PER_DAY: i64 = 86_400;

/// A calendar day: days since 1970-01-01.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub i64);

impl Day {
    /// The day of a date, if the date exists.
    pub fn from_ymd(year: i64, month: u32, day: u32) -> Option<Day> {
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
            return None;
        }
        // Howard Hinnant's days_from_civil.
        let y = if month <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        Some(Day(era * 146_097 + doe - 719_468))
    }

    /// Year, month (1-12) and day of month (1-31).
    pub fn ymd(self) -> (i64, u32, u32) {
        // Howard Hinnant's civil_from_days.
        let z = self.0 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let y = yoe + era * 400 + i64::from(m <= 2);
        (y, m, d)
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(text: &str) -> Option<Day> {
        let mut parts = text.splitn(3, '-');
        let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
        if y.len() != 4 || m.len() != 2 || d.len() != 2 {
            return None;
        }
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if !(all_digits(y) && all_digits(m) && all_digits(d)) {
            return None;
        }
        Day::from_ymd(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)
    }

    /// The day `n` days later.
    pub fn plus(self, n: i64) -> Day {
        Day(self.0 + n)
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.ymd();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// How long a cap's budget lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    /// A calendar day.
    Day,
    /// A month starting on `reset_day` (1-28, so it exists in every month).
    Month {
        /// Day of the month the period starts on.
        reset_day: u8,
    },
}

impl Period {
    /// The first day of the period `today` is in.
    pub fn start(self, today: Day) -> Day {
        match self {
            Period::Day => today,
            Period::Month { reset_day } => {
                let (y, m, d) = today.ymd();
                let r = u32::from(reset_day.clamp(1, 28));
                let (y, m) = if d >= r {
                    (y, m)
                } else if m == 1 {
                    (y - 1, 12)
                } else {
                    (y, m - 1)
                };
                Day::from_ymd(y, m, r).unwrap_or(today)
            }
        }
    }

    /// The first day of the next period.
    pub fn next_start(self, today: Day) -> Day {
        match self {
            Period::Day => today.plus(1),
            Period::Month { reset_day } => {
                let (y, m, _) = self.start(today).ymd();
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                Day::from_ymd(y, m, u32::from(reset_day.clamp(1, 28))).unwrap_or(today.plus(1))
            }
        }
    }

    /// "day" or "month", as replies show it.
    pub fn name(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month { .. } => "month",
        }
    }
}

/// An uplink's data cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    /// Bytes allowed per period.
    pub limit: u64,
    /// The period.
    pub period: Period,
}

/// Why a cap text was refused; the message says what was expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid cap {text:?}: expected \"<number> <unit> per day\" or \"... per month\", units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB (e.g. \"2 GiB per month\")"
)]
pub struct CapError {
    /// The text as written.
    pub text: String,
}

/// Parses `"2 GiB per month"` / `"500 MB per day"` into the limit in bytes and whether the
/// period is monthly (the reset day is a key of its own).
pub fn parse_cap(text: &str) -> Result<(u64, bool), CapError> {
    let err = || CapError {
        text: text.to_owned(),
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    let (number, unit, per) = match words.as_slice() {
        [n, u, "per", p] => ((*n).to_owned(), *u, *p),
        // "2GiB per month"
        [nu, "per", p] => {
            let split = nu
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(err)?;
            (nu[..split].to_owned(), &nu[split..], *p)
        }
        _ => return Err(err()),
    };
    let monthly = match per {
        "day" => false,
        "month" => true,
        _ => return Err(err()),
    };
    let scale: u64 = match unit {
        "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return Err(err()),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(err());
    }
    let value: f64 = number.parse().map_err(|_| err())?;
    let bytes = value * scale as f64;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(err());
    }
    Ok((bytes.round() as u64, monthly))
}

/// Bytes sent and received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bytes {
    /// Sent (toward the anchor).
    pub tx: u64,
    /// Received.
    pub rx: u64,
}

impl Bytes {
    fn add(&mut self, other: Bytes) {
        self.tx = self.tx.saturating_add(other.tx);
        self.rx = self.rx.saturating_add(other.rx);
    }

    fn total(self) -> u64 {
        self.tx.saturating_add(self.rx)
    }
}

/// App name -> uplink name -> bytes, for one day.
type DayBook = BTreeMap<String, BTreeMap<String, Bytes>>;

/// Bytes per day, per app, per uplink. Uplinks are kept by name, so a config that reorders
/// them keeps its history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    days: BTreeMap<Day, DayBook>,
}

/// The ledger as it is saved: `{"version":1,"days":{"2026-12-01":{"app":{"wifi":{"tx":1,"rx":2}}}}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageFile {
    /// [`FILE_VERSION`].
    pub version: u32,
    /// Date (`YYYY-MM-DD`) -> app -> uplink -> bytes.
    pub days: BTreeMap<String, DayBook>,
}

/// A usage file that cannot be taken in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UsageFileError {
    /// A version this build does not read.
    #[error("unsupported usage file version {0}; expected {FILE_VERSION}")]
    Version(u32),
    /// A day that is not a date.
    #[error("invalid day {0:?}: expected YYYY-MM-DD")]
    Day(String),
}

impl Ledger {
    /// Adds `bytes` for `app` on `uplink` on `day`, within the bounds of the module docs.
    pub fn add(&mut self, day: Day, app: &str, uplink: &str, bytes: Bytes) {
        if bytes == Bytes::default() {
            return;
        }
        if let std::collections::btree_map::Entry::Vacant(e) = self.days.entry(day) {
            e.insert(DayBook::new());
            while self.days.len() > MAX_DAYS {
                self.days.pop_first();
            }
        }
        let Some(book) = self.days.get_mut(&day) else {
            // The new day was older than every kept one and was dropped at once.
            return;
        };
        let app = if book.contains_key(app) || book.len() < MAX_APPS_PER_DAY {
            app
        } else {
            OTHER_APPS
        };
        let uplinks = match book.get_mut(app) {
            Some(u) => u,
            None => book.entry(app.to_owned()).or_default(),
        };
        match uplinks.get_mut(uplink) {
            Some(b) => b.add(bytes),
            None => {
                uplinks.insert(uplink.to_owned(), bytes);
            }
        }
    }

    /// Total bytes on `uplink` (all apps) from `from` through `to`.
    pub fn uplink_total(&self, uplink: &str, from: Day, to: Day) -> u64 {
        self.days
            .range(from..=to)
            .flat_map(|(_, book)| book.values())
            .filter_map(|u| u.get(uplink))
            .fold(0u64, |sum, b| sum.saturating_add(b.total()))
    }

    /// The first day with anything counted.
    pub fn first_day(&self) -> Option<Day> {
        self.days.keys().next().copied()
    }

    /// Sums per app and per uplink from `from` through `to`, for one app or all.
    pub fn sum(
        &self,
        from: Day,
        to: Day,
        app: Option<&str>,
    ) -> BTreeMap<&str, BTreeMap<&str, Bytes>> {
        let mut out: BTreeMap<&str, BTreeMap<&str, Bytes>> = BTreeMap::new();
        for book in self.days.range(from..=to).map(|(_, b)| b) {
            for (name, uplinks) in book {
                if app.is_some_and(|a| a != name) {
                    continue;
                }
                let per = out.entry(name.as_str()).or_default();
                for (uplink, b) in uplinks {
                    per.entry(uplink.as_str()).or_default().add(*b);
                }
            }
        }
        out
    }

    /// The ledger as saved.
    pub fn to_file(&self) -> UsageFile {
        UsageFile {
            version: FILE_VERSION,
            days: self
                .days
                .iter()
                .map(|(d, book)| (d.to_string(), book.clone()))
                .collect(),
        }
    }

    /// A ledger from a saved file (trimmed to the bounds).
    pub fn from_file(file: UsageFile) -> Result<Ledger, UsageFileError> {
        if file.version != FILE_VERSION {
            return Err(UsageFileError::Version(file.version));
        }
        let mut ledger = Ledger::default();
        for (day, book) in file.days {
            let d = Day::parse(&day).ok_or(UsageFileError::Day(day))?;
            for (app, uplinks) in book {
                for (uplink, bytes) in uplinks {
                    ledger.add(d, &app, &uplink, bytes);
                }
            }
        }
        Ok(ledger)
    }
}

/// An uplink's cap reached or restored, for the host's events and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CapChange {
    /// The cap is reached: apps not marked essential lose the uplink.
    Reached {
        uplink: String,
        used: u64,
        limit: u64,
        /// The first day of the next period.
        resets: Day,
    },
    /// A new period began: every app may use the uplink again.
    Restored { uplink: String },
}

/// What the wall clock said at a moment of the driver's clock.
#[derive(Clone, Copy, Debug)]
struct Clock {
    at: Instant,
    /// Local time (UTC plus the offset) in seconds since 1970-01-01 at `at`.
    local_secs: i64,
}

impl Clock {
    fn local_secs(&self, now: Instant) -> i64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs();
        self.local_secs
            .saturating_add(i64::try_from(elapsed).unwrap_or(i64::MAX))
    }

    fn today(&self, now: Instant) -> Day {
        Day(self.local_secs(now).div_euclid(SECS_PER_DAY))
    }

    /// When `day` starts, on the driver's clock (`at` when it already has).
    fn start_of(&self, day: Day) -> Instant {
        let until = day.0.saturating_mul(SECS_PER_DAY) - self.local_secs;
        self.at + Duration::from_secs(u64::try_from(until.max(0)).unwrap_or(0))
    }
}

/// Counts bytes per app per uplink into a [`Ledger`] and enforces caps. See the module docs.
pub struct Meter {
    ledger: Ledger,
    names: Vec<String>,
    caps: Vec<Option<Cap>>,
    /// Bytes a tunnelled packet costs besides the app's own, per uplink.
    overhead: [u64; MAX_UPLINKS],
    capped: [bool; MAX_UPLINKS],
    /// Per uplink, what is left of its cap at the last harvest (`u64::MAX` without a cap), and
    /// what its packets used since.
    left: [u64; MAX_UPLINKS],
    spent: [u64; MAX_UPLINKS],
    /// A packet used up what was left of a cap: harvest at once.
    due: bool,
    /// Packets went through since the last harvest.
    traffic: bool,
    last_harvest: Option<Instant>,
    /// What each live flow had counted at the last harvest.
    accounted: HashMap<FlowId, (u64, UplinkCounters)>,
    generation: u64,
    clock: Option<Clock>,
    /// Something was counted since the last save.
    dirty: bool,
    last_save: Instant,
    changes: Vec<CapChange>,
}

impl Meter {
    /// A meter for these uplinks (names in path order) with their caps, starting at `now`
    /// with an empty ledger.
    pub fn new(names: Vec<String>, caps: Vec<Option<Cap>>, now: Instant) -> Meter {
        Meter {
            ledger: Ledger::default(),
            names,
            caps,
            overhead: [OVERHEAD_V4; MAX_UPLINKS],
            capped: [false; MAX_UPLINKS],
            left: [u64::MAX; MAX_UPLINKS],
            spent: [0; MAX_UPLINKS],
            due: false,
            traffic: false,
            last_harvest: None,
            accounted: HashMap::new(),
            generation: 0,
            clock: None,
            dirty: false,
            last_save: now,
            changes: Vec::new(),
        }
    }

    /// Replaces the ledger with one loaded from the saved file; caps are checked at once when
    /// the clock is known.
    pub fn load(&mut self, ledger: Ledger, now: Instant) {
        self.ledger = ledger;
        self.check_caps(now);
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The wall clock at `now`: seconds since 1970-01-01 UTC and the local offset east of UTC.
    /// Caps are checked again when the day changed (or this is the first date).
    pub fn set_clock(&mut self, unix_secs: i64, utc_offset_secs: i32, now: Instant) {
        let before = self.today(now);
        self.clock = Some(Clock {
            at: now,
            local_secs: unix_secs.saturating_add(i64::from(utc_offset_secs)),
        });
        // Within a day the harvests check the caps; only a new day (or the first date) may
        // change them here. The driver calls this on every timer turn, so it stays cheap.
        if before != self.today(now) {
            self.check_caps(now);
        }
    }

    /// Today, once the clock is known.
    pub fn today(&self, now: Instant) -> Option<Day> {
        self.clock.map(|c| c.today(now))
    }

    /// Whether `uplink` (by index) is capped now.
    pub fn is_capped(&self, index: usize) -> bool {
        self.capped.get(index).copied().unwrap_or(false)
    }

    /// Sets the per-packet overhead of `uplink` by the family of its socket.
    pub fn set_ipv6(&mut self, index: usize, ipv6: bool) {
        if let Some(o) = self.overhead.get_mut(index) {
            *o = if ipv6 { OVERHEAD_V6 } else { OVERHEAD_V4 };
        }
    }

    /// One data packet of `len` bytes (the app's packet; the tunnel's overhead is added) on
    /// uplink `index`.
    /// Runs per packet: an addition and a comparison.
    #[inline]
    pub fn note(&mut self, index: usize, len: usize) {
        self.traffic = true;
        if let (Some(s), Some(left), Some(o)) = (
            self.spent.get_mut(index),
            self.left.get(index),
            self.overhead.get(index),
        ) {
            *s = s.saturating_add(len as u64 + o);
            if *s >= *left {
                self.due = true;
            }
        }
    }

    /// When [`Meter::on_timeout`] must run: a harvest after traffic (at once when a cap's
    /// remainder was used up), a save after something new was counted, the next period while
    /// an uplink is capped. `None`: idle.
    pub fn deadline(&self) -> Option<Instant> {
        let harvest = if self.due {
            Some(Instant::from_duration(Duration::ZERO))
        } else if self.traffic {
            Some(
                self.last_harvest
                    .map_or(Instant::from_duration(Duration::ZERO), |t| {
                        t + HARVEST_INTERVAL
                    }),
            )
        } else {
            None
        };
        let save = self.dirty.then(|| self.last_save + SAVE_INTERVAL);
        let period = match (self.clock, self.capped.iter().any(|c| *c)) {
            (Some(clock), true) => self
                .next_period_start(clock.today(clock.at))
                .map(|d| clock.start_of(d)),
            _ => None,
        };
        [harvest, save, period].into_iter().flatten().min()
    }

    fn next_period_start(&self, today: Day) -> Option<Day> {
        self.caps
            .iter()
            .zip(&self.capped)
            .filter(|(_, capped)| **capped)
            .filter_map(|(c, _)| c.map(|c| c.period.next_start(today)))
            .min()
    }

    /// Harvests when due and checks the caps. Returns whether an uplink's cap state changed
    /// (see [`Meter::poll_change`]): the policy's view of the uplinks must be refreshed.
    pub fn on_timeout(&mut self, paft: &Paft, now: Instant) -> bool {
        let harvest_due = self.due
            || (self.traffic
                && self
                    .last_harvest
                    .is_none_or(|t| now.saturating_duration_since(t) >= HARVEST_INTERVAL));
        if harvest_due {
            self.harvest(paft, now);
        }
        self.check_caps(now)
    }

    /// Takes what live flows carried since the last harvest into the ledger.
    pub fn harvest(&mut self, paft: &Paft, now: Instant) {
        self.due = false;
        self.traffic = false;
        self.last_harvest = Some(now);
        self.spent = [0; MAX_UPLINKS];
        let Some(today) = self.today(now) else {
            // Without a date nothing can be booked; flows keep their counts until there is one.
            return;
        };
        self.generation = self.generation.wrapping_add(1);
        for (_, e) in paft.iter() {
            self.book(e, today);
        }
        let generation = self.generation;
        self.accounted.retain(|_, (g, _)| *g == generation);
        // A burst of flows leaves the map at its peak size: give the memory back once it is
        // mostly empty (hysteresis: only past four times what is used).
        let live = self.accounted.len();
        if self.accounted.capacity() > 4 * live + 1024 {
            self.accounted.shrink_to(2 * live);
        }
    }

    /// Takes the last bytes of flows that left the table (expired, evicted).
    pub fn harvest_removed(&mut self, removed: &[(FlowKey, Entry)], now: Instant) {
        let Some(today) = self.today(now) else {
            return;
        };
        for (_, e) in removed {
            self.book(e, today);
            self.accounted.remove(&e.id());
        }
    }

    fn book(&mut self, e: &Entry, today: Day) {
        let generation = self.generation;
        let (g, seen) = self
            .accounted
            .entry(e.id())
            .or_insert_with(|| (generation, UplinkCounters::new(e.uplink())));
        *g = generation;
        let app = match e.app().as_str() {
            crate::flows::UNKNOWN_APP => UNKNOWN_APP,
            name => name,
        };
        for (i, name) in self.names.iter().enumerate() {
            let Some(uplink) = Uplinks::id_for_index(i) else {
                continue;
            };
            let now_counted = *e.counters(uplink);
            let before = *seen.get(uplink);
            if before == now_counted {
                continue;
            }
            *seen.get_mut(uplink) = now_counted;
            let overhead = self.overhead[i];
            let wire = |d: usize| {
                let bytes = now_counted.bytes[d].saturating_sub(before.bytes[d]);
                let packets = now_counted.packets[d].saturating_sub(before.packets[d]);
                bytes.saturating_add(packets.saturating_mul(overhead))
            };
            let delta = Bytes {
                tx: wire(0),
                rx: wire(1),
            };
            if delta != Bytes::default() {
                self.ledger.add(today, app, name, delta);
                self.dirty = true;
            }
        }
    }

    /// Checks every cap against the ledger; returns whether one changed.
    fn check_caps(&mut self, now: Instant) -> bool {
        let Some(today) = self.today(now) else {
            return false;
        };
        let mut changed = false;
        for (i, cap) in self.caps.iter().enumerate() {
            let (Some(cap), Some(name)) = (cap, self.names.get(i)) else {
                continue;
            };
            let used = self
                .ledger
                .uplink_total(name, cap.period.start(today), today);
            let reached = used >= cap.limit;
            self.left[i] = cap.limit.saturating_sub(used);
            if reached != self.capped[i] {
                self.capped[i] = reached;
                changed = true;
                self.changes.push(if reached {
                    CapChange::Reached {
                        uplink: name.clone(),
                        used,
                        limit: cap.limit,
                        resets: cap.period.next_start(today),
                    }
                } else {
                    CapChange::Restored {
                        uplink: name.clone(),
                    }
                });
            }
        }
        changed
    }

    /// The next cap change since the last call.
    pub fn poll_change(&mut self) -> Option<CapChange> {
        if self.changes.is_empty() {
            None
        } else {
            Some(self.changes.remove(0))
        }
    }

    /// The ledger to save, when something new was counted and [`SAVE_INTERVAL`] passed since
    /// the last save (or `force`, at exit). Harvest first.
    pub fn take_save(&mut self, now: Instant, force: bool) -> Option<UsageFile> {
        let due = self.dirty && now.saturating_duration_since(self.last_save) >= SAVE_INTERVAL;
        if !(force || due) {
            return None;
        }
        self.dirty = false;
        self.last_save = now;
        Some(self.ledger.to_file())
    }

    /// Usage for `upmt usage`: per app per uplink from `since` (default: the first day kept)
    /// through today, and each capped uplink's period.
    pub fn reply(
        &self,
        app: Option<&str>,
        since: Option<Day>,
        now: Instant,
    ) -> Result<UsageReply, String> {
        let today = self
            .today(now)
            .ok_or_else(|| "the daemon does not know the date yet".to_owned())?;
        let since = since.or(self.ledger.first_day()).unwrap_or(today);
        let sums = self.ledger.sum(since, today, app);
        let mut per_uplink: BTreeMap<&str, Bytes> = BTreeMap::new();
        let apps: Vec<AppUsage> = sums
            .iter()
            .map(|(name, uplinks)| {
                let mut total = Bytes::default();
                let uplinks = uplinks
                    .iter()
                    .map(|(u, b)| {
                        total.add(*b);
                        per_uplink.entry(u).or_default().add(*b);
                        UplinkBytes {
                            uplink: (*u).to_owned(),
                            tx_bytes: b.tx,
                            rx_bytes: b.rx,
                        }
                    })
                    .collect();
                AppUsage {
                    name: (*name).to_owned(),
                    tx_bytes: total.tx,
                    rx_bytes: total.rx,
                    uplinks,
                }
            })
            .collect();
        // Configured uplinks first, in path order, then names only the history knows.
        let mut names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        names.extend(
            per_uplink
                .keys()
                .filter(|n| !self.names.iter().any(|m| m == *n)),
        );
        let uplinks = names
            .into_iter()
            .map(|name| {
                let b = per_uplink.get(name).copied().unwrap_or_default();
                let index = self.names.iter().position(|n| n == name);
                let cap = index
                    .and_then(|i| self.caps.get(i).copied().flatten().map(|c| (i, c)))
                    .map(|(i, c)| {
                        let start = c.period.start(today);
                        let used = self.ledger.uplink_total(name, start, today);
                        CapStatus {
                            cap_bytes: c.limit,
                            period: c.period.name().to_owned(),
                            period_start: start.to_string(),
                            used_bytes: used,
                            left_bytes: c.limit.saturating_sub(used),
                            resets: c.period.next_start(today).to_string(),
                            reached: self.is_capped(i),
                        }
                    });
                UplinkUsage {
                    uplink: name.to_owned(),
                    tx_bytes: b.tx,
                    rx_bytes: b.rx,
                    cap,
                }
            })
            .collect();
        let total = sums
            .values()
            .flat_map(|u| u.values())
            .fold(Bytes::default(), |mut t, b| {
                t.add(*b);
                t
            });
        Ok(UsageReply {
            since: since.to_string(),
            until: today.to_string(),
            tx_bytes: total.tx,
            rx_bytes: total.rx,
            apps,
            uplinks,
        })
    }
}

#[cfg(test)]
mod tests;
