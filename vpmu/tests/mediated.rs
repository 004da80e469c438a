//! The host perf PMU KVM's mediated vPMU is measured against, and hardware support, from
//! raw host CPUID (the fixtures are raw CPU dumps, as the host kernel's perf driver sees
//! them).

mod common;

use common::{amd_cfg, genoa, spr};
use kvm_bindings::kvm_cpuid_entry2;
use vpmu::cpuid::lookup;
use vpmu::discovery::{FixtureHost, HostPmu};
use vpmu::mediated::{mediated_intercepts, HostPerfPmu, InterceptPlan, MediatedSupport, MsrGroup};
use vpmu::{IntelPmu, PmuConfig, Vendor};

fn perf_pmu(entries: &[kvm_cpuid_entry2], perf_caps: Option<u64>) -> Option<HostPerfPmu> {
    HostPerfPmu::from_cpuid(&|l, s| lookup(entries, l, s), perf_caps)
}

fn with_leaf(mut e: Vec<kvm_cpuid_entry2>, function: u32, regs: [u32; 4]) -> Vec<kvm_cpuid_entry2> {
    let x = e.iter_mut().find(|x| x.function == function).unwrap();
    (x.eax, x.ebx, x.ecx, x.edx) = (regs[0], regs[1], regs[2], regs[3]);
    e
}

#[test]
fn sapphire_rapids_is_v5_with_four_fixed_counters() {
    let p = perf_pmu(&spr(), Some(0x2000)).unwrap();
    assert_eq!(
        p,
        HostPerfPmu {
            vendor: Vendor::Intel,
            version: 5,
            num_gp: 8,
            gp_width: 48,
            num_fixed: 4,
            fixed_width: 48,
            full_width_writes: Some(true),
        }
    );
    assert_eq!(p.mediated_support(), MediatedSupport::Capable);
    assert!(
        p.describe().contains("v5: 8 GP x 48 bits + 4 fixed"),
        "{}",
        p.describe()
    );
}

#[test]
fn intel_full_width_writes_decide_support_from_v4() {
    let unknown = perf_pmu(&spr(), None).unwrap();
    assert_eq!(unknown.full_width_writes, None);
    assert!(
        matches!(unknown.mediated_support(), MediatedSupport::Unknown(w) if w.contains("FW_WRITES"))
    );
    let without = perf_pmu(&spr(), Some(0)).unwrap();
    assert!(
        matches!(without.mediated_support(), MediatedSupport::NotCapable(w) if w.contains("FW_WRITES"))
    );
    // No PDCM: there is no IA32_PERF_CAPABILITIES, so no full-width writes.
    let mut no_pdcm = spr();
    no_pdcm.iter_mut().find(|x| x.function == 1).unwrap().ecx &= !(1 << 15);
    assert_eq!(
        perf_pmu(&no_pdcm, Some(0x2000)).unwrap().full_width_writes,
        Some(false)
    );
}

