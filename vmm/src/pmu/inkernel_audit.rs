//! `--pmu-audit` for KVM's in-kernel vPMU (`emulated`, `passthrough`).
//!
//! KVM counts; the VMM only watches what the guest programs. With an audit file asked for,
//! the MSR filter sends guest *writes* of the event selectors and FIXED_CTR_CTRL to the
//! VMM (reads, counters and the global registers stay in KVM). Each write is vetted and
//! judged by the same vpmu code as the userspace vPMU ([`CompiledPolicy::check`],
//! [`vpmu::selector::vet_fixed_ctr_ctrl`], [`CompiledPolicy::decide_fixed_decision`]),
//! audited, and then handed to KVM as a host-initiated KVM_SET_MSRS:
//!
//! - KVM stores it and requests a reprogram, exactly as for the guest's own WRMSR
//!   (`intel_pmu_set_msr` / `amd_pmu_set_msr`; the MSR filter never applies to
//!   host-initiated accesses), and its PMU event filter decides at the next VM entry
//!   whether the counter counts (`pmc_is_event_allowed` in the perf-based vPMU,
//!   `kvm_mediated_pmu_refresh_event_filter` in the mediated one). KVM stays the enforcer;
//!   the audit can never make a denied event count.
//! - Where KVM refuses the value (its reserved bits, e.g. Intel AnyThread), the guest gets
//!   the #GP it would have got without the VMM in the way, and that is audited too.
//!
//! Without `--pmu-audit` none of this exists: no selector write leaves KVM.

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use kvm_bindings::{kvm_msr_entry, kvm_msrs, Msrs};
use vpmu::model::PmuMsr;
use vpmu::policy::{CompiledPolicy, Decision};
use vpmu::{PmuConfig, Vendor};

use super::audit::{AuditLog, ProgrammedTally};
use super::VcpuPmu;

vmm_sys_util::ioctl_iow_nr!(KVM_SET_MSRS, kvm_bindings::KVMIO, 0x89, kvm_msrs);

/// The vCPU's file descriptor, borrowed for KVM_SET_MSRS while its KVM_RUN exit is being
/// handled (the `VcpuFd` itself is mutably borrowed by that exit).
struct VcpuRawFd(RawFd);

impl AsRawFd for VcpuRawFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Statistics of the in-kernel audit.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    /// Selector / FIXED_CTR_CTRL writes that exited to the VMM.
    pub writes: u64,
    /// Enabling programmings the policy denies (KVM's filter keeps them from counting).
    pub denied: u64,
    /// Writes answered with #GP (reserved bits, by vpmu's model or by KVM).
    pub gp: u64,
    /// Nanoseconds spent handling these exits in the VMM (vet, audit, KVM_SET_MSRS).
    pub handler_ns: u64,
}

/// The per-vCPU audit of KVM's in-kernel vPMU.
pub struct InKernelAudit {
    vcpu: u8,
    fd: VcpuRawFd,
    vendor: Vendor,
    num_fixed: u8,
    policy: Arc<CompiledPolicy>,
    log: Arc<AuditLog>,
    last_fixed_ctrl: u64,
    programmed: ProgrammedTally,
    stats: Stats,
}

impl InKernelAudit {
    /// The audit for vCPU `vcpu` whose KVM file descriptor is `vcpu_fd`. The descriptor
    /// must stay open for as long as this value is used (the `VcpuFd` lives on the same
    /// vCPU thread and outlives the run loop).
    pub fn new(
        vcpu: u8,
        vcpu_fd: RawFd,
        layout: &PmuConfig,
        policy: Arc<CompiledPolicy>,
        log: Arc<AuditLog>,
    ) -> InKernelAudit {
        let (vendor, num_fixed) = match layout {
            PmuConfig::Intel(p) => (Vendor::Intel, p.num_fixed),
            PmuConfig::Amd(_) => (Vendor::Amd, 0),
            PmuConfig::None => (Vendor::Intel, 0),
        };
        InKernelAudit {
            vcpu,
            fd: VcpuRawFd(vcpu_fd),
            vendor,
            num_fixed,
            policy,
            log,
            last_fixed_ctrl: 0,
            programmed: ProgrammedTally::default(),
            stats: Stats::default(),
        }
    }

    /// Host-initiated KVM_SET_MSRS of one MSR; `false` when KVM refused the value.
    fn kvm_set(&self, index: u32, data: u64) -> bool {
        let Ok(msrs) = Msrs::from_entries(&[kvm_msr_entry {
            index,
            data,
            ..Default::default()
        }]) else {
            return false;
        };
        // SAFETY: `fd` is this vCPU's open KVM file descriptor (see `new`); `msrs` is a
        // complete kvm_msrs with one entry that the kernel only reads; the return value
        // (number of MSRs set, or -1) is checked.
        let n = unsafe {
            vmm_sys_util::ioctl::ioctl_with_ref(&self.fd, KVM_SET_MSRS(), msrs.as_fam_struct_ref())
        };
        n == 1
    }

