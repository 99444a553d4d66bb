//! Minimal x86-64 PV kernels for the rig, a few hundred bytes each: ELF images that Xen's
//! domain builder (libxenguest's ELF loader) accepts, with a few instructions of code.
//!
//! - [`Guest::PowerOff`], for the create/destroy cycles: each guest is created paused
//!   (`xl create -p`) and destroyed, so what runs is the toolstack's and the XenStore's part of
//!   a domain's life (its nodes, INTRODUCE with a grant mapping and an event channel,
//!   `@introduceDomain`, the death seen through `VIRQ_DOM_EXC`, RELEASE, `@releaseDomain`).
//!   Debian's Linux takes ~6 s to build under TCG (the builder decompresses it); this takes
//!   none, so 100 cycles fit in a test step. Should it ever run, it asks Xen to power it off.
//! - [`Guest::BreakRing`], a hostile guest: it sets its XenStore ring's `req_prod` a ring and
//!   more ahead of `req_cons` (what `docs/misc/xenstore-ring.txt` calls a broken ring), kicks
//!   the store's event channel, and then sleeps for good (`SCHEDOP_poll` on its console's
//!   port, which nobody signals), so that the daemon can be watched with it alive.
//!
//! What the loader requires (Xen 4.17, `xen/common/libelf/libelf-dominfo.c`): an ELF64 for
//! x86-64 with a `PT_NOTE` of Xen notes saying `XEN_VERSION` "xen-3.0" and `LOADER` "generic"
//! (or `GUEST_OS` "linux"), and a writable or executable `PT_LOAD`. The layout is Mini-OS's:
//! `VIRT_BASE` and `PADDR_OFFSET` 0, so virtual = physical = link address; the hypercall page
//! where `HYPERCALL_PAGE` says. A PV guest starts with `rsi` pointing at its `start_info`,
//! which (with the XenStore page) lies in the initial mapping; Xen maps the machine-to-phys
//! table read-only at `MACH2PHYS_VIRT_START` in every 64-bit PV guest.

/// Xen's ELF note types (`xen/include/public/elfnote.h`).
const XEN_ELFNOTE_ENTRY: u32 = 1;
const XEN_ELFNOTE_HYPERCALL_PAGE: u32 = 2;
const XEN_ELFNOTE_VIRT_BASE: u32 = 3;
const XEN_ELFNOTE_PADDR_OFFSET: u32 = 4;
const XEN_ELFNOTE_XEN_VERSION: u32 = 5;
const XEN_ELFNOTE_GUEST_OS: u32 = 6;
const XEN_ELFNOTE_LOADER: u32 = 8;

/// Where the code starts, in the image and in the guest (virtual = physical = file offset).
const ENTRY: u64 = 0x400;
/// The code's variables (in the same writable segment).
const DATA: u64 = 0x800;
/// The page Xen fills with hypercall stubs, 32 bytes each.
const HYPERCALL_PAGE: u64 = 0x1000;
/// The image's memory: the file, then the hypercall page (zero-filled by the loader).
const MEMORY_SIZE: u64 = 0x2000;

/// Hypercalls (`xen/include/public/xen.h`) and their sub-operations.
const HYPERCALL_SCHED_OP: u32 = 29;
const HYPERCALL_EVENT_CHANNEL_OP: u32 = 32;
const SCHEDOP_SHUTDOWN: u32 = 2;
const SCHEDOP_POLL: u32 = 3;
const EVTCHNOP_SEND: u32 = 4;

/// `struct start_info` offsets: `store_mfn`, `store_evtchn`, `console.domU.evtchn`.
const START_INFO_STORE_MFN: u8 = 56;
const START_INFO_STORE_EVTCHN: u8 = 64;
const START_INFO_CONSOLE_EVTCHN: u8 = 80;
/// `MACH2PHYS_VIRT_START` of 64-bit PV guests: the machine-to-physical table.
const MACH2PHYS_VIRT_START: u64 = 0xffff_8000_0000_0000;
/// `struct xenstore_domain_interface`: `req_cons`, `req_prod`.
const RING_REQ_CONS: u32 = 0x800;
const RING_REQ_PROD: u32 = 0x804;
/// The request ring's size: `req_prod` further ahead than this is a broken ring.
const RING_SIZE: u32 = 1024;

