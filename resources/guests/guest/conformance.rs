//! conformance: a TAP-style PMU conformance suite.
//!
//! Reads the PMU layout from CPUID and checks MSR existence, #GP on
//! out-of-range and reserved bits, round trips, counter width, global
//! gating, counting during a CPL3 busy loop, wrap/overflow status, PMIs
//! delivered as NMIs, status clear/set and event-filter denial. With no PMU
//! it checks that every PMU MSR faults. See docs/GUESTS.md for the keys.
#![no_std]
#![no_main]

#[path = "pure/cmdline.rs"]
mod cmdline;
#[path = "pure/fmt.rs"]
mod fmt;
#[path = "pure/layout.rs"]
mod layout;
#[path = "pure/lfsr.rs"]
mod lfsr;
mod pmu;
mod rt;

use core::sync::atomic::{AtomicU64, Ordering};

use cmdline::Cmdline;
use fmt::Line;
use layout::{mask_bits, Kind, Layout};
use pmu::*;

const GP: u64 = 13;

struct Tap {
    n: u32,
    pass: u32,
    fail: u32,
    skip: u32,
}

impl Tap {
    fn emit(&mut self, ok: bool, desc: &Line, note: Option<(&str, &Line)>) {
        self.n += 1;
        let mut l = Line::new();
        if !ok {
            l.s("not ");
        }
        l.s("ok ").u(self.n as u64).s(" - ");
        for &b in desc.as_bytes() {
            l.byte(b);
        }
        if let Some((tag, detail)) = note {
            l.s(" # ").s(tag);
            for &b in detail.as_bytes() {
                l.byte(b);
            }
        }
        rt::println(&l);
    }

    /// Records a result; `detail` is printed only on failure.
    fn check(&mut self, ok: bool, desc: &Line, detail: &Line) {
        if ok {
            self.pass += 1;
            self.emit(true, desc, None);
        } else {
            self.fail += 1;
            self.emit(false, desc, Some(("", detail)));
        }
    }

    fn skip(&mut self, desc: &Line, why: &str) {
        self.skip += 1;
        let mut w = Line::new();
        w.s(why);
        self.emit(true, desc, Some(("SKIP ", &w)));
    }
}

fn d(s: &str) -> Line {
    let mut l = Line::new();
    l.s(s);
    l
}

/// Describes a read result for failure details.
fn res(l: &mut Line, r: Result<u64, u64>) {
    match r {
        Ok(v) => l.s("read ").x(v),
        Err(13) => l.s("#GP"),
        Err(v) => l.s("exception ").u(v),
    };
}

fn wres(l: &mut Line, r: Result<(), u64>) {
    match r {
        Ok(()) => l.s("write accepted"),
        Err(13) => l.s("#GP"),
        Err(v) => l.s("exception ").u(v),
    };
}

// ------------------------------------------------------------- CPL3 loops

#[inline(never)]
extern "C" fn busy(n: u64) -> u64 {
    let mut x = 0u64;
    let mut i = 0;
    while i < n {
        x = core::hint::black_box(x ^ i).wrapping_add(1);
        i += 1;
    }
    x
}

const LOOP: u64 = 20_000_000;

/// Runs the CPL3 busy loop; returns its TSC duration.
fn run_loop(iters: u64) -> u64 {
    let t0 = rt::rdtsc();
    rt::run_user(busy, iters);
    rt::rdtsc() - t0
}

// ------------------------------------------------------------- PMI capture

static PMI_COUNT: AtomicU64 = AtomicU64::new(0);
static PMI_LVT: AtomicU64 = AtomicU64::new(0);
static PMI_CS: AtomicU64 = AtomicU64::new(0);

fn pmi(f: &mut rt::Frame) {
    PMI_LVT.store(rt::lapic_read(rt::LAPIC_LVTPC) as u64, Ordering::SeqCst);
    PMI_CS.store(f.cs, Ordering::SeqCst);
    PMI_COUNT.fetch_add(1, Ordering::SeqCst);
}

