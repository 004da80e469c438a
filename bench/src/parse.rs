//! Parsing the bench guest's console output.
//!
//! The guest prints machine-parseable lines that start with `BENCH ` followed by
//! whitespace-separated `key=value` tokens (see docs/GUESTS.md), and ends with
//! `BENCH done`. Everything else on the console (banners, serial noise) is ignored.
//! Bare words after `BENCH` (`done`, `error`, ...) are kept as the record's tags.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One `BENCH ...` line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Bare words (tokens without `=`), in order.
    pub tags: Vec<String>,
    /// `key=value` tokens (the last occurrence of a key wins).
    pub fields: BTreeMap<String, String>,
}

impl Record {
    /// Parses one line; `None` when it is not a `BENCH` line.
    pub fn parse(line: &str) -> Option<Record> {
        let line = line.trim_matches(|c: char| c.is_whitespace() || c == '\0');
        let rest = line.strip_prefix("BENCH")?;
        if !(rest.is_empty() || rest.starts_with(char::is_whitespace)) {
            return None;
        }
        let mut r = Record::default();
        for tok in rest.split_whitespace() {
            match tok.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    r.fields.insert(k.to_string(), v.to_string());
                }
                _ => r.tags.push(tok.to_string()),
            }
        }
        Some(r)
    }

    /// The string value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// The value of the first of `keys` present, as an unsigned integer (decimal or
    /// `0x` hex). `None` when absent or malformed.
    pub fn u64(&self, keys: &[&str]) -> Option<u64> {
        keys.iter().find_map(|k| self.get(k)).and_then(parse_u64)
    }

    /// The value of the first of `keys` present, as a signed integer (decimal, `-` allowed).
    pub fn i64(&self, keys: &[&str]) -> Option<i64> {
        let v = keys.iter().find_map(|k| self.get(k))?;
        match v.strip_prefix('-') {
            Some(rest) => parse_u64(rest)
                .and_then(|x| i64::try_from(x).ok())
                .map(|x| -x),
            None => parse_u64(v).and_then(|x| i64::try_from(x).ok()),
        }
    }

    /// True when the line carries this bare word.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

/// Decimal or `0x` hex; `_` separators and (decimal) `k`/`m`/`g` suffixes as the guests
/// accept them (docs/GUESTS.md).
fn parse_u64(s: &str) -> Option<u64> {
    let s: String = s.chars().filter(|c| *c != '_').collect();
    if let Some(h) = s.strip_prefix("0x") {
        return u64::from_str_radix(h, 16).ok();
    }
    let (digits, mult) = match s.as_bytes().last() {
        Some(b'k') => (&s[..s.len() - 1], 1_000),
        Some(b'm') => (&s[..s.len() - 1], 1_000_000),
        Some(b'g') => (&s[..s.len() - 1], 1_000_000_000),
        _ => (&s[..], 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

/// Everything the bench guest printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestOutput {
    /// The `BENCH` records in order (including `done`).
    pub records: Vec<Record>,
    /// True when `BENCH done` was seen.
    pub done: bool,
}

/// Parses a captured console.
pub fn parse_output(text: &str) -> GuestOutput {
    let mut out = GuestOutput::default();
    for line in text.lines() {
        if let Some(r) = Record::parse(line) {
            if r.has_tag("done") {
                out.done = true;
            }
            out.records.push(r);
        }
    }
    out
}

/// PMI delivery latency aggregate from one repetition, in guest TSC ticks (signed: the
/// guest measures handler entry minus the TSC at which the counter was due to overflow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    pub n: u64,
    pub min: i64,
    pub max: i64,
    pub sum: i64,
}

impl Latency {
    /// Mean latency in ticks.
    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum as f64 / self.n as f64)
    }

    /// Why this aggregate cannot describe the PMIs of a repetition whose workload region
    /// took `region_tsc` ticks, sampled with a period of `period_tsc` ticks; `None` when
    /// it can.
    ///
    /// The guest stamps `due = rdtsc() + period` when it arms the counter, and a PMI's
    /// latency is handler entry minus `due`. Every PMI of a repetition is handled inside
    /// its workload region, after the arming, so a latency lies in
    /// `[-max(period, region), region]`: anything outside is not a latency but a broken
    /// stamp (a PMI handled before the guest stored `due` gives the absolute TSC,
    /// ~1e12 ticks). The aggregate must also be self-consistent:
    /// `min <= max` and `n * min <= sum <= n * max`.
    pub fn implausible(&self, region_tsc: u64, period_tsc: u64) -> Option<String> {
        if self.n == 0 {
            return Some("no PMIs but latency figures".into());
        }
        if self.min > self.max {
            return Some(format!("min {} > max {}", self.min, self.max));
        }
        let upper = i128::from(region_tsc);
        let lower = -i128::from(region_tsc.max(period_tsc));
        if i128::from(self.max) > upper {
            return Some(format!(
                "max latency {} ticks is longer than the workload region ({region_tsc} ticks): \
                 a PMI handled before the guest stored its due stamp",
                self.max
            ));
        }
        if i128::from(self.min) < lower {
            return Some(format!(
                "min latency {} ticks is earlier than the arming (bound {lower} ticks)",
                self.min
            ));
        }
        let (n, sum) = (i128::from(self.n), i128::from(self.sum));
        if sum < n * i128::from(self.min) || sum > n * i128::from(self.max) {
            return Some(format!(
                "sum {} is not between n x min and n x max (n={}, min={}, max={})",
                self.sum, self.n, self.min, self.max
            ));
        }
        None
    }
}

