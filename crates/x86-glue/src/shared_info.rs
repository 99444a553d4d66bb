//! `struct shared_info` and `struct vcpu_info` (`xen/include/public/xen.h`, x86_64 layout,
//! `arch-x86/xen-x86_64.h`), with compile-time size and offset checks.
//!
//! Xen writes these concurrently with the guest, so every field is an atomic: the guest
//! never holds a plain reference to memory Xen changes. The event-channel bitmaps are
//! accessed with atomic read-modify-write operations, as Xen requires of a guest (it sets
//! bits with `lock bts` from other CPUs). The time fields follow Xen's version protocol
//! (odd = update in progress).
//!
//! Layout checked against the C headers compiled by gcc at Xen commit c447b7308b13:
//! `sizeof(struct vcpu_time_info) == 32`, `sizeof(struct vcpu_info) == 64`,
//! `sizeof(struct shared_info) == 3136`, `evtchn_pending` at 2048, `evtchn_mask` at 2560,
//! `wc_version` at 3072, `arch` at 3088.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicI8, AtomicU8, AtomicU32, AtomicU64, Ordering, fence};

/// `XEN_LEGACY_MAX_VCPUS` on x86: vCPUs with a `vcpu_info` in `shared_info`.
pub const LEGACY_MAX_VCPUS: usize = 32;
/// Bits in an event-channel word (`xen_ulong_t` on x86_64).
pub const WORD_BITS: usize = 64;
/// Words in each 2-level bitmap (`sizeof(xen_ulong_t) * 8`).
pub const WORDS: usize = 64;
/// Ports of the 2-level ABI (`EVTCHN_2L_NR_CHANNELS`).
pub const NR_PORTS: usize = WORD_BITS * WORDS;

/// `struct vcpu_time_info`.
#[repr(C)]
#[derive(Debug)]
pub struct VcpuTimeInfo {
    /// Odd while Xen updates the fields; changes with every update.
    pub version: AtomicU32,
    pad0: AtomicU32,
    /// TSC at the last update.
    pub tsc_timestamp: AtomicU64,
    /// System time (ns since Xen booted) at the last update.
    pub system_time: AtomicU64,
    /// TSC-to-ns multiplier (a 32.32 fixed-point fraction).
    pub tsc_to_system_mul: AtomicU32,
    /// TSC shift applied before multiplying.
    pub tsc_shift: AtomicI8,
    /// `XEN_PVCLOCK_*` flags.
    pub flags: AtomicU8,
    pad1: [AtomicU8; 2],
}

/// `struct vcpu_info`.
#[repr(C)]
#[derive(Debug)]
pub struct VcpuInfo {
    /// Set by Xen when an event is pending for this vCPU; cleared by the guest before it
    /// scans (so that an event arriving during the scan sets it again).
    pub evtchn_upcall_pending: AtomicU8,
    /// Non-zero: no upcall is delivered (PV; kept for HVM compatibility).
    pub evtchn_upcall_mask: AtomicU8,
    pad0: [AtomicU8; 6],
    /// The selector: bit `w` set means word `w` of `evtchn_pending` may hold unmasked
    /// pending ports for this vCPU.
    pub evtchn_pending_sel: AtomicU64,
    /// `struct arch_vcpu_info` (`cr2`, `pad`).
    arch: [AtomicU64; 2],
    /// The time the vCPU sees.
    pub time: VcpuTimeInfo,
}

/// `struct shared_info` (only its first 3136 bytes; the page is 4096).
#[repr(C)]
#[derive(Debug)]
pub struct SharedInfo {
    /// The legacy per-vCPU areas.
    pub vcpu_info: [VcpuInfo; LEGACY_MAX_VCPUS],
    /// Pending bits, one per port: set by Xen, cleared by the guest.
    pub evtchn_pending: [AtomicU64; WORDS],
    /// Mask bits, one per port: set and cleared by the guest; read by Xen.
    pub evtchn_mask: [AtomicU64; WORDS],
    /// Wallclock version (see [`VcpuTimeInfo::version`]).
    pub wc_version: AtomicU32,
    /// Wallclock seconds (low 32 bits).
    pub wc_sec: AtomicU32,
    /// Wallclock nanoseconds.
    pub wc_nsec: AtomicU32,
    /// Wallclock seconds (high 32 bits).
    pub wc_sec_hi: AtomicU32,
    /// `struct arch_shared_info` (PV p2m information, unused by HVM guests).
    arch: [AtomicU64; 6],
}

