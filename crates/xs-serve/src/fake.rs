//! [`FakeServices`]: the platform services over heap pages, for host tests (this crate's,
//! and other crates' with feature `fake`).
//!
//! Each domain a test creates gets a fresh [`SharedPage`] (what its XenStore ring would be);
//! the test drives the guest's end of it with an [`xs_ring::Guest`] while the store serves
//! the other end. Ports are numbered from 10 up; notifications, unbinds and unmaps are
//! recorded; domain states are set by the test; map and bind failures can be scripted.
//! Entropy comes from a `fastrand::Rng` with a fixed seed, so that runs are deterministic.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use xs_core::DomId;
use xs_ring::SharedPage;

use crate::services::{DomainState, Services};

/// The seed of [`FakeServices`]' entropy: fixed, so that test runs are reproducible.
const ENTROPY_SEED: u64 = 0x0e47_5eed_fa4e_0001;

/// A fake domain's ring, shared with the test (a [`Page`](xs_ring::Page) through the `Arc`).
pub type FakeRing = Arc<SharedPage>;

/// Why a fake service failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FakeError {
    /// No such domain (or it is dying).
    NoSuchDomain,
    /// The test scripted this failure ([`FakeServices::fail_map`], [`FakeServices::fail_bind`]).
    Scripted,
    /// Port 0 is never a domain's port.
    BadPort,
}

impl fmt::Display for FakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FakeError::NoSuchDomain => "no such domain",
            FakeError::Scripted => "failure scripted by the test",
            FakeError::BadPort => "bad port",
        })
    }
}

impl core::error::Error for FakeError {}

#[derive(Debug)]
struct FakeDomain {
    page: Arc<SharedPage>,
    state: DomainState,
    maps: usize,
}

/// The fake.
#[derive(Debug)]
pub struct FakeServices {
    domains: BTreeMap<DomId, FakeDomain>,
    /// Local port -> (domain, remote port).
    bound: BTreeMap<u32, (DomId, u32)>,
    next_port: u32,
    notified: Vec<u32>,
    unbound: Vec<u32>,
    unmapped: Vec<DomId>,
    fail_map: BTreeSet<DomId>,
    fail_bind: BTreeSet<DomId>,
    entropy: fastrand::Rng,
    rearmed: Vec<u32>,
    now_ns: Option<u64>,
}

impl Default for FakeServices {
    fn default() -> Self {
        FakeServices::new()
    }
}

impl FakeServices {
    /// No domains yet.
    pub fn new() -> FakeServices {
        FakeServices {
            domains: BTreeMap::new(),
            bound: BTreeMap::new(),
            next_port: 10,
            notified: Vec::new(),
            unbound: Vec::new(),
            unmapped: Vec::new(),
            fail_map: BTreeSet::new(),
            fail_bind: BTreeSet::new(),
            entropy: fastrand::Rng::with_seed(ENTROPY_SEED),
            rearmed: Vec::new(),
            now_ns: None,
        }
    }

    /// A new running domain `domid` with a fresh, zeroed ring page, which it returns (the
    /// guest's end). Replaces an earlier domain with the same id, as Xen reuses ids.
    pub fn create_domain(&mut self, domid: DomId) -> Arc<SharedPage> {
        let page = Arc::new(SharedPage::default());
        self.domains.insert(
            domid,
            FakeDomain {
                page: page.clone(),
                state: DomainState::Running,
                maps: 0,
            },
        );
        page
    }

    /// The ring page of `domid`.
    pub fn page(&self, domid: DomId) -> Option<Arc<SharedPage>> {
        self.domains.get(&domid).map(|d| d.page.clone())
    }

    /// Sets the state [`Services::domain_state`] reports.
    pub fn set_state(&mut self, domid: DomId, state: DomainState) {
        if let Some(d) = self.domains.get_mut(&domid) {
            d.state = state;
        }
    }

    /// Removes the domain (it is then reported [`DomainState::Dying`]).
    pub fn destroy_domain(&mut self, domid: DomId) {
        self.domains.remove(&domid);
    }

    /// The next `map_ring` of `domid` fails.
    pub fn fail_map(&mut self, domid: DomId) {
        self.fail_map.insert(domid);
    }

    /// The next `bind_interdomain` to `domid` fails.
    pub fn fail_bind(&mut self, domid: DomId) {
        self.fail_bind.insert(domid);
    }

    /// The local port bound to `domid` (the lowest, if several).
    pub fn local_port(&self, domid: DomId) -> Option<u32> {
        self.bound
            .iter()
            .find_map(|(&l, &(d, _))| (d == domid).then_some(l))
    }

