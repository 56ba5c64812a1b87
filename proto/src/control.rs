//! Control messages: the plaintext of a Control packet.
//!
//! Layout: `type u8` then the fields, big-endian. Only parsing and emitting live here; the
//! cores decide when to send them. Unknown types decode to `Err(UnknownControl)` so that a newer
//! peer's messages are dropped and counted, not misread.
//!
//! Signalling (`PathStatus`, `FlowMove`) is reliable: the client numbers each message with a
//! sequence number that only grows, also across client restarts (it is derived from the unix
//! clock), resends it until a `SignalAck` with that number comes back, and the anchor applies a
//! message only when it is newer than what it already applied to the same path or flow, so
//! duplicates and reordering are harmless. The anchor acks every authenticated signal, applied
//! or not, since the first ack may have been lost.

use crate::{DropReason, PathId};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Type byte of [`ControlMessage::Probe`].
pub const TYPE_PROBE: u8 = 1;
/// Type byte of [`ControlMessage::ProbeAck`].
pub const TYPE_PROBE_ACK: u8 = 2;

/// Type byte of [`ControlMessage::PathChallenge`].
pub const TYPE_PATH_CHALLENGE: u8 = 3;
/// Type byte of [`ControlMessage::PathResponse`].
pub const TYPE_PATH_RESPONSE: u8 = 4;
/// Length of the unpredictable payload of a path challenge.
pub const CHALLENGE_LEN: usize = 8;

/// Type byte of [`ControlMessage::PathStatus`].
pub const TYPE_PATH_STATUS: u8 = 5;
/// Type byte of [`ControlMessage::FlowMove`].
pub const TYPE_FLOW_MOVE: u8 = 6;
/// Type byte of [`ControlMessage::SignalAck`].
pub const TYPE_SIGNAL_ACK: u8 = 7;

/// Type byte of [`ControlMessage::NatRegister`].
pub const TYPE_NAT_REGISTER: u8 = 8;
/// Type byte of [`ControlMessage::NatRegistered`].
pub const TYPE_NAT_REGISTERED: u8 = 9;
/// Type byte of [`ControlMessage::NatRequest`].
pub const TYPE_NAT_REQUEST: u8 = 10;
/// Type byte of [`ControlMessage::NatReply`].
pub const TYPE_NAT_REPLY: u8 = 11;
/// Length of a NAT test's token and nonce.
pub const NAT_TOKEN_LEN: usize = 8;
/// `type`, `token`, then zeros to the length of the `NatRegistered` that answers it (it goes
/// to an address the anchor has not validated, so it must not be bigger).
const NAT_REGISTER_LEN: usize = 1 + 2 * NAT_TOKEN_LEN;
/// `type`, then a token or nonce: `NatRequest` and `NatReply`.
const NAT_SHORT_LEN: usize = 1 + NAT_TOKEN_LEN;

/// The longest control message this version emits: a `FlowMove` of a redundant flow (a
/// padded `Probe` and a `ProbeAck` with the observed endpoint are a byte shorter).
pub const MAX_LEN: usize = FLOW_MOVE_LEN + 1;
/// `type`, `seq u32`, `sent_us u64`: a probe or probe ack without anything appended.
const PROBE_BASE_LEN: usize = 1 + 4 + 8;
/// An endpoint appended to a message: `family u8` (4 or 6), `address [u8; 16]` (IPv4 in the
/// first 4 bytes, the rest zero), `port u16`.
const ENDPOINT_LEN: usize = 1 + 16 + 2;
/// A probe as this version sends it: padded with zeros to the length of a `ProbeAck` carrying
/// the observed endpoint, so that answer is never bigger than the probe (it goes to a source
/// not validated yet). Older anchors ignore the padding; older clients the appended endpoint.
pub const PROBE_LEN: usize = PROBE_BASE_LEN + ENDPOINT_LEN;
const PATH_STATUS_LEN: usize = 1 + 8 + 1 + 1;
/// `type`, `seq u64`, `path u8`, `protocol u8`, `local_port u16`, `remote_port u16`,
/// `family u8` (4 or 6), `remote [u8; 16]` (IPv4 in the first 4 bytes, the rest zero); a
/// redundant flow appends `redundant path u8`, which an older anchor ignores (it keeps sending
/// the downlink on `path` alone).
const FLOW_MOVE_LEN: usize = 1 + 8 + 1 + 1 + 2 + 2 + 1 + 16;
const SIGNAL_ACK_LEN: usize = 1 + 8;

