//! What the compiler expects a C library to provide, for the freestanding images (feature
//! `freestanding-mem`: the stub domain, xs-vmm's guest; a program linked with a C library
//! must not enable it): `memcpy`, `memmove`, `memset`, `memcmp`, `bcmp`; and the
//! personality routine the precompiled `core` and `alloc` (built for unwinding) refer to
//! from their landing pads. With `panic = "abort"` and a panic handler that never returns,
//! nothing unwinds, so it is never called. (Each image defines `_Unwind_Resume` itself,
//! saying so its own way if it were ever reached.)
//!
//! `compiler_builtins` exports no `mem*` symbols for `x86_64-unknown-linux-gnu` (libc has
//! them), so a freestanding image must. Each is written with string instructions in inline
//! assembly, so the compiler cannot recognise the loop in its body and turn it back into a
//! call to itself. The SysV ABI guarantees the direction flag is clear on entry (and the
//! interrupt stubs clear it before calling Rust); `memmove` sets it only around its backward
//! copy.

use core::arch::asm;
use core::ffi::c_int;

/// # Safety
///
/// `dst` and `src` must be valid for `n` bytes and must not overlap (C's contract).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid for `n` bytes and do not overlap.
    unsafe { copy_forward(dst, src, n) };
    dst
}

/// Copies `n` bytes from the first byte up (`rep movsb`).
///
/// # Safety
///
/// `dst` and `src` must be valid for `n` bytes, and if they overlap `dst` must not lie
/// inside the source after `src` (a forward copy would read bytes it already overwrote).
unsafe fn copy_forward(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY: the caller guarantees both ranges are valid for `n` bytes, and an overlap
    // only with `dst` below `src`, which a forward copy handles.
    unsafe {
        asm!(
            "rep movsb",
            inout("rcx") n => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags)
        );
    }
}

/// # Safety
///
/// `dst` and `src` must be valid for `n` bytes; they may overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // `dst` is below `src`, or past the end of the source: a forward copy never reads a
        // byte it has already overwritten.
        // SAFETY: the caller guarantees both ranges are valid for `n` bytes; any overlap has
        // `dst` below `src`.
        unsafe { copy_forward(dst, src, n) };
    } else {
        // `dst` overlaps the end of the source: copy backwards, from the last byte.
        // SAFETY: as above; `n > 0` here (else the first branch was taken), so the last
        // bytes are at offset `n - 1`. The direction flag is restored before returning.
        unsafe {
            asm!(
                "std",
                "rep movsb",
                "cld",
                inout("rcx") n => _,
                inout("rdi") dst.wrapping_add(n - 1) => _,
                inout("rsi") src.wrapping_add(n - 1) => _,
                options(nostack)
            );
        }
    }
    dst
}

/// # Safety
///
/// `dst` must be valid for writing `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: c_int, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range is valid for writes.
    unsafe {
        asm!(
            "rep stosb",
            inout("rcx") n => _,
            inout("rdi") dst => _,
            in("al") c as u8,
            options(nostack, preserves_flags)
        );
    }
    dst
}

/// # Safety
///
/// `a` and `b` must be valid for reading `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> c_int {
    if n == 0 {
        return 0;
    }
    let left: *const u8;
    let right: *const u8;
    let equal: u8;
    // SAFETY: the caller guarantees both ranges are readable; `repe cmpsb` stops at the
    // first difference, leaving `rsi`/`rdi` one past it, or after `n` equal bytes.
    unsafe {
        asm!(
            "repe cmpsb",
            "sete {eq}",
            eq = out(reg_byte) equal,
            inout("rcx") n => _,
            inout("rsi") a => left,
            inout("rdi") b => right,
            options(nostack, readonly)
        );
    }
    if equal != 0 {
        return 0;
    }
    // SAFETY: the differing bytes are the ones just before where the scan stopped, inside
    // the ranges the caller vouched for.
    let x = unsafe { *left.wrapping_sub(1) };
    // SAFETY: as above, in the other range.
    let y = unsafe { *right.wrapping_sub(1) };
    c_int::from(x) - c_int::from(y)
}

/// # Safety
///
/// As for [`memcmp`]; only zero or non-zero is meaningful.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> c_int {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}

/// The personality routine the precompiled `core` and `alloc` refer to; never called.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}
