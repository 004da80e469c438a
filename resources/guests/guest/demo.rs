//! demo: banner, the PMU the guest sees, a short CPL3 workload and, when a
//! PMU exists, a tiny `perf record`-style profile of it (cycles sampling via
//! PMIs delivered as NMIs). Other vCPUs report in and halt.
#![no_std]
#![no_main]

#[path = "pure/cmdline.rs"]
mod cmdline;
#[path = "pure/fmt.rs"]
mod fmt;
#[path = "pure/hist.rs"]
mod hist;
#[path = "pure/layout.rs"]
mod layout;
#[path = "pure/lfsr.rs"]
mod lfsr;
mod pmu;
mod rt;

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use cmdline::Cmdline;
use fmt::Line;
use layout::Kind;

static REPORTED: AtomicU32 = AtomicU32::new(0);

const MAX_SAMPLES: usize = 8192;
static mut SAMPLES: [u64; MAX_SAMPLES] = [0; MAX_SAMPLES];
static NSAMPLES: AtomicU64 = AtomicU64::new(0);
static mut SAMPLER: Option<pmu::Sampler> = None;

/// Default sampling period in cycles (TSC ticks under the clock model).
const DEFAULT_PERIOD: u64 = 2_000_000;

fn pmi(f: &mut rt::Frame) {
    let n = NSAMPLES.load(Ordering::Relaxed);
    // SAFETY: this NMI hook runs on vCPU 0 only (the others never arm a
    // counter), and the main flow touches SAMPLES only after stopping the
    // sampler (print_profile), so this is the only access to SAMPLES while it
    // runs; SAMPLER was stored before the hook was installed and is only read
    // (copied) here.
    unsafe {
        if let Some(slot) = (*(&raw mut SAMPLES)).get_mut(n as usize) {
            *slot = f.rip;
        }
        NSAMPLES.store(n + 1, Ordering::Relaxed);
        if let Some(s) = SAMPLER {
            s.rearm(0);
        }
    }
}

#[no_mangle]
pub fn guest_main(cpu: u32, cmd: &'static str, ncpus: u32) -> ! {
    if cpu != 0 {
        let mut l = Line::new();
        l.s("vcpu ")
            .u(cpu as u64)
            .s(" of ")
            .u(ncpus as u64)
            .s(" reporting");
        rt::println(&l);
        REPORTED.fetch_add(1, Ordering::SeqCst);
        rt::halt_forever();
    }
    let cmd = Cmdline::new(cmd);
    let mut l = Line::new();
    l.s("vpmu-vmm demo guest: ")
        .u(ncpus as u64)
        .s(" vCPU(s), cmdline \"")
        .s(cmd.as_str())
        .s("\"");
    rt::println(&l);

    let lay = pmu::detect();
    l.clear();
    l.s("pmu: ");
    pmu::describe(&lay, &mut l);
    rt::println(&l);

    let scale = cmd.u64_or("work", 4).clamp(1, 1000);
    let period = cmd.u64_or("period", DEFAULT_PERIOD);
    let profile = lay.kind != Kind::None && cmd.get("profile") != Some("off");
    if profile {
        let s = pmu::Sampler::new(lay, period, lay.cycles_event(), pmu::EVTSEL_USR);
        // SAFETY: a store on vCPU 0 before `set_nmi_hook` installs the only
        // other user (the PMI hook): nothing reads SAMPLER concurrently.
        unsafe { SAMPLER = Some(s) };
        rt::set_nmi_hook(pmi);
        s.start(0);
    }

    let t0 = rt::rdtsc();
    let primes = rt::run_user(wl_sieve, scale);
    let lfsr_state = rt::run_user(wl_lfsr, scale);
    let sum = rt::run_user(wl_checksum, scale);
    let t1 = rt::rdtsc();

    if profile {
        // SAFETY: a read (copy) on vCPU 0; the PMI hook only reads SAMPLER too.
        if let Some(s) = unsafe { SAMPLER } {
            s.stop(0);
        }
    }

    l.clear();
    l.s("workload: sieve primes=")
        .u(primes)
        .s(" lfsr=")
        .xw(lfsr_state, 16)
        .s(" checksum=")
        .xw(sum, 8);
    rt::println(&l);
    l.clear();
    l.s("workload: ").u(t1 - t0).s(" tsc ticks");
    rt::println(&l);

    if lay.kind == Kind::None {
        rt::puts("profile: no PMU in this guest");
    } else if !profile {
        rt::puts("profile: off");
    } else {
        print_profile(period);
    }

    // Wait (bounded) for the other vCPUs to report before ending the VM.
    let others = ncpus.saturating_sub(1);
    let start = rt::rdtsc();
    while REPORTED.load(Ordering::SeqCst) < others {
        if rt::rdtsc().wrapping_sub(start) > 20_000_000_000 {
            rt::puts("demo: timed out waiting for other vCPUs");
            break;
        }
        core::hint::spin_loop();
    }
    l.clear();
    l.s("demo: done (")
        .u(REPORTED.load(Ordering::SeqCst) as u64 + 1)
        .s(" of ")
        .u(ncpus as u64)
        .s(" vCPUs reported)");
    rt::println(&l);
    rt::exit(0)
}

