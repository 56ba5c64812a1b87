//! The inner MTU (the TUN's) that follows the path MTUs: the smallest live path's MTU less the
//! tunnel's overhead on it, never above the session's MTU and never below the IPv6 minimum.
//!
//! Why the TUN MTU and not an MSS clamp: the kernel then does both jobs at once. New TCP
//! connections advertise an MSS from the TUN's MTU (so the far end's segments fit the path
//! downlink too), the host's own TCP shrinks its segments on running connections, and a
//! packet too big with the don't-fragment bit gets an ICMP frag-needed / packet-too-big from
//! the host's own stack, so nothing is black-holed silently. The floor of 1280 keeps IPv6 on
//! the TUN (the kernel disables it below); on a path narrower than 1280 plus the overhead,
//! full-size packets leave fragmented by the sender's kernel (the sockets allow it) instead.

use upmt_proto::{HEADER_LEN, TAG_LEN};

/// The smallest inner MTU the TUN is given: IPv6's minimum.
pub const INNER_FLOOR: u16 = 1280;

/// The tunnel's bytes on a path besides the inner packet: outer IP and UDP headers, the
/// transport header and the tag.
pub fn overhead(v6: bool) -> u16 {
    let headers: usize = if v6 { 40 + 8 } else { 20 + 8 };
    u16::try_from(headers + HEADER_LEN + TAG_LEN).unwrap_or(u16::MAX)
}

/// The inner MTU for `session_mtu` (what the anchor gave) and the live paths, each as (its
/// MTU, whether it runs over IPv6). Without a path of known MTU it is the session's.
pub fn inner_mtu(session_mtu: u16, paths: impl IntoIterator<Item = (u16, bool)>) -> u16 {
    paths
        .into_iter()
        .map(|(mtu, v6)| mtu.saturating_sub(overhead(v6)))
        .min()
        .map_or(session_mtu, |m| m.min(session_mtu).max(INNER_FLOOR))
        .min(session_mtu.max(INNER_FLOOR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_size_paths_keep_the_session_mtu() {
        assert_eq!(inner_mtu(1420, [(1500, false), (1500, true)]), 1420);
        assert_eq!(inner_mtu(1420, []), 1420);
    }

    #[test]
    fn the_smallest_live_path_less_its_overhead_sets_the_inner_mtu() {
        // 1400 over IPv4: 28 bytes of headers, 32 of transport header and tag.
        assert_eq!(inner_mtu(1420, [(1500, false), (1400, false)]), 1340);
        assert_eq!(inner_mtu(1420, [(1400, true)]), 1320);
    }

    #[test]
    fn the_inner_mtu_never_drops_below_the_ipv6_minimum() {
        assert_eq!(inner_mtu(1420, [(1280, false)]), INNER_FLOOR);
    }
}
