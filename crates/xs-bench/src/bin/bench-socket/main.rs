//! `bench-socket`: a load generator that speaks the XenStore wire protocol to any xenstored
//! Unix socket, and measures several daemons side by side.
//!
//! Every workload is run on every daemon in turn, round-robin and repeated, and the median of
//! the runs counts, so that the noise of a shared machine affects all daemons alike. Prints
//! `bench <name>@<socket name> <value> <unit>` lines on stdout; progress, a side-by-side table
//! with ratios, and the goal checks on stderr.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use xs_bench::client::{self, Client, ClientError, MsgType, push_strings, push_write};
use xs_bench::daemon::{self, ANCHOR_KINDS, Anchors, PidSource};
use xs_bench::harness::median;
use xs_bench::host::{self, Base, Entry, Perms, TEMPLATE, Value};

const HELP: &str = "\
bench-socket: XenStore daemons measured through their Unix sockets, side by side.

usage: bench-socket [--socket NAME=PATH ...] [--start-anchors] [--pid NAME=PID ...]
                    [--quick] [--filter SUBSTR] [--baseline NAME] [--timeout SECS]
                    [--runs N] [--boot-guests N] [--boot-toolstacks N] [--anchors DIR]
                    [--pin C,D | --no-pin]

  --socket NAME=PATH   measure the daemon serving PATH, reported as NAME (repeatable)
  --start-anchors      also start cxenstored, oxenstored and the echo floor with
                       DIR/start-anchor.sh on temporary sockets (measured first, under
                       those names) and stop them at the end
  --anchors DIR        where start-anchor.sh lives (default $XS_ANCHORS or
                       /work/shared/anchors)
  --pid NAME=PID       the process of socket NAME, for memory figures (default: the pid in
                       PATH.pid, else the process holding the listening socket)
  --quick              short runs (a smoke test: under a minute for four daemons)
  --filter SUBSTR      run only the workloads whose name (or a metric's) contains SUBSTR
  --baseline NAME      the socket ratios are computed against (default: the first)
  --timeout SECS       give up on a daemon that does not answer within SECS (default 10)
  --runs N             measured runs per workload and daemon (default 25 of 40 ms;
                       --quick 5 of 20 ms; the boot storm at most 5, --quick 3)
  --boot-guests N      guests of the boot storm (default 100; --quick 20)
  --boot-toolstacks N  parallel toolstack connections of the boot storm (default 4)
  --pin C,D            run bench-socket on CPU C and every daemon (whose process is known)
                       on CPU D; default: the first two CPUs this process may use, if there
                       are two or more. Each daemon's previous affinity is restored at the
                       end. (On a VM a same-core round trip is about half a cross-core one,
                       and unpinned the scheduler flips between the two every few seconds.)
  --no-pin             leave placement to the scheduler
  --help               this text

Output: `bench <metric>@<NAME> <value> <unit>` on stdout; progress, the side-by-side table
(ratios against the baseline) and the issue's goals (for sockets named xs, cxenstored,
oxenstored, echo) on stderr. Exit status 1 if a workload failed on some daemon.

Workloads (one connection, one request in flight unless stated; latencies p50 and p99):
  read_1 read_2000 write_1 write_2000 directory_10 get_perms rm_node rm_dir_10
  tx_empty tx_write tx_rmw      test-xenstore's operations (us per operation; tx_write is
                                TRANSACTION_START + WRITE + commit, tx_rmw is test-xenstore's
                                `ta rmw`: 6 round trips)
  watch_fire                    a WRITE on one connection to the WATCH_EVENT on another (us)
  rm_guest_64                   RM of a guest's 64-node /local/domain/<d> (us)
  read_32_inflight              READs with 32 requests in flight on one connection (ops/s)
  reads_1_client reads_4_clients writes_1_client writes_4_clients
                                1 or 4 connections (threads), one request in flight each,
                                aggregate ops/s
  boot_storm                    guests created libxl-style by parallel toolstack connections
                                (domain nodes in a transaction, INTRODUCE, then a vif and a
                                vbd, each in its own transaction, retried on EAGAIN) while a
                                backend connection per device kind watches its backend
                                directory; time until the last event arrived (ms), EAGAIN
                                retries and events received (count)
  memory                        (last, once) RSS of the daemon process before (rss_base) and
                                after (rss_1000x50) writing 1000 domains x 50 nodes (KB), and
                                the time that population took with 64 requests in flight (ms);
                                the nodes are removed again afterwards. Measured after the other
                                workloads (the same history for every daemon): with --filter
                                memory alone, the daemons' RSS is lower
Daemons that store nothing (the echo floor; detected by writing and reading back a node)
skip rm_guest_64 and memory; so do daemons whose process is unknown for memory.
";

// ----- configuration ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Config {
    quick: bool,
    filter: Option<String>,
    timeout: Duration,
    run_time: Duration,
    warmup: Duration,
    runs: usize,
    boot_guests: u32,
    boot_toolstacks: usize,
    /// Where this process's scratch nodes live.
    root: String,
}

/// A daemon under test.
#[derive(Debug)]
struct Target {
    name: String,
    path: PathBuf,
    pid: Option<(u32, PidSource)>,
    /// Whether it stores what is written (false for the echo floor).
    stores: bool,
    /// Whether it accepts `INTRODUCE` from a socket client (`Err` has the error reply).
    introduce: Result<(), String>,
    /// Why it is no longer measured.
    dead: Option<String>,
}

impl Target {
    fn connect(&self, cfg: &Config) -> R<Client> {
        Client::connect(&self.path, cfg.timeout)
    }
}

type R<T> = Result<T, ClientError>;

fn other(message: impl Into<String>) -> ClientError {
    ClientError::Protocol(message.into())
}

/// Whether an error means the daemon (or our connection to it) is gone.
fn kills(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Timeout | ClientError::Closed | ClientError::Io(_)
    )
}

// ----- results ---------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Unit {
    Us,
    OpsPerSec,
    Ms,
    Kb,
    Count,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Us => "us",
            Unit::OpsPerSec => "ops/s",
            Unit::Ms => "ms",
            Unit::Kb => "KB",
            Unit::Count => "count",
        }
    }

    fn format(self, v: f64) -> String {
        match self {
            Unit::Us | Unit::Ms => format!("{v:.1}"),
            Unit::OpsPerSec | Unit::Kb | Unit::Count => format!("{v:.0}"),
        }
    }

    /// Whether a bigger value is better (`None`: neither, e.g. a count).
    fn higher_is_better(self) -> Option<bool> {
        match self {
            Unit::OpsPerSec => Some(true),
            Unit::Us | Unit::Ms | Unit::Kb => Some(false),
            Unit::Count => None,
        }
    }
}

/// One metric's values, one per target (`None`: not measured or failed).
#[derive(Debug)]
struct Row {
    metric: String,
    unit: Unit,
    values: Vec<Option<f64>>,
}

// ----- workloads -------------------------------------------------------------------------------

/// A workload's state on one daemon, set up once and run several times.
trait Bench: Send {
    /// One run of about `budget`: the values of the workload's metrics, in order.
    fn run(&mut self, budget: Duration) -> R<Vec<f64>>;
    /// Removes what the setup and the runs created.
    fn finish(&mut self) -> R<()>;
}

