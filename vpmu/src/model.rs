//! Per-vendor PMU MSR model: addresses, presence, reserved bits and access semantics.
//!
//! Everything here is pure and derived from a [`PmuConfig`]. The register *file* (values)
//! lives in [`crate::state`]; this module only answers "which MSR is this, does the guest's
//! layout have it, which bits may be written, and what does a write mean".
//!
//! Sources (section numbers are those of the Intel SDM vol. 3B edition in which the
//! performance-monitoring chapter is chapter 18; later editions renumber it 20/21):
//! - Intel SDM vol. 3B §18.2.1-18.2.5 (architectural perfmon v1-v4, full-width writes),
//!   §18.2.4.3 (IA32_PERF_GLOBAL_INUSE), Figures 18-1..18-13, Appendix B.1 (MSR addresses).
//! - AMD APM vol. 2 §13.2 (core performance counters, PerfCtrExtCore, PerfMonV2).
//! - Linux `arch/x86/include/asm/msr-index.h` (addresses) and `arch/x86/kvm/{pmu.c,
//!   vmx/pmu_intel.c, svm/pmu.c}` (KVM's behaviour, which guests are tested against).
//!
//! Deliberate choices (documented in `docs/PMU-MODEL.md`):
//! - GLOBAL_CTRL resets to "all GP counters enabled" (SDM: v1 software keeps working;
//!   KVM `kvm_pmu_refresh` does the same for Intel and AMD PerfMonV2).
//! - Reads of the write-only status-control MSRs (GLOBAL_OVF_CTRL / STATUS_RESET,
//!   GLOBAL_STATUS_SET, AMD GLOBAL_STATUS_CLR / STATUS_SET) return 0, as in KVM.
//! - Fixed-counter writes are truncated to the counter width (as KVM does); full-width
//!   writes to IA32_A_PMCx with bits above the width #GP (SDM §18.2.5, KVM).
//! - The TSX qualifiers IN_TX/IN_TXCP (PERFEVTSEL bits 32/33) are not offered: reserved.
//! - AMD PERF_CTL reserved bits #GP here (KVM silently drops them).

use crate::config::{AmdPmu, IntelPmu, PmuConfig, Vendor};
use thiserror::Error;

/// Intel architectural performance-monitoring MSRs and bits (SDM vol. 3B §18.2, App. B.1).
pub mod intel {
    /// IA32_PMC0; IA32_PMCx = IA32_PMC0 + x (legacy 32-bit-write alias).
    pub const IA32_PMC0: u32 = 0xc1;
    /// IA32_PERFEVTSEL0; IA32_PERFEVTSELx = IA32_PERFEVTSEL0 + x.
    pub const IA32_PERFEVTSEL0: u32 = 0x186;
    /// IA32_A_PMC0 (full-width alias, only with PERF_CAPABILITIES.FW_WRITE; §18.2.5).
    pub const IA32_A_PMC0: u32 = 0x4c1;
    /// IA32_FIXED_CTR0 (instructions retired); CTR1 core cycles; CTR2 reference cycles;
    /// CTR3 topdown slots.
    pub const IA32_FIXED_CTR0: u32 = 0x309;
    /// MSR_PERF_METRICS (topdown metrics, v5 with PERF_CAPABILITIES bit 15). Never offered.
    pub const MSR_PERF_METRICS: u32 = 0x329;
    /// IA32_PERF_CAPABILITIES (read-only; exists iff CPUID.01H:ECX.PDCM\[15\]).
    pub const IA32_PERF_CAPABILITIES: u32 = 0x345;
    /// IA32_FIXED_CTR_CTRL (v2+).
    pub const IA32_FIXED_CTR_CTRL: u32 = 0x38d;
    /// IA32_PERF_GLOBAL_STATUS (v2+, read-only).
    pub const IA32_PERF_GLOBAL_STATUS: u32 = 0x38e;
    /// IA32_PERF_GLOBAL_CTRL (v2+).
    pub const IA32_PERF_GLOBAL_CTRL: u32 = 0x38f;
    /// IA32_PERF_GLOBAL_OVF_CTRL (v2+); called IA32_PERF_GLOBAL_STATUS_RESET from v4.
    pub const IA32_PERF_GLOBAL_OVF_CTRL: u32 = 0x390;
    /// v4 name of [`IA32_PERF_GLOBAL_OVF_CTRL`].
    pub const IA32_PERF_GLOBAL_STATUS_RESET: u32 = IA32_PERF_GLOBAL_OVF_CTRL;
    /// IA32_PERF_GLOBAL_STATUS_SET (v4+).
    pub const IA32_PERF_GLOBAL_STATUS_SET: u32 = 0x391;
    /// IA32_PERF_GLOBAL_INUSE (v4+, read-only).
    pub const IA32_PERF_GLOBAL_INUSE: u32 = 0x392;

