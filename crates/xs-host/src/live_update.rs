//! Live update: `xenstore-control live-update [-c CMDLINE] [-t SECS] [-F] FILE` replaces the
//! running daemon by `FILE` without a client noticing, as C xenstored's (`tools/xenstored/
//! lu.c`, `lu_daemon.c`).
//!
//! # The flow
//!
//! 1. `-f FILE` begins the session (one at a time, on the connection that sent it): `FILE`
//!    must exist and be executable (C's checks), and answer the probe: run as
//!    `FILE --live-update-probe`, it must print [`PROBE_ANSWER`] within
//!    [`PROBE_TIMEOUT`]. A binary that does not start, is no xs-host, or reads another
//!    state format is refused here, before anything is written.
//! 2. `-c CMDLINE` (optional): the new process's arguments, split at blanks, instead of the
//!    running one's.
//! 3. `-s [-t SECS] [-F]`: held unanswered (C's delayed request) until the update may
//!    happen: when no transaction is open, or with `-F` when every open one is at least
//!    `SECS` old. While it waits, a connection's first `TRANSACTION_START` is held too, so
//!    that open transactions drain. Once `SECS` passed, `-F` updates anyway (the open
//!    transactions are carried over, unlike C, which drops them); without it the answer
//!    names the domains with long transactions ("Overlapping transactions" if none). Xen's
//!    `xenstore-control` sends `-t 60` unless told otherwise.
//! 4. The update: the store and every connection (partly read request, unsent replies and
//!    events, backlog, watches, open transactions; `xs_core::state::save`) are written to a
//!    sealed memfd, and the daemon's own part (its listeners, each client's socket and kind,
//!    trace numbering, transaction ages, the old command line: [`Record`]) to a second one;
//!    `CLOEXEC` is cleared on those, the listening sockets, every client socket and (on
//!    Xen) the event-channel device, and the
//!    daemon execs `FILE` in place (same pid) with `--live-update-state=STATE,RECORD` and
//!    `--live-update-fallback=EXE`, an open descriptor of the running binary.
//! 5. The new process reads both back (`xs_core::state::restore`), adopts the sockets and
//!    serves on. The held `-s` is the first request it answers: `OK`.
//!
//! # Failure
//!
//! * Refused before anything is written (the answer says why, the session ends, the
//!   daemon serves on as if nothing happened): no such file, not executable, probe failed;
//!   transactions still open after `SECS` without `-F`; `-a`.
//! * `exec` fails: the daemon sets `CLOEXEC` back, closes the memfds and answers the `-s`
//!   with "Error activating new binary: ...".
//! * The new binary cannot restore (a stream it rejects, a socket it cannot adopt) or panics
//!   before it serves: it execs the fallback, the old binary, with the same (sealed) state
//!   and `--live-update-failed=WHY`; that restores and answers the `-s` with the reason.
//! * The new process dies before it has taken over (a signal, an exit before xs-host's
//!   code runs): the guardian the old process started just before its exec ([`guardian`])
//!   execs the old binary with the same state, which answers the `-s` with the reason.
//!
//! The old process's `GLOBAL_DATA` names its main listener and, on Xen, `/dev/xen/evtchn`,
//! which is inherited like the sockets: the rings' event-channel bindings belong to the
//! open device, so they survive the exec; the new process maps every ring again and serves
//! it on its bound port (`xs_serve::Dispatcher::restore`; see the README).

pub(crate) mod guardian;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use xs_core::protocol::LiveUpdate;
use xs_core::protocol::live_update::STATE_VERSION;
use xs_core::state::{self, Global, SaveError, SaveOptions, SaveStats, Sink};
use xs_core::wire::{Header, MsgType};
use xs_core::{ConnId, DomId, Store};

/// What `--live-update-probe` prints: the versions of what the new process must read.
pub(crate) const PROBE_ANSWER: &str = "xs-host live-update record 1 state 2";

/// How long the probe may take.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The first line of a [`Record`].
const RECORD_MAGIC: &str = "xs-host-live-update 1";

/// How often a held `-s` is looked at again while transactions are open.
pub(crate) const RECHECK: Duration = Duration::from_millis(100);

