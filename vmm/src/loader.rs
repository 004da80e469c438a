//! Kernel and initrd loading.
//!
//! Three formats, told apart by their magic:
//! - **bzImage** ("HdrS" at 0x202): Linux 64-bit boot protocol. The protected-mode kernel
//!   is loaded at 1 MiB, the zero page (boot_params with e820, cmdline, initrd) at
//!   [`arch::x86_64::layout::ZERO_PAGE_START`], entry at load address + 0x200 in long mode.
//! - **ELF64 with a PVH note** (a Linux vmlinux built with CONFIG_PVH): entered at the PVH
//!   entry point in 32-bit protected mode with RBX = hvm_start_info.
//! - **ELF64 without a PVH note**: a freestanding guest (docs/GUESTS.md): segments at
//!   p_paddr, entered at e_entry in 64-bit long mode at CPL0 on every vCPU, RDI = vCPU
//!   index, RSI = command-line address (0 if none), RDX = vCPU count.
//!
//! Everything here treats the image as hostile: sizes are checked before use and every
//! loader error becomes a [`LoadError`].

use std::io::Cursor;
use std::path::Path;

use devices::host_file::{read_regular, ReadError};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::config::{KernelImage, VmConfig};
use crate::error::LoadError;

/// How the boot vCPU is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    /// Linux 64-bit boot protocol.
    Linux64 {
        /// 64-bit entry point.
        entry: u64,
    },
    /// PVH boot (ELF vmlinux).
    Pvh {
        /// PVH entry point (32-bit).
        entry: u64,
    },
    /// Freestanding ELF64 guest.
    Freestanding {
        /// e_entry.
        entry: u64,
        /// Guest-physical address of the NUL-terminated argument string (0 if empty).
        cmdline: u64,
    },
}

impl Boot {
    /// Whether all vCPUs start at the entry point (freestanding) or only the BSP (Linux).
    pub fn all_vcpus_enter(&self) -> bool {
        matches!(self, Boot::Freestanding { .. })
    }

    /// Whether the guest is a Linux kernel (bzImage or PVH vmlinux).
    pub fn is_linux(&self) -> bool {
        matches!(self, Boot::Linux64 { .. } | Boot::Pvh { .. })
    }
}

/// The loaded kernel.
pub struct Loaded {
    /// How to enter it.
    pub boot: Boot,
    /// The bzImage setup header, for the zero page.
    pub setup_header: Option<setup_header>,
    /// End of the loaded image (guest-physical).
    pub kernel_end: u64,
}

/// Longest argument string a freestanding guest gets (docs/GUESTS.md: the guests read at
/// most this many bytes).
pub const FREESTANDING_CMDLINE_MAX: usize = 4096;

/// Reads a kernel or initrd file (`what`): a regular file of at most `limit` bytes, both
/// checked before reading (`devices::host_file::read_regular`), so `/dev/zero`, a FIFO or
/// a huge file is one clear error instead of exhausting memory or blocking.
pub fn read_input(what: &'static str, path: &Path, limit: u64) -> Result<Vec<u8>, LoadError> {
    read_regular(path, limit).map_err(|e| match e {
        ReadError::Io(source) => LoadError::Read {
            what,
            path: path.to_path_buf(),
            source,
        },
        ReadError::NotRegular(kind) => LoadError::NotRegular {
            what,
            path: path.to_path_buf(),
            kind,
        },
        ReadError::TooLarge { size, .. } => LoadError::TooLarge {
            what,
            size,
            mem: limit,
        },
    })
}

/// Reads the kernel image bytes (from the file, at most `mem` bytes, or the embedded
/// image).
pub fn read_kernel(
    image: &KernelImage,
    mem: u64,
) -> Result<std::borrow::Cow<'static, [u8]>, LoadError> {
    match image {
        KernelImage::Builtin { bytes, .. } => Ok(std::borrow::Cow::Borrowed(bytes)),
        KernelImage::File(path) => read_input("kernel", path, mem).map(std::borrow::Cow::Owned),
    }
}

/// The image's format, by magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Linux bzImage.
    BzImage,
    /// ELF64.
    Elf,
}

/// Identifies the kernel format from its first bytes.
pub fn detect(bytes: &[u8]) -> Option<Format> {
    if bytes.len() >= 0x206 && &bytes[0x202..0x206] == b"HdrS" {
        return Some(Format::BzImage);
    }
    if bytes.len() >= 20 && bytes[..4] == [0x7f, b'E', b'L', b'F'] {
        // ELFCLASS64, little endian, EM_X86_64 (62).
        if bytes[4] == 2 && bytes[5] == 1 && u16::from_le_bytes([bytes[18], bytes[19]]) == 62 {
            return Some(Format::Elf);
        }
    }
    None
}

