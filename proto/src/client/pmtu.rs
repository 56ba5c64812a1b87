//! Path MTU search per path, in the style of DPLPMTUD (RFC 8899) as QUIC runs it: the client
//! sends `Probe`s padded to a candidate size; one that is acked proves the path carries a
//! datagram that big. Nothing here relies on ICMP, which NATs and firewalls often drop.
//!
//! Sizes are outer IP packet sizes (what `ip link` calls the MTU), so the driver can compare
//! them with interface MTUs; `overhead` (the outer IP and UDP headers, 28 or 48 bytes) turns
//! them into UDP payload lengths.
//!
//! The search runs between [`PMTU_BASE`] (assumed to pass: the IPv6 minimum, and the smallest
//! MTU the anchor accepts for its TUN) and the interface MTU the driver reports. It tries the
//! interface MTU first (most paths carry it, so one probe usually ends the search), then halves
//! the interval until it is narrower than [`GRANULARITY`]. A size is too big after
//! [`MAX_PROBES`] lost probes. A finished search is repeated with the first data after
//! [`RAISE_INTERVAL`] (a path may have grown; an idle path gains nothing from it, so no timer
//! wakes it), at once when the interface MTU changes, and when the path comes back Up.
//!
//! Black holes: the proven size is probed again (confirmed) at once when data on a path stays
//! unanswered (the path turns suspect), and every [`CONFIRM_INTERVAL`] while the path carries
//! data, since a path that shrank downlink only (a download: the uplink carries small acks)
//! shows no uplink loss; when that probe is lost too, the path falls back to the base and
//! searches again. Confirming costs one full-size probe per interval, and only on a path that
//! carries data. A lost MTU probe never counts toward the path's liveness or loss: MTU probes have
//! their own sequence space (the top bit set) and leave the liveness bookkeeping alone.

use crate::time::Instant;
use core::time::Duration;

/// The size every path is assumed to carry.
pub const PMTU_BASE: u16 = 1280;
/// A search stops when the proven size and the smallest failed size are this close.
pub const GRANULARITY: u16 = 16;
/// Lost probes of one size after which the size is too big.
pub const MAX_PROBES: u8 = 2;
/// How long after a finished search the path is searched again for a larger MTU.
pub const RAISE_INTERVAL: Duration = Duration::from_secs(600);
/// How often the proven size is confirmed on a path that carries data.
pub const CONFIRM_INTERVAL: Duration = Duration::from_secs(5);
/// The shortest wait for the ack of an MTU probe.
pub const PROBE_TIMEOUT_FLOOR: Duration = Duration::from_millis(500);
/// The top bit of a probe's sequence number marks an MTU probe.
pub const SEQ_BIT: u32 = 1 << 31;

/// How long an MTU probe waits for its ack: three smoothed RTTs, at least
/// [`PROBE_TIMEOUT_FLOOR`].
pub fn probe_timeout(srtt: Option<Duration>) -> Duration {
    srtt.map_or(PROBE_TIMEOUT_FLOOR, |s| (s * 3).max(PROBE_TIMEOUT_FLOOR))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Outstanding {
    size: u16,
    seq: u32,
    sent: Instant,
    lost: u8,
}

/// What the search does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No interface MTU known yet: nothing is probed.
    Disabled,
    /// Looking for the largest size between `proven` and `too_big`.
    Searching,
    /// Re-probing `proven`, which data loss put in doubt.
    Validating,
    /// Done until `next_at`.
    Searched,
}

/// The path MTU search of one path.
#[derive(Clone, Debug)]
pub(super) struct PmtuSearch {
    phase: Phase,
    /// The largest size proven (or the base, assumed).
    proven: u16,
    /// Whether `proven` is the path's MTU as far as known: a search ended (or a confirmation
    /// failed) since the interface MTU was last set. While the first search runs it is not.
    known: bool,
    /// The smallest size known not to pass; the interface MTU plus one while none failed.
    too_big: u16,
    link_mtu: u16,
    overhead: u16,
    probe: Option<Outstanding>,
    /// When the next probe goes out (or the next search starts).
    next_at: Option<Instant>,
    /// When the finished search is repeated for a larger MTU.
    raise_at: Option<Instant>,
    /// When the proven size is confirmed, armed by data on the path.
    confirm_at: Option<Instant>,
    next_seq: u32,
}

