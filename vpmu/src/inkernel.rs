//! What a VMM writes and checks so that KVM's in-kernel x86 vPMU (`emulated`, `passthrough`)
//! gives the guest exactly the layout it asked for. Pure decisions; the VMM does the
//! KVM_SET_MSRS / KVM_GET_MSRS.
//!
//! Sources (Linux 7.3): `kvm_set_msr_common` / `vmx_set_msr` for IA32_PERF_CAPABILITIES,
//! `kvm_pmu_refresh` (arch/x86/kvm/pmu.c) for the PERF_GLOBAL_CTRL reset value, and
//! `kvm_get_msr_common` for the P6/K7 counter MSRs that read 0 without a vPMU.

use crate::config::{PmuConfig, Vendor};
use crate::model::{amd, intel};

/// MSRs to write host-initiated after KVM_SET_CPUID2 and before the first KVM_RUN.
///
/// IA32_PERF_CAPABILITIES: KVM stuffs `kvm_caps.supported_perf_cap` into every new vCPU
/// (the STUFF_FEATURE_MSRS quirk), i.e. the host's LBR format and PEBS where it has them.
/// Guest LBR is not subject to KVM_SET_PMU_EVENT_FILTER (only pmu.c consults the filter),
/// so an LBR format left there lets the guest record branches that the operator's
/// allowlist never sees. The layout's value (full-width writes at most: LBR and PEBS are
/// never offered) replaces it. Without PDCM in the guest's CPUID KVM accepts only 0, which
/// is what a layout without PERF_CAPABILITIES writes. KVM refuses a changed value once the
/// vCPU has run, hence "before the first KVM_RUN".
pub fn vcpu_msrs(cfg: &PmuConfig) -> Vec<(u32, u64)> {
    match cfg {
        PmuConfig::Intel(p) => vec![(
            intel::IA32_PERF_CAPABILITIES,
            p.perf_capabilities.unwrap_or(0) & intel::PERF_CAP_SUPPORTED,
        )],
        PmuConfig::Amd(_) | PmuConfig::None => Vec::new(),
    }
}

/// AMD event-select bits KVM's `amd_pmu_set_msr` drops without a #GP
/// (`pmu->reserved_bits = 0xfffffff000280000`: 63:36, 21, 19; Host-Only/Guest-Only are
/// unreserved only for a nested-SVM guest with the mediated vPMU, which this VMM does not
/// offer).
pub const AMD_KVM_DROPPED_EVTSEL_BITS: u64 = 0xffff_fff0_0028_0000;

/// The value KVM's in-kernel vPMU stores for a host- or guest-initiated write of `value`
/// to event-programming MSR `msr` that it accepted: AMD drops reserved selector bits
/// silently; Intel refuses any reserved bit, so what it accepts it stores as written.
pub fn kvm_stored_selector(vendor: Vendor, msr: u32, value: u64) -> u64 {
    match (vendor, crate::model::classify(vendor, msr)) {
        (Vendor::Amd, Some(crate::model::PmuMsr::GpEventSel(_))) => {
            value & !AMD_KVM_DROPPED_EVTSEL_BITS
        }
        _ => value,
    }
}

/// A check that KVM's vPMU is live on a vCPU with the layout asked for.
///
/// Reading a counter MSR proves nothing: KVM answers the P6 and K7 selectors and counters
/// with 0 (and accepts writes of anything) even when the vCPU has no PMU, and host-initiated
/// reads of other advertised PMU MSRs also return 0. So the check writes a value to GP
/// selector 0 (enable bit clear: nothing counts) and reads it back, then restores 0; and
/// for layouts with PERF_GLOBAL_CTRL (Intel v2+, AMD PerfMonV2) it reads the value
/// `kvm_pmu_refresh` gives it at reset, GENMASK(gp - 1, 0), which only a live vPMU with
/// that many GP counters has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivenessCheck {
    /// GP event selector 0.
    pub evtsel: u32,
    /// Written, then expected back.
    pub probe_value: u64,
    /// `(PERF_GLOBAL_CTRL, expected reset value)` where the layout has it.
    pub global_ctrl: Option<(u32, u64)>,
}

/// Event 0xc0 (instructions retired on both vendors), USR | OS, enable bit clear: valid on
/// every layout and counts nothing.
const PROBE_EVTSEL: u64 = 0x0003_00c0;

impl LivenessCheck {
    /// The check for `cfg`; `None` when the layout has no PMU.
    pub fn for_layout(cfg: &PmuConfig) -> Option<Self> {
        let gp_mask = |n: u8| (1u64 << n) - 1;
        match cfg {
            PmuConfig::None => None,
            PmuConfig::Intel(p) => Some(Self {
                evtsel: intel::IA32_PERFEVTSEL0,
                probe_value: PROBE_EVTSEL,
                global_ctrl: (p.version >= 2 && p.num_gp > 0)
                    .then(|| (intel::IA32_PERF_GLOBAL_CTRL, gp_mask(p.num_gp))),
            }),
            PmuConfig::Amd(p) => Some(Self {
                evtsel: if p.core_ext || p.perfmon_v2 {
                    amd::PERF_CTL0_EXT
                } else {
                    amd::PERF_EVTSEL0
                },
                probe_value: PROBE_EVTSEL,
                global_ctrl: p
                    .perfmon_v2
                    .then(|| (amd::GLOBAL_CTL, gp_mask(p.num_counters))),
            }),
        }
    }

