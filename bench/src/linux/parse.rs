//! Reading the consoles: the guest's `VPMU-LBENCH` result lines, the L1 script's
//! `VPMU-LBENCH-L1` markers, `vpmu-vmm probe --json`, and perf's output.

use super::{GUEST_MARK, L1_MARK};
use crate::model::Mode;

/// One parsed guest result line.
#[derive(Debug, Clone, PartialEq)]
pub struct RepLine {
    pub pass: u32,
    pub activity: usize,
    pub exit: Option<i32>,
    pub region_ns: Option<u64>,
    pub rounds: Option<u64>,
    pub cpu_s: Option<f64>,
    pub max_sample_rate: Option<u64>,
    pub perf: String,
}

pub(crate) fn field<'a>(s: &'a str, key: &str) -> Option<&'a str> {
    s.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Parses a `VPMU-LBENCH c=P.I x=X ns=N vpmu-work: R rounds in C s cpu msr=M perf: ...`
/// line (the marker may be preceded by other console text); `None` for other lines,
/// including the `pmu=` line.
pub fn parse_rep_line(line: &str) -> Option<RepLine> {
    let at = line.find(&format!("{GUEST_MARK} c="))?;
    let rest = &line[at + GUEST_MARK.len()..];
    let (head, perf) = match rest.find(" perf:") {
        Some(i) => (&rest[..i], rest[i + 6..].trim()),
        None => (rest, ""),
    };
    let (p, i) = field(head, "c")?.split_once('.')?;
    let (pass, activity) = (p.parse().ok()?, i.parse().ok()?);
    let words: Vec<&str> = head.split_whitespace().collect();
    let (mut rounds, mut cpu_s) = (None, None);
    if let Some(k) = words.iter().position(|w| *w == "rounds") {
        if k >= 1 && words.get(k + 1) == Some(&"in") {
            rounds = words[k - 1].parse().ok();
            cpu_s = words.get(k + 2).and_then(|w| w.parse().ok());
        }
    }
    Some(RepLine {
        pass,
        activity,
        exit: field(head, "x").and_then(|v| v.parse().ok()),
        region_ns: field(head, "ns").and_then(|v| v.parse().ok()),
        rounds,
        cpu_s,
        max_sample_rate: field(head, "msr").and_then(|v| v.parse().ok()),
        perf: perf.to_string(),
    })
}

/// `perf record`'s sample count: "... (1234 samples) ]".
pub fn record_samples(perf: &str) -> Option<u64> {
    let i = perf.find(" samples)")?;
    let head = &perf[..i];
    let start = head.rfind('(')? + 1;
    head[start..].trim().parse().ok()
}

/// The guest's `pmu=` line: the event sources it lists (`cpu` = a core PMU).
pub fn parse_pmu_line(line: &str) -> Option<Vec<String>> {
    let at = line.find(&format!("{GUEST_MARK} pmu="))?;
    let v = field(&line[at..], "pmu")?;
    Some(
        v.split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    )
}

/// One mode's part of the console.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Section {
    pub lines: Vec<String>,
    pub exit: Option<i32>,
    /// Nested runs: L1's KVM exits during the run and the L1 seconds it took.
    pub kvm_exits: Option<(u64, f64)>,
}

/// A nested run's console, split up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct L1Console {
    /// The text between `probe-begin` and `probe-end`.
    pub probe_json: Option<String>,
    pub probe_exit: Option<i32>,
    pub modes: Vec<(Mode, Section)>,
}

/// Splits the L1 console by the `VPMU-LBENCH-L1` markers.
pub fn parse_l1_console(text: &str) -> L1Console {
    let mut c = L1Console::default();
    let mut probe: Option<String> = None;
    let mut cur: Option<(Mode, Section)> = None;
    for line in text.lines() {
        if let Some(at) = line.find(L1_MARK) {
            let w: Vec<&str> = line[at + L1_MARK.len()..].split_whitespace().collect();
            match w.as_slice() {
                ["probe-begin", ..] => probe = Some(String::new()),
                ["probe-end", st, ..] => {
                    c.probe_json = probe.take();
                    c.probe_exit = st.parse().ok();
                }
                ["mode-begin", m, ..] => {
                    if let Ok(m) = m.parse() {
                        cur = Some((m, Section::default()));
                    }
                }
                ["kvm-exits", m, e0, e1, t0, t1, ..] => {
                    let delta = e1.parse::<u64>().ok().zip(e0.parse::<u64>().ok());
                    let secs = t1.parse::<f64>().ok().zip(t0.parse::<f64>().ok());
                    if let (Some((e1, e0)), Some((t1, t0)), Some((mode, sec))) =
                        (delta, secs, c.modes.last_mut())
                    {
                        if m.parse::<Mode>().ok() == Some(*mode) {
                            sec.kvm_exits = Some((e1.saturating_sub(e0), (t1 - t0).max(0.0)));
                        }
                    }
                }
                ["mode-end", m, st, ..] => {
                    if let Some((mode, mut sec)) = cur.take() {
                        if m.parse::<Mode>().ok() == Some(mode) {
                            sec.exit = st.parse().ok();
                        }
                        c.modes.push((mode, sec));
                    }
                }
                _ => {}
            }
            continue;
        }
        if let Some(p) = probe.as_mut() {
            p.push_str(line);
            p.push('\n');
        } else if let Some((_, sec)) = cur.as_mut() {
            sec.lines.push(line.to_string());
        }
    }
    if let Some(s) = cur {
        c.modes.push(s); // L1 ended (or timed out) inside this mode
    }
    c
}

