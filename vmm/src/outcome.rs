//! How a VM ended, and the process exit status that follows from it.

use std::fmt;

/// Status for VMM setup/configuration errors (and CLI usage errors).
pub const STATUS_VMM_ERROR: i32 = 2;
/// Status for a guest triple fault.
pub const STATUS_TRIPLE_FAULT: i32 = 4;
/// Status for a KVM internal error or VM-entry failure.
pub const STATUS_KVM_ERROR: i32 = 6;
/// Status for a guest crash event.
pub const STATUS_CRASH: i32 = 8;
/// Status for a failing vCPU run loop (unhandled exit, KVM_RUN error).
pub const STATUS_RUN_ERROR: i32 = 10;
/// Status for a run ended by SIGINT, SIGTERM or SIGHUP, or by the console's Ctrl-A x (the
/// VMM stopped the guest, then wrote its outputs).
pub const STATUS_INTERRUPTED: i32 = 12;

/// The reason a VM stopped. The first vCPU to end the VM decides it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// i8042 reset (0xfe to port 0x64), or a KVM reset system event.
    Reset,
    /// A KVM shutdown system event (e.g. a PSCI-style poweroff).
    PowerOff,
    /// A write of `value` to the debug-exit port 0xf4.
    DebugExit {
        /// The value the guest wrote.
        value: u32,
    },
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault {
        /// The vCPU.
        vcpu: u8,
        /// RIP when it happened (if the registers could be read).
        rip: Option<u64>,
    },
    /// KVM could not continue running the guest.
    InternalError {
        /// The vCPU.
        vcpu: u8,
        /// KVM_INTERNAL_ERROR_* suberror.
        suberror: u32,
        /// Extra data words KVM supplied.
        data: Vec<u64>,
        /// RIP, if readable.
        rip: Option<u64>,
    },
    /// VM entry failed.
    FailEntry {
        /// The vCPU.
        vcpu: u8,
        /// hardware_entry_failure_reason.
        reason: u64,
    },
    /// The guest crashed (KVM crash system event).
    Crash {
        /// The vCPU.
        vcpu: u8,
    },
    /// An exit the VMM does not handle, or a failing KVM_RUN.
    VmmError {
        /// The vCPU.
        vcpu: u8,
        /// What happened.
        detail: String,
    },
    /// The VMM received SIGINT, SIGTERM or SIGHUP and stopped the guest.
    Interrupted {
        /// The signal number.
        signal: i32,
    },
    /// The user typed the console's escape, Ctrl-A x, and the VMM stopped the guest.
    ConsoleQuit,
}

/// The name of a stop signal.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// Decodes KVM_INTERNAL_ERROR_* suberrors.
pub fn internal_suberror_name(code: u32) -> &'static str {
    match code {
        1 => "emulation failure (KVM_INTERNAL_ERROR_EMULATION)",
        2 => "simultaneous exceptions (KVM_INTERNAL_ERROR_SIMUL_EX)",
        3 => "exit while delivering an event (KVM_INTERNAL_ERROR_DELIVERY_EV)",
        4 => "unexpected exit reason (KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON)",
        _ => "unknown suberror",
    }
}

impl Outcome {
    /// Whether this is a clean guest-requested ending.
    pub fn is_clean(&self) -> bool {
        matches!(self, Outcome::Reset | Outcome::PowerOff)
    }