/// The hidden options one xs-host passes the next (never shown in `--help`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Hidden {
    /// `--live-update-state=STATE,RECORD`: the memfds to restore from.
    pub(crate) state: Option<(RawFd, RawFd)>,
    /// `--live-update-fallback=EXE`: the binary to go back to if restoring fails.
    pub(crate) fallback: Option<RawFd>,
    /// `--live-update-failed=WHY`: the new binary could not take over (this is the fallback).
    pub(crate) failed: Option<String>,
    /// `--live-update-probe`: print [`PROBE_ANSWER`] and exit.
    pub(crate) probe: bool,
    /// `--live-update-guardian=R,STATE,RECORD,EXE,TIMEOUT`: be the guardian of an update.
    pub(crate) guardian: Option<guardian::GuardianArgs>,
    /// `--live-update-guardian-pipe=W,PID`: the guardian to tell once taken over.
    pub(crate) guardian_pipe: Option<guardian::GuardianPipe>,
}

fn fd_arg(text: &str) -> Result<RawFd, String> {
    text.parse::<RawFd>()
        .ok()
        .filter(|&fd| fd >= 0)
        .ok_or_else(|| format!("not a descriptor: {text:?}"))
}

/// Takes the hidden options out of `args` (the rest is the command line proper).
pub(crate) fn take_hidden(args: Vec<OsString>) -> Result<(Vec<OsString>, Hidden), String> {
    let mut hidden = Hidden::default();
    let mut rest = Vec::with_capacity(args.len());
    for arg in args {
        let text = arg.to_string_lossy();
        if let Some(v) = text.strip_prefix("--live-update-state=") {
            let (a, b) = v
                .split_once(',')
                .ok_or_else(|| format!("--live-update-state: {v:?}"))?;
            hidden.state = Some((fd_arg(a)?, fd_arg(b)?));
        } else if let Some(v) = text.strip_prefix("--live-update-fallback=") {
            hidden.fallback = Some(fd_arg(v)?);
        } else if let Some(v) = text.strip_prefix("--live-update-failed=") {
            hidden.failed = Some(v.to_owned());
        } else if text == "--live-update-probe" {
            hidden.probe = true;
        } else if let Some(v) = text.strip_prefix("--live-update-guardian=") {
            let bad = || format!("--live-update-guardian: {v:?}");
            let (fds, timeout) = v.rsplit_once(',').ok_or_else(bad)?;
            let fds = fds.split(',').map(fd_arg).collect::<Result<Vec<_>, _>>()?;
            let [read, state, record, exe] = fds.as_slice() else {
                return Err(bad());
            };
            hidden.guardian = Some(guardian::GuardianArgs {
                read: *read,
                state: *state,
                record: *record,
                exe: *exe,
                timeout_s: timeout.parse().map_err(|_| bad())?,
            });
        } else if let Some(v) = text.strip_prefix("--live-update-guardian-pipe=") {
            let bad = || format!("--live-update-guardian-pipe: {v:?}");
            let (w, pid) = v.split_once(',').ok_or_else(bad)?;
            hidden.guardian_pipe = Some(guardian::GuardianPipe {
                write: fd_arg(w)?,
                pid: pid.parse().map_err(|_| bad())?,
            });
        } else {
            rest.push(arg);
        }
    }
    Ok((rest, hidden))
}

/// A client socket as the record describes it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum SocketKind {
    Main,
    ReadOnly,
    Domain(DomId),
}

impl SocketKind {
    fn text(self) -> String {
        match self {
            SocketKind::Main => "main".to_owned(),
            SocketKind::ReadOnly => "ro".to_owned(),
            SocketKind::Domain(d) => format!("domain:{}", d.0),
        }
    }

    fn parse(text: &str) -> Option<SocketKind> {
        match text {
            "main" => Some(SocketKind::Main),
            "ro" => Some(SocketKind::ReadOnly),
            _ => {
                let d = text.strip_prefix("domain:")?.parse::<u16>().ok()?;
                Some(SocketKind::Domain(DomId(d)))
            }
        }
    }
}

