//! Fuzz target `ip_clamp_mss`: see `upmt_proto::fuzzing::ip_clamp_mss`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| upmt_proto::fuzzing::ip_clamp_mss(data));
