//! Event channels: the `event_channel_op` hypercall (`xen/include/public/event_channel.h`)
//! and the 2-level ABI over [`SharedInfo`] / [`VcpuInfo`]: the upcall flag, a fair scan for
//! pending ports, and unmasking.
//!
//! The scan follows Xen's contract (the comment on `struct shared_info`, and
//! `evtchn_2l_set_pending`): the guest clears `evtchn_upcall_pending` before it looks, takes
//! the selector word with an atomic exchange, and clears each port's pending bit with an
//! atomic read-modify-write *before* serving it, so that an event arriving while the port is
//! served sets the bit (and the selector, and the upcall flag) again and is not lost. Like
//! Linux (`evtchn_2l_handle_events`), the scan resumes after the last port it served, so a
//! busy port cannot starve the others.

use crate::hypercall::{Errno, Hypercalls, arg, nr};
use crate::shared_info::{SharedInfo, VcpuInfo, WORD_BITS, WORDS, locate};
use core::sync::atomic::Ordering;

/// `EVTCHNOP_bind_interdomain`.
pub const EVTCHNOP_BIND_INTERDOMAIN: u64 = 0;
/// `EVTCHNOP_bind_virq`.
pub const EVTCHNOP_BIND_VIRQ: u64 = 1;
/// `EVTCHNOP_close`.
pub const EVTCHNOP_CLOSE: u64 = 3;
/// `EVTCHNOP_send`.
pub const EVTCHNOP_SEND: u64 = 4;
/// `EVTCHNOP_status`.
pub const EVTCHNOP_STATUS: u64 = 5;
/// `EVTCHNOP_alloc_unbound`.
pub const EVTCHNOP_ALLOC_UNBOUND: u64 = 6;
/// `EVTCHNOP_unmask`.
pub const EVTCHNOP_UNMASK: u64 = 9;

/// `VIRQ_DOM_EXC`: some domain changed state (global; bound by the store).
pub const VIRQ_DOM_EXC: u32 = 3;
/// `DOMID_SELF`.
pub const DOMID_SELF: u16 = 0x7ff0;

/// `struct evtchn_alloc_unbound`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocUnbound {
    /// IN: the domain the port is allocated in.
    pub dom: u16,
    /// IN: the domain allowed to bind to it.
    pub remote_dom: u16,
    /// OUT: the port.
    pub port: u32,
}

/// `struct evtchn_bind_interdomain`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindInterdomain {
    /// IN: the remote domain.
    pub remote_dom: u16,
    /// IN: its unbound port.
    pub remote_port: u32,
    /// OUT: our port.
    pub local_port: u32,
}

/// `struct evtchn_bind_virq`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindVirq {
    /// IN: `VIRQ_*`.
    pub virq: u32,
    /// IN: the vCPU (0 for global VIRQs).
    pub vcpu: u32,
    /// OUT: our port.
    pub port: u32,
}

/// `struct evtchn_close`, `struct evtchn_send`, `struct evtchn_unmask`: one port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Port {
    /// IN: the port.
    pub port: u32,
}

/// `struct evtchn_status`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// IN: the domain (`DOMID_SELF` for our own ports).
    pub dom: u16,
    /// IN: the port.
    pub port: u32,
    /// OUT: `EVTCHNSTAT_*`.
    pub status: u32,
    /// OUT: the vCPU it notifies.
    pub vcpu: u32,
    /// OUT: the union `u`, as words: `unbound.dom` / `interdomain.dom` in the low 16 bits of
    /// `u[0]`, `interdomain.port` in `u[1]`; `pirq` / `virq` in `u[0]`.
    pub u: [u32; 2],
}

