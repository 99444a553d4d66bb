//! Getting the daemons ready (their sockets checked, each probed, pinned, woken), and tidying
//! up after them.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use xs_bench::client::ClientError;
use xs_bench::daemon::{self, Anchors, PidSource, Pinned};

use crate::args::{Args, HELP, Pin};
use crate::config::{Config, R, Target};
use crate::workloads::{PROBE_DOMID, RING_EVTCHN, RING_GFN};

/// The sockets to measure, the anchors' first, and the index of the baseline among them;
/// `Err` (after saying why) if they do not add up.
pub(crate) fn sockets(
    args: &Args,
    anchors: Option<&Anchors>,
) -> Result<(Vec<(String, PathBuf)>, usize), ExitCode> {
    let mut sockets: Vec<(String, PathBuf)> =
        anchors.map(|a| a.sockets().to_vec()).unwrap_or_default();
    sockets.extend(args.sockets.iter().cloned());
    if sockets.is_empty() {
        eprintln!(
            "bench-socket: nothing to measure: give --socket NAME=PATH or --start-anchors\n\n{HELP}"
        );
        return Err(ExitCode::from(2));
    }
    let mut names = BTreeSet::new();
    for (name, _) in &sockets {
        if !names.insert(name.clone()) {
            eprintln!("bench-socket: two sockets named {name:?}");
            return Err(ExitCode::from(2));
        }
    }
    for (name, _) in &args.pids {
        if !names.contains(name) {
            eprintln!("bench-socket: --pid for unknown socket {name:?}");
            return Err(ExitCode::from(2));
        }
    }
    let base = match &args.baseline {
        None => 0,
        Some(b) => match sockets.iter().position(|(n, _)| n == b) {
            Some(i) => i,
            None => {
                eprintln!("bench-socket: --baseline {b:?} is not a socket name");
                return Err(ExitCode::from(2));
            }
        },
    };
    Ok((sockets, base))
}

/// The daemons serving `sockets`, each probed and described on stderr (`pids` are the
/// processes given on the command line); `Err` (after saying why) if one does not answer
/// properly.
pub(crate) fn targets(
    cfg: &Config,
    sockets: Vec<(String, PathBuf)>,
    pids: &[(String, u32)],
) -> Result<Vec<Target>, ExitCode> {
    let mut targets: Vec<Target> = Vec::new();
    for (name, path) in sockets {
        if !daemon::is_socket(&path) {
            eprintln!("bench-socket: {name}: {} is not a socket", path.display());
            return Err(ExitCode::FAILURE);
        }
        let pid = match pids.iter().find(|(n, _)| *n == name) {
            Some((_, pid)) => Some((*pid, PidSource::Argument)),
            None => daemon::find_pid(&path),
        };
        let mut t = Target {
            name,
            path,
            pid,
            stores: true,
            introduce: Ok(()),
            dead: None,
        };
        if let Err(e) = probe(cfg, &mut t) {
            eprintln!(
                "bench-socket: {}: {} does not answer properly: {e}",
                t.name,
                t.path.display()
            );
            return Err(ExitCode::FAILURE);
        }
        eprintln!(
            "  {}: {} (pid {}){}{}",
            t.name,
            t.path.display(),
            t.pid
                .map(|(p, s)| format!("{p}, from {}", s.as_str()))
                .unwrap_or_else(|| "unknown".into()),
            if t.stores {
                ""
            } else {
                "; stores nothing (an echo server)"
            },
            match &t.introduce {
                Ok(()) => String::new(),
                Err(e) => format!("; rejects INTRODUCE ({e}): the boot storm skips it"),
            }
        );
        targets.push(t);
    }
    Ok(targets)
}

