//! Authenticated control messages from a peer: probes, path status and flow moves.
//!
//! An authenticated peer can send ever-newer `FlowMove` / `PathStatus` sequence numbers as fast
//! as it likes, and every applied one used to become an event the driver logs at info. Each
//! peer therefore has a budget of [`SIGNAL_EVENT_BURST`] such events, refilled by one every
//! [`SIGNAL_EVENT_REFILL`]: past it a signal is still applied and acked (the downlink must follow
//! it), only its event is left out and counted in `AnchorStats::signal_events_suppressed`.

use super::{Anchor, Event, Queued};
use crate::control::ControlMessage;
use crate::time::Instant;
use crate::{DropReason, PathId, PeerId};
use core::time::Duration;
use std::net::SocketAddr;

/// Signal events one peer may raise in a burst.
pub const SIGNAL_EVENT_BURST: u32 = 32;
/// One more signal event is allowed per this much time (10 per second sustained).
pub const SIGNAL_EVENT_REFILL: Duration = Duration::from_millis(100);

/// A token bucket over a peer's signal events.
#[derive(Clone, Copy, Debug)]
pub(super) struct EventBudget {
    tokens: u32,
    refilled_at: Option<Instant>,
}

impl Default for EventBudget {
    fn default() -> Self {
        EventBudget {
            tokens: SIGNAL_EVENT_BURST,
            refilled_at: None,
        }
    }
}

impl EventBudget {
    /// Takes one event from the budget; false when it is spent.
    fn take(&mut self, now: Instant) -> bool {
        let since = self.refilled_at.get_or_insert(now);
        let earned =
            now.saturating_duration_since(*since).as_nanos() / SIGNAL_EVENT_REFILL.as_nanos();
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(SIGNAL_EVENT_BURST);
            *since = now;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

impl Anchor {
    /// Applies an authenticated control message (`len` bytes of plaintext) that came on `path`
    /// from `from`, and sends its
    /// answer (an ack, a probe's echo) back the same way.
    ///
    /// Answers go to the source even before it is validated: each is no bigger than what it
    /// answers and is sent once per authenticated, non-replayed message, so it amplifies
    /// nothing, and it lets the client measure and signal on a path that just rebound.
    pub(super) fn handle_control(
        &mut self,
        id: PeerId,
        path: PathId,
        from: SocketAddr,
        msg: ControlMessage,
        len: usize,
        now: Instant,
    ) -> Result<(), DropReason> {
        let peer = &mut self.peers[id.0 as usize];
        let mut event = None;
        // A path said down or a flow moved: what it carried last goes again on the new path.
        let mut resend = None;
        let reply = match msg {
            ControlMessage::PathStatus {
                seq,
                path: target,
                down,
            } => {
                let entry = peer.path_entry(target);
                if seq > entry.status_seq {
                    entry.status_seq = seq;
                    if entry.down != down {
                        entry.down = down;
                        if down {
                            entry.drained = true;
                            resend = Some((target, None));
                        }
                        event = Some(Event::PathStatusChanged {
                            peer: id,
                            path: target,
                            down,
                        });
                    }
                }
                ControlMessage::SignalAck { seq }
            }
            ControlMessage::FlowMove {
                seq,
                path: target,
                flow,
                redundant,
            } => {
                if peer.flows.apply_move(flow, target, redundant, seq) {
                    resend = Some((target, Some(flow)));
                    event = Some(Event::FlowMoved {
                        peer: id,
                        flow,
                        path: target,
                    });
                }
                ControlMessage::SignalAck { seq }
            }
            // The source is told back only to a probe padded to the answer's length, so the
            // answer is never bigger than what it answers.
            ControlMessage::Probe { seq, sent_us } => ControlMessage::ProbeAck {
                seq,
                echo_us: sent_us,
                // A dual-stack socket reports IPv4 peers as mapped IPv6; the client is told
                // the address its NAT really has.
                observed: (len >= crate::control::PROBE_LEN)
                    .then(|| SocketAddr::new(from.ip().to_canonical(), from.port())),
            },
            ControlMessage::NatRequest { nonce } => {
                return self.handle_nat_request(id, path, nonce, now);
            }
            // The anchor never challenges through the client; responses were used by path
            // validation already; registrations were handled before path validation.
            ControlMessage::ProbeAck { .. }
            | ControlMessage::NatRegister { .. }
            | ControlMessage::NatRegistered { .. }
            | ControlMessage::NatReply { .. }
            | ControlMessage::PathChallenge { .. }
            | ControlMessage::PathResponse { .. }
            | ControlMessage::SignalAck { .. } => return Ok(()),
        };
        match resend {
            Some((down, None)) => self.resend_moved(id, down, None, now),
            Some((to, Some(flow))) => self.resend_flow(id, flow, to, now),
            None => {}
        }
        let peer = &mut self.peers[id.0 as usize];
        if let Some(e) = event {
            if peer.signal_events.take(now) {
                self.queues.push_event(e);
            } else {
                self.stats.signal_events_suppressed =
                    self.stats.signal_events_suppressed.saturating_add(1);
            }
        }
        self.queues.push_transmit(Queued::Control {
            peer: id,
            path,
            dst: from,
            msg: reply,
        })
    }
}
