//! The boot storm: guests created libxl-style by parallel toolstack connections while a
//! backend connection per device kind watches its backend directory.

use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use xs_bench::client::{self, Client, MsgType};

use super::Bench;
use super::libxl::{device_requests, domain_make_requests, vm_path};
use super::requests::{batch, req_path};
use super::rm_guest::RM_GUEST_DOMID;
use crate::config::{Config, R, Target, kills, other};

/// First domid of the boot storm's guests; each run takes the next `guests` domids.
const BOOT_FIRST_DOMID: u32 = 2001;
/// Domid used to learn whether a daemon accepts `INTRODUCE` from a socket client.
pub(crate) const PROBE_DOMID: u32 = 32700;
/// Frame number and event channel given in `INTRODUCE` (the shim maps any frame).
pub(crate) const RING_GFN: u64 = 0xfeffc;
pub(crate) const RING_EVTCHN: u32 = 1;
/// Give up on a transaction that conflicts this often (test-xenstore's MAX_TA_LOOPS).
const MAX_TX_ATTEMPTS: u32 = 100;
/// The device kinds, their device ids, and the backend directories watched.
const DEVICES: [(&str, u32); 2] = [("vif", 0), ("vbd", 51712)];

pub(super) struct BootStorm {
    cfg: Config,
    path: PathBuf,
    control: Client,
    toolstacks: Vec<Client>,
    introduce: bool,
    runs: u32,
    sentinel: String,
}

impl BootStorm {
    pub(super) fn setup(cfg: &Config, t: &Target) -> R<Box<dyn Bench>> {
        let control = t.connect(cfg)?;
        let toolstacks = (0..cfg.boot_toolstacks.max(1))
            .map(|_| t.connect(cfg))
            .collect::<R<Vec<_>>>()?;
        Ok(Box::new(BootStorm {
            cfg: cfg.clone(),
            path: t.path.clone(),
            control,
            toolstacks,
            introduce: t.introduce.is_ok(),
            runs: 0,
            sentinel: format!("bench-socket-{}", std::process::id()),
        }))
    }

    fn sentinel_path(&self, kind: &str) -> Vec<u8> {
        format!("/local/domain/0/backend/{kind}/{}", self.sentinel).into_bytes()
    }

    /// Removes (and releases) the guests `domids`: untimed, before a run (where anything may
    /// fail: `tolerate` is `["*"]`) and after it.
    fn cleanup(&mut self, domids: &[u32], tolerate: &[&str]) -> R<()> {
        let mut reqs = Vec::new();
        for &d in domids {
            reqs.push(req_path(
                MsgType::Rm,
                format!("/local/domain/{d}").as_bytes(),
            ));
            for (kind, _) in DEVICES {
                let be = format!("/local/domain/0/backend/{kind}/{d}");
                reqs.push(req_path(MsgType::Rm, be.as_bytes()));
            }
            reqs.push(req_path(MsgType::Rm, format!("/libxl/{d}").as_bytes()));
            reqs.push(req_path(MsgType::Rm, &vm_path(d)));
            if self.introduce {
                reqs.push(req_path(MsgType::Release, d.to_string().as_bytes()));
            }
        }
        for (kind, _) in DEVICES {
            reqs.push(req_path(MsgType::Rm, &self.sentinel_path(kind)));
        }
        batch(&mut self.control, 32, &reqs, tolerate).map(drop)
    }
}

/// Runs `body` in a transaction until it commits; returns the number of EAGAIN retries.
fn transaction(c: &mut Client, mut body: impl FnMut(&mut Client, u32) -> R<()>) -> R<u64> {
    for attempt in 0..MAX_TX_ATTEMPTS {
        let tx = c.tx_start()?;
        match body(c, tx) {
            Ok(()) => {
                if c.tx_end(tx, true)? {
                    return Ok(u64::from(attempt));
                }
            }
            // Some daemons report the conflict before the commit.
            Err(e) if e.is_xen("EAGAIN") => {
                c.tx_end(tx, false)?;
            }
            Err(e) => {
                if !kills(&e) {
                    let _ = c.tx_end(tx, false);
                }
                return Err(e);
            }
        }
    }
    Err(other(format!(
        "transaction still conflicting after {MAX_TX_ATTEMPTS} attempts"
    )))
}

