//! `bench.md`: the report as markdown tables.

use std::fmt::Write;

use crate::model::{Activity, Mode};
use crate::report::{BenchReport, CellReport, CellStatus};
use crate::stats::Summary;

/// Formats a number to about three significant digits (no exponent).
pub fn num(x: f64) -> String {
    let a = x.abs();
    let s = if a >= 99.95 {
        format!("{x:.0}")
    } else if a >= 9.995 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    };
    // No negative zero.
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s
    }
}

/// Formats a count: an integer when it is one, else one decimal (a median of two).
pub fn count(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x:.1}")
    }
}

/// `median [min..max]`.
pub fn range(s: &Summary) -> String {
    format!("{} [{}..{}]", num(s.median), num(s.min), num(s.max))
}

/// A signed percentage with its range: `+4.21% [+3.90..+4.60]`.
pub fn pct(s: &Summary) -> String {
    let f = |x: f64| {
        let v = num(x);
        if !v.starts_with('-') {
            format!("+{v}")
        } else {
            v
        }
    };
    format!("{}% [{}..{}]", f(s.median), f(s.min), f(s.max))
}

/// Escapes a table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn unavailable_reason(r: &BenchReport, m: Mode) -> Option<&str> {
    r.cells
        .iter()
        .find(|c| c.mode == m && c.status == CellStatus::Unavailable)
        .and_then(|c| c.reason.as_deref())
}

fn failed(c: &CellReport) -> String {
    format!("failed: {}", cell(c.reason.as_deref().unwrap_or("?")))
}

