//! Compiling a [`Policy`] for one vendor: the KVM filter and the in-VMM matcher.
//!
//! The matcher implements KVM's semantics (arch/x86/kvm/pmu.c, `is_gp_event_allowed`,
//! `filter_contains_match`, `is_fixed_event_allowed`):
//!
//! * every entry is a masked entry (a plain entry is one with mask 0xff and no exclude,
//!   which is what `convert_to_masked_filter` turns it into);
//! * a guest selector is *in the filter* iff some include entry has the same event
//!   select and `umask & mask == match`, and no exclude entry does;
//! * a GP event is allowed iff `(action == ALLOW) == in_filter`;
//! * fixed counter i is allowed iff `(action == ALLOW) == bit i of fixed_counter_bitmap`.
//!
//! The event select is the vendor's (`EVENTSEL_EVENT`): bits 7:0 on Intel, bits 7:0 and
//! 35:32 on AMD. Everything else in the selector is ignored by the filter.
//!
//! Hot path: one table lookup by event select gives a slot holding two 256-bit sets
//! (unit masks matched by an include entry / by an exclude entry); deciding is two bit
//! tests. The rule responsible for a denial is found only when denying, by scanning the
//! few entries of that event select. Nothing allocates.

use super::kvm::{
    encode_masked, encode_plain, KvmFilter, KVM_PMU_EVENT_ALLOW, KVM_PMU_EVENT_DENY,
    KVM_PMU_EVENT_FILTER_MAX_EVENTS, KVM_PMU_EVENT_FLAG_MASKED_EVENTS,
};
use super::{Action, EventSpec, FixedCounters, Loc, Policy, PolicyError};
use crate::config::{PmuConfig, Vendor};
use crate::events;
use crate::selector::{self, SelectorFault, VetOptions, Vetted};
use std::fmt;

/// Index of a compiled rule (see [`CompiledPolicy::rule`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleId(pub u16);

/// Why an event is denied. `Copy`, two words: cheap to return and to queue for audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// Allowlist policy and no rule lists the event.
    NotInAllowlist,
    /// Allowlist policy, an include rule lists the event but this exclude rule removes it.
    Excluded(RuleId),
    /// Denylist policy and this rule lists the event.
    Listed(RuleId),
    /// Intel AnyThread set and the policy does not permit it.
    AnyThread,
    /// Fixed counter not allowed by `fixed_counters` (or absent).
    FixedCounter(u8),
}

/// The verdict on a guest event selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The event may count.
    Allowed,
    /// The event must not count.
    Denied(DenyReason),
}

impl Decision {
    /// Whether the event may count.
    #[inline]
    pub const fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed)
    }
}

/// A compiled rule, for rendering audit messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    /// Source line, if the policy came from a file.
    pub line: Option<usize>,
    /// Human-readable description, e.g. `event "branch-misses" (0xc5/0x00)`.
    pub text: String,
}

impl fmt::Display for RuleInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{} (line {l})", self.text),
            None => f.write_str(&self.text),
        }
    }
}

/// One compiled entry, in the matcher's order (sorted by event select, then includes
/// before excludes, then rule order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    event: u16,
    umask_match: u8,
    umask_mask: u8,
    exclude: bool,
    rule: u16,
}

impl Entry {
    #[inline]
    fn matches(&self, umask: u8) -> bool {
        umask & self.umask_mask == self.umask_match
    }
}

/// All entries of one event select.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    /// Bit u: some include entry matches unit mask u.
    include: [u64; 4],
    /// Bit u: some exclude entry matches unit mask u.
    exclude: [u64; 4],
    /// Range of `entries`.
    start: u16,
    end: u16,
}

#[inline]
fn test(set: &[u64; 4], umask: u8) -> bool {
    (set[(umask >> 6) as usize] >> (umask & 63)) & 1 != 0
}

/// A policy compiled for one vendor and fixed-counter count.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    vendor: Vendor,
    action: Action,
    anythread: bool,
    num_fixed: u8,
    filter: KvmFilter,
    rules: Vec<RuleInfo>,
    entries: Vec<Entry>,
    /// Event select -> slot index + 1 (0: no entry). 256 (Intel) or 4096 (AMD) long.
    slot_of: Box<[u16]>,
    slots: Vec<Slot>,
    warnings: Vec<String>,
}

