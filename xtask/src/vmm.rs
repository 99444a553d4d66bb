//! xs-vmm (`crates/xs-vmm`) and its guest (`crates/xs-vmm-guest`): building both, and running
//! the guest under KVM.
//!
//! * `cargo xtask vmm` builds the guest image (its own workspace, `targets/vmm-guest.toml`,
//!   target dir `<target>/vmm-guest`) and xs-vmm (release), and prints the image's path.
//! * `cargo xtask vmm --run` also runs the guest, once per hypercall path (the default: port
//!   I/O stubs called at CPL0; `--mmio-hypercalls`: MMIO stubs called from CPL3), echoing
//!   what it prints, and passes only if xs-vmm exits 0 and the guest's last line is
//!   `xs-vmm-guest: N passed, 0 failed` each time.
//! * `cargo xtask bench vmm [ROUND_TRIPS]` runs it with the guest's benchmark (READ round
//!   trips through the ring, with the event channel's upcall and with polling; the time from
//!   VM start to the console Connected), printing `bench <name> <value> <unit>` lines.
//! * Step `vmm` of `cargo xtask test` (alone: `cargo xtask vmm --step`): the guest crate's
//!   formatting and clippy, both builds, then the run when `/dev/kvm` is usable (skipped,
//!   saying why, when it is not).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::cmd::{self, Workspace};
use crate::steps::{Ctx, Outcome};

/// The guest crate's manifest.
fn manifest(root: &Path) -> PathBuf {
    root.join("crates/xs-vmm-guest/Cargo.toml")
}

/// `cargo <subcommand>` for the guest: release, locked, its `--config` file and target dir,
/// without host-build flags.
fn guest_cargo(ws: &Workspace, subcommand: &str) -> Command {
    let mut c = ws.cargo([subcommand, "--locked", "--release", "--manifest-path"]);
    c.arg(manifest(&ws.root))
        .arg("--config")
        .arg(ws.root.join("targets/vmm-guest.toml"))
        .env("CARGO_TARGET_DIR", ws.target_dir.join("vmm-guest"));
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
    ] {
        c.env_remove(var);
    }
    c
}

/// Builds the guest image and xs-vmm; returns (image, vmm binary).
fn build(ws: &Workspace) -> Result<(PathBuf, PathBuf), String> {
    cmd::run(&mut guest_cargo(ws, "build"))?;
    cmd::run(&mut ws.cargo(["build", "--release", "-p", "xs-vmm"]))?;
    let image = ws
        .target_dir
        .join("vmm-guest/x86_64-unknown-linux-gnu/release/xs-vmm-guest");
    Ok((image, ws.target_dir.join("release/xs-vmm")))
}

/// Why `/dev/kvm` cannot be used here, if it cannot.
fn kvm_unusable() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/kvm is not usable ({e})")),
    }
}

/// The two hypercall paths xs-vmm offers: its default, the hypercall page's port-I/O stubs
/// called at CPL0 (the guest's CPL3 code reaches them through its `#UD` trampoline, as Xen
/// wants hypercalls from the kernel); and MMIO stubs called straight from CPL3.
const PATHS: &[(&str, &[&str])] = &[("", &[]), ("mmio_", &["--mmio-hypercalls"])];

/// Runs xs-vmm on the image; returns its output, after checking the verdict.
fn run(vmm: &Path, image: &Path, extra: &[String]) -> Result<String, String> {
    let mut c = Command::new(vmm);
    c.args(["--timeout", "120"]).args(extra).arg(image);
    println!("$ {}", cmd::display(&c));
    let started = Instant::now();
    let out = c
        .output()
        .map_err(|e| format!("could not start xs-vmm: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    println!("vmm: ran in {:.2} s", started.elapsed().as_secs_f64());
    let last = stdout
        .lines()
        .rfind(|l| l.starts_with("xs-vmm-guest: ") && l.contains(" passed, "));
    match last {
        Some(line) if out.status.success() && line.ends_with(" passed, 0 failed") => Ok(stdout),
        Some(line) => Err(format!("the guest's self-test: `{line}` ({})", out.status)),
        None => Err(format!(
            "the guest printed no verdict line `xs-vmm-guest: N passed, M failed` ({})",
            out.status
        )),
    }
}

/// `cargo xtask vmm [--run] | --step`.
pub(crate) fn command(ws: &Workspace, args: &[String]) -> Result<(), String> {
    match args {
        [] => {
            let (image, vmm) = build(ws)?;
            println!("{}\n{}", image.display(), vmm.display());
            Ok(())
        }
        [run_flag] if run_flag == "--run" => {
            let (image, vmm) = build(ws)?;
            run_paths(&vmm, &image, &[]).map(|_| ())
        }
        [step] if step == "--step" => match self::step(&Ctx {
            ws,
            selected: &["vmm"],
        }) {
            Outcome::Pass => Ok(()),
            Outcome::Fail(why) => Err(why),
            Outcome::Skip(why) => {
                println!("vmm: skipped: {why}");
                Ok(())
            }
        },
        other => Err(format!(
            "unknown arguments {other:?} for vmm (--run, --step)"
        )),
    }
}

/// `cargo xtask bench vmm [ROUND_TRIPS]`.
pub(crate) fn bench(ws: &Workspace, args: &[String]) -> Result<(), String> {
    let n = match args {
        [] => "20000".to_string(),
        [n] if n.parse::<u32>().is_ok() => n.clone(),
        other => {
            return Err(format!(
                "bench vmm takes a number of round trips, not {other:?}"
            ));
        }
    };
    if let Some(why) = kvm_unusable() {
        return Err(why);
    }
    let (image, vmm) = build(ws)?;
    let figures = run_paths(&vmm, &image, &["--bench".to_string(), n])?;
    eprintln!("\nvmm figures (`mmio_`: hypercalls straight from CPL3 by MMIO):");
    for line in figures {
        eprintln!("  {line}");
    }
    Ok(())
}

/// Runs the guest once per hypercall path; returns its `bench` lines, named `vmm_<path>...`.
fn run_paths(vmm: &Path, image: &Path, extra: &[String]) -> Result<Vec<String>, String> {
    let mut figures = Vec::new();
    for (prefix, flags) in PATHS {
        let mut args: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
        args.extend_from_slice(extra);
        let out = run(vmm, image, &args)?;
        figures.extend(
            out.lines()
                .filter_map(|l| l.strip_prefix("bench vmm_"))
                .map(|rest| format!("bench vmm_{prefix}{rest}")),
        );
    }
    if !extra.is_empty() {
        // The machine-readable lines, renamed per path.
        for line in &figures {
            println!("{line}");
        }
    }
    Ok(figures)
}

/// The `vmm` step of `cargo xtask test`.
pub(crate) fn step(ctx: &Ctx<'_>) -> Outcome {
    let ws = ctx.ws;
    let lint = || -> Result<(), String> {
        let mut c = ws.cargo(["fmt", "--manifest-path"]);
        c.arg(manifest(&ws.root)).args(["--", "--check"]);
        cmd::run(&mut c)?;
        let mut c = guest_cargo(ws, "clippy");
        c.args(["--", "-D", "warnings"]);
        cmd::run(&mut c)
    };
    if let Err(e) = lint() {
        return Outcome::Fail(e);
    }
    let (image, vmm) = match build(ws) {
        Ok(built) => built,
        Err(e) => return Outcome::Fail(e),
    };
    if let Some(why) = kvm_unusable() {
        return Outcome::Skip(format!("{why}: the guest was built but not run"));
    }
    run_paths(&vmm, &image, &[]).map(|_| ()).into()
}
