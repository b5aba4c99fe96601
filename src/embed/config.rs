//! Embedder settings: alignment variant and the decision threshold.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbedConfig {
    /// Euclidean distance between L2-normalised embeddings at or below which two faces are the same
    /// person. `None` takes the calibrated value from the embedder's model card.
    pub threshold: Option<f32>,
    /// Rotate the crop so the eyes are level before embedding (off: face-api's own rule).
    pub rotate: bool,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        Self { threshold: None, rotate: false }
    }
}

impl EmbedConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if let Some(t) = self.threshold {
            if !(0.0..=2.0).contains(&t) {
                return Err(("threshold".into(), format!("must be between 0 and 2 (unit-vector distance), got {t}")));
            }
        }
        Ok(())
    }
}
