//! arm64 boot structures for vpmu-vmm: the guest-physical memory map, the Image header
//! checks, the flattened device tree, and the KVM register ids and constants the vCPU
//! setup needs.
//!
//! Like the x86 modules, nothing here issues a KVM ioctl: every item produces plain values,
//! so this module is compiled (and unit-tested) on every host architecture; the KVM glue
//! that applies them lives in `vmm::aarch64` (aarch64 hosts only).
//!
//! - [`layout`]: the memory map (RAM at 2 GiB, GICv3 below 1 GiB, the 16550, the
//!   debug-exit and the virtio-mmio devices at 1 GiB), interrupt numbers, where the kernel,
//!   the initrd and the device tree go.
//! - [`image`]: arm64 Linux `Image` header parsing and sanity checks (magic, sizes, a
//!   truncated file), before linux-loader copies it.
//! - [`fdt`]: the device tree a Linux guest boots with (vm-fdt).
//! - [`regs`]: KVM ONE_REG ids of the boot registers, PSTATE, vCPU features, PSCI system
//!   events.

pub mod fdt;
pub mod image;
pub mod layout;
pub mod regs;
