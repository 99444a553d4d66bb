//! The self-test: the Xen surface, event channels, the store through xenbus, and the console
//! handshake; then the benchmark if the VMM asked for it.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use x86_glue::hypercall::{Hypercalls, arg, nr};
use x86_glue::sched::{self, ShutdownReason};
use x86_glue::shared_info::locate;
use x86_glue::{Errno, evtchn, version};
use xs_core::wire::MsgType;
use xs_core::{DomId, XsError};
use xs_serve::client::XsClient;
use xs_serve::xenbus::{End, XenbusDevice, XenbusState, frontend_next};

use crate::boot;
use crate::console::{Out, Ring};
use crate::store::{self, Notify};
use crate::xen::{self, Xen};

/// Counts and prints the checks.
struct Checks {
    out: Out,
    passed: u32,
    failed: u32,
}

impl Checks {
    fn check(&mut self, xen: &Xen, name: &str, result: Result<(), String>) {
        let line = match result {
            Ok(()) => {
                self.passed += 1;
                format!("ok {} - {name}", self.passed + self.failed)
            }
            Err(why) => {
                self.failed += 1;
                format!("not ok {} - {name}: {why}", self.passed + self.failed)
            }
        };
        self.out.line(xen, line);
    }
}

fn expect<T: PartialEq + core::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, want {want:?}"))
    }
}

fn xs<T>(r: Result<T, XsError>) -> Result<T, String> {
    r.map_err(|e| format!("{e:?}"))
}

fn en<T>(r: Result<T, Errno>) -> Result<T, String> {
    r.map_err(|e| format!("{e}"))
}

/// Runs everything and shuts down.
pub(crate) fn run(xen: &Xen) -> ! {
    let mut c = Checks {
        out: Out::default(),
        passed: 0,
        failed: 0,
    };
    c.out.early(xen, "xs-vmm-guest: Xen found by CPUID, hypercall page, shared_info, vcpu_info, upcall vector and grant frame set up");
    c.check(xen, "cpuid: Xen 4.19, hypercall MSR, domid 1", {
        let i = &xen.info;
        expect("version", (i.major, i.minor), (4, 19))
            .and(expect("msr", i.hypercall_msr, 0x4000_0000))
            .and(expect("domid", i.domid, Some(DomId(1))))
    });
    c.check(xen, "xen_version and XENFEAT_hvm_callback_vector", {
        let mut hc = xen.hc();
        en(version::version(&mut hc))
            .and_then(|v| expect("version", v, (4, 19)))
            .and(
                en(version::features(&mut hc, 0))
                    .and_then(|f| expect("feature 8", f & (1 << 8), 1 << 8)),
            )
    });
    let store = xen.store();
    c.check(
        xen,
        "HVM params: store page at XEN_SPECIAL_PFN(XENSTORE), its channel",
        match store {
            Ok((pfn, port)) => expect("store pfn", pfn, 0xfeffc).and(if port == 0 {
                Err("port 0".into())
            } else {
                Ok(())
            }),
            Err(e) => Err(format!("{e}")),
        },
    );
    c.check(
        xen,
        "loopback event channel: send raises the upcall vector",
        loopback(xen),
    );
    c.check(
        xen,
        "a masked port raises no upcall until EVTCHNOP_unmask",
        masked(xen),
    );
    c.check(xen, "hostile hypercalls get Xen error codes", hostile(xen));

    let Ok((pfn, port)) = store else {
        finish(xen, c)
    };
    let mut client = store::client(pfn);
    let mut notify = Notify {
        xen,
        port,
        kicks: 0,
    };
    {
        let mut s = client.blocking(&mut notify);
        c.check(xen, "xenstore: read name and domid", {
            xs(s.read(0, "name"))
                .and_then(|v| expect("name", v.as_slice(), b"xs-vmm-guest"))
                .and(xs(s.read(0, "domid")).and_then(|v| expect("domid", v.as_slice(), b"1")))
        });
        c.check(
            xen,
            "xenstore: write and read our own nodes",
            (|| {
                xs(s.write(0, "data/hello", b"world"))?;
                expect("read", xs(s.read(0, "data/hello"))?.as_slice(), b"world")?;
                let names = xs(s.directory(0, "data"))?;
                expect("directory", names.iter().any(|n| n == b"hello"), true)?;
                expect(
                    "dom0's node",
                    s.write(0, "/local/domain/0/x", b"1"),
                    Err(XsError::Acces),
                )
            })(),
        );
        c.check(
            xen,
            "xenstore: a watch fired by the VMM's write",
            (|| {
                xs(s.watch("data/pong", "pong", None))?;
                let first = xs(s.wait_event())?;
                expect(
                    "first event",
                    first.event().map(|(_, t)| t.to_vec()),
                    Some(b"pong".to_vec()),
                )?;
                xs(s.write(0, "data/ping", b"42"))?;
                let e = xs(s.wait_event())?;
                expect(
                    "event path",
                    e.event().map(|(p, _)| p.to_vec()),
                    Some(b"data/pong".to_vec()),
                )?;
                expect("pong", xs(s.read(0, "data/pong"))?.as_slice(), b"42")?;
                xs(s.unwatch("data/pong", "pong"))
            })(),
        );
        c.check(
            xen,
            "xenstore: transactions commit, and conflict with EAGAIN",
            (|| {
                xs(s.transaction(|t| {
                    t.write("data/tx/a", b"1")?;
                    t.write("data/tx/b", b"2")
                }))?;
                expect("a", xs(s.read(0, "data/tx/a"))?.as_slice(), b"1")?;
                let tx = xs(s.transaction_start())?;
                xs(s.read(tx, "data/tx/a"))?;
                xs(s.write(0, "data/tx/a", b"outside"))?;
                xs(s.write(tx, "data/tx/a", b"inside"))?;
                expect("commit", s.transaction_end(tx, true), Err(XsError::Again))?;
                expect("a", xs(s.read(0, "data/tx/a"))?.as_slice(), b"outside")
            })(),
        );
    }
    let result = console_handshake(xen, &mut client, &mut notify);
    match result {
        Ok(ring) => {
            c.out.connect(xen, ring);
            c.check(
                xen,
                "console: frontend Initialising -> Connected against the VMM's backend",
                Ok(()),
            );
        }
        Err(why) => {
            c.check(
                xen,
                "console: frontend Initialising -> Connected against the VMM's backend",
                Err(why),
            );
            c.out.give_up(xen);
        }
    }
    let bench = client.blocking(&mut notify).read(0, "xs-vmm/bench");
    if let Ok(n) = bench {
        let n = core::str::from_utf8(&n)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(10_000);
        crate_bench(xen, &mut c, &mut client, &mut notify, n);
    }
    finish(xen, c)
}

