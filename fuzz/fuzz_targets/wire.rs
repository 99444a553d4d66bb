//! Every parser of request bytes: header, argument layouts, paths, permissions, numbers.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| xs_fuzz::wire(data));
