//! The guest PMU register file: what the guest reads and writes through the PMU MSRs.
//!
//! [`PmuState`] applies the rules of [`crate::model`] to a fixed-size register file (no
//! allocation on any MSR access, count update, save or restore). A VMM calls
//! [`PmuState::read`] / [`PmuState::write`] from its RDMSR/WRMSR exits (an `Err` means
//! "inject #GP"), reacts to the returned [`WriteEffect`] by re-vetting and reprogramming its
//! counter source, feeds counts with [`PmuState::add_count`] and raises a PMI when that
//! reports one.
//!
//! Context switches of a *hardware* PMU follow [`SAVE_ORDER`] / [`RESTORE_ORDER`] (see
//! their docs and `docs/PMU-MODEL.md`); [`PmuState::save`] / [`PmuState::restore`] move the
//! whole register file as one [`PmuContext`].

use crate::config::{PmuConfig, Vendor};
use crate::model::{self, intel, ConfigError, MsrModel, PmuMsr};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// GP counter slots in a [`PmuContext`] (Intel's 8; AMD uses up to 6).
pub const MAX_GP: usize = intel::MAX_GP as usize;
/// Fixed counter slots in a [`PmuContext`].
pub const MAX_FIXED: usize = intel::MAX_FIXED as usize;

/// A guest counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CounterId {
    /// General-purpose counter n (Intel IA32_PMCn, AMD PerfCtrn).
    Gp(u8),
    /// Intel fixed-function counter n (0 instructions, 1 core cycles, 2 ref cycles,
    /// 3 topdown slots).
    Fixed(u8),
}

impl CounterId {
    /// This counter's bit in GLOBAL_CTRL / GLOBAL_STATUS (GP n: bit n; fixed n: bit 32+n).
    pub fn global_bit(self) -> u32 {
        match self {
            CounterId::Gp(i) => u32::from(i),
            CounterId::Fixed(i) => intel::FIXED_BIT_BASE + u32::from(i),
        }
    }

    /// The counter named by a GLOBAL_CTRL / STATUS bit, if the bit names one.
    #[allow(clippy::cast_possible_truncation)] // the guards bound the index below MAX_GP / MAX_FIXED
    pub fn from_global_bit(bit: u32) -> Option<CounterId> {
        match bit {
            b if b < u32::from(intel::MAX_GP) => Some(CounterId::Gp(b as u8)),
            b if (intel::FIXED_BIT_BASE..intel::FIXED_BIT_BASE + u32::from(intel::MAX_FIXED))
                .contains(&b) =>
            {
                Some(CounterId::Fixed((b - intel::FIXED_BIT_BASE) as u8))
            }
            _ => None,
        }
    }
}

/// A set of counters, as a GLOBAL_CTRL-layout bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CounterMask(pub u64);

impl CounterMask {
    /// Whether `id` is in the set.
    pub fn contains(self, id: CounterId) -> bool {
        self.0 & (1u64 << id.global_bit()) != 0
    }

    /// The counters in the set, in bit order.
    pub fn iter(self) -> impl Iterator<Item = CounterId> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                if let Some(id) = CounterId::from_global_bit(b) {
                    return Some(id);
                }
            }
            None
        })
    }
}

/// Why an access must be answered with #GP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum MsrFault {
    /// The MSR is not part of this guest's PMU layout (or not a PMU MSR at all).
    #[error("MSR {msr:#x} is not present in the guest's PMU layout")]
    NotPresent {
        /// The MSR.
        msr: u32,
    },
    /// The write sets reserved bits.
    #[error("write of {value:#x} to MSR {msr:#x} sets reserved bits {bits:#x}", bits = .value & .mask)]
    Reserved {
        /// The MSR.
        msr: u32,
        /// The value written.
        value: u64,
        /// Reserved-bit mask of the register.
        mask: u64,
    },
    /// The register is read-only.
    #[error("MSR {msr:#x} is read-only")]
    ReadOnly {
        /// The MSR.
        msr: u32,
    },
}

