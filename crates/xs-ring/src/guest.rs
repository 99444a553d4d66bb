//! The guest's end of the ring: what a guest kernel (or a test, or a guest-side program)
//! drives. The mirror image of [`crate::Server`].

use crate::layout::{CONNECTED, Field, RECONNECT, Ring, ServerFeatures};
use crate::order;
use crate::page::Page;
use crate::ring::{Consumer, Producer, RingFault, check_ring_size};

/// The guest end: writes requests, reads replies and events.
///
/// # Examples
///
/// A server that breaks off (here: the guest corrupts its own producer index) says why in
/// the page, and the guest recovers by asking for a reconnection:
///
/// ```
/// use xs_ring::layout::Field;
/// use xs_ring::{Guest, Page, RingFault, Server, SharedPage};
///
/// let page: SharedPage = SharedPage::default();
/// let mut server = Server::new(&page, Server::<&SharedPage>::FEATURES);
/// let mut guest = Guest::new(&page);
/// page.store(Field::ReqProd, 5000); // more than a ring ahead of the consumer
/// assert_eq!(server.peek_request(), Err(RingFault::Index));
/// assert_eq!(RingFault::from_code(guest.error()), Some(RingFault::Index));
///
/// guest.request_reconnect();
/// assert!(server.recheck(false)); // the server sees the request ...
/// server.reconnect(); // ... and resets both rings
/// assert!(guest.reconnected());
/// assert_eq!(guest.write(b"again")?, 5);
/// # Ok::<(), RingFault>(())
/// ```
#[derive(Debug)]
pub struct Guest<P: Page> {
    page: P,
    req: Producer,
    rsp: Consumer,
}

impl<P: Page> Guest<P> {
    /// Starts using the page from the indices found in it.
    pub fn new(page: P) -> Guest<P> {
        const { check_ring_size::<P>() };
        let req_prod = page.load(Field::ReqProd);
        let rsp_cons = page.load(Field::RspCons);
        Guest {
            req: Producer::new(Ring::Req, Field::ReqProd, Field::ReqCons, req_prod),
            rsp: Consumer::new(Ring::Rsp, Field::RspProd, Field::RspCons, rsp_cons),
            page,
        }
    }

    /// The page.
    pub fn page(&self) -> &P {
        &self.page
    }

    /// The features the server offers (bits this crate does not know are kept).
    pub fn server_features(&self) -> ServerFeatures {
        ServerFeatures::from_bits_retain(self.page.load(Field::ServerFeatures))
    }

    /// The server's error indicator (0 while it serves).
    pub fn error(&self) -> u32 {
        self.page.load(Field::Error)
    }

    /// Writes as much of `src` as fits into the request ring; returns how much.
    pub fn write(&mut self, src: &[u8]) -> Result<usize, RingFault> {
        self.req.push(&self.page, src)
    }

    /// Reads waiting reply bytes into `dst`; returns how many.
    pub fn read(&mut self, dst: &mut [u8]) -> Result<usize, RingFault> {
        let n = self.peek(dst)?;
        self.consume(n);
        Ok(n)
    }

    /// Copies waiting reply bytes into `dst` without consuming them; returns how many.
    pub fn peek(&mut self, dst: &mut [u8]) -> Result<usize, RingFault> {
        self.rsp.peek(&self.page, dst)
    }

    /// Frees `n` reply bytes for the server (at most what [`Guest::peek`] returned). A guest
    /// that sends its next request before consuming the reply to the last one stores both
    /// indices to the index cache line at once, as the server's pump does.
    pub fn consume(&mut self, n: usize) {
        self.rsp.consume(&self.page, n);
    }

    /// Asks the server to reset the ring (`XENSTORE_RECONNECT`). Poll
    /// [`Guest::reconnected`] (after notifying the server) until it returns true.
    pub fn request_reconnect(&mut self) {
        // ORDERING: release; our index stores are published before the request (pairs with
        // the server's `after_seeing_reconnect_request`).
        order::before_requesting_reconnect();
        self.page.store(Field::Connection, RECONNECT);
    }

    /// Whether the server completed the reconnection; if so the guest restarts from the
    /// indices the server left (zero).
    pub fn reconnected(&mut self) -> bool {
        if self.page.load(Field::Connection) != CONNECTED {
            return false;
        }
        // ORDERING: acquire; pairs with the server's `before_completing_reconnect`, so the
        // indices loaded below are the ones it reset.
        order::after_seeing_reconnect_done();
        self.req.reset(self.page.load(Field::ReqProd));
        self.rsp.reset(self.page.load(Field::RspCons));
        true
    }
}
