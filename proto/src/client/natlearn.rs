//! Learning how long a path's NAT keeps an idle binding, so keepalives are as rare as it allows.
//!
//! A keepalive exists only to keep the NAT binding between the phone and the anchor; sending
//! it more often than the NAT forgets costs radio wake-ups for nothing, sending it less often
//! costs the binding. The learner starts at the configured keepalive (25 s, safe behind every
//! common NAT) and, each time an idle keepalive after a silence of `gap` comes back on the same
//! binding, tries a longer interval next time (a quarter longer, at least 5 s), up to the
//! configured maximum. When the anchor challenges the path instead (it saw the keepalive come
//! from a new source address: the NAT had forgotten the binding and made a new one), the
//! binding is known to last less than `gap`: the interval falls back at once to the longest
//! one that worked, and never again climbs above `gap` minus a margin.
//!
//! A lost binding costs one round trip (the anchor's challenge), during which the path's
//! downlink goes to the old address; the margin keeps that rare. Pure: fed gaps, holds
//! durations.
//!
//! # Testing with a disposable socket
//! With [`ClientConfig::nat_probe`](super::ClientConfig::nat_probe) (a driver that can open a
//! second socket on the path's interface), the main binding is never used to test an interval:
//! [`NatTest`] tests a longer interval `T` on a second, disposable binding of the same path,
//! and the main keepalive only ever moves to an interval that binding was seen to survive:
//! 1. with an idle keepalive of the path (one radio wake-up), a fresh socket sends a
//!    `NatRegister` to the anchor, which notes its source address for this path without
//!    taking it for the path's address, and answers with a `NatRegistered` carrying a nonce;
//!    a second registration [`NAT_WARM_GAP`] later makes the binding look like the main one to
//!    NATs that keep a binding longer once it carried traffic both ways for a few seconds
//!    (Linux conntrack: `nf_conntrack_udp_timeout` 30 s before, `..._stream` 120 s after);
//! 2. `T` after the last registration, the path itself sends a `NatRequest` with the nonce and
//!    the anchor sends one `NatReply` to the noted address;
//! 3. a reply on the test socket within the reply wait means the NAT kept that binding idle
//!    for `T`: the main keepalive may rise to `T` minus a margin. No reply twice in a row
//!    means the binding lasts less than `T`: the next tests bisect between what held and what
//!    was lost, and stop once the two are within [`STEP_MIN`] of each other.
//!
//! A test runs only while the path owes keepalives (it carries flows) and is idle; none runs
//! once the interval is learned, so a settled phone pays nothing for it. When the main binding
//! is lost anyway (the NAT shortened its timeout), the challenge path above still falls back
//! at once and learning starts over below the loss.

use super::paths::{Idle, PathState};
use super::{Client, Queued};
use crate::control::{ControlMessage, NAT_TOKEN_LEN};
use crate::time::Instant;
use crate::timer::{Timer, TimerTable};
use crate::wire::{Kind, TransportHeader, TransportRepr};
use crate::{DropReason, HEADER_LEN, PathId, TAG_LEN};
use core::time::Duration;

/// The second registration of a test follows the first by this long (see the module docs).
pub const NAT_WARM_GAP: Duration = Duration::from_secs(3);
/// The shortest wait for an answer on the test socket; longer on a slow path (four SRTTs).
pub const NAT_REPLY_WAIT: Duration = Duration::from_secs(1);
/// Test-socket datagrams waiting for `poll_nat_transmit`.
const MAX_NAT_QUEUED: usize = 16;

/// The smallest step up and the smallest margin below a binding lifetime seen to fail.
const STEP_MIN: Duration = Duration::from_secs(5);

/// One path's keepalive interval and what is known of its NAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepaliveLearner {
    base: Duration,
    max: Duration,
    /// The interval to wait before the next idle keepalive.
    interval: Duration,
    /// The longest silence seen to keep the binding.
    held: Duration,
    /// The shortest silence seen to lose it.
    lost: Option<Duration>,
    /// Tested on a disposable socket: the main keepalives only keep the binding.
    probe: bool,
    /// A test of this interval failed once: tried again before it counts.
    doubt: Option<Duration>,
}

