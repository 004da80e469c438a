//! The allowlist invariant of the userspace vPMU, as a property: whatever a guest writes
//! to whichever PMU MSR, in whatever order, a counter that advances while the vCPU runs is
//! programmed with an event the operator's policy allows (and AnyThread only where the
//! policy permits it) -- and no access panics.

use std::sync::Arc;

use proptest::prelude::*;
use vmm::pmu::userspace::{Source, UserspacePmu};
use vmm::pmu::VcpuPmu;
use vpmu::policy::{CompiledPolicy, Policy};
use vpmu::state::CounterId;
use vpmu::{AmdPmu, IntelPmu, PmuConfig, Vendor};

#[derive(Debug, Clone)]
enum Op {
    Write(u32, u64),
    Read(u32),
    Run(u64),
}

fn layouts() -> Vec<PmuConfig> {
    vec![
        PmuConfig::Amd(AmdPmu {
            core_ext: true,
            perfmon_v2: true,
            num_counters: 6,
            width: 48,
        }),
        PmuConfig::Amd(AmdPmu {
            core_ext: false,
            perfmon_v2: false,
            num_counters: 4,
            width: 48,
        }),
        PmuConfig::Intel(IntelPmu {
            version: 5,
            num_gp: 8,
            gp_width: 48,
            num_fixed: 4,
            fixed_width: 48,
            events_unavailable: 0,
            events_len: 7,
            perf_capabilities: Some(1 << 13),
        }),
        PmuConfig::Intel(IntelPmu {
            version: 2,
            num_gp: 2,
            gp_width: 40,
            num_fixed: 3,
            fixed_width: 40,
            events_unavailable: 0,
            events_len: 7,
            perf_capabilities: None,
        }),
    ]
}

/// Policies in TOML, from permissive to strict, allow and deny, plain and masked.
fn policy_text(kind: u8, fixed_mask: u8, anythread: bool) -> String {
    let fixed: Vec<String> = (0..4)
        .filter(|i| fixed_mask & (1 << i) != 0)
        .map(|i| i.to_string())
        .collect();
    let head = |action: &str| {
        format!(
            "action = \"{action}\"\nanythread = {anythread}\nfixed_counters = [{}]\n",
            fixed.join(", ")
        )
    };
    match kind % 5 {
        0 => head("allow") + "[[event]]\nname = \"cycles\"\n",
        1 => head("allow") + "[[event]]\nname = \"instructions\"\n",
        2 => head("deny") + "[[event]]\nname = \"cycles\"\n[[event]]\nname = \"ref-cycles\"\n",
        3 => head("allow") + "[[masked]]\nevent = 0x76\numask_match = 0x00\numask_mask = 0xff\n[[masked]]\nevent = 0x3c\numask_match = 0x01\numask_mask = 0x01\n",
        _ => head("deny") + "[[masked]]\nevent = 0x3c\numask_match = 0x00\numask_mask = 0x00\n",
    }
}

fn msr_strategy(vendor: Vendor) -> impl Strategy<Value = u32> {
    let ranges = vpmu::model::pmu_msr_ranges(vendor);
    let mut msrs: Vec<u32> = ranges.iter().flat_map(|(b, n)| *b..*b + *n).collect();
    msrs.extend([0x10, 0x174, 0xc000_0080, 0x38f, 0xc000_0301]);
    prop::sample::select(msrs)
}

fn value_strategy() -> impl Strategy<Value = u64> {
    let flags = prop::sample::select(vec![
        0u64,
        1 << 16,
        1 << 17,
        (1 << 16) | (1 << 17),
        (1 << 16) | (1 << 22),
        (1 << 16) | (1 << 17) | (1 << 22),
        (1 << 16) | (1 << 17) | (1 << 20) | (1 << 22),
        (1 << 16) | (1 << 21) | (1 << 22),
        (1 << 17) | (1 << 22) | (1 << 41),
        (1 << 16) | (1 << 22) | (1 << 40),
    ]);
    let event = prop::sample::select(vec![0x3cu64, 0x76, 0xc0, 0xc4, 0xc5, 0x2e, 0x176, 0x13c]);
    prop_oneof![
        // plausible selectors: event, unit mask 0/1, flags
        (event, 0u64..2, flags)
            .prop_map(|(e, u, f)| (e & 0xff) | (((e >> 8) & 0xf) << 32) | (u << 8) | f),
        // FIXED_CTR_CTRL / GLOBAL_CTRL patterns
        prop::sample::select(vec![
            0x333u64,
            0x3333,
            0xbbbb,
            0x2222,
            0x7,
            0xf,
            0x7_0000_00ff,
            u64::MAX,
            0
        ]),
        // counter preloads near the wrap
        (0u64..64).prop_map(|k| (1u64 << 48) - 1 - k),
        any::<u64>(),
    ]
}

