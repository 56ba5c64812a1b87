//! The upmt datagram formats: zero-copy views over a buffer and parsed representations.
//!
//! Modelled on smoltcp's `wire`: a view (`TransportHeader<T>`, `HandshakeInit<T>`,
//! `HandshakeResp<T>`) wraps any `T: AsRef<[u8]>`; `new_checked` runs `check_len`, after which no
//! accessor panics. A `*Repr` is the parsed, owned form with `parse` and `emit`. Nothing here
//! allocates, decrypts or verifies a MAC: that is the handshake's and the session's job.
//!
//! Layouts (byte 0 is `version << 4 | kind` everywhere):
//! - HandshakeInit: `path u8, flags u16, sender_index u32, mac1 [u8;16]`, Noise IK message 1,
//!   `mac2 [u8;16]` (zero unless the initiator holds a cookie). `flags` was a reserved zero
//!   field that anchors ignore: bit 0 ([`INIT_FLAG_AES256GCM`]) offers AES-256-GCM.
//! - HandshakeResp: `path u8, reserved u16, sender_index u32, receiver_index u32`, Noise message 2.
//! - Data / Control: `path u8, reserved u16, receiver_index u32, counter u64`, ciphertext, tag.
//! - CookieReply: `path u8, reserved u16, receiver_index u32, nonce [u8;12]`, sealed cookie
//!   `[u8;16]`, tag `[u8;16]`.

use crate::{Cipher, DropReason, HEADER_LEN, PathId, SessionIndex, SessionParams, TAG_LEN};
use std::net::{Ipv4Addr, Ipv6Addr};

/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;

/// Length of the HandshakeInit header (up to and including mac1).
pub const INIT_HEADER_LEN: usize = 24;
/// Length of the Noise IK message 1 with its 8-byte timestamp payload: e, s (+tag), payload (+tag).
pub const INIT_NOISE_LEN: usize = 32 + 32 + 16 + INIT_PAYLOAD_LEN + 16;
/// Offset of mac2 in a HandshakeInit: the last 16 bytes, after the Noise message.
pub const MAC2_OFFSET: usize = INIT_HEADER_LEN + INIT_NOISE_LEN;
/// Length of mac2.
pub const MAC2_LEN: usize = 16;
/// Total length of a HandshakeInit datagram.
pub const INIT_LEN: usize = MAC2_OFFSET + MAC2_LEN;
/// Length of the HandshakeInit payload (the timestamp).
pub const INIT_PAYLOAD_LEN: usize = 8;
/// Offset of mac1 in a HandshakeInit.
pub const MAC1_OFFSET: usize = 8;
/// Length of mac1.
pub const MAC1_LEN: usize = 16;

/// HandshakeInit flag: the initiator runs AES-256-GCM fast and would take it for the transport
/// keys. mac1 and mac2 cover the flags, the Noise message does not: flipping the bit on the way
/// can only pick ChaCha20-Poly1305 (as secure, slower) or fail the handshake.
pub const INIT_FLAG_AES256GCM: u16 = 1;
/// SessionParams byte 5, bit 0: the anchor routes IPv6 (the address bytes are meaningful).
const PARAMS_FLAG_IPV6: u8 = 1;
/// SessionParams byte 5, bit 1: the transport keys are AES-256-GCM. Set only in answer to an
/// init that offered it, so a client that never offers never sees it.
const PARAMS_FLAG_AES256GCM: u8 = 2;

/// Length of the HandshakeResp header.
pub const RESP_HEADER_LEN: usize = 12;
/// Length of the HandshakeResp payload (the encoded [`SessionParams`]).
pub const RESP_PAYLOAD_LEN: usize = 25;
/// Length of the Noise IK message 2 with its payload: e, payload (+tag).
pub const RESP_NOISE_LEN: usize = 32 + RESP_PAYLOAD_LEN + 16;
/// Total length of a HandshakeResp datagram.
pub const RESP_LEN: usize = RESP_HEADER_LEN + RESP_NOISE_LEN;