impl PmtuSearch {
    pub(super) fn new() -> Self {
        PmtuSearch {
            phase: Phase::Disabled,
            proven: PMTU_BASE,
            known: false,
            too_big: PMTU_BASE + 1,
            link_mtu: PMTU_BASE,
            overhead: 0,
            probe: None,
            next_at: None,
            raise_at: None,
            confirm_at: None,
            next_seq: 0,
        }
    }

    /// The path MTU as far as known: `None` until a search below the interface MTU the driver
    /// reported ended (a few round trips after it reported it).
    pub(super) fn mtu(&self) -> Option<u16> {
        self.known.then_some(self.proven)
    }

    /// The interface under the path has `link_mtu` and the outer headers take `overhead`
    /// bytes. A change restarts the search at once; the same values change nothing.
    pub(super) fn set_link(&mut self, link_mtu: u16, overhead: u16, now: Instant) {
        if self.phase != Phase::Disabled && self.link_mtu == link_mtu && self.overhead == overhead {
            return;
        }
        self.link_mtu = link_mtu;
        self.overhead = overhead;
        self.proven = PMTU_BASE.min(link_mtu);
        self.known = false;
        self.phase = Phase::Searching;
        self.restart(now);
    }

    /// Searches again from the proven size up to the interface MTU, starting now.
    pub(super) fn restart(&mut self, now: Instant) {
        if self.phase == Phase::Disabled {
            return;
        }
        self.proven = self.proven.min(self.link_mtu);
        self.too_big = self.link_mtu.saturating_add(1);
        self.probe = None;
        self.phase = Phase::Searching;
        self.next_at = Some(now);
        self.confirm_at = None;
    }

    /// Data went out on the path: the proven size is confirmed within [`CONFIRM_INTERVAL`], or
    /// the search is repeated now if its raise is due.
    pub(super) fn on_data(&mut self, now: Instant) {
        if self.phase != Phase::Searched {
            return;
        }
        if self.raise_at.is_some_and(|t| now >= t) {
            self.raise_at = None;
            self.next_at = Some(now);
        } else if self.proven > PMTU_BASE && self.confirm_at.is_none() {
            self.confirm_at = Some(now + CONFIRM_INTERVAL);
        }
    }

    /// Data on the path went unanswered: probe the proven size again at once, unless it is
    /// the base (nothing smaller to fall back to) or a probe already runs.
    pub(super) fn validate(&mut self, now: Instant) {
        if self.phase == Phase::Searched && self.proven > PMTU_BASE {
            self.phase = Phase::Validating;
            self.probe = None;
            self.next_at = Some(now);
            self.confirm_at = None;
        }
    }

