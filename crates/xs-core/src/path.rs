//! Paths: validation, the canonical absolute form, and segment helpers.
//!
//! Rules from `docs/misc/xenstore.txt`: the characters are ASCII alphanumerics and `-/_@`;
//! doubled and trailing slashes are forbidden (except the root `/`); the empty path is
//! forbidden; absolute paths are at most [`ABS_PATH_MAX`] bytes and relative ones at most
//! [`REL_PATH_MAX`]. A relative path is taken relative to `/local/domain/<domid>` of the caller.
//! Paths starting with `@` name special watches (`@introduceDomain`, `@releaseDomain`).
//!
//! One deliberate difference from C xenstored: `@` is accepted only as the first byte of a
//! special watch path. C xenstored accepts it anywhere in a node path, although the
//! specification says it "should be avoided except to specify special watches"; refusing it
//! keeps node paths and special paths from ever being confused.

use alloc::vec::Vec;

use crate::domid::{DomId, push_decimal};
use crate::error::{XsError, XsResult};

/// Longest absolute path (`XENSTORE_ABS_PATH_MAX`).
pub const ABS_PATH_MAX: usize = 3072;
/// Longest relative path as sent by a client (`XENSTORE_REL_PATH_MAX`).
pub const REL_PATH_MAX: usize = 2048;
/// Where a domain's relative paths are rooted.
pub const LOCAL_DOMAIN: &[u8] = b"/local/domain/";

/// What a validated path names.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PathKind {
    /// A node of the tree (absolute, starts with `/`).
    Node,
    /// A special watch path (starts with `@`).
    Special,
}

/// A validated path: its kind and, for paths sent relative, the length of the prefix that was
/// prepended (`/local/domain/<domid>/`), so that events can be reported relative again.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Canonical {
    /// Node or special path.
    pub kind: PathKind,
    /// Length of the implicit prefix, 0 for a path sent absolute.
    pub relative_prefix: usize,
}

/// Whether `b` may appear in a path: ASCII alphanumerics and `-/_`, and `@` if `at_ok`
/// (0 or 1). Arithmetic on the byte only (no table, no branch), so that the loops below
/// vectorize.
#[inline]
fn allowed(b: u8, at_ok: u8) -> u8 {
    let lower = (b | 0x20).wrapping_sub(b'a') < 26;
    let digit = b.wrapping_sub(b'0') < 10;
    u8::from(lower | digit | (b == b'-') | (b == b'_') | (b == b'/'))
        | (u8::from(b == b'@') & at_ok)
}

/// One check over a path: only allowed characters (`@` only if `allow_at`), no `//`, and no
/// trailing `/` unless the path is `/` itself. Paths are validated on every request, so both
/// passes are written without early exits or loop-carried state other than an OR, which the
/// compiler turns into 16 or 32 bytes per instruction (a byte-at-a-time loop cost about 50 ns
/// for a typical 40-byte path).
fn well_formed(raw: &[u8], allow_at: bool) -> bool {
    let at_ok = u8::from(allow_at);
    let bad_char = raw
        .iter()
        .fold(0u8, |bad, &b| bad | (allowed(b, at_ok) ^ 1));
    let double_slash = raw
        .iter()
        .zip(raw.iter().skip(1))
        .fold(0u8, |acc, (&a, &b)| {
            acc | (u8::from(a == b'/') & u8::from(b == b'/'))
        });
    let trailing_slash = raw.len() > 1 && raw.last() == Some(&b'/');
    (bad_char | double_slash) == 0 && !trailing_slash
}

/// Validates `raw` as sent by `caller` and returns its canonical absolute form: `raw` itself
/// when it is absolute (or special), else `/local/domain/<domid>/raw` built in `buf`.
/// Special paths are accepted only if `allow_special`.
///
/// Every violation is `EINVAL`. The per-domain `path-max` quota is checked by the store, which
/// knows the caller's quotas (see [`local_suffix_len`]).
pub fn canonicalize<'a>(
    raw: &'a [u8],
    caller: DomId,
    allow_special: bool,
    buf: &'a mut Vec<u8>,
) -> XsResult<(&'a [u8], Canonical)> {
    match check(raw, allow_special)? {
        Sent::Absolute(canonical) => Ok((raw, canonical)),
        Sent::Relative => {
            start_home(buf, caller);
            join(buf, raw)
        }
    }
}

