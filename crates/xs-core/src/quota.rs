//! Per-domain quotas, with C xenstored's names and defaults.
//!
//! A value of 0 disables the check. Privileged domains are never limited. A domain's effective
//! quota is its own override if one was set (`SET_QUOTA <domid>`), else the global value, so a
//! later change of the global value reaches every domain that has no override.
//!
//! That last rule differs from C xenstored 4.22, which copies the global values into a
//! domain's record when it creates the record and never looks at them again for that domain,
//! so that `xenstore-control quota set nodes 2000` (or a global `SET_QUOTA`) no longer reaches
//! the guests already running. Before 4.22 there were only global quotas, and raising one is
//! how an administrator relieves every guest at once; we keep that meaning. A toolstack that
//! wants a value for one domain sets it for that domain (as libxl 4.22 does for
//! `xenstore_quota` in a guest's configuration, before it introduces the guest), and then
//! the domain keeps it whatever the global value becomes.
//!
//! ## Names
//!
//! `GET_QUOTA` without arguments lists C xenstored 4.22's names in its order
//! ([`QuotaName::all`]): a 4.22 toolstack (libxl's `xs_get_quota_names`) reads each listed
//! name back, per domain too, so the list must be exactly what `GET_QUOTA` and `SET_QUOTA`
//! take. The limit on permission entries is `node-permissions` there, as C says since 4.19;
//! `permissions`, the name of `docs/misc/xenstore.txt` and of Xen 4.17's `xenstore-control
//! quota`, is accepted everywhere too ([`QuotaKind::from_name`]). A quota with a soft level
//! (only `memory`, as in C) is listed a second time as `soft-memory`: reaching the soft level
//! is reported, never refused. `CONTROL quota` keeps Xen 4.17's layout and names
//! ([`QuotaKind::control_name`]), which is what the `xenstore-control` of Xen 4.17 shows.

use core::fmt;

/// What a quota limits. Declared in the order `xenstore-control quota` lists them (Xen 4.17).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum QuotaKind {
    /// Nodes owned by the domain.
    Nodes,
    /// Watches registered by the domain.
    Watches,
    /// Open transactions of the domain.
    Transactions,
    /// Requests being answered plus replies and events queued for the domain.
    Outstanding,
    /// Distinct nodes one transaction may read or write.
    TransactionNodes,
    /// Bytes of store memory charged to the domain (nodes, watches, queued events,
    /// transaction data).
    Memory,
    /// Size of a node: its value plus the names of its children (one NUL each).
    NodeSize,
    /// Path length, counted after `/local/domain/<domid>/`.
    PathMax,
    /// Entries in one node's permission list.
    NodePermissions,
}

impl QuotaKind {
    /// Every quota, in the order `GET_QUOTA` and `xenstore-control quota` list them.
    pub const ALL: [QuotaKind; 9] = [
        QuotaKind::Nodes,
        QuotaKind::Watches,
        QuotaKind::Transactions,
        QuotaKind::Outstanding,
        QuotaKind::TransactionNodes,
        QuotaKind::Memory,
        QuotaKind::NodeSize,
        QuotaKind::PathMax,
        QuotaKind::NodePermissions,
    ];

    /// Every quota in the order C xenstored 4.22 lists them (its `enum accitem`): the order
    /// of `GET_QUOTA`'s list of names.
    pub const WIRE_ORDER: [QuotaKind; 9] = [
        QuotaKind::Nodes,
        QuotaKind::Watches,
        QuotaKind::Outstanding,
        QuotaKind::Memory,
        QuotaKind::Transactions,
        QuotaKind::TransactionNodes,
        QuotaKind::NodePermissions,
        QuotaKind::PathMax,
        QuotaKind::NodeSize,
    ];