const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<VcpuTimeInfo>() == 32);
    assert!(offset_of!(VcpuTimeInfo, version) == 0);
    assert!(offset_of!(VcpuTimeInfo, tsc_timestamp) == 8);
    assert!(offset_of!(VcpuTimeInfo, system_time) == 16);
    assert!(offset_of!(VcpuTimeInfo, tsc_to_system_mul) == 24);
    assert!(offset_of!(VcpuTimeInfo, tsc_shift) == 28);
    assert!(offset_of!(VcpuTimeInfo, flags) == 29);
    assert!(size_of::<VcpuInfo>() == 64);
    assert!(offset_of!(VcpuInfo, evtchn_upcall_pending) == 0);
    assert!(offset_of!(VcpuInfo, evtchn_upcall_mask) == 1);
    assert!(offset_of!(VcpuInfo, evtchn_pending_sel) == 8);
    assert!(offset_of!(VcpuInfo, arch) == 16);
    assert!(offset_of!(VcpuInfo, time) == 32);
    assert!(size_of::<SharedInfo>() == 3136);
    assert!(offset_of!(SharedInfo, vcpu_info) == 0);
    assert!(offset_of!(SharedInfo, evtchn_pending) == 2048);
    assert!(offset_of!(SharedInfo, evtchn_mask) == 2560);
    assert!(offset_of!(SharedInfo, wc_version) == 3072);
    assert!(offset_of!(SharedInfo, wc_sec) == 3076);
    assert!(offset_of!(SharedInfo, wc_nsec) == 3080);
    assert!(offset_of!(SharedInfo, wc_sec_hi) == 3084);
    assert!(offset_of!(SharedInfo, arch) == 3088);
    assert!(size_of::<SharedInfo>() <= 4096);
    assert!(align_of::<SharedInfo>() <= 4096);
};

impl VcpuTimeInfo {
    const fn new() -> VcpuTimeInfo {
        VcpuTimeInfo {
            version: AtomicU32::new(0),
            pad0: AtomicU32::new(0),
            tsc_timestamp: AtomicU64::new(0),
            system_time: AtomicU64::new(0),
            tsc_to_system_mul: AtomicU32::new(0),
            tsc_shift: AtomicI8::new(0),
            flags: AtomicU8::new(0),
            pad1: [const { AtomicU8::new(0) }; 2],
        }
    }

    /// Xen's system time (ns since Xen booted) at TSC value `tsc`, read with the version
    /// protocol; `None` if Xen has not filled the fields in, or kept updating them.
    pub fn system_time_ns(&self, tsc: u64) -> Option<u64> {
        for _ in 0..64 {
            // ORDERING: acquire; pairs with Xen's barrier after it makes the version odd /
            // before it makes it even again (the seqlock of `vcpu_time_info`).
            let v1 = self.version.load(Ordering::Acquire);
            if v1 & 1 != 0 {
                core::hint::spin_loop();
                continue;
            }
            let stamp = self.tsc_timestamp.load(Ordering::Relaxed);
            let system = self.system_time.load(Ordering::Relaxed);
            let mul = self.tsc_to_system_mul.load(Ordering::Relaxed);
            let shift = self.tsc_shift.load(Ordering::Relaxed);
            // ORDERING: the field loads above complete before the version is read again.
            fence(Ordering::Acquire);
            if self.version.load(Ordering::Relaxed) != v1 {
                continue;
            }
            if mul == 0 {
                return None;
            }
            return Some(system.wrapping_add(scale_delta(tsc.wrapping_sub(stamp), mul, shift)));
        }
        None
    }
}

/// `((delta << shift) * mul) >> 32`, with a negative shift shifting right
/// (the formula of `vcpu_time_info`), computed without overflow.
pub fn scale_delta(delta: u64, mul: u32, shift: i8) -> u64 {
    let shifted = if shift >= 0 {
        u128::from(delta) << shift.unsigned_abs().min(63)
    } else {
        u128::from(delta >> shift.unsigned_abs().min(63))
    };
    shifted
        .checked_mul(u128::from(mul))
        .and_then(|ns| u64::try_from(ns >> 32).ok())
        .unwrap_or(u64::MAX)
}

