//! The aarch64 backend under the arm64 nested rig (docs/NESTED.md, "arm64"): QEMU TCG
//! aarch64 with EL2 -> L1 arm64 Linux with KVM -> the cross-built aarch64 vpmu-vmm -> L2 arm64
//! Linux (resources/linux/build-image.sh --arch arm64) and the freestanding arm64 guests
//! (resources/guests-arm64).
//!
//! One L1 boot runs every case (tests/arm64/cases.sh, ~50 s on 2 cores); each test checks
//! its own case in that run. run.sh --disk-out brings L1's /l2/disk.img back to
//! target/linux_arm64-perf-out.img: the perf-out cases' perf.data archive, which the host's
//! perf report must read (issues 11/12). Before it: scripts/cross-aarch64.sh (the aarch64 vpmu-vmm),
//! resources/guests-arm64/build.sh and resources/nested-arm64/build-l1.sh (cached).
//!
//! Skips (printing "SKIPPED: <test>: <why>" and passing) when VPMU_SKIP_NESTED or
//! VPMU_SKIP_ARM64 is set (any value but "" or "0"; scripts/test.sh sets them for QUICK=1 and
//! when scripts/setup-arm64.sh could not install the packages), or when a prerequisite of the
//! rig is missing (qemu-system-aarch64, Debian's rustc with the aarch64 std, the cross
//! binutils): scripts/setup-arm64.sh installs them. A failing cross build or rig run FAILS.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// Whole-run limit for the one rig run (QEMU is killed after it).
const RUN_TIMEOUT_S: u32 = 900;
/// `run.sh --disk-out`: L1's /l2/disk.img after every case (the perf-out cases' tar archive).
const PERF_OUT_IMG: &str = "target/linux_arm64-perf-out.img";

#[path = "common/rig.rs"]
mod rig;
use rig::{say, skip_requested};

/// Prints `SKIPPED: <test>: <why>` to stdout and, uncaptured, to stderr.
fn skipped(test: &str, why: &str) {
    println!("SKIPPED: {test}: {why}");
    say(&format!("SKIPPED: {test}: {why}"));
}

/// One case of tests/arm64/cases.sh.
#[derive(Debug, Default, Clone)]
struct Case {
    /// Its name in cases.sh (for the messages).
    name: String,
    status: Option<i32>,
    /// Console lines between its begin and status markers.
    text: String,
    /// Host wall time from the begin marker to the status marker, s.
    wall_s: f64,
    /// Host wall time from the begin marker to "VPMU-GUEST: init reached", s.
    to_init_s: Option<f64>,
}

impl Case {
    fn has(&self, s: &str) -> bool {
        self.text.contains(s)
    }
    fn check(&self, cond: bool, what: &str) {
        assert!(
            cond,
            "arm64 case {}: {what}\n--- status {:?}; console:\n{}",
            self.name, self.status, self.text
        );
    }
    /// The PMUs L2's sysfs lists (cases.sh's `L2-PMUS` line), "?" when it is missing.
    fn l2_pmus(&self) -> &str {
        self.text
            .lines()
            .find_map(|l| l.trim().strip_prefix("L2-PMUS"))
            .unwrap_or("?")
    }
    /// Checks that L2 Linux reached /init seeing `cpus` CPUs.
    fn expect_linux(&self, cpus: u32) {
        self.check(
            self.has("VPMU-GUEST: init reached") && self.has(&format!(" cpus={cpus}\n")),
            &format!("L2 should reach /init seeing {cpus} CPU(s)"),
        );
    }
}

/// The rig run: cases by name, or why it could not run (skip) / failed (panic message).
enum Rig {
    Skip(String),
    Ran {
        cases: BTreeMap<String, Case>,
        log: String,
    },
    Failed(String),
}

static RIG: OnceLock<Rig> = OnceLock::new();