/// Waits (bounded, ~`ticks` TSC) for the PMI count to exceed `before`.
fn wait_pmi(before: u64, ticks: u64) -> bool {
    let t0 = rt::rdtsc();
    while PMI_COUNT.load(Ordering::SeqCst) == before {
        if rt::rdtsc().wrapping_sub(t0) > ticks {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

// ------------------------------------------------------------------- main

#[no_mangle]
pub fn guest_main(cpu: u32, cmd: &'static str, _ncpus: u32) -> ! {
    if cpu != 0 {
        rt::halt_forever();
    }
    let cmd = Cmdline::new(cmd);
    if let Some(n) = cmd.get_u64("fuzz") {
        rt::set_nmi_hook(pmi);
        fuzz(n, cmd.u64_or("seed", 1));
    }
    let mut t = Tap {
        n: 0,
        pass: 0,
        fail: 0,
        skip: 0,
    };
    let lay = pmu::detect();
    let mut l = Line::new();
    rt::puts("TAP version 13");
    l.s("# vpmu conformance: pmu ");
    pmu::describe(&lay, &mut l);
    rt::println(&l);
    l.clear();
    l.s("# cmdline \"").s(cmd.as_str()).s("\"");
    rt::println(&l);
    rt::set_nmi_hook(pmi);

    cpuid_tests(&mut t, &lay, &cmd);
    match lay.kind {
        Kind::None => no_pmu_tests(&mut t, &lay),
        _ => pmu_tests(&mut t, &lay, &cmd),
    }

    l.clear();
    l.s("1..").u(t.n as u64);
    rt::println(&l);
    l.clear();
    l.s("conformance: ")
        .u(t.pass as u64)
        .s(" passed, ")
        .u(t.fail as u64)
        .s(" failed, ")
        .u(t.skip as u64)
        .s(" skipped");
    rt::println(&l);
    rt::exit(if t.fail == 0 { 0 } else { 1 })
}

fn cpuid_tests(t: &mut Tap, lay: &Layout, cmd: &Cmdline) {
    let mut det = Line::new();
    let ok = match lay.kind {
        Kind::None => true,
        Kind::Intel => {
            let mut ok = lay.gp >= 1 && lay.gp <= 32 && lay.gp_width >= 32 && lay.gp_width <= 64;
            if lay.version >= 2 && lay.fixed_mask != 0 {
                ok &= lay.fixed_width >= 32 && lay.fixed_width <= 64;
            }
            if lay.version == 1 {
                ok &= lay.fixed == 0;
            }
            ok &= lay.events_len <= 32;
            ok
        }
        Kind::AmdLegacy => lay.gp == 4,
        Kind::AmdExt => lay.gp == 6,
        Kind::AmdV2 => lay.gp >= 1 && lay.gp <= 16,
    };
    det.s("version=")
        .u(lay.version as u64)
        .s(" gp=")
        .u(lay.gp as u64)
        .s(" width=")
        .u(lay.gp_width as u64)
        .s(" fixed=")
        .u(lay.fixed as u64)
        .s(" fixed_width=")
        .u(lay.fixed_width as u64);
    let mut desc = d("cpuid: PMU layout is self-consistent (");
    desc.s(lay.name()).s(")");
    t.check(ok, &desc, &det);

    match cmd.get("expect") {
        None => t.skip(&d("cpuid: layout matches expect="), "no expect= on cmdline"),
        Some(e) => {
            let mut desc = d("cpuid: layout matches expect=");
            desc.s(e);
            match layout::parse_expect(e) {
                None => t.check(false, &desc, &d("cannot parse expect=")),
                Some(x) => match x.check(lay) {
                    Ok(()) => t.check(true, &desc, &det),
                    Err((field, want, got)) => {
                        let mut m = Line::new();
                        m.s(field).s(": expected ").u(want).s(", found ").u(got);
                        if field == "kind" || field == "vendor-amd" {
                            m.clear();
                            m.s("found ").s(lay.name());
                        }
                        t.check(false, &desc, &m)
                    }
                },
            }
        }
    }
}

fn expect_gp_read(t: &mut Tap, msr: u32, name: &str) {
    let mut desc = d("rdmsr ");
    desc.x(msr as u64).s(" ").s(name).s(" #GPs");
    let r = rt::rdmsr_safe(msr);
    let mut det = Line::new();
    res(&mut det, r);
    t.check(r == Err(GP), &desc, &det);
}

fn expect_gp_write(t: &mut Tap, msr: u32, v: u64, name: &str) {
    let mut desc = d("wrmsr ");
    desc.x(msr as u64).s(" ").s(name).s(" <- ").x(v).s(" #GPs");
    let r = rt::wrmsr_safe(msr, v);
    let mut det = Line::new();
    wres(&mut det, r);
    t.check(r == Err(GP), &desc, &det);
}

fn no_pmu_tests(t: &mut Tap, lay: &Layout) {
    let intel: [(u32, &str); 6] = [
        (0x309, "IA32_FIXED_CTR0"),
        (0x38d, "IA32_FIXED_CTR_CTRL"),
        (0x38e, "IA32_PERF_GLOBAL_STATUS"),
        (0x38f, "IA32_PERF_GLOBAL_CTRL"),
        (0x390, "IA32_PERF_GLOBAL_OVF_CTRL"),
        (0x4c1, "IA32_A_PMC0"),
    ];
    for (msr, name) in intel {
        expect_gp_read(t, msr, name);
    }
    if !lay.pdcm {
        expect_gp_read(
            t,
            IA32_PERF_CAPABILITIES,
            "IA32_PERF_CAPABILITIES (no PDCM)",
        );
    }
    let amd: [(u32, &str); 4] = [
        (0xc001_0200, "PERF_CTL0 (core-ext)"),
        (0xc001_0201, "PERF_CTR0 (core-ext)"),
        (AMD_GLOBAL_STATUS, "PerfMonV2 GLOBAL_STATUS"),
        (AMD_GLOBAL_CTL, "PerfMonV2 GLOBAL_CTL"),
    ];
    for (msr, name) in amd {
        expect_gp_read(t, msr, name);
    }
    expect_gp_write(t, 0xc001_0200, 0x0043_0076, "PERF_CTL0 (core-ext)");
    // The P6 (IA32_PMC0/PERFEVTSEL0) and AMD K7 MSRs are ignored by KVM
    // without a vPMU (reads 0, writes dropped) rather than faulting, so accept
    // "#GP" or "holds nothing" for them.
    hold_nothing(
        t,
        0x186,
        0xc1,
        0x0003_003c,
        "IA32_PERFEVTSEL0/IA32_PMC0 0x186/0xc1",
    );
    hold_nothing(
        t,
        0xc001_0000,
        0xc001_0004,
        0x0003_0076,
        "legacy PERF_CTL0/CTR0 0xc0010000/4",
    );
}

fn hold_nothing(t: &mut Tap, ctl: u32, ctr: u32, sel: u64, name: &str) {
    let mut desc = d(name);
    desc.s(" #GP or hold nothing");
    let w = rt::wrmsr_safe(ctl, sel);
    let w2 = rt::wrmsr_safe(ctr, 0x1234);
    let r = rt::rdmsr_safe(ctl);
    let r2 = rt::rdmsr_safe(ctr);
    let ok = matches!(r, Err(GP) | Ok(0)) && matches!(r2, Err(GP) | Ok(0));
    let mut det = Line::new();
    wres(&mut det, w);
    det.s(", ");
    wres(&mut det, w2);
    det.s(", ctl ");
    res(&mut det, r);
    det.s(", ctr ");
    res(&mut det, r2);
    t.check(ok, &desc, &det);
}

/// Everything that needs a PMU; Intel and AMD share the structure.
fn pmu_tests(t: &mut Tap, lay: &Layout, cmd: &Cmdline) {
    let intel = lay.is_intel();
    let gmask = mask_bits(lay.gp_width);
    let source_perf = cmd.get("source") == Some("perf");

    // Quiesce: everything disabled, status cleared.
    global_ctrl(lay, 0);
    for i in 0..lay.gp {
        let _ = rt::wrmsr_safe(lay.ctl_msr(i), 0);
    }
    if intel && lay.version >= 2 {
        let _ = rt::wrmsr_safe(IA32_FIXED_CTR_CTRL, 0);
    }
    clear_status(lay, u64::MAX);

    // --- existence
    let mut bad = Line::new();
    for i in 0..lay.gp {
        for msr in [lay.ctl_msr(i), lay.ctr_msr(i)] {
            if let Err(v) = rt::rdmsr_safe(msr) {
                if bad.is_empty() {
                    bad.x(msr as u64).s(": exception ").u(v);
                }
            }
        }
    }
    let mut desc = d("rdmsr event selectors and counters 0..");
    desc.u(lay.gp as u64);
    t.check(bad.is_empty(), &desc, &bad);

    let mut caps = 0u64;
    if intel {
        if lay.version >= 2 {
            let mut bad = Line::new();
            let regs: [(u32, &str); 3] = [
                (IA32_FIXED_CTR_CTRL, "FIXED_CTR_CTRL"),
                (IA32_PERF_GLOBAL_STATUS, "GLOBAL_STATUS"),
                (IA32_PERF_GLOBAL_CTRL, "GLOBAL_CTRL"),
            ];
            for (msr, name) in regs {
                if let Err(v) = rt::rdmsr_safe(msr) {
                    if bad.is_empty() {
                        bad.s(name).s(": exception ").u(v);
                    }
                }
            }
            for i in 0..lay.fixed_span() {
                if lay.fixed_ok(i) {
                    if let Err(v) = rt::rdmsr_safe(IA32_FIXED_CTR0 + i) {
                        if bad.is_empty() {
                            bad.s("FIXED_CTR").u(i as u64).s(": exception ").u(v);
                        }
                    }
                }
            }
            if let Err(v) = rt::wrmsr_safe(IA32_PERF_GLOBAL_OVF_CTRL, 0) {
                if bad.is_empty() {
                    bad.s("GLOBAL_OVF_CTRL write: exception ").u(v);
                }
            }
            t.check(
                bad.is_empty(),
                &d("v2+ MSRs: fixed counters, FIXED_CTR_CTRL, GLOBAL_STATUS/CTRL/OVF_CTRL"),
                &bad,
            );
        }
        let r = rt::rdmsr_safe(IA32_PERF_CAPABILITIES);
        let mut det = Line::new();
        res(&mut det, r);
        if lay.pdcm {
            t.check(
                r.is_ok(),
                &d("IA32_PERF_CAPABILITIES readable (PDCM set)"),
                &det,
            );
            caps = r.unwrap_or(0);
        } else {
            t.check(
                r == Err(GP),
                &d("IA32_PERF_CAPABILITIES #GPs (PDCM clear)"),
                &det,
            );
        }
    } else {
        if lay.kind != Kind::AmdLegacy {
            // Legacy aliases exist alongside the core-ext MSRs.
            let mut bad = Line::new();
            for msr in 0xc001_0000u32..0xc001_0008 {
                if let Err(v) = rt::rdmsr_safe(msr) {
                    if bad.is_empty() {
                        bad.x(msr as u64).s(": exception ").u(v);
                    }
                }
            }
            t.check(
                bad.is_empty(),
                &d("legacy aliases 0xc0010000-7 readable"),
                &bad,
            );
        }
        if lay.kind == Kind::AmdV2 {
            let mut bad = Line::new();
            for msr in [AMD_GLOBAL_STATUS, AMD_GLOBAL_CTL] {
                if let Err(v) = rt::rdmsr_safe(msr) {
                    if bad.is_empty() {
                        bad.x(msr as u64).s(": exception ").u(v);
                    }
                }
            }
            for msr in [AMD_GLOBAL_STATUS_CLR, AMD_GLOBAL_STATUS_SET] {
                if let Err(v) = rt::wrmsr_safe(msr, 0) {
                    if bad.is_empty() {
                        bad.x(msr as u64).s(" write: exception ").u(v);
                    }
                }
            }
            t.check(
                bad.is_empty(),
                &d("PerfMonV2 GLOBAL_STATUS/CTL/STATUS_CLR/STATUS_SET"),
                &bad,
            );
        }
    }
    let fw_writes = intel && caps & (1 << 13) != 0;
    if intel {
        let r = rt::rdmsr_safe(IA32_A_PMC0);
        let mut det = Line::new();
        res(&mut det, r);
        if fw_writes {
            t.check(r.is_ok(), &d("IA32_A_PMC0 readable (FW_WRITES)"), &det);
        } else {
            t.check(r == Err(GP), &d("IA32_A_PMC0 #GPs (no FW_WRITES)"), &det);
        }
    }

    // --- beyond the counter count
    if lay.kind != Kind::AmdLegacy {
        expect_gp_read(t, lay.ctl_msr(lay.gp), "event select beyond count");
        expect_gp_read(t, lay.ctr_msr(lay.gp), "counter beyond count");
        if intel && lay.version >= 2 && lay.fixed_span() < 16 {
            expect_gp_read(
                t,
                IA32_FIXED_CTR0 + lay.fixed_span(),
                "fixed counter beyond count",
            );
        }
        if fw_writes {
            expect_gp_read(t, IA32_A_PMC0 + lay.gp, "IA32_A_PMC beyond count");
        }
    }

    // --- reserved bits
    expect_gp_write(
        t,
        lay.ctl_msr(0),
        (1 << 63) | lay.cycles_event(),
        "event select bit 63",
    );
    if intel && lay.version >= 2 {
        if lay.gp < 32 {
            expect_gp_write(
                t,
                IA32_PERF_GLOBAL_CTRL,
                1 << lay.gp,
                "GLOBAL_CTRL bit past GP counters",
            );
        }
        let fs = lay.fixed_span();
        if fs < 16 {
            expect_gp_write(
                t,
                IA32_PERF_GLOBAL_CTRL,
                1 << (32 + fs),
                "GLOBAL_CTRL bit past fixed counters",
            );
            expect_gp_write(
                t,
                IA32_FIXED_CTR_CTRL,
                1 << (4 * fs),
                "FIXED_CTR_CTRL bit past fixed counters",
            );
        }
    }
    if lay.kind == Kind::AmdV2 && lay.gp < 32 {
        expect_gp_write(
            t,
            AMD_GLOBAL_CTL,
            1 << lay.gp,
            "GLOBAL_CTL bit past counters",
        );
    }
    global_ctrl(lay, 0);

    // --- round trips (nothing enabled)
    let pattern = 0x0213_1b5a; // cmask 2, INT, OS, USR, umask 0x1b, event 0x5a; EN clear
    let mut bad = Line::new();
    for i in 0..lay.gp {
        let (c, k) = (lay.ctl_msr(i), lay.ctr_msr(i));
        for (msr, v) in [(c, pattern + i as u64), (k, 0x1234_5678 + i as u64)] {
            let w = rt::wrmsr_safe(msr, v);
            let r = rt::rdmsr_safe(msr);
            if (w.is_err() || r != Ok(v)) && bad.is_empty() {
                bad.x(msr as u64).s(" <- ").x(v).s(": ");
                wres(&mut bad, w);
                bad.s(", ");
                res(&mut bad, r);
            }
        }
        let _ = rt::wrmsr_safe(c, 0);
        let _ = rt::wrmsr_safe(k, 0);
    }
    t.check(
        bad.is_empty(),
        &d("event selectors and counters round-trip"),
        &bad,
    );
    if lay.has_global() {
        let (msr, all) = if intel {
            let fm = (lay.fixed_mask as u64 & 0xffff) << 32;
            (IA32_PERF_GLOBAL_CTRL, lay.gp_mask() | fm)
        } else {
            (AMD_GLOBAL_CTL, lay.gp_mask())
        };
        let w = rt::wrmsr_safe(msr, all);
        let r = rt::rdmsr_safe(msr);
        let _ = rt::wrmsr_safe(msr, 0);
        let mut det = Line::new();
        det.s("wrote ").x(all).s(": ");
        wres(&mut det, w);
        det.s(", ");
        res(&mut det, r);
        t.check(
            w.is_ok() && r == Ok(all),
            &d("global control round-trips all counter bits"),
            &det,
        );
    }
    if intel && lay.version >= 2 && lay.fixed_mask != 0 {
        let mut v = 0u64;
        for i in 0..lay.fixed_span() {
            if lay.fixed_ok(i) {
                v |= 0xa << (4 * i); // USR + PMI (counts only once globally enabled)
            }
        }
        let w = rt::wrmsr_safe(IA32_FIXED_CTR_CTRL, v);
        let r = rt::rdmsr_safe(IA32_FIXED_CTR_CTRL);
        let _ = rt::wrmsr_safe(IA32_FIXED_CTR_CTRL, 0);
        let mut det = Line::new();
        wres(&mut det, w);
        det.s(", ");
        res(&mut det, r);
        t.check(
            w.is_ok() && r == Ok(v),
            &d("FIXED_CTR_CTRL round-trips"),
            &det,
        );
    }

    // --- width
    let k0 = lay.ctr_msr(0);
    {
        let w = rt::wrmsr_safe(k0, u64::MAX);
        let r = rt::rdmsr_safe(k0);
        let mut det = Line::new();
        wres(&mut det, w);
        det.s(", ");
        res(&mut det, r);
        det.s(", want ").x(gmask);
        let mut desc = d("counter 0 all-ones write reads back as 2^");
        desc.u(lay.gp_width as u64).s("-1");
        if intel {
            t.check(w.is_ok() && r == Ok(gmask), &desc, &det);
        } else {
            // AMD: high bits are reserved; a #GP is acceptable too.
            let ok = (w.is_ok() && r == Ok(gmask)) || w == Err(GP);
            t.check(ok, &desc, &det);
        }
        let w = rt::wrmsr_safe(k0, gmask);
        let r = rt::rdmsr_safe(k0);
        let mut det = Line::new();
        wres(&mut det, w);
        det.s(", ");
        res(&mut det, r);
        t.check(
            w.is_ok() && r == Ok(gmask),
            &d("counter 0 holds 2^width-1"),
            &det,
        );
    }
    if intel {
        let w = rt::wrmsr_safe(k0, 0x8000_0000);
        let r = rt::rdmsr_safe(k0);
        let want = gmask & !0x7fff_ffff;
        let mut det = Line::new();
        res(&mut det, r);
        det.s(", want ").x(want);
        t.check(
            w.is_ok() && r == Ok(want),
            &d("IA32_PMC0 legacy write sign-extends bit 31"),
            &det,
        );
        if fw_writes {
            let w = rt::wrmsr_safe(IA32_A_PMC0, 0x8000_0000);
            let r = rt::rdmsr_safe(IA32_A_PMC0);
            let mut det = Line::new();
            wres(&mut det, w);
            det.s(", ");
            res(&mut det, r);
            t.check(
                r == Ok(0x8000_0000),
                &d("IA32_A_PMC0 full-width write does not sign-extend"),
                &det,
            );
            if lay.gp_width < 64 {
                expect_gp_write(
                    t,
                    IA32_A_PMC0,
                    1 << lay.gp_width,
                    "IA32_A_PMC0 bit past width",
                );
            }
        } else {
            t.skip(
                &d("IA32_A_PMC0 full-width write does not sign-extend"),
                "no FW_WRITES",
            );
        }
        if lay.version >= 2 && lay.fixed_ok(0) {
            let fmask = mask_bits(lay.fixed_width);
            let w = rt::wrmsr_safe(IA32_FIXED_CTR0, fmask);
            let r = rt::rdmsr_safe(IA32_FIXED_CTR0);
            let w2 = rt::wrmsr_safe(IA32_FIXED_CTR0, u64::MAX);
            let r2 = rt::rdmsr_safe(IA32_FIXED_CTR0);
            let mut det = Line::new();
            wres(&mut det, w);
            det.s(", ");
            res(&mut det, r);
            det.s("; all-ones: ");
            wres(&mut det, w2);
            det.s(", ");
            res(&mut det, r2);
            let ok = w.is_ok() && r == Ok(fmask) && (w2 == Err(GP) || r2 == Ok(fmask));
            t.check(
                ok,
                &d("FIXED_CTR0 width: 2^fw-1 holds, all-ones #GPs or truncates"),
                &det,
            );
            let _ = rt::wrmsr_safe(IA32_FIXED_CTR0, 0);
        }
    }
    let _ = rt::wrmsr_safe(k0, 0);

    // --- gating and counting (cycles on GP counter 0)
    let c0 = lay.ctl_msr(0);
    let cyc = lay.cycles_event() | EVTSEL_USR | EVTSEL_OS;
    if lay.has_global() {
        let (v, _) = count_loop(lay, c0, k0, cyc | EVTSEL_EN, 0);
        let mut det = Line::new();
        det.s("counter advanced to ").u(v);
        t.check(
            v == 0,
            &d("cycles counter does not count while globally disabled"),
            &det,
        );
    }
    {
        let (v, _) = count_loop(lay, c0, k0, cyc, 1);
        let mut det = Line::new();
        det.s("counter advanced to ").u(v);
        t.check(
            v == 0,
            &d("cycles counter does not count with EN clear"),
            &det,
        );
    }
    {
        let (v, tsc) = count_loop(lay, c0, k0, cyc | EVTSEL_EN, 1);
        let mut det = Line::new();
        det.s("cycles=").u(v).s(" tsc=").u(tsc);
        // Plausible: between 1/16 and 16x the TSC ticks the loop took.
        let ok = v > 0 && v >= tsc / 16 && v <= tsc.saturating_mul(16);
        t.check(
            ok,
            &d("cycles counter advances during a CPL3 loop (~TSC)"),
            &det,
        );
        let mut info = Line::new();
        info.s("# cycles/tsc: ").u(v).s("/").u(tsc);
        rt::println(&info);
    }
    if intel && lay.version >= 2 {
        for (i, name, counts) in [
            (1u32, "fixed counter 1 (core cycles) advances", true),
            (2, "fixed counter 2 (reference cycles) advances", true),
            (0, "fixed counter 0 (instructions) advances", source_perf),
        ] {
            let desc = d(name);
            if !lay.fixed_ok(i) {
                t.skip(&desc, "not enumerated");
                continue;
            }
            if !counts {
                t.skip(
                    &desc,
                    "instructions unsupported by the clock model (source=perf to run)",
                );
                continue;
            }
            let _ = rt::wrmsr_safe(IA32_FIXED_CTR0 + i, 0);
            let _ = rt::wrmsr_safe(IA32_FIXED_CTR_CTRL, 0x3 << (4 * i));
            rt::wrmsr(IA32_PERF_GLOBAL_CTRL, 1 << (32 + i));
            run_loop(LOOP);
            rt::wrmsr(IA32_PERF_GLOBAL_CTRL, 0);
            let _ = rt::wrmsr_safe(IA32_FIXED_CTR_CTRL, 0);
            let v = rt::rdmsr_safe(IA32_FIXED_CTR0 + i);
            let mut det = Line::new();
            res(&mut det, v);
            let ok = match v {
                Ok(v) if i == 0 => v >= LOOP,
                Ok(v) => v > 0,
                Err(_) => false,
            };
            t.check(ok, &desc, &det);
        }
    }
    {
        let desc = d("instructions event (0xc0) counts at least the loop iterations");
        if !source_perf {
            t.skip(
                &desc,
                "instructions unsupported by the clock model (source=perf to run)",
            );
        } else if intel && lay.events_unavail & 2 != 0 && lay.events_len > 1 {
            t.skip(&desc, "marked unavailable in CPUID.0xA:EBX");
        } else {
            let sel = lay.instructions_event() | EVTSEL_USR | EVTSEL_EN;
            let (v, _) = count_loop(lay, c0, k0, sel, 1);
            let mut det = Line::new();
            det.s("instructions=").u(v);
            t.check(v >= LOOP, &desc, &det);
        }
    }

    // --- wrap, overflow status, no PMI with INT=0
    let near = 100_000u64;
    {
        clear_status(lay, u64::MAX);
        let before_pmi = PMI_COUNT.load(Ordering::SeqCst);
        rt::lapic_pmi_nmi();
        rt::wrmsr(c0, 0);
        rt::wrmsr(k0, gmask - near);
        rt::wrmsr(c0, cyc | EVTSEL_EN);
        global_ctrl(lay, 1);
        run_loop(LOOP);
        global_ctrl(lay, 0);
        rt::wrmsr(c0, 0);
        let v = rt::rdmsr(k0);
        let mut det = Line::new();
        det.s("counter=").x(v).s(" preloaded ").x(gmask - near);
        t.check(v < gmask - near, &d("counter wraps past 2^width-1"), &det);
        if lay.has_global() {
            let s = read_status(lay);
            let mut det = Line::new();
            det.s("status=").x(s);
            t.check(
                s & 1 != 0,
                &d("global status overflow bit 0 set after wrap"),
                &det,
            );
            clear_status(lay, 1);
            let s = read_status(lay);
            let mut det = Line::new();
            det.s("status=").x(s);
            let desc = if intel {
                d("GLOBAL_OVF_CTRL clears overflow bit 0")
            } else {
                d("GLOBAL_STATUS_CLR clears overflow bit 0")
            };
            t.check(s & 1 == 0, &desc, &det);
        }
        let mut det = Line::new();
        det.s("PMIs=")
            .u(PMI_COUNT.load(Ordering::SeqCst) - before_pmi);
        t.check(
            PMI_COUNT.load(Ordering::SeqCst) == before_pmi,
            &d("no PMI on overflow with INT clear"),
            &det,
        );
    }
    {
        let desc = d("GLOBAL_STATUS_SET sets overflow bit 0");
        if (intel && lay.version >= 4) || lay.kind == Kind::AmdV2 {
            let msr = if intel {
                IA32_PERF_GLOBAL_STATUS_SET
            } else {
                AMD_GLOBAL_STATUS_SET
            };
            let w = rt::wrmsr_safe(msr, 1);
            let s = read_status(lay);
            clear_status(lay, 1);
            let s2 = read_status(lay);
            let mut det = Line::new();
            wres(&mut det, w);
            det.s(", status=").x(s).s(", after clear ").x(s2);
            t.check(w.is_ok() && s & 1 != 0 && s2 & 1 == 0, &desc, &det);
        } else {
            t.skip(&desc, "needs Intel v4+ or PerfMonV2");
        }
    }

    // --- PMI
    {
        clear_status(lay, u64::MAX);
        let before = PMI_COUNT.load(Ordering::SeqCst);
        rt::lapic_pmi_nmi();
        rt::wrmsr(c0, 0);
        rt::wrmsr(k0, gmask - near);
        rt::wrmsr(c0, cyc | EVTSEL_EN | EVTSEL_INT);
        global_ctrl(lay, 1);
        run_loop(LOOP);
        let got = wait_pmi(before, 200_000_000);
        global_ctrl(lay, 0);
        rt::wrmsr(c0, 0);
        let n = PMI_COUNT.load(Ordering::SeqCst) - before;
        let mut det = Line::new();
        det.s("PMIs=").u(n).s(" counter=").x(rt::rdmsr(k0));
        t.check(
            got && n == 1,
            &d("PMI delivered as NMI on overflow with INT=1"),
            &det,
        );
        // Intel sets the LVTPC mask bit as it delivers a PMI (SDM vol. 3B, "Handling
        // Performance Counter Overflows"); AMD's APIC does not, and KVM follows the same
        // split (it masks LVTPC only for Intel-compatible guests).
        let desc = if lay.is_intel() {
            d("LVTPC masked when the PMI is delivered (Intel)")
        } else {
            d("LVTPC left unmasked when the PMI is delivered (AMD)")
        };
        if got {
            let lvt = PMI_LVT.load(Ordering::SeqCst);
            let mut det = Line::new();
            det.s("LVTPC=").x(lvt);
            let masked = lvt & rt::LVT_MASK as u64 != 0;
            t.check(masked == lay.is_intel(), &desc, &det);
        } else {
            t.skip(&desc, "no PMI");
        }
        rt::lapic_write(rt::LAPIC_LVTPC, rt::LVT_NMI);
        clear_status(lay, u64::MAX);
        rt::wrmsr(k0, 0);
    }

    // --- denied event
    {
        let desc = d("denied event: selector reads back as written");
        let desc2 = d("denied event: counter does not advance");
        match cmd.get("denied").and_then(cmdline::parse_pair) {
            None => {
                t.skip(&desc, "no denied=EV:UMASK on cmdline");
                t.skip(&desc2, "no denied=EV:UMASK on cmdline");
            }
            Some((ev, um)) => {
                // AMD: event bits 11:8 go to selector bits 35:32.
                let evbits = (ev & 0xff) | ((ev >> 8) & 0xf) << 32;
                let sel = evbits | (um & 0xff) << 8 | EVTSEL_USR | EVTSEL_OS | EVTSEL_EN;
                rt::wrmsr(k0, 0);
                let w = rt::wrmsr_safe(c0, sel);
                let r = rt::rdmsr_safe(c0);
                let mut det = Line::new();
                wres(&mut det, w);
                det.s(", ");
                res(&mut det, r);
                det.s(", wrote ").x(sel);
                t.check(w.is_ok() && r == Ok(sel), &desc, &det);
                global_ctrl(lay, 1);
                run_loop(LOOP);
                global_ctrl(lay, 0);
                let v = rt::rdmsr(k0);
                let _ = rt::wrmsr_safe(c0, 0);
                let mut det = Line::new();
                det.s("counter=").u(v);
                t.check(v == 0, &desc2, &det);
            }
        }
    }
}

/// Counts with selector `sel` on GP counter 0 (`c0` its selector, `k0` its counter, zeroed
/// first) over one CPL3 loop of [`LOOP`] iterations under the global enable bits `global`,
/// then stops the counter: (the count, the TSC ticks the loop took).
fn count_loop(lay: &Layout, c0: u32, k0: u32, sel: u64, global: u64) -> (u64, u64) {
    rt::wrmsr(k0, 0);
    rt::wrmsr(c0, sel);
    global_ctrl(lay, global);
    let tsc = run_loop(LOOP);
    global_ctrl(lay, 0);
    rt::wrmsr(c0, 0);
    (rt::rdmsr(k0), tsc)
}

fn global_ctrl(lay: &Layout, bits: u64) {
    match lay.kind {
        Kind::Intel if lay.version >= 2 => {
            let _ = rt::wrmsr_safe(IA32_PERF_GLOBAL_CTRL, bits);
        }
        Kind::AmdV2 => {
            let _ = rt::wrmsr_safe(AMD_GLOBAL_CTL, bits);
        }
        _ => {}
    }
}

fn read_status(lay: &Layout) -> u64 {
    let msr = if lay.is_intel() {
        IA32_PERF_GLOBAL_STATUS
    } else {
        AMD_GLOBAL_STATUS
    };
    rt::rdmsr_safe(msr).unwrap_or(0)
}

fn clear_status(lay: &Layout, bits: u64) {
    match lay.kind {
        Kind::Intel if lay.version >= 2 => {
            let fm = (lay.fixed_mask as u64 & 0xffff) << 32;
            let all = lay.gp_mask() | fm | (3 << 62);
            let _ = rt::wrmsr_safe(IA32_PERF_GLOBAL_OVF_CTRL, bits & all);
        }
        Kind::AmdV2 => {
            let _ = rt::wrmsr_safe(AMD_GLOBAL_STATUS_CLR, bits & lay.gp_mask());
        }
        _ => {}
    }
}

// ------------------------------------------------------------------- fuzz

/// Every PMU MSR range of both vendors, `(base, count)`, as the VMM traps them.
const FUZZ_RANGES: [(u32, u32); 10] = [
    (0xc1, 8),           // Intel IA32_PMCx
    (0x186, 8),          // Intel IA32_PERFEVTSELx
    (0x309, 7),          // Intel IA32_FIXED_CTRx (0x309..=0x30f)
    (0x329, 1),          // Intel MSR_PERF_METRICS
    (0x345, 1),          // Intel IA32_PERF_CAPABILITIES
    (0x38d, 6),          // Intel FIXED_CTR_CTRL, GLOBAL_STATUS/CTRL/OVF_CTRL/STATUS_SET/INUSE
    (0x4c1, 8),          // Intel IA32_A_PMCx
    (0xc001_0000, 8),    // AMD legacy PerfEvtSel0-3 / PerfCtr0-3
    (0xc001_0200, 32),   // AMD PERF_CTL/CTR (core ext), and the trapped room beyond
    (0xc000_0300, 4),    // AMD PerfMonV2 GLOBAL_STATUS/CTL/STATUS_CLR/STATUS_SET
];

/// Neighbours of the PMU ranges that no PMU has and KVM does not emulate (so writing
/// garbage to them cannot hurt the guest itself): they must #GP or be ignored.
const FUZZ_OUTSIDE: [u32; 17] = [
    0xc0,
    0xc9,
    0x185,
    0x18e,
    0x308,
    0x310,
    0x344,
    0x346,
    0x38c,
    0x393,
    0x4c0,
    0x4c9,
    0xc001_0008,
    0xc001_000f,
    0xc001_0220,
    0xc000_02ff,
    0xc000_0304,
];

fn fuzz_msr(r: &mut lfsr::Rng) -> u32 {
    if r.below(8) == 0 {
        let i = r.below(FUZZ_OUTSIDE.len() as u64) as usize;
        return FUZZ_OUTSIDE.get(i).copied().unwrap_or(0xc0);
    }
    let i = r.below(FUZZ_RANGES.len() as u64) as usize;
    let (base, count) = FUZZ_RANGES.get(i).copied().unwrap_or((0xc1, 8));
    base + r.below(count as u64) as u32
}

/// A 64-bit value biased toward the interesting ones: 0, all-ones, single bits and their
/// complements, width masks, sign boundaries, reserved-bit patterns of selectors and
/// control registers, plausible programmings, and plain random values.
fn fuzz_value(r: &mut lfsr::Rng) -> u64 {
    let x = r.next_u64();
    let bit = 1u64 << (x & 63);
    let ctl = EVTSEL_EN | EVTSEL_USR | EVTSEL_OS | EVTSEL_INT;
    match r.below(13) {
        0 => 0,
        1 => u64::MAX,
        2 => bit,
        3 => !bit,
        4 => bit.wrapping_sub(1), // width masks 2^k - 1
        5 => match (x >> 8) & 7 {
            // sign and width boundaries
            0 => 0x7fff_ffff,
            1 => 0x8000_0000,
            2 => 0xffff_ffff,
            3 => 1 << 32,
            4 => i64::MAX as u64,
            5 => 1 << 63,
            6 => (1 << 48) - 1,
            _ => 1 << 48,
        },
        6 => {
            // An enabled selector with one reserved / restricted field set: bit 63,
            // IN_TX/IN_TXCP or AMD EventSelect[11:8], AMD HG_ONLY, AnyThread, PC, 39:36.
            let reserved = match (x >> 8) & 7 {
                0 => 1 << 63,
                1 => 3 << 32,
                2 => 0xf << 32,
                3 => 3 << 40,
                4 => 1 << 21,
                5 => 1 << 19,
                6 => 0xf << 36,
                _ => 1 << 42,
            };
            ctl | (x & 0xffff) | reserved
        }
        7 => {
            // Plausible programming: a cycles / instructions event, or any event/umask,
            // with random qualifier bits (edge, inv, cmask).
            let ev = match (x >> 40) & 3 {
                0 => 0x3c,
                1 => 0x76,
                2 => 0xc0,
                _ => x & 0xffff,
            };
            let quals = if (x >> 44) & 3 == 0 { x & 0xff84_0000 } else { 0 };
            ev | (ctl & x) | EVTSEL_EN | quals
        }
        10 => {
            // Counter values just below a wrap (48-bit, and 32-bit sign-extended writes).
            let d = x & 0xffff;
            if (x >> 20) & 1 == 0 {
                (1u64 << 48) - 1 - d
            } else {
                0xffff_ffff_ffff_ffff - d
            }
        }
        8 => match (x >> 8) & 3 {
            // FIXED_CTR_CTRL fields (with AnyThread / PMI, beyond the counters)
            0 => x & 0xffff,
            1 => 0xbbbb,
            2 => 0x2222_2222,
            _ => (x & 0xf) << ((x >> 16) & 60),
        },
        9 => match (x >> 8) & 3 {
            // GLOBAL_CTRL / STATUS patterns: counter bits, fixed bits, OvfBuf, CondChgd
            0 => x & 0x0000_000f_0000_00ff,
            1 => 0xc000_0000_0000_0000 | (x & 0xff),
            2 => 0x0000_000f_0000_00ff | bit,
            _ => x & 0xffff_ffff,
        },
        _ => x,
    }
}

/// `fuzz=N [seed=S]`: N pseudo-random RDMSR/WRMSR accesses to PMU MSRs of both vendors
/// (and some neighbours), with a short CPL3 run every 64 accesses so the VMM charges
/// whatever got programmed and delivers PMIs (LVTPC = NMI). Faults must be #GP and
/// nothing else; the guest must survive. Exits V=0, or V=1 on any other exception.
fn fuzz(n: u64, seed: u64) -> ! {
    let lay = pmu::detect();
    let mut l = Line::new();
    l.s("# vpmu msr fuzz: pmu ");
    pmu::describe(&lay, &mut l);
    rt::println(&l);
    rt::lapic_pmi_nmi();
    let mut r = lfsr::Rng::new(seed ^ 0x5eed_f022_0000_0000);
    let (mut gp, mut reads, mut writes, mut other) = (0u64, 0u64, 0u64, 0u64);
    let nmi0 = PMI_COUNT.load(Ordering::SeqCst);
    let mut i = 0u64;
    while i < n {
        let msr = fuzz_msr(&mut r);
        let res = if r.next_u64() & 1 == 0 {
            reads += 1;
            rt::rdmsr_safe(msr).map(|_| ())
        } else {
            writes += 1;
            rt::wrmsr_safe(msr, fuzz_value(&mut r))
        };
        match res {
            Ok(()) => {}
            Err(13) => gp += 1,
            Err(v) => {
                other += 1;
                l.clear();
                l.s("# fuzz: MSR ").x(msr as u64).s(" raised exception ").u(v);
                rt::println(&l);
            }
        }
        i += 1;
        if i % 64 == 0 {
            rt::run_user(busy, 2000);
        }
    }
    l.clear();
    l.s("# fuzz: ")
        .u(reads)
        .s(" reads, ")
        .u(writes)
        .s(" writes, ")
        .u(PMI_COUNT.load(Ordering::SeqCst).wrapping_sub(nmi0))
        .s(" PMIs, ")
        .u(other)
        .s(" other exceptions");
    rt::println(&l);
    l.clear();
    l.s("fuzz: ")
        .u(n)
        .s(" accesses, ")
        .u(gp)
        .s(" #GP, seed ")
        .u(seed);
    rt::println(&l);
    rt::exit(if other == 0 { 0 } else { 1 })
}