type Setup = fn(&Config, &Target) -> R<Box<dyn Bench>>;

struct Workload {
    name: &'static str,
    metrics: Vec<(String, Unit)>,
    /// Warm-up plus `runs` runs (true), or a single run (false).
    repeated: bool,
    /// At most this many runs (for long workloads).
    max_runs: usize,
    /// Meaningless on a daemon that stores nothing.
    needs_store: bool,
    /// Needs to know the daemon's process.
    needs_pid: bool,
    setup: Setup,
}

fn latency_metrics(name: &str) -> Vec<(String, Unit)> {
    vec![
        (format!("{name}_p50"), Unit::Us),
        (format!("{name}_p99"), Unit::Us),
    ]
}

/// Number of nodes of a guest's home directory in the template (64).
fn home_entries() -> Vec<&'static Entry> {
    TEMPLATE.iter().filter(|e| e.base == Base::Home).collect()
}

fn workloads(cfg: &Config) -> Vec<Workload> {
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

/// Sends `reqs` with up to `window` in flight; an error reply fails unless its name is in
/// `tolerate` (`"*"` tolerates any). Returns the number of tolerated errors.
fn batch(c: &mut Client, window: usize, reqs: &[(MsgType, Vec<u8>)], tolerate: &[&str]) -> R<u64> {
    let mut tolerated = 0u64;
    let mut failure: Option<ClientError> = None;
    c.pipeline(
        window,
        |i, payload| {
            let (t, p) = reqs.get(i as usize)?;
            payload.extend_from_slice(p);
            Some((*t, 0))
        },
        |i, reply| {
            if let Some(name) = reply.error() {
                if tolerate.contains(&name.as_str()) || tolerate.contains(&"*") {
                    tolerated += 1;
                } else if failure.is_none() {
                    let (t, p) = &reqs[i as usize];
                    let path = p.split(|&b| b == 0).next().unwrap_or_default();
                    failure = Some(other(format!(
                        "request type {t} on {} failed: {name}",
                        String::from_utf8_lossy(path)
                    )));
                }
            }
            Ok(())
        },
    )?;
    match failure {
        Some(e) => Err(e),
        None => Ok(tolerated),
    }
}

fn req_path(t: MsgType, path: &[u8]) -> (MsgType, Vec<u8>) {
    let mut p = Vec::with_capacity(path.len() + 1);
    push_strings(&mut p, &[path]);
    (t, p)
}

fn req_write(path: &[u8], value: &[u8]) -> (MsgType, Vec<u8>) {
    let mut p = Vec::with_capacity(path.len() + 1 + value.len());
    push_write(&mut p, path, value);
    (MsgType::Write, p)
}

fn req_perms(path: &[u8], perms: &[String]) -> (MsgType, Vec<u8>) {
    let mut p = Vec::new();
    push_strings(&mut p, &[path]);
    for perm in perms {
        push_strings(&mut p, &[perm.as_bytes()]);
    }
    (MsgType::SetPerms, p)
}

/// libxl's permission lists for guest `d`, as wire strings.
fn perm_strings(perms: Perms, d: u32) -> Option<Vec<String>> {
    match perms {
        Perms::Inherit => None,
        Perms::Toolstack => Some(vec!["n0".into(), format!("r{d}")]),
        Perms::Guest => Some(vec![format!("n{d}")]),
        Perms::Frontend => Some(vec![format!("n{d}"), "r0".into()]),
    }
}

/// The requests that create `entries` of guest `d` (mkdir or write, then set_perms where the
/// template wants other permissions than inherited), parents first.
fn guest_requests(entries: &[&Entry], d: u32, out: &mut Vec<(MsgType, Vec<u8>)>) {
    let d16 = u16::try_from(d).unwrap_or(u16::MAX);
    let (mut path, mut value) = (Vec::new(), Vec::new());
    for e in entries {
        path.clear();
        host::push_path(e, d16, &mut path);
        if e.value == Value::Dir {
            out.push(req_path(MsgType::Mkdir, &path));
        } else {
            value.clear();
            host::push_value(e.value, d16, &mut value);
            out.push(req_write(&path, &value));
        }
        if let Some(perms) = perm_strings(e.perms, d) {
            out.push(req_perms(&path, &perms));
        }
    }
}

// --- test-xenstore's single operations

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SingleOp {
    Read1,
    Read2000,
    Write1,
    Write2000,
    Directory10,
    GetPerms,
    RmNode,
    RmDir10,
    TxEmpty,
    TxWrite,
    TxRmw,
}

impl SingleOp {
    const ALL: [SingleOp; 11] = [
        SingleOp::Read1,
        SingleOp::Read2000,
        SingleOp::Write1,
        SingleOp::Write2000,
        SingleOp::Directory10,
        SingleOp::GetPerms,
        SingleOp::RmNode,
        SingleOp::RmDir10,
        SingleOp::TxEmpty,
        SingleOp::TxWrite,
        SingleOp::TxRmw,
    ];

    fn name(self) -> &'static str {
        match self {
            SingleOp::Read1 => "read_1",
            SingleOp::Read2000 => "read_2000",
            SingleOp::Write1 => "write_1",
            SingleOp::Write2000 => "write_2000",
            SingleOp::Directory10 => "directory_10",
            SingleOp::GetPerms => "get_perms",
            SingleOp::RmNode => "rm_node",
            SingleOp::RmDir10 => "rm_dir_10",
            SingleOp::TxEmpty => "tx_empty",
            SingleOp::TxWrite => "tx_write",
            SingleOp::TxRmw => "tx_rmw",
        }
    }
}

/// test-xenstore's ten nodes `a`..`j` below its directory.
const CHILDREN: &[u8; 10] = b"abcdefghij";

struct Single {
    c: Client,
    op: SingleOp,
    /// This workload's directory.
    dir: Vec<u8>,
    /// The node read, written or removed.
    node: Vec<u8>,
    value: Vec<u8>,
    /// Requests creating `dir`'s ten children.
    children: Vec<(MsgType, Vec<u8>)>,
}

impl Single {
    fn setup(cfg: &Config, t: &Target, op: SingleOp) -> R<Box<dyn Bench>> {
        let mut c = t.connect(cfg)?;
        let dir = format!("{}/{}", cfg.root, op.name()).into_bytes();
        let mut node = dir.clone();
        node.extend_from_slice(b"/a");
        c.rm_if_present(0, &dir)?;
        let value = match op {
            SingleOp::Read2000 | SingleOp::Write2000 => vec![b'a'; 2000],
            _ => vec![b'a'],
        };
        let children: Vec<(MsgType, Vec<u8>)> = CHILDREN
            .iter()
            .map(|&ch| {
                let mut p = dir.clone();
                p.extend_from_slice(&[b'/', ch]);
                req_write(&p, &[ch])
            })
            .collect();
        match op {
            SingleOp::Read1 | SingleOp::Read2000 | SingleOp::GetPerms | SingleOp::TxRmw => {
                c.write(0, &node, &value)?;
            }
            SingleOp::Directory10 => {
                batch(&mut c, 16, &children, &[])?;
            }
            _ => c.mkdir(0, &dir)?,
        }
        Ok(Box::new(Single {
            c,
            op,
            dir,
            node,
            value,
            children,
        }))
    }

