//! Guest runtime shared by every freestanding guest: entry, per-CPU
//! GDT/TSS/IDT, trap handling with fault recovery for RDMSR/WRMSR, CPL3
//! entry and return, serial output, LAPIC and exit helpers.
//!
//! Everything here that runs at CPL0 is plain integer code: on hosts where
//! guest supervisor code is emulated instruction by instruction the CPL0
//! paths must stay short and avoid SSE, int3/int n, xsave, popcnt, ...

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::fmt::Line;

pub const MAX_CPUS: usize = 16;
const KSTACK: usize = 16 * 1024;
const XSTACK: usize = 8 * 1024;
const USTACK: usize = 64 * 1024;

pub const KERNEL_CS: u64 = 0x08;
pub const KERNEL_DS: u64 = 0x10;
pub const USER_DS: u64 = 0x18 | 3;
pub const USER_CS: u64 = 0x20 | 3;
const TSS_SEL: u16 = 0x28;

pub const LAPIC_BASE: usize = 0xfee0_0000;
pub const LAPIC_SVR: usize = 0xf0;
pub const LAPIC_LVTPC: usize = 0x340;
pub const LVT_NMI: u32 = 0x400;
pub const LVT_MASK: u32 = 1 << 16;

#[repr(C, align(16))]
struct Stacks<const N: usize>([u8; N]);

static mut KSTACKS: Stacks<{ KSTACK * MAX_CPUS }> = Stacks([0; KSTACK * MAX_CPUS]);
static mut RSP0_STACKS: Stacks<{ XSTACK * MAX_CPUS }> = Stacks([0; XSTACK * MAX_CPUS]);
static mut NMI_STACKS: Stacks<{ XSTACK * MAX_CPUS }> = Stacks([0; XSTACK * MAX_CPUS]);
static mut USER_STACKS: Stacks<{ USTACK * MAX_CPUS }> = Stacks([0; USTACK * MAX_CPUS]);

/// Per-CPU state, reached through GS base at CPL0. The first fields have
/// fixed offsets used by assembly.
#[repr(C, align(64))]
pub struct PerCpu {
    pub self_ptr: u64,    // 0
    pub recover_rip: u64, // 8: where a CPL0 fault resumes (0 = fatal)
    pub faulted: u64,     // 16: vector + 1 of the last recovered fault
    pub saved_ksp: u64,   // 24: kernel RSP saved by run_user
    pub cpu: u64,         // 32
    pub nmis: u64,        // 40: NMIs taken
    gdt: [u64; 8],
    tss: [u32; 26],
    idt: [u64; 64], // 32 gates
}

const OFF_RECOVER: usize = 8;
const OFF_FAULTED: usize = 16;
const OFF_SAVED_KSP: usize = 24;

const PERCPU_INIT: PerCpu = PerCpu {
    self_ptr: 0,
    recover_rip: 0,
    faulted: 0,
    saved_ksp: 0,
    cpu: 0,
    nmis: 0,
    gdt: [0; 8],
    tss: [0; 26],
    idt: [0; 64],
};
static mut PERCPU: [PerCpu; MAX_CPUS] = [PERCPU_INIT; MAX_CPUS];

/// Saved interrupt frame: general registers as pushed by the stubs, then the
/// vector, error code and the CPU's frame.
#[repr(C)]
pub struct Frame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

