//! The no_std proof (step `nostd`): `xs-core` and `xs-serve` must build and run with nothing
//! but `core` and `alloc`, and `xs-ring` with nothing but `core`.
//!
//! 1. xs-core's and xs-serve's normal dependencies, as `cargo tree --locked` resolves them,
//!    are printed, checked against what Cargo.lock records for them, and checked for crates
//!    that reach the operating system.
//! 2. `crates/nostd-check` (xs-core and xs-serve) and `crates/nostd-ring-check` (xs-ring)
//!    are built as static libraries in release with `panic = "abort"`, in their own target
//!    dir. Each is `#![no_std]` with its own panic handler: a crate anywhere in the graph
//!    that linked `std` would bring std's as well, and the build would fail. The ring's has
//!    no global allocator either: had anything in its graph linked `alloc`, rustc would
//!    refuse to build it.
//! 3. Each archive is linked into a small C program that calls its entry point, which drives
//!    the store and a dispatcher (or both ends of a ring); the program must exit 0.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::cmd::{self, Workspace};
use crate::steps::{Ctx, Outcome};

/// Crates that must never be normal dependencies of xs-core: they reach the operating system
/// (through std or libc) or exist for tests only. The build in (2) is the real proof; this
/// list names the culprit early and plainly.
const FORBIDDEN: &[&str] = &[
    "std",
    "libc",
    "getrandom",
    "rustix",
    "linux-raw-sys",
    "errno",
    "tempfile",
    "fastrand",
    "rand",
    "proptest",
    "rusty-fork",
    "wait-timeout",
    "loom",
    "parking_lot",
    "crossbeam-utils",
    "tokio",
    "mio",
];

/// A proof of (2) and (3): its crate (under `crates/`), its archive and its entry point.
struct Proof {
    krate: &'static str,
    archive: &'static str,
    entry: &'static str,
}

const PROOFS: [Proof; 2] = [
    Proof {
        krate: "nostd-check",
        archive: "libnostd_check.a",
        entry: "xs_nostd_check",
    },
    Proof {
        krate: "nostd-ring-check",
        archive: "libnostd_ring_check.a",
        entry: "xs_ring_nostd_check",
    },
];

/// Crates whose normal dependency graph (1) checks.
const CHECKED: [&str; 2] = ["xs-core", "xs-serve"];

/// The C program of (3), calling `entry`. The precompiled `core`/`alloc` refer to
/// `rust_eh_personality` even under `panic = "abort"`, so the program supplies an empty one,
/// as the bare-metal image will (design notes §5); nothing calls it.
fn harness(entry: &str) -> String {
    format!(
        "/* Written by `cargo xtask test` (step nostd). */
#include <stdint.h>
uint32_t {entry}(void);
void rust_eh_personality(void) {{}}
int main(void) {{ return (int){entry}(); }}
"
    )
}

/// How long the linked program may run; a panic spins forever in the no_std handler.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) fn step(ctx: &Ctx<'_>) -> Outcome {
    let mut failures = Vec::new();
    for krate in CHECKED {
        if let Err(e) = check_tree(ctx.ws, krate) {
            failures.push(e);
        }
    }
    for proof in &PROOFS {
        if let Err(e) = build(ctx.ws, proof).and_then(|lib| link_and_run(ctx.ws, proof, &lib)) {
            failures.push(e);
        }
    }
    if failures.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail(failures.join("; "))
    }
}

