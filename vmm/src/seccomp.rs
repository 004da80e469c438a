//! Seccomp filters per thread kind (rust-vmm's `seccompiler`), so that a VMM thread that a
//! hostile guest manages to subvert can only make the system calls its job needs.
//!
//! - **vCPU threads**: KVM ioctls (KVM_RUN, register and LAPIC access, KVM_NMI, MSR
//!   access, irq lines), the console and disk I/O done on the vCPU thread (read/write,
//!   pread/pwrite, fsync), the userspace vPMU's overflow timer (timer_*) and host perf
//!   counters (perf_event_open, read, perf ioctls, fcntl for the overflow signal), kicks
//!   (tgkill), memory management and futexes of the Rust runtime, and exit.
//! - **main thread, once the vCPUs run**: its event loop (epoll), stdin/stdout, terminal
//!   ioctls, kicks, joining, and writing the end-of-run outputs (audit log, report).
//!
//! - **console output thread**: the common set only (it writes the guest's console output
//!   to stdout).
//!
//! Everything else is trapped: the SIGSYS handler writes one line naming the system call
//! and ends the process with status 2 (a VMM error), never silently. `--no-seccomp` turns
//! the filters off for debugging. NoNewPrivs is set before installing (required for an
//! unprivileged seccomp filter, and it keeps exec'd helpers from gaining privileges).

use std::collections::BTreeMap;
use std::convert::TryInto;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::{Result, SeccompError};

/// Which filter a thread gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread (installs its filter first thing).
    Vcpu,
    /// The main thread, after the vCPUs were spawned.
    Main,
    /// The console output thread (`crate::console::ConsoleOut`): writes to stdout only.
    Console,
    /// The audit log's writer thread (`crate::pmu::audit`): writes and syncs its file only.
    Audit,
}

impl ThreadKind {
    fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::Main => "main",
            ThreadKind::Console => "console output",
            ThreadKind::Audit => "audit writer",
        }
    }
}

/// System calls both kinds need: the Rust runtime (allocation, futexes, signals, thread
/// exit), plain I/O on descriptors the VMM already holds, time.
const COMMON: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_gettimeofday,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigaction,
    libc::SYS_sigaltstack,
    libc::SYS_getrandom,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_prctl,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_eventfd2,
];

/// vCPU threads only.
const VCPU: &[libc::c_long] = &[
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_timer_create,
    libc::SYS_timer_settime,
    libc::SYS_timer_delete,
    libc::SYS_perf_event_open,
    libc::SYS_fcntl,
];

/// The main thread only (after the vCPUs started).
const MAIN: &[libc::c_long] = &[
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_openat,
    libc::SYS_ftruncate,
    libc::SYS_fcntl,
];

/// ioctl request types (bits 15:8 of the request) a VMM thread may use: KVM (0xAE),
/// perf events ('$' = 0x24), terminals (0x54 'T': TCGETS/TCSETS, the console's raw mode).
const IOCTL_TYPES: &[u64] = &[0xAE, 0x24, 0x54];

fn ioctl_rules() -> std::result::Result<Vec<SeccompRule>, SeccompError> {
    IOCTL_TYPES
        .iter()
        .map(|&t| {
            let cond = SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(0xff00),
                t << 8,
            )
            .map_err(SeccompError::Build)?;
            SeccompRule::new(vec![cond]).map_err(SeccompError::Build)
        })
        .collect()
}

/// The compiled BPF program for `kind`.
pub fn program(kind: ThreadKind) -> std::result::Result<BpfProgram, SeccompError> {
    let own = match kind {
        ThreadKind::Vcpu => VCPU,
        ThreadKind::Main => MAIN,
        ThreadKind::Console | ThreadKind::Audit => &[],
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        COMMON.iter().chain(own).map(|&n| (n, Vec::new())).collect();
    rules.insert(libc::SYS_ioctl, ioctl_rules()?);
    if kind != ThreadKind::Main {
        // Passed on to `no_open_program`, which answers it with EACCES.
        rules.insert(libc::SYS_openat, Vec::new());
    }
    let arch: TargetArch = std::env::consts::ARCH
        .try_into()
        .map_err(SeccompError::Build)?;
    let filter = SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch)
        .map_err(SeccompError::Build)?;
    filter.try_into().map_err(SeccompError::Build)
}