    /// Judges what KVM answered: `evtsel_back` is selector 0 read after the probe write
    /// (`None`: KVM refused the access), `global_back` PERF_GLOBAL_CTRL when asked for.
    pub fn judge(&self, evtsel_back: Option<u64>, global_back: Option<u64>) -> Result<(), String> {
        match evtsel_back {
            Some(v) if v == self.probe_value => {}
            Some(v) => {
                return Err(format!(
                "event selector {:#x} reads {v:#x} after writing {:#x}: KVM gave the vCPU no PMU",
                self.evtsel, self.probe_value
            ))
            }
            None => {
                return Err(format!(
                    "KVM refused event selector {:#x}: the vCPU has no PMU",
                    self.evtsel
                ))
            }
        }
        if let Some((msr, want)) = self.global_ctrl {
            match global_back {
                Some(v) if v == want => {}
                Some(v) => {
                    return Err(format!(
                    "PERF_GLOBAL_CTRL ({msr:#x}) reads {v:#x} where a live vPMU with this layout \
                         has {want:#x}: KVM gave the vCPU fewer counters than asked for"
                ))
                }
                None => {
                    return Err(format!(
                        "KVM refused PERF_GLOBAL_CTRL ({msr:#x}): the vCPU has no version-2 PMU"
                    ))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpuid::default_emulated_layout;
    use crate::{AmdPmu, IntelPmu};

    fn intel(version: u8, gp: u8, caps: Option<u64>) -> PmuConfig {
        PmuConfig::Intel(IntelPmu {
            version,
            num_gp: gp,
            gp_width: 48,
            num_fixed: if version >= 2 { 3 } else { 0 },
            fixed_width: 48,
            events_unavailable: 0,
            events_len: 7,
            perf_capabilities: caps,
        })
    }

    #[test]
    fn perf_capabilities_is_always_written_for_intel() {
        // FW_WRITES kept; LBR format (bits 5:0) and PEBS (bits 11:8) never offered.
        assert_eq!(
            vcpu_msrs(&intel(2, 8, Some(0x2000 | 0x3f | 0x400))),
            vec![(intel::IA32_PERF_CAPABILITIES, 0x2000)]
        );
        // No PDCM: KVM accepts only 0, and 0 replaces the stuffed default.
        assert_eq!(
            vcpu_msrs(&intel(2, 8, None)),
            vec![(intel::IA32_PERF_CAPABILITIES, 0)]
        );
        assert!(vcpu_msrs(&default_emulated_layout(Vendor::Amd)).is_empty());
        assert!(vcpu_msrs(&PmuConfig::None).is_empty());
    }

    #[test]
    fn liveness_reads_global_ctrl_reset_value() {
        let c = LivenessCheck::for_layout(&intel(2, 8, None)).unwrap();
        assert_eq!(c.evtsel, intel::IA32_PERFEVTSEL0);
        assert_eq!(c.global_ctrl, Some((intel::IA32_PERF_GLOBAL_CTRL, 0xff)));
        // No fixed-counter bits: kvm_pmu_refresh sets GP bits only.
        assert!(c.judge(Some(PROBE_EVTSEL), Some(0xff)).is_ok());
        assert!(c.judge(Some(PROBE_EVTSEL), Some(0x7_0000_00ff)).is_err());
        // What KVM answers for a vCPU without a PMU: selector reads 0, GLOBAL_CTRL 0.
        let e = c.judge(Some(0), Some(0)).unwrap_err();
        assert!(e.contains("no PMU"), "{e}");
        assert!(c.judge(None, None).is_err());
        // Fewer GP counters than asked for.
        assert!(c.judge(Some(PROBE_EVTSEL), Some(0xf)).is_err());
        // v1: no GLOBAL_CTRL to check; the selector round trip still is.
        let v1 = LivenessCheck::for_layout(&intel(1, 2, None)).unwrap();
        assert_eq!(v1.global_ctrl, None);
        assert!(v1.judge(Some(PROBE_EVTSEL), None).is_ok());
        assert!(v1.judge(Some(0), None).is_err());
    }

    #[test]
    fn kvm_drops_amd_reserved_selector_bits() {
        // Host-Only (41) and Guest-Only (40), bit 21, bit 19, 63:42 dropped; event, unit
        // mask and EventSelect[11:8] (35:32) kept.
        let v = 0x3_0063_0176 | 1 << 41 | 1 << 40 | 1 << 19 | 1 << 50;
        assert_eq!(
            kvm_stored_selector(Vendor::Amd, amd::PERF_CTL0_EXT, v),
            0x3_0043_0176
        );
        assert_eq!(kvm_stored_selector(Vendor::Amd, amd::PERF_CTR0_EXT, 7), 7);
        assert_eq!(
            kvm_stored_selector(Vendor::Intel, intel::IA32_PERFEVTSEL0, 1 << 32),
            1 << 32
        );
    }

    #[test]
    fn liveness_for_amd_layouts() {
        let legacy = PmuConfig::Amd(AmdPmu {
            core_ext: false,
            perfmon_v2: false,
            num_counters: 4,
            width: 48,
        });
        let c = LivenessCheck::for_layout(&legacy).unwrap();
        assert_eq!((c.evtsel, c.global_ctrl), (amd::PERF_EVTSEL0, None));
        let v2 = PmuConfig::Amd(AmdPmu {
            core_ext: true,
            perfmon_v2: true,
            num_counters: 6,
            width: 48,
        });
        let c = LivenessCheck::for_layout(&v2).unwrap();
        assert_eq!(
            (c.evtsel, c.global_ctrl),
            (amd::PERF_CTL0_EXT, Some((amd::GLOBAL_CTL, 0x3f)))
        );
        assert!(LivenessCheck::for_layout(&PmuConfig::None).is_none());
    }
}
