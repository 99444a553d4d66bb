//! A tiny XenStore wire-protocol client (`docs/misc/xenstore.txt`, `xs_wire.h`).
//!
//! Every message is a 16-byte header of four little-endian `u32`s — `type`, `req_id`,
//! `tx_id`, `len` — followed by `len` (at most 4096) payload bytes. Replies carry the
//! request's `req_id` and `tx_id`; an error reply has type `ERROR` and the errno name
//! (`"ENOENT\0"`) as payload. Watch events (`WATCH_EVENT`) may arrive between a request and
//! its reply; [`Client::request`] sets them aside in a queue.
//!
//! The same operations are offered over any transport that moves whole messages
//! ([`Transport`]): a Unix socket ([`Wire`]) and, for C xenstored's guests, a ring page
//! (`crate::ring`).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Message types (`enum xsd_sockmsg_type` in `xs_wire.h`).
#[allow(missing_docs, reason = "the protocol's names")]
pub mod ty {
    pub const CONTROL: u32 = 0;
    pub const DIRECTORY: u32 = 1;
    pub const READ: u32 = 2;
    pub const GET_PERMS: u32 = 3;
    pub const WATCH: u32 = 4;
    pub const UNWATCH: u32 = 5;
    pub const TRANSACTION_START: u32 = 6;
    pub const TRANSACTION_END: u32 = 7;
    pub const INTRODUCE: u32 = 8;
    pub const RELEASE: u32 = 9;
    pub const GET_DOMAIN_PATH: u32 = 10;
    pub const WRITE: u32 = 11;
    pub const MKDIR: u32 = 12;
    pub const RM: u32 = 13;
    pub const SET_PERMS: u32 = 14;
    pub const WATCH_EVENT: u32 = 15;
    pub const ERROR: u32 = 16;
    pub const IS_DOMAIN_INTRODUCED: u32 = 17;
    pub const RESET_WATCHES: u32 = 21;
    pub const GET_FEATURE: u32 = 23;
    pub const SET_FEATURE: u32 = 24;
    /// Xen 4.19's `XS_GET_QUOTA` and `XS_SET_QUOTA` (not in C xenstored 4.17; C answers
    /// them from 4.22).
    pub const GET_QUOTA: u32 = 25;
    pub const SET_QUOTA: u32 = 26;
}

/// Largest payload the protocol allows (`XENSTORE_PAYLOAD_MAX`).
pub const PAYLOAD_MAX: usize = 4096;

/// One message, as it travels.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Msg {
    /// Message type ([`ty`]).
    pub ty: u32,
    /// Request id, echoed in the reply.
    pub req_id: u32,
    /// Transaction id (0: none).
    pub tx_id: u32,
    /// The payload.
    pub payload: Vec<u8>,
}

impl Msg {
    /// Header and payload, ready to send.
    pub fn encode(&self) -> Vec<u8> {
        encode(self.ty, self.req_id, self.tx_id, &self.payload)
    }
}

/// Header plus payload; `len` is the payload's real length (saturated to `u32`).
///
/// # Examples
///
/// ```
/// use xs_e2e::wire::{decode_header, encode, ty};
///
/// let msg = encode(ty::READ, 7, 0, b"/tool\0");
/// assert_eq!(decode_header(msg[..16].try_into().unwrap()), (ty::READ, 7, 0, 6));
/// assert_eq!(&msg[16..], b"/tool\0");
/// ```
pub fn encode(ty: u32, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    header(ty, req_id, tx_id, len)
        .into_iter()
        .chain(payload.iter().copied())
        .collect()
}

/// Just a header, with any `len` (hostile tests lie about it).
pub fn header(ty: u32, req_id: u32, tx_id: u32, len: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    for (chunk, v) in h.chunks_exact_mut(4).zip([ty, req_id, tx_id, len]) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    h
}

/// Decodes a 16-byte header into `(type, req_id, tx_id, len)`.
pub fn decode_header(h: &[u8; 16]) -> (u32, u32, u32, u32) {
    let w = |i: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&h[i * 4..i * 4 + 4]);
        u32::from_le_bytes(b)
    };
    (w(0), w(1), w(2), w(3))
}

