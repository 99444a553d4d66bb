//! The event loop: one thread, `mio` over Unix sockets.
//!
//! Each loop iteration:
//!
//! 1. waits for readiness (edge-triggered) and notes, per client, that its socket may be
//!    read or written; listeners accept until they would block; signals stop the loop;
//! 2. serves the clients with work: leftover input first, then reads (at most
//!    [`READ_BUDGET`] reads per iteration, so that one busy client cannot starve the others)
//!    while the connection takes input, feeding [`Connection::receive`];
//! 3. carries out domain changes (`INTRODUCE`/`RELEASE`), then moves watch events into the
//!    output of every connection the dispatcher names in
//!    [`Dispatcher::take_local_notifications`];
//! 4. writes each touched client's whole pending output with one `write` (replies
//!    accumulate between flushes: the batching that makes pipelined clients cheap), and
//!    registers for writability only while output remains;
//! 5. closes the connections that ended.
//!
//! On Xen, the store is served through xs-serve's [`Dispatcher`], which serves the guests'
//! rings (dom0's kernel ring among them) with the same store: the event-channel device is one
//! more source in the poll, its pending ports go to [`Dispatcher::on_event`] (and
//! `VIRQ_DOM_EXC` to [`Dispatcher::on_dom_exc`]), and the sockets' requests are fed to the
//! store through [`Dispatcher::external`], so that watch events and domain changes cross
//! between sockets and rings. Without Xen the same dispatcher serves no ring.
//!
//! Backpressure: a peer that does not read its replies stops being read. The connection
//! takes no more input once too many messages wait to be sent (its domain's `outstanding`
//! quota, across all the domain's connections, or for a privileged connection
//! [`Limits::privileged_pending`]); bytes it did not consume are kept (at most one read
//! buffer) and the socket's `READABLE` interest is dropped until the output drains, so the
//! peer's own writes block in the kernel. Memory per connection stays bounded and the
//! others are served as usual.
//!
//! A domain's socket (`DIR/<domid>`) is bounded as a whole, not per connection, so that
//! opening more connections gets a guest nothing:
//!
//! - at most `--domain-connections` clients: at the limit the listener is taken out of the
//!   poll, so further attempts wait in the kernel's backlog (or are refused by it) without
//!   waking the daemon, until one of the domain's clients closes;
//! - its clients' replies and events waiting to be sent are bounded by the domain's
//!   `outstanding` quota and charged to its memory (xs-core), and the input they read but
//!   could not take yet by [`DOMAIN_STASH`] bytes together (each read is cut to what is
//!   left); a client that cannot go on for either waits in its domain's queue and is
//!   served again, in turn, once there is room;
//! - descriptors: [`FdBudget`] keeps a reserve that accepts on domain sockets may not use,
//!   so that dom0's sockets (main and read-only) always accept.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use xs_core::protocol::connection::Closed;
use xs_core::protocol::{Access, Connection, Limits};
use xs_core::state::{Global, SaveOptions, SaveStats, SavedConnection, Transport};
use xs_core::{ConnId, DomId};
use xs_serve::{Dispatcher, WARNING};

use crate::host::{Action, HostCtx};
use crate::live_update::{self, Due, Record, RecordClient, RecordListener, SocketKind};
use crate::xen::HostServices;

/// The store, serving rings (on Xen) and the program's sockets.
pub(crate) type Xs = Dispatcher<HostServices, HostCtx>;

/// Bytes read at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Reads per client per loop iteration.
const READ_BUDGET: usize = 16;
/// Token of the signal pipe (slots use their index).
const SIGNAL: Token = Token(usize::MAX - 1);
/// Token of the event-channel device.
const EVTCHN: Token = Token(usize::MAX - 2);
/// How long to wait before accepting again after running out of file descriptors.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// How often an exited child is looked for while one is to be reaped ([`Server::reap`]).
const REAP_EVERY: Duration = Duration::from_millis(10);
/// Bytes the clients of one domain's socket may hold read but not yet taken, together (a
/// dom0 client may hold one read of its own).
const DOMAIN_STASH: usize = READ_CHUNK;
/// Stash capacity a client keeps once its stash is consumed.
const RETAINED_STASH: usize = 4096;

/// Which socket a listener serves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// The main socket: dom0, privileged.
    Main,
    /// The read-only socket: dom0, `EROFS` for changes.
    ReadOnly,
    /// `DIR/<domid>`: the domain, unprivileged.
    Domain(DomId),
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Main => "socket",
            Kind::ReadOnly => "socket_ro",
            Kind::Domain(_) => "domain-socket",
        }
    }
}

#[derive(Debug)]
struct Listener {
    socket: UnixListener,
    path: PathBuf,
    kind: Kind,
    /// In the poll. A domain's listener leaves it while the domain is at its connection
    /// limit, or while accepting would eat into the descriptor reserve (then it is also
    /// `starved`).
    registered: bool,
    /// In [`Server::starved`]: it has attempts waiting for descriptors.
    starved: bool,
}

/// What the daemon knows of the clients of one domain's socket.
#[derive(Debug, Default)]
struct DomainClients {
    /// Clients connected.
    count: usize,
    /// Bytes in their stashes, together (at most [`DOMAIN_STASH`] plus one partly taken
    /// read).
    stashed: usize,
    /// Clients that have work but no room (the domain's `outstanding` quota or its stash),
    /// in turn; an entry whose client no longer waits is skipped.
    waiting: VecDeque<usize>,
    /// Listed in [`Server::waiting_domains`].
    listed: bool,
}

/// Descriptors: how many the process may open, and how many of them accepts on domain
/// sockets must leave free, so that dom0's sockets always accept.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct FdBudget {
    /// `RLIMIT_NOFILE` (its soft limit, which start-up raises to the hard limit).
    limit: usize,
    /// Descriptors only dom0's sockets (and whatever else the daemon opens: the trace
    /// file, a report) may use.
    reserve: usize,
    /// Descriptors open besides clients and domain listeners (the standard streams, the
    /// poll, the main and read-only listeners, the log, Xen's devices).
    base: usize,
}

impl FdBudget {
    /// For a process whose limit is `limit` with `base` descriptors open besides clients.
    fn new(limit: usize, base: usize) -> FdBudget {
        FdBudget {
            limit,
            reserve: fd_reserve(limit),
            base,
        }
    }

    /// This process's budget, counting what is open now.
    fn measure() -> FdBudget {
        use rustix::process::{Resource, getrlimit};
        let limit = getrlimit(Resource::Nofile)
            .current
            .and_then(|l| usize::try_from(l).ok())
            .unwrap_or(usize::MAX);
        // The directory's own descriptor is counted too: one more than is open, which errs
        // on the safe side.
        let base = fs::read_dir("/proc/self/fd").map_or(32, |d| d.count());
        FdBudget::new(limit, base)
    }

    /// Whether a domain socket's client may take a descriptor while `clients` descriptors
    /// (clients and domain listeners) are open besides the base.
    fn domain_may_take(&self, clients: usize) -> bool {
        self.base
            .saturating_add(clients)
            .saturating_add(self.reserve)
            < self.limit
    }
}

