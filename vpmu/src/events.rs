//! Named performance events and their per-vendor encodings.
//!
//! The generic names follow Linux perf's hardware events and their encodings come from
//! the kernel's event maps:
//!
//! - Intel: `intel_perfmon_event_map` in `arch/x86/events/intel/core.c`, plus the
//!   architectural events of CPUID leaf 0xA (SDM vol. 3B, "Architectural Performance
//!   Monitoring"; the same list as the KVM selftests' `intel_pmu_arch_events`). Where
//!   perf uses a pseudo-encoding (`ref-cycles` = 0x0300, only countable on fixed
//!   counter 2) we use the architectural general-purpose encoding (event 0x3c, umask
//!   0x01, "UnHalted Reference Cycles").
//! - AMD: `amd_zen1_perfmon_event_map` / `amd_zen2_perfmon_event_map` in
//!   `arch/x86/events/amd/core.c` (family 17h and later; the six events used here are
//!   identical in both maps). AMD has **no** architectural `ref-cycles` event: Linux
//!   maps it to nothing before Zen 4 and to the model-specific PMCx120 on Zen 4 and
//!   later, so [`lookup`] returns `None` for it on AMD. A policy that wants PMCx120 can
//!   list it as a raw event (`event = 0x120, vendor = "amd"`).
//!
//! Encodings here are (event select, unit mask) pairs: the event select is 8 bits on
//! Intel and 12 bits on AMD (bits 7:0 and 35:32 of the selector MSR).

use crate::config::Vendor;

/// A named event with its encoding for one vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamedEvent {
    /// Canonical name (perf style, e.g. `branch-misses`).
    pub name: &'static str,
    /// Event select (Intel: 8 bits; AMD: 12 bits).
    pub event: u16,
    /// Unit mask.
    pub umask: u8,
    /// Intel fixed counter that counts the same event, if any.
    pub fixed_counter: Option<u8>,
    /// One-line description.
    pub description: &'static str,
}

impl NamedEvent {
    const fn new(name: &'static str, event: u16, umask: u8, description: &'static str) -> Self {
        NamedEvent {
            name,
            event,
            umask,
            fixed_counter: None,
            description,
        }
    }

    const fn fixed(mut self, idx: u8) -> Self {
        self.fixed_counter = Some(idx);
        self
    }

    /// Its (event select, unit mask).
    pub const fn encoding(&self) -> Encoding {
        (self.event, self.umask)
    }
}

/// The seven architectural (vendor-neutral) event names that make up the default policy.
pub const ARCHITECTURAL_NAMES: [&str; 7] = [
    "cycles",
    "instructions",
    "ref-cycles",
    "branches",
    "branch-misses",
    "cache-references",
    "cache-misses",
];

/// Accepted alternative spellings (perf's aliases), mapped to canonical names.
pub const ALIASES: [(&str, &str); 3] = [
    ("cpu-cycles", "cycles"),
    ("branch-instructions", "branches"),
    ("slots", "topdown-slots"),
];

/// Intel named events: the perf generic events plus every architectural event.
pub const INTEL_EVENTS: &[NamedEvent] = &[
    NamedEvent::new("cycles", 0x3c, 0x00, "UnHalted Core Cycles").fixed(1),
    NamedEvent::new("instructions", 0xc0, 0x00, "Instructions Retired").fixed(0),
    NamedEvent::new("ref-cycles", 0x3c, 0x01, "UnHalted Reference Cycles").fixed(2),
    NamedEvent::new("branches", 0xc4, 0x00, "Branch Instructions Retired"),
    NamedEvent::new("branch-misses", 0xc5, 0x00, "Branch Misses Retired"),
    NamedEvent::new("cache-references", 0x2e, 0x4f, "LLC References"),
    NamedEvent::new("cache-misses", 0x2e, 0x41, "LLC Misses"),
    NamedEvent::new("topdown-slots", 0xa4, 0x01, "Topdown Slots").fixed(3),
    NamedEvent::new("topdown-be-bound", 0xa4, 0x02, "Topdown Backend Bound"),
    NamedEvent::new("topdown-bad-spec", 0x73, 0x00, "Topdown Bad Speculation"),
    NamedEvent::new("topdown-fe-bound", 0x9c, 0x01, "Topdown Frontend Bound"),
    NamedEvent::new("topdown-retiring", 0xc2, 0x02, "Topdown Retiring"),
    NamedEvent::new("lbr-inserts", 0xe4, 0x01, "LBR Inserts"),
];

