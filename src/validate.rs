//! `vpmu-vmm validate`: one command that checks what this host's vPMU can do and writes a
//! report a user can attach to a bug (validate.json + validate.md).
//!
//! Steps, each run as a child `vpmu-vmm` so one failure cannot take the others down:
//! 1. `probe --json`.
//! 2. The PMU conformance guest under every mode: `off`; `userspace` with the host
//!    vendor's PMU model, and the other vendor's too where the host has no hardware PMU
//!    (the guest's CPUID vendor is rewritten); `emulated` and `passthrough` (with
//!    `--pmu-audit`) where the probe says they are available, and otherwise a check that
//!    the VMM refuses them with the probe's reason.
//! 3. A Linux guest with `perf stat` and `perf record` (`bench --linux`) where an image is
//!    built and this host's KVM runs guest kernels natively.
//! 4. `bench` of emulated vs passthrough, with and without the audit.
//!
//! Refusals and skips carry the reason; only a step that should have worked and did not
//! is a failure (exit status 1).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

/// One step's outcome.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Ran and passed.
    Passed,
    /// Ran and did not pass.
    Failed,
    /// Not available on this host; the VMM refused it with the probe's reason.
    Refused,
    /// Not run here.
    Skipped,
}

/// One step of the validation.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// What was checked.
    pub name: String,
    /// The outcome.
    pub verdict: Verdict,
    /// Why (refused/skipped/failed), or what was seen (passed).
    pub detail: String,
    /// The command line (after `vpmu-vmm`), when one ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Seconds it took.
    pub seconds: f64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `vpmu-vmm --version`.
    pub version: String,
    /// The probe, as JSON.
    pub probe: serde_json::Value,
    /// Every step.
    pub steps: Vec<Step>,
    /// The one-line summary (also printed).
    pub summary: String,
}

struct Ran {
    status: Option<i32>,
    stdout: String,
    stderr: String,
    seconds: f64,
    command: String,
}

