//! Minimal ACPI tables (ACPI 6.3), so guests that only understand ACPI (the Debian cloud
//! kernel is built without `CONFIG_X86_MPPARSE`) find every vCPU and the IOAPIC.
//!
//! One contiguous block at [`ACPI_START`] (0xe0000, in the BIOS area that Linux scans for
//! the RSDP, reserved in the e820 map):
//!
//! ```text
//! +0x00  RSDP  "RSD PTR " revision 2, RSDT address 0, XSDT address, both checksums
//! +0x40  FACS  version 2 (64-byte aligned)
//! +0x80  XSDT  -> FADT, MADT
//! ....   FADT  revision 6.3, FIRMWARE_CTRL -> FACS, DSDT / X_DSDT -> DSDT; SCI on ISA
//!              IRQ 3; no SMI_CMD (always in ACPI mode); PM1a event block at port 0x600,
//!              PM1a control block at 0x604 (`devices::AcpiPm`); no PM timer, no GPEs;
//!              IAPC_BOOT_ARCH: legacy devices + 8042 present, no VGA; century = 0x32
//! ....   DSDT  \_SB.COM1 (PNP0501, 0x3f8, IRQ 4), \_SB.PS2K (PNP0303, 0x60/0x64, IRQ 1),
//!              \_SB.RTC_ (PNP0B00, 0x70, IRQ 8); one \_SB.VRnn ("LNRO0005", _UID n,
//!              Memory32Fixed + Extended Interrupt) per virtio-mmio device
//!              ([`AcpiConfig::virtio_mmio`]); \_S5 (soft-off, SLP_TYP 5: `poweroff`)
//! ....   MADT  LAPIC address 0xfee00000, PCAT_COMPAT; one Processor Local APIC per vCPU
//!              (processor UID = APIC id = index, enabled); one I/O APIC (id = number of
//!              CPUs as in the MP table, 0xfec00000, GSI base 0); interrupt source
//!              overrides ISA IRQ 0 -> GSI 0 and the SCI (IRQ 3 -> GSI 3, level, active
//!              high); Local APIC NMI on LINT1 of every CPU
//! ```
//!
//! Tables start 16-byte aligned. The whole block is at most a few KiB (about 2.4 KiB for
//! 254 CPUs) and is checked to fit `[ACPI_START, ACPI_END)`.
//!
//! **Not hardware-reduced.** A hardware-reduced FADT is smaller (no SCI, no PM1 blocks) but
//! makes Linux drop the 8259 PIC (`acpi_generic_reduced_hw_init`): ISA IRQ numbers then
//! exist only for devices the DSDT describes, and get other Linux numbers (ttyS0 "irq =
//! 25"). Drivers using fixed ISA IRQs break: `i8042.nopnp` (IRQ 1) and, above all, the
//! `virtio_mmio.device=4K@<base>:<irq>` disks (GSI 5, 6, ...; how vpmu-vmm announced them
//! then, and still does with `acpi=off`): request_irq fails and no disk appears. With a full FADT Linux keeps the PIC and the 1:1 ISA IRQ numbering of
//! the MP-table world. The SCI is never raised (no fixed or general-purpose events).
//! Its IRQ is 3, not the usual 9, because GSI 9 is a virtio disk's (edge) interrupt and a
//! level-triggered SCI cannot share it.
//!
//! The interrupt source override maps ISA IRQ 0 to GSI 0 (identity) rather than the GSI 2
//! that PC firmware (and QEMU, which re-routes KVM's GSI 0 to IOAPIC pin 2) reports:
//! vpmu-vmm keeps KVM's default routing, where the in-kernel PIT raises GSI 0 = IOAPIC
//! pin 0, exactly what the MP table says (ISA IRQ n -> pin n).
//!
//! **Soft-off (S5).** The DSDT's `Name (_S5, Package (0x04) { 0x05, 0x05, Zero, Zero })`
//! is the only sleep state offered (no `\_S1`..`\_S4`), so Linux registers
//! `acpi_power_off` and `poweroff` writes PM1a_CNT = SLP_TYP 5 | SLP_EN, which
//! `devices::AcpiPm` turns into the end of the VM ("guest powered off", status 0).
//!
//! Linux learns the RSDP address from `boot_params.acpi_rsdp_addr` (bzImage,
//! [`crate::x86_64::zero_page::ZeroPageConfig::rsdp_addr`]) or `hvm_start_info.rsdp_paddr` (PVH);
//! older kernels find it by scanning 0xe0000..0xfffff on 16-byte boundaries.
//!
//! **virtio-mmio devices** are announced the way QEMU (microvm, arm virt), Firecracker and
//! Cloud Hypervisor do, so that Linux's `virtio_mmio` driver binds through its ACPI match
//! table (`virtio_mmio_acpi_match`: `{ "LNRO0005", }`) with no kernel command line
//! parameter and without `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`:
//!
//! ```text
//! Device (VR00) {
//!     Name (_HID, "LNRO0005")        // a string: 8 characters, not an EISA id
//!     Name (_UID, 0)
//!     Name (_CRS, ResourceTemplate () {
//!         Memory32Fixed (ReadWrite, 0xd0000000, 0x1000)
//!         Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { 5 }
//!     })
//! }
//! ```
//!
//! Edge, active high, exclusive: the VMM raises the line with an irqfd on an IOAPIC pin
//! (KVM's default routing, GSI n = pin n), a pulse, never held. Firecracker's x86 DSDT
//! uses the same flags; QEMU microvm's level flags match its level-triggered lines.

use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::x86_64::layout::{ACPI_END, ACPI_START, IOAPIC_ADDR, LAPIC_ADDR};

/// Most CPUs described: APIC ids are 8 bits, 0xff is the broadcast id and the IOAPIC
/// takes id N (same limit as [`crate::x86_64::mptable::MAX_CPUS`]).
pub const MAX_CPUS: u32 = 254;

/// Guest-physical address of the RSDP.
pub const RSDP_ADDR: u64 = ACPI_START;

/// Size of the ACPI 2.0+ RSDP.
pub const RSDP_SIZE: usize = 36;
/// Size of the common system description table header.
pub const HEADER_SIZE: usize = 36;
/// Size of the ACPI 6.x FADT (up to and including the hypervisor vendor identity).
pub const FADT_SIZE: usize = 276;
/// Size of the MADT before its interrupt controller structures.
pub const MADT_FIXED_SIZE: usize = HEADER_SIZE + 8;
/// Processor Local APIC structure size.
pub const MADT_LAPIC_SIZE: usize = 8;
/// I/O APIC structure size.
pub const MADT_IOAPIC_SIZE: usize = 12;
/// Interrupt Source Override structure size.
pub const MADT_ISO_SIZE: usize = 10;
/// Local APIC NMI structure size.
pub const MADT_LAPIC_NMI_SIZE: usize = 6;
/// Interrupt source overrides in the MADT (IRQ 0, the SCI).
pub const MADT_ISO_COUNT: usize = 2;

