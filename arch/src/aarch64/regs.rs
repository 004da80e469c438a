//! KVM ONE_REG ids, PSTATE and vCPU feature bits for the arm64 boot protocol, and the
//! meaning of KVM's system events (PSCI). Numbers from the KVM uapi (api.rst, arm64
//! `asm/kvm.h`); defined here so that they are usable and testable on any host.

/// `KVM_REG_ARM64`.
pub const KVM_REG_ARM64: u64 = 0x6000_0000_0000_0000;
/// `KVM_REG_SIZE_U64`.
pub const KVM_REG_SIZE_U64: u64 = 0x0030_0000_0000_0000;
/// `KVM_REG_ARM_CORE` (coprocessor 0x10).
pub const KVM_REG_ARM_CORE: u64 = 0x0010 << 16;
/// `KVM_REG_ARM64_SYSREG` (coprocessor 0x13).
pub const KVM_REG_ARM64_SYSREG: u64 = 0x0013 << 16;

/// The ONE_REG id of a 64-bit core register at byte `offset` in `struct kvm_regs`.
pub const fn core_reg(offset: u64) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (offset / 4)
}

/// The ONE_REG id of system register (op0, op1, CRn, CRm, op2).
pub const fn sys_reg(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    KVM_REG_ARM64
        | KVM_REG_SIZE_U64
        | KVM_REG_ARM64_SYSREG
        | (op0 << 14)
        | (op1 << 11)
        | (crn << 7)
        | (crm << 3)
        | op2
}

/// X`n` (`struct kvm_regs` starts with `struct user_pt_regs { u64 regs[31]; u64 sp; u64 pc;
/// u64 pstate; }`).
pub const fn x(n: u64) -> u64 {
    core_reg(8 * n)
}
/// PC.
pub const PC: u64 = core_reg(8 * 32);
/// PSTATE.
pub const PSTATE: u64 = core_reg(8 * 33);
/// MPIDR_EL1 (3, 0, 0, 0, 5).
pub const MPIDR_EL1: u64 = sys_reg(3, 0, 0, 0, 5);

/// PSTATE at boot: EL1h with D, A, I and F masked (booting.rst: "All forms of interrupts
/// must be masked").
pub const PSTATE_BOOT: u64 = 0x5 | 0x40 | 0x80 | 0x100 | 0x200;

/// `KVM_ARM_VCPU_POWER_OFF`: the vCPU starts powered off (until PSCI CPU_ON).
pub const FEATURE_POWER_OFF: u32 = 0;
/// `KVM_ARM_VCPU_PSCI_0_2`: in-kernel PSCI 0.2+ emulation.
pub const FEATURE_PSCI_0_2: u32 = 2;
/// `KVM_ARM_VCPU_PMU_V3`.
pub const FEATURE_PMU_V3: u32 = 3;

/// `kvm_vcpu_init.features[0]` for vCPU `index`: PSCI 0.2 everywhere, secondaries powered
/// off until the guest starts them with PSCI CPU_ON, and `KVM_ARM_VCPU_PMU_V3` when the
/// guest gets KVM's vPMU (without it the PMU registers UNDEF in the guest: sys_regs.c
/// `pmu_visibility` hides them and the access injects an undefined exception).
pub fn vcpu_features(index: u32, preferred: u32, pmu: bool) -> u32 {
    let mut f = preferred | (1 << FEATURE_PSCI_0_2);
    if index > 0 {
        f |= 1 << FEATURE_POWER_OFF;
    }
    if pmu {
        f |= 1 << FEATURE_PMU_V3;
    }
    f
}

/// PMCR_EL0 (3, 3, 9, 12, 0).
pub const PMCR_EL0: u64 = sys_reg(3, 3, 9, 12, 0);
/// PMCNTENSET_EL0 (3, 3, 9, 12, 1).
pub const PMCNTENSET_EL0: u64 = sys_reg(3, 3, 9, 12, 1);
/// PMCCNTR_EL0 (3, 3, 9, 13, 0).
pub const PMCCNTR_EL0: u64 = sys_reg(3, 3, 9, 13, 0);
/// PMCCFILTR_EL0 (3, 3, 14, 15, 7).
pub const PMCCFILTR_EL0: u64 = sys_reg(3, 3, 14, 15, 7);
/// The cycle counter's index in PMCNTENSET and friends.
pub const PMU_CYCLE_IDX: u32 = 31;

/// `PMEVCNTR<n>_EL0` (3, 3, 14, 8 + n / 8, n % 8), n <= 30.
pub const fn pmevcntr(n: u64) -> u64 {
    sys_reg(3, 3, 14, 8 | ((n >> 3) & 3), n & 7)
}

