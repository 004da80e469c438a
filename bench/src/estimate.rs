//! How long a run will take, said before it starts, and the time budget that bounds
//! `--quick`.
//!
//! The estimate is arithmetic on the plan, not a measurement: VM runs (matrix, calibration,
//! MSR cost) times a fixed cost per VM run plus the workload time each run is asked for
//! (`--target-ms` x `--guest-reps`, slowed by the cell's PMU activity by the nominal
//! factors of [`activity_factor`]). It describes an idle host; other load on the host, and
//! hosts where guest CPL0 is emulated (where every PMI is expensive), take longer, which is
//! why `--quick` also has a hard [time budget](QUICK_TIME_BUDGET_S).

use std::time::Duration;

use crate::harness::Settings;
use crate::model::{self, Activity, Mode};

/// Cost of one VM run besides its workload region: VM creation, guest boot, arming,
/// console output, teardown. The development host's baseline runs took ~60 ms beyond
/// their workload when idle (`vmm.baseline_run_wall_ms` minus 3 x 200 ms).
pub const RUN_OVERHEAD_S: f64 = 0.1;

/// Guest time of one PMI (NMI entry, handler, re-arming), used for the sampling
/// slowdown. 400 µs is what the development host (guest CPL0 emulated) showed at 1 kHz and
/// 10 kHz on `loop`/`lfsr`; a host running guest CPL0 natively is ~100x faster, so there
/// the estimate is on the long side.
pub const PMI_COST_S: f64 = 400e-6;

/// Guest time of one MSR access in the MSR-cost workload (three kinds per run).
pub const MSR_ACCESS_S: f64 = 10e-6;

/// Calibration runs per workload the estimate counts (the search takes 3-4 typically, 8
/// at most): two short ones and two at about the target.
pub const CALIBRATION_RUNS: usize = 4;

/// The hard time budget of `--quick`, seconds: no VM run starts after it (see
/// [`Settings::time_budget`]). With the run in flight (a few seconds at most at `--quick`
/// sizes), the host probe before and the report writing after, the whole `--quick` stays
/// under 2 minutes however loaded the host is.
pub const QUICK_TIME_BUDGET_S: u64 = 100;

/// Nominal slowdown of the workload region by a guest PMU activity: 1 without PMIs;
/// sampling at HZ adds one [`PMI_COST_S`] per period (`1 + HZ x cost`: 1.4 at 1 kHz, 5 at
/// 10 kHz); `multiplex` samples at 1 kHz and rotates counters on every PMI, about 1.75x
/// that PMI's cost.
pub fn activity_factor(a: Activity) -> f64 {
    match a {
        Activity::None | Activity::Count(_) => 1.0,
        Activity::Sample(hz) => 1.0 + f64::from(hz) * PMI_COST_S,
        Activity::Multiplex(_) => 1.0 + 1000.0 * PMI_COST_S * 1.75,
    }
}

/// What a run will do and about how long it takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Matrix runs (cells x `--reps`, unavailable modes left out).
    pub matrix_runs: usize,
    /// Calibration runs counted ([`CALIBRATION_RUNS`] per workload; 0 with `--iters`).
    pub calibration_runs: usize,
    /// MSR-cost runs (available modes x `--reps`; 0 with `--msr-iters 0`).
    pub msr_runs: usize,
    /// Estimated wall time on an idle host, seconds.
    pub seconds: f64,
}

impl Estimate {
    /// All VM runs.
    pub fn runs(&self) -> usize {
        self.matrix_runs + self.calibration_runs + self.msr_runs
    }

    /// One line for stderr before the run starts.
    pub fn describe(&self, s: &Settings) -> String {
        let mut line = format!(
            "bench: {} VM runs ({} matrix = cells x {} reps, {} calibration, {} MSR cost); \
             estimated {} on an idle host ({}{} ms regions x {} guest reps, sampling \
             cells 1.4-5x longer); load or emulated guest CPL0 take longer",
            self.runs(),
            self.matrix_runs,
            s.reps,
            self.calibration_runs,
            self.msr_runs,
            duration_words(self.seconds),
            if s.iters.is_some() {
                "fixed --iters, counted as "
            } else {
                ""
            },
            s.target_ms,
            s.guest_reps
        );
        if let Some(b) = s.time_budget {
            line.push_str(&format!(
                "; time budget {} s: no run starts after it",
                b.as_secs()
            ));
            if self.seconds > b.as_secs_f64() {
                line.push_str(" (the estimate exceeds it: later passes will be skipped)");
            }
        }
        line
    }
}

/// `45 s`, `2.5 min`.
pub fn duration_words(s: f64) -> String {
    if s < 90.0 {
        format!("{:.0} s", s.max(1.0))
    } else {
        format!("{:.1} min", s / 60.0)
    }
}

