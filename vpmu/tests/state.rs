//! PmuState semantics per SDM vol. 3B §18.2 / APM vol. 2 §13.2 rules, plus property tests.

mod common;

use common::{amd_cfg as amd, intel_cfg as intel};
use proptest::prelude::*;
use vpmu::model::{amd, intel};
use vpmu::state::{
    ContextStep, CounterId, CounterMask, MsrFault, Overflow, PmuContext, PmuState, WriteEffect,
    RESTORE_ORDER, RESTORE_ORDER_NO_GLOBAL, SAVE_ORDER, SAVE_ORDER_NO_GLOBAL,
};
use vpmu::{IntelPmu, PmuConfig};

const EN: u64 = 1 << 22;
const INT: u64 = 1 << 20;
const OS_USR: u64 = 3 << 16;

fn spr_like() -> PmuConfig {
    intel(5, 8, 4, Some(intel::PERF_CAP_FW_WRITES))
}

const MASK48: u64 = (1 << 48) - 1;

#[test]
fn reset_state_enables_all_gp_in_global_ctrl() {
    // KVM kvm_pmu_refresh / SDM: GLOBAL_CTRL resets with every GP enable bit set.
    let s = PmuState::new(&spr_like());
    assert_eq!(s.read(0x38f), Ok(0xff));
    assert_eq!(s.read(0x38e), Ok(0));
    assert_eq!(s.read(0x38d), Ok(0));
    assert_eq!(s.read(0x345), Ok(intel::PERF_CAP_FW_WRITES));
    let a = PmuState::new(&amd(true, true, 6));
    assert_eq!(a.read(amd::GLOBAL_CTL), Ok(0x3f));
}

#[test]
fn legacy_pmc_write_sign_extends_bits_31_0() {
    // SDM §18.2.5: WRMSR to IA32_PMCx writes EAX[31:0] sign-extended (to the width).
    let mut s = PmuState::new(&spr_like());
    assert_eq!(
        s.write(0xc1, 0xdead_0000_8000_0001),
        Ok(WriteEffect::CounterValue(CounterId::Gp(0)))
    );
    assert_eq!(s.read(0xc1), Ok(0xffff_8000_0001));
    s.write(0xc1, 0x7fff_ffff).unwrap();
    assert_eq!(s.read(0xc1), Ok(0x7fff_ffff));
    // Same counter through the full-width alias.
    assert_eq!(s.read(0x4c1), Ok(0x7fff_ffff));
}

#[test]
fn full_width_write_rejects_bits_above_width() {
    // SDM §18.2.5 + KVM: IA32_A_PMCx takes the full width; bits above it #GP.
    let mut s = PmuState::new(&spr_like());
    s.write(0x4c2, 0x1234_5678_9abc).unwrap();
    assert_eq!(s.read(0xc2), Ok(0x1234_5678_9abc));
    let err = s.write(0x4c2, 1 << 48).unwrap_err();
    assert_eq!(
        err,
        MsrFault::Reserved {
            msr: 0x4c2,
            value: 1 << 48,
            mask: !MASK48
        }
    );
    assert_eq!(
        s.read(0xc2),
        Ok(0x1234_5678_9abc),
        "faulting write changes nothing"
    );
}

#[test]
fn a_pmc_absent_without_fw_writes() {
    let mut s = PmuState::new(&intel(4, 4, 3, Some(0)));
    assert_eq!(s.write(0x4c1, 1), Err(MsrFault::NotPresent { msr: 0x4c1 }));
    assert_eq!(s.read(0x4c1), Err(MsrFault::NotPresent { msr: 0x4c1 }));
}

#[test]
fn fixed_counter_write_truncates_to_width() {
    let mut s = PmuState::new(&spr_like());
    assert_eq!(
        s.write(0x30a, u64::MAX),
        Ok(WriteEffect::CounterValue(CounterId::Fixed(1)))
    );
    assert_eq!(s.read(0x30a), Ok(MASK48));
}

