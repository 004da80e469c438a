//! The guest PMU layout: what the guest is told it has (vendor, version, counters, widths).
//!
//! A [`PmuConfig`] is the single description every other module works from: the MSR model
//! (`model`), the register file (`state`), CPUID synthesis (`cpuid`) and the allowlist
//! compiler (`policy`).

use serde::{Deserialize, Serialize};

/// CPU vendor whose PMU architecture the guest sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    /// Intel architectural performance monitoring (CPUID leaf 0xA).
    Intel,
    /// AMD64 performance counters (legacy, core extension, PerfMonV2).
    Amd,
}

/// Intel architectural perfmon layout (SDM vol. 3B 18.2 / CPUID leaf 0xA).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntelPmu {
    /// Architectural perfmon version, 1..=5 (CPUID.0AH:EAX\[7:0\]).
    pub version: u8,
    /// General-purpose counters (CPUID.0AH:EAX\[15:8\]); at most 8 here.
    pub num_gp: u8,
    /// Bit width of the GP counters (CPUID.0AH:EAX\[23:16\]).
    pub gp_width: u8,
    /// Fixed-function counters (CPUID.0AH:EDX\[4:0\]); 0 for version 1.
    pub num_fixed: u8,
    /// Bit width of the fixed counters (CPUID.0AH:EDX\[12:5\]).
    pub fixed_width: u8,
    /// Architectural events reported unavailable (CPUID.0AH:EBX, a set bit = unavailable).
    pub events_unavailable: u32,
    /// Length of the EBX event bit vector (CPUID.0AH:EAX\[31:24\]).
    pub events_len: u8,
    /// IA32_PERF_CAPABILITIES value shown to the guest (only when PDCM is advertised).
    pub perf_capabilities: Option<u64>,
}

/// AMD64 PMU layout (APM vol. 2 13.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmdPmu {
    /// PerfCtrExtCore (CPUID 0x80000001.ECX\[23\]): 6 counters at 0xc0010200.. instead of
    /// the legacy 4 at 0xc0010000/0xc0010004.
    pub core_ext: bool,
    /// PerfMonV2 (CPUID 0x80000022.EAX\[0\]): global control/status MSRs at 0xc0000300...
    pub perfmon_v2: bool,
    /// Number of core counters (4 legacy; up to 6 with core_ext; PerfMonV2 reports it in
    /// CPUID 0x80000022.EBX\[3:0\]).
    pub num_counters: u8,
    /// Counter width in bits (48 on every AMD64 implementation so far).
    pub width: u8,
}

/// The PMU a guest is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "vendor", rename_all = "lowercase")]
pub enum PmuConfig {
    /// No PMU: CPUID advertises none, every PMU MSR faults.
    None,
    /// Intel architectural PMU.
    Intel(IntelPmu),
    /// AMD PMU.
    Amd(AmdPmu),
}

impl PmuConfig {
    /// The vendor of this layout, if there is a PMU at all.
    pub fn vendor(&self) -> Option<Vendor> {
        match self {
            PmuConfig::None => None,
            PmuConfig::Intel(_) => Some(Vendor::Intel),
            PmuConfig::Amd(_) => Some(Vendor::Amd),
        }
    }
}
