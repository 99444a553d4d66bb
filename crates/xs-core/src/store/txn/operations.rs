//! The node operations inside a transaction: the same requests as `ops.rs` on the live
//! tree, run against the transaction's view and written to its overlay.

use alloc::boxed::Box;
use alloc::collections::BTreeSet;
use alloc::vec::Vec;
use core::ops::Bound;

use super::{Aspects, Origin, Transaction, TxEntry, TxNode};
use crate::error::{XsError, XsResult};
use crate::path;
use crate::perms::Perm;
use crate::quota::QuotaKind;
use crate::store::access::{Caller, Rights};
use crate::store::ops::WriteKind;
use crate::store::{Store, node_charge};

/// The `(start, end)` byte spans of the segments of `path` after its first `from` bytes.
fn segment_spans(path: &[u8], from: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut i = from;
    core::iter::from_fn(move || {
        while path.get(i) == Some(&b'/') {
            i = i.saturating_add(1);
        }
        if i >= path.len() {
            return None;
        }
        let start = i;
        let len = path
            .get(start..)
            .and_then(|rest| rest.iter().position(|&b| b == b'/'))
            .unwrap_or(path.len().saturating_sub(start));
        i = start.saturating_add(len);
        Some((start, i))
    })
}

/// The overlay keys strictly below `dir`, as a range.
fn below(dir: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut start = dir.to_vec();
    if dir != b"/" {
        start.push(b'/');
    }
    let mut end = start.clone();
    if let Some(last) = end.last_mut() {
        *last = b'/'.saturating_add(1);
    }
    (start, end)
}

impl Store {
    // ----- operations ----------------------------------------------------------------------

    pub(crate) fn tx_read(
        &mut self,
        t: &mut Transaction,
        caller: &Caller,
        path: &[u8],
        out: &mut Vec<u8>,
    ) -> XsResult<()> {
        let r = self.tx_checked(t, caller, path, Rights::READ)?;
        if let Some(info) = self.info(t, path, r.nearest) {
            out.extend_from_slice(info.value);
        }
        self.note(t, caller, path, r.nearest, Aspects::VALUE)
    }

    pub(crate) fn tx_get_perms(
        &mut self,
        t: &mut Transaction,
        caller: &Caller,
        path: &[u8],
    ) -> XsResult<Vec<Perm>> {
        let r = self.tx_checked(t, caller, path, Rights::READ)?;
        let perms = self
            .info(t, path, r.nearest)
            .map(|i| self.sanitize_perms(i.perms.into_iter(), i.stamp))
            .ok_or(XsError::Io)?;
        self.note(t, caller, path, r.nearest, Aspects::PERMS)?;
        Ok(perms)
    }

