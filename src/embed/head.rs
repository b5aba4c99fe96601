//! A trained projection head (`facestream train --head`) applied after the embedder:
//! `normalise(x W^T + b)`. Read from `head.safetensors` (tensors `w`, `b`) and `head.toml` (its
//! model card: the id that embeddings made through it are stored under, and its threshold).

use std::path::{Path, PathBuf};

use super::{DIM, Embedding, normalized};

pub const WEIGHTS: &str = "head.safetensors";
pub const CARD: &str = "head.toml";

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("embed.head {path}: {reason} (a folder written by `facestream train --head`)")]
    Bad { path: PathBuf, reason: String },
}

#[derive(Clone, Debug)]
pub struct ProjectionHead {
    w: Vec<f32>,
    b: Vec<f32>,
    /// `<parent>+head-<hash>`: the model id of embeddings made through the head.
    pub id: String,
    pub parent: String,
    /// The distance threshold calibrated on the head's validation identities.
    pub threshold: f32,
}

#[derive(serde::Deserialize)]
struct Card {
    id: String,
    parent_model: String,
    dim: usize,
    threshold: f32,
}

impl ProjectionHead {
    pub fn load(dir: &Path) -> Result<Self, HeadError> {
        let bad = |reason: String| HeadError::Bad { path: dir.to_path_buf(), reason };
        let text = std::fs::read_to_string(dir.join(CARD)).map_err(|e| bad(format!("cannot read {CARD}: {e}")))?;
        let card: Card = toml::from_str(&text).map_err(|e| bad(format!("{CARD}: {e}")))?;
        if card.dim != DIM {
            return Err(bad(format!("the head is {}-dimensional, the embedder gives {DIM}", card.dim)));
        }
        let t = candle_core::safetensors::load(dir.join(WEIGHTS), &candle_core::Device::Cpu).map_err(|e| bad(format!("{WEIGHTS}: {e}")))?;
        let vec = |name: &str, len: usize| -> Result<Vec<f32>, HeadError> {
            let v: Vec<f32> = t.get(name).ok_or_else(|| bad(format!("{WEIGHTS} has no tensor `{name}`")))?.flatten_all().and_then(|x| x.to_vec1()).map_err(|e| bad(e.to_string()))?;
            if v.len() != len || v.iter().any(|x| !x.is_finite()) {
                return Err(bad(format!("tensor `{name}` must hold {len} finite numbers")));
            }
            Ok(v)
        };
        if !(0.0..=2.0).contains(&card.threshold) {
            return Err(bad(format!("threshold {} is not a unit-vector distance", card.threshold)));
        }
        Ok(Self { w: vec("w", DIM * DIM)?, b: vec("b", DIM)?, id: card.id, parent: card.parent_model, threshold: card.threshold })
    }

    pub fn apply(&self, x: &[f32]) -> Embedding {
        let y: Vec<f32> = (0..DIM).map(|r| self.b[r] + self.w[r * DIM..(r + 1) * DIM].iter().zip(x).map(|(w, v)| w * v).sum::<f32>()).collect();
        normalized(&y)
    }
}