/// Descriptors kept from domain sockets' clients for `limit` in all: an eighth, at least 16
/// (dom0's tools, the trace file, a memory report) and at most 1024.
fn fd_reserve(limit: usize) -> usize {
    (limit / 8).clamp(16, 1024)
}

/// Received bytes a connection did not take yet, consumed from the front without moving
/// the rest (a slow connection takes a few requests per iteration from one read's worth).
#[derive(Debug, Default)]
struct Stash {
    bytes: Vec<u8>,
    /// How much of `bytes` was consumed.
    at: usize,
}

impl Stash {
    fn len(&self) -> usize {
        self.bytes.len().saturating_sub(self.at)
    }

    fn is_empty(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn pending(&self) -> &[u8] {
        self.bytes.get(self.at..).unwrap_or_default()
    }

    fn consume(&mut self, n: usize) {
        self.at = self.at.saturating_add(n).min(self.bytes.len());
        if self.is_empty() {
            self.bytes.clear();
            self.at = 0;
            // A client that once held a full read does not keep its buffer while idle.
            self.bytes.shrink_to(RETAINED_STASH);
        }
    }

    /// Keeps `input` (only ever called when nothing is pending, which `consume` leaves as
    /// no bytes at offset 0).
    fn keep(&mut self, input: &[u8]) {
        debug_assert!(self.bytes.is_empty() && self.at == 0);
        self.bytes.extend_from_slice(input);
    }
}

#[derive(Debug)]
struct Client {
    stream: UnixStream,
    conn: Connection,
    domid: DomId,
    /// The socket it came through.
    kind: Kind,
    /// Its number in the trace.
    number: u64,
    /// Connected through its domain's socket (counted in [`Server::domains`]).
    domain_socket: bool,
    /// Waits in its domain's queue for room.
    waiting: bool,
    /// The peer closed its end entirely: nothing can reach it any more.
    hung_up: bool,
    /// Input the connection did not take yet (backpressure); at most one read.
    stash: Stash,
    /// The socket may have unread bytes (cleared when a read would block).
    can_read: bool,
    /// The socket may take more bytes (cleared when a write is short or would block).
    can_write: bool,
    /// What the socket is registered for.
    interest: Interest,
    /// In the work queue.
    queued: bool,
    /// In this iteration's flush list.
    dirty: bool,
    /// The peer shut down its sending side: no more input; close once the output is out.
    eof: bool,
    /// The poller reported the peer's hang-up (or an error): the end of the input must be
    /// read, since no further readiness event will come for it.
    read_closed: bool,
    /// Why the connection ends, once it does.
    closing: Option<End>,
}

/// Why a connection ends.
#[derive(Clone, PartialEq, Eq, Debug)]
enum End {
    /// The peer closed it (after its replies were written).
    Eof,
    /// The socket failed (often: the peer went away).
    Io(String),
    /// The peer broke the protocol, or its domain was released.
    Protocol(Closed),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Eof => f.write_str("eof"),
            End::Io(e) => write!(f, "i/o error: {e}"),
            End::Protocol(c) => c.fmt(f),
        }
    }
}

#[derive(Debug)]
enum Slot {
    Free,
    Listener(Listener),
    Client(Box<Client>),
}

/// Sockets to serve at start.
#[derive(Debug)]
pub(crate) struct Sockets {
    pub(crate) main: PathBuf,
    pub(crate) read_only: Option<PathBuf>,
    pub(crate) domain_dir: Option<PathBuf>,
    /// Clients one domain may have through its socket (0: unlimited).
    pub(crate) domain_connections: usize,
}

/// The daemon.
pub(crate) struct Server {
    poll: Poll,
    xs: Xs,
    /// `VIRQ_DOM_EXC`'s port, on Xen.
    virq: Option<u32>,
    /// Pending ports read from the event-channel device (a buffer kept between reads).
    ports: Vec<u32>,
    signals: Signals,
    slots: Vec<Slot>,
    free: Vec<usize>,
    by_conn: HashMap<ConnId, usize>,
    domain_listeners: HashMap<DomId, usize>,
    domain_dir: Option<PathBuf>,
    /// Clients of domain sockets, by domain.
    domains: HashMap<DomId, DomainClients>,
    /// Domains with clients waiting for room.
    waiting_domains: Vec<DomId>,
    /// `--domain-connections` (0: unlimited).
    domain_connections: usize,
    /// Clients, all sockets together.
    clients: usize,
    fds: FdBudget,
    /// Domain listeners waiting for descriptors, in turn (an entry whose listener is no
    /// longer `starved` is skipped).
    starved: VecDeque<usize>,
    limits: Limits,
    /// Clients with work for the next iteration.
    work: VecDeque<usize>,
    /// The clients served in this iteration (a buffer kept between iterations).
    batch: Vec<usize>,
    /// Clients whose output to write this iteration.
    flush: Vec<usize>,
    /// Clients to close this iteration.
    closing: Vec<usize>,
    buf: Vec<u8>,
    next_number: u64,
    accept_retry: bool,
    last_accept_warning: Option<Instant>,
    stop: bool,
    /// How to start the next binary (live update).
    restart: Restart,
    /// When a held live update was last looked at.
    last_lu_check: Instant,
    /// Children to reap once they have exited: live updates' guardians, which exit once
    /// told (see `live_update::guardian`).
    children: Vec<rustix::process::Pid>,
}

/// What live update needs to start the next process as this one was started.
#[derive(Clone, Debug, Default)]
pub(crate) struct Restart {
    /// The command line (without the program name and the hidden options).
    pub(crate) args: Vec<std::ffi::OsString>,
    /// The directory it was started in (relative paths in `args` are taken from it).
    pub(crate) cwd: Option<PathBuf>,
    /// The daemon moved to `/` (forked).
    pub(crate) daemon: bool,
    /// `--live-update-timeout`: seconds the guardian gives a new process (0: no limit).
    pub(crate) takeover_timeout: u32,
}

/// Whether something answers on the socket at `path`: refuses to start if a daemon does,
/// removes the file if it is a stale socket.
pub(crate) fn claim_socket_path(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            ErrorKind::AddrInUse,
            format!("another daemon is listening on {}", path.display()),
        )),
        Err(_) => {
            log::info!("removing stale socket {}", path.display());
            match fs::remove_file(path) {
                Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
    }
}