/// What a successful write changed, so the caller can re-vet and reprogram its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteEffect {
    /// Nothing the counter source cares about changed (same value rewritten, write-only
    /// register with no effect).
    None,
    /// A GP event selector changed: re-vet it against policy and reprogram the counter.
    Reprogram(CounterId),
    /// FIXED_CTR_CTRL fields of these fixed counters changed.
    ReprogramFixed(CounterMask),
    /// A counter's value was written: re-arm its overflow (PMI) deadline.
    CounterValue(CounterId),
    /// GLOBAL_CTRL enable bits of these counters changed.
    GlobalCtrl(CounterMask),
    /// GLOBAL_STATUS changed (through STATUS_RESET/CLR or STATUS_SET).
    Status,
}

/// A counter wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow {
    /// A PMI must be delivered (selector INT bit / fixed PMI bit set).
    pub pmi: bool,
}

/// A snapshot of one counter's programming and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterView {
    /// Which counter.
    pub id: CounterId,
    /// GP: the event selector as the guest wrote it; fixed: its 4-bit FIXED_CTR_CTRL field.
    pub control: u64,
    /// Current value (within `width`).
    pub value: u64,
    /// Width in bits.
    pub width: u8,
    /// Effectively enabled: local enable AND the GLOBAL_CTRL bit where the layout has one.
    pub enabled: bool,
    /// Blocked by policy ([`PmuState::set_blocked`]): never counts.
    pub blocked: bool,
    /// Raise a PMI on overflow (selector INT bit 20 / fixed PMI bit).
    pub pmi_on_overflow: bool,
    /// Count at CPL0 (selector OS bit 17 / fixed bit 0).
    pub count_os: bool,
    /// Count at CPL>0 (selector USR bit 16 / fixed bit 1).
    pub count_usr: bool,
}

/// Every guest-visible PMU register, for context switch and snapshot/migration.
///
/// Slots beyond the layout's counters are zero. Values are stored as the guest sees them
/// (counters already truncated to their width).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PmuContext {
    /// GP counter values.
    pub gp_counters: [u64; MAX_GP],
    /// GP event selectors.
    pub gp_selectors: [u64; MAX_GP],
    /// Fixed counter values.
    pub fixed_counters: [u64; MAX_FIXED],
    /// IA32_FIXED_CTR_CTRL.
    pub fixed_ctrl: u64,
    /// IA32_PERF_GLOBAL_CTRL / PerfCntrGlobalCtl.
    pub global_ctrl: u64,
    /// IA32_PERF_GLOBAL_STATUS / PerfCntrGlobalStatus.
    pub global_status: u64,
}

/// One step of a hardware PMU context switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextStep {
    /// Read GLOBAL_CTRL, then write 0: every counter stops in the same instant, so the
    /// values read next are consistent and no overflow can happen mid-save.
    StopGlobal,
    /// (No GLOBAL_CTRL) clear the EN bit of each enabled selector, one by one.
    StopSelectors,
    /// Read the counters.
    SaveCounters,
    /// Read the event selectors and FIXED_CTR_CTRL.
    SaveSelectors,
    /// Read GLOBAL_STATUS last: with counting stopped it can no longer change, and it
    /// holds every overflow that happened up to the stop.
    SaveStatus,
    /// Write GLOBAL_STATUS first, while counting is still stopped: STATUS_RESET (all
    /// bits) then STATUS_SET (the guest's bits), in that order.
    RestoreStatus,
    /// Write the event selectors and FIXED_CTR_CTRL (counting still gated off globally).
    RestoreSelectors,
    /// Write the counters (full-width aliases where available, so no truncation to 32 bits).
    RestoreCounters,
    /// Write GLOBAL_CTRL last: counting resumes for everything at once.
    RestoreGlobal,
    /// (No GLOBAL_CTRL) write the selectors, EN bits included, last.
    RestoreSelectorsEnable,
}

