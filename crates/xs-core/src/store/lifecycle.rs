//! Domains coming and going: `INTRODUCE`, `RELEASE`, shutdown, `RESUME`, `SET_TARGET`,
//! features.

use alloc::vec::Vec;

use super::domain::Introduction;
use super::{ConnId, Match, Store, features};
use crate::domid::{DomId, push_decimal};
use crate::error::{XsError, XsResult};
use crate::path;
use crate::perms::{Access, Perm};

/// Which special node an event is about (index into `Store::specials`).
const INTRODUCE: usize = 0;
const RELEASE: usize = 1;

/// What `INTRODUCE` did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Introduced {
    /// The domain is new to the store: map its ring and bind its event channel.
    New,
    /// The domain was already introduced: only its event channel is (re)bound, as Xen's
    /// toolstack does after a resume.
    Rebind,
}

/// Who owns a default node of a new domain.
#[derive(Clone, Copy)]
enum Owner {
    /// Owned by dom0, readable by the guest.
    Toolstack,
    /// Owned by (writable by) the guest.
    Guest,
}

/// The nodes `INTRODUCE` creates under `/local/domain/<domid>`, as libxl lays out a new
/// domain (`libxl__domain_make`) and `docs/misc/xenstore-paths.pandoc` documents them.
///
/// `device` itself is the toolstack's and only readable by the guest, as libxl makes it and
/// as `xenstore-paths.pandoc` marks `~/device/*` (not `[w]`): the guest owns the frontend
/// directories the toolstack creates for it, but cannot create new ones, which is what makes
/// the XSA-175 protection hold (a guest may remove its frontend directory, and cannot
/// re-create it). Only `device/suspend/event-channel` is the guest's.
const DEFAULT_NODES: &[(&str, &str, Owner)] = &[
    ("control", "", Owner::Toolstack),
    ("control/shutdown", "", Owner::Guest),
    ("control/feature-poweroff", "", Owner::Guest),
    ("control/feature-reboot", "", Owner::Guest),
    ("control/feature-suspend", "", Owner::Guest),
    ("control/feature-s3", "", Owner::Guest),
    ("control/feature-s4", "", Owner::Guest),
    ("control/sysrq", "", Owner::Guest),
    (
        "control/platform-feature-multiprocessor-suspend",
        "1",
        Owner::Toolstack,
    ),
    (
        "control/platform-feature-xs_reset_watches",
        "1",
        Owner::Toolstack,
    ),
    ("platform", "", Owner::Toolstack),
    ("platform/acpi", "1", Owner::Toolstack),
    ("platform/acpi_s3", "1", Owner::Toolstack),
    ("platform/acpi_s4", "1", Owner::Toolstack),
    ("platform/acpi_laptop_slate", "0", Owner::Toolstack),
    ("device", "", Owner::Toolstack),
    ("device/suspend", "", Owner::Toolstack),
    ("device/suspend/event-channel", "", Owner::Guest),
    ("attr", "", Owner::Guest),
    ("data", "", Owner::Guest),
    ("drivers", "", Owner::Guest),
    ("error", "", Owner::Guest),
    ("feature", "", Owner::Guest),
];

impl Store {
    pub(crate) fn require_privileged(&self, conn: ConnId) -> XsResult<()> {
        if self.caller(conn)?.privileged {
            Ok(())
        } else {
            Err(XsError::Acces)
        }
    }

    /// A domain that `RELEASE`/`RESUME`/`INTRODUCE` may name: real and not privileged.
    fn guest_domid(&self, domid: DomId) -> XsResult<()> {
        if domid.is_real() && !self.is_privileged(domid) {
            Ok(())
        } else {
            Err(XsError::Inval)
        }
    }

    /// `INTRODUCE` from connection `conn` (which must be privileged): see
    /// [`Store::introduce_domain`].
    ///
    /// This is the store's part only. A program that serves rings must also map the ring and
    /// bind the channel: it introduces domains through [`crate::protocol::introduce`] (or
    /// `xs_serve::Dispatcher::introduce`), which tells its [`crate::protocol::Host`] as the
    /// protocol path does.
    pub fn introduce(
        &mut self,
        conn: ConnId,
        domid: DomId,
        intro: Introduction,
    ) -> XsResult<Introduced> {
        self.require_privileged(conn)?;
        self.introduce_domain(domid, intro)
    }

