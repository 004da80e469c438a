//! Single host-initiated MSR accesses on a vCPU (KVM_GET_MSRS / KVM_SET_MSRS).

use kvm_ioctls::VcpuFd;

use crate::error::{Error, Result};

/// One host-initiated KVM_SET_MSRS; `false` when KVM refused the MSR.
pub(crate) fn set_msr(vcpu: &VcpuFd, index: u32, data: u64) -> Result<bool> {
    let msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }])
    .map_err(Error::MsrList)?;
    Ok(vcpu.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS"))? == 1)
}

/// One host-initiated KVM_GET_MSRS; `None` when KVM refused the MSR.
pub(crate) fn get_msr(vcpu: &VcpuFd, index: u32) -> Result<Option<u64>> {
    let mut msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
        index,
        ..Default::default()
    }])
    .map_err(Error::MsrList)?;
    let n = vcpu
        .get_msrs(&mut msrs)
        .map_err(Error::kvm("KVM_GET_MSRS"))?;
    Ok((n == 1).then(|| msrs.as_slice()[0].data))
}