/// Save order for PMUs with GLOBAL_CTRL (Intel v2+, AMD PerfMonV2): stop globally, then
/// counters, selectors, and status last (Apple Hypervisor.framework rule "status saved
/// last"; LPC 2024 mediated vPMU: stop guest counters before anything else is touched).
pub const SAVE_ORDER: [ContextStep; 4] = [
    ContextStep::StopGlobal,
    ContextStep::SaveCounters,
    ContextStep::SaveSelectors,
    ContextStep::SaveStatus,
];

/// Restore order for PMUs with GLOBAL_CTRL: status first (RESET then SET), selectors,
/// counters, and GLOBAL_CTRL last so nothing counts until the whole state is in place.
pub const RESTORE_ORDER: [ContextStep; 4] = [
    ContextStep::RestoreStatus,
    ContextStep::RestoreSelectors,
    ContextStep::RestoreCounters,
    ContextStep::RestoreGlobal,
];

/// Save order without GLOBAL_CTRL (Intel v1, AMD without PerfMonV2): record the
/// selectors (with their EN bits), stop each one, then read the counters.
pub const SAVE_ORDER_NO_GLOBAL: [ContextStep; 3] = [
    ContextStep::SaveSelectors,
    ContextStep::StopSelectors,
    ContextStep::SaveCounters,
];

/// Restore order without GLOBAL_CTRL: counters first, then selectors with EN last.
pub const RESTORE_ORDER_NO_GLOBAL: [ContextStep; 2] = [
    ContextStep::RestoreCounters,
    ContextStep::RestoreSelectorsEnable,
];

/// A [`PmuContext`] that does not fit the layout it is restored into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("context register {register} = {value:#x} sets bits {bits:#x} invalid for this layout", bits = .value & .mask)]
pub struct RestoreError {
    /// Which register.
    pub register: &'static str,
    /// Its value in the context.
    pub value: u64,
    /// Bits that must be clear.
    pub mask: u64,
}

/// The guest PMU register file for one vCPU.
#[derive(Debug, Clone)]
pub struct PmuState {
    cfg: PmuConfig,
    model: MsrModel,
    ctx: PmuContext,
    /// Counters blocked by policy (GLOBAL_CTRL bit layout).
    blocked: u64,
}

fn sign_extend_32(value: u64) -> u64 {
    (value & 0xffff_ffff) as u32 as i32 as i64 as u64
}

#[allow(clippy::cast_possible_truncation)] // 64 - leading_zeros is 0..=64
fn width_of(mask: u64) -> u8 {
    (64 - mask.leading_zeros()) as u8
}

impl PmuState {
    /// The power-on register file for `cfg`. A layout outside what the model implements is
    /// clamped into it (see [`MsrModel::new_clamped`]); use [`PmuState::try_new`] to reject
    /// it instead.
    pub fn new(cfg: &PmuConfig) -> PmuState {
        let model = MsrModel::new_clamped(cfg);
        let mut s = PmuState {
            cfg: cfg.clone(),
            model,
            ctx: PmuContext::default(),
            blocked: 0,
        };
        s.reset();
        s
    }

    /// Like [`PmuState::new`], but an unsupported layout is an error.
    pub fn try_new(cfg: &PmuConfig) -> Result<PmuState, ConfigError> {
        model::validate(cfg)?;
        Ok(PmuState::new(cfg))
    }

    /// The layout this register file models.
    pub fn config(&self) -> &PmuConfig {
        &self.cfg
    }

    /// The precomputed MSR rules.
    pub fn model(&self) -> &MsrModel {
        &self.model
    }

    /// Back to the RESET state: everything zero except GLOBAL_CTRL (all GP enabled).
    /// Policy blocks are kept.
    pub fn reset(&mut self) {
        self.ctx = PmuContext {
            global_ctrl: self.model.global_ctrl_reset(),
            ..PmuContext::default()
        };
    }

