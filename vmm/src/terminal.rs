//! The console terminal: raw mode while a guest owns it, restored on every way out.
//!
//! When stdin is a terminal, [`RawMode::enter`] turns off the host's line editing, echo
//! and signal keys (`vmm_sys_util::terminal::Terminal::set_raw_mode`: no ICANON, ECHO or
//! ISIG), so every key goes to the guest as typed (the guest echoes and edits, Ctrl-C
//! interrupts the guest's program, not the VMM). The original settings are restored:
//! - when the guard drops (the VM stopped: normal end, error, first stop signal);
//! - by a panic hook (a panic that ends the process);
//! - by a handler for SIGINT/SIGTERM/SIGHUP, which only runs once those signals are
//!   unblocked (the second signal during a shutdown, see `crate::signals`, or a library
//!   user who never blocked them): it restores the terminal, then lets the signal end
//!   the process as it would have.
//!
//! The escape to leave a guest that owns the keyboard is Ctrl-A x ([`EscapeScanner`]).

use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Once, OnceLock};

use vmm_sys_util::terminal::Terminal;

/// The settings found when raw mode was first entered (the terminal's own settings).
static SAVED: OnceLock<libc::termios> = OnceLock::new();
/// The descriptor raw mode was entered on, -1 when not in raw mode.
static RAW_FD: AtomicI32 = AtomicI32::new(-1);
static HOOKS: Once = Once::new();

/// Restores the saved settings if raw mode is on. Async-signal-safe: an atomic swap, a
/// load from an initialised `OnceLock`, and tcsetattr(3).
fn restore_now() {
    let fd = RAW_FD.swap(-1, Ordering::SeqCst);
    if fd < 0 {
        return;
    }
    if let Some(t) = SAVED.get() {
        // SAFETY: `t` is a termios that tcgetattr filled for this terminal; tcsetattr
        // only reads it.
        unsafe {
            libc::tcsetattr(fd, libc::TCSANOW, t);
        }
    }
}

extern "C" fn on_stop_signal(sig: libc::c_int) {
    restore_now();
    // SAFETY: signal(2) and raise(3) are async-signal-safe; restoring the default
    // disposition and raising again ends the process as the signal would have.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

fn install_hooks() {
    HOOKS.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_now();
            previous(info);
        }));
        for sig in crate::signals::STOP_SIGNALS {
            // SAFETY: installs a handler that only makes async-signal-safe calls.
            unsafe {
                libc::signal(
                    sig,
                    on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
                );
            }
        }
    });
}

/// Raw mode on a terminal for as long as the guard lives.
#[derive(Debug)]
pub struct RawMode {
    _private: (),
}

impl RawMode {
    /// Puts stdin in raw mode if it is a terminal (`None` otherwise, or if the terminal
    /// refuses: the console then works line by line, as before).
    pub fn enter() -> Option<RawMode> {
        Self::enter_fd(0)
    }

    fn enter_fd(fd: RawFd) -> Option<RawMode> {
        // SAFETY: isatty has no preconditions.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it for a terminal descriptor.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `t` is a valid, writable termios.
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return None;
        }
        let _ = SAVED.set(t);
        install_hooks();
        RAW_FD.store(fd, Ordering::SeqCst);
        if std::io::stdin().lock().set_raw_mode().is_err() {
            restore_now();
            return None;
        }
        Some(RawMode { _private: () })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore_now();
    }
}

/// Whether the user asked to quit with the escape sequence (set by the console loop).
pub static QUIT_REQUESTED: AtomicBool = AtomicBool::new(false);

/// The escape key: Ctrl-A, as in QEMU and kvmtool.
pub const ESCAPE: u8 = 0x01;

/// What the user typed, after the escape sequences are taken out.
#[derive(Debug, PartialEq, Eq)]
pub enum Typed {
    /// Bytes for the guest.
    Input(Vec<u8>),
    /// Ctrl-A x: stop the guest; `before` are the bytes typed before it.
    Quit {
        /// Bytes for the guest typed before the escape.
        before: Vec<u8>,
    },
    /// Ctrl-A h: print the escape help; `input` still goes to the guest.
    Help {
        /// Bytes for the guest.
        input: Vec<u8>,
    },
}

/// Finds Ctrl-A sequences in terminal input, across reads: Ctrl-A x quits, Ctrl-A h
/// prints help, Ctrl-A Ctrl-A sends one Ctrl-A, Ctrl-A followed by anything else sends
/// both bytes.
#[derive(Debug, Default)]
pub struct EscapeScanner {
    pending_escape: bool,
}

/// The help line for Ctrl-A h (raw mode: CR LF line ends).
pub const ESCAPE_HELP: &str =
    "\r\nvpmu-vmm console: Ctrl-A x  stop the guest and exit | Ctrl-A Ctrl-A  send Ctrl-A | Ctrl-A h  this help\r\n";

impl EscapeScanner {
    /// Scans one read's worth of input.
    pub fn scan(&mut self, input: &[u8]) -> Typed {
        let mut out = Vec::with_capacity(input.len());
        let mut help = false;
        for &b in input {
            if self.pending_escape {
                self.pending_escape = false;
                match b {
                    b'x' | b'X' => return Typed::Quit { before: out },
                    b'h' | b'H' | b'?' => help = true,
                    ESCAPE => out.push(ESCAPE),
                    other => out.extend_from_slice(&[ESCAPE, other]),
                }
            } else if b == ESCAPE {
                self.pending_escape = true;
            } else {
                out.push(b);
            }
        }
        if help {
            Typed::Help { input: out }
        } else {
            Typed::Input(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences() {
        let mut s = EscapeScanner::default();
        assert_eq!(s.scan(b"ls\r"), Typed::Input(b"ls\r".to_vec()));
        assert_eq!(
            s.scan(b"ab\x01xcd"),
            Typed::Quit {
                before: b"ab".to_vec()
            }
        );
        // Split across reads.
        assert_eq!(s.scan(b"a\x01"), Typed::Input(b"a".to_vec()));
        assert_eq!(s.scan(b"x"), Typed::Quit { before: vec![] });
        // Ctrl-A Ctrl-A is one Ctrl-A; Ctrl-A other sends both.
        assert_eq!(s.scan(b"\x01\x01"), Typed::Input(vec![ESCAPE]));
        assert_eq!(s.scan(b"\x01c"), Typed::Input(vec![ESCAPE, b'c']));
        assert_eq!(
            s.scan(b"\x01hq"),
            Typed::Help {
                input: b"q".to_vec()
            }
        );
        // Ctrl-C is input, not a quit.
        assert_eq!(s.scan(b"\x03"), Typed::Input(vec![3]));
    }

    #[test]
    fn not_a_terminal_is_left_alone() {
        let (r, w) = {
            let mut fds = [0; 2];
            // SAFETY: pipe2 fills the two-element array.
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            (fds[0], fds[1])
        };
        assert!(RawMode::enter_fd(r).is_none());
        assert_eq!(RAW_FD.load(Ordering::SeqCst), -1);
        // SAFETY: closing the two descriptors this test opened.
        unsafe {
            libc::close(r);
            libc::close(w);
        }
    }
}
