//! The PMU audit log: one JSON line per denied or faulting PMU programming attempt.
//!
//! Lines look like
//! `{"t_ms":12.5,"vcpu":0,"msr":"0x186","value":"0x53003c","verdict":"denied","event":"0x3c","umask":"0x0","rule":"not in allowlist"}`.
//! Verdicts: `denied` (policy), `gp` (reserved bits / absent or read-only MSR: #GP
//! injected), `unsupported` (the counter source cannot count it; the counter stays put).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

/// A shared JSON-lines writer.
pub struct AuditLog {
    out: Mutex<BufWriter<File>>,
    start: Instant,
}

/// One audit record.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Record<'a> {
    /// Milliseconds since the VM started.
    pub t_ms: f64,
    /// vCPU index.
    pub vcpu: u8,
    /// The MSR, hex.
    pub msr: String,
    /// The value written (or "read"), hex.
    pub value: String,
    /// denied | gp | unsupported.
    pub verdict: &'a str,
    /// Decoded event select, hex (selectors only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// Decoded unit mask, hex (selectors only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub umask: Option<String>,
    /// The rule or reason.
    pub rule: String,
}

impl AuditLog {
    /// Creates (truncates) the log file.
    pub fn create(path: &Path) -> std::io::Result<AuditLog> {
        Ok(AuditLog {
            out: Mutex::new(BufWriter::new(File::create(path)?)),
            start: Instant::now(),
        })
    }

    /// Milliseconds since creation.
    pub fn now_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1e3
    }

    /// Appends a record (I/O errors are counted by the caller's summary, never fatal).
    pub fn write(&self, rec: &Record<'_>) -> bool {
        let Ok(line) = serde_json::to_string(rec) else {
            return false;
        };
        match self.out.lock() {
            Ok(mut w) => writeln!(w, "{line}").is_ok(),
            Err(_) => false,
        }
    }

    /// Flushes buffered records.
    pub fn flush(&self) -> std::io::Result<()> {
        match self.out.lock() {
            Ok(mut w) => w.flush(),
            Err(_) => Ok(()),
        }
    }
}

impl AuditLog {
    /// Appends the record of one guest access to a PMU MSR: `sel` is the decoded event
    /// selector where there is one, `rule` the policy rule or the reason.
    pub fn access(
        &self,
        vcpu: u8,
        msr: u32,
        value: u64,
        verdict: &str,
        sel: Option<&vpmu::selector::EventSelector>,
        rule: String,
    ) -> bool {
        self.write(&Record {
            t_ms: self.now_ms(),
            vcpu,
            msr: format!("{msr:#x}"),
            value: format!("{value:#x}"),
            verdict,
            event: sel.map(|s| format!("{:#x}", s.event)),
            umask: sel.map(|s| format!("{:#x}", s.umask)),
            rule,
        })
    }
}

/// One line of "what the guest programmed": an event and what the vPMU did with it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Programmed {
    /// `0x3c/0x00`-style event select / unit mask, or `fixed0`..`fixed3`.
    pub event: String,
    /// The event's perf name, when it is one of the named events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'static str>,
    /// counting | denied | unsupported.
    pub verdict: &'static str,
    /// How many enabling programmings.
    pub count: u64,
}

/// Distinct entries kept per vCPU; beyond this, programmings are tallied as `other`.
const MAX_PROGRAMMED: usize = 64;

/// What a vCPU's guest programmed, bounded: a guest cannot grow it without limit.
#[derive(Debug, Default, Clone)]
pub struct ProgrammedTally {
    items: Vec<Programmed>,
}

impl ProgrammedTally {
    /// Tallies one enabling programming of `event` with `verdict`.
    pub fn record(&mut self, event: String, name: Option<&'static str>, verdict: &'static str) {
        let full = self.items.len() >= MAX_PROGRAMMED;
        let known = self
            .items
            .iter()
            .any(|p| p.event == event && p.verdict == verdict);
        let (event, name) = if full && !known {
            ("other".to_string(), None)
        } else {
            (event, name)
        };
        match self
            .items
            .iter_mut()
            .find(|p| p.event == event && p.verdict == verdict)
        {
            Some(p) => p.count += 1,
            None => self.items.push(Programmed {
                event,
                name,
                verdict,
                count: 1,
            }),
        }
    }

    /// The tally so far.
    pub fn items(&self) -> &[Programmed] {
        &self.items
    }

    /// `0x3c/0x00 cycles counting x4, ...` for the end-of-run summary line.
    pub fn summary(&self) -> String {
        self.items
            .iter()
            .map(|p| {
                let name = p.name.map(|n| format!(" {n}")).unwrap_or_default();
                format!("{}{name} {} x{}", p.event, p.verdict, p.count)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programmed_tally_is_bounded() {
        let mut t = ProgrammedTally::default();
        for i in 0..1000u32 {
            t.record(format!("{i:#x}/0x00"), None, "denied");
        }
        t.record("0x1/0x00".into(), None, "denied");
        assert_eq!(t.items().len(), MAX_PROGRAMMED + 1);
        assert_eq!(t.items().last().unwrap().event, "other");
        assert_eq!(t.items()[1].count, 2);
    }

    #[test]
    fn writes_json_lines() {
        let dir = std::env::temp_dir().join(format!("vpmu-audit-{}", std::process::id()));
        let log = AuditLog::create(&dir).unwrap();
        let rec = Record {
            t_ms: log.now_ms(),
            vcpu: 1,
            msr: "0x186".into(),
            value: "0x53003c".into(),
            verdict: "denied",
            event: Some("0x3c".into()),
            umask: Some("0x0".into()),
            rule: "not in allowlist".into(),
        };
        assert!(log.write(&rec));
        log.flush().unwrap();
        let text = std::fs::read_to_string(&dir).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["vcpu"], 1);
        assert_eq!(v["verdict"], "denied");
        assert_eq!(v["event"], "0x3c");
        let _ = std::fs::remove_file(&dir);
    }
}