    /// Most GP counters the MSR map has room for (IA32_PMC0..7 / PERFEVTSEL0..7).
    pub const MAX_GP: u8 = 8;
    /// Most fixed counters this model offers (CTR0..3).
    pub const MAX_FIXED: u8 = 4;
    /// Fixed-counter MSR addresses architecturally reserved (0x309..=0x30f); trapped so the
    /// ones a layout lacks #GP.
    pub const FIXED_CTR_RANGE: u32 = 7;

    /// PERFEVTSEL bit 16: count at CPL>0.
    pub const EVTSEL_USR: u64 = 1 << 16;
    /// PERFEVTSEL bit 17: count at CPL0.
    pub const EVTSEL_OS: u64 = 1 << 17;
    /// PERFEVTSEL bit 18: edge detect.
    pub const EVTSEL_EDGE: u64 = 1 << 18;
    /// PERFEVTSEL bit 19: pin control.
    pub const EVTSEL_PC: u64 = 1 << 19;
    /// PERFEVTSEL bit 20: APIC interrupt (PMI) on overflow.
    pub const EVTSEL_INT: u64 = 1 << 20;
    /// PERFEVTSEL bit 21: AnyThread (v3+).
    pub const EVTSEL_ANY: u64 = 1 << 21;
    /// PERFEVTSEL bit 22: enable.
    pub const EVTSEL_EN: u64 = 1 << 22;
    /// PERFEVTSEL bit 23: invert counter mask.
    pub const EVTSEL_INV: u64 = 1 << 23;

    /// FIXED_CTR_CTRL per-counter field: bit 0 OS, bit 1 USR, bit 2 AnyThread (v3+),
    /// bit 3 PMI. Field i occupies bits 4i+3..4i.
    pub const FIXED_EN_OS: u64 = 1 << 0;
    /// See [`FIXED_EN_OS`].
    pub const FIXED_EN_USR: u64 = 1 << 1;
    /// See [`FIXED_EN_OS`].
    pub const FIXED_ANY: u64 = 1 << 2;
    /// See [`FIXED_EN_OS`].
    pub const FIXED_PMI: u64 = 1 << 3;

    /// IA32_PERF_CAPABILITIES bit 13: full-width writes via IA32_A_PMCx (§18.2.5).
    pub const PERF_CAP_FW_WRITES: u64 = 1 << 13;
    /// PERF_CAPABILITIES bits this model implements; others (LBR format, PEBS, perf
    /// metrics) describe facilities that are not offered to guests.
    pub const PERF_CAP_SUPPORTED: u64 = PERF_CAP_FW_WRITES;

    /// GLOBAL_STATUS bit 62: DS buffer overflow (never set here; clearable).
    pub const STATUS_OVF_BUF: u64 = 1 << 62;
    /// GLOBAL_STATUS bit 63: CondChgd (never set here; clearable).
    pub const STATUS_COND_CHGD: u64 = 1 << 63;
    /// GLOBAL_INUSE bit 63: PMI_InUse (§18.2.4.3; the SDM text misprints it as bit 32).
    pub const INUSE_PMI: u64 = 1 << 63;
    /// First fixed-counter bit in GLOBAL_CTRL / STATUS / INUSE.
    pub const FIXED_BIT_BASE: u32 = 32;
}

