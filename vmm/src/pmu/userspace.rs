//! The VMM's own vPMU (`--pmu userspace`), one per vCPU.
//!
//! Every PMU MSR access exits to the VMM (KVM MSR filter). Reads and writes go to a
//! [`vpmu::state::PmuState`] register file. Event-selector and FIXED_CTR_CTRL writes are
//! vetted first:
//! - reserved bits: #GP, audited (`gp`), the register keeps its old value;
//! - an event the policy denies: the write is **accepted and reads back as written**, but
//!   the counter is blocked and never counts (KVM's event filter behaves the same way), and
//!   the attempt is audited (`denied`);
//! - an event the counter source cannot count: same, audited once (`unsupported`).
//!
//! Context switch around KVM_RUN: `before_run` arms a one-shot POSIX timer (targeting the
//! vCPU thread, with the kick signal) at the moment the nearest PMI-enabled counter will
//! overflow, so the overflow is delivered on time even if the guest never exits;
//! `after_run` charges the TSC ticks spent inside KVM_RUN to every running counter, which
//! sets GLOBAL_STATUS bits on wrap and asks the run loop for a PMI. The timer is re-armed
//! only when the counter programming changes or the deadline passes, so a steady-state
//! KVM_RUN costs no extra system call.

use std::sync::Arc;

use vpmu::guest::{GuestPmu, Programming, Verdict};
use vpmu::policy::CompiledPolicy;
use vpmu::selector::EventSelector;
use vpmu::state::{CounterId, PmuState};
use vpmu::{PmuConfig, Vendor};

use super::audit::{AuditLog, Programmed, ProgrammedTally};
use super::clock::{self, ClockEvent, Refusal};
use super::perf::{self, PerfCounter};
use super::VcpuPmu;

/// Where a userspace-vPMU counter's counts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// TSC clock model: cycles only (hosts without a PMU).
    Clock,
    /// Host perf events counting in guest mode on the vCPU thread (hosts with a PMU).
    HostPerf,
}

/// Per-vCPU statistics of the userspace vPMU.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    /// PMU MSR reads.
    pub reads: u64,
    /// PMU MSR writes.
    pub writes: u64,
    /// Accesses answered with #GP.
    pub gp: u64,
    /// Selector programmings the policy denied.
    pub denied: u64,
    /// Selector programmings the counter source could not count.
    pub unsupported: u64,
    /// Counter overflows.
    pub overflows: u64,
    /// PMIs requested.
    pub pmis: u64,
    /// Overflow timers armed.
    pub timer_arms: u64,
}

/// Why a counter does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    Clock(ClockEvent),
    /// Backed by the host perf event in `UserspacePmu::perf` for this counter.
    Perf,
    Denied,
    Refused(Refusal),
    Idle,
}

struct Timer {
    id: libc::timer_t,
}

impl Timer {
    fn create(tid: libc::pid_t) -> std::io::Result<Timer> {
        // SAFETY: zeroed sigevent filled for SIGEV_THREAD_ID; timer_create writes `id`.
        unsafe {
            let mut sev: libc::sigevent = std::mem::zeroed();
            sev.sigev_notify = libc::SIGEV_THREAD_ID;
            sev.sigev_signo = crate::kick::kick_signal();
            sev.sigev_notify_thread_id = tid;
            let mut id: libc::timer_t = std::ptr::null_mut();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut id) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Timer { id })
        }
    }

    fn arm_ns(&self, ns: u64) {
        let ns = ns.max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: valid timer id and itimerspec.
        unsafe { libc::timer_settime(self.id, 0, &spec, std::ptr::null_mut()) };
    }

    fn disarm(&self) {
        // SAFETY: itimerspec is plain old data; all-zero is a valid (disarming) value.
        let spec: libc::itimerspec = unsafe { std::mem::zeroed() };
        // SAFETY: valid timer id; a zero it_value disarms.
        unsafe { libc::timer_settime(self.id, 0, &spec, std::ptr::null_mut()) };
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        // SAFETY: the id came from timer_create and is deleted once.
        unsafe { libc::timer_delete(self.id) };
    }
}

// SAFETY: a timer_t is a kernel handle usable from any thread of the process.
unsafe impl Send for Timer {}

