//! Errors a request can fail with, exactly as Xen names them.
//!
//! The reply to a failed request is an `ERROR` message whose payload is the error's *name*
//! (`"EINVAL"`), not a number (`docs/misc/xenstore.txt`, "Error replies"). The variants are
//! declared in the order of `xsd_errors[]` in Xen's `xs_wire.h`; new ones only go at the end.

use core::fmt;

/// A XenStore error, named as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XsError {
    /// Malformed request: bad path, bad argument, bad number.
    Inval,
    /// The caller may not do this to this node (or may not know it exists).
    Acces,
    /// Already exists (a duplicate watch).
    Exist,
    /// Is a directory.
    IsDir,
    /// No such node, transaction, watch or domain.
    NoEnt,
    /// Out of memory, or over the caller's memory quota.
    NoMem,
    /// Over a quota (nodes, node size, watches, transactions, permissions, ...).
    NoSpc,
    /// Internal inconsistency.
    Io,
    /// Directory not empty.
    NotEmpty,
    /// Unknown or unsupported request type.
    NoSys,
    /// Read-only connection.
    RoFs,
    /// Busy (a transaction started inside a transaction).
    Busy,
    /// Transaction conflict: retry it.
    Again,
    /// Already connected.
    IsConn,
    /// The reply would exceed the maximum payload.
    TooBig,
    /// Operation not permitted (changing a node's owner without privilege).
    Perm,
}

impl XsError {
    /// Every error, in `xs_wire.h` order.
    pub const ALL: [XsError; 16] = [
        XsError::Inval,
        XsError::Acces,
        XsError::Exist,
        XsError::IsDir,
        XsError::NoEnt,
        XsError::NoMem,
        XsError::NoSpc,
        XsError::Io,
        XsError::NotEmpty,
        XsError::NoSys,
        XsError::RoFs,
        XsError::Busy,
        XsError::Again,
        XsError::IsConn,
        XsError::TooBig,
        XsError::Perm,
    ];

    /// The name sent in an `ERROR` reply (without the terminating NUL).
    pub const fn name(self) -> &'static str {
        match self {
            XsError::Inval => "EINVAL",
            XsError::Acces => "EACCES",
            XsError::Exist => "EEXIST",
            XsError::IsDir => "EISDIR",
            XsError::NoEnt => "ENOENT",
            XsError::NoMem => "ENOMEM",
            XsError::NoSpc => "ENOSPC",
            XsError::Io => "EIO",
            XsError::NotEmpty => "ENOTEMPTY",
            XsError::NoSys => "ENOSYS",
            XsError::RoFs => "EROFS",
            XsError::Busy => "EBUSY",
            XsError::Again => "EAGAIN",
            XsError::IsConn => "EISCONN",
            XsError::TooBig => "E2BIG",
            XsError::Perm => "EPERM",
        }
    }

    /// Parses an error name as sent on the wire (without the NUL).
    pub fn from_name(name: &[u8]) -> Option<XsError> {
        XsError::ALL
            .into_iter()
            .find(|e| e.name().as_bytes() == name)
    }
}

impl fmt::Display for XsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl core::error::Error for XsError {}

/// Result of a store operation.
pub type XsResult<T> = Result<T, XsError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_wire_order() {
        let names: alloc::vec::Vec<&str> = XsError::ALL.iter().map(|e| e.name()).collect();
        assert_eq!(
            names,
            [
                "EINVAL",
                "EACCES",
                "EEXIST",
                "EISDIR",
                "ENOENT",
                "ENOMEM",
                "ENOSPC",
                "EIO",
                "ENOTEMPTY",
                "ENOSYS",
                "EROFS",
                "EBUSY",
                "EAGAIN",
                "EISCONN",
                "E2BIG",
                "EPERM"
            ]
        );
        for e in XsError::ALL {
            assert_eq!(XsError::from_name(e.name().as_bytes()), Some(e));
        }
        assert_eq!(XsError::from_name(b"ENOPE"), None);
    }
}
