//! The PMU audit log: JSON lines about denied or faulting PMU programming attempts,
//! bounded in file size, in memory and in what it costs a vCPU.
//!
//! A record looks like
//! `{"t_ms":12.5,"vcpu":0,"msr":"0x186","value":"0x53003c","verdict":"denied","event":"0x3c","umask":"0x0","rule":"not in allowlist"}`.
//! Verdicts: `denied` (policy), `gp` (reserved bits / absent or read-only MSR: #GP
//! injected), `unsupported` (the counter source cannot count it; the counter stays put).
//!
//! A guest can trigger a record with every WRMSR (MB/s), so ([`Limiter`], pure logic):
//!
//! - **Deduplication**: the first occurrence of a distinct (vCPU, MSR, value, verdict,
//!   rule) is written at once; repeats are only counted. A `repeated` summary record
//!   (`"summary":"repeated"`, the key's fields, `repeats`, `first_t_ms`, `last_t_ms`) is
//!   written when the key leaves the table (least recently seen first, the table holds
//!   [`Limits::max_keys`]) or at the end of the run.
//! - **Rate limit**: first occurrences pass a token bucket ([`Limits::burst`] records, then
//!   [`Limits::per_sec`] a second). The others are counted, not remembered, and written as
//!   one `suppressed` summary (`records` since the last one, `total` over the run,
//!   `first_t_ms`, `last_t_ms`) when records flow again, and at the end.
//! - **Size cap**: the file never grows beyond [`Limits::max_bytes`] (`--pmu-audit-max-bytes`,
//!   default [`DEFAULT_MAX_BYTES`]); once full, a last `truncated` record says how many
//!   records were left out.
//! - **No stall**: vCPUs hand records to a writer thread through a bounded queue
//!   ([`Limits::queue`]) without blocking; when it is full the record is dropped and counted,
//!   and a `dropped` summary says how many at the end. All file I/O is on the writer thread.
//!   The first write error is reported once on stderr; the records after it are lost (and
//!   counted in the end-of-run error).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Default cap on the audit file (16 MiB).
pub const DEFAULT_MAX_BYTES: u64 = crate::config::DEFAULT_AUDIT_MAX_BYTES;
/// Smallest accepted cap: room for a few records and the final summaries.
pub const MIN_MAX_BYTES: u64 = 4096;
/// Bytes kept free below the cap for the end-of-run `suppressed`, `dropped` and
/// `truncated` records (each well under 200 bytes).
const FINAL_RESERVE: u64 = 640;

/// The audit log's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest file, in bytes (at least [`MIN_MAX_BYTES`]).
    pub max_bytes: u64,
    /// Distinct records remembered for deduplication.
    pub max_keys: usize,
    /// First occurrences written back to back before the rate limit applies.
    pub burst: u32,
    /// First occurrences written per second after the burst.
    pub per_sec: u32,
    /// Records queued for the writer thread before new ones are dropped.
    pub queue: usize,
    /// The writer thread installs its seccomp filter (`crate::seccomp`, `Audit`).
    pub seccomp: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: DEFAULT_MAX_BYTES,
            max_keys: 4096,
            burst: 1000,
            per_sec: 100,
            queue: 4096,
            seccomp: false,
        }
    }
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

/// One guest access to audit, as a vCPU hands it over (no formatting on the vCPU beyond
/// the rule text).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Milliseconds since the VM started.
    pub t_ms: f64,
    /// The record's identity (deduplication key).
    pub key: Key,
    /// Decoded event select and unit mask (selectors only).
    pub sel: Option<(u16, u8)>,
}

/// What makes two records the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// vCPU index.
    pub vcpu: u8,
    /// The MSR.
    pub msr: u32,
    /// The value written (0 for reads).
    pub value: u64,
    /// denied | gp | unsupported.
    pub verdict: &'static str,
    /// The rule or reason.
    pub rule: String,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    repeats: u64,
    first_ms: f64,
    last_ms: f64,
    sel: Option<(u16, u8)>,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    records: u64,
    first_ms: f64,
    last_ms: f64,
}

