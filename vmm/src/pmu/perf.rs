//! The host-perf counter source: on a host with a PMU, each running userspace-vPMU
//! counter is backed by a host perf event that counts **only while the vCPU thread is in
//! guest mode** (`exclude_host`), on the vCPU thread itself (`pid = 0`, `cpu = -1`).
//!
//! - GP counters: `PERF_TYPE_RAW` with the guest's event select, unit mask, EDGE, INV and
//!   CMASK (AMD: event bits 11:8 in config bits 35:32); USR/OS become
//!   `exclude_user`/`exclude_kernel` (in guest mode they filter the guest's CPL).
//! - Intel fixed counters: 0 instructions, 1 cycles, 2 reference cycles as
//!   `PERF_TYPE_HARDWARE` events (3, topdown slots, is refused).
//! - Overflow on time: the event's sample period is the counter's remaining counts to
//!   overflow, and the fd is set up for asynchronous notification (`O_ASYNC`,
//!   `F_SETOWN_EX` = the vCPU thread, `F_SETSIG` = the kick signal), so the host PMU
//!   kicks the vCPU out of KVM_RUN exactly when the guest counter wraps.
//!
//! **Verification status**: the plumbing (open, read deltas, period, overflow signal to
//! the thread) is tested here with a software event; the raw hardware-event mapping needs
//! a host with a PMU and is unverified (docs/STATUS.md).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::io::{AsRawFd, FromRawFd};

use perf_event_open_sys as sys;
use perf_event_open_sys::bindings::perf_event_attr;
use vpmu::selector::EventSelector;
use vpmu::Vendor;

/// Builds the perf attributes for a guest GP event selector.
pub fn gp_attr(vendor: Vendor, sel: &EventSelector) -> perf_event_attr {
    let mut config = u64::from(sel.event & 0xff)
        | (u64::from(sel.umask) << 8)
        | (u64::from(sel.edge) << 18)
        | (u64::from(sel.inv) << 23)
        | (u64::from(sel.cmask) << 24);
    if vendor == Vendor::Amd {
        config |= u64::from((sel.event >> 8) & 0xf) << 32;
    }
    let mut a = base_attr(sys::bindings::PERF_TYPE_RAW, config);
    a.set_exclude_user(u64::from(!sel.usr));
    a.set_exclude_kernel(u64::from(!sel.os));
    a
}

/// Builds the perf attributes for a decided fixed-counter programming (its event comes from
/// `vpmu::events`, via [`vpmu::guest::Programming`]); `None` for events without a generic
/// perf equivalent (topdown slots).
pub fn fixed_attr(p: &vpmu::guest::Programming) -> Option<perf_event_attr> {
    use vpmu::events::IntelEvent;
    let ev = p.selector;
    let is = |e: IntelEvent| ev.event == e.event().event && ev.umask == e.event().umask;
    let config = if is(IntelEvent::Instructions) {
        sys::bindings::PERF_COUNT_HW_INSTRUCTIONS
    } else if is(IntelEvent::Cycles) {
        sys::bindings::PERF_COUNT_HW_CPU_CYCLES
    } else if is(IntelEvent::RefCycles) {
        sys::bindings::PERF_COUNT_HW_REF_CPU_CYCLES
    } else {
        return None;
    };
    let mut a = base_attr(sys::bindings::PERF_TYPE_HARDWARE, u64::from(config));
    a.set_exclude_kernel(u64::from(!ev.os));
    a.set_exclude_user(u64::from(!ev.usr));
    Some(a)
}

fn base_attr(type_: u32, config: u64) -> perf_event_attr {
    let mut a = perf_event_attr {
        type_,
        // The struct is a few hundred bytes.
        size: u32::try_from(std::mem::size_of::<perf_event_attr>()).unwrap_or(0),
        config,
        ..Default::default()
    };
    a.set_exclude_host(1);
    a.set_exclude_hv(1);
    a.set_pinned(1);
    a
}

