//! The state stream reader (live update's input): hostile streams are rejected, never a
//! panic, and whatever is accepted restores a consistent store that saves and reads back.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| xs_fuzz::state_stream(data));
