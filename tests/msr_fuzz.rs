//! In-guest MSR fuzz: the conformance guest's `fuzz=N seed=S` mode issues N pseudo-random
//! RDMSR/WRMSR accesses (values biased toward 0, all-ones, single bits, width and sign
//! boundaries, reserved-bit patterns) to every PMU MSR range of both vendors and to some
//! neighbours, with short CPL3 runs in between so whatever got programmed counts. The VMM
//! must answer each one with a value or #GP (never a panic, never a VMM error), and the
//! guest must survive to print `fuzz: N accesses, G #GP, seed S` and exit with V=0.
//!
//! Each run is a few seconds here (guest CPL0 is emulated; an MSR exit costs ~10 us).

mod common;
use common::*;

const ACCESSES: u64 = 10_000;

macro_rules! need_kvm {
    ($name:expr) => {
        if let Some(why) = kvm_unusable() {
            skip($name, &why);
            return;
        }
    };
}

/// Runs the fuzz guest with `args` and checks the outcome; returns (stdout, run report).
fn fuzz(args: &[&str], seed: u64) -> (String, serde_json::Value) {
    let cmdline = format!("fuzz={ACCESSES} seed={seed}");
    let mut full = vec!["run", "--kernel", "builtin:conformance"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--cmdline", &cmdline]);
    let (o, report) = vmm_report(&full);
    let (st, s, e) = (status(&o), out(&o), err(&o));
    assert!(
        !s.contains("panicked") && !e.contains("panicked"),
        "VMM panicked with {args:?}:\n{s}\n{e}"
    );
    // V=0: the guest is alive at the end and saw only #GP faults.
    assert_eq!(st, 1, "status {st} with {args:?}:\n{s}\n{e}");
    let line = s
        .lines()
        .find(|l| l.starts_with("fuzz: "))
        .unwrap_or_else(|| panic!("no fuzz line with {args:?}:\n{s}\n{e}"));
    let prefix = format!("fuzz: {ACCESSES} accesses, ");
    let suffix = format!(" #GP, seed {seed}");
    let gp: u64 = line
        .strip_prefix(&prefix)
        .and_then(|r| r.strip_suffix(&suffix))
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("malformed fuzz line {line:?}"));
    if args.contains(&"off") {
        // No PMU: every PMU MSR of both vendors #GPs, and so do their neighbours.
        assert_eq!(gp, ACCESSES, "{gp} #GP of {ACCESSES}:\n{s}");
    } else {
        // Reserved-bit writes and absent MSRs always #GP here; not everything does.
        assert!(gp > 0 && gp < ACCESSES, "{gp} #GP of {ACCESSES}:\n{s}");
    }
    assert!(s.contains(" 0 other exceptions"), "{s}");
    (s, report.expect("run report"))
}

/// The userspace vPMU really served a share of the accesses (they reached the VMM).
fn assert_vpmu_served(report: &serde_json::Value) {
    let reads = report["pmu"][0]["stats"]["reads"]
        .as_u64()
        .unwrap_or_else(|| panic!("no userspace vPMU summary in the report: {report}"));
    assert!(reads > ACCESSES / 20, "{reads} reads: {report}");
}

#[test]
fn userspace_amd_layout_survives_msr_fuzz() {
    need_kvm!("userspace_amd_layout_survives_msr_fuzz");
    let (_, report) = fuzz(
        &[
            "--pmu",
            "userspace",
            "--pmu-layout",
            "amd:gp=6,core-ext,perfmon-v2",
        ],
        0x5eed_0a3d,
    );
    assert_vpmu_served(&report);
}

#[test]
fn userspace_amd_legacy_layout_survives_msr_fuzz() {
    need_kvm!("userspace_amd_legacy_layout_survives_msr_fuzz");
    let (_, report) = fuzz(&["--pmu", "userspace", "--pmu-layout", "amd-legacy"], 2);
    assert_vpmu_served(&report);
}

#[test]
fn userspace_intel_v5_layout_survives_msr_fuzz() {
    need_kvm!("userspace_intel_v5_layout_survives_msr_fuzz");
    let (_, report) = fuzz(
        &[
            "--pmu",
            "userspace",
            "--pmu-layout",
            "intel:version=5,gp=8,fixed=4,gp-width=48,fixed-width=48,fw-writes",
        ],
        0x1e7e1,
    );
    assert_vpmu_served(&report);
}

#[test]
fn userspace_intel_v2_layout_survives_msr_fuzz() {
    need_kvm!("userspace_intel_v2_layout_survives_msr_fuzz");
    let (_, report) = fuzz(
        &[
            "--pmu",
            "userspace",
            "--pmu-layout",
            "intel:version=2,gp=2,fixed=3,gp-width=40,fixed-width=40",
        ],
        7,
    );
    assert_vpmu_served(&report);
}

#[test]
fn pmu_off_survives_msr_fuzz() {
    need_kvm!("pmu_off_survives_msr_fuzz");
    fuzz(&["--pmu", "off"], 0xdead_beef);
}