/// FADT flags: WBINVD works.
pub const FADT_F_WBINVD: u32 = 1 << 0;
/// FADT flags: power button is a control-method device or absent.
pub const FADT_F_PWR_BUTTON: u32 = 1 << 4;
/// FADT flags: sleep button is a control-method device or absent.
pub const FADT_F_SLP_BUTTON: u32 = 1 << 5;
/// FADT flags: hardware-reduced ACPI (not set: see the module docs).
pub const FADT_F_HW_REDUCED_ACPI: u32 = 1 << 20;
/// I/O port of the PM1a event block (PM1_STS, PM1_EN; 2 bytes each), emulated by
/// `devices::AcpiPm`.
pub const PM1A_EVT_BLK: u16 = 0x600;
/// Length of the PM1a event block.
pub const PM1_EVT_LEN: u8 = 4;
/// I/O port of the PM1a control block (PM1_CNT, 2 bytes).
pub const PM1A_CNT_BLK: u16 = 0x604;
/// Length of the PM1a control block.
pub const PM1_CNT_LEN: u8 = 2;
/// SLP_TYP of the S5 (soft-off) state, in the DSDT's `\_S5` package and decoded by
/// `devices::AcpiPm` (bits 12:10 of PM1_CNT). Any value 0-7 works (it is ours to choose);
/// 5 matches the state's number, as in Cloud Hypervisor and Firecracker.
pub const SLP_TYP_S5: u8 = 5;
/// ISA IRQ (= GSI) of the SCI: level triggered, active high, never raised. Not the usual
/// 9: vpmu-vmm gives GSI 9 (edge) to a virtio disk, and a level SCI cannot share it.
pub const SCI_IRQ: u8 = 3;
/// Size of the FACS.
pub const FACS_SIZE: usize = 64;
/// MPS INTI flags: active high (bits 1:0 = 01), level triggered (bits 3:2 = 11).
pub const MPS_INTI_LEVEL_HIGH: u16 = 0x000d;
/// IAPC_BOOT_ARCH: legacy (ISA) devices present (the UART, the i8042, the CMOS RTC).
pub const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
/// IAPC_BOOT_ARCH: an 8042 keyboard controller is present.
pub const IAPC_8042: u16 = 1 << 1;
/// IAPC_BOOT_ARCH: no VGA.
pub const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// FADT CENTURY: the CMOS RAM index of the century byte.
pub const CMOS_CENTURY_INDEX: u8 = 0x32;
/// FADT major revision (header revision field): ACPI 6.
pub const FADT_REVISION: u8 = 6;
/// FADT minor revision: 6.3.
pub const FADT_MINOR_REVISION: u8 = 3;
/// MADT revision for ACPI 6.3.
pub const MADT_REVISION: u8 = 5;
/// DSDT revision: 2 (64-bit AML integers).
pub const DSDT_REVISION: u8 = 2;
/// XSDT revision.
pub const XSDT_REVISION: u8 = 1;
/// MADT flags: the system also has dual 8259 PICs (KVM's in-kernel PIC).
pub const MADT_PCAT_COMPAT: u32 = 1;
/// Processor Local APIC flags: enabled.
pub const LAPIC_ENABLED: u32 = 1;

const MADT_TYPE_LAPIC: u8 = 0;
const MADT_TYPE_IOAPIC: u8 = 1;
const MADT_TYPE_ISO: u8 = 2;
const MADT_TYPE_LAPIC_NMI: u8 = 4;
const OEM_ID: &[u8; 6] = b"VPMUVM";
const OEM_REVISION: u32 = 1;
const CREATOR_ID: &[u8; 4] = b"VPMU";
const CREATOR_REVISION: u32 = 1;

/// ACPI errors.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// Zero or too many CPUs.
    #[error("cannot describe {0} CPUs in the ACPI MADT (1..={MAX_CPUS})")]
    BadCpuCount(u32),
    /// The tables do not fit the reserved region (cannot happen for valid CPU counts).
    #[error("ACPI tables of {len} bytes do not fit the {max} bytes reserved at {ACPI_START:#x}")]
    TooLarge {
        /// Size of the tables.
        len: usize,
        /// Size of the region.
        max: u64,
    },
    /// A virtio-mmio device the DSDT cannot describe.
    #[error("cannot describe virtio-mmio device {index} ({base:#x}, {size:#x} bytes, GSI {gsi}) in the DSDT: {why}")]
    BadVirtioMmio {
        /// Index in [`AcpiConfig::virtio_mmio`].
        index: usize,
        /// Base address.
        base: u64,
        /// Size.
        size: u32,
        /// Interrupt.
        gsi: u32,
        /// What is wrong.
        why: &'static str,
    },
    /// Guest memory write.
    #[error("writing the ACPI tables at {addr:#x} ({len} bytes): {source}")]
    Write {
        /// Address.
        addr: u64,
        /// Length.
        len: usize,
        /// Underlying error.
        source: GuestMemoryError,
    },
}

/// The ACPI checksum byte for `bytes` (whose checksum field is still 0): the value that
/// makes the byte sum 0 mod 256.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, &b| a.wrapping_add(b))
        .wrapping_neg()
}

