//! ACPI PM1a event and control registers (fixed hardware, ACPI 6.3 4.8.3), the minimum a
//! non-hardware-reduced FADT needs (`arch::x86_64::acpi`: PM1a_EVT_BLK = 0x600, PM1a_CNT_BLK =
//! 0x604). Registered as one device at 0x600, length 8:
//!
//! | offset | register | behaviour |
//! |---|---|---|
//! | 0-1 | PM1_STS | reads 0: no fixed event ever happens (so the SCI is never raised); writes (write-1-to-clear) ignored |
//! | 2-3 | PM1_EN | stored |
//! | 4-5 | PM1_CNT | SCI_EN (bit 0) always 1 (the system is always in ACPI mode: the FADT has no SMI_CMD); SLP_EN (bit 13) reads 0; other bits (SLP_TYP, 12:10, included) stored. Writing SLP_EN = 1 with SLP_TYP = [`SLP_TYP_S5`] powers the VM off ([`VmExit::PowerOff`]); SLP_EN with any other SLP_TYP is ignored (below) |
//! | 6-7 | - | read 0xff, writes ignored |
//!
//! Accesses of any size and offset are handled byte by byte; nothing panics. The FADT says
//! PM1_CNT_LEN = 2 and Linux (ACPICA `acpi_hw_write_pm1_control`) writes PM1a_CNT as one
//! 16-bit access, but a sleep request is decoded from the register's value after each write
//! whatever its size: SLP_TYP and SLP_EN are all in the high byte (offset 5), so byte-wise
//! writes (low, then high) and wider ones (a dword at 4, or at 2 over PM1_EN too) work the
//! same way.
//!
//! **Sleep states.** The DSDT (`arch::x86_64::acpi`) offers only `\_S5` (soft-off), with SLP_TYP
//! [`SLP_TYP_S5`]. ACPICA's `acpi_hw_legacy_sleep` first writes PM1a_CNT with the new
//! SLP_TYP and SLP_EN clear, then again with SLP_EN set: that second write ends the VM
//! with "guest powered off" (vpmu-vmm exits 0), like a KVM_SYSTEM_EVENT_SHUTDOWN. S1-S4
//! (any other SLP_TYP with SLP_EN) are not implemented and ignored: the write is stored
//! (SLP_EN reads back 0) and the guest keeps running, as if it had woken at once. A guest
//! that follows the DSDT never asks for them (no `\_S1`..`\_S4`, so Linux offers no
//! suspend: `/sys/power/state` lists no `mem`/`disk`/`standby`).

use crate::bus::{DeviceAction, PioDevice, VmExit};

/// Base port (PM1a_EVT_BLK).
pub const ACPI_PM_BASE: u16 = 0x600;
/// Ports covered.
pub const ACPI_PM_LEN: u16 = 8;
/// PM1_CNT: SCI enable.
pub const PM1_CNT_SCI_EN: u16 = 1 << 0;
/// PM1_CNT: sleep enable (write-only).
pub const PM1_CNT_SLP_EN: u16 = 1 << 13;
/// PM1_CNT: the sleep type field, bits 12:10.
pub const PM1_CNT_SLP_TYP_SHIFT: u32 = 10;
/// PM1_CNT: mask of the sleep type field.
pub const PM1_CNT_SLP_TYP_MASK: u16 = 0x7 << PM1_CNT_SLP_TYP_SHIFT;
/// SLP_TYP of S5 (soft-off): the value in the DSDT's `\_S5` package (`arch::x86_64::acpi::SLP_TYP_S5`,
/// checked equal at compile time in the vmm).
pub const SLP_TYP_S5: u8 = 5;

/// What a PM1_CNT value with SLP_EN set asks for: `Some(slp_typ)` when SLP_EN is set.
pub fn sleep_request(cnt: u16) -> Option<u8> {
    (cnt & PM1_CNT_SLP_EN != 0)
        .then_some(((cnt & PM1_CNT_SLP_TYP_MASK) >> PM1_CNT_SLP_TYP_SHIFT) as u8)
}

/// The PM1a registers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AcpiPm {
    en: u16,
    cnt: u16,
}

impl AcpiPm {
    /// Registers at reset (PM1_EN = 0, PM1_CNT = SCI_EN).
    pub fn new() -> Self {
        Self::default()
    }

