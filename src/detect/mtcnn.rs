//! The MTCNN cascade on the three ONNX nets fetched by setup.
//!
//! The nets were trained on transposed images (their origin is MATLAB, column-major), so every
//! input tensor is laid out [N, width, height, 3] and P-Net's output maps come back as
//! [N, width', height', C]. Box arithmetic follows the reference implementation: inclusive integer
//! boxes (+1 in widths) in the R-Net/O-Net stages, squared boxes between stages.

use opencv::core::{Mat, Size, Vec3b};
use opencv::imgproc;

use super::{BBox, DetectConfig, DetectError, Face};
use crate::image::RgbImage;
use crate::infer::{Model, Runtime};

const PNET_CELL: f32 = 12.0;
const PNET_STRIDE: f32 = 2.0;
/// Refine candidates per prior box: (side relative to the box, x shift, y shift in box sides).
const REFINE_JITTER: [(f32, f32, f32); 7] =
    [(1.0, 0.0, 0.0), (1.3, 0.0, 0.0), (1.0, 0.2, 0.0), (1.0, -0.2, 0.0), (1.0, 0.0, 0.2), (1.0, 0.0, -0.2), (0.8, 0.0, 0.0)];

/// A candidate box with its score, regression offsets and (after O-Net) landmarks.
#[derive(Clone, Debug)]
struct Cand {
    b: [f32; 4],
    score: f32,
    reg: [f32; 4],
}

/// One MTCNN detector: three sessions and the buffers reused between calls.
pub struct Mtcnn {
    pnet: Model,
    rnet: Model,
    onet: Model,
    cfg: DetectConfig,
    input: Vec<f32>,
    resized: Vec<u8>,
    halvings: Halvings,
}

impl Mtcnn {
    pub fn new(rt: &Runtime, cfg: DetectConfig) -> Result<Self, DetectError> {
        let mut det = Self {
            pnet: rt.load("mtcnn_pnet")?,
            rnet: rt.load("mtcnn_rnet")?,
            onet: rt.load("mtcnn_onet")?,
            cfg,
            input: Vec::new(),
            resized: Vec::new(),
            halvings: Halvings::default(),
        };
        // Warm-up: the first run of a session allocates its arenas; do it before real frames.
        let blank = RgbImage::filled(64, 64, [128, 128, 128]);
        det.detect(&blank)?;
        Ok(det)
    }

    pub fn config(&self) -> &DetectConfig {
        &self.cfg
    }

    /// Finds every face of at least `min_face` pixels, best score first.
    pub fn detect(&mut self, img: &RgbImage) -> Result<Vec<Face>, DetectError> {
        self.detect_with_min_face(img, self.cfg.min_face)
    }

    pub fn detect_with_min_face(&mut self, img: &RgbImage, min_face: f32) -> Result<Vec<Face>, DetectError> {
        if img.width < 12 || img.height < 12 {
            return Ok(Vec::new());
        }
        let cands = self.stage_pnet(img, min_face.max(12.0))?;
        if cands.is_empty() {
            return Ok(Vec::new());
        }
        let cands = self.stage_rnet(img, cands)?;
        if cands.is_empty() {
            return Ok(Vec::new());
        }
        let mut faces = self.stage_onet(img, cands)?;
        faces.retain(|f| f.score >= self.cfg.min_score);
        faces.sort_by(|a, b| b.score.total_cmp(&a.score));
        Ok(faces)
    }

    /// Re-detects faces already known from a recent frame: O-Net alone on a square crop around
    /// each prior box (slightly widened so a face that moved a little is still inside). Much cheaper
    /// than [`Mtcnn::detect`] (no pyramid, no R-Net); finds no new faces. Used between full
    /// detections (`detect.full_every`).
    pub fn refine(&mut self, img: &RgbImage, priors: &[BBox]) -> Result<Vec<Face>, DetectError> {
        // Candidates around each prior: the box itself, a wider one, and shifts by a fifth of its
        // side, so a face that moved between frames is inside one of them; R-Net picks and
        // regresses, then O-Net scores and places landmarks as in the full cascade.
        let mut cands = Vec::new();
        for p in priors.iter().filter(|p| p.width() >= 4.0 && p.height() >= 4.0) {
            let (cx, cy) = p.center();
            let side = p.width().max(p.height());
            for (scale, dx, dy) in REFINE_JITTER {
                let half = side * 0.5 * scale;
                let (x, y) = (cx + dx * side, cy + dy * side);
                let mut b = [x - half, y - half, x + half, y + half];
                square_and_floor(&mut b);
                cands.push(Cand { b, score: 1.0, reg: [0.0; 4] });
            }
        }
        if cands.is_empty() {
            return Ok(Vec::new());
        }
        // Per prior, the best R-Net candidate (regressed, squared) goes on to O-Net.
        let threshold = self.cfg.stage_thresholds[1];
        let scored = self.rnet_eval(img, cands)?;
        let mut best: Vec<Cand> = scored
            .chunks(REFINE_JITTER.len())
            .filter_map(|group| group.iter().filter(|c| c.score > threshold).max_by(|a, b| a.score.total_cmp(&b.score)).cloned())
            .collect();
        for c in &mut best {
            regress(&mut c.b, &c.reg);
            square_and_floor(&mut c.b);
        }
        // Two priors on the same face (a track that split) give one face.
        let best = nms(best, 0.7, false);
        if best.is_empty() {
            return Ok(Vec::new());
        }
        let mut faces = self.stage_onet(img, best)?;
        faces.retain(|f| f.score >= self.cfg.min_score);
        faces.sort_by(|a, b| b.score.total_cmp(&a.score));
        Ok(faces)
    }

