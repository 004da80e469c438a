//! The arm64 guest-physical memory map (Firecracker-like).
//!
//! ```text
//! 0x0000_0000 .. 0x3FFF_0000 - n * 128K   unused
//! GIC_REDIST_BASE(n) .. GIC_DIST_BASE     GICv3 redistributors, 2 x 64 KiB per vCPU
//! 0x3FFF_0000 .. 0x4000_0000              GICv3 distributor (64 KiB)
//! 0x4000_0000 .. 0x4000_1000              debug-exit (a store of V ends the VM, status (V << 1) | 1)
//! 0x4000_2000 .. 0x4000_3000              16550A UART (byte registers, SPI 0 = INTID 32)
//! 0x4000_3000 + i * 0x1000                virtio-mmio device i (SPI 1 + i)
//! 0x8000_0000 ..                          RAM: kernel at the start (2 MiB aligned base),
//!                                         initrd and device tree at the top of the boot window
//! ```

/// Start of guest RAM (2 GiB).
pub const DRAM_START: u64 = 0x8000_0000;
/// Highest guest-physical address (exclusive) with the default 40-bit IPA space of a KVM VM.
pub const IPA_LIMIT: u64 = 1 << 40;
/// Most RAM a guest can have: RAM ends at the 40-bit IPA limit.
pub const DRAM_MAX_SIZE: u64 = IPA_LIMIT - DRAM_START;

/// GICv3 distributor base (64 KiB aligned, just below 1 GiB).
pub const GIC_DIST_BASE: u64 = 0x3FFF_0000;
/// GICv3 distributor size.
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
/// Redistributor size per vCPU (RD_base + SGI_base frames).
pub const GIC_REDIST_SIZE_PER_CPU: u64 = 0x2_0000;
/// Interrupt lines of the vGIC (KVM_DEV_ARM_VGIC_GRP_NR_IRQS): SGIs + PPIs + 96 SPIs.
pub const GIC_NR_IRQS: u32 = 128;
/// First SPI INTID; SPI `n` of the device tree is INTID `SPI_BASE + n` and irqfd GSI `n`.
pub const SPI_BASE: u32 = 32;

/// Base of the redistributor region for `cpus` vCPUs (contiguous, right below the
/// distributor).
pub const fn gic_redist_base(cpus: u32) -> u64 {
    GIC_DIST_BASE - gic_redist_size(cpus)
}

/// Size of the redistributor region for `cpus` vCPUs.
pub const fn gic_redist_size(cpus: u32) -> u64 {
    cpus as u64 * GIC_REDIST_SIZE_PER_CPU
}

/// Size of every device window at 1 GiB.
pub const MMIO_LEN: u64 = 0x1000;
/// The debug-exit device: a store of V (1..=4 bytes, little endian) ends the VM with
/// status `(V << 1) | 1`, like QEMU's isa-debug-exit on x86's port 0xf4.
pub const DEBUG_EXIT_BASE: u64 = 0x4000_0000;
/// The 16550A UART (byte-wide registers at offsets 0..8).
pub const SERIAL_BASE: u64 = 0x4000_2000;
/// The UART's SPI (device-tree cell; INTID 32, irqfd GSI 0).
pub const SERIAL_SPI: u32 = 0;
/// The first virtio-mmio device; device `i` is at `VIRTIO_MMIO_BASE + i * MMIO_LEN`.
pub const VIRTIO_MMIO_BASE: u64 = 0x4000_3000;
/// Most virtio-mmio devices (the SPIs 1..=MAX_VIRTIO stay below `GIC_NR_IRQS`).
pub const MAX_VIRTIO: usize = 32;

/// (base, SPI) of virtio-mmio device `index`; `None` past [`MAX_VIRTIO`].
pub fn virtio_mmio(index: usize) -> Option<(u64, u32)> {
    let index = u32::try_from(index)
        .ok()
        .filter(|&i| (i as usize) < MAX_VIRTIO)?;
    Some((
        VIRTIO_MMIO_BASE + u64::from(index) * MMIO_LEN,
        SERIAL_SPI + 1 + index,
    ))
}