global_asm!(
    r#"
    .section .text.start,"ax"
    .global _start
_start:
    cli
    cld
    cmp rdi, {max}
    jae 9f
    mov rax, rdi
    inc rax
    shl rax, 14
    lea rsp, [rip + {kstacks}]
    add rsp, rax
    xor ebp, ebp
    call {entry}
9:
    hlt
    jmp 9b

    .section .text.rt_traps,"ax"
.macro VEC_NOERR n
    .balign 16
    push 0
    push \n
    jmp rt_trap_common
.endm
.macro VEC_ERR n
    .balign 16
    push \n
    jmp rt_trap_common
.endm
    .balign 16
    .global rt_vectors
rt_vectors:
    VEC_NOERR 0
    VEC_NOERR 1
    VEC_NOERR 2
    VEC_NOERR 3
    VEC_NOERR 4
    VEC_NOERR 5
    VEC_NOERR 6
    VEC_NOERR 7
    VEC_ERR 8
    VEC_NOERR 9
    VEC_ERR 10
    VEC_ERR 11
    VEC_ERR 12
    VEC_ERR 13
    VEC_ERR 14
    VEC_NOERR 15
    VEC_NOERR 16
    VEC_ERR 17
    VEC_NOERR 18
    VEC_NOERR 19
    VEC_NOERR 20
    VEC_ERR 21
    VEC_NOERR 22
    VEC_NOERR 23
    VEC_NOERR 24
    VEC_NOERR 25
    VEC_NOERR 26
    VEC_NOERR 27
    VEC_NOERR 28
    VEC_ERR 29
    VEC_ERR 30
    VEC_NOERR 31

rt_trap_common:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    cld
    call {trap}
    test eax, eax
    jnz 2f
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16
    iretq
2:
    mov rax, [rsp + 72]
    mov rsp, gs:[{ksp}]
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret

    .global rt_run_user
rt_run_user:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov gs:[{ksp}], rsp
    push {uds}
    push rdx
    push 0x3002
    push {ucs}
    lea rax, [rip + rt_user_tramp]
    push rax
    mov rax, rdi
    mov rdi, rsi
    xor ebp, ebp
    iretq
rt_user_tramp:
    call rax
    mov rdi, rax
    .global rt_user_ret_ud2
rt_user_ret_ud2:
    ud2
    "#,
    max = const MAX_CPUS,
    kstacks = sym KSTACKS,
    entry = sym rt_entry,
    trap = sym rt_trap,
    ksp = const OFF_SAVED_KSP,
    uds = const USER_DS,
    ucs = const USER_CS,
);

extern "C" {
    fn rt_run_user(f: extern "C" fn(u64) -> u64, arg: u64, stack_top: u64) -> u64;
    static rt_vectors: u8;
    static rt_user_ret_ud2: u8;
}

/// Number of vCPUs (RDX at entry).
pub static NCPUS: AtomicU64 = AtomicU64::new(1);

