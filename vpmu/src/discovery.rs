//! Host capability discovery: what KVM and the host PMU offer, and which vPMU modes can run.
//!
//! All I/O goes through [`HostSource`]; [`SystemHost`] is the real one (`/dev/kvm` + sysfs +
//! the kernel log), [`FixtureHost`] a canned one for tests. [`HostPmu::probe`] gathers the
//! facts, [`HostPmu::availability`] decides each [`PmuMode`], and [`HostPmu::report`] /
//! [`HostPmu::probe_report`] render what `vpmu-vmm probe` prints.

use crate::config::{PmuConfig, Vendor};
use crate::cpuid::{self, HostFacts, PDCM_BIT};
use crate::mediated::{mediated_intercepts, HostPerfPmu, InterceptPlan, MediatedSupport};
use crate::model::intel;
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_msr_entry, Msrs, KVM_CAP_PMU_CAPABILITY, KVM_CAP_PMU_EVENT_FILTER,
    KVM_CAP_PMU_EVENT_MASKED_EVENTS, KVM_CAP_X86_MSR_FILTER, KVM_CAP_X86_USER_SPACE_MSR,
    KVM_MAX_CPUID_ENTRIES, KVM_PMU_CAP_DISABLE,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io::Read;
use std::path::PathBuf;

pub use crate::mode::{Availability, ParseModeError, PmuMode};

/// A host perf PMU found in sysfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PerfPmu {
    /// Directory name under /sys/bus/event_source/devices (`cpu`, `cpu_core`, `cpu_atom`).
    pub name: String,
    /// Its perf_event_attr.type.
    #[serde(rename = "type")]
    pub pmu_type: u32,
}

/// Names of the host perf core PMUs this crate looks for.
pub const CORE_PERF_PMUS: [&str; 3] = ["cpu", "cpu_core", "cpu_atom"];

/// Where discovery gets its facts. Implementations must not panic.
pub trait HostSource {
    /// KVM_GET_SUPPORTED_CPUID; `Err` (a description) when KVM is unusable.
    fn supported_cpuid(&self) -> Result<Vec<kvm_cpuid_entry2>, String>;
    /// KVM_CHECK_EXTENSION on /dev/kvm; 0 when unsupported or KVM is unusable.
    fn check_extension(&self, cap: u32) -> i32;
    /// A small sysfs/procfs file (a module parameter, a perf PMU cap, a sysctl), trimmed;
    /// `None` when the file is absent (e.g. the running kernel has no such parameter).
    fn read_param(&self, path: &str) -> Option<String>;
    /// Names of the loaded KVM modules (`/sys/module/kvm*`), e.g. `kvm`, `kvm_amd`.
    fn kvm_modules(&self) -> Vec<String>;
    /// Host perf core PMUs in sysfs (`cpu`, `cpu_core`, `cpu_atom`).
    fn perf_pmus(&self) -> Vec<PerfPmu>;
    /// A KVM feature MSR (KVM_GET_MSRS on /dev/kvm), e.g. IA32_PERF_CAPABILITIES.
    fn feature_msr(&self, msr: u32) -> Option<u64>;
    /// Whether the kernel log says "PMU not available"; `None` if the log is unreadable.
    fn kernel_says_no_pmu(&self) -> Option<bool>;
    /// The CPU model name from outside CPUID (e.g. /proc/cpuinfo), used when KVM's
    /// supported CPUID lacks the brand-string leaves.
    fn cpu_model(&self) -> Option<String> {
        None
    }
    /// The host CPU's own CPUID (leaf, sub-leaf) as [EAX, EBX, ECX, EDX], i.e. what the
    /// host kernel's perf driver saw, not KVM's capped KVM_GET_SUPPORTED_CPUID; `None`
    /// when unknown or beyond the CPU's maximum leaf.
    fn host_cpuid(&self, _leaf: u32, _subleaf: u32) -> Option<[u32; 4]> {
        None
    }
    /// A host MSR as CPU 0 has it (`/dev/cpu/0/msr`, which needs root and the msr module);
    /// `None` when unreadable.
    fn host_msr(&self, _msr: u32) -> Option<u64> {
        None
    }
}

/// The real host: `/dev/kvm`, `/sys`, `/dev/kmsg`.
pub struct SystemHost {
    kvm: Result<kvm_ioctls::Kvm, String>,
    sys: PathBuf,
    /// KVM_GET_SUPPORTED_CPUID as the caller already made it (the VMM makes it once per
    /// run and shares it); `None`: ask KVM.
    supported_cpuid: Option<Vec<kvm_cpuid_entry2>>,
}

impl SystemHost {
    /// Open `/dev/kvm` (failure is recorded, not fatal: discovery reports it).
    pub fn new() -> SystemHost {
        SystemHost {
            kvm: kvm_ioctls::Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}")),
            sys: PathBuf::from("/sys"),
            supported_cpuid: None,
        }
    }

    /// Like [`SystemHost::new`], but answers `supported_cpuid` with `entries`, a
    /// KVM_GET_SUPPORTED_CPUID the caller already made (the ioctl is not free, and the
    /// VMM needs its result for every vCPU anyway).
    pub fn with_supported_cpuid(entries: Vec<kvm_cpuid_entry2>) -> SystemHost {
        SystemHost {
            supported_cpuid: Some(entries),
            ..SystemHost::new()
        }
    }

    /// Whether `/dev/kvm` could be opened.
    pub fn kvm_usable(&self) -> bool {
        self.kvm.is_ok()
    }
}

