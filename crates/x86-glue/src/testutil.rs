//! Test helpers: a guest's XenStore client on its end of a ring.

use std::string::String;
use std::vec::Vec;

use xs_core::DomId;
use xs_core::wire::{HEADER_LEN, Header, MsgType, push_message};
use xs_ring::{Guest, Page};

/// One message as a guest sees it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Msg {
    pub(crate) kind: u32,
    pub(crate) req_id: u32,
    pub(crate) payload: Vec<u8>,
}

impl Msg {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// The payload of a watch event.
pub(crate) fn watch_event(path: &str, token: &str) -> Vec<u8> {
    std::format!("{path}\0{token}\0").into_bytes()
}

/// A guest's client.
pub(crate) struct Client<P: Page> {
    pub(crate) domid: DomId,
    pub(crate) guest: Guest<P>,
    pub(crate) req_id: u32,
    pub(crate) partial: Vec<u8>,
}

impl<P: Page> Client<P> {
    pub(crate) fn new(domid: DomId, page: P) -> Client<P> {
        Client {
            domid,
            guest: Guest::new(page),
            req_id: 0,
            partial: Vec::new(),
        }
    }

    /// Writes a request into the ring (which must have room).
    pub(crate) fn send(&mut self, kind: MsgType, payload: &[u8]) -> u32 {
        self.req_id += 1;
        let mut bytes = Vec::new();
        push_message(&mut bytes, kind as u32, self.req_id, 0, payload);
        assert_eq!(self.guest.write(&bytes).unwrap(), bytes.len(), "ring full");
        self.req_id
    }

    /// Every whole message waiting in the reply ring.
    pub(crate) fn receive(&mut self) -> Vec<Msg> {
        let mut buf = [0u8; 1024];
        loop {
            let n = self.guest.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            self.partial.extend_from_slice(&buf[..n]);
        }
        let mut out = Vec::new();
        while self.partial.len() >= HEADER_LEN {
            let h = Header::decode(self.partial[..HEADER_LEN].try_into().unwrap());
            let end = HEADER_LEN + h.len as usize;
            if self.partial.len() < end {
                break;
            }
            out.push(Msg {
                kind: h.msg_type,
                req_id: h.req_id,
                payload: self.partial[HEADER_LEN..end].to_vec(),
            });
            self.partial.drain(..end);
        }
        out
    }
}
