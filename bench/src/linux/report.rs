//! `linux.json`: the report types, and the statistics of the result lines (per-cell runs,
//! paired overheads, sampling accuracy).

use serde::{Deserialize, Serialize};

use super::parse::{
    field, parse_pmu_line, parse_rep_line, probe_modes, record_samples, stat_counts, RepLine,
    Section,
};
use super::{events_for, Environment, EventChoice, Events, LinuxActivity, GUEST_MARK};
use crate::model::Mode;
use crate::report::Versions;
use crate::stats::{overhead_pct, Summary};

/// `linux.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinuxReport {
    pub schema: String,
    pub schema_version: u32,
    /// `native` or `nested-tcg`.
    pub environment: Environment,
    /// `native KVM` or [`TCG_LABEL`](super::TCG_LABEL).
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
    /// The guest's architecture (older reports: x86_64).
    #[serde(default = "default_arch")]
    pub arch: super::LinuxArch,
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
    /// Nested runs: L1's KVM exits (every kind, every vCPU: on arm64 each guest PMU
    /// register access is one) during this mode's vpmu-vmm run, from L1's debugfs.
    #[serde(default)]
    pub l1_kvm_exits: Option<u64>,
    /// The same per second of L1 time (guest time under QEMU's -icount, not host wall).
    #[serde(default)]
    pub l1_kvm_exits_per_s: Option<f64>,
}

fn default_arch() -> super::LinuxArch {
    super::LinuxArch::X86_64
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
    /// perf's output (stat: `-j` JSON, one object per counter; record: its stderr), lines
    /// joined with `;`.
    pub perf_output: String,
    /// `perf stat -j` counts: `[event, value]` (value as perf printed it, e.g.
    /// `<not supported>`); empty for other activities.
    pub stat_counts: Vec<(String, String)>,
}

/// Expected `perf record` samples of a run: the workload's own CPU time (vpmu-work's
/// figure; the timed region when it is missing) x HZ.
pub fn expected_samples(r: &LinuxRun, hz: u32) -> f64 {
    r.cpu_s.unwrap_or(r.region_ns as f64 / 1e9) * f64::from(hz)
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
            l1_kvm_exits: sec.and_then(|x| x.1.kvm_exits).map(|e| e.0),
            l1_kvm_exits_per_s: sec
                .and_then(|x| x.1.kvm_exits)
                .filter(|e| e.1 > 0.0)
                .map(|(n, secs)| n as f64 / secs),
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

#[cfg(test)]
mod tests {
    use super::super::parse::Section;
    use super::*;
    use crate::linux::{SCHEMA_NAME, SCHEMA_VERSION, TCG_LABEL};
    use crate::markdown::render_linux as render;

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
                "{\"counter-value\" : \"1000.5\", \"unit\" : \"msec\", \"event\" : \"task-clock\"};",
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
                    kvm_exits: None,
                },
                None,
            ),
            (
                Mode::Userspace,
                Section {
                    lines: us,
                    exit: Some(0),
                    kvm_exits: None,
                },
                Some(12.0),
            ),
            (
                Mode::Emulated,
                Section {
                    lines: vec!["vpmu-vmm: error".into()],
                    exit: Some(2),
                    kvm_exits: None,
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
                arch: crate::linux::LinuxArch::X86_64,
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
        for want in [
            TCG_LABEL,
            "- `vpmu-vmm probe` where the guest ran (inside L1): ?, KVM modules , hardware PMU: ?",
            "| mode | events (stat / record) | none (ms/round) | perf stat | perf record -F 1000 |",
            "| off | task-clock / cpu-clock | 1.00 [1.00..1.00] ms | +10.0% [+10.0..+10.0] | +20.0% [+10.0..+30.0] |",
            "| emulated | — | unavailable: no hardware PMU | — | — |",
            "| userspace | +100% [+100..+100] |",
            "| off | cpu-clock | 1000 Hz | 900 | 1000 | 90.0 [90.0..90.0] | 0/3 |",
            "- userspace stat: pass 2: exit Some(1)",
            "| off | task-clock | 1000 [1000..1000] | 1000 |",
            "indicative",
        ] {
            assert!(md.contains(want), "{want:?} missing from:\n{md}");
        }
        crate::markdown::assert_tables_rectangular(&md);
    }
}
