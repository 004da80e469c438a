//! Running the matrix against a [`Backend`] (the real VMM, or a fake in tests) and
//! turning raw runs into per-cell statistics.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::model::{self, Activity, CellKey, Mode, Workload};
use crate::parse::{parse_output, Rep};
use crate::report::{
    CellReport, CellStatus, CellSummary, Exits, ModeAvailability, MsrCost, MsrCostRow, PmiLatency,
    RejectedLatency, RunSample, VmmFigures,
};
use crate::stats::{self, Percentiles, Summary};
use vmm::vcpu::VcpuStats;

/// What one VM run produced.
#[derive(Debug, Clone, Default)]
pub struct RawRun {
    /// Everything the guest wrote to its console.
    pub console: String,
    /// The VMM's exit counters, one per vCPU (`vmm::RunReport.vcpus`).
    pub vcpus: Vec<VcpuStats>,
    /// Userspace vPMU statistics per vCPU.
    pub pmu: Vec<serde_json::Value>,
    pub wall_ns: u64,
    pub start_to_first_entry_ns: u64,
    /// The VM's outcome, as text.
    pub outcome: String,
    /// True when the guest ended the way the bench guest ends on success.
    pub clean: bool,
}

/// Why a run produced no sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// The host cannot offer the mode (this is not a measurement failure).
    Unavailable(String),
    /// The run failed.
    Failed(String),
}

/// Something that runs the bench guest.
pub trait Backend {
    /// Whether the host can offer `mode`; `Err(reason)` when not.
    fn availability(&mut self, mode: Mode) -> Result<(), String>;
    /// Boots the bench guest once with this mode and guest command line.
    fn run(&mut self, mode: Mode, cmdline: &str) -> Result<RawRun, RunError>;
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub reps: u32,
    pub guest_reps: u32,
    pub modes: Vec<Mode>,
    pub workloads: Vec<Workload>,
    pub activities: Vec<Activity>,
    /// Fixed iteration count for every workload; None = calibrate to `target_ms`.
    pub iters: Option<u64>,
    /// Calibration target for the baseline workload region, ms.
    pub target_ms: u64,
    pub tsc_khz: u64,
    pub chase_buf_kib: u64,
    /// MSR-cost workload iterations; 0 skips the MSR-cost runs.
    pub msr_iters: u64,
    /// No VM run starts once this much time has passed since the start (`--quick`:
    /// [`crate::estimate::QUICK_TIME_BUDGET_S`]); the runs left out are counted and listed.
    pub time_budget: Option<Duration>,
}

/// Progress callback: (jobs done, jobs total, label).
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, &str);

/// Everything the harness measured.
#[derive(Debug, Clone)]
pub struct Measured {
    pub availability: Vec<ModeAvailability>,
    pub iters: BTreeMap<String, u64>,
    pub iters_source: String,
    pub cells: Vec<CellReport>,
    pub msr_cost: MsrCost,
    pub vmm: VmmFigures,
    /// VM runs not started because the time budget was spent.
    pub skipped_runs: usize,
}

/// The guest command line of one workload run.
pub fn guest_cmdline(s: &Settings, w: Workload, iters: u64, a: Activity) -> String {
    let mut c = format!(
        "workload={w} iters={iters} pmu={a} tsc_khz={} reps={}",
        s.tsc_khz, s.guest_reps
    );
    if w == Workload::Chase {
        c.push_str(&format!(" buf={}", s.chase_buf_kib));
    }
    c
}

