//! KVM's arm64 vPMU (`--pmu emulated`): the PMUv3 vCPU feature, the policy compiled to
//! KVM_ARM_VCPU_PMU_V3_FILTER, the overflow interrupt, INIT, and the exit-time audit.
//!
//! Order (Linux arch/arm64/kvm/pmu-emul.c, `kvm_arm_pmu_v3_set_attr` / `kvm_arm_pmu_v3_init`;
//! Documentation/virt/kvm/devices/vcpu.rst):
//! 1. every vCPU gets `KVM_ARM_VCPU_PMU_V3` in KVM_ARM_VCPU_INIT (`kvm_vcpu_has_pmu`, else
//!    every attribute is -ENODEV);
//! 2. the vGIC is created and initialised (`kvm_arm_pmu_v3_init`: `if
//!    (!vgic_initialized(vcpu->kvm)) return -ENODEV;`);
//! 3. on vCPU 0: SET_PMU when the host has several PMUs (it must precede the filter: "It
//!    isn't possible to set a PMU if a PMU event filter is already present"), then the
//!    FILTER ranges (VM-wide bitmap; the FIRST range's action decides the default);
//! 4. on every vCPU: IRQ = INTID 23 (PPI 7; a PPI must be the same on every vCPU,
//!    `pmu_irq_is_valid`), then INIT (after INIT every set_attr is -EBUSY, and KVM_RUN
//!    without INIT fails in `kvm_arm_pmu_v3_enable`).
//!
//! The audit is "sampled": KVM handles the guest's PMU register accesses in the kernel, so
//! the VMM sees only the state at exit, read with KVM_GET_ONE_REG (PMEVTYPER<n>_EL0 and
//! PMCCFILTR_EL0 hold what the guest wrote, even for denied events:
//! `kvm_pmu_set_counter_event_type` stores the value and `kvm_pmu_create_perf_event` then
//! creates no perf event for a denied one).

use std::io::Write as _;
use std::path::Path;

use kvm_bindings::kvm_device_attr;
use kvm_ioctls::VcpuFd;

use arch::aarch64::{fdt, regs};
use devices::host_file::{read_regular, ReadError};
use vpmu::arm64::events;
use vpmu::arm64::filter::{NR_EVENTS_PMUV3, NR_EVENTS_PMUV3P1};
use vpmu::arm64::policy::{Arm64Policy, Compiled, MAX_POLICY_BYTES};
use vpmu::discovery::{Availability, HostPmu, PmuMode};

use crate::config::PmuSettings;
use crate::error::{Error, PmuConfigError, Result};

/// `KVM_ARM_VCPU_PMU_V3_CTRL` (arm64 uapi asm/kvm.h).
const PMU_V3_CTRL: u32 = 0;
/// `KVM_ARM_VCPU_PMU_V3_IRQ`.
const PMU_V3_IRQ: u64 = 0;
/// `KVM_ARM_VCPU_PMU_V3_INIT`.
const PMU_V3_INIT: u64 = 1;
/// `KVM_ARM_VCPU_PMU_V3_FILTER`.
const PMU_V3_FILTER: u64 = 2;
/// `KVM_ARM_VCPU_PMU_V3_SET_PMU`.
const PMU_V3_SET_PMU: u64 = 3;
/// ID_AA64DFR0_EL1 (3, 0, 0, 5, 0).
const ID_AA64DFR0_EL1: u64 = regs::sys_reg(3, 0, 0, 5, 0);

/// What `--pmu emulated` will set up.
pub struct Plan {
    /// The policy, compiled for the guest's event space.
    pub compiled: Compiled,
    /// Where the policy came from.
    pub source: String,
    /// The host PMU to bind with SET_PMU (only when the host has several): name, perf
    /// type, and the CPUs it covers (the vCPU threads are pinned to them).
    pub set_pmu: Option<(String, u32, Vec<usize>)>,
}

