//! Property: no selector whose counted event (after unit-mask alias normalisation,
//! `vpmu::events::counted_event`, as the hardware and the counter models count it) is
//! denied by the policy ever gets `Verdict::Allowed` from `GuestPmu`, through any alias:
//! another unit mask of an event that ignores it (AMD), perf's pseudo-encoding of the event
//! (Intel 0x00/0x03 = ref-cycles, 0x00/0x04 = topdown slots on a perf-backed counter), or
//! an Intel fixed counter counting the event (unless an allow-list names that fixed
//! counter explicitly, the documented exception).

mod common;

use std::sync::Arc;

use common::alias_layout;
use proptest::prelude::*;
use vpmu::guest::{GuestPmu, Verdict};
use vpmu::policy::{Action, EventRule, FixedCounters, MaskedRule, Policy};
use vpmu::state::CounterId;
use vpmu::Vendor;

const EN_USR_OS: u64 = (1 << 22) | (1 << 16) | (1 << 17);

/// Events that alias (AMD 0x76, 0xc0, 0xc2, 0xc3), fixed-counter events (Intel 0x3c,
/// 0xc0, 0xa4) and a few others.
fn event() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => prop::sample::select(vec![0x76_u16, 0xc0, 0xc2, 0xc3, 0x3c, 0xa4, 0x00, 0x60, 0xd1]),
        1 => 0u16..=0xff,
    ]
}

fn umask() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => prop::sample::select(vec![0x00_u8, 0x01, 0x02, 0x03, 0x04, 0x05, 0x80, 0xff]),
        1 => any::<u8>(),
    ]
}

fn event_rule() -> impl Strategy<Value = EventRule> {
    let names = vec![
        "cycles",
        "instructions",
        "ref-cycles",
        "branches",
        "branch-misses",
        "topdown-slots",
    ];
    prop_oneof![
        prop::sample::select(names).prop_map(EventRule::named),
        (event(), umask()).prop_map(|(e, u)| EventRule::raw(e, u)),
    ]
}

fn masked_rule() -> impl Strategy<Value = MaskedRule> {
    (event(), umask(), umask(), any::<bool>()).prop_map(|(event, mask, m, exclude)| MaskedRule {
        event,
        umask_match: m & mask,
        umask_mask: mask,
        exclude,
        vendor: None,
        label: None,
        line: None,
    })
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        prop_oneof![Just(Action::Allow), Just(Action::Deny)],
        prop_oneof![
            Just(FixedCounters::Named),
            prop::collection::btree_set(0u8..4, 0..4)
                .prop_map(|s| FixedCounters::List(s.into_iter().collect())),
        ],
        prop::collection::vec(event_rule(), 0..8),
        prop::collection::vec(masked_rule(), 0..5),
    )
        .prop_map(|(action, fixed_counters, events, masked)| Policy {
            action,
            anythread: false,
            fixed_counters,
            events,
            masked,
        })
}

fn gp_verdict(g: &mut GuestPmu, v: Vendor, event: u16, umask: u8) -> Verdict {
    let msr = match v {
        Vendor::Intel => 0x186,
        Vendor::Amd => 0xc001_0200,
    };
    let raw = vpmu::selector::encode(event, umask) | EN_USR_OS;
    let w = g.write(msr, raw).expect("a clean selector is accepted");
    w.reprogrammed[0].verdict
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn a_denied_counted_event_is_never_allowed_through_an_alias(
        p in policy(),
        amd in any::<bool>(),
        sels in prop::collection::vec((event(), umask()), 1..24),
    ) {
        let v = if amd { Vendor::Amd } else { Vendor::Intel };
        let cfg = alias_layout(v);
        let nf = if amd { 0 } else { 4 };
        let compiled = p.compile(v, nf).expect("compiles");
        let mut g = GuestPmu::new(&cfg, Arc::new(compiled));
        for (event, umask) in sels {
            let (ce, cu) = vpmu::events::counted_event(v, event, umask);
            let counted = gp_verdict(&mut g, v, ce, cu);
            let alias = gp_verdict(&mut g, v, event, umask);
            if let (Verdict::Allowed, Some((pe, pu))) =
                (alias, vpmu::events::perf_pseudo_alias(v, event, umask))
            {
                let perf_counted = gp_verdict(&mut g, v, pe, pu);
                prop_assert_eq!(
                    perf_counted, Verdict::Allowed,
                    "{:?}: pseudo-encoding {:#x}/{:#04x} allowed but {:#x}/{:#04x} is denied\n{}",
                    v, event, umask, pe, pu, p.to_toml()
                );
            }
            if alias == Verdict::Allowed {
                prop_assert_eq!(
                    counted, Verdict::Allowed,
                    "{:?}: {:#x}/{:#04x} allowed but its counted event {:#x}/{:#04x} is denied\n{}",
                    v, event, umask, ce, cu, p.to_toml()
                );
            }
        }
        if v == Vendor::Intel {
            for f in vpmu::events::INTEL_FIXED_COUNTERS.iter() {
                let i = f.index;
                // Enable only fixed counter i (OS|USR).
                let w = g.write(0x38d, 0x3 << (4 * i)).expect("valid FIXED_CTR_CTRL");
                let fixed = w
                    .reprogrammed
                    .iter()
                    .find(|p| p.counter == CounterId::Fixed(i))
                    .map(|p| p.verdict);
                let _ = g.write(0x38d, 0);
                let gp = gp_verdict(&mut g, v, f.event.event, f.event.umask);
                let explicit = p.action == Action::Allow
                    && matches!(&p.fixed_counters, FixedCounters::List(l) if l.contains(&i));
                if fixed == Some(Verdict::Allowed) && !explicit {
                    prop_assert_eq!(
                        gp, Verdict::Allowed,
                        "fixed counter {} allowed but its event {} is denied\n{}",
                        i, f.event.name, p.to_toml()
                    );
                }
            }
        }
    }
}
