//! Host capability discovery on aarch64 hosts: the parallel of the x86 `discovery` module,
//! with the same names for what the VMM and the CLI use ([`PmuMode`], [`HostPmu`],
//! [`Availability`], `probe_system`, `availability`, `report`, `probe_report`).
//!
//! Modes on arm64:
//! - `off`: always (the vCPUs lack KVM_ARM_VCPU_PMU_V3; PMU registers UNDEF in the guest).
//! - `emulated`: KVM's perf-based PMUv3 (KVM_ARM_VCPU_PMU_V3): needs KVM_CAP_ARM_PMU_V3 and
//!   a host PMUv3 perf PMU (`/sys/bus/event_source/devices/armv8_*`, what KVM binds to:
//!   pmu-emul.c `kvm_host_pmu_init` registers every `arm_pmu` perf creates).
//! - `passthrough`: refused: mainline KVM has no arm64 PMU passthrough (every PMU sysreg
//!   traps, debug.c `kvm_arm_setup_mdcr_el2` sets MDCR_EL2.TPM/TPMCR); the out-of-tree
//!   "partitioned PMU" series (FEAT_HPMN0 / MDCR_EL2.HPMN) would be what it needs.
//! - `userspace`: refused: arm64 KVM handles PMU sysreg traps in the kernel (sys_regs.c
//!   `access_pm*`); there is no exit that hands them to the VMM (unlike x86's MSR
//!   filter / KVM_EXIT_X86_RDMSR), so a VMM cannot be the PMU.

use std::fmt::Write as _;

use serde::Serialize;

pub use crate::mode::{Availability, ParseModeError, PmuMode};

/// A host perf PMU found in sysfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PerfPmu {
    /// Directory name under /sys/bus/event_source/devices.
    pub name: String,
    /// Its perf `type` (what KVM_ARM_VCPU_PMU_V3_SET_PMU takes).
    pub pmu_type: u32,
    /// The CPUs it covers (its `cpus` file; empty when absent).
    pub cpus: Vec<usize>,
}

/// Everything discovery learned about the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostPmu {
    /// Host architecture.
    pub arch: &'static str,
    /// Why KVM is unusable, if it is.
    pub kvm_error: Option<String>,
    /// KVM_CAP_ARM_PMU_V3.
    pub kvm_pmu_v3: bool,
    /// KVM_CAP_ARM_PSCI_0_2.
    pub kvm_psci_0_2: bool,
    /// Host PMUv3 perf PMUs (`armv8_pmuv3*`, and other `armv8_*` core PMUs).
    pub perf_pmus: Vec<PerfPmu>,
}

/// `vpmu-vmm probe --json`: the host facts plus each mode's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    /// Host facts.
    pub host: HostPmu,
    /// Each mode.
    pub modes: Vec<ModeReport>,
    /// Whether the host has a hardware PMU at all.
    pub hardware_pmu: bool,
}

/// One mode's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    /// The mode.
    pub mode: PmuMode,
    /// Available or not, and why.
    pub availability: Availability,
    /// Extra information.
    pub note: Option<String>,
}

