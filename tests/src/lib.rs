//! Harness for the end-to-end tests in `tests/`: a daemon on a fresh socket (xs-host, or
//! Xen's C xenstored for reference runs), Xen's client tools pointed at it, and a small
//! wire-protocol client for what the tools cannot do (introduce a domain, act as a guest,
//! misbehave); and the stub-domain image booted under QEMU (`stubdom`, also used by
//! `cargo xtask stubdom`).
//!
//! Environment:
//! - `XS_E2E_DAEMON=xs-host|cxenstored`: which daemon (default xs-host).
//! - `XS_HOST_BIN=path`: the xs-host binary (default: built with `cargo build --release -p
//!   xs-host` into this test's target directory).
//! - `XS_E2E_NO_SKIP=1`: a missing client tool fails the test instead of skipping it.
//! - `XS_E2E_KEEP=1`: keep the temp directories (sockets, daemon logs).
//! - `XS_STUBDOM_IMAGE=path`: the stub-domain image (default: built with the command
//!   `cargo xtask stubdom` uses, into `<target>/stubdom`).
//! - `XS_E2E_ANCHORS=dir`: where `start-anchor.sh` is (default `../shared/anchors`).

pub mod daemon;
pub mod difftest;
pub mod ring;
pub mod skip;
pub mod stubdom;
pub mod sys;
pub mod wire;

pub use daemon::{Daemon, Kind, Output, xs_host_only};
pub use skip::{Skip, note, python_with_pyxs, tool, tools};
pub use wire::{Client, Wire, XsResult};
