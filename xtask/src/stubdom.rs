//! The XenStore stub-domain image (`crates/xs-stubdom`): building it, checking the ELF, and
//! booting it under QEMU.
//!
//! * `cargo xtask stubdom` builds the image (its own workspace, `targets/stubdom.toml`, target
//!   dir `<target>/stubdom`), checks it (no undefined symbols, the PVH entry note, the size of
//!   a stripped copy) and prints its path.
//! * `cargo xtask stubdom --run` also boots it:
//!   `qemu-system-x86_64 -kernel <elf> -nographic -nic none -device
//!   isa-debug-exit,iobase=0xf4,iosize=0x04 -no-reboot -m 256M`, with `-accel kvm -cpu host`
//!   when KVM can run it (else TCG, saying why), under a timeout. It passes only if QEMU
//!   exits with status 33 (the image wrote 0x10 to isa-debug-exit: `(0x10 << 1) | 1`) and the
//!   serial transcript's last line is `xs-selftest: N passed, 0 failed`.
//! * Step `stubdom` of `cargo xtask test` (alone: `cargo xtask stubdom --step`): formatting,
//!   clippy and rustdoc of the crate, then all of the above.
//!
//! KVM "can run it" when `/dev/kvm` opens read-write and is not kvm-pvm: kvm-pvm (the KVM
//! flavour of some nested sandboxes) runs a guest kernel that is not PVM-aware through KVM's
//! instruction emulator, which has no SSE, and the image (like Rust's precompiled `core`) uses
//! SSE. Should KVM still report an internal error, the run is repeated under TCG.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cmd::{self, Workspace};
use crate::packages::Package;
use crate::steps::{Ctx, Outcome};

/// The Debian packages booting the image needs (for `packages::NEEDS`, step `stubdom`) (QEMU 10 from backports: the default suite's
/// QEMU conflicts with the backported `qemu-utils` already installed).
pub(crate) const PACKAGES: &[Package] = &[Package {
    name: "qemu-system-x86",
    release: Some("bookworm-backports"),
}];

/// The QEMU binary.
const QEMU: &str = "qemu-system-x86_64";

/// The largest stripped image we accept (the issue's target).
const MAX_STRIPPED: u64 = 512 * 1024;

/// QEMU's exit status when the self-test passed: the image writes 0x10 to isa-debug-exit,
/// QEMU exits with `(0x10 << 1) | 1`.
const STATUS_PASSED: i32 = 33;
/// ... when a check failed (0x11).
const STATUS_FAILED: i32 = 35;
/// ... on a fatal error: panic or unexpected exception (0x12).
const STATUS_FATAL: i32 = 37;

/// The line the image prints once the store serves.
const READY: &str = "xs-stubdom: ready";

/// How long a boot may take: the self-test runs in about a second under KVM and several
/// seconds under TCG (populating 100 domains × 1000 nodes three times).
const TIMEOUT_KVM: Duration = Duration::from_secs(60);
const TIMEOUT_TCG: Duration = Duration::from_secs(300);

/// Fewest checks a passing run must report (the self-test has 24).
const MIN_CHECKS: u32 = 20;

/// `cargo xtask stubdom [--run] [--tcg] [--append TEXT] [--timeout SECS] | --step`.
pub(crate) fn command(ws: &Workspace, args: &[String]) -> Result<(), String> {
    if args == ["--step"] {
        let ctx = Ctx {
            ws,
            selected: &["stubdom"],
        };
        return match step(&ctx) {
            Outcome::Pass => Ok(()),
            Outcome::Fail(why) | Outcome::Skip(why) => Err(why),
        };
    }
    let mut run = false;
    let mut tcg = false;
    let mut append = None;
    let mut timeout = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--run" => run = true,
            "--tcg" => tcg = true,
            "--append" => append = Some(args.next().ok_or("--append needs a value")?.clone()),
            "--timeout" => {
                let secs = args.next().ok_or("--timeout needs seconds")?;
                let secs: u64 = secs
                    .parse()
                    .map_err(|_| format!("--timeout: `{secs}` is not a number of seconds"))?;
                timeout = Some(Duration::from_secs(secs));
            }
            other => return Err(format!("unknown option `{other}` for stubdom")),
        }
    }
    let image = build(ws)?;
    let info = inspect(&image)?;
    if run {
        let options = Options {
            force_tcg: tcg,
            append: append.as_deref(),
            timeout,
            echo: true,
        };
        let result = boot_and_judge(&image, &options);
        print_figures(&image, &info, result.as_ref().ok());
        result.map(|_| ())
    } else {
        print_figures(&image, &info, None);
        println!("{}", image.display());
        Ok(())
    }
}