impl VcpuInfo {
    const fn new() -> VcpuInfo {
        VcpuInfo {
            evtchn_upcall_pending: AtomicU8::new(0),
            evtchn_upcall_mask: AtomicU8::new(0),
            pad0: [const { AtomicU8::new(0) }; 6],
            evtchn_pending_sel: AtomicU64::new(0),
            arch: [const { AtomicU64::new(0) }; 2],
            time: VcpuTimeInfo::new(),
        }
    }

    /// Marks word `w` of `evtchn_pending` as holding an unmasked pending port for this vCPU,
    /// as Xen does when it raises one (`evtchn_2l_set_pending`): sets selector bit `w` and,
    /// if that was clear, `evtchn_upcall_pending`. (Words out of range are ignored.)
    pub(crate) fn mark_word_pending(&self, w: usize) {
        if w >= WORDS {
            return;
        }
        let sel_bit = 1u64 << w;
        // ORDERING: SeqCst, after the pending bit is set; pairs with the guest's swap of the
        // selector (`Scanner::next`), after which it loads the pending bits.
        if self.evtchn_pending_sel.fetch_or(sel_bit, Ordering::SeqCst) & sel_bit == 0 {
            // ORDERING: SeqCst, after the selector bit; pairs with the guest clearing the
            // flag (`evtchn::take_upcall`) before it takes the selector.
            self.evtchn_upcall_pending.store(1, Ordering::SeqCst);
        }
    }
}

impl Default for SharedInfo {
    fn default() -> Self {
        SharedInfo::new()
    }
}

/// The word and the bit of `port` in the bitmaps, if the 2-level ABI has the port.
pub fn locate(port: u32) -> Option<(usize, u64)> {
    let port = usize::try_from(port).ok().filter(|&p| p < NR_PORTS)?;
    Some((port / WORD_BITS, 1u64 << (port % WORD_BITS)))
}

impl SharedInfo {
    /// A zeroed `shared_info`, as a fresh domain's (host tests and fakes stand in for Xen
    /// with it).
    pub const fn new() -> SharedInfo {
        SharedInfo {
            vcpu_info: [const { VcpuInfo::new() }; LEGACY_MAX_VCPUS],
            evtchn_pending: [const { AtomicU64::new(0) }; WORDS],
            evtchn_mask: [const { AtomicU64::new(0) }; WORDS],
            wc_version: AtomicU32::new(0),
            wc_sec: AtomicU32::new(0),
            wc_nsec: AtomicU32::new(0),
            wc_sec_hi: AtomicU32::new(0),
            arch: [const { AtomicU64::new(0) }; 6],
        }
    }

    /// The `shared_info` page Xen mapped at `page`.
    ///
    /// # Safety
    ///
    /// `page` must be the address of the page Xen maps `shared_info` at
    /// (`XENMAPSPACE_shared_info`), page-aligned, mapped readable and writable for `'a`, and
    /// accessed by this program only through the returned reference.
    pub unsafe fn from_page<'a>(page: NonNull<u8>) -> &'a SharedInfo {
        // SAFETY: the page is 4096 bytes and 4096-aligned (caller), which covers the size and
        // alignment of `SharedInfo` (compile-time checks above); every field is an atomic
        // (or an array of them), valid for any bit pattern, and Xen's concurrent writes are
        // atomic with respect to ours (x86 aligned accesses and locked operations).
        unsafe { page.cast::<SharedInfo>().as_ref() }
    }

    /// The `vcpu_info` of vCPU `vcpu` (only the first 32 have one here).
    pub fn vcpu(&self, vcpu: usize) -> Option<&VcpuInfo> {
        self.vcpu_info.get(vcpu)
    }

    /// Whether `port` is pending.
    pub fn is_pending(&self, port: u32) -> bool {
        self.bit(&self.evtchn_pending, port)
    }

    /// Whether `port` is masked.
    pub fn is_masked(&self, port: u32) -> bool {
        self.bit(&self.evtchn_mask, port)
    }

