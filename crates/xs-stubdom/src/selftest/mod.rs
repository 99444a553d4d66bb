//! The self-test, run under plain QEMU (no Xen): the store serves guest-side clients over
//! real ring pages in the image's memory, through the same pump and the same fences as
//! production ([`rig`]), exercising reads, writes, directories, permissions, watches,
//! transactions with a conflict, quotas, a hostile ring (bad indices, an overlong header),
//! reconnection and release; `CONTROL save-state` and the saved state taken over by a new
//! store ([`state`]); then it populates 100 domains with 1000 nodes each to measure the heap
//! the store needs.
//!
//! Output, on the console: one line per check, `ok   <name>` or `FAIL <name>: <why>`; then
//! `figure: ...` lines (sizes and times for the record); then, as the very last line,
//! `xs-selftest: N passed, M failed`. The result leaves through `isa-debug-exit`
//! ([`crate::exit`]): status 33 when every check passed, 35 otherwise.
//!
//! Command-line switches (QEMU's `-append`), for testing the harness itself:
//! `selftest.break=<name>` marks that check failed whatever it found (a failing check must
//! fail the run); `selftest.fault=panic|ud2|page-fault|panic-page-fault` provokes that fatal
//! error once the store is ready (the report, the trace dump and exit status 37 must follow;
//! the last one faults while the panic is reported, and both reports must be there).

mod rig;
mod state;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use x86_glue::rng::Rng;
use xs_core::protocol::memory_report;
use xs_core::store::Introduction;
use xs_core::wire::{Header, MsgType, push_message};
use xs_core::{DomId, QuotaKind, Store, StoreConfig};
use xs_ring::layout::{ERROR_NONE, Field};
use xs_ring::{Page, RING_SIZE, RingFault, ServerFeatures};

use crate::console::println;
use crate::startinfo::StartInfo;
use crate::time::{self, Span};
use crate::trace::{self, Event};
use crate::{boot, exit, heap, idt};
use rig::{Rig, ensure, expect_eq, expect_err, ring_gfn, strings};

/// Counts and prints check results.
struct Runner {
    passed: u32,
    failed: u32,
    /// `selftest.break=<name>`: the check to fail on purpose.
    broken: Option<String>,
}

impl Runner {
    fn check(&mut self, name: &str, body: impl FnOnce() -> Result<(), String>) {
        let number = self.passed + self.failed + 1;
        trace::record(Event::Check, u64::from(number));
        let mut result = body();
        if result.is_ok() && self.broken.as_deref() == Some(name) {
            result = Err("failed on purpose (selftest.break on the command line)".into());
        }
        match result {
            Ok(()) => {
                self.passed += 1;
                println!("ok   {name}");
            }
            Err(why) => {
                self.failed += 1;
                trace::record(Event::CheckFailed, u64::from(number));
                println!("FAIL {name}: {why}");
            }
        }
    }
}

/// The watch index's hash key: guests choose the paths, so it must be unpredictable.
/// `x86-glue`'s entropy source: RDRAND when the CPU has it; else its weak TSC mix, which only
/// a test machine should ever rely on.
fn hash_key() -> ([u64; 2], &'static str) {
    let mut rng = Rng::detect();
    let key = [rng.next_u64(), rng.next_u64()];
    let source = match (rng.has_rdrand(), rng.weak_draws()) {
        (true, 0) => "RDRAND",
        (true, _) => "RDRAND and TSC (RDRAND kept failing)",
        (false, _) => "TSC (no RDRAND on this CPU)",
    };
    (key, source)
}

