//! The PVH start-info structure (`struct hvm_start_info`, Xen's
//! `public/arch-x86/hvm/start_info.h`): the command line and the memory map the loader
//! passes in `%ebx`.
//!
//! Everything is copied out of the loader's memory into fixed-size private buffers, and
//! addresses are checked to lie in the identity-mapped low memory before they are read.

use core::ptr;

/// `XEN_HVM_START_MAGIC_VALUE`.
const MAGIC: u32 = 0x336e_c578;
use crate::boot::MAPPED;
/// `XEN_HVM_MEMMAP_TYPE_RAM`.
pub(crate) const RAM: u32 = 1;

/// One memory-map entry (`struct hvm_memmap_table_entry`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Region {
    pub(crate) addr: u64,
    pub(crate) size: u64,
    pub(crate) kind: u32,
}

/// What the image uses of the start info.
#[derive(Debug)]
pub(crate) struct StartInfo {
    /// The structure's address, as received.
    pub(crate) addr: u64,
    /// Whether the magic value was there.
    pub(crate) valid: bool,
    pub(crate) version: u32,
    cmdline: [u8; 256],
    cmdline_len: usize,
    regions: [Region; 32],
    n_regions: usize,
    /// The pages the domain has (`XENMEM_current_reservation`), when running on Xen: less
    /// RAM may be populated than the map holds.
    populated: Option<u64>,
}

/// Reads `T` at physical address `addr`, if it lies in the identity-mapped low memory.
fn read<T: Copy>(addr: u64) -> Option<T> {
    let end = addr.checked_add(core::mem::size_of::<T>() as u64)?;
    if addr == 0 || end > MAPPED {
        return None;
    }
    // SAFETY: the range is in the identity-mapped low memory (checked above), where the
    // loader (Xen, or QEMU's PVH loader) placed the structure. The loader is trusted to have
    // put it outside the image, so no Rust object occupies it; it is read once,
    // unaligned-tolerant, as the integer types `T` is used with here (any bit pattern is
    // valid).
    Some(unsafe { ptr::read_unaligned(addr as *const T) })
}

impl StartInfo {
    /// Parses the structure at `addr` (from `%ebx` at the PVH entry).
    pub(crate) fn parse(addr: u64) -> StartInfo {
        let mut info = StartInfo {
            addr,
            valid: false,
            version: 0,
            cmdline: [0; 256],
            cmdline_len: 0,
            regions: [Region::default(); 32],
            n_regions: 0,
            populated: None,
        };
        if read::<u32>(addr) != Some(MAGIC) {
            return info;
        }
        info.valid = true;
        info.version = read::<u32>(addr + 4).unwrap_or(0);
        if let Some(cmdline) = read::<u64>(addr + 24).filter(|&p| p != 0) {
            for i in 0..info.cmdline.len() {
                match read::<u8>(cmdline + i as u64) {
                    Some(0) | None => break,
                    Some(b) => {
                        info.cmdline[i] = b;
                        info.cmdline_len = i + 1;
                    }
                }
            }
        }
        if info.version >= 1 {
            let table = read::<u64>(addr + 40).unwrap_or(0);
            let entries = read::<u32>(addr + 48).unwrap_or(0) as usize;
            for i in 0..entries.min(info.regions.len()) {
                let at = table + 24 * i as u64;
                let (Some(a), Some(s), Some(k)) =
                    (read::<u64>(at), read::<u64>(at + 8), read::<u32>(at + 16))
                else {
                    break;
                };
                info.regions[i] = Region {
                    addr: a,
                    size: s,
                    kind: k,
                };
                info.n_regions = i + 1;
            }
        }
        info
    }

    /// The command line's bytes (`-append` under QEMU).
    pub(crate) fn cmdline_bytes(&self) -> &[u8] {
        &self.cmdline[..self.cmdline_len]
    }

    /// The command line as text, for messages (`<not UTF-8>` if it is not).
    pub(crate) fn cmdline(&self) -> &str {
        core::str::from_utf8(self.cmdline_bytes()).unwrap_or("<not UTF-8>")
    }

    /// The value of `key=value` on the command line.
    pub(crate) fn option(&self, key: &str) -> Option<&str> {
        self.cmdline()
            .split_ascii_whitespace()
            .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
    }

    /// Replaces the memory map (with the one Xen gives through `XENMEM_memory_map` when the
    /// start info has none); what does not fit is left out.
    pub(crate) fn set_regions(&mut self, regions: impl IntoIterator<Item = Region>) {
        self.n_regions = 0;
        for (slot, region) in self.regions.iter_mut().zip(regions) {
            *slot = region;
            self.n_regions += 1;
        }
    }

    /// The memory map.
    pub(crate) fn regions(&self) -> &[Region] {
        &self.regions[..self.n_regions]
    }

    /// Sets the pages the domain has (see [`StartInfo::ram_end`]).
    pub(crate) fn set_populated(&mut self, pages: u64) {
        self.populated = Some(pages);
    }

    /// The end of the RAM that holds `addr`, if RAM does: the end of its region of the memory
    /// map, or on Xen the end of the populated part of it
    /// ([`x86_glue::memory::populated_ram_end`]; without a page count, all of it).
    pub(crate) fn ram_end(&self, addr: u64) -> Option<u64> {
        let mut ram = [(0, 0); 32];
        let mut n = 0;
        for (slot, r) in ram
            .iter_mut()
            .zip(self.regions().iter().filter(|r| r.kind == RAM))
        {
            *slot = (r.addr, r.size);
            n += 1;
        }
        let pages = self.populated.unwrap_or(u64::MAX);
        x86_glue::memory::populated_ram_end(&ram[..n], pages, addr)
    }
}
