//! Xen on x86_64 for the store: hypercalls, event channels, grant mappings, and the XenStore
//! stub domain built from them.
//!
//! * [`hypercall`]: the x86_64 hypercall ABI written down once (hypercall page, `vmcall`,
//!   `vmmcall`), the [`Hypercalls`] trait, Xen's errno values.
//! * Typed hypercall wrappers, their argument layouts checked at compile time against Xen's
//!   public headers: [`evtchn`] (`event_channel_op`, and the 2-level event ABI: fair scan,
//!   unmask), [`hvm`] (`hvm_op` parameters), [`sched`] (`sched_op`), [`grant`]
//!   (`grant_table_op` map/unmap), [`memory`] (`memory_op` add-to-physmap), [`console`]
//!   (`console_io`), [`version`] (`xen_version`), [`domctl`] (the stable
//!   `XEN_DOMCTL_get_domain_state`).
//! * [`cpuid`]: finding Xen; [`shared_info`]: `shared_info` / `vcpu_info`; [`rng`]: RDRAND.
//! * [`services`]: [`XenServices`], the serving layer's platform trait
//!   ([`xs_serve::Services`]) on Xen; xs-serve's `Dispatcher` serves the rings over it.
//! * [`boot`]: bring-up and the event loop on Xen, and [`run_stub_domain`]; [`state`]:
//!   `CONTROL save-state`, the whole state saved into a heap buffer and verified.
//!
//! # The entry point
//!
//! The boot image calls [`run_stub_domain`] once it has found Xen with [`cpuid::detect`]
//! (and filled [`XenInfo::boot`] from its command line with [`BootArgs::parse`]: `--event`
//! is the port dom0's kernel allocated for the store, `--priv-domid` the privileged domain,
//! default 0; C xenstored's quota options apply, see [`options`]):
//!
//! ```text
//! pub fn run_stub_domain(xen: XenInfo, hypercall_page: &'static mut [u8; 4096],
//!     shared_info: &'static mut [u8; 4096], map_area: (usize, usize),
//!     log: &mut dyn core::fmt::Write) -> !
//! ```
//!
//! What the image must provide:
//!
//! * a 64-bit HVM/PVH guest running in ring 0 on vCPU 0, with a global allocator (the store
//!   needs `alloc`); no interrupts are needed (the loop polls), none are enabled by us;
//! * identity mapping (virtual = guest-physical) for the three kinds of memory below;
//! * `hypercall_page`: a page-aligned page of its RAM, **mapped executable** (Xen writes
//!   `mov $nr,%eax; vmcall|vmmcall; ret` stubs into it, and the store calls them). If Xen
//!   does not write it, the store falls back to `vmcall`/`vmmcall` by CPU vendor;
//! * `shared_info`: a page-aligned page of its RAM, writable; Xen replaces it with the
//!   domain's `shared_info` (the RAM page goes back to Xen);
//! * `map_area` (base address, pages): page-aligned, mapped writable (cacheable) in the
//!   image's page tables, but **not backed by RAM or MMIO** in the domain's physical map: a
//!   hole, above the highest RAM address of the PVH memory map for instance. Each served
//!   domain's ring is mapped by Xen into one page of it (`GNTTABOP_map_grant_ref` with
//!   `GNTMAP_host_map` and `host_addr` = that page's guest-physical address); RAM there would
//!   be displaced and lost. One page per served domain, the privileged one included;
//! * `log`: where progress and errors are written.
//!
//! It never returns: on a fatal error it logs, asks Xen to crash the domain
//! (`SCHEDOP_shutdown`, `SHUTDOWN_crash`) and spins.
//!
//! # What is verified here, and what is not
//!
//! No Xen runs on the build machine. Host tests cover: the hypercall page call sequence
//! (run against a recording stub standing in for a page stub: registers, clobbers, result);
//! every wrapper's encoding and decoding against a model of Xen ([`Hypercalls`] implemented
//! by decoding the argument structures from memory, as Xen does); the argument layouts
//! (compile-time asserts with the sizes and offsets gcc gives for Xen's headers); CPUID
//! detection against CPUID tables (and the real CPUID, which must not crash); the 2-level
//! bitmap scan, its fairness and its lost-event properties; grant status decoding and the
//! map area; the whole stub-domain flow over [`XenServices`] on the
//! model of Xen (introduce, serve, watch, shut down, die, re-introduce; the event loop's
//! scan, dispatch and `SCHEDOP_poll`).
//!
//! Not exercised: the `vmcall`/`vmmcall` instructions, the `wrmsr` that installs the
//! hypercall page, port 0xE9 output, and every behaviour of real Xen the model only
//! imitates: that an HVM/PVH stub domain's `GNTTABOP_map_grant_ref` into a p2m hole works
//! as `create_grant_p2m_mapping` reads, that `SCHEDOP_poll` wakes the vCPU as `do_poll`
//! reads, that the toolstack grants the store `VIRQ_DOM_EXC` and the privileged domain's
//! grant, and `XEN_DOMCTL_get_domain_state` (Xen 4.21+) permissions under XSM.

//!
//! # Known gaps
//!
//! * Dying domains are noticed through `XEN_DOMCTL_get_domain_state`, which needs Xen 4.21;
//!   on older Xen only `RELEASE` ends a domain's service.
//! * The store domain's own XenStore ring (`HVM_PARAM_STORE_PFN`) is not served (C
//!   xenstored serves it for its 9pfs client; nothing in this image uses it), and domains
//!   that exist before the store starts (dom0less) are not looked for: only the privileged
//!   domain is served at start.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::todo)
)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod boot;
pub mod console;
pub mod cpuid;
pub mod domctl;
mod error;
pub mod evtchn;
#[cfg(feature = "freestanding-mem")]
pub mod freestanding_mem;
pub mod grant;
pub mod host;
pub mod hvm;
pub mod hypercall;
pub mod memory;
pub mod options;
pub mod rng;
pub mod sched;
pub mod services;
pub mod shared_info;
pub mod state;
#[cfg(test)]
mod testutil;
pub mod version;
#[cfg(test)]
mod xenfake;

pub use boot::run_stub_domain;
pub use cpuid::XenInfo;
pub use domctl::StateQuery;
pub use error::Error;
pub use host::{HeapUse, StubHost};
pub use hypercall::{Errno, Hypercalls, XenHypercalls};
pub use options::BootArgs;
pub use services::{XenRing, XenServices};
