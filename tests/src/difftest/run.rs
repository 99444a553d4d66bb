//! Running a sequence against one daemon and writing down what it answered.
//!
//! Each step sends its request and waits for the reply (watch events that arrive meanwhile
//! are kept). Then every open connection gets a sync request (`GET_DOMAIN_PATH 0`, which
//! changes nothing) and its events are collected up to the sync's reply: a daemon queues
//! the events a request fires before it reads the next request of any connection, and
//! sends a connection's messages in order, so by then every event the step fired has
//! arrived, without waiting for quiet. What a step observed is its reply and, per
//! connection, the events that arrived during it, whether before or after the reply (C
//! xenstored queues a request's events before its reply, oxenstored after).
//!
//! Replies are normalised where daemons legitimately pick different values: transaction
//! ids (shown as `<tx>`), `DIRECTORY_PART`'s generation count (`<gen>`), and the order of
//! a `DIRECTORY` list and of a whole `DIRECTORY_PART` one (sorted: C lists children in
//! creation order, xs-host sorted; no client may depend on either).
//!
//! Daemons are kept running between sequences: the sequence's connections are closed
//! (which drops their watches and transactions), the sandbox and the guests' homes removed
//! and the guest domains released, so that the next sequence starts from the same state.

use std::fmt;
use std::io::{self, Write as _};
use std::time::Duration;

use super::script::{Action, Layout, Sequence, Step, Tx};
use crate::daemon::{Daemon, Kind, TempDir};
use crate::skip::Skip;
use crate::wire::{Client, Msg, Transport, Wire, header, ty};

/// How long a dom0 connection waits for a reply before the step counts as unanswered.
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// The same for a header claiming too many bytes, which daemons may answer by waiting.
const BADLEN_TIMEOUT: Duration = Duration::from_millis(300);
/// `req_id` of the sync requests (the steps count up from 1).
const SYNC_REQ_ID: u32 = 0x5e00_0000;
/// xs-host's options: no nodes created on `INTRODUCE`, as C xenstored 4.17 creates none.
const XS_HOST_ARGS: &[&str] = &["--no-domain-nodes"];
/// The transaction id sent for a label whose start failed or is not in the sequence.
const MISSING_TX: u32 = 0x7ffe_0000;

/// What a request got.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Reply {
    /// A reply of type `ty` (the request's, normally) with this payload (normalised).
    Ok {
        /// Its type.
        ty: u32,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// An `ERROR` reply with this errno name.
    Error(String),
    /// The daemon closed the connection (or had closed it before).
    Closed,
    /// No reply in time (the connection is not used again).
    Timeout,
    /// Something that is no reply to the request (a wrong `req_id`, an I/O error).
    Garbled(String),
    /// The daemon died during this step or before it.
    Died,
    /// A reply carrying another `tx_id` than the request's.
    OtherTx {
        /// The `tx_id` it carried.
        tx_id: u32,
        /// The reply otherwise.
        reply: Box<Reply>,
    },
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Ok { ty, payload } => {
                write!(f, "OK {}", super::script::quote(payload))?;
                if *ty != 0 {
                    write!(f, " (type {})", super::script::show_type(*ty))?;
                }
                Ok(())
            }
            Reply::Error(e) => write!(f, "ERROR {e}"),
            Reply::Closed => f.write_str("connection closed"),
            Reply::Timeout => f.write_str("no reply"),
            Reply::Garbled(s) => write!(f, "garbled: {s}"),
            Reply::Died => f.write_str("DAEMON DIED"),
            Reply::OtherTx { tx_id, reply } => write!(f, "{reply} [with tx_id {tx_id}]"),
        }
    }
}

/// What one step observed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Observed {
    /// The reply to the step's request.
    pub reply: Reply,
    /// Per connection, the payloads of the watch events that arrived during the step, in
    /// order.
    pub events: Vec<Vec<Vec<u8>>>,
}

impl Observed {
    /// The reply and the events, on one line.
    pub fn summary(&self) -> String {
        let mut s = self.reply.to_string();
        for (c, evs) in self.events.iter().enumerate() {
            if !evs.is_empty() {
                let list: Vec<String> = evs.iter().map(|e| super::script::quote(e)).collect();
                s.push_str(&format!("; events c{c}: {}", list.join(" ")));
            }
        }
        s
    }
}

