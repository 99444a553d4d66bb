//! The connection state machine, fed hostile byte streams in arbitrary chunks.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| xs_fuzz::connection(data));
