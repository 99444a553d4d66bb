//! Writing to Xen's console: `console_io(CONSOLEIO_write)` (`xen/include/public/xen.h`).
//!
//! Xen accepts `CONSOLEIO_write` from an unprivileged domain only when it is built with
//! `CONFIG_VERBOSE_DEBUG` or the domain is its console domain (`xsm_console_io` in
//! `xen/include/xsm/dummy.h`); otherwise the call fails with `EPERM`. Every HVM/PVH domain
//! can instead write bytes to I/O port 0xE9, which Xen prints as the domain's guest log
//! (`hvm_print_line`): [`debug_port_write`]. [`XenConsole`] tries `console_io` and falls back
//! to a writer of the caller's choosing; [`crate::run_stub_domain`] uses it over the image's
//! console.

use core::fmt;

use crate::hypercall::{Errno, Hypercalls, nr, slice_arg};

/// `CONSOLEIO_write`.
pub const CONSOLEIO_WRITE: u64 = 0;
/// `XEN_HVM_DEBUGCONS_IOPORT`.
pub const DEBUGCONS_PORT: u16 = 0xe9;

/// `console_io(CONSOLEIO_write, bytes)`.
pub fn console_write(hc: &mut impl Hypercalls, bytes: &[u8]) -> Result<(), Errno> {
    let mut rest = bytes;
    while !rest.is_empty() {
        // Xen takes an `unsigned int` count; split anything larger.
        let n = rest.len().min(u32::MAX as usize);
        let (now, later) = rest.split_at(n);
        Errno::check(hc.call3(
            nr::CONSOLE_IO,
            CONSOLEIO_WRITE,
            now.len() as u64,
            slice_arg(now),
        ))?;
        rest = later;
    }
    Ok(())
}

/// A [`fmt::Write`] onto Xen's console: `console_io` while Xen accepts it; once Xen refuses
/// (an unprivileged domain of a release build), the fallback for good.
pub struct XenConsole<'f, H: Hypercalls> {
    hc: H,
    fallback: Option<&'f mut dyn fmt::Write>,
    refused: bool,
}

impl<'f, H: Hypercalls> XenConsole<'f, H> {
    /// Writes with `console_io` only (writes fail once Xen refuses it).
    pub fn new(hc: H) -> Self {
        XenConsole {
            hc,
            fallback: None,
            refused: false,
        }
    }

    /// Writes with `console_io`, and to `fallback` once Xen refuses it (e.g. the debug port,
    /// [`debug_port_write`], which every HVM/PVH domain may use).
    pub fn with_fallback(hc: H, fallback: &'f mut dyn fmt::Write) -> Self {
        XenConsole {
            hc,
            fallback: Some(fallback),
            refused: false,
        }
    }

    /// Whether Xen refused `console_io` (and the fallback, if any, is in use).
    pub fn refused(&self) -> bool {
        self.refused
    }
}

impl<H: Hypercalls> fmt::Debug for XenConsole<'_, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XenConsole")
            .field("fallback", &self.fallback.is_some())
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

impl<H: Hypercalls> fmt::Write for XenConsole<'_, H> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if !self.refused {
            match console_write(&mut self.hc, s.as_bytes()) {
                Ok(()) => return Ok(()),
                Err(_) => self.refused = true,
            }
        }
        match &mut self.fallback {
            Some(fallback) => fallback.write_str(s),
            None => Err(fmt::Error),
        }
    }
}

/// Writes `bytes` to Xen's debug console port (`XEN_HVM_DEBUGCONS_IOPORT`), which Xen prints
/// as the domain's guest log (`hvm_print_line`).
///
/// One `rep outsb` for the whole slice, not an `out` per byte: each port access is a VM exit
/// that Xen completes by emulation, and under nested virtualization (the Xen-in-QEMU rig) an
/// exit is both slow and, as measured there, where the stub domain was twice lost to a triple
/// fault right after one (`out` and `rdtsc`). A string instruction is one exit per
/// `hvm_print_line` batch instead of one per byte.
///
/// # Safety
///
/// The program must run in ring 0 (or with I/O privilege for port 0xE9) as an HVM or PVH
/// guest of Xen, where the port is Xen's debug console.
pub unsafe fn debug_port_write(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    // SAFETY: the caller vouches that port 0xE9 is Xen's debug console, whose only effect is
    // to log the bytes; `rep outsb` reads `bytes` (RSI, RCX bytes, forward: the ABI leaves
    // the direction flag clear at an asm block) and writes no memory.
    unsafe {
        core::arch::asm!(
            "rep outsb",
            in("dx") DEBUGCONS_PORT,
            inout("rsi") bytes.as_ptr() => _,
            inout("rcx") bytes.len() => _,
            options(nostack, preserves_flags, readonly),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xenfake::FakeXen;
    use alloc::string::String;
    use core::fmt::Write;

    #[test]
    fn writes_through_console_io() {
        let mut xen = FakeXen::new();
        {
            let mut c = XenConsole::new(&mut xen);
            writeln!(c, "store up, {} domains", 2).unwrap();
        }
        assert_eq!(xen.console(), b"store up, 2 domains\n");
        let (op, args) = *xen.calls().last().unwrap();
        assert_eq!((op, args[0]), (nr::CONSOLE_IO, CONSOLEIO_WRITE));
        xen.fail_next(nr::CONSOLE_IO, Errno::EPERM);
        let mut c = XenConsole::new(&mut xen);
        assert!(c.write_str("x").is_err());
    }

    #[test]
    fn falls_back_for_good_once_xen_refuses() {
        let mut xen = FakeXen::new();
        let mut fallback = String::new();
        xen.fail_next(nr::CONSOLE_IO, Errno::EPERM);
        {
            let mut c = XenConsole::with_fallback(&mut xen, &mut fallback);
            write!(c, "one ").unwrap();
            write!(c, "two").unwrap();
            assert!(c.refused());
        }
        assert_eq!(fallback, "one two");
        assert_eq!(xen.console(), b"");
        // Refused once, never asked again.
        let asked = xen.calls().iter().filter(|(op, _)| *op == nr::CONSOLE_IO);
        assert_eq!(asked.count(), 1);
    }
}