    /// The store starts serving `domid`, whose ring and event channel are in `intro`:
    /// creates the domain's default nodes (if configured) and fires `@introduceDomain`. The
    /// caller (the program owning the I/O) maps the ring and binds the channel as the result
    /// says. Needs no connection: this is the host acting as the toolstack.
    pub fn introduce_domain(&mut self, domid: DomId, intro: Introduction) -> XsResult<Introduced> {
        self.introduction_kind(domid, intro)?;
        let privileged = self.is_privileged(domid);
        let record = self.ensure_domain(domid).ok_or(XsError::Io)?;
        if record.introduced.is_some() || (privileged && domid == DomId::DOM0) {
            record.introduced = Some(intro);
            return Ok(Introduced::Rebind);
        }
        record.introduced = Some(intro);
        record.shutdown_reported = false;
        if self.config.domain_nodes {
            self.create_domain_nodes(domid)?;
        }
        self.fire_special(INTRODUCE, domid);
        Ok(Introduced::New)
    }

    /// What introducing `domid` would be, or why it is refused, changing nothing: the checks
    /// of [`Store::introduce_domain`], for a program that must set the domain's ring up
    /// before the store takes it (as C xenstored maps the ring before it answers).
    pub fn introduction_kind(&self, domid: DomId, intro: Introduction) -> XsResult<Introduced> {
        // Any real domain, privileged ones included (C xenstored introduces dom0's and
        // `--priv-domid`'s rings too); only RELEASE and RESUME refuse them.
        if !domid.is_real() || intro.evtchn == 0 {
            return Err(XsError::Inval);
        }
        let introduced = self
            .domains
            .get(&domid)
            .is_some_and(|d| d.introduced.is_some());
        if introduced || (self.is_privileged(domid) && domid == DomId::DOM0) {
            Ok(Introduced::Rebind)
        } else {
            Ok(Introduced::New)
        }
    }

    fn create_domain_nodes(&mut self, domid: DomId) -> XsResult<()> {
        let toolstack = [Perm::owner(DomId::DOM0), Perm::new(domid, Access::READ)];
        let guest = [Perm::owner(domid)];
        let mut home = Store::domain_path(domid);
        let mut id = Vec::new();
        push_decimal(&mut id, u64::from(domid.0));
        let now = self.change_gen();
        let created = self.ensure_node(&home, b"", &toolstack, now)?;
        let mut p = home.clone();
        path::push_segment(&mut p, b"domid");
        self.ensure_node(&p, &id, &toolstack, now)?;
        for (rel, value, owner) in DEFAULT_NODES {
            let perms: &[Perm] = match owner {
                Owner::Toolstack => &toolstack,
                Owner::Guest => &guest,
            };
            p.clear();
            p.extend_from_slice(&home);
            path::push_segment(&mut p, rel.as_bytes());
            self.ensure_node(&p, value.as_bytes(), perms, now)?;
        }
        if created {
            let index = self.tree.lookup(&home);
            self.fire(&home, Match::Subtree, index, None);
        }
        home.clear();
        Ok(())
    }

    /// Creates `path` with `value` and `perms` unless it exists (missing parents inherit
    /// their parent's permissions). Returns whether it was created.
    fn ensure_node(
        &mut self,
        path: &[u8],
        value: &[u8],
        perms: &[Perm],
        now: u64,
    ) -> XsResult<bool> {
        let (mut parent, covered) = self.tree.lookup_nearest(path);
        if covered == path.len() {
            return Ok(false);
        }
        let rest = path.get(covered..).unwrap_or_default();
        let names: Vec<&[u8]> = path::segments(rest).collect();
        let last = names.len().saturating_sub(1);
        for (i, name) in names.iter().enumerate() {
            let inherited;
            let (v, p): (&[u8], &[Perm]) = if i == last {
                (value, perms)
            } else {
                let node = self.tree.node(parent).ok_or(XsError::Io)?;
                inherited = self.sanitize_perms(node.perms(), node.data_gen);
                (b"", &inherited)
            };
            parent = self.create_node(parent, name, v, p, now)?;
        }
        Ok(true)
    }

    /// `RELEASE` from connection `conn` (which must be privileged): see
    /// [`Store::release_domain`]. The store's part only, as for [`Store::introduce`]:
    /// programs use [`crate::protocol::release`].
    pub fn release(&mut self, conn: ConnId, domid: DomId) -> XsResult<()> {
        self.require_privileged(conn)?;
        self.release_domain(domid)
    }

    /// The store stops serving `domid`, an introduced unprivileged domain (see
    /// [`Store::domain_gone`]). Needs no connection.
    pub fn release_domain(&mut self, domid: DomId) -> XsResult<()> {
        self.guest_domid(domid)?;
        if !self.is_introduced(domid) {
            return Err(XsError::NoEnt);
        }
        self.domain_gone(domid);
        Ok(())
    }

