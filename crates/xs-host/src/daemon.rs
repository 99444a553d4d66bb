//! Becoming a daemon as C xenstored does (`daemonize()` and `finish_daemonize()` in
//! `tools/xenstored/posix.c`), and telling systemd that it is ready (`sd_notify`).
//!
//! One difference: C's first parent exits at once, before the daemon has bound its socket, so
//! `launch-xenstore` polls for the pid file. Here the first parent waits on a pipe until the
//! daemon says it serves (or failed), and exits 0 only then: when the command returns, the
//! sockets accept clients and the pid file exists; a failed start exits 1, its error already
//! on stderr, which the daemon keeps until start-up is over.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::{self, PipeReader, PipeWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::process::ExitCode;

use rustix::process::{Pid, WaitOptions};

/// What [`daemonize`] returns in each process that goes on.
#[derive(Debug)]
pub(crate) enum Forked {
    /// The process that was started: exit with this once the daemon is ready or failed.
    Parent(ExitCode),
    /// The daemon: report the outcome of start-up through this.
    Daemon(Startup),
}

/// The daemon's end of the pipe its first parent waits on.
#[derive(Debug)]
pub(crate) struct Startup(PipeWriter);

const READY: u8 = b'R';
const FAILED: u8 = b'F';

impl Startup {
    /// Start-up succeeded (the sockets listen, stdio is detached): the parent exits 0.
    pub(crate) fn ready(mut self) {
        let _ = self.0.write_all(&[READY]);
    }

    /// Start-up failed and the error has been logged: the parent exits 1.
    pub(crate) fn failed(mut self) {
        let _ = self.0.write_all(&[FAILED]);
    }
}

/// Whether this process runs more than one thread (`/proc/self/task` lists each).
fn threads() -> Option<usize> {
    std::fs::read_dir("/proc/self/task")
        .ok()
        .map(Iterator::count)
}

/// `fork(2)`.
fn fork() -> io::Result<Option<Pid>> {
    if threads().is_some_and(|n| n > 1) {
        return Err(io::Error::other(
            "cannot fork: more than one thread is running",
        ));
    }
    // SAFETY: fork() is unsound when other threads exist: the child gets only the calling
    // thread, and locks other threads held (the allocator's, stdio's) stay locked forever.
    // Here it runs before xs-host starts any thread (main has only parsed the options and
    // installed the logger, which starts none), as checked just above, so the child is a
    // whole copy of a single-threaded process and may do anything the parent could.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Pid::from_raw(pid)),
    }
}

/// Forks into the background: fork, `setsid()`, fork again (so that the daemon, not being a
/// session leader, can never acquire a controlling terminal), `chdir("/")`, as C's
/// `daemonize()`. C also sets `umask(0)`; xs-host keeps the caller's, since its sockets get
/// explicit modes and a umask of 0 would make the trace file world-writable. Standard input
/// and output stay until [`detach_stdio`].
///
/// Returns in the first process once the daemon has reported, and in the daemon.
pub(crate) fn daemonize() -> io::Result<Forked> {
    // Nothing buffered may be written twice.
    let _ = io::stdout().flush();
    let (reader, writer) = io::pipe()?;
    match fork()? {
        Some(child) => {
            drop(writer);
            Ok(Forked::Parent(wait_for_daemon(reader, child)))
        }
        None => {
            drop(reader);
            rustix::process::setsid()?;
            if fork()?.is_some() {
                // The session leader goes; the daemon is reparented to init.
                std::process::exit(0);
            }
            std::env::set_current_dir("/")?;
            Ok(Forked::Daemon(Startup(writer)))
        }
    }
}

