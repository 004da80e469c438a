//! The vPMU modes end to end: `userspace` runs the PMU conformance guest and the demo
//! profile here; `off` hides the PMU; `emulated`/`passthrough` run the conformance guest on
//! a host whose probe says they are available, and otherwise must refuse with the probe's
//! reason (never a silent fallback).

#[macro_use]
mod common;
use common::*;

fn conformance(args: &[&str]) -> (i32, String, String) {
    let mut full = vec!["run", "--kernel", "builtin:conformance"];
    full.extend_from_slice(args);
    let o = vmm(&full);
    (status(&o), out(&o), err(&o))
}

fn assert_conformance_passes(args: &[&str]) -> String {
    assert_passed(&format!("{args:?}"), conformance(args))
}

/// Checks that a conformance run (`what`: its arguments, for the messages) passed;
/// returns its stdout.
fn assert_passed(what: &str, (st, s, e): (i32, String, String)) -> String {
    let (passed, failed, _skipped) =
        conformance_counts(&s).unwrap_or_else(|| panic!("no conformance summary in:\n{s}\n{e}"));
    assert_eq!(failed, 0, "conformance failures with {what}:\n{s}\n{e}");
    assert!(passed >= 10, "too few checks ran ({passed}):\n{s}");
    // The guest writes V=0 to 0xf4 when nothing failed.
    assert_eq!(st, 1, "{s}\n{e}");
    s
}

/// `vpmu-vmm probe --json`, which must succeed.
fn probe_json() -> serde_json::Value {
    let o = vmm(&["probe", "--json"]);
    assert_eq!(status(&o), 0, "{}", err(&o));
    serde_json::from_str(&out(&o)).expect("probe --json is JSON")
}

fn mode_available(mode: &str) -> Result<(), String> {
    let v = probe_json();
    let modes = v["modes"].as_array().expect("modes array");
    let m = modes
        .iter()
        .find(|m| m["mode"] == mode)
        .expect("mode listed");
    if m["availability"]["status"] == "available" {
        Ok(())
    } else {
        Err(m["availability"]["reason"]
            .as_str()
            .unwrap_or("?")
            .to_string())
    }
}

/// Whether `vendor`'s ("intel"/"amd") PMU model can run end to end here: the userspace
/// vPMU models the host's vendor, or either vendor on a host without a hardware PMU (the
/// guest's CPUID vendor string is rewritten to match). Otherwise the test says so by name.
fn model_runs_here(test: &str, vendor: &str) -> bool {
    let v = probe_json();
    let host = v["host"]["vendor"]
        .as_str()
        .unwrap_or("unknown")
        .to_string();
    if host == vendor || v["hardware_pmu"] == false {
        return true;
    }
    skip(
        test,
        &format!(
            "the {vendor} PMU model needs a {vendor} host or a host without a hardware PMU; \
             this host is {host} with a hardware PMU"
        ),
    );
    false
}

macro_rules! need_model {
    ($name:expr, $vendor:expr) => {
        need_kvm!($name);
        if !model_runs_here($name, $vendor) {
            return;
        }
    };
}

/// The run report written to `path`.
fn read_report(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("report written"))
        .expect("report is JSON")
}

/// The programmed list of a run report (vCPU 0).
fn programmed(rep: &serde_json::Value) -> Vec<serde_json::Value> {
    rep["pmu"][0]["programmed"]
        .as_array()
        .expect("programmed list")
        .clone()
}

/// Whether `programmed` holds `event` (e.g. "0x76/0x01") with `verdict`.
fn has_verdict(programmed: &[serde_json::Value], event: &str, verdict: &str) -> bool {
    programmed
        .iter()
        .any(|p| p["event"] == event && p["verdict"] == verdict)
}

/// The conformance guest under `--pmu userspace --pmu-layout <layout>` with the policy
/// `policy` (written to the scratch file `name`.toml), a run report (`name`-report.json)
/// and `extra` arguments: (status, stdout, stderr, the report's path).
fn conformance_with_policy(
    name: &str,
    layout: &str,
    policy: &[u8],
    extra: &[&str],
) -> (i32, String, String, std::path::PathBuf) {
    let policy = write_scratch(&format!("{name}.toml"), policy);
    let report = scratch(&format!("{name}-report.json"));
    let report_s = report.to_string_lossy().into_owned();
    let mut args = vec![
        "--pmu",
        "userspace",
        "--pmu-layout",
        layout,
        "--pmu-policy",
        &policy,
        "--report",
        &report_s,
    ];
    args.extend_from_slice(extra);
    let (st, s, e) = conformance(&args);
    (st, s, e, report)
}

