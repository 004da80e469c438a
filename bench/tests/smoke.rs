//! Runs a tiny bench (one workload, `off` vs `userspace`, few iterations) against the
//! real VMM when /dev/kvm is usable; prints SKIPPED with the reason otherwise.

use bench::report::{BenchReport, CellStatus};
use bench::BenchArgs;

fn kvm_usable() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("cannot open /dev/kvm: {e}"))
}

#[test]
fn tiny_bench_off_vs_userspace() {
    if let Err(why) = kvm_usable() {
        println!("SKIPPED: {why}");
        return;
    }
    let out = std::env::temp_dir().join(format!("vpmu-bench-smoke-{}", std::process::id()));
    let args = BenchArgs {
        out: out.clone(),
        reps: Some(2),
        modes: "off,userspace".into(),
        workloads: "lfsr".into(),
        activities: "none,sample:1000".into(),
        iters: Some(300_000),
        guest_reps: Some(1),
        msr_iters: Some(300),
        no_progress: true,
        ..BenchArgs::defaults()
    };
    let t0 = std::time::Instant::now();
    bench::run(args).expect("bench run");
    let elapsed = t0.elapsed();

    let json = std::fs::read_to_string(out.join("bench.json")).expect("bench.json");
    let r = BenchReport::from_json(&json).expect("bench.json parses");
    assert_eq!(r.schema, bench::report::SCHEMA_NAME);
    assert_eq!(r.config.reps, 2);
    assert!(r.host.tsc_khz > 0);
    let md = std::fs::read_to_string(out.join("bench.md")).expect("bench.md");
    assert!(md.contains("| off | none (baseline) |"), "{md}");
    let svg = std::fs::read_to_string(out.join("overhead.svg")).expect("overhead.svg");
    assert!(svg.starts_with("<svg"));

    // The baseline ran and produced times.
    let base = r
        .cells
        .iter()
        .find(|c| c.mode == bench::model::Mode::Off)
        .expect("baseline cell");
    assert_eq!(base.status, CellStatus::Ok, "{:?}", base.failures);
    assert_eq!(base.runs.len(), 2);
    assert!(base.summary.as_ref().expect("summary").workload_tsc.median > 0.0);

    // userspace: measured (with an overhead figure) or reported unavailable, never failed.
    for c in r
        .cells
        .iter()
        .filter(|c| c.mode == bench::model::Mode::Userspace)
    {
        match c.status {
            CellStatus::Ok => {
                let s = c.summary.as_ref().expect("summary");
                assert!(s.overhead_pct.is_some());
                if c.activity.sample_hz().is_some() {
                    assert!(s.samples.is_some() && s.expected_samples.is_some());
                    assert!(s.exits.get("msr_write").map(|x| x.median).unwrap_or(0.0) > 0.0);
                }
            }
            CellStatus::Unavailable => println!("userspace unavailable: {:?}", c.reason),
            CellStatus::Failed => panic!("userspace {} failed: {:?}", c.activity, c.failures),
        }
    }
    println!(
        "tiny bench took {elapsed:?}; msr cost: {}",
        r.msr_cost.status
    );
    let _ = std::fs::remove_dir_all(&out);
}
