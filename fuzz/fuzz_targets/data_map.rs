#![no_main]
//! `cim_fuzz::data_map` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| cim_fuzz::data_map(data));