fn bind(path: &Path, mode: u32) -> io::Result<UnixListener> {
    claim_socket_path(path)?;
    let socket = UnixListener::bind(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(socket)
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

/// The socket files go with the server, however it ends (a failed start included).
impl Drop for Server {
    fn drop(&mut self) {
        self.remove_sockets();
    }
}

impl Server {
    /// Binds the sockets; fails if one is in use by another daemon. On Xen, polls the
    /// event-channel device too.
    pub(crate) fn new(xs: Xs, sockets: &Sockets) -> io::Result<Server> {
        let mut server = Server::empty(xs, sockets)?;
        server.listen(&sockets.main, Kind::Main, 0o600)?;
        if let Some(ro) = &sockets.read_only {
            // On failure the server is dropped, which removes the main socket.
            server.listen(ro, Kind::ReadOnly, 0o660)?;
        }
        server.measure_fds();
        Ok(server)
    }

    fn measure_fds(&mut self) {
        self.fds = FdBudget::measure();
        log::debug!(
            "descriptors: limit {}, {} open, {} kept for dom0's sockets",
            self.fds.limit,
            self.fds.base,
            self.fds.reserve
        );
    }

    /// How live update starts the next binary.
    pub(crate) fn set_restart(&mut self, restart: Restart) {
        self.restart = restart;
    }

    /// A server without sockets yet.
    fn empty(xs: Xs, sockets: &Sockets) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        poll.registry()
            .register(&mut signals, SIGNAL, Interest::READABLE)?;
        let mut virq = None;
        if let Some((fd, port)) = xs.services().event_source() {
            poll.registry()
                .register(&mut SourceFd(&fd), EVTCHN, Interest::READABLE)?;
            virq = Some(port);
        }
        let server = Server {
            poll,
            xs,
            virq,
            ports: Vec::new(),
            signals,
            slots: Vec::new(),
            free: Vec::new(),
            by_conn: HashMap::new(),
            domain_listeners: HashMap::new(),
            domain_dir: sockets.domain_dir.clone(),
            domains: HashMap::new(),
            waiting_domains: Vec::new(),
            domain_connections: sockets.domain_connections,
            clients: 0,
            fds: FdBudget::new(usize::MAX, 0),
            starved: VecDeque::new(),
            limits: Limits::default(),
            work: VecDeque::new(),
            batch: Vec::new(),
            flush: Vec::new(),
            closing: Vec::new(),
            buf: vec![0; READ_CHUNK],
            next_number: 1,
            accept_retry: false,
            last_accept_warning: None,
            stop: false,
            restart: Restart::default(),
            last_lu_check: Instant::now(),
            children: Vec::new(),
        };
        Ok(server)
    }

    fn alloc_slot(&mut self, slot: Slot) -> usize {
        match self.free.pop() {
            Some(i) => {
                if let Some(s) = self.slots.get_mut(i) {
                    *s = slot;
                }
                i
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        }
    }

    fn free_slot(&mut self, i: usize) -> Slot {
        match self.slots.get_mut(i) {
            Some(s) => {
                self.free.push(i);
                std::mem::replace(s, Slot::Free)
            }
            None => Slot::Free,
        }
    }

    fn listen(&mut self, path: &Path, kind: Kind, mode: u32) -> io::Result<usize> {
        let mut socket = bind(path, mode)?;
        let token = self.alloc_slot(Slot::Free);
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut socket, Token(token), Interest::READABLE)
        {
            self.free_slot(token);
            let _ = fs::remove_file(path);
            return Err(e);
        }
        if let Some(s) = self.slots.get_mut(token) {
            *s = Slot::Listener(Listener {
                socket,
                path: path.to_owned(),
                kind,
                registered: true,
                starved: false,
            });
        }
        Ok(token)
    }

    /// Runs until `SIGINT` or `SIGTERM`, then removes the sockets.
    pub(crate) fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        while !self.stop {
            let timeout = if !self.work.is_empty() {
                Some(Duration::ZERO)
            } else if self.accept_retry {
                Some(ACCEPT_RETRY)
            } else if self.xs.host().lu.busy() {
                Some(live_update::RECHECK)
            } else if !self.children.is_empty() {
                Some(REAP_EVERY)
            } else {
                None
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                // The sockets go when the server is dropped.
                return Err(e);
            }
            for event in events.iter() {
                let token = event.token();
                if token == SIGNAL {
                    self.signals_arrived();
                    continue;
                }
                if token == EVTCHN {
                    self.events_arrived();
                    continue;
                }
                match self.slots.get_mut(token.0) {
                    Some(Slot::Listener(_)) => self.accept(token.0),
                    Some(Slot::Client(c)) => {
                        if event.is_read_closed() || event.is_error() {
                            c.read_closed = true;
                        }
                        if event.is_write_closed() {
                            c.hung_up = true;
                        }
                        if event.is_readable() || c.read_closed {
                            c.can_read = true;
                        }
                        if event.is_writable() || event.is_write_closed() || event.is_error() {
                            c.can_write = true;
                        }
                        if !c.queued {
                            c.queued = true;
                            self.work.push_back(token.0);
                        }
                    }
                    _ => {}
                }
            }
            if self.stop {
                break;
            }
            if self.accept_retry {
                self.accept_retry = false;
                // Listeners out of the poll are resumed when there is room, not here.
                for l in self.listener_slots() {
                    if matches!(self.slots.get(l), Some(Slot::Listener(l)) if l.registered) {
                        self.accept(l);
                    }
                }
            }
            self.iterate();
            self.try_reap();
            self.live_update_step();
        }
        log::info!("shutting down");
        self.remove_sockets();
        self.xs.host_mut().flush();
        Ok(())
    }

    /// Serves the ports with pending events: rings (each re-armed by the dispatcher when
    /// its service ends), and `VIRQ_DOM_EXC`.
    fn events_arrived(&mut self) {
        let mut ports = std::mem::take(&mut self.ports);
        self.xs.services_mut().pending_events(&mut ports);
        for &port in &ports {
            if Some(port) == self.virq {
                self.xs.on_dom_exc();
                xs_serve::Services::rearm(self.xs.services_mut(), port);
            } else {
                self.xs.on_event(port);
            }
        }
        ports.clear();
        self.ports = ports;
    }

    /// Steps 2 to 5 of an iteration.
    fn iterate(&mut self) {
        let mut batch = std::mem::take(&mut self.batch);
        batch.extend(self.work.drain(..));
        for &t in &batch {
            if let Some(Slot::Client(c)) = self.slots.get_mut(t) {
                c.queued = false;
            }
            self.serve(t);
        }
        batch.clear();
        self.batch = batch;
        // Rings with work left over (a guest that keeps writing, events still to deliver).
        if self.xs.has_work() {
            self.xs.run_pending();
        }
        self.carry_out_actions();
        for id in self.xs.take_local_notifications() {
            if let Some(&t) = self.by_conn.get(&id) {
                self.notified(t);
            }
        }
        let flush = std::mem::take(&mut self.flush);
        for &t in &flush {
            self.write_out(t);
        }
        self.flush = flush;
        self.flush.clear();
        let closing = std::mem::take(&mut self.closing);
        for &t in &closing {
            self.close(t);
        }
        self.closing = closing;
        self.closing.clear();
        self.wake_waiting();
        for line in self.xs.take_log() {
            match line.strip_prefix(WARNING) {
                Some(warning) => log::warn!("{warning}"),
                None => log::info!("{line}"),
            }
        }
        self.xs.host_mut().flush();
    }

    fn signals_arrived(&mut self) {
        let signals: Vec<i32> = self.signals.pending().collect();
        for s in signals {
            match s {
                SIGINT | SIGTERM => {
                    log::info!("signal {s}: stopping");
                    self.stop = true;
                }
                SIGHUP => self.xs.host_mut().reopen_trace(),
                _ => {}
            }
        }
    }

    /// Accepts until the listener would block, or (a domain socket) until the domain is at
    /// its connection limit or the descriptors left are the reserve: then the listener
    /// leaves the poll until there is room ([`Server::resume`]).
    fn accept(&mut self, token: usize) {
        loop {
            let Some(Slot::Listener(l)) = self.slots.get(token) else {
                return;
            };
            let kind = l.kind;
            if let Kind::Domain(domid) = kind {
                if self.domain_full(domid) {
                    self.pause(token, false);
                    return;
                }
                if !self.fds.domain_may_take(self.fds_taken()) {
                    self.pause(token, true);
                    return;
                }
            }
            let Some(Slot::Listener(l)) = self.slots.get(token) else {
                return;
            };
            match l.socket.accept() {
                Ok((stream, _)) => self.add_client(stream, kind),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    if is_fd_exhaustion(&e) {
                        self.accept_retry = true;
                    }
                    let now = Instant::now();
                    if self
                        .last_accept_warning
                        .is_none_or(|t| now.duration_since(t) > Duration::from_secs(10))
                    {
                        log::warn!("accept on {}: {e}", l.path.display());
                        self.last_accept_warning = Some(now);
                    }
                    return;
                }
            }
        }
    }

    /// Whether `domid` has as many clients through its socket as it may.
    fn domain_full(&self, domid: DomId) -> bool {
        self.domain_connections != 0
            && self
                .domains
                .get(&domid)
                .is_some_and(|d| d.count >= self.domain_connections)
    }

    /// Descriptors the daemon holds besides its base: clients and domain listeners.
    fn fds_taken(&self) -> usize {
        self.clients.saturating_add(self.domain_listeners.len())
    }

    /// Takes a listener out of the poll (attempts wait in the kernel's backlog meanwhile);
    /// `starved`: for descriptors, so it is resumed in turn when one is freed (else when its
    /// domain has a client fewer).
    fn pause(&mut self, token: usize, starved: bool) {
        let Some(Slot::Listener(l)) = self.slots.get_mut(token) else {
            return;
        };
        if l.registered {
            match self.poll.registry().deregister(&mut l.socket) {
                Ok(()) => l.registered = false,
                Err(e) => log::warn!("cannot pause {}: {e}", l.path.display()),
            }
            log::debug!(
                "{}: not accepting ({})",
                l.path.display(),
                if starved {
                    "descriptors left are for dom0"
                } else {
                    "domain at its connection limit"
                }
            );
        }
        if starved && !l.starved {
            l.starved = true;
            self.starved.push_back(token);
        }
    }

    /// Puts a paused listener back in the poll and accepts what waits.
    fn resume(&mut self, token: usize) {
        let Some(Slot::Listener(l)) = self.slots.get_mut(token) else {
            return;
        };
        if !l.registered {
            if let Err(e) =
                self.poll
                    .registry()
                    .register(&mut l.socket, Token(token), Interest::READABLE)
            {
                log::warn!("cannot resume {}: {e}", l.path.display());
                return;
            }
            l.registered = true;
        }
        self.accept(token);
    }

    /// Resumes listeners that waited for descriptors, in turn, while there are some.
    fn resume_starved(&mut self) {
        while self.fds.domain_may_take(self.fds_taken())
            && let Some(t) = self.starved.pop_front()
        {
            if let Some(Slot::Listener(l)) = self.slots.get_mut(t)
                && l.starved
            {
                l.starved = false;
                self.resume(t);
            }
        }
    }

    fn add_client(&mut self, mut stream: UnixStream, kind: Kind) {
        let (domid, read_only) = match kind {
            Kind::Main => (DomId::DOM0, false),
            Kind::ReadOnly => (DomId::DOM0, true),
            Kind::Domain(d) => (d, false),
        };
        if matches!(kind, Kind::Domain(_)) {
            bound_kernel_buffers(&stream);
        }
        let id = match self.xs.connect(domid) {
            Ok(id) => id,
            Err(e) => {
                log::warn!("cannot connect a client as domain {domid}: {e}");
                return;
            }
        };
        let token = self.alloc_slot(Slot::Free);
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(token), Interest::READABLE)
        {
            log::warn!("cannot register a client: {e}");
            self.free_slot(token);
            self.xs.disconnect(id);
            return;
        }
        let number = self.next_number;
        self.next_number = self.next_number.wrapping_add(1);
        let conn = Connection::new(id, Access { read_only }, self.limits);
        if let Some(s) = self.slots.get_mut(token) {
            *s = Slot::Client(Box::new(Client {
                stream,
                conn,
                domid,
                kind,
                number,
                domain_socket: matches!(kind, Kind::Domain(_)),
                waiting: false,
                hung_up: false,
                stash: Stash::default(),
                can_read: false,
                can_write: true,
                interest: Interest::READABLE,
                queued: false,
                dirty: false,
                eof: false,
                read_closed: false,
                closing: None,
            }));
        }
        self.by_conn.insert(id, token);
        self.clients = self.clients.saturating_add(1);
        if let Kind::Domain(d) = kind {
            let entry = self.domains.entry(d).or_default();
            entry.count = entry.count.saturating_add(1);
        }
        self.xs.host_mut().opened(id, number, domid, kind.label());
        log::debug!(
            "conn {number}: connected to the {} as domain {domid}",
            kind.label()
        );
    }

    /// Marks a client for closing (once).
    fn end(&mut self, t: usize, reason: End) {
        if let Some(Slot::Client(c)) = self.slots.get_mut(t)
            && c.closing.is_none()
        {
            c.closing = Some(reason);
            self.closing.push(t);
        }
    }

    fn mark_dirty(&mut self, t: usize) {
        if let Some(Slot::Client(c)) = self.slots.get_mut(t)
            && !c.dirty
        {
            c.dirty = true;
            self.flush.push(t);
        }
    }

    /// Step 2 for one client: leftover input, then reads, then watch events. A domain
    /// socket's client that has work but no room (its domain's `outstanding` quota or
    /// stash) joins its domain's queue ([`Server::wake_waiting`]).
    fn serve(&mut self, t: usize) {
        let Some(Slot::Client(c)) = self.slots.get_mut(t) else {
            return;
        };
        if c.closing.is_some() {
            return;
        }
        let xs = &mut self.xs;
        // The stash shared by the domain's socket clients (none for dom0's sockets).
        let mut shared = if c.domain_socket {
            self.domains.get_mut(&c.domid)
        } else {
            None
        };
        let mut ended: Option<End> = None;
        // A request held for a protected transaction is tried again with the input after it
        // (or none): the store notified the connection.
        if !c.stash.is_empty() || c.conn.holds_request() {
            let pending = c.stash.pending();
            match xs.external(|store, host| c.conn.receive(store, host, pending)) {
                Ok(n) => {
                    let before = c.stash.len();
                    c.stash.consume(n);
                    if let Some(d) = shared.as_deref_mut() {
                        let taken = before.saturating_sub(c.stash.len());
                        d.stashed = d.stashed.saturating_sub(taken);
                    }
                }
                Err(closed) => ended = Some(End::Protocol(closed)),
            }
        }
        let mut reads = 0usize;
        // The domain's stash is full: reading now could not keep what it does not take.
        let mut no_stash = false;
        while ended.is_none()
            && c.stash.is_empty()
            && c.can_read
            && !c.eof
            && c.conn.wants_input(xs.store())
        {
            if reads == READ_BUDGET {
                // More may wait: come back next iteration, after the others had their turn.
                c.queued = true;
                self.work.push_back(t);
                break;
            }
            let size = shared
                .as_deref()
                .map_or(READ_CHUNK, |d| DOMAIN_STASH.saturating_sub(d.stashed))
                .min(READ_CHUNK);
            if size == 0 {
                no_stash = true;
                break;
            }
            let buf = self.buf.get_mut(..size).unwrap_or_default();
            match c.stream.read(buf) {
                Ok(0) => {
                    // Half-closed: answer what came, then close (in `write_out`).
                    c.eof = true;
                    c.can_read = false;
                }
                Ok(n) => {
                    reads += 1;
                    // A short read drained the socket: mio's readiness is edge-triggered and
                    // reports the next arrival, so skip the read that would only say
                    // WouldBlock (one syscall less per request, as Tokio does). Not after a
                    // hang-up: then the next read is the end of input, and no event says so.
                    if n < size && !c.read_closed {
                        c.can_read = false;
                    }
                    let input = buf.get(..n).unwrap_or_default();
                    match xs.external(|store, host| c.conn.receive(store, host, input)) {
                        Ok(used) if used < n => {
                            c.stash.keep(input.get(used..).unwrap_or_default());
                            if let Some(d) = shared.as_deref_mut() {
                                d.stashed = d.stashed.saturating_add(n.saturating_sub(used));
                            }
                        }
                        Ok(_) => {}
                        Err(closed) => ended = Some(End::Protocol(closed)),
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => c.can_read = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => ended = Some(End::Io(e.to_string())),
            }
        }
        if ended.is_none() {
            xs.external(|store, host| c.conn.pull_events(store, host));
        }
        if ended.is_none()
            && let Some(d) = shared
        {
            let id = c.conn.id();
            let store = xs.store();
            let has_work =
                !c.stash.is_empty() || (c.can_read && !c.eof) || store.queued_events(id) > 0;
            let blocked = has_work && (no_stash || !c.conn.wants_input(store));
            if blocked && c.hung_up {
                // Nobody is left to read what it would be sent.
                ended = Some(End::Eof);
            } else if blocked {
                if !c.waiting {
                    c.waiting = true;
                    d.waiting.push_back(t);
                }
                if !d.listed {
                    d.listed = true;
                    self.waiting_domains.push(c.domid);
                }
            } else {
                // Its entry in the queue, if any, is skipped.
                c.waiting = false;
            }
        }
        self.mark_dirty(t);
        if let Some(reason) = ended {
            self.end(t, reason);
        }
    }

    /// The store notified a client: watch events for it, or a request it holds may go on
    /// (see `Connection::holds_request`), which serves it as new input would.
    fn notified(&mut self, t: usize) {
        match self.slots.get(t) {
            Some(Slot::Client(c)) if c.conn.holds_request() => self.serve(t),
            _ => self.pull_events(t),
        }
    }

    /// End of an iteration: in each domain with clients waiting for room, the first that
    /// can go on now is served next iteration (one per domain and iteration: a domain whose
    /// room is taken gets its clients served in turn, and costs one check per iteration
    /// while it is not).
    fn wake_waiting(&mut self) {
        let mut domids = std::mem::take(&mut self.waiting_domains);
        domids.retain(|&domid| self.wake_one(domid));
        self.waiting_domains = domids;
    }

    /// [`Server::wake_waiting`] for one domain; whether clients of it still wait.
    fn wake_one(&mut self, domid: DomId) -> bool {
        let Some(d) = self.domains.get_mut(&domid) else {
            return false;
        };
        while let Some(&t) = d.waiting.front() {
            let Some(Slot::Client(c)) = self.slots.get_mut(t) else {
                d.waiting.pop_front();
                continue;
            };
            if !c.waiting || !c.domain_socket || c.domid != domid || c.closing.is_some() {
                d.waiting.pop_front();
                continue;
            }
            let store = self.xs.store();
            let room = c.conn.wants_input(store)
                && (!c.stash.is_empty()
                    || d.stashed < DOMAIN_STASH
                    || store.queued_events(c.conn.id()) > 0);
            if room {
                d.waiting.pop_front();
                c.waiting = false;
                if !c.queued {
                    c.queued = true;
                    self.work.push_back(t);
                }
            }
            break;
        }
        d.listed = !d.waiting.is_empty();
        if !d.listed && d.count == 0 {
            self.domains.remove(&domid);
            return false;
        }
        d.listed
    }

    fn pull_events(&mut self, t: usize) {
        if let Some(Slot::Client(c)) = self.slots.get_mut(t)
            && c.closing.is_none()
        {
            self.xs
                .external(|store, host| c.conn.pull_events(store, host));
            self.mark_dirty(t);
        }
    }

    /// Step 4 for one client: one write of all its pending output, then the interest it
    /// needs.
    fn write_out(&mut self, t: usize) {
        let Some(Slot::Client(c)) = self.slots.get_mut(t) else {
            return;
        };
        c.dirty = false;
        let mut error = None;
        let mut progressed = false;
        if c.can_write && !c.conn.output().is_empty() {
            let out = c.conn.output();
            match c.stream.write(out) {
                Ok(n) => {
                    if n < out.len() {
                        c.can_write = false;
                    }
                    progressed = n > 0;
                    // What was sent no longer counts for the domain.
                    self.xs.external(|store, _| c.conn.consume_output(store, n));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => c.can_write = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {
                    if !c.queued {
                        c.queued = true;
                        self.work.push_back(t);
                    }
                }
                Err(e) => error = Some(End::Io(e.to_string())),
            }
        }
        if c.closing.is_some() {
            return;
        }
        if let Some(e) = error {
            self.end(t, e);
            return;
        }
        if c.eof && c.stash.is_empty() && c.conn.output().is_empty() {
            self.end(t, End::Eof);
            return;
        }
        let takes_input = !c.eof && c.conn.wants_input(self.xs.store());
        // Room freed: leftover input, unread bytes or waiting events can go on now.
        if progressed
            && !c.queued
            && ((takes_input && (!c.stash.is_empty() || c.can_read))
                || self.xs.store().queued_events(c.conn.id()) > 0)
        {
            c.queued = true;
            self.work.push_back(t);
        }
        let mut want: Option<Interest> = None;
        if takes_input && c.stash.is_empty() {
            want = Some(Interest::READABLE);
        }
        if !c.conn.output().is_empty() {
            want = Some(want.map_or(Interest::WRITABLE, |w| w | Interest::WRITABLE));
        }
        // Never nothing: a connection neither reading nor writing does not exist (a full
        // output is what stops input), but stay safe.
        let want = want.unwrap_or(Interest::READABLE);
        if want != c.interest {
            match reregister(self.poll.registry(), &mut c.stream, t, want) {
                Ok(()) => c.interest = want,
                Err(e) => self.end(t, End::Io(format!("reregister: {e}"))),
            }
        }
    }

    fn close(&mut self, t: usize) {
        let Slot::Client(mut c) = self.free_slot(t) else {
            return;
        };
        let reason = c.closing.take().unwrap_or(End::Eof);
        let _ = self.poll.registry().deregister(&mut c.stream);
        let id = c.conn.id();
        self.clients = self.clients.saturating_sub(1);
        if c.domain_socket
            && let Entry::Occupied(mut e) = self.domains.entry(c.domid)
        {
            let d = e.get_mut();
            d.count = d.count.saturating_sub(1);
            d.stashed = d.stashed.saturating_sub(c.stash.len());
            if d.count == 0 && !d.listed {
                e.remove();
            }
        }
        match &reason {
            End::Eof | End::Io(_) => {
                log::debug!("connection of domain {} closed: {reason}", c.domid);
            }
            End::Protocol(Closed::Fault(_)) => {
                log::warn!("closing a connection of domain {}: {reason}", c.domid);
            }
            End::Protocol(Closed::Released) => {
                log::info!("closing a connection of domain {}: {reason}", c.domid);
            }
        }
        self.by_conn.remove(&id);
        self.xs.host_mut().closed(id, &reason.to_string());
        self.xs.disconnect(id);
        // Room for one more: the domain's listener if it was at its limit, else whichever
        // waited for descriptors.
        if c.domain_socket
            && let Some(&listener) = self.domain_listeners.get(&c.domid)
            && matches!(self.slots.get(listener), Some(Slot::Listener(l)) if !l.registered && !l.starved)
        {
            self.resume(listener);
        }
        self.resume_starved();
    }

    fn carry_out_actions(&mut self) {
        while !self.xs.host().actions.is_empty() {
            let actions = std::mem::take(&mut self.xs.host_mut().actions);
            for action in actions {
                match action {
                    Action::Introduced(domid) => self.domain_introduced(domid),
                    Action::Released(domid) => self.domain_released(domid),
                }
            }
        }
    }

    fn domain_socket_path(&self, domid: DomId) -> Option<PathBuf> {
        self.domain_dir
            .as_ref()
            .map(|d| d.join(domid.0.to_string()))
    }

    fn domain_introduced(&mut self, domid: DomId) {
        if self.domain_listeners.contains_key(&domid) {
            return;
        }
        let Some(path) = self.domain_socket_path(domid) else {
            return;
        };
        match self.listen(&path, Kind::Domain(domid), 0o660) {
            Ok(token) => {
                log::info!("domain {domid}: serving {}", path.display());
                self.domain_listeners.insert(domid, token);
            }
            Err(e) => log::warn!("domain {domid}: cannot serve {}: {e}", path.display()),
        }
    }

    fn domain_released(&mut self, domid: DomId) {
        if let Some(token) = self.domain_listeners.remove(&domid) {
            self.remove_listener(token);
        }
        let clients: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Slot::Client(c) if c.domid == domid))
            .map(|(i, _)| i)
            .collect();
        for t in clients {
            self.end(t, End::Protocol(Closed::Released));
        }
    }

    fn remove_listener(&mut self, token: usize) {
        if let Slot::Listener(mut l) = self.free_slot(token) {
            let _ = self.poll.registry().deregister(&mut l.socket);
            drop(l.socket);
            if let Err(e) = fs::remove_file(&l.path)
                && e.kind() != ErrorKind::NotFound
            {
                log::warn!("cannot remove {}: {e}", l.path.display());
            }
        }
    }

    /// Stops listening and removes every socket file.
    fn remove_sockets(&mut self) {
        for t in self.listener_slots() {
            self.remove_listener(t);
        }
        self.domain_listeners.clear();
    }

    /// The slots holding listening sockets.
    fn listener_slots(&self) -> Vec<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Slot::Listener(_)))
            .map(|(i, _)| i)
            .collect()
    }
}

