//! One guest event-selector write decision (vet + decide) under the default policy and
//! under a full 300-entry policy. Goal: < 50 ns per decision.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use vpmu::policy::{CompiledPolicy, Decision, DenyReason, EventRule, MaskedRule, Policy};
use vpmu::selector::bits;
use vpmu::Vendor;

const ENABLE: u64 = bits::EN | bits::OS | bits::USR;

/// 300 entries: 250 plain (event, umask) pairs and 50 masked rules, several per event.
fn big_policy(vendor: Vendor) -> CompiledPolicy {
    let mut p = Policy::default();
    for i in 0..250u16 {
        let umask = u8::from(i >= 200) * 0x11;
        p.events.push(EventRule::raw(i % 200, umask));
    }
    for i in 0..50u8 {
        p.masked.push(MaskedRule {
            event: 0x20 + u16::from(i % 10),
            umask_match: i & 0xf0,
            umask_mask: 0xf0,
            exclude: i % 3 == 0,
            vendor: None,
            label: None,
            line: None,
        });
    }
    let c = p.compile(vendor, 3).expect("300-entry policy compiles");
    assert_eq!(c.kvm_filter().events.len(), 300);
    c
}

fn bench(c: &mut Criterion) {
    let default = Policy::default_architectural()
        .compile(Vendor::Intel, 3)
        .expect("default compiles");
    let big_intel = big_policy(Vendor::Intel);
    let big_amd = big_policy(Vendor::Amd);

    let allowed = 0xc0 | ENABLE; // instructions
    let denied = 0x01d1 | ENABLE; // not listed
    let big_allowed = 0x1110 | ENABLE; // plain entry 0x10/0x11
    let big_excluded = 0x2025 | ENABLE; // masked include and exclude on 0x25/0x20
    let amd_denied = (0x3 << 32) | 0x55 | ENABLE; // event 0x355: no entry
                                                  // The cases measure what their names say.
    let is = |c: &CompiledPolicy, s: u64| c.check(s).map(|r| r.decision);
    assert_eq!(is(&default, allowed), Ok(Decision::Allowed));
    assert_eq!(
        is(&default, denied),
        Ok(Decision::Denied(DenyReason::NotInAllowlist))
    );
    assert_eq!(is(&big_intel, big_allowed), Ok(Decision::Allowed));
    assert!(matches!(
        is(&big_intel, big_excluded),
        Ok(Decision::Denied(DenyReason::Excluded(_)))
    ));
    assert_eq!(
        is(&big_amd, amd_denied),
        Ok(Decision::Denied(DenyReason::NotInAllowlist))
    );
    let mut g = c.benchmark_group("policy_check");
    g.bench_function("default/allowed", |b| {
        b.iter(|| default.check(black_box(allowed)))
    });
    g.bench_function("default/denied", |b| {
        b.iter(|| default.check(black_box(denied)))
    });
    g.bench_function("300_entries_intel/allowed", |b| {
        b.iter(|| big_intel.check(black_box(big_allowed)))
    });
    g.bench_function("300_entries_intel/excluded", |b| {
        b.iter(|| big_intel.check(black_box(big_excluded)))
    });
    g.bench_function("300_entries_amd/denied", |b| {
        b.iter(|| big_amd.check(black_box(amd_denied)))
    });
    // A sweep of selectors, to defeat branch prediction on one value.
    let sweep: Vec<u64> = (0..1024u64)
        .map(|i| ((i * 37) & 0xff) | (((i * 91) & 0xff) << 8) | ENABLE)
        .collect();
    g.bench_function("300_entries_intel/sweep_1024", |b| {
        b.iter(|| {
            let mut n = 0u32;
            for &s in &sweep {
                if let Ok(r) = big_intel.check(black_box(s)) {
                    n += r.decision.is_allowed() as u32;
                }
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
