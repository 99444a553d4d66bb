//! A guest of C xenstored, speaking through its ring page (reference runs only).
//!
//! C xenstored has no per-domain sockets: socket clients are dom0. To check what an
//! unprivileged domain sees against the reference anyway, this transport plays the guest's
//! side of the shared ring (`xenstore_domain_interface`, `xs_wire.h`): under the anchors'
//! LD_PRELOAD shim, `INTRODUCE` maps a private zeroed page in the daemon as the guest's ring,
//! and nobody else touches it. We find that page (the one mapping `INTRODUCE` added to
//! `/proc/<pid>/maps`), write requests into it and read replies from it through
//! `/proc/<pid>/mem` (root, or ptrace rights over the daemon), and make the daemon look at
//! the ring by sending dom0 requests on a socket: the shim's event channels never fire, but
//! C xenstored checks every domain ring on each pass of its main loop (and polls with a zero
//! timeout while a ring has work).
//!
//! Ring layout: `req[1024]` at 0, `rsp[1024]` at 1024, then `req_cons`, `req_prod`,
//! `rsp_cons`, `rsp_prod` (`u32` each) at 2048..2064. Indices are free-running.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::skip::Skip;
use crate::wire::{Client, Msg, Transport, Wire};

const RING_SIZE: u32 = 1024;
const REQ: u64 = 0;
const RSP: u64 = 1024;
const REQ_CONS: u64 = 2048;
const REQ_PROD: u64 = 2052;
const RSP_CONS: u64 = 2056;
const RSP_PROD: u64 = 2060;

/// A domain's connection to C xenstored through its ring page.
#[derive(Debug)]
pub struct RingGuest {
    mem: File,
    page: u64,
    /// dom0 socket connection whose requests wake the daemon's main loop.
    poke: Wire,
    req_id: u32,
    events: VecDeque<Msg>,
}

/// Address ranges `[start, end)` and permissions of the anonymous mappings of `pid`.
fn anon_maps(pid: u32) -> io::Result<Vec<(u64, u64, String, String)>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some((a, b)) = f.first().and_then(|r| r.split_once('-')) else {
            continue;
        };
        let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        let perms = f.get(1).copied().unwrap_or_default().to_owned();
        let name = f.get(5).copied().unwrap_or_default().to_owned();
        out.push((a, b, perms, name));
    }
    Ok(out)
}

impl RingGuest {
    /// Introduces `domid` to the C xenstored `pid` serving `socket` (as dom0) and attaches to
    /// the ring page that introduction mapped.
    pub fn introduce(pid: u32, socket: &Path, domid: u32) -> Result<RingGuest, Skip> {
        let mut dom0 = Wire::connect(socket).map_err(|e| Skip(format!("connect: {e}")))?;
        let before = anon_maps(pid).map_err(|e| Skip(format!("/proc/{pid}/maps: {e}")))?;
        dom0.introduce(domid)
            .unwrap_or_else(|e| panic!("INTRODUCE {domid} as dom0 failed: {e}"));
        let after = anon_maps(pid).map_err(|e| Skip(format!("/proc/{pid}/maps: {e}")))?;
        let covered = |p: u64| before.iter().any(|&(a, b, _, _)| a <= p && p < b);
        let mut new_pages = Vec::new();
        for (a, b, perms, name) in &after {
            let mut p = *a;
            while p < *b {
                if !covered(p) {
                    new_pages.push((p, perms.clone(), name.clone()));
                }
                p += 4096;
            }
        }
        let page = match new_pages.as_slice() {
            [(p, perms, name)] if perms == "rw-p" && name.is_empty() => *p,
            _ => {
                return Err(Skip(format!(
                    "cannot tell domain {domid}'s ring page among the mappings INTRODUCE \
                     added to C xenstored: {new_pages:x?}"
                )));
            }
        };
        let mem = OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .map_err(|e| {
                Skip(format!(
                    "cannot open /proc/{pid}/mem for writing ({e}): playing a guest of C \
                     xenstored needs root or ptrace rights over it"
                ))
            })?;
        Ok(RingGuest {
            mem,
            page,
            poke: dom0,
            req_id: 0,
            events: VecDeque::new(),
        })
    }

