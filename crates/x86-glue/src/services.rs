//! [`XenServices`]: the platform services of the serving layer ([`xs_serve::Services`]) on
//! Xen, for a store running as a stub domain: grant mappings into a reserved guest-physical
//! range, `event_channel_op`, domain states (`XEN_DOMCTL_get_domain_state` on Xen 4.21+,
//! `XEN_DOMCTL_getdomaininfo` before), RDRAND, and Xen system time
//! from `vcpu_time_info` and the TSC.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Deref;
use core::ptr::NonNull;

use xs_core::DomId;
use xs_ring::RawPage;
use xs_serve::{BoundedLines, DomainState, Services};

use crate::domctl::{self, StateQuery};
use crate::error::Error;
use crate::evtchn;
use crate::grant::{self, GNTTAB_RESERVED_XENSTORE, MapArea, Mapping};
use crate::hypercall::{Errno, Hypercalls};
use crate::rng::Rng;
use crate::shared_info::SharedInfo;

/// A guest's ring page, mapped by grant at a page of the map area.
#[derive(Debug)]
pub struct XenRing {
    page: RawPage,
    mapping: Mapping,
    slot: usize,
}

/// The ring is reached as its page: [`Page`](xs_ring::Page) comes with the dereference.
impl Deref for XenRing {
    type Target = RawPage;

    fn deref(&self) -> &RawPage {
        &self.page
    }
}

/// Most error lines kept for the program to print.
const ERRORS_KEPT: usize = 32;

/// The services on Xen.
#[derive(Debug)]
pub struct XenServices<'s, H: Hypercalls> {
    hc: H,
    shared: &'s SharedInfo,
    vcpu: usize,
    area: MapArea,
    rng: Rng,
    /// Reads the TSC (the program's `rdtsc`; a fake clock in tests).
    tsc: fn() -> u64,
    /// `unique_id` of each mapped domain when its ring was mapped.
    incarnation: BTreeMap<DomId, u64>,
    /// How domain states are asked; `None` until probed, when `XEN_DOMCTL_get_domain_state`'s
    /// answers are trusted but its errors do not mean "gone".
    queries: Option<StateQuery>,
    errors: BoundedLines<ERRORS_KEPT>,
}

impl<'s, H: Hypercalls> XenServices<'s, H> {
    /// The services over `hc`, with `shared` the domain's `shared_info`, `vcpu` the vCPU
    /// whose `vcpu_info` events go to, `area` the range foreign rings are mapped at, and
    /// `tsc` the TSC (Xen system time is computed from it and `vcpu_time_info`).
    ///
    /// # Safety
    ///
    /// `hc` must reach the Xen this program runs on (or, in tests, a model of it whose grant
    /// mappings leave the area's memory in place). Every page of `area` must be mapped in the
    /// program's page tables at the virtual address equal to its guest-physical address,
    /// writable, 4-byte aligned at least, lie in a hole of the guest-physical map (no RAM,
    /// no MMIO: Xen puts the granted frames there), and be used by nothing else for as long
    /// as the services live.
    pub unsafe fn new(
        hc: H,
        shared: &'s SharedInfo,
        vcpu: usize,
        area: MapArea,
        rng: Rng,
        tsc: fn() -> u64,
    ) -> XenServices<'s, H> {
        XenServices {
            hc,
            shared,
            vcpu,
            area,
            rng,
            tsc,
            incarnation: BTreeMap::new(),
            queries: None,
            errors: BoundedLines::default(),
        }
    }

    /// The hypercalls.
    pub fn hypercalls(&mut self) -> &mut H {
        &mut self.hc
    }

    /// `shared_info`.
    pub fn shared_info(&self) -> &'s SharedInfo {
        self.shared
    }

    /// The vCPU events are delivered to.
    pub fn vcpu(&self) -> usize {
        self.vcpu
    }

    /// Pages of the map area still free.
    pub fn free_map_pages(&self) -> usize {
        self.area.available()
    }

    /// Learns how domain states can be asked here, from `domid` (a domain that exists: the
    /// privileged one): [`domctl::probe_state_query`].
    pub fn probe_domain_state(&mut self, domid: DomId) -> StateQuery {
        let queries = domctl::probe_state_query(&mut self.hc, domid.0);
        self.queries = Some(queries);
        queries
    }

    /// Errors met in operations that cannot return them (unmap, unbind, notify), oldest
    /// first.
    pub fn take_errors(&mut self) -> Vec<String> {
        self.errors.take("more errors not kept")
    }

    fn unique_id(&mut self, domid: DomId) -> Option<u64> {
        if matches!(
            self.queries,
            Some(StateQuery::Unsupported | StateQuery::DomainInfo(_))
        ) {
            return None;
        }
        domctl::get_domain_state(&mut self.hc, domid.0)
            .ok()
            .map(|s| s.unique_id)
    }
}

