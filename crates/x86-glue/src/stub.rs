//! The store as a XenStore stub domain, generic over the hypervisor [`Services`].
//!
//! [`StubDomain`] owns the [`Store`], and for every domain it serves a ring
//! ([`xs_ring::Server`]), a protocol [`Connection`] and a local event-channel port. The
//! program around it (on Xen: [`crate::boot`]) feeds it events:
//!
//! * [`StubDomain::on_event`] for a port: pumps that domain's ring, notifies the domain if
//!   the ring changed, and re-checks the ring after a full barrier before returning (a
//!   request written between the last look and the end of the service is not left waiting
//!   for an event that was already consumed);
//! * [`StubDomain::on_dom_exc`] for `VIRQ_DOM_EXC`: asks every served unprivileged domain's
//!   state; a shut-down domain fires `@releaseDomain` (once, until `RESUME`), a dying or
//!   vanished one is forgotten by the store (its nodes go, `@releaseDomain` fires) and its
//!   ring unmapped and port closed.
//!
//! `INTRODUCE` and `RELEASE` reach it through the [`Host`] callbacks, which only record
//! them; once the request that made them is answered, the new domain's ring is mapped (grant
//! `GNTTAB_RESERVED_XENSTORE`, the `gfn` ignored as C xenstored does), its port bound (the
//! ring's `evtchn_port` overriding the one given, as C xenstored does for dom0less
//! domains), and it is served at once; a released domain is unmapped and unbound. A second
//! `INTRODUCE` of a served domain rebinds its event channel only (C xenstored's "recreating
//! the xenbus event-channel").
//!
//! Watch events move between connections: after each event the store's notified connections
//! are pumped until everything is quiet, for a bounded number of rounds; what remains is
//! reported by [`StubDomain::has_work`] and done by [`StubDomain::run_pending`].
//!
//! The privileged domain's ring and port come from the domain builder, not from
//! `INTRODUCE` ([`Bootstrap`]): in Xen's stub-domain setup (`init-xenstore-domain`), dom0's
//! kernel allocates an unbound port for the store and passes it as `--event`, and seeds its
//! grant `GNTTAB_RESERVED_XENSTORE` with its ring, which C xenstored maps at start
//! (`init_domains` / `init_domain` in `tools/xenstored/domain.c`).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::mem;

use xs_core::protocol::{Access, Connection, Host, Limits};
use xs_core::store::{Introduced, Introduction, features};
use xs_core::{ConnId, DomId, Store, StoreConfig};
use xs_ring::layout::{FEATURE_ERROR, FEATURE_RECONNECTION, Field};
use xs_ring::pump::pump;
use xs_ring::{Page, Server, order};

use crate::error::Error;
use crate::lines::BoundedLines;
use crate::services::{DomainState, Services};

/// Times one domain's ring is pumped and re-checked per event before the rest is left for
/// [`StubDomain::run_pending`] (a guest that keeps writing cannot hold the store).
const SERVICE_ROUNDS: usize = 8;
/// Rounds of "deliver watch events to the connections that got them" per event.
const SETTLE_ROUNDS: usize = 16;
/// Log lines kept until [`StubDomain::take_log`].
const LOG_KEPT: usize = 256;

/// Where the privileged domain's ring page comes from.
#[derive(Debug)]
pub enum BootRing<R> {
    /// Map its grant `GNTTAB_RESERVED_XENSTORE` (the stub-domain case).
    Grant {
        /// Passed to [`Services::map_ring`] (unused by grant mapping).
        gfn: u64,
    },
    /// Already mapped by the caller.
    Mapped(R),
}

/// Where the privileged domain's event channel comes from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BootPort {
    /// Its unbound port (`--event`): bind to it.
    Remote(u32),
    /// A local port the caller already bound (and unmasked).
    Local(u32),
    /// The ring page's `evtchn_port` field (dom0less / Hyperlaunch).
    FromRing,
}

/// The domain served from the start: the privileged domain (dom0 unless `--priv-domid`).
#[derive(Debug)]
pub struct Bootstrap<R> {
    /// Its domid (made privileged in the store if it is not dom0).
    pub domid: DomId,
    /// Its ring.
    pub ring: BootRing<R>,
    /// Its event channel.
    pub port: BootPort,
}

/// How the stub domain is set up.
#[derive(Clone, Debug, Default)]
pub struct StubConfig {
    /// The store's configuration; its `hash_key` is replaced with entropy from the services.
    pub store: StoreConfig,
    /// Connection limits.
    pub limits: Limits,
}

/// A served domain.
#[derive(Debug)]
struct Served<R: Page> {
    /// Owns the ring; [`Server::into_page`] gives it back to be unmapped.
    server: Server<R>,
    conn: Connection,
    local_port: u32,
}

