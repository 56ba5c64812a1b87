//! TCP resets for blocked flows (and for flows lost when the host moved to another anchor): given a TCP segment an app sent into the TUN, the RST (with
//! ACK) that its peer would send, written back into the TUN so the app fails at once instead
//! of retrying into a black hole. IPv4 and IPv6; no allocation. Never builds anything else.
//!
//! `etherparse` reads the segment (following IPv6 extension headers) and writes the headers
//! and their checksums.

use std::net::{IpAddr, SocketAddr};

use etherparse::{
    IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, NetSlice, SlicedPacket, TcpHeader,
    TransportSlice,
};

/// The reset's IPv4 TTL and IPv6 hop limit.
const HOP_LIMIT: u8 = 64;

/// Writes into `out` the RST answering `packet` (a TCP segment read from the TUN) and
/// returns its length; `None` when `packet` is not TCP, is itself a RST, or `out` is too small.
pub fn tcp_reset(packet: &[u8], out: &mut [u8]) -> Option<usize> {
    let sliced = SlicedPacket::from_ip(packet).ok()?;
    let Some(TransportSlice::Tcp(segment)) = sliced.transport else {
        return None;
    };
    if segment.rst() {
        return None;
    }
    let mut reset = TcpHeader::new(segment.destination_port(), segment.source_port(), 0, 0);
    reset.rst = true;
    // RFC 9293 3.10.7.1: if the segment has ACK, the reset takes its sequence from it;
    // otherwise seq 0 and ACK of everything the segment occupied.
    if segment.ack() {
        reset.sequence_number = segment.acknowledgment_number();
    } else {
        let occupied =
            segment.payload().len() as u32 + u32::from(segment.syn()) + u32::from(segment.fin());
        reset.ack = true;
        reset.acknowledgment_number = segment.sequence_number().wrapping_add(occupied);
    }
    match sliced.net? {
        NetSlice::Ipv4(ip) => {
            let from = ip.header();
            emit_v4(out, from.destination(), from.source(), reset)
        }
        NetSlice::Ipv6(ip) => {
            let from = ip.header();
            emit_v6(out, from.destination(), from.source(), reset)
        }
        NetSlice::Arp(_) => None,
    }
}

/// Writes into `out` a bare ACK from `from` to `to` (an app's socket behind the TUN) with
/// sequence number `seq`, and returns its length; `None` when the families differ or `out` is
/// too small. A segment outside the receive window makes the app's TCP answer at once with a
/// duplicate ACK (RFC 9293 3.10.7.4) that [`tcp_reset`] can answer exactly: two of these with
/// `seq` half the sequence space apart reach any connection, whatever its window.
pub fn tcp_ack_probe(from: SocketAddr, to: SocketAddr, seq: u32, out: &mut [u8]) -> Option<usize> {
    let mut probe = TcpHeader::new(from.port(), to.port(), seq, u16::MAX);
    probe.ack = true;
    match (from.ip(), to.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => emit_v4(out, s.octets(), d.octets(), probe),
        (IpAddr::V6(s), IpAddr::V6(d)) => emit_v6(out, s.octets(), d.octets(), probe),
        _ => None,
    }
}

fn emit_v4(out: &mut [u8], src: [u8; 4], dst: [u8; 4], mut tcp: TcpHeader) -> Option<usize> {
    let mut header = Ipv4Header::new(
        TcpHeader::MIN_LEN as u16,
        HOP_LIMIT,
        IpNumber::TCP,
        src,
        dst,
    )
    .ok()?;
    header.header_checksum = header.calc_header_checksum();
    tcp.checksum = tcp.calc_checksum_ipv4(&header, &[]).ok()?;
    emit(out, &header.to_bytes(), &tcp)
}

fn emit_v6(out: &mut [u8], src: [u8; 16], dst: [u8; 16], mut tcp: TcpHeader) -> Option<usize> {
    let header = Ipv6Header {
        traffic_class: 0,
        flow_label: Ipv6FlowLabel::ZERO,
        payload_length: TcpHeader::MIN_LEN as u16,
        next_header: IpNumber::TCP,
        hop_limit: HOP_LIMIT,
        source: src,
        destination: dst,
    };
    tcp.checksum = tcp.calc_checksum_ipv6(&header, &[]).ok()?;
    emit(out, &header.to_bytes(), &tcp)
}

