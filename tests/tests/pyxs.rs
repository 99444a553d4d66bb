//! The Python client pyxs (Debian `python3-pyxs`) against the daemon: `tests/py/pyxs_e2e.py`
//! checks transactions (with a conflict retried on `EAGAIN`), watches, permissions and, on
//! xs-host, a guest on its per-domain socket.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use xs_e2e::daemon::{run_with_timeout, workspace_root};
use xs_e2e::{Daemon, Kind, note, python_with_pyxs, require};

fn script() -> PathBuf {
    workspace_root().join("tests/py/pyxs_e2e.py")
}

fn fact<'a>(stdout: &'a str, name: &str) -> Option<&'a str> {
    stdout.lines().find_map(|l| {
        l.strip_prefix("FACT ")?
            .strip_prefix(name)?
            .strip_prefix('=')
    })
}

#[test]
fn pyxs_transactions_watches_permissions() {
    let py = require!(python_with_pyxs());
    let d = require!(Daemon::start());
    let mut c = Command::new(&py);
    c.arg(script()).arg(d.socket());
    if let Some(dir) = d.domain_socket(0).as_deref().and_then(Path::parent) {
        c.arg("--domain-sockets").arg(dir);
    }
    let out = run_with_timeout(c, Duration::from_secs(60));
    assert!(
        out.status.success() && out.stdout.contains("pyxs e2e: all checks passed"),
        "{} failed ({}):\nstdout:\n{}\nstderr:\n{}\ndaemon log:\n{}",
        out.cmdline,
        out.status,
        out.stdout,
        out.stderr,
        d.log()
    );
    let disjoint = fact(&out.stdout, "disjoint_first_try");
    match d.kind() {
        // Design notes §3: transactions creating disjoint nodes under a shared parent both
        // commit.
        Kind::XsHost => {
            assert_eq!(disjoint, Some("True"), "stdout:\n{}", out.stdout);
            assert!(out.stdout.contains("guest: ok"), "stdout:\n{}", out.stdout);
        }
        // C xenstored treats any change to a child list the transaction touched as a
        // conflict, so the second commit gets EAGAIN and is retried.
        Kind::CXenstored | Kind::OXenstored => note(&format!(
            "C xenstored: disjoint transactions under one parent both committed at the \
             first try: {disjoint:?}; guest part skipped (no per-domain sockets)"
        )),
    }
    d.stop();
}
