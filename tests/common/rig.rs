//! What the rig tests (linux_nested, linux_disk, linux_arm64) share, included by
//! `#[path = "common/rig.rs"]`: they print to stderr, uncaptured, and skip when asked to.

use std::io::Write;

/// Writes `msg` straight to fd 2, so that libtest's output capture does not hide it.
pub fn say(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{msg}");
}

/// The first of `vars` set to anything but "" or "0", as `VAR=value` (the value may say
/// why, e.g. scripts/test.sh's "QUICK=1 was set"): the rig tests skip, printing it.
pub fn skip_requested(vars: &[&str]) -> Option<String> {
    vars.iter().find_map(|var| {
        std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty() && v != "0")
            .map(|v| format!("{var}={v}"))
    })
}
