//! Detector settings with their defaults and validation.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Smallest face side to find, in pixels. Smaller finds more distant faces and costs more
    /// (P-Net's work on a frame grows about 4.5x each time `min_face` halves).
    pub min_face: f32,
    /// Ratio between pyramid levels (0.709 halves the area per level, as in the MTCNN paper).
    pub scale_factor: f32,
    /// Per-stage face probability thresholds for P-Net, R-Net and O-Net.
    pub stage_thresholds: [f32; 3],
    /// Faces below this final score are not reported. Real faces score about 0.999; prints and
    /// face-like textures often land between 0.7 and 0.95.
    pub min_score: f32,
    /// Run the full cascade on every N-th frame of a camera; the frames between only re-detect
    /// the faces already known (R-Net and O-Net around their last boxes, ~7x cheaper) and find no
    /// new face. 1 = full detection on every frame.
    pub full_every: u32,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self { min_face: 40.0, scale_factor: 0.709, stage_thresholds: [0.6, 0.7, 0.7], min_score: 0.9, full_every: 3 }
    }
}

impl DetectConfig {
    /// Every problem as (key, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if !(12.0..=4096.0).contains(&self.min_face) {
            p.push(("min_face".into(), format!("must be between 12 and 4096 pixels, got {}", self.min_face)));
        }
        if !(0.3..0.95).contains(&self.scale_factor) {
            p.push(("scale_factor".into(), format!("must be in [0.3, 0.95), got {}", self.scale_factor)));
        }
        for (i, t) in self.stage_thresholds.iter().enumerate() {
            if !(0.0..1.0).contains(t) {
                p.push((format!("stage_thresholds[{i}]"), format!("must be in [0, 1), got {t}")));
            }
        }
        if !(0.0..=1.0).contains(&self.min_score) {
            p.push(("min_score".into(), format!("must be in [0, 1], got {}", self.min_score)));
        }
        if !(1..=30).contains(&self.full_every) {
            p.push(("full_every".into(), format!("must be between 1 and 30 frames, got {}", self.full_every)));
        }
        p
    }

    /// The first problem, if any.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }
}
