#![no_main]
//! `cim_fuzz::compat_form` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| cim_fuzz::compat_form(data));