/// One workload repetition as the guest reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rep {
    /// Repetition index inside the guest.
    pub rep: u64,
    /// The workload name the guest reported.
    pub workload: String,
    /// TSC ticks of the workload region.
    pub tsc: u64,
    /// PMIs taken (samples delivered), when sampling.
    pub samples: Option<u64>,
    /// Samples the guest expected, when it says.
    pub expected: Option<u64>,
    /// PMI delivery latency, when sampling (as the guest printed it).
    pub pmi_latency: Option<Latency>,
    /// Why `pmi_latency` was left out of the statistics ([`Latency::implausible`]); set
    /// by the harness, `None` when it was used.
    #[serde(default)]
    pub pmi_latency_rejected: Option<String>,
    /// Every field of the line, for the raw record.
    pub fields: BTreeMap<String, String>,
}

impl Rep {
    /// Builds a repetition from a record with `rep=` and `tsc=`.
    pub fn from_record(r: &Record) -> Option<Rep> {
        let rep = r.u64(&["rep"])?;
        let tsc = r.u64(&["tsc", "ticks"])?;
        let samples = r.u64(&["samples", "pmis"]);
        let lat_n = r.u64(&["pmi_latency_tsc_n", "pmi_latency_n"]).or(samples);
        let pmi_latency = match (
            lat_n,
            r.i64(&["pmi_latency_tsc_min"]),
            r.i64(&["pmi_latency_tsc_max"]),
            r.i64(&["pmi_latency_tsc_sum"]),
        ) {
            (Some(n), Some(min), Some(max), Some(sum)) if n > 0 => {
                Some(Latency { n, min, max, sum })
            }
            _ => None,
        };
        Some(Rep {
            rep,
            workload: r.get("workload").unwrap_or("").to_string(),
            tsc,
            samples,
            expected: r.u64(&["expected", "samples_expected"]),
            pmi_latency,
            pmi_latency_rejected: None,
            fields: r.fields.clone(),
        })
    }
}

impl GuestOutput {
    /// The workload repetitions (records with `rep=` and `tsc=`).
    pub fn reps(&self) -> Vec<Rep> {
        self.records
            .iter()
            .filter(|r| !r.has_tag("msr") && r.get("workload") != Some("msr"))
            .filter_map(Rep::from_record)
            .collect()
    }

    /// The records of the MSR-cost workload (`workload=msr`, or tagged `msr`).
    pub fn msr_records(&self) -> Vec<&Record> {
        self.records
            .iter()
            .filter(|r| r.has_tag("msr") || r.get("workload") == Some("msr"))
            .collect()
    }

