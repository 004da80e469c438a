//! TOML reading and writing of [`Policy`].

use super::{
    Action, EventRule, EventSpec, FixedCounters, Loc, MaskedRule, Policy, PolicyError,
    MAX_EVENT_SELECT, MAX_FIXED_COUNTER,
};
use crate::config::Vendor;
use serde::Deserialize;
use std::fmt::Write as _;
use std::ops::Range;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    action: Option<RawAction>,
    #[serde(default)]
    anythread: Option<bool>,
    #[serde(default)]
    fixed_counters: Option<Spanned<toml::Value>>,
    #[serde(default)]
    event: Vec<Spanned<RawEvent>>,
    #[serde(default)]
    masked: Vec<Spanned<RawMasked>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawAction {
    Allow,
    Deny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    name: Option<Spanned<String>>,
    event: Option<Spanned<i64>>,
    umask: Option<Spanned<i64>>,
    vendor: Option<Vendor>,
    label: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMasked {
    event: Spanned<i64>,
    umask_match: Spanned<i64>,
    umask_mask: Spanned<i64>,
    #[serde(default)]
    exclude: bool,
    vendor: Option<Vendor>,
    label: Option<String>,
}

/// Line numbers of byte offsets in a source, from a single pass over it: the offsets at
/// which lines start, then a binary search per lookup. (Counting newlines from the start
/// for every rule made parsing quadratic: 40k rules took ~33 s.)
struct Lines {
    /// Byte offset of the start of every line but the first (just past each `\n`).
    starts: Vec<usize>,
}

impl Lines {
    fn new(src: &str) -> Self {
        #[cfg(test)]
        tests::SCANNED.with(|n| n.set(n.get() + src.len()));
        Lines {
            starts: src
                .bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i + 1)
                .collect(),
        }
    }

    /// 1-based line of byte offset `pos` (offsets past the end are on the last line).
    fn line(&self, pos: usize) -> usize {
        self.starts.partition_point(|&start| start <= pos) + 1
    }

    fn at(&self, span: Range<usize>) -> Loc {
        Loc(Some(self.line(span.start)))
    }
}

fn ranged<T: TryFrom<i64>>(
    lines: &Lines,
    v: &Spanned<i64>,
    field: &'static str,
    max: u32,
) -> Result<T, PolicyError> {
    let value = *v.get_ref();
    let err = || PolicyError::OutOfRange {
        at: lines.at(v.span()),
        field,
        value,
        max,
    };
    if value < 0 || value > i64::from(max) {
        return Err(err());
    }
    T::try_from(value).map_err(|_| err())
}

