//! Linux guests under vpmu-vmm, run through the nested rig (docs/NESTED.md):
//! QEMU TCG -> L1 Linux with nested KVM -> vpmu-vmm -> L2 Debian cloud kernel + busybox/perf
//! initramfs (resources/linux/build-image.sh).
//!
//! Slow (each run boots two kernels under software emulation, ~5-15 s), so the runs are
//! serialised and live in this test binary of their own:
//!   cargo test --release --test linux_nested
//! Prerequisites (qemu-system-x86_64, the images) are checked, and the images are built
//! (resources/nested/build-l1.sh, idempotent and cached) when missing. A missing
//! prerequisite FAILS the tests with what is missing. VPMU_SKIP_NESTED=<reason> (any value
//! but "" or "0", e.g. 1) skips them instead: each test prints "SKIPPED: <test>:
//! VPMU_SKIP_NESTED=<reason>" (to stderr, not captured) and passes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

const VMM: &str = env!("CARGO_BIN_EXE_vpmu-vmm");
const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// Whole-run limit for one rig run (QEMU is killed after it).
const RUN_TIMEOUT_S: u32 = 240;

/// One rig run at a time: they are CPU-bound emulation, parallel runs only slow each other.
static RUN_LOCK: Mutex<()> = Mutex::new(());
static PREREQS: OnceLock<Result<(), String>> = OnceLock::new();

#[path = "common/rig.rs"]
mod rig;
use rig::{say, skip_requested};

fn check_prerequisites() -> Result<(), String> {
    let mut missing = Vec::new();
    let qemu = Command::new("qemu-system-x86_64").arg("--version").output();
    if !matches!(&qemu, Ok(o) if o.status.success()) {
        missing.push(
            "qemu-system-x86_64 (Debian package qemu-system-x86; resources/nested/build-l1.sh installs it when run as root)"
                .to_string(),
        );
    }
    if !Path::new("/dev/kvm").exists() {
        // Not needed by the rig (TCG), only noted.
        say("note: host has no /dev/kvm; the nested rig does not need it");
    }
    if !missing.is_empty() {
        return Err(format!("missing: {}", missing.join("; ")));
    }
    // Build (or confirm up to date) the L2 image and the L1 rig. Cached: seconds when built.
    let build = Command::new(Path::new(REPO).join("resources/nested/build-l1.sh"))
        .output()
        .map_err(|e| format!("cannot run resources/nested/build-l1.sh: {e}"))?;
    if !build.status.success() {
        return Err(format!(
            "resources/nested/build-l1.sh failed ({}):\n{}{}",
            build.status,
            String::from_utf8_lossy(&build.stdout),
            String::from_utf8_lossy(&build.stderr)
        ));
    }
    for f in [
        "resources/nested/work/l1/vmlinuz",
        "resources/nested/work/l1/base.cpio",
    ] {
        if !Path::new(REPO).join(f).is_file() {
            return Err(format!("missing {f} after build-l1.sh"));
        }
    }
    Ok(())
}

/// true: go ahead. false: skipped because VPMU_SKIP_NESTED is set (reason printed).
/// Panics with what is missing when the prerequisites are not met and no skip was asked for.
fn rig_ready(test: &str) -> bool {
    if let Some(why) = skip_requested(&["VPMU_SKIP_NESTED"]) {
        say(&format!("SKIPPED: {test}: {why}"));
        return false;
    }
    match PREREQS.get_or_init(check_prerequisites) {
        Ok(()) => true,
        Err(reason) => panic!(
            "nested rig prerequisites missing: {reason}\n(set VPMU_SKIP_NESTED=1 to skip these tests explicitly)"
        ),
    }
}

struct Run {
    /// vpmu-vmm's exit status, from the line "NESTED: vpmu-vmm exit <n>"; None when L1
    /// never reported one (rig failure, timeout).
    vmm_status: Option<i32>,
    /// run.sh's own exit status.
    rig_status: Option<i32>,
    log: String,
}