    /// When [`PmtuSearch::poll`] has something to do.
    pub(super) fn deadline(&self, srtt: Option<Duration>) -> Option<Instant> {
        match self.probe {
            Some(p) => Some(p.sent + probe_timeout(srtt)),
            None => match (self.next_at, self.confirm_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }

    /// Runs the search at `now`: accounts a probe whose ack is overdue as lost and returns the
    /// next probe to send, as (size, sequence number), if one is due.
    pub(super) fn poll(&mut self, srtt: Option<Duration>, now: Instant) -> Option<(u16, u32)> {
        if let Some(p) = self.probe {
            if now < p.sent + probe_timeout(srtt) {
                return None;
            }
            let lost = p.lost + 1;
            if lost < MAX_PROBES {
                return Some(self.send(p.size, lost, now));
            }
            self.probe = None;
            self.on_too_big(p.size);
            self.next_at = Some(now);
        }
        if self.phase == Phase::Searched && self.confirm_at.is_some_and(|t| now >= t) {
            self.validate(now);
        }
        if self.next_at.is_none_or(|t| now < t) {
            return None;
        }
        let size = match self.phase {
            Phase::Disabled => return None,
            Phase::Validating => self.proven,
            Phase::Searched => {
                // Time to look for a larger MTU.
                self.restart(now);
                self.candidate(now)?
            }
            Phase::Searching => self.candidate(now)?,
        };
        Some(self.send(size, 0, now))
    }

    /// A probe of `size` could not even be built (the driver's buffer is smaller).
    pub(super) fn unsendable(&mut self, size: u16, now: Instant) {
        if self.probe.is_some_and(|p| p.size == size) {
            self.probe = None;
            self.on_too_big(size);
            self.next_at = Some(now);
        }
    }

    /// The ack of MTU probe `seq` arrived.
    pub(super) fn on_ack(&mut self, seq: u32, now: Instant) {
        let Some(p) = self.probe.filter(|p| p.seq == seq) else {
            return; // a late ack of a probe already given up, or a duplicate
        };
        self.probe = None;
        if self.phase == Phase::Validating {
            // Confirmed: back to waiting for data.
            self.phase = Phase::Searched;
            self.next_at = None;
            return;
        }
        self.proven = p.size;
        self.next_at = Some(now);
    }

    /// The UDP payload length of a probe of `size`.
    pub(super) fn datagram_len(&self, size: u16) -> usize {
        usize::from(size.saturating_sub(self.overhead))
    }

    fn on_too_big(&mut self, size: u16) {
        if self.phase == Phase::Validating {
            // The proven size stopped passing: fall back and search below it.
            self.proven = PMTU_BASE.min(self.link_mtu);
            self.known = true;
            self.phase = Phase::Searching;
        }
        self.too_big = self.too_big.min(size);
    }

    /// The next size to try, or `None` when the search is done (then it sleeps until the
    /// next raise).
    fn candidate(&mut self, now: Instant) -> Option<u16> {
        if self.too_big <= self.proven.saturating_add(GRANULARITY) {
            self.phase = Phase::Searched;
            self.known = true;
            self.raise_at = Some(now + RAISE_INTERVAL);
            self.next_at = None;
            return None;
        }
        Some(if self.too_big > self.link_mtu {
            self.link_mtu
        } else {
            self.proven + (self.too_big - self.proven) / 2
        })
    }

    fn send(&mut self, size: u16, lost: u8, now: Instant) -> (u16, u32) {
        let seq = SEQ_BIT | (self.next_seq & !SEQ_BIT);
        self.next_seq = self.next_seq.wrapping_add(1);
        self.probe = Some(Outstanding {
            size,
            seq,
            sent: now,
            lost,
        });
        self.next_at = None;
        (size, seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::ZERO + Duration::from_millis(ms)
    }

    /// Runs the search against a path that carries `path_mtu`, acking at once, until it
    /// settles; returns the sizes probed.
    fn search(s: &mut PmtuSearch, path_mtu: u16, mut now: u64) -> Vec<u16> {
        let mut sizes = Vec::new();
        for _ in 0..64 {
            match s.poll(None, at(now)) {
                Some((size, seq)) => {
                    sizes.push(size);
                    if size <= path_mtu {
                        s.on_ack(seq, at(now + 10));
                        now += 10;
                    }
                }
                None => match s.deadline(None) {
                    Some(t) if s.probe.is_some() => now = t.as_duration().as_millis() as u64,
                    _ => return sizes,
                },
            }
        }
        panic!("the search never settled: {sizes:?}");
    }

    #[test]
    fn nothing_is_probed_before_the_interface_mtu_is_known() {
        let mut s = PmtuSearch::new();
        assert_eq!(s.poll(None, at(0)), None);
        assert_eq!(s.mtu(), None);
        assert_eq!(s.deadline(None), None);
    }

    #[test]
    fn a_path_that_carries_the_interface_mtu_is_proven_with_one_probe() {
        let mut s = PmtuSearch::new();
        s.set_link(1500, 28, at(0));
        assert_eq!(s.mtu(), None, "unknown while the first search runs");
        assert_eq!(search(&mut s, 1500, 0), vec![1500]);
        assert_eq!(s.mtu(), Some(1500));
        assert_eq!(s.deadline(None), None, "a searched idle path arms no timer");
    }

    #[test]
    fn a_smaller_path_mtu_is_found_within_the_granularity_in_a_few_probes() {
        let mut s = PmtuSearch::new();
        s.set_link(1500, 28, at(0));
        let sizes = search(&mut s, 1400, 0);
        let mtu = s.mtu().unwrap();
        assert!((1400 - GRANULARITY..=1400).contains(&mtu), "found {mtu}");
        // Each failed size costs MAX_PROBES probes; a binary search over 220 bytes to 16 is
        // four halvings.
        assert!(sizes.len() <= 10, "probed {sizes:?}");
        assert!(sizes.iter().filter(|&&s| s > 1400).count() >= 2);
    }

    #[test]
    fn a_lost_probe_is_retried_once_before_its_size_counts_as_too_big() {
        let mut s = PmtuSearch::new();
        s.set_link(1500, 28, at(0));
        let (size, _) = s.poll(None, at(0)).unwrap();
        assert_eq!(s.poll(None, at(499)), None);
        let (again, _) = s.poll(None, at(500)).unwrap();
        assert_eq!((size, again), (1500, 1500));
        let (next, _) = s.poll(None, at(1000)).unwrap();
        assert_eq!(next, PMTU_BASE + (1500 - PMTU_BASE) / 2);
    }

    #[test]
    fn mtu_probes_use_their_own_sequence_space() {
        let mut s = PmtuSearch::new();
        s.set_link(1500, 28, at(0));
        let (_, seq) = s.poll(None, at(0)).unwrap();
        assert_ne!(seq & SEQ_BIT, 0);
        // An ack of another sequence number proves nothing.
        s.on_ack(seq & !SEQ_BIT, at(5));
        assert_eq!(s.poll(None, at(6)), None, "still waiting for its own ack");
        s.on_ack(seq, at(7));
        assert_eq!(s.poll(None, at(8)), None);
        assert_eq!(s.mtu(), Some(1500));
    }

    #[test]
    fn a_proven_size_that_stops_passing_falls_back_and_is_searched_again() {
        let mut s = PmtuSearch::new();
        s.set_link(1500, 28, at(0));
        search(&mut s, 1500, 0);
        s.validate(at(100));
        // The path shrank to 1300: the re-probe of 1500 is lost twice.
        let sizes = search(&mut s, 1300, 100);
        assert_eq!(&sizes[..2], &[1500, 1500]);
        let mtu = s.mtu().unwrap();
        assert!((1300 - GRANULARITY..=1300).contains(&mtu), "found {mtu}");
    }

    #[test]
    fn a_finished_search_looks_for_a_larger_mtu_with_data_after_the_raise_interval() {
        let mut s = PmtuSearch::new();
        s.set_link(1500, 28, at(0));
        search(&mut s, 1400, 0);
        // No timer: the raise waits for data at least RAISE_INTERVAL after the search.
        assert_eq!(s.poll(None, at(100) + RAISE_INTERVAL * 2), None);
        s.on_data(at(100) + RAISE_INTERVAL * 2);
        let (size, _) = s.poll(None, at(100) + RAISE_INTERVAL * 2).unwrap();
        assert_eq!(size, 1500);
    }

    #[test]
    fn data_on_a_path_has_its_proven_size_confirmed_and_a_confirmed_size_stays() {
        let mut s = PmtuSearch::new();
        s.set_link(1500, 28, at(0));
        search(&mut s, 1500, 0);
        s.on_data(at(100));
        s.on_data(at(200));
        assert_eq!(s.deadline(None), Some(at(100) + CONFIRM_INTERVAL));
        let (size, seq) = s.poll(None, at(100) + CONFIRM_INTERVAL).unwrap();
        assert_eq!(size, 1500);
        s.on_ack(seq, at(5200));
        assert_eq!(s.mtu(), Some(1500));
        // The next confirmation waits for more data.
        assert_eq!(s.deadline(None), None);
    }

    #[test]
    fn an_idle_path_is_never_confirmed() {
        let mut s = PmtuSearch::new();
        s.set_link(1500, 28, at(0));
        search(&mut s, 1500, 0);
        assert_eq!(s.poll(None, at(100) + CONFIRM_INTERVAL * 10), None);
    }

    #[test]
    fn an_interface_mtu_change_restarts_the_search_below_it() {
        let mut s = PmtuSearch::new();
        s.set_link(1500, 28, at(0));
        search(&mut s, 1500, 0);
        s.set_link(1400, 28, at(50));
        assert_eq!(s.mtu(), None);
        assert_eq!(search(&mut s, 1500, 50), vec![1400]);
        assert_eq!(s.mtu(), Some(1400));
        // The same values again change nothing.
        s.set_link(1400, 28, at(60));
        assert_eq!(s.mtu(), Some(1400));
    }
}
