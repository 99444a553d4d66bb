//! The ring ends against each other on a shared page, and hostile peers. (The pump serving a
//! real store over a ring is tested in xs-serve.)

use xs_ring::layout::{CONNECTED, ERROR_NONE, Field, RECONNECT};
use xs_ring::{Guest, Page, RING_SIZE, RingFault, Server, ServerFeatures, SharedPage};

fn pair(page: &SharedPage) -> (Server<&SharedPage>, Guest<&SharedPage>) {
    let server = Server::new(page, Server::<&SharedPage>::FEATURES);
    let guest = Guest::new(page);
    (server, guest)
}

#[test]
fn features_are_offered_before_anything_else() {
    let page: SharedPage = SharedPage::default();
    let (_s, g) = pair(&page);
    assert_eq!(
        g.server_features(),
        ServerFeatures::RECONNECTION | ServerFeatures::ERROR
    );
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
    assert_eq!(fault, RingFault::Index);
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
    assert_eq!(fault, RingFault::Index);
    assert_eq!(g.error(), RingFault::Index.code());
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
    assert_eq!(s.peek(&mut buf).unwrap_err(), RingFault::Index);

    // A consumer index beyond what was produced.
    let page: SharedPage = SharedPage::default();
    let (mut s, _g) = pair(&page);
    s.write(b"abc").unwrap();
    page.store(Field::RspCons, 10);
    assert_eq!(s.write(b"d").unwrap_err(), RingFault::Index);
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
    assert!(!s.recheck(false));
    g.request_reconnect();
    assert!(s.recheck(false));
    s.reconnect();
    assert!(g.reconnected());
    assert_eq!(g.error(), ERROR_NONE);
    g.write(b"ok").unwrap();
    assert_eq!(s.peek(&mut [0u8; 8]).unwrap(), 2);
}
