//! CPUID and the PMU layout: derive a host's layout from CPUID, write a guest layout into
//! CPUID, and turn an operator's layout request (`--pmu-layout ...`) into a [`PmuConfig`].
//!
//! CPUID sources: Intel SDM vol. 2A CPUID leaf 0AH and 01H:ECX.PDCM\[15\]; AMD APM vol. 3
//! (CPUID Fn8000_0001_ECX\[23\] PerfCtrExtCore, Fn8000_0022 EAX\[0\] PerfMonV2 and
//! EBX\[3:0\] NumPerfCtrCore).

use crate::config::{AmdPmu, IntelPmu, PmuConfig, Vendor};
use crate::model::{self, amd, intel, ConfigError};
use kvm_bindings::{
    kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES,
};
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// CPUID leaf 0: max basic leaf and vendor string.
pub const LEAF_VENDOR: u32 = 0;
/// CPUID leaf 1: feature flags (ECX\[15\] PDCM).
pub const LEAF_FEATURES: u32 = 1;
/// CPUID.01H:ECX bit 15: Perfmon and Debug Capability (IA32_PERF_CAPABILITIES exists).
pub const PDCM_BIT: u32 = 1 << 15;
/// CPUID leaf 0AH: Intel architectural performance monitoring.
pub const LEAF_ARCH_PERFMON: u32 = 0xa;
/// CPUID.0AH:EDX bit 15: AnyThread deprecation (set by v5 parts such as Sapphire Rapids).
pub const ANYTHREAD_DEPRECATED: u32 = 1 << 15;
/// CPUID 0x80000000: max extended leaf.
pub const LEAF_EXT_MAX: u32 = 0x8000_0000;
/// CPUID 0x80000001: extended features (ECX\[23\] PerfCtrExtCore on AMD).
pub const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
/// CPUID.80000001H:ECX bit 23: PerfCtrExtCore.
pub const PERFCTR_CORE_BIT: u32 = 1 << 23;
/// CPUID 0x80000002..4: processor brand string.
pub const LEAF_BRAND0: u32 = 0x8000_0002;
/// CPUID 0x80000022: AMD extended performance monitoring (PerfMonV2).
pub const LEAF_AMD_PERFMON: u32 = 0x8000_0022;
/// CPUID.80000022H:EAX bit 0: PerfMonV2.
pub const PERFMON_V2_BIT: u32 = 1;

fn entry(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    entries.iter().find(|e| {
        e.function == function
            && (e.index == index || e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0)
    })
}

/// The registers (EAX, EBX, ECX, EDX) of leaf `function`, sub-leaf `index`, in `entries`
/// (a sub-leaf only has to match for leaves flagged KVM_CPUID_FLAG_SIGNIFCANT_INDEX).
pub fn lookup(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> Option<[u32; 4]> {
    entry(entries, function, index).map(|e| [e.eax, e.ebx, e.ecx, e.edx])
}

fn regs_to_string(regs: &[u32]) -> String {
    let bytes: Vec<u8> = regs.iter().flat_map(|r| r.to_le_bytes()).collect();
    String::from_utf8_lossy(&bytes)
        .trim_matches(|c: char| c == '\0' || c.is_whitespace())
        .to_string()
}

/// The vendor string of leaf 0 (`GenuineIntel`, `AuthenticAMD`, ...), empty if absent.
pub fn vendor_string(entries: &[kvm_cpuid_entry2]) -> String {
    entry(entries, LEAF_VENDOR, 0)
        .map(|e| regs_to_string(&[e.ebx, e.edx, e.ecx]))
        .unwrap_or_default()
}

/// The leaf-0 vendor string a guest of `vendor`'s PMU architecture is shown.
pub fn vendor_id(vendor: Vendor) -> &'static str {
    match vendor {
        Vendor::Intel => "GenuineIntel",
        Vendor::Amd => "AuthenticAMD",
    }
}

/// Rewrites leaf 0's vendor string (EBX, EDX, ECX) to `vendor`'s.
fn set_vendor(entries: &mut [kvm_cpuid_entry2], vendor: Vendor) {
    let b = vendor_id(vendor).as_bytes();
    let reg = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    if let Some(e) = entries
        .iter_mut()
        .find(|e| e.function == LEAF_VENDOR && e.index == 0)
    {
        (e.ebx, e.edx, e.ecx) = (reg(0), reg(4), reg(8));
    }
}

/// The PMU architecture family of the CPU described by `entries` (Hygon counts as AMD).
pub fn vendor(entries: &[kvm_cpuid_entry2]) -> Option<Vendor> {
    vendor_of(&vendor_string(entries))
}

/// [`vendor`] from leaf 0's vendor registers in string order (EBX, EDX, ECX).
pub fn vendor_from_regs(ebx: u32, edx: u32, ecx: u32) -> Option<Vendor> {
    vendor_of(&regs_to_string(&[ebx, edx, ecx]))
}

