//! [`Platform`]: `xs_serve::Services` for the VMM. The guest's store page is its own RAM
//! (the frame `INTRODUCE` names, read in place through an [`xs_ring::RawPage`]); the store's
//! event channel is a local port of the VMM's [`Xen`], and notifying it raises the guest's
//! port in `shared_info` (an upcall, injected by the run loop).

use std::sync::Arc;
use std::time::Instant;

use xs_core::DomId;
use xs_ring::RawPage;
use xs_serve::{DomainState, Services};

use crate::memory::GuestRam;
use crate::xen::Xen;

/// The VMM's platform: guest memory and the Xen it plays.
#[derive(Debug)]
pub struct Platform {
    /// The guest's Xen.
    pub xen: Xen,
    /// Guest memory.
    pub ram: Arc<GuestRam>,
    /// The guest's state, as the store sees it.
    pub state: DomainState,
    started: Instant,
}

impl Platform {
    /// The platform over `ram`.
    pub fn new(xen: Xen, ram: Arc<GuestRam>) -> Platform {
        Platform {
            xen,
            ram,
            state: DomainState::Running,
            started: Instant::now(),
        }
    }
}

/// A mapped store page: the guest RAM page, kept alive by the `GuestRam` it lies in.
#[derive(Debug)]
pub struct GuestPage {
    page: RawPage,
    _ram: Arc<GuestRam>,
}

impl std::ops::Deref for GuestPage {
    type Target = RawPage;

    fn deref(&self) -> &RawPage {
        &self.page
    }
}

impl Services for Platform {
    type Ring = GuestPage;
    type Error = String;

    fn map_ring(&mut self, domid: DomId, gfn: u64) -> Result<GuestPage, String> {
        if domid.0 != self.xen.domid() {
            return Err(format!("no domain {domid}"));
        }
        let page = self
            .ram
            .page(gfn)
            .ok_or_else(|| format!("dom{domid}'s store page {gfn:#x} is not guest memory"))?;
        Ok(GuestPage {
            // SAFETY: `page` is a whole 4096-byte, page-aligned page of guest memory, which
            // stays mapped while the `GuestRam` lives: the `Arc` held beside it keeps it. The
            // guest writes it concurrently; `RawPage` reads it only with atomic and volatile
            // accesses and checks every index (the contract of `RawPage::new`).
            page: unsafe { RawPage::new(page) },
            _ram: Arc::clone(&self.ram),
        })
    }

    fn unmap_ring(&mut self, _domid: DomId, _ring: GuestPage) {}

    fn bind_interdomain(&mut self, domid: DomId, remote_port: u32) -> Result<u32, String> {
        if domid.0 != self.xen.domid() {
            return Err(format!("no domain {domid}"));
        }
        self.xen
            .bind_local(remote_port)
            .map_err(|e| format!("binding dom{domid} port {remote_port}: {e}"))
    }

    fn unbind(&mut self, local_port: u32) {
        self.xen.close_local(local_port);
    }

    fn notify(&mut self, local_port: u32) {
        self.xen.notify_local(&self.ram, local_port);
    }

    fn domain_state(&mut self, _domid: DomId) -> DomainState {
        self.state
    }

    fn entropy(&mut self) -> u64 {
        let mut b = [0u8; 8];
        // The OS always has entropy once booted; were it to fail, the time is the fallback
        // (the store's hash key only has to be unpredictable to the guest).
        if getrandom::fill(&mut b).is_err() {
            return self.started.elapsed().as_nanos() as u64 ^ 0x243f_6a88_85a3_08d3;
        }
        u64::from_ne_bytes(b)
    }

    fn now_ns(&mut self) -> Option<u64> {
        u64::try_from(self.started.elapsed().as_nanos()).ok()
    }
}
