//! 16550A UART (COM1, port 0x3f8) on top of `vm_superio::Serial`.
//!
//! Output bytes go to any `Write` (stdout in practice, [`CaptureWriter`] in tests).
//! The interrupt line is an [`EventFd`] the vmm registers as an irqfd on GSI 4.
//!
//! THR-empty interrupt: `vm_superio` (0.8.2) models the transmitter as always empty;
//! it raises THRI when the guest enables it in IER (level semantics: an already
//! pending condition fires immediately) and after every byte written to THR, and the
//! pending bit is acknowledged by reading IIR. Linux's 8250 driver needs exactly this:
//! its TX path waits for the THRE interrupt, so without it console output stops after
//! the first FIFO's worth of bytes once interrupts are enabled (i.e. /init's output
//! never appears). The tests below check it.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vm_superio::serial::SerialEvents;
use vm_superio::{Serial as Uart, Trigger};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::{DeviceAction, PioDevice};

/// COM1 base port.
pub const SERIAL_PORT_BASE: u16 = 0x3f8;
/// Number of ports of a 16550.
pub const SERIAL_PORT_LEN: u16 = 8;
/// ISA IRQ / GSI of COM1.
pub const SERIAL_IRQ: u32 = 4;

/// Errors of the serial device.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// Creating the interrupt eventfd failed.
    #[error("creating the serial interrupt eventfd: {0}")]
    EventFd(#[source] io::Error),
    /// Signalling the interrupt eventfd failed.
    #[error("raising the serial interrupt: {0}")]
    Interrupt(#[source] io::Error),
}

/// `Trigger` over an eventfd (vm_superio needs a local type to implement it on).
#[derive(Debug)]
pub struct IrqTrigger(EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// A `Write` that appends to a shared buffer (test capture of guest output).
#[derive(Debug, Clone, Default)]
pub struct CaptureWriter(pub Arc<Mutex<Vec<u8>>>);

impl CaptureWriter {
    /// A new, empty buffer.
    pub fn new() -> Self {
        Self::default()
    }
    /// A copy of everything written so far.
    pub fn contents(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Signals an eventfd when the guest has read the last byte of the receive FIFO, so the
/// console can offer the input it still holds (host input is fed as the guest drains
/// the FIFO, never dropped).
#[derive(Debug)]
pub struct InputDrained(EventFd);

impl SerialEvents for InputDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        // Non-blocking eventfd: a full counter already says "drained".
        let _ = self.0.write(1);
    }
}

/// The COM1 device.
pub struct Serial {
    uart: Uart<IrqTrigger, InputDrained, Box<dyn Write + Send>>,
    tx_errors: u64,
}

impl Serial {
    /// A UART writing to `out`, with a fresh non-blocking interrupt eventfd.
    pub fn new(out: Box<dyn Write + Send>) -> Result<Self, SerialError> {
        let evt = EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(SerialError::EventFd)?;
        Self::with_eventfd(evt, out)
    }

    /// A UART writing to `out`, signalling `irq` for interrupts.
    pub fn with_eventfd(irq: EventFd, out: Box<dyn Write + Send>) -> Result<Self, SerialError> {
        let drained =
            EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(SerialError::EventFd)?;
        Ok(Serial {
            uart: Uart::with_events(IrqTrigger(irq), InputDrained(drained), out),
            tx_errors: 0,
        })
    }

    /// Signalled when the guest has emptied the receive FIFO (see [`InputDrained`]).
    pub fn input_drained_evt(&self) -> &EventFd {
        &self.uart.events().0
    }

    /// The interrupt eventfd (register it as an irqfd on [`SERIAL_IRQ`]).
    pub fn irq_evt(&self) -> &EventFd {
        &self.uart.interrupt_evt().0
    }

    /// Queues host input (stdin bytes) for the guest; returns how many bytes fit in the
    /// receive FIFO (the rest must be offered again later). Raises the RX interrupt when
    /// the guest enabled it.
    pub fn enqueue_input(&mut self, input: &[u8]) -> Result<usize, SerialError> {
        if input.is_empty() || self.uart.fifo_capacity() == 0 {
            return Ok(0);
        }
        match self.uart.enqueue_raw_bytes(input) {
            Ok(n) => Ok(n),
            Err(vm_superio::serial::Error::Trigger(e)) => Err(SerialError::Interrupt(e)),
            Err(_) => Ok(0),
        }
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Output bytes that could not be written (or interrupts that could not be raised).
    pub fn tx_errors(&self) -> u64 {
        self.tx_errors
    }
}

/// The UART register byte `i` of an access at `offset` reaches, if any.
fn uart_reg(offset: u16, i: usize) -> Option<u8> {
    let reg = u8::try_from(usize::from(offset) + i).ok()?;
    (u16::from(reg) < SERIAL_PORT_LEN).then_some(reg)
}

impl PioDevice for Serial {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        // A wide access is split into byte accesses to consecutive registers, like an
        // 8-bit ISA device sees it.
        for (i, b) in data.iter_mut().enumerate() {
            *b = match uart_reg(offset, i) {
                Some(reg) => self.uart.read(reg),
                None => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        for (i, &b) in data.iter().enumerate() {
            let Some(reg) = uart_reg(offset, i) else {
                continue;
            };
            if let Err(e) = self.uart.write(reg, b) {
                self.tx_errors += 1;
                if let Some(more) = crate::warn_suffix(self.tx_errors) {
                    log::warn!("serial: guest output or interrupt lost: {e}{more}");
                }
            }
        }
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn interrupt_eventfd_is_close_on_exec() {
        let s = Serial::new(Box::new(std::io::sink())).unwrap();
        let flags = host_sys::fd_flags(s.irq_evt()).unwrap();
        assert!(flags & libc::FD_CLOEXEC != 0, "{flags}");
    }

    use super::*;
    use proptest::prelude::*;

    const THR: u16 = 0;
    const IER: u16 = 1;
    const IIR: u16 = 2;
    const LCR: u16 = 3;
    const LSR: u16 = 5;
    const IER_THRI: u8 = 0x02;
    const IER_RDI: u8 = 0x01;

    fn setup() -> (Serial, CaptureWriter) {
        let cap = CaptureWriter::new();
        (Serial::new(Box::new(cap.clone())).unwrap(), cap)
    }

    fn rd(s: &mut Serial, off: u16) -> u8 {
        let mut b = [0u8];
        s.read(off, &mut b);
        b[0]
    }

    fn irq_count(s: &Serial) -> u64 {
        s.irq_evt().read().unwrap_or(0)
    }

    #[test]
    fn output_is_captured() {
        let (mut s, cap) = setup();
        for &b in b"hello\n" {
            s.write(THR, &[b]);
        }
        assert_eq!(cap.contents(), b"hello\n");
        // LSR: THR empty + transmitter empty.
        assert_eq!(rd(&mut s, LSR) & 0x60, 0x60);
    }

    #[test]
    fn thr_empty_interrupt_fires_when_enabled() {
        let (mut s, _cap) = setup();
        // Disabled: writing bytes raises nothing.
        s.write(THR, b"a");
        assert_eq!(irq_count(&s), 0);
        // Enabling THRI raises it at once (THR is empty).
        s.write(IER, &[IER_THRI]);
        assert_eq!(irq_count(&s), 1);
        assert_eq!(rd(&mut s, IIR) & 0x0f, 0x02, "IIR says THR empty");
        assert_eq!(rd(&mut s, IIR) & 0x0f, 0x01, "acknowledged by the IIR read");
        // Every transmitted byte raises it again once acknowledged.
        for round in 0..3 {
            s.write(THR, b"x");
            assert_eq!(irq_count(&s), 1, "round {round}");
            assert_eq!(rd(&mut s, IIR) & 0x0f, 0x02);
        }
        // Linux's THRE test sequence (8250 UART_BUG_THRE probe) sees the interrupt.
        s.write(IER, &[0]);
        s.write(IER, &[IER_THRI]);
        assert_eq!(rd(&mut s, IIR) & 0x01, 0, "interrupt pending");
        s.write(IER, &[0]);
    }

    #[test]
    fn input_is_delivered_with_rx_interrupt() {
        let (mut s, _cap) = setup();
        s.write(IER, &[IER_RDI]);
        let _ = irq_count(&s);
        assert_eq!(s.enqueue_input(b"ok").unwrap(), 2);
        assert_eq!(irq_count(&s), 1);
        assert_eq!(rd(&mut s, LSR) & 1, 1, "data ready");
        assert_eq!(rd(&mut s, THR), b'o');
        assert_eq!(rd(&mut s, THR), b'k');
        assert_eq!(rd(&mut s, LSR) & 1, 0);
        // FIFO overflow: only what fits is accepted.
        let big = vec![b'z'; 1000];
        let n = s.enqueue_input(&big).unwrap();
        assert!(n > 0 && n < 1000);
        assert_eq!(s.enqueue_input(&big).unwrap(), 0);
        assert_eq!(s.input_capacity(), 0);
        assert_eq!(s.enqueue_input(&[]).unwrap(), 0);
    }

    #[test]
    fn draining_the_fifo_signals_the_console() {
        let (mut s, _cap) = setup();
        let drained = |s: &Serial| s.input_drained_evt().read().is_ok();
        assert!(!drained(&s));
        assert_eq!(s.enqueue_input(b"abc").unwrap(), 3);
        assert_eq!(rd(&mut s, THR), b'a');
        assert_eq!(rd(&mut s, THR), b'b');
        assert!(!drained(&s), "bytes still in the FIFO");
        assert_eq!(rd(&mut s, THR), b'c');
        assert!(drained(&s), "the last byte read empties the FIFO");
        assert!(!drained(&s), "read once");
    }

    #[test]
    fn dlab_and_wide_accesses() {
        let (mut s, cap) = setup();
        s.write(LCR, &[0x80]);
        s.write(0, &[0x01, 0x00]); // divisor latch low/high in one 16-bit write
        assert_eq!(rd(&mut s, 0), 1);
        s.write(LCR, &[0x03]);
        assert!(cap.contents().is_empty(), "DLAB writes are not output");
        let mut w = [0u8; 4];
        s.read(6, &mut w);
        assert_eq!(&w[2..], &[0xff, 0xff], "past the device");
    }

    proptest! {
        #[test]
        fn hostile_accesses_never_panic(ops in proptest::collection::vec(
            (any::<bool>(), any::<u16>(), proptest::collection::vec(any::<u8>(), 0..9)), 0..200)) {
            let (mut s, _cap) = setup();
            for (is_write, off, mut data) in ops {
                if is_write {
                    prop_assert_eq!(s.write(off, &data), DeviceAction::None);
                } else {
                    s.read(off, &mut data);
                }
                let _ = s.enqueue_input(&data);
            }
        }
    }
}
