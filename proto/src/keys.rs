//! Static X25519 keys: the identities of mobile hosts and anchors.
//!
//! Text form is standard base64 of the 32 bytes (44 characters), as in WireGuard, so keys can be
//! pasted between config files. A secret's `Debug` never prints the key, and its bytes (and the
//! scratch copies made while decoding or printing it) are zeroed when dropped. Nothing here
//! touches the filesystem; loading and file permissions are the daemons' job.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use core::fmt;
use core::str::FromStr;

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Why a key string was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not valid standard base64.
    #[error("key is not valid base64")]
    Base64(#[source] base64::DecodeError),
    /// Decoded, but not 32 bytes.
    #[error("key is {0} bytes long, expected 32 (44 base64 characters)")]
    Length(usize),
    /// The random number generator failed.
    #[error("cannot read random bytes for a new key")]
    Random(#[source] getrandom::Error),
}

fn decode32(s: &str) -> Result<[u8; 32], KeyError> {
    let mut out = Zeroizing::new([0u8; 33]);
    // Decoding into a 33-byte slice lets a 33-byte key report its length instead of overflowing.
    let n = STANDARD
        .decode_slice(s.trim(), &mut out[..])
        .map_err(|e| match e {
            base64::DecodeSliceError::DecodeError(e) => KeyError::Base64(e),
            base64::DecodeSliceError::OutputSliceTooSmall => {
                KeyError::Length(s.trim().len() * 3 / 4)
            }
        })?;
    if n != 32 {
        return Err(KeyError::Length(n));
    }
    let mut k = [0u8; 32];
    k.copy_from_slice(&out[..32]);
    Ok(k)
}

/// An X25519 private key. Its bytes are zeroed when it is dropped; a clone is a second copy
/// that is zeroed on its own drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct StaticSecret([u8; 32]);

impl StaticSecret {
    /// Wraps raw key bytes (clamping happens inside X25519).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        StaticSecret(bytes)
    }

    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Result<Self, KeyError> {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).map_err(KeyError::Random)?;
        Ok(StaticSecret(b))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        let s = x25519_dalek::StaticSecret::from(self.0);
        PublicKey(x25519_dalek::PublicKey::from(&s).to_bytes())
    }

    /// The raw bytes (for handing to the Noise implementation).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for StaticSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticSecret(<redacted>)")
    }
}

/// Base64 of the secret: only for writing key files, never for logs.
impl fmt::Display for StaticSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Encoded on the stack and zeroed after, so no heap copy of the key outlives the call.
        let mut text = Zeroizing::new([0u8; 44]);
        let n = STANDARD
            .encode_slice(self.0, &mut text[..])
            .map_err(|_| fmt::Error)?;
        f.write_str(core::str::from_utf8(&text[..n]).map_err(|_| fmt::Error)?)
    }
}

impl FromStr for StaticSecret {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        decode32(s).map(StaticSecret)
    }
}

/// An X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Wraps raw key bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        PublicKey(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        decode32(s).map(PublicKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_44_char_base64() {
        let s = StaticSecret::generate().unwrap();
        let text = s.to_string();
        assert_eq!(text.len(), 44);
        assert_eq!(text.parse::<StaticSecret>().unwrap(), s);
        let p = s.public_key();
        assert_eq!(p.to_string().len(), 44);
        assert_eq!(p.to_string().parse::<PublicKey>().unwrap(), p);
    }

    #[test]
    fn public_key_matches_rfc7748_test_vector() {
        // RFC 7748 section 6.1, Alice.
        let sk: [u8; 32] = [
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2,
            0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5,
            0x1d, 0xb9, 0x2c, 0x2a,
        ];
        let pk = StaticSecret::from_bytes(sk).public_key();
        assert_eq!(
            pk.as_bytes()[..4],
            [0x85, 0x20, 0xf0, 0x09],
            "alice's public key starts 8520f009"
        );
    }

    #[test]
    fn secret_debug_does_not_print_the_key() {
        let s = StaticSecret::from_bytes([0xab; 32]);
        let dbg = format!("{s:?}");
        assert!(!dbg.contains(&s.to_string()));
        assert!(dbg.contains("redacted"));
    }

    #[test]
    fn a_secret_inside_a_struct_debug_prints_no_key_bytes() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            key: StaticSecret,
        }
        let s = StaticSecret::from_bytes([0xab; 32]);
        let dbg = format!("{:?} {:#?}", Holder { key: s.clone() }, s);
        assert!(!dbg.contains(&s.to_string()), "{dbg}");
        assert!(!dbg.contains("171"), "no decimal byte list: {dbg}");
        assert!(!dbg.to_lowercase().contains("abab"), "no hex: {dbg}");
    }

    #[test]
    fn a_zeroized_secret_holds_no_key_bytes() {
        let mut s = StaticSecret::from_bytes([0xab; 32]);
        s.zeroize();
        assert_eq!(s.as_bytes(), &[0; 32]);
    }

    #[test]
    fn display_of_a_secret_is_its_44_character_base64() {
        let s = StaticSecret::from_bytes([1; 32]);
        assert_eq!(
            s.to_string(),
            "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
        );
    }

    #[test]
    fn bad_key_strings_are_refused_with_a_reason() {
        assert!(matches!(
            "not base64!".parse::<PublicKey>(),
            Err(KeyError::Base64(_))
        ));
        assert!(matches!(
            "AAAA".parse::<PublicKey>(),
            Err(KeyError::Length(3))
        ));
        let long = STANDARD.encode([1u8; 40]);
        assert!(matches!(
            long.parse::<PublicKey>(),
            Err(KeyError::Length(_))
        ));
        let msg = "AAAA".parse::<PublicKey>().unwrap_err().to_string();
        assert!(msg.starts_with("key is 3 bytes"), "{msg}");
    }
}
