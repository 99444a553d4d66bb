//! The threaded stress test: a guest thread sends a long random stream of requests (values up
//! to the largest that fits a message, watches, transactions, pipelining) through the guest
//! end of a [`SharedPage`] while a server thread serves them through the pump and a real
//! store. The guest keeps its own model of the tree and of the watch events it is owed, and
//! checks every reply (type, `req_id`, `tx_id`, payload) and every event exactly (but for
//! events the store may drop as identical to one still pending, see [`Owed`]).
//!
//! What the model covers: `WRITE` (values of random bytes up to the largest that fits a
//! message; the guest's node-size, node and memory quotas are lifted for that), `READ`,
//! `DIRECTORY`, `RM` (with the events of every removed node), `MKDIR`, `GET_PERMS`,
//! `WATCH`/`UNWATCH` (absolute and relative, unique tokens), transactions with `WRITE`,
//! `MKDIR` and reads inside (committed or aborted; their events fire at commit, in path
//! order), and requests the store refuses (`EACCES`, `ENOSYS`, an unknown transaction). `RM`
//! inside transactions is left out: its events at commit are not modelled.
//!
//! A second run makes both threads lag now and then, so that both rings fill and writes are
//! cut short at both ends; the first starts all indices just below `u32::MAX`, so that they
//! wrap early.
//!
//! Size: `XS_RING_STRESS_REQUESTS` requests (default 60 000, a few seconds in a debug
//! `cargo test`; the lagging run does a quarter), seed of the `fastrand::Rng`s that draw the
//! streams and the lags: `XS_RING_STRESS_SEED` (decimal or `0x` hex). Millions, in release:
//!
//! ```text
//! XS_RING_STRESS_REQUESTS=3000000 cargo test -p xs-serve --release --test stress -- --nocapture
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use fastrand::Rng;
use xs_core::protocol::{Access, Connection, Limits, NoHost};
use xs_core::store::Introduction;
use xs_core::wire::{HEADER_LEN, Header, MsgType, PAYLOAD_MAX, push_message};
use xs_core::{DomId, QuotaKind, Store, StoreConfig};
use xs_ring::layout::Field;
use xs_ring::{Guest, Page, RING_SIZE, Server, SharedPage};
use xs_serve::pump::pump;

/// The guest's home, for requests and watches given as absolute paths.
const HOME: &[u8] = b"/local/domain/5/";
/// The subtree the guest plays in (relative to its home); `data` itself always exists.
const DATA: &[u8] = b"data";
/// Most requests in flight at once.
const MAX_PIPELINE: u64 = 16;
/// Most watches registered at once.
const MAX_WATCHES: usize = 8;
/// With no progress for this long, the test fails (a lost message or a stuck pump).
const STALL: Duration = Duration::from_secs(30);

/// The stress tests use both cores each: they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// True one time in `n` (`n > 0`).
fn one_in(rng: &mut Rng, n: u32) -> bool {
    rng.u32(..n) == 0
}

/// How a run is set up.
#[derive(Clone, Copy, Debug)]
struct Config {
    requests: u64,
    seed: u64,
    /// The server sleeps now and then (so the request ring fills), and so does the guest
    /// before reading (so the reply ring fills).
    lag: bool,
    /// Where all four indices start (the protocol does not start them at 0).
    start_index: u32,
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim().replace('_', "");
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Every node path the guest uses, relative to its home: `data`, `data/s`, and two levels
/// below it (names chosen so that byte order and path order differ: `a-b` sorts between `a`
/// and `a/x`), one of them long.
fn universe() -> Vec<Vec<u8>> {
    let long = format!("long-{}", "l".repeat(120));
    let level1 = ["a", "b", "c", "d", "e", "f", "a-b", "a0", long.as_str()];
    let level2 = ["x", "y", "z", "x-y"];
    let mut out = vec![DATA.to_vec(), b"data/s".to_vec()];
    for n1 in level1 {
        out.push(format!("data/s/{n1}").into_bytes());
        for n2 in level2 {
            out.push(format!("data/s/{n1}/{n2}").into_bytes());
        }
    }
    out
}

fn parent(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[..i],
        None => b"",
    }
}

/// Whether `path` is `ancestor` or below it.
fn at_or_below(path: &[u8], ancestor: &[u8]) -> bool {
    path.starts_with(ancestor)
        && (path.len() == ancestor.len() || path.get(ancestor.len()) == Some(&b'/'))
}

fn absolute(rel: &[u8]) -> Vec<u8> {
    let mut p = HOME.to_vec();
    p.extend_from_slice(rel);
    p
}

fn show(bytes: &[u8]) -> String {
    if bytes.len() > 80 {
        format!(
            "{:?}...({} bytes)",
            String::from_utf8_lossy(&bytes[..80]),
            bytes.len()
        )
    } else {
        format!("{:?}", String::from_utf8_lossy(bytes))
    }
}

