//! Guest-physical memory layout used when booting a guest.
//!
//! ```text
//! 0x0000_0000 .. 0x0000_0500   real-mode IVT / BDA (left untouched, zero)
//! 0x0000_0500 .. 0x0000_0540   boot GDT (BOOT_GDT_ENTRIES * 8 bytes)
//! 0x0000_0540                  boot IDT (limit 0: any exception before the guest
//!                              loads its own IDT is a triple fault)
//! 0x0000_0580 .. 0x0000_05e8   boot TSS (RSP0 = boot stack)
//! 0x0000_6000 .. 0x0000_7000   PVH hvm_start_info, module list, memory map
//! 0x0000_7000 .. 0x0000_8000   Linux zero page (struct boot_params)
//! 0x0000_8ff0                  initial stack pointer (grows down)
//! 0x0000_9000                  PML4
//! 0x0000_a000                  PDPT
//! 0x0000_b000 .. 0x0000_f000   4 page directories (2 MiB pages, 4 GiB identity map)
//! 0x0002_0000 .. 0x0003_0000   kernel command line (CMDLINE_MAX_SIZE bytes)
//! 0x0009_fc00 .. 0x000a_0000   EBDA: MP floating pointer + MP configuration table
//!                              (large tables spill into the legacy VGA hole, which is
//!                              not RAM in the e820 map)
//! 0x000e_0000 .. 0x0010_0000   ACPI tables (RSDP first, where Linux's BIOS-area scan
//!                              finds it; reserved in the e820 map)
//! 0x0010_0000                  HIMEM_START: kernels are loaded here or above
//! 0xc000_0000 .. 0x1_0000_0000 32-bit MMIO gap:
//! 0xd000_0000 ..               virtio-mmio devices, 4 KiB each (VIRTIO_MMIO_BASE)
//! 0xfec0_0000                  IOAPIC
//! 0xfee0_0000                  LAPIC (also the MSI address window)
//! 0xfffb_d000 .. 0xfffc_0000   KVM's real-mode TSS (3 pages, KVM_SET_TSS_ADDR)
//! 0x1_0000_0000 ..             RAM above 4 GiB when memory is larger than the gap start
//! ```

use vm_memory::GuestAddress;

/// Guest-physical address of the boot GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// Guest-physical address of the (empty) boot IDT.
pub const BOOT_IDT_START: u64 = 0x540;
/// Guest-physical address of the boot TSS.
pub const BOOT_TSS_START: u64 = 0x580;
/// Size of a 64-bit TSS.
pub const BOOT_TSS_SIZE: usize = 0x68;
/// Start of the PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// Start of the PVH module list (one entry: the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// Start of the PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x6060;
/// Most PVH memory-map entries that fit before the zero page.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = ((ZERO_PAGE_START - PVH_MEMMAP_START) / 24) as usize;
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table (CR3).
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPT_START: u64 = 0xa000;
/// First of the four page directories.
pub const PD_START: u64 = 0xb000;
/// Number of page directories (one per GiB identity mapped).
pub const PD_COUNT: u64 = 4;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Start of the extended BIOS data area; the MP table lives here.
pub const EBDA_START: u64 = 0x9fc00;
/// MP floating pointer structure + configuration table.
pub const MPTABLE_START: u64 = EBDA_START;
/// End of conventional ("low") memory (640 KiB).
pub const LOW_MEM_END: u64 = 0xa0000;
/// Start of the ACPI tables (the RSDP, 16-byte aligned, in the BIOS area
/// 0xe0000..0xfffff that Linux scans when not told the RSDP address).
pub const ACPI_START: u64 = 0xe_0000;
/// End (exclusive) of the region reserved for the ACPI tables.
pub const ACPI_END: u64 = HIMEM_START;
/// Start of high memory: kernels are loaded here.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End (exclusive) of the 32-bit MMIO gap; RAM resumes here.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Size of the 32-bit MMIO gap.
pub const MMIO_GAP_SIZE: u64 = MMIO_GAP_END - MMIO_GAP_START;
/// IOAPIC base address.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Local APIC base address.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// Guest-physical address of the three pages KVM uses for the real-mode TSS on Intel
/// (KVM_SET_TSS_ADDR): just below the 4 GiB boundary, in the MMIO gap, clear of the
/// LAPIC and of any RAM.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// Guest-physical base of the first virtio-mmio device; device `i` is at
/// `VIRTIO_MMIO_BASE + i * 0x1000` (inside the 32-bit MMIO gap, far below the IOAPIC and
/// the LAPIC).
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Interrupt lines of the virtio-mmio devices, in order: ISA IRQs that no other device
/// uses (0 PIT, 1 i8042, 2 cascade, 3 COM2, 4 COM1, 8 RTC, 12 i8042 aux, 13 FPU), all
/// routed 1:1 to IOAPIC pins in the MP table and the default KVM GSI routing.
pub const VIRTIO_MMIO_GSIS: [u32; 8] = [5, 6, 7, 9, 10, 11, 14, 15];