impl Run {
    fn has(&self, needle: &str) -> bool {
        self.log.contains(needle)
    }
    fn line_starting(&self, prefix: &str) -> Option<&str> {
        self.log
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
    }
    /// Panics (printing the whole console log) unless `cond`.
    fn check(&self, cond: bool, what: &str) {
        if !cond {
            panic!(
                "{what}\n--- vpmu-vmm status {:?}, run.sh status {:?}; console log:\n{}",
                self.vmm_status, self.rig_status, self.log
            );
        }
    }
    /// Whether the log has a line that is `line` once trimmed.
    fn has_line(&self, line: &str) -> bool {
        self.log.lines().any(|l| l.trim() == line)
    }
    /// Checks that the L2 guest command ran to its end with status 0 (`what` if not).
    fn expect_command_ok(&self, what: &str) {
        self.check(self.has("VPMU-GUEST: command exit 0"), what);
    }
    fn expect_status(&self, want: i32) {
        self.check(
            self.vmm_status == Some(want),
            &format!("expected vpmu-vmm exit status {want}"),
        );
    }
    fn expect_init(&self, cpus: u32) {
        let line = self.line_starting("VPMU-GUEST: init reached");
        self.check(
            line.is_some(),
            "the L2 guest never reached /init ('VPMU-GUEST: init reached' missing)",
        );
        let line = line.unwrap();
        self.check(
            line.ends_with(&format!(" cpus={cpus}")),
            &format!("L2 should see {cpus} CPU(s): {line}"),
        );
    }
}

struct Opts<'a> {
    l1_cpus: u32,
    /// Shell command for L1 instead of booting L2 (`run.sh --l1-cmd`); `/bin/vpmu-vmm` is there.
    l1_cmd: Option<&'a str>,
    guest_cmd: &'a str,
    /// L2 kernel, a path in L1 (run.sh --l2-kernel); "" = the default cloud kernel.
    l2_kernel: &'a str,
    l2_append: &'a str,
    vmm_args: &'a [&'a str],
    /// Host files copied into L1 as /files/<name> (run.sh --file).
    files: &'a [&'a Path],
}

impl Default for Opts<'_> {
    fn default() -> Self {
        Opts {
            l1_cpus: 1,
            l1_cmd: None,
            guest_cmd: "true",
            l2_kernel: "",
            l2_append: "",
            vmm_args: &["--memory", "512M"],
            files: &[],
        }
    }
}

fn run_guest(name: &str, o: &Opts) -> Run {
    let _guard = RUN_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let log_path: PathBuf =
        std::env::temp_dir().join(format!("vpmu-nested-{name}-{}.log", std::process::id()));
    let mut cmd = Command::new(Path::new(REPO).join("resources/nested/run.sh"));
    cmd.args([
        "--vmm",
        VMM,
        "--quiet",
        "--timeout",
        &RUN_TIMEOUT_S.to_string(),
    ])
    .args(["--cpus", &o.l1_cpus.to_string(), "--log"])
    .arg(&log_path);
    for f in o.files {
        cmd.arg("--file").arg(f);
    }
    if let Some(l1_cmd) = o.l1_cmd {
        cmd.args(["--l1-cmd", l1_cmd]);
    } else {
        cmd.args(["--guest-cmd", o.guest_cmd]);
        if !o.l2_append.is_empty() {
            cmd.args(["--l2-append", o.l2_append]);
        }
        if !o.l2_kernel.is_empty() {
            cmd.args(["--l2-kernel", o.l2_kernel]);
        }
        cmd.arg("--").args(o.vmm_args);
    }
    let start = std::time::Instant::now();
    let out = cmd.output().expect("run resources/nested/run.sh");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_file(&log_path);
    let vmm_status = log.lines().rev().find_map(|l| {
        l.trim()
            .strip_prefix("NESTED: vpmu-vmm exit ")?
            .trim()
            .parse()
            .ok()
    });
    let run = Run {
        vmm_status,
        rig_status: out.status.code(),
        log,
    };
    say(&format!(
        "{name}: vpmu-vmm status {:?}, {:.1} s ({})",
        run.vmm_status,
        start.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stderr).trim()
    ));
    run.check(
        run.has("NESTED: kvm ready"),
        "the nested rig failed: L1 has no working /dev/kvm ('NESTED: kvm ready' missing)",
    );
    run.check(
        run.vmm_status.is_some(),
        "L1 reported no vpmu-vmm exit status (crash or timeout)",
    );
    run
}

