//! The ring page with a hostile guest: arbitrary bytes and indices between pumps.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| xs_fuzz::ring(data));
