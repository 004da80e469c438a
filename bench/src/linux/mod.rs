//! `vpmu-vmm bench --linux`: `perf stat` / `perf record` inside a Linux guest, per vPMU mode.
//!
//! The guest is the L2 Linux image built by `resources/linux/build-image.sh` (bzImage +
//! initramfs with `perf` and `/bin/vpmu-work`). For every requested mode one VM boots and
//! its `/init` runs a generated shell script that times `/bin/vpmu-work` under each guest
//! activity (`none`, `perf stat`, `perf record -F HZ`), repetitions interleaved (every
//! activity once per pass, alternate passes reversed). The timed region is measured inside
//! the guest around the workload process only, inside perf's child (so neither boot nor
//! perf's own start-up and teardown are in it), with CLOCK_MONOTONIC nanoseconds read from
//! `/proc/timer_list` ("now at N nsecs"; busybox `date` has no `%N`).
//!
//! `vpmu-work S` spins until it has used S seconds of CPU time and prints how many rounds
//! (fixed units of work) it did, so the metric is **wall time per round**: perf's interrupt
//! handling and the perf process itself (which shares the one vCPU) both lengthen it.
//! Overhead % = per-round time of an activity over the `none` run of the same pass, in the
//! same VM.
//!
//! Two ways to run the guest (`--linux-via`):
//! - `native`: this binary's `run` subcommand on this host's /dev/kvm, one process per mode;
//! - `nested`: `resources/nested/run.sh --l1-cmd ...`: one QEMU TCG boot of the L1 Linux
//!   rig, in which a shell script runs `vpmu-vmm probe --json` and then one `vpmu-vmm run`
//!   per mode; the console is parsed. Everything measured that way is labelled
//!   [`TCG_LABEL`] and never mixed with native figures.
//!
//! `auto` picks `nested` when the host KVM is the PVM variant (`/sys/module/kvm_pvm`
//! exists: it cannot execute a guest kernel, shared/REFERENCE.md section 1) or /dev/kvm is
//! missing, and `native` otherwise.
//!
//! By concern: [`script`] writes what the guest and L1 run, [`parse`] reads their
//! consoles, [`run`](mod@run) spawns and times the VMs (native) or the nested rig, [`report`] turns
//! result lines into statistics and `linux.json`; `linux.md` is rendered by
//! [`crate::markdown::render_linux`], beside the freestanding report.

pub mod parse;
pub mod report;
pub mod run;
pub mod script;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::{parse_list, Mode};
use crate::BenchArgs;

pub use parse::*;
pub use report::*;
pub use run::run;
pub use script::*;

/// `schema` of `linux.json`.
pub const SCHEMA_NAME: &str = "vpmu-vmm-bench-linux";
/// `schema_version` of `linux.json`.
pub const SCHEMA_VERSION: u32 = 2;
/// The label of every figure measured through the nested rig.
pub const TCG_LABEL: &str = "TCG (nested): not comparable with native figures";
/// Marker of the guest's result lines.
pub const GUEST_MARK: &str = "VPMU-LBENCH";
/// Marker of the L1 script's lines.
pub const L1_MARK: &str = "VPMU-LBENCH-L1";
/// Default `--linux-activities`.
pub const DEFAULT_ACTIVITIES: &str = "none,stat,record:1000,record:10000";

/// How the Linux guest is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// Decide from the host (see the module documentation).
    Auto,
    /// This host's /dev/kvm.
    Native,
    /// The nested QEMU TCG rig.
    Nested,
}

impl FromStr for Via {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(Via::Auto),
            "native" => Ok(Via::Native),
            "nested" => Ok(Via::Nested),
            o => Err(format!(
                "unknown --linux-via '{o}' (expected auto, native or nested)"
            )),
        }
    }
}

/// Where the measured guest actually ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Environment {
    /// Directly on this host's KVM.
    #[serde(rename = "native")]
    Native,
    /// L2 under L1's KVM, L1 under QEMU TCG (software emulation).
    #[serde(rename = "nested-tcg")]
    NestedTcg,
}

impl Environment {
    /// The label every figure of this environment carries.
    pub fn label(self) -> &'static str {
        match self {
            Environment::Native => "native KVM",
            Environment::NestedTcg => TCG_LABEL,
        }
    }
}

/// What the guest does around the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinuxActivity {
    /// The workload alone: the baseline of its pass.
    None,
    /// `perf stat -j -e <events>` (counts as JSON lines).
    Stat,
    /// `perf record -e <event> -F HZ`.
    Record(u32),
}

