//! vPMU wiring in the VMM: mode setup (off, emulated, passthrough, userspace), the
//! per-vCPU userspace vPMU, PMI delivery through the guest's LAPIC, and the audit log.
//!
//! The PMU *knowledge* (MSR model, register file, CPUID, allowlist) lives in the `vpmu`
//! crate; this module only connects it to KVM and to the vCPU run loop.

pub mod audit;
/// The clock model's decisions live in vpmu (every per-counter decision does).
pub use vpmu::clock;
pub mod inkernel_audit;
pub mod perf;
pub mod pmi;
pub mod setup;
pub mod userspace;

use kvm_bindings::kvm_lapic_state;

/// LAPIC LVT performance-counter register offset.
pub const APIC_LVTPC: usize = 0x340;

/// Writes a 32-bit LAPIC register into a KVM_GET_LAPIC snapshot (out of range: ignored).
pub fn write_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        if let Some(r) = lapic.regs.get_mut(offset + i) {
            *r = *b as std::os::raw::c_char;
        }
    }
}

/// LVT mask bit.
pub const APIC_LVT_MASKED: u32 = 1 << 16;

/// Reads a 32-bit LAPIC register from a KVM_GET_LAPIC snapshot.
pub fn read_lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let mut b = [0u8; 4];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = lapic.regs.get(offset + i).copied().unwrap_or(0) as u8;
    }
    u32::from_le_bytes(b)
}

/// How a PMI must be delivered, from the LVTPC value (SDM vol. 3A 11.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmiDelivery {
    /// LVTPC masked (bit 16): no interrupt.
    Masked,
    /// Delivery mode NMI (100b), as Linux programs it.
    Nmi,
    /// Fixed delivery with this vector.
    Fixed(u8),
}

/// Decodes LVTPC into a delivery decision. Modes other than fixed and NMI (SMI, INIT,
/// ExtINT, reserved) are not delivered.
pub fn pmi_delivery(lvtpc: u32) -> PmiDelivery {
    if lvtpc & (1 << 16) != 0 {
        return PmiDelivery::Masked;
    }
    match (lvtpc >> 8) & 0x7 {
        0b000 => {
            let v = (lvtpc & 0xff) as u8;
            if v < 16 {
                PmiDelivery::Masked // illegal vector: the LAPIC would flag an error
            } else {
                PmiDelivery::Fixed(v)
            }
        }
        0b100 => PmiDelivery::Nmi,
        _ => PmiDelivery::Masked,
    }
}

/// The per-vCPU side of a vPMU implemented in the VMM (the `userspace` mode).
///
/// The run loop calls `before_run` / `after_run` around every KVM_RUN (the PMU context
/// switch), and `rdmsr` / `wrmsr` for every trapped PMU MSR access.
pub trait VcpuPmu: Send {
    /// Called on the vCPU thread before the first KVM_RUN (timers target this thread).
    fn attach_thread(&mut self, tid: libc::pid_t) -> std::io::Result<()>;
    /// Called on the vCPU thread after the last KVM_RUN.
    fn detach_thread(&mut self);
    /// Switch the guest PMU context in (arm the overflow timer, resume counting).
    fn before_run(&mut self);
    /// Switch it out after KVM_RUN returned; `ran_tsc` TSC ticks were spent inside;
    /// `kicked` = KVM_RUN was interrupted by a signal (the overflow timer, or a stop).
    /// Returns whether a PMI must be delivered now.
    fn after_run(&mut self, ran_tsc: u64, kicked: bool) -> bool;
    /// A guest RDMSR; `None` injects #GP.
    fn rdmsr(&mut self, msr: u32) -> Option<u64>;
    /// A guest WRMSR; `false` injects #GP.
    fn wrmsr(&mut self, msr: u32, value: u64) -> bool;
    /// Whether delivering a PMI sets the LVTPC mask bit (Intel: yes, SDM vol. 3B 20.6.3.5.8
    /// "the LVT performance counter register's mask bit is set"; AMD: no).
    fn masks_lvtpc_on_pmi(&self) -> bool;
    /// What this vCPU's vPMU did, for the run report.
    fn summary(&self) -> PmuSummary;
}

/// What a vCPU's vPMU in the VMM did during the run (`RunReport::pmu`). Serialized
/// without a tag: the variants have different field names.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum PmuSummary {
    /// The userspace vPMU.
    Userspace {
        /// The vCPU.
        vcpu: u8,
        /// Its counters.
        stats: userspace::Stats,
        /// What the guest programmed, with verdicts.
        programmed: Vec<audit::Programmed>,
        /// The guest's PMU registers when the run ended (`vpmu::state::PmuState::save`):
        /// counters, event selectors, FIXED_CTR_CTRL, GLOBAL_CTRL and GLOBAL_STATUS as
        /// the guest would read them.
        context: Box<vpmu::state::PmuContext>,
    },
    /// The audit of KVM's in-kernel vPMU (`--pmu-audit` under emulated/passthrough).
    Audit {
        /// The vCPU.
        vcpu: u8,
        /// Its counters.
        audit: inkernel_audit::Stats,
        /// What the guest programmed, with verdicts.
        programmed: Vec<audit::Programmed>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvtpc_decoding() {
        assert_eq!(pmi_delivery(0x400), PmiDelivery::Nmi);
        assert_eq!(pmi_delivery(0x10400), PmiDelivery::Masked);
        assert_eq!(pmi_delivery(0x00fe), PmiDelivery::Fixed(0xfe));
        assert_eq!(pmi_delivery(0x0005), PmiDelivery::Masked);
        assert_eq!(pmi_delivery(0x0200), PmiDelivery::Masked); // SMI
        assert_eq!(pmi_delivery(0x0700), PmiDelivery::Masked); // ExtINT
        let mut l = kvm_lapic_state::default();
        l.regs[APIC_LVTPC] = 0x00;
        l.regs[APIC_LVTPC + 1] = 0x04;
        assert_eq!(read_lapic_reg(&l, APIC_LVTPC), 0x400);
        assert_eq!(read_lapic_reg(&l, 1022), 0); // partly out of range reads as zero
    }
}
