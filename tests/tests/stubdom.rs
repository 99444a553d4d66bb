//! The XenStore stub-domain image (`crates/xs-stubdom`) booted under QEMU: its self-test
//! must pass, and a failing check must fail the run.
//!
//! The image is built with the same command as `cargo xtask stubdom` (its own workspace and
//! target dir, `targets/stubdom.toml`), unless `XS_STUBDOM_IMAGE` names one already built. It
//! boots with `qemu-system-x86_64 -kernel <elf> -nographic -nic none -device
//! isa-debug-exit,iobase=0xf4,iosize=0x04 -no-reboot -m 256M`, under KVM (`-accel kvm -cpu
//! host`) when `/dev/kvm` can run it and under TCG otherwise, which the test says. The image
//! leaves through isa-debug-exit: QEMU exits with `(v << 1) | 1` for the value `v` it writes,
//! 0x10 (status 33) when every check passed, 0x11 (35) when one failed, 0x12 (37) on a fatal
//! error (which a third test provokes). The tests skip, saying so, only when QEMU is not installed (`XS_E2E_NO_SKIP=1`
//! makes that a failure).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use xs_e2e::{Skip, note, require};

const QEMU: &str = "qemu-system-x86_64";
const STATUS_PASSED: i32 = 33;
const STATUS_FAILED: i32 = 35;
const STATUS_FATAL: i32 = 37;
/// Fewest checks a passing run must report.
const MIN_CHECKS: u32 = 20;
const TIMEOUT_KVM: Duration = Duration::from_secs(120);
const TIMEOUT_TCG: Duration = Duration::from_secs(600);

/// The repository root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// QEMU, or a skip.
fn qemu() -> Result<PathBuf, Skip> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(QEMU))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Skip(format!(
                "`{QEMU}` not found (Debian package qemu-system-x86 from bookworm-backports; \
                 `cargo xtask test` installs it)"
            ))
        })
}

/// The image: `XS_STUBDOM_IMAGE`, or built once per test process.
fn image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        if let Some(path) = std::env::var_os("XS_STUBDOM_IMAGE") {
            return PathBuf::from(path);
        }
        // Our executable is <target>/<profile>/deps/stubdom-<hash>: build beside the normal
        // output, in the same directory `cargo xtask stubdom` uses.
        let exe = std::env::current_exe().expect("current_exe");
        let target = exe
            .ancestors()
            .nth(3)
            .expect("the test executable lies in <target>/<profile>/deps")
            .join("stubdom");
        let root = root();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut c = Command::new(cargo);
        c.current_dir(&root)
            .args(["build", "--locked", "--release", "--manifest-path"])
            .arg(root.join("crates/xs-stubdom/Cargo.toml"))
            .arg("--config")
            .arg(root.join("targets/stubdom.toml"))
            .env("CARGO_TARGET_DIR", &target);
        // Flags for host builds must not replace the image's (they would take precedence
        // over targets/stubdom.toml).
        for var in [
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_BUILD_RUSTFLAGS",
            "CARGO_BUILD_TARGET",
        ] {
            c.env_remove(var);
        }
        let status = c
            .status()
            .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
        assert!(status.success(), "building the image failed: {c:?}");
        target.join("x86_64-unknown-linux-gnu/release/xs-stubdom")
    })
}

/// Why KVM cannot run the image here, if it cannot.
fn why_not_kvm() -> Option<String> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Some(format!("/dev/kvm is not usable ({e})"));
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Some(
            "/dev/kvm is kvm-pvm, which emulates a guest that is not PVM-aware with KVM's \
             instruction emulator, and that has no SSE"
                .into(),
        );
    }
    None
}

/// One boot: QEMU's exit status and the serial transcript.
#[derive(Debug)]
struct Run {
    accel: &'static str,
    status: Option<i32>,
    transcript: String,
}

impl Run {
    /// The transcript's lines, without terminal escapes and carriage returns.
    fn lines(&self) -> Vec<String> {
        self.transcript.lines().map(clean).collect()
    }

    /// The transcript without terminal escapes (which would clear the screen of whoever
    /// reads a failure).
    fn text(&self) -> String {
        self.lines().join("\n")
    }

    fn last_line(&self) -> String {
        self.lines()
            .into_iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
    }

    /// The counts of the last line, which must be the summary.
    fn summary(&self) -> (u32, u32) {
        let last = self.last_line();
        let parse = || -> Option<(u32, u32)> {
            let rest = last.strip_prefix("xs-selftest: ")?;
            let (passed, failed) = rest.split_once(" passed, ")?;
            Some((
                passed.parse().ok()?,
                failed.strip_suffix(" failed")?.parse().ok()?,
            ))
        };
        parse().unwrap_or_else(|| {
            panic!(
                "the last line is not `xs-selftest: N passed, M failed` but {last:?}; \
                 transcript ({}):\n{}",
                self.accel,
                self.text()
            )
        })
    }
}

fn clean(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out.trim_end().to_owned()
}

