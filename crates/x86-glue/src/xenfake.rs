//! A model of Xen for host tests: implements [`Hypercalls`] by decoding each call's argument
//! structures from memory (as Xen does), answering from a small model of domains, event
//! channels and grant mappings, and recording every call.
//!
//! What it models, and how faithfully:
//! * event channels: local ports from 1 up, bound to a remote domain's unbound port (which a
//!   test allocates for the guest with [`FakeXen::alloc_remote`]) or to a VIRQ (once);
//!   `bind_interdomain` marks the new local port pending (Xen does, in case the remote side
//!   notified before the bind); `send` is recorded; `unmask` is `evtchn_2l_unmask`; guest
//!   notifications are [`FakeXen::raise`] (`evtchn_2l_set_pending` on the attached
//!   `shared_info`);
//! * grant maps: only `GNTTAB_RESERVED_XENSTORE` of existing domains, flags exactly
//!   `GNTMAP_host_map`; memory is not remapped (the test's "guest" uses the mapped address);
//! * `XEN_DOMCTL_get_domain_state` (non-control caller: `EPERM` for a missing domain);
//! * `SCHEDOP_poll` returns at once and is recorded; `XENMEM_add_to_physmap` of
//!   `shared_info` attaches the page at that frame as the one events are raised on.

use std::boxed::Box;
use std::collections::{BTreeMap, BTreeSet};
use std::ptr;
use std::vec;
use std::vec::Vec;

use crate::domctl::{self, Domctl};
use crate::evtchn::{self, AllocUnbound, BindInterdomain, BindVirq, Port, Status};
use crate::grant::{self, MapGrantRef, UnmapGrantRef};
use crate::hvm::{self, HvmParam};
use crate::hypercall::{Errno, Hypercalls, nr};
use crate::memory::{self, AddToPhysmap};
use crate::sched::{self, SchedPoll, SchedShutdown};
use crate::shared_info::SharedInfo;
use crate::version::{self, FeatureInfo};

/// A 4 KiB-aligned zeroed heap page.
#[repr(C, align(4096))]
pub(crate) struct AlignedPage(pub(crate) [u8; 4096]);

/// Zeroed, page-aligned heap pages (map areas, `shared_info`, hypercall pages in tests).
pub(crate) struct PageBuf(Vec<AlignedPage>);

impl PageBuf {
    pub(crate) fn new(pages: usize) -> PageBuf {
        PageBuf((0..pages).map(|_| AlignedPage([0; 4096])).collect())
    }

    /// The first page's address (provenance exposed, as hypercall arguments are).
    pub(crate) fn base(&mut self) -> usize {
        self.0.as_mut_ptr().expose_provenance()
    }

    pub(crate) fn pages(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn page(&mut self, i: usize) -> &mut [u8; 4096] {
        &mut self.0[i].0
    }
}

#[derive(Debug)]
struct Domain {
    state: u16,
    unique_id: u64,
    /// Its unbound ports that we may bind to.
    unbound: BTreeSet<u32>,
    next_port: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Binding {
    Interdomain { dom: u16, port: u32 },
    Virq(u32),
    Unbound(u16),
}

/// The model.
#[derive(Default)]
pub(crate) struct FakeXen {
    calls: Vec<(u64, [u64; 5])>,
    fail: Option<(u64, Errno)>,
    domctl_refusal: Option<Errno>,
    /// `XEN_DOMCTL_INTERFACE_VERSION` this Xen answers `getdomaininfo` for.
    domctl_interface: u32,
    /// Whether `XEN_DOMCTL_get_domain_state` exists (Xen 4.21+).
    stable_domain_state: bool,
    domains: BTreeMap<u16, Domain>,
    next_unique: u64,
    ports: BTreeMap<u32, Binding>,
    next_local: u32,
    sent: Vec<u32>,
    shared: Option<*const SharedInfo>,
    shared_gpfn: Option<u64>,
    maps: BTreeMap<u32, (u64, u16)>,
    next_handle: u32,
    last_map_flags: Option<u32>,
    eagain: usize,
    yields: usize,
    blocks: usize,
    polls: Vec<(Vec<u32>, u64)>,
    shutdown: Option<u32>,
    params: BTreeMap<u32, u64>,
    console: Vec<u8>,
    memory_map: Vec<memory::E820Entry>,
    reservation: u64,
}

/// The argument at `addr`, as Xen's `copy_from_guest` sees it.
///
/// # Safety
///
/// `addr` must be the exposed address of a live, properly aligned `T` that nothing else
/// accesses during the returned borrow (the wrappers pass their own locals, untouched during
/// the call).
unsafe fn at<'a, T>(addr: u64) -> &'a mut T {
    // SAFETY: as the caller promises.
    unsafe { &mut *ptr::with_exposed_provenance_mut::<T>(addr as usize) }
}

impl FakeXen {
    pub(crate) fn new() -> FakeXen {
        FakeXen {
            next_local: 1,
            next_handle: 1,
            next_unique: 1000,
            domctl_interface: 0x17,
            stable_domain_state: true,
            ..FakeXen::default()
        }
    }