impl Default for SystemHost {
    fn default() -> Self {
        SystemHost::new()
    }
}

impl HostSource for SystemHost {
    fn supported_cpuid(&self) -> Result<Vec<kvm_cpuid_entry2>, String> {
        let kvm = self.kvm.as_ref().map_err(Clone::clone)?;
        if let Some(entries) = &self.supported_cpuid {
            return Ok(entries.clone());
        }
        kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map(|c| c.as_slice().to_vec())
            .map_err(|e| format!("KVM_GET_SUPPORTED_CPUID: {e}"))
    }

    fn check_extension(&self, cap: u32) -> i32 {
        match &self.kvm {
            Ok(kvm) => kvm.check_extension_raw(cap.into()),
            Err(_) => 0,
        }
    }

    fn read_param(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_string())
    }

    fn kvm_modules(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.sys.join("module"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n == "kvm" || n.starts_with("kvm_"))
            .collect();
        out.sort();
        out
    }

    fn perf_pmus(&self) -> Vec<PerfPmu> {
        let dir = self.sys.join("bus/event_source/devices");
        CORE_PERF_PMUS
            .iter()
            .filter_map(|name| {
                let t = std::fs::read_to_string(dir.join(name).join("type")).ok()?;
                Some(PerfPmu {
                    name: (*name).to_string(),
                    pmu_type: t.trim().parse().ok()?,
                })
            })
            .collect()
    }

    fn feature_msr(&self, msr: u32) -> Option<u64> {
        let kvm = self.kvm.as_ref().ok()?;
        let list = kvm.get_msr_feature_index_list().ok()?;
        if !list.as_slice().contains(&msr) {
            return None;
        }
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: msr,
            ..Default::default()
        }])
        .ok()?;
        match kvm.get_msrs(&mut msrs) {
            Ok(1) => msrs.as_slice().first().map(|e| e.data),
            _ => None,
        }
    }

    fn kernel_says_no_pmu(&self) -> Option<bool> {
        use std::os::unix::fs::OpenOptionsExt;
        const O_NONBLOCK: i32 = 0o4000; // x86_64 Linux
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(O_NONBLOCK)
            .open("/dev/kmsg")
            .ok()?;
        let mut buf = vec![0u8; 8192];
        // One record per read; EAGAIN at the end. Bounded in case the log is endless.
        for _ in 0..200_000 {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if String::from_utf8_lossy(&buf[..n]).contains("PMU not available") {
                        return Some(true);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // EPIPE: records overwritten while reading; keep going.
                Err(e) if e.raw_os_error() == Some(32) => continue,
                Err(_) => return None,
            }
        }
        Some(false)
    }

    #[cfg(target_arch = "x86_64")]
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> Option<[u32; 4]> {
        // `__cpuid_count` is a safe fn since Rust 1.87 (CPUID exists on every x86_64 CPU
        // and has no side effects).
        let max = core::arch::x86_64::__cpuid_count(leaf & 0x8000_0000, 0).eax;
        if leaf > max {
            return None;
        }
        let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
        Some([r.eax, r.ebx, r.ecx, r.edx])
    }

    fn host_msr(&self, msr: u32) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open("/dev/cpu/0/msr").ok()?;
        let mut buf = [0u8; 8];
        f.read_exact_at(&mut buf, u64::from(msr)).ok()?;
        Some(u64::from_le_bytes(buf))
    }

    fn cpu_model(&self) -> Option<String> {
        let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    }
}

/// Canned host facts for tests and for replaying another host's probe.
#[derive(Debug, Clone, Default)]
pub struct FixtureHost {
    /// KVM_GET_SUPPORTED_CPUID result (`None`: KVM unusable, see `kvm_error`).
    pub cpuid: Option<Vec<kvm_cpuid_entry2>>,
    /// Why KVM is unusable.
    pub kvm_error: Option<String>,
    /// KVM_CHECK_EXTENSION answers (missing: 0).
    pub caps: BTreeMap<u32, i32>,
    /// Parameter file path -> contents (missing: file absent).
    pub params: BTreeMap<String, String>,
    /// Loaded KVM modules.
    pub modules: Vec<String>,
    /// Perf core PMUs.
    pub perf_pmus: Vec<PerfPmu>,
    /// KVM feature MSRs.
    pub feature_msrs: BTreeMap<u32, u64>,
    /// Kernel log verdict.
    pub kernel_says_no_pmu: Option<bool>,
    /// CPU model name from outside CPUID.
    pub cpu_model: Option<String>,
    /// The host CPU's own CPUID (`None`: unknown), e.g. parsed with
    /// [`cpuid::parse_cpuid_dump`].
    pub raw_cpuid: Option<Vec<kvm_cpuid_entry2>>,
    /// Host MSRs (`/dev/cpu/0/msr`; missing: unreadable).
    pub raw_msrs: BTreeMap<u32, u64>,
}

impl HostSource for FixtureHost {
    fn supported_cpuid(&self) -> Result<Vec<kvm_cpuid_entry2>, String> {
        self.cpuid.clone().ok_or_else(|| {
            self.kvm_error
                .clone()
                .unwrap_or_else(|| "no /dev/kvm".to_string())
        })
    }

    fn check_extension(&self, cap: u32) -> i32 {
        self.caps.get(&cap).copied().unwrap_or(0)
    }