fn missing_prerequisites() -> Option<String> {
    let mut missing = Vec::new();
    let ok = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok("qemu-system-aarch64", "--version") {
        missing.push("qemu-system-aarch64 (qemu-system-arm)");
    }
    if !ok("aarch64-linux-gnu-gcc", "--version") {
        missing.push("aarch64-linux-gnu-gcc (gcc-aarch64-linux-gnu)");
    }
    if !ok("/usr/bin/rustc", "--version") {
        missing.push("/usr/bin/rustc (rustc-web, libstd-rust-web-dev:arm64)");
    }
    (!missing.is_empty()).then(|| {
        format!(
            "the arm64 rig needs {} (run scripts/setup-arm64.sh as root)",
            missing.join(", ")
        )
    })
}

fn step(what: &str, cmd: &mut Command) -> Result<(), String> {
    let t = Instant::now();
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    say(&format!(
        "linux_arm64: {what}: {} ({:.1} s)",
        out.status,
        t.elapsed().as_secs_f64()
    ));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn run_rig() -> Rig {
    if let Some(why) = skip_requested(&["VPMU_SKIP_NESTED", "VPMU_SKIP_ARM64"]) {
        return Rig::Skip(why);
    }
    if let Some(why) = missing_prerequisites() {
        return Rig::Skip(why);
    }
    let repo = Path::new(REPO);
    let steps = [
        (
            "scripts/cross-aarch64.sh",
            repo.join("scripts/cross-aarch64.sh"),
        ),
        (
            "resources/guests-arm64/build.sh",
            repo.join("resources/guests-arm64/build.sh"),
        ),
        (
            "resources/nested-arm64/build-l1.sh",
            repo.join("resources/nested-arm64/build-l1.sh"),
        ),
    ];
    for (what, path) in steps {
        if let Err(e) = step(what, &mut Command::new(path)) {
            return Rig::Failed(e);
        }
    }
    let vmm = repo.join("target-aarch64/aarch64-unknown-linux-gnu/release/vpmu-vmm");
    let guests = repo.join("resources/out/guests-arm64");
    // The disk the perf-out cases write perf.data to, as it comes back from L1.
    let disk_out = repo.join(PERF_OUT_IMG);
    let _ = std::fs::remove_file(&disk_out);
    let t0 = Instant::now();
    let mut child = match Command::new(repo.join("resources/nested-arm64/run.sh"))
        .arg("--vmm")
        .arg(&vmm)
        .args(["--timeout", &RUN_TIMEOUT_S.to_string()])
        .arg("--file")
        .arg(repo.join("tests/arm64/cases.sh"))
        .arg("--file")
        .arg(guests.join("exit.img"))
        .arg("--file")
        .arg(guests.join("poweroff.img"))
        .arg("--file")
        .arg(guests.join("fuzz.img"))
        .arg("--file")
        .arg(guests.join("pmu.img"))
        .args(["--l1-cmd", "sh /files/cases.sh"])
        .arg("--disk-out")
        .arg(&disk_out)
        .args(["--disk-size", "32"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Rig::Failed(format!("cannot run resources/nested-arm64/run.sh: {e}")),
    };
    // Time-stamp the console lines as they arrive (L1's clocks run on QEMU's icount).
    let mut lines: Vec<(f64, String)> = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            lines.push((t0.elapsed().as_secs_f64(), line));
        }
    }
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => return Rig::Failed(format!("run.sh: {e}")),
    };
    let whole = t0.elapsed().as_secs_f64();
    let log: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !log.contains("NESTED: kvm ready") {
        return Rig::Failed(format!(
            "L1 has no working /dev/kvm ('NESTED: kvm ready' missing); run.sh: {stderr}\n{log}"
        ));
    }
    let mut cases = BTreeMap::new();
    let mut cur: Option<(String, f64, Case)> = None;
    let mut l1_init = None;
    for (t, line) in &lines {
        let line = line.trim_end();
        if line.starts_with("NESTED: L1 init reached") {
            l1_init = Some(*t);
        }
        if let Some(rest) = line.strip_prefix("ARM64-CASE ") {
            let mut w = rest.split_whitespace();
            let (name, what) = (w.next().unwrap_or(""), w.next().unwrap_or(""));
            if what == "begin" {
                cur = Some((name.to_string(), *t, Case::default()));
                continue;
            }
            if what == "status" {
                if let Some((n, t_begin, mut c)) = cur.take() {
                    c.status = w.next().and_then(|s| s.parse().ok());
                    c.wall_s = t - t_begin;
                    cases.insert(n, c);
                }
                continue;
            }
        }
        if let Some((_, t_begin, c)) = cur.as_mut() {
            if c.to_init_s.is_none() && line.starts_with("VPMU-GUEST: init reached") {
                c.to_init_s = Some(*t - *t_begin);
            }
            c.text.push_str(line);
            c.text.push('\n');
        }
    }
    say(&format!(
        "ARM64-TIMING: TCG rig: L1 boot to /init {} s, whole run {whole:.1} s",
        l1_init.map_or("?".into(), |t| format!("{t:.1}"))
    ));
    for (n, c) in &cases {
        // --stats: "vpmu-vmm: ... | start to first guest entry X ms | ..." (L1 clock, which
        // runs on QEMU's -icount: guest time, not host wall time).
        let first_entry = c.text.lines().find_map(|l| {
            l.split("start to first guest entry ")
                .nth(1)?
                .split(" ms")
                .next()
                .map(str::to_string)
        });
        say(&format!(
            "ARM64-TIMING: case {n}: status {:?}, wall {:.2} s{}{}",
            c.status,
            c.wall_s,
            c.to_init_s
                .map_or(String::new(), |t| format!(", L2 to /init {t:.2} s")),
            first_entry.map_or(String::new(), |t| format!(
                ", vpmu-vmm start to first guest entry {t} ms (L1 time)"
            ))
        ));
    }
    // The vPMU evidence, for the record (docs/BENCHMARKS.md); the whole console is kept in
    // target/linux_arm64-console.log.
    let _ = std::fs::write(repo.join("target/linux_arm64-console.log"), &log);
    for (n, c) in &cases {
        for l in c.text.lines().map(str::trim) {
            let keep = ["PMU-", "COUNT-", "BENCH-", "L2-PMUS", "ok ", "not ok"]
                .iter()
                .any(|p| l.starts_with(p))
                || l.contains("pmu audit")
                || l.contains("pmu emulated")
                || l.contains("<not supported>")
                || (l.contains('%') && l.contains("vpmu_work"))
                || l.ends_with(" cycles")
                || l.ends_with(" instructions")
                || l.contains("cycles  ")
                || l.contains("instructions  ")
                || l.contains("perf record: Captured");
            if keep {
                say(&format!("ARM64-EVIDENCE: {n}: {l}"));
            }
        }
    }
    Rig::Ran { cases, log }
}