/// One request of a transaction body: `(type, payload)`; ENOENT tolerated for RM.
fn tx_requests(c: &mut Client, tx: u32, reqs: &[(MsgType, Vec<u8>)]) -> R<()> {
    for (t, p) in reqs {
        let payload = client::Payload {
            strings: &[],
            tail: p,
        };
        match c.call(*t, tx, payload) {
            Ok(_) => {}
            Err(e) if *t == MsgType::Rm && e.is_xen("ENOENT") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One toolstack's share of the boot storm: its guests one after the other. Returns the
/// EAGAIN retries.
fn toolstack(c: &mut Client, guests: &[u32], introduce: bool) -> R<u64> {
    let mut retries = 0u64;
    for &d in guests {
        let make = domain_make_requests(d);
        retries += transaction(c, |c, tx| tx_requests(c, tx, &make))?;
        if introduce {
            c.introduce(d, RING_GFN, RING_EVTCHN)?;
        }
        for (kind, devid) in DEVICES {
            let reqs = device_requests(d, kind, devid);
            retries += transaction(c, |c, tx| tx_requests(c, tx, &reqs))?;
        }
    }
    Ok(retries)
}

/// A backend's watch on `/local/domain/0/backend/<kind>`: counts events until the sentinel's
/// arrives; returns the count and when the sentinel arrived.
fn backend_watcher(c: &mut Client, sentinel: &[u8]) -> R<(u64, Instant)> {
    let mut events = 0u64;
    loop {
        let ev = c.next_event()?;
        events += 1;
        if ev.path == sentinel {
            return Ok((events, Instant::now()));
        }
    }
}

impl Bench for BootStorm {
    fn run(&mut self, _budget: Duration) -> R<Vec<f64>> {
        let n = self.cfg.boot_guests;
        let first = BOOT_FIRST_DOMID + self.runs * n;
        self.runs += 1;
        if first + n > RM_GUEST_DOMID {
            return Err(other("boot storm: out of domids (too many runs or guests)"));
        }
        let domids: Vec<u32> = (first..first + n).collect();
        // Whatever an interrupted earlier run may have left.
        self.cleanup(&domids, &["*"])?;
        let k = self.toolstacks.len();
        let shares: Vec<Vec<u32>> = (0..k)
            .map(|i| domids.iter().copied().skip(i).step_by(k).collect())
            .collect();
        // The backends' connections, watching before the storm starts.
        let mut watchers = Vec::new();
        for (kind, _) in DEVICES {
            let mut w = Client::connect(&self.path, self.cfg.timeout)?;
            w.watch(
                format!("/local/domain/0/backend/{kind}").as_bytes(),
                kind.as_bytes(),
            )?;
            w.next_event()?;
            watchers.push((w, self.sentinel_path(kind)));
        }
        let introduce = self.introduce;
        let all = Arc::new(Barrier::new(k + watchers.len() + 1));
        let control = &mut self.control;
        let sentinels: Vec<Vec<u8>> = watchers.iter().map(|(_, s)| s.clone()).collect();
        let (start, tool_results, watch_results) = std::thread::scope(|s| {
            let watch_handles: Vec<_> = watchers
                .iter_mut()
                .map(|(w, sentinel)| {
                    let all = Arc::clone(&all);
                    s.spawn(move || {
                        all.wait();
                        backend_watcher(w, sentinel)
                    })
                })
                .collect();
            let tool_handles: Vec<_> = self
                .toolstacks
                .iter_mut()
                .zip(&shares)
                .map(|(c, share)| {
                    let all = Arc::clone(&all);
                    s.spawn(move || {
                        all.wait();
                        toolstack(c, share, introduce)
                    })
                })
                .collect();
            all.wait();
            let start = Instant::now();
            let tool_results: Vec<R<u64>> = tool_handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(other("toolstack panicked")))
                })
                .collect();
            // The sentinels end the watchers (also after a failure, so that they return).
            let mut sentinel_result = Ok(());
            for s in &sentinels {
                if let Err(e) = control.write(0, s, b"done") {
                    sentinel_result = Err(e);
                    break;
                }
            }
            let watch_results: Vec<R<(u64, Instant)>> = match sentinel_result {
                Ok(()) => watch_handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err(other("watcher panicked"))))
                    .collect(),
                Err(e) => {
                    // Without the sentinel the watchers end by their read timeout.
                    for h in watch_handles {
                        let _ = h.join();
                    }
                    vec![Err(e)]
                }
            };
            (start, tool_results, watch_results)
        });
        drop(watchers);
        let mut retries = 0u64;
        let mut failure = None;
        for r in tool_results {
            match r {
                Ok(n) => retries += n,
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        let mut end = start;
        let mut events = 0u64;
        for r in watch_results {
            match r {
                Ok((n, t)) => {
                    events += n;
                    end = end.max(t);
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        let cleanup = self.cleanup(&domids, &["ENOENT"]);
        if let Some(e) = failure {
            return Err(e);
        }
        cleanup?;
        let ms = end.duration_since(start).as_secs_f64() * 1e3;
        Ok(vec![ms, retries as f64, events as f64])
    }

    fn finish(&mut self) -> R<()> {
        Ok(())
    }
}
