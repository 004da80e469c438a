//! One vCPU's guest PMU with every decision made here, the way KVM's pmu.c makes them: a
//! write checks reserved bits, stores and marks the counters it changed; one
//! [`GuestPmu::reprogram`] per marked counter maps its programming onto an
//! event-select-shaped value (fixed counters too) and runs the operator's policy, giving a
//! typed [`Verdict`]. A VMM only supplies the counts (a counter source), delivers the PMIs
//! and writes the audit: no PMU decision is left to it.

use std::sync::Arc;

use thiserror::Error;

use crate::config::{PmuConfig, Vendor};
use crate::model::{self, PmuMsr};
use crate::policy::{CompiledPolicy, Decision, DenyReason};
use crate::selector::{self, EventSelector, SelectorFault};
use crate::state::{CounterId, MsrFault, PmuState, WriteEffect};

/// What a counter may do after its programming changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Fixed counter with neither OS nor USR set: nothing to count.
    Disabled,
    /// The policy allows the event (a GP counter may still have its enable bit clear:
    /// see [`Programming::selector`]).
    Allowed,
    /// The policy denies it: the counter is blocked (reads back as written, never counts).
    Denied(DenyReason),
}

impl Verdict {
    /// `counting`, `denied` or `disabled`, as reports and audit records name it.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Verdict::Disabled => "disabled",
            Verdict::Allowed => "counting",
            Verdict::Denied(_) => "denied",
        }
    }
}

/// A counter's programming, decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Programming {
    /// The counter.
    pub counter: CounterId,
    /// Its event in event-select shape. For a fixed counter: the architectural event it
    /// counts (instructions 0xc0, cycles 0x3c, ref-cycles 0x013c, topdown slots 0x01a4),
    /// with OS/USR/AnyThread/INT from its FIXED_CTR_CTRL field and EN set.
    pub selector: EventSelector,
    /// For a fixed counter, its 4-bit FIXED_CTR_CTRL field.
    pub fixed_field: Option<u8>,
    /// What the policy decided.
    pub verdict: Verdict,
}

impl Programming {
    /// `0x3c/0x00` for GP counters, `fixed1` for fixed ones: the report's event key.
    pub fn event_key(&self) -> String {
        match self.counter {
            CounterId::Fixed(i) => format!("fixed{i}"),
            CounterId::Gp(_) => format!("{:#x}/{:#04x}", self.selector.event, self.selector.umask),
        }
    }

    /// The perf name of the event, when it is one of the named events.
    pub fn event_name(&self) -> Option<&'static str> {
        match self.counter {
            CounterId::Fixed(i) => crate::events::fixed_counter_name(i),
            CounterId::Gp(_) => crate::events::named_events(self.selector.vendor)
                .iter()
                .find(|n| n.event == self.selector.event && n.umask == self.selector.umask)
                .map(|n| n.name),
        }
    }

    /// The guest asked this counter to count (GP: EN set; fixed: OS or USR set).
    pub const fn enabled(&self) -> bool {
        self.selector.en
    }
}

/// Why a guest write #GPs.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WriteFault {
    /// Reserved bits in an event selector or FIXED_CTR_CTRL.
    #[error(transparent)]
    Selector(#[from] SelectorFault),
    /// The register file refused it (absent, read-only, reserved bits).
    #[error(transparent)]
    Msr(#[from] MsrFault),
}

/// What an accepted write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The register file's account of the change.
    pub effect: WriteEffect,
    /// The counters whose programming was decided again, with the decision. A GP selector
    /// write always lists its counter (every enabling write is a programming the VMM
    /// reports); a FIXED_CTR_CTRL write lists the fixed counters whose field changed.
    pub reprogrammed: Vec<Programming>,
}

/// One vCPU's guest PMU: register file + policy.
pub struct GuestPmu {
    state: PmuState,
    vendor: Vendor,
    policy: Arc<CompiledPolicy>,
}

impl GuestPmu {
    /// A guest PMU in its reset state for `cfg`, judged by `policy`.
    pub fn new(cfg: &PmuConfig, policy: Arc<CompiledPolicy>) -> GuestPmu {
        GuestPmu {
            state: PmuState::new(cfg),
            vendor: cfg.vendor().unwrap_or(Vendor::Intel),
            policy,
        }
    }

    /// The register file.
    pub fn state(&self) -> &PmuState {
        &self.state
    }

    /// The register file, for counting (the VMM's counter source adds counts).
    pub fn state_mut(&mut self) -> &mut PmuState {
        &mut self.state
    }

    /// The policy.
    pub fn policy(&self) -> &CompiledPolicy {
        &self.policy
    }

    /// A guest RDMSR.
    pub fn read(&self, msr: u32) -> Result<u64, MsrFault> {
        self.state.read(msr)
    }