    /// RDMSR. `Err`: inject #GP.
    pub fn read(&self, msr: u32) -> Result<u64, MsrFault> {
        let reg = self.model.decode(msr).ok_or(MsrFault::NotPresent { msr })?;
        Ok(match reg {
            PmuMsr::GpCounter(i) | PmuMsr::GpCounterFullWidth(i) => self.ctx.gp_counters[gp(i)],
            PmuMsr::GpEventSel(i) => self.ctx.gp_selectors[gp(i)],
            PmuMsr::FixedCounter(i) => self.ctx.fixed_counters[fx(i)],
            PmuMsr::FixedCtrCtrl => self.ctx.fixed_ctrl,
            PmuMsr::PerfCapabilities => self.model.perf_capabilities.unwrap_or(0),
            PmuMsr::GlobalStatus => self.ctx.global_status,
            PmuMsr::GlobalCtrl => self.ctx.global_ctrl,
            // Write-only in effect; KVM returns 0 for these.
            PmuMsr::GlobalStatusReset | PmuMsr::GlobalStatusSet => 0,
            PmuMsr::GlobalInUse => self.global_inuse(),
            PmuMsr::PerfMetrics => return Err(MsrFault::NotPresent { msr }),
        })
    }

    /// WRMSR. Event selectors are stored as written (vet them against policy *before*
    /// calling; block denied counters with [`PmuState::set_blocked`]). `Err`: inject #GP and
    /// leave the state unchanged.
    pub fn write(&mut self, msr: u32, value: u64) -> Result<WriteEffect, MsrFault> {
        let reg = self.model.decode(msr).ok_or(MsrFault::NotPresent { msr })?;
        let reserved = |mask: u64| {
            if value & mask != 0 {
                Err(MsrFault::Reserved { msr, value, mask })
            } else {
                Ok(())
            }
        };
        match reg {
            PmuMsr::GpCounter(i) => {
                // SDM §18.2.5: a WRMSR to IA32_PMCx writes EAX[31:0] sign-extended.
                let v = if self.model.vendor == Some(Vendor::Intel) {
                    sign_extend_32(value)
                } else {
                    value
                };
                self.ctx.gp_counters[gp(i)] = v & self.model.gp_mask;
                Ok(WriteEffect::CounterValue(CounterId::Gp(i)))
            }
            PmuMsr::GpCounterFullWidth(i) => {
                reserved(!self.model.gp_mask)?;
                self.ctx.gp_counters[gp(i)] = value;
                Ok(WriteEffect::CounterValue(CounterId::Gp(i)))
            }
            PmuMsr::GpEventSel(i) => {
                reserved(self.model.evtsel_reserved())?;
                let slot = &mut self.ctx.gp_selectors[gp(i)];
                if *slot == value {
                    return Ok(WriteEffect::None);
                }
                *slot = value;
                Ok(WriteEffect::Reprogram(CounterId::Gp(i)))
            }
            PmuMsr::FixedCounter(i) => {
                self.ctx.fixed_counters[fx(i)] = value & self.model.fixed_mask;
                Ok(WriteEffect::CounterValue(CounterId::Fixed(i)))
            }
            PmuMsr::FixedCtrCtrl => {
                reserved(self.model.fixed_ctrl_reserved())?;
                let diff = self.ctx.fixed_ctrl ^ value;
                self.ctx.fixed_ctrl = value;
                let mut changed = 0u64;
                for i in 0..u32::from(self.model.num_fixed) {
                    if (diff >> (4 * i)) & 0xf != 0 {
                        changed |= 1u64 << (intel::FIXED_BIT_BASE + i);
                    }
                }
                Ok(if changed == 0 {
                    WriteEffect::None
                } else {
                    WriteEffect::ReprogramFixed(CounterMask(changed))
                })
            }
            PmuMsr::PerfCapabilities
            | PmuMsr::GlobalStatus
            | PmuMsr::GlobalInUse
            | PmuMsr::PerfMetrics => Err(MsrFault::ReadOnly { msr }),
            PmuMsr::GlobalCtrl => {
                reserved(self.model.global_ctrl_reserved())?;
                let diff = self.ctx.global_ctrl ^ value;
                self.ctx.global_ctrl = value;
                Ok(if diff == 0 {
                    WriteEffect::None
                } else {
                    WriteEffect::GlobalCtrl(CounterMask(diff))
                })
            }
            PmuMsr::GlobalStatusReset => {
                reserved(!self.model.status_reset_writable())?;
                let old = self.ctx.global_status;
                self.ctx.global_status &= !value;
                Ok(status_effect(old, self.ctx.global_status))
            }
            PmuMsr::GlobalStatusSet => {
                reserved(!self.model.status_set_writable())?;
                let old = self.ctx.global_status;
                self.ctx.global_status |= value;
                Ok(status_effect(old, self.ctx.global_status))
            }
        }
    }

