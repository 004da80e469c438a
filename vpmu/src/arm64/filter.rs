//! KVM's arm64 PMU event filter (`KVM_ARM_VCPU_PMU_V3_FILTER`): a set of allowed PMUv3
//! event numbers compiled to the fewest `struct kvm_pmu_event_filter` ranges, and an
//! in-VMM matcher with KVM's semantics.
//!
//! KVM's algorithm (Linux arch/arm64/kvm/pmu-emul.c, `kvm_arm_pmu_v3_set_attr`, case
//! `KVM_ARM_VCPU_PMU_V3_FILTER`): the filter is one VM-wide bitmap of `nr_events` bits
//! (`kvm_pmu_event_mask(kvm) + 1`: 1024 for PMUv3 8.0, 65536 from PMUv3p1). The FIRST
//! range installed decides the default for every other event: "If it allows events, the
//! default is to deny. Conversely, if the first filter denies a set of events, the default
//! is to allow." (`bitmap_zero` / `bitmap_fill`), then each range sets (ALLOW) or clears
//! (DENY) its bits. A range with `base_event + nevents > nr_events` is `-EINVAL`. Without
//! any range there is no bitmap and every event counts.
//!
//! Where it acts: `kvm_pmu_create_perf_event` creates no perf event for a denied event
//! (`if (vcpu->kvm->arch.pmu_filter && !test_bit(eventsel, vcpu->kvm->arch.pmu_filter))
//! return;`), so the counter keeps its value; the cycle counter is checked as event 0x11
//! (`eventsel = ARMV8_PMUV3_PERFCTR_CPU_CYCLES` for `ARMV8_PMU_CYCLE_IDX`);
//! `kvm_pmu_get_pmceid` ANDs PMCEID0/1 with the bitmap (events 0..=0x3f and, with 16-bit
//! events, 0x4000..=0x403f), so a denied common event vanishes from PMCEID.
//!
//! This module is arch-neutral (no kvm-bindings types): [`FilterRange::to_bytes`] is the
//! 8-byte `struct kvm_pmu_event_filter { __u16 base_event; __u16 nevents; __u8 action;
//! __u8 pad[3]; }` (include/uapi/linux/kvm.h, arm64 `asm/kvm.h`).

use std::fmt;

/// `KVM_PMU_EVENT_ALLOW` (arm64 uapi asm/kvm.h).
pub const KVM_PMU_EVENT_ALLOW: u8 = 0;
/// `KVM_PMU_EVENT_DENY`.
pub const KVM_PMU_EVENT_DENY: u8 = 1;
/// Events KVM's bitmap covers with PMUv3 8.0 (`GENMASK(9, 0) + 1`).
pub const NR_EVENTS_PMUV3: u32 = 1 << 10;
/// Events KVM's bitmap covers from PMUv3p1 (`GENMASK(15, 0) + 1`).
pub const NR_EVENTS_PMUV3P1: u32 = 1 << 16;

/// One `struct kvm_pmu_event_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FilterRange {
    /// First event of the range.
    pub base_event: u16,
    /// Number of events (`base_event + nevents <= nr_events`).
    pub nevents: u16,
    /// [`KVM_PMU_EVENT_ALLOW`] or [`KVM_PMU_EVENT_DENY`].
    pub action: u8,
}

impl FilterRange {
    /// The ioctl payload: little-endian `base_event`, `nevents`, `action`, 3 pad bytes.
    pub fn to_bytes(self) -> [u8; 8] {
        let b = self.base_event.to_le_bytes();
        let n = self.nevents.to_le_bytes();
        [b[0], b[1], n[0], n[1], self.action, 0, 0, 0]
    }
}

impl fmt::Display for FilterRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.action == KVM_PMU_EVENT_ALLOW {
            "allow"
        } else {
            "deny"
        };
        if self.nevents == 0 {
            write!(f, "{what} nothing at 0x{:x}", self.base_event)
        } else {
            write!(
                f,
                "{what} 0x{:x}..=0x{:x}",
                self.base_event,
                u32::from(self.base_event) + u32::from(self.nevents) - 1
            )
        }
    }
}

/// The allowed set of events over `0..nr_events`, as KVM's bitmap would hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSet {
    nr_events: u32,
    bits: Vec<u64>,
}

impl EventSet {
    /// Nothing allowed, over `nr_events` events (1..=65536).
    pub fn none(nr_events: u32) -> Self {
        let nr_events = nr_events.clamp(1, NR_EVENTS_PMUV3P1);
        EventSet {
            nr_events,
            bits: vec![0; nr_events.div_ceil(64) as usize],
        }
    }

