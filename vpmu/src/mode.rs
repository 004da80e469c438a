//! The vPMU modes and whether one can run here: the same names on every architecture
//! (each architecture's `discovery` decides availability).

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use thiserror::Error;

/// How the guest gets its PMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PmuMode {
    /// No PMU (x86: CPUID hides it and PMU MSRs #GP; arm64: no KVM_ARM_VCPU_PMU_V3).
    Off,
    /// KVM's perf-based vPMU (every guest counter is a host perf event).
    Emulated,
    /// KVM's mediated passthrough vPMU (Linux 7.0+).
    Passthrough,
    /// The VMM's own vPMU: PMU MSRs trapped to userspace via KVM's MSR filter.
    Userspace,
}

impl PmuMode {
    /// Every mode, in presentation order.
    pub const ALL: [PmuMode; 4] = [
        PmuMode::Off,
        PmuMode::Emulated,
        PmuMode::Passthrough,
        PmuMode::Userspace,
    ];

    /// The mode's command-line name.
    pub fn as_str(self) -> &'static str {
        match self {
            PmuMode::Off => "off",
            PmuMode::Emulated => "emulated",
            PmuMode::Passthrough => "passthrough",
            PmuMode::Userspace => "userspace",
        }
    }
}

impl fmt::Display for PmuMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown mode name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown PMU mode {0:?} (expected off, emulated, passthrough or userspace)")]
pub struct ParseModeError(pub String);

impl FromStr for PmuMode {
    type Err = ParseModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PmuMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s.trim())
            .ok_or_else(|| ParseModeError(s.to_string()))
    }
}

/// Can a mode run here?
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Availability {
    /// Yes.
    Available,
    /// No, because `reason`; `remedy` says what would change that.
    Unavailable {
        /// The most fundamental blocker.
        reason: String,
        /// What to do about it.
        remedy: String,
    },
}

impl Availability {
    /// Whether the mode is available.
    pub fn is_available(&self) -> bool {
        matches!(self, Availability::Available)
    }
}
