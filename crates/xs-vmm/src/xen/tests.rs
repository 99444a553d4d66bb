//! The hypercall handlers against hostile arguments: every answer a Xen error code, no
//! panic, no state corrupted.

use super::*;

const RAM: u64 = 1 << 20;
/// A scratch argument area.
const ARG: u64 = 0x8000;
const BAD: u64 = 0xdead_0000_0000;

fn setup() -> (GuestRam, Xen) {
    let ram = GuestRam::new(&[(0, RAM as usize)]).unwrap();
    let xen = Xen::new(Config {
        domid: 1,
        ram_pages: RAM / PAGE_SIZE,
        user_hypercalls: true,
        stubs: Stubs::Port,
    });
    (ram, xen)
}

fn call(xen: &mut Xen, ram: &GuestRam, op: u64, a: [u64; 5]) -> i64 {
    let mem = Access { ram, cr3: None };
    xen.hypercall(&mem, 0, op, a).0
}

fn evtchn(xen: &mut Xen, ram: &GuestRam, cmd: u64, arg: &[u8]) -> (i64, Vec<u8>) {
    ram.write(ARG, arg).unwrap();
    let rc = call(xen, ram, nr::EVENT_CHANNEL_OP, [cmd, ARG, 0, 0, 0]);
    let mut out = vec![0; arg.len()];
    ram.read(ARG, &mut out).unwrap();
    (rc, out)
}

fn alloc_unbound(xen: &mut Xen, ram: &GuestRam, remote: u16) -> u32 {
    let mut a = [0u8; 8];
    a[..2].copy_from_slice(&DOMID_SELF.to_le_bytes());
    a[2..4].copy_from_slice(&remote.to_le_bytes());
    let (rc, out) = evtchn(xen, ram, op::EVTCHNOP_ALLOC_UNBOUND, &a);
    assert_eq!(rc, 0);
    u32_at(&out, 4)
}

fn port_op(xen: &mut Xen, ram: &GuestRam, cmd: u64, port: u32) -> i64 {
    evtchn(xen, ram, cmd, &port.to_le_bytes()).0
}

const EFAULT: i64 = -14;
const EINVAL: i64 = -22;
const ENOSYS: i64 = -38;
const EPERM: i64 = -1;
const ESRCH: i64 = -3;

#[test]
fn unknown_hypercalls_are_enosys_and_counted() {
    let (ram, mut xen) = setup();
    for op in [0, 1, 99, 127, 128, u64::MAX] {
        assert_eq!(call(&mut xen, &ram, op, [0; 5]), ENOSYS, "op {op}");
    }
    for (op, cmd) in [
        (nr::EVENT_CHANNEL_OP, op::EVTCHNOP_INIT_CONTROL),
        (nr::EVENT_CHANNEL_OP, 1), // bind_virq
        (nr::MEMORY_OP, 9),
        (nr::HVM_OP, 99),
        (nr::SCHED_OP, 77),
        (nr::GRANT_TABLE_OP, 0), // map_grant_ref: a domU maps nothing here
        (VCPU_OP, 99),
        (nr::XEN_VERSION, 99),
    ] {
        let a = if op == VCPU_OP {
            [cmd, 0, ARG, 0, 0]
        } else {
            [cmd, ARG, 1, 0, 0]
        };
        assert_eq!(call(&mut xen, &ram, op, a), ENOSYS, "{op}/{cmd}");
    }
    assert_eq!(xen.counters.unknown, 14);
    assert_eq!(xen.counters.hypercalls, 14);
}

