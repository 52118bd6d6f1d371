#![no_main]
//! `cim_fuzz::json` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| cim_fuzz::json(data));