    fn stage_pnet(&mut self, img: &RgbImage, min_face: f32) -> Result<Vec<Cand>, DetectError> {
        let (w, h) = (img.width as f32, img.height as f32);
        let mut scale = PNET_CELL / min_face;
        let mut min_side = w.min(h) * scale;
        let mut all = Vec::new();
        self.halvings.start();
        while min_side >= PNET_CELL {
            let ws = (w * scale).ceil() as usize;
            let hs = (h * scale).ceil() as usize;
            self.halvings.level(img, ws, hs, &mut self.resized)?;
            // Transposed layout [1, ws, hs, 3]: index (x * hs + y) * 3 + c.
            self.input.resize(ws * hs * 3, 0.0);
            for y in 0..hs {
                let row = &self.resized[y * ws * 3..(y + 1) * ws * 3];
                for x in 0..ws {
                    let o = (x * hs + y) * 3;
                    let i = x * 3;
                    self.input[o] = norm(row[i]);
                    self.input[o + 1] = norm(row[i + 1]);
                    self.input[o + 2] = norm(row[i + 2]);
                }
            }
            let out = self.pnet.run(&[("input_1", &[1, ws, hs, 3], &self.input)])?;
            let (reg, prob) = (&out[0], &out[1]);
            // Output maps are [1, W', H', C].
            let (wo, ho) = (prob.shape[1], prob.shape[2]);
            let mut level = Vec::new();
            for xo in 0..wo {
                for yo in 0..ho {
                    let cell = xo * ho + yo;
                    let score = prob.data[cell * 2 + 1];
                    if score < self.cfg.stage_thresholds[0] {
                        continue;
                    }
                    let r = &reg.data[cell * 4..cell * 4 + 4];
                    let (fx, fy) = (xo as f32 * PNET_STRIDE, yo as f32 * PNET_STRIDE);
                    level.push(Cand {
                        b: [
                            ((fx + 1.0) / scale).trunc(),
                            ((fy + 1.0) / scale).trunc(),
                            ((fx + PNET_CELL) / scale).trunc(),
                            ((fy + PNET_CELL) / scale).trunc(),
                        ],
                        score,
                        reg: [r[0], r[1], r[2], r[3]],
                    });
                }
            }
            all.extend(nms(level, 0.5, false));
            scale *= self.cfg.scale_factor;
            min_side *= self.cfg.scale_factor;
        }
        let mut boxes = nms(all, 0.7, false);
        for c in &mut boxes {
            // P-Net regression uses the box size without the +1 of the later stages.
            let bw = c.b[2] - c.b[0];
            let bh = c.b[3] - c.b[1];
            c.b = [c.b[0] + c.reg[0] * bw, c.b[1] + c.reg[1] * bh, c.b[2] + c.reg[2] * bw, c.b[3] + c.reg[3] * bh];
            square_and_floor(&mut c.b);
        }
        Ok(boxes)
    }

    /// R-Net on every candidate: each comes back with its R-Net score and regression.
    fn rnet_eval(&mut self, img: &RgbImage, mut cands: Vec<Cand>) -> Result<Vec<Cand>, DetectError> {
        let n = cands.len();
        self.fill_crops(img, cands.iter().map(|c| c.b), 24)?;
        let out = self.rnet.run(&[("input_2", &[n, 24, 24, 3], &self.input)])?;
        let (reg, prob) = (&out[0], &out[1]);
        for (i, c) in cands.iter_mut().enumerate() {
            c.score = prob.data[i * 2 + 1];
            c.reg.copy_from_slice(&reg.data[i * 4..i * 4 + 4]);
        }
        Ok(cands)
    }