    pub(crate) fn tx_write(
        &mut self,
        t: &mut Transaction,
        caller: &Caller,
        path: &[u8],
        kind: WriteKind<'_>,
    ) -> XsResult<()> {
        let r = self.resolve(t, path);
        let nearest_path = path.get(..r.nearest_len).unwrap_or(path);
        let (rights, perms, stamp, child_bytes) = {
            let info = self.info(t, nearest_path, r.nearest).ok_or(XsError::Io)?;
            let rights = self.info_rights(caller, &info);
            (rights, info.perms, info.stamp, info.child_name_bytes)
        };
        if !rights.contains(Rights::WRITE) {
            if !r.exists {
                self.note_missing(t, caller, path, &r)?;
            } else {
                self.note(t, caller, path, r.nearest, Aspects::PERMS)?;
            }
            return Err(XsError::Acces);
        }
        // What the outcome relies on about the node written to: that it is still there (run
        // at commit, a `WRITE` would create it again, a `MKDIR` would create it), and for an
        // unprivileged caller the permissions checked. Not its value, nor (for a privileged
        // caller) its permissions: a blind write commits after whatever changed them
        // meanwhile, and overwrites the value. C xenstored takes any change to the node since
        // the transaction first accessed it for a conflict. A write to an existing node
        // records this in the `Snapshot` overlay entry it puts, which is checked at commit
        // as a read would be (and keeps it if it goes, `Transaction::put`).
        let checked = if caller.privileged {
            Aspects::EXISTS
        } else {
            Aspects::PERMS
        };
        let value = match kind {
            WriteKind::Value(v) => v,
            WriteKind::Mkdir if r.exists => return self.note(t, caller, path, r.nearest, checked),
            WriteKind::Mkdir => b"",
        };
        if r.exists {
            let size = value.len().saturating_add(child_bytes);
            self.check_quota(caller, QuotaKind::NodeSize, size as u64)?;
            let now = self.next_gen();
            let node = match t.present(path) {
                Some(n) => {
                    let mut node = TxNode {
                        value: value.to_vec(),
                        perms: n.perms.clone(),
                        stamp: n.stamp,
                        origin: n.origin,
                        value_set: true,
                        perms_set: n.perms_set,
                        event: true,
                        live: n.live,
                        relied: n.relied,
                    };
                    node.rely(checked);
                    node
                }
                None => TxNode {
                    value: value.to_vec(),
                    perms,
                    stamp,
                    origin: Origin::Snapshot,
                    value_set: true,
                    perms_set: false,
                    event: true,
                    live: self.src_id(t, path, r.nearest),
                    relied: checked | Aspects::EXISTS,
                },
            };
            self.tx_put(t, caller, path, TxEntry::Present(node))?;
            t.last_change = now;
            return Ok(());
        }
        // The nodes created inherit the permissions of the nearest existing one (C xenstored
        // takes any change to that node, which it rewrites with the new child, for a
        // conflict; here only its permissions and its existence matter, the children
        // merge).
        self.note(t, caller, nearest_path, r.nearest, Aspects::PERMS)?;
        // Create the missing nodes below the nearest existing one.
        let rest = path.get(r.nearest_len..).unwrap_or_default();
        let count = path::segments(rest).count() as u64;
        let usage = self.usage_of(caller.domid);
        self.check_quota(
            caller,
            QuotaKind::Nodes,
            usage
                .nodes
                .saturating_add(t.created_nodes)
                .saturating_add(count),
        )?;
        self.check_quota(caller, QuotaKind::NodeSize, value.len() as u64)?;
        self.check_quota(
            caller,
            QuotaKind::TransactionNodes,
            t.accessed().saturating_add(count),
        )?;
        let mut perms = self.sanitize_perms(perms.into_iter(), stamp);
        if !caller.privileged
            && let Some(owner) = perms.first_mut()
        {
            owner.domid = caller.domid;
        }
        let below_fresh = matches!(r.nearest_origin, Some(Origin::Recreated | Origin::Fresh));
        let now = self.next_gen();
        let mut bytes = 0u64;
        let mut chain_origin: Option<Origin> = None;
        for (seg_start, seg_end) in segment_spans(path, r.nearest_len) {
            let prefix = path.get(..seg_end).unwrap_or(path);
            let seg_len = seg_end.saturating_sub(seg_start);
            let was_deleted = matches!(t.overlay.get(prefix), Some(TxEntry::Deleted { .. }));
            let origin = match chain_origin {
                None if was_deleted => Origin::Recreated,
                None if below_fresh => Origin::Fresh,
                None => Origin::Created,
                Some(Origin::Created) => Origin::Created,
                Some(_) => Origin::Fresh,
            };
            chain_origin = Some(origin);
            let last = seg_end >= path.len();
            let node = TxNode {
                value: if last { value.to_vec() } else { Vec::new() },
                perms: perms.clone(),
                stamp: now,
                origin,
                value_set: last && matches!(kind, WriteKind::Value(_)),
                perms_set: false,
                event: last || was_deleted,
                live: None,
                relied: Aspects::empty(),
            };
            bytes = bytes.saturating_add(node_charge(seg_len, node.value.len(), perms.len()));
            self.tx_put(t, caller, prefix, TxEntry::Present(node))?;
        }
        if !caller.privileged {
            t.created_nodes = t.created_nodes.saturating_add(count);
            t.created_bytes = t.created_bytes.saturating_add(bytes);
        }
        t.last_change = now;
        Ok(())
    }

