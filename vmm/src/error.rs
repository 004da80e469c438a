//! Error types. Every error a user or a guest can cause ends here, never in a panic.

use std::io;
use std::path::PathBuf;

/// Problems with what the user asked for.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--cpus` out of range.
    #[error("--cpus must be between 1 and {max}, not {0}", max = crate::config::MAX_VCPUS)]
    Cpus(u64),
    /// `--memory` out of range.
    #[error("--memory must be between 16M and 1T (got {0} bytes)")]
    Memory(u64),
    /// `--memory` not page aligned.
    #[error("--memory must be a multiple of 4 KiB (got {0} bytes)")]
    MemoryAlignment(u64),
    /// Unparsable size.
    #[error(
        "cannot parse size '{0}': use a number with an optional K, M, G or T suffix (e.g. 512M)"
    )]
    SizeSyntax(String),
    /// A bad `--disk`.
    #[error("--disk {0}")]
    Disk(String),
}

/// Problems loading the guest kernel or initrd.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file is not a regular file (a device, a FIFO, a directory, a procfs file...).
    #[error("{what} {path} is {kind}, not a regular file")]
    NotRegular {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// The kernel is neither a bzImage nor an ELF64 image.
    #[error("{0}: not a bzImage or an ELF64 x86_64 image (bad magic)")]
    UnknownFormat(String),
    /// linux-loader rejected the image.
    #[error("{image}: invalid {format} image: {detail}")]
    Invalid {
        /// The image.
        image: String,
        /// "bzImage" or "ELF".
        format: &'static str,
        /// What the loader said.
        detail: String,
    },
    /// The kernel (or initrd) does not fit in guest memory.
    #[error("{what} ({size} bytes) does not fit in guest memory ({mem} bytes); raise --memory")]
    TooLarge {
        /// "kernel" or "initrd".
        what: &'static str,
        /// Its size.
        size: u64,
        /// Guest memory size.
        mem: u64,
    },
    /// linux-loader rejected the image (its error kept as the source).
    #[error("{image}: invalid {format} image: {source}")]
    Loader {
        /// The image.
        image: String,
        /// "bzImage" or "ELF".
        format: &'static str,
        /// What the loader said.
        source: linux_loader::loader::Error,
    },
    /// linux-loader refused the Linux command line (too long, a NUL, ...).
    #[error("kernel command line rejected: {0}")]
    LinuxCmdline(#[from] linux_loader::cmdline::Error),
    /// The Linux command line could not be written into guest memory.
    #[error("kernel command line rejected: {0}")]
    CmdlineWrite(#[source] linux_loader::loader::Error),
    /// The command line is too long, contains a NUL, or (freestanding guests) is not
    /// printable ASCII.
    #[error("kernel command line rejected: {0}")]
    Cmdline(String),
    /// An initrd was given for a freestanding guest.
    #[error("--initrd is only meaningful for Linux kernels, not for the freestanding ELF {0}")]
    InitrdForFreestanding(String),
    /// Writing boot structures into guest memory failed.
    #[error("cannot set up boot structures: {0}")]
    Boot(#[from] BootError),
}

/// aarch64: why the initrd or the device tree could not be written. Each variant keeps
/// its source.
#[cfg(target_arch = "aarch64")]
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The initrd could not be copied into guest memory.
    #[error("writing the initrd: {0}")]
    Initrd(#[source] vm_memory::GuestMemoryError),
    /// The device tree could not be built.
    #[error("device tree: {0}")]
    Fdt(#[from] arch::aarch64::fdt::FdtError),
    /// Guest memory has no room for the device tree.
    #[error("no room for the device tree")]
    NoFdtRoom,
    /// The device tree could not be copied into guest memory.
    #[error("writing the device tree: {0}")]
    FdtWrite(#[source] vm_memory::GuestMemoryError),
}

/// Why a boot structure (or the kernel's command line, or the initrd) could not be
/// written into guest memory. Each variant keeps the `arch` error it came from.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The boot GDT/TSS.
    #[error("GDT: {0}")]
    Gdt(#[from] arch::x86_64::gdt::GdtError),
    /// The identity page tables.
    #[error("page tables: {0}")]
    Paging(#[from] arch::x86_64::paging::PagingError),
    /// The ACPI tables.
    #[error("ACPI tables: {0}")]
    Acpi(#[from] arch::x86_64::acpi::AcpiError),
    /// The MP table.
    #[error("MP table: {0}")]
    Mptable(#[from] arch::x86_64::mptable::MptableError),
    /// The PVH start info.
    #[error("PVH start info: {0}")]
    Pvh(#[from] arch::x86_64::pvh::PvhError),
    /// The Linux zero page.
    #[error("zero page: {0}")]
    ZeroPage(#[from] arch::x86_64::zero_page::ZeroPageError),
    /// A plain write into guest memory (command line, initrd).
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// A bzImage without a setup header reached the zero-page writer.
    #[error("missing setup header")]
    MissingSetupHeader,
}

/// Why the PMU configuration (policy, layout) is unusable. Each variant keeps its source.
#[derive(Debug, thiserror::Error)]
pub enum PmuConfigError {
    /// `--pmu-layout` could not be parsed or cannot be had on this host.
    #[cfg(target_arch = "x86_64")]
    #[error(transparent)]
    Layout(#[from] vpmu::cpuid::LayoutError),
    /// A policy file is not a regular file of bounded size.
    #[error("policy {path} {source}")]
    PolicyFile {
        /// The policy file.
        path: PathBuf,
        /// Why.
        source: devices::host_file::ReadError,
    },
    /// A policy file is not UTF-8.
    #[error("policy {0} is not UTF-8 text")]
    PolicyNotUtf8(PathBuf),
    /// A policy could not be parsed or compiled for the layout.
    #[cfg(target_arch = "x86_64")]
    #[error("{name}: {source}")]
    Policy {
        /// The policy's name (its path, or "builtin default").
        name: String,
        /// Why.
        source: vpmu::policy::PolicyError,
    },
    /// The compiled policy does not fit KVM's event filter.
    #[cfg(target_arch = "x86_64")]
    #[error(transparent)]
    KvmFilter(#[from] vpmu::policy::KvmFilterError),
    /// The PMU CPUID leaves could not be written.
    #[cfg(target_arch = "x86_64")]
    #[error("CPUID: {0}")]
    Cpuid(#[from] vpmu::cpuid::CpuidError),
    /// aarch64: an arm64 policy could not be parsed or compiled for this guest's event
    /// space (the error names the line).
    #[cfg(target_arch = "aarch64")]
    #[error("{name}: {source}")]
    Arm64Policy {
        /// The policy's name (its path, or the built-in policy).
        name: String,
        /// Why.
        source: vpmu::arm64::policy::PolicyError,
    },
    /// An in-kernel or userspace mode resolved to no PMU at all.
    #[error("--pmu {0} with an empty PMU layout")]
    EmptyLayout(vpmu::discovery::PmuMode),
    /// A vPMU backend was asked for without a compiled policy (a VMM bug).
    #[error("--pmu {0}: no compiled policy")]
    NoPolicy(vpmu::discovery::PmuMode),
    /// `--pmu-audit-max-bytes` below the minimum the audit's own summaries need.
    #[error("--pmu-audit-max-bytes {max} is below the minimum of {min} bytes")]
    AuditMaxBytes {
        /// Asked for.
        max: u64,
        /// The minimum.
        min: u64,
    },
    /// The userspace vPMU turns counts into deadlines with the TSC frequency.
    #[error("KVM_GET_TSC_KHZ failed: the userspace vPMU needs a stable TSC")]
    NoTscFrequency,
}

/// Why a thread's seccomp filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler could not build the filter (a VMM bug, or an unsupported architecture).
    #[error("building the filter: {0}")]
    Build(#[source] seccompiler::BackendError),
    /// The SIGSYS handler (which names a trapped call) could not be installed.
    #[error("installing the SIGSYS handler: {0}")]
    SigsysHandler(#[source] io::Error),
    /// The kernel refused the filter.
    #[error("{thread} thread: {source}")]
    Apply {
        /// Which thread kind.
        thread: &'static str,
        /// Why.
        source: seccompiler::Error,
    },
}

/// Top-level VMM error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Bad kernel/initrd.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(#[source] kvm_ioctls::Error),
    /// The host probe could not use KVM (its own sentence).
    #[error("{0}")]
    HostProbe(String),
    /// KVM lacks a capability the VMM cannot run without.
    #[error("KVM lacks {0}")]
    MissingCap(&'static str),
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// What we were doing.
        op: &'static str,
        /// errno.
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be created.
    #[error("cannot allocate guest memory: {0}")]
    Memory(#[from] vm_memory::mmap::FromRangesError),
    /// A guest memory region has no host mapping (cannot happen for regions just made).
    #[error("guest memory region: {0}")]
    MemoryRegion(#[source] vm_memory::GuestMemoryError),
    /// A disk image could not be used.
    #[error(transparent)]
    Disk(#[from] devices::virtio::BlockError),
    /// A device could not be put on its bus (overlap, empty or overflowing range).
    #[error("device setup failed: {0}")]
    Bus(#[from] devices::BusError),
    /// The serial port could not be created.
    #[error("serial port: {0}")]
    Serial(#[from] devices::SerialError),
    /// A device could not be put on the MMIO bus.
    #[error("device setup failed: {0}")]
    MmioBus(#[from] devices::MmioBusError),
    #[cfg(target_arch = "x86_64")]
    /// The vCPU's CPUID could not be normalised (topology).
    #[error("CPUID setup failed: {0}")]
    Cpuid(#[from] arch::x86_64::cpuid::CpuidError),
    /// A KVM MSR list (KVM_SET_MSRS / KVM_GET_MSRS) could not be built.
    #[error("MSR list for KVM: {0}")]
    MsrList(#[source] vmm_sys_util::fam::Error),
    /// The requested PMU mode cannot be had on this host.
    #[error("--pmu {mode}: {reason}")]
    PmuUnavailable {
        /// The mode.
        mode: vpmu::discovery::PmuMode,
        /// Why, and what to do about it.
        reason: String,
    },
    /// The PMU configuration (layout, policy) is invalid.
    #[error("PMU configuration: {0}")]
    PmuConfig(#[from] PmuConfigError),
    /// A seccomp filter could not be built or installed.
    #[error("seccomp: {0}")]
    Seccomp(#[from] SeccompError),
    /// aarch64: KVM could not create the GICv3.
    #[cfg(target_arch = "aarch64")]
    #[error(
        "KVM cannot create a GICv3 (KVM_CREATE_DEVICE KVM_DEV_TYPE_ARM_VGIC_V3): {0}; the \
         host's interrupt controller must be a GICv3"
    )]
    Gic(#[source] kvm_ioctls::Error),
    /// More disks than the guest address map has device windows for.
    #[error("no MMIO window for disk {0} (too many --disk)")]
    NoDiskWindow(usize),
    /// An OS-level failure (threads, signals, timers, files).
    #[error("{op}: {source}")]
    Io {
        /// What we were doing.
        op: String,
        /// The error.
        source: io::Error,
    },
}

impl Error {
    /// Wraps a KVM ioctl error with what we were doing.
    pub fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { op, source }
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;