    fn gp(
        &mut self,
        msr: u32,
        value: u64,
        sel: Option<&vpmu::selector::EventSelector>,
        why: String,
    ) -> bool {
        self.stats.gp += 1;
        self.log.access(self.vcpu, msr, value, "gp", sel, why);
        false
    }

    fn write_evtsel(&mut self, msr: u32, value: u64) -> bool {
        let checked = match self.policy.check(value) {
            Ok(c) => c,
            Err(e) => return self.gp(msr, value, None, e.to_string()),
        };
        let sel = checked.vetted.selector;
        if !self.kvm_set(msr, value) {
            return self.gp(msr, value, Some(&sel), "KVM refused the value".into());
        }
        if sel.en {
            let verdict = match checked.decision {
                Decision::Allowed => "counting",
                Decision::Denied(reason) => {
                    self.stats.denied += 1;
                    let rule = self.policy.describe(reason).to_string();
                    self.log
                        .access(self.vcpu, msr, value, "denied", Some(&sel), rule);
                    "denied"
                }
            };
            let name = vpmu::events::named_events(self.vendor)
                .iter()
                .find(|n| n.event == sel.event && n.umask == sel.umask)
                .map(|n| n.name);
            self.programmed.record(
                format!("{:#x}/{:#04x}", sel.event, sel.umask),
                name,
                verdict,
            );
        }
        true
    }

    fn write_fixed_ctrl(&mut self, msr: u32, value: u64) -> bool {
        let vetted = match vpmu::selector::vet_fixed_ctr_ctrl(
            value,
            self.num_fixed,
            &self.policy.vet_options(),
        ) {
            Ok(v) => v,
            Err(e) => return self.gp(msr, value, None, e.to_string()),
        };
        if !self.kvm_set(msr, value) {
            return self.gp(msr, value, None, "KVM refused the value".into());
        }
        let previous = std::mem::replace(&mut self.last_fixed_ctrl, value);
        for i in 0..self.num_fixed.min(16) {
            let shift = 4 * u32::from(i);
            let field = (value >> shift) & 0xf;
            // Only fields that change to an enabled state are new programmings.
            if field & 0x3 == 0 || field == (previous >> shift) & 0xf {
                continue;
            }
            let decision = if vetted.anythread_denied & (1 << i) != 0 {
                Decision::Denied(vpmu::policy::DenyReason::AnyThread)
            } else {
                self.policy.decide_fixed_decision(i)
            };
            let verdict = match decision {
                Decision::Allowed => "counting",
                Decision::Denied(reason) => {
                    self.stats.denied += 1;
                    let rule = self.policy.describe(reason).to_string();
                    self.log.access(self.vcpu, msr, value, "denied", None, rule);
                    "denied"
                }
            };
            let name = vpmu::events::fixed_counter_name(i);
            self.programmed.record(format!("fixed{i}"), name, verdict);
        }
        true
    }
}

impl VcpuPmu for InKernelAudit {
    fn attach_thread(&mut self, _tid: libc::pid_t) -> std::io::Result<()> {
        Ok(())
    }

    fn detach_thread(&mut self) {}

    fn before_run(&mut self) {}

    fn after_run(&mut self, _ran_tsc: u64, _kicked: bool) -> bool {
        false
    }

    /// Reads are never routed here (the filter sends writes only); one that arrives anyway
    /// gets #GP rather than a made-up value.
    fn rdmsr(&mut self, _msr: u32) -> Option<u64> {
        None
    }

    fn wrmsr(&mut self, msr: u32, value: u64) -> bool {
        let start = Instant::now();
        self.stats.writes += 1;
        let ok = match vpmu::model::classify(self.vendor, msr) {
            Some(PmuMsr::GpEventSel(_)) => self.write_evtsel(msr, value),
            Some(PmuMsr::FixedCtrCtrl) => self.write_fixed_ctrl(msr, value),
            _ => self.gp(msr, value, None, "not an event-programming MSR".into()),
        };
        self.stats.handler_ns += u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        ok
    }

    fn masks_lvtpc_on_pmi(&self) -> bool {
        // KVM delivers the in-kernel vPMU's PMIs itself.
        false
    }

    fn summary(&self) -> String {
        let s = &self.stats;
        let per_exit = s.handler_ns.checked_div(s.writes).unwrap_or(0);
        let mut line = format!(
            "pmu audit: {} selector writes ({} ns each in the VMM), {} denied, {} #GP",
            s.writes, per_exit, s.denied, s.gp
        );
        if !self.programmed.items().is_empty() {
            line.push_str(&format!("; programmed: {}", self.programmed.summary()));
        }
        line
    }

    fn summary_json(&self) -> serde_json::Value {
        serde_json::json!({
            "vcpu": self.vcpu,
            "audit": self.stats,
            "programmed": self.programmed.items(),
        })
    }
}
