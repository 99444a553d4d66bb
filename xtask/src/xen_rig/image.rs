//! The initramfs images: the guests' (busybox, `tests/xen-rig/guest-init.sh`, xen-blkfront)
//! and dom0's (busybox, Xen 4.17's userspace and scripts from the host with the libraries
//! they load, the daemon under test as `/usr/sbin/xenstored`, the Xen kernel modules, the
//! guests' kernel and initrd, the scenarios). Each is laid out in a staging directory, then
//! written as a `newc` cpio archive (here, so that modes and links are exactly ours) and
//! compressed with `gzip -1`.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Daemon;
use super::fetch::{Downloads, read_dir};
use super::tiny_pv::{self, Guest};
use crate::cmd;

/// Where Debian's Xen 4.17 userspace lives on the host (package xen-utils-4.17).
pub(crate) const XEN_BIN: &str = "/usr/lib/xen-4.17/bin";

/// Xen's programs dom0 runs, from [`XEN_BIN`].
const XEN_PROGRAMS: &[&str] = &[
    "xl",
    "xenconsoled",
    "xen-init-dom0",
    "xenconsole",
    "xenstore-control",
    "test-xenstore",
    "libxl-save-helper",
    "lsevtchn",
    "init-xenstore-domain",
    "xen-hvmctx",
    "xenctx",
];

/// Other host programs, at the same path in dom0: the XenStore clients (xenstore-utils, one
/// program behind the `xenstore-*` names), bash (launch-xenstore and the hotplug scripts are
/// bash scripts), and what those scripts call that busybox lacks or differs in.
const HOST_PROGRAMS: &[&str] = &[
    "/usr/bin/xenstore",
    "/bin/bash",
    "/usr/bin/prlimit",
    "/usr/bin/flock",
    "/sbin/losetup",
];

/// The `xenstore-*` names of `/usr/bin/xenstore`.
const XENSTORE_TOOLS: &[&str] = &[
    "read", "write", "ls", "list", "rm", "exists", "chmod", "watch",
];

/// dom0's kernel modules, under `lib/modules/<version>/kernel`.
const DOM0_MODULES: &[&str] = &[
    "drivers/xen/xen-evtchn.ko",
    "drivers/xen/xen-gntdev.ko",
    "drivers/xen/xen-gntalloc.ko",
    "drivers/xen/xen-privcmd.ko",
    "drivers/xen/xenfs/xenfs.ko",
    "drivers/block/xen-blkback/xen-blkback.ko",
    "drivers/block/loop.ko",
];

/// The guests' (the rest of their Xen drivers are built in).
const GUEST_MODULES: &[&str] = &["drivers/block/xen-blkfront.ko"];

/// What goes into dom0 besides the downloads.
#[derive(Debug)]
pub(crate) struct Dom0Parts<'a> {
    pub(crate) daemon: Daemon,
    /// The daemon's binary, installed as `/usr/sbin/xenstored`.
    pub(crate) xenstored: &'a Path,
    /// `tests/src/bin/xen-rig-probe.rs`, built.
    pub(crate) probe: &'a Path,
    /// `tests/xen-rig`.
    pub(crate) scripts: &'a Path,
    /// The guests' initramfs.
    pub(crate) guest_image: &'a Path,
    /// `/etc/xen-rig/config`.
    pub(crate) config: String,
}

/// Builds the guests' initramfs in `dir` (`dir/stage`, `dir/guest.img`).
pub(crate) fn guest(downloads: &Downloads, scripts: &Path, dir: &Path) -> Result<PathBuf, String> {
    let stage = Stage::new(&dir.join("stage"))?;
    stage.busybox(&downloads.busybox)?;
    stage.copy_script(&scripts.join("guest-init.sh"), "init")?;
    for module in GUEST_MODULES {
        stage.copy(&downloads.modules.join(module), &module_path(module))?;
    }
    let image = dir.join("guest.img");
    stage.pack(&image)?;
    Ok(image)
}

