//! VM lifecycle: turn a [`VmConfig`] into live KVM objects ([`Vm::build`]), start the
//! vCPUs ([`Vm::start`]), wait for the end and collect the report ([`RunningVm::wait`]).
//!
//! Read [`Vm::build`] top to bottom: it is the whole start-up sequence, one step per
//! function (`create_vm`, `plan_pmu`, `load_guest`, `add_legacy_devices`, `add_disks`,
//! `create_vcpus`), each timed into [`StartupPhases`]. The MSR filter the vPMU plan needs
//! and the guest memory's KVM registration run on helper threads while the kernel is
//! loaded, the vCPUs are created and their threads spawned (KVM_X86_SET_MSR_FILTER and
//! KVM_SET_USER_MEMORY_REGION wait for an SRCU grace period); [`Vm::start`] joins them
//! before it lets the vCPU threads pass their start gate, so no guest instruction runs
//! before every routed MSR is routed and all memory is registered.

use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, CpuId, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::config::{Console, DiskConfig, VmConfig};
use crate::error::{BootError, Error, LoadError, PmuConfigError, Result};
use crate::loader::{self, Boot, Loaded};
use crate::outcome::Outcome;
use crate::pmu::setup::{self, MsrFilter, PmuPlan, PmuSetup};
use crate::pmu::{PmuSummary, VcpuPmu};
use crate::vcpu::{Shared, Vcpu, VcpuStats};
use vpmu::discovery::PmuMode;

/// GSI of the COM1 serial port.
const SERIAL_GSI: u32 = devices::SERIAL_IRQ;

/// A vCPU thread; it yields the vCPU's statistics and vPMU backend.
type VcpuThread = JoinHandle<(VcpuStats, Option<Box<dyn VcpuPmu>>)>;

/// A virtio-blk disk on its virtio-mmio transport.
type DiskDevice = Arc<Mutex<devices::virtio::MmioTransport<devices::virtio::Block>>>;

/// What a finished run reports. Plain data: the CLI formats it for humans, `--report`
/// writes it as JSON, tests and the bench read the fields.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    /// How the VM ended.
    pub outcome: Outcome,
    /// Per-vCPU exit statistics.
    pub vcpus: Vec<VcpuStats>,
    /// Per-vCPU summaries of the vPMU in the VMM (userspace vPMU or in-kernel audit;
    /// empty in other modes).
    pub pmu: Vec<PmuSummary>,
    /// The vPMU mode and what the guest was given.
    pub pmu_setup: PmuSetup,
    /// Nanoseconds from VMM start to vCPU 0's first KVM_RUN.
    pub start_to_first_entry_ns: u64,
    /// Where the start-up time went.
    pub startup: StartupPhases,
    /// Wall time of the whole run.
    pub wall_ns: u64,
    /// Stray port accesses (no device there).
    pub unhandled_pio: u64,
    /// The virtio-blk disks and the requests they served.
    pub disks: Vec<DiskReport>,
    /// Bytes of guest console output that never reached stdout (it was not drained: the
    /// bounded console buffer was full, stdout failed, or the 1 s end-of-run flush ran
    /// out).
    pub console_lost_bytes: u64,
    /// End-of-run outputs that could not be written (the audit log, a disk's fdatasync);
    /// they do not change the exit status, which stays the guest's.
    pub output_errors: Vec<String>,
    /// The guest was a Linux kernel (bzImage or PVH vmlinux), not a freestanding guest.
    pub linux_guest: bool,
}

pub use crate::report::DiskReport;

