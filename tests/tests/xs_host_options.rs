//! xs-host's own command-line options and behaviour as a process, as its usage documents
//! them: sockets, pid and trace files, quotas, signals, messages and exit codes (C
//! xenstored 4.17 has no read-only socket and no per-domain sockets, so these tests note
//! and return under `XS_E2E_DAEMON=cxenstored`).

use std::fs;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command;
use std::time::{Duration, Instant};

use xs_e2e::daemon::{SIGINT, SIGTERM, TempDir, run_with_timeout, xs_host_bin};
use xs_e2e::wire::ty;
use xs_e2e::{Client, Daemon, Output, Wire, require, tools, xs_host_only};

/// Runs the xs-host binary with `args` (20 s at most).
fn run_xs_host(args: &[&str]) -> Output {
    let mut c = Command::new(xs_host_bin());
    c.args(args);
    run_with_timeout(c, Duration::from_secs(20))
}

/// `--socket-ro` defaults to `<socket>_ro`: reads work there, changes get `EROFS`.
#[test]
fn read_only_socket() {
    if !xs_host_only() {
        return;
    }
    let d = require!(Daemon::start());
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
    // Watches change nothing in the store: allowed, with their initial event.
    assert_eq!(ro.watch("/ro", "t").as_deref(), Ok(&b"OK\0"[..]));
    assert_eq!(ro.next_event(), ("/ro".to_owned(), "t".to_owned()));
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

/// `-F` writes the pid file. On SIGTERM, with a client connected, xs-host exits 0 and
/// removes its socket files and the pid file.
#[test]
fn pid_file_and_sigterm() {
    if !xs_host_only() {
        return;
    }
    let dir = TempDir::new();
    let pid_file = dir.path().join("xs.pid");
    let mut d = require!(Daemon::start_with(&[
        "-F",
        pid_file.to_str().expect("utf-8 path"),
    ]));
    let pid: u32 = fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid in the pid file");
    assert_eq!(pid, d.pid());
    let mut idle = d.connect();
    idle.write("/x", b"1").expect("write");
    // Asserts exit status 0.
    d.stop_with_signal(SIGTERM);
    assert!(!d.socket().exists(), "socket left behind after exit");
    assert!(
        !d.dir().join("sock_ro").exists(),
        "read-only socket left behind after exit"
    );
    assert!(!pid_file.exists(), "pid file left behind after exit");
}

/// SIGINT: the same clean exit.
#[test]
fn sigint_exits_cleanly() {
    if !xs_host_only() {
        return;
    }
    let mut d = require!(Daemon::start());
    // Asserts exit status 0.
    d.stop_with_signal(SIGINT);
    assert!(!d.socket().exists(), "socket left behind after exit");
    assert!(
        !d.dir().join("sock_ro").exists(),
        "read-only socket left behind after exit"
    );
}

/// `-T` traces requests and replies (escaped), connections and `CONTROL print`, each line
/// after a timestamp; `CONTROL log -io` / `+io` turn the request lines off and on.
#[test]
fn trace_file_and_log_switch() {
    if !xs_host_only() {
        return;
    }
    let dir = TempDir::new();
    let trace = dir.path().join("trace");
    let d = require!(Daemon::start_with(&[
        "-T",
        trace.to_str().expect("utf-8 path")
    ]));
    let mut c = d.connect();
    c.write("/traced", b"v\x01").expect("write");
    assert_eq!(c.read("/traced").as_deref(), Ok(&b"v\x01"[..]));
    c.control(&["log", "-io"]).expect("CONTROL log -io");
    assert_eq!(c.read("/not-traced"), Err("ENOENT".to_owned()));
    c.control(&["log", "+io"]).expect("CONTROL log +io");
    c.control(&["print", "hello trace"]).expect("CONTROL print");
    drop(c);
    let want = [
        r#" dom=0 IN  WRITE req=1 tx=0 "/traced\0v\x01""#,
        r#" dom=0 OUT WRITE req=1 tx=0 "OK\0""#,
        r#" dom=0 IN  READ req=2 tx=0 "/traced\0""#,
        r#" dom=0 OUT READ req=2 tx=0 "v\x01""#,
        "PRINT hello trace",
        " dom=0 OPEN socket",
    ];
    let start = Instant::now();
    let text = loop {
        let text = fs::read_to_string(&trace).expect("trace file");
        if want.iter().all(|w| text.contains(w)) || start.elapsed() > Duration::from_secs(10) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    for w in want {
        assert!(text.contains(w), "{w} not in\n{text}");
    }
    assert!(!text.contains("not-traced"), "{text}");
    // Every line starts with a timestamp.
    for line in text.lines() {
        assert!(line.len() > 27 && line.as_bytes()[26] == b'Z', "{line}");
    }
    d.stop();
}

/// `-Q NAME=N` sets a quota (shown by `xenstore-control quota`); as C xenstored, xs-host
/// leaves `/local/domain/<N>` to the toolstack (`--no-domain-nodes`, which said so before it
/// was the default, is still accepted).
#[test]
fn quota_option_and_no_domain_nodes() {
    if !xs_host_only() {
        return;
    }
    let extras: [&[&str]; 2] = [&[], &["--no-domain-nodes"]];
    for extra in extras {
        let args = [&["-Q", "nodes=42"][..], extra].concat();
        quota_option_and_no_domain_nodes_with(&args);
    }
}

fn quota_option_and_no_domain_nodes_with(args: &[&str]) {
    let d = require!(Daemon::start_with(args));
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
    let mut g = require!(d.guest(5));
    assert_eq!(dom0.read("/local/domain/5"), Err("ENOENT".to_owned()));
    // The guest's relative paths lead nowhere it may read.
    assert_eq!(g.read("domid"), Err("EACCES".to_owned()));
    drop(g);
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

/// The quota options (`-S`, `-W`, `-Q`, including Xen's alias `path-length`) set the
/// values `GET_QUOTA` reports and a guest runs into.
#[test]
fn quotas_from_the_command_line() {
    if !xs_host_only() {
        return;
    }
    let d = require!(Daemon::start_with(&[
        "-S",
        "10",
        "-Q",
        "path-length=100",
        "-W",
        "1"
    ]));
    let mut dom0 = d.connect();
    for (name, want) in [("node-size", "10"), ("path-max", "100"), ("watches", "1")] {
        assert_eq!(
            dom0.request(ty::GET_QUOTA, format!("{name}\0").as_bytes()),
            Ok(format!("{want}\0").into_bytes()),
            "GET_QUOTA {name}"
        );
    }
    // The toolstack's part: the guest's data directory, its own.
    dom0.write("/local/domain/2/data", b"").expect("mkdir");
    dom0.set_perms("/local/domain/2/data", &["n2"])
        .expect("chmod");
    let mut g = require!(d.guest(2));
    g.write("data/ok", b"0123456789")
        .expect("a value of the node size");
    assert_eq!(
        g.write("data/big", b"0123456789a"),
        Err("ENOSPC".to_owned())
    );
    g.watch("data", "a").expect("the one watch allowed");
    assert_eq!(g.watch("data", "b"), Err("ENOSPC".to_owned()));
    drop(g);
    d.stop();
}

/// A start that fails after some sockets were bound (the read-only socket's directory is
/// missing, or the pid file cannot be written) exits 1 and leaves no socket file behind.
#[test]
fn a_failed_start_leaves_no_socket_files() {
    if !xs_host_only() {
        return;
    }
    let dir = TempDir::new();
    let socket = dir.path().join("sock");
    let socket = socket.to_str().expect("utf-8 path");
    // A path below a regular file can be neither created nor written.
    let file = dir.path().join("file");
    let ro = file.join("ro");
    let pid = file.join("pid");
    let ro = ro.to_str().expect("utf-8 path");
    let pid = pid.to_str().expect("utf-8 path");
    for extra in [["--socket-ro", ro], ["-F", pid]] {
        fs::write(&file, "").expect("create the file");
        let out = run_xs_host(&["-s", socket, extra[0], extra[1]]);
        assert_eq!(out.code(), Some(1), "{extra:?}: {out:?}");
        fs::remove_file(&file).expect("remove the file");
        let left: Vec<_> = fs::read_dir(dir.path())
            .expect("read the dir")
            .map(|e| e.expect("dir entry").path())
            .collect();
        assert!(left.is_empty(), "{extra:?} left {left:?}");
    }
}

/// `--socket-ro PATH` moves the read-only socket; `--socket-ro none` disables it.
#[test]
fn read_only_socket_can_be_disabled_or_moved() {
    if !xs_host_only() {
        return;
    }
    let dir = TempDir::new();
    let elsewhere = dir.path().join("elsewhere");
    let d = require!(Daemon::start_with(&[
        "--socket-ro",
        elsewhere.to_str().expect("utf-8 path")
    ]));
    assert!(!d.dir().join("sock_ro").exists());
    let mut ro = Wire::connect(&elsewhere).expect("connect the moved read-only socket");
    assert_eq!(ro.write("/a", b"b"), Err("EROFS".to_owned()));
    drop(ro);
    d.stop();
    let d = require!(Daemon::start_with(&["--socket-ro", "none"]));
    assert!(!d.dir().join("sock_ro").exists());
    d.stop();
}

/// At start xs-host tells on stderr where it listens and how to point clients at it;
/// `--help` prints the usage (exit 0); bad options exit 2.
#[test]
fn start_message_and_help() {
    if !xs_host_only() {
        return;
    }
    let d = require!(Daemon::start());
    let stderr = d.stderr();
    let socket = d.socket().display().to_string();
    assert!(
        stderr.contains(&format!(
            "xs-host: listening on {socket} (read-only: {socket}_ro)"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("export XENSTORED_PATH={socket}")),
        "{stderr}"
    );
    d.stop();
    let help = run_xs_host(&["--help"]);
    assert!(help.ok().contains("--domain-sockets DIR"), "{help:?}");
    for bad in [&["--bogus"][..], &["-E", "x"], &["-Q", "nope=1"]] {
        let out = run_xs_host(bad);
        assert_eq!(out.code(), Some(2), "{bad:?}: {out:?}");
    }
}

/// A second daemon on a live socket refuses to start (exit 1) and leaves the first one
/// serving; a stale socket file (nobody listening) is replaced.
#[test]
fn refuses_a_live_socket_and_replaces_a_stale_one() {
    if !xs_host_only() {
        return;
    }
    let d = require!(Daemon::start());
    let second = run_xs_host(&["-s", d.socket().to_str().expect("utf-8 path")]);
    assert_eq!(second.code(), Some(1), "{second:?}");
    assert!(second.stderr.contains("another daemon"), "{second:?}");
    d.connect().write("/still", b"here").expect("first daemon");
    d.stop();

    let dir = TempDir::new();
    let stale = dir.path().join("sock");
    drop(UnixListener::bind(&stale).expect("bind"));
    assert!(stale.exists());
    assert!(UnixStream::connect(&stale).is_err(), "nobody listens");
    let d = require!(Daemon::start_in(dir, &[], &[]));
    d.connect()
        .write("/a", b"b")
        .expect("daemon on the stale socket");
    d.stop();
}

/// `CONTROL memreport FILE` writes the report to FILE.
#[test]
fn control_memreport_to_file() {
    if !xs_host_only() {
        return;
    }
    let d = require!(Daemon::start());
    let report = d.dir().join("memreport");
    let mut c = d.connect();
    assert_eq!(
        c.control(&["memreport", report.to_str().expect("utf-8 path")])
            .as_deref(),
        Ok(&b"OK\0"[..])
    );
    let text = fs::read_to_string(&report).expect("report file");
    assert!(text.contains("nodes:"), "{text}");
    drop(c);
    d.stop();
}
