//! Flow keys and the allocation-free parse of an IP packet into one: the workspace's only
//! IPv4/IPv6/TCP/UDP/ICMP header parser (the protocol crate uses it too).
//!
//! A [`FlowKey`] is the 5-tuple of a packet as it was sent by the flow's initiator. The
//! table stores flows under the initiator's key; packets of the other direction are looked
//! up with [`FlowKey::reversed`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IANA protocol numbers the parser gives meaning to.
pub mod proto {
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// DCCP: ports at the same offsets as UDP.
    pub const DCCP: u8 = 33;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP: ports at the same offsets as UDP.
    pub const SCTP: u8 = 132;
    /// UDP-Lite: ports at the same offsets as UDP.
    pub const UDPLITE: u8 = 136;
}

/// TCP header flag bits, as found in byte 13 of the TCP header.
pub mod tcp_flags {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronise sequence numbers (connection opening).
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// The acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
}

/// The 5-tuple that identifies a flow, in the direction of its initiator.
///
/// For ICMP and ICMPv6 echo request/reply both ports hold the echo identifier, so a reply's
/// key reversed equals its request's key. Other ICMP messages, and protocols without ports,
/// have both ports 0 (one pseudo-flow per host pair and protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// IP protocol number (see [`proto`]).
    pub proto: u8,
    /// Source address of the initiator's packets.
    pub src: IpAddr,
    /// Destination address of the initiator's packets.
    pub dst: IpAddr,
    /// Source port (or ICMP echo id).
    pub sport: u16,
    /// Destination port (or ICMP echo id).
    pub dport: u16,
}

/// What [`FlowKey::from_packet`] learned from a packet besides its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketMeta {
    /// The packet's key, in the packet's own direction.
    pub key: FlowKey,
    /// TCP flags (byte 13 of the TCP header); 0 for other protocols.
    pub tcp_flags: u8,
}

/// Why a packet has no flow key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The buffer holds no IP header at all.
    #[error("empty packet")]
    Empty,
    /// The version nibble is neither 4 nor 6.
    #[error("ip version {0} is not 4 or 6")]
    BadVersion(u8),
    /// A header claims more bytes than the buffer has, or a length field is invalid.
    #[error("truncated or malformed {0} header")]
    Truncated(&'static str),
    /// A fragment other than the first: it carries no transport header, so no ports.
    #[error("non-first fragment has no transport header")]
    NonFirstFragment,
    /// More IPv6 extension headers than the parser is willing to walk.
    #[error("too many ipv6 extension headers")]
    TooManyExtensionHeaders,
}

/// IPv6 extension headers are walked up to this many; real traffic has one or two, and the
/// bound keeps a crafted chain from costing more than a few dozen byte reads.
const MAX_EXT_HEADERS: usize = 8;

impl FlowKey {
    /// The key of the other direction: addresses and ports swapped.
    #[inline]
    #[must_use]
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }

    /// The key of an IPv4 or IPv6 packet, in the packet's direction. Never allocates.
    pub fn from_packet(packet: &[u8]) -> Result<FlowKey, ParseError> {
        parse_packet(packet).map(|m| m.key)
    }
}

/// The IP layer of a packet: addresses, transport protocol and where the transport header is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpHeader {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Transport protocol number (after the IPv6 extension headers).
    pub proto: u8,
    /// Offset of the transport header.
    pub l4_start: usize,
    /// End of the IP packet (a TUN read may carry trailing padding behind it).
    pub end: usize,
    /// False for a fragment other than the first: it carries no transport header.
    pub first_fragment: bool,
}

/// Parses the IP layer of an IPv4 or IPv6 packet (lengths checked, IPv6 extension headers
/// walked). Never allocates or panics. A later fragment is not an error here.
#[inline]
pub fn parse_ip(packet: &[u8]) -> Result<IpHeader, ParseError> {
    let first = *packet.first().ok_or(ParseError::Empty)?;
    match first >> 4 {
        4 => parse_v4(packet),
        6 => parse_v6(packet),
        v => Err(ParseError::BadVersion(v)),
    }
}

