//! The state machine of one connection, fed bytes and drained of bytes.
//!
//! * Requests may arrive in any chunks: a header is collected to its 16 bytes, then its
//!   payload to its length, into private buffers; the store then answers it.
//! * Replies are produced in request order; watch events are put between whole messages
//!   only, when the connection asks the store for them ([`Connection::pull_events`]).
//! * A header announcing more than 4096 payload bytes is fatal for this connection only.
//! * A peer that stops reading cannot grow memory: once too many messages wait to be sent,
//!   the connection takes no more input (the transport leaves it unread: in the ring, or in
//!   the socket) and takes no more events (they wait, bounded, in the store). An
//!   unprivileged domain's connections together are held to its `outstanding` quota (the
//!   store counts every message waiting in any of them, and charges their bytes to the
//!   domain's memory until sent: see [`Store::outstanding_room`]), so that opening more
//!   connections gets a domain nothing more; a privileged connection is held on its own to
//!   [`Limits::privileged_pending`].
//! * A request that would change what a starving privileged transaction relied on is held,
//!   whole and unanswered, until that transaction ends (the store's fairness rules, see
//!   [`crate::store::PROTECT_AFTER`]); the connection takes nothing after it meanwhile.
//! * Buffers shrink back once drained (beyond [`RETAINED_OUTPUT`], or a large request's
//!   payload), so that an idle connection costs little however much it once held.
//! * A watch event identical to one still unsent in the output is dropped when the
//!   connection takes it from the store (C xenstored's rule against duplicate events; the
//!   store applies it to its own queue, see [`Connection::pull_events`]).

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;

use hashbrown::HashTable;

use super::Host;
use super::dispatch::{self, Access};
use crate::store::{ConnId, Store};
use crate::wire::{Fault, HEADER_LEN, Header};

/// Output capacity an unprivileged connection keeps once its output is all sent (a privileged
/// one keeps up to [`RETAINED_OUTPUT_PRIVILEGED`]): a domain may hold many idle connections.
pub const RETAINED_OUTPUT: usize = 4096;

/// Output capacity a privileged connection keeps once its output is all sent (dom0's
/// pipelining tools reuse it batch after batch).
pub const RETAINED_OUTPUT_PRIVILEGED: usize = 64 * 1024;

/// Payload capacity a connection keeps after answering a request.
const RETAINED_PAYLOAD: usize = 1024;

/// Bounds of a connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Limits {
    /// Messages a privileged connection may have waiting to be sent before it stops taking
    /// requests (unprivileged ones use their domain's `outstanding` quota).
    pub privileged_pending: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            privileged_pending: 1024,
        }
    }
}

/// Why a connection can no longer be served.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Closed {
    /// The peer broke the protocol.
    Fault(Fault),
    /// The domain the connection acts for was released.
    Released,
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Closed::Fault(fault) => write!(f, "protocol fault: {fault}"),
            Closed::Released => f.write_str("domain released"),
        }
    }
}

/// One connection.
///
/// # Examples
///
/// Bytes from a transport in, reply bytes out (a socket server does exactly this; a ring is
/// served the same way by xs-serve's pump):
///
/// ```
/// use xs_core::protocol::{Access, Connection, Limits, NoHost};
/// use xs_core::wire::{HEADER_LEN, Header, MsgType, push_message};
/// use xs_core::{DomId, Store, StoreConfig};
///
/// # let entropy = [0x243f_6a88_85a3_08d3, 0x1319_8a2e_0370_7344];
/// let mut store = Store::new(StoreConfig::new(entropy))?;
/// let id = store.connect(DomId::DOM0)?;
/// let mut conn = Connection::new(id, Access::default(), Limits::default());
///
/// let mut request = Vec::new();
/// push_message(&mut request, MsgType::Write as u32, 7, 0, b"/vm/name\0guest");
/// // Any chunking will do: here the header, then the payload.
/// conn.receive(&mut store, &mut NoHost, &request[..HEADER_LEN]).unwrap();
/// conn.receive(&mut store, &mut NoHost, &request[HEADER_LEN..]).unwrap();
///
/// let reply = conn.output().to_vec();
/// conn.consume_output(&mut store, reply.len());
/// let header = Header::decode(reply[..HEADER_LEN].try_into().unwrap());
/// assert_eq!((header.kind(), header.req_id), (Some(MsgType::Write), 7));
/// assert_eq!(&reply[HEADER_LEN..], b"OK\0");
/// # Ok::<(), xs_core::XsError>(())
/// ```
#[derive(Debug)]
pub struct Connection {
    id: ConnId,
    access: Access,
    limits: Limits,
    header: [u8; HEADER_LEN],
    header_fill: usize,
    current: Option<Header>,
    payload: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    /// Where the first message not yet wholly sent starts in `out` (at or before `sent`).
    head: usize,
    /// The messages in `out` not yet wholly sent.
    ends: VecDeque<Unsent>,
    /// The watch events among them that the rule against identical events covers, by key.
    unsent_events: HashTable<UnsentEvent>,
    fault: Option<Fault>,
}

