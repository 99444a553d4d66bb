//! Random operation sequences against the store, checking its invariants after each.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| xs_fuzz::store_ops(&xs_fuzz::decode_ops(data)));
