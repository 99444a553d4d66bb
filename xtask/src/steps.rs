//! `cargo xtask test`: the project's one test command.
//!
//! Runs every step in [`STEPS`] (or the `--only` subset) in order, timing each and carrying on
//! after a failure so the summary shows everything; fails if any step failed.

use std::time::Instant;

use crate::cmd::{self, Workspace};
use crate::{bench, features, nostd, packages, stubdom, vmm, xen_rig};

/// What a step is given.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub(crate) ws: &'a Workspace,
    /// Names of the steps this run executes.
    pub(crate) selected: &'a [&'static str],
}

impl Ctx<'_> {
    pub(crate) fn selected(&self, step: &str) -> bool {
        self.selected.contains(&step)
    }
}

/// How a step ended; the text says why it failed or was skipped.
#[derive(Debug)]
pub(crate) enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

impl From<Result<(), String>> for Outcome {
    fn from(result: Result<(), String>) -> Outcome {
        result.map_or_else(Outcome::Fail, |()| Outcome::Pass)
    }
}

#[derive(Debug)]
pub(crate) struct Step {
    pub(crate) name: &'static str,
    pub(crate) about: &'static str,
    run: fn(&Ctx<'_>) -> Outcome,
}

/// The steps, in the order they run.
pub(crate) const STEPS: &[Step] = &[
    Step {
        name: "packages",
        about: "system packages the selected suites need (installed when root)",
        run: packages::step,
    },
    Step {
        name: "fmt",
        about: "cargo fmt --all -- --check",
        run: fmt,
    },
    Step {
        name: "clippy",
        about: "cargo clippy --workspace --all-targets -- -D warnings",
        run: clippy,
    },
    Step {
        name: "test",
        about: "cargo test --workspace (with the end-to-end suite against a release xs-host, \
                and the stub-domain image's boots under QEMU)",
        run: test,
    },
    Step {
        name: "doc",
        about: "cargo doc --workspace --no-deps, warnings denied",
        run: doc,
    },
    Step {
        name: "examples",
        about: "the embedding examples (crates/xs-serve/examples) run and reach their end",
        run: examples,
    },
    Step {
        name: "features",
        about: "each library crate with no features, each alone, defaults, all; xs-ring's \
                graph in each (no xs-core, nothing that allocates)",
        run: features::step,
    },
    Step {
        name: "nostd",
        about: "xs-core and xs-serve in a no_std staticlib, xs-ring in one without an \
                allocator, linked and run; deps checked",
        run: nostd::step,
    },
    Step {
        name: "bench-smoke",
        about: "bench-core --quick runs to completion",
        run: bench_smoke,
    },
    Step {
        name: "fuzz-smoke",
        about: "the fuzz harnesses (fuzz/) on seeded inputs and saved corpora, on stable",
        run: fuzz_smoke,
    },
    Step {
        name: "loom",
        about: "loom models of the ring protocol (xs-ring/tests/loom.rs)",
        run: loom,
    },
    // Built as its own workspace in its own target subdirectory, so its flags
    // (panic = "abort", the linker script) never invalidate the normal build cache.
    Step {
        name: "stubdom",
        about: "stub-domain image: fmt/clippy/doc, build, nm -u, PVH note, size; its boots under \
                QEMU (tests/tests/stubdom.rs) unless step `test` runs them",
        run: stubdom::step,
    },
    // The guest image is its own workspace too (`<target>/vmm-guest`).
    Step {
        name: "vmm",
        about: "xs-vmm's guest: fmt/clippy, build with xs-vmm; run under KVM and pass only if \
                its self-test passed (skipped when /dev/kvm is not usable)",
        run: vmm::step,
    },
    Step {
        name: "xen-rig",
        about: "xs-host as dom0's xenstored, then the stub-domain image as the XenStore \
                domain, on Xen 4.17 under QEMU/TCG: `cargo xtask xen-rig` \
                (tests/xen-rig/README.md)",
        run: xen_rig::step,
    },
];

/// Runs the named steps (all when `only` is empty) and prints the summary. True if none
/// failed.
pub(crate) fn run(ws: &Workspace, only: &[String], skip_packages: bool) -> bool {
    let selected: Vec<&'static str> = STEPS
        .iter()
        .map(|s| s.name)
        .filter(|name| only.is_empty() || only.iter().any(|o| o == name))
        .collect();
    let ctx = Ctx {
        ws,
        selected: &selected,
    };
    let mut results = Vec::new();
    for step in STEPS.iter().filter(|s| ctx.selected(s.name)) {
        println!("\n==> {}: {}", step.name, step.about);
        let start = Instant::now();
        let outcome = if step.name == "packages" && skip_packages {
            Outcome::Skip("--skip-packages".into())
        } else {
            (step.run)(&ctx)
        };
        let secs = start.elapsed().as_secs_f64();
        match &outcome {
            Outcome::Pass => println!("==> {}: PASS ({secs:.1}s)", step.name),
            Outcome::Fail(why) => println!("==> {}: FAIL ({secs:.1}s): {why}", step.name),
            Outcome::Skip(why) => println!("==> {}: SKIP: {why}", step.name),
        }
        results.push((step.name, outcome, secs));
    }
    summary(&results)
}

fn summary(results: &[(&str, Outcome, f64)]) -> bool {
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    println!("\n{:<12} {:<6} {:>8}  note", "step", "result", "seconds");
    for (name, outcome, secs) in results {
        let (result, note) = match outcome {
            Outcome::Pass => {
                passed += 1;
                ("PASS", "")
            }
            Outcome::Fail(why) => {
                failed += 1;
                ("FAIL", why.as_str())
            }
            Outcome::Skip(why) => {
                skipped += 1;
                ("SKIP", why.as_str())
            }
        };
        let line = format!("{name:<12} {result:<6} {secs:>8.1}  {note}");
        println!("{}", line.trim_end());
    }
    println!("\nxtask test: {passed} passed, {failed} failed, {skipped} skipped");
    failed == 0
}

fn fmt(ctx: &Ctx<'_>) -> Outcome {
    cmd::run(&mut ctx.ws.cargo(["fmt", "--all", "--", "--check"])).into()
}

fn clippy(ctx: &Ctx<'_>) -> Outcome {
    let args = [
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ];
    cmd::run(&mut ctx.ws.cargo(args)).into()
}

/// All the workspace's tests, the end-to-end suite (`tests/`) included: it gets a release
/// `xs-host` built first and is told that skipping for a missing client is a failure here
/// (the `packages` step installed them). Its stub-domain tests build the image from this
/// checkout (the one step `stubdom` checks), never one named in the caller's environment.
fn test(ctx: &Ctx<'_>) -> Outcome {
    if let Err(why) = cmd::run(&mut ctx.ws.cargo(["build", "--release", "-p", "xs-host"])) {
        return Outcome::Fail(why);
    }
    let mut c = ctx.ws.cargo(["test", "--workspace"]);
    c.env(
        "XS_HOST_BIN",
        ctx.ws.target_dir.join("release").join("xs-host"),
    )
    .env("XS_E2E_NO_SKIP", "1")
    .env_remove("XS_STUBDOM_IMAGE");
    cmd::run(&mut c).into()
}

fn doc(ctx: &Ctx<'_>) -> Outcome {
    let mut c = ctx.ws.cargo(["doc", "--workspace", "--no-deps"]);
    c.env("RUSTDOCFLAGS", "-D warnings");
    cmd::run(&mut c).into()
}

/// The examples a newcomer copies from, each with the line that says it did its job.
const EXAMPLES: &[(&str, &str, &str)] = &[
    (
        "xs-serve",
        "in_process_backend",
        "handshake complete: backend Connected, frontend Connected",
    ),
    (
        "xs-serve",
        "two_threads",
        "done: both ends on their own threads",
    ),
];

/// The examples must not rot: each runs and prints its last line.
fn examples(ctx: &Ctx<'_>) -> Outcome {
    let mut failures = Vec::new();
    for &(package, example, last) in EXAMPLES {
        let args = ["run", "-q", "-p", package, "--example", example];
        match cmd::output(&mut ctx.ws.cargo(args)) {
            Ok(out) => {
                print!("{out}");
                if !out.lines().last().is_some_and(|l| l.starts_with(last)) {
                    failures.push(format!("{example}: the last line is not {last:?}"));
                }
            }
            Err(why) => failures.push(format!("{example}: {why}")),
        }
    }
    if failures.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail(failures.join("; "))
    }
}