/// The Intel named events, by name: `INTEL_EVENTS[e as usize]` is event `e` (a test
/// checks every position), so tables below say which event they mean, not where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntelEvent {
    /// `Cycles`.
    Cycles,
    /// `Instructions`.
    Instructions,
    /// `RefCycles`.
    RefCycles,
    /// `Branches`.
    Branches,
    /// `BranchMisses`.
    BranchMisses,
    /// `CacheReferences`.
    CacheReferences,
    /// `CacheMisses`.
    CacheMisses,
    /// `TopdownSlots`.
    TopdownSlots,
    /// `TopdownBeBound`.
    TopdownBeBound,
    /// `TopdownBadSpec`.
    TopdownBadSpec,
    /// `TopdownFeBound`.
    TopdownFeBound,
    /// `TopdownRetiring`.
    TopdownRetiring,
    /// `LbrInserts`.
    LbrInserts,
}

impl IntelEvent {
    /// Every Intel named event, in `INTEL_EVENTS` order.
    pub const ALL: [IntelEvent; 13] = [
        IntelEvent::Cycles,
        IntelEvent::Instructions,
        IntelEvent::RefCycles,
        IntelEvent::Branches,
        IntelEvent::BranchMisses,
        IntelEvent::CacheReferences,
        IntelEvent::CacheMisses,
        IntelEvent::TopdownSlots,
        IntelEvent::TopdownBeBound,
        IntelEvent::TopdownBadSpec,
        IntelEvent::TopdownFeBound,
        IntelEvent::TopdownRetiring,
        IntelEvent::LbrInserts,
    ];

    /// Its name and encoding.
    pub const fn event(self) -> &'static NamedEvent {
        &INTEL_EVENTS[self as usize]
    }
}

/// AMD named events (family 17h and later, i.e. Zen).
pub const AMD_EVENTS: &[NamedEvent] = &[
    NamedEvent::new("cycles", 0x76, 0x00, "Cycles not in halt (PMCx076)"),
    NamedEvent::new("instructions", 0xc0, 0x00, "Retired instructions (PMCx0C0)"),
    NamedEvent::new(
        "branches",
        0xc2,
        0x00,
        "Retired branch instructions (PMCx0C2)",
    ),
    NamedEvent::new(
        "branch-misses",
        0xc3,
        0x00,
        "Retired branch instructions mispredicted (PMCx0C3)",
    ),
    NamedEvent::new(
        "cache-references",
        0x60,
        0xff,
        "L2 cache accesses, all types (PMCx060)",
    ),
    NamedEvent::new(
        "cache-misses",
        0x64,
        0x09,
        "L2 cache misses from data cache and instruction fetch (PMCx064)",
    ),
];

/// The named events of a vendor.
pub fn named_events(vendor: Vendor) -> &'static [NamedEvent] {
    match vendor {
        Vendor::Intel => INTEL_EVENTS,
        Vendor::Amd => AMD_EVENTS,
    }
}

/// The canonical spelling of `name` (resolves [`ALIASES`]); `None` if the name is not
/// known for any vendor.
pub fn canonical_name(name: &str) -> Option<&'static str> {
    let name = ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map(|(_, canon)| *canon)
        .unwrap_or(name);
    INTEL_EVENTS
        .iter()
        .chain(AMD_EVENTS.iter())
        .find(|e| e.name == name)
        .map(|e| e.name)
}

/// Whether `name` (or an alias) is a known event name for at least one vendor.
pub fn is_known_name(name: &str) -> bool {
    canonical_name(name).is_some()
}

/// The encoding of `name` (or an alias) for `vendor`; `None` if the vendor has no such
/// event (e.g. `ref-cycles` on AMD) or the name is unknown.
pub fn lookup(vendor: Vendor, name: &str) -> Option<NamedEvent> {
    let canon = canonical_name(name)?;
    named_events(vendor)
        .iter()
        .find(|e| e.name == canon)
        .copied()
}

/// An Intel architectural performance event (CPUID.0AH:EBX bit order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchEvent {
    /// Bit in CPUID.0AH:EBX that reports the event *unavailable* when set.
    pub ebx_bit: u8,
    /// Named event (name and encoding).
    pub event: &'static NamedEvent,
}

