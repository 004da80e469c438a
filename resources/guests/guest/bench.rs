//! bench: CPL3 workloads under a selectable guest PMU load, timed with the
//! TSC, printing machine-parseable `BENCH` lines (see docs/GUESTS.md), and
//! `workload=msr`, the cost of one RDMSR by how it is handled.
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

use cmdline::Cmdline;
use fmt::Line;
use layout::{Kind, Layout};
use pmu::*;

const MAX_EVENTS: usize = 16;
const INTEL_EVENTS: [u64; 7] = [0x003c, 0x00c0, 0x013c, 0x00c4, 0x00c5, 0x4f2e, 0x412e];
const AMD_EVENTS: [u64; 7] = [0x0076, 0x00c0, 0x00c2, 0x00c3, 0x00c4, 0x0040, 0x0041];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    None,
    Count(usize),
    Sample(u64),
    Multiplex(usize),
}

/// State shared with the PMI handler (vCPU 0 only).
struct St {
    lay: Layout,
    mask: u64,
    period: u64,
    due: u64,
    samples: u64,
    lat_min: i64,
    lat_max: i64,
    lat_sum: i64,
    // multiplexing: events[] rotate through counters 1..=slots
    mux: bool,
    nevents: usize,
    slots: usize,
    next: usize,
    events: [u64; MAX_EVENTS],
    slot_event: [usize; 8],
    totals: [u64; MAX_EVENTS],
    enabled_ticks: [u64; MAX_EVENTS],
    slot_since: u64,
}

static mut ST: St = St {
    lay: Layout::none(false, false),
    mask: 0,
    period: 0,
    due: 0,
    samples: 0,
    lat_min: i64::MAX,
    lat_max: i64::MIN,
    lat_sum: 0,
    mux: false,
    nevents: 0,
    slots: 0,
    next: 0,
    events: [0; MAX_EVENTS],
    slot_event: [0; 8],
    totals: [0; MAX_EVENTS],
    enabled_ticks: [0; MAX_EVENTS],
    slot_since: 0,
};

fn st() -> &'static mut St {
    // SAFETY: only vCPU 0 runs the bench (the others halt in guest_main), so ST
    // is used by its main flow and by its PMI (NMI) hook, never concurrently by
    // two CPUs. The main flow takes short borrows, and with the counters
    // disarmed, except for the two stores to `due`/`slot_since` just before the
    // workload, which come at least `period` (>= 1000) TSC ticks before the
    // first PMI can; so a hook's borrow does not overlap a live main-flow one.
    unsafe { &mut *(&raw mut ST) }
}

fn sel(ev: u64) -> u64 {
    (ev & 0xff) | (ev & 0xff00) | EVTSEL_USR | EVTSEL_EN
}

fn global(lay: &Layout, bits: u64) {
    match lay.kind {
        Kind::Intel if lay.version >= 2 => rt::wrmsr(IA32_PERF_GLOBAL_CTRL, bits),
        Kind::AmdV2 => rt::wrmsr(AMD_GLOBAL_CTL, bits),
        _ => {}
    }
}

/// Moves the multiplexed events one group forward: reads the counts of the
/// events on counters 1..=slots, then programs the next ones.
fn rotate(s: &mut St, now: u64) {
    let ran = now.wrapping_sub(s.slot_since);
    for k in 0..s.slots.min(8) {
        let c = 1 + k as u32;
        let ev = s.slot_event[k] % MAX_EVENTS;
        rt::wrmsr(s.lay.ctl_msr(c), 0);
        let v = rt::rdmsr(s.lay.ctr_msr(c));
        s.totals[ev] = s.totals[ev].wrapping_add(v);
        s.enabled_ticks[ev] = s.enabled_ticks[ev].wrapping_add(ran);
    }
    program_group(s);
    s.slot_since = rt::rdtsc();
}

fn program_group(s: &mut St) {
    for k in 0..s.slots.min(8) {
        let c = 1 + k as u32;
        let ev = s.next % s.nevents.max(1);
        s.next = ev + 1;
        s.slot_event[k] = ev;
        rt::wrmsr(s.lay.ctr_msr(c), 0);
        rt::wrmsr(s.lay.ctl_msr(c), sel(s.events[ev % MAX_EVENTS]));
    }
}