/// Where the time from VMM start to the first guest instruction went, in nanoseconds.
/// Steps run in this order on the main thread, except `memory_register_ns` and
/// `msr_filter_ns`, which run side by side on helper threads from `memory_ns` on,
/// overlapping the later steps (the vCPU threads are spawned before they are joined and
/// wait at a gate); `helper_wait_ns` is how long the main thread still had to wait for
/// them after spawning the vCPU threads.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StartupPhases {
    /// Config checks, signal handler, opening the disk images.
    pub prepare_ns: u64,
    /// Opening /dev/kvm.
    pub open_kvm_ns: u64,
    /// KVM_GET_SUPPORTED_CPUID (once per run, shared by the probe, the plan, every vCPU).
    pub supported_cpuid_ns: u64,
    /// KVM_CREATE_VM and KVM_SET_TSS_ADDR.
    pub create_vm_ns: u64,
    /// KVM_CREATE_IRQCHIP and KVM_CREATE_PIT2.
    pub irqchip_ns: u64,
    /// The vPMU plan (host probe, policy, KVM caps; not the MSR filter).
    pub pmu_plan_ns: u64,
    /// Guest memory: the host mapping.
    pub memory_ns: u64,
    /// KVM_SET_USER_MEMORY_REGION on its helper thread.
    pub memory_register_ns: u64,
    /// Kernel, initrd and boot structures.
    pub load_kernel_ns: u64,
    /// Legacy devices and disks on their buses, irqfds.
    pub devices_ns: u64,
    /// Creating and setting up every vCPU.
    pub vcpu_create_ns: u64,
    /// KVM_X86_SET_MSR_FILTER on its helper thread (0: no filter).
    pub msr_filter_ns: u64,
    /// vPMU backends and spawning the vCPU threads (which then wait at the start gate).
    pub vcpu_spawn_ns: u64,
    /// Time the main thread then waited for the helper threads before opening the gate.
    pub helper_wait_ns: u64,
    /// From the gate opening to vCPU 0's first KVM_RUN (thread wake-up).
    pub gate_to_first_run_ns: u64,
    /// VMM start to vCPU 0's first KVM_RUN (the sum of the above, less the overlap).
    pub first_kvm_run_ns: u64,
}

/// Nanoseconds since `*last`, and moves `*last` to now.
fn lap(last: &mut Instant) -> u64 {
    let now = Instant::now();
    let ns = crate::nanos(now.duration_since(*last));
    *last = now;
    ns
}

/// Host report for `vpmu-vmm probe` and `--pmu auto`.
pub fn probe_host() -> Result<vpmu::discovery::HostPmu> {
    let host = vpmu::discovery::HostPmu::probe_system();
    if let Some(e) = &host.kvm_error {
        return Err(Error::HostProbe(e.clone()));
    }
    Ok(host)
}

/// Builds the VM described by `config`, runs it to the end, and reports.
pub fn run(config: VmConfig) -> Result<RunReport> {
    Vm::build(config)?.start()?.wait()
}

/// A VM ready to run: KVM objects, guest memory holding the guest and its boot
/// structures, devices on their buses, vCPUs set up but not yet running.
pub struct Vm {
    config: VmConfig,
    started: Instant,
    phases: StartupPhases,
    vm: Arc<VmFd>,
    /// This run's one KVM_GET_SUPPORTED_CPUID.
    supported_cpuid: CpuId,
    plan: PmuPlan,
    /// The helper threads (memory registration, MSR filter); each yields its duration.
    helpers: Vec<(Helper, JoinHandle<Result<u64>>)>,
    mem: GuestMemoryMmap,
    boot: Boot,
    serial: Option<Arc<Mutex<devices::Serial>>>,
    /// The stdout writer thread's buffer (`Console::Stdio`).
    console_out: Option<crate::console::ConsoleOut>,
    pio: devices::PioBus,
    mmio: devices::MmioBus,
    disks: Vec<DiskDevice>,
    vcpu_fds: Vec<VcpuFd>,
}

impl Vm {
    /// Builds everything, in start-up order; each step is timed into [`StartupPhases`].
    pub fn build(config: VmConfig) -> Result<Vm> {
        let started = Instant::now();
        let mut t = started;
        config.validate()?;
        crate::kick::install_handler().map_err(|source| Error::Io {
            op: "installing the vCPU kick signal handler".into(),
            source,
        })?;
        // Disk images first: a missing file is a configuration error, reported before KVM.
        let images = config
            .disks
            .iter()
            .map(|d| devices::virtio::Block::open(&d.path, d.read_only))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut phases = StartupPhases {
            prepare_ns: lap(&mut t),
            ..Default::default()
        };
        let kvm = Kvm::new().map_err(Error::KvmOpen)?;
        phases.open_kvm_ns = lap(&mut t);
        let supported_cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
        phases.supported_cpuid_ns = lap(&mut t);
        let vm = create_vm(&kvm, &mut phases, &mut t)?;
        let mut plan = setup::plan(&kvm, &vm, &config, &supported_cpuid)?;
        if config.pmu.auto {
            match plan.mode() {
                PmuMode::Off => eprintln!(
                    "vpmu-vmm: --pmu auto: no vPMU mode is available on this host; running with --pmu off"
                ),
                mode => eprintln!("vpmu-vmm: --pmu auto chose {mode}"),
            }
        }
        log::info!("vPMU plan: {plan}");
        phases.pmu_plan_ns = lap(&mut t);
        let mem = create_memory(config.memory)?;
        phases.memory_ns = lap(&mut t);
        let helpers = spawn_helpers(&vm, &mem, plan.take_msr_filter())?;
        let boot = load_guest(&mem, &config)?;
        phases.load_kernel_ns = lap(&mut t);
        let mut this = Vm {
            config,
            started,
            phases,
            vm,
            supported_cpuid,
            plan,
            helpers,
            mem,
            boot,
            serial: None,
            console_out: None,
            pio: devices::PioBus::new(),
            mmio: devices::MmioBus::new(),
            disks: Vec::new(),
            vcpu_fds: Vec::new(),
        };
        this.add_legacy_devices()?;
        this.add_disks(images)?;
        this.phases.devices_ns = lap(&mut t);
        this.create_vcpus()?;
        this.phases.vcpu_create_ns = lap(&mut t);
        Ok(this)
    }

