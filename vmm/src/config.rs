//! The VM configuration: what the CLI (or a test, or the bench harness) asks for.
//!
//! A [`VmConfig`] is plain data; [`crate::Vm::build`] turns it into live KVM objects.

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
    /// The requested guest PMU layout (`host` by default).
    pub layout: String,
    /// The allowlist policy file; `None` = the built-in default policy.
    pub policy: Option<PathBuf>,
    /// JSON-lines audit log of denied/faulting PMU programming attempts.
    pub audit: Option<PathBuf>,
}

impl Default for PmuSettings {
    fn default() -> Self {
        PmuSettings {
            mode: vpmu::discovery::PmuMode::Off,
            layout: "host".to_string(),
            policy: None,
            audit: None,
        }
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
