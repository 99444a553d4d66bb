//! Loom models of the ring protocol: both ends on a tiny page whose data bytes are loom
//! `UnsafeCell`s, so that loom reports a data race exactly when the protocol's orderings (the
//! fences of `xs_ring::order`, which switch to loom's fences under `--cfg loom`) fail to order
//! a producer's write of a byte before the consumer's read of it, or the consumer's read
//! before the producer's overwrite.
//!
//! Run with
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=10 \
//!     cargo test -p xs-ring --test loom --release -- --nocapture
//! ```
//!
//! (`cargo xtask test --only loom` does exactly that.) Each model prints how many executions
//! loom explored, also when one fails. `LOOM_MAX_PREEMPTIONS` bounds the preemptions per
//! execution (loom's usual knob: most concurrency bugs need very few); unset, loom explores
//! every execution, which for these models takes about 40 s (most of it `both_directions`).
//! At 10, `guest_to_server`, `server_to_guest` and the hostile-index models are still
//! explored exhaustively (as many executions as unbounded); `reconnection_racing_with_traffic`
//! and `both_directions` explore 94% and 87% as many executions as unbounded.
//!
//! The models are small on purpose: a 4-byte ring and a few bytes more than it holds. Every
//! model starts the free-running indices just below `u32::MAX`, so they wrap too. Spin loops
//! call `loom::thread::yield_now` when they make no progress, which tells loom to run the
//! other thread (without it, a spinning thread's executions would never end).

#![cfg(loom)]

use std::sync::atomic::{AtomicUsize, Ordering as StdOrdering};
use std::time::Instant;

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicU32, Ordering};
use loom::thread;

use xs_ring::layout::{ERROR_NONE, Field, Ring};
use xs_ring::{Guest, Page, RingFault, Server};

/// The ring size of the models: small, so that a few bytes wrap around and fill the ring.
const N: usize = 4;

/// A ring page for loom: the eight fields as loom atomics (relaxed: the ordering must come
/// from `xs_ring::order`), the data bytes as one loom cell each.
struct LoomPage<const N: usize> {
    req: [UnsafeCell<u8>; N],
    rsp: [UnsafeCell<u8>; N],
    fields: [AtomicU32; 8],
}

