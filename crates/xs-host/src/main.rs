//! `xs-host`: the XenStore daemon for a Linux dom0, serving [`xs_core`] on Unix sockets so
//! that Xen's own client tools (libxenstore, `xenstore-*`, `test-xenstore`) work unchanged
//! with `XENSTORED_PATH` pointing at it. See the README for the options and the trace
//! format.

mod cli;
mod daemon;
mod host;
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

use xs_core::protocol::{Host, Limits};
use xs_core::{DomId, StoreConfig};
use xs_serve::{BootPort, BootRing, Bootstrap, Dispatcher, ServeConfig, Services as _};

use crate::cli::{Command, Options};
use crate::daemon::{Forked, Startup};
use crate::host::HostCtx;
use crate::server::{Server, Sockets, Xs};
use crate::trace::TraceFile;
use crate::xen::HostServices;

fn main() -> ExitCode {
    let mut options = match cli::parse(std::env::args_os().skip(1)) {
        Ok(Command::Run(o)) => o,
        Ok(Command::Help) => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("xs-host: {e}\nTry 'xs-host --help' for the options.");
            return ExitCode::from(2);
        }
    };
    logger::init(options.verbose);
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
    match run(&options, socket, &mut startup) {
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
fn run(options: &Options, socket: MainSocket, startup: &mut Option<Startup>) -> io::Result<()> {
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
    server.run()
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
