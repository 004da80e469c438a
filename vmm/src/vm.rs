//! VM lifecycle: turn a [`VmConfig`] into live KVM objects, run the vCPUs, collect the end.

use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::config::{Console, DiskConfig, VmConfig};
use crate::error::{Error, LoadError, Result};
use crate::loader::{self, Boot, Loaded};
use crate::outcome::Outcome;
use crate::pmu::setup::{self, PmuPlan};
use crate::vcpu::{Shared, Vcpu, VcpuStats};

/// GSI of the COM1 serial port.
const SERIAL_GSI: u32 = devices::SERIAL_IRQ;

/// What a finished run reports.
#[derive(Debug, serde::Serialize)]
pub struct RunReport {
    /// How the VM ended.
    pub outcome: Outcome,
    /// Per-vCPU exit statistics.
    pub vcpus: Vec<VcpuStats>,
    /// Per-vCPU userspace-vPMU summaries (empty in other modes).
    pub pmu: Vec<serde_json::Value>,
    /// One line per vCPU for humans.
    #[serde(skip)]
    pub pmu_lines: Vec<String>,
    /// The vPMU mode and what the guest was given.
    pub pmu_mode: String,
    /// Nanoseconds from VMM start to vCPU 0's first KVM_RUN.
    pub start_to_first_entry_ns: u64,
    /// Wall time of the whole run.
    pub wall_ns: u64,
    /// Stray port accesses (no device there).
    pub unhandled_pio: u64,
    /// One line per virtio-blk disk for humans (requests served).
    #[serde(skip)]
    pub disk_lines: Vec<String>,
}

impl RunReport {
    /// Statistics as text (for `--stats`).
    pub fn stats_text(&self) -> String {
        let mut s = format!(
            "vpmu-vmm: {} | {} | start to first guest entry {:.2} ms | wall {:.1} ms | stray port accesses {}\n",
            self.pmu_mode,
            self.outcome,
            self.start_to_first_entry_ns as f64 / 1e6,
            self.wall_ns as f64 / 1e6,
            self.unhandled_pio
        );
        for (i, v) in self.vcpus.iter().enumerate() {
            s.push_str(&format!(
                "vcpu{i}: exits {} (io in {}, io out {}, mmio {}, rdmsr {}, wrmsr {}, #GP {}, kicks {}), pmis {}\n",
                v.exits, v.io_in, v.io_out, v.mmio, v.msr_read, v.msr_write, v.msr_gp, v.interrupted, v.pmis
            ));
        }
        for line in self.pmu_lines.iter().chain(&self.disk_lines) {
            s.push_str(line);
            s.push('\n');
        }
        s.trim_end().to_string()
    }
}

/// Host report for `vpmu-vmm probe` and `--pmu auto`.
pub fn probe_host() -> Result<vpmu::discovery::HostPmu> {
    let host = vpmu::discovery::HostPmu::probe_system();
    if let Some(e) = &host.kvm_error {
        return Err(Error::KvmOpen(e.clone()));
    }
    Ok(host)
}

fn open_kvm() -> Result<Kvm> {
    Kvm::new().map_err(|e| Error::KvmOpen(e.to_string()))
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

fn console_writer(console: &Console) -> Box<dyn Write + Send> {
    match console {
        Console::Stdio => Box::new(std::io::stdout()),
        Console::Capture(buf) => Box::new(CaptureWriter(buf.clone())),
        Console::Null => Box::new(std::io::sink()),
    }
}

fn create_memory(vm: &VmFd, size: u64) -> Result<GuestMemoryMmap> {
    let regions = arch::layout::ram_regions(size);
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&regions).map_err(|e| Error::Memory(e.to_string()))?;
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| Error::Memory(e.to_string()))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mmap owned by `mem`, which outlives the VM fd's use
        // of it (the VM is dropped before the memory in `run`).
        unsafe { vm.set_user_memory_region(r) }
            .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(mem)
}

