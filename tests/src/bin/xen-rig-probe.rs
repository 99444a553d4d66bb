//! `xen-rig-probe`: a small XenStore client that runs inside dom0 of the Xen-in-QEMU rig
//! (`cargo xtask xen-rig`, `tests/xen-rig/`), for what Xen's own clients cannot measure.
//!
//! It speaks the wire protocol itself ([`xs_e2e::wire`]) over either way dom0 reaches its
//! XenStore: the daemon's Unix socket, or the kernel's xenbus device (`/dev/xen/xenbus`,
//! which forwards each message over dom0's ring). The path's file type decides.
//!
//! ```text
//! xen-rig-probe rtt PATH NODE N
//!     writes NODE once, then times N single READs of it and N single WRITEs of one byte,
//!     each one request and its reply, one at a time; prints
//!     `read_p50_us V`, `read_p90_us V`, `write_p50_us V`, `write_p90_us V`
//! xen-rig-probe wait-feature PATH COUNT SECS READY
//!     watches /local/domain (creating file READY once the watch is set, so a script can
//!     start guests only then) until COUNT domains have written a value to
//!     /local/domain/<id>/control/feature-poweroff (libxl creates it empty, the guest's
//!     kernel writes `1` once its xenbus is up); prints `seen <id> <epoch_us>` for each,
//!     the real-time clock in microseconds when the watch event arrived (bash's
//!     `$EPOCHREALTIME` without the dot is the same clock)
//! xen-rig-probe introduced PATH DOMID...
//!     asks IS_DOMAIN_INTRODUCED for each DOMID (the daemon's own view: what INTRODUCE made
//!     and RELEASE or the domain's death ended); prints `<domid> T` or `<domid> F` for each
//! xen-rig-probe get-quota PATH NAME
//!     asks GET_QUOTA for the global value of quota NAME (Xen 4.20's request); prints it
//! xen-rig-probe introduce PATH DOMID MFN PORT
//!     sends INTRODUCE (as a toolstack does for a new domain); prints `OK` or the error
//!     reply's name (`ERROR EINVAL`), and exits 0 either way
//! ```
//!
//! Every run has a deadline (`rtt`: 120 s; `wait-feature`: SECS): a daemon that never
//! answers, or a ring nobody serves, ends the probe with status 3 instead of a hang.
//! Status 1: a failed request; 2: bad arguments.

use std::collections::{BTreeSet, VecDeque};
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use xs_e2e::wire::{Msg, read_msg, split_strings, strings, ty};

/// How long `rtt` may take in all.
const RTT_DEADLINE: Duration = Duration::from_secs(120);

/// The connection: a socket or the xenbus device, both byte streams of whole messages.
trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

struct Conn {
    stream: Box<dyn Stream>,
    req_id: u32,
    /// Watch events that arrived while a reply was awaited.
    events: VecDeque<Msg>,
}

impl Conn {
    fn open(path: &str) -> Result<Conn, String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("{path}: {e}"))?;
        let stream: Box<dyn Stream> = if meta.file_type().is_socket() {
            Box::new(UnixStream::connect(path).map_err(|e| format!("connecting {path}: {e}"))?)
        } else {
            Box::new(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(|e| format!("opening {path}: {e}"))?,
            )
        };
        Ok(Conn {
            stream,
            req_id: 0,
            events: VecDeque::new(),
        })
    }

    /// One request and its reply's payload; an `ERROR` reply is `Err(name)`.
    fn request(&mut self, kind: u32, payload: &[u8]) -> Result<Vec<u8>, String> {
        self.req_id = self.req_id.wrapping_add(1).max(1);
        let msg = Msg {
            ty: kind,
            req_id: self.req_id,
            tx_id: 0,
            payload: payload.to_vec(),
        };
        // One write() per message: the xenbus device takes a message in one piece best.
        self.stream
            .write_all(&msg.encode())
            .map_err(|e| format!("sending request type {kind}: {e}"))?;
        loop {
            let reply = self.recv()?;
            if reply.ty == ty::WATCH_EVENT {
                self.events.push_back(reply);
                continue;
            }
            if reply.req_id != self.req_id {
                return Err(format!("reply to another request: {reply:?}"));
            }
            if reply.ty == ty::ERROR {
                return Err(split_strings(&reply.payload).join(" "));
            }
            return Ok(reply.payload);
        }
    }

    fn recv(&mut self) -> Result<Msg, String> {
        read_msg(&mut self.stream).map_err(|e| format!("receiving: {e}"))
    }

    /// The next watch event's path.
    fn next_event(&mut self) -> Result<String, String> {
        let msg = match self.events.pop_front() {
            Some(m) => m,
            None => loop {
                let m = self.recv()?;
                if m.ty == ty::WATCH_EVENT {
                    break m;
                }
            },
        };
        Ok(split_strings(&msg.payload)
            .into_iter()
            .next()
            .unwrap_or_default())
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match words.as_slice() {
        ["rtt", path, node, n] => match n.parse() {
            Ok(n) if n > 0 => {
                deadline(RTT_DEADLINE);
                rtt(path, node, n)
            }
            _ => return usage(),
        },
        ["wait-feature", path, count, secs, ready] => match (count.parse(), secs.parse()) {
            (Ok(count), Ok(secs)) => {
                deadline(Duration::from_secs(secs));
                wait_feature(path, count, ready)
            }
            _ => return usage(),
        },
        ["introduced", path, domids @ ..] if !domids.is_empty() => {
            match domids
                .iter()
                .map(|d| d.parse())
                .collect::<Result<Vec<u32>, _>>()
            {
                Ok(domids) => {
                    deadline(RTT_DEADLINE);
                    introduced(path, &domids)
                }
                Err(_) => return usage(),
            }
        }
        ["get-quota", path, name] => {
            deadline(RTT_DEADLINE);
            get_quota(path, name)
        }
        ["introduce", path, domid, mfn, port] => {
            deadline(RTT_DEADLINE);
            introduce(path, domid, mfn, port)
        }
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xen-rig-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: xen-rig-probe rtt PATH NODE N | wait-feature PATH COUNT SECS READY-FILE \
         | introduced PATH DOMID... | introduce PATH DOMID MFN PORT | get-quota PATH NAME"
    );
    ExitCode::from(2)
}

