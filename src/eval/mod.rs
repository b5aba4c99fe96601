//! Accuracy figures: verification over pairs of embeddings (ROC AUC, TAR at fixed FAR, EER and
//! best accuracy, each with the distance threshold that gives it; smaller distance means "more
//! alike"), the open-set protocol at several gallery sizes (`open_set`), embedding labelled sets
//! once (`embedded`) and the curves as a PNG (`plot`).

pub mod embedded;
pub mod open_set;
pub mod plot;

use serde::Serialize;

#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct AtThreshold {
    pub value: f64,
    pub threshold: f32,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerificationReport {
    pub genuine_pairs: usize,
    pub impostor_pairs: usize,
    pub auc: f64,
    /// True accept rate with at most 1% false accepts.
    pub tar_at_far_1pct: AtThreshold,
    /// True accept rate with at most 0.1% false accepts.
    pub tar_at_far_01pct: AtThreshold,
    pub eer: AtThreshold,
    pub best_accuracy: AtThreshold,
    /// Largest distance between two photos of the same person.
    pub genuine_max: f32,
    /// Smallest distance between photos of different people.
    pub impostor_min: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("need at least one genuine and one impostor pair (got {genuine} and {impostor}); list two or more photos for at least one identity and at least two identities")]
    NotEnoughPairs { genuine: usize, impostor: usize },
}

/// Computes the report from genuine (same person) and impostor (different people) distances.
pub fn verification(genuine: &[f32], impostor: &[f32]) -> Result<VerificationReport, EvalError> {
    if genuine.is_empty() || impostor.is_empty() {
        return Err(EvalError::NotEnoughPairs { genuine: genuine.len(), impostor: impostor.len() });
    }
    let (ng, ni) = (genuine.len() as f64, impostor.len() as f64);
    // All distances with their label, ascending; ties processed as one step.
    let mut all: Vec<(f32, bool)> = genuine.iter().map(|&d| (d, true)).chain(impostor.iter().map(|&d| (d, false))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));

    // AUC = P(genuine distance < impostor distance) + half the ties (Mann-Whitney).
    let mut auc_sum = 0.0;
    let mut imp_below = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        let (mut g_tie, mut i_tie) = (0.0, 0.0);
        while j < all.len() && all[j].0 == all[i].0 {
            if all[j].1 { g_tie += 1.0 } else { i_tie += 1.0 }
            j += 1;
        }
        auc_sum += g_tie * ((ni - imp_below - i_tie) + 0.5 * i_tie);
        imp_below += i_tie;
        i = j;
    }
    let auc = auc_sum / (ng * ni);

    // Sweep thresholds: accept when distance <= t. Start with t below every distance.
    let mut tar_1 = AtThreshold { value: 0.0, threshold: all[0].0 - f32::EPSILON };
    let mut tar_01 = tar_1;
    let mut eer = AtThreshold { value: 1.0, threshold: tar_1.threshold };
    let mut eer_gap = f64::INFINITY;
    let mut best = AtThreshold { value: ni / (ng + ni), threshold: tar_1.threshold };
    let (mut ga, mut ia) = (0.0, 0.0);
    let mut k = 0;
    while k < all.len() {
        let t = all[k].0;
        while k < all.len() && all[k].0 == t {
            if all[k].1 { ga += 1.0 } else { ia += 1.0 }
            k += 1;
        }
        let (tar, far) = (ga / ng, ia / ni);
        if far <= 0.01 && tar >= tar_1.value {
            tar_1 = AtThreshold { value: tar, threshold: t };
        }
        if far <= 0.001 && tar >= tar_01.value {
            tar_01 = AtThreshold { value: tar, threshold: t };
        }
        let frr = 1.0 - tar;
        if (far - frr).abs() < eer_gap {
            eer_gap = (far - frr).abs();
            eer = AtThreshold { value: (far + frr) * 0.5, threshold: t };
        }
        let acc = (ga + (ni - ia)) / (ng + ni);
        if acc > best.value {
            best = AtThreshold { value: acc, threshold: t };
        }
    }
    Ok(VerificationReport {
        genuine_pairs: genuine.len(),
        impostor_pairs: impostor.len(),
        auc,
        tar_at_far_1pct: tar_1,
        tar_at_far_01pct: tar_01,
        eer,
        best_accuracy: best,
        genuine_max: genuine.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        impostor_min: impostor.iter().copied().fold(f32::INFINITY, f32::min),
    })
}

/// Closed- and open-set identification with a gallery/probe split: each identity's first photo is
/// enrolled, its other photos are probes. Open set: each probe is also searched against the
/// gallery without its own identity (a stranger), which gives the false alarms.
#[derive(Clone, Debug, Serialize)]
pub struct IdentificationReport {
    pub gallery: usize,
    pub probes: usize,
    pub rank1: f64,
    /// Detection and identification rate at FAR 1% (strangers accepted at most 1% of the time).
    pub dir_at_far_1pct: AtThreshold,
    /// DIR and FAR at the threshold in use.
    pub dir_at_threshold: f64,
    pub far_at_threshold: f64,
    pub threshold: f32,
}