    /// Everything allowed.
    pub fn all(nr_events: u32) -> Self {
        let mut s = Self::none(nr_events);
        for e in 0..s.nr_events {
            s.set(e, true);
        }
        s
    }

    /// The size of the event space.
    pub fn nr_events(&self) -> u32 {
        self.nr_events
    }

    /// Whether `event` is in the set (events outside the space: no).
    pub fn contains(&self, event: u32) -> bool {
        event < self.nr_events && self.bits[(event / 64) as usize] & (1 << (event % 64)) != 0
    }

    /// Adds or removes `event` (ignored outside the space).
    pub fn set(&mut self, event: u32, on: bool) {
        if event < self.nr_events {
            let w = &mut self.bits[(event / 64) as usize];
            if on {
                *w |= 1 << (event % 64);
            } else {
                *w &= !(1 << (event % 64));
            }
        }
    }

    /// Maximal runs `[start, end)` of events whose membership is `on`.
    fn runs(&self, on: bool) -> Vec<(u32, u32)> {
        let mut v = Vec::new();
        let mut start = None;
        for e in 0..=self.nr_events {
            let inside = e < self.nr_events && self.contains(e) == on;
            match (inside, start) {
                (true, None) => start = Some(e),
                (false, Some(s)) => {
                    v.push((s, e));
                    start = None;
                }
                _ => {}
            }
        }
        v
    }

    /// The fewest KVM filter ranges that make KVM's bitmap equal this set: none when
    /// everything is allowed (no filter), else the runs of allowed events as ALLOW ranges
    /// (default deny) or the runs of denied events as DENY ranges (default allow),
    /// whichever is shorter (an empty allowlist is one zero-length ALLOW range). A run of
    /// 65536 events (the whole 16-bit space) is split in two: `nevents` is 16 bits.
    pub fn to_ranges(&self) -> Vec<FilterRange> {
        let allowed = self.runs(true);
        let denied = self.runs(false);
        if denied.is_empty() {
            return Vec::new();
        }
        if allowed.is_empty() {
            return vec![FilterRange {
                base_event: 0,
                nevents: 0,
                action: KVM_PMU_EVENT_ALLOW,
            }];
        }
        let (runs, action) = if allowed.len() <= denied.len() {
            (allowed, KVM_PMU_EVENT_ALLOW)
        } else {
            (denied, KVM_PMU_EVENT_DENY)
        };
        let mut v = Vec::with_capacity(runs.len());
        for (s, e) in runs {
            let mut s = s;
            while s < e {
                let n = (e - s).min(u32::from(u16::MAX));
                // Event numbers are 16-bit (runs end at most at 0x10000): both fit.
                let (Ok(base_event), Ok(nevents)) = (u16::try_from(s), u16::try_from(n)) else {
                    break;
                };
                v.push(FilterRange {
                    base_event,
                    nevents,
                    action,
                });
                s += n;
            }
        }
        v
    }

