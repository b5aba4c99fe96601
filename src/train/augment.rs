//! Augmentation of aligned face crops for training (`train --augment N`): each training photo's
//! crop is varied N times, as the pipeline could see the same face: mirrored, shifted by a few
//! pixels, lighter or darker, with more or less contrast, slightly blurred. Seeded: the same seed
//! gives the same crops. Only training identities are augmented; validation and held-out figures
//! are always on the photos as they are.

use std::path::PathBuf;

use super::Rng;
use crate::config::Config;
use crate::embed::Embedding;
use crate::embed::align::{CROP_BYTES, CROP_SIDE};
use crate::eval::embedded::{EmbedSetError, Pick, centre_face, on_workers};
use crate::photo::Analyzer;

/// A uniform value in [lo, hi).
fn uniform(rng: &mut Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
}

/// The largest shift in pixels (of 150).
pub const MAX_SHIFT: i32 = 4;

/// One augmented copy of a packed RGB crop (150x150).
pub fn augment(crop: &[u8], rng: &mut Rng) -> Vec<u8> {
    debug_assert_eq!(crop.len(), CROP_BYTES);
    let side = CROP_SIDE as i32;
    let flip = rng.below(2) == 1;
    let (dx, dy) = (rng.below(2 * MAX_SHIFT as usize + 1) as i32 - MAX_SHIFT, rng.below(2 * MAX_SHIFT as usize + 1) as i32 - MAX_SHIFT);
    let gain = uniform(rng, 0.85, 1.15);
    let offset = uniform(rng, -12.0, 12.0);
    let contrast = uniform(rng, 0.85, 1.15);
    let blur = rng.below(10) < 3;
    let mean = crop.iter().map(|&v| v as f32).sum::<f32>() / crop.len().max(1) as f32;
    // Geometry first (flip, shift with the edge repeated), then the colour, then the blur.
    let mut out = vec![0u8; CROP_BYTES];
    for y in 0..side {
        for x in 0..side {
            let sx = if flip { side - 1 - x } else { x } - dx;
            let (sx, sy) = (sx.clamp(0, side - 1), (y - dy).clamp(0, side - 1));
            for c in 0..3 {
                let v = crop[((sy * side + sx) * 3 + c) as usize] as f32;
                let v = (v - mean) * contrast + mean;
                out[((y * side + x) * 3 + c) as usize] = (v * gain + offset).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    if blur {
        out = box_blur(&out);
    }
    out
}

/// A 3x3 box blur (edges repeated).
fn box_blur(img: &[u8]) -> Vec<u8> {
    let side = CROP_SIDE as i32;
    let mut out = vec![0u8; img.len()];
    for y in 0..side {
        for x in 0..side {
            for c in 0..3 {
                let mut sum = 0u32;
                for oy in -1..=1 {
                    for ox in -1..=1 {
                        let (sx, sy) = ((x + ox).clamp(0, side - 1), (y + oy).clamp(0, side - 1));
                        sum += img[((sy * side + sx) * 3 + c) as usize] as u32;
                    }
                }
                out[((y * side + x) * 3 + c) as usize] = ((sum + 4) / 9) as u8;
            }
        }
    }
    out
}

/// `copies` augmented embeddings of each photo's labelled face (see [`augment`]), on several
/// workers; each photo's copies are seeded by `seed` and its path, so the result does not depend
/// on the workers. Photos without a usable face give none. Not cached (training only).
pub fn augmented_set(cfg: &Config, photos: &[(u32, PathBuf)], copies: usize, seed: u64, pick: Pick, workers: usize, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<Vec<(u32, Embedding)>, EmbedSetError> {
    let mut analyzers = (0..workers.max(1)).map(|_| Analyzer::new(cfg)).collect::<Result<Vec<_>, _>>()?;
    let out = on_workers(&mut analyzers, photos.len(), progress, |a, k| {
        let path = &photos[k].1;
        let embs = (|| {
            let img = crate::image::load(path).ok()?;
            let faces = a.detect(&img).ok()?;
            let f = match pick {
                Pick::Centre => centre_face(&faces, img.width, img.height)?,
                Pick::Confident => crate::photo::primary_face(&faces)?,
            };
            let crop = a.crop(&img, &faces[f])?;
            let mut rng = Rng::new(seed ^ crate::dataset::fnv1a(path.to_string_lossy().as_bytes(), 0));
            let batch: Vec<u8> = (0..copies).flat_map(|_| augment(&crop, &mut rng)).collect();
            a.embedder.embed_crops(&batch).ok()
        })();
        embs.unwrap_or_default()
    });
    Ok(photos.iter().zip(out).flat_map(|((id, _), embs)| embs.into_iter().map(move |e| (*id, e))).collect())
}

/// Each photo's labelled face as an aligned crop (the pipeline's crop), on several workers;
/// None for a photo without a usable face. For fine-tuning, which trains on pixels.
pub fn crop_set(cfg: &Config, photos: &[PathBuf], pick: Pick, workers: usize, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<Vec<Option<Vec<u8>>>, EmbedSetError> {
    let mut analyzers = (0..workers.max(1)).map(|_| Analyzer::new(cfg)).collect::<Result<Vec<_>, _>>()?;
    Ok(on_workers(&mut analyzers, photos.len(), progress, |a, k| {
        let img = crate::image::load(&photos[k]).ok()?;
        let faces = a.detect(&img).ok()?;
        let f = match pick {
            Pick::Centre => centre_face(&faces, img.width, img.height)?,
            Pick::Confident => crate::photo::primary_face(&faces)?,
        };
        a.crop(&img, &faces[f])
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face() -> Vec<u8> {
        (0..CROP_BYTES).map(|i| ((i / 3 % CROP_SIDE) * 255 / CROP_SIDE) as u8 ^ ((i / 3 / CROP_SIDE) as u8 & 0x10)).collect()
    }

    #[test]
    fn augmented_crops_keep_their_size_vary_and_repeat_with_the_seed() {
        let crop = face();
        let a: Vec<Vec<u8>> = {
            let mut rng = Rng::new(7);
            (0..8).map(|_| augment(&crop, &mut rng)).collect()
        };
        let b: Vec<Vec<u8>> = {
            let mut rng = Rng::new(7);
            (0..8).map(|_| augment(&crop, &mut rng)).collect()
        };
        assert_eq!(a, b, "the same seed, the same crops");
        assert!(a.iter().all(|x| x.len() == CROP_BYTES));
        assert!(a.iter().all(|x| x != &crop), "every copy differs from the photo");
        assert!(a.windows(2).any(|w| w[0] != w[1]));
        // Changes stay small: the mean absolute difference is a fraction of the range.
        for x in &a {
            let mad = x.iter().zip(&crop).map(|(p, q)| (*p as f32 - *q as f32).abs()).sum::<f32>() / CROP_BYTES as f32;
            assert!(mad < 150.0, "{mad}");
        }
    }

    #[test]
    fn a_blur_of_a_flat_image_is_the_image() {
        let flat = vec![90u8; CROP_BYTES];
        assert_eq!(box_blur(&flat), flat);
    }
}
