//! Open-set identification, measured the way a deployment meets it: a gallery of G enrolled
//! people (a seeded random draw), probes that are other photos of the enrolled people (they
//! should get their name) and photos of people who are NOT enrolled (strangers: any name they get
//! is a false accept). Identities are split in two by a seeded hash, so thresholds are chosen on
//! one half (calibration) and verified on people they never saw (report).
//!
//! Reported per decision rule: DIR (right name, accepted) and FAR (strangers given any name) at
//! each threshold, DIR at FAR 1% and 0.1%, rank-1, and the wrong-name rate of enrolled people.

use std::collections::HashMap;

use serde::Serialize;

use crate::identify::calibration::threshold_for_far;

/// Which half of the identities a figure comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Calibration,
    Report,
    All,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Calibration => "calibration",
            Split::Report => "report",
            Split::All => "all",
        }
    }
}

/// The half an identity falls in (a seeded hash of its name: stable across runs and machines).
pub fn split_of(identity: &str, seed: u64) -> Split {
    let h = crate::dataset::fnv1a(identity.as_bytes(), seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    if (h >> 17) & 1 == 0 { Split::Calibration } else { Split::Report }
}

/// How one probe's nearest persons turn into a score (accepted when score <= threshold).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Rule {
    /// The nearest person's distance.
    Distance,
    /// The distance, only when the second-best person is at least `margin` farther (the rule the
    /// pipeline uses, `identify.margin`).
    Margin(f32),
    /// Distance over the second-best distance (a ratio test).
    Ratio,
    /// The distance divided by how crowded the person's neighbourhood in the gallery is (mean
    /// distance to their 10 nearest other persons, relative to the gallery's average): a
    /// test-time cohort made of the gallery itself, no outside data.
    Cohort,
    /// Cohort normalisation and the margin rule together.
    CohortMargin(f32),
}

impl Rule {
    pub fn name(&self) -> String {
        match self {
            Rule::Distance => "distance".into(),
            Rule::Margin(m) => format!("distance+margin{m}"),
            Rule::Ratio => "ratio".into(),
            Rule::Cohort => "cohort".into(),
            Rule::CohortMargin(m) => format!("cohort+margin{m}"),
        }
    }

    fn score(&self, p: &Probe) -> f32 {
        let margin_ok = |m: f32| p.d2 - p.d1 >= m;
        match *self {
            Rule::Distance => p.d1,
            Rule::Margin(m) => if margin_ok(m) { p.d1 } else { f32::INFINITY },
            Rule::Ratio => if p.d2 > 0.0 { p.d1 / p.d2 } else { f32::INFINITY },
            Rule::Cohort => p.d1 / p.crowding,
            Rule::CohortMargin(m) => if margin_ok(m) { p.d1 / p.crowding } else { f32::INFINITY },
        }
    }
}

/// One probe's search result.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    /// Nearest and second-nearest person's distance (best sample of each).
    pub d1: f32,
    pub d2: f32,
    /// The nearest person (identity index).
    pub id1: u32,
    /// The probe's own identity when it is enrolled; `None` for a stranger.
    pub truth: Option<u32>,
    /// How crowded the nearest person's gallery neighbourhood is (1 = the gallery's average).
    pub crowding: f32,
}

/// One gallery draw and its probes.
#[derive(Clone, Debug, Default)]
pub struct Trial {
    pub gallery: usize,
    pub probes: Vec<Probe>,
}

/// Seeded xorshift, for the draws.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

fn dist(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    (2.0 - 2.0 * dot).max(0.0).sqrt()
}

