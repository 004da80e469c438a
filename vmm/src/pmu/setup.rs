//! Turning `--pmu MODE` into KVM state, before any vCPU exists.
//!
//! - `off`: KVM_CAP_PMU_CAPABILITY(KVM_PMU_CAP_DISABLE) where KVM offers it, and every PMU
//!   CPUID bit cleared: the guest sees no PMU.
//! - `emulated` / `passthrough`: KVM's in-kernel vPMU. The guest layout defaults to the
//!   layout KVM offers (KVM_GET_SUPPORTED_CPUID: perfmon v2 at most, <= 3 fixed and <= 8
//!   (Intel) / 6 (AMD) GP counters), and the policy is compiled into
//!   KVM_SET_PMU_EVENT_FILTER. Under `passthrough` (KVM's mediated vPMU) the guest's
//!   counter MSRs are always passed through and its event selectors and FIXED_CTR_CTRL
//!   always intercepted; PERF_GLOBAL_* are passed through only when the guest's GP and
//!   fixed counts equal the host perf PMU's and its version is >= 2, and RDPMC only when
//!   the counter widths match too. Hosts with 4 fixed counters (Ice Lake and later) never
//!   match, since KVM exposes 3 (see `vpmu::mediated::mediated_intercepts`). `passthrough`
//!   needs KVM's mediated PMU (kvm_{intel,amd}.enable_mediated_pmu=1): without it the VM
//!   is refused with the probe's reason, never silently downgraded. With `--pmu-audit`,
//!   selector writes are routed to the VMM ([`super::inkernel_audit`]).
//! - `userspace`: KVM's vPMU is disabled, every PMU MSR of both vendors' architectures is
//!   routed to the VMM by the MSR filter (KVM_EXIT_X86_RDMSR/WRMSR), and each vCPU gets a
//!   [`super::userspace::UserspacePmu`].

use std::sync::Arc;

use devices::host_file::{read_regular, ReadError};
use kvm_bindings::{
    kvm_enable_cap, CpuId, KVM_CAP_PMU_CAPABILITY, KVM_CAP_X86_USER_SPACE_MSR,
    KVM_MSR_EXIT_REASON_FILTER,
};
use kvm_ioctls::{
    Cap, Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VcpuFd, VmFd,
};
use vpmu::discovery::{HostPmu, PmuMode};
use vpmu::policy::{CompiledPolicy, Policy};
use vpmu::PmuConfig;

use super::audit::AuditLog;
use super::inkernel_audit::InKernelAudit;
use super::userspace::UserspacePmu;
use super::VcpuPmu;
use crate::config::VmConfig;
use crate::error::{Error, Result};
use crate::msrs::{get_msr, set_msr};

/// KVM_PMU_CAP_DISABLE (include/uapi/linux/kvm.h).
const KVM_PMU_CAP_DISABLE: u64 = 1;

/// What the vPMU setup decided, used while creating vCPUs and at the end of the run.
pub struct PmuPlan {
    mode: PmuMode,
    layout: PmuConfig,
    policy: Option<Arc<CompiledPolicy>>,
    policy_name: String,
    audit: Option<Arc<AuditLog>>,
    source: super::userspace::Source,
    kvm_pmu_disabled: bool,
    /// `off` mode: PMU MSRs are routed to the VMM and #GP.
    off_msrs_fault: bool,
    /// `(guest, host)` CPU vendors when the guest's CPUID vendor string is rewritten to
    /// match a cross-vendor layout (userspace vPMU on a host without a PMU).
    vendor_rewrite: Option<(vpmu::Vendor, vpmu::Vendor)>,
    /// In-kernel modes: what an EBUSY from the first KVM_CREATE_VCPU means on this host
    /// (KVM's mediated vPMU cannot start while host perf events count the guest).
    ebusy_explanation: Option<String>,
}

fn kvm_pmu_disable(kvm: &Kvm, vm: &VmFd) -> Result<bool> {
    let caps = kvm.check_extension_raw(u64::from(KVM_CAP_PMU_CAPABILITY) as libc::c_ulong);
    if caps > 0 && (caps as u64) & KVM_PMU_CAP_DISABLE != 0 {
        let mut cap = kvm_enable_cap {
            cap: KVM_CAP_PMU_CAPABILITY,
            ..Default::default()
        };
        cap.args[0] = KVM_PMU_CAP_DISABLE;
        vm.enable_cap(&cap)
            .map_err(Error::kvm("KVM_ENABLE_CAP(KVM_CAP_PMU_CAPABILITY)"))?;
        return Ok(true);
    }
    Ok(false)
}

