//! The store's whole state as Xen's migration stream, both ways: what live update writes
//! before it execs the new daemon, and reads back after (`docs/designs/xenstore-migration.md`
//! in Xen's tree, `tools/xenstored/xenstore_state.h` for C xenstored's layout).
//!
//! [`save`] writes a [`Store`] and its connections (as the program's connection layer knows
//! them: [`Connection`]'s partly read request and unsent output) to a [`Sink`], one record at
//! a time: nothing is copied but the record being written (a node, a watch, ...), so the
//! stub domain can save its state with little memory to spare. [`restore`] reads a stream
//! back into a new store and its connections, or rejects it with a [`StateError`] naming
//! the record and the offset: every byte of a stream is treated as hostile.
//!
//! # The stream
//!
//! Version 2: the header (`"xenstore"`, the version and the endianness flag, big-endian),
//! then the records, each padded to 8 bytes (its `len` counts the padding, as C writes it),
//! little-endian (the flag says so; big-endian streams are read too), in this order, which
//! is C xenstored's with the records it does not write in their places:
//!
//! 1. `GLOBAL_DATA`: the listening socket's and the event-channel device's descriptors, as
//!    the program gives them ([`Global`]).
//! 2. `GLOBAL_QUOTA_DATA`: the global quotas under C 4.22's names, `soft-memory` included.
//! 3. For each connection, `CONNECTION_DATA` (ring or socket, [`Transport`]; the request
//!    partly read, or held whole for a protected transaction; the output not yet sent, the
//!    rest of a reply partly sent first, as `out-resp-len` says; then the watch events still
//!    queued in the store, as `WATCH_EVENT` messages), followed by one `WATCH_DATA` (no depth
//!    limit) or `WATCH_DATA_EXTENDED` (with one) per watch, in registration order, and one
//!    `TRANSACTION_DATA` per open transaction.
//! 4. `NODE_DATA` for every node, parents before children (a depth-first walk in name
//!    order), then `@releaseDomain` and `@introduceDomain` (their permissions), as C does.
//! 5. `NODE_DATA` for the transactions' nodes (`conn-id` and `tx-id` set).
//! 6. `DOMAIN_DATA` for every domain the store knows, with its features and the quotas set
//!    for it.
//! 7. `END`.
//!
//! # What this store adds, and where
//!
//! The document leaves room for implementation-specific data, and this store's state does
//! not all fit its fields. What is added goes where other readers skip it:
//!
//! * `CONNECTION_DATA`: a `fields` flag (`0x8000`) announces, after `unique-id`, the
//!   connection's domain (a socket may act for a guest here, xs-host's per-domain sockets),
//!   whether it is dead (its domain released), notified or waiting for a protected
//!   transaction, its next transaction id, its run of failed commits (fairness, see
//!   [`crate::store::PROTECT_AFTER`]), how many of the trailing output messages were still
//!   queued in the store, the watches owed a catch-up event, and the bytes already sent of
//!   a message partly sent (so that the restored connection holds it whole), and, if any,
//!   the input the program received but did not feed the connection yet (its backlog,
//!   [`SavedConnection::input`]).
//! * `TRANSACTION_DATA`: 16 more bytes: doomed, protected, wrote (a change request succeeded
//!   in it; one that only read commits whatever changed), and the nodes and bytes its commit
//!   creates for the quota check.
//! * `NODE_DATA` of a transaction: `access` bit `0x0080` marks the other bits as this
//!   store's: what the transaction relied on of the path, whether it saw a particular node
//!   there, and for a node it changed, how (created, recreated, value or permissions set,
//!   firing watches at commit). A read-set entry is a record with `access` "read" and no
//!   permissions; a node of the overlay one with "written"; a deletion one with neither.
//! * `DOMAIN_DATA`: quota values of names beginning `xs-` (the document lets readers ignore
//!   unknown names): the introduction (event channel, ring frame), the target and whether
//!   `@releaseDomain` was fired for its shutdown.
//!
//! # Transactions
//!
//! Transactions here are snapshots with a read set and an overlay (see the module docs of
//! `txn`), not C's per-node copies. [`save`] first rebases every open transaction to the
//! present, as the store does when its history reaches a bound: one whose reads still hold
//! moves its snapshot to now, one whose reads changed is doomed (its commit fails). No
//! history is then needed: the snapshot of every live transaction is the tree being
//! written. What remains is each transaction's read set and overlay, written entry by entry,
//! and its doomed flag. Restored, a transaction commits or fails exactly as it would have in
//! the saved store after [`save`] (the property test `tests/state.rs` checks this on random
//! stores, request sequences and interleavings). Protected transactions stay protected, a
//! request held for one stays held (in `in-data`), and runs of failed commits are kept.
//!
//! Permission entries that no longer name their domain (it is gone, or the id was reused)
//! grant nothing and are not shown; [`save`] drops them from the store first, so that they
//! are neither written nor charged (C marks such entries "ignore", which is read the same
//! way: dropped). Generation counts start again on restore (as in C): a client paging
//! through a directory across the update (`DIRECTORY_PART`) starts again.
//!
//! # Compatibility with C xenstored
//!
//! * A stream C xenstored writes reads here: its nodes, permissions (stale ones ignored),
//!   connections with their pending input and output, watches, global and per-domain quotas
//!   (as this domain's own values, which C keeps per domain) and features. Ring connections
//!   introduce their domain (the ring's guest frame and the guest's port are not in the
//!   stream: [`crate::store::Introduction`] then holds zeros, and the program uses the
//!   transport's local port). C's `WATCH_DATA_EXTENDED` is unreadable by anyone: its writer
//!   puts the path where the depth belongs (it writes `sizeof(struct xs_state_watch)`
//!   bytes of the extended record) while `len` counts the extended size, and its reader
//!   expects the path at offset 10 where the document says 12. This reader follows the
//!   document.
//! * A stream written here reads into C xenstored when written with
//!   [`SaveOptions::omit_transactions`]: C's reader ignores `TRANSACTION_DATA` but takes every
//!   `NODE_DATA` for a live node, so a transaction's nodes would land in its tree. (C itself
//!   refuses to live-update with transactions open unless forced, and then drops them.)
//!   Watches with a depth are written as `WATCH_DATA_EXTENDED`, which C misreads (see above).
//!   Per-domain quotas here are only those set for the domain; C then uses its defaults.
//! * Not carried, by anyone: generation counts, quota peaks (`CONTROL quota`), the soft
//!   quota warnings already logged.
//!
//! # Examples
//!
//! ```
//! use xs_core::protocol::{Access, Limits};
//! use xs_core::state::{self, Global, SaveOptions};
//! use xs_core::{DomId, Store, StoreConfig};
//!
//! # let entropy = [0x243f_6a88_85a3_08d3, 0x1319_8a2e_0370_7344];
//! let mut store = Store::new(StoreConfig::new(entropy))?;
//! let dom0 = store.connect(DomId::DOM0)?;
//! store.write(dom0, 0, b"/vm/name", b"guest")?;
//! store.watch(dom0, b"/vm", b"token", None)?;
//! let tx = store.transaction_start(dom0)?;
//! store.write(dom0, tx, b"/vm/state", b"running")?;
//!
//! // Saved into a `Vec<u8>` (any `Sink` will do: a file, a memory region).
//! let mut stream = Vec::new();
//! state::save(&mut store, Global::default(), &[], SaveOptions::default(), &mut stream)
//!     .expect("a Vec takes any stream");
//!
//! // Restored (the program would rebuild its connections from `restored.connections`).
//! let restored = state::restore(StoreConfig::new(entropy), &stream, |_, _| {
//!     (Access::default(), Limits::default())
//! })?;
//! let mut copy = restored.store;
//! let conn = restored.connections[0].id;
//! let mut out = Vec::new();
//! copy.read(conn, 0, b"/vm/name", &mut out)?;
//! assert_eq!(out, b"guest");
//! assert_eq!(copy.pop_event(conn).map(|e| e.token.to_vec()), Some(b"token".to_vec()));
//! copy.transaction_end(conn, tx, true)?;
//! out.clear();
//! copy.read(conn, 0, b"/vm/state", &mut out)?;
//! assert_eq!(out, b"running");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod layout;
mod read;
mod write;

