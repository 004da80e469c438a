//! The clock-model counter source: what a userspace-vPMU counter counts on a host without
//! a hardware PMU.
//!
//! The only events it can count honestly are cycle counts, derived from TSC ticks spent
//! inside KVM_RUN (core cycles and reference cycles both at TSC rate; halted time inside
//! KVM_RUN counts too, since the VMM cannot see it). Every other event is **refused as
//! unsupported**: the counter keeps its value and the refusal is audited; nothing is faked.
//!
//! Also refused: selectors the model cannot honour exactly (edge detect, invert, a counter
//! mask above 1) and selectors counting at neither privilege level count nothing.
//!
//! The model counts only what the policy decided: [`gp_event`] takes the decided
//! [`Programming`] and refuses anything whose verdict is not `Allowed`, and it maps the
//! event the hardware would count (`crate::events::counted_event`, unit-mask aliases
//! normalised), never a wildcard of its own; the policy decides every alias of that
//! counted event at least as strictly (docs/POLICY.md, "Unit-mask aliases").

use crate::events::{counted_event, lookup, IntelEvent};
use crate::guest::{Programming, Verdict};
use crate::selector::EventSelector;
use crate::Vendor;

/// What a counter is fed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockEvent {
    /// Core clock cycles (unhalted core cycles).
    CoreCycles,
    /// Reference cycles (TSC rate).
    RefCycles,
}

/// Why the clock model refuses an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a cycle event: the clock model cannot count it.
    UnsupportedEvent,
    /// A cycle event with EDGE/INV/CMASK>1, which the model cannot honour.
    UnsupportedQualifier,
    /// Neither USR nor OS is set: the counter counts nothing (architecturally).
    NoPrivilegeLevel,
    /// The policy did not allow this programming: nothing may count it.
    NotAllowed,
}

impl Refusal {
    /// Short text for audits and summaries.
    pub fn as_str(&self) -> &'static str {
        match self {
            Refusal::UnsupportedEvent => {
                "unsupported by the clock counter source (no hardware PMU)"
            }
            Refusal::UnsupportedQualifier => {
                "edge/invert/counter-mask not supported by the clock counter source"
            }
            Refusal::NoPrivilegeLevel => "neither USR nor OS set",
            Refusal::NotAllowed => "not allowed by the policy",
        }
    }
}

/// Maps a decided programming (GP, or a fixed counter in event-select shape) to a clock
/// event; anything the policy did not allow is refused.
pub fn gp_event(p: &Programming) -> Result<ClockEvent, Refusal> {
    if p.verdict != Verdict::Allowed {
        return Err(Refusal::NotAllowed);
    }
    selector_event(p.selector.vendor, &p.selector)
}

