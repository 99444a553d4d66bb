//! Xen's C xenstored (Debian's 4.17, under the anchors' shim) writes its live-update state
//! stream, and `xs_core::state::restore` reads it into the same tree.
//!
//! C's live update (`xenstore-control live-update -f BINARY`, then `-s`) writes the stream
//! to `$XENSTORED_RUNDIR/state_dump` and execs BINARY with the daemon's own arguments and
//! `-U`. BINARY here is a script that copies the stream out and exits, so the test reads
//! exactly what C wrote. (It does not exec C again: C 4.17's reader dies on a node owned by
//! a domain that was never introduced, "FATAL: write node error restoring node", which the
//! shim's domains all are but the guest's.)
//!
//! The tree is built over the wire with a bit of everything the stream carries: values with
//! NUL and high bytes, an empty and a long value, permission lists naming introduced and
//! never-introduced domains (which C writes with flags 0 and keeps: the reader must too), a
//! guest on a ring (a ring connection in the stream) with its own nodes and watch, and dom0
//! socket clients with watches. The test compares path, value and permissions of every node
//! as C served them just before the update with the restored store, checks the connections
//! and that the restored watches fire.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use xs_core::protocol::{Access, Limits};
use xs_core::state::{self, Transport};
use xs_core::{DomId, Store, StoreConfig};
use xs_e2e::daemon::TempDir;
use xs_e2e::{Client, Daemon, Kind, Wire, require, tool};

/// path -> (value, permissions as `getperms` prints them).
type Tree = BTreeMap<Vec<u8>, (Vec<u8>, Vec<String>)>;

/// Every node C serves, walked over the wire from `/`.
fn c_tree(w: &mut Wire) -> Tree {
    let mut tree = Tree::new();
    let mut todo = vec!["/".to_owned()];
    while let Some(path) = todo.pop() {
        let value = w
            .read(&path)
            .unwrap_or_else(|e| panic!("C: read {path}: {e}"));
        let perms = w
            .get_perms(&path)
            .unwrap_or_else(|e| panic!("C: getperms {path}: {e}"));
        for name in w
            .directory(&path)
            .unwrap_or_else(|e| panic!("C: directory {path}: {e}"))
        {
            todo.push(if path == "/" {
                format!("/{name}")
            } else {
                format!("{path}/{name}")
            });
        }
        tree.insert(path.into_bytes(), (value, perms));
    }
    tree
}

/// Every node of the restored store, walked the same way by a new dom0 connection.
fn our_tree(store: &mut Store) -> Tree {
    let conn = store.connect(DomId::DOM0).expect("a dom0 connection");
    let mut s = store.session(conn);
    let mut tree = Tree::new();
    let mut todo = vec!["/".to_owned()];
    while let Some(path) = todo.pop() {
        let value = s
            .read(&path)
            .unwrap_or_else(|e| panic!("xs-core: read {path}: {e:?}"));
        let perms = s
            .get_perms(&path)
            .unwrap_or_else(|e| panic!("xs-core: getperms {path}: {e:?}"));
        for name in s
            .directory(&path)
            .unwrap_or_else(|e| panic!("xs-core: directory {path}: {e:?}"))
        {
            let name = String::from_utf8(name).expect("a UTF-8 name");
            todo.push(if path == "/" {
                format!("/{name}")
            } else {
                format!("{path}/{name}")
            });
        }
        let perms = perms.iter().map(ToString::to_string).collect();
        tree.insert(path.into_bytes(), (value, perms));
    }
    tree
}

/// The lines of `a` and `b` that differ, for the failure message.
fn diff(a: &Tree, b: &Tree) -> String {
    let mut out = String::new();
    for (path, v) in a {
        if b.get(path) != Some(v) {
            out += &format!(
                "  {}: C {v:?}, xs-core {:?}\n",
                String::from_utf8_lossy(path),
                b.get(path)
            );
        }
    }
    for (path, v) in b {
        if !a.contains_key(path) {
            out += &format!(
                "  {}: only in xs-core: {v:?}\n",
                String::from_utf8_lossy(path)
            );
        }
    }
    out
}

