//! `/dev/xen/gntdev`: mapping pages other domains grant us (Linux
//! `include/uapi/xen/gntdev.h`). A guest's XenStore page is its grant
//! `GNTTAB_RESERVED_XENSTORE`, which the toolstack sets up before `INTRODUCE`.
//!
//! Mapping is two steps: `IOCTL_GNTDEV_MAP_GRANT_REF` reserves the grant and answers an
//! offset ("index") into the device; `mmap` of the device at that offset maps the page.
//! Unmapping is the reverse: `munmap`, then `IOCTL_GNTDEV_UNMAP_GRANT_REF`.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::ptr::NonNull;

use rustix::mm::{MapFlags, ProtFlags, mmap, munmap};

use super::ioctl::{XenIoctl, call};
use super::{PAGE_SIZE, open_device};

/// `'G'`: the group of the gntdev ioctls.
const GROUP: u8 = b'G';
/// `IOCTL_GNTDEV_MAP_GRANT_REF`.
const MAP_GRANT_REF: u8 = 0;
/// `IOCTL_GNTDEV_UNMAP_GRANT_REF`.
const UNMAP_GRANT_REF: u8 = 1;

/// `GNTTAB_RESERVED_XENSTORE` (`xen/include/public/grant_table.h`).
pub(crate) const GNTTAB_RESERVED_XENSTORE: u32 = 1;

/// `struct ioctl_gntdev_map_grant_ref` with one `struct ioctl_gntdev_grant_ref`.
#[repr(C)]
struct MapGrantRef {
    count: u32,
    pad: u32,
    /// OUT: the offset to `mmap` at.
    index: u64,
    domid: u32,
    gref: u32,
}

/// `struct ioctl_gntdev_unmap_grant_ref`.
#[repr(C)]
struct UnmapGrantRef {
    index: u64,
    count: u32,
    pad: u32,
}

const _: () = {
    assert!(size_of::<MapGrantRef>() == 24);
    assert!(size_of::<UnmapGrantRef>() == 16);
};

/// A page mapped from another domain.
#[derive(Debug)]
pub(crate) struct GrantMapping {
    addr: NonNull<u8>,
    index: u64,
}

// SAFETY: the mapping is an address and an offset; the page it names is shared memory that
// the ring code only reaches through atomics and volatile copies, from any thread.
unsafe impl Send for GrantMapping {}

impl GrantMapping {
    /// The page.
    pub(crate) fn addr(&self) -> NonNull<u8> {
        self.addr
    }
}

/// The grant-mapping device.
#[derive(Debug)]
pub(crate) struct GrantDevice {
    file: File,
}

impl GrantDevice {
    /// Opens `/dev/xen/gntdev`.
    pub(crate) fn open() -> io::Result<GrantDevice> {
        Ok(GrantDevice {
            file: open_device("/dev/xen/gntdev")?,
        })
    }

    /// Maps grant `gref` of `domid`, read-write.
    pub(crate) fn map(&self, domid: u16, gref: u32) -> io::Result<GrantMapping> {
        let mut arg = MapGrantRef {
            count: 1,
            pad: 0,
            index: 0,
            domid: u32::from(domid),
            gref,
        };
        // SAFETY: the gntdev device and its `ioctl_gntdev_map_grant_ref` argument (one ref).
        unsafe {
            call(
                self.file.as_fd(),
                XenIoctl::new(GROUP, MAP_GRANT_REF, &mut arg),
            )
        }?;
        // SAFETY: a new shared mapping of one page of the device at the offset it just gave
        // us (the granted page); no existing memory is replaced (no fixed address).
        let mapped = unsafe {
            mmap(
                std::ptr::null_mut(),
                PAGE_SIZE,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                self.file.as_fd(),
                arg.index,
            )
        };
        let addr = match mapped.map(|p| NonNull::new(p.cast::<u8>())) {
            Ok(Some(a)) => a,
            Ok(None) | Err(_) => {
                let e = mapped.err().map_or_else(
                    || io::Error::other("mmap returned a null page"),
                    io::Error::from,
                );
                self.release(arg.index);
                return Err(e);
            }
        };
        Ok(GrantMapping {
            addr,
            index: arg.index,
        })
    }

    /// Unmaps a page [`GrantDevice::map`] mapped.
    pub(crate) fn unmap(&self, mapping: GrantMapping) -> io::Result<()> {
        // SAFETY: the page `map` mapped, one page long; the mapping is consumed here, so
        // nothing reaches the page afterwards.
        unsafe { munmap(mapping.addr.as_ptr().cast(), PAGE_SIZE) }?;
        self.release(mapping.index);
        Ok(())
    }

    /// Gives the grant back (after its page is unmapped, or when mapping it failed).
    fn release(&self, index: u64) {
        let mut arg = UnmapGrantRef {
            index,
            count: 1,
            pad: 0,
        };
        // SAFETY: the gntdev device and its `ioctl_gntdev_unmap_grant_ref` argument.
        let released = unsafe {
            call(
                self.file.as_fd(),
                XenIoctl::new(GROUP, UNMAP_GRANT_REF, &mut arg),
            )
        };
        if let Err(e) = released {
            log::warn!("gntdev: releasing grant index {index:#x}: {e}");
        }
    }
}
