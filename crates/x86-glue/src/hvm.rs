//! The `hvm_op` hypercall's parameters (`xen/include/public/hvm/hvm_op.h`,
//! `hvm/params.h`).

use crate::evtchn::DOMID_SELF;
use crate::hypercall::{Errno, Hypercalls, arg, nr};

/// `HVMOP_set_param`.
pub const HVMOP_SET_PARAM: u64 = 0;
/// `HVMOP_get_param`.
pub const HVMOP_GET_PARAM: u64 = 1;

/// `HVM_PARAM_CALLBACK_IRQ`: how vCPU 0's event upcall is delivered (0: not at all).
pub const HVM_PARAM_CALLBACK_IRQ: u32 = 0;
/// `HVM_PARAM_STORE_PFN`: the guest frame of this domain's own XenStore ring.
pub const HVM_PARAM_STORE_PFN: u32 = 1;
/// `HVM_PARAM_STORE_EVTCHN`: this domain's own XenStore event channel.
pub const HVM_PARAM_STORE_EVTCHN: u32 = 2;
/// `HVM_PARAM_CALLBACK_TYPE_VECTOR` in bits 63:56 of `HVM_PARAM_CALLBACK_IRQ`.
pub const CALLBACK_TYPE_VECTOR: u64 = 2;

/// `HVM_PARAM_CALLBACK_IRQ` value for delivery through IDT vector `vector`
/// (`XENFEAT_hvm_callback_vector`).
pub const fn callback_via_vector(vector: u8) -> u64 {
    (CALLBACK_TYPE_VECTOR << 56) | vector as u64
}

/// `struct xen_hvm_param`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmParam {
    /// IN: the domain.
    pub domid: u16,
    /// Padding.
    pub pad: u16,
    /// IN: `HVM_PARAM_*`.
    pub index: u32,
    /// IN/OUT: the value.
    pub value: u64,
}

const _: () = {
    use core::mem::{offset_of, size_of};
    // hvm_op.h, checked with gcc at Xen c447b7308b13.
    assert!(size_of::<HvmParam>() == 16);
    assert!(offset_of!(HvmParam, index) == 4);
    assert!(offset_of!(HvmParam, value) == 8);
};

/// `HVMOP_get_param` of our own domain.
pub fn get_param(hc: &mut impl Hypercalls, index: u32) -> Result<u64, Errno> {
    let mut p = HvmParam {
        domid: DOMID_SELF,
        index,
        ..HvmParam::default()
    };
    Errno::check(hc.call2(nr::HVM_OP, HVMOP_GET_PARAM, arg(&mut p)))?;
    Ok(p.value)
}

/// `HVMOP_set_param` of our own domain.
pub fn set_param(hc: &mut impl Hypercalls, index: u32, value: u64) -> Result<(), Errno> {
    let mut p = HvmParam {
        domid: DOMID_SELF,
        index,
        value,
        ..HvmParam::default()
    };
    Errno::check(hc.call2(nr::HVM_OP, HVMOP_SET_PARAM, arg(&mut p))).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xenfake::FakeXen;

    #[test]
    fn params_round_trip() {
        let mut xen = FakeXen::new();
        set_param(&mut xen, HVM_PARAM_CALLBACK_IRQ, callback_via_vector(0xf3)).unwrap();
        assert_eq!(
            get_param(&mut xen, HVM_PARAM_CALLBACK_IRQ),
            Ok(0x0200_0000_0000_00f3)
        );
        assert_eq!(xen.calls().last().unwrap().1[0], HVMOP_GET_PARAM);
        assert_eq!(get_param(&mut xen, HVM_PARAM_STORE_EVTCHN), Ok(0));
        assert_eq!(get_param(&mut xen, 4096), Err(Errno::EINVAL));
    }
}
