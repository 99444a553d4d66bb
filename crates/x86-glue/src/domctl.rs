//! `XEN_DOMCTL_get_domain_state` (`xen/include/public/domctl.h`): the one *stable* domctl
//! (interface version 0, Xen 4.21 and later), which the XenStore domain may use
//! (`xsm_get_domain_state`, `XSM_XS_PRIV`). C xenstored asks it through libxenmanage.
//!
//! Every other domctl is tied to `XEN_DOMCTL_INTERFACE_VERSION` of one Xen release, so is
//! not used. On Xen before 4.21 this call fails with `EACCES` (version mismatch), and the
//! store learns of dying domains only through `RELEASE`.

use crate::hypercall::{Errno, Hypercalls, arg, nr};

/// `XEN_DOMCTL_get_domain_state`.
pub const XEN_DOMCTL_GET_DOMAIN_STATE: u32 = 90;
/// `XEN_DOMCTL_GETDOMSTATE_STATE_EXIST`.
pub const STATE_EXIST: u16 = 0x1;
/// `XEN_DOMCTL_GETDOMSTATE_STATE_SHUTDOWN`: shutdown finished.
pub const STATE_SHUTDOWN: u16 = 0x2;
/// `XEN_DOMCTL_GETDOMSTATE_STATE_DYING`.
pub const STATE_DYING: u16 = 0x4;
/// `XEN_DOMCTL_GETDOMSTATE_STATE_DEAD`.
pub const STATE_DEAD: u16 = 0x8;
/// `XEN_DOMCTL_GETDOMSTATE_CAP_CONTROL`.
pub const CAP_CONTROL: u16 = 0x1;
/// `XEN_DOMCTL_GETDOMSTATE_CAP_XENSTORE`.
pub const CAP_XENSTORE: u16 = 0x4;

/// `struct xen_domctl_get_domain_state`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GetDomainState {
    /// OUT: `STATE_*`.
    pub state: u16,
    /// OUT: `CAP_*`.
    pub caps: u16,
    /// Must be 0.
    pub pad0: u32,
    /// OUT: differs between two domains that had the same domid.
    pub unique_id: u64,
}

/// `struct xen_domctl`, with the union as the one member used (and the 128 bytes of `pad`
/// that size it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Domctl {
    /// `XEN_DOMCTL_*`.
    pub cmd: u32,
    /// `XEN_DOMCTL_INTERFACE_VERSION`; 0 for stable operations.
    pub interface_version: u32,
    /// IN/OUT: the domain.
    pub domain: u16,
    /// Padding.
    pub pad: [u16; 3],
    /// The union `u`.
    pub u: DomctlUnion,
}

/// The union `u` of `struct xen_domctl` (128 bytes, 8-aligned).
#[repr(C)]
#[derive(Clone, Copy)]
pub union DomctlUnion {
    /// `get_domain_state`.
    pub get_domain_state: GetDomainState,
    /// `pad[128]`.
    pub pad: [u64; 16],
}

impl core::fmt::Debug for DomctlUnion {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("DomctlUnion")
    }
}

impl PartialEq for DomctlUnion {
    fn eq(&self, other: &Self) -> bool {
        // SAFETY: every bit pattern is a valid `[u64; 16]`, which covers the whole union.
        unsafe { self.pad == other.pad }
    }
}

impl Eq for DomctlUnion {}

const _: () = {
    use core::mem::{offset_of, size_of};
    // domctl.h, checked with gcc at Xen c447b7308b13.
    assert!(size_of::<GetDomainState>() == 16);
    assert!(offset_of!(GetDomainState, caps) == 2);
    assert!(offset_of!(GetDomainState, pad0) == 4);
    assert!(offset_of!(GetDomainState, unique_id) == 8);
    assert!(size_of::<Domctl>() == 144);
    assert!(offset_of!(Domctl, interface_version) == 4);
    assert!(offset_of!(Domctl, domain) == 8);
    assert!(offset_of!(Domctl, u) == 16);
};

/// The state of domain `domid` (`EPERM`/`ESRCH`: no such domain, as Xen answers a
/// non-control caller and a control caller respectively).
pub fn get_domain_state(hc: &mut impl Hypercalls, domid: u16) -> Result<GetDomainState, Errno> {
    let mut d = Domctl {
        cmd: XEN_DOMCTL_GET_DOMAIN_STATE,
        interface_version: 0,
        domain: domid,
        pad: [0; 3],
        u: DomctlUnion { pad: [0; 16] },
    };
    Errno::check(hc.call1(nr::DOMCTL, arg(&mut d)))?;
    // SAFETY: all fields of the union are plain integers; any bit pattern is valid.
    Ok(unsafe { d.u.get_domain_state })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xenfake::FakeXen;

    #[test]
    fn encoding_and_answers() {
        let mut xen = FakeXen::new();
        xen.add_domain(3);
        let s = get_domain_state(&mut xen, 3).unwrap();
        assert_eq!(s.state, STATE_EXIST);
        assert_ne!(s.unique_id, 0);
        let (op, args) = *xen.calls().last().unwrap();
        assert_eq!(op, nr::DOMCTL);
        assert_eq!(args[1..], [0, 0, 0, 0]);
        xen.set_domain_state(3, STATE_EXIST | STATE_SHUTDOWN);
        assert_eq!(
            get_domain_state(&mut xen, 3).unwrap().state,
            STATE_EXIST | STATE_SHUTDOWN
        );
        assert_eq!(get_domain_state(&mut xen, 8), Err(Errno::EPERM));
    }
}