impl<H: Hypercalls> Services for XenServices<'_, H> {
    type Ring = XenRing;
    type Error = Error;

    /// Maps the domain's grant `GNTTAB_RESERVED_XENSTORE`. `gfn` (from `INTRODUCE`) is what a
    /// privileged store would map directly; a stub domain cannot, and, like C xenstored,
    /// ignores it.
    fn map_ring(&mut self, domid: DomId, _gfn: u64) -> Result<XenRing, Error> {
        let (slot, addr) = self.area.take().ok_or(Error::MapAreaFull)?;
        let mapping = match grant::map_grant_ref(
            &mut self.hc,
            domid.0,
            GNTTAB_RESERVED_XENSTORE,
            addr as u64,
            false,
        ) {
            Ok(m) => m,
            Err(e) => {
                self.area.give(slot);
                return Err(Error::Grant(e));
            }
        };
        let Some(ptr) = NonNull::new(core::ptr::with_exposed_provenance_mut::<u8>(addr)) else {
            // `MapArea` never hands out address 0.
            let _ = grant::unmap_grant_ref(&mut self.hc, mapping);
            return Err(Error::BadMapArea);
        };
        if let Some(id) = self.unique_id(domid) {
            self.incarnation.insert(domid, id);
        }
        // SAFETY: Xen mapped the granted page at guest-physical `addr` (the map succeeded),
        // which the program maps at the same virtual address, writable and aligned (contract
        // of `new`); the page stays mapped until `unmap_ring` consumes this ring, and the
        // store accesses it only through the `RawPage`.
        let page = unsafe { RawPage::new(ptr) };
        Ok(XenRing {
            page,
            mapping,
            slot,
        })
    }

    fn unmap_ring(&mut self, domid: DomId, ring: XenRing) {
        // The `RawPage` is an address only (nothing to drop); with the ring consumed here,
        // nothing accesses the page once it is unmapped.
        let XenRing { mapping, slot, .. } = ring;
        self.incarnation.remove(&domid);
        match grant::unmap_grant_ref(&mut self.hc, mapping) {
            Ok(()) => self.area.give(slot),
            // The frame may still be there: never hand the slot out again.
            Err(e) => self
                .errors
                .push(format!("dom{domid}: unmapping the ring failed: {e}")),
        }
    }

    fn bind_interdomain(&mut self, domid: DomId, remote_port: u32) -> Result<u32, Error> {
        let local = evtchn::bind_interdomain(&mut self.hc, domid.0, remote_port)?;
        if let Some(vcpu) = self.shared.vcpu(self.vcpu)
            && let Err(e) = evtchn::unmask(&mut self.hc, self.shared, vcpu, local)
        {
            self.errors
                .push(format!("dom{domid}: unmasking port {local} failed: {e}"));
        }
        Ok(local)
    }

    fn unbind(&mut self, local_port: u32) {
        if let Err(e) = evtchn::close(&mut self.hc, local_port) {
            self.errors
                .push(format!("closing port {local_port} failed: {e}"));
        }
    }

    fn notify(&mut self, local_port: u32) {
        if let Err(e) = evtchn::send(&mut self.hc, local_port) {
            self.errors
                .push(format!("notifying port {local_port} failed: {e}"));
        }
    }

    fn domain_state(&mut self, domid: DomId) -> DomainState {
        match self.queries {
            Some(StateQuery::Unsupported) => return DomainState::Running,
            Some(StateQuery::DomainInfo(v)) => {
                let answer = domctl::getdomaininfo(&mut self.hc, domid.0, v);
                let (state, unknown) = domctl::state_from_domain_info(domid, answer);
                if let Some(e) = unknown {
                    self.errors
                        .push(format!("dom{domid}: domain state unknown: {e}"));
                }
                return state;
            }
            None | Some(StateQuery::Supported) => {}
        }
        match domctl::get_domain_state(&mut self.hc, domid.0) {
            Ok(s) => {
                let replaced = self
                    .incarnation
                    .get(&domid)
                    .is_some_and(|&id| id != s.unique_id);
                if replaced {
                    DomainState::Dying
                } else {
                    s.domain_state()
                }
            }
            // No such domain: `EPERM` for a caller that is not the control domain, `ESRCH`
            // for one that is (`do_domctl`). Trusted only once the query is known to work.
            Err(Errno::EPERM | Errno::ESRCH) if self.queries == Some(StateQuery::Supported) => {
                DomainState::Dying
            }
            Err(e) => {
                self.errors
                    .push(format!("dom{domid}: domain state unknown: {e}"));
                DomainState::Running
            }
        }
    }

    fn entropy(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// Xen system time (ns since the host booted), from this vCPU's `vcpu_time_info`.
    fn now_ns(&mut self) -> Option<u64> {
        let vcpu = self.shared.vcpu(self.vcpu)?;
        vcpu.time.system_time_ns((self.tsc)())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::PAGE_SIZE;
    use crate::xenfake::{FakeXen, PageBuf};
    use std::boxed::Box;
    use xs_ring::Page;
    use xs_ring::layout::Field;

    fn services<'s>(
        xen: FakeXen,
        si: &'s SharedInfo,
        area: &'s mut PageBuf,
    ) -> XenServices<'s, FakeXen> {
        let map = MapArea::new(area.base(), area.pages()).unwrap();
        // SAFETY: the area is heap memory this test owns for `'s`; the fake's grant maps
        // leave it in place.
        unsafe { XenServices::new(xen, si, 0, map, Rng::with_rdrand(false), || 0) }
    }

    #[test]
    fn rings_come_and_go() {
        let si = Box::new(SharedInfo::new());
        let mut area = PageBuf::new(2);
        let mut xen = FakeXen::new();
        xen.add_domain(1);
        xen.add_domain(2);
        xen.add_domain(3);
        let mut s = services(xen, &si, &mut area);
        assert_eq!(s.probe_domain_state(DomId(1)), StateQuery::Supported);
        let r1 = s.map_ring(DomId(1), 0).unwrap();
        let r2 = s.map_ring(DomId(2), 0).unwrap();
        assert_eq!(s.map_ring(DomId(3), 0).unwrap_err(), Error::MapAreaFull);
        // The ring is the area's page.
        r1.store(Field::ReqProd, 7);
        let base = area_base(&s);
        assert_eq!(s.hypercalls().mapped_at(base as u64), Some(1));
        assert_eq!(s.hypercalls().mapped_at((base + PAGE_SIZE) as u64), Some(2));
        s.unmap_ring(DomId(1), r1);
        assert_eq!(s.hypercalls().mapped_at(base as u64), None);
        assert_eq!(s.free_map_pages(), 1);
        // A failed unmap leaks the slot rather than reuse it.
        s.hypercalls()
            .fail_next(crate::hypercall::nr::GRANT_TABLE_OP, Errno::EFAULT);
        s.unmap_ring(DomId(2), r2);
        assert_eq!(s.free_map_pages(), 1);
        assert_eq!(s.take_errors().len(), 1);
        // A domain with no grant: the slot comes back.
        assert!(matches!(s.map_ring(DomId(9), 0), Err(Error::Grant(_))));
        assert_eq!(s.free_map_pages(), 1);
    }

    fn area_base(s: &XenServices<'_, FakeXen>) -> usize {
        s.area.base()
    }

    #[test]
    fn ports_are_bound_unmasked_and_closed() {
        let si = Box::new(SharedInfo::new());
        let mut area = PageBuf::new(1);
        let mut xen = FakeXen::new();
        xen.attach_shared_info(&si);
        xen.add_domain(4);
        let remote = xen.alloc_remote(4);
        let mut s = services(xen, &si, &mut area);
        si.mask(1);
        si.mask(2);
        let local = s.bind_interdomain(DomId(4), remote).unwrap();
        assert!(!si.is_masked(local));
        s.notify(local);
        assert_eq!(s.hypercalls().sent(), [local]);
        s.unbind(local);
        s.notify(local);
        assert_eq!(s.take_errors().len(), 1, "notifying a closed port");
        assert!(s.bind_interdomain(DomId(4), 999).is_err());
    }

    #[test]
    fn domain_states() {
        let si = Box::new(SharedInfo::new());
        let mut area = PageBuf::new(1);
        let mut xen = FakeXen::new();
        xen.add_domain(0);
        xen.add_domain(5);
        let mut s = services(xen, &si, &mut area);
        assert_eq!(s.probe_domain_state(DomId(0)), StateQuery::Supported);
        let ring = s.map_ring(DomId(5), 0).unwrap();
        assert_eq!(s.domain_state(DomId(5)), DomainState::Running);
        s.hypercalls()
            .set_domain_state(5, domctl::STATE_EXIST | domctl::STATE_SHUTDOWN);
        assert_eq!(s.domain_state(DomId(5)), DomainState::Shutdown);
        s.hypercalls()
            .set_domain_state(5, domctl::STATE_EXIST | domctl::STATE_DYING);
        assert_eq!(s.domain_state(DomId(5)), DomainState::Dying);
        // Gone, and a new domain with the same id: both are "dying" for the old ring.
        s.hypercalls().remove_domain(5);
        assert_eq!(s.domain_state(DomId(5)), DomainState::Dying);
        s.hypercalls().add_domain(5);
        assert_eq!(s.domain_state(DomId(5)), DomainState::Dying);
        s.unmap_ring(DomId(5), ring);
        assert_eq!(s.domain_state(DomId(5)), DomainState::Running);
    }

    /// Xen 4.17: no `get_domain_state`, but `getdomaininfo` for the XenStore domain, which
    /// answers about the next domain for one that is gone.
    #[test]
    fn on_xen_4_17_states_come_from_getdomaininfo() {
        let si = Box::new(SharedInfo::new());
        let mut area = PageBuf::new(1);
        let mut xen = FakeXen::new();
        xen.be_xen_4_17();
        xen.add_domain(0);
        xen.add_domain(5);
        xen.add_domain(9);
        let mut s = services(xen, &si, &mut area);
        assert!(matches!(
            s.probe_domain_state(DomId(0)),
            StateQuery::DomainInfo(_)
        ));
        assert_eq!(s.domain_state(DomId(5)), DomainState::Running);
        s.hypercalls()
            .set_domain_state(5, domctl::STATE_EXIST | domctl::STATE_SHUTDOWN);
        assert_eq!(s.domain_state(DomId(5)), DomainState::Shutdown);
        s.hypercalls().remove_domain(5);
        assert_eq!(s.domain_state(DomId(5)), DomainState::Dying);
        assert_eq!(s.domain_state(DomId(9)), DomainState::Running);
    }

    #[test]
    fn without_domain_state_queries_everything_runs() {
        let si = Box::new(SharedInfo::new());
        let mut area = PageBuf::new(1);
        let mut xen = FakeXen::new();
        xen.add_domain(0);
        xen.refuse_domctl(Errno::EACCES);
        let mut s = services(xen, &si, &mut area);
        assert_eq!(s.probe_domain_state(DomId(0)), StateQuery::Unsupported);
        assert_eq!(s.domain_state(DomId(7)), DomainState::Running);
        assert_ne!(s.entropy(), s.entropy());
    }
}