    /// A guest WRMSR: reserved bits checked, value stored, changed counters reprogrammed.
    pub fn write(&mut self, msr: u32, value: u64) -> Result<Written, WriteFault> {
        match model::classify(self.vendor, msr) {
            Some(PmuMsr::GpEventSel(i)) => {
                let checked = self.policy.check(value)?;
                let effect = self.state.write(msr, checked.vetted.guest_value)?;
                Ok(Written {
                    effect,
                    reprogrammed: vec![self.reprogram(CounterId::Gp(i))],
                })
            }
            Some(PmuMsr::FixedCtrCtrl) => {
                selector::vet_fixed_ctr_ctrl(
                    value,
                    self.state.model(),
                    &self.policy.vet_options(),
                )?;
                let effect = self.state.write(msr, value)?;
                let reprogrammed = match effect {
                    WriteEffect::ReprogramFixed(mask) => {
                        mask.iter().map(|id| self.reprogram(id)).collect()
                    }
                    _ => Vec::new(),
                };
                Ok(Written {
                    effect,
                    reprogrammed,
                })
            }
            _ => Ok(Written {
                effect: self.state.write(msr, value)?,
                reprogrammed: Vec::new(),
            }),
        }
    }

    /// Decides counter `id` from its stored programming and blocks it when denied.
    pub fn reprogram(&mut self, id: CounterId) -> Programming {
        let p = self.decide(id);
        self.state.set_blocked(
            id,
            matches!(p.verdict, Verdict::Denied(_) | Verdict::Disabled),
        );
        p
    }

    /// Decides GP counter `id` programmed with `raw`, without storing anything.
    fn decide_gp(&self, id: CounterId, raw: u64) -> Programming {
        let verdict = match self.policy.check(raw) {
            Ok(c) => match c.decision {
                Decision::Allowed => Verdict::Allowed,
                Decision::Denied(r) => Verdict::Denied(r),
            },
            // Reserved bits by this model (a value KVM accepted, see `judge_raw`): the
            // policy still decides the event.
            Err(_) => match self.policy.decide(raw) {
                Decision::Allowed => Verdict::Allowed,
                Decision::Denied(r) => Verdict::Denied(r),
            },
        };
        Programming {
            counter: id,
            selector: EventSelector::decode(self.vendor, raw),
            fixed_field: None,
            verdict,
        }
    }

    /// Judges a selector value that the register file refuses but the hypervisor accepted
    /// (KVM's reserved bits differ from the SDM's in places: Intel IN_TX/IN_TXCP with TSX),
    /// without storing it: the audit of KVM's in-kernel vPMU must still see the event.
    /// FIXED_CTR_CTRL never needs this (KVM reserves more there than the model does).
    pub fn judge_raw(&self, msr: u32, raw: u64) -> Vec<Programming> {
        match model::classify(self.vendor, msr) {
            Some(PmuMsr::GpEventSel(i)) => vec![self.decide_gp(CounterId::Gp(i), raw)],
            _ => Vec::new(),
        }
    }

    fn decide(&self, id: CounterId) -> Programming {
        let opts = self.policy.vet_options();
        match id {
            CounterId::Gp(_) => {
                let raw = self
                    .state
                    .counter(id)
                    .map(|c| c.control)
                    .unwrap_or_default();
                self.decide_gp(id, raw)
            }
            CounterId::Fixed(i) => {
                let field = self
                    .state
                    .counter(id)
                    .map(|c| (c.control & 0xf) as u8)
                    .unwrap_or(0);
                let (event, umask) = crate::events::INTEL_FIXED_COUNTERS
                    .get(usize::from(i))
                    .map(|f| (f.event.event, f.event.umask))
                    .unwrap_or((0, 0));
                let shaped = u64::from(event & 0xff)
                    | u64::from(umask) << 8
                    | u64::from(field & 0x2 != 0) << 16 // USR
                    | u64::from(field & 0x1 != 0) << 17 // OS
                    | u64::from(field & 0x8 != 0) << 20 // INT
                    | u64::from(field & 0x4 != 0) << 21 // AnyThread
                    | u64::from(field & 0x3 != 0) << 22; // EN
                let verdict = if field & 0x3 == 0 {
                    Verdict::Disabled
                } else if field & 0x4 != 0 && !opts.allow_anythread {
                    Verdict::Denied(DenyReason::AnyThread)
                } else {
                    match self.policy.decide_fixed_decision(i) {
                        Decision::Allowed => Verdict::Allowed,
                        Decision::Denied(r) => Verdict::Denied(r),
                    }
                };
                Programming {
                    counter: id,
                    selector: EventSelector::decode(Vendor::Intel, shaped),
                    fixed_field: Some(field),
                    verdict,
                }
            }
        }
    }
}
