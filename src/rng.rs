//! Random draws over the seeded generator every component uses (`ChaCha8Rng`): the few
//! shapes we need, written once so that every caller draws the same way in every build.

pub use rand_chacha::rand_core::{Rng, SeedableRng};
pub use rand_chacha::ChaCha8Rng;
use std::time::Duration;

/// A generator for one purpose, derived from a seed and a stream number, so that adding
/// draws to one purpose does not shift the others.
pub fn stream(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Uniform in `0..n` (`n` > 0).
pub fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    assert!(n > 0);
    // Multiply-shift: unbiased enough for simulation choices, and no rejection loop.
    ((rng.next_u64() as u128 * n as u128) >> 64) as u64
}

/// Uniform in `lo..=hi`.
pub fn between(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> u64 {
    assert!(lo <= hi);
    lo + below(rng, hi - lo + 1)
}

/// True with probability `p`.
pub fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    unit(rng) < p
}

/// Uniform in `[0, 1)`.
pub fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Uniform duration in `lo..=hi`.
pub fn duration(rng: &mut ChaCha8Rng, lo: Duration, hi: Duration) -> Duration {
    Duration::from_nanos(between(rng, lo.as_nanos() as u64, hi.as_nanos() as u64))
}

/// One element of a non-empty slice.
pub fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    &items[below(rng, items.len() as u64) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_in_range_and_reproducible() {
        let mut a = stream(7, 1);
        let mut b = stream(7, 1);
        let mut c = stream(7, 2);
        let xs: Vec<u64> = (0..100).map(|_| between(&mut a, 3, 9)).collect();
        let ys: Vec<u64> = (0..100).map(|_| between(&mut b, 3, 9)).collect();
        let zs: Vec<u64> = (0..100).map(|_| between(&mut c, 3, 9)).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
        assert!(xs.iter().all(|x| (3..=9).contains(x)));
        assert!((3..=9).all(|v| xs.contains(&v)));
        let hits = (0..10_000).filter(|_| chance(&mut a, 0.25)).count();
        assert!((2_000..3_000).contains(&hits), "{hits}");
    }
}
