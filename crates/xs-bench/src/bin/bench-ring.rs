//! `bench-ring`: the shared-page ring (xs-ring) between two threads, one per core: a guest
//! thread writing requests through the guest end and a server thread serving them, busy
//! polling on both sides. Both ends store their two indices to the index cache line
//! together: the server publishes a reply before it consumes the request (the pump), the
//! guest sends its next request before it consumes the reply (`Guest::peek`, then
//! `Guest::consume`); each order measured 10-20% more round trips than the other.
//!
//! * `ring_read_roundtrips`: one small `READ` (of `domid`) at a time, served by the pump
//!   through a real store (guest 5's connection).
//! * `ring_floor_roundtrips`: the same bytes both ways (same request and reply sizes)
//!   through the same `Server`/`Guest` ends and so the same memory orderings, the server
//!   answering with a canned reply without a store: the floor the ring itself costs.
//! * `ring_read_pipelined`, `ring_floor_pipelined`: the same with 16 requests in flight.
//! * `ring_read_one_thread`, `ring_floor_one_thread`: one thread playing both ends, for the
//!   CPU cost alone (the rest of a two-thread round trip is cache lines crossing cores).
//!
//! Prints `bench <name> <value> <unit>` lines on stdout; progress and the goals on stderr.

use std::hint::spin_loop;
use std::process::ExitCode;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use xs_bench::harness::verdict;
use xs_bench::{CountingAlloc, Harness, Unit, daemon};
use xs_core::protocol::{Access, Connection, Limits, NoHost};
use xs_core::store::Introduction;
use xs_core::wire::{MsgType, push_message};
use xs_core::{DomId, Store, StoreConfig};
use xs_ring::{Guest, RING_SIZE, Server, SharedPage};
use xs_serve::pump::pump;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

const HELP: &str = "\
bench-ring: round trips through the XenStore ring page between two threads pinned to two
cores (guest on the first allowed CPU, server on the second), busy polling.

usage: bench-ring [--quick] [--filter SUBSTR] [--help]

  --quick          short runs (a smoke test, a few seconds)
  --filter SUBSTR  run only the measurements whose name contains SUBSTR
  --help           this text

Output: one line per measurement on stdout, `bench <name> <value> <unit>`;
progress and the goals on stderr.

Measurements (ops/s, one op = one request answered):
  ring_read_roundtrips   READ domid, one at a time, served by the pump and a store
  ring_floor_roundtrips  the same bytes both ways, the server replying with canned bytes
  ring_read_pipelined    as ring_read_roundtrips with 16 requests in flight
  ring_floor_pipelined   as ring_floor_roundtrips with 16 requests in flight
  ring_read_one_thread   as ring_read_roundtrips, one thread playing both ends (the CPU
                         cost alone, no cache line crossing cores)
  ring_floor_one_thread  as ring_floor_roundtrips, one thread playing both ends

Goals: ring_read_roundtrips >= 1M ops/s, and >= 0.5 x ring_floor_roundtrips.
";

/// Requests in flight in the pipelined measurements.
const IN_FLIGHT: usize = 16;
/// The request id of every request (the replies are then identical).
const REQ_ID: u32 = 0x1234;
/// The guest gives up waiting for a reply after this long: the server is gone.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the server side is the store or the canned floor.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Store,
    Floor,
}

/// The request and the reply it gets, as bytes.
struct Traffic {
    request: Vec<u8>,
    reply: Vec<u8>,
}

impl Traffic {
    fn new() -> Traffic {
        let mut request = Vec::new();
        push_message(&mut request, MsgType::Read as u32, REQ_ID, 0, b"domid\0");
        let mut reply = Vec::new();
        push_message(&mut reply, MsgType::Read as u32, REQ_ID, 0, b"5");
        Traffic { request, reply }
    }
}

fn fail(message: &str) -> ! {
    xs_bench::harness::fatal("bench-ring", message)
}

fn pin(cpu: Option<usize>, who: &str) {
    if let Some(cpu) = cpu
        && let Err(e) = daemon::pin_self(cpu)
    {
        fail(&format!("cannot pin the {who} thread to CPU {cpu}: {e}"));
    }
}