    /// IA32_PERF_GLOBAL_INUSE (SDM §18.2.4.3): GP n in use iff PERFEVTSELn\[7:0\] != 0;
    /// fixed n iff its enable field != 0; bit 63 iff any INT / fixed PMI bit is set.
    pub fn global_inuse(&self) -> u64 {
        let mut v = 0u64;
        let mut pmi = false;
        for i in 0..usize::from(self.model.num_gp) {
            let sel = self.ctx.gp_selectors[i];
            if sel & 0xff != 0 {
                v |= 1 << i;
            }
            pmi |= sel & intel::EVTSEL_INT != 0;
        }
        for i in 0..u32::from(self.model.num_fixed) {
            let field = (self.ctx.fixed_ctrl >> (4 * i)) & 0xf;
            if field & 0x3 != 0 {
                v |= 1 << (intel::FIXED_BIT_BASE + i);
            }
            pmi |= field & intel::FIXED_PMI != 0;
        }
        if pmi {
            v |= intel::INUSE_PMI;
        }
        v
    }

    fn exists(&self, id: CounterId) -> bool {
        match id {
            CounterId::Gp(i) => i < self.model.num_gp,
            CounterId::Fixed(i) => i < self.model.num_fixed,
        }
    }

    fn control(&self, id: CounterId) -> u64 {
        match id {
            CounterId::Gp(i) => self.ctx.gp_selectors[gp(i)],
            CounterId::Fixed(i) => (self.ctx.fixed_ctrl >> (4 * u32::from(i))) & 0xf,
        }
    }

    /// Effective enable: local enable AND (where the layout has one) the GLOBAL_CTRL bit.
    /// Ignores policy blocks. `false` for counters the layout lacks.
    pub fn is_enabled(&self, id: CounterId) -> bool {
        if !self.exists(id) {
            return false;
        }
        let ctl = self.control(id);
        let local = match id {
            CounterId::Gp(_) => ctl & intel::EVTSEL_EN != 0,
            CounterId::Fixed(_) => ctl & (intel::FIXED_EN_OS | intel::FIXED_EN_USR) != 0,
        };
        let global =
            !self.model.has_global || self.ctx.global_ctrl & (1u64 << id.global_bit()) != 0;
        local && global
    }

    fn counting(&self, id: CounterId) -> bool {
        self.is_enabled(id) && self.blocked & (1u64 << id.global_bit()) == 0
    }

    /// Mark a counter as denied by policy: it never counts while blocked (its registers
    /// still read back what the guest wrote).
    pub fn set_blocked(&mut self, id: CounterId, blocked: bool) {
        if !self.exists(id) {
            return;
        }
        let bit = 1u64 << id.global_bit();
        if blocked {
            self.blocked |= bit;
        } else {
            self.blocked &= !bit;
        }
    }

    /// Whether `id` is blocked by policy.
    pub fn is_blocked(&self, id: CounterId) -> bool {
        self.exists(id) && self.blocked & (1u64 << id.global_bit()) != 0
    }

    fn value_slot(&mut self, id: CounterId) -> (&mut u64, u64) {
        match id {
            CounterId::Gp(i) => (&mut self.ctx.gp_counters[gp(i)], self.model.gp_mask),
            CounterId::Fixed(i) => (&mut self.ctx.fixed_counters[fx(i)], self.model.fixed_mask),
        }
    }

