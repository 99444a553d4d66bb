//! The daemon behind a XenStore socket, seen from outside: which process serves it, how much
//! memory that process holds, pinning it to a CPU, and starting/stopping the reference daemons
//! ("anchors") with the scripts in `shared/anchors/`.

use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::thread::{CpuSet, Pid, sched_getaffinity, sched_setaffinity};

/// Where a daemon's pid came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PidSource {
    /// Given on the command line.
    Argument,
    /// Read from `<socket>.pid`.
    PidFile,
    /// Found as the holder of the listening socket (`/proc/net/unix` and `/proc/*/fd`).
    SocketOwner,
}

impl PidSource {
    /// A short description.
    pub fn as_str(self) -> &'static str {
        match self {
            PidSource::Argument => "--pid",
            PidSource::PidFile => "pid file",
            PidSource::SocketOwner => "socket owner",
        }
    }
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => !status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z')),
        Err(_) => false,
    }
}

/// The pid of the daemon serving `socket`: `<socket>.pid` if that file names a live process,
/// else the process holding the listening socket.
pub fn find_pid(socket: &Path) -> Option<(u32, PidSource)> {
    let mut pid_file = socket.as_os_str().to_owned();
    pid_file.push(".pid");
    if let Ok(text) = fs::read_to_string(&pid_file)
        && let Ok(pid) = text.trim().parse::<u32>()
        && alive(pid)
    {
        return Some((pid, PidSource::PidFile));
    }
    socket_owner(socket).map(|pid| (pid, PidSource::SocketOwner))
}

/// The process that holds the listening Unix socket bound to `socket`.
pub fn socket_owner(socket: &Path) -> Option<u32> {
    let wanted: Vec<PathBuf> = {
        let mut v = vec![socket.to_path_buf()];
        if let Ok(c) = fs::canonicalize(socket) {
            v.push(c);
        }
        v
    };
    let table = fs::read_to_string("/proc/net/unix").ok()?;
    // Num RefCount Protocol Flags Type St Inode Path
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(cols.get(3)?, 16).ok()?;
            let path = cols.get(7..)?.join(" ");
            // __SO_ACCEPTCON: a listening socket.
            let listening = flags & 0x0001_0000 != 0;
            (listening && wanted.iter().any(|w| w.as_os_str() == path.as_str()))
                .then(|| cols.get(6).map(|s| (*s).to_owned()))
                .flatten()
        })
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let targets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let me = std::process::id();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = fs::read_link(fd.path())
                && targets.iter().any(|t| link.as_os_str() == t.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

/// Resident and peak resident memory of `pid` in KiB (`VmRSS`, `VmHWM`).
pub fn memory_kb(pid: u32) -> io::Result<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse().ok()
    };
    match (field("VmRSS:"), field("VmHWM:")) {
        (Some(rss), Some(hwm)) => Ok((rss, hwm)),
        _ => Err(io::Error::other(format!(
            "no VmRSS/VmHWM in /proc/{pid}/status"
        ))),
    }
}

/// The reference daemons `start-anchor.sh` knows.
pub const ANCHOR_KINDS: [&str; 3] = ["cxenstored", "oxenstored", "echo"];

/// Anchors started by this process, each on a socket in a private temporary directory;
/// stopped (and the directory removed) on drop.
#[derive(Debug)]
pub struct Anchors {
    scripts: PathBuf,
    dir: PathBuf,
    started: Vec<(String, PathBuf)>,
}

impl Anchors {
    /// Starts each of `kinds` with `<scripts>/start-anchor.sh`, on sockets in a new temporary
    /// directory. On failure the ones already started are stopped again.
    pub fn start(scripts: &Path, kinds: &[&str]) -> io::Result<Anchors> {
        let dir = std::env::temp_dir().join(format!("bench-socket-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        let mut anchors = Anchors {
            scripts: scripts.to_path_buf(),
            dir,
            started: Vec::new(),
        };
        for kind in kinds {
            let socket = anchors.dir.join(format!("{kind}.sock"));
            let status = Command::new(scripts.join("start-anchor.sh"))
                .arg(kind)
                .arg(&socket)
                .status()?;
            if !status.success() {
                return Err(io::Error::other(format!(
                    "{} {kind} {} failed ({status})",
                    scripts.join("start-anchor.sh").display(),
                    socket.display()
                )));
            }
            anchors.started.push(((*kind).to_owned(), socket));
        }
        Ok(anchors)
    }

    /// The started anchors: (kind, socket path).
    pub fn sockets(&self) -> &[(String, PathBuf)] {
        &self.started
    }
}

impl Drop for Anchors {
    fn drop(&mut self) {
        for (kind, socket) in self.started.drain(..).rev() {
            let ok = Command::new(self.scripts.join("stop-anchor.sh"))
                .arg(&socket)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!(
                    "bench-socket: stopping {kind} on {} failed",
                    socket.display()
                );
            }
        }
        // Only what start-anchor.sh created lives here (sockets, pid files, state dirs).
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("bench-socket: removing {}: {e}", self.dir.display());
        }
    }
}

/// Whether `path` is a Unix socket.
pub fn is_socket(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// The CPUs the calling thread may run on.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    let set = sched_getaffinity(None)?;
    Ok((0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect())
}

/// Restricts the calling thread (and the threads it creates later) to `cpu`.
pub fn pin_self(cpu: usize) -> io::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set)?;
    Ok(())
}

/// A process whose threads were pinned to one CPU; their previous affinity is restored on
/// drop (threads created after the pinning inherit it from their creator).
#[derive(Debug)]
pub struct Pinned {
    saved: Vec<(Pid, CpuSet)>,
}

impl Pinned {
    /// Pins every thread of process `pid` to `cpu`.
    pub fn new(pid: u32, cpu: usize) -> io::Result<Pinned> {
        let mut set = CpuSet::new();
        set.set(cpu);
        let mut pinned = Pinned { saved: Vec::new() };
        for task in fs::read_dir(format!("/proc/{pid}/task"))? {
            let task = task?;
            let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
                .and_then(Pid::from_raw)
            else {
                continue;
            };
            let before = sched_getaffinity(Some(tid))?;
            sched_setaffinity(Some(tid), &set)?;
            pinned.saved.push((tid, before));
        }
        Ok(pinned)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        for (tid, before) in self.saved.drain(..) {
            // The thread may have ended meanwhile.
            let _ = sched_setaffinity(Some(tid), &before);
        }
    }
}
