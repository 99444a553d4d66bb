//! Writing the stream: one record at a time through the sink.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::layout::{self as l, Enc, RecordKind};
use super::{Global, SaveError, SaveOptions, SaveStats, SavedConnection, Sink, Transport};
use crate::domid::DomId;
use crate::path;
use crate::perms::{Access, Perm};
use crate::quota::QuotaName;
use crate::store::arena::Id;
use crate::store::node::ChildRef;
use crate::store::tree::Tree;
use crate::store::txn::state::{EntryRef, SavedEntry, SavedOrigin};
use crate::store::{ConnId, Store, node_charge};
use crate::wire::HEADER_LEN;

/// The record writer: a reusable buffer for the record being built, and the sink.
struct Out<'s, S: Sink> {
    enc: Enc,
    sink: &'s mut S,
    stats: SaveStats,
}

impl<S: Sink> Out<'_, S> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), SaveError<S::Error>> {
        self.sink.write(bytes).map_err(SaveError::Sink)?;
        self.stats.bytes = self.stats.bytes.saturating_add(bytes.len() as u64);
        Ok(())
    }

    /// Writes the record built in `enc`.
    fn flush(&mut self) -> Result<(), SaveError<S::Error>> {
        let mut enc = core::mem::take(&mut self.enc);
        let result = match enc.finish() {
            Some(bytes) => self.put(bytes),
            None => Err(SaveError::TooLarge("record length")),
        };
        self.stats.records = self.stats.records.saturating_add(1);
        self.enc = enc;
        result
    }
}

fn too_large<E>(what: &'static str) -> SaveError<E> {
    SaveError::TooLarge(what)
}

fn u16_of<E>(n: usize, what: &'static str) -> Result<u16, SaveError<E>> {
    u16::try_from(n).map_err(|_| too_large(what))
}

fn u32_of<E>(n: usize, what: &'static str) -> Result<u32, SaveError<E>> {
    u32::try_from(n).map_err(|_| too_large(what))
}

/// A permission specifier's access letter.
fn letter(access: Access) -> u8 {
    Perm::new(DomId::DOM0, access).letter()
}

