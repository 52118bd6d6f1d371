#![no_main]
//! `cim_fuzz::xml_stream` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| cim_fuzz::xml_stream(data));
