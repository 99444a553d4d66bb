//! Serving one xs-core protocol connection over a ring.
//!
//! The whole glue between the two: requests are peeked from the ring into private memory,
//! fed to the connection, and consumed only as far as the connection took them (so a guest
//! that does not read its replies finds its request ring full, and the store's memory does
//! not grow); replies and events are written as far as the reply ring has room.

use alloc::vec::Vec;

use xs_core::Store;
use xs_core::protocol::connection::Closed;
use xs_core::protocol::{Connection, Host};

use xs_ring::{Page, RingFault, Server};

/// What a pump did.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Pumped {
    /// The ring changed: the guest must be notified.
    pub notify: bool,
    /// The ring is no longer served (the guest broke the protocol; the page's `error` says
    /// why), until the guest asks for a reconnection.
    pub fault: Option<RingFault>,
    /// The domain was released: stop serving this ring.
    pub released: bool,
}

/// Passes of one [`pump`] call. Each pass moves at most a ring's worth of bytes each way, so
/// this bounds the work one call does for a guest that keeps writing (from another vCPU) or
/// keeps asking for reconnection: a single-threaded store must get back to its other guests.
pub const PUMP_PASSES: usize = 64;

/// Moves bytes between `ring` and `conn` until neither can make progress, or for at most
/// [`PUMP_PASSES`] passes. Then the caller re-enables notifications and pumps again (now or
/// after serving others) if [`Server::recheck`] says so, before sleeping: the
/// [`crate::Dispatcher`] does this for every ring it serves.
///
/// # Examples
///
/// ```
/// use xs_core::protocol::{Access, Connection, Limits, NoHost};
/// use xs_core::wire::{HEADER_LEN, MsgType, push_message};
/// use xs_core::{DomId, Store, StoreConfig};
/// use xs_ring::{Guest, Server, SharedPage};
/// use xs_serve::pump::pump;
///
/// # let entropy = [0x243f_6a88_85a3_08d3, 0x1319_8a2e_0370_7344];
/// let mut store = Store::new(StoreConfig::new(entropy))?;
/// let id = store.connect(DomId::DOM0)?;
/// let mut conn = Connection::new(id, Access::default(), Limits::default());
/// let page: SharedPage = SharedPage::default();
/// let mut server = Server::new(&page, Server::<&SharedPage>::FEATURES);
/// let mut guest = Guest::new(&page);
///
/// let mut request = Vec::new();
/// push_message(&mut request, MsgType::Mkdir as u32, 1, 0, b"/vm\0");
/// guest.write(&request).unwrap();
/// let done = pump(&mut server, &mut conn, &mut store, &mut NoHost);
/// assert!(done.notify && done.fault.is_none());
///
/// let mut reply = [0u8; 32];
/// let n = guest.read(&mut reply).unwrap();
/// assert_eq!(&reply[HEADER_LEN..n], b"OK\0");
/// # Ok::<(), xs_core::XsError>(())
/// ```
pub fn pump<P: Page>(
    ring: &mut Server<P>,
    conn: &mut Connection,
    store: &mut Store,
    host: &mut dyn Host,
) -> Pumped {
    pump_with_backlog(ring, conn, &mut Vec::new(), store, host)
}

/// [`pump`] for a connection that has input to take before its ring's: `backlog`, bytes
/// received for it earlier and not fed to it yet (a restored connection's
/// [`xs_core::state::RestoredConnection::input`]: the requests C xenstored had read but
/// not answered). Until the backlog is taken the ring's requests wait in the ring; bytes
/// are drained from it as the connection takes them. A reconnection discards it with the
/// rest of the connection's state.
pub fn pump_with_backlog<P: Page>(
    ring: &mut Server<P>,
    conn: &mut Connection,
    backlog: &mut Vec<u8>,
    store: &mut Store,
    host: &mut dyn Host,
) -> Pumped {
    let mut done = Pumped::default();
    for _ in 0..PUMP_PASSES {
        if ring.reconnect_requested() {
            conn.reset(store);
            backlog.clear();
            ring.reconnect();
            done.notify = true;
            done.fault = None;
            continue;
        }
        if let Some(fault) = ring.fault() {
            done.fault = Some(fault);
            return done;
        }
        let mut progress = false;
        let mut used = 0;
        let from_backlog = !backlog.is_empty();
        let input = if from_backlog {
            backlog.as_slice()
        } else {
            match ring.peek_request() {
                Ok(bytes) => bytes,
                Err(fault) => {
                    done.fault = Some(fault);
                    done.notify = true;
                    return done;
                }
            }
        };
        // A held request (waiting for a protected transaction) is tried again even when the
        // ring has nothing new: the store notified the connection.
        if !input.is_empty() || conn.holds_request() {
            match conn.receive(store, host, input) {
                Ok(n) => {
                    used = n;
                    progress |= n > 0;
                }
                Err(Closed::Fault(_)) => {
                    done.fault = Some(ring.fail(RingFault::Protocol));
                    done.notify = true;
                    return done;
                }
                Err(Closed::Released) => {
                    done.released = true;
                    return done;
                }
            }
        }
        conn.pull_events(store, host);
        let out = conn.output();
        if !out.is_empty() {
            match ring.write(out) {
                Ok(n) => {
                    conn.consume_output(store, n);
                    progress |= n > 0;
                }
                Err(fault) => {
                    done.fault = Some(fault);
                    done.notify = true;
                    return done;
                }
            }
        }
        // Consumed only now, after the reply: the two index stores (`rsp_prod`, then
        // `req_cons`) then hit the index cache line once, where consuming first stored to it,
        // let the spinning guest take it back, and stored to it again (measured: about 5-15%
        // more round trips). Publishing `req_cons` late only delays the guest's reuse of
        // request space it is not waiting for; Xen's protocol puts no deadline on it.
        if from_backlog {
            backlog.drain(..used.min(backlog.len()));
        } else {
            ring.consume(used);
        }
        if !progress {
            return done;
        }
        done.notify = true;
    }
    done
}
