//! PMI delivery: a counter overflowed and the guest asked for an interrupt; it is raised
//! the way the guest programmed its LAPIC's LVT performance-counter entry (LVTPC):
//! masked (nothing), NMI (KVM_NMI) or a fixed vector (an MSI to the vCPU's LAPIC).

use kvm_ioctls::{VcpuFd, VmFd};

use super::{pmi_delivery, read_lapic_reg, write_lapic_reg, PmiDelivery};
use super::{APIC_LVTPC, APIC_LVT_MASKED};

/// A KVM call that failed while delivering a PMI.
#[derive(Debug)]
pub struct PmiError {
    /// The ioctl.
    pub op: &'static str,
    /// Why.
    pub source: kvm_ioctls::Error,
}

fn failed(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> PmiError {
    move |source| PmiError { op, source }
}

/// Delivers one PMI to vCPU `vcpu` (its fd `fd`) as its LVTPC says; `masks_lvtpc` is
/// [`super::VcpuPmu::masks_lvtpc_on_pmi`] (Intel: the LVTPC mask bit is set as the PMI is
/// delivered). Returns whether an interrupt was raised (false: LVTPC masked).
pub fn deliver(fd: &VcpuFd, vm: &VmFd, vcpu: u8, masks_lvtpc: bool) -> Result<bool, PmiError> {
    let mut lapic = fd.get_lapic().map_err(failed("KVM_GET_LAPIC"))?;
    let lvtpc = read_lapic_reg(&lapic, APIC_LVTPC);
    let delivery = pmi_delivery(lvtpc);
    log::trace!("vcpu{vcpu}: PMI, LVTPC {lvtpc:#x}: {delivery:?}");
    if delivery != PmiDelivery::Masked && masks_lvtpc {
        // Like Intel hardware (and KVM for Intel guests): mask LVTPC as the PMI is
        // delivered; the guest's handler unmasks it. KVM_SET_LAPIC replaces the whole
        // register page, so an interrupt injected by another thread in the window between
        // GET and SET could be lost; the window is a few microseconds per PMI.
        write_lapic_reg(&mut lapic, APIC_LVTPC, lvtpc | APIC_LVT_MASKED);
        fd.set_lapic(&lapic).map_err(failed("KVM_SET_LAPIC"))?;
    }
    match delivery {
        PmiDelivery::Masked => Ok(false),
        PmiDelivery::Nmi => {
            fd.nmi().map_err(failed("KVM_NMI"))?;
            Ok(true)
        }
        PmiDelivery::Fixed(vector) => {
            let msi = kvm_bindings::kvm_msi {
                address_lo: arch::x86_64::layout::msi_address(vcpu),
                address_hi: 0,
                data: u32::from(vector),
                ..Default::default()
            };
            vm.signal_msi(msi).map_err(failed("KVM_SIGNAL_MSI"))?;
            Ok(true)
        }
    }
}
