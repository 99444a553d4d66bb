//! xs-vmm: a small KVM hypervisor on the rust-vmm crates with the XenStore built in.
//!
//! * [`layout`]: the guest's physical memory map and the VMM's I/O ports.
//! * [`memory`]: guest memory (vm-memory), every access checked.
//! * [`boot`]: loading the guest image and the state it is entered in.
//! * [`xen`]: Xen's HVM surface (CPUID leaves, hypercall page, hypercalls, event channels in
//!   `shared_info`, grant table v1), as plain state over guest memory.
//! * [`platform`]: `xs_serve::Services` for the VMM; [`console`]: the PV console backend.
//! * [`vm`]: the KVM machine and its run loop.

pub mod boot;
pub mod console;
pub mod layout;
pub mod memory;
pub mod platform;
pub mod vm;
pub mod xen;
