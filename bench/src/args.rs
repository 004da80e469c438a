//! Command-line arguments of `vpmu-vmm bench`.

use std::path::PathBuf;

use crate::harness::Settings;
use crate::model::{parse_list, Activity, Mode, Workload};

/// Default `--activities`.
pub const DEFAULT_ACTIVITIES: &str = "none,count:4,sample:1000,sample:10000,multiplex:10";

/// `vpmu-vmm bench`: overhead of the vPMU modes, side by side.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Quick run (under two minutes): 3 runs per cell, a shorter workload region, fewer
    /// MSR iterations, and a 100 s time budget after which no VM run starts. Medians from
    /// fewer than 5 runs are flagged as indicative.
    #[arg(long)]
    pub quick: bool,
    /// Output directory for bench.json, bench.md and overhead.svg.
    #[arg(long, value_name = "DIR", default_value = "target/bench")]
    pub out: PathBuf,
    /// VM runs per cell (default 5; 3 with --quick). Reported medians need at least 5.
    /// With --linux: passes inside each mode's VM (default 5, also with --quick).
    #[arg(long, value_name = "N")]
    pub reps: Option<u32>,
    /// Comma-separated vPMU modes; unavailable ones are reported with the reason.
    /// `emulated+audit` / `passthrough+audit` run the in-kernel modes with `--pmu-audit`.
    #[arg(
        long,
        value_name = "LIST",
        default_value = "off,userspace,emulated,passthrough"
    )]
    pub modes: String,
    /// Comma-separated guest workloads.
    #[arg(long, value_name = "LIST", default_value = "loop,lfsr,chase")]
    pub workloads: String,
    /// Comma-separated guest PMU activities: none, count:N (N counters counting),
    /// sample:HZ (cycles sampling through PMIs), multiplex:N (N events rotated over the
    /// counters).
    #[arg(long, value_name = "LIST", default_value = DEFAULT_ACTIVITIES)]
    pub activities: String,
    /// Fixed workload iterations for every workload (default: calibrate each workload so
    /// the `off` baseline region takes --target-ms).
    #[arg(long, value_name = "N")]
    pub iters: Option<u64>,
    /// Calibration target for the baseline workload region, ms (default 200; 40 with --quick).
    #[arg(long, value_name = "MS")]
    pub target_ms: Option<u64>,
    /// Workload repetitions inside each VM run; the run's figure is their median
    /// (default 3; 1 with --quick).
    #[arg(long, value_name = "R")]
    pub guest_reps: Option<u32>,
    /// Pointer-chase buffer, KiB.
    #[arg(long, value_name = "KIB", default_value_t = 8192)]
    pub chase_kib: u64,
    /// Iterations of the MSR-cost workload (default 20000; 5000 with --quick; 0 skips it).
    #[arg(long, value_name = "N")]
    pub msr_iters: Option<u64>,
    /// Time budget in seconds: no VM run starts after it; the runs left out are listed
    /// in the report (default 100 with --quick, which keeps --quick under 2 minutes;
    /// none otherwise).
    #[arg(long, value_name = "S")]
    pub time_budget: Option<u64>,
    /// TSC frequency in kHz (default: the host probe, else measured).
    #[arg(long, value_name = "KHZ")]
    pub tsc_khz: Option<u64>,
    /// Write only bench.json (no bench.md, no overhead.svg).
    #[arg(long)]
    pub json_only: bool,
    /// No progress line on stderr (it is only drawn when stderr is a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
    /// Linux-guest workloads instead of the freestanding matrix: `perf stat` / `perf
    /// record` around /bin/vpmu-work in the Linux image of resources/ (linux.json,
    /// linux.md); see docs/BENCHMARKS.md. The --linux-* flags need it.
    #[arg(long)]
    pub linux: bool,
    /// How to run the Linux guest: native (this host's /dev/kvm), nested (the QEMU TCG
    /// rig, resources/nested/run.sh; labelled TCG) or auto (nested when the host KVM is
    /// PVM, i.e. /sys/module/kvm_pvm exists, or /dev/kvm is missing; else native).
    #[arg(long, value_name = "HOW")]
    pub linux_via: Option<String>,
    /// CPU seconds of /bin/vpmu-work per run (default 1; 0.3 with --quick).
    #[arg(long, value_name = "S")]
    pub linux_seconds: Option<f64>,
    /// Comma-separated guest activities: none, stat, record:HZ
    /// (default none,stat,record:1000,record:10000; `none` is always included).
    #[arg(long, value_name = "LIST")]
    pub linux_activities: Option<String>,
    /// perf events: auto (hardware events where the guest has a PMU, i.e. every mode but
    /// off; software events in off), software (task-clock / cpu-clock), hardware
    /// (cycles,instructions / cycles).
    #[arg(long, value_name = "WHICH")]
    pub linux_events: Option<String>,
    /// Directory of the guest image (bzImage, initramfs.cpio.gz, cmdline) for native runs
    /// (default resources/out/linux).
    #[arg(long, value_name = "DIR")]
    pub linux_image: Option<PathBuf>,
    /// The nested rig's run.sh (default resources/nested/run.sh).
    #[arg(long, value_name = "PATH")]
    pub linux_rig: Option<PathBuf>,
    /// The guest's architecture: x86_64 (default) or arm64. arm64 runs under the arm64
    /// nested rig (run.sh --arch arm64: QEMU TCG aarch64 with EL2 and a PMUv3, the L1
    /// built by resources/nested-arm64/build-l1.sh, vpmu-vmm cross-built by
    /// scripts/cross-aarch64.sh or $VPMU_VMM_ARM64); modes arm64 KVM lacks are reported
    /// unavailable with the L1 probe's reason.
    #[arg(long, value_name = "ARCH")]
    pub linux_arch: Option<String>,
    /// Guest memory in MiB (default 512).
    #[arg(long, value_name = "MIB")]
    pub linux_memory: Option<u64>,
    /// Time limit in seconds: the whole L1 boot (nested), or split evenly over the modes'
    /// VMs, at least 10 s each (native). Default: estimated from the plan.
    #[arg(long, value_name = "S")]
    pub linux_timeout: Option<u64>,
}

