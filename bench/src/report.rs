//! The benchmark report: what `bench.json` holds (documented in docs/BENCH-SCHEMA.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{Activity, Mode, Workload};
use crate::parse::Rep;
use crate::stats::{Percentiles, Summary};
use vmm::vcpu::VcpuStats;

/// Name of the schema, stored in `schema`.
pub const SCHEMA_NAME: &str = "vpmu-vmm-bench";
/// Version of the schema, stored in `schema_version`; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 2;

/// The whole report (`bench.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// Always [`SCHEMA_NAME`].
    pub schema: String,
    /// [`SCHEMA_VERSION`] of the writer.
    pub schema_version: u32,
    /// When the run started, RFC 3339 UTC (`2026-11-21T07:30:00Z`).
    pub generated_at: String,
    /// Wall-clock duration of the whole run, seconds.
    pub duration_s: f64,
    /// The process command line.
    pub command_line: Vec<String>,
    pub versions: Versions,
    pub host: HostInfo,
    pub config: RunConfig,
    /// The matrix cells, in report order (workload, then mode, then activity).
    pub cells: Vec<CellReport>,
    /// Cost of one MSR access by how it is handled.
    pub msr_cost: MsrCost,
    /// VMM-level figures gathered over all runs.
    pub vmm: VmmFigures,
    /// VM runs not started because `config.time_budget_s` was spent (they are listed in
    /// the cells' `failures` and in `msr_cost.status`).
    pub skipped_runs: usize,
}

/// Software versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    /// The vpmu-vmm workspace version.
    pub vpmu_vmm: String,
    /// `rustc --version` of the toolchain on PATH when the bench ran (None if unavailable).
    pub rustc: Option<String>,
}

impl Versions {
    /// This build's version and the toolchain on PATH now (both reports record them).
    pub fn current() -> Versions {
        Versions {
            vpmu_vmm: env!("CARGO_PKG_VERSION").to_string(),
            rustc: crate::host::rustc_version(),
        }
    }
}

/// Whether a mode is available on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeAvailability {
    pub mode: Mode,
    pub available: bool,
    /// Why not, when not available.
    pub reason: Option<String>,
}

/// The host the bench ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: Option<String>,
    /// Online logical CPUs.
    pub cpus: Option<usize>,
    /// Kernel release and version (`uname -r` / `uname -v`).
    pub kernel: Option<String>,
    /// Loaded KVM modules (from /sys/module: kvm, kvm_intel, kvm_amd, kvm_pvm).
    pub kvm_modules: Vec<String>,
    /// TSC frequency in kHz used to convert guest ticks to time.
    pub tsc_khz: u64,
    /// Where `tsc_khz` came from.
    pub tsc_khz_source: String,
    /// The host PMU probe (`vpmu-vmm probe --json`), when it succeeded.
    pub pmu: Option<serde_json::Value>,
    /// The probe's text report (`vpmu-vmm probe`), when it succeeded.
    pub pmu_report: Option<String>,
    /// Probe error, when it failed.
    pub probe_error: Option<String>,
    /// Availability of each requested mode.
    pub modes: Vec<ModeAvailability>,
    /// /proc/loadavg when the run started and when it ended (other load on the host
    /// widens the [min..max] ranges).
    pub loadavg_start: Option<String>,
    pub loadavg_end: Option<String>,
}

/// The run configuration actually used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub quick: bool,
    /// VM runs per cell.
    pub reps: u32,
    /// Workload repetitions inside each VM run (the guest's `reps=`).
    pub guest_reps: u32,
    pub modes: Vec<Mode>,
    pub workloads: Vec<Workload>,
    pub activities: Vec<Activity>,
    /// Iterations per workload (`iters=`), after calibration.
    pub iters: BTreeMap<String, u64>,
    /// How `iters` was chosen: `calibrated to N ms` or `--iters`.
    pub iters_source: String,
    /// Pointer-chase buffer size in KiB (the guest's `buf=`).
    pub chase_buf_kib: u64,
    /// Iterations of the MSR-cost workload.
    pub msr_iters: u64,
    /// vCPUs and guest memory per VM.
    pub vcpus: u32,
    pub guest_memory_mib: u64,
    /// Run order description.
    pub order: String,
    /// No VM run started after this many seconds (`--time-budget`; 100 with `--quick`).
    pub time_budget_s: Option<u64>,
    /// The up-front estimate of the run's wall time on an idle host, seconds
    /// (`bench::estimate`).
    pub estimate_s: Option<f64>,
}

/// Exit counters of one VM run, summed over its vCPUs ([`Exits::sum_of`] the VMM's
/// `vmm::vcpu::VcpuStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exits {
    pub exits: u64,
    pub io_in: u64,
    pub io_out: u64,
    pub mmio: u64,
    pub msr_read: u64,
    pub msr_write: u64,
    pub msr_gp: u64,
    pub interrupted: u64,
    pub pmis: u64,
    pub tsc_in_guest: u64,
    pub handling_ns: u64,
}

