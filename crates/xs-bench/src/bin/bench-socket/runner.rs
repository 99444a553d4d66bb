//! The runner: each workload on every daemon in turn, round-robin and repeated, the median of
//! the runs printed.

use std::time::{Duration, Instant};

use xs_bench::client::ClientError;
use xs_bench::harness::{median, print_result};

use crate::config::{Config, Target, kills};
use crate::report::Row;
use crate::setup::responsive;
use crate::workloads::{Bench, Workload};

/// Whether `--filter` selects `w` (by its name or a metric's).
pub(crate) fn wanted(cfg: &Config, w: &Workload) -> bool {
    match &cfg.filter {
        None => true,
        Some(f) => {
            w.name.contains(f.as_str()) || w.metrics.iter().any(|(m, _)| m.contains(f.as_str()))
        }
    }
}

/// Runs `w` on every live target (interleaved) and returns its rows.
pub(crate) fn run_workload(
    cfg: &Config,
    targets: &mut [Target],
    w: &Workload,
    failures: &mut u32,
) -> Vec<Row> {
    let n = targets.len();
    let mut rows: Vec<Row> = w
        .metrics
        .iter()
        .map(|(m, u)| Row {
            metric: m.clone(),
            unit: *u,
            values: vec![None; n],
        })
        .collect();
    let started = Instant::now();
    let mut fail = |targets: &mut [Target], i: usize, stage: &str, e: ClientError| {
        eprintln!(
            "bench-socket: {} on {}: {stage} failed: {e}",
            w.name, targets[i].name
        );
        *failures += 1;
        // A timeout may be a missing watch event rather than a daemon gone silent: only a
        // daemon that also fails a fresh READ is given up.
        if kills(&e) && !responsive(cfg, &targets[i]) {
            targets[i].dead = Some(format!("{} {stage}: {e}", w.name));
        }
    };
    let mut states: Vec<Option<Box<dyn Bench>>> = Vec::with_capacity(n);
    for i in 0..n {
        let t = &targets[i];
        if t.dead.is_some() || (w.needs_store && !t.stores) || (w.needs_pid && t.pid.is_none()) {
            states.push(None);
            continue;
        }
        match (w.setup)(cfg, t) {
            Ok(s) => states.push(Some(s)),
            Err(e) => {
                fail(targets, i, "setup", e);
                states.push(None);
            }
        }
    }
    let runs = if w.repeated {
        cfg.runs.min(w.max_runs)
    } else {
        1
    };
    let mut samples: Vec<Vec<Vec<f64>>> = vec![Vec::new(); n];
    let mut passes: Vec<Option<Duration>> = Vec::new();
    if w.repeated {
        passes.push(None); // warm-up
    }
    passes.extend(std::iter::repeat_n(Some(cfg.run_time), runs));
    for (pass, budget) in passes.iter().enumerate() {
        for k in 0..n {
            // Rotate who goes first, so that no daemon always follows the same one.
            let i = (k + pass) % n;
            let Some(state) = states[i].as_mut() else {
                continue;
            };
            match state.run(budget.unwrap_or(cfg.warmup)) {
                Ok(values) => {
                    if budget.is_some() {
                        samples[i].push(values);
                    }
                }
                Err(e) => {
                    fail(targets, i, "run", e);
                    states[i] = None;
                    samples[i].clear();
                }
            }
        }
    }
    for (i, state) in states.iter_mut().enumerate() {
        if let Some(mut s) = state.take()
            && let Err(e) = s.finish()
        {
            fail(targets, i, "cleanup", e);
        }
    }
    for (i, t) in targets.iter().enumerate() {
        if samples[i].is_empty() {
            continue;
        }
        for (m, row) in rows.iter_mut().enumerate() {
            let mut vals: Vec<f64> = samples[i]
                .iter()
                .filter_map(|v| v.get(m).copied())
                .collect();
            let med = median(&mut vals);
            row.values[i] = Some(med);
            print_result(&format!("{}@{}", row.metric, t.name), med, row.unit);
            if vals.len() > 1 {
                eprintln!(
                    "  {}@{}: {} {} (runs {})",
                    row.metric,
                    t.name,
                    row.unit.format(med),
                    row.unit.as_str(),
                    vals.iter()
                        .map(|v| row.unit.format(*v))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
        }
    }
    eprintln!(
        "  [{} took {:.1} s]",
        w.name,
        started.elapsed().as_secs_f64()
    );
    rows
}