    /// Puts an overlay entry, charging its memory to the caller (within an unprivileged
    /// caller's quotas).
    fn tx_put(
        &mut self,
        t: &mut Transaction,
        caller: &Caller,
        path: &[u8],
        entry: TxEntry,
    ) -> XsResult<()> {
        let old_charge = t.overlay.get(path).map(|e| e.charge(path.len()));
        if old_charge.is_none() {
            self.check_quota(
                caller,
                QuotaKind::TransactionNodes,
                t.accessed().saturating_add(1),
            )?;
        }
        let growth = entry
            .charge(path.len())
            .saturating_sub(old_charge.unwrap_or(0));
        self.check_memory(caller, growth)?;
        let change = t.put(path, entry);
        self.tx_charge(t, caller.domid, change);
        Ok(())
    }

    pub(crate) fn tx_rm(
        &mut self,
        t: &mut Transaction,
        caller: &Caller,
        path: &[u8],
    ) -> XsResult<()> {
        let r = match self.tx_checked(t, caller, path, Rights::WRITE) {
            Ok(r) => r,
            Err(XsError::NoEnt) => {
                // Fine if the parent exists (C xenstored), ENOENT if it is missing too.
                let r = self.resolve(t, path);
                let parent = path::parent(path).ok_or(XsError::NoEnt)?;
                if r.nearest_len == parent.len() {
                    return self.note(t, caller, parent, r.nearest, Aspects::EXISTS);
                }
                if r.missing_from_snapshot.is_some() {
                    self.note_path(t, caller, parent, Aspects::ABSENT)?;
                }
                return Err(XsError::NoEnt);
            }
            Err(e) => return Err(e),
        };
        if path == b"/" {
            return Err(XsError::Inval);
        }
        // Run at commit, the removal must succeed as it did here: the node must still be
        // there (a missing one's answer depends on its parent). Its value, permissions (for
        // a privileged caller) and children do not matter: whatever they are, they go.
        self.note(t, caller, path, r.nearest, Aspects::EXISTS)?;
        let (start, end) = below(path);
        let doomed_keys: Vec<Box<[u8]>> = t
            .overlay
            .range::<[u8], _>((
                Bound::Included(start.as_slice()),
                Bound::Excluded(end.as_slice()),
            ))
            .map(|(k, _)| k.clone())
            .collect();
        // Nodes the transaction created go again. Had another created one of them
        // meanwhile, run at commit the transaction's creation would merge with that one, and
        // what it saw of its own (value, permissions, those inherited below) would not hold:
        // each such node must still be missing at commit (those below another one going too
        // are, if it is).
        let created = |k: &[u8]| {
            t.overlay
                .get(k)
                .is_some_and(|e| matches!(e, TxEntry::Present(n) if n.origin == Origin::Created))
        };
        let created_tops: Vec<Box<[u8]>> = core::iter::once(path)
            .chain(doomed_keys.iter().map(|k| &**k))
            .filter(|&k| created(k) && (k == path || !path::parent(k).is_some_and(created)))
            .map(Box::from)
            .collect();
        for k in &created_tops {
            self.note_path(t, caller, k, Aspects::ABSENT)?;
        }
        let mut change = 0i64;
        for k in doomed_keys {
            change = change.saturating_add(t.take(&k));
        }
        // Even a node the transaction created itself stays deleted: if another creates it
        // meanwhile, the commit (ordered after that creation) must remove it.
        change = change.saturating_add(t.put(path, TxEntry::Deleted { event: true }));
        self.tx_charge(t, caller.domid, change);
        t.last_change = self.next_gen();
        Ok(())
    }