/// The `stubdom` step of `cargo xtask test` (also `cargo xtask stubdom --step`).
pub(crate) fn step(ctx: &Ctx<'_>) -> Outcome {
    let result = lint(ctx.ws).and_then(|()| {
        let image = build(ctx.ws)?;
        let info = inspect(&image)?;
        let options = Options {
            force_tcg: false,
            append: None,
            timeout: None,
            echo: true,
        };
        let boot = boot_and_judge(&image, &options);
        print_figures(&image, &info, boot.as_ref().ok());
        boot.map(|_| ())
    });
    result.into()
}

fn manifest(ws: &Workspace) -> String {
    ws.root
        .join("crates")
        .join("xs-stubdom")
        .join("Cargo.toml")
        .to_string_lossy()
        .into_owned()
}

fn config(ws: &Workspace) -> String {
    ws.root
        .join("targets")
        .join("stubdom.toml")
        .to_string_lossy()
        .into_owned()
}

/// The image's own target dir, apart from the normal build.
fn target_dir(ws: &Workspace) -> PathBuf {
    ws.target_dir.join("stubdom")
}

/// Formatting, clippy and rustdoc for the crate (its own workspace: `cargo fmt --all`, the
/// workspace clippy and `cargo doc --workspace` do not see it).
fn lint(ws: &Workspace) -> Result<(), String> {
    let manifest = manifest(ws);
    let config = config(ws);
    cmd::run(&mut ws.cargo(["fmt", "--manifest-path", &manifest, "--", "--check"]))?;
    let mut c = ws.cargo([
        "clippy",
        "--locked",
        "--release",
        "--manifest-path",
        &manifest,
        "--config",
        &config,
        "--",
        "-D",
        "warnings",
    ]);
    c.env("CARGO_TARGET_DIR", target_dir(ws));
    cmd::run(without_host_flags(&mut c))?;
    let mut c = ws.cargo([
        "doc",
        "--locked",
        "--release",
        "--no-deps",
        "--manifest-path",
        &manifest,
        "--config",
        &config,
    ]);
    c.env("CARGO_TARGET_DIR", target_dir(ws))
        .env("RUSTDOCFLAGS", "-D warnings");
    cmd::run(without_host_flags(&mut c))
}

