//! Scenario tests: the behaviours the issue and Xen's documents name, one test each.

mod basic;
mod domains;
mod permissions;
mod quotas;
mod transactions;
mod watches;

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::perms::Access;
use crate::quota::{QuotaKind, QuotaName};

fn p(s: &str) -> Perm {
    Perm::parse(s.as_bytes()).unwrap()
}

fn perms(list: &[&str]) -> Vec<Perm> {
    list.iter().map(|s| p(s)).collect()
}

struct Host {
    store: Store,
    dom0: ConnId,
}

impl Host {
    fn new() -> Host {
        Host::with(StoreConfig::new([1, 2]))
    }

    fn with(config: StoreConfig) -> Host {
        let mut store = Store::new(config).unwrap();
        let dom0 = store.connect(DomId::DOM0).unwrap();
        Host { store, dom0 }
    }

    /// Introduces `domid` and returns a connection acting for it.
    fn guest(&mut self, domid: u16) -> ConnId {
        let intro = Introduction {
            gfn: 0x1000,
            evtchn: 3,
        };
        assert_eq!(
            self.store.introduce(self.dom0, DomId(domid), intro),
            Ok(Introduced::New)
        );
        self.store.connect(DomId(domid)).unwrap()
    }

    fn s(&mut self, conn: ConnId) -> Session<'_> {
        self.store.session(conn)
    }

    fn d0(&mut self) -> Session<'_> {
        let c = self.dom0;
        self.store.session(c)
    }

    fn events(&mut self, conn: ConnId) -> Vec<(String, String)> {
        self.store
            .session(conn)
            .drain_events()
            .into_iter()
            .map(|(p, t)| (String::from_utf8(p).unwrap(), String::from_utf8(t).unwrap()))
            .collect()
    }

    fn checked(&self) {
        self.store.check().unwrap();
    }
}

fn ev(path: &str, token: &str) -> (String, String) {
    (path.into(), token.into())
}

fn names(list: Vec<Vec<u8>>) -> Vec<String> {
    list.into_iter()
        .map(|n| String::from_utf8(n).unwrap())
        .collect()
}
