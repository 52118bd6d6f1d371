#![no_main]
//! `cim_fuzz::binary_stream` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| cim_fuzz::binary_stream(data));
