//! Transport keys of one session: in-place AEAD (ring) and the replay window.
//!
//! The AEAD is ChaCha20-Poly1305, or AES-256-GCM where the handshake negotiated it (both ends run
//! AES in hardware: see [`Cipher`]); both take the same 32-byte split keys and 12-byte nonces.
//! Nonce = 4 zero bytes || counter (u64 LE); associated data = the 16-byte transport header, so
//! kind, path, indices and counter are authenticated. Each path numbers its packets in its own
//! counter space and has its own replay window (see [`crate::replay`] for the layout and the
//! arithmetic). Sealing and opening work in the caller's buffer: nothing here allocates per
//! packet (a receive window is made once per path and key).

use crate::dup::{DupFilter, DupVerdict};
use crate::replay::{MAX_PATH_COUNTER, PathWindows, path_counter};
use crate::time::Instant;
use crate::wire::{Kind, TransportHeader, TransportRepr};
use crate::{DropReason, HEADER_LEN, PathId, SessionIndex, TAG_LEN};
use ring::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};

/// The AEAD of a session's transport packets. The Noise handshake itself always runs
/// ChaCha20-Poly1305; only the transport keys use the negotiated cipher.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Cipher {
    /// ChaCha20-Poly1305: fast everywhere in software, the fallback.
    #[default]
    ChaCha20Poly1305,
    /// AES-256-GCM: several times faster where the CPU has AES and carry-less multiply
    /// instructions (x86 AES-NI + PCLMULQDQ, ARMv8 crypto extensions), slow without.
    Aes256Gcm,
}

impl Cipher {
    /// The cipher's name, for logs, status and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Cipher::ChaCha20Poly1305 => "chacha20-poly1305",
            Cipher::Aes256Gcm => "aes-256-gcm",
        }
    }

    /// What an anchor picks: AES-256-GCM only when the client offered it and the anchor runs it
    /// fast too.
    pub fn negotiate(client_offers_aes: bool, anchor_fast_aes: bool) -> Cipher {
        if client_offers_aes && anchor_fast_aes {
            Cipher::Aes256Gcm
        } else {
            Cipher::ChaCha20Poly1305
        }
    }
}

impl core::fmt::Display for Cipher {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

fn key(cipher: Cipher, bytes: &[u8; 32]) -> LessSafeKey {
    let alg = match cipher {
        Cipher::ChaCha20Poly1305 => &CHACHA20_POLY1305,
        Cipher::Aes256Gcm => &AES_256_GCM,
    };
    // Both algorithms take exactly 32 bytes, which the type guarantees.
    LessSafeKey::new(UnboundKey::new(alg, bytes).expect("both aeads take a 32-byte key"))
}

/// A random session index. Indices only need to be unpredictable enough that an off-path
/// attacker cannot aim at a session; a failing OS generator falls back to mixing `salt`.
pub(crate) fn random_index(salt: u64) -> SessionIndex {
    SessionIndex(getrandom::u32().unwrap_or_else(|_| {
        let x = salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (x >> 32) as u32 ^ x as u32
    }))
}

/// The two directions of one session.
pub(crate) struct Keypair {
    /// The AEAD of both directions.
    pub(crate) cipher: Cipher,
    send: LessSafeKey,
    recv: LessSafeKey,
    /// Our index: the peer puts it in the packets it sends us.
    pub(crate) local_index: SessionIndex,
    /// The peer's index: we put it in the packets we send.
    pub(crate) remote_index: SessionIndex,
    /// The next packet number of each path (indexed by path id).
    next_counters: [u64; 256],
    replay: PathWindows,
    /// Second copies of redundant packets (see [`crate::dup`]).
    dups: DupFilter,
    /// Second copies of resent packets (see [`crate::resend`]).
    resent: DupFilter,
    pub(crate) created: Instant,
}

impl Keypair {
    pub(crate) fn new(
        cipher: Cipher,
        send: &[u8; 32],
        recv: &[u8; 32],
        local_index: SessionIndex,
        remote_index: SessionIndex,
        created: Instant,
    ) -> Self {
        Keypair {
            cipher,
            send: key(cipher, send),
            recv: key(cipher, recv),
            local_index,
            remote_index,
            next_counters: [0; 256],
            replay: PathWindows::new(),
            dups: DupFilter::new(),
            resent: DupFilter::resent(),
            created,
        }
    }

    /// Seals `buf[HEADER_LEN..HEADER_LEN + len]` in place, writes the header in front and the tag
    /// behind; returns the datagram length.
    pub(crate) fn seal(
        &mut self,
        kind: Kind,
        path: PathId,
        buf: &mut [u8],
        len: usize,
    ) -> Result<usize, DropReason> {
        self.seal_with(kind, path, buf, len, 0)
    }

    /// [`Keypair::seal`] with `reserved` in the header (a redundant packet's dup field).
    pub(crate) fn seal_with(
        &mut self,
        kind: Kind,
        path: PathId,
        buf: &mut [u8],
        len: usize,
        reserved: u16,
    ) -> Result<usize, DropReason> {
        let total = HEADER_LEN
            .checked_add(len)
            .and_then(|n| n.checked_add(TAG_LEN))
            .ok_or(DropReason::TooBig)?;
        if buf.len() < total {
            return Err(DropReason::TooBig);
        }
        let next = &mut self.next_counters[usize::from(path.0)];
        if *next >= MAX_PATH_COUNTER {
            return Err(DropReason::Expired);
        }
        let counter = path_counter(path.0, *next);
        *next += 1;
        let repr = TransportRepr {
            kind,
            path,
            receiver_index: self.remote_index,
            counter,
        };
        let mut header = TransportHeader::new_unchecked(&mut buf[..HEADER_LEN]);
        repr.emit(&mut header);
        header.set_reserved(reserved);
        let (header, rest) = buf.split_at_mut(HEADER_LEN);
        let (body, tail) = rest.split_at_mut(len);
        let tag: Tag = self
            .send
            .seal_in_place_separate_tag(nonce(counter), Aad::from(&header[..]), body)
            .map_err(|_| DropReason::TooBig)?;
        tail[..TAG_LEN].copy_from_slice(tag.as_ref());
        Ok(total)
    }

