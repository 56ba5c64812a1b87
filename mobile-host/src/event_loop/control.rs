//! The event loop's side of the control socket: answers `upmt`'s requests from the loop's own
//! state and publishes events for `upmt watch`. A child module of the loop so it reads the
//! loop's fields directly; the loop stays the single owner of its state, the control server
//! ([`crate::control::server`]) only forwards requests over a channel. The replies themselves
//! are computed by the pure functions of [`crate::control::answer`].
//!
//! Moving a flow only changes its uplink in the PAFT (pinned): the anchor follows on its own,
//! since it sends each flow's downlink over the tunnel its latest uplink packet came on. Explicit
//! acked move signalling is not used yet.

use upmt_paft::{AppId, FlowId, UplinkId};
use upmt_policy::AppIdentity;

use super::Daemon;
use crate::config::PolicyLoadError;
use crate::control::proto::{
    ErrorKind, ErrorReply, Event as ControlEvent, ReloadReply, Request, Response, SessionState,
    SessionStatus, StatusReply,
};
use crate::control::{ControlRequest, LoopEnd, answer, describe};
use crate::core::Instant;
use crate::flows::UNKNOWN_APP;
use upmt_sys::display_chain;

/// Where flows were before a re-decision, to report what it changed.
pub(super) type Placements = Vec<(FlowId, AppId, UplinkId)>;

impl Daemon {
    /// Serves the control socket's requests from this loop and publishes its events there.
    pub fn attach_control(&mut self, end: LoopEnd) {
        self.control = Some(end);
    }

    /// The next control request, or never when no control socket is attached (or it closed).
    pub(super) async fn next_control(control: &mut Option<LoopEnd>) -> ControlRequest {
        if let Some(end) = control
            && let Some(request) = end.requests.recv().await
        {
            return request;
        }
        std::future::pending().await
    }

    /// Answers one request; the reply goes back to the connection that asked.
    pub(super) async fn answer_control(&mut self, request: ControlRequest, now: Instant) {
        tracing::debug!(request = request.request.name(), "control request");
        let response = self.control_response(request.request, now).await;
        // The client may have gone away meanwhile: nothing to do then.
        let _ = request.reply.send(response);
    }

    /// Publishes events to watchers (a no-op without watchers or a control socket), and tells
    /// the anchor about every flow that moved.
    pub(super) fn publish(&mut self, events: impl IntoIterator<Item = ControlEvent>) {
        let now = crate::core::now();
        for e in events {
            if let ControlEvent::FlowMoved { flow, .. } = &e {
                self.signal_move(FlowId(*flow), now);
            }
            if let Some(end) = &self.control {
                end.publish(e);
            }
        }
    }

    /// Signals a moved flow's new path to the anchor (acked and retransmitted by the core), so
    /// its downlink follows at once instead of after the flow's next uplink packet: a download
    /// may send nothing upstream for a while.
    fn signal_move(&mut self, id: FlowId, now: Instant) {
        let Some((key, entry)) = self.flows.paft().by_id(id) else {
            return;
        };
        // The PAFT keys flows in the direction of their first packet, which on the mobile host
        // leaves through the TUN: the source is ours, the destination is the correspondent.
        let flow = upmt_proto::control::FlowKey {
            protocol: key.proto,
            remote: key.dst,
            remote_port: key.dport,
            local_port: key.sport,
        };
        let path = upmt_proto::PathId(entry.uplink().get());
        self.client.move_flows(&[flow], path, now);
    }

    /// Call before the flows are decided again: unpins flows pinned to an uplink that is no
    /// longer usable (their policy takes over, and an event says so), and notes where every
    /// flow is so [`Daemon::after_redecide`] can report moves. `None` without a control socket.
    pub(super) fn before_redecide(&mut self) -> Option<Placements> {
        self.control.as_ref()?;
        let mut events = Vec::new();
        for (i, status) in self.statuses.iter().enumerate() {
            if !status.up
                && let Some(u) = u8::try_from(i).ok().and_then(UplinkId::new)
            {
                answer::unpin_on_uplink_down(self.flows.paft_mut(), u, &mut events);
            }
        }
        self.publish(events);
        let mut before = Vec::new();
        answer::placements(self.flows.paft(), &mut before);
        Some(before)
    }

    /// Call after the flows were decided again: publishes the moves and blocks it caused.
    pub(super) fn after_redecide(&mut self, before: Option<Placements>) {
        let Some(before) = before else { return };
        let mut events = Vec::new();
        answer::placement_events(
            &before,
            self.flows.paft(),
            &self.uplink_names(),
            &mut events,
        );
        self.publish(events);
    }