    /// The remote port a local port is bound to.
    pub fn remote_port(&self, local_port: u32) -> Option<(DomId, u32)> {
        self.bound.get(&local_port).copied()
    }

    /// Local ports bound now.
    pub fn bound_ports(&self) -> Vec<u32> {
        self.bound.keys().copied().collect()
    }

    /// Whether `domid`'s ring is mapped.
    pub fn is_mapped(&self, domid: DomId) -> bool {
        self.domains.get(&domid).is_some_and(|d| d.maps > 0)
    }

    /// Takes the local ports notified since the last call, in order.
    pub fn take_notified(&mut self) -> Vec<u32> {
        core::mem::take(&mut self.notified)
    }

    /// Local ports unbound so far, in order.
    pub fn unbound(&self) -> &[u32] {
        &self.unbound
    }

    /// Domains whose ring was unmapped so far, in order.
    pub fn unmapped(&self) -> &[DomId] {
        &self.unmapped
    }

    /// Takes the local ports re-armed since the last call, in order.
    pub fn take_rearmed(&mut self) -> Vec<u32> {
        core::mem::take(&mut self.rearmed)
    }

    /// The platform as the next program finds it after this one execs (live update) or
    /// hands over to a new image: the same domains with the same pages and states, the same
    /// bound event channels (they live in the hypervisor, or in an inherited device), the
    /// same port numbering, but no ring mapped (the old address space is gone). Scripted
    /// failures and the records (notifications, unbinds, unmaps, re-arms) start empty; the
    /// clock is kept.
    pub fn exec(&self) -> FakeServices {
        FakeServices {
            domains: self
                .domains
                .iter()
                .map(|(&domid, d)| {
                    (
                        domid,
                        FakeDomain {
                            page: d.page.clone(),
                            state: d.state,
                            maps: 0,
                        },
                    )
                })
                .collect(),
            bound: self.bound.clone(),
            next_port: self.next_port,
            notified: Vec::new(),
            unbound: Vec::new(),
            unmapped: Vec::new(),
            fail_map: BTreeSet::new(),
            fail_bind: BTreeSet::new(),
            entropy: fastrand::Rng::with_seed(ENTROPY_SEED ^ u64::from(self.next_port)),
            rearmed: Vec::new(),
            now_ns: self.now_ns,
        }
    }

    /// Sets the time [`Services::now_ns`] reports (`None`, the default: no clock).
    pub fn set_now_ns(&mut self, now: Option<u64>) {
        self.now_ns = now;
    }
}

impl Services for FakeServices {
    type Ring = FakeRing;
    type Error = FakeError;

    fn map_ring(&mut self, domid: DomId, _gfn: u64) -> Result<FakeRing, FakeError> {
        if self.fail_map.remove(&domid) {
            return Err(FakeError::Scripted);
        }
        let d = self
            .domains
            .get_mut(&domid)
            .filter(|d| d.state != DomainState::Dying)
            .ok_or(FakeError::NoSuchDomain)?;
        d.maps = d.maps.saturating_add(1);
        Ok(d.page.clone())
    }

    fn unmap_ring(&mut self, domid: DomId, ring: FakeRing) {
        drop(ring);
        if let Some(d) = self.domains.get_mut(&domid) {
            d.maps = d.maps.saturating_sub(1);
        }
        self.unmapped.push(domid);
    }

    fn bind_interdomain(&mut self, domid: DomId, remote_port: u32) -> Result<u32, FakeError> {
        if self.fail_bind.remove(&domid) {
            return Err(FakeError::Scripted);
        }
        if !self.domains.contains_key(&domid) {
            return Err(FakeError::NoSuchDomain);
        }
        if remote_port == 0 {
            return Err(FakeError::BadPort);
        }
        let local = self.next_port;
        self.next_port = self.next_port.saturating_add(1);
        self.bound.insert(local, (domid, remote_port));
        Ok(local)
    }

    fn unbind(&mut self, local_port: u32) {
        self.bound.remove(&local_port);
        self.unbound.push(local_port);
    }

    fn notify(&mut self, local_port: u32) {
        self.notified.push(local_port);
    }

    fn rearm(&mut self, local_port: u32) {
        self.rearmed.push(local_port);
    }

    fn domain_state(&mut self, domid: DomId) -> DomainState {
        self.domains
            .get(&domid)
            .map_or(DomainState::Dying, |d| d.state)
    }

    fn entropy(&mut self) -> u64 {
        self.entropy.u64(..)
    }

    fn now_ns(&mut self) -> Option<u64> {
        self.now_ns
    }
}