/// Sets up this vCPU (GDT, TSS, IDT, GS base) and enters `guest_main`.
///
/// # Safety
///
/// Called once per vCPU, only by `_start`, at CPL0 on the vCPU's own kernel
/// stack, with `cpu` the vCPU index (distinct per vCPU) and `cmdline` 0 or the
/// guest-physical (identity-mapped) address the VMM put the command line at.
// The body's unsafe operations: the raw `PERCPU[c]` writes touch only this
// vCPU's slot (`c` is unique per vCPU and checked < MAX_CPUS), before anything
// else can reach it (GS base is set last); the stack statics are only used for
// their addresses; the asm loads descriptor tables that were just filled in and
// stay alive (`PERCPU` is static) with selectors that match them.
unsafe extern "C" fn rt_entry(cpu: u64, cmdline: u64, ncpus: u64) -> ! {
    let c = cpu as usize;
    if c >= MAX_CPUS {
        halt_forever();
    }
    let pc = &raw mut PERCPU[c];
    (*pc).self_ptr = pc as u64;
    (*pc).cpu = cpu;
    if cpu == 0 {
        NCPUS.store(ncpus.max(1), Ordering::SeqCst);
    }

    // GDT: null, kernel code, kernel data, user data, user code, TSS.
    let gdt = &raw mut (*pc).gdt;
    (*gdt)[0] = 0;
    (*gdt)[1] = 0x00af_9a00_0000_ffff;
    (*gdt)[2] = 0x00cf_9200_0000_ffff;
    (*gdt)[3] = 0x00cf_f200_0000_ffff;
    (*gdt)[4] = 0x00af_fa00_0000_ffff;
    let tss = &raw mut (*pc).tss;
    let rsp0 = (&raw const RSP0_STACKS) as u64 + ((c + 1) * XSTACK) as u64;
    let ist1 = (&raw const NMI_STACKS) as u64 + ((c + 1) * XSTACK) as u64;
    (*tss)[1] = rsp0 as u32;
    (*tss)[2] = (rsp0 >> 32) as u32;
    (*tss)[9] = ist1 as u32;
    (*tss)[10] = (ist1 >> 32) as u32;
    (*tss)[25] = 104 << 16; // I/O map base beyond the limit: no bitmap
    let tb = tss as u64;
    (*gdt)[5] = 103 | ((tb & 0xff_ffff) << 16) | (0x89u64 << 40) | (((tb >> 24) & 0xff) << 56);
    (*gdt)[6] = tb >> 32;

    // IDT: vectors 0-31, NMI on IST1.
    let idt = &raw mut (*pc).idt;
    let base = &raw const rt_vectors as u64;
    for (v, gate) in (*idt).chunks_exact_mut(2).enumerate() {
        let h = base + v as u64 * 16;
        let ist = if v == 2 { 1u64 } else { 0 };
        gate[0] = (h & 0xffff)
            | (KERNEL_CS << 16)
            | (ist << 32)
            | (0x8eu64 << 40)
            | (((h >> 16) & 0xffff) << 48);
        gate[1] = h >> 32;
    }

    let gdtr: [u16; 5] = [
        (8 * 8 - 1) as u16,
        gdt as u64 as u16,
        (gdt as u64 >> 16) as u16,
        (gdt as u64 >> 32) as u16,
        (gdt as u64 >> 48) as u16,
    ];
    let idtr: [u16; 5] = [
        (32 * 16 - 1) as u16,
        idt as u64 as u16,
        (idt as u64 >> 16) as u16,
        (idt as u64 >> 32) as u16,
        (idt as u64 >> 48) as u16,
    ];
    asm!(
        "lgdt [{g}]",
        "mov ds, {ds:x}",
        "mov es, {ds:x}",
        "mov ss, {ds:x}",
        "mov fs, {z:x}",
        "mov gs, {z:x}",
        "ltr {t:x}",
        "lidt [{i}]",
        g = in(reg) gdtr.as_ptr(),
        i = in(reg) idtr.as_ptr(),
        ds = in(reg) KERNEL_DS,
        z = in(reg) 0u64,
        t = in(reg) TSS_SEL as u64,
    );
    wrmsr(0xc000_0101, pc as u64); // IA32_GS_BASE

    let cmd = cmdline_str(cmdline);
    crate::guest_main(cpu as u32, cmd, ncpus.max(1) as u32)
}

/// The printable-ASCII prefix (at most 4096 bytes) of the string at `addr`.
///
/// # Safety
///
/// `addr` is 0 or the address of at least as many readable bytes as the
/// prefix plus its terminator, which stay unchanged for the rest of the run:
/// the VMM writes the command line into guest RAM (identity-mapped) before
/// entry and nothing writes it afterwards.
unsafe fn cmdline_str(addr: u64) -> &'static str {
    if addr == 0 {
        return "";
    }
    // Printable ASCII only (stops at NUL or anything else), so the result is
    // valid UTF-8 without calling the library validator.
    let p = addr as *const u8;
    let mut n = 0;
    while n < 4096 {
        let b = *p.add(n);
        if !(0x20..0x7f).contains(&b) && b != b'\t' {
            break;
        }
        n += 1;
    }
    core::str::from_utf8_unchecked(core::slice::from_raw_parts(p, n))
}

/// Hook called for every NMI (PMIs arrive as NMIs).
pub static NMI_HOOK: AtomicU64 = AtomicU64::new(0);

pub fn set_nmi_hook(f: fn(&mut Frame)) {
    NMI_HOOK.store(f as usize as u64, Ordering::SeqCst);
}