/// A store with guest 5 introduced, and the protocol connection of that guest.
fn store_with_guest() -> (Store, Connection) {
    let setup = || {
        let mut store = Store::new(StoreConfig::new(xs_bench::BENCH_HASH_KEY))?;
        let d0 = store.connect(DomId::DOM0)?;
        store.introduce(d0, DomId(5), Introduction { gfn: 1, evtchn: 1 })?;
        let id = store.connect(DomId(5))?;
        Ok::<_, xs_core::XsError>((store, id))
    };
    let (store, id) = setup().unwrap_or_else(|e| fail(&format!("store setup: {e}")));
    (
        store,
        Connection::new(id, Access::default(), Limits::default()),
    )
}

/// The store's side: guest 5's connection served by the pump until `stop`. Between pumps
/// it waits as a real server does, on `Server::recheck` (the re-check a server makes
/// before sleeping on its event channel), spinning where a server would sleep: polling
/// with whole pumps made it notice a request later (measured: about 10% fewer round trips).
fn serve_store(page: &SharedPage, stop: &AtomicBool, ready: &Barrier) {
    let (mut store, mut conn) = store_with_guest();
    let mut server = Server::new(page, Server::<&SharedPage>::FEATURES);
    ready.wait();
    loop {
        let done = pump(&mut server, &mut conn, &mut store, &mut NoHost);
        if let Some(fault) = done.fault {
            fail(&format!("the ring broke: {fault}"));
        }
        if !done.notify {
            while !server.recheck(!conn.output().is_empty()) {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                spin_loop();
            }
        }
    }
}

/// The floor: whole requests are consumed and answered with the canned reply, through the
/// same server end (the same loads, stores and fences), without a store.
fn serve_floor(page: &SharedPage, stop: &AtomicBool, ready: &Barrier, traffic: &Traffic) {
    let mut server = Server::new(page, Server::<&SharedPage>::FEATURES);
    let req_len = traffic.request.len();
    let mut buf = [0u8; RING_SIZE];
    ready.wait();
    loop {
        let n = server
            .peek(&mut buf)
            .unwrap_or_else(|f| fail(&format!("floor peek: {f}")));
        let whole = n / req_len;
        if whole == 0 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            spin_loop();
            continue;
        }
        for _ in 0..whole {
            let mut at = 0;
            while at < traffic.reply.len() {
                at += server
                    .write(&traffic.reply[at..])
                    .unwrap_or_else(|f| fail(&format!("floor write: {f}")));
            }
        }
        // After the replies, as the pump does (one store to the index line instead of two
        // separated by the reply).
        server.consume(whole * req_len);
    }
}

