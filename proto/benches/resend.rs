//! Per-packet cost of keeping packets for resending (see `upmt_proto::resend`): the anchor's
//! `encapsulate` of a 1420-byte packet with its resend ring on (the default) and off, and the
//! ring's push alone. Run with `cargo bench -p upmt-proto --bench resend`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;
use upmt_proto::resend::{DEFAULT_RESEND_AGE, DEFAULT_RESEND_BYTES, ResendRing};
use upmt_proto::sim::{CH_V4, MH_V4, Pair, udp4};
use upmt_proto::time::Instant;
use upmt_proto::{HEADER_LEN, TAG_LEN};

const PLAIN: usize = 1420;

/// A 1420-byte UDP packet from the correspondent to the mobile host.
fn packet() -> Vec<u8> {
    let mut p = udp4(CH_V4, MH_V4, 443, 5000, 0);
    p.resize(PLAIN, 0x5a);
    p[2..4].copy_from_slice(&(PLAIN as u16).to_be_bytes());
    p
}

fn bench_resend(c: &mut Criterion) {
    let mut g = c.benchmark_group("resend_1420");
    g.throughput(Throughput::Bytes(PLAIN as u64));
    let inner = packet();
    for (name, bytes) in [("off", 0), ("on", DEFAULT_RESEND_BYTES)] {
        let mut pair = Pair::with_anchor(&[10, 20], |_| {}, |a| a.resend_bytes = bytes);
        pair.run_for(Duration::from_secs(1));
        assert!(pair.connected());
        let mut buf = vec![0u8; HEADER_LEN + PLAIN + TAG_LEN];
        let now = pair.now;
        g.bench_function(format!("anchor_encapsulate/resend_{name}"), |b| {
            b.iter(|| {
                buf[HEADER_LEN..HEADER_LEN + PLAIN].copy_from_slice(&inner);
                black_box(pair.anchor.encapsulate(black_box(&mut buf), PLAIN, now))
            })
        });
    }
    let mut ring = ResendRing::new(DEFAULT_RESEND_BYTES, DEFAULT_RESEND_AGE);
    g.bench_function("ring_push", |b| {
        b.iter(|| ring.push(black_box(&inner), 0x4000, Instant::ZERO))
    });
    g.finish();
}

criterion_group!(benches, bench_resend);
criterion_main!(benches);
