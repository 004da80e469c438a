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

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::model::{parse_list, Mode};
use crate::report::Versions;
use crate::stats::{overhead_pct, Summary};
use crate::BenchArgs;

/// `schema` of `linux.json`.
pub const SCHEMA_NAME: &str = "vpmu-vmm-bench-linux";
/// `schema_version` of `linux.json`.
pub const SCHEMA_VERSION: u32 = 1;
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
    /// `perf stat -e <events>`.
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

/// Validated settings of a Linux-guest bench.
#[derive(Debug, Clone, PartialEq)]
pub struct LinuxSettings {
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
        let via: Via = a.linux_via.as_deref().unwrap_or("auto").parse()?;
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
        let timeout_s = a
            .linux_timeout
            .unwrap_or((120.0 + per_mode * modes.len() as f64) as u64);
        Ok(LinuxSettings {
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

/// Standard base64 with padding (what /init's `base64 -d` reads).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// The shell script the guest's /init runs (`vpmu.cmd=`): writes the timing wrapper
/// `/tmp/w`, warms up, then runs the plan and prints one `VPMU-LBENCH c=P.I ...` line per
/// run.
pub fn guest_script(seconds: f64, reps: u32, activities: &[LinuxActivity], ev: &Events) -> String {
    let secs = format!("{seconds}");
    let mut s = String::new();
    // The timed region: the workload process, from inside perf's child.
    s.push_str("cat >/tmp/w <<'E'\n");
    s.push_str("t(){ sed -n 's/^now at \\([0-9]*\\) nsecs$/\\1/p;3q' /proc/timer_list;}\n");
    s.push_str(
        "a=$(t);/bin/vpmu-work $1>/tmp/o;b=$(t);echo \"ns=$((b-a)) $(cat /tmp/o)\">/tmp/t\n",
    );
    s.push_str("E\n");
    s.push_str("m=/proc/sys/kernel/perf_event_max_sample_rate;d=$(cat $m)\n");
    s.push_str(&format!(
        "echo \"{GUEST_MARK} pmu=$(ls /sys/bus/event_source/devices|tr '\\n' ,) msr=$d\"\n"
    ));
    // Warm-up (not measured): perf and the workload once each.
    s.push_str("perf stat -e task-clock true >/dev/null 2>&1;sh /tmp/w 0.05\n");
    let order: Vec<String> = plan(reps, activities.len())
        .into_iter()
        .map(|(p, i)| format!("{p}.{i}"))
        .collect();
    s.push_str(&format!(
        "for c in {};do rm -f /tmp/t /tmp/e /tmp/p;echo $d>$m;case ${{c#*.}} in\n",
        order.join(" ")
    ));
    for (i, a) in activities.iter().enumerate() {
        let cmd = match a {
            LinuxActivity::None => format!("sh /tmp/w {secs}"),
            LinuxActivity::Stat => {
                format!("perf stat -x, -e {} -o /tmp/e sh /tmp/w {secs}", ev.stat)
            }
            LinuxActivity::Record(hz) => format!(
                "perf record -e {} -F {hz} -o /tmp/p sh /tmp/w {secs} 2>/tmp/e",
                ev.record
            ),
        };
        s.push_str(&format!("{i}){cmd};;\n"));
    }
    s.push_str(&format!(
        "esac;x=$?;echo \"{GUEST_MARK} c=$c x=$x $(cat /tmp/t 2>/dev/null) msr=$(cat $m) perf: $(grep -v '^#' /tmp/e 2>/dev/null|tr '\\n' ';')\";done\n"
    ));
    s
}

/// The L2 kernel command line: `base` plus the script as `vpmu.cmd=<base64>`.
pub fn l2_cmdline(base: &str, script: &str) -> String {
    format!("{} vpmu.cmd={}", base.trim(), base64(script.as_bytes()))
}

/// Single-quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The vpmu-vmm arguments of one mode's VM (after the binary).
pub fn vmm_args(
    kernel: &str,
    initrd: &str,
    memory_mib: u64,
    mode: Mode,
    cmdline: &str,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--kernel".into(),
        kernel.into(),
        "--initrd".into(),
        initrd.into(),
        "--memory".into(),
        format!("{memory_mib}M"),
        "--pmu".into(),
        mode.pmu_str().into(),
    ];
    if mode.audits() {
        args.extend(["--pmu-audit".into(), "/tmp/vpmu-audit.jsonl".into()]);
    }
    args.extend(["--cmdline".into(), cmdline.into()]);
    args
}

/// The L1 shell script of a nested run: the probe, then one vpmu-vmm run per mode, each
/// between `VPMU-LBENCH-L1 mode-begin M` / `mode-end M <status>` lines.
pub fn l1_script(runs: &[(Mode, Vec<String>)]) -> String {
    let mut s = format!(
        "echo '{L1_MARK} probe-begin';/bin/vpmu-vmm probe --json;echo \"{L1_MARK} probe-end $?\"\n"
    );
    for (mode, args) in runs {
        let line: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
        s.push_str(&format!(
            "echo '{L1_MARK} mode-begin {mode}';/bin/vpmu-vmm {};echo \"{L1_MARK} mode-end {mode} $?\"\n",
            line.join(" ")
        ));
    }
    s
}

/// One parsed guest result line.
#[derive(Debug, Clone, PartialEq)]
pub struct RepLine {
    pub pass: u32,
    pub activity: usize,
    pub exit: Option<i32>,
    pub region_ns: Option<u64>,
    pub rounds: Option<u64>,
    pub cpu_s: Option<f64>,
    pub max_sample_rate: Option<u64>,
    pub perf: String,
}

fn field<'a>(s: &'a str, key: &str) -> Option<&'a str> {
    s.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Parses a `VPMU-LBENCH c=P.I x=X ns=N vpmu-work: R rounds in C s cpu msr=M perf: ...`
/// line (the marker may be preceded by other console text); `None` for other lines,
/// including the `pmu=` line.
pub fn parse_rep_line(line: &str) -> Option<RepLine> {
    let at = line.find(&format!("{GUEST_MARK} c="))?;
    let rest = &line[at + GUEST_MARK.len()..];
    let (head, perf) = match rest.find(" perf:") {
        Some(i) => (&rest[..i], rest[i + 6..].trim()),
        None => (rest, ""),
    };
    let (p, i) = field(head, "c")?.split_once('.')?;
    let (pass, activity) = (p.parse().ok()?, i.parse().ok()?);
    let words: Vec<&str> = head.split_whitespace().collect();
    let (mut rounds, mut cpu_s) = (None, None);
    if let Some(k) = words.iter().position(|w| *w == "rounds") {
        if k >= 1 && words.get(k + 1) == Some(&"in") {
            rounds = words[k - 1].parse().ok();
            cpu_s = words.get(k + 2).and_then(|w| w.parse().ok());
        }
    }
    Some(RepLine {
        pass,
        activity,
        exit: field(head, "x").and_then(|v| v.parse().ok()),
        region_ns: field(head, "ns").and_then(|v| v.parse().ok()),
        rounds,
        cpu_s,
        max_sample_rate: field(head, "msr").and_then(|v| v.parse().ok()),
        perf: perf.to_string(),
    })
}

/// `perf record`'s sample count: "... (1234 samples) ]".
pub fn record_samples(perf: &str) -> Option<u64> {
    let i = perf.find(" samples)")?;
    let head = &perf[..i];
    let start = head.rfind('(')? + 1;
    head[start..].trim().parse().ok()
}

/// The guest's `pmu=` line: the event sources it lists (`cpu` = a core PMU).
pub fn parse_pmu_line(line: &str) -> Option<Vec<String>> {
    let at = line.find(&format!("{GUEST_MARK} pmu="))?;
    let v = field(&line[at..], "pmu")?;
    Some(
        v.split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    )
}

/// One mode's part of the console.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Section {
    pub lines: Vec<String>,
    pub exit: Option<i32>,
}

/// A nested run's console, split up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct L1Console {
    /// The text between `probe-begin` and `probe-end`.
    pub probe_json: Option<String>,
    pub probe_exit: Option<i32>,
    pub modes: Vec<(Mode, Section)>,
}

