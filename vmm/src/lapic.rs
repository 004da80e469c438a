//! Local APIC setup for the boot protocol: LINT0 as ExtINT (the legacy PIC's output) and
//! LINT1 as NMI, as firmware leaves them for Linux (MP spec 1.4, "virtual wire" mode).

use kvm_ioctls::VcpuFd;

use crate::error::{Error, Result};

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

fn get_reg(regs: &[std::os::raw::c_char], off: usize) -> u32 {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = regs[off + i] as u8;
    }
    u32::from_le_bytes(b)
}

fn set_reg(regs: &mut [std::os::raw::c_char], off: usize, v: u32) {
    for (i, x) in v.to_le_bytes().iter().enumerate() {
        regs[off + i] = *x as std::os::raw::c_char;
    }
}

/// Programs LINT0 = ExtINT and LINT1 = NMI on a vCPU's in-kernel LAPIC.
pub fn set_lint(vcpu: &VcpuFd) -> Result<()> {
    let mut lapic = vcpu.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?;
    let lvt0 = get_reg(&lapic.regs, APIC_LVT0);
    set_reg(
        &mut lapic.regs,
        APIC_LVT0,
        set_delivery_mode(lvt0, APIC_MODE_EXTINT),
    );
    let lvt1 = get_reg(&lapic.regs, APIC_LVT1);
    set_reg(
        &mut lapic.regs,
        APIC_LVT1,
        set_delivery_mode(lvt1, APIC_MODE_NMI),
    );
    vcpu.set_lapic(&lapic).map_err(Error::kvm("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_mode_bits() {
        assert_eq!(
            set_delivery_mode(0x0001_0000, APIC_MODE_EXTINT),
            0x0001_0700
        );
        assert_eq!(set_delivery_mode(0x0000_0700, APIC_MODE_NMI), 0x0000_0400);
        let mut regs = [0 as std::os::raw::c_char; 1024];
        set_reg(&mut regs, APIC_LVT1, 0xdead_beef);
        assert_eq!(get_reg(&regs, APIC_LVT1), 0xdead_beef);
    }
}
