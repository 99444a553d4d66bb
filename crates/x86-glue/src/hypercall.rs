//! The Xen x86_64 hypercall ABI, written down once (`docs/guest-guide/x86/hypercall-abi.rst`).
//!
//! | what               | register                      |
//! |--------------------|-------------------------------|
//! | hypercall number   | `rax`                         |
//! | arguments 1 to 5   | `rdi`, `rsi`, `rdx`, `r10`, `r8` |
//! | result             | `rax`                         |
//!
//! [`ABI`] is that table as data; the two `asm!` blocks below (the hypercall page, and
//! `vmcall` / `vmmcall`) are the only places that name the hypercall registers, and a test runs
//! the hypercall-page path against a recording stub to check them against [`ABI`].
//!
//! * A hypercall may clobber every argument register (a debug build of Xen poisons them), so
//!   each is an `inlateout` operand whose output is discarded.
//! * Hypercalls read and write guest memory through pointers passed as integers: the blocks
//!   never use `nomem` or `readonly`, and callers pass addresses obtained with
//!   `expose_provenance`, so the compiler treats the pointed-to memory as possibly accessed.
//! * The transfer is the hypercall page (`call page + 32 * nr`, stubs Xen writes into a guest
//!   page nominated through the MSR that CPUID leaf `base + 2` names), or, where no page is set
//!   up, `vmcall` (Intel, and VIA/Zhaoxin) or `vmmcall` (AMD, Hygon) directly, as an HVM/PVH
//!   guest in 64-bit mode.
//!
//! Results are Xen's: a negative value is a negated Xen errno ([`Errno`]).

use core::arch::asm;
use core::fmt;
use core::ptr::NonNull;

/// The register assignment of the 64-bit hypercall ABI.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Abi {
    /// Holds the hypercall number on entry.
    pub op: &'static str,
    /// Hold arguments 1 to 5, in order.
    pub args: [&'static str; 5],
    /// Holds the result on return.
    pub result: &'static str,
}

/// The 64-bit ABI (`docs/guest-guide/x86/hypercall-abi.rst`, table "Registers").
pub const ABI: Abi = Abi {
    op: "rax",
    args: ["rdi", "rsi", "rdx", "r10", "r8"],
    result: "rax",
};

/// Hypercall numbers (`xen/include/public/xen.h`).
pub mod nr {
    /// `__HYPERVISOR_memory_op`.
    pub const MEMORY_OP: u64 = 12;
    /// `__HYPERVISOR_xen_version`.
    pub const XEN_VERSION: u64 = 17;
    /// `__HYPERVISOR_console_io`.
    pub const CONSOLE_IO: u64 = 18;
    /// `__HYPERVISOR_grant_table_op`.
    pub const GRANT_TABLE_OP: u64 = 20;
    /// `__HYPERVISOR_iret` (PV only; its hypercall-page stub is `ud2` for HVM guests).
    pub const IRET: u64 = 23;
    /// `__HYPERVISOR_sched_op`.
    pub const SCHED_OP: u64 = 29;
    /// `__HYPERVISOR_event_channel_op`.
    pub const EVENT_CHANNEL_OP: u64 = 32;
    /// `__HYPERVISOR_hvm_op`.
    pub const HVM_OP: u64 = 34;
    /// `__HYPERVISOR_domctl`.
    pub const DOMCTL: u64 = 36;
}

