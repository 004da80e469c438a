//! PMU layout as enumerated by CPUID, and the `expect=` cmdline check.
//!
//! Pure code: the guests feed it the real CPUID instruction, the host unit
//! tests feed it canned leaves.

/// Which PMU architecture the guest sees.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// No PMU enumerated.
    None,
    /// Intel architectural performance monitoring (CPUID leaf 0xA).
    Intel,
    /// AMD legacy 4 counters at 0xc0010000.. (no CPUID bit: found by probing).
    AmdLegacy,
    /// AMD PerfCtrExtCore: 6 counters at 0xc0010200.. (CTL even, CTR odd).
    AmdExt,
    /// AMD PerfMonV2: ext counters + GLOBAL_CTL/STATUS at 0xc0000300..
    AmdV2,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Layout {
    pub kind: Kind,
    /// True if the vendor string says AMD/Hygon.
    pub amd_vendor: bool,
    /// Intel: arch perfmon version (1-5+); AMD: 0 legacy, 1 ext, 2 PerfMonV2.
    pub version: u32,
    pub gp: u32,
    pub gp_width: u32,
    pub fixed: u32,
    pub fixed_width: u32,
    /// Intel v5+: bitmap of supported fixed counters (ECX | contiguous EDX count).
    pub fixed_mask: u32,
    /// Intel: EBX bit vector of unavailable architectural events and its length.
    pub events_unavail: u32,
    pub events_len: u32,
    /// CPUID.1:ECX.PDCM (IA32_PERF_CAPABILITIES exists).
    pub pdcm: bool,
}

impl Layout {
    /// No PMU enumerated (yet): every count 0.
    pub const fn none(amd_vendor: bool, pdcm: bool) -> Layout {
        Layout {
            kind: Kind::None,
            amd_vendor,
            version: 0,
            gp: 0,
            gp_width: 0,
            fixed: 0,
            fixed_width: 0,
            fixed_mask: 0,
            events_unavail: 0,
            events_len: 0,
            pdcm,
        }
    }
}

pub type Regs = [u32; 4]; // eax, ebx, ecx, edx

/// Decodes the PMU layout. `cpuid(leaf, subleaf)` returns eax, ebx, ecx, edx.
/// An AMD vendor without PerfCtrExtCore/PerfMonV2 yields [`Kind::AmdLegacy`]
/// with `gp = 4`; whether those counters really exist must be probed.
pub fn detect(cpuid: &dyn Fn(u32, u32) -> Regs) -> Layout {
    let l0 = cpuid(0, 0);
    let max_basic = l0[0];
    // "AuthenticAMD": ebx="Auth" edx="enti" ecx="cAMD"; "HygonGenuine" too.
    let amd_vendor = (l0[1] == 0x6874_7541 && l0[3] == 0x6974_6e65 && l0[2] == 0x444d_4163)
        || (l0[1] == 0x6f67_7948 && l0[3] == 0x6e65_476e && l0[2] == 0x656e_6975);
    let pdcm = max_basic >= 1 && cpuid(1, 0)[2] & (1 << 15) != 0;
    let mut l = Layout::none(amd_vendor, pdcm);
    if max_basic >= 0xa {
        let a = cpuid(0xa, 0);
        let version = a[0] & 0xff;
        if version != 0 {
            l.kind = Kind::Intel;
            l.version = version;
            l.gp = (a[0] >> 8) & 0xff;
            l.gp_width = (a[0] >> 16) & 0xff;
            l.events_len = (a[0] >> 24) & 0xff;
            l.events_unavail = a[1];
            if version >= 2 {
                l.fixed = a[3] & 0x1f;
                l.fixed_width = (a[3] >> 5) & 0xff;
                l.fixed_mask = if l.fixed >= 32 {
                    u32::MAX
                } else {
                    (1u32 << l.fixed) - 1
                };
                if version >= 5 {
                    l.fixed_mask |= a[2];
                }
            }
            return l;
        }
    }
    if !amd_vendor {
        return l;
    }
    let max_ext = cpuid(0x8000_0000, 0)[0];
    let ext = max_ext >= 0x8000_0001 && cpuid(0x8000_0001, 0)[2] & (1 << 23) != 0;
    let v2 = max_ext >= 0x8000_0022 && cpuid(0x8000_0022, 0)[0] & 1 != 0;
    l.gp_width = 48;
    if v2 {
        l.kind = Kind::AmdV2;
        l.version = 2;
        l.gp = cpuid(0x8000_0022, 0)[1] & 0xf;
    } else if ext {
        l.kind = Kind::AmdExt;
        l.version = 1;
        l.gp = 6;
    } else {
        l.kind = Kind::AmdLegacy;
        l.version = 0;
        l.gp = 4;
    }
    l
}

impl Layout {
    pub fn is_intel(&self) -> bool {
        self.kind == Kind::Intel
    }

    pub fn is_amd(&self) -> bool {
        matches!(self.kind, Kind::AmdLegacy | Kind::AmdExt | Kind::AmdV2)
    }

