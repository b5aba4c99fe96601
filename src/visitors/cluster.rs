//! Online clustering of unknown faces into visitors: incremental agglomerative clustering with a
//! calibrated threshold, one track at a time.
//!
//! A track that ends unknown is summarised by its template (the quality-weighted mean of its
//! embeddings, normalised). Each cluster keeps up to `max_exemplars` templates; its centroid is
//! their normalised mean. A template joins the cluster whose centroid is nearest when that
//! distance is within `threshold` and the second-nearest cluster is at least `margin` farther;
//! else it starts a cluster. After a join, the grown cluster is compared with every other: two
//! clusters whose centroids came within `merge_threshold` are one person seen twice (first from
//! afar, then close), and the younger is merged into the older (its id redirects).
//!
//! Centroid linkage (not single linkage) is what keeps precision: a chain of faces each near the
//! next never pulls two people together, since a centroid moves little once it rests on several
//! faces. The thresholds come from the embedder's open-set calibration (see `VisitorsConfig`)
//! and are measured on LFW by `facestream eval --cluster` (README, "Visitors").

use crate::embed::{distance, normalized};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClusterParams {
    pub threshold: f32,
    pub margin: f32,
    pub merge_threshold: f32,
    pub max_exemplars: usize,
}

/// One template of a cluster (a track's summary).
#[derive(Clone, Debug, PartialEq)]
pub struct Exemplar {
    /// Row id of the face in the store (0 in memory-only use).
    pub face_id: u64,
    pub embedding: Vec<f32>,
    pub quality: f32,
}

#[derive(Clone, Debug)]
pub struct Cluster {
    pub id: u64,
    /// Ignored clusters (a poster, a TV) still absorb their faces, so they never come back as a
    /// new visitor; they are never counted.
    pub ignored: bool,
    pub exemplars: Vec<Exemplar>,
    centroid: Vec<f32>,
}

impl Cluster {
    pub fn new(id: u64, ignored: bool, exemplars: Vec<Exemplar>) -> Self {
        let mut c = Self { id, ignored, exemplars, centroid: Vec::new() };
        c.recompute();
        c
    }

    fn recompute(&mut self) {
        let Some(first) = self.exemplars.first() else {
            self.centroid.clear();
            return;
        };
        let mut sum = vec![0.0f32; first.embedding.len()];
        for e in &self.exemplars {
            for (s, x) in sum.iter_mut().zip(&e.embedding) {
                *s += x;
            }
        }
        self.centroid = normalized(&sum);
    }

    pub fn centroid(&self) -> &[f32] {
        &self.centroid
    }
}

/// What to do with one template (computed first, committed to the store, then applied).
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Start a cluster.
    New,
    /// Join `into` (at `distance`); then the clusters in `merge` are merged into it.
    Join { into: u64, distance: f32, merge: Vec<u64> },
}

/// Evicted exemplars (their face rows go from the store too).
pub type Evicted = Vec<Exemplar>;

#[derive(Clone, Debug)]
pub struct Clusterer {
    pub params: ClusterParams,
    clusters: Vec<Cluster>,
}

