//! `vpmu-vmm`: a small KVM virtual machine monitor that gives guests a fast, safe and
//! observable vPMU.
//!
//! Subcommands: `run` (boot a kernel), `demo` (the built-in demo guest with a vPMU),
//! `probe` (what this host can offer, and why not), `bench` (overhead of the vPMU modes,
//! side by side), `validate` (everything this host's vPMU can do, in one report), `guests`
//! (list or extract the built-in guests), `policy check` (what a policy compiles to).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use vmm::outcome::STATUS_VMM_ERROR;
use vmm::{Console, DiskConfig, KernelImage, PmuSettings, RunReport, VmConfig};

mod logging;

#[cfg_attr(target_arch = "x86_64", path = "report_x86_64.rs")]
#[cfg_attr(target_arch = "aarch64", path = "report_aarch64.rs")]
mod report;
use report::finish;
use vpmu::discovery::PmuMode;

#[cfg(target_arch = "x86_64")]
mod policy_check;
#[cfg(target_arch = "x86_64")]
mod validate;

#[derive(Parser)]
#[command(
    name = "vpmu-vmm",
    version,
    about = "A small KVM VMM with a fast, safe, observable vPMU"
)]
struct Cli {
    #[command(flatten)]
    log: logging::LogArgs,
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
    /// 8 guest crash, 10 run-loop error, 12 interrupted (SIGINT, SIGTERM or SIGHUP: the
    /// VMM stops the guest and still writes the audit log, --report and --stats; a second
    /// signal ends it at once). An output that cannot be written at the end (--report,
    /// --pmu-audit) gets one line on stderr and leaves the status as it is.
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
    /// Operator tools for event policies (docs/POLICY.md).
    #[cfg(target_arch = "x86_64")]
    #[command(subcommand)]
    Policy(PolicyCmd),
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

#[cfg(target_arch = "x86_64")]
#[derive(Subcommand)]
enum PolicyCmd {
    /// Print what a policy compiles to: the KVM filter (entries, plain or masked, and the
    /// fixed-counter bitmap), the compile warnings, and the verdict on every named event
    /// and fixed counter. Exit status 2 if the policy is invalid.
    Check {
        /// The policy file (TOML).
        file: PathBuf,
        /// Compile for this vendor only (intel or amd); default: both.
        #[arg(long)]
        vendor: Option<String>,
        /// The guest's number of Intel fixed counters.
        #[arg(long, default_value_t = 4)]
        fixed: u8,
    },
}

/// `--pmu` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum PmuChoice {
    /// No PMU in the guest.
    Off,
    /// KVM's perf-based vPMU (each guest counter is a host perf event).
    Emulated,
    /// KVM's mediated vPMU (counters passed through, event selectors intercepted).
    Passthrough,
    /// The VMM's own vPMU (PMU MSRs trapped through KVM's MSR filter).
    Userspace,
    /// The first of passthrough, emulated, userspace that this host offers.
    Auto,
}

#[derive(Args, Clone)]
struct PmuArgs {
    /// vPMU mode (`vpmu-vmm probe` says which this host offers, and why not). Default: off
    /// for `run`, auto for `demo`.
    #[arg(long, value_enum, value_name = "MODE")]
    pmu: Option<PmuChoice>,
    /// Allowlist policy (TOML, see docs/POLICY.md); default: the built-in policy
    /// (architectural events only).
    #[arg(long, value_name = "FILE")]
    pmu_policy: Option<PathBuf>,
    /// Guest PMU layout: `host` (the layout KVM offers, or the default emulated one for
    /// `userspace` on a host without a PMU) or e.g.
    /// `intel:version=5,gp=8,fixed=4` (see docs/PMU-MODEL.md).
    #[arg(long, value_name = "SPEC", default_value = "host")]
    pmu_layout: String,
    /// Write denied/faulting PMU programming attempts as JSON lines to FILE
    /// (deduplicated and rate-limited, see docs/POLICY.md "Audit log").
    #[arg(long, value_name = "FILE")]
    pmu_audit: Option<PathBuf>,
    /// Largest --pmu-audit file, in bytes (at least 4096); default 16 MiB.
    #[arg(long, value_name = "BYTES", default_value_t = vmm::config::DEFAULT_AUDIT_MAX_BYTES)]
    pmu_audit_max_bytes: u64,
}

