//! Test helpers: a guest's XenStore client on its end of a ring ([`GuestClient`], whose
//! failures are test failures here).

use std::vec::Vec;

use xs_core::wire::MsgType;
use xs_ring::{Guest, Page};
use xs_serve::guest::{GuestClient, Message};

/// The payload of a watch event.
pub(crate) fn watch_event(path: &str, token: &str) -> Vec<u8> {
    std::format!("{path}\0{token}\0").into_bytes()
}

/// A guest's client.
pub(crate) struct Client<P: Page> {
    client: GuestClient<P>,
}

impl<P: Page> Client<P> {
    pub(crate) fn new(page: P) -> Client<P> {
        Client {
            client: GuestClient::new(page),
        }
    }

    /// The ring itself.
    pub(crate) fn guest(&mut self) -> &mut Guest<P> {
        self.client.ring()
    }

    /// Writes a request into the ring (which must have room).
    pub(crate) fn send(&mut self, kind: MsgType, payload: &[u8]) -> u32 {
        let id = self.client.send(kind, 0, payload).unwrap();
        assert!(!self.client.has_unsent(), "ring full");
        id
    }

    /// Every whole message waiting in the reply ring.
    pub(crate) fn receive(&mut self) -> Vec<Message> {
        self.client.receive().unwrap()
    }
}
