//! The gallery: who the pipeline knows. Persons with one or more embeddings each; lookup is an
//! exact scan that keeps each person's best (smallest) distance, so every sample of a person counts.
//! Shared behind a read-write lock so enrollments are seen by running cameras at once.

pub mod bench;
pub mod index;
pub mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::embed::{DIM, Embedding};

pub type SharedGallery = Arc<RwLock<Gallery>>;

#[derive(Clone, Debug, PartialEq)]
pub struct Match {
    pub person_id: u64,
    pub name: String,
    pub distance: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum GalleryError {
    #[error("embedding has {got} values, the gallery holds {DIM}-d embeddings")]
    Dimension { got: usize },
    #[error("{path}: {reason}")]
    Enroll { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// Default number of samples above which the HNSW index replaces the exact scan (measured with
/// `facestream bench-gallery`, see BENCHMARKS.md).
pub const DEFAULT_CROSSOVER: usize = 50_000;
/// Rebuild the HNSW index when this fraction of its points belong to removed persons.
const TOMBSTONE_REBUILD: f64 = 0.2;

#[derive(Clone, Debug)]
pub struct PersonInfo {
    pub id: u64,
    pub name: String,
    pub samples: usize,
}

/// In-memory gallery: every sample of every person in one contiguous array (exact scan), plus an
/// HNSW index over the same samples once the gallery is large. Removal tombstones a person's
/// samples; the index is rebuilt when tombstones pile up.
pub struct Gallery {
    persons: HashMap<u64, PersonInfo>,
    by_name: HashMap<String, u64>,
    vectors: Vec<f32>,
    /// Person id per sample; 0 marks a removed (tombstoned) sample.
    owners: Vec<u64>,
    tombstones: usize,
    next_id: u64,
    hnsw: Option<index::HnswIndex>,
    pub crossover: usize,
    pub ef_search: usize,
}

impl Default for Gallery {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Gallery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gallery").field("persons", &self.persons.len()).field("samples", &self.owners.len()).finish()
    }
}

impl Gallery {
    pub fn new() -> Self {
        Self {
            persons: HashMap::new(),
            by_name: HashMap::new(),
            vectors: Vec::new(),
            owners: Vec::new(),
            tombstones: 0,
            next_id: 1,
            hnsw: None,
            crossover: DEFAULT_CROSSOVER,
            ef_search: index::DEFAULT_EF,
        }
    }

    pub fn len(&self) -> usize {
        self.persons.len()
    }

    pub fn is_empty(&self) -> bool {
        self.persons.is_empty()
    }

    /// Live samples (all persons).
    pub fn samples(&self) -> usize {
        self.owners.len() - self.tombstones
    }

    pub fn persons(&self) -> Vec<PersonInfo> {
        let mut v: Vec<_> = self.persons.values().cloned().collect();
        v.sort_by_key(|p| p.id);
        v
    }

    pub fn person_id(&self, name: &str) -> Option<u64> {
        self.by_name.get(name).copied()
    }

    pub fn uses_index(&self) -> bool {
        self.hnsw.is_some()
    }

    /// Adds a sample to the person of that name (created when new); returns the person's id.
    pub fn add(&mut self, name: &str, embedding: Embedding) -> Result<u64, GalleryError> {
        let id = match self.by_name.get(name) {
            Some(id) => *id,
            None => {
                let id = self.next_id;
                self.next_id += 1;
                id
            }
        };
        self.add_with_id(id, name, embedding)?;
        Ok(id)
    }

    /// Adds a sample for a person whose id is fixed elsewhere (the store).
    pub fn add_with_id(&mut self, id: u64, name: &str, embedding: Embedding) -> Result<(), GalleryError> {
        if embedding.len() != DIM {
            return Err(GalleryError::Dimension { got: embedding.len() });
        }
        self.next_id = self.next_id.max(id + 1);
        let p = self.persons.entry(id).or_insert_with(|| PersonInfo { id, name: name.to_string(), samples: 0 });
        p.samples += 1;
        self.by_name.insert(name.to_string(), id);
        let slot = self.owners.len();
        self.vectors.extend_from_slice(&embedding);
        self.owners.push(id);
        // New samples are searchable at once: the index takes inserts while in use.
        if let Some(h) = &self.hnsw {
            h.insert(&self.vectors[slot * DIM..(slot + 1) * DIM], slot);
        } else if self.samples() >= self.crossover {
            self.rebuild_index();
        }
        Ok(())
    }

    /// Removes a person; their samples are never returned again.
    pub fn remove(&mut self, id: u64) -> bool {
        let Some(p) = self.persons.remove(&id) else { return false };
        self.by_name.remove(&p.name);
        for o in self.owners.iter_mut().filter(|o| **o == id) {
            *o = 0;
            self.tombstones += 1;
        }
        if self.hnsw.is_some() && self.tombstones as f64 > TOMBSTONE_REBUILD * self.owners.len() as f64 {
            self.compact();
        }
        true
    }

    pub fn remove_name(&mut self, name: &str) -> bool {
        match self.by_name.get(name) {
            Some(&id) => self.remove(id),
            None => false,
        }
    }

    /// Drops tombstoned samples and rebuilds the index (or returns to the exact scan).
    pub fn compact(&mut self) {
        let mut vectors = Vec::with_capacity(self.samples() * DIM);
        let mut owners = Vec::with_capacity(self.samples());
        for (i, &o) in self.owners.iter().enumerate() {
            if o != 0 {
                vectors.extend_from_slice(&self.vectors[i * DIM..(i + 1) * DIM]);
                owners.push(o);
            }
        }
        self.vectors = vectors;
        self.owners = owners;
        self.tombstones = 0;
        self.hnsw = None;
        if self.samples() >= self.crossover {
            self.rebuild_index();
        }
    }

    /// Builds the HNSW index over every live sample (parallel insert).
    pub fn rebuild_index(&mut self) {
        let started = std::time::Instant::now();
        let h = index::HnswIndex::build(&self.vectors, &self.owners);
        tracing::info!(samples = self.samples(), seconds = started.elapsed().as_secs_f32(), "gallery index built");
        self.hnsw = Some(h);
    }

    /// The `k` nearest persons, nearest first, each at its best sample's distance; open-set
    /// decisions (threshold, margin) are the caller's.
    pub fn search(&self, query: &[f32], k: usize) -> Vec<Match> {
        let mut best: HashMap<u64, f32> = HashMap::new();
        match &self.hnsw {
            Some(h) => {
                // Ask for more neighbours than persons: several may be samples of one person.
                for (slot, d) in h.search(query, (k * 4).max(8), self.ef_search.max(k * 4)) {
                    let owner = self.owners.get(slot).copied().unwrap_or(0);
                    if owner != 0 {
                        let e = best.entry(owner).or_insert(f32::INFINITY);
                        *e = e.min(d);
                    }
                }
            }
            None => {
                // One pass keeps the C best samples by dot product (a cheap compare per sample);
                // persons are then formed from those candidates only.
                let c = (k * 16).max(32);
                let mut top: Vec<(f32, usize)> = Vec::with_capacity(c + 1);
                let mut floor = f32::NEG_INFINITY;
                for (i, &owner) in self.owners.iter().enumerate() {
                    if owner == 0 {
                        continue;
                    }
                    let d = index::dot(query, &self.vectors[i * DIM..(i + 1) * DIM]);
                    if top.len() < c || d > floor {
                        let pos = top.partition_point(|x| x.0 < d);
                        top.insert(pos, (d, i));
                        if top.len() > c {
                            top.remove(0);
                        }
                        floor = top[0].0;
                    }
                }
                for &(d, i) in &top {
                    let e = best.entry(self.owners[i]).or_insert(f32::INFINITY);
                    *e = e.min((2.0 - 2.0 * d).max(0.0).sqrt());
                }
            }
        }
        let mut out: Vec<Match> = best
            .into_iter()
            .filter_map(|(id, distance)| self.persons.get(&id).map(|p| Match { person_id: id, name: p.name.clone(), distance }))
            .collect();
        out.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.person_id.cmp(&b.person_id)));
        out.truncate(k);
        out
    }
}