/// AMD64 performance-counter MSRs (APM vol. 2 §13.2; Linux msr-index.h).
pub mod amd {
    /// PerfEvtSel0 (legacy, MSR_K7_EVNTSEL0); 0xc0010000..=0xc0010003.
    pub const PERF_EVTSEL0: u32 = 0xc001_0000;
    /// PerfCtr0 (legacy, MSR_K7_PERFCTR0); 0xc0010004..=0xc0010007.
    pub const PERF_CTR0: u32 = 0xc001_0004;
    /// Legacy counter count.
    pub const LEGACY_COUNTERS: u8 = 4;
    /// PERF_CTL0 with PerfCtrExtCore (MSR_F15H_PERF_CTL0); CTLn = base + 2n (even).
    pub const PERF_CTL0_EXT: u32 = 0xc001_0200;
    /// PERF_CTR0 with PerfCtrExtCore (MSR_F15H_PERF_CTR0); CTRn = base + 2n (odd).
    pub const PERF_CTR0_EXT: u32 = 0xc001_0201;
    /// Counters with PerfCtrExtCore and no PerfMonV2.
    pub const CORE_EXT_COUNTERS: u8 = 6;
    /// Core-extension MSRs trapped (0xc0010200..=0xc001021f: room for 16 CTL/CTR pairs,
    /// more than CPUID 0x80000022.EBX\[3:0\] can enumerate).
    pub const CORE_EXT_RANGE: u32 = 32;
    /// Most counters this model offers (KVM's KVM_MAX_NR_AMD_GP_COUNTERS is also 6).
    pub const MAX_COUNTERS: u8 = 6;
    /// PerfCntrGlobalStatus (PerfMonV2, read-only).
    pub const GLOBAL_STATUS: u32 = 0xc000_0300;
    /// PerfCntrGlobalCtl (PerfMonV2).
    pub const GLOBAL_CTL: u32 = 0xc000_0301;
    /// PerfCntrGlobalStatusClr (PerfMonV2, write 1 to clear).
    pub const GLOBAL_STATUS_CLR: u32 = 0xc000_0302;
    /// PerfCntrGlobalStatusSet (PerfMonV2, write 1 to set).
    pub const GLOBAL_STATUS_SET: u32 = 0xc000_0303;

    /// PERF_CTL bit 16: count at CPL>0.
    pub const EVTSEL_USR: u64 = 1 << 16;
    /// PERF_CTL bit 17: count at CPL0.
    pub const EVTSEL_OS: u64 = 1 << 17;
    /// PERF_CTL bit 20: interrupt on overflow.
    pub const EVTSEL_INT: u64 = 1 << 20;
    /// PERF_CTL bit 22: enable.
    pub const EVTSEL_EN: u64 = 1 << 22;
    /// PERF_CTL bits 35:32: EventSelect\[11:8\].
    pub const EVTSEL_EVENT_HI: u64 = 0xf << 32;
    /// PERF_CTL bit 40: GuestOnly.
    pub const EVTSEL_GUEST_ONLY: u64 = 1 << 40;
    /// PERF_CTL bit 41: HostOnly.
    pub const EVTSEL_HOST_ONLY: u64 = 1 << 41;
    /// PERF_CTL reserved bits (APM Fig. 13-7): 63:42, 39:36, 21, 19.
    pub const EVTSEL_RESERVED: u64 = !((1u64 << 42) - 1) | (0xf << 36) | (1 << 21) | (1 << 19);
}

/// Which PMU register an MSR address names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PmuMsr {
    /// GP counter `n` through its legacy address (Intel IA32_PMCn: 32-bit sign-extended
    /// writes; AMD PerfCtrn / PERF_CTRn: writes truncated to the width).
    GpCounter(u8),
    /// Intel IA32_A_PMCn (full-width writes).
    GpCounterFullWidth(u8),
    /// GP event selector `n` (Intel IA32_PERFEVTSELn, AMD PerfEvtSeln / PERF_CTLn).
    GpEventSel(u8),
    /// Intel IA32_FIXED_CTRn.
    FixedCounter(u8),
    /// Intel IA32_FIXED_CTR_CTRL.
    FixedCtrCtrl,
    /// Intel IA32_PERF_CAPABILITIES.
    PerfCapabilities,
    /// Intel IA32_PERF_METRICS (never present here).
    PerfMetrics,
    /// Intel IA32_PERF_GLOBAL_STATUS / AMD PerfCntrGlobalStatus.
    GlobalStatus,
    /// Intel IA32_PERF_GLOBAL_CTRL / AMD PerfCntrGlobalCtl.
    GlobalCtrl,
    /// Intel IA32_PERF_GLOBAL_OVF_CTRL (STATUS_RESET) / AMD PerfCntrGlobalStatusClr.
    GlobalStatusReset,
    /// Intel IA32_PERF_GLOBAL_STATUS_SET / AMD PerfCntrGlobalStatusSet.
    GlobalStatusSet,
    /// Intel IA32_PERF_GLOBAL_INUSE.
    GlobalInUse,
}

