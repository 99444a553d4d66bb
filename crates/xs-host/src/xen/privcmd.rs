//! `/dev/xen/privcmd`: hypercalls from dom0's user space, and mapping other domains' pages
//! by frame number (Linux `include/uapi/xen/privcmd.h`).
//!
//! [`Privcmd`] implements x86-glue's [`Hypercalls`], so the hypercall wrappers and argument
//! layouts written down there once (the domctls among them) serve the daemon too: Linux's
//! privcmd passes the five arguments to Xen as they are (the argument structures live in our
//! memory, which Xen reads as dom0's).

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::ptr::NonNull;

use rustix::mm::{MapFlags, ProtFlags, mmap, munmap};
use x86_glue::Hypercalls;

use super::ioctl::{XenIoctl, call};
use super::{PAGE_SIZE, open_device};

/// `'P'`: the group of the privcmd ioctls.
const GROUP: u8 = b'P';
/// `IOCTL_PRIVCMD_HYPERCALL`.
const HYPERCALL: u8 = 0;
/// `IOCTL_PRIVCMD_MMAPBATCH_V2`.
const MMAPBATCH_V2: u8 = 4;

/// `struct privcmd_hypercall`.
#[repr(C)]
struct Hypercall {
    op: u64,
    arg: [u64; 5],
}

/// `struct privcmd_mmapbatch_v2`.
#[repr(C)]
struct MmapBatchV2 {
    num: u32,
    dom: u16,
    pad: u16,
    addr: u64,
    /// `const xen_pfn_t *arr`.
    arr: *const u64,
    /// `int *err`.
    err: *mut i32,
}

const _: () = {
    assert!(size_of::<Hypercall>() == 48);
    assert!(size_of::<MmapBatchV2>() == 32);
};

/// A page of another domain mapped by frame number.
#[derive(Debug)]
pub(crate) struct ForeignMapping {
    addr: NonNull<u8>,
}

// SAFETY: as `GrantMapping`: an address of shared memory reached only through atomics and
// volatile copies.
unsafe impl Send for ForeignMapping {}

impl ForeignMapping {
    /// The page.
    pub(crate) fn addr(&self) -> NonNull<u8> {
        self.addr
    }
}

/// The privcmd device.
#[derive(Debug)]
pub(crate) struct Privcmd {
    file: File,
}

impl Privcmd {
    /// Opens `/dev/xen/privcmd`.
    pub(crate) fn open() -> io::Result<Privcmd> {
        Ok(Privcmd {
            file: open_device("/dev/xen/privcmd")?,
        })
    }

    /// Maps frame `gfn` of `domid`, read-write (what C xenstored did before grant mapping,
    /// and falls back to).
    pub(crate) fn map_foreign(&self, domid: u16, gfn: u64) -> io::Result<ForeignMapping> {
        // SAFETY: a new shared mapping of one page of the privcmd device, to be filled by
        // the batch below; no existing memory is replaced (no fixed address).
        let page = unsafe {
            mmap(
                std::ptr::null_mut(),
                PAGE_SIZE,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                self.file.as_fd(),
                0,
            )
        }?;
        let Some(addr) = NonNull::new(page.cast::<u8>()) else {
            return Err(io::Error::other("mmap returned a null page"));
        };
        let frames = [gfn];
        let mut errors = [0i32];
        let mut arg = MmapBatchV2 {
            num: 1,
            dom: domid,
            pad: 0,
            addr: addr.as_ptr() as u64,
            arr: frames.as_ptr(),
            err: errors.as_mut_ptr(),
        };
        // SAFETY: the privcmd device and its `privcmd_mmapbatch_v2` argument, whose `arr`
        // and `err` point at one frame and one error slot that live across the call, and
        // whose `addr` is the one-page mapping of this device made above.
        let result = unsafe {
            call(
                self.file.as_fd(),
                XenIoctl::new(GROUP, MMAPBATCH_V2, &mut arg),
            )
        };
        let failure = match (result, errors[0]) {
            (Ok(_), 0) => None,
            (Ok(_), e) => Some(io::Error::from_raw_os_error(e.saturating_neg())),
            (Err(e), _) => Some(e.into()),
        };
        if let Some(e) = failure {
            // SAFETY: the page mapped above, not handed out.
            let _ = unsafe { munmap(page, PAGE_SIZE) };
            return Err(e);
        }
        Ok(ForeignMapping { addr })
    }

    /// Unmaps a page [`Privcmd::map_foreign`] mapped.
    pub(crate) fn unmap_foreign(&self, mapping: ForeignMapping) -> io::Result<()> {
        // SAFETY: the one page `map_foreign` mapped; consumed, so nothing reaches it after.
        unsafe { munmap(mapping.addr.as_ptr().cast(), PAGE_SIZE) }?;
        Ok(())
    }
}

impl Hypercalls for Privcmd {
    fn call(&mut self, op: u64, args: [u64; 5]) -> i64 {
        let mut arg = Hypercall { op, arg: args };
        // SAFETY: the privcmd device and its `privcmd_hypercall` argument. The hypercall's
        // own arguments are the caller's (x86-glue's wrappers pass pointers to structures on
        // their stack, alive across the call), which Xen reads and writes as dom0's memory.
        match unsafe { call(self.file.as_fd(), XenIoctl::new(GROUP, HYPERCALL, &mut arg)) } {
            Ok(r) => i64::from(r),
            // Xen's -errno comes back as the ioctl's errno.
            Err(e) => -i64::from(e.raw_os_error()),
        }
    }
}