/// A margin below a silence seen to hold or fail.
fn margin(d: Duration) -> Duration {
    (d / 10).max(STEP_MIN)
}

impl KeepaliveLearner {
    /// Starts at `base` (the configured keepalive) and never goes above `max` (nor below
    /// `base` unless a binding was lost sooner).
    pub fn new(base: Duration, max: Duration) -> Self {
        KeepaliveLearner {
            base,
            max: max.max(base),
            interval: base,
            held: Duration::ZERO,
            lost: None,
            probe: false,
            doubt: None,
        }
    }

    /// Like [`KeepaliveLearner::new`], learning from tests on a disposable socket instead of
    /// the main keepalives (see the module docs).
    pub fn probing(base: Duration, max: Duration) -> Self {
        KeepaliveLearner {
            probe: true,
            ..Self::new(base, max)
        }
    }

    /// The silence the next disposable-socket test should try; `None` when there is nothing
    /// left to learn (or learning uses the main keepalives).
    pub fn candidate(&self) -> Option<Duration> {
        if !self.probe || self.interval >= self.ceiling() {
            return None;
        }
        let known = self.held.max(self.interval);
        let mut c = known + (known / 4).max(STEP_MIN);
        c = c.min(self.max + margin(self.max));
        if let Some(lost) = self.lost {
            if lost <= known + STEP_MIN {
                return None;
            }
            c = c.min(known + (lost - known) / 2);
        }
        if let Some(d) = self.doubt {
            c = d;
        }
        (c > known).then_some(c)
    }

    /// Whether it still tests longer intervals.
    pub fn learning(&self) -> bool {
        self.candidate().is_some()
    }

    /// A disposable binding stayed idle for `gap` and kept working: the main keepalive may
    /// rise to a margin below it.
    pub fn probe_held(&mut self, gap: Duration) {
        self.held = self.held.max(gap);
        if self.doubt.is_some_and(|d| d <= gap) {
            self.doubt = None;
        }
        let next = gap.saturating_sub(margin(gap)).min(self.ceiling());
        self.interval = self.interval.max(next);
    }

    /// A disposable binding idle for `gap` got no reply. Counts from the second time in a
    /// row: a lost datagram must not cap the interval for good.
    pub fn probe_lost(&mut self, gap: Duration) {
        match self.doubt {
            Some(d) if gap + STEP_MIN / 5 >= d => {}
            _ => {
                self.doubt = Some(gap);
                return;
            }
        }
        self.doubt = None;
        if gap <= self.held {
            // It held this long before: the NAT changed. Learn again below the loss.
            self.held = Duration::ZERO;
        }
        self.lost = Some(self.lost.map_or(gap, |l| l.min(gap)));
        self.interval = self
            .interval
            .min(self.ceiling())
            .max(Duration::from_secs(1));
    }

    /// The interval before the next idle keepalive.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The shortest silence seen to lose the binding, if any.
    pub fn lost(&self) -> Option<Duration> {
        self.lost
    }

    /// The highest interval allowed now: the maximum, or a margin below a lifetime seen to fail.
    fn ceiling(&self) -> Duration {
        match self.lost {
            Some(lost) => self.max.min(lost.saturating_sub((lost / 10).max(STEP_MIN))),
            None => self.max,
        }
    }

    /// An idle keepalive sent after `gap` of silence on the path was answered on the same
    /// binding: try longer next time.
    pub fn binding_held(&mut self, gap: Duration) {
        if self.probe {
            // Only disposable bindings test longer intervals.
            return;
        }
        // Only a silence at least as long as the interval tested anything new.
        if gap + STEP_MIN / 5 < self.interval {
            return;
        }
        self.held = self.held.max(gap);
        let next = self.interval + (self.interval / 4).max(STEP_MIN);
        self.interval = next.min(self.ceiling());
    }

