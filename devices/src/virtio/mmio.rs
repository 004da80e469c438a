//! The virtio-mmio transport, version 2 (VIRTIO 1.2, section 4.2.2).
//!
//! Registers are 32 bits wide and must be accessed with aligned 4-byte loads and stores;
//! other accesses below the configuration space read as zero and are ignored on write.
//! The configuration space (from offset 0x100) accepts any width.
//!
//! Defensive rules (a driver is untrusted):
//! - feature bits the device does not offer are dropped from `DriverFeatures`, which can
//!   only change while `Status` has DRIVER and not FEATURES_OK;
//! - FEATURES_OK is refused (not latched in `Status`) unless VIRTIO_F_VERSION_1 was
//!   accepted: this transport is modern only;
//! - queue registers are ignored while the selected queue is ready or when `QueueSel`
//!   names no queue (`QueueNumMax` then reads 0);
//! - `QueueNum` and the ring addresses are latched as written and checked together when
//!   the driver writes 1 to `QueueReady` (VIRTIO 1.2, 2.7: size a power of two no larger
//!   than `QueueNumMax`; descriptor table 16-byte, available ring 2-byte and used ring
//!   4-byte aligned; every ring inside guest memory). A bad layout leaves the queue not
//!   ready, sets DEVICE_NEEDS_RESET and raises a configuration-change interrupt: the
//!   device never uses an address other than the one the driver wrote;
//! - a notification is served only after DRIVER_OK, for a ready queue; its value must be
//!   a queue index (VIRTIO_F_NOTIFICATION_DATA is not offered): any other is ignored;
//! - a device that finds the driver broke the protocol (see
//!   [`Processed::needs_reset`]) gets the same DEVICE_NEEDS_RESET treatment;
//! - writing 0 to `Status` resets everything, including the device.

use std::sync::atomic::{AtomicU64, Ordering};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{Processed, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::mmio::MmioDevice;

/// "virt" in little endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// Transport version 2 (virtio 1.x, no legacy interface).
pub const VERSION: u32 = 2;
/// Our vendor id: "vpmu" in little endian.
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"vpmu");
/// Size of the register window each device occupies on the MMIO bus.
pub const MMIO_REGION_SIZE: u64 = 0x1000;

/// Counters of transport events (for statistics and tests).
#[derive(Debug, Default)]
pub struct TransportStats {
    /// `QueueNotify` writes.
    pub notifies: AtomicU64,
    /// Interrupts raised.
    pub interrupts: AtomicU64,
    /// Register accesses that were not aligned 4-byte accesses, or that were refused.
    pub bad_accesses: AtomicU64,
}

/// What the driver wrote to a queue's `QueueNum` and ring address registers. It reaches
/// the [`Queue`] only when `QueueReady` is set and the whole layout checks out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct QueueRegs {
    size: u32,
    desc: u64,
    avail: u64,
    used: u64,
}

/// A queue and its latched configuration registers.
struct VirtQueue {
    queue: Queue,
    regs: QueueRegs,
}

impl VirtQueue {
    fn new(queue: Queue) -> Self {
        let mut q = VirtQueue {
            queue,
            regs: QueueRegs::default(),
        };
        q.reset();
        q
    }

    fn reset(&mut self) {
        self.queue.reset();
        self.regs = QueueRegs {
            size: u32::from(self.queue.max_size()),
            ..QueueRegs::default()
        };
    }

    /// Applies the latched layout and makes the queue ready; false (and not ready) when
    /// the layout is bad. `Queue::try_set_*` check the size (a power of two, at most the
    /// maximum) and the alignments (VIRTIO 1.2, 2.7: descriptor table 16, available ring
    /// 2, used ring 4 bytes), `is_valid` that every ring lies in `mem`.
    fn activate(&mut self, mem: &GuestMemoryMmap) -> bool {
        let r = self.regs;
        let q = &mut self.queue;
        let applied = u16::try_from(r.size).is_ok_and(|size| q.try_set_size(size).is_ok())
            && q.try_set_desc_table_address(GuestAddress(r.desc)).is_ok()
            && q.try_set_avail_ring_address(GuestAddress(r.avail)).is_ok()
            && q.try_set_used_ring_address(GuestAddress(r.used)).is_ok();
        q.set_ready(applied);
        if applied && !q.is_valid(mem) {
            q.set_ready(false);
        }
        q.ready()
    }
}

