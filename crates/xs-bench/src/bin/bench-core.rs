//! `bench-core`: the XenStore engine (`xs_core::Store`) measured in-process, single-threaded,
//! on realistic trees (see `xs_bench::host`), through a privileged dom0 connection unless
//! stated otherwise.
//!
//! Prints `bench <name> <value> <unit>` lines on stdout; progress and the comparison with the
//! issue's goals on stderr. `--quick` runs small sizes for a few seconds (a CI smoke test),
//! `--filter SUBSTR` runs only the measurements whose name contains `SUBSTR`.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use xs_bench::harness::verdict;
use xs_bench::host::{self, Base, Host, TEMPLATE};
use xs_bench::{CountingAlloc, Harness, Unit, latency};
use xs_core::{ConnId, DomId, Store, StoreConfig, XsError, XsResult};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

const HELP: &str = "\
bench-core: benchmarks of the XenStore engine (xs-core), in-process and single-threaded.

usage: bench-core [--quick] [--filter SUBSTR] [--help]

  --quick          small stores and short runs (a smoke test, a few seconds)
  --filter SUBSTR  run only the measurements whose name contains SUBSTR
  --help           this text

Output: one line per measurement on stdout, `bench <name> <value> <unit>`;
progress and the issue's goals on stderr.

Measurements:
  read_<size> write_<size> directory_<size> mkdir_rm_<size> tx_write_<size>
                   (ops/s; size 1k, 100k, 1m nodes; --quick: 1k, 1k, 10k)
  tx_start_1k tx_start_1m      (ns per TRANSACTION_START; --quick: 1k, 10k)
  directory_local_domain_1k_domains directory_local_domain_15k_domains
                   (ops/s, one op = a full listing through DIRECTORY_PART)
  write_0_watches write_100k_watches
                   (ops/s on a 100k-node tree; --quick: 10k nodes, 10k watches)
  heap_per_node    (bytes, 100k-node tree; --quick: 10k)
  dependent_load_16m dependent_load_256k
                   (ns per load of a random pointer chase over 16 MiB / 256 KiB: the
                   machine's memory latency, to read the store figures against)
";

/// Values written over existing leaves (small, as most XenStore values are).
const VALUES: [&[u8]; 4] = [b"4", b"1", b"online", b"5"];

/// Seed of every access pattern.
const SEED: u64 = 0x5EED_0000_C0DE;

fn main() -> ExitCode {
    let h = match Harness::from_args("bench-core", HELP) {
        Ok(h) => h,
        Err(code) => return code,
    };
    let start = Instant::now();
    let mut h = h.with_alloc(&ALLOC);
    eprintln!(
        "bench-core ({} mode, {} ms per run, median of 3)",
        if h.quick() { "quick" } else { "full" },
        h.run_time().as_millis()
    );
    heap_per_node(&mut h);
    memory_latency(&mut h);
    let sizes: [(&str, usize); 3] = if h.quick() {
        [("1k", 1_000), ("100k", 1_000), ("1m", 10_000)]
    } else {
        [("1k", 1_000), ("100k", 100_000), ("1m", 1_000_000)]
    };
    for (label, nodes) in sizes {
        store_ops(&mut h, label, nodes);
    }
    directory_local_domain(&mut h, "1k_domains", 1_000);
    directory_local_domain(&mut h, "15k_domains", 15_000);
    watches(&mut h);
    goals(&h);
    eprintln!("bench-core: done in {:.1} s", start.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}

/// The cost of one dependent random load with a working set the size of the 100k-node
/// store (and of a cache-resident one), to read the store figures against.
fn memory_latency(h: &mut Harness) {
    for (name, bytes) in [
        ("dependent_load_16m", 16 << 20),
        ("dependent_load_256k", 256 << 10),
    ] {
        if h.wants(name) {
            let chase = latency::Chase::new(bytes);
            h.median(name, Unit::Ns, |budget| chase.ns_per_load(budget));
        }
    }
}

// ----- helpers ---------------------------------------------------------------------------------

/// The value of `result`, or the end of the run: a failing operation means the benchmark
/// measures something other than it claims.
fn ok<T>(result: XsResult<T>, what: &str) -> T {
    match result {
        Ok(v) => v,
        Err(e) => fail(&format!("{what} failed: {e}")),
    }
}

fn fail(message: &str) -> ! {
    xs_bench::harness::fatal("bench-core", message)
}

/// A store as a toolstack-managed host has it: the toolstack creates the domains' nodes.
fn new_store() -> (Store, ConnId) {
    let config = StoreConfig {
        domain_nodes: false,
        ..StoreConfig::new(xs_bench::BENCH_HASH_KEY)
    };
    let mut store = ok(Store::new(config), "Store::new");
    let conn = ok(store.connect(DomId::DOM0), "connect dom0");
    (store, conn)
}

/// A store holding the realistic tree of about `nodes` nodes.
fn build_host(nodes: usize) -> (Store, ConnId, Host) {
    let host = Host::for_nodes(nodes);
    let (mut store, conn) = new_store();
    let start = Instant::now();
    ok(host.build(&mut store, conn), "building the tree");
    let took = start.elapsed();
    let count = store.node_count();
    eprintln!(
        "built a host tree: {count} nodes ({} guests x {} nodes) in {:.2} s ({:.0} ns/node)",
        host.domains,
        Host::nodes_per_domain(),
        took.as_secs_f64(),
        took.as_nanos() as f64 / count as f64
    );
    if count != host.node_count() {
        fail(&format!(
            "tree has {count} nodes, expected {}",
            host.node_count()
        ));
    }
    (store, conn, host)
}

/// Pre-generated paths in one buffer, cycled through by index (a power-of-two count).
struct PathList {
    buf: Vec<u8>,
    spans: Vec<(usize, usize)>,
}

impl PathList {
    /// `count` paths (rounded up to a power of two), each appended by `next`.
    fn generate(count: usize, mut next: impl FnMut(usize, &mut Vec<u8>)) -> PathList {
        let count = count.next_power_of_two();
        let mut buf = Vec::new();
        let mut spans = Vec::with_capacity(count);
        for i in 0..count {
            let start = buf.len();
            next(i, &mut buf);
            spans.push((start, buf.len()));
        }
        PathList { buf, spans }
    }

    fn get(&self, i: u64) -> &[u8] {
        let (start, end) = self.spans[i as usize & (self.spans.len() - 1)];
        &self.buf[start..end]
    }
}

/// How many random paths to cycle through: at least 64k, more for big trees, so that accesses
/// spread over the tree rather than over a cached subset.
fn pattern_len(nodes: usize) -> usize {
    (nodes / 4).next_power_of_two().clamp(1 << 16, 1 << 18)
}

/// Random existing leaves of random guests.
fn random_leaves(host: &Host, rng: &mut fastrand::Rng, count: usize) -> PathList {
    let leaves: Vec<_> = TEMPLATE.iter().filter(|e| e.is_leaf()).collect();
    PathList::generate(count, |_, out| {
        let d = host.random_domid(rng);
        host::push_path(leaves[rng.usize(..leaves.len())], d, out);
    })
}

// ----- heap per node ---------------------------------------------------------------------------

/// Heap bytes per node of the realistic tree, counted by the global allocator from before the
/// store exists to after the tree is built (so it includes the arena, the nodes' own
/// allocations, child arrays, domain records and owner lists: everything the store holds).
fn heap_per_node(h: &mut Harness) {
    if !h.wants("heap_per_node") {
        return;
    }
    let nodes = if h.quick() { 10_000 } else { 100_000 };
    let host = Host::for_nodes(nodes);
    let before = ALLOC.current();
    let (mut store, conn) = new_store();
    ok(host.build(&mut store, conn), "building the tree");
    let after = ALLOC.current();
    let count = store.node_count();
    let per_node = after.saturating_sub(before) as f64 / count as f64;
    let payload = ok(host::payload(&mut store, conn), "walking the tree");
    if payload.nodes != count {
        fail(&format!("walk saw {} of {count} nodes", payload.nodes));
    }
    let avg = payload.bytes() as f64 / count as f64;
    eprintln!(
        "  heap: {count} nodes, {} bytes allocated; average payload {avg:.1} bytes/node \
         (name {:.1} + value {:.1} + perms {:.1}); tree_heap_bytes()/node {:.1}",
        after - before,
        payload.name_bytes as f64 / count as f64,
        payload.value_bytes as f64 / count as f64,
        3.0 * payload.perm_entries as f64 / count as f64,
        store.tree_heap_bytes() as f64 / count as f64,
    );
    eprintln!(
        "  goal heap_per_node <= 2 x payload + 64 = {:.1} bytes: {per_node:.1} ({})",
        2.0 * avg + 64.0,
        verdict(per_node <= 2.0 * avg + 64.0)
    );
    h.report("heap_per_node", per_node, Unit::Bytes);
}

// ----- operations at a store size --------------------------------------------------------------

/// `read`, `write`, `directory`, `mkdir_rm`, `tx_write` (and `tx_start` for 1k and 1m) on a
/// realistic tree of `nodes` nodes, reported with the suffix `label`.
fn store_ops(h: &mut Harness, label: &str, nodes: usize) {
    let name = |op: &str| format!("{op}_{label}");
    let mut names = vec![
        name("read"),
        name("write"),
        name("directory"),
        name("mkdir_rm"),
        name("tx_write"),
    ];
    let with_tx_start = label != "100k";
    if with_tx_start {
        names.push(name("tx_start"));
    }
    if !h.wants_any(&names) {
        return;
    }
    eprintln!("size {label}:");
    let (mut store, conn, host) = build_host(nodes);
    let mut rng = fastrand::Rng::with_seed(SEED);
    let count = pattern_len(store.node_count());
    let leaves = random_leaves(&host, &mut rng, count);
    let listable: Vec<_> = TEMPLATE.iter().filter(|e| e.listable).collect();
    let dirs = PathList::generate(count, |_, out| {
        let d = host.random_domid(&mut rng);
        host::push_path(listable[rng.usize(..listable.len())], d, out);
    });
    // Fresh names under random guests' `data` directories (each is removed again right after
    // it is created, so cycling through the list never finds one existing).
    let fresh = PathList::generate(count, |i, out| {
        let d = host.random_domid(&mut rng);
        out.extend_from_slice(format!("/local/domain/{d}/data/bench-{i}").as_bytes());
    });
    let mut out = Vec::with_capacity(4096);

    h.rate(&name("read"), |i| {
        out.clear();
        ok(store.read(conn, 0, leaves.get(i), &mut out), "read");
        black_box(&out);
    });
    h.rate(&name("write"), |i| {
        let value = VALUES[i as usize & 3];
        ok(store.write(conn, 0, leaves.get(i), value), "write");
    });
    h.rate(&name("directory"), |i| {
        out.clear();
        ok(store.directory(conn, 0, dirs.get(i), &mut out), "directory");
        black_box(&out);
    });
    h.rate(&name("mkdir_rm"), |i| {
        let path = fresh.get(i);
        ok(store.mkdir(conn, 0, path), "mkdir");
        ok(store.rm(conn, 0, path), "rm");
    });
    // Transaction start + one write + commit. There is no concurrency, so EAGAIN would be a
    // bug in the store (or in this benchmark): stop loudly rather than count it.
    h.rate(&name("tx_write"), |i| {
        let tx = ok(store.transaction_start(conn), "transaction_start");
        let value = VALUES[i as usize & 3];
        ok(
            store.write(conn, tx, leaves.get(i), value),
            "write in transaction",
        );
        match store.transaction_end(conn, tx, true) {
            Ok(()) => {}
            Err(XsError::Again) => fail("commit returned EAGAIN without any concurrency"),
            Err(e) => fail(&format!("commit failed: {e}")),
        }
    });
    if with_tx_start {
        tx_start(h, &name("tx_start"), &mut store, conn);
    }
    if let Err(e) = store.check() {
        fail(&format!(
            "store inconsistent after the {label} measurements: {e}"
        ));
    }
}

/// Nanoseconds per `TRANSACTION_START`: batches of starts are timed (only the starts), then
/// the batch is aborted untimed. dom0 has no transaction quota, so a batch keeps up to
/// `BATCH` transactions open at once.
fn tx_start(h: &mut Harness, name: &str, store: &mut Store, conn: ConnId) {
    const BATCH: usize = 1000;
    let mut txs = Vec::with_capacity(BATCH);
    h.median(name, Unit::Ns, |budget| {
        let mut timed = Duration::ZERO;
        let mut starts = 0usize;
        let begin = Instant::now();
        while begin.elapsed() < budget {
            let t = Instant::now();
            for _ in 0..BATCH {
                txs.push(ok(store.transaction_start(conn), "transaction_start"));
            }
            timed += t.elapsed();
            starts += BATCH;
            for tx in txs.drain(..) {
                ok(store.transaction_end(conn, tx, false), "transaction abort");
            }
        }
        timed.as_nanos() as f64 / starts as f64
    });
}

// ----- listing /local/domain -------------------------------------------------------------------

/// `DIRECTORY /local/domain` with `domains` guests (plus dom0). 15k names take ~79 KB, far
/// past one 4096-byte reply (`Store::directory` gives `E2BIG`), so one op is a full listing
/// through `DIRECTORY_PART`, offset advancing until the final chunk, as a client does; 1k
/// domains are listed the same way for comparison. The point: cost proportional to the
/// number of children, not quadratic.
///
/// The guests here have only their home directory with `name` and `domid` (the listing does
/// not look below the children, and a full host of 15k guests would be 1.5M nodes).
fn directory_local_domain(h: &mut Harness, label: &str, domains: u16) {
    let name = format!("directory_local_domain_{label}");
    if !h.wants(&name) {
        return;
    }
    let (mut store, conn) = new_store();
    ok(
        host::build_homes(&mut store, conn, domains),
        "building the homes",
    );
    let (mut names, mut scratch) = (Vec::new(), Vec::new());
    let requests = ok(
        host::directory_all(&mut store, conn, b"/local/domain", &mut names, &mut scratch),
        "directory_part",
    );
    let listed = names.iter().filter(|&&b| b == 0).count();
    if listed != usize::from(domains) + 1 {
        fail(&format!(
            "listed {listed} domains, expected {}",
            domains + 1
        ));
    }
    eprintln!(
        "  /local/domain: {listed} entries, {} bytes of names, {requests} DIRECTORY_PART replies",
        names.len()
    );
    h.rate(&name, |_| {
        ok(
            host::directory_all(&mut store, conn, b"/local/domain", &mut names, &mut scratch),
            "directory_part",
        );
        black_box(&names);
    });
    if let Some(rate) = h.result(&name) {
        eprintln!("  {name}: {:.1} ns per entry", 1e9 / rate / listed as f64);
    }
}

// ----- writes with watches ---------------------------------------------------------------------

/// Who registers a watch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Watcher {
    /// The guest itself (its frontends, its control nodes); home paths registered relative.
    Guest,
    /// A dom0 process (backends, the toolstack).
    Dom0,
}

/// The watches a real host has per guest, most common first: frontends watch their backend's
/// state (and vice versa), the guest watches its control and memory nodes and enumerates its
/// devices, backends and the toolstack watch device directories and hotplug status.
const FIRST_WATCHES: &[(Base, &str, Watcher)] = &[
    (Base::VifBackend, "0/state", Watcher::Guest),
    (Base::VbdBackend, "51712/state", Watcher::Guest),
    (Base::Home, "device/vif/0/state", Watcher::Dom0),
    (Base::Home, "device/vbd/51712/state", Watcher::Dom0),
    (Base::Home, "control/shutdown", Watcher::Guest),
    (Base::Home, "memory/target", Watcher::Guest),
    (Base::Home, "control/sysrq", Watcher::Guest),
    (Base::Home, "device", Watcher::Guest),
    (Base::Home, "cpu", Watcher::Guest),
    (Base::VbdBackend, "51712/physical-device", Watcher::Dom0),
    (Base::VifBackend, "0/hotplug-status", Watcher::Dom0),
    (Base::VbdBackend, "51712/hotplug-status", Watcher::Dom0),
    (Base::Home, "device/vif/0", Watcher::Dom0),
    (Base::Home, "device/vbd/51712", Watcher::Dom0),
    (Base::VifBackend, "0", Watcher::Dom0),
    (Base::VbdBackend, "51712", Watcher::Dom0),
];

/// dom0 connections sharing the dom0 watches (backend drivers, toolstack, device models).
const DOM0_WATCHERS: usize = 8;

/// Writes between two drains of the event queues.
const DRAIN_EVERY: u64 = 1024;

/// What draining saw.
#[derive(Default)]
struct Drained {
    events: u64,
    /// Drains that found a queue at its bound (events were then coalesced, see `watch.rs`).
    full_queues: u64,
}

/// Pops every queued event of every notified connection, as a daemon sending them would.
fn drain(store: &mut Store, queue_len: usize, seen: &mut Drained) {
    for c in store.take_notifications() {
        if store.queued_events(c) >= queue_len {
            seen.full_queues += 1;
        }
        while let Some(event) = store.pop_event(c) {
            black_box(&event);
            seen.events += 1;
        }
    }
}

/// Write throughput on a 100k-node tree (quick: 10k) without watches, then with as many
/// watches as nodes registered on distinct realistic paths from the guests' and several dom0
/// connections. Event delivery into the watchers' queues is part of the measured cost, and so
/// is draining them (every 1024 writes, so that queues do not just saturate): a daemon has to
/// do both for every write.
fn watches(h: &mut Harness) {
    let (nodes, count) = if h.quick() {
        (10_000, 10_000)
    } else {
        (100_000, 100_000)
    };
    let (none, many) = ("write_0_watches", "write_100k_watches");
    if !h.wants_any(&[none, many]) {
        return;
    }
    eprintln!("watches:");
    let (mut store, conn, host) = build_host(nodes);
    let mut rng = fastrand::Rng::with_seed(SEED ^ 0x77);
    let leaves = random_leaves(&host, &mut rng, pattern_len(store.node_count()));
    let queue_len = store.config().event_queue_len;
    let mut seen = Drained::default();
    let write = |store: &mut Store, seen: &mut Drained, i: u64| {
        ok(
            store.write(conn, 0, leaves.get(i), VALUES[i as usize & 3]),
            "write",
        );
        if i % DRAIN_EVERY == DRAIN_EVERY - 1 {
            drain(store, queue_len, seen);
        }
    };
    h.rate(none, |i| write(&mut store, &mut seen, i));
    if !h.wants(many) {
        return;
    }

    // The plan of watches per guest: the common ones, then every other node of its layout.
    let index_of = |base: Base, rel: &str| {
        TEMPLATE
            .iter()
            .position(|e| e.base == base && e.rel == rel)
            .unwrap_or_else(|| fail(&format!("no template entry {base:?} {rel}")))
    };
    let mut plan: Vec<(usize, Watcher)> = FIRST_WATCHES
        .iter()
        .map(|&(base, rel, who)| (index_of(base, rel), who))
        .collect();
    for (i, e) in TEMPLATE.iter().enumerate() {
        if !plan.iter().any(|&(j, _)| j == i) {
            let who = if e.base == Base::Home {
                Watcher::Guest
            } else {
                Watcher::Dom0
            };
            plan.push((i, who));
        }
    }
    let dom0: Vec<ConnId> = (0..DOM0_WATCHERS)
        .map(|_| ok(store.connect(DomId::DOM0), "connect"))
        .collect();
    let guests: Vec<ConnId> = host
        .domids()
        .map(|d| ok(store.connect(DomId(d)), "connect"))
        .collect();
    let start = Instant::now();
    let heap_before = ALLOC.current();
    let mut registered = 0usize;
    let mut path = Vec::new();
    'rounds: for round in 0.. {
        // Each round's initial events are taken before the next round, as the watchers
        // would: the heap figure below is then the watches', not a backlog's.
        drain(&mut store, queue_len, &mut Drained::default());
        for d in host.domids() {
            if registered == count {
                break 'rounds;
            }
            let (index, who) = plan[round % plan.len()];
            let entry = &TEMPLATE[index];
            path.clear();
            let watcher = match who {
                Watcher::Guest if entry.base == Base::Home && !entry.rel.is_empty() => {
                    path.extend_from_slice(entry.rel.as_bytes());
                    guests[usize::from(d) - 1]
                }
                Watcher::Guest => {
                    host::push_path(entry, d, &mut path);
                    guests[usize::from(d) - 1]
                }
                Watcher::Dom0 => {
                    host::push_path(entry, d, &mut path);
                    dom0[usize::from(d) % DOM0_WATCHERS]
                }
            };
            // Tokens like Linux's xenbus (a kernel pointer in hex).
            let token = format!("ffff8880{registered:08x}");
            ok(store.watch(watcher, &path, token.as_bytes(), None), "watch");
            registered += 1;
        }
    }
    drain(&mut store, queue_len, &mut Drained::default());
    let heap = ALLOC.current().saturating_sub(heap_before);
    eprintln!(
        "  registered {} watches ({:.1} per guest) from {} connections in {:.2} s, {:.0} bytes \
         of heap per watch",
        store.watch_count(),
        count as f64 / f64::from(host.domains),
        guests.len() + DOM0_WATCHERS,
        start.elapsed().as_secs_f64(),
        heap as f64 / store.watch_count().max(1) as f64
    );
    let mut seen = Drained::default();
    let mut writes = 0u64;
    h.rate(many, |i| {
        write(&mut store, &mut seen, i);
        writes += 1;
    });
    eprintln!(
        "  with watches: {:.2} events per write, {} drains found a full queue",
        seen.events as f64 / writes.max(1) as f64,
        seen.full_queues
    );
}

