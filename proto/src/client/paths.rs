//! The client's paths: liveness, probing, RTT and loss, hold-down.

use super::natlearn::KeepaliveLearner;
use super::signals::SignalBody;
use super::{Client, Event, Queued};
use crate::PathId;
use crate::time::Instant;
use crate::timer::{Timer, TimerTable};
use core::time::Duration;

/// Liveness of a path as the probes see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PathState {
    /// Its probes are answered.
    Up,
    /// A probe went unanswered for `path_timeout`, or nothing arrived on it yet.
    Down,
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
    /// This path's address and port as the anchor last saw them (after NAT), from its
    /// probe answers; `None` until one said (older anchors never do).
    pub observed: Option<std::net::SocketAddr>,
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
    /// Its public endpoint as the anchor last reported it.
    pub(super) observed: Option<std::net::SocketAddr>,
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
            observed: None,
        }
    }

    /// Learns this path's NAT binding lifetime with `learner`.
    pub(super) fn learning(mut self, learner: Option<KeepaliveLearner>) -> Self {
        self.learner = learner;
        self
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
            observed: self.observed,
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
            p.rx_packets += 1;
            if p.state == PathState::Down {
                p.state = PathState::Up;
                p.up_since = Some(now);
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

    /// Probes every path at once (a new session: measures them, and the first authenticated
    /// packet is what makes the anchor switch to it).
    pub(super) fn probe_all_now(&mut self, now: Instant) {
        let interval = self.config.probe_interval;
        for i in 0..self.paths.len() {
            self.paths[i].next_probe = now + interval;
            let id = self.paths[i].id;
            // A full queue only delays this probe to the next interval.
            let _ = self.queues.push_transmit(Queued::Probe(id));
        }
    }

    /// The probe and path-timeout deadlines.
    pub(super) fn path_timers(&self, timers: &mut TimerTable) {
        for p in &self.paths {
            timers.set_earliest(Timer::Probe, p.next_probe);
            if let (PathState::Up, Some(t)) = (p.state, p.unanswered_since) {
                timers.set_earliest(Timer::PathTimeout, t + self.config.path_timeout);
            }
        }
    }

    /// Declares Down every Up path whose probe went unanswered for `path_timeout`.
    pub(super) fn expire_paths(&mut self, now: Instant) {
        let path_timeout = self.config.path_timeout;
        for i in 0..self.paths.len() {
            let p = &mut self.paths[i];
            if let (PathState::Up, Some(t)) = (p.state, p.unanswered_since)
                && now >= t + path_timeout
            {
                p.state = PathState::Down;
                p.up_since = None;
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
        for i in 0..self.paths.len() {
            let p = &mut self.paths[i];
            if now < p.next_probe {
                continue;
            }
            let outstanding = p.unanswered_since.is_some();
            if !outstanding {
                p.unanswered_since = Some(now);
            }
            // Unanswered probes are repeated at the fast pace: one lost keepalive is not a
            // dead path, three unanswered probes are.
            let interval = match p.state {
                PathState::Down => self.config.down_probe_interval,
                PathState::Up if active || outstanding => self.config.probe_interval,
                PathState::Up => p.keepalive(self.config.keepalive),
            };
            // An idle keepalive tests the binding: remember the silence it ended.
            p.idle_gap = match (p.state, active || outstanding, p.last_tx) {
                (PathState::Up, false, Some(last)) => Some(now.saturating_duration_since(last)),
                _ => None,
            };
            p.next_probe = now + interval;
            let id = p.id;
            // A full queue only delays this probe to the next interval.
            let _ = self.queues.push_transmit(Queued::Probe(id));
        }
    }
}