impl Clusterer {
    pub fn new(params: ClusterParams, clusters: Vec<Cluster>) -> Self {
        let clusters = clusters.into_iter().filter(|c| !c.exemplars.is_empty()).collect();
        Self { params, clusters }
    }

    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }

    pub fn get(&self, id: u64) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.id == id)
    }

    /// The nearest two clusters of a template, nearest first.
    pub fn nearest(&self, template: &[f32]) -> Vec<(u64, f32)> {
        let mut best: Vec<(u64, f32)> = Vec::with_capacity(3);
        for c in &self.clusters {
            let d = distance(template, &c.centroid);
            if best.len() < 2 || d < best[best.len() - 1].1 {
                best.push((c.id, d));
                best.sort_by(|a, b| a.1.total_cmp(&b.1));
                best.truncate(2);
            }
        }
        best
    }

    /// What one template does, without changing anything.
    pub fn plan(&self, template: &[f32]) -> Plan {
        let p = self.params;
        let near = self.nearest(template);
        let Some(&(into, d)) = near.first() else { return Plan::New };
        let second = near.get(1).map_or(f32::INFINITY, |n| n.1);
        if d > p.threshold || second - d < p.margin {
            // Two clusters equally near a face: it joins neither, unless the two are one person
            // (then the face joins the nearer and the two merge).
            if d <= p.threshold && second <= p.threshold {
                let other = near[1].0;
                if let (Some(a), Some(b)) = (self.get(into), self.get(other))
                    && distance(&a.centroid, &b.centroid) <= p.merge_threshold
                {
                    let (old, young) = if into < other { (into, other) } else { (other, into) };
                    return Plan::Join { into: old, distance: d, merge: vec![young] };
                }
            }
            return Plan::New;
        }
        // Joined: does the grown cluster now sit on another one?
        let mut grown = self.get(into).cloned().expect("nearest cluster exists");
        push_exemplar(&mut grown, Exemplar { face_id: 0, embedding: template.to_vec(), quality: 0.0 }, usize::MAX);
        let mut merge: Vec<u64> = self
            .clusters
            .iter()
            .filter(|c| c.id != into && c.ignored == grown.ignored && distance(&c.centroid, &grown.centroid) <= p.merge_threshold)
            .map(|c| c.id)
            .collect();
        // The oldest id survives (the one people have seen longest).
        let mut into = into;
        if let Some(&oldest) = merge.iter().min()
            && oldest < into
        {
            merge.retain(|&m| m != oldest);
            merge.push(into);
            into = oldest;
        }
        merge.sort_unstable();
        Plan::Join { into, distance: d, merge }
    }

    /// Applies a plan (after the store committed it): `new_id` is the id of a new cluster.
    /// Returns the exemplars evicted to keep each cluster within `max_exemplars`.
    pub fn apply(&mut self, plan: &Plan, new_id: u64, face: Exemplar) -> Evicted {
        let cap = self.params.max_exemplars;
        match plan {
            Plan::New => {
                self.clusters.push(Cluster::new(new_id, false, vec![face]));
                Vec::new()
            }
            Plan::Join { into, merge, .. } => {
                let mut moved = Vec::new();
                let mut ignored = false;
                for m in merge {
                    if let Some(i) = self.clusters.iter().position(|c| c.id == *m) {
                        let c = self.clusters.swap_remove(i);
                        ignored |= c.ignored;
                        moved.extend(c.exemplars);
                    }
                }
                let Some(c) = self.clusters.iter_mut().find(|c| c.id == *into) else {
                    // The cluster is gone (forgotten meanwhile): the face starts one.
                    self.clusters.push(Cluster::new(new_id, false, vec![face]));
                    return Vec::new();
                };
                c.ignored |= ignored;
                let mut evicted = Vec::new();
                for e in moved.into_iter().chain(std::iter::once(face)) {
                    evicted.extend(push_exemplar(c, e, cap));
                }
                evicted
            }
        }
    }

    /// Drops a cluster (forgotten, named, or its faces expired).
    pub fn remove(&mut self, id: u64) -> Option<Cluster> {
        let i = self.clusters.iter().position(|c| c.id == id)?;
        Some(self.clusters.swap_remove(i))
    }

    pub fn set_ignored(&mut self, id: u64, ignored: bool) {
        if let Some(c) = self.clusters.iter_mut().find(|c| c.id == id) {
            c.ignored = ignored;
        }
    }

    /// Replaces one cluster's exemplars (after the store removed some), dropping it when none is left.
    pub fn retain_faces(&mut self, keep: impl Fn(u64) -> bool) {
        for c in &mut self.clusters {
            let before = c.exemplars.len();
            c.exemplars.retain(|e| keep(e.face_id));
            if c.exemplars.len() != before {
                c.recompute();
            }
        }
        self.clusters.retain(|c| !c.exemplars.is_empty());
    }
}

/// Adds an exemplar; beyond `cap` the lowest-quality one goes (returned).
fn push_exemplar(c: &mut Cluster, e: Exemplar, cap: usize) -> Option<Exemplar> {
    c.exemplars.push(e);
    let out = if c.exemplars.len() > cap {
        let (i, _) = c.exemplars.iter().enumerate().min_by(|a, b| a.1.quality.total_cmp(&b.1.quality))?;
        Some(c.exemplars.swap_remove(i))
    } else {
        None
    };
    c.recompute();
    out
}