/// The guest side: keeps `in_flight` requests outstanding for `duration`; returns the
/// replies received and the time taken. Every reply is checked.
fn drive(
    guest: &mut Guest<&SharedPage>,
    traffic: &Traffic,
    in_flight: usize,
    duration: Duration,
) -> (u64, Duration) {
    let req = traffic.request.as_slice();
    let rep = traffic.reply.as_slice();
    // Both servers consume a request only after replying to it, and the guest refills as
    // replies arrive, so the request ring may hold twice the requests in flight.
    if 2 * in_flight * req.len() > RING_SIZE {
        fail(&format!(
            "{in_flight} requests in flight of {} bytes may not fit the request ring",
            req.len()
        ));
    }
    let mut buf = [0u8; RING_SIZE];
    // Bytes of the reply being assembled (replies may arrive in pieces).
    let mut partial = 0usize;
    let mut outstanding = 0usize;
    let mut done = 0u64;
    let start = Instant::now();
    let mut spins = 0u32;
    let mut waiting_since = start;
    let mut next_check = 64u64;
    // Keeps `in_flight` requests outstanding.
    let fill = |guest: &mut Guest<&SharedPage>, outstanding: &mut usize| {
        while *outstanding < in_flight {
            let w = guest
                .write(req)
                .unwrap_or_else(|f| fail(&format!("guest write: {f}")));
            if w != req.len() {
                fail(&format!("request ring full after {w} bytes"));
            }
            *outstanding += 1;
        }
    };
    fill(guest, &mut outstanding);
    loop {
        let n = guest
            .peek(&mut buf)
            .unwrap_or_else(|f| fail(&format!("guest read: {f}")));
        if n == 0 {
            spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1 << 16) {
                let now = Instant::now();
                if now - waiting_since > REPLY_TIMEOUT {
                    fail("no reply: the server side stopped");
                }
            }
            continue;
        }
        // Check the bytes against the expected reply stream.
        for &b in &buf[..n] {
            if b != rep[partial] {
                fail(&format!(
                    "reply byte {partial} is {b:#x}, not {:#x}",
                    rep[partial]
                ));
            }
            partial += 1;
            if partial == rep.len() {
                partial = 0;
                outstanding -= 1;
                done += 1;
            }
        }
        // The next requests go out before the reply bytes are freed, so that the two index
        // stores (req_prod, rsp_cons) hit the index cache line together (as the server's pump
        // publishes its reply before consuming the request).
        fill(guest, &mut outstanding);
        guest.consume(n);
        spins = 0;
        if done >= next_check {
            next_check = done + 64;
            let now = Instant::now();
            waiting_since = now;
            let elapsed = now - start;
            if elapsed >= duration {
                // Let the requests in flight complete, so that the server ends idle.
                while outstanding > 0 {
                    let n = guest
                        .read(&mut buf)
                        .unwrap_or_else(|f| fail(&format!("guest read: {f}")));
                    partial += n;
                    while partial >= rep.len() {
                        partial -= rep.len();
                        outstanding -= 1;
                    }
                    if start.elapsed() > elapsed + REPLY_TIMEOUT {
                        fail("no reply: the server side stopped");
                    }
                }
                return (done, elapsed);
            }
        }
    }
}

/// One sample: both threads started and pinned, `duration` of traffic; returns ops/s (and
/// allocations per op).
fn sample(
    side: Side,
    in_flight: usize,
    duration: Duration,
    cpus: Option<(usize, usize)>,
) -> (f64, f64) {
    let traffic = Traffic::new();
    let page = SharedPage::default();
    let stop = AtomicBool::new(false);
    let ready = Barrier::new(2);
    thread::scope(|s| {
        let server = s.spawn(|| {
            pin(cpus.map(|c| c.1), "server");
            match side {
                Side::Store => serve_store(&page, &stop, &ready),
                Side::Floor => serve_floor(&page, &stop, &ready, &traffic),
            }
        });
        let guest = s.spawn(|| {
            pin(cpus.map(|c| c.0), "guest");
            let mut guest = Guest::new(&page);
            ready.wait();
            let calls = ALLOC.calls();
            let (ops, elapsed) = drive(&mut guest, &traffic, in_flight, duration);
            let allocs = ALLOC.calls().saturating_sub(calls) as f64 / ops.max(1) as f64;
            stop.store(true, Ordering::Relaxed);
            (ops as f64 / elapsed.as_secs_f64(), allocs)
        });
        let result = guest.join();
        stop.store(true, Ordering::Relaxed);
        let _ = server.join();
        result.unwrap_or_else(|_| fail("the guest thread panicked"))
    })
}

/// The CPU cost alone: one thread plays both ends, so no cache line crosses cores. The
/// difference to the two-thread figures is what the cross-core transfers cost.
fn one_thread(h: &mut Harness, name: &str, side: Side) {
    if !h.wants(name) {
        return;
    }
    let traffic = Traffic::new();
    let page: SharedPage = SharedPage::default();
    let mut server = Server::new(&page, Server::<&SharedPage>::FEATURES);
    let mut guest = Guest::new(&page);
    let (mut store, mut conn) = store_with_guest();
    let mut buf = [0u8; RING_SIZE];
    let req_len = traffic.request.len();
    h.rate(name, |_| {
        if guest.write(&traffic.request) != Ok(req_len) {
            fail("request ring full");
        }
        match side {
            Side::Store => {
                let done = pump(&mut server, &mut conn, &mut store, &mut NoHost);
                if done.fault.is_some() {
                    fail("the ring broke");
                }
            }
            Side::Floor => {
                let n = server.peek(&mut buf).unwrap_or(0);
                if server.write(&traffic.reply) != Ok(traffic.reply.len()) {
                    fail("reply ring full");
                }
                server.consume(n);
            }
        }
        let n = guest.read(&mut buf).unwrap_or(0);
        if buf.get(..n) != Some(traffic.reply.as_slice()) {
            fail("wrong reply");
        }
    });
}

