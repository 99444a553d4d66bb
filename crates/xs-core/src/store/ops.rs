//! Node operations: the public entry points, and their implementation on the live tree.
//! (Inside a transaction the same operations run against the transaction's view, `txn.rs`.)

use alloc::vec::Vec;

use super::access::{Caller, Rights};
use super::{ConnId, Match, Store, TxId, node_charge};
use crate::domid::{DomId, push_decimal};
use crate::error::{XsError, XsResult};
use crate::path::{self, PathKind};
use crate::perms::Perm;
use crate::quota::QuotaKind;
use crate::wire::PAYLOAD_MAX;

/// Whether a write sets a value or only makes sure the node exists.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum WriteKind<'a> {
    Value(&'a [u8]),
    Mkdir,
}

impl Store {
    /// `READ`: appends the node's value to `out`.
    pub fn read(&mut self, conn: ConnId, tx: TxId, path: &[u8], out: &mut Vec<u8>) -> XsResult<()> {
        let caller = self.caller(conn)?;
        self.with_path(&caller, path, false, |s, p, _| {
            if tx == 0 {
                s.main_read(&caller, p, out)
            } else {
                s.in_tx(conn, tx, |s, t| s.tx_read(t, &caller, p, out))
            }
        })
    }

    /// `WRITE`: sets the node's value, creating it and any missing parents.
    pub fn write(&mut self, conn: ConnId, tx: TxId, path: &[u8], value: &[u8]) -> XsResult<()> {
        self.write_kind(conn, tx, path, WriteKind::Value(value))
    }

    /// `MKDIR`: makes sure the node exists, creating it and any missing parents.
    pub fn mkdir(&mut self, conn: ConnId, tx: TxId, path: &[u8]) -> XsResult<()> {
        self.write_kind(conn, tx, path, WriteKind::Mkdir)
    }

    fn write_kind(
        &mut self,
        conn: ConnId,
        tx: TxId,
        path: &[u8],
        kind: WriteKind<'_>,
    ) -> XsResult<()> {
        let caller = self.caller(conn)?;
        self.with_path(&caller, path, false, |s, p, _| {
            if tx == 0 {
                s.main_write(&caller, p, kind)
            } else {
                s.in_tx_change(conn, tx, |s, t| s.tx_write(t, &caller, p, kind))
            }
        })
    }

    /// `RM`: removes the node and everything below it. Removing a missing node succeeds if
    /// its parent exists; removing `/` is refused.
    pub fn rm(&mut self, conn: ConnId, tx: TxId, path: &[u8]) -> XsResult<()> {
        let caller = self.caller(conn)?;
        self.with_path(&caller, path, false, |s, p, _| {
            if tx == 0 {
                s.main_rm(&caller, p)
            } else {
                s.in_tx_change(conn, tx, |s, t| s.tx_rm(t, &caller, p))
            }
        })
    }

    /// `DIRECTORY`: appends the children's names, each followed by a NUL, in byte order.
    /// `E2BIG` if the list does not fit in one message (use [`Store::directory_part`]).
    pub fn directory(
        &mut self,
        conn: ConnId,
        tx: TxId,
        path: &[u8],
        out: &mut Vec<u8>,
    ) -> XsResult<()> {
        let caller = self.caller(conn)?;
        self.with_path(&caller, path, false, |s, p, _| {
            let start = out.len();
            let result = if tx == 0 {
                s.main_directory(&caller, p, out).map(|_| ())
            } else {
                s.in_tx(conn, tx, |s, t| {
                    s.tx_directory(t, &caller, p, out).map(|_| ())
                })
            };
            if result.is_ok() && out.len().saturating_sub(start) > PAYLOAD_MAX {
                out.truncate(start);
                return Err(XsError::TooBig);
            }
            result
        })
    }

