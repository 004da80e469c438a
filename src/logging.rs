//! The VMM's log (`log` records, written by env_logger): `-v`/`-vv`/`-vvv`,
//! `--log-level LEVEL` and `--log-file FILE`, on every subcommand.
//!
//! Without a flag the level comes from RUST_LOG (env_logger's syntax), else warnings
//! only, on stderr: what the VMM printed before it had a log. The log file is opened here,
//! before any VM thread exists and before any seccomp filter is installed (the filters
//! let VM threads write(2) to descriptors they hold, never open one); every thread that
//! logs (vCPU threads, the main thread) writes each record with one write(2) to it.

use std::path::PathBuf;

use clap::{ArgAction, Args, ValueEnum};
use log::LevelFilter;

/// The log options (global: accepted before or after the subcommand).
#[derive(Args, Debug, Default, Clone)]
#[command(next_help_heading = "Log options")]
pub struct LogArgs {
    /// More log output (repeatable): -v info (the vPMU plan, the guest), -vv debug (VM
    /// exits by kind per vCPU at the end of the run), -vvv trace (every VM exit and PMI).
    /// Without -v or --log-level: RUST_LOG if set, else warnings only.
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log level (instead of -v): off, error, warn, info, debug or trace.
    #[arg(
        long,
        value_enum,
        value_name = "LEVEL",
        global = true,
        conflicts_with = "verbose"
    )]
    pub log_level: Option<Level>,
    /// Append the log to FILE instead of stderr (opened before the guest starts).
    #[arg(long, value_name = "FILE", global = true)]
    pub log_file: Option<PathBuf>,
}

/// `--log-level` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Level {
    /// Nothing.
    Off,
    /// Errors only.
    Error,
    /// Warnings (the default).
    Warn,
    /// The vPMU plan and the guest.
    Info,
    /// VM exit counts by kind, per vCPU, at the end of the run.
    Debug,
    /// Every VM exit and PMI (slow: a line per exit).
    Trace,
}

impl From<Level> for LevelFilter {
    fn from(l: Level) -> Self {
        match l {
            Level::Off => LevelFilter::Off,
            Level::Error => LevelFilter::Error,
            Level::Warn => LevelFilter::Warn,
            Level::Info => LevelFilter::Info,
            Level::Debug => LevelFilter::Debug,
            Level::Trace => LevelFilter::Trace,
        }
    }
}

impl LogArgs {
    /// The level the flags ask for; `None` when neither -v nor --log-level is given.
    pub fn level(&self) -> Option<LevelFilter> {
        if let Some(l) = self.log_level {
            return Some(l.into());
        }
        match self.verbose {
            0 => None,
            1 => Some(LevelFilter::Info),
            2 => Some(LevelFilter::Debug),
            _ => Some(LevelFilter::Trace),
        }
    }
}

/// `--log-file` could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open log file {path}: {source}")]
pub struct LogFileError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// The library whose messages a guest can trigger once per request, without bound (a
/// bogus virtqueue index on every notify): only at trace level unless RUST_LOG names it.
const UNBOUNDED_TARGETS: &[&str] = &["virtio_queue"];

/// The logger's filter: warnings by default, then `level` (from the flags) or else
/// `rust_log` (RUST_LOG's directives).
fn builder(level: Option<LevelFilter>, rust_log: Option<&str>) -> env_logger::Builder {
    let mut b = env_logger::Builder::new();
    b.filter_level(LevelFilter::Warn);
    b.format_timestamp_millis();
    if level != Some(LevelFilter::Trace) {
        for t in UNBOUNDED_TARGETS {
            b.filter_module(t, LevelFilter::Off);
        }
    }
    match (level, rust_log) {
        (Some(l), _) => {
            b.filter_level(l);
        }
        (None, Some(directives)) => {
            b.parse_filters(directives);
        }
        (None, None) => {}
    }
    b
}

/// Installs the logger for this process (once, first thing, before any VM thread).
pub fn init(args: &LogArgs) -> Result<(), LogFileError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let mut b = builder(args.level(), rust_log.as_deref());
    if let Some(path) = &args.log_file {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|source| LogFileError {
                path: path.clone(),
                source,
            })?;
        b.target(env_logger::Target::Pipe(Box::new(file)));
    }
    // Fails only if a logger is already installed, which nothing else does.
    let _ = b.try_init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use log::{Level as L, Log, Metadata};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
    }

    fn level(args: &[&str]) -> Option<LevelFilter> {
        let mut all = vec!["vpmu-vmm"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("parses").log.level()
    }

    fn enabled(l: &env_logger::Logger, level: L, target: &str) -> bool {
        l.enabled(&Metadata::builder().level(level).target(target).build())
    }

    #[test]
    fn flags_give_the_level() {
        assert_eq!(level(&[]), None);
        assert_eq!(level(&["-v"]), Some(LevelFilter::Info));
        assert_eq!(level(&["-vv"]), Some(LevelFilter::Debug));
        assert_eq!(level(&["-v", "-v", "-v"]), Some(LevelFilter::Trace));
        assert_eq!(level(&["-vvvv"]), Some(LevelFilter::Trace));
        assert_eq!(level(&["--log-level", "off"]), Some(LevelFilter::Off));
        assert_eq!(level(&["--log-level", "debug"]), Some(LevelFilter::Debug));
        let mut both = vec!["vpmu-vmm", "-v", "--log-level", "info"];
        assert!(Cli::try_parse_from(&both).is_err(), "-v conflicts");
        both.truncate(1);
        both.extend(["--log-level", "loud"]);
        assert!(Cli::try_parse_from(&both).is_err(), "unknown level");
    }

    #[test]
    fn default_is_warnings_and_rust_log_applies_only_without_flags() {
        let l = builder(None, None).build();
        assert!(enabled(&l, L::Warn, "vmm::vcpu"));
        assert!(!enabled(&l, L::Info, "vmm::vm"));
        let l = builder(None, Some("vmm=debug")).build();
        assert!(enabled(&l, L::Debug, "vmm::vcpu"));
        assert!(!enabled(&l, L::Info, "devices"));
        let l = builder(Some(LevelFilter::Info), Some("trace")).build();
        assert!(enabled(&l, L::Info, "vmm::vm"));
        assert!(!enabled(&l, L::Debug, "vmm::vm"));
        let l = builder(Some(LevelFilter::Off), None).build();
        assert!(!enabled(&l, L::Error, "vmm::vm"));
    }

    #[test]
    fn guest_triggered_library_messages_only_at_trace() {
        for lvl in [None, Some(LevelFilter::Info), Some(LevelFilter::Debug)] {
            let l = builder(lvl, None).build();
            assert!(!enabled(&l, L::Error, "virtio_queue::queue"), "{lvl:?}");
        }
        let l = builder(Some(LevelFilter::Trace), None).build();
        assert!(enabled(&l, L::Error, "virtio_queue::queue"));
        let l = builder(None, Some("virtio_queue=warn")).build();
        assert!(enabled(&l, L::Error, "virtio_queue::queue"));
    }
}
