//! Output: `console_io` until the PV console is connected, then the console ring
//! (`struct xencons_interface`: `out[2048]` at 1024, `out_cons` at 3080, `out_prod` at 3084)
//! with a notification on its event channel, as Linux's `hvc_xen` writes.

use alloc::string::String;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering, fence};

use x86_glue::console::console_write;

use crate::xen::Xen;

const OUT: usize = 1024;
const OUT_SIZE: u32 = 2048;
const OUT_CONS: usize = 3080;
const OUT_PROD: usize = 3084;

/// The PV console's ring, once connected.
#[derive(Debug)]
pub(crate) struct Ring {
    pub(crate) page: NonNull<u8>,
    pub(crate) port: u32,
}

impl Ring {
    fn index(&self, at: usize) -> &AtomicU32 {
        // SAFETY: an aligned u32 inside our ring page, shared with the backend.
        unsafe { &*self.page.as_ptr().wrapping_add(at).cast::<AtomicU32>() }
    }

    fn write(&self, xen: &Xen, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            // ORDERING: Acquire on out_cons: the backend read the bytes before freeing them.
            let cons = self.index(OUT_CONS).load(Ordering::Acquire);
            let prod = self.index(OUT_PROD).load(Ordering::Relaxed);
            let room = OUT_SIZE - prod.wrapping_sub(cons).min(OUT_SIZE);
            if room == 0 {
                let _ = xen.send(self.port);
                continue;
            }
            let n = rest.len().min(room as usize);
            for (i, &b) in rest[..n].iter().enumerate() {
                let at = OUT + (prod.wrapping_add(i as u32) % OUT_SIZE) as usize;
                // SAFETY: a byte of the ring's `out` array, in our page.
                unsafe { core::ptr::write_volatile(self.page.as_ptr().wrapping_add(at), b) };
            }
            // ORDERING: Release; the bytes before the producer index (the backend's Acquire).
            fence(Ordering::Release);
            self.index(OUT_PROD)
                .store(prod.wrapping_add(n as u32), Ordering::Relaxed);
            let _ = xen.send(self.port);
            rest = &rest[n..];
        }
    }
}

/// Where lines go.
#[derive(Debug, Default)]
pub(crate) struct Out {
    /// Test lines kept until the PV console is up.
    held: Vec<String>,
    ring: Option<Ring>,
}

impl Out {
    /// A line through `console_io` at once (progress before the console exists).
    pub(crate) fn early(&self, xen: &Xen, line: &str) {
        let mut s = String::from(line);
        s.push('\n');
        let _ = console_write(&mut xen.hc(), s.as_bytes());
    }

    /// A test line: through the PV console, or held until it is connected.
    pub(crate) fn line(&mut self, xen: &Xen, line: String) {
        match &self.ring {
            Some(ring) => {
                let mut s = line;
                s.push('\n');
                ring.write(xen, s.as_bytes());
            }
            None => self.held.push(line),
        }
    }

    /// The PV console is connected: the held lines go out through it.
    pub(crate) fn connect(&mut self, xen: &Xen, ring: Ring) {
        for line in core::mem::take(&mut self.held) {
            let mut s = line;
            s.push('\n');
            ring.write(xen, s.as_bytes());
        }
        self.ring = Some(ring);
    }

    /// No PV console after all: the held lines go through `console_io`.
    pub(crate) fn give_up(&mut self, xen: &Xen) {
        for line in core::mem::take(&mut self.held) {
            self.early(xen, &line);
        }
    }
}
