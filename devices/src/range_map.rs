//! The address-range map behind both buses ([`crate::PioBus`], [`crate::MmioBus`]):
//! non-overlapping `[base, base + len)` ranges over `u64` addresses, each owning a device,
//! plus the locking and stray-access counting the buses share.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Why a range cannot be inserted (each bus maps this to its own error type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeError {
    /// `len == 0`.
    Empty,
    /// `base + len` does not fit the address space.
    Overflow,
    /// The range overlaps `[other_base, other_base + other_len)`.
    Overlap { other_base: u64, other_len: u64 },
}

/// Non-overlapping ranges with O(log n) lookup.
pub(crate) struct RangeMap<T> {
    ranges: BTreeMap<u64, (u64, T)>,
    /// Highest valid address (0xffff for ports, u64::MAX for MMIO).
    max_addr: u64,
    unknown_reads: AtomicU64,
    unknown_writes: AtomicU64,
}

impl<T> RangeMap<T> {
    /// An empty map over addresses `0..=max_addr`.
    pub(crate) fn new(max_addr: u64) -> Self {
        RangeMap {
            ranges: BTreeMap::new(),
            max_addr,
            unknown_reads: AtomicU64::new(0),
            unknown_writes: AtomicU64::new(0),
        }
    }

    /// Maps `[base, base + len)` to `value`.
    pub(crate) fn insert(&mut self, base: u64, len: u64, value: T) -> Result<(), RangeError> {
        if len == 0 {
            return Err(RangeError::Empty);
        }
        let last = base
            .checked_add(len - 1)
            .filter(|l| *l <= self.max_addr)
            .ok_or(RangeError::Overflow)?;
        // Only the closest range starting at or below `last` can overlap: ranges never
        // overlap each other. `ob + ol - 1` cannot overflow: checked at its insertion.
        if let Some((&ob, &(ol, _))) = self.ranges.range(..=last).next_back() {
            if ob + (ol - 1) >= base {
                return Err(RangeError::Overlap {
                    other_base: ob,
                    other_len: ol,
                });
            }
        }
        self.ranges.insert(base, (len, value));
        Ok(())
    }

    /// The entry containing `addr`, with `addr`'s offset into it.
    pub(crate) fn find(&self, addr: u64) -> Option<(u64, &T)> {
        let (&b, (len, v)) = self.ranges.range(..=addr).next_back()?;
        let off = addr - b;
        (off < *len).then_some((off, v))
    }

    /// Counts an access that hit no range.
    pub(crate) fn stray(&self, write: bool) {
        let c = if write {
            &self.unknown_writes
        } else {
            &self.unknown_reads
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// (stray reads, stray writes).
    pub(crate) fn strays(&self) -> (u64, u64) {
        (
            self.unknown_reads.load(Ordering::Relaxed),
            self.unknown_writes.load(Ordering::Relaxed),
        )
    }
}

impl<T> Default for RangeMap<T> {
    fn default() -> Self {
        RangeMap::new(u64::MAX)
    }
}

/// Locks a device, recovering from poisoning: a device that panicked while locked is
/// still used, because a bus must never panic.
pub(crate) fn lock<D: ?Sized>(dev: &Mutex<D>) -> MutexGuard<'_, D> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let mut m = RangeMap::new(0xffff);
        assert_eq!(m.insert(0x10, 0, 'a'), Err(RangeError::Empty));
        assert_eq!(m.insert(0xfff0, 0x11, 'a'), Err(RangeError::Overflow));
        assert!(m.insert(0xfff0, 0x10, 'z').is_ok());
        assert!(m.insert(0x10, 8, 'a').is_ok());
        assert_eq!(
            m.insert(0x17, 2, 'b'),
            Err(RangeError::Overlap {
                other_base: 0x10,
                other_len: 8
            })
        );
        assert_eq!(
            m.insert(0x8, 9, 'b'),
            Err(RangeError::Overlap {
                other_base: 0x10,
                other_len: 8
            })
        );
        assert!(m.insert(0x18, 1, 'c').is_ok());
        assert_eq!(m.find(0x10), Some((0, &'a')));
        assert_eq!(m.find(0x17), Some((7, &'a')));
        assert_eq!(m.find(0x18), Some((0, &'c')));
        assert_eq!(m.find(0x19), None);
        assert_eq!(m.find(0xffff), Some((0xf, &'z')));
        let mut big = RangeMap::default();
        assert_eq!(big.insert(u64::MAX, 2, ()), Err(RangeError::Overflow));
        assert!(big.insert(u64::MAX, 1, ()).is_ok());
        big.stray(true);
        big.stray(false);
        big.stray(false);
        assert_eq!(big.strays(), (2, 1));
    }
}
