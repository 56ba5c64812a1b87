//! The control server: binds the Unix socket, checks who connects, and serves requests with a
//! [`Handler`] until a shutdown future completes (mini-redis's `server::run` shape, so tests
//! pass a listener bound at a temp path).
//!
//! Access has two gates. The socket file is mode 0600 (root only), or 0660 and owned by the
//! configured group; and every connection's peer credentials (`SO_PEERCRED`, supplementary
//! groups from `SO_PEERGROUPS`) are checked again, so a socket whose mode was loosened by hand
//! still serves only root, the daemon's own user, and members of the group. A refused peer gets
//! one `permission_denied` error frame, then the connection closes.
//!
//! The server never touches the daemon's state: it only forwards requests to the handler and
//! relays events to watchers.

use std::future::Future;
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;

use super::proto::{
    self, ErrorKind, Event, FrameError, Request, Response, ResponseFrame, parse_request,
};

/// Connections still open at shutdown get this long to finish their request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// What answers requests: in the daemon, the event loop through a channel
/// ([`LoopHandle`](super::LoopHandle)); in tests, a fake.
pub trait Handler: Clone + Send + Sync + 'static {
    /// Answers one request (never [`Request::Watch`], which the server serves itself).
    fn handle(&self, request: Request) -> impl Future<Output = Response> + Send;
    /// A new receiver of events for one watcher.
    fn subscribe(&self) -> broadcast::Receiver<Event>;
}

pub use upmt_sys::peer::Access;

pub use upmt_sys::control_socket::{ServerError, SocketFile};

/// Binds the control socket at `path` ([`upmt_sys::control_socket::bind`]). Must run inside
/// tokio.
pub fn bind(path: &Path, access: &Access) -> Result<(UnixListener, SocketFile), ServerError> {
    let options = upmt_sys::control_socket::BindOptions {
        daemon: "upmt-mh",
        dir_owner: None,
        backlog: 64,
    };
    upmt_sys::control_socket::bind(path, access, options)
}

/// Serves connections on `listener` until `shutdown` completes; then stops accepting, tells open
/// connections (watchers included) to finish, and waits for them briefly.
pub async fn serve<H: Handler>(
    listener: UnixListener,
    access: Access,
    handler: H,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (access, handler, stop) = (access.clone(), handler.clone(), stop_rx.clone());
                    tasks.spawn(async move { connection(stream, &access, &handler, stop).await });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
    }
}

async fn connection<H: Handler>(
    mut stream: UnixStream,
    access: &Access,
    handler: &H,
    mut stop: watch::Receiver<bool>,
) {
    let verdict = match stream.peer_cred() {
        Ok(cred) => access
            .check(
                cred.uid(),
                cred.gid(),
                &upmt_sys::peer::peer_groups(stream.as_raw_fd()),
            )
            .map(|()| cred.uid()),
        Err(e) => Err(format!(
            "permission denied: cannot read peer credentials: {e}"
        )),
    };
    let uid = match verdict {
        Ok(uid) => uid,
        Err(message) => {
            tracing::warn!(%message, "control connection refused");
            let _ = send(
                &mut stream,
                Response::error(ErrorKind::PermissionDenied, message),
            )
            .await;
            return;
        }
    };
    let (mut rd, mut wr) = stream.split();
    loop {
        let body = tokio::select! {
            body = proto::read_frame_bytes(&mut rd) => body,
            _ = stop.changed() => return,
        };
        let body = match body {
            Ok(Some(body)) => body,
            Ok(None) => return,
            Err(e @ FrameError::TooLarge { .. }) => {
                // The body was not read, so the stream cannot be resynchronised: answer, close.
                let _ = send(
                    &mut wr,
                    Response::error(ErrorKind::BadRequest, e.to_string()),
                )
                .await;
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "control connection ended");
                return;
            }
        };
        let request = match parse_request(&body) {
            Ok(request) => request,
            Err(refusal) => {
                if send(&mut wr, refusal).await.is_err() {
                    return;
                }
                continue;
            }
        };
        tracing::debug!(uid, request = request.name(), "control request");
        if request == Request::Watch {
            watch_events(&mut rd, &mut wr, handler.subscribe(), stop).await;
            return;
        }
        let response = tokio::select! {
            response = handler.handle(request) => response,
            _ = stop.changed() => Response::error(ErrorKind::Unavailable, "the daemon is shutting down"),
        };
        if send(&mut wr, response).await.is_err() {
            return;
        }
    }
}

