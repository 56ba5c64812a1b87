//! Reliable signals to the anchor: path status and flow moves, resent until acked.

use super::paths::{Idle, PathState};
use super::{Client, FlowKey, Queued};
use crate::PathId;
use crate::control::ControlMessage;
use crate::time::Instant;
use crate::timer::{Timer, TimerTable};
use core::time::Duration;
use std::collections::VecDeque;

/// Signals (path status, flow moves) waiting for their ack; past it the oldest is given up.
pub const MAX_PENDING_SIGNALS: usize = 128;
/// The longest wait between two sends of an unacknowledged signal.
const MAX_SIGNAL_RETRY: Duration = Duration::from_secs(2);

/// Counters of the client's signalling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalStats {
    /// Signals created.
    pub created: u64,
    /// Signal datagrams sent (first sends and resends).
    pub sent: u64,
    /// Signals acked.
    pub acked: u64,
    /// Signals given up because the pending list was full.
    pub abandoned: u64,
}

/// What a signal says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SignalBody {
    PathStatus {
        path: PathId,
        down: bool,
    },
    FlowMove {
        path: PathId,
        flow: FlowKey,
        redundant: Option<PathId>,
    },
}

impl SignalBody {
    /// Whether `self`, sent later, makes `older` pointless.
    fn supersedes(&self, older: &SignalBody) -> bool {
        match (self, older) {
            (SignalBody::PathStatus { path: a, .. }, SignalBody::PathStatus { path: b, .. }) => {
                a == b
            }
            (SignalBody::FlowMove { flow: a, .. }, SignalBody::FlowMove { flow: b, .. }) => a == b,
            _ => false,
        }
    }

    fn message(&self, seq: u64) -> ControlMessage {
        match *self {
            SignalBody::PathStatus { path, down } => ControlMessage::PathStatus { seq, path, down },
            SignalBody::FlowMove {
                path,
                flow,
                redundant,
            } => ControlMessage::FlowMove {
                seq,
                path,
                flow,
                redundant,
            },
        }
    }
}

/// A signal waiting for its ack.
#[derive(Clone, Copy, Debug)]
struct Signal {
    seq: u64,
    body: SignalBody,
    next_send: Instant,
    retry: Duration,
    sends: u32,
}

/// The signals not acked yet, oldest first, and their numbering.
pub(super) struct Signals {
    pending: VecDeque<Signal>,
    last_seq: u64,
    stats: SignalStats,
}

impl Signals {
    pub(super) fn new() -> Self {
        Signals {
            pending: VecDeque::with_capacity(MAX_PENDING_SIGNALS),
            last_seq: 0,
            stats: SignalStats::default(),
        }
    }
}

impl Client {
    /// Moves flows to `path`: the anchor sends their downlink there once it has the (acked,
    /// retransmitted) signal. The driver still chooses the uplink path of each packet.
    pub fn move_flows(&mut self, flows: &[FlowKey], path: PathId, now: Instant) {
        self.move_flows_redundant(flows, path, None, now);
    }

    /// [`Client::move_flows`], and the anchor sends a copy of every downlink packet of these
    /// flows on `redundant` too (`None`: no more copies). The driver sends the uplink copies
    /// with [`Client::encapsulate_redundant`].
    pub fn move_flows_redundant(
        &mut self,
        flows: &[FlowKey],
        path: PathId,
        redundant: Option<PathId>,
        now: Instant,
    ) {
        for flow in flows {
            self.signal(
                SignalBody::FlowMove {
                    path,
                    flow: *flow,
                    redundant,
                },
                now,
            );
        }
    }

    /// Signals not acked yet.
    pub fn pending_signals(&self) -> usize {
        self.signals.pending.len()
    }

    /// Counters of the signalling.
    pub fn signal_stats(&self) -> SignalStats {
        self.signals.stats
    }