impl Exits {
    /// The exit-reason counters, by name, in table order (not the time fields).
    pub fn reasons(&self) -> [(&'static str, u64); 9] {
        [
            ("exits", self.exits),
            ("io_in", self.io_in),
            ("io_out", self.io_out),
            ("mmio", self.mmio),
            ("msr_read", self.msr_read),
            ("msr_write", self.msr_write),
            ("msr_gp", self.msr_gp),
            ("interrupted", self.interrupted),
            ("pmis", self.pmis),
        ]
    }

    /// MSR exits to userspace (reads + writes).
    pub fn msr_exits(&self) -> u64 {
        self.msr_read + self.msr_write
    }

    /// `vmm::VcpuStats` summed over vCPUs. The counters are taken by name through
    /// their serde form, so there is no field-by-field copy of the VMM's type here; the
    /// report keeps its own type because the VMM's is not `Deserialize` (bench.json is read
    /// back), and a test checks that both have the same fields.
    pub fn sum_of(vcpus: &[VcpuStats]) -> Exits {
        let mut total = serde_json::Map::new();
        for v in vcpus {
            let Ok(serde_json::Value::Object(m)) = serde_json::to_value(v) else {
                continue;
            };
            for (k, x) in m {
                let e = total.entry(k).or_insert(serde_json::Value::from(0u64));
                let sum = e
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_add(x.as_u64().unwrap_or(0));
                *e = sum.into();
            }
        }
        if total.is_empty() {
            return Exits::default();
        }
        serde_json::from_value(serde_json::Value::Object(total)).unwrap_or_default()
    }
}

/// One successful VM run (one repetition of a cell).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSample {
    /// Repetition index (the interleaved pass).
    pub rep: u32,
    /// Guest TSC ticks of the workload region (median over the guest's own reps).
    pub workload_tsc: u64,
    /// The guest's `BENCH` lines for this run.
    pub guest: Vec<Rep>,
    /// Exit counters, summed over vCPUs.
    pub exits: Exits,
    /// The userspace vPMU's per-vCPU statistics (`RunReport.pmu`), empty in other modes.
    pub pmu: Vec<serde_json::Value>,
    /// Wall time of `vmm::run`, ns.
    pub wall_ns: u64,
    /// VMM start to the first KVM_RUN entry, ns.
    pub start_to_first_entry_ns: u64,
}

/// Outcome of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CellStatus {
    /// At least one run succeeded.
    Ok,
    /// The host cannot offer the mode; no number is reported.
    Unavailable,
    /// Every run failed.
    Failed,
}

/// PMI delivery latency over a cell's runs.
///
/// The guest reports one aggregate per workload repetition (`n`, `min`, `max`, `sum` of
/// its PMIs' latencies), so the distribution is over repetitions (every guest repetition
/// of every run), not over single PMIs. Aggregates that cannot be true
/// ([`crate::parse::Latency::implausible`]) are left out and listed in `rejected`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PmiLatency {
    /// Mean latency of each accepted repetition (ns): p50/p90/p99/min/max over them.
    /// None when every repetition was rejected.
    pub rep_mean_ns: Option<Percentiles>,
    /// Worst single latency of each accepted repetition (ns): p50/p90/p99/min/max.
    pub rep_max_ns: Option<Percentiles>,
    /// Smallest single latency in any accepted repetition (ns).
    pub min_ns: Option<f64>,
    /// Largest single latency in any accepted repetition (ns).
    pub max_ns: Option<f64>,
    /// PMIs in the accepted repetitions.
    pub pmis: u64,
    /// Repetitions whose latency aggregate was accepted.
    pub reps: usize,
    /// Repetitions whose latency aggregate was rejected, with the reason.
    pub rejected: Vec<RejectedLatency>,
}

/// A guest repetition's latency aggregate left out of the statistics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedLatency {
    /// The run (`RunSample.rep`).
    pub run: u32,
    /// The guest's repetition inside that run (`Rep.rep`).
    pub guest_rep: u64,
    /// Why ([`crate::parse::Latency::implausible`]).
    pub reason: String,
}

/// The per-cell statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellSummary {
    /// Workload region, guest TSC ticks.
    pub workload_tsc: Summary,
    /// Workload region, milliseconds.
    pub workload_ms: Summary,
    /// Paired overhead vs the `off` baseline of the same pass, percent. None for the
    /// baseline itself or when it has no runs.
    pub overhead_pct: Option<Summary>,
    /// Exit counters per run, by reason (see [`Exits::reasons`]).
    pub exits: BTreeMap<String, Summary>,
    /// MSR exits (read + write) per second of workload region.
    pub msr_exits_per_s: Option<Summary>,
    /// VMM time handling exits per exit (handling_ns / exits), ns.
    pub vmm_ns_per_exit: Option<Summary>,
    /// Samples (PMIs) delivered per run, when sampling.
    pub samples: Option<Summary>,
    /// Samples expected per run (workload time x frequency), when sampling.
    pub expected_samples: Option<Summary>,
    /// Delivered / expected x 100 per run, when sampling.
    pub sample_accuracy_pct: Option<Summary>,
    /// PMI delivery latency, when the guest measured it (percentiles, implausible
    /// aggregates rejected).
    pub pmi_latency: Option<PmiLatency>,
}

