//! Fuzz target `control_frame`: see `upmt_mobile_host::control::proto::fuzz_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| upmt_mobile_host::control::proto::fuzz_decode(data));
