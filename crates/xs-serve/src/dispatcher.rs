//! The store serving many domains' rings over any platform's [`Services`].
//!
//! [`Dispatcher`] owns the [`Store`], and for every domain it serves a ring
//! ([`xs_ring::Server`]), a protocol [`Connection`] and a local event-channel port. The
//! program around it (a stub domain's event loop, a dom0 daemon's poll loop, a VMM's device
//! thread) feeds it events:
//!
//! * [`Dispatcher::on_event`] for a port: pumps that domain's ring, notifies the domain if
//!   the ring changed, re-arms the port ([`Services::rearm`]) and re-checks the ring after a
//!   full barrier before returning ([`xs_ring::Server::recheck`]), so that a request written
//!   between the last look and the end of the service is not left waiting for an event that
//!   was already consumed. That sequence is one private method, run for every ring, so no
//!   caller can forget the fence;
//! * [`Dispatcher::on_dom_exc`] when some domain changed state (Xen's `VIRQ_DOM_EXC`): asks
//!   every served unprivileged domain's state; a shut-down domain fires `@releaseDomain`
//!   (once, until `RESUME`), a dying or vanished one is forgotten by the store (its nodes go,
//!   `@releaseDomain` fires) and its ring unmapped and port closed.
//!
//! `INTRODUCE` sets the new domain's ring up before it is answered, as C xenstored does
//! (through [`Host::introducing`]): its ring mapped (the `gfn` is the platform's to use or
//! ignore), its port bound (the ring's `evtchn_port` overriding the one given, as C
//! xenstored does for dom0less domains), its store connection opened; a failure is the
//! request's error reply (`EINVAL` for a ring or port that cannot be set up) and changes
//! nothing. Once the request is answered the domain is served. A second `INTRODUCE` of a
//! served domain rebinds its event channel only (C xenstored's "recreating the xenbus
//! event-channel"). `RELEASE` is recorded and carried out after its reply: the ring
//! unmapped, the port closed. The program that is itself the toolstack introduces and
//! releases domains with [`Dispatcher::introduce`] and [`Dispatcher::release`]: the same
//! code and hooks, no connection needed, the platform's own error returned.
//!
//! In-process clients (a VMM's own backends, its toolstack) get a connection from
//! [`Dispatcher::connect`] and use the store through [`Dispatcher::session`], after which
//! the rings their changes concern are served; connections of theirs with new watch events
//! are reported by [`Dispatcher::take_local_notifications`].
//!
//! Watch events move between connections: after each event the store's notified connections
//! are pumped until everything is quiet, for a bounded number of rounds; what remains is
//! reported by [`Dispatcher::has_work`] and done by [`Dispatcher::run_pending`].
//!
//! # State
//!
//! [`Dispatcher::save_state`] writes everything as xs-core's state stream (Xen's migration
//! format, [`xs_core::state`]): the store, the program's own connections (its sockets,
//! which it describes), and one ring connection per served domain: the local port of its
//! event channel, its protocol connection (the request partly read, the output not yet in
//! the ring) and input it has not taken. The ring's own contents need no saving: requests
//! the connection did not take stay in the ring, replies written stay there for the guest.
//! The domain's introduction (ring frame, remote port) is in the store's domain records.
//! [`Dispatcher::restore`] builds a dispatcher from the restored store: every ring mapped
//! again (the old mapping died with the old program; the privileged domain's ring, which
//! no introduction names, as the program gives it), its port taken as it is (the event
//! channel outlived the program: it lives in the hypervisor, and across an exec in the
//! inherited event-channel device), its connection installed, and every ring served once,
//! so that what the guest did meanwhile is answered. A ring that cannot be mapped again is
//! dropped with a warning; the others carry on. The program's sockets are given back to it.
//! Xen's unique domain ids are not known to the dispatcher and not written.
//!
//! The privileged domain's ring and port may come from the domain builder rather than from
//! `INTRODUCE` ([`Dispatcher::with_bootstrap`], [`Bootstrap`]): in Xen's stub-domain setup
//! (`init-xenstore-domain`), dom0's kernel allocates an unbound port for the store and passes
//! it as `--event`, and seeds its grant `GNTTAB_RESERVED_XENSTORE` with its ring, which C
//! xenstored maps at start (`init_domains` / `init_domain` in `tools/xenstored/domain.c`).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::mem;

use xs_core::protocol::{self, Access, Connection, Host, Limits, LiveUpdate, NoHost};
use xs_core::store::{Introduced, Introduction, Session, features};
use xs_core::wire::Header;
use xs_core::{ConnId, DomId, Store, StoreConfig, XsError, XsResult};
use xs_ring::layout::Field;
use xs_ring::{Page, Server, ServerFeatures};

