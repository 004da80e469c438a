//! The main thread's event loop (event-manager): waits for the VM to stop, ends it on a
//! stop signal (`crate::signals`) and, when the console is a terminal, forwards stdin to
//! the guest's serial port (in raw mode, `crate::terminal`; Ctrl-A x quits).
//!
//! Also the console's output path ([`ConsoleOut`]): the serial port writes into a bounded
//! buffer that a writer thread drains to stdout, so a vCPU never blocks on a stdout pipe
//! nobody reads, and the end of a run never waits for a reader for more than a bounded
//! time.

use std::io::Read;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;

use crate::vcpu::Shared;

struct StopWatcher {
    shared: Arc<Shared>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

impl MutEventSubscriber for StopWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.shared.stop_evt.read();
        self.stopped.store(true, Ordering::SeqCst);
    }
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.shared.stop_evt, EventSet::IN));
    }
}

/// Ends the VM on SIGINT/SIGTERM/SIGHUP read from the signalfd.
struct SignalWatcher {
    shared: Arc<Shared>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

impl MutEventSubscriber for SignalWatcher {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let Some(signal) = crate::signals::read_signal() else {
            return;
        };
        eprintln!(
            "vpmu-vmm: {}: stopping the guest and writing the outputs (send it again to exit at once)",
            crate::outcome::signal_name(signal)
        );
        self.shared.end(crate::Outcome::Interrupted { signal });
        self.stopped.store(true, Ordering::SeqCst);
        let _ = ops.remove(events);
        crate::signals::unblock_on_this_thread();
    }
    fn init(&mut self, ops: &mut EventOps) {
        if let Some(fd) = crate::signals::signal_fd() {
            let _ = ops.add(Events::new_raw(fd, EventSet::IN));
        }
    }
}

/// Forwards terminal input to the guest's serial port. Input the receive FIFO cannot take
/// waits in `pending` (one read's worth at most: stdin is not read again until it is
/// gone, so a paste waits in the terminal, not in the VMM) and is fed as the guest drains
/// the FIFO (the serial port's "input drained" eventfd). Ctrl-A x stops the guest.
struct StdinForwarder {
    serial: Arc<Mutex<devices::Serial>>,
    shared: Arc<Shared>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
    drained: vmm_sys_util::eventfd::EventFd,
    pending: std::collections::VecDeque<u8>,
    escapes: crate::terminal::EscapeScanner,
    reading_stdin: bool,
}

/// Bytes read from stdin at a time.
const STDIN_CHUNK: usize = 4096;

impl StdinForwarder {
    /// Offers `pending` to the receive FIFO; true when all of it went in.
    fn feed(&mut self) -> bool {
        let Ok(mut serial) = self.serial.lock() else {
            return false;
        };
        while !self.pending.is_empty() {
            let (head, _) = self.pending.as_slices();
            match serial.enqueue_input(head) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    self.pending.drain(..n);
                }
            }
        }
        self.pending.is_empty()
    }

    fn set_stdin(&mut self, ops: &mut EventOps, on: bool) {
        if on != self.reading_stdin {
            let ev = Events::new_raw(0, EventSet::IN);
            let ok = if on { ops.add(ev) } else { ops.remove(ev) };
            if ok.is_ok() {
                self.reading_stdin = on;
            }
        }
    }

    fn read_stdin(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; STDIN_CHUNK];
        let n = match std::io::stdin().lock().read(&mut buf) {
            Ok(0) | Err(_) => {
                // EOF or error: stop watching stdin, keep the VM running.
                self.set_stdin(ops, false);
                return;
            }
            Ok(n) => n,
        };
        match self.escapes.scan(&buf[..n]) {
            crate::terminal::Typed::Input(bytes) => self.pending.extend(bytes),
            crate::terminal::Typed::Help { input } => {
                eprint!("{}", crate::terminal::ESCAPE_HELP);
                self.pending.extend(input);
            }
            crate::terminal::Typed::Quit { before } => {
                self.pending.extend(before);
                self.feed();
                self.shared.end(crate::Outcome::ConsoleQuit);
                self.stopped.store(true, Ordering::SeqCst);
                self.set_stdin(ops, false);
                return;
            }
        }
        if !self.feed() {
            // The FIFO is full: wait for the guest to drain it before reading more.
            self.set_stdin(ops, false);
        }
    }
}

