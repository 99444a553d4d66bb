//! The crate's errors.

use core::fmt;

use xs_core::XsError;

use crate::grant::GrantError;
use crate::hypercall::Errno;

/// Why a hypervisor service or the stub domain's setup failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Error {
    /// A hypercall failed.
    Hypercall(Errno),
    /// Mapping or unmapping a grant failed.
    Grant(GrantError),
    /// Every page of the map area is in use.
    MapAreaFull,
    /// The map area is unusable (unaligned, empty or wrapping).
    BadMapArea,
    /// A page given for `shared_info` or the hypercall page is not page-aligned.
    Unaligned,
    /// Neither a hypercall page nor a known CPU vendor: no way to make hypercalls.
    NoHypercalls,
    /// No event channel for the privileged domain: no `--event`, and none in its ring.
    NoEventChannel,
    /// The store refused (out of memory, out of connection slots).
    Store(XsError),
}

/// The dispatcher's errors, with ours as its services' errors.
impl From<xs_serve::Error<Error>> for Error {
    fn from(e: xs_serve::Error<Error>) -> Self {
        match e {
            xs_serve::Error::Services(e) => e,
            xs_serve::Error::NoEventChannel => Error::NoEventChannel,
            xs_serve::Error::Store(e) => Error::Store(e),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Hypercall(e) => write!(f, "hypercall failed: {e}"),
            Error::Grant(e) => fmt::Display::fmt(e, f),
            Error::MapAreaFull => f.write_str("no free page in the map area"),
            Error::BadMapArea => f.write_str("the map area is not a page-aligned, non-empty range"),
            Error::Unaligned => f.write_str("page not page-aligned"),
            Error::NoHypercalls => {
                f.write_str("no hypercall page and an unknown CPU vendor: cannot call Xen")
            }
            Error::NoEventChannel => {
                f.write_str("no event channel for the privileged domain (--event, ring)")
            }
            Error::Store(e) => write!(f, "store: {e}"),
        }
    }
}

impl From<Errno> for Error {
    fn from(e: Errno) -> Self {
        Error::Hypercall(e)
    }
}

impl From<GrantError> for Error {
    fn from(e: GrantError) -> Self {
        Error::Grant(e)
    }
}