/// The guest's model of its part of the tree, with the open transaction's changes on top.
#[derive(Default)]
struct Model {
    nodes: BTreeMap<Vec<u8>, Vec<u8>>,
    tx: Option<Tx>,
}

struct Tx {
    id: u32,
    ops: usize,
    overlay: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Paths written (or created by MKDIR): each fires watches at commit, in path order.
    targets: BTreeSet<Vec<u8>>,
}

impl Model {
    fn get(&self, path: &[u8]) -> Option<&[u8]> {
        self.tx
            .as_ref()
            .and_then(|t| t.overlay.get(path))
            .or_else(|| self.nodes.get(path))
            .map(Vec::as_slice)
    }

    /// The names of the children of `path`, in byte order.
    fn children(&self, path: &[u8]) -> Vec<Vec<u8>> {
        let mut prefix = path.to_vec();
        prefix.push(b'/');
        let mut names = BTreeSet::new();
        let maps = std::iter::once(&self.nodes).chain(self.tx.as_ref().map(|t| &t.overlay));
        for map in maps {
            for key in map.range(prefix.clone()..).map(|(k, _)| k) {
                if !key.starts_with(&prefix) {
                    break;
                }
                let rest = &key[prefix.len()..];
                if !rest.contains(&b'/') {
                    names.insert(rest.to_vec());
                }
            }
        }
        names.into_iter().collect()
    }

    fn set(&mut self, path: &[u8], value: Vec<u8>) {
        match &mut self.tx {
            Some(t) => t.overlay.insert(path.to_vec(), value),
            None => self.nodes.insert(path.to_vec(), value),
        };
    }

    /// Creates the missing ancestors of `path` with empty values.
    fn make_parents(&mut self, path: &[u8]) {
        let mut missing = Vec::new();
        let mut p = parent(path);
        while !p.is_empty() && self.get(p).is_none() {
            missing.push(p.to_vec());
            p = parent(p);
        }
        for p in missing.into_iter().rev() {
            self.set(&p, Vec::new());
        }
    }

    /// `path` and everything below it, children before parents (children in byte order).
    fn post_order(&self, path: &[u8], out: &mut Vec<Vec<u8>>) {
        for name in self.children(path) {
            let mut child = path.to_vec();
            child.push(b'/');
            child.extend_from_slice(&name);
            self.post_order(&child, out);
        }
        out.push(path.to_vec());
    }

    /// A random existing node (outside a transaction's overlay), if any.
    fn random_node(&self, rng: &mut Rng) -> Option<Vec<u8>> {
        let n = self.nodes.len();
        (n > 0).then(|| {
            let i = rng.usize(..n);
            self.nodes.keys().nth(i).cloned().unwrap_or_default()
        })
    }
}

struct WatchReg {
    /// Relative path of the watched node.
    path: Vec<u8>,
    /// Registered with the absolute path (events then report absolute paths).
    absolute: bool,
    token: Vec<u8>,
}

impl WatchReg {
    fn reported(&self, rel: &[u8]) -> Vec<u8> {
        if self.absolute {
            absolute(rel)
        } else {
            rel.to_vec()
        }
    }

    fn wire_path(&self) -> Vec<u8> {
        self.reported(&self.path)
    }
}

/// What the reply to a request must be.
enum Payload {
    Exact(Vec<u8>),
    /// A transaction id: decimal digits and a NUL, not 0.
    TxId,
}

struct Expect {
    msg_type: u32,
    req_id: u32,
    tx_id: u32,
    payload: Payload,
    what: String,
}

#[derive(Default, Debug)]
struct Stats {
    requests: u64,
    replies: u64,
    events: u64,
    /// Owed events skipped as possibly dropped duplicates.
    skipped_events: u64,
    bytes_out: u64,
    bytes_in: u64,
    /// Writes the ring took only part of (`0 < n < offered`).
    partial_writes: u64,
    /// Writes the full ring took nothing of.
    refused_writes: u64,
    full_reads: u64,
    transactions: u64,
    max_in_flight: usize,
    guest_sleeps: u64,
}

#[derive(Default, Debug)]
struct ServerStats {
    busy_pumps: u64,
    sleeps: u64,
    rsp_ring_full: u64,
}

/// The events owed to one token, in order.
///
/// The store drops an event identical to one still pending for the connection (C
/// xenstored's rule, `xs_core::store` `watch.rs`), which depends on timing the guest does not
/// see; so an owed event may be missing if it may have been dropped: an identical event
/// arrived after the request that caused it was sent (which is only so if that one was
/// still unsent when the request was served).
#[derive(Default)]
struct Owed {
    /// Each owed event's path, with the number of requests sent when it was predicted.
    events: VecDeque<(Vec<u8>, u64)>,
    /// For each path delivered, the number of requests sent when it last arrived.
    delivered: HashMap<Vec<u8>, u64>,
}

