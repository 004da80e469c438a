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
        .arg(guests.join("spin.img"))
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
            let keep = [
                "PMU-", "COUNT-", "ADV-", "BENCH-", "L2-PMUS", "ok ", "not ok",
            ]
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

/// A guest that prints its two lines and then spins: after `--watchdog 2` the VMM says
/// once that the console has been silent, with vCPU 0's PC (the spin loop, in the
/// guest's first page); SIGTERM then ends the run with 12.
#[test]
fn arm64_watchdog_names_a_silent_spinning_guest() {
    let Some(c) = case(
        "arm64_watchdog_names_a_silent_spinning_guest",
        "watchdog-spin",
    ) else {
        return;
    };
    c.check(
        c.status == Some(12),
        "SIGTERM ends the spinning guest with 12",
    );
    c.check(
        c.has("VPMU-ARM64-GUEST: x0 points at a device tree"),
        "the guest printed before it went silent",
    );
    let line = c
        .text
        .lines()
        .find(|l| l.contains("watchdog:"))
        .unwrap_or("");
    c.check(
        line.contains("no console output for 2 s and the guest has not ended")
            && line.contains("vCPU 0: ")
            && line.contains("PC 0x800000"),
        &format!("one watchdog line with vCPU 0's PC in the guest's first page, got {line:?}"),
    );
    c.check(
        c.text.matches("watchdog:").count() == 1,
        "the watchdog speaks once",
    );
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

/// "not ok" lines of the conformance guest that count: all but its "# TODO" lines.
fn failures(c: &Case) -> Vec<&str> {
    c.text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("not ok") && !l.contains(" # TODO "))
        .collect()
}

/// One counted loop (what pmu.S `in_range` accepts): cycles and instructions of the
/// 200000-instruction loop under QEMU's `-icount shift=0`.
fn one_loop(v: Option<u64>) -> bool {
    v.is_some_and(|v| (GUEST_LOOP_INSNS..GUEST_LOOP_INSNS * 3).contains(&v))
}

/// The guest's TAP line for `desc`: Some(true) for "ok N - desc", Some(false) for
/// "not ok N - desc", None when it printed neither.
fn tap(c: &Case, desc: &str) -> Option<bool> {
    c.text.lines().find_map(|l| {
        let (head, d) = l.trim().split_once(" - ")?;
        if d != desc {
            return None;
        }
        let w: Vec<&str> = head.split_whitespace().collect();
        match w.as_slice() {
            ["ok", n] if n.parse::<u32>().is_ok() => Some(true),
            ["not", "ok", n] if n.parse::<u32>().is_ok() => Some(false),
            _ => None,
        }
    })
}

fn expect_tap(c: &Case, desc: &str) {
    c.check(
        tap(c, desc) == Some(true),
        &format!("the guest should print 'ok N - {desc}'"),
    );
}

// The hostile-guest checks of pmu.S ("adv", issue #12), by their TAP descriptions.
const TAP_XEV_DENIED: &str =
    "PMSELR_EL0=3 + PMXEVTYPER_EL0 = the denied event: reads back, counter 3 stays 0";
const TAP_XEV_ALLOWED: &str = "PMSELR_EL0=3 + PMXEVTYPER_EL0 = the allowed event: counter 3 counts";
const TAP_XEV_SWITCH: &str =
    "a running counter switched to the denied event through PMXEVTYPER_EL0 stops counting";
const TAP_CHAIN_DENIED: &str =
    "chain: even counter = the denied event, odd = CHAIN: neither half counts";
const TAP_CHAIN_ALLOWED: &str =
    "chain: even counter = the allowed event, odd = CHAIN: the carry reaches the odd counter";
const TAP_RESET_ZERO: &str = "PMCR_EL0.P|C zeroes the allowed, the denied (preset 0x5a5, never counted) and the cycle counter";
const TAP_RESET_AGAIN: &str =
    "after PMCR_EL0.P|C the allowed counter counts again from 0, the denied one stays 0";
const TAP_CCFILTR_ALLOWED: &str =
    "PMCCFILTR_EL0 = 0, 0x08, NSH: PMCCNTR_EL0 counts (cycle counter allowed)";
const TAP_CCFILTR_DENIED: &str =
    "PMCCFILTR_EL0 = 0, 0x08, NSH: PMCCNTR_EL0 stays 0 (cycle counter denied)";
const TAP_XEV31_ALLOWED: &str =
    "PMSELR_EL0=31 + PMXEVTYPER_EL0 = 0x08, 0x11: PMCCNTR_EL0 counts (cycle counter allowed)";
const TAP_XEV31_DENIED: &str =
    "PMSELR_EL0=31 + PMXEVTYPER_EL0 = 0x08, 0x11: PMCCNTR_EL0 stays 0 (cycle counter denied)";
const TAP_SWINC: &str =
    "SW_INCR: 5 PMSWINC_EL0 writes count 5 whatever the filter (kvm_pmu_software_increment)";
const TAP_EL0_RUNS: &str =
    "EL0 code runs with the MMU off and svc #0 returns to EL1 (ESR_EL1.EC 0x15)";