#[test]
fn addresses_outside_guest_memory_fault() {
    let (ram, mut xen) = setup();
    let cases: &[(u64, u64)] = &[
        (nr::XEN_VERSION, op::XENVER_GET_FEATURES),
        (nr::XEN_VERSION, op::XENVER_EXTRAVERSION),
        (nr::MEMORY_OP, op::XENMEM_ADD_TO_PHYSMAP),
        (nr::MEMORY_OP, op::XENMEM_CURRENT_RESERVATION),
        (nr::HVM_OP, op::HVMOP_GET_PARAM),
        (nr::HVM_OP, op::HVMOP_SET_PARAM),
        (nr::HVM_OP, op::HVMOP_SET_EVTCHN_UPCALL_VECTOR),
        (nr::EVENT_CHANNEL_OP, op::EVTCHNOP_ALLOC_UNBOUND),
        (nr::EVENT_CHANNEL_OP, op::EVTCHNOP_BIND_INTERDOMAIN),
        (nr::EVENT_CHANNEL_OP, op::EVTCHNOP_SEND),
        (nr::EVENT_CHANNEL_OP, op::EVTCHNOP_CLOSE),
        (nr::EVENT_CHANNEL_OP, op::EVTCHNOP_STATUS),
        (nr::EVENT_CHANNEL_OP, op::EVTCHNOP_UNMASK),
        (nr::SCHED_OP, op::SCHEDOP_SHUTDOWN),
        (nr::SCHED_OP, op::SCHEDOP_POLL),
    ];
    for &(hc, cmd) in cases {
        for addr in [BAD, RAM - 1, u64::MAX, u64::MAX - 7] {
            assert_eq!(
                call(&mut xen, &ram, hc, [cmd, addr, 0, 0, 0]),
                EFAULT,
                "{hc}/{cmd} at {addr:#x}"
            );
        }
    }
    // Grant ops take the structure second; a frame list outside memory faults too.
    assert_eq!(
        call(
            &mut xen,
            &ram,
            nr::GRANT_TABLE_OP,
            [op::GNTTABOP_SETUP_TABLE, BAD, 1, 0, 0]
        ),
        EFAULT
    );
    let mut s = [0u8; 24];
    s[..2].copy_from_slice(&DOMID_SELF.to_le_bytes());
    s[4..8].copy_from_slice(&1u32.to_le_bytes());
    s[16..24].copy_from_slice(&BAD.to_le_bytes());
    ram.write(ARG, &s).unwrap();
    assert_eq!(
        call(
            &mut xen,
            &ram,
            nr::GRANT_TABLE_OP,
            [op::GNTTABOP_SETUP_TABLE, ARG, 1, 0, 0]
        ),
        EFAULT
    );
    assert_eq!(
        call(
            &mut xen,
            &ram,
            VCPU_OP,
            [op::VCPUOP_REGISTER_VCPU_INFO, 0, BAD, 0, 0]
        ),
        EFAULT
    );
    assert_eq!(
        call(
            &mut xen,
            &ram,
            nr::CONSOLE_IO,
            [op::CONSOLEIO_WRITE, 16, BAD, 0, 0]
        ),
        EFAULT
    );
    // The hypercall-page MSR: outside memory, or not page-aligned (a page index), faults.
    assert!(xen.write_hypercall_msr(&ram, BAD).is_err());
    assert!(xen.write_hypercall_msr(&ram, 0x1001).is_err());
    assert!(xen.write_hypercall_msr(&ram, u64::MAX).is_err());
    assert_eq!(xen.hypercall_page_gfn(), None);
    // Nothing was allocated by the failed calls.
    assert_eq!(xen.guest_chan(1), None);
}

