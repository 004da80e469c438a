//! Attribution of sampled instruction pointers to named address ranges and a
//! compact text histogram.

/// A named half-open address range `[start, end)`.
#[derive(Clone, Copy)]
pub struct Range<'a> {
    pub name: &'a str,
    pub start: u64,
    pub end: u64,
}

/// Index of the range containing `rip`, if any.
pub fn attribute(rip: u64, ranges: &[Range]) -> Option<usize> {
    ranges.iter().position(|r| rip >= r.start && rip < r.end)
}

/// Counts `samples` per range; samples outside all ranges go to the returned
/// "other" count. `counts.len()` must equal `ranges.len()`.
pub fn tally(samples: &[u64], ranges: &[Range], counts: &mut [u64]) -> u64 {
    for c in counts.iter_mut() {
        *c = 0;
    }
    let mut other = 0;
    for &rip in samples {
        match attribute(rip, ranges) {
            Some(i) => counts[i] += 1,
            None => other += 1,
        }
    }
    other
}

/// Bar length for `count` out of `total`, `width` characters for 100%
/// (rounded to nearest, at least 1 for a non-zero count).
pub fn bar_len(count: u64, total: u64, width: u64) -> u64 {
    if total == 0 || count == 0 {
        return 0;
    }
    ((count * width + total / 2) / total).max(1)
}
