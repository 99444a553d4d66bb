//! Mapping a foreign grant: `GNTTABOP_map_grant_ref` / `GNTTABOP_unmap_grant_ref`
//! (`xen/include/public/grant_table.h`), as an HVM/PVH guest does it.
//!
//! For a guest whose paging Xen manages (HVM, PVH: `paging_mode_external`), `host_addr` is a
//! guest-*physical* address: Xen enters the granted frame into our p2m at
//! `host_addr >> 12` as `p2m_grant_map_rw` (`create_grant_p2m_mapping` in
//! `xen/arch/x86/hvm/grant_table.c`), and the only flag accepted is `GNTMAP_host_map`
//! (optionally `GNTMAP_readonly`). Whatever RAM was at that frame is displaced and lost
//! (`p2m_add_page` invalidates its M2P entry), so the frames must lie in a hole of the
//! guest-physical map: like Linux's unpopulated-memory allocator, or Xen's own guest code
//! (`xg_alloc_unused_page`), the program reserves a range above its RAM. The program also
//! maps that range in its page tables (identity: virtual = physical) so that it can reach
//! the pages once Xen has put them there. [`MapArea`] hands out its pages.
//!
//! The store maps each guest's XenStore ring as grant [`GNTTAB_RESERVED_XENSTORE`], which
//! the domain builder fills in for the store's domain (`xc_dom_gnttab_seed`), as C xenstored
//! does (`map_interface` in `tools/xenstored/domain.c`).

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::hypercall::{Errno, Hypercalls, arg, nr};
use crate::sched;

/// `GNTTABOP_map_grant_ref`.
pub const GNTTABOP_MAP_GRANT_REF: u64 = 0;
/// `GNTTABOP_unmap_grant_ref`.
pub const GNTTABOP_UNMAP_GRANT_REF: u64 = 1;
/// `GNTMAP_host_map`.
pub const GNTMAP_HOST_MAP: u32 = 1 << 1;
/// `GNTMAP_readonly`.
pub const GNTMAP_READONLY: u32 = 1 << 2;
/// `GNTTAB_RESERVED_XENSTORE`: the grant reference of a domain's XenStore ring.
pub const GNTTAB_RESERVED_XENSTORE: u32 = 1;
/// Bytes in a page.
pub const PAGE_SIZE: usize = 4096;

/// `struct gnttab_map_grant_ref`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapGrantRef {
    /// IN: where to map (a guest-physical address for HVM/PVH).
    pub host_addr: u64,
    /// IN: `GNTMAP_*`.
    pub flags: u32,
    /// IN: the grant reference.
    pub gref: u32,
    /// IN: the granting domain.
    pub dom: u16,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// OUT: the handle for unmapping.
    pub handle: u32,
    /// OUT: the bus address (device mappings only).
    pub dev_bus_addr: u64,
}

/// `struct gnttab_unmap_grant_ref`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnmapGrantRef {
    /// IN: the address mapped.
    pub host_addr: u64,
    /// IN: the bus address (0: no device mapping).
    pub dev_bus_addr: u64,
    /// IN: the handle `map` returned.
    pub handle: u32,
    /// OUT: `GNTST_*`.
    pub status: i16,
}

const _: () = {
    use core::mem::{offset_of, size_of};
    // grant_table.h, checked with gcc at Xen c447b7308b13.
    assert!(size_of::<MapGrantRef>() == 32);
    assert!(offset_of!(MapGrantRef, host_addr) == 0);
    assert!(offset_of!(MapGrantRef, flags) == 8);
    assert!(offset_of!(MapGrantRef, gref) == 12);
    assert!(offset_of!(MapGrantRef, dom) == 16);
    assert!(offset_of!(MapGrantRef, status) == 18);
    assert!(offset_of!(MapGrantRef, handle) == 20);
    assert!(offset_of!(MapGrantRef, dev_bus_addr) == 24);
    assert!(size_of::<UnmapGrantRef>() == 24);
    assert!(offset_of!(UnmapGrantRef, dev_bus_addr) == 8);
    assert!(offset_of!(UnmapGrantRef, handle) == 16);
    assert!(offset_of!(UnmapGrantRef, status) == 20);
};

/// A `GNTST_*` status.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct GrantStatus(pub i16);