// ----- goals -----------------------------------------------------------------------------------

/// The goals next to the figures (and, for scale, QEMU's emulated store on this
/// machine at 100k nodes).
fn goals(h: &Harness) {
    eprintln!("goals (single thread):");
    if h.quick() {
        eprintln!(
            "  (quick mode: the stores are smaller than the names say; goals are for a full run)"
        );
    }
    let at_least = |name: &str, goal: f64, qemu: Option<&str>| {
        if let Some(v) = h.result(name) {
            let qemu = qemu.map(|q| format!("; QEMU {q}")).unwrap_or_default();
            eprintln!(
                "  {name} >= {goal:.0} ops/s: {v:.0} ops/s, {:.2}x the goal ({}){qemu}",
                v / goal,
                verdict(v >= goal)
            );
        }
    };
    at_least("read_100k", 5e6, Some("748k ops/s"));
    if let (false, Some(read), Some(load)) = (
        h.quick(),
        h.result("read_100k"),
        h.result("dependent_load_16m"),
    ) {
        eprintln!(
            "    one read_100k = {:.0} ns = {:.1} dependent loads of {load:.0} ns (16 MiB working \
             set); 5M ops/s leaves 200 ns per read",
            1e9 / read,
            1e9 / read / load
        );
    }
    at_least("write_100k", 2e6, Some("439k ops/s"));
    at_least("tx_write_1m", 5e5, Some("73 ops/s (at 100k)"));
    if let (Some(small), Some(big)) = (h.result("tx_start_1k"), h.result("tx_start_1m")) {
        eprintln!(
            "  tx_start_1m <= 1.5 x tx_start_1k: {big:.1} ns vs {small:.1} ns = {:.2}x ({})",
            big / small,
            verdict(big <= 1.5 * small)
        );
    }
    if let (Some(none), Some(many)) = (h.result("write_0_watches"), h.result("write_100k_watches"))
    {
        eprintln!(
            "  write_100k_watches >= 0.5 x write_0_watches: {many:.0} vs {none:.0} ops/s = {:.2}x ({})",
            many / none,
            verdict(many >= 0.5 * none)
        );
    }
    if let (Some(small), Some(big)) = (
        h.result("directory_local_domain_1k_domains"),
        h.result("directory_local_domain_15k_domains"),
    ) {
        eprintln!(
            "  listing /local/domain: 15k domains cost {:.1}x 1k domains (linear: ~15x the \
             entries, ~20x the bytes)",
            small / big
        );
    }
    if let Some(v) = h.result("heap_per_node") {
        eprintln!("  heap_per_node: {v:.1} bytes (goal printed above; QEMU 390 bytes)");
    }
}
