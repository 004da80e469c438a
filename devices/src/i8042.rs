//! Minimal i8042 keyboard controller at ports 0x60 (data) and 0x64 (status/command).
//!
//! Registered as one device at base 0x60, length 5: offset 0 is the data port, offset 4
//! the status/command port, offsets 1..=3 (0x61..0x63, e.g. the PC speaker port, which
//! KVM's in-kernel PIT handles anyway) read as 0xff and ignore writes.
//!
//! Purpose: let Linux's i8042 driver (booted with `i8042.noaux i8042.nomux i8042.nopnp
//! i8042.dumbkbd`) finish probing without timeouts, and let the guest reboot.
//! - status reads: output-buffer-full only while a reply is queued; input buffer always
//!   empty (the driver never waits to write); system flag set.
//! - controller commands answered at once: 0x20 read CTR, 0x60 write CTR, 0xaa
//!   self-test (0x55), 0xab/0xa9 port tests (0x00), 0xad/0xae/0xa7/0xa8 port
//!   disable/enable (update CTR), 0xd0/0xd1 output port, 0xd2/0xd3 loop a byte back.
//! - 0xfe, and any pulse command 0xf0..=0xff with bit 0 clear (pulse the reset line),
//!   returns `DeviceAction::Exit(VmExit::Reset)`.
//! - bytes written to the data port outside a command go to the keyboard; with
//!   `dumbkbd` Linux sends none, otherwise each is acknowledged with 0xfa (polled: no
//!   IRQ 1 is modelled).

use std::collections::VecDeque;

use crate::bus::{DeviceAction, PioDevice, VmExit};

/// Base port.
pub const I8042_BASE: u16 = 0x60;
/// Ports covered (0x60..=0x64).
pub const I8042_LEN: u16 = 5;
/// Offset of the data port.
pub const DATA_OFFSET: u16 = 0;
/// Offset of the status (read) / command (write) port.
pub const COMMAND_OFFSET: u16 = 4;

/// Status: output buffer full.
pub const SR_OBF: u8 = 0x01;
/// Status: system flag (self-test passed).
pub const SR_SYS: u8 = 0x04;
/// Status: last write was a command.
pub const SR_CMD: u8 = 0x08;
/// Status: output buffer holds AUX data.
pub const SR_AUXDATA: u8 = 0x20;

/// CTR: keyboard interrupt enable.
pub const CTR_KBDINT: u8 = 0x01;
/// CTR: system flag.
pub const CTR_SYSFLAG: u8 = 0x04;
/// CTR: keyboard port disabled.
pub const CTR_KBDDIS: u8 = 0x10;
/// CTR: aux port disabled.
pub const CTR_AUXDIS: u8 = 0x20;
/// CTR: scancode translation.
pub const CTR_XLATE: u8 = 0x40;
/// CTR at power on.
pub const CTR_DEFAULT: u8 = CTR_XLATE | CTR_SYSFLAG | CTR_KBDINT | CTR_AUXDIS;

/// Controller commands.
pub mod cmd {
    /// Read the configuration byte (CTR).
    pub const READ_CTR: u8 = 0x20;
    /// Write the configuration byte; the value follows on the data port.
    pub const WRITE_CTR: u8 = 0x60;
    /// Disable the aux port.
    pub const AUX_DISABLE: u8 = 0xa7;
    /// Enable the aux port.
    pub const AUX_ENABLE: u8 = 0xa8;
    /// Test the aux port.
    pub const AUX_TEST: u8 = 0xa9;
    /// Controller self-test.
    pub const SELF_TEST: u8 = 0xaa;
    /// Test the keyboard port.
    pub const KBD_TEST: u8 = 0xab;
    /// Disable the keyboard port.
    pub const KBD_DISABLE: u8 = 0xad;
    /// Enable the keyboard port.
    pub const KBD_ENABLE: u8 = 0xae;
    /// Read the output port.
    pub const READ_OUTPORT: u8 = 0xd0;
    /// Write the output port; the value follows.
    pub const WRITE_OUTPORT: u8 = 0xd1;
    /// Write a byte to the output buffer as if from the keyboard.
    pub const KBD_LOOP: u8 = 0xd2;
    /// Write a byte to the output buffer as if from the aux device.
    pub const AUX_LOOP: u8 = 0xd3;
    /// Write a byte to the aux device.
    pub const AUX_SEND: u8 = 0xd4;
    /// Pulse the reset line.
    pub const RESET: u8 = 0xfe;
}

