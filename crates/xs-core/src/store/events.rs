//! Watches and events: `WATCH`/`UNWATCH`/`RESET_WATCHES`, and the firing of events for
//! a change, with the permission check, the bounded per-connection queue and its memory
//! charge. (The watch table and the matching of paths are `watch.rs`.)

use alloc::vec::Vec;
use core::mem;

use super::access::{Caller, Rights};
use super::{ConnId, Match, Store, watch};
use crate::domid::DomId;
use crate::error::{XsError, XsResult};
use crate::perms::Perm;
use crate::quota::QuotaKind;

impl Store {
    // ----- watches and events --------------------------------------------------------------

    /// Whether `watcher` may see an event about the node at `index`: it can read the node or
    /// its parent, or could read the node under `old_perms` (so that a watcher losing access
    /// still learns of the change), as C xenstored's `watch_permitted`.
    fn watch_permitted(
        &self,
        watcher: &Caller,
        index: Option<u32>,
        old_perms: Option<(&[Perm], u64)>,
    ) -> bool {
        if watcher.privileged {
            return true;
        }
        if let Some((perms, stamp)) = old_perms
            && self
                .rights_for(watcher, perms.iter().copied(), stamp)
                .contains(Rights::READ)
        {
            return true;
        }
        let Some(node) = index.and_then(|i| self.tree.node(i)) else {
            return false;
        };
        if self
            .rights_for(watcher, node.perms(), node.data_gen)
            .contains(Rights::READ)
        {
            return true;
        }
        self.tree.node(node.parent).is_some_and(|p| {
            self.rights_for(watcher, p.perms(), p.data_gen)
                .contains(Rights::READ)
        })
    }

    /// Queues events for the watches matching a change at `path`.
    pub(super) fn fire(
        &mut self,
        path: &[u8],
        kind: Match,
        index: Option<u32>,
        old: Option<(&[Perm], u64)>,
    ) {
        if self.watches.is_empty() {
            return;
        }
        let mut matched = mem::take(&mut self.match_buf);
        matched.clear();
        match kind {
            Match::Subtree => self.watches.match_subtree(path, &mut matched),
            Match::Exact => self.watches.match_exact(path, &mut matched),
        }
        // The watchers first, in a pass of its own: each watch is a likely cache miss, and
        // these loads are independent of one another, so they overlap here instead of each
        // waiting behind the previous event's queueing.
        let mut watchers = mem::take(&mut self.watcher_buf);
        watchers.clear();
        watchers.extend(matched.iter().filter_map(|&w| {
            let conn = self.watches.watches.get(w)?.conn;
            Some((w, self.conns.get_id(conn)?.caller))
        }));
        // The changed path's hash, once for all its watchers (most report it as it is).
        let path_hash = (!watchers.is_empty()).then(|| self.watches.hash_path(path));
        for (w, watcher) in &watchers {
            if self.watch_permitted(watcher, index, old) {
                self.queue_event(*w, path, path_hash);
            }
        }
        self.match_buf = matched;
        self.watcher_buf = watchers;
    }

    /// Fires a special event (`@introduceDomain` / `@releaseDomain`) about `domid`.
    pub(super) fn fire_special(&mut self, which: usize, domid: DomId) {
        let Some(special) = self.specials.get(which) else {
            return;
        };
        let name = special.name;
        let mut with_domid = name.to_vec();
        with_domid.push(b'/');
        crate::domid::push_decimal(&mut with_domid, u64::from(domid.0));
        let mut matched = Vec::new();
        self.watches.match_special(name, &with_domid, &mut matched);
        for (w, domid_form) in matched {
            let Some(conn) = self.watches.watches.get(w).map(|w| w.conn) else {
                continue;
            };
            let Some(watcher) = self.conns.get_id(conn).map(|c| c.caller) else {
                continue;
            };
            let allowed = self.specials.get(which).is_some_and(|s| {
                self.rights_for(&watcher, s.perms.iter().copied(), s.stamp)
                    .contains(Rights::READ)
            });
            if allowed {
                let path = if domid_form {
                    with_domid.as_slice()
                } else {
                    name
                };
                self.queue_event(w, path, None);
            }
        }
    }

    /// Queues one event for watch `w` about `path` (whose hash is `path_hash`, if known),
    /// drops it if an identical one is pending (see `watch.rs`), or marks the watch as
    /// having missed one.
    fn queue_event(&mut self, w: u32, path: &[u8], path_hash: Option<u64>) {
        let Some(watch) = self.watches.watches.get(w) else {
            return;
        };
        let conn_id = watch.conn;
        let reported = self.watches.reported_path(w, watch, path);
        let key = self.watches.event_key(watch, &reported, path, path_hash);
        let charge = watch::charge_event_of(reported.len(), watch.token.len());
        let queue_len = self.config.event_queue_len;
        let Some(conn) = self.conns.get_id(conn_id) else {
            return;
        };
        // Checked before the bound: a dropped duplicate is not a missed event (the pending
        // one reports it), so it owes no catch-up event.
        if key.is_some_and(|k| conn.events.contains(k, &reported, &watch.token)) {
            return;
        }
        let watcher = conn.caller;
        let (has_room, empty) = (conn.events.len() < queue_len, conn.events.is_empty());
        let fits = has_room && self.try_charge(&watcher, charge, empty);
        let (Some(watch), Some(conn)) = (
            self.watches.watches.get_mut(w),
            self.conns.get_id_mut(conn_id),
        ) else {
            return;
        };
        if fits {
            conn.events.push(&reported, &watch.token, key);
            if !conn.notify {
                conn.notify = true;
                self.notify.push(ConnId(conn_id));
            }
        } else if !watch.missed {
            watch.missed = true;
            conn.missed.push_back(w);
        }
    }

