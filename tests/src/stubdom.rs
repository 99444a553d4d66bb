//! The XenStore stub-domain image (`crates/xs-stubdom`): building it and booting it under
//! QEMU. The one harness for it: the end-to-end tests (`tests/stubdom.rs`) and `cargo xtask
//! stubdom` (which depends on this crate for it) both use it.
//!
//! It lives here, not in xtask, because it is test harness, like [`crate::daemon`] for
//! xs-host: `cargo test -p xs-e2e` must build and boot the image with no help from xtask,
//! while xtask, which drives the tests, may depend on their harness (the other way round the
//! tests would depend on the automation). Like the rest of the crate it is std only, so xtask
//! stays std only too.
//!
//! Building: `cargo build --locked --release --manifest-path crates/xs-stubdom/Cargo.toml
//! --config targets/stubdom.toml`, with `CARGO_TARGET_DIR=<target>/stubdom` (the image is its
//! own workspace and its flags must not invalidate the normal build cache), without the
//! host-build flag variables (they would replace the image's flags).
//!
//! Booting: `qemu-system-x86_64 -kernel <elf> -nographic -nic none -no-reboot -m 256M -device
//! isa-debug-exit,iobase=0xf4,iosize=0x04 [-append TEXT]`, with `-accel kvm -cpu host` when
//! KVM can run the image, else `-accel tcg`, saying why. KVM "can run it" when `/dev/kvm`
//! opens read-write and is not kvm-pvm: kvm-pvm (the KVM flavour of some nested sandboxes)
//! runs a guest kernel that is not PVM-aware through KVM's instruction emulator, which has no
//! SSE, and the image (like Rust's precompiled `core`) uses SSE. Should KVM still stop the
//! guest with an internal error, the boot is repeated under TCG.
//!
//! The image leaves through isa-debug-exit: QEMU exits with `(v << 1) | 1` for the value `v`
//! written, 0x10 ([`STATUS_PASSED`]) when every check passed, 0x11 ([`STATUS_FAILED`]) when
//! one failed, 0x12 ([`STATUS_FATAL`]) on a panic or an unexpected exception. The serial
//! transcript of a self-test ends with `xs-selftest: N passed, M failed`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::daemon::{own_target_dir, workspace_root};
use crate::skip::{Skip, on_path};

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// QEMU's exit status when the self-test passed: the image wrote 0x10 to isa-debug-exit.
pub const STATUS_PASSED: i32 = 33;
/// ... when a check failed (0x11).
pub const STATUS_FAILED: i32 = 35;
/// ... on a fatal error: a panic or an unexpected exception (0x12).
pub const STATUS_FATAL: i32 = 37;

/// The line the image prints once the store serves.
pub const READY: &str = "xs-stubdom: ready";

/// Fewest checks a passing run must report (the self-test has 24).
pub const MIN_CHECKS: u32 = 20;

/// How long one boot may take before it is killed as hung. The self-test runs in about a
/// second under KVM and in about 9 s under TCG (populating 100 domains × 1000 nodes three
/// times), about 16 s when the tests boot three images at once on two cores. The limits leave
/// a wide margin for a loaded machine while a hung image still fails within minutes.
const TIMEOUT_KVM: Duration = Duration::from_secs(60);
const TIMEOUT_TCG: Duration = Duration::from_secs(300);

/// The image crate's manifest.
pub fn manifest(root: &Path) -> PathBuf {
    root.join("crates").join("xs-stubdom").join("Cargo.toml")
}

/// `cargo <subcommand>` for the image (`build`, `clippy`, `doc`): release, locked, with its
/// `--config` file and its own target dir `<target>/stubdom`, run from the workspace `root`,
/// without host-build flags. Further arguments go after.
pub fn cargo(root: &Path, target: &Path, subcommand: &str) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut c = Command::new(cargo);
    c.current_dir(root)
        .args([subcommand, "--locked", "--release", "--manifest-path"])
        .arg(manifest(root))
        .arg("--config")
        .arg(root.join("targets").join("stubdom.toml"))
        .env("CARGO_TARGET_DIR", target.join("stubdom"));
    // An environment variable takes precedence over targets/stubdom.toml's `rustflags`.
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

/// Where `cargo(root, target, "build")` puts the image.
pub fn image_path(target: &Path) -> PathBuf {
    target
        .join("stubdom")
        .join("x86_64-unknown-linux-gnu")
        .join("release")
        .join("xs-stubdom")
}