    // ----- the test's side -----------------------------------------------------------------

    /// What `XENMEM_current_reservation` answers for us.
    pub(crate) fn set_reservation(&mut self, pages: u64) {
        self.reservation = pages;
    }

    /// What `XENMEM_memory_map` answers.
    pub(crate) fn set_memory_map(&mut self, map: &[memory::E820Entry]) {
        self.memory_map = map.to_vec();
    }

    pub(crate) fn calls(&self) -> &[(u64, [u64; 5])] {
        &self.calls
    }

    pub(crate) fn calls_of(&self, op: u64) -> Vec<[u64; 5]> {
        self.calls
            .iter()
            .filter(|c| c.0 == op)
            .map(|c| c.1)
            .collect()
    }

    /// The next hypercall `op` fails with `e`.
    pub(crate) fn fail_next(&mut self, op: u64, e: Errno) {
        self.fail = Some((op, e));
    }

    /// Every domctl fails with `e` (an older Xen: `EACCES`).
    pub(crate) fn refuse_domctl(&mut self, e: Errno) {
        self.domctl_refusal = Some(e);
    }

    /// Answers domctls as Xen 4.17 does: `getdomaininfo` under interface version 0x15
    /// (about the next domain from the one asked for), no `get_domain_state`.
    pub(crate) fn be_xen_4_17(&mut self) {
        self.domctl_interface = 0x15;
        self.stable_domain_state = false;
    }

    pub(crate) fn add_domain(&mut self, domid: u16) {
        self.next_unique += 1;
        self.domains.insert(
            domid,
            Domain {
                state: domctl::STATE_EXIST,
                unique_id: self.next_unique,
                unbound: BTreeSet::new(),
                next_port: 1,
            },
        );
    }

    pub(crate) fn remove_domain(&mut self, domid: u16) {
        self.domains.remove(&domid);
    }

    pub(crate) fn set_domain_state(&mut self, domid: u16, state: u16) {
        if let Some(d) = self.domains.get_mut(&domid) {
            d.state = state;
        }
    }

    /// The guest `domid` allocates an unbound port for us (as its kernel does for its
    /// XenStore channel); returns the port number in the guest.
    pub(crate) fn alloc_remote(&mut self, domid: u16) -> u32 {
        let d = self.domains.get_mut(&domid).expect("no such domain");
        let p = d.next_port;
        d.next_port += 1;
        d.unbound.insert(p);
        p
    }

    /// Our local port bound to `domid`'s `remote` port.
    pub(crate) fn local_port_for(&self, domid: u16, remote: u32) -> Option<u32> {
        self.ports.iter().find_map(|(&l, b)| {
            (*b == Binding::Interdomain {
                dom: domid,
                port: remote,
            })
            .then_some(l)
        })
    }

    /// Our local ports bound to anything.
    pub(crate) fn bound_ports(&self) -> Vec<u32> {
        self.ports.keys().copied().collect()
    }

    pub(crate) fn attach_shared_info(&mut self, si: &SharedInfo) {
        self.shared = Some(si as *const SharedInfo);
    }

    fn shared(&self) -> Option<&SharedInfo> {
        // SAFETY: tests attach a `shared_info` that outlives the fake (or map one at a heap
        // page that does); it is only accessed atomically.
        self.shared.map(|p| unsafe { &*p })
    }

    /// The remote end of local `port` notifies us (`evtchn_2l_set_pending`, vCPU 0).
    pub(crate) fn raise(&self, port: u32) {
        if let Some(si) = self.shared() {
            si.raise(0, port);
        }
    }

    pub(crate) fn sent(&self) -> &[u32] {
        &self.sent
    }

    pub(crate) fn take_sent(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.sent)
    }

    pub(crate) fn mapped_at(&self, host_addr: u64) -> Option<u16> {
        self.maps
            .values()
            .find(|(a, _)| *a == host_addr)
            .map(|&(_, d)| d)
    }

    /// Where `domid`'s grant is mapped.
    pub(crate) fn mapping_of(&self, domid: u16) -> Option<u64> {
        self.maps
            .values()
            .find(|(_, d)| *d == domid)
            .map(|&(a, _)| a)
    }

