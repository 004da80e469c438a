//! `vmm`: VM lifecycle, vCPU run loop, exit dispatch, configuration, and the wiring of
//! the vPMU modes into KVM.
//!
//! A [`VmConfig`] (plain data, from the CLI or a test) becomes live objects in
//! [`vm::run`]: KVM VM + in-kernel irqchip and PIT, guest memory, the loaded kernel and
//! boot structures, devices on a port-I/O bus, the vPMU plan, and one thread per vCPU
//! running [`vcpu::Vcpu::run`]. The first vCPU to end the VM records the [`Outcome`].

pub mod config;
pub mod console;
pub mod error;
pub mod kick;
pub mod lapic;
pub mod loader;
mod msrs;
pub mod outcome;
pub mod pmu;
pub mod vcpu;
pub mod vm;

pub use config::{Console, DiskConfig, KernelImage, PmuSettings, VmConfig};
pub use error::{Error, Result};
pub use outcome::Outcome;
pub use vm::{probe_host, run, RunReport};
