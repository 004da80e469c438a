//! The guest physical memory map, as given to Linux (zero page e820 table) and to PVH
//! guests (`hvm_memmap_table_entry`).
//!
//! ```text
//! [0, EBDA_START)                  RAM        (conventional memory below the EBDA)
//! [EBDA_START, LOW_MEM_END)        reserved   (EBDA: MP floating pointer + table)
//! [LOW_MEM_END, ACPI_START)        not listed (VGA hole / option ROMs: Linux treats
//!                                              unlisted ranges as not RAM)
//! [ACPI_START, ACPI_END)           reserved   (BIOS area: ACPI tables, RSDP)
//! [HIMEM_START, low_mem_end)       RAM
//! [MMIO_GAP_START, MMIO_GAP_END)   reserved   (IOAPIC, LAPIC, future MMIO)
//! [MMIO_GAP_END, ..)               RAM        (only when memory exceeds the gap start)
//! ```

use crate::x86_64::layout::{
    low_mem_end, ACPI_END, ACPI_START, EBDA_START, HIMEM_START, LOW_MEM_END, MMIO_GAP_END,
    MMIO_GAP_START,
};

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;

/// Smallest guest memory a Linux-style memory map is built for: RAM must extend past 1 MiB.
pub const MIN_MEM_SIZE: u64 = HIMEM_START + 0x10_0000;

/// One memory-map range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// Errors building the memory map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum E820Error {
    /// Not enough memory for a kernel above 1 MiB.
    #[error("guest memory of {mem_size:#x} bytes is too small (need at least {min:#x})")]
    MemoryTooSmall {
        /// Requested size.
        mem_size: u64,
        /// Minimum.
        min: u64,
    },
}

/// Memory map for `mem_size` bytes of RAM laid out by [`crate::x86_64::layout::ram_regions`];
/// sorted by address, non-overlapping.
pub fn e820_map(mem_size: u64) -> Result<Vec<E820Entry>, E820Error> {
    if mem_size < MIN_MEM_SIZE {
        return Err(E820Error::MemoryTooSmall {
            mem_size,
            min: MIN_MEM_SIZE,
        });
    }
    let e = |addr: u64, end: u64, kind| E820Entry {
        addr,
        size: end - addr,
        kind,
    };
    let mut map = vec![
        e(0, EBDA_START, E820_RAM),
        e(EBDA_START, LOW_MEM_END, E820_RESERVED),
        e(ACPI_START, ACPI_END, E820_RESERVED),
        e(HIMEM_START, low_mem_end(mem_size), E820_RAM),
        e(MMIO_GAP_START, MMIO_GAP_END, E820_RESERVED),
    ];
    if mem_size > MMIO_GAP_START {
        map.push(e(
            MMIO_GAP_END,
            MMIO_GAP_END + (mem_size - MMIO_GAP_START),
            E820_RAM,
        ));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::layout::ram_regions;
    use proptest::prelude::*;

    #[test]
    fn small_guest() {
        let m = e820_map(256 << 20).unwrap();
        assert_eq!(m.len(), 5);
        assert_eq!(
            m[0],
            E820Entry {
                addr: 0,
                size: 0x9fc00,
                kind: E820_RAM
            }
        );
        assert_eq!(
            m[1],
            E820Entry {
                addr: 0x9fc00,
                size: 0x400,
                kind: E820_RESERVED
            }
        );
        assert_eq!(
            m[2],
            E820Entry {
                addr: 0xe_0000,
                size: 0x2_0000,
                kind: E820_RESERVED
            },
            "ACPI tables"
        );
        assert_eq!(
            m[3],
            E820Entry {
                addr: 0x10_0000,
                size: (256 << 20) - 0x10_0000,
                kind: E820_RAM
            }
        );
        assert_eq!(m[4].kind, E820_RESERVED);
        assert!(e820_map(MIN_MEM_SIZE - 1).is_err());
    }

    #[test]
    fn large_guest() {
        let m = e820_map(6 << 30).unwrap();
        assert_eq!(m.len(), 6);
        assert_eq!(
            m[5],
            E820Entry {
                addr: 1 << 32,
                size: (6u64 << 30) - 0xc000_0000,
                kind: E820_RAM
            }
        );
    }

    proptest! {
        #[test]
        fn map_is_sorted_disjoint_and_backed(mem in MIN_MEM_SIZE..(1u64 << 40)) {
            let m = e820_map(mem).unwrap();
            for w in m.windows(2) {
                prop_assert!(w[0].addr + w[0].size <= w[1].addr);
            }
            let regions = ram_regions(mem);
            let mut ram = 0;
            for e in m.iter().filter(|e| e.kind == E820_RAM) {
                prop_assert!(e.size > 0);
                ram += e.size;
                // Every RAM range is backed by guest memory.
                let backed = regions.iter().any(|(a, l)| e.addr >= a.0 && e.addr + e.size <= a.0 + *l as u64);
                prop_assert!(backed);
                // No RAM in the MMIO gap.
                prop_assert!(e.addr + e.size <= MMIO_GAP_START || e.addr >= MMIO_GAP_END);
            }
            // Everything except the EBDA and the 640K-1M hole is RAM.
            prop_assert_eq!(ram, mem - (HIMEM_START - EBDA_START));
            // The ACPI tables are inside a reserved range.
            prop_assert!(m.iter().any(|e| e.kind == E820_RESERVED
                && e.addr <= ACPI_START && ACPI_END <= e.addr + e.size));
        }
    }
}
