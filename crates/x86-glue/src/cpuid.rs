//! Finding Xen through CPUID (`xen/include/public/arch-x86/cpuid.h`).
//!
//! Xen's leaves start at the first 0x100-aligned leaf from `0x40000000` that carries the
//! signature `"XenVMMXenVMM"` (other hypervisor interfaces, Viridian say, may come first).
//! Leaf `base + 1` gives the version, `base + 2` the hypercall-page MSR, `base + 4` (HVM) the
//! domain and vCPU ids when Xen provides them.
//!
//! Safe anywhere: CPUID never faults, and on a machine without Xen (plain QEMU, bare metal,
//! another hypervisor) [`detect`] returns `None`.

use core::arch::x86_64::{__cpuid_count, CpuidResult};

use xs_core::DomId;

use crate::options::BootArgs;

/// First leaf searched.
pub const FIRST_LEAF: u32 = 0x4000_0000;
/// End of the search (exclusive), as Linux and Xen's own guest code search.
pub const LAST_LEAF: u32 = 0x4001_0000;
/// `XEN_CPUID_SIGNATURE_EBX` ("XenV").
pub const SIGNATURE_EBX: u32 = 0x566e_6558;
/// `XEN_CPUID_SIGNATURE_ECX` ("MMXe").
pub const SIGNATURE_ECX: u32 = 0x6558_4d4d;
/// `XEN_CPUID_SIGNATURE_EDX` ("nVMM").
pub const SIGNATURE_EDX: u32 = 0x4d4d_566e;
/// `XEN_HVM_CPUID_VCPU_ID_PRESENT` (leaf `base + 4`, EAX).
const HVM_VCPU_ID_PRESENT: u32 = 1 << 3;
/// `XEN_HVM_CPUID_DOMID_PRESENT` (leaf `base + 4`, EAX).
const HVM_DOMID_PRESENT: u32 = 1 << 4;

/// The CPU vendor, which decides the hypercall instruction when no hypercall page is used.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Vendor {
    /// `vmcall`: Intel, VIA/Centaur, Zhaoxin.
    Vmx,
    /// `vmmcall`: AMD, Hygon.
    Svm,
    /// Neither known: only the hypercall page can be used.
    Unknown,
}

/// Xen as CPUID shows it, plus what the boot loader passed on the command line.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct XenInfo {
    /// First leaf of Xen's range.
    pub base: u32,
    /// Xen's major version.
    pub major: u16,
    /// Xen's minor version.
    pub minor: u16,
    /// Hypercall transfer pages Xen offers (always at least 1).
    pub hypercall_pages: u32,
    /// The MSR that writes a hypercall page.
    pub hypercall_msr: u32,
    /// This domain's id, when Xen tells it (HVM leaf, `XEN_HVM_CPUID_DOMID_PRESENT`).
    pub domid: Option<DomId>,
    /// This vCPU's id, when Xen tells it.
    pub vcpu_id: Option<u32>,
    /// The CPU vendor.
    pub vendor: Vendor,
    /// Boot parameters (the image fills these from the command line, see [`BootArgs::parse`]).
    pub boot: BootArgs,
}

/// Detects Xen on this CPU.
pub fn detect() -> Option<XenInfo> {
    detect_with(&mut |leaf, sub| __cpuid_count(leaf, sub))
}

/// Detects Xen through `cpuid(leaf, subleaf)` (host tests pass a table).
pub fn detect_with(cpuid: &mut dyn FnMut(u32, u32) -> CpuidResult) -> Option<XenInfo> {
    // CPUID.1:ECX[31], "hypervisor present": Xen sets it for every HVM guest.
    if cpuid(1, 0).ecx & (1 << 31) == 0 {
        return None;
    }
    let base = (FIRST_LEAF..LAST_LEAF).step_by(0x100).find(|&base| {
        let r = cpuid(base, 0);
        r.ebx == SIGNATURE_EBX
            && r.ecx == SIGNATURE_ECX
            && r.edx == SIGNATURE_EDX
            && r.eax.wrapping_sub(base) >= 2
            && r.eax >= base
    })?;
    let max = cpuid(base, 0).eax;
    let version = cpuid(base + 1, 0).eax;
    let pages = cpuid(base + 2, 0);
    let (domid, vcpu_id) = if max >= base + 4 {
        let hvm = cpuid(base + 4, 0);
        (
            (hvm.eax & HVM_DOMID_PRESENT != 0)
                .then(|| u16::try_from(hvm.ecx).ok().map(DomId))
                .flatten(),
            (hvm.eax & HVM_VCPU_ID_PRESENT != 0).then_some(hvm.ebx),
        )
    } else {
        (None, None)
    };
    Some(XenInfo {
        base,
        major: (version >> 16) as u16,
        minor: version as u16,
        hypercall_pages: pages.eax,
        hypercall_msr: pages.ebx,
        domid,
        vcpu_id,
        vendor: vendor(cpuid(0, 0)),
        boot: BootArgs::default(),
    })
}

