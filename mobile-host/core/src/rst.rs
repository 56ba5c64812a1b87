//! TCP resets for blocked flows: given a TCP segment an app sent into the TUN, the RST (with
//! ACK) that its peer would send, written back into the TUN so the app fails at once instead
//! of retrying into a black hole. IPv4 and IPv6; no allocation. Never builds anything else.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use upmt_paft::{parse_packet, proto, tcp_flags};

const TCP_HDR: usize = 20;

/// Writes into `out` the RST answering `packet` (a TCP segment read from the TUN) and
/// returns its length; `None` when `packet` is not TCP, is itself a RST, or `out` is too small.
pub fn tcp_reset(packet: &[u8], out: &mut [u8]) -> Option<usize> {
    let meta = parse_packet(packet).ok()?;
    let key = meta.key;
    if key.proto != proto::TCP || meta.tcp_flags & tcp_flags::RST != 0 {
        return None;
    }
    let (ip_hdr, l4) = match key.src {
        IpAddr::V4(_) => (20, usize::from(packet.first()? & 0x0f) * 4),
        IpAddr::V6(_) => (40, 40),
    };
    // The parser accepted the packet, so it holds its TCP header; extension headers in v6
    // are not followed here (a SYN from an app has none), so check the next header.
    if matches!(key.src, IpAddr::V6(_)) && packet.get(6) != Some(&proto::TCP) {
        return None;
    }
    let tcp = packet.get(l4..)?;
    let data_off = usize::from(tcp.get(12)? >> 4) * 4;
    let payload = match key.src {
        IpAddr::V4(_) => {
            usize::from(u16::from_be_bytes([packet[2], packet[3]])).saturating_sub(l4 + data_off)
        }
        IpAddr::V6(_) => {
            usize::from(u16::from_be_bytes([packet[4], packet[5]])).saturating_sub(data_off)
        }
    };
    let seq = u32::from_be_bytes(tcp.get(4..8)?.try_into().ok()?);
    let ack = u32::from_be_bytes(tcp.get(8..12)?.try_into().ok()?);
    let flags = meta.tcp_flags;
    let syn_fin = u32::from(flags & tcp_flags::SYN != 0) + u32::from(flags & tcp_flags::FIN != 0);
    // RFC 9293 3.10.7.1: if the segment has ACK, the reset takes its sequence from it;
    // otherwise seq 0 and ACK of everything the segment occupied.
    let (r_seq, r_ack, r_flags) = if flags & tcp_flags::ACK != 0 {
        (ack, 0, tcp_flags::RST)
    } else {
        (
            0,
            seq.wrapping_add(payload as u32).wrapping_add(syn_fin),
            tcp_flags::RST | tcp_flags::ACK,
        )
    };
    let total = ip_hdr + TCP_HDR;
    let out = out.get_mut(..total)?;
    out.fill(0);
    match (key.src, key.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            out[0] = 0x45;
            out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            out[8] = 64;
            out[9] = proto::TCP;
            out[12..16].copy_from_slice(&dst.octets());
            out[16..20].copy_from_slice(&src.octets());
            let c = checksum(0, &out[..20]);
            out[10..12].copy_from_slice(&c.to_be_bytes());
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            out[0] = 0x60;
            out[4..6].copy_from_slice(&(TCP_HDR as u16).to_be_bytes());
            out[6] = proto::TCP;
            out[7] = 64;
            out[8..24].copy_from_slice(&dst.octets());
            out[24..40].copy_from_slice(&src.octets());
        }
        _ => return None,
    }
    let t = &mut out[ip_hdr..];
    t[0..2].copy_from_slice(&key.dport.to_be_bytes());
    t[2..4].copy_from_slice(&key.sport.to_be_bytes());
    t[4..8].copy_from_slice(&r_seq.to_be_bytes());
    t[8..12].copy_from_slice(&r_ack.to_be_bytes());
    t[12] = (TCP_HDR as u8 / 4) << 4;
    t[13] = r_flags;
    let pseudo = pseudo_sum(key.dst, key.src, TCP_HDR as u32);
    let c = checksum(pseudo, &out[ip_hdr..total]);
    out[ip_hdr + 16..ip_hdr + 18].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

