//! `vpmu-vmm policy check`: what a policy compiles to for one vendor, in words. A pure
//! function of the policy, so the operator sees exactly what the VMM would install and
//! decide.

use std::fmt::Write as _;

use super::{CompiledPolicy, Policy, PolicyError};
use crate::config::Vendor;
use crate::events;
use crate::selector;

/// A readable report of `policy` compiled for `vendor` with `num_fixed` fixed counters:
/// the KVM filter (every entry, plain or masked, with the rule it came from), the
/// fixed-counter bitmap, the compile warnings, and how each named event (with its
/// unit-mask aliases) and each fixed counter is decided.
pub fn check_report(policy: &Policy, vendor: Vendor, num_fixed: u8) -> Result<String, PolicyError> {
    let c = policy.compile(vendor, num_fixed)?;
    Ok(render(&c))
}

fn vendor_name(v: Vendor) -> &'static str {
    match v {
        Vendor::Intel => "intel",
        Vendor::Amd => "amd",
    }
}

fn render(c: &CompiledPolicy) -> String {
    let mut out = String::new();
    let f = c.kvm_filter_ref();
    let _ = writeln!(
        out,
        "policy for {} ({} fixed counters), action {}",
        vendor_name(c.vendor()),
        c.num_fixed(),
        c.action().as_str()
    );
    let _ = writeln!(
        out,
        "KVM filter: action {} ({}), flags {:#x}{}, fixed_counter_bitmap {:#010x}, {} entries",
        f.action,
        if f.action == super::KVM_PMU_EVENT_ALLOW {
            "KVM_PMU_EVENT_ALLOW"
        } else {
            "KVM_PMU_EVENT_DENY"
        },
        f.flags,
        if f.requires_masked_events_cap() {
            " (masked events: needs KVM_CAP_PMU_EVENT_MASKED_EVENTS)"
        } else {
            " (plain entries)"
        },
        f.fixed_counter_bitmap,
        f.events.len()
    );
    let masked = f.requires_masked_events_cap();
    for (i, (&raw, rule)) in f.events.iter().zip(c.rules()).enumerate() {
        let event = (raw & 0xff) as u16 | ((raw >> 24) & 0xf00) as u16;
        let umask = ((raw >> 8) & 0xff) as u8;
        let what = if masked {
            let mask = (raw >> 56) as u8;
            let exclude = raw & (1 << 55) != 0;
            format!(
                "masked {} event {event:#x} umask&{mask:#04x}=={umask:#04x}",
                if exclude { "exclude" } else { "include" }
            )
        } else {
            format!("plain event {event:#x} umask {umask:#04x}")
        };
        let _ = writeln!(out, "  [{i}] {raw:#018x} {what}  <- {rule}");
    }
    if c.warnings().is_empty() {
        let _ = writeln!(out, "warnings: none");
    } else {
        let _ = writeln!(out, "warnings:");
        for w in c.warnings() {
            let _ = writeln!(out, "  {w}");
        }
    }
    let _ = writeln!(out, "named events:");
    for ne in events::named_events(c.vendor()) {
        let raw = selector::encode(ne.event, ne.umask);
        let verdict = match c.decide(raw) {
            super::Decision::Allowed => "allowed".to_string(),
            super::Decision::Denied(r) => format!("denied: {}", c.describe(r)),
        };
        let _ = write!(
            out,
            "  {:<18} {:#x}/{:#04x}  {verdict}",
            ne.name, ne.event, ne.umask
        );
        if events::defined_umask_bits(c.vendor(), ne.event) != 0xff {
            let allowed = (0..=255u8)
                .filter(|&u| c.decide(selector::encode(ne.event, u)).is_allowed())
                .count();
            let _ = write!(
                out,
                "; unit masks ignored by the hardware: {allowed} of 256 encodings allowed"
            );
        }
        let _ = writeln!(out);
    }
    if c.vendor() == Vendor::Intel {
        let _ = writeln!(out, "fixed counters:");
        for i in 0..c.num_fixed() {
            let name = events::fixed_counter_name(i).unwrap_or("?");
            let verdict = match c.decide_fixed_decision(i) {
                super::Decision::Allowed => "allowed".to_string(),
                super::Decision::Denied(r) => format!("denied: {}", c.describe(r)),
            };
            let _ = writeln!(out, "  fixed{i} {name:<14} {verdict}");
        }
    }
    let _ = writeln!(
        out,
        "anythread: {}",
        if c.anythread_allowed() {
            "honoured"
        } else {
            "denied"
        }
    );
    out
}