impl Owed {
    /// Whether the owed event `path` of request `sent` may have been dropped.
    fn droppable(&self, path: &[u8], sent: u64) -> bool {
        self.delivered.get(path).is_some_and(|&at| at >= sent)
    }

    /// Whether every event still owed may have been dropped (so none need arrive).
    fn settled(&self) -> bool {
        self.events.iter().all(|(p, n)| self.droppable(p, *n))
    }
}

/// The guest's side: the ring end, the model, and what it is owed.
struct Client<'p> {
    guest: Guest<&'p SharedPage>,
    config: Config,
    rng: Rng,
    universe: Vec<Vec<u8>>,
    model: Model,
    watches: Vec<WatchReg>,
    /// Events owed, per token (tokens are unique per registration).
    owed: HashMap<Vec<u8>, Owed>,
    next_token: u64,
    out: Vec<u8>,
    out_at: usize,
    inbuf: Vec<u8>,
    in_at: usize,
    expected: VecDeque<Expect>,
    /// The transaction id of the last TRANSACTION_START reply.
    started: Option<u32>,
    stats: Stats,
    last_progress: Instant,
    server_dead: &'p AtomicBool,
}

impl<'p> Client<'p> {
    fn new(page: &'p SharedPage, config: Config, server_dead: &'p AtomicBool) -> Client<'p> {
        let mut model = Model::default();
        model.nodes.insert(DATA.to_vec(), Vec::new());
        Client {
            guest: Guest::new(page),
            config,
            rng: Rng::with_seed(config.seed),
            universe: universe(),
            model,
            watches: Vec::new(),
            owed: HashMap::new(),
            next_token: 0,
            out: Vec::new(),
            out_at: 0,
            inbuf: Vec::new(),
            in_at: 0,
            expected: VecDeque::new(),
            started: None,
            stats: Stats::default(),
            last_progress: Instant::now(),
            server_dead,
        }
    }

    fn fail(&self, why: &str) -> ! {
        let page = self.guest.page();
        panic!(
            "seed {:#x}, after {} requests / {} replies / {} events: {why}\n\
             next expected: {:?}\n\
             page: req_prod {} req_cons {} rsp_prod {} rsp_cons {} error {} connection {}",
            self.config.seed,
            self.stats.requests,
            self.stats.replies,
            self.stats.events,
            self.expected.front().map(|e| &e.what),
            page.load(Field::ReqProd),
            page.load(Field::ReqCons),
            page.load(Field::RspProd),
            page.load(Field::RspCons),
            page.load(Field::Error),
            page.load(Field::Connection),
        );
    }

    // ----- sending and receiving -----------------------------------------------------------

    fn send(&mut self, t: MsgType, tx_id: u32, payload: &[u8], reply: u32, expect: Payload) {
        let req_id = self.rng.u32(1..);
        push_message(&mut self.out, t as u32, req_id, tx_id, payload);
        self.expected.push_back(Expect {
            msg_type: reply,
            req_id,
            tx_id,
            payload: expect,
            what: format!("{} {} (tx {tx_id}, req {req_id})", t.name(), show(payload)),
        });
        self.stats.requests += 1;
        self.stats.max_in_flight = self.stats.max_in_flight.max(self.expected.len());
    }

    /// A request answered with `t` and `reply`.
    fn ok(&mut self, t: MsgType, payload: &[u8], reply: &[u8]) {
        let tx = self.model.tx.as_ref().map_or(0, |t| t.id);
        self.send(t, tx, payload, t as u32, Payload::Exact(reply.to_vec()));
    }

    /// A request answered with an error.
    fn err(&mut self, t: MsgType, tx: u32, payload: &[u8], name: &str) {
        let mut reply = name.as_bytes().to_vec();
        reply.push(0);
        self.send(t, tx, payload, MsgType::Error as u32, Payload::Exact(reply));
    }

    fn owe(&mut self, token: &[u8], path: Vec<u8>) {
        let sent = self.stats.requests;
        self.owed
            .entry(token.to_vec())
            .or_default()
            .events
            .push_back((path, sent));
    }

    /// Events for a change at `rel`: watches on it and its ancestors.
    fn fire_subtree(&mut self, rel: &[u8]) {
        let owed: Vec<(Vec<u8>, Vec<u8>)> = self
            .watches
            .iter()
            .filter(|w| at_or_below(rel, &w.path))
            .map(|w| (w.token.clone(), w.reported(rel)))
            .collect();
        for (token, path) in owed {
            self.owe(&token, path);
        }
    }

    /// Events for `rel` going away with an ancestor: watches on exactly it.
    fn fire_exact(&mut self, rel: &[u8]) {
        let owed: Vec<(Vec<u8>, Vec<u8>)> = self
            .watches
            .iter()
            .filter(|w| w.path == rel)
            .map(|w| (w.token.clone(), w.reported(rel)))
            .collect();
        for (token, path) in owed {
            self.owe(&token, path);
        }
    }

    /// One step of moving bytes: writes what fits of the pending requests (sometimes only a
    /// part on purpose), reads what the server wrote, checks complete messages. Returns
    /// whether anything moved.
    fn step(&mut self) -> bool {
        let mut moved = false;
        if self.out_at < self.out.len() {
            let mut chunk = self.out.len() - self.out_at;
            if one_in(&mut self.rng, 4) {
                chunk = self.rng.usize(1..=chunk);
            }
            let n = match self
                .guest
                .write(&self.out[self.out_at..self.out_at + chunk])
            {
                Ok(n) => n,
                Err(f) => self.fail(&format!("guest write: {f}")),
            };
            if n == 0 {
                self.stats.refused_writes += 1;
            } else if n < chunk {
                self.stats.partial_writes += 1;
            }
            self.out_at += n;
            self.stats.bytes_out += n as u64;
            moved |= n > 0;
            if self.out_at == self.out.len() {
                self.out.clear();
                self.out_at = 0;
            }
        }
        if self.config.lag && one_in(&mut self.rng, 200) {
            self.stats.guest_sleeps += 1;
            thread::sleep(Duration::from_micros(self.rng.u64(20..=300)));
        }
        let mut buf = [0u8; RING_SIZE];
        let want = match self.rng.u32(..8) {
            0 => self.rng.usize(1..=24),
            1 => self.rng.usize(1..=RING_SIZE),
            _ => RING_SIZE,
        };
        let n = match self.guest.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(f) => self.fail(&format!("guest read: {f}")),
        };
        if n == RING_SIZE {
            self.stats.full_reads += 1;
        }
        if n > 0 {
            moved = true;
            self.stats.bytes_in += n as u64;
            self.inbuf.extend_from_slice(&buf[..n]);
            self.parse();
        }
        moved
    }

    /// Checks every complete message received.
    fn parse(&mut self) {
        loop {
            let rest = &self.inbuf[self.in_at..];
            let Some(h) = rest.first_chunk::<HEADER_LEN>() else {
                break;
            };
            let header = Header::decode(h);
            let len = header.len as usize;
            if len > PAYLOAD_MAX {
                self.fail(&format!("reply header announces {len} bytes: {header:?}"));
            }
            if rest.len() < HEADER_LEN + len {
                break;
            }
            let payload = rest[HEADER_LEN..HEADER_LEN + len].to_vec();
            self.in_at += HEADER_LEN + len;
            self.check(header, &payload);
        }
        if self.in_at == self.inbuf.len() {
            self.inbuf.clear();
            self.in_at = 0;
        } else if self.in_at > 64 * 1024 {
            self.inbuf.drain(..self.in_at);
            self.in_at = 0;
        }
    }

    fn check(&mut self, header: Header, payload: &[u8]) {
        if header.msg_type == MsgType::WatchEvent as u32 {
            self.check_event(header, payload);
            return;
        }
        let Some(e) = self.expected.pop_front() else {
            self.fail(&format!("unexpected reply {header:?} {}", show(payload)));
        };
        self.stats.replies += 1;
        let payload_ok = match &e.payload {
            Payload::Exact(p) => p == payload,
            Payload::TxId => match payload.split_last() {
                Some((0, digits))
                    if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) =>
                {
                    match std::str::from_utf8(digits)
                        .ok()
                        .and_then(|s| s.parse::<u32>().ok())
                    {
                        Some(id) if id != 0 => {
                            self.started = Some(id);
                            true
                        }
                        _ => false,
                    }
                }
                _ => false,
            },
        };
        if header.msg_type != e.msg_type
            || header.req_id != e.req_id
            || header.tx_id != e.tx_id
            || !payload_ok
        {
            let want = match &e.payload {
                Payload::Exact(p) => show(p),
                Payload::TxId => "a transaction id".to_owned(),
            };
            let what = e.what.clone();
            self.fail(&format!(
                "wrong reply to {what}: got type {} req {} tx {} payload {}, \
                 want type {} req {} tx {} payload {want}",
                header.msg_type,
                header.req_id,
                header.tx_id,
                show(payload),
                e.msg_type,
                e.req_id,
                e.tx_id,
            ));
        }
    }

    fn check_event(&mut self, header: Header, payload: &[u8]) {
        self.stats.events += 1;
        if header.req_id != 0 || header.tx_id != 0 {
            self.fail(&format!("watch event with ids: {header:?}"));
        }
        // `<path>\0<token>\0`, exactly.
        let parts: Vec<&[u8]> = payload.split(|&b| b == 0).collect();
        let [path, token, end] = parts.as_slice() else {
            self.fail(&format!("malformed event {}", show(payload)));
        };
        if !end.is_empty() {
            self.fail(&format!("malformed event {}", show(payload)));
        }
        let Some(owed) = self.owed.get_mut(*token) else {
            self.fail(&format!(
                "event for unknown token {} (path {})",
                show(token),
                show(path)
            ));
        };
        // Skipped: owed events the store may have dropped as duplicates.
        while let Some((want, sent)) = owed.events.front()
            && want != path
            && owed.droppable(want, *sent)
        {
            owed.events.pop_front();
            self.stats.skipped_events += 1;
        }
        match owed.events.pop_front() {
            Some((want, _)) if want == *path => {}
            want => {
                let want = want.map(|(w, _)| show(&w));
                self.fail(&format!(
                    "event {} for token {}, owed {want:?}",
                    show(path),
                    show(token)
                ));
            }
        }
        owed.delivered.insert(path.to_vec(), self.stats.requests);
        let (token, empty) = (token.to_vec(), owed.events.is_empty());
        if empty && !self.watches.iter().any(|w| w.token == token) {
            self.owed.remove(&token);
        }
    }

    /// Moves bytes until at most `left` replies are outstanding.
    fn flush(&mut self, left: usize) {
        while self.expected.len() > left || self.out_at < self.out.len() {
            self.spin_step();
        }
    }

    fn spin_step(&mut self) {
        if self.step() {
            self.last_progress = Instant::now();
            return;
        }
        if self.server_dead.load(Ordering::Acquire) {
            self.fail("the server thread died");
        }
        if self.last_progress.elapsed() > STALL {
            self.fail("no progress");
        }
        thread::yield_now();
    }

    // ----- the requests --------------------------------------------------------------------

    /// A path from the universe, or an existing node (so that reads mostly hit).
    fn pick(&mut self) -> Vec<u8> {
        if one_in(&mut self.rng, 3)
            && let Some(p) = self.model.random_node(&mut self.rng)
        {
            return p;
        }
        let i = self.rng.usize(..self.universe.len());
        self.universe[i].clone()
    }

    /// A path below `data` (writable and removable).
    fn pick_below_data(&mut self) -> Vec<u8> {
        loop {
            let p = self.pick();
            if p.as_slice() != DATA {
                return p;
            }
        }
    }

    /// The path as sent: relative, or sometimes absolute.
    fn wire(&mut self, rel: &[u8]) -> Vec<u8> {
        if one_in(&mut self.rng, 4) {
            absolute(rel)
        } else {
            rel.to_vec()
        }
    }

    fn value_len(&mut self, max: usize) -> usize {
        match self.rng.u32(..10) {
            0..4 => self.rng.usize(0..=16.min(max)),
            4..7 => self.rng.usize(0..=512.min(max)),
            7..9 => self.rng.usize(0..=max),
            _ => max,
        }
    }

    fn write(&mut self) {
        let rel = if one_in(&mut self.rng, 50) {
            DATA.to_vec()
        } else {
            self.pick_below_data()
        };
        let mut payload = self.wire(&rel);
        payload.push(0);
        let len = self.value_len(PAYLOAD_MAX - payload.len());
        let at = payload.len();
        payload.resize(at + len, 0);
        self.rng.fill(&mut payload[at..]);
        let value = payload[at..].to_vec();
        self.model.make_parents(&rel);
        self.model.set(&rel, value);
        self.ok(MsgType::Write, &payload, b"OK\0");
        match &mut self.model.tx {
            Some(t) => {
                t.targets.insert(rel);
            }
            None => self.fire_subtree(&rel),
        }
    }

    fn mkdir(&mut self) {
        let rel = self.pick_below_data();
        let mut payload = self.wire(&rel);
        payload.push(0);
        if self.model.get(&rel).is_none() {
            self.model.make_parents(&rel);
            self.model.set(&rel, Vec::new());
            match &mut self.model.tx {
                Some(t) => {
                    t.targets.insert(rel);
                }
                None => self.fire_subtree(&rel),
            }
        }
        self.ok(MsgType::Mkdir, &payload, b"OK\0");
    }

    fn read(&mut self) {
        let rel = self.pick();
        let mut payload = self.wire(&rel);
        payload.push(0);
        match self.model.get(&rel).map(<[u8]>::to_vec) {
            Some(v) => self.ok(MsgType::Read, &payload, &v),
            None => self.err(MsgType::Read, self.tx_id(), &payload, "ENOENT"),
        }
    }

    fn directory(&mut self) {
        let rel = self.pick();
        let mut payload = self.wire(&rel);
        payload.push(0);
        if self.model.get(&rel).is_none() {
            self.err(MsgType::Directory, self.tx_id(), &payload, "ENOENT");
            return;
        }
        let mut reply = Vec::new();
        for name in self.model.children(&rel) {
            reply.extend_from_slice(&name);
            reply.push(0);
        }
        self.ok(MsgType::Directory, &payload, &reply);
    }

    fn get_perms(&mut self) {
        let rel = self.pick();
        let mut payload = self.wire(&rel);
        payload.push(0);
        if self.model.get(&rel).is_none() {
            self.err(MsgType::GetPerms, self.tx_id(), &payload, "ENOENT");
        } else {
            // `data` is the guest's, and what it creates below inherits that.
            self.ok(MsgType::GetPerms, &payload, b"n5\0");
        }
    }

    fn rm(&mut self) {
        debug_assert!(self.model.tx.is_none());
        let rel = self.pick_below_data();
        let mut payload = self.wire(&rel);
        payload.push(0);
        if self.model.get(&rel).is_some() {
            let mut gone = Vec::new();
            self.model.post_order(&rel, &mut gone);
            for p in &gone {
                self.model.nodes.remove(p);
                if *p == rel {
                    self.fire_subtree(p);
                } else {
                    self.fire_exact(p);
                }
            }
            self.ok(MsgType::Rm, &payload, b"OK\0");
        } else if self.model.get(parent(&rel)).is_some() {
            self.ok(MsgType::Rm, &payload, b"OK\0");
        } else {
            self.err(MsgType::Rm, 0, &payload, "ENOENT");
        }
    }

    fn watch_or_unwatch(&mut self) {
        let unwatch = !self.watches.is_empty()
            && (self.watches.len() >= MAX_WATCHES || one_in(&mut self.rng, 3));
        if unwatch {
            let i = self.rng.usize(..self.watches.len());
            let w = self.watches.swap_remove(i);
            let mut payload = w.wire_path();
            payload.push(0);
            payload.extend_from_slice(&w.token);
            payload.push(0);
            self.ok(MsgType::Unwatch, &payload, b"OK\0");
            if self.owed.get(&w.token).is_some_and(|o| o.events.is_empty()) {
                self.owed.remove(&w.token);
            }
            return;
        }
        let path = self.pick();
        self.next_token += 1;
        // Tokens of varied lengths, unique per registration.
        let pad = self.rng.usize(0..=40);
        let token = format!("t{}{}", self.next_token, "k".repeat(pad)).into_bytes();
        let w = WatchReg {
            path,
            absolute: one_in(&mut self.rng, 3),
            token,
        };
        let mut payload = w.wire_path();
        payload.push(0);
        payload.extend_from_slice(&w.token);
        payload.push(0);
        // "When a watch is first set up it is triggered once straight away."
        self.owe(&w.token, w.wire_path());
        self.watches.push(w);
        self.ok(MsgType::Watch, &payload, b"OK\0");
    }

    /// Requests the store must refuse.
    fn refused(&mut self) {
        match self.rng.u32(..3) {
            0 => self.err(MsgType::Read, 0, b"/tool\0", "EACCES"),
            1 => {
                let req_id = self.rng.u32(1..);
                push_message(&mut self.out, 99, req_id, 0, b"x\0");
                self.expected.push_back(Expect {
                    msg_type: MsgType::Error as u32,
                    req_id,
                    tx_id: 0,
                    payload: Payload::Exact(b"ENOSYS\0".to_vec()),
                    what: "type 99".to_owned(),
                });
                self.stats.requests += 1;
            }
            _ => self.err(MsgType::Read, 0x7fff_0000, b"data\0", "ENOENT"),
        }
    }

    fn tx_id(&self) -> u32 {
        self.model.tx.as_ref().map_or(0, |t| t.id)
    }

    /// Starts a transaction: waits for its id (a barrier).
    fn start(&mut self) {
        self.send(
            MsgType::TransactionStart,
            0,
            b"\0",
            MsgType::TransactionStart as u32,
            Payload::TxId,
        );
        self.started = None;
        self.flush(0);
        let Some(id) = self.started.take() else {
            self.fail("no transaction id");
        };
        self.stats.transactions += 1;
        self.model.tx = Some(Tx {
            id,
            ops: 0,
            overlay: BTreeMap::new(),
            targets: BTreeSet::new(),
        });
    }

    fn end(&mut self) {
        let Some(tx) = self.model.tx.take() else {
            return;
        };
        let commit = !one_in(&mut self.rng, 10);
        let payload: &[u8] = if commit { b"T\0" } else { b"F\0" };
        self.send(
            MsgType::TransactionEnd,
            tx.id,
            payload,
            MsgType::TransactionEnd as u32,
            Payload::Exact(b"OK\0".to_vec()),
        );
        if commit {
            self.model.nodes.extend(tx.overlay);
            for p in &tx.targets {
                self.fire_subtree(p);
            }
        }
    }

    /// Queues one random request; returns whether the caller must wait for all replies
    /// before the next (a transaction start, whose id later requests need).
    fn generate(&mut self) -> bool {
        if let Some(t) = &mut self.model.tx {
            t.ops += 1;
            let ops = t.ops;
            match self.rng.u32(..100) {
                _ if ops > 12 => self.end(),
                0..40 => self.write(),
                40..65 => self.read(),
                65..75 => self.directory(),
                75..80 => self.get_perms(),
                80..90 => self.mkdir(),
                _ => self.end(),
            }
            return false;
        }
        match self.rng.u32(..100) {
            0..30 => self.write(),
            30..50 => self.read(),
            50..58 => self.directory(),
            58..65 => self.rm(),
            65..71 => self.mkdir(),
            71..76 => self.get_perms(),
            76..84 => self.watch_or_unwatch(),
            84..89 => {
                self.start();
                return true;
            }
            89..91 => self.refused(),
            _ => self.read(),
        }
        false
    }

    /// The whole run.
    fn run(&mut self) {
        let mut generated = 0u64;
        while generated < self.config.requests || self.model.tx.is_some() {
            let batch = if one_in(&mut self.rng, 2) {
                1
            } else {
                self.rng.u64(2..=MAX_PIPELINE)
            };
            let mut barrier = false;
            for _ in 0..batch {
                generated += 1;
                if self.generate() {
                    barrier = true;
                    break;
                }
            }
            let left = if barrier { 0 } else { self.rng.usize(0..=3) };
            self.flush(left);
        }
        self.flush(0);
        self.verify_all();
    }

    /// Reads back every node and every child list; drops all watches; waits for every owed
    /// event.
    fn verify_all(&mut self) {
        let paths = self.universe.clone();
        for chunk in paths.chunks(MAX_PIPELINE as usize / 2) {
            for rel in chunk {
                let mut payload = rel.clone();
                payload.push(0);
                match self.model.get(rel).map(<[u8]>::to_vec) {
                    Some(v) => {
                        self.ok(MsgType::Read, &payload, &v);
                        let mut list = Vec::new();
                        for name in self.model.children(rel) {
                            list.extend_from_slice(&name);
                            list.push(0);
                        }
                        self.ok(MsgType::Directory, &payload, &list);
                    }
                    None => {
                        self.err(MsgType::Read, 0, &payload, "ENOENT");
                        self.err(MsgType::Directory, 0, &payload, "ENOENT");
                    }
                }
            }
            self.flush(0);
        }
        while let Some(w) = self.watches.pop() {
            let mut payload = w.wire_path();
            payload.push(0);
            payload.extend_from_slice(&w.token);
            payload.push(0);
            self.ok(MsgType::Unwatch, &payload, b"OK\0");
        }
        self.flush(0);
        self.last_progress = Instant::now();
        while self.owed.values().any(|o| !o.settled()) {
            self.spin_step();
        }
        // Anything after this would be an event nobody owes: a last round trip catches it.
        self.ok(MsgType::Read, b"domid\0", b"5");
        self.flush(0);
    }
}