/// [`CompiledPolicy::check`]'s result: the vetted selector and the policy's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// The vetted selector.
    pub vetted: Vetted,
    /// The verdict.
    pub decision: Decision,
}

impl Checked {
    /// What to program: [`Vetted::hw_value`] if allowed, else the same with EN clear.
    #[inline]
    pub const fn hw_value(&self) -> u64 {
        match self.decision {
            Decision::Allowed => self.vetted.hw_value,
            Decision::Denied(_) => self.vetted.hw_value & !selector::bits::EN,
        }
    }
}

impl Policy {
    /// Compile for a guest of `vendor` with `num_fixed` fixed counters (AMD: ignored,
    /// there are none).
    ///
    /// Rules for the other vendor are skipped, as are named events the vendor does not
    /// have (`ref-cycles` on AMD; listed in [`CompiledPolicy::warnings`]). Fixed
    /// counters at or beyond `num_fixed` are dropped from the bitmap (a warning when
    /// listed explicitly): for the counters the guest has, that changes nothing.
    pub fn compile(&self, vendor: Vendor, num_fixed: u8) -> Result<CompiledPolicy, PolicyError> {
        let compiled = self.compile_once(vendor, num_fixed)?;
        // Perf pseudo-encodings (events::PERF_PSEUDO_ALIASES) count another event select's
        // event on a perf-backed counter: decide them at least as strictly as that event.
        let mut fixed = self.clone();
        let mut notes = Vec::new();
        for &(v, (pe, pu), (ce, cu)) in events::PERF_PSEUDO_ALIASES {
            if v != vendor
                || !compiled.decide(selector::encode(pe, pu)).is_allowed()
                || compiled.decide(selector::encode(ce, cu)).is_allowed()
            {
                continue;
            }
            let name = events::named_events(vendor)
                .iter()
                .find(|n| (n.event, n.umask) == (ce, cu))
                .map_or("?", |n| n.name);
            let label = Some(format!("perf pseudo-encoding of {name}"));
            match self.action {
                Action::Deny => {
                    // List it, and let no exclude reopen it.
                    fixed.masked.retain(|m| {
                        !(m.exclude && m.event == pe && pu & m.umask_mask == m.umask_match)
                    });
                    fixed.events.push(super::EventRule {
                        spec: EventSpec::Raw {
                            event: pe,
                            umask: pu,
                        },
                        vendor: Some(vendor),
                        label,
                        line: None,
                    });
                }
                Action::Allow => fixed.masked.push(super::MaskedRule {
                    event: pe,
                    umask_match: pu,
                    umask_mask: 0xff,
                    exclude: true,
                    vendor: Some(vendor),
                    label,
                    line: None,
                }),
            }
            notes.push(format!(
                "event {pe:#04x}/{pu:#04x} is perf's pseudo-encoding of \"{name}\" \
                 ({ce:#x}/{cu:#04x}), which a perf-backed counter counts as {name}; denied \
                 with {name}"
            ));
        }
        if notes.is_empty() {
            return Ok(compiled);
        }
        let mut compiled = fixed.compile_once(vendor, num_fixed)?;
        compiled.warnings.extend(notes);
        Ok(compiled)
    }

