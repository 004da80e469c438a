//! PVH boot: `hvm_start_info`, its module list (the initrd) and memory map
//! (<https://xenbits.xen.org/docs/unstable/misc/pvh.html>, `xen/include/public/arch-x86/hvm/start_info.h`).
//!
//! Structures are serialised field by field in little-endian order (no `unsafe`
//! `ByteValued` impls needed); their sizes are checked against `linux_loader`'s bindgen
//! definitions in the tests.
//!
//! Layout: `hvm_start_info` at [`PVH_INFO_START`], one module entry at
//! [`PVH_MODLIST_START`], the memory map (from [`crate::x86_64::e820::e820_map`]) at
//! [`PVH_MEMMAP_START`]. The vCPU starts with RBX = [`PVH_INFO_START`] (see
//! [`crate::x86_64::regs::pvh_regs`]).

use linux_loader::loader::elf::start_info::XEN_HVM_START_MAGIC_VALUE;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::x86_64::e820::{e820_map, E820Error, E820_RAM, E820_RESERVED};
use crate::x86_64::layout::{
    PVH_INFO_START, PVH_MEMMAP_MAX_ENTRIES, PVH_MEMMAP_START, PVH_MODLIST_START,
};

/// `hvm_start_info.version` (1: has the memory map fields).
pub const START_INFO_VERSION: u32 = 1;
/// Size of `hvm_start_info`.
pub const START_INFO_SIZE: usize = 56;
/// Size of `hvm_modlist_entry`.
pub const MODLIST_ENTRY_SIZE: usize = 32;
/// Size of `hvm_memmap_table_entry`.
pub const MEMMAP_ENTRY_SIZE: usize = 24;

/// PVH errors.
#[derive(Debug, thiserror::Error)]
pub enum PvhError {
    /// Memory map.
    #[error("building the PVH memory map: {0}")]
    E820(#[from] E820Error),
    /// Too many memory map entries for the reserved area.
    #[error("{0} memory map entries exceed the {PVH_MEMMAP_MAX_ENTRIES} that fit")]
    TooManyEntries(usize),
    /// Guest memory write.
    #[error("writing PVH {what} at {addr:#x}: {source}")]
    Write {
        /// Which structure.
        what: &'static str,
        /// Address.
        addr: u64,
        /// Underlying error.
        source: GuestMemoryError,
    },
}

/// Serialised `hvm_start_info` (version 1). `rsdp` is the ACPI RSDP address (0 = none).
pub fn start_info_bytes(
    nr_modules: u32,
    cmdline: Option<GuestAddress>,
    rsdp: Option<GuestAddress>,
    memmap_entries: u32,
) -> [u8; START_INFO_SIZE] {
    let mut b = [0u8; START_INFO_SIZE];
    b[0..4].copy_from_slice(&XEN_HVM_START_MAGIC_VALUE.to_le_bytes());
    b[4..8].copy_from_slice(&START_INFO_VERSION.to_le_bytes());
    // flags (8..12) = 0
    b[12..16].copy_from_slice(&nr_modules.to_le_bytes());
    let modlist = if nr_modules > 0 { PVH_MODLIST_START } else { 0 };
    b[16..24].copy_from_slice(&modlist.to_le_bytes());
    b[24..32].copy_from_slice(&cmdline.map_or(0, |a| a.0).to_le_bytes());
    b[32..40].copy_from_slice(&rsdp.map_or(0, |a| a.0).to_le_bytes());
    b[40..48].copy_from_slice(&PVH_MEMMAP_START.to_le_bytes());
    b[48..52].copy_from_slice(&memmap_entries.to_le_bytes());
    b
}

/// Writes the start info, module list and memory map; returns the address to pass in RBX.
///
/// `cmdline` is the NUL-terminated command line's address (if any); `initrd` becomes
/// module 0; `rsdp` is the ACPI RSDP ([`crate::x86_64::acpi::write_acpi_tables`]), if any.
pub fn write_start_info<M: GuestMemory + ?Sized>(
    mem: &M,
    mem_size: u64,
    cmdline: Option<GuestAddress>,
    initrd: Option<(GuestAddress, u64)>,
    rsdp: Option<GuestAddress>,
) -> Result<GuestAddress, PvhError> {
    let wr = |what, addr: u64, bytes: &[u8]| {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|source| PvhError::Write { what, addr, source })
    };
    let map = e820_map(mem_size)?;
    if map.len() > PVH_MEMMAP_MAX_ENTRIES {
        return Err(PvhError::TooManyEntries(map.len()));
    }
    let mut mm = Vec::with_capacity(map.len() * MEMMAP_ENTRY_SIZE);
    for e in &map {
        mm.extend_from_slice(&e.addr.to_le_bytes());
        mm.extend_from_slice(&e.size.to_le_bytes());
        let t = match e.kind {
            E820_RAM => linux_loader::loader::elf::start_info::XEN_HVM_MEMMAP_TYPE_RAM,
            E820_RESERVED => linux_loader::loader::elf::start_info::XEN_HVM_MEMMAP_TYPE_RESERVED,
            other => other,
        };
        mm.extend_from_slice(&t.to_le_bytes());
        mm.extend_from_slice(&0u32.to_le_bytes());
    }
    wr("memory map", PVH_MEMMAP_START, &mm)?;
    let mut nr_modules = 0;
    if let Some((addr, size)) = initrd {
        let mut m = [0u8; MODLIST_ENTRY_SIZE];
        m[0..8].copy_from_slice(&addr.0.to_le_bytes());
        m[8..16].copy_from_slice(&size.to_le_bytes());
        wr("module list", PVH_MODLIST_START, &m)?;
        nr_modules = 1;
    }
    let entries = u32::try_from(map.len()).expect("the e820 map has a handful of entries");
    let si = start_info_bytes(nr_modules, cmdline, rsdp, entries);
    wr("start info", PVH_INFO_START, &si)?;
    Ok(GuestAddress(PVH_INFO_START))
}

