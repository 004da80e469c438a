//! Availability rules on canned hosts: the table of hosts as KVM reports them
//! (fixtures/kvm-hosts.toml) and a few hand-made variations.

mod common;
#[path = "fixtures/hosts.rs"]
mod hosts;

use common::genoa_legacy;
use hosts::{kvm_host, kvm_hosts};
use kvm_bindings::{KVM_CAP_PMU_EVENT_FILTER, KVM_CAP_X86_MSR_FILTER, KVM_CAP_X86_USER_SPACE_MSR};
use vpmu::discovery::{
    explain_vcpu_create_ebusy, mediated_param_path, Availability, CounterSource, FixtureHost,
    HostPmu, PmuMode, PARAM_ENABLE_PMU, PARAM_NMI_WATCHDOG,
};
use vpmu::{IntelPmu, PmuConfig, Vendor};

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

/// Checks `want` (`available[: note phrase]` / `unavailable: reason-or-remedy phrase`).
fn check_mode(h: &HostPmu, mode: PmuMode, want: &str) -> Result<(), String> {
    let (status, phrase) = match want.split_once(':') {
        Some((s, p)) => (s.trim(), p.trim()),
        None => (want.trim(), ""),
    };
    match (status, h.availability(mode)) {
        ("available", Availability::Available) => {
            let note = h.note(mode).unwrap_or_default();
            if note.contains(phrase) {
                Ok(())
            } else {
                Err(format!("{mode}: note {note:?} lacks {phrase:?}"))
            }
        }
        ("unavailable", Availability::Unavailable { reason, remedy }) => {
            if reason.contains(phrase) || remedy.contains(phrase) {
                Ok(())
            } else {
                Err(format!(
                    "{mode}: neither reason {reason:?} nor remedy {remedy:?} has {phrase:?}"
                ))
            }
        }
        (want, got) => Err(format!("{mode}: expected {want}, got {got:?}")),
    }
}

