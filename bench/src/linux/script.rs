//! What the Linux guest and the L1 rig run: the guest's shell script, its kernel command
//! line, and the vpmu-vmm command lines.

use super::{plan, Events, LinuxActivity, GUEST_MARK, L1_MARK};
use crate::model::Mode;

/// Standard base64 with padding (what /init's `base64 -d` reads), RFC 4648 section 4.
pub fn base64(data: &[u8]) -> String {
    use ::base64::Engine as _;
    ::base64::engine::general_purpose::STANDARD.encode(data)
}

/// The shell script the guest's /init runs (`vpmu.cmd=`): writes the timing wrapper
/// `/tmp/w`, warms up, then runs the plan and prints one `VPMU-LBENCH c=P.I ...` line per
/// run.
pub fn guest_script(seconds: f64, reps: u32, activities: &[LinuxActivity], ev: &Events) -> String {
    let secs = format!("{seconds}");
    let mut s = String::new();
    // The timed region: the workload process, from inside perf's child.
    s.push_str("cat >/tmp/w <<'E'\n");
    s.push_str("t(){ sed -n 's/^now at \\([0-9]*\\) nsecs$/\\1/p;3q' /proc/timer_list;}\n");
    s.push_str(
        "a=$(t);/bin/vpmu-work $1>/tmp/o;b=$(t);echo \"ns=$((b-a)) $(cat /tmp/o)\">/tmp/t\n",
    );
    s.push_str("E\n");
    s.push_str("m=/proc/sys/kernel/perf_event_max_sample_rate;d=$(cat $m)\n");
    s.push_str(&format!(
        "echo \"{GUEST_MARK} pmu=$(ls /sys/bus/event_source/devices|tr '\\n' ,) msr=$d\"\n"
    ));
    // Warm-up (not measured): perf and the workload once each.
    s.push_str("perf stat -e task-clock true >/dev/null 2>&1;sh /tmp/w 0.05\n");
    let order: Vec<String> = plan(reps, activities.len())
        .into_iter()
        .map(|(p, i)| format!("{p}.{i}"))
        .collect();
    s.push_str(&format!(
        "for c in {};do rm -f /tmp/t /tmp/e /tmp/p;echo $d>$m;case ${{c#*.}} in\n",
        order.join(" ")
    ));
    for (i, a) in activities.iter().enumerate() {
        let cmd = match a {
            LinuxActivity::None => format!("sh /tmp/w {secs}"),
            LinuxActivity::Stat => {
                format!("perf stat -j -e {} -o /tmp/e sh /tmp/w {secs}", ev.stat)
            }
            LinuxActivity::Record(hz) => format!(
                "perf record -e {} -F {hz} -o /tmp/p sh /tmp/w {secs} 2>/tmp/e",
                ev.record
            ),
        };
        s.push_str(&format!("{i}){cmd};;\n"));
    }
    s.push_str(&format!(
        "esac;x=$?;echo \"{GUEST_MARK} c=$c x=$x $(cat /tmp/t 2>/dev/null) msr=$(cat $m) perf: $(grep -v '^#' /tmp/e 2>/dev/null|tr '\\n' ';')\";done\n"
    ));
    s
}

/// The L2 kernel command line: `base` plus the script as `vpmu.cmd=<base64>`.
pub fn l2_cmdline(base: &str, script: &str) -> String {
    format!("{} vpmu.cmd={}", base.trim(), base64(script.as_bytes()))
}

/// Single-quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The vpmu-vmm arguments of one mode's VM (after the binary).
pub fn vmm_args(
    kernel: &str,
    initrd: &str,
    memory_mib: u64,
    mode: Mode,
    cmdline: &str,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--kernel".into(),
        kernel.into(),
        "--initrd".into(),
        initrd.into(),
        "--memory".into(),
        format!("{memory_mib}M"),
        "--pmu".into(),
        mode.pmu_str().into(),
    ];
    if mode.audits() {
        args.extend(["--pmu-audit".into(), "/tmp/vpmu-audit.jsonl".into()]);
    }
    args.extend(["--cmdline".into(), cmdline.into()]);
    args
}

