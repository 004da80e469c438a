//! KVM's mediated vPMU (`--pmu passthrough`) as the host kernel implements it: the host
//! perf PMU KVM compares guests against ([`HostPerfPmu`]) and whether the hardware can have
//! a mediated vPMU at all ([`MediatedSupport`]).
//!
//! Source: Linux 7.3-rc7. KVM decides mediated support itself, once, when kvm_intel /
//! kvm_amd loads (`kvm_init_pmu_capability`, arch/x86/kvm/pmu.c): it reads the host perf
//! PMU with `perf_get_x86_pmu_capability` (arch/x86/events/core.c) into `kvm_host_pmu`,
//! and forces `enable_mediated_pmu` to N unless `enable_pmu`, perf's
//! PERF_PMU_CAP_MEDIATED_VPMU and the vendor check (`intel_pmu_is_mediated_pmu_supported`,
//! `amd_pmu_is_mediated_pmu_supported`) all hold. So the module parameter is the verdict;
//! the facts here only explain an N: whether reloading the module with
//! `enable_mediated_pmu=1` can help.
//!
//! These facts are the host's *own* PMU, read from the CPUID instruction (and the host
//! IA32_PERF_CAPABILITIES MSR), never from KVM_GET_SUPPORTED_CPUID: KVM caps what it
//! reports there (version <= 2, <= 3 fixed counters, <= 8 Intel / 6 AMD GP counters), so
//! it cannot tell a perfmon v5 host from a v2 one.

use crate::config::Vendor;
use crate::model::intel::PERF_CAP_FW_WRITES;
use serde::Serialize;

/// KVM_MAX_NR_INTEL_GP_COUNTERS (arch/x86/include/asm/kvm_host.h).
pub const KVM_MAX_INTEL_GP: u8 = 8;
/// KVM_MAX_NR_AMD_GP_COUNTERS.
pub const KVM_MAX_AMD_GP: u8 = 6;
/// KVM_MAX_NR_FIXED_COUNTERS: KVM gives guests at most 3 fixed counters, even on hosts
/// with 4 (Ice Lake and later).
pub const KVM_MAX_FIXED: u8 = 3;
/// The highest architectural perfmon version KVM_GET_SUPPORTED_CPUID reports
/// (`kvm_init_pmu_capability`: `min(kvm_pmu_cap.version, 2)`), mediated or not.
pub const KVM_MAX_VERSION: u8 = 2;

/// Host CPUID (leaf, subleaf) -> [EAX, EBX, ECX, EDX]; `None` when the leaf is unknown.
pub type RawCpuid<'a> = &'a dyn Fn(u32, u32) -> Option<[u32; 4]>;

/// The host's perf core PMU as perf reports it to KVM (`perf_get_x86_pmu_capability` ->
/// `kvm_host_pmu`), before KVM's caps. The mediated vPMU's intercept decisions compare
/// guests against *these* counts and widths (`kvm_need_any_pmc_intercept`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostPerfPmu {
    /// Intel or AMD perf driver.
    pub vendor: Vendor,
    /// `x86_pmu.version`: Intel CPUID.0AH:EAX\[7:0\]; AMD 2 with PerfMonV2, else 0.
    pub version: u8,
    /// GP counters (`num_counters_gp`).
    pub num_gp: u8,
    /// GP counter width (`bit_width_gp` = `x86_pmu.cntval_bits`, 0 without counters).
    pub gp_width: u8,
    /// Fixed counters (`num_counters_fixed`; AMD: 0).
    pub num_fixed: u8,
    /// `bit_width_fixed`: perf reports the GP width here too (`cntval_bits`), 0 without
    /// fixed counters.
    pub fixed_width: u8,
    /// Intel: whether the host's IA32_PERF_CAPABILITIES has FW_WRITES (bit 13); `Some(false)`
    /// without PDCM, `None` when the MSR could not be read. AMD: `None` (not applicable).
    pub full_width_writes: Option<bool>,
}

