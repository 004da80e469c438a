//! The per-vCPU decision core without /dev/kvm: writes store and mark, reprogram decides.

mod common;

use common::{amd_cfg, guest_pmu as pmu, intel_cfg};
use vpmu::guest::{Verdict, WriteFault};
use vpmu::policy::DenyReason;
use vpmu::state::CounterId;
use vpmu::{PmuConfig, Vendor};

/// Intel `version` with 4 GP and 3 fixed counters.
fn intel(version: u8) -> PmuConfig {
    intel_cfg(version, 4, 3, None)
}

const INSTR_AND_FIXED0: &str =
    "action = \"allow\"\nfixed_counters = [0]\n[[event]]\nname = \"instructions\"\n";

#[test]
fn gp_write_stores_and_decides() {
    let mut g = pmu(&intel(5), INSTR_AND_FIXED0);
    // cycles, EN|USR|OS: denied, reads back as written, blocked.
    let w = g.write(0x186, 0x43_003c).unwrap();
    assert_eq!(w.reprogrammed.len(), 1);
    let p = w.reprogrammed[0];
    assert_eq!(p.counter, CounterId::Gp(0));
    assert_eq!(p.verdict, Verdict::Denied(DenyReason::NotInAllowlist));
    assert_eq!(
        (p.event_key(), p.event_name()),
        ("0x3c/0x00".into(), Some("cycles"))
    );
    assert_eq!(g.read(0x186), Ok(0x43_003c));
    assert!(g.state().is_blocked(CounterId::Gp(0)));
    // instructions: allowed, unblocked; the same value again is decided again.
    for _ in 0..2 {
        let w = g.write(0x186, 0x43_00c0).unwrap();
        assert_eq!(w.reprogrammed[0].verdict, Verdict::Allowed);
    }
    assert!(!g.state().is_blocked(CounterId::Gp(0)));
    // Reserved bit 40: #GP, old value kept.
    assert!(matches!(
        g.write(0x186, 1 << 40 | 0x43_00c0),
        Err(WriteFault::Selector(_))
    ));
    assert_eq!(g.read(0x186), Ok(0x43_00c0));
    // Absent counter.
    assert!(matches!(g.write(0x18a, 0x43_00c0), Err(WriteFault::Msr(_))));
}

#[test]
fn fixed_fields_map_to_events_and_only_changes_reprogram() {
    let mut g = pmu(&intel(5), INSTR_AND_FIXED0);
    // fixed0 OS|USR, fixed1 USR|PMI.
    let w = g.write(0x38d, 0xa3).unwrap();
    let ids: Vec<CounterId> = w.reprogrammed.iter().map(|p| p.counter).collect();
    assert_eq!(ids, [CounterId::Fixed(0), CounterId::Fixed(1)]);
    let f0 = w.reprogrammed[0];
    assert_eq!(f0.verdict, Verdict::Allowed);
    assert_eq!((f0.selector.event, f0.selector.umask), (0xc0, 0));
    assert!(f0.selector.usr && f0.selector.os && f0.selector.en && !f0.selector.int);
    assert_eq!(f0.event_name(), Some("instructions"));
    let f1 = w.reprogrammed[1];
    assert_eq!(f1.verdict, Verdict::Denied(DenyReason::FixedCounter(1)));
    assert_eq!((f1.selector.event, f1.selector.umask), (0x3c, 0));
    assert!(f1.selector.usr && !f1.selector.os && f1.selector.int);
    assert!(g.state().is_blocked(CounterId::Fixed(1)));
    // Only fixed1 changes: only fixed1 is reprogrammed; clearing it disables it.
    let w = g.write(0x38d, 0x03).unwrap();
    assert_eq!(w.reprogrammed.len(), 1);
    assert_eq!(w.reprogrammed[0].verdict, Verdict::Disabled);
    // fixed2 (ref-cycles) is the GP-shaped 0x3c/0x01.
    let w = g.write(0x38d, 0x303).unwrap();
    let f2 = w.reprogrammed[0];
    assert_eq!((f2.selector.event, f2.selector.umask), (0x3c, 1));
}

#[test]
fn anythread_is_reserved_before_v3_and_denied_without_the_policy() {
    let mut v2 = pmu(&intel(2), INSTR_AND_FIXED0);
    assert!(v2.write(0x38d, 0x7).is_err());
    let mut v5 = pmu(&intel(5), INSTR_AND_FIXED0);
    let w = v5.write(0x38d, 0x7).unwrap();
    assert_eq!(
        w.reprogrammed[0].verdict,
        Verdict::Denied(DenyReason::AnyThread)
    );
    let w = v5.write(0x186, 0x63_00c0).unwrap(); // bit 21 AnyThread
    assert_eq!(
        w.reprogrammed[0].verdict,
        Verdict::Denied(DenyReason::AnyThread)
    );
    let mut allow = pmu(
        &intel(5),
        "action = \"allow\"\nanythread = true\nfixed_counters = [0]\n[[event]]\nname = \"instructions\"\n",
    );
    let w = allow.write(0x38d, 0x7).unwrap();
    assert_eq!(w.reprogrammed[0].verdict, Verdict::Allowed);
}

#[test]
fn amd_selectors_read_back_without_host_guest_only() {
    let cfg = amd_cfg(true, true, 6);
    let mut g = pmu(&cfg, "action = \"allow\"\n[[event]]\nname = \"cycles\"\n");
    let w = g.write(0xc001_0200, 0x43_0076 | 1 << 40).unwrap();
    assert_eq!(w.reprogrammed[0].verdict, Verdict::Allowed);
    assert_eq!(w.reprogrammed[0].selector.vendor, Vendor::Amd);
    assert_eq!(g.read(0xc001_0200), Ok(0x43_0076));
}