    /// Charges `bytes` of queued events to an unprivileged watcher if its memory quota allows
    /// (one look-up for both); privileged watchers' queues are bounded by length alone.
    ///
    /// An event for an empty queue is always taken (`into_empty`), over the quota if need
    /// be: otherwise a watcher whose memory is used up by other things would be owed events
    /// that no later pop ever delivers (catch-up events are queued when an event is popped).
    /// A domain's memory stays bounded, by its quota plus one event.
    fn try_charge(&mut self, watcher: &Caller, bytes: u64, into_empty: bool) -> bool {
        if watcher.privileged {
            return true;
        }
        let Some(d) = self.domains.get_mut(&watcher.domid) else {
            return true;
        };
        let limit = d
            .overrides
            .effective(&self.config.quotas, QuotaKind::Memory);
        let after = d.usage.memory.saturating_add(bytes);
        if limit != 0 && after > u64::from(limit) && !into_empty {
            return false;
        }
        d.usage.memory = after;
        true
    }

    /// Refunds queued events to an unprivileged watcher's memory (what [`Store::try_charge`]
    /// charged). Privileged watchers' queues are bounded by length alone.
    pub(super) fn refund_events(&mut self, watcher: &Caller, bytes: u64) {
        if watcher.privileged {
            return;
        }
        let change = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.charge(watcher.domid, change.saturating_neg());
    }

    /// Moves owed catch-up events into the queue while it has room.
    pub(super) fn refill_missed(&mut self, conn: ConnId) {
        loop {
            let Some(c) = self.conns.get_id(conn.0) else {
                return;
            };
            if c.events.len() >= self.config.event_queue_len {
                return;
            }
            let Some(&w) = c.missed.front() else {
                return;
            };
            let (watcher, into_empty) = (c.caller, c.events.is_empty());
            let Some(watch) = self.watches.watches.get(w) else {
                if let Some(c) = self.conns.get_id_mut(conn.0) {
                    c.missed.pop_front();
                }
                continue;
            };
            let own = self.watches.own_event_path(w);
            let key = self.watches.event_key(watch, &own, &own, None);
            // An identical event still queued already says what the catch-up event would:
            // the watch is owed nothing more (C xenstored's rule would drop it too).
            let owed = !key.is_some_and(|k| c.events.contains(k, &own, &watch.token));
            if owed {
                let charge = watch::charge_event_of(own.len(), watch.token.len());
                if !self.try_charge(&watcher, charge, into_empty) {
                    return;
                }
            }
            if let (Some(c), Some(watch)) = (
                self.conns.get_id_mut(conn.0),
                self.watches.watches.get_mut(w),
            ) {
                c.missed.pop_front();
                if owed {
                    c.events.push(&own, &watch.token, key);
                }
                watch.missed = false;
            }
        }
    }

    // ----- watches -------------------------------------------------------------------------

    /// `WATCH`: registers a watch on `path` (or a special path) with `token` and queues the
    /// initial event. `depth` limits how many levels below `path` match.
    pub fn watch(
        &mut self,
        conn: ConnId,
        path: &[u8],
        token: &[u8],
        depth: Option<u32>,
    ) -> XsResult<()> {
        let caller = self.caller(conn)?;
        self.with_path(&caller, path, true, |s, canonical, canon| {
            if s.watches.find(conn.0, canonical, token).is_some() {
                return Err(XsError::Exist);
            }
            let usage = s.usage_of(caller.domid);
            s.check_quota(&caller, QuotaKind::Watches, usage.watches.saturating_add(1))?;
            let charge = watch::charge_watch(canonical.len(), token.len());
            s.check_memory(&caller, charge)?;
            let index = s
                .watches
                .add(conn.0, canonical, token, depth, canon.relative_prefix)?;
            if let Some(c) = s.conns.get_id_mut(conn.0) {
                c.watches.push(index);
            }
            if let Some(d) = s.domains.get_mut(&caller.domid) {
                d.usage.watches = d.usage.watches.saturating_add(1);
            }
            s.charge(caller.domid, i64::try_from(charge).unwrap_or(i64::MAX));
            // "When a watch is first set up it is triggered once straight away."
            s.queue_event(index, canonical, None);
            Ok(())
        })
    }

    /// `UNWATCH`.
    pub fn unwatch(&mut self, conn: ConnId, path: &[u8], token: &[u8]) -> XsResult<()> {
        let caller = self.caller(conn)?;
        self.with_path(&caller, path, true, |s, canonical, _| {
            let index = s
                .watches
                .find(conn.0, canonical, token)
                .ok_or(XsError::NoEnt)?;
            if let Some(c) = s.conns.get_id_mut(conn.0) {
                c.watches.retain(|&w| w != index);
                c.missed.retain(|&w| w != index);
            }
            if let Some(watch) = s.watches.remove(index) {
                let charge = i64::try_from(watch.charge()).unwrap_or(i64::MAX);
                s.charge(caller.domid, charge.saturating_neg());
                if let Some(d) = s.domains.get_mut(&caller.domid) {
                    d.usage.watches = d.usage.watches.saturating_sub(1);
                }
            }
            Ok(())
        })
    }

    /// `RESET_WATCHES`: drops the connection's watches and transactions.
    pub fn reset_watches(&mut self, conn: ConnId) -> XsResult<()> {
        self.caller(conn)?;
        self.reset_connection(conn);
        Ok(())
    }
}