/// What `INTRODUCE` / `RELEASE` asked for, applied once the request is answered.
#[derive(Clone, Copy, Debug)]
enum Change {
    Introduced(DomId, Introduction, Introduced),
    Released(DomId),
}

/// The [`Host`] the protocol calls: records domain changes and log text.
#[derive(Debug, Default)]
struct Recorder {
    changes: Vec<Change>,
    log: BoundedLines<LOG_KEPT>,
}

impl Host for Recorder {
    fn introduced(
        &mut self,
        _store: &mut Store,
        domid: DomId,
        intro: Introduction,
        kind: Introduced,
    ) {
        self.changes.push(Change::Introduced(domid, intro, kind));
    }

    fn released(&mut self, _store: &mut Store, domid: DomId) {
        self.changes.push(Change::Released(domid));
    }

    fn print(&mut self, text: &[u8]) {
        self.log
            .push(format!("print: {}", String::from_utf8_lossy(text)));
    }

    fn soft_quota_reached(&mut self, domid: DomId) {
        self.log
            .push(format!("dom{domid} exceeds its soft memory quota"));
    }
}

/// The store serving domains' rings.
#[derive(Debug)]
pub struct StubDomain<S: Services> {
    store: Store,
    services: S,
    served: BTreeMap<DomId, Served<S::Ring>>,
    ports: BTreeMap<u32, DomId>,
    host: Recorder,
    /// Domains with work left over after their service rounds.
    pending: BTreeSet<DomId>,
    /// The privileged connection (to read per-domain features).
    priv_conn: ConnId,
    limits: Limits,
}

/// The ring features to offer `domid`: those the store enables for it (`SET_FEATURE`) that
/// concern the ring.
fn ring_features(store: &Store, priv_conn: ConnId, domid: DomId) -> u32 {
    let bits = store
        .get_features(priv_conn, Some(domid))
        .unwrap_or(features::ALL);
    let mut out = 0;
    if bits & features::RECONNECTION != 0 {
        out |= FEATURE_RECONNECTION;
    }
    if bits & features::ERROR != 0 {
        out |= FEATURE_ERROR;
    }
    out
}

/// The event channel of a domain about to be served.
enum Port {
    /// Already bound here, to this local port.
    Bound(u32),
    /// The domain's unbound port, to bind to.
    Remote(u32),
    /// None was given.
    Missing,
}

/// What [`bind_and_connect`] could not do.
#[derive(Debug)]
enum SetUpFailed {
    /// Binding (or finding) the domain's event channel.
    Bind(Error),
    /// Opening its store connection.
    Connect(Error),
}

impl SetUpFailed {
    fn into_error(self) -> Error {
        match self {
            SetUpFailed::Bind(e) | SetUpFailed::Connect(e) => e,
        }
    }
}

/// Binds `domid`'s event channel (unless bound already) and opens its store connection,
/// for a mapped `ring`; on failure, undoes what was done (the port bound here, the ring
/// mapped).
fn bind_and_connect<S: Services>(
    services: &mut S,
    store: &mut Store,
    domid: DomId,
    ring: S::Ring,
    port: Port,
) -> Result<(S::Ring, u32, ConnId), SetUpFailed> {
    let bound = match port {
        Port::Bound(p) => Ok(p),
        Port::Remote(r) => services.bind_interdomain(domid, r),
        Port::Missing => Err(Error::NoEventChannel),
    };
    let local_port = match bound {
        Ok(p) => p,
        Err(e) => {
            services.unmap_ring(domid, ring);
            return Err(SetUpFailed::Bind(e));
        }
    };
    match store.connect(domid) {
        Ok(conn) => Ok((ring, local_port, conn)),
        Err(e) => {
            services.unbind(local_port);
            services.unmap_ring(domid, ring);
            Err(SetUpFailed::Connect(Error::Store(e)))
        }
    }
}