/// A message in the output not yet wholly sent.
#[derive(Clone, Copy, Debug)]
struct Unsent {
    /// Its end offset in `out`.
    end: usize,
    /// The key of a watch event the rule against identical events covers.
    event_key: Option<u64>,
}

/// A watch event in the output not yet wholly sent: where its payload is in `out`.
#[derive(Clone, Copy, Debug)]
struct UnsentEvent {
    key: u64,
    start: usize,
    end: usize,
}

impl Connection {
    /// A connection for the store connection `id`.
    pub fn new(id: ConnId, access: Access, limits: Limits) -> Connection {
        Connection {
            id,
            access,
            limits,
            header: [0; HEADER_LEN],
            header_fill: 0,
            current: None,
            payload: Vec::new(),
            out: Vec::new(),
            sent: 0,
            head: 0,
            ends: VecDeque::new(),
            unsent_events: HashTable::new(),
            fault: None,
        }
    }

    /// The store connection this serves.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Whether a whole request is held: waiting for a protected transaction to end (see
    /// [`dispatch::must_wait`]), or held by the host ([`Host::hold_request`]). Once the store
    /// or the host lets it go on, the transport must call [`Connection::receive`] again
    /// even with no new input.
    pub fn holds_request(&self) -> bool {
        self.current
            .is_some_and(|h| self.payload.len() >= h.len as usize)
    }

    /// Messages waiting to be sent.
    pub fn pending(&self) -> usize {
        self.ends.len()
    }

    /// How many more messages may be queued now: what the domain's `outstanding` quota
    /// leaves across all its connections, or for a privileged connection (or an unlimited
    /// quota) what [`Limits::privileged_pending`] leaves of this one's.
    fn room(&self, store: &Store) -> usize {
        store.outstanding_room(self.id).unwrap_or_else(|| {
            self.limits
                .privileged_pending
                .saturating_sub(self.pending())
        })
    }

    /// Whether the connection takes input now (it does not while too many messages wait to
    /// be sent: in this connection, or for an unprivileged domain in any of its
    /// connections).
    pub fn wants_input(&self, store: &Store) -> bool {
        self.fault.is_none() && self.room(store) > 0
    }