impl PmuMsr {
    /// Whether guest writes to this register #GP regardless of value.
    pub fn is_read_only(self) -> bool {
        matches!(
            self,
            PmuMsr::PerfCapabilities | PmuMsr::GlobalStatus | PmuMsr::GlobalInUse
        )
    }
}

/// Classify `msr` against every address the vendor's PMU architecture can use, whether or
/// not a particular layout has it. `None`: not a PMU MSR of this vendor.
pub fn classify(vendor: Vendor, msr: u32) -> Option<PmuMsr> {
    match vendor {
        Vendor::Intel => classify_intel(msr),
        Vendor::Amd => classify_amd(msr),
    }
}

#[allow(clippy::cast_possible_truncation)] // each guard bounds its index below MAX_GP or the range's size
fn classify_intel(msr: u32) -> Option<PmuMsr> {
    use intel::*;
    let max = u32::from(MAX_GP);
    Some(match msr {
        m if (IA32_PMC0..IA32_PMC0 + max).contains(&m) => PmuMsr::GpCounter((m - IA32_PMC0) as u8),
        m if (IA32_A_PMC0..IA32_A_PMC0 + max).contains(&m) => {
            PmuMsr::GpCounterFullWidth((m - IA32_A_PMC0) as u8)
        }
        m if (IA32_PERFEVTSEL0..IA32_PERFEVTSEL0 + max).contains(&m) => {
            PmuMsr::GpEventSel((m - IA32_PERFEVTSEL0) as u8)
        }
        m if (IA32_FIXED_CTR0..IA32_FIXED_CTR0 + FIXED_CTR_RANGE).contains(&m) => {
            PmuMsr::FixedCounter((m - IA32_FIXED_CTR0) as u8)
        }
        MSR_PERF_METRICS => PmuMsr::PerfMetrics,
        IA32_PERF_CAPABILITIES => PmuMsr::PerfCapabilities,
        IA32_FIXED_CTR_CTRL => PmuMsr::FixedCtrCtrl,
        IA32_PERF_GLOBAL_STATUS => PmuMsr::GlobalStatus,
        IA32_PERF_GLOBAL_CTRL => PmuMsr::GlobalCtrl,
        IA32_PERF_GLOBAL_OVF_CTRL => PmuMsr::GlobalStatusReset,
        IA32_PERF_GLOBAL_STATUS_SET => PmuMsr::GlobalStatusSet,
        IA32_PERF_GLOBAL_INUSE => PmuMsr::GlobalInUse,
        _ => return None,
    })
}

#[allow(clippy::cast_possible_truncation)] // each guard bounds its index below the range's size
fn classify_amd(msr: u32) -> Option<PmuMsr> {
    use amd::*;
    let legacy = u32::from(LEGACY_COUNTERS);
    Some(match msr {
        m if (PERF_EVTSEL0..PERF_EVTSEL0 + legacy).contains(&m) => {
            PmuMsr::GpEventSel((m - PERF_EVTSEL0) as u8)
        }
        m if (PERF_CTR0..PERF_CTR0 + legacy).contains(&m) => {
            PmuMsr::GpCounter((m - PERF_CTR0) as u8)
        }
        m if (PERF_CTL0_EXT..PERF_CTL0_EXT + CORE_EXT_RANGE).contains(&m) => {
            let off = m - PERF_CTL0_EXT;
            let idx = (off / 2) as u8;
            if off & 1 == 0 {
                PmuMsr::GpEventSel(idx)
            } else {
                PmuMsr::GpCounter(idx)
            }
        }
        GLOBAL_STATUS => PmuMsr::GlobalStatus,
        GLOBAL_CTL => PmuMsr::GlobalCtrl,
        GLOBAL_STATUS_CLR => PmuMsr::GlobalStatusReset,
        GLOBAL_STATUS_SET => PmuMsr::GlobalStatusSet,
        _ => return None,
    })
}