    /// The name `GET_QUOTA` lists and `-Q NAME=N` takes: C xenstored's since 4.19
    /// (`node-permissions`, where Xen 4.17 said `permissions`).
    pub const fn name(self) -> &'static str {
        match self {
            QuotaKind::NodePermissions => "node-permissions",
            other => other.control_name(),
        }
    }

    /// The name `CONTROL quota` shows (as `xenstore-control quota` of Xen 4.17 printed it:
    /// `permissions`, which `docs/misc/xenstore.txt` uses too).
    pub const fn control_name(self) -> &'static str {
        match self {
            QuotaKind::Nodes => "nodes",
            QuotaKind::Watches => "watches",
            QuotaKind::Transactions => "transactions",
            QuotaKind::Outstanding => "outstanding",
            QuotaKind::TransactionNodes => "transaction-nodes",
            QuotaKind::Memory => "memory",
            QuotaKind::NodeSize => "node-size",
            QuotaKind::PathMax => "path-max",
            QuotaKind::NodePermissions => "permissions",
        }
    }

    /// Whether the quota has a soft level besides its limit: only `memory`, as in C
    /// xenstored (its other soft values are `Q_VAL_DISABLED`, and it refuses to set them).
    pub const fn has_soft(self) -> bool {
        matches!(self, QuotaKind::Memory)
    }

    /// A one-line description (as `xenstore-control quota` prints).
    pub const fn description(self) -> &'static str {
        match self {
            QuotaKind::Nodes => "Nodes per domain",
            QuotaKind::Watches => "Watches per domain",
            QuotaKind::Transactions => "Transactions per domain",
            QuotaKind::Outstanding => "Outstanding requests per domain",
            QuotaKind::TransactionNodes => "Max. number of accessed nodes per transaction",
            QuotaKind::Memory => "Total Xenstore memory per domain (error level)",
            QuotaKind::NodeSize => "Max. size of a node",
            QuotaKind::PathMax => "Max. length of a node path",
            QuotaKind::NodePermissions => "Max. number of permissions per node",
        }
    }

    /// Looks a quota up by name: C xenstored's of 4.19+ ([`QuotaKind::name`]), those of Xen
    /// 4.17 and `docs/misc/xenstore.txt` ([`QuotaKind::control_name`]), and `path-length`,
    /// which C xenstored's usage text gives for `-Q` (its parser never took it).
    pub fn from_name(name: &[u8]) -> Option<QuotaKind> {
        match name {
            b"path-length" => Some(QuotaKind::PathMax),
            _ => QuotaKind::ALL
                .into_iter()
                .find(|q| q.name().as_bytes() == name || q.control_name().as_bytes() == name),
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for QuotaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A quota as `GET_QUOTA` and `SET_QUOTA` name it: a limit (`memory`), or the soft level of a
/// quota that has one (`soft-memory`), as C xenstored 4.22 names them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct QuotaName {
    /// Which quota.
    pub kind: QuotaKind,
    /// Its soft level (reported when reached, never refused), not its limit.
    pub soft: bool,
}

/// What names a quota's soft level (C xenstored's `SOFT_PREFIX`).
const SOFT_PREFIX: &[u8] = b"soft-";

impl QuotaName {
    /// The soft level of `kind`, if it has one.
    pub const fn soft(kind: QuotaKind) -> Option<QuotaName> {
        if kind.has_soft() {
            Some(QuotaName { kind, soft: true })
        } else {
            None
        }
    }

    /// Every name `GET_QUOTA` lists, in C xenstored 4.22's order: each quota, followed by
    /// its soft level if it has one (`... memory soft-memory transactions ...`).
    pub fn all() -> impl Iterator<Item = QuotaName> {
        QuotaKind::WIRE_ORDER
            .into_iter()
            .flat_map(|kind| [Some(QuotaName::from(kind)), QuotaName::soft(kind)])
            .flatten()
    }

    /// Looks a name up: any name [`QuotaKind::from_name`] knows, or `soft-` and one of those
    /// for a quota with a soft level. (C xenstored answers `EINVAL` for `soft-nodes`, whose
    /// soft level it does not keep; so does this.)
    pub fn parse(name: &[u8]) -> Option<QuotaName> {
        match name.strip_prefix(SOFT_PREFIX) {
            Some(rest) => QuotaName::soft(QuotaKind::from_name(rest)?),
            None => QuotaKind::from_name(name).map(QuotaName::from),
        }
    }
}

impl From<QuotaKind> for QuotaName {
    fn from(kind: QuotaKind) -> QuotaName {
        QuotaName { kind, soft: false }
    }
}

impl fmt::Display for QuotaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.soft {
            f.write_str("soft-")?;
        }
        f.write_str(self.kind.name())
    }
}

/// A full set of quota values (0 = unlimited).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Quotas([u32; 9]);

impl Quotas {
    /// C xenstored's defaults: nodes 1000, watches 128, transactions 10, outstanding 20,
    /// transaction nodes 1024, memory 2.5 MiB, node size 2048, path 2048, permissions 5.
    pub const XEN_DEFAULTS: Quotas = Quotas([1000, 128, 10, 20, 1024, 2_621_440, 2048, 2048, 5]);

    /// No limits at all.
    pub const UNLIMITED: Quotas = Quotas([0; 9]);

