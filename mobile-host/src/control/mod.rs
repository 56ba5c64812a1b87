//! The daemon's control socket: how `upmt` inspects the mobile host and moves flows and apps.
//!
//! - [`proto`]: the versioned, length-delimited JSON protocol (requests, replies, events).
//! - [`server`]: binds the Unix socket (mode 0600, or 0660 with a configured group), checks each
//!   peer's credentials, and serves requests through a [`Handler`](server::Handler).
//! - [`client`]: what the CLI uses to reach the daemon.
//!
//! The event loop stays the single owner of the daemon's state: the server never touches tables
//! itself, it hands each request to the loop as a [`ControlRequest`] on an mpsc channel and waits
//! for the loop's [`proto::Response`]; `watch` streams come from a broadcast channel the
//! loop publishes [`proto::Event`]s on. [`channel`] makes both ends.

pub mod client;
pub mod proto;
pub mod server;

use tokio::sync::{broadcast, mpsc, oneshot};

use proto::{ErrorKind, Event, Request, Response};

/// Where `upmt-mh` listens unless its config says otherwise, and where `upmt` looks.
pub const DEFAULT_SOCKET: &str = "/run/upmt/mh.sock";

/// Requests queued for the loop before the server waits; the CLI is interactive, so a handful.
const REQUEST_QUEUE: usize = 16;
/// Events a slow watcher may lag behind before it is told it missed some.
const EVENT_QUEUE: usize = 256;

/// One request for the event loop, and where its answer goes.
#[derive(Debug)]
pub struct ControlRequest {
    /// Never [`Request::Watch`]: the server answers that itself from the event channel.
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

/// The loop's end: requests to answer, and the sender of events for watchers.
#[derive(Debug)]
pub struct LoopEnd {
    pub requests: mpsc::Receiver<ControlRequest>,
    pub events: broadcast::Sender<Event>,
}

impl LoopEnd {
    /// Publishes an event to every watcher; a no-op when nobody watches.
    pub fn publish(&self, event: Event) {
        let _ = self.events.send(event);
    }
}

/// The server's end: a [`server::Handler`] that forwards to the loop.
#[derive(Clone, Debug)]
pub struct LoopHandle {
    requests: mpsc::Sender<ControlRequest>,
    events: broadcast::Sender<Event>,
}

/// Makes the two ends that connect the control server to the event loop.
pub fn channel() -> (LoopHandle, LoopEnd) {
    let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
    let (events, _) = broadcast::channel(EVENT_QUEUE);
    (
        LoopHandle {
            requests: tx,
            events: events.clone(),
        },
        LoopEnd {
            requests: rx,
            events,
        },
    )
}

impl server::Handler for LoopHandle {
    async fn handle(&self, request: Request) -> Response {
        let (reply, answer) = oneshot::channel();
        if self
            .requests
            .send(ControlRequest { request, reply })
            .await
            .is_err()
        {
            return Response::error(ErrorKind::Unavailable, "the daemon is shutting down");
        }
        answer.await.unwrap_or_else(|_| {
            Response::error(ErrorKind::Unavailable, "the daemon dropped the request")
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::server::Handler as _;
    use super::*;

    #[tokio::test]
    async fn the_loop_handle_forwards_requests_and_events_to_the_loop_end() {
        let (handle, mut end) = channel();
        let mut watcher = handle.subscribe();
        let answering = tokio::spawn(async move {
            let req = end.requests.recv().await.unwrap();
            assert_eq!(req.request, Request::Apps);
            end.publish(Event::TunnelUp {
                uplink: "wifi".into(),
            });
            req.reply
                .send(Response::error(ErrorKind::NoSuchApp, "no such app"))
                .unwrap();
            end
        });
        let response = handle.handle(Request::Apps).await;
        assert_eq!(
            response,
            Response::error(ErrorKind::NoSuchApp, "no such app")
        );
        assert_eq!(
            watcher.recv().await.unwrap(),
            Event::TunnelUp {
                uplink: "wifi".into()
            }
        );
        drop(answering.await.unwrap());
        let gone = handle.handle(Request::Status).await;
        assert!(
            matches!(gone, Response::Error(ref e) if e.kind == ErrorKind::Unavailable),
            "{gone:?}"
        );
    }
}
