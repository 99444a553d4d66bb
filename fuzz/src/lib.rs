//! Fuzz harnesses. Each takes arbitrary input and must never panic; the store's own
//! consistency check must hold after everything they do.

use arbitrary::Arbitrary;
use xs_core::protocol::{Access, Connection, Limits, NoHost};
use xs_core::store::Introduction;
use xs_core::wire::{Args, HEADER_LEN, Header, push_message};
use xs_core::{DomId, Perm, QuotaKind, Store, StoreConfig, path};

/// The parsers: header, argument layouts, paths, permission lists, numbers.
pub fn wire(data: &[u8]) {
    if let Some(h) = data.first_chunk::<HEADER_LEN>() {
        let header = Header::decode(h);
        assert_eq!(Header::decode(&header.encode()), header);
        let _ = header.check();
        let _ = header.kind();
    }
    let args = Args(data);
    let _ = args.one();
    let _ = args.path_and_value();
    let _ = args.exactly::<2>();
    let _ = args.at_least::<3>();
    assert_eq!(args.strings().count(), args.count());
    let _ = xs_core::perms::parse_list(args.strings());
    let _ = xs_core::wire::u32_arg(data);
    let _ = DomId::parse(data);
    let mut buf = Vec::new();
    let mut reused = path::PathBuffer::default();
    for allow_special in [false, true] {
        // The store's reused buffer agrees with a fresh canonicalization: after another
        // domain's home (longer or shorter than this one's), and after this domain's.
        for domid in [DomId(12345), DomId(7), DomId(7)] {
            let again = reused
                .canonicalize(data, domid, allow_special)
                .map(|(p, c)| (p.to_vec(), c));
            let fresh = path::canonicalize(data, domid, allow_special, &mut buf);
            assert_eq!(fresh.map(|(p, c)| (p.to_vec(), c)), again);
        }
        if let Ok((p, canon)) = path::canonicalize(data, DomId(7), allow_special, &mut buf) {
            assert!(p.len() <= path::ABS_PATH_MAX);
            assert!(canon.relative_prefix <= p.len());
            let _ = path::local_suffix_len(p);
            let _ = path::parent(p);
            let _ = path::basename(p);
            assert!(path::segments(p).all(|s| !s.is_empty()));
        }
    }
}

/// A store with dom0, an introduced guest 5 and a read-only dom0 connection, each behind a
/// protocol connection. The input drives them: each step picks a connection and a chunk
/// length, feeds that many bytes, and lets the peer read part of the output.
pub fn connection(data: &[u8]) {
    let mut store = match Store::new(StoreConfig {
        event_queue_len: 8,
        ..StoreConfig::new([1, 2])
    }) {
        Ok(s) => s,
        Err(_) => return,
    };
    let Ok(dom0) = store.connect(DomId::DOM0) else {
        return;
    };
    let intro = Introduction { gfn: 1, evtchn: 1 };
    if store.introduce(dom0, DomId(5), intro).is_err() {
        return;
    }
    let (Ok(guest), Ok(ro)) = (store.connect(DomId(5)), store.connect(DomId::DOM0)) else {
        return;
    };
    let limits = Limits {
        privileged_pending: 16,
    };
    let mut conns = [
        Connection::new(dom0, Access::default(), limits),
        Connection::new(guest, Access::default(), limits),
        Connection::new(ro, Access { read_only: true }, limits),
    ];
    // Seed the tree so that requests find something to work on.
    let mut seed = Vec::new();
    for (i, p) in ["/a/b\0v", "/local/domain/5/data/x\0y"].iter().enumerate() {
        push_message(&mut seed, 11, i as u32, 0, p.as_bytes());
    }
    let _ = conns[0].receive(&mut store, &mut NoHost, &seed);
    let mut rest = data;
    while let [select, len, tail @ ..] = rest {
        let which = usize::from(*select % 3);
        let n = usize::from(*len).min(tail.len());
        let (chunk, after) = tail.split_at(n);
        rest = after;
        let conn = &mut conns[which];
        let _ = conn.receive(&mut store, &mut NoHost, chunk);
        conn.pull_events(&mut store, &mut NoHost);
        // The peer reads some of what it was sent.
        let out = conn.output().len();
        conn.consume_output(&mut store, out / (usize::from(*select >> 2) % 3 + 1));
        if *select == 0xff {
            conn.reset(&mut store);
        }
        assert_eq!(store.check(), Ok(()));
    }
}

/// One operation of [`store_ops`].
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    Read(u8, u8, u8),
    Write(u8, u8, u8, [u8; 3]),
    Mkdir(u8, u8, u8),
    Rm(u8, u8, u8),
    Directory(u8, u8, u8),
    DirectoryPart(u8, u8, u8, u16),
    GetPerms(u8, u8, u8),
    SetPerms(u8, u8, u8, [(u8, u8); 3], u8),
    Watch(u8, u8, u8, Option<u8>),
    Unwatch(u8, u8, u8),
    Start(u8),
    End(u8, u8, bool),
    Pop(u8),
    Introduce(u8),
    Release(u8),
    Shutdown(u8),
    Quota(u8, u8, u8),
    Reconnect(u8),
}