    fn bit(&self, map: &[AtomicU64; WORDS], port: u32) -> bool {
        locate(port)
            .and_then(|(w, bit)| {
                // ORDERING: SeqCst; a pending bit pairs with the hypervisor setting it and then
                // loading the mask (`raise`), as `evtchn::unmask` loads it after `clear_mask`:
                // one side sees the other's write. Mask bits are written by this guest and by
                // Xen's `EVTCHNOP_unmask`, ordered the same way.
                map.get(w)
                    .map(|word| word.load(Ordering::SeqCst) & bit != 0)
            })
            .unwrap_or(false)
    }

    /// Clears `port`'s pending bit atomically (`lock and`, the `lock btr` of Xen's own guest
    /// code); returns whether it was set.
    pub fn test_and_clear_pending(&self, port: u32) -> bool {
        locate(port)
            .and_then(|(w, bit)| {
                // ORDERING: SeqCst (a locked read-modify-write); pairs with the hypervisor
                // setting the bit (`raise`): a set after this clear is kept, not lost.
                self.evtchn_pending
                    .get(w)
                    .map(|word| word.fetch_and(!bit, Ordering::SeqCst) & bit != 0)
            })
            .unwrap_or(false)
    }

    /// Sets `port`'s mask bit atomically.
    pub fn mask(&self, port: u32) {
        if let Some((w, bit)) = locate(port)
            && let Some(word) = self.evtchn_mask.get(w)
        {
            // ORDERING: SeqCst; pairs with the hypervisor's load of the mask after it sets a
            // pending bit (`raise`): an event raised after this sets no selector bit.
            word.fetch_or(bit, Ordering::SeqCst);
        }
    }

    /// Clears `port`'s mask bit atomically.
    pub fn clear_mask(&self, port: u32) {
        if let Some((w, bit)) = locate(port)
            && let Some(word) = self.evtchn_mask.get(w)
        {
            // ORDERING: SeqCst; pairs with the hypervisor setting a pending bit and then loading
            // the mask (`raise`): `evtchn::unmask` loads the pending bit after this clear, so
            // either the hypervisor sees the port unmasked or that load sees the bit set.
            word.fetch_and(!bit, Ordering::SeqCst);
        }
    }

    /// Unmasked pending ports of word `w` (0 for words out of range).
    pub fn live_word(&self, w: usize) -> u64 {
        match (self.evtchn_pending.get(w), self.evtchn_mask.get(w)) {
            // ORDERING: SeqCst; pending pairs with the hypervisor setting it before the selector
            // bit (`raise`), loaded after the scan took the selector (`Scanner::next`). Mask
            // bits are written by this guest and by Xen's `EVTCHNOP_unmask`, ordered as above.
            (Some(p), Some(m)) => p.load(Ordering::SeqCst) & !m.load(Ordering::SeqCst),
            _ => 0,
        }
    }

    /// What Xen does to deliver an event on `port` to `vcpu` (`evtchn_2l_set_pending` in
    /// `xen/common/event_2l.c`): set pending; if it was clear and the port is unmasked, set
    /// the selector bit and, if that was clear, `evtchn_upcall_pending`. For whoever plays
    /// Xen's part: a Rust hypervisor that embeds the store and delivers events to its guests'
    /// `shared_info` pages, and the host tests' fakes. A guest never calls it.
    pub fn raise(&self, vcpu: usize, port: u32) {
        let (Some((w, bit)), Some(v)) = (locate(port), self.vcpu(vcpu)) else {
            return;
        };
        let (Some(pending), Some(mask)) = (self.evtchn_pending.get(w), self.evtchn_mask.get(w))
        else {
            return;
        };
        // ORDERING: SeqCst, Xen's `lock bts`; pairs with the guest clearing the bit
        // (`test_and_clear_pending`) and loading it (`is_pending`, `live_word`).
        if pending.fetch_or(bit, Ordering::SeqCst) & bit != 0 {
            return;
        }
        // ORDERING: SeqCst, after the pending bit is set; pairs with the guest clearing the
        // mask and then loading the pending bit (`clear_mask`, `evtchn::unmask`).
        if mask.load(Ordering::SeqCst) & bit == 0 {
            v.mark_word_pending(w);
        }
    }