/// Copies the IP header and then the TCP header into `out`; `None` when it is too small.
fn emit(out: &mut [u8], ip: &[u8], tcp: &TcpHeader) -> Option<usize> {
    let tcp = tcp.to_bytes();
    let total = ip.len() + tcp.len();
    let (ip_out, tcp_out) = out.get_mut(..total)?.split_at_mut(ip.len());
    ip_out.copy_from_slice(ip);
    tcp_out.copy_from_slice(&tcp);
    Some(total)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use upmt_paft::{parse_packet, proto, tcp_flags};

    use super::*;

    /// The TCP pseudo-header's sum, written out independently of the code under test.
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

    /// The Internet checksum of `data`, starting from a partial `sum`: 0 over a valid header.
    fn checksum(mut sum: u32, data: &[u8]) -> u16 {
        for w in data.chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

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
    fn a_syn_behind_an_ipv6_hop_by_hop_header_is_answered_from_its_tcp_header() {
        let mut p = vec![0u8; 40 + 8 + 20];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&28u16.to_be_bytes());
        p[6] = 0; // hop-by-hop options
        p[7] = 64;
        p[8..24].copy_from_slice(&"fd77::2".parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"2001:db8:4::2".parse::<Ipv6Addr>().unwrap().octets());
        // Next header TCP, length 0 (8 bytes), a PadN option filling the rest.
        p[40..48].copy_from_slice(&[proto::TCP, 0, 1, 4, 0, 0, 0, 0]);
        p[48..50].copy_from_slice(&40000u16.to_be_bytes());
        p[50..52].copy_from_slice(&443u16.to_be_bytes());
        p[52..56].copy_from_slice(&5000u32.to_be_bytes());
        p[60] = 5 << 4;
        p[61] = tcp_flags::SYN;
        let mut out = [0u8; 128];
        let n = tcp_reset(&p, &mut out).unwrap();
        assert_eq!(n, 60);
        assert_eq!(out[6], proto::TCP, "the reset has no extension header");
        assert_eq!(u16::from_be_bytes([out[40], out[41]]), 443);
        assert_eq!(u16::from_be_bytes([out[42], out[43]]), 40000);
        assert_eq!(out[53], tcp_flags::RST | tcp_flags::ACK);
        assert_eq!(u32::from_be_bytes(out[48..52].try_into().unwrap()), 5001);
        let meta = parse_packet(&out[..n]).unwrap();
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

    #[test]
    fn an_ack_probe_goes_from_the_peer_to_the_app_with_the_given_sequence_and_valid_checksums() {
        let mut out = [0u8; 64];
        let peer: SocketAddr = "192.0.2.2:443".parse().unwrap();
        let app: SocketAddr = "10.77.0.2:40000".parse().unwrap();
        let n = tcp_ack_probe(peer, app, 0x8000_0001, &mut out).unwrap();
        assert_eq!(n, 40);
        let meta = parse_packet(&out[..n]).unwrap();
        assert_eq!((meta.key.src, meta.key.sport), (peer.ip(), 443));
        assert_eq!((meta.key.dst, meta.key.dport), (app.ip(), 40000));
        assert_eq!(meta.tcp_flags, tcp_flags::ACK);
        assert_eq!(
            u32::from_be_bytes(out[24..28].try_into().unwrap()),
            0x8000_0001
        );
        assert_eq!(checksum(0, &out[..20]), 0);
        assert_eq!(
            checksum(pseudo_sum(peer.ip(), app.ip(), 20), &out[20..40]),
            0
        );
        let v6: SocketAddr = "[2001:db8:4::2]:443".parse().unwrap();
        let app6: SocketAddr = "[fd77::2]:40000".parse().unwrap();
        assert_eq!(tcp_ack_probe(v6, app6, 1, &mut out), Some(60));
        assert_eq!(tcp_ack_probe(v6, app, 1, &mut out), None, "mixed families");
    }
}