/// A daemon the tester drives.
pub struct Target {
    /// Which one.
    pub kind: Kind,
    daemon: Option<Daemon>,
    /// The guests' connections, kept from one sequence to the next (introducing a domain
    /// again after releasing it would leave the daemons' views of it apart: under the
    /// shim C and oxenstored think every domain exists, xs-host knows it was released).
    guests: Vec<(u32, Box<dyn Client>)>,
    /// Whether the last sequence changed something the cleanup does not undo (a domain
    /// introduced or released, a node outside the sandbox): the driver then restarts
    /// every daemon.
    pub dirty: bool,
    /// Requests sent (steps and syncs), for the statistics.
    pub requests: u64,
}

impl Target {
    /// Starts a daemon of `kind` on a fresh socket. xs-host runs with
    /// `--no-domain-nodes`, as C xenstored 4.17 creates no nodes on `INTRODUCE`.
    pub fn start(kind: Kind) -> Result<Target, Skip> {
        let daemon = Daemon::start_kind(kind, TempDir::new(), XS_HOST_ARGS, &[])?;
        let mut t = Target {
            kind,
            daemon: Some(daemon),
            guests: Vec::new(),
            dirty: false,
            requests: 0,
        };
        t.introduce_guests()?;
        Ok(t)
    }

    /// Introduces the guest domains of [`Layout::Guests`] (with their connections where
    /// the daemon can serve a guest), so that every sequence, with guests or not, meets
    /// the same domains on every daemon.
    fn introduce_guests(&mut self) -> Result<(), Skip> {
        for &domid in Layout::Guests.guests() {
            if self.kind == Kind::OXenstored {
                let mut w = self.daemon().connect();
                match w.introduce(domid) {
                    Ok(_) => {}
                    Err(e) => return Err(Skip(format!("INTRODUCE {domid}: {e}"))),
                }
            } else {
                let g = self.daemon().guest(domid)?;
                self.guests.push((domid, g));
            }
        }
        Ok(())
    }

    /// Stops the daemon and starts a fresh one.
    pub fn restart(&mut self) -> Result<(), Skip> {
        self.guests.clear();
        self.dirty = false;
        if let Some(d) = self.daemon.take() {
            d.stop();
        }
        self.daemon = Some(Daemon::start_kind(
            self.kind,
            TempDir::new(),
            XS_HOST_ARGS,
            &[],
        )?);
        self.introduce_guests()
    }

    /// Whether this daemon can run sequences of `layout`.
    pub fn supports(&self, layout: Layout) -> bool {
        layout == Layout::Dom0 || self.kind != Kind::OXenstored
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon running")
    }

    /// Runs `seq` and cleans up after it (a daemon that died is started again). A daemon
    /// that died shows as [`Reply::Died`] from the step during which it did. `Err` is a
    /// failure of the harness (a guest could not be set up), not a difference.
    pub fn run(&mut self, seq: &Sequence) -> Result<Vec<Observed>, String> {
        let mut conns = Vec::new();
        let result = self.run_inner(seq, &mut conns);
        let died = matches!(&result, Ok(t) if t.last().is_some_and(|o| o.reply == Reply::Died));
        if died {
            self.restart()
                .map_err(|s| format!("restarting {}: {s}", self.kind.name()))?;
            return result;
        }
        if let Ok(trace) = &result {
            self.dirty |= dirty(self.kind, seq, trace);
        }
        // Keep the guests' connections, with their watches and transactions reset.
        for (&domid, conn) in seq.layout.domains().iter().zip(conns) {
            if let Some(Link::Guest(mut g)) = conn.link
                && reset_guest(g.as_mut()).is_ok()
            {
                self.guests.push((domid, g));
            }
        }
        let cleanup = self.cleanup(seq.layout);
        let trace = result?;
        if let Err(e) = cleanup {
            if self.kind == Kind::XsHost {
                return Err(e);
            }
            // A reference that dies in the cleanup (C xenstored 4.17 has crashes) is
            // started again; the sequence's comparison stands.
            self.restart()
                .map_err(|s| format!("restarting {}: {s}", self.kind.name()))?;
        }
        Ok(trace)
    }

    /// Whether the daemon still runs.
    fn alive(&mut self) -> bool {
        if self.daemon.as_mut().is_some_and(Daemon::alive) {
            return true;
        }
        // A reference started by the anchors' script is no child of ours: give /proc a
        // moment before calling it dead.
        std::thread::sleep(Duration::from_millis(50));
        self.daemon.as_mut().is_some_and(Daemon::alive)
    }

