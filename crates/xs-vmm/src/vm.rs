//! The machine: KVM (one vCPU, the in-kernel local APIC), the guest loaded, the Xen CPUID
//! leaves and MSR filter installed, the store embedded and the guest introduced to it as
//! a toolstack would, and the run loop.
//!
//! The run loop is the whole VMM: the vCPU runs until an exit; a hypercall (an `out` to
//! [`HYPERCALL_PORT`] from the hypercall page) is handled by [`Xen::hypercall`]; events the
//! guest sent to the VMM's ports are served at once (the store's ring by the dispatcher,
//! the console's ring by its backend), the VMM's own watches react (the console backend,
//! the self-test's responder), and an upcall owed to the guest is injected with
//! `KVM_SIGNAL_MSI` before the vCPU resumes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::{
    KVM_CAP_X86_USER_SPACE_MSR, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES,
    KVM_MSR_EXIT_REASON_FILTER, kvm_cpuid_entry2, kvm_enable_cap, kvm_msi,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{
    Cap, Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, SyncReg, VcpuExit,
    VcpuFd, VmFd,
};
use xs_core::store::Introduction;
use xs_core::{ConnId, DomId};
use xs_serve::xenbus::XenbusState;
use xs_serve::{Dispatcher, DomainState, ServeConfig};

use crate::boot;
use crate::console::ConsoleBackend;
use crate::layout::{
    DEBUG_MMIO, DEBUG_PORT, EXIT_MMIO, EXIT_PORT, FAULT_PORT, GUEST_DOMID, HYPERCALL_MMIO,
    HYPERCALL_PORT, LAPIC_BASE, PAGE_SIZE, RAM_SIZE, SPECIAL_AREA, SPECIAL_PAGES, XENSTORE_PFN,
};
use crate::memory::GuestRam;
use crate::platform::Platform;
use crate::xen::{self, Access, Config, HYPERCALL_MSR, Request, Stubs, Xen, param};

/// How to run the guest.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Ask the guest to run its benchmark with this many round trips per mode.
    pub bench: Option<u32>,
    /// Give up after this long.
    pub timeout: Option<Duration>,
    /// Use register ioctls on hypercalls even where KVM offers `KVM_CAP_SYNC_REGS`.
    pub no_sync_regs: bool,
    /// Hypercall stubs that exit by MMIO (usable at CPL3) instead of port I/O (CPL0 only),
    /// and hypercalls accepted from CPL3.
    pub mmio_hypercalls: bool,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `SCHEDOP_shutdown` with this reason (0 poweroff, 1 reboot, 2 suspend, 3 crash).
    Shutdown(u32),
    /// The guest wrote this status to the exit port.
    Exit(u32),
}

/// What the run measured.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// From the VM's creation to the console backend Connected.
    pub to_connected: Option<Duration>,
    /// Exits by kind.
    pub exits: u64,
    /// Counters of the Xen surface.
    pub xen: xen::Counters,
    /// Time spent in `KVM_RUN` (the guest running, and KVM's own exit handling).
    pub in_kvm_run: Duration,
    /// Time spent in the register ioctls of hypercall exits (`KVM_GET_REGS`, `KVM_GET_SREGS`,
    /// `KVM_SET_REGS`).
    pub in_reg_ioctls: Duration,
    /// Time spent handling hypercalls (the Xen surface, the store, the backends, injection).
    pub in_hypercalls: Duration,
}

/// The watch tokens of the VMM's own connection.
const TOKEN_CONSOLE: &str = "console-frontend";
const TOKEN_PING: &str = "ping";

/// The guest's home and the node the self-test's watch responder answers.
fn home() -> String {
    format!("/local/domain/{GUEST_DOMID}")
}

/// A KVM machine running one guest with the store built in.
pub struct Machine {
    _kvm: Kvm,
    vm: VmFd,
    vcpu: VcpuFd,
    xs: Dispatcher<Platform>,
    conn: ConnId,
    console: ConsoleBackend,
    started: Instant,
    figures: Figures,
    out: Box<dyn FnMut(&str)>,
    debug_line: Vec<u8>,
    /// KVM hands the registers over in `kvm_run` at each exit (`KVM_CAP_SYNC_REGS`): no
    /// register ioctls on a hypercall.
    sync_regs: bool,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine").finish_non_exhaustive()
    }
}