/// Reads and parses an operator policy file: a regular file of at most
/// `vpmu::policy::MAX_POLICY_BYTES` (checked before reading), UTF-8, valid TOML policy.
pub fn read_policy_file(path: &std::path::Path) -> Result<Policy> {
    let bytes = read_regular(path, vpmu::policy::MAX_POLICY_BYTES).map_err(|e| match e {
        ReadError::Io(source) => Error::Io {
            op: format!("reading policy {}", path.display()),
            source,
        },
        e => Error::PmuConfig(format!("policy {} {e}", path.display())),
    })?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::PmuConfig(format!("policy {} is not UTF-8 text", path.display())))?;
    Policy::from_toml(&text).map_err(|e| Error::PmuConfig(format!("{}: {e}", path.display())))
}

fn load_policy(
    config: &VmConfig,
    vendor: vpmu::Vendor,
    layout: &PmuConfig,
) -> Result<(CompiledPolicy, String)> {
    let (policy, name) = read_policy(config)?;
    let num_fixed = match layout {
        PmuConfig::Intel(i) => i.num_fixed,
        _ => 0,
    };
    let compiled = policy
        .compile(vendor, num_fixed)
        .map_err(|e| Error::PmuConfig(format!("{name}: {e}")))?;
    // The operator's own file: say what it cannot do here. (The builtin default's skipped
    // rules, e.g. ref-cycles on AMD, are documented in resources/policies/default.toml.)
    if config.pmu.policy.is_some() {
        for w in compiled.warnings() {
            eprintln!("vpmu-vmm: warning: policy {name}: {w}");
        }
    }
    Ok((compiled, name))
}

/// Reads and parses the policy file (or the builtin default): every file given is checked
/// before boot, whatever the mode.
fn read_policy(config: &VmConfig) -> Result<(Policy, String)> {
    Ok(match &config.pmu.policy {
        None => (
            Policy::default_architectural(),
            "builtin default".to_string(),
        ),
        Some(path) => (read_policy_file(path)?, path.display().to_string()),
    })
}

/// `--pmu off`: the PMU options that cannot take effect are still checked (a broken policy
/// or layout is an error, not silently ignored) and each gets a warning.
fn check_unused_pmu_options(config: &VmConfig) -> Result<()> {
    if let Some(path) = &config.pmu.policy {
        read_policy(config)?;
        eprintln!(
            "vpmu-vmm: warning: --pmu-policy {} has no effect under --pmu off (the guest has no PMU)",
            path.display()
        );
    }
    if config.pmu.layout != "host" {
        let _: vpmu::cpuid::LayoutRequest = config
            .pmu
            .layout
            .parse()
            .map_err(|e: vpmu::cpuid::LayoutError| Error::PmuConfig(e.to_string()))?;
        eprintln!(
            "vpmu-vmm: warning: --pmu-layout {} has no effect under --pmu off",
            config.pmu.layout
        );
    }
    if let Some(path) = &config.pmu.audit {
        eprintln!(
            "vpmu-vmm: warning: --pmu-audit {} has no effect under --pmu off (nothing to audit)",
            path.display()
        );
    }
    Ok(())
}

/// Why this KVM cannot enforce a compiled allowlist, if it cannot.
fn filter_caps_refusal(
    has_filter: bool,
    has_masked: bool,
    needs_masked: bool,
) -> Option<&'static str> {
    if !has_filter {
        return Some(
            "this kernel's KVM has no PMU event filter (KVM_CAP_PMU_EVENT_FILTER, Linux 5.2+), \
             so the allowlist cannot be enforced in KVM's vPMU; use --pmu userspace or a newer kernel",
        );
    }
    if needs_masked && !has_masked {
        return Some(
            "the policy has masked events, which this kernel's KVM cannot filter \
             (KVM_CAP_PMU_EVENT_MASKED_EVENTS, Linux 6.3+); list the events without masks, \
             use --pmu userspace, or a newer kernel",
        );
    }
    None
}

