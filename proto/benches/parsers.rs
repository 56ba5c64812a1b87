//! The workspace's own header parser and MSS clamp against the `etherparse` crate, on the same
//! packets: what a move to the library would cost per packet (both give the same answers, which
//! the bench asserts before timing). Run with `cargo bench -p upmt-proto --bench parsers`.

use criterion::{Criterion, criterion_group, criterion_main};
use etherparse::{
    Ipv4HeaderSlice, Ipv6HeaderSlice, NetSlice, SlicedPacket, TcpHeaderSlice, TransportSlice,
};
use std::hint::black_box;
use std::net::IpAddr;
use upmt_proto::ip::{self, PROTO_TCP, PROTO_UDP};

/// An IPv4 TCP ACK with 20 bytes of payload (the PAFT bench's packet shape).
fn ipv4_tcp() -> Vec<u8> {
    let mut p = vec![0u8; 60];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&60u16.to_be_bytes());
    p[8] = 64;
    p[9] = PROTO_TCP;
    p[12..16].copy_from_slice(&[10, 0, 0, 2]);
    p[16..20].copy_from_slice(&[93, 184, 216, 34]);
    p[20..22].copy_from_slice(&40_000u16.to_be_bytes());
    p[22..24].copy_from_slice(&443u16.to_be_bytes());
    p[32] = 0x50;
    p[33] = 0x10;
    p
}