/// A listening socket in the record.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct RecordListener {
    pub(crate) fd: RawFd,
    pub(crate) kind: SocketKind,
    pub(crate) path: PathBuf,
}

/// A client in the record.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct RecordClient {
    pub(crate) fd: RawFd,
    pub(crate) kind: SocketKind,
    /// Its number in the trace.
    pub(crate) number: u64,
    /// How long its oldest open transaction has been open, if it has one.
    pub(crate) ta_age: Option<Duration>,
}

/// xs-host's own part of the state, beside the store's stream: text, a line per item,
/// paths and arguments in hex.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub(crate) struct Record {
    pub(crate) listeners: Vec<RecordListener>,
    pub(crate) clients: Vec<RecordClient>,
    pub(crate) next_number: u64,
    /// The `io` trace switch.
    pub(crate) io: bool,
    /// The trace file, if one is open.
    pub(crate) trace: Option<PathBuf>,
    /// The socket of the connection whose `-s` the new process answers.
    pub(crate) answer: Option<RawFd>,
    /// The old process's arguments (for the fallback).
    pub(crate) args: Vec<OsString>,
    /// On Xen: the event-channel device left open across the exec, with every ring's
    /// binding on it, and the local port of `VIRQ_DOM_EXC` bound there.
    pub(crate) evtchn: Option<EventChannelRecord>,
    /// systemd's notification socket, if it supervises the daemon.
    pub(crate) notify: Option<OsString>,
}

/// The event-channel device in the record.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct EventChannelRecord {
    pub(crate) fd: RawFd,
    pub(crate) virq: u32,
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    if s.is_empty() {
        s.push('-');
    }
    s
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text == "-" {
        return Some(Vec::new());
    }
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Record {
    pub(crate) fn encode(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{RECORD_MAGIC}");
        let _ = writeln!(s, "next-number {}", self.next_number);
        let _ = writeln!(s, "io {}", u8::from(self.io));
        if let Some(t) = &self.trace {
            let _ = writeln!(s, "trace {}", hex(t.as_os_str().as_bytes()));
        }
        if let Some(fd) = self.answer {
            let _ = writeln!(s, "answer {fd}");
        }
        if let Some(e) = self.evtchn {
            let _ = writeln!(s, "evtchn {} {}", e.fd, e.virq);
        }
        if let Some(n) = &self.notify {
            let _ = writeln!(s, "notify {}", hex(n.as_bytes()));
        }
        for a in &self.args {
            let _ = writeln!(s, "arg {}", hex(a.as_bytes()));
        }
        for l in &self.listeners {
            let _ = writeln!(
                s,
                "listener {} {} {}",
                l.fd,
                l.kind.text(),
                hex(l.path.as_os_str().as_bytes())
            );
        }
        for c in &self.clients {
            let age = c
                .ta_age
                .map_or_else(|| "-".to_owned(), |a| a.as_millis().to_string());
            let _ = writeln!(s, "client {} {} {} {age}", c.fd, c.kind.text(), c.number);
        }
        s.push_str("end\n");
        s
    }

    pub(crate) fn decode(text: &str) -> Result<Record, String> {
        let mut lines = text.lines();
        if lines.next() != Some(RECORD_MAGIC) {
            return Err("not a live-update record of this version".to_owned());
        }
        let mut r = Record::default();
        let mut ended = false;
        for (n, line) in lines.enumerate() {
            let bad = || format!("live-update record, line {}: {line:?}", n + 2);
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["next-number", v] => r.next_number = v.parse().map_err(|_| bad())?,
                ["io", v] => r.io = *v == "1",
                ["trace", p] => {
                    r.trace = Some(PathBuf::from(OsString::from_vec(unhex(p).ok_or_else(bad)?)));
                }
                ["answer", fd] => r.answer = Some(fd_arg(fd).map_err(|_| bad())?),
                ["notify", n] => {
                    r.notify = Some(OsString::from_vec(unhex(n).ok_or_else(bad)?));
                }
                ["evtchn", fd, virq] => {
                    r.evtchn = Some(EventChannelRecord {
                        fd: fd_arg(fd).map_err(|_| bad())?,
                        virq: virq.parse().map_err(|_| bad())?,
                    });
                }
                ["arg", a] => r.args.push(OsString::from_vec(unhex(a).ok_or_else(bad)?)),
                ["listener", fd, kind, path] => r.listeners.push(RecordListener {
                    fd: fd_arg(fd).map_err(|_| bad())?,
                    kind: SocketKind::parse(kind).ok_or_else(bad)?,
                    path: PathBuf::from(OsString::from_vec(unhex(path).ok_or_else(bad)?)),
                }),
                ["client", fd, kind, number, age] => r.clients.push(RecordClient {
                    fd: fd_arg(fd).map_err(|_| bad())?,
                    kind: SocketKind::parse(kind).ok_or_else(bad)?,
                    number: number.parse().map_err(|_| bad())?,
                    ta_age: match *age {
                        "-" => None,
                        ms => Some(Duration::from_millis(ms.parse().map_err(|_| bad())?)),
                    },
                }),
                ["end"] => {
                    ended = true;
                    break;
                }
                _ => return Err(bad()),
            }
        }
        if !ended {
            return Err("live-update record truncated".to_owned());
        }
        Ok(r)
    }
}

