//! Domain state from `xen/include/public/domctl.h`.
//!
//! * `XEN_DOMCTL_get_domain_state`: the one *stable* domctl (interface version 0, Xen 4.21
//!   and later), which the XenStore domain may use (`xsm_get_domain_state`,
//!   `XSM_XS_PRIV`). C xenstored asks it through libxenmanage. On Xen before 4.21 it fails
//!   with `EACCES` (version mismatch).
//! * `XEN_DOMCTL_getdomaininfo`: what C xenstored asks on older Xen (through libxenctrl),
//!   for the control domain only. Like every other domctl it is tied to the
//!   `XEN_DOMCTL_INTERFACE_VERSION` of one Xen release (`EACCES` for any other), so the
//!   caller finds the version by asking ([`find_interface_version`]); the start of its
//!   result (the domain and its flags) has not changed across the versions probed.

use xs_core::DomId;
use xs_serve::DomainState;

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

/// `XEN_DOMCTL_getdomaininfo`.
pub const XEN_DOMCTL_GETDOMAININFO: u32 = 5;
/// `XEN_DOMINF_dying`: the domain is being destroyed.
pub const DOMINF_DYING: u32 = 1 << 0;
/// `XEN_DOMINF_shutdown`: the domain has shut down (the reason is in the flags' high bits).
pub const DOMINF_SHUTDOWN: u32 = 1 << 2;
/// `XEN_DOMCTL_INTERFACE_VERSION` of the releases [`find_interface_version`] tries, newest
/// first: 0x18 (Xen 4.22), 0x17 (4.19 to 4.21), 0x16 (4.18), 0x15 (4.16, 4.17), 0x14 (4.15).
pub const INTERFACE_VERSIONS: [u32; 5] = [0x18, 0x17, 0x16, 0x15, 0x14];

/// The start of `struct xen_domctl_getdomaininfo` (the rest of the union is left alone).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DomainInfo {
    /// OUT: the domain the answer is about. Before Xen 4.18 it may be the next domain after
    /// the one asked for, when that one does not exist.
    pub domain: u16,
    /// Padding.
    pub pad: u16,
    /// OUT: `XEN_DOMINF_*`.
    pub flags: u32,
    /// OUT: pages the domain holds.
    pub tot_pages: u64,
}

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
    /// `getdomaininfo` (its start).
    pub getdomaininfo: DomainInfo,
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
    assert!(offset_of!(DomainInfo, flags) == 4);
    assert!(offset_of!(DomainInfo, tot_pages) == 8);
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

/// `XEN_DOMCTL_getdomaininfo` for `domid` under `interface_version`. `EACCES`: the wrong
/// interface version (or no permission); see [`DomainInfo::domain`] for what older Xen
/// answers about a domain that does not exist.
pub fn getdomaininfo(
    hc: &mut impl Hypercalls,
    domid: u16,
    interface_version: u32,
) -> Result<DomainInfo, Errno> {
    let mut d = Domctl {
        cmd: XEN_DOMCTL_GETDOMAININFO,
        interface_version,
        domain: domid,
        pad: [0; 3],
        u: DomctlUnion { pad: [0; 16] },
    };
    Errno::check(hc.call1(nr::DOMCTL, arg(&mut d)))?;
    // SAFETY: all fields of the union are plain integers; any bit pattern is valid.
    Ok(unsafe { d.u.getdomaininfo })
}

/// The `XEN_DOMCTL_INTERFACE_VERSION` this Xen answers `getdomaininfo` for, found by asking
/// about `domid` (a domain that exists: the caller's own) with each of
/// [`INTERFACE_VERSIONS`]; `None` if none is accepted (an unknown release, or no permission).
pub fn find_interface_version(hc: &mut impl Hypercalls, domid: u16) -> Option<u32> {
    INTERFACE_VERSIONS
        .into_iter()
        .find(|&v| getdomaininfo(hc, domid, v).is_ok())
}

impl GetDomainState {
    /// The domain's state as these flags say it.
    pub fn domain_state(&self) -> DomainState {
        if self.state & STATE_EXIST == 0 || self.state & (STATE_DYING | STATE_DEAD) != 0 {
            DomainState::Dying
        } else if self.state & STATE_SHUTDOWN != 0 {
            DomainState::Shutdown
        } else {
            DomainState::Running
        }
    }
}

