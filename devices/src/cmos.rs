//! MC146818-style CMOS RTC + 128 bytes of CMOS RAM at ports 0x70 (index) and 0x71 (data).
//!
//! Without it Linux's clock and `rtc_cmos` probes poll the update-in-progress bit of an
//! absent chip (reads of 0xff) for seconds ("rtc_cmos: broken or not accessible", ~40,000
//! stray port accesses, 2.5-10 s per boot in the nested rig).
//!
//! - Port 0x70 (offset 0), write: selects the register; bit 7 (NMI disable) is ignored.
//!   Reads return 0xff (the index register is write-only on PC hardware).
//! - Port 0x71 (offset 1): reads/writes the selected register.
//! - Offsets past 1 read as 0xff and ignore writes; multi-byte accesses are split into
//!   bytes at consecutive offsets (an `outw` to 0x70 selects, then writes the data).
//!
//! Registers:
//!
//! | index | read | write |
//! |---|---|---|
//! | 0x00, 0x02, 0x04 | seconds, minutes, hours of the host's current UTC time | ignored |
//! | 0x06..=0x09 | day of week (1 = Sunday), day of month, month, year % 100 | ignored |
//! | 0x32 | century (year / 100) | ignored |
//! | 0x01, 0x03, 0x05 | alarm seconds/minutes/hours (stored, no alarm interrupt) | stored |
//! | 0x0a (A) | stored divider/rate bits, UIP (bit 7) always clear; default 0x26 | bits 0-6 stored |
//! | 0x0b (B) | stored; default 0x02 (24-hour, BCD) | stored |
//! | 0x0c (C) | 0: no interrupt flags (no RTC interrupt is raised) | ignored |
//! | 0x0d (D) | 0x80: valid RAM and time | ignored |
//! | others | CMOS RAM | stored |
//!
//! Time registers follow register B's format: binary when DM (bit 2) is set, BCD
//! otherwise; 12-hour (bit 7 = PM) when 24/12 (bit 1) is clear. **Writes to the time
//! registers are ignored**: the guest always reads the host's clock (the VMM keeps no
//! per-guest RTC offset, so `hwclock --systohc` has no effect). The SET bit of register B
//! does not freeze the clock either.
//!
//! Memory size bytes, filled at creation (the BIOS convention; guests may overwrite them):
//! 0x15/0x16 base memory in KiB (640); 0x17/0x18 and 0x30/0x31 memory above 1 MiB in KiB
//! (at most 0xffff); 0x34/0x35 memory between 16 MiB and 4 GiB in 64 KiB units (at most
//! 0xffff); 0x5b..=0x5d memory above 4 GiB in 64 KiB units (24 bits, saturating).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::{DeviceAction, PioDevice};

/// Base port (index register).
pub const CMOS_BASE: u16 = 0x70;
/// Ports covered (0x70, 0x71).
pub const CMOS_LEN: u16 = 2;
/// Size of the CMOS RAM (index space).
pub const CMOS_RAM_SIZE: usize = 128;

/// Register indices.
pub mod reg {
    /// Seconds.
    pub const SECONDS: u8 = 0x00;
    /// Alarm seconds.
    pub const SECONDS_ALARM: u8 = 0x01;
    /// Minutes.
    pub const MINUTES: u8 = 0x02;
    /// Alarm minutes.
    pub const MINUTES_ALARM: u8 = 0x03;
    /// Hours.
    pub const HOURS: u8 = 0x04;
    /// Alarm hours.
    pub const HOURS_ALARM: u8 = 0x05;
    /// Day of week (1 = Sunday).
    pub const DAY_OF_WEEK: u8 = 0x06;
    /// Day of month.
    pub const DAY_OF_MONTH: u8 = 0x07;
    /// Month.
    pub const MONTH: u8 = 0x08;
    /// Year within the century.
    pub const YEAR: u8 = 0x09;
    /// Status register A.
    pub const A: u8 = 0x0a;
    /// Status register B.
    pub const B: u8 = 0x0b;
    /// Status register C.
    pub const C: u8 = 0x0c;
    /// Status register D.
    pub const D: u8 = 0x0d;
    /// Century (the ACPI FADT's CENTURY field names it).
    pub const CENTURY: u8 = 0x32;
}

