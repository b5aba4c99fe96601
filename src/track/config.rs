//! Tracker and embedding-policy settings.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackConfig {
    /// Detections at or above this score start tracks and are matched first.
    pub high_score: f32,
    /// Detections between `low_score` and `high_score` only extend existing tracks (ByteTrack's
    /// second association: blurred or half-turned faces keep their track instead of breaking it).
    pub low_score: f32,
    /// Minimum IoU between a predicted track box and a detection to match them (first stage).
    pub match_iou: f32,
    /// Minimum IoU for the second (low-score) stage.
    pub low_match_iou: f32,
    /// Hits before a tentative track is confirmed (and announced).
    pub confirm_hits: u32,
    /// Processed frames a track may go unseen before it ends.
    pub max_age: u32,
    /// Most embeddings computed for one track.
    pub max_embeddings: u32,
    /// Re-embed when the face quality beats the best so far by this factor.
    pub quality_gain: f32,
    /// Re-embed at least this often (seconds) while a track is unidentified, within max_embeddings.
    pub refresh_seconds: f32,
    /// Once a track's identity is decided (known or unknown), re-embed only this often (seconds)
    /// to confirm or correct it, within max_embeddings.
    pub decided_refresh_seconds: f32,
}

impl Default for TrackConfig {
    fn default() -> Self {
        Self {
            high_score: 0.95,
            low_score: 0.7,
            match_iou: 0.2,
            low_match_iou: 0.4,
            confirm_hits: 3,
            max_age: 15,
            max_embeddings: 8,
            quality_gain: 1.15,
            refresh_seconds: 0.5,
            decided_refresh_seconds: 2.0,
        }
    }
}

impl TrackConfig {
    /// Every problem as (key, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let unit = |k: &str, v: f32| {
            if (0.0..=1.0).contains(&v) { Ok(()) } else { Err((k.to_string(), format!("must be in [0, 1], got {v}"))) }
        };
        if let Err(e) = unit("high_score", self.high_score) {
            p.push(e);
        }
        if let Err(e) = unit("low_score", self.low_score) {
            p.push(e);
        }
        if let Err(e) = unit("match_iou", self.match_iou) {
            p.push(e);
        }
        if let Err(e) = unit("low_match_iou", self.low_match_iou) {
            p.push(e);
        }
        if self.low_score > self.high_score {
            p.push(("low_score".into(), format!("must not exceed high_score ({})", self.high_score)));
        }
        if self.confirm_hits == 0 {
            p.push(("confirm_hits".into(), "must be at least 1".into()));
        }
        if self.max_age == 0 {
            p.push(("max_age".into(), "must be at least 1".into()));
        }
        if self.max_embeddings == 0 {
            p.push(("max_embeddings".into(), "must be at least 1".into()));
        }
        if self.quality_gain < 1.0 {
            p.push(("quality_gain".into(), format!("must be at least 1.0, got {}", self.quality_gain)));
        }
        if self.refresh_seconds < 0.0 {
            p.push(("refresh_seconds".into(), "must not be negative".into()));
        }
        if self.decided_refresh_seconds < 0.0 {
            p.push(("decided_refresh_seconds".into(), "must not be negative".into()));
        }
        p
    }

    /// The first problem, if any.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }
}
