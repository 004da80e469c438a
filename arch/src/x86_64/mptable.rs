//! Intel MultiProcessor Specification 1.4 tables, so guests find their CPUs, the
//! IOAPIC and the ISA interrupt routing without ACPI.
//!
//! At [`MPTABLE_START`] (the first KiB of the EBDA, where Linux's `smp_scan_config`
//! looks): the 16-byte floating pointer "_MP_", then the configuration table "PCMP":
//!
//! - one processor entry per vCPU (APIC id = index, enabled, BSP flag on CPU 0),
//! - one ISA bus (id 0),
//! - one IOAPIC (id = number of CPUs, version 0x11, at [`IOAPIC_ADDR`]),
//! - 16 I/O interrupt entries: ISA IRQ n -> IOAPIC pin n, polarity/trigger "conforms
//!   to bus" (ISA: edge, active high), matching KVM's default GSI routing,
//! - 2 local interrupt entries: ExtINT -> LINT0 and NMI -> LINT1 of all local APICs.
//!
//! With 40 or fewer CPUs the tables fit the EBDA's reserved 1 KiB; more CPUs spill into
//! the legacy VGA hole at 0xa0000, which is backed by guest RAM but not RAM in the e820
//! map, so the guest never reuses it. At most [`MAX_CPUS`] (254) CPUs: APIC ids are 8
//! bits, 0xff is the broadcast id, and the IOAPIC takes id N.

use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::x86_64::layout::{IOAPIC_ADDR, LAPIC_ADDR, LOW_MEM_END, MPTABLE_START};

/// Most CPUs the table can describe.
pub const MAX_CPUS: u32 = 254;
/// Floating pointer size.
pub const MPF_SIZE: usize = 16;
/// Configuration table header size.
pub const MPC_HEADER_SIZE: usize = 44;
/// Processor entry size.
pub const MPC_CPU_SIZE: usize = 20;
/// Size of every other entry.
pub const MPC_ENTRY_SIZE: usize = 8;
/// ISA IRQs routed.
pub const NUM_ISA_IRQS: u8 = 16;
/// Local APIC version reported (integrated APIC).
pub const APIC_VERSION: u8 = 0x14;
/// IOAPIC version reported (KVM's IOAPIC is 0x11).
pub const IOAPIC_VERSION: u8 = 0x11;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// Family 6 signature in processor entries (informational; Linux uses CPUID).
const CPU_SIGNATURE: u32 = 0x600;
/// FPU | APIC feature flags.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const ISA_BUS_ID: u8 = 0;

/// MP table errors.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Zero or too many CPUs.
    #[error("cannot describe {0} CPUs in an MP table (1..={MAX_CPUS})")]
    BadCpuCount(u32),
    /// Guest memory write.
    #[error("writing the MP table at {addr:#x} ({len} bytes): {source}")]
    Write {
        /// Address.
        addr: u64,
        /// Length.
        len: usize,
        /// Underlying error.
        source: GuestMemoryError,
    },
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, &b| a.wrapping_add(b))
        .wrapping_neg()
}

/// Total size of the floating pointer + configuration table for `num_cpus` CPUs.
pub fn mptable_size(num_cpus: u32) -> usize {
    MPF_SIZE
        + MPC_HEADER_SIZE
        + num_cpus as usize * MPC_CPU_SIZE
        + MPC_ENTRY_SIZE * (2 + usize::from(NUM_ISA_IRQS) + 2)
}

/// The tables as they must appear at [`MPTABLE_START`].
#[allow(clippy::cast_possible_truncation)] // CPU ids < MAX_CPUS (254), so the table stays small; addresses below 4 GiB
pub fn mptable_bytes(num_cpus: u32) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(MptableError::BadCpuCount(num_cpus));
    }
    let ioapic_id = num_cpus as u8;
    let mut t: Vec<u8> = Vec::with_capacity(mptable_size(num_cpus));
    // Floating pointer: filled after the table.
    t.extend_from_slice(&[0u8; MPF_SIZE]);
    // Configuration table header; length, count and checksum patched below.
    let hdr = t.len();
    t.extend_from_slice(b"PCMP");
    t.extend_from_slice(&[0, 0]); // base table length
    t.push(4); // spec revision 1.4
    t.push(0); // checksum
    t.extend_from_slice(b"VPMUVMM "); // OEM id
    t.extend_from_slice(b"vpmu-vmm    "); // product id
    t.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    t.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    t.extend_from_slice(&[0, 0]); // entry count
    t.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    t.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    t.push(0); // extended table checksum (empty table)
    t.push(0); // reserved
    debug_assert_eq!(t.len() - hdr, MPC_HEADER_SIZE);
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        t.push(ENTRY_PROCESSOR);
        t.push(cpu as u8);
        t.push(APIC_VERSION);
        t.push(CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 });
        t.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        t.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        t.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    t.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    t.extend_from_slice(b"ISA   ");
    count += 1;
    t.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    t.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    count += 1;
    for irq in 0..NUM_ISA_IRQS {
        // type, interrupt type, flags (u16: conforms), source bus, source IRQ, dest id, pin
        t.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            ISA_BUS_ID,
            irq,
            ioapic_id,
            irq,
        ]);
        count += 1;
    }
    for (kind, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1)] {
        t.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind, 0, 0, ISA_BUS_ID, 0, 0xff, lint]);
        count += 1;
    }
    let len = (t.len() - hdr) as u16;
    t[hdr + 4..hdr + 6].copy_from_slice(&len.to_le_bytes());
    t[hdr + 34..hdr + 36].copy_from_slice(&count.to_le_bytes());
    t[hdr + 7] = checksum(&t[hdr..]);
    // Floating pointer.
    let mpc_addr = (MPTABLE_START + hdr as u64) as u32;
    t[0..4].copy_from_slice(b"_MP_");
    t[4..8].copy_from_slice(&mpc_addr.to_le_bytes());
    t[8] = 1; // length in 16-byte units
    t[9] = 4; // spec revision
              // t[11] feature 1 = 0: a configuration table is present.
              // t[12] feature 2 bit 7 (IMCRP) = 0: virtual wire mode, no IMCR.
    t[10] = checksum(&t[0..MPF_SIZE]);
    Ok(t)
}