/// The userspace vPMU of one vCPU.
pub struct UserspacePmu {
    vcpu: u8,
    vendor: Vendor,
    source: Source,
    tid: libc::pid_t,
    perf: Vec<(CounterId, PerfCounter)>,
    guest: GuestPmu,
    audit: Option<Arc<AuditLog>>,
    tsc_khz: u64,
    /// Counters currently counting, with whether a host perf event feeds them (else the
    /// clock); recomputed when `dirty`.
    running: Vec<(CounterId, bool)>,
    feeds: Vec<(CounterId, Feed)>,
    dirty: bool,
    timer: Option<Timer>,
    timer_dirty: bool,
    armed_deadline_tsc: Option<u64>,
    programmed: ProgrammedTally,
    stats: Stats,
}

fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no preconditions on x86_64.
    unsafe { core::arch::x86_64::_rdtsc() }
}

impl UserspacePmu {
    /// A fresh vPMU in its reset state for `layout`.
    pub fn new(
        vcpu: u8,
        source: Source,
        layout: &PmuConfig,
        policy: Arc<CompiledPolicy>,
        audit: Option<Arc<AuditLog>>,
        tsc_khz: u64,
    ) -> UserspacePmu {
        let vendor = layout.vendor().unwrap_or(Vendor::Intel);
        UserspacePmu {
            vcpu,
            vendor,
            source,
            tid: 0,
            perf: Vec::new(),
            guest: GuestPmu::new(layout, policy),
            audit,
            tsc_khz: tsc_khz.max(1),
            running: Vec::new(),
            feeds: Vec::new(),
            dirty: true,
            timer: None,
            timer_dirty: true,
            armed_deadline_tsc: None,
            programmed: ProgrammedTally::default(),
            stats: Stats::default(),
        }
    }

    /// The register file (tests, debugging).
    pub fn state(&self) -> &PmuState {
        self.guest.state()
    }

    fn audit(
        &self,
        msr: u32,
        value: u64,
        verdict: &'static str,
        sel: Option<&EventSelector>,
        rule: String,
    ) {
        if let Some(log) = &self.audit {
            log.access(self.vcpu, msr, value, verdict, sel, rule);
        }
    }

    fn feed_of(&self, id: CounterId) -> Feed {
        self.feeds
            .iter()
            .find(|(c, _)| *c == id)
            .map(|(_, f)| *f)
            .unwrap_or(Feed::Idle)
    }

    fn set_feed(&mut self, id: CounterId, feed: Feed) {
        if feed != Feed::Perf {
            self.perf.retain(|(c, _)| *c != id);
        }
        self.guest
            .state_mut()
            .set_blocked(id, !matches!(feed, Feed::Clock(_) | Feed::Perf));
        match self.feeds.iter_mut().find(|(c, _)| *c == id) {
            Some(slot) => slot.1 = feed,
            None => self.feeds.push((id, feed)),
        }
    }

    /// Tallies one enabling programming.
    fn record(&mut self, event: String, name: Option<&'static str>, feed: Feed) {
        let verdict = match feed {
            Feed::Clock(_) | Feed::Perf => "counting",
            Feed::Denied => "denied",
            Feed::Refused(_) => "unsupported",
            Feed::Idle => return,
        };
        self.programmed.record(event, name, verdict);
    }

    /// What the guest programmed so far.
    pub fn programmed(&self) -> &[Programmed] {
        self.programmed.items()
    }

    /// Connects one decided programming to a counter source, audits denials and
    /// refusals, and tallies what the guest programmed. The decision itself was made by
    /// [`GuestPmu::reprogram`]; what is left here is which source can count it.
    fn apply(&mut self, p: Programming, msr: u32, value: u64) {
        let id = p.counter;
        let sel = p.selector;
        let gp = matches!(id, CounterId::Gp(_));
        // GP selectors are reported on every enabling write, fixed fields when they change
        // (every reprogrammed fixed counter changed).
        let sel_ref = gp.then_some(&sel);
        let feed = match p.verdict {
            Verdict::Disabled => Feed::Idle,
            Verdict::Denied(reason) => {
                let report = if gp {
                    sel.en
                } else {
                    self.feed_of(id) != Feed::Denied
                };
                if report {
                    self.stats.denied += 1;
                    let rule = self.guest.policy().describe(reason).to_string();
                    self.audit(msr, value, "denied", sel_ref, rule);
                }
                Feed::Denied
            }
            Verdict::Allowed if self.source == Source::HostPerf => {
                if !sel.en {
                    self.perf.retain(|(c, _)| *c != id);
                    Feed::Idle
                } else {
                    match id {
                        CounterId::Gp(_) => {
                            let attr = perf::gp_attr(self.vendor, &sel);
                            self.open_perf(id, attr, msr, value, Some(&sel), "the event")
                        }
                        CounterId::Fixed(i) => match perf::fixed_attr(&p) {
                            Some(attr) => {
                                let what = format!("fixed counter {i}");
                                self.open_perf(id, attr, msr, value, None, &what)
                            }
                            None => self.refuse(
                                id,
                                Refusal::UnsupportedEvent,
                                msr,
                                value,
                                None,
                                &format!("fixed counter {i}: no host perf equivalent"),
                            ),
                        },
                    }
                }
            }
            Verdict::Allowed => match clock::gp_event(&p) {
                Ok(ev) => Feed::Clock(ev),
                Err(r) => {
                    let why = match id {
                        CounterId::Fixed(i) => format!("fixed counter {i}: {}", r.as_str()),
                        CounterId::Gp(_) => r.as_str().into(),
                    };
                    self.refuse(id, r, msr, value, sel_ref, &why)
                }
            },
        };
        if sel.en {
            self.record(p.event_key(), p.event_name(), feed);
        }
        self.set_feed(id, feed);
    }