/// The vendor from leaf 0's signature (EBX, EDX, ECX).
fn vendor(leaf0: CpuidResult) -> Vendor {
    let mut sig = [0u8; 12];
    sig[..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    sig[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    sig[8..].copy_from_slice(&leaf0.ecx.to_le_bytes());
    match &sig {
        b"GenuineIntel" | b"CentaurHauls" | b"  Shanghai  " => Vendor::Vmx,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Svm,
        _ => Vendor::Unknown,
    }
}

/// Whether the CPU has RDRAND (CPUID.1:ECX bit 30).
pub fn has_rdrand() -> bool {
    __cpuid_count(1, 0).ecx & (1 << 30) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn r(eax: u32, ebx: u32, ecx: u32, edx: u32) -> CpuidResult {
        CpuidResult { eax, ebx, ecx, edx }
    }

    fn le(s: &[u8; 4]) -> u32 {
        u32::from_le_bytes(*s)
    }

    /// A CPU's CPUID table; missing leaves read as zeroes.
    fn cpu(leaves: &[(u32, CpuidResult)]) -> impl FnMut(u32, u32) -> CpuidResult + use<> {
        let map: BTreeMap<u32, CpuidResult> = leaves.iter().copied().collect();
        move |leaf, _| map.get(&leaf).copied().unwrap_or(r(0, 0, 0, 0))
    }

    fn intel() -> CpuidResult {
        r(0x16, le(b"Genu"), le(b"ntel"), le(b"ineI"))
    }

    #[test]
    fn finds_xen_after_viridian() {
        let mut c = cpu(&[
            (0, intel()),
            (1, r(0, 0, 1 << 31, 0)),
            // Viridian first, at 0x40000000.
            (
                0x4000_0000,
                r(0x4000_0006, le(b"Micr"), le(b"osof"), le(b"t Hv")),
            ),
            (
                0x4000_0100,
                r(0x4000_0105, SIGNATURE_EBX, SIGNATURE_ECX, SIGNATURE_EDX),
            ),
            (0x4000_0101, r(4 << 16 | 21, 0, 0, 0)),
            (0x4000_0102, r(1, 0x4000_0000, 0, 0)),
            (
                0x4000_0104,
                r(HVM_DOMID_PRESENT | HVM_VCPU_ID_PRESENT, 0, 3, 0),
            ),
        ]);
        let xen = detect_with(&mut c).unwrap();
        assert_eq!(xen.base, 0x4000_0100);
        assert_eq!((xen.major, xen.minor), (4, 21));
        assert_eq!(xen.hypercall_pages, 1);
        assert_eq!(xen.hypercall_msr, 0x4000_0000);
        assert_eq!(xen.domid, Some(DomId(3)));
        assert_eq!(xen.vcpu_id, Some(0));
        assert_eq!(xen.vendor, Vendor::Vmx);
    }

    #[test]
    fn no_xen_without_signature_or_hypervisor_bit() {
        // Plain QEMU/TCG: hypervisor bit set, a KVM-less "TCGTCGTCGTCG" signature.
        let mut qemu = cpu(&[
            (1, r(0, 0, 1 << 31, 0)),
            (
                0x4000_0000,
                r(0x4000_0001, le(b"TCGT"), le(b"CGTC"), le(b"GTCG")),
            ),
        ]);
        assert_eq!(detect_with(&mut qemu), None);
        // Bare metal: no hypervisor bit, whatever the high leaves echo.
        let mut metal = cpu(&[(
            0x4000_0000,
            r(0x4000_0005, SIGNATURE_EBX, SIGNATURE_ECX, SIGNATURE_EDX),
        )]);
        assert_eq!(detect_with(&mut metal), None);
        // A signature without the leaves Xen must have.
        let mut short = cpu(&[
            (1, r(0, 0, 1 << 31, 0)),
            (
                0x4000_0000,
                r(0x4000_0001, SIGNATURE_EBX, SIGNATURE_ECX, SIGNATURE_EDX),
            ),
        ]);
        assert_eq!(detect_with(&mut short), None);
    }

    #[test]
    fn real_cpuid_does_not_crash() {
        // Whatever this machine is; on Xen it must look sane.
        if let Some(xen) = detect() {
            assert!(xen.base >= FIRST_LEAF && xen.base < LAST_LEAF);
            assert!(xen.hypercall_pages >= 1);
        }
        let _ = has_rdrand();
    }

    #[test]
    fn vendors() {
        assert_eq!(vendor(intel()), Vendor::Vmx);
        assert_eq!(
            vendor(r(0, le(b"Auth"), le(b"cAMD"), le(b"enti"))),
            Vendor::Svm
        );
        assert_eq!(
            vendor(r(0, le(b"Hygo"), le(b"uine"), le(b"nGen"))),
            Vendor::Svm
        );
        assert_eq!(vendor(r(0, 0, 0, 0)), Vendor::Unknown);
    }
}
