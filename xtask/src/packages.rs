//! System packages the test suites need, and installing the missing ones.
//!
//! Each suite declares its Debian packages in [`NEEDS`]; the `packages` step checks the ones
//! the selected steps need with `dpkg-query`. As root it installs what is missing with
//! `apt-get`; otherwise it prints the command to run and fails.

use std::collections::BTreeSet;
use std::process::Command;

use crate::cmd;
use crate::steps::{Ctx, Outcome};
use crate::{stubdom, xen_rig};

/// A Debian package, from the default suite or from a named one (`apt-get install -t`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) struct Package {
    pub(crate) name: &'static str,
    /// `None` for the default release, else e.g. `Some("bookworm-backports")`.
    pub(crate) release: Option<&'static str>,
}

pub(crate) const fn debian(name: &'static str) -> Package {
    Package {
        name,
        release: None,
    }
}

/// The packages each step needs, by step name. The end-to-end suite (crate `tests/`, run by
/// the `test` step) drives the real Xen clients: `xenstore-utils` (xenstore-read, -write,
/// -ls...), `xen-utils-4.17` (test-xenstore, xenstore-control, and C xenstored for
/// reference runs), `python3-pyxs`; `gcc` builds the anchors' shim for reference runs.
/// The suite also boots the stub-domain image under QEMU (`tests/tests/stubdom.rs`), which
/// the `stubdom` step runs when the `test` step does not.
pub(crate) const NEEDS: &[(&str, &[Package])] = &[
    (
        "test",
        &[
            debian("xenstore-utils"),
            debian("xen-utils-4.17"),
            debian("python3-pyxs"),
            debian("gcc"),
            stubdom::QEMU_PACKAGE,
        ],
    ),
    ("stubdom", stubdom::PACKAGES),
    ("xen-rig", xen_rig::PACKAGES),
];

/// The `packages` step.
pub(crate) fn step(ctx: &Ctx<'_>) -> Outcome {
    let wanted: Vec<Package> = NEEDS
        .iter()
        .filter(|(step, _)| ctx.selected(step))
        .flat_map(|(_, packages)| packages.iter().copied())
        .collect();
    if wanted.is_empty() {
        println!("no system packages needed by the selected steps");
        return Outcome::Pass;
    }
    ensure(&wanted).into()
}

/// Makes sure `packages` are installed: as root, installs the missing ones (adding the apt
/// sources of the suites they come from); otherwise prints the command to run and fails.
pub(crate) fn ensure(packages: &[Package]) -> Result<(), String> {
    let wanted: BTreeSet<Package> = packages.iter().copied().collect();
    let missing = missing(&wanted);
    if missing.is_empty() {
        println!("all {} needed system packages are installed", wanted.len());
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|p| p.name).collect();
    println!("missing system packages: {}", names.join(" "));
    if !is_root() {
        println!("not root: install them with");
        for cmd in install_commands(&missing) {
            println!("    sudo {}", cmd::display(&cmd));
        }
        return Err(format!("missing packages: {}", names.join(" ")));
    }
    let releases: BTreeSet<&str> = missing.iter().filter_map(|p| p.release).collect();
    for release in releases {
        ensure_source(release)?;
    }
    let mut update = Command::new("apt-get");
    update.arg("update");
    cmd::run(&mut update)?;
    for mut install in install_commands(&missing) {
        // One retry: dpkg sometimes trips over its own temporary files on a busy machine.
        if cmd::run(&mut install).is_err() {
            println!("apt-get install failed; retrying once");
            cmd::run(&mut install)?;
        }
    }
    let still = missing_names(&wanted);
    if still.is_empty() {
        Ok(())
    } else {
        Err(format!("still missing after install: {}", still.join(" ")))
    }
}

const APT_SOURCES: &str = "/etc/apt/sources.list";
const APT_SOURCES_DIR: &str = "/etc/apt/sources.list.d";