fn pseudo_sum(src: IpAddr, dst: IpAddr, len: u32) -> u32 {
    let mut sum = u32::from(proto::TCP) + len;
    let mut add = |b: &[u8]| {
        for w in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
    };
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            add(&s.octets());
            add(&d.octets());
        }
        _ => {
            add(&v6(src).octets());
            add(&v6(dst).octets());
        }
    }
    sum
}

fn v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => Ipv4Addr::to_ipv6_mapped(&a),
    }
}

/// The Internet checksum of `data`, starting from a partial `sum`.
fn checksum(mut sum: u32, data: &[u8]) -> u16 {
    for w in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syn_v4() -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[8] = 64;
        p[9] = proto::TCP;
        p[12..16].copy_from_slice(&[10, 77, 0, 2]);
        p[16..20].copy_from_slice(&[192, 0, 2, 2]);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        p[24..28].copy_from_slice(&1000u32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = tcp_flags::SYN;
        p
    }

    #[test]
    fn a_syn_is_answered_by_a_rst_ack_of_its_sequence_plus_one_with_valid_checksums() {
        let syn = syn_v4();
        let mut out = [0u8; 128];
        let n = tcp_reset(&syn, &mut out).unwrap();
        let r = &out[..n];
        let meta = parse_packet(r).unwrap();
        assert_eq!(meta.key, parse_packet(&syn).unwrap().key.reversed());
        assert_eq!(meta.tcp_flags, tcp_flags::RST | tcp_flags::ACK);
        assert_eq!(u32::from_be_bytes(r[28..32].try_into().unwrap()), 1001);
        assert_eq!(checksum(0, &r[..20]), 0, "IPv4 header checksum");
        let pseudo = pseudo_sum(meta.key.src, meta.key.dst, 20);
        assert_eq!(checksum(pseudo, &r[20..]), 0, "TCP checksum");
    }

    #[test]
    fn a_segment_with_ack_is_reset_at_its_ack_number_over_ipv6() {
        let mut p = vec![0u8; 60 + 5];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&25u16.to_be_bytes());
        p[6] = proto::TCP;
        p[7] = 64;
        p[8..24].copy_from_slice(&"fd77::2".parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"2001:db8:4::2".parse::<Ipv6Addr>().unwrap().octets());
        p[40..42].copy_from_slice(&40000u16.to_be_bytes());
        p[42..44].copy_from_slice(&443u16.to_be_bytes());
        p[48..52].copy_from_slice(&777u32.to_be_bytes());
        p[52] = 5 << 4;
        p[53] = tcp_flags::ACK;
        let mut out = [0u8; 128];
        let n = tcp_reset(&p, &mut out).unwrap();
        assert_eq!(n, 60);
        let meta = parse_packet(&out[..n]).unwrap();
        assert_eq!(meta.tcp_flags, tcp_flags::RST);
        assert_eq!(u32::from_be_bytes(out[44..48].try_into().unwrap()), 777);
        let pseudo = pseudo_sum(meta.key.src, meta.key.dst, 20);
        assert_eq!(checksum(pseudo, &out[40..60]), 0);
    }

    #[test]
    fn resets_and_non_tcp_get_no_answer() {
        let mut rst = syn_v4();
        rst[33] = tcp_flags::RST;
        let mut out = [0u8; 128];
        assert_eq!(tcp_reset(&rst, &mut out), None);
        let mut udp = syn_v4();
        udp[9] = proto::UDP;
        assert_eq!(tcp_reset(&udp, &mut out), None);
        assert_eq!(tcp_reset(&syn_v4(), &mut [0u8; 10]), None);
        assert_eq!(tcp_reset(&[0x45, 0], &mut out), None);
    }
}
