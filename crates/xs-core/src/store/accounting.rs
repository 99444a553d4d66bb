//! Identity, rights and quotas: who a caller is, what it may do to a node, and what it
//! is charged for (the quota checks on every request, the memory accounting and the
//! `GET_QUOTA`/`SET_QUOTA` requests). Kept apart from the operations so that the policy
//! can be read in one place.

use alloc::vec::Vec;

use super::access::{self, Caller, Rights};
use super::conn::Unsent;
use super::domain::Domain;
use super::{ConnId, Store, Usage, features};
use crate::domid::DomId;
use crate::error::{XsError, XsResult};
use crate::perms::Perm;
use crate::quota::{QuotaKind, QuotaName, Quotas};

impl Store {
    // ----- identity, rights and quotas -----------------------------------------------------

    /// Whether `domid` bypasses permission checks and quotas.
    pub fn is_privileged(&self, domid: DomId) -> bool {
        domid == DomId::DOM0 || self.config.privileged.contains(&domid)
    }

    pub(super) fn caller_for(&self, domid: DomId) -> Caller {
        let record = self.domains.get(&domid);
        let target = record
            .and_then(|d| d.target)
            .and_then(|t| self.domains.get(&t).map(|r| (t, r.created_gen)));
        Caller {
            domid,
            privileged: self.is_privileged(domid),
            since: record.map_or(u64::MAX, |d| d.created_gen),
            target,
        }
    }

    pub(super) fn caller(&self, conn: ConnId) -> XsResult<Caller> {
        let c = self.conns.get_id(conn.0).ok_or(XsError::Inval)?;
        if c.dead {
            return Err(XsError::Io);
        }
        Ok(c.caller)
    }