/// Core perf PMUs in `dir` (/sys/bus/event_source/devices): names starting with `armv8`.
pub fn perf_pmus_in(dir: &std::path::Path) -> Vec<PerfPmu> {
    let mut v: Vec<PerfPmu> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("armv8") {
                return None;
            }
            let t = std::fs::read_to_string(e.path().join("type")).ok()?;
            let cpus = std::fs::read_to_string(e.path().join("cpus"))
                .ok()
                .and_then(|c| crate::arm64::cpulist::parse(&c))
                .unwrap_or_default();
            Some(PerfPmu {
                name,
                pmu_type: t.trim().parse().ok()?,
                cpus,
            })
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

impl HostPmu {
    /// Probes this host: /dev/kvm and its arm64 capabilities, sysfs perf PMUs. Never fails.
    pub fn probe_system() -> HostPmu {
        let (kvm_error, kvm_pmu_v3, kvm_psci_0_2) = match kvm_ioctls::Kvm::new() {
            Ok(kvm) => (
                None,
                kvm.check_extension(kvm_ioctls::Cap::ArmPmuV3),
                kvm.check_extension(kvm_ioctls::Cap::ArmPsci02),
            ),
            Err(e) => (Some(e.to_string()), false, false),
        };
        HostPmu {
            arch: "aarch64",
            kvm_error,
            kvm_pmu_v3,
            kvm_psci_0_2,
            perf_pmus: perf_pmus_in(std::path::Path::new("/sys/bus/event_source/devices")),
        }
    }

    /// Whether the host has a hardware PMU perf can use.
    pub fn hardware_pmu(&self) -> bool {
        !self.perf_pmus.is_empty()
    }

    /// Can `mode` run here?
    pub fn availability(&self, mode: PmuMode) -> Availability {
        match mode {
            PmuMode::Off => Availability::Available,
            PmuMode::Emulated => {
                if let Some(e) = &self.kvm_error {
                    Availability::Unavailable {
                        reason: format!("KVM is unusable: {e}"),
                        remedy: "load KVM and give access to /dev/kvm".into(),
                    }
                } else if !self.kvm_pmu_v3 {
                    Availability::Unavailable {
                        reason: "KVM lacks KVM_CAP_ARM_PMU_V3 (no PMUv3 for guests)".into(),
                        remedy: "a host kernel with CONFIG_HW_PERF_EVENTS and a PMUv3 KVM can use"
                            .into(),
                    }
                } else if self.perf_pmus.is_empty() {
                    Availability::Unavailable {
                        reason:
                            "no host PMUv3 perf PMU (no armv8_* in /sys/bus/event_source/devices)"
                                .into(),
                        remedy:
                            "a host whose kernel drives the CPU PMU (CONFIG_ARM_PMU, a pmu node \
                                 or ACPI PMU table)"
                                .into(),
                    }
                } else {
                    Availability::Available
                }
            }
            PmuMode::Passthrough => Availability::Unavailable {
                reason: "mainline arm64 KVM has no PMU passthrough: every PMU register traps \
                         (MDCR_EL2.TPM, debug.c kvm_arm_setup_mdcr_el2) and is emulated on perf"
                    .into(),
                remedy: "it would need KVM's partitioned-PMU support (FEAT_HPMN0, MDCR_EL2.HPMN; \
                         not in mainline); use --pmu emulated"
                    .into(),
            },
            PmuMode::Userspace => Availability::Unavailable {
                reason: "arm64 KVM emulates PMU system registers in the kernel (sys_regs.c \
                         access_pm*) and has no exit that hands those traps to the VMM"
                    .into(),
                remedy: "use --pmu emulated (KVM's vPMU with the policy's event filter)".into(),
            },
        }
    }

    /// The host facts plus each mode's verdict.
    pub fn probe_report(&self) -> ProbeReport {
        ProbeReport {
            host: self.clone(),
            modes: PmuMode::ALL
                .into_iter()
                .map(|mode| ModeReport {
                    mode,
                    availability: self.availability(mode),
                    note: None,
                })
                .collect(),
            hardware_pmu: self.hardware_pmu(),
        }
    }

    /// Human-readable report for `vpmu-vmm probe`.
    pub fn report(&self) -> String {
        let mut s = String::new();
        let yn = |b: bool| if b { "yes" } else { "no" };
        let _ = writeln!(s, "host: {}", self.arch);
        match &self.kvm_error {
            Some(e) => {
                let _ = writeln!(s, "KVM: unusable: {e}");
            }
            None => {
                let _ = writeln!(
                    s,
                    "KVM: usable; KVM_CAP_ARM_PMU_V3 {}, KVM_CAP_ARM_PSCI_0_2 {}",
                    yn(self.kvm_pmu_v3),
                    yn(self.kvm_psci_0_2)
                );
            }
        }
        if self.perf_pmus.is_empty() {
            let _ = writeln!(
                s,
                "host PMU: none (no armv8_* PMU in /sys/bus/event_source/devices)"
            );
        }
        for p in &self.perf_pmus {
            let _ = writeln!(
                s,
                "host PMU: {} (perf type {}, {} CPUs)",
                p.name,
                p.pmu_type,
                p.cpus.len()
            );
        }
        for mode in PmuMode::ALL {
            match self.availability(mode) {
                Availability::Available => {
                    let _ = writeln!(s, "--pmu {mode}: available");
                }
                Availability::Unavailable { reason, remedy } => {
                    let _ = writeln!(s, "--pmu {mode}: unavailable: {reason} ({remedy})");
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        let mut h = HostPmu {
            arch: "aarch64",
            kvm_error: None,
            kvm_pmu_v3: true,
            kvm_psci_0_2: true,
            perf_pmus: vec![],
        };
        assert!(h.availability(PmuMode::Off).is_available());
        assert!(!h.availability(PmuMode::Emulated).is_available());
        assert!(h
            .report()
            .contains("--pmu emulated: unavailable: no host PMUv3"));
        h.perf_pmus.push(PerfPmu {
            name: "armv8_pmuv3_0".into(),
            pmu_type: 8,
            cpus: vec![0, 1],
        });
        assert!(h.availability(PmuMode::Emulated).is_available());
        h.kvm_pmu_v3 = false;
        assert!(h.report().contains("KVM_CAP_ARM_PMU_V3"));
        assert!(!h.availability(PmuMode::Passthrough).is_available());
        assert!(!h.availability(PmuMode::Userspace).is_available());
        assert_eq!("off".parse::<PmuMode>(), Ok(PmuMode::Off));
    }
}