/// [`rig_ready`], then [`run_guest`] and [`Run::expect_init`] with `cpus`: the run, or
/// None when the rig tests are skipped.
fn boot_l2(test: &str, name: &str, cpus: u32, o: &Opts) -> Option<Run> {
    if !rig_ready(test) {
        return None;
    }
    let r = run_guest(name, o);
    r.expect_init(cpus);
    Some(r)
}

/// The functions of /bin/vpmu-work that a perf profile of it must name.
const WORK_SYMBOLS: [&str; 3] = [
    "vpmu_work_integer_mix",
    "vpmu_work_branchy",
    "vpmu_work_memory_walk",
];

#[test]
fn nested_rig_prerequisites_and_l1_kvm() {
    if !rig_ready("nested_rig_prerequisites_and_l1_kvm") {
        return;
    }
    // The rig alone, without vpmu-vmm: L1 boots, loads kvm_amd nested=1, has /dev/kvm.
    let _guard = RUN_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let out = Command::new(Path::new(REPO).join("resources/nested/run.sh"))
        .args([
            "--quiet",
            "--timeout",
            "120",
            "--l1-cmd",
            "test -c /dev/kvm",
        ])
        .output()
        .expect("run resources/nested/run.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "L1 should have /dev/kvm; run.sh said: {stderr}"
    );
}

#[test]
fn l2_linux_boots_to_init_with_1_vcpu() {
    let Some(r) = boot_l2(
        "l2_linux_boots_to_init_with_1_vcpu",
        "boot-1cpu",
        1,
        &Opts {
            vmm_args: &["--memory", "512M", "--cpus", "1"],
            ..Default::default()
        },
    ) else {
        return;
    };
    r.expect_command_ok("the L2 command did not finish");
    r.expect_status(0);
}

/// With the default (cloud) kernel, a second CPU needs ACPI (MADT): see
/// l2_generic_kernel_finds_2_vcpus_in_the_mp_table for the MP-table path.
#[test]
fn l2_linux_boots_to_init_with_2_vcpus() {
    let Some(r) = boot_l2(
        "l2_linux_boots_to_init_with_2_vcpus",
        "boot-2cpu",
        2,
        &Opts {
            l1_cpus: 2,
            guest_cmd: "grep -c ^processor /proc/cpuinfo; cat /sys/devices/system/cpu/online",
            vmm_args: &["--memory", "512M", "--cpus", "2"],
            ..Default::default()
        },
    ) else {
        return;
    };
    r.check(r.has_line("0-1"), "L2 should have CPUs 0-1 online");
    r.expect_command_ok("the L2 command did not finish");
    r.expect_status(0);
}

/// The Debian cloud kernel (the default image) has no CONFIG_X86_MPPARSE: it finds the
/// other CPUs only through ACPI's MADT. The generic Debian kernel reads the MP table, so
/// this test checks vpmu-vmm's MP table and AP start-up independently of ACPI.
#[test]
fn l2_generic_kernel_finds_2_vcpus_in_the_mp_table() {
    let Some(r) = boot_l2(
        "l2_generic_kernel_finds_2_vcpus_in_the_mp_table",
        "boot-2cpu-generic",
        2,
        &Opts {
            l1_cpus: 2,
            l2_kernel: "/l2/bzImage-generic",
            guest_cmd: "cat /sys/devices/system/cpu/online; dmesg | grep -E 'MP-table|Brought up'",
            vmm_args: &["--memory", "512M", "--cpus", "2"],
            ..Default::default()
        },
    ) else {
        return;
    };
    r.check(
        r.has("found SMP MP-table"),
        "the generic kernel should find vpmu-vmm's MP table",
    );
    r.check(r.has_line("0-1"), "L2 should have CPUs 0-1 online");
    r.expect_status(0);
}