/// Builds dom0's initramfs in `dir` (`dir/stage`, `dir/dom0.img`).
pub(crate) fn dom0(
    downloads: &Downloads,
    parts: &Dom0Parts<'_>,
    dir: &Path,
) -> Result<PathBuf, String> {
    let stage = Stage::new(&dir.join("stage"))?;
    stage.busybox(&downloads.busybox)?;
    for program in XEN_PROGRAMS {
        let path = format!("{XEN_BIN}/{program}");
        stage.copy_with_libs(Path::new(&path), &path)?;
    }
    for name in ["xl", "xenconsoled", "xen-init-dom0", "xenconsole"] {
        stage.symlink(&format!("{XEN_BIN}/{name}"), &format!("usr/sbin/{name}"))?;
    }
    for program in HOST_PROGRAMS {
        stage.copy_with_libs(Path::new(program), program)?;
    }
    for tool in XENSTORE_TOOLS {
        stage.symlink("xenstore", &format!("usr/bin/xenstore-{tool}"))?;
    }
    // glibc loads it when a thread is cancelled; ldd does not list it.
    stage.copy(
        Path::new("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
        "lib/x86_64-linux-gnu/libgcc_s.so.1",
    )?;
    let xencommons = match parts.daemon {
        Daemon::XsStubdom => {
            // A stub domain's kernel: launch-xenstore hands it to init-xenstore-domain.
            stage.copy(parts.xenstored, "usr/lib/xen-rig/xs-stubdom")?;
            // Its symbols, for `xenctx -s` when it stops answering (the scenarios' last
            // check): System.map's format, which `nm -n` writes.
            let symbols = cmd::output(Command::new("nm").arg("-n").arg("-C").arg(parts.xenstored))?;
            stage.write("usr/lib/xen-rig/xs-stubdom.map", &symbols, 0o644)?;
            "xencommons-stubdom"
        }
        _ => {
            stage.copy_with_libs(parts.xenstored, "usr/sbin/xenstored")?;
            "xencommons"
        }
    };
    stage.copy_with_libs(parts.probe, "usr/bin/xen-rig-probe")?;

    // Xen's scripts as the host has them (launch-xenstore, block, their helpers).
    for script in read_dir(Path::new("/etc/xen/scripts"))? {
        let name = script.file_name().map(|n| n.to_string_lossy().into_owned());
        if let Some(name) = name {
            stage.copy(&script, &format!("etc/xen/scripts/{name}"))?;
        }
    }
    stage.write("etc/xen/xl.conf", "autoballoon=\"off\"\n", 0o644)?;
    stage.copy(&parts.scripts.join(xencommons), "etc/default/xencommons")?;
    stage.write("etc/xen-rig/config", &parts.config, 0o644)?;
    stage.copy_script(
        &parts.scripts.join("scenarios.sh"),
        "usr/lib/xen-rig/scenarios.sh",
    )?;
    stage.copy_script(&parts.scripts.join("dom0-init.sh"), "init")?;

    for module in DOM0_MODULES {
        stage.copy(&downloads.modules.join(module), &module_path(module))?;
    }
    stage.copy(&downloads.kernel, "var/lib/xen-rig/vmlinuz")?;
    stage.copy(parts.guest_image, "var/lib/xen-rig/guest.img")?;
    for (name, guest) in [
        ("tiny-pv", Guest::PowerOff),
        ("ring-breaker", Guest::BreakRing),
    ] {
        stage.write_bytes(
            &format!("var/lib/xen-rig/{name}"),
            &tiny_pv::image(guest),
            0o644,
        )?;
    }
    for d in [
        "var/lib/xen",
        "var/lib/xenstored",
        "var/log/xen/console",
        "etc/xen",
    ] {
        stage.mkdir(d)?;
    }
    stage.symlink("/run/lock", "var/lock")?;
    let image = dir.join("dom0.img");
    stage.pack(&image)?;
    println!(
        "xen-rig: dom0 image for {} ({} KiB): {}",
        parts.daemon.name(),
        fs::metadata(&image).map_or(0, |m| m.len() / 1024),
        image.display()
    );
    Ok(image)
}

/// `lib/modules/<name>.ko`: flat, for `insmod /lib/modules/<name>.ko`.
fn module_path(module: &str) -> String {
    let name = module.rsplit('/').next().unwrap_or(module);
    format!("lib/modules/{name}")
}

/// A root file system being laid out.
#[derive(Debug)]
struct Stage {
    root: PathBuf,
}

impl Stage {
    /// An empty staging directory at `root`.
    fn new(root: &Path) -> Result<Stage, String> {
        if root.exists() {
            fs::remove_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
        }
        fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
        Ok(Stage {
            root: root.to_owned(),
        })
    }

    fn path(&self, to: &str) -> PathBuf {
        self.root.join(to.trim_start_matches('/'))
    }

    fn mkdir(&self, to: &str) -> Result<(), String> {
        let dir = self.path(to);
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))
    }

    /// The usual directories, busybox and a link per applet in `/bin`.
    fn busybox(&self, busybox: &Path) -> Result<(), String> {
        for d in [
            "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "run", "tmp", "etc", "var",
            "root", "lib64",
        ] {
            self.mkdir(d)?;
        }
        self.copy(busybox, "bin/busybox")?;
        let list = cmd::output(Command::new(busybox).arg("--list"))?;
        for applet in list.lines().map(str::trim).filter(|a| !a.is_empty()) {
            if applet != "busybox" {
                self.symlink("busybox", &format!("bin/{applet}"))?;
            }
        }
        // Where the kernel looks for them: Linux runs /sbin/poweroff when Xen asks a guest
        // to power off (orderly_poweroff).
        for applet in ["poweroff", "reboot", "halt"] {
            self.symlink("/bin/busybox", &format!("sbin/{applet}"))?;
        }
        self.symlink("/run", "var/run")
    }

    /// Copies `from` (following links) to `to`, keeping its permissions; replaces what is
    /// there (a busybox applet's link, say).
    fn copy(&self, from: &Path, to: &str) -> Result<(), String> {
        let dest = self.path(to);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        if fs::symlink_metadata(&dest).is_ok() {
            fs::remove_file(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
        }
        fs::copy(from, &dest)
            .map(|_| ())
            .map_err(|e| format!("copying {} to {}: {e}", from.display(), dest.display()))
    }

    /// Copies a script, executable whatever the checkout made of its mode.
    fn copy_script(&self, from: &Path, to: &str) -> Result<(), String> {
        self.copy(from, to)?;
        let dest = self.path(to);
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", dest.display()))
    }

    /// Copies the program `from` to `to` and the shared libraries it loads (as `ldd` lists
    /// them) to their own paths.
    fn copy_with_libs(&self, from: &Path, to: &str) -> Result<(), String> {
        self.copy(from, to)?;
        let listing = Command::new("ldd")
            .arg(from)
            .stderr(Stdio::null())
            .output()
            .map_err(|e| format!("could not run ldd: {e}"))?;
        // ldd fails for a static program: it has no libraries to copy.
        for lib in ldd_libraries(&String::from_utf8_lossy(&listing.stdout)) {
            if !self.path(&lib).exists() {
                self.copy(Path::new(&lib), &lib)?;
            }
        }
        Ok(())
    }

    fn write(&self, to: &str, text: &str, mode: u32) -> Result<(), String> {
        self.write_bytes(to, text.as_bytes(), mode)
    }

    fn write_bytes(&self, to: &str, bytes: &[u8], mode: u32) -> Result<(), String> {
        let dest = self.path(to);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        fs::write(&dest, bytes).map_err(|e| format!("{}: {e}", dest.display()))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{}: {e}", dest.display()))
    }

    fn symlink(&self, target: &str, link: &str) -> Result<(), String> {
        let link = self.path(link);
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        if fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link).map_err(|e| format!("{}: {e}", link.display()))?;
        }
        symlink(target, &link).map_err(|e| format!("{}: {e}", link.display()))
    }

    /// Writes the tree as a gzipped newc cpio archive to `image`.
    fn pack(&self, image: &Path) -> Result<(), String> {
        let mut archive = Cpio::default();
        archive.add_tree(&self.root, "")?;
        let bytes = archive.finish();
        let out = fs::File::create(image).map_err(|e| format!("{}: {e}", image.display()))?;
        let mut gzip = Command::new("gzip");
        gzip.args(["-1", "-n"]).stdin(Stdio::piped()).stdout(out);
        let mut child = gzip
            .spawn()
            .map_err(|e| format!("could not run gzip: {e}"))?;
        let written = child
            .stdin
            .take()
            .ok_or("gzip has no stdin")?
            .write_all(&bytes);
        let status = child.wait().map_err(|e| format!("gzip: {e}"))?;
        written.map_err(|e| format!("writing to gzip: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("gzip failed ({status})"))
        }
    }
}

