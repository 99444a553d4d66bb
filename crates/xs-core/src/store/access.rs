//! Who may do what to a node.
//!
//! Follows C xenstored's `perm_for_conn`: privileged callers and the node's owner (or a
//! domain acting for the owner through `SET_TARGET`) have every right; otherwise the first
//! later entry naming the caller (or its target, or `DOMID_ANY`) decides; otherwise the
//! owner entry's access is the default. Entries naming a domain that no longer exists, or a
//! newer domain that reuses the id, are skipped: an entry written at generation `stamp`
//! refers to the caller only if the caller's domain record is not younger than it (the
//! caller carries its record's generation, so a check needs no look-up).

use bitflags::bitflags;

use crate::domid::DomId;
use crate::perms::{Access, Perm};

bitflags! {
    /// Rights of a caller on a node.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub(crate) struct Rights: u8 {
        const READ = 0x01;
        const WRITE = 0x02;
        /// May change the node's permissions.
        const OWNER = 0x04;
    }
}

impl From<Access> for Rights {
    fn from(a: Access) -> Rights {
        let mut r = Rights::empty();
        if a.contains(Access::READ) {
            r |= Rights::READ;
        }
        if a.contains(Access::WRITE) {
            r |= Rights::WRITE;
        }
        r
    }
}

/// The identity a request is made with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Caller {
    pub(crate) domid: DomId,
    pub(crate) privileged: bool,
    /// Generation at which the caller's domain record was created.
    pub(crate) since: u64,
    /// Domain this one acts for (`SET_TARGET`), e.g. a device model for its guest, with its
    /// record's generation.
    pub(crate) target: Option<(DomId, u64)>,
}

impl Caller {
    fn is(&self, domid: DomId) -> bool {
        domid == self.domid || self.target.is_some_and(|(t, _)| t == domid)
    }

    /// Whether a non-owner entry for `domid` written at `stamp` refers to the caller.
    fn named_by(&self, domid: DomId, stamp: u64) -> bool {
        domid == DomId::ANY
            || (domid == self.domid && self.since <= stamp)
            || self
                .target
                .is_some_and(|(t, since)| t == domid && since <= stamp)
    }
}

/// Rights of `caller` on a node with `perms`, last written at generation `stamp`.
pub(crate) fn rights(caller: &Caller, mut perms: impl Iterator<Item = Perm>, stamp: u64) -> Rights {
    if caller.privileged {
        return Rights::all();
    }
    let Some(owner) = perms.next() else {
        return Rights::empty();
    };
    if caller.is(owner.domid) {
        return Rights::all();
    }
    perms
        .find(|p| caller.named_by(p.domid, stamp))
        .map_or(Rights::from(owner.access), |p| Rights::from(p.access))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(d: u16) -> Caller {
        Caller {
            domid: DomId(d),
            privileged: false,
            since: 0,
            target: None,
        }
    }

    fn p(s: &str) -> Perm {
        Perm::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn owner_default_and_entries() {
        let perms = [p("r3"), p("w5"), p("n6")];
        assert_eq!(rights(&caller(3), perms.into_iter(), 9), Rights::all());
        assert_eq!(rights(&caller(5), perms.into_iter(), 9), Rights::WRITE);
        assert_eq!(rights(&caller(6), perms.into_iter(), 9), Rights::empty());
        assert_eq!(rights(&caller(7), perms.into_iter(), 9), Rights::READ);
        let priv0 = Caller {
            privileged: true,
            ..caller(0)
        };
        assert_eq!(rights(&priv0, perms.into_iter(), 9), Rights::all());
    }

    #[test]
    fn target_any_and_stale_entries() {
        let perms = [p("n3"), p("b5"), p("r32757")];
        let dm = Caller {
            target: Some((DomId(3), 0)),
            ..caller(9)
        };
        assert_eq!(rights(&dm, perms.into_iter(), 9), Rights::all());
        // r32757 is DOMID_ANY.
        assert_eq!(rights(&caller(8), perms.into_iter(), 9), Rights::READ);
        // The entry for 5 predates the current domain 5: skipped, 5 falls through to
        // DOMID_ANY.
        let young = Caller {
            since: 10,
            ..caller(5)
        };
        assert_eq!(rights(&young, perms.into_iter(), 9), Rights::READ);
        assert_eq!(
            rights(&caller(5), perms.into_iter(), 9),
            Rights::READ | Rights::WRITE
        );
    }
}
