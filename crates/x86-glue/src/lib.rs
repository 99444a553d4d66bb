//! Xen on x86_64: hypercalls, event channels, grant tables and the bare-metal entry that let
//! the store run in a stub domain or inside a Rust hypervisor.
//!
//! Not yet implemented: a placeholder in the workspace until the stub-domain issue lands.

#![no_std]