/// `a\0b\0...` : each string followed by a NUL.
pub fn strings(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p);
        v.push(0);
    }
    v
}

/// A reply: the payload, or the errno name of an `ERROR` reply (`"EACCES"`).
pub type XsResult = Result<Vec<u8>, String>;

/// Something that moves whole messages to and from a XenStore daemon.
pub trait Transport {
    /// Sends one message.
    fn send_msg(&mut self, msg: &Msg) -> io::Result<()>;
    /// Receives the next message (reply or watch event).
    fn recv_msg(&mut self) -> io::Result<Msg>;
}

/// The request/reply operations, over any [`Transport`]. `I/O` failures panic: in these
/// tests a daemon that drops a well-behaved client is a failure.
pub trait Client: Transport {
    /// The queue where watch events that arrived before a reply wait.
    fn events(&mut self) -> &mut VecDeque<Msg>;
    /// The next request id.
    fn next_req_id(&mut self) -> u32;

    /// Sends a request and waits for its reply (which must echo its `req_id` and `tx_id`).
    fn request_tx(&mut self, ty: u32, tx_id: u32, payload: &[u8]) -> XsResult {
        let req_id = self.next_req_id();
        let msg = Msg {
            ty,
            req_id,
            tx_id,
            payload: payload.to_vec(),
        };
        self.send_msg(&msg)
            .unwrap_or_else(|e| panic!("sending request type {ty}: {e}"));
        loop {
            let reply = self
                .recv_msg()
                .unwrap_or_else(|e| panic!("waiting for the reply to request type {ty}: {e}"));
            if reply.ty == ty::WATCH_EVENT {
                self.events().push_back(reply);
                continue;
            }
            assert_eq!(
                reply.req_id, req_id,
                "reply to request type {ty} has another req_id: {reply:?}"
            );
            assert_eq!(
                reply.tx_id, tx_id,
                "reply to request type {ty} has another tx_id: {reply:?}"
            );
            if reply.ty == ty::ERROR {
                let name = reply.payload.split(|&b| b == 0).next().unwrap_or_default();
                return Err(String::from_utf8_lossy(name).into_owned());
            }
            assert_eq!(reply.ty, ty, "reply of another type: {reply:?}");
            return Ok(reply.payload);
        }
    }

    /// A request outside any transaction.
    fn request(&mut self, ty: u32, payload: &[u8]) -> XsResult {
        self.request_tx(ty, 0, payload)
    }

