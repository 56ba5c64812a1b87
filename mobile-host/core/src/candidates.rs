//! Which real interface, and which address family toward the anchor, an uplink runs on.
//!
//! An uplink names its interface exactly (`wlan0`) or by a prefix pattern (`rmnet_data*`),
//! because a phone's cellular interfaces are numbered as the modem brings them up, and several
//! can be up at once (Qualcomm brings up IMS on its own `rmnet_data`). The anchor may also have
//! an IPv4 and an IPv6 endpoint; on an IPv6-only cellular network with 464XLAT only IPv6 reaches
//! it from the cellular interface itself.
//!
//! The driver lists what the host has ([`InterfaceFacts`]); [`eligible`] keeps the candidates of
//! one uplink (the pattern matches, the link is up, a family has a global address and a default
//! route through it), each with the families worth trying in the anchor's order. [`Selector`]
//! then tries one (interface, family) at a time: an attempt whose path does not come up within
//! the trial time (the anchor never answers through IMS) is remembered as failed for a while,
//! and the next candidate is tried. With a single candidate nothing is ever switched, so a fixed
//! interface behaves as it always did: one socket, kept while the link is up.
//!
//! Pure: no IO, no clock; the caller passes `now`.

use std::fmt;
use std::time::Duration;

use upmt_proto::time::Instant;

/// How long a failed attempt is passed over while another candidate remains.
pub const FAILED_MEMORY: Duration = Duration::from_secs(60);

/// An address family toward the anchor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        })
    }
}

/// How an uplink names its interface: exactly, or every name that starts with a prefix.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// This interface only (`wlan0`).
    Exact(String),
    /// Any interface whose name starts with this (`rmnet_data*` holds `rmnet_data`).
    Prefix(String),
}

impl Pattern {
    /// `name*` is a prefix pattern, anything else an exact name. A `*` elsewhere, or a lone
    /// `*`, is refused with the reason (the config names its line and column).
    pub fn parse(text: &str) -> Result<Pattern, &'static str> {
        match text.strip_suffix('*') {
            Some("") => Err(
                "a lone '*' would match every interface: expected a prefix, e.g. \"rmnet_data*\"",
            ),
            Some(prefix) if prefix.contains('*') => {
                Err("'*' may only end the name, e.g. \"rmnet_data*\"")
            }
            Some(prefix) => Ok(Pattern::Prefix(prefix.to_owned())),
            None if text.contains('*') => Err("'*' may only end the name, e.g. \"rmnet_data*\""),
            None => Ok(Pattern::Exact(text.to_owned())),
        }
    }

    /// Whether the interface called `name` is one this pattern names.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Exact(n) => n == name,
            Pattern::Prefix(p) => name.starts_with(p.as_str()),
        }
    }

    /// Whether this names one interface exactly.
    pub fn is_exact(&self) -> bool {
        matches!(self, Pattern::Exact(_))
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(n) => f.write_str(n),
            Pattern::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// What the driver found out about one interface of the host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceFacts {
    /// Its name.
    pub name: String,
    /// Administratively up with carrier.
    pub up: bool,
    /// It has a global (not link-local, not loopback) address of the family.
    pub global_v4: bool,
    /// Same, IPv6 (and not tentative).
    pub global_v6: bool,
    /// A default route of the family leaves through it, in any table (on Android each
    /// network's default route lives in table ifindex + 1000, never in main).
    pub default_v4: bool,
    /// Same, IPv6.
    pub default_v6: bool,
}

impl InterfaceFacts {
    /// Whether the family can reach beyond the link from this interface on its own.
    pub fn routes(&self, family: Family) -> bool {
        match family {
            Family::V4 => self.global_v4 && self.default_v4,
            Family::V6 => self.global_v6 && self.default_v6,
        }
    }
}

/// One interface an uplink may use, with the families to try on it in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The real interface name.
    pub interface: String,
    /// The anchor's families that can work on it, in the anchor's order of preference.
    pub families: Vec<Family>,
}

