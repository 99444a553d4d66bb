//! The XenStore ring page protocol (`docs/misc/xenstore-ring.txt`, `xs_wire.h`): the
//! `xenstore_domain_interface` page shared between a guest and the store, for both ends.
//!
//! Not yet implemented: this crate is a placeholder in the workspace until the ring issue
//! lands. It holds the protocol constants the rest of the workspace already relies on.

#![no_std]
#![forbid(unsafe_code)]

/// Bytes in each of the request and response rings (`XENSTORE_RING_SIZE`).
pub const RING_SIZE: usize = 1024;
