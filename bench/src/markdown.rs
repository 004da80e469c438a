//! The markdown reports of both harnesses: `bench.md` (the freestanding matrix, [`render`])
//! and `linux.md` (Linux guests, [`render_linux`]), with one set of number formats.

use std::fmt::Write;

use crate::linux::{Environment, LinuxActivity, LinuxCell, LinuxReport, TCG_LABEL};
use crate::model::{Activity, Mode};
use crate::report::{BenchReport, CellReport, CellStatus, Versions};
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
#[allow(clippy::cast_possible_truncation)] // |x| < 1e15 and integral: exact in an i64
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

/// `- generated: ... (N s)` and `- command: ...`, as both reports start.
fn provenance(o: &mut String, generated_at: &str, duration_s: f64, command_line: &[String]) {
    let _ = writeln!(o, "- generated: {generated_at} ({duration_s:.0} s)");
    let _ = writeln!(o, "- command: `{}`", command_line.join(" "));
}

/// `- versions: ...`.
fn versions(o: &mut String, v: &Versions) {
    let _ = writeln!(
        o,
        "- versions: vpmu-vmm {}, {}",
        v.vpmu_vmm,
        v.rustc.as_deref().unwrap_or("rustc unknown")
    );
}

/// The whole markdown report of the freestanding matrix (`bench.md`).
pub fn render(r: &BenchReport) -> String {
    let mut o = String::new();
    let workloads = &r.config.workloads;
    let tsc_ghz = r.host.tsc_khz as f64 / 1e6;
    let _ = writeln!(o, "# vPMU overhead benchmark\n");
    provenance(&mut o, &r.generated_at, r.duration_s, &r.command_line);
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
    versions(&mut o, &r.versions);
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

/// `linux.md`: the Linux-guest report (`vpmu-vmm bench --linux`), with the same number
/// formats as [`render`].
pub fn render_linux(r: &LinuxReport) -> String {
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
    provenance(&mut md, &r.generated_at, r.duration_s, &r.command_line);
    let h = &r.host;
    md.push_str(&format!(
        "- host: {} ({} CPUs), kernel {}, KVM modules: {}\n",
        h.cpu_model.as_deref().unwrap_or("unknown CPU"),
        h.cpus.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
        h.kernel.as_deref().unwrap_or("?"),
        h.kvm_modules.join(", ")
    ));
    versions(&mut md, &r.versions);
    md.push_str(&format!(
        "- load average (1/5/15 min): {} at start, {} at end\n",
        h.loadavg_start.as_deref().unwrap_or("?"),
        h.loadavg_end.as_deref().unwrap_or("?")
    ));
    let c = &r.config;
    md.push_str(&format!("- guest architecture: {}\n", c.arch.as_str()));
    md.push_str(&format!(
        "- guest: `{}` + `{}`, {} MiB, {} vCPU; workload `/bin/vpmu-work {}` ({} s of CPU time per run); {} runs per cell, {}\n",
        c.kernel, c.initrd, c.guest_memory_mib, c.vcpus, c.workload_cpu_s, c.workload_cpu_s, c.reps, c.order
    ));
    md.push_str(&format!("- metric: {}\n", c.metric));
    if let Some(p) = h
        .guest_env_probe
        .as_ref()
        .filter(|p| p["host"]["arch"] == "aarch64")
    {
        // The arm64 probe's shape (vpmu::discovery on aarch64).
        let pmus: Vec<&str> = p["host"]["perf_pmus"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v["name"].as_str()).collect())
            .unwrap_or_default();
        md.push_str(&format!(
            "- `vpmu-vmm probe` where the guest ran{}: aarch64, KVM_CAP_ARM_PMU_V3: {}, host perf PMUs: {}\n",
            if tcg { " (inside L1)" } else { "" },
            p["host"]["kvm_pmu_v3"].as_bool().map_or("?", |b| if b { "yes" } else { "no" }),
            if pmus.is_empty() { "none".to_string() } else { pmus.join(", ") }
        ));
    } else if let Some(p) = &h.guest_env_probe {
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
        md.push_str(&format!(" {} |", linux_activity_title(*a)));
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
            let found = r
                .cells
                .iter()
                .find(|x| x.mode == m.mode && x.activity == *a);
            let txt = match found {
                None => "—".to_string(),
                Some(x) if x.status != "ok" => {
                    format!("{}: {}", x.status, cell(x.reason.as_deref().unwrap_or("?")))
                }
                Some(x) => match (&x.summary, x.activity) {
                    (Some(s), LinuxActivity::None) => {
                        format!("{} ms", range(&s.ns_per_round.map(|v| v / 1e6)))
                    }
                    (Some(s), _) => s.overhead_pct.as_ref().map(pct).unwrap_or("—".into()),
                    (None, _) => "—".into(),
                },
            };
            md.push_str(&format!(" {txt} |"));
        }
        md.push('\n');
    }
    md.push('\n');

    // L1's KVM exits per mode (nested runs with debugfs in L1).
    if r.modes.iter().any(|m| m.l1_kvm_exits.is_some()) {
        md.push_str(&format!(
            "#### L1 KVM exits during each mode's VM ({})\n\n",
            r.environment_label
        ));
        md.push_str("Every exit kind of L1's KVM while that mode's vpmu-vmm ran (boot, every activity and pass), from L1's debugfs `kvm/exits`; per second of L1 time (guest time under QEMU's -icount, not host wall). On arm64 each guest PMU register access is one of them (KVM traps them in the kernel; the VMM never sees them).\n\n");
        md.push_str(
            "| mode | L1 KVM exits | L1 seconds | exits per L1 second |\n|---|---|---|---|\n",
        );
        for m in &r.modes {
            let Some(n) = m.l1_kvm_exits else { continue };
            let per_s = m.l1_kvm_exits_per_s;
            let secs = per_s.filter(|p| *p > 0.0).map(|p| n as f64 / p);
            md.push_str(&format!(
                "| {} | {n} | {} | {} |\n",
                m.mode,
                secs.map_or("?".into(), |v| format!("{v:.1}")),
                per_s.map_or("?".into(), |v| format!("{v:.0}"))
            ));
        }
        md.push('\n');
    }

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
                md.push_str(&format!("| {} | {} |\n", x.mode, pct(s)));
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
                    .map(range)
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
        md.push_str("#### perf stat counts\n\nWhat `perf stat -j` printed in the guest, median [min..max] over the runs, and the median per second of the workload's CPU time (a sanity check: task-clock should give ~1000 ms/s, cycles a clock rate).\n\n| mode | event | count | per CPU second |\n|---|---|---|---|\n");
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
                    count.map(|c| big_range(&c)).unwrap_or_else(raw),
                    rate.map(|c| big(c.median)).unwrap_or("—".into())
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

fn big(x: f64) -> String {
    if x.abs() >= 1e6 {
        format!("{x:.3e}")
    } else {
        num(x)
    }
}

fn big_range(s: &Summary) -> String {
    format!("{} [{}..{}]", big(s.median), big(s.min), big(s.max))
}

fn linux_activity_title(a: LinuxActivity) -> String {
    match a {
        LinuxActivity::None => "none (ms/round)".into(),
        LinuxActivity::Stat => "perf stat".into(),
        LinuxActivity::Record(hz) => format!("perf record -F {hz}"),
    }
}

/// Test check of a rendered report: every table row has as many cells as its header
/// (escaped `\|` inside a cell does not count).
#[cfg(test)]
pub(crate) fn assert_tables_rectangular(md: &str) {
    for table in md.split("\n\n").filter(|t| t.starts_with("| ")) {
        let cols: Vec<usize> = table
            .lines()
            .map(|l| l.matches('|').count() - l.matches("\\|").count())
            .collect();
        assert!(cols.iter().all(|&c| c == cols[0]), "{table}");
    }
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