/// Writes the store's state to `sink` (see the module docs): first rebasing every open
/// transaction to the present (which may doom some) and dropping permission entries that
/// no longer name their domain, then the records. `conns` describes the store's connections
/// as the program knows them; a store connection not listed is written as a socket without
/// a descriptor and without protocol state (an in-process client).
///
/// Nothing but the record being written is copied: memory stays that of the largest node,
/// or of a connection's pending data header.
pub fn save<S: Sink>(
    store: &mut Store,
    global: Global,
    conns: &[SavedConnection<'_>],
    options: SaveOptions,
    sink: &mut S,
) -> Result<SaveStats, SaveError<S::Error>> {
    store.prepare_save();
    let mut out = Out {
        enc: Enc::default(),
        sink,
        stats: SaveStats::default(),
    };
    let mut header = [0u8; l::HEADER_LEN];
    header[..8].copy_from_slice(l::IDENT);
    header[8..12].copy_from_slice(&l::VERSION.to_be_bytes());
    // Flags 0: little-endian records, as written below.
    out.put(&header)?;

    // GLOBAL_DATA.
    out.enc.start(RecordKind::Global);
    out.enc.u32(global.socket_fd as u32);
    out.enc.u32(global.evtchn_fd as u32);
    out.flush()?;

    // GLOBAL_QUOTA_DATA: every quota under C 4.22's names.
    let names: Vec<QuotaName> = QuotaName::all().collect();
    out.enc.start(RecordKind::GlobalQuota);
    out.enc.u16(u16_of(names.len(), "quota count")?);
    out.enc.u16(0);
    for name in &names {
        out.enc.u32(if name.soft {
            store.config.memory_soft
        } else {
            store.config.quotas.get(name.kind)
        });
    }
    for name in &names {
        push_name(&mut out.enc, *name);
    }
    out.flush()?;

    // Connections, each with its watches and transactions.
    let described: BTreeMap<ConnId, &SavedConnection<'_>> =
        conns.iter().map(|c| (c.id, c)).collect();
    let ids: Vec<ConnId> = store
        .conns
        .iter()
        .filter_map(|(i, _)| store.conns.id_at(i).map(ConnId))
        .collect();
    let mut stream_ids: Vec<(ConnId, u32)> = Vec::with_capacity(ids.len());
    for (n, &id) in ids.iter().enumerate() {
        let stream_id = u32_of(n.saturating_add(1), "connection count")?;
        stream_ids.push((id, stream_id));
        let saved = described.get(&id).copied();
        write_connection(store, &mut out, id, stream_id, saved)?;
        write_watches(store, &mut out, id, stream_id)?;
        if !options.omit_transactions {
            write_transactions(store, &mut out, id, stream_id)?;
        }
    }

    // The tree, parents first, then the special nodes.
    write_tree(store, &mut out)?;
    for special in &store.specials {
        let perms = store.sanitize_perms(special.perms.iter().copied(), special.stamp);
        node_record(&mut out.enc, 0, 0, 0, special.name, b"", &perms)?;
        out.flush()?;
    }

    // The transactions' nodes.
    if !options.omit_transactions {
        for &(id, stream_id) in &stream_ids {
            let Some(c) = store.conns.get_id(id.0) else {
                continue;
            };
            let nodes = &store.tree.nodes;
            for (&tx, t) in &c.transactions {
                for entry in t.entries(|id| nodes.get_id(id).is_some()) {
                    tx_node_record(&mut out.enc, stream_id, tx, &entry)?;
                    out.flush()?;
                }
            }
        }
    }

    // Domains.
    for (domid, d) in store.domains.iter() {
        let mut quotas: Vec<(&[u8], u32, Option<QuotaName>)> = Vec::new();
        for name in &names {
            let value = if name.soft {
                d.memory_soft
            } else {
                d.overrides.get(name.kind)
            };
            if let Some(v) = value {
                quotas.push((b"", v, Some(*name)));
            }
        }
        if let Some(intro) = d.introduced {
            quotas.push((l::Q_EVTCHN, intro.evtchn, None));
            quotas.push((l::Q_GFN_LO, intro.gfn as u32, None));
            quotas.push((l::Q_GFN_HI, (intro.gfn >> 32) as u32, None));
        }
        if let Some(t) = d.target {
            quotas.push((l::Q_TARGET, u32::from(t.0), None));
        }
        let mut flags = l::DOM_XS;
        if d.shutdown_reported {
            flags |= l::DOM_SHUTDOWN_REPORTED;
        }
        quotas.push((l::Q_FLAGS, flags, None));
        out.enc.start(RecordKind::Domain);
        out.enc.u16(domid.0);
        out.enc.u16(u16_of(quotas.len(), "quota count")?);
        out.enc.u32(d.features);
        for (_, v, _) in &quotas {
            out.enc.u32(*v);
        }
        for (raw, _, name) in &quotas {
            match name {
                Some(name) => push_name(&mut out.enc, *name),
                None => {
                    out.enc.bytes(raw);
                    out.enc.u8(0);
                }
            }
        }
        out.flush()?;
    }

    out.enc.start(RecordKind::End);
    out.flush()?;
    Ok(out.stats)
}

/// A quota name, NUL-terminated.
fn push_name(enc: &mut Enc, name: QuotaName) {
    if name.soft {
        enc.bytes(b"soft-");
    }
    enc.bytes(name.kind.name().as_bytes());
    enc.u8(0);
}

fn write_connection<S: Sink>(
    store: &Store,
    out: &mut Out<'_, S>,
    id: ConnId,
    stream_id: u32,
    saved: Option<&SavedConnection<'_>>,
) -> Result<(), SaveError<S::Error>> {
    let Some(c) = store.conns.get_id(id.0) else {
        return Ok(());
    };
    let transport = saved.map_or(Transport::Socket { fd: -1 }, |s| s.transport);
    let parts = saved.and_then(|s| s.protocol).map(|p| p.parts());
    let input_len = parts.map_or(0, |p| {
        p.input_header.len().saturating_add(p.input_payload.len())
    });
    let events_len = c
        .events
        .iter()
        .map(|e| {
            HEADER_LEN
                .saturating_add(e.path.len())
                .saturating_add(e.token.len())
                .saturating_add(2)
        })
        .fold(0usize, usize::saturating_add);
    let unsent_len = parts.map_or(0, |p| p.unsent.len());
    let out_len = unsent_len.saturating_add(events_len);
    let partial_len = parts.map_or(0, |p| p.partial_len);
    let sent_prefix = parts.map_or(&[][..], |p| p.sent_prefix);

    let e = &mut out.enc;
    e.start(RecordKind::Connection);
    e.u32(stream_id);
    let mut fields = l::FIELD_XS;
    match transport {
        Transport::Ring { port, unique_id } => {
            e.u16(l::CONN_RING);
            if unique_id.is_some() {
                fields |= l::FIELD_UNIQUE_ID;
            }
            e.u16(fields);
            e.u16(c.domid().0);
            let target = store.domains.get(&c.domid()).and_then(|d| d.target);
            e.u16(target.map_or(l::DOMID_INVALID, |t| t.0));
            e.u32(port);
        }
        Transport::Socket { fd } => {
            e.u16(l::CONN_SOCKET);
            e.u16(fields);
            e.u32(fd as u32);
            e.u32(0);
        }
    }
    e.u16(u16_of(input_len, "in-data-len")?);
    e.u16(u16_of(partial_len, "out-resp-len")?);
    e.u32(u32_of(out_len, "out-data-len")?);
    // The record's length, computed before its data is streamed out.
    let data_end = l::padded(
        l::RECORD_HEADER_LEN
            .saturating_add(l::CONN_FIXED)
            .saturating_add(input_len)
            .saturating_add(out_len),
    )
    .ok_or_else(|| too_large("connection data"))?;
    let missed: Vec<u32> = c
        .missed
        .iter()
        .filter_map(|w| c.watches.iter().position(|x| x == w))
        .map(|p| p as u32)
        .collect();
    let mut tail = Enc::default();
    if let Transport::Ring {
        unique_id: Some(u), ..
    } = transport
    {
        tail.u64(u);
    }
    let ext_start = tail.buf.len();
    tail.u32(0);
    tail.u16(c.domid().0);
    let mut flags = 0u16;
    if c.dead {
        flags |= l::CONN_DEAD;
    }
    if c.notify {
        flags |= l::CONN_NOTIFY;
    }
    if c.waiting {
        flags |= l::CONN_WAITING;
    }
    tail.u16(flags);
    tail.u32(c.next_tx_id);
    tail.u32(u32_of(c.events.len(), "queued events")?);
    tail.u8(c.failed_commits);
    tail.u8(0);
    tail.u16(u16_of(sent_prefix.len(), "sent bytes")?);
    tail.u32(u32_of(missed.len(), "missed watches")?);
    for m in &missed {
        tail.u32(*m);
    }
    tail.bytes(sent_prefix);
    // Input the program received after the connection's own and has not fed it yet (its
    // backlog): only written when there is some, so that streams without stay as before.
    let backlog = saved.map_or(&[][..], |s| s.input);
    if !backlog.is_empty() {
        tail.u32(u32_of(backlog.len(), "backlog")?);
        tail.bytes(backlog);
    }
    let ext_len = u32_of(
        tail.buf.len().saturating_sub(ext_start).saturating_sub(4),
        "connection state",
    )?;
    if let Some(slot) = tail.buf.get_mut(ext_start..ext_start.saturating_add(4)) {
        slot.copy_from_slice(&ext_len.to_le_bytes());
    }
    tail.pad();
    let total = data_end
        .saturating_add(tail.buf.len())
        .saturating_sub(l::RECORD_HEADER_LEN);
    let len = u32_of(total, "record length")?;
    if let Some(slot) = out.enc.buf.get_mut(4..8) {
        slot.copy_from_slice(&len.to_le_bytes());
    }
    let head = core::mem::take(&mut out.enc.buf);
    out.put(&head)?;
    out.enc.buf = head;
    let mut written = l::RECORD_HEADER_LEN.saturating_add(l::CONN_FIXED);
    if let Some(p) = parts {
        out.put(p.input_header)?;
        out.put(p.input_payload)?;
        out.put(p.unsent)?;
        written = written.saturating_add(input_len).saturating_add(unsent_len);
    }
    let mut event = Vec::new();
    for ev in c.events.iter() {
        event.clear();
        crate::protocol::dispatch::push_event(&mut event, &ev.path, &ev.token);
        out.put(&event)?;
        written = written.saturating_add(event.len());
    }
    let pad = data_end.saturating_sub(written);
    out.put([0u8; 8].get(..pad.min(8)).unwrap_or_default())?;
    out.put(&tail.buf)?;
    out.stats.records = out.stats.records.saturating_add(1);
    Ok(())
}

fn write_watches<S: Sink>(
    store: &Store,
    out: &mut Out<'_, S>,
    id: ConnId,
    stream_id: u32,
) -> Result<(), SaveError<S::Error>> {
    let Some(c) = store.conns.get_id(id.0) else {
        return Ok(());
    };
    for &w in &c.watches {
        let (Some(watch), Some(path)) = (store.watches.watches.get(w), store.watches.path_of(w))
        else {
            continue;
        };
        // The path as the client gave it: relative watches relative.
        let wpath = path.get(store.watches.relative_prefix(w)..).unwrap_or(path);
        let e = &mut out.enc;
        match watch.depth {
            None => {
                e.start(RecordKind::Watch);
                e.u32(stream_id);
                e.u16(u16_of(wpath.len().saturating_add(1), "wpath-len")?);
                e.u16(u16_of(watch.token.len().saturating_add(1), "token-len")?);
            }
            Some(depth) => {
                e.start(RecordKind::WatchExtended);
                e.u32(stream_id);
                e.u16(u16_of(wpath.len().saturating_add(1), "wpath-len")?);
                e.u16(u16_of(watch.token.len().saturating_add(1), "token-len")?);
                // No path has 0xffff levels (3072 bytes at most): a larger depth is as good
                // as none, and keeps its meaning.
                e.u16(u16::try_from(depth).unwrap_or(u16::MAX).min(0xfffe));
                e.u16(0);
            }
        }
        e.bytes(wpath);
        e.u8(0);
        e.bytes(&watch.token);
        e.u8(0);
        out.flush()?;
    }
    Ok(())
}

fn write_transactions<S: Sink>(
    store: &Store,
    out: &mut Out<'_, S>,
    id: ConnId,
    stream_id: u32,
) -> Result<(), SaveError<S::Error>> {
    let Some(c) = store.conns.get_id(id.0) else {
        return Ok(());
    };
    for (&tx, t) in &c.transactions {
        let saved = t.saved();
        let mut flags = 0u32;
        if saved.doomed {
            flags |= l::TX_DOOMED;
        }
        if saved.wrote {
            flags |= l::TX_WROTE;
        }
        if store.protected.contains(&(id, tx)) {
            flags |= l::TX_PROTECTED;
        }
        let e = &mut out.enc;
        e.start(RecordKind::Transaction);
        e.u32(stream_id);
        e.u32(tx);
        e.u32(flags);
        e.u32(u32::try_from(saved.created_nodes).unwrap_or(u32::MAX));
        e.u64(saved.created_bytes);
        out.flush()?;
    }
    Ok(())
}

/// Builds a `NODE_DATA` record.
fn node_record<E>(
    enc: &mut Enc,
    conn: u32,
    tx: u32,
    access: u16,
    path: &[u8],
    value: &[u8],
    perms: &[Perm],
) -> Result<(), SaveError<E>> {
    enc.start(RecordKind::Node);
    enc.u32(conn);
    enc.u32(tx);
    enc.u16(u16_of(path.len().saturating_add(1), "path-len")?);
    enc.u16(u16_of(value.len(), "value-len")?);
    enc.u16(access);
    enc.u16(u16_of(perms.len(), "perm-count")?);
    for p in perms {
        enc.u8(letter(p.access));
        enc.u8(0);
        enc.u16(p.domid.0);
    }
    enc.bytes(path);
    enc.u8(0);
    enc.bytes(value);
    Ok(())
}

fn tx_node_record<E>(
    enc: &mut Enc,
    conn: u32,
    tx: u32,
    entry: &EntryRef<'_>,
) -> Result<(), SaveError<E>> {
    let aspects = |bits: u8| (u16::from(bits) << l::TA_ASPECTS_SHIFT) & l::TA_ASPECTS_MASK;
    match *entry {
        SavedEntry::Read {
            path,
            aspects: a,
            live,
        } => {
            let mut access = l::TA_READ | l::TA_XS | aspects(a);
            if live {
                access |= l::TA_LIVE;
            }
            node_record(enc, conn, tx, access, path, b"", &[])
        }
        SavedEntry::Deleted { path, event } => {
            let mut access = l::TA_XS;
            if event {
                access |= l::TA_EVENT;
            }
            node_record(enc, conn, tx, access, path, b"", &[])
        }
        SavedEntry::Present {
            path,
            value,
            perms,
            origin,
            value_set,
            perms_set,
            event,
            live,
            relied,
        } => {
            let origin = match origin {
                SavedOrigin::Snapshot => 0u16,
                SavedOrigin::Created => 1,
                SavedOrigin::Recreated => 2,
                SavedOrigin::Fresh => 3,
            };
            let mut access = l::TA_WRITTEN
                | l::TA_XS
                | aspects(relied)
                | ((origin << l::TA_ORIGIN_SHIFT) & l::TA_ORIGIN_MASK);
            for (set, bit) in [
                (event, l::TA_EVENT),
                (live, l::TA_LIVE),
                (value_set, l::TA_VALUE_SET),
                (perms_set, l::TA_PERMS_SET),
            ] {
                if set {
                    access |= bit;
                }
            }
            node_record(enc, conn, tx, access, path, value, perms)
        }
    }
}

/// Children whose nodes [`warm`] loads at once.
const WARM_AHEAD: usize = 32;

/// Loads the nodes of the first [`WARM_AHEAD`] of `children` and the first byte of their
/// names, so that the cache misses of a directory's children overlap instead of coming one
/// after another as the walk reaches each child (a long-running daemon's nodes lie scattered
/// in memory: the walk is bound by memory latency, not by the work per record). Plain
/// loads, independent of each other, which an out-of-order CPU runs in parallel.
fn warm(tree: &Tree, children: &[ChildRef]) {
    let mut sum = 0u8;
    for c in children.iter().take(WARM_AHEAD) {
        if let Some(n) = tree.node(c.index) {
            sum = sum.wrapping_add(n.name().first().copied().unwrap_or(0));
        }
    }
    core::hint::black_box(sum);
}

/// The live tree, parents before children: a depth-first walk in name order with an
/// explicit stack (no recursion: trees can be deep), building each path from its parent's.
fn write_tree<S: Sink>(store: &Store, out: &mut Out<'_, S>) -> Result<(), SaveError<S::Error>> {
    let tree = &store.tree;
    let mut node_path: Vec<u8> = alloc::vec![b'/'];
    // (node, next child to visit, length of its path)
    let mut stack: Vec<(u32, usize, usize)> = alloc::vec![(tree.root, 0, 1)];
    let mut perms: Vec<Perm> = Vec::new();
    if let Some(root) = tree.node(tree.root) {
        perms.clear();
        perms.extend(root.perms());
        node_record(&mut out.enc, 0, 0, 0, b"/", root.value(), &perms)?;
        out.flush()?;
    }
    while let Some(&mut (node, ref mut next, len)) = stack.last_mut() {
        let child = tree
            .node(node)
            .and_then(|n| n.children().get(*next))
            .map(|c| c.index);
        let Some(child) = child else {
            stack.pop();
            continue;
        };
        if *next % WARM_AHEAD == 0
            && let Some(n) = tree.node(node)
        {
            warm(tree, n.children().get(*next..).unwrap_or_default());
        }
        *next = next.saturating_add(1);
        let Some(n) = tree.node(child) else {
            continue;
        };
        node_path.truncate(len);
        path::push_segment(&mut node_path, n.name());
        perms.clear();
        perms.extend(n.perms());
        node_record(&mut out.enc, 0, 0, 0, &node_path, n.value(), &perms)?;
        out.flush()?;
        stack.push((child, 0, node_path.len()));
    }
    Ok(())
}

/// A transaction node's path and its permissions without stale entries.
type PermFix = (Vec<u8>, Vec<Perm>);

impl Store {
    /// Brings the store to the state the stream describes (see the module docs): every
    /// open transaction rebased to the present (or doomed), so that no history is needed,
    /// and permission entries that no longer name their domain dropped from nodes,
    /// transactions' nodes and special nodes (they grant nothing and are not shown; only
    /// their memory charge goes).
    fn prepare_save(&mut self) {
        self.history_over = true;
        self.settle_history();
        self.prune_history();
        // Nodes.
        let stale: Vec<u32> = self
            .tree
            .nodes
            .iter()
            .filter(|(_, n)| {
                n.perm_count() > 1
                    && n.perms()
                        .skip(1)
                        .any(|p| !self.entry_is_live(p.domid, n.data_gen))
            })
            .map(|(i, _)| i)
            .collect();
        for index in stale {
            let Some(n) = self.tree.node(index) else {
                continue;
            };
            let perms = self.sanitize_perms(n.perms(), n.data_gen);
            let (owner, before) = (
                n.owner(),
                node_charge(n.name().len(), n.value().len(), n.perm_count()),
            );
            let after = node_charge(n.name().len(), n.value().len(), perms.len());
            if let Some(n) = self.tree.node_mut(index)
                && n.set_perms(&perms).is_ok()
            {
                let change = i64::try_from(after)
                    .unwrap_or(i64::MAX)
                    .saturating_sub(i64::try_from(before).unwrap_or(i64::MAX));
                self.charge(owner, change);
            }
        }
        // Special nodes.
        let specials: Vec<Vec<Perm>> = self
            .specials
            .iter()
            .map(|s| self.sanitize_perms(s.perms.iter().copied(), s.stamp))
            .collect();
        for (s, perms) in self.specials.iter_mut().zip(specials) {
            s.perms = perms;
        }
        // Transactions' nodes.
        let ids: Vec<Id> = self
            .conns
            .iter()
            .filter_map(|(i, _)| self.conns.id_at(i))
            .collect();
        for id in ids {
            let Some(c) = self.conns.get_id(id) else {
                continue;
            };
            let domid = c.domid();
            let mut changes: Vec<(u32, Vec<PermFix>)> = Vec::new();
            for (&tx, t) in &c.transactions {
                let fixes: Vec<PermFix> = t
                    .overlay_perms()
                    .filter(|(_, perms, stamp)| {
                        perms
                            .iter()
                            .skip(1)
                            .any(|p| !self.entry_is_live(p.domid, *stamp))
                    })
                    .map(|(path, perms, stamp)| {
                        (
                            path.to_vec(),
                            self.sanitize_perms(perms.iter().copied(), stamp),
                        )
                    })
                    .collect();
                if !fixes.is_empty() {
                    changes.push((tx, fixes));
                }
            }
            let mut total = 0i64;
            if let Some(c) = self.conns.get_id_mut(id) {
                for (tx, fixes) in changes {
                    if let Some(t) = c.transactions.get_mut(&tx) {
                        total = total.saturating_add(t.replace_perms(fixes));
                    }
                }
            }
            self.charge(domid, total);
        }
    }
}