/// A memory file, sealed once written: neither the new binary nor anything else can change
/// what the fallback would read.
pub(crate) fn sealed_memfd(
    name: &str,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    let mut file = File::from(fd);
    write(&mut file)?;
    file.flush()?;
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
    )?;
    Ok(OwnedFd::from(file))
}

/// A sealed memory file mapped read-only: the state stream read in place, without copying
/// tens of megabytes before restoring them.
pub(crate) struct SealedMap {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

impl SealedMap {
    /// Maps `fd` if it is a memory file sealed against writes and shrinking (as
    /// [`sealed_memfd`] leaves it), else `None` (the caller reads it instead). Empty files
    /// are not mapped either.
    pub(crate) fn new(fd: BorrowedFd<'_>) -> io::Result<Option<SealedMap>> {
        use rustix::fs::SealFlags;
        use rustix::mm::{MapFlags, ProtFlags};
        let Ok(seals) = rustix::fs::fcntl_get_seals(fd) else {
            return Ok(None);
        };
        if !seals.contains(SealFlags::WRITE | SealFlags::SHRINK) {
            return Ok(None);
        }
        let len = usize::try_from(rustix::fs::fstat(fd)?.st_size)
            .map_err(|_| io::Error::other("state file size"))?;
        if len == 0 {
            return Ok(None);
        }
        // SAFETY: a fresh read-only private mapping of `len` bytes at an address the kernel
        // chooses: it aliases no Rust object. The file is sealed against writes and
        // shrinking, so the bytes cannot change while mapped and no page past the end can
        // appear (no SIGBUS): reading it through a `&[u8]` is sound until `Drop` unmaps it.
        let addr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ,
                MapFlags::PRIVATE | MapFlags::POPULATE,
                fd,
                0,
            )?
        };
        let ptr = std::ptr::NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Some(SealedMap { ptr, len }))
    }
}

impl std::ops::Deref for SealedMap {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes that cannot change (see `new`) until
        // `drop`, and the slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SealedMap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; no slice of it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A [`Sink`] over any writer.
pub(crate) struct WriteSink<W: Write>(pub(crate) W);

impl<W: Write> Sink for WriteSink<W> {
    type Error = io::Error;