    /// Takes received bytes, answering every complete request, and returns how many bytes
    /// it consumed: the rest must be offered again once output has drained.
    pub fn receive(
        &mut self,
        store: &mut Store,
        host: &mut dyn Host,
        input: &[u8],
    ) -> Result<usize, Closed> {
        if let Some(f) = self.fault {
            return Err(Closed::Fault(f));
        }
        if store.is_dead(self.id) {
            return Err(Closed::Released);
        }
        // Only this connection's answers take room meanwhile.
        let mut room = self.room(store);
        let mut used = 0usize;
        while room > 0 {
            let rest = input.get(used..).unwrap_or_default();
            if let Some(header) = self.current {
                let missing = (header.len as usize).saturating_sub(self.payload.len());
                let take = missing.min(rest.len());
                self.payload
                    .extend_from_slice(rest.get(..take).unwrap_or_default());
                used = used.saturating_add(take);
                if take < missing {
                    break;
                }
                if dispatch::must_wait(store, self.id, &header, &self.payload)
                    || host.hold_request(store, self.id, &header, &self.payload)
                {
                    // Held, whole, until the store notifies this connection: then the
                    // transport offers input again (or none, see `holds_request`).
                    break;
                }
                self.current = None;
                if self.answer(store, host, &header) {
                    room = room.saturating_sub(1);
                }
                if self.payload.capacity() > RETAINED_PAYLOAD {
                    self.payload = Vec::new();
                }
            } else {
                if rest.is_empty() {
                    break;
                }
                let room = self.header.get_mut(self.header_fill..).unwrap_or_default();
                let take = room.len().min(rest.len());
                if let (Some(dst), Some(src)) = (room.get_mut(..take), rest.get(..take)) {
                    dst.copy_from_slice(src);
                }
                used = used.saturating_add(take);
                self.header_fill = self.header_fill.saturating_add(take);
                if self.header_fill < HEADER_LEN {
                    break;
                }
                self.header_fill = 0;
                let header = Header::decode(&self.header);
                if let Err(fault) = header.check() {
                    self.fault = Some(fault);
                    return Err(Closed::Fault(fault));
                }
                self.payload.clear();
                self.current = Some(header);
            }
        }
        Ok(used)
    }

    /// Answers the request in `payload`; whether a reply was queued.
    fn answer(&mut self, store: &mut Store, host: &mut dyn Host, header: &Header) -> bool {
        if host.tracing() {
            host.trace(self.id, true, header, &self.payload);
        }
        let start = self.out.len();
        dispatch::handle(
            store,
            host,
            self.id,
            self.access,
            header,
            &self.payload,
            &mut self.out,
        );
        self.queued(store, host, start, None)
    }

    /// Records the message appended at `start` as pending, charged to the domain (and
    /// traces it); `event_key` is the key of a watch event the rule against identical events
    /// covers. Whether there was a message.
    fn queued(
        &mut self,
        store: &mut Store,
        host: &mut dyn Host,
        start: usize,
        event_key: Option<u64>,
    ) -> bool {
        let end = self.out.len();
        if end == start {
            return false;
        }
        if self.ends.is_empty() {
            self.head = start;
        }
        self.ends.push_back(Unsent { end, event_key });
        store.output_queued(self.id, end.saturating_sub(start));
        if let Some(key) = event_key {
            let event = UnsentEvent {
                key,
                start: start.saturating_add(HEADER_LEN),
                end,
            };
            self.unsent_events.insert_unique(key, event, |e| e.key);
        }
        if host.tracing() {
            let mut h = [0u8; HEADER_LEN];
            if let Some(src) = self.out.get(start..start.saturating_add(HEADER_LEN)) {
                h.copy_from_slice(src);
            }
            let payload = self
                .out
                .get(start.saturating_add(HEADER_LEN)..end)
                .unwrap_or_default();
            host.trace(self.id, false, &Header::decode(&h), payload);
        }
        true
    }

    /// Moves queued watch events into the output, while there is room.
    ///
    /// An event identical (same path and token) to one still unsent in the output is
    /// dropped instead, special events (`@...`) excepted: C xenstored's `send_event` drops
    /// an event identical to one pending on the connection, queued or partly written. Here
    /// an event is pending first in the store's queue, which applies the rule when the
    /// event is queued, then in this output, which applies it when the event is taken from
    /// the store, as the store cannot see this output. The difference from C is in timing
    /// only: an event queued while an identical one is unsent here, which then goes out
    /// completely before the event is taken, is sent where C would have dropped it. That
    /// is one event at most per path and token each time the output drains, and never one
    /// fewer: an event is dropped only while an identical one is certainly not yet sent, so
    /// the watcher still looks after the change.
    #[inline]
    pub fn pull_events(&mut self, store: &mut Store, host: &mut dyn Host) {
        // The idle case (nothing queued) is on every pump's path: inline, without the quota
        // lookup or the event loop's stack frame.
        if self.fault.is_none() && store.queued_events(self.id) != 0 {
            self.move_events(store, host);
        }
    }

