//! The store's end of a guest's ring.

use core::fmt;

use crate::layout::{CONNECTED, ERROR_NONE, Field, RECONNECT, RING_SIZE, Ring, ServerFeatures};
use crate::order;
use crate::page::Page;
use crate::ring::{Consumer, Producer, RingFault, check_ring_size};

/// The server end: reads requests, writes replies and events.
///
/// Once the guest breaks the protocol the ring is marked broken (with the reason in the
/// page's `error` field, when that feature is offered) and no longer served; only a
/// reconnection the guest asks for revives it.
///
/// # Examples
///
/// Both ends over one page (a [`SharedPage`](crate::SharedPage) here; a guest's mapped page
/// in production): the guest writes, the server copies the bytes out once into private
/// memory and consumes them, and its reply comes back the same way.
///
/// ```
/// use xs_ring::{Guest, Server, SharedPage};
///
/// let page: SharedPage = SharedPage::default();
/// let mut server = Server::new(&page, Server::<&SharedPage>::FEATURES);
/// let mut guest = Guest::new(&page);
///
/// assert_eq!(guest.write(b"request")?, 7);
/// let request = server.peek_request()?.to_vec();
/// assert_eq!(request, b"request");
/// server.consume(request.len());
/// server.write(b"reply")?;
///
/// let mut buf = [0u8; 16];
/// let n = guest.read(&mut buf)?;
/// assert_eq!(&buf[..n], b"reply");
/// // Before sleeping (after re-enabling notifications), the server re-checks the ring.
/// assert!(!server.recheck(false));
/// # Ok::<(), xs_ring::RingFault>(())
/// ```
#[derive(Debug)]
pub struct Server<P: Page> {
    page: P,
    req: Consumer,
    rsp: Producer,
    features: ServerFeatures,
    fault: Option<RingFault>,
    scratch: Scratch,
}

/// Private memory the request bytes are copied into (once, by [`Server::peek_request`]).
/// Kept with the server so that serving a request does not first zero a kilobyte of stack.
/// A plain array, not a `heapless::Vec`: the copy writes into initialized memory in place,
/// and the length is the peek's result, so a length field (and zeroing to resize) would only
/// cost.
struct Scratch([u8; RING_SIZE]);

impl fmt::Debug for Scratch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scratch([u8; {RING_SIZE}])")
    }
}

impl<P: Page> Server<P> {
    /// Both ring features: reconnection and the error field. (Xen's C xenstored offers
    /// only the latter and oxenstored only the former.)
    pub const FEATURES: ServerFeatures = ServerFeatures::RING;

    /// Starts serving the page, offering `features` (all of them are advertised in the page;
    /// this end acts on [`ServerFeatures::RING`]). The indices found in the page are the
    /// starting point (a guest may not assume they start at zero); from then on the server
    /// keeps its own indices privately.
    pub fn new(page: P, features: ServerFeatures) -> Server<P> {
        const { check_ring_size::<P>() };
        // ORDERING: relaxed; the guest reads the features only after the store has
        // introduced it, and the event-channel notification that follows is a full barrier.
        page.store(Field::ServerFeatures, features.bits());
        let req_cons = page.load(Field::ReqCons);
        let rsp_prod = page.load(Field::RspProd);
        Server {
            req: Consumer::new(Ring::Req, Field::ReqProd, Field::ReqCons, req_cons),
            rsp: Producer::new(Ring::Rsp, Field::RspProd, Field::RspCons, rsp_prod),
            page,
            features,
            fault: None,
            scratch: Scratch([0; RING_SIZE]),
        }
    }

    /// The page.
    pub fn page(&self) -> &P {
        &self.page
    }

    /// Stops serving and gives the page back (to be unmapped, for instance). Nothing is
    /// written to the page: the guest sees the ring as the server left it.
    pub fn into_page(self) -> P {
        self.page
    }

    /// Why the ring is no longer served, if it is not.
    pub fn fault(&self) -> Option<RingFault> {
        self.fault
    }

    fn live(&self) -> Result<(), RingFault> {
        self.fault.map_or(Ok(()), Err)
    }

    /// Stops serving: records `fault` in the page's `error` field (if offered).
    pub fn fail(&mut self, fault: RingFault) -> RingFault {
        if self.features.contains(ServerFeatures::ERROR) {
            // ORDERING: relaxed; a diagnostic the guest reads after we notify it (the
            // notification is a full barrier), and no other access depends on it.
            self.page.store(Field::Error, fault.code());
        }
        self.fault = Some(fault);
        fault
    }

