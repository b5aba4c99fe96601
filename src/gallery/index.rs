//! The distance kernels of the gallery: the exact scan's dot product (AVX2 when available) and
//! the Euclidean distance between unit vectors derived from it.

/// Default shortlist of the sketch scan (recall@1 >= 0.99 on the gallery bench up to 1M
/// identities, and the lowest p99 there).
pub const SKETCH_DEFAULT_EF: usize = 16;
/// Default HNSW search breadth (recall@1 0.986 at 100k identities on the gallery bench).
pub const HNSW_DEFAULT_EF: usize = 128;

/// Euclidean distance between unit vectors from their dot product: sqrt(2 - 2 cos).
#[inline]
pub fn unit_distance(a: &[f32], b: &[f32]) -> f32 {
    (2.0 - 2.0 * dot(a, b)).max(0.0).sqrt()
}

/// Dot product: AVX2+FMA when the processor has them (checked once), else eight independent
/// accumulators that the compiler keeps in SSE registers.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static AVX2: OnceLock<bool> = OnceLock::new();
        if *AVX2.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            // SAFETY: the features were detected on this processor just above.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    // The same code as the portable version, compiled for AVX2: 8-lane multiplies and adds.
    dot_portable(a, b)
}

#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut dot: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        dot += x * y;
    }
    dot
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::DIM;

    #[test]
    fn unit_distance_matches_the_plain_formula() {
        let a: Vec<f32> = crate::embed::normalized(&(0..DIM).map(|i| (i as f32).sin()).collect::<Vec<_>>());
        let b: Vec<f32> = crate::embed::normalized(&(0..DIM).map(|i| (i as f32 * 0.7).cos()).collect::<Vec<_>>());
        assert!((unit_distance(&a, &b) - crate::embed::distance(&a, &b)).abs() < 1e-5);
        assert!(unit_distance(&a, &a) < 1e-3);
    }
}