#[test]
fn every_fixture_host_has_its_expected_outcomes() {
    let mut failures = Vec::new();
    let fixtures = kvm_hosts();
    assert!(fixtures.len() >= 8, "{} fixture hosts", fixtures.len());
    for f in &fixtures {
        let h = HostPmu::probe(&f.host);
        let report = h.report();
        println!("== {}\n{report}", f.name);
        let mut fail = |what: String| failures.push(format!("{}: {what}", f.name));
        for mode in PmuMode::ALL {
            if let Err(e) = check_mode(&h, mode, &f.modes[mode.as_str()]) {
                fail(e);
            }
        }
        if !f.intercepts.is_empty() {
            match h.passthrough_intercepts() {
                None => fail("no passthrough intercept plan".into()),
                Some(plan) => {
                    for (g, want) in &f.intercepts {
                        match plan.groups.iter().find(|x| x.group.as_str() == g.as_str()) {
                            Some(x) if x.intercepted == *want => {}
                            Some(x) => fail(format!(
                                "intercepts: {g} intercepted={}, expected {want}: {}",
                                x.intercepted, x.why
                            )),
                            None => fail(format!("intercepts: no group {g}")),
                        }
                    }
                }
            }
        }
        for p in &f.report_includes {
            if !report.contains(p.as_str()) {
                fail(format!("report lacks {p:?}"));
            }
        }
        for p in &f.report_excludes {
            if report.contains(p.as_str()) {
                fail(format!("report has {p:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn kvm_layout_is_capped_and_does_not_decide_passthrough() {
    // KVM reports at most perfmon v2 and 3 fixed counters (kvm_init_pmu_capability), even
    // on a v5 host with 4: the mediated PMU is available all the same.
    let f = kvm_host("spr-mediated-y");
    let h = HostPmu::probe(&f.host);
    assert_eq!(h.vendor, Some(Vendor::Intel));
    assert_eq!(h.cpu_model, "Intel(R) Xeon(R) w7-2475X");
    assert_eq!(
        h.layout,
        PmuConfig::Intel(IntelPmu {
            version: 2,
            num_gp: 8,
            gp_width: 48,
            num_fixed: 3,
            fixed_width: 48,
            events_unavailable: 0,
            events_len: 8,
            perf_capabilities: Some(0x2000),
        })
    );
    assert_eq!(h.host_perf_pmu.as_ref().map(|p| p.version), Some(5));
    assert_eq!(
        h.availability(PmuMode::Passthrough),
        Availability::Available
    );
    // With enable_mediated_pmu=Y KVM has checked the hardware itself: no host fact can
    // veto it, not even unknown raw facts or an odd feature MSR.
    let mut src = f.host.clone();
    src.raw_cpuid = None;
    src.raw_msrs.clear();
    src.feature_msrs.insert(0x345, 0);
    assert_eq!(
        HostPmu::probe(&src).availability(PmuMode::Passthrough),
        Availability::Available
    );
    let json = serde_json::to_value(h.probe_report()).unwrap();
    assert_eq!(json["host"]["host_perf_pmu"]["num_fixed"], 4);
    assert_eq!(json["modes"][2]["availability"]["status"], "available");
    assert_eq!(json["mediated_hardware"]["verdict"], "capable");
    let groups = json["passthrough_intercepts"]["groups"].as_array().unwrap();
    let global = groups.iter().find(|g| g["group"] == "global").unwrap();
    assert_eq!(global["intercepted"], true);
}

#[test]
fn mediated_n_remedy_depends_on_what_the_host_can_do() {
    let capable = HostPmu::probe(&kvm_host("genoa-mediated-n").host);
    let (reason, remedy) = unavailable(capable.availability(PmuMode::Passthrough));
    assert_eq!(reason, "kvm_amd.enable_mediated_pmu=N");
    assert!(
        remedy.starts_with("reload kvm_amd with enable_mediated_pmu=1"),
        "{remedy}"
    );
    let report = capable.report();
    assert!(
        report.contains("passthrough: unavailable: kvm_amd.enable_mediated_pmu=N; reload kvm_amd with enable_mediated_pmu=1"),
        "{report}"
    );
    // Hardware that cannot: KVM forced N at module load; no reload helps.
    for name in ["rome-not-mediated-capable", "haswell-not-mediated-capable"] {
        let h = HostPmu::probe(&kvm_host(name).host);
        let (reason, remedy) = unavailable(h.availability(PmuMode::Passthrough));
        assert!(reason.contains("enable_mediated_pmu=N"), "{name}: {reason}");
        assert!(
            remedy.contains("no remedy on this host"),
            "{name}: {remedy}"
        );
        assert!(!remedy.contains("reload"), "{name}: {remedy}");
    }
    // Unknown (host MSR unreadable): the reload is offered, with the condition.
    let h = HostPmu::probe(&kvm_host("spr-mediated-n-no-msr-access").host);
    let (_, remedy) = unavailable(h.availability(PmuMode::Passthrough));
    assert!(remedy.contains("FW_WRITES"), "{remedy}");
}

#[test]
fn older_kernel_without_mediated_parameter() {
    let mut src = kvm_host("genoa-mediated-n").host;
    src.params
        .remove(&mediated_param_path("kvm_amd"))
        .expect("fixture has the parameter");
    let h = HostPmu::probe(&src);
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
    // The operator's kvm.enable_pmu=N; AMD's 4 legacy counters exist architecturally but
    // KVM gives none. (KVM_GET_SUPPORTED_CPUID would also drop PerfCtrExtCore and
    // PerfMonV2 here; the layout must be "none" whatever it says.)
    let mut src = kvm_host("genoa-mediated-n").host;
    src.params.insert(PARAM_ENABLE_PMU.into(), "N".into());
    let h = HostPmu::probe(&src);
    assert_eq!(h.layout, PmuConfig::None);
    for m in [PmuMode::Emulated, PmuMode::Passthrough] {
        let (reason, remedy) = unavailable(h.availability(m));
        assert_eq!(reason, "kvm.enable_pmu=N");
        assert!(remedy.contains("enable_pmu=1"));
    }
    assert_eq!(h.availability(PmuMode::Userspace), Availability::Available);
}

#[test]
fn ci_like_host_without_pmu() {
    // Mirrors REFERENCE.md §1: AMD VM, kvm_pvm, enable_pmu=N, no perf core PMU, kernel says
    // "PMU not available", PMU_CAPABILITY 0, userspace MSR exits available.
    let e = genoa_legacy();
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
    let mut src = kvm_host("genoa-mediated-n").host;
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

#[test]
fn nmi_watchdog_blocks_passthrough_with_ebusy() {
    let h = HostPmu::probe(&kvm_host("clx-mediated-y-nmi-watchdog").host);
    assert_eq!(h.nmi_watchdog, Some(true));
    let (reason, remedy) = unavailable(h.availability(PmuMode::Passthrough));
    assert!(
        reason.contains("EBUSY") && reason.contains("KVM_CREATE_VCPU"),
        "{reason}"
    );
    assert!(remedy.contains("perf record -a"), "{remedy}");
    // The watchdog only matters where passthrough is otherwise available.
    let n = HostPmu::probe(&kvm_host("haswell-not-mediated-capable").host);
    assert_eq!(n.nmi_watchdog, Some(true));
    let (reason, _) = unavailable(n.availability(PmuMode::Passthrough));
    assert!(!reason.contains("watchdog"), "{reason}");
    // Unknown (no /proc/sys/kernel/nmi_watchdog): not a blocker.
    let mut src = kvm_host("clx-mediated-y-nmi-watchdog").host;
    src.params.remove(PARAM_NMI_WATCHDOG);
    let h = HostPmu::probe(&src);
    assert_eq!(h.nmi_watchdog, None);
    assert_eq!(
        h.availability(PmuMode::Passthrough),
        Availability::Available
    );
}

#[test]
fn vcpu_create_ebusy_is_explained() {
    let on = HostPmu::probe(&kvm_host("clx-mediated-y-nmi-watchdog").host);
    let text = explain_vcpu_create_ebusy(&on);
    for phrase in [
        "KVM_CREATE_VCPU",
        "EBUSY",
        "perf_create_mediated_pmu",
        "exclude_guest",
        "kernel.nmi_watchdog=1",
        "sysctl kernel.nmi_watchdog=0",
        "perf record -a",
        "--pmu userspace",
    ] {
        assert!(text.contains(phrase), "{phrase:?} missing: {text}");
    }
    let off = HostPmu::probe(&kvm_host("clx-mediated-y").host);
    let text = explain_vcpu_create_ebusy(&off);
    assert!(text.contains("NMI watchdog is off"), "{text}");
    assert!(!text.contains("sysctl kernel.nmi_watchdog=0"), "{text}");
    assert!(text.contains("perf record -a"), "{text}");
    let mut src = kvm_host("clx-mediated-y").host;
    src.params.remove(PARAM_NMI_WATCHDOG);
    let text = explain_vcpu_create_ebusy(&HostPmu::probe(&src));
    assert!(text.contains("sysctl kernel.nmi_watchdog=0"), "{text}");
    // Without the mediated vPMU the EBUSY is something else: say so.
    let text = explain_vcpu_create_ebusy(&HostPmu::probe(&kvm_host("spr-mediated-n").host));
    assert!(
        text.contains("kvm_intel.enable_mediated_pmu is not Y"),
        "{text}"
    );
}
