//! The run report for humans (aarch64): the `--stats` text and the end-of-run lines.

use std::io::Write;
use std::process::ExitCode;

use vmm::RunReport;

/// Prints the end-of-run lines (all of `--stats` when asked) and turns `status` into the
/// process exit code.
pub fn finish(report: RunReport, stats: bool, status: i32) -> ExitCode {
    let _ = std::io::stdout().flush();
    if stats {
        eprintln!("{}", report.stats_text());
    } else {
        for a in &report.pmu {
            eprintln!("vpmu-vmm: {a}");
        }
    }
    if !report.outcome.is_clean() && !matches!(report.outcome, vmm::Outcome::DebugExit { .. }) {
        eprintln!("vpmu-vmm: {}", report.outcome);
    }
    ExitCode::from(status.clamp(0, 255) as u8)
}