    fn stage_rnet(&mut self, img: &RgbImage, cands: Vec<Cand>) -> Result<Vec<Cand>, DetectError> {
        let threshold = self.cfg.stage_thresholds[1];
        let kept: Vec<Cand> = self.rnet_eval(img, cands)?.into_iter().filter(|c| c.score > threshold).collect();
        let mut kept = nms(kept, 0.7, false);
        for c in &mut kept {
            regress(&mut c.b, &c.reg);
            square_and_floor(&mut c.b);
        }
        Ok(kept)
    }

    fn stage_onet(&mut self, img: &RgbImage, cands: Vec<Cand>) -> Result<Vec<Face>, DetectError> {
        let n = cands.len();
        self.fill_crops(img, cands.iter().map(|c| c.b), 48)?;
        let out = self.onet.run(&[("input_3", &[n, 48, 48, 3], &self.input)])?;
        let (reg, pts, prob) = (&out[0], &out[1], &out[2]);
        let mut kept: Vec<(Cand, [[f32; 2]; 5])> = Vec::new();
        for (i, mut c) in cands.into_iter().enumerate() {
            let score = prob.data[i * 2 + 1];
            if score <= self.cfg.stage_thresholds[2] {
                continue;
            }
            c.score = score;
            c.reg.copy_from_slice(&reg.data[i * 4..i * 4 + 4]);
            let bw = c.b[2] - c.b[0] + 1.0;
            let bh = c.b[3] - c.b[1] + 1.0;
            let p = &pts.data[i * 10..i * 10 + 10];
            let mut lm = [[0f32; 2]; 5];
            for k in 0..5 {
                lm[k] = [bw * p[k] + c.b[0] - 1.0, bh * p[k + 5] + c.b[1] - 1.0];
            }
            regress(&mut c.b, &c.reg);
            kept.push((c, lm));
        }
        let order = nms_indices(&kept.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>(), 0.7, true);
        Ok(order
            .into_iter()
            .map(|i| {
                let (c, landmarks) = &kept[i];
                Face { bbox: BBox { x1: c.b[0], y1: c.b[1], x2: c.b[2], y2: c.b[3] }, score: c.score, landmarks: *landmarks }
            })
            .collect())
    }

    /// Crops every (inclusive, integer) box from the image with zero padding outside it, resizes
    /// each to `side` x `side` and writes them, normalised and transposed, into `self.input`.
    fn fill_crops(&mut self, img: &RgbImage, boxes: impl Iterator<Item = [f32; 4]>, side: usize) -> Result<(), DetectError> {
        self.input.clear();
        let mut patch: Vec<u8> = Vec::new();
        let mut small = vec![0u8; side * side * 3];
        for b in boxes {
            let (x1, y1, x2, y2) = (b[0] as i64, b[1] as i64, b[2] as i64, b[3] as i64);
            let (bw, bh) = ((x2 - x1 + 1).max(1) as usize, (y2 - y1 + 1).max(1) as usize);
            patch.clear();
            patch.resize(bw * bh * 3, 0);
            let sx1 = x1.max(0);
            let sx2 = x2.min(img.width as i64 - 1);
            let sy1 = y1.max(0);
            let sy2 = y2.min(img.height as i64 - 1);
            if sx1 <= sx2 && sy1 <= sy2 {
                let len = (sx2 - sx1 + 1) as usize * 3;
                for sy in sy1..=sy2 {
                    let src = (sy as usize * img.width as usize + sx1 as usize) * 3;
                    let dst = ((sy - y1) as usize * bw + (sx1 - x1) as usize) * 3;
                    patch[dst..dst + len].copy_from_slice(&img.data[src..src + len]);
                }
            }
            {
                let src = Mat::new_rows_cols_with_bytes::<Vec3b>(bh as i32, bw as i32, &patch)?;
                let mut dst = Mat::new_rows_cols_with_bytes_mut::<Vec3b>(side as i32, side as i32, &mut small)?;
                imgproc::resize(&src, &mut dst, Size::new(side as i32, side as i32), 0.0, 0.0, imgproc::INTER_AREA)?;
            }
            let base = self.input.len();
            self.input.resize(base + side * side * 3, 0.0);
            let out = &mut self.input[base..];
            for y in 0..side {
                for x in 0..side {
                    let i = (y * side + x) * 3;
                    let o = (x * side + y) * 3;
                    out[o] = norm(small[i]);
                    out[o + 1] = norm(small[i + 1]);
                    out[o + 2] = norm(small[i + 2]);
                }
            }
        }
        Ok(())
    }
}