/// Ends the process with status 3 once `limit` has passed, whatever it is waiting for.
fn deadline(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("xen-rig-probe: no answer within {} s", limit.as_secs());
        let _ = io::stdout().flush();
        std::process::exit(3);
    });
}

fn rtt(path: &str, node: &str, n: usize) -> Result<(), String> {
    let mut conn = Conn::open(path)?;
    let mut write = strings(&[node.as_bytes()]);
    write.push(b'x');
    conn.request(ty::WRITE, &write)
        .map_err(|e| format!("WRITE {node}: {e}"))?;
    let read = strings(&[node.as_bytes()]);
    let mut times = |kind: u32, payload: &[u8]| -> Result<Vec<f64>, String> {
        let mut us = Vec::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            conn.request(kind, payload)
                .map_err(|e| format!("request type {kind} on {node}: {e}"))?;
            us.push(start.elapsed().as_secs_f64() * 1e6);
        }
        Ok(us)
    };
    let reads = times(ty::READ, &read)?;
    let writes = times(ty::WRITE, &write)?;
    for (name, mut us) in [("read", reads), ("write", writes)] {
        us.sort_by(f64::total_cmp);
        println!("{name}_p50_us {:.1}", percentile(&us, 50));
        println!("{name}_p90_us {:.1}", percentile(&us, 90));
    }
    Ok(())
}

fn introduced(path: &str, domids: &[u32]) -> Result<(), String> {
    let mut conn = Conn::open(path)?;
    for domid in domids {
        let reply = conn
            .request(
                ty::IS_DOMAIN_INTRODUCED,
                &strings(&[domid.to_string().as_bytes()]),
            )
            .map_err(|e| format!("IS_DOMAIN_INTRODUCED {domid}: {e}"))?;
        let answer = String::from_utf8_lossy(reply.strip_suffix(b"\0").unwrap_or(&reply));
        println!("{domid} {answer}");
    }
    Ok(())
}

fn get_quota(path: &str, name: &str) -> Result<(), String> {
    let mut conn = Conn::open(path)?;
    let reply = conn
        .request(ty::GET_QUOTA, &strings(&[name.as_bytes()]))
        .map_err(|e| format!("GET_QUOTA {name}: {e}"))?;
    println!(
        "{}",
        String::from_utf8_lossy(reply.strip_suffix(b"\0").unwrap_or(&reply))
    );
    Ok(())
}

fn introduce(path: &str, domid: &str, mfn: &str, port: &str) -> Result<(), String> {
    let mut conn = Conn::open(path)?;
    let payload = strings(&[domid.as_bytes(), mfn.as_bytes(), port.as_bytes()]);
    match conn.request(ty::INTRODUCE, &payload) {
        Ok(_) => println!("OK"),
        Err(e) if e.starts_with('E') && e.chars().all(|c| c.is_ascii_uppercase()) => {
            println!("ERROR {e}")
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// The `p`th percentile of sorted `values` (nearest rank).
fn percentile(values: &[f64], p: usize) -> f64 {
    let rank = (values.len() * p).div_ceil(100).max(1);
    values[rank - 1]
}

fn wait_feature(path: &str, count: usize, ready: &str) -> Result<(), String> {
    let mut conn = Conn::open(path)?;
    conn.request(ty::WATCH, &strings(&[b"/local/domain", b"xen-rig"]))
        .map_err(|e| format!("WATCH /local/domain: {e}"))?;
    std::fs::write(ready, b"").map_err(|e| format!("{ready}: {e}"))?;
    let mut seen = BTreeSet::new();
    while seen.len() < count {
        let event = conn.next_event()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let Some(domid) = feature_poweroff_domain(&event) else {
            continue;
        };
        if seen.contains(&domid) {
            continue;
        }
        // libxl makes the node, empty, for the guest to write; the event also fires when
        // the node goes away. Only the guest's value counts.
        let value = conn.request(ty::READ, &strings(&[event.as_bytes()]));
        if value.is_ok_and(|v| v.iter().any(|&b| b != 0)) {
            seen.insert(domid);
            println!("seen {domid} {now}");
            let _ = io::stdout().flush();
        }
    }
    Ok(())
}

/// The domain id of a path `/local/domain/<id>/control/feature-poweroff`.
fn feature_poweroff_domain(path: &str) -> Option<u32> {
    let rest = path.strip_prefix("/local/domain/")?;
    let (id, tail) = rest.split_once('/')?;
    (tail == "control/feature-poweroff")
        .then(|| id.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_feature_poweroff() {
        assert_eq!(
            feature_poweroff_domain("/local/domain/7/control/feature-poweroff"),
            Some(7)
        );
        assert_eq!(
            feature_poweroff_domain("/local/domain/7/control/feature-reboot"),
            None
        );
        assert_eq!(feature_poweroff_domain("/local/domain/7/control"), None);
        assert_eq!(
            feature_poweroff_domain("/local/domain/x/control/feature-poweroff"),
            None
        );
    }

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50), 5.0);
        assert_eq!(percentile(&v, 90), 9.0);
        assert_eq!(percentile(&[3.0], 50), 3.0);
    }
}