/// Deduplication, rate limit and size cap: which lines to write, without I/O or clocks
/// (time comes with each event), so it is tested on its own.
#[derive(Debug)]
pub struct Limiter {
    limits: Limits,
    table: HashMap<Key, Seen>,
    tokens: f64,
    refill_ms: f64,
    suppressed: Option<Span>,
    suppressed_total: u64,
    bytes: u64,
    truncated: u64,
}

fn hex_sel(sel: Option<(u16, u8)>) -> (Option<String>, Option<String>) {
    match sel {
        Some((e, u)) => (Some(format!("{e:#x}")), Some(format!("{u:#x}"))),
        None => (None, None),
    }
}

impl Limiter {
    /// A limiter with these bounds (`max_bytes` raised to [`MIN_MAX_BYTES`]).
    pub fn new(limits: Limits) -> Limiter {
        let limits = Limits {
            max_bytes: limits.max_bytes.max(MIN_MAX_BYTES),
            max_keys: limits.max_keys.max(1),
            ..limits
        };
        Limiter {
            limits,
            table: HashMap::new(),
            tokens: f64::from(limits.burst),
            refill_ms: 0.0,
            suppressed: None,
            suppressed_total: 0,
            bytes: 0,
            truncated: 0,
        }
    }

    /// Bytes accepted for writing so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Distinct records remembered now (at most [`Limits::max_keys`]).
    pub fn remembered(&self) -> usize {
        self.table.len()
    }

    /// Accepts `line` if it fits under the cap, keeping room for the final summaries.
    fn emit(&mut self, line: String, out: &mut Vec<String>) {
        self.emit_within(line, FINAL_RESERVE, out);
    }

    fn emit_within(&mut self, line: String, reserve: u64, out: &mut Vec<String>) {
        let len = line.len() as u64 + 1;
        if self.bytes + len + reserve > self.limits.max_bytes {
            self.truncated += 1;
            return;
        }
        self.bytes += len;
        out.push(line);
    }

    fn record_line(t_ms: f64, key: &Key, sel: Option<(u16, u8)>) -> String {
        let (event, umask) = hex_sel(sel);
        serde_json::to_string(&Record {
            t_ms,
            vcpu: key.vcpu,
            msr: format!("{:#x}", key.msr),
            value: format!("{:#x}", key.value),
            verdict: key.verdict,
            event,
            umask,
            rule: key.rule.clone(),
        })
        .unwrap_or_default()
    }

    fn repeated_line(t_ms: f64, key: &Key, seen: &Seen) -> String {
        let (event, umask) = hex_sel(seen.sel);
        let mut v = serde_json::json!({
            "t_ms": t_ms,
            "summary": "repeated",
            "vcpu": key.vcpu,
            "msr": format!("{:#x}", key.msr),
            "value": format!("{:#x}", key.value),
            "verdict": key.verdict,
            "rule": key.rule,
            "repeats": seen.repeats,
            "first_t_ms": seen.first_ms,
            "last_t_ms": seen.last_ms,
        });
        if let (Some(e), Some(u)) = (event, umask) {
            v["event"] = e.into();
            v["umask"] = u.into();
        }
        v.to_string()
    }

    fn flush_suppressed(&mut self, t_ms: f64, reserve: u64, out: &mut Vec<String>) {
        if let Some(s) = self.suppressed.take() {
            let line = serde_json::json!({
                "t_ms": t_ms,
                "summary": "suppressed",
                "records": s.records,
                "total": self.suppressed_total,
                "first_t_ms": s.first_ms,
                "last_t_ms": s.last_ms,
                "why": "rate limit",
            })
            .to_string();
            self.emit_within(line, reserve, out);
        }
    }