    fn run_inner(
        &mut self,
        seq: &Sequence,
        conns: &mut Vec<Conn>,
    ) -> Result<Vec<Observed>, String> {
        for &domid in seq.layout.domains() {
            let link = if domid == 0 {
                let mut w = self.daemon().connect();
                w.stream()
                    .set_read_timeout(Some(REPLY_TIMEOUT))
                    .map_err(|e| e.to_string())?;
                Link::Socket(w)
            } else if let Some(i) = self.guests.iter().position(|g| g.0 == domid) {
                Link::Guest(self.guests.swap_remove(i).1)
            } else {
                return Err(format!("no connection of guest {domid} (lost?)"));
            };
            conns.push(Conn { link: Some(link) });
        }
        let mut labels: Vec<(u32, u32)> = Vec::new();
        let mut trace = Vec::with_capacity(seq.steps.len());
        for (next_req, step) in (1u32..).zip(&seq.steps) {
            let mut events = vec![Vec::new(); conns.len()];
            let reply = self.send(step, conns, &mut labels, &mut events, next_req);
            for (c, conn) in conns.iter_mut().enumerate() {
                self.requests += u64::from(conn.link.is_some());
                conn.sync(&mut events[c]);
            }
            let ok = matches!(reply, Reply::Ok { .. } | Reply::Error(_));
            trace.push(Observed { reply, events });
            if !ok && !self.alive() {
                let empty = vec![Vec::new(); conns.len()];
                if let Some(last) = trace.last_mut() {
                    last.reply = Reply::Died;
                }
                while trace.len() < seq.steps.len() {
                    trace.push(Observed {
                        reply: Reply::Died,
                        events: empty.clone(),
                    });
                }
                return Ok(trace);
            }
        }
        Ok(trace)
    }

    fn send(
        &mut self,
        step: &Step,
        conns: &mut [Conn],
        labels: &mut Vec<(u32, u32)>,
        events: &mut [Vec<Vec<u8>>],
        req_id: u32,
    ) -> Reply {
        let conn = &mut conns[step.conn];
        if conn.link.is_none() {
            return Reply::Closed;
        }
        self.requests += 1;
        let (ty, tx_id) = match &step.action {
            Action::BadLength { ty, len } => {
                return conn.bad_length(*ty, *len, req_id, &mut events[step.conn]);
            }
            Action::Request { ty, tx, payload } => {
                let tx_id = match *tx {
                    Tx::None => 0,
                    Tx::Raw(n) => n,
                    Tx::Label(l) => labels
                        .iter()
                        .find(|&&(x, _)| x == l)
                        .map_or(MISSING_TX, |&(_, id)| id),
                };
                let msg = Msg {
                    ty: *ty,
                    req_id,
                    tx_id,
                    payload: payload.clone(),
                };
                if let Err(r) = conn.send(&msg) {
                    return r;
                }
                (*ty, tx_id)
            }
        };
        let reply = conn.reply(req_id, tx_id, &mut events[step.conn]);
        normalise(step, ty, reply, labels)
    }

    /// Closes nothing (the caller dropped the connections) but removes what a sequence may
    /// have left: the sandbox `/t` and `/local` (relative paths, the guests' homes).
    fn cleanup(&mut self, _layout: Layout) -> Result<(), String> {
        if self.daemon.is_none() {
            return Ok(());
        }
        let kind = self.kind;
        let mut w = Wire::connect(self.daemon().socket()).map_err(|e| e.to_string())?;
        let _ = w.stream().set_read_timeout(Some(REPLY_TIMEOUT));
        let mut req = |t: u32, payload: &[u8]| -> io::Result<()> {
            w.send_msg(&Msg {
                ty: t,
                req_id: 1,
                tx_id: 0,
                payload: payload.to_vec(),
            })?;
            loop {
                if w.recv_msg()?.ty != ty::WATCH_EVENT {
                    return Ok(());
                }
            }
        };
        let mut step = || -> io::Result<()> {
            // oxenstored starts with /local (and no /local/domain), the others without.
            let local = if kind == Kind::OXenstored {
                "/local/domain"
            } else {
                "/local"
            };
            for p in ["/t", local] {
                req(ty::RM, format!("{p}\0").as_bytes())?;
            }
            Ok(())
        };
        step().map_err(|e| format!("cleaning up {}: {e}", self.kind.name()))
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("kind", &self.kind)
            .field("daemon", &self.daemon)
            .field(
                "guests",
                &self.guests.iter().map(|g| g.0).collect::<Vec<_>>(),
            )
            .field("dirty", &self.dirty)
            .finish()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take()
            && !std::thread::panicking()
        {
            d.stop();
        }
    }
}