/// Runs the self-test and exits through `isa-debug-exit`.
pub(crate) fn run(info: &StartInfo) -> ! {
    let (key, key_source) = hash_key();
    let config = StoreConfig::new(key);
    let rig = Store::new(config)
        .map_err(|e| format!("Store::new: {e}"))
        .and_then(Rig::new);
    let mut rig = match rig {
        Ok(rig) => rig,
        Err(why) => {
            println!("FAIL store/new: {why}");
            println!("xs-selftest: 0 passed, 1 failed");
            exit::exit(exit::FAILURE);
        }
    };
    let entry_tsc = boot::entry_tsc();
    let boot_ticks = time::rdtsc().wrapping_sub(entry_tsc);
    trace::record(Event::Ready, boot_ticks);
    // At once: `cargo xtask stubdom --run` times QEMU's start to this line.
    println!("xs-stubdom: ready: the store serves dom0's ring (watch hash key from {key_source})");
    // Only now: calibrating may take 10 ms (PIT), and serving does not need it.
    time::init();
    match time::tsc_hz() {
        Some(hz) => println!(
            "boot: {} from the PVH entry to ready (TSC {} kHz, from {})",
            Span(boot_ticks),
            hz / 1000,
            time::source()
        ),
        None => println!(
            "boot: {boot_ticks} TSC ticks from the PVH entry to ready (TSC frequency unknown)"
        ),
    }

    if let Some(kind) = info.option("selftest.fault") {
        provoke(kind);
    }

    let mut t = Runner {
        passed: 0,
        failed: 0,
        broken: info.option("selftest.break").map(ToString::to_string),
    };
    let mut figures = Vec::new();
    checks(&mut t, &mut rig);
    state::checks(&mut t, &mut rig);
    let scale = Scale::run(&mut t, &mut rig);

    let (image_start, image_end) = heap::image();
    let (heap_start, heap_end) = heap::region();
    figures.push(format!(
        "image in memory: {} KiB ({image_start:#x}..{image_end:#x}), heap region {} MiB",
        (image_end - image_start) / 1024,
        (heap_end - heap_start) >> 20
    ));
    figures.push(format!(
        "boot to ready: {} from the PVH entry to the store serving (TSC {}); the entry came {} after the vCPU's reset (firmware and loader)",
        Span(boot_ticks),
        time::tsc_hz().map_or_else(|| "frequency unknown".to_string(), |hz| format!("{} kHz from {}", hz / 1000, time::source())),
        Span(entry_tsc)
    ));
    if let Some(s) = scale {
        figures.extend(s.figures());
    }
    let ist = idt::ist_high_water();
    figures.push(format!(
        "stacks: boot stack high water {} KiB of {} KiB; IST stacks {:?} bytes",
        boot::XS_BOOT_STACK.high_water() / 1024,
        boot::BOOT_STACK_SIZE / 1024,
        ist
    ));
    for f in &figures {
        println!("figure: {f}");
    }
    println!("xs-selftest: {} passed, {} failed", t.passed, t.failed);
    exit::exit(if t.failed == 0 {
        exit::SUCCESS
    } else {
        exit::FAILURE
    })
}

/// `selftest.fault=<kind>`: a deliberate fatal error.
fn provoke(kind: &str) {
    println!("selftest.fault={kind}: provoking it");
    match kind {
        "panic" => panic!("provoked by selftest.fault=panic"),
        // SAFETY: `ud2` raises #UD, which the IDT handles (report, exit); nothing returns.
        "ud2" => unsafe { core::arch::asm!("ud2") },
        "page-fault" => read_unmapped(),
        // The panic report faults while formatting its message: both are reported.
        "panic-page-fault" => panic!("provoked by selftest.fault=panic-page-fault: {}", Unmapped),
        _ => println!("selftest.fault={kind}: unknown kind, ignored"),
    }
}

/// Reads above the identity-mapped 4 GiB, which is not present: a #PF.
fn read_unmapped() {
    let unmapped = (boot::MAPPED + (1 << 30)) as *const u64;
    // SAFETY: the read faults (#PF, handled by the IDT: report, exit) before it could read
    // anything; no Rust object lives there.
    let _ = unsafe { unmapped.read_volatile() };
}

/// Displays by reading unmapped memory (`selftest.fault=panic-page-fault`).
struct Unmapped;

impl core::fmt::Display for Unmapped {
    fn fmt(&self, _: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        read_unmapped();
        Ok(())
    }
}

/// Domain the ring tests introduce.
const GUEST: &str = "1";