fn vendor_of(vendor_string: &str) -> Option<Vendor> {
    match vendor_string {
        "GenuineIntel" => Some(Vendor::Intel),
        "AuthenticAMD" | "HygonGenuine" => Some(Vendor::Amd),
        _ => None,
    }
}

/// The processor brand string (leaves 0x80000002..4), empty if absent.
pub fn brand_string(entries: &[kvm_cpuid_entry2]) -> String {
    let mut regs = Vec::with_capacity(12);
    for leaf in LEAF_BRAND0..LEAF_BRAND0 + 3 {
        match entry(entries, leaf, 0) {
            Some(e) => regs.extend_from_slice(&[e.eax, e.ebx, e.ecx, e.edx]),
            None => return String::new(),
        }
    }
    regs_to_string(&regs)
}

/// Facts about the host PMU that CPUID alone does not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFacts {
    /// KVM's vPMU is on (`kvm.enable_pmu`). When off, KVM zeroes leaf 0AH but cannot hide
    /// AMD's legacy counters in CPUID, so the layout must be forced to "none".
    pub pmu_enabled: bool,
    /// The host's IA32_PERF_CAPABILITIES (KVM feature MSR), if readable.
    pub perf_capabilities: Option<u64>,
}

impl Default for HostFacts {
    fn default() -> Self {
        HostFacts {
            pmu_enabled: true,
            perf_capabilities: None,
        }
    }
}

/// The PMU layout described by `entries` (e.g. KVM_GET_SUPPORTED_CPUID), from CPUID alone:
/// assumes the PMU is enabled and, not knowing IA32_PERF_CAPABILITIES, reports none. AMD
/// always has at least the 4 legacy counters architecturally. See [`host_layout_with`].
pub fn host_layout(entries: &[kvm_cpuid_entry2]) -> PmuConfig {
    host_layout_with(entries, &HostFacts::default())
}

/// The PMU layout described by `entries`, using `facts` for what CPUID cannot say.
///
/// Intel: leaf 0AH (all-zero / version 0 => no PMU). AMD: 4 legacy counters, 6 with
/// PerfCtrExtCore, CPUID 0x80000022.EBX\[3:0\] with PerfMonV2, all 48 bits wide. Counts
/// beyond what the model supports are clamped to it (e.g. an Intel v6 host reads as v5).
pub fn host_layout_with(entries: &[kvm_cpuid_entry2], facts: &HostFacts) -> PmuConfig {
    if !facts.pmu_enabled {
        return PmuConfig::None;
    }
    match vendor(entries) {
        None => PmuConfig::None,
        Some(Vendor::Intel) => intel_layout(entries, facts),
        Some(Vendor::Amd) => amd_layout(entries),
    }
}

fn intel_layout(entries: &[kvm_cpuid_entry2], facts: &HostFacts) -> PmuConfig {
    let max_basic = entry(entries, LEAF_VENDOR, 0).map_or(0, |e| e.eax);
    let Some(a) = entry(entries, LEAF_ARCH_PERFMON, 0).filter(|_| max_basic >= LEAF_ARCH_PERFMON)
    else {
        return PmuConfig::None;
    };
    let version = (a.eax & 0xff) as u8;
    if version == 0 {
        return PmuConfig::None;
    }
    let version = version.min(5);
    let (num_fixed, fixed_width) = if version >= 2 {
        let mut n = a.edx & 0x1f;
        if version >= 5 && a.ecx != 0 {
            // v5: ECX is a bitmap of fixed counters; only a contiguous prefix is modelled.
            let bitmap = a.ecx | ((1u32 << n) - 1);
            n = bitmap.trailing_ones();
        }
        (
            u8::try_from(n).map_or(intel::MAX_FIXED, |n| n.min(intel::MAX_FIXED)),
            ((a.edx >> 5) & 0xff) as u8,
        )
    } else {
        (0, 0)
    };
    let pdcm = entry(entries, LEAF_FEATURES, 0).is_some_and(|e| e.ecx & PDCM_BIT != 0);
    PmuConfig::Intel(IntelPmu {
        version,
        num_gp: (((a.eax >> 8) & 0xff) as u8).min(intel::MAX_GP),
        gp_width: ((a.eax >> 16) & 0xff) as u8,
        num_fixed,
        fixed_width,
        events_unavailable: a.ebx,
        events_len: (a.eax >> 24) as u8,
        perf_capabilities: if pdcm {
            facts
                .perf_capabilities
                .map(|c| c & intel::PERF_CAP_SUPPORTED)
        } else {
            None
        },
    })
}