/// Register A: update in progress.
pub const REG_A_UIP: u8 = 0x80;
/// Register A at power on: 32.768 kHz time base, 1024 Hz periodic rate.
pub const REG_A_DEFAULT: u8 = 0x26;
/// Register B: 24-hour mode.
pub const REG_B_24H: u8 = 0x02;
/// Register B: binary (not BCD) data mode.
pub const REG_B_DM_BINARY: u8 = 0x04;
/// Register B at power on: 24-hour, BCD.
pub const REG_B_DEFAULT: u8 = REG_B_24H;
/// Register D: valid RAM and time.
pub const REG_D_VRT: u8 = 0x80;

const MIB: u64 = 1 << 20;
const GIB4: u64 = 1 << 32;

/// Source of the current time: seconds since the Unix epoch, UTC.
pub type Clock = Box<dyn Fn() -> i64 + Send>;

fn host_clock() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// Broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    /// Full year (may be negative or beyond 9999 for absurd clocks).
    pub year: i64,
    /// 1..=12.
    pub month: u8,
    /// 1..=31.
    pub day: u8,
    /// 0..=23.
    pub hour: u8,
    /// 0..=59.
    pub minute: u8,
    /// 0..=59.
    pub second: u8,
    /// 1 = Sunday .. 7 = Saturday.
    pub weekday: u8,
}

impl DateTime {
    /// UTC date and time of `secs` seconds since 1970-01-01T00:00:00Z (proleptic Gregorian,
    /// no leap seconds; H. Hinnant's `civil_from_days`).
    #[allow(clippy::cast_possible_truncation)] // each field is reduced to its range first
    pub fn from_unix(secs: i64) -> DateTime {
        let days = secs.div_euclid(86_400);
        let tod = secs.rem_euclid(86_400);
        // 1970-01-01 was a Thursday (weekday 5 with Sunday = 1).
        let weekday = ((days + 4).rem_euclid(7) + 1) as u8;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = yoe + era * 400 + i64::from(month <= 2);
        DateTime {
            year,
            month,
            day,
            hour: (tod / 3600) as u8,
            minute: (tod / 60 % 60) as u8,
            second: (tod % 60) as u8,
            weekday,
        }
    }
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

/// The CMOS RTC/RAM device.
pub struct Cmos {
    index: u8,
    ram: [u8; CMOS_RAM_SIZE],
    clock: Clock,
}

impl std::fmt::Debug for Cmos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cmos")
            .field("index", &self.index)
            .field("ram", &self.ram)
            .finish_non_exhaustive()
    }
}

impl Cmos {
    /// A CMOS with the host's clock; `mem_below_4g` / `mem_above_4g` are the guest RAM
    /// sizes below and above 4 GiB, in bytes.
    pub fn new(mem_below_4g: u64, mem_above_4g: u64) -> Self {
        Self::with_clock(mem_below_4g, mem_above_4g, Box::new(host_clock))
    }

    /// Like [`Cmos::new`] with another time source (tests, deterministic runs).
    pub fn with_clock(mem_below_4g: u64, mem_above_4g: u64, clock: Clock) -> Self {
        let mut ram = [0u8; CMOS_RAM_SIZE];
        ram[usize::from(reg::A)] = REG_A_DEFAULT;
        ram[usize::from(reg::B)] = REG_B_DEFAULT;
        let base_kib: u16 = 640;
        ram[0x15..0x17].copy_from_slice(&base_kib.to_le_bytes());
        let ext_kib = (mem_below_4g.min(GIB4).saturating_sub(MIB) / 1024).min(0xffff) as u16;
        ram[0x17..0x19].copy_from_slice(&ext_kib.to_le_bytes());
        ram[0x30..0x32].copy_from_slice(&ext_kib.to_le_bytes());
        let above_16m = (mem_below_4g.min(GIB4).saturating_sub(16 * MIB) >> 16).min(0xffff) as u16;
        ram[0x34..0x36].copy_from_slice(&above_16m.to_le_bytes());
        let above_4g = (mem_above_4g >> 16).min(0x00ff_ffff) as u32;
        ram[0x5b..0x5e].copy_from_slice(&above_4g.to_le_bytes()[..3]);
        Cmos {
            index: 0,
            ram,
            clock,
        }
    }

    /// The selected register index (0..=127).
    pub fn index(&self) -> u8 {
        self.index
    }

