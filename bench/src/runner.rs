//! The real backend: boots the built-in `bench` guest with `vmm::run`.

use std::sync::{Arc, Mutex};

use vpmu::discovery::{Availability, HostPmu, PmuMode};

use crate::harness::{Backend, RawRun, RunError};
use crate::model::Mode;
use crate::report::HostInfo;

/// The vmm-backed [`Backend`].
pub struct VmmBackend {
    host: Result<HostPmu, String>,
}

/// The `vpmu` name of a bench mode.
pub fn pmu_mode(m: Mode) -> PmuMode {
    match m {
        Mode::Off => PmuMode::Off,
        Mode::Userspace => PmuMode::Userspace,
        Mode::Emulated | Mode::EmulatedAudit => PmuMode::Emulated,
        Mode::Passthrough | Mode::PassthroughAudit => PmuMode::Passthrough,
    }
}

impl Default for VmmBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl VmmBackend {
    /// Probes the host once (`vmm::probe_host`).
    pub fn new() -> VmmBackend {
        VmmBackend {
            host: vmm::probe_host().map_err(|e| e.to_string()),
        }
    }

    /// The guest TSC frequency KVM uses (KVM_GET_TSC_KHZ on a scratch vCPU).
    pub fn tsc_khz(&self) -> Option<u64> {
        let kvm = kvm_ioctls::Kvm::new().ok()?;
        let vm = kvm.create_vm().ok()?;
        let vcpu = vm.create_vcpu(0).ok()?;
        vcpu.get_tsc_khz().ok().map(u64::from).filter(|k| *k > 0)
    }

    /// The host description for the report.
    pub fn host_info(&self, tsc_khz: u64, tsc_khz_source: String) -> HostInfo {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let (cpu_model, kvm_modules, pmu, pmu_report, probe_error) = match &self.host {
            Ok(h) => (
                Some(h.cpu_model.clone())
                    .filter(|s| !s.is_empty())
                    .or_else(|| crate::host::cpu_model(&cpuinfo)),
                h.kvm_modules.clone(),
                serde_json::to_value(h.probe_report()).ok(),
                Some(h.report()),
                None,
            ),
            Err(e) => (
                crate::host::cpu_model(&cpuinfo),
                crate::host::kvm_modules(),
                None,
                None,
                Some(e.clone()),
            ),
        };
        HostInfo {
            cpu_model,
            cpus: std::thread::available_parallelism().ok().map(|n| n.get()),
            kernel: crate::host::kernel(),
            kvm_modules,
            tsc_khz,
            tsc_khz_source,
            pmu,
            pmu_report,
            probe_error,
            modes: Vec::new(),
            loadavg_start: None,
            loadavg_end: None,
        }
    }
}

impl Backend for VmmBackend {
    fn availability(&mut self, mode: Mode) -> Result<(), String> {
        match &self.host {
            Err(e) => Err(e.clone()),
            Ok(h) => match h.availability(pmu_mode(mode)) {
                Availability::Available => Ok(()),
                Availability::Unavailable { reason, .. } => Err(reason),
            },
        }
    }

    fn run(&mut self, mode: Mode, cmdline: &str) -> Result<RawRun, RunError> {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let mut cfg = vmm::VmConfig::new(vmm::KernelImage::Builtin {
            name: "bench".into(),
            bytes: vpmu_guests::BENCH,
        });
        cfg.cmdline = cmdline.to_string();
        cfg.cpus = 1;
        cfg.memory = crate::GUEST_MEMORY;
        let audit = mode.audits().then(|| {
            std::env::temp_dir().join(format!("vpmu-bench-audit-{}.jsonl", std::process::id()))
        });
        cfg.pmu = vmm::PmuSettings {
            mode: pmu_mode(mode),
            layout: "host".into(),
            policy: None,
            audit: audit.clone(),
            ..vmm::PmuSettings::default()
        };
        cfg.console = vmm::Console::Capture(buf.clone());
        let result = vmm::run(cfg);
        if let Some(path) = &audit {
            let _ = std::fs::remove_file(path);
        }
        let report = match result {
            Ok(r) => r,
            Err(vmm::Error::PmuUnavailable { reason, .. }) => {
                return Err(RunError::Unavailable(reason))
            }
            Err(e) => return Err(RunError::Failed(e.to_string())),
        };
        let console = match buf.lock() {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(p) => String::from_utf8_lossy(&p.into_inner()).into_owned(),
        };
        Ok(RawRun {
            console,
            vcpus: report.vcpus,
            pmu: report
                .pmu
                .iter()
                .filter_map(|p| serde_json::to_value(p).ok())
                .collect(),
            wall_ns: report.wall_ns,
            start_to_first_entry_ns: report.start_to_first_entry_ns,
            clean: matches!(report.outcome, vmm::Outcome::DebugExit { value: 0 }),
            outcome: report.outcome.to_string(),
        })
    }
}
