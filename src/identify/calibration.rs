//! The calibration of the open-set threshold: for each gallery size and false-accept target,
//! the distance threshold measured by `facestream calibrate` (on labelled photos, split by
//! identity). Stored as JSON next to the embedder's model card
//! (`<card>.calibration.json`); `identify.target_far` picks an entry at start.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One operating point: at `gallery_size` enrolled persons, `threshold` let `far` of the strangers
/// get a name on the calibration people, while naming `dir` of the enrolled people correctly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub gallery_size: usize,
    pub target_far: f64,
    pub threshold: f32,
    /// Measured on the calibration split (what the target costs).
    pub far: f64,
    pub dir: f64,
}

/// Every operating point measured for one embedder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub model: String,
    /// The decision rule the thresholds are for (e.g. `distance+margin0.05`).
    pub rule: String,
    /// Where the figures come from (dataset, split, seeds).
    pub source: String,
    pub entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("{path}: cannot read: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{path}: not a calibration file: {error}")]
    Parse { path: PathBuf, error: serde_json::Error },
    #[error("{path}: cannot write: {error}")]
    Write { path: PathBuf, error: std::io::Error },
    #[error("calibration {path} is for model `{found}`, the embedder is `{running}`: run `facestream calibrate` again")]
    Model { path: PathBuf, found: String, running: String },
}

/// Where the calibration of a model card lives.
pub fn path_for_card(models_dir: &Path, card: &str) -> PathBuf {
    models_dir.join(format!("{card}.calibration.json"))
}

/// The calibration beside a model card file (`x.toml` -> `x.calibration.json`).
pub fn beside(card_file: &Path) -> PathBuf {
    card_file.with_extension("calibration.json")
}

impl Calibration {
    /// Loads a calibration file; `Ok(None)` when there is none.
    pub fn load(path: &Path, running_model: &str) -> Result<Option<Self>, CalibrationError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(CalibrationError::Read { path: path.to_path_buf(), error }),
        };
        let c: Calibration = serde_json::from_str(&text).map_err(|error| CalibrationError::Parse { path: path.to_path_buf(), error })?;
        if c.model != running_model {
            return Err(CalibrationError::Model { path: path.to_path_buf(), found: c.model, running: running_model.to_string() });
        }
        Ok(Some(c))
    }

    /// Writes atomically (a temporary file renamed over the old one).
    pub fn save(&self, path: &Path) -> Result<(), CalibrationError> {
        let err = |error| CalibrationError::Write { path: path.to_path_buf(), error };
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| err(std::io::Error::other(e)))?;
        std::fs::write(&tmp, text + "\n").map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Adds or replaces the entry for (gallery size, target).
    pub fn put(&mut self, e: Entry) {
        self.entries.retain(|x| !(x.gallery_size == e.gallery_size && (x.target_far - e.target_far).abs() < 1e-12));
        self.entries.push(e);
        self.entries.sort_by(|a, b| a.gallery_size.cmp(&b.gallery_size).then(a.target_far.total_cmp(&b.target_far)));
    }

    /// The entry for a FAR target at a gallery size: the smallest calibrated size at or above
    /// `gallery_size` (a larger gallery gives strangers more chances, so its threshold is the safe
    /// one), else the largest calibrated size; among those, the target at or below `target_far`
    /// nearest to it. `None` when no entry meets the target.
    pub fn lookup(&self, target_far: f64, gallery_size: usize) -> Option<&Entry> {
        let fits: Vec<&Entry> = self.entries.iter().filter(|e| e.target_far <= target_far + 1e-12).collect();
        let size = fits.iter().map(|e| e.gallery_size).filter(|&s| s >= gallery_size).min().or_else(|| fits.iter().map(|e| e.gallery_size).max())?;
        fits.into_iter().filter(|e| e.gallery_size == size).max_by(|a, b| a.target_far.total_cmp(&b.target_far))
    }
}

/// The largest threshold at which at most `target` of the strangers' scores are accepted
/// (accepted: score <= threshold). `scores` need not be sorted; `None` when empty.
pub fn threshold_for_far(scores: &[f32], target: f64) -> Option<f32> {
    if scores.is_empty() {
        return None;
    }
    let mut s: Vec<f32> = scores.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(|a, b| a.total_cmp(b));
    let allowed = (target * scores.len() as f64).floor() as usize;
    // Accepting the `allowed` lowest scores and not the next: just below that next score.
    Some(match s.get(allowed) {
        Some(&next) => {
            let below = f32::from_bits(next.to_bits().saturating_sub(1));
            if next > 0.0 { below } else { 0.0 }
        }
        None => 2.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_for_a_target_far_accepts_at_most_that_share_of_strangers() {
        // 1000 constructed stranger distances 0.300, 0.301, ... 1.299.
        let scores: Vec<f32> = (0..1000).map(|i| 0.3 + i as f32 * 0.001).collect();
        let t = threshold_for_far(&scores, 0.01).unwrap();
        let accepted = scores.iter().filter(|&&s| s <= t).count();
        assert_eq!(accepted, 10, "1% of 1000");
        assert!(t < 0.310 && t > 0.309, "{t}");
        let t = threshold_for_far(&scores, 0.001).unwrap();
        assert_eq!(scores.iter().filter(|&&s| s <= t).count(), 1);
        let t = threshold_for_far(&scores, 0.0).unwrap();
        assert_eq!(scores.iter().filter(|&&s| s <= t).count(), 0, "FAR 0 accepts nobody");
        // Shuffled input, ties: never more than the target.
        let mut tied = vec![0.5f32; 50];
        tied.extend((0..950).map(|i| 0.6 + i as f32 * 0.0001));
        tied.reverse();
        let t = threshold_for_far(&tied, 0.01).unwrap();
        assert!(tied.iter().filter(|&&s| s <= t).count() <= 10, "ties at the cut are all refused");
        assert!(threshold_for_far(&[], 0.01).is_none());
    }

    #[test]
    fn lookup_prefers_the_safe_gallery_size_and_the_target() {
        let e = |gallery_size, target_far, threshold| Entry { gallery_size, target_far, threshold, far: target_far, dir: 0.9 };
        let mut c = Calibration { model: "m".into(), rule: "r".into(), source: "s".into(), entries: vec![] };
        for (g, t) in [(10, 0.40), (100, 0.36), (1000, 0.33)] {
            c.put(e(g, 0.001, t));
            c.put(e(g, 0.01, t + 0.03));
        }
        assert_eq!(c.lookup(0.001, 50).unwrap().threshold, 0.36, "50 persons use the 100-person entry");
        assert_eq!(c.lookup(0.001, 100).unwrap().threshold, 0.36);
        assert_eq!(c.lookup(0.001, 5000).unwrap().threshold, 0.33, "beyond the table: the largest");
        assert!((c.lookup(0.01, 5).unwrap().threshold - 0.43).abs() < 1e-6);
        assert_eq!(c.lookup(0.005, 100).unwrap().target_far, 0.001, "a looser target falls back to the stricter entry");
        assert!(c.lookup(0.0001, 100).is_none());
        c.put(e(100, 0.001, 0.35));
        assert_eq!(c.entries.len(), 6, "an entry is replaced, not added");
    }
}
