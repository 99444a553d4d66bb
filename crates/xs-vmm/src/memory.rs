//! Guest memory: vm-memory's mmap-backed regions, with the checked accessors the hypercall
//! handlers use. Every guest-supplied address goes through here: an address outside guest
//! memory is a [`Fault`] (Xen's `EFAULT`), never a panic.

use std::ptr::NonNull;

use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

use crate::layout::{PAGE_SHIFT, PAGE_SIZE};

/// A guest address that is not (wholly) in guest memory.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Fault(pub u64);

/// The guest's RAM and special pages.
#[derive(Debug)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
}

impl GuestRam {
    /// Anonymous memory for each `(guest address, bytes)` range.
    pub fn new(ranges: &[(u64, usize)]) -> Result<GuestRam, String> {
        let ranges: Vec<_> = ranges
            .iter()
            .map(|&(gpa, len)| (GuestAddress(gpa), len))
            .collect();
        let mem = GuestMemoryMmap::<()>::from_ranges(&ranges)
            .map_err(|e| format!("guest memory: {e}"))?;
        Ok(GuestRam { mem })
    }

    /// Each region as (guest address, bytes, host address), for KVM's memory slots.
    pub fn regions(&self) -> Vec<(u64, u64, u64)> {
        self.mem
            .iter()
            .filter_map(|r| {
                let host = r.get_host_address(MemoryRegionAddress(0)).ok()?;
                Some((r.start_addr().0, r.len(), host as u64))
            })
            .collect()
    }

    /// The host address of `[gpa, gpa + len)`, if it lies in one region.
    pub fn host_range(&self, gpa: u64, len: u64) -> Option<NonNull<u8>> {
        let region = self.mem.find_region(GuestAddress(gpa))?;
        let offset = gpa.checked_sub(region.start_addr().0)?;
        if offset.checked_add(len)? > region.len() {
            return None;
        }
        let host = region.get_host_address(MemoryRegionAddress(offset)).ok()?;
        NonNull::new(host)
    }

    /// The host address of guest frame `gfn`, if it is guest memory.
    pub fn page(&self, gfn: u64) -> Option<NonNull<u8>> {
        let gpa = gfn.checked_mul(PAGE_SIZE)?;
        if gpa >> PAGE_SHIFT != gfn {
            return None;
        }
        self.host_range(gpa, PAGE_SIZE)
    }

    /// Whether `gfn` is guest memory.
    pub fn has_page(&self, gfn: u64) -> bool {
        self.page(gfn).is_some()
    }

    /// Reads `buf.len()` bytes at `gpa`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), Fault> {
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| Fault(gpa))
    }

    /// Writes `buf` at `gpa`.
    pub fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), Fault> {
        self.mem
            .write_slice(buf, GuestAddress(gpa))
            .map_err(|_| Fault(gpa))
    }

    /// Reads a little-endian `u64` at `gpa`.
    pub fn read_u64(&self, gpa: u64) -> Result<u64, Fault> {
        let mut b = [0; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a little-endian `u64` at `gpa`.
    pub fn write_u64(&self, gpa: u64, value: u64) -> Result<(), Fault> {
        self.write(gpa, &value.to_le_bytes())
    }

    /// Zeroes the page `gfn`.
    pub fn zero_page(&self, gfn: u64) -> Result<(), Fault> {
        self.write(gfn << PAGE_SHIFT, &[0; PAGE_SIZE as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_outside_memory_fault() {
        let ram = GuestRam::new(&[(0, 0x4000), (0x10_0000, 0x1000)]).unwrap();
        assert!(ram.write_u64(0x3ff8, 7).is_ok());
        assert_eq!(ram.read_u64(0x3ff8), Ok(7));
        assert_eq!(ram.read_u64(0x3ffc), Err(Fault(0x3ffc)));
        assert_eq!(ram.read_u64(u64::MAX - 3), Err(Fault(u64::MAX - 3)));
        assert!(ram.page(3).is_some());
        assert!(ram.page(4).is_none());
        assert!(ram.page(0x100).is_some());
        assert!(ram.page(u64::MAX).is_none());
        assert!(ram.page(u64::MAX >> 11).is_none());
        assert!(ram.host_range(0x3000, 0x1001).is_none());
        assert_eq!(ram.regions().len(), 2);
    }
}