use crate::lines::BoundedLines;
use crate::pump::pump_with_backlog;
use crate::services::{DomainState, Services};

/// Times one domain's ring is pumped and re-checked per event before the rest is left for
/// [`Dispatcher::run_pending`] (a guest that keeps writing cannot hold the store).
const SERVICE_ROUNDS: usize = 8;
/// Rounds of "deliver watch events to the connections that got them" per event.
const SETTLE_ROUNDS: usize = 16;
/// Log lines kept until [`Dispatcher::take_log`].
const LOG_KEPT: usize = 256;
/// How [`Dispatcher::take_log`]'s warnings start.
pub const WARNING: &str = "warning: ";

/// Why the dispatcher could not do what it was asked.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Error<E> {
    /// A platform service failed (mapping the ring, binding the port).
    Services(E),
    /// No event channel for the domain: none given, and none in its ring page.
    NoEventChannel,
    /// The store refused (bad arguments, out of memory, out of connection slots).
    Store(XsError),
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Services(e) => fmt::Display::fmt(e, f),
            Error::NoEventChannel => {
                f.write_str("no event channel for the domain (none given, none in its ring)")
            }
            Error::Store(e) => write!(f, "store: {e}"),
        }
    }
}

impl<E: fmt::Display + fmt::Debug> core::error::Error for Error<E> {}

impl<E> From<XsError> for Error<E> {
    fn from(e: XsError) -> Self {
        Error::Store(e)
    }
}

/// Where the privileged domain's ring page comes from.
#[derive(Debug)]
pub enum BootRing<R> {
    /// Ask the platform to map it ([`Services::map_ring`]; a stub domain maps its grant
    /// `GNTTAB_RESERVED_XENSTORE`).
    Grant {
        /// Passed to [`Services::map_ring`].
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

/// How the dispatcher is set up.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The store's configuration. Its `hash_key` is replaced with entropy from
    /// [`Services::entropy`], so the key given here does not matter.
    pub store: StoreConfig,
    /// Limits of every served ring's protocol connection.
    pub limits: Limits,
}

impl Default for ServeConfig {
    /// Xen's default quotas and limits. No fixed hash key reaches the store: the dispatcher
    /// always draws it from the platform.
    fn default() -> Self {
        ServeConfig {
            store: StoreConfig::new([0, 0]),
            limits: Limits::default(),
        }
    }
}

/// A served domain.
#[derive(Debug)]
struct Served<R: Page> {
    /// Owns the ring; [`Server::into_page`] gives it back to be unmapped.
    server: Server<R>,
    conn: Connection,
    local_port: u32,
    /// Input for `conn` to take before the ring's (a restored connection's: see
    /// [`crate::pump::pump_with_backlog`]); empty but for that.
    backlog: Vec<u8>,
}

/// What `INTRODUCE` / `RELEASE` did, carried out once the request is answered.
#[derive(Clone, Copy, Debug)]
enum Change {
    Introduced(DomId),
    Released(DomId),
}

/// Implements the listed [`Host`] hooks by passing each call on to the field `$to` (itself a
/// `Host`) unchanged: each hook's signature is written once, here, for the two hosts the
/// dispatcher puts between the protocol and the program ([`Recorder`], [`Hooks`]).
macro_rules! forward_host {
    ($to:ident: $($hook:ident),+ $(,)?) => {
        $(forward_host!(@hook $to $hook);)+
    };
    (@hook $to:ident introduced) => {
        fn introduced(
            &mut self,
            store: &mut Store,
            domid: DomId,
            intro: Introduction,
            kind: Introduced,
        ) {
            self.$to.introduced(store, domid, intro, kind);
        }
    };
    (@hook $to:ident released) => {
        fn released(&mut self, store: &mut Store, domid: DomId) {
            self.$to.released(store, domid);
        }
    };
    (@hook $to:ident print) => {
        fn print(&mut self, text: &[u8]) {
            self.$to.print(text);
        }
    };
    (@hook $to:ident soft_quota_reached) => {
        fn soft_quota_reached(&mut self, domid: DomId) {
            self.$to.soft_quota_reached(domid);
        }
    };
    (@hook $to:ident log_switches) => {
        fn log_switches(&self) -> Vec<(&'static str, bool)> {
            self.$to.log_switches()
        }
    };
    (@hook $to:ident set_log) => {
        fn set_log(&mut self, arg: &[u8]) -> XsResult<()> {
            self.$to.set_log(arg)
        }
    };
    (@hook $to:ident set_logfile) => {
        fn set_logfile(&mut self, file: &[u8]) -> XsResult<()> {
            self.$to.set_logfile(file)
        }
    };
    (@hook $to:ident memreport) => {
        fn memreport(&mut self, report: &str, file: Option<&[u8]>) -> XsResult<()> {
            self.$to.memreport(report, file)
        }
    };
    (@hook $to:ident trace) => {
        fn trace(&mut self, conn: ConnId, incoming: bool, header: &Header, payload: &[u8]) {
            self.$to.trace(conn, incoming, header, payload);
        }
    };
    (@hook $to:ident tracing) => {
        fn tracing(&self) -> bool {
            self.$to.tracing()
        }
    };
    (@hook $to:ident hold_request) => {
        fn hold_request(
            &mut self,
            store: &Store,
            conn: ConnId,
            header: &Header,
            payload: &[u8],
        ) -> bool {
            self.$to.hold_request(store, conn, header, payload)
        }
    };
    (@hook $to:ident transaction_started) => {
        fn transaction_started(&mut self, conn: ConnId, first: bool) {
            self.$to.transaction_started(conn, first);
        }
    };
    (@hook $to:ident live_update) => {
        fn live_update(
            &mut self,
            store: &mut Store,
            conn: ConnId,
            command: LiveUpdate<'_>,
        ) -> XsResult<Vec<u8>> {
            self.$to.live_update(store, conn, command)
        }
    };
    (@hook $to:ident save_state) => {
        fn save_state(&mut self, store: &mut Store, file: &[u8]) -> XsResult<()> {
            self.$to.save_state(store, file)
        }
    };
    (@hook $to:ident control_commands) => {
        fn control_commands(&self) -> Vec<(&'static str, &'static str)> {
            self.$to.control_commands()
        }
    };
}

/// The [`Host`] the protocol calls: records domain changes and log text for the dispatcher,
/// and passes every call on to the program's own host `H`.
#[derive(Debug)]
struct Recorder<H> {
    changes: Vec<Change>,
    log: BoundedLines<LOG_KEPT>,
    /// The program's host.
    program: H,
}

impl<H> Recorder<H> {
    /// Keeps a warning: a log line starting `warning: ` (see [`Dispatcher::take_log`]).
    fn warn(&mut self, line: String) {
        self.log(format!("{WARNING}{line}"));
    }

