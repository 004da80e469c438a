//! `bench`: the vPMU overhead harness behind `vpmu-vmm bench`.
//!
//! It boots the built-in `bench` guest once per cell and repetition of a matrix
//! (workloads x guest PMU activity x vPMU mode), interleaving the runs, and reports the
//! workload-time overhead against the `off` baseline of the same pass, VM exits by reason,
//! PMU MSR exit rates, the cost of one MSR access by how it is handled, PMI delivery
//! latency and sampling accuracy, as `bench.json` (docs/BENCH-SCHEMA.md), `bench.md` and
//! `overhead.svg`. Modes the host cannot offer are reported as unavailable, with the
//! probe's reason, never as numbers.
//!
//! The pure parts (parsing, statistics, rendering) are independent of KVM and unit-tested
//! with a fake backend; [`runner`] is the only module that talks to the VMM.

pub mod args;
pub mod error;
pub mod estimate;
pub mod harness;
pub mod host;
pub mod linux;
pub mod markdown;
pub mod model;
pub mod output;
pub mod parse;
pub mod plot;
pub mod report;
pub mod runner;
pub mod stats;

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub use args::BenchArgs;
pub use error::Error;

/// Guest memory of each bench VM.
pub const GUEST_MEMORY: u64 = 256 << 20;

/// Whether to draw the `\r`-rewritten progress line: only on a terminal (a log file or a
/// pipe would collect every rewrite), and never with `--no-progress`.
pub fn progress_enabled(no_progress: bool, stderr_is_terminal: bool) -> bool {
    !no_progress && stderr_is_terminal
}

/// [`progress_enabled`] for this process's stderr.
pub fn stderr_progress(no_progress: bool) -> bool {
    progress_enabled(no_progress, std::io::stderr().is_terminal())
}

/// A single, rewritten progress line on stderr: `\r[12/48] userspace lfsr sample:1000 rep 3/5`.
struct ProgressLine {
    enabled: bool,
    width: usize,
}

impl ProgressLine {
    fn show(&mut self, done: usize, total: usize, label: &str) {
        if !self.enabled {
            return;
        }
        let line = format!("[{}/{}] {}", (done + 1).min(total), total, label);
        let pad = self.width.saturating_sub(line.len());
        self.width = line.len();
        let mut e = std::io::stderr().lock();
        let _ = write!(e, "\r{line}{:pad$}", "");
        let _ = e.flush();
    }

    fn finish(&mut self) {
        if self.enabled && self.width > 0 {
            eprintln!();
        }
    }
}

/// Runs the benchmark and writes its reports into `args.out`.
pub fn run(args: BenchArgs) -> Result<(), Error> {
    let stray = args.stray_linux_flags();
    if !stray.is_empty() {
        return Err(Error::Args(format!(
            "{} given without --linux",
            stray.join(", ")
        )));
    }
    if args.linux {
        return linux::run(&args);
    }
    let started = Instant::now();
    let generated_at = host::now_rfc3339();
    let loadavg_start = host::loadavg();
    // Fail on bad arguments before probing anything.
    args.settings(1).map_err(Error::Args)?;
    std::fs::create_dir_all(&args.out).map_err(|source| Error::Io {
        path: args.out.clone(),
        source,
    })?;

    let mut backend = runner::VmmBackend::new();
    let (tsc_khz, tsc_source) = match (args.tsc_khz, backend.tsc_khz()) {
        (Some(k), _) => (k, "--tsc-khz".to_string()),
        (None, Some(k)) => (k, "host probe".to_string()),
        (None, None) => match host::measure_tsc_khz(Duration::from_millis(200)) {
            Some(k) => (k, "measured against CLOCK_MONOTONIC".to_string()),
            None => {
                return Err(Error::Args(
                    "cannot determine the TSC frequency: pass --tsc-khz".into(),
                ))
            }
        },
    };
    let settings = args.settings(tsc_khz).map_err(Error::Args)?;

    let available: Vec<model::Mode> = std::iter::once(model::Mode::Off)
        .chain(settings.modes.iter().copied())
        .filter(|&m| harness::Backend::availability(&mut backend, m).is_ok())
        .collect();
    let plan = estimate::estimate(&settings, &available);
    eprintln!("{}", plan.describe(&settings));
    let mut line = ProgressLine {
        enabled: stderr_progress(args.no_progress),
        width: 0,
    };
    let measured = {
        let mut progress = |d: usize, t: usize, l: &str| line.show(d, t, l);
        harness::execute(&mut backend, &settings, &mut progress)
    };
    line.finish();
    let measured = measured.map_err(Error::Harness)?;

    let mut host_info = backend.host_info(tsc_khz, tsc_source);
    host_info.loadavg_start = loadavg_start;
    host_info.loadavg_end = host::loadavg();
    let ctx = output::Context {
        generated_at,
        duration_s: started.elapsed().as_secs_f64(),
        command_line: std::env::args().collect(),
        versions: report::Versions::current(),
        host: host_info,
        quick: args.quick,
        estimate_s: Some(plan.seconds),
        peak_rss_kib: std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| host::vm_hwm_kib(&s)),
    };
    let report = output::compose(ctx, &settings, measured);
    for p in output::write_all(&report, &args.out, args.json_only)? {
        eprintln!("bench: wrote {}", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::progress_enabled;

    #[test]
    fn progress_only_on_a_terminal() {
        assert!(progress_enabled(false, true));
        assert!(
            !progress_enabled(false, false),
            "a log file gets no \\r line"
        );
        assert!(!progress_enabled(true, true), "--no-progress wins");
        assert!(!progress_enabled(true, false));
    }
}
