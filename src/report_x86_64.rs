//! The run report for humans (x86_64): the `--stats` text and the end-of-run lines.

use std::io::Write;
use std::process::ExitCode;

use vmm::pmu::PmuSummary;
use vmm::RunReport;

/// `0x3c/0x00 cycles counting x4, ...`
fn programmed_text(items: &[vmm::pmu::audit::Programmed]) -> String {
    items
        .iter()
        .map(|p| {
            let name = p.name.map(|n| format!(" {n}")).unwrap_or_default();
            format!("{}{name} {} x{}", p.event, p.verdict, p.count)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One vCPU's vPMU summary for humans.
fn pmu_summary_line(p: &PmuSummary) -> String {
    let (vcpu, mut line, programmed) = match p {
        PmuSummary::Userspace {
            vcpu,
            stats: s,
            programmed,
            ..
        } => (
            vcpu,
            format!(
                "userspace vPMU: {} MSR reads, {} writes, {} #GP, {} denied, {} unsupported, {} overflows, {} PMIs",
                s.reads, s.writes, s.gp, s.denied, s.unsupported, s.overflows, s.pmis
            ),
            programmed,
        ),
        PmuSummary::Audit { vcpu, audit: s, programmed } => (
            vcpu,
            format!(
                "pmu audit: {} selector writes ({} ns each in the VMM), {} denied, {} #GP",
                s.writes,
                s.handler_ns.checked_div(s.writes).unwrap_or(0),
                s.denied,
                s.gp
            ),
            programmed,
        ),
    };
    if !programmed.is_empty() {
        line.push_str(&format!("; programmed: {}", programmed_text(programmed)));
    }
    format!("vcpu{vcpu}: {line}")
}

/// The `--stats` text.
fn stats_text(r: &RunReport) -> String {
    let ms = |ns: u64| ns as f64 / 1e6;
    let mut s = format!(
        "vpmu-vmm: {} | {} | start to first guest entry {:.2} ms | wall {:.1} ms | stray port accesses {}\n",
        r.pmu_setup,
        r.outcome,
        ms(r.start_to_first_entry_ns),
        ms(r.wall_ns),
        r.unhandled_pio
    );
    let p = &r.startup;
    s.push_str(&format!(
        "startup (ms): kvm {:.2}, cpuid {:.2}, vm {:.2}, irqchip {:.2}, pmu plan {:.2}, memory {:.2}, kernel {:.2}, devices {:.2}, vcpus {:.2}, threads {:.2}; helpers: memory slots {:.2}, msr filter {:.2} (waited {:.2}); to first KVM_RUN {:.2}\n",
        ms(p.open_kvm_ns), ms(p.supported_cpuid_ns), ms(p.create_vm_ns), ms(p.irqchip_ns),
        ms(p.pmu_plan_ns), ms(p.memory_ns), ms(p.load_kernel_ns), ms(p.devices_ns),
        ms(p.vcpu_create_ns), ms(p.vcpu_spawn_ns), ms(p.memory_register_ns), ms(p.msr_filter_ns),
        ms(p.helper_wait_ns), ms(p.first_kvm_run_ns)
    ));
    for (i, v) in r.vcpus.iter().enumerate() {
        s.push_str(&format!(
            "vcpu{i}: exits {} (io in {}, io out {}, mmio {}, rdmsr {}, wrmsr {}, #GP {}, kicks {}), pmis {}\n",
            v.exits, v.io_in, v.io_out, v.mmio, v.msr_read, v.msr_write, v.msr_gp, v.interrupted, v.pmis
        ));
    }
    for p in &r.pmu {
        s.push_str(&pmu_summary_line(p));
        s.push('\n');
    }
    for (i, d) in r.disks.iter().enumerate() {
        s.push_str(&format!(
            "disk{i}: {} sectors{} | reads {} ({} bytes), writes {} ({} bytes), flushes {}, errors {}, dropped chains {}\n",
            d.sectors,
            if d.read_only { " ro" } else { "" },
            d.reads, d.bytes_read, d.writes, d.bytes_written, d.flushes, d.errors, d.dropped
        ));
    }
    s.trim_end().to_string()
}

pub fn finish(report: RunReport, stats: bool, status: i32) -> ExitCode {
    let _ = std::io::stdout().flush();
    if stats {
        eprintln!("{}", stats_text(&report));
    } else {
        // The userspace vPMU's one-line summary per vCPU (denied/#GP/unsupported counts).
        for p in &report.pmu {
            eprintln!("vpmu-vmm: {}", pmu_summary_line(p));
        }
    }
    if !report.outcome.is_clean() && !matches!(report.outcome, vmm::Outcome::DebugExit { .. }) {
        eprintln!("vpmu-vmm: {}", report.outcome);
        if let Some(hint) = vmm::outcome::hint(&report.outcome, report.linux_guest) {
            eprintln!("vpmu-vmm: {hint}");
        }
    }
    ExitCode::from(status.clamp(0, 255) as u8)
}
