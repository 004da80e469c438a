//! Assembling the report and writing `bench.json`, `bench.md` and `overhead.svg`.

use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::harness::{Measured, Settings};
use crate::report::{BenchReport, HostInfo, RunConfig, Versions, SCHEMA_NAME, SCHEMA_VERSION};

/// Everything about the run that the harness does not measure.
#[derive(Debug, Clone)]
pub struct Context {
    pub generated_at: String,
    pub duration_s: f64,
    pub command_line: Vec<String>,
    pub versions: Versions,
    pub host: HostInfo,
    pub quick: bool,
    pub peak_rss_kib: Option<u64>,
    /// The up-front estimate, seconds.
    pub estimate_s: Option<f64>,
}

/// Order description stored in the report.
pub const ORDER: &str = "interleaved: every cell once per pass, alternate passes reversed";

/// Builds the report.
pub fn compose(ctx: Context, s: &Settings, m: Measured) -> BenchReport {
    let mut host = ctx.host;
    host.modes = m.availability;
    let mut vmm = m.vmm;
    vmm.bench_peak_rss_kib = ctx.peak_rss_kib;
    BenchReport {
        schema: SCHEMA_NAME.into(),
        schema_version: SCHEMA_VERSION,
        generated_at: ctx.generated_at,
        duration_s: ctx.duration_s,
        command_line: ctx.command_line,
        versions: ctx.versions,
        host,
        config: RunConfig {
            quick: ctx.quick,
            reps: s.reps,
            guest_reps: s.guest_reps,
            modes: s.modes.clone(),
            workloads: s.workloads.clone(),
            activities: s.activities.clone(),
            iters: m.iters,
            iters_source: m.iters_source,
            chase_buf_kib: s.chase_buf_kib,
            msr_iters: s.msr_iters,
            vcpus: 1,
            guest_memory_mib: crate::GUEST_MEMORY >> 20,
            order: ORDER.into(),
            time_budget_s: s.time_budget.map(|d| d.as_secs()),
            estimate_s: ctx.estimate_s,
        },
        cells: m.cells,
        msr_cost: m.msr_cost,
        vmm,
        skipped_runs: m.skipped_runs,
    }
}

