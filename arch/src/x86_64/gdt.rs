//! Segment descriptors and the boot GDT.
//!
//! The boot GDT lives at [`BOOT_GDT_START`]:
//!
//! | selector | descriptor                                     |
//! |----------|------------------------------------------------|
//! | 0x00     | null                                           |
//! | 0x08     | flat 64-bit code, DPL 0 (`0x00af9b000000ffff`) |
//! | 0x10     | flat data, DPL 0 (`0x00cf93000000ffff`)        |
//! | 0x18     | 64-bit TSS (busy), 16 bytes: slots 3 and 4     |
//! | 0x28     | flat 32-bit code, DPL 0 (PVH entry)            |
//! | 0x30     | flat data, DPL 3 (`0x00cff3000000ffff`)        |
//! | 0x38     | flat 64-bit code, DPL 3 (`0x00affb000000ffff`) |
//!
//! The user segments are ordered for `sysretq`: with [`BOOT_STAR`] in the STAR MSR,
//! `syscall` loads CS 0x08 / SS 0x10 and `sysretq` loads CS 0x3b / SS 0x33. The TSS at
//! [`BOOT_TSS_START`] has RSP0 =
//! [`BOOT_STACK_POINTER`], so an exception or
//! interrupt taken at CPL3 lands on the boot stack; it has no I/O bitmap (CPL3 port I/O
//! needs IOPL 3).
//!
//! The Linux 64-bit boot protocol names selectors 0x10 (code) and 0x18 (data); like
//! Firecracker we use 0x08/0x10 instead: the kernel's `startup_64` loads its own GDT and
//! reloads every segment register before depending on selector values.

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::x86_64::layout::{BOOT_GDT_START, BOOT_STACK_POINTER, BOOT_TSS_SIZE, BOOT_TSS_START};

/// Number of 8-byte slots in the boot GDT.
pub const BOOT_GDT_ENTRIES: usize = 8;
/// Flat 64-bit code selector.
pub const CODE64_SELECTOR: u16 = 0x08;
/// Flat data selector.
pub const DATA_SELECTOR: u16 = 0x10;
/// TSS selector.
pub const TSS_SELECTOR: u16 = 0x18;
/// Flat 32-bit code selector (PVH entry).
pub const CODE32_SELECTOR: u16 = 0x28;
/// User (DPL 3) data selector, without RPL.
pub const USER_DATA_SELECTOR: u16 = 0x30;
/// User (DPL 3) 64-bit code selector, without RPL.
pub const USER_CODE64_SELECTOR: u16 = 0x38;
/// STAR MSR value matching the boot GDT: SYSCALL CS/SS = 0x08/0x10, SYSRET base 0x28
/// (64-bit SYSRET: CS = 0x38 | 3, SS = 0x30 | 3).
pub const BOOT_STAR: u64 = (0x28 << 48) | (0x08 << 32);

/// Access byte: present, DPL 0, code, execute/read, accessed.
pub const ACCESS_CODE: u8 = 0x9b;
/// Access byte: present, DPL 0, data, read/write, accessed.
pub const ACCESS_DATA: u8 = 0x93;
/// Access byte: present, DPL 3, code, execute/read, accessed.
pub const ACCESS_USER_CODE: u8 = 0xfb;
/// Access byte: present, DPL 3, data, read/write, accessed.
pub const ACCESS_USER_DATA: u8 = 0xf3;
/// Access byte: present, system, 64-bit (or 32-bit) busy TSS.
pub const ACCESS_TSS_BUSY: u8 = 0x8b;
/// Flags nibble: G (4 KiB granularity).
pub const FLAG_G: u8 = 0x8;
/// Flags nibble: D/B (32-bit default operand size).
pub const FLAG_DB: u8 = 0x4;
/// Flags nibble: L (64-bit code).
pub const FLAG_L: u8 = 0x2;
/// Flags nibble: AVL.
pub const FLAG_AVL: u8 = 0x1;

/// Errors writing the GDT.
#[derive(Debug, thiserror::Error)]
pub enum GdtError {
    /// Guest memory write failed.
    #[error("writing the boot GDT/TSS at {addr:#x}: {source}")]
    Write {
        /// Guest address.
        addr: u64,
        /// Underlying error.
        source: GuestMemoryError,
    },
}

/// A decoded segment descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GdtEntry {
    /// Segment base (32 bits in a descriptor).
    pub base: u32,
    /// 20-bit limit (in pages when G is set).
    pub limit: u32,
    /// Access byte (P, DPL, S, type).
    pub access: u8,
    /// High flag nibble (G, D/B, L, AVL).
    pub flags: u8,
}