fn ops(vendor: Vendor) -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        4 => (msr_strategy(vendor), value_strategy()).prop_map(|(m, v)| Op::Write(m, v)),
        1 => msr_strategy(vendor).prop_map(Op::Read),
        3 => (1u64..1_000_000).prop_map(Op::Run),
    ];
    prop::collection::vec(op, 1..80)
}

fn allowed(policy: &CompiledPolicy, id: CounterId, control: u64) -> bool {
    match id {
        CounterId::Gp(_) => match policy.check(control) {
            Ok(c) => c.decision.is_allowed(),
            Err(_) => false,
        },
        CounterId::Fixed(i) => {
            let anythread = control & 0x4 != 0;
            policy.decide_fixed(i) && (!anythread || policy.anythread_allowed())
        }
    }
}

fn check(
    layout_ix: usize,
    kind: u8,
    fixed_mask: u8,
    anythread: bool,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let layout = layouts()[layout_ix].clone();
    let vendor = layout.vendor().expect("a PMU layout");
    let num_fixed = match &layout {
        PmuConfig::Intel(i) => i.num_fixed,
        _ => 0,
    };
    let text = policy_text(kind, fixed_mask, anythread);
    let policy =
        Policy::from_toml(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
    let compiled = policy
        .compile(vendor, num_fixed)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let checker = policy
        .compile(vendor, num_fixed)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut pmu = UserspacePmu::new(
        0,
        Source::Clock,
        &layout,
        Arc::new(compiled),
        None,
        2_500_000,
    );
    for op in ops {
        match *op {
            Op::Write(msr, v) => {
                pmu.wrmsr(msr, v);
            }
            Op::Read(msr) => {
                pmu.rdmsr(msr);
            }
            Op::Run(ticks) => {
                let before: Vec<(CounterId, u64)> =
                    pmu.state().counters().map(|c| (c.id, c.value)).collect();
                pmu.before_run();
                pmu.after_run(ticks, false);
                for c in pmu.state().counters() {
                    let was = before.iter().find(|(id, _)| *id == c.id).map(|(_, v)| *v);
                    if was != Some(c.value) {
                        prop_assert!(
                            allowed(&checker, c.id, c.control),
                            "{:?} counted {:?} -> {} with control {:#x}, which the policy denies\npolicy:\n{text}",
                            c.id, was, c.value, c.control
                        );
                        prop_assert!(c.enabled, "{:?} counted while disabled", c.id);
                    }
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn amd_layouts_never_count_denied_events(layout in 0usize..2, kind in any::<u8>(), fixed in any::<u8>(),
                                             anythread in any::<bool>(), ops in ops(Vendor::Amd)) {
        check(layout, kind, fixed, anythread, &ops)?;
    }

    #[test]
    fn intel_layouts_never_count_denied_events(layout in 2usize..4, kind in any::<u8>(), fixed in any::<u8>(),
                                               anythread in any::<bool>(), ops in ops(Vendor::Intel)) {
        check(layout, kind, fixed, anythread, &ops)?;
    }
}

/// The property must be able to fail: with a policy that allows cycles, cycles count.
#[test]
fn allowed_cycles_do_count() {
    let layout = layouts()[0].clone();
    let policy = Policy::from_toml(&policy_text(0, 0, false))
        .unwrap()
        .compile(Vendor::Amd, 0)
        .unwrap();
    let mut pmu = UserspacePmu::new(0, Source::Clock, &layout, Arc::new(policy), None, 2_500_000);
    assert!(pmu.wrmsr(0xc001_0200, 0x76 | (1 << 16) | (1 << 22)));
    pmu.before_run();
    pmu.after_run(1000, false);
    assert_eq!(pmu.state().counter_value(CounterId::Gp(0)), Some(1000));
    // ... and with a policy that denies them, they do not.
    let deny = Policy::from_toml(&policy_text(2, 0, false))
        .unwrap()
        .compile(Vendor::Amd, 0)
        .unwrap();
    let mut pmu = UserspacePmu::new(0, Source::Clock, &layout, Arc::new(deny), None, 2_500_000);
    assert!(pmu.wrmsr(0xc001_0200, 0x76 | (1 << 16) | (1 << 22)));
    pmu.before_run();
    pmu.after_run(1000, false);
    assert_eq!(pmu.state().counter_value(CounterId::Gp(0)), Some(0));
}
