//! Starting a XenStore daemon on a fresh socket, running client tools against it, and
//! stopping it.
//!
//! Which daemon: `XS_E2E_DAEMON=xs-host` (default) or `XS_E2E_DAEMON=cxenstored` (Debian's
//! C xenstored 4.17 through `shared/anchors/start-anchor.sh`, the reference the tests were
//! validated against). The differential tester (`crate::difftest`) starts all three kinds
//! side by side with [`Daemon::start_kind`], Xen's OCaml oxenstored 4.17 included.
//!
//! The xs-host binary is `$XS_HOST_BIN` if set, else it is built here with
//! `cargo build --release -p xs-host` into this test binary's own target directory.

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::ring::RingGuest;
use crate::skip::{Skip, note, tool};
use crate::wire::{Client, Wire};

// `kill(2)` is safe to call with any arguments: it touches no memory of ours.
unsafe extern "C" {
    safe fn kill(pid: i32, sig: i32) -> i32;
}

/// `SIGINT`.
pub const SIGINT: i32 = 2;
/// `SIGKILL`.
pub const SIGKILL: i32 = 9;
/// `SIGTERM`.
pub const SIGTERM: i32 = 15;

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(pid, sig);
    }
}

/// Which daemon the tests run against.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// This project's daemon.
    XsHost,
    /// Xen's C xenstored (reference).
    CXenstored,
    /// Xen's OCaml oxenstored (second reference; only the differential tester starts it:
    /// the suite's tests were not validated against it).
    OXenstored,
}

impl Kind {
    /// From `XS_E2E_DAEMON` (`xs-host` when unset).
    pub fn from_env() -> Kind {
        match std::env::var("XS_E2E_DAEMON").as_deref() {
            Err(_) | Ok("") | Ok("xs-host") => Kind::XsHost,
            Ok("cxenstored") => Kind::CXenstored,
            Ok(other) => panic!("XS_E2E_DAEMON={other:?}: expected xs-host or cxenstored"),
        }
    }

    /// The name `start-anchor.sh` and the differential tester's options use.
    pub fn name(self) -> &'static str {
        match self {
            Kind::XsHost => "xs-host",
            Kind::CXenstored => "cxenstored",
            Kind::OXenstored => "oxenstored",
        }
    }

    /// The kind named `name` ([`Kind::name`]).
    pub fn from_name(name: &str) -> Option<Kind> {
        [Kind::XsHost, Kind::CXenstored, Kind::OXenstored]
            .into_iter()
            .find(|k| k.name() == name)
    }

    /// The reference daemon's binary (`None` for xs-host).
    fn reference_binary(self) -> Option<&'static str> {
        match self {
            Kind::XsHost => None,
            Kind::CXenstored => Some("/usr/lib/xen-4.17/bin/xenstored"),
            Kind::OXenstored => Some("/usr/lib/xen-4.17/bin/oxenstored"),
        }
    }
}

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The target directory this test (or harness binary) was built into.
pub(crate) fn own_target_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        let d = PathBuf::from(d);
        return Some(if d.is_absolute() {
            d
        } else {
            workspace_root().join(d)
        });
    }
    // A test is `<target>/<profile>/deps/<name>`, a binary (xs-difftest)
    // `<target>/<profile>/<name>`.
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent()?;
    }
    Some(dir.parent()?.to_path_buf())
}

