//! The self-test's rig: the store serving rings in the image's memory, and a guest-side
//! client on each ring.
//!
//! Each ring is a page-aligned 4 KiB static reached through [`RawPage`], the production page
//! type, from both ends: the store's end is a [`Server`] with an xs-core [`Connection`],
//! served by the production [`pump`] (so through the production fences in `xs_ring::order`);
//! the guest's end is a [`Guest`] that writes requests and reads replies and events, as a
//! guest kernel's xenbus driver would. Single-threaded: the client writes, the rig pumps, the
//! client reads, in turn.
//!
//! Ring 0 is dom0's (the toolstack talks to a stub-domain XenStore through a ring too); the
//! other rings are mapped when dom0 introduces a domain over ring 0, as the production
//! `Host::introduced` does.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::ptr::NonNull;

use x86_glue::StubHost;
use xs_core::protocol::{Access, Connection, Host, Limits};
use xs_core::store::{ConnId, Introduced, Introduction};
use xs_core::wire::{HEADER_LEN, Header, MsgType, push_message};
use xs_core::{DomId, Store, XsResult};
use xs_ring::{Guest, RING_SIZE, RawPage, Server};
use xs_serve::pump::{Pumped, pump};

use crate::heap;
use crate::trace::{self, Event};

/// Ring pages available: dom0's and one per introduced test domain.
pub(crate) const RINGS: usize = 2;

/// A ring page: 4 KiB, page-aligned, in `.bss`.
#[repr(C, align(4096))]
struct RingPage(UnsafeCell<[u8; 4096]>);

// SAFETY: the page is only reached through `RawPage`s (atomic field accesses and volatile byte
// copies), which is how a page shared with another party must be accessed; Rust never forms a
// reference to its bytes.
unsafe impl Sync for RingPage {}

static RING_PAGES: [RingPage; RINGS] = [const { RingPage(UnsafeCell::new([0; 4096])) }; RINGS];

/// The guest frame number of ring page `n` (identity-mapped: its address >> 12).
pub(crate) fn ring_gfn(n: usize) -> u64 {
    (RING_PAGES[n].0.get() as u64) >> 12
}

/// A `RawPage` over ring page `n`.
fn raw_page(n: usize) -> RawPage {
    let page = NonNull::new(RING_PAGES[n].0.get().cast::<u8>()).unwrap_or(NonNull::dangling());
    // SAFETY: the page is a 'static, 4096-byte, page-aligned region, mapped read-write for the
    // whole run. Each side (the store's `Server`, the client's `Guest`) gets its own `RawPage`
    // and uses the page only through it, as the contract asks; the two sides are the two
    // parties the page is shared between.
    unsafe { RawPage::new(page) }
}

/// What the protocol told the rig (the production host maps rings and binds channels here).
#[derive(Debug)]
pub(crate) struct TestHost {
    /// Domains introduced, with the store connection opened for each.
    pub(crate) introduced: Vec<(DomId, Introduction, ConnId)>,
    /// Domains released.
    pub(crate) released: Vec<DomId>,
    /// The production host of the stub domain, for `CONTROL save-state`.
    pub(crate) stub: StubHost,
}

impl Default for TestHost {
    fn default() -> Self {
        TestHost {
            introduced: Vec::new(),
            released: Vec::new(),
            stub: StubHost::new(heap::usage),
        }
    }
}

impl Host for TestHost {
    fn introduced(
        &mut self,
        store: &mut Store,
        domid: DomId,
        intro: Introduction,
        kind: Introduced,
    ) {
        if kind == Introduced::New
            && let Ok(conn) = store.connect(domid)
        {
            self.introduced.push((domid, intro, conn));
        }
    }

    fn released(&mut self, _store: &mut Store, domid: DomId) {
        trace::record(Event::Released, u64::from(domid.0));
        self.released.push(domid);
    }

    fn save_state(&mut self, store: &mut Store, file: &[u8]) -> XsResult<()> {
        self.stub.save_state(store, file)
    }
}

/// A reply: its type and payload.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) msg_type: u32,
    pub(crate) payload: Vec<u8>,
}