fn finish(xen: &Xen, mut c: Checks) -> ! {
    let line = format!("xs-vmm-guest: {} passed, {} failed", c.passed, c.failed);
    c.out.line(xen, line);
    let reason = if c.failed == 0 {
        ShutdownReason::Poweroff
    } else {
        ShutdownReason::Crash
    };
    let _ = sched::shutdown(&mut xen.hc(), reason);
    crate::debug::exit(4)
}

/// A channel from us to ourselves: alloc_unbound + bind_interdomain, send, the upcall.
fn loopback(xen: &Xen) -> Result<(), String> {
    let mut hc = xen.hc();
    let a = en(evtchn::alloc_unbound(
        &mut hc,
        evtchn::DOMID_SELF,
        evtchn::DOMID_SELF,
    ))?;
    let b = en(evtchn::bind_interdomain(&mut hc, evtchn::DOMID_SELF, a))?;
    expect(
        "status",
        en(evtchn::status(&mut hc, evtchn::DOMID_SELF, b))?,
        evtchn::ChannelStatus::Interdomain { dom: 1, port: a },
    )?;
    drain(xen);
    let before = boot::upcalls();
    en(evtchn::send(&mut hc, b))?;
    expect("upcalls", boot::upcalls(), before + 1)?;
    expect("upcall pending", evtchn::take_upcall(xen.vcpu), true)?;
    let mut scan = evtchn::Scanner::new();
    expect(
        "pending port",
        scan.next(xen.shared_info, xen.vcpu),
        Some(a),
    )?;
    expect("no more", scan.next(xen.shared_info, xen.vcpu), None)?;
    en(evtchn::close(&mut hc, b))?;
    expect(
        "a after close",
        en(evtchn::status(&mut hc, evtchn::DOMID_SELF, a))?,
        evtchn::ChannelStatus::Unbound { dom: 1 },
    )?;
    en(evtchn::close(&mut hc, a))
}