fn amd_layout(entries: &[kvm_cpuid_entry2]) -> PmuConfig {
    let max_ext = entry(entries, LEAF_EXT_MAX, 0).map_or(0, |e| e.eax);
    let core_ext = max_ext >= LEAF_EXT_FEATURES
        && entry(entries, LEAF_EXT_FEATURES, 0).is_some_and(|e| e.ecx & PERFCTR_CORE_BIT != 0);
    let v2 = if max_ext >= LEAF_AMD_PERFMON {
        entry(entries, LEAF_AMD_PERFMON, 0).filter(|e| e.eax & PERFMON_V2_BIT != 0)
    } else {
        None
    };
    let (perfmon_v2, num_counters) = match v2 {
        Some(e) => (true, ((e.ebx & 0xf) as u8).min(amd::MAX_COUNTERS)),
        None if core_ext => (false, amd::CORE_EXT_COUNTERS),
        None => (false, amd::LEGACY_COUNTERS),
    };
    PmuConfig::Amd(AmdPmu {
        // PerfMonV2 counters live at the core-extension addresses.
        core_ext: core_ext || perfmon_v2,
        perfmon_v2,
        num_counters,
        width: 48,
    })
}

fn find_mut(
    entries: &mut [kvm_cpuid_entry2],
    function: u32,
    index: u32,
) -> Option<&mut kvm_cpuid_entry2> {
    entries
        .iter_mut()
        .find(|e| e.function == function && e.index == index)
}

fn upsert(entries: &mut Vec<kvm_cpuid_entry2>, function: u32) -> &mut kvm_cpuid_entry2 {
    let pos = match entries
        .iter()
        .position(|e| e.function == function && e.index == 0)
    {
        Some(p) => p,
        None => {
            entries.push(kvm_cpuid_entry2 {
                function,
                ..Default::default()
            });
            entries.len() - 1
        }
    };
    &mut entries[pos]
}

fn zero(entries: &mut [kvm_cpuid_entry2], function: u32) {
    if let Some(e) = find_mut(entries, function, 0) {
        e.eax = 0;
        e.ebx = 0;
        e.ecx = 0;
        e.edx = 0;
    }
}

fn ecx(e: &mut kvm_cpuid_entry2) -> &mut u32 {
    &mut e.ecx
}

fn set_bit(
    entries: &mut [kvm_cpuid_entry2],
    function: u32,
    bit: u32,
    on: bool,
    reg: fn(&mut kvm_cpuid_entry2) -> &mut u32,
) {
    if let Some(e) = find_mut(entries, function, 0) {
        let r = reg(e);
        if on {
            *r |= bit;
        } else {
            *r &= !bit;
        }
    }
}

fn raise_max(entries: &mut [kvm_cpuid_entry2], max_leaf: u32, needed: u32) {
    if let Some(e) = find_mut(entries, max_leaf, 0) {
        e.eax = e.eax.max(needed);
    }
}

/// Leaf 0AH register values for an Intel layout: (EAX, EBX, ECX, EDX).
pub fn intel_leaf_0a(p: &IntelPmu) -> (u32, u32, u32, u32) {
    let eax = u32::from(p.version)
        | (u32::from(p.num_gp) << 8)
        | (u32::from(p.gp_width) << 16)
        | (u32::from(p.events_len) << 24);
    let ecx = if p.version >= 5 {
        (1u32 << p.num_fixed.min(31)) - 1
    } else {
        0
    };
    let edx = if p.version >= 2 {
        u32::from(p.num_fixed & 0x1f)
            | (u32::from(p.fixed_width) << 5)
            | if p.version >= 5 {
                ANYTHREAD_DEPRECATED
            } else {
                0
            }
    } else {
        0
    };
    (eax, p.events_unavailable, ecx, edx)
}

/// Write `cfg` into guest CPUID: leaf 0AH (Intel layout; zeroed for none/AMD), CPUID.01H:
/// ECX.PDCM iff IA32_PERF_CAPABILITIES is offered, 0x80000001.ECX\[23\] PerfCtrExtCore and
/// leaf 0x80000022 (added if missing, with the max extended leaf raised to reach it).
/// Leaves the guest's layout does not use are zeroed, never left describing the host.
///
/// A layout of the other vendor than `entries` describes (only ever allowed for the
/// userspace vPMU on a host without a hardware PMU, see [`resolve_with_vendor`]) also
/// rewrites the leaf-0 vendor string, so the guest discovers the PMU it is given: a guest
/// reading `GenuineIntel` never looks for AMD's counters. Hygon stays Hygon for AMD layouts.
pub fn apply(cfg: &PmuConfig, entries: &mut Vec<kvm_cpuid_entry2>) {
    if let Some(want) = cfg.vendor() {
        if vendor(entries).is_some_and(|have| have != want) {
            set_vendor(entries, want);
        }
    }
    match cfg {
        PmuConfig::Intel(p) => {
            let (a, b, c, d) = intel_leaf_0a(p);
            let e = upsert(entries, LEAF_ARCH_PERFMON);
            (e.eax, e.ebx, e.ecx, e.edx) = (a, b, c, d);
            raise_max(entries, LEAF_VENDOR, LEAF_ARCH_PERFMON);
            set_bit(
                entries,
                LEAF_FEATURES,
                PDCM_BIT,
                p.perf_capabilities.is_some(),
                ecx,
            );
            set_bit(entries, LEAF_EXT_FEATURES, PERFCTR_CORE_BIT, false, ecx);
            zero(entries, LEAF_AMD_PERFMON);
        }
        PmuConfig::Amd(p) => {
            zero(entries, LEAF_ARCH_PERFMON);
            set_bit(entries, LEAF_FEATURES, PDCM_BIT, false, ecx);
            let core_ext = p.core_ext || p.perfmon_v2;
            if core_ext {
                upsert(entries, LEAF_EXT_FEATURES);
                raise_max(entries, LEAF_EXT_MAX, LEAF_EXT_FEATURES);
            }
            set_bit(entries, LEAF_EXT_FEATURES, PERFCTR_CORE_BIT, core_ext, ecx);
            if p.perfmon_v2 {
                let e = upsert(entries, LEAF_AMD_PERFMON);
                e.eax = PERFMON_V2_BIT;
                e.ebx = u32::from(p.num_counters & 0xf);
                e.ecx = 0;
                e.edx = 0;
                raise_max(entries, LEAF_EXT_MAX, LEAF_AMD_PERFMON);
            } else {
                zero(entries, LEAF_AMD_PERFMON);
            }
        }
        PmuConfig::None => {
            zero(entries, LEAF_ARCH_PERFMON);
            set_bit(entries, LEAF_FEATURES, PDCM_BIT, false, ecx);
            set_bit(entries, LEAF_EXT_FEATURES, PERFCTR_CORE_BIT, false, ecx);
            zero(entries, LEAF_AMD_PERFMON);
        }
    }
}

