//! The VM configuration: what the CLI (or a test, or the bench harness) asks for.
//!
//! A [`VmConfig`] is plain data; `vm::Vm::build` (x86_64) turns it into live KVM objects.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::error::ConfigError;

/// Most vCPUs a VM may have (MP table and APIC ID space kept simple).
pub const MAX_VCPUS: u8 = 32;
/// Smallest guest memory we accept.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Largest guest memory we accept (a sanity bound, not a KVM limit).
pub const MAX_MEMORY: u64 = 1 << 40;

/// Where the guest kernel comes from.
#[derive(Clone)]
pub enum KernelImage {
    /// A file on the host: bzImage, ELF vmlinux (PVH), or a freestanding ELF64.
    File(PathBuf),
    /// An image embedded in the binary (the freestanding test guests).
    Builtin {
        /// Short name (`demo`, `conformance`, `bench`).
        name: String,
        /// The ELF bytes.
        bytes: &'static [u8],
    },
}

impl fmt::Debug for KernelImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelImage::File(p) => write!(f, "File({})", p.display()),
            KernelImage::Builtin { name, bytes } => {
                write!(f, "Builtin({name}, {} bytes)", bytes.len())
            }
        }
    }
}

impl fmt::Display for KernelImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelImage::File(p) => write!(f, "{}", p.display()),
            KernelImage::Builtin { name, .. } => write!(f, "builtin:{name}"),
        }
    }
}

/// Where the guest's serial console goes.
#[derive(Clone, Debug, Default)]
pub enum Console {
    /// The VMM's stdout (and stdin to the guest when stdin is a terminal).
    #[default]
    Stdio,
    /// Captured into a buffer (tests, benchmarks).
    Capture(Arc<Mutex<Vec<u8>>>),
    /// Discarded.
    Null,
}

/// Which vPMU the guest gets.
#[derive(Clone, Debug)]
pub struct PmuSettings {
    /// The mode (off, emulated, passthrough, userspace).
    pub mode: vpmu::discovery::PmuMode,
    /// `--pmu auto`: `mode` is ignored and the build picks the first of passthrough,
    /// emulated and userspace that this run's host probe offers (off when none is), from
    /// the run's one KVM_GET_SUPPORTED_CPUID; the report's `pmu_mode` says which.
    pub auto: bool,
    /// The requested guest PMU layout (`host` by default).
    pub layout: String,
    /// The allowlist policy file; `None` = the built-in default policy.
    pub policy: Option<PathBuf>,
    /// JSON-lines audit log of denied/faulting PMU programming attempts.
    pub audit: Option<PathBuf>,
    /// Largest audit log, in bytes (`--pmu-audit-max-bytes`; at least
    /// `pmu::audit::MIN_MAX_BYTES`, default `pmu::audit::DEFAULT_MAX_BYTES`).
    pub audit_max_bytes: u64,
}

impl Default for PmuSettings {
    fn default() -> Self {
        PmuSettings {
            mode: vpmu::discovery::PmuMode::Off,
            auto: false,
            layout: "host".to_string(),
            policy: None,
            audit: None,
            audit_max_bytes: DEFAULT_AUDIT_MAX_BYTES,
        }
    }
}

/// Default cap of the `--pmu-audit` file (`--pmu-audit-max-bytes`): 16 MiB.
pub const DEFAULT_AUDIT_MAX_BYTES: u64 = 16 << 20;

/// Most virtio-blk disks a VM may have (one GSI each, see
/// `arch::x86_64::layout::VIRTIO_MMIO_GSIS`).
#[cfg(target_arch = "x86_64")]
pub const MAX_DISKS: usize = arch::x86_64::layout::VIRTIO_MMIO_GSIS.len();
/// Most virtio-blk disks a VM may have.
#[cfg(target_arch = "aarch64")]
pub const MAX_DISKS: usize = 8;

/// A virtio-blk disk backed by a host file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// The image file (raw; its size, rounded down to 512 bytes, is the disk's).
    pub path: PathBuf,
    /// Expose the disk read-only (VIRTIO_BLK_F_RO; the file is opened read-only).
    pub read_only: bool,
}

impl DiskConfig {
    /// Parses the CLI form `PATH[,ro]` (also `PATH,rw`).
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let (path, read_only) = match s.rsplit_once(',') {
            Some((p, "ro")) => (p, true),
            Some((p, "rw")) => (p, false),
            _ => (s, false),
        };
        if path.is_empty() {
            return Err(ConfigError::Disk(format!(
                "'{s}': expected PATH or PATH,ro"
            )));
        }
        Ok(DiskConfig {
            path: PathBuf::from(path),
            read_only,
        })
    }

    /// Where disk `index` lives: (guest-physical base of its 4 KiB virtio-mmio window,
    /// GSI); `None` past [`MAX_DISKS`].
    #[cfg(target_arch = "x86_64")]
    pub fn mmio(index: usize) -> Option<(u64, u32)> {
        let gsi = *arch::x86_64::layout::VIRTIO_MMIO_GSIS.get(index)?;
        Some((
            arch::x86_64::layout::VIRTIO_MMIO_BASE
                + index as u64 * devices::virtio::MMIO_REGION_SIZE,
            gsi,
        ))
    }

    /// The Linux kernel parameter announcing disk `index` (`virtio_mmio.device=`).
    #[cfg(target_arch = "x86_64")]
    pub fn linux_cmdline_param(index: usize) -> Option<String> {
        let (base, gsi) = Self::mmio(index)?;
        Some(format!("virtio_mmio.device=4K@{base:#x}:{gsi}"))
    }
}

