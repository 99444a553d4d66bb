//! The record layout of `docs/designs/xenstore-migration.md` (Xen's
//! `tools/xenstored/xenstore_state.h`), and the few fields this store adds where the
//! document leaves room (see the module docs of `state`).

use core::fmt;

/// `"xenstore"`, the stream's identification.
pub(crate) const IDENT: &[u8; 8] = b"xenstore";
/// The version written: 2 (`WATCH_DATA_EXTENDED`, `DOMAIN_DATA`'s `features`).
pub(crate) const VERSION: u32 = 2;
/// Header flag bit 0: the records are big-endian.
pub(crate) const FLAG_BIG_ENDIAN: u32 = 1;
/// Bytes of the stream header.
pub(crate) const HEADER_LEN: usize = 16;
/// Bytes of a record header (`type`, `len`).
pub(crate) const RECORD_HEADER_LEN: usize = 8;

/// A record type.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RecordKind {
    /// `END` (0).
    End,
    /// `GLOBAL_DATA` (1).
    Global,
    /// `CONNECTION_DATA` (2).
    Connection,
    /// `WATCH_DATA` (3).
    Watch,
    /// `TRANSACTION_DATA` (4).
    Transaction,
    /// `NODE_DATA` (5).
    Node,
    /// `GLOBAL_QUOTA_DATA` (6).
    GlobalQuota,
    /// `DOMAIN_DATA` (7).
    Domain,
    /// `WATCH_DATA_EXTENDED` (8, version 2).
    WatchExtended,
}

impl RecordKind {
    pub(crate) const fn code(self) -> u32 {
        match self {
            RecordKind::End => 0,
            RecordKind::Global => 1,
            RecordKind::Connection => 2,
            RecordKind::Watch => 3,
            RecordKind::Transaction => 4,
            RecordKind::Node => 5,
            RecordKind::GlobalQuota => 6,
            RecordKind::Domain => 7,
            RecordKind::WatchExtended => 8,
        }
    }

    pub(crate) fn from_code(code: u32) -> Option<RecordKind> {
        Some(match code {
            0 => RecordKind::End,
            1 => RecordKind::Global,
            2 => RecordKind::Connection,
            3 => RecordKind::Watch,
            4 => RecordKind::Transaction,
            5 => RecordKind::Node,
            6 => RecordKind::GlobalQuota,
            7 => RecordKind::Domain,
            8 => RecordKind::WatchExtended,
            _ => return None,
        })
    }

