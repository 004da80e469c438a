//! Event-selector decoding and vetting.
//!
//! Layouts (Intel SDM vol. 3B "Architectural Performance Monitoring"; AMD APM vol. 2
//! "Performance Event-Select Registers"; Linux `arch/x86/include/asm/perf_event.h`):
//!
//! | bits  | Intel IA32_PERFEVTSELx         | AMD PERF_CTLx                      |
//! |-------|--------------------------------|------------------------------------|
//! | 7:0   | event select                   | event select bits 7:0              |
//! | 15:8  | unit mask                      | unit mask                          |
//! | 16    | USR                            | USR                                |
//! | 17    | OS                             | OS                                 |
//! | 18    | EDGE                           | EDGE                               |
//! | 19    | PC (pin control)               | reserved                           |
//! | 20    | INT (APIC interrupt on ovf)    | INT                                |
//! | 21    | AnyThread (v3+)                | reserved                           |
//! | 22    | EN                             | EN                                 |
//! | 23    | INV                            | INV                                |
//! | 31:24 | CMASK                          | CMASK                              |
//! | 35:32 | reserved (see below)           | event select bits 11:8             |
//! | 39:36 | reserved                       | reserved                           |
//! | 40    | reserved                       | Guest-Only                         |
//! | 41    | reserved                       | Host-Only                          |
//! | 63:42 | reserved                       | reserved                           |
//!
//! ## Reserved bits (what raises #GP)
//!
//! * **Intel: bits 63:32.** Later CPUs define some of them (32 IN_TX and 33 IN_TXCP on
//!   TSX parts, 34 adaptive PEBS on Ice Lake+, 36 EQ and 47:40 UMASK2 with the
//!   architectural perfmon extensions of leaf 0x23), but each only exists when the
//!   corresponding CPUID feature is advertised, and this VMM advertises none of them.
//!   That is also KVM's default (`reserved_bits = 0xffffffff00200000`). IN_TX/IN_TXCP
//!   can be opened with [`VetOptions::intel_in_tx`] for a guest that is shown TSX.
//! * **AMD: bits 63:42, 39:36, 21 and 19.** 21 and 19 are reserved on AMD (no
//!   AnyThread, no pin control); KVM's AMD mask `0xfffffff000280000` agrees.
//!   Host-Only/Guest-Only (41:40) are *not* reserved here, see below.
//!
//! ## AnyThread (Intel bit 21)
//!
//! Counting another hyper-thread's events leaks information across the SMT sibling,
//! so the bit is only honoured when the policy says `anythread = true`
//! ([`VetOptions::allow_anythread`]). When it is not, a selector with AnyThread set is
//! **not** a fault: the write succeeds and reads back as written, but the event is
//! treated as *denied* — the counter never counts ([`Vetted::hw_value`] has EN and
//! AnyThread cleared) and the attempt is audited ([`Vetted::anythread_denied`]). That is
//! how a filtered event looks to the guest under KVM's event filter, and it keeps a
//! guest that probes the bit from crashing. Note that KVM's *own* vPMU (modes
//! `emulated` and `passthrough`) treats bit 21 as reserved and injects #GP before
//! its filter is consulted, whatever this policy says; this vetting applies to the
//! `userspace` mode and to the VMM's audit in all modes.
//!
//! ## AMD Host-Only / Guest-Only (bits 41:40)
//!
//! The guest has no nested SVM, so the bits are never left to it: the value the guest
//! reads back ([`Vetted::guest_value`]) has them cleared, and the value to program into
//! hardware ([`Vetted::hw_value`]) has Guest-Only=1, Host-Only=0, exactly as KVM's
//! mediated vPMU does on AMD (`amd_pmu_set_eventsel_hw`), so the counter stops at
//! #VMEXIT and never counts host work.

use crate::config::Vendor;
use thiserror::Error;

