//! Policy parsing, validation, compilation and decisions (one test per rule).

use std::path::PathBuf;
use vpmu::policy::{
    encode_masked, Action, Decision, DenyReason, EventRule, EventSpec, FixedCounters, KvmFilter,
    KvmFilterError, Loc, MaskedRule, Policy, PolicyError, KVM_PMU_EVENT_ALLOW, KVM_PMU_EVENT_DENY,
    KVM_PMU_EVENT_FLAG_MASKED_EVENTS, KVM_SET_PMU_EVENT_FILTER,
};
use vpmu::selector::bits;
use vpmu::Vendor;

fn policies_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../resources/policies")
}

fn read(name: &str) -> String {
    let p = policies_dir().join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn parse(src: &str) -> Policy {
    Policy::from_toml(src).unwrap_or_else(|e| panic!("{e}"))
}

fn err(src: &str) -> PolicyError {
    match Policy::from_toml(src) {
        Ok(p) => panic!("accepted: {p:?}"),
        Err(e) => e,
    }
}

/// A guest selector: event + umask, enabled, counting in both rings.
/// Where a TOML-level error (syntax, unknown key, bad value) of `src` is; panics when
/// `src` fails otherwise.
fn toml_error_at(src: &str) -> Loc {
    match err(src) {
        PolicyError::Toml { at, .. } => at,
        other => panic!("expected a TOML error, got {other:?}"),
    }
}

/// The (where, key, value given) of an out-of-range error of `src`; panics when `src`
/// fails otherwise.
fn out_of_range(src: &str) -> (Loc, &'static str, i64) {
    match err(src) {
        PolicyError::OutOfRange {
            at, field, value, ..
        } => (at, field, value),
        other => panic!("expected OutOfRange, got {other:?}"),
    }
}

fn sel(event: u16, umask: u8) -> u64 {
    vpmu::selector::encode(event, umask) | bits::EN | bits::OS | bits::USR
}

// ---------------------------------------------------------------- shipped files

#[test]
fn default_toml_equals_builtin_default() {
    assert_eq!(
        parse(&read("default.toml")),
        Policy::default_architectural()
    );
}

#[test]
fn every_shipped_policy_parses_and_compiles_for_both_vendors() {
    let mut n = 0;
    for entry in std::fs::read_dir(policies_dir()).expect("resources/policies") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let src = std::fs::read_to_string(&path).expect("read");
        let p = Policy::from_toml(&src).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (v, f) in [(Vendor::Intel, 3), (Vendor::Amd, 0)] {
            let c = p
                .compile(v, f)
                .unwrap_or_else(|e| panic!("{} for {v:?}: {e}", path.display()));
            c.kvm_filter().to_ioctl_bytes().expect("fits");
        }
        n += 1;
    }
    assert!(
        n >= 3,
        "expected default, deny-branch-misses, masked-example"
    );
}

// ---------------------------------------------------------------- errors name the line

#[test]
fn unknown_event_name_names_its_line() {
    let e =
        err("action = \"allow\"\n\n[[event]]\nname = \"cycles\"\n\n[[event]]\nname = \"cylces\"\n");
    assert_eq!(
        e,
        PolicyError::UnknownEvent {
            at: Loc(Some(7)),
            name: "cylces".into()
        }
    );
    assert!(
        e.to_string()
            .starts_with("line 7: unknown event name `cylces`"),
        "{e}"
    );
}

#[test]
fn event_over_12_bits_is_rejected() {
    assert_eq!(
        out_of_range("[[event]]\nevent = 0x1000\n"),
        (Loc(Some(2)), "event", 0x1000)
    );
    // 0xfff is the largest accepted.
    parse("[[event]]\nevent = 0xfff\n");
}

#[test]
fn negative_event_is_rejected() {
    let (_, field, value) = out_of_range("[[event]]\nevent = -1\n");
    assert_eq!((field, value), ("event", -1));
}

#[test]
fn umask_over_8_bits_is_rejected() {
    assert_eq!(
        out_of_range("[[event]]\nevent = 0xd1\n\numask = 0x100\n"),
        (Loc(Some(4)), "umask", 0x100)
    );
    let (at, field, _) = out_of_range("[[masked]]\nevent = 1\numask_match = 0\numask_mask = 256\n");
    assert_eq!((at, field), (Loc(Some(4)), "umask_mask"));
}

