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
    /// Photos (enrollment, recognize, identify, eval): also embed each face's mirror image and
    /// average the two (test-time augmentation): fewer strangers named at equal recall
    /// (BENCHMARKS.md), twice the embedding cost.
    pub flip: bool,
    /// The same for the faces of tracks. Off by default: it doubles the pipeline's embedding
    /// cost (4 cameras at 10 fps: p99 capture-to-event 741 ms instead of about 100 ms).
    pub flip_tracks: bool,
    /// A head written by `facestream train --head` (its folder, relative to the config file):
    /// every embedding goes through it. Embeddings enrolled without it (or with another head)
    /// are refused at start: re-enroll.
    pub head: Option<std::path::PathBuf>,
    /// A fine-tuned embedder written by `facestream train --finetune` (its folder, relative to
    /// the config file): embeddings are made by it and stored under its model id. Faces enrolled
    /// with another embedder are refused at start: `gallery reembed` or re-enroll.
    pub model: Option<std::path::PathBuf>,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        Self { threshold: None, rotate: false, flip: true, flip_tracks: false, head: None, model: None }
    }
}

impl EmbedConfig {
    /// Every problem as (key, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if let Some(t) = self.threshold
            && !(0.0..=2.0).contains(&t) {
                p.push(("threshold".into(), format!("must be between 0 and 2 (unit-vector distance), got {t}")));
            }
        p
    }

    /// The first problem, if any.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }
}
