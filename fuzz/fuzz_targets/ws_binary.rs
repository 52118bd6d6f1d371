#![no_main]
//! `cim_fuzz::ws_binary` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| cim_fuzz::ws_binary(data));
