//! The data side of training: identity splits (train / validation / held out), the figures a
//! head is judged by (TAR at FAR 0.1% on pairs, DIR at FAR 1% for galleries of N people), and the
//! saved head (weights in safetensors, a model card in TOML).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{EpochLog, Head, Rng, TrainConfig, TrainError};
use crate::eval::open_set::{self, Draws, Rule};

/// Which part of the data an identity belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Train,
    Validation,
    /// Never seen in training: what the figures are reported on (`eval`'s report split).
    Held,
}

/// The part of `identity`: the `eval` report split is held out; of the rest, `validation` (0..1)
/// goes to validation, by a seeded hash of the name (the same on every machine).
pub fn part_of(identity: &str, seed: u64, validation: f64) -> Part {
    if open_set::split_of(identity, seed) == open_set::Split::Report {
        return Part::Held;
    }
    let h = crate::dataset::fnv1a(identity.as_bytes(), seed ^ 0x7a11_da7e);
    if ((h >> 11) % 10_000) as f64 / 10_000.0 < validation { Part::Validation } else { Part::Train }
}

/// The figures of one head on one set of identities.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Figures {
    pub people: usize,
    pub photos: usize,
    pub genuine_pairs: usize,
    pub impostor_pairs: usize,
    /// True accepts at 0.1% false accepts (pairs), and the distance there.
    pub tar_at_far_01pct: f64,
    pub threshold_at_far_01pct: f32,
    /// Open-set identification for galleries of `gallery` people: right name at 1% strangers named.
    pub gallery: usize,
    pub dir_at_far_1pct: f64,
    pub threshold_at_far_1pct: f32,
    pub rank1: f64,
}

/// Distances are Euclidean between unit vectors (as everywhere in facestream).
fn distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt()
}

/// Judges `samples` (identity, unit embedding) of `people`: every genuine pair and up to
/// `max_impostors` seeded impostor pairs; open-set draws of `gallery` people (`trials` times).
pub fn figures(samples: &[(u32, Vec<f32>)], people: &[u32], gallery: usize, trials: usize, max_impostors: usize, seed: u64) -> Result<Figures, TrainError> {
    let keep: std::collections::HashSet<u32> = people.iter().copied().collect();
    let rows: Vec<&(u32, Vec<f32>)> = samples.iter().filter(|s| keep.contains(&s.0)).collect();
    let mut by: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        by.entry(r.0).or_default().push(i);
    }
    let mut genuine = Vec::new();
    for v in by.values() {
        for i in 0..v.len() {
            for j in i + 1..v.len() {
                genuine.push(distance(&rows[v[i]].1, &rows[v[j]].1));
            }
        }
    }
    let mut impostor = Vec::with_capacity(max_impostors);
    let mut rng = Rng::new(seed);
    let mut guard = 0;
    while impostor.len() < max_impostors && rows.len() > 1 && guard < max_impostors * 4 {
        guard += 1;
        let (i, j) = (rng.below(rows.len()), rng.below(rows.len()));
        if rows[i].0 != rows[j].0 {
            impostor.push(distance(&rows[i].1, &rows[j].1));
        }
    }
    let v = crate::eval::verification(&genuine, &impostor).map_err(|e| TrainError::Data(e.to_string()))?;
    let refs: Vec<(u32, &[f32])> = rows.iter().map(|r| (r.0, r.1.as_slice())).collect();
    let draws = Draws { size: gallery, enroll: 1, min_photos: 2, max_strangers: 1000, trials, seed };
    let (g, probes) = open_set::pooled(&refs, people, draws);
    let r = open_set::report(&probes, Rule::Distance, g, trials, None);
    Ok(Figures {
        people: by.len(),
        photos: rows.len(),
        genuine_pairs: v.genuine_pairs,
        impostor_pairs: v.impostor_pairs,
        tar_at_far_01pct: v.tar_at_far_01pct.value,
        threshold_at_far_01pct: v.tar_at_far_01pct.threshold,
        gallery: g,
        dir_at_far_1pct: r.dir_at_far_1pct,
        threshold_at_far_1pct: r.threshold_at_far_1pct,
        rank1: r.rank1,
    })
}

/// The head's model card (`head.toml` beside `head.safetensors`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeadCard {
    /// `<parent>+head-<hash of the weights>`: what the gallery store records for embeddings
    /// made through this head.
    pub id: String,
    pub parent_model: String,
    pub dim: usize,
    pub created: String,
    pub data: String,
    pub seed: u64,
    pub settings: serde_json::Value,
    pub train_people: usize,
    pub train_photos: usize,
    pub validation_people: usize,
    pub best_epoch: usize,
    pub loss_curve: Vec<f32>,
    pub validation_curve: Vec<f64>,
    pub held_out_before: Figures,
    pub held_out_after: Figures,
    /// Distance threshold re-calibrated on the validation identities (DIR at FAR 1% for their
    /// galleries), for `identify`.
    pub threshold: f32,
    pub training_seconds: f64,
}

