//! The gallery: who the pipeline knows. Persons with one or more embeddings each; a person's
//! distance is their best (smallest) sample's, so every sample counts. Small galleries are scanned
//! exactly; large ones use an index over one template per person (a sketch scan or an HNSW graph)
//! for a shortlist that is then ranked exactly.
//! Shared behind a read-write lock so enrollments are seen by running cameras at once.

pub mod bench;
pub mod hnsw;
pub mod index;
pub mod sketch;
pub mod postgres;
pub mod sql;
pub mod sqlite;
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
    #[error("person id {id} belongs to `{holder}`; refusing to add a sample of `{name}` to it")]
    IdTaken { id: u64, holder: String, name: String },
    #[error("a person named `{name}` is already in the gallery (id {id})")]
    NameTaken { name: String, id: u64 },
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// Default number of samples above which the HNSW index replaces the exact scan (measured with
/// `facestream bench-gallery`, see BENCHMARKS.md).
pub const DEFAULT_CROSSOVER: usize = 20_000;
/// First id handed out by [`Gallery::add`] to persons that live only in memory (the config's
/// `[[gallery.people]]`, evaluation galleries). The store's ids (SQLite AUTOINCREMENT from 1) never
/// reach it, so a person created over the API can never be given a config person's id.
pub const LOCAL_ID_BASE: u64 = 1 << 40;
/// Largest gallery whose first index is built inline when an enrollment crosses the crossover
/// (a few milliseconds); larger ones are built in the background.
const SYNC_BUILD_PERSONS: usize = 2_000;
/// Rebuild the HNSW index when this fraction of its points belong to removed persons.
const TOMBSTONE_REBUILD: f64 = 0.2;

#[derive(Clone, Debug)]
pub struct PersonInfo {
    pub id: u64,
    pub name: String,
    pub samples: usize,
}

/// In-memory gallery: every sample of every person in one contiguous array (exact scan), plus an
/// index over the persons' templates once the gallery is large. Removal tombstones a person's
/// samples; the index is rebuilt in the background when removed entries pile up.
pub struct Gallery {
    persons: HashMap<u64, PersonInfo>,
    by_name: HashMap<String, u64>,
    vectors: Vec<f32>,
    /// Person id per sample; 0 marks a removed (tombstoned) sample.
    owners: Vec<u64>,
    tombstones: usize,
    /// Sample slots of each person (for matching on every sample and for templates).
    slots: HashMap<u64, Vec<u32>>,
    /// Next id for in-memory persons (from [`LOCAL_ID_BASE`]).
    next_local_id: u64,
    index: Option<PersonIndex>,
    /// A rebuild running in the background, and the persons changed since its snapshot.
    rebuild: Option<(std::thread::JoinHandle<PersonIndex>, std::collections::HashSet<u64>)>,
    /// While set (bulk loading), the index is not maintained; [`Gallery::end_bulk`] builds it once.
    bulk: bool,
    /// Where the index is dumped after a build and reloaded from when still current.
    pub index_dump: Option<PathBuf>,
    pub crossover: usize,
    /// Search breadth; `None`: the index kind's measured default.
    pub ef_search: Option<usize>,
    pub index_kind: IndexKind,
}

/// The HNSW graph over one template per person (the normalised mean of their samples); a search
/// takes the nearest templates and ranks those persons by their best sample, exactly.
struct PersonIndex {
    graph: Graph,
    /// Person per node; 0 marks a node that no longer stands for anyone (removed, or replaced
    /// by a newer template).
    node_person: Vec<u64>,
    person_node: HashMap<u64, u32>,
    dead: usize,
}

/// How the templates are searched: an HNSW graph, or (very large galleries) a scan of binary
/// sketches; both give a shortlist that the gallery re-ranks exactly.
enum Graph {
    Hnsw(hnsw::Hnsw),
    Sketch(sketch::Sketches),
}

/// The index used above the crossover.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexKind {
    /// Scan of 128-bit sign sketches, shortlist re-ranked exactly: builds in seconds, recall@1
    /// >= 0.99 at every measured size on the synthetic galleries (BENCHMARKS.md).
    #[default]
    Sketch,
    /// HNSW graph (dumped beside the store and reloaded when current): sublinear search when the
    /// embeddings have structure, but weak on uniformly spread identities.
    Hnsw,
}