/// The variables at [`DATA`]: the store's port (for `EVTCHNOP_send`), the console's port,
/// then a `struct sched_poll` (`ports` handle, `nr_ports`, padding, `timeout`: 0, none).
const DATA_STORE_PORT: u64 = DATA;
const DATA_CONSOLE_PORT: u64 = DATA + 4;
const DATA_SCHED_POLL: u64 = DATA + 8;
const DATA_SIZE: usize = 8 + 24;

/// What the guest does when it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Guest {
    /// Powers off at once (the cycles create it paused: it never runs).
    PowerOff,
    /// Breaks its XenStore ring, kicks the store, then sleeps for good.
    BreakRing,
}

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;

/// The image's bytes.
pub(crate) fn image(guest: Guest) -> Vec<u8> {
    let notes = notes();
    let notes_offset = EHDR_SIZE + 2 * PHDR_SIZE;
    let code = match guest {
        Guest::PowerOff => power_off(),
        Guest::BreakRing => break_ring(),
    };
    let entry = ENTRY as usize;
    assert!(
        ENTRY as usize + code.len() <= DATA as usize,
        "the code overlaps the data"
    );
    assert!(
        notes_offset + notes.len() <= entry,
        "the notes overlap the code"
    );
    let file_size = DATA as usize + DATA_SIZE;

    let mut elf = Vec::with_capacity(file_size);
    // ELF header: ELFCLASS64, little-endian, version 1, System V ABI; ET_EXEC, EM_X86_64.
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // e_machine: EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&ENTRY.to_le_bytes()); // e_entry
    elf.extend_from_slice(&(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&(EHDR_SIZE as u16).to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&(PHDR_SIZE as u16).to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    // PT_LOAD (read, write, execute): the whole file at 0, then the hypercall page.
    phdr(&mut elf, 1, 7, 0, 0, file_size as u64, MEMORY_SIZE, 0x1000);
    // PT_NOTE: the Xen notes.
    let notes_len = notes.len() as u64;
    phdr(
        &mut elf,
        4,
        4,
        notes_offset as u64,
        notes_offset as u64,
        notes_len,
        notes_len,
        4,
    );
    elf.extend_from_slice(&notes);
    elf.resize(entry, 0);
    elf.extend_from_slice(&code);
    elf.resize(DATA as usize, 0);
    let mut data = [0u8; DATA_SIZE];
    // sched_poll: ports = &console port, nr_ports = 1, timeout = 0 (none).
    data[8..16].copy_from_slice(&DATA_CONSOLE_PORT.to_le_bytes());
    data[16..20].copy_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&data);
    elf
}

/// One program header.
#[allow(clippy::too_many_arguments)]
fn phdr(
    out: &mut Vec<u8>,
    kind: u32,
    flags: u32,
    offset: u64,
    addr: u64,
    file: u64,
    mem: u64,
    align: u64,
) {
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
    out.extend_from_slice(&addr.to_le_bytes()); // p_paddr
    out.extend_from_slice(&file.to_le_bytes());
    out.extend_from_slice(&mem.to_le_bytes());
    out.extend_from_slice(&align.to_le_bytes());
}

fn notes() -> Vec<u8> {
    let mut out = Vec::new();
    let mut note = |kind: u32, desc: &[u8]| {
        out.extend_from_slice(&4u32.to_le_bytes()); // namesz: "Xen\0"
        out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(b"Xen\0");
        out.extend_from_slice(desc);
        out.resize(out.len().next_multiple_of(4), 0);
    };
    note(XEN_ELFNOTE_XEN_VERSION, b"xen-3.0\0");
    note(XEN_ELFNOTE_GUEST_OS, b"xen-rig-tiny-pv\0");
    note(XEN_ELFNOTE_LOADER, b"generic\0");
    note(XEN_ELFNOTE_VIRT_BASE, &0u64.to_le_bytes());
    note(XEN_ELFNOTE_PADDR_OFFSET, &0u64.to_le_bytes());
    note(XEN_ELFNOTE_ENTRY, &ENTRY.to_le_bytes());
    note(XEN_ELFNOTE_HYPERCALL_PAGE, &HYPERCALL_PAGE.to_le_bytes());
    out
}

/// Machine code at [`ENTRY`], assembled by hand: the few instructions these guests need.
#[derive(Default)]
struct Code(Vec<u8>);

impl Code {
    fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }

    fn imm32(&mut self, value: u32) -> &mut Self {
        self.bytes(&value.to_le_bytes())
    }

    /// `mov edi, value` (zero-extended into `rdi`).
    fn mov_edi(&mut self, value: u32) -> &mut Self {
        self.bytes(&[0xbf]).imm32(value)
    }

    /// `mov esi, value` (zero-extended into `rsi`).
    fn mov_esi(&mut self, value: u32) -> &mut Self {
        self.bytes(&[0xbe]).imm32(value)
    }

    /// `call` the hypercall page's stub for `hypercall`: arguments in `rdi`, `rsi`.
    fn hypercall(&mut self, hypercall: u32) -> &mut Self {
        let end = ENTRY + self.0.len() as u64 + 5;
        let target = HYPERCALL_PAGE + u64::from(hypercall) * 32;
        let rel = i32::try_from(target as i64 - end as i64).expect("a near call");
        self.bytes(&[0xe8]).bytes(&rel.to_le_bytes())
    }

    fn here(&self) -> usize {
        self.0.len()
    }

    /// `jmp` back to `at` (a short jump).
    fn jmp_back(&mut self, at: usize) -> &mut Self {
        let rel = i8::try_from(at as i64 - (self.0.len() as i64 + 2)).expect("a short jump");
        self.bytes(&[0xeb, rel as u8])
    }
}