#[test]
fn amd_counter_write_truncates_to_48_bits_and_aliases() {
    // APM §13.2.2: legacy PerfCtr0-3 alias PERF_CTR0-3 of the core-extension range.
    let mut s = PmuState::new(&amd(true, true, 6));
    s.write(0xc001_0201, u64::MAX).unwrap();
    assert_eq!(s.read(0xc001_0004), Ok(MASK48));
    s.write(0xc001_0000, EN | 0x76).unwrap();
    assert_eq!(s.read(0xc001_0200), Ok(EN | 0x76));
}

#[test]
fn read_only_registers_fault_on_write() {
    let mut s = PmuState::new(&spr_like());
    for msr in [0x345, 0x38e, 0x392] {
        assert_eq!(s.write(msr, 0), Err(MsrFault::ReadOnly { msr }), "{msr:#x}");
    }
    let mut a = PmuState::new(&amd(true, true, 6));
    assert_eq!(
        a.write(amd::GLOBAL_STATUS, 0),
        Err(MsrFault::ReadOnly {
            msr: amd::GLOBAL_STATUS
        })
    );
}

#[test]
fn reserved_bits_fault_and_leave_state() {
    let mut s = PmuState::new(&intel(2, 4, 3, None));
    // AnyThread is reserved before v3 (SDM §18.2.3).
    assert!(matches!(
        s.write(0x186, EN | (1 << 21)),
        Err(MsrFault::Reserved { .. })
    ));
    assert!(matches!(
        s.write(0x186, 1 << 32),
        Err(MsrFault::Reserved { .. })
    ));
    // FIXED_CTR_CTRL AnyThread (bit 2) reserved before v3; bits beyond 3 counters reserved.
    assert!(matches!(
        s.write(0x38d, 0x4),
        Err(MsrFault::Reserved { .. })
    ));
    assert!(matches!(
        s.write(0x38d, 0x1000),
        Err(MsrFault::Reserved { .. })
    ));
    assert!(matches!(
        s.write(0x38f, 1 << 4),
        Err(MsrFault::Reserved { .. })
    ));
    assert!(matches!(
        s.write(0x38f, 1 << 35),
        Err(MsrFault::Reserved { .. })
    ));
    assert_eq!(s.read(0x186), Ok(0));
    assert_eq!(s.read(0x38d), Ok(0));
    assert_eq!(s.read(0x38f), Ok(0xf));
    let mut v3 = PmuState::new(&intel(3, 4, 3, None));
    assert!(v3.write(0x186, EN | (1 << 21)).is_ok());
    assert!(v3.write(0x38d, 0x444).is_ok());
    let mut a = PmuState::new(&amd(true, true, 6));
    assert!(matches!(
        a.write(0xc001_0200, 1 << 19),
        Err(MsrFault::Reserved { .. })
    ));
    assert!(a.write(0xc001_0200, (0xf << 32) | (3 << 40) | EN).is_ok());
}

#[test]
fn selector_write_effects() {
    let mut s = PmuState::new(&spr_like());
    assert_eq!(
        s.write(0x187, EN | OS_USR | 0xc0),
        Ok(WriteEffect::Reprogram(CounterId::Gp(1)))
    );
    assert_eq!(
        s.write(0x187, EN | OS_USR | 0xc0),
        Ok(WriteEffect::None),
        "unchanged"
    );
    assert_eq!(s.read(0x187), Ok(EN | OS_USR | 0xc0));
    assert_eq!(
        s.write(0x38d, 0x0b0),
        Ok(WriteEffect::ReprogramFixed(CounterMask(1 << 33)))
    );
    assert_eq!(
        s.write(0x38f, 0xff | (1 << 33)),
        Ok(WriteEffect::GlobalCtrl(CounterMask(1 << 33)))
    );
    let ids: Vec<CounterId> = CounterMask(0b101 | (1 << 34)).iter().collect();
    assert_eq!(
        ids,
        vec![CounterId::Gp(0), CounterId::Gp(2), CounterId::Fixed(2)]
    );
}

