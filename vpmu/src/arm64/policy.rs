//! The operator's event allowlist on arm64: the TOML format of `docs/POLICY.md` with
//! PMUv3 events ([`super::events`] names or raw 16-bit numbers), compiled to KVM's arm64
//! filter ([`super::filter`]). Errors name the line.
//!
//! ```toml
//! action = "allow"          # or "deny" (default "allow")
//! cycle_counter = "allow"   # optional: must agree with event 0x11 (see below)
//! [[event]]
//! name = "cycles"
//! [[event]]
//! event = 0x08              # raw PMUv3 event number (0..=0xffff)
//! label = "instructions"
//! ```
//!
//! The x86-only keys (`umask`, `vendor`, `fixed_counters`, `anythread`, `[[masked]]`) are
//! errors here, naming their line: an arm64 policy is its own file.
//!
//! The cycle counter: KVM filters PMCCNTR_EL0 as event 0x11 (pmu-emul.c
//! `kvm_pmu_create_perf_event`: `if (pmc->idx == ARMV8_PMU_CYCLE_IDX) eventsel =
//! ARMV8_PMUV3_PERFCTR_CPU_CYCLES;`; vcpu.rst: "Filtering the cycle counter is possible
//! using event 0x11 (CPU_CYCLES)."). There is no separate switch, so the policy's verdict on
//! `cycles` is the cycle counter's. `cycle_counter = "allow" | "deny"` states the choice
//! explicitly; a value that disagrees with the verdict on 0x11 is an error.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;

use super::events;
use super::filter::{EventSet, FilterRange};

/// Largest arm64 policy file (as on x86).
pub const MAX_POLICY_BYTES: u64 = 4 << 20;

/// What the listed events get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    /// Listed events count, all others are denied.
    #[default]
    Allow,
    /// Listed events are denied, all others count.
    Deny,
}

/// One `[[event]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The PMUv3 event number.
    pub event: u16,
    /// The name it was given by, or the label.
    pub label: Option<String>,
    /// 1-based line of the rule.
    pub line: usize,
}

/// A parsed arm64 policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Arm64Policy {
    /// Allowlist or denylist.
    pub action: Action,
    /// The rules.
    pub rules: Vec<Rule>,
    /// `cycle_counter`, when given.
    pub cycle_counter: Option<bool>,
}

/// A policy error; `line` is 1-based (0 when unknown).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("policy line {line}: {msg}")]
pub struct PolicyError {
    /// Where.
    pub line: usize,
    /// What.
    pub msg: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    action: Option<Spanned<String>>,
    cycle_counter: Option<Spanned<String>>,
    #[serde(default)]
    event: Vec<Spanned<RawEvent>>,
    // Keys of the x86 format, rejected with their line.
    anythread: Option<Spanned<toml::Value>>,
    fixed_counters: Option<Spanned<toml::Value>>,
    masked: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    name: Option<Spanned<String>>,
    event: Option<Spanned<i64>>,
    label: Option<String>,
    umask: Option<Spanned<toml::Value>>,
    vendor: Option<Spanned<toml::Value>>,
}

