//! The VMM's log end to end: `-v`/`-vv`/`-vvv`, `--log-level`, `--log-file` and RUST_LOG,
//! on the built-in demo guest under /dev/kvm with the seccomp filters on (the log file is
//! written from the vCPU and main threads under their filters). Each test skips (printing
//! SKIPPED and why) when /dev/kvm cannot be opened or the userspace vPMU is unavailable.

mod common;
use common::*;

use std::process::{Command, Output};

/// `vpmu-vmm args` with RUST_LOG set to `rust_log` (or removed), under a timeout.
fn vmm_env(args: &[&str], rust_log: Option<&str>) -> Output {
    let mut c = Command::new("timeout");
    c.arg("120").arg(bin()).args(args);
    match rust_log {
        Some(v) => c.env("RUST_LOG", v),
        None => c.env_remove("RUST_LOG"),
    };
    c.output().expect("spawning vpmu-vmm")
}

/// `None` when the demo can run under `--pmu userspace` here, else why not.
fn cannot_run() -> Option<String> {
    if let Some(why) = kvm_unusable() {
        return Some(why);
    }
    let o = vmm(&["probe", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out(&o)).ok()?;
    let m = v["modes"]
        .as_array()?
        .iter()
        .find(|m| m["mode"] == "userspace")?;
    (m["availability"]["status"] != "available").then(|| {
        format!(
            "--pmu userspace unavailable: {}",
            m["availability"]["reason"].as_str().unwrap_or("?")
        )
    })
}

macro_rules! need_demo {
    ($name:expr) => {
        if let Some(why) = cannot_run() {
            skip($name, &why);
            return;
        }
    };
}

const DEMO: &[&str] = &["run", "--kernel", "builtin:demo", "--pmu", "userspace"];

fn with(extra: &[&str]) -> Vec<String> {
    DEMO.iter().chain(extra).map(|s| s.to_string()).collect()
}

fn run(extra: &[&str], rust_log: Option<&str>) -> Output {
    let args = with(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    vmm_env(&args, rust_log)
}

/// A fresh scratch log file path.
fn log_path(name: &str) -> String {
    let p = scratch(name);
    let _ = std::fs::remove_file(&p);
    p.to_string_lossy().into_owned()
}

/// The stderr lines that are log records (env_logger's `[time LEVEL target] ` prefix).
fn log_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| {
            l.starts_with('[')
                && ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
                    .iter()
                    .any(|lv| l.contains(&format!(" {lv} ")))
        })
        .collect()
}

#[test]
fn vv_log_file_has_the_plan_and_exit_counts() {
    need_demo!("vv_log_file_has_the_plan_and_exit_counts");
    let f = log_path("vv.log");
    let o = run(&["-vv", "--log-file", &f], None);
    assert_eq!(status(&o), 1, "stderr: {}", err(&o));
    let log = std::fs::read_to_string(&f).expect("the log file exists");
    assert!(
        log.lines()
            .any(|l| l.contains(" INFO ") && l.contains("vPMU plan: pmu userspace")),
        "the plan at info: {log}"
    );
    let summary = log
        .lines()
        .find(|l| l.contains(" DEBUG ") && l.contains("vcpu0: ") && l.contains("exits by kind"))
        .unwrap_or_else(|| panic!("an exit-count summary at debug: {log}"));
    assert!(
        summary.contains("io_out ") && summary.contains("PMIs"),
        "{summary}"
    );
    assert!(!log.contains(" TRACE "), "-vv is debug, not trace: {log}");
    // The log went to the file, not to stderr.
    assert!(log_lines(&err(&o)).is_empty(), "stderr: {}", err(&o));
}

#[test]
fn default_logs_nothing_beyond_the_vmm_lines() {
    need_demo!("default_logs_nothing_beyond_the_vmm_lines");
    let o = run(&[], None);
    assert_eq!(status(&o), 1, "stderr: {}", err(&o));
    let e = err(&o);
    // Today's output: the userspace vPMU's summary line per vCPU, and nothing else.
    assert!(
        e.lines().all(|l| l.starts_with("vpmu-vmm: ")),
        "only the VMM's own lines: {e}"
    );
    assert!(e.contains("vpmu-vmm: vcpu0: userspace vPMU:"), "{e}");
    assert!(log_lines(&e).is_empty(), "{e}");
    // `--log-level warn` is the same.
    let o = run(&["--log-level", "warn"], None);
    assert_eq!(status(&o), 1, "stderr: {}", err(&o));
    assert!(log_lines(&err(&o)).is_empty(), "{}", err(&o));
}

#[test]
fn rust_log_applies_without_flags_and_flags_win() {
    need_demo!("rust_log_applies_without_flags_and_flags_win");
    let o = run(&[], Some("info"));
    assert_eq!(status(&o), 1, "stderr: {}", err(&o));
    let e = err(&o);
    assert!(
        log_lines(&e).iter().any(|l| l.contains("vPMU plan:")),
        "RUST_LOG=info logs the plan to stderr: {e}"
    );
    let o = run(&["--log-level", "off"], Some("trace"));
    assert_eq!(status(&o), 1, "stderr: {}", err(&o));
    assert!(log_lines(&err(&o)).is_empty(), "{}", err(&o));
}

#[test]
fn vvv_traces_exits_and_pmis_from_filtered_vcpu_threads_and_appends() {
    need_demo!("vvv_traces_exits_and_pmis_from_filtered_vcpu_threads_and_appends");
    let f = log_path("vvv.log");
    // The seccomp filters are on (no --no-seccomp): the vCPU thread writes the file.
    let o = run(&["-vvv", "--log-file", &f], None);
    assert_eq!(status(&o), 1, "stderr: {}", err(&o));
    let log = std::fs::read_to_string(&f).expect("the log file exists");
    assert!(
        log.contains("vcpu0: exit io_out port 0x3f8"),
        "a trace line per exit: {}",
        &log[..log.len().min(4000)]
    );
    assert!(log.contains("vcpu0: PMI, LVTPC"), "PMI deliveries at trace");
    assert!(!err(&o).contains("seccomp"), "{}", err(&o));
    // Appended, not truncated.
    let o = run(&["-v", "--log-file", &f], None);
    assert_eq!(status(&o), 1, "stderr: {}", err(&o));
    let again = std::fs::read_to_string(&f).expect("the log file exists");
    assert!(again.starts_with(&log), "the second run appends");
    assert_eq!(again.matches("vPMU plan:").count(), 2);
}

#[test]
fn an_unopenable_log_file_is_refused_before_boot() {
    need_demo!("an_unopenable_log_file_is_refused_before_boot");
    let dir = scratch("no-such-dir");
    let _ = std::fs::remove_dir_all(&dir);
    let f = dir.join("x.log").to_string_lossy().into_owned();
    let o = run(&["-v", "--log-file", &f], None);
    let e = err(&o);
    assert_eq!(status(&o), 2, "{e}");
    assert!(e.contains(&format!("cannot open log file {f}")), "{e}");
    assert!(
        !out(&o).contains("demo guest"),
        "the guest never ran: {}",
        out(&o)
    );
}