/// CPUID synthesis failure.
#[derive(Debug, Error)]
pub enum CpuidError {
    /// Too many entries for KVM_SET_CPUID2.
    #[error("CPUID has {0} entries, more than KVM's maximum of {KVM_MAX_CPUID_ENTRIES}")]
    TooManyEntries(usize),
    /// The FAM wrapper refused the entries.
    #[error("building kvm_cpuid2: {0}")]
    Fam(String),
    /// A line of a CPUID dump did not parse.
    #[error("CPUID dump line {line}: {reason}: {text:?}")]
    Dump {
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        reason: &'static str,
        /// The line.
        text: String,
    },
}

/// [`apply`] on a `kvm_bindings::CpuId`.
pub fn apply_cpuid(cfg: &PmuConfig, cpuid: &mut CpuId) -> Result<(), CpuidError> {
    let mut v = cpuid.as_slice().to_vec();
    apply(cfg, &mut v);
    if v.len() > KVM_MAX_CPUID_ENTRIES {
        return Err(CpuidError::TooManyEntries(v.len()));
    }
    *cpuid = CpuId::from_entries(&v).map_err(|e| CpuidError::Fam(format!("{e:?}")))?;
    Ok(())
}

/// Parse a textual CPUID dump in the AIDA64 / InstLatx64 / libcpuid-test format, one leaf
/// per line: `CPUID 0000000A: 08300805-00000000-0000000F-00008604 [SL 00]`. Only the first
/// logical CPU's block is read; lines starting with `#` and other lines are ignored.
pub fn parse_cpuid_dump(text: &str) -> Result<Vec<kvm_cpuid_entry2>, CpuidError> {
    let mut out = Vec::new();
    let mut blocks = 0;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with("------[") {
            blocks += 1;
            if blocks > 1 {
                break;
            }
            continue;
        }
        let Some(rest) = line.strip_prefix("CPUID ") else {
            continue;
        };
        let bad = |reason| CpuidError::Dump {
            line: n + 1,
            reason,
            text: raw.to_string(),
        };
        let (leaf, rest) = rest.split_once(':').ok_or_else(|| bad("missing ':'"))?;
        let function = u32::from_str_radix(leaf.trim(), 16).map_err(|_| bad("bad leaf number"))?;
        let rest = rest.trim_start();
        let regs_text = rest.get(..35).ok_or_else(|| bad("short register list"))?;
        let mut regs = [0u32; 4];
        let mut parts = regs_text.split('-');
        for r in regs.iter_mut() {
            let p = parts.next().ok_or_else(|| bad("fewer than 4 registers"))?;
            *r = u32::from_str_radix(p, 16).map_err(|_| bad("bad register value"))?;
        }
        let tail = &rest[35..];
        let (index, flags) = match tail.find("[SL ") {
            Some(p) => {
                let sl = tail.get(p + 4..p + 6).ok_or_else(|| bad("bad sub-leaf"))?;
                let idx = u32::from_str_radix(sl, 16).map_err(|_| bad("bad sub-leaf"))?;
                (idx, KVM_CPUID_FLAG_SIGNIFCANT_INDEX)
            }
            None => (0, 0),
        };
        out.push(kvm_cpuid_entry2 {
            function,
            index,
            flags,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        });
    }
    Ok(out)
}