    fn sample(&mut self) -> R<Duration> {
        let c = &mut self.c;
        let (node, value) = (&self.node[..], &self.value[..]);
        Ok(match self.op {
            SingleOp::Read1 | SingleOp::Read2000 => {
                let t = Instant::now();
                c.read(0, node)?;
                t.elapsed()
            }
            SingleOp::Write1 | SingleOp::Write2000 => {
                let t = Instant::now();
                c.write(0, node, value)?;
                t.elapsed()
            }
            SingleOp::Directory10 => {
                let t = Instant::now();
                c.directory(0, &self.dir)?;
                t.elapsed()
            }
            SingleOp::GetPerms => {
                let t = Instant::now();
                c.get_perms(0, node)?;
                t.elapsed()
            }
            SingleOp::RmNode => {
                c.write(0, node, value)?;
                let t = Instant::now();
                c.rm(0, node)?;
                t.elapsed()
            }
            SingleOp::RmDir10 => {
                batch(c, 16, &self.children, &[])?;
                let t = Instant::now();
                c.rm(0, &self.dir)?;
                t.elapsed()
            }
            SingleOp::TxEmpty => {
                let t = Instant::now();
                let tx = c.tx_start()?;
                c.tx_end(tx, true)?;
                t.elapsed()
            }
            SingleOp::TxWrite => {
                let t = Instant::now();
                let tx = c.tx_start()?;
                c.write(tx, node, value)?;
                c.tx_end(tx, true)?;
                t.elapsed()
            }
            SingleOp::TxRmw => {
                // test-xenstore's `ta rmw`: its init writes "a" first (not timed).
                c.write(0, node, b"a")?;
                let t = Instant::now();
                let tx = c.tx_start()?;
                c.read(tx, node)?;
                c.write(tx, node, b"b")?;
                c.read(tx, node)?;
                c.read(0, node)?;
                c.tx_end(tx, true)?;
                t.elapsed()
            }
        })
    }
}

impl Bench for Single {
    fn run(&mut self, budget: Duration) -> R<Vec<f64>> {
        latencies(budget, || self.sample())
    }

    fn finish(&mut self) -> R<()> {
        self.c.rm_if_present(0, &self.dir)
    }
}

// --- watch fire latency

struct WatchFire {
    writer: Client,
    watcher: Client,
    dir: Vec<u8>,
    node: Vec<u8>,
    n: u64,
}

impl WatchFire {
    fn setup(cfg: &Config, t: &Target) -> R<Box<dyn Bench>> {
        let mut writer = t.connect(cfg)?;
        let mut watcher = t.connect(cfg)?;
        let dir = format!("{}/watch_fire", cfg.root).into_bytes();
        let mut node = dir.clone();
        node.extend_from_slice(b"/node");
        writer.rm_if_present(0, &dir)?;
        writer.write(0, &node, b"0")?;
        watcher.watch(&node, b"bench")?;
        // The initial event every WATCH fires.
        watcher.next_event()?;
        Ok(Box::new(WatchFire {
            writer,
            watcher,
            dir,
            node,
            n: 0,
        }))
    }
}

impl Bench for WatchFire {
    fn run(&mut self, budget: Duration) -> R<Vec<f64>> {
        let mut value = Vec::with_capacity(24);
        latencies(budget, || {
            self.n += 1;
            value.clear();
            value.extend_from_slice(self.n.to_string().as_bytes());
            let mut payload = Vec::with_capacity(64);
            push_write(&mut payload, &self.node, &value);
            let t = Instant::now();
            let req = self.writer.queue(
                MsgType::Write,
                0,
                client::Payload {
                    strings: &[],
                    tail: &payload,
                },
            )?;
            self.writer.flush()?;
            loop {
                let ev = self.watcher.next_event()?;
                if ev.path == self.node {
                    break;
                }
            }
            let d = t.elapsed();
            self.writer.recv_reply(req)?.ok()?;
            Ok(d)
        })
    }

    fn finish(&mut self) -> R<()> {
        self.watcher.unwatch(&self.node, b"bench")?;
        self.writer.rm_if_present(0, &self.dir)
    }
}

// --- removal of a guest's subtree

/// The guest whose home is built and removed (exists for the shim; never introduced).
const RM_GUEST_DOMID: u32 = 30001;

struct RmGuest {
    c: Client,
    home: Vec<u8>,
    build: Vec<(MsgType, Vec<u8>)>,
}

impl RmGuest {
    fn setup(cfg: &Config, t: &Target) -> R<Box<dyn Bench>> {
        let mut c = t.connect(cfg)?;
        let home = format!("/local/domain/{RM_GUEST_DOMID}").into_bytes();
        c.rm_if_present(0, &home)?;
        let mut build = Vec::new();
        guest_requests(&home_entries(), RM_GUEST_DOMID, &mut build);
        Ok(Box::new(RmGuest { c, home, build }))
    }
}

impl Bench for RmGuest {
    fn run(&mut self, budget: Duration) -> R<Vec<f64>> {
        latencies(budget, || {
            batch(&mut self.c, 32, &self.build, &[])?;
            let t = Instant::now();
            self.c.rm(0, &self.home)?;
            Ok(t.elapsed())
        })
    }

    fn finish(&mut self) -> R<()> {
        self.c.rm_if_present(0, &self.home)
    }
}

// --- 32 reads in flight

struct Inflight {
    c: Client,
    dir: Vec<u8>,
    request: Vec<u8>,
}

impl Inflight {
    fn setup(cfg: &Config, t: &Target) -> R<Box<dyn Bench>> {
        let mut c = t.connect(cfg)?;
        let dir = format!("{}/read_32_inflight", cfg.root).into_bytes();
        let mut node = dir.clone();
        node.extend_from_slice(b"/a");
        c.rm_if_present(0, &dir)?;
        c.write(0, &node, b"a")?;
        let mut request = Vec::new();
        push_strings(&mut request, &[&node]);
        Ok(Box::new(Inflight { c, dir, request }))
    }
}

impl Bench for Inflight {
    fn run(&mut self, budget: Duration) -> R<Vec<f64>> {
        let start = Instant::now();
        let mut stop = false;
        let mut failure = None;
        let request = &self.request;
        let ops = self.c.pipeline(
            32,
            |i, payload| {
                // Look at the clock every 32 requests.
                if i % 32 == 0 && start.elapsed() >= budget {
                    stop = true;
                }
                if stop {
                    return None;
                }
                payload.extend_from_slice(request);
                Some((MsgType::Read, 0))
            },
            |_, reply| {
                if let Some(e) = reply.error()
                    && failure.is_none()
                {
                    failure = Some(ClientError::Xen(e));
                }
                Ok(())
            },
        )?;
        let elapsed = start.elapsed();
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(vec![ops as f64 / elapsed.as_secs_f64()])
    }

    fn finish(&mut self) -> R<()> {
        self.c.rm_if_present(0, &self.dir)
    }
}

// --- concurrent clients

struct Clients {
    clients: Vec<Client>,
    nodes: Vec<Vec<u8>>,
    dir: Vec<u8>,
    write: bool,
}