/// The named case, or None when the rig is skipped (reason printed).
fn case(test: &str, name: &str) -> Option<Case> {
    match RIG.get_or_init(run_rig) {
        Rig::Skip(why) => {
            skipped(test, why);
            None
        }
        Rig::Failed(e) => panic!("{test}: the arm64 rig failed: {e}"),
        Rig::Ran { cases, log } => match cases.get(name) {
            Some(c) => Some(Case {
                name: name.to_string(),
                ..c.clone()
            }),
            None => panic!("{test}: case {name} did not finish; console log:\n{log}"),
        },
    }
}

#[test]
fn arm64_linux_boots_to_init_with_1_vcpu_and_powers_off() {
    let Some(c) = case(
        "arm64_linux_boots_to_init_with_1_vcpu_and_powers_off",
        "boot1",
    ) else {
        return;
    };
    c.expect_linux(1);
    c.check(c.has("L2-CPUS-ONLINE 0\n"), "L2 should have CPU 0 online");
    c.check(c.has("reboot: Power down"), "L2 should power off");
    c.check(c.status == Some(0), "PSCI SYSTEM_OFF gives status 0");
}

#[test]
fn arm64_linux_boots_with_2_vcpus() {
    let Some(c) = case("arm64_linux_boots_with_2_vcpus", "boot2") else {
        return;
    };
    c.expect_linux(2);
    c.check(
        c.has("L2-CPUS-ONLINE 0-1\n"),
        "L2 should bring up the second CPU (PSCI CPU_ON)",
    );
    c.check(c.status == Some(0), "status 0 after poweroff");
}

