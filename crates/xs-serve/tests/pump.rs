//! The pump serving a real store over a ring page (moved from xs-ring's ring tests).

use xs_core::protocol::{Access, Connection, Limits, NoHost};
use xs_core::store::Introduction;
use xs_core::wire::{HEADER_LEN, Header, MsgType, push_message};
use xs_core::{DomId, Store, StoreConfig};
use xs_ring::layout::{Field, RECONNECT, Ring};
use xs_ring::{Guest, Page, RING_SIZE, RingFault, Server, SharedPage};
use xs_serve::pump::{PUMP_PASSES, Pumped, pump};

/// A store serving domain 5's ring through the pump.
struct Served<'p, P: Page = SharedPage> {
    store: Store,
    conn: Connection,
    server: Server<&'p P>,
    guest: Guest<&'p P>,
}

/// A store with guest 5 introduced, and a protocol connection acting for it.
fn dom5() -> (Store, Connection) {
    let mut store = Store::new(StoreConfig::new([1, 2])).unwrap();
    let d0 = store.connect(DomId::DOM0).unwrap();
    store
        .introduce(d0, DomId(5), Introduction { gfn: 1, evtchn: 1 })
        .unwrap();
    let id = store.connect(DomId(5)).unwrap();
    (
        store,
        Connection::new(id, Access::default(), Limits::default()),
    )
}

impl<'p, P: Page> Served<'p, P> {
    fn new(page: &'p P) -> Served<'p, P> {
        let (store, conn) = dom5();
        Served {
            conn,
            store,
            server: Server::new(page, Server::<&P>::FEATURES),
            guest: Guest::new(page),
        }
    }

    fn pump(&mut self) -> Pumped {
        pump(
            &mut self.server,
            &mut self.conn,
            &mut self.store,
            &mut NoHost,
        )
    }

    /// Sends one request and returns the reply's type and payload.
    fn call(&mut self, t: MsgType, payload: &[u8]) -> (u32, Vec<u8>) {
        let mut req = Vec::new();
        push_message(&mut req, t as u32, 1, 0, payload);
        let mut at = 0;
        let mut reply = Vec::new();
        loop {
            at += self.guest.write(&req[at..]).unwrap();
            self.pump();
            let mut buf = [0u8; RING_SIZE];
            let n = self.guest.read(&mut buf).unwrap();
            reply.extend_from_slice(&buf[..n]);
            if reply.len() >= HEADER_LEN {
                let h = Header::decode(reply[..HEADER_LEN].try_into().unwrap());
                if reply.len() >= HEADER_LEN + h.len as usize {
                    return (h.msg_type, reply[HEADER_LEN..].to_vec());
                }
            }
        }
    }
}

#[test]
fn the_pump_serves_a_guest() {
    let page: SharedPage = SharedPage::default();
    let mut s = Served::new(&page);
    assert_eq!(
        s.call(MsgType::Read, b"domid\0"),
        (MsgType::Read as u32, b"5".to_vec())
    );
    assert_eq!(
        s.call(MsgType::Write, b"data/x\0value"),
        (MsgType::Write as u32, b"OK\0".to_vec())
    );
    // A value larger than the ring (within the guest's 2048-byte node-size quota) crosses
    // it in several rounds, both ways.
    let big = vec![b'v'; 2000];
    let mut req = b"data/big\0".to_vec();
    req.extend_from_slice(&big);
    assert_eq!(s.call(MsgType::Write, &req).1, b"OK\0");
    assert_eq!(s.call(MsgType::Read, b"data/big\0").1, big);
    // The guest's permissions apply.
    assert_eq!(
        s.call(MsgType::Read, b"/tool\0"),
        (MsgType::Error as u32, b"EACCES\0".to_vec())
    );
}

/// A shared page seen through hooks: `before_load` runs before each field load and may
/// answer in its place, `on_store` is told of each field store; data bytes pass straight
/// through.
struct Spy<'p, L, S> {
    page: &'p SharedPage,
    before_load: L,
    on_store: S,
}

impl<L: Fn(Field) -> Option<u32>, S: Fn(Field)> Page for Spy<'_, L, S> {
    const RING: usize = RING_SIZE;

    fn load(&self, field: Field) -> u32 {
        (self.before_load)(field).unwrap_or_else(|| self.page.load(field))
    }

    fn store(&self, field: Field, value: u32) {
        (self.on_store)(field);
        self.page.store(field, value);
    }

    fn copy_out(&self, ring: Ring, offset: usize, dst: &mut [u8]) {
        self.page.copy_out(ring, offset, dst);
    }

    fn copy_in(&self, ring: Ring, offset: usize, src: &[u8]) {
        self.page.copy_in(ring, offset, src);
    }
}

