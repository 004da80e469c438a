//! Helpers shared by vpmu's integration tests: the CPUID fixtures of real hosts, guest PMU
//! layouts and a `GuestPmu` under a policy.

#![allow(dead_code)]

use std::sync::Arc;

use kvm_bindings::kvm_cpuid_entry2;
use vpmu::cpuid::parse_cpuid_dump;
use vpmu::guest::GuestPmu;
use vpmu::policy::Policy;
use vpmu::{AmdPmu, IntelPmu, PmuConfig, Vendor};

/// An Intel layout: `gp` general-purpose and `fixed` fixed counters, both 48 bits wide,
/// the 7 architectural events of leaf 0AH all available, PERF_CAPABILITIES `caps`.
pub fn intel_pmu(version: u8, gp: u8, fixed: u8, caps: Option<u64>) -> IntelPmu {
    IntelPmu {
        version,
        num_gp: gp,
        gp_width: 48,
        num_fixed: fixed,
        fixed_width: 48,
        events_unavailable: 0,
        events_len: 7,
        perf_capabilities: caps,
    }
}

/// [`intel_pmu`] as a [`PmuConfig`].
pub fn intel_cfg(version: u8, gp: u8, fixed: u8, caps: Option<u64>) -> PmuConfig {
    PmuConfig::Intel(intel_pmu(version, gp, fixed, caps))
}

/// An AMD layout of `n` 48-bit counters, with or without the core extension and PerfMonV2.
pub fn amd_cfg(core_ext: bool, v2: bool, n: u8) -> PmuConfig {
    PmuConfig::Amd(AmdPmu {
        core_ext,
        perfmon_v2: v2,
        num_counters: n,
        width: 48,
    })
}

/// The layouts the alias tests run on: Intel version 5 with 4 GP and 4 fixed counters and
/// 8 architectural events; AMD with the core extension, PerfMonV2 and 6 counters.
pub fn alias_layout(v: Vendor) -> PmuConfig {
    match v {
        Vendor::Intel => PmuConfig::Intel(IntelPmu {
            events_len: 8,
            ..intel_pmu(5, 4, 4, None)
        }),
        Vendor::Amd => amd_cfg(true, true, 6),
    }
}

/// A guest PMU of layout `cfg` under the policy `toml` (compiled for the layout's vendor
/// and fixed counters).
pub fn guest_pmu(cfg: &PmuConfig, toml: &str) -> GuestPmu {
    let vendor = cfg.vendor().unwrap();
    let n = match cfg {
        PmuConfig::Intel(p) => p.num_fixed,
        _ => 0,
    };
    let policy = Policy::from_toml(toml).unwrap().compile(vendor, n).unwrap();
    GuestPmu::new(cfg, Arc::new(policy))
}

/// Sapphire Rapids (Xeon w7-2475X) CPUID, see the fixture header for the source.
pub const SPR_DUMP: &str = include_str!("../fixtures/intel-sapphire-rapids-xeon-w7-2475x.cpuid");
/// Zen 4 (EPYC 9124) CPUID, see the fixture header for the source.
pub const GENOA_DUMP: &str = include_str!("../fixtures/amd-zen4-epyc-9124.cpuid");

pub fn spr() -> Vec<kvm_cpuid_entry2> {
    parse_cpuid_dump(SPR_DUMP).expect("SPR fixture parses")
}

pub fn genoa() -> Vec<kvm_cpuid_entry2> {
    parse_cpuid_dump(GENOA_DUMP).expect("Genoa fixture parses")
}

pub fn leaf(entries: &[kvm_cpuid_entry2], function: u32) -> Option<kvm_cpuid_entry2> {
    entries
        .iter()
        .copied()
        .find(|e| e.function == function && e.index == 0)
}

/// [`genoa`] without the AMD extensions: PerfCtrExtCore (CPUID 0x80000001 ECX bit 23)
/// cleared and leaf 0x80000022 (PerfMonV2) removed, as a host with legacy counters only.
pub fn genoa_legacy() -> Vec<kvm_cpuid_entry2> {
    let mut e = genoa();
    e.iter_mut()
        .find(|x| x.function == 0x8000_0001)
        .unwrap()
        .ecx &= !(1 << 23);
    e.retain(|x| x.function != 0x8000_0022);
    e
}