#[test]
fn arm64_linux_reboot_gives_status_0() {
    let Some(c) = case("arm64_linux_reboot_gives_status_0", "reboot") else {
        return;
    };
    c.expect_linux(1);
    c.check(c.status == Some(0), "PSCI SYSTEM_RESET gives status 0");
    c.check(!c.has("Power down"), "a reboot, not a poweroff");
}

#[test]
fn arm64_linux_panic_gives_nonzero_status() {
    let Some(c) = case("arm64_linux_panic_gives_nonzero_status", "panic") else {
        return;
    };
    c.expect_linux(1);
    c.check(c.has("Kernel panic"), "L2 should panic");
    c.check(
        c.status == Some(8),
        "a panic (reboot=panic_warm: PSCI SYSTEM_RESET2) gives status 8",
    );
}

#[test]
fn arm64_linux_virtio_blk_disk_round_trip() {
    let Some(c) = case("arm64_linux_virtio_blk_disk_round_trip", "disk") else {
        return;
    };
    c.expect_linux(1);
    c.check(
        c.has("L2-READ vpmu-arm64-disk-ok"),
        "L2 should read back what it wrote to /dev/vda",
    );
    c.check(c.status == Some(0), "status 0");
    // L1's view of the image, printed by cases.sh between two cases (so in no case's text).
    if let Some(Rig::Ran { log, .. }) = RIG.get() {
        assert!(
            log.contains("L1-DISK vpmu-arm64-disk-ok"),
            "L1 should find in the disk image what L2 wrote; console:\n{log}"
        );
    }
}

#[test]
fn arm64_freestanding_guest_exits_with_its_code() {
    for name in ["exit-guest", "exit-guest-2cpus"] {
        let Some(c) = case("arm64_freestanding_guest_exits_with_its_code", name) else {
            return;
        };
        c.check(
            c.has("VPMU-ARM64-GUEST: x0 points at a device tree"),
            "the guest should find the device tree in X0",
        );
        c.check(c.status == Some((42 << 1) | 1), "debug-exit 42 gives 85");
    }
    let Some(c) = case(
        "arm64_freestanding_guest_exits_with_its_code",
        "poweroff-guest",
    ) else {
        return;
    };
    c.check(c.status == Some(0), "PSCI SYSTEM_OFF gives 0");
}

#[test]
fn arm64_guest_mmio_fuzz_never_breaks_the_vmm() {
    let Some(c) = case("arm64_guest_mmio_fuzz_never_breaks_the_vmm", "fuzz-guest") else {
        return;
    };
    c.check(c.status == Some(85), "the guest survives and exits with 42");
    c.check(!c.has("panicked"), "no VMM panic");
    // --stats: "vcpu0: exits N (mmio M, kicks K)": the 10000 accesses all exited to the VMM.
    let mmio = c.text.lines().find_map(|l| {
        l.split("(mmio ")
            .nth(1)?
            .split(',')
            .next()?
            .parse::<u64>()
            .ok()
    });
    c.check(
        mmio.is_some_and(|m| m >= 10_000),
        "vCPU 0 should have made at least 10000 MMIO exits",
    );
}