/// Persons to enroll at start, from the config file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GalleryConfig {
    /// The SQLite store of enrolled persons (default: $FACESTREAM_GALLERY, else
    /// ~/.local/share/facestream/gallery.db). `facestream enroll` writes it; `run` loads it.
    pub store: Option<PathBuf>,
    /// Samples above which the HNSW index replaces the exact scan.
    pub index_crossover: Option<usize>,
    /// HNSW search breadth.
    pub ef_search: Option<usize>,
    /// A folder with one sub-folder per person (the sub-folder's name is the person's name) holding
    /// photos of that person.
    pub folder: Option<PathBuf>,
    /// Persons listed one by one.
    pub people: Vec<PersonPhotos>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonPhotos {
    pub name: String,
    pub images: Vec<PathBuf>,
}

impl GalleryConfig {
    pub fn store_path(&self, base: &Path) -> PathBuf {
        match &self.store {
            Some(p) if p.is_absolute() => p.clone(),
            Some(p) => base.join(p),
            None => store::default_path(),
        }
    }

    /// An empty gallery with this config's index settings.
    pub fn new_gallery(&self) -> Gallery {
        let mut g = Gallery::new();
        if let Some(c) = self.index_crossover {
            g.crossover = c.max(1);
        }
        if let Some(ef) = self.ef_search {
            g.ef_search = ef.max(1);
        }
        g
    }