#[test]
fn bad_ports_are_einval() {
    let (ram, mut xen) = setup();
    for port in [0, 1, 5, MAX_PORT, MAX_PORT + 1, 4096, u32::MAX] {
        for cmd in [op::EVTCHNOP_SEND, op::EVTCHNOP_CLOSE, op::EVTCHNOP_UNMASK] {
            assert_eq!(port_op(&mut xen, &ram, cmd, port), EINVAL, "{cmd} {port}");
        }
    }
    let mut st = [0u8; 24];
    st[..2].copy_from_slice(&DOMID_SELF.to_le_bytes());
    st[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(evtchn(&mut xen, &ram, op::EVTCHNOP_STATUS, &st).0, EINVAL);
    // Another domain's status, a channel for a domain that does not exist, binding a port
    // that is not unbound for us.
    st[..2].copy_from_slice(&7u16.to_le_bytes());
    assert_eq!(evtchn(&mut xen, &ram, op::EVTCHNOP_STATUS, &st).0, EPERM);
    let mut a = [0u8; 8];
    a[..2].copy_from_slice(&DOMID_SELF.to_le_bytes());
    a[2..4].copy_from_slice(&9u16.to_le_bytes());
    assert_eq!(
        evtchn(&mut xen, &ram, op::EVTCHNOP_ALLOC_UNBOUND, &a).0,
        ESRCH
    );
    a[..2].copy_from_slice(&0u16.to_le_bytes());
    assert_eq!(
        evtchn(&mut xen, &ram, op::EVTCHNOP_ALLOC_UNBOUND, &a).0,
        EPERM
    );
    let mut b = [0u8; 12];
    b[4..8].copy_from_slice(&3u32.to_le_bytes());
    assert_eq!(
        evtchn(&mut xen, &ram, op::EVTCHNOP_BIND_INTERDOMAIN, &b).0,
        EINVAL
    );
    b[..2].copy_from_slice(&42u16.to_le_bytes());
    assert_eq!(
        evtchn(&mut xen, &ram, op::EVTCHNOP_BIND_INTERDOMAIN, &b).0,
        ESRCH
    );
    // A send on an unbound port is dropped, as Xen does.
    let p = alloc_unbound(&mut xen, &ram, 0);
    assert_eq!(port_op(&mut xen, &ram, op::EVTCHNOP_SEND, p), 0);
    assert!(xen.take_local_events().is_empty());
}

#[test]
fn ports_run_out_cleanly() {
    let (ram, mut xen) = setup();
    for want in 1..=MAX_PORT {
        assert_eq!(alloc_unbound(&mut xen, &ram, 0), want);
    }
    let mut a = [0u8; 8];
    a[..2].copy_from_slice(&DOMID_SELF.to_le_bytes());
    assert_eq!(
        evtchn(&mut xen, &ram, op::EVTCHNOP_ALLOC_UNBOUND, &a).0,
        -28
    );
    assert_eq!(port_op(&mut xen, &ram, op::EVTCHNOP_CLOSE, 17), 0);
    assert_eq!(alloc_unbound(&mut xen, &ram, 0), 17);
}

#[test]
fn huge_counts_are_refused() {
    let (ram, mut xen) = setup();
    for count in [0, 2, 512, u64::MAX] {
        for cmd in [op::GNTTABOP_SETUP_TABLE, op::GNTTABOP_QUERY_SIZE] {
            assert_eq!(
                call(&mut xen, &ram, nr::GRANT_TABLE_OP, [cmd, ARG, count, 0, 0]),
                EINVAL
            );
        }
    }
    for count in [CONSOLE_WRITE_MAX + 1, u64::MAX] {
        assert_eq!(
            call(
                &mut xen,
                &ram,
                nr::CONSOLE_IO,
                [op::CONSOLEIO_WRITE, count, ARG, 0, 0]
            ),
            EINVAL
        );
    }
    let mut p = [0u8; 24];
    p[..8].copy_from_slice(&(ARG + 64).to_le_bytes());
    p[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    ram.write(ARG, &p).unwrap();
    assert_eq!(
        call(
            &mut xen,
            &ram,
            nr::SCHED_OP,
            [op::SCHEDOP_POLL, ARG, 0, 0, 0]
        ),
        EINVAL
    );
    // setup_table for more frames than the maximum: a grant status, not a hypercall error.
    let mut s = [0u8; 24];
    s[..2].copy_from_slice(&DOMID_SELF.to_le_bytes());
    s[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    s[16..24].copy_from_slice(&(ARG + 64).to_le_bytes());
    ram.write(ARG, &s).unwrap();
    assert_eq!(
        call(
            &mut xen,
            &ram,
            nr::GRANT_TABLE_OP,
            [op::GNTTABOP_SETUP_TABLE, ARG, 1, 0, 0]
        ),
        0
    );
    let mut out = [0u8; 24];
    ram.read(ARG, &mut out).unwrap();
    assert_eq!(u16_at(&out, 8) as i16, GNTST_GENERAL_ERROR);
}

#[test]
fn bad_grant_refs_are_refused() {
    let (ram, mut xen) = setup();
    // No frame yet.
    assert_eq!(xen.map_grant(&ram, 8, false), Err(GNTST_BAD_GNTREF));
    // Frame 0 at gfn 0x40; grant 8 permits dom0 to the page 0x41; grant 9 is read-only;
    // grant 10 names a frame outside memory; grant 11 is for dom 5.
    let mut x = [0u8; 24];
    x[..2].copy_from_slice(&DOMID_SELF.to_le_bytes());
    x[4..8].copy_from_slice(&op::XENMAPSPACE_GRANT_TABLE.to_le_bytes());
    x[16..24].copy_from_slice(&0x40u64.to_le_bytes());
    ram.write(ARG, &x).unwrap();
    assert_eq!(
        call(
            &mut xen,
            &ram,
            nr::MEMORY_OP,
            [op::XENMEM_ADD_TO_PHYSMAP, ARG, 0, 0, 0]
        ),
        0
    );
    let entry = |flags: u16, dom: u16, frame: u32| {
        let mut e = [0u8; 8];
        e[..2].copy_from_slice(&flags.to_le_bytes());
        e[2..4].copy_from_slice(&dom.to_le_bytes());
        e[4..].copy_from_slice(&frame.to_le_bytes());
        e
    };
    ram.write(0x40_000 + 8 * 8, &entry(GTF_PERMIT_ACCESS, 0, 0x41))
        .unwrap();
    ram.write(
        0x40_000 + 9 * 8,
        &entry(GTF_PERMIT_ACCESS | GTF_READONLY, 0, 0x41),
    )
    .unwrap();
    ram.write(0x40_000 + 10 * 8, &entry(GTF_PERMIT_ACCESS, 0, 0xdead_beef))
        .unwrap();
    ram.write(0x40_000 + 11 * 8, &entry(GTF_PERMIT_ACCESS, 5, 0x41))
        .unwrap();
    assert_eq!(xen.map_grant(&ram, 8, false), Ok(0x41));
    assert_eq!(
        ram.read_u64(0x40_000 + 64).unwrap() as u16 & (GTF_READING | GTF_WRITING),
        GTF_READING | GTF_WRITING
    );
    assert_eq!(xen.map_grant(&ram, 9, false), Err(GNTST_BAD_GNTREF));
    assert_eq!(xen.map_grant(&ram, 9, true), Ok(0x41));
    assert_eq!(xen.map_grant(&ram, 10, false), Err(GNTST_GENERAL_ERROR));
    assert_eq!(xen.map_grant(&ram, 11, false), Err(GNTST_BAD_GNTREF));
    assert_eq!(xen.map_grant(&ram, 12, false), Err(GNTST_BAD_GNTREF));
    for gref in [
        GRANTS_PER_FRAME,
        GRANTS_PER_FRAME * MAX_GRANT_FRAMES,
        u32::MAX,
    ] {
        assert_eq!(xen.map_grant(&ram, gref, false), Err(GNTST_BAD_GNTREF));
    }
    // Status frames (v2) and frames past the maximum are refused.
    x[8..16].copy_from_slice(&op::XENMAPIDX_GRANT_TABLE_STATUS.to_le_bytes());
    ram.write(ARG, &x).unwrap();
    assert_eq!(
        call(
            &mut xen,
            &ram,
            nr::MEMORY_OP,
            [op::XENMEM_ADD_TO_PHYSMAP, ARG, 0, 0, 0]
        ),
        EINVAL
    );
    x[8..16].copy_from_slice(&u64::from(MAX_GRANT_FRAMES).to_le_bytes());
    ram.write(ARG, &x).unwrap();
    assert_eq!(
        call(
            &mut xen,
            &ram,
            nr::MEMORY_OP,
            [op::XENMEM_ADD_TO_PHYSMAP, ARG, 0, 0, 0]
        ),
        EINVAL
    );
    // A frame outside memory.
    x[8..16].copy_from_slice(&1u64.to_le_bytes());
    x[16..24].copy_from_slice(&(BAD >> 12).to_le_bytes());
    ram.write(ARG, &x).unwrap();
    assert_eq!(
        call(
            &mut xen,
            &ram,
            nr::MEMORY_OP,
            [op::XENMEM_ADD_TO_PHYSMAP, ARG, 0, 0, 0]
        ),
        EINVAL
    );
}

#[test]
fn params_and_callbacks() {
    let (ram, mut xen) = setup();
    xen.set_param(param::STORE_PFN, 0xfeffc);
    let get = |xen: &mut Xen, index: u32| {
        let mut p = [0u8; 16];
        p[..2].copy_from_slice(&DOMID_SELF.to_le_bytes());
        p[4..8].copy_from_slice(&index.to_le_bytes());
        ram.write(ARG, &p).unwrap();
        let rc = call(xen, &ram, nr::HVM_OP, [op::HVMOP_GET_PARAM, ARG, 0, 0, 0]);
        (rc, ram.read_u64(ARG + 8).unwrap())
    };
    assert_eq!(get(&mut xen, param::STORE_PFN), (0, 0xfeffc));
    assert_eq!(get(&mut xen, HVM_NR_PARAMS).0, EINVAL);
    assert_eq!(get(&mut xen, u32::MAX).0, EINVAL);
    let set = |xen: &mut Xen, index: u32, value: u64| {
        let mut p = [0u8; 16];
        p[..2].copy_from_slice(&DOMID_SELF.to_le_bytes());
        p[4..8].copy_from_slice(&index.to_le_bytes());
        p[8..].copy_from_slice(&value.to_le_bytes());
        ram.write(ARG, &p).unwrap();
        call(xen, &ram, nr::HVM_OP, [op::HVMOP_SET_PARAM, ARG, 0, 0, 0])
    };
    // A guest cannot move its store page; GSI callbacks and tiny vectors are refused.
    assert_eq!(set(&mut xen, param::STORE_PFN, 5), EPERM);
    assert_eq!(get(&mut xen, param::STORE_PFN), (0, 0xfeffc));
    assert_eq!(set(&mut xen, param::CALLBACK_IRQ, 5), EINVAL);
    assert_eq!(set(&mut xen, param::CALLBACK_IRQ, (2 << 56) | 3), EINVAL);
    assert_eq!(set(&mut xen, param::CALLBACK_IRQ, (2 << 56) | 0xf3), 0);
    assert_eq!(xen.upcall_vector(), Some(0xf3));
    let mut v = [0u8; 8];
    v[..4].copy_from_slice(&1u32.to_le_bytes());
    v[4] = 0x40;
    ram.write(ARG, &v).unwrap();
    assert_eq!(
        call(
            &mut xen,
            &ram,
            nr::HVM_OP,
            [op::HVMOP_SET_EVTCHN_UPCALL_VECTOR, ARG, 0, 0, 0]
        ),
        -2
    );
    v[..4].copy_from_slice(&0u32.to_le_bytes());
    ram.write(ARG, &v).unwrap();
    assert_eq!(
        call(
            &mut xen,
            &ram,
            nr::HVM_OP,
            [op::HVMOP_SET_EVTCHN_UPCALL_VECTOR, ARG, 0, 0, 0]
        ),
        0
    );
    assert_eq!(xen.upcall_vector(), Some(0x40));
}

#[test]
fn cpl3_hypercalls_need_the_policy() {
    let (ram, mut xen) = setup();
    let mem = Access {
        ram: &ram,
        cr3: None,
    };
    assert_eq!(
        xen.hypercall(&mem, 3, nr::XEN_VERSION, [0; 5]).0,
        (4 << 16) | 19
    );
    let mut strict = Xen::new(Config {
        domid: 1,
        ram_pages: 1,
        user_hypercalls: false,
        stubs: Stubs::Port,
    });
    assert_eq!(strict.hypercall(&mem, 3, nr::XEN_VERSION, [0; 5]).0, EPERM);
    assert_eq!(
        strict.hypercall(&mem, 0, nr::XEN_VERSION, [0; 5]).0,
        (4 << 16) | 19
    );
}

/// Maps shared_info at gfn 0x20 and the upcall vector.
fn with_events(xen: &mut Xen, ram: &GuestRam) {
    let mut x = [0u8; 24];
    x[..2].copy_from_slice(&DOMID_SELF.to_le_bytes());
    x[16..24].copy_from_slice(&0x20u64.to_le_bytes());
    ram.write(ARG, &x).unwrap();
    assert_eq!(
        call(
            xen,
            ram,
            nr::MEMORY_OP,
            [op::XENMEM_ADD_TO_PHYSMAP, ARG, 0, 0, 0]
        ),
        0
    );
    let mut v = [0u8; 8];
    v[4] = 0xf3;
    ram.write(ARG, &v).unwrap();
    assert_eq!(
        call(
            xen,
            ram,
            nr::HVM_OP,
            [op::HVMOP_SET_EVTCHN_UPCALL_VECTOR, ARG, 0, 0, 0]
        ),
        0
    );
}

#[test]
fn loopback_channel_delivers_an_upcall() {
    let (ram, mut xen) = setup();
    with_events(&mut xen, &ram);
    let a = alloc_unbound(&mut xen, &ram, DOMID_SELF);
    let mut b = [0u8; 12];
    b[..2].copy_from_slice(&DOMID_SELF.to_le_bytes());
    b[4..8].copy_from_slice(&a.to_le_bytes());
    let (rc, out) = evtchn(&mut xen, &ram, op::EVTCHNOP_BIND_INTERDOMAIN, &b);
    assert_eq!(rc, 0);
    let bport = u32_at(&out, 8);
    assert_eq!(port_op(&mut xen, &ram, op::EVTCHNOP_SEND, bport), 0);
    assert_eq!(xen.take_upcall(), Some(0xf3));
    let pending = ram.read_u64(0x20_000 + 2048).unwrap();
    assert_eq!(pending, 1 << a);
    assert_eq!(ram.read(0x20_000, &mut [0u8; 1]).map(|_| ()), Ok(()));
    // A second send while the upcall is still pending raises nothing new.
    assert_eq!(port_op(&mut xen, &ram, op::EVTCHNOP_SEND, bport), 0);
    assert_eq!(xen.take_upcall(), None);
    // Masked: pending, no upcall; unmask delivers it.
    ram.write_u64(0x20_000 + 2048, 0).unwrap();
    ram.write(0x20_000, &[0]).unwrap();
    ram.write_u64(0x20_000 + 8, 0).unwrap();
    ram.write_u64(0x20_000 + 2560, 1 << a).unwrap();
    assert_eq!(port_op(&mut xen, &ram, op::EVTCHNOP_SEND, bport), 0);
    assert_eq!(xen.take_upcall(), None);
    assert_eq!(port_op(&mut xen, &ram, op::EVTCHNOP_UNMASK, a), 0);
    assert_eq!(xen.take_upcall(), Some(0xf3));
    // Closing one end leaves the other unbound.
    assert_eq!(port_op(&mut xen, &ram, op::EVTCHNOP_CLOSE, bport), 0);
    assert_eq!(xen.guest_chan(a), Some(Chan::Unbound { remote_dom: 1 }));
}

#[test]
fn the_vmms_channel() {
    let (ram, mut xen) = setup();
    with_events(&mut xen, &ram);
    let guest = xen.alloc_guest_unbound(DOM0).unwrap();
    assert_eq!(xen.bind_local(guest + 1), Err(Errno::EINVAL));
    let local = xen.bind_local(guest).unwrap();
    assert_eq!(xen.bind_local(guest), Err(Errno::EINVAL));
    assert_eq!(port_op(&mut xen, &ram, op::EVTCHNOP_SEND, guest), 0);
    assert_eq!(xen.take_local_events(), vec![local]);
    xen.notify_local(&ram, local);
    assert_eq!(xen.take_upcall(), Some(0xf3));
    // The guest closes its end: the VMM's port is unbound, sends go nowhere.
    assert_eq!(port_op(&mut xen, &ram, op::EVTCHNOP_CLOSE, guest), 0);
    xen.notify_local(&ram, local);
    assert_eq!(xen.local_peer(local), None);
}

#[test]
fn register_vcpu_info() {
    let (ram, mut xen) = setup();
    with_events(&mut xen, &ram);
    let reg = |xen: &mut Xen, mfn: u64, offset: u32| {
        let mut r = [0u8; 16];
        r[..8].copy_from_slice(&mfn.to_le_bytes());
        r[8..12].copy_from_slice(&offset.to_le_bytes());
        ram.write(ARG, &r).unwrap();
        call(
            xen,
            &ram,
            VCPU_OP,
            [op::VCPUOP_REGISTER_VCPU_INFO, 0, ARG, 0, 0],
        )
    };
    assert_eq!(reg(&mut xen, 0x30, 4090), EINVAL);
    assert_eq!(reg(&mut xen, 0x30, 4), EINVAL);
    assert_eq!(reg(&mut xen, BAD >> 12, 0), EINVAL);
    assert_eq!(
        call(
            &mut xen,
            &ram,
            VCPU_OP,
            [op::VCPUOP_REGISTER_VCPU_INFO, 1, ARG, 0, 0]
        ),
        -2
    );
    assert_eq!(reg(&mut xen, 0x30, 64), 0);
    assert_eq!(reg(&mut xen, 0x31, 0), EINVAL);
    let _ = xen.take_upcall();
    // Events now mark the new area.
    let guest = xen.alloc_guest_unbound(DOM0).unwrap();
    let local = xen.bind_local(guest).unwrap();
    ram.write(0x30_040, &[0]).unwrap();
    ram.write_u64(0x30_048, 0).unwrap();
    xen.notify_local(&ram, local);
    assert_eq!(xen.take_upcall(), Some(0xf3));
    assert_eq!(ram.read_u64(0x30_048).unwrap(), 1);
}

#[test]
fn hypercall_page_stubs() {
    let (ram, mut xen) = setup();
    xen.write_hypercall_msr(&ram, 0x5000).unwrap();
    let mut page = [0u8; 4096];
    ram.read(0x5000, &mut page).unwrap();
    let s = &page[32 * 32..32 * 32 + 8];
    assert_eq!(s, [0xb8, 32, 0, 0, 0, 0xe7, HYPERCALL_PORT as u8, 0xc3]);
    assert_eq!(page[32 * 23..32 * 23 + 2], [0x0f, 0x0b]);
    assert_eq!(xen.hypercall_page_gfn(), Some(5));
    let mmio = hypercall_page(Stubs::Mmio);
    assert_eq!(mmio[32 * 29..32 * 29 + 6], [0xb8, 29, 0, 0, 0, 0xa3]);
    assert_eq!(
        mmio[32 * 29 + 6..32 * 29 + 14],
        HYPERCALL_MMIO.to_le_bytes()
    );
    assert_eq!(mmio[32 * 29 + 14], 0xc3);
}

#[test]
fn translation_walks_the_page_tables() {
    let ram = GuestRam::new(&[(0, RAM as usize)]).unwrap();
    // PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000; va 0x40_0000_1000 -> 0x9000;
    // a 2 MiB page at va 0x40_0020_0000 -> 0x20_0000.
    ram.write_u64(0x1000, 0x2000 | 1).unwrap();
    ram.write_u64(0x2000 + 8, 0x3000 | 1).unwrap(); // PDPT[1]: 1 GiB..2 GiB
    ram.write_u64(0x3000, 0x4000 | 1).unwrap();
    ram.write_u64(0x3000 + 8, 0x20_0000 | 0x81).unwrap();
    ram.write_u64(0x4000 + 8, 0x9000 | 1).unwrap();
    let mem = Access {
        ram: &ram,
        cr3: Some(0x1000),
    };
    assert_eq!(mem.translate(0x4000_1234), Ok(0x9234));
    assert_eq!(mem.translate(0x4020_0010), Ok(0x20_0010));
    assert_eq!(mem.translate(0x4000_2000), Err(Errno::EFAULT));
    assert_eq!(mem.translate(0x8000_0000), Err(Errno::EFAULT));
    assert_eq!(mem.translate(0x8000_0000_0000), Err(Errno::EFAULT));
    // A read across into an unmapped page faults.
    assert_eq!(mem.read(0x4000_1ffc, &mut [0; 8]), Err(Errno::EFAULT));
    // Page tables pointing outside memory fault.
    ram.write_u64(0x1000 + 8, BAD | 1).unwrap();
    assert_eq!(mem.translate(0x80_0000_0000), Err(Errno::EFAULT));
}

#[test]
fn random_hypercalls_never_panic() {
    let (ram, mut xen) = setup();
    with_events(&mut xen, &ram);
    let mut rng = fastrand::Rng::with_seed(19);
    let ops = [
        nr::XEN_VERSION,
        nr::MEMORY_OP,
        VCPU_OP,
        nr::HVM_OP,
        nr::EVENT_CHANNEL_OP,
        nr::GRANT_TABLE_OP,
        nr::SCHED_OP,
        nr::CONSOLE_IO,
    ];
    let interesting = [0, 1, 2, 0x7ff0, u64::MAX, ARG, RAM - 4, BAD, 0x20_000];
    for _ in 0..200_000 {
        // Random bytes in the argument area, random small commands, hostile pointers.
        let mut junk = [0u8; 64];
        rng.fill(&mut junk);
        if rng.bool() {
            // Plausible domids and small numbers make the checks past the first ones run.
            junk[0] = 0xf0;
            junk[1] = 0x7f;
            junk[4] = rng.u8(..8);
            for b in &mut junk[5..8] {
                *b = 0;
            }
        }
        ram.write(ARG, &junk).unwrap();
        let op = ops[rng.usize(..ops.len())];
        let pick = |rng: &mut fastrand::Rng| {
            if rng.bool() {
                interesting[rng.usize(..interesting.len())]
            } else {
                rng.u64(..16)
            }
        };
        let a = [
            rng.u64(..16),
            pick(&mut rng),
            pick(&mut rng),
            pick(&mut rng),
            pick(&mut rng),
        ];
        let (rc, _) = xen.hypercall(
            &Access {
                ram: &ram,
                cr3: None,
            },
            0,
            op,
            a,
        );
        assert!(rc >= -128, "{op} {a:?} -> {rc}");
        let _ = xen.take_upcall();
        let _ = xen.take_local_events();
    }
    assert!(xen.counters.errors > 0);
}

#[test]
fn direct_hypercalls_are_rewritten() {
    // Linux's xen_hypercall_intel (6.13): endbr64; push rbp; mov rbp, rsp; vmcall; pop rbp;
    // ret — and the AMD twin with vmmcall.
    let intel = [
        0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5, 0x0f, 0x01, 0xc1, 0x5d, 0xc3,
    ];
    let mut code = intel;
    assert_eq!(rewrite_direct_hypercalls(&mut code), 1);
    assert_eq!(code[8..11], [0xe7, HYPERCALL_PORT as u8, 0x90]);
    assert_eq!(code[..8], intel[..8]);
    assert_eq!(code[11..], intel[11..]);
    let mut amd = [0x0f, 0x01, 0xd9, 0xc3];
    assert_eq!(rewrite_direct_hypercalls(&mut amd), 1);
    assert_eq!(amd, [0xe7, HYPERCALL_PORT as u8, 0x90, 0xc3]);
    // Other 0f 01 instructions (lgdt, swapgs, rdtscp) and short tails are left alone.
    let mut other = [0x0f, 0x01, 0x15, 0x0f, 0x01, 0xf8, 0x0f, 0x01];
    assert_eq!(rewrite_direct_hypercalls(&mut other), 0);
    assert_eq!(other, [0x0f, 0x01, 0x15, 0x0f, 0x01, 0xf8, 0x0f, 0x01]);
}
