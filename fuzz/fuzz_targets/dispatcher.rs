//! xs-serve's dispatcher serving dom0 and three guests: domains coming and going, hostile
//! rings, platform failures, stale events.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| xs_fuzz::dispatcher(data));
