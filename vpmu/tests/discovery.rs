//! Availability rules on canned hosts built from the real CPUID fixtures.

#[path = "fixtures/common.rs"]
mod common;

use common::{genoa, spr};
use kvm_bindings::{
    KVM_CAP_PMU_CAPABILITY, KVM_CAP_PMU_EVENT_FILTER, KVM_CAP_PMU_EVENT_MASKED_EVENTS,
    KVM_CAP_X86_MSR_FILTER, KVM_CAP_X86_USER_SPACE_MSR,
};
use vpmu::discovery::{
    mediated_param_path, Availability, CounterSource, FixtureHost, HostPmu, PerfPmu, PmuMode,
    PARAM_ENABLE_PMU,
};
use vpmu::{AmdPmu, PmuConfig, Vendor};

/// A bare-metal Zen 4 host running Linux 7.0 with kvm_amd loaded.
fn genoa_host(enable_pmu: &str, mediated: Option<&str>) -> FixtureHost {
    let mut h = FixtureHost {
        cpuid: Some(genoa()),
        modules: vec!["kvm".into(), "kvm_amd".into()],
        perf_pmus: vec![PerfPmu {
            name: "cpu".into(),
            pmu_type: 4,
        }],
        kernel_says_no_pmu: Some(false),
        ..Default::default()
    };
    for (cap, v) in [
        (KVM_CAP_PMU_CAPABILITY, 1),
        (KVM_CAP_PMU_EVENT_FILTER, 1),
        (KVM_CAP_PMU_EVENT_MASKED_EVENTS, 1),
        (KVM_CAP_X86_USER_SPACE_MSR, 7),
        (KVM_CAP_X86_MSR_FILTER, 1),
    ] {
        h.caps.insert(cap, v);
    }
    h.params.insert(PARAM_ENABLE_PMU.into(), enable_pmu.into());
    if let Some(m) = mediated {
        h.params.insert(mediated_param_path("kvm_amd"), m.into());
    }
    h
}

fn spr_host(perf_caps: Option<u64>, mediated: Option<&str>) -> FixtureHost {
    let mut h = genoa_host("Y", None);
    h.cpuid = Some(spr());
    h.modules = vec!["kvm".into(), "kvm_intel".into()];
    if let Some(c) = perf_caps {
        h.feature_msrs.insert(0x345, c);
    }
    if let Some(m) = mediated {
        h.params.insert(mediated_param_path("kvm_intel"), m.into());
    }
    h
}

fn unavailable(a: Availability) -> (String, String) {
    match a {
        Availability::Unavailable { reason, remedy } => (reason, remedy),
        Availability::Available => panic!("expected unavailable"),
    }
}

#[test]
fn mode_names_round_trip() {
    for m in PmuMode::ALL {
        assert_eq!(m.to_string().parse::<PmuMode>(), Ok(m));
    }
    assert!("mediated".parse::<PmuMode>().is_err());
}

#[test]
fn genoa_with_mediated_off_offers_emulated_not_passthrough() {
    let h = HostPmu::probe(&genoa_host("Y", Some("N")));
    assert_eq!(h.vendor, Some(Vendor::Amd));
    assert_eq!(h.cpu_model, "AMD EPYC 9124 16-Core Processor");
    assert_eq!(
        h.layout,
        PmuConfig::Amd(AmdPmu {
            core_ext: true,
            perfmon_v2: true,
            num_counters: 6,
            width: 48
        })
    );
    assert!(h.hardware_pmu());
    assert_eq!(h.availability(PmuMode::Emulated), Availability::Available);
    let (reason, remedy) = unavailable(h.availability(PmuMode::Passthrough));
    assert_eq!(reason, "kvm_amd.enable_mediated_pmu=N");
    assert_eq!(remedy, "reload kvm_amd with enable_mediated_pmu=1");
    let report = h.report();
    assert!(
        report.contains("passthrough: unavailable: kvm_amd.enable_mediated_pmu=N; reload kvm_amd with enable_mediated_pmu=1"),
        "{report}"
    );
    assert!(h.can_disable_pmu());
    assert_eq!(
        h.userspace_counter_source(),
        CounterSource::HostPerf { pmu: "cpu".into() }
    );
}

#[test]
fn genoa_with_mediated_on() {
    let h = HostPmu::probe(&genoa_host("Y", Some("Y")));
    assert_eq!(
        h.availability(PmuMode::Passthrough),
        Availability::Available
    );
    let (reason, _) = unavailable(h.availability(PmuMode::Emulated));
    assert!(reason.contains("enable_mediated_pmu=Y"), "{reason}");
}

#[test]
fn older_kernel_without_mediated_parameter() {
    let h = HostPmu::probe(&genoa_host("Y", None));
    assert_eq!(h.enable_mediated_pmu, None);
    let (reason, remedy) = unavailable(h.availability(PmuMode::Passthrough));
    assert!(
        reason.contains("no enable_mediated_pmu parameter"),
        "{reason}"
    );
    assert!(remedy.contains("7.0"), "{remedy}");
    assert_eq!(h.availability(PmuMode::Emulated), Availability::Available);
}

#[test]
fn enable_pmu_off_hides_even_amd_legacy_counters() {
    let h = HostPmu::probe(&genoa_host("N", Some("N")));
    assert_eq!(h.layout, PmuConfig::None);
    for m in [PmuMode::Emulated, PmuMode::Passthrough] {
        let (reason, remedy) = unavailable(h.availability(m));
        assert_eq!(reason, "kvm.enable_pmu=N");
        assert!(remedy.contains("enable_pmu=1"));
    }
    assert_eq!(h.availability(PmuMode::Userspace), Availability::Available);
}

