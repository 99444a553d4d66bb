//! Xen on a Linux dom0: the serving layer's platform services ([`xs_serve::Services`])
//! through the kernel's Xen devices, so that xs-host serves guests' rings as C xenstored
//! does.
//!
//! # Linux's device interfaces, not Xen's C libraries
//!
//! Event channels (`/dev/xen/evtchn`), grant mapping (`/dev/xen/gntdev`), hypercalls and
//! foreign mapping (`/dev/xen/privcmd`) and dom0's own ring (`/proc/xen/xsd_kva`,
//! `/proc/xen/xsd_port`) are reached with their ioctls through `rustix`, not through
//! `libxenevtchn`, `libxengnttab`, `libxenforeignmemory` and `libxenctrl`/`libxenmanage`:
//!
//! * the libraries would have to be present to build xs-host and to start it, also where it
//!   only serves sockets (or be `dlopen`ed, with their C ABI written down by hand anyway);
//! * `libxenctrl`'s ABI is tied to one Xen release (C xenstored is rebuilt per release);
//! * what xs-host needs is a dozen stable ioctls, the very ABI those libraries wrap (Linux
//!   keeps its uapi stable), and each is written down once here with its layout checked at
//!   compile time.
//!
//! The one release-bound call, asking a domain's state, is chosen at run time: the stable
//! `XEN_DOMCTL_get_domain_state` of Xen 4.21+, else `XEN_DOMCTL_getdomaininfo` under the
//! `XEN_DOMCTL_INTERFACE_VERSION` this Xen accepts (probed once), as C xenstored asks
//! through libxenctrl on older Xen. The hypercall wrappers and layouts are x86-glue's,
//! issued through privcmd ([`privcmd::Privcmd`] implements its `Hypercalls`).
//!
//! Without Xen (no `/proc/xen/capabilities` naming `control_d`), xs-host serves sockets
//! only, as before: [`HostServices::sockets_only`].

mod evtchn;
mod gntdev;
mod ioctl;
mod privcmd;

use std::fs::{self, File};
use std::io;
use std::ops::Deref;
use std::os::fd::{AsFd, RawFd};
use std::path::Path;
use std::ptr::NonNull;

use rustix::fs::{Mode, OFlags};
use rustix::mm::{MapFlags, ProtFlags, mmap};
use x86_glue::Errno;
use x86_glue::domctl::{self, StateQuery};
use xs_core::DomId;
use xs_core::store::Introduction;
use xs_ring::RawPage;
use xs_serve::{DomainState, Services};

use self::evtchn::{EventChannels, VIRQ_DOM_EXC};
use self::gntdev::{GNTTAB_RESERVED_XENSTORE, GrantDevice, GrantMapping};
use self::privcmd::{ForeignMapping, Privcmd};

/// A domain's state from `XEN_DOMCTL_get_domain_state`'s answer; an error that does not say
/// the domain is gone is returned beside `Running` (assumed until known).
fn from_domain_state(
    answer: Result<domctl::GetDomainState, Errno>,
) -> (DomainState, Option<Errno>) {
    match answer {
        Ok(s) => (s.domain_state(), None),
        // No such domain: `EPERM` for a caller that is not the control domain, `ESRCH` for
        // one that is (`do_domctl`).
        Err(Errno::ESRCH | Errno::EPERM) => (DomainState::Dying, None),
        Err(e) => (DomainState::Running, Some(e)),
    }
}

/// Bytes in a page (x86).
const PAGE_SIZE: usize = 4096;

/// Opens a Xen device read-write, non-blocking, close-on-exec.
fn open_device(path: &str) -> io::Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("{path}: {e}")))?;
    Ok(File::from(fd))
}

/// Whether this is a Xen control domain with the Xen filesystem mounted.
pub(crate) fn is_dom0() -> bool {
    fs::read_to_string("/proc/xen/capabilities").is_ok_and(|c| c.contains("control_d"))
}

/// The Xen devices.
#[derive(Debug)]
struct Xen {
    evtchn: EventChannels,
    gntdev: GrantDevice,
    privcmd: Privcmd,
    state: StateQuery,
    /// The local port of `VIRQ_DOM_EXC`.
    virq: u32,
}

