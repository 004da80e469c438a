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
use vpmu::{PmuConfig, Vendor};

use super::audit::AuditLog;
use super::inkernel_audit::InKernelAudit;
use super::userspace::UserspacePmu;
use super::VcpuPmu;
use crate::config::VmConfig;
use crate::error::{Error, PmuConfigError, Result};
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
    /// The MSR filter to install before the first KVM_RUN ([`PmuPlan::take_msr_filter`]).
    msr_filter: Option<MsrFilter>,
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
        source => PmuConfigError::PolicyFile {
            path: path.to_path_buf(),
            source,
        }
        .into(),
    })?;
    let text =
        String::from_utf8(bytes).map_err(|_| PmuConfigError::PolicyNotUtf8(path.to_path_buf()))?;
    Ok(
        Policy::from_toml(&text).map_err(|source| PmuConfigError::Policy {
            name: path.display().to_string(),
            source,
        })?,
    )
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
        .map_err(|source| PmuConfigError::Policy {
            name: name.clone(),
            source,
        })?;
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
        let _: vpmu::cpuid::LayoutRequest =
            config.pmu.layout.parse().map_err(PmuConfigError::from)?;
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
    let refuse = |reason: String| Error::PmuUnavailable { mode, reason };
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
        .map_err(PmuConfigError::from)?;
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

/// An MSR filter the plan decided on, to be installed before the first KVM_RUN: ranges
/// `(base, count, bitmap)` whose clear bits send the accesses `flags` to the VMM (with
/// KVM_MSR_EXIT_REASON_FILTER a denial means "exit to userspace"); everything outside the
/// ranges stays in KVM (default: allow).
///
/// KVM_X86_SET_MSR_FILTER waits for an SRCU grace period (`synchronize_srcu`, 8-15 ms on
/// a loaded host) before it returns, so the builder installs it on a helper thread while
/// it loads the kernel and creates the vCPUs, and joins that thread before any vCPU
/// thread starts ([`crate::vm::Vm::start`]). KVM applies a new filter to vCPUs that exist
/// (KVM_REQ_MSR_FILTER_CHANGED, made before the ioctl returns) and to vCPUs created later
/// alike, so the order of vCPU creation and installation does not matter; only "before
/// the first KVM_RUN" does.
#[derive(Debug, Clone)]
pub struct MsrFilter {
    flags: MsrFilterRangeFlags,
    ranges: Vec<(u32, u32, Vec<u8>)>,
}

impl MsrFilter {
    /// The filter sending the accesses `flags` of the MSRs of `ranges` for which `to_vmm`
    /// holds to the VMM.
    fn new(
        ranges: &[(u32, u32)],
        flags: MsrFilterRangeFlags,
        to_vmm: impl Fn(u32) -> bool,
    ) -> Self {
        MsrFilter {
            flags,
            ranges: ranges
                .iter()
                .map(|&(base, n)| (base, n, filter_bitmap(base, n, &to_vmm)))
                .collect(),
        }
    }

    /// Whether the filter sends `msr`'s accesses `flags` to the VMM.
    pub fn routes(&self, msr: u32, flags: MsrFilterRangeFlags) -> bool {
        self.flags.contains(flags)
            && self.ranges.iter().any(|(base, n, bm)| {
                let i = msr.wrapping_sub(*base);
                i < *n && bm[(i / 8) as usize] & (1 << (i % 8)) == 0
            })
    }

    /// How many MSRs the filter sends to the VMM.
    pub fn routed_count(&self) -> u32 {
        self.ranges
            .iter()
            .map(|(base, n, _)| {
                let routed = (0..*n)
                    .filter(|i| self.routes(base + i, self.flags))
                    .count();
                u32::try_from(routed).unwrap_or(u32::MAX)
            })
            .sum()
    }

    /// KVM_X86_SET_MSR_FILTER (blocks for an SRCU grace period).
    pub fn install(&self, vm: &VmFd) -> Result<()> {
        let filter: Vec<MsrFilterRange<'_>> = self
            .ranges
            .iter()
            .map(|(base, n, bm)| MsrFilterRange {
                flags: self.flags,
                base: *base,
                msr_count: *n,
                bitmap: bm,
            })
            .collect();
        vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &filter)
            .map_err(Error::kvm("KVM_X86_SET_MSR_FILTER"))
    }
}

