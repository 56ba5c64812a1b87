//! Small pure helpers over inner IP packets: header parsing and TCP MSS clamping.
//!
//! Both work on a borrowed packet as read from or written to a TUN, never allocate, and never
//! panic on truncated or garbage input: anything they cannot make sense of is `None` / `false`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IP protocol number of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;

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

/// Where the transport header starts, and whether this packet carries it (not a later fragment).
pub(crate) struct Layout {
    pub(crate) src: IpAddr,
    pub(crate) dst: IpAddr,
    pub(crate) protocol: u8,
    pub(crate) transport: usize,
    pub(crate) first_fragment: bool,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

pub(crate) fn layout(p: &[u8]) -> Option<Layout> {
    match p.first()? >> 4 {
        4 => {
            if p.len() < 20 {
                return None;
            }
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if ihl < 20 || p.len() < ihl {
                return None;
            }
            let frag_offset = be16(p, 6)? & 0x1fff;
            Some(Layout {
                src: IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15])),
                dst: IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19])),
                protocol: p[9],
                transport: ihl,
                first_fragment: frag_offset == 0,
            })
        }
        6 => {
            if p.len() < 40 {
                return None;
            }
            let mut src = [0u8; 16];
            src.copy_from_slice(&p[8..24]);
            let mut dst = [0u8; 16];
            dst.copy_from_slice(&p[24..40]);
            let mut next = p[6];
            let mut at = 40usize;
            let mut first_fragment = true;
            // A bounded walk: a packet cannot hold more than a handful of extension headers that
            // matter, and a loop bound keeps garbage from costing more than that.
            for _ in 0..8 {
                match next {
                    0 | 43 | 60 => {
                        next = *p.get(at)?;
                        at += (usize::from(*p.get(at + 1)?) + 1) * 8;
                    }
                    44 => {
                        next = *p.get(at)?;
                        first_fragment = be16(p, at + 2)? & 0xfff8 == 0;
                        at += 8;
                    }
                    _ => break,
                }
            }
            Some(Layout {
                src: IpAddr::V6(Ipv6Addr::from(src)),
                dst: IpAddr::V6(Ipv6Addr::from(dst)),
                protocol: next,
                transport: at,
                first_fragment,
            })
        }
        _ => None,
    }
}

/// Parses an inner IPv4 or IPv6 packet; `None` if it is not one. Ports are 0 when the packet is
/// a later fragment or too short to hold them.
pub fn parse(packet: &[u8]) -> Option<PacketInfo> {
    let l = layout(packet)?;
    let t = l.transport;
    let (src_port, dst_port) = if !l.first_fragment {
        (0, 0)
    } else {
        match l.protocol {
            PROTO_TCP | PROTO_UDP => (
                be16(packet, t).unwrap_or(0),
                be16(packet, t + 2).unwrap_or(0),
            ),
            // Echo request/reply: the identifier plays the role of a port for both directions.
            PROTO_ICMP | PROTO_ICMPV6 => match packet.get(t) {
                Some(0 | 8 | 128 | 129) => {
                    let id = be16(packet, t + 4).unwrap_or(0);
                    (id, id)
                }
                _ => (0, 0),
            },
            _ => (0, 0),
        }
    };
    Some(PacketInfo {
        src: l.src,
        dst: l.dst,
        protocol: l.protocol,
        src_port,
        dst_port,
    })
}

/// The source address of an IP packet, cheaper than a full [`parse`].
pub fn source(packet: &[u8]) -> Option<IpAddr> {
    layout(packet).map(|l| l.src)
}

/// The destination address of an IP packet.
pub fn destination(packet: &[u8]) -> Option<IpAddr> {
    layout(packet).map(|l| l.dst)
}