/// Kernel buffer space asked for the daemon's end of a guest's connection (Linux doubles
/// it for its bookkeeping: 32 KiB, measured with `ss -xm`). On a Unix stream socket the
/// bytes in flight count against the sender's send buffer, so this bounds what the replies
/// to a guest that stops reading pin in the kernel: the default (~208 KiB) would be 13 MB
/// per domain at 64 connections. (The requests a guest sends and the daemon has not read
/// yet count against the guest's own socket.) Still room for several whole messages (at
/// most 4112 bytes each), so pipelining clients stream as before; what does not fit waits
/// in the connection's output, charged to the domain.
const GUEST_SOCKET_BUFFER: usize = 16 * 1024;

/// Bounds the kernel buffers of a guest's connection (see [`GUEST_SOCKET_BUFFER`]); a
/// failure leaves the system's defaults, which only costs memory.
fn bound_kernel_buffers(stream: &UnixStream) {
    use rustix::net::sockopt;
    let sent = sockopt::set_socket_send_buffer_size(stream, GUEST_SOCKET_BUFFER);
    let received = sockopt::set_socket_recv_buffer_size(stream, GUEST_SOCKET_BUFFER);
    if let Err(e) = sent.and(received) {
        log::debug!("cannot bound a guest socket's buffers: {e}");
    }
}