/// `PMEVTYPER<n>_EL0` (3, 3, 14, 12 + n / 8, n % 8), n <= 30 (arch/arm64 sysreg.h
/// `SYS_PMEVTYPERn_EL0`).
pub const fn pmevtyper(n: u64) -> u64 {
    sys_reg(3, 3, 14, 12 | ((n >> 3) & 3), n & 7)
}

/// The `reg` of a `cpu@N` device-tree node: MPIDR's affinity fields (Aff2..Aff0).
pub fn mpidr_to_fdt_reg(mpidr: u64) -> u64 {
    mpidr & 0x00FF_FFFF
}

/// `KVM_SYSTEM_EVENT_SHUTDOWN`.
pub const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
/// `KVM_SYSTEM_EVENT_RESET`.
pub const SYSTEM_EVENT_RESET: u32 = 2;
/// `KVM_SYSTEM_EVENT_CRASH`.
pub const SYSTEM_EVENT_CRASH: u32 = 3;
/// `KVM_SYSTEM_EVENT_RESET_FLAG_PSCI_RESET2` in `data[0]` of a reset event.
pub const RESET_FLAG_PSCI_RESET2: u64 = 1;

/// What a `KVM_EXIT_SYSTEM_EVENT` means for the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemEvent {
    /// PSCI SYSTEM_OFF: the guest powered off (status 0).
    PowerOff,
    /// PSCI SYSTEM_RESET: the guest rebooted (status 0).
    Reset,
    /// PSCI SYSTEM_RESET2 (a warm reset; what Linux does on a panic with
    /// `reboot=panic_warm`), or a KVM crash event: the guest crashed (status 8).
    Crash,
    /// Something else (wakeup, suspend, unknown): the VMM cannot continue.
    Other(u32),
}

/// Classifies a system event of `kind` with its `data` words.
pub fn system_event(kind: u32, data: &[u64]) -> SystemEvent {
    match kind {
        SYSTEM_EVENT_SHUTDOWN => SystemEvent::PowerOff,
        SYSTEM_EVENT_RESET => {
            if data
                .first()
                .is_some_and(|f| f & RESET_FLAG_PSCI_RESET2 != 0)
            {
                SystemEvent::Crash
            } else {
                SystemEvent::Reset
            }
        }
        SYSTEM_EVENT_CRASH => SystemEvent::Crash,
        k => SystemEvent::Other(k),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reg_ids() {
        // api.rst: 0x6030 0000 0010 <index into kvm_regs as u32 words>
        assert_eq!(x(0), 0x6030_0000_0010_0000);
        assert_eq!(x(1), 0x6030_0000_0010_0002);
        assert_eq!(PC, 0x6030_0000_0010_0040);
        assert_eq!(PSTATE, 0x6030_0000_0010_0042);
        assert_eq!(MPIDR_EL1, 0x6030_0000_0013_c005);
        assert_eq!(sys_reg(3, 3, 9, 12, 0), 0x6030_0000_0013_dce0); // PMCR_EL0
        assert_eq!(PSTATE_BOOT, 0x3c5);
        // docs: the KVM ids of the PMU registers (notes: computed from the encodings).
        assert_eq!(PMCNTENSET_EL0, 0x6030_0000_0013_dce1);
        assert_eq!(PMCCNTR_EL0, 0x6030_0000_0013_dce8);
        assert_eq!(PMCCFILTR_EL0, 0x6030_0000_0013_df7f);
        assert_eq!(pmevcntr(0), 0x6030_0000_0013_df40);
        assert_eq!(pmevcntr(30), 0x6030_0000_0013_df40 + 30);
        assert_eq!(pmevtyper(0), 0x6030_0000_0013_df60);
        assert_eq!(pmevtyper(9), 0x6030_0000_0013_df60 + 9);
    }

    #[test]
    fn features() {
        assert_eq!(vcpu_features(0, 0, false), 1 << 2);
        assert_eq!(vcpu_features(1, 0, false), (1 << 2) | 1);
        assert_eq!(vcpu_features(1, 0, true), (1 << 3) | (1 << 2) | 1);
        assert_eq!(mpidr_to_fdt_reg(0x8000_0003), 3);
        assert_eq!(mpidr_to_fdt_reg(0x8001_0203), 0x01_0203);
    }

    #[test]
    fn psci_events() {
        assert_eq!(system_event(1, &[]), SystemEvent::PowerOff);
        assert_eq!(system_event(1, &[1]), SystemEvent::PowerOff);
        assert_eq!(system_event(2, &[]), SystemEvent::Reset);
        assert_eq!(system_event(2, &[0]), SystemEvent::Reset);
        assert_eq!(system_event(2, &[1]), SystemEvent::Crash);
        assert_eq!(system_event(3, &[]), SystemEvent::Crash);
        assert_eq!(system_event(4, &[]), SystemEvent::Other(4));
    }
}