/// Boots the image with `append` as its command line: under KVM when it can run it, else
/// (or if KVM stops the guest with an internal error) under TCG, saying so.
fn boot(qemu: &Path, append: &str) -> Run {
    match why_not_kvm() {
        None => {
            let run = boot_with(qemu, "kvm", append);
            if !run.transcript.contains("KVM internal error") {
                return run;
            }
            note("KVM stopped the guest with an internal error: running it under TCG instead");
        }
        Some(why) => note(&format!("booting under TCG, not KVM: {why}")),
    }
    boot_with(qemu, "tcg", append)
}

fn boot_with(qemu: &Path, accel: &'static str, append: &str) -> Run {
    let mut c = Command::new(qemu);
    c.arg("-kernel")
        .arg(image())
        .args(["-nographic", "-nic", "none", "-no-reboot", "-m", "256M"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .args(["-append", append]);
    let timeout = if accel == "kvm" {
        c.args(["-accel", "kvm", "-cpu", "host"]);
        TIMEOUT_KVM
    } else {
        c.args(["-accel", "tcg"]);
        TIMEOUT_TCG
    };
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    let output = Arc::new(Mutex::new(Vec::new()));
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut stream| {
        let output = Arc::clone(&output);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stream.read(&mut buf) {
                output.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    })
    .collect();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for QEMU") {
            break status.code();
        }
        let stalled =
            String::from_utf8_lossy(&output.lock().unwrap()).contains("KVM internal error");
        if stalled || start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            if !stalled {
                let raw = String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
                let text: Vec<String> = raw.lines().map(clean).collect();
                let text = text.join("\n");
                panic!("{c:?} still running after {timeout:?}; transcript:\n{text}");
            }
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for r in readers {
        let _ = r.join();
    }
    let transcript = String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
    Run {
        accel,
        status,
        transcript,
    }
}

#[test]
fn the_self_test_passes_under_qemu() {
    let qemu = require!(qemu());
    let run = boot(&qemu, "");
    let (passed, failed) = run.summary();
    assert_eq!(
        (run.status, failed),
        (Some(STATUS_PASSED), 0),
        "QEMU ({}) exit status {:?} (33: passed, 35: a check failed, 37: fatal); transcript:\n{}",
        run.accel,
        run.status,
        run.text()
    );
    assert!(
        passed >= MIN_CHECKS,
        "only {passed} checks ran (at least {MIN_CHECKS} expected); transcript:\n{}",
        run.text()
    );
    let lines = run.lines();
    assert!(
        lines.iter().any(|l| l.starts_with("xs-stubdom: ready")),
        "no `ready` line; transcript:\n{}",
        run.text()
    );
    for needed in [
        "hostile/ring-index",
        "ring/reconnect",
        "txn/conflict",
        "scale/populate",
    ] {
        assert!(
            lines.iter().any(|l| *l == format!("ok   {needed}")),
            "check {needed} did not pass; transcript:\n{}",
            run.text()
        );
    }
    note(&format!(
        "{passed} checks passed under QEMU/{}; {}",
        run.accel.to_uppercase(),
        lines
            .iter()
            .find(|l| l.starts_with("figure: heap for"))
            .map_or("", String::as_str)
    ));
}

#[test]
fn a_failing_check_fails_the_run() {
    let qemu = require!(qemu());
    // `selftest.break=<check>` makes the image report that check failed.
    let run = boot(&qemu, "selftest.break=watch/fire");
    let (passed, failed) = run.summary();
    assert_eq!(
        (run.status, failed),
        (Some(STATUS_FAILED), 1),
        "QEMU ({}) exit status {:?}; transcript:\n{}",
        run.accel,
        run.status,
        run.text()
    );
    assert!(passed >= MIN_CHECKS - 1, "only {passed} checks passed");
    assert!(
        run.lines()
            .iter()
            .any(|l| l.starts_with("FAIL watch/fire: ")),
        "no FAIL line for the broken check; transcript:\n{}",
        run.text()
    );
}

#[test]
fn a_fatal_error_is_reported() {
    let qemu = require!(qemu());
    // `selftest.fault=page-fault` reads above the identity map once the store is ready: the
    // #PF handler (on its IST stack) must report it with the trace ring and exit with 37.
    let run = boot(&qemu, "selftest.fault=page-fault");
    let lines = run.lines();
    assert_eq!(
        run.status,
        Some(STATUS_FATAL),
        "QEMU ({}) exit status {:?}; transcript:\n{}",
        run.accel,
        run.status,
        run.text()
    );
    for wanted in [
        "FATAL: vector 14 (#PF page fault)",
        "  cr2 0x0000000140000000",
        "trace: ",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(wanted)),
            "no line starting {wanted:?}; transcript:\n{}",
            run.text()
        );
    }
    assert!(
        !lines.iter().any(|l| l.starts_with("xs-selftest: ")),
        "the self-test ran after a fatal error; transcript:\n{}",
        run.text()
    );
}