    /// The domain is gone (released, or reported dead by the platform): its connections'
    /// watches and transactions are dropped and the connections marked dead, every node it
    /// owns is removed with everything below it (watches fire for other domains), its home
    /// directory is removed (if configured), its record and every permission entry naming
    /// it stop counting, and `@releaseDomain` fires. A later domain with the same domid
    /// starts with no nodes, permissions or quota usage. Does nothing for privileged or
    /// unknown domains.
    pub fn domain_gone(&mut self, domid: DomId) {
        if self.is_privileged(domid) || !self.domains.contains_key(&domid) {
            return;
        }
        let was_introduced = self.is_introduced(domid);
        // Its connections first, so that no events are queued for them below.
        let conns: Vec<ConnId> = self
            .conns_iter()
            .filter(|(_, c)| c.domid() == domid)
            .filter_map(|(i, _)| self.conns.id_at(i).map(ConnId))
            .collect();
        for conn in conns {
            self.reset_connection(conn);
            if let Some(c) = self.conns.get_id_mut(conn.0) {
                c.dead = true;
            }
        }
        let now = self.change_gen();
        let owned = self
            .domains
            .get(&domid)
            .map(|d| d.owned.clone())
            .unwrap_or_default();
        if let Some(heir) = self.config.orphans_to.filter(|&h| h != domid) {
            self.hand_over(domid, owned, heir, now);
            return self.forget_domain(domid, was_introduced, now);
        }
        // Remove the topmost nodes it owns, each with everything below it, as C xenstored's
        // top-down walk does (the nodes below fire only watches on exactly them).
        let mut tops: Vec<(Vec<u8>, u32)> = owned
            .into_iter()
            .filter(|&i| !self.has_ancestor_owned_by(i, domid))
            .map(|i| {
                let mut p = Vec::new();
                self.tree.path_of(i, &mut p);
                (p, i)
            })
            .collect();
        tops.sort();
        let mut owned_root = false;
        for (node_path, index) in tops {
            if index == self.tree.root {
                owned_root = true;
            } else if self.tree.node(index).is_some() {
                self.delete_subtree(index, &node_path, now, DomId::DOM0, true);
            }
        }
        if owned_root {
            // Nobody but dom0 may own the root: hand it back rather than remove it. Last, so
            // that the removals above are reported to whoever could read the root before
            // (a removed node's watchers may read it or its parent, as in C xenstored).
            let root = self.tree.root;
            let _ = self.set_node_perms(root, b"/", &[Perm::owner(DomId::DOM0)], now, DomId::DOM0);
        }
        self.forget_domain(domid, was_introduced, now);
    }

    /// The end of [`Store::domain_gone`], once the domain's nodes are dealt with: its home
    /// (if configured) and its record go, and `@releaseDomain` fires.
    fn forget_domain(&mut self, domid: DomId, was_introduced: bool, now: u64) {
        if self.config.remove_home_on_release {
            let home = Store::domain_path(domid);
            if let Some(index) = self.tree.lookup(&home) {
                self.delete_subtree(index, &home, now, DomId::DOM0, true);
            }
        }
        self.domains.remove(&domid);
        let targeting: Vec<DomId> = self
            .domains
            .iter_mut()
            .filter(|(_, d)| d.target == Some(domid))
            .map(|(id, d)| {
                d.target = None;
                id
            })
            .collect();
        for d in targeting {
            self.refresh_callers(d);
        }
        if was_introduced {
            self.fire_special(RELEASE, domid);
        }
    }

    /// C xenstored's `-K` (`keep_orphans`, see [`super::StoreConfig::orphans_to`]): every node in
    /// `owned` (the nodes `domid` owns) is given to `heir`, keeping its access for others and
    /// its other entries except those naming `domid`, as C does. Nothing fires: C rewrites
    /// the nodes without firing watches, and no one's view of the node changes but the
    /// owner's, who is gone. The root goes back to dom0 as in [`Store::domain_gone`].
    fn hand_over(&mut self, domid: DomId, owned: Vec<u32>, heir: DomId, now: u64) {
        let mut node_path = Vec::new();
        for index in owned {
            let Some(node) = self.tree.node(index) else {
                continue;
            };
            let mut perms = node.perms();
            let Some(first) = perms.next() else {
                continue;
            };
            let to = if index == self.tree.root {
                DomId::DOM0
            } else {
                heir
            };
            let perms: Vec<Perm> = core::iter::once(Perm::new(to, first.access))
                .chain(perms.filter(|p| p.domid != domid))
                .collect();
            node_path.clear();
            self.tree.path_of(index, &mut node_path);
            // Cannot fail for a node that exists: its list only got shorter.
            let _ = self.set_node_perms(index, &node_path, &perms, now, DomId::DOM0);
        }
    }

