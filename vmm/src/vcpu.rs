//! The vCPU thread: KVM_RUN loop and exit dispatch.
//!
//! Everything a guest can do in an exit lands in [`Vcpu::handle_exit`], which never
//! panics: unknown ports read as all-ones, MMIO goes to the MMIO bus (virtio-mmio
//! devices; anything else there reads as all-ones and ignores writes), PMU MSRs go to
//! the userspace vPMU (or #GP), anything else ends the VM with a
//! clear [`Outcome`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use crate::kick;
use crate::outcome::Outcome;
use crate::pmu::{PmiDelivery, VcpuPmu};
use devices::{DeviceAction, MmioBus, PioBus, VmExit};

/// State shared by all vCPU threads and the main thread.
pub struct Shared {
    /// Port-I/O devices.
    pub pio: PioBus,
    /// MMIO devices (virtio-mmio); queue processing runs on the notifying vCPU thread.
    pub mmio: MmioBus,
    /// The VM fd (for MSIs).
    pub vm: Arc<VmFd>,
    /// Set once the VM must stop.
    pub stopping: AtomicBool,
    /// How the VM ended (first writer wins).
    pub outcome: Mutex<Option<Outcome>>,
    /// Thread ids of the vCPU threads, for kicks (0 = not started).
    pub tids: Vec<std::sync::atomic::AtomicI32>,
    /// Signalled when the VM must stop (wakes the main thread).
    pub stop_evt: vmm_sys_util::eventfd::EventFd,
    /// When the VMM started (for the start-to-first-instruction figure).
    pub started: Instant,
    /// Nanoseconds from VMM start to the first KVM_RUN of vCPU 0 (0 = not yet).
    pub first_entry_ns: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Records how the VM ended (the first call wins) and kicks every vCPU out of KVM_RUN.
    pub fn end(&self, outcome: Outcome) {
        if let Ok(mut slot) = self.outcome.lock() {
            if slot.is_none() {
                *slot = Some(outcome);
            }
        }
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.stop_evt.write(1);
        for t in &self.tids {
            let tid = t.load(Ordering::SeqCst);
            if tid > 0 {
                let _ = kick::kick(tid);
            }
        }
    }
}

/// Per-vCPU exit statistics.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct VcpuStats {
    /// Returns from KVM_RUN to userspace.
    pub exits: u64,
    /// Port reads.
    pub io_in: u64,
    /// Port writes.
    pub io_out: u64,
    /// MMIO exits: virtio-mmio device accesses and stray ones (the in-kernel IOAPIC and
    /// LAPIC never exit).
    pub mmio: u64,
    /// RDMSR exits (userspace vPMU).
    pub msr_read: u64,
    /// WRMSR exits (userspace vPMU).
    pub msr_write: u64,
    /// MSR accesses answered with #GP.
    pub msr_gp: u64,
    /// KVM_RUN interrupted by a kick (timer or stop).
    pub interrupted: u64,
    /// PMIs injected by the userspace vPMU.
    pub pmis: u64,
    /// TSC ticks spent inside KVM_RUN.
    pub tsc_in_guest: u64,
    /// Nanoseconds spent in userspace exit handling.
    pub handling_ns: u64,
}

/// One vCPU and its thread-local state.
pub struct Vcpu {
    /// vCPU index (also its APIC ID).
    pub index: u8,
    /// The KVM vCPU.
    pub fd: VcpuFd,
    /// Shared VM state.
    pub shared: Arc<Shared>,
    /// The userspace vPMU, when that mode is on.
    pub pmu: Option<Box<dyn VcpuPmu>>,
    /// Statistics.
    pub stats: VcpuStats,
}

#[inline]
fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no preconditions on x86_64.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Ends the VM if the vCPU thread unwinds from a panic (a VMM bug): without it the main
/// thread would wait for a stop that never comes and the VMM would hang. Also forgets
/// this thread's `kvm_run` pointer first, so a kick arriving after the vCPU fd is gone
/// cannot write through it.
struct EndOnPanic<'a> {
    shared: &'a Shared,
    vcpu: u8,
}

impl Drop for EndOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            kick::unregister_current();
            self.shared.end(Outcome::VmmError {
                vcpu: self.vcpu,
                detail: "vCPU thread panicked (VMM bug)".into(),
            });
        }
    }
}