    /// The counter source cannot count `id`'s event: audited once per change, never faked.
    fn refuse(
        &mut self,
        id: CounterId,
        r: Refusal,
        msr: u32,
        value: u64,
        sel: Option<&EventSelector>,
        why: &str,
    ) -> Feed {
        let enabled = sel.is_none_or(|s| s.en);
        if enabled && self.feed_of(id) != Feed::Refused(r) {
            self.stats.unsupported += 1;
            self.audit(msr, value, "unsupported", sel, why.to_string());
        }
        Feed::Refused(r)
    }

    /// Backs counter `id` with a new host perf event (replacing any old one); a refusal by
    /// the host is audited as `unsupported` and the counter does not count.
    fn open_perf(
        &mut self,
        id: CounterId,
        attr: perf_event_open_sys::bindings::perf_event_attr,
        msr: u32,
        value: u64,
        sel: Option<&EventSelector>,
        what: &str,
    ) -> Feed {
        self.perf.retain(|(c, _)| *c != id);
        match PerfCounter::open(attr, 0) {
            Ok(pc) => {
                self.perf.push((id, pc));
                Feed::Perf
            }
            Err(e) => {
                self.stats.unsupported += 1;
                self.audit(
                    msr,
                    value,
                    "unsupported",
                    sel,
                    format!("{what}: host perf refused it: {e}"),
                );
                Feed::Refused(Refusal::UnsupportedEvent)
            }
        }
    }

    fn recompute_running(&mut self) {
        self.running.clear();
        for c in self.guest.state().counters() {
            match self.feed_of(c.id) {
                Feed::Clock(_) if c.enabled => self.running.push((c.id, false)),
                Feed::Perf if c.enabled => self.running.push((c.id, true)),
                _ => {}
            }
        }
        self.dirty = false;
        self.timer_dirty = true;
    }

    /// Host-perf feeds: the event's overflow period = the guest counter's remaining counts,
    /// with an overflow signal to the vCPU thread, so the PMI is raised on time.
    fn arm_perf_periods(&mut self) {
        for (id, pc) in &self.perf {
            let due = match self.guest.state().counter(*id) {
                Some(c) if c.enabled && c.pmi_on_overflow => {
                    self.guest.state().counts_until_overflow(*id)
                }
                _ => None,
            };
            if let Some(n) = due {
                if pc.set_period(n).is_ok() && self.tid > 0 {
                    let _ = pc.signal_on_overflow(self.tid, crate::kick::kick_signal());
                }
            }
        }
    }

    fn arm_timer(&mut self) {
        self.timer_dirty = false;
        if !self.perf.is_empty() {
            self.arm_perf_periods();
        }
        let Some(timer) = &self.timer else { return };
        let mut nearest: Option<u64> = None;
        for &(id, perf) in &self.running {
            if perf {
                continue; // host perf raises its own overflow signal
            }
            if let Some(c) = self.guest.state().counter(id) {
                if c.pmi_on_overflow {
                    if let Some(n) = self.guest.state().counts_until_overflow(id) {
                        nearest = Some(nearest.map_or(n, |m| m.min(n)));
                    }
                }
            }
        }
        match nearest {
            Some(ticks) => {
                let ns = u64::try_from(u128::from(ticks) * 1_000_000 / u128::from(self.tsc_khz))
                    .unwrap_or(u64::MAX);
                timer.arm_ns(ns);
                self.armed_deadline_tsc = Some(rdtsc().saturating_add(ticks));
                self.stats.timer_arms += 1;
            }
            None => {
                if self.armed_deadline_tsc.take().is_some() {
                    timer.disarm();
                }
            }
        }
    }
}

