//! MSR model tests against the Intel SDM vol. 3B (perfmon chapter numbered 18 in the
//! edition cited by `vpmu::model`), the AMD APM vol. 2 §13.2 and Linux msr-index.h.

mod common;

use common::{amd_cfg, intel_cfg};
use vpmu::model::{
    amd, classify, evtsel_reserved_mask, intel, pmu_msr_ranges, present_msrs, validate,
    ConfigError, MsrModel, PmuMsr,
};
use vpmu::{PmuConfig, Vendor};

#[test]
fn intel_addresses_match_sdm_appendix_b() {
    // SDM App. B.1 / msr-index.h: MSR_IA32_PERFCTR0 0xc1, MSR_P6_EVNTSEL0 0x186,
    // MSR_IA32_PMC0 0x4c1, MSR_CORE_PERF_FIXED_CTR0 0x309, MSR_IA32_PERF_CAPABILITIES 0x345,
    // MSR_CORE_PERF_FIXED_CTR_CTRL 0x38d, GLOBAL_STATUS 0x38e, GLOBAL_CTRL 0x38f,
    // GLOBAL_OVF_CTRL 0x390, GLOBAL_STATUS_SET 0x391, GLOBAL_INUSE 0x392.
    assert_eq!(intel::IA32_PMC0, 0xc1);
    assert_eq!(intel::IA32_PERFEVTSEL0, 0x186);
    assert_eq!(intel::IA32_A_PMC0, 0x4c1);
    assert_eq!(intel::IA32_FIXED_CTR0, 0x309);
    assert_eq!(intel::IA32_PERF_CAPABILITIES, 0x345);
    assert_eq!(intel::IA32_FIXED_CTR_CTRL, 0x38d);
    assert_eq!(intel::IA32_PERF_GLOBAL_STATUS, 0x38e);
    assert_eq!(intel::IA32_PERF_GLOBAL_CTRL, 0x38f);
    assert_eq!(intel::IA32_PERF_GLOBAL_OVF_CTRL, 0x390);
    assert_eq!(intel::IA32_PERF_GLOBAL_STATUS_RESET, 0x390);
    assert_eq!(intel::IA32_PERF_GLOBAL_STATUS_SET, 0x391);
    assert_eq!(intel::IA32_PERF_GLOBAL_INUSE, 0x392);
}

#[test]
fn amd_addresses_match_apm() {
    // APM vol. 2 §13.2.1: PerfEvtSel0-3 C001_0000-3, PerfCtr0-3 C001_0004-7;
    // §13.2.2 (PerfCtrExtCore): PERF_CTL0 C001_0200, PERF_CTR0 C001_0201, CTL5 C001_020A;
    // PerfMonV2: GLOBAL_STATUS C000_0300, GLOBAL_CTL 301, STATUS_CLR 302, STATUS_SET 303.
    assert_eq!(amd::PERF_EVTSEL0, 0xc001_0000);
    assert_eq!(amd::PERF_CTR0, 0xc001_0004);
    assert_eq!(amd::PERF_CTL0_EXT, 0xc001_0200);
    assert_eq!(amd::PERF_CTR0_EXT, 0xc001_0201);
    assert_eq!(amd::GLOBAL_STATUS, 0xc000_0300);
    assert_eq!(amd::GLOBAL_CTL, 0xc000_0301);
    assert_eq!(amd::GLOBAL_STATUS_CLR, 0xc000_0302);
    assert_eq!(amd::GLOBAL_STATUS_SET, 0xc000_0303);
    assert_eq!(
        classify(Vendor::Amd, 0xc001_020a),
        Some(PmuMsr::GpEventSel(5))
    );
    assert_eq!(
        classify(Vendor::Amd, 0xc001_020b),
        Some(PmuMsr::GpCounter(5))
    );
    assert_eq!(
        classify(Vendor::Amd, 0xc001_0003),
        Some(PmuMsr::GpEventSel(3))
    );
    assert_eq!(
        classify(Vendor::Amd, 0xc001_0007),
        Some(PmuMsr::GpCounter(3))
    );
    assert_eq!(classify(Vendor::Amd, 0xc001_0008), None);
    assert_eq!(classify(Vendor::Amd, 0x38f), None);
    assert_eq!(classify(Vendor::Intel, 0xc000_0301), None);
}