    fn write(&mut self, bytes: &[u8]) -> Result<(), io::Error> {
        self.0.write_all(bytes)
    }
}

fn save_error(e: SaveError<io::Error>) -> io::Error {
    match e {
        SaveError::Sink(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

/// Writes `store`'s state stream (without its connections' descriptors: none would mean
/// anything to another process) to `path`, through a temporary file renamed over it.
pub(crate) fn save_file(store: &mut Store, path: &Path) -> io::Result<SaveStats> {
    write_state_file(path, |sink| {
        state::save(store, Global::default(), &[], SaveOptions::default(), sink)
    })
}

/// The sink [`write_state_file`] gives.
pub(crate) type FileSink = WriteSink<io::BufWriter<File>>;

/// Writes a state stream (what `save` writes to the sink it is given) to `path`, through a
/// temporary file synced and renamed over it: `path` holds a whole stream or what it held.
pub(crate) fn write_state_file(
    path: &Path,
    save: impl FnOnce(&mut FileSink) -> Result<SaveStats, SaveError<io::Error>>,
) -> io::Result<SaveStats> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let file = File::create(&tmp)?;
    let mut sink = WriteSink(io::BufWriter::with_capacity(1 << 20, file));
    let saved = save(&mut sink).map_err(save_error).and_then(|stats| {
        let file = sink
            .0
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        Ok(stats)
    });
    match saved {
        Ok(stats) => {
            std::fs::rename(&tmp, path)?;
            Ok(stats)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// The sink [`save_memfd`] gives.
pub(crate) type MemfdSink<'a> = WriteSink<io::BufWriter<&'a mut File>>;

/// Writes a state stream (what `save` writes to the sink it is given) into a sealed memfd.
pub(crate) fn save_memfd(
    save: impl FnOnce(&mut MemfdSink<'_>) -> Result<SaveStats, SaveError<io::Error>>,
) -> io::Result<(OwnedFd, SaveStats)> {
    let mut stats = SaveStats::default();
    let fd = sealed_memfd("xs-host-state", |file| {
        let mut sink = WriteSink(io::BufWriter::with_capacity(1 << 20, file));
        stats = save(&mut sink).map_err(save_error)?;
        sink.0.flush()
    })?;
    Ok((fd, stats))
}

/// Sets or clears `FD_CLOEXEC` on `fd`.
pub(crate) fn set_cloexec(fd: impl AsFd, on: bool) -> io::Result<()> {
    use rustix::io::FdFlags;
    let flags = if on {
        FdFlags::CLOEXEC
    } else {
        FdFlags::empty()
    };
    rustix::io::fcntl_setfd(fd, flags)?;
    Ok(())
}

/// Runs `binary --live-update-probe`; `Err` says why it cannot take over.
pub(crate) fn probe(binary: &Path) -> Result<(), String> {
    let mut child = Command::new(binary)
        .arg("--live-update-probe")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {} s", PROBE_TIMEOUT.as_secs()));
            }
            Err(e) => return Err(format!("waiting for it: {e}")),
        }
    };
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if !status.success() || out.trim_end() != PROBE_ANSWER {
        return Err(format!(
            "it is not an xs-host that reads this state ({status}, answered {:?}, want {PROBE_ANSWER:?})",
            out.trim_end()
        ));
    }
    Ok(())
}

/// Execs `binary` with `args` (`argv[0]` is `binary`); returns only on failure.
pub(crate) fn exec(binary: &OsStr, args: &[OsString]) -> io::Error {
    Command::new(binary).args(args).exec()
}

/// Execs the old binary (open on `exe`) with the same state (`state` and `record`), telling
/// it why, and with the guardian's pipe if one watches; returns only on failure.
pub(crate) fn go_back(
    exe: RawFd,
    (state, record): (RawFd, RawFd),
    guardian: Option<guardian::GuardianPipe>,
    mut args: Vec<OsString>,
    why: &str,
) -> io::Error {
    args.push(format!("--live-update-state={state},{record}").into());
    // The guardian stays on watch: the old binary tells it once it has taken over.
    if let Some(g) = guardian {
        args.push(g.option());
    }
    // One line: the option's value is the answer the client gets.
    let why: String = why
        .chars()
        .map(|c| if c == '\n' { ' ' } else { c })
        .collect();
    args.push(format!("--live-update-failed={why}").into());
    exec(fd_path(exe).as_os_str(), &args)
}

/// The running binary, open for the fallback (`/proc/self/exe` names it even if the file
/// was replaced since).
pub(crate) fn open_self() -> io::Result<File> {
    File::open("/proc/self/exe")
}

/// The path to exec a binary open on `fd` by.
pub(crate) fn fd_path(fd: RawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{fd}"))
}

/// A live update's session and its start, as the protocol's hooks see them.
#[derive(Debug)]
struct Session {
    conn: ConnId,
    binary: PathBuf,
    cmdline: Option<String>,
    start: Option<Start>,
}

#[derive(Clone, Copy, Debug)]
struct Start {
    force: bool,
    timeout: Duration,
    since: Instant,
}

/// What the event loop must do: exec `binary` for the session of `conn`.
#[derive(Debug)]
pub(crate) struct Due {
    pub(crate) conn: ConnId,
    pub(crate) binary: PathBuf,
    pub(crate) cmdline: Option<String>,
}

/// The live-update side of the daemon's host: the session, the held requests, the ages of
/// open transactions.
#[derive(Debug, Default)]
pub(crate) struct Control {
    session: Option<Session>,
    /// Answers decided for held `-s` requests.
    answers: HashMap<ConnId, Vec<u8>>,
    /// Connections holding a `TRANSACTION_START` while an update is pending.
    held: Vec<ConnId>,
    /// The update may happen now.
    due: bool,
    /// When each connection's oldest open transaction started (stale for connections that
    /// have none open any more: the store's count is what counts).
    ta_start: HashMap<ConnId, Instant>,
}

impl Control {
    /// `-f FILE`.
    pub(crate) fn binary(&mut self, conn: ConnId, file: &[u8]) -> Vec<u8> {
        if self.session.is_some() {
            return b"live-update session already active.".to_vec();
        }
        let path = PathBuf::from(OsStr::from_bytes(file));
        log::info!("live-update: binary {}", path.display());
        let Ok(meta) = std::fs::metadata(&path) else {
            return b"File not accessible.".to_vec();
        };
        if meta.permissions().mode() & 0o111 == 0 || !meta.is_file() {
            return b"File not executable.".to_vec();
        }
        if let Err(why) = probe(&path) {
            log::warn!("live-update: {} refused: {why}", path.display());
            return format!("File cannot take over: {why}").into_bytes();
        }
        self.session = Some(Session {
            conn,
            binary: path,
            cmdline: None,
            start: None,
        });
        b"OK".to_vec()
    }

    /// `-c CMDLINE`.
    pub(crate) fn cmdline(&mut self, conn: ConnId, text: &[u8]) -> Vec<u8> {
        match self.session.as_mut() {
            Some(s) if s.conn == conn => {
                log::info!("live-update: cmdline {}", String::from_utf8_lossy(text));
                s.cmdline = Some(String::from_utf8_lossy(text).into_owned());
                b"OK".to_vec()
            }
            _ => b"Not in live-update session.".to_vec(),
        }
    }

    /// `-a`.
    pub(crate) fn abort(&mut self) -> Vec<u8> {
        log::info!("live-update: abort");
        match self.session.take() {
            None => b"No live-update session active.".to_vec(),
            Some(s) => {
                if s.start.is_some() {
                    self.answers
                        .insert(s.conn, b"Cancellation was requested".to_vec());
                }
                self.due = false;
                b"OK".to_vec()
            }
        }
    }

    /// `-s`, once no longer held: the answer decided for it.
    pub(crate) fn start_answer(&mut self, conn: ConnId, version: u32) -> Vec<u8> {
        if let Some(a) = self.answers.remove(&conn) {
            return a;
        }
        if !(1..=STATE_VERSION).contains(&version) {
            return b"Migration stream version not supported.".to_vec();
        }
        b"Not in live-update session.".to_vec()
    }

    /// Whether the request must wait (see the module docs).
    pub(crate) fn hold(
        &mut self,
        store: &Store,
        conn: ConnId,
        header: &Header,
        payload: &[u8],
    ) -> bool {
        match header.kind() {
            Some(MsgType::TransactionStart) => {
                let pending = self.session.as_ref().is_some_and(|s| s.start.is_some());
                if pending && store.open_transactions(conn) == 0 {
                    if !self.held.contains(&conn) {
                        self.held.push(conn);
                    }
                    return true;
                }
                false
            }
            Some(MsgType::Control) => {
                let Some(LiveUpdate::Start {
                    force,
                    timeout,
                    version,
                }) = LiveUpdate::of_request(header, payload)
                else {
                    return false;
                };
                if self.answers.contains_key(&conn) || !(1..=STATE_VERSION).contains(&version) {
                    return false;
                }
                let now = Instant::now();
                let Some(s) = self.session.as_mut().filter(|s| s.conn == conn) else {
                    return false;
                };
                let start = *s.start.get_or_insert_with(|| {
                    log::info!("live-update: start, force={force}, to={timeout}");
                    Start {
                        force,
                        timeout: Duration::from_secs(u64::from(timeout)),
                        since: now,
                    }
                });
                let (total, long) = self.transactions(store, now, start.timeout);
                let allowed = total == 0 || (start.force && long == total);
                if allowed || (start.force && now >= start.since + start.timeout) {
                    self.due = true;
                    return true;
                }
                if now < start.since + start.timeout {
                    return true;
                }
                let reason = self.reject_reason(store, now, start.timeout);
                self.answers.insert(conn, reason.into_bytes());
                self.session = None;
                false
            }
            _ => false,
        }
    }

    /// Open transactions, and how many of them are at least `timeout` old.
    fn transactions(&self, store: &Store, now: Instant, timeout: Duration) -> (usize, usize) {
        let mut total = 0;
        let mut long = 0;
        for (&conn, &since) in &self.ta_start {
            if store.open_transactions(conn) > 0 {
                total += 1;
                if now.saturating_duration_since(since) >= timeout {
                    long += 1;
                }
            }
        }
        (total, long)
    }

    fn reject_reason(&self, store: &Store, now: Instant, timeout: Duration) -> String {
        let mut text = String::new();
        for (&conn, &since) in &self.ta_start {
            let age = now.saturating_duration_since(since);
            if store.open_transactions(conn) > 0 && age >= timeout {
                if text.is_empty() {
                    text.push_str("Domains with long running transactions:");
                }
                let domid = store.conn_domid(conn).unwrap_or(DomId::INVALID);
                let _ = write!(text, "\nDomain {domid}: {} s", age.as_secs());
            }
        }
        if text.is_empty() {
            text.push_str("Overlapping transactions");
        }
        text
    }

    pub(crate) fn transaction_started(&mut self, conn: ConnId, first: bool) {
        if first {
            self.ta_start.insert(conn, Instant::now());
        } else {
            self.ta_start.entry(conn).or_insert_with(Instant::now);
        }
    }

    /// The age of `conn`'s oldest open transaction, if it has one.
    pub(crate) fn transaction_age(&self, store: &Store, conn: ConnId) -> Option<Duration> {
        if store.open_transactions(conn) == 0 {
            return None;
        }
        Some(
            self.ta_start
                .get(&conn)
                .map_or(Duration::ZERO, Instant::elapsed),
        )
    }

    /// A restored connection's transactions, `age` old.
    pub(crate) fn restored_transactions(&mut self, conn: ConnId, age: Duration) {
        let since = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        self.ta_start.insert(conn, since);
    }

    /// A connection closed: its session ends with it (as in C, where it is the
    /// connection's).
    pub(crate) fn closed(&mut self, conn: ConnId) {
        self.ta_start.remove(&conn);
        self.answers.remove(&conn);
        if self.session.as_ref().is_some_and(|s| s.conn == conn) {
            self.session = None;
            self.due = false;
        }
    }

    /// The update to carry out now, if it is due.
    pub(crate) fn take_due(&mut self) -> Option<Due> {
        if !std::mem::take(&mut self.due) {
            return None;
        }
        let s = self.session.as_ref()?;
        Some(Due {
            conn: s.conn,
            binary: s.binary.clone(),
            cmdline: s.cmdline.clone(),
        })
    }

    /// The update failed before the exec succeeded: the held `-s` gets `why`, the session
    /// ends.
    pub(crate) fn failed(&mut self, conn: ConnId, why: String) {
        log::warn!("live-update: {why}");
        self.answers.insert(conn, why.into_bytes());
        self.session = None;
        self.due = false;
    }

    /// The held `-s` of this process's start (after an update, or the fallback's): answered
    /// `answer`.
    pub(crate) fn answer_after_restart(&mut self, conn: ConnId, answer: Vec<u8>) {
        self.answers.insert(conn, answer);
    }

    /// The connection whose `-s` waits for transactions, to look at again.
    pub(crate) fn waiting_start(&self) -> Option<ConnId> {
        self.session
            .as_ref()
            .filter(|s| s.start.is_some())
            .map(|s| s.conn)
    }

    /// Connections whose held requests may go on now (no update pending any more), and
    /// those whose `-s` has its answer.
    pub(crate) fn take_released(&mut self) -> Vec<ConnId> {
        let mut out: Vec<ConnId> = self.answers.keys().copied().collect();
        if self.waiting_start().is_none() {
            out.append(&mut self.held);
        }
        out
    }

    /// Whether anything is held or waits (the loop then wakes up every [`RECHECK`]).
    pub(crate) fn busy(&self) -> bool {
        self.waiting_start().is_some() || !self.held.is_empty() || !self.answers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_options_are_taken_out() {
        let args: Vec<OsString> = [
            "-N",
            "--live-update-state=5,6",
            "-s",
            "/x",
            "--live-update-fallback=7",
            "--live-update-failed=it broke",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let (rest, h) = take_hidden(args).unwrap();
        assert_eq!(rest, ["-N", "-s", "/x"]);
        assert_eq!(h.state, Some((5, 6)));
        assert_eq!(h.fallback, Some(7));
        assert_eq!(h.failed.as_deref(), Some("it broke"));
        assert!(!h.probe);
        assert!(take_hidden(vec!["--live-update-state=5".into()]).is_err());
        assert!(take_hidden(vec!["--live-update-fallback=-1".into()]).is_err());
        let (rest, h) = take_hidden(vec![
            "--live-update-guardian=3,4,5,6,60".into(),
            "--live-update-guardian-pipe=8,1234".into(),
            "-N".into(),
        ])
        .unwrap();
        assert_eq!(rest, ["-N"]);
        let g = h.guardian.unwrap();
        assert_eq!(
            (g.read, g.state, g.record, g.exe, g.timeout_s),
            (3, 4, 5, 6, 60)
        );
        assert_eq!(
            h.guardian_pipe,
            Some(guardian::GuardianPipe {
                write: 8,
                pid: 1234
            })
        );
        assert_eq!(
            h.guardian_pipe.unwrap().option(),
            OsString::from("--live-update-guardian-pipe=8,1234")
        );
        assert!(take_hidden(vec!["--live-update-guardian=3,4,5,6".into()]).is_err());
        assert!(take_hidden(vec!["--live-update-guardian=3,4,5,6,x".into()]).is_err());
        assert!(take_hidden(vec!["--live-update-guardian-pipe=8".into()]).is_err());
    }

    #[test]
    fn record_round_trip() {
        let r = Record {
            listeners: vec![
                RecordListener {
                    fd: 4,
                    kind: SocketKind::Main,
                    path: "/run/x s/socket".into(),
                },
                RecordListener {
                    fd: 9,
                    kind: SocketKind::Domain(DomId(5)),
                    path: "/run/d/5".into(),
                },
            ],
            clients: vec![RecordClient {
                fd: 12,
                kind: SocketKind::ReadOnly,
                number: 7,
                ta_age: Some(Duration::from_millis(1500)),
            }],
            next_number: 8,
            io: true,
            trace: Some("/tmp/trace".into()),
            answer: Some(12),
            args: vec!["-N".into(), "".into()],
            evtchn: Some(EventChannelRecord { fd: 6, virq: 3 }),
            notify: Some("@/org/freedesktop/systemd1/notify/1".into()),
        };
        let text = r.encode();
        assert_eq!(Record::decode(&text).unwrap(), r);
        assert!(Record::decode(text.trim_end_matches("end\n")).is_err());
        assert!(Record::decode("xs-host-live-update 2\nend\n").is_err());
        assert!(Record::decode("xs-host-live-update 1\nclient x main 1 -\nend\n").is_err());
    }
}