/// Every MSR address range `(base, count)` the vendor's PMU architecture can have, present
/// in a given layout or not, so a VMM can route them all through KVM's MSR filter and #GP
/// the ones the guest's layout lacks.
pub fn pmu_msr_ranges(vendor: Vendor) -> Vec<(u32, u32)> {
    match vendor {
        Vendor::Intel => {
            use intel::*;
            let gp = u32::from(MAX_GP);
            vec![
                (IA32_PMC0, gp),
                (IA32_PERFEVTSEL0, gp),
                (IA32_FIXED_CTR0, FIXED_CTR_RANGE),
                (MSR_PERF_METRICS, 1),
                (IA32_PERF_CAPABILITIES, 1),
                (IA32_FIXED_CTR_CTRL, 6), // 0x38d..=0x392
                (IA32_A_PMC0, gp),
            ]
        }
        Vendor::Amd => {
            use amd::*;
            vec![
                (PERF_EVTSEL0, 2 * u32::from(LEGACY_COUNTERS)), // 0xc0010000..=0xc0010007
                (PERF_CTL0_EXT, CORE_EXT_RANGE),
                (GLOBAL_STATUS, 4), // 0xc0000300..=0xc0000303
            ]
        }
    }
}

/// Every PMU MSR range of both vendors' architectures. A VMM that must make "every PMU
/// MSR #GPs unless the layout has it" true on any host routes all of them: KVM answers some
/// of the other vendor's PMU MSRs with 0 (e.g. AMD's K7 PERF_CTL/CTR on an Intel host),
/// where a real CPU of the guest's vendor would #GP. The ranges never overlap.
pub fn pmu_msr_ranges_all() -> Vec<(u32, u32)> {
    let mut all = pmu_msr_ranges(Vendor::Intel);
    all.extend(pmu_msr_ranges(Vendor::Amd));
    all
}

/// Every event-programming MSR of `vendor`'s architecture (GP event selectors and Intel's
/// FIXED_CTR_CTRL), present in a given layout or not, ascending: what a VMM routes to
/// itself to see (and audit) what a guest programs while KVM's vPMU does the counting.
pub fn selector_msrs(vendor: Vendor) -> Vec<u32> {
    let mut out: Vec<u32> = pmu_msr_ranges(vendor)
        .into_iter()
        .flat_map(|(base, count)| base..base.saturating_add(count))
        .filter(|&m| {
            matches!(
                classify(vendor, m),
                Some(PmuMsr::GpEventSel(_) | PmuMsr::FixedCtrCtrl)
            )
        })
        .collect();
    out.sort_unstable();
    out
}

/// Why a [`PmuConfig`] cannot be modelled.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// Intel version outside 1..=5.
    #[error("Intel architectural perfmon version {0} is not modelled (supported: 1..=5)")]
    IntelVersion(u8),
    /// Too many counters of some kind.
    #[error("{kind}: {requested} counters requested, this model supports at most {max}")]
    TooManyCounters {
        /// Which counters.
        kind: &'static str,
        /// Asked for.
        requested: u8,
        /// Most supported.
        max: u8,
    },
    /// A counter width outside 32..=64.
    #[error("{kind} counter width {width} is outside 32..=64")]
    Width {
        /// Which counters.
        kind: &'static str,
        /// Asked for.
        width: u8,
    },
    /// Intel v1 has no fixed counters (KVM's ABI; the SDM introduces them with v2).
    #[error("Intel perfmon version 1 has no fixed counters ({0} requested)")]
    FixedOnV1(u8),
    /// AMD counter count that CPUID cannot express.
    #[error(
        "AMD without PerfMonV2 has exactly {expected} counters ({requested} requested); \
             only PerfMonV2 (CPUID 0x80000022.EBX[3:0]) can advertise another count"
    )]
    AmdCount {
        /// What the architecture implies.
        expected: u8,
        /// Asked for.
        requested: u8,
    },
    /// AMD PerfMonV2 without PerfCtrExtCore (every PerfMonV2 part has both; its counters
    /// live at the core-extension addresses).
    #[error("AMD PerfMonV2 requires PerfCtrExtCore (core-ext)")]
    AmdV2WithoutCoreExt,
    /// AMD counter width other than 48 (CPUID has no width field on AMD: guests assume 48).
    #[error(
        "AMD counters are 48 bits wide ({0} requested): AMD CPUID cannot advertise another width"
    )]
    AmdWidth(u8),
    /// PERF_CAPABILITIES bits this model does not implement.
    #[error("IA32_PERF_CAPABILITIES bits {0:#x} are not supported (only FW_WRITES, bit 13)")]
    PerfCapabilities(u64),
}

