//! The bench's error type.

use std::path::PathBuf;

/// Why `vpmu-vmm bench` failed (cells that fail or whose mode is unavailable are not
/// errors: they are reported as such).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command-line arguments.
    #[error("bench: {0}")]
    Args(String),
    /// The harness could not run at all (e.g. no usable /dev/kvm for the baseline).
    #[error("bench: {0}")]
    Harness(String),
    /// Writing an output file failed.
    #[error("bench: cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Serialising the report failed.
    #[error("bench: JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Drawing the chart failed.
    #[error("bench: cannot draw {}: {reason}", path.display())]
    Plot { path: PathBuf, reason: String },
}