/// The platform services of xs-host: Xen's devices on a dom0, or nothing but sockets.
#[derive(Debug)]
pub(crate) struct HostServices {
    xen: Option<Xen>,
}

/// A guest's ring page, however it is mapped.
#[derive(Debug)]
pub(crate) struct HostRing {
    page: RawPage,
    mapping: Mapping,
}

#[derive(Debug)]
enum Mapping {
    /// By grant `GNTTAB_RESERVED_XENSTORE`.
    Grant(GrantMapping),
    /// By frame number (privcmd).
    Foreign(ForeignMapping),
    /// Dom0's own ring, `/proc/xen/xsd_kva`, mapped for the daemon's life.
    Kernel,
}

/// The ring is reached as its page.
impl Deref for HostRing {
    type Target = RawPage;

    fn deref(&self) -> &RawPage {
        &self.page
    }
}

impl HostRing {
    fn new(addr: NonNull<u8>, mapping: Mapping) -> HostRing {
        // SAFETY: `addr` is a page-aligned page of shared memory mapped read-write (by
        // gntdev, privcmd or xenfs) that stays mapped until `HostServices::unmap_ring`
        // consumes this ring (dom0's own: for the daemon's life); this side reaches it only
        // through the `RawPage`.
        let page = unsafe { RawPage::new(addr) };
        HostRing { page, mapping }
    }
}

/// Dom0's own ring and the port its kernel allocated for the store (C xenstored's
/// `xenbus_map` and `xenbus_evtchn`).
#[derive(Debug)]
pub(crate) struct KernelRing {
    pub(crate) ring: HostRing,
    pub(crate) port: u32,
}

impl HostServices {
    /// No hypervisor: sockets only.
    pub(crate) fn sockets_only() -> HostServices {
        HostServices { xen: None }
    }

    /// Xen's devices on a dom0, with `VIRQ_DOM_EXC` bound and the way to ask domain states
    /// found; `master` is the domain whose state is asked to find it (dom0).
    pub(crate) fn xen(master: DomId) -> io::Result<HostServices> {
        let mut evtchn = EventChannels::open()?;
        let virq = evtchn.bind_virq(VIRQ_DOM_EXC)?;
        HostServices::with_event_channels(master, evtchn, virq)
    }

    /// [`HostServices::xen`] for the new process of a live update: the event-channel
    /// device is the old process's (`evtchn`, a duplicate of the descriptor it left open
    /// across the exec, so that the bindings survive whatever happens to this one), with
    /// `VIRQ_DOM_EXC` bound at `virq` and the rings' ports in `ports` (re-enabled); grant
    /// and foreign mappings died with the old address space: the rings are mapped again.
    pub(crate) fn adopt_xen(
        master: DomId,
        evtchn: File,
        virq: u32,
        ports: impl IntoIterator<Item = u32>,
    ) -> io::Result<HostServices> {
        let evtchn = EventChannels::adopt(evtchn, core::iter::once(virq).chain(ports))
            .map_err(|e| io::Error::new(e.kind(), format!("/dev/xen/evtchn (inherited): {e}")))?;
        HostServices::with_event_channels(master, evtchn, virq)
    }

    fn with_event_channels(
        master: DomId,
        evtchn: EventChannels,
        virq: u32,
    ) -> io::Result<HostServices> {
        let gntdev = GrantDevice::open()?;
        let mut privcmd = Privcmd::open()?;
        let state = domctl::probe_state_query(&mut privcmd, master.0);
        match state {
            StateQuery::Supported => log::info!("domain states: XEN_DOMCTL_get_domain_state"),
            StateQuery::DomainInfo(v) => {
                log::info!("domain states: XEN_DOMCTL_getdomaininfo, interface version {v:#x}")
            }
            StateQuery::Unsupported => log::warn!(
                "domain states unavailable (no domctl this Xen accepts): dead domains are \
                 noticed only when the toolstack releases them"
            ),
        }
        Ok(HostServices {
            xen: Some(Xen {
                evtchn,
                gntdev,
                privcmd,
                state,
                virq,
            }),
        })
    }