/// Decodes as many operations as `data` holds (each takes a few bytes).
pub fn decode_ops(data: &[u8]) -> Vec<Op> {
    let mut u = arbitrary::Unstructured::new(data);
    let mut ops = Vec::new();
    while !u.is_empty() {
        match Op::arbitrary(&mut u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    ops
}

const PATHS: &[&str] = &[
    "/",
    "/a",
    "/a/b",
    "/a/b/c",
    "/a/d",
    "/local/domain/1",
    "/local/domain/1/data",
    "/local/domain/1/data/x",
    "/local/domain/2/device/vif/0",
    "data/y",
    "device",
    "@releaseDomain",
    "@introduceDomain",
    "/a//b",
    "/a/b/",
    "",
    "/@x",
];

/// Random operation sequences on three connections (dom0, guests 1 and 2), with
/// transactions, watches, permissions, quotas and domains coming and going.
pub fn store_ops(ops: &[Op]) {
    let Ok(mut store) = Store::new(StoreConfig {
        event_queue_len: 4,
        history_limit: 2048,
        ..StoreConfig::new([1, 2])
    }) else {
        return;
    };
    let Ok(dom0) = store.connect(DomId::DOM0) else {
        return;
    };
    let mut conns = vec![dom0];
    for d in [1u16, 2] {
        let _ = store.introduce(dom0, DomId(d), Introduction { gfn: 1, evtchn: 1 });
        if let Ok(c) = store.connect(DomId(d)) {
            conns.push(c);
        }
    }
    let mut txs: Vec<(usize, u32)> = Vec::new();
    let conn_of = |i: u8, conns: &Vec<_>| conns[usize::from(i) % conns.len()];
    let path_of = |i: u8| PATHS[usize::from(i) % PATHS.len()].as_bytes();
    let tx_of = |i: u8, c: usize, txs: &Vec<(usize, u32)>| {
        if i.is_multiple_of(2) {
            0
        } else {
            txs.iter()
                .find(|(tc, _)| *tc == c)
                .map_or(u32::from(i), |(_, t)| *t)
        }
    };
    let mut out = Vec::new();
    for op in ops {
        out.clear();
        match op {
            Op::Read(c, t, p) => {
                let ci = usize::from(*c) % conns.len();
                let _ = store.read(conns[ci], tx_of(*t, ci, &txs), path_of(*p), &mut out);
            }
            Op::Write(c, t, p, v) => {
                let ci = usize::from(*c) % conns.len();
                let value = &v[..usize::from(v[0] % 4).min(v.len())];
                let _ = store.write(conns[ci], tx_of(*t, ci, &txs), path_of(*p), value);
            }
            Op::Mkdir(c, t, p) => {
                let ci = usize::from(*c) % conns.len();
                let _ = store.mkdir(conns[ci], tx_of(*t, ci, &txs), path_of(*p));
            }
            Op::Rm(c, t, p) => {
                let ci = usize::from(*c) % conns.len();
                let _ = store.rm(conns[ci], tx_of(*t, ci, &txs), path_of(*p));
            }
            Op::Directory(c, t, p) => {
                let ci = usize::from(*c) % conns.len();
                let _ = store.directory(conns[ci], tx_of(*t, ci, &txs), path_of(*p), &mut out);
            }
            Op::DirectoryPart(c, t, p, off) => {
                let ci = usize::from(*c) % conns.len();
                let tx = tx_of(*t, ci, &txs);
                let _ =
                    store.directory_part(conns[ci], tx, path_of(*p), usize::from(*off), &mut out);
            }
            Op::GetPerms(c, t, p) => {
                let ci = usize::from(*c) % conns.len();
                let _ = store.get_perms(conns[ci], tx_of(*t, ci, &txs), path_of(*p));
            }
            Op::SetPerms(c, t, p, list, n) => {
                let ci = usize::from(*c) % conns.len();
                let perms: Vec<Perm> = list
                    .iter()
                    .take(usize::from(*n % 4))
                    .map(|(d, a)| Perm {
                        domid: DomId(u16::from(*d % 4)),
                        access: xs_core::Access::from_bits_truncate(*a),
                    })
                    .collect();
                let _ = store.set_perms(conns[ci], tx_of(*t, ci, &txs), path_of(*p), &perms);
            }
            Op::Watch(c, p, tok, depth) => {
                let _ = store.watch(
                    conn_of(*c, &conns),
                    path_of(*p),
                    &[b't', *tok % 3],
                    depth.map(u32::from),
                );
            }
            Op::Unwatch(c, p, tok) => {
                let _ = store.unwatch(conn_of(*c, &conns), path_of(*p), &[b't', *tok % 3]);
            }
            Op::Start(c) => {
                let ci = usize::from(*c) % conns.len();
                if let Ok(t) = store.transaction_start(conns[ci]) {
                    txs.push((ci, t));
                }
            }
            Op::End(c, t, commit) => {
                let ci = usize::from(*c) % conns.len();
                let tx = tx_of(*t | 1, ci, &txs);
                let _ = store.transaction_end(conns[ci], tx, *commit);
                txs.retain(|&(tc, tt)| !(tc == ci && tt == tx));
            }
            Op::Pop(c) => {
                let _ = store.pop_event(conn_of(*c, &conns));
            }
            Op::Introduce(d) => {
                let domid = DomId(u16::from(*d % 3) + 1);
                let _ = store.introduce(dom0, domid, Introduction { gfn: 1, evtchn: 1 });
                if let Ok(c) = store.connect(domid) {
                    conns.push(c);
                }
            }
            Op::Release(d) => {
                let _ = store.release(dom0, DomId(u16::from(*d % 3) + 1));
            }
            Op::Shutdown(d) => store.domain_shutdown(DomId(u16::from(*d % 3) + 1)),
            Op::Quota(d, k, v) => {
                let kind = QuotaKind::ALL[usize::from(*k) % QuotaKind::ALL.len()];
                let _ = store.set_quota(dom0, Some(DomId(u16::from(*d % 3))), kind, u32::from(*v));
            }
            Op::Reconnect(c) => store.reset_connection(conn_of(*c, &conns)),
        }
        assert_eq!(store.check(), Ok(()), "after {op:?}");
        let _ = store.take_notifications();
    }
    for c in conns {
        store.disconnect(c);
    }
    assert_eq!(store.check(), Ok(()));
    assert_eq!(store.transaction_count(), 0);
    assert_eq!(store.history_bytes(), 0);
}

/// One step of [`ring`]: what a hostile guest does to its ring page between two pumps of
/// the server, or a pump.
#[derive(Arbitrary, Debug, Clone)]
pub enum RingStep {
    /// Arbitrary bytes written straight into the request ring (or the reply ring) at an
    /// offset, bypassing the guest end.
    Scribble {
        replies: bool,
        offset: u16,
        bytes: Vec<u8>,
    },
    /// A field of the page set to any value.
    SetField { field: u8, value: u32 },
    /// A field moved by a small amount (near-valid indices).
    NudgeField { field: u8, delta: i16 },
    /// A well-formed request written through the guest end.
    Request {
        msg_type: u8,
        req_id: u32,
        tx_id: u8,
        path: u8,
        value_len: u16,
    },
    /// Arbitrary bytes written through the guest end.
    Write(Vec<u8>),
    /// The guest reads up to this many reply bytes.
    Read(u16),
    /// The guest asks for a reconnection.
    Reconnect,
    /// The guest end restarts from the indices in the page.
    Resync,
    /// The server serves the ring.
    Pump,
}

/// Decodes as many ring steps as `data` holds.
pub fn decode_ring_steps(data: &[u8]) -> Vec<RingStep> {
    let mut u = arbitrary::Unstructured::new(data);
    let mut steps = Vec::new();
    while !u.is_empty() {
        match RingStep::arbitrary(&mut u) {
            Ok(step) => steps.push(step),
            Err(_) => break,
        }
    }
    steps
}

/// What a [`ring`] run went through (the smoke test checks that seeded runs reach the
/// interesting states).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    pub pumps: usize,
    /// Pumps that consumed request bytes.
    pub consumed: usize,
    /// Pumps that wrote reply bytes.
    pub produced: usize,
    /// Rings broken for an inconsistent index.
    pub index_faults: usize,
    /// Rings broken for an overlong message.
    pub proto_faults: usize,
    pub reconnects: usize,
}

impl core::ops::AddAssign for RingStats {
    fn add_assign(&mut self, other: RingStats) {
        // Destructured, so that a new field does not compile until it is added here.
        let RingStats {
            pumps,
            consumed,
            produced,
            index_faults,
            proto_faults,
            reconnects,
        } = other;
        self.pumps += pumps;
        self.consumed += consumed;
        self.produced += produced;
        self.index_faults += index_faults;
        self.proto_faults += proto_faults;
        self.reconnects += reconnects;
    }
}

const RING_FIELDS: [xs_ring::layout::Field; 8] = {
    use xs_ring::layout::Field;
    [
        Field::ReqCons,
        Field::ReqProd,
        Field::RspCons,
        Field::RspProd,
        Field::ServerFeatures,
        Field::Connection,
        Field::Error,
        Field::EvtchnPort,
    ]
};

const RING_PATHS: &[&[u8]] = &[
    b"domid",
    b"data",
    b"data/a",
    b"data/a/b",
    b"/local/domain/5/data/c",
    b"/tool",
    b"@releaseDomain",
    b"",
];

const RING_TYPES: [xs_core::wire::MsgType; 12] = {
    use xs_core::wire::MsgType as T;
    [
        T::Read,
        T::Write,
        T::Mkdir,
        T::Rm,
        T::Directory,
        T::GetPerms,
        T::Watch,
        T::Unwatch,
        T::TransactionStart,
        T::TransactionEnd,
        T::DirectoryPart,
        T::ResetWatches,
    ]
};

/// The ring page served by the pump over a real store (guest 5), with a hostile guest: the
/// input is a sequence of [`RingStep`]s. After every pump:
///
/// * the store's consistency check holds, and the connection holds no more than the
///   guest's `outstanding` quota of messages;
/// * the server consumed no more request bytes than the guest had published, and never
///   from an index more than a ring ahead; it published no more reply bytes than the reply
///   ring had room for (its own indices are observed through sentinels: it never reads
///   them back from the page);
/// * a ring broken for an index reason really had an inconsistent index, one broken for the
///   protocol really saw an overlong header; either way the page's `error` says so, and the
///   ring stays broken, consuming and producing nothing, until the guest asks for a
///   reconnection, which leaves every index at 0 and the error cleared;
/// * when [`Server::recheck`] says there is nothing to do, a pump does nothing (no lost
///   wake-up).
///
/// At the end, a reconnection must bring back a working ring: `READ domid` answered `5`.
///
/// [`Server::recheck`]: xs_ring::Server::recheck
pub fn ring(data: &[u8]) {
    ring_stats(&decode_ring_steps(data));
}

/// The server side of [`ring`], and what it knows of the server's own indices.
struct Served<'p> {
    page: &'p xs_ring::SharedPage,
    store: Store,
    conn: Connection,
    server: xs_ring::Server<&'p xs_ring::SharedPage>,
    outstanding: usize,
    /// The server's request consumer index, as it last published it.
    cons: u32,
    /// The server's reply producer index, as it last published it.
    prod: u32,
    /// The page's `error` was overwritten by the guest since the server last set it.
    error_touched: bool,
    stats: RingStats,
}