/// The xs-host binary, built on first use.
pub fn xs_host_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let bin = BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("XS_HOST_BIN") {
            let p = PathBuf::from(p);
            return if p.is_file() {
                Ok(p)
            } else {
                Err(format!("XS_HOST_BIN={} is not a file", p.display()))
            };
        }
        let target = own_target_dir().ok_or("cannot tell the target directory")?;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(&cargo)
            .args(["build", "--release", "-p", "xs-host"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", Path::new(&cargo).display()))?;
        if !out.status.success() {
            return Err(format!(
                "`cargo build --release -p xs-host` failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let p = target.join("release").join("xs-host");
        if p.is_file() {
            Ok(p)
        } else {
            Err(format!("built xs-host but {} is missing", p.display()))
        }
    });
    match bin {
        Ok(p) => p.clone(),
        Err(e) => panic!("no xs-host binary: {e}"),
    }
}

/// The reference daemons' scripts (`shared/anchors`).
fn anchors_dir() -> Result<PathBuf, Skip> {
    let candidates = [
        std::env::var_os("XS_E2E_ANCHORS").map(PathBuf::from),
        Some(workspace_root().join("../shared/anchors")),
        Some(PathBuf::from("/work/shared/anchors")),
    ];
    for c in candidates.into_iter().flatten() {
        if c.join("start-anchor.sh").is_file() {
            return Ok(c);
        }
    }
    Err(Skip(
        "a reference daemon was asked for but shared/anchors/start-anchor.sh was not found \
         (set XS_E2E_ANCHORS)"
            .into(),
    ))
}

/// A fresh private directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `/tmp/xs-e2e-<pid>-<n>` (short: socket paths must fit in 108 bytes).
    pub fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("xs-e2e-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        TempDir(p)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("XS_E2E_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// What a client command did.
#[derive(Debug)]
pub struct Output {
    /// The command line, for messages.
    pub cmdline: String,
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Asserts exit status 0 and returns the standard output.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert!(
            self.status.success(),
            "`{}` failed ({}):\nstdout: {}\nstderr: {}",
            self.cmdline,
            self.status,
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// The exit code (`None` if killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Runs `cmd` with its output captured; kills it and panics after `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let cmdline = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmdline}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(o)) => Output {
            cmdline,
            status: o.status,
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        },
        Ok(Err(e)) => panic!("waiting for {cmdline}: {e}"),
        Err(_) => {
            signal(pid, SIGKILL);
            panic!("{cmdline} did not finish within {timeout:?}");
        }
    }
}

/// A running daemon on a fresh socket.
#[derive(Debug)]
pub struct Daemon {
    kind: Kind,
    dir: TempDir,
    socket: PathBuf,
    domain_dir: Option<PathBuf>,
    pid: u32,
    /// xs-host is our child; C xenstored is started (detached) by the anchor script.
    child: Option<Child>,
    anchors: Option<PathBuf>,
    stopped: bool,
    /// The xs-host child exited and `pid` (not our child) serves in its place
    /// ([`Daemon::replaced_by`]).
    replaced: bool,
}

impl Daemon {
    /// Starts the daemon selected by `XS_E2E_DAEMON`.
    pub fn start() -> Result<Daemon, Skip> {
        Daemon::start_with(&[])
    }

    /// Same, with extra xs-host options (C xenstored is started with the anchors'
    /// defaults).
    pub fn start_with(extra: &[&str]) -> Result<Daemon, Skip> {
        Daemon::start_with_args(extra, &[])
    }

    /// Same, with extra options for each daemon (`cxs_extra` goes to C xenstored through
    /// `ANCHOR_CXS_ARGS`).
    pub fn start_with_args(xs_host_extra: &[&str], cxs_extra: &[&str]) -> Result<Daemon, Skip> {
        Daemon::start_in(TempDir::new(), xs_host_extra, cxs_extra)
    }

    /// Same, in `dir` (the socket is `dir/sock`), where the test may have put files first.
    pub fn start_in(
        dir: TempDir,
        xs_host_extra: &[&str],
        cxs_extra: &[&str],
    ) -> Result<Daemon, Skip> {
        Daemon::start_kind(Kind::from_env(), dir, xs_host_extra, cxs_extra)
    }

    /// Starts a daemon of `kind` in `dir`: xs-host with `xs_host_extra`, a reference daemon
    /// with `reference_extra` (`ANCHOR_CXS_ARGS` or `ANCHOR_OXS_ARGS`).
    pub fn start_kind(
        kind: Kind,
        dir: TempDir,
        xs_host_extra: &[&str],
        reference_extra: &[&str],
    ) -> Result<Daemon, Skip> {
        match kind {
            Kind::XsHost => Ok(Daemon::start_xs_host(dir, xs_host_extra, None)),
            Kind::CXenstored | Kind::OXenstored => {
                Daemon::start_reference(kind, dir, reference_extra)
            }
        }
    }

    /// xs-host with extra options, started with an open-file limit of `nofile` (soft and
    /// hard, so that it cannot raise it).
    pub fn start_xs_host_with_nofile(extra: &[&str], nofile: u64) -> Daemon {
        Daemon::start_xs_host(TempDir::new(), extra, Some(nofile))
    }

    fn start_xs_host(dir: TempDir, extra: &[&str], nofile: Option<u64>) -> Daemon {
        let bin = xs_host_bin();
        let socket = dir.path().join("sock");
        let domain_dir = dir.path().join("domains");
        let create = |name: &str| {
            fs::File::create(dir.path().join(name))
                .unwrap_or_else(|e| panic!("creating the daemon's {name}: {e}"))
        };
        let mut command = Command::new(&bin);
        if let Some(n) = nofile {
            crate::sys::limit_nofile(&mut command, n);
        }
        let child = command
            .arg("-s")
            .arg(&socket)
            .arg("--domain-sockets")
            .arg(&domain_dir)
            .arg("-N")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(create("daemon.stdout"))
            .stderr(create("daemon.log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut d = Daemon {
            kind: Kind::XsHost,
            pid: child.id(),
            dir,
            socket,
            domain_dir: Some(domain_dir),
            child: Some(child),
            anchors: None,
            stopped: false,
            replaced: false,
        };
        d.wait_ready();
        d
    }

    fn start_reference(kind: Kind, dir: TempDir, extra: &[&str]) -> Result<Daemon, Skip> {
        let anchors = anchors_dir()?;
        let xenstored = Path::new(kind.reference_binary().unwrap_or_default());
        if !xenstored.is_file() {
            return Err(Skip(format!(
                "{} missing (Debian package xen-utils-4.17)",
                xenstored.display()
            )));
        }
        tool("xenstore-exists")?; // start-anchor.sh probes with it
        let socket = dir.path().join("sock");
        let out = run_with_timeout(
            {
                let mut c = Command::new(anchors.join("start-anchor.sh"));
                let args_var = match kind {
                    Kind::OXenstored => "ANCHOR_OXS_ARGS",
                    _ => "ANCHOR_CXS_ARGS",
                };
                c.arg(kind.name())
                    .arg(&socket)
                    .env(args_var, extra.join(" "));
                c
            },
            Duration::from_secs(60),
        );
        if !out.status.success() {
            return Err(Skip(format!(
                "{} did not start ({}): {}{}",
                kind.name(),
                out.status,
                out.stdout,
                out.stderr
            )));
        }
        let pidfile = PathBuf::from(format!("{}.pid", socket.display()));
        let pid: u32 = fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid in {}", pidfile.display()));
        let mut d = Daemon {
            kind,
            dir,
            socket,
            domain_dir: None,
            pid,
            child: None,
            anchors: Some(anchors),
            stopped: false,
            replaced: false,
        };
        d.wait_ready();
        Ok(d)
    }

    /// Waits until the daemon answers `READ /` (10 s at most).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut w) = Wire::connect(&self.socket)
                && w.read("/").is_ok()
            {
                return;
            }
            if let Some(status) = self.exit_status() {
                panic!(
                    "{:?} exited during startup ({status}); log:\n{}",
                    self.kind,
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{:?} did not answer on {} within 10 s; log:\n{}",
                    self.kind,
                    self.socket.display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The daemon's log: its standard error, then (xs-host) its standard output if any.
    pub fn log(&self) -> String {
        let mut s = self.stderr();
        if self.kind == Kind::XsHost {
            let out = read_or_empty(&self.dir.path().join("daemon.stdout"));
            if !out.is_empty() {
                s.push_str("--- stdout:\n");
                s.push_str(&out);
            }
        }
        s
    }

    /// What the daemon wrote to its standard error (C xenstored: its log file).
    pub fn stderr(&self) -> String {
        read_or_empty(&match self.kind {
            Kind::XsHost => self.dir.path().join("daemon.log"),
            Kind::CXenstored | Kind::OXenstored => {
                PathBuf::from(format!("{}.d/daemon.log", self.socket.display()))
            }
        })
    }

    /// Which daemon this is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The main (dom0) socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The temp directory the daemon's socket lives in (tests may put files there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The xs-host child has exited and `pid`, not our child (a live update's guardian
    /// started it), serves in its place: reaps the child and returns how it ended; from now
    /// on `pid` is the daemon, stopped (or killed, if the test fails) in its turn.
    pub fn replaced_by(&mut self, pid: u32) -> Option<ExitStatus> {
        let status = self.child.take().and_then(|mut c| c.wait().ok());
        self.pid = pid;
        self.replaced = true;
        status
    }

    /// Whether the process is still alive (not a zombie).
    pub fn alive(&mut self) -> bool {
        if self.child.is_some() {
            return self.exit_status().is_none();
        }
        match fs::read_to_string(format!("/proc/{}/status", self.pid)) {
            Ok(s) => !s
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z')),
            Err(_) => false,
        }
    }

    /// Resident set size in KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> u64 {
        let s = fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_else(|e| panic!("/proc/{}/status: {e}", self.pid));
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{}/status", self.pid))
    }

    /// A new dom0 connection.
    pub fn connect(&self) -> Wire {
        Wire::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.socket.display()))
    }

    /// `program` with `XENSTORED_PATH` pointing at this daemon.
    pub fn command(&self, program: &Path) -> Command {
        self.command_at(program, &self.socket)
    }

    /// `program` with `XENSTORED_PATH=socket`.
    pub fn command_at(&self, program: &Path, socket: &Path) -> Command {
        let mut c = Command::new(program);
        c.env("XENSTORED_PATH", socket)
            .env_remove("XENSTORED_RUNDIR")
            .env_remove("XENSTORE_DOMAIN_INTERFACE");
        c
    }

    /// Runs `program args...` against this daemon (20 s at most).
    pub fn run<S: AsRef<OsStr>>(&self, program: &Path, args: &[S]) -> Output {
        let mut c = self.command(program);
        c.args(args);
        run_with_timeout(c, Duration::from_secs(20))
    }

    /// The per-domain socket of `domid` (xs-host only).
    pub fn domain_socket(&self, domid: u32) -> Option<PathBuf> {
        self.domain_dir.as_ref().map(|d| d.join(domid.to_string()))
    }

    /// Introduces `domid` (as dom0) and returns a connection acting as that domain: its
    /// per-domain socket on xs-host, its ring page on C xenstored (see [`crate::ring`]).
    /// oxenstored has no guests here: under the shim its event channels never fire, and it
    /// reads a domain's ring only when that domain's channel did.
    pub fn guest(&self, domid: u32) -> Result<Box<dyn Client>, Skip> {
        match self.kind {
            Kind::XsHost => {
                let mut dom0 = self.connect();
                let reply = dom0
                    .introduce(domid)
                    .unwrap_or_else(|e| panic!("INTRODUCE {domid} failed: {e}"));
                assert_eq!(reply, b"OK\0", "reply to INTRODUCE {domid}");
                let path = self
                    .domain_socket(domid)
                    .unwrap_or_else(|| panic!("xs-host started without --domain-sockets"));
                assert!(
                    path.exists(),
                    "after INTRODUCE {domid}, {} does not exist",
                    path.display()
                );
                let w = Wire::connect(&path)
                    .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
                Ok(Box::new(w))
            }
            Kind::CXenstored => Ok(Box::new(RingGuest::introduce(
                self.pid,
                &self.socket,
                domid,
            )?)),
            Kind::OXenstored => Err(Skip(
                "oxenstored under the anchors' shim serves no guest: it reads a ring only \
                 after that domain's event channel fired, and the shim's never fire"
                    .into(),
            )),
        }
    }

    /// Stops the daemon: SIGTERM, and for xs-host asserts that it exits with status 0
    /// within 10 s.
    pub fn stop(mut self) {
        self.stop_inner(SIGTERM);
    }

    /// Stops the daemon as [`Daemon::stop`] does, with `sig` instead of SIGTERM for
    /// xs-host, and keeps its directory so that the test can look at what it left behind.
    pub fn stop_with_signal(&mut self, sig: i32) {
        assert!(!self.stopped, "daemon already stopped");
        self.stop_inner(sig);
    }

    fn stop_inner(&mut self, sig: i32) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if let Some(mut child) = self.child.take() {
            signal(self.pid, sig);
            let deadline = Instant::now() + Duration::from_secs(10);
            let status = loop {
                match child.try_wait() {
                    Ok(Some(s)) => break Some(s),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    _ => break None,
                }
            };
            match status {
                Some(s) if s.success() => {}
                Some(s) => panic!(
                    "xs-host exited with {s} on signal {sig} (expected 0); log:\n{}",
                    self.log()
                ),
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "xs-host did not exit within 10 s of signal {sig}; log:\n{}",
                        self.log()
                    );
                }
            }
        } else if self.replaced {
            signal(self.pid, sig);
            let deadline = Instant::now() + Duration::from_secs(10);
            while pid_alive(self.pid) {
                if Instant::now() > deadline {
                    signal(self.pid, SIGKILL);
                    panic!(
                        "xs-host (pid {}) did not exit within 10 s of signal {sig}; log:\n{}",
                        self.pid,
                        self.log()
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        } else if let Some(anchors) = &self.anchors {
            let mut c = Command::new(anchors.join("stop-anchor.sh"));
            c.arg(&self.socket);
            let out = run_with_timeout(c, Duration::from_secs(30));
            out.ok();
            let _ = fs::remove_dir_all(format!("{}.d", self.socket.display()));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The test already failed: just make sure nothing is left running.
            self.stopped = true;
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            } else if self.replaced {
                signal(self.pid, SIGKILL);
            } else if let Some(anchors) = &self.anchors {
                let _ = Command::new(anchors.join("stop-anchor.sh"))
                    .arg(&self.socket)
                    .output();
                let _ = fs::remove_dir_all(format!("{}.d", self.socket.display()));
            }
            return;
        }
        self.stop_inner(SIGTERM);
    }
}

/// Whether process `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(s) => !s
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z')),
        Err(_) => false,
    }
}