/// `{mode: (available, reason)}` from `vpmu-vmm probe --json`.
pub fn probe_modes(probe: &serde_json::Value) -> Vec<(String, bool, Option<String>)> {
    probe["modes"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| {
                    let name = m["mode"].as_str()?.to_string();
                    let av = &m["availability"];
                    let ok = av["status"].as_str() == Some("available");
                    let reason = av["reason"].as_str().map(String::from);
                    Some((name, ok, reason))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The counts of `perf stat -j` output: `[event, value]`, in order.
///
/// perf (6.1 and later) writes one JSON object per counter and line, e.g.
/// `{"counter-value" : "384.649642", "unit" : "msec", "event" : "task-clock",
/// "event-runtime" : 384649642, "pcnt-running" : 100.00, ...}`; the guest joins the lines
/// with `;`. The value is kept as perf printed it (`<not supported>`, `<not counted>` stay
/// text). Event names may contain commas (`cpu/event=0x3c,umask=0/`), which is why this
/// reads JSON rather than `-x,` CSV. Objects without `event` and text that is not JSON
/// are skipped; a trailing comma before `}` (as some perf versions print) is tolerated.
pub fn stat_counts(perf: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = perf;
    while let Some(start) = rest.find('{') {
        rest = &rest[start..];
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<serde_json::Value>();
        let (value, used) = match stream.next() {
            Some(Ok(v)) => (Some(v), stream.byte_offset()),
            _ => {
                // Not strict JSON: up to the first `}`, trailing commas removed.
                let end = rest.find('}').map_or(rest.len(), |i| i + 1);
                let text = rest[..end].replace(", }", "}").replace(",}", "}");
                (serde_json::from_str(&text).ok(), end)
            }
        };
        if let Some(v) = value {
            let event = v["event"].as_str();
            let count = match &v["counter-value"] {
                serde_json::Value::String(s) => Some(s.trim().to_string()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            };
            if let (Some(e), Some(c)) = (event, count) {
                if !e.is_empty() && !c.is_empty() {
                    out.push((e.to_string(), c));
                }
            }
        }
        rest = &rest[used.max(1)..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "VPMU-LBENCH c=1.1 x=0 ns=339775860 vpmu-work: 241 rounds in 0.30 s cpu msr=100000 perf: ;{\"counter-value\" : \"384.649642\", \"unit\" : \"msec\", \"event\" : \"task-clock\", \"event-runtime\" : 384649642, \"pcnt-running\" : 100.00, \"metric-value\" : 0.970, \"metric-unit\" : \"CPUs utilized\"};";
    const REC: &str = "VPMU-LBENCH c=2.2 x=0 ns=439660806 vpmu-work: 86 rounds in 0.31 s cpu msr=250 perf: [ perf record: Woken up 1 times to write data ] [ perf record: Captured and wrote 0.013 MB /tmp/p (141 samples) ] ";

    #[test]
    fn parses_guest_lines() {
        let l = parse_rep_line(STAT).unwrap();
        assert_eq!((l.pass, l.activity, l.exit), (1, 1, Some(0)));
        assert_eq!(
            (l.region_ns, l.rounds, l.cpu_s),
            (Some(339_775_860), Some(241), Some(0.30))
        );
        assert_eq!(l.max_sample_rate, Some(100_000));
        assert!(l.perf.starts_with(";{\"counter-value\""), "{}", l.perf);
        assert_eq!(
            stat_counts(&l.perf),
            vec![("task-clock".to_string(), "384.649642".to_string())]
        );
        // With console noise before the marker.
        let l = parse_rep_line(&format!("[  3.1] x: y {REC}")).unwrap();
        assert_eq!((l.pass, l.activity, l.max_sample_rate), (2, 2, Some(250)));
        assert_eq!(record_samples(&l.perf), Some(141));
        // A failed workload: no ns=, no rounds.
        let l = parse_rep_line("VPMU-LBENCH c=3.1 x=129 msr=100000 perf: oops").unwrap();
        assert_eq!((l.exit, l.region_ns, l.rounds), (Some(129), None, None));
        assert!(parse_rep_line("VPMU-LBENCH pmu=cpu,software, msr=100000").is_none());
        assert!(parse_rep_line("VPMU-GUEST: command exit 0").is_none());
        assert_eq!(
            parse_pmu_line("VPMU-LBENCH pmu=breakpoint,cpu,software, msr=100000").unwrap(),
            vec!["breakpoint", "cpu", "software"]
        );
        assert_eq!(
            record_samples("[ perf record: Captured and wrote 0.1 MB x ]"),
            None
        );
        assert!(stat_counts("[ perf record: Woken up 1 times ];").is_empty());
    }

    #[test]
    fn perf_stat_json_with_commas_in_event_names() {
        // `perf stat -j -e cycles,cpu/event=0x3c,umask=0/,instructions`, lines joined with
        // `;` by the guest: the raw event's name has a comma, which split `-x,` CSV.
        let out = concat!(
            "{\"counter-value\" : \"5207287069147099.000000\", \"unit\" : \"\", \"event\" : \"cycles\", \"event-runtime\" : 429015992, \"pcnt-running\" : 100.00, \"metric-value\" : 0.000000, \"metric-unit\" : \"GHz\"};",
            "{\"counter-value\" : \"1234.000000\", \"unit\" : \"\", \"event\" : \"cpu/event=0x3c,umask=0/\", \"event-runtime\" : 429015992, \"pcnt-running\" : 100.00};",
            "{\"counter-value\" : \"<not supported>\", \"unit\" : \"\", \"event\" : \"instructions\", \"event-runtime\" : 0, \"pcnt-running\" : 100.00, };",
            ";"
        );
        assert_eq!(
            stat_counts(out),
            vec![
                ("cycles".to_string(), "5207287069147099.000000".to_string()),
                (
                    "cpu/event=0x3c,umask=0/".to_string(),
                    "1234.000000".to_string()
                ),
                ("instructions".to_string(), "<not supported>".to_string()),
            ]
        );
        // Numbers instead of strings, noise around the objects, objects without an event.
        assert_eq!(
            stat_counts("Error: x;{\"counter-value\" : 12, \"event\" : \"e\"} ; {\"interval\" : 1.0};{broken"),
            vec![("e".to_string(), "12".to_string())]
        );
        assert!(stat_counts("").is_empty());
        // The CSV of `-x,` is not read any more.
        assert!(stat_counts("384.65,msec,task-clock,384649642,100.00,,").is_empty());
    }

    #[test]
    fn splits_the_l1_console() {
        let text = format!(
            "NESTED: kvm ready\nVPMU-LBENCH-L1 probe-begin\n{{\"modes\": [{{\"mode\": \"off\", \"availability\": {{\"status\": \"available\"}}}}, {{\"mode\": \"emulated\", \"availability\": {{\"status\": \"unavailable\", \"reason\": \"no hardware PMU\", \"remedy\": \"x\"}}}}]}}\nVPMU-LBENCH-L1 probe-end 0\nVPMU-LBENCH-L1 mode-begin off\nVPMU-GUEST: init reached\n{STAT}\nVPMU-LBENCH-L1 mode-end off 0\nVPMU-LBENCH-L1 mode-begin emulated\nvpmu-vmm: mode unavailable\nVPMU-LBENCH-L1 mode-end emulated 2\nVPMU-LBENCH-L1 mode-begin userspace\n{REC}\n"
        );
        let c = parse_l1_console(&text);
        assert_eq!(c.probe_exit, Some(0));
        let probe: serde_json::Value =
            serde_json::from_str(c.probe_json.as_deref().unwrap()).unwrap();
        assert_eq!(
            probe_modes(&probe),
            vec![
                ("off".to_string(), true, None),
                (
                    "emulated".to_string(),
                    false,
                    Some("no hardware PMU".to_string())
                )
            ]
        );
        assert_eq!(c.modes.len(), 3);
        assert_eq!(c.modes[0].0, Mode::Off);
        assert_eq!(c.modes[0].1.exit, Some(0));
        assert_eq!(c.modes[0].1.lines.len(), 2);
        assert_eq!(c.modes[1].1.exit, Some(2));
        // The last mode never ended (L1 died): kept, without a status.
        assert_eq!((c.modes[2].0, c.modes[2].1.exit), (Mode::Userspace, None));
    }
}

#[cfg(test)]
mod kvm_exit_tests {
    use super::*;

    #[test]
    fn kvm_exit_lines_attach_to_their_mode() {
        let text = "VPMU-LBENCH-L1 mode-begin off\nx\nVPMU-LBENCH-L1 mode-end off 0\n\
                    VPMU-LBENCH-L1 kvm-exits off 100 1100 10.00 12.50\n\
                    VPMU-LBENCH-L1 mode-begin emulated\nVPMU-LBENCH-L1 mode-end emulated 0\n\
                    VPMU-LBENCH-L1 kvm-exits emulated - - 13.0 14.0\n\
                    VPMU-LBENCH-L1 kvm-exits off 1 2 3 4\n";
        let c = parse_l1_console(text);
        assert_eq!(c.modes.len(), 2);
        assert_eq!(c.modes[0].1.kvm_exits, Some((1000, 2.5)));
        // No debugfs in L1 ("-"), and a line naming another mode than the last: ignored.
        assert_eq!(c.modes[1].1.kvm_exits, None);
    }
}