fn masked(xen: &Xen) -> Result<(), String> {
    let mut hc = xen.hc();
    let a = en(evtchn::alloc_unbound(
        &mut hc,
        evtchn::DOMID_SELF,
        evtchn::DOMID_SELF,
    ))?;
    let b = en(evtchn::bind_interdomain(&mut hc, evtchn::DOMID_SELF, a))?;
    xen.shared_info.mask(a);
    drain(xen);
    let before = boot::upcalls();
    en(evtchn::send(&mut hc, b))?;
    expect("upcalls while masked", boot::upcalls(), before)?;
    expect("pending", xen.shared_info.is_pending(a), true)?;
    evtchn::take_upcall(xen.vcpu);
    en(evtchn::unmask(&mut hc, xen.shared_info, xen.vcpu, a))?;
    expect("upcalls after unmask", boot::upcalls(), before + 1)?;
    let mut scan = evtchn::Scanner::new();
    evtchn::take_upcall(xen.vcpu);
    expect(
        "pending port",
        scan.next(xen.shared_info, xen.vcpu),
        Some(a),
    )?;
    en(evtchn::close(&mut hc, b))?;
    en(evtchn::close(&mut hc, a))
}

/// Takes every pending event (the upcall flag, the selector, the pending bits), so that the
/// next one raises an upcall.
fn drain(xen: &Xen) {
    evtchn::take_upcall(xen.vcpu);
    let mut scan = evtchn::Scanner::new();
    while scan.next(xen.shared_info, xen.vcpu).is_some() {}
}

fn hostile(xen: &Xen) -> Result<(), String> {
    let mut hc = xen.hc();
    expect(
        "send on port 0",
        evtchn::send(&mut hc, 0),
        Err(Errno::EINVAL),
    )?;
    expect(
        "send on port 1000",
        evtchn::send(&mut hc, 1000),
        Err(Errno::EINVAL),
    )?;
    expect(
        "unmask port 5000",
        evtchn::unmask_op(&mut hc, 5000),
        Err(Errno::EINVAL),
    )?;
    // An argument at an unmapped address (a non-canonical one, and one past our page tables).
    for bad in [0xdead_0000_0000u64, 0x1_0000_0000_0000] {
        expect(
            "send through a bad pointer",
            Errno::check(hc.call2(nr::EVENT_CHANNEL_OP, evtchn::EVTCHNOP_SEND, bad)),
            Err(Errno::EFAULT),
        )?;
    }
    expect(
        "unknown hypercall",
        Errno::check(hc.call1(99, 0)),
        Err(Errno::ENOSYS),
    )?;
    let mut ctl = [0u64; 2];
    expect(
        "EVTCHNOP_init_control (FIFO)",
        Errno::check(hc.call2(nr::EVENT_CHANNEL_OP, 11, arg(&mut ctl))),
        Err(Errno::ENOSYS),
    )?;
    let mut q = [0u32; 4];
    expect(
        "grant query_size count 2",
        Errno::check(hc.call3(nr::GRANT_TABLE_OP, 6, arg(&mut q), 2)),
        Err(Errno::EINVAL),
    )?;
    let mut p = [0x7ff0u32, 1, 5, 0];
    expect(
        "set HVM_PARAM_STORE_PFN",
        Errno::check(hc.call2(nr::HVM_OP, 0, arg(&mut p))),
        Err(Errno::EPERM),
    )?;
    Ok(())
}