/// One cell of the matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellReport {
    pub workload: Workload,
    pub mode: Mode,
    pub activity: Activity,
    pub status: CellStatus,
    /// Why the cell is unavailable or failed.
    pub reason: Option<String>,
    /// Successful runs (raw samples).
    pub runs: Vec<RunSample>,
    /// Failed runs: `rep N: error`.
    pub failures: Vec<String>,
    /// Statistics over `runs`; None unless `status` is ok.
    pub summary: Option<CellSummary>,
}

/// One MSR-cost measurement: how one kind of MSR access costs in one mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MsrCostRow {
    pub mode: Mode,
    /// What is measured (the guest's `kind=`), e.g. `pmu` (a PMU MSR: in `userspace` mode
    /// a userspace exit), `kvm` (an MSR KVM handles in the kernel), `nop` (the loop itself).
    pub kind: String,
    /// The MSR number, when one is read.
    pub msr: Option<String>,
    /// Guest TSC ticks per access: median/min/max over runs.
    pub ticks_per_access: Summary,
    /// The same in ns.
    pub ns_per_access: Summary,
}

/// The MSR-cost section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MsrCost {
    /// `ok`, `skipped: why` or `failed: why`.
    pub status: String,
    pub rows: Vec<MsrCostRow>,
    /// Median cost of one userspace MSR exit over one KVM-handled MSR access (ratio of the
    /// medians, both at guest CPL0).
    pub userspace_over_kvm: Option<f64>,
    /// Median extra cost of one userspace MSR exit over one KVM-handled MSR access
    /// (difference of the medians, userspace mode), ns.
    pub userspace_extra_ns: Option<f64>,
    /// Median `kvm` minus median `nop` (the RDMSR alone, KVM-handled), userspace mode, ns.
    pub kvm_net_ns: Option<f64>,
    /// Median `pmu` minus median `nop` (the RDMSR alone, userspace exit), userspace mode, ns.
    pub userspace_net_ns: Option<f64>,
    /// `userspace_net_ns / kvm_net_ns`.
    pub userspace_over_kvm_net: Option<f64>,
    /// Host-side VMM handling time per userspace MSR exit (VcpuStats.handling_ns / MSR
    /// exits in the userspace-mode MSR runs), ns.
    pub vmm_handling_ns_per_exit: Option<Summary>,
    /// Caveats to print with the numbers.
    pub note: String,
}

/// VMM-level figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmmFigures {
    /// VMM start to first guest entry over all successful runs, ns.
    pub start_to_first_entry_ns: Option<Summary>,
    /// Whole `vmm::run` wall time of the baseline runs, ms.
    pub baseline_run_wall_ms: Option<Summary>,
    /// Peak resident set of the bench process (VmHWM), KiB.
    pub bench_peak_rss_kib: Option<u64>,
}

impl BenchReport {
    /// The cell for a key, if present.
    pub fn cell(&self, workload: Workload, mode: Mode, activity: Activity) -> Option<&CellReport> {
        self.cells
            .iter()
            .find(|c| c.workload == workload && c.mode == mode && c.activity == activity)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }

    /// Parses `bench.json`.
    pub fn from_json(s: &str) -> serde_json::Result<BenchReport> {
        serde_json::from_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn keys<T: Serialize>(x: &T) -> BTreeSet<String> {
        match serde_json::to_value(x).unwrap() {
            serde_json::Value::Object(m) => m.keys().cloned().collect(),
            v => panic!("not an object: {v}"),
        }
    }

    #[test]
    fn exits_are_the_vmm_counters_summed() {
        // Same counters as the VMM's type: a field added to or renamed in
        // vmm::vcpu::VcpuStats fails here until the report has it.
        assert_eq!(keys(&Exits::default()), keys(&VcpuStats::default()));
        let a = VcpuStats {
            exits: 3,
            pmis: 1,
            handling_ns: 10,
            ..VcpuStats::default()
        };
        let b = VcpuStats {
            exits: 4,
            msr_write: 2,
            tsc_in_guest: u64::MAX,
            ..VcpuStats::default()
        };
        let c = VcpuStats {
            tsc_in_guest: 5,
            ..VcpuStats::default()
        };
        let e = Exits::sum_of(&[a, b, c]);
        assert_eq!(
            (e.exits, e.pmis, e.msr_write, e.handling_ns, e.tsc_in_guest),
            (7, 1, 2, 10, u64::MAX)
        );
        assert_eq!(e.msr_exits(), 2);
        assert_eq!(Exits::sum_of(&[]), Exits::default());
    }
}
