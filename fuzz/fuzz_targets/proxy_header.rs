#![no_main]
//! `cim_fuzz::proxy_header` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| cim_fuzz::proxy_header(data));