/// A table under construction: header with length and checksum patched by [`finish`].
fn header(signature: &[u8; 4], revision: u8, oem_table_id: &[u8; 8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(HEADER_SIZE);
    t.extend_from_slice(signature);
    t.extend_from_slice(&0u32.to_le_bytes()); // length, patched
    t.push(revision);
    t.push(0); // checksum, patched
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(oem_table_id);
    t.extend_from_slice(&OEM_REVISION.to_le_bytes());
    t.extend_from_slice(CREATOR_ID);
    t.extend_from_slice(&CREATOR_REVISION.to_le_bytes());
    debug_assert_eq!(t.len(), HEADER_SIZE);
    t
}

fn finish(mut t: Vec<u8>) -> Vec<u8> {
    let len = u32::try_from(t.len()).expect("an ACPI table is far smaller than 4 GiB");
    t[4..8].copy_from_slice(&len.to_le_bytes());
    t[9] = 0;
    t[9] = checksum(&t);
    t
}

/// Hand-assembled AML (ACPI 6.3 chapter 20) for the DSDT's few objects.
mod aml {
    const SCOPE_OP: u8 = 0x10;
    const NAME_OP: u8 = 0x08;
    const BUFFER_OP: u8 = 0x11;
    const PACKAGE_OP: u8 = 0x12;
    const BYTE_PREFIX: u8 = 0x0a;
    const WORD_PREFIX: u8 = 0x0b;
    const DWORD_PREFIX: u8 = 0x0c;
    const EXT_OP_PREFIX: u8 = 0x5b;
    const DEVICE_OP: u8 = 0x82;
    const STRING_PREFIX: u8 = 0x0d;
    const QWORD_PREFIX: u8 = 0x0e;
    const ZERO_OP: u8 = 0x00;
    const ONE_OP: u8 = 0x01;
    /// Large resource descriptors (6.4.3).
    const MEMORY32_FIXED_TAG: u8 = 0x86;
    const EXTENDED_IRQ_TAG: u8 = 0x89;
    /// Extended Interrupt flags (6.4.3.6): bit 0 consumer, bit 1 edge, bit 2 active low,
    /// bit 3 shared, bit 4 wake capable.
    pub const EXT_IRQ_CONSUMER: u8 = 1 << 0;
    /// Edge triggered (clear: level).
    pub const EXT_IRQ_EDGE: u8 = 1 << 1;
    /// Small resource descriptors (6.4.2).
    const IO_PORT_TAG: u8 = 0x47;
    const IRQ_NO_FLAGS_TAG: u8 = 0x22;
    const END_TAG: u8 = 0x79;

    /// PkgLength (20.2.4) of a package whose contents after the PkgLength are `len`
    /// bytes; the encoded length counts its own bytes.
    #[allow(clippy::cast_possible_truncation)] // splits `total` (< 2^28 + 4) into its bytes
    pub fn pkg_length(len: usize) -> Vec<u8> {
        let mut n = 1;
        while n < 4 && len + n >= [1 << 6, 1 << 12, 1 << 20, 1 << 28][n - 1] {
            n += 1;
        }
        let total = len + n;
        if n == 1 {
            return vec![total as u8];
        }
        let mut v = vec![(((n - 1) as u8) << 6) | (total & 0xf) as u8];
        for i in 1..n {
            v.push((total >> (4 + 8 * (i - 1))) as u8);
        }
        v
    }

    fn package(prefix: &[u8], body: &[u8]) -> Vec<u8> {
        let mut v = prefix.to_vec();
        v.extend_from_slice(&pkg_length(body.len()));
        v.extend_from_slice(body);
        v
    }

    /// `Scope(\NAME) { body }`.
    pub fn root_scope(name: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut b = vec![b'\\'];
        b.extend_from_slice(name);
        b.extend_from_slice(body);
        package(&[SCOPE_OP], &b)
    }

    /// `Device(NAME) { body }`.
    pub fn device(name: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut b = name.to_vec();
        b.extend_from_slice(body);
        package(&[EXT_OP_PREFIX, DEVICE_OP], &b)
    }

    /// `Name(NAME, data)`.
    pub fn name(name: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut v = vec![NAME_OP];
        v.extend_from_slice(name);
        v.extend_from_slice(data);
        v
    }

    /// The integer `EisaId("AAA####")` as a DWordConst: three 5-bit letters and four hex
    /// digits, stored so that the bytes in memory read in that order.
    pub fn eisa_id(id: &[u8; 7]) -> Vec<u8> {
        let l = |c: u8| u32::from(c.wrapping_sub(0x40) & 0x1f);
        let h = |c: u8| {
            u32::from(match c {
                b'0'..=b'9' => c - b'0',
                b'A'..=b'F' => c - b'A' + 10,
                b'a'..=b'f' => c - b'a' + 10,
                _ => 0,
            })
        };
        let v = (l(id[0]) << 26)
            | (l(id[1]) << 21)
            | (l(id[2]) << 16)
            | (h(id[3]) << 12)
            | (h(id[4]) << 8)
            | (h(id[5]) << 4)
            | h(id[6]);
        let mut out = vec![DWORD_PREFIX];
        out.extend_from_slice(&v.to_be_bytes());
        out
    }

    /// A string constant: `"text"` (ASCII, NUL-terminated).
    pub fn string(text: &str) -> Vec<u8> {
        let mut v = vec![STRING_PREFIX];
        v.extend_from_slice(text.as_bytes());
        v.push(0);
        v
    }

    /// An integer constant in its shortest encoding (ZeroOp, OneOp, Byte/Word/DWord/QWord).
    #[allow(clippy::cast_possible_truncation)] // each arm's range fits its cast
    pub fn integer(n: u64) -> Vec<u8> {
        match n {
            0 => vec![ZERO_OP],
            1 => vec![ONE_OP],
            2..=0xff => vec![BYTE_PREFIX, n as u8],
            0x100..=0xffff => [&[WORD_PREFIX][..], &(n as u16).to_le_bytes()].concat(),
            0x1_0000..=0xffff_ffff => [&[DWORD_PREFIX][..], &(n as u32).to_le_bytes()].concat(),
            _ => [&[QWORD_PREFIX][..], &n.to_le_bytes()].concat(),
        }
    }

    /// `Package (n) { elements }` (n = the number of elements, at most 255; each element
    /// already encoded, e.g. by [`integer`]).
    pub fn package_of(elements: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![u8::try_from(elements.len()).unwrap_or(u8::MAX)]; // NumElements
        for e in elements.iter().take(0xff) {
            b.extend_from_slice(e);
        }
        package(&[PACKAGE_OP], &b)
    }

    /// `Memory32Fixed(ReadWrite, base, len)`.
    pub fn memory32_fixed(base: u32, len: u32) -> Vec<u8> {
        let mut v = vec![MEMORY32_FIXED_TAG, 9, 0, 0x01]; // length 9, read-write
        v.extend_from_slice(&base.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        v
    }

    /// `Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive) { gsi }`.
    pub fn extended_irq_edge(gsi: u32) -> Vec<u8> {
        // Length 6: flags, table length (1), one 32-bit interrupt number.
        let mut v = vec![EXTENDED_IRQ_TAG, 6, 0, EXT_IRQ_CONSUMER | EXT_IRQ_EDGE, 1];
        v.extend_from_slice(&gsi.to_le_bytes());
        v
    }

    /// `IO(Decode16, base, base, 1, len)`.
    pub fn io(base: u16, len: u8) -> Vec<u8> {
        let [lo, hi] = base.to_le_bytes();
        vec![IO_PORT_TAG, 0x01, lo, hi, lo, hi, 0x01, len]
    }

    /// `IRQNoFlags() {irq}` (edge, active high, exclusive).
    pub fn irq(irq: u8) -> Vec<u8> {
        let mask = (1u16 << (irq & 0xf)).to_le_bytes();
        vec![IRQ_NO_FLAGS_TAG, mask[0], mask[1]]
    }

    /// `ResourceTemplate() { descriptors }`: a buffer ending with an end tag.
    pub fn resource_template(descriptors: &[Vec<u8>]) -> Vec<u8> {
        let mut data: Vec<u8> = descriptors.concat();
        data.extend_from_slice(&[END_TAG, 0]);
        let mut b = match u8::try_from(data.len()) {
            Ok(n) => vec![BYTE_PREFIX, n],
            Err(_) => {
                let mut v = vec![WORD_PREFIX];
                let len = u16::try_from(data.len()).expect("resource template over 64 KiB");
                v.extend_from_slice(&len.to_le_bytes());
                v
            }
        };
        b.extend_from_slice(&data);
        package(&[BUFFER_OP], &b)
    }
}

/// A legacy ISA device described in the DSDT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegacyDevice {
    /// ACPI name segment under `\_SB`.
    pub name: &'static [u8; 4],
    /// `_HID` as an EISA id.
    pub hid: &'static [u8; 7],
    /// I/O port ranges `(base, length)`.
    pub ports: &'static [(u16, u8)],
    /// ISA IRQ.
    pub irq: u8,
}

/// The legacy ISA devices the DSDT describes (vpmu-vmm's UART, i8042 and CMOS RTC), so
/// that Linux's PnP layer binds them (`rtc_cmos 00:02`, `00:00: ttyS0`). They would be
/// essential in hardware-reduced mode, where Linux maps ISA IRQs only for devices ACPI
/// describes.
pub const LEGACY_DEVICES: [LegacyDevice; 3] = [
    LegacyDevice {
        name: b"COM1",
        hid: b"PNP0501",
        ports: &[(0x3f8, 8)],
        irq: 4,
    },
    LegacyDevice {
        name: b"PS2K",
        hid: b"PNP0303",
        ports: &[(0x60, 1), (0x64, 1)],
        irq: 1,
    },
    LegacyDevice {
        name: b"RTC_",
        hid: b"PNP0B00",
        ports: &[(0x70, 2)],
        irq: 8,
    },
];

/// A virtio-mmio device (VIRTIO 1.2 4.2) to announce in the DSDT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioDevice {
    /// Guest-physical base of its register window (below 4 GiB: Memory32Fixed).
    pub base: u64,
    /// Size of the window.
    pub size: u32,
    /// Its interrupt (GSI = IOAPIC pin), raised edge-triggered, active high.
    pub gsi: u32,
}

/// `_HID` of a virtio-mmio device: Linux's `virtio_mmio_acpi_match`.
pub const VIRTIO_MMIO_HID: &str = "LNRO0005";

/// Most virtio-mmio devices the DSDT describes (names `VR00`..`VRFF`).
pub const MAX_VIRTIO_MMIO: usize = 256;