    fn mask_of(&self, id: CounterId) -> u64 {
        match id {
            CounterId::Gp(_) => self.model.gp_mask,
            CounterId::Fixed(_) => self.model.fixed_mask,
        }
    }

    fn pmi_enabled(&self, id: CounterId) -> bool {
        let ctl = self.control(id);
        match id {
            CounterId::Gp(_) => ctl & intel::EVTSEL_INT != 0,
            CounterId::Fixed(_) => ctl & intel::FIXED_PMI != 0,
        }
    }

    /// Add `delta` events to a counting (enabled, unblocked) counter, truncating to its
    /// width. On a wrap, set its GLOBAL_STATUS bit (where the layout has one) and return
    /// whether a PMI must be raised. Counters that are not counting are left unchanged.
    pub fn add_count(&mut self, id: CounterId, delta: u64) -> Option<Overflow> {
        if !self.counting(id) {
            return None;
        }
        let pmi = self.pmi_enabled(id);
        let (slot, mask) = self.value_slot(id);
        let sum = u128::from(*slot) + u128::from(delta);
        #[allow(clippy::cast_possible_truncation)]
        // the low 64 bits; the mask then keeps the counter's width
        {
            *slot = (sum as u64) & mask;
        }
        if sum <= u128::from(mask) {
            return None;
        }
        if self.model.has_global {
            self.ctx.global_status |= 1u64 << id.global_bit();
        }
        Some(Overflow { pmi })
    }

    /// Events until `id` wraps (2^width - value), for counting counters; schedules the
    /// PMI kick. `None` if the counter is not counting.
    pub fn counts_until_overflow(&self, id: CounterId) -> Option<u64> {
        if !self.counting(id) {
            return None;
        }
        let mask = self.mask_of(id);
        let value = self.counter_value(id)?;
        Some((mask - value).saturating_add(1))
    }

    /// The value of counter `id`, if the layout has it.
    pub fn counter_value(&self, id: CounterId) -> Option<u64> {
        if !self.exists(id) {
            return None;
        }
        Some(match id {
            CounterId::Gp(i) => self.ctx.gp_counters[gp(i)],
            CounterId::Fixed(i) => self.ctx.fixed_counters[fx(i)],
        })
    }

    /// Set a counter's value from the counter source (e.g. after reading hardware),
    /// truncated to its width. Does not touch GLOBAL_STATUS.
    pub fn set_counter_value(&mut self, id: CounterId, value: u64) {
        if self.exists(id) {
            let (slot, mask) = self.value_slot(id);
            *slot = value & mask;
        }
    }

    /// A view of one counter, if the layout has it.
    pub fn counter(&self, id: CounterId) -> Option<CounterView> {
        if !self.exists(id) {
            return None;
        }
        let ctl = self.control(id);
        let (os, usr) = match id {
            CounterId::Gp(_) => (intel::EVTSEL_OS, intel::EVTSEL_USR),
            CounterId::Fixed(_) => (intel::FIXED_EN_OS, intel::FIXED_EN_USR),
        };
        Some(CounterView {
            id,
            control: ctl,
            value: self.counter_value(id)?,
            width: width_of(self.mask_of(id)),
            enabled: self.is_enabled(id),
            blocked: self.is_blocked(id),
            pmi_on_overflow: self.pmi_enabled(id),
            count_os: ctl & os != 0,
            count_usr: ctl & usr != 0,
        })
    }

