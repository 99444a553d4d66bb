//! The `xen_version` hypercall (`xen/include/public/version.h`).

use crate::hypercall::{Errno, Hypercalls, arg, nr};

/// `XENVER_version`: `major << 16 | minor` as the result.
pub const XENVER_VERSION: u64 = 0;
/// `XENVER_get_features`.
pub const XENVER_GET_FEATURES: u64 = 6;

/// `struct xen_feature_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeatureInfo {
    /// IN: which 32-bit submap.
    pub submap_idx: u32,
    /// OUT: the submap (`XENFEAT_*` bits).
    pub submap: u32,
}

const _: () = assert!(core::mem::size_of::<FeatureInfo>() == 8);

/// Xen's version as (major, minor).
pub fn version(hc: &mut impl Hypercalls) -> Result<(u16, u16), Errno> {
    let v = Errno::check(hc.call2(nr::XEN_VERSION, XENVER_VERSION, 0))?;
    Ok(((v >> 16) as u16, v as u16))
}

/// Submap `idx` of the `XENFEAT_*` bits.
pub fn features(hc: &mut impl Hypercalls, idx: u32) -> Result<u32, Errno> {
    let mut f = FeatureInfo {
        submap_idx: idx,
        submap: 0,
    };
    Errno::check(hc.call2(nr::XEN_VERSION, XENVER_GET_FEATURES, arg(&mut f)))?;
    Ok(f.submap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xenfake::FakeXen;

    #[test]
    fn decodes_version_and_features() {
        let mut xen = FakeXen::new();
        assert_eq!(version(&mut xen), Ok((4, 21)));
        assert_eq!(features(&mut xen, 0), Ok(1 << 8));
        assert_eq!(features(&mut xen, 1), Ok(0));
    }
}
