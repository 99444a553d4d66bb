//! The XenStore client: xs-serve's [`GuestClient`] on the store page (`HVM_PARAM_STORE_PFN`,
//! guest RAM read in place), notifying the store through its event channel.

use core::ptr::NonNull;

use x86_glue::sched;
use xs_ring::RawPage;
use xs_serve::guest::{GuestClient, Waiter};

use crate::xen::Xen;

/// How the guest waits for the store: `EVTCHNOP_send` on the store's port (an exit in which
/// the VMM serves the ring), then, if no reply is there yet, `SCHEDOP_block`.
#[derive(Debug)]
pub(crate) struct Notify<'a> {
    pub(crate) xen: &'a Xen,
    pub(crate) port: u32,
    pub(crate) kicks: u64,
}

impl Waiter for Notify<'_> {
    fn kick(&mut self) {
        self.kicks += 1;
        let _ = self.xen.send(self.port);
    }

    fn wait(&mut self) {
        let _ = sched::block(&mut self.xen.hc());
    }
}

/// The client on the store page at frame `pfn`.
pub(crate) fn client(pfn: u64) -> GuestClient<RawPage> {
    let page = NonNull::new((pfn << 12) as *mut u8).unwrap_or(NonNull::dangling());
    // SAFETY: the store page the VMM named, identity-mapped, shared with the store for the
    // life of the program; `RawPage` reads it with atomics and checks every index.
    GuestClient::new(unsafe { RawPage::new(page) })
}
