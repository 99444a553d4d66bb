//! Writing to Xen's console: `console_io(CONSOLEIO_write)` (`xen/include/public/xen.h`).
//!
//! Xen accepts `CONSOLEIO_write` from an unprivileged domain only when it is built with
//! `CONFIG_VERBOSE_DEBUG` or the domain is its console domain (`xsm_console_io` in
//! `xen/include/xsm/dummy.h`); otherwise the call fails with `EPERM`. Every HVM/PVH domain
//! can instead write bytes to I/O port 0xE9, which Xen prints as the domain's guest log
//! (`hvm_print_line`); [`XenConsole::with_debug_port`] falls back to it, and
//! [`debug_port_write`] writes it directly (the stub-domain image's console sink on Xen).

use core::fmt;

use x86_64::instructions::port::PortWriteOnly;

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

/// A [`fmt::Write`] onto Xen's console.
#[derive(Debug)]
pub struct XenConsole<'h, H: Hypercalls> {
    hc: &'h mut H,
    debug_port: bool,
    use_port: bool,
}

impl<'h, H: Hypercalls> XenConsole<'h, H> {
    /// Writes with `console_io` only (text is dropped if Xen refuses it).
    pub fn new(hc: &'h mut H) -> Self {
        XenConsole {
            hc,
            debug_port: false,
            use_port: false,
        }
    }

    /// Writes with `console_io`, and through port 0xE9 once Xen refuses it.
    ///
    /// # Safety
    ///
    /// The program must run in ring 0 (or with I/O privilege for port 0xE9) as an HVM or
    /// PVH guest of Xen, where the port is Xen's debug console.
    pub unsafe fn with_debug_port(hc: &'h mut H) -> Self {
        XenConsole {
            hc,
            debug_port: true,
            use_port: false,
        }
    }
}

impl<H: Hypercalls> fmt::Write for XenConsole<'_, H> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if !self.use_port {
            match console_write(self.hc, s.as_bytes()) {
                Ok(()) => return Ok(()),
                Err(_) if self.debug_port => self.use_port = true,
                Err(_) => return Err(fmt::Error),
            }
        }
        // SAFETY: the port is Xen's debug console and we may use it (contract of
        // `with_debug_port`, the only way `use_port` becomes true).
        unsafe { debug_port_write(s.as_bytes()) };
        Ok(())
    }
}

/// Writes `bytes` to Xen's debug console port (`XEN_HVM_DEBUGCONS_IOPORT`), which Xen prints
/// as the domain's guest log (`hvm_print_line`).
///
/// # Safety
///
/// The program must run in ring 0 (or with I/O privilege for port 0xE9) as an HVM or PVH
/// guest of Xen, where the port is Xen's debug console.
pub unsafe fn debug_port_write(bytes: &[u8]) {
    let mut port = PortWriteOnly::<u8>::new(DEBUGCONS_PORT);
    for &b in bytes {
        // SAFETY: the caller vouches that port 0xE9 is Xen's debug console, whose only effect
        // is to log the byte; no memory is touched.
        unsafe { port.write(b) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xenfake::FakeXen;
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
}
