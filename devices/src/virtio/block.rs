//! virtio-blk (VIRTIO 1.2, section 5.2) backed by a host file: a regular file or a block
//! device, locked while in use ([`Block::open`]).
//!
//! One request queue. Requests: `VIRTIO_BLK_T_IN` (read), `T_OUT` (write), `T_FLUSH`
//! (fdatasync) and `T_GET_ID` (a 20-byte serial); anything else completes with
//! `VIRTIO_BLK_S_UNSUPP`. Features: `VIRTIO_BLK_F_FLUSH`, `VIRTIO_BLK_F_SEG_MAX`, and
//! `VIRTIO_BLK_F_RO` for a read-only disk. The capacity is the file size in 512-byte
//! sectors (a partial last sector is not exposed).
//!
//! The chain layout is not assumed (VIRTIO 1.x, "message framing"): the driver-readable
//! bytes, in order, are the 16-byte header followed by the data of a write; the
//! device-writable bytes are the data of a read (or the id) followed by the status byte,
//! which is the last writable byte of the chain. A chain the device cannot even report a
//! status for (no writable byte, a readable descriptor after a writable one) is returned
//! to the driver unprocessed with a used length of 0. Any other malformed request (short
//! header, data not a multiple of 512 bytes, sectors past the end, sector arithmetic
//! overflowing, buffers outside guest memory, a write to a read-only disk) completes with
//! `VIRTIO_BLK_S_IOERR`. An indirect descriptor (`VIRTIO_F_INDIRECT_DESC` is not offered)
//! stops the queue and makes the device need a reset ([`Processed::needs_reset`]). Nothing
//! here panics on guest input; I/O is done in bounded chunks, so a huge descriptor does not
//! make the VMM allocate. The byte counters of [`BlockStats`] count what actually moved,
//! including the part of a failed request transferred before it failed.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{chain_descriptors, Processed, VirtioDevice};
use crate::host_file::{self, FileKind, LockError};

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Size of the request header (type, reserved, sector).
const HEADER_LEN: u64 = HEADER.len() as u64;
/// An empty request header.
const HEADER: [u8; 16] = [0; 16];
/// Bounce-buffer size for moving data between guest memory and the file.
const CHUNK: usize = 64 << 10;
/// Length of the configuration space we expose (`struct virtio_blk_config` up to
/// `num_queues`; every field but `capacity` and `seg_max` reads 0).
const CONFIG_LEN: usize = 0x40;

/// Errors creating a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The backing file could not be opened.
    #[error("cannot open disk image {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// It is not a regular file (on a filesystem that stores data) or a block device.
    #[error("disk image {path} is {kind}, not a regular file or block device")]
    NotADisk {
        /// The file.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// It could not be locked (another user holds it, or locking failed).
    #[error("disk image {path} {source}")]
    Lock {
        /// The file.
        path: PathBuf,
        /// Why.
        source: LockError,
    },
    /// Its size could not be determined.
    #[error("cannot determine the size of disk image {path}: {source}")]
    Size {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// It is smaller than one sector.
    #[error("disk image {path} is {len} bytes, smaller than one 512-byte sector")]
    TooSmall {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
}

/// What the device did (for statistics and tests).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockStats {
    /// Completed read requests.
    pub reads: u64,
    /// Completed write requests.
    pub writes: u64,
    /// Completed flushes.
    pub flushes: u64,
    /// Bytes read from the file into guest memory (failed requests included).
    pub bytes_read: u64,
    /// Bytes written from guest memory to the file (failed requests included).
    pub bytes_written: u64,
    /// Requests completed with IOERR or UNSUPP.
    pub errors: u64,
    /// Chains returned without a status (nowhere to write it).
    pub dropped: u64,
}

/// A virtio-blk device.
pub struct Block {
    file: File,
    read_only: bool,
    capacity: u64,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    queue_sizes: [u16; 1],
    stats: BlockStats,
    /// The image's path, naming the disk in warnings.
    name: String,
}

/// Which way data moves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// File to guest (driver-writable buffers).
    ToGuest,
    /// Guest to file (driver-readable buffers).
    FromGuest,
}

/// The driver-readable or the device-writable part of a chain, as one byte stream.
#[derive(Default)]
struct Segments {
    segs: Vec<(GuestAddress, u32)>,
    len: u64,
}

impl Segments {
    fn push(&mut self, addr: GuestAddress, len: u32) {
        if len > 0 {
            self.segs.push((addr, len));
            self.len += u64::from(len);
        }
    }

    /// Calls `f(guest_addr, len)` for the pieces covering stream bytes `start..end`,
    /// each at most `CHUNK` long. Stops at the first error.
    fn for_each(
        &self,
        start: u64,
        end: u64,
        mut f: impl FnMut(GuestAddress, usize) -> Result<(), ()>,
    ) -> Result<(), ()> {
        let mut pos = 0u64;
        for &(addr, len) in &self.segs {
            let (s, e) = (pos, pos + u64::from(len));
            pos = e;
            let (from, to) = (start.max(s), end.min(e));
            let mut at = from;
            while at < to {
                let n = usize::try_from(to - at).map_or(CHUNK, |r| r.min(CHUNK));
                let a = addr.0.checked_add(at - s).ok_or(())?;
                f(GuestAddress(a), n)?;
                at += n as u64;
            }
        }
        Ok(())
    }

