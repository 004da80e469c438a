//! Small, exact statistics: median/min/max summaries, percentiles and overhead
//! percentages.

use serde::{Deserialize, Serialize};

/// Median, minimum and maximum of a set of runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of values summarised.
    pub n: usize,
    /// The median (the mean of the two middle values when `n` is even).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Summary {
    /// Summarises the finite values of `xs`; `None` when there are none.
    pub fn of(xs: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            n,
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    /// Summarises integers.
    pub fn of_u64(xs: &[u64]) -> Option<Summary> {
        let v: Vec<f64> = xs.iter().map(|&x| x as f64).collect();
        Summary::of(&v)
    }

    /// Applies `f` to median, min and max (for a monotonically increasing `f`, e.g. a unit
    /// conversion by a positive factor).
    pub fn map(self, f: impl Fn(f64) -> f64) -> Summary {
        Summary {
            n: self.n,
            median: f(self.median),
            min: f(self.min),
            max: f(self.max),
        }
    }
}

/// The `q`-quantile (`0.0..=1.0`) of ascending `sorted` values, linearly interpolated
/// between the two closest ranks (R's type 7, numpy's default): position `q * (n - 1)`.
/// `quantile(v, 0.5)` is the median as [`Summary`] computes it. `None` when empty.
#[allow(clippy::cast_possible_truncation)] // pos is in 0..=n-1
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    let n = sorted.len();
    if n == 0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let pos = q * (n - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let frac = pos - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// p50 (the median), p90 and p99 of a set of values, with the extremes. Percentiles, not
/// means: a single wild value moves the mean without bound but p50 by at most one rank.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Number of values.
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

impl Percentiles {
    /// Percentiles of the finite values of `xs` ([`quantile`]); `None` when there are none.
    pub fn of(xs: &[f64]) -> Option<Percentiles> {
        let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        Some(Percentiles {
            n: v.len(),
            p50: quantile(&v, 0.5)?,
            p90: quantile(&v, 0.9)?,
            p99: quantile(&v, 0.99)?,
            min: *v.first()?,
            max: *v.last()?,
        })
    }

    /// Applies a monotonically increasing `f` (a unit conversion) to every figure.
    pub fn map(self, f: impl Fn(f64) -> f64) -> Percentiles {
        Percentiles {
            n: self.n,
            p50: f(self.p50),
            p90: f(self.p90),
            p99: f(self.p99),
            min: f(self.min),
            max: f(self.max),
        }
    }
}

/// Overhead of `x` over `base`, in percent: `(x - base) / base * 100`. `None` when the
/// baseline is not a positive finite number.
pub fn overhead_pct(base: f64, x: f64) -> Option<f64> {
    if !(base.is_finite() && base > 0.0 && x.is_finite()) {
        return None;
    }
    Some((x - base) / base * 100.0)
}

/// Paired overheads: repetition `i` of the cell against repetition `i` of its baseline
/// (both measured in the same interleaved pass). Pairs with a missing side are skipped.
pub fn paired_overheads(base: &[Option<u64>], cell: &[Option<u64>]) -> Vec<f64> {
    base.iter()
        .zip(cell)
        .filter_map(|(b, c)| match (b, c) {
            (Some(b), Some(c)) => overhead_pct(*b as f64, *c as f64),
            _ => None,
        })
        .collect()
}

/// `num / den`, `None` when `den` is zero or not finite.
pub fn ratio(num: f64, den: f64) -> Option<f64> {
    if den == 0.0 || !den.is_finite() || !num.is_finite() {
        None
    } else {
        Some(num / den)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even() {
        let s = Summary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max), (3, 3.0, 1.0, 5.0));
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max), (4, 2.5, 1.0, 4.0));
        let s = Summary::of(&[7.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (7.0, 7.0, 7.0));
    }

    #[test]
    fn empty_and_non_finite() {
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[f64::NAN]).is_none());
        let s = Summary::of(&[f64::NAN, 2.0, f64::INFINITY, 4.0]).unwrap();
        assert_eq!((s.n, s.median), (2, 3.0));
    }

    #[test]
    fn u64_and_map() {
        let s = Summary::of_u64(&[10, 30, 20]).unwrap().map(|x| x / 10.0);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
    }

    #[test]
    fn overheads() {
        assert_eq!(overhead_pct(100.0, 133.0), Some(33.0));
        assert_eq!(overhead_pct(200.0, 190.0), Some(-5.0));
        assert_eq!(overhead_pct(0.0, 1.0), None);
        assert_eq!(overhead_pct(f64::NAN, 1.0), None);
        let p = paired_overheads(
            &[Some(100), None, Some(200), Some(50)],
            &[Some(110), Some(1), None, Some(75)],
        );
        assert_eq!(p, vec![10.0, 50.0]);
    }

    #[test]
    fn quantiles_interpolate_between_ranks() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile(&v, 0.5), Some(3.0));
        assert_eq!(quantile(&v, 0.9), Some(4.6));
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(quantile(&v, 1.0), Some(5.0));
        assert_eq!(quantile(&[2.0, 4.0], 0.5), Some(3.0));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&v, 1.5), None);
        // p50 is Summary's median.
        let xs = [9.0, 1.0, 7.0, 3.0];
        let p = Percentiles::of(&xs).unwrap();
        assert_eq!(p.p50, Summary::of(&xs).unwrap().median);
        assert_eq!((p.n, p.min, p.max), (4, 1.0, 9.0));
        assert!(Percentiles::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn one_wild_value_does_not_move_the_median() {
        // 99 plausible values and one absolute-TSC-sized outlier: the mean is ruined,
        // p50 and p90 are not.
        let mut xs: Vec<f64> = (1..=99).map(f64::from).collect();
        xs.push(5.89e12);
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!(mean > 5e10);
        let p = Percentiles::of(&xs).unwrap();
        assert_eq!(p.p50, 50.5);
        assert!((p.p90 - 90.1).abs() < 1e-9, "{p:?}");
        assert_eq!(p.max, 5.89e12);
        let us = p.map(|x| x / 1000.0);
        assert_eq!(us.p50, 0.0505);
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(6.0, 3.0), Some(2.0));
        assert_eq!(ratio(1.0, 0.0), None);
    }
}
