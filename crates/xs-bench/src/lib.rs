//! Shared pieces of the benchmarks: a counting allocator, a fixed-seed PRNG, a realistic
//! Xen host tree, and a small timing harness that prints `bench <name> <value> <unit>` lines.
//!
//! The benchmark programs live in `src/bin/`; each prints one line per measurement on
//! stdout and everything else (progress, comparisons with the goals) on stderr.

pub mod client;
pub mod counting_alloc;
pub mod daemon;
pub mod harness;
pub mod host;
pub mod latency;
pub mod rng;

pub use counting_alloc::CountingAlloc;
pub use harness::{Harness, Unit};
pub use rng::XorShift;
