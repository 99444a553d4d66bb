//! Issue 17, item 1 (the XSA-206 class of attack): a guest that keeps rewriting ~900 of its
//! own 2 KB nodes, each round inside a transaction it then aborts, must not make dom0's
//! unrelated transactions fail. Before xs-core bounded the history per writer and rebased
//! open transactions past the bound, every dom0 transaction held open 100 ms or more ended
//! in `EAGAIN`; C xenstored (which reads nodes at first access and keeps no history)
//! commits them.
//!
//! Ten dom0 clients each run ten transactions that read and write a node of their own and
//! are held open 1 s: 100 of 100 must commit, while the guest churns throughout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use xs_e2e::wire::ty;
use xs_e2e::{Client, Daemon, note, require};

const GUEST: u32 = 5;
const NODES: u32 = 900;
const CLIENTS: u32 = 10;
const ROUNDS: u32 = 10;

/// Node `i` of the guest's: 30 directories of 30 (a directory's size, with its children's
/// names, is bounded by the node-size quota too).
fn node(home: &str, i: u32) -> String {
    format!("{home}/{}/{}", i / 30, i % 30)
}

#[test]
fn a_guest_churning_its_nodes_does_not_fail_dom0_transactions() {
    let mut d = require!(Daemon::start());
    let mut dom0 = d.connect();
    let mut guest = require!(d.guest(GUEST));
    let home = format!("/local/domain/{GUEST}/churn");
    dom0.write(&home, b"").expect("mkdir churn");
    dom0.set_perms(&home, &[&format!("n{GUEST}")])
        .expect("give churn to the guest");
    // Below the node-size quota (2048 with the path's share), as the attacker.
    let big = vec![b'x'; 1900];
    for i in 0..NODES {
        guest
            .write(&node(&home, i), &big)
            .unwrap_or_else(|e| panic!("guest setup write {i}: {e}"));
    }
    for c in 0..CLIENTS {
        dom0.write(&format!("/dom0/y{c}"), b"0")
            .expect("dom0 setup");
    }

    let committed = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let mut w = d.connect();
            let committed = Arc::clone(&committed);
            thread::spawn(move || {
                let mut failures = Vec::new();
                for round in 0..ROUNDS {
                    let path = format!("/dom0/y{c}");
                    let tx = w.transaction_start().expect("TRANSACTION_START");
                    w.request_tx(ty::READ, tx, &xs_e2e::wire::strings(&[path.as_bytes()]))
                        .expect("read in the transaction");
                    thread::sleep(Duration::from_secs(1));
                    let mut p = xs_e2e::wire::strings(&[path.as_bytes()]);
                    p.extend_from_slice(round.to_string().as_bytes());
                    w.request_tx(ty::WRITE, tx, &p)
                        .expect("write in the transaction");
                    match w.request_tx(ty::TRANSACTION_END, tx, b"T\0") {
                        Ok(_) => {
                            committed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.push(format!("client {c} round {round}: {e}")),
                    }
                }
                failures
            })
        })
        .collect();

    let rss_before = d.rss_kib();
    // The attack, until every dom0 client is done.
    let start = Instant::now();
    let mut rounds = 0u64;
    let mut writes = 0u64;
    let watchdog = Duration::from_secs(120);
    let mut value = big.clone();
    loop {
        let tx = guest.transaction_start().expect("guest TRANSACTION_START");
        for i in 0..NODES {
            value[0] = b'a' + (rounds % 26) as u8;
            guest
                .write(&node(&home, i), &value)
                .unwrap_or_else(|e| panic!("guest churn write {i}: {e}"));
            writes += 1;
        }
        guest
            .request_tx(ty::TRANSACTION_END, tx, b"F\0")
            .expect("guest abort");
        rounds += 1;
        if clients.iter().all(|h| h.is_finished()) || start.elapsed() > watchdog {
            break;
        }
    }
    let failures: Vec<String> = clients
        .into_iter()
        .flat_map(|h| h.join().expect("dom0 client thread"))
        .collect();
    let total = committed.load(Ordering::Relaxed);
    let rss_after = d.rss_kib();
    let report = format!(
        "{:?}: {total} of {} dom0 transactions held open 1 s committed while the guest \
         rewrote its {NODES} nodes {rounds} times ({writes} writes, {:.0}/s) in {:?}; \
         RSS {rss_before} -> {rss_after} KiB",
        d.kind(),
        CLIENTS * ROUNDS,
        writes as f64 / start.elapsed().as_secs_f64(),
        start.elapsed()
    );
    note(&report);
    assert!(failures.is_empty(), "{report}; failures: {failures:?}");
    assert_eq!(total, u64::from(CLIENTS * ROUNDS), "{report}");
    assert!(rounds >= 2, "the guest barely churned: {report}");
    assert!(d.alive(), "daemon died; log:\n{}", d.log());
    d.stop();
}