/// The libraries in `ldd`'s output: `name => /path (addr)` and the loader `/path (addr)`.
fn ldd_libraries(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect()
}

/// A `newc` (SVR4, no checksum) cpio archive, as the kernel unpacks an initramfs.
#[derive(Debug, Default)]
struct Cpio {
    bytes: Vec<u8>,
    ino: u32,
}

impl Cpio {
    const S_IFMT: u32 = 0o170_000;
    const S_IFDIR: u32 = 0o040_000;
    const S_IFREG: u32 = 0o100_000;
    const S_IFLNK: u32 = 0o120_000;

    /// `dir`'s entries under the archive name `prefix`, each directory before its contents.
    fn add_tree(&mut self, dir: &Path, prefix: &str) -> Result<(), String> {
        for path in read_dir(dir)? {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let archived = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let meta =
                fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let perm = meta.mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target =
                    fs::read_link(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let target = target.to_string_lossy().into_owned();
                self.entry(&archived, Self::S_IFLNK | 0o777, target.as_bytes());
            } else if meta.is_dir() {
                self.entry(&archived, Self::S_IFDIR | perm, &[]);
                self.add_tree(&path, &archived)?;
            } else {
                let data = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                self.entry(&archived, Self::S_IFREG | perm, &data);
            }
        }
        Ok(())
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let nlink = if mode & Self::S_IFMT == Self::S_IFDIR {
            2
        } else {
            1
        };
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: the same archive from the same tree
            u32::try_from(data.len()).unwrap_or(u32::MAX),
            0,
            0,
            0,
            0,
            u32::try_from(name.len() + 1).unwrap_or(u32::MAX),
            0, // check
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ldd() {
        let listing = "\tlinux-vdso.so.1 (0x00007f0833082000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0832f83000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0832da1000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0833084000)
\tlibmissing.so.1 => not found
";
        assert_eq!(
            ldd_libraries(listing),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }

    #[test]
    fn newc_entries_are_aligned() {
        let mut cpio = Cpio::default();
        cpio.entry("init", Cpio::S_IFREG | 0o755, b"#!/bin/sh\n");
        cpio.entry("bin", Cpio::S_IFDIR | 0o755, &[]);
        let bytes = cpio.finish();
        assert_eq!(&bytes[..6], b"070701");
        assert!(bytes.len().is_multiple_of(4));
        // The first header: ino 1, mode 0100755, file size 10, name size 5.
        let header = std::str::from_utf8(&bytes[6..110]).unwrap();
        assert_eq!(&header[..8], "00000001");
        assert_eq!(&header[8..16], "000081ed");
        assert_eq!(&header[48..56], "0000000a");
        assert_eq!(&header[88..96], "00000005");
        // Header (110) + "init\0" (5) padded to 116, then the data.
        assert_eq!(&bytes[110..115], b"init\0");
        assert_eq!(&bytes[116..126], b"#!/bin/sh\n");
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("TRAILER!!!"));
        // The directory has two links.
        let dir = text.find("bin\0").unwrap() - 110;
        assert_eq!(&text[dir + 6 + 32..dir + 6 + 40], "00000002");
    }
}