/// In the first process: waits for the daemon's word, reaps the intermediate child and
/// chooses the exit status.
fn wait_for_daemon(mut reader: PipeReader, child: Pid) -> ExitCode {
    let mut word = [0u8; 1];
    let got = loop {
        match reader.read(&mut word) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break 0,
        }
    };
    let _ = rustix::process::waitpid(Some(child), WaitOptions::empty());
    match (got, word[0]) {
        (1, READY) => ExitCode::SUCCESS,
        (1, _) => ExitCode::FAILURE,
        _ => {
            eprintln!("xs-host: the daemon exited before it was ready");
            ExitCode::FAILURE
        }
    }
}

/// Points stdin, stdout and stderr at /dev/null, as C's `finish_daemonize()`, once start-up
/// succeeded: a caller that reads the daemon's output then sees its end.
pub(crate) fn detach_stdio() -> io::Result<()> {
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    rustix::stdio::dup2_stdin(&null)?;
    rustix::stdio::dup2_stdout(&null)?;
    rustix::stdio::dup2_stderr(&null)?;
    Ok(())
}

/// Sends `state` to systemd's notification socket `socket` (`$NOTIFY_SOCKET`: a path, or an
/// abstract name after `@`), as `sd_notify()` does.
pub(crate) fn notify(socket: &OsStr, state: &str) -> io::Result<()> {
    let bytes = socket.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        None if bytes.first() == Some(&b'/') => SocketAddr::from_pathname(socket)?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither a path nor an abstract name",
            ));
        }
    };
    let s = UnixDatagram::unbound()?;
    s.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

/// Tells systemd (`Type=notify` in Xen's `xenstored.service`) that the store is ready, if it
/// asked (`$NOTIFY_SOCKET`), as C's `late_init()` does with `sd_notify(1, "READY=1")`; with
/// the daemon's pid when it forked, since the unit's main process (`launch-xenstore`) exits.
/// Then unsets the variable, as `sd_notify`'s first argument asks, keeping the socket for
/// live update ([`notify_socket`]).
pub(crate) fn notify_ready(forked: bool) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let _ = NOTIFY_SOCKET.set(socket.clone());
    let state = if forked {
        format!("READY=1\nMAINPID={}", std::process::id())
    } else {
        "READY=1".to_owned()
    };
    if let Err(e) = notify(&socket, &state) {
        log::warn!("cannot notify systemd at {}: {e}", socket.to_string_lossy());
    }
    // SAFETY: the environment may only be changed while no other thread can read it; xs-host
    // never starts a second thread (its event loop runs on the main thread, see server.rs).
    unsafe { std::env::remove_var("NOTIFY_SOCKET") };
}

/// systemd's notification socket, once `notify_ready` took it from the environment (or a
/// live update's record handed it over).
static NOTIFY_SOCKET: std::sync::OnceLock<std::ffi::OsString> = std::sync::OnceLock::new();

/// The notification socket systemd gave the daemon, if any: a live update tells systemd the
/// daemon's main pid through it as the guardian comes and goes (`live_update::guardian`).
pub(crate) fn notify_socket() -> Option<&'static OsStr> {
    NOTIFY_SOCKET.get().map(std::ffi::OsString::as_os_str)
}

/// The new process of a live update: the socket the old one had.
pub(crate) fn set_notify_socket(socket: std::ffi::OsString) {
    let _ = NOTIFY_SOCKET.set(socket);
}

/// Tells systemd, if it supervises the daemon, that its main process is now `pid`.
pub(crate) fn notify_main_pid(pid: u32) {
    if let Some(socket) = notify_socket()
        && let Err(e) = notify(socket, &format!("MAINPID={pid}"))
    {
        log::warn!("cannot notify systemd at {}: {e}", socket.to_string_lossy());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_a_path_and_an_abstract_socket() {
        let dir = std::env::temp_dir().join(format!("xs-host-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        notify(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("xs-host-notify-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        notify(OsStr::new(&format!("@{name}")), "READY=1\nMAINPID=5").unwrap();
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nMAINPID=5");

        assert!(notify(OsStr::new("relative"), "READY=1").is_err());
        assert!(notify(dir.join("nobody").as_os_str(), "READY=1").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