/// Runs this binary with `args`, killed after `limit`.
fn run_self(args: &[String], limit: Duration) -> Ran {
    let command = args.join(" ");
    let start = Instant::now();
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("vpmu-vmm"));
    let out_dir = std::env::temp_dir().join(format!("vpmu-validate-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&out_dir);
    let (so, se) = (out_dir.join("stdout"), out_dir.join("stderr"));
    let child = std::fs::File::create(&so).and_then(|o| {
        let e = std::fs::File::create(&se)?;
        Command::new(&exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(o)
            .stderr(e)
            .spawn()
    });
    let status = match child {
        Err(e) => {
            return Ran {
                status: None,
                stdout: String::new(),
                stderr: format!("cannot start {}: {e}", exe.display()),
                seconds: 0.0,
                command,
            }
        }
        Ok(mut c) => loop {
            match c.try_wait() {
                Ok(Some(st)) => break st.code(),
                Ok(None) if start.elapsed() < limit => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    break None;
                }
            }
        },
    };
    let read = |p: &Path| {
        std::fs::read(p)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let ran = Ran {
        status,
        stdout: read(&so),
        stderr: read(&se),
        seconds: start.elapsed().as_secs_f64(),
        command,
    };
    let _ = std::fs::remove_dir_all(&out_dir);
    ran
}

/// `conformance: P passed, F failed, S skipped` from the conformance guest's output.
fn conformance_counts(stdout: &str) -> Option<(u32, u32, u32)> {
    let line = stdout.lines().find(|l| l.starts_with("conformance: "))?;
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    match nums.as_slice() {
        [p, f, s, ..] => Some((*p, *f, *s)),
        _ => None,
    }
}

/// The availability of `mode` in a `probe --json` document: `Ok(())` or the reason.
fn availability(probe: &serde_json::Value, mode: &str) -> Result<(), String> {
    let m = probe["modes"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["mode"] == mode));
    match m {
        Some(m) if m["availability"]["status"] == "available" => Ok(()),
        Some(m) => Err(m["availability"]["reason"]
            .as_str()
            .unwrap_or("unavailable")
            .to_string()),
        None => Err("not listed by the probe".into()),
    }
}

/// The conformance guest under `args`: passed when it exits through its debug port with
/// V = 0 (status 1) and reports no failure.
fn conformance_step(name: &str, extra: &[&str]) -> Step {
    let mut args: Vec<String> = ["run", "--kernel", "builtin:conformance", "--stats"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let r = run_self(&args, Duration::from_secs(120));
    let counts = conformance_counts(&r.stdout);
    let pmu_line = r
        .stderr
        .lines()
        .find(|l| l.starts_with("vpmu-vmm: pmu "))
        .unwrap_or("")
        .trim_start_matches("vpmu-vmm: ")
        .split(" | ")
        .next()
        .unwrap_or("")
        .to_string();
    let (verdict, detail) = match (r.status, counts) {
        (Some(1), Some((p, 0, s))) => (
            Verdict::Passed,
            format!("{p} passed, {s} skipped; {pmu_line}"),
        ),
        (st, Some((p, f, s))) => (
            Verdict::Failed,
            format!(
                "{p} passed, {f} failed, {s} skipped, exit status {st:?}: {}",
                last_lines(&r.stdout, &r.stderr)
            ),
        ),
        (st, None) => (
            Verdict::Failed,
            format!(
                "no conformance summary, exit status {st:?}: {}",
                last_lines(&r.stdout, &r.stderr)
            ),
        ),
    };
    Step {
        name: name.to_string(),
        verdict,
        detail,
        command: Some(r.command),
        seconds: r.seconds,
    }
}

/// The VMM must refuse an unavailable mode with status 2 and the probe's reason.
fn refusal_step(name: &str, mode: &str, reason: &str) -> Step {
    let args: Vec<String> = ["run", "--kernel", "builtin:conformance", "--pmu", mode]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let r = run_self(&args, Duration::from_secs(60));
    let first = reason.split(';').next().unwrap_or(reason).trim();
    let (verdict, detail) = if r.status == Some(2) && r.stderr.contains(first) {
        (Verdict::Refused, reason.to_string())
    } else {
        (
            Verdict::Failed,
            format!(
                "the probe says unavailable ({reason}) but the VMM answered status {:?}: {}",
                r.status,
                last_lines(&r.stdout, &r.stderr)
            ),
        )
    };
    Step {
        name: name.to_string(),
        verdict,
        detail,
        command: Some(r.command),
        seconds: r.seconds,
    }
}

fn skipped(name: &str, why: String) -> Step {
    Step {
        name: name.to_string(),
        verdict: Verdict::Skipped,
        detail: why,
        command: None,
        seconds: 0.0,
    }
}

fn last_lines(stdout: &str, stderr: &str) -> String {
    let all: Vec<&str> = stdout.lines().chain(stderr.lines()).collect();
    all[all.len().saturating_sub(3)..].join(" / ")
}

fn step_from_command(name: &str, args: Vec<String>, limit: Duration, what: &str) -> Step {
    let r = run_self(&args, limit);
    let (verdict, detail) = match r.status {
        Some(0) => (Verdict::Passed, what.to_string()),
        st => (
            Verdict::Failed,
            format!("exit status {st:?}: {}", last_lines(&r.stdout, &r.stderr)),
        ),
    };
    Step {
        name: name.to_string(),
        verdict,
        detail,
        command: Some(r.command),
        seconds: r.seconds,
    }
}

/// Runs the validation and writes `out/validate.json` and `out/validate.md`. Returns the
/// report (the caller prints the summary and picks the exit status).
pub fn validate(out: &Path, quick_bench: bool) -> Result<Report, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let mut steps = Vec::new();
    let p = run_self(&["probe".into(), "--json".into()], Duration::from_secs(30));
    let probe: serde_json::Value = serde_json::from_str(&p.stdout)
        .map_err(|e| format!("probe --json did not answer JSON ({e}): {}", p.stderr))?;
    steps.push(Step {
        name: "probe".into(),
        verdict: Verdict::Passed,
        detail: format!(
            "{} ({}), hardware PMU: {}",
            probe["host"]["cpu_model"].as_str().unwrap_or("?"),
            probe["host"]["vendor"].as_str().unwrap_or("?"),
            probe["hardware_pmu"]
        ),
        command: Some(p.command),
        seconds: p.seconds,
    });
    if probe["host"]["kvm_error"].is_string() {
        steps.push(skipped(
            "guests",
            format!("KVM is not usable: {}", probe["host"]["kvm_error"]),
        ));
        return finish(out, probe, steps);
    }

    steps.push(conformance_step(
        "conformance: off",
        &["--pmu", "off", "--cmdline", "expect=none"],
    ));

    // Userspace: the host vendor's model; the other vendor's where the host has no PMU.
    let host_vendor = probe["host"]["vendor"]
        .as_str()
        .unwrap_or("unknown")
        .to_string();
    let hw_pmu = probe["hardware_pmu"] == true;
    let models = [
        ("intel", "intel:version=2,gp=4,fixed=3"),
        ("amd", "amd:gp=6,core-ext,perfmon-v2"),
    ];
    for (vendor, layout) in models {
        let name = format!("conformance: userspace, {vendor} PMU model");
        if vendor == host_vendor || !hw_pmu {
            let layout = if vendor == host_vendor {
                "host"
            } else {
                layout
            };
            steps.push(conformance_step(
                &name,
                &["--pmu", "userspace", "--pmu-layout", layout],
            ));
        } else {
            steps.push(skipped(
                &name,
                format!(
                    "the guest's PMU must match this {host_vendor} host's hardware PMU; \
                     the {vendor} model runs on {vendor} hosts or hosts without a PMU"
                ),
            ));
        }
    }

    let audit = out.join("audit.jsonl");
    let audit_s = audit.to_string_lossy().into_owned();
    let mut in_kernel = Vec::new();
    for mode in ["emulated", "passthrough"] {
        let name = format!("conformance: {mode}");
        match availability(&probe, mode) {
            Ok(()) => {
                in_kernel.push(mode);
                steps.push(conformance_step(
                    &name,
                    &["--pmu", mode, "--pmu-audit", &audit_s],
                ));
            }
            Err(reason) => steps.push(refusal_step(&name, mode, &reason)),
        }
    }

    // Linux + perf: needs a built image and a KVM that runs guest kernels natively.
    let image = Path::new("resources/out/linux");
    let linux = "linux guest: perf stat + perf record";
    if in_kernel.is_empty() {
        steps.push(skipped(
            linux,
            "no in-kernel vPMU mode is available here (see the conformance steps)".into(),
        ));
    } else if Path::new("/sys/module/kvm_pvm").exists() {
        steps.push(skipped(
            linux,
            "this KVM is PVM: guest kernel code is emulated; use the nested rig (docs/NESTED.md)"
                .into(),
        ));
    } else if !image.join("bzImage").exists() {
        steps.push(skipped(
            linux,
            "no Linux image: build it with resources/linux/build-image.sh".into(),
        ));
    } else {
        let dir = out.join("linux");
        steps.push(step_from_command(
            linux,
            vec![
                "bench".into(),
                "--linux".into(),
                "--linux-via".into(),
                "native".into(),
                "--quick".into(),
                "--no-progress".into(),
                "--modes".into(),
                format!("off,{}", in_kernel.join(",")),
                "--out".into(),
                dir.to_string_lossy().into_owned(),
            ],
            Duration::from_secs(900),
            &format!("report in {}", dir.display()),
        ));
    }

    let bench = "bench: emulated vs passthrough, with and without audit";
    if in_kernel.is_empty() {
        steps.push(skipped(
            bench,
            "no in-kernel vPMU mode is available here".into(),
        ));
    } else {
        let dir = out.join("bench");
        let mut modes = vec!["off".to_string()];
        for m in &in_kernel {
            modes.push(m.to_string());
            modes.push(format!("{m}+audit"));
        }
        let mut args = vec![
            "bench".into(),
            "--no-progress".into(),
            "--modes".into(),
            modes.join(","),
            "--out".into(),
            dir.to_string_lossy().into_owned(),
        ];
        if quick_bench {
            args.push("--quick".into());
        }
        steps.push(step_from_command(
            bench,
            args,
            Duration::from_secs(1800),
            &format!("report in {}", dir.display()),
        ));
    }
    finish(out, probe, steps)
}

fn summary(steps: &[Step]) -> String {
    let names = |v: Verdict| -> Vec<String> {
        steps
            .iter()
            .filter(|s| s.verdict == v)
            .map(|s| s.name.trim_start_matches("conformance: ").to_string())
            .collect()
    };
    let models: Vec<String> = steps
        .iter()
        .filter(|s| s.verdict == Verdict::Passed)
        .filter_map(|s| {
            let rest = s.name.strip_prefix("conformance: userspace, ")?;
            Some(rest.trim_end_matches(" PMU model").to_string())
        })
        .collect();
    let mut parts = vec![
        format!(
            "vendor PMU models run end to end here (userspace vPMU): {}",
            list(&models)
        ),
        format!("passed: {}", list(&names(Verdict::Passed))),
    ];
    for (v, label) in [
        (Verdict::Failed, "FAILED"),
        (Verdict::Refused, "refused as the probe says"),
        (Verdict::Skipped, "skipped"),
    ] {
        let n = names(v);
        if !n.is_empty() {
            parts.push(format!("{label}: {}", n.join(", ")));
        }
    }
    format!("validate: {}", parts.join("; "))
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "nothing".into()
    } else {
        v.join(", ")
    }
}