/// Maps an event selector, already allowed by the policy, to a clock event.
fn selector_event(vendor: Vendor, sel: &EventSelector) -> Result<ClockEvent, Refusal> {
    let counted = counted_event(vendor, sel.event, sel.umask);
    let is = |e: (u16, u8)| counted == e;
    let ev = match vendor {
        // Intel architectural events (SDM vol. 3B, Table 21-1 / 18-1).
        Vendor::Intel if is(IntelEvent::Cycles.event().encoding()) => ClockEvent::CoreCycles,
        Vendor::Intel if is(IntelEvent::RefCycles.event().encoding()) => ClockEvent::RefCycles,
        // AMD: PMCx076 CPU cycles not in halt (all families since 17h); it defines no
        // unit mask, so every unit mask counts it (the policy decides them all alike).
        Vendor::Amd if lookup(Vendor::Amd, "cycles").is_some_and(|c| is(c.encoding())) => {
            ClockEvent::CoreCycles
        }
        _ => return Err(Refusal::UnsupportedEvent),
    };
    if sel.edge || sel.inv || sel.cmask > 1 {
        return Err(Refusal::UnsupportedQualifier);
    }
    if !sel.usr && !sel.os {
        return Err(Refusal::NoPrivilegeLevel);
    }
    Ok(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(v: Vendor, raw: u64) -> EventSelector {
        EventSelector::decode(v, raw)
    }

    fn gp_event(v: Vendor, s: &EventSelector) -> Result<ClockEvent, Refusal> {
        selector_event(v, s)
    }

    #[test]
    fn counts_only_what_the_policy_allowed() {
        use crate::policy::DenyReason;
        use crate::state::CounterId;
        let usr_en = (1 << 16) | (1 << 22);
        let p = |raw: u64, verdict| Programming {
            counter: CounterId::Gp(0),
            selector: sel(Vendor::Amd, raw),
            fixed_field: None,
            verdict,
        };
        // AMD 0x76 with an undefined unit mask counts cycles when the policy allowed it ...
        assert_eq!(
            super::gp_event(&p(0x176 & 0xff | 0x100 | usr_en, Verdict::Allowed)),
            Ok(ClockEvent::CoreCycles)
        );
        // ... and nothing at all otherwise.
        let denied = Verdict::Denied(DenyReason::NotInAllowlist);
        assert_eq!(
            super::gp_event(&p(0x176 & 0xff | 0x100 | usr_en, denied)),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(
            super::gp_event(&p(0x76 | usr_en, Verdict::Disabled)),
            Err(Refusal::NotAllowed)
        );
    }

    #[test]
    fn intel_cycles_only() {
        let usr_os_en = (1 << 16) | (1 << 17) | (1 << 22);
        assert_eq!(
            gp_event(Vendor::Intel, &sel(Vendor::Intel, 0x3c | usr_os_en)),
            Ok(ClockEvent::CoreCycles)
        );
        assert_eq!(
            gp_event(Vendor::Intel, &sel(Vendor::Intel, 0x13c | usr_os_en)),
            Ok(ClockEvent::RefCycles)
        );
        assert_eq!(
            gp_event(Vendor::Intel, &sel(Vendor::Intel, 0xc0 | usr_os_en)),
            Err(Refusal::UnsupportedEvent)
        );
        assert_eq!(
            gp_event(Vendor::Intel, &sel(Vendor::Intel, 0x3c | (1 << 22))),
            Err(Refusal::NoPrivilegeLevel)
        );
        assert_eq!(
            gp_event(
                Vendor::Intel,
                &sel(Vendor::Intel, 0x3c | usr_os_en | (2 << 24))
            ),
            Err(Refusal::UnsupportedQualifier)
        );
        assert_eq!(
            gp_event(
                Vendor::Intel,
                &sel(Vendor::Intel, 0x3c | usr_os_en | (1 << 23))
            ),
            Err(Refusal::UnsupportedQualifier)
        );
    }

    #[test]
    fn amd_cycles_only() {
        let usr = 1 << 16;
        assert_eq!(
            gp_event(Vendor::Amd, &sel(Vendor::Amd, 0x76 | usr)),
            Ok(ClockEvent::CoreCycles)
        );
        assert_eq!(
            gp_event(Vendor::Amd, &sel(Vendor::Amd, 0xc0 | usr)),
            Err(Refusal::UnsupportedEvent)
        );
        // Event 0x176 is a different (12-bit) event on AMD.
        assert_eq!(
            gp_event(Vendor::Amd, &sel(Vendor::Amd, 0x76 | (1 << 32) | usr)),
            Err(Refusal::UnsupportedEvent)
        );
    }

    #[test]
    fn fixed_counters_are_their_architectural_events() {
        // A fixed counter reaches the clock model as its event-select-shaped event
        // (vpmu::guest), so the model has one table for both kinds of counter.
        let layout = crate::cpuid::default_emulated_layout(Vendor::Intel);
        let policy = crate::policy::Policy::from_toml("action = \"deny\"\n")
            .unwrap()
            .compile(Vendor::Intel, 4)
            .unwrap();
        let mut g = crate::guest::GuestPmu::new(&layout, std::sync::Arc::new(policy));
        let mut event = |i: u8, field: u64| {
            let w = g
                .write(
                    crate::model::intel::IA32_FIXED_CTR_CTRL,
                    field << (4 * u32::from(i)),
                )
                .unwrap();
            let p = w
                .reprogrammed
                .iter()
                .find(|p| p.counter == crate::state::CounterId::Fixed(i))
                .copied()
                .unwrap();
            gp_event(Vendor::Intel, &p.selector)
        };
        assert_eq!(event(0, 0x3), Err(Refusal::UnsupportedEvent));
        assert_eq!(event(1, 0x2), Ok(ClockEvent::CoreCycles));
        assert_eq!(event(2, 0x1), Ok(ClockEvent::RefCycles));
        assert_eq!(event(3, 0x3), Err(Refusal::UnsupportedEvent));
    }
}
