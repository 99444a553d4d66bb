//! xs-host as a drop-in for Xen's C xenstored, as Xen's scripts and systemd start it: it
//! forks once ready (the command's exit status says whether it started), writes the pid file
//! from the daemon, prints its pid with `-P`, tells systemd `READY=1` through
//! `$NOTIFY_SOCKET`, listens where libxenstore looks (`$XENSTORED_RUNDIR`, `$XENSTORED_PATH`),
//! takes every C option (warning about those it ignores), and starts under Debian's real
//! `launch-xenstore`. All xs-host only: C xenstored 4.17 needs a hypervisor to start this way.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use xs_e2e::daemon::{
    Detached, SIGTERM, TempDir, pid_alive, run_with_timeout, signal, xs_host_bin,
};
use xs_e2e::wire::ty;
use xs_e2e::{Client, Daemon, Output, Skip, Wire, require, tool, xs_host_only};

/// The environment variables that would change where xs-host listens or whom it notifies.
const STEERING: &[&str] = &[
    "XENSTORED_PATH",
    "XENSTORED_RUNDIR",
    "NOTIFY_SOCKET",
    "XENSTORE_DOMAIN_INTERFACE",
];

/// `xs-host args...` with `env` (and none of the steering variables of the test's own
/// environment), 20 s at most.
fn xs_host(args: &[&Path], env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(xs_host_bin());
    c.args(args);
    for v in STEERING {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    run_with_timeout(c, Duration::from_secs(20))
}

fn p(s: &str) -> &Path {
    Path::new(s)
}

/// The fields of `/proc/<pid>/stat` after the command name: state, ppid, pgrp, session, ...
fn stat_fields(pid: u32) -> Vec<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = stat.rsplit_once(')').expect("comm").1;
    after.split_whitespace().map(str::to_owned).collect()
}

/// `GET_QUOTA name` on `socket`.
fn quota(socket: &Path, name: &str) -> String {
    let mut w = Wire::connect(socket).expect("connect");
    let v = w
        .request(ty::GET_QUOTA, format!("{name}\0").as_bytes())
        .unwrap_or_else(|e| panic!("GET_QUOTA {name}: {e}"));
    String::from_utf8_lossy(&v)
        .trim_end_matches('\0')
        .to_owned()
}

/// Without `-N`, the command returns 0 once the daemon serves: the socket answers at once, no
/// polling. The daemon is a grandchild of the command (not a session leader, so it can never
/// get a terminal), in `/`, with stdio on /dev/null, and said nothing on success; the pid
/// file holds its pid; relative paths are taken from where it was started. SIGTERM stops it
/// and it removes its sockets and pid file.
#[test]
fn forks_once_ready() {
    if !xs_host_only() {
        return;
    }
    let dir = TempDir::new();
    let mut c = Command::new(xs_host_bin());
    c.args(["-s", "sock", "--pid-file", "xs.pid", "-T", "trace"])
        .current_dir(dir.path());
    for v in STEERING {
        c.env_remove(v);
    }
    let out = run_with_timeout(c, Duration::from_secs(20));
    let pid_file = dir.path().join("xs.pid");
    let daemon = Detached::try_from_pid_file(&pid_file);
    out.ok();
    let d = daemon.expect("a pid in the pid file");
    assert_eq!(out.stdout, "", "{out:?}");
    assert_eq!(out.stderr, "", "{out:?}");
    let socket = dir.path().join("sock");
    let mut w = Wire::connect(&socket).expect("the socket serves when the command returns");
    w.write("/forked", b"yes").expect("write");
    assert_eq!(w.read("/forked").as_deref(), Ok(&b"yes"[..]));
    drop(w);

    assert!(d.alive());
    let stat = stat_fields(d.pid());
    let session: u32 = stat[3].parse().expect("session id");
    assert_ne!(session, d.pid(), "the daemon must not be a session leader");
    assert_eq!(
        fs::read_link(format!("/proc/{}/cwd", d.pid())).expect("cwd"),
        PathBuf::from("/")
    );
    for fd in 0..3 {
        assert_eq!(
            fs::read_link(format!("/proc/{}/fd/{fd}", d.pid())).expect("fd"),
            PathBuf::from("/dev/null"),
            "fd {fd}"
        );
    }
    assert!(dir.path().join("trace").exists(), "trace file");
    d.stop();
    for left in ["sock", "sock_ro", "xs.pid"] {
        assert!(!dir.path().join(left).exists(), "{left} left behind");
    }
}