fn finish(out: &Path, probe: serde_json::Value, steps: Vec<Step>) -> Result<Report, String> {
    let report = Report {
        version: env!("CARGO_PKG_VERSION").to_string(),
        summary: summary(&steps),
        probe,
        steps,
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    let write = |name: &str, text: &str| {
        std::fs::write(out.join(name), text)
            .map_err(|e| format!("writing {}: {e}", out.join(name).display()))
    };
    write("validate.json", &json)?;
    write("validate.md", &markdown(&report))?;
    Ok(report)
}

fn markdown(r: &Report) -> String {
    let mut s = format!(
        "# vpmu-vmm validate\n\nvpmu-vmm {} on {} ({}), hardware PMU: {}\n\n{}\n\n\
         | step | verdict | detail | seconds |\n|---|---|---|---|\n",
        r.version,
        r.probe["host"]["cpu_model"].as_str().unwrap_or("?"),
        r.probe["host"]["vendor"].as_str().unwrap_or("?"),
        r.probe["hardware_pmu"],
        r.summary
    );
    for st in &r.steps {
        s.push_str(&format!(
            "| {} | {:?} | {} | {:.1} |\n",
            st.name,
            st.verdict,
            st.detail.replace('|', "\\|"),
            st.seconds
        ));
    }
    s.push_str("\nCommands (after `vpmu-vmm`):\n\n");
    for st in r.steps.iter().filter(|s| s.command.is_some()) {
        s.push_str(&format!(
            "- {}: `{}`\n",
            st.name,
            st.command.as_deref().unwrap_or("")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, verdict: Verdict) -> Step {
        Step {
            name: name.into(),
            verdict,
            detail: String::new(),
            command: None,
            seconds: 0.0,
        }
    }

    #[test]
    fn summary_names_every_verdict() {
        let s = summary(&[
            step("conformance: off", Verdict::Passed),
            step("conformance: userspace, amd PMU model", Verdict::Passed),
            step("conformance: emulated", Verdict::Refused),
            step("bench", Verdict::Skipped),
        ]);
        assert_eq!(
            s,
            "validate: vendor PMU models run end to end here (userspace vPMU): amd; \
             passed: off, userspace, amd PMU model; refused as the probe says: emulated; skipped: bench"
        );
        assert!(summary(&[step("x", Verdict::Failed)]).contains("FAILED: x"));
    }

    #[test]
    fn availability_reads_the_probe() {
        let p = serde_json::json!({"modes": [
            {"mode": "emulated", "availability": {"status": "unavailable", "reason": "no PMU"}},
            {"mode": "off", "availability": {"status": "available"}}
        ]});
        assert_eq!(availability(&p, "off"), Ok(()));
        assert_eq!(availability(&p, "emulated"), Err("no PMU".into()));
        assert!(availability(&p, "passthrough").is_err());
        assert_eq!(
            conformance_counts("x\nconformance: 34 passed, 0 failed, 5 skipped\n"),
            Some((34, 0, 5))
        );
    }
}