    /// COM1 (IRQ 4 through an irqfd), i8042, CMOS RTC, ACPI PM registers, debug-exit.
    fn add_legacy_devices(&mut self) -> Result<()> {
        let serial_evt = eventfd()?;
        let serial_irq = serial_evt.try_clone().map_err(|source| Error::Io {
            op: "eventfd".into(),
            source,
        })?;
        self.vm
            .register_irqfd(&serial_evt, SERIAL_GSI)
            .map_err(Error::kvm("KVM_IRQFD"))?;
        let out: Box<dyn Write + Send> = match &self.config.console {
            Console::Stdio => {
                let out = crate::console::ConsoleOut::spawn(
                    1,
                    crate::console::CONSOLE_BUFFER,
                    self.config.seccomp,
                )
                .map_err(|source| Error::Io {
                    op: "spawning the console output thread".into(),
                    source,
                })?;
                self.console_out = Some(out.clone());
                Box::new(out)
            }
            Console::Capture(buf) => Box::new(CaptureWriter(buf.clone())),
            Console::Null => Box::new(std::io::sink()),
        };
        let serial = Arc::new(Mutex::new(devices::Serial::with_eventfd(serial_irq, out)?));
        let pio = &mut self.pio;
        pio.insert(
            devices::SERIAL_PORT_BASE,
            devices::SERIAL_PORT_LEN,
            serial.clone(),
        )?;
        pio.insert(
            devices::I8042_BASE,
            devices::I8042_LEN,
            Arc::new(Mutex::new(devices::I8042::new())),
        )?;
        let (memory, low_mem) = (
            self.config.memory,
            arch::x86_64::layout::low_mem_end(self.config.memory),
        );
        let cmos = devices::Cmos::new(low_mem, memory.saturating_sub(low_mem));
        pio.insert(
            devices::CMOS_BASE,
            devices::CMOS_LEN,
            Arc::new(Mutex::new(cmos)),
        )?;
        // The ACPI PM1a registers the FADT (arch::x86_64::acpi) points at.
        const _: () = assert!(devices::ACPI_PM_BASE == arch::x86_64::acpi::PM1A_EVT_BLK);
        const _: () = assert!(devices::ACPI_PM_BASE + 4 == arch::x86_64::acpi::PM1A_CNT_BLK);
        // The soft-off SLP_TYP the DSDT's \_S5 announces is the one the device decodes.
        const _: () = assert!(devices::acpi_pm::SLP_TYP_S5 == arch::x86_64::acpi::SLP_TYP_S5);
        pio.insert(
            devices::ACPI_PM_BASE,
            devices::ACPI_PM_LEN,
            Arc::new(Mutex::new(devices::AcpiPm::new())),
        )?;
        pio.insert(
            devices::DEBUG_EXIT_PORT,
            devices::DEBUG_EXIT_LEN,
            Arc::new(Mutex::new(devices::DebugExit::new())),
        )?;
        self.serial = Some(serial);
        Ok(())
    }

    /// virtio-mmio disks: disk i at `arch::x86_64::layout::VIRTIO_MMIO_BASE` + i * 4 KiB,
    /// interrupt on `arch::x86_64::layout::VIRTIO_MMIO_GSIS[i]` through an irqfd (edge)
    /// ([`DiskConfig::mmio`]). Linux finds them in the ACPI DSDT (`acpi_config`), or, with
    /// `acpi=off`, through the `virtio_mmio.device=` parameters `VmConfig::linux_cmdline`
    /// adds.
    fn add_disks(&mut self, images: Vec<devices::virtio::Block>) -> Result<()> {
        for (i, blk) in images.into_iter().enumerate() {
            // `VmConfig::validate` allows at most MAX_DISKS disks, each with a slot.
            let (base, gsi) = DiskConfig::mmio(i).ok_or(Error::NoDiskWindow(i))?;
            let evt = eventfd()?;
            self.vm
                .register_irqfd(&evt, gsi)
                .map_err(Error::kvm("KVM_IRQFD"))?;
            let dev = Arc::new(Mutex::new(devices::virtio::MmioTransport::new(
                blk,
                self.mem.clone(),
                evt,
            )));
            self.mmio
                .insert(base, devices::virtio::MMIO_REGION_SIZE, dev.clone())?;
            self.disks.push(dev);
        }
        Ok(())
    }