/// Where the kernel Image's 2 MiB aligned base goes (the Image itself starts
/// `text_offset` above it).
pub const KERNEL_BASE: u64 = DRAM_START;
/// Most bytes a device tree may take (Documentation/arm64/booting.rst).
pub const FDT_MAX_SIZE: u64 = 0x20_0000;
/// The initrd must lie in a 1 GiB aligned window of at most 32 GiB that covers the kernel:
/// the boot structures stay below `DRAM_START + BOOT_WINDOW`.
pub const BOOT_WINDOW: u64 = 32 << 30;

/// End (exclusive) of the RAM used for boot structures: the end of RAM, capped to the boot
/// window.
pub fn boot_top(mem_size: u64) -> u64 {
    DRAM_START + mem_size.min(BOOT_WINDOW)
}

/// Guest-physical address of the device tree: the last 2 MiB of the boot window (8-byte
/// aligned as booting.rst requires; in fact 2 MiB aligned for page-aligned RAM sizes).
pub fn fdt_addr(mem_size: u64) -> Option<u64> {
    boot_top(mem_size)
        .checked_sub(FDT_MAX_SIZE)
        .filter(|&a| a >= DRAM_START)
        .map(|a| a & !0x7)
}

/// Where an initrd of `size` bytes goes: right below the device tree, page aligned; `None`
/// when it would not fit above `kernel_end` (the end of the kernel's `image_size`).
pub fn initrd_addr(mem_size: u64, kernel_end: u64, size: u64) -> Option<u64> {
    let fdt = fdt_addr(mem_size)?;
    let start = fdt.checked_sub(size)? & !0xfff;
    (start >= kernel_end).then_some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_do_not_overlap() {
        // GIC for the most vCPUs ends at the distributor, which ends at the first device.
        assert!(gic_redist_base(32) >= 0x3000_0000);
        assert_eq!(gic_redist_base(1) + gic_redist_size(1), GIC_DIST_BASE);
        assert_eq!(GIC_DIST_BASE + GIC_DIST_SIZE, DEBUG_EXIT_BASE);
        const { assert!(DEBUG_EXIT_BASE + MMIO_LEN <= SERIAL_BASE) };
        assert_eq!(SERIAL_BASE + MMIO_LEN, VIRTIO_MMIO_BASE);
        let (last, spi) = virtio_mmio(MAX_VIRTIO - 1).unwrap();
        assert!(last + MMIO_LEN <= DRAM_START);
        assert!(SPI_BASE + spi < GIC_NR_IRQS);
        assert_eq!(virtio_mmio(MAX_VIRTIO), None);
        assert_eq!(virtio_mmio(0), Some((0x4000_3000, 1)));
        assert_eq!(GIC_DIST_BASE % 0x1_0000, 0);
        assert_eq!(gic_redist_base(3) % 0x1_0000, 0);
        assert_eq!(KERNEL_BASE % 0x20_0000, 0);
    }

    #[test]
    fn guest_image_cmdline_uses_this_uart() {
        // resources/linux/build-image.sh --arch arm64 writes earlycon=uart,mmio,$ARM64_UART_BASE
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../resources/linux/build-image.sh");
        let text = std::fs::read_to_string(&script).expect("build-image.sh");
        assert!(
            text.contains(&format!("ARM64_UART_BASE:-{SERIAL_BASE:#x}}}")),
            "build-image.sh's ARM64_UART_BASE default must be {SERIAL_BASE:#x}"
        );
    }

    #[test]
    fn boot_structures() {
        let m = 512 << 20;
        assert_eq!(fdt_addr(m), Some(DRAM_START + m - FDT_MAX_SIZE));
        let fdt = fdt_addr(m).unwrap();
        let i = initrd_addr(m, DRAM_START + (40 << 20), 12 << 20).unwrap();
        assert_eq!(i % 4096, 0);
        assert!(i + (12 << 20) <= fdt);
        assert_eq!(initrd_addr(m, DRAM_START + (500 << 20), 12 << 20), None);
        assert_eq!(initrd_addr(m, DRAM_START, u64::MAX), None);
        // Large RAM: the boot structures stay in the first 32 GiB.
        assert_eq!(
            fdt_addr(1 << 39),
            Some(DRAM_START + BOOT_WINDOW - FDT_MAX_SIZE)
        );
        assert_eq!(fdt_addr(1 << 20), None);
    }
}