    /// Reads stream bytes `start..start + buf.len()` from guest memory.
    fn read(&self, mem: &GuestMemoryMmap, start: u64, buf: &mut [u8]) -> Result<(), ()> {
        let mut done = 0usize;
        self.for_each(start, start + buf.len() as u64, |a, n| {
            mem.read_slice(&mut buf[done..done + n], a)
                .map_err(|_| ())?;
            done += n;
            Ok(())
        })
    }

    /// Writes `buf` to stream bytes `start..start + buf.len()` in guest memory.
    fn write(&self, mem: &GuestMemoryMmap, start: u64, buf: &[u8]) -> Result<(), ()> {
        let mut done = 0usize;
        self.for_each(start, start + buf.len() as u64, |a, n| {
            mem.write_slice(&buf[done..done + n], a).map_err(|_| ())?;
            done += n;
            Ok(())
        })
    }
}

/// `FileExt::write_all_at`, adding every byte written to `moved` as it goes (so a write
/// that fails half-way still counts its first half).
fn write_all_at_counted(
    file: &File,
    mut buf: &[u8],
    mut off: u64,
    moved: &mut u64,
) -> io::Result<()> {
    while !buf.is_empty() {
        match file.write_at(buf, off) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                *moved += n as u64;
                buf = &buf[n..];
                off += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Block {
    /// Opens `path` (read-write unless `read_only`) as a virtio-blk disk: it must be a
    /// regular file on a filesystem that stores data, or a block device (not a
    /// character device, FIFO, directory, or procfs/sysfs/... file; see
    /// [`host_file::kind`]), and is locked for the life of the device (see
    /// [`host_file::lock`]: exclusive when read-write, shared when read-only, as QEMU
    /// does), so two VMs, or two `--disk` of one VM, cannot both write it.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let err_path = || path.to_path_buf();
        let file = host_file::open(path, !read_only).map_err(|source| BlockError::Open {
            path: err_path(),
            source,
        })?;
        match host_file::kind(&file) {
            Ok(FileKind::Regular | FileKind::BlockDevice) => {}
            Ok(FileKind::Other(kind)) => {
                return Err(BlockError::NotADisk {
                    path: err_path(),
                    kind,
                })
            }
            Err(source) => {
                return Err(BlockError::Open {
                    path: err_path(),
                    source,
                })
            }
        }
        host_file::lock(&file, !read_only).map_err(|source| BlockError::Lock {
            path: err_path(),
            source,
        })?;
        Self::from_file(file, path, read_only)
    }

    /// A disk backed by an open file (`path` names it in errors and seeds the serial).
    pub fn from_file(mut file: File, path: &Path, read_only: bool) -> Result<Self, BlockError> {
        // Seeking to the end works for regular files and block devices alike.
        let len = file
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Size {
                path: path.to_path_buf(),
                source,
            })?;
        if len < SECTOR_SIZE {
            return Err(BlockError::TooSmall {
                path: path.to_path_buf(),
                len,
            });
        }
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let serial = format!("vpmu-{name}");
        let n = serial.len().min(id.len());
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        Ok(Block {
            file,
            read_only,
            capacity: len / SECTOR_SIZE,
            id,
            queue_sizes: [QUEUE_SIZE],
            stats: BlockStats::default(),
            name: path.display().to_string(),
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether the disk is read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The serial `T_GET_ID` returns (NUL padded).
    pub fn id(&self) -> &[u8] {
        &self.id
    }

    /// fdatasync of a writable image (end of run); read-only images are left alone.
    pub fn sync(&self) -> std::io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    /// Request counters.
    pub fn stats(&self) -> BlockStats {
        self.stats
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        // seg_max at offset 12: room for the header and status descriptors.
        c[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        c
    }

    /// Moves stream bytes `start..start + len` of `segs` to or from the file at `pos`.
    /// Returns how many bytes reached their destination (guest memory for
    /// [`Dir::ToGuest`], the file for [`Dir::FromGuest`]), also when the transfer then
    /// failed, and whether it completed.
    fn transfer(
        &self,
        mem: &GuestMemoryMmap,
        segs: &Segments,
        start: u64,
        len: u64,
        pos: u64,
        dir: Dir,
    ) -> (u64, Result<(), ()>) {
        let mut buf = vec![0u8; usize::try_from(len).map_or(CHUNK, |l| l.min(CHUNK))];
        let mut off = pos;
        let mut moved = 0u64;
        let done = segs.for_each(start, start + len, |a, n| {
            let b = &mut buf[..n];
            match dir {
                Dir::ToGuest => {
                    self.file.read_exact_at(b, off).map_err(|_| ())?;
                    mem.write_slice(b, a).map_err(|_| ())?;
                    moved += n as u64;
                }
                Dir::FromGuest => {
                    mem.read_slice(b, a).map_err(|_| ())?;
                    write_all_at_counted(&self.file, b, off, &mut moved).map_err(|_| ())?;
                }
            }
            off += n as u64;
            Ok(())
        });
        (moved, done)
    }

    /// Byte offset of `sector` if `len` bytes from there lie within the disk.
    fn checked_range(&self, sector: u64, len: u64) -> Option<u64> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return None;
        }
        let end_sector = sector.checked_add(len / SECTOR_SIZE)?;
        if end_sector > self.capacity {
            return None;
        }
        sector.checked_mul(SECTOR_SIZE)
    }

    /// Executes one request. Returns the used length (bytes written to the driver's
    /// buffers, status included), or `None` when no status could be written.
    fn execute(&mut self, descs: &[Descriptor], mem: &GuestMemoryMmap) -> Option<u32> {
        let mut readable = Segments::default();
        let mut writable = Segments::default();
        for d in descs {
            if d.is_write_only() {
                writable.push(d.addr(), d.len());
            } else if writable.len > 0 {
                // Readable after writable: the spec forbids it; where would the status go?
                return None;
            } else {
                readable.push(d.addr(), d.len());
            }
        }
        if writable.len == 0 {
            return None;
        }
        let data_in_len = writable.len - 1;
        let result = self.request(mem, &readable, &writable, data_in_len);
        let (status, used) = match result {
            Ok(used) => (VIRTIO_BLK_S_OK, used),
            Err((status, _)) => (status, 0),
        };
        let status_byte = u8::try_from(status).expect("VIRTIO_BLK_S_* are 0..=2");
        writable.write(mem, data_in_len, &[status_byte]).ok()?;
        if let Err((status, why)) = result {
            self.stats.errors += 1;
            if let Some(more) = crate::warn_suffix(self.stats.errors) {
                let name = if status == VIRTIO_BLK_S_UNSUPP {
                    "UNSUPP"
                } else {
                    "IOERR"
                };
                log::warn!(
                    "virtio-blk {}: request failed ({name}): {why}{more}",
                    self.name
                );
            }
        }
        // used + 1 <= writable.len <= 2^32: the chain iterator stops at 4 GiB.
        u32::try_from(used + 1).ok().or(Some(u32::MAX))
    }

    /// Returns the data bytes written to the guest, or the failure status
    /// (`VIRTIO_BLK_S_IOERR` or `_UNSUPP`) and why.
    fn request(
        &mut self,
        mem: &GuestMemoryMmap,
        readable: &Segments,
        writable: &Segments,
        data_in_len: u64,
    ) -> Result<u64, (u32, &'static str)> {
        const IOERR: u32 = VIRTIO_BLK_S_IOERR;
        let mut hdr = HEADER;
        if readable.len < HEADER_LEN || readable.read(mem, 0, &mut hdr).is_err() {
            return Err((IOERR, "no 16-byte request header in guest memory"));
        }
        let mut t = [0u8; 4];
        t.copy_from_slice(&hdr[0..4]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&hdr[8..16]);
        let (req_type, sector) = (u32::from_le_bytes(t), u64::from_le_bytes(s));
        let data_out_len = readable.len - HEADER_LEN;
        match req_type {
            VIRTIO_BLK_T_IN => {
                let Some(pos) = self.checked_range(sector, data_in_len) else {
                    return Err((IOERR, "read of partial sectors or past the end of the disk"));
                };
                let (moved, r) = self.transfer(mem, writable, 0, data_in_len, pos, Dir::ToGuest);
                self.stats.bytes_read += moved;
                match r {
                    Ok(()) => {
                        self.stats.reads += 1;
                        Ok(data_in_len)
                    }
                    Err(()) => Err((
                        IOERR,
                        "read failed (host I/O error, or a buffer outside guest memory)",
                    )),
                }
            }
            VIRTIO_BLK_T_OUT => {
                if self.read_only {
                    return Err((IOERR, "write to a read-only disk"));
                }
                let Some(pos) = self.checked_range(sector, data_out_len) else {
                    return Err((
                        IOERR,
                        "write of partial sectors or past the end of the disk",
                    ));
                };
                let (moved, r) =
                    self.transfer(mem, readable, HEADER_LEN, data_out_len, pos, Dir::FromGuest);
                // Partial writes of a failed request reached the disk too: count them.
                self.stats.bytes_written += moved;
                match r {
                    Ok(()) => {
                        self.stats.writes += 1;
                        Ok(0)
                    }
                    Err(()) => Err((
                        IOERR,
                        "write failed (host I/O error, or a buffer outside guest memory)",
                    )),
                }
            }
            VIRTIO_BLK_T_FLUSH => {
                if self.read_only {
                    self.stats.flushes += 1;
                    return Ok(0);
                }
                match self.file.sync_data() {
                    Ok(()) => {
                        self.stats.flushes += 1;
                        Ok(0)
                    }
                    Err(_) => Err((IOERR, "flush failed (fdatasync of the image)")),
                }
            }
            VIRTIO_BLK_T_GET_ID => {
                let n = self
                    .id
                    .len()
                    .min(usize::try_from(data_in_len).unwrap_or(usize::MAX));
                if n == 0 {
                    return Err((IOERR, "GET_ID without room for the id"));
                }
                let id = self.id;
                match writable.write(mem, 0, &id[..n]) {
                    Ok(()) => Ok(n as u64),
                    Err(()) => Err((IOERR, "GET_ID buffer outside guest memory")),
                }
            }
            _ => Err((VIRTIO_BLK_S_UNSUPP, "unsupported request type")),
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_BLK_F_FLUSH) | (1u64 << VIRTIO_BLK_F_SEG_MAX);
        if self.read_only {
            f |= 1u64 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| c.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Nothing is writable without VIRTIO_BLK_F_CONFIG_WCE.
    }

    fn process_queue(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Processed {
        let mut used_any = false;
        let mut needs_reset = false;
        'outer: loop {
            if queue.disable_notification(mem).is_err() {
                break;
            }
            let mut popped = 0usize;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                popped += 1;
                let head = chain.head_index();
                // Bounded (queue size, 4 GiB in total); stops at a descriptor it cannot
                // read; refuses indirect tables (not offered).
                let Ok(descs) = chain_descriptors(queue, mem, head) else {
                    needs_reset = true;
                    break 'outer;
                };
                let used = match self.execute(&descs, mem) {
                    Some(n) => n,
                    None => {
                        self.stats.dropped += 1;
                        if let Some(more) = crate::warn_suffix(self.stats.dropped) {
                            log::warn!(
                                "virtio-blk {}: request returned without a status (no writable \
                                 status byte in guest memory, or a readable descriptor after a \
                                 writable one){more}",
                                self.name
                            );
                        }
                        0
                    }
                };
                if queue.add_used(mem, head, used).is_ok() {
                    used_any = true;
                }
            }
            // A bogus avail index makes the queue yield nothing while reporting more:
            // stop rather than spin.
            match queue.enable_notification(mem) {
                Ok(true) if popped > 0 => continue,
                _ => break,
            }
        }
        Processed {
            interrupt: used_any && queue.needs_notification(mem).unwrap_or(true),
            needs_reset,
        }
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // fixtures build bytes and small values by truncation
mod tests {
    use super::*;
    use crate::mmio::MmioDevice;
    use crate::virtio::testutil::*;
    use crate::virtio::{MmioTransport, VIRTIO_F_VERSION_1};
    use proptest::prelude::*;
    use std::fs::OpenOptions;
    use std::sync::atomic::{AtomicU64, Ordering};
    use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_NEEDS_RESET};
    use virtio_bindings::virtio_mmio::{
        VIRTIO_MMIO_INTERRUPT_STATUS, VIRTIO_MMIO_QUEUE_NOTIFY, VIRTIO_MMIO_STATUS,
    };
    use vmm_sys_util::eventfd::EventFd;

    const SECTORS: u64 = 64;
    const HDR: u64 = DATA;
    const BUF: u64 = DATA + 0x1000;
    const STATUS: u64 = DATA + 0x800;

    /// An anonymous temporary file of `sectors` sectors filled with a pattern.
    fn disk_file(sectors: u64) -> File {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "vpmu-blk-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&p)
            .expect("temp file");
        std::fs::remove_file(&p).expect("unlink");
        let data: Vec<u8> = (0..sectors * SECTOR_SIZE)
            .map(|i| (i / 512) as u8)
            .collect();
        f.write_all_at(&data, 0).expect("fill");
        f
    }

    struct Rig {
        t: MmioTransport<Block>,
        d: Driver,
        irq: EventFd,
        file: File,
    }

    fn rig(read_only: bool) -> Rig {
        let file = disk_file(SECTORS);
        let blk = Block::from_file(
            file.try_clone().expect("clone"),
            Path::new("test.img"),
            read_only,
        )
        .expect("block");
        let d = Driver::new(16);
        let irq = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).expect("eventfd");
        let mut t = MmioTransport::new(blk, d.mem.clone(), irq.try_clone().expect("eventfd"));
        d.init(&mut t, u64::MAX);
        Rig { t, d, irq, file }
    }

    impl Rig {
        fn header(&self, t: u32, sector: u64) {
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&t.to_le_bytes());
            h[8..16].copy_from_slice(&sector.to_le_bytes());
            self.d.write(HDR, &h);
            self.d.write(STATUS, &[0xaa]);
        }

        /// Publishes a chain, notifies, returns (used len, status byte at STATUS).
        fn submit(&mut self, bufs: &[Buf]) -> (u32, u8) {
            let before = self.d.used_idx();
            let head = self.d.add_chain(bufs);
            self.d.publish(head);
            self.t
                .write(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), &0u32.to_le_bytes());
            assert_eq!(self.d.used_idx(), before.wrapping_add(1), "no used entry");
            let (id, len) = self.d.used_elem(before);
            assert_eq!(id, u32::from(head));
            (len, self.d.read_u8(STATUS))
        }

        fn file_bytes(&self, sector: u64, len: usize) -> Vec<u8> {
            let mut v = vec![0u8; len];
            self.file.read_exact_at(&mut v, sector * 512).expect("read");
            v
        }
    }

    const OK: u8 = VIRTIO_BLK_S_OK as u8;
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

    #[test]
    fn config_and_features() {
        let r = rig(false);
        let mut c = [0u8; 8];
        let mut t = r.t;
        t.read(0x100, &mut c);
        assert_eq!(u64::from_le_bytes(c), SECTORS);
        let mut b = [0u8; 1];
        t.read(0x101, &mut b);
        assert_eq!(b, [0]);
        t.read(0x100, &mut b);
        assert_eq!(b, [SECTORS as u8]);
        t.read(0x100 + 0x1000, &mut b);
        assert_eq!(b, [0]);
        t.read(u64::MAX, &mut c);
        assert_eq!(c, [0; 8]);
        let f = t.acked_features();
        assert_ne!(f & VIRTIO_F_VERSION_1, 0);
        assert_ne!(f & (1 << VIRTIO_BLK_F_FLUSH), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(t.device().capacity(), SECTORS);
        let ro = rig(true);
        assert_ne!(ro.t.acked_features() & (1 << VIRTIO_BLK_F_RO), 0);
    }

    #[test]
    fn write_then_read_round_trip_across_descriptors() {
        let mut r = rig(false);
        let pattern: Vec<u8> = (0..1536u32).map(|i| (i * 7 + 3) as u8).collect();
        r.d.write(BUF, &pattern);
        r.header(VIRTIO_BLK_T_OUT, 5);
        // Data split unevenly over three descriptors.
        let (len, st) = r.submit(&[
            (HDR, 16, false),
            (BUF, 100, false),
            (BUF + 100, 924, false),
            (BUF + 1024, 512, false),
            (STATUS, 1, true),
        ]);
        assert_eq!((len, st), (1, OK));
        assert_eq!(r.file_bytes(5, 1536), pattern);
        assert_eq!(r.file_bytes(4, 512), vec![4u8; 512]);
        assert_eq!(r.file_bytes(8, 512), vec![8u8; 512]);

        // Read back into a different buffer, again split.
        let out = BUF + 0x4000;
        r.header(VIRTIO_BLK_T_IN, 5);
        let (len, st) = r.submit(&[
            (HDR, 16, false),
            (out, 1000, true),
            (out + 1000, 536, true),
            (STATUS, 1, true),
        ]);
        assert_eq!((len, st), (1537, OK));
        assert_eq!(r.d.read(out, 1536), pattern);
        let s = r.t.device().stats();
        assert_eq!(
            (s.reads, s.writes, s.bytes_read, s.bytes_written),
            (1, 1, 1536, 1536)
        );
        // The interrupt fired and is pending in InterruptStatus.
        assert!(r.irq.read().expect("irq") >= 1);
        let mut b = [0u8; 4];
        r.t.read(u64::from(VIRTIO_MMIO_INTERRUPT_STATUS), &mut b);
        assert_eq!(u32::from_le_bytes(b), 1);
    }

    #[test]
    fn any_layout_header_status_and_data_in_one_descriptor_each_side() {
        let mut r = rig(false);
        // Header and data in one readable descriptor; status alone.
        let mut req = vec![0u8; 16 + 512];
        req[0..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
        req[8..16].copy_from_slice(&63u64.to_le_bytes());
        req[16..].fill(0x5a);
        r.d.write(BUF, &req);
        r.d.write(STATUS, &[0xaa]);
        assert_eq!(r.submit(&[(BUF, 528, false), (STATUS, 1, true)]), (1, OK));
        assert_eq!(r.file_bytes(63, 512), vec![0x5a; 512]);
        // Read with data and status in one writable descriptor.
        r.header(VIRTIO_BLK_T_IN, 63);
        let out = BUF + 0x2000;
        let (len, _) = r.submit(&[(HDR, 16, false), (out, 513, true)]);
        assert_eq!(len, 513);
        assert_eq!(r.d.read(out, 512), vec![0x5a; 512]);
        assert_eq!(r.d.read_u8(out + 512), OK);
    }

    #[test]
    fn flush_and_get_id() {
        let mut r = rig(false);
        r.header(VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(r.submit(&[(HDR, 16, false), (STATUS, 1, true)]), (1, OK));
        assert_eq!(r.t.device().stats().flushes, 1);
        r.header(VIRTIO_BLK_T_GET_ID, 0);
        let (len, st) = r.submit(&[(HDR, 16, false), (BUF, 20, true), (STATUS, 1, true)]);
        assert_eq!((len, st), (21, OK));
        let id = r.d.read(BUF, 20);
        assert_eq!(&id[..13], b"vpmu-test.img");
        assert!(id[13..].iter().all(|&b| b == 0));
        // A short id buffer gets a truncated id.
        r.header(VIRTIO_BLK_T_GET_ID, 0);
        r.d.write(BUF + 0x100, &[0xee; 8]);
        let (len, st) = r.submit(&[(HDR, 16, false), (BUF + 0x100, 4, true), (STATUS, 1, true)]);
        assert_eq!((len, st), (5, OK));
        assert_eq!(r.d.read(BUF + 0x100, 5), b"vpmu\xee");
        // No room for the id at all.
        r.header(VIRTIO_BLK_T_GET_ID, 0);
        assert_eq!(r.submit(&[(HDR, 16, false), (STATUS, 1, true)]).1, IOERR);
    }

    #[test]
    fn unsupported_request_types() {
        let mut r = rig(false);
        for t in [2u32, 11, 13, 0x8000_0000, u32::MAX] {
            r.header(t, 0);
            let (_, st) = r.submit(&[(HDR, 16, false), (STATUS, 1, true)]);
            assert_eq!(st, VIRTIO_BLK_S_UNSUPP as u8, "type {t:#x}");
        }
    }

    #[test]
    fn out_of_range_and_overflowing_sectors_are_rejected() {
        let mut r = rig(false);
        let cases: [(u32, u64, u32); 7] = [
            (VIRTIO_BLK_T_IN, SECTORS, 512),
            (VIRTIO_BLK_T_IN, SECTORS - 1, 1024),
            (VIRTIO_BLK_T_OUT, SECTORS, 512),
            (VIRTIO_BLK_T_OUT, u64::MAX, 512),
            (VIRTIO_BLK_T_IN, u64::MAX, 512),
            (VIRTIO_BLK_T_IN, u64::MAX / 512 + 1, 512),
            (VIRTIO_BLK_T_OUT, 1 << 60, 512),
        ];
        for (t, sector, len) in cases {
            r.header(t, sector);
            let w = t == VIRTIO_BLK_T_IN;
            let (_, st) = r.submit(&[(HDR, 16, false), (BUF, len, w), (STATUS, 1, true)]);
            assert_eq!(st, IOERR, "type {t} sector {sector:#x}");
        }
        // Not a whole number of sectors.
        r.header(VIRTIO_BLK_T_IN, 0);
        assert_eq!(
            r.submit(&[(HDR, 16, false), (BUF, 100, true), (STATUS, 1, true)])
                .1,
            IOERR
        );
        r.header(VIRTIO_BLK_T_OUT, 0);
        assert_eq!(
            r.submit(&[(HDR, 16, false), (BUF, 513, false), (STATUS, 1, true)])
                .1,
            IOERR
        );
        // The last sector is fine.
        r.header(VIRTIO_BLK_T_IN, SECTORS - 1);
        assert_eq!(
            r.submit(&[(HDR, 16, false), (BUF, 512, true), (STATUS, 1, true)])
                .1,
            OK
        );
        assert_eq!(r.t.device().stats().errors, 9);
        // Nothing was written.
        assert_eq!(r.t.device().stats().writes, 0);
        assert_eq!(
            r.file_bytes(SECTORS - 1, 512),
            vec![(SECTORS - 1) as u8; 512]
        );
    }

    #[test]
    fn read_only_disk_refuses_writes() {
        let mut r = rig(true);
        r.d.write(BUF, &[0x77; 512]);
        r.header(VIRTIO_BLK_T_OUT, 3);
        let (_, st) = r.submit(&[(HDR, 16, false), (BUF, 512, false), (STATUS, 1, true)]);
        assert_eq!(st, IOERR);
        assert_eq!(r.file_bytes(3, 512), vec![3u8; 512]);
        // Reads and flushes work.
        r.header(VIRTIO_BLK_T_IN, 3);
        assert_eq!(
            r.submit(&[(HDR, 16, false), (BUF, 512, true), (STATUS, 1, true)])
                .1,
            OK
        );
        assert_eq!(r.d.read(BUF, 512), vec![3u8; 512]);
        r.header(VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(r.submit(&[(HDR, 16, false), (STATUS, 1, true)]).1, OK);
    }

    #[test]
    fn hostile_chains_get_an_error_or_are_dropped_never_a_panic() {
        let mut r = rig(false);
        // Short header.
        r.header(VIRTIO_BLK_T_IN, 0);
        assert_eq!(r.submit(&[(HDR, 8, false), (STATUS, 1, true)]).1, IOERR);
        // Header split 8 + 8 is fine (any layout).
        r.header(VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(
            r.submit(&[(HDR, 8, false), (HDR + 8, 8, false), (STATUS, 1, true)])
                .1,
            OK
        );
        // Zero-length descriptors everywhere are skipped.
        r.header(VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(
            r.submit(&[
                (HDR, 0, false),
                (HDR, 16, false),
                (BUF, 0, false),
                (BUF, 0, true),
                (STATUS, 1, true),
                (BUF, 0, true)
            ])
            .1,
            OK
        );
        // No writable byte: nowhere to put a status; returned with used length 0.
        r.header(VIRTIO_BLK_T_IN, 0);
        assert_eq!(r.submit(&[(HDR, 16, false)]).0, 0);
        assert_eq!(r.submit(&[(HDR, 16, false), (STATUS, 0, true)]).0, 0);
        // Readable after writable.
        assert_eq!(
            r.submit(&[(HDR, 16, false), (STATUS, 1, true), (BUF, 16, false)])
                .0,
            0
        );
        // Header outside guest memory.
        assert_eq!(
            r.submit(&[(MEM_SIZE - 8, 16, false), (STATUS, 1, true)]).1,
            IOERR
        );
        assert_eq!(
            r.submit(&[(u64::MAX - 4, 16, false), (STATUS, 1, true)]).1,
            IOERR
        );
        // Data outside guest memory, both directions; and a 4 GiB descriptor.
        r.header(VIRTIO_BLK_T_IN, 0);
        assert_eq!(
            r.submit(&[
                (HDR, 16, false),
                (MEM_SIZE - 512, 1024, true),
                (STATUS, 1, true)
            ])
            .1,
            IOERR
        );
        r.header(VIRTIO_BLK_T_OUT, 0);
        assert_eq!(
            r.submit(&[(HDR, 16, false), (1 << 40, 512, false), (STATUS, 1, true)])
                .1,
            IOERR
        );
        r.header(VIRTIO_BLK_T_OUT, 0);
        assert_eq!(
            r.submit(&[
                (HDR, 16, false),
                (BUF, 0xffff_fe00, false),
                (STATUS, 1, true)
            ])
            .1,
            IOERR
        );
        // Status descriptor outside guest memory: nothing to report, still used.
        r.header(VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(r.submit(&[(HDR, 16, false), (1 << 40, 1, true)]).0, 0);
        assert_eq!(r.file_bytes(0, 512), vec![0u8; 512]);
        assert!(r.t.device().stats().dropped >= 4);
    }

    #[test]
    fn descriptor_loops_and_bad_indices_terminate() {
        let mut r = rig(false);
        r.header(VIRTIO_BLK_T_IN, 0);
        // A chain that loops on itself: bounded by the queue size, no writable byte.
        r.d.write_desc(0, HDR, 16, F_NEXT, 0);
        r.d.publish(0);
        r.t.write(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), &0u32.to_le_bytes());
        assert_eq!(r.d.used_idx(), 1);
        assert_eq!(r.d.used_elem(0), (0, 0));
        // `next` out of range: the chain ends there.
        r.d.write_desc(1, HDR, 16, F_NEXT, 999);
        r.d.publish(1);
        r.t.write(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), &0u32.to_le_bytes());
        assert_eq!(r.d.used_idx(), 2);
        // A head index past the queue: skipped without a used entry.
        r.d.publish(200);
        r.t.write(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), &0u32.to_le_bytes());
        assert_eq!(r.d.used_idx(), 2);
        // An avail index far ahead (more than the queue size): ignored, no spin.
        r.d.set_avail_idx(1000);
        r.t.write(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), &0u32.to_le_bytes());
        assert_eq!(r.d.used_idx(), 2);
    }

    fn needs_reset(t: &mut MmioTransport<Block>) -> bool {
        let mut b = [0u8; 4];
        t.read(u64::from(VIRTIO_MMIO_STATUS), &mut b);
        u32::from_le_bytes(b) & VIRTIO_CONFIG_S_NEEDS_RESET != 0
    }

    #[test]
    fn indirect_descriptors_are_refused_without_the_feature() {
        // VIRTIO_F_INDIRECT_DESC is not offered, so the driver must not use
        // VIRTQ_DESC_F_INDIRECT (VIRTIO 1.2, 2.7.5.3.1). The device does not follow the
        // table: it needs a reset, and the request is not executed.
        const TABLE: u64 = DATA + 0x3000;
        for head_is_indirect in [true, false] {
            let mut r = rig(false);
            r.d.write(BUF, &[0x66; 512]);
            r.header(VIRTIO_BLK_T_OUT, 2);
            r.d.write_desc_at(TABLE, 0, HDR, 16, F_NEXT, 1);
            r.d.write_desc_at(TABLE, 1, BUF, 512, F_NEXT, 2);
            r.d.write_desc_at(TABLE, 2, STATUS, 1, F_WRITE, 0);
            if head_is_indirect {
                r.d.write_desc(0, TABLE, 48, F_INDIRECT, 0);
            } else {
                // A direct header, then an indirect table (also forbidden with the
                // feature: INDIRECT and NEXT together).
                r.d.write_desc(0, HDR, 16, F_NEXT, 1);
                r.d.write_desc(1, TABLE + 16, 32, F_INDIRECT, 0);
            }
            r.d.publish(0);
            r.t.write(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), &0u32.to_le_bytes());
            assert_eq!(r.file_bytes(2, 512), vec![2u8; 512], "disk written");
            assert_eq!(r.d.read_u8(STATUS), 0xaa, "status written");
            assert_eq!(r.d.used_idx(), 0, "chain completed");
            assert!(needs_reset(&mut r.t));
            assert_eq!(r.t.device().stats().writes, 0);
            // Dead until reset; after a reset the same request, direct, works.
            r.d.init(&mut r.t, u64::MAX);
            let mut d = Driver::new(16);
            d.mem = r.d.mem.clone();
            r.d = d;
            assert_eq!(
                r.submit(&[(HDR, 16, false), (BUF, 512, false), (STATUS, 1, true)]),
                (1, OK)
            );
            assert_eq!(r.file_bytes(2, 512), vec![0x66; 512]);
        }
    }

    #[test]
    fn misaligned_used_ring_is_refused_and_nothing_lands_at_address_zero() {
        let file = disk_file(SECTORS);
        let blk = Block::from_file(file.try_clone().expect("clone"), Path::new("t"), false)
            .expect("block");
        let mut d = Driver::new(16);
        let irq = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).expect("eventfd");
        let mut t = MmioTransport::new(blk, d.mem.clone(), irq.try_clone().expect("eventfd"));
        let s = d.negotiate(&mut t, u64::MAX);
        d.setup_queue(&mut t, 16, DESC, AVAIL, USED + 2);
        reg_write(&mut t, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
        assert!(needs_reset(&mut t));
        // A request published anyway is not served, and guest address 0 (where the
        // rejected address used to leave the used ring) is untouched.
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
        d.write(HDR, &h);
        d.write(BUF, &[0x55; 512]);
        let head = d.add_chain(&[(HDR, 16, false), (BUF, 512, false), (STATUS, 1, true)]);
        d.publish(head);
        t.write(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), &0u32.to_le_bytes());
        assert_eq!(d.read(0, 64), vec![0u8; 64]);
        assert_eq!(d.read(USED, 64), vec![0u8; 64]);
        let mut b = [0u8; 512];
        file.read_exact_at(&mut b, 0).expect("read");
        assert_eq!(b, [0u8; 512]);
        assert_eq!(t.device().stats(), BlockStats::default());
    }

    #[test]
    fn partial_writes_count_the_bytes_that_reached_the_disk() {
        let mut r = rig(false);
        r.d.write(BUF, &[0x3c; 512]);
        r.header(VIRTIO_BLK_T_OUT, 7);
        // The second data buffer lies outside guest memory: the first sector is written,
        // then the request fails.
        let (_, st) = r.submit(&[
            (HDR, 16, false),
            (BUF, 512, false),
            (MEM_SIZE - 256, 512, false),
            (STATUS, 1, true),
        ]);
        assert_eq!(st, IOERR);
        assert_eq!(r.file_bytes(7, 512), vec![0x3c; 512]);
        assert_eq!(r.file_bytes(8, 512), vec![8u8; 512]);
        let s = r.t.device().stats();
        assert_eq!((s.writes, s.errors, s.bytes_written), (0, 1, 512));
        // The same for reads: what reached guest memory is counted.
        r.header(VIRTIO_BLK_T_IN, 9);
        let (_, st) = r.submit(&[
            (HDR, 16, false),
            (BUF, 512, true),
            (MEM_SIZE - 256, 512, true),
            (STATUS, 1, true),
        ]);
        assert_eq!(st, IOERR);
        assert_eq!(r.d.read(BUF, 512), vec![9u8; 512]);
        let s = r.t.device().stats();
        assert_eq!((s.reads, s.errors, s.bytes_read), (0, 2, 512));
    }

    #[test]
    fn too_small_and_missing_files() {
        assert!(matches!(
            Block::from_file(disk_file(0), Path::new("x"), false),
            Err(BlockError::TooSmall { len: 0, .. })
        ));
        let e = Block::open(Path::new("/nonexistent/vpmu/disk.img"), false)
            .err()
            .expect("error");
        assert!(e.to_string().contains("/nonexistent/vpmu/disk.img"), "{e}");
    }

    #[test]
    fn open_refuses_non_disks_and_locked_images() {
        let e = Block::open(Path::new("/dev/zero"), true)
            .err()
            .expect("error");
        assert!(matches!(
            e,
            BlockError::NotADisk {
                kind: "a character device",
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "disk image /dev/zero is a character device, not a regular file or block device"
        );
        let p = std::env::temp_dir().join(format!("vpmu-blk-lock-{}", std::process::id()));
        std::fs::write(&p, [0u8; 1024]).expect("write");
        let rw = Block::open(&p, false).expect("first open");
        let e = Block::open(&p, true).err().expect("locked");
        assert!(
            e.to_string()
                .ends_with("is locked: another process (or another --disk of this VM) has it open"),
            "{e}"
        );
        drop(rw);
        let ro = Block::open(&p, true).expect("read-only");
        let ro2 = Block::open(&p, true).expect("second read-only");
        assert!(Block::open(&p, false).is_err());
        drop((ro, ro2));
        std::fs::remove_file(&p).expect("unlink");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Random descriptor tables and requests: never a panic, and the disk is only
        /// written within its bounds.
        #[test]
        fn random_descriptor_tables_never_panic(
            descs in proptest::collection::vec(
                (prop_oneof![Just(HDR), Just(BUF), Just(STATUS), Just(MEM_SIZE - 4), any::<u64>()],
                 prop_oneof![Just(0u32), Just(1), Just(16), Just(512), Just(1024), any::<u32>()],
                 0u16..8, 0u16..40),
                1..16),
            req_type in prop_oneof![Just(0u32), Just(1), Just(4), Just(8), any::<u32>()],
            sector in prop_oneof![0u64..80, any::<u64>()],
            heads in proptest::collection::vec(0u16..20, 1..4),
        ) {
            let mut r = rig(false);
            r.header(req_type, sector);
            for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
                r.d.write_desc(i as u16, addr, len, flags, next);
            }
            for h in heads {
                r.d.publish(h);
            }
            r.t.write(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), &0u32.to_le_bytes());
            prop_assert!(r.d.used_idx() <= 3);
            let mut end = [0u8; 1];
            prop_assert!(r.file.read_at(&mut end, SECTORS * 512).map(|n| n == 0).unwrap_or(false));
        }
    }
}