fn measure(
    h: &mut Harness,
    name: &str,
    side: Side,
    in_flight: usize,
    cpus: Option<(usize, usize)>,
) {
    let mut allocs = Vec::new();
    h.median(name, Unit::OpsPerSec, |d| {
        let (rate, a) = sample(side, in_flight, d, cpus);
        allocs.push(a);
        rate
    });
    if let Some(max) = allocs.iter().copied().reduce(f64::max) {
        eprintln!("    allocations per op: at most {max:.2}");
    }
}

fn goals(h: &Harness) {
    eprintln!("goals:");
    if let Some(read) = h.result("ring_read_roundtrips") {
        eprintln!(
            "  ring_read_roundtrips >= 1M ops/s: {read:.0} ops/s, {:.2}x the goal ({})",
            read / 1e6,
            verdict(read >= 1e6)
        );
        if let Some(floor) = h.result("ring_floor_roundtrips") {
            eprintln!(
                "  ring_read_roundtrips >= 0.5 x ring_floor_roundtrips: {read:.0} vs {floor:.0} \
                 ops/s = {:.2}x ({})",
                read / floor,
                verdict(read >= 0.5 * floor)
            );
        }
    }
    if let (Some(read), Some(floor)) = (
        h.result("ring_read_pipelined"),
        h.result("ring_floor_pipelined"),
    ) {
        eprintln!(
            "  (pipelined, {IN_FLIGHT} in flight: {read:.0} vs {floor:.0} ops/s = {:.2}x the floor)",
            read / floor
        );
    }
}

/// How a round trip splits into CPU work and cross-core transfers.
fn breakdown(h: &Harness) {
    for (two, one) in [
        ("ring_read_roundtrips", "ring_read_one_thread"),
        ("ring_floor_roundtrips", "ring_floor_one_thread"),
    ] {
        if let (Some(two_rate), Some(one_rate)) = (h.result(two), h.result(one)) {
            let (total, cpu) = (1e9 / two_rate, 1e9 / one_rate);
            eprintln!(
                "  {two}: {total:.0} ns per round trip, of which {cpu:.0} ns of CPU work \
                 ({one}) and {:.0} ns of waiting for the other core",
                total - cpu
            );
        }
    }
}

fn main() -> ExitCode {
    let h = match Harness::from_args("bench-ring", HELP) {
        Ok(h) => h,
        Err(code) => return code,
    };
    let start = Instant::now();
    let cpus = match daemon::allowed_cpus() {
        Ok(cpus) if cpus.len() >= 2 => Some((cpus[0], cpus[1])),
        Ok(cpus) => {
            eprintln!(
                "bench-ring: only {} CPU(s) allowed; not pinning (the figures mean little)",
                cpus.len()
            );
            None
        }
        Err(e) => {
            eprintln!("bench-ring: cannot read the CPU affinity ({e}); not pinning");
            None
        }
    };
    let mut h = h.with_alloc(&ALLOC);
    eprintln!(
        "bench-ring ({} mode, {} ms per run, median of 3; guest on CPU {}, server on CPU {})",
        if h.quick() { "quick" } else { "full" },
        h.run_time().as_millis(),
        cpus.map_or("-".to_owned(), |c| c.0.to_string()),
        cpus.map_or("-".to_owned(), |c| c.1.to_string()),
    );
    measure(&mut h, "ring_read_roundtrips", Side::Store, 1, cpus);
    measure(&mut h, "ring_floor_roundtrips", Side::Floor, 1, cpus);
    measure(&mut h, "ring_read_pipelined", Side::Store, IN_FLIGHT, cpus);
    measure(&mut h, "ring_floor_pipelined", Side::Floor, IN_FLIGHT, cpus);
    one_thread(&mut h, "ring_read_one_thread", Side::Store);
    one_thread(&mut h, "ring_floor_one_thread", Side::Floor);
    goals(&h);
    breakdown(&h);
    eprintln!("bench-ring: done in {:.1} s", start.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}
