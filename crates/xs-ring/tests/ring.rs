//! The ring ends against each other on a shared page, hostile peers, and the pump serving a
//! real store.

use xs_core::protocol::{Access, Connection, Limits, NoHost};
use xs_core::store::Introduction;
use xs_core::wire::{HEADER_LEN, Header, MsgType, push_message};
use xs_core::{DomId, Store, StoreConfig};
use xs_ring::layout::{
    CONNECTED, ERROR_NONE, ERROR_PROTO, ERROR_RINGIDX, FEATURE_ERROR, FEATURE_RECONNECTION, Field,
    RECONNECT, Ring,
};
use xs_ring::pump::{PUMP_PASSES, Pumped, pump};
use xs_ring::{Guest, Page, RING_SIZE, Server, SharedPage};

fn pair(page: &SharedPage) -> (Server<&SharedPage>, Guest<&SharedPage>) {
    let server = Server::new(page, Server::<&SharedPage>::FEATURES);
    let guest = Guest::new(page);
    (server, guest)
}

#[test]
fn features_are_offered_before_anything_else() {
    let page: SharedPage = SharedPage::default();
    let (_s, g) = pair(&page);
    assert_eq!(g.server_features(), FEATURE_RECONNECTION | FEATURE_ERROR);
    assert_eq!(g.error(), ERROR_NONE);
}

#[test]
fn peek_request_sees_what_peek_sees_and_consumes_nothing() {
    let page: SharedPage = SharedPage::default();
    for f in [Field::ReqCons, Field::ReqProd] {
        page.store(f, 1000);
    }
    let (mut s, mut g) = pair(&page);
    let data: Vec<u8> = (0..100u8).collect();
    assert_eq!(s.peek_request().unwrap(), b"");
    assert_eq!(g.write(&data).unwrap(), data.len());
    // Wrapped around index 1023 -> 0, and asked twice: nothing was consumed.
    assert_eq!(s.peek_request().unwrap(), data.as_slice());
    let mut buf = [0u8; RING_SIZE];
    let n = s.peek(&mut buf).unwrap();
    assert_eq!(&buf[..n], s.peek_request().unwrap());
    s.consume(60);
    assert_eq!(s.peek_request().unwrap(), &data[60..]);
    // A broken ring yields its fault, as `peek` does.
    page.store(Field::ReqProd, 1000 + 60 + 2000);
    let fault = s.peek_request().unwrap_err();
    assert_eq!(fault.code, ERROR_RINGIDX);
    assert_eq!(s.peek_request().unwrap_err(), fault);
}

#[test]
fn the_guest_peeks_replies_and_consumes_them_when_it_says() {
    let page: SharedPage = SharedPage::default();
    let (mut s, mut g) = pair(&page);
    assert_eq!(s.write(b"reply").unwrap(), 5);
    let mut buf = [0u8; 16];
    assert_eq!(g.peek(&mut buf).unwrap(), 5);
    assert_eq!(g.peek(&mut buf).unwrap(), 5);
    assert_eq!(&buf[..5], b"reply");
    assert_eq!(page.load(Field::RspCons), 0, "peeking frees nothing");
    g.consume(3);
    assert_eq!(page.load(Field::RspCons), 3);
    assert_eq!(g.read(&mut buf).unwrap(), 2);
    assert_eq!(&buf[..2], b"ly");
    assert_eq!(page.load(Field::RspCons), 5);
}

#[test]
fn bytes_cross_in_order_with_wrap_around_and_a_full_ring() {
    let page: SharedPage = SharedPage::default();
    // Indices need not start at zero: start near the end of the ring and of u32.
    for f in [
        Field::ReqCons,
        Field::ReqProd,
        Field::RspCons,
        Field::RspProd,
    ] {
        page.store(f, u32::MAX - 700);
    }
    let (mut s, mut g) = pair(&page);
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut sent = 0;
    let mut got = Vec::new();
    let mut buf = [0u8; RING_SIZE];
    while got.len() < data.len() {
        sent += g.write(&data[sent..]).unwrap();
        // A full ring takes nothing more.
        if sent - got.len() == RING_SIZE {
            assert_eq!(g.write(&data[sent..]).unwrap(), 0);
        }
        let n = s.peek(&mut buf).unwrap();
        // Consume in odd steps to exercise partial consumption.
        let take = n.min(333);
        got.extend_from_slice(&buf[..take]);
        s.consume(take);
    }
    assert_eq!(got, data);
    // And the other way.
    let mut echoed = Vec::new();
    let mut at = 0;
    while echoed.len() < data.len() {
        at += s.write(&data[at..]).unwrap();
        let n = g.read(&mut buf[..500]).unwrap();
        echoed.extend_from_slice(&buf[..n]);
    }
    assert_eq!(echoed, data);
}

