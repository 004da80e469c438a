//! Puts the kernel Image (linux-loader's arm64 `PE` loader, after `arch::aarch64::image`'s
//! checks), the initrd and the device tree into guest memory.

use std::io::Cursor;
use std::path::Path;

use linux_loader::loader::{pe::PE, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use arch::aarch64::{fdt, image, layout};

use crate::config::{KernelImage, VmConfig};
use crate::error::{BootError, LoadError};

/// Linux arm64's COMMAND_LINE_SIZE.
pub const CMDLINE_MAX: usize = 2048;

/// Where the kernel went.
#[derive(Debug, Clone, Copy)]
pub struct Loaded {
    /// Entry point (PC of vCPU 0).
    pub entry: u64,
    /// End of the kernel's `image_size` (BSS included).
    pub end: u64,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Checks and loads the kernel Image at `layout::KERNEL_BASE`.
pub fn load_kernel(mem: &GuestMemoryMmap, config: &VmConfig) -> Result<Loaded, LoadError> {
    let name = config.kernel.to_string();
    let bytes = match &config.kernel {
        KernelImage::File(p) => read("kernel", p)?,
        KernelImage::Builtin { .. } => {
            return Err(LoadError::Invalid {
                image: name,
                format: "arm64 Linux",
                detail: "the built-in guests are x86_64 ELF programs; on aarch64 boot an arm64 \
                         Image (a Linux Image, or a freestanding guest such as \
                         resources/out/guests-arm64/exit.img, docs/GUESTS.md)"
                    .into(),
            })
        }
    };
    let hdr = image::parse(&bytes).map_err(|e| LoadError::Invalid {
        image: name.clone(),
        format: "arm64 Linux",
        detail: e.to_string(),
    })?;
    let fdt_at = layout::fdt_addr(config.memory).unwrap_or(layout::DRAM_START);
    let end = hdr.end(layout::KERNEL_BASE).unwrap_or(u64::MAX);
    if end > fdt_at {
        return Err(LoadError::TooLarge {
            what: "kernel",
            size: hdr.text_offset.saturating_add(hdr.image_size),
            mem: config.memory,
        });
    }
    let res = PE::load(
        mem,
        Some(GuestAddress(layout::KERNEL_BASE)),
        &mut Cursor::new(&bytes),
        None,
    )
    .map_err(|e| LoadError::Invalid {
        image: name,
        format: "arm64 Linux",
        detail: e.to_string(),
    })?;
    Ok(Loaded {
        entry: res.kernel_load.0,
        end,
    })
}

/// Loads the initrd below the device tree; returns (address, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    kernel: &Loaded,
) -> Result<Option<(u64, u64)>, LoadError> {
    let Some(path) = &config.initrd else {
        return Ok(None);
    };
    let bytes = read("initrd", path)?;
    let size = bytes.len() as u64;
    let addr = layout::initrd_addr(config.memory, kernel.end, size).ok_or(LoadError::TooLarge {
        what: "initrd",
        size,
        mem: config.memory,
    })?;
    mem.write_slice(&bytes, GuestAddress(addr))
        .map_err(|e| LoadError::Boot(BootError::Initrd(e)))?;
    Ok(Some((addr, size)))
}

/// Writes the device tree; returns its address (X0 of vCPU 0).
pub fn write_fdt(
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    mpidrs: Vec<u64>,
    initrd: Option<(u64, u64)>,
    virtio: Vec<(u64, u32)>,
    pmu: bool,
) -> Result<u64, LoadError> {
    if config.cmdline.len() >= CMDLINE_MAX {
        return Err(LoadError::Cmdline(format!(
            "{} bytes, arm64 Linux takes at most {}",
            config.cmdline.len(),
            CMDLINE_MAX - 1
        )));
    }
    let cfg = fdt::FdtConfig {
        mpidrs,
        memory: (layout::DRAM_START, config.memory),
        cmdline: config.cmdline.clone(),
        initrd,
        serial: (layout::SERIAL_BASE, layout::SERIAL_SPI),
        virtio,
        pmu,
    };
    let blob = fdt::create_fdt(&cfg).map_err(|e| LoadError::Boot(BootError::Fdt(e)))?;
    let addr = layout::fdt_addr(config.memory).ok_or(LoadError::Boot(BootError::NoFdtRoom))?;
    mem.write_slice(&blob, GuestAddress(addr))
        .map_err(|e| LoadError::Boot(BootError::FdtWrite(e)))?;
    Ok(addr)
}