impl Reply {
    /// The payload, or the error name of an `ERROR` reply.
    pub(crate) fn result(self) -> Result<Vec<u8>, String> {
        if self.msg_type == MsgType::Error as u32 {
            let name = self.payload.split(|&b| b == 0).next().unwrap_or_default();
            Err(String::from_utf8_lossy(name).into_owned())
        } else {
            Ok(self.payload)
        }
    }
}

/// One ring, both ends.
#[derive(Debug)]
pub(crate) struct Ring {
    pub(crate) number: usize,
    pub(crate) server: Server<RawPage>,
    pub(crate) conn: Connection,
    pub(crate) guest: Guest<RawPage>,
    /// Bytes read from the reply ring, not yet a whole message.
    inbox: Vec<u8>,
    /// Replies received, in order.
    replies: VecDeque<(Header, Vec<u8>)>,
    /// Watch events received: (path, token).
    pub(crate) events: VecDeque<(String, String)>,
    next_req: u32,
    /// The last pump's result.
    pub(crate) last: Pumped,
}

impl Ring {
    fn new(number: usize, conn: ConnId) -> Ring {
        Ring {
            number,
            server: Server::new(raw_page(number), Server::<RawPage>::FEATURES),
            conn: Connection::new(conn, Access::default(), Limits::default()),
            guest: Guest::new(raw_page(number)),
            inbox: Vec::new(),
            replies: VecDeque::new(),
            events: VecDeque::new(),
            next_req: 1,
            last: Pumped::default(),
        }
    }

    /// A `RawPage` over this ring's page, for a new server end.
    pub(crate) fn server_page(&self) -> RawPage {
        raw_page(self.number)
    }

    /// Forgets what the client had received (after a reconnection emptied the rings).
    pub(crate) fn reset_client(&mut self) {
        self.inbox.clear();
        self.replies.clear();
        self.events.clear();
    }

    /// Replies received whose request id satisfies `pred`.
    pub(crate) fn replies_with(&self, pred: impl Fn(u32) -> bool) -> usize {
        self.replies.iter().filter(|(h, _)| pred(h.req_id)).count()
    }

    /// Takes the payloads of the replies whose request id satisfies `pred`.
    pub(crate) fn take_replies(&mut self, pred: impl Fn(u32) -> bool) -> Vec<Vec<u8>> {
        let mut taken = Vec::new();
        self.replies.retain(|(h, payload)| {
            if pred(h.req_id) {
                taken.push(payload.clone());
                false
            } else {
                true
            }
        });
        taken
    }

    /// Reads what the reply ring holds and sorts whole messages into replies and events.
    fn drain(&mut self) -> Result<(), String> {
        let mut buf = [0u8; RING_SIZE];
        loop {
            let n = self
                .guest
                .read(&mut buf)
                .map_err(|f| format!("guest read: {f}"))?;
            if n == 0 {
                break;
            }
            self.inbox.extend_from_slice(&buf[..n]);
        }
        while self.inbox.len() >= HEADER_LEN {
            let mut h = [0u8; HEADER_LEN];
            h.copy_from_slice(&self.inbox[..HEADER_LEN]);
            let header = Header::decode(&h);
            let end = HEADER_LEN + header.len as usize;
            if self.inbox.len() < end {
                break;
            }
            let payload = self.inbox[HEADER_LEN..end].to_vec();
            self.inbox.drain(..end);
            if header.msg_type == MsgType::WatchEvent as u32 {
                let mut parts = payload.split(|&b| b == 0);
                let path = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                let token = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                self.events.push_back((path, token));
            } else {
                self.replies.push_back((header, payload));
            }
        }
        Ok(())
    }
}

/// The store and its rings.
#[derive(Debug)]
pub(crate) struct Rig {
    pub(crate) store: Store,
    pub(crate) host: TestHost,
    pub(crate) rings: Vec<Ring>,
}

/// Rounds of write/pump/read a request may take before the rig gives up on it.
const MAX_ROUNDS: usize = 64;

impl Rig {
    /// A store serving dom0 over ring 0.
    pub(crate) fn new(store: Store) -> Result<Rig, String> {
        let mut store = store;
        let dom0 = store
            .connect(DomId::DOM0)
            .map_err(|e| format!("connect dom0: {e}"))?;
        Ok(Rig {
            store,
            host: TestHost::default(),
            rings: alloc::vec![Ring::new(0, dom0)],
        })
    }