/// The pump publishes a reply before it consumes the request: the two index stores hit the
/// index cache line together (see `pump`).
#[test]
fn a_request_is_consumed_after_its_reply_is_published() {
    let shared: SharedPage = SharedPage::default();
    let stores = std::cell::RefCell::new(Vec::new());
    let page = Spy {
        page: &shared,
        before_load: |_| None,
        on_store: |field| stores.borrow_mut().push(field),
    };
    let mut s = Served::new(&page);
    let mut req = Vec::new();
    push_message(&mut req, MsgType::Read as u32, 1, 0, b"domid\0");
    assert_eq!(s.guest.write(&req), Ok(req.len()));
    stores.borrow_mut().clear();
    let done = s.pump();
    assert!(done.notify && done.fault.is_none());
    assert_eq!(*stores.borrow(), [Field::RspProd, Field::ReqCons]);
    let mut reply = [0u8; 64];
    let n = s.guest.read(&mut reply).unwrap();
    assert_eq!(&reply[n - 1..n], b"5");
}

#[test]
fn an_overlong_header_sets_the_protocol_error() {
    let page: SharedPage = SharedPage::default();
    let mut s = Served::new(&page);
    let bad = Header {
        msg_type: MsgType::Read as u32,
        req_id: 1,
        tx_id: 0,
        len: 5000,
    }
    .encode();
    s.guest.write(&bad).unwrap();
    let done = s.pump();
    assert_eq!(done.fault, Some(RingFault::Protocol));
    assert!(done.notify);
    assert_eq!(s.guest.error(), RingFault::Protocol.code());
    // Reconnection revives it, with the connection's state reset.
    s.guest.request_reconnect();
    let done = s.pump();
    assert!(done.notify && done.fault.is_none());
    assert!(s.guest.reconnected());
    assert_eq!(s.call(MsgType::Read, b"domid\0").1, b"5");
}

#[test]
fn a_guest_that_never_reads_fills_its_rings_not_the_store() {
    let page: SharedPage = SharedPage::default();
    let mut s = Served::new(&page);
    let mut req = Vec::new();
    push_message(&mut req, MsgType::Read as u32, 1, 0, b"domid\0");
    // Keep writing requests and pumping without ever reading replies.
    let stream: Vec<u8> = req
        .iter()
        .copied()
        .cycle()
        .take(req.len() * 10_000)
        .collect();
    let mut written = 0;
    loop {
        let n = s.guest.write(&stream[written..]).unwrap();
        written += n;
        s.pump();
        if n == 0 {
            // Nothing fitted even after a pump: everything is full.
            let again = s.guest.write(&stream[written..]).unwrap();
            written += again;
            if again == 0 {
                break;
            }
        }
    }
    // What the request ring, the connection's pending replies and the reply ring hold.
    let accepted = written / req.len();
    assert!(accepted < 200, "{accepted} requests accepted");
    assert!(s.conn.pending() <= 20);
    let before = s.store.usage(DomId(5)).unwrap().memory;
    for _ in 0..100 {
        s.pump();
    }
    assert_eq!(s.store.usage(DomId(5)).unwrap().memory, before);
}

#[test]
fn a_guest_that_never_rests_cannot_hold_the_pump() {
    for reconnecting in [false, true] {
        let page: SharedPage = SharedPage::default();
        let mut request = Vec::new();
        push_message(&mut request, MsgType::Read as u32, 1, 0, b"domid\0");
        let guest = std::cell::RefCell::new(Guest::new(&page));
        let written = std::cell::Cell::new(0usize);
        // Times the server looked at `connection` (once per pass of the pump).
        let looks = std::cell::Cell::new(0usize);
        // A guest vCPU that never rests: each time the server looks at `req_prod`, the guest
        // has read every reply and written one more request, and (if `reconnecting`) asked
        // for a reconnection again.
        let restless = Spy {
            page: &page,
            before_load: |field| match field {
                Field::ReqProd => {
                    let mut g = guest.borrow_mut();
                    let mut buf = [0u8; RING_SIZE];
                    while g.read(&mut buf).unwrap() > 0 {}
                    if g.write(&request).unwrap() == request.len() {
                        written.set(written.get() + 1);
                    }
                    None
                }
                Field::Connection => {
                    looks.set(looks.get() + 1);
                    reconnecting.then_some(RECONNECT)
                }
                _ => None,
            },
            on_store: |_| {},
        };
        let (mut store, mut conn) = dom5();
        let mut server = Server::new(&restless, Server::<&SharedPage>::FEATURES);
        let done = pump(&mut server, &mut conn, &mut store, &mut NoHost);
        // The pump came back although there was always more to do, after its passes.
        assert!(done.notify, "reconnecting={reconnecting}");
        assert_eq!(done.fault, None);
        assert_eq!(looks.get(), PUMP_PASSES, "reconnecting={reconnecting}");
        if !reconnecting {
            // One request answered per pass.
            assert_eq!(written.get(), PUMP_PASSES);
        }
    }
}
