//! Still-photo analysis shared by the command line, enrollment and the HTTP API: detect every face,
//! align and embed them in one batch, and choose "the" face of a photo.

use crate::config::Config;
use crate::detect::{DetectError, Face, Mtcnn};
use crate::embed::{CROP_BYTES, EmbedError, Embedder, Embedding, align_into, crop_box};
use crate::image::RgbImage;
use crate::infer::{InferError, Runtime};

#[derive(Debug, thiserror::Error)]
pub enum PhotoError {
    #[error(transparent)]
    Detect(#[from] DetectError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Infer(#[from] InferError),
    #[error("alignment: {0}")]
    Align(String),
}

/// A detector and an embedder sharing one runtime.
pub struct Analyzer {
    pub detector: Mtcnn,
    pub embedder: Embedder,
    rotate: bool,
    /// Also embed the mirrored crop and average the two (`embed.flip`).
    pub flip: bool,
    crops: Vec<u8>,
}

impl Analyzer {
    pub fn new(cfg: &Config) -> Result<Self, PhotoError> {
        let rt = Runtime::get(&cfg.infer)?;
        Ok(Self {
            detector: Mtcnn::new(&rt, cfg.detect.clone())?,
            embedder: Embedder::load(&rt, &cfg.embed, cfg.embed_model().as_deref())?.with_head(cfg.embed_head().as_deref())?,
            rotate: cfg.embed.rotate,
            flip: cfg.embed.flip,
            crops: Vec::new(),
        })
    }

    pub fn detect(&mut self, img: &RgbImage) -> Result<Vec<Face>, PhotoError> {
        Ok(self.detector.detect(img)?)
    }

    /// Embeds the given faces of `img` in one batch (faces whose landmarks give no crop get `None`).
    pub fn embed(&mut self, img: &RgbImage, faces: &[Face]) -> Result<Vec<Option<Embedding>>, PhotoError> {
        self.crops.clear();
        let mut slots = Vec::with_capacity(faces.len());
        for f in faces {
            match crop_box(&f.landmarks, self.rotate) {
                Some(cb) => {
                    let start = self.crops.len();
                    self.crops.resize(start + CROP_BYTES, 0);
                    align_into(img, &cb, &mut self.crops[start..]).map_err(|e| PhotoError::Align(e.to_string()))?;
                    slots.push(true);
                }
                None => slots.push(false),
            }
        }
        let mut embs = self.embedder.embed_crops_flip(&self.crops, self.flip)?.into_iter();
        Ok(slots.into_iter().map(|ok| if ok { embs.next() } else { None }).collect())
    }

    /// The aligned crop the embedder would see for `face` (for quality checks).
    pub fn crop(&self, img: &RgbImage, face: &Face) -> Option<Vec<u8>> {
        let cb = crop_box(&face.landmarks, self.rotate)?;
        let mut out = vec![0u8; CROP_BYTES];
        align_into(img, &cb, &mut out).ok()?;
        Some(out)
    }