/// Length of a CookieReply datagram: header, nonce, sealed cookie, tag.
pub const COOKIE_REPLY_LEN: usize = 8 + COOKIE_NONCE_LEN + COOKIE_LEN + TAG_LEN;
/// Length of the CookieReply nonce (random, ChaCha20-Poly1305).
pub const COOKIE_NONCE_LEN: usize = 12;
/// Length of a cookie.
pub const COOKIE_LEN: usize = 16;

/// The smallest valid transport datagram: a header and a tag around an empty plaintext.
pub const MIN_TRANSPORT_LEN: usize = HEADER_LEN + TAG_LEN;

/// The kind of a datagram (low nibble of byte 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Noise IK message 1, mobile host to anchor.
    HandshakeInit = 1,
    /// Noise IK message 2, anchor to mobile host.
    HandshakeResp = 2,
    /// An encrypted inner IP packet.
    Data = 3,
    /// An encrypted control message.
    Control = 4,
    /// The anchor, under load, answers an init without a valid mac2 with a cookie.
    CookieReply = 5,
}

impl Kind {
    /// The kind for a nibble value, if known.
    pub fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::HandshakeInit),
            2 => Some(Kind::HandshakeResp),
            3 => Some(Kind::Data),
            4 => Some(Kind::Control),
            5 => Some(Kind::CookieReply),
            _ => None,
        }
    }

    /// Byte 0 of a datagram of this kind.
    pub fn first_byte(self) -> u8 {
        (VERSION << 4) | self as u8
    }
}

/// Reads the version and kind of a datagram without looking further.
pub fn peek_kind(datagram: &[u8]) -> Result<Kind, DropReason> {
    let first = *datagram.first().ok_or(DropReason::Truncated)?;
    if first >> 4 != VERSION {
        return Err(DropReason::BadVersion);
    }
    Kind::from_u8(first & 0x0f).ok_or(DropReason::UnknownKind)
}

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// A view of the 16-byte transport header (Data and Control) and what follows it.
#[derive(Clone, Copy, Debug)]
pub struct TransportHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TransportHeader<T> {
    /// Wraps a buffer without checking it; accessors may panic until `check_len` passed.
    pub const fn new_unchecked(buffer: T) -> Self {
        TransportHeader { buffer }
    }

    /// Wraps a buffer after `check_len`.
    pub fn new_checked(buffer: T) -> Result<Self, DropReason> {
        let h = Self::new_unchecked(buffer);
        h.check_len()?;
        Ok(h)
    }

    /// Ensures the buffer holds a header and a tag, so that no accessor panics.
    pub fn check_len(&self) -> Result<(), DropReason> {
        if self.buffer.as_ref().len() < MIN_TRANSPORT_LEN {
            Err(DropReason::Truncated)
        } else {
            Ok(())
        }
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Byte 0: version and kind.
    pub fn first_byte(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    /// The path id.
    pub fn path(&self) -> PathId {
        PathId(self.buffer.as_ref()[1])
    }

    /// The reserved field (must be zero on emit; ignored on receive, but authenticated).
    pub fn reserved(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[2], b[3]])
    }

    /// The receiver's session index.
    pub fn receiver_index(&self) -> SessionIndex {
        SessionIndex(be_u32(&self.buffer.as_ref()[4..]))
    }

    /// The nonce counter.
    pub fn counter(&self) -> u64 {
        be_u64(&self.buffer.as_ref()[8..])
    }

    /// The header bytes (the AEAD's associated data).
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_LEN]
    }

    /// Ciphertext and tag.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TransportHeader<T> {
    /// Sets byte 0 for `kind`.
    pub fn set_kind(&mut self, kind: Kind) {
        self.buffer.as_mut()[0] = kind.first_byte();
    }

    /// Sets the path id.
    pub fn set_path(&mut self, path: PathId) {
        self.buffer.as_mut()[1] = path.0;
    }

    /// Sets the reserved field.
    pub fn set_reserved(&mut self, v: u16) {
        self.buffer.as_mut()[2..4].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the receiver index.
    pub fn set_receiver_index(&mut self, idx: SessionIndex) {
        self.buffer.as_mut()[4..8].copy_from_slice(&idx.0.to_be_bytes());
    }

    /// Sets the counter.
    pub fn set_counter(&mut self, counter: u64) {
        self.buffer.as_mut()[8..16].copy_from_slice(&counter.to_be_bytes());
    }
}