vmm_sys_util::ioctl_iow_nr!(
    KVM_SET_PMU_EVENT_FILTER,
    kvm_bindings::KVMIO,
    0xb2,
    kvm_bindings::kvm_pmu_event_filter
);

/// Installs the compiled allowlist with KVM_SET_PMU_EVENT_FILTER after checking that this
/// KVM has what it needs: the filter itself (KVM_CAP_PMU_EVENT_FILTER, Linux 5.2+) and, for
/// masked entries, KVM_CAP_PMU_EVENT_MASKED_EVENTS (6.3+). Without them the ioctl answers a
/// bare EINVAL, or does not exist; the operator gets a sentence instead.
fn install_pmu_event_filter(
    kvm: &Kvm,
    vm: &VmFd,
    mode: PmuMode,
    compiled: &CompiledPolicy,
) -> Result<()> {
    let has = |cap: u32| kvm.check_extension_raw(libc::c_ulong::from(cap)) > 0;
    let refuse = |reason: String| Error::PmuUnavailable {
        mode: mode.to_string(),
        reason,
    };
    if let Some(why) = filter_caps_refusal(
        has(kvm_bindings::KVM_CAP_PMU_EVENT_FILTER),
        has(kvm_bindings::KVM_CAP_PMU_EVENT_MASKED_EVENTS),
        compiled.requires_masked_events_cap(),
    ) {
        return Err(refuse(why.to_string()));
    }
    let bytes = compiled
        .kvm_filter_ref()
        .to_ioctl_bytes()
        .map_err(|e| Error::PmuConfig(e.to_string()))?;
    // Copy into u64-aligned storage (the struct's alignment).
    let mut words = vec![0u64; bytes.len().div_ceil(8)];
    for (i, b) in bytes.iter().enumerate() {
        words[i / 8] |= u64::from(*b) << ((i % 8) * 8);
    }
    // SAFETY: `words` holds a complete kvm_pmu_event_filter (32-byte header and `nevents`
    // u64 entries, built by vpmu::policy), 8-byte aligned, alive for the call; the kernel
    // only reads it, and the return value is checked.
    let r = unsafe {
        vmm_sys_util::ioctl::ioctl_with_ptr(vm, KVM_SET_PMU_EVENT_FILTER(), words.as_ptr())
    };
    if r < 0 {
        return Err(Error::Kvm {
            op: "KVM_SET_PMU_EVENT_FILTER",
            source: kvm_ioctls::Error::last(),
        });
    }
    Ok(())
}

/// Bytes of a KVM MSR filter bitmap for `msr_count` MSRs: KVM copies
/// `BITS_TO_LONGS(msr_count) * sizeof(long)` bytes (`kvm_add_msr_filter`, arch/x86/kvm/x86.c),
/// so the buffer is rounded up to whole 64-bit words, never to bytes.
pub(crate) fn msr_filter_bitmap_len(msr_count: u32) -> usize {
    (msr_count as usize).div_ceil(64) * 8
}

/// The bitmap of one MSR filter range: bit i clear (deny = exit to the VMM) where
/// `to_vmm(base + i)`, set (KVM handles it) elsewhere.
fn filter_bitmap(base: u32, n: u32, to_vmm: impl Fn(u32) -> bool) -> Vec<u8> {
    let mut bm = vec![0u8; msr_filter_bitmap_len(n)];
    for i in 0..n {
        if !to_vmm(base + i) {
            bm[(i / 8) as usize] |= 1 << (i % 8);
        }
    }
    bm
}

/// Asks KVM to turn MSR-filter denials into exits to the VMM (KVM_EXIT_X86_RDMSR/WRMSR).
fn enable_msr_exits(vm: &VmFd) -> Result<()> {
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        ..Default::default()
    };
    cap.args[0] = u64::from(KVM_MSR_EXIT_REASON_FILTER);
    vm.enable_cap(&cap)
        .map_err(Error::kvm("KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR)"))
}