impl Kind {
    fn socket_kind(self) -> SocketKind {
        match self {
            Kind::Main => SocketKind::Main,
            Kind::ReadOnly => SocketKind::ReadOnly,
            Kind::Domain(d) => SocketKind::Domain(d),
        }
    }

    fn of(kind: SocketKind) -> Kind {
        match kind {
            SocketKind::Main => Kind::Main,
            SocketKind::ReadOnly => Kind::ReadOnly,
            SocketKind::Domain(d) => Kind::Domain(d),
        }
    }
}

/// A client carried over by live update: its socket, its record entry, its restored
/// connection.
#[derive(Debug)]
pub(crate) struct Adopted {
    pub(crate) record: RecordClient,
    pub(crate) conn: Connection,
    pub(crate) input: Vec<u8>,
}

impl Server {
    /// After an iteration: requests held for live update that may go on are served again,
    /// a `-s` waiting for transactions is looked at again (every [`live_update::RECHECK`]),
    /// and a due update is carried out.
    fn live_update_step(&mut self) {
        let lu = &mut self.xs.host_mut().lu;
        let mut wake = lu.take_released();
        if let Some(conn) = lu.waiting_start()
            && self.last_lu_check.elapsed() >= live_update::RECHECK
        {
            self.last_lu_check = Instant::now();
            wake.push(conn);
        }
        for conn in wake {
            if let Some(&t) = self.by_conn.get(&conn)
                && let Some(Slot::Client(c)) = self.slots.get_mut(t)
                && !c.queued
            {
                c.queued = true;
                self.work.push_back(t);
            }
        }
        if let Some(due) = self.xs.host_mut().lu.take_due() {
            let conn = due.conn;
            let e = self.exec_update(&due);
            self.xs
                .host_mut()
                .lu
                .failed(conn, format!("Error activating new binary: {e}"));
            if let Some(&t) = self.by_conn.get(&conn)
                && let Some(Slot::Client(c)) = self.slots.get_mut(t)
                && !c.queued
            {
                c.queued = true;
                self.work.push_back(t);
            }
        }
    }