/// The parsed transport header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransportRepr {
    /// Data or Control.
    pub kind: Kind,
    /// The path id.
    pub path: PathId,
    /// The receiver's session index.
    pub receiver_index: SessionIndex,
    /// The nonce counter.
    pub counter: u64,
}

impl TransportRepr {
    /// Parses a checked header; rejects other versions and kinds.
    pub fn parse<T: AsRef<[u8]>>(h: &TransportHeader<T>) -> Result<Self, DropReason> {
        h.check_len()?;
        let kind = peek_kind(h.buffer.as_ref())?;
        if !matches!(kind, Kind::Data | Kind::Control) {
            return Err(DropReason::UnknownKind);
        }
        Ok(TransportRepr {
            kind,
            path: h.path(),
            receiver_index: h.receiver_index(),
            counter: h.counter(),
        })
    }

    /// Writes the header into the first `HEADER_LEN` bytes of `h`'s buffer.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut TransportHeader<T>) {
        h.set_kind(self.kind);
        h.set_path(self.path);
        h.set_reserved(0);
        h.set_receiver_index(self.receiver_index);
        h.set_counter(self.counter);
    }
}

/// A view of a HandshakeInit datagram.
#[derive(Clone, Copy, Debug)]
pub struct HandshakeInit<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> HandshakeInit<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        HandshakeInit { buffer }
    }

    /// Wraps a buffer after `check_len`.
    pub fn new_checked(buffer: T) -> Result<Self, DropReason> {
        let h = Self::new_unchecked(buffer);
        h.check_len()?;
        Ok(h)
    }

    /// Ensures the buffer is exactly one HandshakeInit long.
    pub fn check_len(&self) -> Result<(), DropReason> {
        match self.buffer.as_ref().len() {
            INIT_LEN => Ok(()),
            n if n < INIT_LEN => Err(DropReason::Truncated),
            _ => Err(DropReason::TooBig),
        }
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The path id the initiator sent this on.
    pub fn path(&self) -> PathId {
        PathId(self.buffer.as_ref()[1])
    }

    /// The initiator's session index.
    pub fn sender_index(&self) -> SessionIndex {
        SessionIndex(be_u32(&self.buffer.as_ref()[4..]))
    }

    /// The flags (zero from initiators that predate them).
    pub fn flags(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[2], b[3]])
    }

    /// The mac1 field.
    pub fn mac1(&self) -> [u8; MAC1_LEN] {
        let mut m = [0u8; MAC1_LEN];
        m.copy_from_slice(&self.buffer.as_ref()[MAC1_OFFSET..MAC1_OFFSET + MAC1_LEN]);
        m
    }

    /// The mac2 field (zero when the initiator has no cookie).
    pub fn mac2(&self) -> [u8; MAC2_LEN] {
        let mut m = [0u8; MAC2_LEN];
        m.copy_from_slice(&self.buffer.as_ref()[MAC2_OFFSET..MAC2_OFFSET + MAC2_LEN]);
        m
    }

    /// The Noise message 1.
    pub fn noise(&self) -> &[u8] {
        &self.buffer.as_ref()[INIT_HEADER_LEN..MAC2_OFFSET]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> HandshakeInit<T> {
    /// Sets the mac1 field.
    pub fn set_mac1(&mut self, mac: &[u8; MAC1_LEN]) {
        self.buffer.as_mut()[MAC1_OFFSET..MAC1_OFFSET + MAC1_LEN].copy_from_slice(mac);
    }

    /// Sets the mac2 field.
    pub fn set_mac2(&mut self, mac: &[u8; MAC2_LEN]) {
        self.buffer.as_mut()[MAC2_OFFSET..MAC2_OFFSET + MAC2_LEN].copy_from_slice(mac);
    }

    /// The Noise message 1, writable.
    pub fn noise_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[INIT_HEADER_LEN..MAC2_OFFSET]
    }
}

