//! Start-up: `vmm::run` of a guest whose first instructions write 0 to the debug-exit
//! port, under `--pmu off` (MSR filter on) and `--pmu userspace` (host probe, policy,
//! MSR filter). Criterion's figure is the time from VMM start to vCPU 0's first KVM_RUN
//! (`RunReport::start_to_first_entry_ns`); after each group the bench prints the median
//! of every start-up phase (`RunReport::startup`) over all the runs it made.
//!
//! `cargo bench -p vmm --bench startup` (needs /dev/kvm; without it, prints why and
//! measures nothing). docs/BENCHMARKS.md has the numbers and the host.

use std::cell::RefCell;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use vmm::vm::StartupPhases;
use vmm::{Console, KernelImage, VmConfig};
use vpmu::discovery::PmuMode;

#[path = "../../tests/common/elf.rs"]
mod elf;
use elf::elf64;

fn config(kernel: &'static [u8], mode: PmuMode) -> VmConfig {
    let mut c = VmConfig::new(KernelImage::Builtin {
        name: "exit0".into(),
        bytes: kernel,
    });
    c.console = Console::Null;
    c.memory = 128 << 20;
    c.pmu.mode = mode;
    c
}

fn median(mut v: Vec<u64>) -> f64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0) as f64 / 1e6
}

/// Prints the median of each phase over `runs`.
fn print_phases(what: &str, runs: &[StartupPhases]) {
    let col = |f: fn(&StartupPhases) -> u64| median(runs.iter().map(f).collect());
    println!(
        "{what}: {} runs, median ms: open_kvm {:.3}, supported_cpuid {:.3}, create_vm {:.3}, \
         irqchip {:.3}, pmu_plan {:.3}, memory {:.3}, load_kernel {:.3}, devices {:.3}, \
         vcpu_create {:.3}, vcpu_spawn {:.3}, helpers: memory_register {:.3}, msr_filter {:.3} \
         (main thread waited {:.3}), \
         gate_to_first_run {:.3}, \
         first_kvm_run {:.3}",
        runs.len(),
        col(|p| p.open_kvm_ns),
        col(|p| p.supported_cpuid_ns),
        col(|p| p.create_vm_ns),
        col(|p| p.irqchip_ns),
        col(|p| p.pmu_plan_ns),
        col(|p| p.memory_ns),
        col(|p| p.load_kernel_ns),
        col(|p| p.devices_ns),
        col(|p| p.vcpu_create_ns),
        col(|p| p.vcpu_spawn_ns),
        col(|p| p.memory_register_ns),
        col(|p| p.msr_filter_ns),
        col(|p| p.helper_wait_ns),
        col(|p| p.gate_to_first_run_ns),
        col(|p| p.first_kvm_run_ns),
    );
}

fn bench(c: &mut Criterion) {
    if let Err(e) = kvm_ioctls::Kvm::new() {
        println!("SKIPPED startup bench: /dev/kvm unusable: {e}");
        return;
    }
    // mov al, 0; out 0xf4, al; jmp $
    let kernel: &'static [u8] =
        Box::leak(elf64(&[0xb0, 0x00, 0xe6, 0xf4, 0xeb, 0xfe], 0x20_0000).into_boxed_slice());
    let mut g = c.benchmark_group("startup");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    for mode in [PmuMode::Off, PmuMode::Userspace] {
        let phases = RefCell::new(Vec::new());
        g.bench_function(format!("start to first KVM_RUN, --pmu {mode}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let r = vmm::run(config(kernel, mode)).expect("the exit guest runs");
                    assert_eq!(r.outcome, vmm::Outcome::DebugExit { value: 0 });
                    total += Duration::from_nanos(r.start_to_first_entry_ns);
                    phases.borrow_mut().push(r.startup);
                }
                total
            })
        });
        print_phases(&format!("--pmu {mode}"), &phases.borrow());
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