/// A flow as the anchor sees it on the mobile host's side: protocol, the remote address and
/// port, and the mobile host's local port (its virtual address is implied by the session).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// IP protocol number (6 TCP, 17 UDP, ...).
    pub protocol: u8,
    /// The correspondent's address.
    pub remote: IpAddr,
    /// The correspondent's port (0 for protocols without ports).
    pub remote_port: u16,
    /// The mobile host's port (0 for protocols without ports).
    pub local_port: u16,
}

impl From<&upmt_paft::FlowKey> for FlowKey {
    /// The flow of a PAFT key in the direction the mobile host initiated it (its source is the
    /// mobile host's address): reverse a key read from a packet toward the mobile host first.
    fn from(key: &upmt_paft::FlowKey) -> Self {
        FlowKey {
            protocol: key.proto,
            remote: key.dst,
            remote_port: key.dport,
            local_port: key.sport,
        }
    }
}

/// One control message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ControlMessage {
    /// The sender asks for an echo on the same path.
    Probe {
        /// Sequence number, per path.
        seq: u32,
        /// The sender's clock in microseconds when sent (echoed back, so only the sender reads it).
        sent_us: u64,
    },
    /// The echo of a probe, sent on the probe's path to the probe's source address.
    ProbeAck {
        /// The probe's sequence number.
        seq: u32,
        /// The probe's `sent_us`.
        echo_us: u64,
        /// Anchor to client: the probe's source address and port as the anchor saw it (the
        /// path's public, NAT-mapped endpoint). Sent only in answer to a padded probe
        /// ([`PROBE_LEN`]); absent from older anchors, ignored by older clients.
        observed: Option<SocketAddr>,
    },
    /// The anchor asks whether the peer really is at the address a packet came from: only the
    /// peer can decrypt `data` and echo it from that address (QUIC-style path validation).
    PathChallenge {
        /// Random bytes to echo.
        data: [u8; CHALLENGE_LEN],
    },
    /// The echo of a challenge, sent on the challenge's path.
    PathResponse {
        /// The challenge's bytes.
        data: [u8; CHALLENGE_LEN],
    },
    /// Client to anchor: a path went down (do not send on it) or came back.
    PathStatus {
        /// Signalling sequence number (see the module docs).
        seq: u64,
        /// The path concerned (not necessarily the one the message travels on).
        path: PathId,
        /// True: the path is gone; false: usable again.
        down: bool,
    },
    /// Client to anchor: send this flow's downlink on `path` from now on (and a copy of each
    /// packet on `redundant`, if set).
    FlowMove {
        /// Signalling sequence number (see the module docs).
        seq: u64,
        /// The flow's new path.
        path: PathId,
        /// The flow.
        flow: FlowKey,
        /// A redundant flow's second path: every downlink packet goes on both.
        redundant: Option<PathId>,
    },
    /// Anchor to client: the signal numbered `seq` arrived.
    SignalAck {
        /// The acknowledged sequence number.
        seq: u64,
    },
    /// Client to anchor, from a path's disposable NAT-test socket (see
    /// [`crate::client::natlearn`]): note this source address for a test of how long the
    /// path's NAT keeps an idle binding. Never moves the path or proves it alive.
    NatRegister {
        /// The client's name for this test, echoed in the answer.
        token: [u8; NAT_TOKEN_LEN],
    },
    /// Anchor to client, to the registering address: noted; a later `NatRequest` must carry
    /// `nonce`, which only a receiver at that address can read.
    NatRegistered {
        /// The registration's token.
        token: [u8; NAT_TOKEN_LEN],
        /// Random bytes of the anchor.
        nonce: [u8; NAT_TOKEN_LEN],
    },
    /// Client to anchor, on the path itself: send one `NatReply` to the address registered
    /// for this path.
    NatRequest {
        /// The nonce of the registration's answer.
        nonce: [u8; NAT_TOKEN_LEN],
    },
    /// Anchor to client, to the registered address: the NAT binding of the test socket is
    /// still there.
    NatReply {
        /// The request's nonce.
        nonce: [u8; NAT_TOKEN_LEN],
    },
}