    /// The port dom0's kernel allocated for the store (`/proc/xen/xsd_port`).
    pub(crate) fn kernel_port() -> io::Result<u32> {
        let port_text = fs::read_to_string("/proc/xen/xsd_port")
            .map_err(|e| io::Error::new(e.kind(), format!("/proc/xen/xsd_port: {e}")))?;
        port_text
            .trim()
            .parse::<u32>()
            .map_err(|_| io::Error::other(format!("/proc/xen/xsd_port: not a port: {port_text:?}")))
    }

    /// Dom0's own ring (`/proc/xen/xsd_kva`) and its store port (`/proc/xen/xsd_port`).
    pub(crate) fn kernel_ring() -> io::Result<KernelRing> {
        let port = HostServices::kernel_port()?;
        let kva = if Path::new("/dev/xen/xsd_kva").exists() {
            "/dev/xen/xsd_kva"
        } else {
            "/proc/xen/xsd_kva"
        };
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(kva)
            .map_err(|e| io::Error::new(e.kind(), format!("{kva}: {e}")))?;
        // SAFETY: a new shared mapping of the one page the kernel shares with the store;
        // no existing memory is replaced (no fixed address). It is never unmapped: dom0's
        // ring is served for the daemon's life.
        let page = unsafe {
            mmap(
                std::ptr::null_mut(),
                PAGE_SIZE,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                file.as_fd(),
                0,
            )
        }
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("mmap {kva}: {e}")))?;
        let addr = NonNull::new(page.cast::<u8>())
            .ok_or_else(|| io::Error::other(format!("mmap {kva}: a null page")))?;
        Ok(KernelRing {
            ring: HostRing::new(addr, Mapping::Kernel),
            port,
        })
    }

    /// A served ring mapped again after a live update or a restart (the `ring` argument of
    /// `xs_serve::Dispatcher::restore`): dom0's own (the ring served without an
    /// introduction) from the kernel, a guest's by grant or frame, as at its introduction.
    pub(crate) fn map_again(
        services: &mut HostServices,
        domid: DomId,
        intro: Option<Introduction>,
    ) -> io::Result<HostRing> {
        match intro {
            None => HostServices::kernel_ring().map(|k| k.ring),
            Some(_) => xs_serve::map_again(services, domid, intro),
        }
    }

    /// The event-channel fd to poll, and the `VIRQ_DOM_EXC` port, on Xen.
    pub(crate) fn event_source(&self) -> Option<(RawFd, u32)> {
        self.xen.as_ref().map(|x| (x.evtchn.raw_fd(), x.virq))
    }

    /// Takes the ports with pending events (each masked until re-armed), into `out`.
    pub(crate) fn pending_events(&mut self, out: &mut Vec<u32>) {
        if let Some(x) = self.xen.as_mut()
            && let Err(e) = x.evtchn.pending(out)
        {
            log::warn!("reading /dev/xen/evtchn: {e}");
        }
    }
}

impl Services for HostServices {
    type Ring = HostRing;
    type Error = io::Error;

