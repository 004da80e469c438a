//! In-guest MSR fuzz: the conformance guest's `fuzz=N seed=S` mode issues N pseudo-random
//! RDMSR/WRMSR accesses (values biased toward 0, all-ones, single bits, width and sign
//! boundaries, reserved-bit patterns) to every PMU MSR range of both vendors and to some
//! neighbours, with short CPL3 runs in between so whatever got programmed counts. The VMM
//! must answer each one with a value or #GP (never a panic, never a VMM error), and the
//! guest must survive to print `fuzz: N accesses, G #GP, seed S` and exit with V=0.
//!
//! Each run is a few seconds here (guest CPL0 is emulated; an MSR exit costs ~10 us).

#[macro_use]
mod common;
use common::*;

const ACCESSES: u64 = 10_000;

/// Runs the fuzz guest with `args` and checks the outcome; returns (stdout, run report).
fn fuzz(args: &[&str], seed: u64) -> (String, serde_json::Value) {
    fuzz_n(args, seed, ACCESSES)
}

/// [`fuzz`] with `accesses` accesses.
fn fuzz_n(args: &[&str], seed: u64, accesses: u64) -> (String, serde_json::Value) {
    let cmdline = format!("fuzz={accesses} seed={seed}");
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
    let prefix = format!("fuzz: {accesses} accesses, ");
    let suffix = format!(" #GP, seed {seed}");
    let gp: u64 = line
        .strip_prefix(&prefix)
        .and_then(|r| r.strip_suffix(&suffix))
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("malformed fuzz line {line:?}"));
    if args.contains(&"off") {
        // No PMU: every PMU MSR of both vendors #GPs, and so do their neighbours.
        assert_eq!(gp, accesses, "{gp} #GP of {accesses}:\n{s}");
    } else {
        // Reserved-bit writes and absent MSRs always #GP here; not everything does.
        assert!(gp > 0 && gp < accesses, "{gp} #GP of {accesses}:\n{s}");
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

/// A flooding guest cannot grow the audit log without bound: repeats are folded into
/// `repeated` summaries, first occurrences beyond the rate limit into `suppressed`
/// summaries, and the file never exceeds `--pmu-audit-max-bytes`.
#[test]
fn audit_log_stays_bounded_under_an_msr_flood() {
    need_kvm!("audit_log_stays_bounded_under_an_msr_flood");
    const CAP: u64 = 64 * 1024;
    let audit = scratch("flood-audit.jsonl");
    let audit_s = audit.to_string_lossy().into_owned();
    let cap = CAP.to_string();
    // 40,000 accesses give several thousand distinct records, far more than the rate
    // limit's burst (1000) plus 100 a second for as long as the run takes, even on a slow,
    // shared host.
    let (_, report) = fuzz_n(
        &[
            "--pmu",
            "userspace",
            "--pmu-layout",
            "intel:version=5,gp=8,fixed=4,gp-width=48,fixed-width=48,fw-writes",
            "--pmu-audit",
            &audit_s,
            "--pmu-audit-max-bytes",
            &cap,
        ],
        0xf100d,
        40_000,
    );
    assert_vpmu_served(&report);
    let size = std::fs::metadata(&audit).expect("audit written").len();
    assert!(size <= CAP, "audit log is {size} bytes, cap {CAP}");
    let text = std::fs::read_to_string(&audit).expect("audit log");
    let recs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let summary = |kind: &str| recs.iter().filter(|r| r["summary"] == kind).count();
    // Which bound bites first depends on how fast the host runs the guest (the rate limit
    // is per second): the 64 KiB cap is below the rate limit's burst, so at least one of
    // them always leaves its summary.
    assert!(
        summary("suppressed") + summary("truncated") > 0,
        "no suppressed/truncated summary:\n{text}"
    );
    assert!(
        recs.iter()
            .any(|r| r["verdict"] == "gp" && r.get("summary").is_none()),
        "the first #GP records are there"
    );
    // Deduplication: no (vcpu, msr, value, verdict, rule) appears twice as a plain record.
    let mut seen = std::collections::HashSet::new();
    for r in recs.iter().filter(|r| r.get("summary").is_none()) {
        let key = format!(
            "{} {} {} {} {}",
            r["vcpu"], r["msr"], r["value"], r["verdict"], r["rule"]
        );
        assert!(seen.insert(key.clone()), "duplicate record {key}");
    }
}