    pub(crate) fn last_map_flags(&self) -> Option<u32> {
        self.last_map_flags
    }

    /// The next `n` map operations answer `GNTST_eagain`.
    pub(crate) fn map_eagain(&mut self, n: usize) {
        self.eagain = n;
    }

    pub(crate) fn yields(&self) -> usize {
        self.yields
    }

    pub(crate) fn polls(&self) -> &[(Vec<u32>, u64)] {
        &self.polls
    }

    pub(crate) fn shutdown_reason(&self) -> Option<u32> {
        self.shutdown
    }

    pub(crate) fn shared_info_gpfn(&self) -> Option<u64> {
        self.shared_gpfn
    }

    pub(crate) fn console(&self) -> &[u8] {
        &self.console
    }

    // ----- Xen's side ----------------------------------------------------------------------

    fn event_channel_op(&mut self, cmd: u64, a: u64) -> Result<u64, Errno> {
        match cmd {
            evtchn::EVTCHNOP_ALLOC_UNBOUND => {
                // SAFETY: the wrapper passes its local `AllocUnbound`.
                let x = unsafe { at::<AllocUnbound>(a) };
                let port = self.new_local();
                self.ports.insert(port, Binding::Unbound(x.remote_dom));
                x.port = port;
            }
            evtchn::EVTCHNOP_BIND_INTERDOMAIN => {
                // SAFETY: the wrapper passes its local `BindInterdomain`.
                let x = unsafe { at::<BindInterdomain>(a) };
                let d = self.domains.get_mut(&x.remote_dom).ok_or(Errno::ESRCH)?;
                if !d.unbound.remove(&x.remote_port) {
                    return Err(Errno::EINVAL);
                }
                let port = self.new_local();
                self.ports.insert(
                    port,
                    Binding::Interdomain {
                        dom: x.remote_dom,
                        port: x.remote_port,
                    },
                );
                x.local_port = port;
                // As Xen: "conservatively always set a notification on the local port".
                self.raise(port);
            }
            evtchn::EVTCHNOP_BIND_VIRQ => {
                // SAFETY: the wrapper passes its local `BindVirq`.
                let x = unsafe { at::<BindVirq>(a) };
                if self.ports.values().any(|b| *b == Binding::Virq(x.virq)) {
                    return Err(Errno::EEXIST);
                }
                let port = self.new_local();
                self.ports.insert(port, Binding::Virq(x.virq));
                x.port = port;
            }
            evtchn::EVTCHNOP_SEND => {
                // SAFETY: the wrapper passes its local `Port`.
                let x = unsafe { at::<Port>(a) };
                if !self.ports.contains_key(&x.port) {
                    return Err(Errno::EINVAL);
                }
                self.sent.push(x.port);
            }
            evtchn::EVTCHNOP_CLOSE => {
                // SAFETY: the wrapper passes its local `Port`.
                let x = unsafe { at::<Port>(a) };
                let b = self.ports.remove(&x.port).ok_or(Errno::EINVAL)?;
                if let Binding::Interdomain { dom, port } = b
                    && let Some(d) = self.domains.get_mut(&dom)
                {
                    // The remote port is unbound again.
                    d.unbound.insert(port);
                }
                if let Some(si) = self.shared() {
                    si.test_and_clear_pending(x.port);
                }
            }
            evtchn::EVTCHNOP_UNMASK => {
                // SAFETY: the wrapper passes its local `Port`.
                let x = unsafe { at::<Port>(a) };
                if let Some(si) = self.shared() {
                    si.xen_unmask(0, x.port);
                }
            }
            evtchn::EVTCHNOP_STATUS => {
                // SAFETY: the wrapper passes its local `Status`.
                let x = unsafe { at::<Status>(a) };
                let (status, u) = match self.ports.get(&x.port) {
                    None => (0, [0, 0]),
                    Some(Binding::Unbound(d)) => (1, [u32::from(*d), 0]),
                    Some(Binding::Interdomain { dom, port }) => (2, [u32::from(*dom), *port]),
                    Some(Binding::Virq(v)) => (4, [*v, 0]),
                };
                x.status = status;
                x.u = u;
            }
            _ => return Err(Errno::ENOSYS),
        }
        Ok(0)
    }

    fn new_local(&mut self) -> u32 {
        let p = self.next_local;
        self.next_local += 1;
        p
    }