/// The pyramid's sources: exact halvings of one frame, made as its levels ask for them.
///
/// Each level is area-resized from the smallest halving that is still at least twice its size,
/// not from the full frame: OpenCV's area resize at a fractional ratio is a scalar loop over
/// every source pixel (with eight levels from a 640x480 frame it was an eighth of all CPU samples
/// past capacity), while an exact halving takes its vectorised 2x2 path. Only even sides are
/// halved, so a level covers exactly the same part of the frame as before. It is not the same
/// image: near the edges of each pixel's box, source pixels are weighted in pairs. Keeping the
/// last step at a ratio of 2 or more keeps that small (on `race.jpg` the levels differ from the
/// direct resize by 0-1.3 grey levels on average); halving down to the level's own size changed
/// the boxes of large faces by up to 7% of their height. On 78 real images (31 video frames,
/// 47 photos) the cascade found the same 173 faces as with direct resizing (mean IoU 0.98,
/// landmarks 0.5% of the face width apart, scores 0.001 apart) in 19% less time.
#[derive(Default)]
struct Halvings {
    /// (width, height, RGB) of the frame halved 1, 2, ... times; the first `made` are current.
    levels: Vec<(usize, usize, Vec<u8>)>,
    made: usize,
}

impl Halvings {
    /// A new frame: no halving is current.
    fn start(&mut self) {
        self.made = 0;
    }

    /// Halving `j` of the frame (0: the frame itself).
    fn source<'a>(&'a self, img: &'a RgbImage, j: usize) -> (usize, usize, &'a [u8]) {
        match j {
            0 => (img.width as usize, img.height as usize, &img.data),
            _ => {
                let (w, h, d) = &self.levels[j - 1];
                (*w, *h, d)
            }
        }
    }

    /// `img` area-resized to `ws` x `hs`, written to `out`.
    fn level(&mut self, img: &RgbImage, ws: usize, hs: usize, out: &mut Vec<u8>) -> Result<(), opencv::Error> {
        let mut j = 0;
        loop {
            let (sw, sh, _) = self.source(img, j);
            if sw % 2 != 0 || sh % 2 != 0 || sw / 2 < 2 * ws || sh / 2 < 2 * hs {
                break;
            }
            if j == self.made {
                self.halve(img, j)?;
            }
            j += 1;
        }
        let (sw, sh, data) = self.source(img, j);
        out.resize(ws * hs * 3, 0);
        area_resize(data, sw, sh, out, ws, hs)
    }

    /// Makes halving `j + 1` from halving `j`.
    fn halve(&mut self, img: &RgbImage, j: usize) -> Result<(), opencv::Error> {
        if self.levels.len() <= j {
            self.levels.resize_with(j + 1, || (0, 0, Vec::new()));
        }
        let mut out = std::mem::take(&mut self.levels[j].2);
        let (sw, sh, data) = self.source(img, j);
        out.resize((sw / 2) * (sh / 2) * 3, 0);
        area_resize(data, sw, sh, &mut out, sw / 2, sh / 2)?;
        self.levels[j] = (sw / 2, sh / 2, out);
        self.made = j + 1;
        Ok(())
    }
}

/// OpenCV's area resize of packed RGB.
fn area_resize(src: &[u8], sw: usize, sh: usize, dst: &mut [u8], dw: usize, dh: usize) -> Result<(), opencv::Error> {
    let src = Mat::new_rows_cols_with_bytes::<Vec3b>(sh as i32, sw as i32, src)?;
    let mut dst = Mat::new_rows_cols_with_bytes_mut::<Vec3b>(dh as i32, dw as i32, dst)?;
    imgproc::resize(&src, &mut dst, Size::new(dw as i32, dh as i32), 0.0, 0.0, imgproc::INTER_AREA)
}

#[inline]
fn norm(v: u8) -> f32 {
    (v as f32 - 127.5) * 0.0078125
}

fn regress(b: &mut [f32; 4], reg: &[f32; 4]) {
    let w = b[2] - b[0] + 1.0;
    let h = b[3] - b[1] + 1.0;
    *b = [b[0] + reg[0] * w, b[1] + reg[1] * h, b[2] + reg[2] * w, b[3] + reg[3] * h];
}

/// Turns a box into the square around its centre (the next net sees square crops), on integers.
fn square_and_floor(b: &mut [f32; 4]) {
    let w = b[2] - b[0];
    let h = b[3] - b[1];
    let l = w.max(h);
    let x1 = b[0] + w * 0.5 - l * 0.5;
    let y1 = b[1] + h * 0.5 - l * 0.5;
    *b = [x1.trunc(), y1.trunc(), (x1 + l).trunc(), (y1 + l).trunc()];
}

