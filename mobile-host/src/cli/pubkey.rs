//! `upmt pubkey`: reads a private key on stdin, prints its public key, like `wg pubkey`.

use std::io::{Read, Write};

use anyhow::Context as _;

use crate::setup::StaticSecret;

/// Reads a base64 private key from `input`, writes its public key and a newline to `out`.
pub fn run(input: &mut impl Read, out: &mut impl Write) -> anyhow::Result<()> {
    let mut text = String::new();
    // A key is 44 characters; refuse to slurp an unbounded stream.
    input
        .take(4096)
        .read_to_string(&mut text)
        .context("cannot read a private key from standard input")?;
    let secret: StaticSecret = text
        .trim()
        .parse()
        .context("standard input is not a private key (expected 44 base64 characters, as `upmt genkey` prints)")?;
    writeln!(out, "{}", secret.public_key()).context("cannot write the public key")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pubkey_of_a_genkey_key_is_the_core_public_key() {
        let mut key = Vec::new();
        super::super::genkey::run(&mut key).unwrap();
        let secret: StaticSecret = String::from_utf8(key.clone())
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut out = Vec::new();
        run(&mut key.as_slice(), &mut out).unwrap();
        let printed = String::from_utf8(out).unwrap();
        assert_eq!(printed, format!("{}\n", secret.public_key()));
        assert_ne!(printed.trim(), String::from_utf8(key).unwrap().trim());
    }

    #[test]
    fn pubkey_refuses_garbage_with_a_clear_message() {
        let mut out = Vec::new();
        let err = run(&mut &b"not a key\n"[..], &mut out).unwrap_err();
        assert!(format!("{err:#}").contains("not a private key"), "{err:#}");
        assert!(out.is_empty());
    }
}