    /// Creates and sets up every vCPU (CPUID from the shared KVM_GET_SUPPORTED_CPUID).
    fn create_vcpus(&mut self) -> Result<()> {
        for i in 0..self.config.cpus {
            let fd = setup_vcpu(
                &self.vm,
                i,
                &self.config,
                self.boot,
                &self.plan,
                &self.supported_cpuid,
            )?;
            self.vcpu_fds.push(fd);
        }
        Ok(())
    }

    /// Gives each vCPU its vPMU backend and its thread, which waits at a start gate;
    /// then waits for the MSR filter (every routed MSR is routed from here on) and opens
    /// the gate. The filter's SRCU wait thus overlaps with thread creation, and still no
    /// vCPU runs before it is installed. If anything fails, the gate sends the threads
    /// home without a KVM_RUN and the error is returned.
    pub fn start(mut self) -> Result<RunningVm> {
        let mut t = Instant::now();
        let shared = Arc::new(Shared {
            pio: std::mem::take(&mut self.pio),
            mmio: std::mem::take(&mut self.mmio),
            vm: self.vm.clone(),
            stopping: AtomicBool::new(false),
            outcome: Mutex::new(None),
            tids: (0..self.config.cpus).map(|_| AtomicI32::new(0)).collect(),
            stop_evt: eventfd()?,
            started: self.started,
            first_entry_ns: AtomicU64::new(0),
            progress: (0..self.config.cpus).map(|_| Default::default()).collect(),
        });
        let gate = Arc::new(StartGate::default());
        let (done_tx, done_rx) = mpsc::channel();
        let mut handles = Vec::with_capacity(self.vcpu_fds.len());
        for (i, fd) in std::mem::take(&mut self.vcpu_fds).into_iter().enumerate() {
            let spawned = self
                .vcpu(u8::try_from(i).unwrap_or(u8::MAX), fd, &shared)
                .and_then(|v| spawn_vcpu(v, done_tx.clone(), gate.clone(), self.config.seccomp));
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => return Err(gate.abort(handles, e)),
            }
        }
        self.phases.vcpu_spawn_ns = lap(&mut t);
        let filter = self.join_helpers();
        self.phases.helper_wait_ns = lap(&mut t);
        if let Err(e) = filter {
            return Err(gate.abort(handles, e));
        }
        gate.set(true);
        Ok(RunningVm {
            vm: self,
            shared,
            handles,
            done: done_rx,
        })
    }

    /// Joins the helper threads; records how long each took. Every one is joined, even
    /// after a failure (the memory helper uses the guest memory mapping).
    fn join_helpers(&mut self) -> Result<()> {
        let mut result = Ok(());
        for (what, h) in std::mem::take(&mut self.helpers) {
            let joined = h.join().unwrap_or_else(|_| {
                Err(Error::Io {
                    op: format!("{what:?} on a helper thread"),
                    source: std::io::Error::other("the helper thread panicked"),
                })
            });
            match (joined, what) {
                (Ok(ns), Helper::RegisterMemory) => self.phases.memory_register_ns = ns,
                (Ok(ns), Helper::MsrFilter) => self.phases.msr_filter_ns = ns,
                (Err(e), _) => result = result.and(Err(e)),
            }
        }
        result
    }

    /// vCPU `index` with its vPMU backend.
    fn vcpu(&self, index: u8, fd: VcpuFd, shared: &Arc<Shared>) -> Result<Vcpu> {
        let tsc_khz = fd.get_tsc_khz().map(u64::from).unwrap_or(0);
        if tsc_khz == 0 && self.plan.mode() == PmuMode::Userspace {
            return Err(PmuConfigError::NoTscFrequency.into());
        }
        let pmu = self.plan.vcpu_backend(index, fd.as_raw_fd(), tsc_khz)?;
        Ok(Vcpu {
            index,
            fd,
            shared: shared.clone(),
            pmu,
            stats: VcpuStats::default(),
        })
    }
}

impl Drop for Vm {
    /// A VM dropped without [`RunningVm::wait`] (a failed build or start) lets its console
    /// writer thread end instead of waiting for output forever.
    fn drop(&mut self) {
        if let Some(c) = &self.console_out {
            c.close();
        }
    }
}