impl Vcpu {
    /// Runs the vCPU until the VM stops. Call on the vCPU's own thread.
    pub fn run(mut self) -> (VcpuStats, Option<Box<dyn VcpuPmu>>) {
        // Locals drop before `self`: on a panic the guard runs while the fd still exists.
        let shared = self.shared.clone();
        let _guard = EndOnPanic {
            shared: &shared,
            vcpu: self.index,
        };
        kick::register_current(self.fd.get_kvm_run() as *mut _);
        if let Some(slot) = self.shared.tids.get(self.index as usize) {
            slot.store(kick::current_tid(), Ordering::SeqCst);
        }
        if let Some(pmu) = self.pmu.as_mut() {
            if let Err(e) = pmu.attach_thread(kick::current_tid()) {
                self.shared.end(Outcome::VmmError {
                    vcpu: self.index,
                    detail: format!("userspace vPMU: {e}"),
                });
            }
        }
        if self.index == 0 {
            let ns = self.shared.started.elapsed().as_nanos() as u64;
            self.shared
                .first_entry_ns
                .store(ns.max(1), Ordering::SeqCst);
        }
        while !self.shared.stopping.load(Ordering::Relaxed) {
            if let Some(pmu) = self.pmu.as_mut() {
                pmu.before_run();
            }
            let t0 = rdtsc();
            let res = self.fd.run();
            let t1 = rdtsc();
            let ran = t1.wrapping_sub(t0);
            self.stats.exits += 1;
            self.stats.tsc_in_guest = self.stats.tsc_in_guest.wrapping_add(ran);
            let kicked = matches!(&res, Err(e) if e.errno() == libc::EINTR);
            let pmi = match self.pmu.as_mut() {
                Some(pmu) => pmu.after_run(ran, kicked),
                None => false,
            };
            let h0 = Instant::now();
            match res {
                Ok(exit) => {
                    let index = self.index;
                    if let Some(outcome) = handle_exit(
                        index,
                        exit,
                        &self.shared,
                        self.pmu.as_mut(),
                        &mut self.stats,
                    ) {
                        self.end_with(outcome);
                        break;
                    }
                }
                Err(e) if e.errno() == libc::EINTR => {
                    self.stats.interrupted += 1;
                    self.fd.set_kvm_immediate_exit(0);
                }
                Err(e) if e.errno() == libc::EAGAIN => {}
                Err(e) => {
                    self.end_with(Outcome::VmmError {
                        vcpu: self.index,
                        detail: format!("KVM_RUN failed: {e}"),
                    });
                    break;
                }
            }
            if pmi {
                self.deliver_pmi();
            }
            self.stats.handling_ns += h0.elapsed().as_nanos() as u64;
        }
        kick::unregister_current();
        if let Some(pmu) = self.pmu.as_mut() {
            pmu.detach_thread();
        }
        (self.stats, self.pmu)
    }

    fn end_with(&mut self, outcome: Outcome) {
        // Fill in RIP for faults when we can read it.
        let outcome = match outcome {
            Outcome::TripleFault { vcpu, rip: None } => Outcome::TripleFault {
                vcpu,
                rip: self.fd.get_regs().ok().map(|r| r.rip),
            },
            Outcome::InternalError {
                vcpu, rip: None, ..
            } => {
                let run = self.fd.get_kvm_run();
                // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                // active union member.
                let internal = unsafe { run.__bindgen_anon_1.internal };
                let n = (internal.ndata as usize).min(internal.data.len());
                Outcome::InternalError {
                    vcpu,
                    suberror: internal.suberror,
                    data: internal.data[..n].to_vec(),
                    rip: self.fd.get_regs().ok().map(|r| r.rip),
                }
            }
            o => o,
        };
        self.shared.end(outcome);
    }

    /// Delivers a PMI the way the guest programmed its LAPIC LVT performance-counter entry.
    fn deliver_pmi(&mut self) {
        let mut lapic = match self.fd.get_lapic() {
            Ok(l) => l,
            Err(_) => return,
        };
        let lvtpc = crate::pmu::read_lapic_reg(&lapic, crate::pmu::APIC_LVTPC);
        let delivery = crate::pmu::pmi_delivery(lvtpc);
        if delivery != PmiDelivery::Masked
            && self.pmu.as_ref().is_some_and(|p| p.masks_lvtpc_on_pmi())
        {
            // Like Intel hardware (and KVM for Intel guests): mask LVTPC as the PMI is
            // delivered; the guest's handler unmasks it. KVM_SET_LAPIC replaces the whole
            // register page, so an interrupt injected by another thread in the window
            // between GET and SET could be lost; the window is a few microseconds per PMI.
            crate::pmu::write_lapic_reg(
                &mut lapic,
                crate::pmu::APIC_LVTPC,
                lvtpc | crate::pmu::APIC_LVT_MASKED,
            );
            if self.fd.set_lapic(&lapic).is_err() {
                return;
            }
        }
        match delivery {
            PmiDelivery::Masked => {}
            PmiDelivery::Nmi => {
                if self.fd.nmi().is_ok() {
                    self.stats.pmis += 1;
                }
            }
            PmiDelivery::Fixed(vector) => {
                let msi = kvm_bindings::kvm_msi {
                    address_lo: 0xfee0_0000 | (u32::from(self.index) << 12),
                    address_hi: 0,
                    data: u32::from(vector),
                    ..Default::default()
                };
                if self.shared.vm.signal_msi(msi).is_ok() {
                    self.stats.pmis += 1;
                }
            }
        }
    }
}