    fn get(&self, off: u64) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.mem.read_exact_at(&mut b, self.page + off)?;
        Ok(u32::from_le_bytes(b))
    }

    fn set(&self, off: u64, v: u32) -> io::Result<()> {
        self.mem.write_all_at(&v.to_le_bytes(), self.page + off)
    }

    /// Wakes the daemon's main loop with a dom0 round trip.
    fn poke(&mut self, deadline: Instant, stalls: &mut u32) -> io::Result<()> {
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "C xenstored did not serve the ring within 10 s",
            ));
        }
        *stalls += 1;
        if *stalls > 100 {
            // Rate limiting (wrl) may hold an unprivileged domain back for a while.
            std::thread::sleep(Duration::from_millis(1));
        }
        // Not `Client::read`, which panics if the daemon is gone: a dead daemon is an
        // error the caller reports.
        self.poke.send_msg(&Msg {
            ty: crate::wire::ty::READ,
            req_id: 0,
            tx_id: 0,
            payload: b"/\0".to_vec(),
        })?;
        while self.poke.recv_msg()?.ty == crate::wire::ty::WATCH_EVENT {}
        Ok(())
    }

    fn read_rsp(&mut self, out: &mut [u8], deadline: Instant) -> io::Result<()> {
        let mut done = 0;
        let mut stalls = 0;
        while done < out.len() {
            let cons = self.get(RSP_CONS)?;
            let prod = self.get(RSP_PROD)?;
            let avail = prod.wrapping_sub(cons);
            if avail > RING_SIZE {
                return Err(io::Error::other(format!("bad rsp indices {cons}/{prod}")));
            }
            if avail == 0 {
                self.poke(deadline, &mut stalls)?;
                continue;
            }
            let idx = cons % RING_SIZE;
            let n = (avail as usize)
                .min((RING_SIZE - idx) as usize)
                .min(out.len() - done);
            self.mem
                .read_exact_at(&mut out[done..done + n], self.page + RSP + u64::from(idx))?;
            done += n;
            self.set(RSP_CONS, cons.wrapping_add(n as u32))?;
        }
        Ok(())
    }
}

impl Transport for RingGuest {
    fn send_msg(&mut self, msg: &Msg) -> io::Result<()> {
        let bytes = msg.encode();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut off = 0;
        let mut stalls = 0;
        while off < bytes.len() {
            let cons = self.get(REQ_CONS)?;
            let prod = self.get(REQ_PROD)?;
            let used = prod.wrapping_sub(cons);
            if used > RING_SIZE {
                return Err(io::Error::other(format!("bad req indices {cons}/{prod}")));
            }
            if used == RING_SIZE {
                self.poke(deadline, &mut stalls)?;
                continue;
            }
            let idx = prod % RING_SIZE;
            let n = ((RING_SIZE - used) as usize)
                .min((RING_SIZE - idx) as usize)
                .min(bytes.len() - off);
            self.mem
                .write_all_at(&bytes[off..off + n], self.page + REQ + u64::from(idx))?;
            off += n;
            self.set(REQ_PROD, prod.wrapping_add(n as u32))?;
        }
        let mut stalls = 0;
        self.poke(deadline, &mut stalls)
    }

    fn recv_msg(&mut self) -> io::Result<Msg> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut h = [0u8; 16];
        self.read_rsp(&mut h, deadline)?;
        let (ty, req_id, tx_id, len) = crate::wire::decode_header(&h);
        if len as usize > crate::wire::PAYLOAD_MAX {
            return Err(io::Error::other(format!("reply of {len} bytes")));
        }
        let mut payload = vec![0u8; len as usize];
        self.read_rsp(&mut payload, deadline)?;
        Ok(Msg {
            ty,
            req_id,
            tx_id,
            payload,
        })
    }
}

impl Client for RingGuest {
    fn events(&mut self) -> &mut VecDeque<Msg> {
        &mut self.events
    }

    fn next_req_id(&mut self) -> u32 {
        self.req_id = self.req_id.wrapping_add(1);
        self.req_id
    }
}