impl Clients {
    fn setup(cfg: &Config, t: &Target, n: usize, write: bool) -> R<Box<dyn Bench>> {
        let dir = format!(
            "{}/{}_{n}",
            cfg.root,
            if write { "writes" } else { "reads" }
        )
        .into_bytes();
        let mut clients = Vec::with_capacity(n);
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let mut c = t.connect(cfg)?;
            if i == 0 {
                c.rm_if_present(0, &dir)?;
            }
            let mut node = dir.clone();
            node.extend_from_slice(format!("/c{i}").as_bytes());
            c.write(0, &node, b"1")?;
            clients.push(c);
            nodes.push(node);
        }
        Ok(Box::new(Clients {
            clients,
            nodes,
            dir,
            write,
        }))
    }
}

impl Bench for Clients {
    fn run(&mut self, budget: Duration) -> R<Vec<f64>> {
        let write = self.write;
        let barrier = Barrier::new(self.clients.len());
        let results: Vec<R<f64>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .clients
                .iter_mut()
                .zip(&self.nodes)
                .map(|(c, node)| {
                    let barrier = &barrier;
                    s.spawn(move || -> R<f64> {
                        barrier.wait();
                        let start = Instant::now();
                        let mut ops = 0u64;
                        while ops < 8 || start.elapsed() < budget {
                            if write {
                                c.write(0, node, b"1")?;
                            } else {
                                c.read(0, node)?;
                            }
                            ops += 1;
                        }
                        Ok(ops as f64 / start.elapsed().as_secs_f64())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(other("client thread panicked")))
                })
                .collect()
        });
        let mut total = 0.0;
        for r in results {
            total += r?;
        }
        Ok(vec![total])
    }

    fn finish(&mut self) -> R<()> {
        match self.clients.first_mut() {
            Some(c) => c.rm_if_present(0, &self.dir),
            None => Ok(()),
        }
    }
}

// --- boot storm

/// First domid of the boot storm's guests; each run takes the next `guests` domids.
const BOOT_FIRST_DOMID: u32 = 2001;
/// Domid used to learn whether a daemon accepts `INTRODUCE` from a socket client.
const PROBE_DOMID: u32 = 32700;
/// Frame number and event channel given in `INTRODUCE` (the shim maps any frame).
const RING_GFN: u64 = 0xfeffc;
const RING_EVTCHN: u32 = 1;
/// Give up on a transaction that conflicts this often (test-xenstore's MAX_TA_LOOPS).
const MAX_TX_ATTEMPTS: u32 = 100;
/// The device kinds, their device ids, and the backend directories watched.
const DEVICES: [(&str, u32); 2] = [("vif", 0), ("vbd", 51712)];

struct BootStorm {
    cfg: Config,
    path: PathBuf,
    control: Client,
    toolstacks: Vec<Client>,
    introduce: bool,
    runs: u32,
    sentinel: String,
}

impl BootStorm {
    fn setup(cfg: &Config, t: &Target) -> R<Box<dyn Bench>> {
        let control = t.connect(cfg)?;
        let toolstacks = (0..cfg.boot_toolstacks.max(1))
            .map(|_| t.connect(cfg))
            .collect::<R<Vec<_>>>()?;
        Ok(Box::new(BootStorm {
            cfg: cfg.clone(),
            path: t.path.clone(),
            control,
            toolstacks,
            introduce: t.introduce.is_ok(),
            runs: 0,
            sentinel: format!("bench-socket-{}", std::process::id()),
        }))
    }

    fn sentinel_path(&self, kind: &str) -> Vec<u8> {
        format!("/local/domain/0/backend/{kind}/{}", self.sentinel).into_bytes()
    }

    /// Removes (and releases) the guests `domids`: untimed, before a run (where anything may
    /// fail: `tolerate` is `["*"]`) and after it.
    fn cleanup(&mut self, domids: &[u32], tolerate: &[&str]) -> R<()> {
        let mut reqs = Vec::new();
        for &d in domids {
            reqs.push(req_path(
                MsgType::Rm,
                format!("/local/domain/{d}").as_bytes(),
            ));
            for (kind, _) in DEVICES {
                let be = format!("/local/domain/0/backend/{kind}/{d}");
                reqs.push(req_path(MsgType::Rm, be.as_bytes()));
            }
            reqs.push(req_path(MsgType::Rm, format!("/libxl/{d}").as_bytes()));
            reqs.push(req_path(MsgType::Rm, &vm_path(d)));
            if self.introduce {
                reqs.push(req_path(MsgType::Release, d.to_string().as_bytes()));
            }
        }
        for (kind, _) in DEVICES {
            reqs.push(req_path(MsgType::Rm, &self.sentinel_path(kind)));
        }
        batch(&mut self.control, 32, &reqs, tolerate).map(drop)
    }
}

fn vm_path(d: u32) -> Vec<u8> {
    let e = TEMPLATE
        .iter()
        .find(|e| e.base == Base::Vm && e.rel.is_empty());
    let mut p = Vec::new();
    if let Some(e) = e {
        host::push_path(e, u16::try_from(d).unwrap_or(u16::MAX), &mut p);
    }
    p
}

/// Runs `body` in a transaction until it commits; returns the number of EAGAIN retries.
fn transaction(c: &mut Client, mut body: impl FnMut(&mut Client, u32) -> R<()>) -> R<u64> {
    for attempt in 0..MAX_TX_ATTEMPTS {
        let tx = c.tx_start()?;
        match body(c, tx) {
            Ok(()) => {
                if c.tx_end(tx, true)? {
                    return Ok(u64::from(attempt));
                }
            }
            // Some daemons report the conflict before the commit.
            Err(e) if e.is_xen("EAGAIN") => {
                c.tx_end(tx, false)?;
            }
            Err(e) => {
                if !kills(&e) {
                    let _ = c.tx_end(tx, false);
                }
                return Err(e);
            }
        }
    }
    Err(other(format!(
        "transaction still conflicting after {MAX_TX_ATTEMPTS} attempts"
    )))
}