#[test]
fn c_xenstored_state_reads_into_xs_core() {
    let control = require!(tool("xenstore-control"));
    let dir = TempDir::new();
    let captured = dir.path().join("c-state");
    let script = dir.path().join("capture.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n# C xenstored execs this with its arguments and -U: keep the stream.\n\
             echo \"$@\" >'{args}'\n\
             cp \"$XENSTORED_RUNDIR/state_dump\" '{out}.tmp' && mv '{out}.tmp' '{out}'\n",
            args = dir.path().join("c-args").display(),
            out = captured.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();

    let d = require!(Daemon::start_kind(
        Kind::CXenstored,
        TempDir::new(),
        &[],
        &[]
    ));
    let mut w = d.connect();

    // A tree with a bit of everything.
    w.write("/vm/uuid", b"0000-1111").unwrap();
    w.write("/vm/binary", b"a\0b\xff\x01end").unwrap();
    w.write("/vm/empty", b"").unwrap();
    w.write("/vm/long", &vec![b'x'; 3000]).unwrap();
    w.mkdir("/vm/dir/deeper/still").unwrap();
    for i in 0..100 {
        w.write(&format!("/bulk/n{i:03}"), format!("value {i}").as_bytes())
            .unwrap();
    }
    w.set_perms("/bulk/n001", &["n0", "r3", "w4", "b9"])
        .unwrap();
    w.set_perms("/bulk/n002", &["r0"]).unwrap();
    w.set_perms("/vm/dir", &["b0", "r5"]).unwrap();
    w.mkdir("/local/domain/5").unwrap();
    w.set_perms("/local/domain/5", &["n5", "r0"]).unwrap();
    w.watch("/vm", "dom0-vm").unwrap();
    let mut other = d.connect();
    other.watch("/bulk", "dom0-bulk").unwrap();
    other.watch("@releaseDomain", "dom0-release").unwrap();

    // A guest on a ring, with nodes it owns and a watch of its own.
    let mut guest = require!(d.guest(5));
    guest.write("data/state", b"4").unwrap();
    guest.write("data/feature", b"1").unwrap();
    guest.watch("data", "guest-data").unwrap();

    let before = c_tree(&mut w);

    // Live update to the capturing script: C writes the stream, then execs it.
    let out = d.run(&control, &["live-update", "-f", &script.to_string_lossy()]);
    assert!(
        out.code().is_some(),
        "{}: {}{}",
        out.cmdline,
        out.stdout,
        out.stderr
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !captured.exists() {
        assert!(
            Instant::now() < deadline,
            "C wrote no state within 20 s: {} gave {}: {}{}\nC's log:\n{}",
            out.cmdline,
            out.status,
            out.stdout,
            out.stderr,
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let args = fs::read_to_string(dir.path().join("c-args")).unwrap();
    assert_eq!(args.trim(), "-N -U", "C's arguments to the new binary");
    let stream = fs::read(&captured).unwrap();
    assert_eq!(&stream[..8], b"xenstore");
    assert_eq!(
        &stream[8..12],
        &1u32.to_be_bytes(),
        "C 4.17 writes version 1"
    );

    let restored = state::restore(StoreConfig::new([1, 2]), &stream, |_, _| {
        (Access::default(), Limits::default())
    })
    .unwrap_or_else(|e| panic!("C's stream ({} bytes) does not read: {e}", stream.len()));
    assert_eq!(restored.version, 1);

    // The connections: the guest's ring, the dom0 sockets (xenstore-control's among them).
    let rings: Vec<_> = restored
        .connections
        .iter()
        .filter(|c| matches!(c.transport, Transport::Ring { .. }))
        .map(|c| c.domid)
        .collect();
    assert!(
        rings.contains(&DomId(5)),
        "the guest's ring connection: {rings:?}"
    );
    let sockets = restored
        .connections
        .iter()
        .filter(|c| matches!(c.transport, Transport::Socket { .. }))
        .count();
    assert!(sockets >= 3, "dom0's socket connections: {sockets}");

    let mut store = restored.store;
    let after = our_tree(&mut store);
    assert!(
        before == after,
        "C's tree and the restored one differ:\n{}",
        diff(&before, &after)
    );

    // The watches came along: a change fires each one exactly once, with its token.
    let mut tokens = BTreeMap::new();
    let dom0 = store.connect(DomId::DOM0).unwrap();
    {
        let mut s = store.session(dom0);
        s.write("/vm/uuid", b"changed").unwrap();
        s.write("/bulk/n050", b"changed").unwrap();
        s.write("/local/domain/5/data/state", b"5").unwrap();
    }
    for c in &restored.connections {
        while let Some(e) = store.pop_event(c.id) {
            *tokens
                .entry(String::from_utf8_lossy(&e.token).into_owned())
                .or_insert(0) += 1;
        }
    }
    for token in ["dom0-vm", "dom0-bulk", "guest-data"] {
        assert_eq!(tokens.get(token), Some(&1), "events by token: {tokens:?}");
    }
}