impl PmuArgs {
    /// The VM's vPMU settings, with `--pmu` resolved (`default` when not given).
    fn settings(self, default: PmuChoice) -> Result<PmuSettings, CliError> {
        let (mode, auto) = mode_of(self.pmu.unwrap_or(default));
        Ok(PmuSettings {
            mode,
            auto,
            layout: self.pmu_layout,
            policy: self.pmu_policy,
            audit: self.pmu_audit,
            audit_max_bytes: self.pmu_audit_max_bytes,
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
    /// After this many seconds without console output from a guest that has not ended,
    /// say so on stderr, once, with each vCPU's exit count and instruction pointer (x86);
    /// 0 turns it off. With stdin a terminal only the time before the guest's first
    /// output counts.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    watchdog: u64,
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
    /// Exit with status 0 when the guest writes V to the debug-exit port (e.g.
    /// `--expect-exit 0` for the conformance guest, which writes 0 when nothing failed),
    /// instead of the port's `(V << 1) | 1`; any other ending keeps its status (1 if it
    /// would have been 0).
    #[arg(long, value_name = "V")]
    expect_exit: Option<u32>,
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
    /// Write the run report as JSON to FILE at the end (as `run --report`).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

/// `--cpus` as the VMM's type (range-checked again by `VmConfig::validate`).
fn cpu_count(n: u64) -> Result<u8, vmm::error::ConfigError> {
    u8::try_from(n).map_err(|_| vmm::error::ConfigError::Cpus(n))
}

/// Why a command could not do its job. Every one exits with status 2
/// ([`STATUS_VMM_ERROR`]), as documented for `run`; the guest's own endings come from
/// the [`vmm::Outcome`] instead.
#[derive(Debug, thiserror::Error)]
enum CliError {
    /// Bad command-line values.
    #[error(transparent)]
    Config(#[from] vmm::error::ConfigError),
    /// The VMM could not build or run the VM.
    #[error(transparent)]
    Vmm(#[from] vmm::Error),
    /// A value the CLI itself rejects (`--pmu`, `builtin:NAME`).
    #[error("{0}")]
    Usage(String),
    /// `--report FILE` could not be written.
    #[error("cannot write report {path}: {source}")]
    Report {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Output could not be serialized.
    #[error("cannot serialize {what}: {source}")]
    Json {
        /// What.
        what: &'static str,
        /// Why.
        source: serde_json::Error,
    },
    /// `--log-file FILE` could not be opened.
    #[error(transparent)]
    LogFile(#[from] logging::LogFileError),
    /// `guests --extract` could not write its file.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `bench` failed.
    #[cfg(target_arch = "x86_64")]
    #[error(transparent)]
    Bench(#[from] bench::Error),
    /// `validate` could not run (its own sentence).
    #[cfg(target_arch = "x86_64")]
    #[error("{0}")]
    Validate(String),
    /// `policy check` could not read or compile the policy (its own sentence).
    #[cfg(target_arch = "x86_64")]
    #[error("{0}")]
    Policy(String),
}

/// A command-line error as one line (clap's own spans several: the error, the possible
/// values, a usage block, a hint), so that every usage mistake reads like every other
/// error: `vpmu-vmm: ...`, status 2. `--help` and `--version` print as clap does.
fn parse_cli() -> Cli {
    let e = match Cli::try_parse() {
        Ok(cli) => return cli,
        Err(e) => e,
    };
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    eprintln!("vpmu-vmm: {}", one_line(&e.render().to_string()));
    std::process::exit(STATUS_VMM_ERROR);
}

/// Joins clap's error lines into one: "error: " dropped, the trailing "For more
/// information" hint replaced by "(see --help)".
fn one_line(rendered: &str) -> String {
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect();
    let mut line = String::new();
    for p in parts {
        if !line.is_empty() {
            line.push_str(if line.ends_with(':') { " " } else { "; " });
        }
        line.push_str(p);
    }
    line.push_str(" (see --help)");
    line
}

fn main() -> ExitCode {
    let cli = parse_cli();
    // First, before any thread: the log file is opened here (`logging`).
    let result = logging::init(&cli.log)
        .map_err(CliError::from)
        .and_then(|()| run(cli));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vpmu-vmm: {e}");
            ExitCode::from(u8::try_from(STATUS_VMM_ERROR).expect("STATUS_VMM_ERROR is 2"))
        }
    }
}

/// `--pmu` as the VM configuration's mode; `auto` is decided by the VM build from its own
/// host probe (the run's one KVM_GET_SUPPORTED_CPUID), which also prints the choice.
fn mode_of(choice: PmuChoice) -> (PmuMode, bool) {
    match choice {
        PmuChoice::Off => (PmuMode::Off, false),
        PmuChoice::Emulated => (PmuMode::Emulated, false),
        PmuChoice::Passthrough => (PmuMode::Passthrough, false),
        PmuChoice::Userspace => (PmuMode::Userspace, false),
        PmuChoice::Auto => (PmuMode::Off, true),
    }
}

fn kernel_image(spec: &str) -> Result<KernelImage, CliError> {
    match spec.strip_prefix("builtin:") {
        Some(name) => vpmu_guests::by_name(name)
            .map(|bytes| KernelImage::Builtin {
                name: name.to_string(),
                bytes,
            })
            .ok_or_else(|| no_builtin(name)),
        None => Ok(KernelImage::File(PathBuf::from(spec))),
    }
}

fn no_builtin(name: &str) -> CliError {
    CliError::Usage(format!(
        "no built-in guest '{name}' (available: {})",
        vpmu_guests::NAMES.join(", ")
    ))
}

/// `--report FILE`: the typed run report as JSON.
fn write_report(report: &RunReport, path: Option<&std::path::Path>) -> Result<(), CliError> {
    let Some(path) = path else {
        return Ok(());
    };
    let json = serde_json::to_vec_pretty(report).map_err(|source| CliError::Json {
        what: "the run report",
        source,
    })?;
    std::fs::write(path, json).map_err(|source| CliError::Report {
        path: path.to_path_buf(),
        source,
    })
}

/// The report and the lines about lost outputs. A lost output (the report, the audit
/// log, a disk's fdatasync, console bytes) gets one line on stderr and does not change
/// the exit status: it stays the run's (README, "Exit status").
fn end_of_run_outputs(report: &RunReport, path: Option<&std::path::Path>) {
    if let Err(e) = write_report(report, path) {
        eprintln!("vpmu-vmm: {e}: the run report is lost (the exit status is still the run's)");
    }
    for e in &report.output_errors {
        eprintln!("vpmu-vmm: {e}: that output is lost (the exit status is still the run's)");
    }
    if report.console_lost_bytes > 0 {
        eprintln!(
            "vpmu-vmm: console: {} bytes of guest output were dropped (stdout was not drained)",
            report.console_lost_bytes
        );
    }
}

/// SIGINT/SIGTERM/SIGHUP end the run cleanly from here on (`vmm::signals`); before any
/// thread is spawned.
fn handle_stop_signals() {
    if let Err(e) = vmm::signals::block_stop_signals() {
        eprintln!("vpmu-vmm: warning: stop signals will end the VMM at once: {e}");
    }
}

/// `--report FILE` must be writable before the guest runs, not found out after it: the
/// file is opened for appending (created and removed again if it did not exist).
fn check_report_path(path: &std::path::Path) -> Result<(), CliError> {
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|source| CliError::Report {
            path: path.to_path_buf(),
            source,
        })?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// `vpmu-vmm run`.
fn run_cmd(a: RunArgs) -> Result<ExitCode, CliError> {
    handle_stop_signals();
    // Checked in this order: kernel, memory, --pmu (which may probe), cpus, disks.
    let kernel = kernel_image(&a.kernel)?;
    let memory = vmm::config::parse_size(&a.memory)?;
    let pmu = a.pmu.settings(PmuChoice::Off)?;
    let cpus = cpu_count(a.cpus)?;
    let disks = a
        .disk
        .iter()
        .map(|d| DiskConfig::parse(d))
        .collect::<Result<Vec<_>, _>>()?;
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
        watchdog: (a.watchdog > 0).then(|| std::time::Duration::from_secs(a.watchdog)),
    };
    if let Some(path) = &a.report {
        check_report_path(path)?;
    }
    let report = vmm::run(config)?;
    end_of_run_outputs(&report, a.report.as_deref());
    let status = match (a.expect_exit, &report.outcome) {
        (Some(v), vmm::Outcome::DebugExit { value }) if *value == v => 0,
        (Some(_), o) => o.exit_status().max(1),
        (None, o) => o.exit_status(),
    };
    Ok(finish(report, a.stats, status))
}

/// `vpmu-vmm demo`.
fn demo_cmd(a: DemoArgs) -> Result<ExitCode, CliError> {
    handle_stop_signals();
    let pmu = a.pmu.settings(PmuChoice::Auto)?;
    let cpus = cpu_count(a.cpus)?;
    let mut config = VmConfig::new(KernelImage::Builtin {
        name: "demo".into(),
        bytes: vpmu_guests::DEMO,
    });
    config.cpus = cpus;
    config.cmdline = a.cmdline;
    config.pmu = pmu;
    config.seccomp = !a.no_seccomp;
    let report = vmm::run(config)?;
    end_of_run_outputs(&report, a.report.as_deref());
    // The demo reports its own code V through 0xf4; give V back as-is.
    let status = match report.outcome {
        vmm::Outcome::DebugExit { value } => (value & 0xff) as i32,
        ref o => o.exit_status(),
    };
    Ok(finish(report, a.stats, status))
}

/// `vpmu-vmm guests`.
fn guests_cmd(extract: Option<String>, output: Option<PathBuf>) -> Result<ExitCode, CliError> {
    if let (Some(name), Some(out)) = (extract, output) {
        let bytes = vpmu_guests::by_name(&name).ok_or_else(|| no_builtin(&name))?;
        std::fs::write(&out, bytes).map_err(|source| CliError::Write { path: out, source })?;
        return Ok(ExitCode::SUCCESS);
    }
    for name in vpmu_guests::NAMES {
        let size = vpmu_guests::by_name(name).map(|b| b.len()).unwrap_or(0);
        println!("{name}\t{size} bytes\tbuiltin:{name}");
    }
    Ok(ExitCode::SUCCESS)
}

fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.cmd {
        Cmd::Run(a) => run_cmd(a),
        Cmd::Demo(a) => demo_cmd(a),
        Cmd::Probe { json } => {
            let host = vmm::probe_host()?;
            if json {
                let s = serde_json::to_string_pretty(&host.probe_report()).map_err(|source| {
                    CliError::Json {
                        what: "the probe report",
                        source,
                    }
                })?;
                println!("{s}");
            } else {
                print!("{}", host.report());
            }
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(target_arch = "x86_64")]
        Cmd::Validate { out, full_bench } => {
            let r = validate::validate(&out, !full_bench).map_err(CliError::Validate)?;
            println!("{}", r.summary);
            println!(
                "report: {} and {}",
                out.join("validate.json").display(),
                out.join("validate.md").display()
            );
            let failed = r
                .steps
                .iter()
                .any(|s| s.verdict == validate::Verdict::Failed);
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        #[cfg(target_arch = "x86_64")]
        Cmd::Bench(a) => {
            bench::run(a)?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(target_arch = "x86_64")]
        Cmd::Policy(PolicyCmd::Check {
            file,
            vendor,
            fixed,
        }) => {
            let report =
                policy_check::check(&file, vendor.as_deref(), fixed).map_err(CliError::Policy)?;
            print!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Guests { extract, output } => guests_cmd(extract, output),
    }
}
