//! Linux zero page (`struct boot_params`) for the 64-bit boot protocol
//! (Documentation/arch/x86/boot.rst).
//!
//! The vmm loads the kernel with `linux_loader` and passes the loader's
//! `setup_header` (bzImage) or [`elf_setup_header`] (ELF vmlinux) here. The header is
//! validated: boot flag 0xaa55, magic "HdrS", protocol >= 2.06 (`cmdline_size`
//! present) and, for bzImages, `XLF_KERNEL_64` (the 64-bit entry exists).
//!
//! Fields we fill: `type_of_loader` 0xff (undefined loader), `loadflags` |= LOADED_HIGH |
//! CAN_USE_HEAP with `heap_end_ptr` 0xfe00 - 0x200 (only the real-mode setup code reads
//! these; harmless for the 64-bit entry, KEEP_SEGMENTS is not set: it is obsolete and only
//! meant for the 32-bit entry), `cmd_line_ptr`, `ramdisk_image`/`ramdisk_size`, and the
//! e820 table from [`crate::x86_64::e820::e820_map`], and `acpi_rsdp_addr` (offset 0x070, boot
//! protocol 2.14+; older kernels ignore it and find the RSDP by scanning the BIOS area).

use linux_loader::loader::bootparam::{
    boot_e820_entry, boot_params, setup_header, CAN_USE_HEAP, E820_MAX_ENTRIES_ZEROPAGE,
    LOADED_HIGH, XLF_KERNEL_64,
};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::x86_64::e820::{e820_map, E820Error};

/// `boot_flag` value.
pub const BOOT_FLAG: u16 = 0xaa55;
/// `header` value: "HdrS".
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// Oldest boot protocol accepted (2.06: `cmdline_size`; 64-bit entry since 2.05-ish).
pub const MIN_BOOT_PROTOCOL: u16 = 0x0206;
/// `type_of_loader`: undefined boot loader.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `heap_end_ptr` (offset from the real-mode segment).
pub const HEAP_END_PTR: u16 = 0xfe00 - 0x200;

/// Zero-page errors.
#[derive(Debug, thiserror::Error)]
pub enum ZeroPageError {
    /// Boot flag is not 0xaa55.
    #[error("not a Linux kernel: boot flag {0:#06x}, expected 0xaa55")]
    BadBootFlag(u16),
    /// Header magic is not "HdrS".
    #[error("not a Linux kernel: header magic {0:#010x}, expected \"HdrS\"")]
    BadMagic(u32),
    /// Boot protocol older than [`MIN_BOOT_PROTOCOL`].
    #[error("boot protocol {major}.{minor:02} too old: need 2.06 or later")]
    ProtocolTooOld {
        /// Major.
        major: u8,
        /// Minor.
        minor: u8,
    },
    /// Kernel has no 64-bit entry point.
    #[error("kernel has no 64-bit entry point (XLF_KERNEL_64 clear in xloadflags {0:#x})")]
    No64BitEntry(u16),
    /// Command line longer than the kernel accepts.
    #[error("command line of {len} bytes exceeds the kernel's limit of {max}")]
    CmdlineTooLong {
        /// Length without the NUL.
        len: usize,
        /// Kernel's `cmdline_size`.
        max: u32,
    },
    /// An address does not fit the 32-bit header field.
    #[error("{what} at {addr:#x} (+{size:#x}) is not below 4 GiB")]
    Above4G {
        /// Which object.
        what: &'static str,
        /// Address.
        addr: u64,
        /// Size.
        size: u64,
    },
    /// Memory map.
    #[error("building the e820 map: {0}")]
    E820(#[from] E820Error),
    /// Too many memory map entries.
    #[error("{0} e820 entries exceed the zero page's {E820_MAX_ENTRIES_ZEROPAGE}")]
    TooManyE820Entries(usize),
    /// Guest memory write.
    #[error("writing the zero page at {addr:#x}: {source}")]
    Write {
        /// Address.
        addr: u64,
        /// Underlying error.
        source: GuestMemoryError,
    },
}

/// What the vmm placed in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroPageConfig {
    /// Total guest RAM.
    pub mem_size: u64,
    /// Command line address.
    pub cmdline_addr: GuestAddress,
    /// Command line length in bytes, without the terminating NUL.
    pub cmdline_len: usize,
    /// Initrd (address, size), if any.
    pub initrd: Option<(GuestAddress, u64)>,
    /// ACPI RSDP address ([`crate::x86_64::acpi::write_acpi_tables`]), if the guest has ACPI tables.
    pub rsdp_addr: Option<GuestAddress>,
}

