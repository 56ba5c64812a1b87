//! What the lab's load generators may aim at: only the lab's own address ranges.

use std::net::{IpAddr, Ipv4Addr};

/// Outer targets: the lab's documentation ranges 203.0.113.0/24 and 2001:db8::/32.
pub fn target_allowed(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[..3] == [203, 0, 113],
        IpAddr::V6(v6) => v6.segments()[..2] == [0x2001, 0x0db8],
    }
}

/// Inner destinations: private or documentation ranges only.
pub fn inner_allowed(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_private() || matches!(o[..3], [192, 0, 2] | [198, 51, 100] | [203, 0, 113])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lab_documentation_targets_are_allowed() {
        assert!(target_allowed("203.0.113.2".parse().expect("ip")));
        assert!(target_allowed("2001:db8:3::2".parse().expect("ip")));
        assert!(!target_allowed("8.8.8.8".parse().expect("ip")));
        assert!(!target_allowed("127.0.0.1".parse().expect("ip")));
        assert!(!target_allowed("192.0.2.2".parse().expect("ip")));
        assert!(!target_allowed("2001:4860::8888".parse().expect("ip")));
    }

    #[test]
    fn inner_destinations_are_private_or_documentation_only() {
        assert!(inner_allowed(Ipv4Addr::new(192, 0, 2, 2)));
        assert!(inner_allowed(Ipv4Addr::new(10, 77, 0, 1)));
        assert!(!inner_allowed(Ipv4Addr::new(8, 8, 8, 8)));
        assert!(!inner_allowed(Ipv4Addr::new(1, 1, 1, 1)));
    }
}