/// Returns 1 to resume the kernel context saved by `run_user`.
///
/// # Safety
///
/// Called only by the trap stubs, with interrupts off, on the stack the CPU
/// switched to, with `f` the frame they pushed.
// The body's unsafe operations: GS base is 0 (-> CPU 0's slot) or this vCPU's
// own `PerCpu` (rt_entry set it), which only this vCPU writes; a non-zero
// NMI_HOOK was stored by `set_nmi_hook` from a `fn(&mut Frame)`, so the
// transmute gives that function back.
unsafe extern "C" fn rt_trap(f: &mut Frame) -> u64 {
    let pc = &raw mut PERCPU[0];
    let pc: *mut PerCpu = {
        let p: u64;
        asm!("mov {}, gs:[0]", out(reg) p);
        if p == 0 {
            pc
        } else {
            p as *mut PerCpu
        }
    };
    if f.vector == 2 {
        (*pc).nmis += 1;
        let h = NMI_HOOK.load(Ordering::Relaxed);
        if h != 0 {
            let h: fn(&mut Frame) = core::mem::transmute(h as usize);
            h(f);
        }
        return 0;
    }
    if f.vector == 6 && f.cs & 3 == 3 && f.rip == &raw const rt_user_ret_ud2 as u64 {
        return 1;
    }
    if f.cs & 3 == 0 && (*pc).recover_rip != 0 {
        f.rip = (*pc).recover_rip;
        (*pc).recover_rip = 0;
        (*pc).faulted = f.vector + 1;
        return 0;
    }
    let mut l = Line::new();
    l.s("FATAL: exception ")
        .u(f.vector)
        .s(" err=")
        .x(f.error)
        .s(" rip=")
        .x(f.rip)
        .s(" cs=")
        .x(f.cs)
        .s(" rsp=")
        .x(f.rsp)
        .s(" cpu=")
        .u((*pc).cpu);
    println(&l);
    exit(3)
}

/// Runs `f(arg)` at CPL3 (IOPL=3, IF=0) on this CPU's user stack and returns
/// its result. Must be called at CPL0.
pub fn run_user(f: extern "C" fn(u64) -> u64, arg: u64) -> u64 {
    let cpu = this_cpu() as usize;
    // SAFETY: only the address of the static is taken (no reference is made).
    let top = unsafe { (&raw const USER_STACKS) as u64 + ((cpu + 1) * USTACK) as u64 };
    // SAFETY: we are at CPL0 (documented precondition), so rt_run_user can save
    // the kernel RSP in this vCPU's PerCpu and return through rt_trap; `top` is
    // the end of this vCPU's own USTACK-sized slice of USER_STACKS (cpu <
    // MAX_CPUS, set by rt_entry), used by no one else.
    unsafe { rt_run_user(f, arg, top) }
}

pub fn this_cpu() -> u64 {
    let c: u64;
    // SAFETY: reads PerCpu::cpu (offset 32) of this vCPU's PerCpu, which GS
    // base points at since rt_entry; a plain load with no other effects.
    unsafe { asm!("mov {}, gs:[32]", out(reg) c) };
    c
}

pub fn nmi_count() -> u64 {
    let c: u64;
    // SAFETY: reads PerCpu::nmis (offset 40) of this vCPU's PerCpu through GS
    // base, as in `this_cpu`; a plain load with no other effects.
    unsafe { asm!("mov {}, gs:[40]", out(reg) c) };
    c
}

// ---------------------------------------------------------------- MSRs, CPUID

pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDMSR only writes EDX:EAX; it touches no memory. Callers use it at
    // CPL0 on MSRs that exist (a #GP here is a fatal guest error, reported by
    // rt_trap; `rdmsr_safe` is the probing variant).
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack)) };
    (hi as u64) << 32 | lo as u64
}

pub fn wrmsr(msr: u32, v: u64) {
    // SAFETY: the MSRs this runtime and the guests write (GS base, PMU
    // controls and counters) change no memory the compiler knows of: GS base
    // is only used through explicit gs: operands, and PMU MSRs only count and
    // raise NMIs, which rt_trap handles. A #GP is a fatal guest error.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nostack))
    };
}