#[test]
fn pmu_off_means_l2_linux_has_no_pmu() {
    let Some(r) = boot_l2(
        "pmu_off_means_l2_linux_has_no_pmu",
        "pmu-off",
        1,
        &Opts {
            guest_cmd: "if [ -e /sys/bus/event_source/devices/cpu ]; then echo PMU=present; \
                        else echo PMU=absent; fi; dmesg | grep 'Performance Events'",
            vmm_args: &["--memory", "512M", "--pmu", "off"],
            ..Default::default()
        },
    ) else {
        return;
    };
    r.check(
        r.has("PMU=absent"),
        "with --pmu off, /sys/bus/event_source/devices/cpu must not exist in L2",
    );
    let perf_line = r.log.lines().find(|l| {
        l.contains("Performance Events:")
            && (l.contains("no PMU")
                || l.contains("PMU not available")
                || l.contains("software events only"))
    });
    r.check(
        perf_line.is_some(),
        "L2 dmesg should say it has no PMU ('Performance Events: ... software events only')",
    );
    r.expect_status(0);
}

#[test]
fn perf_stat_and_record_work_in_l2() {
    let Some(r) = boot_l2(
        "perf_stat_and_record_work_in_l2",
        "perf",
        1,
        &Opts {
            guest_cmd: "set -e; perf stat -e task-clock /bin/vpmu-work 0.5; cd /tmp; \
                        perf record -e cpu-clock -F 1000 -o /tmp/perf.data /bin/vpmu-work 1; \
                        perf report -i /tmp/perf.data --stdio --sort symbol 2>&1 | grep -v '^#' | grep -v '^$' | head -n 15",
            ..Default::default()
        },
    ) else {
        return;
    };
    r.check(
        r.log.lines().any(|l| l.contains("msec task-clock")),
        "perf stat should report task-clock in msec",
    );
    r.check(
        r.has("perf record: Captured and wrote"),
        "perf record should have written samples",
    );
    for sym in WORK_SYMBOLS {
        r.check(
            r.has(sym),
            &format!("perf report should show the workload's symbol {sym}"),
        );
    }
    r.expect_command_ok("the perf commands should all succeed");
    r.expect_status(0);
}

#[test]
fn l2_reboot_ends_vmm_with_status_0() {
    // reboot=k: the kernel resets through the i8042 (0xfe to port 0x64).
    let Some(r) = boot_l2(
        "l2_reboot_ends_vmm_with_status_0",
        "reboot",
        1,
        &Opts {
            guest_cmd: "echo about to reboot; reboot -f",
            l2_append: "reboot=k",
            ..Default::default()
        },
    ) else {
        return;
    };
    r.check(
        !r.has("VPMU-GUEST: command exit"),
        "reboot -f should end the VM before the command returns",
    );
    r.expect_status(0);
}

#[test]
fn l2_poweroff_ends_the_vm_with_status_0() {
    // ACPI S5: the DSDT's \_S5 makes Linux register acpi_power_off, which writes
    // PM1a_CNT = SLP_TYP 5 | SLP_EN; vpmu-vmm ends the VM ("guest powered off", status 0).
    // Without it the kernel turns `poweroff` into a halt ("reboot: System halted") and the
    // VM never ends. The command prints L2's ACPI boot messages first, then powers off.
    let Some(r) = boot_l2(
        "l2_poweroff_ends_the_vm_with_status_0",
        "poweroff",
        1,
        &Opts {
            guest_cmd: "dmesg | grep -i acpi; echo about to power off; poweroff -f",
            vmm_args: &["--memory", "512M", "--stats"],
            ..Default::default()
        },
    ) else {
        return;
    };
    r.check(
        r.has("ACPI: PM: (supports S0 S5)"),
        "L2's ACPI should find \\_S5 ('ACPI: PM: (supports S0 S5)' in dmesg)",
    );
    for bad in [
        "ACPI Error",
        "ACPI BIOS Error",
        "ACPI Exception",
        "ACPI Warning",
    ] {
        r.check(!r.has(bad), &format!("L2's dmesg has an '{bad}' line"));
    }
    r.check(r.has("about to power off"), "the command should have run");
    r.check(
        !r.has("VPMU-GUEST: command exit") && !r.has("VPMU-GUEST: end via"),
        "poweroff -f should end the VM before the command returns (not /init's own ending)",
    );
    // L2's "reboot: Power down" comes before vpmu-vmm's --stats line (L1 prints its own
    // "reboot: Power down" later, when it powers off in turn).
    let power_down = r.log.find("reboot: Power down");
    let powered_off = r.log.find("| guest powered off |");
    r.check(
        powered_off.is_some(),
        "vpmu-vmm --stats should say 'guest powered off'",
    );
    r.check(
        power_down.is_some_and(|p| Some(p) < powered_off),
        "L2 should say 'reboot: Power down' before vpmu-vmm ends",
    );
    r.expect_status(0);
}

