//! Property tests: the in-VMM matcher agrees with KVM's filter algorithm evaluated on
//! the exact ioctl bytes, and policies survive TOML round trips.
//!
//! The reference below is written from arch/x86/kvm/pmu.c (kvm_vm_ioctl_set_pmu_event_filter,
//! prepare_filter_lists, convert_to_masked_filter, is_masked_filter_valid,
//! filter_contains_match, is_gp_event_allowed, is_fixed_event_allowed) and shares no
//! code with the crate: it decodes the bytes itself.

use proptest::prelude::*;
use vpmu::policy::{
    Action, CompiledPolicy, Decision, DenyReason, EventRule, EventSpec, FixedCounters, MaskedRule,
    Policy,
};
use vpmu::Vendor;

// ------------------------------------------------------------------ KVM reference

const MASKED_EVENT_SELECT: u64 = 0xff | (0xf << 32);
const MASKED_UMASK_MASK: u64 = 0xff << 56;
const MASKED_UMASK_MATCH: u64 = 0xff00;
const MASKED_EXCLUDE: u64 = 1 << 55;
const EVENTSEL_UMASK: u64 = 0xff00;

/// `kvm_pmu_ops.EVENTSEL_EVENT`.
fn eventsel_event(vendor: Vendor) -> u64 {
    match vendor {
        Vendor::Intel => 0xff,
        Vendor::Amd => 0xff | (0xf << 32),
    }
}

/// KVM's in-kernel filter after KVM_SET_PMU_EVENT_FILTER succeeded.
struct KvmRef {
    vendor: Vendor,
    action: u32,
    fixed_counter_bitmap: u32,
    includes: Vec<u64>,
    excludes: Vec<u64>,
}

fn le32(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

/// Decode the ioctl bytes and prepare them as KVM does; `Err(errno name)` on rejection.
fn kvm_set_filter(vendor: Vendor, bytes: &[u8]) -> Result<KvmRef, &'static str> {
    if bytes.len() < 32 {
        return Err("EFAULT");
    }
    let (action, nevents, fixed, flags) = (
        le32(bytes, 0),
        le32(bytes, 1),
        le32(bytes, 2),
        le32(bytes, 3),
    );
    if action != 0 && action != 1 {
        return Err("EINVAL");
    }
    if flags & !1 != 0 {
        return Err("EINVAL");
    }
    if nevents > 300 {
        return Err("E2BIG");
    }
    let n = nevents as usize;
    if bytes.len() != 32 + 8 * n {
        return Err("EFAULT (length mismatch)");
    }
    let mut events: Vec<u64> = bytes[32..]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    let masked = flags & 1 != 0;
    if !masked {
        // convert_to_masked_filter: drop impossible entries, add an all-ones mask.
        events.retain(|e| e & !(eventsel_event(vendor) | EVENTSEL_UMASK) == 0);
        for e in &mut events {
            *e |= 0xff << 56;
        }
    } else {
        let valid =
            eventsel_event(vendor) | MASKED_UMASK_MASK | MASKED_UMASK_MATCH | MASKED_EXCLUDE;
        if events.iter().any(|e| e & !valid != 0) {
            return Err("EINVAL");
        }
    }
    // Only masked filters have excludes (plain entries never have bit 55 after the
    // retain above, since bit 55 is outside the event/umask bits).
    let (excludes, includes): (Vec<u64>, Vec<u64>) = events
        .into_iter()
        .partition(|e| masked && e & MASKED_EXCLUDE != 0);
    Ok(KvmRef {
        vendor,
        action,
        fixed_counter_bitmap: fixed,
        includes,
        excludes,
    })
}

fn contains_match(list: &[u64], vendor: Vendor, eventsel: u64) -> bool {
    let event_select = eventsel & eventsel_event(vendor);
    let umask = eventsel & EVENTSEL_UMASK;
    list.iter().any(|&fe| {
        let mask = fe >> (56 - 8);
        let matchv = fe & MASKED_UMASK_MATCH;
        fe & MASKED_EVENT_SELECT == event_select && (umask & mask) == matchv
    })
}

impl KvmRef {
    fn gp_allowed(&self, eventsel: u64) -> bool {
        if contains_match(&self.includes, self.vendor, eventsel)
            && !contains_match(&self.excludes, self.vendor, eventsel)
        {
            return self.action == 0;
        }
        self.action == 1
    }

    fn fixed_allowed(&self, idx: u8) -> bool {
        let bit = self.fixed_counter_bitmap >> idx & 1 != 0;
        if self.action == 1 && bit {
            return false;
        }
        if self.action == 0 && !bit {
            return false;
        }
        true
    }
}

// ------------------------------------------------------------------ generators