/// The image for the tests: `$XS_STUBDOM_IMAGE`, else built once per test process beside
/// this test binary's target dir (the same place `cargo xtask stubdom` builds it).
pub fn image() -> PathBuf {
    static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let image = IMAGE.get_or_init(|| {
        if let Some(p) = std::env::var_os("XS_STUBDOM_IMAGE") {
            let p = PathBuf::from(p);
            return if p.is_file() {
                Ok(p)
            } else {
                Err(format!("XS_STUBDOM_IMAGE={} is not a file", p.display()))
            };
        }
        let target = own_target_dir().ok_or("cannot tell the target directory")?;
        let mut c = cargo(&workspace_root(), &target, "build");
        let status = c.status().map_err(|e| format!("cannot run {c:?}: {e}"))?;
        if !status.success() {
            return Err(format!("building the image failed ({status}): {c:?}"));
        }
        Ok(image_path(&target))
    });
    match image {
        Ok(p) => p.clone(),
        Err(e) => panic!("no stub-domain image: {e}"),
    }
}

/// QEMU is on `PATH`, or a skip.
pub fn qemu_installed() -> Result<(), Skip> {
    if on_path(QEMU).is_some() {
        return Ok(());
    }
    Err(Skip(format!(
        "`{QEMU}` not found (Debian package qemu-system-x86 from bookworm-backports; \
         `cargo xtask test` installs it)"
    )))
}

/// Which accelerator QEMU runs the image with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        }
    }

    fn timeout(self) -> Duration {
        match self {
            Accel::Kvm => TIMEOUT_KVM,
            Accel::Tcg => TIMEOUT_TCG,
        }
    }
}

/// Why KVM cannot run the image here, if it cannot (see the module notes).
pub fn why_not_kvm() -> Option<String> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Some(format!("/dev/kvm is not usable ({e})"));
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Some(
            "/dev/kvm is kvm-pvm here (/sys/module/kvm_pvm), which runs a guest kernel that is \
             not PVM-aware through KVM's instruction emulator, and that has no SSE"
                .into(),
        );
    }
    None
}

/// The QEMU command line.
pub fn command(image: &Path, accel: Accel, append: Option<&str>) -> Command {
    let mut c = Command::new(QEMU);
    c.arg("-kernel")
        .arg(image)
        .args(["-nographic", "-nic", "none", "-no-reboot", "-m", "256M"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    match accel {
        Accel::Kvm => c.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => c.args(["-accel", "tcg"]),
    };
    if let Some(text) = append {
        c.args(["-append", text]);
    }
    c
}

/// How to boot, and where the harness reports what it does.
#[derive(Debug)]
pub struct Options<'a> {
    /// TCG even where KVM could run the image.
    pub force_tcg: bool,
    /// The image's command line.
    pub append: Option<&'a str>,
    /// Instead of the default for the accelerator.
    pub timeout: Option<Duration>,
    /// Told each QEMU command before it runs.
    pub announce: fn(&Command),
    /// Told why the boot runs under TCG, or again under TCG.
    pub say: fn(&str),
    /// Told each transcript line as it arrives; `None`: the lines are only collected (and
    /// quoted in a timeout's error).
    pub echo: Option<fn(&str)>,
}

/// One boot.
#[derive(Debug)]
pub struct Boot {
    pub accel: Accel,
    /// QEMU's exit status (`None`: killed).
    pub status: Option<i32>,
    /// The serial transcript and QEMU's own messages, cleaned of terminal escapes, one entry
    /// per line.
    pub lines: Vec<String>,
    /// From QEMU's start to the [`READY`] line.
    pub ready_after: Option<Duration>,
    /// From QEMU's start to its exit.
    pub elapsed: Duration,
}

impl Boot {
    /// The transcript as one text, to quote in a failure.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The last line that is not blank.
    pub fn last_line(&self) -> &str {
        self.lines
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map_or("", String::as_str)
    }

    /// The counts of the summary, if the last line is one.
    pub fn summary(&self) -> Option<(u32, u32)> {
        summary(self.last_line())
    }

    /// Whether some line starts with `prefix`.
    pub fn has_line_starting(&self, prefix: &str) -> bool {
        self.lines.iter().any(|l| l.starts_with(prefix))
    }

    /// What QEMU's exit status means.
    pub fn status_meaning(&self) -> &'static str {
        match self.status {
            Some(STATUS_PASSED) => "passed",
            Some(STATUS_FAILED) => "a check failed",
            Some(STATUS_FATAL) => "fatal error (panic or exception)",
            Some(_) => "not an isa-debug-exit status",
            None => "killed",
        }
    }

    /// The self-test passed: QEMU exited with [`STATUS_PASSED`] and the last line says every
    /// check (at least [`MIN_CHECKS`] of them) passed. Returns how many passed.
    pub fn passed(&self) -> Result<u32, String> {
        match (self.status, self.summary()) {
            (Some(STATUS_PASSED), Some((passed, 0))) if passed >= MIN_CHECKS => Ok(passed),
            (Some(STATUS_PASSED), Some((passed, 0))) => Err(format!(
                "only {passed} checks ran (at least {MIN_CHECKS} expected)"
            )),
            _ => Err(format!(
                "the self-test did not pass under {}: QEMU exit status {:?} ({}), last line {:?} \
                 (`xs-selftest: N passed, 0 failed` expected)",
                self.accel.name(),
                self.status,
                self.status_meaning(),
                self.last_line(),
            )),
        }
    }
}