    fn encode(&self, v: u8) -> u8 {
        if self.ram[usize::from(reg::B)] & REG_B_DM_BINARY != 0 {
            v
        } else {
            to_bcd(v)
        }
    }

    fn hours(&self, h: u8) -> u8 {
        if self.ram[usize::from(reg::B)] & REG_B_24H != 0 {
            return self.encode(h);
        }
        let h12 = match h % 12 {
            0 => 12,
            x => x,
        };
        self.encode(h12) | if h >= 12 { 0x80 } else { 0 }
    }

    /// Value of register `index` (0..=127) as the guest reads it.
    #[allow(clippy::cast_possible_truncation)] // year % 100 and century % 100 fit a byte
    pub fn read_register(&self, index: u8) -> u8 {
        let i = index & 0x7f;
        let time = |f: fn(&DateTime) -> u8| f(&DateTime::from_unix((self.clock)()));
        match i {
            reg::SECONDS => self.encode(time(|t| t.second)),
            reg::MINUTES => self.encode(time(|t| t.minute)),
            reg::HOURS => self.hours(time(|t| t.hour)),
            reg::DAY_OF_WEEK => self.encode(time(|t| t.weekday)),
            reg::DAY_OF_MONTH => self.encode(time(|t| t.day)),
            reg::MONTH => self.encode(time(|t| t.month)),
            reg::YEAR => self.encode(time(|t| t.year.rem_euclid(100) as u8)),
            reg::CENTURY => self.encode(time(|t| t.year.div_euclid(100).rem_euclid(100) as u8)),
            reg::A => self.ram[usize::from(i)] & !REG_A_UIP,
            reg::C => 0,
            reg::D => REG_D_VRT,
            _ => self.ram[usize::from(i)],
        }
    }

    /// Guest write of `v` to register `index` (0..=127).
    pub fn write_register(&mut self, index: u8, v: u8) {
        let i = index & 0x7f;
        match i {
            reg::SECONDS
            | reg::MINUTES
            | reg::HOURS
            | reg::DAY_OF_WEEK
            | reg::DAY_OF_MONTH
            | reg::MONTH
            | reg::YEAR
            | reg::CENTURY
            | reg::C
            | reg::D => {}
            reg::A => self.ram[usize::from(i)] = v & !REG_A_UIP,
            _ => self.ram[usize::from(i)] = v,
        }
    }
}

impl PioDevice for Cmos {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match usize::from(offset) + i {
                1 => self.read_register(self.index),
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        for (i, &b) in data.iter().enumerate() {
            match usize::from(offset) + i {
                0 => self.index = b & 0x7f, // bit 7: NMI disable, ignored
                1 => self.write_register(self.index, b),
                _ => {}
            }
        }
        DeviceAction::None
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // fixtures build bytes and small values by truncation
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2026-11-21T07:43:49Z, a Saturday.
    const T: i64 = 1_795_247_029;

    fn at(secs: i64) -> Cmos {
        Cmos::with_clock(512 << 20, 0, Box::new(move || secs))
    }
    fn rd(c: &mut Cmos, index: u8) -> u8 {
        // Linux's CMOS_READ: outb(index | NMI bit, 0x70); inb(0x71).
        c.write(0, &[index | 0x80]);
        let mut b = [0];
        c.read(1, &mut b);
        b[0]
    }
    fn wr(c: &mut Cmos, index: u8, v: u8) {
        c.write(0, &[index]);
        c.write(1, &[v]);
    }

    #[test]
    fn date_conversion() {
        let d = DateTime::from_unix(0);
        assert_eq!((d.year, d.month, d.day, d.weekday), (1970, 1, 1, 5));
        let d = DateTime::from_unix(T);
        assert_eq!(
            (d.year, d.month, d.day, d.hour, d.minute, d.second, d.weekday),
            (2026, 11, 21, 7, 43, 49, 7)
        );
        // 2000-02-29 (leap day of a /400 year) 23:59:59, a Tuesday.
        let d = DateTime::from_unix(951_868_799);
        assert_eq!(
            (d.year, d.month, d.day, d.hour, d.minute, d.second, d.weekday),
            (2000, 2, 29, 23, 59, 59, 3)
        );
        // 2100-03-01 (2100 is not a leap year), a Monday.
        let d = DateTime::from_unix(4_107_542_400);
        assert_eq!((d.year, d.month, d.day, d.weekday), (2100, 3, 1, 2));
        // Before the epoch: 1969-12-31T23:59:59, a Wednesday.
        let d = DateTime::from_unix(-1);
        assert_eq!(
            (d.year, d.month, d.day, d.hour, d.weekday),
            (1969, 12, 31, 23, 4)
        );
    }

