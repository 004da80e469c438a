//! `vpmu-vmm`: a small KVM virtual machine monitor that gives guests a fast, safe and
//! observable vPMU.
//!
//! Subcommands: `run` (boot a kernel), `demo` (the built-in demo guest with a vPMU),
//! `probe` (what this host can offer, and why not), `bench` (overhead of the vPMU modes,
//! side by side), `validate` (everything this host's vPMU can do, in one report), `guests`
//! (list or extract the built-in guests).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use vmm::outcome::STATUS_VMM_ERROR;
use vmm::{Console, DiskConfig, KernelImage, PmuSettings, VmConfig};
use vpmu::discovery::PmuMode;

#[cfg(target_arch = "x86_64")]
mod validate;

#[derive(Parser)]
#[command(
    name = "vpmu-vmm",
    version,
    about = "A small KVM VMM with a fast, safe, observable vPMU"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot a guest: a Linux bzImage or vmlinux (with initramfs), or a freestanding ELF64.
    ///
    /// Exit status: 0 when the guest resets or powers off; (V << 1) | 1 when it writes V to
    /// the debug-exit port 0xf4 (QEMU isa-debug-exit semantics, always odd); even statuses
    /// for VMM-side endings: 2 VMM/config error, 4 triple fault, 6 KVM internal error,
    /// 8 guest crash, 10 run-loop error.
    Run(RunArgs),
    /// Run the built-in demo guest: a CPL3 workload profiled by its own tiny `perf record`
    /// through the vPMU. Exits with the guest's own code (0 = success).
    Demo(DemoArgs),
    /// Report the host's KVM and PMU capabilities and which vPMU modes are available.
    Probe {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check everything this host's vPMU can do, in one report to attach to a bug: the
    /// probe, the conformance guest under every mode (refusals must match the probe), a
    /// Linux guest with perf where possible, and the bench of the in-kernel modes.
    /// Writes DIR/validate.json and DIR/validate.md; exit status 1 if a step failed.
    #[cfg(target_arch = "x86_64")]
    Validate {
        /// Output directory.
        #[arg(long, value_name = "DIR", default_value = "target/validate")]
        out: PathBuf,
        /// Full bench instead of --quick.
        #[arg(long)]
        full_bench: bool,
    },
    /// Measure vPMU overhead by mode, side by side (JSON, markdown and SVG reports).
    #[cfg(target_arch = "x86_64")]
    Bench(bench::BenchArgs),
    /// List the built-in guests, or write one to a file.
    Guests {
        /// Write this built-in guest's ELF image to --output.
        #[arg(long, requires = "output")]
        extract: Option<String>,
        /// Output file for --extract.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Args, Clone)]
struct PmuArgs {
    /// vPMU mode: off, emulated (KVM perf-based), passthrough (KVM mediated), userspace
    /// (the VMM's own vPMU), or auto (passthrough, then emulated, then userspace, whichever
    /// this host offers first). Default: off for `run`, auto for `demo`.
    #[arg(long)]
    pmu: Option<String>,
    /// Allowlist policy (TOML, see docs/POLICY.md); default: the built-in policy
    /// (architectural events only).
    #[arg(long, value_name = "FILE")]
    pmu_policy: Option<PathBuf>,
    /// Guest PMU layout: `host` (the layout KVM offers, or the default emulated one for
    /// `userspace` on a host without a PMU) or e.g.
    /// `intel:version=5,gp=8,fixed=4` (see docs/PMU-MODEL.md).
    #[arg(long, value_name = "SPEC", default_value = "host")]
    pmu_layout: String,
    /// Write denied/faulting PMU programming attempts as JSON lines to FILE.
    #[arg(long, value_name = "FILE")]
    pmu_audit: Option<PathBuf>,
}

impl PmuArgs {
    /// The VM's vPMU settings, with `--pmu` resolved (`default` when not given).
    fn settings(self, default: &str) -> Result<PmuSettings, String> {
        let mode = resolve_mode(self.pmu.as_deref().unwrap_or(default))?;
        Ok(PmuSettings {
            mode,
            layout: self.pmu_layout,
            policy: self.pmu_policy,
            audit: self.pmu_audit,
        })
    }
}

#[derive(Args)]
struct RunArgs {
    /// Kernel: a bzImage, an ELF vmlinux (PVH), a freestanding ELF64, or builtin:NAME.
    #[arg(long, value_name = "PATH")]
    kernel: String,
    /// Initial ramdisk (Linux only).
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line (Linux) or argument string (freestanding guests).
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Number of vCPUs (1-32).
    #[arg(long, default_value_t = 1)]
    cpus: u64,
    /// Guest memory, e.g. 512M or 2G.
    #[arg(long, default_value = "256M")]
    memory: String,
    #[command(flatten)]
    pmu: PmuArgs,
    /// Run without the seccomp filters (for debugging a "forbidden system call" error).
    #[arg(long)]
    no_seccomp: bool,
    /// A virtio-blk disk (virtio-mmio) backed by the raw image file PATH; `,ro` makes it
    /// read-only. Repeatable: /dev/vda, /dev/vdb, ... (at most 8). Linux guests find them
    /// in the ACPI DSDT (_HID LNRO0005); only with `acpi=off` in --cmdline is
    /// `virtio_mmio.device=4K@0xd0000000:5` (one per disk) added to the command line.
    #[arg(long, value_name = "PATH[,ro]")]
    disk: Vec<String>,
    /// Print VM exit statistics and vPMU summaries to stderr at the end.
    #[arg(long)]
    stats: bool,
    /// Write the run report as JSON to FILE at the end: outcome, exits by reason per
    /// vCPU, and for the userspace vPMU its statistics and every event the guest
    /// programmed with its verdict (counting, denied, unsupported).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

#[derive(Args)]
struct DemoArgs {
    /// Number of vCPUs (1-32).
    #[arg(long, default_value_t = 1)]
    cpus: u64,
    /// Extra arguments for the demo guest (e.g. `period=200000` or `profile=off`).
    #[arg(long, default_value = "")]
    cmdline: String,
    #[command(flatten)]
    pmu: PmuArgs,
    /// Run without the seccomp filters (for debugging a "forbidden system call" error).
    #[arg(long)]
    no_seccomp: bool,
    /// Print VM exit statistics and vPMU summaries to stderr at the end.
    #[arg(long)]
    stats: bool,
}

/// `--cpus` as the VMM's type (range-checked again by `VmConfig::validate`).
fn cpu_count(n: u64) -> Result<u8, vmm::error::ConfigError> {
    u8::try_from(n).map_err(|_| vmm::error::ConfigError::Cpus(n))
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("vpmu-vmm: {msg}");
    ExitCode::from(u8::try_from(STATUS_VMM_ERROR).expect("STATUS_VMM_ERROR is 2"))
}

/// Resolves `--pmu`, including `auto`, against the host's capabilities.
fn resolve_mode(s: &str) -> Result<PmuMode, String> {
    if s != "auto" {
        return s.parse::<PmuMode>().map_err(|e| e.to_string());
    }
    let host = vmm::probe_host().map_err(|e| e.to_string())?;
    for mode in [PmuMode::Passthrough, PmuMode::Emulated, PmuMode::Userspace] {
        if host.availability(mode).is_available() {
            eprintln!("vpmu-vmm: --pmu auto chose {mode}");
            return Ok(mode);
        }
    }
    eprintln!(
        "vpmu-vmm: --pmu auto: no vPMU mode is available on this host; running with --pmu off"
    );
    Ok(PmuMode::Off)
}

fn kernel_image(spec: &str) -> Result<KernelImage, String> {
    match spec.strip_prefix("builtin:") {
        Some(name) => vpmu_guests::by_name(name)
            .map(|bytes| KernelImage::Builtin {
                name: name.to_string(),
                bytes,
            })
            .ok_or_else(|| {
                format!(
                    "no built-in guest '{name}' (available: {})",
                    vpmu_guests::NAMES.join(", ")
                )
            }),
        None => Ok(KernelImage::File(PathBuf::from(spec))),
    }
}

fn finish(report: vmm::RunReport, stats: bool, status: i32) -> ExitCode {
    let _ = std::io::stdout().flush();
    if stats {
        eprintln!("{}", report.stats_text());
    } else {
        // The userspace vPMU's one-line summary per vCPU (denied/#GP/unsupported counts).
        for line in &report.pmu_lines {
            eprintln!("vpmu-vmm: {line}");
        }
    }
    if !report.outcome.is_clean() && !matches!(report.outcome, vmm::Outcome::DebugExit { .. }) {
        eprintln!("vpmu-vmm: {}", report.outcome);
    }
    ExitCode::from(status.clamp(0, 255) as u8)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(a) => {
            let kernel = match kernel_image(&a.kernel) {
                Ok(k) => k,
                Err(e) => return fail(e),
            };
            let memory = match vmm::config::parse_size(&a.memory) {
                Ok(m) => m,
                Err(e) => return fail(e),
            };
            let pmu = match a.pmu.settings("off") {
                Ok(p) => p,
                Err(e) => return fail(e),
            };
            let cpus = match cpu_count(a.cpus) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            let mut disks = Vec::with_capacity(a.disk.len());
            for d in &a.disk {
                match DiskConfig::parse(d) {
                    Ok(d) => disks.push(d),
                    Err(e) => return fail(e),
                }
            }
            let config = VmConfig {
                kernel,
                initrd: a.initrd,
                cmdline: a.cmdline,
                cpus,
                memory,
                pmu,
                console: Console::Stdio,
                disks,
                seccomp: !a.no_seccomp,
            };
            match vmm::run(config) {
                Ok(report) => {
                    if let Some(path) = &a.report {
                        let written = serde_json::to_vec_pretty(&report)
                            .map_err(|e| e.to_string())
                            .and_then(|j| std::fs::write(path, j).map_err(|e| e.to_string()));
                        if let Err(e) = written {
                            return fail(format!("cannot write report {}: {e}", path.display()));
                        }
                    }
                    let status = report.outcome.exit_status();
                    finish(report, a.stats, status)
                }
                Err(e) => fail(e),
            }
        }
        Cmd::Demo(a) => {
            let pmu = match a.pmu.settings("auto") {
                Ok(p) => p,
                Err(e) => return fail(e),
            };
            let cpus = match cpu_count(a.cpus) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            let mut config = VmConfig::new(KernelImage::Builtin {
                name: "demo".into(),
                bytes: vpmu_guests::DEMO,
            });
            config.cpus = cpus;
            config.cmdline = a.cmdline;
            config.pmu = pmu;
            config.seccomp = !a.no_seccomp;
            match vmm::run(config) {
                Ok(report) => {
                    // The demo reports its own code V through 0xf4; give V back as-is.
                    let status = match report.outcome {
                        vmm::Outcome::DebugExit { value } => (value & 0xff) as i32,
                        ref o => o.exit_status(),
                    };
                    finish(report, a.stats, status)
                }
                Err(e) => fail(e),
            }
        }
        Cmd::Probe { json } => match vmm::probe_host() {
            Ok(host) => {
                if json {
                    match serde_json::to_string_pretty(&host.probe_report()) {
                        Ok(s) => println!("{s}"),
                        Err(e) => return fail(e),
                    }
                } else {
                    print!("{}", host.report());
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        #[cfg(target_arch = "x86_64")]
        Cmd::Validate { out, full_bench } => match validate::validate(&out, !full_bench) {
            Ok(r) => {
                println!("{}", r.summary);
                println!(
                    "report: {} and {}",
                    out.join("validate.json").display(),
                    out.join("validate.md").display()
                );
                if r.steps
                    .iter()
                    .any(|s| s.verdict == validate::Verdict::Failed)
                {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => fail(e),
        },
        #[cfg(target_arch = "x86_64")]
        Cmd::Bench(a) => match bench::run(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Cmd::Guests { extract, output } => match (extract, output) {
            (Some(name), Some(out)) => match vpmu_guests::by_name(&name) {
                Some(bytes) => match std::fs::write(&out, bytes) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(format!("cannot write {}: {e}", out.display())),
                },
                None => fail(format!(
                    "no built-in guest '{name}' (available: {})",
                    vpmu_guests::NAMES.join(", ")
                )),
            },
            _ => {
                for name in vpmu_guests::NAMES {
                    let size = vpmu_guests::by_name(name).map(|b| b.len()).unwrap_or(0);
                    println!("{name}\t{size} bytes\tbuiltin:{name}");
                }
                ExitCode::SUCCESS
            }
        },
    }
}
