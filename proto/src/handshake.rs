//! The Noise IK handshake (snow) and mac1.
//!
//! `Noise_IK_25519_ChaChaPoly_BLAKE2s`, prologue `upmt v1`; the mobile host initiates. The split
//! keys are taken raw and handed to [`crate::crypto::Keypair`] (ring, in place), because snow's
//! transport mode would copy every packet. mac1 is checked before any Diffie-Hellman so that a
//! flood of junk inits costs the anchor one BLAKE2s each, not a scalar multiplication.
//!
//! The transport cipher is negotiated around the Noise messages: the init's flags offer
//! AES-256-GCM, the anchor's choice travels in the authenticated message 2 payload
//! ([`SessionParams::cipher`]), and an initiator refuses a choice it did not offer.

use crate::keys::{PublicKey, StaticSecret};
use crate::wire::{
    HandshakeInit, HandshakeInitRepr, INIT_FLAG_AES256GCM, INIT_HEADER_LEN, INIT_LEN,
    INIT_NOISE_LEN, INIT_PAYLOAD_LEN, MAC1_LEN, MAC1_OFFSET, MAC2_OFFSET, RESP_LEN, RESP_NOISE_LEN,
    RESP_PAYLOAD_LEN,
};
use crate::{Cipher, DropReason, SessionParams};
use blake2::digest::{Digest, Mac};
use blake2::{Blake2s256, Blake2sMac};
use snow::HandshakeState;

const PATTERN: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
const PROLOGUE: &[u8] = b"upmt v1";

/// Raw transport keys: (ours to send with, ours to receive with).
pub(crate) type SplitKeys = ([u8; 32], [u8; 32]);

/// The key of mac1 for inits addressed to `responder`.
pub(crate) fn mac1_key(responder: &PublicKey) -> [u8; 32] {
    let mut h = Blake2s256::new();
    Digest::update(&mut h, b"upmt mac1");
    Digest::update(&mut h, responder.as_bytes());
    h.finalize().into()
}

/// mac1 over every byte of the init before mac2, except the mac1 field itself. `init` must be
/// `INIT_LEN` long (callers check the length first).
pub(crate) fn mac1(key: &[u8; 32], init: &[u8]) -> [u8; MAC1_LEN] {
    let mut m = <Blake2sMac<blake2::digest::consts::U16> as Mac>::new_from_slice(key)
        .expect("a 32-byte key is valid for blake2s");
    Mac::update(&mut m, &init[..MAC1_OFFSET]);
    Mac::update(&mut m, &init[MAC1_OFFSET + MAC1_LEN..MAC2_OFFSET]);
    m.finalize().into_bytes().into()
}

/// Whether an init of the right length carries a valid mac1: one BLAKE2s, no DH.
pub(crate) fn check_mac1(key: &[u8; 32], init: &[u8]) -> Result<(), DropReason> {
    let view = HandshakeInit::new_checked(init)?;
    let repr = HandshakeInitRepr::parse(&view)?;
    if ct_eq(&repr.mac1, &mac1(key, init)) {
        Ok(())
    } else {
        Err(DropReason::BadMac)
    }
}

/// Constant-time equality, so timing does not reveal how much of a mac matched.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn params() -> snow::params::NoiseParams {
    PATTERN.parse().expect("the noise pattern string is valid")
}

/// An initiator waiting for the response.
pub(crate) struct Initiation {
    hs: HandshakeState,
    offers_aes256gcm: bool,
}

