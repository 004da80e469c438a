//! Real discovery on the machine running the tests.
//!
//! The development/CI machines (see /work/shared/REFERENCE.md §1) are VMs without a
//! hardware PMU but with a working /dev/kvm: discovery must say so, and must still offer
//! the userspace mode. On a machine with a hardware PMU the test checks that discovery is
//! self-consistent instead.

use vpmu::discovery::{Availability, CounterSource, HostPmu, PmuMode, SystemHost};
use vpmu::PmuConfig;

#[test]
fn real_host_discovery() {
    if !std::path::Path::new("/dev/kvm").exists() {
        println!("SKIP real_host_discovery: /dev/kvm is absent on this machine");
        return;
    }
    let src = SystemHost::new();
    if !src.kvm_usable() {
        println!("SKIP real_host_discovery: /dev/kvm exists but cannot be opened");
        return;
    }
    let host = HostPmu::probe(&src);
    let report = host.report();
    println!("{report}");
    assert!(host.kvm_error.is_none());
    assert!(
        host.vendor.is_some(),
        "KVM_GET_SUPPORTED_CPUID has a vendor string"
    );

    // Independent evidence of "no hardware PMU": the perf core PMU is missing from sysfs.
    let sysfs_has_core_pmu = ["cpu", "cpu_core", "cpu_atom"].iter().any(|n| {
        std::path::Path::new("/sys/bus/event_source/devices")
            .join(n)
            .exists()
    });
    if !sysfs_has_core_pmu {
        assert!(
            !host.hardware_pmu(),
            "no perf core PMU in sysfs, yet discovery claims a PMU"
        );
        assert_eq!(host.layout, PmuConfig::None);
        assert!(report.contains("hardware PMU:           NO"), "{report}");
        for mode in [PmuMode::Emulated, PmuMode::Passthrough] {
            match host.availability(mode) {
                Availability::Unavailable { reason, remedy } => {
                    assert!(reason.contains("no hardware PMU"), "{mode}: {reason}");
                    assert!(!remedy.is_empty());
                }
                Availability::Available => panic!("{mode} available without a hardware PMU"),
            }
        }
        assert_eq!(host.userspace_counter_source(), CounterSource::TscClock);
    } else {
        println!("this machine has a perf core PMU; checking consistency only");
        assert!(host.hardware_pmu());
    }
    // The machines this project runs on support userspace MSR exits and the MSR filter.
    assert!(host.caps.user_space_msr && host.caps.msr_filter, "{report}");
    assert_eq!(
        host.availability(PmuMode::Userspace),
        Availability::Available
    );
    assert_eq!(host.availability(PmuMode::Off), Availability::Available);
    let json = serde_json::to_value(host.probe_report()).expect("serializable");
    assert_eq!(json["modes"][3]["mode"], "userspace");
    assert_eq!(json["modes"][3]["availability"]["status"], "available");
}