impl<const N: usize> LoomPage<N> {
    fn new() -> LoomPage<N> {
        // The ring code masks indices with `RING - 1`.
        const { assert!(N.is_power_of_two(), "the ring size must be a power of two") };
        LoomPage {
            req: std::array::from_fn(|_| UnsafeCell::new(0)),
            rsp: std::array::from_fn(|_| UnsafeCell::new(0)),
            fields: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    /// `len` cells of `ring` from `offset`. The `Page` contract lets an implementation
    /// ignore an out-of-range copy; the ring code must never ask for one, so here it fails
    /// the model.
    fn cells(&self, ring: Ring, offset: usize, len: usize) -> &[UnsafeCell<u8>] {
        let cells = match ring {
            Ring::Req => &self.req,
            Ring::Rsp => &self.rsp,
        };
        let end = offset.checked_add(len).expect("copy range overflows");
        cells
            .get(offset..end)
            .unwrap_or_else(|| panic!("copy of {len} bytes at {offset} outside the ring"))
    }
}

/// A loom page as the threads of a model share it (a page through `Arc`, like any pointer
/// to a page, is a page).
type Shared<const N: usize> = Arc<LoomPage<N>>;

impl<const N: usize> Page for LoomPage<N> {
    const RING: usize = N;

    fn load(&self, field: Field) -> u32 {
        self.fields[field.index()].load(Ordering::Relaxed)
    }

    fn store(&self, field: Field, value: u32) {
        self.fields[field.index()].store(value, Ordering::Relaxed);
    }

    fn copy_out(&self, ring: Ring, offset: usize, dst: &mut [u8]) {
        let cells = self.cells(ring, offset, dst.len());
        for (d, cell) in dst.iter_mut().zip(cells) {
            // SAFETY: loom checks this read against every write of the cell: it fails the
            // model (instead of reading) unless the write happened before it.
            *d = cell.with(|p| unsafe { *p });
        }
    }

    fn copy_in(&self, ring: Ring, offset: usize, src: &[u8]) {
        for (s, cell) in src.iter().zip(self.cells(ring, offset, src.len())) {
            // SAFETY: loom checks this write against every access to the cell: it fails the
            // model (instead of writing) unless they all happened before it.
            cell.with_mut(|p| unsafe { *p = *s });
        }
    }
}

/// Runs `f` under loom and prints how many executions were explored (also when one
/// fails), under which preemption bound, and how long that took.
fn model<F>(name: &'static str, f: F)
where
    F: Fn() + Send + Sync + 'static,
{
    let builder = loom::model::Builder::new();
    let report = Report {
        name,
        bound: builder.preemption_bound,
        runs: std::sync::Arc::new(AtomicUsize::new(0)),
        start: Instant::now(),
    };
    let runs = report.runs.clone();
    builder.check(move || {
        runs.fetch_add(1, StdOrdering::Relaxed);
        f();
    });
}

/// What [`model`] prints when it is done, passed or failed.
struct Report {
    name: &'static str,
    bound: Option<usize>,
    runs: std::sync::Arc<AtomicUsize>,
    start: Instant,
}

impl Drop for Report {
    fn drop(&mut self) {
        let bound = self
            .bound
            .map_or_else(|| "none (exhaustive)".to_owned(), |b| b.to_string());
        eprintln!(
            "loom model {}: {} after {} executions, preemption bound {bound}, {:.1}s",
            self.name,
            if std::thread::panicking() {
                "FAILED"
            } else {
                "passed"
            },
            self.runs.load(StdOrdering::Relaxed),
            self.start.elapsed().as_secs_f64()
        );
    }
}

/// Both ends on a fresh page whose four indices all start at `start` (a guest may not
/// assume they start at zero; near `u32::MAX` they also wrap around).
fn ends(start: u32) -> (Server<Shared<N>>, Guest<Shared<N>>) {
    let page: Shared<N> = Arc::new(LoomPage::new());
    for f in [
        Field::ReqCons,
        Field::ReqProd,
        Field::RspCons,
        Field::RspProd,
    ] {
        page.store(f, start);
    }
    let server = Server::new(page.clone(), Server::<Shared<N>>::FEATURES);
    let guest = Guest::new(page);
    (server, guest)
}

/// The bytes a model sends: distinct, non-zero (the page starts zeroed).
fn payload(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|i| salt + i as u8).collect()
}

/// Writes all of `data` with `write`, yielding whenever the ring is full. The first write
/// goes into an empty ring and must fill it.
fn write_all(mut write: impl FnMut(&[u8]) -> Result<usize, RingFault>, data: &[u8]) {
    let mut sent = 0;
    while sent < data.len() {
        let n = write(&data[sent..]).expect("ring fault");
        if sent == 0 {
            assert_eq!(n, data.len().min(N), "an empty ring takes a ring's worth");
        }
        if n == 0 {
            thread::yield_now();
        }
        sent += n;
    }
}

/// Reads `len` bytes with `read` (which takes what it returns off the ring) in pieces of 3,
/// to consume at odd offsets, yielding whenever the ring is empty.
fn read_all(len: usize, mut read: impl FnMut(&mut [u8]) -> Result<usize, RingFault>) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 3];
    while got.len() < len {
        let n = read(&mut buf).expect("ring fault");
        if n == 0 {
            thread::yield_now();
        }
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// Guest to server: more bytes than the ring holds, so the ring fills and wraps around
/// (the indices themselves wrap past `u32::MAX` too); the server reads in pieces of 3 to
/// consume at odd offsets.
#[test]
fn guest_to_server() {
    model("guest_to_server", || {
        let data = payload(N + 2, 1);
        let (mut server, mut guest) = ends(u32::MAX - 1);
        let sent = data.clone();
        let writer = thread::spawn(move || write_all(|b| guest.write(b), &sent));
        let got = read_all(data.len(), |buf| {
            let n = server.peek(buf)?;
            server.consume(n);
            Ok(n)
        });
        writer.join().unwrap();
        assert_eq!(got, data);
        assert_eq!(server.peek(&mut [0u8; 3]), Ok(0));
    });
}

/// Server to guest: the mirror image.
#[test]
fn server_to_guest() {
    model("server_to_guest", || {
        let data = payload(N + 2, 1);
        let (mut server, mut guest) = ends(u32::MAX - 1);
        let sent = data.clone();
        let writer = thread::spawn(move || write_all(|b| server.write(b), &sent));
        let got = read_all(data.len(), |buf| guest.read(buf));
        writer.join().unwrap();
        assert_eq!(got, data);
        assert_eq!(guest.read(&mut [0u8; 3]), Ok(0));
    });
}

/// Both directions at once: the guest writes requests and reads replies, the server echoes
/// every request byte it reads. More bytes than the ring holds go each way, so both rings
/// wrap around; the guest's first write fills the request ring, and the reply ring fills
/// whenever the guest falls behind.
#[test]
fn both_directions() {
    model("both_directions", || {
        let data = payload(N + 1, 1);
        let (mut server, mut guest) = ends(u32::MAX - 1);
        let sent = data.clone();
        let client = thread::spawn(move || {
            let (mut at, mut got) = (0, Vec::new());
            let mut buf = [0u8; N];
            while got.len() < sent.len() {
                let wrote = guest.write(&sent[at..]).expect("ring fault");
                at += wrote;
                let read = guest.read(&mut buf).expect("ring fault");
                got.extend_from_slice(&buf[..read]);
                if wrote == 0 && read == 0 {
                    thread::yield_now();
                }
            }
            assert_eq!(got, sent);
        });
        // The server echoes what it reads, keeping what does not fit yet.
        let (mut pending, mut echoed) = (Vec::new(), 0);
        let mut buf = [0u8; N];
        while echoed < data.len() {
            let read = server.peek(&mut buf).expect("ring fault");
            server.consume(read);
            pending.extend_from_slice(&buf[..read]);
            let wrote = server.write(&pending).expect("ring fault");
            pending.drain(..wrote);
            echoed += wrote;
            if read == 0 && wrote == 0 {
                thread::yield_now();
            }
        }
        client.join().unwrap();
    });
}

/// Reconnection racing with traffic. The guest writes requests, reads what replies have
/// come, asks for a reconnection and waits for it, then must find both rings empty (a full
/// ring's worth of requests fits, no stale reply is left), and its post-reconnection
/// requests must arrive intact and be echoed back intact. The server serves (echoing every
/// request byte) and reconnects when asked, whatever state the rings are in; on
/// reconnection it drops its pending replies, as the caller drops the protocol connection.
#[test]
fn reconnection_racing_with_traffic() {
    model("reconnection_racing_with_traffic", || {
        let before = payload(2, 1);
        let after = payload(N, 11);
        // Not `MAX - 1`: there the guest's pre-reconnection request index would wrap to 0
        // and be indistinguishable from the reset one.
        let (mut server, mut guest) = ends(u32::MAX - 2);
        let (b, a) = (before.clone(), after.clone());
        let client = thread::spawn(move || {
            let mut buf = [0u8; N];
            // Before: requests, and whatever replies have come by now (stale ones may stay
            // in the ring).
            assert_eq!(guest.write(&b), Ok(b.len()));
            let n = guest.read(&mut buf[..1]).expect("ring fault");
            assert_eq!(buf[..n], b[..n]);
            guest.request_reconnect();
            while !guest.reconnected() {
                thread::yield_now();
            }
            // After: both rings empty.
            assert_eq!(
                guest.read(&mut buf),
                Ok(0),
                "stale reply after reconnection"
            );
            assert_eq!(
                guest.write(&a),
                Ok(N),
                "request ring not empty after reconnection"
            );
            let mut got = Vec::new();
            while got.len() < a.len() {
                let n = guest.read(&mut buf).expect("ring fault");
                if n == 0 {
                    thread::yield_now();
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, a);
        });
        let (mut reconnected, mut pending, mut got) = (false, Vec::new(), Vec::new());
        let mut echoed = 0;
        let mut buf = [0u8; N];
        while echoed < after.len() {
            if server.reconnect_requested() {
                assert!(!reconnected, "one reconnection asked for, two seen");
                server.reconnect();
                reconnected = true;
                pending.clear();
                got.clear();
            }
            let read = server.peek(&mut buf).expect("ring fault");
            server.consume(read);
            got.extend_from_slice(&buf[..read]);
            pending.extend_from_slice(&buf[..read]);
            let wrote = server.write(&pending).expect("ring fault");
            pending.drain(..wrote);
            if reconnected {
                echoed += wrote;
            }
            if read == 0 && wrote == 0 {
                thread::yield_now();
            }
        }
        client.join().unwrap();
        assert!(reconnected);
        assert_eq!(got, after, "requests after the reconnection");
    });
}

/// The server must see a hostile index as `RingFault::Index` and read nothing for it: the loom
/// page fails the model on any out-of-range copy, and loom on any byte read the guest did
/// not publish properly.
fn expect_ringidx(server: &mut Server<Shared<N>>, sent: &[u8]) {
    let mut got = Vec::new();
    let mut buf = [0u8; N];
    let fault = loop {
        match server.peek(&mut buf) {
            Ok(0) => thread::yield_now(),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                server.consume(n);
            }
            Err(fault) => break fault,
        }
    };
    assert_eq!(fault, RingFault::Index);
    assert_eq!(server.fault(), Some(fault));
    assert!(
        sent.starts_with(&got),
        "bytes read before the fault are the real ones"
    );
    // A broken ring is no longer served.
    assert_eq!(server.peek(&mut buf), Err(fault));
    assert_eq!(server.write(b"x"), Err(fault));
}

/// A guest sends two honest bytes, then `tamper`s with its producer index (given the page and
/// the index it published): the server must fault with `RingFault::Index` after reading only
/// real bytes ([`expect_ringidx`]), and the guest must see the fault.
fn hostile_req_prod(name: &'static str, tamper: fn(&Shared<N>, u32)) {
    model(name, move || {
        let data = payload(2, 1);
        let (mut server, mut guest) = ends(u32::MAX - 1);
        let sent = data.clone();
        let page = guest.page().clone();
        let hostile = thread::spawn(move || {
            assert_eq!(guest.write(&sent), Ok(sent.len()));
            tamper(&page, page.load(Field::ReqProd));
            while guest.error() == ERROR_NONE {
                thread::yield_now();
            }
            assert_eq!(guest.error(), RingFault::Index.code());
        });
        expect_ringidx(&mut server, &data);
        hostile.join().unwrap();
    });
}

/// A hostile guest publishes a producer index more than a ring ahead of what the server
/// consumed, after some honest traffic.
#[test]
fn hostile_req_prod_ahead() {
    hostile_req_prod("hostile_req_prod_ahead", |page, prod| {
        page.store(Field::ReqProd, prod.wrapping_add(N as u32 + 1));
    });
}

/// A hostile guest moves its producer index backwards, behind what the server consumed.
#[test]
fn hostile_req_prod_backwards() {
    hostile_req_prod("hostile_req_prod_backwards", |page, prod| {
        while page.load(Field::ReqCons) != prod {
            thread::yield_now();
        }
        page.store(Field::ReqProd, prod.wrapping_sub(1));
    });
}

/// A hostile guest frees reply space it was never given (its consumer index ahead of the
/// server's producer index): the server's next write fails.
#[test]
fn hostile_rsp_cons() {
    model("hostile_rsp_cons", || {
        let (mut server, guest) = ends(u32::MAX - 1);
        let page = guest.page().clone();
        let hostile = thread::spawn(move || {
            // Ahead of anything the server can have produced (it can fill the ring at most
            // once, nothing being consumed).
            let cons = page.load(Field::RspCons);
            page.store(Field::RspCons, cons.wrapping_add(N as u32 + 1));
        });
        let data = payload(N + 1, 1);
        let mut sent = 0;
        let fault = loop {
            match server.write(&data[sent..]) {
                Ok(0) => thread::yield_now(),
                Ok(n) => sent += n,
                Err(fault) => break fault,
            }
        };
        hostile.join().unwrap();
        assert_eq!(fault, RingFault::Index);
        assert_eq!(guest.error(), RingFault::Index.code());
    });
}
