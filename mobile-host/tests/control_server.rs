//! The control server on a real Unix socket at a temp path, with a fake handler instead of the
//! daemon's loop: request/response round trips through the `upmt` client, watch streams, the
//! frame size limit, the socket file's mode and lifetime, and refusal of non-root peers (the
//! `upmt` binary run as nobody under `setpriv`). Needs no network namespace; the non-root tests
//! need root to drop to nobody and skip otherwise.

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{broadcast, oneshot};

use upmt_mobile_host::control::client::{Client, ClientError};
use upmt_mobile_host::control::proto::{
    self, ErrorKind, Event, MAX_FRAME, MoveReason, MoveReply, Request, Response, ResponseFrame,
    SessionState, SessionStatus, StatusReply, TunnelState, TunnelStatus,
};
use upmt_mobile_host::control::server::{self, Access, Handler};
use upmt_sys::control_socket::ConnectError;

/// Answers like a daemon with two tunnels and one flow (id 1).
#[derive(Clone)]
struct Fake {
    events: broadcast::Sender<Event>,
}

impl Fake {
    fn new() -> Fake {
        Fake {
            events: broadcast::channel(16).0,
        }
    }
}

fn status() -> StatusReply {
    let tunnel = |uplink: &str, interface: &str| TunnelStatus {
        uplink: uplink.into(),
        interface: interface.into(),
        state: TunnelState::Up,
        local: Some("192.0.2.2:40000".parse().unwrap()),
        public: None,
        public_addr: None,
        rtt_us: Some(1_500),
        loss: 0.0,
        metered: false,
        tx_bytes: 100,
        rx_bytes: 200,
        tx_packets: 1,
        rx_packets: 2,
        idle: None,
        keepalive_s: None,
        keepalive_learning: None,
        resent_bytes: 0,
        mtu: None,
    };
    StatusReply {
        session: SessionStatus {
            state: SessionState::Connected,
            anchor: "198.51.100.1:51820".parse().unwrap(),
            virtual_addresses: vec!["10.77.0.2".parse().unwrap()],
            tun: Some("upmt0".into()),
            active_anchor: None,
            cipher: None,
        },
        tunnels: vec![tunnel("wifi", "wlan0"), tunnel("cell", "rmnet0")],
        owners: None,
    }
}

impl Handler for Fake {
    async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(status()),
            Request::MoveFlow { flow: 1, uplink } if uplink == "wifi" || uplink == "cell" => {
                Response::Moved(MoveReply {
                    uplink,
                    flows: vec![1],
                })
            }
            Request::MoveFlow { flow: 1, uplink } => Response::error(
                ErrorKind::NoSuchUplink,
                format!("no such uplink {uplink:?}; uplinks: wifi, cell"),
            ),
            Request::MoveFlow { flow, .. } => {
                Response::error(ErrorKind::NoSuchFlow, format!("no such flow {flow}"))
            }
            other => Response::error(
                ErrorKind::Unsupported,
                format!("{} not faked", other.name()),
            ),
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

/// A fresh directory nobody (uid 65534) can traverse to reach the socket, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "upmt-ctl-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(dir)
    }

    fn socket(&self) -> PathBuf {
        self.0.join("mh.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running server; stops (and removes its socket file) on `stop`.
struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    path: PathBuf,
}

impl Running {
    fn start(path: &Path, access: Access, handler: Fake) -> Running {
        let (listener, file) = server::bind(path, &access).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server::serve(listener, access, handler, async {
                let _ = stopped.await;
            })
            .await;
            drop(file);
        });
        Running {
            stop: Some(stop),
            task,
            path: path.to_owned(),
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .expect("server stops within its grace period")
            .unwrap();
        assert!(!self.path.exists(), "socket file removed at exit");
    }
}

