//! Running the guest: one vpmu-vmm process per mode on this host's /dev/kvm (native), or
//! one boot of the nested QEMU rig that runs them all; then `linux.json` and `linux.md`.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::parse::{parse_l1_console, Section};
use super::report::{assemble, LinuxConfig, LinuxHost, LinuxReport};
use super::script::{guest_script, l1_script, l2_cmdline, vmm_args};
use super::{
    events_for, resolve_via, Environment, LinuxArch, LinuxSettings, GUEST_MARK, L1_MARK,
    SCHEMA_NAME, SCHEMA_VERSION,
};
use crate::error::Error;
use crate::model::Mode;
use crate::report::Versions;
use crate::BenchArgs;

/// A child process's output, with a wall-clock limit.
struct Output {
    stdout: String,
    stderr: String,
    status: Option<i32>,
    timed_out: bool,
    wall_s: f64,
}

fn run_streaming(
    mut cmd: Command,
    timeout: Duration,
    on_line: &mut dyn FnMut(&str),
) -> Result<Output, String> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let mut err = child.stderr.take().expect("piped");
    let err_thread = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let out = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out_thread = std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let l = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\r', '\n'])
                        .to_string();
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut stdout = String::new();
    let mut timed_out = false;
    let status = loop {
        while let Ok(l) = rx.try_recv() {
            on_line(&l);
            stdout.push_str(&l);
            stdout.push('\n');
        }
        match child.try_wait() {
            Ok(Some(st)) => break st.code(),
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for {cmd:?}: {e}")),
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait().ok().and_then(|s| s.code());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = out_thread.join();
    while let Ok(l) = rx.try_recv() {
        on_line(&l);
        stdout.push_str(&l);
        stdout.push('\n');
    }
    Ok(Output {
        stdout,
        stderr: err_thread.join().unwrap_or_default(),
        status,
        timed_out,
        wall_s: start.elapsed().as_secs_f64(),
    })
}

/// Per mode: (lines of the guest console, vpmu-vmm exit, wall s).
struct Gathered {
    probe: Result<serde_json::Value, String>,
    modes: Vec<(Mode, Section, Option<f64>)>,
    console: String,
    outer_wall_s: f64,
}

fn progress_counter(enabled: bool, total: usize) -> impl FnMut(&str) {
    let mut done = 0usize;
    let mut mode = String::new();
    move |l: &str| {
        if let Some(at) = l.find(&format!("{L1_MARK} mode-begin ")) {
            mode = l[at + L1_MARK.len() + 12..].trim().to_string();
        }
        if l.contains(&format!("{GUEST_MARK} c=")) {
            done += 1;
            if enabled {
                eprint!(
                    "\r[{done}/{total}] linux {mode} {}   ",
                    l.split_whitespace()
                        .find(|w| w.starts_with("c="))
                        .unwrap_or("")
                );
            }
        }
    }
}

fn gather_nested(
    s: &LinuxSettings,
    exe: &Path,
    base_cmdline: &str,
    scripts: &[(Mode, String)],
    log: &Path,
    progress: bool,
) -> Result<Gathered, String> {
    if !s.rig.is_file() {
        return Err(format!(
            "{}: no nested rig (run from the repository root, or pass --linux-rig)",
            s.rig.display()
        ));
    }
    let runs: Vec<(Mode, Vec<String>)> = scripts
        .iter()
        .map(|(m, script)| {
            (
                *m,
                vmm_args(
                    s.arch.l1_kernel(),
                    "/l2/initramfs.cpio.gz",
                    s.memory_mib,
                    *m,
                    &l2_cmdline(base_cmdline, script),
                ),
            )
        })
        .collect();
    let l1 = l1_script(&runs);
    let mut cmd = Command::new(&s.rig);
    match s.arch {
        LinuxArch::X86_64 => cmd.arg("--vmm").arg(exe),
        // The rig takes the aarch64 build ($VPMU_VMM_ARM64 or scripts/cross-aarch64.sh's).
        LinuxArch::Arm64 => cmd.args(["--arch", "arm64"]),
    };
    cmd.arg("--timeout")
        .arg(s.timeout_s.to_string())
        .arg("--log")
        .arg(log)
        .arg("--l1-cmd")
        .arg(&l1);
    let total = s.reps as usize * s.activities.len() * s.modes.len();
    let mut on_line = progress_counter(progress, total);
    let out = run_streaming(cmd, Duration::from_secs(s.timeout_s + 60), &mut on_line)?;
    if progress {
        eprintln!();
    }
    if out.timed_out || matches!(out.status, Some(100) | Some(102) | Some(104)) {
        let c = parse_l1_console(&out.stdout);
        if c.modes.is_empty() {
            return Err(format!(
                "nested rig failed (status {:?}{}): {}",
                out.status,
                if out.timed_out { ", timed out" } else { "" },
                out.stderr.trim()
            ));
        }
    }
    let c = parse_l1_console(&out.stdout);
    let probe = match (&c.probe_json, c.probe_exit) {
        (Some(j), Some(0)) => {
            let start = j.find('{').unwrap_or(0);
            serde_json::from_str(&j[start..]).map_err(|e| format!("probe JSON from L1: {e}"))
        }
        (_, st) => Err(format!(
            "vpmu-vmm probe --json in L1 failed (status {st:?})"
        )),
    };
    Ok(Gathered {
        probe,
        modes: c.modes.into_iter().map(|(m, sec)| (m, sec, None)).collect(),
        console: out.stdout,
        outer_wall_s: out.wall_s,
    })
}

fn gather_native(
    s: &LinuxSettings,
    exe: &Path,
    base_cmdline: &str,
    scripts: &[(Mode, String)],
    kernel: &Path,
    initrd: &Path,
    progress: bool,
) -> Result<Gathered, String> {
    let started = Instant::now();
    let probe = vmm::probe_host()
        .map_err(|e| e.to_string())
        .and_then(|h| serde_json::to_value(h.probe_report()).map_err(|e| e.to_string()));
    let total = s.reps as usize * s.activities.len() * s.modes.len();
    let mut on_line = progress_counter(progress, total);
    let mut modes = Vec::new();
    let mut console = String::new();
    let per_mode = Duration::from_secs((s.timeout_s / s.modes.len().max(1) as u64).max(10));
    for (m, script) in scripts {
        on_line(&format!("{L1_MARK} mode-begin {m}"));
        let mut cmd = Command::new(exe);
        cmd.args(vmm_args(
            &kernel.to_string_lossy(),
            &initrd.to_string_lossy(),
            s.memory_mib,
            *m,
            &l2_cmdline(base_cmdline, script),
        ));
        let out = run_streaming(cmd, per_mode, &mut on_line)?;
        console.push_str(&format!("{L1_MARK} mode-begin {m}\n{}", out.stdout));
        console.push_str(&format!(
            "{L1_MARK} mode-end {m} {}\n{}\n",
            out.status.map_or("killed".to_string(), |c| c.to_string()),
            out.stderr
        ));
        let mut sec = Section {
            lines: out.stdout.lines().map(String::from).collect(),
            exit: out.status,
            kvm_exits: None,
        };
        if out.timed_out {
            sec.exit = None;
            sec.lines.push(format!("timed out after {:?}", per_mode));
        }
        modes.push((*m, sec, Some(out.wall_s)));
    }
    if progress {
        eprintln!();
    }
    Ok(Gathered {
        probe,
        modes,
        console,
        outer_wall_s: started.elapsed().as_secs_f64(),
    })
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs `vpmu-vmm bench --linux` and writes `linux.json` + `linux.md` into `args.out`.
pub fn run(args: &BenchArgs) -> Result<(), Error> {
    let started = Instant::now();
    let generated_at = crate::host::now_rfc3339();
    let loadavg_start = crate::host::loadavg();
    let s = LinuxSettings::from_args(args).map_err(Error::Args)?;
    std::fs::create_dir_all(&args.out).map_err(|e| io_err(&args.out, e))?;
    let (env, via_reason) = match s.arch {
        LinuxArch::X86_64 => resolve_via(s.via, Path::new("/sys/module"), Path::new("/dev/kvm")),
        LinuxArch::Arm64 => (
            Environment::NestedTcg,
            "--linux-arch arm64: the arm64 nested rig (QEMU TCG aarch64, EL2, PMUv3)".into(),
        ),
    };
    let exe = std::env::current_exe()
        .map_err(|e| Error::Harness(format!("cannot find this executable: {e}")))?;
    let kernel = s.image_dir.join("bzImage");
    let initrd = s.image_dir.join("initramfs.cpio.gz");
    let base_cmdline = match env {
        Environment::Native => {
            let p = s.image_dir.join("cmdline");
            for f in [&kernel, &initrd, &p] {
                if !f.is_file() {
                    return Err(Error::Harness(format!(
                        "{} missing: build the guest image first (resources/linux/build-image.sh)",
                        f.display()
                    )));
                }
            }
            std::fs::read_to_string(&p).map_err(|e| io_err(&p, e))?
        }
        Environment::NestedTcg => {
            let rig_dir = s.rig.parent().unwrap_or(Path::new("."));
            let p = match s.arch {
                LinuxArch::X86_64 => rig_dir.join("work/l1/l2-cmdline"),
                // As run.sh --arch arm64 finds its work directory.
                LinuxArch::Arm64 => std::env::var_os("VPMU_NESTED_ARM64_WORK")
                    .map(std::path::PathBuf::from)
                    .unwrap_or_else(|| rig_dir.join("../nested-arm64/work"))
                    .join("l1/l2-cmdline"),
            };
            std::fs::read_to_string(&p).map_err(|_| {
                Error::Harness(format!(
                    "{} missing: build the nested rig first (resources/nested/build-l1.sh)",
                    p.display()
                ))
            })?
        }
    };
    let base_cmdline = base_cmdline.trim().to_string();
    let scripts: Vec<(Mode, String)> = s
        .modes
        .iter()
        .map(|&m| {
            (
                m,
                guest_script(s.seconds, s.reps, &s.activities, &events_for(m, s.events)),
            )
        })
        .collect();
    for (m, script) in &scripts {
        let len = l2_cmdline(&base_cmdline, script).len();
        if len > 2000 {
            return Err(Error::Args(format!(
                "the L2 command line for mode {m} would be {len} bytes (the kernel takes 2048): fewer --reps or --linux-activities"
            )));
        }
    }
    eprintln!(
        "bench --linux: {} {} ({}), modes {}, {} runs per cell",
        s.arch.as_str(),
        env.label(),
        via_reason,
        s.modes
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(","),
        s.reps
    );
    let progress = crate::stderr_progress(args.no_progress);
    let log = args.out.join("linux-console.log");
    let g = match env {
        Environment::NestedTcg => gather_nested(&s, &exe, &base_cmdline, &scripts, &log, progress),
        Environment::Native => gather_native(
            &s,
            &exe,
            &base_cmdline,
            &scripts,
            &kernel,
            &initrd,
            progress,
        ),
    }
    .map_err(Error::Harness)?;
    if env == Environment::Native {
        std::fs::write(&log, &g.console).map_err(|e| io_err(&log, e))?;
    }
    let (mode_results, cells) = assemble(&s.modes, &s.activities, s.events, &g.probe, &g.modes);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let (kernel_s, initrd_s) = match env {
        Environment::Native => (kernel.display().to_string(), initrd.display().to_string()),
        Environment::NestedTcg => (
            format!("{} (in L1)", s.arch.l1_kernel()),
            "/l2/initramfs.cpio.gz (in L1)".into(),
        ),
    };
    let report = LinuxReport {
        schema: SCHEMA_NAME.into(),
        schema_version: SCHEMA_VERSION,
        environment: env,
        environment_label: env.label().into(),
        comparable_with_native: env == Environment::Native,
        via_reason,
        generated_at,
        duration_s: started.elapsed().as_secs_f64(),
        command_line: std::env::args().collect(),
        versions: Versions::current(),
        host: LinuxHost {
            cpu_model: crate::host::cpu_model(&cpuinfo),
            cpus: std::thread::available_parallelism().ok().map(|n| n.get()),
            kernel: crate::host::kernel(),
            kvm_modules: crate::host::kvm_modules(),
            loadavg_start,
            loadavg_end: crate::host::loadavg(),
            guest_env_probe: g.probe.as_ref().ok().cloned(),
            guest_env_probe_error: g.probe.as_ref().err().cloned(),
            outer_wall_s: Some(g.outer_wall_s),
        },
        config: LinuxConfig {
            arch: s.arch,
            quick: args.quick,
            reps: s.reps,
            workload_cpu_s: s.seconds,
            modes: s.modes.clone(),
            activities: s.activities.clone(),
            events: s.events,
            guest_memory_mib: s.memory_mib,
            vcpus: 1,
            kernel: kernel_s,
            initrd: initrd_s,
            l2_cmdline_base: base_cmdline,
            order: "one VM per mode; in it every activity once per pass, alternate passes reversed, after one unmeasured warm-up".into(),
            metric: "wall time per vpmu-work round (CLOCK_MONOTONIC around the workload process, inside perf's child; boot and perf start-up excluded)".into(),
        },
        modes: mode_results,
        cells,
    };
    let json = serde_json::to_string_pretty(&report)? + "\n";
    let jp = args.out.join("linux.json");
    std::fs::write(&jp, json).map_err(|e| io_err(&jp, e))?;
    eprintln!("bench: wrote {}", jp.display());
    if !args.json_only {
        let mp = args.out.join("linux.md");
        std::fs::write(&mp, crate::markdown::render_linux(&report)).map_err(|e| io_err(&mp, e))?;
        eprintln!("bench: wrote {}", mp.display());
    }
    eprintln!("bench: console log {}", log.display());
    Ok(())
}
