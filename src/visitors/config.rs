//! `[snapshots]`, `[visitors]` and `[visits]`: every key documented, every value checked before start.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Best shots: each track's best face crop and a small context frame, as JPEG files.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotsConfig {
    pub enabled: bool,
    /// Folder of the JPEG files; default `<gallery store>.snapshots` beside the store.
    pub dir: Option<PathBuf>,
    /// Snapshots older than this are deleted (files and rows).
    pub keep_days: f64,
    /// Width in pixels of the context frame (0: no context frame).
    pub context_width: u32,
}

impl Default for SnapshotsConfig {
    fn default() -> Self {
        Self { enabled: false, dir: None, keep_days: 30.0, context_width: 320 }
    }
}

/// Unknown faces grouped into pseudonymous visitors (`visitor-<n>`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VisitorsConfig {
    pub enabled: bool,
    /// Share of strangers' tracks that may join another person's cluster: the join threshold is
    /// the embedder's open-set calibration at this target for a gallery of 1000.
    pub target_far: f64,
    /// A fixed join threshold (distance between unit vectors) instead of `target_far`.
    pub threshold: Option<f32>,
    /// The nearest cluster must be at least this much nearer than the second.
    pub margin: f32,
    /// Two clusters whose centroids come this near are merged (as a share of the join threshold).
    pub merge_ratio: f32,
    /// Track templates a cluster keeps (the lowest-quality one goes beyond this).
    pub max_exemplars: usize,
    /// Tracks with fewer embeddings are not clustered (a face glimpsed once is too little to
    /// tell two strangers apart).
    pub min_embeddings: u32,
    /// Tracks whose best face is below this quality are not clustered.
    pub min_quality: f32,
    /// Unknown visitors' faces (templates and crops) are deleted after this many days without
    /// being seen; the visitor's visits stay (a visitor not seen for longer comes back as new).
    pub faces_keep_days: f64,
    /// Faces a visitor gets enrolled with when named (the best, quality-checked).
    pub enroll_faces: usize,
}

impl Default for VisitorsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            target_far: 0.001,
            threshold: None,
            margin: 0.05,
            merge_ratio: 0.8,
            max_exemplars: 16,
            min_embeddings: 2,
            min_quality: 0.15,
            faces_keep_days: 7.0,
            enroll_faces: 5,
        }
    }
}

/// A site: the cameras whose sightings make one visit.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub id: String,
    pub cameras: Vec<String>,
}

/// Visits: a person or visitor seen at a site with gaps shorter than `gap_s`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VisitsConfig {
    pub enabled: bool,
    /// A sighting later than this after the last one starts a new visit (seconds; 10 min).
    pub gap_s: f64,
    /// Visits older than this are deleted.
    pub keep_days: f64,
    /// IANA time zone of days and hours in reports (default UTC).
    pub timezone: String,
    /// Sites (default: one site `all` with every camera).
    pub sites: Vec<SiteConfig>,
}

impl Default for VisitsConfig {
    fn default() -> Self {
        Self { enabled: false, gap_s: 600.0, keep_days: 365.0, timezone: "UTC".into(), sites: Vec::new() }
    }
}

fn days_problem(key: &str, v: f64) -> Option<(String, String)> {
    (!(v > 0.0 && v <= 36_500.0)).then(|| (key.to_string(), format!("must be in (0, 36500] days, got {v}")))
}

impl SnapshotsConfig {
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p: Vec<_> = days_problem("keep_days", self.keep_days).into_iter().collect();
        if self.context_width != 0 && !(32..=1920).contains(&self.context_width) {
            p.push(("context_width".into(), format!("must be 0 (none) or 32..=1920 pixels, got {}", self.context_width)));
        }
        p
    }

    /// The snapshot folder for a store at `store`.
    pub fn dir_for(&self, base_dir: &Path, store: &Path) -> PathBuf {
        match &self.dir {
            Some(d) if d.is_absolute() => d.clone(),
            Some(d) => base_dir.join(d),
            None => store.with_extension("snapshots"),
        }
    }
}

