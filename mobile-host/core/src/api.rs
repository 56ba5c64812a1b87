//! The control vocabulary: what `upmt` asks the mobile host (requests), what it answers
//! (responses) and what it tells watchers (events).
//!
//! The types are the wire's, deliberately plain (strings, numbers, addresses), so the host's
//! tables can change without changing the protocol. They are pure data: the framing (length
//! prefix, version, JSON on a stream) lives in the daemon's `control::proto`, which re-exports
//! these.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// What the CLI asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Session state and every tunnel.
    Status,
    /// Every app seen, its rule and where its traffic goes.
    Apps,
    /// Every flow, or only those of one app.
    Flows {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        app: Option<String>,
    },
    /// Moves one flow to an uplink now and pins it there.
    MoveFlow { flow: u64, uplink: String },
    /// Moves all of an app's flows to an uplink now and pins them there.
    MoveApp { app: String, uplink: String },
    /// Hands one pinned flow back to its policy.
    UnpinFlow { flow: u64 },
    /// Hands all of an app's pinned flows back to their policy.
    UnpinApp { app: String },
    /// Reads the policy file again; on success it applies to new and existing flows.
    ReloadPolicy,
    /// Turns the connection into a stream of [`Event`]s.
    Watch,
    /// Data usage kept across flows and restarts, per app per uplink, and the uplinks' caps.
    Usage {
        /// Only this app.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        app: Option<String>,
        /// From this day on (`YYYY-MM-DD`, local time); default: every day kept.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<String>,
    },
}

impl Request {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Apps => "apps",
            Request::Flows { .. } => "flows",
            Request::MoveFlow { .. } => "move_flow",
            Request::MoveApp { .. } => "move_app",
            Request::UnpinFlow { .. } => "unpin_flow",
            Request::UnpinApp { .. } => "unpin_app",
            Request::ReloadPolicy => "reload_policy",
            Request::Watch => "watch",
            Request::Usage { .. } => "usage",
        }
    }
}

/// What the daemon answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    Status(StatusReply),
    Apps(AppsReply),
    Flows(FlowsReply),
    Moved(MoveReply),
    Unpinned(UnpinReply),
    Reloaded(ReloadReply),
    /// The answer to [`Request::Watch`]: events follow.
    Watching,
    /// One event of a watch stream.
    Event(Event),
    Usage(UsageReply),
    Error(ErrorReply),
}

impl Response {
    /// An error response.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
        Response::Error(ErrorReply {
            kind,
            message: message.into(),
        })
    }
}

/// The session with the anchor and every tunnel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub session: SessionStatus,
    pub tunnels: Vec<TunnelStatus>,
    /// How new flows' owners were found (absent from daemons that did not count them). Boxed so
    /// that every [`Response`] does not grow by its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owners: Option<Box<OwnerLookups>>,
}

/// How new flows' owners were found, counted since the daemon started. The first six are the
/// lookup's (the driver's), then two of the core's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OwnerLookups {
    /// Named from the uid alone (an Android app's own uid), no process read.
    pub by_uid: u64,
    /// The process came from the inode index.
    pub index_hits: u64,
    /// The process was among those the process events named new or changed, and only those
    /// were read (a just-started app): no listing of `/proc`, no other process read.
    pub event_hits: u64,
    /// The process was found by reading processes.
    pub scans: u64,
    /// The socket was found but no process holding it: named by its uid.
    pub uid_fallback: u64,
    /// No socket any more (or ICMP): the default rule applied.
    pub unknown: u64,
    /// Flows decided by the default rule because their lookup took too long.
    pub lookups_overdue: u64,
    /// Answers that came after such a decision and decided the flow again.
    pub late_answers: u64,
    /// How the lookup learns of new processes (absent from daemons that did not tell).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_watch: Option<ProcessWatch>,
}

/// How the owner lookup learns which processes are new or gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessWatch {
    /// Process events on a socket of the daemon's own network namespace (the initial one).
    Events,
    /// Process events on a socket opened in the initial network namespace: the daemon runs in
    /// another one, and the kernel sends process events only to the initial one's sockets.
    EventsFromInitialNetns,
    /// No process events: a missed socket lists `/proc`.
    Scans,
}

/// The authenticated session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionStatus {
    pub state: SessionState,
    /// The anchor's UDP endpoint.
    pub anchor: SocketAddr,
    /// Addresses the anchor gave this host (empty until connected).
    #[serde(default)]
    pub virtual_addresses: Vec<IpAddr>,
    /// The TUN device, once it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tun: Option<String>,
    /// Which of several anchors is in use (absent with a single anchor). Boxed so that every
    /// [`Response`] does not grow by its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_anchor: Option<Box<ActiveAnchor>>,
    /// The session's transport AEAD, once connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher: Option<SessionCipher>,
}