impl PersonIndex {
    fn build(templates: &[f32], persons: Vec<u64>, dump: Option<&Path>, kind: IndexKind) -> Self {
        if kind == IndexKind::Sketch {
            let started = std::time::Instant::now();
            let mut sk = sketch::Sketches::new(0x5EED);
            // Headroom for enrollments before the next rebuild.
            sk.reserve(persons.len() + persons.len() / 4 + 1024);
            for t in templates.chunks_exact(DIM) {
                sk.push(t);
            }
            tracing::info!(persons = persons.len(), seconds = started.elapsed().as_secs_f32(), "gallery sketch index built");
            return Self::from_parts(Graph::Sketch(sk), persons);
        }
        let started = std::time::Instant::now();
        let ids: Vec<f32> = persons.iter().flat_map(|&p| [f32::from_bits(p as u32), f32::from_bits((p >> 32) as u32)]).collect();
        let fp = hnsw::fingerprint(templates) ^ hnsw::fingerprint(&ids).rotate_left(17);
        if let Some(path) = dump
            && let Some(h) = hnsw::Hnsw::load(path, templates, fp) {
                tracing::info!(persons = persons.len(), seconds = started.elapsed().as_secs_f32(), dump = %path.display(), "gallery index reloaded from its dump");
                return Self::from_parts(Graph::Hnsw(h), persons);
            }
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let params = hnsw::Params::default();
        let total = persons.len();
        let h = hnsw::Hnsw::build(templates, params, threads, &|done| {
            if total >= 100_000 {
                tracing::info!(done, total, "building gallery index");
            }
        });
        tracing::info!(persons = total, seconds = started.elapsed().as_secs_f32(), "gallery index built");
        if let Some(path) = dump {
            match h.save(path, fp) {
                Ok(()) => tracing::info!(dump = %path.display(), "gallery index dumped"),
                Err(e) => tracing::warn!(dump = %path.display(), error = %e, "cannot write the gallery index dump (the next start rebuilds it)"),
            }
        }
        Self::from_parts(Graph::Hnsw(h), persons)
    }

    fn from_parts(graph: Graph, node_person: Vec<u64>) -> Self {
        let person_node = node_person.iter().enumerate().map(|(i, &p)| (p, i as u32)).collect();
        Self { graph, node_person, person_node, dead: 0 }
    }

    /// Nodes nearest to the query: `k` of them, search breadth `ef`.
    fn shortlist(&self, q: &[f32], k: usize, ef: usize) -> Vec<u32> {
        match &self.graph {
            Graph::Hnsw(h) => h.search(q, k, ef).into_iter().map(|(n, _)| n).collect(),
            Graph::Sketch(s) => s.search(q, k.max(ef), &|n| self.node_person[n as usize] == 0).into_iter().map(|(n, _)| n).collect(),
        }
    }

    fn memory_bytes(&self) -> usize {
        let g = match &self.graph {
            Graph::Hnsw(h) => h.memory_bytes(),
            Graph::Sketch(s) => s.memory_bytes(),
        };
        g + self.node_person.len() * 8 + self.person_node.len() * 24
    }

    fn retire(&mut self, person: u64) {
        if let Some(node) = self.person_node.remove(&person) {
            self.node_person[node as usize] = 0;
            self.dead += 1;
        }
    }

