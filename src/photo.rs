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
    crops: Vec<u8>,
}

impl Analyzer {
    pub fn new(cfg: &Config) -> Result<Self, PhotoError> {
        let rt = Runtime::get(&cfg.infer)?;
        Ok(Self {
            detector: Mtcnn::new(&rt, cfg.detect.clone())?,
            embedder: Embedder::new(&rt, &cfg.embed)?,
            rotate: cfg.embed.rotate,
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
        let mut embs = self.embedder.embed_crops(&self.crops)?.into_iter();
        Ok(slots.into_iter().map(|ok| if ok { embs.next() } else { None }).collect())
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
        let img = crate::image::load(path)?;
        let faces = analyzer.detect(&img)?;
        let Some(i) = primary_face(&faces) else {
            return Err(EnrollError::NoFace { path: path.clone() });
        };
        if faces.len() > 1 {
            tracing::warn!(file = %path.display(), faces = faces.len(), "several faces in an enrollment photo; using the most confident one");
        }
        let emb = analyzer.embed(&img, &faces[i..=i])?.pop().flatten().ok_or_else(|| EnrollError::NoFace { path: path.clone() })?;
        gallery.add(name, emb)?;
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
    #[error("{}: {count} faces found; enroll a photo with one face, or give --box x1,y1,x2,y2 to choose", path.display())]
    SeveralFaces { path: std::path::PathBuf, count: usize },
    #[error(transparent)]
    Store(#[from] crate::gallery::store::StoreError),
}

/// A face accepted for enrollment.
pub struct Enrollable {
    pub face: Face,
    pub embedding: Embedding,
    pub quality: f32,
    pub image_sha256: String,
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
    let faces = analyzer.detect(&img)?;
    let i = match (faces.len(), bbox) {
        (0, _) => return Err(EnrollError::NoFace { path: name.to_path_buf() }),
        (1, None) => 0,
        (n, None) => return Err(EnrollError::SeveralFaces { path: name.to_path_buf(), count: n }),
        (_, Some(b)) => {
            let (i, iou) = faces.iter().enumerate().map(|(i, f)| (i, f.bbox.iou(&b))).fold((0, -1.0f32), |a, x| if x.1 > a.1 { x } else { a });
            if iou < 0.3 {
                return Err(EnrollError::NoFace { path: name.to_path_buf() });
            }
            i
        }
    };
    let face = faces[i].clone();
    let embedding = analyzer.embed(&img, std::slice::from_ref(&face))?.pop().flatten().ok_or_else(|| EnrollError::NoFace { path: name.to_path_buf() })?;
    let quality = crate::track::quality::geometric(&face);
    let image_sha256 = format!("{:x}", sha2::Sha256::digest(bytes));
    Ok(Enrollable { face, embedding, quality, image_sha256 })
}