/// The anchor in use when the config lists more than one, and the last failover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveAnchor {
    /// Its position in the config (0: `anchor`, 1: the first `[[fallback_anchor]]`, ...).
    pub index: u64,
    /// How many anchors the config lists.
    pub anchors: u64,
    /// Its endpoints, preferred first.
    pub endpoints: Vec<SocketAddr>,
    /// Its public key (base64).
    pub public_key: String,
    /// How long it has been in use, in seconds.
    pub since_s: u64,
    /// The anchor left in the last failover (its first endpoint), if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_over_from: Option<SocketAddr>,
    /// Flows lost in the last failover (TCP ones reset).
    #[serde(default)]
    pub flows_reset: u64,
    /// What users read: "failed over from X Ns ago: N flows reset".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A session's transport AEAD, named as the core names it (`upmt_proto::Cipher::as_str`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionCipher {
    #[serde(rename = "chacha20-poly1305")]
    ChaCha20Poly1305,
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
}

impl SessionCipher {
    /// The name in the JSON reply and the human status.
    pub fn as_str(self) -> &'static str {
        upmt_proto::Cipher::from(self).as_str()
    }
}

impl From<upmt_proto::Cipher> for SessionCipher {
    fn from(c: upmt_proto::Cipher) -> Self {
        match c {
            upmt_proto::Cipher::ChaCha20Poly1305 => SessionCipher::ChaCha20Poly1305,
            upmt_proto::Cipher::Aes256Gcm => SessionCipher::Aes256Gcm,
        }
    }
}

impl From<SessionCipher> for upmt_proto::Cipher {
    fn from(c: SessionCipher) -> Self {
        match c {
            SessionCipher::ChaCha20Poly1305 => upmt_proto::Cipher::ChaCha20Poly1305,
            SessionCipher::Aes256Gcm => upmt_proto::Cipher::Aes256Gcm,
        }
    }
}

/// Where the session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Handshaking,
    Connected,
}

/// One tunnel: one uplink of the shared session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TunnelStatus {
    /// The uplink's name in the config and the policy ("wifi").
    pub uplink: String,
    /// Its network interface ("wlan0").
    pub interface: String,
    pub state: TunnelState,
    /// The tunnel socket's local address, when it is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<SocketAddr>,
    /// The address and port the anchor sees for it (after NAT), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<SocketAddr>,
    /// The address alone of [`TunnelStatus::public`]: the NAT's public address on this path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_addr: Option<IpAddr>,
    /// Smoothed probe round-trip time, in microseconds, once a probe was answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u64>,
    /// Smoothed fraction of probes lost, 0.0 to 1.0.
    pub loss: f32,
    /// Data on it costs (config `metered = true`).
    #[serde(default)]
    pub metered: bool,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub rx_packets: u64,
    /// What it sends while the session is idle (absent from daemons that do not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<TunnelIdle>,
    /// The interval between its idle packets now, in seconds: the keepalive (learned or
    /// configured) or the flowless check; absent while asleep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_s: Option<u64>,
    /// With `idle_keepalive_s = "auto"`: true while its NAT is still being tested for a
    /// longer keepalive, false once learned; absent with a fixed keepalive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_learning: Option<bool>,
    /// Bytes of datagrams sent again on it: recent packets of flows that moved to it from a
    /// path that went down (see docs/architecture.md, "Resending what was in flight").
    #[serde(default)]
    pub resent_bytes: u64,
    /// The largest outer IP packet its path was proven to carry (padded probes, see
    /// docs/architecture.md, "Path MTU"); absent until the interface MTU is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
}

/// What a tunnel sends while the session is idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelIdle {
    /// Keepalives that hold its NAT binding open: it carries flows, or may take them over.
    Keepalive,
    /// No flows anywhere: a rare liveness check only.
    Check,
    /// Asleep (`idle = "sleep"`, no flows on it): nothing until a flow uses it.
    Asleep,
}

/// Liveness of a tunnel as the daemon sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelState {
    /// Probes are answered; it carries traffic.
    Up,
    /// The interface is up, the tunnel not (yet, or any more) proven.
    Probing,
    /// The interface is down or missing.
    Down,
}

/// Every app seen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppsReply {
    pub apps: Vec<AppStatus>,
}

/// One app.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppStatus {
    /// Its name (Android package, or Linux program name).
    pub name: String,
    /// The policy rule that matched it, as written ("com.example.* -> wifi, cell").
    pub rule: String,
    /// The uplink its flows use now; several when some are moved or pinned; none when blocked
    /// or without flows.
    pub uplinks: Vec<String>,
    /// Live flows.
    pub flows: u64,
    /// Flows of this app its policy blocks right now.
    #[serde(default)]
    pub blocked: u64,
    /// Bytes per uplink, over the app's live flows.
    pub bytes: Vec<UplinkBytes>,
    /// How its rule picks among its uplinks: "order", "lowest_rtt" or "lowest_loss" (none
    /// for bypass and block rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<String>,
    /// Its existing flows follow a measured choice.
    #[serde(default)]
    pub move_existing: bool,
    /// Metered uplinks only as a last resort.
    #[serde(default)]
    pub avoid_metered: bool,
    /// Its new flows are spread over its uplinks.
    #[serde(default)]
    pub spread: bool,
    /// What `redundant = true` cost so far: the second copies of its packets sent by the
    /// mobile host (whole datagrams), kept after its flows ended.
    #[serde(default)]
    pub duplicated_bytes: u64,
}