impl Policy {
    /// Parse and validate a TOML policy. Every error names the line it is about.
    pub fn from_toml(src: &str) -> Result<Policy, PolicyError> {
        let lines = Lines::new(src);
        let raw: RawPolicy = toml::from_str(src).map_err(|e| PolicyError::Toml {
            at: Loc(e.span().map(|s| lines.line(s.start))),
            message: e.message().trim().to_string(),
        })?;

        let fixed_counters = match &raw.fixed_counters {
            None => FixedCounters::Named,
            Some(v) => {
                let at = lines.at(v.span());
                match v.get_ref() {
                    toml::Value::String(s) if s == "named" => FixedCounters::Named,
                    toml::Value::Array(items) => {
                        let mut list = Vec::with_capacity(items.len());
                        let mut seen = 0u64;
                        for item in items {
                            let idx = match item {
                                toml::Value::Integer(i) => *i,
                                other => {
                                    return Err(PolicyError::BadFixedCounters {
                                        at,
                                        got: other.to_string(),
                                    })
                                }
                            };
                            if !(0..=i64::from(MAX_FIXED_COUNTER)).contains(&idx) {
                                return Err(PolicyError::OutOfRange {
                                    at,
                                    field: "fixed_counters",
                                    value: idx,
                                    max: MAX_FIXED_COUNTER.into(),
                                });
                            }
                            let idx = u8::try_from(idx).unwrap_or(u8::MAX); // 0..=31 checked above
                            if seen & (1 << idx) != 0 {
                                return Err(PolicyError::DuplicateFixedCounter { at, index: idx });
                            }
                            seen |= 1 << idx;
                            list.push(idx);
                        }
                        FixedCounters::List(list)
                    }
                    other => {
                        return Err(PolicyError::BadFixedCounters {
                            at,
                            got: other.to_string(),
                        })
                    }
                }
            }
        };

        let mut events = Vec::with_capacity(raw.event.len());
        for e in &raw.event {
            let at = lines.at(e.span());
            let r = e.get_ref();
            let spec = match (&r.name, &r.event) {
                (Some(_), Some(_)) => return Err(PolicyError::NameAndEvent { at }),
                (None, None) => return Err(PolicyError::NoEvent { at }),
                (Some(name), None) => {
                    if let Some(u) = &r.umask {
                        return Err(PolicyError::UmaskWithName {
                            at: lines.at(u.span()),
                        });
                    }
                    match crate::events::canonical_name(name.get_ref()) {
                        Some(canon) => EventSpec::Named(canon.to_string()),
                        None => {
                            return Err(PolicyError::UnknownEvent {
                                at: lines.at(name.span()),
                                name: name.get_ref().clone(),
                            })
                        }
                    }
                }
                (None, Some(ev)) => EventSpec::Raw {
                    event: ranged(&lines, ev, "event", MAX_EVENT_SELECT.into())?,
                    umask: match &r.umask {
                        Some(u) => ranged(&lines, u, "umask", 0xff)?,
                        None => 0,
                    },
                },
            };
            events.push(EventRule {
                spec,
                vendor: r.vendor,
                label: r.label.clone(),
                line: at.0,
            });
        }

        let mut masked = Vec::with_capacity(raw.masked.len());
        for m in &raw.masked {
            let at = lines.at(m.span());
            let r = m.get_ref();
            let rule = MaskedRule {
                event: ranged(&lines, &r.event, "event", MAX_EVENT_SELECT.into())?,
                umask_match: ranged(&lines, &r.umask_match, "umask_match", 0xff)?,
                umask_mask: ranged(&lines, &r.umask_mask, "umask_mask", 0xff)?,
                exclude: r.exclude,
                vendor: r.vendor,
                label: r.label.clone(),
                line: at.0,
            };
            masked.push(rule);
        }

        let policy = Policy {
            action: match raw.action {
                None | Some(RawAction::Allow) => Action::Allow,
                Some(RawAction::Deny) => Action::Deny,
            },
            anythread: raw.anythread.unwrap_or(false),
            fixed_counters,
            events,
            masked,
        };
        policy.validate()?;
        Ok(policy)
    }

    /// Write the policy as TOML that [`Policy::from_toml`] reads back to an equal policy.
    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail; the results are ignored on purpose.
        let _ = writeln!(s, "action = \"{}\"", self.action.as_str());
        let _ = writeln!(s, "anythread = {}", self.anythread);
        match &self.fixed_counters {
            FixedCounters::Named => {
                let _ = writeln!(s, "fixed_counters = \"named\"");
            }
            FixedCounters::List(list) => {
                let items: Vec<String> = list.iter().map(|i| i.to_string()).collect();
                let _ = writeln!(s, "fixed_counters = [{}]", items.join(", "));
            }
        }
        for e in &self.events {
            s.push_str("\n[[event]]\n");
            match &e.spec {
                EventSpec::Named(name) => {
                    let _ = writeln!(s, "name = {}", quote(name));
                }
                EventSpec::Raw { event, umask } => {
                    let _ = writeln!(s, "event = {event:#x}");
                    let _ = writeln!(s, "umask = {umask:#04x}");
                }
            }
            write_common(&mut s, e.vendor, e.label.as_deref());
        }
        for m in &self.masked {
            s.push_str("\n[[masked]]\n");
            let _ = writeln!(s, "event = {:#x}", m.event);
            let _ = writeln!(s, "umask_match = {:#04x}", m.umask_match);
            let _ = writeln!(s, "umask_mask = {:#04x}", m.umask_mask);
            let _ = writeln!(s, "exclude = {}", m.exclude);
            write_common(&mut s, m.vendor, m.label.as_deref());
        }
        s
    }
}