/// The parsed HandshakeInit header (the Noise message stays in the buffer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeInitRepr {
    /// The path id.
    pub path: PathId,
    /// The initiator's session index.
    pub sender_index: SessionIndex,
    /// Whether the initiator offers AES-256-GCM ([`INIT_FLAG_AES256GCM`]).
    pub offers_aes256gcm: bool,
    /// mac1.
    pub mac1: [u8; MAC1_LEN],
}

impl HandshakeInitRepr {
    /// Parses the header of a checked init.
    pub fn parse<T: AsRef<[u8]>>(h: &HandshakeInit<T>) -> Result<Self, DropReason> {
        h.check_len()?;
        if peek_kind(h.buffer.as_ref())? != Kind::HandshakeInit {
            return Err(DropReason::UnknownKind);
        }
        Ok(HandshakeInitRepr {
            path: h.path(),
            sender_index: h.sender_index(),
            offers_aes256gcm: h.flags() & INIT_FLAG_AES256GCM != 0,
            mac1: h.mac1(),
        })
    }

    /// Writes the header (kind, path, reserved, sender index, mac1).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut HandshakeInit<T>) {
        let b = h.buffer.as_mut();
        b[0] = Kind::HandshakeInit.first_byte();
        b[1] = self.path.0;
        let flags = if self.offers_aes256gcm {
            INIT_FLAG_AES256GCM
        } else {
            0
        };
        b[2..4].copy_from_slice(&flags.to_be_bytes());
        b[4..8].copy_from_slice(&self.sender_index.0.to_be_bytes());
        h.set_mac1(&self.mac1);
    }
}

/// A view of a HandshakeResp datagram.
#[derive(Clone, Copy, Debug)]
pub struct HandshakeResp<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> HandshakeResp<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        HandshakeResp { buffer }
    }

    /// Wraps a buffer after `check_len`.
    pub fn new_checked(buffer: T) -> Result<Self, DropReason> {
        let h = Self::new_unchecked(buffer);
        h.check_len()?;
        Ok(h)
    }

    /// Ensures the buffer is exactly one HandshakeResp long.
    pub fn check_len(&self) -> Result<(), DropReason> {
        match self.buffer.as_ref().len() {
            RESP_LEN => Ok(()),
            n if n < RESP_LEN => Err(DropReason::Truncated),
            _ => Err(DropReason::TooBig),
        }
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The path id (echoed from the init).
    pub fn path(&self) -> PathId {
        PathId(self.buffer.as_ref()[1])
    }

    /// The responder's session index.
    pub fn sender_index(&self) -> SessionIndex {
        SessionIndex(be_u32(&self.buffer.as_ref()[4..]))
    }

    /// The initiator's session index (from the init).
    pub fn receiver_index(&self) -> SessionIndex {
        SessionIndex(be_u32(&self.buffer.as_ref()[8..]))
    }

    /// The Noise message 2.
    pub fn noise(&self) -> &[u8] {
        &self.buffer.as_ref()[RESP_HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> HandshakeResp<T> {
    /// The Noise message 2, writable.
    pub fn noise_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[RESP_HEADER_LEN..]
    }
}

/// The parsed HandshakeResp header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeRespRepr {
    /// The path id.
    pub path: PathId,
    /// The responder's session index.
    pub sender_index: SessionIndex,
    /// The initiator's session index.
    pub receiver_index: SessionIndex,
}

impl HandshakeRespRepr {
    /// Parses the header of a checked response.
    pub fn parse<T: AsRef<[u8]>>(h: &HandshakeResp<T>) -> Result<Self, DropReason> {
        h.check_len()?;
        if peek_kind(h.buffer.as_ref())? != Kind::HandshakeResp {
            return Err(DropReason::UnknownKind);
        }
        Ok(HandshakeRespRepr {
            path: h.path(),
            sender_index: h.sender_index(),
            receiver_index: h.receiver_index(),
        })
    }

    /// Writes the header.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut HandshakeResp<T>) {
        let b = h.buffer.as_mut();
        b[0] = Kind::HandshakeResp.first_byte();
        b[1] = self.path.0;
        b[2..4].copy_from_slice(&[0, 0]);
        b[4..8].copy_from_slice(&self.sender_index.0.to_be_bytes());
        b[8..12].copy_from_slice(&self.receiver_index.0.to_be_bytes());
    }
}