impl GrantStatus {
    /// `GNTST_okay`.
    pub const OKAY: GrantStatus = GrantStatus(0);
    /// `GNTST_bad_domain`.
    pub const BAD_DOMAIN: GrantStatus = GrantStatus(-2);
    /// `GNTST_bad_gntref`.
    pub const BAD_GNTREF: GrantStatus = GrantStatus(-3);
    /// `GNTST_bad_handle`.
    pub const BAD_HANDLE: GrantStatus = GrantStatus(-4);
    /// `GNTST_eagain`: the frame is paged out; try again.
    pub const EAGAIN: GrantStatus = GrantStatus(-12);

    /// The name `grant_table.h` gives it.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "GNTST_okay",
            -1 => "GNTST_general_error",
            -2 => "GNTST_bad_domain",
            -3 => "GNTST_bad_gntref",
            -4 => "GNTST_bad_handle",
            -5 => "GNTST_bad_virt_addr",
            -6 => "GNTST_bad_dev_addr",
            -7 => "GNTST_no_device_space",
            -8 => "GNTST_permission_denied",
            -9 => "GNTST_bad_page",
            -10 => "GNTST_bad_copy_arg",
            -11 => "GNTST_address_too_big",
            -12 => "GNTST_eagain",
            -13 => "GNTST_no_space",
            _ => "GNTST_unknown",
        }
    }
}

impl fmt::Display for GrantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

impl fmt::Debug for GrantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a grant operation failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GrantError {
    /// The hypercall itself failed.
    Hypercall(Errno),
    /// The operation's status.
    Status(GrantStatus),
}

impl fmt::Display for GrantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantError::Hypercall(e) => write!(f, "grant_table_op failed: {e}"),
            GrantError::Status(s) => write!(f, "grant operation failed: {s}"),
        }
    }
}

/// A mapped grant.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Mapping {
    /// Where it is mapped (guest-physical; the same virtual address under identity mapping).
    pub host_addr: u64,
    /// The handle to unmap it with.
    pub handle: u32,
}

/// Attempts at an operation Xen answers with `GNTST_eagain` (a paged-out frame), yielding
/// in between, before giving up.
const EAGAIN_TRIES: usize = 16;

/// Maps grant `gref` of domain `dom` at guest-physical `host_addr` (page-aligned, in a hole
/// of the p2m: see the module notes), read-write unless `readonly`.
pub fn map_grant_ref(
    hc: &mut impl Hypercalls,
    dom: u16,
    gref: u32,
    host_addr: u64,
    readonly: bool,
) -> Result<Mapping, GrantError> {
    let flags = GNTMAP_HOST_MAP | if readonly { GNTMAP_READONLY } else { 0 };
    for _ in 0..EAGAIN_TRIES {
        let mut op = MapGrantRef {
            host_addr,
            flags,
            gref,
            dom,
            ..MapGrantRef::default()
        };
        Errno::check(hc.call3(nr::GRANT_TABLE_OP, GNTTABOP_MAP_GRANT_REF, arg(&mut op), 1))
            .map_err(GrantError::Hypercall)?;
        match GrantStatus(op.status) {
            GrantStatus::OKAY => {
                return Ok(Mapping {
                    host_addr,
                    handle: op.handle,
                });
            }
            GrantStatus::EAGAIN => {
                let _ = sched::yield_now(hc);
            }
            other => return Err(GrantError::Status(other)),
        }
    }
    Err(GrantError::Status(GrantStatus::EAGAIN))
}

/// Unmaps a mapping made by [`map_grant_ref`].
pub fn unmap_grant_ref(hc: &mut impl Hypercalls, mapping: Mapping) -> Result<(), GrantError> {
    let mut op = UnmapGrantRef {
        host_addr: mapping.host_addr,
        dev_bus_addr: 0,
        handle: mapping.handle,
        status: 0,
    };
    Errno::check(hc.call3(
        nr::GRANT_TABLE_OP,
        GNTTABOP_UNMAP_GRANT_REF,
        arg(&mut op),
        1,
    ))
    .map_err(GrantError::Hypercall)?;
    match GrantStatus(op.status) {
        GrantStatus::OKAY => Ok(()),
        other => Err(GrantError::Status(other)),
    }
}

/// The page-aligned range where foreign pages are mapped, handed out a page at a time.
#[derive(Debug)]
pub struct MapArea {
    base: usize,
    free: Vec<bool>,
}