/// How a valid path was sent.
enum Sent {
    /// Absolute or special: canonical as it is.
    Absolute(Canonical),
    /// Relative to the caller's home.
    Relative,
}

/// Validates `raw` (see [`canonicalize`]).
fn check(raw: &[u8], allow_special: bool) -> XsResult<Sent> {
    let first = *raw.first().ok_or(XsError::Inval)?;
    let special = first == b'@';
    if (special && !allow_special) || !well_formed(raw, special) {
        return Err(XsError::Inval);
    }
    if special || first == b'/' {
        if raw.len() > ABS_PATH_MAX {
            return Err(XsError::Inval);
        }
        let kind = if special {
            PathKind::Special
        } else {
            PathKind::Node
        };
        return Ok(Sent::Absolute(Canonical {
            kind,
            relative_prefix: 0,
        }));
    }
    if raw.len() > REL_PATH_MAX {
        return Err(XsError::Inval);
    }
    Ok(Sent::Relative)
}

/// Makes `buf` hold `caller`'s home and a `/`, for [`join`].
fn start_home(buf: &mut Vec<u8>, caller: DomId) {
    buf.clear();
    push_home(buf, caller);
    buf.push(b'/');
}

/// Appends relative `raw` to `buf`, which holds a home and its trailing `/`.
fn join<'a>(buf: &'a mut Vec<u8>, raw: &[u8]) -> XsResult<(&'a [u8], Canonical)> {
    let relative_prefix = buf.len();
    buf.extend_from_slice(raw);
    if buf.len() > ABS_PATH_MAX {
        return Err(XsError::Inval);
    }
    Ok((
        buf.as_slice(),
        Canonical {
            kind: PathKind::Node,
            relative_prefix,
        },
    ))
}

/// A buffer for [`canonicalize`] that keeps the home prefix it last wrote: a connection's
/// requests mostly come relative and from one domain, and writing `/local/domain/<domid>/`
/// anew was a quarter of canonicalizing a short relative path.
#[derive(Debug, Default)]
pub struct PathBuffer {
    bytes: Vec<u8>,
    /// The domain whose home (and `/`) `bytes` starts with, and its length.
    home: Option<(DomId, usize)>,
}

impl PathBuffer {
    /// [`canonicalize`], with this buffer.
    pub fn canonicalize<'a>(
        &'a mut self,
        raw: &'a [u8],
        caller: DomId,
        allow_special: bool,
    ) -> XsResult<(&'a [u8], Canonical)> {
        match check(raw, allow_special)? {
            Sent::Absolute(canonical) => Ok((raw, canonical)),
            Sent::Relative => {
                match self.home {
                    Some((domid, len)) if domid == caller => self.bytes.truncate(len),
                    _ => {
                        start_home(&mut self.bytes, caller);
                        self.home = Some((caller, self.bytes.len()));
                    }
                }
                join(&mut self.bytes, raw)
            }
        }
    }
}

/// Writes `/local/domain/<domid>` (a domain's home) to `out`.
pub fn push_home(out: &mut Vec<u8>, domid: DomId) {
    out.extend_from_slice(LOCAL_DOMAIN);
    push_decimal(out, u64::from(domid.0));
}

/// The length that counts against the `path-max` quota: the part of the path after
/// `/local/domain/<domid>/` when it has that prefix (as C xenstored counts), else all of it.
pub fn local_suffix_len(path: &[u8]) -> usize {
    let Some(rest) = path.strip_prefix(LOCAL_DOMAIN) else {
        return path.len();
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    match rest.get(digits..) {
        Some([b'/', tail @ ..]) if (1..=5).contains(&digits) => tail.len(),
        _ => path.len(),
    }
}

/// The segments of a canonical node path: `/` has none, `/a/b` has `a` and `b`.
pub fn segments(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|&b| b == b'/').filter(|s| !s.is_empty())
}

