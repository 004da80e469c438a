//! Initial vCPU register state (pure functions; the vmm applies them with
//! `set_sregs` / `set_regs` / `set_fpu` / `set_msrs`).
//!
//! Long mode (freestanding guests and the Linux 64-bit boot protocol):
//! - CR0 = PE | MP | ET | NE | WP | PG, CR4 = PAE | OSFXSR | OSXMMEXCPT, CR3 = PML4.
//! - EFER = LME | LMA | SCE. SCE is set so a freestanding guest can `sysretq` to CPL3
//!   without first touching EFER (Linux writes EFER itself, so it does not care). NXE is
//!   left clear (the boot page tables use no NX bits).
//! - CS = 0x08 (64-bit code), DS/ES/FS/GS/SS = 0x10, TR = 0x18 (busy TSS with RSP0 =
//!   boot stack), LDT unusable,
//!   GDTR = boot GDT, IDTR = base [`BOOT_IDT_START`] limit 0.
//! - RFLAGS = 0x2 (IF = 0).
//!
//! PVH (32-bit entry, <https://xenbits.xen.org/docs/unstable/misc/pvh.html>): CR0 = PE | ET,
//! paging off, CR4 = 0, EFER = 0, CS = 0x28 (32-bit flat code), data segments 0x10,
//! EBX = `hvm_start_info` address.
//!
//! The sregs functions modify a `kvm_sregs` obtained from `get_sregs` so that fields
//! they do not own (APIC base, interrupt bitmap) keep KVM's values: writing a zero
//! APIC base would disable the local APIC.

use kvm_bindings::{kvm_dtable, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::GuestAddress;

use crate::x86_64::gdt::{
    GdtEntry, BOOT_GDT_LIMIT, BOOT_STAR, CODE32_SELECTOR, CODE64_SELECTOR, DATA_SELECTOR,
    TSS_SELECTOR,
};
use crate::x86_64::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER};

/// CR0.PE
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0.MP
pub const X86_CR0_MP: u64 = 1 << 1;
/// CR0.ET
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR0.NE
pub const X86_CR0_NE: u64 = 1 << 5;
/// CR0.WP
pub const X86_CR0_WP: u64 = 1 << 16;
/// CR0.PG
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4.PAE
pub const X86_CR4_PAE: u64 = 1 << 5;
/// CR4.OSFXSR
pub const X86_CR4_OSFXSR: u64 = 1 << 9;
/// CR4.OSXMMEXCPT
pub const X86_CR4_OSXMMEXCPT: u64 = 1 << 10;
/// EFER.SCE
pub const EFER_SCE: u64 = 1 << 0;
/// EFER.LME
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA
pub const EFER_LMA: u64 = 1 << 10;

/// CR0 in long mode.
pub const LONG_MODE_CR0: u64 =
    X86_CR0_PE | X86_CR0_MP | X86_CR0_ET | X86_CR0_NE | X86_CR0_WP | X86_CR0_PG;
/// CR4 in long mode.
pub const LONG_MODE_CR4: u64 = X86_CR4_PAE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT;
/// EFER in long mode.
pub const LONG_MODE_EFER: u64 = EFER_LME | EFER_LMA | EFER_SCE;
/// RFLAGS at entry: reserved bit 1 only (interrupts disabled).
pub const BOOT_RFLAGS: u64 = 0x2;
/// Offset of the 64-bit entry point from the start of a bzImage's protected-mode kernel.
pub const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// MSR numbers set by [`boot_msrs`].
pub mod msr {
    /// IA32_SYSENTER_CS
    pub const SYSENTER_CS: u32 = 0x174;
    /// IA32_SYSENTER_ESP
    pub const SYSENTER_ESP: u32 = 0x175;
    /// IA32_SYSENTER_EIP
    pub const SYSENTER_EIP: u32 = 0x176;
    /// IA32_MISC_ENABLE
    pub const MISC_ENABLE: u32 = 0x1a0;
    /// IA32_MTRR_DEF_TYPE
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    /// STAR
    pub const STAR: u32 = 0xc000_0081;
    /// LSTAR
    pub const LSTAR: u32 = 0xc000_0082;
    /// CSTAR
    pub const CSTAR: u32 = 0xc000_0083;
    /// SFMASK (SYSCALL_MASK)
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    /// KERNEL_GS_BASE
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    /// MISC_ENABLE bit 0: fast string operations.
    pub const MISC_ENABLE_FAST_STRING: u64 = 1;
    /// MTRR_DEF_TYPE: MTRRs enabled (bit 11), default type write-back (6).
    pub const MTRR_DEF_TYPE_ENABLE_WB: u64 = (1 << 11) | 6;
}