/// The console frontend (what `hvc_xen` does for a xenbus console): watch the backend,
/// grant the ring page, allocate a channel for dom0, publish both with Initialised in one
/// transaction, and follow the backend to Connected.
fn console_handshake(
    xen: &Xen,
    client: &mut xs_serve::guest::GuestClient<xs_ring::RawPage>,
    notify: &mut Notify<'_>,
) -> Result<Ring, String> {
    let dev = XenbusDevice::new("console", 0, DomId::DOM0, DomId(1));
    let mut s = client.blocking(notify);
    xs(dev.watch_state(&mut s, End::Backend, "console-backend"))?;
    let ring_page = xen::page();
    const GREF: usize = 8;
    xen.grant(GREF, xen::gfn(ring_page));
    let port = en(evtchn::alloc_unbound(&mut xen.hc(), evtchn::DOMID_SELF, 0))?;
    let mut state = XenbusState::Initialising;
    for _ in 0..32 {
        let backend = xs(dev.state(&mut s, End::Backend))?;
        if let Some(next) = frontend_next(backend, state) {
            if next == XenbusState::Initialised {
                xs(s.transaction(|t| {
                    t.write(
                        &dev.node(End::Frontend, "ring-ref"),
                        GREF.to_string().as_bytes(),
                    )?;
                    t.write(
                        &dev.node(End::Frontend, "port"),
                        port.to_string().as_bytes(),
                    )?;
                    t.write(&dev.node(End::Frontend, "state"), next.value())
                }))?;
            } else {
                xs(dev.switch_state(&mut s, End::Frontend, next))?;
            }
            state = next;
        }
        if state == XenbusState::Connected {
            return Ok(Ring {
                page: ring_page,
                port,
            });
        }
        if matches!(backend, XenbusState::Closing | XenbusState::Closed) {
            return Err(format!("the backend went {backend:?}"));
        }
        xs(s.wait_event())?;
    }
    Err(format!("no Connected after 32 events (frontend {state:?})"))
}

/// READ round trips through the ring: with the store's event channel unmasked (every reply
/// an upcall: the VMM's `KVM_SIGNAL_MSI` and the guest's CPL0 stub) and masked (the guest
/// polls the ring after its notification's exit returns). Guest-measured with the TSC.
fn crate_bench(
    xen: &Xen,
    c: &mut Checks,
    client: &mut xs_serve::guest::GuestClient<xs_ring::RawPage>,
    notify: &mut Notify<'_>,
    n: u32,
) {
    let port = notify.port;
    let mut lines = Vec::new();
    // The floor: a hypercall that does nothing (XENVER_version), one exit each.
    let mut hc = xen.hc();
    let start = rdtsc();
    for _ in 0..n {
        let _ = version::version(&mut hc);
    }
    let ticks = rdtsc().wrapping_sub(start).max(1);
    let us = ticks as f64 / xen.tsc_khz as f64 * 1000.0 / f64::from(n.max(1));
    lines.push(format!("bench vmm_null_hypercall_rtt {us:.2} us"));
    for (mode, masked) in [("evtchn", false), ("poll", true)] {
        if masked {
            xen.shared_info.mask(port);
        } else {
            let _ = evtchn::unmask(&mut xen.hc(), xen.shared_info, xen.vcpu, port);
        }
        let upcalls = boot::upcalls();
        let kicks = notify.kicks;
        let start = rdtsc();
        let mut ok = 0u32;
        for _ in 0..n {
            if client.call(notify, MsgType::Read, 0, b"name\0").is_ok() {
                ok += 1;
            }
            if !masked {
                // What an upcall handler does: take the flag and the pending ports, so that
                // the next reply raises a new upcall.
                drain(xen);
            }
        }
        let ticks = rdtsc().wrapping_sub(start).max(1);
        let per_s = u64::from(n) * xen.tsc_khz * 1000 / ticks;
        let us = ticks as f64 / xen.tsc_khz as f64 * 1000.0 / f64::from(n.max(1));
        lines.push(format!("bench vmm_read_{mode} {per_s} ops/s"));
        lines.push(format!("bench vmm_read_{mode}_rtt {us:.2} us"));
        lines.push(format!(
            "xs-vmm-guest: {mode}: {ok}/{n} READs, {} upcalls, {} notifications",
            boot::upcalls() - upcalls,
            notify.kicks - kicks
        ));
    }
    let _ = evtchn::unmask(&mut xen.hc(), xen.shared_info, xen.vcpu, port);
    let _ = locate(port);
    for line in lines {
        c.out.line(xen, line);
    }
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads the time-stamp counter; no memory, allowed at CPL3 (CR4.TSD clear).
    unsafe { core::arch::x86_64::_rdtsc() }
}
