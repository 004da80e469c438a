//! Parts of the run report both architectures share.

/// One virtio-blk disk at the end of the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiskReport {
    /// Capacity in 512-byte sectors.
    pub sectors: u64,
    /// Exposed read-only.
    pub read_only: bool,
    /// Completed read requests.
    pub reads: u64,
    /// Bytes read from the image.
    pub bytes_read: u64,
    /// Completed write requests.
    pub writes: u64,
    /// Bytes written to the image.
    pub bytes_written: u64,
    /// Completed flushes.
    pub flushes: u64,
    /// Requests completed with IOERR or UNSUPP.
    pub errors: u64,
    /// Chains returned without a status.
    pub dropped: u64,
}

impl DiskReport {
    /// The figures of one disk.
    pub fn of(blk: &devices::virtio::Block) -> DiskReport {
        let s = blk.stats();
        DiskReport {
            sectors: blk.capacity(),
            read_only: blk.read_only(),
            reads: s.reads,
            bytes_read: s.bytes_read,
            writes: s.writes,
            bytes_written: s.bytes_written,
            flushes: s.flushes,
            errors: s.errors,
            dropped: s.dropped,
        }
    }
}