/// Bit masks of the event-selector fields.
pub mod bits {
    /// Event select, bits 7:0.
    pub const EVENT_LO: u64 = 0xff;
    /// Unit mask, bits 15:8.
    pub const UMASK: u64 = 0xff00;
    /// Count at CPL > 0.
    pub const USR: u64 = 1 << 16;
    /// Count at CPL 0.
    pub const OS: u64 = 1 << 17;
    /// Edge detect.
    pub const EDGE: u64 = 1 << 18;
    /// Pin control (Intel).
    pub const PC: u64 = 1 << 19;
    /// APIC interrupt on overflow.
    pub const INT: u64 = 1 << 20;
    /// AnyThread (Intel, perfmon v3+).
    pub const ANY_THREAD: u64 = 1 << 21;
    /// Counter enable.
    pub const EN: u64 = 1 << 22;
    /// Invert counter mask.
    pub const INV: u64 = 1 << 23;
    /// Counter mask, bits 31:24.
    pub const CMASK: u64 = 0xff00_0000;
    /// Intel IN_TX (TSX parts).
    pub const IN_TX: u64 = 1 << 32;
    /// Intel IN_TXCP (TSX parts).
    pub const IN_TXCP: u64 = 1 << 33;
    /// AMD event select bits 11:8, at 35:32.
    pub const AMD_EVENT_HI: u64 = 0xf << 32;
    /// AMD Guest-Only.
    pub const GUEST_ONLY: u64 = 1 << 40;
    /// AMD Host-Only.
    pub const HOST_ONLY: u64 = 1 << 41;

    /// Intel reserved bits: 63:32 (see the module documentation).
    pub const INTEL_RESERVED: u64 = 0xffff_ffff_0000_0000;
    /// AMD reserved bits: 63:42, 39:36, 21, 19.
    pub const AMD_RESERVED: u64 = 0xffff_fc00_0000_0000 | (0xf << 36) | ANY_THREAD | PC;
    /// The bits KVM's event filter looks at, besides the unit mask: the event select.
    pub const fn event_mask(vendor: crate::config::Vendor) -> u64 {
        match vendor {
            crate::config::Vendor::Intel => EVENT_LO,
            crate::config::Vendor::Amd => EVENT_LO | AMD_EVENT_HI,
        }
    }
}

/// The event select of `raw` for `vendor` (Intel: bits 7:0; AMD: bits 7:0 and 35:32).
#[inline]
pub const fn event_select(vendor: Vendor, raw: u64) -> u16 {
    let lo = (raw & bits::EVENT_LO) as u16;
    match vendor {
        Vendor::Intel => lo,
        Vendor::Amd => lo | (((raw >> 32) & 0xf) as u16) << 8,
    }
}

/// The unit mask of `raw` (bits 15:8, both vendors).
#[inline]
pub const fn unit_mask(raw: u64) -> u8 {
    ((raw & bits::UMASK) >> 8) as u8
}

/// Encode an event select and unit mask into selector layout (AMD's high event bits go
/// to 35:32; for an 8-bit event this is the Intel layout too).
#[inline]
pub const fn encode(event: u16, umask: u8) -> u64 {
    ((event as u64) & 0xff) | ((umask as u64) << 8) | ((((event as u64) >> 8) & 0xf) << 32)
}

/// A decoded event selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSelector {
    /// Vendor whose layout was used.
    pub vendor: Vendor,
    /// The raw value.
    pub raw: u64,
    /// Event select (Intel 8 bits, AMD 12 bits).
    pub event: u16,
    /// Unit mask.
    pub umask: u8,
    /// Count at CPL > 0.
    pub usr: bool,
    /// Count at CPL 0.
    pub os: bool,
    /// Edge detect.
    pub edge: bool,
    /// Pin control (Intel only; always false on AMD).
    pub pc: bool,
    /// Interrupt on overflow.
    pub int: bool,
    /// AnyThread (Intel only; always false on AMD).
    pub any_thread: bool,
    /// Enable.
    pub en: bool,
    /// Invert counter mask.
    pub inv: bool,
    /// Counter mask.
    pub cmask: u8,
    /// Intel IN_TX (bit 32; always false on AMD).
    pub in_tx: bool,
    /// Intel IN_TXCP (bit 33; always false on AMD).
    pub in_txcp: bool,
    /// AMD Guest-Only (bit 40; always false on Intel).
    pub guest_only: bool,
    /// AMD Host-Only (bit 41; always false on Intel).
    pub host_only: bool,
    /// Bits set in `raw` that are reserved for this vendor (before any option).
    pub reserved: u64,
}

