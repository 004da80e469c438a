//! Host facts for the report: CPU model, kernel, KVM modules, TSC frequency, dates, RSS.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `model name` from /proc/cpuinfo text.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "model name").then(|| v.trim().to_string())
    })
}

/// Kernel release and version from /proc/sys/kernel.
pub fn kernel() -> Option<String> {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let ver = std::fs::read_to_string("/proc/sys/kernel/version").unwrap_or_default();
    Some(format!("{} {}", rel.trim(), ver.trim()).trim().to_string())
}

/// The first three fields of /proc/loadavg.
pub fn loadavg() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// Loaded KVM modules.
pub fn kvm_modules() -> Vec<String> {
    ["kvm", "kvm_intel", "kvm_amd", "kvm_pvm"]
        .iter()
        .filter(|m| std::path::Path::new(&format!("/sys/module/{m}")).exists())
        .map(|m| m.to_string())
        .collect()
}

/// Finds a positive integer field named `key` anywhere in a JSON value.
pub fn find_u64(v: &serde_json::Value, key: &str) -> Option<u64> {
    match v {
        serde_json::Value::Object(m) => m
            .get(key)
            .and_then(|x| x.as_u64())
            .filter(|x| *x > 0)
            .or_else(|| m.values().find_map(|x| find_u64(x, key))),
        serde_json::Value::Array(a) => a.iter().find_map(|x| find_u64(x, key)),
        _ => None,
    }
}

/// Measures the TSC frequency against the monotonic clock over `window` (x86_64 only).
pub fn measure_tsc_khz(window: Duration) -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        let t0 = Instant::now();
        // SAFETY: RDTSC only reads the time-stamp counter into EDX:EAX: it touches no
        // memory, and every x86_64 CPU has it (Linux does not set CR4.TSD for us).
        let c0 = unsafe { core::arch::x86_64::_rdtsc() };
        std::thread::sleep(window);
        // SAFETY: as for `c0`: a register read with no memory effects.
        let c1 = unsafe { core::arch::x86_64::_rdtsc() };
        let ns = u64::try_from(t0.elapsed().as_nanos()).ok()?;
        if ns == 0 || c1 <= c0 {
            return None;
        }
        // kHz, rounded to the nearest MHz (the measurement is not better than that).
        let khz = (c1 - c0) as u128 * 1_000_000 / ns as u128;
        let khz = u64::try_from(khz).ok()?;
        Some(((khz + 500) / 1000) * 1000)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = window;
        None
    }
}

/// `VmHWM` (peak RSS) in KiB from /proc/self/status text.
pub fn vm_hwm_kib(status: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix("VmHWM:")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
#[allow(clippy::cast_possible_truncation)] // day is 1..=31, month 1..=12
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// RFC 3339 UTC timestamp for seconds since the epoch.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Now, RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    rfc3339(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

/// `rustc --version` of the toolchain on PATH (None when there is none).
pub fn rustc_version() -> Option<String> {
    let out = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_and_status() {
        let ci = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14 96-Core Processor\n";
        assert_eq!(
            cpu_model(ci).as_deref(),
            Some("AMD EPYC 9R14 96-Core Processor")
        );
        assert_eq!(cpu_model("nothing"), None);
        let st = "Name:\tx\nVmPeak:\t  100 kB\nVmHWM:\t    4242 kB\n";
        assert_eq!(vm_hwm_kib(st), Some(4242));
        assert_eq!(vm_hwm_kib(""), None);
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_246_200), "2026-11-21T07:30:00Z");
    }

    #[test]
    fn json_search() {
        let v = serde_json::json!({"a": {"b": [{"tsc_khz": 0}, {"tsc_khz": 2900000}]}});
        assert_eq!(find_u64(&v, "tsc_khz"), Some(2_900_000));
        assert_eq!(find_u64(&v, "x"), None);
    }

    #[test]
    fn tsc_measurement_is_plausible() {
        if let Some(k) = measure_tsc_khz(Duration::from_millis(20)) {
            assert!(k > 100_000 && k < 20_000_000, "{k}");
        }
    }
}