/// Streams events until the client closes, the daemon stops, or the event source is gone.
async fn watch_events(
    rd: &mut (impl tokio::io::AsyncRead + Unpin),
    wr: &mut (impl tokio::io::AsyncWrite + Unpin),
    mut events: broadcast::Receiver<Event>,
    mut stop: watch::Receiver<bool>,
) {
    if send(wr, Response::Watching).await.is_err() {
        return;
    }
    let mut scratch = [0u8; 64];
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = stop.changed() => return,
            // A watcher sends nothing more; readable means it closed (or misbehaves): stop.
            _ = tokio::io::AsyncReadExt::read(rd, &mut scratch) => return,
        };
        let event = match event {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(missed)) => Event::Lagged { missed },
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if send(wr, Response::Event(event)).await.is_err() {
            return;
        }
    }
}

async fn send(
    w: &mut (impl tokio::io::AsyncWrite + Unpin),
    response: Response,
) -> Result<(), FrameError> {
    proto::write_frame(w, &ResponseFrame::from(response)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_always_allowed_and_strangers_are_refused_with_a_reason() {
        let access = Access::root_only();
        assert!(access.check(0, 0, &[]).is_ok());
        let err = access.check(65534, 65534, &[]).unwrap_err();
        assert!(
            err.starts_with("permission denied: uid 65534 is not root"),
            "{err}"
        );
    }

    #[test]
    fn members_of_the_group_are_allowed_by_primary_or_supplementary_gid() {
        let access = Access {
            group: Some(("upmt".into(), 4242)),
        };
        assert!(access.check(1000, 4242, &[]).is_ok());
        assert!(access.check(1000, 1000, &[27, 4242]).is_ok());
        let err = access.check(1000, 1000, &[27]).unwrap_err();
        assert_eq!(
            err,
            "permission denied: uid 1000 is not root and not in group upmt"
        );
    }

    #[test]
    fn a_numeric_group_is_a_gid_without_a_group_database() {
        let access = Access::with_group("3003").unwrap();
        assert_eq!(access.group, Some(("3003".into(), 3003)));
        assert!(access.check(10_123, 10_123, &[3003]).is_ok());
    }

    #[test]
    fn a_group_is_resolved_by_name_and_an_unknown_one_is_an_error() {
        let root = Access::with_group("root").unwrap();
        assert_eq!(root.group, Some(("root".into(), 0)));
        let err = Access::with_group("no-such-group-upmt").unwrap_err();
        assert_eq!(
            err.to_string(),
            "control_group \"no-such-group-upmt\" is not a group on this system"
        );
    }

    #[test]
    fn a_request_with_another_version_is_refused_as_unsupported() {
        let err = parse_request(br#"{"version":2,"request":{"type":"teleport"}}"#).unwrap_err();
        assert!(
            matches!(&err, Response::Error(e) if e.kind == ErrorKind::UnsupportedVersion),
            "{err:?}"
        );
        let err = parse_request(br#"{"version":1,"request":{"type":"teleport"}}"#).unwrap_err();
        assert!(
            matches!(&err, Response::Error(e) if e.kind == ErrorKind::BadRequest),
            "{err:?}"
        );
        assert_eq!(
            parse_request(br#"{"version":1,"request":{"type":"status"}}"#).unwrap(),
            Request::Status
        );
    }
}