/// The parent of a canonical node path, `None` for the root.
pub fn parent(path: &[u8]) -> Option<&[u8]> {
    if path.len() <= 1 {
        return None;
    }
    let slash = path.iter().rposition(|&b| b == b'/')?;
    Some(if slash == 0 { b"/" } else { path.get(..slash)? })
}

/// The last segment of a canonical node path (empty for the root).
pub fn basename(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(slash) => path.get(slash.saturating_add(1)..).unwrap_or_default(),
        None => path,
    }
}

/// Whether `path` is `ancestor` or below it (`docs/misc/xenstore.txt`: "`<child>` and `<parent>`").
pub fn is_at_or_below(path: &[u8], ancestor: &[u8]) -> bool {
    if ancestor == b"/" {
        return path.first() == Some(&b'/');
    }
    match path.strip_prefix(ancestor) {
        Some(rest) => rest.is_empty() || rest.first() == Some(&b'/'),
        None => false,
    }
}

/// Appends `/segment` to a canonical path (or `segment` after the root's `/`).
pub fn push_segment(path: &mut Vec<u8>, segment: &[u8]) {
    if path.as_slice() != b"/" {
        path.push(b'/');
    }
    path.extend_from_slice(segment);
}

/// Truncates a canonical path back to its parent (the root stays the root).
pub fn pop_segment(path: &mut Vec<u8>) {
    let keep = match path.iter().rposition(|&b| b == b'/') {
        Some(0) | None => 1,
        Some(slash) => slash,
    };
    path.truncate(keep);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(raw: &str, dom: u16) -> Result<(alloc::string::String, Canonical), XsError> {
        let mut buf = Vec::new();
        let (p, c) = canonicalize(raw.as_bytes(), DomId(dom), true, &mut buf)?;
        Ok((alloc::string::String::from_utf8(p.to_vec()).unwrap(), c))
    }

    #[test]
    fn absolute_and_relative() {
        assert_eq!(canon("/", 3).unwrap().0, "/");
        assert_eq!(canon("/a/b-c_D9", 3).unwrap().0, "/a/b-c_D9");
        let (p, c) = canon("x/y", 3).unwrap();
        assert_eq!(p, "/local/domain/3/x/y");
        assert_eq!(c.relative_prefix, "/local/domain/3/".len());
        assert_eq!(c.kind, PathKind::Node);
        let (p, c) = canon("@releaseDomain", 3).unwrap();
        assert_eq!((p.as_str(), c.kind), ("@releaseDomain", PathKind::Special));
    }

    proptest::proptest! {
        /// A `PathBuffer` reused across callers and paths gives what `canonicalize` gives.
        #[test]
        fn a_reused_buffer_canonicalizes_as_a_fresh_one(
            requests in proptest::collection::vec(
                (proptest::sample::select(&[0u16, 7, 65][..]), "[a-z/@]{0,12}", proptest::bool::ANY),
                1..20,
            )
        ) {
            let mut reused = PathBuffer::default();
            for (dom, raw, special) in requests {
                let mut fresh = Vec::new();
                let want = canonicalize(raw.as_bytes(), DomId(dom), special, &mut fresh)
                    .map(|(p, c)| (p.to_vec(), c));
                let got = reused
                    .canonicalize(raw.as_bytes(), DomId(dom), special)
                    .map(|(p, c)| (p.to_vec(), c));
                proptest::prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "", "/a/", "//", "/a//b", "a/", "/a b", "/a\0b", "/é", "/a@b", "x@", "/a/.", "/a:b",
        ] {
            assert_eq!(canon(bad, 1).map(|_| ()), Err(XsError::Inval), "{bad:?}");
        }
        let mut buf = Vec::new();
        assert_eq!(
            canonicalize(b"@releaseDomain", DomId(1), false, &mut buf).map(|_| ()),
            Err(XsError::Inval)
        );
        // Special paths follow the same slash rules.
        assert!(canon("@releaseDomain/5", 1).is_ok());
        assert_eq!(canon("@a//b", 1).map(|_| ()), Err(XsError::Inval));
        assert_eq!(canon("@a/", 1).map(|_| ()), Err(XsError::Inval));
    }

    /// The specification's rules, written the obvious way.
    fn well_formed_reference(raw: &[u8], allow_at: bool) -> bool {
        let chars_ok = raw
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-/_".contains(&b) || (allow_at && b == b'@'));
        let no_double = !raw.windows(2).any(|w| w == b"//");
        let no_trailing = raw == b"/" || !raw.ends_with(b"/");
        chars_ok && no_double && no_trailing
    }

    #[test]
    fn every_byte_value_is_classified_as_the_specification_says() {
        for b in 0..=255u8 {
            for allow_at in [false, true] {
                for raw in [[b'/', b], [b, b'a']] {
                    assert_eq!(
                        well_formed(&raw, allow_at),
                        well_formed_reference(&raw, allow_at),
                        "{raw:?} allow_at={allow_at}"
                    );
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn well_formed_agrees_with_the_reference(
            raw in proptest::collection::vec(
                proptest::prop_oneof![
                    4 => proptest::sample::select(b"/a-Z_9@".to_vec()),
                    1 => proptest::num::u8::ANY,
                ],
                0..80,
            ),
            allow_at: bool,
        ) {
            proptest::prop_assert_eq!(
                well_formed(&raw, allow_at),
                well_formed_reference(&raw, allow_at)
            );
        }
    }

    #[test]
    fn length_limits() {
        let abs_ok = alloc::format!("/{}", "a".repeat(ABS_PATH_MAX - 1));
        assert!(canon(&abs_ok, 0).is_ok());
        let abs_long = alloc::format!("/{}", "a".repeat(ABS_PATH_MAX));
        assert_eq!(canon(&abs_long, 0).map(|_| ()), Err(XsError::Inval));
        let rel_ok = "a".repeat(REL_PATH_MAX);
        assert!(canon(&rel_ok, 7).is_ok());
        let rel_long = "a".repeat(REL_PATH_MAX + 1);
        assert_eq!(canon(&rel_long, 7).map(|_| ()), Err(XsError::Inval));
    }

    #[test]
    fn local_suffix() {
        assert_eq!(local_suffix_len(b"/local/domain/12/ab"), 2);
        assert_eq!(local_suffix_len(b"/local/domain/12"), 16);
        assert_eq!(local_suffix_len(b"/local/domain/123456/ab"), 23);
        assert_eq!(local_suffix_len(b"/tool/x"), 7);
    }

    #[test]
    fn segment_helpers() {
        assert_eq!(segments(b"/").count(), 0);
        assert_eq!(segments(b"/a/bc").collect::<Vec<_>>(), [&b"a"[..], b"bc"]);
        assert_eq!(parent(b"/"), None);
        assert_eq!(parent(b"/a"), Some(&b"/"[..]));
        assert_eq!(parent(b"/a/b"), Some(&b"/a"[..]));
        assert_eq!(basename(b"/a/b"), b"b");
        assert_eq!(basename(b"/"), b"");
        assert!(is_at_or_below(b"/a/b", b"/a"));
        assert!(is_at_or_below(b"/a", b"/a"));
        assert!(is_at_or_below(b"/a", b"/"));
        assert!(!is_at_or_below(b"/ab", b"/a"));
        let mut p = b"/".to_vec();
        push_segment(&mut p, b"a");
        push_segment(&mut p, b"b");
        assert_eq!(p, b"/a/b");
        pop_segment(&mut p);
        assert_eq!(p, b"/a");
        pop_segment(&mut p);
        assert_eq!(p, b"/");
        pop_segment(&mut p);
        assert_eq!(p, b"/");
    }
}
