//! The downloads: Debian's Xen hypervisor, a dom0-capable kernel (with its modules) and a
//! static busybox, fetched with `apt-get download` (nothing is installed on the host) and
//! unpacked with `dpkg -x`, cached under `<target>/xen-rig/cache`.
//!
//! A `.deb` already in `cache/debs` is used again; `cache/root` (the unpacked packages) is
//! rebuilt only when the set of `.deb`s changes, e.g. when `linux-image-amd64` moves to a new
//! kernel after an `apt-get update`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd;

/// The packages, besides the kernel (whose name `linux-image-amd64` resolves to).
const PACKAGES: &[&str] = &["xen-hypervisor-4.17-amd64", "busybox-static"];

/// The kernel metapackage. Its standard flavour is dom0-capable (`CONFIG_XEN_DOM0=y`), the
/// cloud flavour is not.
const KERNEL_META: &str = "linux-image-amd64";

/// What the rig boots, all under the cache directory.
#[derive(Debug)]
pub(crate) struct Downloads {
    /// Xen, gunzipped: QEMU's multiboot loader takes the ELF image.
    pub(crate) xen: PathBuf,
    /// The kernel for dom0 and for the guests.
    pub(crate) kernel: PathBuf,
    /// Its version (`6.1.0-57-amd64`).
    pub(crate) kernel_version: String,
    /// `lib/modules/<version>/kernel` of the unpacked kernel package.
    pub(crate) modules: PathBuf,
    /// The static busybox.
    pub(crate) busybox: PathBuf,
}

/// Downloads what is missing into `cache` and unpacks it.
pub(crate) fn fetch(cache: &Path) -> Result<Downloads, String> {
    let debs = cache.join("debs");
    fs::create_dir_all(&debs).map_err(|e| format!("{}: {e}", debs.display()))?;
    let kernel_package = kernel_package(&debs)?;
    let mut wanted: Vec<&str> = PACKAGES.to_vec();
    wanted.push(&kernel_package);
    let mut files = Vec::new();
    for package in &wanted {
        let file = match cached_deb(&debs, package)? {
            Some(file) => file,
            None => {
                let mut download = Command::new("apt-get");
                // As root, apt would otherwise try (and warn about) its sandbox user.
                download
                    .args(["-o", "APT::Sandbox::User=root", "download", package])
                    .current_dir(&debs);
                cmd::run(&mut download)?;
                cached_deb(&debs, package)?
                    .ok_or_else(|| format!("apt-get download {package} left no .deb"))?
            }
        };
        files.push(file);
    }
    // Older kernels (and anything else) left from earlier runs.
    for entry in read_dir(&debs)? {
        if entry.extension().is_some_and(|e| e == "deb") && !files.contains(&entry) {
            println!("xen-rig: removing the stale download {}", entry.display());
            fs::remove_file(&entry).map_err(|e| format!("{}: {e}", entry.display()))?;
        }
    }
    let root = cache.join("root");
    unpack(&root, &files)?;

    let kernel_version = kernel_package
        .strip_prefix("linux-image-")
        .unwrap_or(&kernel_package)
        .to_owned();
    let boot = root.join("boot");
    let xen_gz = read_dir(&boot)?
        .into_iter()
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("xen-4.17") && n.ends_with(".gz"))
        })
        .ok_or_else(|| format!("no xen-4.17*.gz in {}", boot.display()))?;
    let xen = cache.join("xen.elf");
    if !xen.exists() || modified(&xen) < modified(&xen_gz) {
        let elf = fs::File::create(&xen).map_err(|e| format!("{}: {e}", xen.display()))?;
        cmd::run(Command::new("gzip").arg("-dc").arg(&xen_gz).stdout(elf))?;
    }
    let downloads = Downloads {
        xen,
        kernel: boot.join(format!("vmlinuz-{kernel_version}")),
        modules: root
            .join("lib/modules")
            .join(&kernel_version)
            .join("kernel"),
        kernel_version,
        busybox: root.join("bin/busybox"),
    };
    for path in [&downloads.kernel, &downloads.modules, &downloads.busybox] {
        if !path.exists() {
            return Err(format!("{} is missing after unpacking", path.display()));
        }
    }
    Ok(downloads)
}

/// The package `linux-image-amd64` depends on; without apt's lists (offline, before any
/// `apt-get update`), the one cached.
fn kernel_package(debs: &Path) -> Result<String, String> {
    let resolved = cmd::output(Command::new("apt-cache").args(["depends", KERNEL_META]))
        .ok()
        .and_then(|text| kernel_dependency(&text));
    if let Some(package) = resolved {
        return Ok(package);
    }
    read_dir(debs)?
        .iter()
        .filter_map(|p| {
            p.file_name()?
                .to_str()?
                .split('_')
                .next()
                .map(str::to_owned)
        })
        .find(|name| name.starts_with("linux-image-"))
        .ok_or_else(|| {
            format!("cannot resolve {KERNEL_META} (apt-cache depends) and no kernel is cached")
        })
}

/// `Depends: linux-image-6.1.0-57-amd64` in `apt-cache depends`'s output.
fn kernel_dependency(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|p| {
            p.starts_with("linux-image-")
                && p.ends_with("-amd64")
                && p.as_bytes().get(12).is_some_and(u8::is_ascii_digit)
                && !p.contains("-cloud-")
                && !p.contains("-rt-")
        })
        .map(str::to_owned)
}

/// The cached `.deb` of `package` (`<package>_<version>_<arch>.deb`), the newest if several.
fn cached_deb(debs: &Path, package: &str) -> Result<Option<PathBuf>, String> {
    let prefix = format!("{package}_");
    let mut found: Vec<PathBuf> = read_dir(debs)?
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    found.sort_by_key(|p| modified(p));
    Ok(found.pop())
}

/// Unpacks `files` into `root`, unless it holds exactly them already.
fn unpack(root: &Path, files: &[PathBuf]) -> Result<(), String> {
    let stamp = root.join(".xen-rig-debs");
    let mut names: Vec<String> = files
        .iter()
        .filter_map(|f| Some(f.file_name()?.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    let list = names.join("\n") + "\n";
    if fs::read_to_string(&stamp).is_ok_and(|s| s == list) {
        return Ok(());
    }
    if root.exists() {
        fs::remove_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
    }
    fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
    for file in files {
        cmd::run(Command::new("dpkg").arg("-x").arg(file).arg(root))?;
    }
    fs::write(&stamp, list).map_err(|e| format!("{}: {e}", stamp.display()))
}

pub(super) fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    Ok(entries)
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_the_kernel() {
        let text = "linux-image-amd64\n  Depends: linux-image-6.1.0-57-amd64\n";
        assert_eq!(
            kernel_dependency(text).as_deref(),
            Some("linux-image-6.1.0-57-amd64")
        );
        // A cloud or rt flavour, or anything else, is not the standard kernel.
        assert_eq!(
            kernel_dependency("  Depends: linux-image-6.1.0-57-cloud-amd64\n  Depends: foo\n"),
            None
        );
    }
}