impl EventSelector {
    /// Decode `raw` with `vendor`'s layout. Never fails: reserved bits are reported in
    /// [`EventSelector::reserved`]; use [`vet`] to act on them.
    pub const fn decode(vendor: Vendor, raw: u64) -> Self {
        let intel = matches!(vendor, Vendor::Intel);
        let reserved_mask = match vendor {
            Vendor::Intel => bits::INTEL_RESERVED,
            Vendor::Amd => bits::AMD_RESERVED,
        };
        EventSelector {
            vendor,
            raw,
            event: event_select(vendor, raw),
            umask: unit_mask(raw),
            usr: raw & bits::USR != 0,
            os: raw & bits::OS != 0,
            edge: raw & bits::EDGE != 0,
            pc: intel && raw & bits::PC != 0,
            int: raw & bits::INT != 0,
            any_thread: intel && raw & bits::ANY_THREAD != 0,
            en: raw & bits::EN != 0,
            inv: raw & bits::INV != 0,
            cmask: ((raw & bits::CMASK) >> 24) as u8,
            in_tx: intel && raw & bits::IN_TX != 0,
            in_txcp: intel && raw & bits::IN_TXCP != 0,
            guest_only: !intel && raw & bits::GUEST_ONLY != 0,
            host_only: !intel && raw & bits::HOST_ONLY != 0,
            reserved: raw & reserved_mask,
        }
    }
}

/// Options for [`vet`], normally derived from the policy and the guest's CPUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VetOptions {
    /// Honour the Intel AnyThread bit (policy `anythread = true`).
    pub allow_anythread: bool,
    /// Accept Intel IN_TX / IN_TXCP (bits 32, 33): only for a guest shown HLE/RTM.
    pub intel_in_tx: bool,
}

impl VetOptions {
    /// The reserved-bit mask these options give `vendor`.
    #[inline]
    pub const fn reserved_mask(&self, vendor: Vendor) -> u64 {
        match vendor {
            Vendor::Intel => {
                if self.intel_in_tx {
                    bits::INTEL_RESERVED & !(bits::IN_TX | bits::IN_TXCP)
                } else {
                    bits::INTEL_RESERVED
                }
            }
            Vendor::Amd => bits::AMD_RESERVED,
        }
    }
}

/// Why a selector write must fail: the VMM injects #GP and leaves the MSR unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SelectorFault {
    /// Reserved bits are set.
    #[error("{vendor:?} event selector {raw:#x}: reserved bits {mask:#x} set (#GP)")]
    Reserved {
        /// Layout used.
        vendor: Vendor,
        /// Value the guest wrote.
        raw: u64,
        /// The offending bits.
        mask: u64,
    },
}

/// A selector that passed vetting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vetted {
    /// Decoded *guest* value.
    pub selector: EventSelector,
    /// What the guest reads back: the written value, with AMD Host-Only/Guest-Only
    /// cleared.
    pub guest_value: u64,
    /// What to program into hardware (or model) if the policy allows the event: AMD:
    /// Guest-Only=1, Host-Only=0. If AnyThread was denied: EN and AnyThread cleared.
    pub hw_value: u64,
    /// AnyThread was set but the policy does not permit it: the event is denied.
    pub anythread_denied: bool,
}

impl Vetted {
    /// Whether the selector's enable bit is set (as the guest wrote it).
    #[inline]
    pub const fn enabled(&self) -> bool {
        self.selector.en
    }
}

/// Vet an event-selector value written by the guest.
///
/// `Err` means inject #GP. `Ok` with [`Vetted::anythread_denied`] means accept the
/// write but treat the event as denied (see the module documentation).
#[inline]
pub fn vet(vendor: Vendor, raw: u64, opts: &VetOptions) -> Result<Vetted, SelectorFault> {
    let mask = raw & opts.reserved_mask(vendor);
    if mask != 0 {
        return Err(SelectorFault::Reserved { vendor, raw, mask });
    }
    let selector = EventSelector::decode(vendor, raw);
    let (guest_value, mut hw_value) = match vendor {
        Vendor::Intel => (raw, raw),
        Vendor::Amd => {
            let g = raw & !(bits::GUEST_ONLY | bits::HOST_ONLY);
            (g, g | bits::GUEST_ONLY)
        }
    };
    let anythread_denied = selector.any_thread && !opts.allow_anythread;
    if anythread_denied {
        hw_value &= !(bits::ANY_THREAD | bits::EN);
    }
    Ok(Vetted {
        selector,
        guest_value,
        hw_value,
        anythread_denied,
    })
}