/// A VM whose vCPU threads run.
pub struct RunningVm {
    vm: Vm,
    shared: Arc<Shared>,
    handles: Vec<VcpuThread>,
    /// Each vCPU thread sends its index here as it ends (panics included).
    done: mpsc::Receiver<usize>,
}

impl RunningVm {
    /// Waits for the VM to stop (forwarding stdin to the serial port when it is a
    /// terminal), stops every vCPU, and reports.
    pub fn wait(self) -> Result<RunReport> {
        let stdin_is_tty = matches!(self.vm.config.console, Console::Stdio)
            // SAFETY: isatty on fd 0 has no preconditions.
            && unsafe { libc::isatty(0) } == 1;
        // Raw mode while the guest owns the terminal (restored when `raw` drops, by the
        // panic hook, or by a second stop signal: crate::terminal).
        let raw = stdin_is_tty.then(crate::terminal::RawMode::enter).flatten();
        // The main thread's seccomp filter, now that everything is built and running.
        if self.vm.config.seccomp {
            if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Main) {
                self.shared.end(Outcome::VmmError {
                    vcpu: 0,
                    detail: e.to_string(),
                });
            }
        }
        let watchdog = self
            .vm
            .config
            .watchdog
            .zip(self.vm.console_out.clone())
            .map(|(after, out)| {
                (
                    crate::watchdog::Watchdog::new(after, out, stdin_is_tty),
                    &self.shared.progress[..],
                )
            });
        crate::console::wait_for_stop(
            &self.shared,
            self.vm.serial.clone().filter(|_| stdin_is_tty),
            watchdog,
        );
        drop(raw);
        self.stop_vcpus();
        self.collect()
    }

    /// Kicks every vCPU out of KVM_RUN and waits until each thread has ended, woken by
    /// the threads themselves (no polling). A kick cannot be lost (see `crate::kick`),
    /// but the kicks are repeated every 100 ms while a thread is still running, as a
    /// safety net.
    fn stop_vcpus(&self) {
        let mut running = self.handles.len();
        while running > 0 {
            for t in &self.shared.tids {
                let tid = t.load(Ordering::SeqCst);
                if tid > 0 {
                    let _ = crate::kick::kick(tid);
                }
            }
            match self.done.recv_timeout(Duration::from_millis(100)) {
                Ok(_) => running -= 1,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            while self.done.try_recv().is_ok() {
                running = running.saturating_sub(1);
            }
        }
    }

    /// Joins the (ended) vCPU threads and builds the report.
    fn collect(self) -> Result<RunReport> {
        let mut vcpus = Vec::new();
        let mut pmu = Vec::new();
        for (i, h) in self.handles.into_iter().enumerate() {
            match h.join() {
                Ok((stats, backend)) => {
                    vcpus.push(stats);
                    pmu.extend(backend.map(|b| b.summary()));
                }
                Err(_) => self.shared.end(Outcome::VmmError {
                    vcpu: u8::try_from(i).unwrap_or(u8::MAX),
                    detail: "vCPU thread panicked".into(),
                }),
            }
        }
        let vm = self.vm;
        // The end-of-run outputs: each failure is reported, none loses the others or the
        // guest's outcome.
        let mut output_errors = Vec::new();
        if let Err(e) = vm.plan.finish() {
            output_errors.push(e.to_string());
        }
        for (i, d) in vm.disks.iter().enumerate() {
            let t = d.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = t.device().sync() {
                output_errors.push(format!("fdatasync of disk {i}: {e}"));
            }
        }
        let console_lost_bytes = vm
            .console_out
            .as_ref()
            .map_or(0, |c| c.finish(Duration::from_secs(1)));
        let outcome = self
            .shared
            .outcome
            .lock()
            .ok()
            .and_then(|o| o.clone())
            .unwrap_or(Outcome::VmmError {
                vcpu: 0,
                detail: "VM stopped without an outcome".into(),
            });
        log::debug!(
            "VM ended: {outcome} (wall {:.1} ms)",
            vm.started.elapsed().as_secs_f64() * 1e3
        );
        let first = self.shared.first_entry_ns.load(Ordering::SeqCst);
        let mut startup = vm.phases.clone();
        startup.first_kvm_run_ns = first;
        startup.gate_to_first_run_ns = first.saturating_sub(
            startup.prepare_ns
                + startup.open_kvm_ns
                + startup.supported_cpuid_ns
                + startup.create_vm_ns
                + startup.irqchip_ns
                + startup.pmu_plan_ns
                + startup.memory_ns
                + startup.load_kernel_ns
                + startup.devices_ns
                + startup.vcpu_create_ns
                + startup.vcpu_spawn_ns
                + startup.helper_wait_ns,
        );
        let st = self.shared.pio.stats();
        Ok(RunReport {
            outcome,
            vcpus,
            pmu,
            pmu_setup: vm.plan.setup(),
            start_to_first_entry_ns: first,
            startup,
            wall_ns: crate::nanos(vm.started.elapsed()),
            unhandled_pio: st.unknown_reads + st.unknown_writes,
            disks: vm.disks.iter().map(disk_report).collect(),
            console_lost_bytes,
            output_errors,
            linux_guest: vm.boot.is_linux(),
        })
    }
}