impl<'p> Served<'p> {
    fn new(page: &'p xs_ring::SharedPage) -> Option<Served<'p>> {
        let mut store = Store::new(StoreConfig::new([1, 2])).ok()?;
        let dom0 = store.connect(DomId::DOM0).ok()?;
        store
            .introduce(dom0, DomId(5), Introduction { gfn: 1, evtchn: 1 })
            .ok()?;
        let id = store.connect(DomId(5)).ok()?;
        let outstanding = store.effective_quotas(DomId(5)).get(QuotaKind::Outstanding) as usize;
        Some(Served {
            page,
            store,
            conn: Connection::new(id, Access::default(), Limits::default()),
            server: xs_ring::Server::new(page, xs_ring::Server::<&xs_ring::SharedPage>::FEATURES),
            outstanding,
            cons: 0,
            prod: 0,
            error_touched: false,
            stats: RingStats::default(),
        })
    }

    /// One pump, and every check of [`ring`] on what it did.
    fn pump(&mut self) {
        use xs_ring::layout::{CONNECTED, ERROR_NONE, Field, RECONNECT};
        use xs_ring::{Page, RingFault};

        let page = self.page;
        let ring = xs_ring::RING_SIZE as u32;
        self.stats.pumps += 1;
        let reconnecting = page.load(Field::Connection) == RECONNECT;
        let req_prod = page.load(Field::ReqProd);
        let rsp_cons = page.load(Field::RspCons);
        let broken = self.server.fault();
        let had_output = !self.conn.output().is_empty();
        let idle = !self.server.recheck(had_output);
        // Indices no consistent ring can have: the server must notice them.
        let bad_req = req_prod.wrapping_sub(self.cons) > ring;
        let bad_rsp = self.prod.wrapping_sub(rsp_cons) > ring;
        // Sentinels in the server's index fields (which it only ever stores): a value it
        // cannot publish, so that any store shows. Whatever the guest had written there is
        // put back if the server publishes nothing.
        let guest_cons = page.load(Field::ReqCons);
        let guest_prod = page.load(Field::RspProd);
        let cons_mark = self.cons ^ 0x8000_0000;
        let prod_mark = self.prod ^ 0x8000_0000;
        page.store(Field::ReqCons, cons_mark);
        page.store(Field::RspProd, prod_mark);

        let done = xs_serve::pump::pump(
            &mut self.server,
            &mut self.conn,
            &mut self.store,
            &mut NoHost,
        );

        assert_eq!(self.store.check(), Ok(()));
        let pending = self.conn.pending();
        assert!(pending <= self.outstanding, "{pending} messages pending");
        assert_eq!(done.fault, self.server.fault());
        assert!(!done.released);
        if idle {
            assert!(!done.notify, "pumped with nothing to do: {done:?}");
        }
        if reconnecting {
            self.stats.reconnects += 1;
            assert_eq!(done.fault, None);
            assert!(done.notify);
            for f in [
                Field::ReqCons,
                Field::ReqProd,
                Field::RspCons,
                Field::RspProd,
            ] {
                assert_eq!(page.load(f), 0, "{f:?} after a reconnection");
            }
            assert_eq!(page.load(Field::Connection), CONNECTED);
            assert_eq!(page.load(Field::Error), ERROR_NONE);
            self.cons = 0;
            self.prod = 0;
            self.error_touched = false;
            return;
        }
        let new_cons = page.load(Field::ReqCons);
        if new_cons == cons_mark {
            page.store(Field::ReqCons, guest_cons);
        } else {
            // Consumed: within what the guest published, from a consistent index.
            let consumed = new_cons.wrapping_sub(self.cons);
            let available = req_prod.wrapping_sub(self.cons);
            assert!(broken.is_none(), "a broken ring consumed {consumed} bytes");
            assert!(!bad_req, "consumed from an inconsistent index");
            assert!(
                consumed > 0 && consumed <= available,
                "consumed {consumed} of {available}"
            );
            self.cons = new_cons;
            self.stats.consumed += 1;
        }
        let new_prod = page.load(Field::RspProd);
        if new_prod == prod_mark {
            page.store(Field::RspProd, guest_prod);
        } else {
            let unread_before = self.prod.wrapping_sub(rsp_cons);
            let unread = new_prod.wrapping_sub(rsp_cons);
            assert!(broken.is_none(), "a broken ring produced bytes");
            assert!(!bad_rsp, "produced after an inconsistent index");
            assert!(
                unread <= ring && unread > unread_before,
                "produced {unread_before} -> {unread} unread bytes"
            );
            self.prod = new_prod;
            self.stats.produced += 1;
        }
        let fault = self.server.fault();
        if broken.is_none() {
            if bad_req {
                // The pump looks at the requests first.
                assert_eq!(
                    fault,
                    Some(RingFault::Index),
                    "request indices {req_prod} / {}",
                    self.cons
                );
            } else if bad_rsp && had_output && fault != Some(RingFault::Protocol) {
                assert_eq!(
                    fault,
                    Some(RingFault::Index),
                    "reply indices {} / {rsp_cons}",
                    self.prod
                );
            }
        }
        match (broken, fault) {
            (Some(before), after) => assert_eq!(after, Some(before), "a broken ring healed"),
            (None, Some(fault)) => {
                // A new fault: the reason is real, and the page says it.
                match fault {
                    RingFault::Index => {
                        self.stats.index_faults += 1;
                        assert!(bad_req || bad_rsp, "index fault on consistent indices");
                    }
                    RingFault::Protocol => {
                        self.stats.proto_faults += 1;
                        assert!(
                            self.conn.fault().is_some(),
                            "protocol fault without a bad message"
                        );
                    }
                    other => panic!("fault {other}"),
                }
                assert!(done.notify);
                self.error_touched = false;
            }
            (None, None) => {}
        }
        if let Some(fault) = fault
            && !self.error_touched
        {
            assert_eq!(page.load(Field::Error), fault.code());
        }
    }
}

/// [`ring`] on decoded steps, returning what happened.
pub fn ring_stats(steps: &[RingStep]) -> RingStats {
    use xs_core::wire::MsgType;
    use xs_ring::layout::{Field, Ring};
    use xs_ring::{Guest, Page, RING_SIZE, SharedPage};

    let page = SharedPage::default();
    let Some(mut served) = Served::new(&page) else {
        return RingStats::default();
    };
    let mut guest = Guest::new(&page);
    let mut msg = Vec::new();
    let mut buf = [0u8; RING_SIZE];

    for step in steps {
        match step {
            RingStep::Scribble {
                replies,
                offset,
                bytes,
            } => {
                let which = if *replies { Ring::Rsp } else { Ring::Req };
                let offset = usize::from(*offset) % RING_SIZE;
                let n = bytes.len().min(RING_SIZE - offset);
                page.copy_in(which, offset, &bytes[..n]);
            }
            RingStep::SetField { field, value } => {
                let f = RING_FIELDS[usize::from(*field) % RING_FIELDS.len()];
                served.error_touched |= f == Field::Error;
                page.store(f, *value);
            }
            RingStep::NudgeField { field, delta } => {
                let f = RING_FIELDS[usize::from(*field) % RING_FIELDS.len()];
                served.error_touched |= f == Field::Error;
                let v = page.load(f).wrapping_add_signed(i32::from(*delta));
                page.store(f, v);
            }
            RingStep::Request {
                msg_type,
                req_id,
                tx_id,
                path,
                value_len,
            } => {
                let kind = RING_TYPES.get(usize::from(*msg_type));
                let t = kind.map_or(u32::from(*msg_type), |t| *t as u32);
                let path = RING_PATHS[usize::from(*path) % RING_PATHS.len()];
                let mut payload = path.to_vec();
                payload.push(0);
                match kind {
                    Some(MsgType::Write) => {
                        // Now and then more than a message may carry: a protocol fault.
                        let len = usize::from(*value_len) % (xs_core::wire::PAYLOAD_MAX + 16);
                        payload.resize(payload.len() + len, b'v');
                    }
                    Some(MsgType::Watch | MsgType::Unwatch) => payload.extend_from_slice(b"tok\0"),
                    Some(MsgType::TransactionEnd) => {
                        payload = if value_len % 2 == 0 { b"T\0" } else { b"F\0" }.to_vec();
                    }
                    Some(MsgType::DirectoryPart) => payload.extend_from_slice(b"0\0"),
                    _ => {}
                }
                msg.clear();
                push_message(&mut msg, t, *req_id, u32::from(*tx_id % 4), &payload);
                let _ = guest.write(&msg);
            }
            RingStep::Write(bytes) => {
                let _ = guest.write(bytes);
            }
            RingStep::Read(n) => {
                let n = usize::from(*n).min(RING_SIZE);
                let _ = guest.read(&mut buf[..n]);
            }
            RingStep::Reconnect => guest.request_reconnect(),
            RingStep::Resync => {
                let _ = guest.reconnected();
            }
            RingStep::Pump => served.pump(),
        }
    }
    served.pump();

    // Whatever happened, a reconnection brings back a working ring.
    guest.request_reconnect();
    served.pump();
    assert!(guest.reconnected());
    msg.clear();
    push_message(&mut msg, MsgType::Read as u32, 77, 0, b"domid\0");
    assert_eq!(guest.write(&msg), Ok(msg.len()));
    served.pump();
    let n = guest.read(&mut buf).unwrap_or(0);
    let mut want = Vec::new();
    push_message(&mut want, MsgType::Read as u32, 77, 0, b"5");
    assert_eq!(
        &buf[..n],
        want.as_slice(),
        "READ domid after a reconnection"
    );
    served.stats
}

/// One step of [`dispatcher`]: what dom0's toolstack (over its ring), the program embedding
/// the store (host-side calls, an in-process session), the guests (well-formed and hostile)
/// and the platform (domain states, failures, stale events) do. Guests are domains 1 to 3.
#[derive(Arbitrary, Debug, Clone)]
pub enum DispatchStep {
    /// Dom0 sends `INTRODUCE` for a guest (port 0 is refused by the store).
    Introduce { guest: u8, port: u8 },
    /// The program introduces a guest itself.
    HostIntroduce { guest: u8, port: u8 },
    /// Dom0 sends `RELEASE`.
    Release { guest: u8 },
    /// The program releases a guest itself.
    HostRelease { guest: u8 },
    /// The platform reports a guest's state (running, shut down, dying) and `VIRQ_DOM_EXC`.
    State { guest: u8, state: u8 },
    /// The platform builds a new domain with the guest's id (a fresh page; Xen reuses ids).
    Recreate { guest: u8 },
    /// The platform's next map or bind for a guest fails.
    Fail { guest: u8, bind: bool },
    /// A well-formed request from dom0 (`who` 0) or a guest, then an event on its port.
    Request {
        who: u8,
        msg_type: u8,
        path: u8,
        tx_id: u8,
    },
    /// Arbitrary bytes through an end's ring, then an event.
    Write { who: u8, bytes: Vec<u8> },
    /// A field of an end's page set to anything, then an event.
    SetField { who: u8, field: u8, value: u32 },
    /// An end asks for a reconnection, then an event.
    Reconnect { who: u8 },
    /// An end reads (part of) its replies.
    Read { who: u8, len: u16 },
    /// An event on any port number (stale and unknown ones included).
    Event { port: u8 },
    /// Left-over work is done.
    RunPending,
    /// The program's own session writes or watches under a guest's home.
    Local { op: u8, path: u8 },
}

/// Decodes as many dispatcher steps as `data` holds.
pub fn decode_dispatch_steps(data: &[u8]) -> Vec<DispatchStep> {
    let mut u = arbitrary::Unstructured::new(data);
    let mut steps = Vec::new();
    while !u.is_empty() {
        match DispatchStep::arbitrary(&mut u) {
            Ok(step) => steps.push(step),
            Err(_) => break,
        }
    }
    steps
}

/// What a [`dispatcher`] run went through (the smoke test checks that seeded runs reach the
/// interesting states).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DispatchStats {
    pub steps: usize,
    pub introduced: usize,
    pub released: usize,
    pub died: usize,
    pub broken: usize,
}