#[tokio::test]
async fn a_status_request_round_trips_through_the_socket() {
    let dir = TempDir::new("status");
    let server = Running::start(&dir.socket(), Access::root_only(), Fake::new());
    let mut client = Client::connect(&dir.socket()).await.unwrap();
    // Several requests on one connection, in order.
    for _ in 0..3 {
        assert_eq!(
            client.request(Request::Status).await.unwrap(),
            Response::Status(status())
        );
    }
    let err = client
        .request(Request::MoveFlow {
            flow: 42,
            uplink: "cell".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "no such flow 42");
    assert_eq!(err.kind(), Some(ErrorKind::NoSuchFlow));
    let err = client
        .request(Request::MoveFlow {
            flow: 1,
            uplink: "lte".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no such uplink \"lte\"; uplinks: wifi, cell"
    );
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn the_socket_is_root_only_and_a_stale_one_is_replaced_but_a_live_one_is_not() {
    let dir = TempDir::new("mode");
    let path = dir.socket();
    // A stale socket file, as a crashed daemon leaves it.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = Running::start(&path, Access::root_only(), Fake::new());
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let err = server::bind(&path, &Access::root_only()).unwrap_err();
    assert!(
        matches!(err, server::ServerError::AlreadyRunning { .. }),
        "{err:?}"
    );
    server.stop().await;

    std::fs::write(&path, b"not a socket").unwrap();
    let err = server::bind(&path, &Access::root_only()).unwrap_err();
    assert!(
        matches!(err, server::ServerError::NotASocket { .. }),
        "{err:?}"
    );
    assert!(path.exists(), "a regular file is never deleted");
}

#[tokio::test]
async fn a_group_socket_is_0660_and_owned_by_the_group() {
    let dir = TempDir::new("group");
    let access = Access {
        // gid 0 exists everywhere; the mode and ownership are what is checked.
        group: Some(("root".into(), 0)),
    };
    let server = Running::start(&dir.socket(), access, Fake::new());
    let meta = std::fs::metadata(dir.socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), 0);
    server.stop().await;
}

#[tokio::test]
async fn an_oversize_frame_is_refused_with_a_clear_error_and_the_connection_closed() {
    let dir = TempDir::new("oversize");
    let server = Running::start(&dir.socket(), Access::root_only(), Fake::new());
    let mut raw = tokio::net::UnixStream::connect(dir.socket()).await.unwrap();
    raw.write_all(&((MAX_FRAME as u32) + 1).to_be_bytes())
        .await
        .unwrap();
    let reply: ResponseFrame = proto::read_frame(&mut raw).await.unwrap().unwrap();
    match reply.response {
        Response::Error(e) => {
            assert_eq!(e.kind, ErrorKind::BadRequest);
            assert_eq!(
                e.message,
                "frame of 1048577 bytes exceeds the 1048576-byte limit"
            );
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let mut rest = Vec::new();
    raw.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "connection closed after the refusal");

    // Garbage that fits is answered, and the connection stays usable.
    let mut raw = tokio::net::UnixStream::connect(dir.socket()).await.unwrap();
    raw.write_all(&5u32.to_be_bytes()).await.unwrap();
    raw.write_all(b"hello").await.unwrap();
    let reply: ResponseFrame = proto::read_frame(&mut raw).await.unwrap().unwrap();
    assert!(
        matches!(&reply.response, Response::Error(e) if e.kind == ErrorKind::BadRequest),
        "{reply:?}"
    );
    proto::write_frame(&mut raw, &proto::RequestFrame::from(Request::Status))
        .await
        .unwrap();
    let reply: ResponseFrame = proto::read_frame(&mut raw).await.unwrap().unwrap();
    assert_eq!(reply.response, Response::Status(status()));
    server.stop().await;
}

#[tokio::test]
async fn a_watcher_receives_events_in_order_and_ends_when_the_server_stops() {
    let dir = TempDir::new("watch");
    let fake = Fake::new();
    let events = fake.events.clone();
    let server = Running::start(&dir.socket(), Access::root_only(), fake);
    let mut client = Client::connect(&dir.socket()).await.unwrap();
    client.watch().await.unwrap();
    let sent = [
        Event::TunnelDown {
            uplink: "wifi".into(),
        },
        Event::FlowMoved {
            flow: 1,
            app: "curl".into(),
            from: Some("wifi".into()),
            to: "cell".into(),
            reason: MoveReason::UplinkDown,
        },
    ];
    for e in &sent {
        events.send(e.clone()).unwrap();
    }
    for e in &sent {
        assert_eq!(client.next_event().await.unwrap().as_ref(), Some(e));
    }
    server.stop().await;
    assert_eq!(client.next_event().await.unwrap(), None);
}

fn upmt() -> &'static str {
    env!("CARGO_BIN_EXE_upmt")
}

fn can_drop_to_nobody() -> bool {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    root && Command::new("setpriv").arg("--version").output().is_ok()
}

/// Runs `upmt --socket PATH status` as uid/gid 65534 with no supplementary groups.
async fn upmt_as_nobody(socket: &Path) -> std::process::Output {
    let socket = socket.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                upmt(),
            ])
            .arg("--socket")
            .arg(&socket)
            .arg("status")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_non_root_user_is_refused_by_the_socket_mode_and_by_the_credential_check() {
    if !can_drop_to_nobody() {
        eprintln!("skipped: needs root and setpriv");
        return;
    }
    let dir = TempDir::new("nobody");
    let server = Running::start(&dir.socket(), Access::root_only(), Fake::new());

    // Gate one: the 0600 socket file.
    let out = upmt_as_nobody(&dir.socket()).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        stderr.trim_end(),
        format!(
            "upmt: permission denied: cannot connect to {} (root, upmt-mh's user or its control_group only)",
            dir.socket().display()
        )
    );
    assert!(out.stdout.is_empty());

    // Gate two: with the mode loosened by hand, the peer's credentials still refuse it.
    std::fs::set_permissions(dir.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = upmt_as_nobody(&dir.socket()).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.starts_with("upmt: permission denied: uid 65534 is not root"),
        "{stderr}"
    );

    // Root, through the same binary, is served.
    let socket = dir.socket();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(upmt())
            .arg("--socket")
            .arg(&socket)
            .args(["status", "--json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: StatusReply = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply, status());
    server.stop().await;
}

#[tokio::test]
async fn a_member_of_the_control_group_is_served_as_non_root() {
    if !can_drop_to_nobody() {
        eprintln!("skipped: needs root and setpriv");
        return;
    }
    let dir = TempDir::new("member");
    let access = Access {
        group: Some(("nogroup".into(), 65534)),
    };
    let server = Running::start(&dir.socket(), access, Fake::new());
    let out = upmt_as_nobody(&dir.socket()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("session: connected to 198.51.100.1:51820"),
        "{text}"
    );
    assert!(text.contains("\ncell    rmnet0"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn no_daemon_is_a_one_line_error_naming_the_socket() {
    let dir = TempDir::new("absent");
    let err = Client::connect(&dir.socket()).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Connect(ConnectError::NotRunning { .. })),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "upmt-mh not running (no socket at {})",
            dir.socket().display()
        )
    );
}