/// Draws a gallery of `size` identities among `people` (those with two or more photos first, so
/// that they have probes; then one-photo people as distractors), enrolls the first `enroll`
/// photos of each, and searches every other photo of them plus up to `max_strangers` photos of
/// the people not drawn. `samples[i]` = (identity index, embedding).
pub fn trial(samples: &[(u32, &[f32])], people: &[u32], size: usize, enroll: usize, min_photos: usize, max_strangers: usize, seed: u64) -> Trial {
    let mut by_person: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, (id, _)) in samples.iter().enumerate() {
        by_person.entry(*id).or_default().push(i);
    }
    let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
    let min_photos = min_photos.max(enroll + 1);
    let (mut multi, mut single): (Vec<u32>, Vec<u32>) = people.iter().copied().filter(|p| by_person.contains_key(p)).partition(|p| by_person[p].len() >= min_photos);
    multi.sort_unstable();
    single.sort_unstable();
    rng.shuffle(&mut multi);
    rng.shuffle(&mut single);
    let gallery: Vec<u32> = multi.iter().chain(single.iter()).copied().take(size).collect();
    let enrolled: std::collections::HashSet<u32> = gallery.iter().copied().collect();
    // Gallery samples, person by person.
    let mut g_owner: Vec<u32> = Vec::new();
    let mut g_vecs: Vec<&[f32]> = Vec::new();
    for p in &gallery {
        for &i in by_person[p].iter().take(enroll) {
            g_owner.push(*p);
            g_vecs.push(samples[i].1);
        }
    }
    let crowding = crowding(&gallery, &g_owner, &g_vecs);
    let mut probes_idx: Vec<(usize, Option<u32>)> = Vec::new();
    for p in &gallery {
        probes_idx.extend(by_person[p].iter().skip(enroll).map(|&i| (i, Some(*p))));
    }
    let mut strangers: Vec<usize> = people.iter().filter(|p| !enrolled.contains(p)).flat_map(|p| by_person.get(p).into_iter().flatten().copied()).collect();
    strangers.sort_unstable();
    rng.shuffle(&mut strangers);
    probes_idx.extend(strangers.into_iter().take(max_strangers).map(|i| (i, None)));
    let probes = probes_idx
        .into_iter()
        .map(|(i, truth)| {
            let q = samples[i].1;
            let mut best: HashMap<u32, f32> = HashMap::new();
            for (o, v) in g_owner.iter().zip(&g_vecs) {
                let d = dist(q, v);
                let e = best.entry(*o).or_insert(f32::INFINITY);
                *e = e.min(d);
            }
            let mut ranked: Vec<(u32, f32)> = best.into_iter().collect();
            ranked.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            let (id1, d1) = ranked.first().copied().unwrap_or((u32::MAX, f32::INFINITY));
            let d2 = ranked.get(1).map_or(f32::INFINITY, |r| r.1);
            Probe { d1, d2, id1, truth, crowding: crowding.get(&id1).copied().unwrap_or(1.0) }
        })
        .collect();
    Trial { gallery: gallery.len(), probes }
}

/// Per person: mean distance of their first sample to the 10 nearest other persons' first samples,
/// over the gallery's mean of that (1 = average; below 1 = a crowded neighbourhood).
fn crowding(gallery: &[u32], owner: &[u32], vecs: &[&[f32]]) -> HashMap<u32, f32> {
    let first: Vec<(u32, &[f32])> = gallery.iter().filter_map(|p| owner.iter().position(|o| o == p).map(|i| (*p, vecs[i]))).collect();
    let k = 10.min(first.len().saturating_sub(1));
    if k == 0 {
        return first.iter().map(|(p, _)| (*p, 1.0)).collect();
    }
    let mut raw: Vec<(u32, f32)> = Vec::with_capacity(first.len());
    for (p, v) in &first {
        let mut ds: Vec<f32> = first.iter().filter(|(q, _)| q != p).map(|(_, w)| dist(v, w)).collect();
        ds.select_nth_unstable_by(k - 1, |a, b| a.total_cmp(b));
        raw.push((*p, ds[..k].iter().sum::<f32>() / k as f32));
    }
    let mean = raw.iter().map(|r| r.1).sum::<f32>() / raw.len() as f32;
    raw.into_iter().map(|(p, m)| (p, (m / mean).max(1e-3))).collect()
}

/// Figures of a rule over pooled trials.
#[derive(Clone, Debug, Serialize)]
pub struct RuleReport {
    pub rule: String,
    pub gallery: usize,
    pub trials: usize,
    pub genuine: usize,
    pub strangers: usize,
    pub rank1: f64,
    pub dir_at_far_1pct: f64,
    pub threshold_at_far_1pct: f32,
    pub dir_at_far_01pct: f64,
    pub threshold_at_far_01pct: f32,
    /// At `threshold` (the one in use, or a calibrated one), when given.
    pub at_threshold: Option<AtPoint>,
    /// (threshold, DIR, FAR) along the curve.
    pub curve: Vec<(f32, f64, f64)>,
}

/// DIR, FAR and the wrong-name rate of enrolled people at one threshold.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct AtPoint {
    pub threshold: f32,
    pub dir: f64,
    pub far: f64,
    /// Enrolled people given someone else's name.
    pub wrong_name: f64,
}

/// DIR, FAR and wrong names of pooled probes at a threshold.
pub fn at(probes: &[Probe], rule: Rule, t: f32) -> AtPoint {
    let (mut mated, mut right, mut wrong, mut strangers, mut fa) = (0usize, 0usize, 0usize, 0usize, 0usize);
    for p in probes {
        let accepted = rule.score(p) <= t;
        match p.truth {
            Some(truth) => {
                mated += 1;
                if accepted && p.id1 == truth {
                    right += 1;
                } else if accepted {
                    wrong += 1;
                }
            }
            None => {
                strangers += 1;
                fa += accepted as usize;
            }
        }
    }
    let rate = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    AtPoint { threshold: t, dir: rate(right, mated), far: rate(fa, strangers), wrong_name: rate(wrong, mated) }
}