/// RESET_WATCHES (which ends the connection's transactions too) and a sync, whose reply
/// comes after every event queued before it: the guest's connection is then as new.
fn reset_guest(g: &mut dyn Client) -> io::Result<()> {
    for (t, payload) in [
        (ty::RESET_WATCHES, &b"\0"[..]),
        (ty::GET_DOMAIN_PATH, b"0\0"),
    ] {
        g.send_msg(&Msg {
            ty: t,
            req_id: SYNC_REQ_ID,
            tx_id: 0,
            payload: payload.to_vec(),
        })?;
        while g.recv_msg()?.ty == ty::WATCH_EVENT {}
    }
    Ok(())
}

/// Whether a sequence changed what the cleanup does not undo: a domain introduced,
/// released, resumed or given a target, or a node outside the sandbox (`/t`, and below
/// `/local/domain`, which the cleanup removes, relative paths included).
fn dirty(kind: Kind, seq: &Sequence, trace: &[Observed]) -> bool {
    seq.steps.iter().zip(trace).any(|(step, o)| {
        if !matches!(o.reply, Reply::Ok { .. }) {
            return false;
        }
        let p = step.path();
        let sandbox = p == b"/t"
            || p.starts_with(b"/t/")
            || p.starts_with(b"t")
            || p.starts_with(b"/local/domain")
            || (kind != Kind::OXenstored && p.starts_with(b"/local"));
        match step.ty() {
            8 | 9 | 18 | 19 => true,
            11..=14 => !sandbox,
            _ => false,
        }
    })
}

/// How a connection reaches the daemon: dom0's socket, or a guest's transport.
enum Link {
    Socket(Wire),
    Guest(Box<dyn Client>),
}

impl Link {
    fn transport(&mut self) -> &mut dyn Transport {
        match self {
            Link::Socket(w) => w,
            Link::Guest(g) => g.as_mut(),
        }
    }
}

/// One of a sequence's connections (`None` once the daemon closed it or it timed out).
struct Conn {
    link: Option<Link>,
}

fn io_reply(e: &io::Error) -> Reply {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Reply::Timeout,
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => Reply::Closed,
        _ => Reply::Garbled(e.to_string()),
    }
}

impl Conn {
    /// Sends `msg`; a failure closes the connection and is the step's reply.
    fn send(&mut self, msg: &Msg) -> Result<(), Reply> {
        let Some(link) = self.link.as_mut() else {
            return Err(Reply::Closed);
        };
        link.transport().send_msg(msg).map_err(|e| {
            self.link = None;
            io_reply(&e)
        })
    }

    /// Receives until the reply to `req_id`, keeping the events that come first.
    fn reply(&mut self, req_id: u32, tx_id: u32, events: &mut Vec<Vec<u8>>) -> Reply {
        let Some(link) = self.link.as_mut() else {
            return Reply::Closed;
        };
        loop {
            match link.transport().recv_msg() {
                Err(e) => {
                    self.link = None;
                    return io_reply(&e);
                }
                Ok(m) if m.ty == ty::WATCH_EVENT => events.push(m.payload),
                Ok(m) if m.req_id == req_id && m.tx_id != tx_id => {
                    // A reply that does not echo the request's transaction (oxenstored, to
                    // some requests): shown, and the connection goes on.
                    let inner = if m.ty == ty::ERROR {
                        let name = m.payload.split(|&b| b == 0).next().unwrap_or_default();
                        Reply::Error(String::from_utf8_lossy(name).into_owned())
                    } else {
                        Reply::Ok {
                            ty: m.ty,
                            payload: m.payload,
                        }
                    };
                    return Reply::OtherTx {
                        tx_id: m.tx_id,
                        reply: Box::new(inner),
                    };
                }
                Ok(m) if m.req_id != req_id || m.tx_id != tx_id => {
                    self.link = None;
                    return Reply::Garbled(format!(
                        "type {} req_id {:#x} tx_id {:#x} for req_id {req_id:#x} tx_id {tx_id:#x}",
                        m.ty, m.req_id, m.tx_id
                    ));
                }
                Ok(m) if m.ty == ty::ERROR => {
                    let name = m.payload.split(|&b| b == 0).next().unwrap_or_default();
                    return Reply::Error(String::from_utf8_lossy(name).into_owned());
                }
                Ok(m) => {
                    return Reply::Ok {
                        ty: m.ty,
                        payload: m.payload,
                    };
                }
            }
        }
    }

