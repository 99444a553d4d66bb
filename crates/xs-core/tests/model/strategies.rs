//! Generators shared by the property tests (`model.rs`, `serializable.rs`).

use proptest::prelude::*;
use xs_core::{Access, DomId, Perm};

/// Any of the four access rights a permission entry can carry.
pub(crate) fn access() -> impl Strategy<Value = Access> {
    prop_oneof![
        Just(Access::empty()),
        Just(Access::READ),
        Just(Access::WRITE),
        Just(Access::READ | Access::WRITE),
    ]
}

/// A permission entry for a domain from `dom`.
pub(crate) fn entry(dom: impl Strategy<Value = u16>) -> impl Strategy<Value = Perm> {
    (dom, access()).prop_map(|(d, a)| Perm::new(DomId(d), a))
}

/// A permission list: the owner's entry from `owner`, then up to two entries from `other`.
pub(crate) fn perms(
    owner: impl Strategy<Value = u16>,
    other: impl Strategy<Value = u16>,
) -> impl Strategy<Value = Vec<Perm>> {
    (entry(owner), proptest::collection::vec(entry(other), 0..3)).prop_map(|(o, rest)| {
        let mut v = vec![o];
        v.extend(rest);
        v
    })
}
