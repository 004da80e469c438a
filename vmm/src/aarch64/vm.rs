//! The arm64 VM lifecycle: [`run`] turns a [`VmConfig`] into a KVM VM (memory at
//! `layout::DRAM_START`, vCPUs, GICv3, devices), boots it and collects how it ended.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_vcpu_init;
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use arch::aarch64::layout;

use super::{boot, gic, pmu, vcpu};
use crate::config::{Console, VmConfig};
use crate::error::{ConfigError, Error, Result};
use crate::outcome::Outcome;

pub use super::vcpu::VcpuStats;

/// What a finished run reports.
#[derive(Debug, serde::Serialize)]
pub struct RunReport {
    /// How the VM ended.
    pub outcome: Outcome,
    /// Per-vCPU exit statistics.
    pub vcpus: Vec<VcpuStats>,
    /// Per-vCPU vPMU audit (`--pmu emulated`: the programming read at exit, "sampled").
    pub pmu: Vec<pmu::SampledAudit>,
    /// The vPMU mode.
    pub pmu_mode: String,
    /// Nanoseconds from VMM start to vCPU 0's first KVM_RUN.
    pub start_to_first_entry_ns: u64,
    /// Wall time of the whole run.
    pub wall_ns: u64,
    /// Stray MMIO accesses (no device there).
    pub unhandled_mmio: u64,
    /// The virtio-blk disks.
    pub disks: Vec<crate::report::DiskReport>,
    /// Bytes of guest console output lost (the bounded console buffer was full, or
    /// stdout failed).
    pub console_lost_bytes: u64,
    /// End-of-run outputs that could not be written (disk syncs, the audit file).
    pub output_errors: Vec<String>,
}

impl RunReport {
    /// Statistics as text (for `--stats`).
    pub fn stats_text(&self) -> String {
        let mut s = format!(
            "vpmu-vmm: {} | {} | start to first guest entry {:.2} ms | wall {:.1} ms | stray MMIO accesses {}\n",
            self.pmu_mode,
            self.outcome,
            self.start_to_first_entry_ns as f64 / 1e6,
            self.wall_ns as f64 / 1e6,
            self.unhandled_mmio
        );
        for (i, v) in self.vcpus.iter().enumerate() {
            s.push_str(&format!(
                "vcpu{i}: exits {} (mmio {}, kicks {})\n",
                v.exits, v.mmio, v.interrupted
            ));
        }
        for a in &self.pmu {
            s.push_str(&format!("{a}\n"));
        }
        for (i, d) in self.disks.iter().enumerate() {
            s.push_str(&format!(
                "disk{i}: {} sectors{} | reads {} ({} bytes), writes {} ({} bytes), flushes {}, errors {}\n",
                d.sectors,
                if d.read_only { " ro" } else { "" },
                d.reads, d.bytes_read, d.writes, d.bytes_written, d.flushes, d.errors
            ));
        }
        s.trim_end().to_string()
    }
}

/// Host report for `vpmu-vmm probe` and `--pmu auto`.
pub fn probe_host() -> Result<vpmu::discovery::HostPmu> {
    let host = vpmu::discovery::HostPmu::probe_system();
    if let Some(e) = &host.kvm_error {
        return Err(Error::HostProbe(e.clone()));
    }
    Ok(host)
}

/// The UART's output. Stdio goes through [`crate::console::ConsoleOut`] (as on x86): a
/// bounded buffer and a writer thread, so a vCPU never blocks on a stdout nobody reads.
fn console_writer(
    console: &Console,
) -> Result<(Box<dyn Write + Send>, Option<crate::console::ConsoleOut>)> {
    Ok(match console {
        Console::Stdio => {
            let out = crate::console::ConsoleOut::spawn(1, crate::console::CONSOLE_BUFFER, false)
                .map_err(|source| Error::Io {
                op: "spawning the console output thread".into(),
                source,
            })?;
            (Box::new(out.clone()), Some(out))
        }
        Console::Capture(buf) => (Box::new(devices::CaptureWriter(buf.clone())), None),
        Console::Null => (Box::new(std::io::sink()), None),
    })
}

fn create_memory(vm: &VmFd, size: u64) -> Result<GuestMemoryMmap> {
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(layout::DRAM_START), size as usize)])
            .map_err(Error::Memory)?;
    crate::memory::register_memory(vm, &mem)?;
    Ok(mem)
}

fn eventfd(flags: i32) -> Result<EventFd> {
    EventFd::new(flags | libc::EFD_CLOEXEC).map_err(|source| Error::Io {
        op: "eventfd".into(),
        source,
    })
}