    fn compile_once(&self, vendor: Vendor, num_fixed: u8) -> Result<CompiledPolicy, PolicyError> {
        self.validate()?;
        let num_fixed = match vendor {
            Vendor::Intel => num_fixed.min(32),
            Vendor::Amd => 0,
        };
        let applies = |v: Option<Vendor>| v.is_none() || v == Some(vendor);

        let mut warnings = Vec::new();
        let mut named_fixed = 0u32;
        // (where, entry, text) before encoding: whether the filter is masked depends on
        // every entry (an alias-covering entry needs the masked encoding).
        let mut pending: Vec<(Loc, Entry, String)> = Vec::new();

        for r in self.events.iter().filter(|r| applies(r.vendor)) {
            let at = Loc(r.line);
            let (event, umask, text) = match &r.spec {
                EventSpec::Named(name) => match events::lookup(vendor, name) {
                    Some(ne) => (
                        ne.event,
                        ne.umask,
                        format!("event \"{}\" ({:#x}/{:#04x})", ne.name, ne.event, ne.umask),
                    ),
                    None => {
                        warnings.push(format!(
                            "{at}: event \"{name}\" has no {vendor:?} encoding; rule skipped"
                        ));
                        continue;
                    }
                },
                EventSpec::Raw { event, umask } => {
                    (*event, *umask, format!("event {event:#x}/{umask:#04x}"))
                }
            };
            let text = match &r.label {
                Some(l) => format!("{text} \"{l}\""),
                None => text,
            };
            if vendor == Vendor::Intel {
                if let Some(i) = events::intel_fixed_counter_for(event, umask) {
                    named_fixed |= 1 << i;
                }
            }
            let entry = Entry {
                event,
                umask_match: umask,
                umask_mask: 0xff,
                exclude: false,
                rule: 0,
            };
            if let Some(e) = cover_aliases(vendor, self.action, at, entry, false, &mut warnings) {
                pending.push((at, e, text));
            }
        }
        for m in self.masked.iter().filter(|m| applies(m.vendor)) {
            let at = Loc(m.line);
            let text = format!(
                "masked {} {:#x} umask&{:#04x}=={:#04x}",
                if m.exclude { "exclude" } else { "include" },
                m.event,
                m.umask_mask,
                m.umask_match
            );
            let text = match &m.label {
                Some(l) => format!("{text} \"{l}\""),
                None => text,
            };
            let entry = Entry {
                event: m.event,
                umask_match: m.umask_match,
                umask_mask: m.umask_mask,
                exclude: m.exclude,
                rule: 0,
            };
            if let Some(e) = cover_aliases(vendor, self.action, at, entry, true, &mut warnings) {
                pending.push((at, e, text));
            }
        }

        let masked_mode = self.masked.iter().any(|m| applies(m.vendor))
            || pending
                .iter()
                .any(|(_, e, _)| e.umask_mask != 0xff || e.exclude);
        let mut rules = Vec::new();
        let mut entries = Vec::new();
        let mut kvm_events = Vec::new();
        for (at, entry, text) in pending {
            if vendor == Vendor::Intel && entry.event > 0xff {
                return Err(PolicyError::EventTooWideForIntel {
                    at,
                    event: entry.event,
                });
            }
            if entries.len() >= KVM_PMU_EVENT_FILTER_MAX_EVENTS {
                return Err(PolicyError::TooManyEntries {
                    at,
                    vendor,
                    count: entries.len() + 1,
                });
            }
            let id = u16::try_from(rules.len()).unwrap_or(u16::MAX); // < 300
            rules.push(RuleInfo { line: at.0, text });
            entries.push(Entry { rule: id, ..entry });
            kvm_events.push(if masked_mode {
                encode_masked(
                    entry.event,
                    entry.umask_match,
                    entry.umask_mask,
                    entry.exclude,
                )
            } else {
                encode_plain(entry.event, entry.umask_match)
            });
        }

        let present = if num_fixed >= 32 {
            u32::MAX
        } else {
            (1u32 << num_fixed) - 1
        };
        let fixed_counter_bitmap = match &self.fixed_counters {
            FixedCounters::Named => named_fixed & present,
            FixedCounters::List(list) => {
                let mut bm = 0u32;
                for &i in list {
                    if u32::from(i) < 32 {
                        bm |= 1 << i;
                    }
                    if vendor == Vendor::Intel && i >= num_fixed {
                        warnings.push(format!(
                            "fixed counter {i} listed but the guest has {num_fixed}; ignored"
                        ));
                    }
                }
                bm & present
            }
        };

        let filter = KvmFilter {
            action: match self.action {
                Action::Allow => KVM_PMU_EVENT_ALLOW,
                Action::Deny => KVM_PMU_EVENT_DENY,
            },
            fixed_counter_bitmap,
            flags: if masked_mode {
                KVM_PMU_EVENT_FLAG_MASKED_EVENTS
            } else {
                0
            },
            events: kvm_events,
        };

        // Matcher tables.
        entries.sort_by_key(|e| (e.event, e.exclude, e.rule));
        let table_len = match vendor {
            Vendor::Intel => 0x100,
            Vendor::Amd => 0x1000,
        };
        let mut slot_of = vec![0u16; table_len].into_boxed_slice();
        let mut slots: Vec<Slot> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let i = u16::try_from(i).unwrap_or(u16::MAX); // < 300
            let idx = usize::from(e.event);
            let cur = slot_of.get(idx).copied().unwrap_or(0);
            let slot_idx = if cur == 0 {
                slots.push(Slot {
                    include: [0; 4],
                    exclude: [0; 4],
                    start: i,
                    end: i,
                });
                let n = u16::try_from(slots.len()).unwrap_or(u16::MAX); // <= 300
                if let Some(s) = slot_of.get_mut(idx) {
                    *s = n;
                }
                n
            } else {
                cur
            };
            if let Some(slot) = slots.get_mut(usize::from(slot_idx) - 1) {
                slot.end = i + 1;
                let set = if e.exclude {
                    &mut slot.exclude
                } else {
                    &mut slot.include
                };
                for u in 0..=255u8 {
                    if e.matches(u) {
                        set[usize::from(u >> 6)] |= 1 << (u & 63);
                    }
                }
            }
        }

