//! A denied event cannot be counted through an alias: AMD unit masks the hardware
//! ignores, and Intel fixed counters that count a denied event.

mod common;

use common::{alias_layout, guest_pmu};
use vpmu::guest::{GuestPmu, Verdict};
use vpmu::policy::{encode_masked, encode_plain, Policy, KVM_PMU_EVENT_FLAG_MASKED_EVENTS};
use vpmu::state::CounterId;
use vpmu::Vendor;

const EN_USR_OS: u64 = (1 << 22) | (1 << 16) | (1 << 17);

fn amd_gp0(g: &mut GuestPmu, event: u16, umask: u8) -> Verdict {
    let raw = vpmu::selector::encode(event, umask) | EN_USR_OS;
    g.write(0xc001_0200, raw).unwrap().reprogrammed[0].verdict
}

#[test]
fn amd_denied_cycles_is_denied_for_every_unit_mask() {
    let mut g = guest_pmu(
        &alias_layout(Vendor::Amd),
        "action = \"deny\"\n[[event]]\nname = \"cycles\"\n",
    );
    for umask in [0x00u8, 0x01, 0x80, 0xff] {
        assert!(
            matches!(amd_gp0(&mut g, 0x76, umask), Verdict::Denied(_)),
            "0x76/{umask:#04x} must be denied"
        );
    }
    // Other events still count.
    assert_eq!(amd_gp0(&mut g, 0xc2, 0x00), Verdict::Allowed);
    // 0x176 is a different event (12-bit event select).
    assert_eq!(amd_gp0(&mut g, 0x176, 0x00), Verdict::Allowed);
}

#[test]
fn amd_deny_rule_compiles_to_a_masked_entry_for_every_unit_mask() {
    let p = Policy::from_toml("action = \"deny\"\n[[event]]\nname = \"instructions\"\n").unwrap();
    let c = p.compile(Vendor::Amd, 0).unwrap();
    let f = c.kvm_filter();
    assert_eq!(f.flags, KVM_PMU_EVENT_FLAG_MASKED_EVENTS);
    assert_eq!(f.events, vec![encode_masked(0xc0, 0x00, 0x00, false)]);
    assert!(c.requires_masked_events_cap());
    // Intel instructions (0xc0) defines its unit masks: a plain exact entry as before.
    let c = p.compile(Vendor::Intel, 3).unwrap();
    assert_eq!(c.kvm_filter().flags, 0);
    assert_eq!(c.kvm_filter().events, vec![encode_plain(0xc0, 0x00)]);
}

#[test]
fn amd_raw_deny_with_an_undefined_unit_mask_covers_the_event() {
    let mut g = guest_pmu(
        &alias_layout(Vendor::Amd),
        "action = \"deny\"\n[[event]]\nevent = 0x76\numask = 0x05\n",
    );
    assert!(matches!(amd_gp0(&mut g, 0x76, 0x00), Verdict::Denied(_)));
    assert!(matches!(amd_gp0(&mut g, 0x76, 0x05), Verdict::Denied(_)));
}

#[test]
fn amd_allow_is_exact_and_an_alias_of_an_allowed_event_is_denied() {
    let mut g = guest_pmu(
        &alias_layout(Vendor::Amd),
        "action = \"allow\"\n[[event]]\nname = \"cycles\"\n",
    );
    assert_eq!(amd_gp0(&mut g, 0x76, 0x00), Verdict::Allowed);
    assert!(matches!(amd_gp0(&mut g, 0x76, 0xff), Verdict::Denied(_)));
    // A raw allow with undefined unit-mask bits allows the canonical encoding, with a
    // warning, so an allow never names an encoding the hardware does not distinguish.
    let p = Policy::from_toml("[[event]]\nevent = 0x76\numask = 0x01\n").unwrap();
    let c = p.compile(Vendor::Amd, 0).unwrap();
    assert_eq!(c.kvm_filter().events, vec![encode_plain(0x76, 0x00)]);
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.contains("0x76") && w.contains("unit mask")),
        "{:?}",
        c.warnings()
    );
}

#[test]
fn amd_exclude_under_a_denylist_cannot_reopen_an_alias() {
    // Deny every 0xc0 but "allow back" unit mask 0x01: on AMD that is instructions again.
    let src = "action = \"deny\"\n[[masked]]\nevent = 0xc0\numask_match = 0\numask_mask = 0\n\
               [[masked]]\nevent = 0xc0\numask_match = 0x01\numask_mask = 0xff\nexclude = true\n";
    let mut g = guest_pmu(&alias_layout(Vendor::Amd), src);
    assert!(matches!(amd_gp0(&mut g, 0xc0, 0x01), Verdict::Denied(_)));
    assert!(matches!(amd_gp0(&mut g, 0xc0, 0x00), Verdict::Denied(_)));
}

