//! SIGINT, SIGTERM and SIGHUP end a run cleanly: the VMM stops the guest with
//! [`Outcome::Interrupted`](crate::Outcome::Interrupted) and still writes the audit log,
//! the report and the statistics.
//!
//! [`block_stop_signals`] (the CLI calls it first thing, before any thread exists) blocks
//! the three signals in the calling thread, so in every thread spawned after it, and opens
//! a signalfd for them. The main thread's event loop (`crate::console`) reads it, ends the
//! VM, and unblocks the signals on the main thread again: a second signal during the
//! shutdown then has its default effect and ends the process at once. Nothing runs in a
//! signal handler. Library users that do not call [`block_stop_signals`] keep the default
//! dispositions.

use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

/// The stop signals.
pub const STOP_SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The signalfd (-1 until [`block_stop_signals`]).
static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);

fn stop_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and so in the threads it
/// spawns afterwards) and opens the signalfd the main thread's event loop watches. Call
/// it on the main thread before any other thread is spawned. Idempotent.
pub fn block_stop_signals() -> std::io::Result<()> {
    if SIGNAL_FD.load(Ordering::SeqCst) >= 0 {
        return Ok(());
    }
    let set = stop_set();
    // SAFETY: `set` is a valid, initialised sigset_t; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    // SAFETY: signalfd with -1 creates a new descriptor for the valid set.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    SIGNAL_FD.store(fd, Ordering::SeqCst);
    Ok(())
}

/// The signalfd, if [`block_stop_signals`] opened one.
pub fn signal_fd() -> Option<RawFd> {
    let fd = SIGNAL_FD.load(Ordering::SeqCst);
    (fd >= 0).then_some(fd)
}

/// Reads one pending stop signal from the signalfd (non-blocking).
pub fn read_signal() -> Option<i32> {
    let fd = signal_fd()?;
    // SAFETY: signalfd_siginfo is plain data; zeroed is a valid value.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reads at most `size` bytes into `info`, which is `size` bytes long.
    let n = unsafe { libc::read(fd, (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
    (n == size as isize).then_some(info.ssi_signo as i32)
}

/// Unblocks the stop signals on the calling thread: the next one ends the process at once
/// (default disposition), as a second Ctrl-C during the shutdown should.
pub fn unblock_on_this_thread() {
    let set = stop_set();
    // SAFETY: `set` is a valid sigset_t; rt_sigprocmask is in every seccomp list.
    unsafe {
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}
