//! The arm64 backend (aarch64 hosts): builds a KVM VM with a GICv3, PSCI vCPUs, a 16550
//! and a debug-exit device on MMIO and virtio-mmio disks, boots an arm64 Linux `Image`
//! (or a freestanding guest in the same format, docs/GUESTS.md) with a device tree, and
//! runs the vCPUs until PSCI SYSTEM_OFF/RESET, a debug-exit store or an error.
//!
//! The layout, device tree and register values come from `arch::aarch64`; this module
//! only applies them with KVM ioctls.
//!
//! - [`vm`]: [`vm::run`], [`vm::probe_host`], [`vm::RunReport`] (the x86 backend's names).
//! - `gic`: the in-kernel GICv3 (KVM_CREATE_DEVICE).
//! - `pmu`: KVM's PMUv3 for `--pmu emulated` (feature, filter from the policy, IRQ, INIT)
//!   and the exit-time ("sampled") audit.
//! - `boot`: Image, initrd and device tree into guest memory.
//! - `vcpu`: vCPU init, boot registers and the KVM_RUN loop (its `Shared` is what
//!   `crate::console` waits on and forwards stdin through, as on x86).

mod boot;
mod gic;
mod pmu;
pub(crate) mod vcpu;
pub mod vm;
