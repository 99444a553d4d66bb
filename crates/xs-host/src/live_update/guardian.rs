//! The guardian of a live update: what keeps the state when the new process dies before it
//! has taken over.
//!
//! The old process execs the new binary in place, so once the new process runs, the old one
//! is gone. A new process that fails in a way it can report (a state it rejects, a socket it
//! cannot adopt, a panic) execs the old binary back itself (see the module above). One that
//! dies (a signal, an `exit` before xs-host's code runs, an exec of something else) cannot:
//! without a guardian the state would die with it, as it does with C xenstored.
//!
//! So, just before its exec, the old process starts a guardian: the running binary again,
//! with `--live-update-guardian=R,RECORD...` (hidden), holding a copy of every descriptor
//! the update hands over (they are inheritable at that point: the state and record memfds,
//! the old binary, the sockets, the event-channel device) and the read end `R` of a pipe
//! whose only write end goes to the new process (`--live-update-guardian-pipe=W,PID`). The
//! new process writes [`TAKEN`] once it has taken over (and, when it goes back to the old
//! binary itself, that one does, passing the pipe on), then reaps the guardian. If instead
//! the pipe closes, nobody took over: the guardian execs the old binary with the same
//! state and `--live-update-failed=...`, which restores it, adopts the sockets (the
//! guardian's copies: the clients never lost them) and answers the held `-s` with the
//! reason. The daemon's pid is then the guardian's: the pid file is written again, as after
//! any start.
//!
//! Under systemd, which ends a service whose main process dies, the old process announces
//! the guardian as the main process (`MAINPID=`) just before its exec, and the guardian
//! announces its parent (the daemon's pid) again before it leaves; so the death of a new
//! process is not the service's, and a guardian that takes over is the main process.
//!
//! A new process that hangs instead (it neither takes over nor dies) is killed once
//! `--live-update-timeout` has passed (the guardian kills only its own parent, which the new
//! process is until it dies), and the same happens.
//!
//! The guardian reads nothing but its pipe and holds no other resource than the
//! descriptors; it lives for the few milliseconds of the take-over.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use super::{Hidden, fd_path, set_cloexec};

/// The byte the new process writes when it has taken over.
pub(crate) const TAKEN: u8 = b'k';

/// What the guardian answers the held `-s` with (through the old binary it starts).
pub(crate) const DIED: &str = "the new process died before it took over";

/// A guardian started by the old process: its pid and the pipe's write end, which the
/// new process inherits.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) pid: u32,
    pub(crate) write: OwnedFd,
}

impl Started {
    /// The option that hands the pipe to the new process.
    pub(crate) fn option(&self) -> OsString {
        GuardianPipe {
            write: self.write.as_raw_fd(),
            pid: self.pid,
        }
        .option()
    }

    /// The exec failed and the old process serves on: the guardian leaves. Returns its pid,
    /// to reap.
    pub(crate) fn dismiss(self) -> u32 {
        taken(self.write.into_raw_fd());
        self.pid
    }
}

/// Starts the guardian of an update from the running binary (`exe`, open), whose state is
/// in `state`/`record` and whose command line is `args` (what the guardian's fallback
/// gets). Every descriptor the update hands over must be inheritable already; the pipe's
/// write end is left close-on-exec for the caller to make inheritable after this returns
/// (the guardian must not hold it).
pub(crate) fn start(
    exe: RawFd,
    state: (RawFd, RawFd),
    args: &[OsString],
    timeout_s: u32,
) -> io::Result<Started> {
    // Both ends close-on-exec (std's pipe).
    let (read, write) = io::pipe()?;
    let (read, write) = (OwnedFd::from(read), OwnedFd::from(write));
    set_cloexec(read.as_fd(), false)?;
    let mut command = Command::new(fd_path(exe));
    // systemd's socket, if it supervises the daemon: the guardian hands the main pid back.
    match crate::daemon::notify_socket() {
        Some(socket) => command.env("NOTIFY_SOCKET", socket),
        None => command.env_remove("NOTIFY_SOCKET"),
    };
    let child = command
        .arg(format!(
            "--live-update-guardian={},{},{},{exe},{timeout_s}",
            read.as_raw_fd(),
            state.0,
            state.1
        ))
        .args(args)
        .spawn();
    drop(read);
    let child = child?;
    Ok(Started {
        pid: child.id(),
        write,
    })
}