impl VisitorsConfig {
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if !(1e-6..=0.1).contains(&self.target_far) {
            p.push(("target_far".into(), format!("must be in [1e-6, 0.1], got {}", self.target_far)));
        }
        if let Some(t) = self.threshold.filter(|t| !(0.0..=2.0).contains(t)) {
            p.push(("threshold".into(), format!("must be in [0, 2] (distance between unit vectors), got {t}")));
        }
        if !(0.0..=1.0).contains(&self.margin) {
            p.push(("margin".into(), format!("must be in [0, 1], got {}", self.margin)));
        }
        if !(0.1..=1.5).contains(&self.merge_ratio) {
            p.push(("merge_ratio".into(), format!("must be in [0.1, 1.5], got {}", self.merge_ratio)));
        }
        if !(1..=256).contains(&self.max_exemplars) {
            p.push(("max_exemplars".into(), format!("must be 1..=256, got {}", self.max_exemplars)));
        }
        if !(1..=1000).contains(&self.min_embeddings) {
            p.push(("min_embeddings".into(), format!("must be 1..=1000, got {}", self.min_embeddings)));
        }
        if !(0.0..=1.0).contains(&self.min_quality) {
            p.push(("min_quality".into(), format!("must be in [0, 1], got {}", self.min_quality)));
        }
        p.extend(days_problem("faces_keep_days", self.faces_keep_days));
        if !(1..=50).contains(&self.enroll_faces) {
            p.push(("enroll_faces".into(), format!("must be 1..=50, got {}", self.enroll_faces)));
        }
        p
    }
}

impl VisitsConfig {
    pub fn problems(&self, cameras: &[&str]) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if !(1.0..=86_400.0).contains(&self.gap_s) {
            p.push(("gap_s".into(), format!("must be 1..=86400 seconds, got {}", self.gap_s)));
        }
        p.extend(days_problem("keep_days", self.keep_days));
        if jiff::tz::TimeZone::get(&self.timezone).is_err() {
            p.push(("timezone".into(), format!("`{}` is not an IANA time zone (e.g. Europe/Berlin, UTC)", self.timezone)));
        }
        let mut ids = std::collections::HashSet::new();
        for (i, s) in self.sites.iter().enumerate() {
            if s.id.is_empty() || !s.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                p.push((format!("sites[{i}].id"), format!("must be letters, digits, - or _, got `{}`", s.id)));
            }
            if !ids.insert(s.id.as_str()) {
                p.push((format!("sites[{i}].id"), format!("`{}` is used by another site", s.id)));
            }
            if s.cameras.is_empty() {
                p.push((format!("sites[{i}].cameras"), "lists no camera".into()));
            }
            for c in &s.cameras {
                if !cameras.contains(&c.as_str()) {
                    p.push((format!("sites[{i}].cameras"), format!("`{c}` is not a configured camera (known: {})", cameras.join(", "))));
                }
            }
        }
        p
    }

    /// The sites of a camera (the default site `all` holds every camera).
    pub fn sites_of(&self, camera: &str) -> Vec<String> {
        if self.sites.is_empty() {
            return vec!["all".into()];
        }
        self.sites.iter().filter(|s| s.cameras.iter().any(|c| c == camera)).map(|s| s.id.clone()).collect()
    }
}

impl VisitorsConfig {
    /// The clustering parameters: the join threshold from `threshold`, else the embedder's
    /// open-set calibration at `target_far` for a gallery of 1000 (clusters are many).
    pub fn params(&self, identify: &crate::identify::IdentifyConfig, embed_card: &Path) -> Result<super::cluster::ClusterParams, crate::infer::InferError> {
        let threshold = match self.threshold {
            Some(t) => t,
            None => {
                let icfg = crate::identify::IdentifyConfig { threshold: None, target_far: Some(self.target_far), ..identify.clone() };
                crate::identify::OperatingPoint::for_card(&icfg, None, embed_card, 1000)?.threshold
            }
        };
        Ok(self.params_at(threshold))
    }

    pub fn params_at(&self, threshold: f32) -> super::cluster::ClusterParams {
        super::cluster::ClusterParams { threshold, margin: self.margin, merge_threshold: threshold * self.merge_ratio, max_exemplars: self.max_exemplars }
    }
}
