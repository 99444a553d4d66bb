//! The `sched_op` hypercall (`xen/include/public/sched.h`): yield, block, poll, shutdown.

use crate::hypercall::{Errno, Hypercalls, arg, nr, slice_arg};

/// `SCHEDOP_yield`.
pub const SCHEDOP_YIELD: u64 = 0;
/// `SCHEDOP_block`.
pub const SCHEDOP_BLOCK: u64 = 1;
/// `SCHEDOP_shutdown`.
pub const SCHEDOP_SHUTDOWN: u64 = 2;
/// `SCHEDOP_poll`.
pub const SCHEDOP_POLL: u64 = 3;

/// Most ports one `SCHEDOP_poll` may name (Xen's `do_poll`: "fairly arbitrary limit").
pub const POLL_MAX_PORTS: usize = 128;

/// `SHUTDOWN_*` reasons.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum ShutdownReason {
    /// `SHUTDOWN_poweroff`.
    Poweroff = 0,
    /// `SHUTDOWN_reboot`.
    Reboot = 1,
    /// `SHUTDOWN_crash`.
    Crash = 3,
}

/// `struct sched_shutdown`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedShutdown {
    /// `SHUTDOWN_*`.
    pub reason: u32,
}

/// `struct sched_poll`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedPoll {
    /// Guest handle of the port array.
    pub ports: u64,
    /// Ports in the array.
    pub nr_ports: u32,
    /// Absolute Xen system time (ns) to give up at; 0: no timeout.
    pub timeout: u64,
}

const _: () = {
    use core::mem::{offset_of, size_of};
    // sched.h, checked with gcc at Xen c447b7308b13.
    assert!(size_of::<SchedShutdown>() == 4);
    assert!(size_of::<SchedPoll>() == 24);
    assert!(offset_of!(SchedPoll, nr_ports) == 8);
    assert!(offset_of!(SchedPoll, timeout) == 16);
};

/// `SCHEDOP_yield`.
pub fn yield_now(hc: &mut impl Hypercalls) -> Result<(), Errno> {
    Errno::check(hc.call2(nr::SCHED_OP, SCHEDOP_YIELD, 0)).map(|_| ())
}

/// `SCHEDOP_block`: sleeps until an event arrives. (For an HVM/PVH guest Xen decides
/// whether an event "needs delivery" through the virtual interrupt path, so without an
/// upcall vector and interrupts enabled an event that arrived just before the call is not
/// seen; the store uses [`poll`] instead.)
pub fn block(hc: &mut impl Hypercalls) -> Result<(), Errno> {
    Errno::check(hc.call2(nr::SCHED_OP, SCHEDOP_BLOCK, 0)).map(|_| ())
}

/// `SCHEDOP_poll`: sleeps until one of `ports` is pending, or (with more than one port
/// named) until any event arrives for this domain, or until Xen's system time reaches
/// `timeout` (ns; 0: never). Xen checks the named ports after marking the vCPU as polling,
/// so an event on one of them cannot be missed. At most [`POLL_MAX_PORTS`] ports.
pub fn poll(hc: &mut impl Hypercalls, ports: &[u32], timeout: u64) -> Result<(), Errno> {
    let nr_ports = u32::try_from(ports.len())
        .ok()
        .filter(|&n| n as usize <= POLL_MAX_PORTS)
        .ok_or(Errno::EINVAL)?;
    let mut p = SchedPoll {
        ports: slice_arg(ports),
        nr_ports,
        timeout,
    };
    Errno::check(hc.call2(nr::SCHED_OP, SCHEDOP_POLL, arg(&mut p))).map(|_| ())
}

/// `SCHEDOP_shutdown`: does not return on success.
pub fn shutdown(hc: &mut impl Hypercalls, reason: ShutdownReason) -> Result<(), Errno> {
    let mut s = SchedShutdown {
        reason: reason as u32,
    };
    Errno::check(hc.call2(nr::SCHED_OP, SCHEDOP_SHUTDOWN, arg(&mut s))).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xenfake::FakeXen;

    #[test]
    fn encodings() {
        let mut xen = FakeXen::new();
        yield_now(&mut xen).unwrap();
        assert_eq!(
            xen.calls().last().unwrap(),
            &(nr::SCHED_OP, [0, 0, 0, 0, 0])
        );
        block(&mut xen).unwrap();
        assert_eq!(xen.calls().last().unwrap().1[0], SCHEDOP_BLOCK);
        poll(&mut xen, &[3, 7], 1234).unwrap();
        assert_eq!(xen.polls(), [(std::vec![3, 7], 1234)]);
        assert_eq!(poll(&mut xen, &[0; 129], 0), Err(Errno::EINVAL));
        shutdown(&mut xen, ShutdownReason::Crash).unwrap();
        assert_eq!(xen.shutdown_reason(), Some(3));
    }
}