#[test]
fn a_producer_more_than_a_ring_ahead_breaks_the_ring() {
    let page: SharedPage = SharedPage::default();
    let (mut s, g) = pair(&page);
    page.store(Field::ReqProd, RING_SIZE as u32 + 1);
    let mut buf = [0u8; 16];
    let fault = s.peek(&mut buf).unwrap_err();
    assert_eq!(fault.code, ERROR_RINGIDX);
    assert_eq!(g.error(), ERROR_RINGIDX);
    // Not served any more.
    page.store(Field::ReqProd, 0);
    assert!(s.peek(&mut buf).is_err());
    assert!(s.write(b"x").is_err());
}

#[test]
fn indices_moving_backwards_break_the_ring() {
    let page: SharedPage = SharedPage::default();
    let (mut s, mut g) = pair(&page);
    g.write(b"hello").unwrap();
    let mut buf = [0u8; 16];
    let n = s.peek(&mut buf).unwrap();
    s.consume(n);
    // The guest moves its producer back behind what was consumed.
    page.store(Field::ReqProd, 2);
    assert_eq!(s.peek(&mut buf).unwrap_err().code, ERROR_RINGIDX);

    // A consumer index beyond what was produced.
    let page: SharedPage = SharedPage::default();
    let (mut s, _g) = pair(&page);
    s.write(b"abc").unwrap();
    page.store(Field::RspCons, 10);
    assert_eq!(s.write(b"d").unwrap_err().code, ERROR_RINGIDX);
}

#[test]
fn a_guest_rewriting_the_servers_indices_changes_nothing() {
    let page: SharedPage = SharedPage::default();
    let (mut s, mut g) = pair(&page);
    g.write(b"0123456789").unwrap();
    let mut buf = [0u8; 4];
    assert_eq!(s.peek(&mut buf).unwrap(), 4);
    s.consume(4);
    // The guest scribbles over req_cons; the server keeps its own.
    page.store(Field::ReqCons, 0);
    assert_eq!(s.peek(&mut buf).unwrap(), 4);
    assert_eq!(&buf, b"4567");
}

#[test]
fn reconnection_empties_both_rings() {
    let page: SharedPage = SharedPage::default();
    let (mut s, mut g) = pair(&page);
    g.write(b"half a request").unwrap();
    s.write(b"an unread reply").unwrap();
    g.request_reconnect();
    assert_eq!(page.load(Field::Connection), RECONNECT);
    assert!(s.reconnect_requested());
    assert!(!g.reconnected());
    s.reconnect();
    assert!(g.reconnected());
    assert_eq!(page.load(Field::Connection), CONNECTED);
    let mut buf = [0u8; 32];
    assert_eq!(s.peek(&mut buf).unwrap(), 0);
    assert_eq!(g.read(&mut buf).unwrap(), 0);
    g.write(b"fresh").unwrap();
    assert_eq!(s.peek(&mut buf).unwrap(), 5);
}

#[test]
fn a_broken_ring_recovers_by_reconnection() {
    let page: SharedPage = SharedPage::default();
    let (mut s, mut g) = pair(&page);
    page.store(Field::ReqProd, 5000);
    assert!(s.peek(&mut [0u8; 8]).is_err());
    assert!(!s.has_work(false));
    g.request_reconnect();
    assert!(s.has_work(false));
    s.reconnect();
    assert!(g.reconnected());
    assert_eq!(g.error(), ERROR_NONE);
    g.write(b"ok").unwrap();
    assert_eq!(s.peek(&mut [0u8; 8]).unwrap(), 2);
}

/// A store serving domain 5's ring through the pump.
struct Served<'p, P: Page = SharedPage> {
    store: Store,
    conn: Connection,
    server: Server<&'p P>,
    guest: Guest<&'p P>,
}

/// A store with guest 5 introduced, and a protocol connection acting for it.
fn dom5() -> (Store, Connection) {
    let mut store = Store::new(StoreConfig::default()).unwrap();
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
    assert_eq!(done.fault.map(|f| f.code), Some(ERROR_PROTO));
    assert!(done.notify);
    assert_eq!(s.guest.error(), ERROR_PROTO);
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
