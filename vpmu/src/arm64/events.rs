//! PMUv3 common events by name (Arm ARM D17.11, "Common event numbers"), the names the
//! arm64 allowlist (`docs/POLICY.md`, "arm64") accepts, and the event-number space.
//!
//! PMUv3 event numbers are 16 bits (`PMEVTYPER<n>_EL0.evtCount` is 10 bits on PMUv3 8.0,
//! 16 bits from PMUv3p1). KVM's filter bitmap covers `kvm_pmu_event_mask() + 1` events
//! (Linux arch/arm64/kvm/pmu-emul.c, `kvm_pmu_event_mask`: `GENMASK(9, 0)` for
//! `ID_AA64DFR0_EL1_PMUVer_IMP`, `GENMASK(15, 0)` for V3P1 and later).

/// One named event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arm64Event {
    /// Policy name (the perf generic name where there is one).
    pub name: &'static str,
    /// Other accepted names (the Arm ARM mnemonic, lower case).
    pub aliases: &'static [&'static str],
    /// The PMUv3 common event number.
    pub number: u16,
}

/// CPU_CYCLES: also what the cycle counter (PMCCNTR_EL0) counts, and what KVM's filter
/// checks for it (pmu-emul.c `kvm_pmu_create_perf_event`: `if (pmc->idx ==
/// ARMV8_PMU_CYCLE_IDX) eventsel = ARMV8_PMUV3_PERFCTR_CPU_CYCLES;`).
pub const CPU_CYCLES: u16 = 0x11;
/// INST_RETIRED.
pub const INST_RETIRED: u16 = 0x08;
/// SW_INCR: never filtered by KVM (Documentation/virt/kvm/devices/vcpu.rst: "Event 0
/// (SW_INCR) is never filtered").
pub const SW_INCR: u16 = 0x00;
/// CHAIN: filtering it has no effect (vcpu.rst: "Filtering event 0x1E (CHAIN) has no effect").
pub const CHAIN: u16 = 0x1e;
/// The largest PMUv3 event number (16 bits, PMUv3p1 and later).
pub const MAX_EVENT: u16 = 0xffff;

/// The named events (perf's generic hardware events as Linux's armv8 PMU driver maps them,
/// `armv8_pmuv3_perf_map` in drivers/perf/arm_pmuv3.c, plus their Arm mnemonics).
pub const EVENTS: &[Arm64Event] = &[
    Arm64Event {
        name: "cycles",
        aliases: &["cpu_cycles", "cpu-cycles"],
        number: CPU_CYCLES,
    },
    Arm64Event {
        name: "instructions",
        aliases: &["inst_retired"],
        number: INST_RETIRED,
    },
    Arm64Event {
        name: "branches",
        aliases: &["br_pred", "branch-instructions"],
        number: 0x21,
    },
    Arm64Event {
        name: "branch-misses",
        aliases: &["br_mis_pred_retired"],
        number: 0x22,
    },
    Arm64Event {
        name: "cache-references",
        aliases: &["l1d_cache"],
        number: 0x04,
    },
    Arm64Event {
        name: "cache-misses",
        aliases: &["l1d_cache_refill"],
        number: 0x03,
    },
];

/// The event called `name` (case-insensitive, names and aliases).
pub fn by_name(name: &str) -> Option<&'static Arm64Event> {
    let n = name.trim().to_ascii_lowercase();
    EVENTS
        .iter()
        .find(|e| e.name == n || e.aliases.contains(&n.as_str()))
}

/// A name for `number`: the policy name when it has one, else `raw 0x..`.
pub fn describe(number: u16) -> String {
    match EVENTS.iter().find(|e| e.number == number) {
        Some(e) => format!("{} (0x{number:02x})", e.name),
        None => format!("raw 0x{number:04x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve() {
        assert_eq!(by_name("cycles").map(|e| e.number), Some(0x11));
        assert_eq!(by_name("CPU_CYCLES").map(|e| e.number), Some(0x11));
        assert_eq!(by_name("instructions").map(|e| e.number), Some(0x08));
        assert_eq!(by_name("branches").map(|e| e.number), Some(0x21));
        assert_eq!(by_name("branch-misses").map(|e| e.number), Some(0x22));
        assert_eq!(by_name("cache-references").map(|e| e.number), Some(0x04));
        assert_eq!(by_name("cache-misses").map(|e| e.number), Some(0x03));
        assert!(by_name("ref-cycles").is_none());
        assert_eq!(describe(0x11), "cycles (0x11)");
        assert_eq!(describe(0x1234), "raw 0x1234");
    }

    #[test]
    fn names_are_unique() {
        let mut all: Vec<&str> = EVENTS
            .iter()
            .flat_map(|e| std::iter::once(e.name).chain(e.aliases.iter().copied()))
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