    fn move_events(&mut self, store: &mut Store, host: &mut dyn Host) {
        let mut room = self.room(store);
        while room > 0 {
            let Some((event, key)) = store.pop_event_with_key(self.id) else {
                break;
            };
            if let Some(key) = key
                && self.is_unsent(key, &event.path, &event.token)
            {
                continue;
            }
            let start = self.out.len();
            dispatch::push_event(&mut self.out, &event.path, &event.token);
            if self.queued(store, host, start, key) {
                room = room.saturating_sub(1);
            }
        }
    }

    /// Whether a watch event with `path` and `token` (and key `key`) is unsent in the output.
    fn is_unsent(&self, key: u64, path: &[u8], token: &[u8]) -> bool {
        self.unsent_events
            .find(key, |e| {
                e.key == key
                    && self
                        .out
                        .get(e.start..e.end)
                        .is_some_and(|payload| dispatch::is_event_payload(payload, path, token))
            })
            .is_some()
    }

    /// Bytes allocated for output (what an idle connection keeps).
    #[cfg(test)]
    pub(crate) fn out_capacity(&self) -> usize {
        self.out.capacity()
    }

    /// The bytes waiting to be sent.
    pub fn output(&self) -> &[u8] {
        self.out.get(self.sent..).unwrap_or_default()
    }

