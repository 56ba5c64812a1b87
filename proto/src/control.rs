//! Control messages: the plaintext of a Control packet.
//!
//! Layout: `type u8` then the fields, big-endian. Only parsing and emitting live here; the
//! cores decide when to send them. Unknown types decode to `Err(UnknownControl)` so that a newer
//! peer's messages are dropped and counted, not misread.

use crate::DropReason;

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

/// The longest control message this version emits.
pub const MAX_LEN: usize = 13;

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
}

impl ControlMessage {
    /// Length of the encoded message.
    pub fn buffer_len(&self) -> usize {
        match self {
            ControlMessage::Probe { .. } | ControlMessage::ProbeAck { .. } => 13,
            ControlMessage::PathChallenge { .. } | ControlMessage::PathResponse { .. } => {
                1 + CHALLENGE_LEN
            }
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
                    ControlMessage::ProbeAck { seq, echo_us: us }
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
            _ => Err(DropReason::UnknownControl),
        }
    }

    /// Encodes into the start of `b`; returns the length, or `TooBig` if `b` is too short.
    pub fn emit(&self, b: &mut [u8]) -> Result<usize, DropReason> {
        let len = self.buffer_len();
        let b = b.get_mut(..len).ok_or(DropReason::TooBig)?;
        let (ty, seq, us) = match *self {
            ControlMessage::Probe { seq, sent_us } => (TYPE_PROBE, seq, sent_us),
            ControlMessage::ProbeAck { seq, echo_us } => (TYPE_PROBE_ACK, seq, echo_us),
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
    fn unknown_type_is_reported_as_unknown_control() {
        assert_eq!(
            ControlMessage::parse(&[9, 0, 0]),
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
            (any::<u32>(), any::<u64>())
                .prop_map(|(seq, echo_us)| ControlMessage::ProbeAck { seq, echo_us }),
            any::<[u8; CHALLENGE_LEN]>().prop_map(|data| ControlMessage::PathChallenge { data }),
            any::<[u8; CHALLENGE_LEN]>().prop_map(|data| ControlMessage::PathResponse { data }),
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