/// `xs-selftest: N passed, M failed` → (N, M).
pub fn summary(line: &str) -> Option<(u32, u32)> {
    let rest = line.strip_prefix("xs-selftest: ")?;
    let (passed, failed) = rest.split_once(" passed, ")?;
    let failed = failed.strip_suffix(" failed")?;
    Some((passed.parse().ok()?, failed.parse().ok()?))
}

/// Boots `image` under KVM when it can run it, else (or if KVM stops the guest with an
/// internal error) under TCG. `Err` if QEMU cannot start or outlives the timeout.
pub fn boot(image: &Path, options: &Options<'_>) -> Result<Boot, String> {
    let accel = if options.force_tcg {
        (options.say)("booting under TCG, as asked");
        Accel::Tcg
    } else if let Some(why) = why_not_kvm() {
        (options.say)(&format!("booting under TCG, not KVM: {why}"));
        Accel::Tcg
    } else {
        Accel::Kvm
    };
    match boot_with(image, accel, options)? {
        Ended::Exited(boot) => Ok(boot),
        Ended::KvmFailed => {
            (options.say)("KVM stopped the guest with an internal error: booting again under TCG");
            match boot_with(image, Accel::Tcg, options)? {
                Ended::Exited(boot) => Ok(boot),
                Ended::KvmFailed => unreachable!("TCG reported a KVM error"),
            }
        }
    }
}

/// How a single QEMU run ended.
enum Ended {
    Exited(Boot),
    /// KVM stopped the guest with an internal error (QEMU was killed).
    KvmFailed,
}

fn boot_with(image: &Path, accel: Accel, options: &Options<'_>) -> Result<Ended, String> {
    let timeout = options.timeout.unwrap_or(accel.timeout());
    let mut c = command(image, accel, options.append);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    (options.announce)(&c);
    let start = Instant::now();
    let mut child = c.spawn().map_err(|e| {
        format!(
            "could not start {QEMU} ({e}); it is in Debian's qemu-system-x86 (bookworm-backports)"
        )
    })?;
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    let streams = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ];
    let readers: Vec<_> = streams
        .into_iter()
        .flatten()
        .map(|stream| {
            let tx = tx.clone();
            std::thread::spawn(move || read_lines(stream, &tx))
        })
        .collect();
    drop(tx);
    let mut boot = Boot {
        accel,
        status: None,
        lines: Vec::new(),
        ready_after: None,
        elapsed: Duration::ZERO,
    };
    let take = |boot: &mut Boot, at: Instant, line: String| {
        if let Some(echo) = options.echo {
            echo(&line);
        }
        if boot.ready_after.is_none() && line.contains(READY) {
            boot.ready_after = Some(at.duration_since(start));
        }
        let kvm_failed = line.contains("KVM internal error");
        boot.lines.push(line);
        kvm_failed
    };
    let mut kvm_failed = false;
    let exited = loop {
        if let Ok((at, line)) = rx.recv_timeout(Duration::from_millis(50)) {
            kvm_failed |= take(&mut boot, at, line);
        }
        match child.try_wait() {
            Ok(Some(status)) => break Some(status.code()),
            Ok(None) if kvm_failed || start.elapsed() > timeout => break None,
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                return Err(format!("waiting for {QEMU}: {e}"));
            }
        }
    };
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    for r in readers {
        let _ = r.join();
    }
    // The readers are done: take what they sent after the last poll.
    for (at, line) in rx.try_iter() {
        kvm_failed |= take(&mut boot, at, line);
    }
    boot.elapsed = start.elapsed();
    if kvm_failed {
        return Ok(Ended::KvmFailed);
    }
    match exited {
        Some(status) => {
            boot.status = status;
            Ok(Ended::Exited(boot))
        }
        None => Err(format!(
            "{QEMU} ({}) still running after {} s; killed. Command: {c:?}{}",
            accel.name(),
            timeout.as_secs(),
            match options.echo {
                Some(_) => String::new(),
                None => format!("; transcript:\n{}", boot.text()),
            }
        )),
    }
}