/// The whole markdown report.
pub fn render(r: &BenchReport) -> String {
    let mut o = String::new();
    let workloads = &r.config.workloads;
    let tsc_ghz = r.host.tsc_khz as f64 / 1e6;
    let _ = writeln!(o, "# vPMU overhead benchmark\n");
    let _ = writeln!(o, "- generated: {} ({:.0} s)", r.generated_at, r.duration_s);
    let _ = writeln!(o, "- command: `{}`", r.command_line.join(" "));
    let _ = writeln!(
        o,
        "- host: {} ({} CPUs), kernel {}, KVM modules: {}, TSC {:.3} GHz ({})",
        r.host.cpu_model.as_deref().unwrap_or("unknown CPU"),
        r.host
            .cpus
            .map(|c| c.to_string())
            .unwrap_or_else(|| "?".into()),
        r.host.kernel.as_deref().unwrap_or("?"),
        if r.host.kvm_modules.is_empty() {
            "none".to_string()
        } else {
            r.host.kvm_modules.join(", ")
        },
        tsc_ghz,
        r.host.tsc_khz_source
    );
    let _ = writeln!(
        o,
        "- versions: vpmu-vmm {}, {}",
        r.versions.vpmu_vmm,
        r.versions.rustc.as_deref().unwrap_or("rustc unknown")
    );
    let iters: Vec<String> = r
        .config
        .iters
        .iter()
        .map(|(w, n)| format!("{w}={n}"))
        .collect();
    let _ = writeln!(
        o,
        "- runs: {} VM runs per cell ({}), {} workload rep(s) per run; iterations {} ({}); chase buffer {} KiB; {} vCPU, {} MiB",
        r.config.reps,
        r.config.order,
        r.config.guest_reps,
        iters.join(", "),
        r.config.iters_source,
        r.config.chase_buf_kib,
        r.config.vcpus,
        r.config.guest_memory_mib
    );
    if let Some(e) = r.config.estimate_s {
        let _ = write!(
            o,
            "- time: {:.0} s, estimated {:.0} s beforehand (idle host)",
            r.duration_s, e
        );
        if let Some(b) = r.config.time_budget_s {
            let _ = write!(o, "; time budget {b} s");
        }
        o.push('\n');
    }
    if r.skipped_runs > 0 {
        let _ = writeln!(
            o,
            "- **{} VM run(s) not started: the time budget of {} s was spent** (listed per cell)",
            r.skipped_runs,
            r.config.time_budget_s.unwrap_or(0)
        );
    }
    if let (Some(a), Some(b)) = (&r.host.loadavg_start, &r.host.loadavg_end) {
        let _ = writeln!(o, "- load average (1/5/15 min): {a} at start, {b} at end");
    }
    for a in &r.host.modes {
        if let Some(reason) = &a.reason {
            let _ = writeln!(o, "- mode `{}`: unavailable: {}", a.mode, reason);
        }
    }
    if r.config.reps < 5 {
        let _ = writeln!(
            o,
            "- **note: fewer than 5 runs per cell: medians are indicative only**"
        );
    }

    // Overhead table.
    let _ = writeln!(
        o,
        "\n## Workload time overhead vs `off`\n\nPercent of guest TSC time of the workload region over the `off` baseline run in the same interleaved pass: median [min..max] over the paired runs. Baseline row: absolute time in ms.\n"
    );
    let _ = write!(o, "| mode | PMU activity |");
    for w in workloads {
        let _ = write!(o, " {w} |");
    }
    let _ = write!(o, "\n|---|---|");
    for _ in workloads {
        let _ = write!(o, "---|");
    }
    o.push('\n');
    let mut modes: Vec<Mode> = vec![Mode::Off];
    modes.extend(r.config.modes.iter().copied().filter(|m| *m != Mode::Off));
    for &m in &modes {
        if let Some(reason) = unavailable_reason(r, m) {
            let _ = write!(o, "| {m} | all | unavailable: {} |", cell(reason));
            for _ in 1..workloads.len() {
                let _ = write!(o, " — |");
            }
            o.push('\n');
            continue;
        }
        let acts: Vec<Activity> = if m == Mode::Off {
            vec![Activity::None]
        } else {
            r.config.activities.clone()
        };
        for a in acts {
            let label = if m == Mode::Off {
                "none (baseline)".to_string()
            } else {
                a.to_string()
            };
            let _ = write!(o, "| {m} | {label} |");
            for &w in workloads {
                let text = match r.cell(w, m, a) {
                    None => "—".to_string(),
                    Some(c) => match (&c.status, &c.summary) {
                        (CellStatus::Unavailable, _) => {
                            format!("unavailable: {}", cell(c.reason.as_deref().unwrap_or("?")))
                        }
                        (CellStatus::Failed, _) | (_, None) => failed(c),
                        (CellStatus::Ok, Some(s)) => {
                            if m == Mode::Off {
                                format!("{} ms", range(&s.workload_ms))
                            } else {
                                match &s.overhead_pct {
                                    Some(p) => pct(p),
                                    None => "no baseline".into(),
                                }
                            }
                        }
                    },
                };
                let _ = write!(o, " {text} |");
            }
            o.push('\n');
        }
    }

    // Exits.
    let _ = writeln!(
        o,
        "\n## VM exits per run\n\nWhole VM run (boot, workload, console output), summed over vCPUs, median per run. `msr` = RDMSR/WRMSR exits to the VMM (KVM's MSR filter); `intr` = KVM_RUN returns for signals/kicks; `PMU MSR exits/s` = MSR exits per second of workload region; `VMM ns/exit` = VMM handling time per exit.\n"
    );
    let _ = writeln!(
        o,
        "| mode | PMU activity | workload | exits | io in | io out | mmio | msr rd | msr wr | msr #GP | intr | PMIs | PMU MSR exits/s | VMM ns/exit |"
    );
    let _ = writeln!(
        o,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for c in r.cells.iter().filter(|c| c.status == CellStatus::Ok) {
        let Some(s) = &c.summary else { continue };
        let g = |k: &str| {
            s.exits
                .get(k)
                .map(|x| count(x.median))
                .unwrap_or_else(|| "—".into())
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.mode,
            c.activity,
            c.workload,
            g("exits"),
            g("io_in"),
            g("io_out"),
            g("mmio"),
            g("msr_read"),
            g("msr_write"),
            g("msr_gp"),
            g("interrupted"),
            g("pmis"),
            s.msr_exits_per_s
                .map(|x| num(x.median))
                .unwrap_or_else(|| "—".into()),
            s.vmm_ns_per_exit
                .map(|x| num(x.median))
                .unwrap_or_else(|| "—".into()),
        );
    }

    // Sampling.
    let sampling: Vec<&CellReport> = r
        .cells
        .iter()
        .filter(|c| c.activity.sample_hz().is_some() && c.status == CellStatus::Ok)
        .collect();
    if !sampling.is_empty() {
        let _ = writeln!(
            o,
            "\n## Sampling: PMIs delivered and PMI latency\n\nExpected samples = workload time x frequency. Latency = counter overflow to guest PMI handler entry, from guest TSC stamps. The guest reports, per workload repetition, the min, max and sum of its PMIs' latencies; `p50`/`p90`/`p99` are percentiles of the per-repetition mean over every repetition of every run (not means of means), `min`/`max` the extremes over all PMIs. A repetition whose figures cannot be true (a latency longer than its workload region, earlier than the arming, or an inconsistent sum) is left out and counted under `rejected`.\n"
        );
        let _ = writeln!(
            o,
            "| mode | frequency | workload | delivered | expected | accuracy % | latency p50 µs | p90 µs | p99 µs | min µs | max µs | rejected |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        let mut reasons: Vec<String> = Vec::new();
        for c in sampling {
            let Some(s) = &c.summary else { continue };
            let f = |x: Option<Summary>| {
                x.map(|v| count(v.median.round()))
                    .unwrap_or_else(|| "—".into())
            };
            let us = |x: Option<f64>| x.map(|v| num(v / 1000.0)).unwrap_or_else(|| "—".into());
            let (p50, p90, p99, lo, hi, rej) = match &s.pmi_latency {
                Some(l) => {
                    let p = l.rep_mean_ns;
                    for r in &l.rejected {
                        reasons.push(format!(
                            "{} {} {} run {} rep {}: {}",
                            c.mode, c.activity, c.workload, r.run, r.guest_rep, r.reason
                        ));
                    }
                    (
                        us(p.map(|p| p.p50)),
                        us(p.map(|p| p.p90)),
                        us(p.map(|p| p.p99)),
                        us(l.min_ns),
                        us(l.max_ns),
                        format!("{}/{}", l.rejected.len(), l.rejected.len() + l.reps),
                    )
                }
                None => (
                    "—".into(),
                    "—".into(),
                    "—".into(),
                    "—".into(),
                    "—".into(),
                    "—".into(),
                ),
            };
            let _ = writeln!(
                o,
                "| {} | {} Hz | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.mode,
                c.activity.sample_hz().unwrap_or(0),
                c.workload,
                f(s.samples),
                f(s.expected_samples),
                s.sample_accuracy_pct
                    .map(|x| range(&x))
                    .unwrap_or_else(|| "—".into()),
                p50,
                p90,
                p99,
                lo,
                hi,
                rej
            );
        }
        if !reasons.is_empty() {
            let _ = writeln!(o, "\nRejected latency figures:\n");
            for r in &reasons {
                let _ = writeln!(o, "- {}", cell(r));
            }
        }
    }

    // MSR cost.
    let _ = writeln!(o, "\n## Cost of one MSR access\n");
    let _ = writeln!(
        o,
        "Status: {}. {}\n",
        cell(&r.msr_cost.status),
        r.msr_cost.note
    );
    if !r.msr_cost.rows.is_empty() {
        let _ = writeln!(o, "| mode | access | MSR | ticks/access | ns/access |");
        let _ = writeln!(o, "|---|---|---|---|---|");
        for row in &r.msr_cost.rows {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} |",
                row.mode,
                row.kind,
                row.msr.as_deref().unwrap_or("—"),
                range(&row.ticks_per_access),
                range(&row.ns_per_access)
            );
        }
        o.push('\n');
    }
    if let (Some(x), Some(d)) = (r.msr_cost.userspace_over_kvm, r.msr_cost.userspace_extra_ns) {
        let _ = writeln!(
            o,
            "One userspace MSR exit (RDMSR of a PMU counter, userspace mode) costs {}x one KVM-handled MSR access (IA32_SYSENTER_CS), i.e. {} µs more per access (medians, loop included in both).",
            num(x),
            num(d / 1000.0)
        );
    }
    if let (Some(k), Some(u), Some(x)) = (
        r.msr_cost.kvm_net_ns,
        r.msr_cost.userspace_net_ns,
        r.msr_cost.userspace_over_kvm_net,
    ) {
        let _ = writeln!(
            o,
            "Net of the loop (minus `nop`): the KVM-handled RDMSR costs {} µs, the userspace exit {} µs: {}x.",
            num(k / 1000.0),
            num(u / 1000.0),
            num(x)
        );
    }
    if let Some(h) = &r.msr_cost.vmm_handling_ns_per_exit {
        let _ = writeln!(
            o,
            "VMM-side handling per exit in those runs (host clock, VcpuStats.handling_ns / exits): {} ns.",
            range(h)
        );
    }

    // VMM.
    let _ = writeln!(o, "\n## VMM figures\n");
    if let Some(s) = &r.vmm.start_to_first_entry_ns {
        let _ = writeln!(
            o,
            "- VMM start to first guest entry: {} ms (all runs)",
            range(&s.map(|x| x / 1e6))
        );
    }
    if let Some(s) = &r.vmm.baseline_run_wall_ms {
        let _ = writeln!(
            o,
            "- whole `vmm::run` of a baseline bench guest: {} ms",
            range(s)
        );
    }
    if let Some(k) = r.vmm.bench_peak_rss_kib {
        let _ = writeln!(
            o,
            "- peak RSS of the bench process (VmHWM): {} MiB",
            num(k as f64 / 1024.0)
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formats() {
        assert_eq!(num(1234.5), "1234");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(1.2345), "1.23");
        assert_eq!(num(99.99999), "100");
        assert_eq!(num(-0.0001), "0.00");
        assert_eq!(count(80.0), "80");
        assert_eq!(count(80.5), "80.5");
        let s = Summary {
            n: 5,
            median: 4.21,
            min: -0.5,
            max: 10.0,
        };
        assert_eq!(pct(&s), "+4.21% [-0.50..+10.0]");
        let z = Summary {
            n: 1,
            median: -1e-9,
            min: -1e-9,
            max: 0.0,
        };
        assert_eq!(pct(&z), "+0.00% [+0.00..+0.00]");
        assert_eq!(range(&s), "4.21 [-0.50..10.0]");
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }
}