/// Parses an IPv4 or IPv6 packet into its key and TCP flags. Never allocates or panics.
#[inline]
pub fn parse_packet(packet: &[u8]) -> Result<PacketMeta, ParseError> {
    let h = parse_ip(packet)?;
    if !h.first_fragment {
        return Err(ParseError::NonFirstFragment);
    }
    transport(
        h.proto,
        h.src,
        h.dst,
        packet.get(h.l4_start..h.end).unwrap_or(&[]),
    )
}

/// The key of any IP packet, with ports 0 where the packet does not carry them (a later
/// fragment, a transport header cut short). For a caller that must not refuse a packet the
/// strict [`parse_packet`] would: the anchor looks up the peer and checks the source of every
/// packet, fragments included, and the kernel behind it judges the rest.
pub fn parse_key_lenient(packet: &[u8]) -> Result<FlowKey, ParseError> {
    let h = parse_ip(packet)?;
    let ported = h
        .first_fragment
        .then(|| transport(h.proto, h.src, h.dst, packet.get(h.l4_start..h.end)?).ok())
        .flatten();
    Ok(ported.map_or(
        FlowKey {
            proto: h.proto,
            src: h.src,
            dst: h.dst,
            sport: 0,
            dport: 0,
        },
        |m| m.key,
    ))
}

#[inline]
fn parse_v4(p: &[u8]) -> Result<IpHeader, ParseError> {
    if p.len() < 20 {
        return Err(ParseError::Truncated("ipv4"));
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    // A TUN read may carry trailing padding, so the buffer may be longer than total length,
    // never shorter.
    if ihl < 20 || total < ihl || p.len() < total {
        return Err(ParseError::Truncated("ipv4"));
    }
    let frag_offset = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
    Ok(IpHeader {
        src: IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15])),
        dst: IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19])),
        proto: p[9],
        l4_start: ihl,
        end: total,
        first_fragment: frag_offset == 0,
    })
}

fn parse_v6(p: &[u8]) -> Result<IpHeader, ParseError> {
    if p.len() < 40 {
        return Err(ParseError::Truncated("ipv6"));
    }
    let payload_len = usize::from(u16::from_be_bytes([p[4], p[5]]));
    // Payload length 0 means a jumbogram; those never cross a TUN with a sane MTU.
    let end = 40 + payload_len;
    if payload_len == 0 || p.len() < end {
        return Err(ParseError::Truncated("ipv6"));
    }
    let src = IpAddr::V6(Ipv6Addr::from(octets16(&p[8..24])));
    let dst = IpAddr::V6(Ipv6Addr::from(octets16(&p[24..40])));
    let header = |proto, l4_start, first_fragment| IpHeader {
        src,
        dst,
        proto,
        l4_start,
        end,
        first_fragment,
    };
    let mut next = p[6];
    let mut off = 40;
    for _ in 0..MAX_EXT_HEADERS {
        let len = match next {
            // hop-by-hop, routing, destination options, mobility, HIP, shim6:
            // the generic format, length in 8-octet units not counting the first 8.
            0 | 43 | 60 | 135 | 139 | 140 => {
                let hdr = p
                    .get(off..off + 2)
                    .ok_or(ParseError::Truncated("ipv6 extension"))?;
                (usize::from(hdr[1]) + 1) * 8
            }
            // fragment: fixed 8 bytes; only the first fragment carries ports, and what
            // follows a later one's header is data, not headers.
            44 => {
                let hdr = p
                    .get(off..off + 8)
                    .ok_or(ParseError::Truncated("ipv6 fragment"))?;
                if u16::from_be_bytes([hdr[2], hdr[3]]) >> 3 != 0 {
                    return Ok(header(hdr[0], off + 8, false));
                }
                8
            }
            // authentication header: length in 4-octet units minus 2.
            51 => {
                let hdr = p
                    .get(off..off + 2)
                    .ok_or(ParseError::Truncated("ipv6 ah"))?;
                (usize::from(hdr[1]) + 2) * 4
            }
            _ => return Ok(header(next, off, true)),
        };
        next = p[off];
        off += len;
        if off > end {
            return Err(ParseError::Truncated("ipv6 extension"));
        }
    }
    Err(ParseError::TooManyExtensionHeaders)
}

fn octets16(b: &[u8]) -> [u8; 16] {
    let mut o = [0u8; 16];
    o.copy_from_slice(b);
    o
}