#[test]
fn fixed_counter_index_over_31_is_rejected() {
    assert_eq!(
        out_of_range("action = \"allow\"\nfixed_counters = [0, 32]\n"),
        (Loc(Some(2)), "fixed_counters", 32)
    );
    parse("fixed_counters = [31]\n");
}

#[test]
fn duplicate_fixed_counter_is_rejected() {
    let e = err("fixed_counters = [1, 1]\n");
    assert_eq!(
        e,
        PolicyError::DuplicateFixedCounter {
            at: Loc(Some(1)),
            index: 1
        }
    );
}

#[test]
fn bad_fixed_counters_value_is_rejected() {
    assert!(matches!(
        err("fixed_counters = \"all\"\n"),
        PolicyError::BadFixedCounters {
            at: Loc(Some(1)),
            ..
        }
    ));
    assert!(matches!(
        err("fixed_counters = [\"0\"]\n"),
        PolicyError::BadFixedCounters { .. }
    ));
}

#[test]
fn unknown_key_is_rejected_with_its_line() {
    let e = err("action = \"allow\"\n[[event]]\nname = \"cycles\"\numaks = 1\n");
    match &e {
        PolicyError::Toml { at, message } => {
            assert_eq!(*at, Loc(Some(4)), "{e}");
            assert!(message.contains("umaks"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(toml_error_at("actoin = \"allow\"\n"), Loc(Some(1)));
}

#[test]
fn bad_action_is_rejected() {
    assert_eq!(toml_error_at("\naction = \"permit\"\n"), Loc(Some(2)));
}

#[test]
fn syntax_error_names_line() {
    assert_eq!(
        toml_error_at("action = \"allow\"\n\n[[event]\nname = \"x\"\n"),
        Loc(Some(3))
    );
}

#[test]
fn name_and_event_together_are_rejected() {
    let e = err("[[event]]\nname = \"cycles\"\nevent = 0x3c\n");
    assert_eq!(e, PolicyError::NameAndEvent { at: Loc(Some(1)) });
}

#[test]
fn event_rule_without_event_is_rejected() {
    let e = err("[[event]]\nvendor = \"intel\"\n");
    assert_eq!(e, PolicyError::NoEvent { at: Loc(Some(1)) });
}

#[test]
fn umask_with_name_is_rejected() {
    let e = err("[[event]]\nname = \"cycles\"\numask = 1\n");
    assert_eq!(e, PolicyError::UmaskWithName { at: Loc(Some(3)) });
}

#[test]
fn masked_rule_that_can_never_match_is_rejected() {
    let e = err("[[masked]]\nevent = 0xd0\numask_match = 0x81\numask_mask = 0x80\n");
    assert_eq!(
        e,
        PolicyError::MatchOutsideMask {
            at: Loc(Some(1)),
            umask_match: 0x81,
            umask_mask: 0x80
        }
    );
}

#[test]
fn masked_rule_needs_match_and_mask() {
    assert!(matches!(
        err("[[masked]]\nevent = 0xd0\numask_match = 1\n"),
        PolicyError::Toml { .. }
    ));
}

#[test]
fn too_many_entries_names_the_first_entry_over_the_limit() {
    let mut src = String::from("action = \"allow\"\n");
    for i in 0..301u32 {
        src.push_str(&format!(
            "[[event]]\nevent = {}\numask = {}\n",
            i % 256,
            i / 256
        ));
    }
    let p = parse(&src);
    let e = p.compile(Vendor::Intel, 3).expect_err("301 entries");
    // Line 1 is `action`, then 3 lines per entry: entry k (0-based) starts at 2 + 3k.
    assert_eq!(
        e,
        PolicyError::TooManyEntries {
            at: Loc(Some(2 + 3 * 300)),
            vendor: Vendor::Intel,
            count: 301
        }
    );
}

#[test]
fn entry_limit_counts_only_rules_for_the_vendor() {
    let mut p = Policy::default();
    for i in 0..200u16 {
        p.events.push(EventRule {
            vendor: Some(Vendor::Intel),
            ..EventRule::raw(i, 0)
        });
        p.events.push(EventRule {
            vendor: Some(Vendor::Amd),
            ..EventRule::raw(0x100 + i, 1)
        });
    }
    assert_eq!(
        p.compile(Vendor::Intel, 3)
            .expect("200")
            .kvm_filter()
            .events
            .len(),
        200
    );
    assert_eq!(
        p.compile(Vendor::Amd, 0)
            .expect("200")
            .kvm_filter()
            .events
            .len(),
        200
    );
}

#[test]
fn wide_event_is_an_error_on_intel_only() {
    let p = parse("\n[[event]]\nevent = 0x1c0\n");
    assert_eq!(
        p.compile(Vendor::Intel, 3).expect_err("intel"),
        PolicyError::EventTooWideForIntel {
            at: Loc(Some(2)),
            event: 0x1c0
        }
    );
    assert!(p.compile(Vendor::Amd, 0).is_ok());
    // Restricting it to AMD makes it fine for both.
    let p = parse("[[event]]\nevent = 0x1c0\nvendor = \"amd\"\n");
    assert!(p
        .compile(Vendor::Intel, 3)
        .expect("skipped")
        .kvm_filter()
        .events
        .is_empty());
}

#[test]
fn validate_catches_problems_in_policies_built_in_code() {
    let mut p = Policy::default();
    p.events.push(EventRule::named("no-such-event"));
    assert!(matches!(
        p.validate(),
        Err(PolicyError::UnknownEvent { at: Loc(None), .. })
    ));
    assert!(p.compile(Vendor::Intel, 3).is_err());
    let p = Policy {
        events: vec![EventRule::raw(0x1000, 0)],
        ..Policy::default()
    };
    assert!(matches!(
        p.validate(),
        Err(PolicyError::OutOfRange { field: "event", .. })
    ));
    let p = Policy {
        fixed_counters: FixedCounters::List(vec![40]),
        ..Policy::default()
    };
    assert!(p.validate().is_err());
}

// ---------------------------------------------------------------- parsing details

#[test]
fn defaults_and_aliases() {
    let p = parse("[[event]]\nname = \"branch-instructions\"\n[[event]]\nevent = 0xd1\n");
    assert_eq!(p.action, Action::Allow);
    assert!(!p.anythread);
    assert_eq!(p.fixed_counters, FixedCounters::Named);
    assert_eq!(p.events[0].spec, EventSpec::Named("branches".into()));
    assert_eq!(
        p.events[1].spec,
        EventSpec::Raw {
            event: 0xd1,
            umask: 0
        }
    );
}

#[test]
fn vendor_and_label_are_kept() {
    let p = parse("[[masked]]\nevent = 0xd0\numask_match = 1\numask_mask = 3\nexclude = true\nvendor = \"intel\"\nlabel = \"x\"\n");
    assert_eq!(
        p.masked,
        vec![MaskedRule {
            event: 0xd0,
            umask_match: 1,
            umask_mask: 3,
            exclude: true,
            vendor: Some(Vendor::Intel),
            label: Some("x".into()),
            line: Some(1),
        }]
    );
}

// ---------------------------------------------------------------- KVM filter

#[test]
fn default_policy_intel_filter_is_plain_architectural() {
    let c = Policy::default_architectural()
        .compile(Vendor::Intel, 3)
        .expect("compile");
    let f = c.kvm_filter();
    assert_eq!(f.action, KVM_PMU_EVENT_ALLOW);
    assert_eq!(f.flags, 0);
    assert!(!c.requires_masked_events_cap());
    let mut ev = f.events.clone();
    ev.sort_unstable();
    assert_eq!(ev, vec![0x3c, 0xc0, 0xc4, 0xc5, 0x13c, 0x412e, 0x4f2e]);
    assert_eq!(f.fixed_counter_bitmap, 0b111);
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
}

#[test]
fn named_fixed_counters_are_limited_to_the_guests() {
    let p = Policy::default_architectural();
    assert_eq!(
        p.compile(Vendor::Intel, 2)
            .expect("c")
            .kvm_filter()
            .fixed_counter_bitmap,
        0b11
    );
    assert_eq!(
        p.compile(Vendor::Intel, 0)
            .expect("c")
            .kvm_filter()
            .fixed_counter_bitmap,
        0
    );
    let p = parse("[[event]]\nname = \"topdown-slots\"\n[[event]]\nevent = 0xc0\n");
    assert_eq!(
        p.compile(Vendor::Intel, 4)
            .expect("c")
            .kvm_filter()
            .fixed_counter_bitmap,
        0b1001
    );
}

#[test]
fn default_policy_amd_skips_ref_cycles_with_a_warning() {
    let c = Policy::default_architectural()
        .compile(Vendor::Amd, 3)
        .expect("compile");
    let f = c.kvm_filter();
    let mut ev = f.events.clone();
    ev.sort_unstable();
    assert_eq!(ev, vec![0x76, 0xc0, 0xc2, 0xc3, 0x964, 0xff60]);
    assert_eq!(f.fixed_counter_bitmap, 0, "AMD has no fixed counters");
    assert_eq!(c.warnings().len(), 1);
    assert!(c.warnings()[0].contains("ref-cycles"), "{:?}", c.warnings());
}

#[test]
fn amd_plain_entry_puts_high_event_bits_at_32() {
    let p = parse("[[event]]\nevent = 0x1c0\numask = 0x12\n");
    let f = p.compile(Vendor::Amd, 0).expect("c").kvm_filter();
    assert_eq!(f.events, vec![(1u64 << 32) | 0x12c0]);
}

#[test]
fn any_masked_rule_switches_all_entries_to_masked_encoding() {
    let p = parse(
        "[[event]]\nevent = 0x3c\numask = 1\n[[masked]]\nevent = 0x1d0\numask_match = 0x81\numask_mask = 0xff\nexclude = true\nvendor = \"amd\"\n",
    );
    let c = p.compile(Vendor::Amd, 0).expect("c");
    let f = c.kvm_filter();
    assert_eq!(f.flags, KVM_PMU_EVENT_FLAG_MASKED_EVENTS);
    assert!(c.requires_masked_events_cap());
    assert_eq!(f.events, vec![0xff00_0000_0000_013c, 0xff80_0001_0000_81d0]);
    assert_eq!(f.events[1], encode_masked(0x1d0, 0x81, 0xff, true));
    // The masked rule is AMD-only: Intel gets plain encoding.
    let f = p.compile(Vendor::Intel, 3).expect("c").kvm_filter();
    assert_eq!((f.flags, f.events), (0, vec![0x13c]));
}

#[test]
fn ioctl_bytes_layout() {
    let f = KvmFilter {
        action: KVM_PMU_EVENT_DENY,
        fixed_counter_bitmap: 0x5,
        flags: KVM_PMU_EVENT_FLAG_MASKED_EVENTS,
        events: vec![0x0102_0304_0506_0708, 0xff],
    };
    let b = f.to_ioctl_bytes().expect("fits");
    assert_eq!(b.len(), 32 + 16);
    let word = |i: usize| u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
    assert_eq!((word(0), word(1), word(2), word(3)), (1, 2, 5, 1));
    assert_eq!(&b[16..32], &[0u8; 16]);
    assert_eq!(&b[32..40], &[8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(&b[40..48], &[0xff, 0, 0, 0, 0, 0, 0, 0]);
    // Same header as kvm-bindings' struct (checked field by field, not by layout guess).
    let k = kvm_bindings::kvm_pmu_event_filter {
        action: word(0),
        nevents: word(1),
        fixed_counter_bitmap: word(2),
        flags: word(3),
        ..Default::default()
    };
    assert_eq!(
        (k.action, k.nevents, k.fixed_counter_bitmap, k.flags),
        (f.action, 2, 5, f.flags)
    );
}

#[test]
fn ioctl_bytes_refuse_over_300_events() {
    let f = KvmFilter {
        events: vec![0; 301],
        ..KvmFilter::default()
    };
    assert_eq!(f.to_ioctl_bytes(), Err(KvmFilterError::TooManyEvents(301)));
    let f = KvmFilter {
        events: vec![0; 300],
        ..KvmFilter::default()
    };
    assert_eq!(f.to_ioctl_bytes().expect("300 fits").len(), 32 + 8 * 300);
}

#[test]
fn ioctl_number_is_iow_kvmio_0xb2() {
    let size = std::mem::size_of::<kvm_bindings::kvm_pmu_event_filter>() as u64;
    let (write, kvmio, nr) = (1u64, u64::from(kvm_bindings::KVMIO), 0xb2u64);
    assert_eq!(
        KVM_SET_PMU_EVENT_FILTER,
        (write << 30) | (size << 16) | (kvmio << 8) | nr
    );
}

// ---------------------------------------------------------------- decisions

#[test]
fn allowlist_allows_listed_and_denies_the_rest() {
    let c = Policy::default_architectural()
        .compile(Vendor::Intel, 3)
        .expect("c");
    assert_eq!(c.decide(sel(0xc0, 0)), Decision::Allowed);
    assert_eq!(c.decide(sel(0x2e, 0x41)), Decision::Allowed);
    assert_eq!(
        c.decide(sel(0x2e, 0x42)),
        Decision::Denied(DenyReason::NotInAllowlist)
    );
    assert_eq!(
        c.decide(sel(0xd1, 0x01)),
        Decision::Denied(DenyReason::NotInAllowlist)
    );
    assert_eq!(
        c.describe(DenyReason::NotInAllowlist).to_string(),
        "not in allowlist"
    );
}

#[test]
fn decision_ignores_everything_but_event_and_umask() {
    let c = Policy::default_architectural()
        .compile(Vendor::Intel, 3)
        .expect("c");
    let noisy = sel(0xc0, 0) | bits::CMASK | bits::INV | bits::EDGE | bits::INT | (0xffu64 << 32);
    assert_eq!(c.decide(noisy), Decision::Allowed);
    assert_eq!(c.decide(noisy & !bits::EN), Decision::Allowed);
}

#[test]
fn denylist_names_the_rule_and_its_line() {
    let src = read("deny-branch-misses.toml");
    let c = parse(&src).compile(Vendor::Intel, 3).expect("c");
    let d = c.decide(sel(0xc5, 0));
    let Decision::Denied(reason @ DenyReason::Listed(id)) = d else {
        panic!("{d:?}")
    };
    let line = src
        .lines()
        .position(|l| l.starts_with("[[event]]"))
        .expect("rule")
        + 1;
    assert_eq!(c.rule(id).expect("rule").line, Some(line));
    let text = c.describe(reason).to_string();
    assert!(
        text.contains("branch-misses") && text.contains(&format!("line {line}")),
        "{text}"
    );
    assert_eq!(c.decide(sel(0xc4, 0)), Decision::Allowed);
    // Same rule on AMD means AMD's encoding.
    let a = parse(&src).compile(Vendor::Amd, 0).expect("c");
    assert!(!a.decide(sel(0xc3, 0)).is_allowed());
    assert!(a.decide(sel(0xc5, 0)).is_allowed());
}

#[test]
fn masked_include_and_exclude() {
    let c = parse(&read("masked-example.toml"))
        .compile(Vendor::Intel, 3)
        .expect("c");
    assert!(c.decide(sel(0xd0, 0x81)).is_allowed());
    assert!(!c.decide(sel(0xd0, 0x83)).is_allowed());
    assert!(c.decide(sel(0xd1, 0x01)).is_allowed());
    assert!(c.decide(sel(0xd1, 0x21)).is_allowed());
    let d = c.decide(sel(0xd1, 0x20));
    let Decision::Denied(reason @ DenyReason::Excluded(_)) = d else {
        panic!("{d:?}")
    };
    assert!(c
        .describe(reason)
        .to_string()
        .contains("no L3-miss sampling"));
    // The AMD-only rule is not there on Intel.
    assert!(!c.decide(sel(0x29, 0x07)).is_allowed());
    let a = parse(&read("masked-example.toml"))
        .compile(Vendor::Amd, 0)
        .expect("c");
    assert!(a.decide(sel(0x29, 0x07)).is_allowed());
    assert!(!a.decide(sel(0xd1, 0x01)).is_allowed());
}

#[test]
fn amd_event_select_uses_bits_35_32() {
    let p = parse("[[event]]\nevent = 0x1c0\n");
    let c = p.compile(Vendor::Amd, 0).expect("c");
    assert!(c.decide(sel(0x1c0, 0)).is_allowed());
    assert!(!c.decide(sel(0xc0, 0)).is_allowed());
    assert!(!c.decide(sel(0x2c0, 0)).is_allowed());
}

#[test]
fn fixed_counters_follow_the_bitmap() {
    let allow = parse("action = \"allow\"\nfixed_counters = [0, 2]\n")
        .compile(Vendor::Intel, 3)
        .expect("c");
    assert_eq!(
        (
            allow.decide_fixed(0),
            allow.decide_fixed(1),
            allow.decide_fixed(2)
        ),
        (true, false, true)
    );
    assert!(!allow.decide_fixed(3), "absent counter");
    assert_eq!(
        allow.decide_fixed_decision(1),
        Decision::Denied(DenyReason::FixedCounter(1))
    );
    let deny = parse("action = \"deny\"\nfixed_counters = [1]\n")
        .compile(Vendor::Intel, 3)
        .expect("c");
    assert_eq!(
        (
            deny.decide_fixed(0),
            deny.decide_fixed(1),
            deny.decide_fixed(2)
        ),
        (true, false, true)
    );
}

#[test]
fn fixed_counters_beyond_the_guest_are_dropped_with_a_warning() {
    let c = parse("fixed_counters = [0, 5]\n")
        .compile(Vendor::Intel, 3)
        .expect("c");
    assert_eq!(c.kvm_filter().fixed_counter_bitmap, 1);
    // One for counter 5; one because fixed counter 0 (instructions) is allowed explicitly
    // while no rule allows the instructions event.
    assert_eq!(c.warnings().len(), 2, "{:?}", c.warnings());
    assert!(c.warnings()[0].contains("fixed counter 5"));
    assert!(c.warnings()[1].contains("fixed counter 0") && c.warnings()[1].contains("explicitly"));
}

#[test]
fn check_combines_vetting_and_policy() {
    let c = Policy::default_architectural()
        .compile(Vendor::Intel, 3)
        .expect("c");
    let ok = c.check(sel(0xc0, 0)).expect("valid");
    assert_eq!(ok.decision, Decision::Allowed);
    assert_eq!(ok.hw_value(), sel(0xc0, 0));

    let denied = c.check(sel(0xd1, 1)).expect("valid");
    assert!(!denied.decision.is_allowed());
    assert_eq!(
        denied.hw_value() & bits::EN,
        0,
        "a denied event is never enabled"
    );

    let any = c.check(sel(0xc0, 0) | bits::ANY_THREAD).expect("not #GP");
    assert_eq!(any.decision, Decision::Denied(DenyReason::AnyThread));
    assert_eq!(any.hw_value() & (bits::EN | bits::ANY_THREAD), 0);
    assert_eq!(any.vetted.guest_value, sel(0xc0, 0) | bits::ANY_THREAD);

    let permissive = parse("anythread = true\n[[event]]\nname = \"instructions\"\n")
        .compile(Vendor::Intel, 3)
        .expect("c");
    assert!(permissive
        .check(sel(0xc0, 0) | bits::ANY_THREAD)
        .expect("ok")
        .decision
        .is_allowed());

    assert!(
        c.check(sel(0xc0, 0) | (1 << 40)).is_err(),
        "reserved bit: #GP"
    );
}

#[test]
fn check_on_amd_programs_guest_only() {
    let c = Policy::default_architectural()
        .compile(Vendor::Amd, 0)
        .expect("c");
    let r = c.check(sel(0x76, 0) | bits::HOST_ONLY).expect("valid");
    assert!(r.decision.is_allowed());
    assert_eq!(r.hw_value(), sel(0x76, 0) | bits::GUEST_ONLY);
    assert_eq!(r.vetted.guest_value, sel(0x76, 0));
}

#[test]
fn compile_for_pmu_config() {
    let p = Policy::default_architectural();
    assert!(p.compile_for(&vpmu::PmuConfig::None).expect("ok").is_none());
    let cfg = vpmu::PmuConfig::Intel(vpmu::IntelPmu {
        version: 2,
        num_gp: 4,
        gp_width: 48,
        num_fixed: 1,
        fixed_width: 48,
        events_unavailable: 0,
        events_len: 7,
        perf_capabilities: None,
    });
    let c = p.compile_for(&cfg).expect("ok").expect("some");
    assert_eq!(
        (
            c.vendor(),
            c.num_fixed(),
            c.kvm_filter().fixed_counter_bitmap
        ),
        (Vendor::Intel, 1, 1)
    );
}

// ---------------------------------------------------------------- docs

/// Every ```toml block of docs/POLICY.md is a valid policy (the first one, the format
/// overview, included) and compiles for both vendors.
#[test]
fn policy_md_examples_parse_and_compile() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/POLICY.md");
    let doc = std::fs::read_to_string(&path).expect("docs/POLICY.md");
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in doc.lines() {
        match (&mut cur, line.trim_start()) {
            (None, "```toml") => cur = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                cur = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(blocks.len() >= 5, "found {} toml blocks", blocks.len());
    for (i, b) in blocks.iter().enumerate() {
        let p = Policy::from_toml(b).unwrap_or_else(|e| panic!("block {i}: {e}\n{b}"));
        for v in [Vendor::Intel, Vendor::Amd] {
            p.compile(v, 3)
                .unwrap_or_else(|e| panic!("block {i} for {v:?}: {e}"));
        }
    }
    // The default shown in the doc is the built-in default.
    assert!(blocks
        .iter()
        .any(|b| Policy::from_toml(b).ok() == Some(Policy::default_architectural())));
}

/// The error messages quoted in docs/POLICY.md are the ones the parser produces.
#[test]
fn policy_md_error_examples_are_real() {
    let cases = [
        (
            "\n\n\n\n\n[[event]]\nname = \"cylces\"\n",
            "line 7: unknown event name `cylces`",
        ),
        (
            "[[event]]\nevent = 1\n\numask = 256\n",
            "line 4: `umask` = 256 is out of range (0..=0xff)",
        ),
        (
            "\nfixed_counters = [32]\n",
            "line 2: `fixed_counters` = 32 is out of range (0..=0x1f)",
        ),
        (
            "[[event]]\nname = \"cycles\"\nevent = 1\n",
            "line 1: give either `name` or `event`, not both",
        ),
    ];
    let doc = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/POLICY.md"),
    )
    .expect("docs/POLICY.md");
    let mut checked = 0;
    let mut check = |e: String, msg: &str| {
        assert!(e.starts_with(msg), "{e}");
        assert!(doc.contains(msg), "doc lacks {msg}");
        checked += 1;
    };
    for (src, msg) in cases {
        check(err(src).to_string(), msg);
    }
    check(
        err("\n\n[[event]]\nname = \"cycles\"\numaks = 1\n").to_string(),
        "line 5: unknown field `umaks`, expected one of `name`, `event`, `umask`, `vendor`, `label`",
    );
    check(
        err("[[masked]]\nevent = 0xd0\numask_match = 0x81\numask_mask = 0x80\n").to_string(),
        "line 1: umask_match 0x81 has bits outside umask_mask 0x80; the rule could never match",
    );
    let mut big = String::from("action = \"allow\"\n");
    for i in 0..301u32 {
        big.push_str(&format!(
            "[[event]]\nevent = {}\numask = {}\n",
            i % 256,
            i / 256
        ));
    }
    let e = parse(&big).compile(Vendor::Intel, 3).expect_err("too many");
    check(
        e.to_string(),
        "line 902: too many entries for Intel: 301 > 300 (KVM_SET_PMU_EVENT_FILTER fails with E2BIG)",
    );
    let e = parse("\n[[event]]\nevent = 0x1c0\n")
        .compile(Vendor::Intel, 3)
        .expect_err("wide");
    check(
        e.to_string(),
        "line 2: event 0x1c0 needs more than 8 bits, which Intel does not have (add `vendor = \"amd\"`)",
    );
    assert_eq!(checked, 8);
}