const TAP_EL0_PMCR_EN: &str =
    "EL0 reads PMCR_EL0 with PMUSERENR_EL0.EN: no trap, the value EL1 reads";
const TAP_EL0_CNT_EN: &str =
    "EL0 reads PMCCNTR_EL0 and PMEVCNTR0_EL0 with PMUSERENR_EL0.EN: no trap";
const TAP_EL0_PMCR_OFF: &str =
    "EL0 PMCR_EL0 read with PMUSERENR_EL0 = 0 enters EL1 as KVM's UNDEF (ESR_EL1.EC 0x00)";
const TAP_EL0_PMCR_CR: &str =
    "EL0 PMCR_EL0 read with PMUSERENR_EL0.CR only is KVM's UNDEF (EN needed)";
/// "# TODO" lines: checks of KVM's EL0 counter-read path that QEMU TCG (the rig's L0)
/// keeps from reaching KVM: QEMU 7.2 answers an EL0 read of PMCCNTR_EL0 / PMEVCNTR<n>_EL0
/// itself when the hardware PMUSERENR_EL0.CR / .ER is set (target/arm/helper.c
/// `pmreg_access_ccntr`, `pmreg_access_xevcntr`) without checking MDCR_EL2.TPM, and KVM
/// sets the hardware PMUSERENR_EL0 to all ones while a vCPU is loaded.
const TAP_EL0_CCNT_VIEW_TODO: &str = "EL0 PMCCNTR_EL0 reads lie between EL1's reads around them (KVM's counter) # TODO rig: QEMU answers EL0 counter reads itself";
const TAP_EL0_CCNT_OFF_TODO: &str = "EL0 PMCCNTR_EL0 reads with PMUSERENR_EL0 = 0 trap to EL1 # TODO rig: QEMU answers EL0 counter reads itself";

/// EL0 (pmu.S check 6): what KVM emulates (PMUSERENR_EL0 against the PMCR_EL0 read,
/// sys_regs.c `check_pmu_access_disabled` -> `kvm_inject_undefined`: ESR_EL1.EC 0x00) is
/// asserted; the counter reads that QEMU answers itself are printed ("# TODO" lines).
fn check_el0(c: &Case) {
    for t in [
        TAP_EL0_RUNS,
        TAP_EL0_PMCR_EN,
        TAP_EL0_CNT_EN,
        TAP_EL0_PMCR_OFF,
        TAP_EL0_PMCR_CR,
    ] {
        expect_tap(c, t);
    }
    c.check(
        val(c, "ADV-EL0-EN-TRAPMASK") == Some(0)
            && val(c, "ADV-EL0-EN-PMCR").is_some()
            && val(c, "ADV-EL0-EN-PMCR") == val(c, "ADV-EL0-EL1-PMCR"),
        "with PMUSERENR_EL0.EN nothing traps and EL0 reads EL1's PMCR_EL0",
    );
    for w in ["ADV-EL0-OFF-PMCR-ESR", "ADV-EL0-CR-PMCR-ESR"] {
        c.check(
            val(c, w).is_some_and(|e| e != 0 && e >> 26 == 0),
            &format!("{w}: KVM's UNDEF, ESR_EL1.EC 0x00"),
        );
    }
    for t in [TAP_EL0_CCNT_VIEW_TODO, TAP_EL0_CCNT_OFF_TODO] {
        let got = tap(c, t);
        c.check(got.is_some(), &format!("the guest should report '{t}'"));
        say(&format!(
            "ARM64-EVIDENCE: {}: EL0 counter read (rig): {} - {t}",
            c.name,
            if got == Some(true) { "ok" } else { "not ok" }
        ));
    }
}

