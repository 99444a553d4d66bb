//! Reading the stream back: record by record into a new store, every field checked.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use super::layout::{self as l, Dec, RecordKind};
use super::{Global, Restored, RestoredConnection, StateError, Transport};
use crate::domid::DomId;
use crate::path::{self, PathKind};
use crate::perms::{Access, Perm};
use crate::protocol::{self, Connection, Limits};
use crate::quota::QuotaName;
use crate::store::conn::Conn;
use crate::store::domain::Introduction;
use crate::store::txn::Transaction;
use crate::store::txn::state::{EntryOwned, SavedEntry, SavedOrigin, SavedTx};
use crate::store::{ConnId, Store, StoreConfig, node, watch};
use crate::wire::{HEADER_LEN, MsgType, PAYLOAD_MAX};

/// The generation every restored node, domain and transaction is stamped with (the store's
/// first): their order before the update no longer matters once stale permission entries
/// are gone (see the module docs), and everything after is newer.
const BASE: u64 = 1;

/// Longest value a node may have: a `WRITE` cannot carry more.
const VALUE_MAX: usize = PAYLOAD_MAX;
/// Most permission entries of a node: a `SET_PERMS` cannot carry more.
const PERMS_MAX: usize = PAYLOAD_MAX / 2;

/// Restores a store from a stream [`super::save`] (or C xenstored) wrote, with `config`
/// (whose quotas the stream's `GLOBAL_QUOTA_DATA` replaces, as C's restore does).
/// `connection` gives each restored connection's protocol settings (its [`protocol::Access`]
/// and [`Limits`]), from its transport and domain.
///
/// Any malformed stream is rejected with the record and offset at fault, and nothing is
/// kept: lengths that overrun, records out of order (watches or transactions of a
/// connection not yet seen, nodes whose parent is not yet known, anything after `END`),
/// dangling or duplicate ids, duplicate nodes, malformed paths, permissions or messages,
/// oversized fields.
pub fn restore(
    config: StoreConfig,
    stream: &[u8],
    mut connection: impl FnMut(&Transport, DomId) -> (protocol::Access, Limits),
) -> Result<Restored, StateError> {
    let mut r = Reader {
        stream,
        offset: 0,
        record: None,
        big: false,
        version: 0,
        store: Store::bare(config).map_err(|_| StateError {
            offset: 0,
            record: None,
            what: "the store could not be set up",
        })?,
        global: None,
        global_quota: false,
        conns: BTreeMap::new(),
        order: Vec::new(),
        txs: BTreeMap::new(),
        root_seen: false,
        specials_seen: [false; 2],
        domains_seen: BTreeSet::new(),
        chain: Vec::new(),
        chain_path: Vec::new(),
    };
    r.header()?;
    loop {
        let kind = r.next_record(&mut connection)?;
        if kind == RecordKind::End {
            break;
        }
    }
    if r.offset != stream.len() {
        return Err(StateError {
            offset: r.offset,
            record: None,
            what: "bytes after END",
        });
    }
    r.finish()
}

/// What is known of a connection while its records are read.
struct ConnState {
    id: ConnId,
    domid: DomId,
    transport: Transport,
    /// Offset of its record, for errors found at the end.
    offset: usize,
    /// Positions of its watches owed a catch-up event, among its watches in stream order.
    missed: Vec<u32>,
    connection: Option<Connection>,
    input: Vec<u8>,
}

/// A transaction being read.
struct TxState {
    offset: usize,
    saved: SavedTx,
    protected: bool,
    entries: Vec<EntryOwned>,
    seen: BTreeSet<(Box<[u8]>, bool)>,
}

struct Reader<'a> {
    stream: &'a [u8],
    /// Start of the record being read.
    offset: usize,
    record: Option<RecordKind>,
    big: bool,
    version: u32,
    store: Store,
    global: Option<Global>,
    global_quota: bool,
    conns: BTreeMap<u32, ConnState>,
    /// Connection ids in stream order.
    order: Vec<u32>,
    txs: BTreeMap<(u32, u32), TxState>,
    root_seen: bool,
    specials_seen: [bool; 2],
    domains_seen: BTreeSet<u16>,
    /// The path of the last node restored and the nodes along it: streams list nodes
    /// depth first, so a node's parent is on it.
    chain: Vec<Link>,
    chain_path: Vec<u8>,
}

/// A node on the chain, with the children read for it so far, linked when it leaves the
/// chain (one allocation for a directory's children, not one per child; see
/// [`crate::store::tree::Tree::attach_children`]). Nodes off the chain have all their
/// children linked, so lookups see them.
struct Link {
    /// Length of its path (a prefix of `chain_path`).
    len: usize,
    index: u32,
    /// Room for the header, then the children read (empty while there are none).
    pending: Vec<node::ChildRef>,
    /// Offset of the first child record out of name order (C's streams are not sorted),
    /// if any: duplicates among them are found when they are linked.
    unsorted_at: Option<usize>,
}

impl Link {
    fn new(len: usize, index: u32) -> Link {
        Link {
            len,
            index,
            pending: Vec::new(),
            unsorted_at: None,
        }
    }
}

