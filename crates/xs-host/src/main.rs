//! `xs-host`: the XenStore daemon for a Linux dom0, serving [`xs_core`] on Unix sockets so
//! that Xen's own client tools (libxenstore, `xenstore-*`, `test-xenstore`) work unchanged
//! with `XENSTORED_PATH` pointing at it. See the README for the options and the trace
//! format.

mod cli;
mod daemon;
mod host;
mod live_update;
mod logger;
mod server;
mod trace;
mod xen;

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use xs_core::protocol::{Access, Host, Limits};
use xs_core::state::{self, Transport};
use xs_core::{DomId, StoreConfig};
use xs_serve::{BootPort, BootRing, Bootstrap, Dispatcher, ServeConfig, Services as _};

use crate::cli::{Command, Options};
use crate::daemon::{Forked, Startup};
use crate::host::HostCtx;
use crate::live_update::{Hidden, Record, SocketKind};
use crate::server::{Adopted, Restart, Server, Sockets, Xs};
use crate::trace::TraceFile;
use crate::xen::HostServices;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let (args, hidden) = match live_update::take_hidden(args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("xs-host: {e}");
            return ExitCode::from(2);
        }
    };
    if hidden.probe {
        println!("{}", live_update::PROBE_ANSWER);
        return ExitCode::SUCCESS;
    }
    if hidden.guardian.is_some() {
        return live_update::guardian::watch(&hidden, args);
    }
    let mut options = match cli::parse(args.clone()) {
        Ok(Command::Run(o)) => o,
        Ok(Command::Help) => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("xs-host: {e}\nTry 'xs-host --help' for the options.");
            // A live update's command line (`-c`) this binary does not take: the old one
            // takes its state back.
            if let (Some((state_fd, record_fd)), Some(exe), None) =
                (hidden.state, hidden.fallback, &hidden.failed)
            {
                let old_args = read_fd(record_fd)
                    .ok()
                    .and_then(|t| Record::decode(&String::from_utf8_lossy(&t)).ok())
                    .map_or(args, |r| r.args);
                let e = live_update::go_back(
                    exe,
                    (state_fd, record_fd),
                    hidden.guardian_pipe,
                    old_args,
                    &format!("usage: {e}"),
                );
                eprintln!("xs-host: live-update: cannot go back to the old binary: {e}");
            }
            return ExitCode::from(2);
        }
    };
    logger::init(options.verbose);
    if hidden.state.is_some() {
        return restarted(options, args, hidden);
    }
    let cwd = std::env::current_dir().ok();
    // Before the daemon moves to `/`.
    let socket = match main_socket(&mut options) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut startup = None;
    if options.fork {
        match daemon::daemonize() {
            Ok(Forked::Parent(code)) => return code,
            Ok(Forked::Daemon(s)) => startup = Some(s),
            Err(e) => {
                log::error!("cannot become a daemon: {e}");
                return ExitCode::FAILURE;
            }
        }
        logger::to_syslog();
    }
    for what in &options.ignored {
        log::warn!("ignoring {what}: not supported by xs-host");
    }
    let restart = Restart {
        args,
        cwd,
        daemon: options.fork,
        takeover_timeout: options.live_update_timeout,
    };
    match run(&options, socket, &mut startup, restart) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            if let Some(s) = startup {
                s.failed();
            }
            ExitCode::FAILURE
        }
    }
}

/// The main socket, and the path options made absolute against the working directory.
fn main_socket(options: &mut Options) -> io::Result<MainSocket> {
    let cwd = std::env::current_dir()
        .map_err(|e| io::Error::new(e.kind(), format!("the working directory: {e}")))?;
    options.make_paths_absolute(&cwd);
    Ok(match &options.socket {
        Some(s) => MainSocket {
            path: s.clone(),
            private_dir: false,
        },
        None => {
            let uid = rustix::process::getuid().as_raw();
            let d = cli::default_socket(uid, |name| std::env::var_os(name));
            MainSocket {
                path: cwd.join(d.path),
                private_dir: d.private_dir,
            }
        }
    })
}