/// Installs an MSR filter (default: allow) whose ranges `(base, count)` send the accesses
/// `flags` of the MSRs for which `to_vmm` holds to the VMM and let KVM handle the others.
fn install_msr_filter(
    vm: &VmFd,
    ranges: &[(u32, u32)],
    flags: MsrFilterRangeFlags,
    to_vmm: impl Fn(u32) -> bool,
) -> Result<()> {
    // A clear bit denies the access, which with KVM_MSR_EXIT_REASON_FILTER means "exit to
    // userspace". Bitmaps stay alive until set_msr_filter returns (KVM copies them).
    let bitmaps: Vec<Vec<u8>> = ranges
        .iter()
        .map(|&(base, n)| filter_bitmap(base, n, &to_vmm))
        .collect();
    let filter: Vec<MsrFilterRange<'_>> = ranges
        .iter()
        .zip(bitmaps.iter())
        .map(|((base, n), bm)| MsrFilterRange {
            flags,
            base: *base,
            msr_count: *n,
            bitmap: bm,
        })
        .collect();
    vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &filter)
        .map_err(Error::kvm("KVM_X86_SET_MSR_FILTER"))
}

/// Routes every PMU MSR of both vendors' architectures to the VMM: the userspace vPMU
/// answers those its layout has and #GPs the rest; `off` #GPs them all. Both vendors', so
/// a guest never sees KVM's 0 for the other vendor's MSRs.
fn route_pmu_msrs_to_userspace(vm: &VmFd) -> Result<()> {
    enable_msr_exits(vm)?;
    install_msr_filter(
        vm,
        &vpmu::model::pmu_msr_ranges_all(),
        MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
        |_| true,
    )
}

/// `--pmu-audit` with KVM's in-kernel vPMU: guest writes of `vendor`'s event selectors and
/// FIXED_CTR_CTRL go to the VMM (see [`super::inkernel_audit`]); everything else, reads of
/// those included, stays in KVM.
fn route_selector_writes_to_userspace(vm: &VmFd, vendor: vpmu::Vendor) -> Result<()> {
    let selectors = vpmu::model::selector_msrs(vendor);
    let ranges: Vec<(u32, u32)> = vpmu::model::pmu_msr_ranges(vendor)
        .into_iter()
        .filter(|&(base, n)| selectors.iter().any(|&m| m >= base && m - base < n))
        .collect();
    enable_msr_exits(vm)?;
    install_msr_filter(vm, &ranges, MsrFilterRangeFlags::WRITE, |m| {
        selectors.binary_search(&m).is_ok()
    })
}

/// Runs [`vpmu::inkernel::LivenessCheck`] on `vcpu` (after KVM_SET_CPUID2): the outer
/// error is an ioctl failure, the inner one KVM's vPMU not being what `layout` asks for.
pub fn check_live_vpmu(
    vcpu: &VcpuFd,
    layout: &PmuConfig,
) -> Result<std::result::Result<(), String>> {
    let Some(check) = vpmu::inkernel::LivenessCheck::for_layout(layout) else {
        return Ok(Ok(()));
    };
    let back = if set_msr(vcpu, check.evtsel, check.probe_value)? {
        let v = get_msr(vcpu, check.evtsel)?;
        set_msr(vcpu, check.evtsel, 0)?;
        v
    } else {
        None
    };
    let global = match check.global_ctrl {
        Some((msr, _)) => get_msr(vcpu, msr)?,
        None => None,
    };
    Ok(check.judge(back, global))
}

fn unavailable(mode: PmuMode, host: &HostPmu) -> Option<Error> {
    match host.availability(mode) {
        vpmu::discovery::Availability::Available => None,
        vpmu::discovery::Availability::Unavailable { reason, remedy } => {
            Some(Error::PmuUnavailable {
                mode: mode.to_string(),
                reason: if remedy.is_empty() {
                    reason
                } else {
                    format!("{reason}; {remedy}")
                },
            })
        }
    }
}