use alloc::vec::Vec;
use core::fmt;

pub use layout::RecordKind;
pub use read::restore;
pub use write::save;

use crate::domid::DomId;
use crate::protocol::Connection;
use crate::store::{ConnId, Store};

/// Where [`save`] writes the stream, a record at a time.
pub trait Sink {
    /// Why writing failed.
    type Error;

    /// Appends `bytes` to the stream.
    fn write(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;
}

impl Sink for Vec<u8> {
    type Error = core::convert::Infallible;

    fn write(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

/// The transport of a connection, as `CONNECTION_DATA` describes it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Transport {
    /// A domain's shared ring.
    Ring {
        /// The local port of the interdomain event channel bound to the domain's.
        port: u32,
        /// The domain's unique id (Xen's), if known.
        unique_id: Option<u64>,
    },
    /// A socket, by its file descriptor (kept open across the exec of live update); -1 for
    /// a connection without one (a program's in-process clients).
    Socket {
        /// The descriptor.
        fd: i32,
    },
}

/// A connection of the store, as [`save`] is told of it.
#[derive(Clone, Copy, Debug)]
pub struct SavedConnection<'a> {
    /// The store's connection.
    pub id: ConnId,
    /// Its transport.
    pub transport: Transport,
    /// Its protocol state (partly read request, unsent output), if it has one.
    pub protocol: Option<&'a Connection>,
    /// Bytes the program received for the connection after those `protocol` took, and did
    /// not feed it yet (a backlog kept while the connection took no input): they come back
    /// in [`RestoredConnection::input`], after the request being read.
    pub input: &'a [u8],
}

/// `GLOBAL_DATA`: descriptors of the daemon (only meaningful to the same process after an
/// exec).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Global {
    /// The socket accepting read-write connections, or -1.
    pub socket_fd: i32,
    /// The event channel device, or -1.
    pub evtchn_fd: i32,
}

