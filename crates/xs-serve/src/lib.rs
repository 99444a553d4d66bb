//! The XenStore serving layer every embedder shares: `no_std` + `alloc`.
//!
//! * [`Services`]: what the platform provides (map a domain's store page, bind and notify
//!   event channels, domain state, entropy, time), one trait with a documented contract;
//!   `fake::FakeServices` (feature `fake`) implements it over heap pages for host tests.
//! * [`Dispatcher`]: one [`xs_core::Store`] serving many domains' rings over any
//!   [`Services`], with in-process connections for the program's own clients, and
//!   host-side `introduce`/`release`.
//! * [`pump`]: the glue between one ring ([`xs_ring::Server`]) and one protocol connection
//!   ([`xs_core::protocol::Connection`]), which the dispatcher runs for every ring.
//!
//! The layers (design notes §1): xs-core is the store and knows no I/O; xs-ring moves bytes
//! through a shared page and knows no messages; this crate joins the two, generic over the
//! platform; programs (the stub domain's x86-glue, xs-host, a VMM) implement [`Services`].

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
#[cfg(test)]
extern crate std;

pub mod client;
pub mod dispatcher;
#[cfg(feature = "fake")]
pub mod fake;
pub mod guest;
mod lines;
pub mod pump;
pub mod services;
pub mod xenbus;

pub use dispatcher::{
    BootPort, BootRing, Bootstrap, Dispatcher, Error, ServeConfig, WARNING, map_again,
};
pub use lines::BoundedLines;
pub use services::{DomainState, Services};

/// What an embedder imports: `use xs_serve::prelude::*;` brings the store, the dispatcher,
/// the platform trait, the clients and the xenbus helper.
pub mod prelude {
    pub use xs_core::perms::{Access, Perm};
    pub use xs_core::store::{Introduced, Introduction, Session};
    pub use xs_core::{ConnId, DomId, Store, StoreConfig, TxId, XsError, XsResult};
    pub use xs_ring::{Page, RawPage, SharedPage};

    pub use crate::client::XsClient;
    pub use crate::dispatcher::{BootPort, BootRing, Bootstrap, Dispatcher, ServeConfig};
    pub use crate::guest::{GuestClient, Waiter};
    pub use crate::services::{DomainState, Services};
    pub use crate::xenbus::{End, XenbusDevice, XenbusState, backend_next, frontend_next};
}