/// Decides and applies the VM-wide vPMU state for `config`.
pub fn plan(kvm: &Kvm, vm: &VmFd, config: &VmConfig) -> Result<PmuPlan> {
    let mode = config.pmu.mode;
    let mut plan = PmuPlan {
        mode,
        layout: PmuConfig::None,
        policy: None,
        policy_name: String::new(),
        audit: None,
        source: super::userspace::Source::Clock,
        kvm_pmu_disabled: false,
        off_msrs_fault: false,
        vendor_rewrite: None,
        ebusy_explanation: None,
    };
    if mode == PmuMode::Off {
        check_unused_pmu_options(config)?;
        plan.kvm_pmu_disabled = kvm_pmu_disable(kvm, vm)?;
        // CPUID cannot hide AMD's legacy counters, and KVM answers some PMU MSRs with 0
        // even with its vPMU off (e.g. AMD PERF_CTR0-3, on Intel hosts too). Where KVM has
        // the MSR filter, send every PMU MSR of both vendors to the VMM, which has no PMU to offer:
        // each access #GPs, exactly as on a CPU without performance counters.
        if kvm.check_extension(Cap::X86UserSpaceMsr) && kvm.check_extension(Cap::X86MsrFilter) {
            route_pmu_msrs_to_userspace(vm)?;
            plan.off_msrs_fault = true;
        }
        return Ok(plan);
    }
    let host = HostPmu::probe_system();
    if matches!(mode, PmuMode::Emulated | PmuMode::Passthrough) {
        plan.ebusy_explanation = Some(vpmu::discovery::explain_vcpu_create_ebusy(&host));
    }
    if let Some(e) = unavailable(mode, &host) {
        return Err(e);
    }
    let request: vpmu::cpuid::LayoutRequest = config
        .pmu
        .layout
        .parse()
        .map_err(|e: vpmu::cpuid::LayoutError| Error::PmuConfig(e.to_string()))?;
    let userspace = mode == PmuMode::Userspace;
    // On a host without a PMU the userspace vPMU is pure emulation (clock model), so it
    // may model either vendor's architecture: the requested vendor wins. Everywhere else
    // the guest's PMU must be the host CPU's.
    let vendor_hint = match (&request, &host.layout, userspace) {
        (vpmu::cpuid::LayoutRequest::Intel(_), PmuConfig::None, true) => Some(vpmu::Vendor::Intel),
        (vpmu::cpuid::LayoutRequest::Amd(_), PmuConfig::None, true) => Some(vpmu::Vendor::Amd),
        _ => host.vendor,
    };
    plan.layout = vpmu::cpuid::resolve_with_vendor(&request, vendor_hint, &host.layout, userspace)
        .map_err(|e| Error::PmuConfig(e.to_string()))?;
    let vendor = plan
        .layout
        .vendor()
        .ok_or_else(|| Error::PmuConfig(format!("--pmu {mode} with an empty PMU layout")))?;
    plan.vendor_rewrite = host.vendor.filter(|h| *h != vendor).map(|h| (vendor, h));
    let (compiled, name) = load_policy(config, vendor, &plan.layout)?;
    plan.policy_name = name;
    if let Some(path) = &config.pmu.audit {
        let max = config.pmu.audit_max_bytes;
        if max < super::audit::MIN_MAX_BYTES {
            return Err(Error::PmuConfig(format!(
                "--pmu-audit-max-bytes {max} is below the minimum of {} bytes",
                super::audit::MIN_MAX_BYTES
            )));
        }
        let limits = super::audit::Limits {
            max_bytes: max,
            ..Default::default()
        };
        let log = AuditLog::create_with(path, limits).map_err(|source| Error::Io {
            op: format!("creating audit log {}", path.display()),
            source,
        })?;
        plan.audit = Some(Arc::new(log));
    }
    match mode {
        PmuMode::Emulated | PmuMode::Passthrough => {
            install_pmu_event_filter(kvm, vm, mode, &compiled)?;
            if plan.audit.is_some() {
                if !(kvm.check_extension(Cap::X86UserSpaceMsr)
                    && kvm.check_extension(Cap::X86MsrFilter))
                {
                    return Err(Error::PmuUnavailable {
                        mode: mode.to_string(),
                        reason: "--pmu-audit needs KVM's MSR filter (KVM_CAP_X86_MSR_FILTER, \
                                 Linux 5.10+) to see what the guest programs; drop --pmu-audit \
                                 or use a newer kernel"
                            .into(),
                    });
                }
                route_selector_writes_to_userspace(vm, vendor)?;
            }
        }
        PmuMode::Userspace => {
            plan.kvm_pmu_disabled = kvm_pmu_disable(kvm, vm)?;
            route_pmu_msrs_to_userspace(vm)?;
            plan.source = match host.userspace_counter_source() {
                vpmu::discovery::CounterSource::HostPerf { .. } => {
                    super::userspace::Source::HostPerf
                }
                vpmu::discovery::CounterSource::TscClock => super::userspace::Source::Clock,
            };
        }
        PmuMode::Off => {}
    }
    plan.policy = Some(Arc::new(compiled));
    Ok(plan)
}