/// Self-test pass reply.
pub const SELF_TEST_OK: u8 = 0x55;
/// Keyboard ACK.
pub const KBD_ACK: u8 = 0xfa;
const OUT_QUEUE_MAX: usize = 16;

/// What the next data-port write means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    None,
    Ctr,
    OutPort,
    KbdLoop,
    AuxLoop,
    AuxSend,
}

/// The controller.
#[derive(Debug)]
pub struct I8042 {
    ctr: u8,
    outport: u8,
    status: u8,
    out: VecDeque<(u8, bool)>,
    last: u8,
    pending: Pending,
}

impl Default for I8042 {
    fn default() -> Self {
        Self::new()
    }
}

impl I8042 {
    /// A controller in its power-on state.
    pub fn new() -> Self {
        I8042 {
            ctr: CTR_DEFAULT,
            outport: 0x01,
            status: SR_SYS,
            out: VecDeque::new(),
            last: 0,
            pending: Pending::None,
        }
    }

    fn push(&mut self, b: u8, aux: bool) {
        if self.out.len() < OUT_QUEUE_MAX {
            self.out.push_back((b, aux));
        }
    }

    /// Status register value.
    pub fn status(&self) -> u8 {
        let mut s = self.status & !(SR_OBF | SR_AUXDATA);
        if let Some(&(_, aux)) = self.out.front() {
            s |= SR_OBF;
            if aux {
                s |= SR_AUXDATA;
            }
        }
        s
    }

    /// Configuration byte.
    pub fn ctr(&self) -> u8 {
        self.ctr
    }

    fn read_data(&mut self) -> u8 {
        if let Some((b, _)) = self.out.pop_front() {
            self.last = b;
        }
        self.last
    }

    fn write_command(&mut self, c: u8) -> DeviceAction {
        self.status |= SR_CMD;
        self.pending = Pending::None;
        match c {
            cmd::READ_CTR => self.push(self.ctr, false),
            cmd::WRITE_CTR => self.pending = Pending::Ctr,
            cmd::AUX_DISABLE => self.ctr |= CTR_AUXDIS,
            cmd::AUX_ENABLE => self.ctr &= !CTR_AUXDIS,
            cmd::AUX_TEST | cmd::KBD_TEST => self.push(0x00, false),
            cmd::SELF_TEST => {
                self.status |= SR_SYS;
                self.push(SELF_TEST_OK, false);
            }
            cmd::KBD_DISABLE => self.ctr |= CTR_KBDDIS,
            cmd::KBD_ENABLE => self.ctr &= !CTR_KBDDIS,
            cmd::READ_OUTPORT => self.push(self.outport, false),
            cmd::WRITE_OUTPORT => self.pending = Pending::OutPort,
            cmd::KBD_LOOP => self.pending = Pending::KbdLoop,
            cmd::AUX_LOOP => self.pending = Pending::AuxLoop,
            cmd::AUX_SEND => self.pending = Pending::AuxSend,
            0xf0..=0xff if c & 1 == 0 => return DeviceAction::Exit(VmExit::Reset),
            _ => {}
        }
        DeviceAction::None
    }

    fn write_data(&mut self, b: u8) -> DeviceAction {
        self.status &= !SR_CMD;
        let pending = std::mem::replace(&mut self.pending, Pending::None);
        match pending {
            Pending::Ctr => {
                self.ctr = b;
                if b & CTR_SYSFLAG != 0 {
                    self.status |= SR_SYS;
                } else {
                    self.status &= !SR_SYS;
                }
            }
            Pending::OutPort => {
                self.outport = b;
                // Output port bit 0 low = system reset.
                if b & 1 == 0 {
                    return DeviceAction::Exit(VmExit::Reset);
                }
            }
            Pending::KbdLoop => self.push(b, false),
            Pending::AuxLoop => self.push(b, true),
            Pending::AuxSend => {} // no aux device: nothing answers
            Pending::None => self.push(KBD_ACK, false),
        }
        DeviceAction::None
    }
}