/// [`need_model!`], then the conformance guest under `--pmu userspace --pmu-layout
/// <layout>` checking `expect=<expect>`, which must pass: its stdout, None when skipped.
fn layout_passes(test: &str, vendor: &str, layout: &str, expect: &str) -> Option<String> {
    if let Some(why) = kvm_unusable() {
        skip(test, &why);
        return None;
    }
    if !model_runs_here(test, vendor) {
        return None;
    }
    let expect = format!("expect={expect}");
    Some(assert_conformance_passes(&[
        "--pmu",
        "userspace",
        "--pmu-layout",
        layout,
        "--cmdline",
        &expect,
    ]))
}

#[test]
fn userspace_amd_layout_passes_conformance() {
    if let Some(s) = layout_passes(
        "userspace_amd_layout_passes_conformance",
        "amd",
        "amd:gp=6,core-ext,perfmon-v2",
        "amd:v2,gp6",
    ) {
        assert!(s.contains("PMI delivered"), "{s}");
    }
}

#[test]
fn userspace_intel_layout_passes_conformance() {
    layout_passes(
        "userspace_intel_layout_passes_conformance",
        "intel",
        "intel:version=5,gp=8,fixed=4,gp-width=48,fixed-width=48,fw-writes",
        "intel:v5,gp8,fixed4,w48,fw48",
    );
}

#[test]
fn userspace_intel_v2_layout_passes_conformance() {
    layout_passes(
        "userspace_intel_v2_layout_passes_conformance",
        "intel",
        "intel:version=2,gp=2,fixed=3,gp-width=40,fixed-width=40",
        "intel:v2,gp2,fixed3,w40",
    );
}

#[test]
fn userspace_denied_event_never_counts_and_is_audited() {
    need_model!("userspace_denied_event_never_counts_and_is_audited", "amd");
    // Allow AMD cycles (0x76) only with unit mask 0; the guest programs 0x76 with unit mask
    // 1, which the clock model *would* count if the policy let it.
    let audit = scratch("audit.jsonl");
    let audit_s = audit.to_string_lossy().into_owned();
    let extra = ["--pmu-audit", &audit_s, "--cmdline", "denied=0x76:0x01"];
    let (st, s, e, report) = conformance_with_policy(
        "deny-umask1",
        "amd:gp=6,core-ext,perfmon-v2",
        br#"action = "allow"
fixed_counters = []
[[masked]]
event = 0x76
umask_match = 0x00
umask_mask = 0xff
"#,
        &extra,
    );
    assert_passed(&format!("policy deny-umask1, {extra:?}"), (st, s, e));
    // The run report says what the guest programmed and what the vPMU did with it.
    let rep = read_report(&report);
    let programmed = programmed(&rep);
    assert!(
        has_verdict(&programmed, "0x76/0x01", "denied"),
        "{programmed:?}"
    );
    assert!(
        has_verdict(&programmed, "0x76/0x00", "counting"),
        "{programmed:?}"
    );
    assert!(
        rep["vcpus"][0]["msr_write"].as_u64().unwrap_or(0) > 0,
        "{rep}"
    );
    let log = std::fs::read_to_string(&audit).expect("audit log written");
    let denied: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
        .filter(|v: &serde_json::Value| v["verdict"] == "denied")
        .collect();
    assert!(!denied.is_empty(), "no denied record in:\n{log}");
    assert!(
        denied
            .iter()
            .any(|v| v["event"] == "0x76" && v["umask"] == "0x1"),
        "{log}"
    );
    // Reserved-bit writes the guest tries on purpose show up as #GP records.
    assert!(
        log.lines().any(|l| l.contains("\"verdict\":\"gp\"")),
        "{log}"
    );
}

#[test]
fn off_hides_the_pmu() {
    need_kvm!("off_hides_the_pmu");
    assert_conformance_passes(&["--pmu", "off", "--cmdline", "expect=none"]);
    let o = vmm(&["demo", "--pmu", "off"]);
    assert!(out(&o).contains("pmu: none"), "{}", out(&o));
}