impl GdtEntry {
    /// The null descriptor.
    pub const NULL: GdtEntry = GdtEntry::new(0, 0, 0, 0);
    /// Flat 64-bit code segment.
    pub const CODE64: GdtEntry = GdtEntry::new(0, 0xfffff, ACCESS_CODE, FLAG_G | FLAG_L);
    /// Flat 32-bit code segment.
    pub const CODE32: GdtEntry = GdtEntry::new(0, 0xfffff, ACCESS_CODE, FLAG_G | FLAG_DB);
    /// Flat read/write data segment.
    pub const DATA: GdtEntry = GdtEntry::new(0, 0xfffff, ACCESS_DATA, FLAG_G | FLAG_DB);
    /// Flat 64-bit user code segment.
    pub const USER_CODE64: GdtEntry = GdtEntry::new(0, 0xfffff, ACCESS_USER_CODE, FLAG_G | FLAG_L);
    /// Flat user data segment.
    pub const USER_DATA: GdtEntry = GdtEntry::new(0, 0xfffff, ACCESS_USER_DATA, FLAG_G | FLAG_DB);
    /// The boot TSS (busy).
    #[allow(clippy::cast_possible_truncation)] // its address (0x580) and size (0x68) are tiny
    pub const TSS: GdtEntry = GdtEntry::new(
        BOOT_TSS_START as u32,
        BOOT_TSS_SIZE as u32 - 1,
        ACCESS_TSS_BUSY,
        0,
    );

    /// Builds a descriptor; `limit` is truncated to 20 bits and `flags` to 4 bits.
    pub const fn new(base: u32, limit: u32, access: u8, flags: u8) -> Self {
        GdtEntry {
            base,
            limit: limit & 0xfffff,
            access,
            flags: flags & 0xf,
        }
    }