    /// Sends the sync request and collects events up to its reply.
    fn sync(&mut self, events: &mut Vec<Vec<u8>>) {
        let msg = Msg {
            ty: ty::GET_DOMAIN_PATH,
            req_id: SYNC_REQ_ID,
            tx_id: 0,
            payload: b"0\0".to_vec(),
        };
        if self.send(&msg).is_err() {
            return;
        }
        match self.reply(SYNC_REQ_ID, 0, events) {
            Reply::Ok { .. } | Reply::Error(_) => {}
            _ => self.link = None,
        }
    }

    /// Sends a header claiming `len` bytes and nothing after it. A daemon should drop the
    /// connection; one that waits for the rest is shown as giving no reply (and the
    /// connection is not used again).
    fn bad_length(&mut self, t: u32, len: u32, req_id: u32, events: &mut Vec<Vec<u8>>) -> Reply {
        let Some(Link::Socket(w)) = self.link.as_mut() else {
            return Reply::Garbled("BADLEN is for dom0's socket connections only".into());
        };
        let sent = w
            .stream()
            .set_read_timeout(Some(BADLEN_TIMEOUT))
            .and_then(|()| w.stream().write_all(&header(t, req_id, 0, len)));
        if let Err(e) = sent {
            self.link = None;
            return io_reply(&e);
        }
        let r = self.reply(req_id, 0, events);
        if let Some(Link::Socket(w)) = self.link.as_mut()
            && w.stream().set_read_timeout(Some(REPLY_TIMEOUT)).is_err()
        {
            self.link = None;
        }
        if r == Reply::Timeout {
            self.link = None;
        }
        r
    }
}

/// Normalises a reply where daemons legitimately choose different values, and records a
/// started transaction's id under its label.
fn normalise(step: &Step, t: u32, reply: Reply, labels: &mut Vec<(u32, u32)>) -> Reply {
    let Reply::Ok { ty: rt, payload } = reply else {
        if let Reply::OtherTx { tx_id, reply } = reply {
            return Reply::OtherTx {
                tx_id,
                reply: Box::new(normalise(step, t, *reply, labels)),
            };
        }
        return reply;
    };
    let rt = if rt == t { 0 } else { rt };
    let payload = match t {
        ty::TRANSACTION_START if rt == 0 => {
            let id = std::str::from_utf8(payload.strip_suffix(b"\0").unwrap_or(&payload))
                .ok()
                .and_then(|s| s.parse::<u32>().ok());
            // Ids are each daemon's own choice, also of a start with no label (one whose
            // payload the generator malformed, which the daemons may take all the same).
            match (id, step.label) {
                (Some(id), Some(l)) => {
                    labels.push((l, id));
                    b"<tx>\0".to_vec()
                }
                (Some(_), None) => b"<tx>\0".to_vec(),
                _ => payload,
            }
        }
        ty::DIRECTORY if rt == 0 => {
            let body = payload.strip_suffix(b"\0").unwrap_or(&payload);
            if body.is_empty() {
                payload
            } else {
                let mut names: Vec<&[u8]> = body.split(|&b| b == 0).collect();
                names.sort_unstable();
                let mut out = names.join(&0u8);
                out.push(0);
                out
            }
        }
        22 if rt == 0 => {
            // `<gencnt>\0<names...>\0\0`: the count is each daemon's own; a whole list
            // (offset 0, ending in the extra NUL) is sorted as DIRECTORY's is.
            match payload.iter().position(|&b| b == 0) {
                Some(i) => {
                    let mut out = b"<gen>\0".to_vec();
                    let list = &payload[i + 1..];
                    let whole = step.args().get(1) == Some(&&b"0"[..]);
                    match list.strip_suffix(b"\0\0") {
                        Some(names) if whole && !names.is_empty() => {
                            let mut names: Vec<&[u8]> = names.split(|&b| b == 0).collect();
                            names.sort_unstable();
                            out.extend(names.join(&0u8));
                            out.extend_from_slice(b"\0\0");
                        }
                        _ => out.extend_from_slice(list),
                    }
                    out
                }
                None => payload,
            }
        }
        _ => payload,
    };
    Reply::Ok { ty: rt, payload }
}