    /// What Xen does on `EVTCHNOP_unmask` (`evtchn_2l_unmask`): clear the mask and, if it was
    /// set and the port is pending, set the selector bit and the upcall flag. For whoever
    /// plays Xen's part, as [`SharedInfo::raise`].
    pub fn xen_unmask(&self, vcpu: usize, port: u32) {
        let (Some((w, bit)), Some(v)) = (locate(port), self.vcpu(vcpu)) else {
            return;
        };
        let (Some(pending), Some(mask)) = (self.evtchn_pending.get(w), self.evtchn_mask.get(w))
        else {
            return;
        };
        // ORDERING: SeqCst, the clear before the load of the pending bit; pairs with `raise`
        // (on another CPU) setting the bit and then loading the mask, and with the guest
        // clearing the pending bit (`test_and_clear_pending`).
        if mask.fetch_and(!bit, Ordering::SeqCst) & bit != 0
            && pending.load(Ordering::SeqCst) & bit != 0
        {
            v.mark_word_pending(w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_map_to_words_and_bits() {
        assert_eq!(locate(0), Some((0, 1)));
        assert_eq!(locate(65), Some((1, 2)));
        assert_eq!(locate(4095), Some((63, 1 << 63)));
        assert_eq!(locate(4096), None);
        assert_eq!(locate(u32::MAX), None);
    }

    #[test]
    fn pending_and_mask_bits() {
        let si = SharedInfo::new();
        si.raise(0, 70);
        assert!(si.is_pending(70));
        assert_eq!(
            si.vcpu(0)
                .unwrap()
                .evtchn_pending_sel
                .load(Ordering::SeqCst),
            1 << 1
        );
        assert_eq!(
            si.vcpu(0)
                .unwrap()
                .evtchn_upcall_pending
                .load(Ordering::SeqCst),
            1
        );
        assert!(si.test_and_clear_pending(70));
        assert!(!si.test_and_clear_pending(70));
        // Masked: pending is set, the selector is not.
        si.vcpu(0)
            .unwrap()
            .evtchn_pending_sel
            .store(0, Ordering::SeqCst);
        si.mask(3);
        si.raise(0, 3);
        assert!(si.is_pending(3) && si.is_masked(3));
        assert_eq!(si.live_word(0), 0);
        assert_eq!(
            si.vcpu(0)
                .unwrap()
                .evtchn_pending_sel
                .load(Ordering::SeqCst),
            0
        );
        // Xen's unmask re-raises it.
        si.xen_unmask(0, 3);
        assert_eq!(si.live_word(0), 1 << 3);
        assert_eq!(
            si.vcpu(0)
                .unwrap()
                .evtchn_pending_sel
                .load(Ordering::SeqCst),
            1
        );
        // Out-of-range ports are ignored everywhere.
        si.raise(0, 5000);
        si.mask(5000);
        assert!(!si.is_pending(5000) && !si.test_and_clear_pending(5000));
    }

    #[test]
    fn time_scaling() {
        // 2 GHz TSC: 0.5 ns per tick = mul 2^31, shift 0.
        assert_eq!(scale_delta(2_000_000_000, 1 << 31, 0), 1_000_000_000);
        // Shifts either way.
        assert_eq!(scale_delta(1000, 1 << 31, 1), 1000);
        assert_eq!(scale_delta(1000, 1 << 31, -1), 250);
        // No overflow on huge deltas.
        assert_eq!(scale_delta(u64::MAX, u32::MAX, 31), u64::MAX);
        assert_eq!(scale_delta(u64::MAX, u32::MAX, 63), u64::MAX);
        assert_eq!(scale_delta(u64::MAX, u32::MAX, i8::MIN), 0);
    }

    #[test]
    fn time_follows_the_version_protocol() {
        let t = VcpuTimeInfo::new();
        assert_eq!(t.system_time_ns(100), None, "never written");
        t.version.store(2, Ordering::SeqCst);
        t.tsc_timestamp.store(1000, Ordering::SeqCst);
        t.system_time.store(5_000, Ordering::SeqCst);
        t.tsc_to_system_mul.store(1 << 31, Ordering::SeqCst);
        assert_eq!(t.system_time_ns(3000), Some(6_000));
        t.version.store(3, Ordering::SeqCst);
        assert_eq!(t.system_time_ns(3000), None, "update never finishes");
    }
}