    /// Keeps a log line (stamped when taken: [`Dispatcher::take_log`]).
    fn log(&mut self, line: String) {
        self.log.push(line);
    }
}

impl<H: Host> Host for Recorder<H> {
    fn introduced(
        &mut self,
        store: &mut Store,
        domid: DomId,
        intro: Introduction,
        kind: Introduced,
    ) {
        self.changes.push(Change::Introduced(domid));
        self.program.introduced(store, domid, intro, kind);
    }

    fn released(&mut self, store: &mut Store, domid: DomId) {
        self.changes.push(Change::Released(domid));
        self.program.released(store, domid);
    }

    fn print(&mut self, text: &[u8]) {
        self.log(format!("print: {}", String::from_utf8_lossy(text)));
        self.program.print(text);
    }

    fn soft_quota_reached(&mut self, domid: DomId) {
        self.warn(format!("dom{domid} exceeds its soft memory quota"));
        self.program.soft_quota_reached(domid);
    }

    forward_host!(program:
        log_switches, set_log, set_logfile, memreport, trace, tracing, hold_request,
        transaction_started, live_update, save_state, control_commands);
}

/// A domain's ring set up by [`Hooks::introducing`], installed once the store introduced it.
#[derive(Debug)]
enum Prepared<R> {
    /// A new domain: its ring mapped, its port bound, its store connection open.
    Ring {
        ring: R,
        local_port: u32,
        conn: ConnId,
    },
    /// A served domain introduced again: its new port bound.
    Rebind { local_port: u32 },
}

/// The [`Host`] the protocol calls while the dispatcher serves a request: the recorder
/// (domain changes, log, the program's host) and what `INTRODUCE` needs to set a ring up
/// before it is answered.
struct Hooks<'a, S: Services, H> {
    rec: &'a mut Recorder<H>,
    services: &'a mut S,
    prepared: &'a mut BTreeMap<DomId, Prepared<S::Ring>>,
    served: &'a BTreeSet<DomId>,
    /// The platform's error behind the last refused introduction (for
    /// [`Dispatcher::introduce`], which returns it).
    failure: &'a mut Option<S::Error>,
}

/// Gives a set-up the store did not take back to the platform.
fn undo<S: Services>(services: &mut S, store: &mut Store, domid: DomId, p: Prepared<S::Ring>) {
    match p {
        Prepared::Ring {
            ring,
            local_port,
            conn,
        } => {
            store.disconnect(conn);
            services.unbind(local_port);
            services.unmap_ring(domid, ring);
        }
        Prepared::Rebind { local_port } => services.unbind(local_port),
    }
}