    /// `DIRECTORY_PART`: appends `<gencnt>|` and the part of the children list starting at
    /// byte `offset`, as much as fits in one message; the list's end is marked by an extra
    /// NUL. Same format and cut points as C xenstored.
    pub fn directory_part(
        &mut self,
        conn: ConnId,
        tx: TxId,
        path: &[u8],
        offset: usize,
        out: &mut Vec<u8>,
    ) -> XsResult<()> {
        let caller = self.caller(conn)?;
        self.with_path(&caller, path, false, |s, p, _| {
            if tx != 0 {
                let mut list = Vec::new();
                let gencnt = s.in_tx(conn, tx, |s, t| s.tx_directory(t, &caller, p, &mut list))?;
                format_directory_part(&list, gencnt, offset, out);
                return Ok(());
            }
            let index = s.main_checked(&caller, p, Rights::READ)?;
            let node = s.tree.node(index).ok_or(XsError::Io)?;
            let id = s.tree.nodes.id_at(index).ok_or(XsError::Io)?;
            let gencnt = node.gencnt();
            let cached = s
                .listing
                .as_ref()
                .is_some_and(|l| l.node == id && l.gencnt == gencnt);
            if !cached {
                let mut names = s.listing.take().map(|l| l.names).unwrap_or_default();
                names.clear();
                s.main_directory(&caller, p, &mut names)?;
                s.listing = Some(super::Listing {
                    node: id,
                    gencnt,
                    names,
                });
            }
            if let Some(l) = &s.listing {
                format_directory_part(&l.names, gencnt, offset, out);
            }
            Ok(())
        })
    }

    /// `GET_PERMS`: the node's permissions, owner first. Entries for domains that no longer
    /// exist are not shown (they no longer grant anything).
    pub fn get_perms(&mut self, conn: ConnId, tx: TxId, path: &[u8]) -> XsResult<Vec<Perm>> {
        let caller = self.caller(conn)?;
        self.with_path(&caller, path, true, |s, p, canon| {
            if canon.kind == PathKind::Special {
                let special = s.special(p).ok_or(XsError::NoEnt)?;
                let (perms, stamp) = (special.perms.clone(), special.stamp);
                if !s
                    .rights_for(&caller, perms.iter().copied(), stamp)
                    .contains(Rights::READ)
                {
                    return Err(XsError::Acces);
                }
                return Ok(s.sanitize_perms(perms.into_iter(), stamp));
            }
            if tx == 0 {
                s.main_get_perms(&caller, p)
            } else {
                s.in_tx(conn, tx, |s, t| s.tx_get_perms(t, &caller, p))
            }
        })
    }

    /// `SET_PERMS`: replaces the node's permissions. Needs ownership (or privilege); only
    /// privileged callers may change the owner; unprivileged callers are limited to the
    /// `node-permissions` quota of entries, and their entries naming domains the store does
    /// not know are dropped.
    pub fn set_perms(
        &mut self,
        conn: ConnId,
        tx: TxId,
        path: &[u8],
        perms: &[Perm],
    ) -> XsResult<()> {
        let caller = self.caller(conn)?;
        let owner = perms.first().ok_or(XsError::Inval)?;
        // DOMID_ANY may grant access but cannot own a node.
        if !owner.domid.is_real() {
            return Err(XsError::Inval);
        }
        self.check_quota(&caller, QuotaKind::NodePermissions, perms.len() as u64)?;
        self.with_path(&caller, path, true, |s, p, canon| {
            // Entries naming a domain the store has no record of. C xenstored asks the
            // hypervisor (`domain_alloc_permrefs`): a domain that exists gets a record, kept
            // until the domain is gone; an entry for one that does not is ignored for good.
            // The store cannot ask, so it goes by who asks. For a privileged caller, entries
            // naming real domains it does not know get a record now, so that they take
            // effect when the domain is introduced (toolstacks set a domain's permissions
            // before introducing it); if the change is refused, the records are dropped
            // again: a refused request leaves nothing behind. An unprivileged caller's
            // entries for domains without a record are dropped (C ignores them when the
            // domain does not exist, and still lists them; `GET_PERMS` here lists no entry
            // that grants nothing): otherwise any guest could give every domid a record,
            // megabytes charged to nobody, where it can now create none. A guest still
            // grants access to every domain the store knows (introduced, connected, or
            // named by the toolstack); unlike C, not to one that exists but was neither
            // introduced nor named by the toolstack yet.
            let mut created = Vec::new();
            let kept: Vec<Perm>;
            let perms = if caller.privileged {
                for entry in perms {
                    if entry.domid.is_real() && !s.domains.contains_key(&entry.domid) {
                        s.ensure_domain(entry.domid);
                        created.push(entry.domid);
                    }
                }
                perms
            } else {
                let known = |i: usize, e: &Perm| {
                    i == 0 || e.domid == DomId::ANY || s.domains.contains_key(&e.domid)
                };
                if perms.iter().enumerate().all(|(i, e)| known(i, e)) {
                    perms
                } else {
                    kept = perms
                        .iter()
                        .enumerate()
                        .filter(|&(i, e)| known(i, e))
                        .map(|(_, e)| *e)
                        .collect();
                    &kept
                }
            };
            let result = if canon.kind == PathKind::Special {
                s.set_special_perms(&caller, p, perms)
            } else if tx == 0 {
                s.main_set_perms(&caller, p, perms)
            } else {
                s.in_tx_change(conn, tx, |s, t| s.tx_set_perms(t, &caller, p, perms))
            };
            if result.is_err() {
                for domid in created {
                    s.domains.remove(&domid);
                }
            }
            result
        })
    }