        let mut compiled = CompiledPolicy {
            vendor,
            action: self.action,
            anythread: self.anythread,
            num_fixed,
            filter,
            rules,
            entries,
            slot_of,
            slots,
            warnings,
        };
        compiled.tie_fixed_counters(&self.fixed_counters);
        Ok(compiled)
    }

    /// Compile for the guest PMU `cfg`; `None` when the guest has no PMU.
    pub fn compile_for(&self, cfg: &PmuConfig) -> Result<Option<CompiledPolicy>, PolicyError> {
        match cfg {
            PmuConfig::None => Ok(None),
            PmuConfig::Intel(i) => self.compile(Vendor::Intel, i.num_fixed).map(Some),
            PmuConfig::Amd(_) => self.compile(Vendor::Amd, 0).map(Some),
        }
    }
}

/// Makes `entry` cover the unit-mask aliases of its event ([`events::UMASK_ALIASES`]):
/// a selector whose unit mask differs only in bits the event does not define counts the
/// same thing, so the policy must decide it the same way, or more strictly. `None`: the
/// rule can never match an encoding the hardware distinguishes and is dropped (only where
/// dropping it denies more, never less). Events that define every unit-mask bit are left
/// as written.
///
/// With `D` the event's defined bits and a rule `umask & mask == match`:
/// * deny-list includes, allow-list excludes and deny-list excludes (whatever makes or
///   keeps an event denied, and whatever could reopen one) are matched on the counted
///   event: `umask & (mask & D) == match`, i.e. every alias;
/// * allow-list includes stay exact (an allow never reaches further than written; an
///   alias of an allowed event is denied, which is stricter), but a `[[event]]` unit mask
///   with undefined bits is reduced to the event's canonical encoding (with a warning);
/// * a masked rule whose `match` has undefined bits never matches a counted event: an
///   allow-list include or a deny-list exclude of that kind is dropped (it would only
///   ever allow an alias), a deny-list include or allow-list exclude stays exact.
fn cover_aliases(
    vendor: Vendor,
    action: Action,
    at: Loc,
    entry: Entry,
    masked: bool,
    warnings: &mut Vec<String>,
) -> Option<Entry> {
    let defined = events::defined_umask_bits(vendor, entry.event);
    if defined == 0xff {
        return Some(entry);
    }
    let allow_include = action == Action::Allow && !entry.exclude;
    if !masked {
        // An [[event]] rule: one exact unit mask.
        let canonical = entry.umask_match & defined;
        if canonical != entry.umask_match {
            warnings.push(format!(
                "{at}: event {:#x} does not define unit mask bits {:#04x} on {vendor:?} (the \
                 hardware ignores them); the rule means {:#x}/{canonical:#04x}",
                entry.event,
                entry.umask_match & !defined,
                entry.event,
            ));
        }
        return Some(if allow_include {
            Entry {
                umask_match: canonical,
                ..entry
            }
        } else {
            Entry {
                umask_match: canonical,
                umask_mask: defined,
                ..entry
            }
        });
    }
    let deny_exclude = action == Action::Deny && entry.exclude;
    if entry.umask_match & !defined != 0 {
        if allow_include || deny_exclude {
            warnings.push(format!(
                "{at}: masked rule for event {:#x} matches only unit mask bits the event does \
                 not define on {vendor:?}; dropped (it could only reopen an alias)",
                entry.event
            ));
            return None;
        }
        return Some(entry);
    }
    if allow_include {
        return Some(entry);
    }
    Some(Entry {
        umask_mask: entry.umask_mask & defined,
        ..entry
    })
}