    fn checked<T>(&mut self, result: Result<T, RingFault>) -> Result<T, RingFault> {
        result.map_err(|f| self.fail(f))
    }

    /// Copies waiting request bytes into `dst` without consuming them.
    pub fn peek(&mut self, dst: &mut [u8]) -> Result<usize, RingFault> {
        self.live()?;
        let result = self.req.peek(&self.page, dst);
        self.checked(result)
    }

    /// Copies waiting request bytes into the server's own private buffer without consuming
    /// them, and returns them (the same bytes as [`Server::peek`], without a caller buffer).
    pub fn peek_request(&mut self) -> Result<&[u8], RingFault> {
        self.live()?;
        let result = self.req.peek(&self.page, &mut self.scratch.0);
        let n = self.checked(result)?;
        Ok(self.scratch.0.get(..n).unwrap_or_default())
    }

    /// Consumes `n` request bytes (at most what [`Server::peek`] returned).
    pub fn consume(&mut self, n: usize) {
        if self.fault.is_none() {
            self.req.consume(&self.page, n);
        }
    }

    /// Writes as much of `src` as fits into the reply ring; returns how much.
    pub fn write(&mut self, src: &[u8]) -> Result<usize, RingFault> {
        self.live()?;
        let result = self.rsp.push(&self.page, src);
        self.checked(result)
    }

    /// Whether the guest asked for a reconnection (only meaningful when it was offered).
    pub fn reconnect_requested(&self) -> bool {
        // ORDERING: relaxed; `reconnect` issues the acquire before acting on it.
        self.features.contains(ServerFeatures::RECONNECTION)
            && self.page.load(Field::Connection) == RECONNECT
    }

    /// Completes a reconnection the guest asked for: both rings emptied, every index set to
    /// 0 (as C xenstored does), the error cleared, `connection` back to 0. The caller resets
    /// the protocol connection (partial packets, watches, transactions) and notifies the
    /// guest.
    pub fn reconnect(&mut self) {
        // ORDERING: acquire; pairs with the guest's `before_requesting_reconnect` (whose
        // `connection` = 1 we loaded): the guest's last index stores come before our zeroes,
        // so neither side can load a pre-reconnection index back afterwards.
        order::after_seeing_reconnect_request();
        for field in [
            Field::ReqCons,
            Field::ReqProd,
            Field::RspCons,
            Field::RspProd,
        ] {
            self.page.store(field, 0);
        }
        self.req.reset(0);
        self.rsp.reset(0);
        if self.features.contains(ServerFeatures::ERROR) {
            self.page.store(Field::Error, ERROR_NONE);
        }
        self.fault = None;
        // ORDERING: release; the emptied indices are visible before the guest sees
        // `connection` = 0 (pairs with the guest's `after_seeing_reconnect_done`).
        order::before_completing_reconnect();
        self.page.store(Field::Connection, CONNECTED);
    }

    /// The final re-check before sleeping: whether there is anything to do (request bytes
    /// waiting, reply space freed while `pending_output` bytes wait to be written, or a
    /// reconnection asked for). Call it after re-enabling notifications for this ring; it
    /// issues the full fence between the two itself ([`order::before_recheck`]), so that no
    /// caller can forget it. If it says `false`, any later update by the guest comes with a
    /// new notification.
    pub fn recheck(&self, pending_output: bool) -> bool {
        // ORDERING: full fence between re-enabling notifications (before this call) and the
        // loads below; pairs with the guest's fence before it publishes an index and
        // notifies. Without it the loads could pass the re-arm and miss an update made in
        // between: the lost wake-up.
        order::before_recheck();
        if self.fault.is_some() {
            return self.reconnect_requested();
        }
        let input = self.req.available(&self.page).map_or(true, |n| n > 0);
        let room = self
            .rsp
            .unread(&self.page)
            .map_or(true, |used| used < P::RING);
        input || (pending_output && room) || self.reconnect_requested()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SharedPage;

    #[test]
    fn into_page_gives_back_the_page_as_served() {
        let features = Server::<SharedPage>::FEATURES;
        let page: SharedPage = SharedPage::default();
        let mut server = Server::new(page, features);
        assert_eq!(server.write(b"reply"), Ok(5));
        let page = server.into_page();
        assert_eq!(page.load(Field::ServerFeatures), features.bits());
        assert_eq!(page.load(Field::RspProd), 5);
        let mut reply = [0; 5];
        page.copy_out(Ring::Rsp, 0, &mut reply);
        assert_eq!(&reply, b"reply");
    }
}
