//! A small blocking XenStore client for Unix sockets, written for load generation.
//!
//! It speaks the wire protocol of Xen's `xs_wire.h` (`docs/misc/xenstore.txt`): every message
//! is a 16-byte little-endian header `{type, req_id, tx_id, len}` followed by `len` bytes of
//! payload (at most 4096). A reply carries its request's `type` (or `ERROR`, with the error
//! name as payload), `req_id` and `tx_id`. Watch events (`WATCH_EVENT`, `req_id` 0) may arrive
//! between any two replies; they are set aside in a queue and handed out by
//! [`Client::next_event`].
//!
//! Requests can be pipelined: [`Client::queue`] appends a request to the send buffer and
//! returns its `req_id`, [`Client::flush`] sends everything queued, and
//! [`Client::recv_reply`] returns the reply to a given `req_id` (replies that arrive for
//! other requests are kept until asked for). [`Client::pipeline`] keeps a window of requests
//! in flight. Every read has a timeout: a daemon that stops answering produces
//! [`ClientError::Timeout`], never a hang.
//!
//! Buffers are reused: in steady state a request/reply round trip allocates nothing.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub use xs_core::wire::PAYLOAD_MAX;
use xs_core::wire::push_header;
pub use xs_core::wire::{HEADER_LEN, Header, MsgType};

/// What can go wrong talking to a daemon.
#[derive(Debug)]
pub enum ClientError {
    /// Connecting or a socket operation failed.
    Io(io::Error),
    /// No complete message arrived within the read timeout.
    Timeout,
    /// The daemon closed the connection.
    Closed,
    /// The daemon sent something that is not a valid message or not the expected reply.
    Protocol(String),
    /// The daemon answered with `ERROR` and this error name (`EAGAIN`, `ENOENT`, ...).
    Xen(String),
}

impl ClientError {
    /// Whether this is the error reply `name`.
    pub fn is_xen(&self, name: &str) -> bool {
        matches!(self, ClientError::Xen(n) if n == name)
    }

    /// Whether the connection is unusable after this error (as opposed to an error reply).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, ClientError::Xen(_))
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "socket error: {e}"),
            ClientError::Timeout => f.write_str("timed out waiting for the daemon"),
            ClientError::Closed => f.write_str("the daemon closed the connection"),
            ClientError::Protocol(m) => write!(f, "protocol error: {m}"),
            ClientError::Xen(name) => write!(f, "error reply {name}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout,
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset => ClientError::Closed,
            _ => ClientError::Io(e),
        }
    }
}

/// Result of client operations.
pub type Result<T> = std::result::Result<T, ClientError>;

/// A reply, borrowed from the client's buffer until the next call on the client.
#[derive(Clone, Copy, Debug)]
pub struct Reply<'a> {
    /// The header.
    pub header: Header,
    /// The payload.
    pub payload: &'a [u8],
}

impl Reply<'_> {
    /// The error name if this is an `ERROR` reply.
    pub fn error(&self) -> Option<String> {
        (self.header.kind() == Some(MsgType::Error)).then(|| {
            let name = self.payload.split(|&b| b == 0).next().unwrap_or_default();
            String::from_utf8_lossy(name).into_owned()
        })
    }

    /// `Err` if this is an `ERROR` reply.
    pub fn ok(self) -> Result<Self> {
        match self.error() {
            Some(name) => Err(ClientError::Xen(name)),
            None => Ok(self),
        }
    }
}

/// A watch event: the path that fired and the watch's token.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WatchEvent {
    /// The path that changed (or the watched path, for the initial event).
    pub path: Vec<u8>,
    /// The token given to `WATCH`.
    pub token: Vec<u8>,
}

/// How a request's payload is made: NUL-terminated strings, then optionally raw bytes.
#[derive(Clone, Copy, Debug)]
pub struct Payload<'a> {
    /// Each is sent followed by a NUL.
    pub strings: &'a [&'a [u8]],
    /// Sent as is after the strings (a `WRITE`'s value).
    pub tail: &'a [u8],
}

impl<'a> Payload<'a> {
    /// NUL-terminated `strings`.
    pub fn strings(strings: &'a [&'a [u8]]) -> Payload<'a> {
        Payload { strings, tail: &[] }
    }

    fn len(&self) -> usize {
        self.strings.iter().map(|s| s.len() + 1).sum::<usize>() + self.tail.len()
    }
}

/// Smallest free space kept at the end of the read buffer before a read.
const READ_CHUNK: usize = 64 * 1024;