fn transport(proto: u8, src: IpAddr, dst: IpAddr, l4: &[u8]) -> Result<PacketMeta, ParseError> {
    let (sport, dport, tcp_flags) = match proto {
        proto::TCP => {
            if l4.len() < 20 {
                return Err(ParseError::Truncated("tcp"));
            }
            (be16(l4, 0), be16(l4, 2), l4[13])
        }
        proto::UDP | proto::UDPLITE | proto::SCTP | proto::DCCP => {
            if l4.len() < 8 {
                return Err(ParseError::Truncated("udp"));
            }
            (be16(l4, 0), be16(l4, 2), 0)
        }
        proto::ICMP | proto::ICMPV6 => {
            if l4.len() < 8 {
                return Err(ParseError::Truncated("icmp"));
            }
            let is_echo = match proto {
                proto::ICMP => l4[0] == 8 || l4[0] == 0,
                _ => l4[0] == 128 || l4[0] == 129,
            };
            if is_echo {
                let id = be16(l4, 4);
                (id, id, 0)
            } else {
                (0, 0, 0)
            }
        }
        _ => (0, 0, 0),
    };
    Ok(PacketMeta {
        key: FlowKey {
            proto,
            src,
            dst,
            sport,
            dport,
        },
        tcp_flags,
    })
}

