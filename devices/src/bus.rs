//! Port-I/O bus: maps port ranges to devices and dispatches guest `in`/`out`.

use std::sync::{Arc, Mutex};

use crate::range_map::{lock, RangeError, RangeMap};

/// Why a VM should stop, as requested by a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// The guest asked for a reset (i8042 command 0xfe). Process status 0.
    Reset,
    /// The guest entered ACPI S5, soft-off (PM1a_CNT: SLP_EN with the `\_S5` SLP_TYP;
    /// `poweroff` in Linux). Process status 0.
    PowerOff,
    /// The guest wrote `V` to the debug-exit port (QEMU `isa-debug-exit` semantics).
    DebugExit(u32),
}

impl VmExit {
    /// Process exit status for this exit.
    ///
    /// `Reset` and `PowerOff` are 0. `DebugExit(V)` is `((V << 1) | 1) & 0xff`, what QEMU's
    /// `isa-debug-exit` produces: QEMU calls `exit((V << 1) | 1)` and the kernel keeps
    /// only the low 8 bits of an exit status. So only V's low 7 bits matter:
    /// V=0 -> 1, V=1 -> 3, V=0x7f -> 0xff, V=0x80 -> 1, V=0xffff_ffff -> 0xff.
    /// The result is always odd, so it never collides with `Reset`'s 0.
    pub fn exit_status(&self) -> u8 {
        match *self {
            VmExit::Reset | VmExit::PowerOff => 0,
            VmExit::DebugExit(v) => (((v << 1) | 1) & 0xff) as u8,
        }
    }
}

/// What the vmm should do after a device access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceAction {
    /// Keep running.
    #[default]
    None,
    /// Stop the VM.
    Exit(VmExit),
}

/// A device on the port-I/O bus.
///
/// `offset` is relative to the base the device was inserted at. `data.len()` is the
/// access size; implementations must accept any offset and any length (including 0,
/// odd sizes and accesses running past the device's range) without panicking.
pub trait PioDevice: Send {
    /// Guest `in`: fill `data`.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// Guest `out` of `data`.
    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction;
}

/// Errors of bus registration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// Zero-length range.
    #[error("port range at {base:#x} has zero length")]
    EmptyRange {
        /// Base port.
        base: u16,
    },
    /// Range runs past port 0xffff.
    #[error("port range {base:#x}+{len:#x} runs past port 0xffff")]
    RangeOverflow {
        /// Base port.
        base: u16,
        /// Length.
        len: u16,
    },
    /// Range overlaps an existing device.
    #[error(
        "port range {base:#x}+{len:#x} overlaps existing range {other_base:#x}+{other_len:#x}"
    )]
    Overlap {
        /// Base port.
        base: u16,
        /// Length.
        len: u16,
        /// Base of the existing range.
        other_base: u16,
        /// Length of the existing range.
        other_len: u16,
    },
}

/// Counters of accesses that hit no device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Reads from unmapped ports.
    pub unknown_reads: u64,
    /// Writes to unmapped ports.
    pub unknown_writes: u64,
}

/// Port-I/O bus. Shared by vCPU threads (`&self` dispatch; each device has its own lock).
pub struct PioBus {
    map: RangeMap<Arc<Mutex<dyn PioDevice>>>,
}

impl Default for PioBus {
    fn default() -> Self {
        PioBus {
            map: RangeMap::new(0xffff),
        }
    }
}

impl PioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps ports `base..base + len` to `dev`.
    pub fn insert(
        &mut self,
        base: u16,
        len: u16,
        dev: Arc<Mutex<dyn PioDevice>>,
    ) -> Result<(), BusError> {
        self.map
            .insert(u64::from(base), u64::from(len), dev)
            .map_err(|e| match e {
                RangeError::Empty => BusError::EmptyRange { base },
                RangeError::Overflow => BusError::RangeOverflow { base, len },
                // Both fit in u16: they were inserted as ports.
                RangeError::Overlap {
                    other_base,
                    other_len,
                } => BusError::Overlap {
                    base,
                    len,
                    other_base: port16(other_base),
                    other_len: port16(other_len),
                },
            })
    }

    /// Guest `in` from `port`: unmapped ports read as all ones.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match self.map.find(u64::from(port)) {
            Some((off, dev)) => lock(dev).read(port16(off), data),
            None => {
                self.map.stray(false);
                data.fill(0xff);
            }
        }
    }

    /// Guest `out` to `port`: unmapped ports ignore the write.
    pub fn write(&self, port: u16, data: &[u8]) -> DeviceAction {
        match self.map.find(u64::from(port)) {
            Some((off, dev)) => lock(dev).write(port16(off), data),
            None => {
                self.map.stray(true);
                DeviceAction::None
            }
        }
    }

    /// Unmapped-access counters.
    pub fn stats(&self) -> BusStats {
        let (unknown_reads, unknown_writes) = self.map.strays();
        BusStats {
            unknown_reads,
            unknown_writes,
        }
    }
}

