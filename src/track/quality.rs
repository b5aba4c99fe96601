//! Face quality for choosing which frames of a track to embed: size, detector confidence, frontal
//! pose from the landmarks, and sharpness of the aligned crop. Values are in 0..=1, higher is better.

use crate::detect::Face;
use crate::embed::CROP_SIDE;

/// Faces at or above this side (pixels) get the full size score.
const FULL_SIZE: f32 = 100.0;
/// Laplacian variance of a crisp aligned crop; blurrier crops score proportionally lower.
const CRISP_LAPLACIAN_VAR: f32 = 150.0;

/// Frontalness from the landmarks: 1 when the nose sits midway between the eyes and between the
/// mouth corners, falling to 0 in full profile.
pub fn frontal(face: &Face) -> f32 {
    let [le, re, nose, ml, mr] = face.landmarks;
    let ratio = |a: [f32; 2], b: [f32; 2]| {
        let w = b[0] - a[0];
        if w.abs() < 1e-3 { 0.0 } else { ((nose[0] - a[0]) / w).clamp(0.0, 1.0) }
    };
    let eyes = 1.0 - 2.0 * (ratio(le, re) - 0.5).abs();
    let mouth = 1.0 - 2.0 * (ratio(ml, mr) - 0.5).abs();
    (eyes * mouth).max(0.0).sqrt()
}

/// Quality without looking at pixels: cheap enough for every tracked face in every frame.
pub fn geometric(face: &Face) -> f32 {
    let side = face.bbox.width().min(face.bbox.height());
    let size = (side / FULL_SIZE).clamp(0.0, 1.0);
    size * face.score.clamp(0.0, 1.0) * (0.25 + 0.75 * frontal(face))
}

/// Sharpness of an aligned 150x150 RGB crop: variance of the 4-neighbour Laplacian over the
/// central region (eyes, nose, mouth), normalised to 0..=1.
pub fn sharpness(crop: &[u8]) -> f32 {
    (laplacian_variance(crop) / CRISP_LAPLACIAN_VAR).clamp(0.0, 1.0)
}

/// Sharpness of a face at its own resolution: the variance of the 4-neighbour Laplacian over the
/// central half of its box in the original image (an aligned crop of a small face is upsampled,
/// which would make every small face look blurred).
pub fn native_sharpness(img: &crate::image::RgbImage, face: &Face) -> f32 {
    let b = &face.bbox;
    let (w, h) = (b.width(), b.height());
    let clampx = |v: f32| (v.max(1.0) as usize).min(img.width.saturating_sub(2) as usize);
    let clampy = |v: f32| (v.max(1.0) as usize).min(img.height.saturating_sub(2) as usize);
    let region = ((clampx(b.x1 + w * 0.25), clampx(b.x2 - w * 0.25)), (clampy(b.y1 + h * 0.25), clampy(b.y2 - h * 0.25)));
    laplacian_over(&img.data, img.width as usize * 3, region)
}

/// The variance of the 4-neighbour Laplacian over the crop's central region (eyes, nose, mouth).
pub fn laplacian_variance(crop: &[u8]) -> f32 {
    let s = CROP_SIDE;
    laplacian_over(crop, s * 3, ((s / 4, s * 3 / 4), (s / 4, s * 3 / 4)))
}

/// Variance of the 4-neighbour Laplacian of the grey levels of packed RGB rows (`stride` bytes
/// each) over `((x0, x1), (y0, y1))`, which must keep one pixel away from every edge.
fn laplacian_over(rgb: &[u8], stride: usize, ((x0, x1), (y0, y1)): ((usize, usize), (usize, usize))) -> f32 {
    let gray = |x: usize, y: usize| {
        let i = y * stride + x * 3;
        0.299 * rgb[i] as f32 + 0.587 * rgb[i + 1] as f32 + 0.114 * rgb[i + 2] as f32
    };
    let (mut sum, mut sum2, mut n) = (0.0f64, 0.0f64, 0.0f64);
    for y in y0..y1 {
        for x in x0..x1 {
            let l = 4.0 * gray(x, y) - gray(x - 1, y) - gray(x + 1, y) - gray(x, y - 1) - gray(x, y + 1);
            sum += l as f64;
            sum2 += (l * l) as f64;
            n += 1.0;
        }
    }
    if n == 0.0 { 0.0 } else { (sum2 / n - (sum / n).powi(2)) as f32 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::BBox;

    fn face(nose_x: f32, side: f32) -> Face {
        Face {
            bbox: BBox { x1: 0.0, y1: 0.0, x2: side, y2: side },
            score: 0.99,
            landmarks: [[30.0, 40.0], [70.0, 40.0], [nose_x, 60.0], [35.0, 80.0], [65.0, 80.0]],
        }
    }

    #[test]
    fn frontal_beats_profile_and_large_beats_small() {
        assert!(frontal(&face(50.0, 100.0)) > 0.99);
        assert!(frontal(&face(68.0, 100.0)) < 0.5);
        assert!(geometric(&face(50.0, 100.0)) > geometric(&face(50.0, 40.0)));
        assert!(geometric(&face(50.0, 100.0)) > geometric(&face(66.0, 100.0)));
    }

    #[test]
    fn sharp_crop_beats_flat_crop() {
        let flat = vec![128u8; CROP_SIDE * CROP_SIDE * 3];
        let mut checker = flat.clone();
        for y in 0..CROP_SIDE {
            for x in 0..CROP_SIDE {
                if (x / 3 + y / 3) % 2 == 0 {
                    let i = (y * CROP_SIDE + x) * 3;
                    checker[i..i + 3].copy_from_slice(&[250, 250, 250]);
                }
            }
        }
        assert_eq!(sharpness(&flat), 0.0);
        assert!(sharpness(&checker) > 0.9);
    }
}