const _: () = {
    use core::mem::{offset_of, size_of};
    // event_channel.h, checked with gcc at Xen c447b7308b13.
    assert!(size_of::<AllocUnbound>() == 8);
    assert!(offset_of!(AllocUnbound, remote_dom) == 2);
    assert!(offset_of!(AllocUnbound, port) == 4);
    assert!(size_of::<BindInterdomain>() == 12);
    assert!(offset_of!(BindInterdomain, remote_port) == 4);
    assert!(offset_of!(BindInterdomain, local_port) == 8);
    assert!(size_of::<BindVirq>() == 12);
    assert!(offset_of!(BindVirq, vcpu) == 4);
    assert!(offset_of!(BindVirq, port) == 8);
    assert!(size_of::<Port>() == 4);
    assert!(size_of::<Status>() == 24);
    assert!(offset_of!(Status, port) == 4);
    assert!(offset_of!(Status, status) == 8);
    assert!(offset_of!(Status, vcpu) == 12);
    assert!(offset_of!(Status, u) == 16);
};

/// A port's state as `EVTCHNOP_status` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelStatus {
    /// `EVTCHNSTAT_closed`.
    Closed,
    /// `EVTCHNSTAT_unbound`: waiting for `dom` to bind.
    Unbound {
        /// The domain that may bind.
        dom: u16,
    },
    /// `EVTCHNSTAT_interdomain`: connected to `port` of `dom`.
    Interdomain {
        /// The remote domain.
        dom: u16,
        /// The remote port.
        port: u32,
    },
    /// `EVTCHNSTAT_pirq`.
    Pirq(u32),
    /// `EVTCHNSTAT_virq`.
    Virq(u32),
    /// `EVTCHNSTAT_ipi`.
    Ipi,
    /// A status this code does not know.
    Other(u32),
}

fn op<T>(hc: &mut impl Hypercalls, cmd: u64, value: &mut T) -> Result<(), Errno> {
    Errno::check(hc.call2(nr::EVENT_CHANNEL_OP, cmd, arg(value))).map(|_| ())
}

/// `EVTCHNOP_alloc_unbound`: a port in `dom` that `remote_dom` may bind to.
pub fn alloc_unbound(hc: &mut impl Hypercalls, dom: u16, remote_dom: u16) -> Result<u32, Errno> {
    let mut a = AllocUnbound {
        dom,
        remote_dom,
        port: 0,
    };
    op(hc, EVTCHNOP_ALLOC_UNBOUND, &mut a)?;
    Ok(a.port)
}

/// `EVTCHNOP_bind_interdomain`: connects a local port to `remote_dom`'s unbound
/// `remote_port`. (Xen marks the new local port pending, in case the remote side notified
/// before the bind.)
pub fn bind_interdomain(
    hc: &mut impl Hypercalls,
    remote_dom: u16,
    remote_port: u32,
) -> Result<u32, Errno> {
    let mut b = BindInterdomain {
        remote_dom,
        remote_port,
        local_port: 0,
    };
    op(hc, EVTCHNOP_BIND_INTERDOMAIN, &mut b)?;
    Ok(b.local_port)
}

/// `EVTCHNOP_bind_virq`.
pub fn bind_virq(hc: &mut impl Hypercalls, virq: u32, vcpu: u32) -> Result<u32, Errno> {
    let mut b = BindVirq {
        virq,
        vcpu,
        port: 0,
    };
    op(hc, EVTCHNOP_BIND_VIRQ, &mut b)?;
    Ok(b.port)
}

/// `EVTCHNOP_send`: notifies the other end of `port`.
pub fn send(hc: &mut impl Hypercalls, port: u32) -> Result<(), Errno> {
    op(hc, EVTCHNOP_SEND, &mut Port { port })
}

/// `EVTCHNOP_close`.
pub fn close(hc: &mut impl Hypercalls, port: u32) -> Result<(), Errno> {
    op(hc, EVTCHNOP_CLOSE, &mut Port { port })
}

/// `EVTCHNOP_unmask`: Xen clears the mask and, if the port is pending, raises it again.
pub fn unmask_op(hc: &mut impl Hypercalls, port: u32) -> Result<(), Errno> {
    op(hc, EVTCHNOP_UNMASK, &mut Port { port })
}

