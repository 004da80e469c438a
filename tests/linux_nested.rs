//! Linux guests under vpmu-vmm, run through the nested rig (docs/NESTED.md):
//! QEMU TCG -> L1 Linux with nested KVM -> vpmu-vmm -> L2 Debian cloud kernel + busybox/perf
//! initramfs (resources/linux/build-image.sh).
//!
//! Slow (each run boots two kernels under software emulation, ~5-15 s), so the runs are
//! serialised and live in this test binary of their own:
//!   cargo test --release --test linux_nested
//! Prerequisites (qemu-system-x86_64, the images) are checked, and the images are built
//! (resources/nested/build-l1.sh, idempotent and cached) when missing. A missing
//! prerequisite FAILS the tests with what is missing, unless VPMU_SKIP_NESTED=1, in which
//! case each test prints "SKIPPED: <reason>" (to stderr, uncaptured) and passes.

use std::io::Write;
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

fn say(msg: &str) {
    // Straight to fd 2, so that libtest's output capture does not hide it.
    let _ = writeln!(std::io::stderr().lock(), "{msg}");
}

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

/// Ok(true): go ahead. Ok(false): skipped (VPMU_SKIP_NESTED=1, reason printed).
/// Panics with the reason when prerequisites are missing and no skip was asked for.
fn rig_ready(test: &str) -> bool {
    let skip = std::env::var("VPMU_SKIP_NESTED").is_ok_and(|v| v == "1");
    match PREREQS.get_or_init(check_prerequisites) {
        Ok(()) => true,
        Err(reason) if skip => {
            say(&format!("SKIPPED: {test}: nested rig unavailable (VPMU_SKIP_NESTED=1): {reason}"));
            false
        }
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
    guest_cmd: &'a str,
    l2_append: &'a str,
    vmm_args: &'a [&'a str],
}

impl Default for Opts<'_> {
    fn default() -> Self {
        Opts {
            l1_cpus: 1,
            guest_cmd: "true",
            l2_append: "",
            vmm_args: &["--memory", "512M"],
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
    .arg(&log_path)
    .args(["--guest-cmd", o.guest_cmd]);
    if !o.l2_append.is_empty() {
        cmd.args(["--l2-append", o.l2_append]);
    }
    cmd.arg("--").args(o.vmm_args);
    let start = std::time::Instant::now();
    let out = cmd.output().expect("run resources/nested/run.sh");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_file(&log_path);
    let vmm_status = log
        .lines()
        .filter_map(|l| l.trim().strip_prefix("NESTED: vpmu-vmm exit "))
        .filter_map(|s| s.trim().parse().ok())
        .last();
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
    if !rig_ready("l2_linux_boots_to_init_with_1_vcpu") {
        return;
    }
    let r = run_guest(
        "boot-1cpu",
        &Opts {
            vmm_args: &["--memory", "512M", "--cpus", "1"],
            ..Default::default()
        },
    );
    r.expect_init(1);
    r.check(
        r.has("VPMU-GUEST: command exit 0"),
        "the L2 command did not finish",
    );
    r.expect_status(0);
}

#[test]
fn l2_linux_boots_to_init_with_2_vcpus() {
    if !rig_ready("l2_linux_boots_to_init_with_2_vcpus") {
        return;
    }
    let r = run_guest(
        "boot-2cpu",
        &Opts {
            l1_cpus: 2,
            guest_cmd: "grep -c ^processor /proc/cpuinfo; cat /sys/devices/system/cpu/online",
            vmm_args: &["--memory", "512M", "--cpus", "2"],
            ..Default::default()
        },
    );
    r.expect_init(2);
    r.check(
        r.log.lines().any(|l| l.trim() == "0-1"),
        "L2 should have CPUs 0-1 online",
    );
    r.check(
        r.has("VPMU-GUEST: command exit 0"),
        "the L2 command did not finish",
    );
    r.expect_status(0);
}

#[test]
fn pmu_off_means_l2_linux_has_no_pmu() {
    if !rig_ready("pmu_off_means_l2_linux_has_no_pmu") {
        return;
    }
    let r = run_guest(
        "pmu-off",
        &Opts {
            guest_cmd: "if [ -e /sys/bus/event_source/devices/cpu ]; then echo PMU=present; \
                        else echo PMU=absent; fi; dmesg | grep 'Performance Events'",
            vmm_args: &["--memory", "512M", "--pmu", "off"],
            ..Default::default()
        },
    );
    r.expect_init(1);
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
    if !rig_ready("perf_stat_and_record_work_in_l2") {
        return;
    }
    let r = run_guest(
        "perf",
        &Opts {
            guest_cmd: "set -e; perf stat -e task-clock /bin/vpmu-work 0.5; cd /tmp; \
                        perf record -e cpu-clock -F 1000 -o /tmp/perf.data /bin/vpmu-work 1; \
                        perf report -i /tmp/perf.data --stdio --sort symbol 2>&1 | grep -v '^#' | grep -v '^$' | head -n 15",
            ..Default::default()
        },
    );
    r.expect_init(1);
    r.check(
        r.log.lines().any(|l| l.contains("msec task-clock")),
        "perf stat should report task-clock in msec",
    );
    r.check(
        r.has("perf record: Captured and wrote"),
        "perf record should have written samples",
    );
    for sym in [
        "vpmu_work_integer_mix",
        "vpmu_work_branchy",
        "vpmu_work_memory_walk",
    ] {
        r.check(
            r.has(sym),
            &format!("perf report should show the workload's symbol {sym}"),
        );
    }
    r.check(
        r.has("VPMU-GUEST: command exit 0"),
        "the perf commands should all succeed",
    );
    r.expect_status(0);
}

#[test]
fn l2_reboot_ends_vmm_with_status_0() {
    if !rig_ready("l2_reboot_ends_vmm_with_status_0") {
        return;
    }
    // reboot=k: the kernel resets through the i8042 (0xfe to port 0x64).
    let r = run_guest(
        "reboot",
        &Opts {
            guest_cmd: "echo about to reboot; reboot -f",
            l2_append: "reboot=k",
            ..Default::default()
        },
    );
    r.expect_init(1);
    r.check(
        !r.has("VPMU-GUEST: command exit"),
        "reboot -f should end the VM before the command returns",
    );
    r.expect_status(0);
}

#[test]
fn l2_panic_ends_vmm_with_nonzero_status() {
    if !rig_ready("l2_panic_ends_vmm_with_nonzero_status") {
        return;
    }
    // The image's default command line has "panic=-1 reboot=t": a panic reboots at once by
    // triple fault, which vpmu-vmm must report as a failure.
    let r = run_guest(
        "panic",
        &Opts {
            guest_cmd: "echo c > /proc/sysrq-trigger",
            ..Default::default()
        },
    );
    r.expect_init(1);
    r.check(r.has("Kernel panic"), "the L2 kernel should have panicked");
    r.check(
        r.vmm_status.is_some_and(|s| s != 0),
        "a guest panic must give a non-zero vpmu-vmm status",
    );
}

// Not tested here: vpmu.exit=port (the guest writes its status to the debug-exit port 0xf4
// from user space). User-mode port I/O raises #GP in L2 under QEMU TCG's nested SVM, so the
// rig cannot exercise it; the freestanding guests cover the debug-exit port instead.