#[test]
fn intel_v3_cannot_have_the_mediated_pmu() {
    // Haswell's leaf 0AH: v3, 4 GP x 48, 7 events, 3 fixed x 48.
    let e = with_leaf(spr(), 0xa, [0x0730_0403, 0, 0, 0x0000_0603]);
    let p = perf_pmu(&e, Some(0x2000)).unwrap();
    assert_eq!((p.version, p.num_gp, p.num_fixed), (3, 4, 3));
    match p.mediated_support() {
        MediatedSupport::NotCapable(w) => assert!(w.contains("v3") && w.contains("v4+"), "{w}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn intel_fixed_counter_rules_follow_perf() {
    // v2-v4: at least 3 fixed counters are assumed on bare metal, none under a hypervisor.
    let e = with_leaf(spr(), 0xa, [0x0730_0402, 0, 0, 0]);
    assert_eq!(perf_pmu(&e, None).unwrap().num_fixed, 3);
    let mut guest = e.clone();
    guest.iter_mut().find(|x| x.function == 1).unwrap().ecx |= 1 << 31;
    let p = perf_pmu(&guest, None).unwrap();
    assert_eq!((p.num_fixed, p.fixed_width), (0, 0));
    // v5: the ECX bitmap counts, not EDX[4:0].
    let e = with_leaf(spr(), 0xa, [0x0830_0805, 0, 0x7, 0x0000_8604]);
    assert_eq!(perf_pmu(&e, None).unwrap().num_fixed, 3);
    // Version 0, or fewer than 7 architectural events: perf has no core PMU.
    assert_eq!(perf_pmu(&with_leaf(spr(), 0xa, [0; 4]), None), None);
    let e = with_leaf(spr(), 0xa, [0x0630_0805, 0, 0xf, 0x0000_8604]);
    assert_eq!(perf_pmu(&e, None), None);
}

#[test]
fn genoa_has_perfmon_v2_and_six_counters() {
    let p = perf_pmu(&genoa(), None).unwrap();
    assert_eq!(
        p,
        HostPerfPmu {
            vendor: Vendor::Amd,
            version: 2,
            num_gp: 6,
            gp_width: 48,
            num_fixed: 0,
            fixed_width: 0,
            full_width_writes: None,
        }
    );
    assert_eq!(p.mediated_support(), MediatedSupport::Capable);
}

#[test]
fn amd_without_perfmon_v2_cannot_have_the_mediated_pmu() {
    let mut e = genoa();
    e.retain(|x| x.function != 0x8000_0022);
    let p = perf_pmu(&e, None).unwrap();
    assert_eq!((p.version, p.num_gp), (0, 6));
    assert!(
        matches!(p.mediated_support(), MediatedSupport::NotCapable(w) if w.contains("PerfMonV2"))
    );
    // Without PerfCtrExtCore: the 4 legacy counters.
    e.iter_mut()
        .find(|x| x.function == 0x8000_0001)
        .unwrap()
        .ecx &= !(1 << 23);
    assert_eq!(perf_pmu(&e, None).unwrap().num_gp, 4);
}

#[test]
fn leaves_beyond_the_maximum_are_not_read() {
    // Max extended leaf below 0x80000022: PerfMonV2 is not looked up even if present.
    let e = with_leaf(genoa(), 0x8000_0000, [0x8000_0021, 0, 0, 0]);
    assert_eq!(perf_pmu(&e, None).unwrap().version, 0);
}

#[test]
fn probe_reads_the_host_perf_pmu_from_raw_cpuid() {
    let mut src = FixtureHost {
        cpuid: Some(spr()),
        ..Default::default()
    };
    assert_eq!(HostPmu::probe(&src).host_perf_pmu, None);
    src.raw_cpuid = Some(spr());
    src.raw_msrs.insert(0x345, 0x2000);
    let h = HostPmu::probe(&src);
    assert_eq!(h.host_perf_pmu.as_ref().map(|p| p.num_fixed), Some(4));
    assert!(
        h.report()
            .contains("host perf PMU (CPUID):  Intel perfmon v5: 8 GP x 48 bits + 4 fixed x 48 bits, full-width writes"),
        "{}",
        h.report()
    );
}

#[test]
fn a_hybrid_cpu_gives_kvm_no_perf_pmu() {
    let mut e = spr();
    e.iter_mut()
        .find(|x| x.function == 7 && x.index == 0)
        .unwrap()
        .edx |= vpmu::mediated::HYBRID_BIT;
    assert!(vpmu::mediated::hybrid_cpu(&|l, s| lookup(&e, l, s)));
    assert!(!vpmu::mediated::hybrid_cpu(&|l, s| lookup(&spr(), l, s)));
    assert_eq!(perf_pmu(&e, Some(0x2000)), None);
    // Discovery sees it from the host CPUID alone, too (sysfs listing only `cpu`).
    let src = FixtureHost {
        cpuid: Some(spr()),
        raw_cpuid: Some(e),
        ..Default::default()
    };
    let h = HostPmu::probe(&src);
    assert!(h.hybrid);
    assert!(
        h.report().contains("hybrid CPU: perf gives KVM no PMU"),
        "{}",
        h.report()
    );
}

fn intel_guest(version: u8, gp: u8, fixed: u8, width: u8, fw: bool) -> PmuConfig {
    PmuConfig::Intel(IntelPmu {
        version,
        num_gp: gp,
        gp_width: width,
        num_fixed: fixed,
        fixed_width: if version >= 2 { width } else { 0 },
        events_unavailable: 0,
        events_len: 7,
        perf_capabilities: Some(if fw { 0x2000 } else { 0 }),
    })
}

fn intel_host(version: u8, gp: u8, fixed: u8) -> HostPerfPmu {
    HostPerfPmu {
        vendor: Vendor::Intel,
        version,
        num_gp: gp,
        gp_width: 48,
        num_fixed: fixed,
        fixed_width: 48,
        full_width_writes: Some(true),
    }
}

fn plan_of(p: &InterceptPlan) -> Vec<(MsrGroup, bool)> {
    p.groups.iter().map(|g| (g.group, g.intercepted)).collect()
}

#[test]
fn selectors_always_intercepted_counters_always_passed_through() {
    let p = mediated_intercepts(&intel_guest(2, 4, 3, 48, true), &intel_host(4, 4, 3));
    assert_eq!(
        plan_of(&p),
        vec![
            (MsrGroup::Counters, false),
            (MsrGroup::EventSelectors, true),
            (MsrGroup::FixedCtrCtrl, true),
            (MsrGroup::Global, false),
            (MsrGroup::Rdpmc, false),
        ]
    );
    assert!(p.fast_path());
    assert!(
        p.summary()
            .contains("PERF_GLOBAL_* and RDPMC passed through"),
        "{}",
        p.summary()
    );
}

#[test]
fn a_host_with_four_fixed_counters_keeps_global_and_rdpmc_intercepted() {
    // Sapphire Rapids: KVM's default layout has 3 fixed counters, the host perf PMU 4.
    let p = mediated_intercepts(&intel_guest(2, 8, 3, 48, true), &intel_host(5, 8, 4));
    assert_eq!(p.intercepted(MsrGroup::Counters), Some(false));
    assert_eq!(p.intercepted(MsrGroup::Global), Some(true));
    assert_eq!(p.intercepted(MsrGroup::Rdpmc), Some(true));
    assert!(!p.fast_path());
    let why = &p.get(MsrGroup::Global).unwrap().why;
    assert!(why.contains("3 fixed") && why.contains("4 fixed"), "{why}");
    assert!(why.contains("at most 3 fixed"), "{why}");
    // Likewise more than 8 GP counters.
    let p = mediated_intercepts(&intel_guest(2, 8, 3, 48, true), &intel_host(5, 10, 3));
    let why = &p.get(MsrGroup::Global).unwrap().why;
    assert!(why.contains("at most 8 GP"), "{why}");
}

#[test]
fn global_needs_equal_counts_and_version_2() {
    let host = intel_host(4, 4, 3);
    let fewer = mediated_intercepts(&intel_guest(2, 2, 3, 48, true), &host);
    assert_eq!(fewer.intercepted(MsrGroup::Global), Some(true));
    assert_eq!(fewer.intercepted(MsrGroup::Rdpmc), Some(true));
    // v1: no PERF_GLOBAL_CTRL (and no fixed counters).
    let v1 = mediated_intercepts(&intel_guest(1, 4, 0, 48, true), &host);
    assert_eq!(v1.intercepted(MsrGroup::Global), Some(true));
    // A guest v5 layout is not capped by KVM (intel_pmu_refresh); fixed counters are.
    let v5 = mediated_intercepts(&intel_guest(5, 4, 4, 48, true), &host);
    assert_eq!(v5.intercepted(MsrGroup::Global), Some(false));
}

#[test]
fn rdpmc_also_needs_equal_widths() {
    let p = mediated_intercepts(&intel_guest(2, 4, 3, 32, true), &intel_host(4, 4, 3));
    assert_eq!(p.intercepted(MsrGroup::Global), Some(false));
    assert_eq!(p.intercepted(MsrGroup::Rdpmc), Some(true));
    let why = &p.get(MsrGroup::Rdpmc).unwrap().why;
    assert!(why.contains("32") && why.contains("48"), "{why}");
}

#[test]
fn full_width_aliases_follow_the_guests_fw_writes() {
    let p = mediated_intercepts(&intel_guest(2, 4, 3, 48, false), &intel_host(4, 4, 3));
    let why = &p.get(MsrGroup::Counters).unwrap().why;
    assert!(
        why.contains("IA32_A_PMCx") && why.contains("intercepted"),
        "{why}"
    );
}

#[test]
fn amd_intercepts() {
    let host = perf_pmu(&genoa(), None).unwrap();
    let p = mediated_intercepts(&vpmu::cpuid::host_layout(&genoa()), &host);
    assert_eq!(
        plan_of(&p),
        vec![
            (MsrGroup::Counters, false),
            (MsrGroup::EventSelectors, true),
            (MsrGroup::Global, false),
            (MsrGroup::Rdpmc, false),
        ]
    );
    // Legacy layout: 4 counters (not the host's 6), no PerfMonV2.
    let legacy = amd_cfg(false, false, 4);
    let p = mediated_intercepts(&legacy, &host);
    assert_eq!(p.intercepted(MsrGroup::Global), Some(true));
    assert_eq!(p.intercepted(MsrGroup::Rdpmc), Some(true));
    assert!(p.get(MsrGroup::Counters).unwrap().why.contains("PERF_CTR"));
}

#[test]
fn no_guest_pmu_means_everything_intercepted() {
    let p = mediated_intercepts(&PmuConfig::None, &intel_host(4, 4, 3));
    assert!(p.groups.iter().all(|g| g.intercepted));
    assert!(!p.fast_path());
}

#[test]
fn probe_shows_the_default_layouts_intercepts() {
    let mut src = FixtureHost {
        cpuid: Some(genoa()),
        raw_cpuid: Some(genoa()),
        ..Default::default()
    };
    let h = HostPmu::probe(&src);
    let plan = h.passthrough_intercepts().unwrap();
    assert!(plan.fast_path());
    assert!(
        h.report()
            .contains("Passthrough (mediated vPMU) intercepts"),
        "{}",
        h.report()
    );
    src.raw_cpuid = None;
    assert_eq!(HostPmu::probe(&src).passthrough_intercepts(), None);
}
