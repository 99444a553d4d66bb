//! Domain ids and the decimal numbers of the protocol.

use core::fmt;

/// A Xen domain id.
///
/// Real domains are numbered below [`DomId::FIRST_RESERVED`]; the values above are Xen's
/// special ids (`xen/include/public/xen.h`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct DomId(pub u16);

impl DomId {
    /// The control domain.
    pub const DOM0: DomId = DomId(0);
    /// First id that does not name a real domain (`DOMID_FIRST_RESERVED`).
    pub const FIRST_RESERVED: DomId = DomId(0x7FF0);
    /// `DOMID_SELF`.
    pub const SELF: DomId = DomId(0x7FF0);
    /// `DOMID_INVALID`.
    pub const INVALID: DomId = DomId(0x7FF4);
    /// `DOMID_ANY`: in a permission entry, matches every domain
    /// (`XENSTORE_SERVER_FEATURE_DOMID_ANY`).
    pub const ANY: DomId = DomId(0x7FF5);

    /// Whether this id can name a running domain.
    pub const fn is_real(self) -> bool {
        self.0 < Self::FIRST_RESERVED.0
    }

    /// Parses an unsigned decimal domid (`"0"` .. `"65535"`).
    ///
    /// Stricter than C xenstored, which uses `atoi`-like parsing and lets garbage through
    /// (`docs/misc/xenstore.txt`: "Parsing errors ... generally go undetected"): malformed or
    /// out-of-range ids are rejected so that callers get `EINVAL` rather than domain 0.
    pub fn parse(text: &[u8]) -> Option<DomId> {
        parse_decimal(text)
            .and_then(|v| u16::try_from(v).ok())
            .map(DomId)
    }
}

impl fmt::Display for DomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Parses a non-empty unsigned decimal number without sign, spaces or overflow.
pub fn parse_decimal(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 20 {
        return None;
    }
    text.iter().try_fold(0u64, |acc, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        acc.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Appends the decimal representation of `value` to `out`.
pub fn push_decimal(out: &mut alloc::vec::Vec<u8>, value: u64) {
    let mut digits = [0u8; 20];
    let mut n = value;
    let mut start = digits.len();
    loop {
        start = start.saturating_sub(1);
        if let Some(slot) = digits.get_mut(start) {
            // `n % 10` is below 10, so the cast cannot truncate.
            *slot = b'0'.saturating_add((n % 10) as u8);
        }
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(start..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn parses_strict_decimal() {
        assert_eq!(DomId::parse(b"0"), Some(DomId(0)));
        assert_eq!(DomId::parse(b"65535"), Some(DomId(65535)));
        assert_eq!(DomId::parse(b"65536"), None);
        assert_eq!(DomId::parse(b""), None);
        assert_eq!(DomId::parse(b"-1"), None);
        assert_eq!(DomId::parse(b"1a"), None);
        assert_eq!(DomId::parse(b" 1"), None);
        assert_eq!(parse_decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_decimal(b"18446744073709551616"), None);
    }

    #[test]
    fn formats_decimal() {
        for v in [0u64, 7, 10, 12345, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, v);
            assert_eq!(out, alloc::format!("{v}").into_bytes());
        }
    }

    #[test]
    fn special_ids() {
        assert!(DomId(0x7FEF).is_real());
        assert!(!DomId::SELF.is_real());
        assert!(!DomId::ANY.is_real());
    }
}