/// What the ACPI tables describe beyond the fixed platform.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs (1..=[`MAX_CPUS`]).
    pub cpus: u32,
    /// virtio-mmio devices, announced as `\_SB.VRnn` (n = index, hex) with `_UID` n.
    pub virtio_mmio: Vec<VirtioMmioDevice>,
}

impl AcpiConfig {
    /// `cpus` vCPUs and no virtio-mmio devices.
    pub fn with_cpus(cpus: u32) -> Self {
        AcpiConfig {
            cpus,
            virtio_mmio: Vec::new(),
        }
    }
}

/// ACPI name segment of virtio-mmio device `index` (< [`MAX_VIRTIO_MMIO`]): `VR00`, `VR01`,
/// ..., `VR0A`, ... `VRFF`.
pub fn virtio_mmio_name(index: usize) -> [u8; 4] {
    let hex = b"0123456789ABCDEF";
    [b'V', b'R', hex[(index >> 4) & 0xf], hex[index & 0xf]]
}

/// `Device(VRnn) { _HID "LNRO0005", _UID index, _CRS { Memory32Fixed, Interrupt } }`.
fn virtio_mmio_device_aml(index: usize, d: &VirtioMmioDevice) -> Result<Vec<u8>, AcpiError> {
    let bad = |why| AcpiError::BadVirtioMmio {
        index,
        base: d.base,
        size: d.size,
        gsi: d.gsi,
        why,
    };
    if index >= MAX_VIRTIO_MMIO {
        return Err(bad("too many devices"));
    }
    if d.size == 0 {
        return Err(bad("empty window"));
    }
    let base = u32::try_from(d.base).map_err(|_| bad("base above 4 GiB"))?;
    if u64::from(base) + u64::from(d.size) > 1 << 32 {
        return Err(bad("window crosses 4 GiB"));
    }
    let mut body = aml::name(b"_HID", &aml::string(VIRTIO_MMIO_HID));
    body.extend_from_slice(&aml::name(b"_UID", &aml::integer(index as u64)));
    let crs = aml::resource_template(&[
        aml::memory32_fixed(base, d.size),
        aml::extended_irq_edge(d.gsi),
    ]);
    body.extend_from_slice(&aml::name(b"_CRS", &crs));
    Ok(aml::device(&virtio_mmio_name(index), &body))
}

/// `Name (_S5, Package (0x04) { SLP_TYP_S5, SLP_TYP_S5, Zero, Zero })` at the root: the
/// soft-off state's SLP_TYPa (PM1a_CNT), SLP_TYPb (PM1b_CNT, absent here) and two
/// reserved elements (ACPI 6.3 7.4.2).
pub fn s5_aml() -> Vec<u8> {
    let slp_typ = aml::integer(u64::from(SLP_TYP_S5));
    aml::name(
        b"_S5_",
        &aml::package_of(&[slp_typ.clone(), slp_typ, aml::integer(0), aml::integer(0)]),
    )
}

/// The DSDT: `Scope(\_SB)` with one device per entry of [`LEGACY_DEVICES`]
/// (`_HID`, `_UID`, `_CRS` with its I/O ports and IRQ), then one `LNRO0005` device per
/// virtio-mmio device; then `\_S5` ([`s5_aml`]).
pub fn dsdt_bytes(virtio_mmio: &[VirtioMmioDevice]) -> Result<Vec<u8>, AcpiError> {
    let mut sb = Vec::new();
    for d in LEGACY_DEVICES {
        let mut res: Vec<Vec<u8>> = d.ports.iter().map(|&(p, l)| aml::io(p, l)).collect();
        res.push(aml::irq(d.irq));
        let mut body = aml::name(b"_HID", &aml::eisa_id(d.hid));
        body.extend_from_slice(&aml::name(b"_UID", &[0x00])); // ZeroOp
        body.extend_from_slice(&aml::name(b"_CRS", &aml::resource_template(&res)));
        sb.extend_from_slice(&aml::device(d.name, &body));
    }
    for (i, d) in virtio_mmio.iter().enumerate() {
        sb.extend_from_slice(&virtio_mmio_device_aml(i, d)?);
    }
    let mut t = header(b"DSDT", DSDT_REVISION, b"VPMUDSDT");
    t.extend_from_slice(&aml::root_scope(b"_SB_", &sb));
    t.extend_from_slice(&s5_aml());
    Ok(finish(t))
}

/// The FACS: no waking vector, no global lock owner, version 2 (no checksum).
pub fn facs_bytes() -> [u8; FACS_SIZE] {
    let mut f = [0u8; FACS_SIZE];
    f[0..4].copy_from_slice(b"FACS");
    #[allow(clippy::cast_possible_truncation)] // FACS_SIZE is 64
    f[4..8].copy_from_slice(&(FACS_SIZE as u32).to_le_bytes());
    f[32] = 2; // version
    f
}

/// The FADT pointing at the FACS at `facs_addr` and the DSDT at `dsdt_addr` (both below
/// 4 GiB: the block lives below 1 MiB).
pub fn fadt_bytes(facs_addr: u64, dsdt_addr: u64) -> Vec<u8> {
    let mut t = header(b"FACP", FADT_REVISION, b"VPMUFACP");
    t.resize(FADT_SIZE, 0);
    let facs = u32::try_from(facs_addr).expect("the FACS is below 4 GiB");
    let dsdt = u32::try_from(dsdt_addr).expect("the DSDT is below 4 GiB");
    t[36..40].copy_from_slice(&facs.to_le_bytes()); // FIRMWARE_CTRL
    t[40..44].copy_from_slice(&dsdt.to_le_bytes()); // DSDT
    t[46..48].copy_from_slice(&u16::from(SCI_IRQ).to_le_bytes()); // SCI_INT
                                                                  // SMI_CMD (48) = 0: no SMI command port, the system is always in ACPI mode.
    t[56..60].copy_from_slice(&u32::from(PM1A_EVT_BLK).to_le_bytes());
    t[64..68].copy_from_slice(&u32::from(PM1A_CNT_BLK).to_le_bytes());
    // PM1b, PM2, PM_TMR, GPE0/1 blocks = 0: absent (Linux then uses no ACPI PM timer).
    t[88] = PM1_EVT_LEN;
    t[89] = PM1_CNT_LEN;
    // P_LVL2_LAT / P_LVL3_LAT > 100 / 1000 us: C2 / C3 not supported.
    t[96..98].copy_from_slice(&101u16.to_le_bytes());
    t[98..100].copy_from_slice(&1001u16.to_le_bytes());
    t[108] = CMOS_CENTURY_INDEX;
    let boot_arch = IAPC_LEGACY_DEVICES | IAPC_8042 | IAPC_VGA_NOT_PRESENT;
    t[109..111].copy_from_slice(&boot_arch.to_le_bytes());
    let flags = FADT_F_WBINVD | FADT_F_PWR_BUTTON | FADT_F_SLP_BUTTON;
    t[112..116].copy_from_slice(&flags.to_le_bytes());
    // RESET_REG (116..128) = 0: no reset register (RESET_REG_SUP clear).
    t[131] = FADT_MINOR_REVISION;
    // X_FIRMWARE_CTRL (132) = 0: FIRMWARE_CTRL is used.
    t[140..148].copy_from_slice(&dsdt_addr.to_le_bytes()); // X_DSDT

    // X_PM*/X_GPE*/SLEEP_* generic addresses (148..268) = 0: ACPICA builds the X_PM1a
    // blocks from the 32-bit fields.
    t[268..276].copy_from_slice(b"VPMUVMM "); // hypervisor vendor identity
    finish(t)
}

