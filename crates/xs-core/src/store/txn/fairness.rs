//! Fairness for transactions that keep failing (issue 17, item 5).
//!
//! Optimistic transactions starve when someone rewrites what they read faster than they can
//! commit: a guest rewriting a node it owns tens of thousands of times a second fails every
//! dom0 transaction that reads that node. C xenstored answers with write rate limiting
//! (`domain.c`'s WRL: every write of a domain over its rate waits, whatever it touches);
//! oxenstored with a conflict credit (a domain whose writes fail others' transactions is
//! served less). Here the writers that are made to wait are exactly those whose change would
//! fail a starving transaction, and only while it is open:
//!
//! * A privileged connection whose last [`PROTECT_AFTER`] commits failed with `EAGAIN` gets
//!   its next transaction *protected*.
//! * While a protected transaction is open, a request of an unprivileged connection that
//!   would change what it relied on (a write, `MKDIR`, `RM` or `SET_PERMS` on a path it
//!   read, wrote, listed the parent of or, for `RM`, holds below; or the commit of a
//!   transaction writing such a path) waits: the connection holds it unanswered (see
//!   `Connection::receive`) and takes no further request, in order. When the protected
//!   transaction ends, the waiting connections are notified to try again.
//!
//! * A protected transaction reads the present: before each of its operations, if anything
//!   changed since its snapshot, it is rebased (see `Store::settle_history`), so that what
//!   changed before it relied on it, while nobody had to wait, does not fail it.
//!
//! So the protected transaction commits at its next attempt unless another privileged
//! client changes what it read; a guest's writes that conflict with nobody never wait.
//! Only privileged connections are protected: a protected transaction holds others' writes
//! for as long as it stays open, which only a trusted domain may do (a guest could
//! otherwise hold a transaction open to stall other guests). Privileged writers never wait,
//! so a toolstack whose threads share state across connections cannot deadlock on itself,
//! and a connection holding a protected transaction never waits, so there is no cycle.

use alloc::vec::Vec;
use core::ops::Bound;

use super::{Aspects, Transaction};
use crate::path;
use crate::store::{ConnId, Store, TxId};

/// Consecutive failed commits after which a privileged connection's next transaction is
/// protected: one failure is ordinary contention, a second in a row is starting to starve.
pub const PROTECT_AFTER: u8 = 2;

/// The kind of change a waiting request would make at its path.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ChangeKind {
    /// `WRITE`, `MKDIR`, `SET_PERMS`: the node, and its parent's children if it is created.
    Node,
    /// `RM`: the node and everything below it.
    Subtree,
}

impl Transaction {
    /// Whether a change of kind `change` at `path` could fail this transaction's commit:
    /// it relied on `path` itself, on an ancestor's children or absence (a creation adds
    /// children, fills in missing parents), or for a removal on anything below.
    fn hit_by(&self, path: &[u8], change: ChangeKind) -> bool {
        if self.reads.contains_key(path) || self.overlay.contains_key(path) {
            return true;
        }
        let mut up = path::parent(path);
        while let Some(ancestor) = up {
            let listed = self
                .reads
                .get(ancestor)
                .is_some_and(|r| r.aspects.intersects(Aspects::CHILDREN | Aspects::ABSENT));
            if listed || self.overlay.contains_key(ancestor) {
                return true;
            }
            up = path::parent(ancestor);
        }
        if change == ChangeKind::Subtree {
            let mut prefix = path.to_vec();
            if path != b"/" {
                prefix.push(b'/');
            }
            let below = |k: &[u8]| k.starts_with(&prefix);
            let from = (Bound::Included(prefix.as_slice()), Bound::Unbounded);
            if self
                .reads
                .range::<[u8], _>(from)
                .next()
                .is_some_and(|(k, _)| below(k))
                || self
                    .overlay
                    .range::<[u8], _>(from)
                    .next()
                    .is_some_and(|(k, _)| below(k))
            {
                return true;
            }
        }
        false
    }