#[test]
fn effective_enable_needs_local_and_global() {
    // SDM §18.2.2: GLOBAL_CTRL bit AND the selector's enable.
    let mut s = PmuState::new(&spr_like());
    s.write(0x186, OS_USR).unwrap();
    assert!(!s.is_enabled(CounterId::Gp(0)), "EN clear");
    s.write(0x186, OS_USR | EN).unwrap();
    assert!(s.is_enabled(CounterId::Gp(0)));
    s.write(0x38f, 0xfe).unwrap();
    assert!(!s.is_enabled(CounterId::Gp(0)), "global bit clear");
    // Fixed: enable field [1:0] != 0 and GLOBAL_CTRL bit 32+i.
    s.write(0x38d, 0x2).unwrap();
    assert!(!s.is_enabled(CounterId::Fixed(0)));
    s.write(0x38f, 1 << 32).unwrap();
    assert!(s.is_enabled(CounterId::Fixed(0)));
    // Intel v1 and AMD without PerfMonV2: only the EN bit.
    let mut v1 = PmuState::new(&intel(1, 2, 0, None));
    v1.write(0x186, EN).unwrap();
    assert!(v1.is_enabled(CounterId::Gp(0)));
    let mut legacy = PmuState::new(&amd(false, false, 4));
    legacy.write(0xc001_0003, EN).unwrap();
    assert!(legacy.is_enabled(CounterId::Gp(3)));
    assert!(!legacy.is_enabled(CounterId::Gp(4)), "no such counter");
}

#[test]
fn add_count_overflow_sets_status_and_reports_pmi() {
    let mut s = PmuState::new(&spr_like());
    s.write(0x186, EN | OS_USR | INT | 0x3c).unwrap();
    s.write(0x4c1, MASK48 - 9).unwrap();
    assert_eq!(s.counts_until_overflow(CounterId::Gp(0)), Some(10));
    assert_eq!(s.add_count(CounterId::Gp(0), 9), None);
    assert_eq!(s.read(0xc1), Ok(MASK48));
    assert_eq!(
        s.add_count(CounterId::Gp(0), 3),
        Some(Overflow { pmi: true })
    );
    assert_eq!(s.read(0xc1), Ok(2));
    assert_eq!(s.read(0x38e), Ok(1));
    // Fixed counter without PMI bit: overflow recorded, no PMI.
    s.write(0x38d, 0x3 << 4).unwrap();
    s.write(0x38f, 0xff | (1 << 33)).unwrap();
    s.write(0x30a, MASK48).unwrap();
    assert_eq!(
        s.add_count(CounterId::Fixed(1), 1),
        Some(Overflow { pmi: false })
    );
    assert_eq!(s.read(0x38e), Ok(1 | (1 << 33)));
    // STATUS_RESET (OVF_CTRL) clears, STATUS_SET sets (SDM §18.2.4.2).
    assert_eq!(s.write(0x390, 1), Ok(WriteEffect::Status));
    assert_eq!(s.read(0x38e), Ok(1 << 33));
    assert_eq!(s.write(0x391, 1 << 7), Ok(WriteEffect::Status));
    assert_eq!(s.read(0x38e), Ok((1 << 33) | (1 << 7)));
    assert_eq!(s.read(0x390), Ok(0), "write-only in effect");
    assert_eq!(s.read(0x391), Ok(0));
    assert!(
        matches!(s.write(0x391, 1 << 63), Err(MsrFault::Reserved { .. })),
        "no CondChgd set"
    );
    assert_eq!(
        s.write(0x390, 1 << 63),
        Ok(WriteEffect::None),
        "clearing CondChgd is legal"
    );
}