impl MapArea {
    /// The range of `pages` pages at `base`; `None` unless `base` is page-aligned and
    /// non-zero, `pages` non-zero, and the range does not wrap.
    pub fn new(base: usize, pages: usize) -> Option<MapArea> {
        let bytes = pages.checked_mul(PAGE_SIZE)?;
        base.checked_add(bytes)?;
        if base == 0 || !base.is_multiple_of(PAGE_SIZE) || pages == 0 {
            return None;
        }
        Some(MapArea {
            base,
            free: vec![true; pages],
        })
    }

    /// Takes a free page: its slot and address.
    pub fn take(&mut self) -> Option<(usize, usize)> {
        let slot = self.free.iter().position(|&f| f)?;
        *self.free.get_mut(slot)? = false;
        Some((slot, self.base + slot * PAGE_SIZE))
    }

    /// Gives a page back.
    pub fn give(&mut self, slot: usize) {
        if let Some(f) = self.free.get_mut(slot) {
            *f = true;
        }
    }

    /// The first page's address.
    pub fn base(&self) -> usize {
        self.base
    }

    /// Pages in the area.
    pub fn pages(&self) -> usize {
        self.free.len()
    }

    /// Pages free.
    pub fn available(&self) -> usize {
        self.free.iter().filter(|&&f| f).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xenfake::FakeXen;

    #[test]
    fn map_and_unmap() {
        let mut xen = FakeXen::new();
        xen.add_domain(4);
        let m = map_grant_ref(&mut xen, 4, GNTTAB_RESERVED_XENSTORE, 0x1_0000_0000, false).unwrap();
        assert_eq!(m.host_addr, 0x1_0000_0000);
        let (op, args) = *xen.calls().last().unwrap();
        assert_eq!(op, nr::GRANT_TABLE_OP);
        assert_eq!(args[0], GNTTABOP_MAP_GRANT_REF);
        assert_eq!(args[2], 1, "one operation");
        assert_eq!(xen.mapped_at(0x1_0000_0000), Some(4));
        assert_eq!(xen.last_map_flags(), Some(GNTMAP_HOST_MAP));
        unmap_grant_ref(&mut xen, m).unwrap();
        assert_eq!(xen.mapped_at(0x1_0000_0000), None);
        assert_eq!(
            unmap_grant_ref(&mut xen, m),
            Err(GrantError::Status(GrantStatus::BAD_HANDLE))
        );
    }

    #[test]
    fn statuses() {
        let mut xen = FakeXen::new();
        assert_eq!(
            map_grant_ref(&mut xen, 9, 1, 0x1000, false),
            Err(GrantError::Status(GrantStatus::BAD_DOMAIN))
        );
        xen.add_domain(9);
        assert_eq!(
            map_grant_ref(&mut xen, 9, 2, 0x1000, false),
            Err(GrantError::Status(GrantStatus::BAD_GNTREF))
        );
        // Paged out twice, then mapped.
        xen.map_eagain(2);
        assert!(map_grant_ref(&mut xen, 9, 1, 0x1000, false).is_ok());
        assert_eq!(xen.yields(), 2);
        xen.fail_next(nr::GRANT_TABLE_OP, Errno::EFAULT);
        assert_eq!(
            map_grant_ref(&mut xen, 9, 1, 0x2000, false),
            Err(GrantError::Hypercall(Errno::EFAULT))
        );
        assert_eq!(GrantStatus(-8).name(), "GNTST_permission_denied");
        assert_eq!(
            alloc::format!("{}", GrantStatus(-99)),
            "GNTST_unknown (-99)"
        );
    }

    #[test]
    fn map_area() {
        assert!(MapArea::new(0, 1).is_none());
        assert!(MapArea::new(0x1001, 1).is_none());
        assert!(MapArea::new(0x1000, 0).is_none());
        assert!(MapArea::new(usize::MAX & !0xfff, 2).is_none());
        let mut a = MapArea::new(0x10_0000, 2).unwrap();
        assert_eq!(a.take(), Some((0, 0x10_0000)));
        assert_eq!(a.take(), Some((1, 0x10_1000)));
        assert_eq!(a.take(), None);
        a.give(0);
        a.give(7);
        assert_eq!(a.available(), 1);
        assert_eq!(a.take(), Some((0, 0x10_0000)));
    }
}
