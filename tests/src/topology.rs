//! The lab's fixed addressing plan, as constants, so tests name addresses instead of retyping
//! them.
//!
//! ```text
//!            wifi 192.168.1.2 ── lan [rwifi NAT] wan 198.51.100.2 ── to-rwifi ┐
//!   [mh]                                                                      [inet] ── to-an ── eth0 203.0.113.2 [an]
//!            cell 100.64.0.2 ─── lan [rcell NAT] wan 198.18.0.2 ──── to-rcell ┘   └─── to-ch ── eth0 192.0.2.2   [ch]
//! ```
//!
//! Each IPv4 subnet has an IPv6 twin (`fd00:1::/64` behind rwifi, `fd00:2::/64` behind rcell,
//! `2001:db8:N::/64` on the internet side). Every address is a documentation or private range and
//! exists only inside the lab's namespaces.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The MH's Wi-Fi address (behind rwifi's NAT).
pub const MH_WIFI_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
/// The MH's Wi-Fi IPv6 address (ULA behind rwifi's NAT66).
pub const MH_WIFI_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
/// rwifi's LAN address, the MH's Wi-Fi gateway.
pub const RWIFI_LAN_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
/// rwifi's LAN IPv6 address.
pub const RWIFI_LAN_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
/// rwifi's public address: what the internet sees for traffic the MH sends over Wi-Fi.
pub const RWIFI_WAN_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// rwifi's public IPv6 address.
pub const RWIFI_WAN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);

/// The MH's cellular address (behind rcell's NAT, a CGNAT-style range).
pub const MH_CELL_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
/// The MH's cellular IPv6 address.
pub const MH_CELL_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 2);
/// rcell's LAN address, the MH's cellular gateway.
pub const RCELL_LAN_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
/// rcell's LAN IPv6 address.
pub const RCELL_LAN_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 1);
/// rcell's public address: what the internet sees for traffic the MH sends over cellular.
pub const RCELL_WAN_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// rcell's public IPv6 address.
pub const RCELL_WAN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);

/// The anchor node's address.
pub const AN_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// The anchor node's IPv6 address.
pub const AN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 2);

/// The correspondent host's address.
pub const CH_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The correspondent host's IPv6 address.
pub const CH_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 4, 0, 0, 0, 0, 2);

/// The second mobile host's address ([`crate::Lab::add_second_mh`]), on the internet without NAT.
pub const MH2_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);

/// The second anchor node's address ([`crate::Lab::add_second_an`]).
pub const AN2_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 2);

/// The MH's uplink interface names.
pub const MH_WIFI_IF: &str = "wifi";
/// See [`MH_WIFI_IF`].
pub const MH_CELL_IF: &str = "cell";

/// Port of the CH's HTTP server (files and `/whoami`).
pub const HTTP_PORT: u16 = 8080;
/// Port of the CH's iperf3 servers.
pub const IPERF3_PORT: u16 = 5201;
/// Port of the CH's UDP echo server.
pub const UDP_ECHO_PORT: u16 = 7777;

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    /// The CH's address in this family.
    pub fn ch(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(CH_V4),
            Family::V6 => IpAddr::V6(CH_V6),
        }
    }

    /// The AN's address in this family.
    pub fn an(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(AN_V4),
            Family::V6 => IpAddr::V6(AN_V6),
        }
    }

    /// The public (post-NAT) address of the MH's uplink `ifname` (`wifi` or `cell`).
    pub fn nat_of(self, ifname: &str) -> Option<IpAddr> {
        match (self, ifname) {
            (Family::V4, MH_WIFI_IF) => Some(IpAddr::V4(RWIFI_WAN_V4)),
            (Family::V6, MH_WIFI_IF) => Some(IpAddr::V6(RWIFI_WAN_V6)),
            (Family::V4, MH_CELL_IF) => Some(IpAddr::V4(RCELL_WAN_V4)),
            (Family::V6, MH_CELL_IF) => Some(IpAddr::V6(RCELL_WAN_V6)),
            _ => None,
        }
    }

    /// `ip -4` / `ip -6`, `curl -4` / `curl -6`.
    pub fn flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }
}

/// Formats `addr:port` as a URL authority (`[v6]:port` for IPv6).
pub fn authority(addr: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(addr, port).to_string()
}