/// Estimates a run of `s` on a host that offers `available` of the requested modes (the
/// `off` baseline is always run).
pub fn estimate(s: &Settings, available: &[Mode]) -> Estimate {
    let mut modes = vec![Mode::Off];
    modes.extend(
        s.modes
            .iter()
            .copied()
            .filter(|m| *m != Mode::Off && available.contains(m)),
    );
    let region_s = s.target_ms as f64 / 1000.0 * f64::from(s.guest_reps);
    let cells = model::cells(&modes, &s.workloads, &s.activities);
    let reps = s.reps as usize;
    let matrix_runs = cells.len() * reps;
    let matrix_s: f64 = cells
        .iter()
        .map(|c| RUN_OVERHEAD_S + region_s * activity_factor(c.activity))
        .sum::<f64>()
        * reps as f64;
    let calibration_runs = if s.iters.is_none() {
        s.workloads.len() * CALIBRATION_RUNS
    } else {
        0
    };
    let cal_region_s = s.target_ms as f64 / 1000.0 * f64::from(s.guest_reps.max(3));
    let calibration_s = s.workloads.len() as f64
        * if s.iters.is_none() {
            CALIBRATION_RUNS as f64 * RUN_OVERHEAD_S + 2.0 * cal_region_s
        } else {
            0.0
        };
    let msr_runs = if s.msr_iters > 0 {
        modes.len() * reps
    } else {
        0
    };
    let msr_s = msr_runs as f64 * (RUN_OVERHEAD_S + s.msr_iters as f64 * 3.0 * MSR_ACCESS_S);
    Estimate {
        matrix_runs,
        calibration_runs,
        msr_runs,
        seconds: matrix_s + calibration_s + msr_s,
    }
}

/// The time budget of a run: `--time-budget S` when given, [`QUICK_TIME_BUDGET_S`] with
/// `--quick`, none otherwise.
pub fn time_budget(quick: bool, given_s: Option<u64>) -> Option<Duration> {
    given_s
        .or(quick.then_some(QUICK_TIME_BUDGET_S))
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::fake::settings;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn factors() {
        assert_eq!(activity_factor(Activity::None), 1.0);
        assert_eq!(activity_factor(Activity::Count(4)), 1.0);
        assert!(close(activity_factor(Activity::Sample(1000)), 1.4));
        assert!(close(activity_factor(Activity::Sample(10_000)), 5.0));
        assert!(close(activity_factor(Activity::Multiplex(10)), 1.7));
    }

    #[test]
    fn counts_runs_and_time_from_the_plan() {
        // 1 workload, activities none + sample:1000, 5 reps, 1 guest rep of 100 ms,
        // msr 1000 iterations.
        let s = settings();
        // Only off and userspace available: cells = baseline + 2 userspace.
        let e = estimate(&s, &[Mode::Off, Mode::Userspace]);
        assert_eq!((e.matrix_runs, e.calibration_runs, e.msr_runs), (15, 4, 10));
        assert_eq!(e.runs(), 29);
        let matrix = 5.0 * (3.0 * RUN_OVERHEAD_S + 0.1 * (1.0 + 1.0 + 1.4));
        let calibration = 4.0 * RUN_OVERHEAD_S + 2.0 * 0.3;
        let msr = 10.0 * (RUN_OVERHEAD_S + 1000.0 * 3.0 * MSR_ACCESS_S);
        assert!(close(e.seconds, matrix + calibration + msr), "{e:?}");
        // Every mode available: 1 + 3 x 2 cells.
        let all = estimate(&s, &Mode::ALL);
        assert_eq!((all.matrix_runs, all.msr_runs), (35, 20));
        // --reps scales the matrix and the MSR runs linearly; --iters drops calibration.
        let twice = estimate(
            &Settings {
                reps: 10,
                iters: Some(5),
                msr_iters: 0,
                ..settings()
            },
            &[Mode::Off, Mode::Userspace],
        );
        assert_eq!(
            (twice.matrix_runs, twice.calibration_runs, twice.msr_runs),
            (30, 0, 0)
        );
        assert!(close(twice.seconds, 2.0 * matrix));
    }

    #[test]
    fn the_default_full_run_and_quick() {
        let args = crate::BenchArgs::defaults();
        let full = args.settings(2_600_000).unwrap();
        let here = estimate(&full, &[Mode::Off, Mode::Userspace]);
        // 3 workloads x (baseline + 5 activities) x 5 reps.
        assert_eq!(here.matrix_runs, 90);
        assert!(here.seconds > 100.0 && here.seconds < 150.0, "{here:?}");
        let quick = crate::BenchArgs {
            quick: true,
            ..crate::BenchArgs::defaults()
        }
        .settings(2_600_000)
        .unwrap();
        let q = estimate(&quick, &Mode::ALL);
        assert_eq!(q.matrix_runs, 3 * 16 * 3);
        // Nominally well inside its budget even with every mode available.
        assert!(q.seconds < QUICK_TIME_BUDGET_S as f64 / 2.0, "{q:?}");
        assert_eq!(
            quick.time_budget,
            Some(Duration::from_secs(QUICK_TIME_BUDGET_S))
        );
        assert_eq!(full.time_budget, None);
        let line = q.describe(&quick);
        assert!(line.contains("time budget 100 s"), "{line}");
        assert!(line.contains(&format!("{} VM runs", q.runs())), "{line}");
    }

    #[test]
    fn budgets_and_words() {
        assert_eq!(time_budget(false, None), None);
        assert_eq!(time_budget(true, None), Some(Duration::from_secs(100)));
        assert_eq!(time_budget(true, Some(30)), Some(Duration::from_secs(30)));
        assert_eq!(time_budget(false, Some(30)), Some(Duration::from_secs(30)));
        assert_eq!(duration_words(45.2), "45 s");
        assert_eq!(duration_words(150.0), "2.5 min");
    }
}
