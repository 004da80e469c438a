//! End-to-end tests of the VMM under this host's /dev/kvm, with the freestanding guests
//! the repo builds itself. Each test skips (printing SKIPPED and why) only when /dev/kvm
//! cannot be opened.

#[macro_use]
mod common;
use common::*;
use std::process::Command;

/// `ud2` with an empty IDT: #UD -> #GP -> #DF -> triple fault.
const TRIPLE_FAULT: &str = "0f0b";

/// Writes a pseudo-random byte/word/dword to every port except 0x64 (i8042 command) and
/// 0xf4-0xf7 (debug-exit), reads every port back, then writes 0x2a to 0xf4.
const PORT_FUZZ: &str = "31c9bb7856341283f964742689c825fcff00003df4000000741889ca69db6d4ec64181c33930000089d8ee66efefec66ededffc181f90000010075cb66baf400b82a000000eff4ebfd";

#[test]
fn demo_prints_and_exits_with_its_code() {
    need_kvm!("demo_prints_and_exits_with_its_code");
    let o = vmm(&["demo", "--pmu", "off"]);
    let s = out(&o);
    assert_eq!(status(&o), 0, "stdout:\n{s}\nstderr:\n{}", err(&o));
    assert!(s.contains("vpmu-vmm demo guest: 1 vCPU(s)"), "{s}");
    assert!(s.contains("workload: sieve primes=82025"), "{s}");
    assert!(s.contains("profile: no PMU in this guest"), "{s}");
    assert!(s.contains("demo: done (1 of 1 vCPUs reported)"), "{s}");
}

#[test]
fn run_gives_debug_exit_status() {
    need_kvm!("run_gives_debug_exit_status");
    // The demo writes V=0 to 0xf4: `run` gives QEMU isa-debug-exit status (0 << 1) | 1.
    assert_demo_runs(&[]);
}

#[test]
fn two_vcpus_both_report() {
    need_kvm!("two_vcpus_both_report");
    let s = out(&assert_demo_runs(&["--cpus", "2"]));
    assert!(s.contains("vcpu 1 of 2 reporting"), "{s}");
    assert!(s.contains("(2 of 2 vCPUs reported)"), "{s}");
}

#[test]
fn four_vcpus_all_report() {
    need_kvm!("four_vcpus_all_report");
    let s = out(&assert_demo_runs(&[
        "--cpus",
        "4",
        "--cmdline",
        "profile=off",
    ]));
    for i in 1..4 {
        assert!(s.contains(&format!("vcpu {i} of 4 reporting")), "{s}");
    }
    assert!(s.contains("(4 of 4 vCPUs reported)"), "{s}");
}

#[test]
fn triple_fault_is_reported() {
    need_kvm!("triple_fault_is_reported");
    let k = write_scratch("tf.elf", &elf64(&hex(TRIPLE_FAULT), 0x20_0000));
    let o = vmm(&["run", "--kernel", &k]);
    assert_eq!(status(&o), 4, "{}", err(&o));
    assert!(
        err(&o).contains("guest shut down (triple fault) at RIP=0x200000"),
        "stderr: {}",
        err(&o)
    );
}