/// The default arm64 policy: the named PMUv3 common events (`vpmu::arm64::events::EVENTS`:
/// cycles, instructions, branches, branch-misses, cache-references, cache-misses).
pub fn default_policy() -> Arm64Policy {
    let mut src = String::from("action = \"allow\"\n");
    for e in events::EVENTS {
        src.push_str(&format!("[[event]]\nname = \"{}\"\n", e.name));
    }
    Arm64Policy::from_toml(&src).unwrap_or_default()
}

/// Checks the mode against the host and reads the policy; `None` for `--pmu off`.
/// Runs before any vCPU exists, so refusals cost nothing.
pub fn prepare(settings: &PmuSettings) -> Result<Option<(Arm64Policy, String, HostPmu)>> {
    if settings.mode == PmuMode::Off {
        return Ok(None);
    }
    let host = HostPmu::probe_system();
    if let Availability::Unavailable { reason, remedy } = host.availability(settings.mode) {
        return Err(Error::PmuUnavailable {
            mode: settings.mode,
            reason: format!("{reason} ({remedy})"),
        });
    }
    let (policy, source) = match &settings.policy {
        Some(path) => {
            // A regular file of at most MAX_POLICY_BYTES, checked before reading (as on x86).
            let bytes = read_regular(path, MAX_POLICY_BYTES).map_err(|e| match e {
                ReadError::Io(source) => Error::Io {
                    op: format!("reading policy {}", path.display()),
                    source,
                },
                source => PmuConfigError::PolicyFile {
                    path: path.clone(),
                    source,
                }
                .into(),
            })?;
            let text = String::from_utf8(bytes)
                .map_err(|_| Error::PmuConfig(PmuConfigError::PolicyNotUtf8(path.clone())))?;
            let p =
                Arm64Policy::from_toml(&text).map_err(|source| PmuConfigError::Arm64Policy {
                    name: path.display().to_string(),
                    source,
                })?;
            (p, path.display().to_string())
        }
        None => (default_policy(), "built-in arm64 policy".to_string()),
    };
    Ok(Some((policy, source, host)))
}

/// KVM's filter space for this VM from the guest's PMUVer (ID_AA64DFR0_EL1[11:8]; pmu-emul.c
/// `kvm_pmu_event_mask`: `GENMASK(9, 0)` for PMUv3 8.0, `GENMASK(15, 0)` from PMUv3p1).
pub fn nr_events(vcpu0: &VcpuFd) -> u32 {
    let mut b = [0u8; 8];
    match vcpu0.get_one_reg(ID_AA64DFR0_EL1, &mut b) {
        Ok(_) if (u64::from_le_bytes(b) >> 8) & 0xf == 1 => NR_EVENTS_PMUV3,
        // Unknown: the policy's ranges are built to be valid in either space when its
        // events are (EventSet::to_ranges only spans listed events' runs).
        _ => NR_EVENTS_PMUV3P1,
    }
}

/// Compiles the policy for the guest (after vCPU init).
pub fn plan(policy: &Arm64Policy, source: String, host: &HostPmu, vcpu0: &VcpuFd) -> Result<Plan> {
    let compiled = policy
        .compile(nr_events(vcpu0))
        .map_err(|e| PmuConfigError::Arm64Policy {
            name: source.clone(),
            source: e,
        })?;
    // Several PMUs (big.LITTLE): the one covering the CPU the VMM runs on now, else the
    // first. Unverified: the rig's L1 has one PMU.
    let set_pmu = if host.perf_pmus.len() > 1 {
        // SAFETY: sched_getcpu has no preconditions.
        let here = unsafe { libc::sched_getcpu() };
        let pick = host
            .perf_pmus
            .iter()
            .find(|p| usize::try_from(here).is_ok_and(|h| p.cpus.contains(&h)))
            .or(host.perf_pmus.first());
        pick.map(|p| (p.name.clone(), p.pmu_type, p.cpus.clone()))
    } else {
        None
    };
    Ok(Plan {
        compiled,
        source,
        set_pmu,
    })
}

fn set_attr(fd: &VcpuFd, attr: u64, addr: u64, op: &'static str) -> Result<()> {
    fd.set_device_attr(&kvm_device_attr {
        flags: 0,
        group: PMU_V3_CTRL,
        attr,
        addr,
    })
    .map_err(Error::kvm(op))
}

