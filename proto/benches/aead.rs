//! Per-packet cost of the transport AEAD, ChaCha20-Poly1305 against AES-256-GCM, at the
//! default inner MTU (1420 bytes): what the negotiated cipher saves per packet on this CPU.
//! Run with `cargo bench -p upmt-proto --bench aead`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use upmt_proto::fuzzing::TransportKeys;
use upmt_proto::{Cipher, HEADER_LEN, TAG_LEN};

const PLAIN: usize = 1420;

fn bench_aead(c: &mut Criterion) {
    let mut g = c.benchmark_group("aead_1420");
    g.throughput(Throughput::Bytes(PLAIN as u64));
    for cipher in [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm] {
        let mut keys = TransportKeys::new(cipher);
        let mut buf = vec![0x5au8; HEADER_LEN + PLAIN + TAG_LEN];
        // Both directions agree before anything is timed.
        let n = keys.seal(&mut buf, PLAIN).expect("room for header and tag");
        assert_eq!(keys.open(&mut buf[..n]), Ok(HEADER_LEN..HEADER_LEN + PLAIN));

        g.bench_function(format!("seal/{cipher}"), |b| {
            b.iter(|| black_box(keys.seal(black_box(&mut buf), PLAIN)))
        });
        // A fresh counter per packet, as on the wire: seal then open, so the replay window
        // accepts each; open alone is this minus seal.
        let mut keys = TransportKeys::new(cipher);
        g.bench_function(format!("seal_open/{cipher}"), |b| {
            b.iter(|| {
                let n = keys.seal(&mut buf, PLAIN).expect("room");
                black_box(keys.open(black_box(&mut buf[..n])).expect("opens"))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_aead);
criterion_main!(benches);