/// The benchmark must keep building and running, so it cannot rot between measurements.
fn bench_smoke(ctx: &Ctx<'_>) -> Outcome {
    let source = bench::source(&ctx.ws.root, "bench-core");
    if !source.exists() {
        return Outcome::Skip("bench-core binary not present".into());
    }
    let mut c = ctx.ws.cargo([
        "run",
        "--release",
        "-p",
        "xs-bench",
        "--bin",
        "bench-core",
        "--",
        "--quick",
    ]);
    cmd::run(&mut c).into()
}

/// The fuzz harnesses live outside the workspace (libFuzzer's build is not part of the normal
/// one); on stable their smoke tests run them over seeded inputs and every saved input, so
/// they keep building and past crashes stay fixed. Real fuzzing: `cargo +nightly fuzz run`.
fn fuzz_smoke(ctx: &Ctx<'_>) -> Outcome {
    let manifest = ctx.ws.root.join("fuzz").join("Cargo.toml");
    let manifest = manifest.to_string_lossy().into_owned();
    let target = ctx.ws.target_dir.join("fuzz-smoke");
    let mut clippy = ctx.ws.cargo([
        "clippy",
        "--manifest-path",
        &manifest,
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    clippy.env("CARGO_TARGET_DIR", &target);
    if let Err(why) = cmd::run(&mut clippy) {
        return Outcome::Fail(why);
    }
    let mut test = ctx
        .ws
        .cargo(["test", "--release", "--manifest-path", &manifest]);
    test.env("CARGO_TARGET_DIR", &target);
    cmd::run(&mut test).into()
}

/// Preemptions per execution the loom models explore, unless `LOOM_MAX_PREEMPTIONS` is set
/// already. At 10, five of the seven models are explored exhaustively (as many executions
/// as with no bound) and the other two nearly so (87% and 94% of their executions), in
/// about 30 s on two cores, plus about 70 s when the loom target dir is built from scratch;
/// with no bound (unset, by hand) the models take about 40 s.
const LOOM_MAX_PREEMPTIONS: &str = "10";

/// The loom models of the ring protocol. `--cfg loom` changes the build of every crate, so
/// it gets its own target dir, never invalidating the normal build cache.
fn loom(ctx: &Ctx<'_>) -> Outcome {
    let args = [
        "test",
        "-p",
        "xs-ring",
        "--test",
        "loom",
        "--release",
        "--",
        "--nocapture",
    ];
    let mut c = ctx.ws.cargo(args);
    c.env("RUSTFLAGS", "--cfg loom")
        .env("CARGO_TARGET_DIR", ctx.ws.target_dir.join("loom"));
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        c.env("LOOM_MAX_PREEMPTIONS", LOOM_MAX_PREEMPTIONS);
    }
    cmd::run(&mut c).into()
}