/// Steps 3 and 4 of the module doc: call after the vGIC is initialised, before KVM_RUN.
pub fn setup(fds: &[VcpuFd], plan: &Plan) -> Result<()> {
    let Some(vcpu0) = fds.first() else {
        return Ok(());
    };
    if let Some((_, ty, _)) = &plan.set_pmu {
        let ty = *ty as i32;
        set_attr(
            vcpu0,
            PMU_V3_SET_PMU,
            &ty as *const i32 as u64,
            "KVM_ARM_VCPU_PMU_V3_SET_PMU",
        )?;
    }
    for r in &plan.compiled.ranges {
        let bytes = r.to_bytes();
        set_attr(
            vcpu0,
            PMU_V3_FILTER,
            bytes.as_ptr() as u64,
            "KVM_ARM_VCPU_PMU_V3_FILTER",
        )?;
    }
    let irq = fdt::PMU_INTID as i32;
    for fd in fds {
        set_attr(
            fd,
            PMU_V3_IRQ,
            &irq as *const i32 as u64,
            "KVM_ARM_VCPU_PMU_V3_IRQ",
        )?;
        set_attr(fd, PMU_V3_INIT, 0, "KVM_ARM_VCPU_PMU_V3_INIT")?;
    }
    Ok(())
}

impl Plan {
    /// The mode line for `--stats`.
    pub fn describe(&self) -> String {
        let pmu = self.set_pmu.as_ref().map_or(String::new(), |(n, t, c)| {
            format!(
                "; host PMU {n} (type {t}), vCPUs pinned to its {} CPUs",
                c.len()
            )
        });
        format!(
            "pmu emulated (arm64 KVM PMUv3) | policy {}: {}{pmu}",
            self.source, self.compiled
        )
    }
}

impl Plan {
    /// The CPUs the vCPU threads must run on (SET_PMU restricts the VM to its PMU's CPUs).
    pub fn pin_cpus(&self) -> Option<Vec<usize>> {
        self.set_pmu
            .as_ref()
            .map(|(_, _, c)| c.clone())
            .filter(|c| !c.is_empty())
    }
}

/// Pins the calling thread to `cpus` (those below CPU_SETSIZE).
pub fn pin_current_thread(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data, zeroed is its empty set; CPU_SET gets indices below
    // CPU_SETSIZE only; sched_setaffinity(0, ..) affects the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One programmed counter as read at exit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Programmed {
    /// Counter index (31 = the cycle counter).
    pub counter: u32,
    /// The event it counts (0x11 for the cycle counter).
    pub event: u16,
    /// The event's name.
    pub name: String,
    /// PMEVTYPER<n>_EL0 / PMCCFILTR_EL0 as stored.
    pub typer: u64,
    /// PMCNTENSET_EL0 bit.
    pub enabled: bool,
    /// The policy's verdict.
    pub allowed: bool,
    /// The counter's value at exit.
    pub value: u64,
}