extern "C" {
    static __wl_sieve_start: u8;
    static __wl_sieve_end: u8;
    static __wl_lfsr_start: u8;
    static __wl_lfsr_end: u8;
    static __wl_checksum_start: u8;
    static __wl_checksum_end: u8;
}

fn print_profile(period: u64) {
    let total = NSAMPLES.load(Ordering::SeqCst);
    let kept = (total as usize).min(MAX_SAMPLES);
    // SAFETY: only the addresses of the linker-defined symbols are taken; the
    // bytes at them are never read.
    let ranges = unsafe {
        [
            hist::Range {
                name: "sieve",
                start: &raw const __wl_sieve_start as u64,
                end: &raw const __wl_sieve_end as u64,
            },
            hist::Range {
                name: "lfsr_branchy",
                start: &raw const __wl_lfsr_start as u64,
                end: &raw const __wl_lfsr_end as u64,
            },
            hist::Range {
                name: "checksum",
                start: &raw const __wl_checksum_start as u64,
                end: &raw const __wl_checksum_end as u64,
            },
        ]
    };
    let mut counts = [0u64; 3];
    // SAFETY: called after the sampler is stopped, so the PMI hook (the only
    // writer) no longer runs; vCPU 0 is the only reader.
    let samples = unsafe { (*(&raw const SAMPLES)).get(..kept).unwrap_or(&[]) };
    let other = hist::tally(samples, &ranges, &mut counts);
    let mut l = Line::new();
    l.s("profile: ")
        .u(total)
        .s(" samples (cycles, period ")
        .u(period)
        .s(")");
    rt::println(&l);
    let n = kept as u64;
    for (r, &c) in ranges.iter().zip(counts.iter()) {
        l.clear();
        l.s("  ").s(r.name).pad_to(16);
        pct(&mut l, c, n);
        l.s(" ").repeat(b'#', hist::bar_len(c, n, 40) as usize);
        rt::println(&l);
    }
    l.clear();
    l.s("  other").pad_to(16);
    pct(&mut l, other, n);
    l.s(" ").repeat(b'#', hist::bar_len(other, n, 40) as usize);
    rt::println(&l);
}

/// Right-aligned `ddd.d%`.
fn pct(l: &mut Line, num: u64, den: u64) {
    let t = fmt::percent_tenths(num, den);
    l.u_right(t / 10, 3).byte(b'.').u(t % 10).byte(b'%');
}

// ------------------------------------------------------------ CPL3 workload

const SIEVE_N: usize = 1 << 20;
static mut SIEVE: [u8; SIEVE_N] = [0; SIEVE_N];

/// Sieve of Eratosthenes below 2^20, repeated `scale` times; returns the
/// number of primes.
#[link_section = ".text.wl_sieve"]
#[inline(never)]
extern "C" fn wl_sieve(scale: u64) -> u64 {
    // SAFETY: the workloads run one after another on vCPU 0 (run_user returns
    // before the next starts), so this is the only live reference to SIEVE.
    let s = unsafe { &mut *(&raw mut SIEVE) };
    let mut count = 0;
    for _ in 0..scale * 4 {
        let mut i = 0;
        while i < SIEVE_N {
            s[i] = 1;
            i += 1;
        }
        s[0] = 0;
        s[1] = 0;
        let mut p = 2;
        while p * p < SIEVE_N {
            if s[p] != 0 {
                let mut m = p * p;
                while m < SIEVE_N {
                    s[m] = 0;
                    m += p;
                }
            }
            p += 1;
        }
        count = 0;
        let mut i = 0;
        while i < SIEVE_N {
            count += s[i] as u64;
            i += 1;
        }
    }
    count
}

/// A Galois LFSR driving data-dependent (unpredictable) branches.
#[link_section = ".text.wl_lfsr"]
#[inline(never)]
extern "C" fn wl_lfsr(scale: u64) -> u64 {
    lfsr::branchy(scale * 4_000_000)
}

/// Fletcher-style checksum over the sieve buffer, repeated.
#[link_section = ".text.wl_checksum"]
#[inline(never)]
extern "C" fn wl_checksum(scale: u64) -> u64 {
    // SAFETY: as in wl_sieve: no other reference to SIEVE is live meanwhile.
    let s = unsafe { &*(&raw const SIEVE) };
    let (mut a, mut b) = (1u64, 0u64);
    for r in 0..scale * 6 {
        let mut i = 0;
        while i < SIEVE_N {
            a = (a + s[i] as u64 + (i as u64 & 0xff) + r) % 65521;
            b = (b + a) % 65521;
            i += 1;
        }
    }
    (b << 16) | a
}
