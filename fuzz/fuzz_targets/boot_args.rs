//! The stub domain's command line (dom0's configuration, or whatever a loader passes).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| xs_fuzz::boot_args(data));