/// Flags meant for host builds would replace the image's (an environment variable takes
/// precedence over `targets/stubdom.toml`'s `rustflags`).
fn without_host_flags(c: &mut Command) -> &mut Command {
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

/// Builds the image; returns its path.
fn build(ws: &Workspace) -> Result<PathBuf, String> {
    let manifest = manifest(ws);
    let config = config(ws);
    let mut c = ws.cargo([
        "build",
        "--locked",
        "--release",
        "--manifest-path",
        &manifest,
        "--config",
        &config,
    ]);
    c.env("CARGO_TARGET_DIR", target_dir(ws));
    cmd::run(without_host_flags(&mut c))?;
    Ok(target_dir(ws)
        .join("x86_64-unknown-linux-gnu")
        .join("release")
        .join("xs-stubdom"))
}

/// What [`inspect`] found.
#[derive(Debug)]
struct ImageInfo {
    bytes: u64,
    stripped: u64,
    elf: Elf,
}

/// Checks the image: nothing undefined, the PVH note pointing into executable code, and the
/// stripped size.
fn inspect(image: &Path) -> Result<ImageInfo, String> {
    let undefined = cmd::output(Command::new("nm").arg("-u").arg(image))?;
    if !undefined.trim().is_empty() {
        return Err(format!(
            "the image has undefined symbols (`nm -u`):\n{undefined}"
        ));
    }
    let bytes = std::fs::read(image).map_err(|e| format!("{}: {e}", image.display()))?;
    let elf = Elf::parse(&bytes)?;
    let stripped_path = image.with_extension("stripped");
    cmd::run(
        Command::new("strip")
            .arg("-o")
            .arg(&stripped_path)
            .arg(image),
    )?;
    let stripped = std::fs::metadata(&stripped_path)
        .map_err(|e| format!("{}: {e}", stripped_path.display()))?
        .len();
    if stripped > MAX_STRIPPED {
        return Err(format!(
            "the stripped image is {stripped} bytes, over the {MAX_STRIPPED}-byte budget"
        ));
    }
    Ok(ImageInfo {
        bytes: bytes.len() as u64,
        stripped,
        elf,
    })
}

/// The parts of the ELF the checks need.
#[derive(Debug, PartialEq, Eq)]
struct Elf {
    /// The PVH entry from the `XEN_ELFNOTE_PHYS32_ENTRY` note.
    pvh_entry: u64,
    /// Physical range the loadable segments cover.
    load: (u64, u64),
}

impl Elf {
    /// ELF64, little-endian: the program headers, the Xen note among the PT_NOTE segments,
    /// and that its entry lies in an executable PT_LOAD segment.
    fn parse(b: &[u8]) -> Result<Elf, String> {
        const PT_LOAD: u32 = 1;
        const PT_NOTE: u32 = 4;
        const PF_X: u32 = 1;
        const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
        let u16_at = |o: usize| -> Result<u16, String> {
            b.get(o..o + 2)
                .map(|s| u16::from_le_bytes([s[0], s[1]]))
                .ok_or_else(|| "truncated ELF".to_owned())
        };
        let u32_at = |o: usize| -> Result<u32, String> {
            b.get(o..o + 4)
                .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
                .ok_or_else(|| "truncated ELF".to_owned())
        };
        let u64_at = |o: usize| -> Result<u64, String> {
            b.get(o..o + 8)
                .map(|s| {
                    let mut w = [0u8; 8];
                    w.copy_from_slice(s);
                    u64::from_le_bytes(w)
                })
                .ok_or_else(|| "truncated ELF".to_owned())
        };
        if b.get(..4) != Some(b"\x7fELF".as_slice()) || b.get(4) != Some(&2) || b.get(5) != Some(&1)
        {
            return Err("not a little-endian ELF64 file".into());
        }
        if u16_at(18)? != 62 {
            return Err("not an x86_64 ELF (e_machine != EM_X86_64)".into());
        }
        let phoff = u64_at(32)? as usize;
        let phentsize = usize::from(u16_at(54)?);
        let phnum = usize::from(u16_at(56)?);
        let mut loads = Vec::new();
        let mut entry = None;
        for i in 0..phnum {
            let ph = phoff + i * phentsize;
            let (p_type, flags) = (u32_at(ph)?, u32_at(ph + 4)?);
            let (offset, paddr) = (u64_at(ph + 8)? as usize, u64_at(ph + 24)?);
            let (filesz, memsz) = (u64_at(ph + 32)? as usize, u64_at(ph + 40)?);
            match p_type {
                PT_LOAD => loads.push((paddr, paddr + memsz, flags & PF_X != 0)),
                PT_NOTE => {
                    let mut at = offset;
                    while at + 12 <= offset + filesz {
                        let namesz = u32_at(at)? as usize;
                        let descsz = u32_at(at + 4)? as usize;
                        let kind = u32_at(at + 8)?;
                        let name = at + 12;
                        let desc = name + namesz.next_multiple_of(4);
                        if b.get(name..name + namesz) == Some(b"Xen\0".as_slice())
                            && kind == XEN_ELFNOTE_PHYS32_ENTRY
                        {
                            entry = Some(match descsz {
                                4 => u64::from(u32_at(desc)?),
                                8 => u64_at(desc)?,
                                n => return Err(format!("PVH note with a {n}-byte descriptor")),
                            });
                        }
                        at = desc + descsz.next_multiple_of(4);
                    }
                }
                _ => {}
            }
        }
        let pvh_entry = entry.ok_or("no XEN_ELFNOTE_PHYS32_ENTRY note: not bootable as PVH")?;
        if !loads
            .iter()
            .any(|&(start, end, exec)| exec && (start..end).contains(&pvh_entry))
        {
            return Err(format!(
                "the PVH entry {pvh_entry:#x} is not in an executable loadable segment"
            ));
        }
        let start = loads
            .iter()
            .map(|l| l.0)
            .min()
            .ok_or("no PT_LOAD segment")?;
        let end = loads.iter().map(|l| l.1).max().unwrap_or(start);
        Ok(Elf {
            pvh_entry,
            load: (start, end),
        })
    }
}

/// How to boot.
#[derive(Debug)]
struct Options<'a> {
    force_tcg: bool,
    append: Option<&'a str>,
    timeout: Option<Duration>,
    /// Print the serial transcript as it comes.
    echo: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        }
    }
}