/// Check that `cfg` is inside what this model implements.
pub fn validate(cfg: &PmuConfig) -> Result<(), ConfigError> {
    match cfg {
        PmuConfig::None => Ok(()),
        PmuConfig::Intel(p) => validate_intel(p),
        PmuConfig::Amd(p) => validate_amd(p),
    }
}

fn check_width(kind: &'static str, width: u8) -> Result<(), ConfigError> {
    if (32..=64).contains(&width) {
        Ok(())
    } else {
        Err(ConfigError::Width { kind, width })
    }
}

fn validate_intel(p: &IntelPmu) -> Result<(), ConfigError> {
    if !(1..=5).contains(&p.version) {
        return Err(ConfigError::IntelVersion(p.version));
    }
    if p.num_gp > intel::MAX_GP {
        return Err(ConfigError::TooManyCounters {
            kind: "Intel general-purpose",
            requested: p.num_gp,
            max: intel::MAX_GP,
        });
    }
    if p.num_fixed > intel::MAX_FIXED {
        return Err(ConfigError::TooManyCounters {
            kind: "Intel fixed-function",
            requested: p.num_fixed,
            max: intel::MAX_FIXED,
        });
    }
    if p.version == 1 && p.num_fixed > 0 {
        return Err(ConfigError::FixedOnV1(p.num_fixed));
    }
    if p.num_gp > 0 {
        check_width("Intel general-purpose", p.gp_width)?;
    }
    if p.num_fixed > 0 {
        check_width("Intel fixed-function", p.fixed_width)?;
    }
    if let Some(caps) = p.perf_capabilities {
        let bad = caps & !intel::PERF_CAP_SUPPORTED;
        if bad != 0 {
            return Err(ConfigError::PerfCapabilities(bad));
        }
    }
    Ok(())
}

fn validate_amd(p: &AmdPmu) -> Result<(), ConfigError> {
    if p.num_counters > amd::MAX_COUNTERS {
        return Err(ConfigError::TooManyCounters {
            kind: "AMD core",
            requested: p.num_counters,
            max: amd::MAX_COUNTERS,
        });
    }
    if p.perfmon_v2 && !p.core_ext {
        return Err(ConfigError::AmdV2WithoutCoreExt);
    }
    if !p.perfmon_v2 {
        let expected = if p.core_ext {
            amd::CORE_EXT_COUNTERS
        } else {
            amd::LEGACY_COUNTERS
        };
        if p.num_counters != expected {
            return Err(ConfigError::AmdCount {
                expected,
                requested: p.num_counters,
            });
        }
    }
    if p.width != 48 {
        return Err(ConfigError::AmdWidth(p.width));
    }
    Ok(())
}

fn low_bits(n: u32) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// The rules for one layout, precomputed so the MSR hot path is a few compares.
///
/// Build it with [`MsrModel::new`] (validating) or [`MsrModel::new_clamped`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsrModel {
    /// Vendor (`None`: no PMU, every PMU MSR faults).
    pub vendor: Option<Vendor>,
    /// Intel version (0 for AMD; AMD PerfMonV2 is reported as `has_global`).
    pub version: u8,
    /// GP counters.
    pub num_gp: u8,
    /// Fixed counters (Intel only).
    pub num_fixed: u8,
    /// GP counter value mask (2^width - 1).
    pub gp_mask: u64,
    /// Fixed counter value mask.
    pub fixed_mask: u64,
    /// AMD PerfCtrExtCore (addresses 0xc0010200..).
    pub amd_core_ext: bool,
    /// GLOBAL_CTRL / GLOBAL_STATUS / STATUS_RESET exist (Intel v2+, AMD PerfMonV2).
    pub has_global: bool,
    /// GLOBAL_STATUS_SET exists (Intel v4+, AMD PerfMonV2).
    pub has_status_set: bool,
    /// GLOBAL_INUSE exists (Intel v4+).
    pub has_inuse: bool,
    /// IA32_PERF_CAPABILITIES value, if the MSR exists.
    pub perf_capabilities: Option<u64>,
    /// IA32_A_PMCx exist (PERF_CAPABILITIES.FW_WRITES).
    pub full_width_writes: bool,
}