/// Where the main socket goes.
struct MainSocket {
    path: PathBuf,
    /// Its directory is the user's own (mode 0700, checked).
    private_dir: bool,
}

/// The store's configuration from the options, with a watch-table hash key from the
/// operating system's entropy (guests choose the paths it hashes).
fn store_config(options: &Options) -> io::Result<StoreConfig> {
    let mut key = [0u8; 16];
    getrandom::fill(&mut key)
        .map_err(|e| io::Error::other(format!("no entropy for the hash key: {e}")))?;
    let (a, b) = key.split_at(8);
    let word = |s: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(s);
        u64::from_ne_bytes(w)
    };
    // `-K`: C gives the nodes to its privileged domain, `--priv-domid` (the last one
    // given) or else the control domain.
    let heir = options.privileged.last().copied().unwrap_or(DomId::DOM0);
    let mut config = StoreConfig {
        domain_nodes: options.domain_nodes,
        orphans_to: options.keep_orphans.then_some(heir),
        privileged: options.privileged.clone(),
        ..StoreConfig::new([word(a), word(b)])
    };
    for &(kind, value) in &options.quotas {
        config.quotas.set(kind, value);
    }
    if let Some(soft) = options.memory_soft {
        config.memory_soft = soft;
    }
    // The master domain (whose kernel ring is served from the start) is privileged, as
    // dom0 is.
    if let Some(m) = options.master_domid
        && !config.privileged.contains(&m)
    {
        config.privileged.push(m);
    }
    Ok(config)
}

/// Creates `dir` (mode 0700) if missing; a directory that exists must be ours and not
/// writable by others (it is in `/tmp` for users without `$XDG_RUNTIME_DIR`).
fn private_dir(dir: &Path, uid: u32) -> io::Result<()> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
    }
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} must be a directory owned by uid {uid} and not writable by others",
                dir.display()
            ),
        ));
    }
    Ok(())
}

fn ensure_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() && !p.exists() => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(p)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display()))),
        _ => Ok(()),
    }
}

/// Lets the daemon hold as many connections as the hard limit allows (the server keeps a
/// reserve of them for dom0's sockets: `server::FdBudget`).
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            log::debug!("cannot raise the open file limit: {e}");
        }
    }
}

/// Removes the pid file when dropped.
struct PidFile(PathBuf);

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Sets up and serves; `startup` is the forked daemon's report to its first parent, sent (and
/// taken) once the daemon serves.
fn run(
    options: &Options,
    socket: MainSocket,
    startup: &mut Option<Startup>,
    restart: Restart,
) -> io::Result<()> {
    let MainSocket {
        path: socket,
        private_dir: private,
    } = socket;
    if private {
        if let Some(dir) = socket.parent() {
            private_dir(dir, rustix::process::getuid().as_raw())?;
        }
    } else {
        // C xenstored makes its run directory with mode 0755 (`early_init()`).
        ensure_parent(&socket)?;
    }
    let read_only = cli::ro_path(&socket, &options.socket_ro);
    if let Some(ro) = &read_only {
        ensure_parent(ro)?;
    }
    if let Some(dir) = &options.domain_sockets {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    }
    let trace = match &options.trace_file {
        Some(p) => Some(
            TraceFile::open(p)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?,
        ),
        None => None,
    };
    let mut host = HostCtx::new(trace);
    if let Some(io) = options.trace_io {
        // As `CONTROL log +io|-io` would.
        host.set_log(if io { b"+io" } else { b"-io" })
            .map_err(|e| io::Error::other(format!("--trace-control: {e}")))?;
    }
    raise_fd_limit();
    let sockets = Sockets {
        main: socket.clone(),
        read_only: read_only.clone(),
        domain_dir: options.domain_sockets.clone(),
        domain_connections: usize::try_from(options.domain_connections).unwrap_or(usize::MAX),
    };
    let xs = start_store(options, host)?;
    let mut server = Server::new(xs, &sockets)?;
    server.set_restart(restart);
    // A restored store's domains get their sockets back.
    server.serve_introduced_domains();
    // Written once the sockets listen, by the daemon itself (its final pid): Xen's
    // `launch-xenstore` takes the file's existence for readiness.
    let _pid_file = match &options.pid_file {
        Some(p) => {
            if let Err(e) = fs::write(p, format!("{}\n", std::process::id())) {
                // Dropping the server removes its socket files.
                drop(server);
                return Err(io::Error::new(e.kind(), format!("{}: {e}", p.display())));
            }
            Some(PidFile(p.clone()))
        }
        None => None,
    };
    started(options, &socket, read_only.as_deref());
    if options.output_pid {
        // C 4.17's `-P`: the pid on stdout once the daemon is set up.
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{}", std::process::id());
        let _ = out.flush();
    }
    daemon::notify_ready(startup.is_some());
    if let Some(s) = startup.take() {
        daemon::detach_stdio().map_err(|e| io::Error::new(e.kind(), format!("/dev/null: {e}")))?;
        logger::stderr_off();
        s.ready();
    }
    server.run()?;
    save_for_next_start(options, &mut server);
    Ok(())
}