/// KVM when it can run the image, else TCG and why not KVM.
fn choose_accel(force_tcg: bool) -> (Accel, Option<String>) {
    if force_tcg {
        return (Accel::Tcg, Some("--tcg".into()));
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return (Accel::Tcg, Some(format!("/dev/kvm is not usable ({e})")));
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return (
            Accel::Tcg,
            Some(
                "/dev/kvm is kvm-pvm here (/sys/module/kvm_pvm), which runs a guest kernel that \
                 is not PVM-aware through KVM's instruction emulator, and that has no SSE"
                    .into(),
            ),
        );
    }
    (Accel::Kvm, None)
}

/// One boot.
#[derive(Debug)]
struct Boot {
    accel: Accel,
    /// QEMU's exit status (None: killed).
    status: Option<i32>,
    /// The transcript, cleaned of terminal escapes, one entry per line.
    lines: Vec<String>,
    /// From QEMU's start to the `ready` line.
    ready_after: Option<Duration>,
    /// From QEMU's start to its exit.
    elapsed: Duration,
    /// KVM stopped the guest with an internal error.
    kvm_failed: bool,
}

/// Boots (KVM if it can, else TCG; TCG again if KVM fails internally) and judges the run.
fn boot_and_judge(image: &Path, options: &Options<'_>) -> Result<Verdict, String> {
    let (accel, why_not_kvm) = choose_accel(options.force_tcg);
    if let Some(why) = &why_not_kvm {
        println!("stubdom: booting under TCG, not KVM: {why}");
    }
    let mut boot = boot_with(image, accel, options)?;
    if boot.kvm_failed {
        println!(
            "stubdom: KVM stopped the guest with an internal error (above); booting again under TCG"
        );
        boot = boot_with(image, Accel::Tcg, options)?;
    }
    judge(&boot)
}