/// `mov ecx, MSR; rdmsr; out 0xf4 <- 0x11`: with no IDT, a #GP on the RDMSR triple-faults;
/// a read answered with 0 would reach the debug-exit instead.
fn read_msr_guest(msr: u32) -> Vec<u8> {
    let mut code = vec![0xb9];
    code.extend_from_slice(&msr.to_le_bytes());
    code.extend_from_slice(&hex("0f3266baf400b811000000eff4ebfd"));
    elf64(&code, 0x20_0000)
}

/// Runs [`read_msr_guest`] of `msr` (written to the scratch file `file`) under `--pmu off`
/// with `extra` arguments: its output and run report, or None (after printing why `test`
/// skips) when KVM lacks the MSR filter that makes the PMU MSRs fault.
fn read_msr_under_off(
    test: &str,
    file: &str,
    msr: u32,
    extra: &[&str],
) -> Option<(std::process::Output, serde_json::Value)> {
    let k = write_scratch(file, &read_msr_guest(msr));
    let mut args = vec!["run", "--kernel", &k, "--pmu", "off"];
    args.extend_from_slice(extra);
    let (o, report) = vmm_report(&args);
    let report = report.unwrap_or_else(|| panic!("no run report: {}", err(&o)));
    if report["pmu_setup"]["pmu_msrs_fault"] != true {
        skip(test, &format!("KVM lacks the MSR filter here: {report}"));
        return None;
    }
    Some((o, report))
}

#[test]
fn off_makes_pmu_msrs_fault() {
    need_kvm!("off_makes_pmu_msrs_fault");
    // Both vendors' PMU MSRs, whatever the host: AMD K7 PERF_CTR0, AMD core-ext PERF_CTL0,
    // PerfMonV2 GLOBAL_CTL, Intel IA32_PMC0, IA32_PERFEVTSEL0, IA32_FIXED_CTR0,
    // IA32_PERF_CAPABILITIES, IA32_PERF_GLOBAL_CTRL.
    for msr in [
        0xc001_0004u32,
        0xc001_0200,
        0xc000_0301,
        0xc1,
        0x186,
        0x309,
        0x345,
        0x38f,
    ] {
        let Some((o, report)) = read_msr_under_off(
            "off_makes_pmu_msrs_fault",
            &format!("rd-{msr:x}.elf"),
            msr,
            &[],
        ) else {
            return;
        };
        let e = err(&o);
        assert_eq!(
            status(&o),
            4,
            "RDMSR {msr:#x} must #GP under --pmu off: {e}"
        );
        assert_eq!(report["outcome"]["kind"], "triple_fault", "{report}");
    }
}

/// The MSR filter is installed off the critical path (on a helper thread, while the
/// kernel is loaded, the vCPUs are created and their threads spawned, held at a start
/// gate), yet still before any guest instruction:
/// every vCPU of a 4-vCPU freestanding guest starts with `mov ecx, MSR; rdmsr` on a PMU
/// MSR, and under `--pmu off` that very first RDMSR must #GP (triple fault, no IDT),
/// never read KVM's 0 (which would reach the debug-exit). Repeated, so a filter that
/// raced with the first KVM_RUN would show.
#[test]
fn msr_filter_is_in_place_before_the_first_guest_instruction() {
    need_kvm!("msr_filter_is_in_place_before_the_first_guest_instruction");
    // AMD K7 PERF_CTR0 and Intel IA32_PMC0: KVM answers both with 0 without the filter,
    // whatever the host's vendor.
    for (round, msr) in [0xc001_0004u32, 0xc1]
        .into_iter()
        .cycle()
        .take(6)
        .enumerate()
    {
        let Some((o, report)) = read_msr_under_off(
            "msr_filter_is_in_place_before_the_first_guest_instruction",
            &format!("first-{round}.elf"),
            msr,
            &["--cpus", "4"],
        ) else {
            return;
        };
        assert_eq!(
            report["outcome"]["kind"], "triple_fault",
            "the first RDMSR {msr:#x} must #GP: {report}"
        );
        assert_eq!(status(&o), 4, "{}", err(&o));
        let startup = &report["startup"];
        assert!(
            startup["msr_filter_ns"].as_u64().is_some_and(|n| n > 0),
            "the filter's install time is reported: {startup}"
        );
        assert!(
            startup["first_kvm_run_ns"].as_u64() == report["start_to_first_entry_ns"].as_u64(),
            "{report}"
        );
    }
}