impl BenchArgs {
    /// Arguments with every default (as `vpmu-vmm bench` with no flags).
    pub fn defaults() -> BenchArgs {
        BenchArgs {
            quick: false,
            out: PathBuf::from("target/bench"),
            reps: None,
            modes: "off,userspace,emulated,passthrough".into(),
            workloads: "loop,lfsr,chase".into(),
            activities: DEFAULT_ACTIVITIES.into(),
            iters: None,
            target_ms: None,
            guest_reps: None,
            chase_kib: 8192,
            msr_iters: None,
            time_budget: None,
            tsc_khz: None,
            json_only: false,
            no_progress: false,
            linux: false,
            linux_via: None,
            linux_seconds: None,
            linux_activities: None,
            linux_events: None,
            linux_image: None,
            linux_rig: None,
            linux_arch: None,
            linux_memory: None,
            linux_timeout: None,
        }
    }

    /// The --linux-* flags given without --linux.
    pub fn stray_linux_flags(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if !self.linux {
            let given = [
                ("--linux-via", self.linux_via.is_some()),
                ("--linux-seconds", self.linux_seconds.is_some()),
                ("--linux-activities", self.linux_activities.is_some()),
                ("--linux-events", self.linux_events.is_some()),
                ("--linux-image", self.linux_image.is_some()),
                ("--linux-rig", self.linux_rig.is_some()),
                ("--linux-arch", self.linux_arch.is_some()),
                ("--linux-memory", self.linux_memory.is_some()),
                ("--linux-timeout", self.linux_timeout.is_some()),
            ];
            v.extend(given.iter().filter(|g| g.1).map(|g| g.0));
        }
        v
    }