/// (1): `krate`'s normal dependency graph.
fn check_tree(ws: &Workspace, krate: &str) -> Result<(), String> {
    let args = [
        "tree", "-p", krate, "-e", "normal", "--prefix", "none", "--locked",
    ];
    let tree = cmd::output(&mut ws.cargo(args))?;
    // Lines read `name vX.Y.Z`, then ` (path)` for local crates and ` (*)` for repeats.
    let deps: BTreeSet<(String, String)> = tree
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?;
            let version = words.next()?.strip_prefix('v')?;
            Some((name.to_owned(), version.to_owned()))
        })
        .collect();
    println!("{krate}'s normal dependency graph ({} crates):", deps.len());
    for (name, version) in &deps {
        println!("    {name} {version}");
    }

    let lock_path = ws.root.join("Cargo.lock");
    let lock = std::fs::read_to_string(&lock_path)
        .map_err(|e| format!("cannot read {}: {e}", lock_path.display()))?;
    // Cargo.lock lists a workspace crate's dev-dependencies among its dependencies, so what it
    // reaches from the crate is a superset of the normal graph.
    let locked = lock_closure(&parse_lock(&lock), krate);
    let mut problems = Vec::new();
    for (name, version) in &deps {
        if !locked.contains(&(name.clone(), version.clone())) {
            problems.push(format!(
                "{name} {version} is not in Cargo.lock's graph for {krate}"
            ));
        }
        if FORBIDDEN.contains(&name.as_str()) {
            problems.push(format!("{name} must not be a normal dependency of {krate}"));
        }
    }
    if deps.is_empty() {
        problems.push("cargo tree listed nothing".into());
    }
    if problems.is_empty() {
        println!("dependency graph matches Cargo.lock; no OS-bound or test-only crate in it");
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// A `[[package]]` entry of Cargo.lock.
#[derive(Debug, Default)]
struct Locked {
    name: String,
    version: String,
    /// Entries read `name`, `name version` or `name version (source)`.
    dependencies: Vec<String>,
}

/// Just enough of Cargo.lock's format (TOML written by cargo, one key per line).
fn parse_lock(text: &str) -> Vec<Locked> {
    let mut packages: Vec<Locked> = Vec::new();
    let mut in_deps = false;
    for line in text.lines().map(str::trim) {
        if line == "[[package]]" {
            packages.push(Locked::default());
            in_deps = false;
            continue;
        }
        let Some(package) = packages.last_mut() else {
            continue;
        };
        if in_deps {
            if line == "]" {
                in_deps = false;
            } else {
                package
                    .dependencies
                    .push(line.trim_end_matches(',').trim_matches('"').to_owned());
            }
        } else if let Some(value) = line.strip_prefix("name = ") {
            package.name = value.trim_matches('"').to_owned();
        } else if let Some(value) = line.strip_prefix("version = ") {
            package.version = value.trim_matches('"').to_owned();
        } else if line == "dependencies = [" {
            in_deps = true;
        }
    }
    packages
}

/// Every `(name, version)` Cargo.lock reaches from package `root`.
fn lock_closure(packages: &[Locked], root: &str) -> BTreeSet<(String, String)> {
    let mut seen = BTreeSet::new();
    let mut queue: VecDeque<&Locked> = packages.iter().filter(|p| p.name == root).collect();
    while let Some(package) = queue.pop_front() {
        if !seen.insert((package.name.clone(), package.version.clone())) {
            continue;
        }
        for dep in &package.dependencies {
            let mut words = dep.split_whitespace();
            let name = words.next().unwrap_or_default();
            let version = words.next();
            queue.extend(
                packages
                    .iter()
                    .filter(|p| p.name == name && version.is_none_or(|v| p.version == v)),
            );
        }
    }
    seen
}

/// (2): the archive, built apart from the normal build so its flags do not invalidate it.
fn build(ws: &Workspace, proof: &Proof) -> Result<PathBuf, String> {
    let target_dir = ws.target_dir.join("nostd");
    let manifest = ws.root.join("crates").join(proof.krate).join("Cargo.toml");
    let manifest = manifest.to_string_lossy().into_owned();
    // The crate is its own workspace (see its Cargo.toml): lint and unit-test it here.
    for args in [
        vec![
            "clippy",
            "--manifest-path",
            &manifest,
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        vec!["test", "--manifest-path", &manifest],
    ] {
        let mut c = ws.cargo(args);
        c.env("CARGO_TARGET_DIR", &target_dir);
        cmd::run(&mut c)?;
    }
    let mut c = ws.cargo([
        "rustc",
        "--manifest-path",
        &manifest,
        "--release",
        "--crate-type",
        "staticlib",
        "--config",
        r#"profile.release.panic="abort""#,
    ]);
    c.env("CARGO_TARGET_DIR", &target_dir);
    cmd::run(&mut c)?;
    Ok(target_dir.join("release").join(proof.archive))
}

/// (3): link the archive into a C program and run it.
fn link_and_run(ws: &Workspace, proof: &Proof, lib: &Path) -> Result<(), String> {
    let dir = ws.target_dir.join("nostd");
    let source = dir.join(format!("{}-main.c", proof.krate));
    let exe = dir.join(format!("{}-main", proof.krate));
    std::fs::write(&source, harness(proof.entry))
        .map_err(|e| format!("cannot write {}: {e}", source.display()))?;
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let mut link = Command::new(cc);
    link.arg(&source).arg(lib).arg("-o").arg(&exe);
    cmd::run(&mut link)?;
    match cmd::run_with_timeout(&mut Command::new(&exe), RUN_TIMEOUT)? {
        0 => {
            println!("{}() returned 0", proof.entry);
            Ok(())
        }
        code => Err(format!("{}() failed at its step {code}", proof.entry)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: &str = r#"
version = 4

[[package]]
name = "a"
version = "1.0.0"
dependencies = [
 "b 2.0.0",
 "c",
]

[[package]]
name = "b"
version = "1.0.0"

[[package]]
name = "b"
version = "2.0.0"

[[package]]
name = "c"
version = "0.1.0"
dependencies = [
 "b 1.0.0 (registry+https://github.com/rust-lang/crates.io-index)",
]

[[package]]
name = "d"
version = "0.1.0"
"#;

    #[test]
    fn closure_follows_versions() {
        let got = lock_closure(&parse_lock(LOCK), "a");
        let want: BTreeSet<(String, String)> = [
            ("a", "1.0.0"),
            ("b", "1.0.0"),
            ("b", "2.0.0"),
            ("c", "0.1.0"),
        ]
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(got, want);
    }
}