/// Size of the MADT for `num_cpus` CPUs.
pub fn madt_size(num_cpus: u32) -> usize {
    MADT_FIXED_SIZE
        + num_cpus as usize * MADT_LAPIC_SIZE
        + MADT_IOAPIC_SIZE
        + MADT_ISO_COUNT * MADT_ISO_SIZE
        + MADT_LAPIC_NMI_SIZE
}

/// The MADT for `num_cpus` CPUs (1..=[`MAX_CPUS`]).
#[allow(clippy::cast_possible_truncation)] // small constant sizes and addresses below 4 GiB; CPU ids < MAX_CPUS (254)
pub fn madt_bytes(num_cpus: u32) -> Result<Vec<u8>, AcpiError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(AcpiError::BadCpuCount(num_cpus));
    }
    let mut t = header(b"APIC", MADT_REVISION, b"VPMUAPIC");
    t.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    t.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    for cpu in 0..num_cpus {
        let id = cpu as u8; // < MAX_CPUS
        t.extend_from_slice(&[MADT_TYPE_LAPIC, MADT_LAPIC_SIZE as u8, id, id]);
        t.extend_from_slice(&LAPIC_ENABLED.to_le_bytes());
    }
    let ioapic_id = num_cpus as u8;
    t.extend_from_slice(&[MADT_TYPE_IOAPIC, MADT_IOAPIC_SIZE as u8, ioapic_id, 0]);
    t.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes()); // GSI base

    // ISA (bus 0) IRQ 0 -> GSI 0, flags 0: conforms to the bus (edge, active high).
    t.extend_from_slice(&[MADT_TYPE_ISO, MADT_ISO_SIZE as u8, 0, 0]);
    t.extend_from_slice(&0u32.to_le_bytes());
    t.extend_from_slice(&0u16.to_le_bytes());
    // The SCI: ISA IRQ SCI_IRQ -> the same GSI, level triggered, active high.
    t.extend_from_slice(&[MADT_TYPE_ISO, MADT_ISO_SIZE as u8, 0, SCI_IRQ]);
    t.extend_from_slice(&u32::from(SCI_IRQ).to_le_bytes());
    t.extend_from_slice(&MPS_INTI_LEVEL_HIGH.to_le_bytes());
    // NMI on LINT1 of all processors (UID 0xff), flags 0: conforms.
    t.extend_from_slice(&[
        MADT_TYPE_LAPIC_NMI,
        MADT_LAPIC_NMI_SIZE as u8,
        0xff,
        0,
        0,
        1,
    ]);
    debug_assert_eq!(t.len(), madt_size(num_cpus));
    Ok(finish(t))
}

/// The XSDT listing `entries` (64-bit table addresses).
pub fn xsdt_bytes(entries: &[u64]) -> Vec<u8> {
    let mut t = header(b"XSDT", XSDT_REVISION, b"VPMUXSDT");
    for e in entries {
        t.extend_from_slice(&e.to_le_bytes());
    }
    finish(t)
}

/// The ACPI 2.0+ RSDP pointing at the XSDT at `xsdt_addr` (no RSDT).
pub fn rsdp_bytes(xsdt_addr: u64) -> [u8; RSDP_SIZE] {
    let mut r = [0u8; RSDP_SIZE];
    r[0..8].copy_from_slice(b"RSD PTR ");
    r[9..15].copy_from_slice(OEM_ID);
    r[15] = 2; // revision: ACPI 2.0+

    // RsdtAddress (16..20) = 0.
    #[allow(clippy::cast_possible_truncation)] // RSDP_SIZE is 36
    r[20..24].copy_from_slice(&(RSDP_SIZE as u32).to_le_bytes());
    r[24..32].copy_from_slice(&xsdt_addr.to_le_bytes());
    r[8] = checksum(&r[0..20]);
    r[32] = checksum(&r);
    r
}

fn align16(v: &mut Vec<u8>) {
    let n = v.len().next_multiple_of(16);
    v.resize(n, 0);
}

/// Offsets of the tables inside the block returned by [`acpi_tables_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiLayout {
    /// FACS offset (64-byte aligned).
    pub facs: usize,
    /// XSDT offset.
    pub xsdt: usize,
    /// FADT offset.
    pub fadt: usize,
    /// DSDT offset.
    pub dsdt: usize,
    /// MADT offset.
    pub madt: usize,
}

/// All tables as one block to place at [`ACPI_START`] (the RSDP first), and where each
/// table is inside it.
pub fn acpi_tables_bytes(config: &AcpiConfig) -> Result<(Vec<u8>, AcpiLayout), AcpiError> {
    let madt = madt_bytes(config.cpus)?;
    let dsdt = dsdt_bytes(&config.virtio_mmio)?;
    let addr = |off: usize| ACPI_START + off as u64;
    let mut b = vec![0u8; RSDP_SIZE];
    let facs_off = RSDP_SIZE.next_multiple_of(64);
    b.resize(facs_off, 0);
    b.extend_from_slice(&facs_bytes());
    let xsdt_off = b.len();
    let xsdt_len = HEADER_SIZE + 2 * 8;
    let fadt_off = (xsdt_off + xsdt_len).next_multiple_of(16);
    let dsdt_off = (fadt_off + FADT_SIZE).next_multiple_of(16);
    let madt_off = (dsdt_off + dsdt.len()).next_multiple_of(16);
    let xsdt = xsdt_bytes(&[addr(fadt_off), addr(madt_off)]);
    debug_assert_eq!(xsdt.len(), xsdt_len);
    b.extend_from_slice(&xsdt);
    align16(&mut b);
    b.extend_from_slice(&fadt_bytes(addr(facs_off), addr(dsdt_off)));
    align16(&mut b);
    b.extend_from_slice(&dsdt);
    align16(&mut b);
    b.extend_from_slice(&madt);
    b[0..RSDP_SIZE].copy_from_slice(&rsdp_bytes(addr(xsdt_off)));
    let max = ACPI_END - ACPI_START;
    if b.len() as u64 > max {
        return Err(AcpiError::TooLarge { len: b.len(), max });
    }
    Ok((
        b,
        AcpiLayout {
            facs: facs_off,
            xsdt: xsdt_off,
            fadt: fadt_off,
            dsdt: dsdt_off,
            madt: madt_off,
        },
    ))
}

