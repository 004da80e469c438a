//! Kicking a vCPU thread out of KVM_RUN.
//!
//! A real-time signal is sent to the vCPU thread; its handler sets `kvm_run.immediate_exit`
//! through a thread-local pointer, so the kick cannot be lost in the window between the
//! run loop's checks and the KVM_RUN ioctl: either the signal interrupts KVM_RUN (EINTR)
//! or KVM sees `immediate_exit` on entry and returns EINTR at once.
//!
//! The same signal is used by the per-vCPU POSIX timers that deliver userspace-vPMU
//! overflows on time (see `pmu::userspace`).

use std::cell::Cell;
use std::io;
use std::sync::Once;

use kvm_bindings::kvm_run;

thread_local! {
    static RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal used for kicks.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

extern "C" fn on_kick(_sig: libc::c_int) {
    // Only async-signal-safe work: one volatile store through a thread-local pointer.
    let p = RUN_PTR.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: the pointer was registered by this thread for its own mmapped kvm_run,
        // which outlives the registration (cleared before the VcpuFd is dropped).
        unsafe { std::ptr::addr_of_mut!((*p).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick signal handler once per process.
pub fn install_handler() -> io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        // SAFETY: a plain sigaction with a handler that is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as *const () as usize;
            sa.sa_flags = 0; // no SA_RESTART: KVM_RUN must return EINTR
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(kick_signal(), &sa, std::ptr::null_mut()) != 0 {
                result = Err(io::Error::last_os_error());
            }
        }
    });
    result
}

/// Registers the calling thread's kvm_run for kicks. Call from the vCPU thread.
pub fn register_current(run: *mut kvm_run) {
    RUN_PTR.with(|c| c.set(run));
}

/// Unregisters the calling thread (before its kvm_run goes away).
pub fn unregister_current() {
    RUN_PTR.with(|c| c.set(std::ptr::null_mut()));
}

/// The calling thread's kernel thread id (for `pthread_kill`-free targeting and timers).
pub fn current_tid() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    // Thread ids are pid_t values (the kernel returns one in a long).
    libc::pid_t::try_from(tid).unwrap_or(0)
}

/// Sends the kick signal to a thread of this process.
pub fn kick(tid: libc::pid_t) -> io::Result<()> {
    // SAFETY: tgkill with our own pid and a tid of ours; a vanished thread gives ESRCH.
    let r = unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            tid,
            kick_signal() as libc::c_long,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Ends a VM: records `outcome` in `slot` (the first writer wins), raises `stopping`,
/// wakes the main thread through `stop_evt`, and kicks every started vCPU thread (tid > 0)
/// out of KVM_RUN. The one ending both architectures' shared vCPU state uses.
pub fn end_vm(
    slot: &std::sync::Mutex<Option<crate::Outcome>>,
    stopping: &std::sync::atomic::AtomicBool,
    stop_evt: &vmm_sys_util::eventfd::EventFd,
    tids: &[std::sync::atomic::AtomicI32],
    outcome: crate::Outcome,
) {
    use std::sync::atomic::Ordering;
    if let Ok(mut slot) = slot.lock() {
        if slot.is_none() {
            *slot = Some(outcome);
        }
    }
    stopping.store(true, Ordering::SeqCst);
    let _ = stop_evt.write(1);
    for t in tids {
        let tid = t.load(Ordering::SeqCst);
        if tid > 0 {
            let _ = kick(tid);
        }
    }
}

/// What a vCPU thread can end: the VM's shared state on either architecture.
pub trait EndVm {
    /// Records how the VM ended (the first call wins) and kicks every vCPU.
    fn end_vm(&self, outcome: crate::Outcome);
}

/// Ends the VM if the vCPU thread unwinds from a panic (a VMM bug): without it the main
/// thread would wait for a stop that never comes and the VMM would hang. Also forgets
/// this thread's `kvm_run` pointer first, so a kick arriving after the vCPU fd is gone
/// cannot write through it.
pub struct EndOnPanic<'a, S: EndVm> {
    /// The VM.
    pub shared: &'a S,
    /// This thread's vCPU.
    pub vcpu: u8,
}

impl<S: EndVm> Drop for EndOnPanic<'_, S> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            unregister_current();
            self.shared.end_vm(crate::Outcome::VmmError {
                vcpu: self.vcpu,
                detail: "vCPU thread panicked (VMM bug)".into(),
            });
        }
    }
}
