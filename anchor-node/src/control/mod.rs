//! The anchor's control socket: how `upmt-an show` and `upmt-an reload` reach the running
//! daemon.
//!
//! The protocol is JSON lines on a Unix stream socket: the client writes one request line
//! (`{"version":1,"request":{"type":"show"}}`), the daemon answers with one response line
//! (`{"version":1,"response":{"type":"show",...}}`); a connection may carry several in turn.
//! Every line carries [`PROTOCOL_VERSION`], so a CLI and a daemon of different versions say so
//! instead of misreading each other. Lines are at most [`MAX_LINE`] bytes.
//!
//! - [`server`]: binds the socket (mode 0600, or 0660 with `control_group`) before the daemon
//!   drops its privileges, checks each client's credentials (root, the daemon's own user, or
//!   the group), and hands requests to the event loop.
//! - [`client`]: what the CLI uses.
//!
//! The event loop stays the only owner of the core: the server passes each request on an mpsc
//! channel ([`channel`]) and relays the loop's answer. The reply types are the wire's, plain
//! strings and numbers, documented in `docs/anchor.md`: scripts read them, so fields are only
//! ever added, never renamed.

pub mod client;
pub mod server;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The longest request or response line. `show` of ten thousand peers fits.
pub const MAX_LINE: usize = 16 << 20;
/// Requests queued for the loop; the CLI is interactive, so a handful.
const REQUEST_QUEUE: usize = 16;

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// The peers and their paths.
    Show,
    /// Apply this config's peers; report the other changes that need a restart.
    Reload { config: ReloadConfig },
}

/// What the daemon answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Show(Show),
    Reloaded(ReloadReport),
    Error { message: String },
}

/// One request line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame {
    pub version: u32,
    pub request: Request,
}

/// One response line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    pub version: u32,
    pub response: Response,
}

/// `upmt-an show`: the anchor and each configured peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Show {
    /// The anchor's public key (base64).
    pub public_key: String,
    /// The tunnel's UDP listen address.
    pub listen: String,
    /// The TUN device.
    pub tun: String,
    /// The config file the daemon runs with.
    pub config: String,
    /// Every configured peer, in config order.
    pub peers: Vec<PeerShow>,
}

/// One peer in [`Show`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerShow {
    pub name: String,
    /// Its static public key (base64).
    pub public_key: String,
    /// Its virtual IPv4 address.
    pub address: Ipv4Addr,
    /// Its virtual IPv6 address, if it has one.
    pub address6: Option<Ipv6Addr>,
    /// It has a confirmed session.
    pub connected: bool,
    /// Milliseconds since its newest handshake; `None`: none since the daemon started.
    pub last_handshake_ms_ago: Option<u64>,
    /// Bytes of authenticated datagrams received from it (tunnel overhead included).
    pub rx_bytes: u64,
    /// Bytes of datagrams sent to it.
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Flows the anchor remembers for it (for their downlink path).
    pub flows: u64,
    /// Its paths, in the order first seen.
    pub paths: Vec<PathShow>,
    /// Bytes of downlink datagrams sent again after their flow left a path (in `tx_bytes`).
    #[serde(default)]
    pub resent_bytes: u64,
}

/// One path of a peer in [`Show`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathShow {
    /// The path id (the mobile host's uplink number).
    pub path: u8,
    /// Its validated endpoint, where downlink goes; `None` while not validated yet.
    pub endpoint: Option<SocketAddr>,
    /// Milliseconds since the last authenticated packet from that endpoint.
    pub last_packet_ms_ago: Option<u64>,
    /// The mobile host said this path is down.
    pub down: bool,
}

/// A config as `reload` sends it: the peers, and every other setting as text (a setting that
/// differs from the running one needs a restart). No key material: only public keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadConfig {
    pub peers: Vec<PeerEntry>,
    pub settings: BTreeMap<String, String>,
}

/// One `[[peer]]` of a [`ReloadConfig`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    pub name: String,
    /// Base64 public key.
    pub public_key: String,
    pub address: Ipv4Addr,
    pub address6: Option<Ipv6Addr>,
}

