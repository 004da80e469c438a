//! KVM's mediated vPMU (`--pmu passthrough`) as the host kernel implements it: the host
//! perf PMU KVM compares guests against ([`HostPerfPmu`]), whether the hardware can have
//! a mediated vPMU at all ([`MediatedSupport`]), and which guest PMU MSRs it passes
//! through ([`mediated_intercepts`]).
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
//! it cannot tell a perfmon v5 host from a v2 one. Nor from sysfs: the perf core PMU's
//! `caps/` directory has `max_precise`, `pmu_name` and LBR facts (`x86_pmu_caps_attrs`,
//! `intel_pmu_caps_attrs`, arch/x86/events) but no version or counter counts.

use crate::config::{PmuConfig, Vendor};
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
                    _ => u8::try_from(ecx.count_ones()).expect("a u32 has at most 32 set bits"),
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

/// A group of guest PMU MSRs (or the RDPMC instruction) that KVM's mediated vPMU either
/// passes through to the hardware or intercepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MsrGroup {
    /// The counters of the guest's counters (GP and fixed).
    Counters,
    /// The event selectors (IA32_PERFEVTSELx / PERF_CTLx).
    EventSelectors,
    /// IA32_FIXED_CTR_CTRL (Intel only).
    FixedCtrCtrl,
    /// The global control/status MSRs (Intel PERF_GLOBAL_CTRL/STATUS/OVF_CTRL; AMD
    /// PERF_CNTR_GLOBAL_CTL/STATUS/STATUS_CLR/STATUS_SET).
    Global,
    /// The RDPMC instruction.
    Rdpmc,
}

impl MsrGroup {
    /// Kebab-case name (`counters`, `event-selectors`, `fixed-ctr-ctrl`, `global`, `rdpmc`).
    pub fn as_str(self) -> &'static str {
        match self {
            MsrGroup::Counters => "counters",
            MsrGroup::EventSelectors => "event-selectors",
            MsrGroup::FixedCtrCtrl => "fixed-ctr-ctrl",
            MsrGroup::Global => "global",
            MsrGroup::Rdpmc => "rdpmc",
        }
    }
}

/// One group's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupIntercept {
    /// The group.
    pub group: MsrGroup,
    /// Short name for prose (`counters`, `PERF_GLOBAL_*`, `RDPMC`, ...).
    pub label: &'static str,
    /// The MSRs (or instruction) concerned.
    pub msrs: String,
    /// Whether accesses exit to KVM.
    pub intercepted: bool,
    /// Why, naming the kernel function that decides.
    pub why: String,
}

/// What KVM's mediated vPMU intercepts for one guest layout on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InterceptPlan {
    /// Every group that exists for the vendor, in a fixed order.
    pub groups: Vec<GroupIntercept>,
}

