//! The machine's latency for one dependent random load, measured beside the store's figures.
//!
//! A store larger than the caches answers a random read at the speed of its dependent
//! loads (a tree walk is a chain of them), so the benchmarks print this figure in the same
//! run: `read_100k` can then be read as "about N dependent loads per read".

use std::hint::black_box;
use std::time::{Duration, Instant};

/// One slot per cache line, so that every load touches a new line.
const STRIDE: usize = 8;

/// A random cycle over a working set, one slot per cache line, to chase pointers through.
#[derive(Debug)]
pub struct Chase {
    next: Vec<usize>,
}

impl Chase {
    /// A cycle over `bytes` of memory (built once: it takes longer than a measurement).
    pub fn new(bytes: usize) -> Chase {
        let lines = (bytes / (STRIDE * 8)).max(2);
        // Sattolo's algorithm: a random permutation that is one single cycle, so the chase
        // visits every line before repeating and the prefetchers cannot guess the next one.
        let mut order: Vec<usize> = (0..lines).collect();
        let mut rng = fastrand::Rng::with_seed(0x1A7E_0C1E);
        for i in (1..lines).rev() {
            let j = rng.usize(..i);
            order.swap(i, j);
        }
        let mut next = vec![0usize; lines * STRIDE];
        for (i, &line) in order.iter().enumerate() {
            let to = order[(i + 1) % lines];
            next[line * STRIDE] = to * STRIDE;
        }
        Chase { next }
    }

    /// Nanoseconds per load, chasing for about `duration`.
    pub fn ns_per_load(&self, duration: Duration) -> f64 {
        let mut at = 0usize;
        let mut loads = 0u64;
        let start = Instant::now();
        while start.elapsed() < duration {
            for _ in 0..10_000 {
                at = self.next[at];
            }
            loads += 10_000;
        }
        black_box(at);
        start.elapsed().as_nanos() as f64 / loads as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_working_set_is_faster_than_a_large_one() {
        let small = Chase::new(16 << 10).ns_per_load(Duration::from_millis(50));
        let large = Chase::new(64 << 20).ns_per_load(Duration::from_millis(200));
        assert!(small > 0.0 && large > small, "{small} ns vs {large} ns");
    }
}