/// The layout a `userspace`-mode guest gets when it asks for `host` on a host with no
/// usable PMU (or when it asks for a vendor the host PMU cannot supply):
///
/// - Intel: architectural perfmon v5, 8 GP + 4 fixed counters, all 48 bits, 8 architectural
///   events all available, IA32_PERF_CAPABILITIES = FW_WRITES (full-width counter writes).
/// - AMD: PerfCtrExtCore + PerfMonV2, 6 counters, 48 bits.
pub fn default_emulated_layout(vendor: Vendor) -> PmuConfig {
    match vendor {
        Vendor::Intel => PmuConfig::Intel(IntelPmu {
            version: 5,
            num_gp: 8,
            gp_width: 48,
            num_fixed: 4,
            fixed_width: 48,
            events_unavailable: 0,
            events_len: 8,
            perf_capabilities: Some(intel::PERF_CAP_FW_WRITES),
        }),
        Vendor::Amd => PmuConfig::Amd(AmdPmu {
            core_ext: true,
            perfmon_v2: true,
            num_counters: 6,
            width: 48,
        }),
    }
}

/// Overrides for an Intel layout; `None` fields come from the base layout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntelRequest {
    /// `version=N`.
    pub version: Option<u8>,
    /// `gp=N`.
    pub gp: Option<u8>,
    /// `fixed=N`.
    pub fixed: Option<u8>,
    /// `gp-width=N`.
    pub gp_width: Option<u8>,
    /// `fixed-width=N`.
    pub fixed_width: Option<u8>,
    /// `fw-writes` / `no-fw-writes` (both imply PDCM).
    pub fw_writes: Option<bool>,
    /// `no-pdcm`: no IA32_PERF_CAPABILITIES at all.
    pub no_pdcm: bool,
    /// `events-len=N`.
    pub events_len: Option<u8>,
    /// `events-unavailable=MASK`.
    pub events_unavailable: Option<u32>,
}

/// Overrides for an AMD layout; `None` fields come from the base layout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AmdRequest {
    /// `gp=N` (only PerfMonV2 can advertise a count other than 4 / 6).
    pub gp: Option<u8>,
    /// `width=N`.
    pub width: Option<u8>,
    /// `core-ext` / `no-core-ext`.
    pub core_ext: Option<bool>,
    /// `perfmon-v2` / `no-perfmon-v2`.
    pub perfmon_v2: Option<bool>,
}

/// An operator's PMU layout request. Grammar (see `docs/PMU-MODEL.md`):
///
/// ```text
/// request   = "host" | "none" | "amd-legacy" | intel | amd
/// intel     = "intel" [ ":" intel-opt *( "," intel-opt ) ]
/// intel-opt = "version=" N | "gp=" N | "fixed=" N | "gp-width=" N | "fixed-width=" N
///           | "fw-writes" | "no-fw-writes" | "no-pdcm" | "events-len=" N
///           | "events-unavailable=" N
/// amd       = "amd" [ ":" amd-opt *( "," amd-opt ) ]
/// amd-opt   = "gp=" N | "width=" N | "core-ext" | "no-core-ext" | "perfmon-v2"
///           | "no-perfmon-v2"
/// N         = decimal | "0x" hex
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LayoutRequest {
    /// The layout KVM offers on this host (the default): [`crate::discovery::HostPmu::layout`]
    /// from KVM_GET_SUPPORTED_CPUID, which KVM caps at perfmon v2, 3 fixed and 8 (Intel) /
    /// 6 (AMD) GP counters. It is not necessarily the host PMU's own layout: under the
    /// mediated vPMU, PERF_GLOBAL_* and RDPMC are passed through only where the guest's
    /// counts (and, for RDPMC, widths) equal the host perf PMU's, which a host with 4 fixed
    /// counters (Ice Lake and later) never allows; see
    /// [`crate::mediated::mediated_intercepts`].
    #[default]
    Host,
    /// No PMU.
    None,
    /// An Intel layout: the base (host's, or the default emulated one) with overrides.
    Intel(IntelRequest),
    /// An AMD layout.
    Amd(AmdRequest),
}

/// Why a layout request cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LayoutError {
    /// Unknown head word.
    #[error(
        "unknown PMU layout {0:?} (expected host, none, intel[:...], amd[:...] or amd-legacy)"
    )]
    UnknownLayout(String),
    /// Unknown option for the vendor.
    #[error("unknown {vendor} layout option {option:?}")]
    UnknownOption {
        /// `intel` or `amd`.
        vendor: &'static str,
        /// The option.
        option: String,
    },
    /// An option given twice.
    #[error("layout option {0:?} given more than once")]
    Duplicate(String),
    /// A bad number.
    #[error("layout option {option}: {value:?} is not a number in range")]
    BadNumber {
        /// The option.
        option: String,
        /// Its value.
        value: String,
    },
    /// Requested a vendor other than the host's.
    #[error("a {requested:?} PMU layout was requested but the host CPU is {host:?} with a PMU KVM can use; the guest's PMU must match the host's vendor here (another vendor's layout is emulated only by --pmu userspace on a host without a hardware PMU)")]
    VendorMismatch {
        /// Asked for.
        requested: Vendor,
        /// The host's.
        host: Vendor,
    },
    /// The host has no PMU to base the layout on.
    #[error("the host has no PMU that KVM can give a guest (requested {requested}); only `--pmu userspace` can emulate one")]
    NoHostPmu {
        /// What was requested.
        requested: String,
    },
    /// The host vendor is unknown and the request needs it.
    #[error("cannot pick a default PMU layout: the host CPU vendor is unknown")]
    UnknownVendor,
    /// More than the host has.
    #[error("{what}: requested {requested}, the host has {host}; a layout larger than the host's is only possible in userspace mode")]
    ExceedsHost {
        /// Which property.
        what: &'static str,
        /// Asked for.
        requested: u64,
        /// The host's.
        host: u64,
    },
    /// Outside the model.
    #[error(transparent)]
    Unsupported(#[from] ConfigError),
}