impl MsrModel {
    /// The model for a validated layout.
    pub fn new(cfg: &PmuConfig) -> Result<MsrModel, ConfigError> {
        validate(cfg)?;
        Ok(Self::new_clamped(cfg))
    }

    /// The model for any layout, clamping out-of-range values into what is modelled
    /// (counts to the maxima, widths into 32..=64, Intel version into 1..=5, unsupported
    /// PERF_CAPABILITIES bits dropped). Never panics.
    pub fn new_clamped(cfg: &PmuConfig) -> MsrModel {
        let none = MsrModel {
            vendor: None,
            version: 0,
            num_gp: 0,
            num_fixed: 0,
            gp_mask: 0,
            fixed_mask: 0,
            amd_core_ext: false,
            has_global: false,
            has_status_set: false,
            has_inuse: false,
            perf_capabilities: None,
            full_width_writes: false,
        };
        let width = |w: u8| low_bits(u32::from(w.clamp(32, 64)));
        match cfg {
            PmuConfig::None => none,
            PmuConfig::Intel(p) => {
                let version = p.version.clamp(1, 5);
                let num_fixed = if version == 1 {
                    0
                } else {
                    p.num_fixed.min(intel::MAX_FIXED)
                };
                let caps = p.perf_capabilities.map(|c| c & intel::PERF_CAP_SUPPORTED);
                MsrModel {
                    vendor: Some(Vendor::Intel),
                    version,
                    num_gp: p.num_gp.min(intel::MAX_GP),
                    num_fixed,
                    gp_mask: width(p.gp_width),
                    fixed_mask: width(p.fixed_width),
                    has_global: version >= 2,
                    has_status_set: version >= 4,
                    has_inuse: version >= 4,
                    perf_capabilities: caps,
                    full_width_writes: caps.is_some_and(|c| c & intel::PERF_CAP_FW_WRITES != 0),
                    ..none
                }
            }
            PmuConfig::Amd(p) => {
                let num = if p.perfmon_v2 {
                    p.num_counters.min(amd::MAX_COUNTERS)
                } else if p.core_ext {
                    amd::CORE_EXT_COUNTERS
                } else {
                    amd::LEGACY_COUNTERS
                };
                MsrModel {
                    vendor: Some(Vendor::Amd),
                    num_gp: num,
                    gp_mask: width(p.width),
                    amd_core_ext: p.core_ext || p.perfmon_v2,
                    has_global: p.perfmon_v2,
                    has_status_set: p.perfmon_v2,
                    ..none
                }
            }
        }
    }

    /// Decode `msr` for this layout: `None` if the guest's layout does not have it
    /// (the access must #GP).
    pub fn decode(&self, msr: u32) -> Option<PmuMsr> {
        let vendor = self.vendor?;
        let reg = classify(vendor, msr)?;
        let present = match reg {
            PmuMsr::GpCounter(i) | PmuMsr::GpEventSel(i) => {
                let ext_addr = vendor == Vendor::Amd && msr >= amd::PERF_CTL0_EXT;
                i < self.num_gp && (!ext_addr || self.amd_core_ext)
            }
            PmuMsr::GpCounterFullWidth(i) => self.full_width_writes && i < self.num_gp,
            PmuMsr::FixedCounter(i) => i < self.num_fixed,
            PmuMsr::FixedCtrCtrl => self.version >= 2,
            PmuMsr::PerfCapabilities => self.perf_capabilities.is_some(),
            PmuMsr::PerfMetrics => false,
            PmuMsr::GlobalStatus | PmuMsr::GlobalCtrl | PmuMsr::GlobalStatusReset => {
                self.has_global
            }
            PmuMsr::GlobalStatusSet => self.has_status_set,
            PmuMsr::GlobalInUse => self.has_inuse,
        };
        present.then_some(reg)
    }