    /// Refreshes the identity cached in `domid`'s connections (after its target changed).
    pub(super) fn refresh_callers(&mut self, domid: DomId) {
        let caller = self.caller_for(domid);
        let conns: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| c.domid() == domid)
            .map(|(i, _)| i)
            .collect();
        for i in conns {
            if let Some(c) = self.conns.get_mut(i) {
                c.caller = caller;
            }
        }
    }

    /// Whether a non-owner permission entry naming `domid`, written at generation `stamp`,
    /// still refers to the domain it was written for: the domain must still exist and must
    /// not be younger than the entry (a domain created later reuses the id).
    pub(super) fn entry_is_live(&self, domid: DomId, stamp: u64) -> bool {
        domid == DomId::ANY
            || self
                .domains
                .get(&domid)
                .is_some_and(|d| d.created_gen <= stamp)
    }

    pub(super) fn rights_for(
        &self,
        caller: &Caller,
        perms: impl Iterator<Item = Perm>,
        stamp: u64,
    ) -> Rights {
        access::rights(caller, perms, stamp)
    }

    pub(super) fn node_rights(&self, caller: &Caller, index: u32) -> Rights {
        self.tree.node(index).map_or(Rights::empty(), |n| {
            self.rights_for(caller, n.perms(), n.data_gen)
        })
    }

    /// `perms` without the non-owner entries that are no longer live at `stamp`.
    pub(super) fn sanitize_perms(
        &self,
        perms: impl Iterator<Item = Perm>,
        stamp: u64,
    ) -> Vec<Perm> {
        perms
            .enumerate()
            .filter(|(i, p)| *i == 0 || self.entry_is_live(p.domid, stamp))
            .map(|(_, p)| p)
            .collect()
    }

    /// The error for a request on a missing node, decided by the nearest existing ancestor
    /// as C xenstored does (`errno_from_parents`): `ENOENT` if the ancestor grants any of
    /// `need`, else `EACCES`, so that a caller cannot learn what exists where it cannot look.
    pub(super) fn missing_error(ancestor_rights: Rights, need: Rights) -> XsError {
        if ancestor_rights.intersects(need) {
            XsError::NoEnt
        } else {
            XsError::Acces
        }
    }

    /// The quotas in force for `domid`.
    pub fn effective_quotas(&self, domid: DomId) -> Quotas {
        self.domains.get(&domid).map_or(self.config.quotas, |d| {
            d.overrides.apply(&self.config.quotas)
        })
    }

    /// One quota in force for `domid` (0 = unlimited): its override, else the global value.
    /// (Checked on every request; [`Store::effective_quotas`] builds the whole set.)
    pub fn quota(&self, domid: DomId, kind: QuotaKind) -> u32 {
        self.quota_in(self.domains.get(&domid), kind)
    }

    /// [`Store::quota`] for a domain whose record (if any) was already looked up.
    fn quota_in(&self, record: Option<&Domain>, kind: QuotaKind) -> u32 {
        let global = &self.config.quotas;
        record.map_or(global.get(kind), |d| d.overrides.effective(global, kind))
    }

    /// How many messages a connection's domain may have waiting to be sent, across all its
    /// connections, before they take no more input: its `outstanding` quota, `None` for a
    /// privileged (or unknown) connection or an unlimited quota.
    pub fn outstanding_limit(&self, conn: ConnId) -> Option<usize> {
        let caller = self.conns.get_id(conn.0)?.caller;
        if caller.privileged {
            return None;
        }
        match self.quota(caller.domid, QuotaKind::Outstanding) {
            0 => None,
            q => Some(q as usize),
        }
    }

    // ----- output waiting to be sent -------------------------------------------------------
    //
    // A domain's connections together, not each, are bounded by its `outstanding` quota:
    // every reply or watch event waiting in a connection's output counts for the domain
    // until it is wholly sent, and its bytes are charged to the domain's memory meanwhile
    // (C xenstored counts `nboutstanding` per domain and charges queued output to the
    // domain's memory without checking it, `domain_memory_add_nochk`). A domain with many
    // connections (a ring and per-domain sockets) therefore gets no more than one with a
    // single connection. Privileged domains are not counted: each of their connections is
    // bounded on its own (`Limits::privileged_pending`). A connection's share is kept in its
    // record too, so that closing it refunds what it held, whatever state its output was in.

    /// How many more messages `conn`'s domain may queue for its connections now: `None` if
    /// the domain is not bounded (privileged, unknown, or an unlimited quota), in which case
    /// the connection bounds its own output.
    pub fn outstanding_room(&self, conn: ConnId) -> Option<usize> {
        let c = self.conns.get_id(conn.0)?;
        if c.caller.privileged {
            return None;
        }
        let record = self.domains.get(&c.caller.domid);
        match self.quota_in(record, QuotaKind::Outstanding) {
            0 => None,
            q => {
                let used = record.map_or(0, |d| d.usage.outstanding);
                let room = u64::from(q).saturating_sub(used);
                Some(usize::try_from(room).unwrap_or(usize::MAX))
            }
        }
    }

    /// A message of `bytes` was queued in `conn`'s output: charged to an unprivileged
    /// domain's `outstanding` count and memory until [`Store::output_sent`].
    pub(crate) fn output_queued(&mut self, conn: ConnId, bytes: usize) {
        let Some(c) = self.conns.get_id_mut(conn.0) else {
            return;
        };
        // A released domain's connections (dead) no longer count: its record is gone, and
        // a later domain with the same id must not inherit their output.
        if c.caller.privileged || c.dead {
            return;
        }
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        c.unsent.msgs = c.unsent.msgs.saturating_add(1);
        c.unsent.bytes = c.unsent.bytes.saturating_add(bytes);
        let domid = c.domid();
        if let Some(d) = self.domains.get_mut(&domid) {
            d.usage.outstanding = d.usage.outstanding.saturating_add(1);
            d.usage.memory = d.usage.memory.saturating_add(bytes);
            d.peaks.note(QuotaKind::Outstanding, d.usage.outstanding);
            self.peaks.note(QuotaKind::Outstanding, d.usage.outstanding);
        }
    }

    /// `msgs` messages of `bytes` in all left `conn`'s output (sent, or dropped): refunded
    /// to its domain. Never refunds more than the connection was charged.
    pub(crate) fn output_sent(&mut self, conn: ConnId, msgs: usize, bytes: usize) {
        let Some(c) = self.conns.get_id_mut(conn.0) else {
            return;
        };
        if c.caller.privileged || c.dead {
            return;
        }
        let msgs = u64::try_from(msgs).unwrap_or(u64::MAX).min(c.unsent.msgs);
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX).min(c.unsent.bytes);
        c.unsent.msgs = c.unsent.msgs.saturating_sub(msgs);
        c.unsent.bytes = c.unsent.bytes.saturating_sub(bytes);
        let domid = c.domid();
        if let Some(d) = self.domains.get_mut(&domid) {
            d.usage.outstanding = d.usage.outstanding.saturating_sub(msgs);
            d.usage.memory = d.usage.memory.saturating_sub(bytes);
        }
    }

    /// Everything `conn`'s output held was dropped (the connection was reset or closed).
    pub(crate) fn output_dropped(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_id(conn.0) {
            let Unsent { msgs, bytes } = c.unsent;
            self.output_sent(
                conn,
                usize::try_from(msgs).unwrap_or(usize::MAX),
                usize::try_from(bytes).unwrap_or(usize::MAX),
            );
        }
    }

    /// `Ok` if an unprivileged `caller` stays within `kind` when its usage becomes `value`.
    pub(super) fn check_quota(&self, caller: &Caller, kind: QuotaKind, value: u64) -> XsResult<()> {
        // One record look-up: this runs on every request (path length at least).
        let record = self.domains.get(&caller.domid);
        if !caller.privileged {
            let limit = self.quota_in(record, kind);
            if limit != 0 && value > u64::from(limit) {
                // Xen's errors since its quota checks were unified (C xenstored commit
                // 70fcc25, 2026): ENOSPC for every count and size, ENOMEM for memory. (Xen
                // 4.17 still answered a watch over quota with E2BIG.)
                return Err(if kind == QuotaKind::Memory {
                    XsError::NoMem
                } else {
                    XsError::NoSpc
                });
            }
            self.peaks.note(kind, value);
        }
        if let Some(d) = record {
            d.peaks.note(kind, value);
        }
        Ok(())
    }

    /// The highest value a quota check saw, for one domain or (with `None`) any unprivileged
    /// domain (`xenstore-control quota <domid>` / `quota max`).
    pub fn peak(&self, domid: Option<DomId>, kind: QuotaKind) -> u64 {
        match domid {
            None => self.peaks.get(kind),
            Some(d) => self.domains.get(&d).map_or(0, |d| d.peaks.get(kind)),
        }
    }

    /// Forgets the global peaks (`xenstore-control quota max -r`).
    pub fn reset_peaks(&mut self) {
        self.peaks.reset();
    }

    pub(super) fn usage_of(&self, domid: DomId) -> Usage {
        self.domains
            .get(&domid)
            .map(|d| d.usage)
            .unwrap_or_default()
    }

    /// Checks that an unprivileged caller's memory stays within quota after adding `more`
    /// (and notes when it crosses the soft quota).
    pub(super) fn check_memory(&self, caller: &Caller, more: u64) -> XsResult<()> {
        if caller.privileged {
            return Ok(());
        }
        let after = self.usage_of(caller.domid).memory.saturating_add(more);
        self.check_quota(caller, QuotaKind::Memory, after)?;
        self.note_soft(caller.domid, after);
        Ok(())
    }

    /// Reports a domain whose memory reaches its soft quota, once until it is back below.
    fn note_soft(&self, domid: DomId, memory: u64) {
        let Some(d) = self.domains.get(&domid) else {
            return;
        };
        let soft = u64::from(d.memory_soft.unwrap_or(self.config.memory_soft));
        let over = soft != 0 && memory >= soft;
        if over && !d.soft_reported.get() {
            // At most one entry per domain until taken: a guest going up and down across
            // the soft quota must not grow the list.
            let mut warnings = self.warnings.borrow_mut();
            if !warnings.contains(&domid) {
                warnings.push(domid);
            }
        }
        d.soft_reported.set(over);
    }

    /// Domains that reached their soft memory quota since the last call (for the log).
    pub fn take_warnings(&mut self) -> Vec<DomId> {
        core::mem::take(self.warnings.get_mut())
    }

    /// The global soft memory quota (`xenstore-control quota-soft`).
    pub fn memory_soft_quota(&self) -> u32 {
        self.config.memory_soft
    }

    /// Sets the global soft memory quota (0 = none).
    pub fn set_memory_soft_quota(&mut self, conn: ConnId, value: u32) -> XsResult<()> {
        if !self.caller(conn)?.privileged {
            return Err(XsError::Acces);
        }
        self.config.memory_soft = value;
        Ok(())
    }

    /// Adds (or with a negative delta, removes) memory charged to `domid`.
    pub(super) fn charge(&mut self, domid: DomId, delta: i64) {
        if let Some(d) = self.domains.get_mut(&domid) {
            d.usage.memory = d.usage.memory.saturating_add_signed(delta);
        }
    }

    /// The record of `domid`, created if the store did not know the domain yet (`None`
    /// only if the table could not place it, which every domid fits).
    pub(super) fn ensure_domain(&mut self, domid: DomId) -> Option<&mut Domain> {
        let now = self.generation;
        self.domains
            .get_or_insert_with(domid, || Domain::new(now, features::ALL))
    }

    // ----- quotas --------------------------------------------------------------------------

    /// `GET_QUOTA`: a global quota (`domid` `None`) or one domain's effective quota, its
    /// limit or (for `soft-memory`) its soft level.
    ///
    /// A domain the store does not know yet is answered too, with the global value (which
    /// is what it will have), as C xenstored 4.22 answers for any domain that exists:
    /// toolstacks read and set a new domain's quotas before they introduce it. Only ids that
    /// can name no domain (`DOMID_SELF`, `DOMID_ANY`, ...) are `ENOENT`, as for C, which asks
    /// Xen whether the domain exists (the store cannot ask).
    pub fn get_quota(
        &self,
        conn: ConnId,
        domid: Option<DomId>,
        name: impl Into<QuotaName>,
    ) -> XsResult<u32> {
        let caller = self.caller(conn)?;
        if !caller.privileged {
            return Err(XsError::Acces);
        }
        let name = name.into();
        if name.soft && !name.kind.has_soft() {
            return Err(XsError::Inval);
        }
        let record = match domid {
            None => None,
            Some(d) if d.is_real() => self.domains.get(&d),
            Some(_) => return Err(XsError::NoEnt),
        };
        Ok(match (name.soft, record) {
            (false, record) => self.quota_in(record, name.kind),
            (true, Some(d)) => d.memory_soft.unwrap_or(self.config.memory_soft),
            (true, None) => self.config.memory_soft,
        })
    }

    /// `SET_QUOTA`: sets a global quota or one domain's own value (0 = unlimited), its limit
    /// or (for `soft-memory`) its soft level.
    ///
    /// A domain the store does not know yet gets a record holding the value, as C xenstored
    /// 4.22 creates one (`find_or_alloc_existing_domain`): libxl sets a guest's quotas before
    /// it introduces the guest, and `INTRODUCE` takes the record over. Ids that can name no
    /// domain are `ENOENT` (see [`Store::get_quota`]). `u32::MAX` is refused with `EINVAL` as
    /// C refuses it (its marker for "no value", `Q_VAL_DISABLED`).
    pub fn set_quota(
        &mut self,
        conn: ConnId,
        domid: Option<DomId>,
        name: impl Into<QuotaName>,
        value: u32,
    ) -> XsResult<()> {
        let caller = self.caller(conn)?;
        if !caller.privileged {
            return Err(XsError::Acces);
        }
        let name = name.into();
        if value == u32::MAX || (name.soft && !name.kind.has_soft()) {
            return Err(XsError::Inval);
        }
        match domid {
            None if name.soft => self.config.memory_soft = value,
            None => self.config.quotas.set(name.kind, value),
            Some(d) if !d.is_real() => return Err(XsError::NoEnt),
            Some(d) => {
                let record = self.ensure_domain(d).ok_or(XsError::NoMem)?;
                if name.soft {
                    record.memory_soft = Some(value);
                    // Reported again against the new level.
                    record.soft_reported.set(false);
                } else {
                    record.overrides.set(name.kind, Some(value));
                }
            }
        }
        Ok(())
    }

    /// What a domain currently uses, if the store knows it.
    pub fn usage(&self, domid: DomId) -> Option<Usage> {
        self.domains.get(&domid).map(|d| d.usage)
    }

    /// Domains the store knows, in domid order.
    pub fn known_domains(&self) -> impl Iterator<Item = DomId> + '_ {
        self.domains.keys()
    }
}
