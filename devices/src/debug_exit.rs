//! QEMU-compatible `isa-debug-exit` port (0xf4, 4 ports).
//!
//! Any write of 1..=4 bytes carrying the little-endian value `V` requests
//! `DeviceAction::Exit(VmExit::DebugExit(V))` (see [`VmExit::exit_status`] for the
//! process status). Like QEMU, the offset within the range is ignored; writes longer
//! than 4 bytes use their first 4 bytes, empty writes do nothing. Reads return 0xff.

use crate::bus::{DeviceAction, PioDevice, VmExit};

/// Base port.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Ports covered.
pub const DEBUG_EXIT_LEN: u16 = 4;

/// The debug-exit device.
#[derive(Debug, Default, Clone, Copy)]
pub struct DebugExit;

impl DebugExit {
    /// A new device.
    pub fn new() -> Self {
        DebugExit
    }
}

impl PioDevice for DebugExit {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u16, data: &[u8]) -> DeviceAction {
        if data.is_empty() {
            return DeviceAction::None;
        }
        let mut v = [0u8; 4];
        let n = data.len().min(4);
        v[..n].copy_from_slice(&data[..n]);
        DeviceAction::Exit(VmExit::DebugExit(u32::from_le_bytes(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exit(data: &[u8]) -> Option<(u32, u8)> {
        match DebugExit::new().write(0, data) {
            DeviceAction::Exit(e @ VmExit::DebugExit(v)) => Some((v, e.exit_status())),
            _ => None,
        }
    }

    #[test]
    fn sizes_and_statuses() {
        assert_eq!(exit(&[0]), Some((0, 1)));
        assert_eq!(exit(&[1, 0]), Some((1, 3)));
        assert_eq!(exit(&[0x7f, 0, 0, 0]), Some((0x7f, 0xff)));
        assert_eq!(exit(&[0x80]), Some((0x80, 1)), "truncated to 8 bits");
        assert_eq!(exit(&[0x34, 0x12]), Some((0x1234, 0x69)));
        assert_eq!(exit(&[1, 2, 3]), Some((0x030201, 3)));
        assert_eq!(exit(&[0xff; 8]), Some((u32::MAX, 0xff)));
        assert_eq!(exit(&[]), None);
    }

    proptest! {
        #[test]
        fn any_write_never_panics(off in any::<u16>(), data in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut d = DebugExit::new();
            let _ = d.write(off, &data);
            let mut buf = data.clone();
            d.read(off, &mut buf);
            prop_assert!(buf.iter().all(|&b| b == 0xff));
        }
    }
}
