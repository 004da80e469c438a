//! Identity map of the first 4 GiB with 2 MiB pages.
//!
//! PML4\[0\] -> PDPT; PDPT\[i\] -> PD i (i in 0..4); PD i entry j maps
//! `i GiB + j * 2 MiB` with PS=1. Every entry is present and writable. With
//! `user_accessible` the U/S bit is set on every level, so freestanding guests can drop
//! to CPL3 and keep running on these tables.

use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::x86_64::layout::{PDPT_START, PD_COUNT, PD_START, PML4_START};

/// Present.
pub const PTE_P: u64 = 1 << 0;
/// Writable.
pub const PTE_RW: u64 = 1 << 1;
/// User accessible.
pub const PTE_US: u64 = 1 << 2;
/// Page size (2 MiB page in a PD entry).
pub const PTE_PS: u64 = 1 << 7;
/// Bytes mapped by one PD entry.
pub const PAGE_2M: u64 = 2 << 20;

/// Errors writing page tables.
#[derive(Debug, thiserror::Error)]
pub enum PagingError {
    /// Guest memory write failed.
    #[error("writing page table at {addr:#x}: {source}")]
    Write {
        /// Guest address of the table.
        addr: u64,
        /// Underlying error.
        source: GuestMemoryError,
    },
}

/// The tables as (guest address, 512 entries), PML4 first.
pub fn identity_map_tables(user_accessible: bool) -> Vec<(u64, Box<[u64; 512]>)> {
    let us = if user_accessible { PTE_US } else { 0 };
    let table_flags = PTE_P | PTE_RW | us;
    let mut out = Vec::new();
    let mut pml4 = Box::new([0u64; 512]);
    pml4[0] = PDPT_START | table_flags;
    out.push((PML4_START, pml4));
    let mut pdpt = Box::new([0u64; 512]);
    for (entry, i) in pdpt.iter_mut().zip(0..PD_COUNT) {
        *entry = (PD_START + i * 0x1000) | table_flags;
    }
    out.push((PDPT_START, pdpt));
    for i in 0..PD_COUNT {
        let mut pd = Box::new([0u64; 512]);
        for (j, e) in pd.iter_mut().enumerate() {
            *e = ((i << 30) + j as u64 * PAGE_2M) | table_flags | PTE_PS;
        }
        out.push((PD_START + i * 0x1000, pd));
    }
    out
}

/// Writes the identity map; returns the value for CR3 ([`PML4_START`]).
pub fn write_identity_map<M: GuestMemory + ?Sized>(
    mem: &M,
    user_accessible: bool,
) -> Result<u64, PagingError> {
    for (addr, table) in identity_map_tables(user_accessible) {
        let mut bytes = vec![0u8; 4096];
        for (chunk, e) in bytes.chunks_exact_mut(8).zip(table.iter()) {
            chunk.copy_from_slice(&e.to_le_bytes());
        }
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(|source| PagingError::Write { addr, source })?;
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    /// Walks the tables in guest memory like the MMU would.
    fn translate(mem: &GuestMemoryMmap, va: u64) -> (u64, u64) {
        let rd = |a: u64| -> u64 { mem.read_obj(GuestAddress(a)).unwrap() };
        let pml4e = rd(PML4_START + ((va >> 39) & 0x1ff) * 8);
        let pdpte = rd((pml4e & 0x000f_ffff_ffff_f000) + ((va >> 30) & 0x1ff) * 8);
        let pde = rd((pdpte & 0x000f_ffff_ffff_f000) + ((va >> 21) & 0x1ff) * 8);
        assert_ne!(pde & PTE_PS, 0);
        let flags = pml4e & pdpte & pde & 0x7;
        ((pde & 0x000f_ffff_ffe0_0000) | (va & (PAGE_2M - 1)), flags)
    }

    #[test]
    fn identity_maps_4g() {
        for user in [false, true] {
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
            assert_eq!(write_identity_map(&mem, user).unwrap(), PML4_START);
            for va in [
                0u64,
                0x1234,
                0x20_0000,
                0x3fff_ffff,
                0x4000_0000,
                0xfee0_0000,
                0xffff_ffff,
            ] {
                let (pa, flags) = translate(&mem, va);
                assert_eq!(pa, va);
                let want = if user { 7 } else { 3 };
                assert_eq!(flags, want, "va {va:#x}");
            }
        }
    }

    #[test]
    fn entry_values() {
        let t = identity_map_tables(false);
        assert_eq!(t.len(), 6);
        assert_eq!(t[0].1[0], PDPT_START | 3);
        assert!(t[0].1[1..].iter().all(|&e| e == 0));
        assert_eq!(t[1].1[3], (PD_START + 0x3000) | 3);
        assert_eq!(t[1].1[4], 0);
        assert_eq!(t[2].1[1], 0x20_0000 | 0x83);
        assert_eq!(t[5].1[511], 0xffe0_0000 | 0x83);
        let u = identity_map_tables(true);
        assert_eq!(u[5].1[511], 0xffe0_0000 | 0x87);
    }
}