fn gdt_idt(sregs: &mut kvm_sregs) {
    sregs.gdt = kvm_dtable {
        base: BOOT_GDT_START,
        limit: BOOT_GDT_LIMIT,
        ..Default::default()
    };
    sregs.idt = kvm_dtable {
        base: BOOT_IDT_START,
        limit: 0,
        ..Default::default()
    };
}

fn data_segments(sregs: &mut kvm_sregs, data: kvm_segment) {
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
}

fn unusable_ldt() -> kvm_segment {
    kvm_segment {
        type_: 2,
        unusable: 1,
        ..Default::default()
    }
}

/// Configures `sregs` for 64-bit long mode with the boot GDT and `cr3` as page-table root.
pub fn setup_long_mode_sregs(sregs: &mut kvm_sregs, cr3: u64) {
    gdt_idt(sregs);
    sregs.cs = GdtEntry::CODE64.to_kvm_segment(CODE64_SELECTOR);
    data_segments(sregs, GdtEntry::DATA.to_kvm_segment(DATA_SELECTOR));
    sregs.tr = GdtEntry::TSS.to_kvm_segment(TSS_SELECTOR);
    sregs.ldt = unusable_ldt();
    sregs.cr0 = LONG_MODE_CR0;
    sregs.cr3 = cr3;
    sregs.cr4 = LONG_MODE_CR4;
    sregs.efer = LONG_MODE_EFER;
}

/// Configures `sregs` for the PVH 32-bit entry: flat protected mode, paging off.
pub fn setup_pvh_sregs(sregs: &mut kvm_sregs) {
    gdt_idt(sregs);
    sregs.cs = GdtEntry::CODE32.to_kvm_segment(CODE32_SELECTOR);
    data_segments(sregs, GdtEntry::DATA.to_kvm_segment(DATA_SELECTOR));
    sregs.tr = GdtEntry::TSS.to_kvm_segment(TSS_SELECTOR);
    sregs.ldt = unusable_ldt();
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
}

/// General registers for a freestanding 64-bit entry: RIP = `entry`, RSP = `stack`,
/// RDI/RSI/RDX = `args` (System V argument order), RFLAGS = 0x2.
pub fn long_mode_regs(entry: u64, stack: u64, args: [u64; 3]) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: stack,
        rbp: stack,
        rdi: args[0],
        rsi: args[1],
        rdx: args[2],
        rflags: BOOT_RFLAGS,
        ..Default::default()
    }
}

/// 64-bit entry point of a bzImage loaded at `kernel_load`.
pub fn bzimage_64bit_entry(kernel_load: GuestAddress) -> u64 {
    kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET
}

/// General registers for the Linux 64-bit boot protocol: RIP = `entry` (see
/// [`bzimage_64bit_entry`]; for an ELF vmlinux the ELF entry), RSI = zero page address,
/// RSP = [`BOOT_STACK_POINTER`].
pub fn linux64_regs(entry: u64, zero_page: GuestAddress) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: zero_page.0,
        rflags: BOOT_RFLAGS,
        ..Default::default()
    }
}

/// General registers for the PVH entry: RIP = PVH entry point, RBX = `hvm_start_info`.
pub fn pvh_regs(entry: u64, start_info: GuestAddress) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rbx: start_info.0,
        rflags: BOOT_RFLAGS,
        ..Default::default()
    }
}

