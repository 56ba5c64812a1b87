//! Private key files: one base64 X25519 key (44 characters and a newline, as `genkey` writes),
//! read with the same bounded, regular-file-only read as the configs. Decoding is the protocol
//! crate's ([`StaticSecret`]'s `FromStr`), so a key means the same thing everywhere.

use std::path::Path;

use upmt_proto::keys::StaticSecret;

use crate::file;

/// Why a private key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// It could not be read (missing, not a regular file, too large, not UTF-8...).
    #[error(transparent)]
    Read(#[from] std::io::Error),
    /// It holds something other than one key.
    #[error("expected one base64 X25519 private key (44 characters, as `genkey` prints)")]
    Invalid,
}

/// Reads the private key in the file at `path`.
pub fn read_private_key(path: &Path) -> Result<StaticSecret, KeyFileError> {
    let (f, _meta) = file::open_regular(path)?;
    let text = file::read_text(f)?;
    text.trim()
        .parse::<StaticSecret>()
        .map_err(|_| KeyFileError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

    fn temp(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("upmt-sys-key-{tag}-{}", std::process::id()))
    }

    #[test]
    fn a_key_file_with_one_key_and_a_newline_is_read() {
        let path = temp("good");
        std::fs::write(&path, format!("{KEY}\n")).unwrap();
        let key = read_private_key(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(key.unwrap().as_bytes(), &[1; 32]);
    }

    #[test]
    fn garbage_or_dev_zero_is_refused() {
        let path = temp("garbage");
        std::fs::write(&path, "garbage").unwrap();
        let garbage = read_private_key(&path);
        let _ = std::fs::remove_file(&path);
        assert!(matches!(garbage, Err(KeyFileError::Invalid)), "{garbage:?}");
        match read_private_key(Path::new("/dev/zero")) {
            Err(KeyFileError::Read(e)) => assert_eq!(e.to_string(), "not a regular file"),
            other => panic!("expected a read error, got {other:?}"),
        }
    }
}