const NAMES: &[&str] = &[
    "cycles",
    "instructions",
    "ref-cycles",
    "branches",
    "branch-misses",
    "cache-references",
    "cache-misses",
    "topdown-slots",
    "lbr-inserts",
];

/// Event selects drawn from a small pool so that rules and selectors collide often.
fn event_pool() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => prop::sample::select(vec![0x3c_u16, 0xc0, 0x2e, 0xc4, 0xc5, 0x76, 0x60, 0x64, 0xd0, 0xd1]),
        1 => 0u16..=0xff,
    ]
}

fn amd_event_pool() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => event_pool(),
        1 => prop::sample::select(vec![0x1c0_u16, 0x2c0, 0x1d0, 0xfd0]),
        1 => 0u16..=0xfff,
    ]
}

fn umask_pool() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => prop::sample::select(vec![0x00_u8, 0x01, 0x41, 0x4f, 0x81, 0x82, 0x20, 0xff, 0x09]),
        1 => any::<u8>(),
    ]
}

fn label() -> impl Strategy<Value = Option<String>> {
    prop::option::of("[a-zA-Z0-9 _.\\\\\"'#=-]{0,16}")
}

fn vendor_opt() -> impl Strategy<Value = Option<Vendor>> {
    prop_oneof![3 => Just(None), 1 => Just(Some(Vendor::Intel)), 1 => Just(Some(Vendor::Amd))]
}

fn event_rule() -> impl Strategy<Value = EventRule> {
    // Wide (> 8 bit) events only on AMD-only rules: on Intel they are a compile error
    // (tested separately).
    let named =
        (prop::sample::select(NAMES), vendor_opt(), label()).prop_map(|(n, vendor, label)| {
            EventRule {
                spec: EventSpec::Named(n.to_string()),
                vendor,
                label,
                line: None,
            }
        });
    let raw = (event_pool(), umask_pool(), vendor_opt(), label()).prop_map(
        |(event, umask, vendor, label)| EventRule {
            spec: EventSpec::Raw { event, umask },
            vendor,
            label,
            line: None,
        },
    );
    let raw_amd =
        (amd_event_pool(), umask_pool(), label()).prop_map(|(event, umask, label)| EventRule {
            spec: EventSpec::Raw { event, umask },
            vendor: Some(Vendor::Amd),
            label,
            line: None,
        });
    prop_oneof![named, raw, raw_amd]
}

fn masked_rule() -> impl Strategy<Value = MaskedRule> {
    let common = || (umask_pool(), any::<u8>(), any::<bool>(), label());
    let any_vendor = (event_pool(), vendor_opt(), common());
    let amd_only = (amd_event_pool(), Just(Some(Vendor::Amd)), common());
    prop_oneof![any_vendor, amd_only].prop_map(|(event, vendor, (mask, m, exclude, label))| {
        MaskedRule {
            event,
            // Only valid rules: match within mask.
            umask_match: m & mask,
            umask_mask: mask,
            exclude,
            vendor,
            label,
            line: None,
        }
    })
}

fn fixed_counters() -> impl Strategy<Value = FixedCounters> {
    prop_oneof![
        Just(FixedCounters::Named),
        prop::collection::btree_set(0u8..=31, 0..6)
            .prop_map(|s| FixedCounters::List(s.into_iter().collect())),
    ]
}

fn policy(max_masked: usize) -> impl Strategy<Value = Policy> {
    (
        prop_oneof![Just(Action::Allow), Just(Action::Deny)],
        any::<bool>(),
        fixed_counters(),
        prop::collection::vec(event_rule(), 0..24),
        prop::collection::vec(masked_rule(), 0..=max_masked),
    )
        .prop_map(
            |(action, anythread, fixed_counters, events, masked)| Policy {
                action,
                anythread,
                fixed_counters,
                events,
                masked,
            },
        )
}

/// Guest selector values: mostly pool events with noise in the other fields.
fn selector_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => (amd_event_pool(), umask_pool(), any::<u64>()).prop_map(|(e, u, noise)| {
            let keep = !(0xffff_u64 | (0xf << 32));
            vpmu::selector::encode(e, u) | (noise & keep)
        }),
        1 => any::<u64>(),
    ]
}

fn vendor() -> impl Strategy<Value = Vendor> {
    prop_oneof![Just(Vendor::Intel), Just(Vendor::Amd)]
}

fn compile(p: &Policy, v: Vendor, nf: u8) -> CompiledPolicy {
    match p.compile(v, nf) {
        Ok(c) => c,
        Err(e) => panic!(
            "generated policy must compile for {v:?}: {e}\n{}",
            p.to_toml()
        ),
    }
}