fn write(path: PathBuf, data: &str) -> Result<PathBuf, Error> {
    std::fs::write(&path, data).map_err(|source| Error::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Writes the report files into `dir` (created if needed); returns their paths.
pub fn write_all(r: &BenchReport, dir: &Path, json_only: bool) -> Result<Vec<PathBuf>, Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = vec![write(dir.join("bench.json"), &(r.to_json()? + "\n"))?];
    if !json_only {
        out.push(write(dir.join("bench.md"), &crate::markdown::render(r))?);
        let svg = dir.join("overhead.svg");
        crate::plot::draw(r, &svg).map_err(|reason| Error::Plot {
            path: svg.clone(),
            reason,
        })?;
        out.push(svg);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::harness::fake::{settings, Fake};
    use crate::model::{Activity, Mode, Workload};
    use crate::report::CellStatus;

    /// A complete report from the fake backend.
    pub(crate) fn sample_report() -> BenchReport {
        report_from(Fake::default())
    }

    /// A complete report from this fake backend.
    pub(crate) fn report_from(mut f: Fake) -> BenchReport {
        let s = Settings {
            workloads: vec![Workload::Loop, Workload::Lfsr],
            activities: vec![
                Activity::None,
                Activity::Count(4),
                Activity::Sample(1000),
                Activity::Sample(10_000),
            ],
            ..settings()
        };
        let m = crate::harness::execute(&mut f, &s, &mut |_, _, _| {}).unwrap();
        let ctx = Context {
            generated_at: "2026-11-21T07:30:00Z".into(),
            duration_s: 12.5,
            command_line: vec!["vpmu-vmm".into(), "bench".into(), "--quick".into()],
            versions: Versions {
                vpmu_vmm: "0.1.0".into(),
                rustc: Some("rustc 1.95.0".into()),
            },
            host: HostInfo {
                cpu_model: Some("AMD EPYC".into()),
                cpus: Some(2),
                kernel: Some("6.x".into()),
                kvm_modules: vec!["kvm".into(), "kvm_pvm".into()],
                tsc_khz: s.tsc_khz,
                tsc_khz_source: "test".into(),
                pmu: Some(serde_json::json!({"vendor": "amd"})),
                pmu_report: Some("no hardware PMU".into()),
                probe_error: None,
                modes: Vec::new(),
                loadavg_start: Some("0.50 0.40 0.30 1/100 1".into()),
                loadavg_end: None,
            },
            quick: true,
            peak_rss_kib: Some(10_240),
            estimate_s: Some(12.0),
        };
        compose(ctx, &s, m)
    }

    #[test]
    fn json_round_trip() {
        let r = sample_report();
        let j = r.to_json().unwrap();
        let back = BenchReport::from_json(&j).unwrap();
        // serde_json parses floats to the nearest value, not always bit-exactly: compare
        // the structure exactly and the serialized text after one round trip.
        assert_eq!(back.cells.len(), r.cells.len());
        assert_eq!(back.config, r.config);
        assert_eq!(back.host, r.host);
        let again = back.to_json().unwrap();
        assert_eq!(
            BenchReport::from_json(&again).unwrap().to_json().unwrap(),
            again
        );
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["schema"], "vpmu-vmm-bench");
        assert_eq!(v["schema_version"], 2);
        assert_eq!(v["cells"][1]["activity"], "none");
        assert_eq!(v["host"]["modes"][2]["reason"], "no hardware PMU");
    }

    #[test]
    fn markdown_tables() {
        let r = sample_report();
        let md = crate::markdown::render(&r);
        for want in [
            "| mode | PMU activity | loop | lfsr |",
            "| emulated | all | unavailable: no hardware PMU | — |",
            "| passthrough | none | failed: rep 0: boom |",
            "| userspace | sample:1000 | +10.0% [",
            "| off | none (baseline) | 100 [",
            "| userspace | 1000 Hz | lfsr |",
            "| latency p50 µs | p90 µs | p99 µs | min µs | max µs | rejected |",
            "| 2.00 | 2.00 | 2.00 | 1.00 | 3.00 | 0/5 |",
            "costs 10.0x one KVM-handled MSR access (IA32_SYSENTER_CS), i.e. 18.0 µs more",
            "the userspace exit 19.5 µs: 13.0x",
        ] {
            assert!(md.contains(want), "{want:?} missing from:\n{md}");
        }
        assert!(md.contains("fewer than 5 runs") == (r.config.reps < 5));
        // Every table row has as many cells as its header.
        crate::markdown::assert_tables_rectangular(&md);
    }

    #[test]
    fn markdown_lists_rejected_latencies() {
        let r = report_from(Fake {
            wild_latency: true,
            ..Fake::default()
        });
        let md = crate::markdown::render(&r);
        assert!(
            md.contains("| 2.00 | 2.00 | 2.00 | 1.00 | 3.00 | 1/5 |"),
            "{md}"
        );
        assert!(md.contains("Rejected latency figures:"), "{md}");
        assert!(
            md.contains(
                "- userspace sample:1000 loop run 0 rep 0: max latency 5890000000000 ticks"
            ),
            "{md}"
        );
        // No figure derived from the wild value anywhere in the tables.
        assert!(!md.contains("5890000000 "), "{md}");
    }

    #[test]
    fn writes_files() {
        let r = sample_report();
        let dir = std::env::temp_dir().join(format!("bench-out-test-{}", std::process::id()));
        let files = write_all(&r, &dir, false).unwrap();
        assert_eq!(files.len(), 3);
        let svg = std::fs::read_to_string(dir.join("overhead.svg")).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("userspace lfsr"));
        let (xs, lines) = crate::plot::series(&r);
        assert_eq!(
            xs,
            vec![
                Activity::None,
                Activity::Sample(1000),
                Activity::Sample(10_000)
            ]
        );
        assert!(lines.iter().all(|l| l.mode == Mode::Userspace));
        let files = write_all(&r, &dir, true).unwrap();
        assert_eq!(files.len(), 1);
        assert!(r.cells.iter().any(|c| c.status == CellStatus::Unavailable));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