/// `--state-file`: a daemon that stops cleanly leaves its state for the next start.
fn save_for_next_start(options: &Options, server: &mut Server) {
    let Some(path) = &options.state_file else {
        return;
    };
    match server.save_state_file(path) {
        Ok(stats) => log::info!(
            "state saved to {} for the next start ({} records, {} bytes)",
            path.display(),
            stats.records,
            stats.bytes
        ),
        Err(e) => log::error!("--state-file {}: {e}", path.display()),
    }
}

/// Says where the daemon listens: on stderr in the foreground, with the line to paste into a
/// shell; in the log once forked.
fn started(options: &Options, socket: &Path, read_only: Option<&Path>) {
    let ro_text = read_only.map_or_else(
        || "no read-only socket".to_owned(),
        |r| format!("read-only: {}", r.display()),
    );
    let listening = format!("listening on {} ({ro_text})", socket.display());
    let domains = options.domain_sockets.as_ref().map(|dir| {
        format!(
            "per-domain sockets in {}/<domid> once introduced",
            dir.display()
        )
    });
    if options.fork {
        log::info!("{listening}");
        if let Some(d) = domains {
            log::info!("{d}");
        }
        return;
    }
    eprintln!("xs-host: {listening}");
    if let Some(d) = domains {
        eprintln!("xs-host: {d}");
    }
    eprintln!(
        "export XENSTORED_PATH={}",
        shell_quote(socket.as_os_str().to_owned())
    );
}