/// Writes the MP tables for `num_cpus` CPUs at [`MPTABLE_START`].
pub fn write_mptable<M: GuestMemory + ?Sized>(mem: &M, num_cpus: u32) -> Result<(), MptableError> {
    let t = mptable_bytes(num_cpus)?;
    mem.write_slice(&t, GuestAddress(MPTABLE_START))
        .map_err(|source| MptableError::Write {
            addr: MPTABLE_START,
            len: t.len(),
            source,
        })
}

/// Whether the tables for `num_cpus` CPUs stay inside the EBDA's reserved KiB.
pub fn fits_in_ebda(num_cpus: u32) -> bool {
    MPTABLE_START + mptable_size(num_cpus) as u64 <= LOW_MEM_END
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
    }

    fn check(n: u32) {
        let t = mptable_bytes(n).unwrap();
        assert_eq!(t.len(), mptable_size(n));
        // Floating pointer.
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(sum(&t[0..16]), 0, "floating pointer checksum");
        assert_eq!((t[8], t[9], t[11]), (1, 4, 0));
        let mpc = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
        assert_eq!(mpc, MPTABLE_START + 16);
        let c = &t[16..];
        assert_eq!(&c[0..4], b"PCMP");
        let len = u16::from_le_bytes([c[4], c[5]]) as usize;
        assert_eq!(len, c.len());
        assert_eq!(sum(&c[..len]), 0, "base table checksum");
        assert_eq!(c[6], 4);
        assert_eq!(u16::from_le_bytes([c[40], c[41]]), 0, "no extended entries");
        assert_eq!(c[42], 0, "extended checksum of an empty table");
        assert_eq!(
            u64::from(u32::from_le_bytes(c[36..40].try_into().unwrap())),
            LAPIC_ADDR
        );
        let count = u16::from_le_bytes([c[34], c[35]]) as u32;
        assert_eq!(count, n + 1 + 1 + 16 + 2);
        // Walk the entries.
        let mut off = MPC_HEADER_SIZE;
        let (mut cpus, mut buses, mut ioapics, mut ioints, mut lints) = (0, 0, 0, 0, 0);
        for _ in 0..count {
            match c[off] {
                0 => {
                    assert_eq!(c[off + 1] as u32, cpus, "APIC id = index");
                    assert_eq!(c[off + 3], if cpus == 0 { 3 } else { 1 });
                    cpus += 1;
                    off += 20;
                }
                1 => {
                    assert_eq!(&c[off + 2..off + 8], b"ISA   ");
                    buses += 1;
                    off += 8;
                }
                2 => {
                    assert_eq!(c[off + 1] as u32, n, "IOAPIC id");
                    assert_eq!(c[off + 3] & 1, 1);
                    assert_eq!(
                        u64::from(u32::from_le_bytes(c[off + 4..off + 8].try_into().unwrap())),
                        IOAPIC_ADDR
                    );
                    ioapics += 1;
                    off += 8;
                }
                3 => {
                    assert_eq!(c[off + 5], ioints, "source IRQ");
                    assert_eq!(c[off + 7], ioints, "IOAPIC pin");
                    assert_eq!(c[off + 6] as u32, n);
                    ioints += 1;
                    off += 8;
                }
                4 => {
                    assert_eq!(c[off + 6], 0xff);
                    lints += 1;
                    off += 8;
                }
                x => panic!("unexpected entry type {x}"),
            }
        }
        assert_eq!(off, len);
        assert_eq!((cpus, buses, ioapics, ioints, lints), (n, 1, 1, 16, 2));
    }

    #[test]
    fn tables_for_various_cpu_counts() {
        for n in [1, 2, 3, 8, 40, 41, 128, 254] {
            check(n);
        }
        assert!(fits_in_ebda(40));
        assert!(!fits_in_ebda(41));
    }

    #[test]
    fn bad_counts() {
        assert!(matches!(
            mptable_bytes(0),
            Err(MptableError::BadCpuCount(0))
        ));
        assert!(matches!(
            mptable_bytes(255),
            Err(MptableError::BadCpuCount(255))
        ));
        assert!(matches!(
            mptable_bytes(u32::MAX),
            Err(MptableError::BadCpuCount(_))
        ));
    }

    #[test]
    fn written_to_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write_mptable(&mem, 254).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(&sig, b"_MP_");
        let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x9fc00)]).unwrap();
        assert!(matches!(
            write_mptable(&small, 1),
            Err(MptableError::Write { .. })
        ));
    }
}