/// Routes every PMU MSR of both vendors' architectures to the VMM: the userspace vPMU
/// answers those its layout has and #GPs the rest; `off` #GPs them all. Both vendors', so
/// a guest never sees KVM's 0 for the other vendor's MSRs. Enables the exits now and
/// returns the filter to install.
fn route_pmu_msrs_to_userspace(vm: &VmFd) -> Result<MsrFilter> {
    enable_msr_exits(vm)?;
    Ok(MsrFilter::new(
        &vpmu::model::pmu_msr_ranges_all(),
        MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
        |_| true,
    ))
}

/// `--pmu-audit` with KVM's in-kernel vPMU: guest writes of `vendor`'s event selectors and
/// FIXED_CTR_CTRL go to the VMM (see [`super::inkernel_audit`]); everything else, reads of
/// those included, stays in KVM. Enables the exits now and returns the filter to install.
fn route_selector_writes_to_userspace(vm: &VmFd, vendor: vpmu::Vendor) -> Result<MsrFilter> {
    let selectors = vpmu::model::selector_msrs(vendor);
    let ranges: Vec<(u32, u32)> = vpmu::model::pmu_msr_ranges(vendor)
        .into_iter()
        .filter(|&(base, n)| selectors.iter().any(|&m| m >= base && m - base < n))
        .collect();
    enable_msr_exits(vm)?;
    Ok(MsrFilter::new(&ranges, MsrFilterRangeFlags::WRITE, |m| {
        selectors.binary_search(&m).is_ok()
    }))
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
                mode,
                reason: if remedy.is_empty() {
                    reason
                } else {
                    format!("{reason}; {remedy}")
                },
            })
        }
    }
}