/// An IPv6 UDP datagram with 32 bytes of payload.
fn ipv6_udp() -> Vec<u8> {
    let mut p = vec![0u8; 40 + 8 + 32];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&40u16.to_be_bytes());
    p[6] = PROTO_UDP;
    p[7] = 64;
    p[8..24].copy_from_slice(&"fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
    p[24..40].copy_from_slice(
        &"2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    p[40..42].copy_from_slice(&5000u16.to_be_bytes());
    p[42..44].copy_from_slice(&53u16.to_be_bytes());
    p[44..46].copy_from_slice(&40u16.to_be_bytes());
    p
}

/// One's-complement sum, for building valid checksums.
fn sum16(mut acc: u32, b: &[u8]) -> u32 {
    for c in b.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// A TCP SYN with an MSS option of 1460 and a valid checksum, over IPv4 or IPv6.
fn syn(v6: bool) -> Vec<u8> {
    let tcp_len = 24usize;
    let (mut p, pseudo) = if v6 {
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        h[6] = PROTO_TCP;
        h[7] = 64;
        h[8..24].copy_from_slice(&"fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        h[24..40].copy_from_slice(
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        let ps = sum16(0, &h[8..40]);
        (h, ps)
    } else {
        let mut h = vec![0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
        h[8] = 64;
        h[9] = PROTO_TCP;
        h[12..16].copy_from_slice(&[10, 9, 0, 2]);
        h[16..20].copy_from_slice(&[93, 184, 216, 34]);
        let ps = sum16(0, &h[12..20]);
        (h, ps)
    };
    let t = p.len();
    p.extend_from_slice(&[0xc0, 0x01, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0]);
    p.push(((tcp_len / 4) as u8) << 4);
    p.push(0x02);
    p.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0, 2, 4, 0x05, 0xb4]);
    let c = fold(sum16(
        pseudo + u32::from(PROTO_TCP) + tcp_len as u32,
        &p[t..],
    ));
    p[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
    p
}

/// What the PAFT needs from a packet, read with etherparse: addresses, ports, TCP flags.
fn etherparse_key(p: &[u8]) -> Option<(IpAddr, IpAddr, u16, u16, u8)> {
    let s = SlicedPacket::from_ip(p).ok()?;
    let (src, dst) = match s.net? {
        NetSlice::Ipv4(v4) => (
            IpAddr::V4(v4.header().source_addr()),
            IpAddr::V4(v4.header().destination_addr()),
        ),
        NetSlice::Ipv6(v6) => (
            IpAddr::V6(v6.header().source_addr()),
            IpAddr::V6(v6.header().destination_addr()),
        ),
        _ => return None,
    };
    let (sport, dport, flags) = match s.transport? {
        TransportSlice::Tcp(t) => (t.source_port(), t.destination_port(), t.header_slice()[13]),
        TransportSlice::Udp(u) => (u.source_port(), u.destination_port(), 0),
        _ => (0, 0, 0),
    };
    Some((src, dst, sport, dport, flags))
}

/// The MSS clamp with etherparse doing the header parsing and the checksum (a full
/// recomputation: it has no incremental update). The option itself is rewritten in place, as
/// etherparse edits options only by rebuilding them.
fn clamp_etherparse(p: &mut [u8], max_mss: u16) -> bool {
    let (t, src4, src6) = if p.first().map(|b| b >> 4) == Some(4) {
        let Ok(h) = Ipv4HeaderSlice::from_slice(p) else {
            return false;
        };
        if h.protocol().0 != PROTO_TCP || h.is_fragmenting_payload() {
            return false;
        }
        (h.slice().len(), Some((h.source(), h.destination())), None)
    } else {
        let Ok(h) = Ipv6HeaderSlice::from_slice(p) else {
            return false;
        };
        if h.next_header().0 != PROTO_TCP {
            return false;
        }
        (40, None, Some((h.source(), h.destination())))
    };
    let Ok(tcp) = TcpHeaderSlice::from_slice(&p[t..]) else {
        return false;
    };
    if !tcp.syn() {
        return false;
    }
    let header_len = tcp.slice().len();
    let mut o = t + 20;
    let end = t + header_len;
    let mut at = None;
    while o + 1 < end {
        match p[o] {
            0 => break,
            1 => o += 1,
            kind => {
                let len = usize::from(p[o + 1]);
                if len < 2 || o + len > end {
                    break;
                }
                if kind == 2 && len == 4 {
                    at = Some(o + 2);
                    break;
                }
                o += len;
            }
        }
    }
    let Some(at) = at else {
        return false;
    };
    if u16::from_be_bytes([p[at], p[at + 1]]) <= max_mss {
        return false;
    }
    p[at..at + 2].copy_from_slice(&max_mss.to_be_bytes());
    let Ok(tcp) = TcpHeaderSlice::from_slice(&p[t..]) else {
        return false;
    };
    let payload = &p[t + header_len..];
    let sum = match (src4, src6) {
        (Some((s, d)), _) => tcp.calc_checksum_ipv4_raw(s, d, payload),
        (_, Some((s, d))) => tcp.calc_checksum_ipv6_raw(s, d, payload),
        _ => return false,
    };
    let Ok(sum) = sum else {
        return false;
    };
    p[t + 16..t + 18].copy_from_slice(&sum.to_be_bytes());
    true
}

fn bench_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    for (name, p) in [("ipv4_tcp", ipv4_tcp()), ("ipv6_udp", ipv6_udp())] {
        let own = upmt_paft::parse_packet(&p).expect("valid packet");
        let lib = etherparse_key(&p).expect("valid packet");
        assert_eq!(
            (
                own.key.src,
                own.key.dst,
                own.key.sport,
                own.key.dport,
                own.tcp_flags
            ),
            lib
        );
        g.bench_function(format!("own/{name}"), |b| {
            b.iter(|| black_box(upmt_paft::parse_packet(black_box(&p))))
        });
        g.bench_function(format!("etherparse/{name}"), |b| {
            b.iter(|| black_box(etherparse_key(black_box(&p))))
        });
    }
    g.finish();
}

fn bench_clamp(c: &mut Criterion) {
    let mut g = c.benchmark_group("clamp_mss");
    for (name, p) in [("ipv4_syn", syn(false)), ("ipv6_syn", syn(true))] {
        let mut a = p.clone();
        let mut b = p.clone();
        assert!(ip::clamp_tcp_mss(&mut a, 1380));
        assert!(clamp_etherparse(&mut b, 1380));
        assert_eq!(a, b, "both clamps give the same bytes");
        let mut buf = p.clone();
        g.bench_function(format!("own/{name}"), |bch| {
            bch.iter(|| {
                buf.copy_from_slice(&p);
                black_box(ip::clamp_tcp_mss(black_box(&mut buf), 1380))
            })
        });
        g.bench_function(format!("etherparse/{name}"), |bch| {
            bch.iter(|| {
                buf.copy_from_slice(&p);
                black_box(clamp_etherparse(black_box(&mut buf), 1380))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_parse, bench_clamp);
criterion_main!(benches);
