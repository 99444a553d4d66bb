//! READs with 32 requests in flight on one connection.

use std::time::{Duration, Instant};

use xs_bench::client::{Client, ClientError, MsgType, push_strings};

use super::Bench;
use crate::config::{Config, R, Target};

pub(super) struct Inflight {
    c: Client,
    dir: Vec<u8>,
    request: Vec<u8>,
}

impl Inflight {
    pub(super) fn setup(cfg: &Config, t: &Target) -> R<Box<dyn Bench>> {
        let mut c = t.connect(cfg)?;
        let dir = format!("{}/read_32_inflight", cfg.root).into_bytes();
        let mut node = dir.clone();
        node.extend_from_slice(b"/a");
        c.rm_if_present(0, &dir)?;
        c.write(0, &node, b"a")?;
        let mut request = Vec::new();
        push_strings(&mut request, &[&node]);
        Ok(Box::new(Inflight { c, dir, request }))
    }
}

impl Bench for Inflight {
    fn run(&mut self, budget: Duration) -> R<Vec<f64>> {
        let start = Instant::now();
        let mut stop = false;
        let mut failure = None;
        let request = &self.request;
        let ops = self.c.pipeline(
            32,
            |i, payload| {
                // Look at the clock every 32 requests.
                if i % 32 == 0 && start.elapsed() >= budget {
                    stop = true;
                }
                if stop {
                    return None;
                }
                payload.extend_from_slice(request);
                Some((MsgType::Read, 0))
            },
            |_, reply| {
                if let Some(e) = reply.error()
                    && failure.is_none()
                {
                    failure = Some(ClientError::Xen(e));
                }
                Ok(())
            },
        )?;
        let elapsed = start.elapsed();
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(vec![ops as f64 / elapsed.as_secs_f64()])
    }

    fn finish(&mut self) -> R<()> {
        self.c.rm_if_present(0, &self.dir)
    }
}