/// Writes the tables `config` describes at [`ACPI_START`]; returns the RSDP address.
pub fn write_acpi_tables<M: GuestMemory + ?Sized>(
    mem: &M,
    config: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    let (b, _) = acpi_tables_bytes(config)?;
    mem.write_slice(&b, GuestAddress(ACPI_START))
        .map_err(|source| AcpiError::Write {
            addr: ACPI_START,
            len: b.len(),
            source,
        })?;
    Ok(GuestAddress(RSDP_ADDR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vm_memory::GuestMemoryMmap;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
    }
    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }
    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    /// A table found through a guest-physical address: checks the common header
    /// (signature, length, checksum, OEM fields) and returns its bytes.
    fn table<'a>(block: &'a [u8], addr: u64, sig: &[u8; 4]) -> &'a [u8] {
        assert!(addr >= ACPI_START, "{sig:?} below the block");
        let off = usize::try_from(addr - ACPI_START).unwrap();
        assert_eq!(off % 16, 0, "{sig:?} 16-byte aligned");
        let t = &block[off..];
        assert_eq!(&t[0..4], sig);
        let len = u32_at(t, 4) as usize;
        assert!(len >= HEADER_SIZE && len <= t.len(), "{sig:?} length {len}");
        let t = &t[..len];
        assert_eq!(sum(t), 0, "{sig:?} checksum");
        assert_eq!(&t[10..16], b"VPMUVM", "OEMID");
        assert_eq!(&t[28..32], b"VPMU", "creator id");
        t
    }

    /// The disks vpmu-vmm gives a VM with `n` of them.
    fn disks(n: usize) -> Vec<VirtioMmioDevice> {
        const GSIS: [u32; 8] = [5, 6, 7, 9, 10, 11, 14, 15];
        (0..n)
            .map(|i| VirtioMmioDevice {
                base: 0xd000_0000 + i as u64 * 0x1000,
                size: 0x1000,
                gsi: GSIS[i],
            })
            .collect()
    }

    /// Everything a guest would check, walking from the RSDP as Linux does.
    fn check(n: u32) {
        check_config(&AcpiConfig::with_cpus(n));
    }

    fn check_config(config: &AcpiConfig) {
        let n = config.cpus;
        let (b, layout) = acpi_tables_bytes(config).unwrap();
        assert!(ACPI_START + b.len() as u64 <= ACPI_END);
        // RSDP (ACPI 6.3 table 5.27).
        let r = &b[0..RSDP_SIZE];
        assert_eq!(&r[0..8], b"RSD PTR ");
        assert_eq!(sum(&r[0..20]), 0, "RSDP checksum (first 20 bytes)");
        assert_eq!(sum(r), 0, "RSDP extended checksum");
        assert_eq!(r[15], 2, "revision");
        assert_eq!(u32_at(r, 16), 0, "no RSDT");
        assert_eq!(u32_at(r, 20), 36, "length");
        assert_eq!(RSDP_ADDR % 16, 0);
        assert!(
            (0xe0000..0x100000).contains(&RSDP_ADDR),
            "found by the BIOS-area scan"
        );
        // XSDT.
        let x = table(&b, u64_at(r, 24), b"XSDT");
        assert_eq!(x.len(), 36 + 16);
        assert_eq!(x[8], 1);
        let fadt_addr = u64_at(x, 36);
        let madt_addr = u64_at(x, 44);
        assert_eq!(fadt_addr, ACPI_START + layout.fadt as u64);
        assert_eq!(madt_addr, ACPI_START + layout.madt as u64);
        // FADT (table 5.9 offsets).
        let f = table(&b, fadt_addr, b"FACP");
        assert_eq!(f.len(), 276);
        assert_eq!(f[8], 6, "FADT major revision");
        assert_eq!(f[131], 3, "FADT minor revision");
        let facs = u32_at(f, 36) as u64;
        assert_eq!(facs, ACPI_START + layout.facs as u64, "FIRMWARE_CTRL");
        assert_eq!(facs % 64, 0, "FACS 64-byte aligned");
        let fc = &b[layout.facs..layout.facs + 64];
        assert_eq!(&fc[0..4], b"FACS");
        assert_eq!((u32_at(fc, 4), fc[32]), (64, 2), "FACS length, version");
        let dsdt32 = u32_at(f, 40) as u64;
        assert_eq!(u64_at(f, 140), dsdt32, "X_DSDT = DSDT");
        assert_eq!(u64_at(f, 132), 0, "X_FIRMWARE_CTRL");
        let flags = u32_at(f, 112);
        assert_eq!(
            flags & (1 << 20),
            0,
            "not hardware-reduced: Linux keeps the 8259 PIC"
        );
        assert_eq!(flags & (1 << 10), 0, "no RESET_REG_SUP");
        assert_eq!(u16_at(f, 46), 3, "SCI_INT");
        assert_eq!(u32_at(f, 48), 0, "no SMI_CMD: always in ACPI mode");
        assert_eq!((u32_at(f, 56), f[88]), (0x600, 4), "PM1a_EVT_BLK");
        assert_eq!((u32_at(f, 64), f[89]), (0x604, 2), "PM1a_CNT_BLK");
        assert_eq!((u32_at(f, 60), u32_at(f, 68)), (0, 0), "no PM1b");
        assert_eq!(u32_at(f, 76), 0, "no PM timer");
        assert_eq!(f[91], 0, "PM_TMR_LEN");
        assert_eq!((u32_at(f, 80), f[92]), (0, 0), "no GPE0");
        assert_eq!(u16_at(f, 109), 0b111, "legacy devices, 8042, no VGA");
        assert_eq!(f[108], 0x32, "century");
        assert!(f[148..268].iter().all(|&x| x == 0), "no X_ blocks");
        assert_eq!(&f[268..276], b"VPMUVMM ");
        // DSDT.
        let d = table(&b, dsdt32, b"DSDT");
        assert_eq!(d, &dsdt_bytes(&config.virtio_mmio).unwrap()[..]);
        assert_eq!(d[8], 2);
        // MADT (5.2.12).
        let m = table(&b, madt_addr, b"APIC");
        assert_eq!(m.len(), madt_size(n));
        assert_eq!(m[8], 5);
        assert_eq!(u64::from(u32_at(m, 36)), LAPIC_ADDR);
        assert_eq!(u32_at(m, 40), 1, "PCAT_COMPAT");
        let mut off = 44;
        let (mut lapics, mut ioapics, mut isos, mut nmis) = (0u32, 0, 0, 0);
        while off < m.len() {
            let (ty, len) = (m[off], m[off + 1] as usize);
            let e = &m[off..off + len];
            match ty {
                0 => {
                    assert_eq!(len, 8);
                    assert_eq!(e[2] as u32, lapics, "processor UID = index");
                    assert_eq!(e[3] as u32, lapics, "APIC id = index");
                    assert_eq!(u32_at(e, 4), 1, "enabled");
                    lapics += 1;
                }
                1 => {
                    assert_eq!(len, 12);
                    assert_eq!(e[2] as u32, n, "IOAPIC id = number of CPUs");
                    assert_eq!(u64::from(u32_at(e, 4)), IOAPIC_ADDR);
                    assert_eq!(u32_at(e, 8), 0, "GSI base");
                    ioapics += 1;
                }
                2 => {
                    assert_eq!(len, 10);
                    assert_eq!(e[2], 0, "ISA bus");
                    if isos == 0 {
                        assert_eq!(e[3], 0, "ISA IRQ 0");
                        assert_eq!(u32_at(e, 4), 0, "GSI 0 (KVM's default routing)");
                        assert_eq!(u16_at(e, 8), 0, "conforms");
                    } else {
                        assert_eq!(e[3], 3, "the SCI");
                        assert_eq!(u32_at(e, 4), 3);
                        assert_eq!(u16_at(e, 8), 0xd, "level, active high");
                    }
                    isos += 1;
                }
                4 => {
                    assert_eq!(len, 6);
                    assert_eq!(e[2], 0xff, "all processors");
                    assert_eq!(e[5], 1, "LINT1");
                    nmis += 1;
                }
                t => panic!("unexpected MADT entry type {t}"),
            }
            off += len;
        }
        assert_eq!(off, m.len());
        assert_eq!((lapics, ioapics, isos, nmis), (n, 1, 2, 1));
    }

    #[test]
    fn tables_for_various_cpu_counts() {
        for n in [1, 2, 3, 32, 64, 128, 253, 254] {
            check(n);
        }
    }

    #[test]
    fn bad_counts() {
        for n in [0, 255, u32::MAX] {
            assert!(matches!(
                acpi_tables_bytes(&AcpiConfig::with_cpus(n)),
                Err(AcpiError::BadCpuCount(x)) if x == n
            ));
        }
    }

    #[test]
    fn checksum_of_known_bytes() {
        assert_eq!(checksum(&[]), 0);
        assert_eq!(checksum(&[1, 2, 3]), 0xfa);
        assert_eq!(checksum(&[0x80, 0x80]), 0);
    }

    #[test]
    fn linux_struct_sizes() {
        // ACPICA: sizeof(struct acpi_table_rsdp) = 36, acpi_table_fadt = 276,
        // acpi_table_header = 36, acpi_table_madt = 44.
        assert_eq!(rsdp_bytes(0).len(), 36);
        assert_eq!(fadt_bytes(0, 0).len(), 276);
        assert_eq!(facs_bytes().len(), 64);
        assert_eq!(madt_bytes(1).unwrap().len(), 44 + 8 + 12 + 2 * 10 + 6);
    }

    /// Decodes a PkgLength at `b[0..]`: (package length, bytes of the encoding).
    fn read_pkg_length(b: &[u8]) -> (usize, usize) {
        let n = usize::from(b[0] >> 6) + 1;
        if n == 1 {
            return (usize::from(b[0] & 0x3f), 1);
        }
        let len = b[1..n]
            .iter()
            .enumerate()
            .fold(usize::from(b[0] & 0xf), |len, (i, &x)| {
                len | usize::from(x) << (4 + 8 * i)
            });
        (len, n)
    }

    #[test]
    fn aml_pkg_length_encoding() {
        // Lengths count the PkgLength bytes themselves (ACPI 6.3 20.2.4).
        assert_eq!(aml::pkg_length(0), vec![1]);
        assert_eq!(aml::pkg_length(62), vec![63]);
        assert_eq!(
            aml::pkg_length(63),
            vec![0x40 | 1, 4],
            "65 = 0x41 in two bytes"
        );
        assert_eq!(aml::pkg_length(4093), vec![0x40 | 0xf, 0xff]);
        assert_eq!(aml::pkg_length(4094), vec![0x81, 0, 1], "4097: three bytes");
        for len in [0usize, 1, 61, 62, 63, 64, 200, 4093, 4094, 5000, 1 << 20] {
            let e = aml::pkg_length(len);
            assert_eq!(read_pkg_length(&e), (len + e.len(), e.len()), "len {len}");
        }
    }

    #[test]
    fn aml_eisa_id_and_resources() {
        // iasl: EisaId("PNP0501") = 0x0105D041, stored little-endian as 41 d0 05 01.
        assert_eq!(aml::eisa_id(b"PNP0501"), vec![0x0c, 0x41, 0xd0, 0x05, 0x01]);
        assert_eq!(aml::eisa_id(b"PNP0B00"), vec![0x0c, 0x41, 0xd0, 0x0b, 0x00]);
        assert_eq!(aml::io(0x3f8, 8), vec![0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8]);
        assert_eq!(aml::irq(4), vec![0x22, 0x10, 0x00]);
        assert_eq!(aml::irq(8), vec![0x22, 0x00, 0x01]);
        let rt = aml::resource_template(&[aml::io(0x70, 2), aml::irq(8)]);
        // BufferOp, PkgLength, ByteConst size, descriptors, end tag.
        assert_eq!(rt[0], 0x11);
        let (len, n) = read_pkg_length(&rt[1..]);
        assert_eq!(1 + len, rt.len());
        assert_eq!(&rt[1 + n..1 + n + 2], &[0x0a, 8 + 3 + 2]);
        assert_eq!(&rt[rt.len() - 2..], &[0x79, 0]);
    }

    /// Walks a DSDT: checks the header, the one `Scope(\\_SB_)` and the `\\_S5` after it,
    /// returns each device's (name, bytes after its PkgLength and name).
    fn dsdt_devices(d: &[u8]) -> Vec<([u8; 4], Vec<u8>)> {
        assert_eq!(&d[0..4], b"DSDT");
        assert_eq!(u32_at(d, 4) as usize, d.len());
        assert_eq!(sum(d), 0, "DSDT checksum");
        let aml = &d[HEADER_SIZE..];
        assert_eq!(aml[0], 0x10, "ScopeOp");
        let (len, n) = read_pkg_length(&aml[1..]);
        assert_eq!(
            &aml[1 + len..],
            &s5_aml()[..],
            "\\_S5 after the scope, last"
        );
        let aml = &aml[..1 + len];
        assert_eq!(&aml[1 + n..1 + n + 5], b"\\_SB_");
        // Walk the devices: ExtOp DeviceOp PkgLength NameSeg.
        let mut off = 1 + n + 5;
        let mut devs = Vec::new();
        while off < aml.len() {
            assert_eq!(&aml[off..off + 2], &[0x5b, 0x82], "DeviceOp at {off}");
            let (len, n) = read_pkg_length(&aml[off + 2..]);
            let dev = &aml[off + 2..off + 2 + len];
            let name: [u8; 4] = dev[n..n + 4].try_into().unwrap();
            devs.push((name, dev[n + 4..].to_vec()));
            off += 2 + len;
        }
        assert_eq!(off, aml.len());
        devs
    }

    #[test]
    fn dsdt_describes_the_legacy_devices() {
        let devs = dsdt_devices(&dsdt_bytes(&[]).unwrap());
        for (name, dev) in &devs {
            let has = |needle: &[u8]| dev.windows(needle.len()).any(|w| w == needle);
            let d = LEGACY_DEVICES
                .iter()
                .find(|d| d.name == name)
                .expect("a listed device");
            assert!(has(b"_HID") && has(&aml::eisa_id(d.hid)), "{name:?} _HID");
            assert!(has(b"_UID") && has(b"_CRS"), "{name:?}");
            for &(p, l) in d.ports {
                assert!(has(&aml::io(p, l)), "{name:?} port {p:#x}");
            }
            assert!(has(&aml::irq(d.irq)), "{name:?} IRQ {}", d.irq);
            assert_eq!(
                &dev[dev.len() - 2..],
                &[0x79, 0],
                "{name:?} _CRS ends the device"
            );
        }
        let names: Vec<_> = devs.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, vec![*b"COM1", *b"PS2K", *b"RTC_"]);
    }

    #[test]
    fn s5_package_byte_exact() {
        // iasl 20200925 compiles
        //   DefinitionBlock ("", "DSDT", 2, "VPMUVM", "VPMUDSDT", 1)
        //   { Name (_S5, Package (0x04) { 0x05, 0x05, Zero, Zero }) }
        // (or `Name (\_S5, Package () { 5, 5, 0, 0 })`: the same bytes, iasl drops the
        // root prefix at the root) to this AML after the 36-byte header:
        #[rustfmt::skip]
        let want: Vec<u8> = [
            &[0x08][..], b"_S5_",                 // NameOp, NameSeg
            &[0x12, 0x08, 0x04],                  // PackageOp, PkgLength 8, NumElements 4
            &[0x0a, 0x05, 0x0a, 0x05],            // ByteConst 5 (SLP_TYPa), 5 (SLP_TYPb)
            &[0x00, 0x00],                        // Zero, Zero (reserved)
        ]
        .concat();
        assert_eq!(SLP_TYP_S5, 5);
        assert_eq!(s5_aml(), want);
        assert_eq!(
            aml::package_of(&[]),
            vec![0x12, 0x02, 0x00],
            "Package () {{}}"
        );
        // The DSDT ends with it, once, and its checksum covers it.
        for n in [0, 1, 3] {
            let d = dsdt_bytes(&disks(n)).unwrap();
            assert!(d.ends_with(&want), "{n} disks");
            assert_eq!(d.windows(4).filter(|w| w == b"_S5_").count(), 1);
            assert_eq!(sum(&d), 0, "DSDT checksum with {n} disks");
            assert_eq!(u32_at(&d, 4) as usize, d.len());
        }
    }

    #[test]
    fn aml_string_integer_and_large_resources() {
        assert_eq!(aml::string("LNRO0005"), b"\x0dLNRO0005\0".to_vec());
        assert_eq!(aml::integer(0), vec![0x00], "ZeroOp");
        assert_eq!(aml::integer(1), vec![0x01], "OneOp");
        assert_eq!(aml::integer(7), vec![0x0a, 7]);
        assert_eq!(aml::integer(0xff), vec![0x0a, 0xff]);
        assert_eq!(aml::integer(0x100), vec![0x0b, 0, 1]);
        assert_eq!(aml::integer(0x1_0000), vec![0x0c, 0, 0, 1, 0]);
        assert_eq!(aml::integer(1 << 32), vec![0x0e, 0, 0, 0, 0, 1, 0, 0, 0]);
        // iasl: Memory32Fixed (ReadWrite, 0xD0000000, 0x00001000)
        assert_eq!(
            aml::memory32_fixed(0xd000_0000, 0x1000),
            vec![0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x10, 0x00, 0x00]
        );
        // iasl: Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,,) { 5 }
        assert_eq!(
            aml::extended_irq_edge(5),
            vec![0x89, 0x06, 0x00, 0x03, 0x01, 0x05, 0x00, 0x00, 0x00]
        );
        assert_eq!(
            &aml::extended_irq_edge(0x1234_5678)[5..],
            &[0x78, 0x56, 0x34, 0x12]
        );
    }

    #[test]
    fn virtio_mmio_device_byte_exact() {
        // What iasl makes of (ASL in the module docs):
        //   Device (VR00) { Name (_HID, "LNRO0005")  Name (_UID, Zero)
        //     Name (_CRS, ResourceTemplate () {
        //       Memory32Fixed (ReadWrite, 0xD0000000, 0x00001000)
        //       Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,,) { 5 } }) }
        #[rustfmt::skip]
        let want: Vec<u8> = [
            &[0x5b, 0x82, 0x3a][..], b"VR00",              // Device, PkgLength 58
            &[0x08], b"_HID", &[0x0d], b"LNRO0005", &[0x00], // Name, String
            &[0x08], b"_UID", &[0x00],                      // Name, ZeroOp
            &[0x08], b"_CRS", &[0x11, 0x1a, 0x0a, 0x17],    // Name, Buffer (PkgLength 26, 23 bytes)
            &[0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x10, 0x00, 0x00],
            &[0x89, 0x06, 0x00, 0x03, 0x01, 0x05, 0x00, 0x00, 0x00],
            &[0x79, 0x00],                                  // end tag, checksum 0 (valid)
        ]
        .concat();
        assert_eq!(virtio_mmio_device_aml(0, &disks(1)[0]).unwrap(), want);
        // Device 3: _UID 3 as a ByteConst, GSI 9, name VR03.
        let d3 = virtio_mmio_device_aml(3, &disks(4)[3]).unwrap();
        assert_eq!(&d3[3..7], b"VR03");
        assert_eq!(&d3[22..29], &[0x08, b'_', b'U', b'I', b'D', 0x0a, 3]);
        #[rustfmt::skip]
        let tail = [
            0x00, 0x30, 0x00, 0xd0, 0x00, 0x10, 0x00, 0x00, // base 0xd0003000, length 0x1000
            0x89, 0x06, 0x00, 0x03, 0x01, 0x09, 0x00, 0x00, 0x00, // GSI 9
            0x79, 0x00,
        ];
        assert_eq!(&d3[d3.len() - tail.len()..], &tail[..]);
        assert_eq!(virtio_mmio_name(10), *b"VR0A");
        assert_eq!(virtio_mmio_name(255), *b"VRFF");
    }

    #[test]
    fn dsdt_describes_the_virtio_mmio_devices() {
        for n in 0..=8 {
            let dsdt = dsdt_bytes(&disks(n)).unwrap();
            let devs = dsdt_devices(&dsdt);
            assert_eq!(devs.len(), 3 + n);
            for (i, (name, dev)) in devs[3..].iter().enumerate() {
                assert_eq!(*name, virtio_mmio_name(i));
                let d = disks(n)[i];
                let full = virtio_mmio_device_aml(i, &d).unwrap();
                assert!(full.ends_with(dev), "{name:?} as built alone");
                let has = |needle: &[u8]| dev.windows(needle.len()).any(|w| w == needle);
                assert!(has(&aml::name(b"_HID", &aml::string("LNRO0005"))));
                assert!(has(&aml::name(b"_UID", &aml::integer(i as u64))));
                let base = u32::try_from(d.base).unwrap();
                assert!(has(&aml::memory32_fixed(base, 0x1000)));
                assert!(has(&aml::extended_irq_edge(d.gsi)));
                assert_eq!(&dev[dev.len() - 2..], &[0x79, 0], "end tag last");
            }
            check_config(&AcpiConfig {
                cpus: 2,
                virtio_mmio: disks(n),
            });
        }
        // Many devices: the DSDT grows past 63 and 4095 bytes (multi-byte PkgLengths).
        let many: Vec<_> = (0..MAX_VIRTIO_MMIO as u64)
            .map(|i| VirtioMmioDevice {
                base: 0xd000_0000 + i * 0x1000,
                size: 0x1000,
                gsi: 16 + u32::try_from(i).unwrap(),
            })
            .collect();
        let devs = dsdt_devices(&dsdt_bytes(&many).unwrap());
        assert_eq!(devs.len(), 3 + MAX_VIRTIO_MMIO);
        check_config(&AcpiConfig {
            cpus: MAX_CPUS,
            virtio_mmio: many,
        });
    }

    #[test]
    fn bad_virtio_mmio_devices() {
        let ok = VirtioMmioDevice {
            base: 0xd000_0000,
            size: 0x1000,
            gsi: 5,
        };
        let bad = |d: VirtioMmioDevice| {
            matches!(
                dsdt_bytes(&[ok, d]),
                Err(AcpiError::BadVirtioMmio { index: 1, .. })
            )
        };
        assert!(bad(VirtioMmioDevice { size: 0, ..ok }));
        assert!(bad(VirtioMmioDevice {
            base: 1 << 32,
            ..ok
        }));
        assert!(bad(VirtioMmioDevice {
            base: 0xffff_f800,
            ..ok
        }));
        assert!(!bad(VirtioMmioDevice {
            base: 0xffff_f000,
            ..ok
        }));
        let too_many = vec![ok; MAX_VIRTIO_MMIO + 1];
        assert!(matches!(
            dsdt_bytes(&too_many),
            Err(AcpiError::BadVirtioMmio { index: 256, .. })
        ));
    }

    #[test]
    fn written_to_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        let config = AcpiConfig {
            cpus: 4,
            virtio_mmio: disks(2),
        };
        let rsdp = write_acpi_tables(&mem, &config).unwrap();
        assert_eq!(rsdp.0, RSDP_ADDR);
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, rsdp).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
        let (b, _) = acpi_tables_bytes(&config).unwrap();
        let mut back = vec![0u8; b.len()];
        mem.read_slice(&mut back, rsdp).unwrap();
        assert_eq!(back, b);
        // Guest memory ending inside the block.
        let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0xe0010)]).unwrap();
        assert!(matches!(
            write_acpi_tables(&small, &AcpiConfig::with_cpus(1)),
            Err(AcpiError::Write { .. })
        ));
    }

    proptest! {
        #[test]
        fn valid_for_1_to_32_cpus(n in 1u32..=32) {
            check(n);
        }

        #[test]
        fn never_panics_on_any_count(n in any::<u32>()) {
            let r = acpi_tables_bytes(&AcpiConfig::with_cpus(n));
            prop_assert_eq!(r.is_ok(), (1..=MAX_CPUS).contains(&n));
        }
    }
}