/// Handles one exit. Returns `Some(outcome)` when the VM must end.
fn handle_exit(
    index: u8,
    exit: VcpuExit<'_>,
    shared: &Shared,
    pmu: Option<&mut Box<dyn VcpuPmu>>,
    stats: &mut VcpuStats,
) -> Option<Outcome> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            stats.io_in += 1;
            shared.pio.read(port, data);
            None
        }
        VcpuExit::IoOut(port, data) => {
            stats.io_out += 1;
            match shared.pio.write(port, data) {
                DeviceAction::None => None,
                DeviceAction::Exit(VmExit::Reset) => Some(Outcome::Reset),
                DeviceAction::Exit(VmExit::PowerOff) => Some(Outcome::PowerOff),
                DeviceAction::Exit(VmExit::DebugExit(value)) => Some(Outcome::DebugExit { value }),
            }
        }
        VcpuExit::MmioRead(addr, data) => {
            stats.mmio += 1;
            shared.mmio.read(addr, data);
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            stats.mmio += 1;
            shared.mmio.write(addr, data);
            None
        }
        VcpuExit::X86Rdmsr(exit) => {
            stats.msr_read += 1;
            match pmu.and_then(|p| p.rdmsr(exit.index)) {
                Some(v) => {
                    *exit.data = v;
                    *exit.error = 0;
                }
                None => {
                    stats.msr_gp += 1;
                    *exit.error = 1;
                }
            }
            None
        }
        VcpuExit::X86Wrmsr(exit) => {
            stats.msr_write += 1;
            let ok = pmu.map(|p| p.wrmsr(exit.index, exit.data)).unwrap_or(false);
            if ok {
                *exit.error = 0;
            } else {
                stats.msr_gp += 1;
                *exit.error = 1;
            }
            None
        }
        VcpuExit::Hlt => {
            // With the in-kernel irqchip KVM handles HLT itself; a HLT exit means the vCPU
            // has nothing to wait for. Treat it as "stopped" only if every vCPU stops.
            None
        }
        VcpuExit::Intr | VcpuExit::IrqWindowOpen => None,
        VcpuExit::Shutdown => Some(Outcome::TripleFault {
            vcpu: index,
            rip: None,
        }),
        VcpuExit::FailEntry(reason, _cpu) => Some(Outcome::FailEntry {
            vcpu: index,
            reason,
        }),
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => Some(Outcome::PowerOff),
            KVM_SYSTEM_EVENT_RESET => Some(Outcome::Reset),
            KVM_SYSTEM_EVENT_CRASH => Some(Outcome::Crash { vcpu: index }),
            other => Some(Outcome::VmmError {
                vcpu: index,
                detail: format!("unhandled KVM system event {other}"),
            }),
        },
        VcpuExit::InternalError => Some(Outcome::InternalError {
            vcpu: index,
            suberror: 0,
            data: Vec::new(),
            rip: None,
        }),
        other => Some(Outcome::VmmError {
            vcpu: index,
            detail: format!("unhandled VM exit {other:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panicking vCPU thread must end the VM (the main thread waits for that), not
    /// leave the VMM hanging.
    #[test]
    fn vcpu_thread_panic_ends_the_vm() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            println!("SKIPPED vcpu_thread_panic_ends_the_vm: /dev/kvm unusable");
            return;
        };
        let vm = Arc::new(kvm.create_vm().expect("create_vm"));
        let shared = Arc::new(Shared {
            pio: PioBus::new(),
            mmio: MmioBus::new(),
            vm,
            stopping: AtomicBool::new(false),
            outcome: Mutex::new(None),
            tids: Vec::new(),
            stop_evt: vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
                .expect("eventfd"),
            started: Instant::now(),
            first_entry_ns: std::sync::atomic::AtomicU64::new(0),
        });
        let s = shared.clone();
        let r = std::thread::spawn(move || {
            let _guard = EndOnPanic {
                shared: &s,
                vcpu: 3,
            };
            panic!("injected");
        })
        .join();
        assert!(r.is_err());
        assert!(shared.stopping.load(Ordering::SeqCst));
        assert_eq!(shared.stop_evt.read().expect("stop signalled"), 1);
        let outcome = shared.outcome.lock().expect("lock").clone();
        assert!(
            matches!(outcome, Some(Outcome::VmmError { vcpu: 3, .. })),
            "{outcome:?}"
        );
    }
}
