//! Getting files out of a Linux guest: virtio-blk on virtio-mmio (`vpmu-vmm run --disk`),
//! end to end through the nested rig (docs/NESTED.md, docs/DISKS.md):
//! L2 records with `perf record -e cpu-clock`, writes perf.data (and the profiled binary,
//! for symbols) to /dev/vda as a tar archive; the rig brings the disk image back to the
//! host (`run.sh --disk-out`), where `tar` unpacks it and the host's `perf report` must
//! show the workload's symbols. A second, read-only disk supplied from the host checks the
//! other direction and VIRTIO_BLK_F_RO.
//!
//!   cargo test --release --test linux_disk
//!
//! Same conventions as tests/linux_nested.rs: a missing prerequisite (qemu-system-x86_64,
//! the images, host `perf` and `tar`) FAILS with what is missing; VPMU_SKIP_NESTED=<reason>
//! (any value but "" or "0") prints "SKIPPED: <test>: VPMU_SKIP_NESTED=<reason>" to stderr
//! and passes.

use std::path::{Path, PathBuf};
use std::process::Command;

const VMM: &str = env!("CARGO_BIN_EXE_vpmu-vmm");
const REPO: &str = env!("CARGO_MANIFEST_DIR");

#[path = "common/rig.rs"]
mod rig;
use rig::{say, skip_requested};