impl PioDevice for I8042 {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match usize::from(offset) + i {
                0 => self.read_data(),
                4 => self.status(),
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        let mut action = DeviceAction::None;
        for (i, &b) in data.iter().enumerate() {
            let a = match usize::from(offset) + i {
                0 => self.write_data(b),
                4 => self.write_command(b),
                _ => DeviceAction::None,
            };
            if a != DeviceAction::None {
                action = a;
            }
        }
        action
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn status(d: &mut I8042) -> u8 {
        let mut b = [0];
        d.read(COMMAND_OFFSET, &mut b);
        b[0]
    }
    fn data(d: &mut I8042) -> u8 {
        let mut b = [0];
        d.read(DATA_OFFSET, &mut b);
        b[0]
    }
    fn command(d: &mut I8042, c: u8) -> DeviceAction {
        d.write(COMMAND_OFFSET, &[c])
    }

    #[test]
    fn idle_status() {
        let mut d = I8042::new();
        let s = status(&mut d);
        assert_eq!(s & SR_OBF, 0, "no data");
        assert_eq!(s & 0x02, 0, "input buffer empty");
        assert_ne!(s, 0xff, "Linux treats 0xff as 'no controller'");
    }

    #[test]
    fn reset() {
        let mut d = I8042::new();
        assert_eq!(command(&mut d, 0xfe), DeviceAction::Exit(VmExit::Reset));
        assert_eq!(command(&mut d, 0xff), DeviceAction::None, "pulse nothing");
        // Reset through the output port.
        command(&mut d, cmd::WRITE_OUTPORT);
        assert_eq!(
            d.write(DATA_OFFSET, &[0x00]),
            DeviceAction::Exit(VmExit::Reset)
        );
    }

    #[test]
    fn linux_probe_sequence() {
        let mut d = I8042::new();
        // i8042_flush: nothing pending.
        assert_eq!(status(&mut d) & SR_OBF, 0);
        // Self-test.
        command(&mut d, cmd::SELF_TEST);
        assert_eq!(status(&mut d) & SR_OBF, SR_OBF);
        assert_eq!(data(&mut d), 0x55);
        assert_eq!(status(&mut d) & SR_OBF, 0);
        // Read CTR twice: stable.
        command(&mut d, cmd::READ_CTR);
        let c1 = data(&mut d);
        command(&mut d, cmd::READ_CTR);
        assert_eq!(data(&mut d), c1);
        // Write CTR and read it back.
        command(&mut d, cmd::WRITE_CTR);
        d.write(DATA_OFFSET, &[0x65]);
        command(&mut d, cmd::READ_CTR);
        assert_eq!(data(&mut d), 0x65);
        command(&mut d, cmd::KBD_DISABLE);
        assert_eq!(d.ctr() & CTR_KBDDIS, CTR_KBDDIS);
        command(&mut d, cmd::KBD_ENABLE);
        assert_eq!(d.ctr() & CTR_KBDDIS, 0);
        command(&mut d, cmd::KBD_TEST);
        assert_eq!(data(&mut d), 0);
        // AUX loopback sets the AUX data bit.
        command(&mut d, cmd::AUX_LOOP);
        d.write(DATA_OFFSET, &[0x5a]);
        assert_eq!(status(&mut d) & (SR_OBF | SR_AUXDATA), SR_OBF | SR_AUXDATA);
        assert_eq!(data(&mut d), 0x5a);
        // A keyboard byte is acknowledged.
        d.write(DATA_OFFSET, &[0xf2]);
        assert_eq!(data(&mut d), KBD_ACK);
    }

    #[test]
    fn other_offsets() {
        let mut d = I8042::new();
        for off in 1..4 {
            let mut b = [0];
            d.read(off, &mut b);
            assert_eq!(b[0], 0xff);
            assert_eq!(d.write(off, &[0xfe]), DeviceAction::None);
        }
        // A 4-byte read at 0x61 reaches 0x64 (status) as its last byte.
        let mut w = [0u8; 4];
        d.read(1, &mut w);
        assert_eq!(w, [0xff, 0xff, 0xff, SR_SYS]);
        // A 2-byte write at 0x63 reaches the command port with its second byte.
        assert_eq!(d.write(3, &[0, 0xfe]), DeviceAction::Exit(VmExit::Reset));
    }

    proptest! {
        #[test]
        fn hostile_accesses_never_panic(ops in proptest::collection::vec(
            (any::<bool>(), any::<u16>(), proptest::collection::vec(any::<u8>(), 0..9)), 0..300)) {
            let mut d = I8042::new();
            for (is_write, off, mut data) in ops {
                if is_write {
                    let _ = d.write(off, &data);
                } else {
                    d.read(off, &mut data);
                }
                prop_assert!(d.out.len() <= OUT_QUEUE_MAX);
            }
        }
    }
}