/// Everything needed to build and run one VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Guest kernel.
    pub kernel: KernelImage,
    /// Initial ramdisk (Linux only).
    pub initrd: Option<PathBuf>,
    /// Kernel command line (Linux) or argument string (freestanding guests).
    pub cmdline: String,
    /// Number of vCPUs, 1..=MAX_VCPUS.
    pub cpus: u8,
    /// Guest memory in bytes.
    pub memory: u64,
    /// The vPMU.
    pub pmu: PmuSettings,
    /// Serial console destination.
    pub console: Console,
    /// virtio-blk disks (virtio-mmio), in guest order (/dev/vda, /dev/vdb, ...).
    pub disks: Vec<DiskConfig>,
    /// Install the seccomp filters (`vmm::seccomp`): on the vCPU threads, and on the main
    /// thread once the vCPUs run. Off by default for library use (a filtered main thread
    /// cannot build another VM); the CLI turns it on unless `--no-seccomp`.
    pub seccomp: bool,
    /// Say so (once, with each vCPU's exit count and instruction pointer) when the guest
    /// has written nothing to the console for this long and has not ended
    /// (`crate::watchdog`); `None`: never. Stdio consoles only.
    pub watchdog: Option<std::time::Duration>,
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: KernelImage) -> Self {
        VmConfig {
            kernel,
            initrd: None,
            cmdline: String::new(),
            cpus: 1,
            memory: 256 << 20,
            pmu: PmuSettings::default(),
            console: Console::Stdio,
            disks: Vec::new(),
            seccomp: false,
            watchdog: None,
        }
    }

    /// Whether the Linux command line (before any ` -- `) has `acpi=off`: the kernel then
    /// ignores the ACPI tables, so the disks' DSDT entries are not seen either.
    #[cfg(target_arch = "x86_64")]
    pub fn linux_acpi_off(&self) -> bool {
        let kernel_part = match self.cmdline.find(" -- ") {
            Some(i) => &self.cmdline[..i],
            None if self.cmdline == "--" || self.cmdline.starts_with("-- ") => "",
            None => &self.cmdline,
        };
        kernel_part.split_whitespace().any(|w| w == "acpi=off")
    }

    /// The command line a Linux guest gets. The disks are announced in the ACPI DSDT
    /// (`LNRO0005` devices, see `arch::x86_64::acpi`), which is all a kernel with ACPI needs, so
    /// `cmdline` is passed unchanged; only when it has `acpi=off` is one
    /// `virtio_mmio.device=4K@<base>:<irq>` per disk inserted, before a ` -- ` (what
    /// follows it belongs to init). Both at once would describe each disk twice (see
    /// docs/DISKS.md). Freestanding guests get `cmdline` unchanged.
    #[cfg(target_arch = "x86_64")]
    pub fn linux_cmdline(&self) -> String {
        if !self.linux_acpi_off() {
            return self.cmdline.clone();
        }
        let params: Vec<String> = (0..self.disks.len())
            .filter_map(DiskConfig::linux_cmdline_param)
            .collect();
        let c = &self.cmdline;
        if params.is_empty() {
            return c.clone();
        }
        let extra = params.join(" ");
        let split = if c == "--" || c.starts_with("-- ") {
            Some(0)
        } else if let Some(i) = c.find(" -- ") {
            Some(i + 1)
        } else if c.ends_with(" --") {
            Some(c.len() - 2)
        } else {
            None
        };
        match split {
            Some(i) => format!("{}{extra} {}", &c[..i], &c[i..]),
            None if c.trim().is_empty() => extra,
            None => format!("{c} {extra}"),
        }
    }

    /// Checks the bounds a user controls.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cpus == 0 || self.cpus > MAX_VCPUS {
            return Err(ConfigError::Cpus(self.cpus as u64));
        }
        if !(MIN_MEMORY..=MAX_MEMORY).contains(&self.memory) {
            return Err(ConfigError::Memory(self.memory));
        }
        if !self.memory.is_multiple_of(4096) {
            return Err(ConfigError::MemoryAlignment(self.memory));
        }
        if self.disks.len() > MAX_DISKS {
            return Err(ConfigError::Disk(format!(
                "at most {MAX_DISKS} disks, not {}",
                self.disks.len()
            )));
        }
        Ok(())
    }
}

