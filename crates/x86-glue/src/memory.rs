//! The `memory_op` hypercall: `XENMEM_add_to_physmap` (`xen/include/public/memory.h`), to
//! place `shared_info` in our guest-physical map.

use crate::evtchn::DOMID_SELF;
use crate::hypercall::{Errno, Hypercalls, arg, nr};

/// `XENMEM_add_to_physmap`.
pub const XENMEM_ADD_TO_PHYSMAP: u64 = 7;
/// `XENMAPSPACE_shared_info`.
pub const XENMAPSPACE_SHARED_INFO: u32 = 0;

/// `struct xen_add_to_physmap`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddToPhysmap {
    /// The domain whose map changes.
    pub domid: u16,
    /// Pages (`XENMAPSPACE_gmfn_range` only).
    pub size: u16,
    /// `XENMAPSPACE_*`.
    pub space: u32,
    /// Index into the space.
    pub idx: u64,
    /// Where the page appears (a guest frame number).
    pub gpfn: u64,
}

const _: () = {
    use core::mem::{offset_of, size_of};
    // memory.h, checked with gcc at Xen c447b7308b13.
    assert!(size_of::<AddToPhysmap>() == 24);
    assert!(offset_of!(AddToPhysmap, size) == 2);
    assert!(offset_of!(AddToPhysmap, space) == 4);
    assert!(offset_of!(AddToPhysmap, idx) == 8);
    assert!(offset_of!(AddToPhysmap, gpfn) == 16);
};

/// `XENMEM_add_to_physmap` for our own domain.
pub fn add_to_physmap(
    hc: &mut impl Hypercalls,
    space: u32,
    idx: u64,
    gpfn: u64,
) -> Result<(), Errno> {
    let mut x = AddToPhysmap {
        domid: DOMID_SELF,
        size: 0,
        space,
        idx,
        gpfn,
    };
    Errno::check(hc.call2(nr::MEMORY_OP, XENMEM_ADD_TO_PHYSMAP, arg(&mut x))).map(|_| ())
}

/// Maps `shared_info` at guest frame `gpfn` (whatever was there is replaced: a RAM page is
/// given back to Xen, as Linux's HVM code does with the page it allocates for it).
pub fn map_shared_info(hc: &mut impl Hypercalls, gpfn: u64) -> Result<(), Errno> {
    add_to_physmap(hc, XENMAPSPACE_SHARED_INFO, 0, gpfn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xenfake::FakeXen;

    #[test]
    fn shared_info_encoding() {
        let mut xen = FakeXen::new();
        map_shared_info(&mut xen, 0x1234).unwrap();
        assert_eq!(xen.shared_info_gpfn(), Some(0x1234));
        let (op, args) = *xen.calls().last().unwrap();
        assert_eq!((op, args[0]), (nr::MEMORY_OP, XENMEM_ADD_TO_PHYSMAP));
        assert_eq!(add_to_physmap(&mut xen, 99, 0, 1), Err(Errno::EINVAL));
    }
}
