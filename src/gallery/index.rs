//! Nearest-neighbour search over unit embeddings: the exact distance used by the scan, and an
//! HNSW index (hnsw_rs with cosine distance; `DistDot` panics on normalised self-queries because
//! rounding pushes the dot product above 1).

use hnsw_rs::prelude::{DistCosine, Hnsw};

use crate::embed::DIM;

/// Default search breadth (recall@1 >= 0.99 on near-duplicate queries in the gallery bench).
pub const DEFAULT_EF: usize = 64;
const M: usize = 16;
const EF_CONSTRUCTION: usize = 200;

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

pub struct HnswIndex {
    hnsw: Hnsw<'static, f32, DistCosine>,
}

impl HnswIndex {
    /// Builds over the samples whose owner is not 0; sample slot numbers are the index's ids.
    pub fn build(vectors: &[f32], owners: &[u64]) -> Self {
        let n = owners.len();
        let layers = 16.min((n.max(2) as f32).ln().ceil() as usize).max(1);
        let hnsw = Hnsw::<f32, DistCosine>::new(M, n.max(1024), layers, EF_CONSTRUCTION, DistCosine {});
        let data: Vec<(&[f32], usize)> =
            (0..n).filter(|&i| owners[i] != 0).map(|i| (&vectors[i * DIM..(i + 1) * DIM], i)).collect();
        hnsw.parallel_insert_slice(&data);
        Self { hnsw }
    }

    pub fn insert(&self, v: &[f32], slot: usize) {
        self.hnsw.insert_slice((v, slot));
    }

    /// (slot, Euclidean distance between unit vectors), nearest first.
    pub fn search(&self, q: &[f32], k: usize, ef: usize) -> Vec<(usize, f32)> {
        self.hnsw
            .search(q, k, ef)
            .into_iter()
            .map(|n| (n.d_id, (2.0 * n.distance.max(0.0)).sqrt()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_distance_matches_the_plain_formula() {
        let a: Vec<f32> = crate::embed::normalized(&(0..DIM).map(|i| (i as f32).sin()).collect::<Vec<_>>());
        let b: Vec<f32> = crate::embed::normalized(&(0..DIM).map(|i| (i as f32 * 0.7).cos()).collect::<Vec<_>>());
        assert!((unit_distance(&a, &b) - crate::embed::distance(&a, &b)).abs() < 1e-5);
        assert!(unit_distance(&a, &a) < 1e-3);
    }
}
