//! How the ring page is reached: a [`Page`] gives atomic access to the 32-bit fields and
//! copies data bytes between the rings and private memory. Implementations: [`RawPage`] for a
//! real page (a guest's page mapped by the hypervisor or by grant), [`SharedPage`] for two
//! threads of one program (tests, benchmarks); a loom model lives in the loom tests. Anything
//! that derefs to a page (a reference, `Arc`, a handle owning a mapping) is a page too.

use core::ops::Deref;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use crate::layout::{Field, RING_SIZE, Ring};

/// Access to a ring page. The ring protocol code never holds a reference into the page.
pub trait Page {
    /// Bytes in each ring: 1024 on a real page, fewer in models.
    const RING: usize;

    /// Loads a field (relaxed: ordering comes from [`crate::order`]).
    fn load(&self, field: Field) -> u32;

    /// Stores a field (relaxed: ordering comes from [`crate::order`]).
    fn store(&self, field: Field, value: u32);

    /// Copies `dst.len()` bytes of `ring` starting at `offset` into private memory. Callers
    /// keep `offset + dst.len() <= RING`; beyond it nothing is copied.
    fn copy_out(&self, ring: Ring, offset: usize, dst: &mut [u8]);

    /// Copies `src` into `ring` starting at `offset`. Callers keep
    /// `offset + src.len() <= RING`; beyond it nothing is copied.
    fn copy_in(&self, ring: Ring, offset: usize, src: &[u8]);
}

/// A page reached through a pointer to it: a reference, a `Box`, `Rc` or `Arc`, or a handle
/// that owns a mapping of the page and derefs to it. This is the one place where [`Page`] is
/// forwarded; a type that is not such a pointer implements [`Page`] itself.
impl<D> Page for D
where
    D: Deref,
    D::Target: Page,
{
    const RING: usize = <D::Target as Page>::RING;

    fn load(&self, field: Field) -> u32 {
        (**self).load(field)
    }

    fn store(&self, field: Field, value: u32) {
        (**self).store(field, value);
    }

    fn copy_out(&self, ring: Ring, offset: usize, dst: &mut [u8]) {
        (**self).copy_out(ring, offset, dst);
    }

    fn copy_in(&self, ring: Ring, offset: usize, src: &[u8]) {
        (**self).copy_in(ring, offset, src);
    }
}

/// Offset of a ring in the page.
const fn ring_base(ring: Ring) -> usize {
    match ring {
        Ring::Req => 0,
        Ring::Rsp => RING_SIZE,
    }
}

/// A real page: memory the peer writes concurrently (a guest's XenStore page mapped by the
/// hypervisor at `XEN_SPECIAL_PFN`, or by grant in a stub domain). Fields are accessed as
/// atomics, data with volatile copies, so that every byte the peer controls is read exactly
/// once into private memory.
#[derive(Debug)]
pub struct RawPage {
    base: NonNull<u8>,
}

impl RawPage {
    /// Wraps the page at `page`.
    ///
    /// # Safety
    ///
    /// `page` must point to a 4096-byte region that is mapped, readable and writable, and
    /// aligned to at least 4 bytes for as long as the `RawPage` lives, and this side of the
    /// protocol must access it only through this `RawPage` (the peer may access it
    /// concurrently: that is what the atomics and volatile copies are for).
    ///
    /// # Examples
    ///
    /// A page-aligned page of the program's own memory standing in for a guest's page
    /// mapped by the hypervisor:
    ///
    /// ```
    /// use std::ptr::NonNull;
    /// use xs_ring::{Guest, RawPage, Server};
    ///
    /// #[repr(C, align(4096))]
    /// struct PageMemory([u8; 4096]);
    /// let memory = Box::new(PageMemory([0; 4096]));
    /// let ptr = NonNull::from(Box::leak(memory)).cast::<u8>();
    /// // SAFETY: a leaked, page-aligned 4 KiB allocation: mapped, writable, aligned, alive for
    /// // the rest of the program, and only ever reached through `RawPage`s.
    /// let (server_page, guest_page) = unsafe { (RawPage::new(ptr), RawPage::new(ptr)) };
    /// let mut server = Server::new(server_page, Server::<RawPage>::FEATURES);
    /// let mut guest = Guest::new(guest_page);
    /// guest.write(b"hi")?;
    /// assert_eq!(server.peek_request()?, b"hi");
    /// # Ok::<(), xs_ring::RingFault>(())
    /// ```
    pub unsafe fn new(page: NonNull<u8>) -> RawPage {
        RawPage { base: page }
    }

    fn field(&self, field: Field) -> &AtomicU32 {
        let ptr = self
            .base
            .as_ptr()
            .wrapping_add(field.offset())
            .cast::<u32>();
        // SAFETY: `field.offset()` is below 2080, inside the page; the page is 4-aligned and
        // the offset a multiple of 4, so the pointer is aligned; the page outlives `self`
        // (the borrow ties the reference to it), and this side only accesses the field
        // atomically (the contract of `new`).
        unsafe { AtomicU32::from_ptr(ptr) }
    }