    /// The changes this transaction's commit would make, as `(path, kind)`.
    fn changes(&self) -> impl Iterator<Item = (&[u8], ChangeKind)> {
        self.overlay.iter().map(|(p, e)| {
            let kind = match e {
                super::TxEntry::Deleted { .. } => ChangeKind::Subtree,
                super::TxEntry::Present(_) => ChangeKind::Node,
            };
            (&**p, kind)
        })
    }
}

impl Store {
    /// Whether a request of `conn` that changes `raw_path` (as the request names it) must
    /// wait for a protected transaction (see the module docs). A `true` registers `conn`
    /// to be notified (see [`Store::take_notifications`]) when that may have changed.
    pub fn change_must_wait(&mut self, conn: ConnId, raw_path: &[u8], change: ChangeKind) -> bool {
        if self.protected.is_empty() {
            return false;
        }
        let Ok(caller) = self.caller(conn) else {
            return false;
        };
        if caller.privileged {
            return false;
        }
        let mut buf = core::mem::take(&mut self.path_buf);
        // A path that does not canonicalize is refused by the request itself.
        let hit = match buf.canonicalize(raw_path, caller.domid, false) {
            Ok((path, _)) => self.hits_protected(conn, path, change),
            Err(_) => false,
        };
        self.path_buf = buf;
        if hit {
            self.wait(conn);
        }
        hit
    }

    /// Whether the commit of `conn`'s transaction `tx` must wait for a protected
    /// transaction: it would change what one relied on.
    pub fn commit_must_wait(&mut self, conn: ConnId, tx: TxId) -> bool {
        if self.protected.is_empty() {
            return false;
        }
        let Ok(caller) = self.caller(conn) else {
            return false;
        };
        if caller.privileged {
            return false;
        }
        let hit = self
            .conns
            .get_id(conn.0)
            .and_then(|c| c.transactions.get(&tx))
            .is_some_and(|t| t.changes().any(|(p, k)| self.hits_protected(conn, p, k)));
        if hit {
            self.wait(conn);
        }
        hit
    }

    /// Number of protected transactions open.
    pub fn protected_transactions(&self) -> usize {
        self.protected.len()
    }

    fn hits_protected(&self, conn: ConnId, path: &[u8], change: ChangeKind) -> bool {
        self.protected.iter().any(|&(pc, ptx)| {
            pc != conn
                && self
                    .conns
                    .get_id(pc.0)
                    .and_then(|c| c.transactions.get(&ptx))
                    .is_some_and(|t| t.hit_by(path, change))
        })
    }

    fn wait(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_id_mut(conn.0)
            && !c.waiting
        {
            c.waiting = true;
            self.waiting.push(conn);
        }
    }

    /// Notes how a commit of `conn` ended, for [`PROTECT_AFTER`].
    pub(super) fn note_commit(&mut self, conn: ConnId, failed: bool) {
        if let Some(c) = self.conns.get_id_mut(conn.0) {
            c.failed_commits = if failed {
                c.failed_commits.saturating_add(1)
            } else {
                0
            };
        }
    }

    /// Whether `conn`'s next transaction is to be protected.
    pub(super) fn earns_protection(&self, conn: ConnId) -> bool {
        self.conns
            .get_id(conn.0)
            .is_some_and(|c| c.caller.privileged && c.failed_commits >= PROTECT_AFTER)
    }

    /// A protected transaction ended: the connections waiting try again.
    pub(super) fn unprotect(&mut self, conn: ConnId, tx: TxId) {
        self.protected.retain(|&p| p != (conn, tx));
        let waiting: Vec<ConnId> = core::mem::take(&mut self.waiting);
        for w in waiting {
            if let Some(c) = self.conns.get_id_mut(w.0) {
                c.waiting = false;
                if !c.notify {
                    c.notify = true;
                    self.notify.push(w);
                }
            }
        }
    }
}
