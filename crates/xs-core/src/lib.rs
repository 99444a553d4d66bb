//! The XenStore engine: `no_std` + `alloc`, sans-I/O.
//!
//! [`store::Store`] holds the node tree with Xen's permission, transaction, watch, quota and
//! domain semantics (`docs/misc/xenstore.txt`). It performs no I/O: programs feed it requests
//! and take replies and watch events out, whether the bytes come from a ring page, a socket
//! or an in-process caller ([`store::Session`]).

#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]
#![warn(missing_docs)]

extern crate alloc;

pub mod domid;
pub mod error;
pub mod path;
pub mod perms;
pub mod protocol;
pub mod quota;
pub mod store;
pub mod wire;

pub use store::state;

pub use domid::DomId;
pub use error::{XsError, XsResult};
pub use perms::{Access, Perm};
pub use quota::{QuotaKind, QuotaName, Quotas};
pub use store::{ConnId, Session, Store, StoreConfig, TxId, WatchEvent};