fn parse_num<T: TryFrom<u64>>(option: &str, value: &str) -> Result<T, LayoutError> {
    let bad = || LayoutError::BadNumber {
        option: option.to_string(),
        value: value.to_string(),
    };
    let v = match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse::<u64>(),
    }
    .map_err(|_| bad())?;
    T::try_from(v).map_err(|_| bad())
}

fn set_once<T>(slot: &mut Option<T>, v: T, option: &str) -> Result<(), LayoutError> {
    if slot.is_some() {
        return Err(LayoutError::Duplicate(option.to_string()));
    }
    *slot = Some(v);
    Ok(())
}

fn options(rest: Option<&str>) -> impl Iterator<Item = (&str, Option<&str>)> {
    rest.into_iter()
        .flat_map(|r| r.split(','))
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(|o| match o.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (o, None),
        })
}

impl FromStr for LayoutRequest {
    type Err = LayoutError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (head, rest) = match s.split_once(':') {
            Some((h, r)) => (h.trim(), Some(r)),
            None => (s, None),
        };
        match head {
            "host" | "none" | "amd-legacy" if rest.is_some_and(|r| !r.trim().is_empty()) => {
                Err(LayoutError::UnknownOption {
                    vendor: if head == "amd-legacy" { "amd" } else { "intel" },
                    option: rest.unwrap_or_default().to_string(),
                })
            }
            "host" => Ok(LayoutRequest::Host),
            "none" => Ok(LayoutRequest::None),
            "amd-legacy" => Ok(LayoutRequest::Amd(AmdRequest {
                gp: Some(amd::LEGACY_COUNTERS),
                width: None,
                core_ext: Some(false),
                perfmon_v2: Some(false),
            })),
            "intel" => {
                let mut r = IntelRequest::default();
                for (k, v) in options(rest) {
                    let unknown = || LayoutError::UnknownOption {
                        vendor: "intel",
                        option: k.to_string(),
                    };
                    match (k, v) {
                        ("version", Some(v)) => set_once(&mut r.version, parse_num(k, v)?, k)?,
                        ("gp", Some(v)) => set_once(&mut r.gp, parse_num(k, v)?, k)?,
                        ("fixed", Some(v)) => set_once(&mut r.fixed, parse_num(k, v)?, k)?,
                        ("gp-width", Some(v)) => set_once(&mut r.gp_width, parse_num(k, v)?, k)?,
                        ("fixed-width", Some(v)) => {
                            set_once(&mut r.fixed_width, parse_num(k, v)?, k)?
                        }
                        ("events-len", Some(v)) => {
                            set_once(&mut r.events_len, parse_num(k, v)?, k)?
                        }
                        ("events-unavailable", Some(v)) => {
                            set_once(&mut r.events_unavailable, parse_num(k, v)?, k)?
                        }
                        ("fw-writes", None) => set_once(&mut r.fw_writes, true, k)?,
                        ("no-fw-writes", None) => set_once(&mut r.fw_writes, false, k)?,
                        ("no-pdcm", None) => {
                            if r.no_pdcm {
                                return Err(LayoutError::Duplicate(k.to_string()));
                            }
                            r.no_pdcm = true
                        }
                        _ => return Err(unknown()),
                    }
                }
                Ok(LayoutRequest::Intel(r))
            }
            "amd" => {
                let mut r = AmdRequest::default();
                for (k, v) in options(rest) {
                    match (k, v) {
                        ("gp", Some(v)) => set_once(&mut r.gp, parse_num(k, v)?, k)?,
                        ("width", Some(v)) => set_once(&mut r.width, parse_num(k, v)?, k)?,
                        ("core-ext", None) => set_once(&mut r.core_ext, true, "core-ext")?,
                        ("no-core-ext", None) => set_once(&mut r.core_ext, false, "core-ext")?,
                        ("perfmon-v2", None) => set_once(&mut r.perfmon_v2, true, "perfmon-v2")?,
                        ("no-perfmon-v2", None) => {
                            set_once(&mut r.perfmon_v2, false, "perfmon-v2")?
                        }
                        _ => {
                            return Err(LayoutError::UnknownOption {
                                vendor: "amd",
                                option: k.to_string(),
                            })
                        }
                    }
                }
                Ok(LayoutRequest::Amd(r))
            }
            other => Err(LayoutError::UnknownLayout(other.to_string())),
        }
    }
}

