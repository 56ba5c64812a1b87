//! The client's paths: liveness, probing, RTT and loss, hold-down.

use super::natlearn::KeepaliveLearner;
use super::pmtu::PmtuSearch;
use super::signals::SignalBody;
use super::{Client, Event, Queued};
use crate::PathId;
use crate::time::Instant;
use crate::timer::{Timer, TimerTable};
use core::time::Duration;

/// An idle keepalive that refreshes the session's keys comes this long before they expire at
/// the latest: time for the rekey's retries (`REKEY_TIMEOUT` each).
pub const KEY_MARGIN: Duration = Duration::from_secs(15);

/// The shortest silence after data that makes a path suspect (see [`suspect_after`]).
pub const SUSPECT_FLOOR: Duration = Duration::from_millis(150);
/// Probes sent at once to a suspect path.
pub const SUSPECT_BURST: usize = 2;
/// The shortest wait for a suspect path's burst to be answered before it is Down.
pub const BURST_TIMEOUT_FLOOR: Duration = Duration::from_millis(250);

/// How long a path may stay silent after data went out on it before it is suspect: three
/// smoothed RTTs (a reply to the data, or to the probes between, is due well within that:
/// TCP acks at least every other segment, the anchor answers every probe), and never less
/// than [`SUSPECT_FLOOR`], so an RTT measured on an idle, uncongested path does not make a
/// short queueing spike look like a blackhole. Unmeasured paths use the floor.
pub fn suspect_after(srtt: Option<Duration>) -> Duration {
    srtt.map_or(SUSPECT_FLOOR, |s| (s * 3).max(SUSPECT_FLOOR))
}

/// How long a suspect path's probe burst may stay unanswered before the path is Down: four
/// smoothed RTTs, at least [`BURST_TIMEOUT_FLOOR`]. Larger than [`suspect_after`] because a
/// path whose queue just filled (a bulk upload) answers late, not never, and declaring it
/// Down moves its flows for a whole hold-down.
pub fn burst_timeout(srtt: Option<Duration>) -> Duration {
    srtt.map_or(BURST_TIMEOUT_FLOOR, |s| (s * 4).max(BURST_TIMEOUT_FLOOR))
}

/// Liveness of a path as the probes see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PathState {
    /// Its probes are answered.
    Up,
    /// A probe went unanswered for `path_timeout`, or nothing arrived on it yet.
    Down,
}

/// What a path sends while the session is idle; the driver says which, from the flows it
/// carries (see [`Client::set_path_idle`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Idle {
    /// Keepalives as often as its NAT binding needs (`keepalive`, or what was learned): it
    /// carries flows, or would take them over when another path fails, and their downlink must
    /// find the binding still open.
    #[default]
    Keepalive,
    /// One liveness check per `flowless_keepalive`: the session carries no flows at all, so a
    /// binding the NAT forgot costs only a path challenge (one round trip) on the next flow.
    Check,
    /// Nothing, idle or active: an uplink its owner put to sleep (`idle = "sleep"`) that
    /// carries no flows. The first data sent on it wakes it and probes it at once; the anchor
    /// validates its new binding within a round trip.
    Sleep,
}

/// Measurements of one path.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PathStats {
    /// Liveness.
    pub state: PathState,
    /// Smoothed round-trip time of probes, once one was answered.
    pub rtt: Option<Duration>,
    /// Smoothed fraction of probes lost, 0.0..=1.0.
    pub loss: f32,
    /// When the last authenticated packet arrived on this path.
    pub last_rx: Option<Instant>,
    /// Datagrams sent / received on this path.
    pub tx_packets: u64,
    /// Authenticated datagrams received on this path.
    pub rx_packets: u64,
    /// What it sends while idle.
    pub idle: Idle,
    /// This path's address and port as the anchor last saw them (after NAT), from its
    /// probe answers; `None` until one said (older anchors never do).
    pub observed: Option<std::net::SocketAddr>,
    /// The largest outer IP packet this path was proven to carry (see [`super::pmtu`]);
    /// `None` until a search below the interface MTU the driver reported ended.
    pub mtu: Option<u16>,
}