#[test]
fn blocked_or_disabled_counters_do_not_count() {
    let mut s = PmuState::new(&spr_like());
    s.write(0x186, EN | OS_USR | 0x3c).unwrap();
    s.set_blocked(CounterId::Gp(0), true);
    assert!(s.is_blocked(CounterId::Gp(0)));
    assert_eq!(s.add_count(CounterId::Gp(0), 100), None);
    assert_eq!(s.read(0xc1), Ok(0));
    assert_eq!(s.counts_until_overflow(CounterId::Gp(0)), None);
    let view = s.counter(CounterId::Gp(0)).unwrap();
    assert!(view.enabled && view.blocked);
    s.set_blocked(CounterId::Gp(0), false);
    assert_eq!(s.add_count(CounterId::Gp(0), 100), None);
    assert_eq!(s.read(0xc1), Ok(100));
    // Disabled counter.
    assert_eq!(s.add_count(CounterId::Gp(1), 5), None);
    assert_eq!(s.read(0xc2), Ok(0));
}

#[test]
fn amd_overflow_without_perfmon_v2_has_no_status() {
    let mut s = PmuState::new(&amd(true, false, 6));
    s.write(0xc001_020a, EN | INT | 0x76).unwrap();
    s.write(0xc001_020b, MASK48).unwrap();
    assert_eq!(
        s.add_count(CounterId::Gp(5), 1),
        Some(Overflow { pmi: true })
    );
    assert_eq!(s.global_status(), 0);
    assert_eq!(
        s.read(amd::GLOBAL_STATUS),
        Err(MsrFault::NotPresent {
            msr: amd::GLOBAL_STATUS
        })
    );
    let mut v2 = PmuState::new(&amd(true, true, 6));
    v2.write(0xc001_020a, EN | 0x76).unwrap();
    v2.write(0xc001_020b, MASK48).unwrap();
    assert_eq!(
        v2.add_count(CounterId::Gp(5), 1),
        Some(Overflow { pmi: false })
    );
    assert_eq!(v2.read(amd::GLOBAL_STATUS), Ok(1 << 5));
    assert_eq!(
        v2.write(amd::GLOBAL_STATUS_CLR, 1 << 5),
        Ok(WriteEffect::Status)
    );
    assert_eq!(v2.read(amd::GLOBAL_STATUS), Ok(0));
}

#[test]
fn global_inuse_follows_sdm_18_2_4_3() {
    let mut s = PmuState::new(&spr_like());
    assert_eq!(s.read(0x392), Ok(0));
    s.write(0x187, 0x3c).unwrap(); // event select != 0, not enabled
    s.write(0x38d, 0x8 | (0x1 << 8)).unwrap(); // fixed0 PMI only; fixed2 OS
    assert_eq!(s.read(0x392), Ok((1 << 1) | (1 << 34) | (1 << 63)));
    s.write(0x186, 0x100).unwrap(); // umask only: not "in use"
    assert_eq!(s.read(0x392).unwrap() & 1, 0);
}

#[test]
fn counters_view_lists_layout() {
    let mut s = PmuState::new(&intel(4, 2, 3, None));
    s.write(0x187, EN | INT | (1 << 17) | 0xc0).unwrap();
    let views: Vec<_> = s.counters().collect();
    assert_eq!(views.len(), 5);
    let v = views[1];
    assert_eq!(v.id, CounterId::Gp(1));
    assert!(v.enabled && v.pmi_on_overflow && v.count_os && !v.count_usr);
    assert_eq!(v.width, 48);
    assert_eq!(views[2].id, CounterId::Fixed(0));
}

#[test]
fn none_layout_faults_everything() {
    let mut s = PmuState::new(&PmuConfig::None);
    assert_eq!(s.read(0xc1), Err(MsrFault::NotPresent { msr: 0xc1 }));
    assert_eq!(
        s.write(0xc001_0000, 0),
        Err(MsrFault::NotPresent { msr: 0xc001_0000 })
    );
    assert_eq!(s.counters().count(), 0);
    assert_eq!(s.add_count(CounterId::Gp(0), 1), None);
}