    /// Validated harness settings (the TSC frequency is filled in by the caller).
    pub fn settings(&self, tsc_khz: u64) -> Result<Settings, String> {
        let modes: Vec<Mode> = parse_list(&self.modes).map_err(|e| format!("--modes: {e}"))?;
        let workloads: Vec<Workload> =
            parse_list(&self.workloads).map_err(|e| format!("--workloads: {e}"))?;
        let activities: Vec<Activity> =
            parse_list(&self.activities).map_err(|e| format!("--activities: {e}"))?;
        let reps = self.reps.unwrap_or(if self.quick { 3 } else { 5 });
        if reps == 0 || reps > 1000 {
            return Err(format!("--reps {reps}: expected 1 to 1000"));
        }
        let guest_reps = self.guest_reps.unwrap_or(if self.quick { 1 } else { 3 });
        if guest_reps == 0 || guest_reps > 1000 {
            return Err(format!("--guest-reps {guest_reps}: expected 1 to 1000"));
        }
        if let Some(0) = self.iters {
            return Err("--iters must be at least 1".into());
        }
        let target_ms = self.target_ms.unwrap_or(if self.quick { 40 } else { 200 });
        if target_ms == 0 || target_ms > 60_000 {
            return Err(format!("--target-ms {target_ms}: expected 1 to 60000"));
        }
        if self.chase_kib == 0 || self.chase_kib > 128 * 1024 {
            return Err(format!(
                "--chase-kib {}: expected 1 to 131072",
                self.chase_kib
            ));
        }
        if tsc_khz == 0 {
            return Err("TSC frequency unknown (pass --tsc-khz)".into());
        }
        if self.time_budget == Some(0) {
            return Err("--time-budget must be at least 1 s".into());
        }
        Ok(Settings {
            reps,
            guest_reps,
            modes,
            workloads,
            activities,
            iters: self.iters,
            target_ms,
            tsc_khz,
            chase_buf_kib: self.chase_kib,
            msr_iters: self
                .msr_iters
                .unwrap_or(if self.quick { 5000 } else { 20_000 }),
            time_budget: crate::estimate::time_budget(self.quick, self.time_budget),
        })
    }
}

/// Test helper: the [`BenchArgs`] clap parses from `args` (given after a program name).
#[cfg(test)]
pub(crate) fn try_parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        b: BenchArgs,
    }
    let mut all = vec!["x"];
    all.extend_from_slice(args);
    Cli::try_parse_from(all).map(|c| c.b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_clap() {
        let b = try_parse(&[]).unwrap();
        let d = BenchArgs::defaults();
        assert_eq!(b.out, d.out);
        assert_eq!(b.modes, d.modes);
        assert_eq!(b.activities, d.activities);
        assert_eq!(b.chase_kib, d.chase_kib);
        let s = b.settings(2_900_000).unwrap();
        assert_eq!((s.reps, s.guest_reps), (5, 3));
        assert_eq!(s.modes.len(), 4);
        assert_eq!(s.activities.len(), 5);
        assert_eq!(s.target_ms, 200);
    }

    #[test]
    fn quick_and_errors() {
        let b = try_parse(&["--quick", "--modes", "off,userspace", "--out", "/tmp/b"]).unwrap();
        let s = b.settings(1).unwrap();
        assert_eq!(
            (s.reps, s.guest_reps, s.target_ms, s.msr_iters),
            (3, 1, 40, 5000)
        );
        let b = try_parse(&["--quick", "--reps", "7"]).unwrap();
        assert_eq!(b.settings(1).unwrap().reps, 7);
        for bad in [
            &["--modes", "fast"][..],
            &["--workloads", ""],
            &["--activities", "sample:0"],
            &["--reps", "0"],
            &["--iters", "0"],
        ] {
            let b = try_parse(bad).unwrap();
            assert!(b.settings(1).is_err(), "{bad:?}");
        }
        assert!(try_parse(&["--reps", "-1"]).is_err());
        assert!(BenchArgs::defaults().settings(0).is_err());
    }
}
