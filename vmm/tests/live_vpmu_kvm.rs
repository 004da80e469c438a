//! `check_live_vpmu` against the real KVM of this host: it must say "no vPMU" where KVM
//! gives the vCPU none (kvm.enable_pmu=N, as on the PVM hosts here), and pass where KVM
//! has a vPMU for the host's layout. The check it replaced read a P6/K7 selector, which KVM
//! answers with 0 whether or not the vCPU has a PMU, so it could never fail.

use kvm_ioctls::Kvm;
use vmm::pmu::setup::check_live_vpmu;
use vpmu::discovery::HostPmu;
use vpmu::PmuConfig;

fn skip(why: &str) {
    println!("SKIPPED check_live_vpmu_matches_kvm: {why}");
    eprintln!("SKIPPED check_live_vpmu_matches_kvm: {why}");
}

#[test]
fn check_live_vpmu_matches_kvm() {
    let Ok(kvm) = Kvm::new() else {
        skip("/dev/kvm cannot be opened");
        return;
    };
    let host = HostPmu::probe_system();
    let Some(vendor) = host.vendor else {
        skip("unknown host CPU vendor");
        return;
    };
    let enable_pmu = std::fs::read_to_string("/sys/module/kvm/parameters/enable_pmu")
        .map(|s| s.trim() == "Y")
        .unwrap_or(false);
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    // Without an in-kernel irqchip KVM disables the vPMU silently.
    vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
    let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    // The layout a guest would ask for: the host's, or the default of its vendor.
    let layout = match &host.layout {
        PmuConfig::None => vpmu::cpuid::default_emulated_layout(vendor),
        l => l.clone(),
    };
    let mut cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .expect("KVM_GET_SUPPORTED_CPUID");
    vpmu::cpuid::apply_cpuid(&layout, &mut cpuid).expect("CPUID for the layout");
    vcpu.set_cpuid2(&cpuid).expect("KVM_SET_CPUID2");
    let verdict = check_live_vpmu(&vcpu, &layout).expect("MSR ioctls");
    let has_vpmu = enable_pmu && host.layout != PmuConfig::None;
    println!(
        "enable_pmu={enable_pmu} host layout {:?}: {verdict:?}",
        host.layout
    );
    if has_vpmu {
        assert_eq!(verdict, Ok(()), "KVM has a vPMU for {layout:?}");
    } else {
        let why = verdict.expect_err("KVM gives this vCPU no PMU: the check must say so");
        assert!(
            why.contains("no PMU") || why.contains("no version-2 PMU"),
            "{why}"
        );
    }
}
