//! CPUID derivation/synthesis against real hosts' CPUID (fixtures with public sources) and
//! the layout request grammar.

mod common;

use common::{amd_cfg, genoa, genoa_legacy, intel_cfg, intel_pmu, leaf, spr};
use kvm_bindings::kvm_cpuid_entry2;
use proptest::prelude::*;
use vpmu::cpuid::{
    apply, brand_string, default_emulated_layout, host_layout, host_layout_with, resolve,
    resolve_with_vendor, vendor, vendor_string, HostFacts, LayoutError, LayoutRequest,
};
use vpmu::model::{intel, ConfigError};
use vpmu::{AmdPmu, IntelPmu, PmuConfig, Vendor};

fn spr_layout_with_fw() -> PmuConfig {
    // FW_WRITES assumed (PERF_CAPABILITIES is not in the CPUID dump).
    host_layout_with(
        &spr(),
        &HostFacts {
            pmu_enabled: true,
            perf_capabilities: Some(0x2000 | 0x4000 | 0x3f),
        },
    )
}

/// The host layout under kvm.enable_pmu=N.
fn layout_with_pmu_disabled(e: &[kvm_cpuid_entry2]) -> PmuConfig {
    host_layout_with(
        e,
        &HostFacts {
            pmu_enabled: false,
            perf_capabilities: None,
        },
    )
}

#[test]
fn sapphire_rapids_layout_from_cpuid() {
    let e = spr();
    assert_eq!(vendor(&e), Some(Vendor::Intel));
    assert_eq!(brand_string(&e), "Intel(R) Xeon(R) w7-2475X");
    // Leaf 0AH 08300805-00000000-0000000F-00008604 (SDM vol. 2A CPUID leaf 0AH).
    let expected = IntelPmu {
        events_len: 8,
        ..intel_pmu(5, 8, 4, None)
    };
    assert_eq!(host_layout(&e), PmuConfig::Intel(expected.clone()));
    // With the MSR value: only FW_WRITES survives (LBR format / PEBS bits are not offered).
    assert_eq!(
        spr_layout_with_fw(),
        PmuConfig::Intel(IntelPmu {
            perf_capabilities: Some(intel::PERF_CAP_FW_WRITES),
            ..expected
        })
    );
    assert_eq!(layout_with_pmu_disabled(&e), PmuConfig::None);
}

#[test]
fn genoa_layout_from_cpuid() {
    let e = genoa();
    assert_eq!(vendor(&e), Some(Vendor::Amd));
    assert_eq!(brand_string(&e), "AMD EPYC 9124 16-Core Processor");
    assert_eq!(host_layout(&e), amd_cfg(true, true, 6));
    // kvm.enable_pmu=N: AMD's legacy counters cannot be hidden in CPUID, so facts decide.
    assert_eq!(layout_with_pmu_disabled(&e), PmuConfig::None);
}

#[test]
fn intel_with_zero_leaf_0a_has_no_pmu() {
    let mut e = spr();
    let l = e.iter_mut().find(|x| x.function == 0xa).unwrap();
    (l.eax, l.ebx, l.ecx, l.edx) = (0, 0, 0, 0);
    assert_eq!(host_layout(&e), PmuConfig::None);
}

#[test]
fn amd_without_extensions_is_legacy() {
    assert_eq!(host_layout(&genoa_legacy()), amd_cfg(false, false, 4));
}

#[test]
fn apply_writes_leaves_and_round_trips() {
    let mut e = spr();
    let cfg = intel_cfg(4, 4, 3, None);
    apply(&cfg, &mut e);
    let a = leaf(&e, 0xa).unwrap();
    assert_eq!((a.eax, a.ebx, a.ecx, a.edx), (0x0730_0404, 0, 0, 0x0603));
    assert_eq!(
        leaf(&e, 1).unwrap().ecx & (1 << 15),
        0,
        "PDCM cleared without PERF_CAPABILITIES"
    );
    assert_eq!(host_layout(&e), cfg);
    // v5 gets the fixed-counter bitmap and AnyThread deprecation, as the real SPR reports.
    let mut e2 = spr();
    let v5 = spr_layout_with_fw();
    apply(&v5, &mut e2);
    let a = leaf(&e2, 0xa).unwrap();
    assert_eq!(
        (a.eax, a.ebx, a.ecx, a.edx),
        (0x0830_0805, 0, 0xf, 0x8604),
        "identical to the host's leaf"
    );
    assert_ne!(
        leaf(&e2, 1).unwrap().ecx & (1 << 15),
        0,
        "PDCM with PERF_CAPABILITIES"
    );
    // None zeroes the leaf.
    apply(&PmuConfig::None, &mut e2);
    let a = leaf(&e2, 0xa).unwrap();
    assert_eq!((a.eax, a.ebx, a.ecx, a.edx), (0, 0, 0, 0));
    assert_eq!(host_layout(&e2), PmuConfig::None);
}

