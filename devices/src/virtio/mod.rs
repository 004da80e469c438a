//! virtio 1.x devices on the MMIO transport (VIRTIO 1.2, section 4.2, "version 2").
//!
//! - [`mmio`]: [`MmioTransport`], the register file a driver talks to (feature
//!   negotiation, queue set-up, notifications, interrupt status, device status and
//!   reset, configuration space); it owns the virtqueues (`virtio-queue`) and a
//!   [`VirtioDevice`] that does the device-specific work.
//! - [`block`]: [`Block`], a virtio-blk device backed by a host file.
//!
//! Queues are processed synchronously, on the vCPU thread whose write to `QueueNotify`
//! trapped (no ioeventfd, no worker thread): simple and correct, at the cost of holding
//! that vCPU for the duration of the I/O.

pub mod block;
pub mod mmio;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

pub use block::{Block, BlockError, BlockStats};
pub use mmio::{MmioTransport, MMIO_REGION_SIZE, VENDOR_ID};

/// `VIRTIO_F_VERSION_1` (bit 32): the transport always offers it and requires it.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// The device-specific half of a virtio device.
pub trait VirtioDevice: Send {
    /// Virtio device id (2 = block).
    fn device_type(&self) -> u32;
    /// Device feature bits (the transport adds `VIRTIO_F_VERSION_1`).
    fn features(&self) -> u64;
    /// Maximum size of each of the device's queues; the number of queues is its length.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device configuration space at `offset` (any offset, any length; bytes
    /// past the end read as zero).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space (ignored where not writable).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Processes the available buffers of queue `index`. Returns whether the driver must
    /// be interrupted (used buffers were added and the driver wants to know).
    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool;
    /// Device reset (the driver wrote 0 to `Status`).
    fn reset(&mut self) {}
}

#[cfg(test)]
pub(crate) mod testutil;