fn fixed(g: &mut GuestPmu, ctrl: u64) -> Vec<(u8, Verdict)> {
    g.write(0x38d, ctrl)
        .unwrap()
        .reprogrammed
        .iter()
        .filter_map(|p| match p.counter {
            CounterId::Fixed(i) => Some((i, p.verdict)),
            _ => None,
        })
        .collect()
}

#[test]
fn intel_denied_cycles_denies_fixed_counter_1_even_with_an_empty_list() {
    let src = "action = \"deny\"\nfixed_counters = []\n[[event]]\nname = \"cycles\"\n";
    let p = Policy::from_toml(src).unwrap();
    let c = p.compile(Vendor::Intel, 4).unwrap();
    assert!(!c.decide_fixed(1), "fixed1 counts cycles, which is denied");
    assert!(c.decide_fixed(0) && c.decide_fixed(2) && c.decide_fixed(3));
    assert!(
        c.warnings().iter().any(|w| w.contains("fixed counter 1")),
        "{:?}",
        c.warnings()
    );
    let why = c
        .describe(vpmu::policy::DenyReason::FixedCounter(1))
        .to_string();
    assert_eq!(
        why,
        "fixed counter 1 not allowed by policy (its event \"cycles\" is denied)"
    );
    let mut g = guest_pmu(&alias_layout(Vendor::Intel), src);
    let v = fixed(&mut g, 0x0030); // fixed1 OS|USR
    assert!(matches!(v[..], [(1, Verdict::Denied(_))]), "{v:?}");
}

#[test]
fn intel_masked_deny_of_0x3c_denies_fixed_counters_1_and_2() {
    let src = "action = \"deny\"\n[[masked]]\nevent = 0x3c\numask_match = 0\numask_mask = 0\n";
    let c = Policy::from_toml(src)
        .unwrap()
        .compile(Vendor::Intel, 4)
        .unwrap();
    assert!(!c.decide_fixed(1) && !c.decide_fixed(2));
    assert!(c.decide_fixed(0) && c.decide_fixed(3));
    assert_eq!(c.kvm_filter().fixed_counter_bitmap, 0b0110);
}

#[test]
fn intel_allowlist_exclude_of_cycles_drops_the_named_fixed_counter() {
    let src =
        "action = \"allow\"\n[[event]]\nname = \"cycles\"\n[[event]]\nname = \"instructions\"\n\
               [[masked]]\nevent = 0x3c\numask_match = 0\numask_mask = 0xff\nexclude = true\n";
    let c = Policy::from_toml(src)
        .unwrap()
        .compile(Vendor::Intel, 4)
        .unwrap();
    assert!(!c.decide_fixed(1));
    assert!(c.decide_fixed(0));
    assert!(c.warnings().iter().any(|w| w.contains("fixed counter 1")));
}

#[test]
fn intel_explicitly_listed_fixed_counter_stays_allowed_with_a_warning() {
    // Allowlist without cycles, but fixed counter 1 listed explicitly: the operator's call.
    let src = "action = \"allow\"\nfixed_counters = [0, 1]\n[[event]]\nname = \"instructions\"\n";
    let c = Policy::from_toml(src)
        .unwrap()
        .compile(Vendor::Intel, 4)
        .unwrap();
    assert!(c.decide_fixed(1) && c.decide_fixed(0));
    assert!(!c.decide_fixed(2));
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.contains("fixed counter 1") && w.contains("explicitly")),
        "{:?}",
        c.warnings()
    );
}

#[test]
fn intel_perf_pseudo_encoding_of_ref_cycles_is_denied_with_ref_cycles() {
    // KVM's perf-based vPMU turns GP selector 0x00/0x03 into perf's ref-cycles
    // pseudo-event (fixed counter 2): denying ref-cycles must deny it too.
    let src = "action = \"deny\"\n[[event]]\nname = \"ref-cycles\"\n";
    let c = Policy::from_toml(src)
        .unwrap()
        .compile(Vendor::Intel, 3)
        .unwrap();
    assert!(!c.decide(vpmu::selector::encode(0x00, 0x03)).is_allowed());
    assert!(c.kvm_filter().events.contains(&encode_plain(0x00, 0x03)));
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.contains("0x0/0x03") || w.contains("0x00/0x03")),
        "{:?}",
        c.warnings()
    );
    // Not denied: topdown slots' pseudo-encoding, whose event is allowed.
    assert!(c.decide(vpmu::selector::encode(0x00, 0x04)).is_allowed());
    // An allowlist naming the pseudo-encoding without its event: excluded.
    let src = "[[event]]\nevent = 0x00\numask = 0x04\n[[event]]\nname = \"instructions\"\n";
    let c = Policy::from_toml(src)
        .unwrap()
        .compile(Vendor::Intel, 4)
        .unwrap();
    assert!(!c.decide(vpmu::selector::encode(0x00, 0x04)).is_allowed());
    assert!(c.decide(vpmu::selector::encode(0xc0, 0x00)).is_allowed());
}