/// The second filter of every thread but the main one: `openat` fails with EACCES instead
/// of trapping. glibc's malloc opens /sys/devices/system/cpu/online when a thread needs a
/// new arena (`get_nprocs`) and falls back to sched_getaffinity when that fails, so the
/// thread gets no file but is not killed for allocating. (Stacked seccomp filters: the
/// most restrictive answer wins, so EACCES beats the first filter's allow.)
fn no_open_program() -> std::result::Result<BpfProgram, SeccompError> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> = [(libc::SYS_openat, Vec::new())].into();
    let arch: TargetArch = std::env::consts::ARCH
        .try_into()
        .map_err(SeccompError::Build)?;
    let errno = u32::try_from(libc::EACCES).unwrap_or(13);
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno),
        arch,
    )
    .map_err(SeccompError::Build)?
    .try_into()
    .map_err(SeccompError::Build)
}

/// SIGSYS handler: one line naming the system call and the thread, then exit status 2.
/// Only async-signal-safe calls (write, _exit); the number is formatted by hand.
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let mut msg = *b"vpmu-vmm: seccomp: a VMM thread made a forbidden system call (number           ); run with --no-seccomp to debug\n";
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS; si_syscall lives at byte
    // offset 24 of it on Linux (struct __sifields._sigsys after si_signo/errno/code and
    // the call address), an i32.
    let nr = unsafe { *((info as *const u8).add(24) as *const i32) };
    let mut n = nr.unsigned_abs();
    let mut digits = [b' '; 10];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    let start = msg.iter().position(|&b| b == b'(').map_or(0, |p| p + 8);
    msg[start..start + 10].copy_from_slice(&digits);
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is valid.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(2);
    }
}

/// Installs `kind`'s filter on the calling thread (NoNewPrivs first).
pub fn apply(kind: ThreadKind) -> Result<()> {
    let prog = program(kind)?;
    // SAFETY: a sigaction for SIGSYS with a handler that only calls async-signal-safe
    // functions; the struct is zero-initialised and filled before use.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(SeccompError::SigsysHandler(std::io::Error::last_os_error()).into());
        }
    }
    // The EACCES filter first: the allowlist, once installed, forbids seccomp(2) itself.
    if kind != ThreadKind::Main {
        seccompiler::apply_filter(&no_open_program()?).map_err(|source| SeccompError::Apply {
            thread: kind.name(),
            source,
        })?;
    }
    seccompiler::apply_filter(&prog).map_err(|source| {
        SeccompError::Apply {
            thread: kind.name(),
            source,
        }
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_for_both_kinds() {
        for k in [
            ThreadKind::Vcpu,
            ThreadKind::Main,
            ThreadKind::Console,
            ThreadKind::Audit,
        ] {
            let p = program(k).expect("compiles");
            assert!(p.len() > 20, "{k:?}: {} instructions", p.len());
        }
    }

    #[test]
    fn a_forbidden_syscall_from_a_filtered_thread_ends_the_process_with_a_line() {
        // Run in a child process: the filter and the trap end it.
        if std::env::var_os("VPMU_SECCOMP_CHILD").is_some() {
            apply(ThreadKind::Vcpu).expect("filter installs");
            // openat is answered with EACCES, not trapped (glibc's malloc may try it).
            let e = std::fs::File::open("/proc/self/status").expect_err("no open on a vCPU");
            assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
            // socket(2) is in neither list.
            // SAFETY: a plain system call with valid arguments.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            unreachable!("the forbidden socket() call returned");
        }
        let exe = std::env::current_exe().expect("test binary");
        let o = std::process::Command::new(exe)
            .args([
                "--exact",
                "seccomp::tests::a_forbidden_syscall_from_a_filtered_thread_ends_the_process_with_a_line",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("VPMU_SECCOMP_CHILD", "1")
            .output()
            .expect("child runs");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&format!(
                "forbidden system call (number {:>10})",
                libc::SYS_socket
            )),
            "{err}"
        );
    }
}