/// The QEMU command line.
fn qemu_command(image: &Path, accel: Accel, append: Option<&str>) -> Command {
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

fn boot_with(image: &Path, accel: Accel, options: &Options<'_>) -> Result<Boot, String> {
    let timeout = options.timeout.unwrap_or(match accel {
        Accel::Kvm => TIMEOUT_KVM,
        Accel::Tcg => TIMEOUT_TCG,
    });
    let mut c = qemu_command(image, accel, options.append);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!("$ {}", cmd::display(&c));
    let start = Instant::now();
    let mut child = c.spawn().map_err(|e| {
        format!(
            "could not start {QEMU} ({e}); it is in Debian's qemu-system-x86 (bookworm-backports)"
        )
    })?;
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    let mut readers = Vec::new();
    let stdout = child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn Read + Send>);
    let stderr = child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn Read + Send>);
    for stream in [stdout, stderr].into_iter().flatten() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || read_lines(stream, &tx)));
    }
    drop(tx);
    let mut boot = Boot {
        accel,
        status: None,
        lines: Vec::new(),
        ready_after: None,
        elapsed: Duration::ZERO,
        kvm_failed: false,
    };
    let mut kill = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok((at, line)) => {
                if options.echo {
                    println!("{line}");
                }
                if boot.ready_after.is_none() && line.contains(READY) {
                    boot.ready_after = Some(at.duration_since(start));
                }
                if line.contains("KVM internal error") {
                    boot.kvm_failed = true;
                    kill = Some("KVM internal error");
                }
                boot.lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        if kill.is_none() && start.elapsed() > timeout {
            kill = Some("timeout");
        }
        if let Some(why) = kill {
            let _ = child.kill();
            let _ = child.wait();
            for r in readers {
                let _ = r.join();
            }
            boot.elapsed = start.elapsed();
            if why == "timeout" {
                return Err(format!(
                    "{QEMU} ({}) still running after {}s; killed",
                    accel.name(),
                    timeout.as_secs()
                ));
            }
            return Ok(boot);
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                for r in readers {
                    let _ = r.join();
                }
                // The readers are done: take what they sent after the last poll.
                for (at, line) in rx.try_iter() {
                    if options.echo {
                        println!("{line}");
                    }
                    if boot.ready_after.is_none() && line.contains(READY) {
                        boot.ready_after = Some(at.duration_since(start));
                    }
                    boot.lines.push(line);
                }
                boot.status = status.code();
                boot.elapsed = start.elapsed();
                return Ok(boot);
            }
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for {QEMU}: {e}")),
        }
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