// From <asm-generic/fcntl.h> (not exported by the libc crate).
const F_SETSIG: libc::c_int = 10;
const F_SETOWN_EX: libc::c_int = 15;
const F_OWNER_TID: libc::c_int = 0;

#[repr(C)]
struct FOwnerEx {
    type_: libc::c_int,
    pid: libc::pid_t,
}

/// One open host perf event.
pub struct PerfCounter {
    file: File,
    last: u64,
}

impl PerfCounter {
    /// Opens `attr` on the calling thread. With `period > 0` the event overflows after
    /// `period` counts.
    pub fn open(mut attr: perf_event_attr, period: u64) -> io::Result<PerfCounter> {
        if period > 0 {
            attr.__bindgen_anon_1.sample_period = period;
        }
        // SAFETY: attr is a fully initialised perf_event_attr with the right size.
        let fd = unsafe {
            sys::perf_event_open(
                &mut attr,
                0,
                -1,
                -1,
                sys::bindings::PERF_FLAG_FD_CLOEXEC as _,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new perf fd we own.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut c = PerfCounter { file, last: 0 };
        c.last = c.read_total()?;
        Ok(c)
    }

    fn read_total(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.file.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Counts since the previous call (or since open).
    pub fn delta(&mut self) -> io::Result<u64> {
        let now = self.read_total()?;
        let d = now.wrapping_sub(self.last);
        self.last = now;
        Ok(d)
    }

    /// Sets the overflow period (PERF_EVENT_IOC_PERIOD).
    pub fn set_period(&self, period: u64) -> io::Result<()> {
        let mut p = period.max(1);
        // SAFETY: valid perf fd; PERIOD takes the new period by pointer (u64).
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                sys::bindings::PERIOD as _,
                &mut p as *mut u64,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Delivers `signal` to thread `tid` on every overflow.
    pub fn signal_on_overflow(&self, tid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        let owner = FOwnerEx {
            type_: F_OWNER_TID,
            pid: tid,
        };
        // SAFETY: fcntl on our own fd with valid arguments.
        unsafe {
            if libc::fcntl(fd, F_SETOWN_EX, &owner as *const FOwnerEx) < 0
                || libc::fcntl(fd, F_SETSIG, signal) < 0
            {
                return Err(io::Error::last_os_error());
            }
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_ASYNC) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn sel(v: Vendor, raw: u64) -> EventSelector {
        EventSelector::decode(v, raw)
    }

    #[test]
    fn gp_attr_encodes_the_guest_selector() {
        // Intel: event 0xc5 umask 0x01, USR only, CMASK 2, INV.
        let raw = 0xc5 | (0x01 << 8) | (1 << 16) | (1 << 22) | (1 << 23) | (2 << 24);
        let a = gp_attr(Vendor::Intel, &sel(Vendor::Intel, raw));
        assert_eq!(a.type_, sys::bindings::PERF_TYPE_RAW);
        assert_eq!(a.config, 0xc5 | (0x01 << 8) | (1 << 23) | (2 << 24));
        assert_eq!(a.exclude_user(), 0);
        assert_eq!(a.exclude_kernel(), 1);
        assert_eq!(a.exclude_host(), 1, "guest-only counting");
        assert_eq!(a.pinned(), 1);
        // AMD: 12-bit event 0x1c0 -> config bits 35:32 hold 0x1.
        let raw = 0xc0 | (1u64 << 32) | (1 << 17) | (1 << 22);
        let a = gp_attr(Vendor::Amd, &sel(Vendor::Amd, raw));
        assert_eq!(a.config, 0xc0 | (1u64 << 32));
        assert_eq!(a.exclude_user(), 1);
        assert_eq!(a.exclude_kernel(), 0);
    }

    /// Fixed counter `i` programmed with `field`, as the vPMU core decides it.
    fn fixed(i: u8, field: u64) -> vpmu::guest::Programming {
        let layout = vpmu::cpuid::default_emulated_layout(Vendor::Intel);
        let policy = vpmu::policy::Policy::from_toml("action = \"deny\"\n")
            .unwrap()
            .compile(Vendor::Intel, 4)
            .unwrap();
        let mut g = vpmu::guest::GuestPmu::new(&layout, std::sync::Arc::new(policy));
        let w = g
            .write(
                vpmu::model::intel::IA32_FIXED_CTR_CTRL,
                field << (4 * u32::from(i)),
            )
            .unwrap();
        w.reprogrammed
            .into_iter()
            .find(|p| p.counter == vpmu::state::CounterId::Fixed(i))
            .unwrap()
    }

    #[test]
    fn fixed_attr_maps_intel_fixed_counters() {
        let a = fixed_attr(&fixed(0, 0x3)).unwrap();
        assert_eq!(
            (a.type_, a.config),
            (
                sys::bindings::PERF_TYPE_HARDWARE,
                u64::from(sys::bindings::PERF_COUNT_HW_INSTRUCTIONS)
            )
        );
        assert_eq!((a.exclude_kernel(), a.exclude_user()), (0, 0));
        let a = fixed_attr(&fixed(1, 0x1)).unwrap();
        assert_eq!(a.config, u64::from(sys::bindings::PERF_COUNT_HW_CPU_CYCLES));
        assert_eq!((a.exclude_kernel(), a.exclude_user()), (0, 1));
        let a = fixed_attr(&fixed(2, 0x2)).unwrap();
        assert_eq!(
            a.config,
            u64::from(sys::bindings::PERF_COUNT_HW_REF_CPU_CYCLES)
        );
        assert_eq!((a.exclude_kernel(), a.exclude_user()), (1, 0));
        assert!(fixed_attr(&fixed(3, 0x3)).is_none());
    }

    static SIGNALS: AtomicU32 = AtomicU32::new(0);
    extern "C" fn count_signal(_: libc::c_int) {
        SIGNALS.fetch_add(1, Ordering::SeqCst);
    }

    /// The counter-source mechanics (open on this thread, read deltas, overflow period,
    /// overflow signal targeted at a thread) with a software event this host has.
    #[test]
    fn overflow_signal_reaches_the_thread() {
        let mut a = perf_event_attr {
            type_: sys::bindings::PERF_TYPE_SOFTWARE,
            // The struct is a few hundred bytes.
            size: u32::try_from(std::mem::size_of::<perf_event_attr>()).unwrap_or(0),
            config: u64::from(sys::bindings::PERF_COUNT_SW_TASK_CLOCK),
            ..Default::default()
        };
        a.set_pinned(1);
        let sig = libc::SIGRTMIN() + 5;
        // SAFETY: a handler that only touches an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = count_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
        }
        let mut c = match PerfCounter::open(a, 1_000_000) {
            Ok(c) => c,
            Err(e) => {
                println!("SKIPPED overflow_signal_reaches_the_thread: perf_event_open(task-clock) failed: {e}");
                return;
            }
        };
        c.signal_on_overflow(crate::kick::current_tid(), sig)
            .unwrap();
        // Task-clock counts this thread's CPU time: on a loaded machine the wall time to
        // reach 3 ms of it can be long, so allow plenty.
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        while SIGNALS.load(Ordering::SeqCst) < 3
            && t0.elapsed() < std::time::Duration::from_secs(30)
        {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            std::hint::black_box(x);
        }
        let d = c.delta().unwrap();
        let n = SIGNALS.load(Ordering::SeqCst);
        assert!(
            n >= 3,
            "{n} overflow signals in {:?} ({d} ns of task-clock)",
            t0.elapsed()
        );
        assert!(
            d >= 3_000_000,
            "task-clock delta {d} ns too small for {n} overflows of 1 ms"
        );
        c.set_period(500_000).unwrap();
        assert!(c.delta().unwrap() < d);
    }
}
