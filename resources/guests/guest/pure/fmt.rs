//! Allocation-free text formatting into a fixed buffer (no `core::fmt`, so the
//! guests stay small and their CPL0 paths short).

pub const LINE_CAP: usize = 256;

/// A fixed-capacity line buffer; text past the capacity is dropped.
pub struct Line {
    buf: [u8; LINE_CAP],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

impl Line {
    pub const fn new() -> Self {
        Line {
            buf: [0; LINE_CAP],
            len: 0,
        }
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII/UTF-8 text from &str and digits is ever pushed, but a
        // truncated multi-byte character is possible: fall back gracefully.
        match core::str::from_utf8(self.as_bytes()) {
            Ok(s) => s,
            Err(e) => {
                let ok = e.valid_up_to();
                core::str::from_utf8(self.buf.get(..ok).unwrap_or(&[])).unwrap_or("")
            }
        }
    }

    pub fn byte(&mut self, b: u8) -> &mut Self {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
        self
    }

    pub fn s(&mut self, s: &str) -> &mut Self {
        for &b in s.as_bytes() {
            self.byte(b);
        }
        self
    }

    /// Unsigned decimal.
    pub fn u(&mut self, v: u64) -> &mut Self {
        let mut tmp = [0u8; 20];
        let n = fmt_dec(v, &mut tmp);
        for &b in tmp.iter().take(n) {
            self.byte(b);
        }
        self
    }

    /// Signed decimal.
    pub fn i(&mut self, v: i64) -> &mut Self {
        if v < 0 {
            self.byte(b'-');
            self.u(v.unsigned_abs())
        } else {
            self.u(v as u64)
        }
    }

    /// `0x`-prefixed lowercase hexadecimal, no leading zeros.
    pub fn x(&mut self, v: u64) -> &mut Self {
        self.s("0x");
        let mut started = false;
        for i in (0..16).rev() {
            let d = ((v >> (i * 4)) & 0xf) as u8;
            if d != 0 || started || i == 0 {
                started = true;
                self.byte(hex_digit(d));
            }
        }
        self
    }

    /// `0x`-prefixed hexadecimal padded to `digits` digits.
    pub fn xw(&mut self, v: u64, digits: u32) -> &mut Self {
        self.s("0x");
        for i in (0..digits.min(16)).rev() {
            self.byte(hex_digit(((v >> (i * 4)) & 0xf) as u8));
        }
        self
    }

    /// `num/den` as a percentage with one decimal, e.g. `48.3%`.
    pub fn pct(&mut self, num: u64, den: u64) -> &mut Self {
        let tenths = percent_tenths(num, den);
        self.u(tenths / 10).byte(b'.').u(tenths % 10).byte(b'%')
    }

    /// Pads with spaces up to column `col`.
    pub fn pad_to(&mut self, col: usize) -> &mut Self {
        while self.len < col && self.len < LINE_CAP {
            self.byte(b' ');
        }
        self
    }

    /// Right-aligns the unsigned number `v` in a field of `width` characters.
    pub fn u_right(&mut self, v: u64, width: usize) -> &mut Self {
        let mut tmp = [0u8; 20];
        let n = fmt_dec(v, &mut tmp);
        for _ in n..width {
            self.byte(b' ');
        }
        for &b in tmp.iter().take(n) {
            self.byte(b);
        }
        self
    }

    pub fn repeat(&mut self, b: u8, n: usize) -> &mut Self {
        for _ in 0..n {
            self.byte(b);
        }
        self
    }
}

pub fn hex_digit(d: u8) -> u8 {
    if d < 10 {
        b'0' + d
    } else {
        b'a' + d - 10
    }
}

/// Writes `v` in decimal into `out`, returning the number of bytes.
pub fn fmt_dec(mut v: u64, out: &mut [u8; 20]) -> usize {
    // Digits are produced backwards into the tail of `tmp`, then moved to
    // the front of `out` (written without panicking index paths).
    let mut tmp = [0u8; 20];
    let mut start = 20;
    for slot in tmp.iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        start -= 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let n = 20 - start;
    for (o, &d) in out.iter_mut().zip(tmp.iter().skip(start)) {
        *o = d;
    }
    n
}

/// `num/den` in tenths of a percent, rounded to nearest (0 when `den` is 0).
pub fn percent_tenths(num: u64, den: u64) -> u64 {
    if den == 0 {
        return 0;
    }
    // Scale both down until num * 1000 cannot overflow (plain u64 math: no
    // 128-bit division helpers in the guests).
    let (mut num, mut den) = (num, den);
    while num > u64::MAX / 2000 {
        num >>= 1;
        den = (den >> 1).max(1);
    }
    (num * 1000 + den / 2) / den
}
