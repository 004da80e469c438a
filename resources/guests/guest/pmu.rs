//! Guest-side PMU helpers (CPL0): detection, describing the layout, and a
//! single-counter cycles sampler used by the demo and bench guests.

use crate::layout::{self, Kind, Layout};
use crate::rt;

pub const EVTSEL_USR: u64 = 1 << 16;
pub const EVTSEL_OS: u64 = 1 << 17;
pub const EVTSEL_INT: u64 = 1 << 20;
pub const EVTSEL_EN: u64 = 1 << 22;

pub const IA32_PERF_CAPABILITIES: u32 = 0x345;
pub const IA32_FIXED_CTR0: u32 = 0x309;
pub const IA32_FIXED_CTR_CTRL: u32 = 0x38d;
pub const IA32_PERF_GLOBAL_STATUS: u32 = 0x38e;
pub const IA32_PERF_GLOBAL_CTRL: u32 = 0x38f;
pub const IA32_PERF_GLOBAL_OVF_CTRL: u32 = 0x390;
pub const IA32_PERF_GLOBAL_STATUS_SET: u32 = 0x391;
pub const IA32_A_PMC0: u32 = 0x4c1;
pub const AMD_GLOBAL_STATUS: u32 = 0xc000_0300;
pub const AMD_GLOBAL_CTL: u32 = 0xc000_0301;
pub const AMD_GLOBAL_STATUS_CLR: u32 = 0xc000_0302;
pub const AMD_GLOBAL_STATUS_SET: u32 = 0xc000_0303;

/// CPUID-based detection; an AMD vendor without extension bits is probed the
/// way Linux does (a legacy event select must hold a written value).
pub fn detect() -> Layout {
    let mut l = layout::detect(&rt::cpuid);
    if l.kind == Kind::AmdLegacy && !probe_amd_legacy() {
        l.kind = Kind::None;
        l.gp = 0;
        l.gp_width = 0;
    }
    l
}

fn probe_amd_legacy() -> bool {
    let msr = 0xc001_0000;
    let probe = 0x76 | EVTSEL_USR; // not enabled
    if rt::wrmsr_safe(msr, probe).is_err() {
        return false;
    }
    let ok = rt::rdmsr_safe(msr) == Ok(probe);
    let _ = rt::wrmsr_safe(msr, 0);
    ok
}

/// One-line description, e.g. `intel arch perfmon v2: 4 gp x 48 bits, 3 fixed x 48 bits`.
pub fn describe(l: &Layout, out: &mut crate::fmt::Line) {
    match l.kind {
        Kind::None => {
            out.s("none");
        }
        Kind::Intel => {
            out.s("intel arch perfmon v")
                .u(l.version as u64)
                .s(": ")
                .u(l.gp as u64)
                .s(" gp x ")
                .u(l.gp_width as u64)
                .s(" bits, ")
                .u(l.fixed as u64)
                .s(" fixed x ")
                .u(l.fixed_width as u64)
                .s(" bits");
        }
        Kind::AmdLegacy | Kind::AmdExt | Kind::AmdV2 => {
            out.s(match l.kind {
                Kind::AmdLegacy => "amd legacy",
                Kind::AmdExt => "amd core-ext",
                _ => "amd perfmon-v2",
            })
            .s(": ")
            .u(l.gp as u64)
            .s(" gp x ")
            .u(l.gp_width as u64)
            .s(" bits");
        }
    }
}

/// A cycles counter on general-purpose counter 0 that raises a PMI (NMI)
/// every `period` cycles.
#[derive(Clone, Copy)]
pub struct Sampler {
    pub l: Layout,
    pub period: u64,
    pub evtsel: u64,
    pub mask: u64,
}

impl Sampler {
    pub fn new(l: Layout, period: u64, event: u64, flags: u64) -> Self {
        let period = period.clamp(16, 0x7fff_ffff);
        Sampler {
            l,
            period,
            evtsel: event | flags | EVTSEL_INT | EVTSEL_EN,
            mask: layout::mask_bits(l.gp_width),
        }
    }

    /// Programs counter `i` with `-period`, enables it and routes PMIs as NMIs.
    pub fn start(&self, i: u32) {
        rt::lapic_pmi_nmi();
        rt::wrmsr(self.l.ctl_msr(i), 0);
        rt::wrmsr(self.l.ctr_msr(i), self.period.wrapping_neg() & self.mask);
        rt::wrmsr(self.l.ctl_msr(i), self.evtsel);
        self.global(1 << i);
    }

    pub fn global(&self, bits: u64) {
        match self.l.kind {
            Kind::Intel if self.l.version >= 2 => rt::wrmsr(IA32_PERF_GLOBAL_CTRL, bits),
            Kind::AmdV2 => rt::wrmsr(AMD_GLOBAL_CTL, bits),
            _ => {}
        }
    }

    /// PMI path: clear the overflow status, unmask LVTPC, then re-arm
    /// counter `i` with `-period`. Unmasking before re-arming means an
    /// overflow that comes quickly (short period, slow emulated CPL0) is
    /// held pending as an NMI instead of hitting a masked LVTPC and being
    /// lost, which would stop sampling for good.
    #[inline(always)]
    pub fn rearm(&self, i: u32) {
        match self.l.kind {
            Kind::Intel if self.l.version >= 2 => rt::wrmsr(IA32_PERF_GLOBAL_OVF_CTRL, 1 << i),
            Kind::AmdV2 => rt::wrmsr(AMD_GLOBAL_STATUS_CLR, 1 << i),
            _ => {}
        }
        rt::lapic_write(rt::LAPIC_LVTPC, rt::LVT_NMI);
        rt::wrmsr(self.l.ctr_msr(i), self.period.wrapping_neg() & self.mask);
    }

    pub fn stop(&self, i: u32) {
        self.global(0);
        rt::wrmsr(self.l.ctl_msr(i), 0);
    }
}
