//! Concurrent clients: 1 or 4 connections (threads), one request in flight each.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use xs_bench::client::Client;

use super::Bench;
use crate::config::{Config, R, Target, other};

pub(super) struct Clients {
    clients: Vec<Client>,
    nodes: Vec<Vec<u8>>,
    dir: Vec<u8>,
    write: bool,
}

impl Clients {
    pub(super) fn setup(cfg: &Config, t: &Target, n: usize, write: bool) -> R<Box<dyn Bench>> {
        let dir = format!(
            "{}/{}_{n}",
            cfg.root,
            if write { "writes" } else { "reads" }
        )
        .into_bytes();
        let mut clients = Vec::with_capacity(n);
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let mut c = t.connect(cfg)?;
            if i == 0 {
                c.rm_if_present(0, &dir)?;
            }
            let mut node = dir.clone();
            node.extend_from_slice(format!("/c{i}").as_bytes());
            c.write(0, &node, b"1")?;
            clients.push(c);
            nodes.push(node);
        }
        Ok(Box::new(Clients {
            clients,
            nodes,
            dir,
            write,
        }))
    }
}

impl Bench for Clients {
    fn run(&mut self, budget: Duration) -> R<Vec<f64>> {
        let write = self.write;
        let barrier = Barrier::new(self.clients.len());
        let results: Vec<R<f64>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .clients
                .iter_mut()
                .zip(&self.nodes)
                .map(|(c, node)| {
                    let barrier = &barrier;
                    s.spawn(move || -> R<f64> {
                        barrier.wait();
                        let start = Instant::now();
                        let mut ops = 0u64;
                        while ops < 8 || start.elapsed() < budget {
                            if write {
                                c.write(0, node, b"1")?;
                            } else {
                                c.read(0, node)?;
                            }
                            ops += 1;
                        }
                        Ok(ops as f64 / start.elapsed().as_secs_f64())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(other("client thread panicked")))
                })
                .collect()
        });
        let mut total = 0.0;
        for r in results {
            total += r?;
        }
        Ok(vec![total])
    }

    fn finish(&mut self) -> R<()> {
        match self.clients.first_mut() {
            Some(c) => c.rm_if_present(0, &self.dir),
            None => Ok(()),
        }
    }
}