/// Intel architectural events, indexed by their CPUID.0AH:EBX bit.
pub const INTEL_ARCH_EVENTS: [ArchEvent; 13] = [
    ArchEvent {
        ebx_bit: 0,
        event: IntelEvent::Cycles.event(),
    }, // UnHalted Core Cycles
    ArchEvent {
        ebx_bit: 1,
        event: IntelEvent::Instructions.event(),
    }, // Instructions Retired
    ArchEvent {
        ebx_bit: 2,
        event: IntelEvent::RefCycles.event(),
    }, // UnHalted Reference Cycles
    ArchEvent {
        ebx_bit: 3,
        event: IntelEvent::CacheReferences.event(),
    }, // LLC References
    ArchEvent {
        ebx_bit: 4,
        event: IntelEvent::CacheMisses.event(),
    }, // LLC Misses
    ArchEvent {
        ebx_bit: 5,
        event: IntelEvent::Branches.event(),
    }, // Branch Instructions Retired
    ArchEvent {
        ebx_bit: 6,
        event: IntelEvent::BranchMisses.event(),
    }, // Branch Misses Retired
    ArchEvent {
        ebx_bit: 7,
        event: IntelEvent::TopdownSlots.event(),
    }, // Topdown Slots
    ArchEvent {
        ebx_bit: 8,
        event: IntelEvent::TopdownBeBound.event(),
    }, // Topdown Backend Bound
    ArchEvent {
        ebx_bit: 9,
        event: IntelEvent::TopdownBadSpec.event(),
    }, // Topdown Bad Speculation
    ArchEvent {
        ebx_bit: 10,
        event: IntelEvent::TopdownFeBound.event(),
    }, // Topdown Frontend Bound
    ArchEvent {
        ebx_bit: 11,
        event: IntelEvent::TopdownRetiring.event(),
    }, // Topdown Retiring
    ArchEvent {
        ebx_bit: 12,
        event: IntelEvent::LbrInserts.event(),
    }, // LBR Inserts
];

/// An Intel fixed-function counter and the event it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedCounter {
    /// Fixed counter index (IA32_FIXED_CTRi).
    pub index: u8,
    /// The event it counts, with its general-purpose encoding.
    pub event: &'static NamedEvent,
    /// The encoding Linux perf uses to request this counter (`umask << 8 | event`).
    /// Equal to the GP encoding except fixed counter 2, whose perf pseudo-encoding is
    /// 0x0300 (it cannot be expressed as an architectural GP event in perf).
    pub perf_encoding: u16,
}

/// Intel fixed counters 0..=3: instructions (0x00c0), cycles (0x003c), ref-cycles
/// (GP 0x013c; perf pseudo-encoding 0x0300), topdown slots (0x01a4).
pub const INTEL_FIXED_COUNTERS: [FixedCounter; 4] = [
    FixedCounter {
        index: 0,
        event: IntelEvent::Instructions.event(),
        perf_encoding: 0x00c0,
    },
    FixedCounter {
        index: 1,
        event: IntelEvent::Cycles.event(),
        perf_encoding: 0x003c,
    },
    FixedCounter {
        index: 2,
        event: IntelEvent::RefCycles.event(),
        perf_encoding: 0x0300,
    },
    FixedCounter {
        index: 3,
        event: IntelEvent::TopdownSlots.event(),
        perf_encoding: 0x01a4,
    },
];

/// The Intel fixed counter that counts the GP event `(event, umask)`, if any.
pub fn intel_fixed_counter_for(event: u16, umask: u8) -> Option<u8> {
    INTEL_FIXED_COUNTERS
        .iter()
        .find(|f| f.event.event == event && f.event.umask == umask)
        .map(|f| f.index)
}

/// The perf name of the event Intel fixed counter `idx` counts (`instructions`, `cycles`,
/// `ref-cycles`, `topdown-slots`), if there is such a counter.
pub fn fixed_counter_name(idx: u8) -> Option<&'static str> {
    INTEL_FIXED_COUNTERS
        .get(usize::from(idx))
        .map(|f| f.event.name)
}