impl Default for Global {
    fn default() -> Self {
        Global {
            socket_fd: -1,
            evtchn_fd: -1,
        }
    }
}

/// How [`save`] writes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SaveOptions {
    /// Leave the open transactions out (`TRANSACTION_DATA` and their nodes), for a stream
    /// C xenstored is to read: its reader would take their nodes for live ones. They are
    /// then lost (their commits fail with `ENOENT`), as C's own forced live update loses
    /// them.
    pub omit_transactions: bool,
}

/// What [`save`] wrote.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SaveStats {
    /// Records, `END` included.
    pub records: u64,
    /// Bytes, the header included.
    pub bytes: u64,
}

/// Why [`save`] failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SaveError<E> {
    /// The sink refused bytes.
    Sink(E),
    /// Something does not fit the stream's fields (the field named).
    TooLarge(&'static str),
}

impl<E: fmt::Display> fmt::Display for SaveError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SaveError::Sink(e) => write!(f, "writing the state failed: {e}"),
            SaveError::TooLarge(what) => write!(f, "state does not fit the stream: {what}"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for SaveError<E> {}

/// Why a stream was rejected: what, in which record (if past the header), at which offset
/// (of the record's start).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct StateError {
    /// Offset in the stream of the record (or header) at fault.
    pub offset: usize,
    /// The record's type, if known.
    pub record: Option<RecordKind>,
    /// What is wrong.
    pub what: &'static str,
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.record {
            Some(r) => write!(
                f,
                "state stream: {} ({r} record at offset {})",
                self.what, self.offset
            ),
            None => write!(f, "state stream: {} (at offset {})", self.what, self.offset),
        }
    }
}

impl core::error::Error for StateError {}

/// A store restored by [`restore`], with its connections.
#[derive(Debug)]
pub struct Restored {
    /// The store.
    pub store: Store,
    /// `GLOBAL_DATA`, if the stream has it.
    pub global: Option<Global>,
    /// The connections, in stream order.
    pub connections: Vec<RestoredConnection>,
    /// The stream's version.
    pub version: u32,
}

/// A connection restored by [`restore`].
#[derive(Debug)]
pub struct RestoredConnection {
    /// Its `conn-id` in the stream.
    pub stream_id: u32,
    /// The store's connection.
    pub id: ConnId,
    /// The domain it acts for.
    pub domid: DomId,
    /// Its transport.
    pub transport: Transport,
    /// Its protocol state: the request it was reading, the output it had not sent.
    pub connection: Connection,
    /// Input to feed to [`Connection::receive`] before any new input: requests read but not
    /// yet answered that the connection could not take back as its own state (C
    /// xenstored's delayed requests: several in one stream), then the backlog saved with
    /// the connection ([`SavedConnection::input`]).
    pub input: Vec<u8>,
}

impl RestoredConnection {
    /// The connection as [`save`] takes it: to save a restored store again (a check that
    /// the stream round-trips, or a program that saves before serving).
    pub fn as_saved(&self) -> SavedConnection<'_> {
        SavedConnection {
            id: self.id,
            transport: self.transport,
            protocol: Some(&self.connection),
            input: &self.input,
        }
    }
}
