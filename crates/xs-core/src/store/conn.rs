//! The store's view of a connection: who it acts for, its watches, transactions and queued
//! events. (The byte-level protocol state of a connection lives elsewhere; the store only
//! needs identity and per-connection state.)

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use super::access::Caller;
use super::txn::Transaction;
use super::watch::EventQueue;
use crate::domid::DomId;

#[derive(Debug)]
pub(crate) struct Conn {
    /// Who the connection acts for (kept current when the domain's target changes).
    pub(crate) caller: Caller,
    /// The domain was released: the connection is no longer served.
    pub(crate) dead: bool,
    pub(crate) watches: Vec<u32>,
    pub(crate) transactions: BTreeMap<u32, Transaction>,
    pub(crate) next_tx_id: u32,
    pub(crate) events: EventQueue,
    /// Watches that owe a catch-up event (see the queue policy in `watch.rs`).
    pub(crate) missed: VecDeque<u32>,
    /// Listed in the store's pending notifications.
    pub(crate) notify: bool,
    /// Listed among the connections waiting for a protected transaction to end.
    pub(crate) waiting: bool,
    /// Commits that failed with `EAGAIN` in a row (see `txn::fairness`).
    pub(crate) failed_commits: u8,
    /// Messages (replies and watch events) waiting in the connection's output, not yet
    /// wholly sent, and their bytes; charged to an unprivileged domain (its `outstanding`
    /// count and its memory) until sent or dropped. See `Store::output_queued`.
    pub(crate) unsent: Unsent,
}

/// Output a connection holds unsent.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) struct Unsent {
    pub(crate) msgs: u64,
    pub(crate) bytes: u64,
}

impl Conn {
    pub(crate) fn new(caller: Caller) -> Conn {
        Conn {
            caller,
            dead: false,
            watches: Vec::new(),
            transactions: BTreeMap::new(),
            next_tx_id: 1,
            events: EventQueue::default(),
            missed: VecDeque::new(),
            notify: false,
            waiting: false,
            failed_commits: 0,
            unsent: Unsent::default(),
        }
    }

    pub(crate) fn domid(&self) -> DomId {
        self.caller.domid
    }

    /// A transaction id not in use on this connection (never 0).
    pub(crate) fn allocate_tx_id(&mut self) -> u32 {
        loop {
            let id = self.next_tx_id;
            self.next_tx_id = self.next_tx_id.wrapping_add(1);
            if id != 0 && !self.transactions.contains_key(&id) {
                return id;
            }
        }
    }
}
