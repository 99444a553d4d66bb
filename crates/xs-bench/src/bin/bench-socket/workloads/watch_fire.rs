//! Watch fire latency: from a WRITE on one connection to its WATCH_EVENT on another.

use std::time::{Duration, Instant};

use xs_bench::client::{self, Client, MsgType, push_write};

use super::{Bench, latencies};
use crate::config::{Config, R, Target};

pub(super) struct WatchFire {
    writer: Client,
    watcher: Client,
    dir: Vec<u8>,
    node: Vec<u8>,
    n: u64,
}

impl WatchFire {
    pub(super) fn setup(cfg: &Config, t: &Target) -> R<Box<dyn Bench>> {
        let mut writer = t.connect(cfg)?;
        let mut watcher = t.connect(cfg)?;
        let dir = format!("{}/watch_fire", cfg.root).into_bytes();
        let mut node = dir.clone();
        node.extend_from_slice(b"/node");
        writer.rm_if_present(0, &dir)?;
        writer.write(0, &node, b"0")?;
        watcher.watch(&node, b"bench")?;
        // The initial event every WATCH fires.
        watcher.next_event()?;
        Ok(Box::new(WatchFire {
            writer,
            watcher,
            dir,
            node,
            n: 0,
        }))
    }
}

impl Bench for WatchFire {
    fn run(&mut self, budget: Duration) -> R<Vec<f64>> {
        let mut value = Vec::with_capacity(24);
        latencies(budget, || {
            self.n += 1;
            value.clear();
            value.extend_from_slice(self.n.to_string().as_bytes());
            let mut payload = Vec::with_capacity(64);
            push_write(&mut payload, &self.node, &value);
            let t = Instant::now();
            let req = self.writer.queue(
                MsgType::Write,
                0,
                client::Payload {
                    strings: &[],
                    tail: &payload,
                },
            )?;
            self.writer.flush()?;
            loop {
                let ev = self.watcher.next_event()?;
                if ev.path == self.node {
                    break;
                }
            }
            let d = t.elapsed();
            self.writer.recv_reply(req)?.ok()?;
            Ok(d)
        })
    }

    fn finish(&mut self) -> R<()> {
        self.watcher.unwatch(&self.node, b"bench")?;
        self.writer.rm_if_present(0, &self.dir)
    }
}
