//! ACPI PM1a event and control registers (fixed hardware, ACPI 6.3 4.8.3), the minimum a
//! non-hardware-reduced FADT needs (`arch::acpi`: PM1a_EVT_BLK = 0x600, PM1a_CNT_BLK =
//! 0x604). Registered as one device at 0x600, length 8:
//!
//! | offset | register | behaviour |
//! |---|---|---|
//! | 0-1 | PM1_STS | reads 0: no fixed event ever happens (so the SCI is never raised); writes (write-1-to-clear) ignored |
//! | 2-3 | PM1_EN | stored |
//! | 4-5 | PM1_CNT | SCI_EN (bit 0) always 1 (the system is always in ACPI mode: the FADT has no SMI_CMD); SLP_EN (bit 13) reads 0; other bits stored. Sleep states are not implemented (the DSDT has no `_Sx` objects, so Linux never writes SLP_EN) |
//! | 6-7 | - | read 0xff, writes ignored |
//!
//! Accesses of any size and offset are handled byte by byte; nothing panics.

use crate::bus::{DeviceAction, PioDevice};

/// Base port (PM1a_EVT_BLK).
pub const ACPI_PM_BASE: u16 = 0x600;
/// Ports covered.
pub const ACPI_PM_LEN: u16 = 8;
/// PM1_CNT: SCI enable.
pub const PM1_CNT_SCI_EN: u16 = 1 << 0;
/// PM1_CNT: sleep enable (write-only).
pub const PM1_CNT_SLP_EN: u16 = 1 << 13;

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
        self.cnt &= !PM1_CNT_SLP_EN;
        DeviceAction::None
    }
}

#[cfg(test)]
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
        // SCI_EN cannot be cleared; SLP_EN reads 0; SLP_TYP is stored.
        d.write(4, &(PM1_CNT_SLP_EN | (5 << 10)).to_le_bytes());
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

    proptest! {
        #[test]
        fn hostile_accesses_never_panic(ops in proptest::collection::vec(
            (any::<bool>(), any::<u16>(), proptest::collection::vec(any::<u8>(), 0..9)), 0..200)) {
            let mut d = AcpiPm::new();
            for (is_write, off, mut data) in ops {
                if is_write {
                    prop_assert_eq!(d.write(off, &data), DeviceAction::None);
                } else {
                    d.read(off, &mut data);
                }
                prop_assert_eq!(rd16(&mut d, 0), 0);
                prop_assert_eq!(rd16(&mut d, 4) & (PM1_CNT_SCI_EN | PM1_CNT_SLP_EN), PM1_CNT_SCI_EN);
            }
        }
    }
}