/// A Xen errno value (`xen/include/public/errno.h`), positive as there; hypercalls return
/// it negated.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// Operation not permitted.
    pub const EPERM: Errno = Errno(1);
    /// No such file or directory.
    pub const ENOENT: Errno = Errno(2);
    /// No such process (no such domain, for a control domain).
    pub const ESRCH: Errno = Errno(3);
    /// I/O error.
    pub const EIO: Errno = Errno(5);
    /// Try again.
    pub const EAGAIN: Errno = Errno(11);
    /// Out of memory.
    pub const ENOMEM: Errno = Errno(12);
    /// Permission denied.
    pub const EACCES: Errno = Errno(13);
    /// Bad address.
    pub const EFAULT: Errno = Errno(14);
    /// Device or resource busy.
    pub const EBUSY: Errno = Errno(16);
    /// Already exists.
    pub const EEXIST: Errno = Errno(17);
    /// Invalid argument.
    pub const EINVAL: Errno = Errno(22);
    /// No space left.
    pub const ENOSPC: Errno = Errno(28);
    /// Function not implemented.
    pub const ENOSYS: Errno = Errno(38);
    /// Operation not supported.
    pub const EOPNOTSUPP: Errno = Errno(95);

    /// The errno of a hypercall result: `Ok` for non-negative results.
    pub fn check(rc: i64) -> Result<u64, Errno> {
        if rc >= 0 {
            Ok(rc.unsigned_abs())
        } else {
            // A result below -i32::MAX is no errno Xen defines; keep it recognisable.
            Err(Errno(i32::try_from(rc.unsigned_abs()).unwrap_or(i32::MAX)))
        }
    }

    /// The errno as a hypercall returns it.
    pub const fn as_result(self) -> i64 {
        -(self.0 as i64)
    }

    /// The symbolic name, for the values of `errno.h`.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "EPERM",
            2 => "ENOENT",
            3 => "ESRCH",
            4 => "EINTR",
            5 => "EIO",
            6 => "ENXIO",
            7 => "E2BIG",
            8 => "ENOEXEC",
            9 => "EBADF",
            10 => "ECHILD",
            11 => "EAGAIN",
            12 => "ENOMEM",
            13 => "EACCES",
            14 => "EFAULT",
            16 => "EBUSY",
            17 => "EEXIST",
            18 => "EXDEV",
            19 => "ENODEV",
            20 => "ENOTDIR",
            21 => "EISDIR",
            22 => "EINVAL",
            23 => "ENFILE",
            24 => "EMFILE",
            28 => "ENOSPC",
            30 => "EROFS",
            31 => "EMLINK",
            33 => "EDOM",
            34 => "ERANGE",
            35 => "EDEADLK",
            36 => "ENAMETOOLONG",
            37 => "ENOLCK",
            38 => "ENOSYS",
            39 => "ENOTEMPTY",
            61 => "ENODATA",
            62 => "ETIME",
            74 => "EBADMSG",
            75 => "EOVERFLOW",
            84 => "EILSEQ",
            85 => "ERESTART",
            88 => "ENOTSOCK",
            90 => "EMSGSIZE",
            95 => "EOPNOTSUPP",
            98 => "EADDRINUSE",
            99 => "EADDRNOTAVAIL",
            105 => "ENOBUFS",
            106 => "EISCONN",
            107 => "ENOTCONN",
            110 => "ETIMEDOUT",
            111 => "ECONNREFUSED",
            _ => return None,
        })
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "errno {}", self.0),
        }
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The address of `value` as a hypercall argument. The provenance is exposed, so that the
/// hypervisor (or a fake standing in for it) may read and write the value through it during
/// the call.
pub fn arg<T>(value: &mut T) -> u64 {
    (value as *mut T).expose_provenance() as u64
}

/// The address of a slice's first element as a hypercall argument (see [`arg`]).
pub fn slice_arg<T>(values: &[T]) -> u64 {
    values.as_ptr().expose_provenance() as u64
}

/// Issuing hypercalls. The real implementation is [`XenHypercalls`]; host tests implement it
/// with a model of Xen that records every call.
pub trait Hypercalls {
    /// Hypercall `op` with five arguments (unused ones 0); returns Xen's result.
    fn call(&mut self, op: u64, args: [u64; 5]) -> i64;

    /// A hypercall with one argument.
    fn call1(&mut self, op: u64, a1: u64) -> i64 {
        self.call(op, [a1, 0, 0, 0, 0])
    }

    /// A hypercall with two arguments.
    fn call2(&mut self, op: u64, a1: u64, a2: u64) -> i64 {
        self.call(op, [a1, a2, 0, 0, 0])
    }

    /// A hypercall with three arguments.
    fn call3(&mut self, op: u64, a1: u64, a2: u64, a3: u64) -> i64 {
        self.call(op, [a1, a2, a3, 0, 0])
    }
}

impl<H: Hypercalls + ?Sized> Hypercalls for &mut H {
    fn call(&mut self, op: u64, args: [u64; 5]) -> i64 {
        (**self).call(op, args)
    }
}

/// How hypercalls reach Xen.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Transfer {
    /// Through the hypercall page at this address (stubs at `32 * nr`).
    Page(NonNull<u8>),
    /// `vmcall` (Intel VT-x, also VIA/Centaur and Zhaoxin).
    Vmcall,
    /// `vmmcall` (AMD SVM, also Hygon).
    Vmmcall,
}