/// The hostile-guest checks under a policy that denies `denied` (0x08 or 0x11) and allows
/// `allowed`: every register path to a counter, each with its allowed twin so that the
/// denial is not just a counter that never counts. The guest judges (TAP lines) and the
/// values it judged are checked here again. KVM 6.1 sources: arch/arm64/kvm/pmu-emul.c and
/// sys_regs.c (the functions named in pmu.S and docs/PMU-MODEL.md).
fn check_hostile_guest(c: &Case, denied: u64, allowed: u64) {
    let cycles_allowed = allowed == 0x11;
    let v = |what: &str| val(c, what);
    c.check(failures(c).is_empty(), "no TAP check fails");
    c.check(v("ADV-TAP-FAILED") == Some(0), "ADV-TAP-FAILED 0");
    c.check(
        v("ADV-D-EVENT") == Some(denied) && v("ADV-A-EVENT") == Some(allowed),
        &format!("the guest finds 0x{denied:x} denied and 0x{allowed:x} allowed in PMCEID0"),
    );
    // 1. PMSELR_EL0 + PMXEVTYPER_EL0 / PMXEVCNTR_EL0.
    for t in [TAP_XEV_DENIED, TAP_XEV_ALLOWED, TAP_XEV_SWITCH] {
        expect_tap(c, t);
    }
    c.check(
        v("ADV-XEV-DENIED-TYPER") == Some(denied) && v("ADV-XEV-DENIED") == Some(0),
        "PMXEVTYPER_EL0 keeps the denied event, PMXEVCNTR_EL0 reads 0",
    );
    c.check(
        one_loop(v("ADV-XEV-ALLOWED")),
        "the same path with the allowed event counts the loop",
    );
    c.check(
        v("ADV-XEV-SWITCHED-DELTA").is_some_and(|d| d < GUEST_LOOP_INSNS / 4),
        "a running counter reprogrammed to the denied event stops",
    );
    // 2. Chained counters.
    for t in [TAP_CHAIN_DENIED, TAP_CHAIN_ALLOWED] {
        expect_tap(c, t);
    }
    c.check(
        v("ADV-CHAIN-DENIED-LO") == Some(0xffff_0000) && v("ADV-CHAIN-DENIED-HI") == Some(0),
        "a denied even event with CHAIN on the odd counter counts in neither half",
    );
    c.check(
        v("ADV-CHAIN-ALLOWED-HI") == Some(1),
        "an allowed even event carries into the CHAIN counter",
    );
    // 3. PMCR_EL0.P / .C.
    for t in [TAP_RESET_ZERO, TAP_RESET_AGAIN] {
        expect_tap(c, t);
    }
    c.check(
        one_loop(v("ADV-RESET-BEFORE-ALLOWED"))
            && v("ADV-RESET-BEFORE-DENIED") == Some(0x5a5)
            && v("ADV-RESET-ZERO-ALLOWED") == Some(0)
            && v("ADV-RESET-ZERO-DENIED") == Some(0)
            && v("ADV-RESET-ZERO-CCNT") == Some(0)
            && one_loop(v("ADV-RESET-AFTER-ALLOWED"))
            && v("ADV-RESET-AFTER-DENIED") == Some(0),
        "PMCR_EL0.P|C: allowed counts, is zeroed, counts again; denied never counts",
    );
    // 4. The cycle counter under every PMCCFILTR_EL0 path.
    let ccnt = [
        "ADV-RESET-BEFORE-CCNT",
        "ADV-RESET-AFTER-CCNT",
        "ADV-CCFILTR-0",
        "ADV-CCFILTR-08",
        "ADV-CCFILTR-NSH",
        "ADV-XEV31-08",
        "ADV-XEV31-11",
    ];
    if cycles_allowed {
        expect_tap(c, TAP_CCFILTR_ALLOWED);
        expect_tap(c, TAP_XEV31_ALLOWED);
        for w in ccnt {
            c.check(one_loop(v(w)), &format!("{w}: the cycle counter counts"));
        }
    } else {
        expect_tap(c, TAP_CCFILTR_DENIED);
        expect_tap(c, TAP_XEV31_DENIED);
        for w in ccnt {
            c.check(
                v(w) == Some(0),
                &format!("{w}: the denied cycle counter reads 0"),
            );
        }
    }
    // 5. SW_INCR: KVM never filters it (kvm_pmu_software_increment); with 0x00 denied (the
    // deny-cycles allowlist) it still counts the guest's own PMSWINC_EL0 writes.
    expect_tap(c, TAP_SWINC);
    c.check(
        v("ADV-SWINC-COUNT") == Some(5),
        "SW_INCR counts the 5 PMSWINC_EL0 writes",
    );
    // 6. EL0 and PMUSERENR_EL0.
    check_el0(c);
}

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
    c.check(
        failures(&c).is_empty(),
        "no unexpected exception, no failed check",
    );
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
    // The hostile-guest checks: nothing denied among 0x08/0x11 here, so only the allowed
    // paths run; SW_INCR is not in the default allowlist and still counts.
    c.check(
        val(&c, "ADV-D-EVENT") == Some(0xfff) && val(&c, "ADV-TAP-FAILED") == Some(0),
        "no denied counting event; every hostile-guest check passes",
    );
    for t in [
        TAP_XEV_ALLOWED,
        TAP_CHAIN_ALLOWED,
        TAP_CCFILTR_ALLOWED,
        TAP_XEV31_ALLOWED,
        TAP_SWINC,
    ] {
        expect_tap(&c, t);
    }
    check_el0(&c);
    c.check(
        val(&c, "ADV-SWINC-COUNT") == Some(5) && val(&c, "ADV-SWINC-PMCEID0-BIT0") == Some(0),
        "SW_INCR is hidden from PMCEID0 by the allowlist and still counts PMSWINC_EL0 writes",
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
    check_hostile_guest(&c, 0x08, 0x11);
    c.check(
        val(&c, "ADV-SWINC-PMCEID0-BIT0") == Some(1),
        "a denylist of 0x08 leaves SW_INCR in PMCEID0",
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
    check_hostile_guest(&c, 0x11, 0x08);
    c.check(
        val(&c, "ADV-SWINC-PMCEID0-BIT0") == Some(0),
        "the allowlist {0x08} hides SW_INCR from PMCEID0 (and it counts all the same)",
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