/// A port, port offset or port range length the map holds: everything on the port bus
/// was inserted from `u16` values, so it fits.
#[allow(clippy::cast_possible_truncation)] // < 2^16 (see above)
fn port16(v: u64) -> u16 {
    debug_assert!(v <= u64::from(u16::MAX));
    v as u16
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // fixtures build bytes and small values by truncation
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Default)]
    struct Echo {
        last: Vec<(u16, Vec<u8>)>,
    }
    impl PioDevice for Echo {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
            self.last.push((offset, data.to_vec()));
            DeviceAction::None
        }
    }

    fn echo() -> Arc<Mutex<Echo>> {
        Arc::new(Mutex::new(Echo::default()))
    }

    #[test]
    fn insert_overlap_rules() {
        let mut bus = PioBus::new();
        bus.insert(0x100, 8, echo()).unwrap();
        assert!(matches!(
            bus.insert(0x100, 1, echo()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0x107, 4, echo()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0xf0, 0x11, echo()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0xf0, 0x100, echo()),
            Err(BusError::Overlap { .. })
        ));
        bus.insert(0xf8, 8, echo()).unwrap();
        bus.insert(0x108, 1, echo()).unwrap();
        assert_eq!(
            bus.insert(0x10, 0, echo()),
            Err(BusError::EmptyRange { base: 0x10 })
        );
        assert!(matches!(
            bus.insert(0xfff0, 0x11, echo()),
            Err(BusError::RangeOverflow { .. })
        ));
        bus.insert(0xfff0, 0x10, echo()).unwrap();
    }

    #[test]
    fn dispatch_and_unknown() {
        let mut bus = PioBus::new();
        let d = echo();
        bus.insert(0x3f8, 8, d.clone()).unwrap();
        let mut b = [0u8; 2];
        bus.read(0x3fb, &mut b);
        assert_eq!(b, [3, 3]);
        assert_eq!(bus.write(0x3ff, &[9]), DeviceAction::None);
        assert_eq!(d.lock().unwrap().last, vec![(7, vec![9])]);
        bus.read(0x400, &mut b);
        assert_eq!(b, [0xff, 0xff]);
        bus.read(0x3f7, &mut b);
        assert_eq!(bus.write(0x3f7, &[1]), DeviceAction::None);
        assert_eq!(
            bus.stats(),
            BusStats {
                unknown_reads: 2,
                unknown_writes: 1
            }
        );
    }

    #[test]
    fn exit_status_mapping() {
        assert_eq!(VmExit::Reset.exit_status(), 0);
        assert_eq!(VmExit::PowerOff.exit_status(), 0);
        assert_eq!(VmExit::DebugExit(0).exit_status(), 1);
        assert_eq!(VmExit::DebugExit(1).exit_status(), 3);
        assert_eq!(VmExit::DebugExit(0x7f).exit_status(), 0xff);
        assert_eq!(VmExit::DebugExit(0x80).exit_status(), 1);
        assert_eq!(VmExit::DebugExit(0x81).exit_status(), 3);
        assert_eq!(VmExit::DebugExit(u32::MAX).exit_status(), 0xff);
    }

    proptest! {
        #[test]
        fn exit_status_is_low_byte_of_qemu_formula(v in any::<u32>()) {
            let full = (u64::from(v) << 1) | 1;
            prop_assert_eq!(u64::from(VmExit::DebugExit(v).exit_status()), full & 0xff);
        }

        #[test]
        fn random_ranges_never_overlap(ranges in proptest::collection::vec((any::<u16>(), 1u16..64), 0..40)) {
            let mut bus = PioBus::new();
            let mut ok: Vec<(u32, u32)> = Vec::new();
            for (b, l) in ranges {
                let (s, e) = (u32::from(b), u32::from(b) + u32::from(l));
                let expect_ok = e <= 0x1_0000 && ok.iter().all(|&(os, oe)| e <= os || s >= oe);
                prop_assert_eq!(bus.insert(b, l, echo()).is_ok(), expect_ok);
                if expect_ok { ok.push((s, e)); }
            }
        }
    }
}
