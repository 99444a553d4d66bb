//! The `memory_op` hypercall (`xen/include/public/memory.h`): `XENMEM_add_to_physmap`, to
//! place `shared_info` in our guest-physical map; `XENMEM_memory_map`, our own memory map
//! where the PVH start info carries none; `XENMEM_current_reservation`, how much of it is
//! populated ([`populated_ram_end`]).

use crate::evtchn::DOMID_SELF;
use crate::hypercall::{Errno, Hypercalls, arg, nr};

/// `XENMEM_add_to_physmap`.
pub const XENMEM_ADD_TO_PHYSMAP: u64 = 7;
/// `XENMAPSPACE_shared_info`.
pub const XENMAPSPACE_SHARED_INFO: u32 = 0;
/// `XENMEM_memory_map`: the domain's pseudo-physical memory map, as set when it was built.
pub const XENMEM_MEMORY_MAP: u64 = 9;
/// `E820_RAM` in an entry's `kind`.
pub const E820_RAM: u32 = 1;
/// `XENMEM_current_reservation`: the pages a domain has.
pub const XENMEM_CURRENT_RESERVATION: u64 = 3;
/// The pages Xen's HVM/PVH domain builders populate outside RAM, in the reserved region below
/// 4 GiB (`X86_HVM_NR_SPECIAL_PAGES`: store, console, ...); `init-xenstore-domain` adds them
/// to the domain's limit in the same way.
pub const SPECIAL_PAGES: u64 = 8;

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

/// One entry of a memory map in BIOS E820 form (Xen's `struct e820entry`: packed, 20 bytes),
/// what `XENMEM_memory_map` fills.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct E820Entry {
    /// Start (guest-physical).
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// `E820_RAM`, reserved, ...
    pub kind: u32,
}

/// `struct xen_memory_map`.
#[repr(C)]
#[derive(Debug)]
struct MemoryMap {
    /// In: the buffer's capacity, in entries; out: how many Xen stored.
    nr_entries: u32,
    /// The buffer's address (a guest handle).
    buffer: u64,
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<E820Entry>() == 20);
    assert!(size_of::<MemoryMap>() == 16);
    assert!(offset_of!(MemoryMap, buffer) == 8);
};

/// `XENMEM_memory_map`: fills `out` with our memory map and returns how many entries Xen
/// stored (never more than `out` holds). A domain built by Xen 4.17's `init-xenstore-domain`
/// gets a version-0 PVH start info without a map; this is where the map is then.
pub fn memory_map(hc: &mut impl Hypercalls, out: &mut [E820Entry]) -> Result<usize, Errno> {
    let mut map = MemoryMap {
        nr_entries: u32::try_from(out.len()).unwrap_or(u32::MAX),
        buffer: out.as_mut_ptr().expose_provenance() as u64,
    };
    Errno::check(hc.call2(nr::MEMORY_OP, XENMEM_MEMORY_MAP, arg(&mut map)))?;
    Ok((map.nr_entries as usize).min(out.len()))
}

/// `XENMEM_current_reservation` for our own domain: the pages it has (populated RAM plus
/// [`SPECIAL_PAGES`] at boot).
pub fn current_reservation(hc: &mut impl Hypercalls) -> Result<u64, Errno> {
    let mut domid = DOMID_SELF;
    Errno::check(hc.call2(nr::MEMORY_OP, XENMEM_CURRENT_RESERVATION, arg(&mut domid)))
}

/// The bytes of RAM a domain with `pages` ([`current_reservation`]) has populated: all its
/// pages but the [`SPECIAL_PAGES`].
pub fn populated_ram_bytes(pages: u64) -> u64 {
    pages.saturating_sub(SPECIAL_PAGES).saturating_mul(4096)
}