fn nms(cands: Vec<Cand>, threshold: f32, use_min: bool) -> Vec<Cand> {
    let keep = nms_indices(&cands, threshold, use_min);
    let mut slots: Vec<Option<Cand>> = cands.into_iter().map(Some).collect();
    keep.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// Greedy non-maximum suppression on inclusive boxes; returns kept indices, best score first.
fn nms_indices(cands: &[Cand], threshold: f32, use_min: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..cands.len()).collect();
    order.sort_by(|&a, &b| cands[b].score.total_cmp(&cands[a].score));
    let area = |b: &[f32; 4]| (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0);
    let mut keep = Vec::new();
    let mut suppressed = vec![false; cands.len()];
    for (k, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let a = &cands[i].b;
        for &j in &order[k + 1..] {
            if suppressed[j] {
                continue;
            }
            let b = &cands[j].b;
            let iw = (a[2].min(b[2]) - a[0].max(b[0]) + 1.0).max(0.0);
            let ih = (a[3].min(b[3]) - a[1].max(b[1]) + 1.0).max(0.0);
            let inter = iw * ih;
            let o = if use_min { inter / area(a).min(area(b)) } else { inter / (area(a) + area(b) - inter) };
            if o > threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(b: [f32; 4], score: f32) -> Cand {
        Cand { b, score, reg: [0.0; 4] }
    }

    #[test]
    fn nms_keeps_best_of_overlapping_and_separate_boxes() {
        let c = vec![cand([0., 0., 10., 10.], 0.8), cand([1., 1., 11., 11.], 0.9), cand([50., 50., 60., 60.], 0.7)];
        let kept = nms(c, 0.5, false);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].score, 0.9);
        assert_eq!(kept[1].score, 0.7);
    }

    /// The pyramid levels of the default settings (min face 40) for a frame, as stage_pnet makes them.
    fn level_sizes(w: u32, h: u32) -> Vec<(usize, usize)> {
        let (mut scale, mut out) = (PNET_CELL / 40.0, Vec::new());
        while (w.min(h) as f32) * scale >= PNET_CELL {
            out.push(((w as f32 * scale).ceil() as usize, (h as f32 * scale).ceil() as usize));
            scale *= 0.709;
        }
        out
    }

    fn direct(img: &RgbImage, ws: usize, hs: usize) -> Vec<u8> {
        let mut out = vec![0; ws * hs * 3];
        area_resize(&img.data, img.width as usize, img.height as usize, &mut out, ws, hs).unwrap();
        out
    }

    #[test]
    fn levels_from_halvings_match_the_direct_area_resize_of_a_real_photo() {
        // 640x428: even sides, so halvings are used.
        let img = crate::image::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/race.jpg")).unwrap();
        let (w, h) = (img.width, img.height);
        let mut halvings = Halvings::default();
        halvings.start();
        let mut out = Vec::new();
        let sizes = level_sizes(w, h);
        assert!(sizes.len() >= 6, "{sizes:?}");
        for (ws, hs) in sizes {
            halvings.level(&img, ws, hs, &mut out).unwrap();
            let want = direct(&img, ws, hs);
            assert_eq!(out.len(), want.len());
            let diffs: Vec<i32> = out.iter().zip(&want).map(|(&a, &b)| (a as i32 - b as i32).abs()).collect();
            let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
            // Measured: 0.0-1.23 per level.
            assert!(mean < 2.0, "level {ws}x{hs}: mean |diff| {mean:.3} from the direct resize");
        }
        // Halvings were used: 137x92 comes from 320x214, 69x46 from 160x107 (odd: no further).
        assert!(halvings.made == 2, "made {}", halvings.made);
    }

    #[test]
    fn odd_sides_are_never_halved() {
        let mut img = RgbImage::filled(641, 479, [0, 0, 0]);
        for (i, v) in img.data.iter_mut().enumerate() {
            *v = (i * 7 % 251) as u8;
        }
        let mut halvings = Halvings::default();
        halvings.start();
        let mut out = Vec::new();
        for (ws, hs) in level_sizes(641, 479) {
            halvings.level(&img, ws, hs, &mut out).unwrap();
            assert_eq!(out, direct(&img, ws, hs), "level {ws}x{hs}");
        }
        assert_eq!(halvings.made, 0);
    }

    #[test]
    fn square_keeps_centre() {
        let mut b = [10.0, 20.0, 30.0, 60.0];
        square_and_floor(&mut b);
        assert_eq!(b[2] - b[0], b[3] - b[1]);
        assert_eq!(b, [0.0, 20.0, 40.0, 60.0]);
    }
}