    fn take_token(&mut self, t_ms: f64) -> bool {
        let elapsed = (t_ms - self.refill_ms).max(0.0);
        self.refill_ms = self.refill_ms.max(t_ms);
        self.tokens = (self.tokens + elapsed * f64::from(self.limits.per_sec) / 1000.0)
            .min(f64::from(self.limits.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// One event: the lines to write now are appended to `out`.
    pub fn offer(&mut self, ev: Event, out: &mut Vec<String>) {
        if let Some(seen) = self.table.get_mut(&ev.key) {
            seen.repeats += 1;
            seen.last_ms = ev.t_ms;
            return;
        }
        if !self.take_token(ev.t_ms) {
            let s = self.suppressed.get_or_insert(Span {
                records: 0,
                first_ms: ev.t_ms,
                last_ms: ev.t_ms,
            });
            s.records += 1;
            s.last_ms = ev.t_ms;
            self.suppressed_total += 1;
            return;
        }
        self.flush_suppressed(ev.t_ms, FINAL_RESERVE, out);
        if self.table.len() >= self.limits.max_keys {
            // Evict the least recently seen key (rare: only first occurrences that passed
            // the rate limit get here).
            let oldest = self
                .table
                .iter()
                .min_by(|a, b| a.1.last_ms.total_cmp(&b.1.last_ms))
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                if let Some(seen) = self.table.remove(&k) {
                    if seen.repeats > 0 {
                        self.emit(Self::repeated_line(ev.t_ms, &k, &seen), out);
                    }
                }
            }
        }
        self.emit(Self::record_line(ev.t_ms, &ev.key, ev.sel), out);
        self.table.insert(
            ev.key,
            Seen {
                repeats: 0,
                first_ms: ev.t_ms,
                last_ms: ev.t_ms,
                sel: ev.sel,
            },
        );
    }

    /// End of the run: the pending summaries (repeats, suppressed records, `dropped`
    /// records the queue had no room for, and a last `truncated` record if the cap was
    /// reached).
    pub fn finish(&mut self, t_ms: f64, dropped: u64, out: &mut Vec<String>) {
        let mut keys: Vec<(Key, Seen)> =
            self.table.drain().filter(|(_, s)| s.repeats > 0).collect();
        keys.sort_by(|a, b| a.1.first_ms.total_cmp(&b.1.first_ms));
        for (k, seen) in &keys {
            self.emit(Self::repeated_line(t_ms, k, seen), out);
        }
        // The last three summaries use the reserve below the cap.
        self.flush_suppressed(t_ms, 0, out);
        if dropped > 0 {
            let line = serde_json::json!({
                "t_ms": t_ms,
                "summary": "dropped",
                "records": dropped,
                "why": "the audit writer's queue was full",
            })
            .to_string();
            self.emit_within(line, 0, out);
        }
        if self.truncated > 0 {
            let line = serde_json::json!({
                "t_ms": t_ms,
                "summary": "truncated",
                "records": self.truncated,
                "max_bytes": self.limits.max_bytes,
            })
            .to_string();
            self.truncated = 0;
            self.emit_within(line, 0, out);
            self.truncated = 0;
        }
    }
}

enum Msg {
    Event(Event),
    Finish(SyncSender<std::io::Result<()>>),
}

/// The audit log: a bounded queue to a writer thread that deduplicates, rate-limits and
/// caps what reaches the file.
pub struct AuditLog {
    tx: Mutex<Option<SyncSender<Msg>>>,
    dropped: std::sync::Arc<AtomicU64>,
    finished: AtomicBool,
    writer: Mutex<Option<JoinHandle<()>>>,
    start: Instant,
}

struct Writer {
    path: PathBuf,
    out: BufWriter<File>,
    limiter: Limiter,
    error: Option<std::io::Error>,
    lost: u64,
    dirty: bool,
}

impl Writer {
    fn write_lines(&mut self, lines: &mut Vec<String>) {
        for line in lines.drain(..) {
            if self.error.is_some() {
                self.lost += 1;
                continue;
            }
            if let Err(e) = writeln!(self.out, "{line}") {
                eprintln!(
                    "vpmu-vmm: audit log {}: write failed: {e}; later records are lost",
                    self.path.display()
                );
                self.error = Some(e);
                self.lost += 1;
            } else {
                self.dirty = true;
            }
        }
    }

    fn flush(&mut self) {
        if self.dirty && self.error.is_none() {
            if let Err(e) = self.out.flush() {
                eprintln!(
                    "vpmu-vmm: audit log {}: write failed: {e}; later records are lost",
                    self.path.display()
                );
                self.error = Some(e);
            }
            self.dirty = false;
        }
    }

    fn run(mut self, rx: Receiver<Msg>, dropped: std::sync::Arc<AtomicU64>, start: Instant) {
        let mut lines = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(Msg::Event(ev)) => {
                    self.limiter.offer(ev, &mut lines);
                    self.write_lines(&mut lines);
                }
                Ok(Msg::Finish(reply)) => {
                    let t_ms = start.elapsed().as_secs_f64() * 1e3;
                    // Whatever is still queued was sent before the finish.
                    while let Ok(Msg::Event(ev)) = rx.try_recv() {
                        self.limiter.offer(ev, &mut lines);
                    }
                    self.limiter
                        .finish(t_ms, dropped.swap(0, Ordering::Relaxed), &mut lines);
                    self.write_lines(&mut lines);
                    self.flush();
                    let result = match self.error.take() {
                        None => Ok(()),
                        Some(e) => Err(std::io::Error::new(
                            e.kind(),
                            format!("{e} ({} audit records lost)", self.lost),
                        )),
                    };
                    let _ = reply.send(result);
                    return;
                }
                // Idle: make what was written visible (tail -f).
                Err(RecvTimeoutError::Timeout) => self.flush(),
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush();
                    return;
                }
            }
        }
    }
}