/// One's-complement update of a checksum for a 16-bit word changing from `old` to `new`
/// (RFC 1624, eqn. 3).
fn checksum_update(sum: u16, old: u16, new: u16) -> u16 {
    let mut acc = u32::from(!sum) + u32::from(!old) + u32::from(new);
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Lowers the MSS option of a TCP SYN to `max_mss` and fixes the TCP checksum (IPv4 and IPv6).
/// Returns true if the packet changed. Any other packet is left alone.
pub fn clamp_tcp_mss(packet: &mut [u8], max_mss: u16) -> bool {
    let Some(l) = layout(packet) else {
        return false;
    };
    if l.protocol != PROTO_TCP || !l.first_fragment {
        return false;
    }
    let t = l.transport;
    let Some(tcp) = packet.get(t..t + 20) else {
        return false;
    };
    const SYN: u8 = 0x02;
    if tcp[13] & SYN == 0 {
        return false;
    }
    let data_offset = usize::from(tcp[12] >> 4) * 4;
    if data_offset < 20 || packet.len() < t + data_offset {
        return false;
    }
    let mut o = t + 20;
    let end = t + data_offset;
    while o < end {
        match packet[o] {
            0 => return false,
            1 => o += 1,
            kind => {
                let Some(&len) = packet.get(o + 1) else {
                    return false;
                };
                let len = usize::from(len);
                if len < 2 || o + len > end {
                    return false;
                }
                if kind == 2 && len == 4 {
                    let at = o + 2;
                    let old = u16::from_be_bytes([packet[at], packet[at + 1]]);
                    if old <= max_mss {
                        return false;
                    }
                    packet[at..at + 2].copy_from_slice(&max_mss.to_be_bytes());
                    let Some(sum) = be16(packet, t + 16) else {
                        return false;
                    };
                    // A word at an odd offset from the segment start sums with its bytes swapped.
                    let (o16, n16) = if (at - t) % 2 == 0 {
                        (old, max_mss)
                    } else {
                        (old.swap_bytes(), max_mss.swap_bytes())
                    };
                    let new_sum = checksum_update(sum, o16, n16);
                    packet[t + 16..t + 18].copy_from_slice(&new_sum.to_be_bytes());
                    return true;
                }
                o += len;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sum16(data: &[u8], mut acc: u32) -> u32 {
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from(c[0]) << 8
            };
            acc += u32::from(w);
        }
        acc
    }

    fn fold(mut acc: u32) -> u16 {
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    /// Full TCP checksum with the pseudo header, to check the incremental update against.
    fn tcp_checksum(p: &[u8]) -> u16 {
        let l = layout(p).unwrap();
        let seg = &p[l.transport..];
        let mut acc = 0u32;
        match (l.src, l.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                acc = sum16(&s.octets(), acc);
                acc = sum16(&d.octets(), acc);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                acc = sum16(&s.octets(), acc);
                acc = sum16(&d.octets(), acc);
            }
            _ => unreachable!(),
        }
        acc += u32::from(PROTO_TCP) + seg.len() as u32;
        let mut zeroed = seg.to_vec();
        zeroed[16] = 0;
        zeroed[17] = 0;
        fold(sum16(&zeroed, acc))
    }

    /// A TCP SYN with the given options after the 20-byte header, checksum filled in.
    fn syn(v6: bool, options: &[u8]) -> Vec<u8> {
        let tcp_len = 20 + options.len();
        let mut p = if v6 {
            let mut h = vec![0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
            h[6] = PROTO_TCP;
            h[7] = 64;
            h[8..24].copy_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
            h[24..40].copy_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
            h
        } else {
            let mut h = vec![0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
            h[8] = 64;
            h[9] = PROTO_TCP;
            h[12..16].copy_from_slice(&[10, 9, 0, 2]);
            h[16..20].copy_from_slice(&[93, 184, 216, 34]);
            h
        };
        let t = p.len();
        p.extend_from_slice(&[0xc0, 0x01, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0]);
        p.push(((tcp_len / 4) as u8) << 4);
        p.push(0x02); // SYN
        p.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        p.extend_from_slice(options);
        let c = tcp_checksum(&p);
        p[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn parse_reads_ipv4_tcp_addresses_and_ports() {
        let p = syn(false, &[2, 4, 0x05, 0xb4]);
        let i = parse(&p).unwrap();
        assert_eq!(i.src, IpAddr::V4(Ipv4Addr::new(10, 9, 0, 2)));
        assert_eq!(i.dst, IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34)));
        assert_eq!(
            (i.protocol, i.src_port, i.dst_port),
            (PROTO_TCP, 0xc001, 443)
        );
    }

    #[test]
    fn parse_reads_ipv6_tcp_addresses_and_ports() {
        let p = syn(true, &[2, 4, 0x05, 0xb4]);
        let i = parse(&p).unwrap();
        assert_eq!(i.src, "fd00::2".parse::<IpAddr>().unwrap());
        assert_eq!(
            (i.protocol, i.src_port, i.dst_port),
            (PROTO_TCP, 0xc001, 443)
        );
    }

    #[test]
    fn parse_uses_the_icmp_echo_identifier_as_port() {
        let mut p = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, PROTO_ICMP, 0, 0, 10, 9, 0, 2, 1, 1, 1, 1,
        ];
        p.extend_from_slice(&[8, 0, 0, 0, 0x12, 0x34, 0, 1]);
        let i = parse(&p).unwrap();
        assert_eq!((i.src_port, i.dst_port), (0x1234, 0x1234));
    }

    #[test]
    fn parse_refuses_non_ip() {
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[0x50; 40]), None);
        assert_eq!(parse(&[0x45; 10]), None);
    }

    #[test]
    fn mss_is_lowered_and_checksum_stays_valid_v4_and_v6() {
        for v6 in [false, true] {
            let mut p = syn(v6, &[2, 4, 0x05, 0xb4]);
            assert!(clamp_tcp_mss(&mut p, 1380));
            let t = if v6 { 40 } else { 20 };
            assert_eq!(u16::from_be_bytes([p[t + 22], p[t + 23]]), 1380);
            assert_eq!(u16::from_be_bytes([p[t + 16], p[t + 17]]), tcp_checksum(&p));
        }
    }

    #[test]
    fn mss_at_an_odd_offset_keeps_the_checksum_valid() {
        // NOP first puts the MSS value at an odd offset; the padding keeps the header 4-aligned.
        let mut p = syn(false, &[1, 2, 4, 0x05, 0xb4, 1, 1, 0]);
        assert!(clamp_tcp_mss(&mut p, 1200));
        assert_eq!(u16::from_be_bytes([p[20 + 23], p[20 + 24]]), 1200);
        assert_eq!(u16::from_be_bytes([p[36], p[37]]), tcp_checksum(&p));
    }

    #[test]
    fn a_smaller_mss_or_a_non_syn_is_left_alone() {
        let mut p = syn(false, &[2, 4, 0x04, 0x00]);
        let before = p.clone();
        assert!(!clamp_tcp_mss(&mut p, 1380));
        assert_eq!(p, before);
        let mut ack = syn(false, &[2, 4, 0x05, 0xb4]);
        ack[33] = 0x10;
        assert!(!clamp_tcp_mss(&mut ack, 1380));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..120), mss: u16) {
            let _ = parse(&bytes);
            let _ = clamp_tcp_mss(&mut bytes, mss);
        }

        #[test]
        fn garbage_behind_a_plausible_header_never_panics(first in prop_oneof![Just(0x45u8), Just(0x4fu8), Just(0x60u8)],
                                                          mut rest in proptest::collection::vec(any::<u8>(), 0..120),
                                                          mss: u16) {
            rest.insert(0, first);
            let _ = parse(&rest);
            let _ = clamp_tcp_mss(&mut rest, mss);
        }
    }
}