/// Hypercalls on real Xen.
#[derive(Debug)]
pub struct XenHypercalls {
    transfer: Transfer,
}

/// Bytes per stub in the hypercall page.
pub const STUB_SIZE: usize = 32;
/// Stubs in one 4 KiB hypercall page.
pub const STUBS: u64 = 4096 / STUB_SIZE as u64;

impl XenHypercalls {
    /// Hypercalls through `transfer`.
    ///
    /// # Safety
    ///
    /// The program must run as a 64-bit HVM or PVH guest of Xen, in ring 0. For
    /// [`Transfer::Page`], the page must hold the stubs Xen wrote (see [`page_is_written`])
    /// for the whole life of the value, mapped executable; for [`Transfer::Vmcall`] /
    /// [`Transfer::Vmmcall`], the CPU must be of the matching vendor (the other instruction
    /// raises `#UD`).
    pub unsafe fn new(transfer: Transfer) -> XenHypercalls {
        XenHypercalls { transfer }
    }

    /// How hypercalls are made.
    pub fn transfer(&self) -> Transfer {
        self.transfer
    }
}

impl Hypercalls for XenHypercalls {
    fn call(&mut self, op: u64, args: [u64; 5]) -> i64 {
        match self.transfer {
            Transfer::Page(page) => {
                if op >= STUBS {
                    return Errno::ENOSYS.as_result();
                }
                // `op < 128`, so the stub lies inside the page.
                let stub = page.as_ptr().wrapping_add(op as usize * STUB_SIZE);
                // SAFETY: the page holds Xen's stubs, executable (the contract of `new`); each
                // stub is `mov $nr, %eax; vmcall|vmmcall; ret`, a call with the ABI's
                // registers whose memory effects are those of the hypercall.
                unsafe { call_stub(stub, op, args) }
            }
            // SAFETY: a Xen HVM/PVH guest on an Intel-compatible CPU (contract of `new`).
            Transfer::Vmcall => unsafe { direct_call::<VMCALL>(op, args) },
            // SAFETY: a Xen HVM/PVH guest on an AMD-compatible CPU (contract of `new`).
            Transfer::Vmmcall => unsafe { direct_call::<VMMCALL>(op, args) },
        }
    }
}

/// Calls the hypercall stub at `stub` with the ABI's registers.
///
/// # Safety
///
/// `stub` must be code that follows the hypercall ABI and returns with `ret` (a stub of
/// Xen's hypercall page, or in tests a recording stand-in); whatever memory the hypercall
/// accesses through the arguments must be valid for it.
pub(crate) unsafe fn call_stub(stub: *const u8, op: u64, args: [u64; 5]) -> i64 {
    let ret: i64;
    // SAFETY: the caller vouches for the stub. Registers as in `ABI`; every argument register
    // may be clobbered; rcx and r11 too (the PV stubs use `syscall`, which does). The `call`
    // pushes a return address: the stack pointer is first moved past the 128-byte red zone
    // of the SysV ABI, so that nothing the compiler keeps there is overwritten, and back
    // afterwards (alignment is kept: 128 is a multiple of 16). No `nomem`: the hypercall
    // reads and writes memory.
    unsafe {
        asm!(
            "lea rsp, [rsp - 128]",
            "call {stub}",
            "lea rsp, [rsp + 128]",
            stub = in(reg) stub,
            inlateout("rax") op => ret,
            inlateout("rdi") args[0] => _,
            inlateout("rsi") args[1] => _,
            inlateout("rdx") args[2] => _,
            inlateout("r10") args[3] => _,
            inlateout("r8") args[4] => _,
            out("rcx") _,
            out("r11") _,
        );
    }
    ret
}

/// The last byte of `vmcall` (`0f 01 c1`, Intel VT-x).
const VMCALL: u8 = 0xc1;
/// The last byte of `vmmcall` (`0f 01 d9`, AMD SVM).
const VMMCALL: u8 = 0xd9;