fn checks(t: &mut Runner, rig: &mut Rig) {
    t.check("ring/features", || {
        let f = rig.ring_mut(0)?.guest.server_features();
        expect_eq(
            "server_features",
            f,
            ServerFeatures::RECONNECTION | ServerFeatures::ERROR,
        )
    });

    t.check("dom0/write-read", || {
        rig.write(0, 0, "/tool/xs-selftest/hello", b"world")?;
        expect_eq(
            "read",
            rig.read(0, 0, "/tool/xs-selftest/hello")?,
            "world".into(),
        )?;
        rig.write(0, 0, "/tool/xs-selftest/hello", b"again")?;
        expect_eq(
            "reread",
            rig.read(0, 0, "/tool/xs-selftest/hello")?,
            "again".into(),
        )?;
        // Larger than the ring: crosses it in several rounds, both ways.
        let big: Vec<u8> = (0..3000u32).map(|i| b'a' + (i % 26) as u8).collect();
        rig.write(0, 0, "/tool/xs-selftest/big", &big)?;
        let back = rig.read(0, 0, "/tool/xs-selftest/big")?;
        ensure(
            back.as_bytes() == big.as_slice(),
            "3000-byte value came back changed",
        )?;
        expect_err(rig.read(0, 0, "/tool/xs-selftest/missing"), "ENOENT")
    });

    t.check("dom0/directory", || {
        for name in ["c", "a", "b"] {
            rig.write(0, 0, &format!("/tool/xs-selftest/dir/{name}"), b"")?;
        }
        rig.ok(0, MsgType::Mkdir, 0, &["/tool/xs-selftest/dir/d/e"])?;
        let mut list = rig.directory(0, 0, "/tool/xs-selftest/dir")?;
        list.sort();
        expect_eq(
            "children",
            list,
            ["a", "b", "c", "d"].map(String::from).to_vec(),
        )?;
        rig.ok(0, MsgType::Rm, 0, &["/tool/xs-selftest/dir/d"])?;
        expect_err(rig.read(0, 0, "/tool/xs-selftest/dir/d/e"), "ENOENT")?;
        let mut list = rig.directory(0, 0, "/tool/xs-selftest/dir")?;
        list.sort();
        expect_eq("after rm", list, ["a", "b", "c"].map(String::from).to_vec())
    });

    t.check("domain/introduce", || {
        let gfn = ring_gfn(1).to_string();
        rig.ok(0, MsgType::Introduce, 0, &[GUEST, &gfn, "7"])?;
        let (domid, intro, conn) = *rig
            .host
            .introduced
            .last()
            .ok_or("the host was not told of the introduction")?;
        expect_eq("domid", domid, DomId(1))?;
        expect_eq(
            "introduction",
            intro,
            Introduction {
                gfn: ring_gfn(1),
                evtchn: 7,
            },
        )?;
        rig.attach(1, conn)?;
        expect_eq(
            "IS_DOMAIN_INTRODUCED",
            rig.op(0, MsgType::IsDomainIntroduced, 0, &[GUEST])?,
            b"T\0".to_vec(),
        )?;
        expect_eq(
            "GET_DOMAIN_PATH",
            rig.op(0, MsgType::GetDomainPath, 0, &[GUEST])?,
            b"/local/domain/1\0".to_vec(),
        )
    });

    t.check("guest/relative-paths", || {
        expect_eq("domid", rig.read(1, 0, "domid")?, "1".into())?;
        rig.write(1, 0, "data/greeting", b"hi")?;
        expect_eq(
            "as dom0 sees it",
            rig.read(0, 0, "/local/domain/1/data/greeting")?,
            "hi".into(),
        )
    });

    t.check("perms/denied", || {
        expect_err(rig.read(1, 0, "/tool/xs-selftest/hello"), "EACCES")?;
        expect_err(rig.write(1, 0, "/tool/xs-selftest/hello", b"x"), "EACCES")?;
        expect_err(rig.directory(1, 0, "/tool/xs-selftest"), "EACCES")?;
        expect_err(rig.ok(1, MsgType::Introduce, 0, &["2", "1", "1"]), "EACCES")
    });

    t.check("perms/granted-read", || {
        rig.ok(
            0,
            MsgType::SetPerms,
            0,
            &["/tool/xs-selftest/hello", "n0", "r1"],
        )?;
        expect_eq(
            "GET_PERMS",
            strings(&rig.op(0, MsgType::GetPerms, 0, &["/tool/xs-selftest/hello"])?),
            ["n0", "r1"].map(String::from).to_vec(),
        )?;
        expect_eq(
            "read",
            rig.read(1, 0, "/tool/xs-selftest/hello")?,
            "again".into(),
        )?;
        expect_err(rig.write(1, 0, "/tool/xs-selftest/hello", b"x"), "EACCES")
    });

    t.check("watch/fire", || {
        rig.clear_events(1)?;
        rig.ok(1, MsgType::Watch, 0, &["data/w", "tok-1"])?;
        // "When a watch is first set up it is triggered once straight away."
        expect_eq(
            "initial event",
            rig.next_event(1)?,
            Some(("data/w".into(), "tok-1".into())),
        )?;
        rig.write(0, 0, "/local/domain/1/data/w/x", b"1")?;
        expect_eq(
            "event for dom0's write",
            rig.next_event(1)?,
            Some(("data/w/x".into(), "tok-1".into())),
        )?;
        rig.write(1, 0, "data/elsewhere", b"1")?;
        expect_eq("event outside the path", rig.next_event(1)?, None)
    });

    t.check("watch/unwatch", || {
        rig.ok(1, MsgType::Unwatch, 0, &["data/w", "tok-1"])?;
        rig.write(0, 0, "/local/domain/1/data/w/y", b"2")?;
        expect_eq("event after UNWATCH", rig.next_event(1)?, None)
    });

    t.check("txn/isolation", || {
        let tx = rig.tx_start(1)?;
        rig.write(1, tx, "data/t", b"in-tx")?;
        expect_err(rig.read(1, 0, "data/t"), "ENOENT")?;
        expect_eq("inside", rig.read(1, tx, "data/t")?, "in-tx".into())?;
        rig.tx_end(1, tx, true)?;
        expect_eq("after commit", rig.read(1, 0, "data/t")?, "in-tx".into())?;
        let tx = rig.tx_start(1)?;
        rig.write(1, tx, "data/t", b"aborted")?;
        rig.tx_end(1, tx, false)?;
        expect_eq("after abort", rig.read(1, 0, "data/t")?, "in-tx".into())
    });

    t.check("txn/conflict", || {
        rig.write(1, 0, "data/c", b"0")?;
        let tx = rig.tx_start(1)?;
        expect_eq("read in tx", rig.read(1, tx, "data/c")?, "0".into())?;
        rig.write(1, tx, "data/c", b"from-tx")?;
        rig.write(0, 0, "/local/domain/1/data/c", b"from-dom0")?;
        expect_err(rig.tx_end(1, tx, true), "EAGAIN")?;
        expect_eq("winner", rig.read(1, 0, "data/c")?, "from-dom0".into())
    });

    t.check("txn/disjoint-commit", || {
        rig.write(1, 0, "data/p", b"")?;
        let a = rig.tx_start(1)?;
        let b = rig.tx_start(1)?;
        rig.write(1, a, "data/p/a", b"A")?;
        rig.write(1, b, "data/p/b", b"B")?;
        rig.tx_end(1, a, true)?;
        rig.tx_end(1, b, true)?;
        let mut list = rig.directory(1, 0, "data/p")?;
        list.sort();
        expect_eq("children", list, ["a", "b"].map(String::from).to_vec())
    });

    t.check("quota/nodes", || {
        let used = rig
            .store
            .usage(DomId(1))
            .ok_or("no usage for domain 1")?
            .nodes;
        let quota = (used + 3).to_string();
        rig.ok(0, MsgType::SetQuota, 0, &[GUEST, "nodes", &quota])?;
        expect_eq(
            "GET_QUOTA",
            rig.op(0, MsgType::GetQuota, 0, &[GUEST, "nodes"])?,
            format!("{quota}\0").into_bytes(),
        )?;
        for i in 0..3 {
            rig.write(1, 0, &format!("data/q{i}"), b"")?;
        }
        expect_err(rig.write(1, 0, "data/q3", b""), "ENOSPC")?;
        expect_err(rig.read(1, 0, "data/q3"), "ENOENT")?;
        rig.ok(0, MsgType::SetQuota, 0, &[GUEST, "nodes", "1000"])?;
        rig.write(1, 0, "data/q3", b"")
    });

    t.check("quota/node-size", || {
        expect_err(rig.write(1, 0, "data/big", &[b'v'; 2049]), "ENOSPC")?;
        rig.write(1, 0, "data/big", &[b'v'; 2000])?;
        expect_eq("size", rig.read(1, 0, "data/big")?.len(), 2000)
    });

    t.check("quota/outstanding", || outstanding(rig));

    t.check("hostile/unknown-type", || {
        let reply = rig.call(1, 999, 0, b"x\0")?;
        expect_err(reply.result(), "ENOSYS")?;
        expect_eq("next request", rig.read(1, 0, "domid")?, "1".into())
    });

    // State the reconnection below must clear: a watch and an open transaction.
    let mut tx_before = 0;
    t.check("hostile/ring-index", || {
        rig.ok(1, MsgType::Watch, 0, &["data/r", "tok-r"])?;
        rig.clear_events(1)?;
        tx_before = rig.tx_start(1)?;
        let ring = rig.ring_mut(1)?;
        let page = ring.guest.page();
        let cons = page.load(Field::ReqCons);
        page.store(Field::ReqProd, cons.wrapping_add(RING_SIZE as u32 + 1));
        let done = rig.pump(1)?;
        expect_eq("fault", done.fault, Some(RingFault::Index))?;
        expect_eq(
            "error field",
            rig.ring_mut(1)?.guest.error(),
            RingFault::Index.code(),
        )?;
        // Not served any more, and dom0's ring unaffected.
        let again = rig.pump(1)?;
        ensure(again.fault.is_some(), "the broken ring was served again")?;
        expect_eq("dom0", rig.read(0, 0, "/local/domain/1/domid")?, "1".into())
    });

    t.check("ring/reconnect", || {
        reconnect(rig)?;
        expect_eq("error field", rig.ring_mut(1)?.guest.error(), ERROR_NONE)?;
        expect_eq("read", rig.read(1, 0, "domid")?, "1".into())?;
        // The connection's watch and transaction are gone.
        rig.write(0, 0, "/local/domain/1/data/r", b"x")?;
        expect_eq("event after reconnection", rig.next_event(1)?, None)?;
        expect_err(rig.read(1, tx_before, "domid"), "ENOENT")
    });

    t.check("hostile/overlong-header", || {
        let bad = Header {
            msg_type: MsgType::Read as u32,
            req_id: 1,
            tx_id: 0,
            len: 5000,
        }
        .encode();
        let ring = rig.ring_mut(1)?;
        expect_eq(
            "written",
            ring.guest.write(&bad).map_err(|f| f.to_string())?,
            bad.len(),
        )?;
        let done = rig.pump(1)?;
        expect_eq("fault", done.fault, Some(RingFault::Protocol))?;
        expect_eq(
            "error field",
            rig.ring_mut(1)?.guest.error(),
            RingFault::Protocol.code(),
        )?;
        reconnect(rig)?;
        expect_eq(
            "read after reconnection",
            rig.read(1, 0, "domid")?,
            "1".into(),
        )
    });

    t.check("domain/release", || {
        rig.ok(0, MsgType::Watch, 0, &["@releaseDomain", "rel"])?;
        rig.clear_events(0)?;
        rig.ok(0, MsgType::Release, 0, &[GUEST])?;
        expect_eq(
            "host told",
            rig.host.released.clone(),
            alloc::vec![DomId(1)],
        )?;
        expect_eq(
            "@releaseDomain",
            rig.next_event(0)?,
            Some(("@releaseDomain".into(), "rel".into())),
        )?;
        expect_eq(
            "IS_DOMAIN_INTRODUCED",
            rig.op(0, MsgType::IsDomainIntroduced, 0, &[GUEST])?,
            b"F\0".to_vec(),
        )?;
        expect_err(rig.read(0, 0, "/local/domain/1"), "ENOENT")?;
        // The guest's next request finds its ring no longer served.
        let mut req = Vec::new();
        push_message(&mut req, MsgType::Read as u32, 77, 0, b"domid\0");
        rig.send_raw(1, &req)?;
        ensure(
            rig.ring_mut(1)?.last.released,
            "the pump did not report the release",
        )
    });

    t.check("cpu/int3-on-ist", || {
        let (rsp, on_ist) = idt::breakpoint_probe();
        ensure(rsp != 0, "the #BP handler did not run")?;
        ensure(
            on_ist,
            format!("the #BP handler ran at rsp {rsp:#x}, off its IST stack"),
        )
    });

    t.check("store/check", || {
        rig.store.check().map_err(|e| format!("Store::check: {e}"))
    });
}

