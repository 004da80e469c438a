//! The operator's event allowlist: a TOML policy, compiled per vendor into the
//! `KVM_SET_PMU_EVENT_FILTER` payload and into an in-VMM matcher with the same
//! semantics.
//!
//! - [`Policy`]: the parsed, validated policy (vendor independent). Parse with
//!   [`Policy::from_toml`], write with [`Policy::to_toml`], or start from
//!   [`Policy::default_architectural`]. The format is documented in `docs/POLICY.md`.
//! - [`CompiledPolicy`]: [`Policy::compile`] for one vendor and fixed-counter count.
//!   [`CompiledPolicy::kvm_filter`] gives the KVM filter ([`KvmFilter`],
//!   [`KvmFilter::to_ioctl_bytes`]); [`CompiledPolicy::decide`] /
//!   [`CompiledPolicy::decide_fixed`] / [`CompiledPolicy::check`] decide guest
//!   selector writes without allocating.

mod compile;
mod kvm;
mod parse;
mod report;

pub use compile::{Checked, CompiledPolicy, Decision, DenyReason, Describe, RuleId, RuleInfo};
pub use kvm::{
    encode_masked, encode_plain, KvmFilter, KvmFilterError, KVM_PMU_EVENT_ALLOW,
    KVM_PMU_EVENT_DENY, KVM_PMU_EVENT_FILTER_MAX_EVENTS, KVM_PMU_EVENT_FLAG_MASKED_EVENTS,
    KVM_PMU_FILTER_HEADER_SIZE, KVM_SET_PMU_EVENT_FILTER,
};
pub use report::check_report;

use crate::config::Vendor;
use crate::events;
use std::fmt;
use thiserror::Error;

/// Largest event select (AMD: 12 bits).
pub const MAX_EVENT_SELECT: u16 = 0xfff;
/// Largest fixed-counter index the 32-bit `fixed_counter_bitmap` can name.
pub const MAX_FIXED_COUNTER: u8 = 31;
/// Largest policy file the VMM reads (4 MiB), checked before reading. At most 300 rules
/// can apply to one vendor (`KVM_PMU_EVENT_FILTER_MAX_EVENTS`), a few dozen bytes each,
/// so this leaves room for generous comments while keeping `--pmu-policy /dev/zero` or a
/// runaway file from exhausting memory.
pub const MAX_POLICY_BYTES: u64 = 4 << 20;

/// What the listed events get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Action {
    /// Listed events are allowed, everything else is denied (an allowlist).
    #[default]
    Allow,
    /// Listed events are denied, everything else is allowed (a denylist).
    Deny,
}

impl Action {
    /// The TOML spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// Which fixed counters the `fixed_counter_bitmap` names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FixedCounters {
    /// Derive from the `[[event]]` rules: a fixed counter is named when its event
    /// (instructions, cycles, ref-cycles, topdown-slots) is listed.
    #[default]
    Named,
    /// Exactly these indices (0..=31).
    List(Vec<u8>),
}

/// How an `[[event]]` rule names its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSpec {
    /// A named event ([`crate::events`]), resolved per vendor at compile time.
    Named(String),
    /// A raw event select (up to 12 bits) and unit mask.
    Raw {
        /// Event select.
        event: u16,
        /// Unit mask.
        umask: u8,
    },
}

/// An `[[event]]` rule: one exact event select + unit mask.
#[derive(Debug, Clone, Eq)]
pub struct EventRule {
    /// The event.
    pub spec: EventSpec,
    /// Only for this vendor (`None`: both).
    pub vendor: Option<Vendor>,
    /// Free text shown in the audit log.
    pub label: Option<String>,
    /// Source line (diagnostics only; ignored by `==`).
    pub line: Option<usize>,
}

impl PartialEq for EventRule {
    fn eq(&self, o: &Self) -> bool {
        self.spec == o.spec && self.vendor == o.vendor && self.label == o.label
    }
}