/// A view of a CookieReply datagram.
#[derive(Clone, Copy, Debug)]
pub struct CookieReply<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> CookieReply<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        CookieReply { buffer }
    }

    /// Wraps a buffer after `check_len`.
    pub fn new_checked(buffer: T) -> Result<Self, DropReason> {
        let h = Self::new_unchecked(buffer);
        h.check_len()?;
        Ok(h)
    }

    /// Ensures the buffer is exactly one CookieReply long.
    pub fn check_len(&self) -> Result<(), DropReason> {
        match self.buffer.as_ref().len() {
            COOKIE_REPLY_LEN => Ok(()),
            n if n < COOKIE_REPLY_LEN => Err(DropReason::Truncated),
            _ => Err(DropReason::TooBig),
        }
    }

    /// The path id (echoed from the init).
    pub fn path(&self) -> PathId {
        PathId(self.buffer.as_ref()[1])
    }

    /// The initiator's session index (from the init).
    pub fn receiver_index(&self) -> SessionIndex {
        SessionIndex(be_u32(&self.buffer.as_ref()[4..]))
    }

    /// The AEAD nonce.
    pub fn nonce(&self) -> [u8; COOKIE_NONCE_LEN] {
        let mut n = [0u8; COOKIE_NONCE_LEN];
        n.copy_from_slice(&self.buffer.as_ref()[8..8 + COOKIE_NONCE_LEN]);
        n
    }

    /// The sealed cookie and its tag.
    pub fn sealed(&self) -> &[u8] {
        &self.buffer.as_ref()[8 + COOKIE_NONCE_LEN..]
    }
}

/// The parsed CookieReply (the cookie stays sealed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CookieReplyRepr {
    /// The path id.
    pub path: PathId,
    /// The initiator's session index.
    pub receiver_index: SessionIndex,
    /// The AEAD nonce.
    pub nonce: [u8; COOKIE_NONCE_LEN],
}

impl CookieReplyRepr {
    /// Parses a checked reply.
    pub fn parse<T: AsRef<[u8]>>(h: &CookieReply<T>) -> Result<Self, DropReason> {
        h.check_len()?;
        if peek_kind(h.buffer.as_ref())? != Kind::CookieReply {
            return Err(DropReason::UnknownKind);
        }
        Ok(CookieReplyRepr {
            path: h.path(),
            receiver_index: h.receiver_index(),
            nonce: h.nonce(),
        })
    }

    /// Writes the header and nonce into the first `8 + COOKIE_NONCE_LEN` bytes of `b`.
    pub fn emit(&self, b: &mut [u8; COOKIE_REPLY_LEN]) {
        b[0] = Kind::CookieReply.first_byte();
        b[1] = self.path.0;
        b[2..4].copy_from_slice(&[0, 0]);
        b[4..8].copy_from_slice(&self.receiver_index.0.to_be_bytes());
        b[8..8 + COOKIE_NONCE_LEN].copy_from_slice(&self.nonce);
    }
}

impl SessionParams {
    /// Length of the encoded form (the HandshakeResp payload).
    pub const WIRE_LEN: usize = RESP_PAYLOAD_LEN;

    /// Decodes the HandshakeResp payload.
    pub fn parse(b: &[u8]) -> Result<Self, DropReason> {
        if b.len() < Self::WIRE_LEN {
            return Err(DropReason::Truncated);
        }
        let v4 = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
        let mut v6 = [0u8; 16];
        v6.copy_from_slice(&b[6..22]);
        Ok(SessionParams {
            virtual_ipv4: v4,
            prefix4: b[4],
            virtual_ipv6: (b[5] & PARAMS_FLAG_IPV6 != 0).then(|| Ipv6Addr::from(v6)),
            prefix6: b[22],
            mtu: u16::from_be_bytes([b[23], b[24]]),
            cipher: if b[5] & PARAMS_FLAG_AES256GCM != 0 {
                Cipher::Aes256Gcm
            } else {
                Cipher::ChaCha20Poly1305
            },
        })
    }

