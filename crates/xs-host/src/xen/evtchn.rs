//! `/dev/xen/evtchn`: event channels for a process (Linux `include/uapi/xen/evtchn.h`).
//!
//! Binding returns the local port as the ioctl's result. A pending port is delivered by
//! `read` (4-byte port numbers) and masked by the driver until the process writes the port
//! back (`write`), which unmasks it; Xen re-raises an event that arrived meanwhile. The fd is
//! non-blocking and polled by the daemon's event loop.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};

use super::ioctl::{XenIoctl, call};
use super::open_device;

/// `'E'`: the group of the evtchn ioctls.
const GROUP: u8 = b'E';
/// `IOCTL_EVTCHN_BIND_VIRQ`.
const BIND_VIRQ: u8 = 0;
/// `IOCTL_EVTCHN_BIND_INTERDOMAIN`.
const BIND_INTERDOMAIN: u8 = 1;
/// `IOCTL_EVTCHN_UNBIND`.
const UNBIND: u8 = 3;
/// `IOCTL_EVTCHN_NOTIFY`.
const NOTIFY: u8 = 4;

/// `VIRQ_DOM_EXC`: some domain changed state (shut down, died).
pub(crate) const VIRQ_DOM_EXC: u32 = 3;

/// `struct ioctl_evtchn_bind_virq`.
#[repr(C)]
struct BindVirq {
    virq: u32,
}

/// `struct ioctl_evtchn_bind_interdomain`.
#[repr(C)]
struct BindInterdomain {
    remote_domain: u32,
    remote_port: u32,
}

/// `struct ioctl_evtchn_unbind` and `struct ioctl_evtchn_notify`: one port.
#[repr(C)]
struct Port {
    port: u32,
}

const _: () = {
    assert!(size_of::<BindVirq>() == 4);
    assert!(size_of::<BindInterdomain>() == 8);
    assert!(size_of::<Port>() == 4);
};

/// The event-channel device.
#[derive(Debug)]
pub(crate) struct EventChannels {
    file: File,
    /// Ports delivered and not yet unmasked.
    masked: BTreeSet<u32>,
}

impl EventChannels {
    /// Opens `/dev/xen/evtchn` (non-blocking).
    pub(crate) fn open() -> io::Result<EventChannels> {
        Ok(EventChannels {
            file: open_device("/dev/xen/evtchn")?,
            masked: BTreeSet::new(),
        })
    }

    /// The fd to poll for pending ports.
    /// The device a previous process opened and bound ports on (live update: the
    /// descriptor survives the exec, and with it every binding, which belongs to the open
    /// file). Each of `ports` is re-enabled: the old process may have taken an event on one
    /// and not re-armed it before the exec, and this process has no record of that.
    pub(crate) fn adopt(
        file: File,
        ports: impl IntoIterator<Item = u32>,
    ) -> io::Result<EventChannels> {
        let mut this = EventChannels {
            file,
            masked: BTreeSet::new(),
        };
        for port in ports {
            this.masked.insert(port);
            this.unmask(port)?;
        }
        Ok(this)
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Binds `virq` to a new local port.
    pub(crate) fn bind_virq(&mut self, virq: u32) -> io::Result<u32> {
        let mut arg = BindVirq { virq };
        // SAFETY: the evtchn device and its `ioctl_evtchn_bind_virq` argument.
        let port = unsafe { call(self.file.as_fd(), XenIoctl::new(GROUP, BIND_VIRQ, &mut arg)) }?;
        Ok(u32::try_from(port).unwrap_or(0))
    }

    /// Binds a new local port to `remote_port` of `domid`.
    pub(crate) fn bind_interdomain(&mut self, domid: u16, remote_port: u32) -> io::Result<u32> {
        let mut arg = BindInterdomain {
            remote_domain: u32::from(domid),
            remote_port,
        };
        // SAFETY: the evtchn device and its `ioctl_evtchn_bind_interdomain` argument.
        let port = unsafe {
            call(
                self.file.as_fd(),
                XenIoctl::new(GROUP, BIND_INTERDOMAIN, &mut arg),
            )
        }?;
        Ok(u32::try_from(port).unwrap_or(0))
    }

    /// Closes a local port.
    pub(crate) fn unbind(&mut self, port: u32) -> io::Result<()> {
        self.masked.remove(&port);
        let mut arg = Port { port };
        // SAFETY: the evtchn device and its `ioctl_evtchn_unbind` argument.
        unsafe { call(self.file.as_fd(), XenIoctl::new(GROUP, UNBIND, &mut arg)) }?;
        Ok(())
    }

    /// Notifies the remote end of a local port.
    pub(crate) fn notify(&mut self, port: u32) -> io::Result<()> {
        let mut arg = Port { port };
        // SAFETY: the evtchn device and its `ioctl_evtchn_notify` argument.
        unsafe { call(self.file.as_fd(), XenIoctl::new(GROUP, NOTIFY, &mut arg)) }?;
        Ok(())
    }

    /// Takes the pending ports (each now masked by the driver until [`EventChannels::unmask`]),
    /// appending them to `out`.
    pub(crate) fn pending(&mut self, out: &mut Vec<u32>) -> io::Result<()> {
        let mut buf = [0u8; 4 * 64];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    for chunk in buf.get(..n).unwrap_or_default().chunks_exact(4) {
                        let mut word = [0u8; 4];
                        word.copy_from_slice(chunk);
                        let port = u32::from_ne_bytes(word);
                        self.masked.insert(port);
                        out.push(port);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Re-enables delivery on a port the driver masked when it delivered it (nothing for a
    /// port that was not delivered: no system call).
    pub(crate) fn unmask(&mut self, port: u32) -> io::Result<()> {
        if !self.masked.remove(&port) {
            return Ok(());
        }
        self.file.write_all(&port.to_ne_bytes())
    }
}
