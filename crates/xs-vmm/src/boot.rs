//! Loading the guest: its ELF image, and the machine state it is entered in.
//!
//! xs-vmm's boot protocol (what `crates/xs-vmm-guest/src/boot.rs` expects): the PT_LOAD
//! segments at their physical addresses (at or above 1 MiB, in RAM), the rest of RAM zero;
//! the ELF entry entered in 64-bit mode at CPL0 with interrupts off, paging on and `[0,
//! 4 GiB)` identity-mapped with 2 MiB pages (writable, user-accessible, executable), SSE
//! enabled (CR4.OSFXSR), a GDT of kernel code 0x08, kernel data 0x10, user data 0x18, user
//! code 0x20 and a TSS 0x28 (loaded) whose RSP0 is the kernel stack, `rsp` at the top of that
//! stack and `rdi` the bytes of RAM. It is what a boot loader does for a 64-bit kernel; the
//! guest sets up its own IDT.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

use crate::layout::{GDT, IMAGE_MIN, KERNEL_STACK_TOP, PAGE_SIZE, PD, PDPT, PML4, RAM_SIZE, TSS};
use crate::memory::GuestRam;

/// The kernel code selector.
pub const KERNEL_CS: u16 = 0x08;
/// The kernel data selector.
pub const KERNEL_DS: u16 = 0x10;
/// The TSS selector.
pub const TSS_SELECTOR: u16 = 0x28;

/// The GDT: null, kernel code64, kernel data, user data (DPL 3), user code64 (DPL 3), and
/// the TSS descriptor's two slots (filled by [`tss_descriptor`]).
const GDT_ENTRIES: [u64; 5] = [
    0,
    0x00af_9a00_0000_ffff,
    0x00cf_9200_0000_ffff,
    0x00cf_f200_0000_ffff,
    0x00af_fa00_0000_ffff,
];

/// A loaded image.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Image {
    /// Its entry point.
    pub entry: u64,
    /// The end of its highest segment.
    pub end: u64,
}

/// Loads an ELF64 x86-64 executable's PT_LOAD segments into `ram`.
pub fn load_elf(ram: &GuestRam, elf: &[u8]) -> Result<Image, String> {
    let u16_at = |at: usize| -> Result<u16, String> {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| format!("the ELF is cut short at {at}"))
    };
    let u32_at = |at: usize| -> Result<u32, String> {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
            .ok_or_else(|| format!("the ELF is cut short at {at}"))
    };
    let u64_at = |at: usize| -> Result<u64, String> {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
            .ok_or_else(|| format!("the ELF is cut short at {at}"))
    };
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a little-endian ELF64 file".into());
    }
    if u16_at(18)? != 62 {
        return Err("not an x86-64 ELF".into());
    }
    let entry = u64_at(24)?;
    let phoff = usize::try_from(u64_at(32)?).map_err(|_| "bad e_phoff")?;
    let phentsize = usize::from(u16_at(54)?);
    let phnum = usize::from(u16_at(56)?);
    if phentsize < 56 {
        return Err(format!("program headers of {phentsize} bytes"));
    }
    let mut end = 0;
    let mut entry_loaded = false;
    for i in 0..phnum {
        let ph = phoff
            .checked_add(i.checked_mul(phentsize).ok_or("too many program headers")?)
            .ok_or("bad program header offset")?;
        if u32_at(ph)? != 1 {
            continue; // not PT_LOAD
        }
        let offset = u64_at(ph + 8)?;
        let paddr = u64_at(ph + 24)?;
        let filesz = u64_at(ph + 32)?;
        let memsz = u64_at(ph + 40)?;
        let seg_end = paddr.checked_add(memsz).ok_or("segment wraps")?;
        if paddr < IMAGE_MIN || seg_end > RAM_SIZE || filesz > memsz {
            return Err(format!(
                "segment {paddr:#x}..{seg_end:#x} is not within [{IMAGE_MIN:#x}, {RAM_SIZE:#x})"
            ));
        }
        let from = usize::try_from(offset).map_err(|_| "bad segment offset")?;
        let to = from
            .checked_add(usize::try_from(filesz).map_err(|_| "bad segment size")?)
            .ok_or("bad segment size")?;
        let bytes = elf.get(from..to).ok_or("a segment lies outside the file")?;
        ram.write(paddr, bytes)
            .map_err(|f| format!("segment at {:#x} is not RAM", f.0))?;
        entry_loaded |= (paddr..seg_end).contains(&entry);
        end = end.max(seg_end);
    }
    if !entry_loaded {
        return Err(format!("the entry point {entry:#x} is in no segment"));
    }
    Ok(Image { entry, end })
}

/// The TSS descriptor (two GDT slots) for a TSS at `base`.
fn tss_descriptor(base: u64) -> [u64; 2] {
    let limit = 0x67u64;
    let low = limit
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40) // present, available 64-bit TSS
        | (((base >> 24) & 0xff) << 56);
    [low, base >> 32]
}