/// What the ACPI tables describe: the vCPUs and, as `LNRO0005` devices in the DSDT, the
/// virtio-mmio disks (where [`run`] puts them), so Linux's virtio_mmio driver binds them
/// without any kernel parameter.
fn acpi_config(config: &VmConfig) -> arch::acpi::AcpiConfig {
    arch::acpi::AcpiConfig {
        cpus: u32::from(config.cpus),
        virtio_mmio: (0..config.disks.len())
            .filter_map(DiskConfig::mmio)
            .map(|(base, gsi)| arch::acpi::VirtioMmioDevice {
                base,
                size: devices::virtio::MMIO_REGION_SIZE as u32,
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
) -> std::result::Result<(), LoadError> {
    let boot_err = |e: &dyn std::fmt::Display| LoadError::Boot(e.to_string());
    arch::gdt::write_boot_gdt(mem).map_err(|e| boot_err(&e))?;
    if let Boot::Freestanding { .. } = loaded.boot {
        arch::paging::write_identity_map(mem, true).map_err(|e| boot_err(&e))?;
        return Ok(());
    }
    // Linux, by either protocol: page tables, ACPI tables and the MP table, then the boot
    // information the protocol hands over (zero page or PVH start info).
    arch::paging::write_identity_map(mem, false).map_err(|e| boot_err(&e))?;
    let rsdp =
        arch::acpi::write_acpi_tables(mem, &acpi_config(config)).map_err(|e| boot_err(&e))?;
    arch::mptable::write_mptable(mem, u32::from(config.cpus)).map_err(|e| boot_err(&e))?;
    if let Boot::Pvh { .. } = loaded.boot {
        arch::pvh::write_start_info(
            mem,
            config.memory,
            Some(GuestAddress(arch::layout::CMDLINE_START)),
            initrd,
            Some(rsdp),
        )
        .map_err(|e| boot_err(&e))?;
        return Ok(());
    }
    let hdr = loaded
        .setup_header
        .ok_or_else(|| LoadError::Boot("missing setup header".into()))?;
    let zp = arch::zero_page::ZeroPageConfig {
        cmdline_addr: GuestAddress(arch::layout::CMDLINE_START),
        cmdline_len: config.linux_cmdline().len(),
        initrd,
        mem_size: config.memory,
        rsdp_addr: Some(rsdp),
    };
    let bp = arch::zero_page::build_boot_params(&hdr, &zp).map_err(|e| boot_err(&e))?;
    arch::zero_page::write_boot_params(mem, &bp, GuestAddress(arch::layout::ZERO_PAGE_START))
        .map_err(|e| boot_err(&e))?;
    Ok(())
}

fn setup_vcpu(
    kvm: &Kvm,
    vm: &VmFd,
    index: u8,
    config: &VmConfig,
    boot: Boot,
    plan: &PmuPlan,
) -> Result<VcpuFd> {
    let vcpu = vm
        .create_vcpu(u64::from(index))
        .map_err(|e| plan.vcpu_create_error(e))?;
    let mut cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
    arch::cpuid::normalize(&mut cpuid, u32::from(index), u32::from(config.cpus))
        .map_err(|e| Error::Device(format!("CPUID: {e}")))?;
    plan.apply_cpuid(&mut cpuid)?;
    vcpu.set_cpuid2(&cpuid)
        .map_err(Error::kvm("KVM_SET_CPUID2"))?;
    plan.setup_vcpu(&vcpu)?;

    // IA32_MISC_ENABLE as KVM set it at vCPU reset (BTS/PEBS unavailable): boot MSRs add
    // to it rather than overwrite it.
    let misc_enable = crate::msrs::get_msr(&vcpu, arch::regs::msr::MISC_ENABLE)?.unwrap_or(0);
    let msrs = kvm_bindings::Msrs::from_entries(&arch::regs::boot_msrs(misc_enable))
        .map_err(|e| Error::Device(format!("boot MSRs: {e:?}")))?;
    vcpu.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS"))?;

    crate::lapic::set_lint(&vcpu)?;

    let is_entering = index == 0 || boot.all_vcpus_enter();
    if is_entering {
        let mut sregs = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
        let regs = match boot {
            Boot::Linux64 { entry } => {
                arch::regs::setup_long_mode_sregs(&mut sregs, arch::layout::PML4_START);
                arch::regs::linux64_regs(entry, GuestAddress(arch::layout::ZERO_PAGE_START))
            }
            Boot::Pvh { entry } => {
                arch::regs::setup_pvh_sregs(&mut sregs);
                arch::regs::pvh_regs(entry, GuestAddress(arch::layout::PVH_INFO_START))
            }
            Boot::Freestanding { entry, cmdline } => {
                arch::regs::setup_long_mode_sregs(&mut sregs, arch::layout::PML4_START);
                arch::regs::long_mode_regs(
                    entry,
                    0,
                    [u64::from(index), cmdline, u64::from(config.cpus)],
                )
            }
        };
        vcpu.set_sregs(&sregs)
            .map_err(Error::kvm("KVM_SET_SREGS"))?;
        vcpu.set_regs(&regs).map_err(Error::kvm("KVM_SET_REGS"))?;
        vcpu.set_fpu(&arch::regs::boot_fpu())
            .map_err(Error::kvm("KVM_SET_FPU"))?;
        if index != 0 {
            // With an in-kernel irqchip KVM parks APs in wait-for-SIPI; freestanding guests
            // start every vCPU at the entry point.
            vcpu.set_mp_state(kvm_bindings::kvm_mp_state {
                mp_state: kvm_bindings::KVM_MP_STATE_RUNNABLE,
            })
            .map_err(Error::kvm("KVM_SET_MP_STATE"))?;
        }
    }
    Ok(vcpu)
}

/// Builds the VM described by `config`, runs it to the end, and reports.
pub fn run(config: VmConfig) -> Result<RunReport> {
    let started = Instant::now();
    config.validate()?;
    crate::kick::install_handler().map_err(|source| Error::Io {
        op: "installing the vCPU kick signal handler".into(),
        source,
    })?;

    // Disk images first: a missing file is a configuration error, reported before KVM.
    let disks = config
        .disks
        .iter()
        .map(|d| devices::virtio::Block::open(&d.path, d.read_only))
        .collect::<std::result::Result<Vec<_>, _>>()?;

    let kvm = open_kvm()?;
    if !kvm.check_extension(Cap::Irqchip) {
        return Err(Error::Device("KVM lacks KVM_CAP_IRQCHIP".into()));
    }
    let vm = Arc::new(kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?);
    vm.set_tss_address(0xfffb_d000)
        .map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip()
        .map_err(Error::kvm("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(Error::kvm("KVM_CREATE_PIT2"))?;

    // The vPMU plan must be in place before any vCPU exists (KVM_CAP_PMU_CAPABILITY).
    let plan = setup::plan(&kvm, &vm, &config)?;

    let mem = create_memory(&vm, config.memory)?;
    let loaded = loader::load_kernel(&mem, &config)?;
    if matches!(loaded.boot, Boot::Linux64 { .. } | Boot::Pvh { .. }) {
        let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
        if let Some(why) = vpmu::discovery::linux_guests_blocker(pvm) {
            eprintln!("vpmu-vmm: warning: {why}");
        }
    }
    let initrd = loader::load_initrd(&mem, &config, &loaded)?;
    write_boot_structures(&mem, &config, &loaded, initrd)?;

    let mut fds = Vec::with_capacity(config.cpus as usize);
    for i in 0..config.cpus {
        fds.push(setup_vcpu(&kvm, &vm, i, &config, loaded.boot, &plan)?);
    }

    // Devices.
    let serial_evt =
        EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|source| Error::Io {
            op: "eventfd".into(),
            source,
        })?;
    let serial_irq = serial_evt.try_clone().map_err(|source| Error::Io {
        op: "eventfd".into(),
        source,
    })?;
    vm.register_irqfd(&serial_evt, SERIAL_GSI)
        .map_err(Error::kvm("KVM_IRQFD"))?;
    let serial = Arc::new(Mutex::new(devices::Serial::with_eventfd(
        serial_irq,
        console_writer(&config.console),
    )));
    let mut pio = devices::PioBus::new();
    pio.insert(
        devices::SERIAL_PORT_BASE,
        devices::SERIAL_PORT_LEN,
        serial.clone(),
    )
    .map_err(|e| Error::Device(e.to_string()))?;
    pio.insert(
        devices::I8042_BASE,
        devices::I8042_LEN,
        Arc::new(Mutex::new(devices::I8042::new())),
    )
    .map_err(|e| Error::Device(e.to_string()))?;
    let low_mem = arch::layout::low_mem_end(config.memory);
    pio.insert(
        devices::CMOS_BASE,
        devices::CMOS_LEN,
        Arc::new(Mutex::new(devices::Cmos::new(
            low_mem,
            config.memory.saturating_sub(low_mem),
        ))),
    )
    .map_err(|e| Error::Device(e.to_string()))?;
    // The ACPI PM1a registers the FADT (arch::acpi) points at.
    const _: () = assert!(devices::ACPI_PM_BASE == arch::acpi::PM1A_EVT_BLK);
    const _: () = assert!(devices::ACPI_PM_BASE + 4 == arch::acpi::PM1A_CNT_BLK);
    // The soft-off SLP_TYP the DSDT's \_S5 announces is the one the device decodes.
    const _: () = assert!(devices::acpi_pm::SLP_TYP_S5 == arch::acpi::SLP_TYP_S5);
    pio.insert(
        devices::ACPI_PM_BASE,
        devices::ACPI_PM_LEN,
        Arc::new(Mutex::new(devices::AcpiPm::new())),
    )
    .map_err(|e| Error::Device(e.to_string()))?;
    pio.insert(
        devices::DEBUG_EXIT_PORT,
        devices::DEBUG_EXIT_LEN,
        Arc::new(Mutex::new(devices::DebugExit::new())),
    )
    .map_err(|e| Error::Device(e.to_string()))?;

    // virtio-mmio disks: device i at VIRTIO_MMIO_BASE + i * 4 KiB, interrupt on
    // DISK_GSIS[i] through an irqfd (edge) (`DiskConfig::mmio`). Linux finds them in the
    // ACPI DSDT (`acpi_config`), or, with `acpi=off`, through the `virtio_mmio.device=`
    // parameters `VmConfig::linux_cmdline` adds.
    let mut mmio = devices::MmioBus::new();
    let mut disk_devs = Vec::with_capacity(disks.len());
    for (i, blk) in disks.into_iter().enumerate() {
        let (base, gsi) = DiskConfig::mmio(i)
            .ok_or_else(|| Error::Device(format!("no interrupt line for disk {i}")))?;
        let evt =
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|source| Error::Io {
                op: "eventfd".into(),
                source,
            })?;
        vm.register_irqfd(&evt, gsi)
            .map_err(Error::kvm("KVM_IRQFD"))?;
        let dev = Arc::new(Mutex::new(devices::virtio::MmioTransport::new(
            blk,
            mem.clone(),
            evt,
        )));
        mmio.insert(base, devices::virtio::MMIO_REGION_SIZE, dev.clone())
            .map_err(|e| Error::Device(e.to_string()))?;
        disk_devs.push(dev);
    }

    let shared = Arc::new(Shared {
        pio,
        mmio,
        vm: vm.clone(),
        stopping: AtomicBool::new(false),
        outcome: Mutex::new(None),
        tids: (0..config.cpus).map(|_| AtomicI32::new(0)).collect(),
        stop_evt: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|source| {
            Error::Io {
                op: "eventfd".into(),
                source,
            }
        })?,
        started,
        first_entry_ns: AtomicU64::new(0),
    });

    let seccomp = config.seccomp;
    let mut handles = Vec::with_capacity(fds.len());
    for (i, fd) in fds.into_iter().enumerate() {
        let tsc_khz = fd.get_tsc_khz().map(u64::from).unwrap_or(0);
        if tsc_khz == 0 && config.pmu.mode == vpmu::discovery::PmuMode::Userspace {
            return Err(Error::PmuConfig(
                "KVM_GET_TSC_KHZ failed: the userspace vPMU needs a stable TSC".into(),
            ));
        }
        let pmu = plan.vcpu_backend(i as u8, fd.as_raw_fd(), tsc_khz)?;
        let vcpu = Vcpu {
            index: i as u8,
            fd,
            shared: shared.clone(),
            pmu,
            stats: VcpuStats::default(),
        };
        let h = std::thread::Builder::new()
            .name(format!("vcpu{i}"))
            .spawn(move || {
                #[cfg(target_arch = "x86_64")]
                if seccomp {
                    if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Vcpu) {
                        vcpu.shared.end(Outcome::VmmError {
                            vcpu: vcpu.index,
                            detail: e.to_string(),
                        });
                    }
                }
                vcpu.run()
            })
            .map_err(|source| Error::Io {
                op: "spawning a vCPU thread".into(),
                source,
            })?;
        handles.push(h);
    }

    let stdin_is_tty = matches!(config.console, Console::Stdio)
        // SAFETY: isatty on fd 0 has no preconditions.
        && unsafe { libc::isatty(0) } == 1;
    if config.seccomp {
        if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Main) {
            shared.end(Outcome::VmmError {
                vcpu: 0,
                detail: e.to_string(),
            });
        }
    }
    crate::console::wait_for_stop(
        &shared,
        if stdin_is_tty {
            Some(serial.clone())
        } else {
            None
        },
    );

    let mut vcpus = Vec::new();
    let mut pmu = Vec::new();
    let mut pmu_lines = Vec::new();
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
            Ok((stats, backend)) => {
                vcpus.push(stats);
                if let Some(b) = backend {
                    pmu_lines.push(format!("vcpu{i}: {}", b.summary()));
                    pmu.push(b.summary_json());
                }
            }
            Err(_) => {
                shared.end(Outcome::VmmError {
                    vcpu: i as u8,
                    detail: "vCPU thread panicked".into(),
                });
            }
        }
    }
    plan.finish()?;
    let outcome = shared
        .outcome
        .lock()
        .ok()
        .and_then(|o| o.clone())
        .unwrap_or(Outcome::VmmError {
            vcpu: 0,
            detail: "VM stopped without an outcome".into(),
        });
    let _ = std::io::stdout().flush();
    Ok(RunReport {
        outcome,
        vcpus,
        pmu,
        pmu_lines,
        pmu_mode: plan.describe(),
        start_to_first_entry_ns: shared.first_entry_ns.load(Ordering::SeqCst),
        wall_ns: started.elapsed().as_nanos() as u64,
        unhandled_pio: {
            let st = shared.pio.stats();
            st.unknown_reads + st.unknown_writes
        },
        disk_lines: disk_devs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let t = d.lock().unwrap_or_else(|e| e.into_inner());
                let s = t.device().stats();
                format!(
                    "disk{i}: {} sectors{} | reads {} ({} bytes), writes {} ({} bytes), flushes {}, errors {}, dropped chains {}",
                    t.device().capacity(),
                    if t.device().read_only() { " ro" } else { "" },
                    s.reads, s.bytes_read, s.writes, s.bytes_written, s.flushes, s.errors, s.dropped
                )
            })
            .collect(),
    })
}