impl std::ops::AddAssign for DispatchStats {
    fn add_assign(&mut self, o: Self) {
        self.steps += o.steps;
        self.introduced += o.introduced;
        self.released += o.released;
        self.died += o.died;
        self.broken += o.broken;
    }
}

/// xs-serve's dispatcher over the fake platform, serving dom0 (from the start, as a stub
/// domain does) and up to three guests, driven by [`DispatchStep`]s. After every step:
///
/// * the store's consistency check holds;
/// * the ports bound on the platform are exactly the served domains' ports (none leaked by
///   releases, deaths, failed set-ups or rebinds), and every served guest is introduced;
/// * nothing a guest does stops dom0 from being served (checked at the end).
///
/// At the end every guest is introduced afresh by the program and answers `READ domid` over
/// its ring, and dom0, after a reconnection, answers too: a hostile or dead guest leaves
/// nothing behind that breaks a later one.
pub fn dispatcher(data: &[u8]) {
    dispatcher_stats(&decode_dispatch_steps(data));
}

/// [`dispatcher`] on decoded steps, returning what happened.
pub fn dispatcher_stats(steps: &[DispatchStep]) -> DispatchStats {
    use xs_core::wire::MsgType;
    use xs_ring::Page;
    use xs_ring::layout::Field;
    use xs_serve::fake::{FakeRing, FakeServices};
    use xs_serve::guest::GuestClient;
    use xs_serve::{BootPort, BootRing, Bootstrap, Dispatcher, DomainState, ServeConfig};

    const GUESTS: u16 = 3;
    let guest = |g: &u8| DomId(u16::from(*g) % GUESTS + 1);
    let who = |w: &u8| DomId(u16::from(*w) % (GUESTS + 1));

    let mut fake = FakeServices::new();
    let mut ends: Vec<GuestClient<FakeRing>> = Vec::new();
    ends.push(GuestClient::new(fake.create_domain(DomId::DOM0)));
    for d in 1..=GUESTS {
        ends.push(GuestClient::new(fake.create_domain(DomId(d))));
    }
    let config = ServeConfig {
        store: StoreConfig {
            event_queue_len: 8,
            ..StoreConfig::new([1, 2])
        },
        ..ServeConfig::default()
    };
    let boot = Bootstrap {
        domid: DomId::DOM0,
        ring: BootRing::Grant { gfn: 0 },
        port: BootPort::Remote(1),
    };
    let Ok(mut xs) = Dispatcher::with_bootstrap(fake, config, boot) else {
        return DispatchStats::default();
    };
    let Ok(local) = xs.connect(DomId::DOM0) else {
        return DispatchStats::default();
    };
    let mut stats = DispatchStats::default();
    let mut req_id = 0u32;
    let mut msg = Vec::new();
    let kick = |xs: &mut Dispatcher<FakeServices>, d: DomId| {
        if let Some(port) = xs.local_port(d) {
            xs.on_event(port);
        }
    };

    for step in steps {
        stats.steps += 1;
        match step {
            DispatchStep::Introduce { guest: g, port }
            | DispatchStep::HostIntroduce { guest: g, port } => {
                let d = guest(g);
                let intro = Introduction {
                    gfn: 0xfeffc,
                    evtchn: u32::from(*port) % 8,
                };
                if matches!(step, DispatchStep::HostIntroduce { .. }) {
                    let _ = xs.introduce(d, intro);
                } else {
                    let body = format!("{}\0{}\0{}\0", d.0, intro.gfn, intro.evtchn);
                    req_id = req_id.wrapping_add(1);
                    msg.clear();
                    push_message(
                        &mut msg,
                        MsgType::Introduce as u32,
                        req_id,
                        0,
                        body.as_bytes(),
                    );
                    let _ = ends[0].ring().write(&msg);
                    kick(&mut xs, DomId::DOM0);
                }
                if xs.local_port(d).is_some() {
                    stats.introduced += 1;
                }
            }
            DispatchStep::Release { guest: g } => {
                let body = format!("{}\0", guest(g).0);
                req_id = req_id.wrapping_add(1);
                msg.clear();
                push_message(
                    &mut msg,
                    MsgType::Release as u32,
                    req_id,
                    0,
                    body.as_bytes(),
                );
                let _ = ends[0].ring().write(&msg);
                kick(&mut xs, DomId::DOM0);
            }
            DispatchStep::HostRelease { guest: g } => {
                if xs.release(guest(g)).is_ok() {
                    stats.released += 1;
                }
            }
            DispatchStep::State { guest: g, state } => {
                let d = guest(g);
                let s = match state % 3 {
                    0 => DomainState::Running,
                    1 => DomainState::Shutdown,
                    _ => DomainState::Dying,
                };
                let served = xs.local_port(d).is_some();
                xs.services_mut().set_state(d, s);
                xs.on_dom_exc();
                if served && s == DomainState::Dying {
                    assert_eq!(xs.local_port(d), None, "a dying dom{d} is still served");
                    assert!(!xs.store().is_introduced(d));
                    stats.died += 1;
                }
            }
            DispatchStep::Recreate { guest: g } => {
                let d = guest(g);
                let page = xs.services_mut().create_domain(d);
                ends[usize::from(d.0)] = GuestClient::new(page);
            }
            DispatchStep::Fail { guest: g, bind } => {
                if *bind {
                    xs.services_mut().fail_bind(guest(g));
                } else {
                    xs.services_mut().fail_map(guest(g));
                }
            }
            DispatchStep::Request {
                who: w,
                msg_type,
                path,
                tx_id,
            } => {
                let d = who(w);
                let t = RING_TYPES[usize::from(*msg_type) % RING_TYPES.len()];
                let mut payload = RING_PATHS[usize::from(*path) % RING_PATHS.len()].to_vec();
                payload.push(0);
                match t {
                    MsgType::Write => payload.extend_from_slice(b"value"),
                    MsgType::Watch | MsgType::Unwatch => payload.extend_from_slice(b"tok\0"),
                    MsgType::TransactionEnd => payload = b"T\0".to_vec(),
                    MsgType::DirectoryPart => payload.extend_from_slice(b"0\0"),
                    _ => {}
                }
                let _ = ends[usize::from(d.0)].send(t, u32::from(*tx_id % 3), &payload);
                kick(&mut xs, d);
            }
            DispatchStep::Write { who: w, bytes } => {
                let d = who(w);
                let _ = ends[usize::from(d.0)].ring().write(bytes);
                kick(&mut xs, d);
            }
            DispatchStep::SetField {
                who: w,
                field,
                value,
            } => {
                let d = who(w);
                let f = RING_FIELDS[usize::from(*field) % RING_FIELDS.len()];
                ends[usize::from(d.0)].ring().page().store(f, *value);
                kick(&mut xs, d);
                if ends[usize::from(d.0)].ring().page().load(Field::Error) != 0 {
                    stats.broken += 1;
                }
            }
            DispatchStep::Reconnect { who: w } => {
                let d = who(w);
                ends[usize::from(d.0)].ring().request_reconnect();
                kick(&mut xs, d);
                if ends[usize::from(d.0)].ring().reconnected() {
                    ends[usize::from(d.0)].forget_in_flight();
                }
            }
            DispatchStep::Read { who: w, len } => {
                let mut buf = vec![0u8; usize::from(*len) % 2048];
                let _ = ends[usize::from(who(w).0)].ring().read(&mut buf);
                kick(&mut xs, who(w));
            }
            DispatchStep::Event { port } => xs.on_event(u32::from(*port) % 24),
            DispatchStep::RunPending => xs.run_pending(),
            DispatchStep::Local { op, path } => {
                let d = guest(path);
                let p = format!("/local/domain/{}/data/x{}", d.0, op % 4);
                let _ = xs.session(local, |s| match op % 3 {
                    0 => s.write(&p, b"from the host"),
                    1 => s.watch(&p, "host", Some(u32::from(op % 2))),
                    _ => s.rm(&p),
                });
                xs.take_local_notifications();
                xs.session(local, |s| s.drain_events());
            }
        }
        // After every step.
        assert_eq!(xs.store().check(), Ok(()));
        let mut served_ports: Vec<u32> = xs.ports().collect();
        served_ports.sort_unstable();
        assert_eq!(
            xs.services().bound_ports(),
            served_ports,
            "leaked or lost ports"
        );
        for d in xs.served() {
            assert!(
                xs.store().is_introduced(d),
                "dom{d} served but not introduced"
            );
        }
        assert!(
            xs.local_port(DomId::DOM0).is_some(),
            "dom0 is no longer served"
        );
    }

    // Whatever happened, the program can introduce every guest afresh and serve it.
    while xs.has_work() {
        xs.run_pending();
    }
    for d in 1..=GUESTS {
        let d = DomId(d);
        let _ = xs.release(d);
        let page = xs.services_mut().create_domain(d);
        // A map and a bind failure may still be scripted: each is used up by one attempt.
        let intro = Introduction { gfn: 1, evtchn: 1 };
        let mut result = xs.introduce(d, intro);
        for _ in 0..2 {
            if result
                == Err(xs_serve::Error::Services(
                    xs_serve::fake::FakeError::Scripted,
                ))
            {
                result = xs.introduce(d, intro);
            }
        }
        assert_eq!(
            result,
            Ok(xs_core::store::Introduced::New),
            "introducing dom{d} afresh"
        );
        let mut end = GuestClient::new(page);
        let id = end.send(MsgType::Read, 0, b"domid\0").unwrap_or(0);
        kick(&mut xs, d);
        let replies = end.receive().unwrap_or_default();
        let reply = replies.iter().find(|m| m.req_id == id && !m.is_event());
        assert_eq!(
            reply.map(|m| m.payload.clone()),
            Some(format!("{}", d.0).into_bytes()),
            "dom{d} after a fresh introduction"
        );
    }
    // And dom0, after a reconnection, is answered.
    let dom0 = &mut ends[0];
    dom0.ring().request_reconnect();
    kick(&mut xs, DomId::DOM0);
    assert!(dom0.ring().reconnected(), "dom0's reconnection");
    dom0.forget_in_flight();
    let _ = dom0.receive();
    let id = dom0
        .send(MsgType::Read, 0, b"/local/domain/0\0")
        .unwrap_or(0);
    kick(&mut xs, DomId::DOM0);
    let replies = dom0.receive().unwrap_or_default();
    assert!(
        replies.iter().any(|m| m.req_id == id && !m.is_event()),
        "dom0 answered after everything"
    );
    stats
}