    /// The domain's home path, `/local/domain/<domid>` (`GET_DOMAIN_PATH`).
    pub fn domain_path(domid: DomId) -> Vec<u8> {
        let mut out = Vec::new();
        path::push_home(&mut out, domid);
        out
    }

    // ----- special nodes -------------------------------------------------------------------

    fn special(&self, path: &[u8]) -> Option<&super::SpecialNode> {
        self.specials.iter().find(|s| s.name == path)
    }

    fn set_special_perms(&mut self, caller: &Caller, path: &[u8], perms: &[Perm]) -> XsResult<()> {
        let (old_owner, rights) = {
            let special = self.special(path).ok_or(XsError::NoEnt)?;
            (
                special.perms.first().map(|p| p.domid),
                self.rights_for(caller, special.perms.iter().copied(), special.stamp),
            )
        };
        if !rights.contains(Rights::WRITE | Rights::OWNER) {
            return Err(XsError::Acces);
        }
        if !caller.privileged && perms.first().map(|p| p.domid) != old_owner {
            return Err(XsError::Perm);
        }
        let now = self.next_gen();
        if let Some(special) = self.specials.iter_mut().find(|s| s.name == path) {
            special.perms = perms.to_vec();
            special.stamp = now;
        }
        Ok(())
    }

    // ----- the live tree -------------------------------------------------------------------

    fn main_read(&self, caller: &Caller, path: &[u8], out: &mut Vec<u8>) -> XsResult<()> {
        let index = self.main_checked(caller, path, Rights::READ)?;
        if let Some(node) = self.tree.node(index) {
            out.extend_from_slice(node.value());
        }
        Ok(())
    }

    /// The node at `path` if `caller` has `need` on it; else the error C xenstored gives.
    fn main_checked(&self, caller: &Caller, path: &[u8], need: Rights) -> XsResult<u32> {
        let (index, covered) = self.tree.lookup_nearest(path);
        let rights = self.node_rights(caller, index);
        if covered == path.len() {
            if rights.contains(need) {
                Ok(index)
            } else {
                Err(XsError::Acces)
            }
        } else {
            Err(Store::missing_error(rights, need))
        }
    }