#[test]
fn l2_panic_ends_vmm_with_nonzero_status() {
    // The image's default command line has "panic=-1 reboot=t": a panic reboots at once by
    // triple fault, which vpmu-vmm must report as a failure.
    let Some(r) = boot_l2(
        "l2_panic_ends_vmm_with_nonzero_status",
        "panic",
        1,
        &Opts {
            guest_cmd: "echo c > /proc/sysrq-trigger",
            ..Default::default()
        },
    ) else {
        return;
    };
    r.check(r.has("Kernel panic"), "the L2 kernel should have panicked");
    r.check(
        r.vmm_status.is_some_and(|s| s != 0),
        "a guest panic must give a non-zero vpmu-vmm status",
    );
}

// Not tested here: vpmu.exit=port (the guest writes its status to the debug-exit port 0xf4
// from user space). User-mode port I/O raises #GP in L2 under QEMU TCG's nested SVM, so the
// rig cannot exercise it; the freestanding guests cover the debug-exit port instead.

// ---- vPMU modes with a Linux guest (issue 6 part 2) ----

/// `vpmu-vmm probe --json` as run in L1, plus what `run --pmu <mode>` says there for the
/// modes that need a host PMU.
struct L1Probe {
    json: serde_json::Value,
    log: String,
}

impl L1Probe {
    fn get() -> L1Probe {
        let r = run_guest(
            "l1-probe",
            &Opts {
                l1_cmd: Some(
                    "echo PROBE-JSON-BEGIN; /bin/vpmu-vmm probe --json; echo PROBE-JSON-END; \
                     for m in emulated passthrough; do \
                       /bin/vpmu-vmm run --kernel /l2/bzImage --initrd /l2/initramfs.cpio.gz \
                         --memory 512M --pmu $m --cmdline \"$(cat /l2/cmdline)\" </dev/null >/tmp/out 2>&1; \
                       echo \"MODE-RESULT $m $?\"; head -n 3 /tmp/out; done",
                ),
                ..Default::default()
            },
        );
        let json: String = r
            .log
            .lines()
            .skip_while(|l| l.trim() != "PROBE-JSON-BEGIN")
            .skip(1)
            .take_while(|l| l.trim() != "PROBE-JSON-END")
            .filter(|l| !l.starts_with('[')) // interleaved L1 kernel messages
            .collect::<Vec<_>>()
            .join("\n");
        let json = serde_json::from_str(&json).unwrap_or_else(|e| {
            panic!("vpmu-vmm probe --json in L1: {e}\n{}", r.log);
        });
        L1Probe { json, log: r.log }
    }

    /// None when available, else the probe's reason.
    fn unavailable(&self, mode: &str) -> Option<String> {
        let m = self.json["modes"]
            .as_array()
            .and_then(|a| a.iter().find(|m| m["mode"] == mode))
            .unwrap_or_else(|| panic!("probe --json has no mode {mode}:\n{}", self.json));
        match m["availability"]["status"].as_str() {
            Some("available") => None,
            _ => Some(
                m["availability"]["reason"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string(),
            ),
        }
    }

    fn run_status(&self, mode: &str) -> Option<i32> {
        let prefix = format!("MODE-RESULT {mode} ");
        self.log
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix.as_str())?.parse().ok())
    }
}

/// The guest command of the hardware-event checks: counting, then sampling.
const PERF_HW: &str = "set -e; ls /sys/bus/event_source/devices/; \
    dmesg | grep 'Performance Events' || true; \
    perf stat -x, -e cycles,task-clock /bin/vpmu-work 0.5 2>&1; \
    perf record -e cycles -F 1000 -o /tmp/perf.data /bin/vpmu-work 1; \
    perf report -i /tmp/perf.data --stdio --sort symbol 2>&1 | grep -v '^#' | grep -v '^$' | head -n 15";

/// `perf stat -x,` value of `event` ("<not counted>" etc. give None).
fn perf_stat_value(log: &str, event: &str) -> Option<f64> {
    log.lines().find_map(|l| {
        let f: Vec<&str> = l.trim().split(',').collect();
        (f.len() > 2 && f[2].starts_with(event)).then(|| f[0].parse().ok())?
    })
}