fn join_and(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

impl InterceptPlan {
    /// The verdict for `group` (`None`: the vendor has no such group).
    pub fn get(&self, group: MsrGroup) -> Option<&GroupIntercept> {
        self.groups.iter().find(|g| g.group == group)
    }

    /// Whether `group` is intercepted (`None`: the vendor has no such group).
    pub fn intercepted(&self, group: MsrGroup) -> Option<bool> {
        self.get(group).map(|g| g.intercepted)
    }

    /// Whether the global MSRs and RDPMC are passed through too (the counters always are):
    /// the guest can then run its PMU without any exit except selector writes.
    pub fn fast_path(&self) -> bool {
        [MsrGroup::Counters, MsrGroup::Global, MsrGroup::Rdpmc]
            .iter()
            .all(|g| self.intercepted(*g) == Some(false))
    }

    /// One line, e.g. `counters passed through; event selectors, FIXED_CTR_CTRL,
    /// PERF_GLOBAL_* and RDPMC intercepted`.
    pub fn summary(&self) -> String {
        let pick = |i: bool| -> Vec<&str> {
            self.groups
                .iter()
                .filter(|g| g.intercepted == i)
                .map(|g| g.label)
                .collect()
        };
        let (passed, intercepted) = (pick(false), pick(true));
        match (passed.is_empty(), intercepted.is_empty()) {
            (true, _) => format!("{} intercepted", join_and(&intercepted)),
            (false, true) => format!("{} passed through", join_and(&passed)),
            (false, false) => format!(
                "{} passed through; {} intercepted",
                join_and(&passed),
                join_and(&intercepted)
            ),
        }
    }
}

fn group(
    group: MsrGroup,
    label: &'static str,
    msrs: &str,
    intercepted: bool,
    why: String,
) -> GroupIntercept {
    GroupIntercept {
        group,
        label,
        msrs: msrs.to_string(),
        intercepted,
        why,
    }
}

/// Why Intel event selectors and FIXED_CTR_CTRL are always intercepted.
const VETTED: &str = "always: KVM vets every write (reserved bits, event filter: \
    kvm_mediated_pmu_refresh_event_filter)";

/// The guest PMU after KVM's refresh (`intel_pmu_refresh` / `amd_pmu_refresh`): what the
/// intercept checks compare with the host perf PMU.
struct Refreshed {
    version: u8,
    nr_gp: u8,
    nr_fixed: u8,
    gp_width: u8,
    fixed_width: u8,
}

/// What KVM's mediated vPMU passes through and intercepts for a guest with layout `guest`
/// on a host whose perf PMU is `host` (Linux 7.3: `vmx_recalc_pmu_msr_intercepts`,
/// arch/x86/kvm/vmx/vmx.c; `svm_recalc_pmu_msr_intercepts`, arch/x86/kvm/svm/svm.c;
/// `kvm_need_perf_global_ctrl_intercept` and `kvm_need_rdpmc_intercept`,
/// arch/x86/kvm/pmu.c):
///
/// - The counter MSRs of the guest's counters are always passed through (Intel's
///   full-width aliases IA32_A_PMCx only when the guest's PERF_CAPABILITIES has FW_WRITES;
///   AMD's PERF_CTR0-5 only with PerfCtrExtCore, the legacy 4 always).
/// - Event selectors and IA32_FIXED_CTR_CTRL are always intercepted: KVM applies the event
///   filter and reserved-bit checks to every write (`kvm_mediated_pmu_refresh_event_filter`).
/// - The global MSRs are passed through only when the guest's GP and fixed counts equal
///   the host perf PMU's (not KVM's capped ones) and its version is 2 or more.
/// - RDPMC additionally needs equal counter widths (and no `enable_vmware_backdoor`,
///   which this does not model).
///
/// KVM gives guests at most 3 fixed and 8 (Intel) / 6 (AMD) GP counters, so on a host
/// with more (Ice Lake and later have 4 fixed counters) the global MSRs and RDPMC stay
/// intercepted for every guest; the counters themselves are still passed through. A PMU
/// MSR that the VMM's MSR filter denies also stays intercepted (`kvm_msr_allowed` in
/// `vmx/svm_set_intercept_for_msr`); this assumes none is.
pub fn mediated_intercepts(guest: &PmuConfig, host: &HostPerfPmu) -> InterceptPlan {
    let global_label = match host.vendor {
        Vendor::Intel => "PERF_GLOBAL_*",
        Vendor::Amd => "PERF_CNTR_GLOBAL_*",
    };
    let global_msrs = match host.vendor {
        Vendor::Intel => {
            "IA32_PERF_GLOBAL_CTRL, IA32_PERF_GLOBAL_STATUS, IA32_PERF_GLOBAL_OVF_CTRL"
        }
        Vendor::Amd => {
            "PERF_CNTR_GLOBAL_CTL, PERF_CNTR_GLOBAL_STATUS, PERF_CNTR_GLOBAL_STATUS_CLR, \
             PERF_CNTR_GLOBAL_STATUS_SET"
        }
    };
    let (counters_msrs, selector_msrs) = match host.vendor {
        Vendor::Intel => (
            "IA32_PMCx, IA32_A_PMCx, IA32_FIXED_CTRx",
            "IA32_PERFEVTSELx",
        ),
        Vendor::Amd => ("PERF_CTRx (legacy and PerfCtrExtCore)", "PERF_CTLx"),
    };
    let refreshed = match (guest, host.vendor) {
        (PmuConfig::Intel(g), Vendor::Intel) if g.version > 0 => {
            let cap_gp = host.num_gp.min(KVM_MAX_INTEL_GP);
            let cap_fixed = host.num_fixed.min(KVM_MAX_FIXED);
            let v1 = g.version == 1;
            Some(Refreshed {
                version: g.version,
                nr_gp: g.num_gp.min(cap_gp),
                nr_fixed: if v1 { 0 } else { g.num_fixed.min(cap_fixed) },
                gp_width: g.gp_width.min(host.gp_width),
                fixed_width: if v1 {
                    0
                } else {
                    g.fixed_width.min(host.fixed_width)
                },
            })
        }
        (PmuConfig::Amd(a), Vendor::Amd) => {
            // svm_set_cpu_caps: below 6 host counters KVM offers at most the legacy 4.
            let cap_gp = if host.num_gp < 6 {
                host.num_gp.min(4)
            } else {
                host.num_gp.min(KVM_MAX_AMD_GP)
            };
            let nr_gp = if a.perfmon_v2 {
                a.num_counters
            } else if a.core_ext {
                6
            } else {
                4
            };
            Some(Refreshed {
                version: if a.perfmon_v2 { 2 } else { 1 },
                nr_gp: nr_gp.min(cap_gp),
                nr_fixed: 0,
                // amd_pmu_refresh: counters are always 48 bits to the guest.
                gp_width: 48,
                fixed_width: 0,
            })
        }
        _ => None,
    };
    let Some(r) = refreshed else {
        let why = match guest.vendor() {
            None => "the guest has no PMU (version 0): KVM's mediated vPMU is not active and every PMU MSR faults",
            Some(_) => "the guest layout is not the host's vendor: the mediated vPMU cannot run it",
        };
        let mut groups = vec![
            group(
                MsrGroup::Counters,
                "counters",
                counters_msrs,
                true,
                why.into(),
            ),
            group(
                MsrGroup::EventSelectors,
                "event selectors",
                selector_msrs,
                true,
                why.into(),
            ),
        ];
        if host.vendor == Vendor::Intel {
            groups.push(group(
                MsrGroup::FixedCtrCtrl,
                "FIXED_CTR_CTRL",
                "IA32_FIXED_CTR_CTRL",
                true,
                why.into(),
            ));
        }
        groups.push(group(
            MsrGroup::Global,
            global_label,
            global_msrs,
            true,
            why.into(),
        ));
        groups.push(group(MsrGroup::Rdpmc, "RDPMC", "RDPMC", true, why.into()));
        return InterceptPlan { groups };
    };

    let counts_differ = r.nr_gp != host.num_gp || r.nr_fixed != host.num_fixed;
    let counts = format!(
        "the guest has {} GP + {} fixed counters, the host perf PMU {} GP + {} fixed",
        r.nr_gp, r.nr_fixed, host.num_gp, host.num_fixed
    );
    let mut beyond_kvm = Vec::new();
    let max_gp = match host.vendor {
        Vendor::Intel => KVM_MAX_INTEL_GP,
        Vendor::Amd => KVM_MAX_AMD_GP,
    };
    if host.num_gp > max_gp {
        beyond_kvm.push(format!("at most {max_gp} GP"));
    }
    if host.num_fixed > KVM_MAX_FIXED {
        beyond_kvm.push(format!("at most {KVM_MAX_FIXED} fixed"));
    }
    let never = if beyond_kvm.is_empty() {
        String::new()
    } else {
        format!(
            "; KVM exposes {} counters, so on this host no guest can match",
            beyond_kvm.join(" and ")
        )
    };
    let (global, global_why) = if counts_differ {
        (
            true,
            format!("{counts}; KVM passes them through only when equal (kvm_need_perf_global_ctrl_intercept){never}"),
        )
    } else if r.version < 2 {
        (
            true,
            format!(
                "the guest's PMU is version {}, which has no global MSRs \
                 (kvm_need_perf_global_ctrl_intercept)",
                r.version
            ),
        )
    } else {
        (
            false,
            format!("{counts} and the guest's version is {} (>= 2)", r.version),
        )
    };
    let widths_differ = r.gp_width != host.gp_width || r.fixed_width != host.fixed_width;
    let (rdpmc, rdpmc_why) = if counts_differ {
        (true, format!("{counts} (kvm_need_rdpmc_intercept){never}"))
    } else if widths_differ {
        (
            true,
            format!(
                "the guest's counter widths (GP {} / fixed {} bits) differ from the host perf \
                 PMU's ({} / {}) (kvm_need_rdpmc_intercept)",
                r.gp_width, r.fixed_width, host.gp_width, host.fixed_width
            ),
        )
    } else {
        (
            false,
            "the guest's counter counts and widths equal the host perf PMU's".to_string(),
        )
    };

    let mut groups = Vec::new();
    match (guest, host.vendor) {
        (PmuConfig::Intel(g), _) => {
            let fw = g
                .perf_capabilities
                .is_some_and(|c| c & PERF_CAP_FW_WRITES != 0);
            groups.push(group(
                MsrGroup::Counters,
                "counters",
                counters_msrs,
                false,
                format!(
                    "the {} GP and {} fixed counters are passed through \
                     (vmx_recalc_pmu_msr_intercepts); the full-width aliases IA32_A_PMCx {} \
                     (the guest's PERF_CAPABILITIES {} FW_WRITES); counters beyond the guest's \
                     stay intercepted",
                    r.nr_gp,
                    r.nr_fixed,
                    if fw { "too" } else { "stay intercepted" },
                    if fw { "has" } else { "lacks" }
                ),
            ));
            groups.push(group(
                MsrGroup::EventSelectors,
                "event selectors",
                selector_msrs,
                true,
                VETTED.into(),
            ));
            groups.push(group(
                MsrGroup::FixedCtrCtrl,
                "FIXED_CTR_CTRL",
                "IA32_FIXED_CTR_CTRL",
                true,
                VETTED.into(),
            ));
        }
        (PmuConfig::Amd(a), _) => {
            let ext = a.core_ext || a.perfmon_v2;
            groups.push(group(
                MsrGroup::Counters,
                "counters",
                counters_msrs,
                false,
                format!(
                    "the {} counters are passed through (svm_recalc_pmu_msr_intercepts): the \
                     legacy PERF_CTR0-3 always, the PerfCtrExtCore PERF_CTR0-5 {}",
                    r.nr_gp,
                    if ext {
                        "too (the guest has PerfCtrExtCore)"
                    } else {
                        "stay intercepted (the guest lacks PerfCtrExtCore)"
                    }
                ),
            ));
            groups.push(group(
                MsrGroup::EventSelectors,
                "event selectors",
                selector_msrs,
                true,
                "always: KVM forces Guest-Only into the hardware selector and applies the \
                 event filter (amd_pmu_set_msr, kvm_mediated_pmu_refresh_event_filter)"
                    .into(),
            ));
        }
        (PmuConfig::None, _) => {}
    }
    groups.push(group(
        MsrGroup::Global,
        global_label,
        global_msrs,
        global,
        global_why,
    ));
    groups.push(group(MsrGroup::Rdpmc, "RDPMC", "RDPMC", rdpmc, rdpmc_why));
    InterceptPlan { groups }
}