    /// Reloads the policy and reports the moves it caused; the error is the one line users see.
    pub(super) async fn reload_and_publish(&mut self) -> Result<ReloadReply, ErrorReply> {
        self.refresh_statuses();
        let before = self.before_redecide();
        match self.reload_policy().await {
            Ok(moved) => {
                self.after_redecide(before);
                let path = self
                    .config
                    .policy
                    .as_ref()
                    .map_or_else(|| "(built-in)".to_owned(), |p| p.display().to_string());
                let rules = self.flows.policy().rules().len() as u64;
                self.publish([ControlEvent::PolicyReloaded {
                    path: path.clone(),
                    rules,
                }]);
                Ok(ReloadReply {
                    path,
                    rules,
                    reevaluated: self.flows.paft().len() as u64,
                    moved: moved as u64,
                })
            }
            // The policy's own message is "file:line:col: what"; the wrapper adds nothing.
            Err(PolicyLoadError::Invalid(e)) => Err(ErrorReply {
                kind: ErrorKind::InvalidPolicy,
                message: e.to_string(),
            }),
            Err(e) => Err(ErrorReply {
                kind: ErrorKind::InvalidPolicy,
                message: display_chain(&e),
            }),
        }
    }

    fn uplink_names(&self) -> Vec<String> {
        self.uplinks.iter().map(|u| u.config.name.clone()).collect()
    }

    async fn control_response(&mut self, request: Request, now: Instant) -> Response {
        let names = self.uplink_names();
        self.refresh_statuses();
        let statuses = self.statuses.clone();
        let usable = |u: UplinkId| statuses.get(usize::from(u.get())).is_some_and(|s| s.up);
        let mut events = Vec::new();
        let result = match request {
            Request::Status => Ok(Response::Status(self.status_reply())),
            Request::Apps => {
                let (policy, statuses) = (self.flows.policy(), &self.statuses);
                Ok(Response::Apps(answer::apps(
                    self.flows.paft(),
                    &names,
                    |app, uid| {
                        let who = AppIdentity {
                            name: (app.as_str() != UNKNOWN_APP).then_some(app.as_str()),
                            uid,
                        };
                        describe::matched_rule(policy, policy.decide(&who, statuses).matched)
                    },
                )))
            }
            Request::Flows { app } => Ok(Response::Flows(answer::flows(
                self.flows.paft(),
                &names,
                now.as_duration(),
                app.as_deref(),
            ))),
            Request::MoveFlow { flow, uplink } => answer::move_flow(
                self.flows.paft_mut(),
                &names,
                flow,
                &uplink,
                usable,
                &mut events,
            )
            .map(Response::Moved),
            Request::MoveApp { app, uplink } => answer::move_app(
                self.flows.paft_mut(),
                &names,
                &app,
                &uplink,
                usable,
                &mut events,
            )
            .map(Response::Moved),
            Request::UnpinFlow { flow } => {
                answer::unpin_flow(self.flows.paft_mut(), flow, &mut events).map(Response::Unpinned)
            }
            Request::UnpinApp { app } => {
                answer::unpin_app(self.flows.paft_mut(), &app, &mut events).map(Response::Unpinned)
            }
            Request::ReloadPolicy => self.reload_and_publish().await.map(Response::Reloaded),
            Request::Watch => Err(ErrorReply {
                kind: ErrorKind::BadRequest,
                message: "watch is served by the control server".to_owned(),
            }),
        };
        let unpinned = matches!(result, Ok(Response::Unpinned(ref r)) if !r.flows.is_empty());
        self.publish(events);
        if unpinned {
            // Unpinned flows go back to their policy at once.
            let before = self.before_redecide();
            self.flows.redecide(&self.statuses, now.as_duration());
            self.after_redecide(before);
        }
        result.unwrap_or_else(Response::Error)
    }

    fn status_reply(&self) -> StatusReply {
        let session = match self.client.session() {
            Some(params) => SessionStatus {
                state: SessionState::Connected,
                anchor: self.config.anchor,
                virtual_addresses: std::iter::once(std::net::IpAddr::V4(params.virtual_ipv4))
                    .chain(params.virtual_ipv6.map(std::net::IpAddr::V6))
                    .collect(),
                tun: self.tun.as_ref().map(|t| t.name.clone()),
            },
            None => SessionStatus {
                state: SessionState::Handshaking,
                anchor: self.config.anchor,
                virtual_addresses: Vec::new(),
                tun: None,
            },
        };
        // Bytes per tunnel: the inner bytes of the live flows it carried.
        let mut bytes = vec![(0u64, 0u64); self.uplinks.len()];
        for (_, e) in self.flows.paft().iter() {
            for (i, b) in bytes.iter_mut().enumerate() {
                if let Some(u) = u8::try_from(i).ok().and_then(UplinkId::new) {
                    let c = e.counters(u);
                    b.0 += c.bytes[0];
                    b.1 += c.bytes[1];
                }
            }
        }
        let tunnels = self
            .uplinks
            .iter()
            .zip(bytes)
            .map(|(u, b)| {
                answer::tunnel(
                    &u.config.name,
                    &u.config.interface,
                    u.socket.as_ref().and_then(|s| s.local_addr().ok()),
                    self.client.path_stats(u.path),
                    b,
                )
            })
            .collect();
        StatusReply { session, tunnels }
    }
}
