//! Node permissions: the `r`/`w`/`b`/`n` + domid entries of `GET_PERMS`/`SET_PERMS`.
//!
//! The first entry names the node's owner, who always has full access; its access letter is
//! the default for every domain without an entry of its own. Later entries grant one domain
//! (or, with [`DomId::ANY`], every domain) the access they name (`docs/misc/xenstore.txt`).

use alloc::vec::Vec;
use core::fmt;

use bitflags::bitflags;

use crate::domid::{DomId, push_decimal};
use crate::error::{XsError, XsResult};

bitflags! {
    /// Access named by one permission entry.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
    pub struct Access: u8 {
        /// `r`: may read the node and list its children.
        const READ = 0x01;
        /// `w`: may write, create children, remove.
        const WRITE = 0x02;
    }
}

/// One permission entry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Perm {
    /// The domain the entry is about.
    pub domid: DomId,
    /// What it may do.
    pub access: Access,
}

impl Perm {
    /// An entry for `domid` with `access`.
    pub const fn new(domid: DomId, access: Access) -> Perm {
        Perm { domid, access }
    }

    /// An owner / default entry with no access for others (`n<domid>`).
    pub const fn owner(domid: DomId) -> Perm {
        Perm::new(domid, Access::empty())
    }

    /// Parses `r5`, `w0`, `b12`, `n3`.
    ///
    /// # Examples
    ///
    /// ```
    /// use xs_core::perms::{Access, Perm};
    /// use xs_core::DomId;
    ///
    /// assert_eq!(Perm::parse(b"r5"), Ok(Perm::new(DomId(5), Access::READ)));
    /// assert_eq!(Perm::parse(b"b0")?.access, Access::READ | Access::WRITE);
    /// assert!(Perm::parse(b"x5").is_err());
    /// assert_eq!(Perm::owner(DomId(3)).to_string(), "n3");
    /// # Ok::<(), xs_core::XsError>(())
    /// ```
    pub fn parse(text: &[u8]) -> XsResult<Perm> {
        let (&letter, digits) = text.split_first().ok_or(XsError::Inval)?;
        let access = match letter {
            b'n' => Access::empty(),
            b'r' => Access::READ,
            b'w' => Access::WRITE,
            b'b' => Access::READ | Access::WRITE,
            _ => return Err(XsError::Inval),
        };
        let domid = DomId::parse(digits).ok_or(XsError::Inval)?;
        Ok(Perm { domid, access })
    }

    /// The entry's letter.
    pub fn letter(self) -> u8 {
        match (
            self.access.contains(Access::READ),
            self.access.contains(Access::WRITE),
        ) {
            (false, false) => b'n',
            (true, false) => b'r',
            (false, true) => b'w',
            (true, true) => b'b',
        }
    }

    /// Appends the entry as text (`b0`), without a terminator.
    pub fn push_text(self, out: &mut Vec<u8>) {
        out.push(self.letter());
        push_decimal(out, u64::from(self.domid.0));
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", char::from(self.letter()), self.domid)
    }
}

/// Parses a permission list given as NUL-separated entries, as in `SET_PERMS`.
pub fn parse_list<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> XsResult<Vec<Perm>> {
    let list = entries
        .into_iter()
        .map(Perm::parse)
        .collect::<XsResult<Vec<Perm>>>()?;
    if list.is_empty() {
        return Err(XsError::Inval);
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn parse_and_format() {
        for text in ["n0", "r5", "w12", "b65535"] {
            let p = Perm::parse(text.as_bytes()).unwrap();
            assert_eq!(p.to_string(), text);
            let mut out = Vec::new();
            p.push_text(&mut out);
            assert_eq!(out, text.as_bytes());
        }
        for bad in ["", "x1", "r", "r-1", "r65536", "rr1", "R1"] {
            assert_eq!(Perm::parse(bad.as_bytes()), Err(XsError::Inval), "{bad:?}");
        }
        assert_eq!(parse_list([]), Err(XsError::Inval));
    }
}