    fn put(&mut self, person: u64, template: &[f32]) {
        self.retire(person);
        let node = match &mut self.graph {
            Graph::Hnsw(h) => h.insert(template),
            Graph::Sketch(s) => s.push(template),
        };
        debug_assert_eq!(node as usize, self.node_person.len());
        self.node_person.push(person);
        self.person_node.insert(person, node);
    }
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
            slots: HashMap::new(),
            next_local_id: LOCAL_ID_BASE,
            index: None,
            rebuild: None,
            bulk: false,
            index_dump: None,
            crossover: DEFAULT_CROSSOVER,
            index_kind: IndexKind::default(),
            ef_search: None,
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
        self.index.is_some()
    }

    /// "exact", "hnsw" or "sketch": how a search runs now.
    pub fn search_method(&self) -> &'static str {
        match self.index.as_ref().map(|ix| &ix.graph) {
            None => "exact",
            Some(Graph::Hnsw(_)) => "hnsw",
            Some(Graph::Sketch(_)) => "sketch",
        }
    }

    /// The search breadth in use: the configured one, else the index kind's default.
    pub fn effective_ef(&self) -> usize {
        self.ef_search.unwrap_or(match self.index_kind {
            IndexKind::Sketch => index::SKETCH_DEFAULT_EF,
            IndexKind::Hnsw => index::HNSW_DEFAULT_EF,
        })
    }

    /// Bytes held by the index (not the samples).
    pub fn index_memory_bytes(&self) -> usize {
        self.index.as_ref().map_or(0, |ix| ix.memory_bytes())
    }

    /// Stops maintaining the index while many samples are added (loading a store).
    pub fn begin_bulk(&mut self) {
        self.bulk = true;
    }

    /// Ends a bulk load: builds the index once (or reloads its dump) when the gallery is large.
    pub fn end_bulk(&mut self) {
        self.bulk = false;
        if self.samples() >= self.crossover {
            self.rebuild_index();
        } else {
            self.index = None;
        }
    }

    /// The normalised mean of a person's live samples.
    fn template(&self, id: u64) -> Option<Embedding> {
        let slots = self.slots.get(&id).filter(|s| !s.is_empty())?;
        let mut t = vec![0f32; DIM];
        for &s in slots {
            for (a, b) in t.iter_mut().zip(&self.vectors[s as usize * DIM..(s as usize + 1) * DIM]) {
                *a += b;
            }
        }
        Some(crate::embed::normalized(&t))
    }

    /// Templates of every person (ascending id) and the ids, for a build.
    fn templates(&self) -> (Vec<f32>, Vec<u64>) {
        let mut ids: Vec<u64> = self.persons.keys().copied().collect();
        ids.sort_unstable();
        let mut t = Vec::with_capacity(ids.len() * DIM);
        let mut kept = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(v) = self.template(id) {
                t.extend_from_slice(&v);
                kept.push(id);
            }
        }
        (t, kept)
    }

    /// A person's samples changed: the index gets their new template (or forgets them).
    fn reindex(&mut self, id: u64) {
        if self.bulk {
            return;
        }
        if let Some((_, dirty)) = &mut self.rebuild {
            dirty.insert(id);
        }
        let template = self.template(id);
        if let Some(ix) = &mut self.index {
            match template {
                Some(t) if self.persons.contains_key(&id) => ix.put(id, &t),
                _ => ix.retire(id),
            }
        }
    }

    /// A background rebuild has finished and waits for [`Gallery::maintain`].
    pub fn rebuild_ready(&self) -> bool {
        self.rebuild.as_ref().is_some_and(|(h, _)| h.is_finished())
    }

    /// Swaps in a background rebuild once it has finished, replaying the changes made meanwhile.
    /// Cheap when nothing is pending; called on every change and by the pipeline's housekeeping.
    pub fn maintain(&mut self) {
        if !self.rebuild.as_ref().is_some_and(|(h, _)| h.is_finished()) {
            return;
        }
        let Some((handle, dirty)) = self.rebuild.take() else { return };
        match handle.join() {
            Ok(ix) => {
                self.index = Some(ix);
                for id in dirty {
                    self.reindex(id);
                }
                tracing::info!(persons = self.persons.len(), "gallery index rebuilt in the background and swapped in");
                self.rebuild_if_worn();
            }
            Err(_) => tracing::error!("background gallery index rebuild panicked; keeping the current index"),
        }
    }

    /// Starts a background rebuild once dead entries exceed the tombstone share.
    fn rebuild_if_worn(&mut self) {
        if self.index.as_ref().is_some_and(|ix| ix.dead as f64 > TOMBSTONE_REBUILD * ix.node_person.len() as f64) {
            self.start_background_rebuild();
        }
    }

    /// Starts rebuilding the index from a snapshot in the background (searches go on with the
    /// current index, whose removed entries are skipped); [`Gallery::maintain`] swaps it in.
    pub fn start_background_rebuild(&mut self) {
        if self.rebuild.is_some() {
            return;
        }
        let (templates, ids) = self.templates();
        let dump = self.index_dump.clone();
        let kind = self.index_kind;
        match std::thread::Builder::new().name("gallery-index".into()).spawn(move || PersonIndex::build(&templates, ids, dump.as_deref(), kind)) {
            Ok(handle) => self.rebuild = Some((handle, Default::default())),
            // Searches go on with the current index (or the exact scan); the next change retries.
            Err(e) => tracing::error!(error = %e, "cannot start the gallery index rebuild thread"),
        }
    }

    /// Adds a sample to the person of that name (created when new, with an in-memory id from
    /// [`LOCAL_ID_BASE`] on); returns the person's id.
    pub fn add(&mut self, name: &str, embedding: Embedding) -> Result<u64, GalleryError> {
        let id = match self.by_name.get(name) {
            Some(id) => *id,
            None => {
                let id = self.next_local_id;
                self.next_local_id += 1;
                id
            }
        };
        self.add_with_id(id, name, embedding)?;
        Ok(id)
    }

    /// Adds a sample for a person whose id is fixed elsewhere (the store). An id that already
    /// belongs to a person of another name is refused: a sample never lands on someone else.
    pub fn add_with_id(&mut self, id: u64, name: &str, embedding: Embedding) -> Result<(), GalleryError> {
        if embedding.len() != DIM {
            return Err(GalleryError::Dimension { got: embedding.len() });
        }
        if let Some(p) = self.persons.get(&id).filter(|p| p.name != name) {
            return Err(GalleryError::IdTaken { id, holder: p.name.clone(), name: name.to_string() });
        }
        if let Some(&other) = self.by_name.get(name).filter(|&&other| other != id) {
            return Err(GalleryError::NameTaken { name: name.to_string(), id: other });
        }
        if id >= LOCAL_ID_BASE {
            self.next_local_id = self.next_local_id.max(id + 1);
        }
        let p = self.persons.entry(id).or_insert_with(|| PersonInfo { id, name: name.to_string(), samples: 0 });
        p.samples += 1;
        self.by_name.insert(name.to_string(), id);
        let slot = self.owners.len();
        self.vectors.extend_from_slice(&embedding);
        self.owners.push(id);
        self.slots.entry(id).or_default().push(slot as u32);
        self.maintain();
        // New samples are searchable at once: the index takes the person's new template.
        if self.index.is_some() {
            self.reindex(id);
        } else if !self.bulk && self.samples() >= self.crossover {
            // A small gallery gets its index at once; a large one is built in the background
            // (searches scan exactly meanwhile), so no caller holds the write lock for a build.
            if self.persons.len() <= SYNC_BUILD_PERSONS {
                self.rebuild_index();
            } else {
                self.start_background_rebuild();
            }
        }
        Ok(())
    }

    /// Removes a person; their samples are never returned again.
    pub fn remove(&mut self, id: u64) -> bool {
        let Some(p) = self.persons.remove(&id) else { return false };
        self.by_name.remove(&p.name);
        for s in self.slots.remove(&id).unwrap_or_default() {
            self.owners[s as usize] = 0;
            self.tombstones += 1;
        }
        self.maintain();
        self.reindex(id);
        self.rebuild_if_worn();
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
        self.slots.clear();
        for (i, &o) in self.owners.iter().enumerate() {
            if o != 0 {
                vectors.extend_from_slice(&self.vectors[i * DIM..(i + 1) * DIM]);
                self.slots.entry(o).or_default().push(owners.len() as u32);
                owners.push(o);
            }
        }
        self.vectors = vectors;
        self.owners = owners;
        self.tombstones = 0;
        self.index = None;
        self.rebuild = None;
        if self.samples() >= self.crossover {
            self.rebuild_index();
        }
    }

    /// Builds the index over every person's template now (the HNSW graph in parallel), or reloads
    /// its dump when that was made for exactly these templates.
    pub fn rebuild_index(&mut self) {
        let (templates, ids) = self.templates();
        self.rebuild = None;
        self.index = Some(PersonIndex::build(&templates, ids, self.index_dump.as_deref(), self.index_kind));
    }

    /// The `k` nearest persons, nearest first, each at its best sample's distance; open-set
    /// decisions (threshold, margin) are the caller's.
    pub fn search(&self, query: &[f32], k: usize) -> Vec<Match> {
        let mut best: HashMap<u64, f32> = HashMap::new();
        match &self.index {
            Some(ix) => {
                // The nearest templates name the candidates; each is then scored by its best
                // sample, exactly, so every sample of a person counts.
                let shortlist = (k * 4).max(8);
                for node in ix.shortlist(query, shortlist + ix.dead.min(64), self.effective_ef().max(shortlist)) {
                    let person = ix.node_person[node as usize];
                    if person == 0 || best.contains_key(&person) {
                        continue;
                    }
                    let d = self.slots.get(&person).map_or(f32::INFINITY, |slots| {
                        slots.iter().map(|&s| index::unit_distance(query, &self.vectors[s as usize * DIM..(s as usize + 1) * DIM])).fold(f32::INFINITY, f32::min)
                    });
                    best.insert(person, d);
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
        let mut ranked: Vec<(u64, f32)> = best.into_iter().collect();
        ranked.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        ranked
            .into_iter()
            .filter_map(|(id, distance)| self.persons.get(&id).map(|p| Match { person_id: id, name: p.name.clone(), distance }))
            .take(k)
            .collect()
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
    /// HNSW search breadth, or the shortlist of the sketch scan (default 128 and 16).
    pub ef_search: Option<usize>,
    /// The index above the crossover: "sketch" (default) or "hnsw".
    pub index: Option<IndexKind>,
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
    /// Groups for access-control gates (`allow_groups`).
    #[serde(default)]
    pub groups: Vec<String>,
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
            g.ef_search = Some(ef.max(1));
        }
        if let Some(k) = self.index {
            g.index_kind = k;
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
            let photos = crate::dataset::read_folder(&folder).map_err(|e| GalleryError::Enroll { path: folder.clone(), reason: e.to_string() })?;
            out.extend(photos.into_iter().map(|l| (l.identity, l.path)));
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
    fn in_memory_and_store_persons_never_share_an_id() {
        let mut g = Gallery::new();
        let local = g.add("config-person", unit(1)).unwrap();
        assert!(local >= LOCAL_ID_BASE);
        g.add_with_id(1, "from-store", unit(2)).unwrap();
        assert!(matches!(g.add_with_id(1, "someone-else", unit(3)), Err(GalleryError::IdTaken { .. })), "a sample never lands on another person");
        assert!(matches!(g.add_with_id(2, "config-person", unit(3)), Err(GalleryError::NameTaken { .. })));
        assert_eq!(g.search(&unit(1), 1)[0].name, "config-person");
        assert_eq!(g.search(&unit(2), 1)[0].name, "from-store");
        assert_eq!(g.len(), 2);
    }

    #[test]
    fn indexes_agree_with_the_exact_scan_and_removed_persons_never_return() {
        for kind in [IndexKind::Sketch, IndexKind::Hnsw] {
            let mut exact = Gallery::new();
            let mut indexed = Gallery::new();
            indexed.crossover = 10;
            indexed.index_kind = kind;
            for i in 0..200 {
                let e = unit(i);
                exact.add(&format!("p{i}"), e.clone()).unwrap();
                indexed.add(&format!("p{i}"), e).unwrap();
            }
            assert!(indexed.uses_index() && !exact.uses_index());
            assert_eq!(indexed.search_method(), if kind == IndexKind::Sketch { "sketch" } else { "hnsw" });
            for i in [3usize, 50, 199] {
                assert_eq!(exact.search(&unit(i), 1)[0].name, indexed.search(&unit(i), 1)[0].name, "{kind:?}");
            }
            // A second sample moves the person's template; searches see it at once.
            let moved = unit(1000);
            indexed.add("p7", moved.clone()).unwrap();
            assert_eq!(indexed.search(&moved, 1)[0].name, "p7", "{kind:?}");
            // Remove most persons: tombstones start a background rebuild; none of them comes back,
            // before or after the rebuilt index is swapped in.
            for i in 0..150 {
                assert!(indexed.remove_name(&format!("p{i}")));
            }
            for i in 0..150 {
                let m = indexed.search(&unit(i), 5);
                assert!(m.iter().all(|m| m.name.trim_start_matches('p').parse::<usize>().unwrap() >= 150), "{kind:?} {m:?}");
            }
            // Rebuilds finish and are swapped in (changes made meanwhile are replayed, and a
            // replay that leaves many dead entries starts another rebuild).
            let mut rounds = 0;
            while indexed.rebuild.is_some() {
                std::thread::sleep(std::time::Duration::from_millis(5));
                indexed.maintain();
                rounds += 1;
                assert!(rounds < 2000, "rebuild never finished");
            }
            indexed.add("late", unit(2000)).unwrap();
            let ix = indexed.index.as_ref().unwrap();
            assert!(ix.dead as f64 <= TOMBSTONE_REBUILD * ix.node_person.len() as f64, "{kind:?}: {} dead of {}", ix.dead, ix.node_person.len());
            assert!(ix.node_person.len() < 120, "{kind:?}: the rebuilt index dropped the removed persons");
            assert_eq!(indexed.search(&unit(2000), 1)[0].name, "late");
            for i in 150..200 {
                assert_eq!(indexed.search(&unit(i), 1)[0].name, format!("p{i}"), "{kind:?}");
            }
            assert_eq!(indexed.len(), 51);
            assert_eq!(indexed.samples(), 51);
        }
    }
}
