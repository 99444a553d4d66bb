//! The XenStore stub-domain image (`crates/xs-stubdom`): building it, checking the ELF, and
//! booting it under QEMU.
//!
//! * `cargo xtask stubdom` builds the image (its own workspace, `targets/stubdom.toml`, target
//!   dir `<target>/stubdom`), checks it (no undefined symbols, the PVH entry note, the size of
//!   a stripped copy) and prints its path.
//! * `cargo xtask stubdom --run` also boots it once, echoing the transcript, and passes only
//!   if QEMU exits with status 33 (the image wrote 0x10 to isa-debug-exit) and the serial
//!   transcript's last line is `xs-selftest: N passed, 0 failed`. `--tcg`, `--append TEXT`
//!   (the image's command line, e.g. `selftest.break=watch/fire` to see a check fail) and
//!   `--timeout SECS` change the boot.
//! * Step `stubdom` of `cargo xtask test` (alone: `cargo xtask stubdom --step`): formatting,
//!   clippy and rustdoc of the crate, the build and the checks; then the boots, which are the
//!   end-to-end tests `tests/tests/stubdom.rs` (the self-test passes, a failing check fails
//!   the run, a fatal error is reported), run here with this image unless step `test`, which
//!   runs them with the rest of the suite, is selected too: each boot happens once.
//!
//! Building and booting (the QEMU command line, KVM or TCG, the timeouts, reading the
//! transcript and the verdict) are the end-to-end harness's, `xs_e2e::stubdom`, shared with
//! those tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use xs_e2e::stubdom::{self as harness, Boot, Options, READY, STATUS_PASSED};

use crate::cmd::{self, Workspace};
use crate::packages::Package;
use crate::steps::{Ctx, Outcome};

/// The Debian packages booting the image needs (for `packages::NEEDS`, steps `test` and
/// `stubdom`) (QEMU 10 from backports: the default suite's QEMU conflicts with the backported
/// `qemu-utils` already installed).
pub(crate) const PACKAGES: &[Package] = &[QEMU_PACKAGE];

/// QEMU, which boots the image (the `test` step's stub-domain boots need it too).
pub(crate) const QEMU_PACKAGE: Package = Package {
    name: "qemu-system-x86",
    release: Some("bookworm-backports"),
};

/// The largest stripped image we accept (the target).
const MAX_STRIPPED: u64 = 512 * 1024;

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
            announce: |c| println!("$ {}", cmd::display(c)),
            say: |text| println!("stubdom: {text}"),
            echo: Some(|line| println!("{line}")),
        };
        let result = harness::boot(&image, &options).and_then(|boot| Ok((boot.passed()?, boot)));
        print_figures(
            &image,
            &info,
            result.as_ref().ok().map(|(n, boot)| (boot, *n)),
        );
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
        print_figures(&image, &info, None);
        if ctx.selected("test") {
            println!(
                "stubdom: the boots under QEMU are step `test`'s (tests/tests/stubdom.rs, which \
                 builds this same image): not repeated here"
            );
            return Ok(());
        }
        let mut c = ctx.ws.cargo(["test", "-p", "xs-e2e", "--test", "stubdom"]);
        c.env("XS_STUBDOM_IMAGE", &image).env("XS_E2E_NO_SKIP", "1");
        cmd::run(&mut c)
    });
    result.into()
}

/// Formatting, clippy and rustdoc for the crate (its own workspace: `cargo fmt --all`, the
/// workspace clippy and `cargo doc --workspace` do not see it).
fn lint(ws: &Workspace) -> Result<(), String> {
    let manifest = harness::manifest(&ws.root);
    let mut c = ws.cargo(["fmt", "--manifest-path"]);
    c.arg(manifest).args(["--", "--check"]);
    cmd::run(&mut c)?;
    let mut c = harness::cargo(&ws.root, &ws.target_dir, "clippy");
    c.args(["--", "-D", "warnings"]);
    cmd::run(&mut c)?;
    let mut c = harness::cargo(&ws.root, &ws.target_dir, "doc");
    c.arg("--no-deps").env("RUSTDOCFLAGS", "-D warnings");
    cmd::run(&mut c)
}

/// Builds the image; returns its path.
pub(crate) fn build(ws: &Workspace) -> Result<PathBuf, String> {
    cmd::run(&mut harness::cargo(&ws.root, &ws.target_dir, "build"))?;
    Ok(harness::image_path(&ws.target_dir))
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
        /// The `N` bytes at offset `o`.
        fn at<const N: usize>(b: &[u8], o: usize) -> Result<[u8; N], String> {
            o.checked_add(N)
                .and_then(|end| b.get(o..end))
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| "truncated ELF".to_owned())
        }
        let u16_at = |o| at(b, o).map(u16::from_le_bytes);
        let u32_at = |o| at(b, o).map(u32::from_le_bytes);
        let u64_at = |o| at(b, o).map(u64::from_le_bytes);
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

/// The image's figures, and those of a boot that passed (with how many checks passed).
fn print_figures(image: &Path, info: &ImageInfo, passed: Option<(&Boot, u32)>) {
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
    if let Some((boot, passed)) = passed {
        println!(
            "stubdom: under QEMU/{}: `{READY}` {} after QEMU started; exited {:.2} s after it started, status {STATUS_PASSED}; {passed} checks passed",
            boot.accel.name(),
            boot.ready_after.map_or_else(
                || "never seen".to_owned(),
                |d| format!("{:.3} s", d.as_secs_f64())
            ),
            boot.elapsed.as_secs_f64(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