    /// Writes the state and execs the new binary: returns only if that failed, with every
    /// descriptor as it was.
    fn exec_update(&mut self, due: &Due) -> io::Error {
        let started = Instant::now();
        let mut record = Record {
            next_number: self.next_number,
            io: self.xs.host().io(),
            trace: self.xs.host().trace_path().map(Path::to_owned),
            args: self.restart.args.clone(),
            notify: crate::daemon::notify_socket().map(ToOwned::to_owned),
            ..Record::default()
        };
        let mut main_fd = -1;
        let mut fds: Vec<RawFd> = Vec::new();
        for slot in &self.slots {
            match slot {
                Slot::Listener(l) => {
                    let fd = l.socket.as_raw_fd();
                    if l.kind == Kind::Main {
                        main_fd = fd;
                    }
                    fds.push(fd);
                    record.listeners.push(RecordListener {
                        fd,
                        kind: l.kind.socket_kind(),
                        path: l.path.clone(),
                    });
                }
                Slot::Client(c) => {
                    let fd = c.stream.as_raw_fd();
                    fds.push(fd);
                    if c.conn.id() == due.conn {
                        record.answer = Some(fd);
                    }
                    record.clients.push(RecordClient {
                        fd,
                        kind: c.kind.socket_kind(),
                        number: c.number,
                        ta_age: self
                            .xs
                            .host()
                            .lu
                            .transaction_age(self.xs.store(), c.conn.id()),
                    });
                }
                Slot::Free => {}
            }
        }
        let saved: Vec<SavedConnection<'_>> = self
            .slots
            .iter()
            .filter_map(|slot| match slot {
                Slot::Client(c) => Some(SavedConnection {
                    id: c.conn.id(),
                    transport: Transport::Socket {
                        fd: c.stream.as_raw_fd(),
                    },
                    protocol: Some(&c.conn),
                    input: c.stash.pending(),
                }),
                _ => None,
            })
            .collect();
        // On Xen the event-channel device goes over too: the rings' bindings belong to it.
        let evtchn = self.xs.services().event_source();
        if let Some((fd, virq)) = evtchn {
            fds.push(fd);
            record.evtchn = Some(live_update::EventChannelRecord { fd, virq });
        }
        let global = Global {
            socket_fd: main_fd,
            evtchn_fd: evtchn.map_or(-1, |(fd, _)| fd),
        };
        let xs = &mut self.xs;
        let saved_state = live_update::save_memfd(|sink| {
            xs.save_state(global, &saved, SaveOptions::default(), sink)
        });
        drop(saved);
        let (state, stats) = match saved_state {
            Ok(s) => s,
            Err(e) => return io::Error::new(e.kind(), format!("writing the state: {e}")),
        };
        let written = started.elapsed();
        let text = record.encode();
        let record_fd =
            match live_update::sealed_memfd("xs-host-record", |f| f.write_all(text.as_bytes())) {
                Ok(fd) => fd,
                Err(e) => return io::Error::new(e.kind(), format!("writing the record: {e}")),
            };
        let exe = match live_update::open_self() {
            Ok(f) => f,
            Err(e) => return io::Error::new(e.kind(), format!("/proc/self/exe: {e}")),
        };
        let mut args: Vec<std::ffi::OsString> = match &due.cmdline {
            Some(c) => c.split_whitespace().map(Into::into).collect(),
            None => self.restart.args.clone(),
        };
        args.push(
            format!(
                "--live-update-state={},{}",
                state.as_raw_fd(),
                record_fd.as_raw_fd()
            )
            .into(),
        );
        args.push(format!("--live-update-fallback={}", exe.as_raw_fd()).into());
        log::info!(
            "live-update: state written ({} records, {} bytes, {} clients) in {:.1} ms; exec {}",
            stats.records,
            stats.bytes,
            record.clients.len(),
            written.as_secs_f64() * 1e3,
            due.binary.display()
        );
        self.xs.host_mut().flush();
        let inherit: Vec<RawFd> = fds
            .iter()
            .copied()
            .chain([state.as_raw_fd(), record_fd.as_raw_fd(), exe.as_raw_fd()])
            .collect();
        let set_all = |on: bool| {
            for &fd in &inherit {
                // SAFETY: each descriptor is open for the whole of this function: the
                // listeners' and clients' are held by their slots, the others by locals.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                live_update::set_cloexec(fd, on)?;
            }
            Ok::<(), io::Error>(())
        };
        if let Err(e) = set_all(false) {
            let _ = set_all(true);
            return io::Error::new(e.kind(), format!("clearing close-on-exec: {e}"));
        }
        if let Some(cwd) = &self.restart.cwd {
            let _ = std::env::set_current_dir(cwd);
        }
        // The guardian holds a copy of every descriptor now inheritable, in case the new
        // process dies before it takes over (`live_update::guardian`).
        let guardian = match live_update::guardian::start(
            exe.as_raw_fd(),
            (state.as_raw_fd(), record_fd.as_raw_fd()),
            &self.restart.args,
            self.restart.takeover_timeout,
        ) {
            Ok(g) => match live_update::set_cloexec(std::os::fd::AsFd::as_fd(&g.write), false) {
                Ok(()) => {
                    args.push(g.option());
                    // Under systemd the guardian is the main process until someone took
                    // over: the new process may die, the guardian not.
                    crate::daemon::notify_main_pid(g.pid);
                    Some(g)
                }
                Err(e) => {
                    log::warn!("live-update: the guardian's pipe: {e}");
                    g.dismiss();
                    None
                }
            },
            Err(e) => {
                log::warn!(
                    "live-update: no guardian ({e}): a new process that dies before it takes \
                     over loses the state"
                );
                None
            }
        };
        let e = live_update::exec(due.binary.as_os_str(), &args);
        if let Some(g) = guardian {
            let pid = g.dismiss();
            self.reap(pid);
        }
        // Still here: nothing changed but the descriptors' flags and the directory.
        if self.restart.daemon {
            let _ = std::env::set_current_dir("/");
        }
        let _ = set_all(true);
        e
    }