/// Sets `flag` when dropped during a panic (the other thread then stops waiting).
struct OnPanic<'a>(&'a AtomicBool);

impl Drop for OnPanic<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.store(true, Ordering::Release);
        }
    }
}

/// The server thread: a store with guest 5, serving the ring until `stop`.
fn serve(
    page: &SharedPage,
    stop: &AtomicBool,
    dead: &AtomicBool,
    config: Config,
) -> Result<ServerStats, String> {
    let _guard = OnPanic(dead);
    let mut store = Store::new(StoreConfig::new([1, 2])).map_err(|e| e.to_string())?;
    let d0 = store.connect(DomId::DOM0).map_err(|e| e.to_string())?;
    store
        .introduce(d0, DomId(5), Introduction { gfn: 1, evtchn: 1 })
        .map_err(|e| e.to_string())?;
    // Values up to the message size, and as many nodes and bytes as the run makes.
    for kind in [QuotaKind::NodeSize, QuotaKind::Nodes, QuotaKind::Memory] {
        store
            .set_quota(d0, Some(DomId(5)), kind, 0)
            .map_err(|e| e.to_string())?;
    }
    let id = store.connect(DomId(5)).map_err(|e| e.to_string())?;
    let mut conn = Connection::new(id, Access::default(), Limits::default());
    let mut server = Server::new(page, Server::<&SharedPage>::FEATURES);
    let mut rng = Rng::with_seed(config.seed ^ 0x5e4e_4e4e);
    let mut stats = ServerStats::default();
    let mut idle = 0u32;
    loop {
        if page
            .load(Field::RspProd)
            .wrapping_sub(page.load(Field::RspCons))
            == RING_SIZE as u32
        {
            stats.rsp_ring_full += 1;
        }
        let done = pump(&mut server, &mut conn, &mut store, &mut NoHost);
        if let Some(fault) = done.fault {
            return Err(format!("the ring broke: {fault}"));
        }
        if done.released {
            return Err("the domain was released".into());
        }
        if done.notify {
            stats.busy_pumps += 1;
            idle = 0;
        } else {
            if stop.load(Ordering::Acquire) {
                break;
            }
            idle += 1;
            if idle < 100 {
                std::hint::spin_loop();
            } else {
                thread::yield_now();
            }
        }
        if config.lag && one_in(&mut rng, 300) {
            stats.sleeps += 1;
            thread::sleep(Duration::from_micros(rng.u64(20..=400)));
        }
    }
    store.check().map_err(|e| format!("store check: {e}"))?;
    if store.watch_count() != 0 || store.transaction_count() != 0 {
        return Err(format!(
            "left behind: {} watches, {} transactions",
            store.watch_count(),
            store.transaction_count()
        ));
    }
    Ok(stats)
}