/// A minimal bzImage (boot protocol 2.15, 64-bit entry): one setup sector, then a
/// protected-mode part whose 64-bit entry (load address + 0x200) is `code`.
fn bzimage(code: &[u8]) -> Vec<u8> {
    let mut bz = vec![0u8; 1024 + 0x1000];
    bz[0x1f1] = 1; // setup_sects
    bz[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes()); // boot_flag
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    bz[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // version
    bz[0x211] = 1; // loadflags: LOADED_HIGH
    bz[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    bz[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    bz[0x238..0x23c].copy_from_slice(&0x7ffu32.to_le_bytes()); // cmdline_size
    bz[1024 + 0x200..1024 + 0x200 + code.len()].copy_from_slice(code);
    bz
}

#[test]
fn a_linux_triple_fault_hints_at_a_kernel_panic() {
    need_kvm!("a_linux_triple_fault_hints_at_a_kernel_panic");
    // A "Linux kernel" that triple-faults at once, as one does after a panic.
    let k = write_scratch("tf.bzImage", &bzimage(&hex(TRIPLE_FAULT)));
    let o = vmm(&["run", "--kernel", &k, "--memory", "64M"]);
    let e = err(&o);
    assert_eq!(status(&o), 4, "{e}");
    let lines: Vec<&str> = e.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.contains("guest shut down (triple fault) at RIP=0x100200"))
        .unwrap_or_else(|| panic!("the outcome line: {e}"));
    let hint = lines.get(i + 1).copied().unwrap_or_default();
    assert!(
        hint.starts_with("vpmu-vmm: hint: the guest kernel most likely panicked"),
        "the hint follows the outcome: {e}"
    );
    assert!(hint.contains("earlycon=uart8250,io,0x3f8"), "{hint}");
    // A freestanding guest's triple fault is its own bug: no hint.
    let k = write_scratch("tf2.elf", &elf64(&hex(TRIPLE_FAULT), 0x20_0000));
    let o = vmm(&["run", "--kernel", &k]);
    assert_eq!(status(&o), 4, "{}", err(&o));
    assert!(!err(&o).contains("hint:"), "{}", err(&o));
}

#[test]
fn hostile_port_writes_never_break_the_vmm() {
    need_kvm!("hostile_port_writes_never_break_the_vmm");
    let k = write_scratch("fuzz.elf", &elf64(&hex(PORT_FUZZ), 0x20_0000));
    let (o, report) = vmm_report(&["run", "--kernel", &k]);
    // The guest ends with V = 0x2a: status (0x2a << 1) | 1 = 85.
    assert_eq!(status(&o), 85, "stderr: {}", err(&o));
    let report = report.expect("run report");
    assert!(
        report["unhandled_pio"].as_u64().is_some_and(|n| n > 0),
        "stray port accesses are counted: {report}"
    );
}

#[test]
fn bad_kernel_files_give_clear_errors() {
    need_kvm!("bad_kernel_files_give_clear_errors");
    assert_clean_error(
        &["run", "--kernel", "/nonexistent/vmlinuz"],
        "cannot read kernel /nonexistent/vmlinuz",
    );
    let empty = write_scratch("empty", b"");
    assert_clean_error(&["run", "--kernel", &empty], "not a bzImage or an ELF64");
    let garbage: Vec<u8> = (0..65536u32)
        .map(|i| ((i.wrapping_mul(2654435761) >> 13) & 0xff) as u8)
        .collect();
    let g = write_scratch("garbage", &garbage);
    assert_clean_error(&["run", "--kernel", &g], "not a bzImage or an ELF64");
    // A valid ELF header whose program headers point past the end of the file.
    let mut trunc = elf64(&hex(TRIPLE_FAULT), 0x20_0000);
    trunc[32..40].copy_from_slice(&0xffff_0000u64.to_le_bytes());
    let t = write_scratch("trunc.elf", &trunc);
    assert_clean_error(&["run", "--kernel", &t], "invalid ELF image");
    // A segment far beyond guest memory.
    let far = write_scratch("far.elf", &elf64(&hex(TRIPLE_FAULT), 0x40_0000_0000));
    assert_clean_error(&["run", "--kernel", &far], "invalid ELF image");
    // A bzImage header ("HdrS") with garbage around it.
    let mut bz = garbage.clone();
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    let b = write_scratch("bz", &bz);
    assert_clean_error(&["run", "--kernel", &b], "bzImage");
    // A kernel larger than guest memory.
    let big = write_scratch("big", &vec![0x90u8; 17 << 20]);
    assert_clean_error(
        &["run", "--kernel", &big, "--memory", "16M"],
        "does not fit in guest memory",
    );
    // An initrd for a freestanding guest, and a missing initrd.
    assert_clean_error(
        &demo_args(&["--initrd", &empty]),
        "only meaningful for Linux",
    );
    assert_clean_error(
        &["run", "--kernel", "builtin:nope"],
        "no built-in guest 'nope'",
    );
}

#[test]
fn absurd_configuration_is_refused() {
    need_kvm!("absurd_configuration_is_refused");
    for (extra, needle) in [
        (&["--cpus", "0"][..], "--cpus must be between 1 and 32"),
        (&["--cpus", "1000"], "--cpus must be between 1 and 32"),
        (&["--memory", "5Q"], "cannot parse size"),
        (&["--memory", "99999999T"], "--memory must be between"),
        (&["--memory", "1M"], "--memory must be between"),
        (&["--pmu", "turbo"], "turbo"),
        (
            &["--pmu", "userspace", "--pmu-layout", "sparc:gp=3"],
            "PMU configuration",
        ),
        (
            &["--pmu", "userspace", "--pmu-policy", "/nonexistent.toml"],
            "/nonexistent.toml",
        ),
    ] {
        assert_clean_error(&demo_args(extra), needle);
    }
}

#[test]
fn input_files_must_be_regular_and_small_enough_before_reading() {
    need_kvm!("input_files_must_be_regular_and_small_enough_before_reading");
    // A character device that never ends, a FIFO nobody writes, a directory and a
    // procfs file: refused before a byte is read (no memory exhaustion, no hang).
    let fifo = mkfifo(&scratch("kernel.fifo"));
    for (kernel, what) in [
        ("/dev/zero", "is a character device, not a regular file"),
        (fifo.as_str(), "is a FIFO, not a regular file"),
        ("/", "is a directory, not a regular file"),
        (
            "/proc/self/environ",
            "is a file on procfs, not a regular file",
        ),
    ] {
        assert_clean_error(
            &["run", "--kernel", kernel],
            &format!("kernel {kernel} {what}"),
        );
    }
    // Policies: the same, plus a size limit well below "all of memory": 5 MiB of TOML
    // comments, valid, but over the 4 MiB limit.
    let big = "# padding padding padding padding padding padding padding padding pad\n"
        .repeat(5 << 20 >> 6);
    let big = write_scratch("big-policy.toml", big.as_bytes());
    for (policy, needle) in [
        (
            "/dev/zero",
            "policy /dev/zero is a character device, not a regular file".to_string(),
        ),
        (
            fifo.as_str(),
            format!("policy {fifo} is a FIFO, not a regular file"),
        ),
        (
            big.as_str(),
            "bytes, more than the limit of 4194304 bytes".to_string(),
        ),
    ] {
        assert_clean_error(
            &demo_args(&["--pmu", "userspace", "--pmu-policy", policy]),
            &needle,
        );
    }
}

#[test]
fn freestanding_cmdline_must_be_printable_ascii() {
    need_kvm!("freestanding_cmdline_must_be_printable_ascii");
    let long = "x".repeat(4097);
    for bad in ["period=1\n", "a\tb", "caf\u{e9}", "\u{7f}", long.as_str()] {
        assert_clean_error(&demo_args(&["--cmdline", bad]), "printable ASCII");
    }
    // The longest accepted argument string, all printable.
    let ok = format!("period=1000000 {}", "~".repeat(4096 - 15));
    assert_demo_runs(&["--cmdline", &ok]);
}

/// `rdmsr IA32_MISC_ENABLE`, then report bit 0 (fast strings), bit 11 (BTS_UNAVAIL) and
/// bit 12 (PEBS_UNAVAIL) as V bits 0..2 through the debug-exit port.
const READ_MISC_ENABLE: &str = "b9a00100000f3289c383e301c1e80a83e00609d866baf400eff4ebfd";

#[test]
fn boot_keeps_kvm_misc_enable_bits() {
    need_kvm!("boot_keeps_kvm_misc_enable_bits");
    // KVM sets BTS_UNAVAIL | PEBS_UNAVAIL at vCPU reset (kvm_vcpu_reset, 6.x and later;
    // this machine's PVM KVM resets it to 1) and accepts any host-initiated write: the boot
    // MSRs add fast strings to KVM's value, never clear it, or the guest believes BTS and
    // PEBS are there. (arch::x86_64::regs's unit test checks the read-modify-write itself.)
    let k = write_scratch("misc-enable.elf", &elf64(&hex(READ_MISC_ENABLE), 0x20_0000));
    for pmu in ["off", "userspace"] {
        let o = vmm(&["run", "--kernel", &k, "--pmu", pmu]);
        let st = status(&o);
        assert_eq!(st & 1, 1, "--pmu {pmu}: no debug exit: {}", err(&o));
        let v = st >> 1;
        assert_eq!(v & 1, 1, "--pmu {pmu}: fast strings off: V={v:#b}");
        // BTS and PEBS are both unavailable, or (a KVM that does not set them) both clear.
        assert!(v >> 1 == 0 || v >> 1 == 3, "--pmu {pmu}: V={v:#b}");
        println!(
            "--pmu {pmu}: guest MISC_ENABLE bits: fast strings, BTS/PEBS_UNAVAIL={}",
            v >> 1
        );
    }
}

#[test]
fn a_host_that_cannot_run_linux_says_so_up_front() {
    need_kvm!("a_host_that_cannot_run_linux_says_so_up_front");
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    let o = vmm(&["probe"]);
    let s = out(&o);
    let line = s
        .lines()
        .find(|l| l.contains("Linux guests:"))
        .unwrap_or_else(|| panic!("no Linux guests line:\n{s}"));
    assert_eq!(line.contains("NOT natively"), pvm, "{line}");
    if pvm {
        assert!(line.contains("docs/NESTED.md"), "{line}");
    }
    // `run` with a Linux kernel says it before booting (no 90 s of silence).
    let image = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("resources/out/linux");
    if !pvm || !image.join("bzImage").exists() {
        skip(
            "a_host_that_cannot_run_linux_says_so_up_front (run part)",
            if pvm {
                "no Linux image built (resources/linux/build-image.sh)"
            } else {
                "this KVM runs Linux guests natively"
            },
        );
        return;
    }
    let o = std::process::Command::new("timeout")
        .args(["3", bin(), "run", "--kernel"])
        .arg(image.join("bzImage"))
        .arg("--initrd")
        .arg(image.join("initramfs.cpio.gz"))
        .args(["--memory", "512M", "--cmdline", "console=ttyS0"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("spawn");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.lines()
            .next()
            .is_some_and(|l| l.contains("kvm_pvm") && l.contains("docs/NESTED.md")),
        "{e}"
    );
}

#[test]
fn expect_exit_turns_the_guests_pass_into_status_0() {
    need_kvm!("expect_exit_turns_the_guests_pass_into_status_0");
    // The conformance guest writes V=0 when nothing failed: status 1 by the debug-exit
    // rule, 0 with --expect-exit 0, and not 0 when another value is expected.
    for (extra, want) in [
        (&[][..], 1),
        (&["--expect-exit", "0"], 0),
        (&["--expect-exit", "7"], 1),
    ] {
        let mut args = vec!["run", "--kernel", "builtin:conformance"];
        args.extend_from_slice(extra);
        let o = vmm(&args);
        assert_eq!(status(&o), want, "{args:?}: {}", err(&o));
    }
}

#[test]
fn an_unwritable_report_is_refused_before_boot() {
    need_kvm!("an_unwritable_report_is_refused_before_boot");
    let o = vmm(&[
        "run",
        "--kernel",
        "builtin:conformance",
        "--report",
        "/nonexistent-dir/r.json",
    ]);
    assert_eq!(status(&o), 2, "{}", err(&o));
    assert!(err(&o).contains("cannot write report"), "{}", err(&o));
    // Refused before the guest ran: no conformance output at all.
    assert!(!out(&o).contains("conformance:"), "{}", out(&o));
    // A report path that does not exist yet is not left behind by the check.
    let p = scratch("fresh-report.json");
    let ps = p.to_string_lossy().into_owned();
    let o = vmm(&["run", "--kernel", "builtin:conformance", "--report", &ps]);
    assert_eq!(status(&o), 1, "{}", err(&o));
    assert!(p.is_file(), "the report is written at the end");
}

/// One KVM_GET_SUPPORTED_CPUID per run, shared by the host probe, the vPMU plan and the
/// vCPUs' CPUID, `--pmu auto` included (it used to probe the host a second time in the
/// CLI). Counted with strace.
#[test]
fn one_supported_cpuid_query_per_run() {
    need_kvm!("one_supported_cpuid_query_per_run");
    if Command::new("strace").arg("-V").output().is_err() {
        skip(
            "one_supported_cpuid_query_per_run",
            "strace is not installed (Debian: apt-get install strace)",
        );
        return;
    }
    for args in [
        &["demo", "--pmu", "auto"][..],
        &["demo", "--pmu", "userspace"][..],
        &["run", "--kernel", "builtin:conformance", "--pmu", "off"][..],
    ] {
        let trace = scratch("cpuid.strace");
        let o = Command::new("timeout")
            .args(["120", "strace", "-f", "-e", "trace=ioctl", "-o"])
            .arg(&trace)
            .arg(bin())
            .args(args)
            .output()
            .expect("strace");
        assert_ne!(status(&o), 2, "{args:?}: {}", err(&o));
        let t = std::fs::read_to_string(&trace).expect("strace output");
        let n = t.matches("KVM_GET_SUPPORTED_CPUID").count();
        assert_eq!(n, 1, "{args:?}: {n} KVM_GET_SUPPORTED_CPUID calls");
    }
}

/// A guest that spins without a word: after `--watchdog 1` the VMM says so once, with the
/// vCPU's instruction pointer (the spin loop's address); `--watchdog 0` stays silent.
#[test]
fn watchdog_names_a_silent_spinning_guest() {
    need_kvm!("watchdog_names_a_silent_spinning_guest");
    // jmp $ at 0x200000
    let k = write_scratch("spin.elf", &elf64(&[0xeb, 0xfe], 0x20_0000));
    for (secs, expect) in [("1", true), ("0", false)] {
        let o = Command::new("timeout")
            .args([
                "--preserve-status",
                "-s",
                "TERM",
                "3",
                bin(),
                "run",
                "--kernel",
                &k,
            ])
            .args(["--memory", "64M", "--watchdog", secs])
            .output()
            .expect("spawn");
        let e = err(&o);
        assert_eq!(status(&o), 12, "SIGTERM ends it: {e}");
        let lines: Vec<&str> = e.lines().filter(|l| l.contains("watchdog:")).collect();
        if expect {
            assert_eq!(lines.len(), 1, "said once: {e}");
            assert!(
                lines[0].contains("no console output in 1 s and the guest has not ended")
                    && lines[0].contains("vCPU 0: ")
                    && lines[0].contains("RIP 0x200000"),
                "{e}"
            );
        } else {
            assert!(lines.is_empty(), "--watchdog 0: {e}");
        }
    }
}