    /// Process exit status under `vpmu-vmm run` semantics: reset/poweroff 0; debug-exit
    /// `(V << 1) | 1` truncated to 8 bits as a process status is (QEMU isa-debug-exit), so
    /// always odd; VMM-side endings use even statuses that can never collide with it:
    /// [`STATUS_VMM_ERROR`] (2, also setup and usage errors), [`STATUS_TRIPLE_FAULT`] (4),
    /// [`STATUS_KVM_ERROR`] (6, internal error or entry failure), [`STATUS_CRASH`] (8),
    /// 10 for a failing run loop, [`STATUS_INTERRUPTED`] (12) for SIGINT/SIGTERM/SIGHUP and
    /// the console's Ctrl-A x.
    pub fn exit_status(&self) -> i32 {
        match self {
            Outcome::Reset | Outcome::PowerOff => 0,
            Outcome::DebugExit { value } => {
                i32::from(devices::VmExit::DebugExit(*value).exit_status())
            }
            Outcome::TripleFault { .. } => STATUS_TRIPLE_FAULT,
            Outcome::InternalError { .. } | Outcome::FailEntry { .. } => STATUS_KVM_ERROR,
            Outcome::Crash { .. } => STATUS_CRASH,
            Outcome::VmmError { .. } => STATUS_RUN_ERROR,
            Outcome::Interrupted { .. } | Outcome::ConsoleQuit => STATUS_INTERRUPTED,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rip = |r: &Option<u64>| match r {
            Some(r) => format!("{r:#x}"),
            None => "?".to_string(),
        };
        match self {
            Outcome::Reset => write!(f, "guest reset"),
            Outcome::PowerOff => write!(f, "guest powered off"),
            Outcome::DebugExit { value } => {
                write!(f, "guest wrote {value:#x} to debug-exit port 0xf4")
            }
            Outcome::TripleFault { vcpu, rip: r } => {
                write!(
                    f,
                    "guest shut down (triple fault) at RIP={} on vCPU {vcpu}",
                    rip(r)
                )
            }
            Outcome::InternalError {
                vcpu,
                suberror,
                data,
                rip: r,
            } => {
                write!(
                    f,
                    "KVM internal error on vCPU {vcpu} at RIP={}: {} (suberror {suberror})",
                    rip(r),
                    internal_suberror_name(*suberror)
                )?;
                if !data.is_empty() {
                    let d: Vec<String> = data.iter().map(|x| format!("{x:#x}")).collect();
                    write!(f, ", data [{}]", d.join(", "))?;
                }
                Ok(())
            }
            Outcome::FailEntry { vcpu, reason } => {
                write!(
                    f,
                    "VM entry failed on vCPU {vcpu}: hardware reason {reason:#x}"
                )
            }
            Outcome::Crash { vcpu } => write!(f, "guest crashed (KVM crash event) on vCPU {vcpu}"),
            Outcome::VmmError { vcpu, detail } => write!(f, "vCPU {vcpu}: {detail}"),
            Outcome::Interrupted { signal } => write!(
                f,
                "interrupted by {} (signal {signal}); the guest was stopped",
                signal_name(*signal)
            ),
            Outcome::ConsoleQuit => write!(f, "stopped from the console (Ctrl-A x)"),
        }
    }
}

/// A line for the user under the outcome, when the ending has a likely cause worth
/// naming. A Linux kernel that panics and finds no working reboot method resets the CPU by
/// a triple fault, so a Linux guest's triple fault (`linux_guest`: the run booted a
/// bzImage or a PVH vmlinux, not a freestanding guest) most likely hides a panic whose
/// message never reached the console.
pub fn hint(outcome: &Outcome, linux_guest: bool) -> Option<&'static str> {
    match outcome {
        Outcome::TripleFault { .. } if linux_guest => Some(
            "hint: the guest kernel most likely panicked (Linux resets by triple fault after \
             a panic when no reboot method works); to see why, drop `quiet` from --cmdline \
             and add `console=ttyS0 earlycon=uart8250,io,0x3f8` (messages from the earliest \
             boot on), check that --initrd names a valid initramfs (a missing root \
             filesystem panics), and give the guest more --memory (e.g. --memory 512M)",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(Outcome::Reset.exit_status(), 0);
        assert_eq!(Outcome::PowerOff.exit_status(), 0);
        assert_eq!(Outcome::DebugExit { value: 0 }.exit_status(), 1);
        assert_eq!(Outcome::DebugExit { value: 1 }.exit_status(), 3);
        assert_eq!(Outcome::DebugExit { value: 0x7f }.exit_status(), 0xff);
        assert_eq!(Outcome::DebugExit { value: 0x80 }.exit_status(), 1);
        assert_eq!(Outcome::DebugExit { value: u32::MAX }.exit_status(), 0xff);
        let tf = Outcome::TripleFault {
            vcpu: 0,
            rip: Some(0x1234),
        };
        assert_eq!(tf.exit_status(), STATUS_TRIPLE_FAULT);
        for v in 0..1024u32 {
            assert_eq!(
                Outcome::DebugExit { value: v }.exit_status() % 2,
                1,
                "debug-exit statuses are odd"
            );
        }
        assert_eq!(
            tf.to_string(),
            "guest shut down (triple fault) at RIP=0x1234 on vCPU 0"
        );
        let ie = Outcome::InternalError {
            vcpu: 1,
            suberror: 1,
            data: vec![],
            rip: None,
        };
        assert!(ie.to_string().contains("emulation failure"));
        assert_ne!(ie.exit_status(), 0);
        let int = Outcome::Interrupted {
            signal: libc::SIGTERM,
        };
        assert_eq!(int.exit_status(), STATUS_INTERRUPTED);
        assert_eq!(int.exit_status() % 2, 0, "VMM-side endings are even");
        assert!(int.to_string().contains("SIGTERM"));
    }

    #[test]
    fn a_linux_triple_fault_hints_at_a_panic_and_how_to_see_it() {
        let tf = Outcome::TripleFault {
            vcpu: 0,
            rip: Some(0xfff0),
        };
        let h = hint(&tf, true).expect("a Linux guest's triple fault has a hint");
        assert!(
            h.starts_with("hint: the guest kernel most likely panicked"),
            "{h}"
        );
        for what in [
            "quiet",
            "earlycon=uart8250,io,0x3f8",
            "console=ttyS0",
            "--initrd",
            "--memory",
        ] {
            assert!(h.contains(what), "{what} in {h}");
        }
        assert!(!h.contains('\n'), "one line: {h}");
        // Freestanding guests triple-fault on their own bugs; other endings have no hint.
        assert_eq!(hint(&tf, false), None);
        for o in [
            Outcome::Reset,
            Outcome::PowerOff,
            Outcome::DebugExit { value: 0 },
            Outcome::Crash { vcpu: 0 },
        ] {
            assert_eq!(hint(&o, true), None, "{o}");
        }
    }
}