impl Initiation {
    /// Writes a complete HandshakeInit datagram with `header` (its mac1 is computed here) into
    /// `out`.
    pub(crate) fn start(
        secret: &StaticSecret,
        responder: &PublicKey,
        mac1_key: &[u8; 32],
        header: HandshakeInitRepr,
        timestamp: u64,
        out: &mut [u8; INIT_LEN],
    ) -> Result<Self, DropReason> {
        let mut hs = snow::Builder::new(params())
            .local_private_key(secret.as_bytes())
            .and_then(|b| b.remote_public_key(responder.as_bytes()))
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_initiator())
            .map_err(|_| DropReason::HandshakeFailed)?;
        let n = hs
            .write_message(
                &timestamp.to_be_bytes(),
                &mut out[INIT_HEADER_LEN..MAC2_OFFSET],
            )
            .map_err(|_| DropReason::HandshakeFailed)?;
        debug_assert_eq!(n, INIT_NOISE_LEN);
        let mut view = HandshakeInit::new_unchecked(&mut out[..]);
        HandshakeInitRepr {
            mac1: [0; MAC1_LEN],
            ..header
        }
        .emit(&mut view);
        let m = mac1(mac1_key, &out[..]);
        HandshakeInit::new_unchecked(&mut out[..]).set_mac1(&m);
        Ok(Initiation {
            hs,
            offers_aes256gcm: header.offers_aes256gcm,
        })
    }

    /// Reads the Noise message 2; returns the anchor's parameters and the split keys.
    /// A failure leaves the state unusable; the caller's retry timer starts a fresh one.
    pub(crate) fn finish(
        &mut self,
        noise: &[u8],
    ) -> Result<(SessionParams, SplitKeys), DropReason> {
        if noise.len() != RESP_NOISE_LEN {
            return Err(DropReason::Truncated);
        }
        let mut payload = [0u8; RESP_NOISE_LEN];
        let n = self
            .hs
            .read_message(noise, &mut payload)
            .map_err(|_| DropReason::HandshakeFailed)?;
        if n != RESP_PAYLOAD_LEN || !self.hs.is_handshake_finished() {
            return Err(DropReason::HandshakeFailed);
        }
        let params = SessionParams::parse(&payload[..n])?;
        if params.cipher == Cipher::Aes256Gcm && !self.offers_aes256gcm {
            return Err(DropReason::HandshakeFailed);
        }
        let (i2r, r2i) = self.hs.dangerously_get_raw_split();
        Ok((params, (i2r, r2i)))
    }
}

/// A responder that read a valid message 1 and knows who sent it.
pub(crate) struct Response {
    hs: HandshakeState,
    /// The initiator's static key (authenticated by the Noise message).
    pub(crate) initiator: PublicKey,
    /// The initiator's timestamp (authenticated).
    pub(crate) timestamp: u64,
    /// Whether the init's flags offer AES-256-GCM (covered by mac1 only, see
    /// [`crate::wire::INIT_FLAG_AES256GCM`]).
    pub(crate) offers_aes256gcm: bool,
}