#[test]
fn userspace_cross_vendor_layout_says_what_the_guest_sees() {
    need_kvm!("userspace_cross_vendor_layout_says_what_the_guest_sees");
    let v = probe_json();
    let (other, layout) = match v["host"]["vendor"].as_str() {
        Some("intel") => ("AuthenticAMD", "amd:gp=6,core-ext,perfmon-v2"),
        Some("amd") => ("GenuineIntel", "intel:version=2,gp=2,fixed=3"),
        h => {
            skip(
                "userspace_cross_vendor_layout_says_what_the_guest_sees",
                &format!("host vendor {h:?} is neither intel nor amd"),
            );
            return;
        }
    };
    let (o, report) = vmm_report(&[
        "run",
        "--kernel",
        "builtin:conformance",
        "--pmu",
        "userspace",
        "--pmu-layout",
        layout,
    ]);
    let e = err(&o);
    if v["hardware_pmu"] == true {
        // The guest's PMU must be the host CPU's: one clear line naming the host vendor.
        assert_eq!(status(&o), 2, "{e}");
        assert!(e.contains("but the host CPU is"), "{e}");
    } else {
        let report = report.unwrap_or_else(|| panic!("no run report: {e}"));
        let guest = if other == "AuthenticAMD" {
            "amd"
        } else {
            "intel"
        };
        assert_eq!(
            report["pmu_setup"]["cpuid_vendor"]["guest"], guest,
            "the cross-vendor layout must be announced: {report}"
        );
        let (_, failed, _) = conformance_counts(&out(&o)).expect("conformance summary");
        assert_eq!(failed, 0, "{}", out(&o));
    }
}

#[test]
fn demo_profile_in_userspace_mode() {
    need_kvm!("demo_profile_in_userspace_mode");
    let (o, report) = vmm_report(&["demo", "--pmu", "userspace"]);
    let s = out(&o);
    assert_eq!(status(&o), 0, "{s}\n{}", err(&o));
    let line = s
        .lines()
        .find(|l| l.starts_with("profile: "))
        .expect("profile line");
    let n: u64 = line
        .trim_start_matches("profile: ")
        .split_whitespace()
        .next()
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("no sample count in {line:?}"));
    assert!(n >= 50, "too few samples: {line}");
    for f in ["sieve", "lfsr_branchy", "checksum"] {
        assert!(
            s.lines()
                .any(|l| l.trim_start().starts_with(f) && l.contains('%')),
            "{f} missing:\n{s}"
        );
    }
    // Every sample was a PMI the VMM delivered.
    let report = report.expect("run report");
    let pmis: u64 = report["pmu"]
        .as_array()
        .expect("per-vCPU vPMU summaries")
        .iter()
        .filter_map(|p| p["stats"]["pmis"].as_u64())
        .sum();
    assert_eq!(pmis, n, "{report}");
    // The guest's PMU registers at the end of the run are in the report: the sampler's
    // counter 0 moved (it was reloaded with -period at every overflow and counted on), and
    // the demo switched its selector off before ending.
    let ctx = &report["pmu"][0]["context"];
    assert_ne!(ctx["gp_counters"][0].as_u64(), Some(0), "{ctx}");
    assert!(ctx["gp_counters"][0].as_u64().is_some(), "{ctx}");
    assert_eq!(ctx["gp_selectors"][0].as_u64(), Some(0), "{ctx}");
    // The clock model cannot honour USR/OS, and says so where users see it.
    if err(&o).contains("TSC clock model") {
        assert!(err(&o).contains("counts USR and OS alike"), "{}", err(&o));
        let p = out(&vmm(&["probe"]));
        assert!(p.contains("counts USR and OS alike"), "{p}");
    }
}

#[test]
fn in_kernel_modes_run_or_refuse_with_the_probe_reason() {
    need_kvm!("in_kernel_modes_run_or_refuse_with_the_probe_reason");
    for mode in ["emulated", "passthrough"] {
        match mode_available(mode) {
            Ok(()) => {
                assert_conformance_passes(&["--pmu", mode]);
            }
            Err(reason) => {
                let (st, _, e) = conformance(&["--pmu", mode]);
                assert_eq!(st, 2, "{mode} must be refused here: {e}");
                assert!(e.contains(&format!("--pmu {mode}:")), "{e}");
                assert!(
                    e.contains(reason.split(';').next().unwrap_or(&reason)),
                    "reason {reason:?} not in {e:?}"
                );
                skip(
                    &format!("conformance under --pmu {mode}"),
                    &format!("host cannot offer it: {reason}"),
                );
            }
        }
    }
}

