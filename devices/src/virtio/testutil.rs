//! A mock virtio driver for unit tests: guest memory with a split virtqueue laid out in
//! it, helpers to build descriptor chains, and the register-level initialisation sequence
//! a Linux driver performs on a virtio-mmio device.

#![allow(clippy::cast_possible_truncation)] // fixtures: queue indices and addresses of a small test memory

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{MmioTransport, VirtioDevice};
use crate::mmio::MmioDevice;
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;

/// Guest memory size of the mock.
pub const MEM_SIZE: u64 = 1 << 20;
/// Descriptor table.
pub const DESC: u64 = 0x1000;
/// Available ring.
pub const AVAIL: u64 = 0x3000;
/// Used ring.
pub const USED: u64 = 0x4000;
/// Where tests put request buffers.
pub const DATA: u64 = 0x10000;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

/// One buffer of a chain: (guest address, length, device-writable).
pub type Buf = (u64, u32, bool);

pub struct Driver {
    pub mem: GuestMemoryMmap,
    pub size: u16,
    next_desc: u16,
    avail_idx: u16,
}

pub fn reg_read<D: VirtioDevice>(t: &mut MmioTransport<D>, off: u32) -> u32 {
    let mut b = [0u8; 4];
    t.read(u64::from(off), &mut b);
    u32::from_le_bytes(b)
}

pub fn reg_write<D: VirtioDevice>(t: &mut MmioTransport<D>, off: u32, v: u32) {
    t.write(u64::from(off), &v.to_le_bytes());
}

impl Driver {
    pub fn new(size: u16) -> Self {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
            .expect("test memory");
        Driver {
            mem,
            size,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    pub fn write_desc(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.write_desc_at(DESC, idx, addr, len, flags, next);
    }

    /// Writes descriptor `idx` of the table at `table` (the queue's or an indirect one).
    pub fn write_desc_at(&self, table: u64, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let a = GuestAddress(table + 16 * u64::from(idx));
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&raw, a).expect("desc write");
    }

    /// Writes `bufs` as a chain of consecutive descriptors; returns the head index.
    pub fn add_chain(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let idx = (head + i as u16) % self.size;
            let last = i + 1 == bufs.len();
            let flags = if w { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            self.write_desc(idx, addr, len, flags, (idx + 1) % self.size);
        }
        self.next_desc = (head + bufs.len() as u16) % self.size;
        head
    }

    /// Puts `head` in the available ring and bumps its index.
    pub fn publish(&mut self, head: u16) {
        let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head, GuestAddress(slot))
            .expect("avail write");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx, GuestAddress(AVAIL + 2))
            .expect("avail idx");
    }

    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + 2)).expect("used idx")
    }

    /// (descriptor id, length) of used element `i`.
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let a = USED + 4 + 8 * u64::from(i % self.size);
        (
            self.mem.read_obj(GuestAddress(a)).expect("used id"),
            self.mem.read_obj(GuestAddress(a + 4)).expect("used len"),
        )
    }

    pub fn read_u8(&self, addr: u64) -> u8 {
        self.mem.read_obj(GuestAddress(addr)).expect("read")
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) {
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .expect("write");
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .read_slice(&mut v, GuestAddress(addr))
            .expect("read");
        v
    }

    /// The Linux virtio_mmio/virtio core initialisation sequence, accepting `features`
    /// (masked by what the device offers) and setting up queue 0 at the default layout.
    pub fn init<D: VirtioDevice>(&self, t: &mut MmioTransport<D>, features: u64) {
        let s = self.negotiate(t, features);
        self.setup_queue(t, u32::from(self.size), DESC, AVAIL, USED);
        reg_write(t, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(
            reg_read(t, VIRTIO_MMIO_STATUS),
            s | VIRTIO_CONFIG_S_DRIVER_OK
        );
    }

    /// Reset, ACKNOWLEDGE, DRIVER, feature negotiation and FEATURES_OK; returns the
    /// status written last.
    pub fn negotiate<D: VirtioDevice>(&self, t: &mut MmioTransport<D>, features: u64) -> u32 {
        reg_write(t, VIRTIO_MMIO_STATUS, 0);
        reg_write(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        reg_write(
            t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        reg_write(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let hi = u64::from(reg_read(t, VIRTIO_MMIO_DEVICE_FEATURES));
        reg_write(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        let lo = u64::from(reg_read(t, VIRTIO_MMIO_DEVICE_FEATURES));
        let accept = features & ((hi << 32) | lo);
        reg_write(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        reg_write(t, VIRTIO_MMIO_DRIVER_FEATURES, (accept >> 32) as u32);
        reg_write(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        reg_write(t, VIRTIO_MMIO_DRIVER_FEATURES, accept as u32);
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        reg_write(t, VIRTIO_MMIO_STATUS, s);
        assert_eq!(reg_read(t, VIRTIO_MMIO_STATUS), s, "FEATURES_OK refused");
        s
    }

    /// Selects queue 0, writes its size and ring addresses (64-bit, low half first, as
    /// Linux does) and sets it ready.
    pub fn setup_queue<D: VirtioDevice>(
        &self,
        t: &mut MmioTransport<D>,
        size: u32,
        desc: u64,
        avail: u64,
        used: u64,
    ) {
        reg_write(t, VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(reg_read(t, VIRTIO_MMIO_QUEUE_READY), 0);
        assert!(reg_read(t, VIRTIO_MMIO_QUEUE_NUM_MAX) >= u32::from(self.size));
        reg_write(t, VIRTIO_MMIO_QUEUE_NUM, size);
        for (lo, hi, addr) in [
            (
                VIRTIO_MMIO_QUEUE_DESC_LOW,
                VIRTIO_MMIO_QUEUE_DESC_HIGH,
                desc,
            ),
            (
                VIRTIO_MMIO_QUEUE_AVAIL_LOW,
                VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
                avail,
            ),
            (
                VIRTIO_MMIO_QUEUE_USED_LOW,
                VIRTIO_MMIO_QUEUE_USED_HIGH,
                used,
            ),
        ] {
            reg_write(t, lo, addr as u32);
            reg_write(t, hi, (addr >> 32) as u32);
        }
        reg_write(t, VIRTIO_MMIO_QUEUE_READY, 1);
    }
}