/// Checks a bzImage setup header against the boot protocol.
pub fn validate_setup_header(hdr: &setup_header) -> Result<(), ZeroPageError> {
    let (flag, magic, version, xl) = (hdr.boot_flag, hdr.header, hdr.version, hdr.xloadflags);
    if flag != BOOT_FLAG {
        return Err(ZeroPageError::BadBootFlag(flag));
    }
    if magic != HDRS_MAGIC {
        return Err(ZeroPageError::BadMagic(magic));
    }
    if version < MIN_BOOT_PROTOCOL {
        return Err(ZeroPageError::ProtocolTooOld {
            major: (version >> 8) as u8,
            minor: (version & 0xff) as u8,
        });
    }
    if xl & XLF_KERNEL_64 == 0 {
        return Err(ZeroPageError::No64BitEntry(xl));
    }
    Ok(())
}

/// A setup header for an ELF vmlinux (which carries none): valid magic, protocol 2.06,
/// 64-bit entry, 16 MiB alignment, command line limit [`crate::x86_64::layout::CMDLINE_MAX_SIZE`] - 1.
#[allow(clippy::cast_possible_truncation)] // CMDLINE_MAX_SIZE - 1 is 0xffff
pub fn elf_setup_header() -> setup_header {
    setup_header {
        boot_flag: BOOT_FLAG,
        header: HDRS_MAGIC,
        version: MIN_BOOT_PROTOCOL,
        xloadflags: XLF_KERNEL_64,
        kernel_alignment: 0x0100_0000,
        cmdline_size: (crate::x86_64::layout::CMDLINE_MAX_SIZE - 1) as u32,
        initrd_addr_max: 0x7fff_ffff,
        ..Default::default()
    }
}

fn fits_u32(what: &'static str, addr: u64, size: u64) -> Result<u32, ZeroPageError> {
    match (addr.checked_add(size), u32::try_from(addr)) {
        (Some(end), Ok(addr32)) if end <= 1 << 32 => Ok(addr32),
        _ => Err(ZeroPageError::Above4G { what, addr, size }),
    }
}

/// Builds the zero page from a validated copy of `hdr` and `cfg`.
pub fn build_boot_params(
    hdr: &setup_header,
    cfg: &ZeroPageConfig,
) -> Result<boot_params, ZeroPageError> {
    validate_setup_header(hdr)?;
    let max = hdr.cmdline_size;
    if cfg.cmdline_len as u64 > u64::from(max) {
        return Err(ZeroPageError::CmdlineTooLong {
            len: cfg.cmdline_len,
            max,
        });
    }
    let mut bp = boot_params {
        hdr: *hdr,
        ..Default::default()
    };
    bp.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    bp.hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    bp.hdr.heap_end_ptr = HEAP_END_PTR;
    bp.hdr.cmd_line_ptr = fits_u32(
        "command line",
        cfg.cmdline_addr.0,
        cfg.cmdline_len as u64 + 1,
    )?;
    if let Some((addr, size)) = cfg.initrd {
        bp.hdr.ramdisk_image = fits_u32("initrd", addr.0, size)?;
        bp.hdr.ramdisk_size = u32::try_from(size).map_err(|_| ZeroPageError::Above4G {
            what: "initrd",
            addr: addr.0,
            size,
        })?;
    }
    let map = e820_map(cfg.mem_size)?;
    if map.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(ZeroPageError::TooManyE820Entries(map.len()));
    }
    for (slot, e) in bp.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    bp.e820_entries =
        u8::try_from(map.len()).expect("checked against E820_MAX_ENTRIES_ZEROPAGE above");
    bp.acpi_rsdp_addr = cfg.rsdp_addr.map_or(0, |a| a.0);
    Ok(bp)
}