/// Decides and applies the VM-wide vPMU state for `config`, except the MSR filter, which
/// it leaves in the plan for the caller to install before the first KVM_RUN
/// ([`PmuPlan::take_msr_filter`]). `supported` is this run's one KVM_GET_SUPPORTED_CPUID,
/// shared with the host probe (`--pmu auto` included) and every vCPU's CPUID.
pub fn plan(kvm: &Kvm, vm: &VmFd, config: &VmConfig, supported: &CpuId) -> Result<PmuPlan> {
    let host = (config.pmu.auto || config.pmu.mode != PmuMode::Off)
        .then(|| HostPmu::probe_system_with_cpuid(supported.as_slice().to_vec()));
    let mode = match &host {
        Some(host) if config.pmu.auto => auto_mode(host),
        _ => config.pmu.mode,
    };
    let mut plan = PmuPlan::new(mode);
    let host = match host {
        Some(host) if mode != PmuMode::Off => host,
        _ => {
            plan_off(kvm, vm, config, &mut plan)?;
            return Ok(plan);
        }
    };
    if matches!(mode, PmuMode::Emulated | PmuMode::Passthrough) {
        plan.ebusy_explanation = Some(vpmu::discovery::explain_vcpu_create_ebusy(&host));
    }
    if let Some(e) = unavailable(mode, &host) {
        return Err(e);
    }
    let vendor = resolve_layout(config, &host, &mut plan)?;
    let (compiled, name) = load_policy(config, vendor, &plan.layout)?;
    plan.policy_name = name;
    plan.audit = create_audit(config)?;
    match mode {
        PmuMode::Emulated | PmuMode::Passthrough => {
            install_pmu_event_filter(kvm, vm, mode, &compiled)?;
            if plan.audit.is_some() {
                plan.msr_filter = Some(audit_filter(kvm, vm, mode, vendor)?);
            }
        }
        PmuMode::Userspace => {
            plan.kvm_pmu_disabled = kvm_pmu_disable(kvm, vm)?;
            plan.msr_filter = Some(route_pmu_msrs_to_userspace(vm)?);
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

/// `--pmu auto`: the first of passthrough, emulated and userspace that `host` offers, else
/// off.
pub fn auto_mode(host: &HostPmu) -> PmuMode {
    [PmuMode::Passthrough, PmuMode::Emulated, PmuMode::Userspace]
        .into_iter()
        .find(|m| host.availability(*m).is_available())
        .unwrap_or(PmuMode::Off)
}

/// `--pmu off`: KVM's vPMU disabled where it can be, and (with the MSR filter) every PMU
/// MSR of both vendors sent to the VMM, which has no PMU to offer.
fn plan_off(kvm: &Kvm, vm: &VmFd, config: &VmConfig, plan: &mut PmuPlan) -> Result<()> {
    check_unused_pmu_options(config)?;
    plan.kvm_pmu_disabled = kvm_pmu_disable(kvm, vm)?;
    // CPUID cannot hide AMD's legacy counters, and KVM answers some PMU MSRs with 0 even
    // with its vPMU off (e.g. AMD PERF_CTR0-3, on Intel hosts too): each access #GPs, as
    // on a CPU without performance counters.
    if kvm.check_extension(Cap::X86UserSpaceMsr) && kvm.check_extension(Cap::X86MsrFilter) {
        plan.msr_filter = Some(route_pmu_msrs_to_userspace(vm)?);
        plan.off_msrs_fault = true;
    }
    Ok(())
}

/// The guest's PMU layout from `--pmu-layout` and the host; returns its vendor.
fn resolve_layout(config: &VmConfig, host: &HostPmu, plan: &mut PmuPlan) -> Result<Vendor> {
    let request: vpmu::cpuid::LayoutRequest =
        config.pmu.layout.parse().map_err(PmuConfigError::from)?;
    let userspace = plan.mode == PmuMode::Userspace;
    // On a host without a PMU the userspace vPMU is pure emulation (clock model), so it
    // may model either vendor's architecture: the requested vendor wins. Everywhere else
    // the guest's PMU must be the host CPU's.
    let vendor_hint = match (&request, &host.layout, userspace) {
        (vpmu::cpuid::LayoutRequest::Intel(_), PmuConfig::None, true) => Some(Vendor::Intel),
        (vpmu::cpuid::LayoutRequest::Amd(_), PmuConfig::None, true) => Some(Vendor::Amd),
        _ => host.vendor,
    };
    plan.layout = vpmu::cpuid::resolve_with_vendor(&request, vendor_hint, &host.layout, userspace)
        .map_err(PmuConfigError::from)?;
    let vendor = plan
        .layout
        .vendor()
        .ok_or(PmuConfigError::EmptyLayout(plan.mode))?;
    plan.vendor_rewrite = host.vendor.filter(|h| *h != vendor).map(|h| (vendor, h));
    Ok(vendor)
}

/// The `--pmu-audit` log, if asked for.
fn create_audit(config: &VmConfig) -> Result<Option<Arc<AuditLog>>> {
    let Some(path) = &config.pmu.audit else {
        return Ok(None);
    };
    let max = config.pmu.audit_max_bytes;
    if max < super::audit::MIN_MAX_BYTES {
        return Err(PmuConfigError::AuditMaxBytes {
            max,
            min: super::audit::MIN_MAX_BYTES,
        }
        .into());
    }
    let limits = super::audit::Limits {
        max_bytes: max,
        seccomp: config.seccomp,
        ..Default::default()
    };
    let log = AuditLog::create_with(path, limits).map_err(|source| Error::Io {
        op: format!("creating audit log {}", path.display()),
        source,
    })?;
    Ok(Some(Arc::new(log)))
}

/// In-kernel modes with `--pmu-audit`: the MSR filter that shows the VMM the guest's
/// event-selector writes.
fn audit_filter(kvm: &Kvm, vm: &VmFd, mode: PmuMode, vendor: Vendor) -> Result<MsrFilter> {
    if !(kvm.check_extension(Cap::X86UserSpaceMsr) && kvm.check_extension(Cap::X86MsrFilter)) {
        return Err(Error::PmuUnavailable {
            mode,
            reason: "--pmu-audit needs KVM's MSR filter (KVM_CAP_X86_MSR_FILTER, Linux 5.10+) \
                     to see what the guest programs; drop --pmu-audit or use a newer kernel"
                .into(),
        });
    }
    route_selector_writes_to_userspace(vm, vendor)
}

impl PmuPlan {
    /// A plan for `mode` with nothing decided yet.
    fn new(mode: PmuMode) -> PmuPlan {
        PmuPlan {
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
            msr_filter: None,
        }
    }

    /// The mode decided (`--pmu auto` resolved).
    pub fn mode(&self) -> PmuMode {
        self.mode
    }

    /// The MSR filter this plan needs, once: the caller must install it
    /// ([`MsrFilter::install`]) before any vCPU's first KVM_RUN.
    pub fn take_msr_filter(&mut self) -> Option<MsrFilter> {
        self.msr_filter.take()
    }

    /// Turns a KVM_CREATE_VCPU failure into the error the user sees: EBUSY under KVM's
    /// in-kernel vPMU is the mediated vPMU refusing to start (`perf_create_mediated_pmu`),
    /// explained with this host's NMI watchdog and what to do.
    pub fn vcpu_create_error(&self, e: kvm_ioctls::Error) -> Error {
        match &self.ebusy_explanation {
            Some(why) if e.errno() == libc::EBUSY => Error::PmuUnavailable {
                mode: self.mode,
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
        vpmu::cpuid::apply_cpuid(&self.layout, cpuid).map_err(|e| PmuConfigError::from(e).into())
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
                    mode: self.mode,
                    reason: format!(
                        "KVM refused MSR {index:#x} = {data:#x} for the guest's PMU layout"
                    ),
                });
            }
        }
        check_live_vpmu(vcpu, &self.layout)?.map_err(|why| Error::PmuUnavailable {
            mode: self.mode,
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
                .ok_or(Error::PmuConfig(PmuConfigError::NoPolicy(self.mode)))
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

    /// What the guest was given, for the run report.
    pub fn setup(&self) -> PmuSetup {
        PmuSetup {
            mode: self.mode,
            layout: self.layout.clone(),
            cpuid_vendor: self
                .vendor_rewrite
                .map(|(guest, host)| VendorRewrite { guest, host }),
            counter_source: (self.mode == PmuMode::Userspace).then_some(self.source),
            policy: (!self.policy_name.is_empty()).then(|| self.policy_name.clone()),
            kvm_pmu_disabled: self.kvm_pmu_disabled,
            pmu_msrs_fault: self.off_msrs_fault,
        }
    }
}

/// The guest's CPUID vendor string, rewritten to match a cross-vendor PMU layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct VendorRewrite {
    /// The vendor the guest sees.
    pub guest: vpmu::Vendor,
    /// The host CPU's vendor.
    pub host: vpmu::Vendor,
}

/// What the vPMU setup gave the guest (`RunReport::pmu_setup`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PmuSetup {
    /// The mode.
    pub mode: PmuMode,
    /// The guest's PMU layout.
    pub layout: PmuConfig,
    /// Set when the guest's CPUID vendor string was rewritten.
    pub cpuid_vendor: Option<VendorRewrite>,
    /// The userspace vPMU's counter source (userspace mode only).
    pub counter_source: Option<super::userspace::Source>,
    /// The allowlist policy's name (its path, or "builtin default"); none under `off`.
    pub policy: Option<String>,
    /// KVM_CAP_PMU_CAPABILITY(KVM_PMU_CAP_DISABLE) was applied.
    pub kvm_pmu_disabled: bool,
    /// `off`: every PMU MSR of both vendors is routed to the VMM by the MSR filter and
    /// #GPs (false where KVM has no MSR filter).
    pub pmu_msrs_fault: bool,
}

impl std::fmt::Display for PmuSetup {
    /// For humans (`--stats`, the log): mode, layout, policy and what `off` did.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pmu {} (", self.mode)?;
        match &self.layout {
            PmuConfig::None => write!(f, "no PMU")?,
            PmuConfig::Intel(i) => write!(
                f,
                "intel v{} {}x{}-bit GP + {}x{}-bit fixed",
                i.version, i.num_gp, i.gp_width, i.num_fixed, i.fixed_width
            )?,
            PmuConfig::Amd(a) => write!(
                f,
                "amd {} {}x{}-bit{}",
                if a.core_ext { "core-ext" } else { "legacy" },
                a.num_counters,
                a.width,
                if a.perfmon_v2 { " PerfMonV2" } else { "" }
            )?,
        }
        write!(f, ")")?;
        if let Some(r) = self.cpuid_vendor {
            write!(
                f,
                ", guest CPUID vendor {} (host {})",
                vpmu::cpuid::vendor_id(r.guest),
                vpmu::cpuid::vendor_id(r.host)
            )?;
        }
        match self.counter_source {
            Some(super::userspace::Source::Clock) => {
                write!(f, ", counters: TSC clock model (counts USR and OS alike)")?
            }
            Some(super::userspace::Source::HostPerf) => write!(f, ", counters: host perf events")?,
            None => {}
        }
        if let Some(policy) = &self.policy {
            write!(f, ", policy {policy}")?;
        }
        if self.mode == PmuMode::Off {
            f.write_str(if self.kvm_pmu_disabled {
                ", KVM vPMU disabled"
            } else {
                ", KVM_PMU_CAP_DISABLE unavailable"
            })?;
            if self.pmu_msrs_fault {
                f.write_str(", PMU MSRs #GP (MSR filter)")?;
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for PmuPlan {
    /// The decided plan for the log: what the guest gets ([`PmuSetup`]), then how the
    /// VMM takes part (the MSR filter, the audit log).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.setup())?;
        match &self.msr_filter {
            Some(m) => {
                let what = if m.flags.contains(MsrFilterRangeFlags::READ) {
                    "reads and writes"
                } else {
                    "writes"
                };
                write!(
                    f,
                    "; MSR filter: {what} of {} MSRs exit to the VMM",
                    m.routed_count()
                )?;
            }
            None => write!(f, "; no MSR filter")?,
        }
        if self.audit.is_some() {
            write!(f, "; audit log on")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{filter_bitmap, filter_caps_refusal, msr_filter_bitmap_len, MsrFilter};
    use kvm_ioctls::MsrFilterRangeFlags;

    #[test]
    fn pmu_off_filter_routes_every_pmu_msr_of_both_vendors() {
        let f = MsrFilter::new(
            &vpmu::model::pmu_msr_ranges_all(),
            MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
            |_| true,
        );
        for msr in [
            0xc001_0004u32,
            0xc001_0200,
            0xc000_0301,
            0xc1,
            0x186,
            0x309,
            0x38f,
        ] {
            assert!(f.routes(msr, MsrFilterRangeFlags::READ), "{msr:#x}");
            assert!(f.routes(msr, MsrFilterRangeFlags::WRITE), "{msr:#x}");
        }
        // IA32_APIC_BASE and EFER stay in KVM.
        assert!(!f.routes(0x1b, MsrFilterRangeFlags::READ));
        assert!(!f.routes(0xc000_0080, MsrFilterRangeFlags::READ));
        // Selector-write filters leave reads in KVM.
        let sel = vpmu::model::selector_msrs(vpmu::Vendor::Intel);
        let w = MsrFilter::new(&[(0x186, 8)], MsrFilterRangeFlags::WRITE, |m| {
            sel.binary_search(&m).is_ok()
        });
        assert!(w.routes(0x186, MsrFilterRangeFlags::WRITE));
        assert!(!w.routes(0x186, MsrFilterRangeFlags::READ));
    }

    #[test]
    fn plans_read_for_humans() {
        let f = MsrFilter::new(&[(0x186, 8), (0x38d, 6)], MsrFilterRangeFlags::WRITE, |m| {
            m != 0x38e
        });
        assert_eq!(f.routed_count(), 13);
        let setup = super::PmuSetup {
            mode: vpmu::discovery::PmuMode::Off,
            layout: vpmu::PmuConfig::None,
            cpuid_vendor: None,
            counter_source: None,
            policy: None,
            kvm_pmu_disabled: true,
            pmu_msrs_fault: true,
        };
        assert_eq!(
            setup.to_string(),
            "pmu off (no PMU), KVM vPMU disabled, PMU MSRs #GP (MSR filter)"
        );
    }

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
