//! The wire format: the 16-byte message header, message types, and the payload layouts of
//! `docs/misc/xenstore.txt` and Xen's `xs_wire.h`.
//!
//! A [`Header`] is decoded from exactly 16 bytes (little-endian, as on x86) and validated
//! once by [`Header::check`]; a payload is then read into private memory and parsed from
//! there by the [`Args`] helpers, which never panic whatever the bytes.

use alloc::vec::Vec;
use core::fmt;

use crate::domid::{DomId, parse_decimal};
use crate::error::{XsError, XsResult};

/// Bytes in a message header.
pub const HEADER_LEN: usize = 16;

/// Largest payload of a message in either direction (`XENSTORE_PAYLOAD_MAX`).
pub const PAYLOAD_MAX: usize = 4096;

/// Message types of `enum xsd_sockmsg_type`. Value 20 (`RESTRICT`) was removed from Xen and
/// is not a type any more.
#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum MsgType {
    /// `CONTROL` (formerly `DEBUG`).
    Control = 0,
    /// `DIRECTORY`.
    Directory = 1,
    /// `READ`.
    Read = 2,
    /// `GET_PERMS`.
    GetPerms = 3,
    /// `WATCH`.
    Watch = 4,
    /// `UNWATCH`.
    Unwatch = 5,
    /// `TRANSACTION_START`.
    TransactionStart = 6,
    /// `TRANSACTION_END`.
    TransactionEnd = 7,
    /// `INTRODUCE`.
    Introduce = 8,
    /// `RELEASE`.
    Release = 9,
    /// `GET_DOMAIN_PATH`.
    GetDomainPath = 10,
    /// `WRITE`.
    Write = 11,
    /// `MKDIR`.
    Mkdir = 12,
    /// `RM`.
    Rm = 13,
    /// `SET_PERMS`.
    SetPerms = 14,
    /// `WATCH_EVENT` (only from the store).
    WatchEvent = 15,
    /// `ERROR` (only from the store).
    Error = 16,
    /// `IS_DOMAIN_INTRODUCED`.
    IsDomainIntroduced = 17,
    /// `RESUME`.
    Resume = 18,
    /// `SET_TARGET`.
    SetTarget = 19,
    /// `RESET_WATCHES`.
    ResetWatches = 21,
    /// `DIRECTORY_PART`.
    DirectoryPart = 22,
    /// `GET_FEATURE`.
    GetFeature = 23,
    /// `SET_FEATURE`.
    SetFeature = 24,
    /// `GET_QUOTA`.
    GetQuota = 25,
    /// `SET_QUOTA`.
    SetQuota = 26,
}

impl MsgType {
    /// Every type, in numeric order.
    pub const ALL: [MsgType; 26] = [
        MsgType::Control,
        MsgType::Directory,
        MsgType::Read,
        MsgType::GetPerms,
        MsgType::Watch,
        MsgType::Unwatch,
        MsgType::TransactionStart,
        MsgType::TransactionEnd,
        MsgType::Introduce,
        MsgType::Release,
        MsgType::GetDomainPath,
        MsgType::Write,
        MsgType::Mkdir,
        MsgType::Rm,
        MsgType::SetPerms,
        MsgType::WatchEvent,
        MsgType::Error,
        MsgType::IsDomainIntroduced,
        MsgType::Resume,
        MsgType::SetTarget,
        MsgType::ResetWatches,
        MsgType::DirectoryPart,
        MsgType::GetFeature,
        MsgType::SetFeature,
        MsgType::GetQuota,
        MsgType::SetQuota,
    ];

    /// The type's name as Xen's tools print it.
    pub const fn name(self) -> &'static str {
        match self {
            MsgType::Control => "CONTROL",
            MsgType::Directory => "DIRECTORY",
            MsgType::Read => "READ",
            MsgType::GetPerms => "GET_PERMS",
            MsgType::Watch => "WATCH",
            MsgType::Unwatch => "UNWATCH",
            MsgType::TransactionStart => "TRANSACTION_START",
            MsgType::TransactionEnd => "TRANSACTION_END",
            MsgType::Introduce => "INTRODUCE",
            MsgType::Release => "RELEASE",
            MsgType::GetDomainPath => "GET_DOMAIN_PATH",
            MsgType::Write => "WRITE",
            MsgType::Mkdir => "MKDIR",
            MsgType::Rm => "RM",
            MsgType::SetPerms => "SET_PERMS",
            MsgType::WatchEvent => "WATCH_EVENT",
            MsgType::Error => "ERROR",
            MsgType::IsDomainIntroduced => "IS_DOMAIN_INTRODUCED",
            MsgType::Resume => "RESUME",
            MsgType::SetTarget => "SET_TARGET",
            MsgType::ResetWatches => "RESET_WATCHES",
            MsgType::DirectoryPart => "DIRECTORY_PART",
            MsgType::GetFeature => "GET_FEATURE",
            MsgType::SetFeature => "SET_FEATURE",
            MsgType::GetQuota => "GET_QUOTA",
            MsgType::SetQuota => "SET_QUOTA",
        }
    }
}