/// Makes sure apt knows the Debian suite `release` (e.g. `bookworm-backports`, which a
/// stock Debian image does not list), adding a deb822 source for it when none names it.
fn ensure_source(release: &str) -> Result<(), String> {
    let mut files = vec![std::path::PathBuf::from(APT_SOURCES)];
    if let Ok(dir) = std::fs::read_dir(APT_SOURCES_DIR) {
        files.extend(dir.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| {
            p.extension()
                .is_some_and(|ext| ext == "list" || ext == "sources")
        }));
    }
    let listed = files
        .iter()
        .any(|f| std::fs::read_to_string(f).is_ok_and(|text| names_suite(&text, release)));
    if listed {
        return Ok(());
    }
    let path = format!("{APT_SOURCES_DIR}/{release}.sources");
    println!("adding apt source {path}");
    std::fs::write(&path, deb822_source(release)).map_err(|e| format!("writing {path}: {e}"))
}

/// Whether an apt source file's (uncommented) lines name `suite`.
fn names_suite(text: &str, suite: &str) -> bool {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .any(|l| l.split_whitespace().any(|word| word == suite))
}

fn deb822_source(suite: &str) -> String {
    format!(
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {suite}\nComponents: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
}

fn missing(wanted: &BTreeSet<Package>) -> Vec<Package> {
    wanted
        .iter()
        .copied()
        .filter(|p| !installed(p.name))
        .collect()
}

fn missing_names(wanted: &BTreeSet<Package>) -> Vec<&'static str> {
    missing(wanted).iter().map(|p| p.name).collect()
}

fn installed(name: &str) -> bool {
    let mut query = Command::new("dpkg-query");
    query.args(["-W", "-f=${Status}", name]);
    // dpkg-query exits non-zero for a package it has never heard of; that is "missing" too.
    cmd::output(&mut query).is_ok_and(|status| status.trim() == "install ok installed")
}

/// One `apt-get install` per release the missing packages come from.
fn install_commands(missing: &[Package]) -> Vec<Command> {
    let releases: BTreeSet<Option<&str>> = missing.iter().map(|p| p.release).collect();
    releases
        .into_iter()
        .map(|release| {
            let mut install = Command::new("apt-get");
            install.env("DEBIAN_FRONTEND", "noninteractive").args([
                "install",
                "-y",
                "--no-install-recommends",
            ]);
            if let Some(release) = release {
                install.args(["-t", release]);
            }
            install.args(
                missing
                    .iter()
                    .filter(|p| p.release == release)
                    .map(|p| p.name),
            );
            install
        })
        .collect()
}

/// Whether we run as root: the effective uid in `/proc/self/status`, else `id -u`.
fn is_root() -> bool {
    let from_proc = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
            uids.split_whitespace().nth(1).map(|euid| euid == "0")
        });
    from_proc.unwrap_or_else(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_suite_in_both_source_formats() {
        assert!(names_suite(
            &deb822_source("bookworm-backports"),
            "bookworm-backports"
        ));
        assert!(names_suite(
            "deb http://deb.debian.org/debian bookworm-backports main\n",
            "bookworm-backports"
        ));
        assert!(!names_suite(
            "Suites: bookworm bookworm-updates\n# Suites: bookworm-backports\n",
            "bookworm-backports"
        ));
    }

    #[test]
    fn one_install_per_release() {
        let missing = [
            Package {
                name: "xenstore-utils",
                release: None,
            },
            Package {
                name: "qemu-system-x86",
                release: Some("bookworm-backports"),
            },
            Package {
                name: "python3-pyxs",
                release: None,
            },
        ];
        let lines: Vec<String> = install_commands(&missing)
            .iter()
            .map(cmd::display)
            .collect();
        assert_eq!(
            lines,
            [
                "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
                 xenstore-utils python3-pyxs",
                "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
                 -t bookworm-backports qemu-system-x86",
            ]
        );
    }
}
