//! `vpmu-vmm policy check FILE`: the compiled KVM filter, the warnings and every named
//! event's and fixed counter's verdict, without /dev/kvm.

mod common;
use common::*;

#[test]
fn policy_check_shows_the_filter_warnings_and_verdicts() {
    let policy = write_scratch(
        "check-deny-cycles.toml",
        b"action = \"deny\"\nfixed_counters = []\n[[event]]\nname = \"cycles\"\n",
    );
    // AMD: cycles ignores its unit mask, so the entry is masked and covers all of them.
    let o = vmm(&["policy", "check", &policy, "--vendor", "amd"]);
    let s = out(&o);
    assert_eq!(status(&o), 0, "{s}\n{}", err(&o));
    assert!(s.contains("flags 0x1"), "{s}");
    assert!(
        s.contains("masked include event 0x76 umask&0x00==0x00"),
        "{s}"
    );
    assert!(s.contains("0 of 256 encodings allowed"), "{s}");
    assert!(
        s.lines()
            .any(|l| l.trim_start().starts_with("instructions") && l.contains("allowed")),
        "{s}"
    );
    // Intel, 4 fixed counters: fixed counter 1 follows cycles, with a warning.
    let o = vmm(&[
        "policy", "check", &policy, "--vendor", "intel", "--fixed", "4",
    ]);
    let s = out(&o);
    assert_eq!(status(&o), 0, "{s}\n{}", err(&o));
    assert!(s.contains("plain event 0x3c umask 0x00"), "{s}");
    assert!(s.contains("fixed_counter_bitmap 0x00000002"), "{s}");
    assert!(s.contains("fixed counter 1 counts \"cycles\""), "{s}");
    assert!(
        s.lines()
            .any(|l| l.contains("fixed1") && l.contains("denied")),
        "{s}"
    );
    assert!(
        s.lines()
            .any(|l| l.contains("fixed0") && l.contains("allowed")),
        "{s}"
    );
}

#[test]
fn policy_check_reports_errors_with_the_line() {
    let policy = write_scratch("check-bad.toml", b"[[event]]\nname = \"cylces\"\n");
    let o = vmm(&["policy", "check", &policy]);
    assert_eq!(status(&o), 2);
    assert!(
        err(&o).contains("line 2") && err(&o).contains("cylces"),
        "{}",
        err(&o)
    );
}

#[test]
fn policy_check_defaults_to_both_vendors() {
    let default = repo_file("resources/policies/default.toml");
    let o = vmm(&["policy", "check", &default]);
    let s = out(&o);
    assert_eq!(status(&o), 0, "{s}\n{}", err(&o));
    assert!(
        s.contains("policy for intel") && s.contains("policy for amd"),
        "{s}"
    );
    // The default allowlist on AMD: ref-cycles has no encoding (a warning), cycles exact.
    assert!(s.contains("\"ref-cycles\" has no Amd encoding"), "{s}");
}