    /// (name, photo path) pairs to enroll, with relative paths resolved against `base`.
    pub fn photos(&self, base: &Path) -> Result<Vec<(String, PathBuf)>, GalleryError> {
        let abs = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
        let mut out = Vec::new();
        for p in &self.people {
            for img in &p.images {
                out.push((p.name.clone(), abs(img)));
            }
        }
        if let Some(folder) = &self.folder {
            let folder = abs(folder);
            let entries = std::fs::read_dir(&folder).map_err(|e| GalleryError::Enroll { path: folder.clone(), reason: e.to_string() })?;
            let mut dirs: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
            dirs.sort();
            for dir in dirs {
                let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let mut files: Vec<_> = std::fs::read_dir(&dir)
                    .map_err(|e| GalleryError::Enroll { path: dir.clone(), reason: e.to_string() })?
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.is_file())
                    .collect();
                files.sort();
                out.extend(files.into_iter().map(|f| (name.clone(), f)));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::normalized;

    fn unit(seed: usize) -> Embedding {
        normalized(&(0..DIM).map(|i| ((i as f32 + 1.0) * (seed as f32 + 1.0) * 0.737).sin()).collect::<Vec<_>>())
    }

    #[test]
    fn search_uses_every_sample_and_sorts_persons() {
        let mut g = Gallery::new();
        g.add("a", unit(1)).unwrap();
        g.add("b", unit(2)).unwrap();
        g.add("a", unit(3)).unwrap();
        assert_eq!(g.len(), 2);
        let m = g.search(&unit(3), 2);
        assert_eq!(m[0].name, "a");
        assert!(m[0].distance < 1e-3, "sqrt(2 - 2 dot) is coarse near 0");
        assert!(g.remove_name("a"));
        assert_eq!(g.search(&unit(3), 2)[0].name, "b");
        assert!(g.add("c", vec![0.0; 3]).is_err());
    }

    #[test]
    fn hnsw_and_exact_scan_agree_and_removed_persons_never_return() {
        let mut exact = Gallery::new();
        let mut indexed = Gallery::new();
        indexed.crossover = 10;
        for i in 0..200 {
            let e = unit(i);
            exact.add(&format!("p{i}"), e.clone()).unwrap();
            indexed.add(&format!("p{i}"), e).unwrap();
        }
        assert!(indexed.uses_index() && !exact.uses_index());
        for i in [3usize, 50, 199] {
            assert_eq!(exact.search(&unit(i), 1)[0].name, indexed.search(&unit(i), 1)[0].name);
        }
        // Remove most persons: tombstones trigger a rebuild; none of them comes back.
        for i in 0..150 {
            assert!(indexed.remove_name(&format!("p{i}")));
        }
        for i in 0..150 {
            let m = indexed.search(&unit(i), 5);
            assert!(m.iter().all(|m| m.name.trim_start_matches('p').parse::<usize>().unwrap() >= 150), "{m:?}");
        }
        assert_eq!(indexed.len(), 50);
        assert_eq!(indexed.samples(), 50);
    }
}