/// Writes `bp` at `addr` (normally [`crate::x86_64::layout::ZERO_PAGE_START`]).
pub fn write_boot_params<M: GuestMemory + ?Sized>(
    mem: &M,
    bp: &boot_params,
    addr: GuestAddress,
) -> Result<(), ZeroPageError> {
    mem.write_obj(*bp, addr)
        .map_err(|source| ZeroPageError::Write {
            addr: addr.0,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::e820::{E820_RAM, E820_RESERVED};
    use crate::x86_64::layout::{CMDLINE_START, ZERO_PAGE_START};
    use vm_memory::GuestMemoryMmap;

    fn bz_header() -> setup_header {
        setup_header {
            boot_flag: 0xaa55,
            header: 0x5372_6448,
            version: 0x020f,
            xloadflags: XLF_KERNEL_64 | 0x2,
            loadflags: LOADED_HIGH,
            cmdline_size: 2047,
            initrd_addr_max: 0x7fff_ffff,
            ..Default::default()
        }
    }

    fn cfg() -> ZeroPageConfig {
        ZeroPageConfig {
            mem_size: 512 << 20,
            cmdline_addr: GuestAddress(CMDLINE_START),
            cmdline_len: 20,
            initrd: Some((GuestAddress(0x1f00_0000), 0x10_0000)),
            rsdp_addr: Some(GuestAddress(crate::x86_64::acpi::RSDP_ADDR)),
        }
    }

    #[test]
    fn fields() {
        let bp = build_boot_params(&bz_header(), &cfg()).unwrap();
        let h = bp.hdr;
        assert_eq!({ h.type_of_loader }, 0xff);
        assert_eq!(
            { h.loadflags } & (LOADED_HIGH | CAN_USE_HEAP),
            LOADED_HIGH | CAN_USE_HEAP
        );
        assert_eq!({ h.cmd_line_ptr }, 0x20000);
        assert_eq!(
            ({ h.ramdisk_image }, { h.ramdisk_size }),
            (0x1f00_0000, 0x10_0000)
        );
        assert_eq!({ h.heap_end_ptr }, 0xfc00);
        assert_eq!({ h.version }, 0x020f, "header copied");
        assert_eq!(bp.e820_entries, 5);
        let t = bp.e820_table;
        assert_eq!(
            ({ t[0].addr }, { t[0].size }, { t[0].r#type }),
            (0, 0x9fc00, E820_RAM)
        );
        assert_eq!({ t[1].r#type }, E820_RESERVED);
        assert_eq!(({ t[2].addr }, { t[2].r#type }), (0xe_0000, E820_RESERVED));
        assert_eq!(({ t[3].addr }, { t[3].r#type }), (0x10_0000, E820_RAM));
        assert_eq!({ bp.acpi_rsdp_addr }, 0xe_0000);
        let mut c = cfg();
        c.rsdp_addr = None;
        let bp = build_boot_params(&bz_header(), &c).unwrap();
        assert_eq!({ bp.acpi_rsdp_addr }, 0, "no ACPI");
    }

    #[test]
    fn header_validation() {
        let mut h = bz_header();
        h.boot_flag = 0;
        assert!(matches!(
            build_boot_params(&h, &cfg()),
            Err(ZeroPageError::BadBootFlag(0))
        ));
        let mut h = bz_header();
        h.header = 0x1234;
        assert!(matches!(
            validate_setup_header(&h),
            Err(ZeroPageError::BadMagic(_))
        ));
        let mut h = bz_header();
        h.version = 0x0205;
        assert!(matches!(
            validate_setup_header(&h),
            Err(ZeroPageError::ProtocolTooOld { major: 2, minor: 5 })
        ));
        let mut h = bz_header();
        h.xloadflags = 0;
        assert!(matches!(
            validate_setup_header(&h),
            Err(ZeroPageError::No64BitEntry(0))
        ));
        assert!(matches!(
            validate_setup_header(&setup_header::default()),
            Err(ZeroPageError::BadBootFlag(0))
        ));
        validate_setup_header(&elf_setup_header()).unwrap();
    }

    #[test]
    fn limits() {
        let mut c = cfg();
        c.cmdline_len = 2048;
        assert!(matches!(
            build_boot_params(&bz_header(), &c),
            Err(ZeroPageError::CmdlineTooLong {
                len: 2048,
                max: 2047
            })
        ));
        let mut c = cfg();
        c.initrd = Some((GuestAddress(0xffff_f000), 0x2000));
        assert!(matches!(
            build_boot_params(&bz_header(), &c),
            Err(ZeroPageError::Above4G { .. })
        ));
        let mut c = cfg();
        c.mem_size = 0x1000;
        assert!(matches!(
            build_boot_params(&bz_header(), &c),
            Err(ZeroPageError::E820(_))
        ));
    }

    #[test]
    fn written_layout_matches_boot_protocol_offsets() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let bp = build_boot_params(&bz_header(), &cfg()).unwrap();
        write_boot_params(&mem, &bp, GuestAddress(ZERO_PAGE_START)).unwrap();
        let rd8 = |o: u64| -> u8 { mem.read_obj(GuestAddress(ZERO_PAGE_START + o)).unwrap() };
        let rd16 = |o: u64| -> u16 { mem.read_obj(GuestAddress(ZERO_PAGE_START + o)).unwrap() };
        let rd32 = |o: u64| -> u32 { mem.read_obj(GuestAddress(ZERO_PAGE_START + o)).unwrap() };
        // Offsets from Documentation/arch/x86/zero-page.rst and boot.rst.
        assert_eq!(rd8(0x1e8), 5, "e820_entries");
        let rsdp: u64 = mem.read_obj(GuestAddress(ZERO_PAGE_START + 0x070)).unwrap();
        assert_eq!(rsdp, 0xe_0000, "acpi_rsdp_addr");
        assert_eq!(rd16(0x1fe), 0xaa55, "boot_flag");
        assert_eq!(rd32(0x202), 0x5372_6448, "header");
        assert_eq!(rd8(0x210), 0xff, "type_of_loader");
        assert_eq!(rd32(0x218), 0x1f00_0000, "ramdisk_image");
        assert_eq!(rd32(0x228), 0x20000, "cmd_line_ptr");
        let e1: u32 = mem
            .read_obj(GuestAddress(ZERO_PAGE_START + 0x2d0 + 20 + 16))
            .unwrap();
        assert_eq!(e1, E820_RESERVED, "second e820 entry's type");
    }
}