/// true: go ahead; false: skipped (reason printed). Panics when a prerequisite is missing.
fn rig_ready(test: &str) -> bool {
    if let Some(why) = skip_requested(&["VPMU_SKIP_NESTED"]) {
        say(&format!("SKIPPED: {test}: {why}"));
        return false;
    }
    let mut missing = Vec::new();
    for (tool, arg, pkg) in [
        ("qemu-system-x86_64", "--version", "qemu-system-x86"),
        ("perf", "--version", "linux-perf"),
        ("tar", "--version", "tar"),
    ] {
        if !matches!(Command::new(tool).arg(arg).output(), Ok(o) if o.status.success()) {
            missing.push(format!("{tool} (Debian package {pkg})"));
        }
    }
    assert!(
        missing.is_empty(),
        "prerequisites missing: {}\n(set VPMU_SKIP_NESTED=1 to skip these tests explicitly)",
        missing.join("; ")
    );
    let build = Command::new(Path::new(REPO).join("resources/nested/build-l1.sh"))
        .output()
        .expect("run resources/nested/build-l1.sh");
    assert!(
        build.status.success(),
        "resources/nested/build-l1.sh failed:\n{}{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );
    true
}

fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vpmu-linux-disk-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

#[test]
fn perf_data_comes_out_of_l2_through_a_virtio_disk() {
    if !rig_ready("perf_data_comes_out_of_l2_through_a_virtio_disk") {
        return;
    }
    let dir = scratch_dir("perf");
    let out_img = dir.join("perf.img");
    let log_path = dir.join("console.log");
    // A read-only disk from the host, with a marker in its first sector.
    let ro_img = dir.join("ro.img");
    let mut ro = vec![0u8; 64 << 10];
    ro[..16].copy_from_slice(b"VPMU-HOST-DISK-1");
    std::fs::write(&ro_img, &ro).expect("ro image");

    let guest_cmd = "set -e; \
        cat /sys/block/vdb/ro | sed 's/^/vdb-ro=/'; \
        dd if=/dev/vdb bs=512 count=1 2>/dev/null | head -c 16 | sed 's/^/vdb-data=/'; echo; \
        if echo x | dd of=/dev/vdb bs=512 count=1 conv=fsync 2>/dev/null; then echo vdb-write=ok; else echo vdb-write=refused; fi; \
        cd /tmp; perf record -e cpu-clock -F 1000 -o perf.data /bin/vpmu-work 1; \
        mkdir -p bin; cp /bin/vpmu-work bin/; cat /proc/kallsyms > kallsyms; \
        tar cf /dev/vda perf.data bin kallsyms; sync; echo tar-done";
    let start = std::time::Instant::now();
    let out = Command::new(Path::new(REPO).join("resources/nested/run.sh"))
        .args(["--vmm", VMM, "--quiet", "--timeout", "240", "--log"])
        .arg(&log_path)
        .arg("--disk-out")
        .arg(&out_img)
        .args(["--disk-size", "16", "--file"])
        .arg(&ro_img)
        .args(["--guest-cmd", guest_cmd, "--"])
        .args(["--memory", "512M", "--stats", "--disk", "/files/ro.img,ro"])
        .output()
        .expect("run resources/nested/run.sh");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&out.stderr);
    say(&format!(
        "linux_disk: run.sh status {:?}, {:.1} s ({})",
        out.status.code(),
        start.elapsed().as_secs_f64(),
        stderr.trim()
    ));
    let check = |cond: bool, what: &str| {
        assert!(
            cond,
            "{what}\n--- run.sh status {:?}, stderr:\n{stderr}\n--- console log:\n{log}",
            out.status.code()
        )
    };
    check(out.status.code() == Some(0), "vpmu-vmm should exit 0");
    check(
        log.contains("VPMU-GUEST: disks vda vdb"),
        "L2 should find two virtio disks",
    );
    check(log.contains("vdb-ro=1"), "vdb should be read-only in L2");
    check(
        log.contains("vdb-data=VPMU-HOST-DISK-1"),
        "L2 should read the host's data from vdb",
    );
    check(
        log.contains("vdb-write=refused"),
        "a write to the read-only disk must fail",
    );
    check(
        log.contains("perf record: Captured and wrote"),
        "perf record should write samples",
    );
    check(log.contains("tar-done"), "tar to /dev/vda should succeed");
    check(
        log.lines()
            .any(|l| l.starts_with("disk0: 32768 sectors | ") && !l.contains("writes 0 ")),
        "vpmu-vmm --stats should show writes to disk0",
    );
    check(
        log.lines()
            .any(|l| l.starts_with("disk1: 128 sectors ro | ")),
        "vpmu-vmm --stats should list the read-only disk1",
    );
    // The host never changed: the read-only image is as it was.
    check(
        std::fs::read(&ro_img).expect("ro image") == ro,
        "the read-only image must be unchanged",
    );

    // Host side: unpack and report.
    let x = dir.join("x");
    std::fs::create_dir_all(&x).expect("x");
    let tar = Command::new("tar")
        .arg("xf")
        .arg(&out_img)
        .arg("-C")
        .arg(&x)
        .output()
        .expect("tar");
    check(
        tar.status.success(),
        &format!("tar xf perf.img: {}", String::from_utf8_lossy(&tar.stderr)),
    );
    check(x.join("perf.data").is_file(), "perf.data in the archive");
    check(x.join("kallsyms").is_file(), "kallsyms in the archive");
    let report = Command::new("perf")
        .arg("report")
        .arg("-i")
        .arg(x.join("perf.data"))
        .arg("--symfs")
        .arg(&x)
        .arg("--kallsyms")
        .arg(x.join("kallsyms"))
        .args(["--stdio", "--sort", "symbol"])
        .output()
        .expect("perf report");
    let text = String::from_utf8_lossy(&report.stdout);
    check(
        report.status.success(),
        &format!(
            "host perf report failed: {}",
            String::from_utf8_lossy(&report.stderr)
        ),
    );
    for sym in [
        "vpmu_work_integer_mix",
        "vpmu_work_branchy",
        "vpmu_work_memory_walk",
    ] {
        check(
            text.contains(sym),
            &format!("host perf report should show {sym}; it printed:\n{text}"),
        );
    }
    // With the guest's kallsyms, kernel frames have names, not raw addresses.
    let kernel: Vec<&str> = text.lines().filter(|l| l.contains("[k]")).collect();
    check(
        kernel.is_empty() || kernel.iter().any(|l| !l.contains("[k] 0x")),
        &format!("kernel frames are still raw addresses:\n{text}"),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
