//! Per-vCPU CPUID normalisation: topology and identification only.
//!
//! Topology presented: one socket, `num_vcpus` cores, one thread per core; vCPU `i` has
//! initial (x2)APIC id `i`.
//!
//! | leaf | change |
//! |------|--------|
//! | 0x1 | EBX\[31:24\] APIC id, EBX\[23:16\] logical processors = `num_vcpus`, EDX.HTT = (`num_vcpus` > 1), ECX\[31\] hypervisor = 1 |
//! | 0x4 (Intel) | EAX\[31:26\] cores - 1; EAX\[25:14\] sharing: 0 for L1/L2, `num_vcpus` - 1 for L3 |
//! | 0xB, 0x1F | subleaf 0 SMT level (shift 0, 1 thread), subleaf 1 core level (shift ceil(log2 n), n), higher subleaves invalid; EDX = x2APIC id |
//! | 0x80000001 (AMD) | ECX\[1\] CmpLegacy = (`num_vcpus` > 1) only |
//! | 0x80000008 (AMD) | ECX\[7:0\] NC = n - 1, ECX\[15:12\] ApicIdSize = ceil(log2 n); other bits kept |
//! | 0x8000001E (AMD) | EAX extended APIC id, EBX core id / 1 thread per core, ECX node 0 of 1 |
//!
//! Not touched, on purpose:
//! - PMU leaves and bits: 0xA, leaf 1 ECX\[15\] (PDCM), 0x80000001 ECX\[23\]
//!   (PerfCtrExtCore), 0x80000022 (PerfMonV2). The `vpmu` crate owns them and may apply
//!   its own changes before or after this function.
//! - the hypervisor leaves 0x40000000.. : KVM_GET_SUPPORTED_CPUID already reports the
//!   "KVMKVMKVM" signature and KVM's paravirtual features; we pass them through.
//! - leaves missing from `entries`: only present entries are edited, none are added.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

use crate::x86_64::mptable::MAX_CPUS;

/// Leaf 1 EDX: HTT.
pub const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 1 ECX: hypervisor present.
pub const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// 0x80000001 ECX: CmpLegacy.
pub const EXT1_ECX_CMP_LEGACY: u32 = 1 << 1;

/// CPUID normalisation errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuidError {
    /// vCPU count out of range.
    #[error("unsupported vCPU count {0} (1..={MAX_CPUS})")]
    BadVcpuCount(u32),
    /// Index not below the count.
    #[error("vCPU index {index} out of range for {count} vCPUs")]
    BadVcpuIndex {
        /// Index.
        index: u32,
        /// Count.
        count: u32,
    },
}

/// CPU vendor as seen in leaf 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// GenuineIntel.
    Intel,
    /// AuthenticAMD or HygonGenuine.
    Amd,
    /// Anything else.
    Other,
}