    /// Starts serving ring `number` for the store connection `conn` (what the production host
    /// does on `INTRODUCE`: map the ring, bind the channel).
    pub(crate) fn attach(&mut self, number: usize, conn: ConnId) -> Result<(), String> {
        if number >= RINGS || self.rings.iter().any(|r| r.number == number) {
            return Err(format!("ring {number} unavailable"));
        }
        self.rings.push(Ring::new(number, conn));
        Ok(())
    }

    fn ring(&mut self, number: usize) -> Result<(&mut Ring, &mut Store, &mut TestHost), String> {
        let Rig { store, host, rings } = self;
        let ring = rings
            .iter_mut()
            .find(|r| r.number == number)
            .ok_or_else(|| format!("ring {number} not attached"))?;
        Ok((ring, store, host))
    }

    /// Runs the pump on ring `number` once, as the production loop does on a notification.
    pub(crate) fn pump(&mut self, number: usize) -> Result<Pumped, String> {
        let (ring, store, host) = self.ring(number)?;
        let done = pump(&mut ring.server, &mut ring.conn, store, host);
        if done.notify {
            trace::record(Event::Notify, number as u64);
        }
        if let Some(fault) = done.fault {
            trace::record(Event::RingFault, u64::from(fault.code()));
        }
        ring.last = done;
        Ok(done)
    }

    /// Pumps every ring (watch events for one ring may come from a request on another).
    pub(crate) fn pump_all(&mut self) -> Result<(), String> {
        let numbers: Vec<usize> = self.rings.iter().map(|r| r.number).collect();
        for n in numbers {
            self.pump(n)?;
            let (ring, _, _) = self.ring(n)?;
            ring.drain()?;
        }
        Ok(())
    }

    /// Sends raw bytes from the guest on ring `number` (as many rounds as they need).
    pub(crate) fn send_raw(&mut self, number: usize, bytes: &[u8]) -> Result<(), String> {
        let mut sent = 0;
        for _ in 0..MAX_ROUNDS {
            let (ring, _, _) = self.ring(number)?;
            sent += ring
                .guest
                .write(&bytes[sent..])
                .map_err(|f| format!("guest write: {f}"))?;
            self.pump(number)?;
            let (ring, _, _) = self.ring(number)?;
            ring.drain()?;
            if sent == bytes.len() {
                return Ok(());
            }
        }
        Err(format!(
            "ring {number}: request not taken after {MAX_ROUNDS} rounds"
        ))
    }

    /// Sends one request on ring `number` and waits for its reply (events that arrive
    /// meanwhile are kept).
    pub(crate) fn call(
        &mut self,
        number: usize,
        msg_type: u32,
        tx: u32,
        payload: &[u8],
    ) -> Result<Reply, String> {
        let (ring, _, _) = self.ring(number)?;
        let req_id = ring.next_req;
        ring.next_req = ring.next_req.wrapping_add(1);
        let mut request = Vec::new();
        push_message(&mut request, msg_type, req_id, tx, payload);
        self.send_raw(number, &request)?;
        for _ in 0..MAX_ROUNDS {
            let (ring, _, _) = self.ring(number)?;
            if let Some(i) = ring.replies.iter().position(|(h, _)| h.req_id == req_id) {
                let Some((header, payload)) = ring.replies.remove(i) else {
                    continue;
                };
                if header.tx_id != tx {
                    return Err(format!(
                        "reply tx_id {} for request tx_id {tx}",
                        header.tx_id
                    ));
                }
                return Ok(Reply {
                    msg_type: header.msg_type,
                    payload,
                });
            }
            if let Some(fault) = ring.last.fault {
                return Err(format!("ring {number} stopped: {fault}"));
            }
            self.pump(number)?;
            let (ring, _, _) = self.ring(number)?;
            ring.drain()?;
        }
        Err(format!("ring {number}: no reply to request {req_id}"))
    }

    /// A request whose arguments are NUL-terminated strings.
    pub(crate) fn op(
        &mut self,
        number: usize,
        msg_type: MsgType,
        tx: u32,
        args: &[&str],
    ) -> Result<Vec<u8>, String> {
        let mut payload = Vec::new();
        for a in args {
            payload.extend_from_slice(a.as_bytes());
            payload.push(0);
        }
        self.call(number, msg_type as u32, tx, &payload)?.result()
    }

