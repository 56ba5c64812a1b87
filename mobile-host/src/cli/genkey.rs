//! `upmt genkey`: prints a new random private key, base64, like `wg genkey`; with `--out PATH`
//! writes it to a new file of mode 0600 instead (`upmt genkey > key` would leave it as the
//! umask says, often readable by all, and the daemon refuses such a key file).

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;

use crate::setup::StaticSecret;

/// Writes a fresh private key and a newline to `out`.
pub fn run(out: &mut impl Write) -> anyhow::Result<()> {
    let secret = StaticSecret::generate().context("cannot generate a key")?;
    writeln!(out, "{secret}").context("cannot write the key")?;
    Ok(())
}

/// Writes a fresh private key to a new file at `path` with mode 0600.
pub fn to_file(path: &Path) -> anyhow::Result<()> {
    let secret = StaticSecret::generate().context("cannot generate a key")?;
    upmt_sys::keys::write_private_key(path, &secret)
        .with_context(|| format!("cannot write a new key file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genkey_prints_a_44_char_key_that_parses_and_differs_each_time() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        run(&mut a).unwrap();
        run(&mut b).unwrap();
        let a = String::from_utf8(a).unwrap();
        let b = String::from_utf8(b).unwrap();
        assert_eq!(a.trim_end().len(), 44);
        assert!(a.ends_with('\n'));
        assert!(a.trim().parse::<StaticSecret>().is_ok());
        assert_ne!(a, b);
    }
}