    /// Maps the domain's grant `GNTTAB_RESERVED_XENSTORE` (C xenstored's `map_interface`),
    /// else its frame `gfn` through privcmd (what C xenstored did before, and what works when
    /// the toolstack did not seed the grant).
    fn map_ring(&mut self, domid: DomId, gfn: u64) -> io::Result<HostRing> {
        let Some(x) = self.xen.as_mut() else {
            return Err(io::Error::other("no Xen"));
        };
        match x.gntdev.map(domid.0, GNTTAB_RESERVED_XENSTORE) {
            Ok(m) => return Ok(HostRing::new(m.addr(), Mapping::Grant(m))),
            Err(e) => log::info!(
                "dom{domid}: grant {GNTTAB_RESERVED_XENSTORE} not mappable ({e}); mapping frame \
                 {gfn:#x} instead"
            ),
        }
        let m = x.privcmd.map_foreign(domid.0, gfn).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("neither its grant nor frame {gfn:#x}: {e}"),
            )
        })?;
        Ok(HostRing::new(m.addr(), Mapping::Foreign(m)))
    }

    fn unmap_ring(&mut self, domid: DomId, ring: HostRing) {
        let Some(x) = self.xen.as_mut() else {
            return;
        };
        let result = match ring.mapping {
            Mapping::Grant(m) => x.gntdev.unmap(m),
            Mapping::Foreign(m) => x.privcmd.unmap_foreign(m),
            Mapping::Kernel => Ok(()),
        };
        if let Err(e) = result {
            log::warn!("dom{domid}: unmapping its ring: {e}");
        }
    }

    fn bind_interdomain(&mut self, domid: DomId, remote_port: u32) -> io::Result<u32> {
        let Some(x) = self.xen.as_mut() else {
            return Err(io::Error::other("no Xen"));
        };
        x.evtchn.bind_interdomain(domid.0, remote_port)
    }

    fn unbind(&mut self, local_port: u32) {
        if let Some(x) = self.xen.as_mut()
            && let Err(e) = x.evtchn.unbind(local_port)
        {
            log::warn!("closing event channel {local_port}: {e}");
        }
    }

    fn notify(&mut self, local_port: u32) {
        if let Some(x) = self.xen.as_mut()
            && let Err(e) = x.evtchn.notify(local_port)
        {
            log::warn!("notifying event channel {local_port}: {e}");
        }
    }

    fn rearm(&mut self, local_port: u32) {
        if let Some(x) = self.xen.as_mut()
            && let Err(e) = x.evtchn.unmask(local_port)
        {
            log::warn!("unmasking event channel {local_port}: {e}");
        }
    }

    fn serves_rings(&self) -> bool {
        self.xen.is_some()
    }

    /// As C xenstored's `domain_cleanup`: a domain that shut down (or crashed) fires
    /// `@releaseDomain` once; one that is dying, or gone, is forgotten.
    fn domain_state(&mut self, domid: DomId) -> DomainState {
        let Some(x) = self.xen.as_mut() else {
            return DomainState::Running;
        };
        let (state, unknown) = match x.state {
            StateQuery::Supported => {
                from_domain_state(domctl::get_domain_state(&mut x.privcmd, domid.0))
            }
            StateQuery::DomainInfo(v) => domctl::state_from_domain_info(
                domid,
                domctl::getdomaininfo(&mut x.privcmd, domid.0, v),
            ),
            StateQuery::Unsupported => (DomainState::Running, None),
        };
        if let Some(e) = unknown {
            log::warn!("dom{domid}: domain state unknown: {e}");
        }
        state
    }

    fn entropy(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        // The watch-hash key: without entropy the daemon must not start with a guessable key
        // (main draws a key first and fails if it cannot), so this cannot fail after start.
        if let Err(e) = getrandom::fill(&mut bytes) {
            log::error!("no entropy: {e}");
        }
        u64::from_ne_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_state_answers() {
        let state = |state| {
            Ok(domctl::GetDomainState {
                state,
                caps: 0,
                pad0: 0,
                unique_id: 1,
            })
        };
        use domctl::{STATE_DEAD, STATE_DYING, STATE_EXIST, STATE_SHUTDOWN};
        assert_eq!(
            from_domain_state(state(STATE_EXIST)).0,
            DomainState::Running
        );
        let shut = STATE_EXIST | STATE_SHUTDOWN;
        assert_eq!(from_domain_state(state(shut)).0, DomainState::Shutdown);
        let dying = STATE_EXIST | STATE_DYING;
        assert_eq!(from_domain_state(state(dying)).0, DomainState::Dying);
        assert_eq!(from_domain_state(state(STATE_DEAD)).0, DomainState::Dying);
        assert_eq!(from_domain_state(Err(Errno::EPERM)).0, DomainState::Dying);
        assert_eq!(
            from_domain_state(Err(Errno::EINVAL)),
            (DomainState::Running, Some(Errno::EINVAL))
        );
    }

    #[test]
    fn without_xen_nothing_is_served() {
        let mut s = HostServices::sockets_only();
        assert!(!s.serves_rings());
        assert!(s.event_source().is_none());
        assert!(s.map_ring(DomId(1), 0).is_err());
        assert_eq!(s.domain_state(DomId(1)), DomainState::Running);
        assert_ne!(s.entropy(), s.entropy());
    }
}