/// FPU state at reset: FCW 0x37f (all exceptions masked), MXCSR 0x1f80.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// MSR values at boot: SYSENTER MSRs, LSTAR, CSTAR, SYSCALL_MASK and KERNEL_GS_BASE zero;
/// STAR = [`BOOT_STAR`] (selectors of the boot GDT, so a freestanding guest can `sysretq`
/// to CPL3 after setting only LSTAR; Linux rewrites it); fast strings on; MTRRs enabled
/// with default type write-back. TSC and all PMU MSRs are left alone.
///
/// `misc_enable_at_reset` is the vCPU's IA32_MISC_ENABLE as KVM set it at vCPU reset
/// (`kvm_vcpu_reset`: BTS_UNAVAIL | PEBS_UNAVAIL): fast strings are added to it, never
/// written over it, because KVM accepts a host-initiated write as-is and a guest told BTS
/// and PEBS are available would try to use them.
pub fn boot_msrs(misc_enable_at_reset: u64) -> Vec<kvm_msr_entry> {
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        e(msr::SYSENTER_CS, 0),
        e(msr::SYSENTER_ESP, 0),
        e(msr::SYSENTER_EIP, 0),
        e(msr::STAR, BOOT_STAR),
        e(msr::LSTAR, 0),
        e(msr::CSTAR, 0),
        e(msr::SYSCALL_MASK, 0),
        e(msr::KERNEL_GS_BASE, 0),
        e(
            msr::MISC_ENABLE,
            misc_enable_at_reset | msr::MISC_ENABLE_FAST_STRING,
        ),
        e(msr::MTRR_DEF_TYPE, msr::MTRR_DEF_TYPE_ENABLE_WB),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::layout::PML4_START;

    #[test]
    fn long_mode() {
        let mut s = kvm_sregs {
            apic_base: 0xfee0_0900,
            ..Default::default()
        };
        setup_long_mode_sregs(&mut s, PML4_START);
        assert_eq!(s.apic_base, 0xfee0_0900, "APIC base preserved");
        assert_eq!(s.cr0, 0x8001_0033);
        assert_eq!(s.cr4, 0x620);
        assert_eq!(s.efer, 0x501);
        assert_eq!(s.cr3, 0x9000);
        assert_eq!((s.cs.selector, s.cs.l, s.cs.db), (8, 1, 0));
        for seg in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!((seg.selector, seg.type_, seg.present), (0x10, 3, 1));
        }
        assert_eq!((s.tr.selector, s.tr.type_), (0x18, 0xb));
        assert_eq!((s.gdt.base, s.gdt.limit), (BOOT_GDT_START, 63));
        assert_eq!((s.idt.base, s.idt.limit), (BOOT_IDT_START, 0));
    }

    #[test]
    fn pvh() {
        let mut s = kvm_sregs::default();
        setup_pvh_sregs(&mut s);
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.cr0 & X86_CR0_PE, 1);
        assert_eq!(
            (s.cs.selector, s.cs.l, s.cs.db, s.cs.limit),
            (0x28, 0, 1, 0xffff_ffff)
        );
        assert_eq!(s.efer, 0);
        let r = pvh_regs(0x100_0000, GuestAddress(0x6000));
        assert_eq!((r.rip, r.rbx, r.rflags), (0x100_0000, 0x6000, 2));
    }

    #[test]
    fn general_regs() {
        let r = linux64_regs(
            bzimage_64bit_entry(GuestAddress(0x100_0000)),
            GuestAddress(0x7000),
        );
        assert_eq!((r.rip, r.rsi, r.rflags), (0x100_0200, 0x7000, 2));
        let r = long_mode_regs(0x40_0000, 0x8ff0, [1, 2, 3]);
        assert_eq!(
            (r.rip, r.rsp, r.rdi, r.rsi, r.rdx),
            (0x40_0000, 0x8ff0, 1, 2, 3)
        );
        assert_eq!(r.rflags & 0x200, 0, "IF clear");
    }

    #[test]
    fn fpu_and_msrs() {
        let f = boot_fpu();
        assert_eq!((f.fcw, f.mxcsr), (0x37f, 0x1f80));
        let m = boot_msrs(0);
        let get = |i| m.iter().find(|e| e.index == i).map(|e| e.data);
        assert_eq!(get(msr::MISC_ENABLE), Some(1));
        // KVM's reset value (BTS_UNAVAIL | PEBS_UNAVAIL) survives.
        let kept = boot_msrs(0x1800);
        assert_eq!(
            kept.iter()
                .find(|e| e.index == msr::MISC_ENABLE)
                .map(|e| e.data),
            Some(0x1801)
        );
        assert_eq!(get(msr::MTRR_DEF_TYPE), Some(0x806));
        assert_eq!(get(msr::LSTAR), Some(0));
        assert_eq!(get(msr::STAR), Some(0x0028_0008_0000_0000));
        assert_eq!(get(0x10), None, "TSC untouched");
        // No PMU MSRs (the vpmu crate owns them).
        let pmu = |i: u32| {
            (0xc1..0xc9).contains(&i)
                || (0x186..0x18e).contains(&i)
                || (0x309..0x30c).contains(&i)
                || (0x345..0x346).contains(&i)
                || (0x38d..0x392).contains(&i)
                || (0xc000_0300..0xc000_0304).contains(&i)
                || (0xc001_0000..0xc001_0300).contains(&i)
        };
        assert!(m.iter().all(|e| !pmu(e.index)));
    }
}