#[test]
fn arm64_bad_input_gives_one_line_and_status_2() {
    for (name, want) in [
        ("bad-missing", "cannot read kernel"),
        ("bad-garbage", "not an arm64 Image"),
        ("bad-truncated", "truncated"),
        ("bad-toolarge", "does not fit in guest memory"),
        ("bad-memory", "--memory"),
        ("bad-cpus", "--cpus"),
        (
            "bad-pmu",
            "--pmu passthrough: mainline arm64 KVM has no PMU passthrough",
        ),
        (
            "bad-pmu-userspace",
            "--pmu userspace: arm64 KVM emulates PMU system registers",
        ),
        ("bad-policy", "line 3: unknown arm64 event name \"bogus\""),
    ] {
        let Some(c) = case("arm64_bad_input_gives_one_line_and_status_2", name) else {
            return;
        };
        c.check(c.status == Some(2), "bad input gives status 2");
        let lines: Vec<&str> = c.text.lines().filter(|l| !l.trim().is_empty()).collect();
        c.check(
            lines.len() == 1 && lines[0].starts_with("vpmu-vmm: ") && lines[0].contains(want),
            &format!("exactly one 'vpmu-vmm: ...{want}...' line"),
        );
        c.check(!c.has("panicked"), "no panic");
    }
}

#[test]
fn arm64_probe_reports_the_pmu_modes() {
    let Some(c) = case("arm64_probe_reports_the_pmu_modes", "probe") else {
        return;
    };
    c.check(c.status == Some(0), "probe succeeds");
    c.check(c.has("--pmu off: available"), "off is available");
    c.check(
        c.has("host PMU: armv8_pmuv3") && c.has("KVM_CAP_ARM_PMU_V3 yes"),
        "L1 has QEMU's PMUv3 and KVM_CAP_ARM_PMU_V3",
    );
    c.check(c.has("--pmu emulated: available"), "emulated is available");
    c.check(
        c.has("--pmu passthrough: unavailable: mainline arm64 KVM has no PMU passthrough")
            && c.has("--pmu userspace: unavailable: arm64 KVM emulates PMU system registers"),
        "passthrough and userspace are refused with the reason",
    );
}

/// `NAME 0x<16 hex digits>` lines of the conformance guest (resources/guests-arm64/pmu.S).
fn val(c: &Case, name: &str) -> Option<u64> {
    c.text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(name)?.strip_prefix(" 0x")?;
        u64::from_str_radix(rest.trim(), 16).ok()
    })
}

/// The loop the guest counts is 100000 x (subs, b.ne) = 200000 instructions.
const GUEST_LOOP_INSNS: u64 = 200_000;

#[test]
fn arm64_pmu_off_guest_pmu_registers_undef() {
    let Some(c) = case("arm64_pmu_off_guest_pmu_registers_undef", "pmu-guest-off") else {
        return;
    };
    c.check(c.status == Some(85), "the guest passes (85)");
    c.check(
        val(&c, "PMU-PMUVER") == Some(0),
        "ID_AA64DFR0_EL1.PMUVer is 0 without the PMU",
    );
    c.check(
        c.has("ok 1 - PMU registers UNDEF without a PMU (5/5)"),
        "every PMU register access UNDEFs",
    );
}