/// Replaces the low (`high == false`) or high 32 bits of `addr` with `v`.
fn set_half(addr: &mut u64, high: bool, v: u32) {
    *addr = if high {
        (*addr & 0xffff_ffff) | (u64::from(v) << 32)
    } else {
        (*addr & !0xffff_ffff) | u64::from(v)
    };
}

/// A virtio device behind the MMIO transport.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemoryMmap,
    irq: EventFd,
    queues: Vec<VirtQueue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
    stats: TransportStats,
    /// Times the device needed a reset (for [`crate::WARN_LIMIT`]).
    resets_needed: u64,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Wraps `device`. `irq` is signalled (written 1) to raise the device's interrupt; the
    /// VMM registers it as an irqfd (edge) on the device's GSI.
    pub fn new(device: D, mem: GuestMemoryMmap, irq: EventFd) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            // Queue::new only rejects sizes that are zero, above 32768 or not a power of
            // two; such a queue is left out (QueueNumMax reads 0 for it).
            .filter_map(|&max| Queue::new(max).ok())
            .map(VirtQueue::new)
            .collect();
        MmioTransport {
            device,
            mem,
            irq,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            stats: TransportStats::default(),
            resets_needed: 0,
        }
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Transport counters.
    pub fn stats(&self) -> &TransportStats {
        &self.stats
    }

    fn device_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&self) -> Option<&VirtQueue> {
        self.queues.get(self.queue_sel as usize)
    }

    /// The selected queue's registers, if it may be configured now (exists, is not
    /// ready, and the driver has not given up on the device).
    fn configurable_queue(&mut self) -> Option<&mut QueueRegs> {
        if self.status & VIRTIO_CONFIG_S_FAILED != 0 {
            return None;
        }
        self.queues
            .get_mut(self.queue_sel as usize)
            .filter(|q| !q.queue.ready())
            .map(|q| &mut q.regs)
    }

    /// The driver wrote `QueueReady`.
    fn set_queue_ready(&mut self, v: u32) {
        let Some(q) = self.queues.get_mut(self.queue_sel as usize) else {
            return;
        };
        if v != 1 {
            q.queue.set_ready(false);
            return;
        }
        if q.queue.ready() || self.status & VIRTIO_CONFIG_S_FAILED != 0 {
            return;
        }
        if !q.activate(&self.mem) {
            self.stats.bad_accesses.fetch_add(1, Ordering::Relaxed);
            self.needs_reset(
                "the driver made a queue ready with an invalid size or rings outside guest memory",
            );
        }
    }

    /// The device cannot go on until the driver resets it: sets DEVICE_NEEDS_RESET and
    /// tells the driver with a configuration-change interrupt (VIRTIO 1.2, 2.1.2).
    fn needs_reset(&mut self, why: &str) {
        self.resets_needed += 1;
        if let Some(more) = crate::warn_suffix(self.resets_needed) {
            let what = match self.device.device_type() {
                virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK => "virtio-blk",
                _ => "virtio device",
            };
            log::warn!("{what} (virtio-mmio): needs a reset: {why}{more}");
        }
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    fn raise(&mut self, why: u32) {
        self.interrupt_status |= why;
        self.stats.interrupts.fetch_add(1, Ordering::Relaxed);
        // A full eventfd counter (never in practice) still leaves the interrupt pending.
        let _ = self.irq.write(1);
    }

    fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.status = 0;
        self.interrupt_status = 0;
        self.device.reset();
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let mut v = v;
        if v & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0
            && self.acked_features & VIRTIO_F_VERSION_1 == 0
        {
            // Modern-only device: the driver must accept VERSION_1. Not latching
            // FEATURES_OK tells it so (it reads the status back).
            self.stats.bad_accesses.fetch_add(1, Ordering::Relaxed);
            v &= !VIRTIO_CONFIG_S_FEATURES_OK;
        }
        if v & VIRTIO_CONFIG_S_DRIVER_OK != 0 && v & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            // DRIVER_OK without negotiated features: refuse to go live.
            self.stats.bad_accesses.fetch_add(1, Ordering::Relaxed);
            v &= !VIRTIO_CONFIG_S_DRIVER_OK;
        }
        // The device owns NEEDS_RESET; the driver cannot clear it short of a reset.
        self.status = v | (self.status & VIRTIO_CONFIG_S_NEEDS_RESET);
    }

    fn notify(&mut self, index: u32) {
        self.stats.notifies.fetch_add(1, Ordering::Relaxed);
        let live = VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FEATURES_OK;
        if self.status & live != live
            || self.status & (VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED) != 0
        {
            return;
        }
        // VIRTIO_F_NOTIFICATION_DATA is not offered: the value is the queue index and
        // nothing else (no masking: 0x10000 is not queue 0).
        let index = index as usize;
        let Some(q) = self.queues.get_mut(index) else {
            return;
        };
        // Ready means the layout was checked against guest memory (`set_queue_ready`).
        if !q.queue.ready() {
            return;
        }
        let Processed {
            interrupt,
            needs_reset,
        } = self.device.process_queue(index, &mut q.queue, &self.mem);
        if interrupt {
            self.raise(VIRTIO_MMIO_INT_VRING);
        }
        if needs_reset {
            self.stats.bad_accesses.fetch_add(1, Ordering::Relaxed);
            self.needs_reset("the device stopped its queue on a descriptor chain it cannot read");
        }
    }

    fn read_reg(&mut self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC_VALUE,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => (self.device_features() & 0xffff_ffff) as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self
                .selected_queue()
                .map_or(0, |q| u32::from(q.queue.max_size())),
            VIRTIO_MMIO_QUEUE_READY => self
                .selected_queue()
                .map_or(0, |q| u32::from(q.queue.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt_status,
            VIRTIO_MMIO_STATUS => self.status,
            // No shared memory regions: a length of all ones means "none".
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            VIRTIO_MMIO_SHM_BASE_LOW | VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            // Write-only and reserved registers read as zero.
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u32, v: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES => {
                let negotiating = self.status & VIRTIO_CONFIG_S_DRIVER != 0
                    && self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0;
                if !negotiating {
                    self.stats.bad_accesses.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let (shift, mask) = match self.driver_features_sel {
                    0 => (0, 0x0000_0000_ffff_ffffu64),
                    1 => (32, 0xffff_ffff_0000_0000u64),
                    _ => return,
                };
                let offered = self.device_features() & mask;
                self.acked_features =
                    (self.acked_features & !mask) | ((u64::from(v) << shift) & offered);
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NUM => {
                if let Some(r) = self.configurable_queue() {
                    r.size = v;
                }
            }
            VIRTIO_MMIO_QUEUE_READY => self.set_queue_ready(v),
            VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH => {
                if let Some(r) = self.configurable_queue() {
                    // Each address is a LOW/HIGH register pair 4 bytes apart, LOW first.
                    let addr = match offset {
                        VIRTIO_MMIO_QUEUE_DESC_LOW | VIRTIO_MMIO_QUEUE_DESC_HIGH => &mut r.desc,
                        VIRTIO_MMIO_QUEUE_AVAIL_LOW | VIRTIO_MMIO_QUEUE_AVAIL_HIGH => &mut r.avail,
                        _ => &mut r.used,
                    };
                    set_half(addr, offset % 8 == 4, v);
                }
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(v),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt_status &= !v,
            VIRTIO_MMIO_STATUS => self.set_status(v),
            VIRTIO_MMIO_SHM_SEL => {}
            _ => {
                self.stats.bad_accesses.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl<D: VirtioDevice> MmioDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device
                .read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        // offset < VIRTIO_MMIO_CONFIG here: it fits a u32.
        match (<&mut [u8; 4]>::try_from(&mut *data), u32::try_from(offset)) {
            (Ok(bytes), Ok(off)) if off % 4 == 0 => *bytes = self.read_reg(off).to_le_bytes(),
            _ => {
                self.stats.bad_accesses.fetch_add(1, Ordering::Relaxed);
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device
                .write_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        // offset < VIRTIO_MMIO_CONFIG here: it fits a u32.
        match (<[u8; 4]>::try_from(data), u32::try_from(offset)) {
            (Ok(bytes), Ok(off)) if off % 4 == 0 => self.write_reg(off, u32::from_le_bytes(bytes)),
            _ => {
                self.stats.bad_accesses.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // fixtures build bytes and small values by truncation
mod tests {
    use super::*;
    use crate::virtio::testutil::*;
    use proptest::prelude::*;
    use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_ACKNOWLEDGE;
    use virtio_queue::Queue;

    /// A device with two queues that completes nothing, counting notifications.
    struct Dummy {
        sizes: [u16; 2],
        processed: Vec<usize>,
        resets: u32,
        interrupt: bool,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn features(&self) -> u64 {
            (1 << 5) | (1 << 40)
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.sizes
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn process_queue(
            &mut self,
            index: usize,
            _q: &mut Queue,
            _m: &GuestMemoryMmap,
        ) -> Processed {
            self.processed.push(index);
            Processed {
                interrupt: self.interrupt,
                needs_reset: false,
            }
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
    }

    fn transport() -> (MmioTransport<Dummy>, Driver, EventFd) {
        let d = Driver::new(16);
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let dev = Dummy {
            sizes: [16, 256],
            processed: Vec::new(),
            resets: 0,
            interrupt: true,
        };
        let t = MmioTransport::new(dev, d.mem.clone(), irq.try_clone().expect("eventfd"));
        (t, d, irq)
    }

    #[test]
    fn identification_registers() {
        let (mut t, _, _) = transport();
        assert_eq!(reg_read(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(reg_read(&mut t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(reg_read(&mut t, VIRTIO_MMIO_DEVICE_ID), 42);
        assert_eq!(reg_read(&mut t, VIRTIO_MMIO_VENDOR_ID), VENDOR_ID);
        assert_eq!(reg_read(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), 0);
        assert_eq!(reg_read(&mut t, VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
        // Feature banks.
        assert_eq!(reg_read(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 1 << 5);
        reg_write(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(reg_read(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), (1 << 8) | 1);
        reg_write(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
        assert_eq!(reg_read(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 0);
        // Config space at any width.
        let mut b = [0u8; 3];
        t.read(0x105, &mut b);
        assert_eq!(b, [5, 5, 5]);
    }

    #[test]
    fn odd_register_accesses_read_zero_and_are_ignored() {
        let (mut t, _, _) = transport();
        for (off, len) in [
            (0u64, 1usize),
            (0, 2),
            (0, 8),
            (1, 4),
            (2, 4),
            (0xfd, 4),
            (0, 0),
        ] {
            let mut b = vec![0xccu8; len];
            t.read(off, &mut b);
            assert!(b.iter().all(|&x| x == 0), "{off:#x}/{len}");
        }
        t.write(u64::from(VIRTIO_MMIO_STATUS), &[1]);
        t.write(u64::from(VIRTIO_MMIO_STATUS) + 1, &1u32.to_le_bytes());
        assert_eq!(reg_read(&mut t, VIRTIO_MMIO_STATUS), 0);
        // Read-only registers ignore writes.
        reg_write(&mut t, VIRTIO_MMIO_MAGIC_VALUE, 0);
        assert_eq!(reg_read(&mut t, VIRTIO_MMIO_MAGIC_VALUE), MAGIC_VALUE);
        assert!(t.stats().bad_accesses.load(Ordering::Relaxed) >= 9);
    }

    #[test]
    fn feature_negotiation_rules() {
        let (mut t, _, _) = transport();
        // Before DRIVER: refused.
        reg_write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, u32::MAX);
        assert_eq!(t.acked_features(), 0);
        reg_write(
            &mut t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        // Unoffered bits are dropped.
        reg_write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, u32::MAX);
        assert_eq!(t.acked_features(), 1 << 5);
        // Without VERSION_1, FEATURES_OK does not latch.
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        reg_write(&mut t, VIRTIO_MMIO_STATUS, s);
        assert_eq!(
            reg_read(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
            0
        );
        // DRIVER_OK without FEATURES_OK does not latch either.
        reg_write(&mut t, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(
            reg_read(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_DRIVER_OK,
            0
        );
        reg_write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        reg_write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, u32::MAX);
        assert_eq!(
            t.acked_features(),
            (1 << 5) | (1 << 40) | VIRTIO_F_VERSION_1
        );
        reg_write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 7);
        reg_write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, u32::MAX);
        reg_write(&mut t, VIRTIO_MMIO_STATUS, s);
        assert_eq!(reg_read(&mut t, VIRTIO_MMIO_STATUS), s);
        // After FEATURES_OK: frozen.
        reg_write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        reg_write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 0);
        assert_eq!(
            t.acked_features(),
            (1 << 5) | (1 << 40) | VIRTIO_F_VERSION_1
        );
    }

    #[test]
    fn queue_registers_and_reset() {
        let (mut t, d, _) = transport();
        assert_eq!(reg_read(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(reg_read(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 2);
        assert_eq!(reg_read(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
        assert_eq!(reg_read(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
        // Writes to a queue that does not exist go nowhere.
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_NUM, 8);
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(reg_read(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
        // Sizes are latched as written and only checked at QueueReady (see
        // bad_queue_layouts_are_refused_at_queue_ready); the queue is untouched until then.
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_NUM, 8);
        assert_eq!(t.queues[0].regs.size, 8);
        assert_eq!(t.queues[0].queue.size(), 16);
        d.init(&mut t, u64::MAX);
        assert_eq!(reg_read(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
        assert_eq!(t.queues[0].queue.size(), 16);
        // A ready queue cannot be reconfigured.
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x8000);
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_NUM, 4);
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(t.queues[0].queue.desc_table(), DESC);
        assert_eq!(t.queues[0].queue.size(), 16);
        assert_eq!(t.queues[0].regs.desc, DESC);
        assert_eq!(t.queues[0].regs.size, 16);
        // Reset.
        reg_write(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(reg_read(&mut t, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(reg_read(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
        assert_eq!(t.acked_features(), 0);
        assert_eq!(t.device().resets, 2); // one in init, one here
    }

    #[test]
    fn notify_interrupt_and_ack() {
        let (mut t, d, irq) = transport();
        // Not live yet: nothing happens.
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert!(t.device().processed.is_empty());
        d.init(&mut t, u64::MAX);
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        // Queue 1 is not ready, queue 7 does not exist.
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 7);
        assert_eq!(t.device().processed, vec![0]);
        assert_eq!(irq.read().expect("irq"), 1);
        assert_eq!(reg_read(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 1);
        reg_write(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(reg_read(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        assert_eq!(t.stats().notifies.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn rings_outside_memory_need_reset() {
        let (mut t, d, irq) = transport();
        d.init(&mut t, u64::MAX);
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_NUM, 256);
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0);
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0x10);
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        assert!(t.device().processed.is_empty());
        assert_ne!(
            reg_read(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
            0
        );
        assert_eq!(reg_read(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 2);
        assert_eq!(irq.read().expect("irq"), 1);
        // Dead until reset: even the good queue is not served.
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert!(t.device().processed.is_empty());
        d.init(&mut t, u64::MAX);
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert_eq!(t.device().processed, vec![0]);
    }

    #[test]
    fn notify_values_above_the_queue_count_are_ignored() {
        let (mut t, d, irq) = transport();
        d.init(&mut t, u64::MAX);
        // Without VIRTIO_F_NOTIFICATION_DATA the value is the queue index, nothing else:
        // 0x10000 is not queue 0.
        for v in [0x1_0000u32, 0x1_0001, 0xffff_0000, u32::MAX, 2] {
            reg_write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, v);
        }
        assert!(t.device().processed.is_empty());
        assert!(irq.read().is_err(), "no interrupt");
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert_eq!(t.device().processed, vec![0]);
    }

    /// Queue 0 set up with one bad parameter: (what, size, desc, avail, used).
    const BAD_QUEUES: [(&str, u32, u64, u64, u64); 12] = [
        ("desc misaligned", 16, DESC + 8, AVAIL, USED),
        ("desc misaligned high", 16, DESC + 1, AVAIL, USED),
        ("avail misaligned", 16, DESC, AVAIL + 1, USED),
        ("used misaligned", 16, DESC, AVAIL, USED + 2),
        ("used misaligned by 1", 16, DESC, AVAIL, USED + 1),
        ("size 0", 0, DESC, AVAIL, USED),
        ("size not a power of 2", 12, DESC, AVAIL, USED),
        ("size above the maximum", 32, DESC, AVAIL, USED),
        ("size above 16 bits", 0x1_0010, DESC, AVAIL, USED),
        ("desc outside memory", 16, 1 << 36, AVAIL, USED),
        ("avail straddling the end", 16, DESC, MEM_SIZE - 8, USED),
        ("used straddling the end", 16, DESC, AVAIL, MEM_SIZE - 64),
    ];

    #[test]
    fn bad_queue_layouts_are_refused_at_queue_ready() {
        for (what, size, desc, avail, used) in BAD_QUEUES {
            let (mut t, d, irq) = transport();
            let s = d.negotiate(&mut t, u64::MAX);
            d.setup_queue(&mut t, size, desc, avail, used);
            assert_eq!(reg_read(&mut t, VIRTIO_MMIO_QUEUE_READY), 0, "{what}");
            assert_ne!(
                reg_read(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
                0,
                "{what}"
            );
            assert_eq!(
                reg_read(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
                VIRTIO_MMIO_INT_CONFIG,
                "{what}"
            );
            assert_eq!(irq.read().expect("irq"), 1, "{what}");
            reg_write(&mut t, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
            reg_write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
            assert!(t.device().processed.is_empty(), "{what}");
            // A reset and a good layout bring the device back.
            d.init(&mut t, u64::MAX);
            reg_write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
            assert_eq!(t.device().processed, vec![0], "{what}");
        }
    }

    #[test]
    fn ring_addresses_are_taken_whole_at_queue_ready() {
        // The high half may be written before the low half, and an address is only
        // checked once complete: a transiently misaligned or absent value is fine.
        let (mut t, d, _) = transport();
        let s = d.negotiate(&mut t, u64::MAX);
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_NUM, 16);
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_USED_HIGH, 7);
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_USED_LOW, 0x1);
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_USED_HIGH, 0);
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_USED_LOW, USED as u32);
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, DESC as u32);
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, AVAIL as u32);
        reg_write(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(reg_read(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
        reg_write(&mut t, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(
            reg_read(&mut t, VIRTIO_MMIO_STATUS),
            s | VIRTIO_CONFIG_S_DRIVER_OK
        );
        assert_eq!(t.queues[0].queue.used_ring(), USED);
    }

    proptest! {
        #[test]
        fn random_register_traffic_never_panics(
            ops in proptest::collection::vec(
                (any::<bool>(), 0u64..0x140, prop_oneof![Just(4usize), 0usize..9], any::<u32>()),
                0..200)
        ) {
            let (mut t, _, _) = transport();
            for (is_write, off, len, v) in ops {
                let mut b = vec![0u8; len];
                if is_write {
                    for (i, x) in b.iter_mut().enumerate() {
                        *x = (v >> (8 * (i % 4))) as u8;
                    }
                    t.write(off & !3 | (off & u64::from(len != 4)), &b);
                } else {
                    t.read(off, &mut b);
                }
            }
        }
    }
}
