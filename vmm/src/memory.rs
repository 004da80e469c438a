//! Guest memory registration, the same on every architecture.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::error::{Error, Result};

/// KVM_SET_USER_MEMORY_REGION for every region of `mem`, slot by slot. It can wait for an
/// SRCU grace period (milliseconds), so the x86 builder runs it on a helper thread.
///
/// The VM keeps using the mappings after this returns: both backends keep `mem` (or a
/// clone: the mappings are shared) alive until the VM fd is closed (x86: `Vm` and
/// `RunningVm` drop the VM fd before the memory; arm64: `run` joins the vCPU threads and
/// drops the VM before `mem`).
pub fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(Error::MemoryRegion)?;
        let r = kvm_userspace_memory_region {
            slot: u32::try_from(slot).unwrap_or(u32::MAX),
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mmap owned by `mem`, which (see above) outlives the
        // VM fd's use of it.
        unsafe { vm.set_user_memory_region(r) }
            .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}
