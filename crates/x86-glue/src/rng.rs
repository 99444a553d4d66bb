//! Entropy for the store's hash keys: RDRAND, with a weak fallback.
//!
//! RDRAND is used when CPUID says the CPU has it (Xen passes the bit through to guests that
//! may use it). It can fail transiently (carry clear); Intel's guidance is to retry up to 10
//! times. A value of all ones is also treated as a failure: some AMD CPUs returned it (with
//! carry set) after a suspend, as Linux's RDRAND self-test notes.
//!
//! Without RDRAND the fallback mixes the TSC and a counter through SplitMix64. **That is not
//! real entropy**: an attacker who can estimate the boot time in TSC ticks can guess it. It
//! only keeps the hash key from being a constant; the store's maps keyed by guest data should
//! not rely on it for flood resistance on such machines.

use core::arch::x86_64::{_rdrand64_step, _rdtsc};

use crate::cpuid;

/// Attempts before RDRAND is considered broken for this draw.
const RDRAND_TRIES: usize = 10;

/// The entropy source.
#[derive(Debug)]
pub struct Rng {
    rdrand: bool,
    counter: u64,
    weak_draws: u64,
}

impl Rng {
    /// RDRAND if the CPU has it, else the weak fallback.
    pub fn detect() -> Rng {
        // `with_rdrand` asks the CPU itself.
        Rng::with_rdrand(true)
    }

    /// A source that uses RDRAND only if `rdrand` (which must be false unless the CPU has
    /// it; it is checked again here).
    pub fn with_rdrand(rdrand: bool) -> Rng {
        Rng {
            rdrand: rdrand && cpuid::has_rdrand(),
            counter: 0,
            weak_draws: 0,
        }
    }

    /// Whether RDRAND is used.
    pub fn has_rdrand(&self) -> bool {
        self.rdrand
    }

    /// Draws that fell back to the weak source.
    pub fn weak_draws(&self) -> u64 {
        self.weak_draws
    }

    /// 64 bits of entropy (weak ones when RDRAND is absent or keeps failing).
    pub fn next_u64(&mut self) -> u64 {
        if self.rdrand {
            for _ in 0..RDRAND_TRIES {
                // SAFETY: `rdrand` is true only if CPUID reported RDRAND (checked in
                // `with_rdrand`), so the instruction exists on this CPU.
                if let Some(v) = unsafe { rdrand64() }
                    && v != u64::MAX
                {
                    return v;
                }
            }
        }
        self.weak_draws = self.weak_draws.wrapping_add(1);
        // SAFETY: RDTSC is part of x86_64 and has no memory effects (a kernel could forbid it
        // to user mode with CR4.TSD; the store runs in ring 0, host tests under an OS that
        // allows it).
        let tsc = unsafe { _rdtsc() };
        self.counter = self.counter.wrapping_add(1);
        weak_mix(tsc, self.counter)
    }
}

/// One RDRAND draw.
///
/// # Safety
///
/// The CPU must support RDRAND.
#[target_feature(enable = "rdrand")]
unsafe fn rdrand64() -> Option<u64> {
    let mut v = 0u64;
    (_rdrand64_step(&mut v) == 1).then_some(v)
}

/// The fallback: SplitMix64 of the TSC and a counter. Weak (see the module notes).
pub fn weak_mix(tsc: u64, counter: u64) -> u64 {
    let mut z = tsc ^ counter.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_differ() {
        let mut rng = Rng::detect();
        let a = rng.next_u64();
        let b = rng.next_u64();
        assert_ne!(a, b);
        if rng.has_rdrand() {
            assert_eq!(rng.weak_draws(), 0);
        }
    }

    #[test]
    fn weak_fallback_is_counted_and_mixes() {
        let mut rng = Rng::with_rdrand(false);
        let a = rng.next_u64();
        let b = rng.next_u64();
        assert_ne!(a, b);
        assert_eq!(rng.weak_draws(), 2);
        // Same TSC, different counters: different outputs.
        assert_ne!(weak_mix(1, 1), weak_mix(1, 2));
    }
}