/// Whether the host hardware can have KVM's mediated vPMU, i.e. whether
/// `<vendor module>.enable_mediated_pmu=1` would survive `kvm_init_pmu_capability`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "why", rename_all = "kebab-case")]
pub enum MediatedSupport {
    /// Yes (as far as the hardware goes; KVM also needs `kvm.enable_pmu`).
    Capable,
    /// No, whatever the module parameter says; the string says why.
    NotCapable(String),
    /// Could not be decided from what is readable here; the string says what is missing.
    Unknown(String),
}

fn leaf(raw: RawCpuid<'_>, leaf: u32) -> Option<[u32; 4]> {
    let base = leaf & 0x8000_0000;
    let max = raw(base, 0)?[0];
    if leaf > max {
        return None;
    }
    raw(leaf, 0)
}

/// CPUID.07H.0:EDX\[15\] Hybrid (X86_FEATURE_HYBRID_CPU): P-cores and E-cores.
pub const HYBRID_BIT: u32 = 1 << 15;

/// Whether the host CPU is hybrid (CPUID.07H.0:EDX\[15\]). KVM has no vPMU on such hosts:
/// `kvm_init_pmu_capability` forces `kvm.enable_pmu` (and so `enable_mediated_pmu`) off,
/// and no module parameter changes that.
pub fn hybrid_cpu(raw: RawCpuid<'_>) -> bool {
    leaf(raw, 7).is_some_and(|r| r[3] & HYBRID_BIT != 0)
}

impl HostPerfPmu {
    /// The host perf PMU from the host CPU's own CPUID (`raw`) and, on Intel, its
    /// IA32_PERF_CAPABILITIES (`perf_capabilities`, `None` if unreadable). `None` when
    /// perf would have no core PMU (no vendor we know, no leaf 0AH, version 0, or fewer
    /// than 7 architectural events, which makes `intel_pmu_init` give up), and on a hybrid
    /// CPU, for which `perf_get_x86_pmu_capability` reports nothing.
    ///
    /// Intel follows `intel_pmu_init` (arch/x86/events/intel/core.c): v2-v4 have
    /// `max(CPUID.0AH:EDX[4:0], 3)` fixed counters (3 assumed unless running under a
    /// hypervisor), v5+ as many as CPUID.0AH:ECX has bits. AMD follows `amd_core_pmu_init`
    /// (arch/x86/events/amd/core.c): 4 counters, 6 with PerfCtrExtCore, and with
    /// PerfMonV2 version 2 and CPUID 0x80000022.EBX\[3:0\] counters, all 48 bits wide.
    pub fn from_cpuid(raw: RawCpuid<'_>, perf_capabilities: Option<u64>) -> Option<HostPerfPmu> {
        let l0 = raw(0, 0)?;
        let vendor = crate::cpuid::vendor_from_regs(l0[1], l0[3], l0[2])?;
        if hybrid_cpu(raw) {
            return None;
        }
        match vendor {
            Vendor::Intel => {
                let [eax, _, ecx, edx] = leaf(raw, 0xa)?;
                let version = (eax & 0xff) as u8;
                let events_len = eax >> 24;
                if version == 0 || events_len < 7 {
                    return None;
                }
                let num_gp = ((eax >> 8) & 0xff) as u8;
                let width = ((eax >> 16) & 0xff) as u8;
                let features = leaf(raw, 1).unwrap_or_default();
                let hypervisor = features[2] & (1 << 31) != 0;
                let num_fixed = match version {
                    1 => 0,
                    2..=4 => ((edx & 0x1f) as u8).max(if hypervisor { 0 } else { 3 }),
                    _ => ecx.count_ones() as u8,
                };
                let pdcm = features[2] & crate::cpuid::PDCM_BIT != 0;
                Some(HostPerfPmu {
                    vendor,
                    version,
                    num_gp,
                    gp_width: if num_gp > 0 { width } else { 0 },
                    num_fixed,
                    fixed_width: if num_fixed > 0 { width } else { 0 },
                    full_width_writes: if pdcm {
                        perf_capabilities.map(|c| c & PERF_CAP_FW_WRITES != 0)
                    } else {
                        Some(false)
                    },
                })
            }
            Vendor::Amd => {
                let core_ext = leaf(raw, 0x8000_0001)
                    .is_some_and(|r| r[2] & crate::cpuid::PERFCTR_CORE_BIT != 0);
                let v2 = leaf(raw, 0x8000_0022)
                    .filter(|r| core_ext && r[0] & crate::cpuid::PERFMON_V2_BIT != 0);
                let (version, num_gp) = match v2 {
                    Some(r) => (2, (r[1] & 0xf) as u8),
                    None if core_ext => (0, 6),
                    None => (0, 4),
                };
                Some(HostPerfPmu {
                    vendor,
                    version,
                    num_gp,
                    gp_width: 48,
                    num_fixed: 0,
                    fixed_width: 0,
                    full_width_writes: None,
                })
            }
        }
    }

