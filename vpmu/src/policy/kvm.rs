//! The `KVM_SET_PMU_EVENT_FILTER` payload (`struct kvm_pmu_event_filter`).
//!
//! ```text
//! struct kvm_pmu_event_filter {
//!     __u32 action;               // KVM_PMU_EVENT_ALLOW (0) / KVM_PMU_EVENT_DENY (1)
//!     __u32 nevents;              // <= 300, else E2BIG
//!     __u32 fixed_counter_bitmap;
//!     __u32 flags;                // KVM_PMU_EVENT_FLAG_MASKED_EVENTS (bit 0)
//!     __u32 pad[4];
//!     __u64 events[];
//! };
//! ```
//!
//! Plain entries (flags = 0) are `event[7:0] | umask << 8 | event[11:8] << 32`; masked
//! entries are `event[7:0] | match << 8 | event[11:8] << 32 | exclude << 55 | mask << 56`
//! (`KVM_PMU_ENCODE_MASKED_ENTRY` in `arch/x86/include/uapi/asm/kvm.h`).

use thiserror::Error;

/// `KVM_PMU_EVENT_ALLOW`.
pub const KVM_PMU_EVENT_ALLOW: u32 = kvm_bindings::KVM_PMU_EVENT_ALLOW;
/// `KVM_PMU_EVENT_DENY`.
pub const KVM_PMU_EVENT_DENY: u32 = kvm_bindings::KVM_PMU_EVENT_DENY;
/// `KVM_PMU_EVENT_FLAG_MASKED_EVENTS` (needs `KVM_CAP_PMU_EVENT_MASKED_EVENTS`).
pub const KVM_PMU_EVENT_FLAG_MASKED_EVENTS: u32 = 1;
/// `KVM_PMU_EVENT_FILTER_MAX_EVENTS` (arch/x86/kvm/pmu.c).
pub const KVM_PMU_EVENT_FILTER_MAX_EVENTS: usize = 300;
/// Size of the fixed part of `struct kvm_pmu_event_filter`.
pub const KVM_PMU_FILTER_HEADER_SIZE: usize = 32;
/// `KVM_SET_PMU_EVENT_FILTER` = `_IOW(KVMIO, 0xb2, struct kvm_pmu_event_filter)`, a VM
/// ioctl (`KVM_CAP_PMU_EVENT_FILTER`).
pub const KVM_SET_PMU_EVENT_FILTER: u64 =
    (1 << 30) | ((KVM_PMU_FILTER_HEADER_SIZE as u64) << 16) | (0xae << 8) | 0xb2;

const _: () = assert!(
    std::mem::size_of::<kvm_bindings::kvm_pmu_event_filter>() == KVM_PMU_FILTER_HEADER_SIZE
);

/// Plain filter entry for `(event, umask)`.
#[inline]
pub const fn encode_plain(event: u16, umask: u8) -> u64 {
    crate::selector::encode(event, umask)
}

/// Masked filter entry (`KVM_PMU_ENCODE_MASKED_ENTRY(event, mask, match, exclude)`).
#[inline]
pub const fn encode_masked(event: u16, umask_match: u8, umask_mask: u8, exclude: bool) -> u64 {
    ((event as u64) & 0xff)
        | (((event as u64) & 0xf00) << 24)
        | ((umask_mask as u64) << 56)
        | ((umask_match as u64) << 8)
        | ((exclude as u64) << 55)
}

/// A filter too large for KVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum KvmFilterError {
    /// More than 300 events: KVM returns E2BIG.
    #[error("{0} filter events > {KVM_PMU_EVENT_FILTER_MAX_EVENTS} (E2BIG)")]
    TooManyEvents(usize),
}

/// The filter to hand to `KVM_SET_PMU_EVENT_FILTER`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KvmFilter {
    /// [`KVM_PMU_EVENT_ALLOW`] or [`KVM_PMU_EVENT_DENY`].
    pub action: u32,
    /// Bit i: fixed counter i is listed.
    pub fixed_counter_bitmap: u32,
    /// 0 or [`KVM_PMU_EVENT_FLAG_MASKED_EVENTS`].
    pub flags: u32,
    /// Encoded entries.
    pub events: Vec<u64>,
}

impl KvmFilter {
    /// Whether the filter needs `KVM_CAP_PMU_EVENT_MASKED_EVENTS`.
    pub const fn requires_masked_events_cap(&self) -> bool {
        self.flags & KVM_PMU_EVENT_FLAG_MASKED_EVENTS != 0
    }

    /// The exact bytes of `struct kvm_pmu_event_filter` followed by the events
    /// (little-endian, x86). Pass a pointer to them as the ioctl argument.
    pub fn to_ioctl_bytes(&self) -> Result<Vec<u8>, KvmFilterError> {
        let n = self.events.len();
        if n > KVM_PMU_EVENT_FILTER_MAX_EVENTS {
            return Err(KvmFilterError::TooManyEvents(n));
        }
        let mut out = Vec::with_capacity(KVM_PMU_FILTER_HEADER_SIZE + 8 * n);
        // n <= 300, so it fits in u32.
        let header: [u32; 8] = [
            self.action,
            u32::try_from(n).unwrap_or(u32::MAX),
            self.fixed_counter_bitmap,
            self.flags,
            0,
            0,
            0,
            0,
        ];
        for w in header {
            out.extend_from_slice(&w.to_le_bytes());
        }
        for e in &self.events {
            out.extend_from_slice(&e.to_le_bytes());
        }
        Ok(out)
    }
}
