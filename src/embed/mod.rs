//! Alignment and embedding: aligned 150x150 crops in, L2-normalised 128-d embeddings out, in
//! batches built in one reused contiguous buffer.

pub mod align;
pub mod batcher;
pub mod config;
pub mod stage;

pub mod head;
pub use align::{CROP_BYTES, CROP_SIDE, CropBox, align, align_into, crop_box};
pub use config::EmbedConfig;

use crate::infer::{InferError, Model, Runtime};

/// Dimension of the embedding.
pub const DIM: usize = 128;
/// Card name of the embedder under `models/`.
pub const CARD: &str = "faceapi_recognition";
/// Card name of a fine-tuned embedder in its folder (`embed.model`).
pub const FINETUNED_CARD: &str = "embedder";
/// Used when the card has no calibrated threshold.
pub const FALLBACK_THRESHOLD: f32 = 0.5;

pub type Embedding = Vec<f32>;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(transparent)]
    Infer(#[from] InferError),
    #[error("crop buffer has {got} bytes, expected a multiple of {CROP_BYTES}")]
    BadCrop { got: usize },
    #[error("embedder returned shape {0:?}, expected [N, {DIM}]")]
    BadOutput(Vec<usize>),
    #[error(transparent)]
    Head(#[from] head::HeadError),
    #[error("embed.head was trained on model `{parent}`, but this facestream embeds with `{running}`: train the head again")]
    HeadParent { parent: String, running: String },
}

/// One embedding session (one per worker).
pub struct Embedder {
    model: Model,
    input: Vec<f32>,
    /// The model card's calibrated distance threshold (or the fallback); what the pipeline uses
    /// is resolved once by `identify::OperatingPoint::resolve`.
    pub threshold: f32,
    /// Where the card lives: its open-set calibration (`identify::calibration`) is beside it.
    pub models_dir: std::path::PathBuf,
    /// The embedder's model card file (the converted one, or `embed.model`'s).
    pub card_path: std::path::PathBuf,
    /// A trained projection head applied to every embedding (`embed.head`).
    head: Option<head::ProjectionHead>,
}

impl Embedder {
    pub fn new(rt: &Runtime, cfg: &EmbedConfig) -> Result<Self, EmbedError> {
        Self::load(rt, cfg, None)
    }

    /// The converted embedder, or the fine-tuned one in `model` (`embed.model`, resolved).
    pub fn load(rt: &Runtime, _cfg: &EmbedConfig, model: Option<&std::path::Path>) -> Result<Self, EmbedError> {
        let (dir, card) = match model {
            Some(dir) => (dir.to_path_buf(), FINETUNED_CARD),
            None => (rt.models_dir.clone(), CARD),
        };
        let model = rt.load_from(&dir, card)?;
        if model.card.outputs.first().and_then(|o| o.shape.last()) != Some(&(DIM as i64)) {
            return Err(EmbedError::BadOutput(model.card.outputs.first().map(|o| o.shape.iter().map(|&d| d.max(0) as usize).collect()).unwrap_or_default()));
        }
        if dir != rt.models_dir {
            tracing::info!(model = %dir.display(), id = %model.card.id, "embeddings are made by a fine-tuned embedder (embed.model)");
        }
        let threshold = model.card.calibration_f32("threshold").unwrap_or(FALLBACK_THRESHOLD);
        let card_path = dir.join(format!("{card}.toml"));
        let mut e = Self { model, input: Vec::new(), threshold, models_dir: dir, card_path, head: None };
        e.embed_crops(&vec![128u8; CROP_BYTES])?;
        Ok(e)
    }

    /// With a trained head (`embed.head`): embeddings go through it, the model id becomes the
    /// head's (the gallery store then refuses samples of the bare embedder: re-enroll) and the
    /// threshold the head's calibrated one.
    pub fn with_head(mut self, dir: Option<&std::path::Path>) -> Result<Self, EmbedError> {
        let Some(dir) = dir else { return Ok(self) };
        let h = head::ProjectionHead::load(dir)?;
        if h.parent != self.model.card.id {
            return Err(EmbedError::HeadParent { parent: h.parent, running: self.model.card.id.clone() });
        }
        tracing::info!(head = %dir.display(), id = %h.id, threshold = h.threshold, "embeddings go through a trained head");
        self.threshold = h.threshold;
        self.head = Some(h);
        Ok(self)
    }

    /// Stable id of the model, stored with every enrolled embedding.
    pub fn model_id(&self) -> &str {
        self.head.as_ref().map_or(&self.model.card.id, |h| &h.id)
    }

    /// Embeds crops as [`Embedder::embed_crops`]; with `flip` each crop's mirror image goes in
    /// the same batch and the two embeddings are averaged (test-time augmentation: on LFW it
    /// raised DIR at FAR 1% with a 100-person gallery from 0.73 to 0.81; twice the cost).
    pub fn embed_crops_flip(&mut self, crops: &[u8], flip: bool) -> Result<Vec<Embedding>, EmbedError> {
        if !flip {
            return self.embed_crops(crops);
        }
        if !crops.len().is_multiple_of(CROP_BYTES) {
            return Err(EmbedError::BadCrop { got: crops.len() });
        }
        let n = crops.len() / CROP_BYTES;
        let mut both = Vec::with_capacity(crops.len() * 2);
        both.extend_from_slice(crops);
        for c in crops.chunks_exact(CROP_BYTES) {
            both.extend_from_slice(&align::mirrored(c));
        }
        let all = self.embed_crops(&both)?;
        Ok((0..n).map(|i| normalized(&all[i].iter().zip(&all[n + i]).map(|(a, b)| a + b).collect::<Vec<_>>())).collect())
    }

    /// Embeds `n` packed 150x150 RGB crops laid end to end in `crops`.
    pub fn embed_crops(&mut self, crops: &[u8]) -> Result<Vec<Embedding>, EmbedError> {
        if !crops.len().is_multiple_of(CROP_BYTES) {
            return Err(EmbedError::BadCrop { got: crops.len() });
        }
        let n = crops.len() / CROP_BYTES;
        if n == 0 {
            return Ok(Vec::new());
        }
        self.input.clear();
        self.input.extend(crops.iter().map(|&v| v as f32));
        let out = self.model.run(&[("input", &[n, CROP_SIDE, CROP_SIDE, 3], &self.input)])?;
        let desc = &out[0];
        if desc.shape != [n, DIM] {
            return Err(EmbedError::BadOutput(desc.shape.clone()));
        }
        Ok(desc.data.chunks_exact(DIM).map(|v| {
            let e = normalized(v);
            match &self.head {
                Some(h) => h.apply(&e),
                None => e,
            }
        }).collect())
    }
}

/// L2-normalises a vector (a zero vector stays zero).
pub fn normalized(v: &[f32]) -> Embedding {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 { v.iter().map(|x| x / n).collect() } else { v.to_vec() }
}

/// The one distance of the project: Euclidean distance between L2-normalised embeddings (0..2).
/// `n` seeded pseudo-random unit vectors of `DIM`, node-major (xorshift64): synthetic embeddings
/// for tests, fuzz targets and benchmarks, the same for the same seed everywhere.
pub fn random_units(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut out = Vec::with_capacity(n * DIM);
    for _ in 0..n {
        let v: Vec<f32> = (0..DIM)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        out.extend(normalized(&v));
    }
    out
}

pub fn distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_of_unit_vectors() {
        let a = normalized(&[3.0, 4.0]);
        assert!((a[0] - 0.6).abs() < 1e-6);
        assert_eq!(distance(&a, &a), 0.0);
        let b = normalized(&[-3.0, -4.0]);
        assert!((distance(&a, &b) - 2.0).abs() < 1e-6);
    }
}