impl AuditLog {
    /// Creates (truncates) the log file with the default [`Limits`].
    pub fn create(path: &Path) -> std::io::Result<AuditLog> {
        Self::create_with(path, Limits::default())
    }

    /// Creates (truncates) the log file and starts its writer thread.
    pub fn create_with(path: &Path, limits: Limits) -> std::io::Result<AuditLog> {
        let file = File::create(path)?;
        let (tx, rx) = mpsc::sync_channel(limits.queue.max(1));
        let dropped = std::sync::Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let writer = Writer {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            limiter: Limiter::new(limits),
            error: None,
            lost: 0,
            dirty: false,
        };
        let d = dropped.clone();
        let seccomp = limits.seccomp;
        let handle = std::thread::Builder::new()
            .name("pmu-audit".into())
            .spawn(move || {
                #[cfg(target_arch = "x86_64")]
                if seccomp {
                    if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Audit) {
                        eprintln!("vpmu-vmm: audit writer runs without its seccomp filter: {e}");
                    }
                }
                writer.run(rx, d, start)
            })?;
        Ok(AuditLog {
            tx: Mutex::new(Some(tx)),
            dropped,
            finished: AtomicBool::new(false),
            writer: Mutex::new(Some(handle)),
            start,
        })
    }

    /// Milliseconds since creation.
    pub fn now_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1e3
    }

    /// Hands one event to the writer without blocking; `false` when it was dropped (queue
    /// full, or the log already finished).
    pub fn submit(&self, ev: Event) -> bool {
        if self.finished.load(Ordering::Relaxed) {
            return false;
        }
        let sent = match self.tx.lock() {
            Ok(tx) => match tx.as_ref() {
                Some(tx) => match tx.try_send(Msg::Event(ev)) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
                },
                None => false,
            },
            Err(_) => false,
        };
        if !sent {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// Writes the end-of-run summaries, flushes, and stops the writer. The first write
    /// error of the run (if any) is returned. Later calls do nothing.
    pub fn flush(&self) -> std::io::Result<()> {
        if self.finished.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let tx = self.tx.lock().ok().and_then(|mut t| t.take());
        let mut result = Ok(());
        if let Some(tx) = tx {
            let (reply_tx, reply_rx) = mpsc::sync_channel(1);
            if tx.send(Msg::Finish(reply_tx)).is_ok() {
                if let Ok(r) = reply_rx.recv() {
                    result = r;
                }
            }
        }
        if let Some(h) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = h.join();
        }
        result
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

impl AuditLog {
    /// Audits one guest access to a PMU MSR: `sel` is the decoded event selector where
    /// there is one, `rule` the policy rule or the reason. Never blocks.
    pub fn access(
        &self,
        vcpu: u8,
        msr: u32,
        value: u64,
        verdict: &'static str,
        sel: Option<&vpmu::selector::EventSelector>,
        rule: String,
    ) -> bool {
        self.submit(Event {
            t_ms: self.now_ms(),
            key: Key {
                vcpu,
                msr,
                value,
                verdict,
                rule,
            },
            sel: sel.map(|s| (s.event, s.umask)),
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

    fn ev(t_ms: f64, value: u64) -> Event {
        Event {
            t_ms,
            key: Key {
                vcpu: 0,
                msr: 0x186,
                value,
                verdict: "denied",
                rule: "not in allowlist".into(),
            },
            sel: Some((0x3c, 0)),
        }
    }

    fn parse(lines: &[String]) -> Vec<serde_json::Value> {
        lines
            .iter()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    }

    #[test]
    fn repeats_are_one_record_and_a_repeated_summary() {
        let mut l = Limiter::new(Limits::default());
        let mut out = Vec::new();
        for i in 0..100 {
            l.offer(ev(f64::from(i), 0x43_003c), &mut out);
        }
        assert_eq!(out.len(), 1);
        l.finish(200.0, 0, &mut out);
        let v = parse(&out);
        assert_eq!(v[0]["verdict"], "denied");
        assert_eq!(v[0]["event"], "0x3c");
        assert_eq!(v[1]["summary"], "repeated");
        assert_eq!(v[1]["repeats"], 99);
        assert_eq!(v[1]["first_t_ms"], 0.0);
        assert_eq!(v[1]["last_t_ms"], 99.0);
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn distinct_records_beyond_the_burst_are_suppressed_then_summarised() {
        let limits = Limits {
            burst: 10,
            per_sec: 1,
            ..Limits::default()
        };
        let mut l = Limiter::new(limits);
        let mut out = Vec::new();
        // 1000 distinct values within 1 ms: 10 pass, 990 are suppressed.
        for i in 0..1000u64 {
            l.offer(ev(i as f64 / 1000.0, i), &mut out);
        }
        assert_eq!(out.len(), 10);
        // A second later a token is back: the summary, then the record.
        l.offer(ev(1001.0, 5000), &mut out);
        let v = parse(&out);
        assert_eq!(v[10]["summary"], "suppressed");
        assert_eq!(v[10]["records"], 990);
        assert_eq!(v[11]["value"], "0x1388");
        // Suppressed records are not remembered: memory stays bounded by the rate.
        assert_eq!(l.remembered(), 11);
    }

    #[test]
    fn the_table_is_bounded_and_evicted_keys_leave_their_summary() {
        let limits = Limits {
            max_keys: 4,
            ..Limits::default()
        };
        let mut l = Limiter::new(limits);
        let mut out = Vec::new();
        l.offer(ev(0.0, 1), &mut out);
        l.offer(ev(1.0, 1), &mut out); // a repeat of the oldest key
        for i in 2..=5u64 {
            l.offer(ev(i as f64, i), &mut out);
        }
        assert_eq!(l.remembered(), 4);
        let v = parse(&out);
        // Key 1 was evicted when key 5 arrived, with its repeat count.
        let rep: Vec<_> = v.iter().filter(|r| r["summary"] == "repeated").collect();
        assert_eq!(rep.len(), 1);
        assert_eq!(rep[0]["value"], "0x1");
        assert_eq!(rep[0]["repeats"], 1);
    }

    #[test]
    fn the_file_size_is_capped_with_a_truncated_record() {
        let limits = Limits {
            max_bytes: MIN_MAX_BYTES,
            burst: 100_000,
            ..Limits::default()
        };
        let mut l = Limiter::new(limits);
        let mut out = Vec::new();
        for i in 0..1000u64 {
            l.offer(ev(i as f64, i), &mut out);
        }
        l.finish(2000.0, 7, &mut out);
        let total: usize = out.iter().map(|s| s.len() + 1).sum();
        assert!(total as u64 <= MIN_MAX_BYTES, "{total}");
        assert_eq!(total as u64, l.bytes());
        let v = parse(&out);
        let last = v.last().unwrap();
        assert_eq!(last["summary"], "truncated");
        assert!(last["records"].as_u64().unwrap() > 900);
        assert_eq!(v[v.len() - 2]["summary"], "dropped");
        assert_eq!(v[v.len() - 2]["records"], 7);
    }

    #[test]
    fn the_end_summaries_fit_even_when_the_cap_was_reached() {
        let limits = Limits {
            max_bytes: MIN_MAX_BYTES,
            burst: 100,
            per_sec: 0,
            ..Limits::default()
        };
        let mut l = Limiter::new(limits);
        let mut out = Vec::new();
        for i in 0..10_000u64 {
            l.offer(ev(i as f64, i), &mut out);
        }
        l.finish(20_000.0, 3, &mut out);
        let total: usize = out.iter().map(|s| s.len() + 1).sum();
        assert!(total as u64 <= MIN_MAX_BYTES, "{total}");
        let v = parse(&out);
        let kinds: Vec<_> = v
            .iter()
            .rev()
            .take(3)
            .map(|r| r["summary"].clone())
            .collect();
        assert_eq!(kinds, ["truncated", "dropped", "suppressed"]);
        assert_eq!(v[v.len() - 3]["records"], 9_900);
        assert_eq!(v[v.len() - 3]["total"], 9_900);
    }

    #[test]
    fn the_writer_thread_writes_summaries_at_the_end() {
        let path = std::env::temp_dir().join(format!("vpmu-audit-{}", std::process::id()));
        let log = AuditLog::create(&path).unwrap();
        for _ in 0..50 {
            assert!(log.access(
                1,
                0x186,
                0x53_003c,
                "denied",
                None,
                "not in allowlist".into()
            ));
        }
        log.flush().unwrap();
        // After the end nothing more is accepted.
        assert!(!log.access(1, 0x186, 1, "denied", None, String::new()));
        let text = std::fs::read_to_string(&path).unwrap();
        let v: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(v.len(), 2, "{text}");
        assert_eq!(v[0]["vcpu"], 1);
        assert_eq!(v[0]["verdict"], "denied");
        assert_eq!(v[1]["summary"], "repeated");
        assert_eq!(v[1]["repeats"], 49);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_full_queue_drops_without_blocking_and_says_so() {
        let path = std::env::temp_dir().join(format!("vpmu-audit-q-{}", std::process::id()));
        let limits = Limits {
            queue: 1,
            ..Limits::default()
        };
        let log = AuditLog::create_with(&path, limits).unwrap();
        let mut dropped = 0;
        for i in 0..10_000u64 {
            if !log.access(0, 0x186, i, "denied", None, String::new()) {
                dropped += 1;
            }
        }
        log.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        if dropped > 0 {
            let last: serde_json::Value = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["summary"] == "dropped")
                .expect("a dropped summary");
            assert_eq!(last["records"], dropped);
        }
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn write_errors_are_reported_at_the_end() {
        // /dev/full: every write fails with ENOSPC.
        let Ok(log) = AuditLog::create(Path::new("/dev/full")) else {
            return;
        };
        log.access(0, 0x186, 1, "denied", None, String::new());
        let err = log.flush().expect_err("ENOSPC must surface");
        assert!(err.to_string().contains("lost"), "{err}");
    }
}