/// Whether this host's KVM can run the machine, or why not.
pub fn kvm_usable() -> Result<(), String> {
    let kvm = Kvm::new().map_err(|e| format!("/dev/kvm: {e}"))?;
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI"),
        (Cap::X86UserSpaceMsr, "KVM_CAP_X86_USER_SPACE_MSR"),
        (Cap::X86MsrFilter, "KVM_CAP_X86_MSR_FILTER"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(format!("KVM lacks {name}"));
        }
    }
    Ok(())
}

impl Machine {
    /// Creates the machine, loads `image` and prepares the store; `out` receives the lines
    /// the guest prints (console, `console_io`, debug port) and the VMM's own.
    pub fn new(
        image: &[u8],
        options: &Options,
        out: Box<dyn FnMut(&str)>,
    ) -> Result<Machine, String> {
        let started = Instant::now();
        let kvm = Kvm::new().map_err(|e| format!("/dev/kvm: {e}"))?;
        let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
        let ram = Arc::new(GuestRam::new(&[
            (0, RAM_SIZE as usize),
            (SPECIAL_AREA, (SPECIAL_PAGES * PAGE_SIZE) as usize),
        ])?);
        for (slot, (gpa, len, host)) in ram.regions().into_iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: gpa,
                memory_size: len,
                userspace_addr: host,
                flags: 0,
            };
            // SAFETY: the host range is a live mmap owned by `ram`, which the machine keeps
            // (in its platform) for as long as the VM exists.
            unsafe { vm.set_user_memory_region(region) }
                .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
        }
        vm.create_irq_chip()
            .map_err(|e| format!("KVM_CREATE_IRQCHIP: {e}"))?;
        // The hypercall-page MSR's writes exit to us; every other MSR is KVM's.
        vm.enable_cap(&kvm_enable_cap {
            cap: KVM_CAP_X86_USER_SPACE_MSR,
            args: [u64::from(KVM_MSR_EXIT_REASON_FILTER), 0, 0, 0],
            ..Default::default()
        })
        .map_err(|e| format!("KVM_CAP_X86_USER_SPACE_MSR: {e}"))?;
        let deny = [0u8; 1];
        vm.set_msr_filter(
            MsrFilterDefaultAction::ALLOW,
            &[MsrFilterRange {
                flags: MsrFilterRangeFlags::WRITE,
                base: HYPERCALL_MSR,
                msr_count: 1,
                bitmap: &deny,
            }],
        )
        .map_err(|e| format!("KVM_X86_SET_MSR_FILTER: {e}"))?;

        let mut vcpu = vm
            .create_vcpu(0)
            .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
        let sync_regs = kvm.check_extension(Cap::SyncRegs) && !options.no_sync_regs;
        if sync_regs {
            vcpu.set_sync_valid_reg(SyncReg::Register);
            vcpu.set_sync_valid_reg(SyncReg::SystemRegister);
        }
        let tsc_khz = vcpu.get_tsc_khz().unwrap_or(0);
        let mut cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| format!("KVM_GET_SUPPORTED_CPUID: {e}"))?;
        let mut entries: Vec<kvm_cpuid_entry2> = cpuid
            .as_slice()
            .iter()
            .filter(|e| !(0x4000_0000..0x4001_0000).contains(&e.function))
            .copied()
            .collect();
        for e in &mut entries {
            if e.function == 1 {
                e.ecx |= 1 << 31; // a hypervisor is present
            }
        }
        for (function, index, [eax, ebx, ecx, edx]) in xen::cpuid_leaves(tsc_khz, GUEST_DOMID) {
            entries.push(kvm_cpuid_entry2 {
                function,
                index,
                flags: if function == 0x4000_0003 {
                    KVM_CPUID_FLAG_SIGNIFCANT_INDEX
                } else {
                    0
                },
                eax,
                ebx,
                ecx,
                edx,
                ..Default::default()
            });
        }
        cpuid = kvm_bindings::CpuId::from_entries(&entries)
            .map_err(|e| format!("CPUID table: {e:?}"))?;
        vcpu.set_cpuid2(&cpuid)
            .map_err(|e| format!("KVM_SET_CPUID2: {e}"))?;

        boot::write_tables(&ram)?;
        let loaded = boot::load_elf(&ram, image)?;
        let sregs = vcpu
            .get_sregs()
            .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
        vcpu.set_sregs(&boot::entry_sregs(sregs))
            .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
        vcpu.set_regs(&boot::entry_regs(&loaded))
            .map_err(|e| format!("KVM_SET_REGS: {e}"))?;

        // The toolstack's part: the store page and its channel in the HVM parameters, the
        // store introduced to the guest, the guest's nodes, its console device.
        let mut xen = Xen::new(Config {
            domid: GUEST_DOMID,
            ram_pages: RAM_SIZE / PAGE_SIZE,
            user_hypercalls: options.mmio_hypercalls,
            stubs: if options.mmio_hypercalls {
                Stubs::Mmio
            } else {
                Stubs::Port
            },
        });
        let store_port = xen
            .alloc_guest_unbound(xen::DOM0)
            .map_err(|e| format!("store channel: {e}"))?;
        xen.set_param(param::STORE_PFN, XENSTORE_PFN);
        xen.set_param(param::STORE_EVTCHN, u64::from(store_port));
        ram.zero_page(XENSTORE_PFN)
            .map_err(|_| "the store page is not guest memory")?;
        let platform = Platform::new(xen, ram);
        let mut xs = Dispatcher::new(platform, ServeConfig::default())
            .map_err(|e| format!("the store: {e}"))?;
        xs.introduce(
            DomId(GUEST_DOMID),
            Introduction {
                gfn: XENSTORE_PFN,
                evtchn: store_port,
            },
        )
        .map_err(|e| format!("introducing the guest: {e}"))?;
        let conn = xs
            .connect(DomId::DOM0)
            .map_err(|e| format!("the VMM's connection: {e}"))?;
        let mut console = ConsoleBackend::new(GUEST_DOMID);
        let bench = options.bench;
        xs.session(conn, |s| -> xs_core::XsResult<()> {
            use xs_core::perms::{Access, Perm};
            let home = home();
            let guest = DomId(GUEST_DOMID);
            s.mkdir(&home)?;
            s.set_perms(
                &home,
                &[Perm::owner(DomId::DOM0), Perm::new(guest, Access::READ)],
            )?;
            s.write(&format!("{home}/name"), b"xs-vmm-guest")?;
            s.write(&format!("{home}/domid"), GUEST_DOMID.to_string().as_bytes())?;
            let data = format!("{home}/data");
            s.mkdir(&data)?;
            s.set_perms(&data, &[Perm::owner(guest)])?;
            if let Some(n) = bench {
                s.write(&format!("{home}/xs-vmm/bench"), n.to_string().as_bytes())?;
            }
            s.watch(&format!("{data}/ping"), TOKEN_PING, None)?;
            console.create(s, TOKEN_CONSOLE)
        })
        .map_err(|e| format!("the guest's nodes: {e}"))?;

        let mut m = Machine {
            _kvm: kvm,
            vm,
            vcpu,
            xs,
            conn,
            console,
            started,
            figures: Figures::default(),
            out,
            debug_line: Vec::new(),
            sync_regs,
        };
        m.react();
        let log = m.xs.take_log();
        for line in log {
            m.say(&format!("store: {line}"));
        }
        Ok(m)
    }

    fn say(&mut self, line: &str) {
        (self.out)(&format!("xs-vmm: {line}"));
    }

    /// The VMM's own watches: the console backend and the self-test's responder (a write
    /// of `data/ping` is answered by a write of `data/pong` with the same value).
    fn react(&mut self) {
        let home = home();
        let conn = self.conn;
        loop {
            let events = self.xs.session(conn, |s| s.drain_events());
            if events.is_empty() {
                break;
            }
            for (path, token) in events {
                match token.as_slice() {
                    t if t == TOKEN_CONSOLE.as_bytes() => self.console_backend(),
                    t if t == TOKEN_PING.as_bytes() => {
                        let _ = path;
                        let _ = self.xs.session(conn, |s| {
                            let v = s.read(&format!("{home}/data/ping"))?;
                            s.write(&format!("{home}/data/pong"), &v)
                        });
                    }
                    _ => {}
                }
            }
        }
        self.flush_console();
    }

    /// The console backend's reaction to the frontend's state.
    fn console_backend(&mut self) {
        let conn = self.conn;
        let was = self.console.state;
        let console = &mut self.console;
        let step = match self.xs.session(conn, |s| console.poll(s)) {
            Ok(Some(step)) => step,
            Ok(None) => return,
            Err(e) => return self.say(&format!("console backend: {e}")),
        };
        let next = match step {
            (next, Some((ring_ref, port))) => {
                let platform = self.xs.services_mut();
                match self
                    .console
                    .connect(&mut platform.xen, &platform.ram, &ring_ref, &port)
                {
                    Ok(()) => next,
                    Err(why) => {
                        self.say(&format!("console backend refuses the frontend: {why}"));
                        XenbusState::Closing
                    }
                }
            }
            (next, None) => {
                if matches!(next, XenbusState::Closing | XenbusState::Closed) {
                    self.console.disconnect(&mut self.xs.services_mut().xen);
                }
                next
            }
        };
        let console = &mut self.console;
        if let Err(e) = self.xs.session(conn, |s| console.switch(s, next)) {
            return self.say(&format!("console backend: {e}"));
        }
        if next == XenbusState::Connected && self.figures.to_connected.is_none() {
            self.figures.to_connected = Some(self.started.elapsed());
        }
        self.say(&format!("console backend {was:?} -> {next:?}"));
    }

    fn flush_console(&mut self) {
        for line in self.console.take_lines() {
            (self.out)(&line);
        }
    }

    /// Serves the VMM ports the guest signalled, lets the VMM's watches react, and injects
    /// an upcall owed to the guest.
    fn after_hypercall(&mut self) {
        let events = self.xs.services_mut().xen.take_local_events();
        for port in events {
            if Some(port) == self.xs.local_port(DomId(GUEST_DOMID)) {
                self.xs.on_event(port);
            } else if Some(port) == self.console.port {
                let platform = self.xs.services_mut();
                let (xen, ram) = (&mut platform.xen, Arc::clone(&platform.ram));
                self.console.drain(xen, &ram);
                self.flush_console();
            }
        }
        if self.xs.take_local_notifications().contains(&self.conn) {
            self.react();
        }
        self.inject();
    }

    fn inject(&mut self) {
        if let Some(vector) = self.xs.services_mut().xen.take_upcall() {
            let msi = kvm_msi {
                address_lo: LAPIC_BASE as u32,
                address_hi: 0,
                data: u32::from(vector),
                ..Default::default()
            };
            if let Err(e) = self.vm.signal_msi(msi) {
                let line = format!("KVM_SIGNAL_MSI of vector {vector:#x}: {e}");
                self.say(&line);
            }
        }
    }

    /// Runs the guest until it shuts down, exits, faults, or the timeout passes.
    pub fn run(&mut self, timeout: Option<Duration>) -> Result<Outcome, String> {
        enum Exit {
            Out(u16, u32),
            In,
            Msr,
            Mmio,
            MmioOut(u64, u32),
            Other(String),
        }
        loop {
            if let Some(t) = timeout
                && self.started.elapsed() > t
            {
                return Err(format!("the guest did not finish within {} s", t.as_secs()));
            }
            self.figures.exits += 1;
            let entered = Instant::now();
            let result = self.vcpu.run();
            self.figures.in_kvm_run += entered.elapsed();
            let exit = match result {
                Ok(VcpuExit::IoOut(port, data)) => {
                    let mut v = [0u8; 4];
                    v[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
                    Exit::Out(port, u32::from_le_bytes(v))
                }
                Ok(VcpuExit::IoIn(_, data)) => {
                    data.fill(0xff);
                    Exit::In
                }
                Ok(VcpuExit::X86Wrmsr(exit)) => {
                    let platform = self.xs.services_mut();
                    let ok = exit.index == HYPERCALL_MSR
                        && platform
                            .xen
                            .write_hypercall_msr(&platform.ram, exit.data)
                            .is_ok();
                    *exit.error = u8::from(!ok);
                    Exit::Msr
                }
                Ok(VcpuExit::X86Rdmsr(exit)) => {
                    *exit.error = 1;
                    Exit::Msr
                }
                Ok(VcpuExit::MmioRead(_, data)) => {
                    data.fill(0xff);
                    Exit::Mmio
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    let mut v = [0u8; 4];
                    v[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
                    Exit::MmioOut(addr, u32::from_le_bytes(v))
                }
                Ok(VcpuExit::Intr) => continue,
                Ok(other) => Exit::Other(format!("{other:?}")),
                Err(e) if e.errno() == libc_eintr() => continue,
                Err(e) => Exit::Other(format!("KVM_RUN: {e}")),
            };
            match exit {
                Exit::Out(HYPERCALL_PORT, nr) => {
                    if let Some(outcome) = self.hypercall(nr)? {
                        return Ok(outcome);
                    }
                }
                Exit::MmioOut(HYPERCALL_MMIO, nr) => {
                    if let Some(outcome) = self.hypercall(nr)? {
                        return Ok(outcome);
                    }
                }
                Exit::Out(DEBUG_PORT, byte) | Exit::MmioOut(DEBUG_MMIO, byte) => {
                    let b = byte as u8;
                    if b == b'\n' {
                        let line = String::from_utf8_lossy(&self.debug_line).into_owned();
                        self.debug_line.clear();
                        (self.out)(&line);
                    } else if self.debug_line.len() < crate::console::LINE_MAX {
                        self.debug_line.push(b);
                    }
                }
                Exit::Out(EXIT_PORT, status) | Exit::MmioOut(EXIT_MMIO, status) => {
                    return Ok(Outcome::Exit(status));
                }
                Exit::Out(FAULT_PORT, vector) => return Err(self.fault(vector)),
                Exit::Out(..) | Exit::MmioOut(..) | Exit::In | Exit::Msr | Exit::Mmio => {}
                Exit::Other(what) => return Err(format!("{what}\n{}", self.dump())),
            }
        }
    }

    /// Handles a hypercall exit; `Some` when the guest shut down.
    fn hypercall(&mut self, nr: u32) -> Result<Option<Outcome>, String> {
        let started = Instant::now();
        let result = self.hypercall_inner(nr, started);
        self.figures.in_hypercalls += started.elapsed();
        result
    }

    fn hypercall_inner(&mut self, nr: u32, started: Instant) -> Result<Option<Outcome>, String> {
        let (mut regs, cr0, cr3, cpl) = if self.sync_regs {
            let s = self.vcpu.sync_regs();
            (s.regs, s.sregs.cr0, s.sregs.cr3, s.sregs.cs.dpl)
        } else {
            let regs = self
                .vcpu
                .get_regs()
                .map_err(|e| format!("KVM_GET_REGS: {e}"))?;
            let sregs = self
                .vcpu
                .get_sregs()
                .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
            (regs, sregs.cr0, sregs.cr3, sregs.cs.dpl)
        };
        self.figures.in_reg_ioctls += started.elapsed();
        let platform = self.xs.services_mut();
        let ram = Arc::clone(&platform.ram);
        let mem = Access {
            ram: &ram,
            cr3: (cr0 & (1 << 31) != 0).then_some(cr3),
        };
        let args = [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8];
        let (rc, request) = platform.xen.hypercall(&mem, cpl, u64::from(nr), args);
        let set = Instant::now();
        if self.sync_regs {
            self.vcpu.sync_regs_mut().regs.rax = rc as u64;
            self.vcpu.set_sync_dirty_reg(SyncReg::Register);
        } else {
            regs.rax = rc as u64;
            self.vcpu
                .set_regs(&regs)
                .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
        }
        self.figures.in_reg_ioctls += set.elapsed();
        let console = self.xs.services_mut().xen.take_console();
        if !console.is_empty() {
            for line in String::from_utf8_lossy(&console).lines() {
                (self.out)(&format!("(d{GUEST_DOMID}) {line}"));
            }
        }
        match request {
            Request::Shutdown(reason) => {
                self.xs.services_mut().state = DomainState::Shutdown;
                self.xs.on_dom_exc();
                self.figures.xen = self.xs.services().xen.counters;
                return Ok(Some(Outcome::Shutdown(reason)));
            }
            Request::Block => {
                if self.xs.has_work() {
                    self.xs.run_pending();
                }
            }
            Request::None => {}
        }
        self.after_hypercall();
        Ok(None)
    }

    /// The report of a guest CPU exception.
    fn fault(&mut self, vector: u32) -> String {
        let mut s = format!("the guest took exception {vector} at CPL0\n{}", self.dump());
        if let Ok(regs) = self.vcpu.get_regs() {
            // The interrupt frame on the kernel stack (an error code first for some vectors).
            let ram = &self.xs.services().ram;
            let frame: Vec<String> = (0..6)
                .filter_map(|i| ram.read_u64(regs.rsp.checked_add(i * 8)?).ok())
                .map(|v| format!("{v:#x}"))
                .collect();
            s.push_str(&format!("\nframe at rsp: {}", frame.join(" ")));
        }
        s
    }

    fn dump(&self) -> String {
        match (self.vcpu.get_regs(), self.vcpu.get_sregs()) {
            (Ok(r), Ok(s)) => format!(
                "rip {:#x} rsp {:#x} rflags {:#x} rax {:#x} rdi {:#x} rsi {:#x} cs {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x}",
                r.rip,
                r.rsp,
                r.rflags,
                r.rax,
                r.rdi,
                r.rsi,
                s.cs.selector,
                s.cr0,
                s.cr2,
                s.cr3,
                s.cr4
            ),
            _ => "(registers unavailable)".into(),
        }
    }

    /// What the run measured.
    pub fn figures(&self) -> Figures {
        let mut f = self.figures.clone();
        f.xen = self.xs.services().xen.counters;
        f
    }
}

/// `EINTR`.
fn libc_eintr() -> i32 {
    4
}