#[test]
fn apply_amd_adds_perfmon_leaf_and_raises_max() {
    // A CPUID without 0x80000022 (max ext leaf 0x80000008, as on older parts).
    let mut e = genoa();
    e.retain(|x| x.function < 0x8000_0009);
    e.iter_mut()
        .find(|x| x.function == 0x8000_0000)
        .unwrap()
        .eax = 0x8000_0008;
    e.iter_mut()
        .find(|x| x.function == 0x8000_0001)
        .unwrap()
        .ecx &= !(1 << 23);
    let cfg = amd_cfg(true, true, 5);
    apply(&cfg, &mut e);
    assert_eq!(leaf(&e, 0x8000_0000).unwrap().eax, 0x8000_0022);
    let p = leaf(&e, 0x8000_0022).unwrap();
    assert_eq!((p.eax, p.ebx), (1, 5));
    assert_ne!(leaf(&e, 0x8000_0001).unwrap().ecx & (1 << 23), 0);
    assert_eq!(host_layout(&e), cfg);
    // Back to legacy: bit 23 cleared, 0x80000022 zeroed (LBR and DF/UMC fields too).
    let legacy = amd_cfg(false, false, 4);
    let mut g = genoa();
    apply(&legacy, &mut g);
    let p = leaf(&g, 0x8000_0022).unwrap();
    assert_eq!((p.eax, p.ebx, p.ecx, p.edx), (0, 0, 0, 0));
    assert_eq!(host_layout(&g), legacy);
}