/// Where the populated RAM that holds `addr` ends, given the memory map's RAM ranges
/// `(addr, size)` (in any order) and the domain's `pages` ([`current_reservation`]); `None`
/// if `addr` is not in populated RAM.
///
/// A domain may be given more RAM in its map than is populated: `init-xenstore-domain
/// --maxmem` maps RAM up to the maximum but populates only `--memory`, leaving the rest to be
/// ballooned in. Xen's builders populate the RAM ranges from the lowest address up
/// (`meminit_hvm`), so the populated part is the first `pages - SPECIAL_PAGES` pages of RAM in
/// address order; a page past it is not there, and touching it faults.
pub fn populated_ram_end(ram: &[(u64, u64)], pages: u64, addr: u64) -> Option<u64> {
    let budget = populated_ram_bytes(pages);
    ram.iter().find_map(|&(start, size)| {
        // The populated bytes below this range: the RAM of every range under it.
        let below: u64 = ram
            .iter()
            .filter(|&&(other, _)| other < start)
            .fold(0, |sum, &(_, s)| sum.saturating_add(s));
        let here = size.min(budget.saturating_sub(below));
        let end = start.saturating_add(here);
        (start <= addr && addr < end).then_some(end)
    })
}

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

    #[test]
    fn memory_map_is_read_into_the_buffer_and_capped_by_it() {
        let mut xen = FakeXen::new();
        let ram = |addr, size| E820Entry {
            addr,
            size,
            kind: E820_RAM,
        };
        xen.set_memory_map(&[ram(0, 0xa0000), ram(0x10_0000, 0x70_0000)]);
        let mut buf = [E820Entry::default(); 4];
        assert_eq!(memory_map(&mut xen, &mut buf), Ok(2));
        assert_eq!(buf[1], ram(0x10_0000, 0x70_0000));
        // A buffer too small for the map: Xen stores what fits and says so.
        let mut one = [E820Entry::default(); 1];
        assert_eq!(memory_map(&mut xen, &mut one), Ok(1));
        assert_eq!(one[0], ram(0, 0xa0000));
    }

    #[test]
    fn current_reservation_encoding() {
        let mut xen = FakeXen::new();
        xen.set_reservation(2056);
        assert_eq!(current_reservation(&mut xen), Ok(2056));
        let (op, args) = *xen.calls().last().unwrap();
        assert_eq!((op, args[0]), (nr::MEMORY_OP, XENMEM_CURRENT_RESERVATION));
    }

    #[test]
    fn populated_ram_is_the_lowest_ram_first() {
        const MIB: u64 = 1 << 20;
        // `--memory 8 --maxmem 32`: RAM mapped to 32 MiB, 8 MiB (+ special pages) populated.
        let ram = [(0, 32 * MIB)];
        let pages = 2048 + SPECIAL_PAGES;
        assert_eq!(populated_ram_end(&ram, pages, 2 * MIB), Some(8 * MIB));
        assert_eq!(populated_ram_end(&ram, pages, 8 * MIB), None);
        // Without --maxmem the map and the population agree.
        assert_eq!(populated_ram_end(&[(0, 8 * MIB)], pages, 0), Some(8 * MIB));
        // Split RAM, listed out of order: the low range fills first.
        let split = [(16 * MIB, 16 * MIB), (0, 4 * MIB)];
        assert_eq!(populated_ram_end(&split, pages, MIB), Some(4 * MIB));
        assert_eq!(populated_ram_end(&split, pages, 16 * MIB), Some(20 * MIB));
        assert_eq!(populated_ram_end(&split, pages, 20 * MIB), None);
        // Nothing populated, or a hostile count: no overflow, no RAM beyond the map.
        assert_eq!(populated_ram_end(&ram, 3, 0), None);
        assert_eq!(populated_ram_end(&ram, u64::MAX, 0), Some(32 * MIB));
        assert_eq!(
            populated_ram_end(&[(u64::MAX, u64::MAX)], u64::MAX, u64::MAX - 1),
            None
        );
    }
}