/// The guest asks for a reconnection; the pump completes it.
fn reconnect(rig: &mut Rig) -> Result<(), String> {
    rig.ring_mut(1)?.guest.request_reconnect();
    let done = rig.pump(1)?;
    ensure(
        done.notify,
        "the reconnection did not ask to notify the guest",
    )?;
    ensure(
        done.fault.is_none(),
        "the ring is still broken after reconnection",
    )?;
    let ring = rig.ring_mut(1)?;
    ensure(
        ring.guest.reconnected(),
        "the guest does not see the reconnection",
    )?;
    ring.reset_client();
    trace::record(Event::Reconnect, 1);
    Ok(())
}

/// A guest that writes requests and never reads the replies: the store stops taking its
/// input once `outstanding` replies wait (its rings fill; the store's memory does not grow),
/// and answers everything once the guest reads again.
fn outstanding(rig: &mut Rig) -> Result<(), String> {
    const N: u32 = 200;
    let mut stream = Vec::new();
    for i in 0..N {
        push_message(&mut stream, MsgType::Read as u32, 10_000 + i, 0, b"domid\0");
    }
    let mut sent = 0;
    loop {
        let n = rig
            .ring_mut(1)?
            .guest
            .write(&stream[sent..])
            .map_err(|f| f.to_string())?;
        sent += n;
        rig.pump(1)?;
        if n == 0 {
            break;
        }
    }
    let limit = QuotaKind::Outstanding;
    let quota = rig.store.effective_quotas(DomId(1)).get(limit) as usize;
    let pending = rig.ring_mut(1)?.conn.pending();
    ensure(
        pending <= quota,
        format!("{pending} replies pending, over the outstanding quota {quota}"),
    )?;
    ensure(
        sent < stream.len(),
        "every request was taken without reading a reply",
    )?;
    let memory = rig.store.usage(DomId(1)).map(|u| u.memory);
    for _ in 0..50 {
        rig.pump(1)?;
    }
    expect_eq(
        "memory while stalled",
        rig.store.usage(DomId(1)).map(|u| u.memory),
        memory,
    )?;
    // Now read: everything gets answered.
    for _ in 0..10_000 {
        if sent < stream.len() {
            sent += rig
                .ring_mut(1)?
                .guest
                .write(&stream[sent..])
                .map_err(|f| f.to_string())?;
        }
        rig.pump_all()?;
        if sent == stream.len() && rig.ring_mut(1)?.replies_with(|id| id >= 10_000) == N as usize {
            break;
        }
    }
    let answered = rig.ring_mut(1)?.take_replies(|id| id >= 10_000);
    expect_eq("answered", answered.len(), N as usize)?;
    ensure(
        answered.iter().all(|p| p == b"1"),
        "a reply was not the domid",
    )
}