    /// The anchor saw a keepalive sent after `gap` of silence arrive from a new address: the
    /// NAT forgot the binding within `gap`. Falls back at once.
    pub fn binding_lost(&mut self, gap: Duration) {
        if self.held >= gap {
            // A silence this long held before: the NAT changed (or the path now crosses another
            // one). What was learned is void: start again from the base, below this loss.
            self.held = Duration::ZERO;
            self.lost = Some(gap);
            self.doubt = None;
            self.interval = self.base.min(self.ceiling()).max(Duration::from_secs(1));
            return;
        }
        self.lost = Some(self.lost.map_or(gap, |l| l.min(gap)));
        let ceiling = self.ceiling();
        let fallback = if self.held.is_zero() {
            ceiling
        } else {
            self.held.min(ceiling)
        };
        self.interval = self.interval.min(fallback).max(Duration::from_secs(1));
    }
}

/// Where a disposable-socket test stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Registration `n` (1 or 2) went out; its answer is awaited until `deadline`.
    Registering {
        n: u8,
        at: Instant,
        deadline: Instant,
    },
    /// The first registration was answered; the second goes out at `at`.
    Warming { at: Instant },
    /// Registered by the registration sent at `since`; the request goes out at `since + T`.
    Registered {
        since: Instant,
        nonce: [u8; NAT_TOKEN_LEN],
    },
    /// The request went out at `at`; the reply is awaited until `deadline`.
    Requested {
        since: Instant,
        at: Instant,
        deadline: Instant,
        nonce: [u8; NAT_TOKEN_LEN],
    },
}

/// One test of a path's NAT binding lifetime on a disposable socket (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct NatTest {
    token: [u8; NAT_TOKEN_LEN],
    /// The silence tested.
    target: Duration,
    stage: Stage,
}

/// What a test asks of the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NatStep {
    Nothing,
    /// Send a registration on the test socket (a new socket when `fresh`).
    Register {
        fresh: bool,
    },
    /// Send the request on the path.
    Request([u8; NAT_TOKEN_LEN]),
    /// Over: the binding held for this silence.
    Held(Duration),
    /// Over: no reply after this silence.
    Lost(Duration),
    /// Over without a result (no answer to a registration).
    Abandoned,
}

impl NatTest {
    /// A test of `target` whose first registration goes out now.
    pub(super) fn start(
        token: [u8; NAT_TOKEN_LEN],
        target: Duration,
        now: Instant,
        wait: Duration,
    ) -> Self {
        NatTest {
            token,
            target,
            stage: Stage::Registering {
                n: 1,
                at: now,
                deadline: now + wait,
            },
        }
    }

    pub(super) fn token(&self) -> [u8; NAT_TOKEN_LEN] {
        self.token
    }

    /// When it must be looked at again.
    pub(super) fn deadline(&self) -> Instant {
        match self.stage {
            Stage::Registering { deadline, .. } | Stage::Requested { deadline, .. } => deadline,
            Stage::Warming { at } => at,
            Stage::Registered { since, .. } => since + self.target,
        }
    }

    /// Its deadline came.
    pub(super) fn on_timeout(&mut self, now: Instant, wait: Duration) -> NatStep {
        if now < self.deadline() {
            return NatStep::Nothing;
        }
        match self.stage {
            Stage::Registering { .. } => NatStep::Abandoned,
            Stage::Warming { .. } => {
                self.stage = Stage::Registering {
                    n: 2,
                    at: now,
                    deadline: now + wait,
                };
                NatStep::Register { fresh: false }
            }
            Stage::Registered { since, nonce } => {
                self.stage = Stage::Requested {
                    since,
                    at: now,
                    deadline: now + wait,
                    nonce,
                };
                NatStep::Request(nonce)
            }
            Stage::Requested { since, at, .. } => {
                NatStep::Lost(at.saturating_duration_since(since))
            }
        }
    }