/// Bytes carried on one uplink.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkBytes {
    pub uplink: String,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

/// Data usage from `since` through `until` (local days, `YYYY-MM-DD`): what the carrier
/// sees, tunnel overhead included.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsageReply {
    pub since: String,
    pub until: String,
    /// Totals over the apps shown.
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// Per app, by name.
    pub apps: Vec<AppUsage>,
    /// Per uplink (over the apps shown), with its cap if it has one.
    pub uplinks: Vec<UplinkUsage>,
}

/// One app's usage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppUsage {
    pub name: String,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub uplinks: Vec<UplinkBytes>,
}

/// One uplink's usage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkUsage {
    pub uplink: String,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap: Option<CapStatus>,
}

/// A data cap and where the current period stands (all apps, both directions).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapStatus {
    pub cap_bytes: u64,
    /// "day" or "month".
    pub period: String,
    /// The first day of the current period.
    pub period_start: String,
    pub used_bytes: u64,
    pub left_bytes: u64,
    /// The first day of the next period, when the uplink is every app's again.
    pub resets: String,
    /// The cap is reached: only essential apps use the uplink.
    pub reached: bool,
}

/// Flows, in id order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowsReply {
    pub flows: Vec<FlowStatus>,
}

/// One flow (a 5-tuple) as the mobile host sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowStatus {
    pub id: u64,
    pub app: String,
    /// "tcp", "udp", "icmp", or the IP protocol number.
    pub protocol: String,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
    /// The uplink carrying it; none when blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
    /// Pinned by `upmt move` (static) rather than placed by the policy (dynamic).
    pub pinned: bool,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// Time since its first packet, in milliseconds.
    pub age_ms: u64,
}

/// Flows moved by a move request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveReply {
    pub uplink: String,
    pub flows: Vec<u64>,
}

/// Flows handed back to their policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnpinReply {
    pub flows: Vec<u64>,
}

/// A policy reload that took effect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReply {
    /// The policy file read.
    pub path: String,
    /// Rules in it.
    pub rules: u64,
    /// Existing flows evaluated again, and how many of them changed uplink.
    pub reevaluated: u64,
    pub moved: u64,
}

/// Something that happened, for `upmt watch`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    SessionUp,
    SessionDown,
    TunnelUp {
        uplink: String,
    },
    TunnelDown {
        uplink: String,
    },
    FlowMoved {
        flow: u64,
        app: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        to: String,
        reason: MoveReason,
    },
    /// A pinned flow went back to its policy.
    FlowUnpinned {
        flow: u64,
        app: String,
        reason: MoveReason,
    },
    AppBlocked {
        app: String,
        flow: u64,
        /// Why, e.g. "no allowed uplink is up (wants: wifi)".
        reason: String,
    },
    PolicyReloaded {
        path: String,
        rules: u64,
    },
    /// An uplink's data cap is reached: apps not marked essential lose it until `resets`.
    CapReached {
        uplink: String,
        used_bytes: u64,
        cap_bytes: u64,
        /// The first day of the next period (`YYYY-MM-DD`).
        resets: String,
    },
    /// A new period began: every app may use the uplink again.
    CapRestored {
        uplink: String,
    },
    /// This watcher was too slow and missed events.
    Lagged {
        missed: u64,
    },
}

/// Why a flow changed uplink or lost its pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveReason {
    /// `upmt move`.
    Manual,
    /// `upmt unpin`.
    Unpinned,
    /// Its uplink went down.
    UplinkDown,
    /// The policy prefers another uplink (one came up, or the policy was reloaded).
    Policy,
    /// Its rule picks by measurement (`select`, `move_existing`) and another uplink has been
    /// better by the margin for a while.
    Measured,
}

/// A refused request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    /// One line, for humans: "no such flow 42".
    pub message: String,
}

/// What kind of refusal, for scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    PermissionDenied,
    UnsupportedVersion,
    /// Not a request this daemon understands, or a frame over the control protocol's frame limit.
    BadRequest,
    NoSuchFlow,
    NoSuchApp,
    NoSuchUplink,
    /// The uplink exists but cannot carry traffic now.
    UplinkDown,
    InvalidPolicy,
    /// The daemon has nothing to answer with (e.g. no policy file configured).
    Unsupported,
    /// The daemon is shutting down or its loop is gone.
    Unavailable,
}