impl MutEventSubscriber for StdinForwarder {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.drained.as_raw_fd() {
            let _ = self.drained.read();
            if self.feed() {
                self.set_stdin(ops, true);
            }
        } else {
            self.read_stdin(ops);
        }
    }
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.drained, EventSet::IN));
        self.set_stdin(ops, true);
    }
}

/// Blocks until the VM stops, forwarding stdin to `serial` if given and running the silence
/// watchdog (`crate::watchdog`) if given.
pub fn wait_for_stop(
    shared: &Arc<Shared>,
    serial: Option<Arc<Mutex<devices::Serial>>>,
    mut watchdog: Option<(crate::watchdog::Watchdog, &[crate::watchdog::VcpuProgress])>,
) {
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut em = match EventManager::<Box<dyn MutEventSubscriber + Send>>::new() {
        Ok(em) => em,
        Err(_) => {
            // No epoll: fall back to polling the stop flag (and the signalfd).
            while !shared.stopping.load(Ordering::SeqCst) {
                if let Some(signal) = crate::signals::read_signal() {
                    shared.end(crate::Outcome::Interrupted { signal });
                    crate::signals::unblock_on_this_thread();
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            return;
        }
    };
    em.add_subscriber(Box::new(StopWatcher {
        shared: shared.clone(),
        stopped: stopped.clone(),
    }));
    if crate::signals::signal_fd().is_some() {
        em.add_subscriber(Box::new(SignalWatcher {
            shared: shared.clone(),
            stopped: stopped.clone(),
        }));
    }
    if let Some(serial) = serial {
        let drained = serial
            .lock()
            .ok()
            .and_then(|s| s.input_drained_evt().try_clone().ok());
        if let Some(drained) = drained {
            em.add_subscriber(Box::new(StdinForwarder {
                serial,
                shared: shared.clone(),
                stopped: stopped.clone(),
                drained,
                pending: std::collections::VecDeque::new(),
                escapes: crate::terminal::EscapeScanner::default(),
                reading_stdin: false,
            }));
        }
    }
    while !stopped.load(Ordering::SeqCst) && !shared.stopping.load(Ordering::SeqCst) {
        if em.run_with_timeout(100).is_err() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if let Some((w, progress)) = watchdog.as_mut() {
            if let Some(line) = w.tick(progress, &shared.tids) {
                eprintln!("{line}");
            }
        }
    }
}

/// How much guest console output [`ConsoleOut`] buffers before it drops new output.
pub const CONSOLE_BUFFER: usize = 1 << 20;

#[derive(Default)]
struct OutState {
    /// Bytes waiting for the writer thread.
    pending: Vec<u8>,
    /// Bytes the writer thread took and has not written yet.
    in_flight: usize,
    /// Bytes dropped: the buffer was full, or stdout failed.
    dropped: u64,
    /// stdout failed (e.g. EPIPE): later output is dropped (and counted).
    broken: bool,
    /// No more output: the writer thread ends once `pending` is empty.
    closed: bool,
    /// Bytes the guest wrote, kept or dropped (the watchdog's sign of life).
    offered: u64,
}

struct OutInner {
    state: Mutex<OutState>,
    cv: Condvar,
}

/// The console's stdout path: a bounded buffer (at most `capacity` bytes, further output
/// is dropped and counted) drained by a writer thread. Writing never blocks a vCPU;
/// [`ConsoleOut::finish`] waits a bounded time for the rest and says how much was lost.
#[derive(Clone)]
pub struct ConsoleOut {
    inner: Arc<OutInner>,
    capacity: usize,
}

impl ConsoleOut {
    /// Spawns the writer thread for file descriptor `fd` (1 for stdout; not closed).
    /// With `seccomp`, the thread installs the console filter first.
    pub fn spawn(fd: i32, capacity: usize, seccomp: bool) -> std::io::Result<ConsoleOut> {
        let out = ConsoleOut {
            inner: Arc::new(OutInner {
                state: Mutex::new(OutState::default()),
                cv: Condvar::new(),
            }),
            capacity,
        };
        let inner = out.inner.clone();
        std::thread::Builder::new()
            .name("console-out".into())
            .spawn(move || {
                #[cfg(target_arch = "x86_64")]
                if seccomp {
                    if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Console) {
                        eprintln!("vpmu-vmm: console output thread: {e}");
                    }
                }
                #[cfg(not(target_arch = "x86_64"))]
                let _ = seccomp;
                writer_loop(&inner, fd)
            })?;
        Ok(out)
    }

    /// Bytes the guest has written so far (kept or dropped).
    pub fn offered(&self) -> u64 {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .offered
    }

    /// Stops taking output; the writer thread ends once it wrote what is buffered.
    pub fn close(&self) {
        let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        st.closed = true;
        self.inner.cv.notify_all();
    }

    /// Stops taking output and waits up to `timeout` for the writer thread to write what
    /// is buffered; returns the bytes lost (dropped while full or on a stdout error, plus
    /// what was still unwritten at the deadline). The writer thread is left behind if
    /// stdout still blocks.
    pub fn finish(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        st.closed = true;
        self.inner.cv.notify_all();
        while !st.pending.is_empty() || st.in_flight > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = self
                .inner
                .cv
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.dropped + st.pending.len() as u64 + st.in_flight as u64
    }
}

impl std::io::Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        let room = if st.broken || st.closed {
            0
        } else {
            self.capacity
                .saturating_sub(st.pending.len() + st.in_flight)
        };
        let n = room.min(buf.len());
        st.offered += buf.len() as u64;
        st.pending.extend_from_slice(&buf[..n]);
        st.dropped += (buf.len() - n) as u64;
        if n > 0 {
            self.inner.cv.notify_all();
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The writer thread: takes what is pending, writes it with plain blocking write(2)s on
/// `fd` (no lock held while writing), until closed and drained.
fn writer_loop(inner: &OutInner, fd: i32) {
    loop {
        let chunk = {
            let mut st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            while st.pending.is_empty() && !st.closed {
                st = inner.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.pending.is_empty() {
                return;
            }
            let chunk = std::mem::take(&mut st.pending);
            st.in_flight = chunk.len();
            chunk
        };
        let mut off = 0;
        while off < chunk.len() {
            // SAFETY: writes from a live buffer of at least `chunk.len() - off` bytes.
            let n = unsafe { libc::write(fd, chunk[off..].as_ptr().cast(), chunk.len() - off) };
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            let mut st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            if n <= 0 {
                st.broken = true;
                st.dropped += (chunk.len() - off) as u64;
                st.in_flight = 0;
                off = chunk.len();
            } else {
                off += n as usize;
                st.in_flight = chunk.len() - off;
            }
            inner.cv.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pipe() -> (i32, i32) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two-element array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        (fds[0], fds[1])
    }

    #[test]
    fn a_pipe_nobody_reads_never_blocks_the_writer_or_the_end() {
        let (r, w) = pipe();
        let mut out = ConsoleOut::spawn(w, 4096, false).unwrap();
        let t = Instant::now();
        // Far more than the pipe (64 KiB) and the buffer hold.
        for _ in 0..1000 {
            assert_eq!(out.write(&[b'x'; 1024]).unwrap(), 1024);
        }
        let lost = out.finish(Duration::from_millis(300));
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(lost > 0 && lost <= 1_024_000, "{lost}");
        // SAFETY: closing our own pipe ends.
        unsafe {
            libc::close(r);
        }
    }

    #[test]
    fn everything_arrives_when_read() {
        let (r, w) = pipe();
        let mut out = ConsoleOut::spawn(w, 1 << 16, false).unwrap();
        out.write_all(b"hello console\n").unwrap();
        assert_eq!(out.finish(Duration::from_secs(5)), 0);
        let mut buf = [0u8; 64];
        // SAFETY: reads into a live 64-byte buffer.
        let n = unsafe { libc::read(r, buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(&buf[..n as usize], b"hello console\n");
        // SAFETY: closing our own pipe ends.
        unsafe {
            libc::close(r);
            libc::close(w);
        }
    }
}
