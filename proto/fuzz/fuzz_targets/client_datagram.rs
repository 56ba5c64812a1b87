//! Fuzz target `client_datagram`: see `upmt_proto::fuzzing::client_datagram`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| upmt_proto::fuzzing::client_datagram(data));