    fn main_write(&mut self, caller: &Caller, path: &[u8], kind: WriteKind<'_>) -> XsResult<()> {
        let (nearest, covered) = self.tree.lookup_nearest(path);
        if !self.node_rights(caller, nearest).contains(Rights::WRITE) {
            return Err(XsError::Acces);
        }
        let node = self.tree.node(nearest).ok_or(XsError::Io)?;
        let value = match kind {
            WriteKind::Value(v) => v,
            WriteKind::Mkdir if covered == path.len() => return Ok(()),
            WriteKind::Mkdir => b"",
        };
        if covered == path.len() {
            // Existing node: a new value.
            let size = value.len().saturating_add(node.child_name_bytes());
            self.check_quota(caller, QuotaKind::NodeSize, size as u64)?;
            let owner = node.owner();
            let grows = value.len().saturating_sub(node.value().len()) as u64;
            if owner == caller.domid {
                self.check_memory(caller, grows)?;
            }
            let now = self.change_gen();
            self.set_node_value(nearest, path, value, now, caller.domid)?;
            self.fire(path, Match::Subtree, Some(nearest), None);
            return Ok(());
        }
        // Missing: create it and the missing parents below `nearest`.
        let rest = path.get(covered..).unwrap_or_default();
        let names: Vec<&[u8]> = path::segments(rest).collect();
        let count = names.len() as u64;
        let usage = self.usage_of(caller.domid);
        self.check_quota(caller, QuotaKind::Nodes, usage.nodes.saturating_add(count))?;
        self.check_quota(caller, QuotaKind::NodeSize, value.len() as u64)?;
        let first_len = names.first().map_or(0, |n| n.len());
        let parent_size = node
            .quota_size()
            .saturating_add(first_len)
            .saturating_add(1);
        if node.owner() == caller.domid {
            self.check_quota(caller, QuotaKind::NodeSize, parent_size as u64)?;
        }
        let mut perms = self.sanitize_perms(node.perms(), node.data_gen);
        if !caller.privileged {
            // "unpriv domains own what they create"
            if let Some(owner) = perms.first_mut() {
                owner.domid = caller.domid;
            }
        }
        let memory = names
            .iter()
            .map(|n| node_charge(n.len(), 0, perms.len()))
            .fold(value.len() as u64, u64::saturating_add);
        self.check_memory(caller, memory)?;
        let now = self.change_gen();
        let mut parent = nearest;
        let last = names.len().saturating_sub(1);
        for (i, name) in names.iter().enumerate() {
            let v = if i == last { value } else { b"" };
            parent = self.create_node(parent, name, v, &perms, now)?;
        }
        // One event for the written path: none for the parents created on the way.
        self.fire(path, Match::Subtree, Some(parent), None);
        Ok(())
    }

