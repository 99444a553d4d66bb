//! The ioctls of Linux's Xen drivers (`/dev/xen/evtchn`, `/dev/xen/gntdev`,
//! `/dev/xen/privcmd`), through `rustix`.
//!
//! They are all `_IOC(_IOC_NONE, group, nr, sizeof(arg))` with a pointer to the argument, and
//! several answer in the return value (the bound port, the hypercall's result): one type
//! covers them.

use std::ffi::c_void;
use std::os::fd::AsFd;

use rustix::ioctl::{Direction, Ioctl, IoctlOutput, Opcode, opcode};

/// An ioctl with argument `T`, whose result is the ioctl's return value.
pub(crate) struct XenIoctl<'a, T> {
    opcode: Opcode,
    arg: &'a mut T,
}

impl<'a, T> XenIoctl<'a, T> {
    /// `_IOC(_IOC_NONE, group, nr, sizeof(T))`, as the Xen drivers' headers define them.
    pub(crate) fn new(group: u8, nr: u8, arg: &'a mut T) -> XenIoctl<'a, T> {
        XenIoctl {
            opcode: opcode::from_components(Direction::None, group, nr, size_of::<T>()),
            arg,
        }
    }
}

// SAFETY: `as_ptr` points at a live, exclusively borrowed `T` for the whole call, and the
// drivers read and write at most `size_of::<T>()` bytes there (the size the opcode carries);
// the output is the plain return value.
unsafe impl<T> Ioctl for XenIoctl<'_, T> {
    type Output = i32;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        self.opcode
    }

    fn as_ptr(&mut self) -> *mut c_void {
        std::ptr::from_mut(self.arg).cast()
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> rustix::io::Result<i32> {
        Ok(out)
    }
}

/// Issues `ioctl` on `fd`.
///
/// # Safety
///
/// `fd` must be the device whose ioctl `group`/`nr` is, and `T` the argument structure the
/// driver's uapi header declares for it (`#[repr(C)]`, size-checked where it is declared).
/// The ioctl must not make the kernel write anywhere else in our memory than into the
/// argument (or into memory the argument points to that the caller owns and keeps alive).
pub(crate) unsafe fn call<T>(fd: impl AsFd, ioctl: XenIoctl<'_, T>) -> rustix::io::Result<i32> {
    // SAFETY: the caller's contract: the right device, the right argument; `XenIoctl`
    // points at it for the whole call.
    unsafe { rustix::ioctl::ioctl(fd, ioctl) }
}
