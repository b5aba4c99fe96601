//! Identification, in one place: the open-set decision for one embedding, the operating point
//! (threshold and margin, resolved once from the config and the embedder's calibration), the
//! per-track vote, the `[identify]` config and the identify stage that publishes each track's
//! decision on the decisions bus. The HTTP API, the CLI and the pipeline all decide through here.

pub mod calibration;
pub mod config;
pub mod decision;
pub mod stage;
pub mod vote;

pub use config::IdentifyConfig;
pub use decision::{TrackDecision, TrackEnd, TrackStart, TrackUpdate};

use crate::gallery::Match;

/// Where the threshold in use came from (logged at start, exposed in build info).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdSource {
    /// `identify.threshold` in the config.
    Config,
    /// The deprecated `embed.threshold` key.
    EmbedConfig,
    /// `identify.target_far` looked up in the embedder's open-set calibration.
    Calibration,
    /// The embedder's model card.
    ModelCard,
}

/// The open-set operating point: a match names a person only within `threshold` and `margin`
/// nearer than the second-best person.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct OperatingPoint {
    pub threshold: f32,
    pub margin: f32,
    pub source: ThresholdSource,
    /// The false-accept rate the calibration measured at this threshold, when it came from there.
    pub expected_far: Option<f64>,
    /// The gallery size the calibration entry was measured at.
    pub calibrated_gallery: Option<usize>,
}

impl OperatingPoint {
    /// THE place that resolves the threshold: `identify.threshold`, else the deprecated
    /// `embed.threshold`, else `identify.target_far` at `gallery_size` in the open-set
    /// calibration, else the model card's value (`card`).
    pub fn resolve(cfg: &IdentifyConfig, embed_threshold: Option<f32>, card: f32) -> Self {
        Self::resolve_with(cfg, embed_threshold, card, None, 0)
    }

    pub fn resolve_with(cfg: &IdentifyConfig, embed_threshold: Option<f32>, card: f32, calibration: Option<&calibration::Calibration>, gallery_size: usize) -> Self {
        let plain = |threshold, source| Self { threshold, margin: cfg.margin, source, expected_far: None, calibrated_gallery: None };
        match (cfg.threshold, embed_threshold) {
            (Some(t), _) => return plain(t, ThresholdSource::Config),
            (None, Some(t)) => return plain(t, ThresholdSource::EmbedConfig),
            (None, None) => {}
        }
        if let (Some(target), Some(c)) = (cfg.target_far, calibration) {
            if let Some(e) = c.lookup(target, gallery_size) {
                return Self { threshold: e.threshold, margin: cfg.margin, source: ThresholdSource::Calibration, expected_far: Some(e.far), calibrated_gallery: Some(e.gallery_size) };
            }
            tracing::warn!(target_far = target, "the calibration has no entry meeting identify.target_far; using the model card's threshold");
        }
        plain(card, ThresholdSource::ModelCard)
    }

    /// Resolves against the embedder's calibration file (if any) for a gallery of `gallery_size`.
    pub fn for_embedder(cfg: &IdentifyConfig, embed_threshold: Option<f32>, embedder: &crate::embed::Embedder, gallery_size: usize) -> Self {
        Self::for_model(cfg, embed_threshold, &calibration::beside(&embedder.card_path), embedder.model_id(), embedder.threshold, gallery_size)
    }

    /// [`OperatingPoint::for_embedder`] from the embedder's model card file alone (no session;
    /// `Config::embed_card` says which card).
    pub fn for_card(cfg: &IdentifyConfig, embed_threshold: Option<f32>, card_file: &std::path::Path, gallery_size: usize) -> Result<Self, crate::infer::InferError> {
        let card = crate::infer::ModelCard::read(card_file)?;
        let card_threshold = card.calibration_f32("threshold").unwrap_or(crate::embed::FALLBACK_THRESHOLD);
        Ok(Self::for_model(cfg, embed_threshold, &calibration::beside(card_file), &card.id, card_threshold, gallery_size))
    }

    fn for_model(cfg: &IdentifyConfig, embed_threshold: Option<f32>, path: &std::path::Path, model_id: &str, card_threshold: f32, gallery_size: usize) -> Self {
        let cal = match calibration::Calibration::load(path, model_id) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "open-set calibration not usable; using the model card's threshold");
                None
            }
        };
        Self::resolve_with(cfg, embed_threshold, card_threshold, cal.as_ref(), gallery_size)
    }

    /// The decision for one embedding's nearest persons (nearest first).
    pub fn decide(&self, matches: &[Match]) -> (Option<(u64, String)>, Option<f32>) {
        decide(matches, self.threshold, self.margin)
    }
}

/// Returns ((person id, name) or None for unknown, distance of the nearest person): the nearest
/// person when within the threshold and clearly nearer than the second-best person.
pub fn decide(matches: &[Match], threshold: f32, margin: f32) -> (Option<(u64, String)>, Option<f32>) {
    let Some(best) = matches.first() else { return (None, None) };
    let second = matches.get(1).map(|m| m.distance).unwrap_or(f32::INFINITY);
    if best.distance <= threshold && second - best.distance >= margin {
        (Some((best.person_id, best.name.clone())), Some(best.distance))
    } else {
        (None, Some(best.distance))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64, d: f32) -> Match {
        Match { person_id: id, name: format!("p{id}"), distance: d }
    }

    #[test]
    fn open_set_rules() {
        assert_eq!(decide(&[m(1, 0.2), m(2, 0.6)], 0.4, 0.05).0.unwrap().0, 1);
        assert!(decide(&[m(1, 0.5)], 0.4, 0.05).0.is_none(), "beyond the threshold");
        assert!(decide(&[m(1, 0.30), m(2, 0.32)], 0.4, 0.05).0.is_none(), "ambiguous");
        assert_eq!(decide(&[], 0.4, 0.05), (None, None));
    }

    #[test]
    fn the_threshold_is_resolved_in_one_order() {
        let mut cfg = IdentifyConfig::default();
        assert_eq!(OperatingPoint::resolve(&cfg, None, 0.4).source, ThresholdSource::ModelCard);
        let p = OperatingPoint::resolve(&cfg, Some(0.5), 0.4);
        assert_eq!((p.threshold, p.source), (0.5, ThresholdSource::EmbedConfig));
        cfg.threshold = Some(0.3);
        let p = OperatingPoint::resolve(&cfg, Some(0.5), 0.4);
        assert_eq!((p.threshold, p.source, p.margin), (0.3, ThresholdSource::Config, cfg.margin));
    }
}