/// The stub domain's command line ([`x86_glue::BootArgs::parse`]): never fails, and whatever
/// the input, its result stays small (each quota kind once, at most 16 notes of bounded
/// length, printable ASCII) and is the same on a second parse.
pub fn boot_args(data: &[u8]) {
    let args = x86_glue::BootArgs::parse(data);
    assert!(args.notes.len() <= 16, "{} notes", args.notes.len());
    assert!(
        args.notes
            .iter()
            .all(|n| n.len() < 256 && n.bytes().all(|b| b == b' ' || b.is_ascii_graphic())),
        "{:?}",
        args.notes
    );
    for (i, (kind, _)) in args.quotas.iter().enumerate() {
        assert!(
            !args.quotas.iter().skip(i + 1).any(|(k, _)| k == kind),
            "{kind:?} twice in {:?}",
            args.quotas
        );
    }
    assert!(args.event != Some(0));
    assert!(args.priv_domid.is_real());
    assert_eq!(x86_glue::BootArgs::parse(data), args);
}

/// A stream written by `xs_core::state::save` of a small store with a bit of everything
/// (nodes, permissions, watches with and without depth, queued events, an open
/// transaction, a guest's domain record): the starting point [`state_stream`] mutates, so
/// that inputs get past the header and the first records.
pub fn sample_state_stream() -> Vec<u8> {
    use xs_core::state::{self, Global, SaveOptions};
    use xs_core::store::Introduction;
    use xs_core::{DomId, Perm, Store, StoreConfig};
    let mut store = Store::new(StoreConfig::new([1, 2])).expect("store");
    let dom0 = store.connect(DomId::DOM0).expect("dom0");
    store
        .introduce_domain(DomId(3), Introduction { gfn: 9, evtchn: 4 })
        .expect("introduce");
    let guest = store.connect(DomId(3)).expect("guest");
    let _ = store.write(dom0, 0, b"/a/b", b"v");
    let _ = store.set_perms(
        dom0,
        0,
        b"/a",
        &[Perm::owner(DomId::DOM0), Perm::parse(b"r3").expect("perm")],
    );
    let _ = store.watch(dom0, b"/a", b"t", None);
    let _ = store.watch(guest, b"/a", b"u", Some(1));
    let _ = store.write(dom0, 0, b"/a/c", b"w");
    // Names longer than the 8 bytes a child link keeps, sharing those 8 bytes.
    let _ = store.write(dom0, 0, b"/a/longer-name-1", b"1");
    let _ = store.write(dom0, 0, b"/a/longer-name-2/e", b"2");
    let _ = store.write(dom0, 0, b"/z", b"");
    if let Ok(tx) = store.transaction_start(dom0) {
        let _ = store.write(dom0, tx, b"/a/d", b"x");
        let mut out = Vec::new();
        let _ = store.read(dom0, tx, b"/a/b", &mut out);
        let _ = store.rm(dom0, tx, b"/a/c");
    }
    let mut stream = Vec::new();
    let _ = state::save(
        &mut store,
        Global::default(),
        &[],
        SaveOptions::default(),
        &mut stream,
    );
    stream
}