    /// Encodes into `b[..WIRE_LEN]`; returns `WIRE_LEN`, or `TooBig` if `b` is shorter.
    pub fn emit(&self, b: &mut [u8]) -> Result<usize, DropReason> {
        let b = b.get_mut(..Self::WIRE_LEN).ok_or(DropReason::TooBig)?;
        b[0..4].copy_from_slice(&self.virtual_ipv4.octets());
        b[4] = self.prefix4;
        let aes = self.cipher == Cipher::Aes256Gcm;
        b[5] = if self.virtual_ipv6.is_some() {
            PARAMS_FLAG_IPV6
        } else {
            0
        } | if aes { PARAMS_FLAG_AES256GCM } else { 0 };
        b[6..22].copy_from_slice(&self.virtual_ipv6.map(|a| a.octets()).unwrap_or([0; 16]));
        b[22] = self.prefix6;
        b[23..25].copy_from_slice(&self.mtu.to_be_bytes());
        Ok(Self::WIRE_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn first_byte_carries_version_and_kind() {
        assert_eq!(Kind::Data.first_byte(), 0x13);
        assert_eq!(peek_kind(&[0x14]), Ok(Kind::Control));
        assert_eq!(peek_kind(&[0x24]), Err(DropReason::BadVersion));
        assert_eq!(peek_kind(&[0x15]), Ok(Kind::CookieReply));
        assert_eq!(peek_kind(&[0x17]), Err(DropReason::UnknownKind));
        assert_eq!(peek_kind(&[]), Err(DropReason::Truncated));
    }

    #[test]
    fn the_aes_offer_is_bit_0_of_the_former_reserved_field_and_zero_means_chacha() {
        let mut buf = [0u8; INIT_LEN];
        let mut repr = HandshakeInitRepr {
            path: PathId(2),
            sender_index: SessionIndex(9),
            offers_aes256gcm: true,
            mac1: [0; MAC1_LEN],
        };
        repr.emit(&mut HandshakeInit::new_unchecked(&mut buf[..]));
        assert_eq!(&buf[..4], &[0x11, 2, 0, 1]);
        repr.offers_aes256gcm = false;
        repr.emit(&mut HandshakeInit::new_unchecked(&mut buf[..]));
        assert_eq!(&buf[..4], &[0x11, 2, 0, 0]);
        let parsed = HandshakeInitRepr::parse(&HandshakeInit::new_checked(&buf[..]).unwrap());
        assert!(!parsed.unwrap().offers_aes256gcm);
    }

    #[test]
    fn params_from_an_anchor_that_predates_ciphers_mean_chacha_and_keep_ipv6() {
        // Such an anchor writes byte 5 as 0 or 1 (IPv6 or not) and nothing else.
        let mut b = [0u8; SessionParams::WIRE_LEN];
        b[5] = 1;
        b[6] = 0x20;
        let p = SessionParams::parse(&b).unwrap();
        assert_eq!(p.cipher, Cipher::ChaCha20Poly1305);
        assert!(p.virtual_ipv6.is_some());
        b[5] = 2;
        let p = SessionParams::parse(&b).unwrap();
        assert_eq!(p.cipher, Cipher::Aes256Gcm);
        assert!(p.virtual_ipv6.is_none());
    }

    #[test]
    fn transport_header_layout_is_big_endian() {
        let mut buf = [0u8; MIN_TRANSPORT_LEN];
        let repr = TransportRepr {
            kind: Kind::Data,
            path: PathId(7),
            receiver_index: SessionIndex(0x0102_0304),
            counter: 0x1122_3344_5566_7788,
        };
        repr.emit(&mut TransportHeader::new_unchecked(&mut buf[..]));
        assert_eq!(
            &buf[..HEADER_LEN],
            &[
                0x13, 7, 0, 0, 1, 2, 3, 4, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88
            ]
        );
    }

    fn arb_kind_transport() -> impl Strategy<Value = Kind> {
        prop_oneof![Just(Kind::Data), Just(Kind::Control)]
    }

    proptest! {
        #[test]
        fn transport_header_round_trips(kind in arb_kind_transport(), path: u8, idx: u32,
                                        counter: u64, extra in 0usize..64) {
            let mut buf = vec![0u8; MIN_TRANSPORT_LEN + extra];
            let repr = TransportRepr { kind, path: PathId(path),
                receiver_index: SessionIndex(idx), counter };
            repr.emit(&mut TransportHeader::new_unchecked(&mut buf[..]));
            let h = TransportHeader::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(TransportRepr::parse(&h).unwrap(), repr);
            prop_assert_eq!(h.payload().len(), TAG_LEN + extra);
        }

        #[test]
        fn handshake_init_header_round_trips(path: u8, idx: u32, aes: bool, mac1: [u8; 16]) {
            let mut buf = [0u8; INIT_LEN];
            let repr = HandshakeInitRepr { path: PathId(path), sender_index: SessionIndex(idx),
                offers_aes256gcm: aes, mac1 };
            repr.emit(&mut HandshakeInit::new_unchecked(&mut buf[..]));
            let h = HandshakeInit::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(HandshakeInitRepr::parse(&h).unwrap(), repr);
            prop_assert_eq!(h.noise().len(), INIT_NOISE_LEN);
            prop_assert_eq!(h.mac2(), [0u8; MAC2_LEN]);
        }

        #[test]
        fn handshake_resp_header_round_trips(path: u8, s: u32, r: u32) {
            let mut buf = [0u8; RESP_LEN];
            let repr = HandshakeRespRepr { path: PathId(path), sender_index: SessionIndex(s),
                receiver_index: SessionIndex(r) };
            repr.emit(&mut HandshakeResp::new_unchecked(&mut buf[..]));
            let h = HandshakeResp::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(HandshakeRespRepr::parse(&h).unwrap(), repr);
            prop_assert_eq!(h.noise().len(), RESP_NOISE_LEN);
        }

        #[test]
        fn cookie_reply_header_round_trips(path: u8, r: u32, nonce: [u8; 12]) {
            let mut buf = [0u8; COOKIE_REPLY_LEN];
            let repr = CookieReplyRepr { path: PathId(path), receiver_index: SessionIndex(r), nonce };
            repr.emit(&mut buf);
            let h = CookieReply::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(CookieReplyRepr::parse(&h).unwrap(), repr);
            prop_assert_eq!(h.sealed().len(), COOKIE_LEN + TAG_LEN);
        }

        #[test]
        fn session_params_round_trip(v4: [u8; 4], p4 in 0u8..=32, v6: Option<[u8; 16]>,
                                     p6 in 0u8..=128, mtu: u16, aes: bool) {
            let cipher = if aes { Cipher::Aes256Gcm } else { Cipher::ChaCha20Poly1305 };
            let params = SessionParams { virtual_ipv4: v4.into(), prefix4: p4,
                virtual_ipv6: v6.map(Ipv6Addr::from), prefix6: p6, mtu, cipher };
            let mut b = [0u8; SessionParams::WIRE_LEN];
            prop_assert_eq!(params.emit(&mut b), Ok(SessionParams::WIRE_LEN));
            prop_assert_eq!(SessionParams::parse(&b), Ok(params));
        }

        #[test]
        fn garbage_never_panics_any_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = peek_kind(&bytes);
            if let Ok(h) = TransportHeader::new_checked(&bytes[..]) {
                let _ = TransportRepr::parse(&h);
            }
            if let Ok(h) = HandshakeInit::new_checked(&bytes[..]) {
                let _ = HandshakeInitRepr::parse(&h);
            }
            if let Ok(h) = HandshakeResp::new_checked(&bytes[..]) {
                let _ = HandshakeRespRepr::parse(&h);
            }
            if let Ok(h) = CookieReply::new_checked(&bytes[..]) {
                let _ = CookieReplyRepr::parse(&h);
            }
            let _ = SessionParams::parse(&bytes);
        }
    }
}