impl fmt::Display for LayoutRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut opts: Vec<String> = Vec::new();
        let mut num = |name: &str, v: Option<u64>| {
            if let Some(v) = v {
                opts.push(format!("{name}={v}"));
            }
        };
        match self {
            LayoutRequest::Host => return f.write_str("host"),
            LayoutRequest::None => return f.write_str("none"),
            LayoutRequest::Intel(r) => {
                num("version", r.version.map(u64::from));
                num("gp", r.gp.map(u64::from));
                num("fixed", r.fixed.map(u64::from));
                num("gp-width", r.gp_width.map(u64::from));
                num("fixed-width", r.fixed_width.map(u64::from));
                num("events-len", r.events_len.map(u64::from));
                num("events-unavailable", r.events_unavailable.map(u64::from));
                match r.fw_writes {
                    Some(true) => opts.push("fw-writes".into()),
                    Some(false) => opts.push("no-fw-writes".into()),
                    None => {}
                }
                if r.no_pdcm {
                    opts.push("no-pdcm".into());
                }
                f.write_str("intel")?;
            }
            LayoutRequest::Amd(r) => {
                num("gp", r.gp.map(u64::from));
                num("width", r.width.map(u64::from));
                for (flag, name) in [(r.core_ext, "core-ext"), (r.perfmon_v2, "perfmon-v2")] {
                    match flag {
                        Some(true) => opts.push(name.into()),
                        Some(false) => opts.push(format!("no-{name}")),
                        None => {}
                    }
                }
                f.write_str("amd")?;
            }
        }
        if !opts.is_empty() {
            write!(f, ":{}", opts.join(","))?;
        }
        Ok(())
    }
}

fn normalize(cfg: &PmuConfig) -> PmuConfig {
    match cfg {
        PmuConfig::Intel(p) => PmuConfig::Intel(IntelPmu {
            perf_capabilities: p.perf_capabilities.map(|c| c & intel::PERF_CAP_SUPPORTED),
            ..p.clone()
        }),
        other => other.clone(),
    }
}

/// [`resolve_with_vendor`] with the vendor taken from `host`.
pub fn resolve(
    req: &LayoutRequest,
    host: &PmuConfig,
    may_exceed_host: bool,
) -> Result<PmuConfig, LayoutError> {
    resolve_with_vendor(req, host.vendor(), host, may_exceed_host)
}

/// Turn a request into a layout.
///
/// - `host`: the host layout KVM offers ([`crate::discovery::HostPmu::layout`], with
///   IA32_PERF_CAPABILITIES reduced to what is modelled).
///   With no host PMU: an error, unless `may_exceed_host` (userspace mode), which gets
///   [`default_emulated_layout`] for `host_vendor`.
/// - `intel:...` / `amd:...`: the base layout (the host's, or the default emulated one when
///   the host has none and `may_exceed_host`) with the given overrides. Fewer counters,
///   narrower counters, a lower version, or dropped features are always allowed; anything
///   beyond the host's is an error unless `may_exceed_host`.
/// - The vendor must be the host CPU's vendor.
pub fn resolve_with_vendor(
    req: &LayoutRequest,
    host_vendor: Option<Vendor>,
    host: &PmuConfig,
    may_exceed_host: bool,
) -> Result<PmuConfig, LayoutError> {
    let vendor = host.vendor().or(host_vendor);
    let no_host = || LayoutError::NoHostPmu {
        requested: req.to_string(),
    };
    let cfg = match req {
        LayoutRequest::None => return Ok(PmuConfig::None),
        LayoutRequest::Host => match host {
            PmuConfig::None if may_exceed_host => {
                default_emulated_layout(vendor.ok_or(LayoutError::UnknownVendor)?)
            }
            PmuConfig::None => return Err(no_host()),
            h => normalize(h),
        },
        LayoutRequest::Intel(r) => {
            check_vendor(Vendor::Intel, vendor)?;
            let base = match host {
                PmuConfig::Intel(p) => p.clone(),
                _ if may_exceed_host => match default_emulated_layout(Vendor::Intel) {
                    PmuConfig::Intel(p) => p,
                    _ => return Err(LayoutError::UnknownVendor),
                },
                _ => return Err(no_host()),
            };
            PmuConfig::Intel(apply_intel(r, &base))
        }
        LayoutRequest::Amd(r) => {
            check_vendor(Vendor::Amd, vendor)?;
            let base = match host {
                PmuConfig::Amd(p) => p.clone(),
                _ if may_exceed_host => match default_emulated_layout(Vendor::Amd) {
                    PmuConfig::Amd(p) => p,
                    _ => return Err(LayoutError::UnknownVendor),
                },
                _ => return Err(no_host()),
            };
            PmuConfig::Amd(apply_amd(r, &base))
        }
    };
    model::validate(&cfg)?;
    if !may_exceed_host {
        within_host(&cfg, host)?;
    }
    Ok(cfg)
}