type R<T> = Result<T, StateError>;

impl Reader<'_> {
    fn err(&self, what: &'static str) -> StateError {
        self.errf()(what)
    }

    /// [`Reader::err`] as a closure that borrows nothing (for use while the store is).
    fn errf(&self) -> impl Fn(&'static str) -> StateError + Copy + use<> {
        let (offset, record) = (self.offset, self.record);
        move |what| StateError {
            offset,
            record,
            what,
        }
    }

    fn header(&mut self) -> R<()> {
        let h = self
            .stream
            .get(..l::HEADER_LEN)
            .ok_or_else(|| self.err("stream shorter than its header"))?;
        if h.get(..8) != Some(&l::IDENT[..]) {
            return Err(self.err("not a xenstore stream"));
        }
        let mut d = Dec::new(h.get(8..).unwrap_or_default(), true);
        let version = d.u32().ok_or_else(|| self.err("header"))?;
        let flags = d.u32().ok_or_else(|| self.err("header"))?;
        if version == 0 || version > l::VERSION {
            return Err(self.err("unknown version"));
        }
        if flags & !l::FLAG_BIG_ENDIAN != 0 {
            return Err(self.err("reserved header flags set"));
        }
        self.version = version;
        self.big = flags & l::FLAG_BIG_ENDIAN != 0;
        self.offset = l::HEADER_LEN;
        Ok(())
    }

    /// Reads the record at `offset`; returns its kind.
    fn next_record(
        &mut self,
        connection: &mut impl FnMut(&Transport, DomId) -> (protocol::Access, Limits),
    ) -> R<RecordKind> {
        self.record = None;
        let head = self
            .offset
            .checked_add(l::RECORD_HEADER_LEN)
            .and_then(|end| self.stream.get(self.offset..end))
            .ok_or_else(|| self.err("stream ends without END"))?;
        let mut d = Dec::new(head, self.big);
        let code = d.u32().ok_or_else(|| self.err("record header"))?;
        let len = d.u32().ok_or_else(|| self.err("record header"))? as usize;
        let kind = RecordKind::from_code(code).ok_or_else(|| self.err("unknown record type"))?;
        self.record = Some(kind);
        let start = self.offset.saturating_add(l::RECORD_HEADER_LEN);
        let body = start
            .checked_add(len)
            .and_then(|end| self.stream.get(start..end))
            .ok_or_else(|| self.err("record longer than the stream"))?;
        // `len` counts the padding as C writes it; one that does not is padded all the same.
        let next = l::padded(len)
            .and_then(|p| start.checked_add(p))
            .filter(|&n| n <= self.stream.len())
            .ok_or_else(|| self.err("record padding past the stream"))?;
        if self
            .stream
            .get(start.saturating_add(len)..next)
            .is_some_and(|pad| pad.iter().any(|&b| b != 0))
        {
            return Err(self.err("padding not zero"));
        }
        let d = Dec::new(body, self.big);
        if kind != RecordKind::Node {
            self.close_chain()?;
        }
        match kind {
            RecordKind::End if len != 0 => return Err(self.err("END with a body")),
            RecordKind::End => {}
            RecordKind::Global => self.global(d)?,
            RecordKind::GlobalQuota => self.global_quota(d)?,
            RecordKind::Connection => self.connection(d, connection)?,
            RecordKind::Watch => self.watch(d, false)?,
            RecordKind::WatchExtended if self.version < 2 => {
                return Err(self.err("WATCH_DATA_EXTENDED in a version 1 stream"));
            }
            RecordKind::WatchExtended => self.watch(d, true)?,
            RecordKind::Transaction => self.transaction(d)?,
            RecordKind::Node => self.node(d)?,
            RecordKind::Domain => self.domain(d)?,
        }
        self.offset = next;
        Ok(kind)
    }

    fn global(&mut self, mut d: Dec<'_>) -> R<()> {
        let e = self.errf();
        if self.global.is_some() {
            return Err(e("second GLOBAL_DATA"));
        }
        let socket_fd = d.u32().ok_or_else(|| e("record too short"))? as i32;
        let evtchn_fd = d.u32().ok_or_else(|| e("record too short"))? as i32;
        self.global = Some(Global {
            socket_fd,
            evtchn_fd,
        });
        Ok(())
    }

    /// `n` quota values and their names: `(name, value)` pairs.
    fn quotas<'b>(&self, d: &mut Dec<'b>, n: usize) -> R<Vec<(&'b [u8], u32)>> {
        let e = self.errf();
        let mut values = Vec::new();
        for _ in 0..n {
            values.push(
                d.u32()
                    .ok_or_else(|| e("quota values overrun the record"))?,
            );
        }
        let mut out = Vec::with_capacity(n);
        for v in values {
            let rest = d.body.get(d.at..).unwrap_or_default();
            let nul = rest
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| e("quota name not terminated"))?;
            let name = d.take(nul).ok_or_else(|| e("quota name"))?;
            d.take(1);
            out.push((name, v));
        }
        Ok(out)
    }

    fn global_quota(&mut self, mut d: Dec<'_>) -> R<()> {
        let e = self.errf();
        if self.global_quota {
            return Err(e("second GLOBAL_QUOTA_DATA"));
        }
        self.global_quota = true;
        let n_dom = d.u16().ok_or_else(|| e("record too short"))?;
        let n_glob = d.u16().ok_or_else(|| e("record too short"))?;
        let n = usize::from(n_dom).saturating_add(usize::from(n_glob));
        for (name, value) in self.quotas(&mut d, n)? {
            // Names this store does not know have no effect, as the document says.
            match QuotaName::parse(name) {
                Some(q) if q.soft => self.store.config.memory_soft = value,
                Some(q) => self.store.config.quotas.set(q.kind, value),
                None => {}
            }
        }
        Ok(())
    }

    fn connection(
        &mut self,
        mut d: Dec<'_>,
        settings: &mut impl FnMut(&Transport, DomId) -> (protocol::Access, Limits),
    ) -> R<()> {
        let e = self.errf();
        let short = || "record too short";
        let conn_id = d.u32().ok_or_else(|| e(short()))?;
        let conn_type = d.u16().ok_or_else(|| e(short()))?;
        let fields = d.u16().ok_or_else(|| e(short()))?;
        let (mut domid, tdomid, transport) = match conn_type {
            l::CONN_RING => {
                let domid = d.u16().ok_or_else(|| e(short()))?;
                let tdomid = d.u16().ok_or_else(|| e(short()))?;
                let port = d.u32().ok_or_else(|| e(short()))?;
                (
                    DomId(domid),
                    tdomid,
                    Transport::Ring {
                        port,
                        unique_id: None,
                    },
                )
            }
            l::CONN_SOCKET => {
                let fd = d.u32().ok_or_else(|| e(short()))? as i32;
                d.u32().ok_or_else(|| e(short()))?;
                (DomId::DOM0, l::DOMID_INVALID, Transport::Socket { fd })
            }
            _ => return Err(e("unknown connection type")),
        };
        let mut transport = transport;
        let in_len = usize::from(d.u16().ok_or_else(|| e(short()))?);
        let resp_len = usize::from(d.u16().ok_or_else(|| e(short()))?);
        let out_len = d.u32().ok_or_else(|| e(short()))? as usize;
        if conn_id == 0 {
            return Err(e("connection id 0"));
        }
        if self.conns.contains_key(&conn_id) {
            return Err(e("duplicate connection id"));
        }
        let input = d
            .take(in_len)
            .ok_or_else(|| e("in-data overruns the record"))?;
        let output = d
            .take(out_len)
            .ok_or_else(|| e("out-data overruns the record"))?;
        if resp_len > out_len {
            return Err(e("out-resp-len past out-data"));
        }
        d.align().ok_or_else(|| e("record too short"))?;
        if fields & l::FIELD_UNIQUE_ID != 0 {
            let unique = d.u64().ok_or_else(|| e("unique-id missing"))?;
            if let Transport::Ring { unique_id, .. } = &mut transport {
                *unique_id = Some(unique);
            }
        }
        // This store's part (see the module docs).
        let mut flags = 0u16;
        let mut next_tx_id = 1u32;
        let mut queued = 0usize;
        let mut failed_commits = 0u8;
        let mut missed = Vec::new();
        let mut sent_prefix: &[u8] = &[];
        let mut backlog: &[u8] = &[];
        if fields & l::FIELD_XS != 0 {
            let ext_len = d.u32().ok_or_else(|| e(short()))? as usize;
            let ext = d
                .take(ext_len)
                .ok_or_else(|| e("connection state overruns the record"))?;
            let mut x = Dec::new(ext, self.big);
            let bad = || "connection state malformed";
            let own = DomId(x.u16().ok_or_else(|| e(bad()))?);
            if conn_type == l::CONN_SOCKET {
                domid = own;
            } else if own != domid {
                return Err(e("connection state names another domain"));
            }
            flags = x.u16().ok_or_else(|| e(bad()))?;
            next_tx_id = x.u32().ok_or_else(|| e(bad()))?;
            queued = x.u32().ok_or_else(|| e(bad()))? as usize;
            failed_commits = x.u8().ok_or_else(|| e(bad()))?;
            x.u8().ok_or_else(|| e(bad()))?;
            let sent_len = usize::from(x.u16().ok_or_else(|| e(bad()))?);
            let n_missed = x.u32().ok_or_else(|| e(bad()))? as usize;
            if n_missed > x.remaining() / 4 {
                return Err(e(bad()));
            }
            for _ in 0..n_missed {
                missed.push(x.u32().ok_or_else(|| e(bad()))?);
            }
            sent_prefix = x.take(sent_len).ok_or_else(|| e(bad()))?;
            if x.remaining() != 0 {
                let len = x.u32().ok_or_else(|| e(bad()))? as usize;
                backlog = x.take(len).ok_or_else(|| e(bad()))?;
                if backlog.is_empty() {
                    return Err(e(bad()));
                }
            }
            if x.remaining() != 0 || (sent_len > 0) != (resp_len > 0) {
                return Err(e(bad()));
            }
        }
        if !domid.is_real() {
            return Err(e("connection for no real domain"));
        }
        let dead = flags & l::CONN_DEAD != 0;
        // The trailing `queued` messages of out-data are events still in the store's queue.
        let (own_output, events) = split_events(output, resp_len, queued)
            .ok_or_else(|| e("out-data is not whole messages"))?;
        let store = &mut self.store;
        if !dead {
            store.ensure_domain(domid);
            if let Transport::Ring { .. } = transport
                && let Some(rec) = store.domains.get_mut(&domid)
                && rec.introduced.is_none()
            {
                // C xenstored's streams: a ring is an introduced domain. (This store's
                // say so themselves in DOMAIN_DATA, which comes later.)
                rec.introduced = Some(Introduction { gfn: 0, evtchn: 0 });
            }
            if tdomid != l::DOMID_INVALID {
                let target = DomId(tdomid);
                if !target.is_real() {
                    return Err(e("target is no real domain"));
                }
                store.ensure_domain(target);
                if let Some(rec) = store.domains.get_mut(&domid) {
                    rec.target = Some(target);
                }
            }
        }
        let mut conn = Conn::new(store.caller_for(domid));
        conn.dead = dead;
        conn.next_tx_id = next_tx_id;
        conn.failed_commits = failed_commits;
        let id = ConnId(
            store
                .conns
                .insert(conn)
                .map_err(|_| e("too many connections"))?,
        );
        if flags & l::CONN_NOTIFY != 0
            && let Some(c) = store.conns.get_id_mut(id.0)
        {
            c.notify = true;
            store.notify.push(id);
        }
        if flags & l::CONN_WAITING != 0
            && let Some(c) = store.conns.get_id_mut(id.0)
        {
            c.waiting = true;
            store.waiting.push(id);
        }
        for (path, token) in events {
            let key = store.watches.key_of(path, token);
            let charge = watch::charge_event_of(path.len(), token.len());
            let Some(c) = store.conns.get_id_mut(id.0) else {
                break;
            };
            c.events.push(path, &watch::Token::new(token), key);
            let watcher = c.caller;
            if !watcher.privileged {
                store.charge(watcher.domid, i64::try_from(charge).unwrap_or(i64::MAX));
            }
        }
        // The request being read: taken back as the connection's own if it is one, else
        // (C's delayed requests) left for the program to feed again.
        let single = match input.get(..HEADER_LEN) {
            None => true,
            Some(h) => {
                let len = u32::from_le_bytes([
                    h.get(12).copied().unwrap_or(0),
                    h.get(13).copied().unwrap_or(0),
                    h.get(14).copied().unwrap_or(0),
                    h.get(15).copied().unwrap_or(0),
                ]) as usize;
                input.len().saturating_sub(HEADER_LEN) <= len
            }
        };
        let (own_input, mut replay) = if single {
            (input, Vec::new())
        } else {
            (&[][..], input.to_vec())
        };
        replay.extend_from_slice(backlog);
        let (access, limits) = settings(&transport, domid);
        let connection = Connection::restored(
            id,
            access,
            limits,
            store,
            own_input,
            sent_prefix,
            resp_len,
            own_output,
        )
        .map_err(e)?;
        self.conns.insert(
            conn_id,
            ConnState {
                id,
                domid,
                transport,
                offset: self.offset,
                missed,
                connection: Some(connection),
                input: replay,
            },
        );
        self.order.push(conn_id);
        Ok(())
    }

    /// A NUL-terminated string of `len` bytes (the NUL included).
    fn string<'b>(&self, d: &mut Dec<'b>, len: usize, what: &'static str) -> R<&'b [u8]> {
        let e = self.errf();
        let s = d.take(len).ok_or_else(|| e(what))?;
        match s.split_last() {
            Some((0, text)) if !text.contains(&0) => Ok(text),
            _ => Err(e(what)),
        }
    }

    fn watch(&mut self, mut d: Dec<'_>, extended: bool) -> R<()> {
        let e = self.errf();
        let conn_id = d.u32().ok_or_else(|| e("record too short"))?;
        let path_len = usize::from(d.u16().ok_or_else(|| e("record too short"))?);
        let token_len = usize::from(d.u16().ok_or_else(|| e("record too short"))?);
        let depth = if extended {
            let depth = d.u16().ok_or_else(|| e("record too short"))?;
            d.u16().ok_or_else(|| e("record too short"))?;
            (depth != l::DEPTH_UNLIMITED).then_some(u32::from(depth))
        } else {
            None
        };
        let wpath = self.string(&mut d, path_len, "watch path malformed")?;
        let token = self.string(&mut d, token_len, "watch token malformed")?;
        if token.len() > PAYLOAD_MAX {
            return Err(e("watch token too long"));
        }
        let conn = self
            .conns
            .get(&conn_id)
            .ok_or_else(|| e("watch of an unknown connection"))?;
        let (id, domid) = (conn.id, conn.domid);
        let mut buf = path::PathBuffer::default();
        let (canonical, canon) = buf
            .canonicalize(wpath, domid, true)
            .map_err(|_| e("watch path malformed"))?;
        let store = &mut self.store;
        if store.watches.find(id.0, canonical, token).is_some() {
            return Err(e("duplicate watch"));
        }
        let index = store
            .watches
            .add(id.0, canonical, token, depth, canon.relative_prefix)
            .map_err(|_| e("watch path malformed"))?;
        let charge = watch::charge_watch(canonical.len(), token.len());
        if let Some(c) = store.conns.get_id_mut(id.0) {
            c.watches.push(index);
        }
        if let Some(rec) = store.domains.get_mut(&domid) {
            rec.usage.watches = rec.usage.watches.saturating_add(1);
        }
        store.charge(domid, i64::try_from(charge).unwrap_or(i64::MAX));
        Ok(())
    }

    fn transaction(&mut self, mut d: Dec<'_>) -> R<()> {
        let e = self.errf();
        let conn_id = d.u32().ok_or_else(|| e("record too short"))?;
        let tx = d.u32().ok_or_else(|| e("record too short"))?;
        // A transaction of another store's stream is taken to have asked for changes: its
        // commit is validated (C xenstored's validates every commit).
        let mut saved = SavedTx {
            wrote: true,
            ..SavedTx::default()
        };
        let mut protected = false;
        if d.remaining() >= l::TX_XS.saturating_sub(l::TX_FIXED) {
            let flags = d.u32().ok_or_else(|| e("record too short"))?;
            saved.doomed = flags & l::TX_DOOMED != 0;
            saved.wrote = flags & l::TX_WROTE != 0;
            protected = flags & l::TX_PROTECTED != 0;
            saved.created_nodes = u64::from(d.u32().ok_or_else(|| e("record too short"))?);
            saved.created_bytes = d.u64().ok_or_else(|| e("record too short"))?;
        }
        if !self.conns.contains_key(&conn_id) {
            return Err(e("transaction of an unknown connection"));
        }
        if tx == 0 {
            return Err(e("transaction id 0"));
        }
        if self.txs.contains_key(&(conn_id, tx)) {
            return Err(e("duplicate transaction"));
        }
        self.txs.insert(
            (conn_id, tx),
            TxState {
                offset: self.offset,
                saved,
                protected,
                entries: Vec::new(),
                seen: BTreeSet::new(),
            },
        );
        Ok(())
    }

    fn perms(&self, d: &mut Dec<'_>, n: usize) -> R<Vec<Perm>> {
        let e = self.errf();
        if n > PERMS_MAX {
            return Err(e("too many permissions"));
        }
        let mut perms = Vec::with_capacity(n);
        for i in 0..n {
            let letter = d.u8().ok_or_else(|| e("permissions overrun the record"))?;
            let flags = d.u8().ok_or_else(|| e("permissions overrun the record"))?;
            let domid = DomId(d.u16().ok_or_else(|| e("permissions overrun"))?);
            let access = match letter {
                b'n' => Access::empty(),
                b'r' => Access::READ,
                b'w' => Access::WRITE,
                b'b' => Access::READ | Access::WRITE,
                _ => return Err(e("unknown permission letter")),
            };
            if flags & !l::PERM_IGNORE != 0 {
                return Err(e("unknown permission flags"));
            }
            // A stale entry grants nothing: not kept (the owner's entry always is).
            if i > 0 && flags & l::PERM_IGNORE != 0 {
                continue;
            }
            perms.push(Perm::new(domid, access));
        }
        if let Some(owner) = perms.first()
            && !owner.domid.is_real()
        {
            return Err(e("node owned by no real domain"));
        }
        Ok(perms)
    }

    fn node(&mut self, mut d: Dec<'_>) -> R<()> {
        let e = self.errf();
        let short = "record too short";
        let conn_id = d.u32().ok_or_else(|| e(short))?;
        let tx = d.u32().ok_or_else(|| e(short))?;
        let path_len = usize::from(d.u16().ok_or_else(|| e(short))?);
        let value_len = usize::from(d.u16().ok_or_else(|| e(short))?);
        let access = d.u16().ok_or_else(|| e(short))?;
        let perm_n = usize::from(d.u16().ok_or_else(|| e(short))?);
        let perms = self.perms(&mut d, perm_n)?;
        // An entry not flagged IGNORE stays, also one naming a domain the stream has no
        // record of: C xenstored writes such entries with flags 0 (libxl gives a guest's
        // home its permissions before INTRODUCE; under the anchors' shim every domain
        // exists), and keeps them. This store keeps an entry only for a domain it has a
        // record of (see `entry_is_live`), so one is made, as a privileged SET_PERMS makes
        // it (at most one per domid).
        for p in perms.iter().skip(1) {
            if p.domid.is_real() {
                self.store.ensure_domain(p.domid);
            }
        }
        let path = self.string(&mut d, path_len, "node path malformed")?;
        let value = d
            .take(value_len)
            .ok_or_else(|| e("value overruns the record"))?;
        if value.len() > VALUE_MAX {
            return Err(e("value too long"));
        }
        if conn_id != 0 {
            self.close_chain()?;
            return self.tx_node(conn_id, tx, access, path, value, perms);
        }
        if perms.is_empty() {
            return Err(e("node without permissions"));
        }
        let kind = node_path(path).ok_or_else(|| e("node path malformed"))?;
        // Entries naming a domain without a record grant nothing: streams have a
        // DOMAIN_DATA for every domain a live entry names (C's too: it keeps a domain
        // structure for every domain an entry names, and writes them all).
        if kind == PathKind::Special {
            let which = match path {
                b"@introduceDomain" => 0,
                b"@releaseDomain" => 1,
                _ => return Err(e("unknown special node")),
            };
            if self.specials_seen.get(which).copied().unwrap_or(true) {
                return Err(e("duplicate node"));
            }
            if let Some(seen) = self.specials_seen.get_mut(which) {
                *seen = true;
            }
            if let Some(s) = self.store.specials.get_mut(which) {
                s.perms = perms;
                s.stamp = BASE;
            }
            return Ok(());
        }
        if path == b"/" {
            if self.root_seen {
                return Err(e("duplicate node"));
            }
            self.root_seen = true;
            self.close_chain()?;
            let store = &mut self.store;
            let root = store.tree.root;
            store.unlink_owner(root);
            let ok = store
                .tree
                .node_mut(root)
                .is_some_and(|n| n.set_perms(&perms).is_ok() && n.set_value(value).is_ok());
            store.link_owner(root);
            self.chain.push(Link::new(1, root));
            self.chain_path.clear();
            self.chain_path.push(b'/');
            return if ok { Ok(()) } else { Err(e("node malformed")) };
        }
        let parent_path = path::parent(path).ok_or_else(|| e("node path malformed"))?;
        // The parent: on the chain of the last node's ancestors (streams are depth first),
        // else looked up.
        while let Some(link) = self.chain.last() {
            if self.chain_path.get(..link.len) == Some(parent_path) {
                break;
            }
            self.pop_link()?;
        }
        if self.chain.is_empty() {
            let index = self
                .store
                .tree
                .lookup(parent_path)
                .ok_or_else(|| e("node before its parent"))?;
            self.chain.push(Link::new(parent_path.len(), index));
        }
        let offset = self.offset;
        let tree = &mut self.store.tree;
        let link = self
            .chain
            .last_mut()
            .ok_or_else(|| e("node before its parent"))?;
        let name = path::basename(path);
        let key = node::name_key(name);
        // In name order after the last child read (as this store writes them), or not.
        if let Some(last) = link.pending.get(1..).and_then(<[_]>::last) {
            let last_name = tree.node(last.index).map_or(&[][..], |n| n.name());
            match (last.key(), last_name).cmp(&(key, name)) {
                core::cmp::Ordering::Less => {}
                core::cmp::Ordering::Equal => return Err(e("duplicate node")),
                core::cmp::Ordering::Greater => {
                    link.unsorted_at.get_or_insert(offset);
                }
            }
        }
        let n = node::Node::new(name, value, &perms, link.index, BASE)
            .map_err(|_| e("node malformed"))?;
        let index = tree.nodes.insert(n).map_err(|_| e("too many nodes"))?.index;
        if link.pending.is_empty() {
            link.pending.push(node::ChildRef::default());
        }
        link.pending.push(node::ChildRef::new(key, index));
        self.store.link_owner(index);
        self.chain_path.clear();
        self.chain_path.extend_from_slice(path);
        self.chain.push(Link::new(path.len(), index));
        Ok(())
    }

    /// Takes the last node off the chain, linking the children read for it.
    fn pop_link(&mut self) -> R<()> {
        let Some(link) = self.chain.pop() else {
            return Ok(());
        };
        if link.pending.len() <= 1 {
            return Ok(());
        }
        let sorted = link.unsorted_at.is_none();
        self.store
            .tree
            .attach_children(link.index, link.pending, sorted, BASE)
            .map_err(|_| StateError {
                offset: link.unsorted_at.unwrap_or(self.offset),
                record: Some(RecordKind::Node),
                what: "duplicate node",
            })
    }

    /// Takes every node off the chain (before anything looks nodes up).
    fn close_chain(&mut self) -> R<()> {
        while !self.chain.is_empty() {
            self.pop_link()?;
        }
        Ok(())
    }

    fn tx_node(
        &mut self,
        conn_id: u32,
        tx: u32,
        access: u16,
        path: &[u8],
        value: &[u8],
        perms: Vec<Perm>,
    ) -> R<()> {
        let e = self.errf();
        if node_path(path) != Some(PathKind::Node) {
            return Err(e("transaction node path malformed"));
        }
        let exists = self.store.tree.lookup(path).is_some();
        let aspects = ((access & l::TA_ASPECTS_MASK) >> l::TA_ASPECTS_SHIFT) as u8;
        let flag = |bit: u16| access & bit != 0;
        let path: Box<[u8]> = path.into();
        let entry = if flag(l::TA_XS) {
            match (flag(l::TA_READ), flag(l::TA_WRITTEN)) {
                (true, false) => SavedEntry::Read {
                    path,
                    aspects,
                    live: flag(l::TA_LIVE),
                },
                (false, false) => SavedEntry::Deleted {
                    path,
                    event: flag(l::TA_EVENT),
                },
                (false, true) => SavedEntry::Present {
                    path,
                    value: value.to_vec(),
                    perms,
                    origin: match (access & l::TA_ORIGIN_MASK) >> l::TA_ORIGIN_SHIFT {
                        0 => SavedOrigin::Snapshot,
                        1 => SavedOrigin::Created,
                        2 => SavedOrigin::Recreated,
                        _ => SavedOrigin::Fresh,
                    },
                    value_set: flag(l::TA_VALUE_SET),
                    perms_set: flag(l::TA_PERMS_SET),
                    event: flag(l::TA_EVENT),
                    live: flag(l::TA_LIVE),
                    relied: aspects,
                },
                (true, true) => return Err(e("transaction node both read and written")),
            }
        } else {
            // Another writer's transaction node (the document's meaning only): a node read
            // conflicts with any change to it, as in C; one written replaces its value and
            // permissions at commit.
            let all = 0x01 | 0x02 | 0x04 | 0x10;
            match (flag(l::TA_READ), flag(l::TA_WRITTEN)) {
                (read, true) => SavedEntry::Present {
                    path,
                    value: value.to_vec(),
                    perms,
                    origin: if exists {
                        SavedOrigin::Snapshot
                    } else {
                        SavedOrigin::Created
                    },
                    value_set: true,
                    perms_set: true,
                    event: true,
                    live: exists,
                    relied: if read { all } else { 0x01 },
                },
                (true, false) => SavedEntry::Read {
                    path,
                    aspects: if exists { all } else { 0x08 },
                    live: exists,
                },
                (false, false) if perms.is_empty() => SavedEntry::Deleted { path, event: true },
                (false, false) => return Err(e("transaction node access unknown")),
            }
        };
        if let SavedEntry::Present { perms, .. } = &entry
            && perms.is_empty()
        {
            return Err(e("transaction node without permissions"));
        }
        let t = self.txs.get_mut(&(conn_id, tx)).ok_or(StateError {
            offset: self.offset,
            record: self.record,
            what: "node of an unknown transaction",
        })?;
        let key = (Box::<[u8]>::from(entry.path()), entry.is_overlay());
        if !t.seen.insert(key) {
            return Err(StateError {
                offset: self.offset,
                record: self.record,
                what: "duplicate transaction node",
            });
        }
        t.entries.push(entry);
        Ok(())
    }

    fn domain(&mut self, mut d: Dec<'_>) -> R<()> {
        let e = self.errf();
        let domid = d.u16().ok_or_else(|| e("record too short"))?;
        let n = usize::from(d.u16().ok_or_else(|| e("record too short"))?);
        let features = d.u32().ok_or_else(|| e("record too short"))?;
        if !DomId(domid).is_real() {
            return Err(e("no real domain"));
        }
        if !self.domains_seen.insert(domid) {
            return Err(e("second DOMAIN_DATA for a domain"));
        }
        let quotas = self.quotas(&mut d, n)?;
        let version = self.version;
        let rec = self.store.ensure_domain(DomId(domid)).ok_or(StateError {
            offset: self.offset,
            record: self.record,
            what: "domain",
        })?;
        if version > 1 {
            rec.features = features;
        }
        let (mut evtchn, mut gfn_lo, mut gfn_hi, mut target, mut flags) =
            (None, 0u32, 0u32, None, 0u32);
        for (name, value) in quotas {
            match name {
                l::Q_EVTCHN => evtchn = Some(value),
                l::Q_GFN_LO => gfn_lo = value,
                l::Q_GFN_HI => gfn_hi = value,
                l::Q_TARGET => target = Some(value),
                l::Q_FLAGS => flags = value,
                _ => match QuotaName::parse(name) {
                    Some(q) if q.soft => rec.memory_soft = Some(value),
                    Some(q) => rec.overrides.set(q.kind, Some(value)),
                    None => {}
                },
            }
        }
        if flags & l::DOM_XS != 0 {
            rec.introduced = evtchn.map(|evtchn| Introduction {
                gfn: u64::from(gfn_lo) | (u64::from(gfn_hi) << 32),
                evtchn,
            });
            rec.shutdown_reported = flags & l::DOM_SHUTDOWN_REPORTED != 0;
            let target = match target {
                Some(t) => {
                    let t = u16::try_from(t)
                        .ok()
                        .map(DomId)
                        .filter(|t| t.is_real())
                        .ok_or(StateError {
                            offset: self.offset,
                            record: self.record,
                            what: "target is no real domain",
                        })?;
                    Some(t)
                }
                None => None,
            };
            if let Some(rec) = self.store.domains.get_mut(&DomId(domid)) {
                rec.target = target;
            }
            if let Some(t) = target {
                self.store.ensure_domain(t);
            }
        }
        Ok(())
    }

    /// After `END`: the transactions, the catch-up events owed, the connections' identities
    /// (targets came with the domains), then a consistency check.
    fn finish(mut self) -> R<Restored> {
        self.record = None;
        let txs = core::mem::take(&mut self.txs);
        for ((conn_id, tx), t) in txs {
            let Some(conn) = self.conns.get(&conn_id) else {
                continue;
            };
            let (id, domid) = (conn.id, conn.domid);
            let tree = &self.store.tree;
            let transaction = Transaction::restore(t.saved, t.entries, BASE, |p| {
                tree.lookup(p).and_then(|i| tree.nodes.id_at(i))
            });
            let charged = transaction.charged();
            let doomed = transaction.saved().doomed;
            let Some(c) = self.store.conns.get_id_mut(id.0) else {
                continue;
            };
            if c.dead {
                return Err(StateError {
                    offset: t.offset,
                    record: Some(RecordKind::Transaction),
                    what: "transaction of a dead connection",
                });
            }
            c.transactions.insert(tx, transaction);
            if !doomed {
                self.store.open_txs.insert((BASE, id, tx));
            }
            if t.protected {
                self.store.protected.push((id, tx));
            }
            if let Some(rec) = self.store.domains.get_mut(&domid) {
                rec.usage.transactions = rec.usage.transactions.saturating_add(1);
            }
            self.store
                .charge(domid, i64::try_from(charged).unwrap_or(i64::MAX));
        }
        for conn in self.conns.values() {
            let Some(c) = self.store.conns.get_id_mut(conn.id.0) else {
                continue;
            };
            for &m in &conn.missed {
                let w = c.watches.get(m as usize).copied().ok_or(StateError {
                    offset: conn.offset,
                    record: Some(RecordKind::Connection),
                    what: "catch-up owed by an unknown watch",
                })?;
                if c.missed.contains(&w) {
                    return Err(StateError {
                        offset: conn.offset,
                        record: Some(RecordKind::Connection),
                        what: "catch-up owed twice",
                    });
                }
                c.missed.push_back(w);
                if let Some(watch) = self.store.watches.watches.get_mut(w) {
                    watch.missed = true;
                }
            }
        }
        // Once per domain: each refresh walks every connection.
        let domids: BTreeSet<DomId> = self.conns.values().map(|c| c.domid).collect();
        for d in domids {
            self.store.refresh_callers(d);
        }
        let soft_default = self.store.config.memory_soft;
        for (_, d) in self.store.domains.iter() {
            let soft = u64::from(d.memory_soft.unwrap_or(soft_default));
            d.soft_reported.set(soft != 0 && d.usage.memory >= soft);
        }
        self.store.generation = BASE;
        self.store.check().map_err(|what| StateError {
            offset: self.offset,
            record: Some(RecordKind::End),
            what,
        })?;
        let mut connections = Vec::with_capacity(self.order.len());
        for conn_id in &self.order {
            let Some(mut c) = self.conns.remove(conn_id) else {
                continue;
            };
            let Some(connection) = c.connection.take() else {
                continue;
            };
            connections.push(RestoredConnection {
                stream_id: *conn_id,
                id: c.id,
                domid: c.domid,
                transport: c.transport,
                connection,
                input: c.input,
            });
        }
        Ok(Restored {
            store: self.store,
            global: self.global,
            connections,
            version: self.version,
        })
    }
}