impl EventRule {
    /// A vendor-neutral named rule.
    pub fn named(name: &str) -> Self {
        EventRule {
            spec: EventSpec::Named(name.to_string()),
            vendor: None,
            label: None,
            line: None,
        }
    }

    /// A vendor-neutral raw rule.
    pub fn raw(event: u16, umask: u8) -> Self {
        EventRule {
            spec: EventSpec::Raw { event, umask },
            vendor: None,
            label: None,
            line: None,
        }
    }
}

/// A `[[masked]]` rule (KVM masked-events semantics): matches guest selectors with the
/// same event select whose `umask & umask_mask == umask_match`.
#[derive(Debug, Clone, Eq)]
pub struct MaskedRule {
    /// Event select (up to 12 bits).
    pub event: u16,
    /// Required unit-mask bits.
    pub umask_match: u8,
    /// Which unit-mask bits are compared.
    pub umask_mask: u8,
    /// An exclude rule: removes matching selectors from the list.
    pub exclude: bool,
    /// Only for this vendor (`None`: both).
    pub vendor: Option<Vendor>,
    /// Free text shown in the audit log.
    pub label: Option<String>,
    /// Source line (diagnostics only; ignored by `==`).
    pub line: Option<usize>,
}

impl PartialEq for MaskedRule {
    fn eq(&self, o: &Self) -> bool {
        self.event == o.event
            && self.umask_match == o.umask_match
            && self.umask_mask == o.umask_mask
            && self.exclude == o.exclude
            && self.vendor == o.vendor
            && self.label == o.label
    }
}

/// A validated, vendor-independent policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    /// What listed events get.
    pub action: Action,
    /// Whether the Intel AnyThread bit is honoured.
    pub anythread: bool,
    /// The fixed counters the policy names.
    pub fixed_counters: FixedCounters,
    /// `[[event]]` rules, in file order.
    pub events: Vec<EventRule>,
    /// `[[masked]]` rules, in file order.
    pub masked: Vec<MaskedRule>,
}

/// Where a problem is: a line of the policy file, or a rule of a policy built in code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc(pub Option<usize>);

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(line) => write!(f, "line {line}"),
            None => f.write_str("policy"),
        }
    }
}

/// A policy that cannot be parsed, validated or compiled.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    /// TOML syntax, an unknown key, a missing key or a value of the wrong type.
    #[error("{at}: {message}")]
    Toml {
        /// Where.
        at: Loc,
        /// The parser's message.
        message: String,
    },
    /// `name = "..."` is not a known event name.
    #[error("{at}: unknown event name `{name}` (see docs/POLICY.md for the list)")]
    UnknownEvent {
        /// Where.
        at: Loc,
        /// The name given.
        name: String,
    },
    /// A number outside its field's range.
    #[error("{at}: `{field}` = {value} is out of range (0..={max:#x})")]
    OutOfRange {
        /// Where.
        at: Loc,
        /// The key.
        field: &'static str,
        /// The value given.
        value: i64,
        /// The largest allowed value.
        max: u32,
    },
    /// A rule gives both `name` and `event`.
    #[error("{at}: give either `name` or `event`, not both")]
    NameAndEvent {
        /// Where.
        at: Loc,
    },
    /// A rule gives neither `name` nor `event`.
    #[error("{at}: an [[event]] needs `name` or `event`")]
    NoEvent {
        /// Where.
        at: Loc,
    },
    /// `umask` given with `name` (the name fixes the unit mask).
    #[error("{at}: `umask` cannot be combined with `name` (the name fixes it)")]
    UmaskWithName {
        /// Where.
        at: Loc,
    },
    /// A masked rule whose `umask_match` has bits outside `umask_mask` can never match.
    #[error("{at}: umask_match {umask_match:#04x} has bits outside umask_mask {umask_mask:#04x}; the rule could never match")]
    MatchOutsideMask {
        /// Where.
        at: Loc,
        /// umask_match.
        umask_match: u8,
        /// umask_mask.
        umask_mask: u8,
    },
    /// `fixed_counters` is neither `"named"` nor a list of indices.
    #[error("{at}: `fixed_counters` must be \"named\" or a list of indices, got {got}")]
    BadFixedCounters {
        /// Where.
        at: Loc,
        /// What was given.
        got: String,
    },
    /// The same fixed counter is listed twice.
    #[error("{at}: fixed counter {index} listed twice")]
    DuplicateFixedCounter {
        /// Where.
        at: Loc,
        /// The index.
        index: u8,
    },
    /// More than [`KVM_PMU_EVENT_FILTER_MAX_EVENTS`] filter entries for a vendor (KVM
    /// would fail with E2BIG).
    #[error("{at}: too many entries for {vendor:?}: {count} > {KVM_PMU_EVENT_FILTER_MAX_EVENTS} (KVM_SET_PMU_EVENT_FILTER fails with E2BIG)")]
    TooManyEntries {
        /// The first entry over the limit.
        at: Loc,
        /// The vendor compiled for.
        vendor: Vendor,
        /// The number of entries.
        count: usize,
    },
    /// An event select over 8 bits on Intel.
    #[error("{at}: event {event:#x} needs more than 8 bits, which Intel does not have (add `vendor = \"amd\"`)")]
    EventTooWideForIntel {
        /// Where.
        at: Loc,
        /// The event select.
        event: u16,
    },
}