    /// Marks `n` bytes of [`Connection::output`] as sent (what they held no longer counts
    /// for the domain).
    pub fn consume_output(&mut self, store: &mut Store, n: usize) {
        let before = self.sent;
        self.sent = self.sent.saturating_add(n).min(self.out.len());
        let mut whole = 0usize;
        while let Some(&Unsent { end, event_key }) = self.ends.front()
            && end <= self.sent
        {
            self.ends.pop_front();
            self.head = end;
            whole = whole.saturating_add(1);
            if let Some(key) = event_key
                && let Ok(entry) = self.unsent_events.find_entry(key, |e| e.end == end)
            {
                entry.remove();
            }
        }
        store.output_sent(self.id, whole, self.sent.saturating_sub(before));
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
            self.head = 0;
            self.ends.clear();
            self.unsent_events.clear();
            if self.out.capacity() > RETAINED_OUTPUT {
                let keep = match store.conn_domid(self.id) {
                    Some(d) if store.is_privileged(d) => RETAINED_OUTPUT_PRIVILEGED,
                    _ => RETAINED_OUTPUT,
                };
                self.out.shrink_to(keep);
            }
        } else if self.head > 64 * 1024 && self.head > self.out.len() / 2 {
            // Keep the buffer from growing without bound under a slow reader. Messages
            // wholly sent go; a message partly sent stays whole (its start is where an
            // unsent event's bytes are compared, and what the state stream carries).
            let gone = self.head;
            self.out.drain(..gone);
            for unsent in self.ends.iter_mut() {
                unsent.end = unsent.end.saturating_sub(gone);
            }
            for event in self.unsent_events.iter_mut() {
                event.start = event.start.saturating_sub(gone);
                event.end = event.end.saturating_sub(gone);
            }
            self.sent = self.sent.saturating_sub(gone);
            self.head = 0;
        }
    }

    /// Forgets partial input and unsent output and resets the connection's state in the store
    /// (watches, transactions, queued events): a ring reconnection.
    pub fn reset(&mut self, store: &mut Store) {
        store.output_dropped(self.id);
        self.header_fill = 0;
        self.current = None;
        self.payload.clear();
        self.out.clear();
        self.sent = 0;
        self.head = 0;
        self.ends.clear();
        self.unsent_events.clear();
        self.fault = None;
        store.reset_connection(self.id);
    }

    /// The fault that ended the connection, if any.
    pub fn fault(&self) -> Option<Fault> {
        self.fault
    }

    /// What the state stream (`store::state`) carries of the connection.
    pub(crate) fn parts(&self) -> Parts<'_> {
        let (input_header, input_payload) = match self.current {
            Some(_) => (&self.header[..], self.payload.as_slice()),
            None => (
                self.header.get(..self.header_fill).unwrap_or_default(),
                &[][..],
            ),
        };
        let partly_sent = !self.ends.is_empty() && self.sent > self.head;
        let (sent_prefix, partial_len) = match self.ends.front() {
            Some(front) if partly_sent => (
                self.out.get(self.head..self.sent).unwrap_or_default(),
                front.end.saturating_sub(self.sent),
            ),
            _ => (&[][..], 0),
        };
        Parts {
            input_header,
            input_payload,
            sent_prefix,
            unsent: self.output(),
            partial_len,
        }
    }

    /// A connection restored from a state stream, for the store connection `id` (already
    /// restored in `store`): `input` holds at most one request, partly read (or whole, held
    /// for a protected transaction); `sent_prefix` the bytes already sent of a message partly
    /// sent, whose other `partial_len` bytes start `unsent` (without the prefix, the message
    /// is taken as it is, opaque); `unsent` otherwise whole messages. The output is charged
    /// to the connection's domain as if just queued, the events among it indexed for the rule
    /// against identical events.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn restored(
        id: ConnId,
        access: Access,
        limits: Limits,
        store: &mut Store,
        input: &[u8],
        sent_prefix: &[u8],
        partial_len: usize,
        unsent: &[u8],
    ) -> Result<Connection, &'static str> {
        let mut c = Connection::new(id, access, limits);
        match input.split_first_chunk::<HEADER_LEN>() {
            None => {
                let room = c.header.get_mut(..input.len()).ok_or("input too long")?;
                room.copy_from_slice(input);
                c.header_fill = input.len();
            }
            Some((head, payload)) => {
                let header = Header::decode(head);
                if header.check().is_err() {
                    return Err("input header invalid");
                }
                if payload.len() > header.len as usize {
                    return Err("input holds more than one request");
                }
                c.header = *head;
                c.current = Some(header);
                c.payload = payload.to_vec();
            }
        }
        let total = sent_prefix.len().saturating_add(unsent.len());
        c.out.reserve_exact(total);
        c.out.extend_from_slice(sent_prefix);
        c.out.extend_from_slice(unsent);
        let mut at = 0usize;
        if sent_prefix.is_empty() && partial_len > 0 {
            // A partly sent message without its start (C xenstored writes only the rest):
            // sent as it is, not parsed.
            if partial_len > c.out.len() {
                return Err("partial reply longer than the output");
            }
            let rest = c.out.split_off(partial_len);
            c.queued(store, &mut super::NoHost, 0, None);
            c.out.extend_from_slice(&rest);
            at = partial_len;
        }
        while at < c.out.len() {
            let head = c
                .out
                .get(at..at.saturating_add(HEADER_LEN))
                .and_then(|h| <&[u8; HEADER_LEN]>::try_from(h).ok())
                .ok_or("output ends inside a message header")?;
            let header = Header::decode(head);
            let start = at;
            let end = at
                .saturating_add(HEADER_LEN)
                .saturating_add(header.len as usize);
            if header.len as usize > crate::wire::PAYLOAD_MAX || end > c.out.len() {
                return Err("output ends inside a message");
            }
            let key = if header.kind() == Some(crate::wire::MsgType::WatchEvent) {
                let payload = c.out.get(start.saturating_add(HEADER_LEN)..end);
                payload
                    .and_then(dispatch::event_parts)
                    .and_then(|(path, token)| store.event_key_of(path, token))
            } else {
                None
            };
            // `queued` looks at the bytes from `start` to the end of `out`: the message alone.
            let rest = c.out.split_off(end);
            c.queued(store, &mut super::NoHost, start, key);
            c.out.extend_from_slice(&rest);
            at = end;
        }
        if !sent_prefix.is_empty() {
            if c.ends.is_empty() {
                return Err("sent bytes without a message");
            }
            c.sent = sent_prefix.len();
            store.output_sent(id, 0, sent_prefix.len());
        }
        Ok(c)
    }
}

/// What the state stream carries of a [`Connection`] (see [`Connection::parts`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Parts<'a> {
    /// The header received of the request being read (partly, or whole with its payload).
    pub(crate) input_header: &'a [u8],
    /// The payload received of that request.
    pub(crate) input_payload: &'a [u8],
    /// The bytes already sent of a message partly sent.
    pub(crate) sent_prefix: &'a [u8],
    /// The output not yet sent: the rest of the message partly sent, then whole messages.
    pub(crate) unsent: &'a [u8],
    /// How many bytes of `unsent` are the rest of the message partly sent (0 if none).
    pub(crate) partial_len: usize,
}