/// Splits the L1 console by the `VPMU-LBENCH-L1` markers.
pub fn parse_l1_console(text: &str) -> L1Console {
    let mut c = L1Console::default();
    let mut probe: Option<String> = None;
    let mut cur: Option<(Mode, Section)> = None;
    for line in text.lines() {
        if let Some(at) = line.find(L1_MARK) {
            let w: Vec<&str> = line[at + L1_MARK.len()..].split_whitespace().collect();
            match w.as_slice() {
                ["probe-begin", ..] => probe = Some(String::new()),
                ["probe-end", st, ..] => {
                    c.probe_json = probe.take();
                    c.probe_exit = st.parse().ok();
                }
                ["mode-begin", m, ..] => {
                    if let Ok(m) = m.parse() {
                        cur = Some((m, Section::default()));
                    }
                }
                ["mode-end", m, st, ..] => {
                    if let Some((mode, mut sec)) = cur.take() {
                        if m.parse::<Mode>().ok() == Some(mode) {
                            sec.exit = st.parse().ok();
                        }
                        c.modes.push((mode, sec));
                    }
                }
                _ => {}
            }
            continue;
        }
        if let Some(p) = probe.as_mut() {
            p.push_str(line);
            p.push('\n');
        } else if let Some((_, sec)) = cur.as_mut() {
            sec.lines.push(line.to_string());
        }
    }
    if let Some(s) = cur {
        c.modes.push(s); // L1 ended (or timed out) inside this mode
    }
    c
}

/// `{mode: (available, reason)}` from `vpmu-vmm probe --json`.
pub fn probe_modes(probe: &serde_json::Value) -> Vec<(String, bool, Option<String>)> {
    probe["modes"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| {
                    let name = m["mode"].as_str()?.to_string();
                    let av = &m["availability"];
                    let ok = av["status"].as_str() == Some("available");
                    let reason = av["reason"].as_str().map(String::from);
                    Some((name, ok, reason))
                })
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Report

/// `linux.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinuxReport {
    pub schema: String,
    pub schema_version: u32,
    /// `native` or `nested-tcg`.
    pub environment: Environment,
    /// `native KVM` or [`TCG_LABEL`].
    pub environment_label: String,
    /// False for `nested-tcg`: never compare these figures with native ones.
    pub comparable_with_native: bool,
    /// Why this environment (`--linux-via` or the auto rule).
    pub via_reason: String,
    pub generated_at: String,
    pub duration_s: f64,
    pub command_line: Vec<String>,
    pub versions: Versions,
    pub host: LinuxHost,
    pub config: LinuxConfig,
    pub modes: Vec<ModeResult>,
    pub cells: Vec<LinuxCell>,
}

/// The machine the bench ran on, and the environment that ran the guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinuxHost {
    pub cpu_model: Option<String>,
    pub cpus: Option<usize>,
    pub kernel: Option<String>,
    pub kvm_modules: Vec<String>,
    pub loadavg_start: Option<String>,
    pub loadavg_end: Option<String>,
    /// `vpmu-vmm probe --json` where the guest ran (native: this host; nested: inside L1).
    pub guest_env_probe: Option<serde_json::Value>,
    pub guest_env_probe_error: Option<String>,
    /// Whole wall time of the L1 boot (nested) or of all VM runs (native), seconds.
    pub outer_wall_s: Option<f64>,
}

/// What was asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinuxConfig {
    pub quick: bool,
    pub reps: u32,
    /// `vpmu-work` CPU seconds per run.
    pub workload_cpu_s: f64,
    pub modes: Vec<Mode>,
    pub activities: Vec<LinuxActivity>,
    pub events: EventChoice,
    pub guest_memory_mib: u64,
    pub vcpus: u32,
    pub kernel: String,
    pub initrd: String,
    pub l2_cmdline_base: String,
    pub order: String,
    pub metric: String,
}

/// One mode's VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModeResult {
    pub mode: Mode,
    /// `ok`, `unavailable`, `failed`.
    pub status: String,
    pub reason: Option<String>,
    pub events: Events,
    /// vpmu-vmm's exit status.
    pub vmm_exit: Option<i32>,
    /// Event sources the guest lists under /sys/bus/event_source/devices.
    pub guest_event_sources: Option<Vec<String>>,
    /// `perf_event_max_sample_rate` at boot in the guest.
    pub guest_max_sample_rate: Option<u64>,
    /// Wall time of this mode's vpmu-vmm run (native only; null in nested runs).
    pub vm_wall_s: Option<f64>,
}

/// One run of a cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinuxRun {
    pub pass: u32,
    pub exit: i32,
    pub region_ns: u64,
    pub rounds: u64,
    pub cpu_s: Option<f64>,
    pub ns_per_round: f64,
    /// `perf record`'s "(N samples)".
    pub samples: Option<u64>,
    /// `perf_event_max_sample_rate` after the run (reset before each run; lower = the
    /// guest kernel throttled sampling because its interrupt took too long).
    pub max_sample_rate_after: Option<u64>,
    /// perf's output (stat: CSV, record: its stderr), lines joined with `;`.
    pub perf_output: String,
    /// `perf stat -x,` counts: `[event, value]` (value as perf printed it, e.g.
    /// `<not supported>`); empty for other activities.
    pub stat_counts: Vec<(String, String)>,
}

/// Expected `perf record` samples of a run: the workload's own CPU time (vpmu-work's
/// figure; the timed region when it is missing) x HZ.
pub fn expected_samples(r: &LinuxRun, hz: u32) -> f64 {
    r.cpu_s.unwrap_or(r.region_ns as f64 / 1e9) * f64::from(hz)
}

/// `perf stat -x,` records (`value,unit,event,run time,%,...`, records separated by `;`
/// or newlines): `[event, value]`.
pub fn stat_counts(perf: &str) -> Vec<(String, String)> {
    perf.split([';', '\n'])
        .filter_map(|rec| {
            let f: Vec<&str> = rec.trim().split(',').collect();
            let (v, ev) = (f.first()?.trim(), f.get(2)?.trim());
            (!v.is_empty() && !ev.is_empty()).then(|| (ev.to_string(), v.to_string()))
        })
        .collect()
}

/// One (mode, activity).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinuxCell {
    pub mode: Mode,
    pub activity: LinuxActivity,
    /// The perf command's events (null for `none`).
    pub events: Option<String>,
    pub status: String,
    pub reason: Option<String>,
    pub runs: Vec<LinuxRun>,
    pub failures: Vec<String>,
    pub summary: Option<LinuxSummary>,
}

/// Statistics of a cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinuxSummary {
    pub region_ms: Summary,
    pub ns_per_round: Summary,
    pub rounds: Summary,
    /// Per-round time over the `none` run of the same pass and VM, %; null for `none`.
    pub overhead_pct: Option<Summary>,
    /// `none` cells of modes other than `off`: per-round time over `off`'s `none` run of
    /// the same pass (a different VM boot, run before or after), %.
    pub vs_off_pct: Option<Summary>,
    pub samples: Option<Summary>,
    /// The workload's CPU seconds x HZ (see [`expected_samples`]).
    pub expected_samples: Option<Summary>,
    pub sample_accuracy_pct: Option<Summary>,
    /// Runs after which the guest had lowered perf_event_max_sample_rate below HZ.
    pub throttled_runs: Option<usize>,
}