pub(super) struct Path {
    pub(super) id: PathId,
    pub(super) state: PathState,
    /// When it last became Up.
    up_since: Option<Instant>,
    /// When the oldest probe not followed by any authenticated packet on this path was sent.
    unanswered_since: Option<Instant>,
    last_rx: Option<Instant>,
    pub(super) next_probe: Instant,
    next_seq: u32,
    /// The first probe sequence number not yet accounted as answered or lost.
    acked_upto: u32,
    srtt: Option<Duration>,
    loss: f32,
    pub(super) tx_packets: u64,
    rx_packets: u64,
    /// When anything was last sent on it (what keeps its NAT binding).
    last_tx: Option<Instant>,
    /// The idle keepalive outstanding, with the silence before it.
    idle_gap: Option<Duration>,
    /// Its learned keepalive interval, when learning is on.
    learner: Option<KeepaliveLearner>,
    /// The first data packet sent on it since its last authenticated packet.
    data_unanswered_since: Option<Instant>,
    /// When a burst of probes went out because data stayed unanswered (see the module docs
    /// of [`super`], "Fast detection while data flows").
    burst_at: Option<Instant>,
    idle: Idle,
    /// Its public endpoint as the anchor last reported it.
    pub(super) observed: Option<std::net::SocketAddr>,
    /// Its path MTU search.
    pub(super) pmtu: PmtuSearch,
    /// The disposable-socket test of its NAT running now.
    pub(super) nat_test: Option<super::natlearn::NatTest>,
    /// Finished tests whose binding held, and that got no reply.
    pub(super) nat_tests_held: u64,
    pub(super) nat_tests_lost: u64,
}

impl Path {
    pub(super) fn new(id: PathId, now: Instant) -> Self {
        Path {
            id,
            state: PathState::Down,
            up_since: None,
            unanswered_since: None,
            last_rx: None,
            next_probe: now,
            next_seq: 0,
            acked_upto: 0,
            srtt: None,
            loss: 0.0,
            tx_packets: 0,
            rx_packets: 0,
            last_tx: None,
            idle_gap: None,
            learner: None,
            idle: Idle::Keepalive,
            data_unanswered_since: None,
            burst_at: None,
            observed: None,
            pmtu: PmtuSearch::new(),
            nat_test: None,
            nat_tests_held: 0,
            nat_tests_lost: 0,
        }
    }

    /// Its smoothed RTT, once measured.
    pub(super) fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// Feeds a finished disposable-socket test to the learner; a lower interval applies to
    /// the keepalive already scheduled.
    pub(super) fn learn_from_test(&mut self, f: impl FnOnce(&mut KeepaliveLearner)) {
        let Some(l) = &mut self.learner else { return };
        f(l);
        let interval = l.interval();
        if let Some(sent) = self.last_tx
            && self.idle == Idle::Keepalive
        {
            self.next_probe = self.next_probe.min(sent + interval);
        }
    }

    /// A data packet went out on this path.
    pub(super) fn on_data_sent(&mut self, now: Instant) {
        self.data_unanswered_since.get_or_insert(now);
        self.pmtu.on_data(now);
    }

    /// When this path becomes suspect, if data went out unanswered and no burst runs.
    fn suspect_at(&self) -> Option<Instant> {
        match (self.state, self.burst_at) {
            (PathState::Up, None) => self
                .data_unanswered_since
                .map(|t| t + suspect_after(self.srtt)),
            _ => None,
        }
    }

    /// When this path is Down unless its burst is answered.
    fn burst_deadline(&self) -> Option<Instant> {
        match self.state {
            PathState::Up => self.burst_at.map(|t| t + burst_timeout(self.srtt)),
            PathState::Down => None,
        }
    }

    /// Learns this path's NAT binding lifetime with `learner`.
    pub(super) fn learning(mut self, learner: Option<KeepaliveLearner>) -> Self {
        self.learner = learner;
        self
    }

    /// What it sends while idle.
    pub(super) fn idle(&self) -> Idle {
        self.idle
    }

    /// A datagram went out on this path.
    pub(super) fn on_sent(&mut self, now: Instant) {
        self.tx_packets += 1;
        self.last_tx = Some(now);
    }