/// Parses a memory size such as `512M`, `2G`, `65536K` or a plain byte count.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let t = s.trim();
    let bad = || ConfigError::SizeSyntax(s.to_string());
    if t.is_empty() {
        return Err(bad());
    }
    let (digits, shift) = match t.as_bytes()[t.len() - 1].to_ascii_uppercase() {
        b'K' => (&t[..t.len() - 1], 10),
        b'M' => (&t[..t.len() - 1], 20),
        b'G' => (&t[..t.len() - 1], 30),
        b'T' => (&t[..t.len() - 1], 40),
        b'B' => (&t[..t.len() - 1], 0),
        c if c.is_ascii_digit() => (t, 0),
        _ => return Err(bad()),
    };
    let n: u64 = digits.trim().parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift)
        .ok_or(ConfigError::Memory(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        for bad in ["", "M", "12Q", "-1G", "1.5G", "G1", "99999999999999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad} should be rejected");
        }
        assert!(parse_size("100000000T").is_err());
    }

    #[test]
    fn disk_specs() {
        assert_eq!(
            DiskConfig::parse("perf.img").unwrap(),
            DiskConfig {
                path: "perf.img".into(),
                read_only: false
            }
        );
        let d = DiskConfig::parse("/a,b/x.img,ro").unwrap();
        assert_eq!((d.path, d.read_only), (PathBuf::from("/a,b/x.img"), true));
        assert!(!DiskConfig::parse("x,rw").unwrap().read_only);
        assert_eq!(
            DiskConfig::parse("x,foo").unwrap().path,
            PathBuf::from("x,foo")
        );
        assert!(DiskConfig::parse("").is_err());
        assert!(DiskConfig::parse(",ro").is_err());
        assert_eq!(
            DiskConfig::linux_cmdline_param(0).unwrap(),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
        assert_eq!(
            DiskConfig::linux_cmdline_param(3).unwrap(),
            "virtio_mmio.device=4K@0xd0003000:9"
        );
        assert!(DiskConfig::linux_cmdline_param(MAX_DISKS).is_none());
        assert_eq!(DiskConfig::mmio(0), Some((0xd000_0000, 5)));
        assert_eq!(DiskConfig::mmio(7), Some((0xd000_7000, 15)));
        assert_eq!(DiskConfig::mmio(MAX_DISKS), None);
        let mut c = VmConfig::new(KernelImage::File("x".into()));
        c.cmdline = "console=ttyS0 quiet".into();
        assert_eq!(c.linux_cmdline(), "console=ttyS0 quiet");
        c.disks = vec![
            DiskConfig::parse("a").unwrap(),
            DiskConfig::parse("b,ro").unwrap(),
        ];
        // ACPI describes the disks: the command line stays as given.
        for cmdline in [
            "console=ttyS0 quiet",
            "",
            "-- acpi=off",
            "console=ttyS0 -- echo acpi=off",
            "xacpi=off acpi=offx",
        ] {
            c.cmdline = cmdline.into();
            assert!(!c.linux_acpi_off(), "{cmdline}");
            assert_eq!(c.linux_cmdline(), cmdline);
        }
        // acpi=off: the kernel sees no DSDT, so the disks go on the command line.
        let d = "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6";
        c.cmdline = "console=ttyS0 acpi=off quiet".into();
        assert_eq!(
            c.linux_cmdline(),
            format!("console=ttyS0 acpi=off quiet {d}")
        );
        c.cmdline = "acpi=off console=ttyS0 -- perf record -o x -- ls".into();
        assert_eq!(
            c.linux_cmdline(),
            format!("acpi=off console=ttyS0 {d} -- perf record -o x -- ls")
        );
        c.cmdline = "acpi=off --".into();
        assert_eq!(c.linux_cmdline(), format!("acpi=off {d} --"));
        c.cmdline = "acpi=off".into();
        assert_eq!(c.linux_cmdline(), format!("acpi=off {d}"));
        let mut c = VmConfig::new(KernelImage::File("x".into()));
        c.disks = vec![DiskConfig::parse("d").unwrap(); MAX_DISKS + 1];
        assert!(matches!(c.validate(), Err(ConfigError::Disk(_))));
    }

    #[test]
    fn validation_bounds() {
        let mut c = VmConfig::new(KernelImage::File("x".into()));
        assert!(c.validate().is_ok());
        c.cpus = 0;
        assert!(matches!(c.validate(), Err(ConfigError::Cpus(0))));
        c.cpus = 33;
        assert!(c.validate().is_err());
        c.cpus = 32;
        assert!(c.validate().is_ok());
        c.memory = 1 << 20;
        assert!(matches!(c.validate(), Err(ConfigError::Memory(_))));
        c.memory = (64 << 20) + 1;
        assert!(matches!(c.validate(), Err(ConfigError::MemoryAlignment(_))));
        c.memory = 1 << 50;
        assert!(c.validate().is_err());
    }
}