/// The MSI address that targets the LAPIC with `apic_id` (physical destination mode,
/// SDM vol. 3A 11.11.1): the LAPIC window with the destination ID in bits 19:12.
pub const fn msi_address(apic_id: u8) -> u32 {
    // The LAPIC window is below 4 GiB (checked at compile time below).
    #[allow(clippy::cast_possible_truncation)]
    let lapic = LAPIC_ADDR as u32;
    lapic | ((apic_id as u32) << 12)
}
const _: () = assert!(LAPIC_ADDR <= u32::MAX as u64);
/// Default `initrd_addr_max` for boot protocol versions older than 2.03.
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
/// Page size used to align the initrd.
pub const PAGE_SIZE: u64 = 0x1000;

// The fixed structures must not overlap (checked at compile time).
const _: () = {
    assert!(MMIO_GAP_START <= VIRTIO_MMIO_BASE);
    assert!(VIRTIO_MMIO_BASE + 0x1000 * VIRTIO_MMIO_GSIS.len() as u64 <= IOAPIC_ADDR);
    assert!(LAPIC_ADDR + PAGE_SIZE <= KVM_TSS_ADDR);
    assert!(KVM_TSS_ADDR + 3 * PAGE_SIZE <= MMIO_GAP_END);
    assert!(BOOT_GDT_START + 8 * crate::x86_64::gdt::BOOT_GDT_ENTRIES as u64 <= BOOT_IDT_START);
    assert!(BOOT_IDT_START + 8 <= BOOT_TSS_START);
    assert!(BOOT_TSS_START + BOOT_TSS_SIZE as u64 <= PVH_INFO_START);
    assert!(PVH_INFO_START + 56 <= PVH_MODLIST_START);
    assert!(PVH_MODLIST_START + 32 <= PVH_MEMMAP_START);
    assert!(PVH_MEMMAP_START + 24 * PVH_MEMMAP_MAX_ENTRIES as u64 <= ZERO_PAGE_START);
    assert!(ZERO_PAGE_START + 4096 <= BOOT_STACK_POINTER);
    assert!(BOOT_STACK_POINTER < PML4_START);
    assert!(PDPT_START == PML4_START + 0x1000);
    assert!(PD_START == PDPT_START + 0x1000);
    assert!(PD_START + PD_COUNT * 0x1000 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    assert!(LOW_MEM_END <= ACPI_START && ACPI_START.is_multiple_of(16) && ACPI_END <= HIMEM_START);
    assert!(IOAPIC_ADDR >= MMIO_GAP_START && IOAPIC_ADDR < MMIO_GAP_END);
    assert!(LAPIC_ADDR >= MMIO_GAP_START && LAPIC_ADDR < MMIO_GAP_END);
};

/// Errors of layout computations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The initrd does not fit between the kernel end and the top of usable low memory.
    #[error(
        "initrd of {initrd_size:#x} bytes does not fit: kernel ends at {kernel_end:#x}, \
         usable memory ends at {limit:#x}"
    )]
    InitrdTooLarge {
        /// Size of the initrd.
        initrd_size: u64,
        /// End of the loaded kernel.
        kernel_end: u64,
        /// Top of memory usable for the initrd (exclusive).
        limit: u64,
    },
}

/// RAM regions backing `mem_size` bytes of guest memory: one region below the MMIO gap
/// and, when `mem_size` exceeds [`MMIO_GAP_START`], a second one starting at 4 GiB.
///
/// Returns an empty vector for `mem_size == 0`.
#[allow(clippy::cast_possible_truncation)] // 64-bit hosts only: usize is u64
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    if mem_size == 0 {
        return Vec::new();
    }
    if mem_size <= MMIO_GAP_START {
        return vec![(GuestAddress(0), mem_size as usize)];
    }
    vec![
        (GuestAddress(0), MMIO_GAP_START as usize),
        (
            GuestAddress(MMIO_GAP_END),
            (mem_size - MMIO_GAP_START) as usize,
        ),
    ]
}

/// End (exclusive) of guest RAM below the MMIO gap.
pub fn low_mem_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