    /// Opens a transport datagram in place after the replay check; marks the counter only once
    /// the tag verified. Returns the plaintext range.
    pub(crate) fn open(
        &mut self,
        counter: u64,
        datagram: &mut [u8],
    ) -> Result<core::ops::Range<usize>, DropReason> {
        if datagram.len() < HEADER_LEN + TAG_LEN {
            return Err(DropReason::Truncated);
        }
        if !self.replay.check(counter) {
            return Err(DropReason::Replayed);
        }
        let (header, rest) = datagram.split_at_mut(HEADER_LEN);
        let plain = self
            .recv
            .open_in_place(nonce(counter), Aad::from(&header[..]), rest)
            .map_err(|_| DropReason::Forged)?
            .len();
        if !self.replay.mark(counter) {
            return Err(DropReason::Replayed);
        }
        Ok(HEADER_LEN..HEADER_LEN + plain)
    }

    /// After `open` succeeded on `datagram`: whether it is the second copy of a redundant or
    /// a resent packet. Its reserved field was authenticated with it.
    pub(crate) fn check_dup(&mut self, datagram: &[u8]) -> DupVerdict {
        let Some(r) = datagram.get(2..4) else {
            return DupVerdict::Deliver;
        };
        let reserved = u16::from_be_bytes([r[0], r[1]]);
        match self.dups.check(reserved) {
            DupVerdict::Deliver => self.resent.check(reserved),
            DupVerdict::Duplicate => DupVerdict::Duplicate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: [Cipher; 2] = [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm];

    fn pair(cipher: Cipher) -> (Keypair, Keypair) {
        let a = [1u8; 32];
        let b = [2u8; 32];
        (
            Keypair::new(
                cipher,
                &a,
                &b,
                SessionIndex(10),
                SessionIndex(20),
                Instant::ZERO,
            ),
            Keypair::new(
                cipher,
                &b,
                &a,
                SessionIndex(20),
                SessionIndex(10),
                Instant::ZERO,
            ),
        )
    }

    #[test]
    fn sealed_packet_opens_once_and_bit_flips_are_forged_with_either_cipher() {
        for cipher in BOTH {
            sealed_packet_opens_once_and_bit_flips_are_forged(cipher);
        }
    }

    fn sealed_packet_opens_once_and_bit_flips_are_forged(cipher: Cipher) {
        let (mut a, mut b) = pair(cipher);
        let mut buf = [0u8; 64];
        buf[HEADER_LEN..HEADER_LEN + 5].copy_from_slice(b"hello");
        let n = a.seal(Kind::Data, PathId(3), &mut buf, 5).unwrap();
        assert_eq!(n, HEADER_LEN + 5 + TAG_LEN);
        let wire = buf;

        let mut flipped = wire;
        flipped[1] ^= 1; // the path id is associated data
        assert_eq!(
            b.open(path_counter(3, 0), &mut flipped[..n]),
            Err(DropReason::Forged)
        );

        let counter = path_counter(3, 0);
        let mut copy = wire;
        let r = b.open(counter, &mut copy[..n]).unwrap();
        assert_eq!(&copy[r], b"hello");

        let mut again = wire;
        assert_eq!(b.open(counter, &mut again[..n]), Err(DropReason::Replayed));

        let mut body = wire;
        body[HEADER_LEN] ^= 1;
        assert_eq!(
            b.open(path_counter(3, 1), &mut body[..n]),
            Err(DropReason::Forged)
        );
    }

    #[test]
    fn the_same_keys_under_the_other_cipher_do_not_open() {
        let (mut chacha, _) = pair(Cipher::ChaCha20Poly1305);
        let (_, mut aes) = pair(Cipher::Aes256Gcm);
        let mut buf = [0u8; 64];
        buf[HEADER_LEN..HEADER_LEN + 5].copy_from_slice(b"hello");
        let n = chacha.seal(Kind::Data, PathId(0), &mut buf, 5).unwrap();
        assert_eq!(
            aes.open(path_counter(0, 0), &mut buf[..n]),
            Err(DropReason::Forged)
        );
    }

    #[test]
    fn aes_is_picked_only_when_both_ends_run_it_fast() {
        assert_eq!(Cipher::negotiate(true, true), Cipher::Aes256Gcm);
        assert_eq!(Cipher::negotiate(true, false), Cipher::ChaCha20Poly1305);
        assert_eq!(Cipher::negotiate(false, true), Cipher::ChaCha20Poly1305);
        assert_eq!(Cipher::negotiate(false, false), Cipher::ChaCha20Poly1305);
    }

    #[test]
    fn seal_refuses_a_buffer_without_room_for_the_tag() {
        let (mut a, _) = pair(Cipher::Aes256Gcm);
        let mut buf = [0u8; HEADER_LEN + 10];
        assert_eq!(
            a.seal(Kind::Data, PathId(0), &mut buf, 5),
            Err(DropReason::TooBig)
        );
    }
}