    /// KVM's `kvm_pmu_get_pmceid` mask for PMCEID0 (`base` 0) or PMCEID1 (`base` 32):
    /// bits 0..31 = events `base..base+32`, bits 32..63 = events `0x4000+base..` (only when
    /// the space has 16-bit events).
    pub fn pmceid_mask(&self, base: u32) -> u64 {
        let mut m = 0u64;
        for i in 0..32 {
            if self.contains(base + i) {
                m |= 1 << i;
            }
            if self.nr_events >= 0x4000 + base + 32 && self.contains(0x4000 + base + i) {
                m |= 1 << (32 + i);
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An independent re-implementation of KVM's filter handling (pmu-emul.c,
    /// `kvm_arm_pmu_v3_set_attr` FILTER): `None` = no bitmap (all events count);
    /// `Err` = the ioctl's -EINVAL.
    fn kvm_apply(nr_events: u32, ranges: &[FilterRange]) -> Result<Option<Vec<bool>>, ()> {
        let mut bitmap: Option<Vec<bool>> = None;
        for f in ranges {
            if u32::from(f.base_event) + u32::from(f.nevents) > nr_events
                || (f.action != KVM_PMU_EVENT_ALLOW && f.action != KVM_PMU_EVENT_DENY)
            {
                return Err(());
            }
            let b = bitmap.get_or_insert_with(|| {
                // "The default depends on the first applied filter."
                vec![f.action != KVM_PMU_EVENT_ALLOW; nr_events as usize]
            });
            let range = f.base_event as usize..(f.base_event as usize + f.nevents as usize);
            b[range].fill(f.action == KVM_PMU_EVENT_ALLOW);
        }
        Ok(bitmap)
    }

    fn kvm_counts(nr_events: u32, ranges: &[FilterRange], event: u32) -> bool {
        match kvm_apply(nr_events, ranges).expect("valid ranges") {
            None => true,
            Some(b) => b[event as usize],
        }
    }

    #[test]
    fn allow_two_events() {
        let mut s = EventSet::none(NR_EVENTS_PMUV3);
        s.set(0x11, true);
        s.set(0x08, true);
        let r = s.to_ranges();
        assert_eq!(
            r,
            vec![
                FilterRange {
                    base_event: 0x08,
                    nevents: 1,
                    action: KVM_PMU_EVENT_ALLOW
                },
                FilterRange {
                    base_event: 0x11,
                    nevents: 1,
                    action: KVM_PMU_EVENT_ALLOW
                }
            ]
        );
        assert_eq!(r[0].to_bytes(), [0x08, 0, 1, 0, 0, 0, 0, 0]);
        assert!(kvm_counts(NR_EVENTS_PMUV3, &r, 0x11));
        assert!(!kvm_counts(NR_EVENTS_PMUV3, &r, 0x21));
        assert_eq!(s.pmceid_mask(0), (1 << 0x11) | (1 << 0x08));
        assert_eq!(r[1].to_string(), "allow 0x11..=0x11");
    }

    #[test]
    fn deny_one_event_is_one_deny_range() {
        let mut s = EventSet::all(NR_EVENTS_PMUV3P1);
        s.set(0x08, false);
        let r = s.to_ranges();
        assert_eq!(
            r,
            vec![FilterRange {
                base_event: 0x08,
                nevents: 1,
                action: KVM_PMU_EVENT_DENY
            }]
        );
        assert!(!kvm_counts(NR_EVENTS_PMUV3P1, &r, 0x08));
        assert!(kvm_counts(NR_EVENTS_PMUV3P1, &r, 0x4011));
    }

    #[test]
    fn extremes() {
        assert!(EventSet::all(NR_EVENTS_PMUV3P1).to_ranges().is_empty());
        let none = EventSet::none(NR_EVENTS_PMUV3P1).to_ranges();
        assert_eq!(none.len(), 1);
        assert_eq!(
            kvm_apply(NR_EVENTS_PMUV3P1, &none).unwrap(),
            Some(vec![false; 65536])
        );
        // Only event 0 denied over 65536 events: the allowed run 1..65536 fits one range,
        // the denied run is one range: one DENY range.
        let mut s = EventSet::all(NR_EVENTS_PMUV3P1);
        s.set(0, false);
        assert_eq!(s.to_ranges().len(), 1);
    }

    fn arb_set() -> impl Strategy<Value = EventSet> {
        (
            prop_oneof![Just(NR_EVENTS_PMUV3), Just(NR_EVENTS_PMUV3P1)],
            any::<bool>(),
            prop::collection::vec((0u32..0x10000, 1u32..300), 0..12),
        )
            .prop_map(|(nr, base_all, flips)| {
                let mut s = if base_all {
                    EventSet::all(nr)
                } else {
                    EventSet::none(nr)
                };
                for (start, len) in flips {
                    let start = start % nr;
                    for e in start..(start + len).min(nr) {
                        let on = s.contains(e);
                        s.set(e, !on);
                    }
                }
                s
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// KVM, given the compiled ranges, ends with exactly the intended set, and the
        /// ranges are as few as either default allows.
        #[test]
        fn kvm_bitmap_matches_the_set(s in arb_set()) {
            let nr = s.nr_events();
            let r = s.to_ranges();
            let b = kvm_apply(nr, &r).expect("compiled ranges are valid for KVM");
            for e in 0..nr {
                let kvm = b.as_ref().is_none_or(|b| b[e as usize]);
                prop_assert_eq!(kvm, s.contains(e), "event 0x{:x}", e);
            }
            let ones = s.runs(true).len();
            let zeros = s.runs(false).len();
            let best = if zeros == 0 { 0 } else { ones.min(zeros).max(1) };
            // Runs longer than u16::MAX are split (only the whole-space run can be).
            prop_assert!(r.len() == best || r.len() == best + 1);
            // The PMCEID mask is the set's membership of the common events.
            let m = s.pmceid_mask(0);
            for i in 0..32u32 {
                prop_assert_eq!(m & (1 << i) != 0, s.contains(i));
            }
        }
    }
}