#[test]
fn ranges_cover_exactly_the_classified_msrs() {
    for vendor in [Vendor::Intel, Vendor::Amd] {
        let ranges = pmu_msr_ranges(vendor);
        let in_ranges = |m: u32| ranges.iter().any(|&(b, c)| m >= b && m - b < c);
        // Every address in a range classifies, and every classified address of a wide
        // sweep lies in a range.
        for &(b, c) in &ranges {
            for m in b..b + c {
                assert!(classify(vendor, m).is_some(), "{vendor:?} {m:#x}");
            }
        }
        for m in (0..0x1000u32)
            .chain(0xc000_0000..0xc000_0400)
            .chain(0xc001_0000..0xc001_0400)
        {
            assert_eq!(
                classify(vendor, m).is_some(),
                in_ranges(m),
                "{vendor:?} {m:#x}"
            );
        }
        // No overlapping ranges.
        let mut sorted = ranges.clone();
        sorted.sort();
        for w in sorted.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "{vendor:?} overlap {w:?}");
        }
    }
}

#[test]
fn intel_v1_has_no_global_or_fixed_msrs() {
    // SDM §18.2.1: v1 = PERFEVTSELx/PMCx only. KVM ABI: fixed counters are v2+.
    let msrs = present_msrs(&intel_cfg(1, 2, 0, None));
    assert_eq!(msrs, vec![0xc1, 0xc2, 0x186, 0x187]);
}

#[test]
fn intel_v2_adds_fixed_and_global_but_not_v4_msrs() {
    // SDM §18.2.2: v2 adds FIXED_CTRx, FIXED_CTR_CTRL, GLOBAL_CTRL/STATUS/OVF_CTRL.
    let msrs = present_msrs(&intel_cfg(2, 2, 3, None));
    assert_eq!(
        msrs,
        vec![0xc1, 0xc2, 0x186, 0x187, 0x309, 0x30a, 0x30b, 0x38d, 0x38e, 0x38f, 0x390]
    );
}

#[test]
fn intel_v4_adds_status_set_and_inuse_and_fw_writes_adds_a_pmc() {
    // SDM §18.2.4.2/3: STATUS_SET 0x391, INUSE 0x392 (v4); §18.2.5: A_PMCx iff FW_WRITES.
    let m = MsrModel::new(&intel_cfg(4, 2, 1, Some(intel::PERF_CAP_FW_WRITES))).unwrap();
    for msr in [0x391, 0x392, 0x345, 0x4c1, 0x4c2] {
        assert!(m.decode(msr).is_some(), "{msr:#x}");
    }
    assert_eq!(m.decode(0x4c3), None, "A_PMC2 beyond 2 GP counters");
    assert_eq!(m.decode(0x30a), None, "FIXED_CTR1 beyond 1 fixed counter");
    assert_eq!(m.decode(0x329), None, "PERF_METRICS is never offered");
    let no_fw = MsrModel::new(&intel_cfg(4, 2, 1, Some(0))).unwrap();
    assert_eq!(no_fw.decode(0x4c1), None, "A_PMCx need FW_WRITES");
    assert!(
        no_fw.decode(0x345).is_some(),
        "PERF_CAPABILITIES exists with PDCM"
    );
    let no_pdcm = MsrModel::new(&intel_cfg(4, 2, 1, None)).unwrap();
    assert_eq!(no_pdcm.decode(0x345), None);
}