/// Builds the cells of one mode from its guest lines.
pub fn mode_cells(
    mode: Mode,
    acts: &[LinuxActivity],
    ev: &Events,
    lines: &[RepLine],
) -> Vec<LinuxCell> {
    acts.iter()
        .enumerate()
        .map(|(i, a)| {
            let mut runs = Vec::new();
            let mut failures = Vec::new();
            for l in lines.iter().filter(|l| l.activity == i) {
                match (l.exit, l.region_ns, l.rounds) {
                    (Some(0), Some(ns), Some(r)) if ns > 0 && r > 0 => runs.push(LinuxRun {
                        pass: l.pass,
                        exit: 0,
                        region_ns: ns,
                        rounds: r,
                        cpu_s: l.cpu_s,
                        ns_per_round: ns as f64 / r as f64,
                        samples: match a {
                            LinuxActivity::Record(_) => record_samples(&l.perf),
                            _ => None,
                        },
                        max_sample_rate_after: l.max_sample_rate,
                        perf_output: l.perf.clone(),
                        stat_counts: match a {
                            LinuxActivity::Stat => stat_counts(&l.perf),
                            _ => Vec::new(),
                        },
                    }),
                    _ => failures.push(format!(
                        "pass {}: exit {:?}, ns {:?}, rounds {:?}: {}",
                        l.pass, l.exit, l.region_ns, l.rounds, l.perf
                    )),
                }
            }
            runs.sort_by_key(|r| r.pass);
            let (status, reason) = if runs.is_empty() {
                (
                    "failed".to_string(),
                    Some(
                        failures
                            .first()
                            .cloned()
                            .unwrap_or_else(|| "no result line from the guest".into()),
                    ),
                )
            } else {
                ("ok".to_string(), None)
            };
            LinuxCell {
                mode,
                activity: *a,
                events: match a {
                    LinuxActivity::None => None,
                    LinuxActivity::Stat => Some(ev.stat.clone()),
                    LinuxActivity::Record(_) => Some(ev.record.clone()),
                },
                status,
                reason,
                runs,
                failures,
                summary: None,
            }
        })
        .collect()
}

/// An `unavailable` or `failed` cell per activity.
pub fn dead_cells(
    mode: Mode,
    acts: &[LinuxActivity],
    status: &str,
    reason: &str,
) -> Vec<LinuxCell> {
    acts.iter()
        .map(|a| LinuxCell {
            mode,
            activity: *a,
            events: None,
            status: status.into(),
            reason: Some(reason.into()),
            runs: Vec::new(),
            failures: Vec::new(),
            summary: None,
        })
        .collect()
}

fn paired(base: &[LinuxRun], runs: &[LinuxRun]) -> Vec<f64> {
    runs.iter()
        .filter_map(|r| {
            let b = base.iter().find(|b| b.pass == r.pass)?;
            overhead_pct(b.ns_per_round, r.ns_per_round)
        })
        .collect()
}

/// Fills in every cell's summary: overhead vs the `none` run of the same pass and mode,
/// and for other modes' `none` cells the comparison with `off`'s.
pub fn summarise(cells: &mut [LinuxCell]) {
    let none_runs = |cells: &[LinuxCell], m: Mode| -> Option<Vec<LinuxRun>> {
        cells
            .iter()
            .find(|c| c.mode == m && c.activity == LinuxActivity::None && c.status == "ok")
            .map(|c| c.runs.clone())
    };
    let off = none_runs(cells, Mode::Off);
    let bases: Vec<Option<Vec<LinuxRun>>> =
        cells.iter().map(|c| none_runs(cells, c.mode)).collect();
    for (c, base) in cells.iter_mut().zip(bases) {
        if c.runs.is_empty() {
            continue;
        }
        let f = |g: fn(&LinuxRun) -> f64| -> Vec<f64> { c.runs.iter().map(g).collect() };
        let region_ms = Summary::of(&f(|r| r.region_ns as f64 / 1e6));
        let npr = Summary::of(&f(|r| r.ns_per_round));
        let rounds = Summary::of(&f(|r| r.rounds as f64));
        let (Some(region_ms), Some(ns_per_round), Some(rounds)) = (region_ms, npr, rounds) else {
            continue;
        };
        let overhead = match (c.activity, &base) {
            (LinuxActivity::None, _) | (_, None) => None,
            (_, Some(b)) => Summary::of(&paired(b, &c.runs)),
        };
        let vs_off = match (c.activity, c.mode, &off) {
            (LinuxActivity::None, m, Some(o)) if m != Mode::Off => Summary::of(&paired(o, &c.runs)),
            _ => None,
        };
        let (mut samples, mut expected, mut acc, mut throttled) = (None, None, None, None);
        if let LinuxActivity::Record(hz) = c.activity {
            let s: Vec<f64> = c
                .runs
                .iter()
                .filter_map(|r| r.samples.map(|x| x as f64))
                .collect();
            let e: Vec<f64> = c.runs.iter().map(|r| expected_samples(r, hz)).collect();
            let a: Vec<f64> = c
                .runs
                .iter()
                .filter_map(|r| {
                    r.samples
                        .map(|s| s as f64 / expected_samples(r, hz) * 100.0)
                })
                .collect();
            samples = Summary::of(&s);
            expected = Summary::of(&e);
            acc = Summary::of(&a);
            throttled = Some(
                c.runs
                    .iter()
                    .filter(|r| r.max_sample_rate_after.is_some_and(|m| m < u64::from(hz)))
                    .count(),
            );
        }
        c.summary = Some(LinuxSummary {
            region_ms,
            ns_per_round,
            rounds,
            overhead_pct: overhead,
            vs_off_pct: vs_off,
            samples,
            expected_samples: expected,
            sample_accuracy_pct: acc,
            throttled_runs: throttled,
        });
    }
}

// ---------------------------------------------------------------------------------------
// Markdown

fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn pct(x: f64) -> String {
    format!("{}{}%", if x >= 0.0 { "+" } else { "" }, num(x))
}

/// `+12.3% [+10.1..+15.0]`.
pub fn fmt_pct(s: &Summary) -> String {
    let sign = |x: f64| format!("{}{}", if x >= 0.0 { "+" } else { "" }, num(x));
    format!("{} [{}..{}]", pct(s.median), sign(s.min), sign(s.max))
}

fn fmt_sum(s: &Summary) -> String {
    format!("{} [{}..{}]", num(s.median), num(s.min), num(s.max))
}