    /// `TRANSACTION_START`, as the transaction id (a reply that is no number panics).
    fn transaction_start(&mut self) -> Result<u32, String> {
        let id = self.request(ty::TRANSACTION_START, b"\0")?;
        let id = id
            .strip_suffix(b"\0")
            .expect("NUL-terminated transaction id");
        Ok(std::str::from_utf8(id)
            .ok()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("transaction id {id:?} is not a number")))
    }

    /// `READ path`.
    fn read(&mut self, path: &str) -> XsResult {
        self.request(ty::READ, &strings(&[path.as_bytes()]))
    }

    /// `WRITE path value`.
    fn write(&mut self, path: &str, value: &[u8]) -> XsResult {
        let mut p = strings(&[path.as_bytes()]);
        p.extend_from_slice(value);
        self.request(ty::WRITE, &p)
    }

    /// `MKDIR path`.
    fn mkdir(&mut self, path: &str) -> XsResult {
        self.request(ty::MKDIR, &strings(&[path.as_bytes()]))
    }

    /// `RM path`.
    fn rm(&mut self, path: &str) -> XsResult {
        self.request(ty::RM, &strings(&[path.as_bytes()]))
    }

    /// `DIRECTORY path`, as names.
    fn directory(&mut self, path: &str) -> Result<Vec<String>, String> {
        let p = self.request(ty::DIRECTORY, &strings(&[path.as_bytes()]))?;
        Ok(split_strings(&p))
    }

    /// `GET_PERMS path`, as `["n0", "r5"]`.
    fn get_perms(&mut self, path: &str) -> Result<Vec<String>, String> {
        let p = self.request(ty::GET_PERMS, &strings(&[path.as_bytes()]))?;
        Ok(split_strings(&p))
    }

    /// `SET_PERMS path perms...`.
    fn set_perms(&mut self, path: &str, perms: &[&str]) -> XsResult {
        let mut parts: Vec<&[u8]> = vec![path.as_bytes()];
        parts.extend(perms.iter().map(|p| p.as_bytes()));
        self.request(ty::SET_PERMS, &strings(&parts))
    }

    /// `WATCH path token`.
    fn watch(&mut self, path: &str, token: &str) -> XsResult {
        self.request(ty::WATCH, &strings(&[path.as_bytes(), token.as_bytes()]))
    }

    /// `CONTROL args...`.
    fn control(&mut self, args: &[&str]) -> XsResult {
        let parts: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.request(ty::CONTROL, &strings(&parts))
    }

    /// `INTRODUCE domid mfn port` (the values of mfn and port do not matter to a daemon
    /// without a hypervisor).
    fn introduce(&mut self, domid: u32) -> XsResult {
        let d = domid.to_string();
        self.request(ty::INTRODUCE, &strings(&[d.as_bytes(), b"4096", b"7"]))
    }

    /// `RELEASE domid`.
    fn release(&mut self, domid: u32) -> XsResult {
        let d = domid.to_string();
        self.request(ty::RELEASE, &strings(&[d.as_bytes()]))
    }

    /// The next watch event as `(path, token)`, waiting for it if none is queued.
    fn next_event(&mut self) -> (String, String) {
        let msg = match self.events().pop_front() {
            Some(m) => m,
            None => {
                let m = self
                    .recv_msg()
                    .unwrap_or_else(|e| panic!("waiting for a watch event: {e}"));
                assert_eq!(
                    m.ty,
                    ty::WATCH_EVENT,
                    "unexpected message while waiting for a watch event: {m:?}"
                );
                m
            }
        };
        let parts = split_strings(&msg.payload);
        assert!(parts.len() >= 2, "malformed watch event: {msg:?}");
        (parts[0].clone(), parts[1].clone())
    }
}

/// Splits a NUL-separated list (a trailing NUL or none).
pub fn split_strings(p: &[u8]) -> Vec<String> {
    let p = p.strip_suffix(&[0]).unwrap_or(p);
    if p.is_empty() {
        return Vec::new();
    }
    p.split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// A client on a Unix socket.
#[derive(Debug)]
pub struct Wire {
    stream: UnixStream,
    req_id: u32,
    events: VecDeque<Msg>,
}

impl Wire {
    /// Connects to `path`; replies must come within 10 s.
    pub fn connect(path: &Path) -> io::Result<Wire> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(Wire {
            stream,
            req_id: 0,
            events: VecDeque::new(),
        })
    }

    /// The socket, for tests that misbehave on purpose.
    pub fn stream(&mut self) -> &mut UnixStream {
        &mut self.stream
    }
}

/// Reads one whole message from `r`.
pub fn read_msg(r: &mut impl Read) -> io::Result<Msg> {
    let mut h = [0u8; 16];
    r.read_exact(&mut h)?;
    let (ty, req_id, tx_id, len) = decode_header(&h);
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > PAYLOAD_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("reply payload of {len} bytes"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Msg {
        ty,
        req_id,
        tx_id,
        payload,
    })
}

impl Transport for Wire {
    fn send_msg(&mut self, msg: &Msg) -> io::Result<()> {
        self.stream.write_all(&msg.encode())
    }

    fn recv_msg(&mut self) -> io::Result<Msg> {
        read_msg(&mut self.stream)
    }
}

impl Client for Wire {
    fn events(&mut self) -> &mut VecDeque<Msg> {
        &mut self.events
    }

    fn next_req_id(&mut self) -> u32 {
        self.req_id = self.req_id.wrapping_add(1);
        self.req_id
    }
}