    /// The anchor answered a registration on the test socket.
    pub(super) fn on_registered(
        &mut self,
        token: [u8; NAT_TOKEN_LEN],
        nonce: [u8; NAT_TOKEN_LEN],
        now: Instant,
    ) -> NatStep {
        let Stage::Registering { n, at, .. } = self.stage else {
            return NatStep::Nothing;
        };
        if token != self.token {
            return NatStep::Nothing;
        }
        self.stage = if n == 1 {
            Stage::Warming {
                at: at.max(now) + NAT_WARM_GAP,
            }
        } else {
            Stage::Registered { since: at, nonce }
        };
        NatStep::Nothing
    }

    /// The anchor's reply arrived on the test socket.
    pub(super) fn on_reply(&mut self, nonce: [u8; NAT_TOKEN_LEN]) -> NatStep {
        match self.stage {
            Stage::Requested {
                since,
                at,
                nonce: expected,
                ..
            } if nonce == expected => NatStep::Held(at.saturating_duration_since(since)),
            _ => NatStep::Nothing,
        }
    }
}

/// A datagram for a path's disposable test socket, from [`Client::poll_nat_transmit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatTransmit {
    /// The path whose interface (mark, bind) the socket uses.
    pub path: PathId,
    /// Send it from a new socket (close the path's old test socket, if any): a new test
    /// needs a new NAT binding.
    pub fresh: bool,
    /// The datagram's length in the caller's buffer.
    pub len: usize,
}

impl Client {
    /// Starts a test on the path at `i` if it learns on a disposable socket, owes keepalives
    /// and has something left to learn. Called as an idle keepalive goes out on it, so the
    /// registration shares that radio wake-up.
    pub(super) fn maybe_start_nat_test(&mut self, i: usize, now: Instant) {
        if !self.config.nat_probe {
            return;
        }
        let wait = self.nat_wait(i);
        let seed = self.rng;
        let p = &mut self.paths[i];
        if p.nat_test.is_some() || p.state != PathState::Up || p.idle() != Idle::Keepalive {
            return;
        }
        let Some(target) = p.learner().and_then(KeepaliveLearner::candidate) else {
            return;
        };
        let token = crate::cookie::random_bytes::<NAT_TOKEN_LEN>(seed ^ micros_of(now));
        p.nat_test = Some(NatTest::start(token, target, now, wait));
        let id = p.id;
        self.push_nat(id, ControlMessage::NatRegister { token }, true);
    }

    /// How long the test socket waits for an answer on the path at `i`.
    fn nat_wait(&self, i: usize) -> Duration {
        self.paths[i]
            .srtt()
            .map_or(NAT_REPLY_WAIT, |s| (s * 4).max(NAT_REPLY_WAIT))
    }

    fn push_nat(&mut self, path: PathId, msg: ControlMessage, fresh: bool) {
        if self.nat_queue.len() < MAX_NAT_QUEUED {
            self.nat_queue.push_back((path, msg, fresh));
        }
    }

    /// The deadlines of the running tests.
    pub(super) fn nat_timers(&self, timers: &mut TimerTable) {
        for p in &self.paths {
            if let Some(t) = &p.nat_test {
                timers.set_earliest(Timer::NatTest, t.deadline());
            }
        }
    }

    /// Runs the tests whose deadline came.
    pub(super) fn nat_timeouts(&mut self, now: Instant) {
        for i in 0..self.paths.len() {
            let wait = self.nat_wait(i);
            let p = &mut self.paths[i];
            let Some(t) = &mut p.nat_test else { continue };
            let mut step = t.on_timeout(now, wait);
            // The request needs the path, and a path without flows owes no keepalive to learn.
            if matches!(step, NatStep::Request(_) | NatStep::Register { .. })
                && (p.state != PathState::Up || p.idle() != Idle::Keepalive)
            {
                step = NatStep::Abandoned;
            }
            self.apply_nat_step(i, step);
        }
    }