/// One request of a transaction body: `(type, payload)`; ENOENT tolerated for RM.
fn tx_requests(c: &mut Client, tx: u32, reqs: &[(MsgType, Vec<u8>)]) -> R<()> {
    for (t, p) in reqs {
        let payload = client::Payload {
            strings: &[],
            tail: p,
        };
        match c.call(*t, tx, payload) {
            Ok(_) => {}
            Err(e) if *t == MsgType::Rm && e.is_xen("ENOENT") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What libxl writes when it makes domain `d` (`libxl__domain_make`, simplified): its home
/// (without the device frontends), `/vm/<uuid>` and `/libxl/<d>`.
fn domain_make_requests(d: u32) -> Vec<(MsgType, Vec<u8>)> {
    let home = format!("/local/domain/{d}");
    let mut reqs = vec![req_path(MsgType::Rm, home.as_bytes())];
    let entries: Vec<&Entry> = TEMPLATE
        .iter()
        .filter(|e| {
            (e.base == Base::Home
                && !e.rel.starts_with("device/vif")
                && !e.rel.starts_with("device/vbd"))
                || e.base == Base::Vm
        })
        .collect();
    guest_requests(&entries, d, &mut reqs);
    let libxl = format!("/libxl/{d}");
    reqs.push(req_path(MsgType::Mkdir, libxl.as_bytes()));
    reqs.push(req_perms(libxl.as_bytes(), &["n0".into()]));
    reqs
}

/// What libxl writes to add device `devid` of `kind` to domain `d`
/// (`libxl__device_generic_add`): removes stale frontend and backend directories, creates
/// them with their permissions and fields, and records them under `/libxl/<d>`.
fn device_requests(d: u32, kind: &str, devid: u32) -> Vec<(MsgType, Vec<u8>)> {
    let fe = format!("/local/domain/{d}/device/{kind}/{devid}");
    let be = format!("/local/domain/0/backend/{kind}/{d}/{devid}");
    let mut reqs = vec![
        req_path(MsgType::Rm, fe.as_bytes()),
        req_path(MsgType::Rm, be.as_bytes()),
        req_path(MsgType::Mkdir, fe.as_bytes()),
        req_perms(fe.as_bytes(), &[format!("n{d}"), "r0".into()]),
        req_path(MsgType::Mkdir, be.as_bytes()),
        req_perms(be.as_bytes(), &["n0".into(), format!("r{d}")]),
    ];
    let mac = format!(
        "00:16:3e:{:02x}:{:02x}:{:02x}",
        (d >> 16) & 0x7f,
        (d >> 8) & 0xff,
        d & 0xff
    );
    let d_s = d.to_string();
    let devid_s = devid.to_string();
    let disk = format!("/dev/vg0/guest-{d:05}-disk");
    type Fields<'a> = Vec<(&'a str, &'a str)>;
    let (front, back): (Fields<'_>, Fields<'_>) = if kind == "vif" {
        (
            vec![
                ("backend", &be),
                ("backend-id", "0"),
                ("state", "1"),
                ("handle", &devid_s),
                ("mac", &mac),
            ],
            vec![
                ("frontend", &fe),
                ("frontend-id", &d_s),
                ("online", "1"),
                ("state", "1"),
                ("script", "/etc/xen/scripts/vif-bridge"),
                ("mac", &mac),
                ("bridge", "xenbr0"),
                ("handle", &devid_s),
                ("type", "vif"),
            ],
        )
    } else {
        (
            vec![
                ("backend", &be),
                ("backend-id", "0"),
                ("state", "1"),
                ("virtual-device", &devid_s),
                ("device-type", "disk"),
            ],
            vec![
                ("frontend", &fe),
                ("frontend-id", &d_s),
                ("online", "1"),
                ("removable", "0"),
                ("bootable", "1"),
                ("state", "1"),
                ("dev", "xvda"),
                ("type", "phy"),
                ("mode", "w"),
                ("device-type", "disk"),
                ("discard-enable", "1"),
                ("params", &disk),
                ("script", "/etc/xen/scripts/block"),
            ],
        )
    };
    for (base, fields) in [(&fe, &front), (&be, &back)] {
        for (k, v) in fields {
            reqs.push(req_write(format!("{base}/{k}").as_bytes(), v.as_bytes()));
        }
    }
    let libxl = format!("/libxl/{d}/device/{kind}/{devid}");
    reqs.push(req_write(
        format!("{libxl}/frontend").as_bytes(),
        fe.as_bytes(),
    ));
    reqs.push(req_write(
        format!("{libxl}/backend").as_bytes(),
        be.as_bytes(),
    ));
    reqs
}

/// One toolstack's share of the boot storm: its guests one after the other. Returns the
/// EAGAIN retries.
fn toolstack(c: &mut Client, guests: &[u32], introduce: bool) -> R<u64> {
    let mut retries = 0u64;
    for &d in guests {
        let make = domain_make_requests(d);
        retries += transaction(c, |c, tx| tx_requests(c, tx, &make))?;
        if introduce {
            c.introduce(d, RING_GFN, RING_EVTCHN)?;
        }
        for (kind, devid) in DEVICES {
            let reqs = device_requests(d, kind, devid);
            retries += transaction(c, |c, tx| tx_requests(c, tx, &reqs))?;
        }
    }
    Ok(retries)
}

/// A backend's watch on `/local/domain/0/backend/<kind>`: counts events until the sentinel's
/// arrives; returns the count and when the sentinel arrived.
fn backend_watcher(c: &mut Client, sentinel: &[u8]) -> R<(u64, Instant)> {
    let mut events = 0u64;
    loop {
        let ev = c.next_event()?;
        events += 1;
        if ev.path == sentinel {
            return Ok((events, Instant::now()));
        }
    }
}

impl Bench for BootStorm {
    fn run(&mut self, _budget: Duration) -> R<Vec<f64>> {
        let n = self.cfg.boot_guests;
        let first = BOOT_FIRST_DOMID + self.runs * n;
        self.runs += 1;
        if first + n > RM_GUEST_DOMID {
            return Err(other("boot storm: out of domids (too many runs or guests)"));
        }
        let domids: Vec<u32> = (first..first + n).collect();
        // Whatever an interrupted earlier run may have left.
        self.cleanup(&domids, &["*"])?;
        let k = self.toolstacks.len();
        let shares: Vec<Vec<u32>> = (0..k)
            .map(|i| domids.iter().copied().skip(i).step_by(k).collect())
            .collect();
        // The backends' connections, watching before the storm starts.
        let mut watchers = Vec::new();
        for (kind, _) in DEVICES {
            let mut w = Client::connect(&self.path, self.cfg.timeout)?;
            w.watch(
                format!("/local/domain/0/backend/{kind}").as_bytes(),
                kind.as_bytes(),
            )?;
            w.next_event()?;
            watchers.push((w, self.sentinel_path(kind)));
        }
        let introduce = self.introduce;
        let all = Arc::new(Barrier::new(k + watchers.len() + 1));
        let control = &mut self.control;
        let sentinels: Vec<Vec<u8>> = watchers.iter().map(|(_, s)| s.clone()).collect();
        let (start, tool_results, watch_results) = std::thread::scope(|s| {
            let watch_handles: Vec<_> = watchers
                .iter_mut()
                .map(|(w, sentinel)| {
                    let all = Arc::clone(&all);
                    s.spawn(move || {
                        all.wait();
                        backend_watcher(w, sentinel)
                    })
                })
                .collect();
            let tool_handles: Vec<_> = self
                .toolstacks
                .iter_mut()
                .zip(&shares)
                .map(|(c, share)| {
                    let all = Arc::clone(&all);
                    s.spawn(move || {
                        all.wait();
                        toolstack(c, share, introduce)
                    })
                })
                .collect();
            all.wait();
            let start = Instant::now();
            let tool_results: Vec<R<u64>> = tool_handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(other("toolstack panicked")))
                })
                .collect();
            // The sentinels end the watchers (also after a failure, so that they return).
            let mut sentinel_result = Ok(());
            for s in &sentinels {
                if let Err(e) = control.write(0, s, b"done") {
                    sentinel_result = Err(e);
                    break;
                }
            }
            let watch_results: Vec<R<(u64, Instant)>> = match sentinel_result {
                Ok(()) => watch_handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err(other("watcher panicked"))))
                    .collect(),
                Err(e) => {
                    // Without the sentinel the watchers end by their read timeout.
                    for h in watch_handles {
                        let _ = h.join();
                    }
                    vec![Err(e)]
                }
            };
            (start, tool_results, watch_results)
        });
        drop(watchers);
        let mut retries = 0u64;
        let mut failure = None;
        for r in tool_results {
            match r {
                Ok(n) => retries += n,
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        let mut end = start;
        let mut events = 0u64;
        for r in watch_results {
            match r {
                Ok((n, t)) => {
                    events += n;
                    end = end.max(t);
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        let cleanup = self.cleanup(&domids, &["ENOENT"]);
        if let Some(e) = failure {
            return Err(e);
        }
        cleanup?;
        let ms = end.duration_since(start).as_secs_f64() * 1e3;
        Ok(vec![ms, retries as f64, events as f64])
    }

    fn finish(&mut self) -> R<()> {
        Ok(())
    }
}

// --- memory

const MEM_DOMAINS: u32 = 1000;
const MEM_NODES: usize = 50;
const MEM_FIRST_DOMID: u32 = 1;

struct Memory {
    c: Client,
    pid: u32,
}

impl Memory {
    fn setup(cfg: &Config, t: &Target) -> R<Box<dyn Bench>> {
        let Some((pid, _)) = t.pid else {
            return Err(other(
                "no process known for this socket (give --pid NAME=PID or write PATH.pid)",
            ));
        };
        Ok(Box::new(Memory {
            c: t.connect(cfg)?,
            pid,
        }))
    }

    fn rss(&self) -> R<f64> {
        daemon::memory_kb(self.pid)
            .map(|(rss, _)| rss as f64)
            .map_err(ClientError::Io)
    }
}

impl Bench for Memory {
    fn run(&mut self, _budget: Duration) -> R<Vec<f64>> {
        let entries: Vec<&Entry> = home_entries().into_iter().take(MEM_NODES).collect();
        let domids = MEM_FIRST_DOMID..MEM_FIRST_DOMID + MEM_DOMAINS;
        let mut reqs = Vec::new();
        for d in domids.clone() {
            reqs.push(req_path(
                MsgType::Rm,
                format!("/local/domain/{d}").as_bytes(),
            ));
        }
        batch(&mut self.c, 64, &reqs, &["ENOENT"])?;
        let removal = std::mem::take(&mut reqs);
        for d in domids {
            guest_requests(&entries, d, &mut reqs);
        }
        let before = self.rss()?;
        let t = Instant::now();
        batch(&mut self.c, 64, &reqs, &[])?;
        let populate = t.elapsed().as_secs_f64() * 1e3;
        let after = self.rss()?;
        batch(&mut self.c, 64, &removal, &["ENOENT"])?;
        Ok(vec![before, after, populate])
    }

    fn finish(&mut self) -> R<()> {
        Ok(())
    }
}

// ----- the runner ------------------------------------------------------------------------------

fn wanted(cfg: &Config, w: &Workload) -> bool {
    match &cfg.filter {
        None => true,
        Some(f) => {
            w.name.contains(f.as_str()) || w.metrics.iter().any(|(m, _)| m.contains(f.as_str()))
        }
    }
}

/// Runs `w` on every live target (interleaved) and returns its rows.
fn run_workload(
    cfg: &Config,
    targets: &mut [Target],
    w: &Workload,
    failures: &mut u32,
) -> Vec<Row> {
    let n = targets.len();
    let mut rows: Vec<Row> = w
        .metrics
        .iter()
        .map(|(m, u)| Row {
            metric: m.clone(),
            unit: *u,
            values: vec![None; n],
        })
        .collect();
    let started = Instant::now();
    let mut fail = |targets: &mut [Target], i: usize, stage: &str, e: ClientError| {
        eprintln!(
            "bench-socket: {} on {}: {stage} failed: {e}",
            w.name, targets[i].name
        );
        *failures += 1;
        // A timeout may be a missing watch event rather than a daemon gone silent: only a
        // daemon that also fails a fresh READ is given up.
        if kills(&e) && !responsive(cfg, &targets[i]) {
            targets[i].dead = Some(format!("{} {stage}: {e}", w.name));
        }
    };
    let mut states: Vec<Option<Box<dyn Bench>>> = Vec::with_capacity(n);
    for i in 0..n {
        let t = &targets[i];
        if t.dead.is_some() || (w.needs_store && !t.stores) || (w.needs_pid && t.pid.is_none()) {
            states.push(None);
            continue;
        }
        match (w.setup)(cfg, t) {
            Ok(s) => states.push(Some(s)),
            Err(e) => {
                fail(targets, i, "setup", e);
                states.push(None);
            }
        }
    }
    let runs = if w.repeated {
        cfg.runs.min(w.max_runs)
    } else {
        1
    };
    let mut samples: Vec<Vec<Vec<f64>>> = vec![Vec::new(); n];
    let mut passes: Vec<Option<Duration>> = Vec::new();
    if w.repeated {
        passes.push(None); // warm-up
    }
    passes.extend(std::iter::repeat_n(Some(cfg.run_time), runs));
    for (pass, budget) in passes.iter().enumerate() {
        for k in 0..n {
            // Rotate who goes first, so that no daemon always follows the same one.
            let i = (k + pass) % n;
            let Some(state) = states[i].as_mut() else {
                continue;
            };
            match state.run(budget.unwrap_or(cfg.warmup)) {
                Ok(values) => {
                    if budget.is_some() {
                        samples[i].push(values);
                    }
                }
                Err(e) => {
                    fail(targets, i, "run", e);
                    states[i] = None;
                    samples[i].clear();
                }
            }
        }
    }
    for (i, state) in states.iter_mut().enumerate() {
        if let Some(mut s) = state.take()
            && let Err(e) = s.finish()
        {
            fail(targets, i, "cleanup", e);
        }
    }
    for (i, t) in targets.iter().enumerate() {
        if samples[i].is_empty() {
            continue;
        }
        for (m, row) in rows.iter_mut().enumerate() {
            let mut vals: Vec<f64> = samples[i]
                .iter()
                .filter_map(|v| v.get(m).copied())
                .collect();
            let med = median(&mut vals);
            row.values[i] = Some(med);
            println!(
                "bench {}@{} {} {}",
                row.metric,
                t.name,
                row.unit.format(med),
                row.unit.as_str()
            );
            if vals.len() > 1 {
                eprintln!(
                    "  {}@{}: {} {} (runs {})",
                    row.metric,
                    t.name,
                    row.unit.format(med),
                    row.unit.as_str(),
                    vals.iter()
                        .map(|v| row.unit.format(*v))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
        }
    }
    eprintln!(
        "  [{} took {:.1} s]",
        w.name,
        started.elapsed().as_secs_f64()
    );
    rows
}

// ----- reporting -------------------------------------------------------------------------------

fn print_table(targets: &[Target], rows: &[Row], base: usize) {
    if rows.is_empty() {
        return;
    }
    let mw = rows
        .iter()
        .map(|r| r.metric.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let cw = targets
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(0)
        .max(18);
    let mut head = format!("{:mw$}  {:5}", "metric", "unit");
    for t in targets {
        head.push_str(&format!("  {:>cw$}", t.name));
    }
    eprintln!(
        "\nside by side (ratio: value / value of {}):",
        targets[base].name
    );
    eprintln!("{head}");
    for r in rows {
        let mut line = format!("{:mw$}  {:5}", r.metric, r.unit.as_str());
        for (i, v) in r.values.iter().enumerate() {
            let cell = match (v, r.values[base]) {
                (None, _) => "-".to_string(),
                (Some(v), Some(b)) if i != base && b != 0.0 => {
                    format!("{} ({:.2}x)", r.unit.format(*v), v / b)
                }
                (Some(v), _) => r.unit.format(*v),
            };
            line.push_str(&format!("  {cell:>cw$}"));
        }
        eprintln!("{line}");
    }
}

fn value(rows: &[Row], targets: &[Target], metric: &str, name: &str) -> Option<f64> {
    let i = targets.iter().position(|t| t.name == name)?;
    rows.iter().find(|r| r.metric == metric)?.values[i]
}

/// The goals, for the sockets named `xs`, `cxenstored`, `oxenstored`, `echo`.
fn goals(targets: &[Target], rows: &[Row]) {
    if !targets.iter().any(|t| t.name == "xs") {
        return;
    }
    let v = |metric: &str, name: &str| value(rows, targets, metric, name);
    let mut lines = Vec::new();
    let mut check = |what: String, ok: bool| {
        lines.push(format!("  [{}] {what}", if ok { "PASS" } else { "FAIL" }));
    };
    // Single-request latency p50 <= 1.2x the echo floor.
    for op in SingleOp::ALL {
        let m = format!("{}_p50", op.name());
        if let (Some(x), Some(e)) = (v(&m, "xs"), v(&m, "echo")) {
            check(
                format!(
                    "{m}: xs {x:.1} us <= 1.2 x echo {e:.1} us = {:.1} us",
                    1.2 * e
                ),
                x <= 1.2 * e,
            );
        }
    }
    if let (Some(x), Some(e)) = (v("watch_fire_p50", "xs"), v("watch_fire_p50", "echo")) {
        check(
            format!(
                "watch_fire_p50: xs {x:.1} us <= 1.2 x echo {e:.1} us = {:.1} us",
                1.2 * e
            ),
            x <= 1.2 * e,
        );
    }
    let m = "read_32_inflight";
    if let (Some(x), Some(c)) = (v(m, "xs"), v(m, "cxenstored")) {
        check(
            format!(
                "{m}: xs {x:.0} ops/s >= 4 x cxenstored {c:.0} = {:.0}",
                4.0 * c
            ),
            x >= 4.0 * c,
        );
    }
    if let (Some(x), Some(e)) = (v(m, "xs"), v(m, "echo")) {
        check(
            format!("{m}: xs {x:.0} ops/s >= 0.6 x echo {e:.0} = {:.0}", 0.6 * e),
            x >= 0.6 * e,
        );
    }
    if let (Some(x), Some(c)) = (v("boot_storm", "xs"), v("boot_storm", "cxenstored")) {
        check(
            format!(
                "boot_storm: xs {x:.1} ms <= cxenstored {c:.1} ms / 3 = {:.1} ms",
                c / 3.0
            ),
            x <= c / 3.0,
        );
    }
    let rss = format!("rss_{MEM_DOMAINS}x{MEM_NODES}");
    if let (Some(x), Some(c)) = (v(&rss, "xs"), v(&rss, "cxenstored")) {
        check(
            format!("{rss}: xs {x:.0} KB <= cxenstored {c:.0} KB"),
            x <= c,
        );
    }
    // No workload slower than C xenstored or oxenstored (p50s, rates and times).
    for r in rows {
        let Some(higher) = r.unit.higher_is_better() else {
            continue;
        };
        if r.metric.ends_with("_p99") || r.unit == Unit::Kb {
            continue;
        }
        let Some(x) = v(&r.metric, "xs") else {
            continue;
        };
        for other in ["cxenstored", "oxenstored"] {
            if let Some(o) = v(&r.metric, other) {
                let ok = if higher { x >= o } else { x <= o };
                let rel = if higher { ">=" } else { "<=" };
                check(
                    format!(
                        "not slower: {}: xs {} {rel} {other} {} {}",
                        r.metric,
                        r.unit.format(x),
                        r.unit.format(o),
                        r.unit.as_str()
                    ),
                    ok,
                );
            }
        }
    }
    if lines.is_empty() {
        return;
    }
    let failed = lines.iter().filter(|l| l.contains("[FAIL]")).count();
    eprintln!(
        "\ngoals of the issue ({} checks, {failed} failed):",
        lines.len()
    );
    for l in lines {
        eprintln!("{l}");
    }
}

// ----- setup -----------------------------------------------------------------------------------

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
fn responsive(cfg: &Config, t: &Target) -> bool {
    t.connect(cfg)
        .and_then(|mut c| c.read(0, b"/").map(drop))
        .is_ok()
}

/// Reads and writes a node for a moment (results discarded).
fn warm_up(cfg: &Config, t: &Target) -> R<()> {
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
fn tidy(cfg: &Config, t: &Target) -> R<()> {
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

fn parse_pair(arg: &str, flag: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((name, rest))
            if !name.is_empty()
                && !rest.is_empty()
                && !name.contains(|c: char| c.is_whitespace() || c == '@') =>
        {
            Ok((name.to_owned(), rest.to_owned()))
        }
        _ => Err(format!(
            "{flag} wants NAME=VALUE (NAME without spaces or '@'), got {arg:?}"
        )),
    }
}

struct Args {
    sockets: Vec<(String, PathBuf)>,
    pids: Vec<(String, u32)>,
    start_anchors: bool,
    anchors_dir: PathBuf,
    quick: bool,
    filter: Option<String>,
    baseline: Option<String>,
    timeout: Duration,
    runs: Option<usize>,
    boot_guests: Option<u32>,
    boot_toolstacks: usize,
    pin: Pin,
}

#[derive(Clone, Copy, Debug)]
enum Pin {
    /// The first two allowed CPUs, if there are two.
    Auto,
    Off,
    /// (bench-socket's CPU, the daemons' CPU).
    Cpus(usize, usize),
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut a = Args {
        sockets: Vec::new(),
        pids: Vec::new(),
        start_anchors: false,
        anchors_dir: std::env::var_os("XS_ANCHORS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/work/shared/anchors")),
        quick: false,
        filter: None,
        baseline: None,
        timeout: Duration::from_secs(10),
        runs: None,
        boot_guests: None,
        boot_toolstacks: 4,
        pin: Pin::Auto,
    };
    let mut args = std::env::args().skip(1);
    fn value(args: &mut impl Iterator<Item = String>, flag: &str) -> Result<String, String> {
        args.next()
            .ok_or_else(|| format!("{flag} needs an argument"))
    }
    fn number<T: std::str::FromStr>(s: &str, flag: &str) -> Result<T, String> {
        s.parse()
            .map_err(|_| format!("{flag}: not a number: {s:?}"))
    }
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--socket" => {
                let (name, path) = parse_pair(&value(&mut args, &arg)?, &arg)?;
                a.sockets.push((name, PathBuf::from(path)));
            }
            "--pid" => {
                let (name, pid) = parse_pair(&value(&mut args, &arg)?, &arg)?;
                a.pids.push((name, number(&pid, &arg)?));
            }
            "--start-anchors" => a.start_anchors = true,
            "--anchors" => a.anchors_dir = PathBuf::from(value(&mut args, &arg)?),
            "--quick" => a.quick = true,
            "--filter" => a.filter = Some(value(&mut args, &arg)?),
            "--baseline" => a.baseline = Some(value(&mut args, &arg)?),
            "--timeout" => {
                let secs: f64 = number(&value(&mut args, &arg)?, &arg)?;
                if !(secs > 0.0 && secs < 86_400.0) {
                    return Err("--timeout: want a positive number of seconds".into());
                }
                a.timeout = Duration::from_secs_f64(secs);
            }
            "--runs" => a.runs = Some(number::<usize>(&value(&mut args, &arg)?, &arg)?.max(1)),
            "--boot-guests" => {
                a.boot_guests = Some(number::<u32>(&value(&mut args, &arg)?, &arg)?.clamp(1, 2000));
            }
            "--boot-toolstacks" => {
                a.boot_toolstacks = number::<usize>(&value(&mut args, &arg)?, &arg)?.clamp(1, 64);
            }
            "--pin" => {
                let v = value(&mut args, &arg)?;
                let (c, d) = v
                    .split_once(',')
                    .ok_or_else(|| format!("--pin wants C,D (two CPU numbers), got {v:?}"))?;
                a.pin = Pin::Cpus(number(c, &arg)?, number(d, &arg)?);
            }
            "--no-pin" => a.pin = Pin::Off,
            "--help" | "-h" => return Ok(None),
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(a))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bench-socket: {e}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    let begin = Instant::now();
    let cfg = Config {
        quick: args.quick,
        filter: args.filter.clone(),
        timeout: args.timeout,
        run_time: Duration::from_millis(if args.quick { 20 } else { 40 }),
        warmup: Duration::from_millis(if args.quick { 20 } else { 100 }),
        runs: args.runs.unwrap_or(if args.quick { 5 } else { 25 }),
        boot_guests: args
            .boot_guests
            .unwrap_or(if args.quick { 20 } else { 100 }),
        boot_toolstacks: args.boot_toolstacks,
        root: format!("/bench/socket-{}", std::process::id()),
    };
    // Anchors first, so that (by default) ratios are against C xenstored.
    let anchors = if args.start_anchors {
        eprintln!("bench-socket: starting {} ...", ANCHOR_KINDS.join(", "));
        match Anchors::start(&args.anchors_dir, &ANCHOR_KINDS) {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("bench-socket: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let mut sockets: Vec<(String, PathBuf)> = anchors
        .as_ref()
        .map(|a| a.sockets().to_vec())
        .unwrap_or_default();
    sockets.extend(args.sockets.iter().cloned());
    if sockets.is_empty() {
        eprintln!(
            "bench-socket: nothing to measure: give --socket NAME=PATH or --start-anchors\n\n{HELP}"
        );
        return ExitCode::from(2);
    }
    let mut names = BTreeSet::new();
    for (name, _) in &sockets {
        if !names.insert(name.clone()) {
            eprintln!("bench-socket: two sockets named {name:?}");
            return ExitCode::from(2);
        }
    }
    for (name, _) in &args.pids {
        if !names.contains(name) {
            eprintln!("bench-socket: --pid for unknown socket {name:?}");
            return ExitCode::from(2);
        }
    }
    let base = match &args.baseline {
        None => 0,
        Some(b) => match sockets.iter().position(|(n, _)| n == b) {
            Some(i) => i,
            None => {
                eprintln!("bench-socket: --baseline {b:?} is not a socket name");
                return ExitCode::from(2);
            }
        },
    };
    let mut targets: Vec<Target> = Vec::new();
    for (name, path) in sockets {
        if !daemon::is_socket(&path) {
            eprintln!("bench-socket: {name}: {} is not a socket", path.display());
            return ExitCode::FAILURE;
        }
        let pid = match args.pids.iter().find(|(n, _)| *n == name) {
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
        if let Err(e) = probe(&cfg, &mut t) {
            eprintln!(
                "bench-socket: {}: {} does not answer properly: {e}",
                t.name,
                t.path.display()
            );
            return ExitCode::FAILURE;
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
    eprintln!(
        "bench-socket ({} mode: {} ms per run, warm-up + {} runs, median; boot storm {} guests \
         by {} toolstacks; read timeout {:.0} s)",
        if cfg.quick { "quick" } else { "full" },
        cfg.run_time.as_millis(),
        cfg.runs,
        cfg.boot_guests,
        cfg.boot_toolstacks,
        cfg.timeout.as_secs_f64()
    );
    // Pin before any thread is created (they inherit the affinity).
    let mut pinned = Vec::new();
    let cpus = match args.pin {
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
            return ExitCode::FAILURE;
        }
        for t in &targets {
            match t.pid {
                Some((pid, _)) => match daemon::Pinned::new(pid, daemon_cpu) {
                    Ok(p) => pinned.push(p),
                    Err(e) => {
                        eprintln!(
                            "bench-socket: cannot pin {} (pid {pid}) to CPU {daemon_cpu}: {e}",
                            t.name
                        );
                        return ExitCode::FAILURE;
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
    // Wake every daemon (and the CPUs) before the first workload: without this the first
    // workload measures slower than the same operation later.
    for _ in 0..3 {
        for t in &targets {
            if let Err(e) = warm_up(&cfg, t) {
                eprintln!("bench-socket: {}: warm-up failed: {e}", t.name);
                return ExitCode::FAILURE;
            }
        }
    }
    let mut failures = 0u32;
    let mut rows = Vec::new();
    for w in workloads(&cfg) {
        if !wanted(&cfg, &w) {
            continue;
        }
        rows.extend(run_workload(&cfg, &mut targets, &w, &mut failures));
    }
    for t in &targets {
        if t.dead.is_none()
            && let Err(e) = tidy(&cfg, t)
        {
            eprintln!("bench-socket: {}: removing {}: {e}", t.name, cfg.root);
        }
    }
    print_table(&targets, &rows, base);
    for t in &targets {
        if let Err(e) = &t.introduce {
            eprintln!(
                "note: {} rejected INTRODUCE ({e}); its boot storm skipped that step",
                t.name
            );
        }
        if !t.stores {
            eprintln!(
                "note: {} stores nothing; rm_guest_64 and memory skipped",
                t.name
            );
        } else if t.pid.is_none() {
            eprintln!(
                "note: {}: process unknown (give --pid); memory skipped",
                t.name
            );
        }
        if let Some(why) = &t.dead {
            eprintln!(
                "note: {} stopped answering ({why}); later workloads skipped",
                t.name
            );
        }
    }
    goals(&targets, &rows);
    drop(pinned);
    drop(anchors);
    eprintln!(
        "bench-socket: done in {:.1} s",
        begin.elapsed().as_secs_f64()
    );
    if failures > 0 {
        eprintln!("bench-socket: {failures} failure(s)");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
