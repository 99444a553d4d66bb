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
    for allow_special in [false, true] {
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
        ..StoreConfig::default()
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
        ..StoreConfig::default()
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
