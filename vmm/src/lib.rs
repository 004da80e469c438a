//! `vmm`: VM lifecycle, vCPU run loop, exit dispatch, configuration, and the wiring of
//! the vPMU modes into KVM.
//!
//! A [`VmConfig`] (plain data, from the CLI or a test) becomes live objects in
//! [`vm::run`]: KVM VM + in-kernel irqchip and PIT, guest memory, the loaded kernel and
//! boot structures, devices on a port-I/O bus, the vPMU plan, and one thread per vCPU
//! running [`vcpu::Vcpu::run`]. The first vCPU to end the VM records the [`Outcome`].
//!
//! That is the x86_64 backend. On aarch64 hosts the x86-only modules are left out and
//! `aarch64` provides `run`, `probe_host` and `RunReport` under the same names (GICv3,
//! PSCI, device tree; see `aarch64/mod.rs`).

pub mod config;
pub mod console;
pub mod error;
pub mod kick;
#[cfg(target_arch = "x86_64")]
pub mod lapic;
#[cfg(target_arch = "x86_64")]
pub mod loader;
pub mod memory;
#[cfg(target_arch = "x86_64")]
mod msrs;
pub mod outcome;
#[cfg(target_arch = "x86_64")]
pub mod pmu;
pub mod report;
#[cfg(target_arch = "x86_64")]
pub mod seccomp;
pub mod signals;
pub mod terminal;
#[cfg(target_arch = "x86_64")]
pub mod vcpu;
#[cfg(target_arch = "x86_64")]
pub mod vm;
pub mod watchdog;

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
// `console` names the vCPU threads' shared state `crate::vcpu::Shared`: on aarch64, the arm64 one.
#[cfg(target_arch = "aarch64")]
use aarch64::vcpu;

#[cfg(target_arch = "aarch64")]
pub use aarch64::vm::{probe_host, run, RunReport};
pub use config::{Console, DiskConfig, KernelImage, PmuSettings, VmConfig};
pub use error::{Error, Result};
pub use outcome::Outcome;
#[cfg(target_arch = "x86_64")]
pub use vm::{probe_host, run, RunReport};

/// A duration in nanoseconds, saturating at `u64::MAX` (584 years).
pub(crate) fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
