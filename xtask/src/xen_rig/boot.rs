//! Booting Xen and dom0 under QEMU with TCG, the serial console to a log and, line by line,
//! to the caller.
//!
//! KVM is not used: this kind of machine's KVM cannot run Xen (it emulates the guest's
//! ring-0 code and stops on `rdssp`, `clac`, `xrstor`). Xen is a multiboot1 image: QEMU's
//! `-kernel` takes it gunzipped; dom0's kernel (with its command line) and initramfs are the
//! first two multiboot modules.
//!
//! The CPU is `max` (TCG emulates SVM with nested paging; `-cpu EPYC` makes Xen panic in
//! `mwait_idle`) without XSAVE: with it, processes in dom0 crash at random (segfaults in
//! libc, `xl create` failing to decompress the guest kernel) as soon as several run at once,
//! as if their vector registers were not kept across context switches; with `-xsave`, Xen
//! falls back to FXSAVE and eight concurrent `xl create` pass. RAM stays below 4 GiB (QEMU
//! moves what is over 3.5 GiB above it): there, PV guests' xenstore rings never reach
//! `xenstored`.

use std::fs;
use std::io::{Read, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::fetch::Downloads;
use super::report::END;
use crate::cmd;

const QEMU: &str = "qemu-system-x86_64";

/// The emulated CPU (see the module's comment).
const CPU: &str = "max,-xsave";

/// Xen's command line: its console and dom0's on the serial port, dom0's memory fixed.
const XEN_ARGS: &str = "console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M loglvl=all \
                        guest_loglvl=all noreboot";

/// dom0 kernel's command line.
const DOM0_ARGS: &str = "console=hvc0 earlyprintk=xen";

/// How long QEMU may take to exit once dom0 printed its last line (it powers off).
const POWEROFF_GRACE: Duration = Duration::from_secs(60);

/// How a boot went.
#[derive(Debug)]
pub(crate) struct Boot {
    /// The serial log, cleaned, one entry per line.
    pub(crate) lines: Vec<String>,
    /// QEMU's exit status; `None` if it was killed.
    pub(crate) status: Option<i32>,
    /// Whether it was killed at the deadline before dom0 finished.
    pub(crate) timed_out: bool,
    /// From QEMU's start to its end.
    pub(crate) elapsed: Duration,
}

/// Boots `dom0_image` with `memory` MiB, writing the serial log to `log`; kills QEMU after
/// `timeout`. `echo` sees each line as it arrives.
pub(crate) fn boot(
    downloads: &Downloads,
    dom0_image: &Path,
    memory: u32,
    timeout: Duration,
    log: &Path,
    echo: &mut dyn FnMut(&str),
) -> Result<Boot, String> {
    let modules = format!(
        "{} {DOM0_ARGS},{}",
        downloads.kernel.display(),
        dom0_image.display()
    );
    for path in [&downloads.kernel, dom0_image] {
        // QEMU splits the module list at commas and a module from its arguments at spaces.
        if path.to_string_lossy().contains([',', ' ']) {
            return Err(format!(
                "{}: QEMU's multiboot modules cannot have a comma or space in their path",
                path.display()
            ));
        }
    }
    let mut c = Command::new(QEMU);
    c.args([
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        CPU,
        "-machine",
        "pc",
        "-m",
    ])
    .arg(memory.to_string())
    .args([
        "-smp",
        "2",
        "-nographic",
        "-serial",
        "mon:stdio",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(&downloads.xen)
    .args(["-append", XEN_ARGS, "-initrd"])
    .arg(&modules)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    println!("$ {}", cmd::display(&c));
    let mut file = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let start = Instant::now();
    let mut child = c
        .spawn()
        .map_err(|e| format!("could not start {QEMU}: {e}"))?;
    let (tx, rx) = mpsc::channel::<String>();
    let streams: Vec<Box<dyn Read + Send>> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    let readers: Vec<_> = streams
        .into_iter()
        .map(|stream| {
            let tx = tx.clone();
            std::thread::spawn(move || read_lines(stream, &tx))
        })
        .collect();
    drop(tx);
    let mut lines = Vec::new();
    let mut ended_at: Option<Instant> = None;
    let mut take = |line: String, lines: &mut Vec<String>, ended_at: &mut Option<Instant>| {
        let _ = writeln!(file, "{line}");
        echo(&line);
        if ended_at.is_none() && line.contains(END) {
            *ended_at = Some(Instant::now());
        }
        lines.push(line);
    };
    let mut timed_out = false;
    let status = loop {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            take(line, &mut lines, &mut ended_at);
        }
        match child.try_wait() {
            Ok(Some(status)) => break status.code(),
            Ok(None) => {
                let late = match ended_at {
                    Some(at) => at.elapsed() > POWEROFF_GRACE,
                    None => start.elapsed() > timeout,
                };
                if late {
                    timed_out = ended_at.is_none();
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
            Err(e) => {
                let _ = child.kill();
                return Err(format!("waiting for {QEMU}: {e}"));
            }
        }
    };
    for r in readers {
        let _ = r.join();
    }
    for line in rx.try_iter() {
        take(line, &mut lines, &mut ended_at);
    }
    Ok(Boot {
        lines,
        status,
        timed_out,
        elapsed: start.elapsed(),
    })
}

/// Sends each line of `stream`, cleaned of terminal escapes and carriage returns.
fn read_lines(mut stream: Box<dyn Read + Send>, tx: &mpsc::Sender<String>) {
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            let _ = tx.send(xs_e2e::stubdom::clean(&line));
        }
    }
    if !pending.is_empty() {
        let _ = tx.send(xs_e2e::stubdom::clean(&pending));
    }
}