    /// The document's name of the record type.
    pub const fn name(self) -> &'static str {
        match self {
            RecordKind::End => "END",
            RecordKind::Global => "GLOBAL_DATA",
            RecordKind::Connection => "CONNECTION_DATA",
            RecordKind::Watch => "WATCH_DATA",
            RecordKind::Transaction => "TRANSACTION_DATA",
            RecordKind::Node => "NODE_DATA",
            RecordKind::GlobalQuota => "GLOBAL_QUOTA_DATA",
            RecordKind::Domain => "DOMAIN_DATA",
            RecordKind::WatchExtended => "WATCH_DATA_EXTENDED",
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ----- CONNECTION_DATA -----------------------------------------------------------------------

/// `conn-type`: a shared ring.
pub(crate) const CONN_RING: u16 = 0;
/// `conn-type`: a socket.
pub(crate) const CONN_SOCKET: u16 = 1;
/// `fields`: `unique-id` present.
pub(crate) const FIELD_UNIQUE_ID: u16 = 0x0001;
/// `fields`, this store's: the connection's own state follows (see the module docs). Other
/// readers ignore what they do not know (C xenstored reads only `unique-id`, and skips the
/// record by its length).
pub(crate) const FIELD_XS: u16 = 0x8000;
/// Bytes of `CONNECTION_DATA` before `data`.
pub(crate) const CONN_FIXED: usize = 24;
/// `tdomid` when the domain has no target (`DOMID_INVALID`).
pub(crate) const DOMID_INVALID: u16 = 0x7ff4;

/// Connection flags of the `FIELD_XS` part.
pub(crate) const CONN_DEAD: u16 = 0x0001;
pub(crate) const CONN_NOTIFY: u16 = 0x0002;
pub(crate) const CONN_WAITING: u16 = 0x0004;

// ----- WATCH_DATA ----------------------------------------------------------------------------

/// `depth` for no limit.
pub(crate) const DEPTH_UNLIMITED: u16 = 0xffff;

// ----- TRANSACTION_DATA ----------------------------------------------------------------------

/// Bytes of `TRANSACTION_DATA` as the document defines it.
pub(crate) const TX_FIXED: usize = 8;
/// Bytes with this store's fields (flags, created nodes and bytes).
pub(crate) const TX_XS: usize = 24;
pub(crate) const TX_DOOMED: u32 = 0x0001;
pub(crate) const TX_PROTECTED: u32 = 0x0002;
/// A change request succeeded in it (else it only read, and commits whatever changed).
pub(crate) const TX_WROTE: u32 = 0x0004;

// ----- NODE_DATA -----------------------------------------------------------------------------

/// Permission specifier `flags`: a stale entry, to be ignored.
pub(crate) const PERM_IGNORE: u8 = 0x01;

/// `access` of a transaction's node: read.
pub(crate) const TA_READ: u16 = 0x0001;
/// `access` of a transaction's node: written.
pub(crate) const TA_WRITTEN: u16 = 0x0002;
/// `access`, this store's: the other bits below are this store's (see the module docs).
pub(crate) const TA_XS: u16 = 0x0080;
/// The change fires watches at commit.
pub(crate) const TA_EVENT: u16 = 0x0004;
/// The origin of an overlay node: 2 bits.
pub(crate) const TA_ORIGIN_SHIFT: u16 = 3;
pub(crate) const TA_ORIGIN_MASK: u16 = 0x0018;
/// What was relied on (the store's `Aspects` bits, 5 of them).
pub(crate) const TA_ASPECTS_SHIFT: u16 = 8;
pub(crate) const TA_ASPECTS_MASK: u16 = 0x1f00;
/// The entry saw a particular live node at the path.
pub(crate) const TA_LIVE: u16 = 0x2000;
/// The transaction set the node's value.
pub(crate) const TA_VALUE_SET: u16 = 0x4000;
/// The transaction set the node's permissions.
pub(crate) const TA_PERMS_SET: u16 = 0x8000;

// ----- DOMAIN_DATA and GLOBAL_QUOTA_DATA -----------------------------------------------------

/// This store's per-domain values, written as quota values of implementation-specific names
/// (which the document lets other readers ignore).
pub(crate) const Q_EVTCHN: &[u8] = b"xs-introduced-evtchn";
pub(crate) const Q_GFN_LO: &[u8] = b"xs-introduced-gfn-lo";
pub(crate) const Q_GFN_HI: &[u8] = b"xs-introduced-gfn-hi";
pub(crate) const Q_TARGET: &[u8] = b"xs-target";
pub(crate) const Q_FLAGS: &[u8] = b"xs-flags";
/// `xs-flags`: the record carries this store's values (so what they leave out is unset).
pub(crate) const DOM_XS: u32 = 0x0001;
/// `xs-flags`: `@releaseDomain` was fired for the domain's shutdown.
pub(crate) const DOM_SHUTDOWN_REPORTED: u32 = 0x0002;

/// `n` rounded up to a multiple of 8.
pub(crate) fn padded(n: usize) -> Option<usize> {
    n.checked_add(7).map(|m| m & !7)
}

/// Appends little-endian integers and padding to a record being built.
#[derive(Debug, Default)]
pub(crate) struct Enc {
    pub(crate) buf: alloc::vec::Vec<u8>,
}

impl Enc {
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    /// Zeroes up to the next multiple of 8 of the record (which starts at 0).
    pub(crate) fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(8) {
            self.buf.push(0);
        }
    }
    /// Starts a record of `kind` (its length is filled in by [`Enc::finish`]).
    pub(crate) fn start(&mut self, kind: RecordKind) {
        self.buf.clear();
        self.u32(kind.code());
        self.u32(0);
    }
    /// Pads the record and fills in its length: the body and its padding, as C xenstored
    /// writes it (`xenstore_state.h`: "all records have a length of a multiple of 8").
    pub(crate) fn finish(&mut self) -> Option<&[u8]> {
        self.pad();
        let len = u32::try_from(self.buf.len().checked_sub(RECORD_HEADER_LEN)?).ok()?;
        self.buf.get_mut(4..8)?.copy_from_slice(&len.to_le_bytes());
        Some(&self.buf)
    }
}

/// Reads fields of one record body, in the stream's byte order, failing (with `None`)
/// rather than reading past the body.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dec<'a> {
    pub(crate) body: &'a [u8],
    pub(crate) at: usize,
    pub(crate) big: bool,
}

impl<'a> Dec<'a> {
    pub(crate) fn new(body: &'a [u8], big: bool) -> Dec<'a> {
        Dec { body, at: 0, big }
    }
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.body.get(self.at..end)?;
        self.at = end;
        Some(out)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        let b: [u8; 2] = self.take(2)?.try_into().ok()?;
        Some(if self.big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        let b: [u8; 4] = self.take(4)?.try_into().ok()?;
        Some(if self.big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        let b: [u8; 8] = self.take(8)?.try_into().ok()?;
        Some(if self.big {
            u64::from_be_bytes(b)
        } else {
            u64::from_le_bytes(b)
        })
    }
    /// Skips to the next multiple of 8 of the body.
    pub(crate) fn align(&mut self) -> Option<()> {
        let to = padded(self.at)?;
        self.take(to.checked_sub(self.at)?).map(|_| ())
    }
    pub(crate) fn remaining(&self) -> usize {
        self.body.len().saturating_sub(self.at)
    }
}