fn check_sampling(r: &Run) {
    check_pmu_detected_and_sampled(r);
    for sym in WORK_SYMBOLS {
        r.check(
            r.has(sym),
            &format!("perf report (cycles) should show {sym}"),
        );
    }
}

/// The part of [`check_sampling`] that holds for every vPMU mode: L2 sees a PMU and
/// `perf record -e cycles` writes samples.
fn check_pmu_detected_and_sampled(r: &Run) {
    r.check(
        r.log
            .lines()
            .any(|l| l.split_whitespace().any(|w| w == "cpu")),
        "L2 should have the core PMU event source /sys/bus/event_source/devices/cpu",
    );
    r.check(
        r.log
            .lines()
            .any(|l| l.contains("Performance Events:") && l.contains("PMU driver")),
        "L2 Linux should detect a PMU ('Performance Events: ... PMU driver')",
    );
    r.check(
        r.has("perf record: Captured and wrote"),
        "perf record -e cycles should have written samples",
    );
}

fn check_counting(r: &Run) {
    let cycles = perf_stat_value(&r.log, "cycles");
    let msec = perf_stat_value(&r.log, "task-clock");
    r.check(
        cycles.is_some_and(|c| c > 0.0) && msec.is_some_and(|m| m > 0.0),
        "perf stat should count cycles and task-clock",
    );
    let hz = cycles.unwrap() / (msec.unwrap() / 1000.0);
    r.check(
        (1e7..=1e11).contains(&hz),
        &format!(
            "perf stat cycles per task-clock second should be a CPU clock rate, not {hz:.3e} Hz"
        ),
    );
}

#[test]
fn hw_pmu_modes_in_l2_linux_or_clean_refusal() {
    if !rig_ready("hw_pmu_modes_in_l2_linux_or_clean_refusal") {
        return;
    }
    // Under QEMU TCG, L1 never has a PMU, so emulated/passthrough are refused there; the
    // checks for a working mode run where the rig's L1 has one (see docs/NESTED.md).
    let probe = L1Probe::get();
    for mode in ["emulated", "passthrough"] {
        match probe.unavailable(mode) {
            Some(reason) => {
                let status = probe.run_status(mode);
                assert_eq!(
                    status,
                    Some(2),
                    "--pmu {mode} is unavailable in L1 ({reason}): vpmu-vmm must refuse with status 2\n{}",
                    probe.log
                );
                assert!(
                    probe.log.contains(&format!("--pmu {mode}")),
                    "the refusal should name --pmu {mode}\n{}",
                    probe.log
                );
                say(&format!(
                    "SKIPPED: perf with hardware events under --pmu {mode}: unavailable in L1 ({reason}); \
                     checked the clean refusal instead"
                ));
            }
            None => {
                let args = ["--memory", "512M", "--pmu", mode, "--stats"];
                let r = run_guest(
                    &format!("perf-hw-{mode}"),
                    &Opts {
                        guest_cmd: PERF_HW,
                        vmm_args: &args,
                        ..Default::default()
                    },
                );
                r.expect_init(1);
                check_sampling(&r);
                check_counting(&r);
                r.expect_status(0);
            }
        }
    }
}

#[test]
fn userspace_pmu_l2_linux_detects_pmu_and_samples_cycles() {
    let Some(r) = boot_l2(
        "userspace_pmu_l2_linux_detects_pmu_and_samples_cycles",
        "perf-hw-userspace",
        1,
        &Opts {
            guest_cmd: PERF_HW,
            vmm_args: &["--memory", "512M", "--pmu", "userspace", "--stats"],
            ..Default::default()
        },
    ) else {
        return;
    };
    // Not check_sampling: Linux reads counters with RDPMC, which a userspace vPMU cannot
    // serve (docs/ARCHITECTURE.md), so Linux's period bookkeeping -- and with it where the
    // samples land -- is unreliable in this mode. What must hold: L2 sees the PMU the VMM
    // gives it, perf writes samples, and the VMM delivers PMIs.
    check_pmu_detected_and_sampled(&r);
    r.check(
        r.log.lines().any(|l| {
            // "... N overflows, M PMIs; programmed: ..." -- the counters end at ';'.
            l.contains("userspace vPMU:")
                && l.split(';')
                    .next()
                    .unwrap_or("")
                    .split(", ")
                    .any(|f| f.ends_with(" PMIs") && !f.starts_with("0 "))
        }),
        "vpmu-vmm --stats should report PMIs delivered",
    );
    r.expect_command_ok("the perf commands should all succeed");
    r.expect_status(0);
}