impl CompiledPolicy {
    /// A fixed counter counts an event (instructions, cycles, ref-cycles, topdown slots)
    /// that KVM's filter judges by `fixed_counter_bitmap` alone. Where the policy denies
    /// that event as a GP event, deny the fixed counter too, unless an allow-list names it
    /// explicitly in `fixed_counters` (then it stays allowed); warn either way.
    fn tie_fixed_counters(&mut self, fixed: &FixedCounters) {
        if self.vendor != Vendor::Intel {
            return;
        }
        for f in events::INTEL_FIXED_COUNTERS.iter() {
            let i = f.index;
            if i >= self.num_fixed || !self.decide_fixed(i) {
                continue;
            }
            let (ev, um) = (f.event.event, f.event.umask);
            if self.decide(selector::encode(ev, um)).is_allowed() {
                continue;
            }
            let name = f.event.name;
            let explicit = matches!(fixed, FixedCounters::List(l) if l.contains(&i));
            if self.action == Action::Allow && explicit {
                self.warnings.push(format!(
                    "fixed counter {i} is allowed explicitly by fixed_counters although its \
                     event \"{name}\" ({ev:#x}/{um:#04x}) is denied: the guest can count \
                     {name} on fixed counter {i}"
                ));
                continue;
            }
            match self.action {
                Action::Allow => self.filter.fixed_counter_bitmap &= !(1 << i),
                Action::Deny => self.filter.fixed_counter_bitmap |= 1 << i,
            }
            self.warnings.push(format!(
                "fixed counter {i} counts \"{name}\" ({ev:#x}/{um:#04x}), which the policy \
                 denies: fixed counter {i} is denied too{}",
                if self.action == Action::Allow {
                    " (list it in fixed_counters to allow it anyway)"
                } else {
                    ""
                }
            ));
        }
    }

    /// The vendor compiled for.
    pub fn vendor(&self) -> Vendor {
        self.vendor
    }

    /// The policy's action.
    pub fn action(&self) -> Action {
        self.action
    }

    /// Whether AnyThread is permitted.
    pub fn anythread_allowed(&self) -> bool {
        self.anythread
    }

    /// The guest's fixed-counter count this was compiled for.
    pub fn num_fixed(&self) -> u8 {
        self.num_fixed
    }

    /// Vetting options implied by the policy (AnyThread); set `intel_in_tx` yourself
    /// for a guest shown TSX.
    pub fn vet_options(&self) -> VetOptions {
        VetOptions {
            allow_anythread: self.anythread,
            intel_in_tx: false,
        }
    }

    /// The filter for `KVM_SET_PMU_EVENT_FILTER` (at most 300 entries by construction).
    pub fn kvm_filter(&self) -> KvmFilter {
        self.filter.clone()
    }

    /// The filter, borrowed.
    pub fn kvm_filter_ref(&self) -> &KvmFilter {
        &self.filter
    }

    /// Whether the KVM filter needs `KVM_CAP_PMU_EVENT_MASKED_EVENTS`.
    pub fn requires_masked_events_cap(&self) -> bool {
        self.filter.requires_masked_events_cap()
    }

    /// Non-fatal remarks from compiling (skipped rules, absent fixed counters).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// All compiled rules; [`RuleId`] indexes this.
    pub fn rules(&self) -> &[RuleInfo] {
        &self.rules
    }

    /// One compiled rule.
    pub fn rule(&self, id: RuleId) -> Option<&RuleInfo> {
        self.rules.get(usize::from(id.0))
    }

    #[inline]
    fn slot(&self, evtsel: u64) -> Option<&Slot> {
        let ev = usize::from(selector::event_select(self.vendor, evtsel));
        match self.slot_of.get(ev).copied() {
            None | Some(0) => None,
            Some(n) => self.slots.get(usize::from(n) - 1),
        }
    }

    /// KVM's "is this selector in the filter" (include match and no exclude match).
    #[inline]
    pub fn in_filter(&self, evtsel: u64) -> bool {
        let umask = selector::unit_mask(evtsel);
        match self.slot(evtsel) {
            None => false,
            Some(s) => test(&s.include, umask) && !test(&s.exclude, umask),
        }
    }

