//! Private key files: one base64 X25519 key (44 characters and a newline, as `genkey` writes).
//!
//! A key file is read with the same bounded, regular-file-only read as the configs (so
//! `/dev/zero` is refused), and only when no one but its owner can open it: a key readable by
//! group or others is refused with the `chmod` that fixes it, as ssh refuses such a key. Keys
//! are written with mode 0600 from the start. Decoding is the protocol crate's
//! ([`StaticSecret`]'s `FromStr`), so a key means the same thing everywhere, and the file's text
//! is zeroed once decoded.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use upmt_proto::keys::StaticSecret;
use zeroize::Zeroizing;

use crate::file;

/// The permission bits a key file must not have: any access for group or others.
pub const GROUP_OR_OTHER: u32 = 0o077;

/// Why a private key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// It could not be read (missing, not a regular file, too large, not UTF-8...).
    #[error(transparent)]
    Read(#[from] std::io::Error),
    /// Group or others may open it.
    #[error(
        "it is open to group or others (mode {mode:04o}), so the key may be known: run `chmod 600 {}`",
        path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
    /// It holds something other than one key.
    #[error("expected one base64 X25519 private key (44 characters, as `genkey` prints)")]
    Invalid,
}

/// Reads the private key in the file at `path`. The permission check is made on the opened
/// file, before any of it is read.
pub fn read_private_key(path: &Path) -> Result<StaticSecret, KeyFileError> {
    let (f, meta) = file::open_regular(path)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & GROUP_OR_OTHER != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let text = Zeroizing::new(file::read_text(f)?);
    text.trim()
        .parse::<StaticSecret>()
        .map_err(|_| KeyFileError::Invalid)
}

/// Writes `key` and a newline to a new file at `path`, created with mode 0600 (never wider, so
/// there is no moment when another user could open it). An existing file is not replaced: that
/// would destroy a key some peer still trusts.
pub fn write_private_key(path: &Path, key: &StaticSecret) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{key}")?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

    fn temp(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("upmt-sys-key-{tag}-{}", std::process::id()))
    }

    /// Writes `text` to a fresh file with `mode`.
    fn key_file(tag: &str, text: &str, mode: u32) -> PathBuf {
        let path = temp(tag);
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_key_file_with_one_key_and_a_newline_is_read() {
        let path = key_file("good", &format!("{KEY}\n"), 0o600);
        let key = read_private_key(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(key.unwrap().as_bytes(), &[1; 32]);
    }

    #[test]
    fn a_key_file_readable_by_group_or_others_is_refused_with_the_chmod_that_fixes_it() {
        for mode in [0o644, 0o640, 0o604, 0o660, 0o606] {
            let path = key_file(&format!("open{mode:o}"), &format!("{KEY}\n"), mode);
            let result = read_private_key(&path);
            let _ = std::fs::remove_file(&path);
            match result {
                Err(e @ KeyFileError::TooOpen { .. }) => {
                    let line = e.to_string();
                    assert!(line.contains(&format!("mode 0{mode:o}")), "{line}");
                    assert!(
                        line.contains(&format!("chmod 600 {}", path.display())),
                        "{line}"
                    );
                    assert!(!line.contains(KEY), "{line}");
                }
                other => panic!("mode {mode:o}: expected TooOpen, got {other:?}"),
            }
        }
        let path = key_file("owner-only", &format!("{KEY}\n"), 0o400);
        let result = read_private_key(&path);
        let _ = std::fs::remove_file(&path);
        assert!(result.is_ok(), "0400 is fine: {result:?}");
    }

    #[test]
    fn garbage_or_dev_zero_is_refused() {
        let path = key_file("garbage", "garbage", 0o600);
        let garbage = read_private_key(&path);
        let _ = std::fs::remove_file(&path);
        assert!(matches!(garbage, Err(KeyFileError::Invalid)), "{garbage:?}");
        match read_private_key(Path::new("/dev/zero")) {
            Err(KeyFileError::Read(e)) => assert_eq!(e.to_string(), "not a regular file"),
            other => panic!("expected a read error, got {other:?}"),
        }
    }

    #[test]
    fn a_written_key_has_mode_0600_reads_back_and_is_never_overwritten() {
        let path = temp("written");
        let _ = std::fs::remove_file(&path);
        let key = StaticSecret::from_bytes([7; 32]);
        write_private_key(&path, &key).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        let back = read_private_key(&path);
        let again = write_private_key(&path, &StaticSecret::from_bytes([8; 32]));
        let still = read_private_key(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(mode, 0o600);
        assert_eq!(back.unwrap(), key);
        assert_eq!(again.unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(still.unwrap(), key);
    }
}
