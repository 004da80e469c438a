//! Devices for vpmu-vmm: legacy port-I/O devices and virtio-mmio devices.
//!
//! - [`bus`]: [`PioBus`] maps port ranges to [`PioDevice`]s; unmapped ports read as all
//!   ones and ignore writes (counted in [`BusStats`]). Device writes return a
//!   [`DeviceAction`] so a device can stop the VM ([`VmExit`]).
//! - [`serial`]: 16550A UART at 0x3f8 (vm-superio), interrupt via an eventfd (GSI 4),
//!   working THR-empty interrupt, host input queue, capture writer for tests.
//! - [`i8042`]: just enough keyboard controller for Linux to probe quickly and to reset.
//! - [`debug_exit`]: QEMU `isa-debug-exit` at 0xf4.
//! - [`cmos`]: CMOS RTC (host UTC time, BCD) and CMOS RAM with memory sizes at 0x70/0x71.
//! - [`acpi_pm`]: ACPI PM1a event/control registers at 0x600 (for the FADT in `arch::x86_64::acpi`).
//! - [`mmio`]: [`MmioBus`] maps guest-physical ranges to [`MmioDevice`]s; unmapped
//!   addresses read as all ones and ignore writes.
//! - [`virtio`]: the virtio-mmio transport (version 2) and a virtio-blk device backed
//!   by a host file.
//! - [`host_file`]: opening operator-named host files without trusting what they are
//!   (no blocking on FIFOs, regular files only, size limits before reading, OFD locks).
//!
//! No device panics on any offset, access size or value.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod acpi_pm;
pub mod bus;
pub mod cmos;
pub mod debug_exit;
pub mod host_file;
pub mod i8042;
pub mod mmio;
mod range_map;
pub mod serial;
pub mod virtio;

/// Warnings of one kind a device logs (`log::warn!`) before it goes quiet: a guest can
/// repeat a bad request at will, and a line for each would let it flood the log. The
/// device's counters still count every one (`--stats`, `--report`).
pub const WARN_LIMIT: u64 = 5;

/// The suffix of the warning for the `n`th (1-based) occurrence of a device error, or
/// `None` when that one is not logged ([`WARN_LIMIT`]).
pub(crate) fn warn_suffix(n: u64) -> Option<&'static str> {
    match n {
        0 => None,
        n if n < WARN_LIMIT => Some(""),
        WARN_LIMIT => Some(" (further ones are counted, not logged)"),
        _ => None,
    }
}

pub use acpi_pm::{AcpiPm, ACPI_PM_BASE, ACPI_PM_LEN};
pub use bus::{BusError, BusStats, DeviceAction, PioBus, PioDevice, VmExit};
pub use cmos::{Cmos, CMOS_BASE, CMOS_LEN};
pub use debug_exit::{DebugExit, DEBUG_EXIT_LEN, DEBUG_EXIT_PORT};
pub use i8042::{I8042, I8042_BASE, I8042_LEN};
pub use mmio::{MmioBus, MmioBusError, MmioDevice};
pub use serial::{
    CaptureWriter, Serial, SerialError, SERIAL_IRQ, SERIAL_PORT_BASE, SERIAL_PORT_LEN,
};

#[cfg(test)]
mod tests {
    #[test]
    fn device_warnings_stop_after_the_limit() {
        let logged: Vec<u64> = (0..100)
            .filter(|&n| super::warn_suffix(n).is_some())
            .collect();
        assert_eq!(logged, (1..=super::WARN_LIMIT).collect::<Vec<_>>());
        assert_eq!(super::warn_suffix(1), Some(""));
        assert!(super::warn_suffix(super::WARN_LIMIT).is_some_and(|s| s.contains("not logged")));
    }
}
