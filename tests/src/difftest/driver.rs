//! Runs of many sequences against several daemons: generation, running, comparison of
//! every pair, minimisation of what differs, statistics.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::compare::{self, Difference};
use super::generate;
use super::minimise::{self, Budget};
use super::run::{Observed, Target};
use super::script::{Layout, Sequence};
use crate::daemon::Kind;
use crate::skip::Skip;

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// The run's seed: sequence `i` depends on it and `i` only.
    pub seed: u64,
    /// Stop after this many sequences.
    pub sequences: Option<u64>,
    /// Stop after this long (checked between sequences).
    pub time: Option<Duration>,
    /// Steps per sequence after the prologue.
    pub steps: usize,
    /// Shrink what differs.
    pub minimise: bool,
    /// Print every step's observations.
    pub verbose: bool,
    /// Go on after a difference (each is reported).
    pub keep_going: bool,
    /// Restart the daemons before every sequence instead of cleaning up.
    pub fresh: bool,
    /// Where minimised scripts are written.
    pub out_dir: PathBuf,
}

/// A difference found.
#[derive(Clone, Debug)]
pub struct Found {
    /// The sequence as generated.
    pub sequence: Sequence,
    /// The difference in it.
    pub difference: Difference,
    /// The minimised sequence and its difference, if minimised.
    pub minimal: Option<(Sequence, Difference)>,
    /// Where the (minimised) script was written.
    pub script: Option<PathBuf>,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Sequences run.
    pub sequences: u64,
    /// Steps run (per sequence, not per daemon).
    pub steps: u64,
    /// Requests sent to all daemons together (steps and syncs).
    pub requests: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// How often each rule explained a step, per pair.
    pub allowed: BTreeMap<(&'static str, String), u64>,
    /// Pair comparisons stopped by a diverging rule.
    pub diverged: u64,
    /// Which rule stopped them.
    pub diverged_by: BTreeMap<&'static str, u64>,
    /// Pair comparisons made.
    pub comparisons: u64,
    /// Restarts of the daemons after a sequence that changed what the cleanup cannot undo.
    pub restarts: u64,
    /// Differences no rule explains.
    pub differences: Vec<Found>,
    /// Failures of a daemon or the harness (a daemon died, a guest could not be set up).
    pub failures: Vec<String>,
}

impl Report {
    /// Whether nothing unexplained was found.
    pub fn clean(&self) -> bool {
        self.differences.is_empty() && self.failures.is_empty()
    }

    /// The statistics, as lines of text.
    pub fn summary(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let mut s = format!(
            "{} sequences, {} steps, {} requests in {:.1} s ({:.0} steps/s); {} pair \
             comparisons, {} stopped early by a diverging rule; daemons restarted {} times\n",
            self.sequences,
            self.steps,
            self.requests,
            secs,
            self.steps as f64 / secs.max(1e-9),
            self.comparisons,
            self.diverged,
            self.restarts
        );
        if !self.allowed.is_empty() {
            s.push_str("allowed differences (rule, pair: steps):\n");
            for ((rule, pair), n) in &self.allowed {
                s.push_str(&format!("  {rule:32} {pair:24} {n}\n"));
            }
        }
        if !self.diverged_by.is_empty() {
            s.push_str("comparisons stopped by (rule: pairs):\n");
            for (rule, n) in &self.diverged_by {
                s.push_str(&format!("  {rule:32} {n}\n"));
            }
        }
        s.push_str(&format!(
            "{} unexplained difference(s), {} failure(s)\n",
            self.differences.len(),
            self.failures.len()
        ));
        s
    }
}

/// The daemons of a run.
#[derive(Debug)]
pub struct Driver {
    targets: Vec<Target>,
}

impl Driver {
    /// Starts the daemons of `kinds`; those that cannot start are returned with why.
    pub fn start(kinds: &[Kind]) -> (Driver, Vec<(Kind, Skip)>) {
        let mut targets = Vec::new();
        let mut skipped = Vec::new();
        for &k in kinds {
            match Target::start(k) {
                Ok(t) => targets.push(t),
                Err(s) => skipped.push((k, s)),
            }
        }
        (Driver { targets }, skipped)
    }

    /// The daemons running.
    pub fn kinds(&self) -> Vec<Kind> {
        self.targets.iter().map(|t| t.kind).collect()
    }