    fn read_param(&self, path: &str) -> Option<String> {
        self.params.get(path).map(|s| s.trim().to_string())
    }

    fn kvm_modules(&self) -> Vec<String> {
        self.modules.clone()
    }

    fn perf_pmus(&self) -> Vec<PerfPmu> {
        self.perf_pmus.clone()
    }

    fn feature_msr(&self, msr: u32) -> Option<u64> {
        self.feature_msrs.get(&msr).copied()
    }

    fn kernel_says_no_pmu(&self) -> Option<bool> {
        self.kernel_says_no_pmu
    }

    fn cpu_model(&self) -> Option<String> {
        self.cpu_model.clone()
    }

    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> Option<[u32; 4]> {
        cpuid::lookup(self.raw_cpuid.as_deref()?, leaf, subleaf)
    }

    fn host_msr(&self, msr: u32) -> Option<u64> {
        self.raw_msrs.get(&msr).copied()
    }
}

/// Path of `kvm.enable_pmu`.
pub const PARAM_ENABLE_PMU: &str = "/sys/module/kvm/parameters/enable_pmu";

/// The NMI watchdog sysctl (`kernel.nmi_watchdog`).
pub const PARAM_NMI_WATCHDOG: &str = "/proc/sys/kernel/nmi_watchdog";

/// Why KVM_CREATE_VCPU fails with EBUSY under the mediated vPMU.
const MEDIATED_EBUSY_WHY: &str = "KVM creates the mediated vPMU at a VM's first \
    KVM_CREATE_VCPU (kvm_arch_vcpu_precreate -> perf_create_mediated_pmu), and perf refuses \
    with EBUSY while any host perf event that also counts guest mode (exclude_guest=0) \
    exists, system-wide or per task";

/// What to stop besides the NMI watchdog.
const STOP_GUEST_COUNTING_PERF: &str = "stop host perf users whose events count guest mode: \
    a system-wide `perf record -a` or `perf stat -a`, or a VM of this VMM running with \
    --pmu userspace";

/// Path of `<module>.enable_mediated_pmu`.
pub fn mediated_param_path(module: &str) -> String {
    format!("/sys/module/{module}/parameters/enable_mediated_pmu")
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "Y" | "y" | "1" => Some(true),
        "N" | "n" | "0" => Some(false),
        _ => None,
    }
}

fn yn(b: bool) -> &'static str {
    if b {
        "Y"
    } else {
        "N"
    }
}

/// KVM capabilities that matter to the vPMU modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct KvmPmuCaps {
    /// KVM_CAP_PMU_CAPABILITY value (bit 0: KVM_PMU_CAP_DISABLE).
    pub pmu_capability: i32,
    /// KVM_CAP_PMU_EVENT_FILTER.
    pub pmu_event_filter: bool,
    /// KVM_CAP_PMU_EVENT_MASKED_EVENTS.
    pub pmu_masked_events: bool,
    /// KVM_CAP_X86_USER_SPACE_MSR.
    pub user_space_msr: bool,
    /// KVM_CAP_X86_MSR_FILTER.
    pub msr_filter: bool,
}

/// Where userspace-mode counts come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum CounterSource {
    /// Host perf events on this PMU.
    HostPerf {
        /// The perf PMU (`cpu`, `cpu_core`, ...).
        pmu: String,
    },
    /// No host PMU: a TSC-based clock model that counts only core and reference cycles.
    TscClock,
}

/// Everything discovery learned about the host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostPmu {
    /// PMU architecture of the host CPU.
    pub vendor: Option<Vendor>,
    /// CPUID vendor string.
    pub vendor_string: String,
    /// CPU brand string.
    pub cpu_model: String,
    /// Why KVM is unusable, if it is.
    pub kvm_error: Option<String>,
    /// Loaded KVM modules (`kvm`, `kvm_intel`, `kvm_amd`, ...).
    pub kvm_modules: Vec<String>,
    /// The vendor KVM module (`kvm_intel`, `kvm_amd`, or another `kvm_*`), if loaded.
    pub vendor_module: Option<String>,
    /// `kvm.enable_pmu` (`None`: this kernel has no such parameter, i.e. always on).
    pub enable_pmu: Option<bool>,
    /// `<vendor module>.enable_mediated_pmu` (`None`: not supported by this kernel).
    pub enable_mediated_pmu: Option<bool>,
    /// KVM capabilities.
    pub caps: KvmPmuCaps,
    /// The PMU layout KVM can give guests (KVM_GET_SUPPORTED_CPUID + facts).
    pub layout: PmuConfig,
    /// Host IA32_PERF_CAPABILITIES (KVM feature MSR), Intel only.
    pub perf_capabilities: Option<u64>,
    /// Host perf core PMUs in sysfs.
    pub perf_pmus: Vec<PerfPmu>,
    /// The kernel log says "PMU not available" (`None`: log unreadable).
    pub kernel_says_no_pmu: Option<bool>,
    /// `caps/pmu_name` of the first host perf core PMU in sysfs (e.g. `sapphire_rapids`;
    /// Intel only).
    pub perf_pmu_name: Option<String>,
    /// `kernel.nmi_watchdog` (`None`: unreadable). On x86 the hard-lockup watchdog is a
    /// pinned perf event without exclude_guest, which keeps the mediated vPMU from starting.
    pub nmi_watchdog: Option<bool>,
    /// A hybrid CPU (perf PMUs `cpu_core`/`cpu_atom`, or CPUID.07H:EDX\[15\]): KVM forces
    /// its vPMU off (`kvm_init_pmu_capability`).
    pub hybrid: bool,
    /// The host's own perf core PMU (host CPUID, not KVM's capped view); `None` when the
    /// host CPUID is unknown or shows no PMU perf could drive.
    pub host_perf_pmu: Option<HostPerfPmu>,
}

