//! Turning `--pmu MODE` into KVM state, before any vCPU exists.
//!
//! - `off`: KVM_CAP_PMU_CAPABILITY(KVM_PMU_CAP_DISABLE) where KVM offers it, and every PMU
//!   CPUID bit cleared: the guest sees no PMU.
//! - `emulated` / `passthrough`: KVM's in-kernel vPMU. The guest layout defaults to the
//!   host's exact one (the mediated fast path needs equal counts and widths), the policy is
//!   compiled into KVM_SET_PMU_EVENT_FILTER. `passthrough` needs KVM's mediated PMU
//!   (kvm_{intel,amd}.enable_mediated_pmu=1): without it the VM is refused with the probe's
//!   reason, never silently downgraded.
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
use super::userspace::UserspacePmu;
use super::VcpuPmu;
use crate::config::VmConfig;
use crate::error::{Error, Result};

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

fn load_policy(
    config: &VmConfig,
    vendor: vpmu::Vendor,
    layout: &PmuConfig,
) -> Result<(CompiledPolicy, String)> {
    let (policy, name) = match &config.pmu.policy {
        None => (
            Policy::default_architectural(),
            "builtin default".to_string(),
        ),
        Some(path) => {
            // A regular file of at most MAX_POLICY_BYTES, checked before reading.
            let bytes =
                read_regular(path, vpmu::policy::MAX_POLICY_BYTES).map_err(|e| match e {
                    ReadError::Io(source) => Error::Io {
                        op: format!("reading policy {}", path.display()),
                        source,
                    },
                    e => Error::PmuConfig(format!("policy {} {e}", path.display())),
                })?;
            let text = String::from_utf8(bytes).map_err(|_| {
                Error::PmuConfig(format!("policy {} is not UTF-8 text", path.display()))
            })?;
            let p = Policy::from_toml(&text)
                .map_err(|e| Error::PmuConfig(format!("{}: {e}", path.display())))?;
            (p, path.display().to_string())
        }
    };
    let num_fixed = match layout {
        PmuConfig::Intel(i) => i.num_fixed,
        _ => 0,
    };
    let compiled = policy
        .compile(vendor, num_fixed)
        .map_err(|e| Error::PmuConfig(e.to_string()))?;
    Ok((compiled, name))
}