#[test]
fn amd_without_perfmon_v2_cannot_passthrough() {
    let mut src = genoa_host("Y", Some("Y"));
    if let Some(e) = src.cpuid.as_mut() {
        e.retain(|x| x.function != 0x8000_0022);
    }
    let h = HostPmu::probe(&src);
    let (reason, _) = unavailable(h.availability(PmuMode::Passthrough));
    assert!(reason.contains("PerfMonV2"), "{reason}");
}

#[test]
fn spr_passthrough_needs_fw_writes() {
    // PERF_CAPABILITIES values are assumptions (not in the CPUID dump): with and without
    // FW_WRITES (bit 13).
    let with = HostPmu::probe(&spr_host(Some(0x2000), Some("Y")));
    assert_eq!(with.cpu_model, "Intel(R) Xeon(R) w7-2475X");
    assert_eq!(with.perf_capabilities, Some(0x2000));
    assert_eq!(
        with.availability(PmuMode::Passthrough),
        Availability::Available
    );
    let without = HostPmu::probe(&spr_host(Some(0), Some("Y")));
    let (reason, _) = unavailable(without.availability(PmuMode::Passthrough));
    assert!(reason.contains("FW_WRITES"), "{reason}");
    let unknown = HostPmu::probe(&spr_host(None, Some("Y")));
    assert!(!unknown.availability(PmuMode::Passthrough).is_available());
    let mediated_off = HostPmu::probe(&spr_host(Some(0x2000), Some("N")));
    let (reason, remedy) = unavailable(mediated_off.availability(PmuMode::Passthrough));
    assert_eq!(reason, "kvm_intel.enable_mediated_pmu=N");
    assert_eq!(remedy, "reload kvm_intel with enable_mediated_pmu=1");
}

#[test]
fn intel_v3_host_cannot_passthrough() {
    let mut src = spr_host(Some(0x2000), Some("Y"));
    if let Some(e) = src.cpuid.as_mut() {
        let l = e.iter_mut().find(|x| x.function == 0xa).unwrap();
        l.eax = (l.eax & !0xff) | 3;
    }
    let h = HostPmu::probe(&src);
    let (reason, _) = unavailable(h.availability(PmuMode::Passthrough));
    assert!(reason.contains("v3") && reason.contains("v4+"), "{reason}");
}

#[test]
fn ci_like_host_without_pmu() {
    // Mirrors REFERENCE.md §1: AMD VM, kvm_pvm, enable_pmu=N, no perf core PMU, kernel says
    // "PMU not available", PMU_CAPABILITY 0, userspace MSR exits available.
    let mut e = genoa();
    e.iter_mut()
        .find(|x| x.function == 0x8000_0001)
        .unwrap()
        .ecx &= !(1 << 23);
    e.retain(|x| x.function != 0x8000_0022);
    let mut src = FixtureHost {
        cpuid: Some(e),
        modules: vec!["kvm".into(), "kvm_pvm".into()],
        kernel_says_no_pmu: Some(true),
        ..Default::default()
    };
    src.params.insert(PARAM_ENABLE_PMU.into(), "N".into());
    src.caps.insert(KVM_CAP_PMU_EVENT_FILTER, 1);
    src.caps.insert(KVM_CAP_X86_USER_SPACE_MSR, 7);
    src.caps.insert(KVM_CAP_X86_MSR_FILTER, 1);
    let h = HostPmu::probe(&src);
    assert!(!h.hardware_pmu());
    assert_eq!(h.layout, PmuConfig::None);
    for m in [PmuMode::Emulated, PmuMode::Passthrough] {
        let (reason, _) = unavailable(h.availability(m));
        assert!(reason.starts_with("no hardware PMU"), "{reason}");
    }
    assert_eq!(h.availability(PmuMode::Off), Availability::Available);
    assert!(!h.can_disable_pmu());
    assert_eq!(h.availability(PmuMode::Userspace), Availability::Available);
    assert_eq!(h.userspace_counter_source(), CounterSource::TscClock);
    let report = h.report();
    assert!(report.contains("hardware PMU:           NO"), "{report}");
    assert!(report.contains("TSC clock model"), "{report}");
    let json = serde_json::to_value(h.probe_report()).unwrap();
    assert_eq!(json["hardware_pmu"], false);
    assert_eq!(json["modes"][1]["mode"], "emulated");
    assert_eq!(json["modes"][1]["availability"]["status"], "unavailable");
    assert_eq!(json["host"]["layout"]["vendor"], "none");
}

#[test]
fn userspace_needs_msr_exits_and_kvm() {
    let mut src = genoa_host("Y", Some("N"));
    src.caps.remove(&KVM_CAP_X86_MSR_FILTER);
    let (reason, _) = unavailable(HostPmu::probe(&src).availability(PmuMode::Userspace));
    assert!(reason.contains("KVM_CAP_X86_MSR_FILTER"), "{reason}");
    let no_kvm = FixtureHost {
        kvm_error: Some("cannot open /dev/kvm: ENOENT".into()),
        ..Default::default()
    };
    let h = HostPmu::probe(&no_kvm);
    for m in [PmuMode::Emulated, PmuMode::Passthrough, PmuMode::Userspace] {
        let (reason, _) = unavailable(h.availability(m));
        assert!(reason.starts_with("KVM unusable"), "{m}: {reason}");
    }
    assert_eq!(h.availability(PmuMode::Off), Availability::Available);
}