impl Policy {
    /// The built-in default: the seven architectural events (cycles, instructions,
    /// ref-cycles, branches, branch-misses, cache-references, cache-misses) and the
    /// fixed counters that count them; AnyThread denied. Shipped as
    /// `resources/policies/default.toml`.
    pub fn default_architectural() -> Policy {
        Policy {
            action: Action::Allow,
            anythread: false,
            fixed_counters: FixedCounters::Named,
            events: events::ARCHITECTURAL_NAMES
                .iter()
                .map(|n| EventRule::named(n))
                .collect(),
            masked: Vec::new(),
        }
    }

    /// Check everything that does not depend on the vendor. [`Policy::from_toml`] calls
    /// this; call it yourself on a policy built in code (compile does, too).
    pub fn validate(&self) -> Result<(), PolicyError> {
        if let FixedCounters::List(list) = &self.fixed_counters {
            let mut seen = 0u64;
            for &i in list {
                if i > MAX_FIXED_COUNTER {
                    return Err(PolicyError::OutOfRange {
                        at: Loc(None),
                        field: "fixed_counters",
                        value: i.into(),
                        max: MAX_FIXED_COUNTER.into(),
                    });
                }
                if seen & (1 << i) != 0 {
                    return Err(PolicyError::DuplicateFixedCounter {
                        at: Loc(None),
                        index: i,
                    });
                }
                seen |= 1 << i;
            }
        }
        for r in &self.events {
            let at = Loc(r.line);
            match &r.spec {
                EventSpec::Named(name) => {
                    if !events::is_known_name(name) {
                        return Err(PolicyError::UnknownEvent {
                            at,
                            name: name.clone(),
                        });
                    }
                }
                EventSpec::Raw { event, .. } => check_event(at, *event)?,
            }
        }
        for r in &self.masked {
            let at = Loc(r.line);
            check_event(at, r.event)?;
            if r.umask_match & !r.umask_mask != 0 {
                return Err(PolicyError::MatchOutsideMask {
                    at,
                    umask_match: r.umask_match,
                    umask_mask: r.umask_mask,
                });
            }
        }
        Ok(())
    }
}

fn check_event(at: Loc, event: u16) -> Result<(), PolicyError> {
    if event > MAX_EVENT_SELECT {
        return Err(PolicyError::OutOfRange {
            at,
            field: "event",
            value: event.into(),
            max: MAX_EVENT_SELECT.into(),
        });
    }
    Ok(())
}
