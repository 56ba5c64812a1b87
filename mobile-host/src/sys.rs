//! Checks of the process's privileges and the kernel features the daemon needs, so that a missing
//! one is a clear one-line error at start instead of an `EPERM` deep inside netlink. Reads
//! `/proc/self/status` and the file system only.

use std::path::{Path, PathBuf};

/// CAP_NET_ADMIN's bit in the capability sets.
const CAP_NET_ADMIN: u32 = 12;

/// A missing privilege or kernel feature.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// The process lacks CAP_NET_ADMIN.
    #[error(
        "missing CAP_NET_ADMIN: run upmt-mh as root (or grant it CAP_NET_ADMIN and CAP_NET_RAW)"
    )]
    NoNetAdmin,
    /// No TUN device node.
    #[error(
        "no TUN device: neither /dev/net/tun nor /dev/tun exists (load the tun module: modprobe tun)"
    )]
    NoTunDevice,
}

/// Whether the effective capability set holds CAP_NET_ADMIN. `None` when /proc is unreadable.
pub fn has_net_admin() -> Option<bool> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    cap_eff_has(&status, CAP_NET_ADMIN)
}

fn cap_eff_has(status: &str, bit: u32) -> Option<bool> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    let hex = line.trim_start_matches("CapEff:").trim();
    let caps = u64::from_str_radix(hex, 16).ok()?;
    Some(caps & (1u64 << bit) != 0)
}

/// Fails with [`SysError::NoNetAdmin`] when the process surely lacks CAP_NET_ADMIN.
pub fn require_net_admin() -> Result<(), SysError> {
    match has_net_admin() {
        Some(false) => Err(SysError::NoNetAdmin),
        // Unknown (no /proc): let the first privileged call report.
        _ => Ok(()),
    }
}

/// The TUN clone device: `/dev/net/tun` (Linux), else `/dev/tun` (some Android builds).
pub fn tun_device_path() -> Result<PathBuf, SysError> {
    ["/dev/net/tun", "/dev/tun"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .map(Path::to_owned)
        .ok_or(SysError::NoTunDevice)
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
    fn the_errors_name_what_is_missing() {
        assert!(SysError::NoNetAdmin.to_string().contains("CAP_NET_ADMIN"));
        assert!(SysError::NoTunDevice.to_string().contains("/dev/net/tun"));
    }
}
