//! The guest's side of the store: a XenStore client on its end of a ring page, as a guest
//! kernel's xenbus driver is (Linux's `xenbus_comms.c` / `xenbus_xs.c`).
//!
//! For guests of our own (a VMM's test guest, a unikernel), tests and examples. The client is
//! sans-I/O at its core ([`GuestClient::send`], [`GuestClient::receive`]: bytes in and out
//! of the ring, never waiting); [`GuestClient::call`] and [`GuestClient::blocking`] wait for
//! replies through a [`Waiter`], which is how the platform notifies the store and sleeps
//! until it answers (an event channel and an interrupt in a guest, a channel between threads
//! in a test).
//!
//! Only the store is trusted here as far as it must be: a reply that announces more than
//! `XENSTORE_PAYLOAD_MAX` bytes is a protocol fault.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

use xs_core::wire::{HEADER_LEN, Header, MsgType, push_message};
use xs_core::{TxId, XsError, XsResult};
use xs_ring::{Guest, Page, RING_SIZE, RingFault};

/// One message from the store: a reply, or a watch event.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Message {
    /// The message type (a [`MsgType`] number).
    pub msg_type: u32,
    /// The request it answers (0 for watch events).
    pub req_id: u32,
    /// The transaction (0 for none).
    pub tx_id: u32,
    /// The payload.
    pub payload: Vec<u8>,
}

impl Message {
    /// The message type, if it is one.
    pub fn kind(&self) -> Option<MsgType> {
        MsgType::try_from(self.msg_type).ok()
    }

    /// Whether this is a watch event.
    pub fn is_event(&self) -> bool {
        self.msg_type == MsgType::WatchEvent as u32
    }

    /// The payload as text (lossily).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// A watch event's path and token.
    pub fn event(&self) -> Option<(&[u8], &[u8])> {
        if !self.is_event() {
            return None;
        }
        let mut parts = self.payload.split(|&b| b == 0);
        Some((parts.next()?, parts.next()?))
    }

    /// The reply as a result: an `ERROR` reply's name as an [`XsError`] (unknown names as
    /// `EIO`), anything else as its payload.
    pub fn into_result(self) -> XsResult<Vec<u8>> {
        if self.msg_type != MsgType::Error as u32 {
            return Ok(self.payload);
        }
        let name = self.payload.split(|&b| b == 0).next().unwrap_or_default();
        Err(XsError::from_name(name).unwrap_or(XsError::Io))
    }
}

/// How a guest waits for the store: notify it, then sleep until it may have answered.
pub trait Waiter {
    /// Requests are waiting in the ring: notify the store (send on the event channel).
    fn kick(&mut self);

    /// Wait until the store notified us (or a while has passed): replies may be waiting.
    fn wait(&mut self);
}

/// A XenStore client on the guest's end of a ring.
///
/// # Examples
///
/// Requests go out with [`GuestClient::send`]; whatever serves the other end (here a
/// [`crate::Dispatcher`] on the fake platform, told of the event by hand) answers, and
/// [`GuestClient::receive`] takes the whole messages that arrived.
///
/// ```
/// use xs_core::store::Introduction;
/// use xs_core::wire::MsgType;
/// use xs_core::DomId;
/// use xs_serve::fake::FakeServices;
/// use xs_serve::guest::GuestClient;
/// use xs_serve::{Dispatcher, ServeConfig};
///
/// let mut platform = FakeServices::new();
/// let page = platform.create_domain(DomId(3));
/// let mut xs = Dispatcher::new(platform, ServeConfig::default())?;
/// xs.introduce(DomId(3), Introduction { gfn: 0, evtchn: 1 })?;
/// let port = xs.local_port(DomId(3)).unwrap();
///
/// let mut guest = GuestClient::new(page);
/// let id = guest.send(MsgType::Write, 0, b"data/greeting\0hello")?;
/// xs.on_event(port);
/// let replies = guest.receive()?;
/// assert_eq!((replies[0].req_id, replies[0].text().as_str()), (id, "OK\0"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct GuestClient<P: Page> {
    ring: Guest<P>,
    last_req_id: u32,
    /// Request bytes queued and not yet in the ring (it was full).
    unsent: Vec<u8>,
    /// Bytes read from the ring that do not make a whole message yet.
    partial: Vec<u8>,
    /// Whole messages read and not yet taken (by `receive`, `call` or `pop_event`).
    read: VecDeque<Message>,
}

impl<P: Page> GuestClient<P> {
    /// A client on the guest's end of `page`, starting from the indices found in it.
    pub fn new(page: P) -> GuestClient<P> {
        GuestClient {
            ring: Guest::new(page),
            last_req_id: 0,
            unsent: Vec::new(),
            partial: Vec::new(),
            read: VecDeque::new(),
        }
    }

    /// The ring itself (to ask for a reconnection, or, in tests, to misbehave).
    pub fn ring(&mut self) -> &mut Guest<P> {
        &mut self.ring
    }

    /// Forgets the bytes in flight both ways: after a reconnection the store starts afresh.
    pub fn forget_in_flight(&mut self) {
        self.unsent.clear();
        self.partial.clear();
    }

