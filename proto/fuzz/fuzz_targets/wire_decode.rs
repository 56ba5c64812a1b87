//! Fuzz target `wire_decode`: see `upmt_proto::fuzzing::wire_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| upmt_proto::fuzzing::wire_decode(data));
