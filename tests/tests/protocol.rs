//! The basic requests over the wire protocol from a raw client, as libxenstore sends them:
//! write/read/directory/mkdir/rm and their errors, watch events, transactions. Replies echo
//! the request's `req_id` and `tx_id` (checked by [`Client::request_tx`] on every request).

use std::io::Write;

use xs_e2e::wire::{self, Transport, strings, ty};
use xs_e2e::{Client, Daemon, Kind, require};

#[test]
fn write_read_directory() {
    let d = require!(Daemon::start());
    let mut c = d.connect();
    assert_eq!(c.write("/test/a", b"hello").as_deref(), Ok(&b"OK\0"[..]));
    assert_eq!(c.write("/test/b", b"").as_deref(), Ok(&b"OK\0"[..]));
    assert_eq!(c.read("/test/a").as_deref(), Ok(&b"hello"[..]));
    assert_eq!(
        c.request(ty::DIRECTORY, b"/test\0").as_deref(),
        Ok(&b"a\0b\0"[..])
    );
    assert_eq!(c.mkdir("/test/c").as_deref(), Ok(&b"OK\0"[..]));
    assert_eq!(c.rm("/test/b").as_deref(), Ok(&b"OK\0"[..]));
    assert_eq!(
        c.request(ty::DIRECTORY, b"/test\0").as_deref(),
        Ok(&b"a\0c\0"[..])
    );
    assert_eq!(c.read("/test/b"), Err("ENOENT".to_owned()));
    // A path without its NUL: xs-host refuses the request; C xenstored 4.17 reads the
    // payload as a (missing) relative path.
    let want = match d.kind() {
        Kind::XsHost => "EINVAL",
        Kind::CXenstored | Kind::OXenstored => "ENOENT",
    };
    assert_eq!(c.request(ty::READ, b"no-nul"), Err(want.to_owned()));
    // An unknown type is an error reply, not the end of the connection; the replies come
    // in the order of the requests.
    c.send_msg(&wire::Msg {
        ty: ty::READ,
        req_id: 76,
        tx_id: 0,
        payload: b"/test/a\0".to_vec(),
    })
    .expect("send READ");
    c.stream()
        .write_all(&wire::header(999, 77, 0, 0))
        .expect("send an unknown type");
    let r = c.recv_msg().expect("reply to READ");
    assert_eq!(
        (r.ty, r.req_id, &r.payload[..]),
        (ty::READ, 76, &b"hello"[..])
    );
    let e = c.recv_msg().expect("reply to the unknown type");
    assert_eq!((e.ty, e.req_id, e.tx_id), (ty::ERROR, 77, 0));
    assert_eq!(e.payload, b"ENOSYS\0");
    assert_eq!(c.read("/test/a").as_deref(), Ok(&b"hello"[..]));
    // Another client sees the same store.
    let mut c2 = d.connect();
    assert_eq!(c2.read("/test/a").as_deref(), Ok(&b"hello"[..]));
    drop((c, c2));
    d.stop();
}

#[test]
fn watch_event() {
    let d = require!(Daemon::start());
    let mut watcher = d.connect();
    let mut writer = d.connect();
    assert_eq!(watcher.watch("/w", "tok").as_deref(), Ok(&b"OK\0"[..]));
    assert_eq!(watcher.next_event(), ("/w".to_owned(), "tok".to_owned()));
    writer.write("/w/x", b"1").expect("write /w/x");
    assert_eq!(watcher.next_event(), ("/w/x".to_owned(), "tok".to_owned()));
    writer.write("/other", b"1").expect("write /other");
    writer.write("/w", b"2").expect("write /w");
    assert_eq!(watcher.next_event(), ("/w".to_owned(), "tok".to_owned()));
    assert_eq!(
        watcher
            .request(ty::UNWATCH, &strings(&[b"/w", b"tok"]))
            .as_deref(),
        Ok(&b"OK\0"[..])
    );
    writer.write("/w/y", b"1").expect("write /w/y");
    // The next thing the watcher receives is the reply, not an event.
    assert_eq!(watcher.read("/w/y").as_deref(), Ok(&b"1"[..]));
    assert!(watcher.events().is_empty(), "{:?}", watcher.events());
    drop((watcher, writer));
    d.stop();
}

#[test]
fn transaction() {
    let d = require!(Daemon::start());
    let mut c = d.connect();
    let mut other = d.connect();
    let tx = c.transaction_start().expect("TRANSACTION_START");
    assert_ne!(tx, 0);
    assert_eq!(
        c.request_tx(ty::WRITE, tx, b"/t/a\0in-tx").as_deref(),
        Ok(&b"OK\0"[..])
    );
    assert_eq!(
        c.request_tx(ty::READ, tx, b"/t/a\0").as_deref(),
        Ok(&b"in-tx"[..])
    );
    assert_eq!(other.read("/t/a"), Err("ENOENT".to_owned()));
    assert_eq!(
        c.request_tx(ty::TRANSACTION_END, tx, b"T\0").as_deref(),
        Ok(&b"OK\0"[..])
    );
    assert_eq!(other.read("/t/a").as_deref(), Ok(&b"in-tx"[..]));
    // The transaction is gone; an aborted one changes nothing.
    assert_eq!(
        c.request_tx(ty::READ, tx, b"/t/a\0"),
        Err("ENOENT".to_owned())
    );
    let tx = c.transaction_start().expect("TRANSACTION_START");
    assert_eq!(
        c.request_tx(ty::WRITE, tx, b"/t/a\0dropped").as_deref(),
        Ok(&b"OK\0"[..])
    );
    assert_eq!(
        c.request_tx(ty::TRANSACTION_END, tx, b"F\0").as_deref(),
        Ok(&b"OK\0"[..])
    );
    assert_eq!(other.read("/t/a").as_deref(), Ok(&b"in-tx"[..]));
    drop((c, other));
    d.stop();
}
