//! The control server: binds the socket before the daemon drops its privileges, checks who
//! connects, and relays requests to the event loop until shutdown (mini-redis's `server::run`
//! shape, so tests pass a listener bound at a temp path).
//!
//! Access has two gates, as on the mobile host. The socket file is mode 0600 (root only), or
//! 0660 and owned by `control_group`; and every connection's peer credentials (`SO_PEERCRED`,
//! supplementary groups from `SO_PEERGROUPS`) are checked again, so a socket whose mode was
//! loosened by hand still serves only root, the daemon's own user, and members of the group.
//! A refused client gets one error line, then the connection closes.
//!
//! After the drop the daemon keeps serving on the listener it bound as root; removing the file
//! at exit needs write access to its directory, so a directory the daemon creates is given to
//! the account it drops to. In a directory it cannot write (a shared /run/upmt made by root)
//! the file stays behind at exit; clients then say "not running", and the next start or
//! `upmt-an down` removes it.

use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

use super::{LoopHandle, PROTOCOL_VERSION, RequestFrame, Response, ResponseFrame};

/// Connections still open at shutdown get this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

pub use upmt_sys::peer::Access;

pub use upmt_sys::control_socket::{ServerError, SocketFile, is_served, is_socket};

/// Binds the control socket at `path` ([`upmt_sys::control_socket::bind`]): a directory it
/// creates is owned by `owner`'s uid and gid when given, so the daemon can remove the socket
/// after dropping to that account. Must run inside tokio.
pub fn bind(
    path: &Path,
    access: &Access,
    owner: Option<(u32, u32)>,
) -> Result<(UnixListener, SocketFile), ServerError> {
    let options = upmt_sys::control_socket::BindOptions {
        daemon: "upmt-an",
        dir_owner: owner,
        backlog: 16,
    };
    upmt_sys::control_socket::bind(path, access, options)
}

/// Serves connections on `listener` until `shutdown` completes.
pub async fn serve(
    listener: UnixListener,
    access: Access,
    handler: LoopHandle,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (access, handler) = (access.clone(), handler.clone());
                    tasks.spawn(async move { connection(stream, &access, &handler).await });
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
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
    }
}

async fn connection(mut stream: UnixStream, access: &Access, handler: &LoopHandle) {
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
            let _ = send(&mut stream, Response::error(message)).await;
            return;
        }
    };
    let (rd, mut wr) = stream.split();
    let mut rd = BufReader::new(rd);
    loop {
        let line = match super::read_line(&mut rd).await {
            Ok(Some(line)) => line,
            Ok(None) => return,
            Err(e) => {
                // A too long line cannot be resynchronised: answer, close.
                let _ = send(&mut wr, Response::error(e.to_string())).await;
                return;
            }
        };
        let response = match parse_request(&line) {
            Ok(request) => {
                tracing::debug!(uid, ?request, "control request");
                handler.handle(request).await
            }
            Err(refusal) => refusal,
        };
        if send(&mut wr, response).await.is_err() {
            return;
        }
    }
}

/// Parses a request line; checks the version first, so a newer CLI's unknown request is
/// refused as another version rather than as garbage.
pub fn parse_request(line: &[u8]) -> Result<super::Request, Response> {
    let value: serde_json::Value = serde_json::from_slice(line)
        .map_err(|e| Response::error(format!("bad request: not JSON: {e}")))?;
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(Response::error(format!(
                "this upmt-an speaks control protocol version {PROTOCOL_VERSION}, the client {v}; use the upmt-an that came with the daemon"
            )));
        }
        None => return Err(Response::error("bad request: no version")),
    }
    serde_json::from_value::<RequestFrame>(value)
        .map(|f| f.request)
        .map_err(|e| Response::error(format!("bad request: {e}")))
}

async fn send(
    w: &mut (impl tokio::io::AsyncWrite + Unpin),
    response: Response,
) -> Result<(), super::FrameError> {
    super::write_line(
        w,
        &ResponseFrame {
            version: PROTOCOL_VERSION,
            response,
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::super::{Request, client};
    use super::*;

    #[test]
    fn root_is_allowed_and_a_stranger_is_refused_with_a_reason() {
        let access = Access::root_only();
        assert!(access.check(0, 0, &[]).is_ok());
        let err = access.check(65534, 65534, &[]).unwrap_err();
        assert!(err.contains("uid 65534 is not root"), "{err}");
        let group = Access {
            group: Some(("upmt".into(), 4242)),
        };
        assert!(group.check(1000, 1000, &[27, 4242]).is_ok());
        assert!(group.check(1000, 1000, &[27]).is_err());
    }

    #[test]
    fn another_version_or_an_unknown_request_is_refused_with_what_is_wrong() {
        let e = parse_request(br#"{"version":2,"request":{"type":"show"}}"#).unwrap_err();
        assert!(
            format!("{e:?}").contains("version 1, the client 2"),
            "{e:?}"
        );
        let e = parse_request(br#"{"version":1,"request":{"type":"teleport"}}"#).unwrap_err();
        assert!(format!("{e:?}").contains("bad request"), "{e:?}");
        assert_eq!(
            parse_request(br#"{"version":1,"request":{"type":"show"}}"#).unwrap(),
            Request::Show
        );
    }

    #[tokio::test]
    async fn a_request_reaches_the_loop_and_the_socket_file_goes_at_exit() {
        let dir = upmt_sys::testing::temp_dir("an-control");
        let path = dir.join("sub").join("an.sock");
        let (listener, file) = bind(&path, &Access::root_only(), None).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            bind(&path, &Access::root_only(), None),
            Err(ServerError::AlreadyRunning { .. })
        ));
        let (handle, mut requests) = super::super::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Access::root_only(), handle, async {
            let _ = stopped.await;
        }));
        let answering = tokio::spawn(async move {
            let req = requests.recv().await.unwrap();
            assert_eq!(req.request, Request::Show);
            req.reply.send(Response::error("fake loop")).unwrap();
        });
        let err = client::request(&path, Request::Show).await.unwrap_err();
        assert_eq!(err.to_string(), "fake loop");
        answering.await.unwrap();
        stop.send(()).unwrap();
        server.await.unwrap();
        drop(file);
        assert!(!path.exists(), "the socket file is removed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