impl<S: Services, H: Host> Hooks<'_, S, H> {
    /// Maps `domid`'s ring, binds its port and opens its connection, undoing what was done
    /// on failure (logged, kept in `failure`, and answered `EINVAL` or the store's error).
    fn set_up(
        &mut self,
        store: &mut Store,
        domid: DomId,
        intro: Introduction,
    ) -> XsResult<Prepared<S::Ring>> {
        let ring = match self.services.map_ring(domid, intro.gfn) {
            Ok(r) => r,
            Err(e) => {
                self.rec
                    .warn(format!("dom{domid}: mapping the ring failed: {e}"));
                *self.failure = Some(e);
                return Err(XsError::Inval);
            }
        };
        let remote = match ring.load(Field::EvtchnPort) {
            0 => intro.evtchn,
            p => p,
        };
        match bind_and_connect(self.services, store, domid, ring, Port::Remote(remote)) {
            Ok((ring, local_port, conn)) => Ok(Prepared::Ring {
                ring,
                local_port,
                conn,
            }),
            Err(failed) => {
                let (line, answer) = match failed {
                    SetUpFailed::Bind(Error::Services(e)) => {
                        let line = format!("dom{domid}: binding its port {remote} failed: {e}");
                        *self.failure = Some(e);
                        (line, XsError::Inval)
                    }
                    SetUpFailed::Bind(e) | SetUpFailed::Connect(e) => {
                        let answer = match &e {
                            Error::Store(x) => *x,
                            _ => XsError::Inval,
                        };
                        (format!("dom{domid}: no connection: {e}"), answer)
                    }
                };
                self.rec.warn(line);
                Err(answer)
            }
        }
    }
}

impl<S: Services, H: Host> Host for Hooks<'_, S, H> {
    fn introducing(
        &mut self,
        store: &mut Store,
        domid: DomId,
        intro: Introduction,
        kind: Introduced,
    ) -> XsResult<()> {
        let mut prepared = None;
        if self.services.serves_rings() {
            // An earlier set-up the store did not take (its introduction failed after it).
            if let Some(old) = self.prepared.remove(&domid) {
                undo(self.services, store, domid, old);
            }
            match (kind, self.served.contains(&domid)) {
                (Introduced::Rebind, true) => {
                    match self.services.bind_interdomain(domid, intro.evtchn) {
                        Ok(local_port) => prepared = Some(Prepared::Rebind { local_port }),
                        Err(e) => {
                            self.rec.warn(format!(
                                "dom{domid}: rebinding the event channel failed: {e}"
                            ));
                            *self.failure = Some(e);
                            return Err(XsError::Inval);
                        }
                    }
                }
                // Introduced already and not served here (a privileged domain served by
                // other means): nothing to set up.
                (Introduced::Rebind, false) => {}
                (Introduced::New, _) => prepared = Some(self.set_up(store, domid, intro)?),
            }
        }
        if let Err(e) = self.rec.program.introducing(store, domid, intro, kind) {
            if let Some(p) = prepared {
                undo(self.services, store, domid, p);
            }
            return Err(e);
        }
        if let Some(p) = prepared {
            self.prepared.insert(domid, p);
        }
        Ok(())
    }

    forward_host!(rec:
        introduced, released, print, soft_quota_reached, log_switches, set_log, set_logfile,
        memreport, trace, tracing, hold_request, transaction_started, live_update, save_state,
        control_commands);
}

/// The store serving domains' rings: see the module documentation.
///
/// `Send` when the services and their rings are, so a VMM can hand it to its device thread.
///
/// # Examples
///
/// A guest's ring served from a VMM-like program, with the fake platform (feature `fake`):
/// the guest writes a request, the program passes the event on, the guest reads the reply.
///
/// ```
/// use xs_core::store::Introduction;
/// use xs_core::wire::{HEADER_LEN, MsgType, push_message};
/// use xs_core::DomId;
/// use xs_ring::Guest;
/// use xs_serve::fake::FakeServices;
/// use xs_serve::{Dispatcher, ServeConfig};
///
/// let mut platform = FakeServices::new();
/// let page = platform.create_domain(DomId(1));
/// let mut xs = Dispatcher::new(platform, ServeConfig::default())?;
/// // The toolstack (here, the program itself) introduces the guest: ring mapped, port bound.
/// xs.introduce(DomId(1), Introduction { gfn: 0xfeffc, evtchn: 3 })?;
/// let port = xs.local_port(DomId(1)).unwrap();
///
/// // The guest's side: a request into its ring, then an event on the port.
/// let mut guest = Guest::new(page);
/// let mut request = Vec::new();
/// push_message(&mut request, MsgType::Read as u32, 1, 0, b"domid\0");
/// guest.write(&request)?;
/// xs.on_event(port);
///
/// let mut reply = [0u8; 64];
/// let n = guest.read(&mut reply)?;
/// assert_eq!(&reply[HEADER_LEN..n], b"1");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Dispatcher<S: Services, H: Host = NoHost> {
    store: Store,
    services: S,
    served: BTreeMap<DomId, Served<S::Ring>>,
    ports: BTreeMap<u32, DomId>,
    /// The served rings' connections, and whose they are.
    ring_conns: BTreeMap<ConnId, DomId>,
    /// The program's connections (in process, or served by it: sockets) with new watch
    /// events.
    local_notified: BTreeSet<ConnId>,
    host: Recorder<H>,
    /// The served domains (the keys of `served`, for the hooks, which run while a served
    /// ring is borrowed).
    served_ids: BTreeSet<DomId>,
    /// Rings set up for introductions the store has not taken yet.
    prepared: BTreeMap<DomId, Prepared<S::Ring>>,
    /// The platform's error behind the last refused introduction.
    failure: Option<S::Error>,
    /// Domains with work left over after their service rounds.
    pending: BTreeSet<DomId>,
    limits: Limits,
}