impl fmt::Display for LinuxActivity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinuxActivity::None => f.write_str("none"),
            LinuxActivity::Stat => f.write_str("stat"),
            LinuxActivity::Record(hz) => write!(f, "record:{hz}"),
        }
    }
}

impl FromStr for LinuxActivity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "none" => Ok(LinuxActivity::None),
            "stat" => Ok(LinuxActivity::Stat),
            o => match o.strip_prefix("record:").map(str::parse::<u32>) {
                Some(Ok(hz)) if (1..=100_000).contains(&hz) => Ok(LinuxActivity::Record(hz)),
                _ => Err(format!(
                    "unknown Linux activity '{o}' (expected none, stat or record:HZ with HZ 1..100000)"
                )),
            },
        }
    }
}

impl Serialize for LinuxActivity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LinuxActivity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Which perf events the guest uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventChoice {
    /// Hardware events in modes that give the guest a PMU, software events in `off`.
    Auto,
    /// `task-clock` (stat) and `cpu-clock` (record) in every mode.
    Software,
    /// `cycles,instructions` (stat) and `cycles` (record) in every mode (fails in `off`).
    Hardware,
}

impl FromStr for EventChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(EventChoice::Auto),
            "software" | "sw" => Ok(EventChoice::Software),
            "hardware" | "hw" => Ok(EventChoice::Hardware),
            o => Err(format!(
                "unknown --linux-events '{o}' (expected auto, software or hardware)"
            )),
        }
    }
}

/// The events of one mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Events {
    /// `software` or `hardware`.
    pub kind: String,
    /// `perf stat -e` list.
    pub stat: String,
    /// `perf record -e` event.
    pub record: String,
}

/// The events used in `mode`.
pub fn events_for(mode: Mode, choice: EventChoice) -> Events {
    let hw = match choice {
        EventChoice::Auto => mode != Mode::Off,
        EventChoice::Software => false,
        EventChoice::Hardware => true,
    };
    if hw {
        Events {
            kind: "hardware".into(),
            stat: "cycles,instructions".into(),
            record: "cycles".into(),
        }
    } else {
        Events {
            kind: "software".into(),
            stat: "task-clock".into(),
            record: "cpu-clock".into(),
        }
    }
}

/// The guest's architecture (`--linux-arch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinuxArch {
    /// x86_64: resources/nested (or this host's KVM).
    X86_64,
    /// arm64: the arm64 nested rig only (run.sh --arch arm64).
    Arm64,
}

impl LinuxArch {
    /// The name `run.sh --arch` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            LinuxArch::X86_64 => "x86_64",
            LinuxArch::Arm64 => "arm64",
        }
    }

    /// The L2 kernel's path inside L1.
    pub fn l1_kernel(self) -> &'static str {
        match self {
            LinuxArch::X86_64 => "/l2/bzImage",
            LinuxArch::Arm64 => "/l2/Image",
        }
    }
}

impl FromStr for LinuxArch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "x86_64" | "x86" | "amd64" => Ok(LinuxArch::X86_64),
            "arm64" | "aarch64" => Ok(LinuxArch::Arm64),
            _ => Err(format!("--linux-arch {s}: expected x86_64 or arm64")),
        }
    }
}

/// Validated settings of a Linux-guest bench.
#[derive(Debug, Clone, PartialEq)]
pub struct LinuxSettings {
    pub arch: LinuxArch,
    pub via: Via,
    pub reps: u32,
    pub seconds: f64,
    pub modes: Vec<Mode>,
    pub activities: Vec<LinuxActivity>,
    pub events: EventChoice,
    pub memory_mib: u64,
    pub image_dir: PathBuf,
    pub rig: PathBuf,
    pub timeout_s: u64,
}