/// The kind of a node path in a stream: absolute and well formed, or special.
fn node_path(p: &[u8]) -> Option<PathKind> {
    if p.first() != Some(&b'/') && p.first() != Some(&b'@') {
        return None;
    }
    // Absolute and special paths are checked in place: nothing is written to `buf`.
    let mut buf = Vec::new();
    path::canonicalize(p, DomId::DOM0, true, &mut buf)
        .ok()
        .map(|(_, c)| c.kind)
}

/// A watch event's path and token.
type EventParts<'a> = (&'a [u8], &'a [u8]);

/// Splits out-data into the connection's own output and the `queued` watch events after
/// it (path and token of each), checking they are whole messages. `resp_len` bytes at the
/// start are the rest of a partly sent message.
fn split_events(
    output: &[u8],
    resp_len: usize,
    queued: usize,
) -> Option<(&[u8], Vec<EventParts<'_>>)> {
    let mut starts = Vec::new();
    let mut at = resp_len;
    while at < output.len() {
        let head = output.get(at..at.checked_add(HEADER_LEN)?)?;
        let len = u32::from_le_bytes(head.get(12..16)?.try_into().ok()?) as usize;
        if len > PAYLOAD_MAX {
            return None;
        }
        starts.push(at);
        at = at.checked_add(HEADER_LEN)?.checked_add(len)?;
    }
    if at != output.len() || queued > starts.len() {
        return None;
    }
    let split = starts
        .len()
        .checked_sub(queued)
        .and_then(|i| starts.get(i).copied())
        .unwrap_or(output.len());
    let (own, rest) = output.split_at_checked(split)?;
    let mut events = Vec::with_capacity(queued);
    let mut at = 0usize;
    while at < rest.len() {
        let head = rest.get(at..at.checked_add(HEADER_LEN)?)?;
        let kind = u32::from_le_bytes(head.get(0..4)?.try_into().ok()?);
        let len = u32::from_le_bytes(head.get(12..16)?.try_into().ok()?) as usize;
        if kind != MsgType::WatchEvent as u32 {
            return None;
        }
        let start = at.checked_add(HEADER_LEN)?;
        let end = start.checked_add(len)?;
        let payload = rest.get(start..end)?;
        events.push(crate::protocol::dispatch::event_parts(payload)?);
        at = end;
    }
    Some((own, events))
}
