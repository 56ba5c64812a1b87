//! The control protocol between `upmt` (the CLI) and `upmt-mh` (the daemon): versioned requests
//! and responses as JSON, each frame a big-endian `u32` length followed by that many bytes of
//! JSON, at most [`MAX_FRAME`] bytes.
//!
//! Every frame carries [`PROTOCOL_VERSION`] (`{"version":1,"request":{"type":"status"}}`), so a
//! CLI and a daemon of different versions say so clearly instead of misreading each other. A
//! connection carries any number of request/response pairs in order; after a
//! [`Request::Watch`] it carries only [`Response::Event`] frames until either side closes.
//!
//! The types here are the wire's, deliberately plain (strings, numbers, addresses): they are
//! what the event loop answers with and what the CLI renders, and they never borrow the
//! daemon's internal types, so the daemon's tables can change without changing the protocol.
//! This module does no IO beyond reading and writing frames on a stream it is given.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version this build speaks; a frame with another version is refused.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame body accepted, in bytes. A flow table of tens of thousands of flows fits; a
/// stray client writing garbage cannot make the daemon allocate gigabytes.
pub const MAX_FRAME: usize = 1 << 20;

pub use upmt_mh_core::api::*;

/// A request frame as sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestFrame {
    pub version: u32,
    pub request: Request,
}

/// A response frame as sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    pub version: u32,
    pub response: Response,
}

impl From<Request> for RequestFrame {
    fn from(request: Request) -> Self {
        RequestFrame {
            version: PROTOCOL_VERSION,
            request,
        }
    }
}

impl From<Response> for ResponseFrame {
    fn from(response: Response) -> Self {
        ResponseFrame {
            version: PROTOCOL_VERSION,
            response,
        }
    }
}

/// A request frame whose version is checked before its body is interpreted, so a newer CLI's
/// unknown request gets "unsupported version", not "bad request".
#[derive(Deserialize)]
pub(crate) struct LooseFrame {
    pub version: u32,
    pub request: serde_json::Value,
}

/// What went wrong reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("control connection failed")]
    Io(#[source] std::io::Error),
    /// The stream ended inside a frame.
    #[error("control connection closed in the middle of a frame")]
    Truncated,
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("frame is not valid control JSON")]
    Json(#[source] serde_json::Error),
}

/// Encodes `message` as one frame (length prefix and JSON).
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let mut frame = vec![0; 4];
    serde_json::to_writer(&mut frame, message).map_err(FrameError::Json)?;
    let len = frame.len() - 4;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    // len <= MAX_FRAME < u32::MAX
    frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(frame)
}

/// Writes one frame holding `message`.
pub async fn write_frame<T: Serialize>(
    w: &mut (impl AsyncWrite + Unpin),
    message: &T,
) -> Result<(), FrameError> {
    let frame = encode(message)?;
    w.write_all(&frame).await.map_err(FrameError::Io)?;
    w.flush().await.map_err(FrameError::Io)
}