impl LinuxSettings {
    /// From the command line.
    pub fn from_args(a: &BenchArgs) -> Result<LinuxSettings, String> {
        let arch: LinuxArch = a.linux_arch.as_deref().unwrap_or("x86_64").parse()?;
        let via: Via = a.linux_via.as_deref().unwrap_or("auto").parse()?;
        if arch == LinuxArch::Arm64 && via == Via::Native {
            return Err(
                "--linux-arch arm64 runs under the arm64 nested rig only: --linux-via nested or auto"
                    .into(),
            );
        }
        if a.time_budget.is_some() {
            return Err(
                "--time-budget is for the freestanding matrix; --linux has --linux-timeout".into(),
            );
        }
        // --quick shortens the workload, not the passes: 5 per cell either way.
        let reps = a.reps.unwrap_or(5);
        if reps == 0 || reps > 100 {
            return Err(format!("--reps {reps}: expected 1 to 100 with --linux"));
        }
        let seconds = a.linux_seconds.unwrap_or(if a.quick { 0.3 } else { 1.0 });
        if !(0.01..=60.0).contains(&seconds) {
            return Err(format!("--linux-seconds {seconds}: expected 0.01 to 60"));
        }
        let mut modes: Vec<Mode> = parse_list(&a.modes).map_err(|e| format!("--modes: {e}"))?;
        if !modes.contains(&Mode::Off) {
            modes.insert(0, Mode::Off);
        }
        let mut activities: Vec<LinuxActivity> =
            parse_list(a.linux_activities.as_deref().unwrap_or(DEFAULT_ACTIVITIES))
                .map_err(|e| format!("--linux-activities: {e}"))?;
        activities.retain(|x| *x != LinuxActivity::None);
        activities.insert(0, LinuxActivity::None);
        let events: EventChoice = a.linux_events.as_deref().unwrap_or("auto").parse()?;
        let memory_mib = a.linux_memory.unwrap_or(512);
        if !(128..=16384).contains(&memory_mib) {
            return Err(format!(
                "--linux-memory {memory_mib}: expected 128 to 16384"
            ));
        }
        // Per mode: a boot (TCG: ~5-10 s), then each run: perf start-up (TCG: a few s)
        // plus the workload, slowed by what is measured; generous on purpose.
        let per_mode = 60.0 + (reps as f64) * (activities.len() as f64) * (15.0 + 6.0 * seconds);
        #[allow(clippy::cast_possible_truncation)] // seconds, a float estimate: saturating is fine
        let timeout_s = a
            .linux_timeout
            .unwrap_or((120.0 + per_mode * modes.len() as f64) as u64);
        Ok(LinuxSettings {
            arch,
            via,
            reps,
            seconds,
            modes,
            activities,
            events,
            memory_mib,
            image_dir: a
                .linux_image
                .clone()
                .unwrap_or_else(|| PathBuf::from("resources/out/linux")),
            rig: a
                .linux_rig
                .clone()
                .unwrap_or_else(|| PathBuf::from("resources/nested/run.sh")),
            timeout_s,
        })
    }
}

/// `auto`: nested when the host KVM is PVM (cannot run a guest kernel) or absent.
pub fn resolve_via(via: Via, sys_module: &Path, dev_kvm: &Path) -> (Environment, String) {
    match via {
        Via::Native => (Environment::Native, "--linux-via native".into()),
        Via::Nested => (Environment::NestedTcg, "--linux-via nested".into()),
        Via::Auto => {
            if sys_module.join("kvm_pvm").exists() {
                (
                    Environment::NestedTcg,
                    "auto: /sys/module/kvm_pvm exists (PVM KVM emulates guest CPL0 and cannot run a Linux kernel): nested rig".into(),
                )
            } else if !dev_kvm.exists() {
                (
                    Environment::NestedTcg,
                    format!("auto: {} missing: nested rig", dev_kvm.display()),
                )
            } else {
                (
                    Environment::Native,
                    "auto: /dev/kvm present and not PVM: native".into(),
                )
            }
        }
    }
}

