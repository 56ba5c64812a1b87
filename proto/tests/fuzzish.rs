//! Random bytes into both cores' decoders, connected or not: nothing panics, every datagram is
//! either consumed or dropped with a counted reason.

mod util;

use proptest::prelude::*;
use std::time::Duration;
use upmt_proto::PathId;
use util::Pair;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_datagrams_never_panic_either_core(
        datagrams in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..20),
        first_byte in prop_oneof![Just(0x11u8), Just(0x12), Just(0x13), Just(0x14), any::<u8>()],
    ) {
        let mut pair = Pair::new(&[5], |_| {});
        pair.run_for(Duration::from_millis(50));
        prop_assert!(pair.connected());
        let before = (pair.anchor.drops().total(), pair.client.drops().total());
        let n = datagrams.len() as u64;
        for mut d in datagrams {
            if let Some(b) = d.first_mut() {
                *b = first_byte;
            }
            pair.deliver(true, PathId(0), d.clone());
            pair.deliver(false, PathId(0), d);
        }
        prop_assert!(pair.anchor_rx.is_empty() && pair.client_rx.is_empty());
        prop_assert_eq!(pair.anchor.drops().total() - before.0, n);
        prop_assert_eq!(pair.client.drops().total() - before.1, n);
    }
}