/// Reads one frame's body; `None` when the stream ends cleanly between frames. A length over
/// [`MAX_FRAME`] is refused before anything is allocated.
pub async fn read_frame_bytes(
    r: &mut (impl AsyncRead + Unpin),
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < header.len() {
        let n = r.read(&mut header[got..]).await.map_err(FrameError::Io)?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(Some(body))
}

/// Reads and decodes one frame; `None` on a clean end of stream.
pub async fn read_frame<T: serde::de::DeserializeOwned>(
    r: &mut (impl AsyncRead + Unpin),
) -> Result<Option<T>, FrameError> {
    match read_frame_bytes(r).await? {
        None => Ok(None),
        Some(body) => serde_json::from_slice(&body)
            .map(Some)
            .map_err(FrameError::Json),
    }
}

/// Decodes a request frame, or the error response that refuses it.
// One per control request, never per packet: the size of the refusal does not matter.
#[allow(clippy::result_large_err)]
pub(crate) fn parse_request(body: &[u8]) -> Result<Request, Response> {
    let frame: LooseFrame = serde_json::from_slice(body).map_err(|e| {
        Response::error(
            ErrorKind::BadRequest,
            format!("not a control request frame: {e}"),
        )
    })?;
    if frame.version != PROTOCOL_VERSION {
        return Err(Response::error(
            ErrorKind::UnsupportedVersion,
            format!(
                "the daemon speaks control protocol version {PROTOCOL_VERSION}, the client {}; use the upmt that came with the daemon",
                frame.version
            ),
        ));
    }
    serde_json::from_value(frame.request)
        .map_err(|e| Response::error(ErrorKind::BadRequest, format!("unknown request: {e}")))
}

/// The fuzz entry point for `mobile-host/fuzz` target `control_frame` and the corpus replay
/// test: `bytes` is read as a stream of length-prefixed frames, and each frame body (and, so
/// the fuzzer need not learn the prefix, `bytes` itself) goes through the daemon's request
/// parser and the CLI's response parser. Panics only on a real bug: a panic in a decoder, or a
/// request that does not survive encoding and decoding again unchanged.
#[doc(hidden)]
pub fn fuzz_decode(bytes: &[u8]) {
    fuzz_body(bytes);
    let mut stream = bytes;
    // Each frame consumes at least its 4-byte header, so this ends with the input.
    while let Ok(Some(body)) = futures::executor::block_on(read_frame_bytes(&mut stream)) {
        fuzz_body(&body);
    }
}

fn fuzz_body(body: &[u8]) {
    if let Ok(request) = parse_request(body) {
        let frame = encode(&RequestFrame::from(request.clone()))
            .unwrap_or_else(|e| panic!("a parsed request does not encode: {e}"));
        let mut rest = frame.as_slice();
        let again: Option<RequestFrame> = futures::executor::block_on(read_frame(&mut rest))
            .unwrap_or_else(|e| panic!("an encoded request does not decode: {e}"));
        let _ = request.name();
        assert_eq!(again.map(|f| f.request), Some(request));
    }
    if let Ok(frame) = serde_json::from_slice::<ResponseFrame>(body) {
        // A body of at most MAX_FRAME bytes may re-encode larger (escapes), so only
        // "too large" is an acceptable failure.
        match encode(&frame) {
            Ok(_) | Err(FrameError::TooLarge { .. }) => {}
            Err(e) => panic!("a parsed response does not encode: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn every_request() -> Vec<Request> {
        vec![
            Request::Status,
            Request::Apps,
            Request::Flows { app: None },
            Request::Flows {
                app: Some("curl".into()),
            },
            Request::MoveFlow {
                flow: 42,
                uplink: "cell".into(),
            },
            Request::MoveApp {
                app: "com.example.app".into(),
                uplink: "wifi".into(),
            },
            Request::UnpinFlow { flow: 7 },
            Request::UnpinApp { app: "curl".into() },
            Request::ReloadPolicy,
            Request::Watch,
        ]
    }

    pub(crate) fn sample_status() -> StatusReply {
        StatusReply {
            session: SessionStatus {
                state: SessionState::Connected,
                anchor: "198.51.100.1:51820".parse().unwrap(),
                virtual_addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2))],
                tun: Some("upmt0".into()),
                active_anchor: None,
                cipher: Some(SessionCipher::Aes256Gcm),
            },
            tunnels: vec![TunnelStatus {
                uplink: "wifi".into(),
                interface: "wlan0".into(),
                state: TunnelState::Up,
                local: Some("192.168.1.10:40000".parse().unwrap()),
                public: None,
                public_addr: None,
                rtt_us: Some(12_500),
                loss: 0.25,
                metered: false,
                tx_bytes: 1,
                rx_bytes: 2,
                tx_packets: 3,
                rx_packets: 4,
                idle: None,
                keepalive_s: None,
                keepalive_learning: None,
                resent_bytes: 0,
                mtu: None,
            }],
            owners: Some(Box::new(OwnerLookups {
                by_uid: 5,
                scans: 1,
                ..OwnerLookups::default()
            })),
        }
    }

    fn every_response() -> Vec<Response> {
        vec![
            Response::Status(sample_status()),
            Response::Apps(AppsReply {
                apps: vec![AppStatus {
                    name: "curl".into(),
                    rule: "curl -> cell".into(),
                    uplinks: vec!["cell".into()],
                    flows: 2,
                    blocked: 0,
                    duplicated_bytes: 4096,
                    bytes: vec![UplinkBytes {
                        uplink: "cell".into(),
                        tx_bytes: 10,
                        rx_bytes: 20,
                    }],
                    select: Some("lowest_rtt".into()),
                    move_existing: true,
                    avoid_metered: true,
                    spread: false,
                }],
            }),
            Response::Flows(FlowsReply {
                flows: vec![FlowStatus {
                    id: 42,
                    app: "curl".into(),
                    protocol: "tcp".into(),
                    src: "10.77.0.2".parse().unwrap(),
                    src_port: 40000,
                    dst: "2001:db8::1".parse().unwrap(),
                    dst_port: 443,
                    uplink: None,
                    pinned: true,
                    tx_bytes: 1,
                    rx_bytes: 2,
                    age_ms: 3,
                }],
            }),
            Response::Moved(MoveReply {
                uplink: "cell".into(),
                flows: vec![1, 2],
            }),
            Response::Unpinned(UnpinReply { flows: vec![] }),
            Response::Reloaded(ReloadReply {
                path: "/etc/upmt/policy.toml".into(),
                rules: 3,
                reevaluated: 4,
                moved: 1,
            }),
            Response::Watching,
            Response::Event(Event::FlowMoved {
                flow: 1,
                app: "curl".into(),
                from: Some("wifi".into()),
                to: "cell".into(),
                reason: MoveReason::Manual,
            }),
            Response::Event(Event::Lagged { missed: 3 }),
            Response::error(ErrorKind::NoSuchFlow, "no such flow 42"),
        ]
    }

    #[test]
    fn every_request_survives_a_json_round_trip() {
        for request in every_request() {
            let frame = RequestFrame::from(request);
            let json = serde_json::to_vec(&frame).unwrap();
            let back: RequestFrame = serde_json::from_slice(&json).unwrap();
            assert_eq!(back, frame, "{}", String::from_utf8_lossy(&json));
            assert_eq!(back.version, PROTOCOL_VERSION);
        }
    }

    #[test]
    fn every_response_survives_a_json_round_trip() {
        for response in every_response() {
            let frame = ResponseFrame::from(response);
            let json = serde_json::to_vec(&frame).unwrap();
            let back: ResponseFrame = serde_json::from_slice(&json).unwrap();
            assert_eq!(back, frame, "{}", String::from_utf8_lossy(&json));
        }
    }

    #[test]
    fn a_status_without_owner_counts_from_an_older_daemon_still_parses() {
        let mut old = sample_status();
        old.owners = None;
        let json = serde_json::to_value(&old).unwrap();
        assert!(json.get("owners").is_none(), "{json}");
        let back: StatusReply = serde_json::from_value(json).unwrap();
        assert_eq!(back, old);
    }

    #[test]
    fn a_status_without_a_cipher_from_an_older_daemon_still_parses() {
        let mut old = sample_status();
        old.session.cipher = None;
        let json = serde_json::to_value(&old).unwrap();
        assert!(json["session"].get("cipher").is_none(), "{json}");
        let back: StatusReply = serde_json::from_value(json).unwrap();
        assert_eq!(back, old);
    }

    #[test]
    fn the_wire_form_is_tagged_and_versioned_json() {
        let json = serde_json::to_string(&RequestFrame::from(Request::MoveFlow {
            flow: 42,
            uplink: "cell".into(),
        }))
        .unwrap();
        assert_eq!(
            json,
            r#"{"version":1,"request":{"type":"move_flow","flow":42,"uplink":"cell"}}"#
        );
        let json =
            serde_json::to_string(&Response::error(ErrorKind::NoSuchFlow, "no such flow 42"))
                .unwrap();
        assert_eq!(
            json,
            r#"{"type":"error","kind":"no_such_flow","message":"no such flow 42"}"#
        );
    }

    #[test]
    fn unknown_fields_and_types_are_refused() {
        let extra = r#"{"type":"move_flow","flow":1,"uplink":"cell","please":"yes"}"#;
        assert!(serde_json::from_str::<Request>(extra).is_err());
        let unknown = r#"{"type":"reboot"}"#;
        assert!(serde_json::from_str::<Request>(unknown).is_err());
    }

    #[tokio::test]
    async fn frames_round_trip_through_a_stream_back_to_back() {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        for request in every_request() {
            write_frame(&mut a, &RequestFrame::from(request))
                .await
                .unwrap();
        }
        drop(a);
        for request in every_request() {
            let frame: RequestFrame = read_frame(&mut b).await.unwrap().unwrap();
            assert_eq!(frame.request, request);
        }
        assert!(read_frame::<RequestFrame>(&mut b).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_length_over_the_limit_is_refused_before_reading_the_body() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let len = (MAX_FRAME + 1) as u32;
        a.write_all(&len.to_be_bytes()).await.unwrap();
        let err = read_frame_bytes(&mut b).await.unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len: l, max: MAX_FRAME } if l == MAX_FRAME + 1),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "frame of 1048577 bytes exceeds the 1048576-byte limit"
        );
    }

    #[tokio::test]
    async fn a_stream_cut_inside_a_frame_is_truncated_not_a_clean_end() {
        let frame = encode(&RequestFrame::from(Request::Status)).unwrap();
        for cut in [2, frame.len() - 1] {
            let (mut a, mut b) = tokio::io::duplex(1024);
            a.write_all(&frame[..cut]).await.unwrap();
            drop(a);
            let err = read_frame_bytes(&mut b).await.unwrap_err();
            assert!(matches!(err, FrameError::Truncated), "cut {cut}: {err:?}");
        }
    }

    #[test]
    fn encoding_refuses_a_message_over_the_limit() {
        let huge = Response::error(ErrorKind::BadRequest, "x".repeat(MAX_FRAME));
        assert!(matches!(encode(&huge), Err(FrameError::TooLarge { .. })));
    }
}
