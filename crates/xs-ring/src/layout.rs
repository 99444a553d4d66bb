//! The page: `struct xenstore_domain_interface` of Xen's `xs_wire.h`, byte for byte, and the
//! values of its fields. (The `XENSTORE_ERROR_*` values of the `error` field are
//! [`crate::RingFault`]'s codes.)

use bitflags::bitflags;

/// Bytes in each of the two rings (`XENSTORE_RING_SIZE`).
pub const RING_SIZE: usize = 1024;

bitflags! {
    /// `XENSTORE_SERVER_FEATURE_*`: what the server offers, in the page's `server_features`.
    /// The store's `GET_FEATURE`/`SET_FEATURE` use the same bits.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
    pub struct ServerFeatures: u32 {
        /// `XENSTORE_SERVER_FEATURE_RECONNECTION`: the guest may ask for a ring reset.
        const RECONNECTION = 1;
        /// `XENSTORE_SERVER_FEATURE_ERROR`: the `error` field says why the server stopped.
        const ERROR = 2;
        /// `XENSTORE_SERVER_FEATURE_WATCHDEPTH`: `WATCH` takes a depth.
        const WATCH_DEPTH = 4;
        /// `XENSTORE_SERVER_FEATURE_DOMID_ANY`: permissions may name `DOMID_ANY`.
        const DOMID_ANY = 8;
    }
}

impl ServerFeatures {
    /// The features that concern the ring itself (the server end acts on them).
    pub const RING: ServerFeatures = ServerFeatures::RECONNECTION.union(ServerFeatures::ERROR);
}

/// `connection`: the steady state.
pub const CONNECTED: u32 = 0;
/// `connection`: the guest asked for a reconnection.
pub const RECONNECT: u32 = 1;

/// `error`: no error (`XENSTORE_ERROR_NONE`).
pub const ERROR_NONE: u32 = 0;

/// The shared page, as Xen lays it out. Only its address and the field offsets are used:
/// every access goes through a [`crate::Page`], never through a reference to this struct
/// (the peer writes it concurrently).
#[repr(C)]
#[derive(Debug)]
pub struct Interface {
    /// Requests to the store.
    pub req: [u8; RING_SIZE],
    /// Replies and watch events from the store.
    pub rsp: [u8; RING_SIZE],
    /// Next request byte the server reads (written by the server).
    pub req_cons: u32,
    /// Next request byte the guest writes (written by the guest).
    pub req_prod: u32,
    /// Next reply byte the guest reads (written by the guest).
    pub rsp_cons: u32,
    /// Next reply byte the server writes (written by the server).
    pub rsp_prod: u32,
    /// `XENSTORE_SERVER_FEATURE_*` the server offers.
    pub server_features: u32,
    /// `XENSTORE_CONNECTED` or `XENSTORE_RECONNECT`.
    pub connection: u32,
    /// `XENSTORE_ERROR_*` set by the server when it stops serving.
    pub error: u32,
    /// The event channel for dom0less guests (Xen 4.21), 0 when unused.
    pub evtchn_port: u32,
}

// The offsets of docs/misc/xenstore-ring.txt, checked at compile time.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(offset_of!(Interface, req) == 0);
    assert!(offset_of!(Interface, rsp) == 1024);
    assert!(offset_of!(Interface, req_cons) == 2048);
    assert!(offset_of!(Interface, req_prod) == 2052);
    assert!(offset_of!(Interface, rsp_cons) == 2056);
    assert!(offset_of!(Interface, rsp_prod) == 2060);
    assert!(offset_of!(Interface, server_features) == 2064);
    assert!(offset_of!(Interface, connection) == 2068);
    assert!(offset_of!(Interface, error) == 2072);
    assert!(offset_of!(Interface, evtchn_port) == 2076);
    assert!(size_of::<Interface>() == 2080);
    assert!(size_of::<Interface>() <= 4096);
};

/// A 32-bit field of the page.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Field {
    /// `req_cons` (the server's).
    ReqCons,
    /// `req_prod` (the guest's).
    ReqProd,
    /// `rsp_cons` (the guest's).
    RspCons,
    /// `rsp_prod` (the server's).
    RspProd,
    /// `server_features` (the server's).
    ServerFeatures,
    /// `connection` (the guest sets 1, the server sets 0).
    Connection,
    /// `error` (the server's).
    Error,
    /// `evtchn_port` (Xen's).
    EvtchnPort,
}

impl Field {
    /// Offset of the field in [`Interface`].
    pub const fn offset(self) -> usize {
        use core::mem::offset_of;
        match self {
            Field::ReqCons => offset_of!(Interface, req_cons),
            Field::ReqProd => offset_of!(Interface, req_prod),
            Field::RspCons => offset_of!(Interface, rsp_cons),
            Field::RspProd => offset_of!(Interface, rsp_prod),
            Field::ServerFeatures => offset_of!(Interface, server_features),
            Field::Connection => offset_of!(Interface, connection),
            Field::Error => offset_of!(Interface, error),
            Field::EvtchnPort => offset_of!(Interface, evtchn_port),
        }
    }

    /// Index among the fields (for pages that keep them in an array): 0 for `req_cons`
    /// up to 7 for `evtchn_port`.
    pub const fn index(self) -> usize {
        // The fields follow the two rings, 4 bytes each (checked above).
        self.offset().saturating_sub(2 * RING_SIZE) / 4
    }
}

/// One of the two rings.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ring {
    /// Requests, guest to server.
    Req,
    /// Replies and events, server to guest.
    Rsp,
}
