//! The gallery: who the pipeline knows. Persons with one or more embeddings each; lookup is an
//! exact scan that keeps each person's best (smallest) distance, so every sample of a person counts.
//! Shared behind a read-write lock so enrollments are seen by running cameras at once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::embed::{DIM, Embedding, distance};

pub type SharedGallery = Arc<RwLock<Gallery>>;

#[derive(Clone, Debug)]
pub struct Person {
    pub id: u64,
    pub name: String,
    pub samples: Vec<Embedding>,
}

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
}

#[derive(Debug, Default)]
pub struct Gallery {
    persons: Vec<Person>,
    next_id: u64,
}

impl Gallery {
    pub fn new() -> Self {
        Self { persons: Vec::new(), next_id: 1 }
    }

    pub fn len(&self) -> usize {
        self.persons.len()
    }

    pub fn is_empty(&self) -> bool {
        self.persons.is_empty()
    }

    pub fn persons(&self) -> &[Person] {
        &self.persons
    }

    /// Adds a sample to the person of that name (created when new); returns the person's id.
    pub fn add(&mut self, name: &str, embedding: Embedding) -> Result<u64, GalleryError> {
        if embedding.len() != DIM {
            return Err(GalleryError::Dimension { got: embedding.len() });
        }
        if let Some(p) = self.persons.iter_mut().find(|p| p.name == name) {
            p.samples.push(embedding);
            return Ok(p.id);
        }
        let id = self.next_id.max(1);
        self.next_id = id + 1;
        self.persons.push(Person { id, name: name.to_string(), samples: vec![embedding] });
        Ok(id)
    }

    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.persons.len();
        self.persons.retain(|p| p.name != name);
        before != self.persons.len()
    }

    /// The `k` nearest persons, nearest first (each person at its best sample's distance).
    pub fn search(&self, query: &[f32], k: usize) -> Vec<Match> {
        let mut best: Vec<Match> = self
            .persons
            .iter()
            .map(|p| Match {
                person_id: p.id,
                name: p.name.clone(),
                distance: p.samples.iter().map(|s| distance(query, s)).fold(f32::INFINITY, f32::min),
            })
            .collect();
        best.sort_by(|a, b| a.distance.total_cmp(&b.distance));
        best.truncate(k);
        best
    }
}

/// Persons to enroll at start, from the config file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GalleryConfig {
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
        normalized(&(0..DIM).map(|i| ((i * 31 + seed * 17) % 13) as f32 - 6.0).collect::<Vec<_>>())
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
        assert!(m[0].distance < 1e-6);
        assert!(g.remove("a"));
        assert_eq!(g.search(&unit(3), 2)[0].name, "b");
        assert!(g.add("c", vec![0.0; 3]).is_err());
    }
}
