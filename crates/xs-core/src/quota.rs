//! Per-domain quotas, with C xenstored's names and defaults.
//!
//! A value of 0 disables the check. Privileged domains are never limited. A domain's effective
//! quota is its own override if one was set (`SET_QUOTA <domid>`), else the global value, so a
//! later change of the global value reaches every domain that has no override.

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

    /// The name used by `GET_QUOTA`/`SET_QUOTA` and `xenstore-control quota`: Xen 4.17's
    /// names, which `docs/misc/xenstore.txt` also uses ("permissions"; newer C xenstored says
    /// "node-permissions", accepted too, see [`QuotaKind::from_name`]).
    pub const fn name(self) -> &'static str {
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

    /// Looks a quota up by name, also under the names newer Xen and xenstored's `-Q` use
    /// (`node-permissions`, `path-length`).
    pub fn from_name(name: &[u8]) -> Option<QuotaKind> {
        match name {
            b"node-permissions" => Some(QuotaKind::NodePermissions),
            b"path-length" => Some(QuotaKind::PathMax),
            _ => QuotaKind::ALL
                .into_iter()
                .find(|q| q.name().as_bytes() == name),
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
    fn overrides_apply_on_top() {
        let mut o = QuotaOverrides::default();
        o.set(QuotaKind::Nodes, Some(5));
        let q = o.apply(&Quotas::default());
        assert_eq!(q.get(QuotaKind::Nodes), 5);
        assert_eq!(q.get(QuotaKind::Watches), 128);
    }
}