#[cfg(test)]
mod tests {
    use super::*;
    use linux_loader::loader::elf::start_info::{
        hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
    };
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn sizes_match_bindings() {
        assert_eq!(std::mem::size_of::<hvm_start_info>(), START_INFO_SIZE);
        assert_eq!(std::mem::size_of::<hvm_modlist_entry>(), MODLIST_ENTRY_SIZE);
        assert_eq!(
            std::mem::size_of::<hvm_memmap_table_entry>(),
            MEMMAP_ENTRY_SIZE
        );
        assert_eq!(std::mem::offset_of!(hvm_start_info, memmap_paddr), 40);
        assert_eq!(std::mem::offset_of!(hvm_start_info, memmap_entries), 48);
        assert_eq!(std::mem::offset_of!(hvm_start_info, cmdline_paddr), 24);
        assert_eq!(std::mem::offset_of!(hvm_start_info, rsdp_paddr), 32);
    }

    #[test]
    fn written_structures() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let a = write_start_info(
            &mem,
            64 << 20,
            Some(GuestAddress(0x20000)),
            Some((GuestAddress(0x300_0000), 0x1000)),
            Some(GuestAddress(0xe_0000)),
        )
        .unwrap();
        assert_eq!(a.0, PVH_INFO_START);
        let r32 = |x: u64| -> u32 { mem.read_obj(GuestAddress(x)).unwrap() };
        let r64 = |x: u64| -> u64 { mem.read_obj(GuestAddress(x)).unwrap() };
        assert_eq!(r32(a.0), 0x336e_c578);
        assert_eq!(r32(a.0 + 4), 1);
        assert_eq!(r32(a.0 + 12), 1, "nr_modules");
        assert_eq!(r64(a.0 + 16), PVH_MODLIST_START);
        assert_eq!(r64(a.0 + 24), 0x20000);
        assert_eq!(r64(a.0 + 32), 0xe_0000, "rsdp_paddr");
        assert_eq!(r64(a.0 + 40), PVH_MEMMAP_START);
        assert_eq!(r32(a.0 + 48), 5);
        assert_eq!(r64(PVH_MODLIST_START), 0x300_0000);
        assert_eq!(r64(PVH_MODLIST_START + 8), 0x1000);
        // Fourth map entry: RAM from 1 MiB (after the EBDA and the ACPI area).
        let e = PVH_MEMMAP_START + 3 * MEMMAP_ENTRY_SIZE as u64;
        assert_eq!(
            (r64(e), r64(e + 8), r32(e + 16)),
            (0x10_0000, (63 << 20), 1)
        );
        assert_eq!(r32(PVH_MEMMAP_START + MEMMAP_ENTRY_SIZE as u64 + 16), 2);
    }

    #[test]
    fn no_modules_no_cmdline() {
        let b = start_info_bytes(0, None, None, 3);
        assert_eq!(&b[16..40], &[0u8; 24]);
    }
}