#[test]
fn policy_compile_warnings_reach_the_operator() {
    need_model!("policy_compile_warnings_reach_the_operator", "intel");
    let policy = write_scratch(
        "fixed3.toml",
        b"action = \"allow\"\nfixed_counters = [0, 1, 2, 3]\n[[event]]\nname = \"cycles\"\n",
    );
    let (_, _, e) = conformance(&[
        "--pmu",
        "userspace",
        "--pmu-layout",
        "intel:version=2,gp=2,fixed=3",
        "--pmu-policy",
        &policy,
    ]);
    assert!(
        e.contains("warning: policy") && e.contains("fixed counter 3 listed but the guest has 3"),
        "{e}"
    );
}

#[test]
fn pmu_options_are_checked_even_when_off() {
    need_kvm!("pmu_options_are_checked_even_when_off");
    // A broken policy is an error before boot, whatever the mode (it used to be ignored
    // under the default `--pmu off`, and the user believed it applied).
    let broken = write_scratch(
        "broken-off.toml",
        b"action = \"allow\"\n[[event]]\nnme = \"cycles\"\n",
    );
    let (st, _, e) = conformance(&["--pmu-policy", &broken]);
    assert_eq!(st, 2, "{e}");
    assert!(e.contains("line 3"), "{e}");
    // Valid options that cannot take effect: the run goes on, each one warned about.
    let good = repo_file("resources/policies/default.toml");
    let (st, _, e) = conformance(&[
        "--pmu-policy",
        &good,
        "--pmu-layout",
        "intel:gp=2",
        "--cmdline",
        "expect=none",
    ]);
    assert_eq!(st, 1, "{e}");
    assert!(
        e.contains("--pmu-policy") && e.contains("has no effect under --pmu off"),
        "{e}"
    );
    assert!(e.contains("--pmu-layout intel:gp=2 has no effect"), "{e}");
    let (st, _, e) = conformance(&["--pmu-layout", "intel:bogus=1"]);
    assert_eq!(st, 2, "{e}");
}

#[test]
fn userspace_amd_denied_cycles_cannot_count_through_a_unit_mask_alias() {
    need_model!(
        "userspace_amd_denied_cycles_cannot_count_through_a_unit_mask_alias",
        "amd"
    );
    // PMCx076 defines no unit mask: 0x76/0x01 counts cycles on hardware and in the clock
    // model. A denylist naming cycles must deny it too.
    let (_, s, e, report) = conformance_with_policy(
        "deny-cycles-amd",
        "amd:gp=6,core-ext,perfmon-v2",
        b"action = \"deny\"\n[[event]]\nname = \"cycles\"\n",
        &["--cmdline", "denied=0x76:0x01"],
    );
    let programmed = programmed(&read_report(&report));
    assert!(
        has_verdict(&programmed, "0x76/0x01", "denied"),
        "{programmed:?}\n{s}\n{e}"
    );
    assert!(
        !has_verdict(&programmed, "0x76/0x01", "counting"),
        "{programmed:?}"
    );
    let advance = s
        .lines()
        .find(|l| l.contains("denied event: counter does not advance"))
        .unwrap_or_else(|| panic!("no denied-event check in:\n{s}"));
    assert!(!advance.to_ascii_lowercase().contains("fail"), "{advance}");
}

#[test]
fn userspace_intel_denied_cycles_denies_fixed_counter_1() {
    need_model!(
        "userspace_intel_denied_cycles_denies_fixed_counter_1",
        "intel"
    );
    let (_, s, e, report) = conformance_with_policy(
        "deny-cycles-intel",
        "intel:version=5,gp=8,fixed=4,gp-width=48,fixed-width=48,fw-writes",
        b"action = \"deny\"\nfixed_counters = []\n[[event]]\nname = \"cycles\"\n",
        &[],
    );
    assert!(
        e.contains("warning: policy") && e.contains("fixed counter 1 counts \"cycles\""),
        "{e}"
    );
    let programmed = programmed(&read_report(&report));
    let fixed1: Vec<_> = programmed
        .iter()
        .filter(|p| p["event"] == "fixed1")
        .collect();
    assert!(
        !fixed1.is_empty(),
        "the guest programs fixed1: {programmed:?}\n{s}"
    );
    assert!(
        fixed1.iter().all(|p| p["verdict"] == "denied"),
        "{programmed:?}"
    );
}
