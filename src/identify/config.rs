//! The `[identify]` section: the open-set threshold and margin, and the per-track vote.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentifyConfig {
    /// Distance at or below which a match counts. Unset: chosen from the embedder's open-set
    /// calibration for `target_far` at the gallery's size, else the model card's value.
    pub threshold: Option<f32>,
    /// Share of strangers (people not enrolled) that may get a name: picks the threshold from
    /// the calibration (`facestream calibrate`) for the gallery's size at start. Unset: the card.
    pub target_far: Option<f64>,
    /// The best person must be this much nearer than the second-best person to get a vote.
    pub margin: f32,
    /// Votes a person needs before the track is named.
    pub min_votes: u32,
    /// Non-matching embeddings needed before the track is reported as `unknown`.
    pub unknown_votes: u32,
    /// Faces of a track whose quality (size, detector score, frontal pose, sharpness; 0..1) is
    /// below this never vote.
    pub quality_floor: f32,
    /// Decide on the track, not the frame: each vote compares the quality-weighted mean of the
    /// track's embeddings so far with the gallery (off: each embedding alone).
    pub aggregate: bool,
}

impl Default for IdentifyConfig {
    fn default() -> Self {
        Self { threshold: None, target_far: Some(0.001), margin: 0.05, min_votes: 2, unknown_votes: 3, quality_floor: 0.15, aggregate: true }
    }
}

impl IdentifyConfig {
    /// Every problem as (key, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if let Some(t) = self.threshold
            && !(0.0..=2.0).contains(&t) {
                p.push(("threshold".into(), format!("must be between 0 and 2, got {t}")));
            }
        if let Some(f) = self.target_far
            && !(1e-6..=0.5).contains(&f)
        {
            p.push(("target_far".into(), format!("must be between 0.000001 and 0.5 (a share of strangers), got {f}")));
        }
        if !(0.0..=2.0).contains(&self.margin) {
            p.push(("margin".into(), format!("must be between 0 and 2, got {}", self.margin)));
        }
        if !(0.0..=1.0).contains(&self.quality_floor) {
            p.push(("quality_floor".into(), format!("must be in [0, 1], got {}", self.quality_floor)));
        }
        if self.min_votes == 0 || self.unknown_votes == 0 {
            p.push(("min_votes".into(), "min_votes and unknown_votes must be at least 1".into()));
        }
        p
    }

    /// The first problem, if any.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }
}