/// The candidates for an uplink named by `pattern`, in name order, among `interfaces`;
/// `anchor` lists the families the anchor has an endpoint in, preferred first, and `taken`
/// names interfaces other uplinks name exactly (never candidates of a pattern).
///
/// A pattern's candidate must be up and have at least one family with a global address and a
/// default route through it. An exactly named interface needs only to be up, as it always
/// did: its families are those that route, or every family of the anchor when none visibly
/// does (a default route may sit where the listing does not look; the path's probes tell).
pub fn eligible(
    pattern: &Pattern,
    interfaces: &[InterfaceFacts],
    anchor: &[Family],
    taken: &[&str],
) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = interfaces
        .iter()
        .filter(|i| i.up && pattern.matches(&i.name))
        .filter(|i| pattern.is_exact() || !taken.contains(&i.name.as_str()))
        .filter_map(|i| {
            let routed: Vec<Family> = anchor.iter().copied().filter(|f| i.routes(*f)).collect();
            let families = match (routed.is_empty(), pattern.is_exact()) {
                (false, _) => routed,
                (true, true) => anchor.to_vec(),
                (true, false) => return None,
            };
            Some(Candidate {
                interface: i.name.clone(),
                families,
            })
        })
        .collect();
    out.sort_by(|a, b| natural_cmp(&a.interface, &b.interface));
    out
}

/// `rmnet_data2` before `rmnet_data10`: names compared with their trailing numbers as numbers.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let split = |s: &str| {
        let digits = s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let (stem, num) = s.split_at(s.len() - digits);
        (stem.to_owned(), num.parse::<u64>().ok(), s.to_owned())
    };
    split(a).cmp(&split(b))
}

/// One (interface, family) an uplink tries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Attempt {
    /// The real interface.
    pub interface: String,
    /// The anchor endpoint's family.
    pub family: Family,
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.interface, self.family)
    }
}

/// What the driver must do with an uplink's socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Close the socket it has, if any, and open one on this interface toward the anchor's
    /// endpoint of this family.
    Attach(Attempt),
    /// Close the socket: no candidate is left.
    Detach,
}

#[derive(Clone, Debug)]
struct Current {
    attempt: Attempt,
    /// Since when the path has not been up (from the start of the attempt, or from when it
    /// went down); `None` while it is up.
    waiting_since: Option<Instant>,
}

/// Picks and replaces one uplink's (interface, family). See the module docs.
#[derive(Clone, Debug)]
pub struct Selector {
    trial: Duration,
    current: Option<Current>,
    /// Whether the last listing had an option besides the current one (without one, a trial
    /// has nothing to end in, so there is no deadline).
    alternatives: bool,
    /// Attempts that failed, and until when they are passed over.
    failed: Vec<(Attempt, Instant)>,
}

impl Selector {
    /// A selector that gives each attempt `trial` to bring its path up.
    pub fn new(trial: Duration) -> Selector {
        Selector {
            trial,
            current: None,
            alternatives: false,
            failed: Vec::new(),
        }
    }

    /// The attempt in use, if any.
    pub fn current(&self) -> Option<&Attempt> {
        self.current.as_ref().map(|c| &c.attempt)
    }

    /// Whether `attempt` failed recently and is passed over while others remain.
    pub fn is_failed(&self, attempt: &Attempt, now: Instant) -> bool {
        self.failed
            .iter()
            .any(|(a, until)| a == attempt && *until > now)
    }

    /// Decides with the candidates listed now and whether the current attempt's path is up.
    /// Returns the change the driver must make, if any.
    pub fn update(&mut self, listed: &[Candidate], path_up: bool, now: Instant) -> Option<Change> {
        self.failed.retain(|(_, until)| *until > now);
        let options: Vec<Attempt> = listed
            .iter()
            .flat_map(|c| {
                c.families.iter().map(|f| Attempt {
                    interface: c.interface.clone(),
                    family: *f,
                })
            })
            .collect();
        let had = self.current.is_some();
        self.alternatives = options.len() > 1;
        if let Some(cur) = &mut self.current {
            if !options.contains(&cur.attempt) {
                // Its interface went away or lost the family: not a failure of the candidate.
                self.current = None;
            } else if path_up {
                cur.waiting_since = None;
                return None;
            } else {
                let since = *cur.waiting_since.get_or_insert(now);
                let others = options.iter().any(|o| *o != cur.attempt);
                if !others || now.saturating_duration_since(since) < self.trial {
                    return None;
                }
                let failed = cur.attempt.clone();
                self.failed.push((failed, now + FAILED_MEMORY));
                self.current = None;
            }
        }
        match self.pick(&options, now) {
            Some(next) => {
                self.current = Some(Current {
                    attempt: next.clone(),
                    waiting_since: Some(now),
                });
                Some(Change::Attach(next))
            }
            None if had => Some(Change::Detach),
            None => None,
        }
    }