    fn regs(&self) -> [u8; 6] {
        let cnt = (self.cnt | PM1_CNT_SCI_EN) & !PM1_CNT_SLP_EN;
        let [e0, e1] = self.en.to_le_bytes();
        let [c0, c1] = cnt.to_le_bytes();
        [0, 0, e0, e1, c0, c1]
    }
}

impl PioDevice for AcpiPm {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let regs = self.regs();
        for (i, b) in data.iter_mut().enumerate() {
            *b = regs.get(usize::from(offset) + i).copied().unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        for (i, &b) in data.iter().enumerate() {
            let set = |r: &mut u16, hi: bool| {
                let mut v = r.to_le_bytes();
                v[usize::from(hi)] = b;
                *r = u16::from_le_bytes(v);
            };
            match usize::from(offset) + i {
                2 => set(&mut self.en, false),
                3 => set(&mut self.en, true),
                4 => set(&mut self.cnt, false),
                5 => set(&mut self.cnt, true),
                _ => {} // PM1_STS (write-1-to-clear, nothing set) and beyond
            }
        }
        // SLP_EN is cleared after every write, so a set bit here was set by this write.
        let request = sleep_request(self.cnt);
        self.cnt &= !PM1_CNT_SLP_EN;
        match request {
            Some(SLP_TYP_S5) => DeviceAction::Exit(VmExit::PowerOff),
            // S1-S4: not implemented, ignored (module docs).
            _ => DeviceAction::None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // fixtures build bytes and small values by truncation
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rd16(d: &mut AcpiPm, off: u16) -> u16 {
        let mut b = [0u8; 2];
        d.read(off, &mut b);
        u16::from_le_bytes(b)
    }

    #[test]
    fn registers() {
        let mut d = AcpiPm::new();
        assert_eq!(rd16(&mut d, 0), 0, "PM1_STS");
        assert_eq!(rd16(&mut d, 2), 0, "PM1_EN");
        assert_eq!(rd16(&mut d, 4), PM1_CNT_SCI_EN, "always in ACPI mode");
        // ACPICA enabling the global lock and power button events.
        d.write(2, &0x0121u16.to_le_bytes());
        assert_eq!(rd16(&mut d, 2), 0x0121);
        // Status is write-1-to-clear: nothing to clear, stays 0.
        d.write(0, &[0xff, 0xff]);
        assert_eq!(rd16(&mut d, 0), 0);
        // SCI_EN cannot be cleared; SLP_EN reads 0; SLP_TYP is stored. (SLP_TYP 5 with
        // SLP_EN would power off: `power_off`.)
        assert_eq!(d.write(4, &(5u16 << 10).to_le_bytes()), DeviceAction::None);
        assert_eq!(rd16(&mut d, 4), PM1_CNT_SCI_EN | (5 << 10));
        // A 4-byte read of the event block and a byte-wise read of PM1_CNT.
        let mut w = [0u8; 4];
        d.read(0, &mut w);
        assert_eq!(w, [0, 0, 0x21, 0x01]);
        let mut b = [0u8; 1];
        d.read(5, &mut b);
        assert_eq!(b[0], 0x14);
        // Past the registers.
        let mut w = [0u8; 3];
        d.read(5, &mut w);
        assert_eq!(w, [0x14, 0xff, 0xff]);
    }

    const OFF: DeviceAction = DeviceAction::Exit(VmExit::PowerOff);

    #[test]
    fn sleep_request_decoding() {
        assert_eq!(sleep_request(0), None);
        assert_eq!(sleep_request(PM1_CNT_SCI_EN | (5 << 10)), None, "no SLP_EN");
        assert_eq!(sleep_request(0x3400), Some(5), "SLP_EN | SLP_TYP 5");
        assert_eq!(sleep_request(0x3401), Some(5), "with SCI_EN");
        assert_eq!(sleep_request(PM1_CNT_SLP_EN), Some(0));
        assert_eq!(
            sleep_request(0xffff),
            Some(7),
            "bits 15:14 and 9:0 do not matter"
        );
        for t in 0..8u16 {
            assert_eq!(sleep_request(PM1_CNT_SLP_EN | (t << 10)), Some(t as u8));
            assert_eq!(sleep_request(t << 10), None);
        }
    }

    #[test]
    fn power_off() {
        // ACPICA (acpi_hw_legacy_sleep): read PM1a_CNT, write it with SLP_TYP = 5 and
        // SLP_EN clear, then again with SLP_EN set; 16-bit accesses at PM1a_CNT_BLK.
        let mut d = AcpiPm::new();
        let cnt = rd16(&mut d, 4) & !(PM1_CNT_SLP_TYP_MASK | PM1_CNT_SLP_EN);
        let typ = cnt | (u16::from(SLP_TYP_S5) << PM1_CNT_SLP_TYP_SHIFT);
        assert_eq!(d.write(4, &typ.to_le_bytes()), DeviceAction::None);
        assert_eq!(d.write(4, &(typ | PM1_CNT_SLP_EN).to_le_bytes()), OFF);
        assert_eq!(typ | PM1_CNT_SLP_EN, 0x3401);
        // Other widths and offsets: a dword at 4, a dword at 2 (PM1_EN too), byte-wise.
        assert_eq!(AcpiPm::new().write(4, &[0x00, 0x34, 0xff, 0xff]), OFF);
        assert_eq!(AcpiPm::new().write(2, &[0x21, 0x01, 0x01, 0x34]), OFF);
        let mut d = AcpiPm::new();
        assert_eq!(d.write(4, &[0x01]), DeviceAction::None);
        assert_eq!(d.write(5, &[0x34]), OFF);
        // Bits outside SLP_TYP/SLP_EN do not matter.
        assert_eq!(
            AcpiPm::new().write(4, &0xffffu16.to_le_bytes()),
            DeviceAction::None
        );
        assert_eq!(
            AcpiPm::new().write(4, &0xf7ffu16.to_le_bytes()),
            OFF,
            "SLP_TYP 5"
        );
        assert_eq!(
            AcpiPm::new().write(4, &0xdfffu16.to_le_bytes()),
            DeviceAction::None
        );
        // The low byte alone never powers off (SLP_TYP and SLP_EN are in the high byte),
        // nor do the event registers or the bytes past PM1_CNT.
        let mut d = AcpiPm::new();
        for off in [0u16, 1, 2, 3, 4, 6, 7, 8, 0xffff] {
            assert_eq!(d.write(off, &[0x34]), DeviceAction::None, "offset {off}");
        }
    }

    #[test]
    fn other_sleep_states_are_ignored() {
        let mut d = AcpiPm::new();
        for t in (0..8u16).filter(|&t| t != u16::from(SLP_TYP_S5)) {
            let v = PM1_CNT_SLP_EN | (t << PM1_CNT_SLP_TYP_SHIFT);
            assert_eq!(d.write(4, &v.to_le_bytes()), DeviceAction::None, "S{t}");
            // Stored, SLP_EN reads 0, and the device still works.
            assert_eq!(
                rd16(&mut d, 4),
                PM1_CNT_SCI_EN | (t << PM1_CNT_SLP_TYP_SHIFT)
            );
        }
        // After ignored requests, S5 still powers off.
        assert_eq!(d.write(4, &0x3400u16.to_le_bytes()), OFF);
    }

    proptest! {
        #[test]
        fn hostile_accesses_never_panic(ops in proptest::collection::vec(
            // Offsets mostly within the registers, so that sleep requests happen.
            (any::<bool>(), prop_oneof![0u16..9, any::<u16>()],
             proptest::collection::vec(any::<u8>(), 0..9)), 0..200)) {
            let mut d = AcpiPm::new();
            for (is_write, off, mut data) in ops {
                if is_write {
                    // Model: powers off iff the write puts a byte with SLP_EN set and
                    // SLP_TYP 5 at offset 5 (PM1_CNT's high byte), whatever else it does.
                    let hi = (5usize)
                        .checked_sub(usize::from(off))
                        .and_then(|i| data.get(i).copied());
                    let want = match hi {
                        Some(b) if (b & 0x3c) == (0x20 | (SLP_TYP_S5 << 2)) => OFF,
                        _ => DeviceAction::None,
                    };
                    prop_assert_eq!(d.write(off, &data), want);
                } else {
                    d.read(off, &mut data);
                }
                prop_assert_eq!(rd16(&mut d, 0), 0);
                prop_assert_eq!(rd16(&mut d, 4) & (PM1_CNT_SCI_EN | PM1_CNT_SLP_EN), PM1_CNT_SCI_EN);
            }
        }
    }
}
