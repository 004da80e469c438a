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
    /// The command line is too long, contains a NUL, or (freestanding guests) is not
    /// printable ASCII.
    #[error("kernel command line rejected: {0}")]
    Cmdline(String),
    /// An initrd was given for a freestanding guest.
    #[error("--initrd is only meaningful for Linux kernels, not for the freestanding ELF {0}")]
    InitrdForFreestanding(String),
    /// Writing boot structures into guest memory failed.
    #[error("cannot set up boot structures: {0}")]
    Boot(String),
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
    KvmOpen(String),
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
    Memory(String),
    /// A disk image could not be used.
    #[error(transparent)]
    Disk(#[from] devices::virtio::BlockError),
    /// A device could not be set up.
    #[error("device setup failed: {0}")]
    Device(String),
    /// The requested PMU mode cannot be had on this host.
    #[error("--pmu {mode}: {reason}")]
    PmuUnavailable {
        /// The mode.
        mode: String,
        /// Why, and what to do about it.
        reason: String,
    },
    /// The PMU configuration (layout, policy, audit file) is invalid.
    #[error("PMU configuration: {0}")]
    PmuConfig(String),
    /// A seccomp filter could not be built or installed.
    #[error("seccomp: {0}")]
    Seccomp(String),
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
