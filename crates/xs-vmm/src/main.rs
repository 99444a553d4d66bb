//! `xs-vmm [--bench N] [--timeout SECS] [--no-sync-regs] [--mmio-hypercalls] GUEST`: runs the guest image under KVM with the store
//! built in. Prints what the guest prints (its PV console, `console_io`, the debug port) and
//! the VMM's own lines (`xs-vmm: ...`), then the figures. Exit status 0 when the guest
//! powered off, 1 when it shut down otherwise or exited non-zero, 2 on a VMM or KVM error.

use std::process::ExitCode;
use std::time::Duration;

use xs_vmm::vm::{Machine, Options, Outcome};

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xs-vmm: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode, String> {
    let mut options = Options::default();
    let mut image = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {
                let n = args.next().ok_or("--bench needs a number of round trips")?;
                options.bench = Some(n.parse().map_err(|_| format!("--bench: `{n}`"))?);
            }
            "--timeout" => {
                let n = args.next().ok_or("--timeout needs seconds")?;
                let secs = n.parse().map_err(|_| format!("--timeout: `{n}`"))?;
                options.timeout = Some(Duration::from_secs(secs));
            }
            "--no-sync-regs" => options.no_sync_regs = true,
            "--mmio-hypercalls" => options.mmio_hypercalls = true,
            "-h" | "--help" => {
                println!(
                    "usage: xs-vmm [--bench N] [--timeout SECS] [--no-sync-regs] [--mmio-hypercalls] GUEST-ELF\n\
                     --bench N: the guest measures N READ round trips per mode\n\
                     --no-sync-regs: register ioctls on hypercalls, not KVM_CAP_SYNC_REGS\n\
                     --mmio-hypercalls: hypercall stubs that exit by MMIO, callable at CPL3"
                );
                return Ok(ExitCode::SUCCESS);
            }
            _ if image.is_none() && !arg.starts_with('-') => image = Some(arg),
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    let image = image.ok_or("no guest image given (see --help)")?;
    let bytes = std::fs::read(&image).map_err(|e| format!("{image}: {e}"))?;
    xs_vmm::vm::kvm_usable()?;
    let mut machine = Machine::new(&bytes, &options, Box::new(|line| println!("{line}")))?;
    let outcome = machine.run(options.timeout);
    let f = machine.figures();
    if let Some(t) = f.to_connected {
        println!(
            "bench vmm_start_to_console_connected {:.3} ms",
            t.as_secs_f64() * 1e3
        );
    }
    println!(
        "xs-vmm: {} exits, {} hypercalls ({} ENOSYS, {} other errors), {} upcalls",
        f.exits, f.xen.hypercalls, f.xen.unknown, f.xen.errors, f.xen.upcalls
    );
    println!(
        "xs-vmm: {:.3} s in KVM_RUN, {:.3} s handling hypercalls (of which {:.3} s in register ioctls)",
        f.in_kvm_run.as_secs_f64(),
        f.in_hypercalls.as_secs_f64(),
        f.in_reg_ioctls.as_secs_f64()
    );
    match outcome? {
        Outcome::Shutdown(0) => Ok(ExitCode::SUCCESS),
        Outcome::Shutdown(reason) => {
            println!("xs-vmm: the guest shut down with reason {reason}");
            Ok(ExitCode::from(1))
        }
        Outcome::Exit(0) => Ok(ExitCode::SUCCESS),
        Outcome::Exit(status) => {
            println!("xs-vmm: the guest exited with status {status}");
            Ok(ExitCode::from(1))
        }
    }
}