impl PmuPlan {
    /// Turns a KVM_CREATE_VCPU failure into the error the user sees: EBUSY under KVM's
    /// in-kernel vPMU is the mediated vPMU refusing to start (`perf_create_mediated_pmu`),
    /// explained with this host's NMI watchdog and what to do.
    pub fn vcpu_create_error(&self, e: kvm_ioctls::Error) -> Error {
        match &self.ebusy_explanation {
            Some(why) if e.errno() == libc::EBUSY => Error::PmuUnavailable {
                mode: self.mode.to_string(),
                reason: why.clone(),
            },
            _ => Error::Kvm {
                op: "KVM_CREATE_VCPU",
                source: e,
            },
        }
    }

    /// Writes the guest's PMU CPUID leaves for this plan.
    pub fn apply_cpuid(&self, cpuid: &mut CpuId) -> Result<()> {
        vpmu::cpuid::apply_cpuid(&self.layout, cpuid)
            .map_err(|e| Error::PmuConfig(format!("CPUID: {e}")))
    }

    /// After KVM_SET_CPUID2, before the first KVM_RUN: writes the vPMU MSRs the layout
    /// fixes (IA32_PERF_CAPABILITIES, see [`vpmu::inkernel::vcpu_msrs`]) and checks that
    /// KVM gave the vCPU a live vPMU with the layout asked for
    /// ([`vpmu::inkernel::LivenessCheck`]). In-kernel modes only.
    pub fn setup_vcpu(&self, vcpu: &VcpuFd) -> Result<()> {
        if !matches!(self.mode, PmuMode::Emulated | PmuMode::Passthrough) {
            return Ok(());
        }
        for (index, data) in vpmu::inkernel::vcpu_msrs(&self.layout) {
            if !set_msr(vcpu, index, data)? {
                return Err(Error::PmuUnavailable {
                    mode: self.mode.to_string(),
                    reason: format!(
                        "KVM refused MSR {index:#x} = {data:#x} for the guest's PMU layout"
                    ),
                });
            }
        }
        check_live_vpmu(vcpu, &self.layout)?.map_err(|why| Error::PmuUnavailable {
            mode: self.mode.to_string(),
            reason: format!(
                "{why}; is kvm.enable_pmu=Y and does the host have a PMU? see `vpmu-vmm probe`"
            ),
        })
    }

    /// The per-vCPU side of the vPMU the VMM runs, if any: the userspace vPMU, or the audit
    /// of KVM's in-kernel vPMU when `--pmu-audit` is given. `vcpu_fd` is the vCPU's KVM file
    /// descriptor (kept open by the caller for the backend's lifetime); `tsc_khz` its TSC
    /// frequency (KVM_GET_TSC_KHZ), used to turn counts into overflow deadlines.
    pub fn vcpu_backend(
        &self,
        index: u8,
        vcpu_fd: std::os::unix::io::RawFd,
        tsc_khz: u64,
    ) -> Result<Option<Box<dyn VcpuPmu>>> {
        let policy = || {
            self.policy
                .clone()
                .ok_or_else(|| Error::PmuConfig("no policy".into()))
        };
        match (self.mode, &self.audit) {
            (PmuMode::Userspace, _) => Ok(Some(Box::new(UserspacePmu::new(
                index,
                self.source,
                &self.layout,
                policy()?,
                self.audit.clone(),
                tsc_khz,
            )))),
            (PmuMode::Emulated | PmuMode::Passthrough, Some(log)) => Ok(Some(Box::new(
                InKernelAudit::new(index, vcpu_fd, &self.layout, policy()?, log.clone()),
            ))),
            _ => Ok(None),
        }
    }

    /// End of run: flush the audit log.
    pub fn finish(&self) -> Result<()> {
        if let Some(a) = &self.audit {
            a.flush().map_err(|source| Error::Io {
                op: "writing the audit log".into(),
                source,
            })?;
        }
        Ok(())
    }