/// The hooks over a dispatcher's fields, borrowed apart from the served ring being pumped.
macro_rules! hooks {
    ($self:ident) => {
        Hooks {
            rec: &mut $self.host,
            services: &mut $self.services,
            prepared: &mut $self.prepared,
            served: &$self.served_ids,
            failure: &mut $self.failure,
        }
    };
}

/// The ring features to offer `domid`: those the store enables for it (`SET_FEATURE`) that
/// concern the ring. (As C xenstored 4.17 does, the page advertises the ring's features
/// only; a guest asks for the others with `GET_FEATURE`.)
fn ring_features(store: &Store, domid: DomId) -> ServerFeatures {
    ServerFeatures::from_bits_truncate(store.domain_features(domid)) & ServerFeatures::RING
}

// xs-core keeps the feature bits of `GET_FEATURE`/`SET_FEATURE` as numbers; they must be
// the page's.
const _: () = {
    assert!(features::RECONNECTION == ServerFeatures::RECONNECTION.bits());
    assert!(features::ERROR == ServerFeatures::ERROR.bits());
    assert!(features::WATCH_DEPTH == ServerFeatures::WATCH_DEPTH.bits());
    assert!(features::DOMID_ANY == ServerFeatures::DOMID_ANY.bits());
    assert!(features::ALL == ServerFeatures::all().bits());
};

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
enum SetUpFailed<E> {
    /// Binding (or finding) the domain's event channel.
    Bind(Error<E>),
    /// Opening its store connection.
    Connect(Error<E>),
}