/// KVM_SET_PMU_EVENT_FILTER = _IOW(KVMIO, 0xb2, struct kvm_pmu_event_filter).
fn set_pmu_event_filter(vm: &VmFd, bytes: &[u8]) -> Result<()> {
    use std::os::unix::io::AsRawFd;
    // _IOW(0xAE, 0xb2, 32-byte header): dir=1 (write) << 30 | size << 16 | type << 8 | nr.
    const KVM_SET_PMU_EVENT_FILTER: libc::c_ulong = (1 << 30) | (32 << 16) | (0xAE << 8) | 0xb2;
    // Copy into u64-aligned storage.
    let mut words = vec![0u64; bytes.len().div_ceil(8)];
    for (i, b) in bytes.iter().enumerate() {
        words[i / 8] |= u64::from(*b) << ((i % 8) * 8);
    }
    // SAFETY: the buffer holds a complete kvm_pmu_event_filter (header + nevents entries)
    // built by vpmu::policy; the kernel only reads it.
    let r = unsafe { libc::ioctl(vm.as_raw_fd(), KVM_SET_PMU_EVENT_FILTER, words.as_ptr()) };
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

/// Routes every PMU MSR of both vendors' architectures to the VMM (KVM_EXIT_X86_RDMSR/
/// WRMSR): the userspace vPMU answers those its layout has and #GPs the rest; `off` #GPs
/// them all. Both vendors', so a guest never sees KVM's 0 for the other vendor's MSRs.
fn route_pmu_msrs_to_userspace(vm: &VmFd) -> Result<()> {
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        ..Default::default()
    };
    cap.args[0] = u64::from(KVM_MSR_EXIT_REASON_FILTER);
    vm.enable_cap(&cap)
        .map_err(Error::kvm("KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR)"))?;
    let ranges = vpmu::model::pmu_msr_ranges_all();
    // A clear bit denies the access, which with KVM_MSR_EXIT_REASON_FILTER means "exit to
    // userspace". Bitmaps stay alive until set_msr_filter returns (KVM copies them).
    let bitmaps: Vec<Vec<u8>> = ranges
        .iter()
        .map(|(_, n)| vec![0u8; msr_filter_bitmap_len(*n)])
        .collect();
    let filter: Vec<MsrFilterRange<'_>> = ranges
        .iter()
        .zip(bitmaps.iter())
        .map(|((base, n), bm)| MsrFilterRange {
            flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
            base: *base,
            msr_count: *n,
            bitmap: bm,
        })
        .collect();
    vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &filter)
        .map_err(Error::kvm("KVM_X86_SET_MSR_FILTER"))
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
    };
    if mode == PmuMode::Off {
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
        let log = AuditLog::create(path).map_err(|source| Error::Io {
            op: format!("creating audit log {}", path.display()),
            source,
        })?;
        plan.audit = Some(Arc::new(log));
    }
    match mode {
        PmuMode::Emulated | PmuMode::Passthrough => {
            let bytes = compiled
                .kvm_filter_ref()
                .to_ioctl_bytes()
                .map_err(|e| Error::PmuConfig(e.to_string()))?;
            set_pmu_event_filter(vm, &bytes)?;
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
    /// Writes the guest's PMU CPUID leaves for this plan.
    pub fn apply_cpuid(&self, cpuid: &mut CpuId) -> Result<()> {
        vpmu::cpuid::apply_cpuid(&self.layout, cpuid)
            .map_err(|e| Error::PmuConfig(format!("CPUID: {e}")))
    }

    /// After vCPU creation: checks that what the guest will see matches the request.
    ///
    /// For the in-kernel modes this asks KVM for the first counter MSR: KVM answers only
    /// for counters its vPMU actually gives the guest.
    pub fn verify_vcpu(&self, vcpu: &VcpuFd) -> Result<()> {
        if !matches!(self.mode, PmuMode::Emulated | PmuMode::Passthrough) {
            return Ok(());
        }
        let probe = match &self.layout {
            PmuConfig::Intel(_) => 0x186, // IA32_PERFEVTSEL0
            PmuConfig::Amd(a) if a.core_ext => 0xc001_0200,
            PmuConfig::Amd(_) => 0xc001_0000,
            PmuConfig::None => return Ok(()),
        };
        let mut msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
            index: probe,
            ..Default::default()
        }])
        .map_err(|e| Error::PmuConfig(format!("{e:?}")))?;
        let n = vcpu
            .get_msrs(&mut msrs)
            .map_err(Error::kvm("KVM_GET_MSRS"))?;
        if n != 1 {
            return Err(Error::PmuUnavailable {
                mode: self.mode.to_string(),
                reason: format!(
                    "KVM did not give the vCPU the requested PMU (MSR {probe:#x} is not present); \
                     is kvm.enable_pmu=Y and does the host have a PMU? see `vpmu-vmm probe`"
                ),
            });
        }
        Ok(())
    }

    /// The per-vCPU userspace vPMU (only in `userspace` mode); `tsc_khz` is the vCPU's TSC
    /// frequency (KVM_GET_TSC_KHZ), used to turn counts into overflow deadlines.
    pub fn vcpu_backend(&self, index: u8, tsc_khz: u64) -> Result<Option<Box<dyn VcpuPmu>>> {
        if self.mode != PmuMode::Userspace {
            return Ok(None);
        }
        let policy = self
            .policy
            .clone()
            .ok_or_else(|| Error::PmuConfig("no policy".into()))?;
        Ok(Some(Box::new(UserspacePmu::new(
            index,
            self.source,
            &self.layout,
            policy,
            self.audit.clone(),
            tsc_khz,
        ))))
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
                super::userspace::Source::Clock => ", counters: TSC clock model",
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
    use super::msr_filter_bitmap_len;

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
