//! Removal of a guest's subtree: RM of a 64-node `/local/domain/<d>`.

use std::time::{Duration, Instant};

use xs_bench::client::{Client, MsgType};

use super::requests::{batch, guest_requests, home_entries};
use super::{Bench, latencies};
use crate::config::{Config, R, Target};

/// The guest whose home is built and removed (exists for the shim; never introduced).
pub(super) const RM_GUEST_DOMID: u32 = 30001;

pub(super) struct RmGuest {
    c: Client,
    home: Vec<u8>,
    build: Vec<(MsgType, Vec<u8>)>,
}

impl RmGuest {
    pub(super) fn setup(cfg: &Config, t: &Target) -> R<Box<dyn Bench>> {
        let mut c = t.connect(cfg)?;
        let home = format!("/local/domain/{RM_GUEST_DOMID}").into_bytes();
        c.rm_if_present(0, &home)?;
        let mut build = Vec::new();
        guest_requests(&home_entries(), RM_GUEST_DOMID, &mut build);
        Ok(Box::new(RmGuest { c, home, build }))
    }
}

impl Bench for RmGuest {
    fn run(&mut self, budget: Duration) -> R<Vec<f64>> {
        latencies(budget, || {
            batch(&mut self.c, 32, &self.build, &[])?;
            let t = Instant::now();
            self.c.rm(0, &self.home)?;
            Ok(t.elapsed())
        })
    }

    fn finish(&mut self) -> R<()> {
        self.c.rm_if_present(0, &self.home)
    }
}
