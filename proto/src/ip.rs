//! Small pure helpers over inner IP packets: the lenient 5-tuple parse the anchor uses, and TCP
//! MSS clamping.
//!
//! Header parsing itself is the PAFT's ([`upmt_paft::parse_ip`], [`upmt_paft::parse_packet`]):
//! one parser for the workspace, in the crate whose key it produces. This crate depends on
//! `upmt-paft` rather than the other way round because the table is a leaf with no crypto and no
//! IO, which the mobile host's per-packet path wants small, while the anchor needs a parser for
//! its spoofing check and flow key.
//!
//! Both helpers work on a borrowed packet as read from or written to a TUN, never allocate, and
//! never panic on truncated or garbage input: anything they cannot make sense of is `None` /
//! `false`.

pub use upmt_paft::FlowKey as PacketKey;
use upmt_paft::{parse_ip, parse_key_lenient};

/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = upmt_paft::proto::ICMP;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = upmt_paft::proto::TCP;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = upmt_paft::proto::UDP;
/// IP protocol number of ICMPv6.
pub const PROTO_ICMPV6: u8 = upmt_paft::proto::ICMPV6;

/// The 5-tuple of an inner IPv4 or IPv6 packet in its own direction; `None` if it is not one.
/// Ports are 0 when the packet is a later fragment or too short to hold them (see
/// [`upmt_paft::parse_key_lenient`]).
pub fn parse(packet: &[u8]) -> Option<PacketKey> {
    parse_key_lenient(packet).ok()
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
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
    let Ok(l) = parse_ip(packet) else {
        return false;
    };
    if l.proto != PROTO_TCP || !l.first_fragment {
        return false;
    }
    let t = l.l4_start;
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
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
        let l = parse_ip(p).unwrap();
        let seg = &p[l.l4_start..l.end];
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
        assert_eq!((i.proto, i.sport, i.dport), (PROTO_TCP, 0xc001, 443));
    }

    #[test]
    fn parse_reads_ipv6_tcp_addresses_and_ports() {
        let p = syn(true, &[2, 4, 0x05, 0xb4]);
        let i = parse(&p).unwrap();
        assert_eq!(i.src, "fd00::2".parse::<IpAddr>().unwrap());
        assert_eq!((i.proto, i.sport, i.dport), (PROTO_TCP, 0xc001, 443));
    }

    #[test]
    fn parse_uses_the_icmp_echo_identifier_as_port() {
        let mut p = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, PROTO_ICMP, 0, 0, 10, 9, 0, 2, 1, 1, 1, 1,
        ];
        p.extend_from_slice(&[8, 0, 0, 0, 0x12, 0x34, 0, 1]);
        let i = parse(&p).unwrap();
        assert_eq!((i.sport, i.dport), (0x1234, 0x1234));
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
