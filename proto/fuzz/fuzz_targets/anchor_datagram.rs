//! Fuzz target `anchor_datagram`: see `upmt_proto::fuzzing::anchor_datagram`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| upmt_proto::fuzzing::anchor_datagram(data));
