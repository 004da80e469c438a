//! The benchmark matrix: vPMU modes, guest workloads, PMU activities, and the
//! interleaved run plan.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A vPMU mode as the bench names it (mapped to `vpmu::discovery::PmuMode` by the runner).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// No vPMU: the baseline.
    Off,
    /// The VMM's own vPMU (every PMU MSR access exits to the VMM).
    Userspace,
    /// KVM's perf-based vPMU.
    Emulated,
    /// KVM's mediated passthrough vPMU.
    Passthrough,
    /// `emulated` with `--pmu-audit`: every selector write exits to the VMM.
    #[serde(rename = "emulated+audit")]
    EmulatedAudit,
    /// `passthrough` with `--pmu-audit`.
    #[serde(rename = "passthrough+audit")]
    PassthroughAudit,
}

impl Mode {
    /// All modes, in report order.
    pub const ALL: [Mode; 4] = [
        Mode::Off,
        Mode::Userspace,
        Mode::Emulated,
        Mode::Passthrough,
    ];

    /// The in-kernel modes with `--pmu-audit`, asked for by name (`--modes
    /// emulated,emulated+audit`): the cost of the audit is their difference to the same
    /// mode without it, measured in the same interleaved run.
    pub const AUDITED: [Mode; 2] = [Mode::EmulatedAudit, Mode::PassthroughAudit];

    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Userspace => "userspace",
            Mode::Emulated => "emulated",
            Mode::Passthrough => "passthrough",
            Mode::EmulatedAudit => "emulated+audit",
            Mode::PassthroughAudit => "passthrough+audit",
        }
    }

    /// The `--pmu` value this mode runs with.
    pub fn pmu_str(self) -> &'static str {
        match self {
            Mode::EmulatedAudit => "emulated",
            Mode::PassthroughAudit => "passthrough",
            m => m.as_str(),
        }
    }

    /// Whether this mode runs with `--pmu-audit` (what the audit costs is the difference
    /// to the same mode without it, in the same run).
    pub fn audits(self) -> bool {
        matches!(self, Mode::EmulatedAudit | Mode::PassthroughAudit)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "off" => Ok(Mode::Off),
            "userspace" => Ok(Mode::Userspace),
            "emulated" => Ok(Mode::Emulated),
            "passthrough" => Ok(Mode::Passthrough),
            "emulated+audit" => Ok(Mode::EmulatedAudit),
            "passthrough+audit" => Ok(Mode::PassthroughAudit),
            other => Err(format!(
                "unknown mode '{other}' (expected off, userspace, emulated, passthrough, \
                 emulated+audit or passthrough+audit)"
            )),
        }
    }
}

/// A guest workload (the bench guest's `workload=` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// A tight counted loop (front-end bound, no memory traffic).
    Loop,
    /// A linear-feedback shift register (ALU bound).
    Lfsr,
    /// A random pointer chase through a buffer (memory-latency bound).
    Chase,
}

impl Workload {
    /// All workloads, in report order.
    pub const ALL: [Workload; 3] = [Workload::Loop, Workload::Lfsr, Workload::Chase];

    /// The name used on the command line, in the guest command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Loop => "loop",
            Workload::Lfsr => "lfsr",
            Workload::Chase => "chase",
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "loop" => Ok(Workload::Loop),
            "lfsr" => Ok(Workload::Lfsr),
            "chase" => Ok(Workload::Chase),
            other => Err(format!(
                "unknown workload '{other}' (expected loop, lfsr or chase)"
            )),
        }
    }
}

/// What the guest does with its PMU while the workload runs (the guest's `pmu=` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Activity {
    /// The PMU is left alone.
    None,
    /// N counters count (no interrupts); read once at the end.
    Count(u32),
    /// One cycles counter samples at this frequency (Hz) through PMIs.
    Sample(u32),
    /// N events, more than the counters, rotated by the guest.
    Multiplex(u32),
}

impl Activity {
    /// The default activity set of a full run.
    pub const DEFAULT: [Activity; 5] = [
        Activity::None,
        Activity::Count(4),
        Activity::Sample(1000),
        Activity::Sample(10_000),
        Activity::Multiplex(10),
    ];

    /// The sampling frequency, for sampling activities.
    pub fn sample_hz(self) -> Option<u32> {
        match self {
            Activity::Sample(hz) => Some(hz),
            _ => None,
        }
    }

    /// True when the activity touches the PMU at all.
    pub fn uses_pmu(self) -> bool {
        !matches!(self, Activity::None)
    }
}

impl fmt::Display for Activity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Activity::None => f.write_str("none"),
            Activity::Count(n) => write!(f, "count:{n}"),
            Activity::Sample(hz) => write!(f, "sample:{hz}"),
            Activity::Multiplex(n) => write!(f, "multiplex:{n}"),
        }
    }
}

impl FromStr for Activity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "none" {
            return Ok(Activity::None);
        }
        let (kind, n) = s.split_once(':').ok_or_else(|| {
            format!("bad activity '{s}' (expected none, count:N, sample:HZ or multiplex:N)")
        })?;
        let n: u32 = n
            .parse()
            .map_err(|_| format!("bad number in activity '{s}'"))?;
        if n == 0 {
            return Err(format!("activity '{s}': the number must be at least 1"));
        }
        match kind {
            "count" => Ok(Activity::Count(n)),
            "sample" => Ok(Activity::Sample(n)),
            "multiplex" => Ok(Activity::Multiplex(n)),
            _ => Err(format!(
                "bad activity '{s}' (expected none, count:N, sample:HZ or multiplex:N)"
            )),
        }
    }
}