/// `vpmu-vmm probe --json`: the host facts plus each mode's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    /// Host facts.
    pub host: HostPmu,
    /// Each mode.
    pub modes: Vec<ModeReport>,
    /// Whether the host has a hardware PMU at all.
    pub hardware_pmu: bool,
    /// Whether the host hardware can have KVM's mediated vPMU (`None`: host perf PMU
    /// unknown).
    pub mediated_hardware: Option<MediatedSupport>,
    /// What the mediated vPMU would intercept for the default layout.
    pub passthrough_intercepts: Option<InterceptPlan>,
    /// Why Linux guests cannot run natively on this KVM (`None`: they can).
    pub linux_guests_blocker: Option<String>,
}

/// Why Linux guests cannot run natively when the loaded KVM is the PVM variant
/// (`kvm_pvm`, see [`HostPmu::linux_guests_blocker`]); `None` otherwise.
pub fn linux_guests_blocker(kvm_pvm: bool) -> Option<String> {
    kvm_pvm.then(|| {
        "this host's KVM is the PVM variant (kvm_pvm): it emulates guest kernel code \
         instruction by instruction, so a Linux guest would take minutes and then stop at an \
         instruction it cannot emulate; boot Linux guests under the nested rig \
         (resources/nested/run.sh, docs/NESTED.md) instead"
            .to_string()
    })
}

/// One mode's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    /// The mode.
    pub mode: PmuMode,
    /// Available or not, and why.
    pub availability: Availability,
    /// Extra information (off: how the PMU is hidden; userspace: the counter source).
    pub note: Option<String>,
}

struct Blocker {
    reason: String,
    remedy: String,
}

fn blocker(reason: impl Into<String>, remedy: impl Into<String>) -> Option<Blocker> {
    Some(Blocker {
        reason: reason.into(),
        remedy: remedy.into(),
    })
}

