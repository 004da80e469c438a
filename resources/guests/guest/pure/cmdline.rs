//! Command-line parsing shared by the guests and the host unit tests.
//!
//! The command line is a whitespace-separated list of `key=value` tokens and
//! bare flags. When a key is repeated the last occurrence wins.

/// A borrowed, parsed view of a guest command line.
#[derive(Clone, Copy)]
pub struct Cmdline<'a> {
    text: &'a str,
}

impl<'a> Cmdline<'a> {
    pub fn new(text: &'a str) -> Self {
        Cmdline { text }
    }

    pub fn as_str(&self) -> &'a str {
        self.text
    }

    /// The value of the last `key=value` token, if any.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        let mut found = None;
        for tok in self.text.split_ascii_whitespace() {
            if let Some((k, v)) = tok.split_once('=') {
                if k == key {
                    found = Some(v);
                }
            }
        }
        found
    }

    /// True if `key` appears as a bare flag or as `key=1|on|yes|true`.
    pub fn flag(&self, key: &str) -> bool {
        for tok in self.text.split_ascii_whitespace() {
            if tok == key {
                return true;
            }
        }
        matches!(self.get(key), Some("1" | "on" | "yes" | "true"))
    }

    /// Parses the value of `key` as an unsigned number (see [`parse_u64`]).
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(parse_u64)
    }

    /// Like [`Cmdline::get_u64`] with a default for a missing or malformed value.
    pub fn u64_or(&self, key: &str, default: u64) -> u64 {
        self.get_u64(key).unwrap_or(default)
    }
}

/// Parses a decimal or `0x` hexadecimal number; `_` separators are allowed and
/// a `k`/`m`/`g` suffix multiplies by 1000, 10^6 or 10^9.
pub fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(rest) => (rest, 16),
        None => (s, 10),
    };
    let (digits, mult) = if radix == 10 {
        match digits.as_bytes()[digits.len() - 1] {
            b'k' | b'K' => (&digits[..digits.len() - 1], 1_000u64),
            b'm' | b'M' => (&digits[..digits.len() - 1], 1_000_000u64),
            b'g' | b'G' => (&digits[..digits.len() - 1], 1_000_000_000u64),
            _ => (digits, 1),
        }
    } else {
        (digits, 1)
    };
    let mut value: u64 = 0;
    let mut any = false;
    for b in digits.bytes() {
        if b == b'_' {
            continue;
        }
        let d = match b {
            b'0'..=b'9' => (b - b'0') as u64,
            b'a'..=b'f' if radix == 16 => (b - b'a' + 10) as u64,
            b'A'..=b'F' if radix == 16 => (b - b'A' + 10) as u64,
            _ => return None,
        };
        value = value.checked_mul(radix)?.checked_add(d)?;
        any = true;
    }
    if !any {
        return None;
    }
    value.checked_mul(mult)
}

/// Parses `A:B` (two numbers) as used by `denied=0xEE:0xUU`.
pub fn parse_pair(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once(':')?;
    Some((parse_u64(a)?, parse_u64(b)?))
}