/// A line as text: terminal escape sequences (the firmware clears the screen) and carriage
/// returns removed.
fn clean(line: &[u8]) -> String {
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

/// What a passing run reported.
#[derive(Debug)]
struct Verdict {
    accel: Accel,
    passed: u32,
    ready_after: Option<Duration>,
    elapsed: Duration,
}

/// `xs-selftest: N passed, M failed` → (N, M).
fn summary(line: &str) -> Option<(u32, u32)> {
    let rest = line.strip_prefix("xs-selftest: ")?;
    let (passed, failed) = rest.split_once(" passed, ")?;
    let failed = failed.strip_suffix(" failed")?;
    Some((passed.parse().ok()?, failed.parse().ok()?))
}

/// Passes if QEMU exited with 33 and the last line says every check (enough of them) passed.
fn judge(boot: &Boot) -> Result<Verdict, String> {
    let last = boot
        .lines
        .iter()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map_or("", String::as_str);
    let counts = summary(last);
    let status = match boot.status {
        Some(STATUS_PASSED) => "passed",
        Some(STATUS_FAILED) => "a check failed",
        Some(STATUS_FATAL) => "fatal error (panic or exception)",
        Some(_) => "not an isa-debug-exit status",
        None => "killed",
    };
    match (boot.status, counts) {
        (Some(STATUS_PASSED), Some((passed, 0))) if passed >= MIN_CHECKS => Ok(Verdict {
            accel: boot.accel,
            passed,
            ready_after: boot.ready_after,
            elapsed: boot.elapsed,
        }),
        (Some(STATUS_PASSED), Some((passed, 0))) => Err(format!(
            "only {passed} checks ran (at least {MIN_CHECKS} expected)"
        )),
        _ => Err(format!(
            "the self-test did not pass under {}: QEMU exit status {:?} ({status}), last line {last:?}",
            boot.accel.name(),
            boot.status,
        )),
    }
}

fn print_figures(image: &Path, info: &ImageInfo, verdict: Option<&Verdict>) {
    println!("\nstubdom: image {}", image.display());
    println!(
        "stubdom: {} bytes ({} KiB) with symbols, {} bytes ({} KiB) stripped (budget {} KiB)",
        info.bytes,
        info.bytes / 1024,
        info.stripped,
        info.stripped / 1024,
        MAX_STRIPPED / 1024
    );
    println!(
        "stubdom: PVH entry {:#x}; loads {:#x}..{:#x} ({} KiB), then the heap (linker/stubdom.ld); nothing undefined (nm -u)",
        info.elf.pvh_entry,
        info.elf.load.0,
        info.elf.load.1,
        (info.elf.load.1 - info.elf.load.0) / 1024
    );
    if let Some(v) = verdict {
        println!(
            "stubdom: under QEMU/{}: `{READY}` {} after QEMU started; exited {:.2} s after it started, status {STATUS_PASSED}; {} checks passed",
            v.accel.name(),
            v.ready_after.map_or_else(
                || "never seen".to_owned(),
                |d| format!("{:.3} s", d.as_secs_f64())
            ),
            v.elapsed.as_secs_f64(),
            v.passed
        );
    }
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
            kvm_failed: false,
        }
    }

    #[test]
    fn judging() {
        let ok = "xs-selftest: 24 passed, 0 failed";
        assert!(judge(&boot(Some(33), &["ok   a", ok, ""])).is_ok());
        // The status and the line must agree, and the line must be the last.
        assert!(judge(&boot(Some(35), &[ok])).is_err());
        assert!(judge(&boot(Some(33), &["xs-selftest: 23 passed, 1 failed"])).is_err());
        assert!(judge(&boot(Some(33), &[ok, "PANIC: later"])).is_err());
        assert!(judge(&boot(None, &[ok])).is_err());
        assert!(judge(&boot(Some(33), &["xs-selftest: 3 passed, 0 failed"])).is_err());
    }

    /// A minimal ELF64: one executable PT_LOAD at 1 MiB and a PT_NOTE with the Xen note.
    fn elf(entry: u64, note_name: &[u8; 4]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[18..20].copy_from_slice(&62u16.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&2u16.to_le_bytes());
        let note_offset = 64 + 2 * 56;
        let mut ph = |p_type: u32, flags: u32, offset: u64, paddr: u64, size: u64| {
            let mut h = vec![0u8; 56];
            h[..4].copy_from_slice(&p_type.to_le_bytes());
            h[4..8].copy_from_slice(&flags.to_le_bytes());
            h[8..16].copy_from_slice(&offset.to_le_bytes());
            h[24..32].copy_from_slice(&paddr.to_le_bytes());
            h[32..40].copy_from_slice(&size.to_le_bytes());
            h[40..48].copy_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&h);
        };
        ph(1, 5, 0, 0x10_0000, 0x1000);
        ph(4, 4, note_offset as u64, 0, 24);
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&18u32.to_le_bytes());
        b.extend_from_slice(note_name);
        b.extend_from_slice(&entry.to_le_bytes());
        b
    }

    #[test]
    fn pvh_note() {
        let parsed = Elf::parse(&elf(0x10_0010, b"Xen\0")).unwrap();
        assert_eq!(
            parsed,
            Elf {
                pvh_entry: 0x10_0010,
                load: (0x10_0000, 0x10_1000)
            }
        );
        assert!(Elf::parse(&elf(0x10_0010, b"Xem\0")).is_err());
        // An entry outside the executable segment.
        assert!(Elf::parse(&elf(0x20_0000, b"Xen\0")).is_err());
        assert!(Elf::parse(b"not an elf").is_err());
    }

    #[test]
    fn qemu_line() {
        let c = qemu_command(
            Path::new("/x/xs-stubdom"),
            Accel::Kvm,
            Some("selftest.break=a"),
        );
        assert_eq!(
            cmd::display(&c),
            "qemu-system-x86_64 -kernel /x/xs-stubdom -nographic -nic none -no-reboot -m 256M \
             -device isa-debug-exit,iobase=0xf4,iosize=0x04 -accel kvm -cpu host -append \
             selftest.break=a"
        );
    }
}