    /// A server over the sockets a live update carried over: the listeners and clients of
    /// `record`, with the connections restored from the state. Fails without touching the
    /// descriptors' files (no socket file is removed, no descriptor closed) if one is not
    /// what the record says.
    pub(crate) fn adopt(
        xs: Xs,
        sockets: &Sockets,
        record: &Record,
        clients: Vec<Adopted>,
    ) -> io::Result<Server> {
        for fd in record
            .listeners
            .iter()
            .map(|l| l.fd)
            .chain(clients.iter().map(|c| c.record.fd))
        {
            // SAFETY: a descriptor this process inherited; only looked at here.
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            let stat = rustix::fs::fstat(borrowed)
                .map_err(|e| io::Error::other(format!("descriptor {fd}: {e}")))?;
            if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
                return Err(io::Error::other(format!("descriptor {fd} is not a socket")));
            }
        }
        let mut server = Server::empty(xs, sockets)?;
        let result = server.adopt_sockets(record, clients);
        if let Err(e) = result {
            // Nothing of what was adopted may be closed or removed: the fallback takes it.
            for slot in std::mem::take(&mut server.slots) {
                match slot {
                    Slot::Listener(l) => {
                        let _ = std::os::fd::IntoRawFd::into_raw_fd(l.socket);
                    }
                    Slot::Client(c) => {
                        let _ = std::os::fd::IntoRawFd::into_raw_fd(c.stream);
                    }
                    Slot::Free => {}
                }
            }
            std::mem::forget(server);
            return Err(e);
        }
        server.measure_fds();
        Ok(server)
    }

    fn adopt_sockets(&mut self, record: &Record, clients: Vec<Adopted>) -> io::Result<()> {
        for l in &record.listeners {
            // SAFETY: the record names this descriptor as the old process's listener, which
            // it passed to this one (checked to be a socket); nothing else owns it.
            let std_socket = unsafe { std::os::unix::net::UnixListener::from_raw_fd(l.fd) };
            let mut socket = UnixListener::from_std(std_socket);
            let kind = Kind::of(l.kind);
            let token = self.alloc_slot(Slot::Free);
            let registered =
                self.poll
                    .registry()
                    .register(&mut socket, Token(token), Interest::READABLE);
            if let Some(s) = self.slots.get_mut(token) {
                *s = Slot::Listener(Listener {
                    socket,
                    path: l.path.clone(),
                    kind,
                    registered: registered.is_ok(),
                    starved: false,
                });
            }
            registered?;
            if let Kind::Domain(d) = kind {
                self.domain_listeners.insert(d, token);
            }
        }
        self.next_number = record.next_number;
        for a in clients {
            let fd = a.record.fd;
            // SAFETY: as for the listeners: the old process's client socket, passed on.
            let std_stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
            let mut stream = UnixStream::from_std(std_stream);
            let kind = Kind::of(a.record.kind);
            let domid = match kind {
                Kind::Main | Kind::ReadOnly => DomId::DOM0,
                Kind::Domain(d) => d,
            };
            let id = a.conn.id();
            let token = self.alloc_slot(Slot::Free);
            let registered = self.poll.registry().register(
                &mut stream,
                Token(token),
                Interest::READABLE | Interest::WRITABLE,
            );
            let mut stash = Stash::default();
            stash.keep(&a.input);
            let domain_socket = matches!(kind, Kind::Domain(_));
            if let Some(s) = self.slots.get_mut(token) {
                *s = Slot::Client(Box::new(Client {
                    stream,
                    conn: a.conn,
                    domid,
                    kind,
                    number: a.record.number,
                    domain_socket,
                    waiting: false,
                    hung_up: false,
                    stash,
                    // Served in the first iteration: whatever arrived meanwhile is read,
                    // what the old process had not sent is written.
                    can_read: true,
                    can_write: true,
                    interest: Interest::READABLE | Interest::WRITABLE,
                    queued: true,
                    dirty: false,
                    eof: false,
                    read_closed: false,
                    closing: None,
                }));
            }
            registered?;
            self.work.push_back(token);
            self.by_conn.insert(id, token);
            self.clients = self.clients.saturating_add(1);
            if domain_socket {
                let entry = self.domains.entry(domid).or_default();
                entry.count = entry.count.saturating_add(1);
                entry.stashed = entry.stashed.saturating_add(a.input.len());
            }
            let host = self.xs.host_mut();
            host.adopted(id, a.record.number, domid);
            if let Some(age) = a.record.ta_age {
                host.lu.restored_transactions(id, age);
            }
        }
        // Domains at their connection limit stop accepting, as they would have.
        for (&domid, &token) in &self.domain_listeners.clone() {
            if self.domain_full(domid) {
                self.pause(token, false);
            }
        }
        Ok(())
    }

    /// Sets close-on-exec again on every socket (after [`Server::adopt`]: live update
    /// cleared it for the exec).
    pub(crate) fn set_cloexec(&self) {
        for slot in &self.slots {
            let result = match slot {
                Slot::Listener(l) => live_update::set_cloexec(&l.socket, true),
                Slot::Client(c) => live_update::set_cloexec(&c.stream, true),
                Slot::Free => Ok(()),
            };
            if let Err(e) = result {
                log::warn!("close-on-exec: {e}");
            }
        }
    }

    /// Serves the sockets of the domains the store has introduced (a restored store's).
    pub(crate) fn serve_introduced_domains(&mut self) {
        let domids: Vec<DomId> = self
            .xs
            .store()
            .known_domains()
            .filter(|&d| self.xs.store().is_introduced(d))
            .collect();
        for d in domids {
            self.domain_introduced(d);
        }
    }

    /// The connection of the client on socket `fd` (after [`Server::adopt`]).
    pub(crate) fn conn_on_fd(&self, fd: RawFd) -> Option<ConnId> {
        self.slots.iter().find_map(|s| match s {
            Slot::Client(c) if c.stream.as_raw_fd() == fd => Some(c.conn.id()),
            _ => None,
        })
    }

    /// `--state-file`: the whole state, rings included, to `path` (the sockets' clients go
    /// with this process: their connections are written without a descriptor, and the next
    /// start drops them).
    pub(crate) fn save_state_file(&mut self, path: &Path) -> io::Result<SaveStats> {
        let xs = &mut self.xs;
        live_update::write_state_file(path, |sink| {
            xs.save_state(Global::default(), &[], SaveOptions::default(), sink)
        })
    }

    /// Reaps child `pid` once it has exited (checked at each turn of the loop, every
    /// [`REAP_EVERY`] at least, until then).
    pub(crate) fn reap(&mut self, pid: u32) {
        if let Some(pid) = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap_or(0)) {
            self.children.push(pid);
        }
        self.try_reap();
    }

    fn try_reap(&mut self) {
        // Kept while it runs; gone once reaped, or if it is not ours to wait for.
        self.children.retain(|&pid| {
            matches!(
                rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG),
                Ok(None)
            )
        });
    }

    /// The daemon's host.
    pub(crate) fn host_mut(&mut self) -> &mut HostCtx {
        self.xs.host_mut()
    }
}