    fn grant_table_op(&mut self, cmd: u64, a: u64, count: u64) -> Result<u64, Errno> {
        if count != 1 {
            return Err(Errno::EINVAL);
        }
        match cmd {
            grant::GNTTABOP_MAP_GRANT_REF => {
                // SAFETY: the wrapper passes its local `MapGrantRef`.
                let x = unsafe { at::<MapGrantRef>(a) };
                self.last_map_flags = Some(x.flags);
                x.status = if self.eagain > 0 {
                    self.eagain -= 1;
                    -12
                } else if !self.domains.contains_key(&x.dom) {
                    -2
                } else if x.gref != grant::GNTTAB_RESERVED_XENSTORE {
                    -3
                } else if x.flags & !grant::GNTMAP_READONLY != grant::GNTMAP_HOST_MAP
                    || x.host_addr % 4096 != 0
                {
                    -1
                } else {
                    let h = self.next_handle;
                    self.next_handle += 1;
                    self.maps.insert(h, (x.host_addr, x.dom));
                    x.handle = h;
                    0
                };
            }
            grant::GNTTABOP_UNMAP_GRANT_REF => {
                // SAFETY: the wrapper passes its local `UnmapGrantRef`.
                let x = unsafe { at::<UnmapGrantRef>(a) };
                x.status = match self.maps.get(&x.handle) {
                    Some(&(addr, _)) if addr == x.host_addr => {
                        self.maps.remove(&x.handle);
                        0
                    }
                    _ => -4,
                };
            }
            _ => return Err(Errno::ENOSYS),
        }
        Ok(0)
    }

    fn sched_op(&mut self, cmd: u64, a: u64) -> Result<u64, Errno> {
        match cmd {
            sched::SCHEDOP_YIELD => self.yields += 1,
            sched::SCHEDOP_BLOCK => self.blocks += 1,
            sched::SCHEDOP_POLL => {
                // SAFETY: the wrapper passes its local `SchedPoll`.
                let x = unsafe { at::<SchedPoll>(a) };
                let n = x.nr_ports as usize;
                if n > sched::POLL_MAX_PORTS {
                    return Err(Errno::EINVAL);
                }
                // SAFETY: the wrapper passes a slice of `n` ports it keeps alive.
                let ports = unsafe {
                    std::slice::from_raw_parts(
                        ptr::with_exposed_provenance::<u32>(x.ports as usize),
                        n,
                    )
                };
                self.polls.push((ports.to_vec(), x.timeout));
            }
            sched::SCHEDOP_SHUTDOWN => {
                // SAFETY: the wrapper passes its local `SchedShutdown`.
                let x = unsafe { at::<SchedShutdown>(a) };
                self.shutdown = Some(x.reason);
            }
            _ => return Err(Errno::ENOSYS),
        }
        Ok(0)
    }

