//! Helpers shared by the integration tests: running the binary, building tiny ELF64
//! guests, and detecting what this host can do (so skips say exactly why).

#![allow(dead_code)]

pub mod elf;
pub mod tmux;

#[allow(unused_imports)]
pub use elf::elf64;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of the built `vpmu-vmm` binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_vpmu-vmm")
}

/// Runs `vpmu-vmm` with `args`, with a timeout so a hung guest fails the test.
pub fn vmm(args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("120")
        .arg(bin())
        .args(args)
        .output()
        .expect("spawning vpmu-vmm")
}

/// Runs `vpmu-vmm` with `args` plus `--report FILE` (for `run` and `demo`) and returns
/// the output and the typed run report as JSON; `None` when the VMM wrote no report (it
/// failed before or while building the VM). Tests read the report, never the human
/// `--stats` lines.
pub fn vmm_report(args: &[&str]) -> (Output, Option<serde_json::Value>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = scratch(&format!("report-{}.json", N.fetch_add(1, Ordering::SeqCst)));
    let _ = std::fs::remove_file(&path);
    let path_s = path.to_string_lossy().into_owned();
    let mut full = args.to_vec();
    full.extend_from_slice(&["--report", &path_s]);
    let o = vmm(&full);
    let report = std::fs::read_to_string(&path)
        .ok()
        .map(|t| serde_json::from_str(&t).expect("the run report is JSON"));
    (o, report)
}

/// Runs `vpmu-vmm` with `args` under a 30 s timeout and a 4 GiB address-space limit:
/// for hostile inputs that must be refused at once, so that a VMM that reads forever or
/// blocks fails the test quickly (abort or status 124) instead of exhausting the host.
pub fn vmm_bounded(args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 4194304 && exec timeout 30 \"$0\" \"$@\"")
        .arg(bin())
        .args(args)
        .output()
        .expect("spawning vpmu-vmm")
}

/// Asserts that `vpmu-vmm args` (run by [`vmm_bounded`]) fails with status 2 and exactly
/// one stderr line containing `needle`, without a panic.
pub fn assert_clean_error(args: &[&str], needle: &str) {
    let o = vmm_bounded(args);
    let e = err(&o);
    assert_eq!(status(&o), 2, "args {args:?}: stderr {e}");
    assert!(
        e.contains(needle),
        "args {args:?}: expected {needle:?} in {e:?}"
    );
    assert!(!e.contains("panicked"), "{e}");
    assert_eq!(
        e.trim_end().lines().count(),
        1,
        "one clear line, got: {e:?}"
    );
}

/// `run --kernel builtin:demo` followed by `extra`: the arguments of a run of the demo guest.
pub fn demo_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "--kernel", "builtin:demo"];
    args.extend_from_slice(extra);
    args
}

/// Runs the demo guest under `--pmu off` with `extra` arguments and asserts that it ran
/// to its end: it writes V=0 to the debug-exit port, so `run` gives status (0 << 1) | 1.
/// Returns the output for further checks.
pub fn assert_demo_runs(extra: &[&str]) -> Output {
    let mut args = demo_args(&["--pmu", "off"]);
    args.extend_from_slice(extra);
    let o = vmm(&args);
    assert_eq!(
        status(&o),
        1,
        "args {args:?}: stdout:\n{}\nstderr:\n{}",
        out(&o),
        err(&o)
    );
    o
}

/// Makes a FIFO at `path` (a scratch path); returns it as a String.
pub fn mkfifo(path: &Path) -> String {
    let _ = std::fs::remove_file(path);
    let st = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("spawning mkfifo");
    assert!(st.success(), "mkfifo {}", path.display());
    path.to_string_lossy().into_owned()
}

/// Exit status (panics on death by signal, which is a test failure anyway).
pub fn status(o: &Output) -> i32 {
    o.status
        .code()
        .unwrap_or_else(|| panic!("vpmu-vmm killed by a signal: {o:?}"))
}

/// stdout as text.
pub fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr as text.
pub fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `None` when /dev/kvm is usable, else why not (the caller prints SKIPPED and returns).
pub fn kvm_unusable() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/kvm cannot be opened: {e}")),
    }
}

/// Returns from the test (after printing `SKIPPED <name>: <why>`) when /dev/kvm cannot be
/// opened. Test files that use it declare `#[macro_use] mod common;`.
#[allow(unused_macros)]
macro_rules! need_kvm {
    ($name:expr) => {
        if let Some(why) = $crate::common::kvm_unusable() {
            $crate::common::skip($name, &why);
            return;
        }
    };
}

/// Prints the skip reason in a form CI logs and humans can grep for.
pub fn skip(test: &str, why: &str) {
    println!("SKIPPED {test}: {why}");
    eprintln!("SKIPPED {test}: {why}");
}

/// A unique scratch path for this test process.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vpmu-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join(name)
}

/// Writes `bytes` to a scratch file and returns its path as a String.
pub fn write_scratch(name: &str, bytes: &[u8]) -> String {
    let p = scratch(name);
    std::fs::write(&p, bytes).expect("write scratch");
    p.to_string_lossy().into_owned()
}

/// Decodes a hex string into bytes.
pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Parses the conformance guest's closing line: (passed, failed, skipped).
pub fn conformance_counts(stdout: &str) -> Option<(u32, u32, u32)> {
    let line = stdout.lines().find(|l| l.starts_with("conformance: "))?;
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    match nums.as_slice() {
        [p, f, s, ..] => Some((*p, *f, *s)),
        _ => None,
    }
}

/// Whether the path exists (for policy files shipped in resources/).
pub fn repo_file(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    p.to_string_lossy().into_owned()
}
