//! xs-host's own command-line options, as its usage documents them (C xenstored 4.17 has
//! no read-only socket and no per-domain sockets, so these tests note and return under
//! `XS_E2E_DAEMON=cxenstored`).

use std::fs;

use xs_e2e::{Client, Daemon, Kind, Wire, note, require, tools};

fn xs_host_only(d: &Daemon) -> bool {
    if d.kind() == Kind::XsHost {
        return true;
    }
    note("xs-host only");
    false
}

/// `--socket-ro` defaults to `<socket>_ro`: reads work there, changes get `EROFS`.
#[test]
fn read_only_socket() {
    let d = require!(Daemon::start());
    if !xs_host_only(&d) {
        return;
    }
    let mut rw = d.connect();
    rw.write("/ro/node", b"v").expect("write");
    let ro_path = d.dir().join("sock_ro");
    assert!(ro_path.exists(), "{} missing", ro_path.display());
    let mut ro = Wire::connect(&ro_path).expect("connect read-only socket");
    assert_eq!(ro.read("/ro/node").as_deref(), Ok(&b"v"[..]));
    assert_eq!(ro.directory("/ro").as_deref(), Ok(&["node".to_owned()][..]));
    assert_eq!(ro.write("/ro/node", b"x"), Err("EROFS".to_owned()));
    assert_eq!(ro.write("/ro/new", b"x"), Err("EROFS".to_owned()));
    assert_eq!(ro.mkdir("/ro/dir"), Err("EROFS".to_owned()));
    assert_eq!(ro.rm("/ro/node"), Err("EROFS".to_owned()));
    assert_eq!(ro.set_perms("/ro/node", &["n1"]), Err("EROFS".to_owned()));
    assert_eq!(rw.read("/ro/node").as_deref(), Ok(&b"v"[..]));
    assert_eq!(rw.read("/ro/new"), Err("ENOENT".to_owned()));
    // Xen's tools on it.
    if let Ok([read, write]) = tools(["xenstore-read", "xenstore-write"]) {
        let mut c = d.command_at(&read, &ro_path);
        c.arg("/ro/node");
        let out = xs_e2e::daemon::run_with_timeout(c, std::time::Duration::from_secs(20));
        assert_eq!(out.ok(), "v\n");
        let mut c = d.command_at(&write, &ro_path);
        c.args(["/ro/node", "x"]);
        let out = xs_e2e::daemon::run_with_timeout(c, std::time::Duration::from_secs(20));
        assert_eq!(
            out.code(),
            Some(1),
            "xenstore-write on the read-only socket: {out:?}"
        );
    }
    d.stop();
}

/// `-F` writes the pid file (removed on exit); `-T` traces requests.
#[test]
fn pid_file_and_trace_file() {
    if xs_e2e::Kind::from_env() != Kind::XsHost {
        note("xs-host only");
        return;
    }
    let dir = xs_e2e::daemon::TempDir::new();
    let pid_file = dir.path().join("xs.pid");
    let trace = dir.path().join("trace");
    let d = require!(Daemon::start_with(&[
        "-F",
        pid_file.to_str().expect("utf-8 path"),
        "-T",
        trace.to_str().expect("utf-8 path"),
    ]));
    let pid: u32 = fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid in the pid file");
    assert_eq!(pid, d.pid());
    let mut w = d.connect();
    w.write("/traced/node", b"value").expect("write");
    d.stop();
    assert!(!pid_file.exists(), "pid file left behind after exit");
    let t = fs::read_to_string(&trace).expect("trace file");
    assert!(
        t.contains("/traced/node"),
        "trace does not mention the written path:\n{t}"
    );
}

/// `-Q NAME=N` sets a quota (shown by `xenstore-control quota`); `--no-domain-nodes` leaves
/// `/local/domain/<N>` to the toolstack.
#[test]
fn quota_option_and_no_domain_nodes() {
    if xs_e2e::Kind::from_env() != Kind::XsHost {
        note("xs-host only");
        return;
    }
    let d = require!(Daemon::start_with(&["-Q", "nodes=42", "--no-domain-nodes"]));
    let mut dom0 = d.connect();
    let quota = dom0.control(&["quota"]).expect("CONTROL quota");
    let quota = String::from_utf8_lossy(&quota).into_owned();
    assert!(
        quota.lines().any(|l| {
            let mut f = l.split(':');
            f.next().map(str::trim) == Some("nodes")
                && f.next().and_then(|v| v.split_whitespace().next()) == Some("42")
        }),
        "{quota}"
    );
    drop(require!(d.guest(5)));
    assert_eq!(dom0.read("/local/domain/5"), Err("ENOENT".to_owned()));
    d.stop();
}

/// `--priv-domid N`: domain N is privileged. As in C xenstored (checked with
/// `xenstored --priv-domid 3`), dom0 can INTRODUCE it, and through its connection it reads
/// and writes anything and introduces other domains; an ordinary guest still cannot.
#[test]
fn priv_domid_is_privileged() {
    let d = require!(Daemon::start_with_args(
        &["--priv-domid", "3"],
        &["--priv-domid", "3"]
    ));
    let mut dom0 = d.connect();
    dom0.write("/secret", b"s").expect("write");
    dom0.set_perms("/secret", &["n0"]).expect("chmod");
    let mut p = require!(d.guest(3));
    assert_eq!(p.read("/secret").as_deref(), Ok(&b"s"[..]));
    p.write("/from3/x", b"y")
        .expect("privileged domain writes anywhere");
    // A privileged creator does not become the owner: the parent's permissions are
    // inherited unchanged (C xenstored makes only unprivileged creators owners).
    assert_eq!(dom0.get_perms("/from3/x").expect("perms"), ["n0"]);
    p.introduce(7).expect("privileged domain introduces");
    let mut g = require!(d.guest(5));
    assert_eq!(g.read("/secret"), Err("EACCES".to_owned()));
    drop((p, g));
    d.stop();
}
