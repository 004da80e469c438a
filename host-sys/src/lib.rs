//! Safe wrappers for the libc calls on host files that `devices` makes: clearing
//! `O_NONBLOCK`, reading a file's flags, the filesystem type (`fstatfs`), open-file-
//! description locks (`F_OFD_SETLK`) and `mkfifo`. `devices` has
//! `#![forbid(unsafe_code)]`; all its `unsafe` lives here, each block with the reason
//! it is sound.
//!
//! Why not a wrapper crate: rustix's `fcntl_lock` takes process-associated locks
//! (`F_SETLK`), not OFD locks, which would neither conflict between two opens of one
//! image in this process nor match QEMU's locks (docs/DISKS.md); nix would be a large
//! new dependency for one call.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The file status flags of `fd` (`fcntl(F_GETFL)`).
pub fn status_flags(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    // SAFETY: F_GETFL takes no argument and only reads the state of `fd`, which the
    // borrow keeps open for the call; errors come back as -1 and errno.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })
}

/// The descriptor flags of `fd` (`fcntl(F_GETFD)`: `FD_CLOEXEC`). Takes any
/// [`AsRawFd`] (e.g. vmm-sys-util's `EventFd`, which has no `AsFd`).
pub fn fd_flags(fd: &impl AsRawFd) -> io::Result<libc::c_int> {
    // SAFETY: F_GETFD takes no argument and touches no memory: it only reads the
    // descriptor's flags, or fails with EBADF (-1 and errno) if the number names no
    // open descriptor.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) })
}

/// Puts `fd` in blocking mode (clears `O_NONBLOCK`, keeps the other status flags).
pub fn clear_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = status_flags(fd)?;
    // SAFETY: F_SETFL takes an integer (no pointer) and changes only the status flags
    // of `fd`, which the borrow keeps open for the call; errors come back as -1/errno.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) })?;
    Ok(())
}

/// The type of the filesystem holding `fd` (`statfs.f_type`: a magic number of
/// include/uapi/linux/magic.h, all of which are 32-bit).
pub fn filesystem_type(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs writes one `struct statfs` through the pointer, and `st` is
    // exactly that type (MaybeUninit keeps its size and alignment) and lives past the
    // call; `fd` is open for the call (borrowed).
    check(unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatfs returned 0, so the kernel filled in the whole struct.
    let st = unsafe { st.assume_init() };
    // f_type is a C long (or int) holding an unsigned 32-bit magic: its low 32 bits
    // are the magic.
    #[allow(clippy::cast_possible_truncation)]
    Ok(st.f_type as u32)
}

/// Takes an open-file-description lock (`fcntl(F_OFD_SETLK)`) on all of `fd`'s file,
/// to its end however large it grows: a write lock if `exclusive` (`fd` must be open
/// for writing), else a read lock. Never waits: a conflicting lock is an `EAGAIN` or
/// `EACCES` error. The lock belongs to the open file description: it goes when its
/// last descriptor is closed, and conflicts with locks taken through any other open
/// of the file, in this process or another (as QEMU's locks do).
pub fn ofd_lock(fd: BorrowedFd<'_>, exclusive: bool) -> io::Result<()> {
    let l_type = if exclusive {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    };
    // F_RDLCK, F_WRLCK and SEEK_SET are 0, 1 and 0: they fit a short.
    #[allow(clippy::cast_possible_truncation)]
    let fl = libc::flock {
        l_type: l_type as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        // 0: to the end of the file, however large it grows.
        l_len: 0,
        // Must be 0 for OFD locks.
        l_pid: 0,
    };
    // SAFETY: F_OFD_SETLK only reads the `struct flock` it is pointed to, which is
    // fully initialised and lives for the whole call; `fd` is open for the call
    // (borrowed); errors come back as -1 and errno.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &fl) })?;
    Ok(())
}

/// Creates a FIFO at `path` with permission bits `mode` (`mkfifo(3)`).
pub fn mkfifo(path: &Path, mode: libc::mode_t) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: mkfifo only reads the NUL-terminated path, which `c` owns and keeps
    // alive for the call; errors come back as -1 and errno.
    check(unsafe { libc::mkfifo(c.as_ptr(), mode) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn flags_and_locks() {
        let dir = std::env::temp_dir().join(format!("host-sys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let a = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        assert_ne!(fd_flags(&a).unwrap() & libc::FD_CLOEXEC, 0);
        clear_nonblocking(a.as_fd()).unwrap();
        assert_eq!(status_flags(a.as_fd()).unwrap() & libc::O_NONBLOCK, 0);
        assert_ne!(filesystem_type(a.as_fd()).unwrap(), 0);
        ofd_lock(a.as_fd(), true).unwrap();
        // A second open file description of the same file, in this process, conflicts.
        let b = std::fs::File::open(&path).unwrap();
        let e = ofd_lock(b.as_fd(), false).unwrap_err();
        assert!(
            matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)),
            "{e}"
        );
        drop(a);
        ofd_lock(b.as_fd(), false).unwrap();
        let fifo = dir.join("p");
        mkfifo(&fifo, 0o600).unwrap();
        assert!(mkfifo(&fifo, 0o600).is_err(), "exists");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