impl TryFrom<u32> for MsgType {
    type Error = u32;

    fn try_from(value: u32) -> Result<MsgType, u32> {
        MsgType::ALL
            .into_iter()
            .find(|t| *t as u32 == value)
            .ok_or(value)
    }
}

impl fmt::Display for MsgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A message header (`struct xsd_sockmsg`). The type is kept as the raw number: an unknown
/// type is answered with an error, it does not break the stream.
///
/// # Examples
///
/// ```
/// use xs_core::wire::{Args, HEADER_LEN, Header, MsgType, push_message};
///
/// let mut bytes = Vec::new();
/// push_message(&mut bytes, MsgType::Write as u32, 1, 0, b"/vm/name\0guest");
/// let header = Header::decode(bytes[..HEADER_LEN].try_into().unwrap());
/// assert_eq!(header.check(), Ok(()));
/// assert_eq!(header.kind(), Some(MsgType::Write));
/// let payload = &bytes[HEADER_LEN..][..header.len as usize];
/// assert_eq!(Args(payload).path_and_value(), Ok((&b"/vm/name"[..], &b"guest"[..])));
///
/// // A header announcing more than XENSTORE_PAYLOAD_MAX bytes ends the connection.
/// let too_long = Header { len: 5000, ..header };
/// assert!(too_long.check().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Header {
    /// `type`: a [`MsgType`] number, or anything a peer sent.
    pub msg_type: u32,
    /// `req_id`: echoed in the reply.
    pub req_id: u32,
    /// `tx_id`: the transaction, 0 for none.
    pub tx_id: u32,
    /// `len`: payload bytes that follow.
    pub len: u32,
}

/// A fault that ends a connection (as opposed to an error reply to one request).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fault {
    /// A header announced more than `XENSTORE_PAYLOAD_MAX` bytes of payload: xenstored kills
    /// such connections (`docs/misc/xenstore.txt`).
    PayloadTooLong(u32),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::PayloadTooLong(len) => {
                write!(
                    f,
                    "payload of {len} bytes announced (at most {PAYLOAD_MAX})"
                )
            }
        }
    }
}

impl Header {
    /// Decodes a header.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Header {
        let word = |i: usize| {
            let mut w = [0u8; 4];
            if let Some(src) = bytes.get(i..i.saturating_add(4)) {
                w.copy_from_slice(src);
            }
            u32::from_le_bytes(w)
        };
        Header {
            msg_type: word(0),
            req_id: word(4),
            tx_id: word(8),
            len: word(12),
        }
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        for (chunk, word) in
            out.chunks_exact_mut(4)
                .zip([self.msg_type, self.req_id, self.tx_id, self.len])
        {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        out
    }

    /// Checks the announced payload length.
    pub fn check(&self) -> Result<(), Fault> {
        if self.len as usize > PAYLOAD_MAX {
            Err(Fault::PayloadTooLong(self.len))
        } else {
            Ok(())
        }
    }

    /// The message type, if it is one.
    pub fn kind(&self) -> Option<MsgType> {
        MsgType::try_from(self.msg_type).ok()
    }
}

/// A request or reply payload, with the argument layouts of `docs/misc/xenstore.txt`.
#[derive(Clone, Copy, Debug)]
pub struct Args<'a>(pub &'a [u8]);

impl<'a> Args<'a> {
    /// The NUL-terminated strings of the payload, in order. Bytes after the last NUL (an
    /// unterminated tail) are not a string: this is how `WATCH`, `UNWATCH` and `SET_PERMS`
    /// tolerate trailing garbage, as C xenstored's `get_strings` does.
    pub fn strings(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let payload = self.0;
        let body = payload
            .iter()
            .rposition(|&b| b == 0)
            .and_then(|last| payload.get(..last));
        body.into_iter().flat_map(|b| b.split(|&x| x == 0))
    }

    /// Number of NUL-terminated strings.
    pub fn count(&self) -> usize {
        self.0.iter().filter(|&&b| b == 0).count()
    }

    /// The single argument of requests like `READ`: the payload must contain exactly one
    /// NUL, at its end (C xenstored's `onearg`).
    pub fn one(&self) -> XsResult<&'a [u8]> {
        match self.0.split_last() {
            Some((0, arg)) if !arg.contains(&0) => Ok(arg),
            _ => Err(XsError::Inval),
        }
    }

    /// `<path>|<value|>`: the path up to the first NUL, everything after it the value.
    pub fn path_and_value(&self) -> XsResult<(&'a [u8], &'a [u8])> {
        let nul = self.0.iter().position(|&b| b == 0).ok_or(XsError::Inval)?;
        let path = self.0.get(..nul).ok_or(XsError::Inval)?;
        let value = self.0.get(nul.saturating_add(1)..).unwrap_or_default();
        Ok((path, value))
    }

    /// Exactly `N` NUL-terminated strings (an unterminated tail is ignored).
    pub fn exactly<const N: usize>(&self) -> XsResult<[&'a [u8]; N]> {
        if self.count() != N {
            return Err(XsError::Inval);
        }
        self.at_least::<N>()
    }

    /// The first `N` NUL-terminated strings; more are allowed.
    pub fn at_least<const N: usize>(&self) -> XsResult<[&'a [u8]; N]> {
        let mut out = [&[][..]; N];
        let mut it = self.strings();
        for slot in out.iter_mut() {
            *slot = it.next().ok_or(XsError::Inval)?;
        }
        Ok(out)
    }
}