#[test]
fn grammar_examples() {
    let r: LayoutRequest = "intel:version=5,gp=8,fixed=4,gp-width=48,fixed-width=48"
        .parse()
        .unwrap();
    match &r {
        LayoutRequest::Intel(i) => {
            assert_eq!(
                (i.version, i.gp, i.fixed, i.gp_width, i.fixed_width),
                (Some(5), Some(8), Some(4), Some(48), Some(48))
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        r.to_string(),
        "intel:version=5,gp=8,fixed=4,gp-width=48,fixed-width=48"
    );
    let a: LayoutRequest = "amd:gp=6,core-ext,perfmon-v2".parse().unwrap();
    assert_eq!(a.to_string(), "amd:gp=6,core-ext,perfmon-v2");
    assert_eq!("host".parse::<LayoutRequest>(), Ok(LayoutRequest::Host));
    assert_eq!(" none ".parse::<LayoutRequest>(), Ok(LayoutRequest::None));
    assert!(matches!(
        "amd-legacy".parse::<LayoutRequest>(),
        Ok(LayoutRequest::Amd(_))
    ));
    /// Whether a parse error is the expected one.
    type IsExpected = fn(&LayoutError) -> bool;
    let bad: [(&str, IsExpected); 7] = [
        ("arm", |e| matches!(e, LayoutError::UnknownLayout(_))),
        ("intel:gp=x", |e| matches!(e, LayoutError::BadNumber { .. })),
        ("intel:gp=300", |e| {
            matches!(e, LayoutError::BadNumber { .. })
        }),
        ("intel:gp=1,gp=2", |e| {
            matches!(e, LayoutError::Duplicate(_))
        }),
        ("amd:fixed=1", |e| {
            matches!(e, LayoutError::UnknownOption { .. })
        }),
        ("amd:core-ext,no-core-ext", |e| {
            matches!(e, LayoutError::Duplicate(_))
        }),
        ("host:gp=1", |e| {
            matches!(e, LayoutError::UnknownOption { .. })
        }),
    ];
    for (text, is_expected) in bad {
        let r = text.parse::<LayoutRequest>();
        assert!(r.as_ref().is_err_and(is_expected), "{text:?}: {r:?}");
    }
    assert!("intel:events-unavailable=0x10"
        .parse::<LayoutRequest>()
        .is_ok());
}

#[test]
fn resolve_default_is_host_exact() {
    let host = spr_layout_with_fw();
    assert_eq!(
        resolve(&LayoutRequest::Host, &host, false),
        Ok(host.clone())
    );
    let g = host_layout(&genoa());
    assert_eq!(resolve(&LayoutRequest::Host, &g, false), Ok(g.clone()));
}

#[test]
fn resolve_fewer_ok_more_is_error_unless_userspace() {
    let host = spr_layout_with_fw();
    let fewer: LayoutRequest = "intel:version=4,gp=4,fixed=3".parse().unwrap();
    let cfg = resolve(&fewer, &host, false).unwrap();
    match cfg {
        PmuConfig::Intel(p) => assert_eq!(
            (p.version, p.num_gp, p.num_fixed, p.gp_width),
            (4, 4, 3, 48)
        ),
        other => panic!("{other:?}"),
    }
    let v1: LayoutRequest = "intel:version=1".parse().unwrap();
    match resolve(&v1, &host, false).unwrap() {
        PmuConfig::Intel(p) => assert_eq!(p.num_fixed, 0, "v1 implies no fixed counters"),
        other => panic!("{other:?}"),
    }
    let wider: LayoutRequest = "intel:gp-width=64".parse().unwrap();
    assert!(
        matches!(resolve(&wider, &host, false), Err(LayoutError::ExceedsHost { what, requested: 64, host: 48 }) if what.contains("width"))
    );
    assert!(resolve(&wider, &host, true).is_ok());
    let nine: LayoutRequest = "intel:gp=9".parse().unwrap();
    assert!(matches!(
        resolve(&nine, &host, true),
        Err(LayoutError::Unsupported(
            ConfigError::TooManyCounters { .. }
        ))
    ));
    // Genoa: fewer counters only with PerfMonV2; more is an error.
    let g = host_layout(&genoa());
    let four: LayoutRequest = "amd:gp=4".parse().unwrap();
    assert!(matches!(
        resolve(&four, &g, false),
        Ok(PmuConfig::Amd(AmdPmu {
            num_counters: 4,
            perfmon_v2: true,
            ..
        }))
    ));
    let bad: LayoutRequest = "amd:gp=4,no-perfmon-v2".parse().unwrap();
    assert!(matches!(
        resolve(&bad, &g, false),
        Err(LayoutError::Unsupported(ConfigError::AmdCount { .. }))
    ));
    let legacy: LayoutRequest = "amd-legacy".parse().unwrap();
    assert_eq!(resolve(&legacy, &g, false), Ok(amd_cfg(false, false, 4)));
    let no_v2_host = amd_cfg(true, false, 6);
    let v2: LayoutRequest = "amd:perfmon-v2".parse().unwrap();
    assert!(matches!(
        resolve(&v2, &no_v2_host, false),
        Err(LayoutError::ExceedsHost {
            what: "PerfMonV2",
            ..
        })
    ));
    assert!(resolve(&v2, &no_v2_host, true).is_ok());
    // FW_WRITES cannot be invented for a host without it.
    let no_fw = host_layout(&spr());
    let fw: LayoutRequest = "intel:fw-writes".parse().unwrap();
    assert!(resolve(&fw, &no_fw, false).is_err());
}

#[test]
fn resolve_vendor_and_missing_host() {
    let host = spr_layout_with_fw();
    let a: LayoutRequest = "amd".parse().unwrap();
    assert_eq!(
        resolve(&a, &host, true),
        Err(LayoutError::VendorMismatch {
            requested: Vendor::Amd,
            host: Vendor::Intel
        })
    );
    // No host PMU (this project's CI host: AMD, kvm.enable_pmu=N).
    assert!(matches!(
        resolve_with_vendor(
            &LayoutRequest::Host,
            Some(Vendor::Amd),
            &PmuConfig::None,
            false
        ),
        Err(LayoutError::NoHostPmu { .. })
    ));
    assert_eq!(
        resolve_with_vendor(
            &LayoutRequest::Host,
            Some(Vendor::Amd),
            &PmuConfig::None,
            true
        ),
        Ok(default_emulated_layout(Vendor::Amd))
    );
    let fewer: LayoutRequest = "amd:gp=2".parse().unwrap();
    assert_eq!(
        resolve_with_vendor(&fewer, Some(Vendor::Amd), &PmuConfig::None, true),
        Ok(amd_cfg(true, true, 2))
    );
    assert_eq!(
        resolve_with_vendor(&LayoutRequest::Host, None, &PmuConfig::None, true),
        Err(LayoutError::UnknownVendor)
    );
    assert_eq!(
        resolve(&LayoutRequest::None, &host, false),
        Ok(PmuConfig::None)
    );
}

#[test]
fn default_emulated_layouts_are_valid() {
    for v in [Vendor::Intel, Vendor::Amd] {
        let cfg = default_emulated_layout(v);
        assert_eq!(cfg.vendor(), Some(v));
        assert!(vpmu::model::validate(&cfg).is_ok());
    }
}

fn requests() -> impl Strategy<Value = LayoutRequest> {
    let o = |r: std::ops::RangeInclusive<u8>| proptest::option::of(r);
    prop_oneof![
        Just(LayoutRequest::Host),
        Just(LayoutRequest::None),
        (
            o(1..=5),
            o(0..=8),
            o(0..=4),
            o(32..=64),
            o(32..=64),
            proptest::option::of(any::<bool>()),
            any::<bool>(),
            proptest::option::of(any::<u32>())
        )
            .prop_map(|(version, gp, fixed, gw, fw, fwr, no_pdcm, ev)| {
                LayoutRequest::Intel(vpmu::cpuid::IntelRequest {
                    version,
                    gp,
                    fixed,
                    gp_width: gw,
                    fixed_width: fw,
                    fw_writes: fwr,
                    no_pdcm,
                    events_len: None,
                    events_unavailable: ev,
                })
            }),
        (
            o(1..=6),
            o(32..=64),
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<bool>())
        )
            .prop_map(|(gp, width, core_ext, perfmon_v2)| LayoutRequest::Amd(
                vpmu::cpuid::AmdRequest {
                    gp,
                    width,
                    core_ext,
                    perfmon_v2
                }
            )),
    ]
}

proptest! {
    #[test]
    fn request_display_parse_round_trip(r in requests()) {
        prop_assert_eq!(r.to_string().parse::<LayoutRequest>(), Ok(r));
    }

    #[test]
    fn parse_never_panics(s in ".{0,40}") {
        let _ = s.parse::<LayoutRequest>();
    }

    #[test]
    fn resolved_layouts_fit_host_and_cpuid_round_trips(r in requests()) {
        for host in [spr_layout_with_fw(), host_layout(&genoa())] {
            if let Ok(cfg) = resolve(&r, &host, false) {
                prop_assert!(vpmu::model::validate(&cfg).is_ok());
                let mut e = if host.vendor() == Some(Vendor::Intel) { spr() } else { genoa() };
                apply(&cfg, &mut e);
                let facts = HostFacts { pmu_enabled: true, perf_capabilities: match &cfg { PmuConfig::Intel(p) => p.perf_capabilities, _ => None } };
                let read_back = host_layout_with(&e, &facts);
                if cfg == PmuConfig::None && host.vendor() == Some(Vendor::Amd) {
                    // AMD CPUID cannot hide the 4 legacy counters (APM §13.2.1): "none" on
                    // AMD must be enforced by KVM_PMU_CAP_DISABLE or the MSR filter.
                    prop_assert_eq!(read_back, amd_cfg(false, false, 4));
                } else {
                    prop_assert_eq!(read_back, cfg);
                }
            }
        }
    }
}

#[test]
fn apply_cross_vendor_layout_rewrites_the_vendor_string() {
    // AMD layout on an Intel CPUID (userspace vPMU, host without a PMU): the guest must
    // read AuthenticAMD, or it never looks for the AMD counters it is given.
    let amd = amd_cfg(true, true, 6);
    let mut e = spr();
    apply(&amd, &mut e);
    assert_eq!(vendor_string(&e), "AuthenticAMD");
    assert_eq!(host_layout(&e), amd);
    // And back: an Intel layout on an AMD CPUID.
    let intel_cfg = default_emulated_layout(Vendor::Intel);
    let mut g = genoa();
    apply(&intel_cfg, &mut g);
    assert_eq!(vendor_string(&g), "GenuineIntel");
    assert_eq!(vendor(&g), Some(Vendor::Intel));
    // Same vendor, and no PMU at all: the vendor string is left alone.
    let mut s = spr();
    apply(&default_emulated_layout(Vendor::Intel), &mut s);
    assert_eq!(vendor_string(&s), "GenuineIntel");
    let mut n = genoa();
    apply(&PmuConfig::None, &mut n);
    assert_eq!(vendor_string(&n), "AuthenticAMD");
}

#[test]
fn apply_keeps_hygon_for_amd_layouts() {
    let mut e = genoa();
    let hygon = b"HygonGenuine";
    let reg = |i: usize| u32::from_le_bytes([hygon[i], hygon[i + 1], hygon[i + 2], hygon[i + 3]]);
    let v = e.iter_mut().find(|x| x.function == 0).unwrap();
    (v.ebx, v.edx, v.ecx) = (reg(0), reg(4), reg(8));
    apply(&default_emulated_layout(Vendor::Amd), &mut e);
    assert_eq!(vendor_string(&e), "HygonGenuine");
}