    /// The anchor challenged this path: it saw a new source address. After an idle keepalive
    /// that means the NAT forgot the binding during the silence before it.
    pub(super) fn on_challenge(&mut self) {
        if let (Some(gap), Some(l)) = (self.idle_gap.take(), &mut self.learner) {
            l.binding_lost(gap);
            // The next keepalive was scheduled at the interval that just failed.
            let interval = l.interval();
            if let Some(sent) = self.last_tx {
                self.next_probe = self.next_probe.min(sent + interval);
            }
        }
    }

    /// The idle keepalive interval of this path.
    fn keepalive(&self, base: Duration) -> Duration {
        self.learner
            .as_ref()
            .map_or(base, KeepaliveLearner::interval)
    }

    /// When this path sends its next idle probe, by its idle mode; `None`: never while idle.
    fn idle_interval(&self, config: &super::ClientConfig) -> Option<Duration> {
        let binding = self.keepalive(config.keepalive);
        match self.idle {
            Idle::Keepalive => Some(binding),
            Idle::Check => Some(binding.max(config.flowless_keepalive)),
            Idle::Sleep => None,
        }
    }

    /// When its next idle probe is owed, counted from the last thing it sent. A flowless check
    /// comes no later than the lazy rekey at `rekey_at`, which rides on it: keys left to expire
    /// unreplaced would drop the session.
    fn idle_due(&self, config: &super::ClientConfig, rekey_at: Option<Instant>) -> Option<Instant> {
        let interval = self.idle_interval(config)?;
        let due = self.meet_rekey(self.last_tx? + interval, interval, rekey_at);
        // A binding kept open is no use to downlink that finds the keys expired (or the anchor
        // gone silent on the session): with a keepalive longer than the keys' life after the
        // rekey mark, the last keepalive before they expire comes early and starts the rekey.
        // Never earlier than the rekey mark, so a keepalive of 45 s or less is never moved.
        Some(match (self.idle, rekey_at) {
            (Idle::Keepalive, Some(rekey)) => {
                // The keys were made at `rekey - rekey_after`; they expire `reject_after` later.
                let life = config.reject_after.saturating_sub(KEY_MARGIN);
                let latest = rekey + life.saturating_sub(config.rekey_after);
                due.min(latest)
            }
            _ => due,
        })
    }

    /// A flowless check due at `due` slips up to an eighth of its interval to meet a lazy
    /// rekey due just after it: one wake-up and one exchange instead of two. (A rekey due
    /// before the check rides on it anyway; with `flowless_keepalive` no longer than
    /// `rekey_after`, that is well within the keys' `reject_after`.)
    fn meet_rekey(&self, due: Instant, interval: Duration, rekey_at: Option<Instant>) -> Instant {
        match (self.idle, rekey_at) {
            (Idle::Check, Some(rekey)) if rekey > due && rekey <= due + interval / 8 => rekey,
            _ => due,
        }
    }

    /// Whether it waits for nothing but data: asleep, Up and no probe outstanding. A Down path
    /// asleep is still probed at the down pace, or a failover to it would find it unusable.
    fn dormant(&self) -> bool {
        self.idle == Idle::Sleep && self.state == PathState::Up && self.unanswered_since.is_none()
    }

    /// What was learned of this path's NAT, if learning is on.
    pub(super) fn learner(&self) -> Option<&KeepaliveLearner> {
        self.learner.as_ref()
    }

    /// The sequence number of the probe about to be sent.
    pub(super) fn next_probe_seq(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        seq
    }

    pub(super) fn on_probe_ack(&mut self, seq: u32, echo_us: u64, now: Instant) {
        if seq < self.acked_upto || seq >= self.next_seq {
            return; // stale duplicate, or an ack for a probe we never sent
        }
        // Probes skipped over by this ack are counted lost; capped so a long outage is one burst.
        let lost = (seq - self.acked_upto).min(16);
        for _ in 0..lost {
            self.loss = self.loss * 0.875 + 0.125;
        }
        self.loss *= 0.875;
        self.acked_upto = seq + 1;
        // Answered without a challenge first: the binding outlived the silence.
        if let (Some(gap), Some(l)) = (self.idle_gap.take(), &mut self.learner) {
            l.binding_held(gap);
        }
        let sample = Duration::from_micros(micros(now).saturating_sub(echo_us));
        self.srtt = Some(match self.srtt {
            None => sample,
            Some(s) => (s * 7 + sample) / 8,
        });
    }