impl Serialize for Activity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Activity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One cell of the matrix: a workload run in a mode with a PMU activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CellKey {
    pub workload: Workload,
    pub mode: Mode,
    pub activity: Activity,
}

impl CellKey {
    /// The baseline this cell is compared with: the same workload, `off`, no PMU activity.
    pub fn baseline(&self) -> CellKey {
        CellKey {
            workload: self.workload,
            mode: Mode::Off,
            activity: Activity::None,
        }
    }

    /// True for the baseline cells themselves.
    pub fn is_baseline(&self) -> bool {
        self.mode == Mode::Off && self.activity == Activity::None
    }
}

impl fmt::Display for CellKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.mode, self.workload, self.activity)
    }
}

/// The cells of a matrix. `off` has no PMU, so it contributes only its baseline cell
/// (`off` x `none`) per workload; every other mode gets every activity. The baseline is
/// always included, whether or not `off` was asked for, since every overhead needs it.
pub fn cells(modes: &[Mode], workloads: &[Workload], activities: &[Activity]) -> Vec<CellKey> {
    let mut out = Vec::new();
    for &workload in workloads {
        out.push(CellKey {
            workload,
            mode: Mode::Off,
            activity: Activity::None,
        });
        for &mode in modes {
            if mode == Mode::Off {
                continue;
            }
            for &activity in activities {
                let k = CellKey {
                    workload,
                    mode,
                    activity,
                };
                if !out.contains(&k) {
                    out.push(k);
                }
            }
        }
    }
    out
}

/// One scheduled run: a cell and its repetition index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub cell: CellKey,
    pub rep: u32,
}

/// The interleaved run order: repetition-major (every cell once, then every cell again),
/// alternating direction on odd repetitions (A B C, C B A, A B C, ...), so that slow drift
/// (thermal, frequency, noisy neighbours) spreads evenly over the cells instead of biasing
/// the ones run last. The baseline of each workload is run in the same passes.
pub fn plan(cells: &[CellKey], reps: u32) -> Vec<Job> {
    let mut jobs = Vec::with_capacity(cells.len() * reps as usize);
    for rep in 0..reps {
        if rep % 2 == 0 {
            jobs.extend(cells.iter().map(|&cell| Job { cell, rep }));
        } else {
            jobs.extend(cells.iter().rev().map(|&cell| Job { cell, rep }));
        }
    }
    jobs
}

/// Parses a comma-separated list with `T::from_str`, rejecting empty lists and duplicates.
pub fn parse_list<T: FromStr<Err = String> + PartialEq>(s: &str) -> Result<Vec<T>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let v: T = part.parse()?;
        if out.contains(&v) {
            return Err(format!("'{part}' is listed twice"));
        }
        out.push(v);
    }
    if out.is_empty() {
        return Err("empty list".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in Mode::ALL.into_iter().chain(Mode::AUDITED) {
            assert_eq!(m.as_str().parse::<Mode>(), Ok(m));
        }
        assert_eq!(Mode::EmulatedAudit.pmu_str(), "emulated");
        assert!(Mode::PassthroughAudit.audits() && !Mode::Passthrough.audits());
        for w in Workload::ALL {
            assert_eq!(w.as_str().parse::<Workload>(), Ok(w));
        }
        for a in Activity::DEFAULT {
            assert_eq!(a.to_string().parse::<Activity>(), Ok(a));
        }
        assert!("bogus".parse::<Mode>().is_err());
        assert!("sample:".parse::<Activity>().is_err());
        assert!("sample:0".parse::<Activity>().is_err());
        assert!("count:x".parse::<Activity>().is_err());
        assert!("turbo:3".parse::<Activity>().is_err());
    }

    #[test]
    fn activity_serializes_as_string() {
        let j = serde_json::to_string(&Activity::Sample(1000)).unwrap();
        assert_eq!(j, "\"sample:1000\"");
        let a: Activity = serde_json::from_str("\"multiplex:10\"").unwrap();
        assert_eq!(a, Activity::Multiplex(10));
        assert!(serde_json::from_str::<Activity>("\"x\"").is_err());
    }

    #[test]
    fn parse_lists() {
        assert_eq!(
            parse_list::<Mode>("off, userspace").unwrap(),
            vec![Mode::Off, Mode::Userspace]
        );
        assert!(parse_list::<Mode>("off,off").is_err());
        assert!(parse_list::<Mode>("").is_err());
        assert!(parse_list::<Workload>("loop,nope").is_err());
    }

    #[test]
    fn cells_include_baseline_once_per_workload() {
        let c = cells(
            &[Mode::Userspace, Mode::Off],
            &[Workload::Loop, Workload::Chase],
            &[Activity::None, Activity::Sample(1000)],
        );
        assert_eq!(c.len(), 2 * (1 + 2));
        assert_eq!(c.iter().filter(|k| k.is_baseline()).count(), 2);
        assert!(c
            .iter()
            .all(|k| k.mode != Mode::Off || k.activity == Activity::None));
        assert_eq!(c[1].baseline(), c[0]);
    }

    #[test]
    fn plan_interleaves_and_alternates() {
        let c = cells(&[Mode::Userspace], &[Workload::Loop], &[Activity::None]);
        let p = plan(&c, 4);
        assert_eq!(p.len(), 8);
        let order: Vec<_> = p.iter().map(|j| (j.cell.mode, j.rep)).collect();
        assert_eq!(
            order,
            vec![
                (Mode::Off, 0),
                (Mode::Userspace, 0),
                (Mode::Userspace, 1),
                (Mode::Off, 1),
                (Mode::Off, 2),
                (Mode::Userspace, 2),
                (Mode::Userspace, 3),
                (Mode::Off, 3),
            ]
        );
    }
}