    pub(crate) fn read(&mut self, number: usize, tx: u32, path: &str) -> Result<String, String> {
        let value = self.op(number, MsgType::Read, tx, &[path])?;
        Ok(String::from_utf8_lossy(&value).into_owned())
    }

    pub(crate) fn write(
        &mut self,
        number: usize,
        tx: u32,
        path: &str,
        value: &[u8],
    ) -> Result<(), String> {
        let mut payload = Vec::new();
        payload.extend_from_slice(path.as_bytes());
        payload.push(0);
        payload.extend_from_slice(value);
        let reply = self.call(number, MsgType::Write as u32, tx, &payload)?;
        expect_ok(reply.result()?)
    }

    pub(crate) fn directory(
        &mut self,
        number: usize,
        tx: u32,
        path: &str,
    ) -> Result<Vec<String>, String> {
        let list = self.op(number, MsgType::Directory, tx, &[path])?;
        Ok(strings(&list))
    }

    /// A request answered `OK`.
    pub(crate) fn ok(
        &mut self,
        number: usize,
        msg_type: MsgType,
        tx: u32,
        args: &[&str],
    ) -> Result<(), String> {
        expect_ok(self.op(number, msg_type, tx, args)?)
    }

    pub(crate) fn tx_start(&mut self, number: usize) -> Result<u32, String> {
        let id = self.op(number, MsgType::TransactionStart, 0, &[""])?;
        let text =
            String::from_utf8_lossy(id.split(|&b| b == 0).next().unwrap_or_default()).into_owned();
        text.parse::<u32>()
            .map_err(|_| format!("TRANSACTION_START answered {text:?}"))
    }

    pub(crate) fn tx_end(&mut self, number: usize, tx: u32, commit: bool) -> Result<(), String> {
        let arg = if commit { "T" } else { "F" };
        self.ok(number, MsgType::TransactionEnd, tx, &[arg])
    }

    /// Pumps until ring `number` has an event, or gives up; returns it.
    pub(crate) fn next_event(&mut self, number: usize) -> Result<Option<(String, String)>, String> {
        for _ in 0..4 {
            let (ring, _, _) = self.ring(number)?;
            if let Some(e) = ring.events.pop_front() {
                return Ok(Some(e));
            }
            self.pump_all()?;
        }
        Ok(None)
    }

    /// Forgets events received so far on ring `number`.
    pub(crate) fn clear_events(&mut self, number: usize) -> Result<(), String> {
        self.pump_all()?;
        let (ring, _, _) = self.ring(number)?;
        ring.events.clear();
        Ok(())
    }

    /// The ring `number` itself.
    pub(crate) fn ring_mut(&mut self, number: usize) -> Result<&mut Ring, String> {
        Ok(self.ring(number)?.0)
    }
}

/// The NUL-separated strings of a payload.
pub(crate) fn strings(payload: &[u8]) -> Vec<String> {
    payload
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn expect_ok(payload: Vec<u8>) -> Result<(), String> {
    if payload == b"OK\0" {
        Ok(())
    } else {
        Err(format!(
            "expected OK, got {:?}",
            String::from_utf8_lossy(&payload)
        ))
    }
}

/// `Err` unless `got` is the error `want`.
pub(crate) fn expect_err<T: core::fmt::Debug>(
    got: Result<T, String>,
    want: &str,
) -> Result<(), String> {
    match got {
        Err(e) if e == want => Ok(()),
        Err(e) => Err(format!("expected {want}, got {e}")),
        Ok(v) => Err(format!("expected {want}, succeeded with {v:?}")),
    }
}

/// `Err` unless `got == want`.
pub(crate) fn expect_eq<T: PartialEq + core::fmt::Debug>(
    what: &str,
    got: T,
    want: T,
) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, expected {want:?}"))
    }
}

/// `Err(why)` unless `cond`.
pub(crate) fn ensure(cond: bool, why: impl ToString) -> Result<(), String> {
    if cond { Ok(()) } else { Err(why.to_string()) }
}