fn line_of(src: &str, pos: usize) -> usize {
    src.as_bytes()[..pos.min(src.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl Arm64Policy {
    /// Parses and validates a policy.
    pub fn from_toml(src: &str) -> Result<Self, PolicyError> {
        let err = |pos: usize, msg: String| PolicyError {
            line: line_of(src, pos),
            msg,
        };
        let raw: Raw = toml::from_str(src).map_err(|e| PolicyError {
            line: e.span().map_or(0, |s| line_of(src, s.start)),
            msg: e.message().to_string(),
        })?;
        for (key, v) in [
            ("anythread", &raw.anythread),
            ("fixed_counters", &raw.fixed_counters),
            ("masked", &raw.masked),
        ] {
            if let Some(v) = v {
                return Err(err(
                    v.span().start,
                    format!("`{key}` is x86-only; an arm64 policy has action, cycle_counter and [[event]] rules"),
                ));
            }
        }
        let action = match &raw.action {
            None => Action::Allow,
            Some(a) => match a.get_ref().as_str() {
                "allow" => Action::Allow,
                "deny" => Action::Deny,
                other => {
                    return Err(err(
                        a.span().start,
                        format!("action {other:?}: expected \"allow\" or \"deny\""),
                    ))
                }
            },
        };
        let mut rules = Vec::with_capacity(raw.event.len());
        let mut seen: BTreeMap<u16, usize> = BTreeMap::new();
        for ev in &raw.event {
            let line = line_of(src, ev.span().start);
            let e = ev.get_ref();
            if let Some(u) = &e.umask {
                return Err(err(
                    u.span().start,
                    "`umask` is x86-only: PMUv3 events are a single number".into(),
                ));
            }
            if let Some(v) = &e.vendor {
                return Err(err(
                    v.span().start,
                    "`vendor` is x86-only: an arm64 policy is its own file".into(),
                ));
            }
            let (number, label) = match (&e.name, &e.event) {
                (Some(n), None) => match events::by_name(n.get_ref()) {
                    Some(ev) => (ev.number, Some(n.get_ref().clone())),
                    None => {
                        let known: Vec<&str> = events::EVENTS.iter().map(|e| e.name).collect();
                        return Err(err(
                            n.span().start,
                            format!(
                                "unknown arm64 event name {:?} (known: {}; or a raw `event = 0x..`)",
                                n.get_ref(),
                                known.join(", ")
                            ),
                        ));
                    }
                },
                (None, Some(v)) => match u16::try_from(*v.get_ref()) {
                    Ok(n) => (n, e.label.clone()),
                    Err(_) => {
                        return Err(err(
                            v.span().start,
                            format!("event {}: a PMUv3 event number is 0..=0xffff", v.get_ref()),
                        ))
                    }
                },
                (Some(_), Some(_)) => {
                    return Err(PolicyError {
                        line,
                        msg: "an [[event]] has either `name` or `event`, not both".into(),
                    })
                }
                (None, None) => {
                    return Err(PolicyError {
                        line,
                        msg: "an [[event]] needs `name` or `event`".into(),
                    })
                }
            };
            if let Some(first) = seen.insert(number, line) {
                return Err(PolicyError {
                    line,
                    msg: format!(
                        "{} is already listed on line {first}",
                        events::describe(number)
                    ),
                });
            }
            rules.push(Rule {
                event: number,
                label: e.label.clone().or(label),
                line,
            });
        }
        let mut p = Arm64Policy {
            action,
            rules,
            cycle_counter: None,
        };
        if let Some(c) = &raw.cycle_counter {
            let want = match c.get_ref().as_str() {
                "allow" => true,
                "deny" => false,
                other => {
                    return Err(err(
                        c.span().start,
                        format!("cycle_counter {other:?}: expected \"allow\" or \"deny\""),
                    ))
                }
            };
            if want != p.allows(events::CPU_CYCLES) {
                return Err(err(
                    c.span().start,
                    format!(
                        "cycle_counter = {:?} but the rules {} event 0x11 (cycles): KVM filters the \
                         cycle counter PMCCNTR_EL0 as event 0x11, so they must agree",
                        c.get_ref(),
                        if want { "deny" } else { "allow" }
                    ),
                ));
            }
            p.cycle_counter = Some(want);
        }
        Ok(p)
    }

    /// Whether the policy lets `event` count (the in-VMM matcher; same answer as KVM's
    /// bitmap built from [`Self::compile`] for events inside the host's event space).
    pub fn allows(&self, event: u16) -> bool {
        let listed = self.rules.iter().any(|r| r.event == event);
        match self.action {
            Action::Allow => listed,
            Action::Deny => !listed,
        }
    }

    /// The allowed set over the host's `nr_events` (1024 or 65536). A rule naming an event
    /// outside that space is an error (KVM would refuse the range).
    pub fn compile(&self, nr_events: u32) -> Result<Compiled, PolicyError> {
        if let Some(r) = self.rules.iter().find(|r| u32::from(r.event) >= nr_events) {
            return Err(PolicyError {
                line: r.line,
                msg: format!(
                    "{} is outside this host's PMUv3 event space (0..0x{nr_events:x}: KVM's filter \
                     has {nr_events} events)",
                    events::describe(r.event)
                ),
            });
        }
        let mut set = match self.action {
            Action::Allow => EventSet::none(nr_events),
            Action::Deny => EventSet::all(nr_events),
        };
        for r in &self.rules {
            set.set(u32::from(r.event), self.action == Action::Allow);
        }
        Ok(Compiled {
            ranges: set.to_ranges(),
            set,
        })
    }
}

/// A policy compiled for one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// What counts.
    pub set: EventSet,
    /// The KVM_ARM_VCPU_PMU_V3_FILTER calls, in order (empty: no filter).
    pub ranges: Vec<FilterRange>,
}

impl Compiled {
    /// Whether `event` counts (events outside the space do not).
    pub fn allows(&self, event: u16) -> bool {
        self.set.contains(u32::from(event))
    }
}

impl fmt::Display for Compiled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ranges.is_empty() {
            return write!(f, "no filter (every event counts)");
        }
        let r: Vec<String> = self.ranges.iter().map(|r| r.to_string()).collect();
        write!(
            f,
            "{} range(s): {}; cycle counter {}",
            r.len(),
            r.join(", "),
            if self.allows(events::CPU_CYCLES) {
                "counts"
            } else {
                "denied (follows 0x11)"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arm64::filter::NR_EVENTS_PMUV3;

    #[test]
    fn allowlist_by_name_and_raw() {
        let p = Arm64Policy::from_toml(
            "action = \"allow\"\n[[event]]\nname = \"cycles\"\n[[event]]\nevent = 0x21\nlabel = \"br\"\n",
        )
        .unwrap();
        assert!(p.allows(0x11) && p.allows(0x21) && !p.allows(0x08));
        let c = p.compile(NR_EVENTS_PMUV3).unwrap();
        assert_eq!(c.ranges.len(), 2);
        assert_eq!(c.set.pmceid_mask(0), 1 << 0x11);
        assert_eq!(c.set.pmceid_mask(32), 1 << 1);
        assert!(c.to_string().contains("cycle counter counts"));
    }

    #[test]
    fn denylist_and_cycle_counter() {
        let src =
            "action = \"deny\"\ncycle_counter = \"allow\"\n[[event]]\nname = \"instructions\"\n";
        let p = Arm64Policy::from_toml(src).unwrap();
        assert_eq!(p.cycle_counter, Some(true));
        assert!(!p.allows(0x08) && p.allows(0x11));
        let bad = "action = \"deny\"\ncycle_counter = \"allow\"\n[[event]]\nname = \"cycles\"\n";
        let e = Arm64Policy::from_toml(bad).unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.msg.contains("PMCCNTR_EL0"), "{e}");
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            (
                "[[event]]\nname = \"cycles\"\n\n[[event]]\nname = \"nope\"\n",
                5,
                "unknown arm64 event",
            ),
            ("[[event]]\nevent = 0x10000\n", 2, "0..=0xffff"),
            ("[[event]]\nevent = 8\numask = 1\n", 3, "x86-only"),
            (
                "[[event]]\nevent = 8\n[[event]]\nname = \"instructions\"\n",
                3,
                "already listed on line 1",
            ),
            ("action = \"maybe\"\n", 1, "expected"),
            ("\nfixed_counters = [0]\n", 2, "x86-only"),
            ("[[event]]\nlabel = \"x\"\n", 1, "needs"),
            ("\n\nbogus = 1\n", 3, "unknown field"),
        ];
        for (src, line, what) in cases {
            let e = Arm64Policy::from_toml(src).unwrap_err();
            assert_eq!(e.line, line, "{src:?}: {e}");
            assert!(e.msg.contains(what), "{src:?}: {e}");
        }
    }

    #[test]
    fn event_outside_the_host_space() {
        let p = Arm64Policy::from_toml("[[event]]\nevent = 0x4011\n").unwrap();
        let e = p.compile(NR_EVENTS_PMUV3).unwrap_err();
        assert_eq!(e.line, 1);
        assert!(p.compile(1 << 16).is_ok());
    }

    #[test]
    fn shipped_arm64_policies_parse_and_compile() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/policies/arm64");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("resources/policies/arm64") {
            let path = entry.expect("entry").path();
            let src = std::fs::read_to_string(&path).expect("read");
            let p =
                Arm64Policy::from_toml(&src).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            p.compile(NR_EVENTS_PMUV3).expect("compiles");
            if path.ends_with("default.toml") {
                // The built-in policy (vmm's default_policy) lists exactly the named events.
                let mut listed: Vec<u16> = p.rules.iter().map(|r| r.event).collect();
                let mut named: Vec<u16> = events::EVENTS.iter().map(|e| e.number).collect();
                listed.sort_unstable();
                named.sort_unstable();
                assert_eq!(listed, named);
            }
            n += 1;
        }
        assert!(n >= 3);
    }

    /// The ```toml arm64 blocks of docs/POLICY.md parse and compile (the x86 test reads
    /// the plain ```toml blocks).
    #[test]
    fn policy_md_arm64_examples_parse() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/POLICY.md");
        let doc = std::fs::read_to_string(path).expect("docs/POLICY.md");
        let mut n = 0;
        let mut cur: Option<String> = None;
        for line in doc.lines() {
            match (&mut cur, line.trim_start()) {
                (None, "```toml arm64") => cur = Some(String::new()),
                (Some(b), "```") => {
                    let p = Arm64Policy::from_toml(b).unwrap_or_else(|e| panic!("{e}\n{b}"));
                    p.compile(NR_EVENTS_PMUV3).expect("compiles");
                    n += 1;
                    cur = None;
                }
                (Some(b), _) => {
                    b.push_str(line);
                    b.push('\n');
                }
                (None, _) => {}
            }
        }
        assert!(n >= 1);
    }

    #[test]
    fn empty_allowlist_denies_everything() {
        let c = Arm64Policy::from_toml("action = \"allow\"\n")
            .unwrap()
            .compile(NR_EVENTS_PMUV3)
            .unwrap();
        assert_eq!(c.ranges.len(), 1);
        assert!(!c.allows(0x11));
    }
}
