//! The userspace vPMU's per-KVM_RUN context switch (`before_run` + `after_run`), the cost
//! the run loop pays around every KVM_RUN, with 0 and 4 running counters (Intel v5 layout,
//! clock-model feed, steady state: no reprogramming, no timer re-arm).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use vmm::pmu::userspace::{Source, UserspacePmu};
use vmm::pmu::VcpuPmu;
use vpmu::policy::Policy;
use vpmu::{IntelPmu, PmuConfig, Vendor};

fn layout() -> PmuConfig {
    PmuConfig::Intel(IntelPmu {
        version: 5,
        num_gp: 8,
        gp_width: 48,
        num_fixed: 4,
        fixed_width: 48,
        events_unavailable: 0,
        events_len: 7,
        perf_capabilities: None,
    })
}

fn pmu(running: u32) -> UserspacePmu {
    let policy = Policy::default_architectural()
        .compile(Vendor::Intel, 4)
        .expect("default policy compiles");
    let mut p = UserspacePmu::new(
        0,
        Source::Clock,
        &layout(),
        Arc::new(policy),
        None,
        2_500_000,
    );
    for i in 0..running {
        // Core cycles, USR+OS, EN; counting but no PMI, so the steady state arms no timer.
        assert!(p.wrmsr(0x186 + i, 0x3c | (1 << 16) | (1 << 17) | (1 << 22)));
    }
    assert!(p.wrmsr(0x38f, (1u64 << running) - 1)); // GLOBAL_CTRL
    p.before_run();
    p
}

fn bench(c: &mut Criterion) {
    for running in [0u32, 4] {
        let mut p = pmu(running);
        c.bench_function(
            &format!("context switch per KVM_RUN, {running} running counters"),
            |b| {
                b.iter(|| {
                    p.before_run();
                    black_box(p.after_run(black_box(1000), false));
                })
            },
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