fn abs32(address: u64) -> u32 {
    u32::try_from(address).expect("the data lies below 4 GiB")
}

/// `sched_op(SCHEDOP_shutdown, &SHUTDOWN_poweroff)`, then `ud2` should Xen ever return. The
/// shutdown reason (0, poweroff) is the zero word at the start of [`DATA`].
fn power_off() -> Vec<u8> {
    let mut c = Code::default();
    c.mov_edi(SCHEDOP_SHUTDOWN)
        .mov_esi(abs32(DATA))
        .hypercall(HYPERCALL_SCHED_OP)
        .bytes(&[0x0f, 0x0b]); // ud2
    c.0
}

/// The hostile guest: find the XenStore page through start_info's MFN and the M2P table,
/// set `req_prod = req_cons + 2 * ring size`, `EVTCHNOP_send` on the store's port, then
/// `SCHEDOP_poll` on the console's port forever.
fn break_ring() -> Vec<u8> {
    let mut c = Code::default();
    c.bytes(&[0x48, 0x8b, 0x46, START_INFO_STORE_MFN]) // mov rax, [rsi + store_mfn]
        .bytes(&[0x8b, 0x4e, START_INFO_STORE_EVTCHN]) // mov ecx, [rsi + store_evtchn]
        .bytes(&[0x89, 0x0c, 0x25]) // mov [DATA_STORE_PORT], ecx
        .imm32(abs32(DATA_STORE_PORT))
        .bytes(&[0x8b, 0x4e, START_INFO_CONSOLE_EVTCHN]) // mov ecx, [rsi + console evtchn]
        .bytes(&[0x89, 0x0c, 0x25]) // mov [DATA_CONSOLE_PORT], ecx
        .imm32(abs32(DATA_CONSOLE_PORT))
        .bytes(&[0x48, 0xba]) // mov rdx, MACH2PHYS_VIRT_START
        .bytes(&MACH2PHYS_VIRT_START.to_le_bytes())
        .bytes(&[0x48, 0x8b, 0x04, 0xc2]) // mov rax, [rdx + rax * 8]: the page's pfn
        .bytes(&[0x48, 0xc1, 0xe0, 0x0c]) // shl rax, 12: its address (virtual = physical)
        .bytes(&[0x8b, 0x88]) // mov ecx, [rax + req_cons]
        .imm32(RING_REQ_CONS)
        .bytes(&[0x81, 0xc1]) // add ecx, 2 * ring size
        .imm32(2 * RING_SIZE)
        .bytes(&[0x89, 0x88]) // mov [rax + req_prod], ecx
        .imm32(RING_REQ_PROD)
        .mov_edi(EVTCHNOP_SEND)
        .mov_esi(abs32(DATA_STORE_PORT))
        .hypercall(HYPERCALL_EVENT_CHANNEL_OP);
    let sleep = c.here();
    c.mov_edi(SCHEDOP_POLL)
        .mov_esi(abs32(DATA_SCHED_POLL))
        .hypercall(HYPERCALL_SCHED_OP)
        .jmp_back(sleep);
    c.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The code, disassembled by binutils where the host has it, is what the comments say.
    #[test]
    fn code_disassembles_as_written() {
        let Some(text) = disassemble(&image(Guest::BreakRing)) else {
            eprintln!("skipped: no objdump");
            return;
        };
        for expected in [
            "mov    0x38(%rsi),%rax",
            "mov    0x40(%rsi),%ecx",
            "mov    %ecx,0x800",
            "mov    0x50(%rsi),%ecx",
            "mov    %ecx,0x804",
            "movabs $0xffff800000000000,%rdx",
            "mov    (%rdx,%rax,8),%rax",
            "shl    $0xc,%rax",
            "mov    0x800(%rax),%ecx",
            "add    $0x800,%ecx",
            "mov    %ecx,0x804(%rax)",
            "mov    $0x4,%edi",
            "call   0x1400", // event_channel_op: 0x1000 + 32 * 32
            "mov    $0x3,%edi",
            "mov    $0x808,%esi",
            "call   0x13a0", // sched_op: 0x1000 + 29 * 32
        ] {
            assert!(text.contains(expected), "no `{expected}` in:\n{text}");
        }
        let text = disassemble(&image(Guest::PowerOff)).unwrap_or_default();
        for expected in [
            "mov    $0x2,%edi",
            "mov    $0x800,%esi",
            "call   0x13a0",
            "ud2",
        ] {
            assert!(text.contains(expected), "no `{expected}` in:\n{text}");
        }
    }

    fn disassemble(elf: &[u8]) -> Option<String> {
        let file = std::env::temp_dir().join(format!(
            "xen-rig-tiny-pv-{}-{}",
            std::process::id(),
            elf.len()
        ));
        std::fs::write(&file, &elf[ENTRY as usize..DATA as usize]).unwrap();
        let out = Command::new("objdump")
            .args([
                "-D",
                "-b",
                "binary",
                "-m",
                "i386:x86-64",
                "--adjust-vma=0x400",
            ])
            .arg(&file)
            .output();
        let _ = std::fs::remove_file(&file);
        let out = out.ok().filter(|o| o.status.success())?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Xen's own note reader, where the host has it (xen-utils-4.17, which the rig installs).
    #[test]
    fn xen_readnotes_accepts_it() {
        let readnotes = std::path::Path::new(super::super::image::XEN_BIN).join("readnotes");
        if !readnotes.exists() {
            eprintln!("skipped: no {} (xen-utils-4.17)", readnotes.display());
            return;
        }
        let file = std::env::temp_dir().join(format!("xen-rig-tiny-pv-{}", std::process::id()));
        std::fs::write(&file, image(Guest::BreakRing)).unwrap();
        let out = Command::new(&readnotes).arg(&file).output().unwrap();
        let _ = std::fs::remove_file(&file);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        for expected in [
            "GUEST_OS: xen-rig-tiny-pv",
            "XEN_VERSION: xen-3.0",
            "LOADER: generic",
        ] {
            assert!(
                text.lines().any(|l| l == expected),
                "no `{expected}` in:\n{text}"
            );
        }
        for (note, value) in [("ENTRY:", "0x400"), ("HYPERCALL_PAGE:", "0x1000")] {
            let line = text.lines().find(|l| l.starts_with(note));
            let expected = line.and_then(|l| l.split_whitespace().nth(1));
            assert_eq!(expected, Some(value), "{note} in:\n{text}");
        }
    }
}
