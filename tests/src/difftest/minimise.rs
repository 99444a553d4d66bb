//! Delta debugging (Zeller's ddmin, complements only, then one step at a time): the
//! shortest sequence found that still shows a difference.

use std::time::{Duration, Instant};

use super::script::Step;

/// Limits on the search.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Most candidate sequences run.
    pub runs: usize,
    /// Most time spent.
    pub time: Duration,
}

/// Shrinks `steps` while `differs` holds for the result; returns the smallest sequence
/// found and how many candidates were run. `differs(steps)` must hold on entry.
pub fn ddmin(
    steps: Vec<Step>,
    budget: Budget,
    mut differs: impl FnMut(&[Step]) -> bool,
) -> (Vec<Step>, usize) {
    let start = Instant::now();
    let mut runs = 0usize;
    let within = |runs: usize| runs < budget.runs && start.elapsed() < budget.time;
    let mut cur = steps;
    let mut n = 2usize;
    while cur.len() >= 2 && within(runs) {
        let chunk = cur.len().div_ceil(n);
        let mut reduced = false;
        let parts = n;
        for i in 0..parts {
            let lo = i * chunk;
            if lo >= cur.len() || !within(runs) {
                break;
            }
            let hi = (lo + chunk).min(cur.len());
            let candidate: Vec<Step> = cur[..lo].iter().chain(&cur[hi..]).cloned().collect();
            runs += 1;
            if differs(&candidate) {
                cur = candidate;
                n = (n - 1).max(2);
                reduced = true;
                break;
            }
        }
        if !reduced {
            if n >= cur.len() {
                break;
            }
            n = (n * 2).min(cur.len());
        }
    }
    // One step at a time, from the end (later steps depend on earlier ones more often than
    // the reverse), until no single step can go.
    let mut changed = true;
    while changed && within(runs) {
        changed = false;
        let mut i = cur.len();
        while i > 0 && within(runs) {
            i -= 1;
            let mut candidate = cur.clone();
            candidate.remove(i);
            runs += 1;
            if differs(&candidate) {
                cur = candidate;
                changed = true;
            }
        }
    }
    (cur, runs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::difftest::script::{Action, Tx};

    fn step(n: u32) -> Step {
        Step {
            conn: 0,
            action: Action::Request {
                ty: n,
                tx: Tx::None,
                payload: Vec::new(),
            },
            label: None,
        }
    }

    #[test]
    fn finds_the_two_steps_that_matter() {
        let steps: Vec<Step> = (0..40).map(step).collect();
        let budget = Budget {
            runs: 10_000,
            time: Duration::from_secs(10),
        };
        let has = |s: &[Step], t: u32| s.iter().any(|x| x.ty() == t);
        let (min, _) = ddmin(steps, budget, |s| has(s, 7) && has(s, 31));
        let kept: Vec<u32> = min.iter().map(Step::ty).collect();
        assert_eq!(kept, [7, 31]);
    }
}
