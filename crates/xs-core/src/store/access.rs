//! Who may do what to a node.
//!
//! Follows C xenstored's `perm_for_conn`: privileged callers and the node's owner (or a
//! domain acting for the owner through `SET_TARGET`) have every right; otherwise the first
//! later entry naming the caller (or its target, or `DOMID_ANY`) decides; otherwise the
//! owner entry's access is the default. Entries naming a domain that no longer exists, or a
//! newer domain that reuses the id, are skipped (see [`crate::store::Store`]'s liveness rule).

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
    /// Domain this one acts for (`SET_TARGET`), e.g. a device model for its guest.
    pub(crate) target: Option<DomId>,
}

impl Caller {
    fn is(&self, domid: DomId) -> bool {
        domid == self.domid || Some(domid) == self.target
    }
}

/// Rights of `caller` on a node with `perms`, where `live(domid)` tells whether a non-owner
/// entry still refers to the domain it was written for.
pub(crate) fn rights(
    caller: &Caller,
    mut perms: impl Iterator<Item = Perm>,
    live: impl Fn(DomId) -> bool,
) -> Rights {
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
        .find(|p| (p.domid == DomId::ANY || caller.is(p.domid)) && live(p.domid))
        .map_or(Rights::from(owner.access), |p| Rights::from(p.access))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(d: u16) -> Caller {
        Caller {
            domid: DomId(d),
            privileged: false,
            target: None,
        }
    }

    fn p(s: &str) -> Perm {
        Perm::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn owner_default_and_entries() {
        let perms = [p("r3"), p("w5"), p("n6")];
        let all = |_| true;
        assert_eq!(rights(&caller(3), perms.into_iter(), all), Rights::all());
        assert_eq!(rights(&caller(5), perms.into_iter(), all), Rights::WRITE);
        assert_eq!(rights(&caller(6), perms.into_iter(), all), Rights::empty());
        assert_eq!(rights(&caller(7), perms.into_iter(), all), Rights::READ);
        let priv0 = Caller {
            privileged: true,
            ..caller(0)
        };
        assert_eq!(rights(&priv0, perms.into_iter(), all), Rights::all());
    }

    #[test]
    fn target_any_and_stale_entries() {
        let perms = [p("n3"), p("b5"), p("r32757")];
        let dm = Caller {
            target: Some(DomId(3)),
            ..caller(9)
        };
        assert_eq!(rights(&dm, perms.into_iter(), |_| true), Rights::all());
        // r32757 is DOMID_ANY.
        assert_eq!(
            rights(&caller(8), perms.into_iter(), |_| true),
            Rights::READ
        );
        // A stale entry for 5 is skipped: 5 falls through to DOMID_ANY.
        assert_eq!(
            rights(&caller(5), perms.into_iter(), |d| d != DomId(5)),
            Rights::READ
        );
    }
}