fn disk_report(d: &DiskDevice) -> DiskReport {
    DiskReport::of(d.lock().unwrap_or_else(|e| e.into_inner()).device())
}

/// Loads the kernel (and initrd) and writes the boot structures; returns how the vCPUs
/// enter the guest.
fn load_guest(mem: &GuestMemoryMmap, config: &VmConfig) -> Result<Boot> {
    let loaded = loader::load_kernel(mem, config)?;
    if loaded.boot.is_linux() {
        let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
        if let Some(why) = vpmu::discovery::linux_guests_blocker(pvm) {
            eprintln!("vpmu-vmm: warning: {why}");
        }
    }
    log::info!(
        "guest: {} ({}), {} vCPU(s), {} MiB, command line {:?}",
        config.kernel,
        match loaded.boot {
            Boot::Linux64 { .. } => "Linux bzImage, 64-bit boot protocol",
            Boot::Pvh { .. } => "Linux vmlinux, PVH boot",
            Boot::Freestanding { .. } => "freestanding ELF64",
        },
        config.cpus,
        config.memory >> 20,
        if loaded.boot.is_linux() {
            config.linux_cmdline()
        } else {
            config.cmdline.clone()
        }
    );
    let initrd = loader::load_initrd(mem, config, &loaded)?;
    if let (Some(path), Some((addr, size))) = (&config.initrd, initrd) {
        log::info!("initrd: {} ({size} bytes at {:#x})", path.display(), addr.0);
    }
    write_boot_structures(mem, config, &loaded, initrd).map_err(LoadError::from)?;
    Ok(loaded.boot)
}

/// KVM_CREATE_VM with the TSS, the in-kernel irqchip and the PIT.
fn create_vm(kvm: &Kvm, phases: &mut StartupPhases, t: &mut Instant) -> Result<Arc<VmFd>> {
    if !kvm.check_extension(Cap::Irqchip) {
        return Err(Error::MissingCap("KVM_CAP_IRQCHIP"));
    }
    let vm = Arc::new(kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?);
    vm.set_tss_address(usize::try_from(arch::x86_64::layout::KVM_TSS_ADDR).unwrap_or(usize::MAX))
        .map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
    phases.create_vm_ns = lap(t);
    vm.create_irq_chip()
        .map_err(Error::kvm("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(Error::kvm("KVM_CREATE_PIT2"))?;
    phases.irqchip_ns = lap(t);
    Ok(vm)
}

/// KVM_SET_USER_MEMORY_REGION and KVM_X86_SET_MSR_FILTER both wait for an SRCU grace
/// period: they run side by side (and share it) on helper threads, while the main thread
/// loads the guest and creates the vCPUs. [`Vm::start`] joins them.
fn spawn_helpers(
    vm: &Arc<VmFd>,
    mem: &GuestMemoryMmap,
    filter: Option<MsrFilter>,
) -> Result<Vec<(Helper, JoinHandle<Result<u64>>)>> {
    let (vm1, mem) = (vm.clone(), mem.clone());
    let mut helpers = vec![spawn_helper(Helper::RegisterMemory, move || {
        crate::memory::register_memory(&vm1, &mem)
    })?];
    if let Some(filter) = filter {
        let vm = vm.clone();
        helpers.push(spawn_helper(Helper::MsrFilter, move || {
            filter.install(&vm)
        })?);
    }
    Ok(helpers)
}

/// A start-up step that runs on a helper thread.
#[derive(Debug, Clone, Copy)]
enum Helper {
    /// KVM_SET_USER_MEMORY_REGION.
    RegisterMemory,
    /// KVM_X86_SET_MSR_FILTER.
    MsrFilter,
}

/// Runs `step` on a helper thread, which yields how long it took.
fn spawn_helper(
    what: Helper,
    step: impl FnOnce() -> Result<()> + Send + 'static,
) -> Result<(Helper, JoinHandle<Result<u64>>)> {
    let h = std::thread::Builder::new()
        .name(format!("{what:?}"))
        .spawn(move || {
            let t = Instant::now();
            step()?;
            Ok(crate::nanos(t.elapsed()))
        })
        .map_err(|source| Error::Io {
            op: format!("spawning a helper thread for {what:?}"),
            source,
        })?;
    Ok((what, h))
}

/// Holds the vCPU threads before their first KVM_RUN until the MSR filter is installed
/// (`set(true)`), or sends them home without running (`set(false)`).
#[derive(Default)]
struct StartGate {
    open: Mutex<Option<bool>>,
    cv: Condvar,
}

impl StartGate {
    fn set(&self, open: bool) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = Some(open);
        self.cv.notify_all();
    }

    /// Blocks until the gate is set; whether the vCPU may run.
    fn wait(&self) -> bool {
        let mut g = self.open.lock().unwrap_or_else(|e| e.into_inner());
        while g.is_none() {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        *g == Some(true)
    }

    /// Start-up failed after vCPU threads were spawned: they leave without a KVM_RUN;
    /// joins them and hands `e` back.
    fn abort(&self, handles: Vec<VcpuThread>, e: Error) -> Error {
        self.set(false);
        for h in handles {
            let _ = h.join();
        }
        e
    }
}

/// Tells the main thread, through `done`, when a vCPU thread ends (on a panic too).
struct DoneGuard {
    index: usize,
    done: mpsc::Sender<usize>,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        let _ = self.done.send(self.index);
    }
}

/// Spawns `vcpu`'s thread; it waits at `gate` before its first KVM_RUN.
fn spawn_vcpu(
    vcpu: Vcpu,
    done: mpsc::Sender<usize>,
    gate: Arc<StartGate>,
    seccomp: bool,
) -> Result<VcpuThread> {
    let index = usize::from(vcpu.index);
    std::thread::Builder::new()
        .name(format!("vcpu{index}"))
        .spawn(move || {
            let _done = DoneGuard { index, done };
            // The vCPU's seccomp filter goes on first thing (`crate::seccomp`); a failure
            // ends the VM with the reason, before any KVM_RUN.
            if seccomp {
                if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Vcpu) {
                    vcpu.shared.end(Outcome::VmmError {
                        vcpu: vcpu.index,
                        detail: e.to_string(),
                    });
                }
            }
            if gate.wait() {
                vcpu.run()
            } else {
                (VcpuStats::default(), None)
            }
        })
        .map_err(|source| Error::Io {
            op: "spawning a vCPU thread".into(),
            source,
        })
}