/// The threshold at which at most `far` of the pooled strangers are accepted under `rule`.
pub fn threshold_at_far(probes: &[Probe], rule: Rule, far: f64) -> f32 {
    let scores: Vec<f32> = probes.iter().filter(|p| p.truth.is_none()).map(|p| rule.score(p)).collect();
    threshold_for_far(&scores, far).unwrap_or(0.0)
}

/// The report of one rule over pooled probes of `trials` draws of a gallery of `gallery` people.
pub fn report(probes: &[Probe], rule: Rule, gallery: usize, trials: usize, threshold: Option<f32>) -> RuleReport {
    let t1 = threshold_at_far(probes, rule, 0.01);
    let t01 = threshold_at_far(probes, rule, 0.001);
    let genuine = probes.iter().filter(|p| p.truth.is_some()).count();
    let rank1 = if genuine == 0 { 0.0 } else { probes.iter().filter(|p| p.truth == Some(p.id1)).count() as f64 / genuine as f64 };
    // The curve over the strangers' own score quantiles (FAR from 0.01% to 50%).
    let curve = [0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]
        .iter()
        .map(|&f| {
            let t = threshold_at_far(probes, rule, f);
            let a = at(probes, rule, t);
            (t, a.dir, a.far)
        })
        .collect();
    RuleReport {
        rule: rule.name(),
        gallery,
        trials,
        genuine,
        strangers: probes.len() - genuine,
        rank1,
        dir_at_far_1pct: at(probes, rule, t1).dir,
        threshold_at_far_1pct: t1,
        dir_at_far_01pct: at(probes, rule, t01).dir,
        threshold_at_far_01pct: t01,
        at_threshold: threshold.map(|t| at(probes, rule, t)),
        curve,
    }
}

/// How galleries are drawn: `trials` draws of `size` people, `enroll` photos each, people with
/// probes chosen among those with `min_photos` photos or more, up to `max_strangers` strangers.
#[derive(Clone, Copy, Debug)]
pub struct Draws {
    pub size: usize,
    pub enroll: usize,
    pub min_photos: usize,
    pub max_strangers: usize,
    pub trials: usize,
    pub seed: u64,
}

/// Runs the draws among `people` and pools their probes; returns the gallery size reached.
pub fn pooled(samples: &[(u32, &[f32])], people: &[u32], d: Draws) -> (usize, Vec<Probe>) {
    let mut all = Vec::new();
    let mut g = 0;
    for k in 0..d.trials {
        let t = trial(samples, people, d.size, d.enroll, d.min_photos, d.max_strangers, d.seed.wrapping_add(k as u64 * 7919));
        g = t.gallery;
        all.extend(t.probes);
    }
    (g, all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(angle: f32) -> Vec<f32> {
        let mut v = vec![0f32; 4];
        v[0] = angle.cos();
        v[1] = angle.sin();
        v
    }

    #[test]
    fn strangers_near_a_person_are_false_accepts_and_the_split_is_by_identity() {
        // Identities 0..4 at well separated angles, two photos each; identity 5 (a stranger)
        // sits right next to identity 0.
        let mut owned: Vec<(u32, Vec<f32>)> = Vec::new();
        for id in 0..5u32 {
            owned.push((id, unit(id as f32)));
            owned.push((id, unit(id as f32 + 0.05)));
        }
        owned.push((5, unit(0.02)));
        let samples: Vec<(u32, &[f32])> = owned.iter().map(|(i, v)| (*i, v.as_slice())).collect();
        let people: Vec<u32> = (0..6).collect();
        let t = trial(&samples, &people, 5, 1, 2, 100, 1);
        assert_eq!(t.gallery, 5, "the stranger (one photo) is never drawn while people with probes remain");
        assert_eq!(t.probes.iter().filter(|p| p.truth.is_some()).count(), 5);
        assert_eq!(t.probes.iter().filter(|p| p.truth.is_none()).count(), 1);
        let a = at(&t.probes, Rule::Distance, 0.1);
        assert_eq!((a.dir, a.far), (1.0, 1.0), "everyone named, and the look-alike stranger too");
        let thr = threshold_at_far(&t.probes, Rule::Distance, 0.0);
        let a = at(&t.probes, Rule::Distance, thr);
        assert_eq!(a.far, 0.0, "a threshold for FAR 0 refuses the stranger");
        for id in ["Ann", "Bob", "Carl"] {
            assert_eq!(split_of(id, 1), split_of(id, 1), "stable");
        }
        let halves: Vec<Split> = (0..200).map(|i| split_of(&format!("person{i}"), 7)).collect();
        let cal = halves.iter().filter(|s| **s == Split::Calibration).count();
        assert!((70..130).contains(&cal), "about half the identities calibrate: {cal}");
    }
}