    fn apply_nat_step(&mut self, i: usize, step: NatStep) {
        let p = &mut self.paths[i];
        let id = p.id;
        match step {
            NatStep::Nothing => {}
            NatStep::Register { fresh } => {
                if let Some(token) = p.nat_test.as_ref().map(NatTest::token) {
                    self.push_nat(id, ControlMessage::NatRegister { token }, fresh);
                }
            }
            NatStep::Request(nonce) => {
                // A full queue fails this test; the next one retries.
                let _ = self.queues.push_transmit(Queued::Reply {
                    path: id,
                    msg: ControlMessage::NatRequest { nonce },
                });
            }
            NatStep::Held(gap) => {
                p.nat_test = None;
                p.nat_tests_held += 1;
                p.learn_from_test(|l| l.probe_held(gap));
            }
            NatStep::Lost(gap) => {
                p.nat_test = None;
                p.nat_tests_lost += 1;
                p.learn_from_test(|l| l.probe_lost(gap));
            }
            NatStep::Abandoned => p.nat_test = None,
        }
    }

    /// The next datagram for a path's disposable test socket, written into `buf` (at least
    /// 1500 bytes is always enough). Drain it like [`Client::poll_transmit`].
    pub fn poll_nat_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<NatTransmit> {
        while let Some((path, msg, fresh)) = self.nat_queue.pop_front() {
            if self.keys_expired || self.path(path).is_none() {
                continue;
            }
            let Some(keys) = self.current.as_mut() else {
                continue;
            };
            let Some(body) = buf.get_mut(HEADER_LEN..HEADER_LEN + msg.buffer_len() + TAG_LEN)
            else {
                continue;
            };
            let Ok(n) = msg.emit(body) else { continue };
            if let Ok(len) = keys.seal(Kind::Control, path, buf, n) {
                return Some(NatTransmit { path, fresh, len });
            }
        }
        None
    }

    /// A datagram that arrived on `path`'s disposable test socket. Only the anchor's answers
    /// to a running test are accepted; nothing here counts as news from the path itself.
    pub fn handle_nat_datagram(
        &mut self,
        path: PathId,
        datagram: &mut [u8],
        now: Instant,
    ) -> Result<(), DropReason> {
        let r = self.handle_nat_datagram_inner(path, datagram, now);
        if let Err(reason) = r {
            self.drops.add(reason);
        }
        r
    }

    fn handle_nat_datagram_inner(
        &mut self,
        path: PathId,
        datagram: &mut [u8],
        now: Instant,
    ) -> Result<(), DropReason> {
        let h = TransportHeader::new_checked(&*datagram)?;
        let repr = TransportRepr::parse(&h)?;
        if repr.kind != Kind::Control {
            return Err(DropReason::UnknownKind);
        }
        let idx = repr.receiver_index;
        let keys = match (&mut self.current, &mut self.previous) {
            (Some(k), _) if k.local_index == idx => k,
            (_, Some(k)) if k.local_index == idx => k,
            _ => return Err(DropReason::UnknownSession),
        };
        if now.saturating_duration_since(keys.created) >= self.config.reject_after {
            return Err(DropReason::Expired);
        }
        let range = keys.open(repr.counter, datagram)?;
        let msg = ControlMessage::parse(&datagram[range])?;
        let Some(i) = self.paths.iter().position(|p| p.id == path) else {
            return Ok(());
        };
        let Some(t) = &mut self.paths[i].nat_test else {
            return Ok(());
        };
        let step = match msg {
            ControlMessage::NatRegistered { token, nonce } => t.on_registered(token, nonce, now),
            ControlMessage::NatReply { nonce } => t.on_reply(nonce),
            _ => NatStep::Nothing,
        };
        self.apply_nat_step(i, step);
        Ok(())
    }

    /// Whether `path` still tests longer keepalive intervals on a disposable socket; `None`
    /// without learning, or while it owes no keepalives (no flows: nothing is tested).
    pub fn path_keepalive_learning(&self, path: PathId) -> Option<bool> {
        let p = self.path(path).filter(|p| p.idle() == Idle::Keepalive)?;
        p.learner().map(KeepaliveLearner::learning)
    }

