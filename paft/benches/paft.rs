//! Per-packet cost of the PAFT: `touch` (one lookup, counters, TCP state, timer check) at
//! 1k, 100k and 1M flows, visiting flows in a scattered order so the big tables do not
//! sit in cache; plus the packet parse that precedes it.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use upmt_paft::{
    AppId, Config, Dir, FlowKey, NewFlow, Paft, Timeouts, UplinkId, parse_packet, proto, tcp_flags,
};

fn key(i: u32) -> FlowKey {
    let [a, b, c, d] = i.to_be_bytes();
    FlowKey {
        proto: if i.is_multiple_of(4) {
            proto::UDP
        } else {
            proto::TCP
        },
        src: IpAddr::from([10, a, b, c]),
        dst: IpAddr::from([198, 51, d, c]),
        sport: 32_768 + (i % 28_000) as u16,
        dport: 443,
    }
}

fn filled(n: u32) -> (Paft, Vec<FlowKey>) {
    let mut t = Paft::new(Config {
        max_flows: n as usize,
        timeouts: Timeouts::default(),
    });
    let app = AppId::from("com.example.app");
    let uplink = UplinkId::new(0).expect("uplink 0");
    let mut keys = Vec::with_capacity(n as usize);
    for i in 0..n {
        let k = key(i);
        let flow = NewFlow {
            app: app.clone(),
            uid: Some(10_000),
            uplink,
            pinned: false,
        };
        t.insert(k, flow, Duration::ZERO)
            .expect("sized for n flows");
        keys.push(k);
    }
    // Visit in a scattered order: a multiplicative step co-prime with n.
    let step = (2_654_435_761u64 % u64::from(n).max(1)) | 1;
    let order: Vec<FlowKey> = (0..u64::from(n))
        .map(|i| keys[((i * step) % u64::from(n)) as usize])
        .collect();
    (t, order)
}

fn bench_touch(c: &mut Criterion) {
    let mut g = c.benchmark_group("paft_touch");
    g.throughput(Throughput::Elements(1));
    for &n in &[1_000u32, 100_000, 1_000_000] {
        let (mut t, order) = filled(n);
        let mut i = 0usize;
        let mut now = Duration::from_secs(1);
        g.bench_function(format!("{n}_flows"), |b| {
            b.iter(|| {
                let k = &order[i];
                i += 1;
                if i == order.len() {
                    i = 0;
                    now += Duration::from_millis(1);
                }
                let e = t.touch(black_box(k), Dir::Orig, 1200, tcp_flags::ACK, None, now);
                black_box(e.map(|e| e.uplink()));
            })
        });
    }
    g.finish();
}

fn bench_parse(c: &mut Criterion) {
    let mut p = vec![0u8; 60];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&60u16.to_be_bytes());
    p[9] = proto::TCP;
    p[12..16].copy_from_slice(&[10, 0, 0, 2]);
    p[16..20].copy_from_slice(&[93, 184, 216, 34]);
    p[20..22].copy_from_slice(&40_000u16.to_be_bytes());
    p[22..24].copy_from_slice(&443u16.to_be_bytes());
    p[32] = 0x50;
    p[33] = tcp_flags::ACK;
    c.bench_function("parse_packet_ipv4_tcp", |b| {
        b.iter(|| black_box(parse_packet(black_box(&p))))
    });
}

criterion_group!(benches, bench_touch, bench_parse);
criterion_main!(benches);
