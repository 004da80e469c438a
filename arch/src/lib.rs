//! Boot structures for vpmu-vmm: x86_64 (the modules at the top level, x86_64 hosts only)
//! and arm64 ([`aarch64`], plain values, compiled on every host so that it is unit-tested
//! everywhere; vmm applies it on aarch64 hosts).
//!
//! Every module produces plain values (or writes them to guest memory); none of them
//! issue KVM ioctls, so the vmm decides when and on which vCPU to apply them.
//!
//! - [`layout`]: the guest-physical memory map (GDT, zero page, page tables, command
//!   line, MP table, MMIO gap), RAM regions and initrd placement.
//! - [`gdt`]: segment descriptor encoding, the boot GDT, conversion to `kvm_segment`.
//! - [`paging`]: 4 GiB identity map with 2 MiB pages, optionally user accessible.
//! - [`regs`]: special/general/FPU registers and MSRs for long mode, the Linux 64-bit
//!   boot protocol and the PVH entry.
//! - [`e820`]: the guest's physical memory map (shared by the zero page and PVH).
//! - [`zero_page`]: Linux `boot_params` for the 64-bit boot protocol, with header checks.
//! - [`pvh`]: PVH `hvm_start_info` + memory map writer.
//! - [`mptable`]: Intel MP specification 1.4 tables (CPUs, ISA bus, IOAPIC, IRQ routing).
//! - [`acpi`]: minimal ACPI 6.3 tables (RSDP, XSDT, FADT, FACS, DSDT with the legacy
//!   devices and the virtio-mmio disks, MADT) for guests that find CPUs and devices only
//!   through ACPI.
//! - [`cpuid`]: per-vCPU CPUID topology normalisation (APIC ids, core counts); leaves
//!   describing the PMU are deliberately left to the `vpmu` crate.
#![deny(missing_docs)]

pub mod aarch64;
#[cfg(target_arch = "x86_64")]
pub mod acpi;
#[cfg(target_arch = "x86_64")]
pub mod cpuid;
#[cfg(target_arch = "x86_64")]
pub mod e820;
#[cfg(target_arch = "x86_64")]
pub mod gdt;
#[cfg(target_arch = "x86_64")]
pub mod layout;
#[cfg(target_arch = "x86_64")]
pub mod mptable;
#[cfg(target_arch = "x86_64")]
pub mod paging;
#[cfg(target_arch = "x86_64")]
pub mod pvh;
#[cfg(target_arch = "x86_64")]
pub mod regs;
#[cfg(target_arch = "x86_64")]
pub mod zero_page;
