//! Host files the operator names (kernel, initrd, policy, disk images), opened without
//! trusting what they are.
//!
//! A path may name a character device (`/dev/zero` reads forever), a FIFO (opening it
//! for reading blocks until a writer appears), a directory, or a file on a pseudo
//! filesystem (procfs, sysfs, ...: "regular" files whose size means nothing and whose
//! writes have side effects). So:
//!
//! - [`open`] never blocks: `O_NONBLOCK` (cleared again once open) and `O_NOCTTY`;
//! - [`kind`] says what an open file is, from `fstat` and, for regular files, `fstatfs`;
//! - [`read_regular`] reads a whole input file only if it is a regular file on a real
//!   filesystem whose size is within a limit, checked **before** reading, and never reads
//!   more than the limit even if the file grows meanwhile;
//! - [`lock`] takes an open-file-description lock (`F_OFD_SETLK`) on a disk image, as
//!   QEMU does: shared for read-only use, exclusive for read-write use.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// What an open host file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file on a filesystem that stores data.
    Regular,
    /// A block device.
    BlockDevice,
    /// Anything else, described for an error message ("a character device", "a FIFO",
    /// "a file on procfs", ...).
    Other(&'static str),
}

/// Pseudo filesystems whose "regular" files are kernel interfaces, not data
/// (`statfs.f_type`, include/uapi/linux/magic.h).
const PSEUDO_FILESYSTEMS: [(u32, &str); 18] = [
    (0x0000_9fa0, "a file on procfs"),
    (0x6265_6572, "a file on sysfs"),
    (0x6462_6720, "a file on debugfs"),
    (0x7472_6163, "a file on tracefs"),
    (0x7363_6673, "a file on securityfs"),
    (0x0027_e0eb, "a file on cgroupfs"),
    (0x6367_7270, "a file on cgroup2fs"),
    (0xcafe_4a11, "a file on bpffs"),
    (0xf97c_ff8c, "a file on selinuxfs"),
    (0x4341_5d53, "a file on smackfs"),
    (0x0765_5821, "a file on resctrl"),
    (0x6e73_6673, "a file on nsfs"),
    (0x6265_6570, "a file on configfs"),
    (0xde5e_81e4, "a file on efivarfs"),
    (0x6165_676c, "a file on pstore"),
    (0x0000_9fa1, "a file on openpromfs"),
    (0x0000_9fa2, "a file on usbdevfs"),
    (0xabba_1974, "a file on xenfs"),
];

/// Opens `path` for reading (and writing if `write`) without blocking on a FIFO and
/// without acquiring a controlling terminal. The returned file is in blocking mode.
pub fn open(path: &Path, write: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    host_sys::clear_nonblocking(file.as_fd())?;
    Ok(file)
}

/// What `file` is.
pub fn kind(file: &File) -> io::Result<FileKind> {
    let t = file.metadata()?.file_type();
    if t.is_block_device() {
        return Ok(FileKind::BlockDevice);
    }
    if !t.is_file() {
        return Ok(FileKind::Other(if t.is_dir() {
            "a directory"
        } else if t.is_char_device() {
            "a character device"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        }));
    }
    let f_type = host_sys::filesystem_type(file.as_fd())?;
    Ok(PSEUDO_FILESYSTEMS
        .iter()
        .find(|&&(magic, _)| magic == f_type)
        .map_or(FileKind::Regular, |&(_, what)| FileKind::Other(what)))
}

/// Why [`read_regular`] refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Opening, inspecting or reading failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Not a regular file on a real filesystem.
    #[error("is {0}, not a regular file")]
    NotRegular(&'static str),
    /// Larger than the limit (checked before reading).
    #[error("is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        /// The file's size (or at least this many bytes, if it grew while being read).
        size: u64,
        /// The limit.
        limit: u64,
    },
}

/// Reads all of `path`, which must be a regular file on a real filesystem (see [`kind`])
/// of at most `limit` bytes. The size is checked before reading, and at most `limit`
/// bytes are ever read, so `/dev/zero`, a FIFO or a file that grows cannot exhaust memory
/// or block.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let file = open(path, false)?;
    match kind(&file)? {
        FileKind::Regular => {}
        FileKind::BlockDevice => return Err(ReadError::NotRegular("a block device")),
        FileKind::Other(what) => return Err(ReadError::NotRegular(what)),
    }
    let size = file.metadata()?.len();
    if size > limit {
        return Err(ReadError::TooLarge { size, limit });
    }
    // size <= limit; a capacity the host cannot hold fails the read below instead.
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(limit.saturating_add(1)).read_to_end(&mut data)?;
    if data.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            size: data.len() as u64,
            limit,
        });
    }
    Ok(data)
}