fn token_at(b: &[u8], at: usize) -> Result<[u8; NAT_TOKEN_LEN], DropReason> {
    let mut t = [0u8; NAT_TOKEN_LEN];
    t.copy_from_slice(b.get(at..at + NAT_TOKEN_LEN).ok_or(DropReason::Truncated)?);
    Ok(t)
}

/// An appended endpoint; `None` when it is absent, short or of an unknown family (a newer
/// peer's field is ignored, never a failure).
fn parse_endpoint(b: &[u8]) -> Option<SocketAddr> {
    let b = b.get(..ENDPOINT_LEN)?;
    let port = u16::from_be_bytes([b[17], b[18]]);
    let ip = match b[0] {
        4 => IpAddr::V4(Ipv4Addr::new(b[1], b[2], b[3], b[4])),
        6 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[1..17]);
            IpAddr::V6(Ipv6Addr::from(a))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Writes `e` into `b` (at least [`ENDPOINT_LEN`] bytes).
fn emit_endpoint(e: SocketAddr, b: &mut [u8]) {
    b[..ENDPOINT_LEN].fill(0);
    match e.ip() {
        IpAddr::V4(a) => {
            b[0] = 4;
            b[1..5].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            b[0] = 6;
            b[1..17].copy_from_slice(&a.octets());
        }
    }
    b[17..19].copy_from_slice(&e.port().to_be_bytes());
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, DropReason> {
    let mut t = [0u8; 8];
    t.copy_from_slice(b.get(at..at + 8).ok_or(DropReason::Truncated)?);
    Ok(u64::from_be_bytes(t))
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, DropReason> {
    let mut t = [0u8; 2];
    t.copy_from_slice(b.get(at..at + 2).ok_or(DropReason::Truncated)?);
    Ok(u16::from_be_bytes(t))
}

impl ControlMessage {
    /// Length of the encoded message.
    pub fn buffer_len(&self) -> usize {
        match self {
            ControlMessage::Probe { .. }
            | ControlMessage::ProbeAck {
                observed: Some(_), ..
            } => PROBE_LEN,
            ControlMessage::ProbeAck { observed: None, .. } => PROBE_BASE_LEN,
            ControlMessage::PathChallenge { .. } | ControlMessage::PathResponse { .. } => {
                1 + CHALLENGE_LEN
            }
            ControlMessage::PathStatus { .. } => PATH_STATUS_LEN,
            ControlMessage::FlowMove { redundant, .. } => {
                FLOW_MOVE_LEN + usize::from(redundant.is_some())
            }
            ControlMessage::SignalAck { .. } => SIGNAL_ACK_LEN,
            ControlMessage::NatRegister { .. } | ControlMessage::NatRegistered { .. } => {
                NAT_REGISTER_LEN
            }
            ControlMessage::NatRequest { .. } | ControlMessage::NatReply { .. } => NAT_SHORT_LEN,
        }
    }

    /// Decodes one message; trailing bytes are ignored so later versions may append fields.
    pub fn parse(b: &[u8]) -> Result<Self, DropReason> {
        let (&ty, rest) = b.split_first().ok_or(DropReason::Truncated)?;
        match ty {
            TYPE_PROBE | TYPE_PROBE_ACK => {
                if rest.len() < 12 {
                    return Err(DropReason::Truncated);
                }
                let mut s = [0u8; 4];
                s.copy_from_slice(&rest[..4]);
                let mut t = [0u8; 8];
                t.copy_from_slice(&rest[4..12]);
                let (seq, us) = (u32::from_be_bytes(s), u64::from_be_bytes(t));
                Ok(if ty == TYPE_PROBE {
                    ControlMessage::Probe { seq, sent_us: us }
                } else {
                    ControlMessage::ProbeAck {
                        seq,
                        echo_us: us,
                        observed: rest.get(12..).and_then(parse_endpoint),
                    }
                })
            }
            TYPE_PATH_CHALLENGE | TYPE_PATH_RESPONSE => {
                let mut data = [0u8; CHALLENGE_LEN];
                data.copy_from_slice(rest.get(..CHALLENGE_LEN).ok_or(DropReason::Truncated)?);
                Ok(if ty == TYPE_PATH_CHALLENGE {
                    ControlMessage::PathChallenge { data }
                } else {
                    ControlMessage::PathResponse { data }
                })
            }
            TYPE_PATH_STATUS => {
                let seq = u64_at(b, 1)?;
                let (&path, &down) = b.get(9).zip(b.get(10)).ok_or(DropReason::Truncated)?;
                Ok(ControlMessage::PathStatus {
                    seq,
                    path: PathId(path),
                    down: down != 0,
                })
            }
            TYPE_FLOW_MOVE => {
                let redundant = b.get(FLOW_MOVE_LEN).map(|&p| PathId(p));
                let b = b.get(..FLOW_MOVE_LEN).ok_or(DropReason::Truncated)?;
                let seq = u64_at(b, 1)?;
                let (path, protocol) = (b[9], b[10]);
                let local_port = u16_at(b, 11)?;
                let remote_port = u16_at(b, 13)?;
                let mut a = [0u8; 16];
                a.copy_from_slice(&b[16..32]);
                let remote = match b[15] {
                    4 => IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
                    6 => IpAddr::V6(Ipv6Addr::from(a)),
                    _ => return Err(DropReason::UnknownControl),
                };
                Ok(ControlMessage::FlowMove {
                    seq,
                    path: PathId(path),
                    flow: FlowKey {
                        protocol,
                        remote,
                        remote_port,
                        local_port,
                    },
                    redundant,
                })
            }
            TYPE_SIGNAL_ACK => Ok(ControlMessage::SignalAck { seq: u64_at(b, 1)? }),
            // Refused unpadded: its answer goes to an address not validated yet.
            TYPE_NAT_REGISTER if b.len() < NAT_REGISTER_LEN => Err(DropReason::Truncated),
            TYPE_NAT_REGISTER => Ok(ControlMessage::NatRegister {
                token: token_at(b, 1)?,
            }),
            TYPE_NAT_REGISTERED => Ok(ControlMessage::NatRegistered {
                token: token_at(b, 1)?,
                nonce: token_at(b, 1 + NAT_TOKEN_LEN)?,
            }),
            TYPE_NAT_REQUEST => Ok(ControlMessage::NatRequest {
                nonce: token_at(b, 1)?,
            }),
            TYPE_NAT_REPLY => Ok(ControlMessage::NatReply {
                nonce: token_at(b, 1)?,
            }),
            _ => Err(DropReason::UnknownControl),
        }
    }

    /// Encodes into the start of `b`; returns the length, or `TooBig` if `b` is too short.
    pub fn emit(&self, b: &mut [u8]) -> Result<usize, DropReason> {
        let len = self.buffer_len();
        let b = b.get_mut(..len).ok_or(DropReason::TooBig)?;
        let (ty, seq, us) = match *self {
            ControlMessage::PathStatus { seq, path, down } => {
                b[0] = TYPE_PATH_STATUS;
                b[1..9].copy_from_slice(&seq.to_be_bytes());
                b[9] = path.0;
                b[10] = u8::from(down);
                return Ok(len);
            }
            ControlMessage::FlowMove {
                seq,
                path,
                flow,
                redundant,
            } => {
                b[0] = TYPE_FLOW_MOVE;
                if let Some(r) = redundant {
                    b[FLOW_MOVE_LEN] = r.0;
                }
                b[1..9].copy_from_slice(&seq.to_be_bytes());
                b[9] = path.0;
                b[10] = flow.protocol;
                b[11..13].copy_from_slice(&flow.local_port.to_be_bytes());
                b[13..15].copy_from_slice(&flow.remote_port.to_be_bytes());
                b[16..32].fill(0);
                match flow.remote {
                    IpAddr::V4(a) => {
                        b[15] = 4;
                        b[16..20].copy_from_slice(&a.octets());
                    }
                    IpAddr::V6(a) => {
                        b[15] = 6;
                        b[16..32].copy_from_slice(&a.octets());
                    }
                }
                return Ok(len);
            }
            ControlMessage::SignalAck { seq } => {
                b[0] = TYPE_SIGNAL_ACK;
                b[1..9].copy_from_slice(&seq.to_be_bytes());
                return Ok(len);
            }
            ControlMessage::NatRegister { token } => {
                b[0] = TYPE_NAT_REGISTER;
                b[1..NAT_SHORT_LEN].copy_from_slice(&token);
                b[NAT_SHORT_LEN..].fill(0);
                return Ok(len);
            }
            ControlMessage::NatRegistered { token, nonce } => {
                b[0] = TYPE_NAT_REGISTERED;
                b[1..NAT_SHORT_LEN].copy_from_slice(&token);
                b[NAT_SHORT_LEN..].copy_from_slice(&nonce);
                return Ok(len);
            }
            ControlMessage::NatRequest { nonce } | ControlMessage::NatReply { nonce } => {
                b[0] = if matches!(self, ControlMessage::NatRequest { .. }) {
                    TYPE_NAT_REQUEST
                } else {
                    TYPE_NAT_REPLY
                };
                b[1..].copy_from_slice(&nonce);
                return Ok(len);
            }
            ControlMessage::Probe { seq, sent_us } => {
                b[PROBE_BASE_LEN..].fill(0);
                (TYPE_PROBE, seq, sent_us)
            }
            ControlMessage::ProbeAck {
                seq,
                echo_us,
                observed,
            } => {
                if let Some(e) = observed {
                    emit_endpoint(e, &mut b[PROBE_BASE_LEN..]);
                }
                (TYPE_PROBE_ACK, seq, echo_us)
            }
            ControlMessage::PathChallenge { data } | ControlMessage::PathResponse { data } => {
                b[0] = if matches!(self, ControlMessage::PathChallenge { .. }) {
                    TYPE_PATH_CHALLENGE
                } else {
                    TYPE_PATH_RESPONSE
                };
                b[1..].copy_from_slice(&data);
                return Ok(len);
            }
        };
        b[0] = ty;
        b[1..5].copy_from_slice(&seq.to_be_bytes());
        b[5..13].copy_from_slice(&us.to_be_bytes());
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_flow_move_with_an_unknown_address_family_is_refused() {
        let m = ControlMessage::FlowMove {
            seq: 7,
            path: PathId(1),
            flow: FlowKey {
                protocol: 6,
                remote: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                remote_port: 443,
                local_port: 40000,
            },
            redundant: None,
        };
        let mut b = [0u8; MAX_LEN];
        let n = m.emit(&mut b).unwrap();
        assert_eq!(
            ControlMessage::parse(&b[..n - 1]),
            Err(DropReason::Truncated)
        );
        b[15] = 5;
        assert_eq!(
            ControlMessage::parse(&b[..n]),
            Err(DropReason::UnknownControl)
        );
    }

    #[test]
    fn a_probe_is_padded_to_the_length_of_the_ack_that_carries_the_endpoint() {
        let mut b = [0xffu8; MAX_LEN];
        let probe = ControlMessage::Probe { seq: 1, sent_us: 2 };
        assert_eq!(probe.emit(&mut b), Ok(PROBE_LEN));
        assert!(b[PROBE_BASE_LEN..PROBE_LEN].iter().all(|&x| x == 0));
        assert_eq!(ControlMessage::parse(&b[..PROBE_LEN]), Ok(probe));
        let ack = ControlMessage::ProbeAck {
            seq: 1,
            echo_us: 2,
            observed: Some("[2001:db8::7]:61000".parse().unwrap()),
        };
        assert_eq!(ack.buffer_len(), PROBE_LEN);
    }

    #[test]
    fn an_older_anchors_probe_ack_has_no_endpoint_and_a_newer_family_is_ignored() {
        let old = [TYPE_PROBE_ACK, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 9];
        assert_eq!(
            ControlMessage::parse(&old),
            Ok(ControlMessage::ProbeAck {
                seq: 5,
                echo_us: 9,
                observed: None
            })
        );
        let mut newer = [0u8; PROBE_LEN];
        newer[..PROBE_BASE_LEN].copy_from_slice(&old);
        newer[PROBE_BASE_LEN] = 7;
        assert_eq!(
            ControlMessage::parse(&newer),
            Ok(ControlMessage::ProbeAck {
                seq: 5,
                echo_us: 9,
                observed: None
            })
        );
    }

    #[test]
    fn a_nat_registration_is_as_long_as_its_answer_and_short_ones_are_refused() {
        let reg = ControlMessage::NatRegister { token: [7; 8] };
        let ans = ControlMessage::NatRegistered {
            token: [7; 8],
            nonce: [9; 8],
        };
        assert_eq!(reg.buffer_len(), ans.buffer_len());
        let req = ControlMessage::NatRequest { nonce: [9; 8] };
        let reply = ControlMessage::NatReply { nonce: [9; 8] };
        assert_eq!(req.buffer_len(), reply.buffer_len());
        let mut b = [0u8; MAX_LEN];
        for m in [reg, ans, req, reply] {
            let n = m.emit(&mut b).unwrap();
            assert_eq!(
                ControlMessage::parse(&b[..n - 1]),
                Err(DropReason::Truncated)
            );
        }
    }

    #[test]
    fn unknown_type_is_reported_as_unknown_control() {
        assert_eq!(
            ControlMessage::parse(&[99, 0, 0]),
            Err(DropReason::UnknownControl)
        );
        assert_eq!(ControlMessage::parse(&[]), Err(DropReason::Truncated));
        assert_eq!(
            ControlMessage::parse(&[1, 0, 0]),
            Err(DropReason::Truncated)
        );
    }

    fn arb_msg() -> impl Strategy<Value = ControlMessage> {
        prop_oneof![
            (any::<u32>(), any::<u64>())
                .prop_map(|(seq, sent_us)| ControlMessage::Probe { seq, sent_us }),
            (
                any::<u32>(),
                any::<u64>(),
                // Scope ids and flow labels are not carried: the anchor's peers are not
                // link-local.
                proptest::option::of(
                    (any::<IpAddr>(), any::<u16>())
                        .prop_map(|(ip, port)| SocketAddr::new(ip, port))
                )
            )
                .prop_map(|(seq, echo_us, observed)| ControlMessage::ProbeAck {
                    seq,
                    echo_us,
                    observed
                }),
            any::<[u8; CHALLENGE_LEN]>().prop_map(|data| ControlMessage::PathChallenge { data }),
            any::<[u8; CHALLENGE_LEN]>().prop_map(|data| ControlMessage::PathResponse { data }),
            (any::<u64>(), any::<u8>(), any::<bool>()).prop_map(|(seq, p, down)| {
                ControlMessage::PathStatus {
                    seq,
                    path: PathId(p),
                    down,
                }
            }),
            (
                any::<u64>(),
                any::<u8>(),
                any::<u8>(),
                any::<u16>(),
                any::<u16>(),
                any::<bool>(),
                any::<[u8; 16]>(),
                any::<Option<u8>>()
            )
                .prop_map(|(seq, p, protocol, lp, rp, v6, a, r)| {
                    ControlMessage::FlowMove {
                        seq,
                        path: PathId(p),
                        flow: FlowKey {
                            protocol,
                            remote: if v6 {
                                IpAddr::V6(Ipv6Addr::from(a))
                            } else {
                                IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
                            },
                            remote_port: rp,
                            local_port: lp,
                        },
                        redundant: r.map(PathId),
                    }
                }),
            any::<u64>().prop_map(|seq| ControlMessage::SignalAck { seq }),
            any::<[u8; NAT_TOKEN_LEN]>().prop_map(|token| ControlMessage::NatRegister { token }),
            (any::<[u8; NAT_TOKEN_LEN]>(), any::<[u8; NAT_TOKEN_LEN]>())
                .prop_map(|(token, nonce)| ControlMessage::NatRegistered { token, nonce }),
            any::<[u8; NAT_TOKEN_LEN]>().prop_map(|nonce| ControlMessage::NatRequest { nonce }),
            any::<[u8; NAT_TOKEN_LEN]>().prop_map(|nonce| ControlMessage::NatReply { nonce }),
        ]
    }

    proptest! {
        #[test]
        fn control_messages_round_trip(m in arb_msg()) {
            let mut b = [0u8; MAX_LEN];
            let n = m.emit(&mut b).unwrap();
            prop_assert_eq!(n, m.buffer_len());
            prop_assert_eq!(ControlMessage::parse(&b[..n]), Ok(m));
        }

        #[test]
        fn garbage_control_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = ControlMessage::parse(&bytes);
        }
    }
}