/// A daemon that forked into the background (so not our child): stopped with SIGTERM by
/// [`Detached::stop`], killed if still running when dropped (a failed test leaves nothing).
#[derive(Debug)]
pub struct Detached {
    pid: u32,
}

impl Detached {
    /// The daemon whose pid is in `pid_file`.
    #[track_caller]
    pub fn from_pid_file(pid_file: &Path) -> Detached {
        let text = fs::read_to_string(pid_file)
            .unwrap_or_else(|e| panic!("pid file {}: {e}", pid_file.display()));
        let pid = text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no pid in {}: {text:?}", pid_file.display()));
        Detached { pid }
    }

    /// The daemon whose pid is in `pid_file`, if the file holds one: to take charge of a
    /// daemon before checking how its start went.
    pub fn try_from_pid_file(pid_file: &Path) -> Option<Detached> {
        let pid = fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
        Some(Detached { pid })
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether it still runs.
    pub fn alive(&self) -> bool {
        pid_alive(self.pid)
    }

    /// SIGTERM, then waits (10 s at most) for the process to go.
    #[track_caller]
    pub fn stop(self) {
        signal(self.pid, SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.alive() {
            assert!(
                Instant::now() < deadline,
                "daemon {} still runs 10 s after SIGTERM",
                self.pid
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        if self.alive() {
            signal(self.pid, SIGKILL);
        }
    }
}

/// Whether the run is against xs-host (`XS_E2E_DAEMON`); otherwise notes that the calling
/// test is xs-host only (it then returns, passing, before starting any daemon).
pub fn xs_host_only() -> bool {
    if Kind::from_env() == Kind::XsHost {
        return true;
    }
    note("xs-host only");
    false
}

/// The contents of `path`, or nothing if it cannot be read.
fn read_or_empty(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}
