//! Network interface names, by the kernel's rules (`dev_valid_name` in net/core/dev.c): 1 to 15
//! bytes (IFNAMSIZ - 1), no '/', ':' or whitespace, not "." or "..". Control characters are
//! refused too: the kernel takes them, but they would corrupt every log line that names the
//! interface.
//!
//! [`check_pattern`] also takes one trailing `*` (`rmnet_data*`), for config fields that may name
//! a family of interfaces. Checking the pattern is all this module does: matching it against the
//! interfaces present is the caller's job.

use crate::config::shown;

/// The longest interface name, in bytes (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// Checks `name` against the kernel's rules; the error says what is wrong, quoting the name.
pub fn check(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty interface name".into());
    }
    if name.len() > IFNAME_MAX {
        return Err(format!(
            "{} is longer than {IFNAME_MAX} bytes, the kernel's limit",
            shown(name)
        ));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{} is not a valid interface name (no '/', ':', whitespace; not '.' or '..')",
            shown(name)
        ));
    }
    Ok(())
}

/// Like [`check`], but a trailing `*` stands for any rest of the name: `rmnet_data*`. The part
/// before it must be a valid, non-empty name of its own.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    match pattern.strip_suffix('*') {
        Some("") => Err(format!(
            "{} matches every interface: expected a name or a prefix and '*', e.g. \"rmnet_data*\"",
            shown(pattern)
        )),
        Some(prefix) if prefix.contains('*') => Err(format!(
            "{} has more than one '*': only one trailing '*' is supported",
            shown(pattern)
        )),
        Some(prefix) => check(prefix),
        None => check(pattern),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_1_to_15_bytes_without_slash_colon_or_space_are_valid() {
        for ok in [
            "a",
            "wlan0",
            "rmnet_data0",
            "v4-rmnet_data0",
            "eth0.100",
            "wg-ü",
            "a@b",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        assert_eq!(check(&"x".repeat(15)), Ok(()));
    }

    #[test]
    fn the_kernel_refuses_these_and_so_do_we() {
        assert_eq!(check(""), Err("empty interface name".into()));
        assert!(check(&"x".repeat(16)).unwrap_err().contains("15 bytes"));
        for bad in [
            ".",
            "..",
            "a/b",
            "a:b",
            "eth0; drop",
            "a\tb",
            "a\nb",
            "a\u{1}b",
        ] {
            let e = check(bad).unwrap_err();
            assert!(e.contains("not a valid interface name"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_pattern_takes_one_trailing_star_after_a_valid_prefix() {
        assert_eq!(check_pattern("rmnet_data*"), Ok(()));
        assert_eq!(check_pattern("wlan0"), Ok(()));
        assert!(check_pattern("*").unwrap_err().contains("every interface"));
        assert!(check_pattern("a**").unwrap_err().contains("more than one"));
        assert!(check_pattern("a/b*").is_err());
        assert!(check_pattern(&format!("{}*", "x".repeat(16))).is_err());
        assert!(
            check("rmnet_data*").is_ok(),
            "a plain name may hold '*', as the kernel's may"
        );
    }
}
