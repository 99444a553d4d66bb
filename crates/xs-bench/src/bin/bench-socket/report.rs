//! What is shown after the workloads, on stderr: the side-by-side table, notes on what was
//! skipped, and the goals.

use xs_bench::Unit;

use crate::config::Target;
use crate::workloads::{MEM_DOMAINS, MEM_NODES, SingleOp};

/// One metric's values, one per target (`None`: not measured or failed).
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) metric: String,
    pub(crate) unit: Unit,
    pub(crate) values: Vec<Option<f64>>,
}

/// The side-by-side table, with each value's ratio to the baseline's (target `base`).
pub(crate) fn print_table(targets: &[Target], rows: &[Row], base: usize) {
    if rows.is_empty() {
        return;
    }
    let mw = rows
        .iter()
        .map(|r| r.metric.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let cw = targets
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(0)
        .max(18);
    let mut head = format!("{:mw$}  {:5}", "metric", "unit");
    for t in targets {
        head.push_str(&format!("  {:>cw$}", t.name));
    }
    eprintln!(
        "\nside by side (ratio: value / value of {}):",
        targets[base].name
    );
    eprintln!("{head}");
    for r in rows {
        let mut line = format!("{:mw$}  {:5}", r.metric, r.unit.as_str());
        for (i, v) in r.values.iter().enumerate() {
            let cell = match (v, r.values[base]) {
                (None, _) => "-".to_string(),
                (Some(v), Some(b)) if i != base && b != 0.0 => {
                    format!("{} ({:.2}x)", r.unit.format(*v), v / b)
                }
                (Some(v), _) => r.unit.format(*v),
            };
            line.push_str(&format!("  {cell:>cw$}"));
        }
        eprintln!("{line}");
    }
}

fn value(rows: &[Row], targets: &[Target], metric: &str, name: &str) -> Option<f64> {
    let i = targets.iter().position(|t| t.name == name)?;
    rows.iter().find(|r| r.metric == metric)?.values[i]
}

/// The goals, for the sockets named `xs`, `cxenstored`, `oxenstored`, `echo`.
pub(crate) fn goals(targets: &[Target], rows: &[Row]) {
    if !targets.iter().any(|t| t.name == "xs") {
        return;
    }
    let v = |metric: &str, name: &str| value(rows, targets, metric, name);
    let mut lines = Vec::new();
    let mut check = |what: String, ok: bool| {
        lines.push(format!("  [{}] {what}", if ok { "PASS" } else { "FAIL" }));
    };
    // Single-request latency p50 <= 1.2x the echo floor.
    for op in SingleOp::ALL {
        let m = format!("{}_p50", op.name());
        if let (Some(x), Some(e)) = (v(&m, "xs"), v(&m, "echo")) {
            check(
                format!(
                    "{m}: xs {x:.1} us <= 1.2 x echo {e:.1} us = {:.1} us",
                    1.2 * e
                ),
                x <= 1.2 * e,
            );
        }
    }
    if let (Some(x), Some(e)) = (v("watch_fire_p50", "xs"), v("watch_fire_p50", "echo")) {
        check(
            format!(
                "watch_fire_p50: xs {x:.1} us <= 1.2 x echo {e:.1} us = {:.1} us",
                1.2 * e
            ),
            x <= 1.2 * e,
        );
    }
    let m = "read_32_inflight";
    if let (Some(x), Some(c)) = (v(m, "xs"), v(m, "cxenstored")) {
        check(
            format!(
                "{m}: xs {x:.0} ops/s >= 4 x cxenstored {c:.0} = {:.0}",
                4.0 * c
            ),
            x >= 4.0 * c,
        );
    }
    if let (Some(x), Some(e)) = (v(m, "xs"), v(m, "echo")) {
        check(
            format!("{m}: xs {x:.0} ops/s >= 0.6 x echo {e:.0} = {:.0}", 0.6 * e),
            x >= 0.6 * e,
        );
    }
    if let (Some(x), Some(c)) = (v("boot_storm", "xs"), v("boot_storm", "cxenstored")) {
        check(
            format!(
                "boot_storm: xs {x:.1} ms <= cxenstored {c:.1} ms / 3 = {:.1} ms",
                c / 3.0
            ),
            x <= c / 3.0,
        );
    }
    let rss = format!("rss_{MEM_DOMAINS}x{MEM_NODES}");
    if let (Some(x), Some(c)) = (v(&rss, "xs"), v(&rss, "cxenstored")) {
        check(
            format!("{rss}: xs {x:.0} KB <= cxenstored {c:.0} KB"),
            x <= c,
        );
    }
    // No workload slower than C xenstored or oxenstored (p50s, rates and times).
    for r in rows {
        let Some(higher) = r.unit.higher_is_better() else {
            continue;
        };
        if r.metric.ends_with("_p99") || r.unit == Unit::Kb {
            continue;
        }
        let Some(x) = v(&r.metric, "xs") else {
            continue;
        };
        for other in ["cxenstored", "oxenstored"] {
            if let Some(o) = v(&r.metric, other) {
                let ok = if higher { x >= o } else { x <= o };
                let rel = if higher { ">=" } else { "<=" };
                check(
                    format!(
                        "not slower: {}: xs {} {rel} {other} {} {}",
                        r.metric,
                        r.unit.format(x),
                        r.unit.format(o),
                        r.unit.as_str()
                    ),
                    ok,
                );
            }
        }
    }
    if lines.is_empty() {
        return;
    }
    let failed = lines.iter().filter(|l| l.contains("[FAIL]")).count();
    eprintln!(
        "\ngoals of the issue ({} checks, {failed} failed):",
        lines.len()
    );
    for l in lines {
        eprintln!("{l}");
    }
}

/// Notes on what was skipped on which daemon, and why.
pub(crate) fn notes(targets: &[Target]) {
    for t in targets {
        if let Err(e) = &t.introduce {
            eprintln!(
                "note: {} rejected INTRODUCE ({e}); its boot storm skipped that step",
                t.name
            );
        }
        if !t.stores {
            eprintln!(
                "note: {} stores nothing; rm_guest_64 and memory skipped",
                t.name
            );
        } else if t.pid.is_none() {
            eprintln!(
                "note: {}: process unknown (give --pid); memory skipped",
                t.name
            );
        }
        if let Some(why) = &t.dead {
            eprintln!(
                "note: {} stopped answering ({why}); later workloads skipped",
                t.name
            );
        }
    }
}