/// One 4-bit field of Intel IA32_FIXED_CTR_CTRL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FixedCtrField {
    /// Bit 0: count at CPL 0.
    pub os: bool,
    /// Bit 1: count at CPL > 0.
    pub usr: bool,
    /// Bit 2: AnyThread (v3+).
    pub any_thread: bool,
    /// Bit 3: PMI on overflow.
    pub pmi: bool,
}

impl FixedCtrField {
    /// Decode the low 4 bits of `nibble`.
    #[inline]
    pub const fn from_bits(nibble: u64) -> Self {
        FixedCtrField {
            os: nibble & 1 != 0,
            usr: nibble & 2 != 0,
            any_thread: nibble & 4 != 0,
            pmi: nibble & 8 != 0,
        }
    }

    /// The counter counts at some privilege level (OS or USR set).
    #[inline]
    pub const fn enabled(&self) -> bool {
        self.os || self.usr
    }
}

/// Intel IA32_FIXED_CTR_CTRL (MSR 0x38d): 4 bits per fixed counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedCtrCtrl {
    /// Value as written by the guest (and read back by it).
    pub raw: u64,
    /// Value to program: fields whose AnyThread was denied are cleared entirely.
    pub hw_value: u64,
    /// Bit i set: counter i had AnyThread set without the policy permitting it; the
    /// counter is treated as denied (never counts) and the attempt audited.
    pub anythread_denied: u16,
}

impl FixedCtrCtrl {
    /// Field of fixed counter `idx` (as written); `idx >= 16` gives an all-clear field.
    #[inline]
    pub const fn field(&self, idx: u8) -> FixedCtrField {
        if idx >= 16 {
            return FixedCtrField::from_bits(0);
        }
        FixedCtrField::from_bits(self.raw >> (4 * idx as u32))
    }
}

/// Decode and vet a guest write to IA32_FIXED_CTR_CTRL for the layout `model` describes.
/// `Err` means inject #GP. The reserved bits are the model's
/// ([`crate::model::MsrModel::fixed_ctrl_reserved`]: the nibbles of absent counters, and
/// AnyThread before version 3), the one definition the register file uses too.
pub fn vet_fixed_ctr_ctrl(
    raw: u64,
    model: &crate::model::MsrModel,
    opts: &VetOptions,
) -> Result<FixedCtrCtrl, SelectorFault> {
    let mask = raw & model.fixed_ctrl_reserved();
    if mask != 0 {
        return Err(SelectorFault::Reserved {
            vendor: Vendor::Intel,
            raw,
            mask,
        });
    }
    let mut hw_value = raw;
    let mut anythread_denied = 0u16;
    if !opts.allow_anythread {
        for i in 0..model.num_fixed.min(16) {
            let shift = 4 * i as u32;
            if raw & (4 << shift) != 0 {
                anythread_denied |= 1 << i;
                hw_value &= !(0xf << shift);
            }
        }
    }
    Ok(FixedCtrCtrl {
        raw,
        hw_value,
        anythread_denied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amd_reserved_mask_is_63_42_39_36_21_19() {
        for bit in 0..64u32 {
            let expect =
                (42..=63).contains(&bit) || (36..=39).contains(&bit) || bit == 21 || bit == 19;
            assert_eq!(bits::AMD_RESERVED & (1 << bit) != 0, expect, "bit {bit}");
        }
    }

    #[test]
    fn encode_roundtrips_event_and_umask() {
        let raw = encode(0x1c0, 0x5a);
        assert_eq!(event_select(Vendor::Amd, raw), 0x1c0);
        assert_eq!(event_select(Vendor::Intel, raw), 0xc0);
        assert_eq!(unit_mask(raw), 0x5a);
    }
}