    /// Every counter of the layout: GP counters, then fixed counters.
    pub fn counters(&self) -> impl Iterator<Item = CounterView> + '_ {
        let gp = (0..self.model.num_gp).map(CounterId::Gp);
        let fixed = (0..self.model.num_fixed).map(CounterId::Fixed);
        gp.chain(fixed).filter_map(move |id| self.counter(id))
    }

    /// GLOBAL_STATUS (0 where the layout has none).
    pub fn global_status(&self) -> u64 {
        self.ctx.global_status
    }

    /// GLOBAL_CTRL (the reset value is kept, but unused, where the layout has none).
    pub fn global_ctrl(&self) -> u64 {
        self.ctx.global_ctrl
    }

    /// The whole register file (a copy; no allocation).
    pub fn save(&self) -> PmuContext {
        self.ctx
    }

    /// Borrow the register file.
    pub fn context(&self) -> &PmuContext {
        &self.ctx
    }

    /// Load a register file saved from a PMU with the same layout. Registers are taken in
    /// [`RESTORE_ORDER`] (status, selectors, counters, GLOBAL_CTRL). A context that does
    /// not fit this layout (reserved bits, values wider than the counters, registers the
    /// layout lacks holding non-zero values) is rejected and nothing changes.
    pub fn restore(&mut self, ctx: &PmuContext) -> Result<(), RestoreError> {
        self.check_context(ctx)?;
        self.ctx.global_status = ctx.global_status;
        self.ctx.gp_selectors = ctx.gp_selectors;
        self.ctx.fixed_ctrl = ctx.fixed_ctrl;
        self.ctx.gp_counters = ctx.gp_counters;
        self.ctx.fixed_counters = ctx.fixed_counters;
        self.ctx.global_ctrl = ctx.global_ctrl;
        Ok(())
    }

    fn check_context(&self, ctx: &PmuContext) -> Result<(), RestoreError> {
        let check = |register: &'static str, value: u64, mask: u64| {
            if value & mask != 0 {
                Err(RestoreError {
                    register,
                    value,
                    mask,
                })
            } else {
                Ok(())
            }
        };
        let m = &self.model;
        let num_gp = usize::from(m.num_gp);
        let num_fixed = usize::from(m.num_fixed);
        for i in 0..MAX_GP {
            let (sel_mask, ctr_mask) = if i < num_gp {
                (m.evtsel_reserved(), !m.gp_mask)
            } else {
                (u64::MAX, u64::MAX)
            };
            check("gp_selectors", ctx.gp_selectors[i], sel_mask)?;
            check("gp_counters", ctx.gp_counters[i], ctr_mask)?;
        }
        for i in 0..MAX_FIXED {
            let mask = if i < num_fixed {
                !m.fixed_mask
            } else {
                u64::MAX
            };
            check("fixed_counters", ctx.fixed_counters[i], mask)?;
        }
        check("fixed_ctrl", ctx.fixed_ctrl, m.fixed_ctrl_reserved())?;
        if m.has_global {
            check("global_ctrl", ctx.global_ctrl, m.global_ctrl_reserved())?;
            check("global_status", ctx.global_status, !m.status_set_writable())?;
        } else {
            check("global_ctrl", ctx.global_ctrl, u64::MAX)?;
            check("global_status", ctx.global_status, u64::MAX)?;
        }
        Ok(())
    }

    /// The hardware save order for this layout ([`SAVE_ORDER`] or
    /// [`SAVE_ORDER_NO_GLOBAL`]).
    pub fn save_order(&self) -> &'static [ContextStep] {
        if self.model.has_global {
            &SAVE_ORDER
        } else {
            &SAVE_ORDER_NO_GLOBAL
        }
    }

    /// The hardware restore order for this layout.
    pub fn restore_order(&self) -> &'static [ContextStep] {
        if self.model.has_global {
            &RESTORE_ORDER
        } else {
            &RESTORE_ORDER_NO_GLOBAL
        }
    }
}

fn status_effect(old: u64, new: u64) -> WriteEffect {
    if old == new {
        WriteEffect::None
    } else {
        WriteEffect::Status
    }
}

/// Index of a GP slot. `decode` only yields indices below the layout's count, which never
/// exceeds MAX_GP, but clamp anyway so a bug can never become a panic.
fn gp(i: u8) -> usize {
    usize::from(i).min(MAX_GP - 1)
}

fn fx(i: u8) -> usize {
    usize::from(i).min(MAX_FIXED - 1)
}