fn invalid(
    image: &KernelImage,
    format: &'static str,
) -> impl FnOnce(linux_loader::loader::Error) -> LoadError {
    let image = image.to_string();
    move |source| LoadError::Loader {
        image,
        format,
        source,
    }
}

/// Loads the kernel named by `config` into `mem` and writes its command line.
pub fn load_kernel(mem: &GuestMemoryMmap, config: &VmConfig) -> Result<Loaded, LoadError> {
    let bytes = read_kernel(&config.kernel, config.memory)?;
    if bytes.len() as u64 >= config.memory {
        return Err(LoadError::TooLarge {
            what: "kernel",
            size: bytes.len() as u64,
            mem: config.memory,
        });
    }
    let himem = Some(GuestAddress(arch::x86_64::layout::HIMEM_START));
    let name = config.kernel.to_string();
    match detect(&bytes) {
        Some(Format::BzImage) => {
            let r = BzImage::load(mem, None, &mut Cursor::new(&bytes[..]), himem)
                .map_err(invalid(&config.kernel, "bzImage"))?;
            let hdr = r.setup_header.ok_or_else(|| LoadError::Invalid {
                image: name.clone(),
                format: "bzImage",
                detail: "no setup header".into(),
            })?;
            // Linux 64-bit entry needs protocol 2.06+ with XLF_KERNEL_64 (boot.rst).
            let version = hdr.version;
            let xloadflags = hdr.xloadflags;
            if version < 0x0206 || xloadflags & 1 == 0 {
                return Err(LoadError::Invalid {
                    image: name,
                    format: "bzImage",
                    detail: format!(
                        "boot protocol {}.{:02} without a 64-bit entry point (need 2.06+ with XLF_KERNEL_64)",
                        version >> 8,
                        version & 0xff
                    ),
                });
            }
            write_linux_cmdline(mem, &config.linux_cmdline())?;
            Ok(Loaded {
                boot: Boot::Linux64 {
                    entry: arch::x86_64::regs::bzimage_64bit_entry(r.kernel_load),
                },
                setup_header: Some(hdr),
                kernel_end: r.kernel_end,
            })
        }
        Some(Format::Elf) => {
            let r = Elf::load(mem, None, &mut Cursor::new(&bytes[..]), himem)
                .map_err(invalid(&config.kernel, "ELF"))?;
            match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(entry) => {
                    write_linux_cmdline(mem, &config.linux_cmdline())?;
                    Ok(Loaded {
                        boot: Boot::Pvh { entry: entry.0 },
                        setup_header: None,
                        kernel_end: r.kernel_end,
                    })
                }
                _ => {
                    if config.initrd.is_some() {
                        return Err(LoadError::InitrdForFreestanding(name));
                    }
                    let cmdline = write_raw_cmdline(mem, &config.cmdline)?;
                    Ok(Loaded {
                        boot: Boot::Freestanding {
                            entry: r.kernel_load.0,
                            cmdline,
                        },
                        setup_header: None,
                        kernel_end: r.kernel_end,
                    })
                }
            }
        }
        None => Err(LoadError::UnknownFormat(name)),
    }
}

fn write_linux_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), LoadError> {
    let mut c = Cmdline::new(arch::x86_64::layout::CMDLINE_MAX_SIZE)?;
    if !cmdline.is_empty() {
        c.insert_str(cmdline)?;
    }
    linux_loader::loader::load_cmdline(mem, GuestAddress(arch::x86_64::layout::CMDLINE_START), &c)
        .map_err(LoadError::CmdlineWrite)
}

/// Checks a freestanding guest's argument string against the boot contract
/// (docs/GUESTS.md): printable ASCII (0x20..=0x7e), at most [`FREESTANDING_CMDLINE_MAX`]
/// bytes.
pub fn check_freestanding_cmdline(cmdline: &str) -> Result<(), LoadError> {
    let rule = || {
        format!(
            "a freestanding guest's argument string must be printable ASCII (0x20-0x7e), \
             at most {FREESTANDING_CMDLINE_MAX} bytes"
        )
    };
    if let Some(i) = cmdline.bytes().position(|b| !(0x20..=0x7e).contains(&b)) {
        let c = cmdline[i..].chars().next().unwrap_or_default();
        return Err(LoadError::Cmdline(format!(
            "{}; byte {i} is {:?}",
            rule(),
            c
        )));
    }
    if cmdline.len() > FREESTANDING_CMDLINE_MAX {
        return Err(LoadError::Cmdline(format!(
            "{}; it has {} bytes",
            rule(),
            cmdline.len()
        )));
    }
    Ok(())
}

