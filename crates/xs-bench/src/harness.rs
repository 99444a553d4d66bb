//! The timing harness: warm up, run for a target duration, repeat, report the median.
//!
//! Output contract (scripts parse it): one line per measurement on stdout, exactly
//! `bench <name> <value> <unit>`, the name without spaces, the value a plain number with at
//! most one decimal, the unit `ops/s`, `ns`, `us`, `ms`, `bytes`, `KB` or `count`. Everything
//! else goes to stderr.

use std::hint::black_box;
use std::time::{Duration, Instant};

use crate::CountingAlloc;

/// Ends a benchmark program that cannot go on (a failed setup step, a wrong reply), saying
/// why on stderr.
pub fn fatal(program: &str, message: &str) -> ! {
    eprintln!("{program}: FATAL: {message}");
    std::process::exit(1)
}

/// How a goal's line reads.
pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT MET" }
}

/// Unit of a reported value.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Unit {
    /// Operations per second (printed as an integer).
    OpsPerSec,
    /// Nanoseconds (one decimal).
    Ns,
    /// Microseconds (one decimal).
    Us,
    /// Milliseconds (one decimal).
    Ms,
    /// Bytes (one decimal).
    Bytes,
    /// KiB, as `/proc` counts memory (printed as an integer, `KB`).
    Kb,
    /// A number of events (printed as an integer).
    Count,
}

impl Unit {
    /// The unit as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::OpsPerSec => "ops/s",
            Unit::Ns => "ns",
            Unit::Us => "us",
            Unit::Ms => "ms",
            Unit::Bytes => "bytes",
            Unit::Kb => "KB",
            Unit::Count => "count",
        }
    }

    /// `value` as printed in this unit.
    ///
    /// # Examples
    ///
    /// ```
    /// use xs_bench::Unit;
    ///
    /// assert_eq!(Unit::OpsPerSec.format(123456.7), "123457");
    /// assert_eq!(Unit::Us.format(12.345), "12.3");
    /// assert_eq!(Unit::Kb.as_str(), "KB");
    /// ```
    pub fn format(self, value: f64) -> String {
        match self {
            Unit::OpsPerSec | Unit::Kb | Unit::Count => format!("{value:.0}"),
            Unit::Ns | Unit::Us | Unit::Ms | Unit::Bytes => format!("{value:.1}"),
        }
    }

    /// Whether a bigger value is better (`None`: neither, e.g. a count).
    pub fn higher_is_better(self) -> Option<bool> {
        match self {
            Unit::OpsPerSec => Some(true),
            Unit::Ns | Unit::Us | Unit::Ms | Unit::Bytes | Unit::Kb => Some(false),
            Unit::Count => None,
        }
    }
}

/// Prints the line of one measurement on stdout: `bench <name> <value> <unit>`.
pub fn print_result(name: &str, value: f64, unit: Unit) {
    println!("bench {name} {} {}", unit.format(value), unit.as_str());
}

/// Most ops between two looks at the clock (chunks start at one op and double, so that slow
/// operations do not overshoot the target duration).
const MAX_CHUNK: u64 = 256;

/// Runs measurements and prints their results.
#[derive(Debug)]
pub struct Harness {
    quick: bool,
    filter: Option<String>,
    run_time: Duration,
    warmup: Duration,
    repeats: usize,
    alloc: Option<&'static CountingAlloc>,
    results: Vec<(String, f64)>,
}