#[test]
fn arm64_pmu_emulated_conformance() {
    let Some(c) = case("arm64_pmu_emulated_conformance", "pmu-guest") else {
        return;
    };
    c.check(c.status == Some(85), "the guest passes (85)");
    c.check(!c.has("not ok"), "no unexpected exception");
    let pmcr = val(&c, "PMU-PMCR").unwrap_or(0);
    let n = (pmcr >> 11) & 0x1f;
    c.check((1..=31).contains(&n), "PMCR_EL0.N is 1..=31");
    // Default policy: the named events; QEMU implements 0x08 and 0x11 (and SW_INCR, which
    // the default allowlist does not list, so KVM masks it out of PMCEID0).
    let pmceid0 = val(&c, "PMU-PMCEID0").unwrap_or(0);
    c.check(
        pmceid0 & (1 << 0x08) != 0 && pmceid0 & (1 << 0x11) != 0,
        "PMCEID0 advertises 0x08 and 0x11",
    );
    c.check(pmceid0 & 1 == 0, "SW_INCR is masked by the allowlist");
    for what in ["COUNT-INST", "COUNT-CYCLES", "COUNT-CCNT"] {
        let v = val(&c, what).unwrap_or(0);
        c.check(
            (GUEST_LOOP_INSNS..GUEST_LOOP_INSNS * 3).contains(&v),
            &format!("{what} counts the 200000-instruction loop (got {v})"),
        );
    }
    c.check(
        val(&c, "PMU-IRQ") == Some(23),
        "the overflow interrupt arrives as INTID 23 through the GIC",
    );
    c.check(
        c.has("pmu emulated (arm64 KVM PMUv3) | policy built-in arm64 policy"),
        "--stats names the mode and the policy",
    );
    c.check(
        c.has("pmu audit (sampled at exit): c0 instructions (0x08) allowed"),
        "the sampled audit reports counter 0",
    );
}

#[test]
fn arm64_pmu_policy_denies_instructions() {
    let Some(c) = case(
        "arm64_pmu_policy_denies_instructions",
        "pmu-guest-deny-inst",
    ) else {
        return;
    };
    c.check(c.status == Some(85), "the guest passes (85)");
    let pmceid0 = val(&c, "PMU-PMCEID0").unwrap_or(0);
    c.check(
        pmceid0 & (1 << 0x08) == 0 && pmceid0 & (1 << 0x11) != 0,
        "0x08 vanishes from PMCEID0, 0x11 stays",
    );
    c.check(val(&c, "COUNT-INST") == Some(0), "denied 0x08 reads 0");
    for what in ["COUNT-CYCLES", "COUNT-CCNT"] {
        c.check(
            val(&c, what).unwrap_or(0) >= GUEST_LOOP_INSNS,
            &format!("{what} still counts"),
        );
    }
    c.check(
        c.has("1 range(s): deny 0x8..=0x8; cycle counter counts"),
        "one DENY range",
    );
    c.check(
        c.has("c0 instructions (0x08) DENIED"),
        "the sampled audit shows the denied programming",
    );
    if let Some(Rig::Ran { log, .. }) = RIG.get() {
        let audit = log
            .lines()
            .find_map(|l| l.trim().strip_prefix("L1-AUDIT "))
            .unwrap_or("");
        let nums: Vec<u64> = audit
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        assert!(
            nums.len() == 2 && nums[0] >= 3 && nums[1] >= 2,
            "--pmu-audit should hold sampled lines, >= 2 denied (c0, c2): {audit:?}"
        );
    }
}

#[test]
fn arm64_pmu_denied_cycle_counter_reads_0() {
    let Some(c) = case(
        "arm64_pmu_denied_cycle_counter_reads_0",
        "pmu-guest-deny-cycles",
    ) else {
        return;
    };
    c.check(c.status == Some(85), "the guest passes (85)");
    let pmceid0 = val(&c, "PMU-PMCEID0").unwrap_or(0);
    c.check(
        pmceid0 & (1 << 0x11) == 0 && pmceid0 & (1 << 0x08) != 0,
        "0x11 vanishes from PMCEID0, 0x08 stays",
    );
    c.check(val(&c, "COUNT-CYCLES") == Some(0), "0x11 reads 0");
    c.check(
        val(&c, "COUNT-CCNT") == Some(0),
        "the cycle counter (PMCCNTR_EL0) follows 0x11 and reads 0",
    );
    c.check(
        val(&c, "COUNT-INST").unwrap_or(0) >= GUEST_LOOP_INSNS,
        "0x08 counts",
    );
    c.check(
        c.has("cycle counter denied (follows 0x11)"),
        "--stats says the cycle counter is denied",
    );
}