impl<S: Services> StubDomain<S> {
    /// Starts the store and serves the privileged domain's ring.
    pub fn new(
        mut services: S,
        config: StubConfig,
        boot: Bootstrap<S::Ring>,
    ) -> Result<StubDomain<S>, Error> {
        let mut store_config = config.store;
        // Guests choose the paths the watch index hashes: the key must be unpredictable.
        store_config.hash_key = [services.entropy(), services.entropy()];
        if boot.domid != DomId::DOM0 && !store_config.privileged.contains(&boot.domid) {
            store_config.privileged.push(boot.domid);
        }
        let mut store = Store::new(store_config).map_err(Error::Store)?;
        let domid = boot.domid;
        let ring = match boot.ring {
            BootRing::Mapped(r) => r,
            BootRing::Grant { gfn } => services.map_ring(domid, gfn)?,
        };
        let port = match boot.port {
            BootPort::Local(p) => Port::Bound(p),
            BootPort::Remote(r) => Port::Remote(r),
            BootPort::FromRing => match ring.load(Field::EvtchnPort) {
                0 => Port::Missing,
                r => Port::Remote(r),
            },
        };
        let (ring, local_port, conn_id) =
            bind_and_connect(&mut services, &mut store, domid, ring, port)
                .map_err(SetUpFailed::into_error)?;
        let mut stub = StubDomain {
            store,
            services,
            served: BTreeMap::new(),
            ports: BTreeMap::new(),
            host: Recorder::default(),
            pending: BTreeSet::new(),
            priv_conn: conn_id,
            limits: config.limits,
        };
        stub.install(domid, ring, conn_id, local_port);
        stub.host.log.push(format!(
            "serving dom{domid} (privileged) on port {local_port}"
        ));
        // As C xenstored's `init_domain`: tell the domain the store is there.
        stub.services.notify(local_port);
        stub.service(domid);
        stub.settle();
        Ok(stub)
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The services.
    pub fn services(&self) -> &S {
        &self.services
    }

    /// The services, mutably (tests script the fake through it; the Xen loop polls with its
    /// hypercalls).
    pub fn services_mut(&mut self) -> &mut S {
        &mut self.services
    }

    /// The domains served, in domid order.
    pub fn served(&self) -> impl Iterator<Item = DomId> + '_ {
        self.served.keys().copied()
    }