/// `embs` holds (identity, embedding) in file order.
pub fn identification(embs: &[(String, Vec<f32>)], threshold: f32) -> Result<IdentificationReport, EvalError> {
    use std::collections::HashMap;
    let mut gallery: HashMap<&str, &[f32]> = HashMap::new();
    let mut probes: Vec<(&str, &[f32])> = Vec::new();
    for (id, e) in embs {
        if gallery.contains_key(id.as_str()) {
            probes.push((id, e));
        } else {
            gallery.insert(id, e);
        }
    }
    if gallery.len() < 2 || probes.is_empty() {
        return Err(EvalError::NotEnoughPairs { genuine: probes.len(), impostor: gallery.len().saturating_sub(1) });
    }
    let d = |a: &[f32], b: &[f32]| crate::embed::distance(a, b);
    let mut mated: Vec<(bool, f32)> = Vec::new();
    let mut strangers: Vec<f32> = Vec::new();
    for (id, e) in &probes {
        let mut best: Option<(&str, f32)> = None;
        let mut best_other = f32::INFINITY;
        for (gid, ge) in &gallery {
            let dist = d(e, ge);
            if best.is_none_or(|b| dist < b.1) {
                best = Some((gid, dist));
            }
            if gid != id {
                best_other = best_other.min(dist);
            }
        }
        let (bid, bd) = best.expect("gallery is not empty");
        mated.push((bid == *id, bd));
        strangers.push(best_other);
    }
    let rank1 = mated.iter().filter(|m| m.0).count() as f64 / mated.len() as f64;
    let mut sorted = strangers.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let allowed = (0.01 * sorted.len() as f64).floor() as usize;
    // Largest threshold accepting at most `allowed` strangers.
    let t = sorted.get(allowed).map(|x| x - 1e-6).unwrap_or(f32::INFINITY);
    let dir = |t: f32| mated.iter().filter(|(ok, dist)| *ok && *dist <= t).count() as f64 / mated.len() as f64;
    let far = strangers.iter().filter(|&&x| x <= threshold).count() as f64 / strangers.len() as f64;
    Ok(IdentificationReport {
        gallery: gallery.len(),
        probes: probes.len(),
        rank1,
        dir_at_far_1pct: AtThreshold { value: dir(t), threshold: t },
        dir_at_threshold: dir(threshold),
        far_at_threshold: far,
        threshold,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_separation() {
        let r = verification(&[0.1, 0.2, 0.3], &[0.8, 0.9, 1.0, 1.1]).unwrap();
        assert_eq!(r.auc, 1.0);
        assert_eq!(r.tar_at_far_1pct.value, 1.0);
        assert_eq!(r.tar_at_far_1pct.threshold, 0.3);
        assert_eq!(r.eer.value, 0.0);
        assert_eq!(r.best_accuracy.value, 1.0);
    }

    #[test]
    fn overlapping_scores() {
        // One impostor (0.25) sits among the genuine pairs.
        let r = verification(&[0.1, 0.2, 0.3, 0.4], &[0.25, 0.6, 0.7, 0.8]).unwrap();
        assert!((r.auc - 14.0 / 16.0).abs() < 1e-9);
        assert_eq!(r.tar_at_far_1pct.value, 0.5);
        assert_eq!(r.tar_at_far_1pct.threshold, 0.2);
        assert_eq!(r.best_accuracy.value, 7.0 / 8.0);
        assert!((r.eer.value - 0.25).abs() < 1e-9);
    }

    #[test]
    fn ties_count_half() {
        let r = verification(&[0.5], &[0.5]).unwrap();
        assert_eq!(r.auc, 0.5);
    }

    #[test]
    fn identification_rank1_and_open_set() {
        let v = |x: f32| crate::embed::normalized(&[x.cos(), x.sin()]);
        // Two identities far apart, two probes each close to their own.
        let embs = vec![
            ("a".to_string(), v(0.0)),
            ("b".to_string(), v(1.5)),
            ("a".to_string(), v(0.1)),
            ("b".to_string(), v(1.45)),
        ];
        let r = identification(&embs, 0.4).unwrap();
        assert_eq!((r.gallery, r.probes), (2, 2));
        assert_eq!(r.rank1, 1.0);
        assert_eq!(r.dir_at_threshold, 1.0);
        assert_eq!(r.far_at_threshold, 0.0);
        assert_eq!(r.dir_at_far_1pct.value, 1.0);
    }

    #[test]
    fn refuses_without_pairs() {
        assert!(verification(&[], &[1.0]).is_err());
    }
}
