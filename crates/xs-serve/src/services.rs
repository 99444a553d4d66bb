//! What the platform provides to the serving layer: one trait, [`Services`], in the manner of
//! virtio-drivers' `Hal` (design notes §1).
//!
//! Each program implements it once for its platform: x86-glue with Xen hypercalls (the stub
//! domain), xs-host with Linux dom0's `/dev/xen` devices, a VMM with its own guest memory and
//! interrupt injection. `fake::FakeServices` (feature `fake`) implements it over heap
//! pages for host tests.

use core::fmt;

use xs_core::DomId;
use xs_ring::Page;

/// A domain's state, as far as the store cares.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DomainState {
    /// Running (or paused, or anything but the states below).
    Running,
    /// Shut down (finished shutting down) but not yet destroyed: `@releaseDomain` fires once.
    Shutdown,
    /// Dying, dead, gone, or replaced by another domain with the same id: the store forgets
    /// it and stops serving its ring.
    Dying,
}

/// What the platform does for the [`crate::Dispatcher`]: map and unmap a domain's store page,
/// bind, unbind, re-arm and notify event channels, tell a domain's state, draw entropy, and
/// tell the time.
///
/// # Contract
///
/// The trait is safe to implement, but the dispatcher trusts what it returns:
///
/// * A ring returned by [`Services::map_ring`] must stay mapped, and reach the same page,
///   until it is handed back to [`Services::unmap_ring`]. The page itself may be written by
///   the guest at any time: [`xs_ring::Page`] implementations read it with atomic and
///   volatile accesses and the ring code checks every index, so a hostile guest cannot break
///   the store through it. (Constructing such a page from a raw pointer is where the
///   `unsafe` lives: [`xs_ring::RawPage::new`].)
/// * Ports are local port numbers of this side; a port returned by
///   [`Services::bind_interdomain`] is ready to deliver events until [`Services::unbind`].
///   Events the dispatcher should act on are passed to [`crate::Dispatcher::on_event`] by the
///   program's event loop.
/// * Nothing here may call back into the dispatcher.
///
/// # Examples
///
/// The whole platform of a program whose guests' pages it owns (a VMM), in a few lines:
///
/// ```
/// use std::collections::BTreeMap;
/// use std::sync::Arc;
/// use xs_core::DomId;
/// use xs_ring::SharedPage;
/// use xs_serve::{DomainState, Services};
///
/// struct Vmm {
///     pages: BTreeMap<DomId, Arc<SharedPage>>,
///     next_port: u32,
///     to_inject: Vec<u32>,
/// }
///
/// impl Services for Vmm {
///     type Ring = Arc<SharedPage>;
///     type Error = &'static str;
///
///     fn map_ring(&mut self, domid: DomId, _gfn: u64) -> Result<Self::Ring, Self::Error> {
///         self.pages.get(&domid).cloned().ok_or("no such guest")
///     }
///     fn unmap_ring(&mut self, _domid: DomId, _ring: Self::Ring) {}
///     fn bind_interdomain(&mut self, _domid: DomId, _remote: u32) -> Result<u32, Self::Error> {
///         self.next_port += 1;
///         Ok(self.next_port)
///     }
///     fn unbind(&mut self, _local_port: u32) {}
///     fn notify(&mut self, local_port: u32) {
///         self.to_inject.push(local_port); // raise the guest's upcall vector
///     }
///     fn domain_state(&mut self, _domid: DomId) -> DomainState {
///         DomainState::Running
///     }
///     fn entropy(&mut self) -> u64 {
///         // A real platform asks its RNG (getrandom, RDRAND).
///         # 0x243f_6a88_85a3_08d3
///     }
/// }
///
/// let vmm = Vmm { pages: BTreeMap::new(), next_port: 0, to_inject: Vec::new() };
/// let xs = xs_serve::Dispatcher::new(vmm, xs_serve::ServeConfig::default()).unwrap();
/// assert_eq!(xs.served().count(), 0);
/// ```
pub trait Services {
    /// A mapped ring page (anything that is a [`Page`], such as a handle that owns a mapping
    /// and dereferences to an [`xs_ring::RawPage`]).
    type Ring: Page;

    /// Why a service failed, for the log.
    type Error: fmt::Display + fmt::Debug;

    /// Maps `domid`'s XenStore page. `gfn` is the guest frame `INTRODUCE` named; a
    /// stub domain ignores it and maps grant `GNTTAB_RESERVED_XENSTORE`, as C xenstored does.
    fn map_ring(&mut self, domid: DomId, gfn: u64) -> Result<Self::Ring, Self::Error>;

    /// Unmaps a ring [`Services::map_ring`] returned. Nothing accesses it afterwards.
    fn unmap_ring(&mut self, domid: DomId, ring: Self::Ring);

    /// Binds a local port to `domid`'s unbound `remote_port`; returns the local port, which
    /// is ready to deliver events.
    fn bind_interdomain(&mut self, domid: DomId, remote_port: u32) -> Result<u32, Self::Error>;

    /// Closes a local port.
    fn unbind(&mut self, local_port: u32);

    /// Notifies the remote end of a local port.
    fn notify(&mut self, local_port: u32);

    /// Re-enables event delivery on `local_port` after the dispatcher served an event from it.
    /// Platforms that mask a port when they deliver an event (Linux's `/dev/xen/evtchn`
    /// does) unmask it here; those that only clear a pending bit before the service (Xen's
    /// 2-level ABI polled by the stub domain) need nothing, which is the default.
    ///
    /// The dispatcher calls it after serving a ring and before its final re-check of that
    /// ring ([`xs_ring::Server::recheck`], which issues the full fence between the two), so
    /// an update the guest makes after the re-check raises a new event.
    fn rearm(&mut self, local_port: u32) {
        let _ = local_port;
    }

    /// Whether this platform has guest rings at all. `false` on a host without a hypervisor,
    /// whose domains a program reaches by other means (per-domain sockets): an introduced
    /// domain is then not mapped, and stays introduced. Default `true`.
    fn serves_rings(&self) -> bool {
        true
    }

    /// The state of `domid` (asked on [`crate::Dispatcher::on_dom_exc`]).
    fn domain_state(&mut self, domid: DomId) -> DomainState;

    /// 64 bits of entropy: the store's watch-hash key is drawn from it (guests choose the
    /// paths the key hashes, so it must be unpredictable: RDRAND, `getrandom`).
    fn entropy(&mut self) -> u64;

    /// Monotonic time in nanoseconds, if the platform has a clock (Xen system time, the host's
    /// `CLOCK_MONOTONIC`). The dispatcher stamps its log lines with it; platform loops use it
    /// for their sleep timeouts. `None` (the default) leaves the lines unstamped.
    fn now_ns(&mut self) -> Option<u64> {
        None
    }
}