/// RDMSR at CPL0; `Err(vector)` if it faulted (13 = #GP).
#[inline(never)]
pub fn rdmsr_safe(msr: u32) -> Result<u64, u64> {
    let (lo, hi): (u32, u32);
    let fault: u64;
    // SAFETY: as `rdmsr`; in addition the asm arms this vCPU's fault recovery
    // (PerCpu::recover_rip / faulted through GS base, set up by rt_entry), so a
    // #GP resumes at label 2 with `faulted` set instead of ending the guest;
    // recovery is disarmed again before the asm ends.
    unsafe {
        asm!(
            "lea rax, [rip + 2f]",
            "mov qword ptr gs:[{rec}], rax",
            "mov qword ptr gs:[{flt}], 0",
            "xor eax, eax",
            "xor edx, edx",
            "rdmsr",
            "2:",
            "mov qword ptr gs:[{rec}], 0",
            "mov {f}, qword ptr gs:[{flt}]",
            rec = const OFF_RECOVER,
            flt = const OFF_FAULTED,
            f = out(reg) fault,
            in("ecx") msr,
            out("eax") lo,
            out("edx") hi,
            options(nostack),
        );
    }
    if fault != 0 {
        Err(fault - 1)
    } else {
        Ok((hi as u64) << 32 | lo as u64)
    }
}

/// WRMSR at CPL0; `Err(vector)` if it faulted (13 = #GP).
#[inline(never)]
pub fn wrmsr_safe(msr: u32, v: u64) -> Result<(), u64> {
    let fault: u64;
    // SAFETY: as `wrmsr`, with this vCPU's fault recovery armed around the
    // instruction as in `rdmsr_safe`: a #GP resumes at label 2.
    unsafe {
        asm!(
            "lea {f}, [rip + 2f]",
            "mov qword ptr gs:[{rec}], {f}",
            "mov qword ptr gs:[{flt}], 0",
            "wrmsr",
            "2:",
            "mov qword ptr gs:[{rec}], 0",
            "mov {f}, qword ptr gs:[{flt}]",
            rec = const OFF_RECOVER,
            flt = const OFF_FAULTED,
            f = out(reg) fault,
            in("ecx") msr,
            in("eax") v as u32,
            in("edx") (v >> 32) as u32,
            options(nostack),
        );
    }
    if fault != 0 {
        Err(fault - 1)
    } else {
        Ok(())
    }
}

pub fn cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    // A safe fn since Rust 1.87 (the workspace's rust-version).
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    [r.eax, r.ebx, r.ecx, r.edx]
}

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter into registers; it is
    // allowed at CPL3 too (the runtime never sets CR4.TSD).
    unsafe { core::arch::x86_64::_rdtsc() }
}

// ------------------------------------------------------------------ I/O

pub fn outb(port: u16, v: u8) {
    // SAFETY: port output touches no guest memory (nomem); the ports used are
    // the VMM's emulated devices (COM1, debug-exit, i8042). Runs at CPL0 or at
    // CPL3 with IOPL=3 (`run_user`), so it does not fault.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack)) };
}

pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as `outb`: a port read with no memory effects, allowed at CPL0
    // and at CPL3 with IOPL=3.
    unsafe { asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack)) };
    v
}

pub fn outl(port: u16, v: u32) {
    // SAFETY: as `outb`, 32 bits wide.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack)) };
}

fn putc(b: u8) {
    let mut tries = 0;
    while inb(0x3fd) & 0x20 == 0 && tries < 64 {
        tries += 1;
    }
    outb(0x3f8, b);
}

static PRINT_LOCK: AtomicU32 = AtomicU32::new(0);

fn lock_print() {
    while PRINT_LOCK.swap(1, Ordering::Acquire) != 0 {
        core::hint::spin_loop();
    }
}

fn unlock_print() {
    PRINT_LOCK.store(0, Ordering::Release);
}

/// Prints `s` followed by a newline, atomically with respect to other vCPUs.
pub fn puts(s: &str) {
    lock_print();
    for &b in s.as_bytes() {
        putc(b);
    }
    putc(b'\n');
    unlock_print();
}