impl VcpuPmu for UserspacePmu {
    fn attach_thread(&mut self, tid: libc::pid_t) -> std::io::Result<()> {
        self.tid = tid;
        self.timer = Some(Timer::create(tid)?);
        self.timer_dirty = true;
        Ok(())
    }

    fn detach_thread(&mut self) {
        self.timer = None;
        self.perf.clear();
    }

    #[inline]
    fn before_run(&mut self) {
        if self.dirty {
            self.recompute_running();
        }
        if self.timer_dirty {
            self.arm_timer();
        }
    }

    #[inline]
    fn after_run(&mut self, ran_tsc: u64, kicked: bool) -> bool {
        let mut pmi = false;
        for i in 0..self.running.len() {
            let (id, perf) = self.running[i];
            let delta = if perf {
                match self.perf.iter_mut().find(|(c, _)| *c == id) {
                    Some((_, pc)) => pc.delta().unwrap_or(0),
                    None => 0,
                }
            } else {
                ran_tsc
            };
            if let Some(ovf) = self.guest.state_mut().add_count(id, delta) {
                self.stats.overflows += 1;
                self.timer_dirty = true;
                if ovf.pmi {
                    pmi = true;
                }
            }
        }
        // The one-shot timer is spent once it fired (a kick), and it may fire a little
        // before the counter reaches overflow (time outside KVM_RUN does not count; ns/TSC
        // rounding): re-arm for what is left. Also re-arm once the deadline has passed.
        if kicked || self.armed_deadline_tsc.is_some_and(|d| rdtsc() >= d) {
            self.timer_dirty = true;
        }
        if pmi {
            self.stats.pmis += 1;
        }
        pmi
    }

    fn rdmsr(&mut self, msr: u32) -> Option<u64> {
        self.stats.reads += 1;
        match self.guest.state().read(msr) {
            Ok(v) => Some(v),
            Err(e) => {
                self.stats.gp += 1;
                self.audit(msr, 0, "gp", None, format!("read: {e}"));
                None
            }
        }
    }

    fn wrmsr(&mut self, msr: u32, value: u64) -> bool {
        self.stats.writes += 1;
        match self.guest.write(msr, value) {
            Ok(written) => {
                for p in written.reprogrammed {
                    self.apply(p, msr, value);
                }
                // Any accepted write may change what runs or when it overflows.
                self.dirty = true;
                true
            }
            Err(e) => {
                self.stats.gp += 1;
                self.audit(msr, value, "gp", None, e.to_string());
                false
            }
        }
    }

    fn masks_lvtpc_on_pmi(&self) -> bool {
        self.vendor == Vendor::Intel
    }

    fn summary(&self) -> super::PmuSummary {
        super::PmuSummary::Userspace {
            vcpu: self.vcpu,
            stats: self.stats.clone(),
            programmed: self.programmed.items().to_vec(),
            context: Box::new(self.guest.state().save()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpmu::policy::Policy;
    use vpmu::IntelPmu;

    fn allow_all(vendor: Vendor, num_fixed: u8) -> Arc<CompiledPolicy> {
        let src = "action = \"deny\"\n[[event]]\nname = \"instructions\"\n";
        let p = Policy::from_toml(src).expect("policy");
        Arc::new(p.compile(vendor, num_fixed).expect("compile"))
    }

    /// `PmuState` clamps an out-of-model layout (documented "never panics"); the vPMU built
    /// on it must not index FIXED_CTR_CTRL fields by the unclamped fixed-counter count.
    #[test]
    fn fixed_ctrl_write_with_unclamped_layout_does_not_panic() {
        let layout = PmuConfig::Intel(IntelPmu {
            version: 5,
            num_gp: 8,
            gp_width: 48,
            num_fixed: 20,
            fixed_width: 48,
            events_unavailable: 0,
            events_len: 7,
            perf_capabilities: None,
        });
        let mut pmu = UserspacePmu::new(
            0,
            Source::Clock,
            &layout,
            allow_all(Vendor::Intel, 4),
            None,
            1_000_000,
        );
        assert!(pmu.wrmsr(vpmu::model::intel::IA32_FIXED_CTR_CTRL, 0x2222));
        assert_eq!(
            pmu.rdmsr(vpmu::model::intel::IA32_FIXED_CTR_CTRL),
            Some(0x2222)
        );
        pmu.before_run();
        pmu.after_run(1000, false);
    }
}