/// Vendor from the leaf 0 entry, if present.
pub fn vendor(entries: &[kvm_cpuid_entry2]) -> Vendor {
    let Some(e) = entries.iter().find(|e| e.function == 0) else {
        return Vendor::Other;
    };
    let mut id = [0u8; 12];
    id[0..4].copy_from_slice(&e.ebx.to_le_bytes());
    id[4..8].copy_from_slice(&e.edx.to_le_bytes());
    id[8..12].copy_from_slice(&e.ecx.to_le_bytes());
    match &id {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Bits needed to number `n` items: ceil(log2(n)), 0 for n <= 1.
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Applies the topology of vCPU `vcpu_index` out of `num_vcpus` to `cpuid` (see module
/// docs).
pub fn normalize(cpuid: &mut CpuId, vcpu_index: u32, num_vcpus: u32) -> Result<(), CpuidError> {
    normalize_entries(cpuid.as_mut_slice(), vcpu_index, num_vcpus)
}

/// [`normalize`] on a plain slice of entries.
pub fn normalize_entries(
    entries: &mut [kvm_cpuid_entry2],
    vcpu_index: u32,
    num_vcpus: u32,
) -> Result<(), CpuidError> {
    if num_vcpus == 0 || num_vcpus > MAX_CPUS {
        return Err(CpuidError::BadVcpuCount(num_vcpus));
    }
    if vcpu_index >= num_vcpus {
        return Err(CpuidError::BadVcpuIndex {
            index: vcpu_index,
            count: num_vcpus,
        });
    }
    let vendor = vendor(entries);
    let apic_id = vcpu_index;
    let core_bits = bits_for(num_vcpus);
    let multi = num_vcpus > 1;
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((num_vcpus & 0xff) << 16);
                if multi {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
                e.ecx |= LEAF1_ECX_HYPERVISOR;
            }
            0x4 if vendor == Vendor::Intel => {
                let cache_type = e.eax & 0x1f;
                if cache_type != 0 {
                    let level = (e.eax >> 5) & 0x7;
                    let sharing = if level >= 3 { num_vcpus - 1 } else { 0 };
                    let cores = (num_vcpus - 1).min(0x3f);
                    e.eax = (e.eax & 0x3fff) | (sharing.min(0xfff) << 14) | (cores << 26);
                }
            }
            0xb | 0x1f => {
                let (shift, count, level_type) = match e.index {
                    0 => (0, 1, 1),                 // SMT: 1 thread per core
                    1 => (core_bits, num_vcpus, 2), // cores of the package
                    _ => (0, 0, 0),                 // invalid level
                };
                e.eax = shift;
                e.ebx = count;
                e.ecx = (level_type << 8) | (e.index & 0xff);
                e.edx = apic_id;
            }
            0x8000_0001 if vendor == Vendor::Amd => {
                if multi {
                    e.ecx |= EXT1_ECX_CMP_LEGACY;
                } else {
                    e.ecx &= !EXT1_ECX_CMP_LEGACY;
                }
            }
            0x8000_0008 if vendor == Vendor::Amd => {
                e.ecx = (e.ecx & !0xf0ff) | ((num_vcpus - 1) & 0xff) | (core_bits << 12);
            }
            0x8000_001e if vendor == Vendor::Amd => {
                e.eax = apic_id;
                e.ebx = vcpu_index & 0xff; // compute unit id; threads per unit - 1 = 0
                e.ecx = 0; // node 0, one node per processor
                e.edx = 0;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaf(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn vendor_leaf(id: &[u8; 12]) -> kvm_cpuid_entry2 {
        let w = |i: usize| u32::from_le_bytes(id[i..i + 4].try_into().unwrap());
        leaf(0, 0, [0x20, w(0), w(8), w(4)])
    }

    fn amd() -> Vec<kvm_cpuid_entry2> {
        vec![
            vendor_leaf(b"AuthenticAMD"),
            leaf(
                1,
                0,
                [0xa10f11, 0x0008_0800, 0x7ed8_320b | (1 << 15), 0x178b_fbff],
            ),
            leaf(0xa, 0, [0x0803_0102, 0, 0, 0x0603]),
            leaf(0xb, 0, [1, 2, 0x100, 5]),
            leaf(0xb, 1, [4, 16, 0x201, 5]),
            leaf(0xb, 2, [0, 0, 2, 5]),
            leaf(0x8000_0001, 0, [0, 0, 0x75c2_37ff | (1 << 23), 0x2fd3_fbff]),
            leaf(0x8000_0008, 0, [0x3030, 0, 0x0003_400f, 0]),
            leaf(0x8000_001e, 0, [9, 0x107, 0x301, 0]),
            leaf(0x8000_0022, 0, [7, 0x0010_0006, 0, 0]),
        ]
    }

    fn get(e: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *e.iter().find(|x| x.function == f && x.index == i).unwrap()
    }

    #[test]
    fn vendor_detection() {
        assert_eq!(vendor(&amd()), Vendor::Amd);
        assert_eq!(vendor(&[vendor_leaf(b"GenuineIntel")]), Vendor::Intel);
        assert_eq!(vendor(&[vendor_leaf(b"HygonGenuine")]), Vendor::Amd);
        assert_eq!(vendor(&[]), Vendor::Other);
    }

    #[test]
    fn amd_topology() {
        let mut e = amd();
        normalize_entries(&mut e, 2, 4).unwrap();
        let l1 = get(&e, 1, 0);
        assert_eq!(l1.ebx >> 24, 2);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        let b0 = get(&e, 0xb, 0);
        assert_eq!((b0.eax, b0.ebx, b0.ecx, b0.edx), (0, 1, 0x100, 2));
        let b1 = get(&e, 0xb, 1);
        assert_eq!((b1.eax, b1.ebx, b1.ecx, b1.edx), (2, 4, 0x201, 2));
        let b2 = get(&e, 0xb, 2);
        assert_eq!((b2.eax, b2.ebx, b2.ecx & 0xff00, b2.edx), (0, 0, 0, 2));
        let x8 = get(&e, 0x8000_0008, 0);
        assert_eq!(x8.ecx & 0xff, 3);
        assert_eq!((x8.ecx >> 12) & 0xf, 2);
        assert_eq!(x8.ecx & 0x3_0000, 0x3_0000, "other bits kept");
        let x1e = get(&e, 0x8000_001e, 0);
        assert_eq!((x1e.eax, x1e.ebx, x1e.ecx), (2, 2, 0));
        assert_ne!(get(&e, 0x8000_0001, 0).ecx & EXT1_ECX_CMP_LEGACY, 0);
    }

    #[test]
    fn single_vcpu() {
        let mut e = amd();
        normalize_entries(&mut e, 0, 1).unwrap();
        let l1 = get(&e, 1, 0);
        assert_eq!(l1.ebx >> 16, 1);
        assert_eq!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_eq!(get(&e, 0xb, 1).eax, 0);
        assert_eq!(get(&e, 0x8000_0008, 0).ecx & 0xf0ff, 0);
        assert_eq!(get(&e, 0x8000_0001, 0).ecx & EXT1_ECX_CMP_LEGACY, 0);
    }

    #[test]
    fn intel_leaf4() {
        let mut e = vec![
            vendor_leaf(b"GenuineIntel"),
            leaf(4, 0, [0x121, 0, 0, 0]), // L1d
            leaf(4, 2, [0x143, 0, 0, 0]), // L2
            leaf(4, 3, [0x163, 0, 0, 0]), // L3
            leaf(4, 4, [0, 0, 0, 0]),     // null
        ];
        normalize_entries(&mut e, 0, 8).unwrap();
        assert_eq!(get(&e, 4, 0).eax, 0x121 | (7 << 26));
        assert_eq!(get(&e, 4, 2).eax, 0x143 | (7 << 26));
        assert_eq!(get(&e, 4, 3).eax, 0x163 | (7 << 26) | (7 << 14));
        assert_eq!(get(&e, 4, 4).eax, 0);
        // AMD leaves untouched on Intel.
        let mut e2 = vec![
            vendor_leaf(b"GenuineIntel"),
            leaf(0x8000_001e, 0, [9, 9, 9, 9]),
        ];
        normalize_entries(&mut e2, 1, 2).unwrap();
        assert_eq!(get(&e2, 0x8000_001e, 0).eax, 9);
    }

    #[test]
    fn errors() {
        let mut e = amd();
        assert_eq!(
            normalize_entries(&mut e, 0, 0),
            Err(CpuidError::BadVcpuCount(0))
        );
        assert_eq!(
            normalize_entries(&mut e, 0, 255),
            Err(CpuidError::BadVcpuCount(255))
        );
        assert_eq!(
            normalize_entries(&mut e, 4, 4),
            Err(CpuidError::BadVcpuIndex { index: 4, count: 4 })
        );
        assert_eq!(e, amd(), "nothing changed on error");
    }

    #[test]
    fn fam_wrapper() {
        let mut c = CpuId::from_entries(&amd()).unwrap();
        normalize(&mut c, 1, 2).unwrap();
        assert_eq!(get(c.as_slice(), 1, 0).ebx >> 24, 1);
    }

    proptest! {
        #[test]
        fn pmu_leaves_untouched(
            regs in proptest::array::uniform4(any::<u32>()),
            l1ecx in any::<u32>(),
            x1ecx in any::<u32>(),
            n in 1u32..=254,
            idx in 0u32..254,
        ) {
            let idx = idx % n;
            for v in [*b"AuthenticAMD", *b"GenuineIntel"] {
                let mut e = vec![
                    vendor_leaf(&v),
                    leaf(1, 0, [0, 0, l1ecx, 0]),
                    leaf(0xa, 0, regs),
                    leaf(0x8000_0001, 0, [0, 0, x1ecx, 0]),
                    leaf(0x8000_0022, 0, regs),
                    leaf(0x4000_0000, 0, regs),
                ];
                normalize_entries(&mut e, idx, n).unwrap();
                prop_assert_eq!(get(&e, 0xa, 0), leaf(0xa, 0, regs));
                prop_assert_eq!(get(&e, 0x8000_0022, 0), leaf(0x8000_0022, 0, regs));
                prop_assert_eq!(get(&e, 0x4000_0000, 0), leaf(0x4000_0000, 0, regs));
                prop_assert_eq!(get(&e, 1, 0).ecx & (1 << 15), l1ecx & (1 << 15));
                prop_assert_eq!(get(&e, 0x8000_0001, 0).ecx & (1 << 23), x1ecx & (1 << 23));
                prop_assert_eq!(get(&e, 1, 0).ebx >> 24, idx);
            }
        }
    }
}