/// `EVTCHNOP_status`.
pub fn status(hc: &mut impl Hypercalls, dom: u16, port: u32) -> Result<ChannelStatus, Errno> {
    let mut s = Status {
        dom,
        port,
        ..Status::default()
    };
    op(hc, EVTCHNOP_STATUS, &mut s)?;
    Ok(decode_status(&s))
}

/// Decodes the OUT part of `struct evtchn_status`.
pub fn decode_status(s: &Status) -> ChannelStatus {
    let [u0, u1] = s.u;
    match s.status {
        0 => ChannelStatus::Closed,
        1 => ChannelStatus::Unbound { dom: u0 as u16 },
        2 => ChannelStatus::Interdomain {
            dom: u0 as u16,
            port: u1,
        },
        3 => ChannelStatus::Pirq(u0),
        4 => ChannelStatus::Virq(u0),
        5 => ChannelStatus::Ipi,
        other => ChannelStatus::Other(other),
    }
}

/// Unmasks `port` for `vcpu`, as Linux's 2-level `unmask_evtchn` does: if the port is
/// pending, Xen must do it (`EVTCHNOP_unmask`, which clears the mask and raises the event
/// atomically); otherwise the mask bit is cleared here, and an event that arrived between the
/// check and the clear (which found the port masked and so set no selector bit) is raised
/// here as Xen would have.
pub fn unmask(
    hc: &mut impl Hypercalls,
    si: &SharedInfo,
    vcpu: &VcpuInfo,
    port: u32,
) -> Result<(), Errno> {
    let Some((w, _)) = locate(port) else {
        return Err(Errno::EINVAL);
    };
    if !si.is_masked(port) {
        return Ok(());
    }
    if si.is_pending(port) {
        return unmask_op(hc, port);
    }
    si.clear_mask(port);
    if si.is_pending(port) {
        vcpu.mark_word_pending(w);
    }
    Ok(())
}

/// Takes `evtchn_upcall_pending` (the guest clears it before it scans).
pub fn take_upcall(vcpu: &VcpuInfo) -> bool {
    // ORDERING: SeqCst; clearing the flag comes before the scan takes the selector
    // (`Scanner::next`), and pairs with Xen setting the selector bit and then the flag
    // (`VcpuInfo::mark_word_pending`): a port raised after this swap sets the flag again.
    vcpu.evtchn_upcall_pending.swap(0, Ordering::SeqCst) != 0
}

/// The fair scan of the 2-level bitmaps. It keeps the selector bits it took from Xen until
/// their words hold no unmasked pending port, and the position after the last port served.
#[derive(Clone, Debug, Default)]
pub struct Scanner {
    sel: u64,
    word: usize,
    bit: usize,
}

impl Scanner {
    /// A scan starting at port 0.
    pub fn new() -> Scanner {
        Scanner::default()
    }

    /// The next pending unmasked port, its pending bit cleared; `None` when there is none.
    ///
    /// The words the selector names are visited cyclically from the one holding the last
    /// port served: that word first from the bit after it, then the others, then that word
    /// again below it.
    pub fn next(&mut self, si: &SharedInfo, vcpu: &VcpuInfo) -> Option<u32> {
        // ORDERING: SeqCst; taking the selector comes before the loads of the pending words it
        // names, and pairs with Xen setting a pending bit and then its selector bit
        // (`VcpuInfo::mark_word_pending`): a selector bit seen means its pending bit is seen.
        self.sel |= vcpu.evtchn_pending_sel.swap(0, Ordering::SeqCst);
        for step in 0..=WORDS {
            let w = (self.word + step) % WORDS;
            let sel_bit = 1u64 << w;
            if self.sel & sel_bit == 0 {
                continue;
            }
            let live = si.live_word(w);
            let from = if step == 0 { self.bit } else { 0 };
            let to = if step == WORDS { self.bit } else { WORD_BITS };
            let window = live & range_mask(from, to);
            if window != 0 {
                let b = window.trailing_zeros() as usize;
                let port = (w * WORD_BITS + b) as u32;
                if si.test_and_clear_pending(port) {
                    if b + 1 == WORD_BITS {
                        self.word = (w + 1) % WORDS;
                        self.bit = 0;
                    } else {
                        self.word = w;
                        self.bit = b + 1;
                    }
                    return Some(port);
                }
            }
            if si.live_word(w) == 0 {
                self.sel &= !sel_bit;
            }
        }
        None
    }