fn check_vendor(requested: Vendor, host: Option<Vendor>) -> Result<(), LayoutError> {
    match host {
        Some(h) if h != requested => Err(LayoutError::VendorMismatch { requested, host: h }),
        _ => Ok(()),
    }
}

fn apply_intel(r: &IntelRequest, base: &IntelPmu) -> IntelPmu {
    let version = r.version.unwrap_or(base.version);
    let num_fixed = match r.fixed {
        Some(n) => n,
        None if version < 2 => 0,
        None => base.num_fixed,
    };
    let base_caps = base
        .perf_capabilities
        .map(|c| c & intel::PERF_CAP_SUPPORTED);
    let perf_capabilities = if r.no_pdcm {
        None
    } else {
        match r.fw_writes {
            Some(true) => Some(base_caps.unwrap_or(0) | intel::PERF_CAP_FW_WRITES),
            Some(false) => Some(base_caps.unwrap_or(0) & !intel::PERF_CAP_FW_WRITES),
            None => base_caps,
        }
    };
    IntelPmu {
        version,
        num_gp: r.gp.unwrap_or(base.num_gp),
        gp_width: r.gp_width.unwrap_or(base.gp_width),
        num_fixed,
        // v1 has no fixed counters and CPUID.0AH:EDX is reserved: no width either.
        fixed_width: if version < 2 {
            0
        } else {
            r.fixed_width.unwrap_or(base.fixed_width)
        },
        events_unavailable: r.events_unavailable.unwrap_or(base.events_unavailable),
        events_len: r.events_len.unwrap_or(base.events_len),
        perf_capabilities,
    }
}

fn apply_amd(r: &AmdRequest, base: &AmdPmu) -> AmdPmu {
    let perfmon_v2 = r.perfmon_v2.unwrap_or(base.perfmon_v2);
    // PerfMonV2 implies the core-extension MSRs.
    let core_ext = r.core_ext.unwrap_or(base.core_ext || perfmon_v2);
    let num_counters = match r.gp {
        Some(n) => n,
        None if perfmon_v2 => base.num_counters,
        None if core_ext => amd::CORE_EXT_COUNTERS,
        None => amd::LEGACY_COUNTERS,
    };
    AmdPmu {
        core_ext,
        perfmon_v2,
        num_counters,
        width: r.width.unwrap_or(base.width),
    }
}

fn exceeds(what: &'static str, requested: u64, host: u64) -> Result<(), LayoutError> {
    if requested > host {
        Err(LayoutError::ExceedsHost {
            what,
            requested,
            host,
        })
    } else {
        Ok(())
    }
}

fn within_host(cfg: &PmuConfig, host: &PmuConfig) -> Result<(), LayoutError> {
    match (cfg, host) {
        (PmuConfig::None, _) => Ok(()),
        (PmuConfig::Intel(c), PmuConfig::Intel(h)) => {
            exceeds("perfmon version", c.version.into(), h.version.into())?;
            exceeds("general-purpose counters", c.num_gp.into(), h.num_gp.into())?;
            exceeds("fixed counters", c.num_fixed.into(), h.num_fixed.into())?;
            if c.num_gp > 0 {
                exceeds(
                    "general-purpose counter width",
                    c.gp_width.into(),
                    h.gp_width.into(),
                )?;
            }
            if c.num_fixed > 0 {
                exceeds(
                    "fixed counter width",
                    c.fixed_width.into(),
                    h.fixed_width.into(),
                )?;
            }
            exceeds(
                "architectural event vector length",
                c.events_len.into(),
                h.events_len.into(),
            )?;
            let len = u32::from(c.events_len.min(32));
            let mask = if len >= 32 {
                u32::MAX
            } else {
                (1u32 << len) - 1
            };
            let made_available = h.events_unavailable & !c.events_unavailable & mask;
            exceeds(
                "architectural events the host lacks (EBX bits)",
                made_available.into(),
                0,
            )?;
            let host_caps = h.perf_capabilities.map(|x| x & intel::PERF_CAP_SUPPORTED);
            match (c.perf_capabilities, host_caps) {
                (Some(_), None) => exceeds("IA32_PERF_CAPABILITIES (PDCM)", 1, 0),
                (Some(cc), Some(hc)) => exceeds("IA32_PERF_CAPABILITIES bits", cc & !hc, 0),
                _ => Ok(()),
            }
        }
        (PmuConfig::Amd(c), PmuConfig::Amd(h)) => {
            exceeds(
                "PerfCtrExtCore",
                c.core_ext.into(),
                (h.core_ext || h.perfmon_v2).into(),
            )?;
            exceeds("PerfMonV2", c.perfmon_v2.into(), h.perfmon_v2.into())?;
            exceeds(
                "core counters",
                c.num_counters.into(),
                h.num_counters.into(),
            )?;
            exceeds("counter width", c.width.into(), h.width.into())
        }
        (c, _) => Err(LayoutError::NoHostPmu {
            requested: format!("{c:?}"),
        }),
    }
}
