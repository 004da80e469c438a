//! The in-kernel-mode audit (`--pmu-audit` with `emulated`/`passthrough`) against this
//! host's real KVM: vpmu's decision code vets and judges each selector write, KVM gets it
//! as a host-initiated KVM_SET_MSRS, and what KVM refuses becomes the guest's #GP. (The
//! end-to-end run needs a host PMU; this checks the decision + I/O path on any KVM.)

use std::sync::Arc;

use kvm_ioctls::Kvm;
use vmm::pmu::audit::AuditLog;
use vmm::pmu::inkernel_audit::InKernelAudit;
use vmm::pmu::VcpuPmu;
use vpmu::policy::Policy;
use vpmu::{PmuConfig, Vendor};

#[test]
fn in_kernel_audit_vets_audits_and_lets_kvm_decide() {
    let Ok(kvm) = Kvm::new() else {
        println!("SKIPPED in_kernel_audit_vets_audits_and_lets_kvm_decide: no /dev/kvm");
        return;
    };
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
    let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    let layout = vpmu::cpuid::default_emulated_layout(Vendor::Intel);
    let PmuConfig::Intel(intel) = &layout else {
        unreachable!()
    };
    let policy = Policy::from_toml(
        "action = \"allow\"\nfixed_counters = [0]\n[[event]]\nname = \"instructions\"\n",
    )
    .expect("policy")
    .compile(Vendor::Intel, intel.num_fixed)
    .expect("compile");
    let path = std::env::temp_dir().join(format!("vpmu-ik-audit-{}.jsonl", std::process::id()));
    let log = Arc::new(AuditLog::create(&path).expect("audit file"));
    use std::os::unix::io::AsRawFd;
    let mut a = InKernelAudit::new(0, vcpu.as_raw_fd(), &layout, Arc::new(policy), log.clone());

    // Allowed: instructions (0xc0) with EN|USR|OS into IA32_PERFEVTSEL0. KVM takes the P6
    // selector from the host whether or not this KVM has a vPMU.
    assert!(a.wrmsr(0x186, 0x43_00c0));
    // Denied by the policy: cycles (0x3c). Still accepted (reads back as written); KVM's
    // event filter is what keeps it from counting.
    assert!(a.wrmsr(0x186, 0x43_003c));
    // Reserved bits are KVM's to judge, so the audit never changes what the guest sees:
    // KVM's vPMU refuses bit 40 (#GP), while a KVM without a vPMU ignores any P6 selector
    // write and accepts it; either way the VMM does what KVM did.
    let enable_pmu = std::fs::read_to_string("/sys/module/kvm/parameters/enable_pmu")
        .map(|s| s.trim() == "Y")
        .unwrap_or(false);
    assert_eq!(a.wrmsr(0x186, 1 << 40 | 0x43_00c0), !enable_pmu);
    // FIXED_CTR_CTRL: fixed 0 allowed, fixed 1 denied by `fixed_counters = [0]`. KVM
    // refuses the MSR where it has no vPMU (this host: kvm.enable_pmu=N), and the guest
    // gets that #GP.
    let fixed_ok = a.wrmsr(0x38d, 0x33);
    if !enable_pmu {
        assert!(!fixed_ok, "KVM without a vPMU must refuse FIXED_CTR_CTRL");
    }
    // Not a selector: #GP.
    assert!(!a.wrmsr(0xc1, 5));
    log.flush().expect("flush");
    let text = std::fs::read_to_string(&path).expect("audit log");
    let recs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert!(
        recs.iter()
            .any(|r| r["verdict"] == "denied" && r["event"] == "0x3c"),
        "{text}"
    );
    assert!(
        !recs
            .iter()
            .any(|r| r["verdict"] == "denied" && r["event"] == "0xc0"),
        "{text}"
    );
    assert!(
        recs.iter().filter(|r| r["verdict"] == "gp").count() >= 2,
        "{text}"
    );
    let vmm::pmu::PmuSummary::Audit { programmed, .. } = a.summary() else {
        panic!("the in-kernel audit reports as an audit");
    };
    let count = |event: &str, verdict: &str| {
        programmed
            .iter()
            .find(|p| p.event == event && p.verdict == verdict)
            .map(|p| p.count)
    };
    let instr = if enable_pmu { 1 } else { 2 };
    assert_eq!(
        count("0xc0/0x00", "counting"),
        Some(instr),
        "{programmed:?}"
    );
    assert_eq!(count("0x3c/0x00", "denied"), Some(1), "{programmed:?}");
    assert!(
        programmed
            .iter()
            .any(|p| p.event == "0xc0/0x00" && p.name == Some("instructions")),
        "{programmed:?}"
    );
    let _ = std::fs::remove_file(&path);
}