/// The state stream reader (`xs_core::state::restore`) on hostile input: the input itself,
/// the sample stream's records reordered, repeated and dropped as the input says
/// ([`reordered_sample`]), and the sample stream with the input's bytes written over it at
/// the offset its first two bytes give. Every stream is either rejected or restored into a store that passes its
/// check, saves again, and reads back from that.
pub fn state_stream(data: &[u8]) {
    state_stream_once(data);
    state_stream_once(&reordered_sample(data));
    let mut sample = sample_state_stream();
    if let [hi, lo, rest @ ..] = data {
        let at = usize::from(u16::from_be_bytes([*hi, *lo])) % sample.len().max(1);
        for (i, b) in rest.iter().enumerate() {
            match sample.get_mut(at + i) {
                Some(slot) => *slot = *b,
                None => sample.push(*b),
            }
        }
    }
    state_stream_once(&sample);
}

/// The sample stream with its records (after the header, `END` kept last) moved about as
/// `ops` says, two bytes per operation (what, which record): repeated at the end, swapped
/// with the next, dropped, or moved first. The orders and repetitions a hostile stream can
/// have: nodes before their parents, children out of name order, duplicate nodes apart from
/// each other, watches before their connections.
pub fn reordered_sample(ops: &[u8]) -> Vec<u8> {
    let sample = sample_state_stream();
    let Some((head, mut rest)) = sample.split_at_checked(16) else {
        return sample;
    };
    let mut records: Vec<&[u8]> = Vec::new();
    while let Some(len) = rest.get(4..8) {
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let end = len
            .div_ceil(8)
            .saturating_mul(8)
            .saturating_add(8)
            .min(rest.len());
        let (record, tail) = rest.split_at(end);
        records.push(record);
        rest = tail;
    }
    let end = records.pop();
    for op in ops.chunks_exact(2) {
        if records.is_empty() {
            break;
        }
        let i = usize::from(op[1]) % records.len();
        match op[0] % 4 {
            0 => records.push(records[i]),
            1 if i + 1 < records.len() => records.swap(i, i + 1),
            1 => {}
            2 => {
                records.remove(i);
            }
            _ => {
                let r = records.remove(i);
                records.insert(0, r);
            }
        }
    }
    let mut out = head.to_vec();
    for r in records.into_iter().chain(end) {
        out.extend_from_slice(r);
    }
    out
}

fn state_stream_once(stream: &[u8]) {
    use xs_core::StoreConfig;
    use xs_core::protocol::{Access, Limits};
    use xs_core::state::{
        self, Global, RestoredConnection, SaveOptions, SavedConnection, Transport,
    };
    let settings = |_: &Transport, _| (Access::default(), Limits::default());
    let Ok(restored) = state::restore(StoreConfig::new([5, 6]), stream, settings) else {
        return;
    };
    let mut store = restored.store;
    store.check().expect("a restored store is consistent");
    let saved: Vec<SavedConnection<'_>> = restored
        .connections
        .iter()
        .map(RestoredConnection::as_saved)
        .collect();
    let mut again = Vec::new();
    state::save(
        &mut store,
        Global::default(),
        &saved,
        SaveOptions::default(),
        &mut again,
    )
    .expect("a restored store saves");
    let copy = state::restore(StoreConfig::new([5, 6]), &again, settings)
        .expect("a saved stream reads back");
    copy.store.check().expect("a restored store is consistent");
}