#[test]
#[ignore = "known issue: Linux reads counters with RDPMC, which the userspace vPMU cannot serve \
            (docs/ARCHITECTURE.md); perf stat shows garbage counts. Run with --ignored."]
fn userspace_pmu_l2_linux_perf_stat_counts_are_plausible() {
    let Some(r) = boot_l2(
        "userspace_pmu_l2_linux_perf_stat_counts_are_plausible",
        "perf-stat-userspace",
        1,
        &Opts {
            guest_cmd: PERF_HW,
            vmm_args: &["--memory", "512M", "--pmu", "userspace"],
            ..Default::default()
        },
    ) else {
        return;
    };
    check_counting(&r);
}

/// The ELF vmlinux inside the cloud kernel's bzImage (an LZ4 legacy-frame payload),
/// extracted next to it once; it carries the PVH ELF note (CONFIG_PVH=y).
fn cloud_vmlinux() -> Result<PathBuf, String> {
    let dir = Path::new(REPO).join("resources/out/linux");
    let bz = dir.join("bzImage");
    let vm = dir.join("vmlinux");
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(v), Some(b)) = (mtime(&vm), mtime(&bz)) {
        if v >= b {
            return Ok(vm);
        }
    }
    let data = std::fs::read(&bz).map_err(|e| format!("reading {}: {e}", bz.display()))?;
    let magic = [0x02, 0x21, 0x4c, 0x18];
    let at = data
        .windows(4)
        .position(|w| w == magic)
        .ok_or("no LZ4 payload in the bzImage (is the kernel still CONFIG_KERNEL_LZ4?)")?;
    let payload = dir.join("vmlinux.lz4");
    std::fs::write(&payload, &data[at..]).map_err(|e| e.to_string())?;
    let out = Command::new("lz4")
        .arg("-dc")
        .arg(&payload)
        .output()
        .map_err(|e| format!("running lz4 (apt-get install lz4): {e}"))?;
    let _ = std::fs::remove_file(&payload);
    // lz4 complains about the trailing bytes after the frame; the output is complete.
    if out.stdout.len() < 1 << 20 || out.stdout[..4] != [0x7f, b'E', b'L', b'F'] {
        return Err(format!(
            "lz4 produced no ELF vmlinux: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::write(&vm, &out.stdout).map_err(|e| e.to_string())?;
    Ok(vm)
}

#[test]
fn l2_linux_boots_via_pvh_from_elf_vmlinux() {
    if !rig_ready("l2_linux_boots_via_pvh_from_elf_vmlinux") {
        return;
    }
    let vm = cloud_vmlinux().unwrap_or_else(|e| panic!("cannot extract the vmlinux: {e}"));
    let r = run_guest(
        "pvh-vmlinux",
        &Opts {
            guest_cmd: "uname -r",
            l2_kernel: "/files/vmlinux",
            files: &[vm.as_path()],
            ..Default::default()
        },
    );
    // An ELF kernel boots only through the PVH entry (without the note vpmu-vmm would
    // treat it as a freestanding guest and it could not reach /init).
    r.expect_init(1);
    r.expect_status(0);
}

#[test]
fn rig_stops_qemu_and_cleans_up_on_sigterm_and_sigint() {
    if !rig_ready("rig_stops_qemu_and_cleans_up_on_sigterm_and_sigint") {
        return;
    }
    let _guard = RUN_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    for sig in ["TERM", "INT"] {
        // A private TMPDIR: QEMU's command line names it (-initrd $run_dir/initrd), so a
        // QEMU left behind can be found, and an empty directory proves the cleanup.
        let tmp =
            std::env::temp_dir().join(format!("vpmu-rig-signal-{}-{sig}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).expect("tmp");
        let child = Command::new(Path::new(REPO).join("resources/nested/run.sh"))
            .args(["--quiet", "--timeout", "300", "--l1-cmd", "sleep 600"])
            .env("TMPDIR", &tmp)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run.sh");
        // Let QEMU start (its run directory appears first).
        let t0 = std::time::Instant::now();
        while std::fs::read_dir(&tmp).map_or(0, |d| d.count()) == 0
            && t0.elapsed() < std::time::Duration::from_secs(30)
        {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        std::thread::sleep(std::time::Duration::from_secs(3));
        let sent = Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
        let t1 = std::time::Instant::now();
        let out = child.wait_with_output().expect("wait");
        let waited = t1.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            waited < std::time::Duration::from_secs(20),
            "SIG{sig}: run.sh took {waited:?} to stop: {err}"
        );
        assert_eq!(out.status.code(), Some(130), "SIG{sig}: {err}");
        assert!(err.contains("interrupted"), "SIG{sig}: {err}");
        let left = Command::new("pgrep")
            .args(["-f", &tmp.to_string_lossy()])
            .output()
            .expect("pgrep");
        assert!(
            left.stdout.is_empty(),
            "SIG{sig}: QEMU left running: {}",
            String::from_utf8_lossy(&left.stdout)
        );
        let remaining: Vec<_> = std::fs::read_dir(&tmp)
            .expect("tmp")
            .map(|e| e.map(|e| e.path()))
            .collect();
        assert!(remaining.is_empty(), "SIG{sig}: left behind {remaining:?}");
        let _ = std::fs::remove_dir_all(&tmp);
    }
}

#[path = "common/tmux.rs"]
mod tmux;

/// `run.sh --interactive` in a tmux pane: a user types into L2's BusyBox shell through
/// QEMU's serial console, L1's /dev/console and vpmu-vmm's raw-mode console. One echo per
/// typed line (vpmu-vmm in raw mode: L1's terminal echoes nothing), no terminal answers
/// echoed back as junk (`^[[18;5R`), `exit` in the shell ends the run with status 0.
#[test]
fn l2_busybox_shell_typed_at_through_run_sh_interactive() {
    let test = "l2_busybox_shell_typed_at_through_run_sh_interactive";
    if !rig_ready(test) {
        return;
    }
    if let Some(why) = tmux::Tmux::unavailable() {
        panic!("{why} (set VPMU_SKIP_NESTED=1 to skip the rig tests explicitly)");
    }
    let _guard = RUN_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let status =
        std::env::temp_dir().join(format!("vpmu-nested-tty-{}.status", std::process::id()));
    let _ = std::fs::remove_file(&status);
    let script = format!(
        "{REPO}/resources/nested/run.sh --interactive --vmm {VMM} --timeout {RUN_TIMEOUT_S} \
         --guest-cmd 'echo READY-FOR-INPUT'; echo \"rig=$?\" > {s}.tmp; mv {s}.tmp {s}; sleep 600",
        s = status.display()
    );
    let start = std::time::Instant::now();
    let t = tmux::Tmux::start("l2shell", &script);
    let limit = std::time::Duration::from_secs(u64::from(RUN_TIMEOUT_S));
    t.wait_for("READY-FOR-INPUT", limit);
    t.wait_for("/ # ", limit);
    t.line("echo sum=$((6*7))");
    let s = t.wait_for("sum=42", std::time::Duration::from_secs(60));
    assert_eq!(
        s.matches("echo sum=$((6*7))").count(),
        1,
        "the typed line must show once (a second copy is L1's terminal echoing):\n{s}"
    );
    assert!(
        !s.contains("^[["),
        "terminal answers echoed back as text:\n{s}"
    );
    t.line("exit");
    let t0 = std::time::Instant::now();
    let rig = loop {
        if let Ok(r) = std::fs::read_to_string(&status) {
            break r.trim().to_string();
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(120),
            "the rig did not end after `exit`; the screen:\n{}",
            t.screen()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let _ = std::fs::remove_file(&status);
    say(&format!(
        "{test}: {rig}, {:.1} s",
        start.elapsed().as_secs_f64()
    ));
    assert_eq!(rig, "rig=0", "the screen:\n{}", t.screen());
    assert!(
        t.screen().contains("NESTED: vpmu-vmm exit 0"),
        "{}",
        t.screen()
    );
}
