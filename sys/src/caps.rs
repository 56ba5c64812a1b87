//! Whether the process holds CAP_NET_ADMIN, checked before a daemon touches the network, so a
//! missing privilege is one clear line instead of an `EPERM` from deep inside TUN or netlink
//! setup. Reads `/proc/self/status` only.

/// CAP_NET_ADMIN's bit in the capability sets (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;

/// The process lacks a capability it needs.
#[derive(Debug, thiserror::Error)]
pub enum CapError {
    /// The effective set lacks CAP_NET_ADMIN.
    #[error(
        "missing privilege: CAP_NET_ADMIN is required (run {program} as root or grant it with setcap cap_net_admin+ep)"
    )]
    NoNetAdmin {
        /// The daemon's name, for the message.
        program: &'static str,
    },
}

/// Whether the effective capability set holds CAP_NET_ADMIN. `None` when it cannot be told
/// (no /proc, or no readable `CapEff` line).
pub fn has_net_admin() -> Option<bool> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    cap_eff_has(&status, CAP_NET_ADMIN)
}

/// Whether the `CapEff` line of a `/proc/<pid>/status` text has capability `bit` set; `None`
/// without a parsable `CapEff` line.
pub fn cap_eff_has(status: &str, bit: u32) -> Option<bool> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    let caps = u64::from_str_radix(hex.trim(), 16).ok()?;
    Some(caps & (1u64 << bit) != 0)
}

/// Fails when the process surely lacks CAP_NET_ADMIN. When that cannot be told (no /proc), the
/// first privileged operation reports instead.
pub fn require_net_admin(program: &'static str) -> Result<(), CapError> {
    match has_net_admin() {
        Some(false) => Err(CapError::NoNetAdmin { program }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_parsing_finds_net_admin() {
        let root = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        let user = "Name:\tx\nCapEff:\t0000000000000000\n";
        let only_raw = "CapEff:\t0000000000002000\n";
        assert_eq!(cap_eff_has(root, CAP_NET_ADMIN), Some(true));
        assert_eq!(cap_eff_has(user, CAP_NET_ADMIN), Some(false));
        assert_eq!(cap_eff_has(only_raw, CAP_NET_ADMIN), Some(false));
        assert_eq!(cap_eff_has("CapEff:\tzz\n", CAP_NET_ADMIN), None);
        assert_eq!(cap_eff_has("", CAP_NET_ADMIN), None);
    }

    #[test]
    fn only_bit_12_is_net_admin() {
        assert_eq!(
            cap_eff_has("CapEff:\t0000000000000800\n", CAP_NET_ADMIN),
            Some(false)
        );
        assert_eq!(
            cap_eff_has("CapEff:\t0000000000001000\n", CAP_NET_ADMIN),
            Some(true)
        );
    }

    #[test]
    fn a_status_without_capabilities_never_counts_as_privileged() {
        assert_ne!(cap_eff_has("Name:\tx\n", CAP_NET_ADMIN), Some(true));
    }

    #[test]
    fn the_error_names_the_capability_and_the_program() {
        let e = CapError::NoNetAdmin { program: "upmt-an" }.to_string();
        assert!(e.contains("CAP_NET_ADMIN"), "{e}");
        assert!(e.contains("run upmt-an as root"), "{e}");
    }
}
