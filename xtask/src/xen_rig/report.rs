//! Reading dom0's verdicts and measurements out of the serial log, and printing them.
//!
//! dom0's scenarios (`tests/xen-rig/scenarios.sh`) print `XEN-RIG-PLAN <names>`, then
//! `XEN-RIG <name> PASS` or `XEN-RIG <name> FAIL <why>` per scenario, `XEN-RIG-BENCH <name>
//! <value> <unit>` per measurement and `XEN-RIG-END passed=N failed=M` last. Kernel and Xen
//! messages share the serial port, so a marker is looked for anywhere in a line. Besides
//! dom0's scenarios each run has one of its own, `boot`: Xen and dom0 came up and dom0
//! finished, with as many verdicts in the log as it counted.

use std::collections::BTreeMap;

use super::Daemon;
use super::boot::Boot;

/// The last line dom0 prints.
pub(crate) const END: &str = "XEN-RIG-END";

/// One scenario's verdict: `Err` says why it failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) name: String,
    pub(crate) result: Result<(), String>,
}

/// One measurement, as dom0 printed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Measurement {
    pub(crate) name: String,
    pub(crate) value: String,
    pub(crate) unit: String,
}

/// What the serial log says.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub(crate) plan: Option<Vec<String>>,
    pub(crate) verdicts: Vec<Verdict>,
    pub(crate) measurements: Vec<Measurement>,
    /// dom0's own counts, from the last line.
    pub(crate) end: Option<(u32, u32)>,
}

/// Reads the markers of `lines`.
pub(crate) fn parse(lines: &[String]) -> Parsed {
    let mut parsed = Parsed::default();
    for line in lines {
        let Some(at) = line.find("XEN-RIG") else {
            continue;
        };
        let mut words = line[at..].splitn(2, ' ');
        let marker = words.next().unwrap_or_default();
        let rest = words.next().unwrap_or_default().trim();
        match marker {
            "XEN-RIG-PLAN" => {
                parsed.plan = Some(rest.split_whitespace().map(str::to_owned).collect());
            }
            "XEN-RIG" => {
                let mut parts = rest.splitn(3, ' ');
                let name = parts.next().unwrap_or_default().to_owned();
                let result = match (parts.next(), parts.next()) {
                    (Some("PASS"), None) => Ok(()),
                    (Some("FAIL"), why) => Err(why.unwrap_or("(no reason given)").to_owned()),
                    _ => continue,
                };
                parsed.verdicts.push(Verdict { name, result });
            }
            "XEN-RIG-BENCH" => {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                if let [name, value, unit] = parts.as_slice() {
                    parsed.measurements.push(Measurement {
                        name: (*name).to_owned(),
                        value: (*value).to_owned(),
                        unit: (*unit).to_owned(),
                    });
                }
            }
            END => parsed.end = end_counts(rest),
            _ => {}
        }
    }
    parsed
}

/// `passed=N failed=M`.
fn end_counts(text: &str) -> Option<(u32, u32)> {
    let mut words = text.split_whitespace();
    let passed = words.next()?.strip_prefix("passed=")?.parse().ok()?;
    let failed = words.next()?.strip_prefix("failed=")?.parse().ok()?;
    Some((passed, failed))
}

/// One daemon's run.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) daemon: Daemon,
    /// `boot` first, then dom0's scenarios in the order of its plan.
    pub(crate) verdicts: Vec<Verdict>,
    pub(crate) measurements: Vec<Measurement>,
    pub(crate) seconds: f64,
}

