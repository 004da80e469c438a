//! PmuState hot paths: a counter and a selector read/write (one MSR exit's worth of work)
//! and a full-context save/restore. Goal: tens of nanoseconds.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use vpmu::model::intel;
use vpmu::state::{CounterId, PmuState};
use vpmu::{IntelPmu, PmuConfig};

fn spr_like() -> PmuConfig {
    PmuConfig::Intel(IntelPmu {
        version: 5,
        num_gp: 8,
        gp_width: 48,
        num_fixed: 4,
        fixed_width: 48,
        events_unavailable: 0,
        events_len: 8,
        perf_capabilities: Some(intel::PERF_CAP_FW_WRITES),
    })
}

fn bench(c: &mut Criterion) {
    let mut s = PmuState::new(&spr_like());
    s.write(0x186, (1 << 22) | (3 << 16) | 0xc0).unwrap();
    c.bench_function("read IA32_PMC3", |b| {
        b.iter(|| black_box(&s).read(black_box(0xc4)))
    });
    c.bench_function("write IA32_A_PMC3", |b| {
        b.iter(|| s.write(black_box(0x4c4), black_box(0x1234_5678)))
    });
    c.bench_function("write IA32_PERFEVTSEL2", |b| {
        let mut v = 0u64;
        b.iter(|| {
            v ^= 1; // alternate so the write is never a no-op
            s.write(
                black_box(0x188),
                black_box((1 << 22) | (3 << 16) | 0x3c | (v << 8)),
            )
        })
    });
    c.bench_function("add_count GP0", |b| {
        b.iter(|| s.add_count(black_box(CounterId::Gp(0)), black_box(1000)))
    });
    let ctx = s.save();
    c.bench_function("save full context", |b| b.iter(|| black_box(&s).save()));
    c.bench_function("restore full context", |b| {
        b.iter(|| s.restore(black_box(&ctx)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