fn pmi(_f: &mut rt::Frame) {
    let now = rt::rdtsc();
    let s = st();
    let lat = now.wrapping_sub(s.due) as i64;
    s.samples += 1;
    s.lat_min = s.lat_min.min(lat);
    s.lat_max = s.lat_max.max(lat);
    s.lat_sum = s.lat_sum.wrapping_add(lat);
    if s.mux {
        rotate(s, now);
    }
    match s.lay.kind {
        Kind::Intel if s.lay.version >= 2 => rt::wrmsr(IA32_PERF_GLOBAL_OVF_CTRL, 1),
        Kind::AmdV2 => rt::wrmsr(AMD_GLOBAL_STATUS_CLR, 1),
        _ => {}
    }
    rt::lapic_write(rt::LAPIC_LVTPC, rt::LVT_NMI);
    rt::wrmsr(s.lay.ctr_msr(0), s.period.wrapping_neg() & s.mask);
    s.due = rt::rdtsc().wrapping_add(s.period);
}

// ---------------------------------------------------------------- workloads

#[link_section = ".text.wl_loop"]
#[inline(never)]
extern "C" fn wl_loop(n: u64) -> u64 {
    let mut x = 0u64;
    let mut i = 0;
    while i < n {
        x = core::hint::black_box(x.wrapping_mul(31) ^ i);
        i += 1;
    }
    x
}

#[link_section = ".text.wl_lfsr"]
#[inline(never)]
extern "C" fn wl_lfsr(n: u64) -> u64 {
    lfsr::branchy(n)
}

static mut CHASE_BASE: u64 = 0;
static mut CHASE_LEN: u64 = 0;

fn chase_buf() -> &'static mut [u32] {
    // SAFETY: CHASE_BASE/CHASE_LEN are set once, before the chase workload
    // runs, to `__image_end` (2 MiB aligned by link.ld) and `buf` KiB / 4
    // u32s: RAM past the image that no Rust object, stack or static uses
    // (all of those are inside the image), identity-mapped and user-accessible
    // like all of the first 4 GiB; the bench harness sizes the VM's memory to
    // hold it. Only the workload on vCPU 0 uses the slice, one borrow at a time.
    unsafe { core::slice::from_raw_parts_mut(CHASE_BASE as *mut u32, CHASE_LEN as usize) }
}

/// Builds the random single-cycle permutation (runs at CPL3).
extern "C" fn chase_build(seed: u64) -> u64 {
    lfsr::build_cycle(chase_buf(), seed);
    0
}

#[link_section = ".text.wl_chase"]
#[inline(never)]
extern "C" fn wl_chase(n: u64) -> u64 {
    let b = chase_buf();
    let mut i = 0u32;
    let mut k = 0;
    while k < n {
        i = match b.get(i as usize) {
            Some(&v) => v,
            None => 0,
        };
        k += 1;
    }
    i as u64
}

extern "C" {
    static __image_end: u8;
}

// ------------------------------------------------------------ MSR cost (CPL0)

/// IA32_SYSENTER_CS: an MSR KVM always handles in the kernel.
const MSR_KVM_HANDLED: u32 = 0x174;

/// TSC ticks for `n` iterations of the timing loop around RDMSR `msr`, or of
/// the empty loop when `msr` is `None`. Runs at CPL0 (where RDMSR is legal).
#[inline(never)]
fn time_rdmsr(msr: Option<u32>, n: u64) -> u64 {
    let mut acc = 0u64;
    let mut i = 0;
    let t0 = rt::rdtsc();
    while i < n {
        acc = acc.wrapping_add(match msr {
            Some(m) => rt::rdmsr(m),
            None => {
                // Register-only stand-in for the RDMSR (a stack access would
                // cost far more than the loop itself at emulated CPL0).
                // SAFETY: NOP has no effects at all.
                unsafe { core::arch::asm!("nop", options(nomem, nostack, preserves_flags)) };
                i
            }
        });
        i += 1;
    }
    let t1 = rt::rdtsc();
    core::hint::black_box(acc);
    t1 - t0
}

/// `workload=msr`: the cost of one RDMSR by how it is handled, timed at CPL0:
/// `kind=nop` (the loop alone), `kind=kvm` (IA32_SYSENTER_CS, handled inside
/// KVM) and `kind=pmu` (GP counter 0 of the PMU the guest sees, else the AMD
/// legacy counter 0xc0010004 / Intel IA32_PMC0 0xc1: with the userspace vPMU
/// this is an exit to the VMM). A PMU MSR that faults is reported with
/// `fault=V` and not timed.
fn msr_cost(lay: &Layout, iters: u64, reps: u64) -> ! {
    let pmu_msr = if lay.kind != Kind::None {
        lay.ctr_msr(0)
    } else if lay.amd_vendor {
        0xc001_0004
    } else {
        0xc1
    };
    let mut l = Line::new();
    l.s("BENCH start workload=msr iters=")
        .u(iters)
        .s(" reps=")
        .u(reps)
        .s(" pmu_kind=")
        .s(lay.name());
    rt::println(&l);
    let pmu_fault = rt::rdmsr_safe(pmu_msr).err();
    for rep in 0..reps {
        let kinds: [(&str, Option<u32>); 3] = [
            ("nop", None),
            ("kvm", Some(MSR_KVM_HANDLED)),
            ("pmu", Some(pmu_msr)),
        ];
        for (kind, msr) in kinds {
            l.clear();
            l.s("BENCH rep=").u(rep).s(" workload=msr kind=").s(kind);
            if let Some(m) = msr {
                l.s(" msr=").x(m as u64);
            }
            l.s(" iters=").u(iters);
            match (kind, pmu_fault) {
                ("pmu", Some(v)) => {
                    l.s(" fault=").u(v);
                }
                _ => {
                    l.s(" tsc=").u(time_rdmsr(msr, iters));
                }
            }
            rt::println(&l);
        }
    }
    rt::puts("BENCH done");
    rt::exit(0)
}