    /// The first byte of `len` bytes of `ring` at `offset`, if they lie in the ring.
    fn bytes(&self, ring: Ring, offset: usize, len: usize) -> Option<*mut u8> {
        if offset.checked_add(len)? > RING_SIZE {
            return None;
        }
        Some(
            self.base
                .as_ptr()
                .wrapping_add(ring_base(ring))
                .wrapping_add(offset),
        )
    }
}

// SAFETY: a RawPage is an address; all accesses through it are atomic or volatile, and the
// page is shared with another party by design, so moving it to another thread is sound.
unsafe impl Send for RawPage {}

impl Page for RawPage {
    const RING: usize = RING_SIZE;

    fn load(&self, field: Field) -> u32 {
        // ORDERING: relaxed; the fence that follows every index load (`order::after_loading_*`)
        // orders it against the byte accesses it guards.
        self.field(field).load(Ordering::Relaxed)
    }

    fn store(&self, field: Field, value: u32) {
        // ORDERING: relaxed; the fence that precedes every index store
        // (`order::before_publishing_*`) orders the byte accesses before it.
        self.field(field).store(value, Ordering::Relaxed);
    }

    // Byte-wise volatile copies: the `volatile` crate copies slices only with its nightly
    // feature, and a plain `copy_nonoverlapping` could be split, merged or repeated by the
    // compiler, reading a byte the peer changes in between twice.
    fn copy_out(&self, ring: Ring, offset: usize, dst: &mut [u8]) {
        let Some(src) = self.bytes(ring, offset, dst.len()) else {
            return;
        };
        for (i, d) in dst.iter_mut().enumerate() {
            // SAFETY: `src + i` lies in the ring (checked by `bytes` for the whole range),
            // inside the mapped page; a volatile read of a byte the peer may be writing is
            // how shared guest memory is read (the value is copied once and then trusted
            // only as far as the protocol checks it).
            *d = unsafe { src.wrapping_add(i).read_volatile() };
        }
    }

    fn copy_in(&self, ring: Ring, offset: usize, src: &[u8]) {
        let Some(dst) = self.bytes(ring, offset, src.len()) else {
            return;
        };
        for (i, s) in src.iter().enumerate() {
            // SAFETY: `dst + i` lies in the ring (checked by `bytes`), inside the mapped page,
            // in the part of the ring the peer has freed for us to write.
            unsafe { dst.wrapping_add(i).write_volatile(*s) };
        }
    }
}

/// A page two threads of one program share (tests, the threaded stress test, benchmarks).
/// Data bytes are relaxed atomics: the protocol's fences order them, and even a misbehaving
/// peer thread cannot cause undefined behaviour.
///
/// Laid out as the real page is (`repr(C)`: the request ring, the reply ring, then the
/// indices) and page-aligned, so that the indices share one cache line with nothing else,
/// as they do in a guest's page: the traffic between the threads is the real protocol's.
#[derive(Debug)]
#[repr(C, align(4096))]
pub struct SharedPage<const N: usize = RING_SIZE> {
    req: [AtomicU8; N],
    rsp: [AtomicU8; N],
    fields: [AtomicU32; 8],
}

impl<const N: usize> Default for SharedPage<N> {
    fn default() -> Self {
        SharedPage {
            req: [const { AtomicU8::new(0) }; N],
            rsp: [const { AtomicU8::new(0) }; N],
            fields: [const { AtomicU32::new(0) }; 8],
        }
    }
}

impl<const N: usize> SharedPage<N> {
    fn ring(&self, ring: Ring) -> &[AtomicU8; N] {
        match ring {
            Ring::Req => &self.req,
            Ring::Rsp => &self.rsp,
        }
    }

    fn span(&self, ring: Ring, offset: usize, len: usize) -> &[AtomicU8] {
        let end = offset.saturating_add(len);
        self.ring(ring).get(offset..end).unwrap_or_default()
    }
}

impl<const N: usize> Page for SharedPage<N> {
    const RING: usize = N;

    fn load(&self, field: Field) -> u32 {
        self.fields
            .get(field.index())
            // ORDERING: relaxed, ordered by the `order` fences as in `RawPage::load`.
            .map_or(0, |f| f.load(Ordering::Relaxed))
    }

    fn store(&self, field: Field, value: u32) {
        if let Some(f) = self.fields.get(field.index()) {
            // ORDERING: relaxed, ordered by the `order` fences as in `RawPage::store`.
            f.store(value, Ordering::Relaxed);
        }
    }

    fn copy_out(&self, ring: Ring, offset: usize, dst: &mut [u8]) {
        let src = self.span(ring, offset, dst.len());
        if src.len() == dst.len() {
            for (d, s) in dst.iter_mut().zip(src) {
                // ORDERING: relaxed data byte; `after_loading_prod` before and
                // `before_publishing_cons` after order it against the indices.
                *d = s.load(Ordering::Relaxed);
            }
        }
    }

    fn copy_in(&self, ring: Ring, offset: usize, src: &[u8]) {
        let dst = self.span(ring, offset, src.len());
        if src.len() == dst.len() {
            for (d, s) in dst.iter().zip(src) {
                // ORDERING: relaxed data byte; `after_loading_cons` before and
                // `before_publishing_prod` after order it against the indices.
                d.store(*s, Ordering::Relaxed);
            }
        }
    }
}