/// perf stat's count for `event` (the first number on its line; None for `<not supported>`).
fn perf_count(c: &Case, event: &str) -> Option<u64> {
    c.text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        let n = w.next()?;
        if w.next()? != event {
            return None;
        }
        n.replace(',', "").parse().ok()
    })
}

#[test]
fn arm64_linux_perf_counts_and_samples_under_emulated() {
    let Some(c) = case("arm64_linux_perf_counts_and_samples_under_emulated", "perf") else {
        return;
    };
    c.expect_linux(1);
    c.check(c.status == Some(0), "status 0");
    let pmus = c.l2_pmus();
    c.check(
        pmus.contains("armv8"),
        &format!("L2's kernel finds the PMU from the device tree's pmu node (got {pmus:?})"),
    );
    // vpmu-work 0.2 s of guest CPU time: ~2e8 of each under -icount shift=0; thresholds.
    for ev in ["cycles", "instructions"] {
        let n = perf_count(&c, ev).unwrap_or(0);
        c.check(n >= 10_000_000, &format!("perf stat counts {ev} (got {n})"));
    }
    c.check(
        c.has("perf record: Captured and wrote"),
        "perf record -e cycles writes samples (overflow interrupts)",
    );
    c.check(
        c.has("vpmu_work_"),
        "perf report attributes samples to the workload's functions",
    );
}

#[test]
fn arm64_linux_perf_instructions_denied_by_policy() {
    let Some(c) = case(
        "arm64_linux_perf_instructions_denied_by_policy",
        "perf-deny-inst",
    ) else {
        return;
    };
    c.expect_linux(1);
    let cycles = perf_count(&c, "cycles").unwrap_or(0);
    c.check(
        cycles >= 10_000_000,
        &format!("cycles still count (got {cycles})"),
    );
    let inst_line_unsupported = c
        .text
        .lines()
        .any(|l| l.contains("<not supported>") && l.contains("instructions"));
    c.check(
        inst_line_unsupported || perf_count(&c, "instructions") == Some(0),
        "instructions is <not supported> or 0",
    );
}

#[test]
fn arm64_linux_pmu_off_has_no_pmu() {
    let Some(c) = case("arm64_linux_pmu_off_has_no_pmu", "perf-off") else {
        return;
    };
    c.expect_linux(1);
    let pmus = c.l2_pmus();
    c.check(
        !pmus.contains("armv8"),
        &format!("no armv8 PMU in L2's sysfs (got {pmus:?})"),
    );
    c.check(
        c.has("<not supported>") || c.has("not supported") || perf_count(&c, "cycles").is_none(),
        "perf stat -e cycles is not supported",
    );
}

/// What is missing on the host to read the guest's perf.data (None: perf and tar are there).
fn host_perf_missing() -> Option<String> {
    let mut missing = Vec::new();
    for (tool, pkg) in [("perf", "linux-perf"), ("tar", "tar")] {
        if !matches!(Command::new(tool).arg("--version").output(), Ok(o) if o.status.success()) {
            missing.push(format!("{tool} (Debian package {pkg})"));
        }
    }
    (!missing.is_empty()).then(|| format!("the host lacks {}", missing.join(", ")))
}