    /// The socket for the current attempt could not be opened: it counts as failed.
    pub fn attach_failed(&mut self, now: Instant) {
        if let Some(cur) = self.current.take() {
            self.failed.push((cur.attempt, now + FAILED_MEMORY));
        }
    }

    /// The driver lost the current attempt's socket (an address went away): the next update
    /// attaches again, to the best candidate then.
    pub fn lost(&mut self) {
        self.current = None;
    }

    /// The current attempt's path came up (`true`) or went down: its trial clock stops, or
    /// starts from `now`.
    pub fn path_changed(&mut self, up: bool, now: Instant) {
        if let Some(cur) = &mut self.current {
            cur.waiting_since = if up { None } else { Some(now) };
        }
    }

    /// When [`Selector::update`] must run again even if nothing else changes: the end of the
    /// current attempt's trial, when another option could replace it.
    pub fn deadline(&self) -> Option<Instant> {
        if !self.alternatives {
            return None;
        }
        let since = self.current.as_ref()?.waiting_since?;
        Some(since + self.trial)
    }

    /// The first option not failed recently; when all have, the one that failed longest ago
    /// (so a host whose anchor was unreachable for a while tries everything again in turn).
    fn pick(&self, options: &[Attempt], now: Instant) -> Option<Attempt> {
        if let Some(fresh) = options.iter().find(|o| !self.is_failed(o, now)) {
            return Some(fresh.clone());
        }
        options
            .iter()
            .min_by_key(|o| {
                self.failed
                    .iter()
                    .filter(|(a, _)| a == *o)
                    .map(|(_, until)| *until)
                    .max()
            })
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRIAL: Duration = Duration::from_secs(3);

    fn t(ms: u64) -> Instant {
        Instant::ZERO + Duration::from_millis(ms)
    }

    fn cand(name: &str, families: &[Family]) -> Candidate {
        Candidate {
            interface: name.into(),
            families: families.to_vec(),
        }
    }

    /// Two IPv4 cellular candidates, as a Qualcomm phone with IMS up lists them.
    fn two_rmnets() -> [Candidate; 2] {
        [
            cand("rmnet_data0", &[Family::V4]),
            cand("rmnet_data1", &[Family::V4]),
        ]
    }

    fn attach(name: &str, family: Family) -> Option<Change> {
        Some(Change::Attach(Attempt {
            interface: name.into(),
            family,
        }))
    }

    fn facts(name: &str, v4: bool, v6: bool) -> InterfaceFacts {
        InterfaceFacts {
            name: name.into(),
            up: true,
            global_v4: v4,
            global_v6: v6,
            default_v4: v4,
            default_v6: v6,
        }
    }

    #[test]
    fn a_trailing_star_is_a_prefix_and_a_star_elsewhere_is_refused() {
        assert_eq!(
            Pattern::parse("rmnet_data*"),
            Ok(Pattern::Prefix("rmnet_data".into()))
        );
        assert_eq!(Pattern::parse("wlan0"), Ok(Pattern::Exact("wlan0".into())));
        assert!(Pattern::parse("*").is_err());
        assert!(Pattern::parse("rm*net").is_err());
        assert!(Pattern::parse("rm**").is_err());
        let p = Pattern::parse("ccmni*").unwrap();
        assert!(p.matches("ccmni0") && p.matches("ccmni12") && !p.matches("wlan0"));
        assert_eq!(p.to_string(), "ccmni*");
    }

    #[test]
    fn a_pattern_keeps_interfaces_that_are_up_with_a_global_address_and_a_default_route() {
        let mut down = facts("rmnet_data3", true, true);
        down.up = false;
        let mut no_route = facts("rmnet_data4", true, false);
        no_route.default_v4 = false;
        let interfaces = [
            facts("wlan0", true, true),
            facts("rmnet_data10", true, false),
            facts("rmnet_data2", false, true),
            down,
            no_route,
            facts("v4-rmnet_data2", true, false),
        ];
        let got = eligible(
            &Pattern::parse("rmnet_data*").unwrap(),
            &interfaces,
            &[Family::V4, Family::V6],
            &[],
        );
        assert_eq!(
            got,
            vec![
                cand("rmnet_data2", &[Family::V6]),
                cand("rmnet_data10", &[Family::V4])
            ]
        );
    }

    #[test]
    fn families_follow_the_anchors_order_and_only_the_anchors_families() {
        let interfaces = [facts("wlan0", true, true)];
        let exact = Pattern::parse("wlan0").unwrap();
        assert_eq!(
            eligible(&exact, &interfaces, &[Family::V6, Family::V4], &[]),
            vec![cand("wlan0", &[Family::V6, Family::V4])]
        );
        assert_eq!(
            eligible(&exact, &interfaces, &[Family::V4], &[]),
            vec![cand("wlan0", &[Family::V4])]
        );
    }

    #[test]
    fn an_exact_name_that_is_up_is_a_candidate_even_when_no_route_is_seen() {
        let mut bare = facts("eth1", false, false);
        bare.up = true;
        assert_eq!(
            eligible(
                &Pattern::parse("eth1").unwrap(),
                std::slice::from_ref(&bare),
                &[Family::V4],
                &[]
            ),
            vec![cand("eth1", &[Family::V4])]
        );
        assert!(
            eligible(
                &Pattern::parse("eth*").unwrap(),
                &[bare],
                &[Family::V4],
                &[]
            )
            .is_empty()
        );
    }

    #[test]
    fn a_pattern_never_takes_an_interface_another_uplink_names() {
        let interfaces = [facts("wlan0", true, false), facts("wlan1", true, false)];
        assert_eq!(
            eligible(
                &Pattern::parse("wlan*").unwrap(),
                &interfaces,
                &[Family::V4],
                &["wlan0"]
            ),
            vec![cand("wlan1", &[Family::V4])]
        );
    }

    #[test]
    fn the_first_candidate_is_attached_and_kept_while_its_path_is_up() {
        let mut s = Selector::new(TRIAL);
        let listed = two_rmnets();
        assert_eq!(
            s.update(&listed, false, t(0)),
            attach("rmnet_data0", Family::V4)
        );
        assert_eq!(s.update(&listed, false, t(1000)), None);
        assert_eq!(s.update(&listed, true, t(1500)), None);
        assert_eq!(s.update(&listed, true, t(60_000)), None);
        assert_eq!(s.deadline(), None);
    }

    #[test]
    fn the_trial_clock_restarts_when_a_path_that_was_up_goes_down() {
        let mut s = Selector::new(TRIAL);
        let listed = two_rmnets();
        s.update(&listed, false, t(0));
        s.path_changed(true, t(500));
        assert_eq!(s.deadline(), None);
        s.path_changed(false, t(2500));
        assert_eq!(s.deadline(), Some(t(5500)));
        assert_eq!(s.update(&listed, false, t(3000)), None);
        assert_eq!(
            s.update(&listed, false, t(5500)),
            attach("rmnet_data1", Family::V4)
        );
    }

    #[test]
    fn a_candidate_whose_path_never_comes_up_is_left_for_the_next_after_the_trial() {
        let mut s = Selector::new(TRIAL);
        let listed = two_rmnets();
        assert_eq!(
            s.update(&listed, false, t(0)),
            attach("rmnet_data0", Family::V4)
        );
        assert_eq!(s.deadline(), Some(t(3000)));
        assert_eq!(s.update(&listed, false, t(2999)), None);
        assert_eq!(
            s.update(&listed, false, t(3000)),
            attach("rmnet_data1", Family::V4)
        );
        // The IMS-like one is remembered: while rmnet_data1 works, nothing changes.
        assert_eq!(s.update(&listed, true, t(4000)), None);
        let failed = Attempt {
            interface: "rmnet_data0".into(),
            family: Family::V4,
        };
        assert!(s.is_failed(&failed, t(4000)));
    }

    #[test]
    fn a_failed_candidate_is_passed_over_until_its_memory_expires() {
        let mut s = Selector::new(TRIAL);
        let listed = [
            cand("rmnet_data0", &[Family::V4]),
            cand("rmnet_data1", &[Family::V4]),
            cand("rmnet_data2", &[Family::V4]),
        ];
        s.update(&listed, false, t(0));
        assert_eq!(
            s.update(&listed, false, t(3000)),
            attach("rmnet_data1", Family::V4)
        );
        // rmnet_data1 comes up then dies for longer than a trial: rmnet_data0 is still
        // remembered as failed, so rmnet_data2 is next.
        s.update(&listed, true, t(4000));
        s.update(&listed, false, t(5000));
        assert_eq!(
            s.update(&listed, false, t(8000)),
            attach("rmnet_data2", Family::V4)
        );
        // After the memory of rmnet_data0 expires it is the first again.
        assert_eq!(
            s.update(&listed, false, t(3000) + FAILED_MEMORY),
            attach("rmnet_data0", Family::V4)
        );
    }

    #[test]
    fn when_every_candidate_failed_the_one_that_failed_longest_ago_is_tried() {
        let mut s = Selector::new(TRIAL);
        let listed = [cand("a0", &[Family::V4]), cand("a1", &[Family::V4])];
        s.update(&listed, false, t(0));
        assert_eq!(s.update(&listed, false, t(3000)), attach("a1", Family::V4));
        assert_eq!(s.update(&listed, false, t(6000)), attach("a0", Family::V4));
        assert_eq!(s.update(&listed, false, t(9000)), attach("a1", Family::V4));
    }

    #[test]
    fn a_single_candidate_is_never_switched_however_long_its_path_is_down() {
        let mut s = Selector::new(TRIAL);
        let listed = [cand("wlan0", &[Family::V4])];
        assert_eq!(s.update(&listed, false, t(0)), attach("wlan0", Family::V4));
        for ms in [3000, 10_000, 100_000, 1_000_000] {
            assert_eq!(s.update(&listed, false, t(ms)), None);
            assert_eq!(s.deadline(), None, "nothing to switch to, so no timer");
        }
    }

    #[test]
    fn on_one_interface_the_other_family_is_tried_when_the_first_does_not_come_up() {
        let mut s = Selector::new(TRIAL);
        let listed = [cand("rmnet_data0", &[Family::V4, Family::V6])];
        assert_eq!(
            s.update(&listed, false, t(0)),
            attach("rmnet_data0", Family::V4)
        );
        assert_eq!(
            s.update(&listed, false, t(3000)),
            attach("rmnet_data0", Family::V6)
        );
        assert_eq!(s.update(&listed, true, t(3500)), None);
    }

    #[test]
    fn a_vanished_interface_is_replaced_at_once_without_counting_as_failed() {
        let mut s = Selector::new(TRIAL);
        let both = [
            cand("rmnet_data0", &[Family::V4]),
            cand("rmnet_data1", &[Family::V4]),
        ];
        s.update(&both, true, t(0));
        let only1 = [cand("rmnet_data1", &[Family::V4])];
        assert_eq!(
            s.update(&only1, false, t(100)),
            attach("rmnet_data1", Family::V4)
        );
        assert_eq!(s.update(&both, true, t(200)), None);
        let gone = Attempt {
            interface: "rmnet_data0".into(),
            family: Family::V4,
        };
        assert!(!s.is_failed(&gone, t(200)));
    }

    #[test]
    fn no_candidate_left_detaches_once() {
        let mut s = Selector::new(TRIAL);
        let listed = [cand("wlan0", &[Family::V4])];
        s.update(&listed, true, t(0));
        assert_eq!(s.update(&[], false, t(100)), Some(Change::Detach));
        assert_eq!(s.current(), None);
        assert_eq!(s.update(&[], false, t(150)), None);
        assert_eq!(
            s.update(&listed, false, t(200)),
            attach("wlan0", Family::V4)
        );
    }

    #[test]
    fn a_socket_that_cannot_be_opened_moves_on_and_a_lost_one_is_reattached() {
        let mut s = Selector::new(TRIAL);
        let listed = [cand("a0", &[Family::V4]), cand("a1", &[Family::V4])];
        s.update(&listed, false, t(0));
        s.attach_failed(t(10));
        assert_eq!(s.update(&listed, false, t(20)), attach("a1", Family::V4));
        s.lost();
        assert_eq!(s.update(&listed, false, t(30)), attach("a1", Family::V4));
    }
}