    /// Whether this hardware can have the mediated vPMU (see [`MediatedSupport`]).
    ///
    /// Intel (`intel_pmu_is_mediated_pmu_supported`, arch/x86/kvm/vmx/pmu_intel.c): perf
    /// version 4+ and FW_WRITES in the host's IA32_PERF_CAPABILITIES (and the VMCS
    /// load-PERF_GLOBAL_CTRL controls, which KVM expects on every such CPU and this does
    /// not check). AMD (`amd_pmu_is_mediated_pmu_supported`, arch/x86/kvm/svm/pmu.c): perf
    /// version 2, which perf sets only with PerfMonV2, the only case in which it also
    /// offers PERF_PMU_CAP_MEDIATED_VPMU (`amd_core_pmu_init`).
    pub fn mediated_support(&self) -> MediatedSupport {
        match self.vendor {
            Vendor::Intel if self.version < 4 => MediatedSupport::NotCapable(format!(
                "the host PMU is architectural perfmon v{}; KVM's mediated vPMU needs v4+ \
                 (intel_pmu_is_mediated_pmu_supported)",
                self.version
            )),
            Vendor::Intel => match self.full_width_writes {
                Some(true) => MediatedSupport::Capable,
                Some(false) => MediatedSupport::NotCapable(
                    "the host's IA32_PERF_CAPABILITIES lacks FW_WRITES (full-width counter \
                     writes), which KVM's mediated vPMU needs (intel_pmu_is_mediated_pmu_supported)"
                        .into(),
                ),
                None => MediatedSupport::Unknown(format!(
                    "the host PMU is perfmon v{}, but whether its IA32_PERF_CAPABILITIES has \
                     FW_WRITES (full-width counter writes), which KVM also needs, cannot be read \
                     here (/dev/cpu/0/msr needs root and the msr module)",
                    self.version
                )),
            },
            Vendor::Amd if self.version >= 2 => MediatedSupport::Capable,
            Vendor::Amd => MediatedSupport::NotCapable(
                "the host AMD CPU lacks PerfMonV2 (CPUID 0x80000022 EAX[0]); perf offers the \
                 mediated vPMU only with it and KVM needs perf PMU version 2 \
                 (amd_pmu_is_mediated_pmu_supported)"
                    .into(),
            ),
        }
    }

    /// One-line description, e.g. `Intel perfmon v5: 8 GP + 4 fixed counters, 48 bits,
    /// full-width writes`.
    pub fn describe(&self) -> String {
        let fw = match (self.vendor, self.full_width_writes) {
            (Vendor::Amd, _) => "",
            (_, Some(true)) => ", full-width writes",
            (_, Some(false)) => ", no full-width writes",
            (_, None) => ", full-width writes unknown (IA32_PERF_CAPABILITIES unreadable)",
        };
        match self.vendor {
            Vendor::Intel => format!(
                "Intel perfmon v{}: {} GP x {} bits + {} fixed x {} bits{fw}",
                self.version, self.num_gp, self.gp_width, self.num_fixed, self.fixed_width
            ),
            Vendor::Amd => format!(
                "AMD perf version {}: {} counters x {} bits{}",
                self.version,
                self.num_gp,
                self.gp_width,
                if self.version >= 2 {
                    ", PerfMonV2"
                } else {
                    ", no PerfMonV2"
                }
            ),
        }
    }
}