    /// Whether selector bits are held (ports may still be pending).
    pub fn holds_work(&self) -> bool {
        self.sel != 0
    }
}

/// Bits `from..to` of a word.
fn range_mask(from: usize, to: usize) -> u64 {
    let upper = if to >= WORD_BITS {
        u64::MAX
    } else {
        (1u64 << to) - 1
    };
    let lower = if from >= WORD_BITS {
        u64::MAX
    } else {
        (1u64 << from) - 1
    };
    upper & !lower
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xenfake::FakeXen;
    use std::vec::Vec;

    fn drain(scan: &mut Scanner, si: &SharedInfo) -> Vec<u32> {
        let vcpu = si.vcpu(0).unwrap();
        let mut out = Vec::new();
        while let Some(p) = scan.next(si, vcpu) {
            out.push(p);
        }
        out
    }

    #[test]
    fn range_masks() {
        assert_eq!(range_mask(0, 64), u64::MAX);
        assert_eq!(range_mask(3, 64), u64::MAX << 3);
        assert_eq!(range_mask(0, 3), 0b111);
        assert_eq!(range_mask(2, 4), 0b1100);
        assert_eq!(range_mask(5, 5), 0);
        assert_eq!(range_mask(64, 64), 0);
    }

    #[test]
    fn finds_every_pending_port_once() {
        let si = SharedInfo::new();
        let ports = [0u32, 1, 63, 64, 100, 2047, 4095];
        for p in ports {
            si.raise(0, p);
        }
        let mut scan = Scanner::new();
        assert_eq!(drain(&mut scan, &si), ports);
        assert!(!scan.holds_work());
        assert_eq!(si.live_word(0), 0);
    }

    #[test]
    fn masked_ports_wait_for_unmask() {
        let si = SharedInfo::new();
        si.mask(5);
        si.raise(0, 5);
        let mut scan = Scanner::new();
        assert_eq!(drain(&mut scan, &si), []);
        let mut xen = FakeXen::new();
        xen.attach_shared_info(&si);
        // Pending: the unmask goes to Xen, which raises it.
        unmask(&mut xen, &si, si.vcpu(0).unwrap(), 5).unwrap();
        assert_eq!(xen.calls_of(nr::EVENT_CHANNEL_OP).len(), 1);
        assert_eq!(drain(&mut scan, &si), [5]);
        // Not pending: cleared locally, no hypercall.
        si.mask(6);
        unmask(&mut xen, &si, si.vcpu(0).unwrap(), 6).unwrap();
        assert!(!si.is_masked(6));
        assert_eq!(xen.calls_of(nr::EVENT_CHANNEL_OP).len(), 1);
        si.raise(0, 6);
        assert_eq!(drain(&mut scan, &si), [6]);
        assert_eq!(
            unmask(&mut xen, &si, si.vcpu(0).unwrap(), 9999),
            Err(Errno::EINVAL)
        );
    }

    /// A port that is pending again as soon as it is served (a busy guest) does not starve
    /// the others: service goes round.
    #[test]
    fn scan_is_fair() {
        let si = SharedInfo::new();
        let busy = [3u32, 70, 71, 4000];
        for p in busy {
            si.raise(0, p);
        }
        let vcpu = si.vcpu(0).unwrap();
        let mut scan = Scanner::new();
        let mut served = Vec::new();
        for _ in 0..12 {
            let p = scan.next(&si, vcpu).unwrap();
            served.push(p);
            si.raise(0, p);
        }
        assert_eq!(served, [3, 70, 71, 4000, 3, 70, 71, 4000, 3, 70, 71, 4000]);
    }

    /// Two busy ports in the same word, with a port below them raised late: the late one is
    /// served on the wrap-around, not after the busy ones are done.
    #[test]
    fn wraps_within_a_word() {
        let si = SharedInfo::new();
        let vcpu = si.vcpu(0).unwrap();
        si.raise(0, 10);
        si.raise(0, 20);
        let mut scan = Scanner::new();
        assert_eq!(scan.next(&si, vcpu), Some(10));
        si.raise(0, 10);
        si.raise(0, 5);
        assert_eq!(scan.next(&si, vcpu), Some(20));
        si.raise(0, 20);
        assert_eq!(scan.next(&si, vcpu), Some(5));
        assert_eq!(scan.next(&si, vcpu), Some(10));
        assert_eq!(scan.next(&si, vcpu), Some(20));
        assert_eq!(scan.next(&si, vcpu), None);
    }

    #[test]
    fn an_event_during_service_is_not_lost() {
        let si = SharedInfo::new();
        let vcpu = si.vcpu(0).unwrap();
        si.raise(0, 9);
        assert!(take_upcall(vcpu));
        let mut scan = Scanner::new();
        assert_eq!(scan.next(&si, vcpu), Some(9));
        // The peer notifies while port 9 is being served.
        si.raise(0, 9);
        assert!(take_upcall(vcpu));
        assert_eq!(scan.next(&si, vcpu), Some(9));
        assert_eq!(scan.next(&si, vcpu), None);
        assert!(!take_upcall(vcpu));
    }

    #[test]
    fn hypercall_encoding() {
        let mut xen = FakeXen::new();
        xen.add_domain(5);
        let remote = xen.alloc_remote(5);
        let local = bind_interdomain(&mut xen, 5, remote).unwrap();
        let call = *xen.calls().last().unwrap();
        assert_eq!(call.0, nr::EVENT_CHANNEL_OP);
        assert_eq!(call.1[0], EVTCHNOP_BIND_INTERDOMAIN);
        assert_eq!(call.1[2..], [0, 0, 0]);
        assert_eq!(
            status(&mut xen, DOMID_SELF, local).unwrap(),
            ChannelStatus::Interdomain {
                dom: 5,
                port: remote
            }
        );
        send(&mut xen, local).unwrap();
        assert_eq!(xen.sent(), [local]);
        close(&mut xen, local).unwrap();
        assert_eq!(
            status(&mut xen, DOMID_SELF, local).unwrap(),
            ChannelStatus::Closed
        );
        assert_eq!(send(&mut xen, local), Err(Errno::EINVAL));
        assert_eq!(bind_interdomain(&mut xen, 5, 999), Err(Errno::EINVAL));
        let virq = bind_virq(&mut xen, VIRQ_DOM_EXC, 0).unwrap();
        assert_eq!(
            status(&mut xen, DOMID_SELF, virq).unwrap(),
            ChannelStatus::Virq(3)
        );
        assert_eq!(bind_virq(&mut xen, VIRQ_DOM_EXC, 0), Err(Errno::EEXIST));
        let unbound = alloc_unbound(&mut xen, DOMID_SELF, 0).unwrap();
        assert_eq!(
            status(&mut xen, DOMID_SELF, unbound).unwrap(),
            ChannelStatus::Unbound { dom: 0 }
        );
    }

    #[test]
    fn status_decoding() {
        let s = |status, u| Status {
            status,
            u,
            ..Status::default()
        };
        assert_eq!(decode_status(&s(0, [0, 0])), ChannelStatus::Closed);
        assert_eq!(
            decode_status(&s(1, [7, 0])),
            ChannelStatus::Unbound { dom: 7 }
        );
        assert_eq!(
            decode_status(&s(2, [7, 9])),
            ChannelStatus::Interdomain { dom: 7, port: 9 }
        );
        assert_eq!(decode_status(&s(3, [11, 0])), ChannelStatus::Pirq(11));
        assert_eq!(decode_status(&s(4, [3, 0])), ChannelStatus::Virq(3));
        assert_eq!(decode_status(&s(5, [0, 0])), ChannelStatus::Ipi);
        assert_eq!(decode_status(&s(77, [0, 0])), ChannelStatus::Other(77));
    }
}