    /// The value of one quota (0 = unlimited).
    pub fn get(&self, kind: QuotaKind) -> u32 {
        self.0.get(kind.index()).copied().unwrap_or(0)
    }

    /// Sets one quota (0 = unlimited).
    pub fn set(&mut self, kind: QuotaKind, value: u32) {
        if let Some(slot) = self.0.get_mut(kind.index()) {
            *slot = value;
        }
    }

    /// The limit as an `Option`, `None` when unlimited.
    pub fn limit(&self, kind: QuotaKind) -> Option<u64> {
        match self.get(kind) {
            0 => None,
            v => Some(u64::from(v)),
        }
    }
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas::XEN_DEFAULTS
    }
}

/// Per-domain overrides of the global quotas.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct QuotaOverrides([Option<u32>; 9]);

impl QuotaOverrides {
    /// The override for one quota, if set.
    pub fn get(&self, kind: QuotaKind) -> Option<u32> {
        self.0.get(kind.index()).copied().flatten()
    }

    /// Sets (or, with `None`, removes) the override for one quota.
    pub fn set(&mut self, kind: QuotaKind, value: Option<u32>) {
        if let Some(slot) = self.0.get_mut(kind.index()) {
            *slot = value;
        }
    }

    /// One effective quota: the override if set, else the global value.
    pub fn effective(&self, global: &Quotas, kind: QuotaKind) -> u32 {
        self.get(kind).unwrap_or_else(|| global.get(kind))
    }

    /// The effective quotas: these overrides on top of `global`.
    pub fn apply(&self, global: &Quotas) -> Quotas {
        let mut q = *global;
        for kind in QuotaKind::ALL {
            q.set(kind, self.effective(global, kind));
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_defaults() {
        for k in QuotaKind::ALL {
            assert_eq!(QuotaKind::from_name(k.name().as_bytes()), Some(k));
        }
        assert_eq!(
            QuotaKind::from_name(b"node-permissions"),
            Some(QuotaKind::NodePermissions)
        );
        assert_eq!(
            QuotaKind::from_name(b"path-length"),
            Some(QuotaKind::PathMax)
        );
        let q = Quotas::default();
        assert_eq!(q.get(QuotaKind::Nodes), 1000);
        assert_eq!(q.get(QuotaKind::NodeSize), 2048);
        assert_eq!(q.get(QuotaKind::Watches), 128);
        assert_eq!(q.get(QuotaKind::Transactions), 10);
        assert_eq!(q.get(QuotaKind::TransactionNodes), 1024);
        assert_eq!(q.get(QuotaKind::Outstanding), 20);
        assert_eq!(q.get(QuotaKind::NodePermissions), 5);
        assert_eq!(q.get(QuotaKind::PathMax), 2048);
        assert_eq!(q.get(QuotaKind::Memory), 2560 * 1024);
        assert_eq!(Quotas::UNLIMITED.limit(QuotaKind::Nodes), None);
    }

    #[test]
    fn wire_names_are_c_4_22s() {
        use alloc::string::ToString;
        use alloc::vec::Vec;
        let names: Vec<_> = QuotaName::all().map(|n| n.to_string()).collect();
        assert_eq!(
            names.join(" "),
            "nodes watches outstanding memory soft-memory transactions transaction-nodes \
             node-permissions path-max node-size"
        );
        for n in QuotaName::all() {
            assert_eq!(QuotaName::parse(n.to_string().as_bytes()), Some(n));
        }
        // Xen 4.17's name and the documented one.
        assert_eq!(
            QuotaName::parse(b"permissions"),
            Some(QuotaKind::NodePermissions.into())
        );
        assert_eq!(
            QuotaName::parse(b"soft-memory"),
            QuotaName::soft(QuotaKind::Memory)
        );
        // Only memory has a soft level; no prefix twice; nothing unknown.
        for bad in [
            &b"soft-nodes"[..],
            b"soft-soft-memory",
            b"soft-",
            b"",
            b"memory ",
            b"Memory",
        ] {
            assert_eq!(QuotaName::parse(bad), None, "{bad:?}");
        }
        assert_eq!(QuotaKind::NodePermissions.control_name(), "permissions");
    }

    #[test]
    fn overrides_apply_on_top() {
        let mut o = QuotaOverrides::default();
        o.set(QuotaKind::Nodes, Some(5));
        let q = o.apply(&Quotas::default());
        assert_eq!(q.get(QuotaKind::Nodes), 5);
        assert_eq!(q.get(QuotaKind::Watches), 128);
    }
}
