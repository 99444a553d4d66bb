//! The XenStore ring page protocol (`docs/misc/xenstore-ring.txt`, `xs_wire.h`): the
//! `xenstore_domain_interface` page shared between a guest and the store, for both ends.
//!
//! * [`layout`]: the page as Xen lays it out, with compile-time offset checks.
//! * [`Page`]: how the page is reached (a real page, a page shared by threads, a loom model).
//! * [`order`]: every memory ordering of the protocol, each naming its pair.
//! * [`Server`] and [`Guest`]: the two ends, each keeping its own indices privately and
//!   checking the peer's.
//!
//! The crate moves bytes and knows nothing of messages; it needs no allocator and depends on
//! nothing. Serving an xs-core connection over a ring (the pump) is the serving layer's
//! (`xs-serve`).

#![no_std]
// Every byte of the page is the peer's to write: no panic, unchecked index or overflow may be
// reachable from it (the same table as xs-core's).
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

mod guest;
pub mod layout;
pub mod order;
mod page;
mod ring;
mod server;

pub use guest::Guest;
pub use layout::{RING_SIZE, ServerFeatures};
pub use page::{Page, RawPage, SharedPage};
pub use ring::RingFault;
pub use server::Server;
