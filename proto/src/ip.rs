//! Small pure helpers over inner IP packets: header parsing and TCP MSS clamping.

use std::net::IpAddr;

/// What the cores and daemons need to know about an inner packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PacketInfo {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Transport protocol number (after IPv6 extension headers, when they could be skipped).
    pub protocol: u8,
    /// Source port (TCP/UDP), ICMP echo identifier, or 0.
    pub src_port: u16,
    /// Destination port (TCP/UDP), ICMP echo identifier, or 0.
    pub dst_port: u16,
}

/// Parses an inner IPv4 or IPv6 packet; `None` if it is not one.
pub fn parse(packet: &[u8]) -> Option<PacketInfo> {
    let _ = packet;
    None
}

/// Lowers the MSS option of a TCP SYN to `max_mss`; returns true if the packet changed.
pub fn clamp_tcp_mss(packet: &mut [u8], max_mss: u16) -> bool {
    let _ = (packet, max_mss);
    false
}
