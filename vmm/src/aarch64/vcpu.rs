//! arm64 vCPUs: KVM_ARM_VCPU_INIT (preferred target, PSCI 0.2, secondaries powered off),
//! boot registers, and the KVM_RUN loop with its exit dispatch (MMIO to the devices, PSCI
//! system events to the VM's [`Outcome`]). No exit a guest can cause panics the VMM.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::kvm_vcpu_init;
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use arch::aarch64::{layout, regs};
use devices::{DebugExit, DeviceAction, MmioBus, PioDevice, Serial, VmExit};

use crate::error::{Error, Result};
use crate::kick;
use crate::outcome::Outcome;

/// Creates and initialises vCPU `index` (all vCPUs must be created before the vGIC), with
/// KVM's PMUv3 when `pmu`.
pub fn create(vm: &VmFd, index: u8, preferred: &kvm_vcpu_init, pmu: bool) -> Result<VcpuFd> {
    let fd = vm
        .create_vcpu(u64::from(index))
        .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
    let mut kvi = *preferred;
    kvi.features[0] = regs::vcpu_features(u32::from(index), preferred.features[0], pmu);
    fd.vcpu_init(&kvi)
        .map_err(Error::kvm("KVM_ARM_VCPU_INIT"))?;
    Ok(fd)
}

/// MPIDR_EL1 of an initialised vCPU.
pub fn mpidr(fd: &VcpuFd) -> Result<u64> {
    let mut b = [0u8; 8];
    fd.get_one_reg(regs::MPIDR_EL1, &mut b)
        .map_err(Error::kvm("KVM_GET_ONE_REG MPIDR_EL1"))?;
    Ok(u64::from_le_bytes(b))
}

/// Boot registers: PSTATE (EL1h, DAIF masked) everywhere; on vCPU 0 PC = entry and
/// X0 = device tree (X1..X3 are 0 after init). Secondaries get theirs from PSCI CPU_ON.
pub fn set_boot_regs(fd: &VcpuFd, index: u8, entry: u64, fdt: u64) -> Result<()> {
    let set = |id: u64, v: u64, op: &'static str| {
        fd.set_one_reg(id, &v.to_le_bytes()).map_err(Error::kvm(op))
    };
    set(regs::PSTATE, regs::PSTATE_BOOT, "KVM_SET_ONE_REG PSTATE")?;
    if index == 0 {
        set(regs::PC, entry, "KVM_SET_ONE_REG PC")?;
        set(regs::x(0), fdt, "KVM_SET_ONE_REG X0")?;
    }
    Ok(())
}

/// State shared by the vCPU threads and the main thread.
pub struct Shared {
    /// The 16550 at `layout::SERIAL_BASE`.
    pub serial: Arc<Mutex<Serial>>,
    /// The debug-exit device at `layout::DEBUG_EXIT_BASE`.
    pub debug_exit: Mutex<DebugExit>,
    /// virtio-mmio devices.
    pub mmio: MmioBus,
    /// Set once the VM must stop.
    pub stopping: AtomicBool,
    /// How the VM ended (first writer wins).
    pub outcome: Mutex<Option<Outcome>>,
    /// Thread ids of the vCPU threads, for kicks (0 = not started).
    pub tids: Vec<AtomicI32>,
    /// Written when the VM must stop (the main thread blocks reading it).
    pub stop_evt: vmm_sys_util::eventfd::EventFd,
    /// When the VMM started.
    pub started: Instant,
    /// Nanoseconds from VMM start to vCPU 0's first KVM_RUN.
    pub first_entry_ns: AtomicU64,
    /// Per vCPU: what the silence watchdog reads (`crate::watchdog`).
    pub progress: Vec<crate::watchdog::VcpuProgress>,
}

impl kick::EndVm for Shared {
    fn end_vm(&self, outcome: Outcome) {
        self.end(outcome);
    }
}

impl Shared {
    /// Records how the VM ended (the first call wins) and kicks every vCPU out of KVM_RUN.
    pub fn end(&self, outcome: Outcome) {
        kick::end_vm(
            &self.outcome,
            &self.stopping,
            &self.stop_evt,
            &self.tids,
            outcome,
        );
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if let Some(off) = offset_in(addr, layout::SERIAL_BASE) {
            if let Ok(mut s) = self.serial.lock() {
                PioDevice::read(&mut *s, off, data);
            }
        } else if offset_in(addr, layout::DEBUG_EXIT_BASE).is_some() {
            data.fill(0xff);
        } else {
            self.mmio.read(addr, data);
        }
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) -> Option<Outcome> {
        if let Some(off) = offset_in(addr, layout::SERIAL_BASE) {
            if let Ok(mut s) = self.serial.lock() {
                PioDevice::write(&mut *s, off, data);
            }
            None
        } else if let Some(off) = offset_in(addr, layout::DEBUG_EXIT_BASE) {
            let action = self.debug_exit.lock().ok()?.write(off, data);
            match action {
                DeviceAction::Exit(VmExit::DebugExit(value)) => Some(Outcome::DebugExit { value }),
                DeviceAction::Exit(VmExit::Reset) => Some(Outcome::Reset),
                DeviceAction::Exit(VmExit::PowerOff) => Some(Outcome::PowerOff),
                DeviceAction::None => None,
            }
        } else {
            self.mmio.write(addr, data);
            None
        }
    }
}