    fn main_rm(&mut self, caller: &Caller, path: &[u8]) -> XsResult<()> {
        match self.main_checked(caller, path, Rights::WRITE) {
            Ok(index) => {
                if index == self.tree.root {
                    return Err(XsError::Inval);
                }
                let now = self.change_gen();
                self.delete_subtree(index, path, now, caller.domid, true);
                Ok(())
            }
            Err(XsError::NoEnt) => {
                let parent = path::parent(path).ok_or(XsError::NoEnt)?;
                match self.tree.lookup(parent) {
                    Some(_) => Ok(()),
                    None => Err(XsError::NoEnt),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Appends the children of `path` to `out`; returns the node's generation count.
    fn main_directory(&self, caller: &Caller, path: &[u8], out: &mut Vec<u8>) -> XsResult<u64> {
        let index = self.main_checked(caller, path, Rights::READ)?;
        let node = self.tree.node(index).ok_or(XsError::Io)?;
        out.reserve(node.child_name_bytes());
        for c in node.children() {
            if let Some(child) = self.tree.node(c.index) {
                out.extend_from_slice(child.name());
                out.push(0);
            }
        }
        Ok(node.gencnt())
    }

    fn main_get_perms(&self, caller: &Caller, path: &[u8]) -> XsResult<Vec<Perm>> {
        let index = self.main_checked(caller, path, Rights::READ)?;
        let node = self.tree.node(index).ok_or(XsError::Io)?;
        Ok(self.sanitize_perms(node.perms(), node.data_gen))
    }

    fn main_set_perms(&mut self, caller: &Caller, path: &[u8], perms: &[Perm]) -> XsResult<()> {
        let index = self.main_checked(caller, path, Rights::WRITE | Rights::OWNER)?;
        let node = self.tree.node(index).ok_or(XsError::Io)?;
        if !caller.privileged && perms.first().map(|p| p.domid) != Some(node.owner()) {
            return Err(XsError::Perm);
        }
        let old = node.perm_vec();
        let old_stamp = node.data_gen;
        let now = self.change_gen();
        let perms = self.sanitize_perms(perms.iter().copied(), now);
        self.set_node_perms(index, path, &perms, now, caller.domid)?;
        self.fire(path, Match::Subtree, Some(index), Some((&old, old_stamp)));
        Ok(())
    }
}

/// Formats a `DIRECTORY_PART` reply from the full NUL-terminated list, exactly as C
/// xenstored cuts it: whole names while they fit, the offset taken as a byte offset.
///
/// A name fits when its terminating NUL lies before `max`, so the part is everything up to
/// the last NUL of the first `max` bytes: one backward `memrchr` over at most a page, rather
/// than a forward scan name by name (a listing of thousands of domains is cut into many
/// parts). A list whose end lacks a NUL (never the store's) ends the part with its
/// unterminated tail when that fits, as the name-by-name cut does.
pub(crate) fn format_directory_part(list: &[u8], gencnt: u64, offset: usize, out: &mut Vec<u8>) {
    push_decimal(out, gencnt);
    out.push(0);
    let genlen = out.len();
    let Some(rest) = list.get(offset..).filter(|r| !r.is_empty()) else {
        // Offset at or past the end: just the terminating empty string.
        out.push(0);
        return;
    };
    let max = PAYLOAD_MAX.saturating_sub(genlen).saturating_sub(1);
    let window = rest.get(..max.min(rest.len())).unwrap_or_default();
    let mut len = memchr::memrchr(0, window).map_or(0, |nul| nul.saturating_add(1));
    let unterminated_tail = rest.get(len..).is_some_and(|t| !t.contains(&0));
    if len < rest.len() && unterminated_tail && rest.len() < max {
        len = rest.len();
    }
    out.extend_from_slice(rest.get(..len).unwrap_or_default());
    if len == rest.len() {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_part_cuts_like_xen() {
        let mut list = Vec::new();
        for i in 0..2000u32 {
            list.extend_from_slice(alloc::format!("name{i}").as_bytes());
            list.push(0);
        }
        let mut offset = 0;
        let mut got = Vec::new();
        loop {
            let mut out = Vec::new();
            format_directory_part(&list, 42, offset, &mut out);
            assert!(out.len() <= PAYLOAD_MAX);
            assert!(out.starts_with(b"42\0"));
            let body = &out[3..];
            if body == b"\0" {
                break;
            }
            let end = body.ends_with(b"\0\0");
            let chunk = if end { &body[..body.len() - 1] } else { body };
            got.extend_from_slice(chunk);
            offset += chunk.len();
            if end {
                break;
            }
        }
        assert_eq!(got, list);
        let mut out = Vec::new();
        format_directory_part(b"", 7, 0, &mut out);
        assert_eq!(out, b"7\0\0");
        let mut out = Vec::new();
        format_directory_part(b"a\0b\0", 7, 0, &mut out);
        assert_eq!(out, b"7\0a\0b\0\0");
    }

    /// The cut name by name, as C xenstored walks it: the reference for the one-pass cut.
    fn cut_name_by_name(list: &[u8], gencnt: u64, offset: usize, out: &mut Vec<u8>) {
        push_decimal(out, gencnt);
        out.push(0);
        let genlen = out.len();
        let Some(rest) = list.get(offset..).filter(|r| !r.is_empty()) else {
            out.push(0);
            return;
        };
        let max = PAYLOAD_MAX - genlen - 1;
        let mut len = 0usize;
        let mut complete = false;
        while let Some(tail) = rest.get(len..) {
            let name_len = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            if len + name_len >= max {
                break;
            }
            len += name_len + 1;
            if len >= rest.len() {
                complete = true;
                break;
            }
        }
        out.extend_from_slice(&rest[..len.min(rest.len())]);
        if complete {
            out.push(0);
        }
    }

    proptest::proptest! {
        #[test]
        fn the_one_pass_cut_is_the_name_by_name_cut(
            names in proptest::collection::vec(proptest::collection::vec(1u8..=255, 0..300), 0..40),
            terminated in proptest::bool::ANY,
            offset in 0usize..12_000,
            gencnt in 0u64..u64::MAX,
        ) {
            let mut list = Vec::new();
            for n in &names {
                list.extend_from_slice(n);
                list.push(0);
            }
            if !terminated {
                list.pop();
            }
            let offset = if list.is_empty() { offset } else { offset % (list.len() + 2) };
            let (mut got, mut want) = (Vec::new(), Vec::new());
            format_directory_part(&list, gencnt, offset, &mut got);
            cut_name_by_name(&list, gencnt, offset, &mut want);
            proptest::prop_assert_eq!(got, want);
        }
    }
}