// --------------------------------------------------------------------- main

/// `count * run / enabled` in u64 (no 128-bit division helpers).
fn scale(count: u64, run: u64, enabled: u64) -> u64 {
    if enabled == 0 {
        return 0;
    }
    let (mut c, mut r, mut e) = (count, run, enabled);
    while c != 0 && r > u64::MAX / c {
        if c >= r {
            c >>= 1;
        } else {
            r >>= 1;
        }
        e = (e >> 1).max(1);
    }
    c * r / e
}

fn parse_mode(s: &str) -> Option<Mode> {
    if s == "none" {
        return Some(Mode::None);
    }
    let (k, v) = s.split_once(':')?;
    let n = cmdline::parse_u64(v)?;
    match k {
        "count" => Some(Mode::Count(n as usize)),
        "sample" => Some(Mode::Sample(n)),
        "multiplex" | "mux" => Some(Mode::Multiplex(n as usize)),
        _ => None,
    }
}

fn fail(msg: &str) -> ! {
    let mut l = Line::new();
    l.s("BENCH error=").s(msg);
    rt::println(&l);
    rt::puts("BENCH done");
    rt::exit(2)
}

#[no_mangle]
pub fn guest_main(cpu: u32, cmd: &'static str, _ncpus: u32) -> ! {
    if cpu != 0 {
        rt::halt_forever();
    }
    let cmd = Cmdline::new(cmd);
    let wname = cmd.get("workload").unwrap_or("loop");
    let (wl, default_iters): (extern "C" fn(u64) -> u64, u64) = match wname {
        "loop" => (wl_loop, 100_000_000),
        "lfsr" => (wl_lfsr, 50_000_000),
        "chase" => (wl_chase, 2_000_000),
        "msr" => msr_cost(
            &pmu::detect(),
            cmd.u64_or("iters", 10_000),
            cmd.u64_or("reps", 3).max(1),
        ),
        _ => fail("unknown-workload"),
    };
    let iters = cmd.u64_or("iters", default_iters);
    let reps = cmd.u64_or("reps", 3).max(1);
    let pmu_s = cmd.get("pmu").unwrap_or("none");
    let mode = match parse_mode(pmu_s) {
        Some(m) => m,
        None => fail("bad-pmu-spec"),
    };
    let tsc_khz = cmd.u64_or("tsc_khz", 2_500_000).max(1);
    let lay = pmu::detect();
    if mode != Mode::None && lay.kind == Kind::None {
        fail("no-pmu");
    }
    let s = st();
    s.lay = lay;
    s.mask = layout::mask_bits(lay.gp_width);
    let evlist: &[u64] = if lay.is_intel() {
        &INTEL_EVENTS
    } else {
        &AMD_EVENTS
    };

    // Counting / multiplexing setup.
    let gp = lay.gp as usize;
    let mut ncount = 0;
    let hz = match mode {
        Mode::Sample(hz) => hz,
        Mode::Multiplex(_) => cmd.u64_or("hz", 1000),
        _ => 0,
    };
    match mode {
        Mode::Count(n) => ncount = n.min(gp).min(8),
        Mode::Multiplex(n) => {
            if gp < 2 {
                fail("multiplex-needs-2-counters");
            }
            s.mux = true;
            s.nevents = n.clamp(1, MAX_EVENTS);
            s.slots = (gp - 1).min(8).min(s.nevents);
            for (e, &v) in s.events.iter_mut().zip(evlist.iter().cycle()) {
                *e = v;
            }
        }
        _ => {}
    }
    if hz > 0 {
        s.period = (tsc_khz * 1000 / hz).clamp(1000, 0x7fff_ffff);
        rt::set_nmi_hook(pmi);
    }

    if wname == "chase" {
        let kib = cmd.u64_or("buf", 8192).max(4);
        // SAFETY: plain stores to two statics, on vCPU 0 only, before the only
        // code that reads them (chase_buf, in the chase workload) runs; taking
        // the address of the linker symbol `__image_end` reads nothing.
        unsafe {
            CHASE_BASE = &raw const __image_end as u64;
            CHASE_LEN = kib * 1024 / 4;
        }
        rt::run_user(chase_build, cmd.u64_or("seed", 0x5eed));
    }

    let mut l = Line::new();
    l.s("BENCH start workload=")
        .s(wname)
        .s(" iters=")
        .u(iters)
        .s(" reps=")
        .u(reps)
        .s(" pmu=")
        .s(pmu_s)
        .s(" pmu_kind=")
        .s(lay.name())
        .s(" tsc_khz=")
        .u(tsc_khz)
        .s(" period=")
        .u(s.period)
        .s(" counters=")
        .u(if s.mux { s.slots as u64 } else { ncount as u64 });
    rt::println(&l);

    for rep in 0..reps {
        let s = st();
        s.samples = 0;
        s.lat_min = i64::MAX;
        s.lat_max = i64::MIN;
        s.lat_sum = 0;
        s.next = 0;
        s.totals = [0; MAX_EVENTS];
        s.enabled_ticks = [0; MAX_EVENTS];
        // Arm.
        if mode != Mode::None {
            global(&lay, 0);
        }
        for i in 0..ncount {
            let c = i as u32;
            rt::wrmsr(lay.ctl_msr(c), 0);
            rt::wrmsr(lay.ctr_msr(c), 0);
            rt::wrmsr(lay.ctl_msr(c), sel(*evlist.get(i % 7).unwrap_or(&0x3c)));
        }
        if s.mux {
            program_group(s);
        }
        let mut gmask = layout::mask_bits(ncount as u32);
        if s.mux {
            gmask = layout::mask_bits(s.slots as u32 + 1);
        }
        if hz > 0 {
            rt::lapic_pmi_nmi();
            rt::wrmsr(lay.ctl_msr(0), 0);
            rt::wrmsr(lay.ctr_msr(0), s.period.wrapping_neg() & s.mask);
            rt::wrmsr(
                lay.ctl_msr(0),
                lay.cycles_event() | EVTSEL_USR | EVTSEL_INT | EVTSEL_EN,
            );
            gmask |= 1;
        }
        if mode != Mode::None {
            global(&lay, gmask);
        }
        let now = rt::rdtsc();
        st().due = now.wrapping_add(st().period);
        st().slot_since = now;
        let t0 = rt::rdtsc();
        let result = rt::run_user(wl, iters);
        let t1 = rt::rdtsc();
        // Disarm and collect.
        if mode != Mode::None {
            global(&lay, 0);
        }
        let s = st();
        if hz > 0 {
            rt::wrmsr(lay.ctl_msr(0), 0);
        }
        if s.mux {
            rotate(s, t1);
            for k in 0..s.slots {
                rt::wrmsr(lay.ctl_msr(1 + k as u32), 0);
            }
        }
        let mut counts = [0u64; 8];
        for (i, c) in counts.iter_mut().enumerate().take(ncount) {
            *c = rt::rdmsr(lay.ctr_msr(i as u32));
            rt::wrmsr(lay.ctl_msr(i as u32), 0);
        }

        l.clear();
        l.s("BENCH rep=")
            .u(rep)
            .s(" workload=")
            .s(wname)
            .s(" pmu=")
            .s(pmu_s)
            .s(" tsc=")
            .u(t1 - t0)
            .s(" samples=")
            .u(s.samples);
        if hz > 0 && s.samples > 0 {
            l.s(" pmi_latency_tsc_min=")
                .i(s.lat_min)
                .s(" pmi_latency_tsc_max=")
                .i(s.lat_max)
                .s(" pmi_latency_tsc_sum=")
                .i(s.lat_sum);
        }
        if ncount > 0 {
            l.s(" counts=");
            for (i, &c) in counts.iter().enumerate().take(ncount) {
                if i > 0 {
                    l.s(",");
                }
                l.u(c);
            }
        }
        l.s(" result=").x(result);
        rt::println(&l);
        if s.mux {
            // Multiplexed totals, scaled like perf: count * run / enabled.
            l.clear();
            l.s("BENCH rep=").u(rep).s(" mux_counts=");
            let run = t1 - t0;
            let n = s.nevents;
            for (i, (&tot, &en)) in s
                .totals
                .iter()
                .zip(s.enabled_ticks.iter())
                .take(n)
                .enumerate()
            {
                if i > 0 {
                    l.s(",");
                }
                l.u(scale(tot, run, en));
            }
            rt::println(&l);
        }
    }
    rt::puts("BENCH done");
    rt::exit(0)
}