    #[test]
    fn time_in_bcd_24h_by_default() {
        let mut c = at(T);
        assert_eq!(rd(&mut c, reg::SECONDS), 0x49);
        assert_eq!(rd(&mut c, reg::MINUTES), 0x43);
        assert_eq!(rd(&mut c, reg::HOURS), 0x07);
        assert_eq!(rd(&mut c, reg::DAY_OF_WEEK), 0x07);
        assert_eq!(rd(&mut c, reg::DAY_OF_MONTH), 0x21);
        assert_eq!(rd(&mut c, reg::MONTH), 0x11);
        assert_eq!(rd(&mut c, reg::YEAR), 0x26);
        assert_eq!(rd(&mut c, reg::CENTURY), 0x20);
        assert_eq!(rd(&mut c, reg::A), 0x26, "UIP clear");
        assert_eq!(rd(&mut c, reg::B), 0x02);
        assert_eq!(rd(&mut c, reg::C), 0);
        assert_eq!(rd(&mut c, reg::D), 0x80);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let mut c = at(T + 12 * 3600); // 19:43:49
        wr(&mut c, reg::B, REG_B_DM_BINARY | REG_B_24H);
        assert_eq!(rd(&mut c, reg::SECONDS), 49);
        assert_eq!(rd(&mut c, reg::HOURS), 19);
        assert_eq!(rd(&mut c, reg::YEAR), 26);
        wr(&mut c, reg::B, 0); // BCD, 12-hour
        assert_eq!(rd(&mut c, reg::HOURS), 0x80 | 0x07, "7 PM");
        let mut c = at(T - 7 * 3600); // 00:43:49
        wr(&mut c, reg::B, 0);
        assert_eq!(rd(&mut c, reg::HOURS), 0x12, "12 AM");
        wr(&mut c, reg::B, REG_B_DM_BINARY);
        assert_eq!(rd(&mut c, reg::HOURS), 12);
    }

    #[test]
    fn clock_is_live_and_time_writes_are_ignored() {
        let t = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(T));
        let t2 = t.clone();
        let mut c = Cmos::with_clock(
            1 << 30,
            0,
            Box::new(move || t2.load(std::sync::atomic::Ordering::SeqCst)),
        );
        assert_eq!(rd(&mut c, reg::SECONDS), 0x49);
        t.store(T + 1, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(rd(&mut c, reg::SECONDS), 0x50);
        for r in [
            reg::SECONDS,
            reg::MINUTES,
            reg::HOURS,
            reg::YEAR,
            reg::CENTURY,
        ] {
            let before = rd(&mut c, r);
            wr(&mut c, r, 0x00);
            assert_eq!(rd(&mut c, r), before, "register {r:#x}");
        }
        // C and D are read-only; A's UIP bit cannot be set.
        wr(&mut c, reg::C, 0xff);
        wr(&mut c, reg::D, 0x00);
        wr(&mut c, reg::A, 0xff);
        assert_eq!(
            (rd(&mut c, reg::C), rd(&mut c, reg::D), rd(&mut c, reg::A)),
            (0, 0x80, 0x7f)
        );
        // Alarms and plain RAM are stored.
        wr(&mut c, reg::HOURS_ALARM, 0x23);
        wr(&mut c, 0x40, 0xa5);
        assert_eq!(rd(&mut c, reg::HOURS_ALARM), 0x23);
        assert_eq!(rd(&mut c, 0x40), 0xa5);
    }