    /// Disposable-socket tests of `path` that held and that got no reply, so far.
    pub fn path_nat_tests(&self, path: PathId) -> Option<(u64, u64)> {
        self.path(path)
            .map(|p| (p.nat_tests_held, p.nat_tests_lost))
    }
}

fn micros_of(now: Instant) -> u64 {
    super::paths::micros(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn held_bindings_raise_the_interval_up_to_the_maximum() {
        let mut l = KeepaliveLearner::new(S(25), S(120));
        let mut seen = vec![l.interval()];
        for _ in 0..20 {
            l.binding_held(l.interval());
            seen.push(l.interval());
        }
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        assert_eq!(l.interval(), S(120));
    }

    #[test]
    fn a_lost_binding_falls_back_to_what_held_and_caps_below_the_loss() {
        let mut l = KeepaliveLearner::new(S(25), S(600));
        while l.interval() < S(60) {
            l.binding_held(l.interval());
        }
        let failed = l.interval();
        let held_before = {
            let mut probe = KeepaliveLearner::new(S(25), S(600));
            let mut last = probe.interval();
            while probe.interval() < failed {
                last = probe.interval();
                probe.binding_held(last);
            }
            last
        };
        l.binding_lost(failed);
        assert_eq!(l.interval(), held_before);
        for _ in 0..20 {
            l.binding_held(l.interval());
        }
        assert!(l.interval() < failed, "{:?} >= {failed:?}", l.interval());
        assert!(
            l.interval() + S(10) >= failed,
            "too cautious: {:?}",
            l.interval()
        );
    }

    #[test]
    fn a_loss_where_a_binding_held_before_starts_over_from_the_base() {
        let mut l = KeepaliveLearner::new(S(25), S(600));
        for _ in 0..10 {
            l.binding_held(l.interval());
        }
        let long = l.interval();
        assert!(long > S(60));
        l.binding_held(long);
        l.binding_lost(long);
        assert_eq!(l.interval(), S(25));
        assert_eq!(l.lost(), Some(long));
    }

    #[test]
    fn a_short_silence_teaches_nothing() {
        let mut l = KeepaliveLearner::new(S(25), S(120));
        l.binding_held(S(3));
        assert_eq!(l.interval(), S(25));
    }

    #[test]
    fn a_binding_lost_below_the_base_interval_goes_below_it() {
        let mut l = KeepaliveLearner::new(S(25), S(120));
        l.binding_lost(S(20));
        assert_eq!(l.interval(), S(15));
    }

    #[test]
    fn disposable_tests_bisect_toward_the_lifetime_and_then_stop() {
        let nat = S(100);
        let mut l = KeepaliveLearner::probing(S(25), S(300));
        let mut tests = 0;
        while let Some(t) = l.candidate() {
            tests += 1;
            assert!(tests < 40, "never settles: {l:?}");
            if t <= nat {
                l.probe_held(t);
            } else {
                l.probe_lost(t);
            }
            assert!(l.interval() < nat, "{l:?}");
        }
        assert!(l.interval() + S(20) >= nat, "too cautious: {l:?}");
        assert!(!l.learning());
    }

    #[test]
    fn one_unanswered_test_is_tried_again_before_it_caps_anything() {
        let mut l = KeepaliveLearner::probing(S(25), S(300));
        let t = l.candidate().unwrap();
        l.probe_lost(t);
        assert_eq!(l.lost(), None);
        assert_eq!(l.candidate(), Some(t));
        l.probe_held(t);
        assert!(l.interval() > S(25));
        let next = l.candidate().unwrap();
        assert!(next > t);
    }

    #[test]
    fn main_keepalives_teach_nothing_when_disposable_sockets_test() {
        let mut l = KeepaliveLearner::probing(S(25), S(300));
        for _ in 0..10 {
            l.binding_held(l.interval());
        }
        assert_eq!(l.interval(), S(25));
    }
}