    fn stats(&self) -> PathStats {
        PathStats {
            state: self.state,
            rtt: self.srtt,
            loss: self.loss,
            last_rx: self.last_rx,
            tx_packets: self.tx_packets,
            rx_packets: self.rx_packets,
            idle: self.idle,
            observed: self.observed,
            mtu: self.pmtu.mtu(),
        }
    }
}

/// `now` in microseconds since the clock's epoch, as probes carry it.
pub(super) fn micros(now: Instant) -> u64 {
    u64::try_from(now.as_duration().as_micros()).unwrap_or(u64::MAX)
}

impl Client {
    /// Whether the driver should put traffic on `path` now: it is Up, and it has been Up for
    /// `hold_down` unless no other path has (see the module docs).
    pub fn path_usable(&self, path: PathId, now: Instant) -> bool {
        let settled = |p: &Path| {
            p.state == PathState::Up
                && p.up_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= self.config.hold_down)
        };
        let Some(p) = self.path(path) else {
            return false;
        };
        p.state == PathState::Up
            && (settled(p) || !self.paths.iter().any(|o| o.id != path && settled(o)))
    }

    /// What `path` sends while idle (see [`Idle`]). New paths keep their NAT binding
    /// ([`Idle::Keepalive`]) until told otherwise. A path put to sleep sends nothing from its
    /// next probe on; one woken (or relaxed to a rarer check) reschedules its next probe from
    /// the last thing it sent.
    pub fn set_path_idle(&mut self, path: PathId, idle: Idle, now: Instant) {
        let rekey_at = self.rekey_at();
        let config = &self.config;
        let Some(p) = self.paths.iter_mut().find(|p| p.id == path) else {
            return;
        };
        if p.idle == idle {
            return;
        }
        let was_dormant = p.dormant();
        p.idle = idle;
        if p.state != PathState::Up || p.unanswered_since.is_some() {
            return;
        }
        if was_dormant {
            // Woken: its binding is as old as its sleep; find out now.
            p.next_probe = now;
        } else if let Some(due) = p.idle_due(config, rekey_at) {
            p.next_probe = due.max(now);
        }
    }

    /// The first data on an asleep path wakes it: a probe goes out with it, so the anchor
    /// validates the path's (probably new) NAT binding within a round trip.
    pub(super) fn wake_for_data(&mut self, path: PathId, now: Instant) {
        if let Some(p) = self.path_mut(path)
            && p.idle == Idle::Sleep
        {
            p.idle = Idle::Keepalive;
            p.next_probe = now;
        }
    }

    /// The interval between `path`'s idle packets in its idle mode now: its keepalive, or the
    /// flowless check; `None` while it is asleep.
    pub fn path_idle_interval(&self, path: PathId) -> Option<Duration> {
        self.path(path)?.idle_interval(&self.config)
    }

    /// The idle keepalive interval of `path` now (learned, or the configured one).
    pub fn path_keepalive(&self, path: PathId) -> Option<Duration> {
        self.path(path).map(|p| p.keepalive(self.config.keepalive))
    }

    /// The shortest silence seen to lose `path`'s NAT binding, when learning is on.
    pub fn path_binding_lost_after(&self, path: PathId) -> Option<Duration> {
        self.path(path)?.learner()?.lost()
    }

    /// Measurements of `path`, if the driver declared it up.
    pub fn path_stats(&self, path: PathId) -> Option<PathStats> {
        self.path(path).map(Path::stats)
    }

    pub(super) fn path(&self, id: PathId) -> Option<&Path> {
        self.paths.iter().find(|p| p.id == id)
    }

    pub(super) fn path_mut(&mut self, id: PathId) -> Option<&mut Path> {
        self.paths.iter_mut().find(|p| p.id == id)
    }

    pub(super) fn all_paths_down(&self) -> bool {
        !self.paths.is_empty() && self.paths.iter().all(|p| p.state == PathState::Down)
    }

    /// An authenticated packet arrived on `path`: it is alive.
    pub(super) fn on_authenticated(&mut self, path: PathId, now: Instant) {
        self.last_rx = Some(now);
        if let Some(p) = self.path_mut(path) {
            p.last_rx = Some(now);
            p.unanswered_since = None;
            p.data_unanswered_since = None;
            p.burst_at = None;
            p.rx_packets += 1;
            if p.state == PathState::Down {
                p.state = PathState::Up;
                p.up_since = Some(now);
                // The path that came back may run over another link or router.
                p.pmtu.restart(now);
                self.queues.push_event(Event::PathUp(path));
                self.signal(SignalBody::PathStatus { path, down: false }, now);
            }
        }
    }

    /// Data went through: probe every path at the active pace from now on.
    pub(super) fn note_activity(&mut self, now: Instant) {
        let was_active = self.is_active(now);
        self.last_activity = Some(now);
        if !was_active {
            let soon = now + self.config.probe_interval;
            for p in &mut self.paths {
                p.next_probe = p.next_probe.min(soon);
            }
        }
    }

    fn is_active(&self, now: Instant) -> bool {
        self.last_activity
            .is_some_and(|t| now.saturating_duration_since(t) < self.config.active_window)
    }

    /// When the lazy rekey is due, if none runs.
    fn rekey_at(&self) -> Option<Instant> {
        self.current
            .as_ref()
            .filter(|_| self.pending.is_none())
            .map(|k| k.created + self.config.rekey_after)
    }

    /// Probes at once every path of a new session (it measures them, and the first
    /// authenticated packet is what makes the anchor switch to it), or after a rekey only
    /// `rekeyed_on`, where the new keys are confirmed: the other paths keep their schedule and
    /// switch with their next packet. Asleep paths are left asleep.
    pub(super) fn probe_all_now(&mut self, rekeyed_on: Option<PathId>, now: Instant) {
        let interval = self.config.probe_interval;
        // A session without flows confirms its new keys with its next packet: the anchor has
        // nothing to send before it.
        let flowless = self.paths.iter().all(|p| p.idle != Idle::Keepalive);
        for i in 0..self.paths.len() {
            let p = &mut self.paths[i];
            if p.dormant() || rekeyed_on.is_some_and(|r| r != p.id || flowless) {
                continue;
            }
            p.next_probe = now + interval;
            let id = p.id;
            // A full queue only delays this probe to the next interval.
            let _ = self.queues.push_transmit(Queued::Probe(id));
        }
    }

    /// The probe and path-timeout deadlines.
    pub(super) fn path_timers(&self, timers: &mut TimerTable) {
        for p in &self.paths {
            if !p.dormant() {
                timers.set_earliest(Timer::Probe, p.next_probe);
            }
            if let (PathState::Up, Some(t)) = (p.state, p.unanswered_since) {
                timers.set_earliest(Timer::PathTimeout, t + self.config.path_timeout);
            }
            // Both exist only while data flows: an idle session arms neither.
            if let Some(t) = p.suspect_at() {
                timers.set_earliest(Timer::Probe, t);
            }
            if let Some(t) = p.burst_deadline() {
                timers.set_earliest(Timer::PathTimeout, t);
            }
            if p.state == PathState::Up
                && !p.dormant()
                && let Some(t) = p.pmtu.deadline(p.srtt)
            {
                timers.set_earliest(Timer::Probe, t);
            }
        }
    }

    /// The driver says `path` runs over an interface of `link_mtu` whose outer IP and UDP
    /// headers take `overhead` bytes (28 for IPv4, 48 for IPv6): its MTU search starts, or
    /// restarts when either changed.
    pub fn set_path_link_mtu(&mut self, path: PathId, link_mtu: u16, overhead: u16, now: Instant) {
        if let Some(p) = self.path_mut(path) {
            p.pmtu.set_link(link_mtu, overhead, now);
        }
    }

    /// The MTU `path` was proven to carry, as in [`PathStats::mtu`].
    pub fn path_mtu(&self, path: PathId) -> Option<u16> {
        self.path(path)?.pmtu.mtu()
    }

    /// Queues the MTU probe due on each Up path, if any (see [`super::pmtu`]).
    pub(super) fn send_due_mtu_probes(&mut self, now: Instant) {
        for i in 0..self.paths.len() {
            let p = &mut self.paths[i];
            if p.state != PathState::Up || p.dormant() {
                continue;
            }
            if let Some((size, seq)) = p.pmtu.poll(p.srtt, now) {
                let path = p.id;
                // A probe not polled before the next is replaced: its timeout counts it lost.
                self.mtu_probes.retain(|q| q.0 != path);
                self.mtu_probes.push((path, size, seq));
            }
        }
    }

    /// Sends a burst of probes on every path whose data stayed unanswered for
    /// [`suspect_after`]; its answers (or any packet) clear the suspicion.
    pub(super) fn probe_suspect_paths(&mut self, now: Instant) {
        for i in 0..self.paths.len() {
            let p = &mut self.paths[i];
            if p.suspect_at().is_none_or(|t| now < t) {
                continue;
            }
            p.burst_at = Some(now);
            p.unanswered_since.get_or_insert(now);
            // Data lost while small probes pass is what a shrunken path MTU looks like.
            p.pmtu.validate(now);
            let id = p.id;
            for _ in 0..SUSPECT_BURST {
                // A full queue only leaves the burst shorter.
                let _ = self.queues.push_transmit(Queued::Probe(id));
            }
        }
    }

    /// Declares Down every Up path whose probe went unanswered for `path_timeout`.
    pub(super) fn expire_paths(&mut self, now: Instant) {
        let path_timeout = self.config.path_timeout;
        for i in 0..self.paths.len() {
            let p = &mut self.paths[i];
            let timed_out = matches!((p.state, p.unanswered_since), (PathState::Up, Some(t)) if now >= t + path_timeout);
            let burst_unanswered = p.burst_deadline().is_some_and(|t| now >= t);
            if timed_out || burst_unanswered {
                p.state = PathState::Down;
                p.up_since = None;
                p.data_unanswered_since = None;
                p.burst_at = None;
                let id = p.id;
                self.queues.push_event(Event::PathDown(id));
                self.signal(
                    SignalBody::PathStatus {
                        path: id,
                        down: true,
                    },
                    now,
                );
            }
        }
    }

    /// Queues a probe on every path whose probe time came, and schedules the next one.
    pub(super) fn send_due_probes(&mut self, now: Instant) {
        let active = self.is_active(now);
        let rekey_at = self.rekey_at();
        for i in 0..self.paths.len() {
            let rekey_here = self.handshake_starts_on(self.paths[i].id, now);
            let p = &mut self.paths[i];
            if now < p.next_probe || p.dormant() {
                continue;
            }
            let outstanding = p.unanswered_since.is_some();
            // An idle keepalive is owed only for silence: anything sent since (a rekey's
            // probe, data) already refreshed the binding.
            if p.state == PathState::Up
                && !outstanding
                && !active
                && let Some(due) = p.idle_due(&self.config, rekey_at)
                && now < due
            {
                p.next_probe = due;
                continue;
            }
            if !outstanding {
                p.unanswered_since = Some(now);
            }
            if rekey_here && !active && !outstanding && p.state == PathState::Up {
                // The lazy rekey this deadline started is the keepalive: the anchor's response
                // answers it (or its absence times the path out). It ends a silence like a
                // keepalive: the probe confirming the new keys tells whether the binding held.
                p.idle_gap = p.last_tx.map(|last| now.saturating_duration_since(last));
                p.next_probe = now
                    + p.idle_interval(&self.config)
                        .unwrap_or(self.config.keepalive);
                self.maybe_start_nat_test(i, now);
                continue;
            }
            // Unanswered probes are repeated at the fast pace: one lost keepalive is not a
            // dead path, three unanswered probes are.
            // An asleep path sends this probe only to settle the one outstanding, then stops.
            let interval = match p.state {
                PathState::Down => self.config.down_probe_interval,
                PathState::Up if outstanding || (active && p.idle != Idle::Sleep) => {
                    self.config.probe_interval
                }
                PathState::Up => p
                    .idle_interval(&self.config)
                    .unwrap_or(self.config.probe_interval),
            };
            // An idle keepalive tests the binding: remember the silence it ended.
            p.idle_gap = match (p.state, active || outstanding, p.last_tx) {
                (PathState::Up, false, Some(last)) => Some(now.saturating_duration_since(last)),
                _ => None,
            };
            p.next_probe = p.meet_rekey(now + interval, interval, rekey_at);
            let keepalive = p.idle_gap.is_some();
            let id = p.id;
            // A full queue only delays this probe to the next interval.
            let _ = self.queues.push_transmit(Queued::Probe(id));
            if keepalive {
                self.maybe_start_nat_test(i, now);
            }
        }
    }
}
