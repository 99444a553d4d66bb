//! Generators and the runner configuration shared by the property tests (`model.rs`,
//! `serializable.rs`).

use proptest::prelude::*;
use proptest::test_runner::Config;
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

/// The runner's configuration: `PROPTEST_CASES` cases, else `default_cases`; no regression
/// files (the source tree stays clean).
pub(crate) fn config(default_cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_cases);
    Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 20_000,
        ..Config::default()
    }
}
