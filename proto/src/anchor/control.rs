//! Authenticated control messages from a peer: probes, path status and flow moves.

use super::{Anchor, Event, Queued};
use crate::control::ControlMessage;
use crate::{DropReason, PathId, PeerId};
use std::net::SocketAddr;

impl Anchor {
    /// Applies an authenticated control message that came on `path` from `from`, and sends its
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
    ) -> Result<(), DropReason> {
        let peer = &mut self.peers[id.0 as usize];
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
                        self.queues.push_event(Event::PathStatusChanged {
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
            } => {
                if peer.flows.apply_move(flow, target, seq) {
                    self.queues.push_event(Event::FlowMoved {
                        peer: id,
                        flow,
                        path: target,
                    });
                }
                ControlMessage::SignalAck { seq }
            }
            ControlMessage::Probe { seq, sent_us } => ControlMessage::ProbeAck {
                seq,
                echo_us: sent_us,
            },
            // The anchor never challenges through the client; responses were used by path
            // validation already.
            ControlMessage::ProbeAck { .. }
            | ControlMessage::PathChallenge { .. }
            | ControlMessage::PathResponse { .. }
            | ControlMessage::SignalAck { .. } => return Ok(()),
        };
        self.queues.push_transmit(Queued::Control {
            peer: id,
            path,
            dst: from,
            msg: reply,
        })
    }
}