/// A track's template: the quality-weighted mean of its embeddings, normalised.
pub fn template(embeddings: &[(Vec<f32>, f32)]) -> Option<Vec<f32>> {
    let first = embeddings.first()?;
    let mut sum = vec![0.0f32; first.0.len()];
    for (e, q) in embeddings {
        let w = q.max(1e-3);
        for (s, x) in sum.iter_mut().zip(e) {
            *s += w * x;
        }
    }
    Some(normalized(&sum))
}

/// Pairwise precision and recall of a clustering against the true labels: over all pairs of
/// items, the share of same-cluster pairs that are one person, and of one person's pairs that
/// share a cluster.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PairScores {
    pub precision: f64,
    pub recall: f64,
    pub clusters: usize,
    pub people: usize,
    pub items: usize,
    /// Clusters holding more than one person.
    pub impure_clusters: usize,
}

pub fn pair_scores(assigned: &[(u32, u64)]) -> PairScores {
    use std::collections::HashMap;
    let pairs = |n: u64| n * n.saturating_sub(1) / 2;
    let mut by_cell: HashMap<(u64, u32), u64> = HashMap::new();
    let mut by_cluster: HashMap<u64, u64> = HashMap::new();
    let mut by_person: HashMap<u32, u64> = HashMap::new();
    for &(person, cluster) in assigned {
        *by_cell.entry((cluster, person)).or_default() += 1;
        *by_cluster.entry(cluster).or_default() += 1;
        *by_person.entry(person).or_default() += 1;
    }
    let tp: u64 = by_cell.values().map(|&n| pairs(n)).sum();
    let same_cluster: u64 = by_cluster.values().map(|&n| pairs(n)).sum();
    let same_person: u64 = by_person.values().map(|&n| pairs(n)).sum();
    let mut people_in: HashMap<u64, u32> = HashMap::new();
    for &(cluster, _) in by_cell.keys() {
        *people_in.entry(cluster).or_default() += 1;
    }
    PairScores {
        precision: if same_cluster == 0 { 1.0 } else { tp as f64 / same_cluster as f64 },
        recall: if same_person == 0 { 1.0 } else { tp as f64 / same_person as f64 },
        clusters: by_cluster.len(),
        people: by_person.len(),
        items: assigned.len(),
        impure_clusters: people_in.values().filter(|&&n| n > 1).count(),
    }
}