/// Writes a freestanding guest's argument string; returns its address (0 when empty).
fn write_raw_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<u64, LoadError> {
    check_freestanding_cmdline(cmdline)?;
    if cmdline.is_empty() {
        return Ok(0);
    }
    let mut b = cmdline.as_bytes().to_vec();
    b.push(0);
    mem.write_slice(&b, GuestAddress(arch::x86_64::layout::CMDLINE_START))
        .map_err(|e| LoadError::Boot(e.into()))?;
    Ok(arch::x86_64::layout::CMDLINE_START)
}

/// Loads the initrd (if any) above the kernel; returns (address, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    loaded: &Loaded,
) -> Result<Option<(GuestAddress, u64)>, LoadError> {
    let Some(path) = &config.initrd else {
        return Ok(None);
    };
    let data = read_input("initrd", path, config.memory)?;
    let size = data.len() as u64;
    let max = loaded.setup_header.map(|h| h.initrd_addr_max).unwrap_or(0);
    let addr = arch::x86_64::layout::initrd_addr(config.memory, size, loaded.kernel_end, max)
        .map_err(|_| LoadError::TooLarge {
            what: "initrd",
            size,
            mem: config.memory,
        })?;
    mem.write_slice(&data, addr)
        .map_err(|e| LoadError::Boot(e.into()))?;
    Ok(Some((addr, size)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats() {
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect(&bz), Some(Format::BzImage));
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(&[0x7f, b'E', b'L', b'F']);
        elf[4] = 2;
        elf[5] = 1;
        elf[18] = 62;
        assert_eq!(detect(&elf), Some(Format::Elf));
        elf[4] = 1; // 32-bit
        assert_eq!(detect(&elf), None);
        assert_eq!(detect(b""), None);
        assert_eq!(detect(&[0x7f, b'E', b'L']), None);
        assert_eq!(detect(&[0u8; 4096]), None);
    }

    #[test]
    fn initrds_must_be_regular_files_that_fit() {
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 32 << 20)]).expect("memory");
        let mut config = VmConfig::new(KernelImage::File("vmlinux".into()));
        config.memory = 32 << 20;
        let loaded = Loaded {
            boot: Boot::Pvh { entry: 0x100_0000 },
            setup_header: None,
            kernel_end: 0x200_0000,
        };
        let dir = std::env::temp_dir().join(format!("vpmu-loader-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let fifo = dir.join("initrd.fifo");
        let _ = std::fs::remove_file(&fifo);
        let c = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("path");
        // SAFETY: mkfifo reads the NUL-terminated path, which outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let big = dir.join("initrd.big");
        std::fs::write(&big, vec![0u8; (32 << 20) + 1]).expect("write");
        for (path, want) in [
            (
                "/dev/zero".into(),
                "initrd /dev/zero is a character device, not a regular file",
            ),
            (fifo.clone(), "is a FIFO, not a regular file"),
            (
                big.clone(),
                "initrd (33554433 bytes) does not fit in guest memory",
            ),
        ] {
            config.initrd = Some(path);
            let e = load_initrd(&mem, &config, &loaded).expect_err("refused");
            assert!(e.to_string().contains(want), "{e}");
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn freestanding_cmdline_is_printable_ascii_of_bounded_length() {
        let max = "~".repeat(FREESTANDING_CMDLINE_MAX);
        for ok in ["", "period=1000 expect=intel:v4,gp4", " !~", max.as_str()] {
            check_freestanding_cmdline(ok).expect(ok);
        }
        let long = "x".repeat(FREESTANDING_CMDLINE_MAX + 1);
        for (bad, why) in [
            ("a\nb", "byte 1 is '\\n'"),
            ("tab\there", "byte 3 is '\\t'"),
            ("nul\0", "byte 3 is '\\0'"),
            ("caf\u{e9}", "byte 3 is '\u{e9}'"),
            ("\u{7f}", "byte 0 is '\\u{7f}'"),
            (long.as_str(), "it has 4097 bytes"),
        ] {
            let e = check_freestanding_cmdline(bad).expect_err(bad).to_string();
            assert!(
                e.contains("printable ASCII (0x20-0x7e), at most 4096 bytes"),
                "{e}"
            );
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