/// Issues 11/12: perf.data recorded in the arm64 L2 guest (software `cpu-clock` with no vPMU;
/// hardware `cycles` under `--pmu emulated`) is written as a tar archive straight onto the
/// virtio-blk disk, comes back to the host (`run.sh --disk-out`: gzip+base64 on L1's
/// console), and the host's own (x86) `perf report` reads it and names the workload's
/// functions, with the guest's binary (`--symfs`) and /proc/kallsyms (`--kallsyms`).
#[test]
fn arm64_linux_perf_data_comes_out_through_virtio_blk() {
    const TEST: &str = "arm64_linux_perf_data_comes_out_through_virtio_blk";
    let Some(clock) = case(TEST, "perf-out-clock") else {
        return;
    };
    let Some(cycles) = case(TEST, "perf-out-cycles") else {
        return;
    };
    for c in [&clock, &cycles] {
        c.expect_linux(1);
        c.check(c.status == Some(0), "status 0");
        c.check(
            c.has("perf record: Captured and wrote"),
            "perf record should write samples",
        );
        c.check(
            c.has("VPMU-GUEST: disks vda"),
            "L2 should find the virtio-blk disk",
        );
        c.check(
            c.text
                .lines()
                .any(|l| l.starts_with("disk0: 65536 sectors | ") && !l.contains("writes 0 ")),
            "vpmu-vmm --stats should show writes to disk0",
        );
    }
    clock.check(
        clock.has("L2-TAR-DONE clock"),
        "tar onto /dev/vda should succeed",
    );
    clock.check(
        clock.has("vpmu-vmm: pmu off"),
        "cpu-clock is recorded with no vPMU",
    );
    cycles.check(
        cycles.has("L2-TAR-READ bin clock.data clock.kallsyms"),
        "the second VM should read the first VM's archive back from the disk",
    );
    cycles.check(
        cycles.has("L2-TAR-DONE cycles"),
        "tar onto /dev/vda should succeed",
    );
    cycles.check(
        cycles.has("pmu emulated"),
        "cycles is recorded under --pmu emulated",
    );
    if let Some(why) = host_perf_missing() {
        skipped(TEST, &format!("host side (perf report): {why}"));
        return;
    }
    let repo = Path::new(REPO);
    let img = repo.join(PERF_OUT_IMG);
    assert!(
        img.is_file(),
        "{TEST}: no disk image came back from L1 ({}); see run.sh's stderr above",
        img.display()
    );
    let x = repo.join("target/linux_arm64-perf-out");
    let _ = std::fs::remove_dir_all(&x);
    std::fs::create_dir_all(&x).expect("target/linux_arm64-perf-out");
    let tar = Command::new("tar")
        .arg("xf")
        .arg(&img)
        .arg("-C")
        .arg(&x)
        .output()
        .expect("tar");
    assert!(
        tar.status.success(),
        "{TEST}: tar xf {}: {}",
        img.display(),
        String::from_utf8_lossy(&tar.stderr)
    );
    for (event, data, kallsyms) in [
        ("cpu-clock", "clock.data", "clock.kallsyms"),
        ("cycles", "cycles.data", "cycles.kallsyms"),
    ] {
        for f in [data, kallsyms, "bin/vpmu-work"] {
            assert!(x.join(f).is_file(), "{TEST}: {f} missing from the archive");
        }
        let report = Command::new("perf")
            .arg("report")
            .arg("-i")
            .arg(x.join(data))
            .arg("--symfs")
            .arg(&x)
            .arg("--kallsyms")
            .arg(x.join(kallsyms))
            .args(["--stdio", "--sort", "symbol"])
            .output()
            .expect("perf report");
        let text = String::from_utf8_lossy(&report.stdout);
        let stderr = String::from_utf8_lossy(&report.stderr);
        assert!(
            report.status.success(),
            "{TEST}: host perf report of {data} failed ({}):\n{stderr}",
            report.status
        );
        for l in text.lines().filter(|l| l.contains('%')).take(6) {
            say(&format!(
                "ARM64-EVIDENCE: host perf report {event}: {}",
                l.trim()
            ));
        }
        for sym in [
            "vpmu_work_integer_mix",
            "vpmu_work_branchy",
            "vpmu_work_memory_walk",
        ] {
            assert!(
                text.contains(sym),
                "{TEST}: host perf report of {data} ({event}) should show {sym}; it printed:\n{text}\n{stderr}"
            );
        }
    }
}
