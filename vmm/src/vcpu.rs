//! The vCPU thread: KVM_RUN loop and exit dispatch.
//!
//! Everything a guest can do in an exit lands in [`handle_exit`], which never
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
use crate::pmu::VcpuPmu;
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

/// What one return from KVM_RUN was, for the per-vCPU summary logged at debug level at
/// the end of the run (`-vv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// KVM_EXIT_IO, a port read.
    IoIn,
    /// KVM_EXIT_IO, a port write.
    IoOut,
    /// KVM_EXIT_MMIO, a read.
    MmioRead,
    /// KVM_EXIT_MMIO, a write.
    MmioWrite,
    /// KVM_EXIT_X86_RDMSR.
    Rdmsr,
    /// KVM_EXIT_X86_WRMSR.
    Wrmsr,
    /// KVM_EXIT_HLT.
    Hlt,
    /// KVM_EXIT_INTR.
    Intr,
    /// KVM_EXIT_IRQ_WINDOW_OPEN.
    IrqWindowOpen,
    /// KVM_EXIT_SHUTDOWN (triple fault).
    Shutdown,
    /// KVM_EXIT_FAIL_ENTRY.
    FailEntry,
    /// KVM_EXIT_SYSTEM_EVENT.
    SystemEvent,
    /// KVM_EXIT_INTERNAL_ERROR.
    InternalError,
    /// Any other exit reason (ends the VM).
    Other,
    /// KVM_RUN interrupted by a kick (EINTR).
    Kicked,
    /// KVM_RUN returned EAGAIN.
    Again,
    /// KVM_RUN failed (ends the VM).
    RunError,
}

impl ExitKind {
    /// Every kind, in summary order.
    pub const ALL: [ExitKind; 17] = [
        ExitKind::IoIn,
        ExitKind::IoOut,
        ExitKind::MmioRead,
        ExitKind::MmioWrite,
        ExitKind::Rdmsr,
        ExitKind::Wrmsr,
        ExitKind::Hlt,
        ExitKind::Intr,
        ExitKind::IrqWindowOpen,
        ExitKind::Shutdown,
        ExitKind::FailEntry,
        ExitKind::SystemEvent,
        ExitKind::InternalError,
        ExitKind::Other,
        ExitKind::Kicked,
        ExitKind::Again,
        ExitKind::RunError,
    ];

    /// The kind of a KVM_RUN result.
    pub fn of(res: &Result<VcpuExit<'_>, kvm_ioctls::Error>) -> ExitKind {
        match res {
            Ok(VcpuExit::IoIn(..)) => ExitKind::IoIn,
            Ok(VcpuExit::IoOut(..)) => ExitKind::IoOut,
            Ok(VcpuExit::MmioRead(..)) => ExitKind::MmioRead,
            Ok(VcpuExit::MmioWrite(..)) => ExitKind::MmioWrite,
            Ok(VcpuExit::X86Rdmsr(_)) => ExitKind::Rdmsr,
            Ok(VcpuExit::X86Wrmsr(_)) => ExitKind::Wrmsr,
            Ok(VcpuExit::Hlt) => ExitKind::Hlt,
            Ok(VcpuExit::Intr) => ExitKind::Intr,
            Ok(VcpuExit::IrqWindowOpen) => ExitKind::IrqWindowOpen,
            Ok(VcpuExit::Shutdown) => ExitKind::Shutdown,
            Ok(VcpuExit::FailEntry(..)) => ExitKind::FailEntry,
            Ok(VcpuExit::SystemEvent(..)) => ExitKind::SystemEvent,
            Ok(VcpuExit::InternalError) => ExitKind::InternalError,
            Ok(_) => ExitKind::Other,
            Err(e) if e.errno() == libc::EINTR => ExitKind::Kicked,
            Err(e) if e.errno() == libc::EAGAIN => ExitKind::Again,
            Err(_) => ExitKind::RunError,
        }
    }

    /// Its name in the summary.
    pub fn name(self) -> &'static str {
        match self {
            ExitKind::IoIn => "io_in",
            ExitKind::IoOut => "io_out",
            ExitKind::MmioRead => "mmio_read",
            ExitKind::MmioWrite => "mmio_write",
            ExitKind::Rdmsr => "rdmsr",
            ExitKind::Wrmsr => "wrmsr",
            ExitKind::Hlt => "hlt",
            ExitKind::Intr => "intr",
            ExitKind::IrqWindowOpen => "irq_window_open",
            ExitKind::Shutdown => "shutdown",
            ExitKind::FailEntry => "fail_entry",
            ExitKind::SystemEvent => "system_event",
            ExitKind::InternalError => "internal_error",
            ExitKind::Other => "other",
            ExitKind::Kicked => "kicked",
            ExitKind::Again => "eagain",
            ExitKind::RunError => "run_error",
        }
    }
}