/// Offset of `addr` in the 4 KiB device window at `base`, as the port-I/O device API
/// wants it.
fn offset_in(addr: u64, base: u64) -> Option<u16> {
    addr.checked_sub(base)
        .filter(|&o| o < layout::MMIO_LEN)
        .map(|o| o as u16)
}

/// Per-vCPU exit statistics.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct VcpuStats {
    /// Returns from KVM_RUN to userspace.
    pub exits: u64,
    /// MMIO exits.
    pub mmio: u64,
    /// KVM_RUN interrupted by a kick.
    pub interrupted: u64,
}

/// Runs vCPU `index` until the VM stops. Call on the vCPU's own thread. Gives the fd back
/// (for the exit-time PMU audit).
pub fn run(index: u8, mut fd: VcpuFd, shared: Arc<Shared>) -> (VcpuStats, VcpuFd) {
    let _guard = kick::EndOnPanic {
        shared: &*shared,
        vcpu: index,
    };
    let mut stats = VcpuStats::default();
    kick::register_current(fd.get_kvm_run() as *mut _);
    if let Some(slot) = shared.tids.get(usize::from(index)) {
        slot.store(kick::current_tid(), Ordering::SeqCst);
    }
    if index == 0 {
        let ns = crate::nanos(shared.started.elapsed());
        shared.first_entry_ns.store(ns.max(1), Ordering::SeqCst);
    }
    while !shared.stopping.load(Ordering::Relaxed) {
        let res = fd.run();
        stats.exits += 1;
        let progress = shared.progress.get(usize::from(index));
        if let Some(p) = progress {
            p.exits.store(stats.exits, Ordering::Relaxed);
        }
        let end = match res {
            Ok(exit) => handle_exit(index, exit, &shared, &mut stats),
            Err(e) if e.errno() == libc::EINTR => {
                stats.interrupted += 1;
                if let Some(p) = progress {
                    p.answer(|| {
                        let mut pc = [0u8; 8];
                        fd.get_one_reg(regs::PC, &mut pc)
                            .ok()
                            .map(|_| u64::from_le_bytes(pc))
                    });
                }
                None
            }
            Err(e) if e.errno() == libc::EAGAIN => None,
            Err(e) => Some(Outcome::VmmError {
                vcpu: index,
                detail: format!("KVM_RUN failed: {e}"),
            }),
        };
        if let Some(outcome) = end {
            let outcome = match outcome {
                Outcome::InternalError {
                    vcpu, rip: None, ..
                } => {
                    // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                    // active union member.
                    let internal = unsafe { fd.get_kvm_run().__bindgen_anon_1.internal };
                    let n = (internal.ndata as usize).min(internal.data.len());
                    let mut pc = [0u8; 8];
                    Outcome::InternalError {
                        vcpu,
                        suberror: internal.suberror,
                        data: internal.data[..n].to_vec(),
                        rip: fd
                            .get_one_reg(regs::PC, &mut pc)
                            .ok()
                            .map(|_| u64::from_le_bytes(pc)),
                    }
                }
                o => o,
            };
            shared.end(outcome);
            break;
        }
        fd.set_kvm_immediate_exit(0);
    }
    kick::unregister_current();
    log::debug!(
        "vcpu{index}: {} exits by kind: mmio {}, kicked {}, other {}",
        stats.exits,
        stats.mmio,
        stats.interrupted,
        stats.exits.saturating_sub(stats.mmio + stats.interrupted)
    );
    (stats, fd)
}

fn handle_exit(
    index: u8,
    exit: VcpuExit<'_>,
    shared: &Shared,
    stats: &mut VcpuStats,
) -> Option<Outcome> {
    match exit {
        VcpuExit::MmioRead(addr, data) => {
            stats.mmio += 1;
            shared.mmio_read(addr, data);
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            stats.mmio += 1;
            shared.mmio_write(addr, data)
        }
        VcpuExit::SystemEvent(kind, data) => match regs::system_event(kind, data) {
            regs::SystemEvent::PowerOff => Some(Outcome::PowerOff),
            regs::SystemEvent::Reset => Some(Outcome::Reset),
            regs::SystemEvent::Crash => {
                eprintln!(
                    "vpmu-vmm: vCPU {index}: {} (a guest panic with reboot=panic_warm)",
                    if kind == regs::SYSTEM_EVENT_RESET {
                        "PSCI SYSTEM_RESET2 warm reset"
                    } else {
                        "KVM crash event"
                    }
                );
                Some(Outcome::Crash { vcpu: index })
            }
            regs::SystemEvent::Other(k) => Some(Outcome::VmmError {
                vcpu: index,
                detail: format!("unhandled KVM system event {k} (data {data:x?})"),
            }),
        },
        VcpuExit::FailEntry(reason, _cpu) => Some(Outcome::FailEntry {
            vcpu: index,
            reason,
        }),
        VcpuExit::InternalError => Some(Outcome::InternalError {
            vcpu: index,
            suberror: 0,
            data: Vec::new(),
            rip: None,
        }),
        VcpuExit::Intr => None,
        other => Some(Outcome::VmmError {
            vcpu: index,
            detail: format!("unhandled KVM exit {other:?}"),
        }),
    }
}