/// Parses a domid argument (`EINVAL` if malformed).
pub fn domid_arg(text: &[u8]) -> XsResult<DomId> {
    DomId::parse(text).ok_or(XsError::Inval)
}

/// Parses an unsigned decimal argument that must fit `u32`.
pub fn u32_arg(text: &[u8]) -> XsResult<u32> {
    parse_decimal(text)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or(XsError::Inval)
}

/// Appends a whole message (header and payload) to `out`.
pub fn push_message(out: &mut Vec<u8>, msg_type: u32, req_id: u32, tx_id: u32, payload: &[u8]) {
    push_header(out, msg_type, req_id, tx_id, payload.len());
    out.extend_from_slice(payload);
}

/// Appends the header of a message whose `len` payload bytes the caller appends next.
pub fn push_header(out: &mut Vec<u8>, msg_type: u32, req_id: u32, tx_id: u32, len: usize) {
    let header = Header {
        msg_type,
        req_id,
        tx_id,
        len: u32::try_from(len).unwrap_or(u32::MAX),
    };
    out.extend_from_slice(&header.encode());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_check() {
        let h = Header {
            msg_type: 2,
            req_id: 0xdead_beef,
            tx_id: 7,
            len: 4096,
        };
        let bytes = h.encode();
        assert_eq!(&bytes[..4], &[2, 0, 0, 0]);
        assert_eq!(Header::decode(&bytes), h);
        assert_eq!(h.check(), Ok(()));
        assert_eq!(h.kind(), Some(MsgType::Read));
        let long = Header { len: 4097, ..h };
        assert_eq!(long.check(), Err(Fault::PayloadTooLong(4097)));
    }

    #[test]
    fn types() {
        for t in MsgType::ALL {
            assert_eq!(MsgType::try_from(t as u32), Ok(t));
        }
        assert_eq!(MsgType::try_from(20), Err(20));
        assert_eq!(MsgType::try_from(27), Err(27));
        assert_eq!(MsgType::try_from(0xffff), Err(0xffff));
        assert_eq!(MsgType::ResetWatches as u32, 21);
        assert_eq!(MsgType::SetQuota as u32, 26);
    }

    #[test]
    fn argument_layouts() {
        assert_eq!(Args(b"/a\0").one(), Ok(&b"/a"[..]));
        assert_eq!(Args(b"/a").one(), Err(XsError::Inval));
        assert_eq!(Args(b"/a\0b\0").one(), Err(XsError::Inval));
        assert_eq!(Args(b"").one(), Err(XsError::Inval));
        assert_eq!(
            Args(b"/a\0v\0al").path_and_value(),
            Ok((&b"/a"[..], &b"v\0al"[..]))
        );
        assert_eq!(Args(b"/a\0").path_and_value(), Ok((&b"/a"[..], &b""[..])));
        assert_eq!(Args(b"/a").path_and_value(), Err(XsError::Inval));
        let strings: Vec<&[u8]> = Args(b"p\0t\0garbage").strings().collect();
        assert_eq!(strings, [&b"p"[..], b"t"]);
        assert_eq!(Args(b"p\0t\0garbage").exactly::<2>(), Ok([&b"p"[..], b"t"]));
        assert_eq!(Args(b"p\0t\0x\0").exactly::<2>(), Err(XsError::Inval));
        assert_eq!(Args(b"p\0\0").exactly::<2>(), Ok([&b"p"[..], b""]));
        assert_eq!(Args(b"nonul").strings().count(), 0);
        assert_eq!(Args(b"").strings().count(), 0);
        assert_eq!(Args(b"\0").strings().collect::<Vec<_>>(), [&b""[..]]);
        assert_eq!(Args(b"a\0b\0c\0").at_least::<2>(), Ok([&b"a"[..], b"b"]));
        assert_eq!(u32_arg(b"4294967295"), Ok(u32::MAX));
        assert_eq!(u32_arg(b"4294967296"), Err(XsError::Inval));
        assert_eq!(domid_arg(b"x"), Err(XsError::Inval));
    }

    #[test]
    fn message_encoding() {
        let mut out = Vec::new();
        push_message(&mut out, MsgType::Read as u32, 5, 0, b"hi");
        assert_eq!(out.len(), 18);
        let mut h = [0u8; 16];
        h.copy_from_slice(&out[..16]);
        assert_eq!(Header::decode(&h).len, 2);
    }
}