pub use crate::embed::head::{CARD, WEIGHTS};

/// Writes the head's weights (temporary file, then rename: an interrupt never leaves half a file).
pub fn save_weights(head: &Head, dir: &Path) -> Result<PathBuf, TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::File { path: dir.to_path_buf(), reason: e.to_string() })?;
    let path = dir.join(WEIGHTS);
    let tmp = dir.join(format!("{WEIGHTS}.tmp"));
    let tensors: HashMap<String, Tensor> = [("w".to_string(), head.w.as_tensor().clone()), ("b".to_string(), head.b.as_tensor().clone())].into();
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, &path).map_err(|e| TrainError::File { path: path.clone(), reason: e.to_string() })?;
    Ok(path)
}

/// Loads a head saved by [`save_weights`].
pub fn load_head(dir: &Path) -> Result<Head, TrainError> {
    let path = dir.join(WEIGHTS);
    let t = candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| TrainError::File { path: path.clone(), reason: e.to_string() })?;
    let (Some(w), Some(b)) = (t.get("w"), t.get("b")) else {
        return Err(TrainError::File { path, reason: "expected tensors `w` and `b`".into() });
    };
    let dim = b.dims1()?;
    Head::from_weights(&w.flatten_all()?.to_vec1()?, &b.to_vec1()?, dim, &Device::Cpu)
}

/// The card's id: the parent's and a hash of the weights.
pub fn head_id(parent: &str, head: &Head) -> Result<String, TrainError> {
    let (w, b) = head.weights()?;
    let bytes: Vec<u8> = w.iter().chain(&b).flat_map(|v| v.to_le_bytes()).collect();
    Ok(format!("{parent}+head-{:016x}", crate::dataset::fnv1a(&bytes, 0)))
}

pub fn write_card(card: &HeadCard, dir: &Path) -> Result<PathBuf, TrainError> {
    let path = dir.join(CARD);
    let text = toml::to_string_pretty(card).map_err(|e| TrainError::File { path: path.clone(), reason: e.to_string() })?;
    std::fs::write(&path, format!("# Written by `facestream train --head`.\n{text}")).map_err(|e| TrainError::File { path: path.clone(), reason: e.to_string() })?;
    Ok(path)
}

/// The settings as they go on the card.
pub fn settings_json(cfg: &TrainConfig) -> serde_json::Value {
    serde_json::to_value(cfg).unwrap_or_default()
}

/// Loss and validation per epoch (for the card and the plot).
pub fn curves(log: &[EpochLog]) -> (Vec<f32>, Vec<f64>) {
    (log.iter().skip(1).map(|l| l.loss).collect(), log.iter().map(|l| l.validation).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_stable_and_roughly_sized() {
        let names: Vec<String> = (0..4000).map(|i| format!("person_{i}")).collect();
        let count = |p: Part| names.iter().filter(|n| part_of(n, 7, 0.1) == p).count();
        let (t, v, h) = (count(Part::Train), count(Part::Validation), count(Part::Held));
        assert!((1700..2300).contains(&h), "about half held out: {h}");
        assert!((120..300).contains(&v), "about a tenth of the rest for validation: {v}");
        assert_eq!(t + v + h, 4000);
        assert_eq!(part_of("person_1", 7, 0.1), part_of("person_1", 7, 0.1));
        // The held-out part is exactly eval's report split, whatever the validation fraction.
        for n in names.iter().take(200) {
            assert_eq!(part_of(n, 7, 0.3) == Part::Held, open_set::split_of(n, 7) == open_set::Split::Report);
        }
    }

    #[test]
    fn a_saved_head_reloads_and_reproduces_its_embeddings() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng::new(5);
        let w: Vec<f32> = (0..64).map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5).collect();
        let b: Vec<f32> = (0..8).map(|i| i as f32 * 0.01).collect();
        let head = Head::from_weights(&w, &b, 8, &Device::Cpu).unwrap();
        save_weights(&head, dir.path()).unwrap();
        let again = load_head(dir.path()).unwrap();
        let rows: Vec<Vec<f32>> = (0..3).map(|i| (0..8).map(|j| ((i * 8 + j) as f32).sin()).collect()).collect();
        assert_eq!(head.apply(&rows).unwrap(), again.apply(&rows).unwrap());
        assert_eq!(head_id("m", &head).unwrap(), head_id("m", &again).unwrap());
        assert!(load_head(&dir.path().join("missing")).is_err());
    }
}