/// Returns from KVM_RUN by [`ExitKind`] (one counter increment per exit).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExitCounts([u64; ExitKind::ALL.len()]);

impl ExitCounts {
    /// Counts one exit.
    #[inline]
    pub fn add(&mut self, kind: ExitKind) {
        self.0[kind as usize] += 1;
    }

    /// The count of `kind`.
    pub fn get(&self, kind: ExitKind) -> u64 {
        self.0[kind as usize]
    }

    /// All exits.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

impl std::fmt::Display for ExitCounts {
    /// `io_out 120, mmio_read 4, hlt 0`: the kinds that occurred, in [`ExitKind::ALL`]
    /// order (`none` when nothing did).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for k in ExitKind::ALL {
            let n = self.get(k);
            if n > 0 {
                write!(f, "{}{} {n}", if first { "" } else { ", " }, k.name())?;
                first = false;
            }
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
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

impl Vcpu {
    /// Runs the vCPU until the VM stops. Call on the vCPU's own thread.
    pub fn run(mut self) -> (VcpuStats, Option<Box<dyn VcpuPmu>>) {
        // Locals drop before `self`: on a panic the guard runs while the fd still exists.
        let shared = self.shared.clone();
        let _guard = kick::EndOnPanic {
            shared: &*shared,
            vcpu: self.index,
        };
        self.attach_thread();
        let mut kinds = ExitCounts::default();
        // A line per exit only at trace level; decided once, so the loop pays nothing else.
        let trace = log::log_enabled!(log::Level::Trace);
        // SeqCst pairs with `Shared::end` (store `stopping`, then read the tids): either
        // this thread sees the stop here, or `end` sees its tid and kicks it.
        while !self.shared.stopping.load(Ordering::SeqCst) {
            if let Some(pmu) = self.pmu.as_mut() {
                pmu.before_run();
            }
            let t0 = rdtsc();
            let res = self.fd.run();
            let t1 = rdtsc();
            let ran = t1.wrapping_sub(t0);
            self.stats.exits += 1;
            if let Some(p) = self.shared.progress.get(usize::from(self.index)) {
                p.exits.store(self.stats.exits, Ordering::Relaxed);
            }
            self.stats.tsc_in_guest = self.stats.tsc_in_guest.wrapping_add(ran);
            let kicked = matches!(&res, Err(e) if e.errno() == libc::EINTR);
            let pmi = match self.pmu.as_mut() {
                Some(pmu) => pmu.after_run(ran, kicked),
                None => false,
            };
            let h0 = Instant::now();
            kinds.add(ExitKind::of(&res));
            if trace {
                trace_exit(self.index, &res);
            }
            match res {
                Ok(exit) => {
                    let mut p = Peripherals {
                        vcpu: self.index,
                        pio: &self.shared.pio,
                        mmio: &self.shared.mmio,
                        pmu: self.pmu.as_mut().map(|b| &mut **b as &mut dyn VcpuPmu),
                        stats: &mut self.stats,
                    };
                    if let Some(outcome) = handle_exit(exit, &mut p) {
                        self.end_with(outcome);
                        break;
                    }
                }
                Err(e) if e.errno() == libc::EINTR => {
                    self.stats.interrupted += 1;
                    self.fd.set_kvm_immediate_exit(0);
                    if let Some(p) = self.shared.progress.get(usize::from(self.index)) {
                        p.answer(|| self.fd.get_regs().ok().map(|r| r.rip));
                    }
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
            self.stats.handling_ns += crate::nanos(h0.elapsed());
        }
        kick::unregister_current();
        if let Some(pmu) = self.pmu.as_mut() {
            pmu.detach_thread();
        }
        log::debug!(
            "vcpu{}: {} exits by kind: {kinds}; {} PMIs",
            self.index,
            kinds.total(),
            self.stats.pmis
        );
        (self.stats, self.pmu)
    }

    /// On the vCPU thread, before the first KVM_RUN: register for kicks, let the vPMU
    /// target this thread, and (vCPU 0) record the start-to-first-entry time.
    fn attach_thread(&mut self) {
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
            let ns = crate::nanos(self.shared.started.elapsed());
            self.shared
                .first_entry_ns
                .store(ns.max(1), Ordering::SeqCst);
        }
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

    /// Delivers a PMI the way the guest programmed its LAPIC ([`crate::pmu::pmi`]).
    fn deliver_pmi(&mut self) {
        let masks = self.pmu.as_ref().is_some_and(|p| p.masks_lvtpc_on_pmi());
        match crate::pmu::pmi::deliver(&self.fd, &self.shared.vm, self.index, masks) {
            Ok(true) => self.stats.pmis += 1,
            Ok(false) => {}
            Err(e) => pmi_failed(self.index, e.op, &e.source),
        }
    }
}

/// The trace line of one exit (`-vvv`).
#[cold]
fn trace_exit(vcpu: u8, res: &Result<VcpuExit<'_>, kvm_ioctls::Error>) {
    let kind = ExitKind::of(res).name();
    match res {
        Ok(VcpuExit::IoIn(port, data)) => {
            log::trace!(
                "vcpu{vcpu}: exit {kind} port {port:#x}, {} bytes",
                data.len()
            )
        }
        Ok(VcpuExit::IoOut(port, data)) => {
            log::trace!("vcpu{vcpu}: exit {kind} port {port:#x} <- {data:02x?}")
        }
        Ok(VcpuExit::MmioRead(addr, data)) => {
            log::trace!("vcpu{vcpu}: exit {kind} {addr:#x}, {} bytes", data.len())
        }
        Ok(VcpuExit::MmioWrite(addr, data)) => {
            log::trace!("vcpu{vcpu}: exit {kind} {addr:#x} <- {data:02x?}")
        }
        Ok(VcpuExit::X86Rdmsr(e)) => log::trace!("vcpu{vcpu}: exit {kind} {:#x}", e.index),
        Ok(VcpuExit::X86Wrmsr(e)) => {
            log::trace!("vcpu{vcpu}: exit {kind} {:#x} <- {:#x}", e.index, e.data)
        }
        Ok(exit) => log::trace!("vcpu{vcpu}: exit {kind}: {exit:?}"),
        Err(e) => log::trace!("vcpu{vcpu}: exit {kind}: KVM_RUN returned {e}"),
    }
}

/// A PMI that could not be delivered: a warning the first time in this process, debug
/// lines after that (a broken delivery would otherwise log once per overflow).
#[cold]
fn pmi_failed(vcpu: u8, op: &str, e: &kvm_ioctls::Error) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if WARNED.swap(true, Ordering::Relaxed) {
        log::debug!("vcpu{vcpu}: PMI not delivered: {op}: {e}");
    } else {
        log::warn!("vcpu{vcpu}: PMI not delivered: {op}: {e} (further failures at debug level)");
    }
}

/// What an exit may touch: the buses, the vCPU's vPMU and its statistics. Built for each
/// exit from the vCPU's state; tests build it from bare buses, without KVM.
pub struct Peripherals<'a> {
    /// The vCPU (for outcomes).
    pub vcpu: u8,
    /// Port-I/O devices.
    pub pio: &'a PioBus,
    /// MMIO devices.
    pub mmio: &'a MmioBus,
    /// The vCPU's vPMU in the VMM, if any (PMU MSR exits go there; without one they #GP).
    pub pmu: Option<&'a mut dyn VcpuPmu>,
    /// Exit counters.
    pub stats: &'a mut VcpuStats,
}

/// Handles one exit. Returns `Some(outcome)` when the VM must end.
pub fn handle_exit(exit: VcpuExit<'_>, p: &mut Peripherals<'_>) -> Option<Outcome> {
    let index = p.vcpu;
    let stats = &mut *p.stats;
    let (pio, mmio) = (p.pio, p.mmio);
    match exit {
        VcpuExit::IoIn(port, data) => {
            stats.io_in += 1;
            pio.read(port, data);
            None
        }
        VcpuExit::IoOut(port, data) => {
            stats.io_out += 1;
            match pio.write(port, data) {
                DeviceAction::None => None,
                DeviceAction::Exit(VmExit::Reset) => Some(Outcome::Reset),
                DeviceAction::Exit(VmExit::PowerOff) => Some(Outcome::PowerOff),
                DeviceAction::Exit(VmExit::DebugExit(value)) => Some(Outcome::DebugExit { value }),
            }
        }
        VcpuExit::MmioRead(addr, data) => {
            stats.mmio += 1;
            mmio.read(addr, data);
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            stats.mmio += 1;
            mmio.write(addr, data);
            None
        }
        VcpuExit::X86Rdmsr(exit) => {
            stats.msr_read += 1;
            match p.pmu.as_deref_mut().and_then(|pmu| pmu.rdmsr(exit.index)) {
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
            let ok = p
                .pmu
                .as_deref_mut()
                .is_some_and(|pmu| pmu.wrmsr(exit.index, exit.data));
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
    use kvm_ioctls::{MsrExitReason, ReadMsrExit, WriteMsrExit};

    /// A vPMU that answers one MSR and accepts writes of even values.
    struct FakePmu;

    impl VcpuPmu for FakePmu {
        fn attach_thread(&mut self, _tid: libc::pid_t) -> std::io::Result<()> {
            Ok(())
        }
        fn detach_thread(&mut self) {}
        fn before_run(&mut self) {}
        fn after_run(&mut self, _ran_tsc: u64, _kicked: bool) -> bool {
            false
        }
        fn rdmsr(&mut self, msr: u32) -> Option<u64> {
            (msr == 0xc1).then_some(0x1234)
        }
        fn wrmsr(&mut self, _msr: u32, value: u64) -> bool {
            value.is_multiple_of(2)
        }
        fn masks_lvtpc_on_pmi(&self) -> bool {
            false
        }
        fn summary(&self) -> crate::pmu::PmuSummary {
            unreachable!("not used by handle_exit")
        }
    }

    fn buses() -> (PioBus, MmioBus) {
        let mut pio = PioBus::new();
        pio.insert(
            devices::DEBUG_EXIT_PORT,
            devices::DEBUG_EXIT_LEN,
            Arc::new(Mutex::new(devices::DebugExit::new())),
        )
        .expect("debug-exit");
        pio.insert(
            devices::I8042_BASE,
            devices::I8042_LEN,
            Arc::new(Mutex::new(devices::I8042::new())),
        )
        .expect("i8042");
        (pio, MmioBus::new())
    }

    /// Runs `exit` through `handle_exit` on vCPU 2, with or without a vPMU.
    fn handle(exit: VcpuExit<'_>, with_pmu: bool, stats: &mut VcpuStats) -> Option<Outcome> {
        let (pio, mmio) = buses();
        let mut fake = FakePmu;
        let mut p = Peripherals {
            vcpu: 2,
            pio: &pio,
            mmio: &mmio,
            pmu: with_pmu.then_some(&mut fake as &mut dyn VcpuPmu),
            stats,
        };
        handle_exit(exit, &mut p)
    }

    #[test]
    fn handle_exit_port_io() {
        let mut st = VcpuStats::default();
        // Debug-exit: the guest's value ends the VM.
        let o = handle(VcpuExit::IoOut(0xf4, &[0x2a]), false, &mut st);
        assert_eq!(o, Some(Outcome::DebugExit { value: 0x2a }));
        // The i8042 reset command.
        let o = handle(VcpuExit::IoOut(0x64, &[0xfe]), false, &mut st);
        assert_eq!(o, Some(Outcome::Reset));
        // A stray port reads all-ones and the VM goes on.
        let mut data = [0u8; 2];
        assert_eq!(
            handle(VcpuExit::IoIn(0x1234, &mut data), false, &mut st),
            None
        );
        assert_eq!(data, [0xff, 0xff]);
        assert_eq!(handle(VcpuExit::IoOut(0x1234, &[1]), false, &mut st), None);
        assert_eq!((st.io_in, st.io_out), (1, 3));
    }

    #[test]
    fn handle_exit_stray_mmio_reads_all_ones() {
        let mut st = VcpuStats::default();
        let mut data = [0u8; 4];
        assert_eq!(
            handle(VcpuExit::MmioRead(0xd000_0000, &mut data), false, &mut st),
            None
        );
        assert_eq!(data, [0xff; 4]);
        assert_eq!(
            handle(
                VcpuExit::MmioWrite(0xd000_0000, &[1, 2, 3, 4]),
                false,
                &mut st
            ),
            None
        );
        assert_eq!(st.mmio, 2);
    }

    #[test]
    fn handle_exit_msrs_go_to_the_vpmu_or_gp() {
        let mut st = VcpuStats::default();
        let (mut error, mut data) = (0u8, 0u64);
        fn rd<'a>(error: &'a mut u8, data: &'a mut u64) -> VcpuExit<'a> {
            VcpuExit::X86Rdmsr(ReadMsrExit {
                error,
                reason: MsrExitReason::Filter,
                index: 0xc1,
                data,
            })
        }
        // No vPMU in the VMM (`--pmu off`): every routed MSR #GPs.
        assert_eq!(handle(rd(&mut error, &mut data), false, &mut st), None);
        assert_eq!(error, 1);
        // The vPMU answers.
        assert_eq!(handle(rd(&mut error, &mut data), true, &mut st), None);
        assert_eq!((error, data), (0, 0x1234));
        for (value, want_error) in [(2u64, 0u8), (3, 1)] {
            let wr = VcpuExit::X86Wrmsr(WriteMsrExit {
                error: &mut error,
                reason: MsrExitReason::Filter,
                index: 0x186,
                data: value,
            });
            assert_eq!(handle(wr, true, &mut st), None);
            assert_eq!(error, want_error, "wrmsr {value}");
        }
        assert_eq!((st.msr_read, st.msr_write, st.msr_gp), (2, 2, 2));
    }

    #[test]
    fn handle_exit_endings() {
        let mut st = VcpuStats::default();
        let cases: Vec<(VcpuExit<'_>, Option<Outcome>)> = vec![
            (
                VcpuExit::Shutdown,
                Some(Outcome::TripleFault { vcpu: 2, rip: None }),
            ),
            (
                VcpuExit::FailEntry(0x21, 0),
                Some(Outcome::FailEntry {
                    vcpu: 2,
                    reason: 0x21,
                }),
            ),
            (
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[]),
                Some(Outcome::PowerOff),
            ),
            (
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[]),
                Some(Outcome::Reset),
            ),
            (
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_CRASH, &[]),
                Some(Outcome::Crash { vcpu: 2 }),
            ),
            (
                VcpuExit::InternalError,
                Some(Outcome::InternalError {
                    vcpu: 2,
                    suberror: 0,
                    data: Vec::new(),
                    rip: None,
                }),
            ),
            (VcpuExit::Hlt, None),
            (VcpuExit::IrqWindowOpen, None),
        ];
        for (exit, want) in cases {
            let name = format!("{exit:?}");
            assert_eq!(handle(exit, false, &mut st), want, "{name}");
        }
        // Anything unknown ends the VM with a VMM error naming the exit.
        let o = handle(VcpuExit::SystemEvent(0x99, &[]), false, &mut st);
        assert!(
            matches!(o, Some(Outcome::VmmError { vcpu: 2, .. })),
            "{o:?}"
        );
        let o = handle(VcpuExit::Debug(Default::default()), false, &mut st);
        assert!(
            matches!(&o, Some(Outcome::VmmError { detail, .. }) if detail.contains("Debug")),
            "{o:?}"
        );
    }

    #[test]
    fn exit_counts_name_every_kind_that_occurred() {
        let mut c = ExitCounts::default();
        assert_eq!(c.to_string(), "none");
        let (mut error, mut data, mut buf) = (0u8, 0u64, [0u8; 1]);
        let results: Vec<Result<VcpuExit<'_>, kvm_ioctls::Error>> = vec![
            Ok(VcpuExit::IoOut(0x3f8, b"x")),
            Ok(VcpuExit::IoOut(0x3f8, b"y")),
            Ok(VcpuExit::IoIn(0x3fd, &mut buf)),
            Ok(VcpuExit::X86Rdmsr(ReadMsrExit {
                error: &mut error,
                reason: MsrExitReason::Filter,
                index: 0xc1,
                data: &mut data,
            })),
            Ok(VcpuExit::Hlt),
            Ok(VcpuExit::Shutdown),
            Ok(VcpuExit::Debug(Default::default())),
            Err(kvm_ioctls::Error::new(libc::EINTR)),
            Err(kvm_ioctls::Error::new(libc::EAGAIN)),
            Err(kvm_ioctls::Error::new(libc::EFAULT)),
        ];
        for r in &results {
            c.add(ExitKind::of(r));
        }
        assert_eq!(c.total(), 10);
        assert_eq!(c.get(ExitKind::IoOut), 2);
        assert_eq!(
            c.to_string(),
            "io_in 1, io_out 2, rdmsr 1, hlt 1, shutdown 1, other 1, kicked 1, eagain 1, run_error 1"
        );
        // Names are distinct, and ALL lists every kind at its own index.
        for (i, k) in ExitKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "{k:?}");
            assert_eq!(
                ExitKind::ALL
                    .iter()
                    .filter(|o| o.name() == k.name())
                    .count(),
                1
            );
        }
    }

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
            progress: Vec::new(),
        });
        let s = shared.clone();
        let r = std::thread::spawn(move || {
            let _guard = kick::EndOnPanic {
                shared: &*s,
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