    /// Encodes the descriptor as the 8 bytes the CPU reads.
    pub const fn encode(&self) -> u64 {
        let base = self.base as u64;
        let limit = self.limit as u64;
        (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | ((self.access as u64) << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((self.flags & 0xf) as u64) << 52)
            | (((base >> 24) & 0xff) << 56)
    }

    /// Decodes 8 descriptor bytes.
    #[allow(clippy::cast_possible_truncation)] // the masked fields fit their types
    pub const fn decode(raw: u64) -> Self {
        GdtEntry {
            base: (((raw >> 16) & 0xff_ffff) | (((raw >> 56) & 0xff) << 24)) as u32,
            limit: ((raw & 0xffff) | (((raw >> 48) & 0xf) << 16)) as u32,
            access: ((raw >> 40) & 0xff) as u8,
            flags: ((raw >> 52) & 0xf) as u8,
        }
    }

    /// Converts to the KVM segment register format, for the descriptor at `selector`.
    pub fn to_kvm_segment(&self, selector: u16) -> kvm_segment {
        let g = (self.flags & FLAG_G) != 0;
        let limit = if g {
            (self.limit << 12) | 0xfff
        } else {
            self.limit
        };
        let present = (self.access >> 7) & 1;
        kvm_segment {
            base: u64::from(self.base),
            limit,
            selector,
            type_: self.access & 0xf,
            present,
            dpl: (self.access >> 5) & 3,
            db: u8::from(self.flags & FLAG_DB != 0),
            s: (self.access >> 4) & 1,
            l: u8::from(self.flags & FLAG_L != 0),
            g: u8::from(g),
            avl: u8::from(self.flags & FLAG_AVL != 0),
            unusable: u8::from(present == 0),
            padding: 0,
        }
    }
}

/// The boot GDT as raw descriptors (see the module docs for the layout).
pub fn boot_gdt() -> [u64; BOOT_GDT_ENTRIES] {
    [
        GdtEntry::NULL.encode(),
        GdtEntry::CODE64.encode(),
        GdtEntry::DATA.encode(),
        GdtEntry::TSS.encode(),
        0, // upper half of the 16-byte 64-bit TSS descriptor (base[63:32] = 0)
        GdtEntry::CODE32.encode(),
        GdtEntry::USER_DATA.encode(),
        GdtEntry::USER_CODE64.encode(),
    ]
}

/// The boot TSS: RSP0 = boot stack, no IST, I/O map base past the limit (no bitmap).
pub fn boot_tss() -> [u8; BOOT_TSS_SIZE] {
    let mut t = [0u8; BOOT_TSS_SIZE];
    t[4..12].copy_from_slice(&BOOT_STACK_POINTER.to_le_bytes());
    #[allow(clippy::cast_possible_truncation)] // BOOT_TSS_SIZE is 0x68
    t[102..104].copy_from_slice(&(BOOT_TSS_SIZE as u16).to_le_bytes());
    t
}

/// Limit value for GDTR (size in bytes - 1).
#[allow(clippy::cast_possible_truncation)] // 8 entries: 63
pub const BOOT_GDT_LIMIT: u16 = (BOOT_GDT_ENTRIES * 8 - 1) as u16;

/// Writes [`boot_gdt`] at [`BOOT_GDT_START`] and [`boot_tss`] at [`BOOT_TSS_START`].
pub fn write_boot_gdt<M: GuestMemory + ?Sized>(mem: &M) -> Result<(), GdtError> {
    let mut bytes = [0u8; BOOT_GDT_ENTRIES * 8];
    for (chunk, entry) in bytes.chunks_exact_mut(8).zip(boot_gdt()) {
        chunk.copy_from_slice(&entry.to_le_bytes());
    }
    for (addr, data) in [
        (BOOT_GDT_START, &bytes[..]),
        (BOOT_TSS_START, &boot_tss()[..]),
    ] {
        mem.write_slice(data, GuestAddress(addr))
            .map_err(|source| GdtError::Write { addr, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn known_encodings() {
        assert_eq!(GdtEntry::CODE64.encode(), 0x00af_9b00_0000_ffff);
        assert_eq!(GdtEntry::DATA.encode(), 0x00cf_9300_0000_ffff);
        assert_eq!(GdtEntry::CODE32.encode(), 0x00cf_9b00_0000_ffff);
        assert_eq!(GdtEntry::NULL.encode(), 0);
        assert_eq!(GdtEntry::TSS.encode(), 0x0000_8b00_0580_0067);
        assert_eq!(GdtEntry::USER_CODE64.encode(), 0x00af_fb00_0000_ffff);
        assert_eq!(GdtEntry::USER_DATA.encode(), 0x00cf_f300_0000_ffff);
        // Base split across the descriptor.
        let e = GdtEntry::new(0x1234_5678, 0xabcde, 0x89, 0x4);
        assert_eq!(e.encode(), 0x124a_8934_5678_bcde);
    }

    #[test]
    fn encode_decode_roundtrip() {
        for raw in [
            0x00af_9b00_0000_ffffu64,
            0x00cf_9300_0000_ffff,
            0x124a_8934_5678_bcde,
        ] {
            assert_eq!(GdtEntry::decode(raw).encode(), raw);
        }
    }

    #[test]
    fn kvm_segments() {
        let cs = GdtEntry::CODE64.to_kvm_segment(CODE64_SELECTOR);
        assert_eq!(
            (cs.base, cs.limit, cs.selector, cs.type_, cs.present, cs.dpl),
            (0, 0xffff_ffff, 8, 0xb, 1, 0)
        );
        assert_eq!(
            (cs.db, cs.s, cs.l, cs.g, cs.avl, cs.unusable),
            (0, 1, 1, 1, 0, 0)
        );
        let ds = GdtEntry::DATA.to_kvm_segment(DATA_SELECTOR);
        assert_eq!(
            (ds.type_, ds.db, ds.l, ds.s, ds.limit),
            (3, 1, 0, 1, 0xffff_ffff)
        );
        let tr = GdtEntry::TSS.to_kvm_segment(TSS_SELECTOR);
        assert_eq!((tr.type_, tr.s, tr.limit, tr.present), (0xb, 0, 0x67, 1));
        assert_eq!(tr.base, 0x580);
        let ucs = GdtEntry::USER_CODE64.to_kvm_segment(USER_CODE64_SELECTOR | 3);
        assert_eq!((ucs.dpl, ucs.l, ucs.selector), (3, 1, 0x3b));
        let null = GdtEntry::NULL.to_kvm_segment(0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn selectors_match_table() {
        let gdt = boot_gdt();
        assert_eq!(
            gdt[usize::from(CODE64_SELECTOR / 8)],
            GdtEntry::CODE64.encode()
        );
        assert_eq!(gdt[usize::from(DATA_SELECTOR / 8)], GdtEntry::DATA.encode());
        assert_eq!(gdt[usize::from(TSS_SELECTOR / 8)], GdtEntry::TSS.encode());
        assert_eq!(
            gdt[usize::from(CODE32_SELECTOR / 8)],
            GdtEntry::CODE32.encode()
        );
    }

    #[test]
    fn writes_to_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        write_boot_gdt(&mem).unwrap();
        let v: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(v, 0x00af_9b00_0000_ffff);
        let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x1000), 0x1000)]).unwrap();
        assert!(write_boot_gdt(&small).is_err());
    }
}