/// A start that fails in the background exits 1 with the reason on stderr, and leaves no
/// daemon, socket or pid file behind.
#[test]
fn a_failed_background_start_exits_1() {
    if !xs_host_only() {
        return;
    }
    let dir = TempDir::new();
    let socket = dir.path().join("sock");
    let file = dir.path().join("file");
    fs::write(&file, "").expect("file");
    let out = xs_host(&[p("-s"), &socket, p("-F"), &file.join("pid")], &[]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("file/pid"), "{out:?}");
    assert!(!socket.exists());
    // A trace file that cannot be opened: refused before any socket exists.
    let out = xs_host(&[p("-s"), &socket, p("-T"), &file.join("trace")], &[]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("file/trace"), "{out:?}");
    let left: Vec<_> = fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["file"]);
}

/// `-P` prints the daemon's pid on stdout: the forked daemon's (the pid file's), or with
/// `-N` the process's own. With `-N` (`--no-fork`) the process started is the daemon and
/// stays in the foreground, logging to its stderr.
#[test]
fn output_pid_and_no_fork() {
    if !xs_host_only() {
        return;
    }
    let dir = TempDir::new();
    let socket = dir.path().join("sock");
    let pid_file = dir.path().join("pid");
    let out = xs_host(&[p("-s"), &socket, p("-F"), &pid_file, p("-P")], &[]);
    out.ok();
    let d = Detached::from_pid_file(&pid_file);
    assert_eq!(out.stdout, format!("{}\n", d.pid()));
    d.stop();

    let d = require!(Daemon::start_with(&["--no-fork", "--output-pid"]));
    assert_eq!(
        fs::read_to_string(d.dir().join("daemon.stdout")).expect("stdout"),
        format!("{}\n", d.pid())
    );
    assert!(
        d.stderr().contains("xs-host: listening on"),
        "{}",
        d.stderr()
    );
    assert_ne!(
        fs::read_link(format!("/proc/{}/fd/2", d.pid())).expect("fd 2"),
        PathBuf::from("/dev/null")
    );
    d.stop();
}