/// The store, serving dom0's kernel ring (and then every introduced guest's) on a Xen dom0,
/// or no ring at all elsewhere.
fn start_store(options: &Options, host: HostCtx) -> io::Result<Xs> {
    // The domain whose kernel ring is served from the start (C xenstored's `dom0_domid`).
    let master = options.master_domid.unwrap_or(DomId::DOM0);
    let services = if xen::is_dom0() {
        HostServices::xen(master)
            .map_err(|e| io::Error::new(e.kind(), format!("Xen's devices: {e}")))?
    } else {
        log::info!("no Xen control domain here (/proc/xen/capabilities): serving sockets only");
        HostServices::sockets_only()
    };
    let config = ServeConfig {
        store: store_config(options)?,
        limits: Limits::default(),
    };
    if let Some(file) = &options.restore {
        if services.serves_rings() {
            return Err(io::Error::other(
                "--restore: not supported while serving Xen rings (the rings' connections \
                 cannot be set up again from a state file yet)",
            ));
        }
        let bytes = fs::read(file)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", file.display())))?;
        let restored = state::restore(config.store, &bytes, |_, _| {
            (Access::default(), Limits::default())
        })
        .map_err(|e| io::Error::other(format!("--restore {}: {e}", file.display())))?;
        let mut store = restored.store;
        // Crash recovery: the clients of the process that wrote it are gone, and their
        // watches and transactions with them.
        for c in &restored.connections {
            store.disconnect(c.id);
        }
        log::info!(
            "restored from {}: {} nodes, {} domains",
            file.display(),
            store.node_count(),
            store.known_domains().count()
        );
        return Ok(Dispatcher::with_store(services, store, config.limits, host));
    }
    if let Some(path) = options.state_file.as_ref().filter(|p| p.exists()) {
        if written_since_boot(path) {
            return restore_state_file(path, options, services, config, host);
        }
        // The guests it describes died with the previous boot.
        log::warn!(
            "--state-file {}: written before this boot: not restored (removed)",
            path.display()
        );
        let _ = fs::remove_file(path);
    }
    let mut xs = Dispatcher::with_host(services, config, host)
        .map_err(|e| io::Error::other(format!("cannot create the store: {e}")))?;
    if xs.services().serves_rings() {
        // Dom0's own ring, which its kernel's xenbus (and so every in-kernel backend and
        // `/dev/xen/xenbus`) uses: C xenstored's `dom0_init`.
        let kernel = HostServices::kernel_ring()?;
        // `--event` names the port when it is not the kernel's (C's `xenbus_evtchn`).
        let port = options.event.unwrap_or(kernel.port);
        xs.bootstrap(Bootstrap {
            domid: master,
            ring: BootRing::Mapped(kernel.ring),
            port: BootPort::Remote(port),
        })
        .map_err(|e| io::Error::other(format!("serving dom0's ring (port {port}): {e}")))?;
    }
    Ok(xs)
}

/// Whether `path` was written since the machine booted (`btime` of `/proc/stat`); true
/// when that cannot be told.
fn written_since_boot(path: &Path) -> bool {
    let boot = fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|t| t.trim().parse::<i64>().ok())
    });
    match (boot, fs::metadata(path)) {
        (Some(boot), Ok(meta)) => meta.mtime() >= boot,
        _ => true,
    }
}

