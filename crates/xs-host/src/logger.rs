//! The `log` backend, logging where C xenstored does.
//!
//! - In the foreground (`-N`): stderr, one line per record, `xs-host: LEVEL: message`.
//! - Once forked into the background: syslog, facility `daemon`, ident `xenstored`, as C's
//!   `openlog("xenstored", 0, LOG_DAEMON)` in `early_init()` (posix.c), so that whatever
//!   filters or greps an administrator has for Xen's daemon keep working. Until start-up is
//!   over (stdio goes to /dev/null), warnings and errors also go to stderr, so that the caller
//!   sees why a start failed (C's `barf()` writes both too).
//!
//! C xenstored has no separate log file: its `-T` trace file is the file it "logs" to;
//! xs-host's is described in the README. Launch scripts ask for one with `XENSTORED_TRACE`
//! (`-T /var/log/xen/xenstored-trace.log`), which works unchanged.
//!
//! Syslog is written by hand, one RFC 3164 datagram per record to `/dev/log`
//! (`<PRI>xenstored[pid]: message`), rather than with the `syslog` crate: that is a dozen
//! lines, and the crate would bring a formatting and a hostname dependency for a header the
//! local syslog daemon (journald, rsyslog) fills in itself.

use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The syslog socket of Linux's C library.
const DEV_LOG: &str = "/dev/log";
/// The ident C xenstored gives `openlog()`.
pub(crate) const IDENT: &str = "xenstored";
/// `LOG_DAEMON`.
const FACILITY_DAEMON: u8 = 3;

/// Records that go to stderr: at most this level (a `LevelFilter` as `usize`).
static STDERR_LEVEL: AtomicUsize = AtomicUsize::new(LevelFilter::Trace as usize);
/// The syslog connection once daemonized.
static SYSLOG: Mutex<Option<Syslog>> = Mutex::new(None);

struct Logger;

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = record.level();
        if level as usize <= STDERR_LEVEL.load(Ordering::Relaxed) {
            // One write per line, so that lines of concurrent writers do not interleave.
            let line = format!("xs-host: {}: {}\n", level_name(level), record.args());
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
        let mut syslog = SYSLOG.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = syslog.as_mut() {
            s.send(severity(level), &record.args().to_string());
        }
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warning",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

/// The syslog severity of a level (`LOG_ERR`, `LOG_WARNING`, `LOG_INFO`, `LOG_DEBUG`).
fn severity(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// The level for `verbose` repetitions of `-V`: info by default.
pub(crate) fn level_for(verbose: u8) -> LevelFilter {
    match verbose {
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// Installs the logger, on stderr (once; later calls only change the level).
pub(crate) fn init(verbose: u8) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level_for(verbose));
    STDERR_LEVEL.store(level_for(verbose) as usize, Ordering::Relaxed);
}

/// In the forked daemon: logs to syslog from now on, and only warnings and errors to stderr
/// (until [`stderr_off`]).
pub(crate) fn to_syslog() {
    let syslog = Syslog::new(Path::new(DEV_LOG), IDENT, std::process::id());
    *SYSLOG.lock().unwrap_or_else(PoisonError::into_inner) = Some(syslog);
    STDERR_LEVEL.fetch_min(LevelFilter::Warn as usize, Ordering::Relaxed);
}

/// Start-up is over and stderr is /dev/null: stop writing there.
pub(crate) fn stderr_off() {
    STDERR_LEVEL.store(LevelFilter::Off as usize, Ordering::Relaxed);
}

/// A syslog connection: datagrams to a local socket, reconnected when the syslog daemon
/// restarts, dropped silently when none listens (as the C library's `syslog()` does).
#[derive(Debug)]
pub(crate) struct Syslog {
    path: PathBuf,
    ident: String,
    pid: u32,
    socket: Option<UnixDatagram>,
}

impl Syslog {
    pub(crate) fn new(path: &Path, ident: &str, pid: u32) -> Syslog {
        Syslog {
            path: path.to_owned(),
            ident: ident.to_owned(),
            pid,
            socket: None,
        }
    }

    fn connect(&self) -> io::Result<UnixDatagram> {
        let s = UnixDatagram::unbound()?;
        s.connect(&self.path)?;
        Ok(s)
    }

    /// Sends `message` at `severity`; a second try on a fresh connection if the first fails.
    pub(crate) fn send(&mut self, severity: u8, message: &str) {
        let datagram = frame(FACILITY_DAEMON, severity, &self.ident, self.pid, message);
        for _ in 0..2 {
            let socket = match self.socket.take() {
                Some(s) => s,
                None => match self.connect() {
                    Ok(s) => s,
                    Err(_) => return,
                },
            };
            if socket.send(datagram.as_bytes()).is_ok() {
                self.socket = Some(socket);
                return;
            }
        }
    }
}

/// An RFC 3164 message as the C library sends it to the local daemon, without the timestamp
/// the daemon adds: `<PRI>ident[pid]: message`.
pub(crate) fn frame(facility: u8, severity: u8, ident: &str, pid: u32, message: &str) -> String {
    let pri = u32::from(facility) * 8 + u32::from(severity);
    format!("<{pri}>{ident}[{pid}]: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(level_for(0), LevelFilter::Info);
        assert_eq!(level_for(1), LevelFilter::Debug);
        assert_eq!(level_for(2), LevelFilter::Trace);
        assert_eq!(level_for(9), LevelFilter::Trace);
    }

    #[test]
    fn framing() {
        // daemon.warning = 3 * 8 + 4.
        assert_eq!(
            frame(
                FACILITY_DAEMON,
                severity(Level::Warn),
                "xenstored",
                42,
                "hi"
            ),
            "<28>xenstored[42]: hi"
        );
        assert_eq!(severity(Level::Error), 3);
        assert_eq!(severity(Level::Info), 6);
        assert_eq!(severity(Level::Trace), 7);
    }

    #[test]
    fn sends_and_reconnects() {
        let dir = std::env::temp_dir().join(format!("xs-host-syslog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let mut log = Syslog::new(&path, IDENT, 7);
        // Nobody listens: dropped without error.
        log.send(6, "lost");
        let server = UnixDatagram::bind(&path).unwrap();
        log.send(6, "first");
        let mut buf = [0u8; 256];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"<30>xenstored[7]: first");
        // The syslog daemon restarts: a new socket at the same path.
        drop(server);
        std::fs::remove_file(&path).unwrap();
        let server = UnixDatagram::bind(&path).unwrap();
        log.send(3, "second");
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"<27>xenstored[7]: second");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