/// Reads the vCPU's PMU programming at exit ("sampled": only the final state is seen).
pub fn audit(fd: &VcpuFd, plan: &Plan) -> std::result::Result<Vec<Programmed>, String> {
    let get = |id: u64, what: &str| -> std::result::Result<u64, String> {
        let mut b = [0u8; 8];
        fd.get_one_reg(id, &mut b)
            .map_err(|e| format!("KVM_GET_ONE_REG {what}: {e}"))?;
        Ok(u64::from_le_bytes(b))
    };
    let pmcr = get(regs::PMCR_EL0, "PMCR_EL0")?;
    let n = ((pmcr >> 11) & 0x1f) as u32;
    let en = get(regs::PMCNTENSET_EL0, "PMCNTENSET_EL0")?;
    let mask = (plan.compiled.set.nr_events() - 1) as u64;
    let mut v = Vec::new();
    for i in 0..n.min(31) {
        let typer = get(regs::pmevtyper(u64::from(i)), "PMEVTYPER<n>_EL0")?;
        let enabled = en & (1 << i) != 0;
        let value = get(regs::pmevcntr(u64::from(i)), "PMEVCNTR<n>_EL0")?;
        // Never touched since reset: KVM resets PMEVTYPER<n> to its "unknown" pattern
        // (sys_regs.h `reset_unknown`: 0x1de7ec7edbadc0de, as masked on write) or 0.
        let untouched = typer == 0 || typer & 0xffff == 0xc0de;
        if !enabled && value == 0 && untouched {
            continue;
        }
        let event = (typer & mask) as u16;
        v.push(Programmed {
            counter: i,
            event,
            name: events::describe(event),
            typer,
            enabled,
            allowed: plan.compiled.allows(event),
            value,
        });
    }
    let cc_en = en & (1 << regs::PMU_CYCLE_IDX) != 0;
    let ccfiltr = get(regs::PMCCFILTR_EL0, "PMCCFILTR_EL0")?;
    let ccnt = get(regs::PMCCNTR_EL0, "PMCCNTR_EL0")?;
    if cc_en || ccfiltr != 0 || ccnt != 0 {
        v.push(Programmed {
            counter: regs::PMU_CYCLE_IDX,
            event: events::CPU_CYCLES,
            name: "cycle counter (PMCCNTR_EL0, as event 0x11)".into(),
            typer: ccfiltr,
            enabled: cc_en,
            allowed: plan.compiled.allows(events::CPU_CYCLES),
            value: ccnt,
        });
    }
    Ok(v)
}

/// One vCPU's PMU programming in the run report, sampled at exit (KVM handles the PMU
/// registers in the kernel; nothing is seen as it happens).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SampledAudit {
    /// The vCPU.
    pub vcpu: usize,
    /// Always true: read at exit with KVM_GET_ONE_REG.
    pub sampled: bool,
    /// What the guest had programmed (empty when `unreadable`).
    pub programmed: Vec<Programmed>,
    /// Why the registers could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

impl SampledAudit {
    /// The report entry of vCPU `vcpu` from [`audit`]'s result.
    pub fn new(vcpu: usize, found: std::result::Result<Vec<Programmed>, String>) -> Self {
        let (programmed, unreadable) = match found {
            Ok(v) => (v, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        SampledAudit {
            vcpu,
            sampled: true,
            programmed,
            unreadable,
        }
    }
}

/// The one-line summary of a vCPU's audit.
impl std::fmt::Display for SampledAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let index = self.vcpu;
        if let Some(e) = &self.unreadable {
            return write!(
                f,
                "vcpu{index}: pmu audit (sampled at exit): unreadable: {e}"
            );
        }
        if self.programmed.is_empty() {
            return write!(
                f,
                "vcpu{index}: pmu audit (sampled at exit): no counter programmed"
            );
        }
        let parts: Vec<String> = self
            .programmed
            .iter()
            .map(|p| {
                let c = if p.counter == regs::PMU_CYCLE_IDX {
                    "ccnt".to_string()
                } else {
                    format!("c{}", p.counter)
                };
                format!(
                    "{c} {} {}{} value {}",
                    p.name,
                    if p.allowed { "allowed" } else { "DENIED" },
                    if p.enabled { "" } else { " (disabled)" },
                    p.value
                )
            })
            .collect();
        write!(
            f,
            "vcpu{index}: pmu audit (sampled at exit): {}",
            parts.join("; ")
        )
    }
}

/// Appends the audit as JSON lines (`"sampled": true`) to `path`.
pub fn write_audit(path: &Path, per_vcpu: &[(usize, Vec<Programmed>)]) -> Result<()> {
    let io = |source| Error::Io {
        op: format!("writing the PMU audit {}", path.display()),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    for (vcpu, progs) in per_vcpu {
        for p in progs {
            let line = serde_json::json!({
                "arch": "aarch64",
                "sampled": true,
                "vcpu": vcpu,
                "counter": p.counter,
                "event": p.event,
                "name": p.name,
                "typer": p.typer,
                "enabled": p.enabled,
                "verdict": if p.allowed { "allowed" } else { "denied" },
                "value": p.value,
            });
            writeln!(f, "{line}").map_err(io)?;
        }
    }
    Ok(())
}
