//! Tiny ELF64 guests, shared by the integration tests (through `common`) and by
//! vmm/benches (which include this file by `#[path]`, as they cannot use `common`).

/// A minimal ELF64 x86_64 executable: one PT_LOAD of `code` at `addr`, entry = `addr`.
pub fn elf64(code: &[u8], addr: u64) -> Vec<u8> {
    let mut e = vec![0u8; 0x1000];
    e[..4].copy_from_slice(&[0x7f, b'E', b'L', b'F']);
    e[4] = 2; // ELFCLASS64
    e[5] = 1; // little endian
    e[6] = 1; // EV_CURRENT
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[24..32].copy_from_slice(&addr.to_le_bytes()); // e_entry
    e[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    e[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    e[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    e[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let ph = 64;
    e[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e[ph + 4..ph + 8].copy_from_slice(&7u32.to_le_bytes()); // RWX
    e[ph + 8..ph + 16].copy_from_slice(&0x1000u64.to_le_bytes()); // p_offset
    e[ph + 16..ph + 24].copy_from_slice(&addr.to_le_bytes()); // p_vaddr
    e[ph + 24..ph + 32].copy_from_slice(&addr.to_le_bytes()); // p_paddr
    e[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes()); // p_filesz
    e[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64).to_le_bytes()); // p_memsz
    e[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes());
    e.extend_from_slice(code);
    e
}