impl Run {
    /// The verdicts of a boot: the plan's scenarios (one without a verdict failed), any
    /// others dom0 reported, and `boot`.
    pub(crate) fn new(daemon: Daemon, boot: &Boot, timeout_secs: u64) -> Run {
        let parsed = parse(&boot.lines);
        let mut by_name: BTreeMap<&str, &Verdict> = BTreeMap::new();
        for v in &parsed.verdicts {
            by_name.entry(v.name.as_str()).or_insert(v);
        }
        let plan = parsed.plan.clone().unwrap_or_default();
        let mut verdicts = Vec::new();
        for name in &plan {
            verdicts.push(match by_name.get(name.as_str()) {
                Some(v) => (*v).clone(),
                None => Verdict {
                    name: name.clone(),
                    result: Err("no verdict in the serial log".into()),
                },
            });
        }
        for v in &parsed.verdicts {
            if !plan.contains(&v.name) && !verdicts.iter().any(|w| w.name == v.name) {
                verdicts.push(v.clone());
            }
        }
        let boot_result = match (parsed.plan.is_some(), parsed.end) {
            _ if boot.timed_out => Err(format!(
                "dom0 did not finish within {timeout_secs} s: QEMU killed"
            )),
            (false, _) => Err(format!(
                "dom0 never started its scenarios (QEMU exit status {:?})",
                boot.status
            )),
            (true, None) => Err(format!(
                "dom0 did not finish: no {END} line (QEMU exit status {:?})",
                boot.status
            )),
            (true, Some((passed, failed))) => {
                let seen = (
                    parsed.verdicts.iter().filter(|v| v.result.is_ok()).count(),
                    parsed.verdicts.iter().filter(|v| v.result.is_err()).count(),
                );
                if seen == (passed as usize, failed as usize) {
                    Ok(())
                } else {
                    Err(format!(
                        "dom0 counted {passed} passed and {failed} failed, the log shows {} and {} \
                         (a garbled line?)",
                        seen.0, seen.1
                    ))
                }
            }
        };
        verdicts.insert(
            0,
            Verdict {
                name: "boot".into(),
                result: boot_result,
            },
        );
        Run {
            daemon,
            verdicts,
            measurements: parsed.measurements,
            seconds: boot.elapsed.as_secs_f64(),
        }
    }

    /// A measurement's value, if this run has it.
    pub(crate) fn value(&self, name: &str, unit: &str) -> Option<f64> {
        self.measurements
            .iter()
            .find(|m| m.name == name && m.unit == unit)
            .and_then(|m| m.value.parse().ok())
    }

    pub(crate) fn passed(&self) -> usize {
        self.verdicts.iter().filter(|v| v.result.is_ok()).count()
    }

    pub(crate) fn failed(&self) -> usize {
        self.verdicts.len() - self.passed()
    }

    /// The verdicts, then the measurements as `bench <name> <value> <unit>@<daemon>`.
    pub(crate) fn print(&self) {
        let daemon = self.daemon.name();
        println!(
            "\nxen-rig [{daemon}]: {} passed, {} failed (boot {:.1} s)",
            self.passed(),
            self.failed(),
            self.seconds
        );
        for v in &self.verdicts {
            match &v.result {
                Ok(()) => println!("  PASS {}", v.name),
                Err(why) => println!("  FAIL {}: {why}", v.name),
            }
        }
        for m in &self.measurements {
            println!("bench {} {} {}@{daemon}", m.name, m.value, m.unit);
        }
    }
}

