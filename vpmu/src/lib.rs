//! `vpmu`: everything a VMM needs to know to give a guest a PMU, kept free of any VMM.
//!
//! - [`config`]: the guest PMU layout ([`PmuConfig`]).
//! - `model`: per-vendor MSR model (addresses, presence, reserved bits, semantics).
//! - `state`: the guest PMU register file ([`state::PmuState`]) and context-switch order.
//! - `cpuid`: CPUID synthesis for a layout; layout derivation from host CPUID.
//! - `mediated`: KVM's mediated vPMU: the host perf PMU, hardware support, intercepts.
//! - `discovery`: host capability discovery and per-mode availability ([`discovery::HostPmu`]).
//! - `guest`: one vCPU's guest PMU with every decision ([`guest::GuestPmu`]: write, reprogram, verdict).
//! - `clock`: what a decided programming counts on a host without a PMU (the userspace
//!   vPMU's clock model: cycle events only, refusals typed).
//! - `inkernel`: what a VMM writes and checks for KVM's in-kernel x86 vPMU.
//! - `selector`: event-selector decoding and vetting.
//! - `policy`: the operator's event allowlist (TOML), compiled to a KVM filter and a matcher.
//! - [`arm64`]: the arm64 vPMU's pure parts (PMUv3 events, KVM's arm64 event filter, the
//!   arm64 allowlist); arch-neutral.
//!
//! On aarch64 hosts the x86-only modules (`cpuid`, `discovery`, `policy`, `guest`, `clock`,
//! `inkernel`, `mediated`: x86 CPUID/MSR APIs and KVM's x86 event filter) are left out, and `discovery` is the arm64 probe
//! (`aarch64/discovery.rs`: the same names for the modes and the host report).
//!
//! This crate must not depend on `vmm`.

#![forbid(unsafe_code)]

pub mod arm64;
#[cfg(target_arch = "x86_64")]
pub mod clock;
pub mod config;
#[cfg(target_arch = "x86_64")]
pub mod cpuid;
#[cfg(target_arch = "x86_64")]
pub mod discovery;
#[cfg(target_arch = "aarch64")]
#[path = "aarch64/discovery.rs"]
pub mod discovery;
pub mod events;
#[cfg(target_arch = "x86_64")]
pub mod guest;
#[cfg(target_arch = "x86_64")]
pub mod inkernel;
#[cfg(target_arch = "x86_64")]
pub mod mediated;
pub mod mode;
pub mod model;
#[cfg(target_arch = "x86_64")]
pub mod policy;
pub mod selector;
pub mod state;

pub use config::{AmdPmu, IntelPmu, PmuConfig, Vendor};
