//! Checks that the daemon holds CAP_NET_ADMIN before it touches the network, so a missing
//! privilege is one clear line instead of an EPERM from deep inside TUN setup.

/// Bit of CAP_NET_ADMIN in the capability sets (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "missing privilege: CAP_NET_ADMIN is required (run as root or grant it with setcap cap_net_admin+ep)"
    )]
    NoNetAdmin,
}

/// Fails unless the effective capability set holds CAP_NET_ADMIN.
pub fn require_net_admin() -> Result<(), PrivilegeError> {
    match std::fs::read_to_string("/proc/self/status") {
        Ok(status) if has_net_admin(&status) => Ok(()),
        Ok(_) => Err(PrivilegeError::NoNetAdmin),
        // Without /proc we cannot tell; let the operations themselves report.
        Err(_) => Ok(()),
    }
}

fn has_net_admin(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_capabilities_include_net_admin() {
        assert!(has_net_admin("Name:\tx\nCapEff:\t000001ffffffffff\n"));
    }

    #[test]
    fn an_unprivileged_process_lacks_net_admin() {
        assert!(!has_net_admin("CapEff:\t0000000000000000\n"));
        assert!(!has_net_admin("CapEff:\t0000000000000800\n"));
        assert!(has_net_admin("CapEff:\t0000000000001000\n"));
    }

    #[test]
    fn a_status_without_capabilities_counts_as_unprivileged() {
        assert!(!has_net_admin("Name:\tx\n"));
    }
}