/// Sends each line of `stream` (cleaned) with the time it arrived.
fn read_lines(mut stream: Box<dyn Read + Send>, tx: &mpsc::Sender<(Instant, String)>) {
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let now = Instant::now();
        pending.extend_from_slice(&buf[..n]);
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            let _ = tx.send((now, clean(&line)));
        }
    }
    if !pending.is_empty() {
        let _ = tx.send((Instant::now(), clean(&pending)));
    }
}

/// A line as text: terminal escape sequences (the firmware clears the screen, which would
/// clear the screen of whoever reads a failure) and carriage returns removed.
pub fn clean(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // Parameters, then one final byte in '@'..='~'.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' | '\n' => {}
            c => out.push(c),
        }
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lines() {
        assert_eq!(summary("xs-selftest: 24 passed, 0 failed"), Some((24, 0)));
        assert_eq!(summary("xs-selftest: 23 passed, 1 failed"), Some((23, 1)));
        assert_eq!(summary("xs-selftest: 24 passed, 0 failed!"), None);
        assert_eq!(summary("ok   ring/features"), None);
    }

    #[test]
    fn escapes_are_removed() {
        assert_eq!(
            clean(b"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16)\r\n"),
            "SeaBIOS (version 1.16)"
        );
        assert_eq!(
            clean(b"xs-selftest: 1 passed, 0 failed\r"),
            "xs-selftest: 1 passed, 0 failed"
        );
    }

    fn boot(status: Option<i32>, lines: &[&str]) -> Boot {
        Boot {
            accel: Accel::Tcg,
            status,
            lines: lines.iter().map(|l| (*l).to_owned()).collect(),
            ready_after: None,
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn judging() {
        let ok = "xs-selftest: 24 passed, 0 failed";
        assert_eq!(boot(Some(33), &["ok   a", ok, ""]).passed(), Ok(24));
        // The status and the line must agree, and the line must be the last.
        assert!(boot(Some(35), &[ok]).passed().is_err());
        assert!(
            boot(Some(33), &["xs-selftest: 23 passed, 1 failed"])
                .passed()
                .is_err()
        );
        assert!(boot(Some(33), &[ok, "PANIC: later"]).passed().is_err());
        assert!(boot(None, &[ok]).passed().is_err());
        assert!(
            boot(Some(33), &["xs-selftest: 3 passed, 0 failed"])
                .passed()
                .is_err()
        );
    }

    #[test]
    fn qemu_line() {
        let c = command(
            Path::new("/x/xs-stubdom"),
            Accel::Kvm,
            Some("selftest.break=a"),
        );
        let words: Vec<_> = std::iter::once(c.get_program())
            .chain(c.get_args())
            .map(|w| w.to_string_lossy())
            .collect();
        assert_eq!(
            words.join(" "),
            "qemu-system-x86_64 -kernel /x/xs-stubdom -nographic -nic none -no-reboot -m 256M \
             -device isa-debug-exit,iobase=0xf4,iosize=0x04 -accel kvm -cpu host -append \
             selftest.break=a"
        );
    }

    #[test]
    fn image_build_line() {
        let c = cargo(Path::new("/r"), Path::new("/t"), "build");
        let args: Vec<_> = c.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            args.join(" "),
            "build --locked --release --manifest-path /r/crates/xs-stubdom/Cargo.toml \
             --config /r/targets/stubdom.toml"
        );
        let target = c
            .get_envs()
            .find(|(k, _)| *k == "CARGO_TARGET_DIR")
            .and_then(|(_, v)| v);
        assert_eq!(target, Some(Path::new("/t/stubdom").as_os_str()));
        assert!(c.get_envs().any(|(k, v)| k == "RUSTFLAGS" && v.is_none()));
        assert_eq!(
            image_path(Path::new("/t")),
            Path::new("/t/stubdom/x86_64-unknown-linux-gnu/release/xs-stubdom")
        );
    }
}