/// `vmcall` or `vmmcall` with the ABI's registers: the instruction `0f 01 INSN`, `INSN` being
/// [`VMCALL`] or [`VMMCALL`] (the two differ in that byte only).
///
/// # Safety
///
/// Only in a Xen HVM/PVH guest, in 64-bit mode and ring 0, on a CPU of the instruction's
/// vendor (VT-x for `vmcall`, SVM for `vmmcall`; the other one raises `#UD`); whatever memory
/// the hypercall accesses through the arguments must be valid for it.
unsafe fn direct_call<const INSN: u8>(op: u64, args: [u64; 5]) -> i64 {
    const { assert!(INSN == VMCALL || INSN == VMMCALL) };
    let ret: i64;
    // SAFETY: the caller vouches for the environment. The bytes are the instruction, as the
    // assembler would encode its mnemonic. Registers as in `ABI`; argument registers
    // clobbered; no stack use; memory read and written by Xen.
    unsafe {
        asm!(
            ".byte 0x0f, 0x01, {insn}",
            insn = const INSN,
            inlateout("rax") op => ret,
            inlateout("rdi") args[0] => _,
            inlateout("rsi") args[1] => _,
            inlateout("rdx") args[2] => _,
            inlateout("r10") args[3] => _,
            inlateout("r8") args[4] => _,
            options(nostack),
        );
    }
    ret
}

/// Whether `page` holds the stubs Xen writes into an HVM guest's hypercall page: at every
/// `32 * nr` (except `iret`'s `ud2`), `mov $nr, %eax` (`b8 <nr:le32>`), `vmcall` (`0f 01 c1`)
/// or `vmmcall` (`0f 01 d9`), `ret` (`c3`) (`vmx_init_hypercall_page`,
/// `svm_init_hypercall_page` in `xen/arch/x86/hvm`). Checked for the hypercalls this crate
/// uses, after asking Xen to write the page, before trusting it.
pub fn page_is_written(page: &[u8; 4096]) -> bool {
    [
        nr::MEMORY_OP,
        nr::XEN_VERSION,
        nr::CONSOLE_IO,
        nr::GRANT_TABLE_OP,
        nr::SCHED_OP,
        nr::EVENT_CHANNEL_OP,
        nr::HVM_OP,
        nr::DOMCTL,
    ]
    .into_iter()
    .all(|op| {
        let at = op as usize * STUB_SIZE;
        let Some(stub) = page.get(at..at + 9) else {
            return false;
        };
        let nr = (op as u32).to_le_bytes();
        stub[0] == 0xb8
            && stub[1..5] == nr
            && stub[5..7] == [0x0f, 0x01]
            && (stub[7] == VMCALL || stub[7] == VMMCALL)
            && stub[8] == 0xc3
    })
}