/// Writes the page tables, the GDT and the TSS into `ram`.
pub fn write_tables(ram: &GuestRam) -> Result<(), String> {
    let fault = |f: crate::memory::Fault| format!("boot tables at {:#x}: not RAM", f.0);
    const PRESENT_RW_USER: u64 = 0x7;
    const HUGE: u64 = 0x80;
    ram.write_u64(PML4, PDPT | PRESENT_RW_USER).map_err(fault)?;
    for gib in 0..4u64 {
        let pd = PD + gib * PAGE_SIZE;
        ram.write_u64(PDPT + gib * 8, pd | PRESENT_RW_USER)
            .map_err(fault)?;
        for i in 0..512u64 {
            let addr = (gib << 30) | (i << 21);
            ram.write_u64(pd + i * 8, addr | PRESENT_RW_USER | HUGE)
                .map_err(fault)?;
        }
    }
    for (i, e) in GDT_ENTRIES.iter().chain(&tss_descriptor(TSS)).enumerate() {
        ram.write_u64(GDT + i as u64 * 8, *e).map_err(fault)?;
    }
    // The TSS: RSP0 at offset 4, the I/O bitmap offset past the end (no bitmap: IOPL 3
    // opens the ports to CPL3).
    ram.write(TSS + 4, &KERNEL_STACK_TOP.to_le_bytes())
        .map_err(fault)?;
    ram.write(TSS + 102, &104u16.to_le_bytes()).map_err(fault)?;
    Ok(())
}

/// A flat 64-bit code or data segment.
fn segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// The special registers of the entry state, over what KVM reset them to.
pub fn entry_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    sregs.cs = segment(KERNEL_CS, true);
    let data = segment(KERNEL_DS, false);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: TSS,
        limit: 0x67,
        selector: TSS_SELECTOR,
        type_: 0xb, // busy 64-bit TSS
        present: 1,
        s: 0,
        ..Default::default()
    };
    sregs.gdt.base = GDT;
    sregs.gdt.limit = ((GDT_ENTRIES.len() + 2) * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    // CR0: PE, MP, ET, NE, WP, PG. CR4: PAE, OSFXSR, OSXMMEXCPT. EFER: LME, LMA.
    sregs.cr0 = 0x8005_0033;
    sregs.cr3 = PML4;
    sregs.cr4 = 0x620;
    sregs.efer = 0x500;
    sregs
}

/// The general registers of the entry state.
pub fn entry_regs(image: &Image) -> kvm_regs {
    kvm_regs {
        rip: image.entry,
        rsp: KERNEL_STACK_TOP,
        rflags: 0x2,
        rdi: RAM_SIZE,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram() -> GuestRam {
        GuestRam::new(&[(0, RAM_SIZE as usize)]).unwrap()
    }

    /// A minimal ELF with one PT_LOAD segment of `code` at `paddr`.
    fn elf(paddr: u64, code: &[u8], entry: u64) -> Vec<u8> {
        let mut f = vec![0u8; 64 + 56];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        f[18..20].copy_from_slice(&62u16.to_le_bytes());
        f[24..32].copy_from_slice(&entry.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
        f[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes());
        f[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        f[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        f[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64 + 16).to_le_bytes());
        f.extend_from_slice(code);
        f
    }

    #[test]
    fn loads_a_segment() {
        let ram = ram();
        let image = load_elf(&ram, &elf(0x10_0000, &[0xf4, 0x90], 0x10_0000)).unwrap();
        assert_eq!(image.entry, 0x10_0000);
        assert_eq!(image.end, 0x10_0012);
        let mut b = [0; 2];
        ram.read(0x10_0000, &mut b).unwrap();
        assert_eq!(b, [0xf4, 0x90]);
    }

    #[test]
    fn rejects_bad_images() {
        let ram = ram();
        assert!(load_elf(&ram, b"").is_err());
        assert!(load_elf(&ram, b"\x7fELF\x01\x01").is_err());
        // Below 1 MiB (over the boot tables), past RAM, an entry outside the segments.
        assert!(load_elf(&ram, &elf(0x1000, &[0x90], 0x1000)).is_err());
        assert!(load_elf(&ram, &elf(RAM_SIZE - 1, &[0x90], RAM_SIZE - 1)).is_err());
        assert!(load_elf(&ram, &elf(0x10_0000, &[0x90], 0x20_0000)).is_err());
        // Every truncation fails cleanly.
        let good = elf(0x10_0000, &[0x90; 8], 0x10_0000);
        for n in 0..good.len() {
            assert!(load_elf(&ram, &good[..n]).is_err(), "{n}");
        }
    }

    #[test]
    fn tables_map_four_gib() {
        let ram = ram();
        write_tables(&ram).unwrap();
        assert_eq!(ram.read_u64(PML4).unwrap(), PDPT | 7);
        // The local APIC's 2 MiB page (0xfee00000) maps to itself.
        let pd = ram.read_u64(PDPT + 3 * 8).unwrap() & !0xfff;
        let e = ram
            .read_u64(pd + ((0xfee0_0000u64 >> 21) & 511) * 8)
            .unwrap();
        assert_eq!(e & !0xfff, 0xfee0_0000);
        assert_eq!(tss_descriptor(0x8100)[0] >> 40 & 0xff, 0x89);
    }
}