/// The new process (or its fallback) has taken over: tells the guardian on `write` and
/// closes the pipe. The guardian exits at once; it is this process's child (the old process,
/// which started it, had this pid): the server reaps it ([`crate::server::Server::reap`]).
pub(crate) fn taken(write: RawFd) {
    // SAFETY: the pipe's write end this process was handed (`--live-update-guardian-pipe`)
    // and uses only here; closed once, now.
    let mut pipe = File::from(unsafe { OwnedFd::from_raw_fd(write) });
    if let Err(e) = pipe.write_all(&[TAKEN]) {
        log::warn!("live-update: telling the guardian: {e}");
    }
}

/// `--live-update-guardian=R,STATE,RECORD,EXE,TIMEOUT`: the guardian's whole life. `args` is
/// the old process's command line.
pub(crate) fn watch(hidden: &Hidden, args: Vec<OsString>) -> ExitCode {
    let Some(g) = hidden.guardian else {
        return ExitCode::FAILURE;
    };
    // The daemon: the old process started this one, and the new process has its pid.
    let daemon = rustix::process::getppid();
    // SAFETY: the pipe's read end the old process handed this one; owned here alone.
    let mut pipe = File::from(unsafe { OwnedFd::from_raw_fd(g.read) });
    let deadline =
        (g.timeout_s > 0).then(|| Instant::now() + Duration::from_secs(u64::from(g.timeout_s)));
    let mut why = DIED.to_owned();
    let mut killed = false;
    let mut byte = [0u8; 1];
    loop {
        if let Some(deadline) = deadline.filter(|_| !killed) {
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = rustix::event::Timespec::try_from(left).unwrap_or_default();
            let mut fds = [rustix::event::PollFd::new(
                &pipe,
                rustix::event::PollFlags::IN,
            )];
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(0) => {
                    // Still nobody took over: the new process hangs. It is killed (only if it
                    // is still this process's parent: never anyone else), which closes the
                    // pipe.
                    if let Some(pid) = daemon.filter(|&p| rustix::process::getppid() == Some(p)) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                    }
                    why = format!(
                        "the new process did not take over within {} s (killed)",
                        g.timeout_s
                    );
                    killed = true;
                    continue;
                }
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    eprintln!("xs-host: live-update guardian: waiting on its pipe: {e}");
                    break;
                }
            }
        }
        match pipe.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == TAKEN => {
                // The main process is the daemon's again (systemd heard it was this one's).
                if let Some(socket) = std::env::var_os("NOTIFY_SOCKET")
                    && let Some(parent) = rustix::process::getppid()
                {
                    let _ = crate::daemon::notify(
                        &socket,
                        &format!("MAINPID={}", parent.as_raw_nonzero()),
                    );
                }
                return ExitCode::SUCCESS;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("xs-host: live-update guardian: reading its pipe: {e}");
                break;
            }
        }
    }
    eprintln!("xs-host: live-update: {why}: the old binary takes the state back");
    // It runs in this process, which systemd already knows as the main one; the socket
    // reaches it through the record.
    // SAFETY: the guardian never starts a thread: nothing reads the environment meanwhile.
    unsafe { std::env::remove_var("NOTIFY_SOCKET") };
    let e = super::go_back(g.exe, (g.state, g.record), None, args, &why);
    eprintln!("xs-host: live-update guardian: cannot start the old binary: {e}");
    ExitCode::FAILURE
}

/// The guardian's hidden option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GuardianArgs {
    pub(crate) read: RawFd,
    pub(crate) state: RawFd,
    pub(crate) record: RawFd,
    pub(crate) exe: RawFd,
    /// Seconds the new process may take to take over (0: no limit).
    pub(crate) timeout_s: u32,
}

/// The new process's hidden option: the pipe's write end and the guardian's pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GuardianPipe {
    pub(crate) write: RawFd,
    pub(crate) pid: u32,
}

impl GuardianPipe {
    pub(crate) fn option(self) -> OsString {
        format!("--live-update-guardian-pipe={},{}", self.write, self.pid).into()
    }
}
