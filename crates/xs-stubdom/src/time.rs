//! Time from the TSC ([`rdtsc`]): its frequency, found once at boot, turns tick counts into
//! durations.
//!
//! Sources, best first: the hypervisor's timing leaf (CPUID 0x4000_0010, EAX = TSC kHz, which
//! KVM/QEMU and VMware offer), CPUID 0x15 (TSC/crystal ratio and crystal frequency), CPUID
//! 0x16 (base frequency in MHz), and last a 10 ms calibration against PIT channel 2.

use core::arch::x86_64::{__cpuid_count, __get_cpuid_max, _rdtsc};
use core::fmt::{self, Write as _};
use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::instructions::port::Port;

/// The time-stamp counter.
pub(crate) fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads a counter; CR4.TSD is clear (we never set it), so it cannot fault.
    unsafe { _rdtsc() }
}

/// TSC ticks per second; 0 while unknown.
static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// Where the frequency came from.
static SOURCE: spin::Once<&'static str> = spin::Once::new();

/// Finds the TSC frequency (once).
pub(crate) fn init() {
    SOURCE.call_once(|| {
        let (hz, source) = hypervisor_leaf()
            .map(|hz| (hz, "cpuid 0x40000010 (hypervisor)"))
            .or_else(|| leaf_15().map(|hz| (hz, "cpuid 0x15")))
            .or_else(|| leaf_16().map(|hz| (hz, "cpuid 0x16")))
            .or_else(|| pit().map(|hz| (hz, "PIT calibration")))
            .unwrap_or((0, "unknown"));
        TSC_HZ.store(hz, Ordering::Relaxed);
        source
    });
}

/// TSC ticks per second, if known.
pub(crate) fn tsc_hz() -> Option<u64> {
    match TSC_HZ.load(Ordering::Relaxed) {
        0 => None,
        hz => Some(hz),
    }
}

/// Where [`tsc_hz`] came from.
pub(crate) fn source() -> &'static str {
    SOURCE.get().copied().unwrap_or("not calibrated")
}

/// Microseconds in `ticks`, if the frequency is known.
pub(crate) fn micros(ticks: u64) -> Option<u64> {
    let hz = tsc_hz()?;
    Some((u128::from(ticks) * 1_000_000 / u128::from(hz)) as u64)
}

/// A TSC tick count, displayed as a duration when the frequency is known.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span(pub(crate) u64);

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Into a buffer, then through `pad`, so that width and alignment apply.
        let mut buf = Buf::default();
        let _ = match micros(self.0) {
            Some(us) if us >= 10_000 => write!(buf, "{}.{} ms", us / 1000, us % 1000 / 100),
            Some(us) => write!(buf, "{us} us"),
            None => write!(buf, "{} ticks", self.0),
        };
        f.pad(buf.as_str())
    }
}

/// A small stack buffer for formatting without the heap (a fatal report must not allocate).
#[derive(Default)]
struct Buf {
    bytes: [u8; 32],
    len: usize,
}

impl Buf {
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("?")
    }
}

impl fmt::Write for Buf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let dst = self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn hypervisor_leaf() -> Option<u64> {
    // CPUID.1:ECX bit 31: running under a hypervisor.
    if __cpuid_count(1, 0).ecx & (1 << 31) == 0 {
        return None;
    }
    if __cpuid_count(0x4000_0000, 0).eax < 0x4000_0010 {
        return None;
    }
    let khz = __cpuid_count(0x4000_0010, 0).eax;
    (khz != 0).then_some(u64::from(khz) * 1000)
}

/// Highest basic CPUID leaf.
fn max_leaf() -> u32 {
    __get_cpuid_max(0).0
}

fn leaf_15() -> Option<u64> {
    if max_leaf() < 0x15 {
        return None;
    }
    let r = __cpuid_count(0x15, 0);
    if r.eax == 0 || r.ebx == 0 || r.ecx == 0 {
        return None;
    }
    Some(u64::from(r.ecx) * u64::from(r.ebx) / u64::from(r.eax))
}

fn leaf_16() -> Option<u64> {
    if max_leaf() < 0x16 {
        return None;
    }
    let mhz = __cpuid_count(0x16, 0).eax & 0xffff;
    (mhz != 0).then_some(u64::from(mhz) * 1_000_000)
}

/// Counts TSC ticks while PIT channel 2 counts down 10 ms (mode 0, gate on, speaker off).
fn pit() -> Option<u64> {
    const PIT_HZ: u64 = 1_193_182;
    const LATCH: u64 = PIT_HZ / 100;
    let b = port_b();
    pit_write(0x61, (b & !0x02) | 0x01);
    pit_write(0x43, 0xb0);
    pit_write(0x42, (LATCH & 0xff) as u8);
    pit_write(0x42, (LATCH >> 8) as u8);
    let start = rdtsc();
    let mut polls = 0u64;
    while port_b() & 0x20 == 0 {
        polls += 1;
        if polls > 100_000_000 {
            return None;
        }
    }
    let ticks = rdtsc().wrapping_sub(start);
    // Fewer than a handful of polls means there is no PIT (the port reads as all ones).
    (polls > 10).then_some(ticks * 100)
}

/// System control port B (0x61): bit 5 is PIT channel 2's output.
fn port_b() -> u8 {
    // SAFETY: reading port 0x61 reports the timer and speaker state; no side effect.
    unsafe { Port::<u8>::new(0x61).read() }
}

/// Writes one of the ports the calibration uses.
fn pit_write(port: u16, value: u8) {
    debug_assert!(matches!(port, 0x42 | 0x43 | 0x61));
    // SAFETY: ports 0x61 (system control port B), 0x43 (PIT mode) and 0x42 (PIT channel 2)
    // drive the PC timer and the speaker gate only; no memory is touched.
    unsafe { Port::<u8>::new(port).write(value) };
}