/// A blocking connection to a XenStore daemon's Unix socket.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    /// Received bytes; `rbuf[rstart..rend]` not consumed yet.
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    /// Requests queued but not sent.
    wbuf: Vec<u8>,
    next_req_id: u32,
    /// Watch events that arrived while waiting for replies.
    events: VecDeque<WatchEvent>,
    /// Replies that arrived before they were asked for.
    early: Vec<(Header, Vec<u8>)>,
    /// The payload of the last reply taken from `early`.
    early_payload: Vec<u8>,
}

impl Client {
    /// Connects to `path`; every later read gives up after `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client> {
        let stream = UnixStream::connect(path).map_err(ClientError::Io)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Client {
            stream,
            rbuf: vec![0; READ_CHUNK * 2],
            rstart: 0,
            rend: 0,
            wbuf: Vec::with_capacity(8192),
            next_req_id: 1,
            events: VecDeque::new(),
            early: Vec::new(),
            early_payload: Vec::new(),
        })
    }

    /// Queues a request (not sent until [`Client::flush`]); returns its `req_id`.
    pub fn queue(&mut self, ty: MsgType, tx_id: u32, payload: Payload<'_>) -> Result<u32> {
        let len = payload.len();
        if len > PAYLOAD_MAX {
            return Err(ClientError::Protocol(format!(
                "request payload of {len} bytes exceeds {PAYLOAD_MAX}"
            )));
        }
        let req_id = self.next_req_id;
        // Request ids are ours to choose; 0 is avoided so that it stays the watch events'.
        self.next_req_id = self.next_req_id.checked_add(1).unwrap_or(1);
        push_header(&mut self.wbuf, ty as u32, req_id, tx_id, len);
        for s in payload.strings {
            self.wbuf.extend_from_slice(s);
            self.wbuf.push(0);
        }
        self.wbuf.extend_from_slice(payload.tail);
        Ok(req_id)
    }

    /// Sends everything queued.
    pub fn flush(&mut self) -> Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf)?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Reads more bytes from the socket (blocking, with the timeout).
    fn fill(&mut self) -> Result<()> {
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        } else if self.rbuf.len() - self.rend < READ_CHUNK {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        if self.rbuf.len() - self.rend < READ_CHUNK {
            self.rbuf.resize(self.rend + READ_CHUNK, 0);
        }
        loop {
            match self.stream.read(&mut self.rbuf[self.rend..]) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => {
                    self.rend += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The header of the complete message at the front of the buffer, if there is one.
    fn complete(&self) -> Result<Option<Header>> {
        let avail = &self.rbuf[self.rstart..self.rend];
        let Some(head) = avail.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let header = Header::decode(head);
        if header.check().is_err() {
            return Err(ClientError::Protocol(format!(
                "message of type {} with a payload of {} bytes",
                header.msg_type, header.len
            )));
        }
        Ok((avail.len() >= HEADER_LEN + header.len as usize).then_some(header))
    }

    /// Whether a complete message is already buffered (no blocking).
    pub fn has_message(&self) -> bool {
        matches!(self.complete(), Ok(Some(_)))
    }

    /// Takes the next message off the stream (blocking); returns its header and the range of
    /// its payload in `rbuf`, valid until the next `fill`.
    fn next_message(&mut self) -> Result<(Header, usize, usize)> {
        loop {
            if let Some(header) = self.complete()? {
                let start = self.rstart + HEADER_LEN;
                let end = start + header.len as usize;
                self.rstart = end;
                return Ok((header, start, end));
            }
            self.fill()?;
        }
    }

    /// Sets a watch event aside.
    fn keep_event(&mut self, start: usize, end: usize) {
        let mut parts = self.rbuf[start..end].split(|&b| b == 0);
        let path = parts.next().unwrap_or_default().to_vec();
        let token = parts.next().unwrap_or_default().to_vec();
        self.events.push_back(WatchEvent { path, token });
    }

    /// The reply to `req_id` (blocking). Watch events that arrive first are queued; replies to
    /// other requests are kept for later.
    pub fn recv_reply(&mut self, req_id: u32) -> Result<Reply<'_>> {
        self.recv_where(|h| h.req_id == req_id)
    }

    /// The next reply, whichever request it answers (blocking); watch events are queued.
    pub fn recv_any_reply(&mut self) -> Result<Reply<'_>> {
        self.recv_where(|_| true)
    }

    /// The first reply whose header is `wanted`: one kept earlier, else the next to arrive.
    /// Watch events are queued, other replies kept (a bounded number).
    fn recv_where(&mut self, wanted: impl Fn(&Header) -> bool) -> Result<Reply<'_>> {
        if let Some(i) = self.early.iter().position(|(h, _)| wanted(h)) {
            let (header, payload) = self.early.swap_remove(i);
            self.early_payload = payload;
            return Ok(Reply {
                header,
                payload: &self.early_payload,
            });
        }
        let (header, start, end) = loop {
            let (header, start, end) = self.next_message()?;
            if header.kind() == Some(MsgType::WatchEvent) {
                self.keep_event(start, end);
            } else if wanted(&header) {
                break (header, start, end);
            } else {
                if self.early.len() > 4096 {
                    return Err(ClientError::Protocol(
                        "too many replies to unknown requests".into(),
                    ));
                }
                self.early.push((header, self.rbuf[start..end].to_vec()));
            }
        };
        Ok(Reply {
            header,
            payload: &self.rbuf[start..end],
        })
    }

    /// The next watch event (blocking, with the timeout). Replies that arrive meanwhile are
    /// kept for [`Client::recv_reply`].
    pub fn next_event(&mut self) -> Result<WatchEvent> {
        loop {
            if let Some(ev) = self.events.pop_front() {
                return Ok(ev);
            }
            let (header, start, end) = self.next_message()?;
            if header.kind() == Some(MsgType::WatchEvent) {
                self.keep_event(start, end);
            } else {
                self.early.push((header, self.rbuf[start..end].to_vec()));
            }
        }
    }

    /// Watch events received but not taken yet.
    pub fn pending_events(&self) -> usize {
        self.events.len()
    }

    /// Drops the queued watch events.
    pub fn clear_events(&mut self) {
        self.events.clear();
    }

    /// One request, one reply; an `ERROR` reply becomes `Err(Xen(name))`.
    pub fn call(&mut self, ty: MsgType, tx_id: u32, payload: Payload<'_>) -> Result<Reply<'_>> {
        let req_id = self.queue(ty, tx_id, payload)?;
        self.flush()?;
        let reply = self.recv_reply(req_id)?.ok()?;
        if reply.header.msg_type != ty as u32 {
            return Err(ClientError::Protocol(format!(
                "reply of type {} to a request of type {ty}",
                reply.header.msg_type
            )));
        }
        Ok(reply)
    }

    /// `READ`: the node's value.
    pub fn read(&mut self, tx_id: u32, path: &[u8]) -> Result<&[u8]> {
        Ok(self
            .call(MsgType::Read, tx_id, Payload::strings(&[path]))?
            .payload)
    }

    /// `WRITE`.
    pub fn write(&mut self, tx_id: u32, path: &[u8], value: &[u8]) -> Result<()> {
        let payload = Payload {
            strings: &[path],
            tail: value,
        };
        self.call(MsgType::Write, tx_id, payload).map(drop)
    }

    /// `MKDIR`.
    pub fn mkdir(&mut self, tx_id: u32, path: &[u8]) -> Result<()> {
        self.call(MsgType::Mkdir, tx_id, Payload::strings(&[path]))
            .map(drop)
    }

    /// `RM`.
    pub fn rm(&mut self, tx_id: u32, path: &[u8]) -> Result<()> {
        self.call(MsgType::Rm, tx_id, Payload::strings(&[path]))
            .map(drop)
    }

    /// `RM`, where a missing node is fine.
    pub fn rm_if_present(&mut self, tx_id: u32, path: &[u8]) -> Result<()> {
        match self.rm(tx_id, path) {
            Err(e) if e.is_xen("ENOENT") => Ok(()),
            other => other,
        }
    }

    /// `DIRECTORY`: the children's names, each followed by a NUL.
    pub fn directory(&mut self, tx_id: u32, path: &[u8]) -> Result<&[u8]> {
        Ok(self
            .call(MsgType::Directory, tx_id, Payload::strings(&[path]))?
            .payload)
    }

    /// `GET_PERMS`: the permission strings, each followed by a NUL.
    pub fn get_perms(&mut self, tx_id: u32, path: &[u8]) -> Result<&[u8]> {
        Ok(self
            .call(MsgType::GetPerms, tx_id, Payload::strings(&[path]))?
            .payload)
    }

    /// `SET_PERMS` with permission strings such as `n0`, `r5`.
    pub fn set_perms(&mut self, tx_id: u32, path: &[u8], perms: &[&[u8]]) -> Result<()> {
        let mut strings: Vec<&[u8]> = Vec::with_capacity(perms.len() + 1);
        strings.push(path);
        strings.extend_from_slice(perms);
        self.call(MsgType::SetPerms, tx_id, Payload::strings(&strings))
            .map(drop)
    }

    /// `WATCH`.
    pub fn watch(&mut self, path: &[u8], token: &[u8]) -> Result<()> {
        self.call(MsgType::Watch, 0, Payload::strings(&[path, token]))
            .map(drop)
    }

    /// `UNWATCH`.
    pub fn unwatch(&mut self, path: &[u8], token: &[u8]) -> Result<()> {
        self.call(MsgType::Unwatch, 0, Payload::strings(&[path, token]))
            .map(drop)
    }

    /// `TRANSACTION_START`: the new transaction's id.
    pub fn tx_start(&mut self) -> Result<u32> {
        let reply = self.call(MsgType::TransactionStart, 0, Payload::strings(&[b""]))?;
        let digits = reply.payload.split(|&b| b == 0).next().unwrap_or_default();
        std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                ClientError::Protocol(format!(
                    "TRANSACTION_START reply {:?}",
                    String::from_utf8_lossy(reply.payload)
                ))
            })
    }

    /// `TRANSACTION_END`: `Ok(true)` if committed (or aborted, when `commit` is false),
    /// `Ok(false)` if the daemon answered `EAGAIN` (the transaction must be redone).
    pub fn tx_end(&mut self, tx_id: u32, commit: bool) -> Result<bool> {
        let arg: &[u8] = if commit { b"T" } else { b"F" };
        match self.call(MsgType::TransactionEnd, tx_id, Payload::strings(&[arg])) {
            Ok(_) => Ok(true),
            Err(e) if e.is_xen("EAGAIN") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `INTRODUCE` of domain `domid` with its ring's frame number and event channel.
    pub fn introduce(&mut self, domid: u32, gfn: u64, evtchn: u32) -> Result<()> {
        let (d, g, e) = (domid.to_string(), gfn.to_string(), evtchn.to_string());
        let strings: [&[u8]; 3] = [d.as_bytes(), g.as_bytes(), e.as_bytes()];
        self.call(MsgType::Introduce, 0, Payload::strings(&strings))
            .map(drop)
    }

    /// `RELEASE` of domain `domid`.
    pub fn release(&mut self, domid: u32) -> Result<()> {
        let d = domid.to_string();
        self.call(MsgType::Release, 0, Payload::strings(&[d.as_bytes()]))
            .map(drop)
    }

    /// Keeps up to `window` requests in flight until `make` stops producing them, then waits
    /// for the remaining replies. `make(i, payload)` describes request `i` (counting from 0)
    /// by filling `payload` (cleared before each call) and returning `(type, tx_id)`, or
    /// returns `None` when there are no more requests; the payload's bytes are sent as they
    /// are (include the NULs). `on_reply(i, reply)` is called for every reply, in arrival
    /// order. Returns the number of requests made.
    pub fn pipeline(
        &mut self,
        window: usize,
        mut make: impl FnMut(u64, &mut Vec<u8>) -> Option<(MsgType, u32)>,
        mut on_reply: impl FnMut(u64, Reply<'_>) -> Result<()>,
    ) -> Result<u64> {
        let window = window.max(1);
        let mut scratch = Vec::with_capacity(PAYLOAD_MAX);
        let mut issued = 0u64;
        let mut in_flight = 0usize;
        let mut more = true;
        // req_id of request 0; ids are consecutive (modulo the skipped 0).
        let first = self.next_req_id;
        let index_of = |req_id: u32| -> u64 {
            let d = u64::from(req_id.wrapping_sub(first));
            // Skip the hole at 0 if the ids wrapped.
            if req_id < first { d - 1 } else { d }
        };
        loop {
            while more && in_flight < window {
                scratch.clear();
                match make(issued, &mut scratch) {
                    Some((ty, tx_id)) => {
                        let payload = Payload {
                            strings: &[],
                            tail: &scratch,
                        };
                        self.queue(ty, tx_id, payload)?;
                        issued += 1;
                        in_flight += 1;
                    }
                    None => more = false,
                }
            }
            self.flush()?;
            if in_flight == 0 {
                return Ok(issued);
            }
            // One blocking receive, then whatever else is already buffered.
            loop {
                let reply = self.recv_any_reply()?;
                let i = index_of(reply.header.req_id);
                if i >= issued {
                    return Err(ClientError::Protocol(format!(
                        "reply with unknown req_id {}",
                        reply.header.req_id
                    )));
                }
                on_reply(i, reply)?;
                in_flight -= 1;
                if in_flight == 0 || !self.has_message() {
                    break;
                }
            }
        }
    }
}

/// Appends `parts` as NUL-terminated strings (a pipelined request's payload).
pub fn push_strings(out: &mut Vec<u8>, parts: &[&[u8]]) {
    for p in parts {
        out.extend_from_slice(p);
        out.push(0);
    }
}

/// Appends a `WRITE` payload: `path`, NUL, `value`.
pub fn push_write(out: &mut Vec<u8>, path: &[u8], value: &[u8]) {
    out.extend_from_slice(path);
    out.push(0);
    out.extend_from_slice(value);
}