/// Where to load an initrd of `initrd_size` bytes: as high as possible in low memory,
/// page aligned, below the MMIO gap, below the end of guest RAM and ending at or before
/// `initrd_addr_max + 1` (the bzImage header's `initrd_addr_max`, the highest address the
/// initrd may occupy; `0` means the protocol default [`DEFAULT_INITRD_ADDR_MAX`]), and at
/// or above `kernel_end` (and [`HIMEM_START`]).
pub fn initrd_addr(
    mem_size: u64,
    initrd_size: u64,
    kernel_end: u64,
    initrd_addr_max: u32,
) -> Result<GuestAddress, LayoutError> {
    let max = if initrd_addr_max == 0 {
        DEFAULT_INITRD_ADDR_MAX
    } else {
        u64::from(initrd_addr_max)
    };
    let limit = low_mem_end(mem_size).min(max + 1);
    let floor = kernel_end.max(HIMEM_START);
    let err = LayoutError::InitrdTooLarge {
        initrd_size,
        kernel_end,
        limit,
    };
    let start = limit.checked_sub(initrd_size).ok_or(err.clone())? & !(PAGE_SIZE - 1);
    if start < floor {
        return Err(err);
    }
    Ok(GuestAddress(start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn msi_address_targets_the_lapic_window() {
        assert_eq!(msi_address(0), 0xfee0_0000);
        assert_eq!(msi_address(3), 0xfee0_3000);
        assert_eq!(msi_address(255), 0xfeef_f000);
    }

    #[test]
    #[allow(clippy::cast_possible_truncation)] // 64-bit hosts only
    fn regions_small_and_large() {
        assert!(ram_regions(0).is_empty());
        assert_eq!(ram_regions(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
        assert_eq!(
            ram_regions(MMIO_GAP_START),
            vec![(GuestAddress(0), MMIO_GAP_START as usize)]
        );
        assert_eq!(
            ram_regions(8 << 30),
            vec![
                (GuestAddress(0), MMIO_GAP_START as usize),
                (
                    GuestAddress(1 << 32),
                    (8usize << 30) - MMIO_GAP_START as usize
                )
            ]
        );
    }

    #[test]
    fn initrd_examples() {
        // 256 MiB guest, 1 MiB initrd: top of RAM, page aligned.
        let a = initrd_addr(256 << 20, 1 << 20, 0x200_0000, 0x7fff_ffff).unwrap();
        assert_eq!(a.0, (256 << 20) - (1 << 20));
        // Header limit below RAM end.
        let a = initrd_addr(2 << 30, 0x1234, 0x200_0000, 0x37ff_ffff).unwrap();
        assert_eq!(a.0, (0x3800_0000 - 0x1234) & !0xfff);
        // Default when 0.
        let b = initrd_addr(2 << 30, 0x1234, 0x200_0000, 0).unwrap();
        assert_eq!(a, b);
        // Large memory: stays below the gap.
        let a = initrd_addr(16 << 30, 4096, 0x200_0000, u32::MAX).unwrap();
        assert_eq!(a.0, MMIO_GAP_START - 4096);
        // Too large.
        assert!(initrd_addr(64 << 20, 63 << 20, 0x200_0000, u32::MAX).is_err());
        assert!(initrd_addr(64 << 20, u64::MAX, 0, u32::MAX).is_err());
    }

    proptest! {
        #[test]
        fn initrd_placement_invariants(
            mem in 0u64..(64u64 << 30),
            size in 0u64..(1u64 << 31),
            kend in 0u64..(1u64 << 30),
            max in any::<u32>(),
        ) {
            if let Ok(a) = initrd_addr(mem, size, kend, max) {
                let a = a.0;
                prop_assert_eq!(a % PAGE_SIZE, 0);
                prop_assert!(a >= kend && a >= HIMEM_START);
                prop_assert!(a + size <= low_mem_end(mem));
                prop_assert!(a + size <= MMIO_GAP_START);
                let eff_max = if max == 0 { DEFAULT_INITRD_ADDR_MAX } else { u64::from(max) };
                prop_assert!(size == 0 || a + size - 1 <= eff_max);
            }
        }

        #[test]
        fn regions_cover_mem_and_avoid_gap(mem in 1u64..(1u64 << 40)) {
            let r = ram_regions(mem);
            let total: u64 = r.iter().map(|(_, l)| *l as u64).sum();
            prop_assert_eq!(total, mem);
            for (a, l) in &r {
                let end = a.0 + *l as u64;
                prop_assert!(end <= MMIO_GAP_START || a.0 >= MMIO_GAP_END);
            }
        }
    }
}