/// Pins bench-socket, and every daemon whose process is known, as `pin` says; dropping what
/// it returns restores the daemons' previous affinity. `Err` (after saying why) if that
/// fails.
pub(crate) fn pin(pin: Pin, targets: &[Target]) -> Result<Vec<Pinned>, ExitCode> {
    let mut pinned = Vec::new();
    let cpus = match pin {
        Pin::Off => None,
        Pin::Cpus(c, d) => Some((c, d)),
        Pin::Auto => match daemon::allowed_cpus() {
            Ok(cpus) if cpus.len() >= 2 => Some((cpus[0], cpus[1])),
            Ok(_) => None,
            Err(e) => {
                eprintln!("bench-socket: cannot read the CPU affinity ({e}); not pinning");
                None
            }
        },
    };
    if let Some((client_cpu, daemon_cpu)) = cpus {
        if let Err(e) = daemon::pin_self(client_cpu) {
            eprintln!("bench-socket: cannot pin bench-socket to CPU {client_cpu}: {e}");
            return Err(ExitCode::FAILURE);
        }
        for t in targets {
            match t.pid {
                Some((pid, _)) => match daemon::Pinned::new(pid, daemon_cpu) {
                    Ok(p) => pinned.push(p),
                    Err(e) => {
                        eprintln!(
                            "bench-socket: cannot pin {} (pid {pid}) to CPU {daemon_cpu}: {e}",
                            t.name
                        );
                        return Err(ExitCode::FAILURE);
                    }
                },
                None => eprintln!(
                    "bench-socket: {}: process unknown, not pinned (give --pid)",
                    t.name
                ),
            }
        }
        eprintln!(
            "bench-socket: pinned to CPU {client_cpu}, daemons to CPU {daemon_cpu} \
             (--pin C,D to choose, --no-pin for none)"
        );
    }
    Ok(pinned)
}

/// Connects, learns whether the daemon stores what it is told and whether it accepts
/// `INTRODUCE`.
fn probe(cfg: &Config, t: &mut Target) -> R<()> {
    let mut c = t.connect(cfg)?;
    let node = format!("{}/probe", cfg.root).into_bytes();
    let value = format!("probe-{:?}", Instant::now()).into_bytes();
    c.write(0, &node, &value)?;
    t.stores = c.read(0, &node)? == value;
    c.rm_if_present(0, &cfg.root.clone().into_bytes())?;
    // An interrupted earlier run may have left the domain introduced.
    match c.release(PROBE_DOMID) {
        Err(e) if e.is_fatal() => return Err(e),
        _ => {}
    }
    t.introduce = match c.introduce(PROBE_DOMID, RING_GFN, RING_EVTCHN) {
        Ok(()) => match c.release(PROBE_DOMID) {
            Ok(()) => Ok(()),
            Err(e) if !e.is_fatal() => Ok(()),
            Err(e) => return Err(e),
        },
        Err(ClientError::Xen(name)) => Err(name),
        Err(e) => return Err(e),
    };
    Ok(())
}

/// Whether the daemon answers a READ of `/` on a new connection.
pub(crate) fn responsive(cfg: &Config, t: &Target) -> bool {
    t.connect(cfg)
        .and_then(|mut c| c.read(0, b"/").map(drop))
        .is_ok()
}

/// Reads and writes a node for a moment (results discarded).
pub(crate) fn warm_up(cfg: &Config, t: &Target) -> R<()> {
    let mut c = t.connect(cfg)?;
    let node = format!("{}/warm-up", cfg.root).into_bytes();
    let start = Instant::now();
    while start.elapsed() < cfg.warmup {
        c.write(0, &node, b"1")?;
        c.read(0, &node)?;
    }
    c.rm_if_present(0, &node)
}

/// Removes `/bench` if this run left it empty.
pub(crate) fn tidy(cfg: &Config, t: &Target) -> R<()> {
    let mut c = t.connect(cfg)?;
    c.rm_if_present(0, cfg.root.as_bytes())?;
    if t.stores
        && c.directory(0, b"/bench")
            .map(|d| d.is_empty())
            .unwrap_or(false)
    {
        c.rm_if_present(0, b"/bench")?;
    }
    Ok(())
}