impl Response {
    /// Checks mac1, then runs the Diffie-Hellmans of message 1.
    pub(crate) fn read_init(
        secret: &StaticSecret,
        mac1_key: &[u8; 32],
        init: &[u8],
    ) -> Result<Self, DropReason> {
        check_mac1(mac1_key, init)?;
        let view = HandshakeInit::new_checked(init)?;
        let offers_aes256gcm = view.flags() & INIT_FLAG_AES256GCM != 0;
        let mut hs = snow::Builder::new(params())
            .local_private_key(secret.as_bytes())
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_responder())
            .map_err(|_| DropReason::HandshakeFailed)?;
        let mut payload = [0u8; INIT_NOISE_LEN];
        let n = hs
            .read_message(view.noise(), &mut payload)
            .map_err(|_| DropReason::HandshakeFailed)?;
        if n != INIT_PAYLOAD_LEN {
            return Err(DropReason::HandshakeFailed);
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&payload[..8]);
        let rs = hs.get_remote_static().ok_or(DropReason::HandshakeFailed)?;
        let mut initiator = [0u8; 32];
        if rs.len() != 32 {
            return Err(DropReason::HandshakeFailed);
        }
        initiator.copy_from_slice(rs);
        Ok(Response {
            hs,
            initiator: PublicKey::from_bytes(initiator),
            timestamp: u64::from_be_bytes(ts),
            offers_aes256gcm,
        })
    }

    /// Writes the Noise message 2 carrying `params` into `out[RESP_HEADER_LEN..]` (the caller
    /// writes the header) and returns the split keys.
    pub(crate) fn write_resp(
        mut self,
        params: &SessionParams,
        out: &mut [u8; RESP_LEN],
    ) -> Result<SplitKeys, DropReason> {
        let mut payload = [0u8; RESP_PAYLOAD_LEN];
        params.emit(&mut payload)?;
        let n = self
            .hs
            .write_message(&payload, &mut out[crate::wire::RESP_HEADER_LEN..])
            .map_err(|_| DropReason::HandshakeFailed)?;
        if n != RESP_NOISE_LEN || !self.hs.is_handshake_finished() {
            return Err(DropReason::HandshakeFailed);
        }
        let (i2r, r2i) = self.hs.dangerously_get_raw_split();
        Ok((r2i, i2r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PathId, SessionIndex};
    use std::net::Ipv4Addr;

    fn header(path: PathId, sender_index: SessionIndex, aes: bool) -> HandshakeInitRepr {
        HandshakeInitRepr {
            path,
            sender_index,
            offers_aes256gcm: aes,
            mac1: [0; MAC1_LEN],
        }
    }

    fn params_fixture() -> SessionParams {
        SessionParams {
            virtual_ipv4: Ipv4Addr::new(10, 9, 0, 2),
            prefix4: 24,
            virtual_ipv6: None,
            prefix6: 64,
            mtu: 1420,
            cipher: Cipher::ChaCha20Poly1305,
        }
    }

    #[test]
    fn both_sides_derive_matching_keys_and_the_responder_learns_the_initiator() {
        let mh = StaticSecret::generate().unwrap();
        let an = StaticSecret::generate().unwrap();
        let key = mac1_key(&an.public_key());
        let mut init = [0u8; INIT_LEN];
        let mut ini = Initiation::start(
            &mh,
            &an.public_key(),
            &key,
            header(PathId(1), SessionIndex(7), false),
            42,
            &mut init,
        )
        .unwrap();
        let resp = Response::read_init(&an, &key, &init).unwrap();
        assert_eq!(resp.initiator, mh.public_key());
        assert_eq!(resp.timestamp, 42);
        let mut out = [0u8; RESP_LEN];
        let (an_send, an_recv) = resp.write_resp(&params_fixture(), &mut out).unwrap();
        let (p, (mh_send, mh_recv)) = ini.finish(&out[crate::wire::RESP_HEADER_LEN..]).unwrap();
        assert_eq!(p, params_fixture());
        assert_eq!(mh_send, an_recv);
        assert_eq!(mh_recv, an_send);
        assert_ne!(mh_send, mh_recv);
    }

    #[test]
    fn an_init_for_another_anchor_fails_mac1_before_any_dh() {
        let mh = StaticSecret::generate().unwrap();
        let an = StaticSecret::generate().unwrap();
        let other = StaticSecret::generate().unwrap();
        let wrong_key = mac1_key(&other.public_key());
        let mut init = [0u8; INIT_LEN];
        Initiation::start(
            &mh,
            &other.public_key(),
            &wrong_key,
            header(PathId(0), SessionIndex(1), false),
            1,
            &mut init,
        )
        .unwrap();
        let key = mac1_key(&an.public_key());
        assert!(matches!(
            Response::read_init(&an, &key, &init),
            Err(DropReason::BadMac)
        ));
    }

    #[test]
    fn a_tampered_init_with_a_recomputed_mac1_fails_the_noise_check() {
        let mh = StaticSecret::generate().unwrap();
        let an = StaticSecret::generate().unwrap();
        let key = mac1_key(&an.public_key());
        let mut init = [0u8; INIT_LEN];
        Initiation::start(
            &mh,
            &an.public_key(),
            &key,
            header(PathId(0), SessionIndex(1), false),
            1,
            &mut init,
        )
        .unwrap();
        init[MAC2_OFFSET - 1] ^= 0x80;
        let m = mac1(&key, &init);
        HandshakeInit::new_unchecked(&mut init[..]).set_mac1(&m);
        assert!(matches!(
            Response::read_init(&an, &key, &init),
            Err(DropReason::HandshakeFailed)
        ));
    }

    fn handshake(offer: bool, choice: Cipher) -> Result<SessionParams, DropReason> {
        let mh = StaticSecret::generate().unwrap();
        let an = StaticSecret::generate().unwrap();
        let key = mac1_key(&an.public_key());
        let mut init = [0u8; INIT_LEN];
        let mut ini = Initiation::start(
            &mh,
            &an.public_key(),
            &key,
            header(PathId(0), SessionIndex(1), offer),
            1,
            &mut init,
        )
        .unwrap();
        let resp = Response::read_init(&an, &key, &init).unwrap();
        assert_eq!(resp.offers_aes256gcm, offer);
        let mut out = [0u8; RESP_LEN];
        let params = SessionParams {
            cipher: choice,
            ..params_fixture()
        };
        resp.write_resp(&params, &mut out).unwrap();
        ini.finish(&out[crate::wire::RESP_HEADER_LEN..])
            .map(|(p, _)| p)
    }

    #[test]
    fn the_initiator_takes_aes_only_when_it_offered_it() {
        assert_eq!(
            handshake(true, Cipher::Aes256Gcm).unwrap().cipher,
            Cipher::Aes256Gcm
        );
        assert_eq!(
            handshake(true, Cipher::ChaCha20Poly1305).unwrap().cipher,
            Cipher::ChaCha20Poly1305
        );
        assert_eq!(
            handshake(false, Cipher::Aes256Gcm),
            Err(DropReason::HandshakeFailed)
        );
    }
}