/// The L1 shell script of a nested run: the probe, then one vpmu-vmm run per mode, each
/// between `VPMU-LBENCH-L1 mode-begin M` / `mode-end M <status>` lines.
///
/// After each run a `kvm-exits M 0 E T0 T1` line gives L1's KVM exit count E (debugfs
/// `kvm/exits`: every exit kind of every vCPU, PMU register traps included) and L1's
/// uptime before and after (`-` where debugfs is missing). debugfs sums over the VMs that
/// exist, so E is sampled while the VM runs (every 0.2 s of L1 time; the last sample).
pub fn l1_script(runs: &[(Mode, Vec<String>)]) -> String {
    let mut s = format!(
        "mount -t debugfs none /sys/kernel/debug 2>/dev/null\n\
         kx() {{ cat /sys/kernel/debug/kvm/exits 2>/dev/null || echo -; }}\n\
         up() {{ cut -d' ' -f1 /proc/uptime; }}\n\
         watch_exits() {{ while :; do v=$(kx); [ \"$v\" = 0 ] || echo \"$v\" >/tmp/kx; sleep 0.2; done; }}\n\
         echo '{L1_MARK} probe-begin';/bin/vpmu-vmm probe --json;echo \"{L1_MARK} probe-end $?\"\n"
    );
    for (mode, args) in runs {
        let line: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
        s.push_str(&format!(
            "echo '{L1_MARK} mode-begin {mode}';rm -f /tmp/kx;watch_exits & w=$!;t0=$(up);/bin/vpmu-vmm {};st=$?;t1=$(up);\
             kill $w;wait $w 2>/dev/null;echo \"{L1_MARK} mode-end {mode} $st\";\
             echo \"{L1_MARK} kvm-exits {mode} 0 $(cat /tmp/kx 2>/dev/null || echo -) $t0 $t1\"\n",
            line.join(" ")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::{events_for, EventChoice};

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x3e]), "//4+");
    }

    #[test]
    fn scripts_and_command_lines() {
        let acts = [
            LinuxActivity::None,
            LinuxActivity::Stat,
            LinuxActivity::Record(1000),
        ];
        let ev = events_for(Mode::Off, EventChoice::Auto);
        let s = guest_script(0.3, 2, &acts, &ev);
        assert!(s.contains("for c in 1.0 1.1 1.2 2.2 2.1 2.0;do"), "{s}");
        assert!(s.contains("0)sh /tmp/w 0.3;;"), "{s}");
        assert!(
            s.contains("1)perf stat -j -e task-clock -o /tmp/e sh /tmp/w 0.3;;"),
            "{s}"
        );
        assert!(
            s.contains("2)perf record -e cpu-clock -F 1000 -o /tmp/p sh /tmp/w 0.3 2>/tmp/e;;"),
            "{s}"
        );
        let base = "console=ttyS0 quiet\n";
        let cl = l2_cmdline(base, &s);
        assert!(cl.starts_with("console=ttyS0 quiet vpmu.cmd="));
        assert_eq!(
            cl,
            format!("console=ttyS0 quiet vpmu.cmd={}", base64(s.as_bytes()))
        );
        // The default plan fits the kernel's 2048-byte command line.
        let all = [
            LinuxActivity::None,
            LinuxActivity::Stat,
            LinuxActivity::Record(1000),
            LinuxActivity::Record(10_000),
        ];
        let hw = events_for(Mode::Userspace, EventChoice::Auto);
        let long = l2_cmdline(
            "console=ttyS0 reboot=t panic=-1 pci=off 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd quiet",
            &guest_script(1.0, 5, &all, &hw),
        );
        assert!(long.len() < 2000, "{}", long.len());

        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        let audited = vmm_args("/l2/bzImage", "/l2/i", 512, Mode::EmulatedAudit, "a");
        let at = |f: &str| audited.iter().position(|x| x == f).unwrap();
        assert_eq!(audited[at("--pmu") + 1], "emulated");
        assert!(audited[at("--pmu-audit") + 1].ends_with(".jsonl"));
        assert_eq!(audited.last().unwrap(), "a");
        let a = vmm_args("/l2/bzImage", "/l2/i", 512, Mode::Userspace, "a b");
        assert_eq!(
            a,
            [
                "run",
                "--kernel",
                "/l2/bzImage",
                "--initrd",
                "/l2/i",
                "--memory",
                "512M",
                "--pmu",
                "userspace",
                "--cmdline",
                "a b"
            ]
        );
        let l1 = l1_script(&[(Mode::Off, a)]);
        assert!(l1.contains("/bin/vpmu-vmm probe --json"), "{l1}");
        assert!(
            l1.contains("echo 'VPMU-LBENCH-L1 mode-begin off';rm -f /tmp/kx;watch_exits & w=$!;t0=$(up);/bin/vpmu-vmm 'run' '--kernel'"),
            "{l1}"
        );
        assert!(
            l1.contains("'--cmdline' 'a b';st=$?;t1=$(up);kill $w;wait $w 2>/dev/null;echo \"VPMU-LBENCH-L1 mode-end off $st\""),
            "{l1}"
        );
        assert!(
            l1.contains("echo \"VPMU-LBENCH-L1 kvm-exits off 0 $(cat /tmp/kx 2>/dev/null || echo -) $t0 $t1\""),
            "{l1}"
        );
    }
}