fn eventfd() -> Result<EventFd> {
    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|source| Error::Io {
        op: "eventfd".into(),
        source,
    })
}

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Maps guest memory (the host side only: the kernel can be loaded into it at once).
fn create_memory(size: u64) -> Result<GuestMemoryMmap> {
    Ok(GuestMemoryMmap::<()>::from_ranges(
        &arch::x86_64::layout::ram_regions(size),
    )?)
}

/// What the ACPI tables describe: the vCPUs and, as `LNRO0005` devices in the DSDT, the
/// virtio-mmio disks (where [`run`] puts them), so Linux's virtio_mmio driver binds them
/// without any kernel parameter.
fn acpi_config(config: &VmConfig) -> arch::x86_64::acpi::AcpiConfig {
    arch::x86_64::acpi::AcpiConfig {
        cpus: u32::from(config.cpus),
        virtio_mmio: (0..config.disks.len())
            .filter_map(DiskConfig::mmio)
            .map(|(base, gsi)| arch::x86_64::acpi::VirtioMmioDevice {
                base,
                size: u32::try_from(devices::virtio::MMIO_REGION_SIZE).unwrap_or(u32::MAX),
                gsi,
            })
            .collect(),
    }
}

/// Writes the boot structures the entry protocol needs.
fn write_boot_structures(
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    loaded: &Loaded,
    initrd: Option<(GuestAddress, u64)>,
) -> std::result::Result<(), BootError> {
    arch::x86_64::gdt::write_boot_gdt(mem)?;
    if let Boot::Freestanding { .. } = loaded.boot {
        arch::x86_64::paging::write_identity_map(mem, true)?;
        return Ok(());
    }
    // Linux, by either protocol: page tables, ACPI tables and the MP table, then the boot
    // information the protocol hands over (zero page or PVH start info).
    arch::x86_64::paging::write_identity_map(mem, false)?;
    let rsdp = arch::x86_64::acpi::write_acpi_tables(mem, &acpi_config(config))?;
    arch::x86_64::mptable::write_mptable(mem, u32::from(config.cpus))?;
    if let Boot::Pvh { .. } = loaded.boot {
        arch::x86_64::pvh::write_start_info(
            mem,
            config.memory,
            Some(GuestAddress(arch::x86_64::layout::CMDLINE_START)),
            initrd,
            Some(rsdp),
        )?;
        return Ok(());
    }
    let hdr = loaded.setup_header.ok_or(BootError::MissingSetupHeader)?;
    let zp = arch::x86_64::zero_page::ZeroPageConfig {
        cmdline_addr: GuestAddress(arch::x86_64::layout::CMDLINE_START),
        cmdline_len: config.linux_cmdline().len(),
        initrd,
        mem_size: config.memory,
        rsdp_addr: Some(rsdp),
    };
    let bp = arch::x86_64::zero_page::build_boot_params(&hdr, &zp)?;
    arch::x86_64::zero_page::write_boot_params(
        mem,
        &bp,
        GuestAddress(arch::x86_64::layout::ZERO_PAGE_START),
    )?;
    Ok(())
}

