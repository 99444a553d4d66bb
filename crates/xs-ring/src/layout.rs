//! The page: `struct xenstore_domain_interface` of Xen's `xs_wire.h`, byte for byte.

/// Bytes in each of the two rings (`XENSTORE_RING_SIZE`).
pub const RING_SIZE: usize = 1024;

/// `XENSTORE_SERVER_FEATURE_RECONNECTION`: the guest may ask for a ring reset.
pub const FEATURE_RECONNECTION: u32 = 1;
/// `XENSTORE_SERVER_FEATURE_ERROR`: the `error` field says why the server stopped.
pub const FEATURE_ERROR: u32 = 2;

/// `connection`: the steady state.
pub const CONNECTED: u32 = 0;
/// `connection`: the guest asked for a reconnection.
pub const RECONNECT: u32 = 1;

/// `error`: no error.
pub const ERROR_NONE: u32 = 0;
/// `error`: communication problem (event channel not working).
pub const ERROR_COMM: u32 = 1;
/// `error`: inconsistent producer or consumer index.
pub const ERROR_RINGIDX: u32 = 2;
/// `error`: protocol violation (a message longer than the maximum).
pub const ERROR_PROTO: u32 = 3;

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
        match self {
            Field::ReqCons => 2048,
            Field::ReqProd => 2052,
            Field::RspCons => 2056,
            Field::RspProd => 2060,
            Field::ServerFeatures => 2064,
            Field::Connection => 2068,
            Field::Error => 2072,
            Field::EvtchnPort => 2076,
        }
    }

    /// Index among the fields (for pages that keep them in an array).
    pub const fn index(self) -> usize {
        (self.offset() - 2048) / 4
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
