//! Skipping a test whose prerequisites (a client binary, a Python module) are missing.
//!
//! A skipped test returns early and so counts as passed in libtest's summary; to keep that
//! from hiding anything, the reason is written straight to the process's standard error
//! (libtest captures only `print!`/`eprint!`, not writes to `io::stderr()`), so it shows in
//! every run. With `XS_E2E_NO_SKIP=1` (CI, once the packages are installed) a missing
//! prerequisite fails the test instead.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a test cannot run here.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Skip(pub String);

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reports `skip` for the current test (or fails it under `XS_E2E_NO_SKIP=1`).
pub fn report(skip: &Skip) {
    let test = std::thread::current()
        .name()
        .unwrap_or("<unknown test>")
        .to_owned();
    if std::env::var_os("XS_E2E_NO_SKIP").is_some_and(|v| v != "0") {
        panic!("{test}: prerequisite missing and XS_E2E_NO_SKIP is set: {skip}");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {skip}");
}

/// Writes a note that shows even when the test passes (same channel as skips).
pub fn note(text: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("<unknown test>")
        .to_owned();
    let _ = writeln!(std::io::stderr(), "NOTE {test}: {text}");
}

/// Unwraps a `Result<T, Skip>`, or reports the skip and returns from the test.
#[macro_export]
macro_rules! require {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(skip) => {
                $crate::skip::report(&skip);
                return;
            }
        }
    };
}

/// Debian package that ships each client tool, for the skip messages.
fn package_of(name: &str) -> &'static str {
    match name {
        "xenstore-control" | "test-xenstore" | "xenstored" => "xen-utils-4.17",
        "python3" => "python3",
        _ => "xenstore-utils",
    }
}

/// Where Debian puts Xen's versioned tools (`xenstore-control`'s `/usr/bin` entry is a
/// wrapper that refuses to run without a hypervisor, so the real binary is taken from here).
const XEN_LIBEXEC: &[&str] = &["/usr/lib/xen-4.17/bin"];

/// The client tool `name`: from Xen's tool directory first, then `PATH`.
pub fn tool(name: &str) -> Result<PathBuf, Skip> {
    for dir in XEN_LIBEXEC {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    if name != "xenstore-control"
        && name != "test-xenstore"
        && let Some(p) = on_path(name)
    {
        return Ok(p);
    }
    Err(Skip(format!(
        "`{name}` not found (Debian package {}; `cargo xtask test` installs it)",
        package_of(name)
    )))
}

/// The program `name` in a directory of `PATH`, if there is one.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// All of `names`, or a skip naming the first missing one.
pub fn tools<const N: usize>(names: [&str; N]) -> Result<[PathBuf; N], Skip> {
    let mut out: [PathBuf; N] = std::array::from_fn(|_| PathBuf::new());
    for (slot, name) in out.iter_mut().zip(names) {
        *slot = tool(name)?;
    }
    Ok(out)
}

/// A Python 3 that can import pyxs. Debian's module is in the system Python's
/// dist-packages, so /usr/bin/python3 comes first (a `python3` earlier in PATH, e.g. from
/// pyenv, does not see it).
pub fn python_with_pyxs() -> Result<PathBuf, Skip> {
    let mut candidates = vec![PathBuf::from("/usr/bin/python3")];
    if let Ok(p) = tool("python3") {
        candidates.push(p);
    }
    for py in candidates.iter().filter(|p| p.is_file()) {
        let mut c = std::process::Command::new(py);
        c.args(["-c", "import pyxs"]);
        if crate::daemon::run_with_timeout(c, std::time::Duration::from_secs(30))
            .status
            .success()
        {
            return Ok(py.clone());
        }
    }
    Err(Skip(format!(
        "no python3 that can `import pyxs` (tried {candidates:?}; Debian package python3-pyxs)"
    )))
}
