//! Shared pieces of the benchmarks: a counting allocator, a realistic Xen host tree, and a
//! small timing harness that prints `bench <name> <value> <unit>` lines. Random access
//! patterns come from `fastrand::Rng` with fixed seeds, so they are the same on every run.
//!
//! The benchmark programs live in `src/bin/`; each prints one line per measurement on
//! stdout and everything else (progress, comparisons with the goals) on stderr.

pub mod client;
pub mod counting_alloc;
pub mod daemon;
pub mod harness;
pub mod host;
pub mod latency;

pub use counting_alloc::CountingAlloc;

/// The watch-hash key of the benchmarks' stores: fixed, so that runs compare (a key only
/// matters against guests that choose paths to collide, which benchmarks do not).
pub const BENCH_HASH_KEY: [u64; 2] = [0x243f_6a88_85a3_08d3, 0x1319_8a2e_0370_7344];
pub use harness::{Harness, Unit};