/// Clusters `items` (label, template) in the given order, as the pipeline would one track after
/// another; (label, final cluster id) for each.
pub fn cluster_all(params: ClusterParams, items: &[(u32, &[f32])]) -> Vec<(u32, u64)> {
    let mut c = Clusterer::new(params, Vec::new());
    let mut assigned: Vec<u64> = Vec::with_capacity(items.len());
    let mut redirect: std::collections::HashMap<u64, u64> = Default::default();
    let mut next = 1u64;
    for (_, t) in items {
        let plan = c.plan(t);
        let id = match &plan {
            Plan::New => {
                next += 1;
                next - 1
            }
            Plan::Join { into, merge, .. } => {
                for m in merge {
                    redirect.insert(*m, *into);
                }
                *into
            }
        };
        c.apply(&plan, id, Exemplar { face_id: 0, embedding: t.to_vec(), quality: 1.0 });
        assigned.push(id);
    }
    let resolve = |mut id: u64| {
        while let Some(&n) = redirect.get(&id) {
            id = n;
        }
        id
    };
    items.iter().zip(assigned).map(|((l, _), a)| (*l, resolve(a))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64) -> Vec<f32> {
        crate::gallery::hnsw::tests::random_unit(1, seed)
    }

    /// A face near `base` (a person's other photo): `base` plus noise of size `eps`.
    fn near(base: &[f32], seed: u64, eps: f32) -> Vec<f32> {
        let n = unit(seed);
        normalized(&base.iter().zip(&n).map(|(b, x)| b + eps * x).collect::<Vec<_>>())
    }

    const P: ClusterParams = ClusterParams { threshold: 0.4, margin: 0.02, merge_threshold: 0.3, max_exemplars: 8 };

    #[test]
    fn faces_of_one_person_join_and_strangers_start_their_own_cluster() {
        let (a, b) = (unit(1), unit(2));
        let mut items: Vec<(u32, Vec<f32>)> = Vec::new();
        for i in 0..10 {
            items.push((0, near(&a, 100 + i, 0.3)));
            items.push((1, near(&b, 200 + i, 0.3)));
        }
        let refs: Vec<(u32, &[f32])> = items.iter().map(|(l, v)| (*l, v.as_slice())).collect();
        let s = pair_scores(&cluster_all(P, &refs));
        assert_eq!((s.clusters, s.people), (2, 2), "{s:?}");
        assert_eq!((s.precision, s.recall), (1.0, 1.0));
    }

    #[test]
    fn two_clusters_of_one_person_merge_and_the_older_id_survives() {
        let a = unit(7);
        let mut c = Clusterer::new(ClusterParams { threshold: 0.35, margin: 0.0, merge_threshold: 0.3, max_exemplars: 8 }, Vec::new());
        // Two faces of one person too far apart to join (0.4 apart) start two clusters ...
        let f1 = near(&a, 1, 0.21);
        let f2: Vec<f32> = {
            // the mirror image of f1 around a: a - (f1 - a)
            normalized(&a.iter().zip(&f1).map(|(x, y)| 2.0 * x - y).collect::<Vec<_>>())
        };
        assert!(distance(&f1, &f2) > 0.35);
        let p = c.plan(&f1);
        c.apply(&p, 1, Exemplar { face_id: 1, embedding: f1.clone(), quality: 1.0 });
        let p = c.plan(&f2);
        assert_eq!(p, Plan::New);
        c.apply(&p, 2, Exemplar { face_id: 2, embedding: f2.clone(), quality: 1.0 });
        // ... and a third face between them joins one and merges the two: id 1 survives.
        match c.plan(&a) {
            Plan::Join { into, merge, .. } => assert_eq!((into, merge), (1, vec![2])),
            other => panic!("expected a merge, got {other:?}"),
        }
    }

    #[test]
    fn a_face_between_two_people_joins_neither_and_exemplars_stay_bounded() {
        let (a, b) = (unit(11), unit(12));
        let mid = normalized(&a.iter().zip(&b).map(|(x, y)| x + y).collect::<Vec<_>>());
        let d = distance(&mid, &a);
        let p = ClusterParams { threshold: d + 0.01, margin: 0.05, merge_threshold: 0.1, max_exemplars: 3 };
        let mut c = Clusterer::new(p, vec![Cluster::new(1, false, vec![Exemplar { face_id: 1, embedding: a.clone(), quality: 1.0 }]), Cluster::new(2, false, vec![Exemplar { face_id: 2, embedding: b.clone(), quality: 1.0 }])]);
        assert_eq!(c.plan(&mid), Plan::New, "equally near two people: a new cluster, never a guess");
        let mut evicted = 0;
        for i in 0..6 {
            let f = near(&a, 50 + i, 0.05);
            let plan = c.plan(&f);
            assert!(matches!(plan, Plan::Join { into: 1, .. }), "{plan:?}");
            evicted += c.apply(&plan, 99, Exemplar { face_id: 10 + i, embedding: f, quality: i as f32 }).len();
        }
        assert_eq!(c.get(1).unwrap().exemplars.len(), 3);
        assert_eq!(evicted, 4);
        c.retain_faces(|id| id != 2);
        assert!(c.get(2).is_none(), "a cluster without faces is dropped");
    }

    #[test]
    fn pair_scores_count_pairs() {
        // Person 0: 3 items, two in cluster 1, one in 2; person 1: one item in cluster 1.
        let s = pair_scores(&[(0, 1), (0, 1), (0, 2), (1, 1)]);
        // Same-cluster pairs: C(3,2)=3 in cluster 1, of which 1 is one person; person pairs: 3.
        assert!((s.precision - 1.0 / 3.0).abs() < 1e-9 && (s.recall - 1.0 / 3.0).abs() < 1e-9, "{s:?}");
        assert_eq!((s.clusters, s.people, s.impure_clusters), (2, 2, 1));
    }
}