impl HostPmu {
    /// Gather the facts from `src`. Never fails: what cannot be learned is recorded.
    pub fn probe(src: &dyn HostSource) -> HostPmu {
        let (entries, kvm_error) = match src.supported_cpuid() {
            Ok(e) => (e, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        let vendor = cpuid::vendor(&entries);
        let kvm_modules = src.kvm_modules();
        let vendor_module = ["kvm_intel", "kvm_amd"]
            .iter()
            .map(|m| m.to_string())
            .find(|m| kvm_modules.contains(m))
            .or_else(|| kvm_modules.iter().find(|m| m.starts_with("kvm_")).cloned());
        let enable_pmu = src
            .read_param(PARAM_ENABLE_PMU)
            .and_then(|s| parse_bool(&s));
        let enable_mediated_pmu = vendor_module
            .as_deref()
            .and_then(|m| src.read_param(&mediated_param_path(m)))
            .and_then(|s| parse_bool(&s));
        let pdcm = entries
            .iter()
            .any(|e| e.function == cpuid::LEAF_FEATURES && e.ecx & PDCM_BIT != 0);
        let perf_capabilities = if vendor == Some(Vendor::Intel) && pdcm {
            src.feature_msr(intel::IA32_PERF_CAPABILITIES)
        } else {
            None
        };
        let facts = HostFacts {
            pmu_enabled: enable_pmu != Some(false) && kvm_error.is_none(),
            perf_capabilities,
        };
        let caps = KvmPmuCaps {
            pmu_capability: src.check_extension(KVM_CAP_PMU_CAPABILITY),
            pmu_event_filter: src.check_extension(KVM_CAP_PMU_EVENT_FILTER) > 0,
            pmu_masked_events: src.check_extension(KVM_CAP_PMU_EVENT_MASKED_EVENTS) > 0,
            user_space_msr: src.check_extension(KVM_CAP_X86_USER_SPACE_MSR) > 0,
            msr_filter: src.check_extension(KVM_CAP_X86_MSR_FILTER) > 0,
        };
        let perf_pmus = src.perf_pmus();
        let perf_pmu_name = perf_pmus.first().and_then(|p| {
            src.read_param(&format!(
                "/sys/bus/event_source/devices/{}/caps/pmu_name",
                p.name
            ))
        });
        let raw_cpuid = |leaf, sub| src.host_cpuid(leaf, sub);
        let hybrid = perf_pmus
            .iter()
            .any(|p| p.name == "cpu_core" || p.name == "cpu_atom")
            || crate::mediated::hybrid_cpu(&raw_cpuid);
        HostPmu {
            vendor,
            vendor_string: cpuid::vendor_string(&entries),
            cpu_model: Some(cpuid::brand_string(&entries))
                .filter(|b| !b.is_empty())
                .or_else(|| src.cpu_model())
                .unwrap_or_default(),
            kvm_error,
            kvm_modules,
            vendor_module,
            enable_pmu,
            enable_mediated_pmu,
            caps,
            layout: cpuid::host_layout_with(&entries, &facts),
            perf_capabilities,
            perf_pmus,
            perf_pmu_name,
            kernel_says_no_pmu: src.kernel_says_no_pmu(),
            nmi_watchdog: src
                .read_param(PARAM_NMI_WATCHDOG)
                .and_then(|v| parse_bool(&v)),
            hybrid,
            host_perf_pmu: HostPerfPmu::from_cpuid(
                &raw_cpuid,
                src.host_msr(intel::IA32_PERF_CAPABILITIES),
            ),
        }
    }

    /// Probe the real host.
    pub fn probe_system() -> HostPmu {
        HostPmu::probe(&SystemHost::new())
    }

    /// Probe the real host with a KVM_GET_SUPPORTED_CPUID result the caller already has
    /// (see [`SystemHost::with_supported_cpuid`]).
    pub fn probe_system_with_cpuid(entries: Vec<kvm_cpuid_entry2>) -> HostPmu {
        HostPmu::probe(&SystemHost::with_supported_cpuid(entries))
    }

    /// Whether the host has a hardware PMU: a perf core PMU in sysfs or a layout in KVM's
    /// supported CPUID, and the kernel log does not say "PMU not available".
    pub fn hardware_pmu(&self) -> bool {
        self.kernel_says_no_pmu != Some(true)
            && (!self.perf_pmus.is_empty() || self.layout != PmuConfig::None)
    }

    fn module_name(&self) -> &str {
        self.vendor_module.as_deref().unwrap_or(match self.vendor {
            Some(Vendor::Intel) => "kvm_intel",
            _ => "kvm_amd",
        })
    }

    fn no_hw_pmu(&self) -> Option<Blocker> {
        if self.hardware_pmu() {
            return None;
        }
        let why = if self.kernel_says_no_pmu == Some(true) {
            "no hardware PMU (kernel: \"PMU not available\"; host perf has software events only)"
        } else {
            "no hardware PMU (host perf exposes no core PMU and KVM reports none)"
        };
        blocker(
            why,
            "run on bare metal or in a VM that is given a vPMU; here only --pmu userspace can give the guest a PMU",
        )
    }

    fn kvm_blockers(&self) -> Option<Blocker> {
        if let Some(e) = &self.kvm_error {
            return blocker(
                format!("KVM unusable: {e}"),
                "load kvm and kvm_intel/kvm_amd and make /dev/kvm accessible",
            );
        }
        None
    }

    fn kvm_pmu_blockers(&self) -> Option<Blocker> {
        self.kvm_blockers()
            .or_else(|| self.no_hw_pmu())
            .or_else(|| {
                // Before kvm.enable_pmu=N: on a hybrid CPU that N is KVM's doing
                // (kvm_init_pmu_capability), and reloading with enable_pmu=1 cannot help.
                self.hybrid.then(|| Blocker {
                    reason: "hybrid CPU (P-cores and E-cores, perf PMUs cpu_core/cpu_atom): \
                             KVM turns its vPMU off on hybrid hosts (kvm_init_pmu_capability \
                             forces kvm.enable_pmu=N and enable_mediated_pmu=N)"
                        .into(),
                    remedy: "no remedy on this host (no module parameter re-enables it): \
                             use --pmu userspace"
                        .into(),
                })
            })
            .or_else(|| {
                (self.enable_pmu == Some(false)).then(|| Blocker {
                    reason: "kvm.enable_pmu=N".into(),
                    remedy: "reload kvm with enable_pmu=1 (or boot with kvm.enable_pmu=1)".into(),
                })
            })
            .or_else(|| {
                (self.layout == PmuConfig::None).then(|| Blocker {
                    reason: "KVM_GET_SUPPORTED_CPUID reports no PMU".into(),
                    remedy: "use a kernel whose KVM supports this CPU's PMU, or --pmu userspace"
                        .into(),
                })
            })
    }

    /// Why passthrough is off when `<module>.enable_mediated_pmu=N`, and whether reloading
    /// the module with `=1` can help. The parameter is KVM's own verdict: with `=1` at load
    /// time KVM keeps it only if the hardware can (`kvm_init_pmu_capability`), so the host
    /// facts here are used only to tell "not asked for" from "cannot".
    ///
    /// Not checked against KVM_GET_SUPPORTED_CPUID: KVM caps the version it reports there
    /// at 2 (and fixed counters at 3) on every host, mediated or not.
    fn mediated_off_blocker(&self, module: &str) -> Option<Blocker> {
        let reason = format!("{module}.enable_mediated_pmu=N");
        let reload = format!("reload {module} with enable_mediated_pmu=1");
        match self
            .host_perf_pmu
            .as_ref()
            .map(HostPerfPmu::mediated_support)
        {
            Some(MediatedSupport::Capable) => blocker(
                reason,
                format!("{reload} (this host's PMU supports KVM's mediated vPMU)"),
            ),
            Some(MediatedSupport::NotCapable(why)) => blocker(
                format!(
                    "{reason}, and KVM keeps it N on this hardware whatever is asked \
                     (kvm_init_pmu_capability): {why}"
                ),
                "no remedy on this host: use --pmu emulated or --pmu userspace",
            ),
            Some(MediatedSupport::Unknown(why)) => blocker(
                reason,
                format!("{reload}; KVM keeps it N if the hardware cannot: {why}"),
            ),
            None => blocker(
                reason,
                format!(
                    "{reload} (KVM keeps it N unless the host PMU can: Intel needs perfmon \
                     v4+ with full-width counter writes, AMD needs PerfMonV2)"
                ),
            ),
        }
    }

    fn blocker_for(&self, mode: PmuMode) -> Option<Blocker> {
        let module = self.module_name().to_string();
        match mode {
            PmuMode::Off => None,
            PmuMode::Emulated => self.kvm_pmu_blockers().or_else(|| {
                (self.enable_mediated_pmu == Some(true)).then(|| Blocker {
                    reason: format!(
                        "{module}.enable_mediated_pmu=Y: KVM gives every VM the mediated PMU"
                    ),
                    remedy: format!(
                        "use --pmu passthrough, or reload {module} with enable_mediated_pmu=0"
                    ),
                })
            }),
            // The gate is the module parameter: KVM itself decides mediated support at
            // module load (intel_pmu_is_mediated_pmu_supported: host perf PMU v4+, host
            // FW_WRITES, VMCS load-PERF_GLOBAL_CTRL; amd_pmu_is_mediated_pmu_supported:
            // PerfMonV2) and forces the parameter to N when unsupported.
            PmuMode::Passthrough => self
                .kvm_pmu_blockers()
                .or_else(|| match self.enable_mediated_pmu {
                    None => blocker(
                        format!("{module} has no enable_mediated_pmu parameter (mediated vPMU needs Linux 7.0+ kvm_intel/kvm_amd)"),
                        "run a Linux 7.0 or newer host kernel",
                    ),
                    Some(false) => self.mediated_off_blocker(&module),
                    Some(true) => (self.nmi_watchdog == Some(true)).then(|| Blocker {
                        reason: format!(
                            "kernel.nmi_watchdog=1: the NMI watchdog's perf event counts guest \
                             mode, so the VM would fail: {MEDIATED_EBUSY_WHY}"
                        ),
                        remedy: format!(
                            "run `sysctl kernel.nmi_watchdog=0`, and {STOP_GUEST_COUNTING_PERF}"
                        ),
                    }),
                }),
            PmuMode::Userspace => self.kvm_blockers().or_else(|| {
                if !self.caps.user_space_msr {
                    blocker(
                        "KVM_CAP_X86_USER_SPACE_MSR is not supported",
                        "run a Linux 5.10 or newer host kernel",
                    )
                } else if !self.caps.msr_filter {
                    blocker(
                        "KVM_CAP_X86_MSR_FILTER is not supported",
                        "run a Linux 5.10 or newer host kernel",
                    )
                } else {
                    None
                }
            }),
        }
    }

    /// Whether `mode` can run on this host, and if not, why and what would fix it.
    pub fn availability(&self, mode: PmuMode) -> Availability {
        match self.blocker_for(mode) {
            None => Availability::Available,
            Some(b) => Availability::Unavailable {
                reason: b.reason,
                remedy: b.remedy,
            },
        }
    }

    /// Whether KVM_PMU_CAP_DISABLE exists (mode `off` can disable the in-kernel PMU).
    pub fn can_disable_pmu(&self) -> bool {
        self.caps.pmu_capability & KVM_PMU_CAP_DISABLE as i32 != 0
    }

    /// What KVM's mediated vPMU would intercept for the default guest layout (`host`, i.e.
    /// [`HostPmu::layout`], what KVM_GET_SUPPORTED_CPUID offers) under `--pmu passthrough`;
    /// `None` when the host perf PMU or the layout is unknown. See [`mediated_intercepts`].
    pub fn passthrough_intercepts(&self) -> Option<InterceptPlan> {
        let host = self.host_perf_pmu.as_ref()?;
        (self.layout != PmuConfig::None).then(|| mediated_intercepts(&self.layout, host))
    }

    /// Where userspace mode's counts come from on this host.
    pub fn userspace_counter_source(&self) -> CounterSource {
        match self.perf_pmus.first() {
            Some(p) if self.kernel_says_no_pmu != Some(true) => CounterSource::HostPerf {
                pmu: p.name.clone(),
            },
            _ => CounterSource::TscClock,
        }
    }

    /// Extra information about a mode (off: how the PMU is hidden; userspace: counter
    /// source).
    pub fn note(&self, mode: PmuMode) -> Option<String> {
        match mode {
            PmuMode::Off if self.can_disable_pmu() => Some(
                "KVM_PMU_CAP_DISABLE available: the VM's in-kernel PMU is disabled outright".into(),
            ),
            PmuMode::Off => Some(format!(
                "KVM_CAP_PMU_CAPABILITY={}: no KVM_PMU_CAP_DISABLE; the PMU is hidden in CPUID only{}",
                self.caps.pmu_capability,
                if self.enable_pmu == Some(false) {
                    " (KVM's vPMU is off anyway: kvm.enable_pmu=N)"
                } else {
                    ""
                }
            )),
            PmuMode::Userspace => Some(match self.userspace_counter_source() {
                CounterSource::HostPerf { pmu } => format!(
                    "counter source: host perf events on PMU '{pmu}', counting in guest mode on the \
                     vCPU thread (not yet verified on a PMU host: docs/STATUS.md){}",
                    if self.enable_mediated_pmu == Some(true) {
                        format!(
                            "; {}.enable_mediated_pmu=Y: while a passthrough VM exists on this \
                             host, opening these events fails with EOPNOTSUPP \
                             (mediated_pmu_account_event), and while they exist a new \
                             passthrough VM fails with EBUSY",
                            self.module_name()
                        )
                    } else {
                        String::new()
                    }
                ),
                CounterSource::TscClock => "counter source: TSC clock model (no host PMU): counts only core and reference cycles, and counts USR and OS alike (every tick inside KVM_RUN, whatever the selector's USR/OS bits)".into(),
            }),
            // Not "the exact host layout gives the fast path" (as issue 9 and older docs
            // had it): kvm_need_perf_global_ctrl_intercept / kvm_need_rdpmc_intercept
            // compare the guest with the host perf PMU (kvm_host_pmu), which can have
            // more counters than KVM offers (kvm_init_pmu_capability caps fixed at 3).
            PmuMode::Passthrough if self.availability(mode).is_available() => {
                self.passthrough_intercepts().map(|plan| {
                    let global = plan
                        .get(crate::mediated::MsrGroup::Global)
                        .filter(|g| g.intercepted)
                        .map_or(String::new(), |g| format!(" ({})", g.why));
                    format!("default layout: {}{global}", plan.summary())
                })
            }
            _ => None,
        }
    }

    /// The machine-readable probe (serialize with serde_json for `probe --json`).
    pub fn probe_report(&self) -> ProbeReport {
        ProbeReport {
            host: self.clone(),
            modes: PmuMode::ALL
                .into_iter()
                .map(|mode| ModeReport {
                    mode,
                    availability: self.availability(mode),
                    note: self.note(mode),
                })
                .collect(),
            hardware_pmu: self.hardware_pmu(),
            mediated_hardware: self
                .host_perf_pmu
                .as_ref()
                .map(HostPerfPmu::mediated_support),
            passthrough_intercepts: self.passthrough_intercepts(),
            linux_guests_blocker: self.linux_guests_blocker(),
        }
    }

    /// The human report printed by `vpmu-vmm probe`.
    /// Why a Linux guest cannot run natively on this KVM, if it cannot: the PVM variant of
    /// KVM (`kvm_pvm`) runs guest user code natively but emulates guest kernel (CPL0) code
    /// one instruction at a time and not all of it, so a Linux kernel crawls for minutes
    /// and then stops at an instruction it cannot emulate (docs/HOSTS.md).
    pub fn linux_guests_blocker(&self) -> Option<String> {
        linux_guests_blocker(self.kvm_modules.iter().any(|m| m == "kvm_pvm"))
    }

    pub fn report(&self) -> String {
        let mut s = String::new();
        let _ = self.write_report(&mut s);
        s
    }

    fn write_report(&self, s: &mut String) -> fmt::Result {
        let opt = |v: Option<bool>| v.map_or("(not supported by this kernel)", yn);
        writeln!(s, "vPMU host probe")?;
        writeln!(
            s,
            "  CPU:                    {} ({})",
            if self.cpu_model.is_empty() {
                "unknown"
            } else {
                &self.cpu_model
            },
            if self.vendor_string.is_empty() {
                "unknown vendor"
            } else {
                &self.vendor_string
            }
        )?;
        writeln!(s, "KVM")?;
        match &self.kvm_error {
            Some(e) => writeln!(s, "  /dev/kvm:               unusable: {e}")?,
            None => writeln!(s, "  /dev/kvm:               ok")?,
        }
        writeln!(
            s,
            "  modules:                {}",
            if self.kvm_modules.is_empty() {
                "none".to_string()
            } else {
                self.kvm_modules.join(", ")
            }
        )?;
        writeln!(s, "  kvm.enable_pmu:         {}", opt(self.enable_pmu))?;
        writeln!(
            s,
            "  {}.enable_mediated_pmu: {}",
            self.module_name(),
            opt(self.enable_mediated_pmu)
        )?;
        writeln!(
            s,
            "  KVM_CAP_PMU_CAPABILITY: {}{}",
            self.caps.pmu_capability,
            if self.can_disable_pmu() {
                " (KVM_PMU_CAP_DISABLE)"
            } else {
                ""
            }
        )?;
        let cap = |b: bool| if b { "yes" } else { "no" };
        writeln!(
            s,
            "  KVM_CAP_PMU_EVENT_FILTER:        {}",
            cap(self.caps.pmu_event_filter)
        )?;
        writeln!(
            s,
            "  KVM_CAP_PMU_EVENT_MASKED_EVENTS: {}",
            cap(self.caps.pmu_masked_events)
        )?;
        writeln!(
            s,
            "  KVM_CAP_X86_USER_SPACE_MSR:      {}",
            cap(self.caps.user_space_msr)
        )?;
        writeln!(
            s,
            "  KVM_CAP_X86_MSR_FILTER:          {}",
            cap(self.caps.msr_filter)
        )?;
        match self.linux_guests_blocker() {
            Some(why) => writeln!(s, "  Linux guests:           NOT natively: {why}")?,
            None if self.kvm_error.is_none() => writeln!(s, "  Linux guests:           native")?,
            None => {}
        }
        writeln!(s, "Host PMU")?;
        writeln!(
            s,
            "  hardware PMU:           {}",
            if self.hardware_pmu() { "yes" } else { "NO" }
        )?;
        writeln!(
            s,
            "  KVM layout:             {}",
            describe_layout(&self.layout)
        )?;
        if let Some(c) = self.perf_capabilities {
            writeln!(s, "  IA32_PERF_CAPABILITIES: {c:#x}")?;
        }
        let pmus = if self.perf_pmus.is_empty() {
            "none (software events only)".to_string()
        } else {
            self.perf_pmus
                .iter()
                .map(|p| format!("{} (type {})", p.name, p.pmu_type))
                .collect::<Vec<_>>()
                .join(", ")
                + &self
                    .perf_pmu_name
                    .as_ref()
                    .map_or(String::new(), |n| format!(", pmu_name {n}"))
        };
        writeln!(s, "  perf core PMU (sysfs):  {pmus}")?;
        match &self.host_perf_pmu {
            _ if self.hybrid => writeln!(
                s,
                "  host perf PMU (CPUID):  hybrid CPU: perf gives KVM no PMU (perf_get_x86_pmu_capability)"
            )?,
            Some(p) => {
                writeln!(s, "  host perf PMU (CPUID):  {}", p.describe())?;
                let support = match p.mediated_support() {
                    MediatedSupport::Capable => "capable".to_string(),
                    MediatedSupport::NotCapable(why) => format!("not capable: {why}"),
                    MediatedSupport::Unknown(why) => format!("unknown: {why}"),
                };
                writeln!(s, "  mediated vPMU hardware: {support}")?;
            }
            None => writeln!(
                s,
                "  host perf PMU (CPUID):  none (no PMU perf could drive in the host CPUID, or it is unreadable)"
            )?,
        }
        writeln!(
            s,
            "  NMI watchdog:           {}",
            match self.nmi_watchdog {
                Some(true) => "on (kernel.nmi_watchdog=1)",
                Some(false) => "off",
                None => "unknown",
            }
        )?;
        writeln!(
            s,
            "  kernel log:             {}",
            match self.kernel_says_no_pmu {
                Some(true) => "\"PMU not available\"",
                Some(false) => "no \"PMU not available\" message",
                None => "unreadable",
            }
        )?;
        if let Some(plan) = self.passthrough_intercepts() {
            writeln!(
                s,
                "Passthrough (mediated vPMU) intercepts for the default layout: {}",
                describe_layout(&self.layout)
            )?;
            for g in &plan.groups {
                writeln!(
                    s,
                    "  {:<20} {}: {}",
                    g.label,
                    if g.intercepted {
                        "intercepted"
                    } else {
                        "passed through"
                    },
                    g.why
                )?;
            }
        }
        writeln!(s, "Modes")?;
        for mode in PmuMode::ALL {
            match self.availability(mode) {
                Availability::Available => write!(s, "  {:<12} available", format!("{mode}:"))?,
                Availability::Unavailable { reason, remedy } => write!(
                    s,
                    "  {:<12} unavailable: {reason}; {remedy}",
                    format!("{mode}:")
                )?,
            }
            match self.note(mode) {
                Some(n) => writeln!(s, " [{n}]")?,
                None => writeln!(s)?,
            }
        }
        Ok(())
    }
}

/// The explanation for KVM_CREATE_VCPU failing with EBUSY, for a VMM to show instead of
/// the bare errno. Under the mediated vPMU (`--pmu passthrough`) KVM creates the vPMU at
/// the VM's first vCPU and perf refuses while host perf events that count guest mode
/// exist (`kvm_arch_vcpu_precreate` -> `perf_create_mediated_pmu`): the NMI watchdog's
/// event, a system-wide `perf record -a`, another VM's `--pmu userspace` counters.
pub fn explain_vcpu_create_ebusy(host: &HostPmu) -> String {
    let module = host.module_name();
    if host.enable_mediated_pmu != Some(true) {
        return format!(
            "KVM_CREATE_VCPU failed with EBUSY; {module}.enable_mediated_pmu is not Y on this \
             host, so this is not KVM's mediated vPMU refusing to start (that is the usual \
             cause: {MEDIATED_EBUSY_WHY})"
        );
    }
    let watchdog = match host.nmi_watchdog {
        Some(true) => {
            "The NMI watchdog is on (kernel.nmi_watchdog=1) and its perf event is one: run \
             `sysctl kernel.nmi_watchdog=0`, and "
        }
        Some(false) => "The NMI watchdog is off, so another perf user holds such an event: ",
        None => {
            "If the NMI watchdog is on (/proc/sys/kernel/nmi_watchdog), run \
             `sysctl kernel.nmi_watchdog=0`, and "
        }
    };
    format!(
        "KVM_CREATE_VCPU failed with EBUSY: {module}.enable_mediated_pmu=Y, and \
         {MEDIATED_EBUSY_WHY}. {watchdog}{STOP_GUEST_COUNTING_PERF}; then start the VM again \
         (or run it with --pmu userspace)."
    )
}

/// One-line description of a layout.
pub fn describe_layout(cfg: &PmuConfig) -> String {
    match cfg {
        PmuConfig::None => "none".into(),
        PmuConfig::Intel(p) => format!(
            "Intel arch perfmon v{}: {} GP x {} bits, {} fixed x {} bits, PERF_CAPABILITIES {}",
            p.version,
            p.num_gp,
            p.gp_width,
            p.num_fixed,
            p.fixed_width,
            p.perf_capabilities
                .map_or("absent".to_string(), |c| format!("{c:#x}"))
        ),
        PmuConfig::Amd(p) => format!(
            "AMD {} counters x {} bits{}{}",
            p.num_counters,
            p.width,
            if p.core_ext {
                ", PerfCtrExtCore"
            } else {
                ", legacy MSRs"
            },
            if p.perfmon_v2 { ", PerfMonV2" } else { "" }
        ),
    }
}
