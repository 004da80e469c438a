//! Pseudo-random helpers: a 64-bit Galois LFSR and the random cyclic
//! permutation used by the pointer-chase workload.

/// Taps for a maximal-length 64-bit Galois LFSR (x^64 + x^63 + x^61 + x^60 + 1).
pub const TAPS64: u64 = 0xd800_0000_0000_0000;

/// One Galois LFSR step; the state must be non-zero.
#[inline(always)]
pub fn step(s: u64) -> u64 {
    let lsb = s & 1;
    let s = s >> 1;
    if lsb != 0 {
        s ^ TAPS64
    } else {
        s
    }
}

/// The branchy workload: `n` LFSR steps from a fixed seed, each taking one of three
/// data-dependent (unpredictable) branches; returns state ^ accumulator. Inlined into each
/// guest's workload function, whose link section the profiles attribute samples to.
#[inline(always)]
pub fn branchy(n: u64) -> u64 {
    let mut s: u64 = 0xace1_2468_1357_9bdf;
    let mut acc: u64 = 0;
    let mut i = 0;
    while i < n {
        let lsb = s & 1;
        s >>= 1;
        if lsb != 0 {
            s ^= TAPS64;
            acc = acc.wrapping_add(s);
        } else if s & 2 != 0 {
            acc ^= s.rotate_left(7);
        } else {
            acc = acc.wrapping_mul(3);
        }
        i += 1;
    }
    s ^ acc
}

/// A small generator for index shuffling (xorshift64*; never returns the
/// same stream for different non-zero seeds).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-enough value in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Fills `next` with a single random cycle through all indices (Sattolo's
/// algorithm): following `i = next[i]` from any start visits every slot once
/// before returning.
#[allow(clippy::cast_possible_truncation)] // next.len() < 2^32 (a buffer in guest RAM); j < i
pub fn build_cycle(next: &mut [u32], seed: u64) {
    let n = next.len();
    for (i, slot) in next.iter_mut().enumerate() {
        *slot = i as u32;
    }
    if n < 2 {
        return;
    }
    let mut rng = Rng::new(seed);
    let mut i = n - 1;
    while i > 0 {
        let j = rng.below(i as u64) as usize; // j < i: Sattolo, one cycle
                                              // Written with checked accessors so no panicking path is emitted
                                              // (the guests must not pull in core's formatting code).
        if let (Some(&a), Some(&b)) = (next.get(i), next.get(j)) {
            if let Some(x) = next.get_mut(i) {
                *x = b;
            }
            if let Some(y) = next.get_mut(j) {
                *y = a;
            }
        }
        i -= 1;
    }
}

/// Follows the chain `steps` times from slot 0 and returns the final index.
pub fn chase(next: &[u32], steps: u64) -> u32 {
    let mut i = 0u32;
    for _ in 0..steps {
        i = next[i as usize];
    }
    i
}