/// Why [`lock`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another open file description holds a conflicting lock.
    #[error("is locked: another process (or another --disk of this VM) has it open")]
    Held,
    /// The lock could not be taken for another reason (e.g. a filesystem without locks).
    #[error("cannot be locked: {0}")]
    Io(io::Error),
}

/// Locks all of `file` with an open-file-description lock (`F_OFD_SETLK`, as QEMU
/// does): `exclusive` (a write lock, for read-write use; the file must be open for
/// writing) or shared (a read lock). Never waits. The lock belongs to this open file
/// description: it is released when the last descriptor of it is closed, and conflicts
/// with locks through any other open of the same file, in this process or another.
pub fn lock(file: &File, exclusive: bool) -> Result<(), LockError> {
    let Err(e) = host_sys::ofd_lock(file.as_fd(), exclusive) else {
        return Ok(());
    };
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Err(LockError::Held),
        _ => Err(LockError::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn temp_path(name: &str) -> std::path::PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        std::env::temp_dir().join(format!(
            "vpmu-host-file-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
    }

    #[test]
    fn kinds() {
        let p = temp_path("regular");
        std::fs::write(&p, b"x").expect("write");
        assert_eq!(
            kind(&open(&p, false).expect("open")).expect("kind"),
            FileKind::Regular
        );
        std::fs::remove_file(&p).expect("unlink");
        for (path, want) in [
            ("/dev/null", "a character device"),
            ("/", "a directory"),
            ("/proc/self/status", "a file on procfs"),
        ] {
            let f = open(Path::new(path), false).expect(path);
            assert_eq!(kind(&f).expect("kind"), FileKind::Other(want), "{path}");
        }
        if let Ok(f) = open(Path::new("/sys/kernel/address_bits"), false) {
            assert_eq!(kind(&f).expect("kind"), FileKind::Other("a file on sysfs"));
        }
    }

    #[test]
    fn read_regular_refuses_devices_fifos_and_large_files() {
        assert!(matches!(
            read_regular(Path::new("/dev/zero"), 1 << 20),
            Err(ReadError::NotRegular("a character device"))
        ));
        assert!(matches!(
            read_regular(Path::new("/proc/self/environ"), 1 << 20),
            Err(ReadError::NotRegular("a file on procfs"))
        ));
        // A FIFO without a writer: refused at once, not waited on.
        let fifo = temp_path("fifo");
        host_sys::mkfifo(&fifo, 0o600).unwrap();
        assert!(matches!(
            read_regular(&fifo, 1 << 20),
            Err(ReadError::NotRegular("a FIFO"))
        ));
        std::fs::remove_file(&fifo).expect("unlink");
        let p = temp_path("big");
        std::fs::write(&p, vec![7u8; 4097]).expect("write");
        assert!(matches!(
            read_regular(&p, 4096),
            Err(ReadError::TooLarge {
                size: 4097,
                limit: 4096
            })
        ));
        assert_eq!(read_regular(&p, 4097).expect("read"), vec![7u8; 4097]);
        std::fs::remove_file(&p).expect("unlink");
        assert!(matches!(
            read_regular(Path::new("/nonexistent/vpmu"), 1),
            Err(ReadError::Io(_))
        ));
    }

    #[test]
    fn ofd_locks_conflict_between_opens_of_one_file() {
        let p = temp_path("lock");
        std::fs::write(&p, [0u8; 512]).expect("write");
        let a = open(&p, true).expect("open");
        lock(&a, true).expect("first exclusive lock");
        // The same open file description may lock again; another open may not.
        lock(&a.try_clone().expect("dup"), true).expect("same description");
        let b = open(&p, true).expect("open");
        assert!(matches!(lock(&b, true), Err(LockError::Held)));
        let r = open(&p, false).expect("open");
        assert!(matches!(lock(&r, false), Err(LockError::Held)));
        drop(a);
        // Shared locks coexist, and keep writers out.
        lock(&r, false).expect("shared");
        let r2 = open(&p, false).expect("open");
        lock(&r2, false).expect("second shared");
        assert!(matches!(lock(&b, true), Err(LockError::Held)));
        std::fs::remove_file(&p).expect("unlink");
    }
}
