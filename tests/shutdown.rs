//! How `vpmu-vmm run` ends when the outside world gets in the way: a stop signal
//! (SIGTERM, SIGINT) must still produce the report, the `--stats` lines and a complete
//! audit log, with the interrupted exit status (12); a stdout pipe nobody reads must not
//! keep the VMM from exiting once the guest has asked to; an output that cannot be
//! written (`--report /dev/full`) costs one stderr line, not the guest's exit status.

#[macro_use]
mod common;
use common::*;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Waits up to `limit` for `child`; kills it (and fails) past that.
fn wait_bounded(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: the VMM did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// A long-running guest (the conformance guest's MSR fuzz with 10^8 accesses: minutes)
/// under the userspace vPMU with an audit log, stopped by `signal` after a second.
fn interrupted_run(signal: i32, tag: &str) {
    let report = scratch(&format!("interrupt-{tag}.json"));
    let audit = scratch(&format!("interrupt-{tag}.jsonl"));
    let _ = std::fs::remove_file(&report);
    let _ = std::fs::remove_file(&audit);
    let mut child = Command::new(bin())
        .args([
            "run",
            "--kernel",
            "builtin:conformance",
            "--cmdline",
            "fuzz=100000000 seed=1",
            "--pmu",
            "userspace",
            "--pmu-audit",
            audit.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
            "--stats",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning vpmu-vmm");
    std::thread::sleep(Duration::from_millis(1000));
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    let st = wait_bounded(&mut child, Duration::from_secs(30), tag);
    let e = stderr_of(&mut child);
    assert_eq!(st.code(), Some(12), "{tag}: {st:?}\n{e}");
    assert!(!e.contains("panicked"), "{e}");
    // The --stats line, with the outcome in it.
    assert!(
        e.lines()
            .any(|l| l.contains("pmu userspace") && l.contains("interrupted by")),
        "{tag}: no --stats line:\n{e}"
    );
    assert!(e.contains("vcpu0: exits"), "{tag}:\n{e}");
    // The report, with the interrupted outcome.
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&report)
            .unwrap_or_else(|err| panic!("{tag}: no report: {err}\n{e}")),
    )
    .expect("the report is JSON");
    assert_eq!(
        r["outcome"]["kind"], "interrupted",
        "{tag}: {}",
        r["outcome"]
    );
    assert_eq!(r["outcome"]["signal"], signal, "{tag}");
    assert!(r["vcpus"][0]["exits"].as_u64().unwrap_or(0) > 0, "{tag}");
    // The audit log: complete JSON lines (the fuzz makes plenty of #GP accesses).
    let a = std::fs::read_to_string(&audit).expect("the audit file");
    assert!(!a.is_empty(), "{tag}: empty audit log");
    assert!(a.ends_with('\n'), "{tag}: the audit log ends mid-line");
    for l in a.lines() {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|err| panic!("{tag}: {err}: {l:?}"));
        assert!(v.is_object(), "{tag}: {l}");
    }
}

#[test]
fn sigterm_ends_the_run_cleanly_with_every_output() {
    need_kvm!("sigterm_ends_the_run_cleanly_with_every_output");
    interrupted_run(libc::SIGTERM, "term");
}

#[test]
fn sigint_ends_the_run_cleanly_with_every_output() {
    need_kvm!("sigint_ends_the_run_cleanly_with_every_output");
    interrupted_run(libc::SIGINT, "int");
}

#[test]
fn sighup_ends_the_run_cleanly_with_every_output() {
    need_kvm!("sighup_ends_the_run_cleanly_with_every_output");
    interrupted_run(libc::SIGHUP, "hup");
}

/// Writes 128 KiB of 'x' to COM1 (twice the default pipe buffer), one OUT each, then
/// V=0 to the debug-exit port (status 1).
const SPAM: &str = "b90000020066baf803b078eeffc975fb66baf40031c0eff4ebfd";

#[test]
fn a_stdout_pipe_nobody_reads_does_not_keep_the_vmm_alive() {
    need_kvm!("a_stdout_pipe_nobody_reads_does_not_keep_the_vmm_alive");
    let k = write_scratch("spam.elf", &elf64(&hex(SPAM), 0x20_0000));
    let mut child = Command::new(bin())
        .args(["run", "--kernel", &k])
        .stdout(Stdio::piped()) // held open, never read
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning vpmu-vmm");
    let _stdout = child.stdout.take();
    // The guest's own run is a few seconds here (each OUT is an exit); the end waits at
    // most 1 s for the reader.
    let st = wait_bounded(&mut child, Duration::from_secs(60), "undrained stdout");
    let e = stderr_of(&mut child);
    assert_eq!(st.code(), Some(1), "{st:?}\n{e}");
    // What never reached the pipe is counted, in one line.
    let line = e
        .lines()
        .find(|l| l.contains("bytes of guest output were dropped"))
        .unwrap_or_else(|| panic!("no line about the lost output:\n{e}"));
    let n: u64 = line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .expect("a byte count");
    assert!(n > 0 && n <= 128 * 1024, "{line}");
}

#[test]
fn an_unwritable_report_keeps_the_guests_status() {
    need_kvm!("an_unwritable_report_keeps_the_guests_status");
    let o = vmm(&[
        "run",
        "--kernel",
        "builtin:conformance",
        "--report",
        "/dev/full",
    ]);
    let e = err(&o);
    // The conformance guest passes (V = 0: status 1), report or not.
    assert_eq!(status(&o), 1, "{e}");
    let lost: Vec<&str> = e.lines().filter(|l| l.contains("report")).collect();
    assert_eq!(lost.len(), 1, "one clear line: {e}");
    assert!(
        lost[0].contains("/dev/full") && lost[0].contains("lost"),
        "{e}"
    );
}