// ------------------------------------------------------------------ properties

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// decide() == KVM's algorithm on the bytes, for both encodings and vendors.
    #[test]
    fn matcher_equals_kvm_reference(
        p in policy(6),
        v in vendor(),
        nf in 0u8..=8,
        sels in prop::collection::vec(selector_value(), 1..40),
    ) {
        let c = compile(&p, v, nf);
        let bytes = c.kvm_filter().to_ioctl_bytes().expect("<= 300");
        let kvm = kvm_set_filter(v, &bytes).expect("KVM accepts the filter");
        prop_assert_eq!(c.requires_masked_events_cap(), le32(&bytes, 3) & 1 == 1);
        for &s in &sels {
            let d = c.decide(s);
            prop_assert_eq!(d.is_allowed(), kvm.gp_allowed(s), "selector {:#x}", s);
            prop_assert_eq!(c.in_filter(s), kvm.gp_allowed(s) == (p.action == Action::Allow));
            // The reason names a rule that really matches the selector.
            if let Decision::Denied(DenyReason::Listed(id) | DenyReason::Excluded(id)) = d {
                prop_assert!(c.rule(id).is_some());
                let text = c.describe(match d { Decision::Denied(r) => r, Decision::Allowed => unreachable!() }).to_string();
                prop_assert!(!text.is_empty());
            }
        }
        for i in 0..nf.min(32) {
            if v == Vendor::Intel {
                prop_assert_eq!(c.decide_fixed(i), kvm.fixed_allowed(i), "fixed {}", i);
            }
        }
    }

    /// Policies without masked rules use flags = 0 (except a denylist naming an AMD event
    /// whose unit mask the hardware ignores: that rule covers every unit mask, a masked
    /// entry; and an allowlist naming a perf pseudo-encoding without its event) and still
    /// agree with KVM.
    #[test]
    fn plain_encoding_equals_kvm_reference(
        p in policy(0),
        v in vendor(),
        sels in prop::collection::vec(selector_value(), 1..40),
    ) {
        let c = compile(&p, v, 4);
        let bytes = c.kvm_filter().to_ioctl_bytes().expect("<= 300");
        let aliased = p.action == Action::Deny
            && c.kvm_filter().events.iter().any(|e| {
                let ev = (e & 0xff) as u16 | ((e >> 24) & 0xf00) as u16;
                vpmu::events::defined_umask_bits(v, ev) != 0xff
            });
        // An allowlist naming a perf pseudo-encoding (Intel 0x00/0x03, 0x00/0x04) without
        // its event gets an exclude entry for it (masked).
        let pseudo_exclude = p.action == Action::Allow
            && c.kvm_filter().events.iter().any(|e| e & (1 << 55) != 0);
        let masked = aliased || pseudo_exclude;
        prop_assert_eq!(c.requires_masked_events_cap(), masked);
        prop_assert_eq!(le32(&bytes, 3), u32::from(masked));
        let kvm = kvm_set_filter(v, &bytes).expect("accepted");
        for &s in &sels {
            prop_assert_eq!(c.decide(s).is_allowed(), kvm.gp_allowed(s), "selector {:#x}", s);
        }
    }

    /// check() = vet + decide; AnyThread only matters on Intel.
    #[test]
    fn check_agrees_with_vet_and_decide(p in policy(3), v in vendor(), s in selector_value()) {
        let c = compile(&p, v, 3);
        let vetted = vpmu::selector::vet(v, s, &c.vet_options());
        match c.check(s) {
            Err(e) => prop_assert_eq!(Err(e), vetted),
            Ok(r) => {
                prop_assert_eq!(Ok(r.vetted), vetted);
                if r.vetted.anythread_denied {
                    prop_assert_eq!(r.decision, Decision::Denied(DenyReason::AnyThread));
                } else {
                    prop_assert_eq!(r.decision, c.decide(s));
                }
                if !r.decision.is_allowed() {
                    prop_assert_eq!(r.hw_value() & vpmu::selector::bits::EN, 0);
                }
            }
        }
    }

    /// to_toml -> from_toml gives the same policy, and every parsed rule knows its line.
    #[test]
    fn toml_round_trip(p in policy(6)) {
        let text = p.to_toml();
        let back = Policy::from_toml(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(&back, &p);
        prop_assert!(back.events.iter().all(|e| e.line.is_some()));
        prop_assert!(back.masked.iter().all(|m| m.line.is_some()));
        // And the result is a fixed point.
        prop_assert_eq!(back.to_toml(), text);
    }

    /// Arbitrary text never panics the parser.
    #[test]
    fn parser_is_total(s in "(\\[\\[(event|masked)\\]\\]\n|[a-z_]{1,12} = (-?[0-9]{1,20}|0x[0-9a-f]{1,18}|\"[a-z-]{0,12}\"|true|\\[[0-9, ]{0,12}\\])\n){0,12}") {
        let _ = Policy::from_toml(&s);
    }
}
