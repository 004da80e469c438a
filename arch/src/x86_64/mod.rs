//! x86_64 boot structures.
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

pub mod acpi;
pub mod cpuid;
pub mod e820;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod paging;
pub mod pvh;
pub mod regs;
pub mod zero_page;