    fn requests(&self) -> u64 {
        self.targets.iter().map(|t| t.requests).sum()
    }

    /// Runs `seq` on every daemon that supports its layout (all of them if `only` is
    /// empty, else those in `only`).
    fn run_on(
        &mut self,
        seq: &Sequence,
        only: &[Kind],
        fresh: bool,
    ) -> Result<Vec<(Kind, Vec<Observed>)>, String> {
        let mut traces = Vec::new();
        for t in &mut self.targets {
            if !t.supports(seq.layout) || (!only.is_empty() && !only.contains(&t.kind)) {
                continue;
            }
            if fresh {
                t.restart()
                    .map_err(|s| format!("restarting {}: {s}", t.kind.name()))?;
            }
            let r = t.run(seq);
            match r {
                Ok(trace) => traces.push((t.kind, trace)),
                Err(e) => {
                    // Start over with a fresh daemon so that the run can go on.
                    let _ = t.restart();
                    return Err(e);
                }
            }
        }
        Ok(traces)
    }

    /// Restarts every daemon if a sequence left one of them with changes the cleanup does
    /// not undo, so that every sequence starts from the same state.
    fn restart_if_dirty(&mut self, report: &mut Report) {
        if self.targets.iter().any(|t| t.dirty) {
            report.restarts += 1;
            for t in &mut self.targets {
                if let Err(e) = t.restart() {
                    report
                        .failures
                        .push(format!("restarting {}: {e}", t.kind.name()));
                }
            }
        }
    }

    /// The layout of sequence `index`: with guests every other one, if at least two
    /// daemons can play guests.
    fn layout(&self, index: u64) -> Layout {
        let guests = self
            .targets
            .iter()
            .filter(|t| t.supports(Layout::Guests))
            .count();
        if guests >= 2 && index % 2 == 1 {
            Layout::Guests
        } else {
            Layout::Dom0
        }
    }

    /// Runs generated sequences as `config` says, writing progress and findings to `out`.
    pub fn run(&mut self, config: &Config, out: &mut dyn Write) -> Report {
        let start = Instant::now();
        let mut report = Report::default();
        let requests_before = self.requests();
        let mut index = 0u64;
        loop {
            if config.sequences.is_some_and(|n| index >= n)
                || config.time.is_some_and(|t| start.elapsed() >= t)
            {
                break;
            }
            let seq = generate::sequence(config.seed, index, self.layout(index), config.steps);
            index += 1;
            self.one(&seq, config, &mut report, out);
            if !report.clean() && !config.keep_going {
                break;
            }
        }
        report.elapsed = start.elapsed();
        report.requests = self.requests() - requests_before;
        report
    }

    /// Runs one given sequence (a replay), printing every step's observations if
    /// `config.verbose`.
    pub fn replay(&mut self, seq: &Sequence, config: &Config, out: &mut dyn Write) -> Report {
        let start = Instant::now();
        let mut report = Report::default();
        let requests_before = self.requests();
        self.one(seq, config, &mut report, out);
        report.elapsed = start.elapsed();
        report.requests = self.requests() - requests_before;
        report
    }

    fn one(&mut self, seq: &Sequence, config: &Config, report: &mut Report, out: &mut dyn Write) {
        report.sequences += 1;
        report.steps += seq.steps.len() as u64;
        let traces = self.run_on(seq, &[], config.fresh);
        self.restart_if_dirty(report);
        let traces = match traces {
            Ok(t) => t,
            Err(e) => {
                let _ = writeln!(
                    out,
                    "FAILURE in sequence {} (seed {}): {e}\n{}",
                    seq.index,
                    seq.seed,
                    seq.script()
                );
                report.failures.push(e);
                return;
            }
        };
        if config.verbose {
            let _ = write!(out, "{}", verbose(seq, &traces));
        }
        for i in 0..traces.len() {
            for j in i + 1..traces.len() {
                let (a, b) = (&traces[i], &traces[j]);
                report.comparisons += 1;
                let o = compare::compare(seq, (a.0, &a.1), (b.0, &b.1));
                let pair = format!("{} / {}", a.0.name(), b.0.name());
                for (_, rule) in &o.allowed {
                    *report.allowed.entry((rule, pair.clone())).or_default() += 1;
                }
                if o.diverged_at.is_some() {
                    report.diverged += 1;
                    if let Some((_, rule)) = o.allowed.last() {
                        *report.diverged_by.entry(rule).or_default() += 1;
                    }
                }
                if let Some(d) = o.difference {
                    let found = self.found(seq, d, config, out);
                    report.differences.push(found);
                }
            }
        }
    }