    /// Queues a reliable signal, replacing a pending one it makes pointless.
    pub(super) fn signal(&mut self, body: SignalBody, now: Instant) {
        let elapsed = u64::try_from((now - self.created).as_micros()).unwrap_or(u64::MAX);
        let s = &mut self.signals;
        let seq = (self.unix_nanos_at_created / 1000)
            .saturating_add(elapsed)
            .max(s.last_seq.saturating_add(1));
        s.last_seq = seq;
        s.pending.retain(|p| !body.supersedes(&p.body));
        if s.pending.len() >= MAX_PENDING_SIGNALS {
            s.pending.pop_front();
            s.stats.abandoned += 1;
        }
        s.pending.push_back(Signal {
            seq,
            body,
            next_send: now,
            retry: self.config.signal_retry,
            sends: 0,
        });
        s.stats.created += 1;
        self.send_due_signals(now);
    }

    /// The anchor acked the signal numbered `seq`.
    pub(super) fn on_signal_ack(&mut self, seq: u64) {
        let s = &mut self.signals;
        if let Some(i) = s.pending.iter().position(|p| p.seq == seq) {
            s.pending.remove(i);
            s.stats.acked += 1;
        }
    }

    /// Queues every signal whose send time came, and schedules its resend.
    pub(super) fn send_due_signals(&mut self, now: Instant) {
        if self.current.is_none() {
            return;
        }
        for i in 0..self.signals.pending.len() {
            let s = &mut self.signals.pending[i];
            if s.next_send > now {
                continue;
            }
            s.next_send = now + s.retry;
            s.retry = (s.retry * 2).min(MAX_SIGNAL_RETRY);
            let seq = s.seq;
            // A full queue only delays this send to the next retry.
            let _ = self.queues.push_transmit(Queued::Signal(seq));
        }
    }

    pub(super) fn signal_timers(&self, timers: &mut TimerTable) {
        if let Some(t) = self.signals.pending.iter().map(|s| s.next_send).min() {
            timers.set_earliest(Timer::SignalRetry, t);
        }
    }

    /// The path and message of one send of the signal numbered `seq`, if still pending.
    pub(super) fn build_signal(&mut self, seq: u64) -> Option<(PathId, ControlMessage)> {
        let i = self.signals.pending.iter().position(|s| s.seq == seq)?;
        let s = self.signals.pending[i];
        let path = self.signal_path(&s.body, s.sends)?;
        self.signals.pending[i].sends += 1;
        self.signals.stats.sent += 1;
        Some((path, s.body.message(seq)))
    }

    /// The path a signal goes on: the wanted one when Up, else one of the Up paths (rotating
    /// with `sends`, so a path that silently died is not the only one tried), else any.
    fn signal_path(&self, body: &SignalBody, sends: u32) -> Option<PathId> {
        let (wanted, avoid) = match *body {
            SignalBody::PathStatus { path, down: true } => (None, Some(path)),
            SignalBody::PathStatus { path, down: false } => (Some(path), None),
            SignalBody::FlowMove { path, .. } => (Some(path), None),
        };
        if let Some(w) = wanted
            && self.path(w).is_some_and(|p| p.state == PathState::Up)
            && sends.is_multiple_of(2)
        {
            return Some(w);
        }
        // Asleep paths carry signals only when no other path is Up.
        let any_awake = self
            .paths
            .iter()
            .any(|p| Some(p.id) != avoid && p.state == PathState::Up && p.idle() != Idle::Sleep);
        let candidates = || {
            self.paths.iter().filter(move |p| {
                Some(p.id) != avoid
                    && p.state == PathState::Up
                    && (!any_awake || p.idle() != Idle::Sleep)
            })
        };
        let n = candidates().count();
        if n > 0 {
            return candidates().nth(sends as usize % n).map(|p| p.id);
        }
        let n = self.paths.len();
        (n > 0).then(|| self.paths[sends as usize % n].id)
    }
}