/// `--state-file`: the state the last clean stop left. The store, and on Xen every ring it
/// served, bound again: the old process's event channels closed with it, which left each
/// guest's port (and dom0's kernel port) unbound, waiting for a binding, as at
/// `INTRODUCE`. The rings are mapped again and served with what they had in flight. Socket
/// clients went with the old process: their connections are dropped. The file is removed
/// once restored; one that cannot be read is renamed `FILE.rejected` and the daemon does not
/// start (the next start begins afresh).
fn restore_state_file(
    path: &Path,
    options: &Options,
    mut services: HostServices,
    config: ServeConfig,
    host: HostCtx,
) -> io::Result<Xs> {
    let bytes =
        fs::read(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let mut restored = match state::restore(config.store, &bytes, |_, _| {
        (Access::default(), Limits::default())
    }) {
        Ok(r) => r,
        Err(e) => {
            let mut aside = path.as_os_str().to_owned();
            aside.push(".rejected");
            let _ = fs::rename(path, &aside);
            return Err(io::Error::other(format!(
                "--state-file {}: {e} (moved to {})",
                path.display(),
                PathBuf::from(aside).display()
            )));
        }
    };
    let master = options.master_domid.unwrap_or(DomId::DOM0);
    let kernel_port = match options.event {
        Some(p) => Some(p),
        None if services.serves_rings() => Some(HostServices::kernel_port()?),
        None => None,
    };
    let mut rings = Vec::new();
    for mut c in std::mem::take(&mut restored.connections) {
        let remote = match c.transport {
            Transport::Ring { .. } if services.serves_rings() => {
                match restored.store.introduction(c.domid) {
                    Some(i) => Some(i.evtchn),
                    None if c.domid == master => kernel_port,
                    None => None,
                }
            }
            _ => None,
        };
        let bound = remote.map(|r| (r, services.bind_interdomain(c.domid, r)));
        match (&mut c.transport, bound) {
            (Transport::Ring { port, .. }, Some((_, Ok(local)))) => {
                *port = local;
                rings.push(c);
            }
            (_, Some((r, Err(e)))) => {
                log::warn!(
                    "dom{}: binding its port {r} again failed ({e}): its ring is not served",
                    c.domid
                );
                restored.store.disconnect(c.id);
            }
            // Sockets (their clients are gone), rings without Xen.
            _ => restored.store.disconnect(c.id),
        }
    }
    restored.connections = rings;
    let (xs, _) = Dispatcher::restore(
        services,
        restored,
        config.limits,
        host,
        HostServices::map_again,
    );
    if let Err(e) = fs::remove_file(path) {
        log::warn!(
            "--state-file {}: restored, but not removed: {e}",
            path.display()
        );
    }
    log::info!(
        "restored from {} (left by the last stop): {} nodes, {} domains, {} rings served again",
        path.display(),
        xs.store().node_count(),
        xs.store().known_domains().count(),
        xs.served().count()
    );
    Ok(xs)
}

/// The new process of a live update: takes the state over from the old one (see
/// `live_update.rs`), or goes back to the old binary if it cannot.
fn restarted(mut options: Box<Options>, args: Vec<OsString>, hidden: Hidden) -> ExitCode {
    if options.fork {
        logger::to_syslog();
        logger::stderr_off();
    }
    let Some((state_fd, record_fd)) = hidden.state else {
        return ExitCode::FAILURE;
    };
    // The fallback is the old binary; the fallback itself has none.
    let fallback = hidden.fallback.filter(|_| hidden.failed.is_none());
    let old_args = std::sync::Arc::new(std::sync::Mutex::new(args.clone()));
    let guardian = hidden.guardian_pipe;
    if let Some(exe) = fallback {
        let old_args = old_args.clone();
        std::panic::set_hook(Box::new(move |info| {
            let why = format!("the new binary panicked: {info}");
            log::error!("live-update: {why}");
            let args = old_args.lock().map(|a| a.clone()).unwrap_or_default();
            let e = live_update::go_back(exe, (state_fd, record_fd), guardian, args, &why);
            log::error!("live-update: cannot go back to the old binary: {e}");
        }));
    }
    match take_over(&mut options, &args, &hidden, &old_args) {
        Ok(mut server) => {
            if fallback.is_some() {
                let _ = std::panic::take_hook();
            }
            // The state and the old binary are no longer needed.
            for fd in [Some(state_fd), Some(record_fd), hidden.fallback]
                .into_iter()
                .flatten()
            {
                // SAFETY: descriptors passed to this process for live update alone, used
                // only through the duplicates `take_over` read from.
                drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
            }
            let _pid_file = options.pid_file.as_ref().and_then(|p| {
                fs::write(p, format!("{}\n", std::process::id()))
                    .ok()
                    .map(|()| PidFile(p.clone()))
            });
            match server.run() {
                Ok(()) => {
                    save_for_next_start(&options, &mut server);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    log::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            log::error!("live-update: cannot take over: {e}");
            if let Some(exe) = fallback {
                let args = old_args.lock().map(|a| a.clone()).unwrap_or(args);
                let e = live_update::go_back(
                    exe,
                    (state_fd, record_fd),
                    guardian,
                    args,
                    &e.to_string(),
                );
                log::error!("live-update: cannot go back to the old binary: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Reads `fd` from its start without closing it (the fallback may need it again).
fn read_fd(fd: i32) -> io::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    // SAFETY: `fd` was passed to this process for live update and stays open meanwhile.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let mut file = fs::File::from(borrowed.try_clone_to_owned()?);
    file.seek(io::SeekFrom::Start(0))?;
    // Sized once: the state of a large store is tens of megabytes, which growing by
    // doubling would copy twice over.
    let size = file.metadata().map_or(0, |m| m.len());
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Restores the state and adopts the sockets.
fn take_over(
    options: &mut Options,
    args: &[OsString],
    hidden: &Hidden,
    old_args: &std::sync::Mutex<Vec<OsString>>,
) -> io::Result<Server> {
    let started = std::time::Instant::now();
    let Some((state_fd, record_fd)) = hidden.state else {
        return Err(io::Error::other("no state"));
    };
    let cwd = std::env::current_dir().ok();
    let socket = main_socket(options)?;
    if options.fork {
        std::env::set_current_dir("/")?;
    }
    let text = read_fd(record_fd)?;
    let record = Record::decode(&String::from_utf8_lossy(&text)).map_err(io::Error::other)?;
    if let Ok(mut a) = old_args.lock() {
        *a = record.args.clone();
    }
    if let Some(n) = &record.notify {
        daemon::set_notify_socket(n.clone());
    }
    // SAFETY: `state_fd` was passed to this process for live update and stays open for
    // the whole restore.
    let state = unsafe { std::os::fd::BorrowedFd::borrow_raw(state_fd) };
    let mapped = live_update::SealedMap::new(state)?;
    let copied = match mapped {
        Some(_) => Vec::new(),
        None => read_fd(state_fd)?,
    };
    let stream: &[u8] = mapped.as_deref().unwrap_or(&copied);
    let loaded = started.elapsed();
    let kinds: std::collections::HashMap<i32, &live_update::RecordClient> =
        record.clients.iter().map(|c| (c.fd, c)).collect();
    let config = store_config(options)?;
    let restored = state::restore(config, stream, |transport, _| {
        let read_only = matches!(transport, Transport::Socket { fd }
            if kinds.get(fd).is_some_and(|c| c.kind == SocketKind::ReadOnly));
        (Access { read_only }, Limits::default())
    })
    .map_err(|e| io::Error::other(e.to_string()))?;
    let read = started.elapsed();
    let services = adopted_services(options, &record, &restored)?;
    let trace_path = options.trace_file.clone().or_else(|| record.trace.clone());
    let trace = match &trace_path {
        Some(p) => TraceFile::open(p)
            .map_err(|e| log::warn!("trace file {}: {e}", p.display()))
            .ok(),
        None => None,
    };
    let mut host = HostCtx::new(trace);
    host.set_io(record.io);
    // Every ring is mapped again (the old mappings died with the old address space) and
    // served on its port, still bound.
    let (mut xs, connections) = Dispatcher::restore(
        services,
        restored,
        Limits::default(),
        host,
        HostServices::map_again,
    );
    let mut adopted = Vec::new();
    for c in connections {
        match c.transport {
            Transport::Socket { fd } => match kinds.get(&fd) {
                Some(&&r) => adopted.push(Adopted {
                    record: r,
                    conn: c.connection,
                    input: c.input,
                }),
                None => xs.disconnect(c.id),
            },
            // `Dispatcher::restore` serves (or drops) every ring connection.
            Transport::Ring { .. } => xs.disconnect(c.id),
        }
    }
    let sockets = Sockets {
        main: socket.path,
        // The listeners come from the record.
        read_only: None,
        domain_dir: options.domain_sockets.clone(),
        domain_connections: usize::try_from(options.domain_connections).unwrap_or(usize::MAX),
    };
    let mut server = Server::adopt(xs, &sockets, &record, adopted)?;
    if let Some(conn) = record.answer.and_then(|fd| server.conn_on_fd(fd)) {
        let answer = match &hidden.failed {
            None => b"OK".to_vec(),
            Some(why) => format!("Error activating new binary: {why}").into_bytes(),
        };
        server.host_mut().lu.answer_after_restart(conn, answer);
    }
    server.set_restart(Restart {
        args: args.to_vec(),
        cwd,
        daemon: options.fork,
        takeover_timeout: options.live_update_timeout,
    });
    server.set_cloexec();
    if let Some(e) = record.evtchn {
        // Taken over: the inherited event-channel descriptor (kept for the fallback) goes;
        // the services hold their duplicate, and with it every binding.
        // SAFETY: the descriptor the old process left for this one, used only through the
        // duplicate `adopted_services` made; closed once, here.
        drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(e.fd) });
    }
    if let Some(g) = hidden.guardian_pipe {
        live_update::guardian::taken(g.write);
        server.reap(g.pid);
    }
    match &hidden.failed {
        None => log::info!(
            "live-update: took over {} clients, state of {} bytes read in {:.1} ms ({} in {:.1} ms), serving after {:.1} ms",
            record.clients.len(),
            stream.len(),
            read.as_secs_f64() * 1e3,
            if mapped.is_some() { "mapped" } else { "copied" },
            loaded.as_secs_f64() * 1e3,
            started.elapsed().as_secs_f64() * 1e3
        ),
        Some(why) => {
            log::warn!("live-update: the new binary could not take over ({why}); serving on")
        }
    }
    Ok(server)
}

/// The platform services of the new process of a live update: on a Xen dom0, Xen's devices
/// with the event-channel device the old process left open (a duplicate of it: the
/// inherited descriptor itself stays open, unchanged, for the fallback to the old binary
/// until this process has taken over); sockets only where the old process served no rings.
fn adopted_services(
    options: &Options,
    record: &Record,
    restored: &state::Restored,
) -> io::Result<HostServices> {
    match (record.evtchn, xen::is_dom0()) {
        (Some(e), true) => {
            let ports = restored
                .connections
                .iter()
                .filter_map(|c| match c.transport {
                    Transport::Ring { port, .. } => Some(port),
                    Transport::Socket { .. } => None,
                });
            // SAFETY: the descriptor the old process left open for this one, as its record
            // says; open for this process's life (closed only once it has taken over).
            let inherited = unsafe { std::os::fd::BorrowedFd::borrow_raw(e.fd) };
            let evtchn = fs::File::from(inherited.try_clone_to_owned()?);
            let master = options.master_domid.unwrap_or(DomId::DOM0);
            HostServices::adopt_xen(master, evtchn, e.virq, ports)
                .map_err(|e| io::Error::new(e.kind(), format!("Xen's devices: {e}")))
        }
        // The old process served sockets only (here, or on a dom0 whose Xen devices it did
        // not find when it started): so does this one.
        (None, _) => Ok(HostServices::sockets_only()),
        (Some(_), false) => Err(io::Error::other(
            "the old process served Xen rings, but this is no Xen control domain",
        )),
    }
}

/// `path` as a shell word.
fn shell_quote(path: OsString) -> String {
    let s = path.to_string_lossy().into_owned();
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+,:@%".contains(&b))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_for_the_shell() {
        assert_eq!(
            shell_quote("/run/xs-host/socket".into()),
            "/run/xs-host/socket"
        );
        assert_eq!(shell_quote("/tmp/a b".into()), "'/tmp/a b'");
        assert_eq!(shell_quote("/tmp/it's".into()), "'/tmp/it'\\''s'");
    }

    #[test]
    fn config_from_options() {
        let options = Options {
            domain_nodes: true,
            keep_orphans: true,
            privileged: vec![xs_core::DomId(3)],
            quotas: vec![(xs_core::QuotaKind::Nodes, 5)],
            ..Options::default()
        };
        let a = store_config(&options).unwrap();
        let b = store_config(&options).unwrap();
        assert!(a.domain_nodes);
        assert_eq!(a.orphans_to, Some(xs_core::DomId(3)));
        let plain = store_config(&Options::default()).unwrap();
        assert!(!plain.domain_nodes);
        assert_eq!(plain.orphans_to, None);
        let keep = Options {
            keep_orphans: true,
            ..Options::default()
        };
        assert_eq!(
            store_config(&keep).unwrap().orphans_to,
            Some(xs_core::DomId::DOM0)
        );
        assert_eq!(a.privileged, vec![xs_core::DomId(3)]);
        assert_eq!(a.quotas.get(xs_core::QuotaKind::Nodes), 5);
        assert_ne!(a.hash_key, b.hash_key, "drawn afresh");
    }
}