    /// Detects and embeds every face.
    pub fn analyze(&mut self, img: &RgbImage) -> Result<Vec<(Face, Option<Embedding>)>, PhotoError> {
        let faces = self.detect(img)?;
        let embs = self.embed(img, &faces)?;
        Ok(faces.into_iter().zip(embs).collect())
    }
}

/// The face a single-person photo is about: highest detector confidence, then the larger box.
/// Never "the largest face" alone: printed faces on clothing are often larger than the real one.
pub fn primary_face(faces: &[Face]) -> Option<usize> {
    (0..faces.len()).max_by(|&a, &b| {
        let (fa, fb) = (&faces[a], &faces[b]);
        (fa.score, fa.bbox.area()).partial_cmp(&(fb.score, fb.bbox.area())).unwrap_or(std::cmp::Ordering::Equal)
    })
}

/// Enrolls each (name, photo) pair into the gallery: the photo's main face, refused when none.
pub fn enroll_photos(
    analyzer: &mut Analyzer,
    photos: &[(String, std::path::PathBuf)],
    gallery: &mut crate::gallery::Gallery,
) -> Result<usize, EnrollError> {
    let mut n = 0;
    for (name, path) in photos {
        // The same checks as `facestream enroll`: one face (or a clearly dominant one), big,
        // sharp and frontal enough.
        let e = enrollable(analyzer, path, None)?;
        gallery.add(name, e.embedding)?;
        tracing::info!(person = %name, file = %path.display(), "enrolled");
        n += 1;
    }
    Ok(n)
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Photo(#[from] PhotoError),
    #[error(transparent)]
    Gallery(#[from] crate::gallery::GalleryError),
    #[error("{}: no face found to enroll", path.display())]
    NoFace { path: std::path::PathBuf },
    #[error("{}: {count} faces found ({}) and none clearly dominates; enroll a photo with one face, or give --box x1,y1,x2,y2 to choose", path.display(), boxes.iter().map(|b| format!("[{:.0},{:.0},{:.0},{:.0}]", b[0], b[1], b[2], b[3])).collect::<Vec<_>>().join(" "))]
    SeveralFaces { path: std::path::PathBuf, count: usize, boxes: Vec<[f32; 4]> },
    #[error("{}: the face is too small to enroll: {side:.0} px, at least {min:.0} px needed (use a closer or larger photo)", path.display())]
    TooSmall { path: std::path::PathBuf, side: f32, min: f32 },
    #[error("{}: the face is too blurred to enroll: sharpness {value:.1}, at least {min:.1} needed (use a sharper photo)", path.display())]
    Blurred { path: std::path::PathBuf, value: f32, min: f32 },
    #[error("{}: the face is turned too far from the camera to enroll: yaw {yaw:.2} (nose offset over eye distance), at most {max:.2} allowed (use a frontal photo)", path.display())]
    Profile { path: std::path::PathBuf, yaw: f32, max: f32 },
    #[error(transparent)]
    Store(#[from] crate::gallery::store::StoreError),
}

/// Smallest face side (pixels) accepted for enrollment: the embedder sees a 150x150 crop, and a
/// smaller face is mostly upsampling (the signers of the 640x480 fixture clips measure 53-67).
pub const ENROLL_MIN_FACE: f32 = 48.0;
/// Least sharpness (Laplacian variance at the face's own resolution) accepted for enrollment.
/// Measured: fixture portraits 94-1083, frames of the 640x480 fixture clips 33-252, a sample of
/// 28 news photos (LFW) 15.5-619; the same images blurred with a 6-pixel Gaussian 0.8-1.5.
pub const ENROLL_MIN_SHARPNESS: f32 = 5.0;
/// Largest yaw accepted for enrollment (nose offset from the eye midpoint over the eye distance,
/// along the eye line: 0 frontal, about 0.5 in profile).
pub const ENROLL_MAX_YAW: f32 = 0.35;
/// A face dominates a photo when its area is at least this many times every other face's.
const DOMINANT_AREA: f32 = 2.5;

/// Yaw from the 5 landmarks, measured along the eye line (so a tilted head is not a turned one).
pub fn yaw(face: &Face) -> f32 {
    let [le, re, nose, _, _] = face.landmarks;
    let (dx, dy) = (re[0] - le[0], re[1] - le[1]);
    let eye_dist = dx.hypot(dy);
    if eye_dist < 1e-3 {
        return 1.0;
    }
    let mid = [(le[0] + re[0]) / 2.0, (le[1] + re[1]) / 2.0];
    ((nose[0] - mid[0]) * dx + (nose[1] - mid[1]) * dy) / (eye_dist * eye_dist)
}

/// The one face of a photo with several that clearly is the subject: the largest by a wide margin
/// and nearer the centre than every other face. `None` when no face dominates.
pub fn dominant_face(faces: &[Face], width: u32, height: u32) -> Option<usize> {
    let largest = (0..faces.len()).max_by(|&a, &b| faces[a].bbox.area().total_cmp(&faces[b].bbox.area()))?;
    let centre = |f: &Face| ((f.bbox.x1 + f.bbox.x2) / 2.0 - width as f32 / 2.0).hypot((f.bbox.y1 + f.bbox.y2) / 2.0 - height as f32 / 2.0);
    let l = &faces[largest];
    let dominates = faces.iter().enumerate().filter(|(i, _)| *i != largest).all(|(_, f)| l.bbox.area() >= DOMINANT_AREA * f.bbox.area() && centre(l) <= centre(f));
    dominates.then_some(largest)
}

/// Up to `count` distinct, best-quality enrollable faces of a clip's frames: each frame's main
/// face (by confidence, never by size: a print on clothing can be larger), refused frames
/// skipped; picked best first, each at least `min_gap` frames from the others and farther than
/// 0.05 from them in embedding space, all within `same_person` of the best one.
pub fn video_enrollables(analyzer: &mut Analyzer, frames: &[(std::time::Duration, RgbImage)], clip: &std::path::Path, count: usize, same_person: f32) -> Vec<(usize, Enrollable)> {
    let mut candidates: Vec<(usize, Enrollable)> = Vec::new();
    for (i, (pts, img)) in frames.iter().enumerate() {
        let Ok(faces) = analyzer.detect(img) else { continue };
        let Some(main) = primary_face(&faces) else { continue };
        let b = faces[main].bbox;
        let tag = format!("{}@{:.2}s", clip.display(), pts.as_secs_f64());
        if let Ok(e) = enrollable_image(analyzer, img, std::path::Path::new(&tag), Some(b), tag.clone()) {
            candidates.push((i, e));
        }
    }
    candidates.sort_by(|a, b| b.1.quality.total_cmp(&a.1.quality));
    let mut picked: Vec<(usize, Enrollable)> = Vec::new();
    let min_gap = (frames.len() / (count * 2).max(1)).max(1);
    for (i, e) in candidates {
        if picked.len() >= count {
            break;
        }
        let same = picked.first().is_none_or(|(_, best)| crate::embed::distance(&best.embedding, &e.embedding) <= same_person);
        let distinct = picked.iter().all(|(j, p)| i.abs_diff(*j) >= min_gap && crate::embed::distance(&p.embedding, &e.embedding) > 0.05);
        if same && distinct {
            picked.push((i, e));
        }
    }
    picked
}

/// Refuses faces that would poison the gallery: too small, blurred, or turned away.
fn check_quality(analyzer: &Analyzer, img: &RgbImage, face: &Face, name: &std::path::Path) -> Result<f32, EnrollError> {
    let side = face.bbox.width().min(face.bbox.height());
    if side < ENROLL_MIN_FACE {
        return Err(EnrollError::TooSmall { path: name.to_path_buf(), side, min: ENROLL_MIN_FACE });
    }
    let y = yaw(face);
    if y.abs() > ENROLL_MAX_YAW {
        return Err(EnrollError::Profile { path: name.to_path_buf(), yaw: y, max: ENROLL_MAX_YAW });
    }
    if analyzer.crop(img, face).is_none() {
        return Err(EnrollError::NoFace { path: name.to_path_buf() });
    }
    let sharp = crate::track::quality::native_sharpness(img, face);
    if sharp < ENROLL_MIN_SHARPNESS {
        return Err(EnrollError::Blurred { path: name.to_path_buf(), value: sharp, min: ENROLL_MIN_SHARPNESS });
    }
    Ok(sharp)
}

/// A face accepted for enrollment.
pub struct Enrollable {
    pub face: Face,
    /// Faces in the photo (more than one: the dominant face was taken).
    pub faces_in_photo: usize,
    pub embedding: Embedding,
    pub quality: f32,
    pub image_sha256: String,
    /// The aligned face as the embedder saw it, as a JPEG: kept with the sample (thumbnails, and
    /// `gallery reembed` with a new model).
    pub crop_jpeg: Option<Vec<u8>>,
}

/// The aligned face (as the embedder sees it) as a JPEG.
pub fn face_crop_jpeg(img: &RgbImage, face: &Face) -> Option<Vec<u8>> {
    let cb = crate::embed::crop_box(&face.landmarks, false)?;
    let mut crop = vec![0u8; crate::embed::CROP_BYTES];
    crate::embed::align_into(img, &cb, &mut crop).ok()?;
    let side = crate::embed::CROP_SIDE as u32;
    crate::image::jpeg(&crop, side, side, 90)
}

/// Finds the one face to enroll in a photo: refused when there is none, or several and no `bbox`
/// says which (then the face overlapping the box most is taken).
pub fn enrollable(analyzer: &mut Analyzer, path: &std::path::Path, bbox: Option<crate::detect::BBox>) -> Result<Enrollable, EnrollError> {
    let bytes = std::fs::read(path).map_err(|e| crate::image::ImageError::Open { path: path.to_path_buf(), error: e })?;
    enrollable_bytes(analyzer, &bytes, path, bbox)
}

pub fn enrollable_bytes(analyzer: &mut Analyzer, bytes: &[u8], name: &std::path::Path, bbox: Option<crate::detect::BBox>) -> Result<Enrollable, EnrollError> {
    use sha2::Digest;
    let img = crate::image::decode(bytes, name)?;
    enrollable_image(analyzer, &img, name, bbox, format!("{:x}", sha2::Sha256::digest(bytes)))
}

/// [`enrollable_bytes`] on a decoded image (a video frame); `image_sha256` identifies the source.
pub fn enrollable_image(analyzer: &mut Analyzer, img: &RgbImage, name: &std::path::Path, bbox: Option<crate::detect::BBox>, image_sha256: String) -> Result<Enrollable, EnrollError> {
    let faces = analyzer.detect(img)?;
    let i = match (faces.len(), bbox) {
        (0, _) => return Err(EnrollError::NoFace { path: name.to_path_buf() }),
        (1, None) => 0,
        (n, None) => match dominant_face(&faces, img.width, img.height) {
            Some(i) => {
                let b = &faces[i].bbox;
                tracing::warn!(file = %name.display(), faces = n, bbox = ?[b.x1, b.y1, b.x2, b.y2], "several faces; enrolling the dominant one (largest and most central by a wide margin)");
                i
            }
            None => {
                let boxes = faces.iter().map(|f| [f.bbox.x1, f.bbox.y1, f.bbox.x2, f.bbox.y2]).collect();
                return Err(EnrollError::SeveralFaces { path: name.to_path_buf(), count: n, boxes });
            }
        },
        (_, Some(b)) => {
            let (i, iou) = faces.iter().enumerate().map(|(i, f)| (i, f.bbox.iou(&b))).fold((0, -1.0f32), |a, x| if x.1 > a.1 { x } else { a });
            if iou < 0.3 {
                return Err(EnrollError::NoFace { path: name.to_path_buf() });
            }
            i
        }
    };
    let face = faces[i].clone();
    let sharpness = check_quality(analyzer, img, &face, name)?;
    let embedding = analyzer.embed(img, std::slice::from_ref(&face))?.pop().flatten().ok_or_else(|| EnrollError::NoFace { path: name.to_path_buf() })?;
    // Geometry (size, score, pose) times sharpness, saturating at twice the floor.
    let quality = crate::track::quality::geometric(&face) * (sharpness / (4.0 * ENROLL_MIN_SHARPNESS)).min(1.0);
    let crop_jpeg = face_crop_jpeg(img, &face);
    Ok(Enrollable { face, faces_in_photo: faces.len(), embedding, quality, image_sha256, crop_jpeg })
}