fn run(config: Config) -> (Stats, ServerStats) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let page = SharedPage::default();
    for f in [
        Field::ReqCons,
        Field::ReqProd,
        Field::RspCons,
        Field::RspProd,
    ] {
        page.store(f, config.start_index);
    }
    let stop = AtomicBool::new(false);
    let server_dead = AtomicBool::new(false);
    let start = Instant::now();
    let (stats, server) = thread::scope(|s| {
        let server = s.spawn(|| serve(&page, &stop, &server_dead, config));
        let guest = s.spawn(|| {
            let _guard = OnPanic(&stop);
            let mut client = Client::new(&page, config, &server_dead);
            client.run();
            client.stats
        });
        let stats = guest.join();
        stop.store(true, Ordering::Release);
        let server = server.join();
        match (stats, server) {
            (Ok(stats), Ok(Ok(server))) => (stats, server),
            (Ok(_), Ok(Err(e))) => panic!("seed {:#x}: server: {e}", config.seed),
            (Err(p), _) | (_, Err(p)) => std::panic::resume_unwind(p),
        }
    });
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "stress (seed {:#x}, lag {}): {} requests, {} replies, {} events ({} owed ones skipped \
         as possible duplicates), {} transactions in \
         {secs:.2} s = {:.0} requests/s, {:.1} MB/s each way; most in flight {}; guest \
         partial writes {}, writes into a full ring {}, full reply-ring reads {}, guest sleeps {}; \
         server busy pumps {}, polls finding the reply ring full {}, sleeps {}",
        config.seed,
        config.lag,
        stats.requests,
        stats.replies,
        stats.events,
        stats.skipped_events,
        stats.transactions,
        stats.requests as f64 / secs,
        (stats.bytes_out + stats.bytes_in) as f64 / 2.0 / secs / 1e6,
        stats.max_in_flight,
        stats.partial_writes,
        stats.refused_writes,
        stats.full_reads,
        stats.guest_sleeps,
        server.busy_pumps,
        server.rsp_ring_full,
        server.sleeps,
    );
    assert_eq!(stats.requests, stats.replies);
    (stats, server)
}

fn requests(default: u64) -> u64 {
    env_u64("XS_RING_STRESS_REQUESTS").unwrap_or(default)
}

fn seed(salt: u64) -> u64 {
    env_u64("XS_RING_STRESS_SEED").unwrap_or(0x5eed_7269_6e67) ^ salt
}

#[test]
fn random_requests_through_the_ring_get_exact_replies() {
    let (stats, _) = run(Config {
        requests: requests(60_000),
        seed: seed(0),
        lag: false,
        // Both rings' indices cross u32::MAX early in the run.
        start_index: u32::MAX - 100_000,
    });
    assert!(stats.events > 0 && stats.transactions > 0);
}

#[test]
fn a_lagging_server_fills_the_rings() {
    let (stats, server) = run(Config {
        requests: requests(60_000).div_ceil(4),
        seed: seed(1),
        lag: true,
        start_index: 0,
    });
    assert!(
        stats.partial_writes > 0,
        "the guest never found the request ring full"
    );
    assert!(
        server.rsp_ring_full > 0 && stats.full_reads > 0,
        "the reply ring never filled"
    );
}