    /// The local ports of the served domains, in port order.
    pub fn ports(&self) -> impl Iterator<Item = u32> + '_ {
        self.ports.keys().copied()
    }

    /// The local port of a served domain.
    pub fn local_port(&self, domid: DomId) -> Option<u32> {
        self.served.get(&domid).map(|s| s.local_port)
    }

    /// Whether work is left that no event will announce (a busy guest's ring, watch events
    /// not yet delivered): call [`StubDomain::run_pending`] before sleeping.
    pub fn has_work(&self) -> bool {
        !self.pending.is_empty() || !self.host.changes.is_empty()
    }

    /// Takes the log lines since the last call.
    pub fn take_log(&mut self) -> Vec<String> {
        self.host.log.take("log lines dropped")
    }

    /// An event on local `port`: serves the domain bound to it (unknown ports are ignored).
    pub fn on_event(&mut self, port: u32) {
        if let Some(&domid) = self.ports.get(&port) {
            self.service(domid);
        }
        self.settle();
    }

    /// `VIRQ_DOM_EXC`: some domain changed state.
    pub fn on_dom_exc(&mut self) {
        let domids: Vec<DomId> = self
            .served
            .keys()
            .copied()
            .filter(|&d| !self.store.is_privileged(d))
            .collect();
        for domid in domids {
            match self.services.domain_state(domid) {
                DomainState::Running => {}
                DomainState::Shutdown => self.store.domain_shutdown(domid),
                DomainState::Dying => {
                    self.host.log.push(format!("dom{domid} is gone"));
                    self.store.domain_gone(domid);
                    self.detach(domid);
                }
            }
        }
        self.settle();
    }

    /// Does the work [`StubDomain::has_work`] reports.
    pub fn run_pending(&mut self) {
        let domids: Vec<DomId> = mem::take(&mut self.pending).into_iter().collect();
        for domid in domids {
            self.service(domid);
        }
        self.settle();
    }

    /// Starts serving a domain.
    fn install(&mut self, domid: DomId, ring: S::Ring, conn_id: ConnId, local_port: u32) {
        let features = ring_features(&self.store, self.priv_conn, domid);
        let server = Server::new(ring, features);
        let conn = Connection::new(conn_id, Access::default(), self.limits);
        self.ports.insert(local_port, domid);
        self.served.insert(
            domid,
            Served {
                server,
                conn,
                local_port,
            },
        );
    }

    /// Pumps a domain's ring until it is quiet (or its rounds are used up).
    fn service(&mut self, domid: DomId) {
        for round in 0..SERVICE_ROUNDS {
            let Some(s) = self.served.get_mut(&domid) else {
                return;
            };
            // A broken ring is reported once, when it breaks.
            let was_broken = s.server.fault().is_some();
            let done = pump(&mut s.server, &mut s.conn, &mut self.store, &mut self.host);
            if done.notify {
                self.services.notify(s.local_port);
            }
            if done.released {
                self.pending.remove(&domid);
                self.host.changes.push(Change::Released(domid));
                return;
            }
            if let Some(fault) = done.fault
                && !was_broken
            {
                self.host.log.push(format!(
                    "dom{domid}: ring no longer served: error {}",
                    fault.code
                ));
            }
            if done.fault.is_some() {
                // Served again only when the guest asks for a reconnection (and notifies).
                self.pending.remove(&domid);
                return;
            }
            // ORDERING: full barrier between the pump's last look at the ring and the
            // re-check below (Xen's mb before the final check); pairs with the guest's
            // barrier before it publishes an index and notifies. The event that brought us
            // here was cleared before the pump, so anything the guest published since is
            // either seen here or announced by a new event.
            order::before_recheck();
            // A connection that takes no input (too many replies unread) is woken by the
            // guest reading them, which frees ring space and notifies.
            let again =
                s.conn.wants_input(&self.store) && s.server.has_work(!s.conn.output().is_empty());
            if !again {
                self.pending.remove(&domid);
                return;
            }
            if round + 1 == SERVICE_ROUNDS {
                self.pending.insert(domid);
            }
        }
    }

    /// Applies recorded domain changes and delivers watch events until quiet.
    fn settle(&mut self) {
        for _ in 0..SETTLE_ROUNDS {
            let changes = mem::take(&mut self.host.changes);
            for change in changes {
                match change {
                    Change::Introduced(domid, intro, kind) => self.attach(domid, intro, kind),
                    Change::Released(domid) => self.detach(domid),
                }
            }
            for domid in self.store.take_warnings() {
                self.host.soft_quota_reached(domid);
            }
            let notified = self.store.take_notifications();
            if notified.is_empty() && self.host.changes.is_empty() {
                return;
            }
            // Every connection is a served domain's (the store knows whose).
            for conn in notified {
                if let Some(domid) = self.store.conn_domid(conn) {
                    self.service(domid);
                }
            }
        }
        // Still busy: the rest is done by `run_pending`.
        for conn in self.store.take_notifications() {
            if let Some(domid) = self.store.conn_domid(conn) {
                self.pending.insert(domid);
            }
        }
    }

    /// `INTRODUCE` succeeded for `domid`: serve it (or rebind its channel).
    fn attach(&mut self, domid: DomId, intro: Introduction, kind: Introduced) {
        if kind == Introduced::New && self.served.contains_key(&domid) {
            // The store forgot the domain without us noticing: start afresh.
            self.detach(domid);
        }
        if let Some(s) = self.served.get_mut(&domid) {
            match self.services.bind_interdomain(domid, intro.evtchn) {
                Ok(new) => {
                    let old = mem::replace(&mut s.local_port, new);
                    self.ports.remove(&old);
                    self.ports.insert(new, domid);
                    self.services.unbind(old);
                    self.host
                        .log
                        .push(format!("dom{domid}: event channel rebound to port {new}"));
                    self.services.notify(new);
                }
                Err(e) => self.host.log.push(format!(
                    "dom{domid}: rebinding the event channel failed: {e}"
                )),
            }
            self.service(domid);
            return;
        }
        let ring = match self.services.map_ring(domid, intro.gfn) {
            Ok(r) => r,
            Err(e) => {
                self.host
                    .log
                    .push(format!("dom{domid}: mapping the ring failed: {e}"));
                self.store.domain_gone(domid);
                return;
            }
        };
        let remote = match ring.load(Field::EvtchnPort) {
            0 => intro.evtchn,
            p => p,
        };
        let bound = bind_and_connect(
            &mut self.services,
            &mut self.store,
            domid,
            ring,
            Port::Remote(remote),
        );
        let (ring, local_port, conn_id) = match bound {
            Ok(b) => b,
            Err(failed) => {
                self.host.log.push(match failed {
                    SetUpFailed::Bind(e) => {
                        format!("dom{domid}: binding its port {remote} failed: {e}")
                    }
                    SetUpFailed::Connect(e) => format!("dom{domid}: no connection: {e}"),
                });
                self.store.domain_gone(domid);
                return;
            }
        };
        self.install(domid, ring, conn_id, local_port);
        self.host
            .log
            .push(format!("serving dom{domid} on port {local_port}"));
        self.services.notify(local_port);
        self.service(domid);
    }

    /// Stops serving `domid`: its connection closed, its port unbound, its ring unmapped.
    fn detach(&mut self, domid: DomId) {
        let Some(s) = self.served.remove(&domid) else {
            return;
        };
        let Served {
            server,
            conn,
            local_port,
        } = s;
        self.ports.remove(&local_port);
        self.pending.remove(&domid);
        self.store.disconnect(conn.id());
        self.services.unbind(local_port);
        self.services.unmap_ring(domid, server.into_page());
        self.host.log.push(format!("stopped serving dom{domid}"));
    }
}

#[cfg(test)]
mod tests;