/// The run order: `(pass, activity index)`, every activity once per pass, alternate
/// passes reversed. Passes count from 1.
pub fn plan(reps: u32, activities: usize) -> Vec<(u32, usize)> {
    let mut v = Vec::new();
    for p in 1..=reps {
        let mut idx: Vec<usize> = (0..activities).collect();
        if p % 2 == 0 {
            idx.reverse();
        }
        v.extend(idx.into_iter().map(|i| (p, i)));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> BenchArgs {
        crate::args::try_parse(v).unwrap()
    }

    #[test]
    fn settings_defaults_quick_and_errors() {
        let s = LinuxSettings::from_args(&args(&["--linux"])).unwrap();
        assert_eq!((s.via, s.reps, s.seconds), (Via::Auto, 5, 1.0));
        assert_eq!(s.modes, Mode::ALL.to_vec());
        assert_eq!(
            s.activities,
            vec![
                LinuxActivity::None,
                LinuxActivity::Stat,
                LinuxActivity::Record(1000),
                LinuxActivity::Record(10_000)
            ]
        );
        let s = LinuxSettings::from_args(&args(&[
            "--linux",
            "--quick",
            "--modes",
            "userspace",
            "--linux-activities",
            "record:99,none",
            "--linux-via",
            "nested",
        ]))
        .unwrap();
        assert_eq!((s.via, s.reps, s.seconds), (Via::Nested, 5, 0.3));
        // off is always there (the comparison row); none always first.
        assert_eq!(s.modes, vec![Mode::Off, Mode::Userspace]);
        assert_eq!(
            s.activities,
            vec![LinuxActivity::None, LinuxActivity::Record(99)]
        );
        let s = LinuxSettings::from_args(&args(&["--linux", "--linux-arch", "aarch64"])).unwrap();
        assert_eq!(
            (s.arch, s.arch.l1_kernel()),
            (LinuxArch::Arm64, "/l2/Image")
        );
        assert_eq!(s.arch.as_str(), "arm64");
        for bad in [
            vec!["--linux", "--linux-arch", "arm64", "--linux-via", "native"],
            vec!["--linux", "--linux-arch", "riscv"],
            vec!["--linux", "--linux-via", "tcg"],
            vec!["--linux", "--linux-activities", "record:0"],
            vec!["--linux", "--linux-activities", "perf"],
            vec!["--linux", "--linux-events", "pebs"],
            vec!["--linux", "--linux-seconds", "0"],
            vec!["--linux", "--reps", "0"],
            vec!["--linux", "--linux-memory", "16"],
            vec!["--linux", "--time-budget", "60"],
        ] {
            assert!(LinuxSettings::from_args(&args(&bad)).is_err(), "{bad:?}");
        }
        assert_eq!(
            args(&["--linux-via", "nested", "--linux-seconds", "2"]).stray_linux_flags(),
            vec!["--linux-via", "--linux-seconds"]
        );
        assert!(args(&["--linux", "--linux-via", "nested"])
            .stray_linux_flags()
            .is_empty());
    }

    #[test]
    fn auto_via_rule() {
        let d = std::env::temp_dir().join(format!("linux-via-{}", std::process::id()));
        let sys = d.join("module");
        std::fs::create_dir_all(sys.join("kvm")).unwrap();
        let kvm = d.join("kvm");
        std::fs::write(&kvm, "").unwrap();
        assert_eq!(resolve_via(Via::Auto, &sys, &kvm).0, Environment::Native);
        assert_eq!(
            resolve_via(Via::Auto, &sys, &d.join("nokvm")).0,
            Environment::NestedTcg
        );
        std::fs::create_dir_all(sys.join("kvm_pvm")).unwrap();
        let (e, why) = resolve_via(Via::Auto, &sys, &kvm);
        assert_eq!(e, Environment::NestedTcg);
        assert!(why.contains("kvm_pvm"), "{why}");
        assert_eq!(resolve_via(Via::Native, &sys, &kvm).0, Environment::Native);
        assert_eq!(
            resolve_via(Via::Nested, &sys, &kvm).0,
            Environment::NestedTcg
        );
        let _ = std::fs::remove_dir_all(&d);
        assert_eq!(Environment::NestedTcg.label(), TCG_LABEL);
        assert_eq!(
            serde_json::to_value(Environment::NestedTcg).unwrap(),
            "nested-tcg"
        );
    }

    #[test]
    fn events_by_mode() {
        assert_eq!(events_for(Mode::Off, EventChoice::Auto).record, "cpu-clock");
        assert_eq!(events_for(Mode::Off, EventChoice::Auto).stat, "task-clock");
        let hw = events_for(Mode::Userspace, EventChoice::Auto);
        assert_eq!(
            (hw.stat.as_str(), hw.record.as_str()),
            ("cycles,instructions", "cycles")
        );
        assert_eq!(
            events_for(Mode::Passthrough, EventChoice::Software).kind,
            "software"
        );
        assert_eq!(
            events_for(Mode::Off, EventChoice::Hardware).kind,
            "hardware"
        );
    }

    #[test]
    fn plan_interleaves_and_reverses() {
        assert_eq!(
            plan(3, 3),
            vec![
                (1, 0),
                (1, 1),
                (1, 2),
                (2, 2),
                (2, 1),
                (2, 0),
                (3, 0),
                (3, 1),
                (3, 2)
            ]
        );
        assert!(plan(0, 4).is_empty());
    }
}