fn reregister(
    registry: &Registry,
    stream: &mut UnixStream,
    token: usize,
    interest: Interest,
) -> io::Result<()> {
    registry.reregister(stream, Token(token), interest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_reserve() {
        assert_eq!(fd_reserve(64), 16);
        assert_eq!(fd_reserve(1024), 128);
        assert_eq!(fd_reserve(1 << 20), 1024);
        // 256 in all, 12 open at start: clients and domain listeners may hold
        // 256 - 12 - 32 = 212 when domain sockets' accepts stop; the last 32 are dom0's.
        let b = FdBudget::new(256, 12);
        assert!(b.domain_may_take(211));
        assert!(!b.domain_may_take(212));
        assert!(!b.domain_may_take(usize::MAX));
        assert!(FdBudget::new(usize::MAX, 0).domain_may_take(1 << 30));
    }

    #[test]
    fn a_stash_keeps_little_once_consumed() {
        let mut s = Stash::default();
        s.keep(&[7; READ_CHUNK]);
        assert_eq!(s.len(), READ_CHUNK);
        s.consume(100);
        assert_eq!((s.len(), s.pending().first()), (READ_CHUNK - 100, Some(&7)));
        s.consume(READ_CHUNK);
        assert!(s.is_empty());
        assert!(s.bytes.capacity() <= RETAINED_STASH);
    }
}