    /// Decide a GP event selector, exactly as KVM's filter would (only the event select
    /// and unit mask are looked at; vet the selector first, see [`Self::check`]).
    #[inline]
    pub fn decide(&self, evtsel: u64) -> Decision {
        let in_filter = self.in_filter(evtsel);
        if (self.action == Action::Allow) == in_filter {
            Decision::Allowed
        } else {
            Decision::Denied(self.deny_reason(evtsel))
        }
    }

    #[cold]
    fn deny_reason(&self, evtsel: u64) -> DenyReason {
        let umask = selector::unit_mask(evtsel);
        let entries: &[Entry] = self
            .slot(evtsel)
            .and_then(|s| self.entries.get(usize::from(s.start)..usize::from(s.end)))
            .unwrap_or(&[]);
        let first = |exclude: bool| {
            entries
                .iter()
                .find(|e| e.exclude == exclude && e.matches(umask))
                .map(|e| RuleId(e.rule))
        };
        match self.action {
            Action::Deny => match first(false) {
                Some(id) => DenyReason::Listed(id),
                // Not reachable when called from `decide` (a denial under a denylist
                // means an include entry matched); kept total.
                None => DenyReason::NotInAllowlist,
            },
            Action::Allow => match (first(false), first(true)) {
                (Some(_), Some(ex)) => DenyReason::Excluded(ex),
                _ => DenyReason::NotInAllowlist,
            },
        }
    }

    /// Decide fixed counter `idx` by the bitmap, as KVM does. A counter the guest does
    /// not have (`idx >= num_fixed`) is never allowed.
    #[inline]
    pub fn decide_fixed(&self, idx: u8) -> bool {
        if idx >= self.num_fixed || idx >= 32 {
            return false;
        }
        let listed = (self.filter.fixed_counter_bitmap >> idx) & 1 != 0;
        (self.action == Action::Allow) == listed
    }

    /// [`Self::decide_fixed`] as a [`Decision`].
    #[inline]
    pub fn decide_fixed_decision(&self, idx: u8) -> Decision {
        if self.decide_fixed(idx) {
            Decision::Allowed
        } else {
            Decision::Denied(DenyReason::FixedCounter(idx))
        }
    }

    /// Vet and decide a guest write to a GP event selector: `Err` means inject #GP;
    /// otherwise program [`Checked::hw_value`], let the guest read back
    /// `vetted.guest_value`, and audit a [`Decision::Denied`].
    #[inline]
    pub fn check(&self, raw: u64) -> Result<Checked, SelectorFault> {
        let vetted = selector::vet(self.vendor, raw, &self.vet_options())?;
        let decision = if vetted.anythread_denied {
            Decision::Denied(DenyReason::AnyThread)
        } else {
            self.decide(raw)
        };
        Ok(Checked { vetted, decision })
    }

    /// Render a denial for the audit log.
    pub fn describe(&self, reason: DenyReason) -> Describe<'_> {
        Describe {
            policy: self,
            reason,
        }
    }
}

/// Display adapter from [`CompiledPolicy::describe`].
pub struct Describe<'a> {
    policy: &'a CompiledPolicy,
    reason: DenyReason,
}

impl fmt::Display for Describe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rule = |id: RuleId| self.policy.rule(id);
        match self.reason {
            DenyReason::NotInAllowlist => f.write_str("not in allowlist"),
            DenyReason::Excluded(id) => match rule(id) {
                Some(r) => write!(f, "excluded by {r}"),
                None => write!(f, "excluded by rule #{}", id.0),
            },
            DenyReason::Listed(id) => match rule(id) {
                Some(r) => write!(f, "denied by {r}"),
                None => write!(f, "denied by rule #{}", id.0),
            },
            DenyReason::AnyThread => f.write_str("AnyThread not permitted by policy"),
            DenyReason::FixedCounter(i) => {
                write!(f, "fixed counter {i} not allowed by policy")?;
                // Say when it follows its event (see `tie_fixed_counters`).
                match events::INTEL_FIXED_COUNTERS.get(usize::from(i)) {
                    Some(fc)
                        if self.policy.vendor == Vendor::Intel
                            && !self
                                .policy
                                .decide(selector::encode(fc.event.event, fc.event.umask))
                                .is_allowed() =>
                    {
                        write!(f, " (its event \"{}\" is denied)", fc.event.name)
                    }
                    _ => Ok(()),
                }
            }
        }
    }
}
