//! `_Unwind_Resume`, which the precompiled `alloc` refers to from its landing pads; the C
//! memory functions and the personality routine come from x86-glue (`freestanding-mem`).
//! With `panic = "abort"` and a panic handler that never returns, nothing unwinds.

/// Where a landing pad of the precompiled `alloc` would resume unwinding; never reached
/// (nothing unwinds), and fatal if it were.
#[unsafe(no_mangle)]
pub(crate) extern "C" fn _Unwind_Resume(_exception: *mut core::ffi::c_void) -> ! {
    crate::console::println!("FATAL: _Unwind_Resume called, but nothing unwinds in this image");
    crate::exit::fatal()
}