/// Receives one notification (10 s at most).
fn receive(socket: &UnixDatagram) -> String {
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("no notification within 10 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// systemd's `Type=notify` (Xen's xenstored.service): with `$NOTIFY_SOCKET` a path or an
/// abstract name (`@...`), the daemon sends `READY=1` once it serves, with `MAINPID=` when
/// it forked; in the foreground, `READY=1` alone.
#[test]
fn notify_socket_gets_ready() {
    if !xs_host_only() {
        return;
    }
    let dir = TempDir::new();
    let path = dir.path().join("notify");
    let abstract_name = format!("xs-e2e-notify-{}", std::process::id());
    let by_path = UnixDatagram::bind(&path).expect("bind");
    let by_name = {
        use std::os::linux::net::SocketAddrExt;
        let addr = SocketAddr::from_abstract_name(abstract_name.as_bytes()).expect("name");
        UnixDatagram::bind_addr(&addr).expect("bind abstract")
    };
    let at_name = PathBuf::from(format!("@{abstract_name}"));
    for (notify, listener) in [(&path, &by_path), (&at_name, &by_name)] {
        let socket = dir.path().join("sock");
        let pid_file = dir.path().join("pid");
        let out = xs_host(
            &[p("-s"), &socket, p("-F"), &pid_file],
            &[("NOTIFY_SOCKET", notify)],
        );
        out.ok();
        let d = Detached::from_pid_file(&pid_file);
        assert_eq!(
            receive(listener),
            format!("READY=1\nMAINPID={}", d.pid()),
            "{}",
            notify.display()
        );
        d.stop();
    }

    // In the foreground.
    let socket = dir.path().join("fg");
    let mut child = Command::new(xs_host_bin())
        .arg("-N")
        .arg("-s")
        .arg(&socket)
        .env("NOTIFY_SOCKET", &path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let got = receive(&by_path);
    // Ready means serving.
    let served = Wire::connect(&socket).and_then(|mut w| {
        w.read("/")
            .map_err(|e| std::io::Error::other(format!("READ /: {e}")))
    });
    signal(child.id(), SIGTERM);
    let status = child.wait().expect("wait");
    assert_eq!(got, "READY=1");
    served.expect("serves once READY=1 is sent");
    assert!(status.success(), "{status}");
}

/// Every C xenstored option is accepted in a start: the ones that apply take effect, the
/// others are warned about once each and the daemon serves.
#[test]
fn c_options_are_accepted() {
    if !xs_host_only() {
        return;
    }
    let d = require!(Daemon::start_with(&[
        "-E",
        "2000",
        "--entry-size=4000",
        "-W256",
        "-t",
        "20",
        "-A",
        "9",
        "-M",
        "1024",
        "-Q",
        "outstanding=40",
        "-q",
        "memory=1048576",
        "-w",
        "watch-event=20",
        "--event",
        "3",
        "--master-domid",
        "0",
        "--priv-domid",
        "2",
        "-V",
        "--trace-control=+io",
        "-D",
        "-R",
        "-I",
        "--internal-db=off",
        "-K",
        "--keep-orphans",
        "-U",
        "--live-update",
        "--trace-control=+wrl",
    ]));
    for (name, want) in [
        ("nodes", "2000"),
        ("node-size", "4000"),
        ("watches", "256"),
        ("transactions", "20"),
        ("permissions", "9"),
        ("path-max", "1024"),
        ("outstanding", "40"),
    ] {
        assert_eq!(quota(d.socket(), name), want, "{name}");
    }
    let log = d.stderr();
    for option in [
        "-D/--no-domain-init",
        "-R/--no-recovery",
        "-I/--internal-db",
        "-U/--live-update",
        "--trace-control=+wrl",
        "-w/--timeout watch-event=20",
    ] {
        let warning = format!("xs-host: warning: ignoring {option}: not supported by xs-host");
        assert_eq!(log.matches(&warning).count(), 1, "{warning} in\n{log}");
    }
    assert_eq!(log.matches("ignoring").count(), 6, "{log}");
    d.connect().write("/still", b"serving").expect("write");
    d.stop();
}

/// Options C xenstored does not have, and malformed values of those it has, are usage
/// errors: exit 2, no daemon.
#[test]
fn unknown_options_exit_2() {
    if !xs_host_only() {
        return;
    }
    let dir = TempDir::new();
    let socket = dir.path().join("sock");
    for bad in [
        &["-X"][..],
        &["-r"],
        &["-e", "5"],
        &["--memory-debug"],
        &["--preserve-local"],
        &["-q", "nodes=1"],
        &["-w", "nope=1"],
        &["--trace-control=+bogus"],
        &["--no"],
        &["stray"],
    ] {
        let mut args: Vec<&Path> = vec![p("-s"), &socket];
        args.extend(bad.iter().map(|a| p(a)));
        let out = xs_host(&args, &[]);
        assert_eq!(out.code(), Some(2), "{bad:?}: {out:?}");
        assert!(out.stderr.contains("xs-host --help"), "{bad:?}: {out:?}");
        assert!(!socket.exists(), "{bad:?} started a daemon");
    }
}

/// Without `--socket`, xs-host listens where libxenstore looks: `$XENSTORED_RUNDIR/socket`
/// (the directory made, mode 0755, as C xenstored makes it), with `socket_ro` beside it; or
/// `$XENSTORED_PATH`, which wins. Xen's clients find it through the same variables.
#[test]
fn socket_from_xenstored_rundir_and_path() {
    if !xs_host_only() {
        return;
    }
    let [read, write] = require!(xs_e2e::tools(["xenstore-read", "xenstore-write"]));
    let dir = TempDir::new();
    let rundir = dir.path().join("run").join("xenstored");
    let pid_file = dir.path().join("pid");
    let client = |program: &Path, var: &str, value: &Path, args: &[&str]| {
        let mut c = Command::new(program);
        for v in STEERING {
            c.env_remove(v);
        }
        c.env(var, value).args(args);
        run_with_timeout(c, Duration::from_secs(20))
    };

    let out = xs_host(&[p("-F"), &pid_file], &[("XENSTORED_RUNDIR", &rundir)]);
    out.ok();
    let d = Detached::from_pid_file(&pid_file);
    assert!(rundir.join("socket").exists() && rundir.join("socket_ro").exists());
    let mode = fs::metadata(&rundir).expect("rundir").permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    client(&read, "XENSTORED_RUNDIR", &rundir, &["-s", "/"]).ok();
    client(&write, "XENSTORED_RUNDIR", &rundir, &["/via", "rundir"]).ok();
    assert_eq!(
        client(&read, "XENSTORED_RUNDIR", &rundir, &["/via"]).ok(),
        "rundir\n"
    );
    d.stop();
    assert!(!rundir.join("socket").exists());

    let path = dir.path().join("xs.sock");
    let out = xs_host(
        &[p("-F"), &pid_file],
        &[("XENSTORED_RUNDIR", &rundir), ("XENSTORED_PATH", &path)],
    );
    out.ok();
    let d = Detached::from_pid_file(&pid_file);
    assert!(path.exists() && dir.path().join("xs.sock_ro").exists());
    assert!(!rundir.join("socket").exists());
    client(&write, "XENSTORED_PATH", &path, &["/via", "path"]).ok();
    assert_eq!(
        client(&read, "XENSTORED_PATH", &path, &["-s", "/via"]).ok(),
        "path\n"
    );
    d.stop();
}

/// Debian's real `/etc/xen/scripts/launch-xenstore` (package xen-utils-common), with its
/// fixed paths moved into a temp directory: it starts xs-host as it starts xenstored
/// (`prlimit ... $XENSTORED --pid-file <rundir>/xenstored.pid $XENSTORED_ARGS`, with
/// `XENSTORED_TRACE` adding `-T`), waits for the pid file, and exits 0; the store then
/// answers `xenstore-read -s /` at once. With `NOTIFY_SOCKET` set, as under xenstored.service,
/// the daemon also says `READY=1`.
#[test]
fn launch_xenstore_starts_it() {
    if !xs_host_only() {
        return;
    }
    let script = Path::new("/etc/xen/scripts/launch-xenstore");
    let text = require!(fs::read_to_string(script).map_err(|e| Skip(format!(
        "{}: {e} (Debian package xen-utils-common)",
        script.display()
    ))));
    let read = require!(tool("xenstore-read"));
    let dir = TempDir::new();
    let at = |name: &str| dir.path().join(name);
    let (run_xen, log_xen, rundir, config) =
        (at("run-xen"), at("log-xen"), at("rundir"), at("xencommons"));
    fs::create_dir(&log_xen).expect("log dir");
    let mut copy = text.clone();
    for (from, to) in [
        ("/etc/default/xencommons", &config),
        ("/var/run/xen", &run_xen),
        ("/var/log/xen", &log_xen),
    ] {
        assert!(
            text.contains(from),
            "{} no longer uses {from}",
            script.display()
        );
        copy = copy.replace(from, &to.to_string_lossy());
    }
    let launch = at("launch-xenstore");
    fs::write(&launch, copy).expect("script");
    // The raised open-file limit must not exceed what this machine lets root set.
    fs::write(
        &config,
        format!(
            "XENSTORED={}\nXENSTORED_TRACE=1\nXENSTORED_ARGS=\"-E 1500 -K -U\"\n\
             XENSTORED_MAX_OPEN_FDS=$(ulimit -Hn)\n",
            xs_host_bin().display()
        ),
    )
    .expect("xencommons");
    let notify_path = at("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("bind");

    let mut c = Command::new("bash");
    c.arg(&launch);
    for v in STEERING {
        c.env_remove(v);
    }
    c.env("XENSTORED_RUNDIR", &rundir)
        .env("NOTIFY_SOCKET", &notify_path);
    let out = run_with_timeout(c, Duration::from_secs(60));
    let daemon = Detached::try_from_pid_file(&run_xen.join("xenstored.pid"));
    out.ok();
    let d = daemon.expect("a pid in the pid file");
    // No second of polling: the script prints a dot for each look that finds no pid file.
    assert_eq!(
        out.stdout.trim_end(),
        format!("Starting {}...", xs_host_bin().display()),
        "{out:?}"
    );
    assert!(pid_alive(d.pid()));
    let mut ask = Command::new(&read);
    for v in STEERING {
        ask.env_remove(v);
    }
    ask.env("XENSTORED_RUNDIR", &rundir).args(["-s", "/"]);
    run_with_timeout(ask, Duration::from_secs(20)).ok();
    assert_eq!(receive(&notify), format!("READY=1\nMAINPID={}", d.pid()));
    assert_eq!(quota(&rundir.join("socket"), "nodes"), "1500");
    assert!(out.stderr.contains("ignoring -U/--live-update"), "{out:?}");
    assert!(log_xen.join("xenstored-trace.log").exists());
    d.stop();
    assert!(!rundir.join("socket").exists());
}
