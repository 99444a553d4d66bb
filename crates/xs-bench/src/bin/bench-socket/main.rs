//! `bench-socket`: a load generator that speaks the XenStore wire protocol to any xenstored
//! Unix socket, and measures several daemons side by side.
//!
//! Every workload is run on every daemon in turn, round-robin and repeated, and the median of
//! the runs counts, so that the noise of a shared machine affects all daemons alike. Prints
//! `bench <name>@<socket name> <value> <unit>` lines on stdout; progress, a side-by-side table
//! with ratios, and the goal checks on stderr.

mod args;
mod config;
mod report;
mod runner;
mod setup;
mod workloads;

use std::process::ExitCode;
use std::time::Instant;

use xs_bench::daemon::{ANCHOR_KINDS, Anchors};

use crate::args::{HELP, parse_args};
use crate::config::Config;
use crate::report::{goals, notes, print_table};
use crate::runner::{run_workload, wanted};
use crate::setup::{tidy, warm_up};
use crate::workloads::workloads;

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bench-socket: {e}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    let begin = Instant::now();
    let cfg = Config::new(&args);
    // Anchors first, so that (by default) ratios are against C xenstored.
    let anchors = if args.start_anchors {
        eprintln!("bench-socket: starting {} ...", ANCHOR_KINDS.join(", "));
        match Anchors::start(&args.anchors_dir, &ANCHOR_KINDS) {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("bench-socket: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let (sockets, base) = match setup::sockets(&args, anchors.as_ref()) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut targets = match setup::targets(&cfg, sockets, &args.pids) {
        Ok(t) => t,
        Err(code) => return code,
    };
    eprintln!(
        "bench-socket ({} mode: {} ms per run, warm-up + {} runs, median; boot storm {} guests \
         by {} toolstacks; read timeout {:.0} s)",
        if cfg.quick { "quick" } else { "full" },
        cfg.run_time.as_millis(),
        cfg.runs,
        cfg.boot_guests,
        cfg.boot_toolstacks,
        cfg.timeout.as_secs_f64()
    );
    // Pin before any thread is created (they inherit the affinity).
    let pinned = match setup::pin(args.pin, &targets) {
        Ok(p) => p,
        Err(code) => return code,
    };
    // Wake every daemon (and the CPUs) before the first workload: without this the first
    // workload measures slower than the same operation later.
    for _ in 0..3 {
        for t in &targets {
            if let Err(e) = warm_up(&cfg, t) {
                eprintln!("bench-socket: {}: warm-up failed: {e}", t.name);
                return ExitCode::FAILURE;
            }
        }
    }
    let mut failures = 0u32;
    let mut rows = Vec::new();
    for w in workloads(&cfg) {
        if !wanted(&cfg, &w) {
            continue;
        }
        rows.extend(run_workload(&cfg, &mut targets, &w, &mut failures));
    }
    for t in &targets {
        if t.dead.is_none()
            && let Err(e) = tidy(&cfg, t)
        {
            eprintln!("bench-socket: {}: removing {}: {e}", t.name, cfg.root);
        }
    }
    print_table(&targets, &rows, base);
    notes(&targets);
    goals(&targets, &rows);
    drop(pinned);
    drop(anchors);
    eprintln!(
        "bench-socket: done in {:.1} s",
        begin.elapsed().as_secs_f64()
    );
    if failures > 0 {
        eprintln!("bench-socket: {failures} failure(s)");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
