//! One direction of the ring: a consumer half and a producer half, each keeping its own
//! index in private memory and only loading the peer's.
//!
//! An end never trusts the page for its own index (a hostile peer could rewrite it) and
//! checks the peer's on every load: the producer may be at most a ring ahead of the
//! consumer. Anything else (`prod - cons > RING`, an index moving backwards past that) is a
//! protocol violation.

use core::fmt;

use crate::layout::{Field, Ring};
use crate::order;
use crate::page::Page;

/// The peer broke the ring protocol, or the server stopped serving: the reasons of
/// `xs_wire.h`'s `XENSTORE_ERROR_*`, whose values ([`RingFault::code`]) go into the page's
/// `error` field.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u32)]
pub enum RingFault {
    /// `XENSTORE_ERROR_COMM`: communication problem (the event channel does not work).
    Comm = 1,
    /// `XENSTORE_ERROR_RINGIDX`: an inconsistent producer or consumer index.
    Index = 2,
    /// `XENSTORE_ERROR_PROTO`: a protocol violation (a message longer than the maximum).
    Protocol = 3,
}

impl RingFault {
    /// Every fault, by code.
    pub const ALL: [RingFault; 3] = [RingFault::Comm, RingFault::Index, RingFault::Protocol];

    /// The `XENSTORE_ERROR_*` value.
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// The fault an `error` field's value names (`None` for `XENSTORE_ERROR_NONE` and
    /// values Xen does not define).
    pub fn from_code(code: u32) -> Option<RingFault> {
        RingFault::ALL.into_iter().find(|f| f.code() == code)
    }
}

impl fmt::Display for RingFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self {
            RingFault::Comm => "communication problem",
            RingFault::Index => "inconsistent ring index",
            RingFault::Protocol => "protocol violation",
        };
        write!(f, "{why} (XENSTORE_ERROR {})", self.code())
    }
}

impl core::error::Error for RingFault {}

const INDEX: RingFault = RingFault::Index;

/// Checks, at compile time, what the index arithmetic needs of a page's ring size: a power
/// of two (indices are masked with `RING - 1`) no larger than a page. Evaluated for every
/// page type an end is built for.
pub(crate) const fn check_ring_size<P: Page>() {
    assert!(
        P::RING.is_power_of_two() && P::RING <= 4096,
        "a ring's size must be a power of two, at most 4096 bytes"
    );
}

fn ring_len<P: Page>() -> u32 {
    u32::try_from(P::RING).unwrap_or(u32::MAX)
}

/// Offset of free-running index `idx` in the ring.
fn mask<P: Page>(idx: u32) -> usize {
    // RING is a power of two no larger than 4096 (`check_ring_size`).
    (idx as usize) & P::RING.wrapping_sub(1)
}

/// Copies between the ring and private memory in at most two pieces (around the end of
/// the ring).
fn pieces<P: Page>(start: u32, len: usize) -> [(usize, usize); 2] {
    let offset = mask::<P>(start);
    let first = len.min(P::RING.saturating_sub(offset));
    [(offset, first), (0, len.saturating_sub(first))]
}

/// The reading end of one ring.
#[derive(Debug)]
pub(crate) struct Consumer {
    ring: Ring,
    prod: Field,
    cons_field: Field,
    cons: u32,
}

impl Consumer {
    pub(crate) fn new(ring: Ring, prod: Field, cons_field: Field, cons: u32) -> Consumer {
        Consumer {
            ring,
            prod,
            cons_field,
            cons,
        }
    }

    /// Bytes the producer has published and we have not consumed.
    pub(crate) fn available<P: Page>(&self, page: &P) -> Result<usize, RingFault> {
        let prod = page.load(self.prod);
        // ORDERING: acquire after loading prod; pairs with the producer's
        // `before_publishing_prod` in `Producer::push`, so the bytes up to `prod` that `peek`
        // copies out are the ones written before that index was published.
        order::after_loading_prod();
        let n = prod.wrapping_sub(self.cons);
        if n > ring_len::<P>() {
            return Err(INDEX);
        }
        Ok(n as usize)
    }

    /// Copies available bytes into `dst` (as many as fit) without consuming them.
    pub(crate) fn peek<P: Page>(&self, page: &P, dst: &mut [u8]) -> Result<usize, RingFault> {
        let n = self.available(page)?.min(dst.len());
        let mut at = 0usize;
        for (offset, len) in pieces::<P>(self.cons, n) {
            let end = at.saturating_add(len);
            if let Some(d) = dst.get_mut(at..end) {
                page.copy_out(self.ring, offset, d);
            }
            at = end;
        }
        Ok(n)
    }

    /// Frees `n` bytes for the producer (`n` no more than what `peek` returned).
    pub(crate) fn consume<P: Page>(&mut self, page: &P, n: usize) {
        if n == 0 {
            return;
        }
        // ORDERING: full fence between `peek`'s loads of the consumed bytes and the store of
        // cons; pairs with the producer's `after_loading_cons` in `Producer::unread`, so the
        // producer overwrites those bytes only after we have copied them out.
        order::before_publishing_cons();
        self.cons = self.cons.wrapping_add(u32::try_from(n).unwrap_or(0));
        page.store(self.cons_field, self.cons);
    }

    /// Restarts at `cons` (after a reconnection).
    pub(crate) fn reset(&mut self, cons: u32) {
        self.cons = cons;
    }
}

/// The writing end of one ring.
#[derive(Debug)]
pub(crate) struct Producer {
    ring: Ring,
    prod_field: Field,
    cons: Field,
    prod: u32,
}

impl Producer {
    pub(crate) fn new(ring: Ring, prod_field: Field, cons: Field, prod: u32) -> Producer {
        Producer {
            ring,
            prod_field,
            cons,
            prod,
        }
    }

    /// Bytes published and not yet consumed by the peer.
    pub(crate) fn unread<P: Page>(&self, page: &P) -> Result<usize, RingFault> {
        let cons = page.load(self.cons);
        // ORDERING: acquire after loading cons; pairs with the consumer's
        // `before_publishing_cons` in `Consumer::consume`: our writes into the freed space
        // come after the consumer's reads of what was there.
        order::after_loading_cons();
        let used = self.prod.wrapping_sub(cons);
        if used > ring_len::<P>() {
            return Err(INDEX);
        }
        Ok(used as usize)
    }

    /// Writes as much of `src` as fits and publishes it; returns how much.
    pub(crate) fn push<P: Page>(&mut self, page: &P, src: &[u8]) -> Result<usize, RingFault> {
        let space = P::RING.saturating_sub(self.unread(page)?);
        let n = space.min(src.len());
        if n == 0 {
            return Ok(0);
        }
        let mut at = 0usize;
        for (offset, len) in pieces::<P>(self.prod, n) {
            let end = at.saturating_add(len);
            if let Some(s) = src.get(at..end) {
                page.copy_in(self.ring, offset, s);
            }
            at = end;
        }
        // ORDERING: release between the `copy_in` stores above and the store of prod; pairs
        // with the consumer's `after_loading_prod` in `Consumer::available`, so whoever sees
        // the new prod sees the bytes it covers.
        order::before_publishing_prod();
        self.prod = self.prod.wrapping_add(u32::try_from(n).unwrap_or(0));
        page.store(self.prod_field, self.prod);
        Ok(n)
    }

    /// Restarts at `prod` (after a reconnection).
    pub(crate) fn reset(&mut self, prod: u32) {
        self.prod = prod;
    }
}
