//! What the hostile tests need of the system that std does not offer: the open-file limit,
//! a connect that does not wait for the listener's backlog, and a process's CPU time and
//! peak memory.

use std::fs;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::skip::Skip;

/// `struct rlimit`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Rlimit {
    cur: u64,
    max: u64,
}

/// `struct sockaddr_un`.
#[repr(C)]
struct SockaddrUn {
    family: u16,
    path: [u8; 108],
}

const RLIMIT_NOFILE: i32 = 7;
const AF_UNIX: i32 = 1;
const SOCK_STREAM: i32 = 1;
const SOCK_NONBLOCK: i32 = 0o4000;
const SOCK_CLOEXEC: i32 = 0o2000000;

unsafe extern "C" {
    fn getrlimit(resource: i32, rlim: *mut Rlimit) -> i32;
    fn setrlimit(resource: i32, rlim: *const Rlimit) -> i32;
    safe fn socket(domain: i32, ty: i32, protocol: i32) -> i32;
    fn connect(fd: i32, addr: *const SockaddrUn, len: u32) -> i32;
}

fn nofile() -> io::Result<Rlimit> {
    let mut r = Rlimit { cur: 0, max: 0 };
    // SAFETY: `r` is a valid, writable `struct rlimit` for the call's duration.
    if unsafe { getrlimit(RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

fn set_nofile(r: Rlimit) -> io::Result<()> {
    // SAFETY: `r` is a valid `struct rlimit`, only read by the call.
    if unsafe { setrlimit(RLIMIT_NOFILE, &r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Raises this process's open-file limit to at least `want` (children started afterwards,
/// the daemon among them, inherit it): the soft limit up to the hard one, and the hard one
/// too where the process may (as root). A `Skip` if it cannot get that many.
pub fn raise_nofile(want: u64) -> Result<u64, Skip> {
    let r = nofile().map_err(|e| Skip(format!("getrlimit(RLIMIT_NOFILE): {e}")))?;
    if r.cur >= want {
        return Ok(r.cur);
    }
    if r.max < want
        && set_nofile(Rlimit {
            cur: want,
            max: want,
        })
        .is_ok()
    {
        return Ok(want);
    }
    let _ = set_nofile(Rlimit {
        cur: r.max,
        max: r.max,
    });
    let got = nofile().map_or(r.cur, |r| r.cur);
    if got >= want {
        Ok(got)
    } else {
        Err(Skip(format!(
            "needs {want} open files; RLIMIT_NOFILE allows {got} (hard limit {}), and raising \
             the hard limit needs root",
            r.max
        )))
    }
}

/// Connects to the Unix socket at `path` without waiting: `Ok` once the connection is
/// established or queued in the listener's backlog, `Err` with `WouldBlock` (`EAGAIN`) if
/// the backlog is full. The stream is blocking afterwards.
pub fn connect_nowait(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_encoded_bytes();
    let mut addr = SockaddrUn {
        family: AF_UNIX as u16,
        path: [0; 108],
    };
    let Some(dst) = addr
        .path
        .get_mut(..bytes.len())
        .filter(|_| bytes.len() < 108)
    else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "path too long"));
    };
    dst.copy_from_slice(bytes);
    let fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = u32::try_from(std::mem::size_of::<SockaddrUn>()).unwrap_or(u32::MAX);
    // SAFETY: `addr` is a valid `sockaddr_un` of `len` bytes, only read by the call.
    if unsafe { connect(fd, &addr, len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let stream = UnixStream::from(owned);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// A process's CPU time (user plus system) in clock ticks (`/proc/<pid>/stat`; 100 a
/// second on Linux).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces), from the state (3rd).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15, so 11 and 12 after the state.
    field(11) + field(12)
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Makes `cmd`'s process start with an open-file limit of `n` (soft and hard), so that it
/// cannot raise it.
pub fn limit_nofile(cmd: &mut std::process::Command, n: u64) {
    use std::os::unix::process::CommandExt;
    let r = Rlimit { cur: n, max: n };
    // SAFETY: the hook runs in the child between fork and exec, where only
    // async-signal-safe functions may be called: it calls setrlimit(2) alone, on a value
    // copied into the closure, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || set_nofile(r));
    }
}