/// `linux.md`.
pub fn render(r: &LinuxReport) -> String {
    let tcg = r.environment == Environment::NestedTcg;
    let mut md = String::new();
    md.push_str(&format!(
        "### Linux-guest perf overhead ({})\n\n",
        r.environment_label
    ));
    if tcg {
        md.push_str(&format!(
            "**{TCG_LABEL}.** The guest (L2) ran under KVM inside an L1 Linux that QEMU emulates in software (TCG): every instruction, guest user code included, is emulated, and there is no hardware PMU at any level. These figures describe the rig, not a production host.\n\n"
        ));
    }
    md.push_str(&format!(
        "- environment: `{}` ({})\n",
        serde_json::to_value(r.environment)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        r.via_reason
    ));
    md.push_str(&format!(
        "- generated: {} ({:.0} s)\n- command: `{}`\n",
        r.generated_at,
        r.duration_s,
        r.command_line.join(" ")
    ));
    let h = &r.host;
    md.push_str(&format!(
        "- host: {} ({} CPUs), kernel {}, KVM modules: {}\n",
        h.cpu_model.as_deref().unwrap_or("unknown CPU"),
        h.cpus.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
        h.kernel.as_deref().unwrap_or("?"),
        h.kvm_modules.join(", ")
    ));
    md.push_str(&format!(
        "- versions: vpmu-vmm {}, {}\n",
        r.versions.vpmu_vmm,
        r.versions.rustc.as_deref().unwrap_or("rustc ?")
    ));
    md.push_str(&format!(
        "- load average (1/5/15 min): {} at start, {} at end\n",
        h.loadavg_start.as_deref().unwrap_or("?"),
        h.loadavg_end.as_deref().unwrap_or("?")
    ));
    let c = &r.config;
    md.push_str(&format!(
        "- guest: `{}` + `{}`, {} MiB, {} vCPU; workload `/bin/vpmu-work {}` ({} s of CPU time per run); {} runs per cell, {}\n",
        c.kernel, c.initrd, c.guest_memory_mib, c.vcpus, c.workload_cpu_s, c.workload_cpu_s, c.reps, c.order
    ));
    md.push_str(&format!("- metric: {}\n", c.metric));
    if let Some(p) = &h.guest_env_probe {
        let mods: Vec<&str> = p["host"]["kvm_modules"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        md.push_str(&format!(
            "- `vpmu-vmm probe` where the guest ran{}: {}, KVM modules {}, hardware PMU: {}\n",
            if tcg { " (inside L1)" } else { "" },
            p["host"]["cpu_model"].as_str().unwrap_or("?"),
            mods.join(", "),
            match p["hardware_pmu"].as_bool() {
                Some(true) => "yes",
                Some(false) => "no",
                None => "?",
            }
        ));
    }
    if let Some(e) = &h.guest_env_probe_error {
        md.push_str(&format!("- probe where the guest ran: failed: {e}\n"));
    }
    if c.reps < 5 {
        md.push_str("- fewer than 5 runs per cell: indicative only\n");
    }
    md.push('\n');

    // Overhead table: rows = mode, columns = activities.
    let acts = &c.activities;
    md.push_str(&format!(
        "#### Workload time overhead vs no perf, same VM ({})\n\n",
        r.environment_label
    ));
    md.push_str("Wall time per workload round, median [min..max] over the passes; `none`: absolute ms per round; other columns: % over the `none` run of the same pass.\n\n");
    md.push_str("| mode | events (stat / record) |");
    for a in acts {
        md.push_str(&format!(" {} |", act_title(*a)));
    }
    md.push_str("\n|---|---|");
    md.push_str(&"---|".repeat(acts.len()));
    md.push('\n');
    for m in &r.modes {
        if m.status == "unavailable" {
            md.push_str(&format!(
                "| {} | — | unavailable: {} |{}\n",
                m.mode,
                m.reason.as_deref().unwrap_or("?"),
                " — |".repeat(acts.len().saturating_sub(1))
            ));
            continue;
        }
        md.push_str(&format!(
            "| {} | {} / {} |",
            m.mode, m.events.stat, m.events.record
        ));
        for a in acts {
            let cell = r
                .cells
                .iter()
                .find(|x| x.mode == m.mode && x.activity == *a);
            let txt = match cell {
                None => "—".to_string(),
                Some(x) if x.status != "ok" => {
                    format!(
                        "{}: {}",
                        x.status,
                        x.reason.as_deref().unwrap_or("?").replace('|', "\\|")
                    )
                }
                Some(x) => match (&x.summary, x.activity) {
                    (Some(s), LinuxActivity::None) => {
                        format!("{} ms", fmt_sum(&s.ns_per_round.map(|v| v / 1e6)))
                    }
                    (Some(s), _) => s.overhead_pct.as_ref().map(fmt_pct).unwrap_or("—".into()),
                    (None, _) => "—".into(),
                },
            };
            md.push_str(&format!(" {txt} |"));
        }
        md.push('\n');
    }
    md.push('\n');

    // Mode baselines vs off.
    let vs: Vec<&LinuxCell> = r
        .cells
        .iter()
        .filter(|x| {
            x.activity == LinuxActivity::None
                && x.summary.as_ref().is_some_and(|s| s.vs_off_pct.is_some())
        })
        .collect();
    if !vs.is_empty() {
        md.push_str("#### Mode baselines (no perf) vs `off`\n\nPer-round time of the mode's `none` runs over `off`'s `none` run of the same pass (different VM boots).\n\n| mode | vs off |\n|---|---|\n");
        for x in vs {
            if let Some(s) = x.summary.as_ref().and_then(|s| s.vs_off_pct.as_ref()) {
                md.push_str(&format!("| {} | {} |\n", x.mode, fmt_pct(s)));
            }
        }
        md.push('\n');
    }

    // Sampling.
    let rec: Vec<&LinuxCell> = r
        .cells
        .iter()
        .filter(|x| matches!(x.activity, LinuxActivity::Record(_)) && x.summary.is_some())
        .collect();
    if !rec.is_empty() {
        md.push_str("#### perf record: samples written vs expected\n\nExpected = the workload's own CPU time (as vpmu-work reports it) x frequency. Throttled = runs after which the guest kernel had lowered `perf_event_max_sample_rate` below the requested frequency (reset before every run).\n\n| mode | event | frequency | samples | expected | accuracy % | throttled runs |\n|---|---|---|---|---|---|---|\n");
        for x in rec {
            let s = x.summary.as_ref().expect("filtered");
            let hz = match x.activity {
                LinuxActivity::Record(hz) => hz,
                _ => 0,
            };
            md.push_str(&format!(
                "| {} | {} | {} Hz | {} | {} | {} | {}/{} |\n",
                x.mode,
                x.events.as_deref().unwrap_or("?"),
                hz,
                s.samples
                    .as_ref()
                    .map(|v| num(v.median))
                    .unwrap_or("—".into()),
                s.expected_samples
                    .as_ref()
                    .map(|v| num(v.median))
                    .unwrap_or("—".into()),
                s.sample_accuracy_pct
                    .as_ref()
                    .map(fmt_sum)
                    .unwrap_or("—".into()),
                s.throttled_runs.unwrap_or(0),
                x.runs.len()
            ));
        }
        md.push('\n');
    }

    // perf stat counts.
    let stats: Vec<&LinuxCell> = r
        .cells
        .iter()
        .filter(|x| {
            x.activity == LinuxActivity::Stat && x.runs.iter().any(|r| !r.stat_counts.is_empty())
        })
        .collect();
    if !stats.is_empty() {
        md.push_str("#### perf stat counts\n\nWhat `perf stat -x,` printed in the guest, median [min..max] over the runs, and the median per second of the workload's CPU time (a sanity check: task-clock should give ~1000 ms/s, cycles a clock rate).\n\n| mode | event | count | per CPU second |\n|---|---|---|---|\n");
        for x in stats {
            let mut events: Vec<&str> = Vec::new();
            for r in &x.runs {
                for (e, _) in &r.stat_counts {
                    if !events.contains(&e.as_str()) {
                        events.push(e);
                    }
                }
            }
            for e in events {
                let vals: Vec<(f64, Option<f64>)> = x
                    .runs
                    .iter()
                    .filter_map(|r| {
                        let v = r
                            .stat_counts
                            .iter()
                            .find(|c| c.0 == e)?
                            .1
                            .parse::<f64>()
                            .ok()?;
                        Some((v, r.cpu_s.filter(|c| *c > 0.0).map(|c| v / c)))
                    })
                    .collect();
                let count = Summary::of(&vals.iter().map(|v| v.0).collect::<Vec<_>>());
                let rate = Summary::of(&vals.iter().filter_map(|v| v.1).collect::<Vec<_>>());
                let raw = || {
                    x.runs
                        .iter()
                        .find_map(|r| r.stat_counts.iter().find(|c| c.0 == e).map(|c| c.1.clone()))
                        .unwrap_or_default()
                };
                md.push_str(&format!(
                    "| {} | {} | {} | {} |\n",
                    x.mode,
                    e,
                    count.map(|c| fmt_count(&c)).unwrap_or_else(raw),
                    rate.map(|c| fmt_big(c.median)).unwrap_or("—".into())
                ));
            }
        }
        md.push('\n');
    }

    // Failures.
    let fails: Vec<String> = r
        .cells
        .iter()
        .flat_map(|x| {
            x.failures
                .iter()
                .map(move |f| format!("- {} {}: {f}", x.mode, x.activity))
        })
        .collect();
    if !fails.is_empty() {
        md.push_str("#### Failed runs\n\n");
        md.push_str(&fails.join("\n"));
        md.push_str("\n\n");
    }
    md
}

fn fmt_big(x: f64) -> String {
    if x.abs() >= 1e6 {
        format!("{x:.3e}")
    } else {
        num(x)
    }
}

fn fmt_count(s: &Summary) -> String {
    format!(
        "{} [{}..{}]",
        fmt_big(s.median),
        fmt_big(s.min),
        fmt_big(s.max)
    )
}

fn act_title(a: LinuxActivity) -> String {
    match a {
        LinuxActivity::None => "none (ms/round)".into(),
        LinuxActivity::Stat => "perf stat".into(),
        LinuxActivity::Record(hz) => format!("perf record -F {hz}"),
    }
}

// ---------------------------------------------------------------------------------------
// Running

/// A child process's output, with a wall-clock limit.
struct Output {
    stdout: String,
    stderr: String,
    status: Option<i32>,
    timed_out: bool,
    wall_s: f64,
}

fn run_streaming(
    mut cmd: Command,
    timeout: Duration,
    on_line: &mut dyn FnMut(&str),
) -> Result<Output, String> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let mut err = child.stderr.take().expect("piped");
    let err_thread = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let out = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out_thread = std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let l = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\r', '\n'])
                        .to_string();
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut stdout = String::new();
    let mut timed_out = false;
    let status = loop {
        while let Ok(l) = rx.try_recv() {
            on_line(&l);
            stdout.push_str(&l);
            stdout.push('\n');
        }
        match child.try_wait() {
            Ok(Some(st)) => break st.code(),
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for {cmd:?}: {e}")),
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait().ok().and_then(|s| s.code());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = out_thread.join();
    while let Ok(l) = rx.try_recv() {
        on_line(&l);
        stdout.push_str(&l);
        stdout.push('\n');
    }
    Ok(Output {
        stdout,
        stderr: err_thread.join().unwrap_or_default(),
        status,
        timed_out,
        wall_s: start.elapsed().as_secs_f64(),
    })
}

/// Per mode: (lines of the guest console, vpmu-vmm exit, wall s).
struct Gathered {
    probe: Result<serde_json::Value, String>,
    modes: Vec<(Mode, Section, Option<f64>)>,
    console: String,
    outer_wall_s: f64,
}

fn progress_counter(enabled: bool, total: usize) -> impl FnMut(&str) {
    let mut done = 0usize;
    let mut mode = String::new();
    move |l: &str| {
        if let Some(at) = l.find(&format!("{L1_MARK} mode-begin ")) {
            mode = l[at + L1_MARK.len() + 12..].trim().to_string();
        }
        if l.contains(&format!("{GUEST_MARK} c=")) {
            done += 1;
            if enabled {
                eprint!(
                    "\r[{done}/{total}] linux {mode} {}   ",
                    l.split_whitespace()
                        .find(|w| w.starts_with("c="))
                        .unwrap_or("")
                );
            }
        }
    }
}

fn gather_nested(
    s: &LinuxSettings,
    exe: &Path,
    base_cmdline: &str,
    scripts: &[(Mode, String)],
    log: &Path,
    progress: bool,
) -> Result<Gathered, String> {
    if !s.rig.is_file() {
        return Err(format!(
            "{}: no nested rig (run from the repository root, or pass --linux-rig)",
            s.rig.display()
        ));
    }
    let runs: Vec<(Mode, Vec<String>)> = scripts
        .iter()
        .map(|(m, script)| {
            (
                *m,
                vmm_args(
                    "/l2/bzImage",
                    "/l2/initramfs.cpio.gz",
                    s.memory_mib,
                    *m,
                    &l2_cmdline(base_cmdline, script),
                ),
            )
        })
        .collect();
    let l1 = l1_script(&runs);
    let mut cmd = Command::new(&s.rig);
    cmd.arg("--vmm")
        .arg(exe)
        .arg("--timeout")
        .arg(s.timeout_s.to_string())
        .arg("--log")
        .arg(log)
        .arg("--l1-cmd")
        .arg(&l1);
    let total = s.reps as usize * s.activities.len() * s.modes.len();
    let mut on_line = progress_counter(progress, total);
    let out = run_streaming(cmd, Duration::from_secs(s.timeout_s + 60), &mut on_line)?;
    if progress {
        eprintln!();
    }
    if out.timed_out || matches!(out.status, Some(100) | Some(102) | Some(104)) {
        let c = parse_l1_console(&out.stdout);
        if c.modes.is_empty() {
            return Err(format!(
                "nested rig failed (status {:?}{}): {}",
                out.status,
                if out.timed_out { ", timed out" } else { "" },
                out.stderr.trim()
            ));
        }
    }
    let c = parse_l1_console(&out.stdout);
    let probe = match (&c.probe_json, c.probe_exit) {
        (Some(j), Some(0)) => {
            let start = j.find('{').unwrap_or(0);
            serde_json::from_str(&j[start..]).map_err(|e| format!("probe JSON from L1: {e}"))
        }
        (_, st) => Err(format!(
            "vpmu-vmm probe --json in L1 failed (status {st:?})"
        )),
    };
    Ok(Gathered {
        probe,
        modes: c.modes.into_iter().map(|(m, sec)| (m, sec, None)).collect(),
        console: out.stdout,
        outer_wall_s: out.wall_s,
    })
}

fn gather_native(
    s: &LinuxSettings,
    exe: &Path,
    base_cmdline: &str,
    scripts: &[(Mode, String)],
    kernel: &Path,
    initrd: &Path,
    progress: bool,
) -> Result<Gathered, String> {
    let started = Instant::now();
    let probe = vmm::probe_host()
        .map_err(|e| e.to_string())
        .and_then(|h| serde_json::to_value(h.probe_report()).map_err(|e| e.to_string()));
    let total = s.reps as usize * s.activities.len() * s.modes.len();
    let mut on_line = progress_counter(progress, total);
    let mut modes = Vec::new();
    let mut console = String::new();
    let per_mode = Duration::from_secs((s.timeout_s / s.modes.len().max(1) as u64).max(10));
    for (m, script) in scripts {
        on_line(&format!("{L1_MARK} mode-begin {m}"));
        let mut cmd = Command::new(exe);
        cmd.args(vmm_args(
            &kernel.to_string_lossy(),
            &initrd.to_string_lossy(),
            s.memory_mib,
            *m,
            &l2_cmdline(base_cmdline, script),
        ));
        let out = run_streaming(cmd, per_mode, &mut on_line)?;
        console.push_str(&format!("{L1_MARK} mode-begin {m}\n{}", out.stdout));
        console.push_str(&format!(
            "{L1_MARK} mode-end {m} {}\n{}\n",
            out.status.map_or("killed".to_string(), |c| c.to_string()),
            out.stderr
        ));
        let mut sec = Section {
            lines: out.stdout.lines().map(String::from).collect(),
            exit: out.status,
        };
        if out.timed_out {
            sec.exit = None;
            sec.lines.push(format!("timed out after {:?}", per_mode));
        }
        modes.push((*m, sec, Some(out.wall_s)));
    }
    if progress {
        eprintln!();
    }
    Ok(Gathered {
        probe,
        modes,
        console,
        outer_wall_s: started.elapsed().as_secs_f64(),
    })
}

/// Builds the mode results and cells from what was gathered.
pub fn assemble(
    modes: &[Mode],
    acts: &[LinuxActivity],
    choice: EventChoice,
    probe: &Result<serde_json::Value, String>,
    sections: &[(Mode, Section, Option<f64>)],
) -> (Vec<ModeResult>, Vec<LinuxCell>) {
    let verdicts = probe.as_ref().map(probe_modes).unwrap_or_default();
    let mut results = Vec::new();
    let mut cells = Vec::new();
    for &m in modes {
        let ev = events_for(m, choice);
        let verdict = verdicts.iter().find(|v| v.0 == m.pmu_str());
        let sec = sections.iter().find(|x| x.0 == m);
        let mut mr = ModeResult {
            mode: m,
            status: "ok".into(),
            reason: None,
            events: ev.clone(),
            vmm_exit: sec.and_then(|x| x.1.exit),
            guest_event_sources: None,
            guest_max_sample_rate: None,
            vm_wall_s: sec.and_then(|x| x.2),
        };
        let lines: Vec<RepLine> = sec
            .map(|x| x.1.lines.iter().filter_map(|l| parse_rep_line(l)).collect())
            .unwrap_or_default();
        if let Some(x) = sec {
            for l in &x.1.lines {
                if let Some(p) = parse_pmu_line(l) {
                    mr.guest_event_sources = Some(p);
                    mr.guest_max_sample_rate = field(&l[l.find(GUEST_MARK).unwrap_or(0)..], "msr")
                        .and_then(|v| v.parse().ok());
                }
            }
        }
        if let Some((_, false, reason)) = verdict {
            if lines.is_empty() {
                let r = reason
                    .clone()
                    .unwrap_or_else(|| "probe says unavailable".into());
                mr.status = "unavailable".into();
                mr.reason = Some(r.clone());
                cells.extend(dead_cells(m, acts, "unavailable", &r));
                results.push(mr);
                continue;
            }
        }
        if lines.is_empty() {
            let why = match sec {
                None => "no output for this mode (the run did not reach it)".to_string(),
                Some(x) => format!(
                    "vpmu-vmm exit {}, no result lines; last console line: {}",
                    x.1.exit
                        .map_or("none (killed or L1 ended)".to_string(), |c| c.to_string()),
                    x.1.lines
                        .iter()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .map(|s| s.as_str())
                        .unwrap_or("")
                ),
            };
            mr.status = "failed".into();
            mr.reason = Some(why.clone());
            cells.extend(dead_cells(m, acts, "failed", &why));
            results.push(mr);
            continue;
        }
        if mr.vmm_exit != Some(0) {
            mr.reason = Some(format!(
                "vpmu-vmm exit {:?} (results parsed before that)",
                mr.vmm_exit
            ));
        }
        cells.extend(mode_cells(m, acts, &ev, &lines));
        results.push(mr);
    }
    summarise(&mut cells);
    (results, cells)
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs `vpmu-vmm bench --linux` and writes `linux.json` + `linux.md` into `args.out`.
pub fn run(args: &BenchArgs) -> Result<(), Error> {
    let started = Instant::now();
    let generated_at = crate::host::now_rfc3339();
    let loadavg_start = crate::host::loadavg();
    let s = LinuxSettings::from_args(args).map_err(Error::Args)?;
    std::fs::create_dir_all(&args.out).map_err(|e| io_err(&args.out, e))?;
    let (env, via_reason) = resolve_via(s.via, Path::new("/sys/module"), Path::new("/dev/kvm"));
    let exe = std::env::current_exe()
        .map_err(|e| Error::Harness(format!("cannot find this executable: {e}")))?;
    let kernel = s.image_dir.join("bzImage");
    let initrd = s.image_dir.join("initramfs.cpio.gz");
    let base_cmdline = match env {
        Environment::Native => {
            let p = s.image_dir.join("cmdline");
            for f in [&kernel, &initrd, &p] {
                if !f.is_file() {
                    return Err(Error::Harness(format!(
                        "{} missing: build the guest image first (resources/linux/build-image.sh)",
                        f.display()
                    )));
                }
            }
            std::fs::read_to_string(&p).map_err(|e| io_err(&p, e))?
        }
        Environment::NestedTcg => {
            let p = s
                .rig
                .parent()
                .unwrap_or(Path::new("."))
                .join("work/l1/l2-cmdline");
            std::fs::read_to_string(&p).map_err(|_| {
                Error::Harness(format!(
                    "{} missing: build the nested rig first (resources/nested/build-l1.sh)",
                    p.display()
                ))
            })?
        }
    };
    let base_cmdline = base_cmdline.trim().to_string();
    let scripts: Vec<(Mode, String)> = s
        .modes
        .iter()
        .map(|&m| {
            (
                m,
                guest_script(s.seconds, s.reps, &s.activities, &events_for(m, s.events)),
            )
        })
        .collect();
    for (m, script) in &scripts {
        let len = l2_cmdline(&base_cmdline, script).len();
        if len > 2000 {
            return Err(Error::Args(format!(
                "the L2 command line for mode {m} would be {len} bytes (the kernel takes 2048): fewer --reps or --linux-activities"
            )));
        }
    }
    eprintln!(
        "bench --linux: {} ({}), modes {}, {} runs per cell",
        env.label(),
        via_reason,
        s.modes
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(","),
        s.reps
    );
    let progress = crate::stderr_progress(args.no_progress);
    let log = args.out.join("linux-console.log");
    let g = match env {
        Environment::NestedTcg => gather_nested(&s, &exe, &base_cmdline, &scripts, &log, progress),
        Environment::Native => gather_native(
            &s,
            &exe,
            &base_cmdline,
            &scripts,
            &kernel,
            &initrd,
            progress,
        ),
    }
    .map_err(Error::Harness)?;
    if env == Environment::Native {
        std::fs::write(&log, &g.console).map_err(|e| io_err(&log, e))?;
    }
    let (mode_results, cells) = assemble(&s.modes, &s.activities, s.events, &g.probe, &g.modes);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let (kernel_s, initrd_s) = match env {
        Environment::Native => (kernel.display().to_string(), initrd.display().to_string()),
        Environment::NestedTcg => (
            "/l2/bzImage (in L1)".into(),
            "/l2/initramfs.cpio.gz (in L1)".into(),
        ),
    };
    let report = LinuxReport {
        schema: SCHEMA_NAME.into(),
        schema_version: SCHEMA_VERSION,
        environment: env,
        environment_label: env.label().into(),
        comparable_with_native: env == Environment::Native,
        via_reason,
        generated_at,
        duration_s: started.elapsed().as_secs_f64(),
        command_line: std::env::args().collect(),
        versions: Versions {
            vpmu_vmm: env!("CARGO_PKG_VERSION").to_string(),
            rustc: crate::host::rustc_version(),
        },
        host: LinuxHost {
            cpu_model: crate::host::cpu_model(&cpuinfo),
            cpus: std::thread::available_parallelism().ok().map(|n| n.get()),
            kernel: crate::host::kernel(),
            kvm_modules: crate::host::kvm_modules(),
            loadavg_start,
            loadavg_end: crate::host::loadavg(),
            guest_env_probe: g.probe.as_ref().ok().cloned(),
            guest_env_probe_error: g.probe.as_ref().err().cloned(),
            outer_wall_s: Some(g.outer_wall_s),
        },
        config: LinuxConfig {
            quick: args.quick,
            reps: s.reps,
            workload_cpu_s: s.seconds,
            modes: s.modes.clone(),
            activities: s.activities.clone(),
            events: s.events,
            guest_memory_mib: s.memory_mib,
            vcpus: 1,
            kernel: kernel_s,
            initrd: initrd_s,
            l2_cmdline_base: base_cmdline,
            order: "one VM per mode; in it every activity once per pass, alternate passes reversed, after one unmeasured warm-up".into(),
            metric: "wall time per vpmu-work round (CLOCK_MONOTONIC around the workload process, inside perf's child; boot and perf start-up excluded)".into(),
        },
        modes: mode_results,
        cells,
    };
    let json = serde_json::to_string_pretty(&report)? + "\n";
    let jp = args.out.join("linux.json");
    std::fs::write(&jp, json).map_err(|e| io_err(&jp, e))?;
    eprintln!("bench: wrote {}", jp.display());
    if !args.json_only {
        let mp = args.out.join("linux.md");
        std::fs::write(&mp, render(&report)).map_err(|e| io_err(&mp, e))?;
        eprintln!("bench: wrote {}", mp.display());
    }
    eprintln!("bench: console log {}", log.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        b: BenchArgs,
    }

    fn args(v: &[&str]) -> BenchArgs {
        let mut all = vec!["x"];
        all.extend_from_slice(v);
        Cli::try_parse_from(all).unwrap().b
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
        for bad in [
            vec!["--linux", "--linux-via", "tcg"],
            vec!["--linux", "--linux-activities", "record:0"],
            vec!["--linux", "--linux-activities", "perf"],
            vec!["--linux", "--linux-events", "pebs"],
            vec!["--linux", "--linux-seconds", "0"],
            vec!["--linux", "--reps", "0"],
            vec!["--linux", "--linux-memory", "16"],
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

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x3e]), "//4+");
    }

    #[test]
    fn scripts_and_command_lines() {
        let acts = [
            LinuxActivity::None,
            LinuxActivity::Stat,
            LinuxActivity::Record(1000),
        ];
        let ev = events_for(Mode::Off, EventChoice::Auto);
        let s = guest_script(0.3, 2, &acts, &ev);
        assert!(s.contains("for c in 1.0 1.1 1.2 2.2 2.1 2.0;do"), "{s}");
        assert!(s.contains("0)sh /tmp/w 0.3;;"), "{s}");
        assert!(
            s.contains("1)perf stat -x, -e task-clock -o /tmp/e sh /tmp/w 0.3;;"),
            "{s}"
        );
        assert!(
            s.contains("2)perf record -e cpu-clock -F 1000 -o /tmp/p sh /tmp/w 0.3 2>/tmp/e;;"),
            "{s}"
        );
        let base = "console=ttyS0 quiet\n";
        let cl = l2_cmdline(base, &s);
        assert!(cl.starts_with("console=ttyS0 quiet vpmu.cmd="));
        assert_eq!(
            cl,
            format!("console=ttyS0 quiet vpmu.cmd={}", base64(s.as_bytes()))
        );
        // The default plan fits the kernel's 2048-byte command line.
        let all = [
            LinuxActivity::None,
            LinuxActivity::Stat,
            LinuxActivity::Record(1000),
            LinuxActivity::Record(10_000),
        ];
        let hw = events_for(Mode::Userspace, EventChoice::Auto);
        let long = l2_cmdline(
            "console=ttyS0 reboot=t panic=-1 pci=off 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd quiet",
            &guest_script(1.0, 5, &all, &hw),
        );
        assert!(long.len() < 2000, "{}", long.len());

        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        let audited = vmm_args("/l2/bzImage", "/l2/i", 512, Mode::EmulatedAudit, "a");
        let at = |f: &str| audited.iter().position(|x| x == f).unwrap();
        assert_eq!(audited[at("--pmu") + 1], "emulated");
        assert!(audited[at("--pmu-audit") + 1].ends_with(".jsonl"));
        assert_eq!(audited.last().unwrap(), "a");
        let a = vmm_args("/l2/bzImage", "/l2/i", 512, Mode::Userspace, "a b");
        assert_eq!(
            a,
            [
                "run",
                "--kernel",
                "/l2/bzImage",
                "--initrd",
                "/l2/i",
                "--memory",
                "512M",
                "--pmu",
                "userspace",
                "--cmdline",
                "a b"
            ]
        );
        let l1 = l1_script(&[(Mode::Off, a)]);
        assert!(l1.contains("/bin/vpmu-vmm probe --json"), "{l1}");
        assert!(
            l1.contains("echo 'VPMU-LBENCH-L1 mode-begin off';/bin/vpmu-vmm 'run' '--kernel'"),
            "{l1}"
        );
        assert!(
            l1.contains("'--cmdline' 'a b';echo \"VPMU-LBENCH-L1 mode-end off $?\""),
            "{l1}"
        );
    }

    const STAT: &str = "VPMU-LBENCH c=1.1 x=0 ns=339775860 vpmu-work: 241 rounds in 0.30 s cpu msr=100000 perf:  384.65,msec,task-clock,384649642,100.00,0.970,CPUs utilized ";
    const REC: &str = "VPMU-LBENCH c=2.2 x=0 ns=439660806 vpmu-work: 86 rounds in 0.31 s cpu msr=250 perf: [ perf record: Woken up 1 times to write data ] [ perf record: Captured and wrote 0.013 MB /tmp/p (141 samples) ] ";

    #[test]
    fn parses_guest_lines() {
        let l = parse_rep_line(STAT).unwrap();
        assert_eq!((l.pass, l.activity, l.exit), (1, 1, Some(0)));
        assert_eq!(
            (l.region_ns, l.rounds, l.cpu_s),
            (Some(339_775_860), Some(241), Some(0.30))
        );
        assert_eq!(l.max_sample_rate, Some(100_000));
        assert!(l.perf.starts_with("384.65,msec,task-clock"), "{}", l.perf);
        // With console noise before the marker.
        let l = parse_rep_line(&format!("[  3.1] x: y {REC}")).unwrap();
        assert_eq!((l.pass, l.activity, l.max_sample_rate), (2, 2, Some(250)));
        assert_eq!(record_samples(&l.perf), Some(141));
        // A failed workload: no ns=, no rounds.
        let l = parse_rep_line("VPMU-LBENCH c=3.1 x=129 msr=100000 perf: oops").unwrap();
        assert_eq!((l.exit, l.region_ns, l.rounds), (Some(129), None, None));
        assert!(parse_rep_line("VPMU-LBENCH pmu=cpu,software, msr=100000").is_none());
        assert!(parse_rep_line("VPMU-GUEST: command exit 0").is_none());
        assert_eq!(
            parse_pmu_line("VPMU-LBENCH pmu=breakpoint,cpu,software, msr=100000").unwrap(),
            vec!["breakpoint", "cpu", "software"]
        );
        assert_eq!(
            record_samples("[ perf record: Captured and wrote 0.1 MB x ]"),
            None
        );
        assert_eq!(
            stat_counts(" 5207287069147099,,cycles,429015992,100.00,,;5207287069147099,,instructions,429015992,100.00,1.00,insn per cycle;"),
            vec![
                ("cycles".to_string(), "5207287069147099".to_string()),
                ("instructions".to_string(), "5207287069147099".to_string())
            ]
        );
        assert_eq!(
            stat_counts("384.65,msec,task-clock,384649642,100.00,0.970,CPUs utilized"),
            vec![("task-clock".to_string(), "384.65".to_string())]
        );
        assert_eq!(
            stat_counts("<not supported>,,cycles,0,100.00,,;"),
            vec![("cycles".to_string(), "<not supported>".to_string())]
        );
        assert!(stat_counts("[ perf record: Woken up 1 times ];").is_empty());
    }

    #[test]
    fn splits_the_l1_console() {
        let text = format!(
            "NESTED: kvm ready\nVPMU-LBENCH-L1 probe-begin\n{{\"modes\": [{{\"mode\": \"off\", \"availability\": {{\"status\": \"available\"}}}}, {{\"mode\": \"emulated\", \"availability\": {{\"status\": \"unavailable\", \"reason\": \"no hardware PMU\", \"remedy\": \"x\"}}}}]}}\nVPMU-LBENCH-L1 probe-end 0\nVPMU-LBENCH-L1 mode-begin off\nVPMU-GUEST: init reached\n{STAT}\nVPMU-LBENCH-L1 mode-end off 0\nVPMU-LBENCH-L1 mode-begin emulated\nvpmu-vmm: mode unavailable\nVPMU-LBENCH-L1 mode-end emulated 2\nVPMU-LBENCH-L1 mode-begin userspace\n{REC}\n"
        );
        let c = parse_l1_console(&text);
        assert_eq!(c.probe_exit, Some(0));
        let probe: serde_json::Value =
            serde_json::from_str(c.probe_json.as_deref().unwrap()).unwrap();
        assert_eq!(
            probe_modes(&probe),
            vec![
                ("off".to_string(), true, None),
                (
                    "emulated".to_string(),
                    false,
                    Some("no hardware PMU".to_string())
                )
            ]
        );
        assert_eq!(c.modes.len(), 3);
        assert_eq!(c.modes[0].0, Mode::Off);
        assert_eq!(c.modes[0].1.exit, Some(0));
        assert_eq!(c.modes[0].1.lines.len(), 2);
        assert_eq!(c.modes[1].1.exit, Some(2));
        // The last mode never ended (L1 died): kept, without a status.
        assert_eq!((c.modes[2].0, c.modes[2].1.exit), (Mode::Userspace, None));
    }

    fn line(pass: u32, act: usize, ns: u64, rounds: u64, perf: &str) -> String {
        format!("VPMU-LBENCH c={pass}.{act} x=0 ns={ns} vpmu-work: {rounds} rounds in 1.00 s cpu msr=100000 perf: {perf}")
    }

    fn fake_sections() -> Vec<(Mode, Section, Option<f64>)> {
        let mut off = vec!["VPMU-LBENCH pmu=software, msr=100000".to_string()];
        let mut us = Vec::new();
        for p in 1..=3u32 {
            // off: 1 ms/round; stat +10 %; record +p*10 %, 1000 Hz, 900 samples per second.
            off.push(line(p, 0, 1_000_000_000, 1000, ""));
            off.push(line(
                p,
                1,
                1_100_000_000,
                1000,
                "1000.5,msec,task-clock,1,100.00;",
            ));
            off.push(line(
                p,
                2,
                1_000_000_000 + u64::from(p) * 100_000_000,
                1000,
                "(900 samples) ]",
            ));
            // userspace: baseline 2 ms/round (+100 % vs off), stat fails in pass 2.
            us.push(line(p, 0, 1_000_000_000, 500, ""));
            if p == 2 {
                us.push(format!("VPMU-LBENCH c={p}.1 x=1 msr=250 perf: boom"));
            } else {
                us.push(line(p, 1, 1_000_000_000, 400, ""));
            }
        }
        vec![
            (
                Mode::Off,
                Section {
                    lines: off,
                    exit: Some(0),
                },
                None,
            ),
            (
                Mode::Userspace,
                Section {
                    lines: us,
                    exit: Some(0),
                },
                Some(12.0),
            ),
            (
                Mode::Emulated,
                Section {
                    lines: vec!["vpmu-vmm: error".into()],
                    exit: Some(2),
                },
                None,
            ),
        ]
    }

    fn fake_probe() -> serde_json::Value {
        serde_json::json!({"modes": [
            {"mode": "off", "availability": {"status": "available"}},
            {"mode": "userspace", "availability": {"status": "available"}},
            {"mode": "emulated", "availability": {"status": "unavailable", "reason": "no hardware PMU", "remedy": "r"}},
            {"mode": "passthrough", "availability": {"status": "available"}}
        ]})
    }

    #[test]
    fn statistics_per_mode_and_activity() {
        let acts = [
            LinuxActivity::None,
            LinuxActivity::Stat,
            LinuxActivity::Record(1000),
        ];
        let (modes, cells) = assemble(
            &Mode::ALL,
            &acts,
            EventChoice::Auto,
            &Ok(fake_probe()),
            &fake_sections(),
        );
        let st: Vec<(&str, &str)> = modes
            .iter()
            .map(|m| (m.mode.as_str(), m.status.as_str()))
            .collect();
        assert_eq!(
            st,
            [
                ("off", "ok"),
                ("userspace", "ok"),
                ("emulated", "unavailable"),
                ("passthrough", "failed")
            ]
        );
        assert_eq!(
            modes[0].guest_event_sources.as_deref(),
            Some(&["software".to_string()][..])
        );
        assert_eq!(modes[0].guest_max_sample_rate, Some(100_000));
        assert_eq!(modes[1].vm_wall_s, Some(12.0));
        assert_eq!(modes[2].reason.as_deref(), Some("no hardware PMU"));
        assert!(modes[3]
            .reason
            .as_deref()
            .unwrap()
            .contains("did not reach"));
        assert_eq!(cells.len(), 12);
        let cell = |m: Mode, a: LinuxActivity| {
            cells
                .iter()
                .find(|c| c.mode == m && c.activity == a)
                .unwrap()
        };
        let base = cell(Mode::Off, LinuxActivity::None)
            .summary
            .clone()
            .unwrap();
        assert_eq!(base.ns_per_round.median, 1e6);
        assert!(base.overhead_pct.is_none() && base.vs_off_pct.is_none());
        let stat = cell(Mode::Off, LinuxActivity::Stat)
            .summary
            .clone()
            .unwrap();
        let o = stat.overhead_pct.unwrap();
        assert!((o.median - 10.0).abs() < 1e-9 && o.n == 3, "{o:?}");
        let rec = cell(Mode::Off, LinuxActivity::Record(1000));
        assert_eq!(rec.events.as_deref(), Some("cpu-clock"));
        let s = rec.summary.clone().unwrap();
        let o = s.overhead_pct.unwrap();
        assert!(
            (o.min - 10.0).abs() < 1e-9
                && (o.median - 20.0).abs() < 1e-9
                && (o.max - 30.0).abs() < 1e-9
        );
        assert_eq!(s.samples.unwrap().median, 900.0);
        assert!((s.expected_samples.unwrap().median - 1000.0).abs() < 1e-6);
        assert!((s.sample_accuracy_pct.unwrap().median - 90.0).abs() < 1e-9);
        assert_eq!(s.throttled_runs, Some(0));
        // userspace: baseline vs off, and a partly failed cell.
        let ub = cell(Mode::Userspace, LinuxActivity::None)
            .summary
            .clone()
            .unwrap();
        assert!((ub.vs_off_pct.unwrap().median - 100.0).abs() < 1e-9);
        let us = cell(Mode::Userspace, LinuxActivity::Stat);
        assert_eq!(us.events.as_deref(), Some("cycles,instructions"));
        assert_eq!(
            (us.status.as_str(), us.runs.len(), us.failures.len()),
            ("ok", 2, 1)
        );
        assert!(
            us.failures[0].starts_with("pass 2: exit Some(1)"),
            "{:?}",
            us.failures
        );
        assert!((us.summary.clone().unwrap().overhead_pct.unwrap().median - 25.0).abs() < 1e-9);
        let ur = cell(Mode::Userspace, LinuxActivity::Record(1000));
        assert_eq!(ur.status, "failed");
        assert_eq!(ur.reason.as_deref(), Some("no result line from the guest"));
        assert_eq!(
            cell(Mode::Emulated, LinuxActivity::Stat).status,
            "unavailable"
        );
        assert_eq!(
            cell(Mode::Passthrough, LinuxActivity::None).status,
            "failed"
        );

        // Report: JSON round trip and markdown.
        let r = LinuxReport {
            schema: SCHEMA_NAME.into(),
            schema_version: SCHEMA_VERSION,
            environment: Environment::NestedTcg,
            environment_label: TCG_LABEL.into(),
            comparable_with_native: false,
            via_reason: "test".into(),
            generated_at: "2026-11-21T08:00:00Z".into(),
            duration_s: 60.0,
            command_line: vec!["vpmu-vmm".into(), "bench".into(), "--linux".into()],
            versions: Versions {
                vpmu_vmm: "0.1.0".into(),
                rustc: None,
            },
            host: LinuxHost {
                cpu_model: Some("AMD EPYC".into()),
                cpus: Some(2),
                kernel: None,
                kvm_modules: vec!["kvm".into(), "kvm_pvm".into()],
                loadavg_start: None,
                loadavg_end: None,
                guest_env_probe: Some(fake_probe()),
                guest_env_probe_error: None,
                outer_wall_s: Some(50.0),
            },
            config: LinuxConfig {
                quick: false,
                reps: 3,
                workload_cpu_s: 1.0,
                modes: Mode::ALL.to_vec(),
                activities: acts.to_vec(),
                events: EventChoice::Auto,
                guest_memory_mib: 512,
                vcpus: 1,
                kernel: "k".into(),
                initrd: "i".into(),
                l2_cmdline_base: "console=ttyS0".into(),
                order: "o".into(),
                metric: "m".into(),
            },
            modes,
            cells,
        };
        let j = serde_json::to_string_pretty(&r).unwrap();
        let back: LinuxReport = serde_json::from_str(&j).unwrap();
        assert_eq!(back.cells.len(), r.cells.len());
        assert_eq!(back.config, r.config);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["environment"], "nested-tcg");
        assert_eq!(v["environment_label"], TCG_LABEL);
        assert_eq!(v["comparable_with_native"], false);
        assert_eq!(v["cells"][2]["activity"], "record:1000");
        let md = render(&r);
        assert!(md.contains(TCG_LABEL), "{md}");
        assert!(md.contains("- `vpmu-vmm probe` where the guest ran (inside L1): ?, KVM modules , hardware PMU: ?"), "{md}");
        assert!(md.contains("| mode | events (stat / record) | none (ms/round) | perf stat | perf record -F 1000 |"), "{md}");
        assert!(md.contains("| off | task-clock / cpu-clock | 1.00 [1.00..1.00] ms | +10.0% [+10.0..+10.0] | +20.0% [+10.0..+30.0] |"), "{md}");
        assert!(
            md.contains("| emulated | — | unavailable: no hardware PMU | — | — |"),
            "{md}"
        );
        assert!(md.contains("| userspace | +100% [+100..+100] |"), "{md}");
        assert!(
            md.contains("| off | cpu-clock | 1000 Hz | 900 | 1000 | 90.0 [90.0..90.0] | 0/3 |"),
            "{md}"
        );
        assert!(
            md.contains("- userspace stat: pass 2: exit Some(1)"),
            "{md}"
        );
        assert!(
            md.contains("| off | task-clock | 1000 [1000..1000] | 1000 |"),
            "{md}"
        );
        assert!(md.contains("indicative"), "{md}");
        for table in md.split("\n\n").filter(|t| t.starts_with("| ")) {
            let cols: Vec<usize> = table
                .lines()
                .map(|l| l.matches('|').count() - l.matches("\\|").count())
                .collect();
            assert!(cols.iter().all(|&c| c == cols[0]), "{table}");
        }
    }
}