    /// Queues a request and writes as much of the queue as fits; returns its `req_id`. What
    /// did not fit goes out with the next [`GuestClient::flush`], `send` or `receive`.
    pub fn send(&mut self, kind: MsgType, tx: TxId, payload: &[u8]) -> Result<u32, RingFault> {
        self.last_req_id = self.last_req_id.wrapping_add(1);
        push_message(&mut self.unsent, kind as u32, self.last_req_id, tx, payload);
        self.flush()?;
        Ok(self.last_req_id)
    }

    /// Writes queued request bytes into the ring; returns whether none is left.
    pub fn flush(&mut self) -> Result<bool, RingFault> {
        if !self.unsent.is_empty() {
            let n = self.ring.write(&self.unsent)?;
            self.unsent.drain(..n.min(self.unsent.len()));
        }
        Ok(self.unsent.is_empty())
    }

    /// Whether request bytes are still queued.
    pub fn has_unsent(&self) -> bool {
        !self.unsent.is_empty()
    }

    /// Flushes, then reads the ring: every whole message that has arrived (and those read
    /// before and not yet taken), in order.
    pub fn receive(&mut self) -> Result<Vec<Message>, RingFault> {
        self.flush()?;
        self.read_ring()?;
        Ok(self.read.drain(..).collect())
    }

    /// The next watch event that has arrived, if any (replies read meanwhile stay queued).
    pub fn pop_event(&mut self) -> Result<Option<Message>, RingFault> {
        self.read_ring()?;
        let at = self.read.iter().position(Message::is_event);
        Ok(at.and_then(|i| self.read.remove(i)))
    }

    /// Sends a request and waits for its reply through `waiter`; watch events that arrive
    /// meanwhile stay queued for [`GuestClient::pop_event`]. A ring fault is `EIO`.
    pub fn call(
        &mut self,
        waiter: &mut impl Waiter,
        kind: MsgType,
        tx: TxId,
        payload: &[u8],
    ) -> XsResult<Vec<u8>> {
        let id = self.send(kind, tx, payload).map_err(|_| XsError::Io)?;
        waiter.kick();
        loop {
            let all_out = self.flush().map_err(|_| XsError::Io)?;
            self.read_ring().map_err(|_| XsError::Io)?;
            let reply = self
                .read
                .iter()
                .position(|m| !m.is_event() && m.req_id == id);
            if let Some(reply) = reply.and_then(|i| self.read.remove(i)) {
                return reply.into_result();
            }
            if !all_out {
                waiter.kick();
            }
            waiter.wait();
        }
    }

    /// This client with `waiter`: an [`crate::client::XsClient`] whose every operation waits
    /// for its reply.
    pub fn blocking<'a, W: Waiter>(&'a mut self, waiter: &'a mut W) -> Blocking<'a, P, W> {
        Blocking {
            client: self,
            waiter,
        }
    }

    /// Reads every reply byte waiting into whole messages.
    fn read_ring(&mut self) -> Result<(), RingFault> {
        let mut buf = [0u8; RING_SIZE];
        loop {
            let n = self.ring.read(&mut buf)?;
            if n == 0 {
                break;
            }
            self.partial
                .extend_from_slice(buf.get(..n).unwrap_or_default());
        }
        while let Some(head) = self.partial.first_chunk::<HEADER_LEN>() {
            let h = Header::decode(head);
            if h.check().is_err() {
                // A store that breaks the protocol: nothing after this can be trusted.
                self.partial.clear();
                return Err(RingFault::Protocol);
            }
            let end = HEADER_LEN.saturating_add(h.len as usize);
            let Some(payload) = self.partial.get(HEADER_LEN..end) else {
                break;
            };
            self.read.push_back(Message {
                msg_type: h.msg_type,
                req_id: h.req_id,
                tx_id: h.tx_id,
                payload: payload.to_vec(),
            });
            self.partial.drain(..end);
        }
        Ok(())
    }
}

/// A [`GuestClient`] with its [`Waiter`]: see [`GuestClient::blocking`].
#[derive(Debug)]
pub struct Blocking<'a, P: Page, W> {
    pub(crate) client: &'a mut GuestClient<P>,
    pub(crate) waiter: &'a mut W,
}

impl<P: Page, W: Waiter> Blocking<'_, P, W> {
    /// The waiter (to reach what it wraps between calls).
    pub fn waiter_mut(&mut self) -> &mut W {
        self.waiter
    }

    /// Sends a request and waits for its reply (see [`GuestClient::call`]).
    pub fn call(&mut self, kind: MsgType, tx: TxId, payload: &[u8]) -> XsResult<Vec<u8>> {
        self.client.call(self.waiter, kind, tx, payload)
    }

    /// The next watch event, waiting for one if none has arrived.
    pub fn wait_event(&mut self) -> XsResult<Message> {
        loop {
            if let Some(e) = self.client.pop_event().map_err(|_| XsError::Io)? {
                return Ok(e);
            }
            self.waiter.wait();
        }
    }
}