    /// One line describing the mode, the layout and the policy.
    pub fn describe(&self) -> String {
        let layout = match &self.layout {
            PmuConfig::None => "no PMU".to_string(),
            PmuConfig::Intel(i) => format!(
                "intel v{} {}x{}-bit GP + {}x{}-bit fixed",
                i.version, i.num_gp, i.gp_width, i.num_fixed, i.fixed_width
            ),
            PmuConfig::Amd(a) => format!(
                "amd {} {}x{}-bit{}",
                if a.core_ext { "core-ext" } else { "legacy" },
                a.num_counters,
                a.width,
                if a.perfmon_v2 { " PerfMonV2" } else { "" }
            ),
        };
        let mut s = format!("pmu {} ({layout})", self.mode);
        if let Some((guest, host)) = self.vendor_rewrite {
            s.push_str(&format!(
                ", guest CPUID vendor {} (host {})",
                vpmu::cpuid::vendor_id(guest),
                vpmu::cpuid::vendor_id(host)
            ));
        }
        if self.mode == PmuMode::Userspace {
            s.push_str(match self.source {
                super::userspace::Source::Clock => {
                    ", counters: TSC clock model (counts USR and OS alike)"
                }
                super::userspace::Source::HostPerf => ", counters: host perf events",
            });
        }
        if !self.policy_name.is_empty() {
            s.push_str(&format!(", policy {}", self.policy_name));
        }
        if self.mode == PmuMode::Off {
            s.push_str(if self.kvm_pmu_disabled {
                ", KVM vPMU disabled"
            } else {
                ", KVM_PMU_CAP_DISABLE unavailable"
            });
            if self.off_msrs_fault {
                s.push_str(", PMU MSRs #GP (MSR filter)");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::{filter_bitmap, filter_caps_refusal, msr_filter_bitmap_len};

    #[test]
    fn selector_write_bitmaps_exit_only_on_selectors() {
        // AMD core extension: PERF_CTL at even, PERF_CTR at odd addresses from 0xc0010200.
        let sel = vpmu::model::selector_msrs(vpmu::Vendor::Amd);
        let bm = filter_bitmap(0xc001_0200, 32, |m| sel.binary_search(&m).is_ok());
        assert_eq!(bm.len(), 8);
        assert_eq!(&bm[..4], &[0xaa; 4], "counters allowed, selectors exit");
        assert_eq!(&bm[4..], &[0; 4]);
        // Intel: IA32_PERFEVTSEL0-7 all exit.
        let sel = vpmu::model::selector_msrs(vpmu::Vendor::Intel);
        assert_eq!(
            filter_bitmap(0x186, 8, |m| sel.binary_search(&m).is_ok())[0],
            0
        );
        // FIXED_CTR_CTRL exits; GLOBAL_STATUS/CTRL/OVF_CTRL next to it stay in KVM.
        assert_eq!(
            filter_bitmap(0x38d, 6, |m| sel.binary_search(&m).is_ok())[0],
            0b11_1110
        );
    }

    #[test]
    fn filter_needs_the_kvm_caps_it_uses() {
        assert!(filter_caps_refusal(false, true, false)
            .unwrap()
            .contains("KVM_CAP_PMU_EVENT_FILTER"));
        assert!(filter_caps_refusal(true, false, true)
            .unwrap()
            .contains("KVM_CAP_PMU_EVENT_MASKED_EVENTS"));
        assert_eq!(filter_caps_refusal(true, false, false), None);
        assert_eq!(filter_caps_refusal(true, true, true), None);
    }

    #[test]
    fn msr_filter_bitmaps_are_whole_longs() {
        // kvm_add_msr_filter copies BITS_TO_LONGS(nmsrs) * sizeof(long) bytes.
        assert_eq!(msr_filter_bitmap_len(1), 8);
        assert_eq!(msr_filter_bitmap_len(6), 8);
        assert_eq!(msr_filter_bitmap_len(64), 8);
        assert_eq!(msr_filter_bitmap_len(65), 16);
        assert_eq!(msr_filter_bitmap_len(0x600 * 8), 0x600);
    }
}