/// Asks Xen to write the hypercall page at guest-physical `gpa` through the MSR that CPUID
/// leaf `base + 2` names (`wrmsr` of `gpa | page_index`, page index 0).
///
/// # Safety
///
/// Only in a Xen HVM/PVH guest in ring 0, with `msr` taken from Xen's CPUID leaf; `gpa` must
/// be the guest-physical address of a 4 KiB page the caller owns and no longer accesses
/// except to read the stubs.
pub unsafe fn write_hypercall_page(msr: u32, gpa: u64) {
    // SAFETY: the caller vouches for the environment; Xen writes the page (memory effect:
    // no `nomem`), the MSR write has no other effect on this program.
    unsafe {
        asm!(
            "wrmsr",
            in("ecx") msr,
            in("eax") gpa as u32,
            in("edx") (gpa >> 32) as u32,
            options(nostack),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::arch::naked_asm;
    use core::sync::atomic::{AtomicU64, Ordering};

    /// The registers the recording stub stores, in order.
    const RECORDED: [&str; 6] = ["rax", "rdi", "rsi", "rdx", "r10", "r8"];

    /// What the recording stub saw, in the order of `RECORDED`.
    static SEEN: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

    /// A stand-in for a hypercall-page stub: records the registers the ABI names, returns
    /// `!rdi` in rax, and poisons every argument register and rcx/r11 before returning, as a
    /// debug build of Xen does.
    #[unsafe(naked)]
    extern "sysv64" fn recording_stub() {
        naked_asm!(
            "mov [rip + {seen}], rax",
            "mov [rip + {seen} + 8], rdi",
            "mov [rip + {seen} + 16], rsi",
            "mov [rip + {seen} + 24], rdx",
            "mov [rip + {seen} + 32], r10",
            "mov [rip + {seen} + 40], r8",
            "mov rax, rdi",
            "not rax",
            "mov rdi, 0xdead",
            "mov rsi, 0xdead",
            "mov rdx, 0xdead",
            "mov r10, 0xdead",
            "mov r8, 0xdead",
            "mov rcx, 0xdead",
            "mov r11, 0xdead",
            "ret",
            seen = sym SEEN,
        );
    }

    #[test]
    fn abi_table_is_xens() {
        assert_eq!(ABI.op, "rax");
        assert_eq!(ABI.args, ["rdi", "rsi", "rdx", "r10", "r8"]);
        assert_eq!(ABI.result, "rax");
    }

    /// Runs the real hypercall-page call sequence against the recording stub (never `vmcall`:
    /// there is no Xen here), with the page base chosen so that `base + 32 * nr` is the stub.
    #[test]
    fn page_call_uses_the_abi_registers() {
        let op = nr::EVENT_CHANNEL_OP;
        let stub = recording_stub as *const u8;
        let base = stub.wrapping_sub(op as usize * STUB_SIZE);
        let mut hc = XenHypercalls {
            transfer: Transfer::Page(NonNull::new(base.cast_mut()).unwrap()),
        };
        let args = [0x1111, 0x2222, 0x3333, 0x4444, 0x5555];
        // Values the compiler may keep in registers across the call must survive it.
        let keep: [u64; 4] = core::hint::black_box([1, 2, 3, 4]);
        let ret = hc.call(op, args);
        assert_eq!(keep, [1, 2, 3, 4]);
        assert_eq!(ret, !0x1111u64 as i64);
        let seen: [u64; 6] = core::array::from_fn(|i| SEEN[i].load(Ordering::Relaxed));
        // The op in `ABI.op`, the five arguments in `ABI.args`, in order.
        assert_eq!(RECORDED[0], ABI.op);
        assert_eq!(RECORDED[1..], ABI.args);
        assert_eq!(seen[0], op);
        assert_eq!(&seen[1..], &args);
        // The stub table covers one page only.
        assert_eq!(hc.call(STUBS, args), Errno::ENOSYS.as_result());
    }

    #[test]
    fn per_arity_wrappers_pad_with_zeroes() {
        struct Rec(Option<(u64, [u64; 5])>);
        impl Hypercalls for Rec {
            fn call(&mut self, op: u64, args: [u64; 5]) -> i64 {
                self.0 = Some((op, args));
                0
            }
        }
        let mut r = Rec(None);
        r.call1(1, 10);
        assert_eq!(r.0, Some((1, [10, 0, 0, 0, 0])));
        r.call2(2, 10, 20);
        assert_eq!(r.0, Some((2, [10, 20, 0, 0, 0])));
        r.call3(3, 10, 20, 30);
        assert_eq!(r.0, Some((3, [10, 20, 30, 0, 0])));
    }

    #[test]
    fn errno_decoding() {
        assert_eq!(Errno::check(0), Ok(0));
        assert_eq!(Errno::check(7), Ok(7));
        assert_eq!(Errno::check(-22), Err(Errno::EINVAL));
        assert_eq!(Errno::check(i64::MIN), Err(Errno(i32::MAX)));
        assert_eq!(Errno::EINVAL.as_result(), -22);
        assert_eq!(alloc::format!("{}", Errno::ENOSYS), "ENOSYS (38)");
        assert_eq!(alloc::format!("{}", Errno(4242)), "errno 4242");
    }

    fn fake_page(insn: u8) -> [u8; 4096] {
        let mut page = [0u8; 4096];
        for i in 0..STUBS as usize {
            let p = &mut page[i * 32..i * 32 + 9];
            if i == nr::IRET as usize {
                p[..2].copy_from_slice(&[0x0f, 0x0b]);
                continue;
            }
            p[0] = 0xb8;
            p[1..5].copy_from_slice(&(i as u32).to_le_bytes());
            p[5..8].copy_from_slice(&[0x0f, 0x01, insn]);
            p[8] = 0xc3;
        }
        page
    }

    #[test]
    fn recognises_xens_hypercall_page() {
        assert!(page_is_written(&fake_page(VMCALL)));
        assert!(page_is_written(&fake_page(VMMCALL)));
        assert!(!page_is_written(&[0; 4096]));
        let mut wrong = fake_page(VMCALL);
        wrong[nr::SCHED_OP as usize * 32 + 1] = 0;
        assert!(!page_is_written(&wrong));
    }
}