/// How domain states can be asked of this Xen ([`probe_state_query`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StateQuery {
    /// `XEN_DOMCTL_get_domain_state` works (Xen 4.21+, permitted): an error for a domain
    /// means it does not exist.
    Supported,
    /// `XEN_DOMCTL_getdomaininfo` under this interface version: what C xenstored asks before
    /// 4.21 (through libxenctrl), and what Xen's dummy XSM lets the XenStore domain ask
    /// (`XSM_XS_PRIV`). No domain-id reuse detection: it has no unique id.
    DomainInfo(u32),
    /// Neither works: every domain is reported running (domains end by RELEASE alone).
    Unsupported,
}

/// Asks Xen for the state of `domid` (a domain that exists: the privileged one) to learn how
/// domain states can be asked here: `XEN_DOMCTL_get_domain_state`, else
/// `XEN_DOMCTL_getdomaininfo` under the interface version this Xen accepts, else not at all
/// (dying domains are then noticed only when the toolstack releases them).
pub fn probe_state_query(hc: &mut impl Hypercalls, domid: u16) -> StateQuery {
    if get_domain_state(hc, domid).is_ok() {
        StateQuery::Supported
    } else if let Some(v) = find_interface_version(hc, domid) {
        StateQuery::DomainInfo(v)
    } else {
        StateQuery::Unsupported
    }
}

/// `domid`'s state from `XEN_DOMCTL_getdomaininfo`'s answer, as C xenstored reads
/// `xc_domain_getinfo`'s: before Xen 4.18 the answer may be about the next domain, which
/// means this one is gone.
pub fn state_from_domain_info(
    domid: DomId,
    answer: Result<DomainInfo, Errno>,
) -> (DomainState, Option<Errno>) {
    match answer {
        Ok(info) if info.domain != domid.0 => (DomainState::Dying, None),
        Ok(info) if info.flags & DOMINF_DYING != 0 => (DomainState::Dying, None),
        Ok(info) if info.flags & DOMINF_SHUTDOWN != 0 => (DomainState::Shutdown, None),
        Ok(_) => (DomainState::Running, None),
        Err(Errno::ESRCH) => (DomainState::Dying, None),
        Err(e) => (DomainState::Running, Some(e)),
    }
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

    #[test]
    fn domain_info_under_the_interface_version_found() {
        let mut xen = FakeXen::new();
        xen.be_xen_4_17();
        xen.add_domain(0);
        xen.add_domain(4);
        assert_eq!(get_domain_state(&mut xen, 0), Err(Errno::EACCES));
        let v = find_interface_version(&mut xen, 0).unwrap();
        assert_eq!(v, 0x15);
        assert_eq!(getdomaininfo(&mut xen, 0, 0x17), Err(Errno::EACCES));
        let info = getdomaininfo(&mut xen, 4, v).unwrap();
        assert_eq!((info.domain, info.flags), (4, 0));
        xen.set_domain_state(4, STATE_EXIST | STATE_SHUTDOWN);
        assert_eq!(
            getdomaininfo(&mut xen, 4, v).unwrap().flags,
            DOMINF_SHUTDOWN
        );
        // A domain that is gone: 4.17 answers about the next one, or nothing.
        assert_eq!(getdomaininfo(&mut xen, 2, v).unwrap().domain, 4);
        assert_eq!(getdomaininfo(&mut xen, 5, v), Err(Errno::ESRCH));
        xen.refuse_domctl(Errno::EPERM);
        assert_eq!(find_interface_version(&mut xen, 0), None);
    }

    fn info(domain: u16, flags: u32) -> Result<DomainInfo, Errno> {
        Ok(DomainInfo {
            domain,
            pad: 0,
            flags,
            tot_pages: 1,
        })
    }

    #[test]
    fn domain_info_answers() {
        let d = DomId(5);
        assert_eq!(
            state_from_domain_info(d, info(5, 0)),
            (DomainState::Running, None)
        );
        let shutdown = DOMINF_SHUTDOWN | (3 << 16);
        assert_eq!(
            state_from_domain_info(d, info(5, shutdown)),
            (DomainState::Shutdown, None)
        );
        let dying = DOMINF_DYING | DOMINF_SHUTDOWN;
        assert_eq!(
            state_from_domain_info(d, info(5, dying)),
            (DomainState::Dying, None)
        );
        // Xen 4.17 answers about the next domain when this one is gone.
        assert_eq!(
            state_from_domain_info(d, info(7, 0)),
            (DomainState::Dying, None)
        );
        assert_eq!(
            state_from_domain_info(d, Err(Errno::ESRCH)),
            (DomainState::Dying, None)
        );
        let (state, unknown) = state_from_domain_info(d, Err(Errno::EACCES));
        assert_eq!(
            (state, unknown),
            (DomainState::Running, Some(Errno::EACCES))
        );
    }
}
