//! `--pmu-audit` for KVM's in-kernel vPMU (`emulated`, `passthrough`).
//!
//! KVM counts; the VMM only watches what the guest programs. With an audit file asked for,
//! the MSR filter sends guest *writes* of the event selectors and FIXED_CTR_CTRL to the
//! VMM (reads, counters and the global registers stay in KVM). Each write is vetted and
//! judged by the same vpmu core as the userspace vPMU ([`GuestPmu`]),
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
use vpmu::guest::{GuestPmu, Verdict};
use vpmu::model::PmuMsr;
use vpmu::policy::CompiledPolicy;
use vpmu::state::CounterId;
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
    /// A shadow of what the guest programmed (every selector write passes through here),
    /// judged by the same core as the userspace vPMU.
    guest: GuestPmu,
    log: Arc<AuditLog>,
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
        InKernelAudit {
            vcpu,
            fd: VcpuRawFd(vcpu_fd),
            vendor: layout.vendor().unwrap_or(Vendor::Intel),
            guest: GuestPmu::new(layout, policy),
            log,
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

    fn gp(&mut self, msr: u32, value: u64, why: String) -> bool {
        self.stats.gp += 1;
        self.log.access(self.vcpu, msr, value, "gp", None, why);
        false
    }

    /// A selector or FIXED_CTR_CTRL write: KVM first (its reserved bits decide #GP, so the
    /// audit never changes what the guest sees), then vpmu's decision on the value KVM
    /// stored, then the audit record.
    fn write_selector(&mut self, msr: u32, value: u64) -> bool {
        if !self.kvm_set(msr, value) {
            return self.gp(msr, value, "KVM refused the value (reserved bits)".into());
        }
        let stored = vpmu::inkernel::kvm_stored_selector(self.vendor, msr, value);
        let reprogrammed = match self.guest.write(msr, stored) {
            Ok(w) => w.reprogrammed,
            // KVM accepted a value vpmu's model calls reserved (Intel IN_TX with TSX):
            // decide the event anyway, never skip the audit.
            Err(_) => self.guest.judge_raw(msr, stored),
        };
        for p in reprogrammed {
            if !p.enabled() {
                continue;
            }
            if let Verdict::Denied(reason) = p.verdict {
                self.stats.denied += 1;
                let rule = self.guest.policy().describe(reason).to_string();
                let sel = matches!(p.counter, CounterId::Gp(_)).then_some(&p.selector);
                self.log.access(self.vcpu, msr, value, "denied", sel, rule);
            }
            self.programmed
                .record(p.event_key(), p.event_name(), p.verdict.as_str());
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
            Some(PmuMsr::GpEventSel(_) | PmuMsr::FixedCtrCtrl) => self.write_selector(msr, value),
            _ => self.gp(msr, value, "not an event-programming MSR".into()),
        };
        self.stats.handler_ns += u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        ok
    }

    fn masks_lvtpc_on_pmi(&self) -> bool {
        // KVM delivers the in-kernel vPMU's PMIs itself.
        false
    }

    fn summary(&self) -> super::PmuSummary {
        super::PmuSummary::Audit {
            vcpu: self.vcpu,
            audit: self.stats.clone(),
            programmed: self.programmed.items().to_vec(),
        }
    }
}