#[test]
fn save_restore_order_constants() {
    // Apple HV rules (seed 000): status restored first, saved last; counters stopped via
    // GLOBAL_CTRL before anything else (LPC 2024 mediated vPMU, seed 003).
    assert_eq!(SAVE_ORDER.first(), Some(&ContextStep::StopGlobal));
    assert_eq!(SAVE_ORDER.last(), Some(&ContextStep::SaveStatus));
    assert_eq!(RESTORE_ORDER.first(), Some(&ContextStep::RestoreStatus));
    assert_eq!(RESTORE_ORDER.last(), Some(&ContextStep::RestoreGlobal));
    let pos = |s: ContextStep| RESTORE_ORDER.iter().position(|&x| x == s);
    assert!(pos(ContextStep::RestoreSelectors) < pos(ContextStep::RestoreCounters));
    assert_eq!(PmuState::new(&spr_like()).save_order(), &SAVE_ORDER[..]);
    let legacy = PmuState::new(&amd(false, false, 4));
    assert_eq!(legacy.save_order(), &SAVE_ORDER_NO_GLOBAL[..]);
    assert_eq!(legacy.restore_order(), &RESTORE_ORDER_NO_GLOBAL[..]);
    assert_eq!(
        RESTORE_ORDER_NO_GLOBAL.last(),
        Some(&ContextStep::RestoreSelectorsEnable)
    );
}

#[test]
fn restore_rejects_contexts_that_do_not_fit() {
    let mut s = PmuState::new(&intel(4, 2, 1, None));
    let mut ctx = s.save();
    ctx.gp_counters[2] = 1; // counter the layout lacks
    assert!(s.restore(&ctx).is_err());
    let mut ctx = s.save();
    ctx.gp_counters[0] = 1 << 48;
    assert!(s.restore(&ctx).is_err());
    let mut ctx = s.save();
    ctx.global_status = 1 << 63; // CondChgd cannot be set
    assert!(s.restore(&ctx).is_err());
    let before = s.save();
    assert_eq!(s.save(), before, "failed restores change nothing");
    let json = serde_json::to_string(&before).unwrap();
    let back: PmuContext = serde_json::from_str(&json).unwrap();
    assert_eq!(back, before);
}

fn configs() -> impl Strategy<Value = PmuConfig> {
    prop_oneof![
        (
            1u8..=5,
            0u8..=8,
            0u8..=4,
            32u8..=64,
            32u8..=64,
            any::<bool>()
        )
            .prop_map(|(v, gp, fx, gw, fw, fwr)| PmuConfig::Intel(IntelPmu {
                version: v,
                num_gp: gp,
                gp_width: gw,
                num_fixed: if v == 1 { 0 } else { fx },
                fixed_width: fw,
                events_unavailable: 0,
                events_len: 7,
                perf_capabilities: Some(if fwr { intel::PERF_CAP_FW_WRITES } else { 0 }),
            })),
        Just(amd(false, false, 4)),
        Just(amd(true, false, 6)),
        (1u8..=6).prop_map(|n| amd(true, true, n)),
    ]
}

/// A valid random context for `s`: random values masked into each register's legal bits.
fn fit(s: &PmuState, raw: [u64; 22]) -> PmuContext {
    let m = s.model();
    let mut ctx = PmuContext::default();
    for i in 0..usize::from(m.num_gp) {
        ctx.gp_counters[i] = raw[i] & m.gp_mask;
        ctx.gp_selectors[i] = raw[8 + i] & !m.evtsel_reserved();
    }
    for i in 0..usize::from(m.num_fixed) {
        ctx.fixed_counters[i] = raw[16 + i] & m.fixed_mask;
    }
    ctx.fixed_ctrl = raw[20] & !m.fixed_ctrl_reserved();
    if m.has_global {
        ctx.global_ctrl = raw[21] & !m.global_ctrl_reserved();
        ctx.global_status = raw[21].rotate_left(17) & m.status_set_writable();
    }
    ctx
}

fn is_reserved(r: &Result<WriteEffect, MsrFault>) -> bool {
    matches!(r, Err(MsrFault::Reserved { .. }))
}

