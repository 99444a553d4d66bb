//! `cargo xtask bench <core|socket|ring|live-update|vmm> [ARGS...]`: runs one of xs-bench's
//! benchmark binaries in release (`live-update` builds the release xs-host it updates
//! first; `vmm` runs xs-vmm's guest benchmark instead, see `vmm.rs`). Each prints lines
//! `bench <name> <value> <unit>`.

use std::path::{Path, PathBuf};

use crate::cmd::{self, Workspace};

/// Benchmark names and their binaries in `crates/xs-bench/src/bin/`.
pub(crate) const BENCHES: &[(&str, &str)] = &[
    ("core", "bench-core"),
    ("socket", "bench-socket"),
    ("ring", "bench-ring"),
    ("live-update", "bench-live-update"),
];

/// Where the source of benchmark binary `bin` lives: `<bin>.rs`, or `<bin>/main.rs` for one
/// split into modules.
pub(crate) fn source(root: &Path, bin: &str) -> PathBuf {
    let dir = root.join("crates/xs-bench/src/bin");
    let single = dir.join(format!("{bin}.rs"));
    if single.exists() {
        single
    } else {
        dir.join(bin).join("main.rs")
    }
}

/// Runs benchmark `args[0]` with the rest of `args`; `Err` says why it did not succeed.
pub(crate) fn run(ws: &Workspace, args: &[String]) -> Result<(), String> {
    let names: Vec<&str> = BENCHES.iter().map(|(name, _)| *name).collect();
    let Some((which, rest)) = args.split_first() else {
        return Err(format!(
            "which benchmark? one of: {}, vmm",
            names.join(", ")
        ));
    };
    if which == "vmm" {
        return crate::vmm::bench(ws, rest);
    }
    let Some(&(_, bin)) = BENCHES.iter().find(|(name, _)| name == which) else {
        return Err(format!(
            "no benchmark `{which}`; one of: {}, vmm",
            names.join(", ")
        ));
    };
    let path = source(&ws.root, bin);
    if !path.exists() {
        return Err(format!(
            "benchmark `{which}` does not exist yet: binary {bin} ({}) is absent",
            path.display()
        ));
    }
    if *which == "live-update" {
        cmd::run(&mut ws.cargo(["build", "--release", "-p", "xs-host"]))?;
    }
    let mut c = ws.cargo(["run", "--release", "-p", "xs-bench", "--bin", bin, "--"]);
    c.args(rest);
    cmd::run(&mut c)
}