pub fn println(l: &Line) {
    lock_print();
    for &b in l.as_bytes() {
        putc(b);
    }
    putc(b'\n');
    unlock_print();
}

/// Ends the VM through the debug-exit port (status V); never returns.
pub fn exit(v: u32) -> ! {
    outl(0xf4, v);
    // Fallback for a VMM without the debug-exit port: i8042 reset.
    outb(0x64, 0xfe);
    loop {
        core::hint::spin_loop();
    }
}

pub fn halt_forever() -> ! {
    loop {
        // SAFETY: HLT waits for an interrupt and changes nothing else (a vCPU
        // halted with IF=0 just stays here, which is the point).
        unsafe { asm!("hlt", options(nomem, nostack)) };
    }
}

// ----------------------------------------------------------------- LAPIC

pub fn lapic_write(off: usize, v: u32) {
    // SAFETY: LAPIC_BASE (0xfee00000) is the local APIC's MMIO page, identity-
    // mapped and not RAM, so no Rust object lives there; callers pass register
    // offsets within the page, 16-byte aligned as the APIC requires.
    unsafe { core::ptr::write_volatile((LAPIC_BASE + off) as *mut u32, v) };
}

pub fn lapic_read(off: usize) -> u32 {
    // SAFETY: as `lapic_write`: an aligned volatile read of an APIC register.
    unsafe { core::ptr::read_volatile((LAPIC_BASE + off) as *const u32) }
}

/// Software-enables the LAPIC (SVR bit 8, spurious vector 0xff) and routes
/// PMIs (LVTPC) as NMIs.
pub fn lapic_pmi_nmi() {
    lapic_write(LAPIC_SVR, 0x1ff);
    lapic_write(LAPIC_LVTPC, LVT_NMI);
}

// ------------------------------------------------- compiler-required symbols

// The four C memory functions the compiler may emit calls to. Their contract
// (the C standard's) is the safety requirement: `n` bytes readable at the
// source(s) and writable at `dst`, and for memcpy no overlap.

/// # Safety
///
/// C's `memcpy`: `src` readable and `dst` writable for `n` bytes, not
/// overlapping. REP MOVSB copies exactly those bytes forward (DF is clear, as
/// the ABI requires: `_start` and the trap stubs run CLD, and memmove clears
/// DF again right after its backward copy).
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    asm!("rep movsb", inout("rdi") dst => _, inout("rsi") src => _, inout("rcx") n => _,
         options(nostack, preserves_flags));
    dst
}

/// # Safety
///
/// C's `memmove`: `src` readable and `dst` writable for `n` bytes; they may
/// overlap. A forward copy is used when it cannot overwrite unread source
/// bytes, else a backward REP MOVSB from the last byte (DF set, then cleared).
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize) + n {
        return memcpy(dst, src, n);
    }
    asm!("std", "rep movsb", "cld",
         inout("rdi") dst.add(n).wrapping_sub(1) => _,
         inout("rsi") src.add(n).wrapping_sub(1) => _,
         inout("rcx") n => _, options(nostack));
    dst
}

/// # Safety
///
/// C's `memset`: `dst` writable for `n` bytes; REP STOSB writes exactly those.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    asm!("rep stosb", inout("rdi") dst => _, inout("rcx") n => _, in("al") c as u8,
         options(nostack, preserves_flags));
    dst
}

/// # Safety
///
/// C's `memcmp`: `a` and `b` readable for `n` bytes; only those are read.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        let (x, y) = (
            core::ptr::read_volatile(a.add(i)),
            core::ptr::read_volatile(b.add(i)),
        );
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

/// # Safety
///
/// As `memcmp`, whose result it returns.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    memcmp(a, b, n)
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    puts("PANIC");
    exit(4)
}

/// The prebuilt libcore for this target is compiled with unwinding and may
/// reference the personality routine; guests abort on panic, so it is never
/// called.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}