proptest! {
    #[test]
    fn save_restore_is_identity(cfg in configs(), raw in any::<[u64; 22]>()) {
        let mut s = PmuState::new(&cfg);
        let ctx = fit(&s, raw);
        prop_assert!(s.restore(&ctx).is_ok());
        prop_assert_eq!(s.save(), ctx);
        let mut other = PmuState::new(&cfg);
        prop_assert!(other.restore(&s.save()).is_ok());
        for msr in vpmu::model::present_msrs(&cfg) {
            prop_assert_eq!(other.read(msr), s.read(msr));
        }
    }

    #[test]
    fn write_then_read(cfg in configs(), idx in 0u8..8, value in any::<u64>()) {
        let mut s = PmuState::new(&cfg);
        let m = *s.model();
        let (sel, ctr) = match cfg.vendor() {
            Some(vpmu::Vendor::Intel) => (0x186 + u32::from(idx), 0xc1 + u32::from(idx)),
            _ if m.amd_core_ext || idx >= 4 => {
                (0xc001_0200 + 2 * u32::from(idx), 0xc001_0201 + 2 * u32::from(idx))
            }
            _ => (0xc001_0000 + u32::from(idx), 0xc001_0004 + u32::from(idx)),
        };
        if idx >= m.num_gp {
            prop_assert_eq!(s.write(sel, value), Err(MsrFault::NotPresent { msr: sel }));
            prop_assert_eq!(s.read(ctr), Err(MsrFault::NotPresent { msr: ctr }));
            return Ok(());
        }
        // Selector: stored verbatim iff no reserved bit is set, else #GP and unchanged.
        let r = s.write(sel, value);
        if value & m.evtsel_reserved() == 0 {
            prop_assert!(r.is_ok());
            prop_assert_eq!(s.read(sel), Ok(value));
        } else {
            prop_assert!(is_reserved(&r));
            prop_assert_eq!(s.read(sel), Ok(0));
        }
        // Counter: width truncation (Intel legacy alias: sign-extended low 32 bits).
        s.write(ctr, value).unwrap();
        let expect = match cfg.vendor() {
            Some(vpmu::Vendor::Intel) => ((value & 0xffff_ffff) as u32 as i32 as i64 as u64) & m.gp_mask,
            _ => value & m.gp_mask,
        };
        prop_assert_eq!(s.read(ctr), Ok(expect));
        prop_assert!(s.read(ctr).unwrap() <= m.gp_mask);
    }

    #[test]
    fn add_count_is_modular(start in any::<u64>(), deltas in proptest::collection::vec(0u64..1 << 50, 1..8)) {
        let mut s = PmuState::new(&spr_like());
        s.write(0x186, EN | OS_USR | INT | 0x3c).unwrap();
        s.write(0x4c1, start & MASK48).unwrap();
        let mut total: u128 = u128::from(start & MASK48);
        let mut overflowed = false;
        for d in deltas {
            let until = s.counts_until_overflow(CounterId::Gp(0)).unwrap();
            let r = s.add_count(CounterId::Gp(0), d);
            prop_assert_eq!(r.is_some(), d >= until);
            overflowed |= r.is_some();
            total += u128::from(d);
        }
        prop_assert_eq!(u128::from(s.read(0xc1).unwrap()), total % (1u128 << 48));
        prop_assert_eq!(s.read(0x38e).unwrap() & 1 == 1, overflowed);
    }

    #[test]
    fn status_set_clear_algebra(ops in proptest::collection::vec((any::<bool>(), any::<u64>()), 0..16)) {
        // STATUS_SET ORs in, STATUS_RESET clears: status = fold over ops; bits outside the
        // writable masks #GP and change nothing.
        let mut s = PmuState::new(&spr_like());
        let m = *s.model();
        let mut model = 0u64;
        for (set, v) in ops {
            let (msr, allowed) = if set { (0x391, m.status_set_writable()) } else { (0x390, m.status_reset_writable()) };
            let r = s.write(msr, v);
            if v & !allowed != 0 {
                prop_assert!(is_reserved(&r));
            } else {
                prop_assert!(r.is_ok());
                if set { model |= v } else { model &= !v }
            }
            prop_assert_eq!(s.read(0x38e), Ok(model));
        }
    }
}