    /// GLOBAL_CTRL / STATUS bits that name counters: GP at 0.., fixed at 32...
    pub fn counter_bits(&self) -> u64 {
        low_bits(u32::from(self.num_gp))
            | (low_bits(u32::from(self.num_fixed)) << intel::FIXED_BIT_BASE)
    }

    /// Reserved bits of the event selectors (a write with any set #GPs).
    ///
    /// Intel (SDM §18.2.1.1, §18.2.3): 63:32 reserved (IN_TX/IN_TXCP not offered);
    /// AnyThread (bit 21) reserved before v3. AMD (APM Fig. 13-7): 63:42, 39:36, 21, 19.
    pub fn evtsel_reserved(&self) -> u64 {
        match self.vendor {
            None => u64::MAX,
            Some(Vendor::Intel) => {
                let mut r = 0xffff_ffff_0000_0000;
                if self.version < 3 {
                    r |= intel::EVTSEL_ANY;
                }
                r
            }
            Some(Vendor::Amd) => amd::EVTSEL_RESERVED,
        }
    }

    /// Reserved bits of IA32_FIXED_CTR_CTRL (SDM §18.2.2, Fig. 18-2; AnyThread §18.2.3).
    pub fn fixed_ctrl_reserved(&self) -> u64 {
        let field = if self.version >= 3 { 0xf } else { 0xb };
        let mut allowed = 0u64;
        for i in 0..u32::from(self.num_fixed) {
            allowed |= field << (4 * i);
        }
        !allowed
    }

    /// Reserved bits of GLOBAL_CTRL (bits beyond the counters).
    pub fn global_ctrl_reserved(&self) -> u64 {
        !self.counter_bits()
    }

    /// Bits a STATUS_RESET / STATUS_CLR write may set (others #GP). Intel also accepts
    /// OvfBuf (62) and CondChgd (63), which are architectural clear bits (Fig. 18-4; KVM).
    pub fn status_reset_writable(&self) -> u64 {
        match self.vendor {
            Some(Vendor::Intel) => {
                self.counter_bits() | intel::STATUS_OVF_BUF | intel::STATUS_COND_CHGD
            }
            _ => self.counter_bits(),
        }
    }

    /// Bits a STATUS_SET write may set (others #GP): the counter bits (and Intel's OvfBuf,
    /// §18.2.4.2 Fig. 18-12).
    pub fn status_set_writable(&self) -> u64 {
        match self.vendor {
            Some(Vendor::Intel) => self.counter_bits() | intel::STATUS_OVF_BUF,
            _ => self.counter_bits(),
        }
    }

    /// Value of GLOBAL_CTRL after RESET: every GP counter enabled, fixed disabled
    /// (SDM: so v1 software that ignores GLOBAL_CTRL still counts; KVM does the same).
    pub fn global_ctrl_reset(&self) -> u64 {
        if self.has_global {
            low_bits(u32::from(self.num_gp))
        } else {
            0
        }
    }
}

/// Per-vendor reserved-bit mask for the GP event selectors of `cfg`, shared with the
/// `selector` module so both agree (see [`MsrModel::evtsel_reserved`]).
pub fn evtsel_reserved_mask(cfg: &PmuConfig) -> u64 {
    MsrModel::new_clamped(cfg).evtsel_reserved()
}

/// Every PMU MSR address present in `cfg`'s layout, in ascending order.
pub fn present_msrs(cfg: &PmuConfig) -> Vec<u32> {
    let model = MsrModel::new_clamped(cfg);
    let Some(vendor) = model.vendor else {
        return Vec::new();
    };
    let mut out: Vec<u32> = pmu_msr_ranges(vendor)
        .into_iter()
        .flat_map(|(base, count)| base..base.saturating_add(count))
        .filter(|&m| model.decode(m).is_some())
        .collect();
    out.sort_unstable();
    out
}