    fn dispatch(&mut self, op: u64, args: [u64; 5]) -> Result<u64, Errno> {
        if let Some((f, e)) = self.fail
            && f == op
        {
            self.fail = None;
            return Err(e);
        }
        match op {
            nr::EVENT_CHANNEL_OP => self.event_channel_op(args[0], args[1]),
            nr::GRANT_TABLE_OP => self.grant_table_op(args[0], args[1], args[2]),
            nr::SCHED_OP => self.sched_op(args[0], args[1]),
            nr::HVM_OP => {
                // SAFETY: the wrapper passes its local `HvmParam`.
                let x = unsafe { at::<HvmParam>(args[1]) };
                if x.index >= 64 {
                    return Err(Errno::EINVAL);
                }
                match args[0] {
                    hvm::HVMOP_SET_PARAM => {
                        self.params.insert(x.index, x.value);
                    }
                    hvm::HVMOP_GET_PARAM => {
                        x.value = self.params.get(&x.index).copied().unwrap_or(0);
                    }
                    _ => return Err(Errno::ENOSYS),
                }
                Ok(0)
            }
            nr::MEMORY_OP if args[0] == memory::XENMEM_CURRENT_RESERVATION => {
                // SAFETY: the wrapper passes its local `domid_t`.
                let domid = unsafe { *at::<u16>(args[1]) };
                if domid != crate::evtchn::DOMID_SELF {
                    return Err(Errno::EPERM);
                }
                Ok(self.reservation)
            }
            nr::MEMORY_OP if args[0] == memory::XENMEM_MEMORY_MAP => {
                #[repr(C)]
                struct MemoryMap {
                    nr_entries: u32,
                    buffer: u64,
                }
                // SAFETY: the wrapper passes its local `struct xen_memory_map`.
                let x = unsafe { at::<MemoryMap>(args[1]) };
                // As Xen's copy_to_guest: at most `nr_entries`, then the count stored.
                let n = self.memory_map.len().min(x.nr_entries as usize);
                for (i, entry) in self.memory_map.iter().take(n).enumerate() {
                    let to = x.buffer as usize + i * size_of::<memory::E820Entry>();
                    // SAFETY: the wrapper's buffer holds `nr_entries` entries (packed: any
                    // address is aligned), live and untouched during the call.
                    unsafe {
                        ptr::with_exposed_provenance_mut::<memory::E820Entry>(to).write(*entry)
                    };
                }
                x.nr_entries = n as u32;
                Ok(0)
            }
            nr::MEMORY_OP => {
                if args[0] != memory::XENMEM_ADD_TO_PHYSMAP {
                    return Err(Errno::ENOSYS);
                }
                // SAFETY: the wrapper passes its local `AddToPhysmap`.
                let x = unsafe { at::<AddToPhysmap>(args[1]) };
                if x.space != memory::XENMAPSPACE_SHARED_INFO {
                    return Err(Errno::EINVAL);
                }
                self.shared_gpfn = Some(x.gpfn);
                // Under the tests' identity "mapping", the frame is the page's address.
                self.shared = Some(ptr::with_exposed_provenance::<SharedInfo>(
                    (x.gpfn << 12) as usize,
                ));
                Ok(0)
            }
            nr::XEN_VERSION => match args[0] {
                version::XENVER_VERSION => Ok(4 << 16 | 21),
                version::XENVER_GET_FEATURES => {
                    // SAFETY: the wrapper passes its local `FeatureInfo`.
                    let x = unsafe { at::<FeatureInfo>(args[1]) };
                    // XENFEAT_hvm_callback_vector (8) in submap 0.
                    x.submap = if x.submap_idx == 0 { 1 << 8 } else { 0 };
                    Ok(0)
                }
                _ => Err(Errno::ENOSYS),
            },
            nr::CONSOLE_IO => {
                // SAFETY: the wrapper passes a live byte slice of `args[1]` bytes.
                let bytes = unsafe {
                    std::slice::from_raw_parts(
                        ptr::with_exposed_provenance::<u8>(args[2] as usize),
                        args[1] as usize,
                    )
                };
                self.console.extend_from_slice(bytes);
                Ok(0)
            }
            nr::DOMCTL => {
                if let Some(e) = self.domctl_refusal {
                    return Err(e);
                }
                // SAFETY: the wrapper passes its local `Domctl`.
                let x = unsafe { at::<Domctl>(args[0]) };
                if x.cmd == domctl::XEN_DOMCTL_GETDOMAININFO {
                    if x.interface_version != self.domctl_interface {
                        return Err(Errno::EACCES);
                    }
                    let (&id, d) = self.domains.range(x.domain..).next().ok_or(Errno::ESRCH)?;
                    let mut flags = 0;
                    if d.state & (domctl::STATE_DYING | domctl::STATE_DEAD) != 0 {
                        flags |= domctl::DOMINF_DYING;
                    }
                    if d.state & domctl::STATE_SHUTDOWN != 0 {
                        flags |= domctl::DOMINF_SHUTDOWN;
                    }
                    x.domain = id;
                    x.u.getdomaininfo = domctl::DomainInfo {
                        domain: id,
                        pad: 0,
                        flags,
                        tot_pages: 256,
                    };
                    return Ok(0);
                }
                if x.cmd != domctl::XEN_DOMCTL_GET_DOMAIN_STATE
                    || x.interface_version != 0
                    || !self.stable_domain_state
                {
                    return Err(Errno::EACCES);
                }
                let d = self.domains.get(&x.domain).ok_or(Errno::EPERM)?;
                x.u.get_domain_state = domctl::GetDomainState {
                    state: d.state,
                    caps: 0,
                    pad0: 0,
                    unique_id: d.unique_id,
                };
                Ok(0)
            }
            _ => Err(Errno::ENOSYS),
        }
    }
}

impl std::fmt::Debug for FakeXen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeXen")
            .field("calls", &self.calls.len())
            .field("ports", &self.ports)
            .field("maps", &self.maps)
            .finish_non_exhaustive()
    }
}

impl Hypercalls for FakeXen {
    fn call(&mut self, op: u64, args: [u64; 5]) -> i64 {
        self.calls.push((op, args));
        match self.dispatch(op, args) {
            Ok(v) => v as i64,
            Err(e) => e.as_result(),
        }
    }
}

/// A heap `SharedInfo` on its own page, as Xen's would be.
pub(crate) fn shared_info_page() -> Box<PageBuf> {
    Box::new(PageBuf(vec![AlignedPage([0; 4096])]))
}