    /// Appends the children of `path` in the view to `out`; returns the gencnt to report.
    pub(crate) fn tx_directory(
        &mut self,
        t: &mut Transaction,
        caller: &Caller,
        path: &[u8],
        out: &mut Vec<u8>,
    ) -> XsResult<u64> {
        let r = self.tx_checked(t, caller, path, Rights::READ)?;
        let at = t.view_at();
        let hides = r.nearest_origin.is_some_and(|o| o != Origin::Snapshot);
        let mut gencnt = t.last_change;
        {
            let mut names: BTreeSet<&[u8]> = BTreeSet::new();
            if !hides {
                if let Some(live) = self.tree.lookup(path)
                    && let Some(node) = self.tree.node(live)
                {
                    gencnt = gencnt.max(node.gencnt());
                    let mut child_path = path.to_vec();
                    for c in node.children() {
                        let Some(child) = self.tree.node(c.index) else {
                            continue;
                        };
                        let visible = child.data_gen <= at || {
                            path::push_segment(&mut child_path, child.name());
                            let v = self.history.version_at(&child_path, at).is_some();
                            path::pop_segment(&mut child_path);
                            v
                        };
                        if visible {
                            names.insert(child.name());
                        }
                    }
                }
                if !self.history.is_empty() {
                    names.extend(self.history.children_at(path, at).map(|(n, _)| n));
                }
            }
            let (start, end) = below(path);
            let prefix_len = start.len();
            for (key, entry) in t.overlay.range::<[u8], _>((
                Bound::Included(start.as_slice()),
                Bound::Excluded(end.as_slice()),
            )) {
                let Some(name) = key.get(prefix_len..) else {
                    continue;
                };
                // The range starts at the directory itself when it is `/`.
                if name.is_empty() || name.contains(&b'/') {
                    continue;
                }
                match entry {
                    TxEntry::Present(_) => {
                        names.insert(name);
                    }
                    TxEntry::Deleted { .. } => {
                        names.remove(name);
                    }
                }
            }
            for name in names {
                out.extend_from_slice(name);
                out.push(0);
            }
        }
        if !hides {
            // Its children came (at least partly) from the snapshot. Only the set of their
            // names is relied on: not their values, nor the directory's own.
            self.note(t, caller, path, r.nearest, Aspects::CHILDREN)?;
        } else if r.under_created {
            // Only the transaction's own children, which holds only if nobody else creates
            // the node meanwhile (the commit would merge with it, children unseen).
            self.note_path(t, caller, path, Aspects::ABSENT)?;
        }
        Ok(gencnt)
    }

    pub(crate) fn tx_set_perms(
        &mut self,
        t: &mut Transaction,
        caller: &Caller,
        path: &[u8],
        perms: &[Perm],
    ) -> XsResult<()> {
        let r = self.tx_checked(t, caller, path, Rights::WRITE | Rights::OWNER)?;
        let (owner, value) = {
            let info = self.info(t, path, r.nearest).ok_or(XsError::Io)?;
            (info.perms.first().map(|p| p.domid), info.value.to_vec())
        };
        if !caller.privileged && perms.first().map(|p| p.domid) != owner {
            return Err(XsError::Perm);
        }
        // Besides the permissions checked for an unprivileged caller (`tx_checked`), the
        // outcome relies only on the node still being there: the new permissions replace
        // whatever they are at commit.
        let now = self.next_gen();
        let perms = self.sanitize_perms(perms.iter().copied(), now);
        let node = match t.present(path) {
            Some(n) => TxNode {
                value: n.value.clone(),
                perms,
                stamp: now,
                origin: n.origin,
                value_set: n.value_set,
                perms_set: true,
                event: true,
                live: n.live,
                relied: n.relied,
            },
            None => TxNode {
                value,
                perms,
                stamp: now,
                origin: Origin::Snapshot,
                value_set: false,
                perms_set: true,
                event: true,
                live: self.src_id(t, path, r.nearest),
                relied: Aspects::EXISTS,
            },
        };
        self.tx_put(t, caller, path, TxEntry::Present(node))?;
        t.last_change = now;
        Ok(())
    }
}