/// The runs side by side, one column per daemon whatever the number of rounds: each
/// scenario's verdict (`PASS` if it passed in every round, else how many rounds failed it),
/// then each measurement's median over the rounds and, for every daemon after the first, the
/// ratio of its median to the first's. Rounds alternate the daemons, so that the machine's
/// swings from minute to minute fall on both alike.
pub(crate) fn print_table(runs: &[Run]) {
    let mut daemons: Vec<Daemon> = Vec::new();
    for run in runs {
        if !daemons.contains(&run.daemon) {
            daemons.push(run.daemon);
        }
    }
    let Some(&first) = daemons.first() else {
        return;
    };
    let of = |daemon: Daemon| runs.iter().filter(move |r| r.daemon == daemon);
    let rounds = of(first).count();

    let mut names: Vec<&str> = Vec::new();
    for run in runs {
        for v in &run.verdicts {
            if !names.contains(&v.name.as_str()) {
                names.push(&v.name);
            }
        }
    }
    let width = names.iter().map(|n| n.len()).max().unwrap_or(8).max(30);
    let mut header = format!("\n{:<width$}", "scenario");
    for daemon in &daemons {
        header.push_str(&format!(" {:>12}", daemon.name()));
    }
    println!("{header}");
    for name in &names {
        let mut row = format!("{name:<width$}");
        for &daemon in &daemons {
            let (mut seen, mut failed) = (0, 0);
            for run in of(daemon) {
                if let Some(v) = run.verdicts.iter().find(|v| v.name == *name) {
                    seen += 1;
                    failed += usize::from(v.result.is_err());
                }
            }
            let cell = match (seen, failed) {
                (0, _) => "-".to_owned(),
                (_, 0) => "PASS".to_owned(),
                (1, _) => "FAIL".to_owned(),
                (n, f) => format!("FAIL {f}/{n}"),
            };
            row.push_str(&format!(" {cell:>12}"));
        }
        println!("{row}");
    }

    let mut benches: Vec<(&str, &str)> = Vec::new();
    for run in runs {
        for m in &run.measurements {
            if !benches.contains(&(m.name.as_str(), m.unit.as_str())) {
                benches.push((&m.name, &m.unit));
            }
        }
    }
    if benches.is_empty() {
        return;
    }
    let mut header = format!("\n{:<width$}", "measurement");
    if rounds > 1 {
        header = format!("\nmedians of {rounds} rounds{header}");
    }
    for daemon in &daemons {
        header.push_str(&format!(" {:>12}", daemon.name()));
    }
    for daemon in &daemons[1..] {
        header.push_str(&format!(
            " {:>22}",
            format!("{}/{}", daemon.name(), first.name())
        ));
    }
    println!("{header}");
    for (name, unit) in benches {
        let median = |daemon: Daemon| {
            let values: Vec<f64> = of(daemon).filter_map(|run| run.value(name, unit)).collect();
            median(values)
        };
        let mut row = format!("{:<width$}", format!("{name} ({unit})"));
        for &daemon in &daemons {
            let cell = median(daemon).map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
            row.push_str(&format!(" {cell:>12}"));
        }
        for &daemon in &daemons[1..] {
            let ratio = match (median(daemon), median(first)) {
                (Some(v), Some(base)) if base > 0.0 => format!("{:.2}", v / base),
                _ => "-".to_owned(),
            };
            row.push_str(&format!(" {ratio:>22}"));
        }
        println!("{row}");
    }
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn reads_the_markers_anywhere_in_a_line() {
        let parsed = parse(&lines(
            "(XEN) noise\n\
             XEN-RIG-PLAN a b c\n\
             XEN-RIG a PASS\n\
             [   12.3] kernel: XEN-RIG b FAIL xl create exited 1: no memory\n\
             XEN-RIG-INFO XEN-RIG c PASS is only quoted here\n\
             XEN-RIG-LOG guest-g1.log: XEN-RIG-GUEST hello\n\
             XEN-RIG-BENCH xen_create_1_pv 8123.4 ms\n\
             XEN-RIG-END passed=1 failed=1\n",
        ));
        assert_eq!(parsed.plan, Some(vec!["a".into(), "b".into(), "c".into()]));
        assert_eq!(
            parsed.verdicts,
            [
                Verdict {
                    name: "a".into(),
                    result: Ok(())
                },
                Verdict {
                    name: "b".into(),
                    result: Err("xl create exited 1: no memory".into())
                },
            ]
        );
        assert_eq!(
            parsed.measurements,
            [Measurement {
                name: "xen_create_1_pv".into(),
                value: "8123.4".into(),
                unit: "ms".into()
            }]
        );
        assert_eq!(parsed.end, Some((1, 1)));
    }

    fn boot(text: &str, timed_out: bool) -> Boot {
        Boot {
            lines: lines(text),
            status: if timed_out { None } else { Some(0) },
            timed_out,
            elapsed: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_planned_scenario_without_a_verdict_fails_and_so_does_the_boot() {
        let run = Run::new(
            Daemon::XsHost,
            &boot("XEN-RIG-PLAN a b\nXEN-RIG a PASS\n", true),
            600,
        );
        let names: Vec<&str> = run.verdicts.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["boot", "a", "b"]);
        assert_eq!((run.passed(), run.failed()), (1, 2));
        assert!(
            run.verdicts[0]
                .result
                .as_ref()
                .unwrap_err()
                .contains("600 s")
        );
    }

    #[test]
    fn the_boot_passes_when_the_counts_agree() {
        let text = "XEN-RIG-PLAN a\nXEN-RIG a PASS\nXEN-RIG-END passed=1 failed=0\n";
        let run = Run::new(Daemon::CXenstored, &boot(text, false), 600);
        assert_eq!((run.passed(), run.failed()), (2, 0));
        let garbled = "XEN-RIG-PLAN a\nXEN-RIG a PAXEN) SS\nXEN-RIG-END passed=1 failed=0\n";
        let run = Run::new(Daemon::CXenstored, &boot(garbled, false), 600);
        assert_eq!((run.passed(), run.failed()), (0, 2));
    }

    #[test]
    fn no_plan_is_a_failed_boot() {
        let run = Run::new(Daemon::CXenstored, &boot("(XEN) panic\n", false), 600);
        assert_eq!((run.passed(), run.failed()), (0, 1));
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