    /// Whether a proper ancestor of the node at `index`, other than the root, is owned by
    /// `domid`.
    fn has_ancestor_owned_by(&self, index: u32, domid: DomId) -> bool {
        // The root never counts: it is handed back to dom0, not removed, so it does not take
        // the nodes below it along (and it is its own parent).
        let root = self.tree.root;
        let mut cur = index;
        while cur != root {
            let Some(parent) = self.tree.node(cur).map(|n| n.parent) else {
                return false;
            };
            if parent == root {
                return false;
            }
            if self.tree.node(parent).is_some_and(|p| p.owner() == domid) {
                return true;
            }
            cur = parent;
        }
        false
    }

    /// The platform saw `domid` shut down (or crash): fires `@releaseDomain` once, until
    /// `RESUME` re-arms it.
    pub fn domain_shutdown(&mut self, domid: DomId) {
        let Some(d) = self.domains.get_mut(&domid) else {
            return;
        };
        if d.introduced.is_none() || d.shutdown_reported {
            return;
        }
        d.shutdown_reported = true;
        self.fire_special(RELEASE, domid);
    }

    /// `RESUME`: re-arms `@releaseDomain` for the domain's next shutdown.
    pub fn resume(&mut self, conn: ConnId, domid: DomId) -> XsResult<()> {
        self.require_privileged(conn)?;
        self.guest_domid(domid)?;
        let d = self
            .domains
            .get_mut(&domid)
            .filter(|d| d.introduced.is_some())
            .ok_or(XsError::NoEnt)?;
        d.shutdown_reported = false;
        Ok(())
    }

    /// `IS_DOMAIN_INTRODUCED`. Privileged domains always are.
    pub fn is_introduced(&self, domid: DomId) -> bool {
        self.is_privileged(domid)
            || self
                .domains
                .get(&domid)
                .is_some_and(|d| d.introduced.is_some())
    }

    /// Where an introduced domain's ring is.
    pub fn introduction(&self, domid: DomId) -> Option<Introduction> {
        self.domains.get(&domid).and_then(|d| d.introduced)
    }

    /// `SET_TARGET`: `domid` (a device model, say) acts with `target`'s rights on every node.
    pub fn set_target(&mut self, conn: ConnId, domid: DomId, target: DomId) -> XsResult<()> {
        self.require_privileged(conn)?;
        if !domid.is_real() || !target.is_real() {
            return Err(XsError::Inval);
        }
        if !self.is_introduced(domid) || !self.is_introduced(target) {
            return Err(XsError::NoEnt);
        }
        let d = self.domains.get_mut(&domid).ok_or(XsError::NoEnt)?;
        d.target = Some(target);
        self.refresh_callers(domid);
        Ok(())
    }

    /// `GET_FEATURE`: the feature bits of `domid`, or with `None`, those of the caller. A
    /// domain the store does not know yet has all of them (it has until `SET_FEATURE`
    /// limits them); ids that can name no domain are `ENOENT`, as C xenstored answers for a
    /// domain Xen does not know.
    pub fn get_features(&self, conn: ConnId, domid: Option<DomId>) -> XsResult<u32> {
        let caller = self.caller(conn)?;
        let domid = match domid {
            None => caller.domid,
            Some(d) if caller.privileged && d.is_real() => d,
            Some(_) if caller.privileged => return Err(XsError::NoEnt),
            Some(_) => return Err(XsError::Acces),
        };
        Ok(self.domain_features(domid))
    }

    /// The `XENSTORE_SERVER_FEATURE_*` bits offered to `domid` (all the store implements,
    /// unless `SET_FEATURE` limited them). Needs no connection: for the program serving the
    /// domain's ring, which advertises them in the ring page.
    pub fn domain_features(&self, domid: DomId) -> u32 {
        self.domains
            .get(&domid)
            .map_or(features::ALL, |d| d.features)
    }

    /// `SET_FEATURE`: limits the features offered to `domid`, before it is introduced.
    ///
    /// As C xenstored 4.22 (`do_set_feature`), in its order: an id that can name no domain
    /// is `ENOENT`; a domain already introduced is `EBUSY` (its ring page already advertises
    /// its features), dom0 always (`docs/misc/xenstore.txt`: "dom0 will always have all
    /// supported features enabled"); bits the store does not implement are `EINVAL`.
    pub fn set_features(&mut self, conn: ConnId, domid: DomId, bits: u32) -> XsResult<()> {
        self.require_privileged(conn)?;
        if !domid.is_real() {
            return Err(XsError::NoEnt);
        }
        let introduced = self
            .domains
            .get(&domid)
            .is_some_and(|d| d.introduced.is_some());
        if introduced || domid == DomId::DOM0 {
            return Err(XsError::Busy);
        }
        if bits & !features::ALL != 0 {
            return Err(XsError::Inval);
        }
        self.ensure_domain(domid).ok_or(XsError::NoMem)?.features = bits;
        Ok(())
    }
}
