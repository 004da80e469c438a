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

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

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
    /// Processes the available buffers of queue `index`.
    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Processed;
    /// Device reset (the driver wrote 0 to `Status`).
    fn reset(&mut self) {}
}

#[cfg(test)]
pub(crate) mod testutil;

/// What [`VirtioDevice::process_queue`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Processed {
    /// Used buffers were added and the driver wants to be interrupted.
    pub interrupt: bool,
    /// The driver broke the protocol in a way the device cannot answer per request (an
    /// indirect descriptor without `VIRTIO_F_INDIRECT_DESC`): the transport sets
    /// DEVICE_NEEDS_RESET and serves nothing more until the driver resets the device.
    pub needs_reset: bool,
}

/// `VIRTQ_DESC_F_INDIRECT`.
#[allow(clippy::cast_possible_truncation)] // the flag is 4
const DESC_F_INDIRECT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;

/// Why a descriptor chain was not walked to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    /// A descriptor has `VIRTQ_DESC_F_INDIRECT`, which no device here offers.
    Indirect,
}

/// The descriptors of the chain starting at `head` in `queue`'s descriptor table.
///
/// Like `virtio_queue::DescriptorChain` (at most queue-size descriptors, at most 4 GiB in
/// all, the chain ends at a `next` past the table or a descriptor outside guest memory),
/// except that it does not follow indirect tables: no device here offers
/// `VIRTIO_F_INDIRECT_DESC`, so a driver must not use them (VIRTIO 1.2, 2.7.5.3.1), and
/// one that does gets [`ChainError::Indirect`] rather than a silently served request.
pub fn chain_descriptors(
    queue: &Queue,
    mem: &GuestMemoryMmap,
    head: u16,
) -> Result<Vec<Descriptor>, ChainError> {
    let size = queue.size();
    let mut descs = Vec::new();
    let mut next = head;
    let mut bytes = 0u32;
    for _ in 0..size {
        if next >= size {
            break;
        }
        let Some(Ok(d)) = queue
            .desc_table()
            .checked_add(16 * u64::from(next))
            .map(|a| mem.read_obj::<Descriptor>(GuestAddress(a)))
        else {
            break;
        };
        if d.flags() & DESC_F_INDIRECT != 0 {
            return Err(ChainError::Indirect);
        }
        let Some(b) = bytes.checked_add(d.len()) else {
            break;
        };
        bytes = b;
        descs.push(d);
        if !d.has_next() {
            break;
        }
        next = d.next();
    }
    Ok(descs)
}