impl<E> SetUpFailed<E> {
    fn into_error(self) -> Error<E> {
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
) -> Result<(S::Ring, u32, ConnId), SetUpFailed<S::Error>> {
    let bound = match port {
        Port::Bound(p) => Ok(p),
        Port::Remote(r) => services.bind_interdomain(domid, r).map_err(Error::Services),
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

impl<S: Services> Dispatcher<S> {
    /// Starts the store, serving no ring yet: domains are served once introduced (by a
    /// privileged connection's `INTRODUCE`, or by [`Dispatcher::introduce`]). For a program
    /// that is itself the toolstack, such as a VMM.
    pub fn new(services: S, config: ServeConfig) -> Result<Dispatcher<S>, Error<S::Error>> {
        Dispatcher::with_host(services, config, NoHost)
    }

    /// Starts the store and serves the privileged domain's ring from the start (the stub
    /// domain's case: see the module documentation).
    pub fn with_bootstrap(
        services: S,
        config: ServeConfig,
        boot: Bootstrap<S::Ring>,
    ) -> Result<Dispatcher<S>, Error<S::Error>> {
        Dispatcher::with_host_and_bootstrap(services, config, NoHost, boot)
    }
}

impl<S: Services, H: Host> Dispatcher<S, H> {
    /// [`Dispatcher::new`] with the program's own [`Host`]: every call the protocol makes
    /// (domains introduced and released, `CONTROL print|log|logfile|memreport`, traces) is
    /// passed on to it, after the dispatcher took what it needs.
    pub fn with_host(
        mut services: S,
        config: ServeConfig,
        host: H,
    ) -> Result<Dispatcher<S, H>, Error<S::Error>> {
        let mut store_config = config.store;
        // Guests choose the paths the watch index hashes: the key must be unpredictable.
        store_config.hash_key = [services.entropy(), services.entropy()];
        let store = Store::new(store_config)?;
        Ok(Dispatcher::bare(services, store, config.limits, host))
    }

    /// A dispatcher over `store`, serving nothing yet.
    fn bare(services: S, store: Store, limits: Limits, host: H) -> Dispatcher<S, H> {
        Dispatcher {
            store,
            services,
            served: BTreeMap::new(),
            ports: BTreeMap::new(),
            ring_conns: BTreeMap::new(),
            local_notified: BTreeSet::new(),
            host: Recorder {
                changes: Vec::new(),
                log: BoundedLines::default(),
                program: host,
            },
            served_ids: BTreeSet::new(),
            prepared: BTreeMap::new(),
            failure: None,
            pending: BTreeSet::new(),
            limits,
        }
    }

    /// Serves a store restored from its state stream (`xs_core::state::restore`), with the
    /// program's own [`Host`] (see [`Dispatcher::with_host`]): the store's connections are
    /// the program's, and no ring is served (a stream with ring connections is restored
    /// with [`Dispatcher::restore`], which serves them again). Notifications the store
    /// carried over are reported by [`Dispatcher::take_local_notifications`].
    pub fn with_store(services: S, store: Store, limits: Limits, host: H) -> Dispatcher<S, H> {
        let mut this = Dispatcher::bare(services, store, limits, host);
        this.settle();
        this
    }

    /// [`Dispatcher::with_bootstrap`] with the program's own [`Host`] (see
    /// [`Dispatcher::with_host`]).
    pub fn with_host_and_bootstrap(
        services: S,
        mut config: ServeConfig,
        host: H,
        boot: Bootstrap<S::Ring>,
    ) -> Result<Dispatcher<S, H>, Error<S::Error>> {
        if boot.domid != DomId::DOM0 && !config.store.privileged.contains(&boot.domid) {
            config.store.privileged.push(boot.domid);
        }
        let mut this = Dispatcher::with_host(services, config, host)?;
        this.bootstrap(boot)?;
        Ok(this)
    }

    /// Serves the privileged domain's ring (the stub domain's, or dom0's kernel ring under a
    /// dom0 daemon: see the module documentation), and tells it the store is there. Its
    /// domid must be dom0 or one of the store's configured privileged domains.
    pub fn bootstrap(&mut self, boot: Bootstrap<S::Ring>) -> Result<(), Error<S::Error>> {
        let domid = boot.domid;
        if !self.store.is_privileged(domid) {
            return Err(Error::Store(XsError::Inval));
        }
        let ring = match boot.ring {
            BootRing::Mapped(r) => r,
            BootRing::Grant { gfn } => self
                .services
                .map_ring(domid, gfn)
                .map_err(Error::Services)?,
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
            bind_and_connect(&mut self.services, &mut self.store, domid, ring, port)
                .map_err(SetUpFailed::into_error)?;
        self.install(domid, ring, conn_id, local_port);
        self.host.log(format!(
            "serving dom{domid} (privileged) on port {local_port}"
        ));
        // As C xenstored's `init_domain`: tell the domain the store is there.
        self.services.notify(local_port);
        self.service(domid);
        self.settle();
        Ok(())
    }

    /// The program's host.
    pub fn host(&self) -> &H {
        &self.host.program
    }

    /// The program's host, mutably.
    pub fn host_mut(&mut self) -> &mut H {
        &mut self.host.program
    }

    /// Serves the program's own connections (a daemon's sockets): `f` gets the store and the
    /// host the protocol must be given (the dispatcher's, which records domain changes and
    /// passes every call on to the program's), for example to feed bytes to a
    /// [`Connection`] of a socket. Then what it caused is carried out: domains introduced or
    /// released, watch events delivered to rings; the program's connections with new events
    /// are reported by [`Dispatcher::take_local_notifications`].
    pub fn external<T>(&mut self, f: impl FnOnce(&mut Store, &mut dyn Host) -> T) -> T {
        let out = f(&mut self.store, &mut hooks!(self));
        self.settle();
        out
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The services.
    pub fn services(&self) -> &S {
        &self.services
    }

    /// The services, mutably (tests script the fake through it; platform loops poll with it).
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
    /// not yet delivered): call [`Dispatcher::run_pending`] before sleeping.
    pub fn has_work(&self) -> bool {
        !self.pending.is_empty() || !self.host.changes.is_empty()
    }

    /// Takes the log lines since the last call. Warnings (a ring broken by its guest, a
    /// domain that could not be served, a soft quota crossed) start with `warning: `
    /// ([`WARNING`]); the rest is information.
    ///
    /// When the platform has a clock, the lines are stamped with its time now, read once and
    /// only when there are lines: a program takes them at the end of each turn, so that is
    /// the time of the events that caused them, within the turn. (Reading it for every
    /// event instead would cost a VM exit per event where Xen emulates the TSC.)
    pub fn take_log(&mut self) -> Vec<String> {
        let lines = self.host.log.take("log lines dropped");
        if lines.is_empty() {
            return lines;
        }
        match self.services.now_ns() {
            Some(ns) => {
                let (s, us) = (ns / 1_000_000_000, ns % 1_000_000_000 / 1000);
                lines
                    .into_iter()
                    .map(|line| format!("[{s}.{us:06}] {line}"))
                    .collect()
            }
            None => lines,
        }
    }

    /// An event on local `port`: serves the domain bound to it (unknown ports are ignored).
    pub fn on_event(&mut self, port: u32) {
        if let Some(&domid) = self.ports.get(&port) {
            self.service(domid);
        }
        self.settle();
    }

    /// Some domain changed state (Xen's `VIRQ_DOM_EXC`, or the VMM's guest stopped).
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
                    self.host.log(format!("dom{domid} is gone"));
                    self.store.domain_gone(domid);
                    self.detach(domid);
                }
            }
        }
        self.settle();
    }

    /// Does the work [`Dispatcher::has_work`] reports.
    pub fn run_pending(&mut self) {
        let domids: Vec<DomId> = mem::take(&mut self.pending).into_iter().collect();
        for domid in domids {
            self.service(domid);
        }
        self.settle();
    }

    /// Introduces `domid` as the toolstack would, with no connection, through the same code
    /// as `INTRODUCE`: its ring mapped, its port bound (or, for a domain already served, only
    /// its port rebound), then the store's part (default nodes, `@introduceDomain`), and its
    /// ring served. A failure changes nothing and is returned: the platform's error if it was
    /// the platform's.
    pub fn introduce(
        &mut self,
        domid: DomId,
        intro: Introduction,
    ) -> Result<Introduced, Error<S::Error>> {
        self.failure = None;
        let result = protocol::introduce(&mut self.store, &mut hooks!(self), domid, intro);
        let failure = self.failure.take();
        self.settle();
        result.map_err(|e| failure.map_or(Error::Store(e), Error::Services))
    }

    /// Releases `domid` as the toolstack would, with no connection: the store's part (its
    /// nodes removed, `@releaseDomain`) through the same code as `RELEASE`, then its ring
    /// unmapped and its port closed.
    pub fn release(&mut self, domid: DomId) -> Result<(), Error<S::Error>> {
        protocol::release(&mut self.store, &mut hooks!(self), domid)?;
        self.settle();
        Ok(())
    }

    /// Opens an in-process connection acting for `domid` (privileged for dom0 and the
    /// configured privileged domains), for [`Dispatcher::session`].
    pub fn connect(&mut self, domid: DomId) -> Result<ConnId, Error<S::Error>> {
        Ok(self.store.connect(domid)?)
    }

    /// Closes an in-process connection: its watches and transactions go.
    pub fn disconnect(&mut self, conn: ConnId) {
        self.local_notified.remove(&conn);
        self.store.disconnect(conn);
        self.settle();
    }

    /// Runs `f` with a [`Session`] for the in-process connection `conn`, then serves the
    /// rings its changes concern (watch events to deliver). The session's own watch events
    /// are taken with [`Session::pop_event`].
    pub fn session<T>(&mut self, conn: ConnId, f: impl FnOnce(&mut Session<'_>) -> T) -> T {
        let out = f(&mut self.store.session(conn));
        self.settle();
        out
    }

    /// Takes the in-process connections that got watch events since the last call, in
    /// connection order.
    pub fn take_local_notifications(&mut self) -> Vec<ConnId> {
        mem::take(&mut self.local_notified).into_iter().collect()
    }

    /// Starts serving a domain, with a new protocol connection for its store connection.
    fn install(&mut self, domid: DomId, ring: S::Ring, conn_id: ConnId, local_port: u32) {
        let conn = Connection::new(conn_id, Access::default(), self.limits);
        let server = Server::new(ring, ring_features(&self.store, domid));
        self.serve(domid, server, conn, local_port, Vec::new());
    }

    /// Starts serving a domain's ring through `conn`.
    fn serve(
        &mut self,
        domid: DomId,
        server: Server<S::Ring>,
        conn: Connection,
        local_port: u32,
        backlog: Vec<u8>,
    ) {
        self.ports.insert(local_port, domid);
        self.ring_conns.insert(conn.id(), domid);
        self.served_ids.insert(domid);
        self.served.insert(
            domid,
            Served {
                server,
                conn,
                local_port,
                backlog,
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
            let mut hooks = Hooks {
                rec: &mut self.host,
                services: &mut self.services,
                prepared: &mut self.prepared,
                served: &self.served_ids,
                failure: &mut self.failure,
            };
            let done = pump_with_backlog(
                &mut s.server,
                &mut s.conn,
                &mut s.backlog,
                &mut self.store,
                &mut hooks,
            );
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
                self.host
                    .warn(format!("dom{domid}: ring no longer served: {fault}"));
            }
            // A broken ring is served again only when the guest asks for a reconnection: the
            // re-check then looks for that request alone.
            if !quiesce(&mut self.services, s, &self.store) {
                self.pending.remove(&domid);
                return;
            }
            if round == SERVICE_ROUNDS.saturating_sub(1) {
                self.pending.insert(domid);
            }
        }
    }

    /// Carries out the introductions and releases the store made (a new ring is served at
    /// once if `serve_now`), and gives back the set-ups whose introduction the store then
    /// refused.
    fn carry_out_changes(&mut self, serve_now: bool) {
        for change in mem::take(&mut self.host.changes) {
            match change {
                Change::Introduced(domid) => self.attach(domid, serve_now),
                Change::Released(domid) => self.detach(domid),
            }
        }
        for (domid, p) in mem::take(&mut self.prepared) {
            undo(&mut self.services, &mut self.store, domid, p);
        }
    }

    /// Applies recorded domain changes and delivers watch events until quiet.
    fn settle(&mut self) {
        for _ in 0..SETTLE_ROUNDS {
            self.carry_out_changes(true);
            for domid in self.store.take_warnings() {
                self.host.soft_quota_reached(domid);
            }
            let notified = self.store.take_notifications();
            if notified.is_empty() && self.host.changes.is_empty() {
                return;
            }
            for conn in notified {
                match self.ring_conns.get(&conn) {
                    Some(&domid) => self.service(domid),
                    None => {
                        self.local_notified.insert(conn);
                    }
                }
            }
        }
        // Still busy: the rest is done by `run_pending`.
        for conn in self.store.take_notifications() {
            match self.ring_conns.get(&conn) {
                Some(&domid) => {
                    self.pending.insert(domid);
                }
                None => {
                    self.local_notified.insert(conn);
                }
            }
        }
    }

    /// The store introduced `domid`: serve the ring set up for it (or switch to its rebound
    /// channel), at once if `serve_now`, else at the next [`Dispatcher::run_pending`].
    /// Nothing was set up when the platform serves no rings.
    fn attach(&mut self, domid: DomId, serve_now: bool) {
        match self.prepared.remove(&domid) {
            None => {}
            Some(Prepared::Rebind { local_port: new }) => {
                let Some(s) = self.served.get_mut(&domid) else {
                    self.services.unbind(new);
                    return;
                };
                let old = mem::replace(&mut s.local_port, new);
                self.ports.remove(&old);
                self.ports.insert(new, domid);
                self.services.unbind(old);
                self.host
                    .log(format!("dom{domid}: event channel rebound to port {new}"));
                self.services.notify(new);
                self.serve_now_or_later(domid, serve_now);
            }
            Some(Prepared::Ring {
                ring,
                local_port,
                conn,
            }) => {
                // A new domain with the id of one still served (the store forgot the old one
                // without us noticing): the old ring goes.
                self.detach(domid);
                self.install(domid, ring, conn, local_port);
                self.host
                    .log(format!("serving dom{domid} on port {local_port}"));
                self.services.notify(local_port);
                self.serve_now_or_later(domid, serve_now);
            }
        }
    }

    fn serve_now_or_later(&mut self, domid: DomId, now: bool) {
        if now {
            self.service(domid);
        } else {
            self.pending.insert(domid);
        }
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
            backlog: _,
        } = s;
        self.ports.remove(&local_port);
        self.ring_conns.remove(&conn.id());
        self.served_ids.remove(&domid);
        self.pending.remove(&domid);
        self.store.disconnect(conn.id());
        self.services.unbind(local_port);
        self.services.unmap_ring(domid, server.into_page());
        self.host.log(format!("stopped serving dom{domid}"));
    }
}

/// The end of a ring's service: re-arms its port, then re-checks the ring after the full
/// fence ([`Server::recheck`] issues it). Returns whether the ring must be pumped again. A
/// connection that takes no input (too many replies unread) is woken by the guest reading
/// them, which frees ring space and notifies; a broken ring, by the guest's request for a
/// reconnection.
fn quiesce<S: Services>(services: &mut S, s: &mut Served<S::Ring>, store: &Store) -> bool {
    // The event that brought us here was taken (its pending bit cleared, or the port masked)
    // before the pump; re-arming now means anything the guest publishes after the re-check
    // below raises a new event.
    services.rearm(s.local_port);
    let pending_output = !s.conn.output().is_empty();
    s.conn.wants_input(store)
        && ((!s.backlog.is_empty() && s.server.fault().is_none())
            || s.server.recheck(pending_output))
}

mod state;
#[cfg(test)]
mod tests;

pub use state::map_again;