    /// Event-select MSR of general-purpose counter `i`.
    pub fn ctl_msr(&self, i: u32) -> u32 {
        match self.kind {
            Kind::Intel => 0x186 + i,
            Kind::AmdLegacy => 0xc001_0000 + i,
            _ => 0xc001_0200 + 2 * i,
        }
    }

    /// Counter MSR of general-purpose counter `i` (legacy IA32_PMCx on Intel).
    pub fn ctr_msr(&self, i: u32) -> u32 {
        match self.kind {
            Kind::Intel => 0xc1 + i,
            Kind::AmdLegacy => 0xc001_0004 + i,
            _ => 0xc001_0201 + 2 * i,
        }
    }

    pub fn gp_mask(&self) -> u64 {
        mask_bits(self.gp)
    }

    pub fn has_global(&self) -> bool {
        (self.kind == Kind::Intel && self.version >= 2) || self.kind == Kind::AmdV2
    }

    /// Fixed counter `i` is supported (Intel).
    pub fn fixed_ok(&self, i: u32) -> bool {
        i < 32 && self.fixed_mask & (1 << i) != 0
    }

    /// Number of fixed-counter MSRs to consider (highest supported + 1).
    pub fn fixed_span(&self) -> u32 {
        32 - self.fixed_mask.leading_zeros()
    }

    /// The cycles event (event select | umask) for a general-purpose counter.
    pub fn cycles_event(&self) -> u64 {
        if self.kind == Kind::Intel {
            0x3c
        } else {
            0x76
        }
    }

    /// Instructions retired.
    pub fn instructions_event(&self) -> u64 {
        0xc0
    }

    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::None => "none",
            Kind::Intel => "intel",
            Kind::AmdLegacy => "amd-legacy",
            Kind::AmdExt => "amd-ext",
            Kind::AmdV2 => "amd-v2",
        }
    }
}

/// `(1 << n) - 1`, saturating at all ones.
pub fn mask_bits(n: u32) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// Expected layout from `expect=`:
/// `none`, `intel[:v5,gp8,fixed4,w48,fw48]`, `amd[:legacy|ext|v2,gp6]`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Expect {
    pub kind: Option<Kind>,
    /// True for bare `amd`: any of the AMD kinds.
    pub any_amd: bool,
    pub version: Option<u32>,
    pub gp: Option<u32>,
    pub gp_width: Option<u32>,
    pub fixed: Option<u32>,
    pub fixed_width: Option<u32>,
}

pub fn parse_expect(s: &str) -> Option<Expect> {
    let (vendor, rest) = match s.split_once(':') {
        Some((v, r)) => (v, r),
        None => (s, ""),
    };
    let mut e = Expect::default();
    match vendor {
        "none" | "off" => {
            e.kind = Some(Kind::None);
            return if rest.is_empty() { Some(e) } else { None };
        }
        "intel" => e.kind = Some(Kind::Intel),
        "amd" => e.any_amd = true,
        _ => return None,
    }
    for item in rest.split(',').filter(|i| !i.is_empty()) {
        // A number that does not fit a u32 makes the item invalid.
        let num = |p: &str| {
            item.strip_prefix(p)
                .and_then(crate::cmdline::parse_u64)
                .and_then(|v| u32::try_from(v).ok())
        };
        if e.any_amd && item == "legacy" {
            e.kind = Some(Kind::AmdLegacy);
            e.version = Some(0);
        } else if e.any_amd && item == "ext" {
            e.kind = Some(Kind::AmdExt);
            e.version = Some(1);
        } else if e.any_amd && item == "v2" {
            e.kind = Some(Kind::AmdV2);
            e.version = Some(2);
        } else if let Some(v) = num("gp") {
            e.gp = Some(v);
        } else if let Some(v) = num("fixed") {
            e.fixed = Some(v);
        } else if let Some(v) = num("fw") {
            e.fixed_width = Some(v);
        } else if let Some(v) = num("w") {
            e.gp_width = Some(v);
        } else if let Some(v) = num("v") {
            e.version = Some(v);
        } else {
            return None;
        }
    }
    Some(e)
}

impl Expect {
    /// First mismatch as (field, expected, found).
    pub fn check(&self, l: &Layout) -> Result<(), (&'static str, u64, u64)> {
        let kind_code = |k: Kind| k as u64;
        if self.any_amd && !l.is_amd() {
            return Err(("vendor-amd", 1, 0));
        }
        if let Some(k) = self.kind {
            if k != l.kind {
                return Err(("kind", kind_code(k), kind_code(l.kind)));
            }
        }
        let fields: [(&'static str, Option<u32>, u32); 5] = [
            ("version", self.version, l.version),
            ("gp", self.gp, l.gp),
            ("width", self.gp_width, l.gp_width),
            ("fixed", self.fixed, l.fixed),
            ("fixed-width", self.fixed_width, l.fixed_width),
        ];
        for (name, want, got) in fields {
            if let Some(w) = want {
                if w != got {
                    return Err((name, w as u64, got as u64));
                }
            }
        }
        Ok(())
    }
}