fn tail(s: &str, n: usize) -> String {
    let t: Vec<&str> = s.lines().rev().take(n).collect();
    t.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// Checks a run and extracts its workload repetitions.
pub fn validate(raw: &RawRun, workload: &str) -> Result<Vec<Rep>, String> {
    let out = parse_output(&raw.console);
    if let Some(e) = out.error() {
        return Err(format!("guest reported an error: {e}"));
    }
    if !raw.clean {
        return Err(format!(
            "guest did not finish cleanly ({}); console tail: {}",
            raw.outcome,
            tail(&raw.console, 3)
        ));
    }
    if !out.done {
        return Err(format!(
            "no 'BENCH done' line; console tail: {}",
            tail(&raw.console, 3)
        ));
    }
    let reps: Vec<Rep> = out
        .reps()
        .into_iter()
        .filter(|r| r.workload.is_empty() || r.workload == workload)
        .collect();
    if reps.is_empty() {
        return Err(format!(
            "no 'BENCH rep=.. tsc=..' line for workload {workload}"
        ));
    }
    Ok(reps)
}

#[allow(clippy::cast_possible_truncation)] // a median of u64 ticks, rounded: back in range
fn median_u64(xs: &[u64]) -> u64 {
    Summary::of_u64(xs)
        .map(|s| s.median.round() as u64)
        .unwrap_or(0)
}

/// The guest's sampling period in TSC ticks for an activity (`multiplex` rotates on the
/// PMIs of a 1 kHz sampler); 0 when it takes no PMIs.
pub fn period_tsc(a: Activity, tsc_khz: u64) -> u64 {
    let hz = match a {
        Activity::Sample(hz) => u64::from(hz),
        Activity::Multiplex(_) => 1000,
        Activity::None | Activity::Count(_) => return 0,
    };
    tsc_khz.saturating_mul(1000) / hz.max(1)
}

/// Marks the repetitions whose PMI latency aggregate cannot be true
/// ([`crate::parse::Latency::implausible`]): they stay in the raw record, with the
/// reason, and out of the statistics.
pub fn reject_implausible_latencies(guest: &mut [Rep], period_tsc: u64) {
    for g in guest {
        g.pmi_latency_rejected = g.pmi_latency.and_then(|l| l.implausible(g.tsc, period_tsc));
    }
}

fn sample_from(
    raw: RawRun,
    rep: u32,
    workload: &str,
    period_tsc: u64,
) -> Result<RunSample, String> {
    let mut guest = validate(&raw, workload)?;
    reject_implausible_latencies(&mut guest, period_tsc);
    let ticks: Vec<u64> = guest.iter().map(|r| r.tsc).collect();
    Ok(RunSample {
        rep,
        workload_tsc: median_u64(&ticks),
        guest,
        exits: Exits::sum_of(&raw.vcpus),
        pmu: raw.pmu,
        wall_ns: raw.wall_ns,
        start_to_first_entry_ns: raw.start_to_first_entry_ns,
    })
}

/// Rounds to the nearest two-significant-digit number (keeps command lines readable).
fn round2(x: u64) -> u64 {
    let mut scale = 1u64;
    while x / scale >= 100 {
        scale = scale.saturating_mul(10);
    }
    let v = (x + scale / 2) / scale;
    v.saturating_mul(scale).max(1)
}

/// Iterations so that the baseline workload region takes about `target_ms`: grows the
/// count tenfold until the region is measurable, scales it to the target, and checks the
/// scaled count once more (caches and TLBs make short runs unrepresentative, notably for
/// `chase`). Each calibration run uses at least 3 guest reps and takes their median.
fn calibrate(
    b: &mut dyn Backend,
    s: &Settings,
    w: Workload,
    progress: &mut dyn FnMut(&str),
    over_budget: &mut dyn FnMut() -> bool,
) -> Result<u64, String> {
    let target_ticks = s.target_ms.saturating_mul(s.tsc_khz).max(1);
    let cal = Settings {
        guest_reps: s.guest_reps.max(3),
        ..s.clone()
    };
    let mut iters: u64 = 100_000;
    for _ in 0..8 {
        if over_budget() {
            // Whatever was reached; the matrix will not run anyway.
            return Ok(iters);
        }
        progress(&format!("calibrating {w} (iters={iters})"));
        let cmd = guest_cmdline(&cal, w, iters, Activity::None);
        let raw = match b.run(Mode::Off, &cmd) {
            Ok(r) => r,
            Err(RunError::Unavailable(r) | RunError::Failed(r)) => {
                return Err(format!("calibration run `{cmd}` failed: {r}"))
            }
        };
        let ticks = sample_from(raw, 0, w.as_str(), 0)
            .map_err(|e| format!("calibration run `{cmd}`: {e}"))?
            .workload_tsc
            .max(1);
        if ticks < target_ticks / 20 && iters < 1 << 40 {
            iters = iters.saturating_mul(10);
            continue;
        }
        let scaled =
            u64::try_from(u128::from(iters) * u128::from(target_ticks) / u128::from(ticks))
                .unwrap_or(u64::MAX);
        let scaled = round2(scaled.clamp(1000, 1 << 40));
        if ticks >= target_ticks / 2 && ticks <= target_ticks.saturating_mul(2) {
            return Ok(scaled);
        }
        iters = scaled;
    }
    Ok(iters)
}

/// Runs everything, against the wall clock for `s.time_budget`.
pub fn execute(
    b: &mut dyn Backend,
    s: &Settings,
    progress: Progress<'_>,
) -> Result<Measured, String> {
    let started = Instant::now();
    execute_with_clock(b, s, progress, &mut || started.elapsed())
}

/// [`execute`] with the time since the start given by `elapsed` (a fake clock in tests).
pub fn execute_with_clock(
    b: &mut dyn Backend,
    s: &Settings,
    progress: Progress<'_>,
    elapsed: &mut dyn FnMut() -> Duration,
) -> Result<Measured, String> {
    let mut over_budget = || s.time_budget.is_some_and(|limit| elapsed() >= limit);
    let budget_note = |s: &Settings| {
        format!(
            "skipped: the time budget of {} s was spent",
            s.time_budget.map_or(0, |d| d.as_secs())
        )
    };
    let mut skipped_runs = 0usize;
    if s.reps == 0 {
        return Err("--reps must be at least 1".into());
    }
    // Availability of each mode (the baseline is always needed).
    let mut modes: Vec<Mode> = vec![Mode::Off];
    modes.extend(s.modes.iter().copied().filter(|m| *m != Mode::Off));
    let mut unavailable: BTreeMap<Mode, String> = BTreeMap::new();
    for &m in &modes {
        if let Err(r) = b.availability(m) {
            unavailable.insert(m, r);
        }
    }
    if let Some(r) = unavailable.get(&Mode::Off) {
        return Err(format!("cannot run the `off` baseline: {r}"));
    }

    let keys = model::cells(&modes, &s.workloads, &s.activities);
    let jobs = model::plan(&keys, s.reps);
    let runnable = |u: &BTreeMap<Mode, String>, m: Mode| !u.contains_key(&m);
    let msr_modes: Vec<Mode> = if s.msr_iters > 0 {
        modes
            .iter()
            .copied()
            .filter(|&m| runnable(&unavailable, m))
            .collect()
    } else {
        Vec::new()
    };
    let mut total = jobs
        .iter()
        .filter(|j| runnable(&unavailable, j.cell.mode))
        .count()
        + msr_modes.len() * s.reps as usize;
    if s.iters.is_none() {
        total += s.workloads.len();
    }
    let mut done = 0usize;

    // Iterations.
    let mut iters = BTreeMap::new();
    let iters_source = match s.iters {
        Some(n) => {
            for w in &s.workloads {
                iters.insert(w.to_string(), n);
            }
            "--iters".to_string()
        }
        None => {
            for &w in &s.workloads {
                let mut p = |l: &str| progress(done, total, l);
                let n = calibrate(b, s, w, &mut p, &mut over_budget)?;
                done += 1;
                iters.insert(w.to_string(), n);
            }
            format!(
                "calibrated so the off baseline runs about {} ms",
                s.target_ms
            )
        }
    };

    // The matrix.
    let mut runs: BTreeMap<CellKey, Vec<RunSample>> = BTreeMap::new();
    let mut failures: BTreeMap<CellKey, Vec<String>> = BTreeMap::new();
    for job in &jobs {
        let k = job.cell;
        if !runnable(&unavailable, k.mode) {
            continue;
        }
        if over_budget() {
            skipped_runs += 1;
            failures
                .entry(k)
                .or_default()
                .push(format!("rep {}: {}", job.rep, budget_note(s)));
            done += 1;
            continue;
        }
        progress(
            done,
            total,
            &format!(
                "{} {} {} rep {}/{}",
                k.mode,
                k.workload,
                k.activity,
                job.rep + 1,
                s.reps
            ),
        );
        let n = iters.get(k.workload.as_str()).copied().unwrap_or(1);
        let cmd = guest_cmdline(s, k.workload, n, k.activity);
        match b.run(k.mode, &cmd) {
            Ok(raw) => match sample_from(
                raw,
                job.rep,
                k.workload.as_str(),
                period_tsc(k.activity, s.tsc_khz),
            ) {
                Ok(sample) => runs.entry(k).or_default().push(sample),
                Err(e) => failures
                    .entry(k)
                    .or_default()
                    .push(format!("rep {}: {e}", job.rep)),
            },
            Err(RunError::Unavailable(r)) => {
                unavailable.insert(k.mode, r);
            }
            Err(RunError::Failed(e)) => failures
                .entry(k)
                .or_default()
                .push(format!("rep {}: {e}", job.rep)),
        }
        done += 1;
    }

    // MSR cost.
    let mut msr_runs: Vec<(Mode, RawRun)> = Vec::new();
    let mut msr_failures: Vec<String> = Vec::new();
    for rep in 0..if msr_modes.is_empty() { 0 } else { s.reps } {
        for &m in &msr_modes {
            if !runnable(&unavailable, m) {
                continue;
            }
            if over_budget() {
                skipped_runs += 1;
                msr_failures.push(format!("{m} rep {rep}: {}", budget_note(s)));
                done += 1;
                continue;
            }
            progress(done, total, &format!("{m} msr rep {}/{}", rep + 1, s.reps));
            let cmd = format!(
                "workload=msr iters={} pmu=none tsc_khz={} reps=1",
                s.msr_iters, s.tsc_khz
            );
            match b.run(m, &cmd) {
                Ok(raw) => msr_runs.push((m, raw)),
                Err(RunError::Unavailable(r)) => {
                    unavailable.insert(m, r);
                }
                Err(RunError::Failed(e)) => msr_failures.push(format!("{m} rep {rep}: {e}")),
            }
            done += 1;
        }
    }
    progress(total, total, "done");

    let availability = modes
        .iter()
        .map(|&m| ModeAvailability {
            mode: m,
            available: !unavailable.contains_key(&m),
            reason: unavailable.get(&m).cloned(),
        })
        .collect();

    let cells = aggregate(&keys, &runs, &failures, &unavailable, s);
    let msr_cost = if s.msr_iters == 0 {
        MsrCost {
            status: "skipped: --msr-iters 0".into(),
            rows: Vec::new(),
            userspace_over_kvm: None,
            userspace_extra_ns: None,
            kvm_net_ns: None,
            userspace_net_ns: None,
            userspace_over_kvm_net: None,
            vmm_handling_ns_per_exit: None,
            note: String::new(),
        }
    } else {
        msr_cost(&msr_runs, &msr_failures, s.tsc_khz, s.msr_iters)
    };
    let all: Vec<&RunSample> = runs.values().flatten().collect();
    let base_wall: Vec<f64> = runs
        .iter()
        .filter(|(k, _)| k.is_baseline())
        .flat_map(|(_, v)| v.iter().map(|r| r.wall_ns as f64 / 1e6))
        .collect();
    let vmm = VmmFigures {
        start_to_first_entry_ns: Summary::of_u64(
            &all.iter()
                .map(|r| r.start_to_first_entry_ns)
                .collect::<Vec<_>>(),
        ),
        baseline_run_wall_ms: Summary::of(&base_wall),
        bench_peak_rss_kib: None,
    };
    Ok(Measured {
        availability,
        iters,
        iters_source,
        cells,
        msr_cost,
        vmm,
        skipped_runs,
    })
}

fn ticks_to_ns(ticks: f64, tsc_khz: u64) -> f64 {
    ticks * 1e6 / tsc_khz.max(1) as f64
}

/// Builds the cell reports (statistics) from the raw runs.
pub fn aggregate(
    keys: &[CellKey],
    runs: &BTreeMap<CellKey, Vec<RunSample>>,
    failures: &BTreeMap<CellKey, Vec<String>>,
    unavailable: &BTreeMap<Mode, String>,
    s: &Settings,
) -> Vec<CellReport> {
    let empty = Vec::new();
    keys.iter()
        .map(|k| {
            let fails = failures.get(k).cloned().unwrap_or_default();
            if let Some(r) = unavailable.get(&k.mode) {
                return CellReport {
                    workload: k.workload,
                    mode: k.mode,
                    activity: k.activity,
                    status: CellStatus::Unavailable,
                    reason: Some(r.clone()),
                    runs: Vec::new(),
                    failures: fails,
                    summary: None,
                };
            }
            let mut rs = runs.get(k).cloned().unwrap_or_default();
            rs.sort_by_key(|r| r.rep);
            let base = runs.get(&k.baseline()).unwrap_or(&empty);
            let summary = summarize(k, &rs, base, s);
            let (status, reason) = match summary {
                Some(_) => (CellStatus::Ok, None),
                None => (
                    CellStatus::Failed,
                    Some(fails.first().cloned().unwrap_or_else(|| "no runs".into())),
                ),
            };
            CellReport {
                workload: k.workload,
                mode: k.mode,
                activity: k.activity,
                status,
                reason,
                runs: rs,
                failures: fails,
                summary,
            }
        })
        .collect()
}

/// Statistics of one cell; None when it has no runs.
pub fn summarize(
    k: &CellKey,
    rs: &[RunSample],
    base: &[RunSample],
    s: &Settings,
) -> Option<CellSummary> {
    let ticks: Vec<u64> = rs.iter().map(|r| r.workload_tsc).collect();
    let workload_tsc = Summary::of_u64(&ticks)?;
    let tsc_hz = s.tsc_khz.max(1) as f64 * 1000.0;
    let workload_ms = workload_tsc.map(|t| t / tsc_hz * 1000.0);
    let overhead_pct = if k.is_baseline() {
        None
    } else {
        let reps = rs.iter().chain(base).map(|r| r.rep).max().unwrap_or(0) as usize + 1;
        let mut b = vec![None; reps];
        let mut c = vec![None; reps];
        for r in base {
            b[r.rep as usize] = Some(r.workload_tsc);
        }
        for r in rs {
            c[r.rep as usize] = Some(r.workload_tsc);
        }
        Summary::of(&stats::paired_overheads(&b, &c))
    };
    let mut exits = BTreeMap::new();
    for (i, (name, _)) in Exits::default().reasons().iter().enumerate() {
        let v: Vec<u64> = rs.iter().map(|r| r.exits.reasons()[i].1).collect();
        if let Some(sm) = Summary::of_u64(&v) {
            exits.insert(name.to_string(), sm);
        }
    }
    let per_s: Vec<f64> = rs
        .iter()
        .filter_map(|r| stats::ratio(r.exits.msr_exits() as f64, r.workload_tsc as f64 / tsc_hz))
        .collect();
    let per_exit: Vec<f64> = rs
        .iter()
        .filter_map(|r| stats::ratio(r.exits.handling_ns as f64, r.exits.exits as f64))
        .collect();

    let (mut samples, mut expected, mut accuracy) = (None, None, None);
    if let Some(hz) = k.activity.sample_hz() {
        let mut d = Vec::new();
        let mut e = Vec::new();
        let mut a = Vec::new();
        for r in rs {
            let got: u64 = r.guest.iter().map(|g| g.samples.unwrap_or(0)).sum();
            let got = if r.guest.iter().any(|g| g.samples.is_some()) {
                got
            } else {
                r.exits.pmis
            };
            let tsc: u64 = r.guest.iter().map(|g| g.tsc).sum();
            let exp = tsc as f64 / tsc_hz * hz as f64;
            d.push(got as f64);
            e.push(exp);
            if let Some(x) = stats::ratio(got as f64 * 100.0, exp) {
                a.push(x);
            }
        }
        samples = Summary::of(&d);
        expected = Summary::of(&e);
        accuracy = Summary::of(&a);
    }

    let pmi_latency = pmi_latency(rs, s.tsc_khz);

    Some(CellSummary {
        workload_tsc,
        workload_ms,
        overhead_pct,
        exits,
        msr_exits_per_s: Summary::of(&per_s),
        vmm_ns_per_exit: Summary::of(&per_exit),
        samples,
        expected_samples: expected,
        sample_accuracy_pct: accuracy,
        pmi_latency,
    })
}

/// PMI latency of a cell: percentiles over the accepted guest repetitions of all runs;
/// `None` when no repetition reported a latency.
pub fn pmi_latency(rs: &[RunSample], tsc_khz: u64) -> Option<PmiLatency> {
    let ns = |t: f64| ticks_to_ns(t, tsc_khz);
    let (mut means, mut maxes, mut rejected) = (Vec::new(), Vec::new(), Vec::new());
    let (mut lo, mut hi, mut pmis) = (f64::INFINITY, f64::NEG_INFINITY, 0u64);
    for r in rs {
        for g in &r.guest {
            let Some(l) = g.pmi_latency else { continue };
            if let Some(reason) = &g.pmi_latency_rejected {
                rejected.push(RejectedLatency {
                    run: r.rep,
                    guest_rep: g.rep,
                    reason: reason.clone(),
                });
                continue;
            }
            if let Some(m) = l.mean() {
                means.push(ns(m));
                maxes.push(ns(l.max as f64));
                lo = lo.min(ns(l.min as f64));
                hi = hi.max(ns(l.max as f64));
                pmis += l.n;
            }
        }
    }
    if means.is_empty() && rejected.is_empty() {
        return None;
    }
    Some(PmiLatency {
        rep_mean_ns: Percentiles::of(&means),
        rep_max_ns: Percentiles::of(&maxes),
        min_ns: lo.is_finite().then_some(lo),
        max_ns: hi.is_finite().then_some(hi),
        pmis,
        reps: means.len(),
        rejected,
    })
}

/// The MSR-cost section from the `workload=msr` runs. Each run prints one line per kind:
/// `BENCH rep=0 workload=msr kind=pmu msr=0xc0010004 iters=N tsc=T`.
pub fn msr_cost(
    runs: &[(Mode, RawRun)],
    failures: &[String],
    tsc_khz: u64,
    msr_iters: u64,
) -> MsrCost {
    let mut per: BTreeMap<(Mode, String), (Option<String>, Vec<f64>)> = BTreeMap::new();
    let mut handling = Vec::new();
    let mut errors: Vec<String> = failures.to_vec();
    for (m, raw) in runs {
        let out = parse_output(&raw.console);
        if let Some(e) = out.error() {
            errors.push(format!("{m}: guest error: {e}"));
            continue;
        }
        if !raw.clean || !out.done {
            errors.push(format!(
                "{m}: guest did not finish ({}): {}",
                raw.outcome,
                tail(&raw.console, 2)
            ));
            continue;
        }
        let recs = out.msr_records();
        if recs.is_empty() {
            errors.push(format!("{m}: the guest printed no msr lines"));
            continue;
        }
        for r in recs {
            let (Some(kind), Some(t)) = (r.get("kind"), r.u64(&["tsc", "ticks"])) else {
                continue;
            };
            let iters = r.u64(&["iters"]).unwrap_or(msr_iters).max(1);
            let e = per
                .entry((*m, kind.to_string()))
                .or_insert((r.get("msr").map(String::from), Vec::new()));
            e.1.push(t as f64 / iters as f64);
        }
        if *m == Mode::Userspace {
            let exits = Exits::sum_of(&raw.vcpus);
            if let Some(x) = stats::ratio(exits.handling_ns as f64, exits.exits as f64) {
                handling.push(x);
            }
        }
    }
    let rows: Vec<MsrCostRow> = per
        .into_iter()
        .filter_map(|((mode, kind), (msr, v))| {
            let t = Summary::of(&v)?;
            Some(MsrCostRow {
                mode,
                kind,
                msr,
                ticks_per_access: t,
                ns_per_access: t.map(|x| ticks_to_ns(x, tsc_khz)),
            })
        })
        .collect();
    let find = |kind: &str| {
        rows.iter()
            .find(|r| r.mode == Mode::Userspace && r.kind == kind)
            .map(|r| r.ticks_per_access.median)
    };
    let (userspace_over_kvm, userspace_extra_ns) = match (find("pmu"), find("kvm")) {
        (Some(p), Some(k)) => (stats::ratio(p, k), Some(ticks_to_ns(p - k, tsc_khz))),
        _ => (None, None),
    };
    // Net of the loop: subtract the `nop` loop's cost (only meaningful when both
    // differences are positive; with emulation noise the KVM one can vanish).
    let (kvm_net_ns, userspace_net_ns, userspace_over_kvm_net) =
        match (find("pmu"), find("kvm"), find("nop")) {
            (Some(p), Some(k), Some(n)) if p > n && k > n => (
                Some(ticks_to_ns(k - n, tsc_khz)),
                Some(ticks_to_ns(p - n, tsc_khz)),
                stats::ratio(p - n, k - n),
            ),
            _ => (None, None, None),
        };
    let status = if rows.is_empty() {
        format!(
            "failed: {}",
            errors.first().cloned().unwrap_or_else(|| "no runs".into())
        )
    } else if errors.is_empty() {
        "ok".into()
    } else {
        format!("partial: {}", errors.join("; "))
    };
    MsrCost {
        status,
        rows,
        userspace_over_kvm,
        userspace_extra_ns,
        kvm_net_ns,
        userspace_net_ns,
        userspace_over_kvm_net,
        vmm_handling_ns_per_exit: Summary::of(&handling),
        note: "Timed with rdtsc at guest CPL0. On this host (KVM PVM variant) guest CPL0 code is \
               emulated instruction by instruction, so every figure includes the emulation of \
               the rdmsr and of the loop around it; `nop` is that loop without the rdmsr."
            .into(),
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // fake TSC counts from scaled floats
pub(crate) mod fake {
    use super::*;

    /// A fake VMM: the workload takes `base` ticks in `off`, `base * factor` otherwise;
    /// `emulated` is unavailable; `passthrough` always fails.
    #[derive(Default)]
    pub struct Fake {
        pub calls: Vec<(Mode, String)>,
        /// The next `sample:1000` run reports one PMI with the absolute TSC as its latency
        /// (handled before the guest stored its due stamp).
        pub wild_latency: bool,
    }

    fn kv<'a>(cmd: &'a str, k: &str) -> Option<&'a str> {
        cmd.split_whitespace()
            .find_map(|t| t.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
    }

    impl Backend for Fake {
        fn availability(&mut self, mode: Mode) -> Result<(), String> {
            match mode {
                Mode::Emulated => Err("no hardware PMU".into()),
                _ => Ok(()),
            }
        }
        fn run(&mut self, mode: Mode, cmd: &str) -> Result<RawRun, RunError> {
            self.calls.push((mode, cmd.to_string()));
            if mode == Mode::Passthrough {
                return Err(RunError::Failed("boom".into()));
            }
            let w = kv(cmd, "workload").unwrap_or("");
            let iters: u64 = kv(cmd, "iters").and_then(|v| v.parse().ok()).unwrap_or(0);
            let pmu = kv(cmd, "pmu").unwrap_or("none");
            let rep = self.calls.len() as u64;
            let console = if w == "msr" {
                let pmu_cost = if mode == Mode::Userspace {
                    20_000
                } else {
                    2_000
                };
                format!(
                    "BENCH rep=0 workload=msr kind=nop iters={iters} tsc={}\n\
                     BENCH rep=0 workload=msr kind=kvm msr=0x174 iters={iters} tsc={}\n\
                     BENCH rep=0 workload=msr kind=pmu msr=0xc0010004 iters={iters} tsc={}\nBENCH done\n",
                    iters * 500,
                    iters * 2_000,
                    iters * pmu_cost
                )
            } else {
                // 1 tick per iteration at 1 GHz TSC; userspace sampling costs 10% (+ jitter).
                let factor = if mode == Mode::Userspace && pmu.starts_with("sample") {
                    1.10
                } else {
                    1.0
                };
                let tsc = (iters as f64 * factor) as u64 + rep % 3;
                let mut line = format!("BENCH rep=0 workload={w} pmu={pmu} tsc={tsc}");
                if let Some(hz) = pmu
                    .strip_prefix("sample:")
                    .and_then(|h| h.parse::<u64>().ok())
                {
                    let n = tsc * hz / 1_000_000_000;
                    if self.wild_latency && hz == 1000 {
                        self.wild_latency = false;
                        let wild: u64 = 5_890_000_000_000;
                        line.push_str(&format!(
                            " samples={n} pmi_latency_tsc_min=1000 pmi_latency_tsc_max={wild} pmi_latency_tsc_sum={}",
                            (n - 1) * 2000 + wild
                        ));
                    } else {
                        line.push_str(&format!(
                            " samples={n} pmi_latency_tsc_min=1000 pmi_latency_tsc_max=3000 pmi_latency_tsc_sum={}",
                            n * 2000
                        ));
                    }
                }
                format!("banner\n{line}\nBENCH done\n")
            };
            Ok(RawRun {
                console,
                vcpus: vec![VcpuStats {
                    exits: 100,
                    io_out: 80,
                    msr_read: if mode == Mode::Userspace { 10 } else { 0 },
                    handling_ns: 100_000,
                    ..VcpuStats::default()
                }],
                wall_ns: 5_000_000,
                start_to_first_entry_ns: 1_000_000,
                outcome: "debug exit 0".into(),
                clean: true,
                ..RawRun::default()
            })
        }
    }

    pub fn settings() -> Settings {
        Settings {
            reps: 5,
            guest_reps: 1,
            modes: Mode::ALL.to_vec(),
            workloads: vec![Workload::Lfsr],
            activities: vec![Activity::None, Activity::Sample(1000)],
            iters: None,
            target_ms: 100,
            tsc_khz: 1_000_000,
            chase_buf_kib: 4096,
            msr_iters: 1000,
            time_budget: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{settings, Fake};
    use super::*;

    #[test]
    fn end_to_end_with_fake_backend() {
        let mut f = Fake::default();
        let s = settings();
        let mut seen = Vec::new();
        let mut p = |d: usize, t: usize, l: &str| seen.push((d, t, l.to_string()));
        let m = execute(&mut f, &s, &mut p).unwrap();
        // calibrated: 100 ms at 1 GHz = 1e8 ticks = 1e8 iterations.
        assert_eq!(m.iters.get("lfsr"), Some(&100_000_000));
        assert!(m.iters_source.contains("100 ms"));
        // emulated: unavailable, never run; passthrough: failed.
        assert!(f.calls.iter().all(|(m, _)| *m != Mode::Emulated));
        let em = m.cells.iter().find(|c| c.mode == Mode::Emulated).unwrap();
        assert_eq!(em.status, CellStatus::Unavailable);
        assert_eq!(em.reason.as_deref(), Some("no hardware PMU"));
        let pt = m
            .cells
            .iter()
            .find(|c| c.mode == Mode::Passthrough)
            .unwrap();
        assert_eq!(pt.status, CellStatus::Failed);
        assert_eq!(pt.failures.len(), 5);
        // userspace sampling: ~10% overhead, 100 samples expected at 1 kHz over ~110 ms.
        let us = m
            .cells
            .iter()
            .find(|c| c.mode == Mode::Userspace && c.activity == Activity::Sample(1000))
            .unwrap();
        let sm = us.summary.as_ref().unwrap();
        assert_eq!(us.runs.len(), 5);
        let o = sm.overhead_pct.unwrap();
        assert!((o.median - 10.0).abs() < 0.01, "{o:?}");
        assert_eq!(o.n, 5);
        let acc = sm.sample_accuracy_pct.unwrap();
        assert!((acc.median - 100.0).abs() < 1.0, "{acc:?}");
        let lat = sm.pmi_latency.clone().unwrap();
        let mean = lat.rep_mean_ns.unwrap();
        assert_eq!((mean.p50, mean.p99, mean.n), (2000.0, 2000.0, 5));
        assert_eq!(lat.rep_max_ns.unwrap().p90, 3000.0);
        assert_eq!((lat.min_ns, lat.max_ns), (Some(1000.0), Some(3000.0)));
        assert!(lat.rejected.is_empty());
        assert!(sm.msr_exits_per_s.unwrap().median > 0.0);
        assert_eq!(sm.vmm_ns_per_exit.unwrap().median, 1000.0);
        // baseline: no overhead figure.
        let base = m.cells.iter().find(|c| c.mode == Mode::Off).unwrap();
        assert!(base.summary.as_ref().unwrap().overhead_pct.is_none());
        // msr cost: userspace pmu 20000 ticks vs kvm 2000 ticks per access = 10x.
        assert_eq!(m.msr_cost.status, "partial: passthrough rep 0: boom; passthrough rep 1: boom; passthrough rep 2: boom; passthrough rep 3: boom; passthrough rep 4: boom");
        assert_eq!(m.msr_cost.userspace_over_kvm, Some(10.0));
        assert_eq!(m.msr_cost.userspace_extra_ns, Some(18_000.0));
        // net of the 500-tick loop: 19500 vs 1500 ticks.
        assert_eq!(m.msr_cost.kvm_net_ns, Some(1500.0));
        assert_eq!(m.msr_cost.userspace_net_ns, Some(19_500.0));
        assert_eq!(m.msr_cost.userspace_over_kvm_net, Some(13.0));
        let us_pmu = m
            .msr_cost
            .rows
            .iter()
            .find(|r| r.mode == Mode::Userspace && r.kind == "pmu")
            .unwrap();
        assert_eq!(us_pmu.ns_per_access.median, 20_000.0);
        assert_eq!(us_pmu.msr.as_deref(), Some("0xc0010004"));
        // progress ended at total.
        let (d, t, l) = seen.last().unwrap();
        assert_eq!((d, l.as_str()), (t, "done"));
        assert!(seen
            .iter()
            .any(|(_, _, l)| l == "userspace lfsr sample:1000 rep 3/5"));
        // interleaving: the first matrix runs alternate cells.
        assert!(m.vmm.start_to_first_entry_ns.is_some());
        assert!(m
            .availability
            .iter()
            .any(|a| a.mode == Mode::Emulated && !a.available));
    }

    #[test]
    fn an_impossible_latency_is_rejected_not_averaged() {
        let mut f = Fake {
            wild_latency: true,
            ..Fake::default()
        };
        let s = Settings {
            modes: vec![Mode::Off, Mode::Userspace],
            msr_iters: 0,
            ..settings()
        };
        let m = execute(&mut f, &s, &mut |_, _, _| {}).unwrap();
        let us = m
            .cells
            .iter()
            .find(|c| c.mode == Mode::Userspace && c.activity == Activity::Sample(1000))
            .unwrap();
        // The raw record keeps the guest's figures and says why they were not used.
        let bad: Vec<&Rep> = us
            .runs
            .iter()
            .flat_map(|r| &r.guest)
            .filter(|g| g.pmi_latency_rejected.is_some())
            .collect();
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].pmi_latency.unwrap().max, 5_890_000_000_000);
        let lat = us.summary.as_ref().unwrap().pmi_latency.clone().unwrap();
        assert_eq!(lat.rejected.len(), 1);
        assert!(
            lat.rejected[0].reason.contains("due stamp"),
            "{:?}",
            lat.rejected
        );
        // The statistics are those of the 4 plausible runs: 2 µs, max 3 µs, not 5.89e12.
        assert_eq!(lat.reps, 4);
        let mean = lat.rep_mean_ns.unwrap();
        assert_eq!(
            (mean.p50, mean.p90, mean.p99, mean.max),
            (2000.0, 2000.0, 2000.0, 2000.0)
        );
        assert_eq!(lat.max_ns, Some(3000.0));
        // Delivered samples still count that run.
        assert_eq!(us.summary.as_ref().unwrap().samples.unwrap().n, 5);
    }

    #[test]
    fn no_run_starts_after_the_time_budget() {
        let mut f = Fake::default();
        let s = Settings {
            modes: vec![Mode::Off, Mode::Userspace],
            time_budget: Some(Duration::from_secs(10)),
            ..settings()
        };
        // A clock that advances one second per backend call: the budget is spent after 10.
        let calls = std::cell::Cell::new(0u64);
        let mut backend = Counting {
            inner: &mut f,
            calls: &calls,
        };
        let mut clock = || Duration::from_secs(calls.get());
        let m = execute_with_clock(&mut backend, &s, &mut |_, _, _| {}, &mut clock).unwrap();
        assert_eq!(f.calls.len(), 10, "{:?}", f.calls);
        // Planned: 15 matrix runs + 10 MSR runs; calibration took some of the 10.
        let ran_matrix: usize = m.cells.iter().map(|c| c.runs.len()).sum();
        let cal = 10 - ran_matrix;
        assert_eq!(m.skipped_runs, 15 - ran_matrix + 10, "calibration {cal}");
        let skipped: Vec<&String> = m
            .cells
            .iter()
            .flat_map(|c| &c.failures)
            .filter(|e| e.contains("time budget of 10 s"))
            .collect();
        assert_eq!(skipped.len(), 15 - ran_matrix);
        assert!(
            m.msr_cost.status.starts_with("failed: "),
            "{}",
            m.msr_cost.status
        );
        assert!(
            m.msr_cost.status.contains("time budget"),
            "{}",
            m.msr_cost.status
        );
        // Without a budget, the same clock changes nothing.
        let mut g = Fake::default();
        let calls = std::cell::Cell::new(0u64);
        let mut backend = Counting {
            inner: &mut g,
            calls: &calls,
        };
        let s = Settings {
            time_budget: None,
            ..s
        };
        let m = execute_with_clock(&mut backend, &s, &mut |_, _, _| {}, &mut || {
            Duration::from_secs(calls.get())
        })
        .unwrap();
        assert_eq!(m.skipped_runs, 0);
    }

    /// Counts backend runs for a fake clock.
    struct Counting<'a> {
        inner: &'a mut Fake,
        calls: &'a std::cell::Cell<u64>,
    }

    impl Backend for Counting<'_> {
        fn availability(&mut self, mode: Mode) -> Result<(), String> {
            self.inner.availability(mode)
        }
        fn run(&mut self, mode: Mode, cmdline: &str) -> Result<RawRun, RunError> {
            self.calls.set(self.calls.get() + 1);
            self.inner.run(mode, cmdline)
        }
    }

    #[test]
    fn periods() {
        assert_eq!(period_tsc(Activity::Sample(1000), 2_600_000), 2_600_000);
        assert_eq!(period_tsc(Activity::Sample(10_000), 2_600_000), 260_000);
        assert_eq!(period_tsc(Activity::Multiplex(10), 2_600_000), 2_600_000);
        assert_eq!(period_tsc(Activity::Count(4), 2_600_000), 0);
    }

    #[test]
    fn fixed_iters_and_no_msr() {
        let mut f = Fake::default();
        let s = Settings {
            iters: Some(5000),
            msr_iters: 0,
            modes: vec![Mode::Off, Mode::Userspace],
            ..settings()
        };
        let m = execute(&mut f, &s, &mut |_, _, _| {}).unwrap();
        assert_eq!(m.iters_source, "--iters");
        assert!(m.msr_cost.status.starts_with("skipped"));
        // 5 reps x (baseline + 2 userspace cells), no calibration, no msr runs.
        assert_eq!(f.calls.len(), 15);
        assert!(f.calls.iter().all(|(_, c)| c.contains("iters=5000")));
    }

    #[test]
    fn validate_rejects_bad_runs() {
        let ok = RawRun {
            console: "BENCH rep=0 workload=loop tsc=5\nBENCH done\n".into(),
            clean: true,
            ..RawRun::default()
        };
        assert_eq!(validate(&ok, "loop").unwrap().len(), 1);
        assert!(validate(&ok, "lfsr").is_err());
        let unclean = RawRun {
            clean: false,
            outcome: "triple fault".into(),
            ..ok.clone()
        };
        assert!(validate(&unclean, "loop")
            .unwrap_err()
            .contains("triple fault"));
        let no_done = RawRun {
            console: "BENCH rep=0 workload=loop tsc=5\n".into(),
            ..ok.clone()
        };
        assert!(validate(&no_done, "loop")
            .unwrap_err()
            .contains("BENCH done"));
        let err = RawRun {
            console: "BENCH error=unknown-workload\n".into(),
            ..ok
        };
        assert!(validate(&err, "loop")
            .unwrap_err()
            .contains("unknown-workload"));
    }

    #[test]
    fn cmdline_and_rounding() {
        let s = settings();
        assert_eq!(
            guest_cmdline(&s, Workload::Chase, 10, Activity::Multiplex(10)),
            "workload=chase iters=10 pmu=multiplex:10 tsc_khz=1000000 reps=1 buf=4096"
        );
        assert_eq!(round2(123_456), 120_000);
        assert_eq!(round2(99_999_998), 100_000_000);
        assert_eq!(round2(125_000), 130_000);
        assert_eq!(round2(99), 99);
        assert_eq!(round2(0), 1);
    }
}
