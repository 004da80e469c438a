//! The command line itself, without /dev/kvm: value lists in `--help`, usage mistakes as
//! one line with status 2.

mod common;
use common::*;

/// `--pmu` is a value list: `--help` names every mode with a line on it, and a wrong value
/// is one line that lists the right ones (status 2), like every other usage mistake.
#[test]
fn pmu_modes_are_listed_in_help_and_errors() {
    let help = vmm(&["run", "--help"]);
    let h = out(&help);
    for mode in ["off:", "emulated:", "passthrough:", "userspace:", "auto:"] {
        assert!(h.contains(mode), "run --help lacks {mode}:\n{h}");
    }
    for args in [
        &["run", "--kernel", "builtin:demo", "--pmu", "turbo"][..],
        &["demo", "--pmu", "Emulated"][..],
    ] {
        let o = vmm(args);
        let e = err(&o);
        assert_eq!(status(&o), 2, "{args:?}: {e}");
        assert!(
            e.contains("possible values: off, emulated, passthrough, userspace, auto"),
            "{args:?}: {e}"
        );
        assert_eq!(e.trim_end().lines().count(), 1, "{args:?}: one line: {e:?}");
    }
    // Other usage mistakes are one line too.
    let o = vmm(&["run", "--pmu", "off"]);
    assert_eq!(status(&o), 2);
    assert!(err(&o).contains("--kernel"), "{}", err(&o));
    assert_eq!(err(&o).trim_end().lines().count(), 1, "{:?}", err(&o));
}