#[test]
fn amd_presence_by_feature() {
    // Legacy: only 0xc0010000-7.
    assert_eq!(
        present_msrs(&amd_cfg(false, false, 4)),
        (0xc001_0000..=0xc001_0007).collect::<Vec<_>>()
    );
    // Core ext: legacy aliases + 12 ext MSRs, no global MSRs.
    let ce = present_msrs(&amd_cfg(true, false, 6));
    assert_eq!(ce.len(), 8 + 12);
    assert!(ce.contains(&0xc001_020b) && !ce.contains(&0xc001_020c));
    assert!(!ce.contains(&0xc000_0300));
    // PerfMonV2 with 6: + 4 global MSRs.
    let v2 = present_msrs(&amd_cfg(true, true, 6));
    assert_eq!(v2.len(), 8 + 12 + 4);
    // PerfMonV2 with 2 counters: legacy aliases of counters 2,3 are absent too.
    let v2_2 = present_msrs(&amd_cfg(true, true, 2));
    assert_eq!(
        v2_2,
        vec![
            0xc000_0300,
            0xc000_0301,
            0xc000_0302,
            0xc000_0303,
            0xc001_0000,
            0xc001_0001,
            0xc001_0004,
            0xc001_0005,
            0xc001_0200,
            0xc001_0201,
            0xc001_0202,
            0xc001_0203
        ]
    );
}

#[test]
fn none_layout_has_no_msrs() {
    assert!(present_msrs(&PmuConfig::None).is_empty());
    assert_eq!(MsrModel::new_clamped(&PmuConfig::None).decode(0xc1), None);
    assert_eq!(evtsel_reserved_mask(&PmuConfig::None), u64::MAX);
}

#[test]
fn intel_evtsel_reserved_bits() {
    // SDM §18.2.1.1 Fig. 18-1: bits 63:32 reserved; §18.2.3: AnyThread (21) from v3.
    let v2 = evtsel_reserved_mask(&intel_cfg(2, 2, 3, None));
    let v3 = evtsel_reserved_mask(&intel_cfg(3, 2, 3, None));
    assert_eq!(v3, 0xffff_ffff_0000_0000);
    assert_eq!(v2, 0xffff_ffff_0000_0000 | (1 << 21));
    // Every architectural field of bits 31:0 other than AnyThread is writable on v2.
    for bit in (0..32).filter(|&b| b != 21) {
        assert_eq!(v2 & (1u64 << bit), 0, "bit {bit}");
    }
}

#[test]
fn amd_evtsel_reserved_bits() {
    // APM Fig. 13-7: 63:42 reserved, 41:40 HG_ONLY, 39:36 reserved, 35:32 EventSelect[11:8],
    // 21 and 19 reserved.
    let r = evtsel_reserved_mask(&amd_cfg(true, true, 6));
    for bit in 0..64u32 {
        let reserved = bit >= 42 || (36..=39).contains(&bit) || bit == 21 || bit == 19;
        assert_eq!(r & (1u64 << bit) != 0, reserved, "bit {bit}");
    }
}

#[test]
fn fixed_ctrl_reserved_bits() {
    // SDM §18.2.2 Fig. 18-2: 4 bits per fixed counter (EN OS, EN USR, AnyThread (v3+), PMI).
    let v2 = MsrModel::new(&intel_cfg(2, 2, 3, None)).unwrap();
    assert_eq!(v2.fixed_ctrl_reserved(), !0xbbbu64);
    let v3 = MsrModel::new(&intel_cfg(3, 2, 3, None)).unwrap();
    assert_eq!(v3.fixed_ctrl_reserved(), !0xfffu64);
    let v5 = MsrModel::new(&intel_cfg(5, 8, 4, None)).unwrap();
    assert_eq!(v5.fixed_ctrl_reserved(), !0xffffu64);
}

#[test]
fn global_masks_and_reset() {
    let m = MsrModel::new(&intel_cfg(4, 4, 3, None)).unwrap();
    // SDM Fig. 18-3: PMC enables at 0..n-1, fixed at 32..; others reserved.
    assert_eq!(m.global_ctrl_reserved(), !(0xf | (0x7 << 32)));
    // Fig. 18-4/18-11: OVF_CTRL also clears OvfBuf (62) and CondChgd (63).
    assert_eq!(
        m.status_reset_writable(),
        0xf | (0x7 << 32) | (1 << 62) | (1 << 63)
    );
    // Fig. 18-12: STATUS_SET has no CondChgd.
    assert_eq!(m.status_set_writable(), 0xf | (0x7 << 32) | (1 << 62));
    // RESET value: all GP counters enabled, fixed disabled (KVM kvm_pmu_refresh).
    assert_eq!(m.global_ctrl_reset(), 0xf);
    let a = MsrModel::new(&amd_cfg(true, true, 6)).unwrap();
    assert_eq!(a.global_ctrl_reserved(), !0x3f);
    assert_eq!(a.status_reset_writable(), 0x3f);
    assert_eq!(a.global_ctrl_reset(), 0x3f);
    let legacy = MsrModel::new(&amd_cfg(false, false, 4)).unwrap();
    assert_eq!(
        legacy.global_ctrl_reset(),
        0,
        "no GLOBAL_CTL without PerfMonV2"
    );
}