/// Creates vCPU `index` and gives it its CPUID (from this run's one
/// KVM_GET_SUPPORTED_CPUID, `supported`), vPMU MSRs, boot MSRs, LINT pins and, when it
/// enters the guest at once, its entry registers.
fn setup_vcpu(
    vm: &VmFd,
    index: u8,
    config: &VmConfig,
    boot: Boot,
    plan: &PmuPlan,
    supported: &CpuId,
) -> Result<VcpuFd> {
    let vcpu = vm
        .create_vcpu(u64::from(index))
        .map_err(|e| plan.vcpu_create_error(e))?;
    let mut cpuid = supported.clone();
    arch::x86_64::cpuid::normalize(&mut cpuid, u32::from(index), u32::from(config.cpus))?;
    plan.apply_cpuid(&mut cpuid)?;
    vcpu.set_cpuid2(&cpuid)
        .map_err(Error::kvm("KVM_SET_CPUID2"))?;
    plan.setup_vcpu(&vcpu)?;

    // IA32_MISC_ENABLE as KVM set it at vCPU reset (BTS/PEBS unavailable): boot MSRs add
    // to it rather than overwrite it.
    let misc_enable =
        crate::msrs::get_msr(&vcpu, arch::x86_64::regs::msr::MISC_ENABLE)?.unwrap_or(0);
    let msrs = kvm_bindings::Msrs::from_entries(&arch::x86_64::regs::boot_msrs(misc_enable))
        .map_err(Error::MsrList)?;
    vcpu.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS"))?;

    crate::lapic::set_lint(&vcpu)?;
    if index == 0 || boot.all_vcpus_enter() {
        set_entry_registers(&vcpu, index, config, boot)?;
    }
    Ok(vcpu)
}

/// The registers of a vCPU that enters the guest at once (the BSP; every vCPU of a
/// freestanding guest).
fn set_entry_registers(vcpu: &VcpuFd, index: u8, config: &VmConfig, boot: Boot) -> Result<()> {
    let mut sregs = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
    let regs = match boot {
        Boot::Linux64 { entry } => {
            arch::x86_64::regs::setup_long_mode_sregs(&mut sregs, arch::x86_64::layout::PML4_START);
            arch::x86_64::regs::linux64_regs(
                entry,
                GuestAddress(arch::x86_64::layout::ZERO_PAGE_START),
            )
        }
        Boot::Pvh { entry } => {
            arch::x86_64::regs::setup_pvh_sregs(&mut sregs);
            arch::x86_64::regs::pvh_regs(entry, GuestAddress(arch::x86_64::layout::PVH_INFO_START))
        }
        Boot::Freestanding { entry, cmdline } => {
            arch::x86_64::regs::setup_long_mode_sregs(&mut sregs, arch::x86_64::layout::PML4_START);
            arch::x86_64::regs::long_mode_regs(
                entry,
                0,
                [u64::from(index), cmdline, u64::from(config.cpus)],
            )
        }
    };
    vcpu.set_sregs(&sregs)
        .map_err(Error::kvm("KVM_SET_SREGS"))?;
    vcpu.set_regs(&regs).map_err(Error::kvm("KVM_SET_REGS"))?;
    vcpu.set_fpu(&arch::x86_64::regs::boot_fpu())
        .map_err(Error::kvm("KVM_SET_FPU"))?;
    if index != 0 {
        // With an in-kernel irqchip KVM parks APs in wait-for-SIPI; freestanding guests
        // start every vCPU at the entry point.
        vcpu.set_mp_state(kvm_bindings::kvm_mp_state {
            mp_state: kvm_bindings::KVM_MP_STATE_RUNNABLE,
        })
        .map_err(Error::kvm("KVM_SET_MP_STATE"))?;
    }
    Ok(())
}