    #[test]
    fn memory_size_bytes() {
        let rd16 = |c: &mut Cmos, i: u8| u16::from(rd(c, i)) | u16::from(rd(c, i + 1)) << 8;
        let mut c = Cmos::new(512 << 20, 0);
        assert_eq!(rd16(&mut c, 0x15), 640);
        assert_eq!(rd16(&mut c, 0x30), 0xffff, "511 MiB in KiB saturates");
        assert_eq!(rd16(&mut c, 0x17), 0xffff);
        assert_eq!(rd16(&mut c, 0x34), ((512 - 16) << 20 >> 16) as u16);
        assert_eq!(
            (rd(&mut c, 0x5b), rd(&mut c, 0x5c), rd(&mut c, 0x5d)),
            (0, 0, 0)
        );
        let mut c = Cmos::new(32 << 20, 0);
        assert_eq!(rd16(&mut c, 0x30), 31 * 1024);
        assert_eq!(rd16(&mut c, 0x34), 256);
        let mut c = Cmos::new(8 << 20, 0);
        assert_eq!(rd16(&mut c, 0x34), 0, "less than 16 MiB");
        // 3 GiB below the gap + 5 GiB above 4 GiB.
        let mut c = Cmos::new(3 << 30, 5 << 30);
        assert_eq!(
            rd16(&mut c, 0x34),
            (((3u64 << 30) - (16 << 20)) >> 16) as u16
        );
        let above = u32::from(rd(&mut c, 0x5b))
            | u32::from(rd(&mut c, 0x5c)) << 8
            | u32::from(rd(&mut c, 0x5d)) << 16;
        assert_eq!(u64::from(above), (5u64 << 30) >> 16);
        // Absurd sizes saturate instead of wrapping; 0x34/0x35 count only up to 4 GiB.
        let mut c = Cmos::new(u64::MAX, u64::MAX);
        assert_eq!(rd16(&mut c, 0x34), 0xff00, "4 GiB - 16 MiB");
        assert_eq!(rd16(&mut c, 0x30), 0xffff);
        assert_eq!(rd(&mut c, 0x5d), 0xff);
    }

    #[test]
    fn ports() {
        let mut c = at(T);
        let mut b = [0u8; 3];
        c.read(0, &mut b[..1]);
        assert_eq!(b[0], 0xff, "index port is write-only");
        // outw 0x70: index then data.
        c.write(0, &[0x41, 0x99]);
        assert_eq!(c.index(), 0x41);
        assert_eq!(rd(&mut c, 0x41), 0x99);
        // inw 0x70 reads 0xff then the data register; past the device: 0xff.
        c.write(0, &[reg::D]);
        c.read(0, &mut b);
        assert_eq!(b, [0xff, 0x80, 0xff]);
        assert_eq!(c.write(7, &[1, 2, 3]), DeviceAction::None);
        c.read(u16::MAX, &mut b);
        assert_eq!(b, [0xff; 3]);
    }

    proptest! {
        #[test]
        fn hostile_accesses_never_panic(
            secs in any::<i64>(),
            below in any::<u64>(),
            above in any::<u64>(),
            ops in proptest::collection::vec(
                (any::<bool>(), any::<u16>(), proptest::collection::vec(any::<u8>(), 0..9)),
                0..200,
            ),
        ) {
            let mut c = Cmos::with_clock(below, above, Box::new(move || secs));
            for (is_write, off, mut data) in ops {
                if is_write {
                    prop_assert_eq!(c.write(off, &data), DeviceAction::None);
                } else {
                    c.read(off, &mut data);
                }
                prop_assert!(c.index() < 0x80);
                prop_assert_eq!(c.read_register(reg::A) & REG_A_UIP, 0);
            }
            for i in 0..=255u8 {
                let _ = c.read_register(i);
            }
        }

        #[test]
        fn bcd_time_fields_are_valid(secs in -(1i64 << 40)..(1i64 << 40)) {
            let mut c = at(secs);
            let bcd = |v: u8| (v >> 4) * 10 + (v & 0xf);
            for (r, lo, hi) in [
                (reg::SECONDS, 0, 59), (reg::MINUTES, 0, 59), (reg::HOURS, 0, 23),
                (reg::DAY_OF_WEEK, 1, 7), (reg::DAY_OF_MONTH, 1, 31), (reg::MONTH, 1, 12),
                (reg::YEAR, 0, 99), (reg::CENTURY, 0, 99),
            ] {
                let v = rd(&mut c, r);
                prop_assert!(v >> 4 <= 9 && v & 0xf <= 9, "register {:#x} = {:#x} not BCD", r, v);
                prop_assert!((lo..=hi).contains(&bcd(v)), "register {:#x} = {:#x}", r, v);
            }
        }
    }
}