/// Callers check the length first; this reads two bytes big-endian.
#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn ipv4_packet(proto: u8, src: [u8; 4], dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
        let total = 20 + l4.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..].copy_from_slice(l4);
        p
    }

    pub(crate) fn ipv6_packet(next: u8, src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40 + payload.len()];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        p[6] = next;
        p[7] = 64;
        p[8..24].copy_from_slice(&src.octets());
        p[24..40].copy_from_slice(&dst.octets());
        p[40..].copy_from_slice(payload);
        p
    }

    fn tcp_header(sport: u16, dport: u16, flags: u8) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[0..2].copy_from_slice(&sport.to_be_bytes());
        h[2..4].copy_from_slice(&dport.to_be_bytes());
        h[12] = 5 << 4;
        h[13] = flags;
        h
    }

    #[test]
    fn ipv4_tcp_packet_yields_ports_and_flags() {
        let p = ipv4_packet(
            proto::TCP,
            [10, 0, 0, 2],
            [93, 184, 216, 34],
            &tcp_header(40000, 443, tcp_flags::SYN),
        );
        let m = parse_packet(&p).expect("valid packet");
        assert_eq!(m.key.proto, proto::TCP);
        assert_eq!(m.key.src, IpAddr::from([10, 0, 0, 2]));
        assert_eq!(m.key.dst, IpAddr::from([93, 184, 216, 34]));
        assert_eq!((m.key.sport, m.key.dport), (40000, 443));
        assert_eq!(m.tcp_flags, tcp_flags::SYN);
    }

    #[test]
    fn ipv4_trailing_padding_is_ignored_but_short_buffers_are_refused() {
        let mut p = ipv4_packet(
            proto::UDP,
            [1, 1, 1, 1],
            [2, 2, 2, 2],
            &[0, 53, 0, 54, 0, 8, 0, 0],
        );
        p.extend_from_slice(&[0xee; 6]);
        let k = FlowKey::from_packet(&p).expect("padded packet parses");
        assert_eq!((k.sport, k.dport), (53, 54));
        let short = &p[..25];
        assert_eq!(
            FlowKey::from_packet(short),
            Err(ParseError::Truncated("ipv4"))
        );
    }

    #[test]
    fn icmp_echo_reply_reversed_matches_its_request() {
        let req = ipv4_packet(
            proto::ICMP,
            [10, 0, 0, 2],
            [8, 8, 8, 8],
            &[8, 0, 0, 0, 0x12, 0x34, 0, 1],
        );
        let rep = ipv4_packet(
            proto::ICMP,
            [8, 8, 8, 8],
            [10, 0, 0, 2],
            &[0, 0, 0, 0, 0x12, 0x34, 0, 1],
        );
        let kq = FlowKey::from_packet(&req).expect("request");
        let kr = FlowKey::from_packet(&rep).expect("reply");
        assert_eq!(kq.sport, 0x1234);
        assert_eq!(kr.reversed(), kq);
    }

    #[test]
    fn icmp_errors_have_zero_ports() {
        let unreach = ipv4_packet(
            proto::ICMP,
            [8, 8, 8, 8],
            [10, 0, 0, 2],
            &[3, 1, 0, 0, 0, 0, 0, 0],
        );
        let k = FlowKey::from_packet(&unreach).expect("icmp error");
        assert_eq!((k.sport, k.dport), (0, 0));
    }

    #[test]
    fn ipv4_non_first_fragment_is_reported() {
        let mut p = ipv4_packet(proto::UDP, [1, 1, 1, 1], [2, 2, 2, 2], &[0; 8]);
        p[6..8].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(FlowKey::from_packet(&p), Err(ParseError::NonFirstFragment));
    }

    #[test]
    fn ipv6_udp_behind_hop_by_hop_and_destination_options_parses() {
        let src: Ipv6Addr = "2001:db8::1".parse().expect("addr");
        let dst: Ipv6Addr = "2001:db8::2".parse().expect("addr");
        let mut payload = Vec::new();
        // hop-by-hop (8 bytes) -> destination options (16 bytes) -> UDP
        payload.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]);
        payload.extend_from_slice(&[proto::UDP, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        payload.extend_from_slice(&[0x13, 0x88, 0x00, 0x35, 0, 8, 0, 0]);
        let p = ipv6_packet(0, src, dst, &payload);
        let k = FlowKey::from_packet(&p).expect("valid packet");
        assert_eq!(k.proto, proto::UDP);
        assert_eq!((k.sport, k.dport), (5000, 53));
        assert_eq!(k.src, IpAddr::V6(src));
    }

    #[test]
    fn ipv6_first_fragment_parses_and_later_fragments_are_reported() {
        let a: Ipv6Addr = "fd00::1".parse().expect("addr");
        let mut first = vec![proto::TCP, 0, 0, 1, 0, 0, 0, 7];
        first.extend_from_slice(&tcp_header(1, 2, tcp_flags::ACK));
        let k = FlowKey::from_packet(&ipv6_packet(44, a, a, &first)).expect("first fragment");
        assert_eq!((k.proto, k.sport, k.dport), (proto::TCP, 1, 2));
        let later = [proto::TCP, 0, 0x05, 0x00, 0, 0, 0, 7, 1, 2, 3, 4];
        assert_eq!(
            FlowKey::from_packet(&ipv6_packet(44, a, a, &later)),
            Err(ParseError::NonFirstFragment)
        );
    }

    #[test]
    fn ipv6_echo_uses_the_identifier_as_ports() {
        let a: Ipv6Addr = "fd00::1".parse().expect("addr");
        let k = FlowKey::from_packet(&ipv6_packet(
            proto::ICMPV6,
            a,
            a,
            &[128, 0, 0, 0, 0, 9, 0, 1],
        ))
        .expect("echo");
        assert_eq!((k.sport, k.dport), (9, 9));
    }

    #[test]
    fn an_endless_extension_header_chain_is_refused() {
        let a: Ipv6Addr = "fd00::1".parse().expect("addr");
        let payload = [0u8, 0, 0, 0, 0, 0, 0, 0].repeat(MAX_EXT_HEADERS + 2);
        let p = ipv6_packet(0, a, a, &payload);
        assert_eq!(
            FlowKey::from_packet(&p),
            Err(ParseError::TooManyExtensionHeaders)
        );
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert_eq!(FlowKey::from_packet(&[]), Err(ParseError::Empty));
        assert_eq!(
            FlowKey::from_packet(&[0x50; 40]),
            Err(ParseError::BadVersion(5))
        );
        assert_eq!(
            FlowKey::from_packet(&[0x45; 10]),
            Err(ParseError::Truncated("ipv4"))
        );
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120)) {
            let _ = parse_packet(&bytes);
        }

        #[test]
        fn reversing_twice_gives_the_same_key(p in 0u8.., a in proptest::prelude::any::<[u8; 4]>(), b in proptest::prelude::any::<[u8; 16]>(), s in 0u16.., d in 0u16..) {
            let k = FlowKey { proto: p, src: IpAddr::from(a), dst: IpAddr::from(b), sport: s, dport: d };
            proptest::prop_assert_eq!(k.reversed().reversed(), k);
        }
    }
}