    fn found(
        &mut self,
        seq: &Sequence,
        d: Difference,
        config: &Config,
        out: &mut dyn Write,
    ) -> Found {
        let pair = [d.sides[0].0, d.sides[1].0];
        let _ = writeln!(
            out,
            "DIFFERENCE {} / {} in sequence {} of seed {}, {}",
            pair[0].name(),
            pair[1].name(),
            seq.index,
            seq.seed,
            d.describe(seq)
        );
        let mut found = Found {
            sequence: seq.clone(),
            difference: d.clone(),
            minimal: None,
            script: None,
        };
        let mut shown = seq.clone();
        if config.minimise {
            let want = seq.steps[d.step].ty();
            let mut check = |steps: &[super::script::Step]| -> Option<Difference> {
                let cand = Sequence {
                    steps: steps.to_vec(),
                    ..seq.clone()
                };
                let traces = self.run_on(&cand, &pair, config.fresh);
                self.restart_if_dirty(&mut Report::default());
                let traces = traces.ok()?;
                let [(ka, ta), (kb, tb)] = traces.as_slice() else {
                    return None;
                };
                compare::compare(&cand, (*ka, ta), (*kb, tb))
                    .difference
                    .filter(|x| cand.steps[x.step].ty() == want)
            };
            let budget = Budget {
                runs: 600,
                time: Duration::from_secs(240),
            };
            let (steps, runs) = minimise::ddmin(seq.steps.clone(), budget, |s| check(s).is_some());
            let min = Sequence {
                steps,
                ..seq.clone()
            };
            if let Some(md) = check(&min.steps) {
                let _ = writeln!(
                    out,
                    "minimised from {} to {} steps ({runs} runs); {}",
                    seq.steps.len(),
                    min.steps.len(),
                    md.describe(&min)
                );
                found.minimal = Some((min.clone(), md));
                shown = min;
            } else {
                let _ = writeln!(
                    out,
                    "(minimising lost the difference: timing? showing the whole sequence)"
                );
            }
        }
        let path = config
            .out_dir
            .join(format!("xs-difftest-{}-{}.txt", seq.seed, seq.index));
        let script = annotate(&shown, found.minimal.as_ref().map(|m| &m.1).unwrap_or(&d));
        if std::fs::create_dir_all(&config.out_dir).is_ok()
            && std::fs::write(&path, &script).is_ok()
        {
            found.script = Some(path.clone());
        }
        let _ = writeln!(
            out,
            "script{}:\n{script}replay: xs-difftest --replay {} --daemons {},{} --verbose\n",
            found
                .script
                .as_ref()
                .map(|p| format!(" ({})", p.display()))
                .unwrap_or_default(),
            path.display(),
            pair[0].name(),
            pair[1].name()
        );
        found
    }
}

/// The script with the differing step's observations as comments.
fn annotate(seq: &Sequence, d: &Difference) -> String {
    let mut s = seq.script();
    for line in d.describe(seq).lines() {
        s.push_str(&format!("# {line}\n"));
    }
    s
}

/// Every step with what each daemon observed.
pub fn verbose(seq: &Sequence, traces: &[(Kind, Vec<Observed>)]) -> String {
    let w = traces.iter().map(|t| t.0.name().len()).max().unwrap_or(0);
    let mut s = format!(
        "sequence {} of seed {} ({:?})\n",
        seq.index, seq.seed, seq.layout
    );
    for (i, step) in seq.steps.iter().enumerate() {
        s.push_str(&format!("{i:4} {step}\n"));
        let first = &traces[0].1[i];
        let all_same = traces.iter().all(|t| &t.1[i] == first);
        if all_same {
            s.push_str(&format!("     {:w$}  {}\n", "all", first.summary()));
        } else {
            for (k, t) in traces {
                s.push_str(&format!("     {:w$}  {}\n", k.name(), t[i].summary()));
            }
        }
    }
    s
}