/// The scale figures: 100 domains with 1000 nodes each, populated and released three times.
/// The heap must settle: the third round needs no more than the second (the first round
/// ends with tables grown to their working size, which the store keeps and reuses).
struct Scale {
    nodes_before: usize,
    nodes_added: usize,
    ticks: u64,
    heap_before: talc::base::Counters,
    /// Heap after populating and after releasing, per round.
    rounds: Vec<(talc::base::Counters, talc::base::Counters)>,
    tree_bytes: usize,
    report: String,
}

impl Scale {
    const DOMAINS: u32 = 100;
    const NODES: u32 = 1000;
    /// Leaves per directory: a guest's node-size quota (2048 bytes of value plus child
    /// names) bounds a directory owned by the guest, as real trees are shaped anyway.
    const PER_DIR: u32 = 40;
    const FIRST_DOMID: u16 = 100;
    /// What the third round may add to the second's heap figures (tables that grow by
    /// doubling settle within a round or two).
    const SLACK: usize = 64 * 1024;

    fn run(t: &mut Runner, rig: &mut Rig) -> Option<Scale> {
        let mut scale: Option<Scale> = None;
        t.check("scale/populate", || {
            let mut conns = Vec::new();
            let mut s = Scale::populate(rig, &mut conns)?;
            let populated = heap::counters();
            Scale::release(rig, &conns, s.nodes_before)?;
            s.rounds.push((populated, heap::counters()));
            scale = Some(s);
            Ok(())
        });
        t.check("scale/no-leak", || {
            let s = scale.as_mut().ok_or("nothing was populated")?;
            for _ in 0..2 {
                let mut conns = Vec::new();
                Scale::populate(rig, &mut conns)?;
                let populated = heap::counters();
                Scale::release(rig, &conns, s.nodes_before)?;
                s.rounds.push((populated, heap::counters()));
            }
            let [.., (peak2, end2), (peak3, end3)] = s.rounds.as_slice() else {
                return Err("rounds missing".into());
            };
            ensure(
                peak3.allocated_bytes <= peak2.allocated_bytes + Self::SLACK,
                format!(
                    "the third round took the heap to {} bytes, the second to {}",
                    peak3.allocated_bytes, peak2.allocated_bytes
                ),
            )?;
            ensure(
                end3.allocated_bytes <= end2.allocated_bytes + Self::SLACK,
                format!(
                    "{} bytes in use after the third round, {} after the second",
                    end3.allocated_bytes, end2.allocated_bytes
                ),
            )
        });
        scale
    }

