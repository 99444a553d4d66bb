//! The workloads: what each measures and in which units, and how a run of it goes on one
//! daemon (one file per workload, beside the requests and libxl's writes they share).

mod boot_storm;
mod clients;
mod inflight;
mod libxl;
mod memory;
mod requests;
mod rm_guest;
mod single;
mod watch_fire;

use std::time::{Duration, Instant};

use xs_bench::Unit;

use crate::config::{Config, R, Target};

pub(crate) use boot_storm::{PROBE_DOMID, RING_EVTCHN, RING_GFN};
pub(crate) use memory::{MEM_DOMAINS, MEM_NODES};
pub(crate) use single::SingleOp;

use boot_storm::BootStorm;
use clients::Clients;
use inflight::Inflight;
use memory::Memory;
use rm_guest::RmGuest;
use single::Single;
use watch_fire::WatchFire;

/// A workload's state on one daemon, set up once and run several times.
pub(crate) trait Bench: Send {
    /// One run of about `budget`: the values of the workload's metrics, in order.
    fn run(&mut self, budget: Duration) -> R<Vec<f64>>;
    /// Removes what the setup and the runs created.
    fn finish(&mut self) -> R<()>;
}

/// Sets a workload up on a daemon.
pub(crate) type Setup = fn(&Config, &Target) -> R<Box<dyn Bench>>;

/// A workload: its metrics, how it is run, and its setup.
pub(crate) struct Workload {
    pub(crate) name: &'static str,
    pub(crate) metrics: Vec<(String, Unit)>,
    /// Warm-up plus `runs` runs (true), or a single run (false).
    pub(crate) repeated: bool,
    /// At most this many runs (for long workloads).
    pub(crate) max_runs: usize,
    /// Meaningless on a daemon that stores nothing.
    pub(crate) needs_store: bool,
    /// Needs to know the daemon's process.
    pub(crate) needs_pid: bool,
    pub(crate) setup: Setup,
}

/// The metrics of a latency workload: p50 and p99 in µs.
fn latency_metrics(name: &str) -> Vec<(String, Unit)> {
    vec![
        (format!("{name}_p50"), Unit::Us),
        (format!("{name}_p99"), Unit::Us),
    ]
}

/// Every workload, in the order they run.
pub(crate) fn workloads(cfg: &Config) -> Vec<Workload> {
    let mut w = Vec::new();
    for op in SingleOp::ALL {
        w.push(Workload {
            name: op.name(),
            metrics: latency_metrics(op.name()),
            repeated: true,
            max_runs: usize::MAX,
            needs_store: false,
            needs_pid: false,
            setup: match op {
                SingleOp::Read1 => |c, t| Single::setup(c, t, SingleOp::Read1),
                SingleOp::Read2000 => |c, t| Single::setup(c, t, SingleOp::Read2000),
                SingleOp::Write1 => |c, t| Single::setup(c, t, SingleOp::Write1),
                SingleOp::Write2000 => |c, t| Single::setup(c, t, SingleOp::Write2000),
                SingleOp::Directory10 => |c, t| Single::setup(c, t, SingleOp::Directory10),
                SingleOp::GetPerms => |c, t| Single::setup(c, t, SingleOp::GetPerms),
                SingleOp::RmNode => |c, t| Single::setup(c, t, SingleOp::RmNode),
                SingleOp::RmDir10 => |c, t| Single::setup(c, t, SingleOp::RmDir10),
                SingleOp::TxEmpty => |c, t| Single::setup(c, t, SingleOp::TxEmpty),
                SingleOp::TxWrite => |c, t| Single::setup(c, t, SingleOp::TxWrite),
                SingleOp::TxRmw => |c, t| Single::setup(c, t, SingleOp::TxRmw),
            },
        });
    }
    w.push(Workload {
        name: "watch_fire",
        metrics: latency_metrics("watch_fire"),
        repeated: true,
        max_runs: usize::MAX,
        needs_store: false,
        needs_pid: false,
        setup: WatchFire::setup,
    });
    w.push(Workload {
        name: "rm_guest_64",
        metrics: latency_metrics("rm_guest_64"),
        repeated: true,
        max_runs: usize::MAX,
        needs_store: true,
        needs_pid: false,
        setup: RmGuest::setup,
    });
    w.push(Workload {
        name: "read_32_inflight",
        metrics: vec![("read_32_inflight".into(), Unit::OpsPerSec)],
        repeated: true,
        max_runs: usize::MAX,
        needs_store: false,
        needs_pid: false,
        setup: Inflight::setup,
    });
    for (name, clients, write) in [
        ("reads_1_client", 1, false),
        ("reads_4_clients", 4, false),
        ("writes_1_client", 1, true),
        ("writes_4_clients", 4, true),
    ] {
        w.push(Workload {
            name,
            metrics: vec![(name.into(), Unit::OpsPerSec)],
            repeated: true,
            max_runs: usize::MAX,
            needs_store: false,
            needs_pid: false,
            setup: match (clients, write) {
                (1, false) => |c, t| Clients::setup(c, t, 1, false),
                (1, true) => |c, t| Clients::setup(c, t, 1, true),
                (_, false) => |c, t| Clients::setup(c, t, 4, false),
                (_, true) => |c, t| Clients::setup(c, t, 4, true),
            },
        });
    }
    w.push(Workload {
        name: "boot_storm",
        metrics: vec![
            ("boot_storm".into(), Unit::Ms),
            ("boot_storm_eagain".into(), Unit::Count),
            ("boot_storm_events".into(), Unit::Count),
        ],
        repeated: true,
        max_runs: if cfg.quick { 3 } else { 5 },
        needs_store: false,
        needs_pid: false,
        setup: BootStorm::setup,
    });
    // Last: after populating and removing these 50k nodes C xenstored answers markedly slower
    // (writes about 2x, RM of a subtree about 8x, measured here), which would distort every
    // workload after it.
    w.push(Workload {
        name: "memory",
        metrics: vec![
            ("rss_base".into(), Unit::Kb),
            (format!("rss_{MEM_DOMAINS}x{MEM_NODES}"), Unit::Kb),
            (format!("populate_{MEM_DOMAINS}x{MEM_NODES}"), Unit::Ms),
        ],
        repeated: false,
        max_runs: usize::MAX,
        needs_store: true,
        needs_pid: true,
        setup: Memory::setup,
    });
    w
}

/// Collects latency samples for about `budget` (at least a few) and returns p50 and p99 in µs.
fn latencies(budget: Duration, mut sample: impl FnMut() -> R<Duration>) -> R<Vec<f64>> {
    let start = Instant::now();
    let mut ns: Vec<u64> = Vec::with_capacity(4096);
    while ns.len() < 8 || (start.elapsed() < budget && ns.len() < 2_000_000) {
        let d = sample()?;
        ns.push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }
    ns.sort_unstable();
    // Nearest rank.
    let pct = |p: usize| ns[(ns.len() * p).div_ceil(100).saturating_sub(1)] as f64 / 1000.0;
    Ok(vec![pct(50), pct(99)])
}
