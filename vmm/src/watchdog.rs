//! The silence watchdog: when a guest has written nothing to its console for a while and
//! has not ended, say so once, with what each vCPU is doing (how many exits it made in
//! that time, and where it is: its instruction pointer, read by the vCPU itself after a
//! kick), so that a hung or very slow guest is never a silent terminal.
//!
//! It watches the console output (`crate::console::ConsoleOut::offered`), not the
//! terminal: when stdin is a terminal (an interactive guest that may be waiting for the
//! user), only the time before the guest's first output counts.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The instruction pointer's name in the line.
#[cfg(target_arch = "x86_64")]
const IP: &str = "RIP";
#[cfg(target_arch = "aarch64")]
const IP: &str = "PC";

/// What a vCPU publishes for the watchdog: its exit count (one relaxed store per exit)
/// and, when asked, its instruction pointer.
#[derive(Debug, Default)]
pub struct VcpuProgress {
    /// Returns from KVM_RUN so far.
    pub exits: AtomicU64,
    /// The watchdog wants the instruction pointer: the vCPU reads its registers at the
    /// next kick and stores it in `ip`.
    pub ip_wanted: AtomicBool,
    /// The instruction pointer read on request (valid once `ip_valid`).
    pub ip: AtomicU64,
    /// `ip` holds a value read for the current request.
    pub ip_valid: AtomicBool,
}

impl VcpuProgress {
    /// Called by the vCPU thread after a kick: answers a pending request with `read_ip`.
    pub fn answer(&self, read_ip: impl FnOnce() -> Option<u64>) {
        if self.ip_wanted.swap(false, Ordering::SeqCst) {
            if let Some(ip) = read_ip() {
                self.ip.store(ip, Ordering::SeqCst);
                self.ip_valid.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// The watchdog's state, driven by the main thread's event loop ([`Watchdog::tick`]).
pub struct Watchdog {
    after: Duration,
    console: crate::console::ConsoleOut,
    interactive: bool,
    last_output: u64,
    quiet_since: Instant,
    exits_at_quiet: Vec<u64>,
    exits_at_ask: Vec<u64>,
    asked_at: Option<Instant>,
    reported: bool,
}

impl Watchdog {
    /// A watchdog that speaks after `after` of console silence.
    pub fn new(after: Duration, console: crate::console::ConsoleOut, interactive: bool) -> Self {
        Watchdog {
            after,
            console,
            interactive,
            last_output: 0,
            quiet_since: Instant::now(),
            exits_at_quiet: Vec::new(),
            exits_at_ask: Vec::new(),
            asked_at: None,
            reported: false,
        }
    }

    /// One look at the VM (every event-loop round, at most 100 ms apart): returns the
    /// line to print when it is time.
    pub fn tick(&mut self, progress: &[VcpuProgress], tids: &[AtomicI32]) -> Option<String> {
        let now = Instant::now();
        let out = self.console.offered();
        if out != self.last_output {
            self.last_output = out;
            self.quiet_since = now;
            self.exits_at_quiet = exits(progress);
            self.asked_at = None;
            self.reported = false;
            return None;
        }
        if self.reported || (self.interactive && out > 0) {
            return None;
        }
        if now.duration_since(self.quiet_since) < self.after {
            return None;
        }
        match self.asked_at {
            None => {
                // Counted before the kicks, which are exits too.
                self.exits_at_ask = exits(progress);
                for (p, tid) in progress.iter().zip(tids) {
                    p.ip_valid.store(false, Ordering::SeqCst);
                    p.ip_wanted.store(true, Ordering::SeqCst);
                    let tid = tid.load(Ordering::SeqCst);
                    if tid > 0 {
                        let _ = crate::kick::kick(tid);
                    }
                }
                self.asked_at = Some(now);
                None
            }
            // Give the vCPUs a moment to answer (a kick returns from KVM_RUN in
            // microseconds; a vCPU busy in the VMM answers at its next kick).
            Some(t) if now.duration_since(t) < Duration::from_millis(50) => None,
            Some(_) => {
                self.reported = true;
                Some(self.line(progress, now))
            }
        }
    }

    fn line(&self, progress: &[VcpuProgress], now: Instant) -> String {
        let secs = now.duration_since(self.quiet_since).as_secs();
        let what = if self.last_output == 0 {
            format!("no console output in {secs} s")
        } else {
            format!("no console output for {secs} s")
        };
        let vcpus: Vec<String> = progress
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let before = self.exits_at_quiet.get(i).copied().unwrap_or(0);
                let at_ask = self.exits_at_ask.get(i).copied().unwrap_or(0);
                let n = at_ask.saturating_sub(before);
                let ip = if p.ip_valid.load(Ordering::SeqCst) {
                    format!("{IP} {:#x}", p.ip.load(Ordering::SeqCst))
                } else {
                    format!("{IP} unknown (the vCPU did not answer)")
                };
                format!("vCPU {i}: {n} exits, {ip}")
            })
            .collect();
        format!(
            "vpmu-vmm: watchdog: {what} and the guest has not ended; {} (--watchdog 0 turns this off)",
            vcpus.join("; ")
        )
    }
}

fn exits(progress: &[VcpuProgress]) -> Vec<u64> {
    progress
        .iter()
        .map(|p| p.exits.load(Ordering::Relaxed))
        .collect()
}