    fn populate(rig: &mut Rig, conns: &mut Vec<xs_core::ConnId>) -> Result<Scale, String> {
        let store = &mut rig.store;
        let dom0 = store.connect(DomId::DOM0).map_err(|e| e.to_string())?;
        let nodes_before = store.node_count();
        let heap_before = heap::counters();
        let start = time::rdtsc();
        let mut path = String::new();
        let mut value = String::new();
        for d in 0..Self::DOMAINS {
            let domid = DomId(Self::FIRST_DOMID + d as u16);
            let intro = Introduction {
                gfn: 0x8_0000 + u64::from(d),
                evtchn: 1,
            };
            store
                .introduce(dom0, domid, intro)
                .map_err(|e| format!("INTRODUCE {}: {e}", domid.0))?;
            let conn = store.connect(domid).map_err(|e| e.to_string())?;
            conns.push(conn);
            let used = store.usage(domid).map_or(0, |u| u.nodes) as u32;
            let dirs = Self::NODES / Self::PER_DIR;
            // The domain's own quota, raised by what this layout adds (as a toolstack would
            // for a domain with many devices).
            store
                .set_quota(
                    dom0,
                    Some(domid),
                    QuotaKind::Nodes,
                    used + Self::NODES + dirs,
                )
                .map_err(|e| e.to_string())?;
            for i in 0..Self::NODES {
                path.clear();
                value.clear();
                let _ = core::fmt::write(
                    &mut path,
                    format_args!(
                        "/local/domain/{}/data/dir{}/node{}",
                        domid.0,
                        i / Self::PER_DIR,
                        i % Self::PER_DIR
                    ),
                );
                let _ = core::fmt::write(&mut value, format_args!("value-{i}"));
                store
                    .write(conn, 0, path.as_bytes(), value.as_bytes())
                    .map_err(|e| format!("WRITE {path} as domain {}: {e}", domid.0))?;
            }
        }
        let ticks = time::rdtsc().wrapping_sub(start);
        let nodes_added = store.node_count() - nodes_before;
        // Spot checks: the last node of every tenth domain reads back.
        let mut out = Vec::new();
        for d in (0..Self::DOMAINS).step_by(10) {
            let domid = Self::FIRST_DOMID + d as u16;
            let last = Self::NODES - 1;
            let p = format!(
                "/local/domain/{domid}/data/dir{}/node{}",
                last / Self::PER_DIR,
                last % Self::PER_DIR
            );
            out.clear();
            store
                .read(conns[d as usize], 0, p.as_bytes(), &mut out)
                .map_err(|e| format!("READ {p}: {e}"))?;
            expect_eq("value", out.as_slice(), format!("value-{last}").as_bytes())?;
        }
        store.check().map_err(|e| format!("Store::check: {e}"))?;
        let expected = (Self::DOMAINS * Self::NODES) as usize;
        ensure(
            nodes_added >= expected,
            format!("only {nodes_added} nodes added"),
        )?;
        let report = memory_report(store);
        let tree_bytes = store.tree_heap_bytes();
        store.disconnect(dom0);
        Ok(Scale {
            nodes_before,
            nodes_added,
            ticks,
            heap_before,
            rounds: Vec::new(),
            tree_bytes,
            report,
        })
    }