#[test]
fn read_only_registers() {
    assert!(PmuMsr::PerfCapabilities.is_read_only());
    assert!(PmuMsr::GlobalStatus.is_read_only());
    assert!(PmuMsr::GlobalInUse.is_read_only());
    assert!(!PmuMsr::GlobalCtrl.is_read_only());
    assert!(!PmuMsr::GlobalStatusSet.is_read_only());
}

#[test]
fn validate_rejects_what_is_not_modelled() {
    assert_eq!(
        validate(&intel_cfg(6, 8, 4, None)),
        Err(ConfigError::IntelVersion(6))
    );
    assert!(matches!(
        validate(&intel_cfg(5, 9, 4, None)),
        Err(ConfigError::TooManyCounters { requested: 9, .. })
    ));
    assert!(matches!(
        validate(&intel_cfg(5, 8, 5, None)),
        Err(ConfigError::TooManyCounters { requested: 5, .. })
    ));
    assert_eq!(
        validate(&intel_cfg(1, 2, 1, None)),
        Err(ConfigError::FixedOnV1(1))
    );
    assert_eq!(
        validate(&intel_cfg(5, 8, 4, Some(0x2000 | 0x4))),
        Err(ConfigError::PerfCapabilities(0x4))
    );
    assert!(matches!(
        validate(&amd_cfg(true, false, 4)),
        Err(ConfigError::AmdCount {
            expected: 6,
            requested: 4
        })
    ));
    assert!(validate(&amd_cfg(true, true, 4)).is_ok());
    assert_eq!(
        validate(&amd_cfg(false, true, 4)),
        Err(ConfigError::AmdV2WithoutCoreExt)
    );
    assert!(validate(&amd_cfg(true, true, 7)).is_err());
    let mut wide_amd = amd_cfg(true, true, 6);
    if let PmuConfig::Amd(p) = &mut wide_amd {
        p.width = 64;
    }
    assert_eq!(validate(&wide_amd), Err(ConfigError::AmdWidth(64)));
    let mut narrow = intel_cfg(2, 2, 0, None);
    if let PmuConfig::Intel(p) = &mut narrow {
        p.gp_width = 31;
    }
    assert!(matches!(
        validate(&narrow),
        Err(ConfigError::Width { width: 31, .. })
    ));
}

#[test]
fn both_vendors_msr_ranges_are_disjoint_and_fit_one_kvm_filter() {
    let mut r = vpmu::model::pmu_msr_ranges_all();
    // KVM_MSR_FILTER_MAX_RANGES is 16.
    assert!(r.len() <= 16, "{r:x?}");
    r.sort_unstable();
    for w in r.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "overlap: {w:x?}");
    }
    // Each vendor's ranges are all in there.
    for v in [vpmu::Vendor::Intel, vpmu::Vendor::Amd] {
        for x in vpmu::model::pmu_msr_ranges(v) {
            assert!(r.contains(&x), "{x:x?}");
        }
    }
}

#[test]
fn selector_msrs_are_the_event_programming_registers() {
    let intel = vpmu::model::selector_msrs(vpmu::Vendor::Intel);
    let mut want: Vec<u32> = (0x186..0x18e).collect();
    want.push(0x38d);
    assert_eq!(intel, want);
    let amd = vpmu::model::selector_msrs(vpmu::Vendor::Amd);
    // K7 PERF_CTL0-3, then the core-extension PERF_CTL0-15 (PerfMonV2 allows 16; even
    // addresses, the odd ones are counters).
    let mut want: Vec<u32> = (0xc001_0000..0xc001_0004).collect();
    want.extend((0..16).map(|i| 0xc001_0200 + 2 * i));
    assert_eq!(amd, want);
}
