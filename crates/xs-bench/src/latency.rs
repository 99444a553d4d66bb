//! The machine's latency for one dependent random load, measured beside the store's figures.
//!
//! A store larger than the caches answers a random read at the speed of its dependent
//! loads (a tree walk is a chain of them), so the benchmarks print this figure in the same
//! run: `read_100k` can then be read as "about N dependent loads per read".

use std::hint::black_box;
use std::time::{Duration, Instant};

use crate::XorShift;

/// One slot per cache line, so that every load touches a new line.
const STRIDE: usize = 8;

/// Nanoseconds per load of a pointer chase through a random cycle over `bytes` of memory,
/// chasing for about `duration`.
pub fn dependent_load_ns(bytes: usize, duration: Duration) -> f64 {
    let lines = (bytes / (STRIDE * 8)).max(2);
    // Sattolo's algorithm: a random permutation that is one single cycle, so the chase
    // visits every line before repeating and the prefetchers cannot guess the next one.
    let mut order: Vec<usize> = (0..lines).collect();
    let mut rng = XorShift::new(0x1A7E_0C1E);
    for i in (1..lines).rev() {
        let j = rng.below(i);
        order.swap(i, j);
    }
    let mut next = vec![0usize; lines * STRIDE];
    for (i, &line) in order.iter().enumerate() {
        let to = order[(i + 1) % lines];
        next[line * STRIDE] = to * STRIDE;
    }
    let mut at = 0usize;
    let mut loads = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        for _ in 0..10_000 {
            at = next[at];
        }
        loads += 10_000;
    }
    black_box(at);
    start.elapsed().as_nanos() as f64 / loads as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_working_set_is_faster_than_a_large_one() {
        let small = dependent_load_ns(16 << 10, Duration::from_millis(50));
        let large = dependent_load_ns(64 << 20, Duration::from_millis(200));
        assert!(small > 0.0 && large > small, "{small} ns vs {large} ns");
    }
}