fn write_common(s: &mut String, vendor: Option<Vendor>, label: Option<&str>) {
    if let Some(v) = vendor {
        let v = match v {
            Vendor::Intel => "intel",
            Vendor::Amd => "amd",
        };
        let _ = writeln!(s, "vendor = \"{v}\"");
    }
    if let Some(l) = label {
        let _ = writeln!(s, "label = {}", quote(l));
    }
}

/// A TOML basic string.
fn quote(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        /// Source bytes examined to compute line numbers (this thread).
        pub(super) static SCANNED: Cell<usize> = const { Cell::new(0) };
    }

    /// `n` raw-event rules, one per 4-line block after a 1-line header: rule `i` (0-based)
    /// starts at line `3 + 4 * i`. Rule `bad` (if any) has an out-of-range umask.
    fn many_rules(n: usize, bad: Option<usize>) -> String {
        let mut s = String::from("action = \"allow\"\n");
        for i in 0..n {
            let umask = if Some(i) == bad { 256 } else { i % 256 };
            let _ = write!(
                s,
                "\n[[event]]\nevent = {:#x}\numask = {umask:#x}\n",
                i % 4096
            );
        }
        s
    }

    #[test]
    fn line_numbers_take_one_pass_over_the_source() {
        let n = 5000;
        let src = many_rules(n, None);
        SCANNED.with(|c| c.set(0));
        let p = Policy::from_toml(&src).expect("valid");
        let scanned = SCANNED.with(Cell::get);
        assert!(
            scanned <= src.len(),
            "{scanned} bytes scanned for line numbers in a {}-byte policy",
            src.len()
        );
        for (i, e) in p.events.iter().enumerate() {
            assert_eq!(e.line, Some(3 + 4 * i), "rule {i}");
        }
    }

    #[test]
    fn errors_deep_in_a_large_policy_name_the_right_line() {
        let n = 5000;
        let bad = n - 3;
        let src = many_rules(n, Some(bad));
        let e = Policy::from_toml(&src).expect_err("umask 256");
        // The umask is the third line of its block.
        let want = format!("line {}: `umask` = 256 is out of range", 3 + 4 * bad + 2);
        assert!(e.to_string().starts_with(&want), "{e}");
        // A TOML syntax error on the last line.
        let broken = format!("{src}[[event]\n");
        let e = Policy::from_toml(&broken).expect_err("syntax");
        let last = broken.lines().count();
        assert!(e.to_string().starts_with(&format!("line {last}:")), "{e}");
    }

    #[test]
    fn lines_count_newlines() {
        let lines = Lines::new("a\nb\nc");
        assert_eq!(lines.line(0), 1);
        assert_eq!(lines.line(1), 1); // the newline ends line 1
        assert_eq!(lines.line(2), 2);
        assert_eq!(lines.line(4), 3);
        assert_eq!(lines.line(999), 3);
        let lines = Lines::new("\n\nx\n");
        assert_eq!(lines.line(0), 1);
        assert_eq!(lines.line(1), 2);
        assert_eq!(lines.line(2), 3);
        assert_eq!(lines.line(4), 4);
        assert_eq!(Lines::new("").line(0), 1);
    }

    #[test]
    fn array_of_tables_entries_get_their_own_line() {
        let src = "action = \"allow\"\n\n[[event]]\nname = \"cycles\"\n\n[[event]]\nevent = 0x2e\numask = 0x4f\n";
        let p = Policy::from_toml(src).expect("valid");
        let lines: Vec<_> = p.events.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![Some(3), Some(6)]);
    }
}
