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
        conn.consume_output(out / (usize::from(*select >> 2) % 3 + 1));
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
