//! Destinations that are never tunnelled, whatever the policy: they only make sense on the
//! local link, and the anchor node could not deliver them anyway.

use std::net::IpAddr;

/// Whether traffic to `dst` must stay local: multicast, limited broadcast
/// (255.255.255.255), link-local, loopback, an address inside one of `local_subnets`
/// (`(network address, prefix length)` of the physical interfaces), or such a subnet's
/// directed broadcast. Prefix lengths past the address width are clamped.
pub fn is_never_tunnelled(dst: IpAddr, local_subnets: &[(IpAddr, u8)]) -> bool {
    let fixed = match dst {
        IpAddr::V4(a) => {
            a.is_multicast() || a.is_broadcast() || a.is_link_local() || a.is_loopback()
        }
        IpAddr::V6(a) => a.is_multicast() || a.is_unicast_link_local() || a.is_loopback(),
    };
    fixed
        || local_subnets
            .iter()
            .any(|&(net, len)| in_subnet(dst, net, len))
}

fn in_subnet(dst: IpAddr, net: IpAddr, len: u8) -> bool {
    match (dst, net) {
        (IpAddr::V4(d), IpAddr::V4(n)) => {
            let len = u32::from(len.min(32));
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            // The subnet's directed broadcast is inside it, so it is covered here too.
            u32::from(d) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(d), IpAddr::V6(n)) => {
            let len = u32::from(len.min(128));
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(d) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn multicast_broadcast_link_local_and_loopback_stay_local() {
        for a in [
            "224.0.0.251",
            "239.255.255.250",
            "255.255.255.255",
            "169.254.1.1",
            "127.0.0.1",
            "ff02::fb",
            "fe80::1",
            "::1",
        ] {
            assert!(is_never_tunnelled(ip(a), &[]), "{a}");
        }
    }

    #[test]
    fn local_subnets_and_their_broadcast_stay_local() {
        let lan = [(ip("192.168.1.0"), 24), (ip("2001:db8:1::"), 64)];
        assert!(is_never_tunnelled(ip("192.168.1.20"), &lan));
        assert!(is_never_tunnelled(ip("192.168.1.255"), &lan));
        assert!(is_never_tunnelled(ip("2001:db8:1::42"), &lan));
        assert!(!is_never_tunnelled(ip("192.168.2.1"), &lan));
        assert!(!is_never_tunnelled(ip("2001:db8:2::1"), &lan));
    }

    #[test]
    fn internet_addresses_are_tunnelled() {
        assert!(!is_never_tunnelled(ip("93.184.216.34"), &[]));
        assert!(!is_never_tunnelled(ip("2606:4700::1111"), &[]));
    }

    #[test]
    fn odd_prefix_lengths_neither_panic_nor_cross_families() {
        assert!(is_never_tunnelled(ip("10.0.0.1"), &[(ip("10.0.0.1"), 200)]));
        assert!(is_never_tunnelled(ip("8.8.8.8"), &[(ip("0.0.0.0"), 0)]));
        assert!(!is_never_tunnelled(
            ip("::ffff:10.0.0.1"),
            &[(ip("10.0.0.0"), 8)]
        ));
    }
}
