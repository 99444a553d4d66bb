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
//! takes no more input once too many messages wait to be sent (its `outstanding` quota, or
//! [`Limits::privileged_pending`]); bytes it did not consume are kept (at most one read
//! buffer) and the socket's `READABLE` interest is dropped until the output drains, so the
//! peer's own writes block in the kernel. Memory per connection stays bounded and the
//! others are served as usual.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs;
use std::io::{self, ErrorKind, Read, Write};
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
use xs_core::{ConnId, DomId};
use xs_serve::{Dispatcher, WARNING};

use crate::host::{Action, HostCtx};
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
        let mut server = Server {
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
        };
        server.listen(&sockets.main, Kind::Main, 0o600)?;
        if let Some(ro) = &sockets.read_only {
            // On failure the server is dropped, which removes the main socket.
            server.listen(ro, Kind::ReadOnly, 0o660)?;
        }
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
                for l in self.listener_slots() {
                    self.accept(l);
                }
            }
            self.iterate();
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

    fn accept(&mut self, token: usize) {
        loop {
            let Some(Slot::Listener(l)) = self.slots.get(token) else {
                return;
            };
            let kind = l.kind;
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

    fn add_client(&mut self, mut stream: UnixStream, kind: Kind) {
        let (domid, read_only) = match kind {
            Kind::Main => (DomId::DOM0, false),
            Kind::ReadOnly => (DomId::DOM0, true),
            Kind::Domain(d) => (d, false),
        };
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

    /// Step 2 for one client: leftover input, then reads, then watch events.
    fn serve(&mut self, t: usize) {
        let Some(Slot::Client(c)) = self.slots.get_mut(t) else {
            return;
        };
        if c.closing.is_some() {
            return;
        }
        let xs = &mut self.xs;
        let mut ended: Option<End> = None;
        // A request held for a protected transaction is tried again with the input after it
        // (or none): the store notified the connection.
        if !c.stash.is_empty() || c.conn.holds_request() {
            let pending = c.stash.pending();
            match xs.external(|store, host| c.conn.receive(store, host, pending)) {
                Ok(n) => c.stash.consume(n),
                Err(closed) => ended = Some(End::Protocol(closed)),
            }
        }
        let mut reads = 0usize;
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
            match c.stream.read(&mut self.buf) {
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
                    if n < self.buf.len() && !c.read_closed {
                        c.can_read = false;
                    }
                    let input = self.buf.get(..n).unwrap_or_default();
                    match xs.external(|store, host| c.conn.receive(store, host, input)) {
                        Ok(used) if used < n => {
                            c.stash.keep(input.get(used..).unwrap_or_default());
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
                    c.conn.consume_output(n);
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

fn reregister(
    registry: &Registry,
    stream: &mut UnixStream,
    token: usize,
    interest: Interest,
) -> io::Result<()> {
    registry.reregister(stream, Token(token), interest)
}