/// Unit-mask aliases: events whose unit mask the hardware ignores (wholly or in part).
///
/// A unit-mask bit the event does not define is ignored by the counter: on AMD, PMCx076
/// (cycles not in halt) with unit mask 0xff counts exactly what it counts with 0x00. Each
/// row is `(vendor, event select, defined unit-mask bits)`; events not listed define all
/// eight bits (every unit mask is its own event, as far as this crate knows).
///
/// Source: the AMD family 17h/19h PPRs' core PMC descriptions, as transcribed in Linux's
/// `tools/perf/pmu-events/arch/x86/amdzen{1,2,3,4}/{core,branch,pipeline}.json`, where
/// these events have no `UMask`: PMCx076 `ls_not_halted_cyc`, PMCx0C0 `ex_ret_instr`,
/// PMCx0C2 `ex_ret_brn`, PMCx0C3 `ex_ret_brn_misp`. The other AMD named events (PMCx060
/// L2 requests, PMCx064 L2 cache request status) define all eight unit-mask bits on Zen.
/// Intel: the SDM defines unit masks per event and calls the others reserved, not
/// ignored; none is listed (deny a whole Intel event with a `[[masked]]` rule).
pub const UMASK_ALIASES: &[(Vendor, u16, u8)] = &[
    (Vendor::Amd, 0x76, 0x00),
    (Vendor::Amd, 0xc0, 0x00),
    (Vendor::Amd, 0xc2, 0x00),
    (Vendor::Amd, 0xc3, 0x00),
];

/// The unit-mask bits `vendor`'s event `event` defines (0xff unless listed in
/// [`UMASK_ALIASES`]).
pub fn defined_umask_bits(vendor: Vendor, event: u16) -> u8 {
    UMASK_ALIASES
        .iter()
        .find(|(v, e, _)| *v == vendor && *e == event)
        .map(|(_, _, d)| *d)
        .unwrap_or(0xff)
}

/// The event the hardware counts for `(event, umask)`: the canonical encoding, with the
/// unit-mask bits the event does not define cleared. Two selectors count the same thing
/// iff their counted events are equal.
pub fn counted_event(vendor: Vendor, event: u16, umask: u8) -> (u16, u8) {
    (event, umask & defined_umask_bits(vendor, event))
}

/// An (event select, unit mask) pair.
pub type Encoding = (u16, u8);

/// Perf pseudo-encodings: event-select values that are no hardware event, but that Linux
/// perf on Intel schedules on a fixed counter, so a *perf-backed* general-purpose counter
/// (KVM's perf-based vPMU turns a guest selector into a raw perf event; so does the
/// userspace vPMU's host-perf source) counts the fixed counter's event with them. Each row
/// is `(vendor, pseudo encoding, the event it counts)`.
///
/// Source: KVM's `PSEUDO_ARCH_REFERENCE_CYCLES` = `{ 0x00, 0x03 }` (fixed counter 2) and
/// `PSEUDO_ARCH_TOPDOWN_SLOTS` = `{ 0x00, 0x04 }` (fixed counter 3) in
/// `arch/x86/kvm/vmx/pmu_intel.c`, and perf's `FIXED_EVENT_CONSTRAINT(0x0300, 2)` /
/// `(0x0400, 3)` in `arch/x86/events/intel/core.c`.
pub const PERF_PSEUDO_ALIASES: &[(Vendor, Encoding, Encoding)] = &[
    (Vendor::Intel, (0x00, 0x03), (0x3c, 0x01)),
    (Vendor::Intel, (0x00, 0x04), (0xa4, 0x01)),
];

/// The event a perf-backed counter counts for the pseudo-encoding `(event, umask)`, if it
/// is one ([`PERF_PSEUDO_ALIASES`]).
pub fn perf_pseudo_alias(vendor: Vendor, event: u16, umask: u8) -> Option<Encoding> {
    PERF_PSEUDO_ALIASES
        .iter()
        .find(|(v, p, _)| *v == vendor && *p == (event, umask))
        .map(|(_, _, c)| *c)
}

#[cfg(test)]
mod intel_event_tests {
    use super::*;

    #[test]
    fn intel_event_ids_name_their_table_entries() {
        let names = [
            "cycles",
            "instructions",
            "ref-cycles",
            "branches",
            "branch-misses",
            "cache-references",
            "cache-misses",
            "topdown-slots",
            "topdown-be-bound",
            "topdown-bad-spec",
            "topdown-fe-bound",
            "topdown-retiring",
            "lbr-inserts",
        ];
        assert_eq!(IntelEvent::ALL.len(), INTEL_EVENTS.len());
        for (e, n) in IntelEvent::ALL.iter().zip(names) {
            assert_eq!(e.event().name, n, "{e:?}");
        }
    }
}
