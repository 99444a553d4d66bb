//! Two daemons' observations of one sequence, side by side.
//!
//! Steps are compared in order: the reply, and each connection's events. A step that
//! differs is looked up in the allow-list ([`super::allow`]); a rule that explains it is
//! counted, and if the rule says the stores now hold different things (`diverges`), the
//! pair is not compared further in this sequence (everything after would differ for that
//! one reason). The first step no rule explains is the pair's difference.

use super::allow::{self, Rule};
use super::run::{Observed, Reply};
use super::script::{Sequence, Step};
use crate::daemon::Kind;

/// A step two daemons disagree on and no rule explains.
#[derive(Clone, Debug)]
pub struct Difference {
    /// Index of the step in the sequence.
    pub step: usize,
    /// The two daemons and what each observed.
    pub sides: [(Kind, Observed); 2],
}

impl Difference {
    /// The step and both observations, as lines of text.
    pub fn describe(&self, seq: &Sequence) -> String {
        let step = &seq.steps[self.step];
        let w = self
            .sides
            .iter()
            .map(|(k, _)| k.name().len())
            .max()
            .unwrap_or(0);
        let mut s = format!("step {}: {step}\n", self.step);
        for (k, o) in &self.sides {
            s.push_str(&format!("  {:w$}  {}\n", k.name(), o.summary()));
        }
        s
    }
}

/// What comparing two traces found.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Steps that differed in a way a rule explains: (step, rule id).
    pub allowed: Vec<(usize, &'static str)>,
    /// The step after which the pair was no longer compared (a diverging rule).
    pub diverged_at: Option<usize>,
    /// The first difference no rule explains.
    pub difference: Option<Difference>,
}

/// Compares `a` and `b` (two daemons' traces of `seq`).
///
/// A step the allow-list explains ends the comparison if its rule always `diverges`, or
/// if a request that changes something succeeded on one daemon and not on the other, or
/// if one daemon answered and the other did not (its connection is gone).
pub fn compare(seq: &Sequence, a: (Kind, &[Observed]), b: (Kind, &[Observed])) -> Outcome {
    let mut out = Outcome::default();
    let domains = seq.layout.domains();
    for (i, ((step, oa), ob)) in seq.steps.iter().zip(a.1).zip(b.1).enumerate() {
        if oa == ob {
            continue;
        }
        let domid = domains[step.conn];
        match explain(seq, i, step, domid, (a.0, a.1), (b.0, b.1)) {
            Some(rule) => {
                out.allowed.push((i, rule.id));
                if rule.diverges || changed_one_store(step, oa, ob) {
                    out.diverged_at = Some(i);
                    return out;
                }
            }
            None => {
                out.difference = Some(Difference {
                    step: i,
                    sides: [(a.0, oa.clone()), (b.0, ob.clone())],
                });
                return out;
            }
        }
    }
    out
}

/// Whether a request that changes the store (or a connection's watches or transactions)
/// succeeded on one daemon only: from there on the two hold different things.
fn changed_one_store(step: &Step, a: &Observed, b: &Observed) -> bool {
    let inner = |r: &Reply| match r {
        Reply::OtherTx { reply, .. } => (**reply).clone(),
        r => r.clone(),
    };
    let ok = |o: &Observed| matches!(inner(&o.reply), Reply::Ok { .. });
    let changes = matches!(step.ty(), 4..=9 | 11..=14 | 18 | 19 | 21);
    let replied = |o: &Observed| matches!(inner(&o.reply), Reply::Ok { .. } | Reply::Error(_));
    (changes && ok(a) != ok(b)) || replied(a) != replied(b)
}

fn explain(
    seq: &Sequence,
    index: usize,
    step: &Step,
    domid: u32,
    a: (Kind, &[Observed]),
    b: (Kind, &[Observed]),
) -> Option<&'static Rule> {
    let ab = allow::Ctx {
        seq,
        index,
        step,
        domid,
        this_kind: a.0,
        this: &a.1[index],
        this_trace: a.1,
        other_kind: b.0,
        other: &b.1[index],
        other_trace: b.1,
    };
    let ba = allow::Ctx {
        this_kind: b.0,
        this: &b.1[index],
        this_trace: b.1,
        other_kind: a.0,
        other: &a.1[index],
        other_trace: a.1,
        ..ab
    };
    allow::RULES.iter().find(|r| match r.who {
        allow::Who::Any => (r.matches)(&ab),
        allow::Who::Daemon(k) => (k == a.0 && (r.matches)(&ab)) || (k == b.0 && (r.matches)(&ba)),
    })
}