    /// An error the guest reported (`BENCH error ...` or `error=...`), if any.
    pub fn error(&self) -> Option<String> {
        self.records.iter().find_map(|r| {
            if let Some(e) = r.get("error") {
                Some(e.to_string())
            } else if r.has_tag("error") {
                Some(r.tags.join(" "))
            } else {
                None
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "vpmu-vmm bench guest: cmdline \"workload=lfsr iters=100\"\r\n\
pmu: amd perfmon-v2: 6 gp x 48 bits\n\
BENCH rep=0 workload=lfsr pmu=sample:1000 tsc=2900000 samples=1000 pmi_latency_tsc_min=1200 pmi_latency_tsc_max=9000 pmi_latency_tsc_sum=2400000\n\
BENCH rep=1 workload=lfsr pmu=sample:1000 tsc=0x2c4020 samples=999 pmi_latency_tsc_min=1100 pmi_latency_tsc_max=8000 pmi_latency_tsc_sum=2000000\n\
BENCHMARK not a record\n\
BENCH done\n";

    #[test]
    fn parses_records_and_done() {
        let o = parse_output(SAMPLE);
        assert!(o.done);
        assert_eq!(o.records.len(), 3);
        let reps = o.reps();
        assert_eq!(reps.len(), 2);
        assert_eq!(reps[0].workload, "lfsr");
        assert_eq!(reps[0].tsc, 2_900_000);
        assert_eq!(reps[1].tsc, 0x2c4020);
        assert_eq!(reps[0].samples, Some(1000));
        let l = reps[0].pmi_latency.unwrap();
        assert_eq!((l.n, l.min, l.max, l.sum), (1000, 1200, 9000, 2_400_000));
        assert_eq!(l.mean(), Some(2400.0));
        assert_eq!(
            reps[0].fields.get("pmu").map(String::as_str),
            Some("sample:1000")
        );
        assert!(o.error().is_none());
    }

    /// The example output in docs/GUESTS.md, verbatim.
    const GUESTS_MD: &str = "BENCH start workload=loop iters=100000000 reps=3 pmu=sample:1000 pmu_kind=intel tsc_khz=2500000 period=2500000 counters=0
BENCH rep=0 workload=loop pmu=sample:1000 tsc=544845886 samples=127 pmi_latency_tsc_min=207536 pmi_latency_tsc_max=18941628 pmi_latency_tsc_sum=181771812 result=0xf9eeb5b452893a00
BENCH rep=0 workload=lfsr pmu=count:3 tsc=747235476 samples=0 counts=747323408,0,747323408 result=0xe201d4410f4a7e09
BENCH rep=0 mux_counts=6086507855,0,6085849561,0,0,0
BENCH done
";

    #[test]
    fn parses_the_documented_format() {
        let o = parse_output(GUESTS_MD);
        assert!(o.done);
        assert_eq!(o.records.len(), 5);
        assert!(o.records[0].has_tag("start"));
        assert_eq!(o.records[0].get("pmu_kind"), Some("intel"));
        let reps = o.reps();
        assert_eq!(reps.len(), 2, "start and mux_counts lines are not reps");
        assert_eq!(reps[0].tsc, 544_845_886);
        let l = reps[0].pmi_latency.unwrap();
        assert_eq!(
            (l.n, l.min, l.max, l.sum),
            (127, 207_536, 18_941_628, 181_771_812)
        );
        assert_eq!(reps[1].samples, Some(0));
        assert!(reps[1].pmi_latency.is_none());
        assert_eq!(
            reps[1].fields.get("counts").map(String::as_str),
            Some("747323408,0,747323408")
        );
    }

    #[test]
    fn signed_latency_and_suffixes() {
        let o = parse_output(
            "BENCH rep=0 workload=loop tsc=1_000k samples=2 pmi_latency_tsc_min=-50 pmi_latency_tsc_max=70 pmi_latency_tsc_sum=20\n",
        );
        let r = &o.reps()[0];
        assert_eq!(r.tsc, 1_000_000);
        let l = r.pmi_latency.unwrap();
        assert_eq!((l.min, l.max, l.sum), (-50, 70, 20));
        assert_eq!(l.mean(), Some(10.0));
        let rec = Record::parse("BENCH a=2m b=0x10 c=-0x10 d=--1 e=3g").unwrap();
        assert_eq!(rec.u64(&["a"]), Some(2_000_000));
        assert_eq!(rec.u64(&["b"]), Some(16));
        assert_eq!(rec.i64(&["c"]), Some(-16));
        assert_eq!(rec.i64(&["d"]), None);
        assert_eq!(rec.u64(&["e"]), Some(3_000_000_000));
        assert_eq!(rec.u64(&["c"]), None);
    }

    /// The `sample:1000` run that reported a 5.89e12-tick PMI latency: a PMI handled
    /// before the guest stored its due stamp, so `now - due` was the absolute TSC.
    const DUE_NOT_STORED: &str = "BENCH rep=2 workload=lfsr pmu=sample:1000 tsc=120000000 samples=46 pmi_latency_tsc_min=190000 pmi_latency_tsc_max=5890000000000 pmi_latency_tsc_sum=5890008550000\nBENCH done\n";

    #[test]
    fn impossible_latencies_are_recognised() {
        let r = &parse_output(DUE_NOT_STORED).reps()[0];
        let l = r.pmi_latency.unwrap();
        // Period of 1 kHz at 2.6 GHz.
        let why = l.implausible(r.tsc, 2_600_000).expect("rejected");
        assert!(
            why.contains("before the guest stored its due stamp"),
            "{why}"
        );
        // A plausible aggregate passes; negative latencies down to -period pass.
        let ok = Latency {
            n: 3,
            min: -2_000,
            max: 9_000,
            sum: 10_000,
        };
        assert_eq!(ok.implausible(1_000_000, 2_600_000), None);
        let early = Latency {
            min: -3_000_000,
            ..ok
        };
        assert!(early
            .implausible(1_000_000, 2_600_000)
            .unwrap()
            .contains("earlier"));
        let inconsistent = Latency { sum: 100_000, ..ok };
        assert!(inconsistent
            .implausible(1_000_000, 2_600_000)
            .unwrap()
            .contains("n x min"));
        let inverted = Latency {
            min: 10,
            max: 5,
            ..ok
        };
        assert!(inverted.implausible(1_000_000, 0).is_some());
    }

    #[test]
    fn missing_done_and_malformed() {
        let o = parse_output("BENCH rep=0 workload=loop tsc=abc\nBENCH rep=x tsc=5\n");
        assert!(!o.done);
        assert_eq!(o.records.len(), 2);
        assert!(o.reps().is_empty());
        assert!(parse_output("").records.is_empty());
    }

    #[test]
    fn no_sampling_fields() {
        let o = parse_output("BENCH rep=0 workload=loop pmu=none tsc=100 samples=0\nBENCH done");
        let r = &o.reps()[0];
        assert_eq!(r.samples, Some(0));
        assert!(r.pmi_latency.is_none());
    }

    #[test]
    fn errors_and_msr_records() {
        let o = parse_output(
            "BENCH error=no-pmu\nBENCH rep=0 workload=msr msr=0x174 tsc=500\nBENCH msr rep=0 tsc=7\n",
        );
        assert_eq!(o.error().as_deref(), Some("no-pmu"));
        assert_eq!(o.msr_records().len(), 2);
        assert!(o.reps().is_empty());
        let o = parse_output("BENCH error bad workload\n");
        assert_eq!(o.error().as_deref(), Some("error bad workload"));
    }

    #[test]
    fn record_edge_cases() {
        assert!(Record::parse("  BENCH   a=1  =2 b=  ").is_some());
        let r = Record::parse("BENCH a=1 =2 b=").unwrap();
        assert_eq!(r.get("a"), Some("1"));
        assert_eq!(r.get("b"), Some(""));
        assert_eq!(r.tags, vec!["=2".to_string()]);
        assert!(Record::parse("xBENCH a=1").is_none());
        assert_eq!(r.u64(&["missing", "a"]), Some(1));
    }
}
