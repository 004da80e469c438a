//! MMIO bus: maps guest-physical address ranges to devices and dispatches the
//! `KVM_EXIT_MMIO` accesses KVM hands to userspace (everything outside guest RAM and the
//! in-kernel IOAPIC/LAPIC).

use std::sync::{Arc, Mutex};

use crate::bus::BusStats;
use crate::range_map::{lock, RangeError, RangeMap};

/// A device on the MMIO bus.
///
/// `offset` is relative to the base the device was inserted at. `data.len()` is the
/// access size; implementations must accept any offset and any length (including 0, odd
/// sizes and accesses running past the device's range) without panicking.
pub trait MmioDevice: Send {
    /// Guest load: fill `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest store of `data`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors of MMIO bus registration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MmioBusError {
    /// Zero-length range.
    #[error("MMIO range at {base:#x} has zero length")]
    EmptyRange {
        /// Base address.
        base: u64,
    },
    /// Range runs past the end of the 64-bit address space.
    #[error("MMIO range {base:#x}+{len:#x} runs past the end of the address space")]
    RangeOverflow {
        /// Base address.
        base: u64,
        /// Length.
        len: u64,
    },
    /// Range overlaps an existing device.
    #[error(
        "MMIO range {base:#x}+{len:#x} overlaps existing range {other_base:#x}+{other_len:#x}"
    )]
    Overlap {
        /// Base address.
        base: u64,
        /// Length.
        len: u64,
        /// Base of the existing range.
        other_base: u64,
        /// Length of the existing range.
        other_len: u64,
    },
}

/// MMIO bus. Shared by vCPU threads (`&self` dispatch; each device has its own lock).
#[derive(Default)]
pub struct MmioBus {
    map: RangeMap<Arc<Mutex<dyn MmioDevice>>>,
}

impl MmioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps addresses `base..base + len` to `dev`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        dev: Arc<Mutex<dyn MmioDevice>>,
    ) -> Result<(), MmioBusError> {
        self.map.insert(base, len, dev).map_err(|e| match e {
            RangeError::Empty => MmioBusError::EmptyRange { base },
            RangeError::Overflow => MmioBusError::RangeOverflow { base, len },
            RangeError::Overlap {
                other_base,
                other_len,
            } => MmioBusError::Overlap {
                base,
                len,
                other_base,
                other_len,
            },
        })
    }

    /// Whether `addr` belongs to a device.
    pub fn contains(&self, addr: u64) -> bool {
        self.map.find(addr).is_some()
    }

    /// Guest read at `addr`: unmapped addresses read as all ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.map.find(addr) {
            Some((off, dev)) => lock(dev).read(off, data),
            None => {
                self.map.stray(false);
                data.fill(0xff);
            }
        }
    }

    /// Guest write at `addr`: unmapped addresses ignore the write.
    pub fn write(&self, addr: u64, data: &[u8]) {
        match self.map.find(addr) {
            Some((off, dev)) => lock(dev).write(off, data),
            None => self.map.stray(true),
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

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // fixtures build bytes and small values by truncation
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Default)]
    struct Echo {
        last: Vec<(u64, Vec<u8>)>,
    }
    impl MmioDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last.push((offset, data.to_vec()));
        }
    }

    fn echo() -> Arc<Mutex<Echo>> {
        Arc::new(Mutex::new(Echo::default()))
    }

    #[test]
    fn insert_overlap_rules() {
        let mut bus = MmioBus::new();
        bus.insert(0xd000_0000, 0x1000, echo()).unwrap();
        for (b, l) in [
            (0xd000_0000, 1),
            (0xd000_0fff, 4),
            (0xcfff_f000, 0x1001),
            (0xc000_0000, 0x1000_0001),
        ] {
            assert!(
                matches!(bus.insert(b, l, echo()), Err(MmioBusError::Overlap { .. })),
                "{b:#x}+{l:#x}"
            );
        }
        bus.insert(0xcfff_f000, 0x1000, echo()).unwrap();
        bus.insert(0xd000_1000, 0x1000, echo()).unwrap();
        assert_eq!(
            bus.insert(0x10, 0, echo()),
            Err(MmioBusError::EmptyRange { base: 0x10 })
        );
        assert!(matches!(
            bus.insert(u64::MAX - 0xf, 0x11, echo()),
            Err(MmioBusError::RangeOverflow { .. })
        ));
        // The very last byte of the address space is usable.
        bus.insert(u64::MAX - 0xf, 0x10, echo()).unwrap();
        let mut b = [0u8; 1];
        bus.read(u64::MAX, &mut b);
        assert_eq!(b, [0xf]);
    }

    #[test]
    fn dispatch_and_unknown() {
        let mut bus = MmioBus::new();
        let d = echo();
        bus.insert(0xd000_0000, 0x1000, d.clone()).unwrap();
        let mut b = [0u8; 4];
        bus.read(0xd000_0070, &mut b);
        assert_eq!(b, [0x70; 4]);
        bus.write(0xd000_0fff, &[9]);
        assert_eq!(d.lock().unwrap().last, vec![(0xfff, vec![9])]);
        assert!(bus.contains(0xd000_0000) && !bus.contains(0xd000_1000));
        bus.read(0xd000_1000, &mut b);
        assert_eq!(b, [0xff; 4]);
        bus.read(0xcfff_ffff, &mut b);
        bus.write(0, &[1, 2]);
        let mut empty: [u8; 0] = [];
        bus.read(0xd000_0000, &mut empty);
        assert_eq!(
            bus.stats(),
            BusStats {
                unknown_reads: 2,
                unknown_writes: 1
            }
        );
    }

    proptest! {
        #[test]
        fn random_ranges_never_overlap(ranges in proptest::collection::vec((any::<u64>(), 1u64..0x10000), 0..40)) {
            let mut bus = MmioBus::new();
            let mut ok: Vec<(u128, u128)> = Vec::new();
            for (b, l) in ranges {
                let (s, e) = (u128::from(b), u128::from(b) + u128::from(l));
                let expect_ok = e <= 1u128 << 64 && ok.iter().all(|&(os, oe)| e <= os || s >= oe);
                prop_assert_eq!(bus.insert(b, l, echo()).is_ok(), expect_ok);
                if expect_ok { ok.push((s, e)); }
            }
        }
    }
}