impl Harness {
    /// A harness from a benchmark binary's command line (`--quick`, `--filter TEXT`,
    /// `--help`; `--bench`, which `cargo bench` passes, is ignored). `Err` is the exit code
    /// to leave with (after `--help`, or a usage error printed with `help`).
    pub fn from_args(program: &str, help: &str) -> Result<Harness, std::process::ExitCode> {
        let mut quick = false;
        let mut filter = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => quick = true,
                "--filter" => match args.next() {
                    Some(f) => filter = Some(f),
                    None => {
                        eprintln!("{program}: --filter needs an argument\n\n{help}");
                        return Err(std::process::ExitCode::from(2));
                    }
                },
                "--help" | "-h" => {
                    print!("{help}");
                    return Err(std::process::ExitCode::SUCCESS);
                }
                "--bench" => {}
                other => {
                    eprintln!("{program}: unknown argument {other:?}\n\n{help}");
                    return Err(std::process::ExitCode::from(2));
                }
            }
        }
        Ok(Harness::new(quick, filter))
    }

    /// A harness for a full run (~0.5 s per repeat) or a quick smoke run (~30 ms per repeat),
    /// running only measurements whose name contains `filter`.
    pub fn new(quick: bool, filter: Option<String>) -> Harness {
        let run_time = if quick {
            Duration::from_millis(30)
        } else {
            Duration::from_millis(500)
        };
        Harness {
            quick,
            filter,
            run_time,
            warmup: run_time / 4,
            repeats: 3,
            alloc: None,
            results: Vec::new(),
        }
    }

    /// Also report allocation calls per operation (on stderr), counted by `alloc`, which must
    /// be the program's global allocator.
    pub fn with_alloc(mut self, alloc: &'static CountingAlloc) -> Harness {
        self.alloc = Some(alloc);
        self
    }

    /// Whether this is a quick (smoke test) run.
    pub fn quick(&self) -> bool {
        self.quick
    }

    /// The duration of one repeat.
    pub fn run_time(&self) -> Duration {
        self.run_time
    }

    /// Whether the measurement `name` is selected.
    pub fn wants(&self, name: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| name.contains(f))
    }

    /// Whether any of `names` is selected.
    pub fn wants_any<S: AsRef<str>>(&self, names: &[S]) -> bool {
        names.iter().any(|n| self.wants(n.as_ref()))
    }

    /// Prints a result line and records it.
    pub fn report(&mut self, name: &str, value: f64, unit: Unit) {
        print_result(name, value, unit);
        self.results.push((name.to_owned(), value));
    }

    /// A result reported earlier.
    pub fn result(&self, name: &str) -> Option<f64> {
        self.results
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    /// Measures the rate of `op` (called with a running counter, one call = one operation)
    /// and reports it as `name` in ops/s: a warm-up, then `repeats` runs of the target
    /// duration each; the median run counts.
    pub fn rate(&mut self, name: &str, mut op: impl FnMut(u64)) {
        if !self.wants(name) {
            return;
        }
        let mut counter = 0u64;
        run_for(self.warmup, &mut op, &mut counter);
        let calls_before = self.alloc.map(CountingAlloc::calls);
        let mut total_ops = 0u64;
        let mut rates = Vec::with_capacity(self.repeats);
        for _ in 0..self.repeats {
            let (ops, elapsed) = run_for(self.run_time, &mut op, &mut counter);
            total_ops = total_ops.saturating_add(ops);
            rates.push(ops as f64 / elapsed.as_secs_f64());
        }
        let allocs = match (self.alloc, calls_before) {
            (Some(a), Some(before)) => {
                let per_op = a.calls().saturating_sub(before) as f64 / total_ops.max(1) as f64;
                format!(", {per_op:.1} allocs/op")
            }
            _ => String::new(),
        };
        let median = median(&mut rates);
        eprintln!(
            "  {name}: {median:.0} ops/s ({:.0} ns/op; runs {}{allocs})",
            1e9 / median,
            rates
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
        self.report(name, median, Unit::OpsPerSec);
    }

    /// Reports the median of `repeats` samples (after one warm-up sample) as `name`.
    /// `sample` is given the duration a sample should take.
    pub fn median(&mut self, name: &str, unit: Unit, mut sample: impl FnMut(Duration) -> f64) {
        if !self.wants(name) {
            return;
        }
        sample(self.warmup);
        let mut values: Vec<f64> = (0..self.repeats).map(|_| sample(self.run_time)).collect();
        let median = median(&mut values);
        eprintln!(
            "  {name}: {} {} (runs {})",
            unit.format(median),
            unit.as_str(),
            values
                .iter()
                .map(|v| unit.format(*v))
                .collect::<Vec<_>>()
                .join(" "),
        );
        self.report(name, median, unit);
    }
}

/// Calls `op` in chunks until `duration` has passed; returns the number of calls and the
/// time they took.
fn run_for(duration: Duration, op: &mut impl FnMut(u64), counter: &mut u64) -> (u64, Duration) {
    let start = Instant::now();
    let mut ops = 0u64;
    let mut chunk = 1u64;
    loop {
        for _ in 0..chunk {
            op(black_box(*counter));
            *counter = counter.wrapping_add(1);
        }
        ops = ops.saturating_add(chunk);
        let elapsed = start.elapsed();
        if elapsed >= duration {
            return (ops, elapsed);
        }
        chunk = (chunk * 2).min(MAX_CHUNK);
    }
}

/// The median (the upper one for an even count); 0 for no values.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}
