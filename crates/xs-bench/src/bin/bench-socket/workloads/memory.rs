//! Memory: the daemon's RSS before and after writing 1000 domains x 50 nodes, and how long
//! that population took.

use std::time::{Duration, Instant};

use xs_bench::client::{Client, ClientError, MsgType};
use xs_bench::daemon;
use xs_bench::host::Entry;

use super::Bench;
use super::requests::{batch, guest_requests, home_entries, req_path};
use crate::config::{Config, R, Target, other};

pub(crate) const MEM_DOMAINS: u32 = 1000;
pub(crate) const MEM_NODES: usize = 50;
const MEM_FIRST_DOMID: u32 = 1;

pub(super) struct Memory {
    c: Client,
    pid: u32,
}

impl Memory {
    pub(super) fn setup(cfg: &Config, t: &Target) -> R<Box<dyn Bench>> {
        let Some((pid, _)) = t.pid else {
            return Err(other(
                "no process known for this socket (give --pid NAME=PID or write PATH.pid)",
            ));
        };
        Ok(Box::new(Memory {
            c: t.connect(cfg)?,
            pid,
        }))
    }

    fn rss(&self) -> R<f64> {
        daemon::memory_kb(self.pid)
            .map(|(rss, _)| rss as f64)
            .map_err(ClientError::Io)
    }
}

impl Bench for Memory {
    fn run(&mut self, _budget: Duration) -> R<Vec<f64>> {
        let entries: Vec<&Entry> = home_entries().into_iter().take(MEM_NODES).collect();
        let domids = MEM_FIRST_DOMID..MEM_FIRST_DOMID + MEM_DOMAINS;
        let mut reqs = Vec::new();
        for d in domids.clone() {
            reqs.push(req_path(
                MsgType::Rm,
                format!("/local/domain/{d}").as_bytes(),
            ));
        }
        batch(&mut self.c, 64, &reqs, &["ENOENT"])?;
        let removal = std::mem::take(&mut reqs);
        for d in domids {
            guest_requests(&entries, d, &mut reqs);
        }
        let before = self.rss()?;
        let t = Instant::now();
        batch(&mut self.c, 64, &reqs, &[])?;
        let populate = t.elapsed().as_secs_f64() * 1e3;
        let after = self.rss()?;
        batch(&mut self.c, 64, &removal, &["ENOENT"])?;
        Ok(vec![before, after, populate])
    }

    fn finish(&mut self) -> R<()> {
        Ok(())
    }
}
