//! The in-kernel GICv3: KVM_CREATE_DEVICE(KVM_DEV_TYPE_ARM_VGIC_V3), distributor and
//! redistributor addresses, the number of interrupt lines, then CTRL_INIT. Must run after
//! every vCPU exists (KVM refuses new vCPUs once the vGIC is initialised).

use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
    KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL,
    KVM_DEV_ARM_VGIC_GRP_NR_IRQS, KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST,
};
use kvm_ioctls::{DeviceFd, VmFd};

use arch::aarch64::layout;

use crate::error::{Error, Result};

/// Creates and initialises the vGIC for `cpus` vCPUs. The returned fd keeps it alive.
pub fn create(vm: &VmFd, cpus: u32) -> Result<DeviceFd> {
    let mut dev = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
        fd: 0,
        flags: 0,
    };
    let gic = vm.create_device(&mut dev).map_err(Error::Gic)?;
    let dist: u64 = layout::GIC_DIST_BASE;
    let redist: u64 = layout::gic_redist_base(cpus);
    let set = |group: u32, attr: u64, addr: u64, op: &'static str| {
        gic.set_device_attr(&kvm_device_attr {
            flags: 0,
            group,
            attr,
            addr,
        })
        .map_err(Error::kvm(op))
    };
    set(
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        u64::from(KVM_VGIC_V3_ADDR_TYPE_DIST),
        &dist as *const u64 as u64,
        "vGIC distributor address",
    )?;
    set(
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        u64::from(KVM_VGIC_V3_ADDR_TYPE_REDIST),
        &redist as *const u64 as u64,
        "vGIC redistributor address",
    )?;
    let nr_irqs: u32 = layout::GIC_NR_IRQS;
    set(
        KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
        0,
        &nr_irqs as *const u32 as u64,
        "vGIC number of interrupts",
    )?;
    set(
        KVM_DEV_ARM_VGIC_GRP_CTRL,
        u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
        0,
        "vGIC init",
    )?;
    Ok(gic)
}