/// What a reload did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Peers that are new, or came back changed (they handshake again).
    pub added: Vec<String>,
    /// Peers cut off: their sessions and flows are gone, their packets refused.
    pub removed: Vec<String>,
    /// Peers left untouched, sessions included.
    pub unchanged: usize,
    /// Settings that differ from the running ones and were not applied: they need a restart.
    pub needs_restart: Vec<String>,
}

/// One request for the event loop, and where its answer goes.
#[derive(Debug)]
pub struct ControlRequest {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

/// The server's end of the channel to the loop.
#[derive(Clone, Debug)]
pub struct LoopHandle {
    requests: mpsc::Sender<ControlRequest>,
}

impl LoopHandle {
    /// Hands `request` to the loop and waits for its answer.
    pub async fn handle(&self, request: Request) -> Response {
        let (reply, answer) = oneshot::channel();
        if self
            .requests
            .send(ControlRequest { request, reply })
            .await
            .is_err()
        {
            return Response::error("the daemon is shutting down");
        }
        answer
            .await
            .unwrap_or_else(|_| Response::error("the daemon dropped the request"))
    }
}

/// Makes the server's and the loop's ends.
pub fn channel() -> (LoopHandle, mpsc::Receiver<ControlRequest>) {
    let (requests, rx) = mpsc::channel(REQUEST_QUEUE);
    (LoopHandle { requests }, rx)
}

impl Response {
    pub fn error(message: impl Into<String>) -> Response {
        Response::Error {
            message: message.into(),
        }
    }
}

/// What went wrong reading or writing a line.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("control connection failed")]
    Io(#[source] std::io::Error),
    #[error("control line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("control line is not valid control JSON")]
    Json(#[source] serde_json::Error),
}

/// Reads one line (without its newline); `None` at a clean end of stream.
pub async fn read_line(
    r: &mut (impl tokio::io::AsyncBufRead + Unpin),
) -> Result<Option<Vec<u8>>, FrameError> {
    use tokio::io::AsyncBufReadExt as _;
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf().await.map_err(FrameError::Io)?;
        if buf.is_empty() {
            return Ok((!line.is_empty()).then_some(line));
        }
        let (take, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > MAX_LINE + 1 {
            return Err(FrameError::TooLong);
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            line.pop();
            return Ok(Some(line));
        }
    }
}

/// Writes `message` as one JSON line.
pub async fn write_line<T: Serialize>(
    w: &mut (impl tokio::io::AsyncWrite + Unpin),
    message: &T,
) -> Result<(), FrameError> {
    use tokio::io::AsyncWriteExt as _;
    let mut line = serde_json::to_vec(message).map_err(FrameError::Json)?;
    line.push(b'\n');
    w.write_all(&line).await.map_err(FrameError::Io)?;
    w.flush().await.map_err(FrameError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_read_as_documented() {
        let show: RequestFrame =
            serde_json::from_str(r#"{"version":1,"request":{"type":"show"}}"#).unwrap();
        assert_eq!(show.request, Request::Show);
        let err = ResponseFrame {
            version: PROTOCOL_VERSION,
            response: Response::error("no"),
        };
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"version":1,"response":{"type":"error","message":"no"}}"#
        );
    }

    #[tokio::test]
    async fn a_line_is_read_without_its_newline_and_a_too_long_one_is_refused() {
        let mut r = &b"{\"a\":1}\n{\"b\":2}"[..];
        assert_eq!(read_line(&mut r).await.unwrap().unwrap(), b"{\"a\":1}");
        assert_eq!(read_line(&mut r).await.unwrap().unwrap(), b"{\"b\":2}");
        assert!(read_line(&mut r).await.unwrap().is_none());
        let long = vec![b'x'; MAX_LINE + 10];
        let mut r = &long[..];
        assert!(matches!(read_line(&mut r).await, Err(FrameError::TooLong)));
    }
}
