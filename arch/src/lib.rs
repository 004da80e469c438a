//! x86_64 boot structures ([`x86_64`], x86_64 hosts only; Linux 64-bit boot protocol,
//! PVH, MP and ACPI tables) and arm64 ones ([`aarch64`], plain values, compiled on every
//! host so that it is unit-tested everywhere; vmm applies it on aarch64 hosts). Each
//! architecture's module has the same shape: `layout` (the guest-physical memory map),
//! `regs` (the boot vCPU state) and the firmware tables its guests read.
//!
//! Every module produces plain values (or writes them to guest memory); none of them
//! issue KVM ioctls, so the vmm decides when and on which vCPU to apply them.
#![deny(missing_docs)]

pub mod aarch64;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;
