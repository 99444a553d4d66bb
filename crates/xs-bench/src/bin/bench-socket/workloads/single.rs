//! test-xenstore's single operations, one request (or transaction) at a time.

use std::time::{Duration, Instant};

use xs_bench::client::{Client, MsgType};

use super::requests::{batch, req_write};
use super::{Bench, latencies};
use crate::config::{Config, R, Target};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum SingleOp {
    Read1,
    Read2000,
    Write1,
    Write2000,
    Directory10,
    GetPerms,
    RmNode,
    RmDir10,
    TxEmpty,
    TxWrite,
    TxRmw,
}

impl SingleOp {
    pub(crate) const ALL: [SingleOp; 11] = [
        SingleOp::Read1,
        SingleOp::Read2000,
        SingleOp::Write1,
        SingleOp::Write2000,
        SingleOp::Directory10,
        SingleOp::GetPerms,
        SingleOp::RmNode,
        SingleOp::RmDir10,
        SingleOp::TxEmpty,
        SingleOp::TxWrite,
        SingleOp::TxRmw,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            SingleOp::Read1 => "read_1",
            SingleOp::Read2000 => "read_2000",
            SingleOp::Write1 => "write_1",
            SingleOp::Write2000 => "write_2000",
            SingleOp::Directory10 => "directory_10",
            SingleOp::GetPerms => "get_perms",
            SingleOp::RmNode => "rm_node",
            SingleOp::RmDir10 => "rm_dir_10",
            SingleOp::TxEmpty => "tx_empty",
            SingleOp::TxWrite => "tx_write",
            SingleOp::TxRmw => "tx_rmw",
        }
    }
}

/// test-xenstore's ten nodes `a`..`j` below its directory.
const CHILDREN: &[u8; 10] = b"abcdefghij";

pub(super) struct Single {
    c: Client,
    op: SingleOp,
    /// This workload's directory.
    dir: Vec<u8>,
    /// The node read, written or removed.
    node: Vec<u8>,
    value: Vec<u8>,
    /// Requests creating `dir`'s ten children.
    children: Vec<(MsgType, Vec<u8>)>,
}

impl Single {
    pub(super) fn setup(cfg: &Config, t: &Target, op: SingleOp) -> R<Box<dyn Bench>> {
        let mut c = t.connect(cfg)?;
        let dir = format!("{}/{}", cfg.root, op.name()).into_bytes();
        let mut node = dir.clone();
        node.extend_from_slice(b"/a");
        c.rm_if_present(0, &dir)?;
        let value = match op {
            SingleOp::Read2000 | SingleOp::Write2000 => vec![b'a'; 2000],
            _ => vec![b'a'],
        };
        let children: Vec<(MsgType, Vec<u8>)> = CHILDREN
            .iter()
            .map(|&ch| {
                let mut p = dir.clone();
                p.extend_from_slice(&[b'/', ch]);
                req_write(&p, &[ch])
            })
            .collect();
        match op {
            SingleOp::Read1 | SingleOp::Read2000 | SingleOp::GetPerms | SingleOp::TxRmw => {
                c.write(0, &node, &value)?;
            }
            SingleOp::Directory10 => {
                batch(&mut c, 16, &children, &[])?;
            }
            _ => c.mkdir(0, &dir)?,
        }
        Ok(Box::new(Single {
            c,
            op,
            dir,
            node,
            value,
            children,
        }))
    }

    fn sample(&mut self) -> R<Duration> {
        let c = &mut self.c;
        let (node, value) = (&self.node[..], &self.value[..]);
        Ok(match self.op {
            SingleOp::Read1 | SingleOp::Read2000 => {
                let t = Instant::now();
                c.read(0, node)?;
                t.elapsed()
            }
            SingleOp::Write1 | SingleOp::Write2000 => {
                let t = Instant::now();
                c.write(0, node, value)?;
                t.elapsed()
            }
            SingleOp::Directory10 => {
                let t = Instant::now();
                c.directory(0, &self.dir)?;
                t.elapsed()
            }
            SingleOp::GetPerms => {
                let t = Instant::now();
                c.get_perms(0, node)?;
                t.elapsed()
            }
            SingleOp::RmNode => {
                c.write(0, node, value)?;
                let t = Instant::now();
                c.rm(0, node)?;
                t.elapsed()
            }
            SingleOp::RmDir10 => {
                batch(c, 16, &self.children, &[])?;
                let t = Instant::now();
                c.rm(0, &self.dir)?;
                t.elapsed()
            }
            SingleOp::TxEmpty => {
                let t = Instant::now();
                let tx = c.tx_start()?;
                c.tx_end(tx, true)?;
                t.elapsed()
            }
            SingleOp::TxWrite => {
                let t = Instant::now();
                let tx = c.tx_start()?;
                c.write(tx, node, value)?;
                c.tx_end(tx, true)?;
                t.elapsed()
            }
            SingleOp::TxRmw => {
                // test-xenstore's `ta rmw`: its init writes "a" first (not timed).
                c.write(0, node, b"a")?;
                let t = Instant::now();
                let tx = c.tx_start()?;
                c.read(tx, node)?;
                c.write(tx, node, b"b")?;
                c.read(tx, node)?;
                c.read(0, node)?;
                c.tx_end(tx, true)?;
                t.elapsed()
            }
        })
    }
}

impl Bench for Single {
    fn run(&mut self, budget: Duration) -> R<Vec<f64>> {
        latencies(budget, || self.sample())
    }

    fn finish(&mut self) -> R<()> {
        self.c.rm_if_present(0, &self.dir)
    }
}