/// Builds the VM described by `config`, runs it to the end, and reports.
pub fn run(config: VmConfig) -> Result<RunReport> {
    let started = Instant::now();
    config.validate()?;
    if config.memory > layout::DRAM_MAX_SIZE {
        return Err(ConfigError::Memory(config.memory).into());
    }
    // The mode and the policy are checked before anything is built.
    let pmu_prep = pmu::prepare(&config.pmu)?;
    if config.disks.len() > layout::MAX_VIRTIO {
        return Err(ConfigError::Disk(format!("at most {} disks", layout::MAX_VIRTIO)).into());
    }
    crate::kick::install_handler().map_err(|source| Error::Io {
        op: "installing the vCPU kick signal handler".into(),
        source,
    })?;
    let disks = config
        .disks
        .iter()
        .map(|d| devices::virtio::Block::open(&d.path, d.read_only))
        .collect::<std::result::Result<Vec<_>, _>>()?;

    let kvm = Kvm::new().map_err(Error::KvmOpen)?;
    if !kvm.check_extension(Cap::ArmPsci02) {
        return Err(Error::MissingCap("KVM_CAP_ARM_PSCI_0_2"));
    }
    let vm = kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?;

    // Memory, then the kernel: bad images are reported before any vCPU exists.
    let mem = create_memory(&vm, config.memory)?;
    let loaded = boot::load_kernel(&mem, &config)?;
    let initrd = boot::load_initrd(&mem, &config, &loaded)?;

    // vCPUs (all of them before the vGIC), then the vGIC.
    let mut preferred = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut preferred)
        .map_err(Error::kvm("KVM_ARM_PREFERRED_TARGET"))?;
    let mut fds = Vec::with_capacity(usize::from(config.cpus));
    let mut mpidrs = Vec::with_capacity(usize::from(config.cpus));
    for i in 0..config.cpus {
        let fd = vcpu::create(&vm, i, &preferred, pmu_prep.is_some())?;
        mpidrs.push(vcpu::mpidr(&fd)?);
        fds.push(fd);
    }
    let pmu_plan = match (&pmu_prep, fds.first()) {
        (Some((policy, source, host)), Some(vcpu0)) => {
            Some(pmu::plan(policy, source.clone(), host, vcpu0)?)
        }
        _ => None,
    };
    let _gic = gic::create(&vm, u32::from(config.cpus))?;
    if let Some(plan) = &pmu_plan {
        pmu::setup(&fds, plan)?;
    }

    // Devices: interrupts through irqfds, GSI n = SPI n (INTID 32 + n).
    let serial_evt = eventfd(libc::EFD_NONBLOCK)?;
    vm.register_irqfd(&serial_evt, layout::SERIAL_SPI)
        .map_err(Error::kvm("KVM_IRQFD (serial)"))?;
    let (console, console_out) = console_writer(&config.console)?;
    let serial = Arc::new(Mutex::new(devices::Serial::with_eventfd(
        serial_evt, console,
    )?));
    let mut mmio = devices::MmioBus::new();
    let mut virtio = Vec::with_capacity(disks.len());
    let mut disk_devs = Vec::with_capacity(disks.len());
    for (i, blk) in disks.into_iter().enumerate() {
        let (base, spi) = layout::virtio_mmio(i).ok_or(Error::NoDiskWindow(i))?;
        let evt = eventfd(libc::EFD_NONBLOCK)?;
        vm.register_irqfd(&evt, spi)
            .map_err(Error::kvm("KVM_IRQFD (virtio)"))?;
        let dev = Arc::new(Mutex::new(devices::virtio::MmioTransport::new(
            blk,
            mem.clone(),
            evt,
        )));
        mmio.insert(base, devices::virtio::MMIO_REGION_SIZE, dev.clone())?;
        virtio.push((base, spi));
        disk_devs.push(dev);
    }

    let fdt = boot::write_fdt(&mem, &config, mpidrs, initrd, virtio, pmu_plan.is_some())?;
    for (i, fd) in fds.iter().enumerate() {
        vcpu::set_boot_regs(fd, i as u8, loaded.entry, fdt)?;
    }

    let shared = Arc::new(vcpu::Shared {
        serial: serial.clone(),
        debug_exit: Mutex::new(devices::DebugExit::new()),
        mmio,
        stopping: AtomicBool::new(false),
        outcome: Mutex::new(None),
        tids: (0..config.cpus).map(|_| AtomicI32::new(0)).collect(),
        stop_evt: eventfd(libc::EFD_NONBLOCK)?,
        started,
        first_entry_ns: AtomicU64::new(0),
        progress: (0..config.cpus).map(|_| Default::default()).collect(),
    });
    let mut handles = Vec::with_capacity(fds.len());
    for (i, fd) in fds.into_iter().enumerate() {
        let sh = shared.clone();
        let pin = pmu_plan.as_ref().and_then(pmu::Plan::pin_cpus);
        let h = std::thread::Builder::new()
            .name(format!("vcpu{i}"))
            .spawn(move || {
                if let Some(cpus) = pin {
                    if let Err(e) = pmu::pin_current_thread(&cpus) {
                        eprintln!("vpmu-vmm: vCPU {i}: cannot pin to the PMU's CPUs: {e}");
                    }
                }
                vcpu::run(i as u8, fd, sh)
            })
            .map_err(|source| Error::Io {
                op: "spawning a vCPU thread".into(),
                source,
            })?;
        handles.push(h);
    }

    // Wait for the end; forward stdin to the UART when it is a terminal (as on x86).
    let stdin_is_tty = matches!(config.console, Console::Stdio)
        // SAFETY: isatty on fd 0 has no preconditions.
        && unsafe { libc::isatty(0) } == 1;
    let raw = stdin_is_tty.then(crate::terminal::RawMode::enter).flatten();
    let watchdog = config
        .watchdog
        .zip(console_out.clone())
        .map(|(after, out)| {
            (
                crate::watchdog::Watchdog::new(after, out, stdin_is_tty),
                &shared.progress[..],
            )
        });
    crate::console::wait_for_stop(&shared, stdin_is_tty.then(|| serial.clone()), watchdog);
    drop(raw);
    let mut vcpus = Vec::new();
    let mut audits = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        // Keep kicking until the thread leaves KVM_RUN (a kick can race with entry).
        while !h.is_finished() {
            let tid = shared
                .tids
                .get(i)
                .map(|t| t.load(Ordering::SeqCst))
                .unwrap_or(0);
            if tid > 0 {
                let _ = crate::kick::kick(tid);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        match h.join() {
            Ok((stats, fd)) => {
                vcpus.push(stats);
                if let Some(plan) = &pmu_plan {
                    audits.push((i, pmu::audit(&fd, plan)));
                }
            }
            Err(_) => shared.end(Outcome::VmmError {
                vcpu: i as u8,
                detail: "vCPU thread panicked".into(),
            }),
        }
    }
    let outcome = shared
        .outcome
        .lock()
        .ok()
        .and_then(|o| o.clone())
        .unwrap_or(Outcome::VmmError {
            vcpu: 0,
            detail: "VM stopped without an outcome".into(),
        });
    // The end-of-run outputs: each failure is reported, none loses the others or the
    // guest's outcome (as on x86).
    let mut output_errors = Vec::new();
    for (i, d) in disk_devs.iter().enumerate() {
        let t = d.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = t.device().sync() {
            output_errors.push(format!("fdatasync of disk {i}: {e}"));
        }
    }
    let console_lost_bytes = console_out
        .as_ref()
        .map_or(0, |c| c.finish(Duration::from_secs(1)));
    let sampled: Vec<(usize, Vec<pmu::Programmed>)> = audits
        .iter()
        .filter_map(|(i, a)| a.as_ref().ok().map(|v| (*i, v.clone())))
        .collect();
    if let Some(path) = &config.pmu.audit {
        if pmu_plan.is_some() {
            if let Err(e) = pmu::write_audit(path, &sampled) {
                output_errors.push(e.to_string());
            }
        }
    }
    Ok(RunReport {
        outcome,
        vcpus,
        pmu: audits
            .into_iter()
            .map(|(i, a)| pmu::SampledAudit::new(i, a))
            .collect(),
        pmu_mode: pmu_plan.as_ref().map_or_else(
            || "pmu off (arm64: no PMUv3 for the guest)".to_string(),
            pmu::Plan::describe,
        ),
        start_to_first_entry_ns: shared.first_entry_ns.load(Ordering::SeqCst),
        wall_ns: crate::nanos(started.elapsed()),
        unhandled_mmio: {
            let st = shared.mmio.stats();
            st.unknown_reads + st.unknown_writes
        },
        disks: disk_devs
            .iter()
            .map(|d| {
                crate::report::DiskReport::of(d.lock().unwrap_or_else(|e| e.into_inner()).device())
            })
            .collect(),
        console_lost_bytes,
        output_errors,
    })
}
