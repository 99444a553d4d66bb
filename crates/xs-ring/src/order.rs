//! Every memory ordering of the ring protocol, in one place.
//!
//! The indices are atomics accessed with relaxed loads and stores (one accessor per index, in
//! [`crate::Page`]); the ordering comes from the fences here, placed exactly where Xen's
//! protocol puts its barriers. In Rust a fence orders nothing unless atomic accesses carry
//! it, which is why the indices are atomics and not plain or volatile memory.
//!
//! A producer writes bytes, then publishes its producer index; the consumer loads that index,
//! then reads the bytes; it then publishes its consumer index, which the producer loads
//! before writing over the freed bytes. Two fence pairs make that work:
//!
//! * [`before_publishing_prod`] (release) pairs with [`after_loading_prod`] (acquire): the
//!   bytes written before the index are visible to whoever sees the index.
//! * [`before_publishing_cons`] pairs with [`after_loading_cons`] (acquire): the consumer's
//!   reads of bytes are over before the producer, seeing the index, overwrites them.
//!
//! Under `--cfg loom` the same functions use loom's fences, so the model checker sees exactly
//! the orderings production runs with.

#[cfg(loom)]
use loom::sync::atomic::{Ordering, fence};

#[cfg(not(loom))]
use core::sync::atomic::{Ordering, fence};

/// After loading the peer's producer index, before reading the bytes it covers (Xen: rmb).
///
/// ORDERING: acquire; pairs with [`before_publishing_prod`] on the producing side.
#[inline]
pub fn after_loading_prod() {
    fence(Ordering::Acquire);
}

/// After loading the peer's consumer index, before writing into the space it freed.
///
/// ORDERING: acquire; pairs with [`before_publishing_cons`] on the consuming side.
#[inline]
pub fn after_loading_cons() {
    fence(Ordering::Acquire);
}

/// After writing bytes, before publishing the producer index that covers them (Xen: wmb).
///
/// ORDERING: release; pairs with [`after_loading_prod`] on the consuming side.
#[inline]
pub fn before_publishing_prod() {
    fence(Ordering::Release);
}

/// After reading (copying out) consumed bytes, before publishing the consumer index that
/// frees them (Xen: mb; the loads of the bytes must be ordered before the store of the
/// index, which a full fence does as Xen's `xen_mb()` does).
///
/// ORDERING: full; pairs with [`after_loading_cons`] on the producing side.
#[inline]
pub fn before_publishing_cons() {
    fence(Ordering::SeqCst);
}

/// The guest, before it stores `connection` = `XENSTORE_RECONNECT`: its earlier index stores
/// are published first.
///
/// ORDERING: release; pairs with [`after_seeing_reconnect_request`] on the server.
#[inline]
pub fn before_requesting_reconnect() {
    fence(Ordering::Release);
}

/// The server, after it loaded `connection` = `XENSTORE_RECONNECT`, before it zeroes the
/// indices: the guest's last index stores come before our zeroes, so that neither side can
/// load a pre-reconnection index back afterwards.
///
/// ORDERING: acquire; pairs with [`before_requesting_reconnect`] on the guest.
#[inline]
pub fn after_seeing_reconnect_request() {
    fence(Ordering::Acquire);
}

/// The server, after zeroing the indices, before it stores `connection` =
/// `XENSTORE_CONNECTED`: the zeroes are visible to whoever sees the reconnection complete.
///
/// ORDERING: release; pairs with [`after_seeing_reconnect_done`] on the guest.
#[inline]
pub fn before_completing_reconnect() {
    fence(Ordering::Release);
}

/// The guest, after it loaded `connection` = `XENSTORE_CONNECTED`, before it loads the
/// indices it restarts from.
///
/// ORDERING: acquire; pairs with [`before_completing_reconnect`] on the server.
#[inline]
pub fn after_seeing_reconnect_done() {
    fence(Ordering::Acquire);
}

/// After re-enabling notifications (unmasking the event channel), before the final re-check
/// of both rings that decides whether to sleep (Xen: mb). Without it the re-check's loads
/// could be ordered before the unmask, and a peer's update in between would be missed: the
/// lost wake-up.
///
/// ORDERING: full; pairs with the peer's [`before_publishing_prod`] /
/// [`before_publishing_cons`] followed by its notification.
#[inline]
pub fn before_recheck() {
    fence(Ordering::SeqCst);
}