    /// Releases the domains: their nodes go, and their connections close.
    fn release(
        rig: &mut Rig,
        conns: &[xs_core::ConnId],
        nodes_before: usize,
    ) -> Result<(), String> {
        let store = &mut rig.store;
        let dom0 = store.connect(DomId::DOM0).map_err(|e| e.to_string())?;
        for d in 0..Self::DOMAINS {
            let domid = DomId(Self::FIRST_DOMID + d as u16);
            store
                .release(dom0, domid)
                .map_err(|e| format!("RELEASE {}: {e}", domid.0))?;
        }
        for &c in conns {
            store.disconnect(c);
        }
        store.disconnect(dom0);
        store.check().map_err(|e| format!("Store::check: {e}"))?;
        expect_eq("nodes after release", store.node_count(), nodes_before)
    }

    fn figures(&self) -> Vec<String> {
        let nodes = self.nodes_added.max(1);
        let Some(peak) = self
            .rounds
            .iter()
            .map(|(p, _)| *p)
            .max_by_key(|p| p.allocated_bytes)
        else {
            return Vec::new();
        };
        let grew = peak
            .allocated_bytes
            .saturating_sub(self.heap_before.allocated_bytes);
        let in_use = peak.allocated_bytes + peak.overhead_bytes();
        let mut rounds = String::new();
        for (i, (p, r)) in self.rounds.iter().enumerate() {
            let _ = core::fmt::write(
                &mut rounds,
                format_args!(
                    "; round {}: {} populated, {} released",
                    i + 1,
                    p.allocated_bytes,
                    r.allocated_bytes
                ),
            );
        }
        let mut out = alloc::vec![
            format!(
                "{} domains x {} nodes: {} nodes added in {} ({} per node, through Store::write)",
                Self::DOMAINS,
                Self::NODES,
                nodes,
                Span(self.ticks),
                Span(self.ticks / nodes as u64)
            ),
            format!(
                "heap for {} domains x {} nodes (the highest of {} rounds): {} bytes allocated ({} MiB), {} of them for the domains ({} per node); {} bytes ({} MiB) with allocator overhead, of a {} MiB heap",
                Self::DOMAINS,
                Self::NODES,
                self.rounds.len(),
                peak.allocated_bytes,
                Mib(peak.allocated_bytes),
                grew,
                grew / nodes,
                in_use,
                Mib(in_use),
                peak.claimed_bytes >> 20,
            ),
            format!(
                "heap allocated, bytes: {} before populating{rounds}",
                self.heap_before.allocated_bytes
            ),
            format!(
                "xs-core's own estimate of its tree: {} bytes",
                self.tree_bytes
            ),
        ];
        // The report's summary, without its per-domain table.
        for line in self
            .report
            .lines()
            .take_while(|l| !l.starts_with("domain "))
        {
            out.push(format!("memreport: {line}"));
        }
        out
    }
}

/// Bytes in MiB with one decimal, in integers: formatting an `f64` would bring core's
/// float printing (some 12 KiB) into the image for two figures.
struct Mib(usize);

impl core::fmt::Display for Mib {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let tenths = self.0.saturating_mul(10).saturating_add(1 << 19) >> 20;
        write!(f, "{}.{}", tenths / 10, tenths % 10)
    }
}
