//! The gallery's source of truth: persons (name, free-form metadata, timestamps) and face samples
//! (embedding, model id, quality, source image hash, the aligned crop). One interface
//! ([`Backend`]) with two engines: SQLite in WAL mode, the embedded default (`sqlite.rs`), and
//! PostgreSQL for several nodes sharing one gallery (`postgres.rs`, `[cluster] database`). Every
//! change is one transaction in either.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::Gallery;
use crate::embed::DIM;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("gallery store {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("gallery store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("gallery database: {0}")]
    Postgres(String),
    #[error(
        "gallery store holds {count} face sample(s) made by model `{found}`, but this facestream embeds with `{running}`; embeddings of different models cannot be compared: re-enroll those persons (facestream gallery export lists them)"
    )]
    ModelMismatch { count: usize, found: String, running: String },
    #[error("no person `{0}` in the gallery")]
    NoPerson(String),
    #[error("another person is already called `{0}`")]
    NameTaken(String),
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PersonRow {
    pub id: u64,
    pub name: String,
    pub metadata: serde_json::Value,
    pub created: u64,
    pub updated: u64,
    pub samples: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SampleRow {
    pub id: u64,
    pub person_id: u64,
    pub model_id: String,
    #[serde(deserialize_with = "finite_f32")]
    pub quality: f32,
    pub image_sha256: String,
    pub created: u64,
    #[serde(deserialize_with = "finite_f32s")]
    pub embedding: Vec<f32>,
}

/// A number that fits an f32 (JSON like `1e39` would become infinity, which JSON cannot write
/// back: an export must read as it was written).
fn finite_f32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    let v = f64::deserialize(d)?;
    let f = v as f32;
    if f.is_finite() { Ok(f) } else { Err(serde::de::Error::custom(format!("{v} is not a finite 32-bit number"))) }
}

fn finite_f32s<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
    let v = Vec::<f64>::deserialize(d)?;
    v.iter()
        .map(|&x| {
            let f = x as f32;
            if f.is_finite() { Ok(f) } else { Err(serde::de::Error::custom(format!("embedding value {x} is not a finite 32-bit number"))) }
        })
        .collect()
}

/// Export format: everything needed to rebuild a store elsewhere.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Export {
    pub format: String,
    pub persons: Vec<ExportPerson>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExportPerson {
    pub name: String,
    pub metadata: serde_json::Value,
    pub samples: Vec<SampleRow>,
}

/// A person's groups from their metadata (`{"groups": ["staff", ...]}`).
pub fn groups_of(metadata: &serde_json::Value) -> Vec<String> {
    metadata.get("groups").and_then(|g| g.as_array()).map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// A finite `DIM`-d vector of length 1 (within 1e-3): what the embedder stores.
pub fn is_unit_embedding(v: &[f32]) -> bool {
    v.len() == DIM && v.iter().all(|x| x.is_finite()) && (v.iter().map(|x| x * x).sum::<f32>().sqrt() - 1.0).abs() < 1e-3
}

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(crate) fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn from_blob(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Default location: `$XDG_DATA_HOME/facestream/gallery.db` (or `~/.local/share/...`).
pub fn default_path() -> PathBuf {
    if let Some(p) = std::env::var_os("FACESTREAM_GALLERY") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_DATA_HOME").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")).join(".local/share")
    });
    base.join("facestream").join("gallery.db")
}

/// What a gallery engine does; [`Store`] adds what is the same for every engine on top.
pub trait Backend: Send {
    /// Adds a face sample (and its aligned crop, a JPEG) to an existing person in one
    /// transaction; `NoPerson` when the person is gone. Returns the sample id.
    fn add_face(&mut self, person_id: u64, embedding: &[f32], model_id: &str, quality: f32, image_sha256: &str, crop_jpeg: Option<&[u8]>) -> Result<u64, StoreError>;
    fn sample_crop(&self, sample_id: u64) -> Result<Option<Vec<u8>>, StoreError>;
    fn samples_with_crops(&self, person_id: u64) -> Result<Vec<u64>, StoreError>;
    fn remove_sample(&mut self, sample_id: u64) -> Result<Option<u64>, StoreError>;
    fn rename_person(&mut self, id: u64, name: &str) -> Result<bool, StoreError>;
    fn ensure_person(&mut self, name: &str, metadata: Option<&serde_json::Value>) -> Result<u64, StoreError>;
    fn add_sample(&mut self, name: &str, embedding: &[f32], model_id: &str, quality: f32, image_sha256: &str) -> Result<u64, StoreError>;
    fn set_groups(&mut self, id: u64, groups: &[String]) -> Result<bool, StoreError>;
    fn remove_samples_from(&mut self, suffix: &str) -> Result<usize, StoreError>;
    fn remove_person(&mut self, id: u64) -> Result<bool, StoreError>;
    fn persons(&self) -> Result<Vec<PersonRow>, StoreError>;
    fn samples(&self, person_id: Option<u64>) -> Result<Vec<SampleRow>, StoreError>;
    /// Replaces the embeddings (and model id) of the given samples and removes the listed ones,
    /// all in one transaction; how many were replaced.
    fn reembed(&mut self, model_id: &str, embeddings: &[(u64, Vec<f32>)], remove: &[u64]) -> Result<usize, StoreError>;
    /// Imports already-checked persons and samples in one transaction.
    fn import(&mut self, data: &Export) -> Result<(usize, usize), StoreError>;
    fn integrity_check(&self) -> Result<String, StoreError>;
}

/// Where the gallery lives: the local SQLite file, or a PostgreSQL database shared by nodes
/// (the local path then only holds the node's index dump).
#[derive(Clone, Debug, PartialEq)]
pub struct StoreSpec {
    pub path: PathBuf,
    pub database: Option<String>,
}

impl StoreSpec {
    pub fn sqlite(path: PathBuf) -> Self {
        Self { path, database: None }
    }

    pub fn open(&self) -> Result<Store, StoreError> {
        match &self.database {
            None => Store::open(&self.path),
            Some(url) => Store::connect(url, &self.path),
        }
    }
}

pub struct Store {
    db: Box<dyn Backend>,
    /// The SQLite file, or with PostgreSQL the local path the index dump goes beside.
    pub path: PathBuf,
    /// Where it is, for messages ("postgresql" or the file).
    pub location: String,
    database: Option<String>,
}

impl Store {
    /// The SQLite store at `path` (created when missing).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = super::sqlite::Sqlite::open(path)?;
        Ok(Self { db: Box::new(db), path: path.to_path_buf(), location: path.display().to_string(), database: None })
    }

    /// The PostgreSQL store at `url` (a libpq connection string or URL), migrations applied.
    pub fn connect(url: &str, local: &Path) -> Result<Self, StoreError> {
        let db = super::postgres::PgStore::connect(url)?;
        Ok(Self { db: Box::new(db), path: local.to_path_buf(), location: format!("postgresql ({})", super::postgres::redact(url)), database: Some(url.to_string()) })
    }

    /// Where this store is (to open the tables beside it, such as the gates' audit log).
    pub fn spec(&self) -> StoreSpec {
        StoreSpec { path: self.path.clone(), database: self.database.clone() }
    }

    /// Adds one face sample to an existing person, in one transaction; `NoPerson` when the person
    /// is gone (deleted while the upload was analysed): a delete is never undone by an upload.
    pub fn add_sample_to(&mut self, person_id: u64, embedding: &[f32], model_id: &str, quality: f32, image_sha256: &str) -> Result<(), StoreError> {
        self.db.add_face(person_id, embedding, model_id, quality, image_sha256, None).map(|_| ())
    }

    /// [`Self::add_sample_to`] with the aligned face crop (a JPEG, shown by the web UI), in the
    /// same transaction; returns the sample id.
    pub fn add_face(&mut self, person_id: u64, embedding: &[f32], model_id: &str, quality: f32, image_sha256: &str, crop_jpeg: Option<&[u8]>) -> Result<u64, StoreError> {
        self.db.add_face(person_id, embedding, model_id, quality, image_sha256, crop_jpeg)
    }

    /// A sample's face crop (JPEG), when one was kept at enrollment.
    pub fn sample_crop(&self, sample_id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.sample_crop(sample_id)
    }

    /// Sample ids that have a crop, among `person_id`'s samples.
    pub fn samples_with_crops(&self, person_id: u64) -> Result<Vec<u64>, StoreError> {
        self.db.samples_with_crops(person_id)
    }

    /// Removes one sample (and its crop); returns its person's id, None when there was no such
    /// sample.
    pub fn remove_sample(&mut self, sample_id: u64) -> Result<Option<u64>, StoreError> {
        self.db.remove_sample(sample_id)
    }

    /// Renames a person: false when there is no such person; `NameTaken` when another person has
    /// the name.
    pub fn rename_person(&mut self, id: u64, name: &str) -> Result<bool, StoreError> {
        self.db.rename_person(id, name)
    }

    /// Creates the person when new (or replaces the metadata when given); returns the id.
    pub fn ensure_person(&mut self, name: &str, metadata: Option<&serde_json::Value>) -> Result<u64, StoreError> {
        self.db.ensure_person(name, metadata)
    }

    /// Adds one face sample (and the person when new) in one transaction; returns the person id.
    pub fn add_sample(&mut self, name: &str, embedding: &[f32], model_id: &str, quality: f32, image_sha256: &str) -> Result<u64, StoreError> {
        self.db.add_sample(name, embedding, model_id, quality, image_sha256)
    }

    /// Replaces a person's `groups` (in their metadata; other metadata keys are kept); false when
    /// there is no such person.
    pub fn set_groups(&mut self, id: u64, groups: &[String]) -> Result<bool, StoreError> {
        self.db.set_groups(id, groups)
    }

    /// Removes the samples whose source (`image_sha256`) ends with `suffix` (samples enrolled
    /// from a visitor's track are `visitor:<id>:<track>`); how many.
    pub fn remove_samples_from(&mut self, suffix: &str) -> Result<usize, StoreError> {
        self.db.remove_samples_from(suffix)
    }

    pub fn remove_person(&mut self, id: u64) -> Result<bool, StoreError> {
        self.db.remove_person(id)
    }

    pub fn person_by_name(&self, name: &str) -> Result<Option<PersonRow>, StoreError> {
        Ok(self.persons()?.into_iter().find(|p| p.name == name))
    }

    pub fn person(&self, id: u64) -> Result<Option<PersonRow>, StoreError> {
        Ok(self.persons()?.into_iter().find(|p| p.id == id))
    }

    pub fn persons(&self) -> Result<Vec<PersonRow>, StoreError> {
        self.db.persons()
    }

    pub fn samples(&self, person_id: Option<u64>) -> Result<Vec<SampleRow>, StoreError> {
        self.db.samples(person_id)
    }

    /// Loads every sample into `gallery`, refusing samples made by another model.
    pub fn load_into(&self, gallery: &mut Gallery, running_model: &str) -> Result<usize, StoreError> {
        let persons = self.persons()?;
        let names: std::collections::HashMap<u64, String> = persons.iter().map(|p| (p.id, p.name.clone())).collect();
        let samples = self.samples(None)?;
        let foreign: Vec<&SampleRow> = samples.iter().filter(|s| s.model_id != running_model).collect();
        if let Some(first) = foreign.first() {
            return Err(StoreError::ModelMismatch { count: foreign.len(), found: first.model_id.clone(), running: running_model.to_string() });
        }
        let mut n = 0;
        // The index is built once at the end (or reloaded from its dump beside the store when
        // that dump was made for exactly these persons and samples).
        gallery.index_dump = Some(self.path.with_extension("hnsw"));
        gallery.begin_bulk();
        let mut skipped = 0;
        for s in samples {
            if !is_unit_embedding(&s.embedding) {
                // Never searched: a vector that is not a unit embedding (damaged, or imported
                // from elsewhere) could sit near every face and lend its name to all of them.
                skipped += 1;
                continue;
            }
            if let Some(name) = names.get(&s.person_id) {
                if let Err(e) = gallery.add_with_id(s.person_id, name, s.embedding) {
                    gallery.end_bulk();
                    return Err(StoreError::Open { path: self.path.clone(), reason: e.to_string() });
                }
                n += 1;
            }
        }
        gallery.end_bulk();
        if skipped > 0 {
            tracing::warn!(store = %self.location, skipped, "gallery samples that are not unit embeddings were skipped");
        }
        Ok(n)
    }

    pub fn export(&self) -> Result<Export, StoreError> {
        let samples = self.samples(None)?;
        let persons = self
            .persons()?
            .into_iter()
            .map(|p| ExportPerson {
                samples: samples.iter().filter(|s| s.person_id == p.id).cloned().collect(),
                name: p.name,
                metadata: p.metadata,
            })
            .collect();
        Ok(Export { format: "facestream-gallery-1".into(), persons })
    }

    /// Imports persons and samples (all in one transaction); returns (persons, samples) added.
    pub fn import(&mut self, data: &Export) -> Result<(usize, usize), StoreError> {
        for p in &data.persons {
            if let Some(bad) = p.samples.iter().find(|s| !is_unit_embedding(&s.embedding)) {
                return Err(StoreError::File {
                    path: PathBuf::from("<import>"),
                    reason: format!("sample {} of `{}` is not a {DIM}-d unit embedding (finite values, length 1); nothing was imported", bad.id, p.name),
                });
            }
        }
        self.db.import(data)
    }

    /// Replaces every listed sample's embedding with one made by `model_id` and removes the
    /// `remove` samples, atomically: the store never holds a mix of the two models' samples.
    pub fn reembed(&mut self, model_id: &str, embeddings: &[(u64, Vec<f32>)], remove: &[u64]) -> Result<usize, StoreError> {
        if let Some((id, _)) = embeddings.iter().find(|(_, e)| !is_unit_embedding(e)) {
            return Err(StoreError::File { path: PathBuf::from("<reembed>"), reason: format!("the new embedding of sample {id} is not a {DIM}-d unit embedding; nothing was changed") });
        }
        self.db.reembed(model_id, embeddings, remove)
    }

    /// The engine's own consistency check ("ok" when sound).
    pub fn integrity_check(&self) -> Result<String, StoreError> {
        self.db.integrity_check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    /// Found by `fuzz/` (json_bodies): an imported sample that is not a unit embedding ([1.0; 128])
    /// matched every nearby face at distance 0. Imports refuse it; a store that holds one skips it.
    #[test]
    fn samples_that_are_not_unit_embeddings_are_never_searched() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("g.db")).unwrap();
        let good = crate::embed::normalized(&(0..DIM).map(|i| i as f32).collect::<Vec<_>>());
        s.add_sample("ann", &good, "m1", 0.9, "a").unwrap();
        let mut data = s.export().unwrap();
        data.persons[0].name = "mallory".into();
        data.persons[0].samples[0].embedding = vec![1.0; DIM];
        let err = Store::open(&dir.path().join("h.db")).unwrap().import(&data).unwrap_err().to_string();
        assert!(err.contains("mallory") && err.contains("unit embedding"), "{err}");
        for bad in [vec![1.0; DIM], vec![f32::NAN; DIM], vec![0.0; DIM]] {
            s.add_sample("mallory", &bad, "m1", 0.9, "b").unwrap();
        }
        let mut g = Gallery::new();
        assert_eq!(s.load_into(&mut g, "m1").unwrap(), 1, "only ann's sample is loaded");
        assert!(g.search(&crate::embed::normalized(&[1.0; DIM]), 2).iter().all(|m| m.name != "mallory"));
    }

    /// Found by `fuzz/` (json_bodies): an embedding value like `2e246` parsed as infinity, which
    /// an export then wrote as `null` and could not read back. Such an export is refused.
    #[test]
    fn an_export_with_numbers_beyond_f32_is_refused_when_read() {
        let row = |emb: &str, q: &str| format!(r#"{{"format":"facestream-gallery-1","persons":[{{"name":"a","metadata":{{}},"samples":[{{"id":1,"person_id":1,"model_id":"m","quality":{q},"image_sha256":"h","created":0,"embedding":{emb}}}]}}]}}"#);
        let err = serde_json::from_str::<Export>(&row("[0.5, 2e246]", "0.5")).unwrap_err().to_string();
        assert!(err.contains("not a finite"), "{err}");
        assert!(serde_json::from_str::<Export>(&row("[0.5]", "1e39")).is_err());
        let ok: Export = serde_json::from_str(&row("[0.5, -0.25]", "0.5")).unwrap();
        assert_eq!(ok.persons[0].samples[0].embedding, [0.5, -0.25]);
    }

    #[test]
    fn samples_round_trip_and_foreign_models_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("g.db")).unwrap();
        let e = crate::embed::normalized(&(0..DIM).map(|i| i as f32).collect::<Vec<_>>());
        let id = s.add_sample("ann", &e, "m1", 0.9, "abc").unwrap();
        assert_eq!(s.add_sample("ann", &e, "m1", 0.8, "def").unwrap(), id);
        assert_eq!(s.persons().unwrap()[0].samples, 2);
        let mut g = Gallery::new();
        assert_eq!(s.load_into(&mut g, "m1").unwrap(), 2);
        assert_eq!(g.search(&e, 1)[0].name, "ann");
        let err = s.load_into(&mut Gallery::new(), "m2").unwrap_err().to_string();
        assert!(err.contains("re-enroll"), "{err}");
        let exported = s.export().unwrap();
        let mut other = Store::open(&dir.path().join("h.db")).unwrap();
        assert_eq!(other.import(&exported).unwrap(), (1, 2));
        assert!(s.remove_person(id).unwrap());
        assert!(s.samples(None).unwrap().is_empty(), "samples go with their person");
        assert_eq!(s.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn ids_are_never_reused_and_old_stores_are_upgraded_keeping_their_samples() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            // The schema of stores written before ids were AUTOINCREMENT.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE persons (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, metadata TEXT NOT NULL DEFAULT '{}', created INTEGER NOT NULL, updated INTEGER NOT NULL);
                 CREATE TABLE samples (id INTEGER PRIMARY KEY, person_id INTEGER NOT NULL REFERENCES persons(id) ON DELETE CASCADE, embedding BLOB NOT NULL, model_id TEXT NOT NULL, quality REAL NOT NULL, image_sha256 TEXT NOT NULL, created INTEGER NOT NULL);
                 INSERT INTO persons VALUES (1, 'ann', '{}', 0, 0), (2, 'bob', '{}', 0, 0);
                 INSERT INTO samples VALUES (1, 2, x'00', 'm1', 0.5, 'h', 0);",
            )
            .unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.samples(None).unwrap().len(), 1, "the upgrade keeps the samples");
        assert!(s.remove_person(2).unwrap());
        let carl = s.ensure_person("carl", None).unwrap();
        assert_eq!(carl, 3, "the removed highest id 2 is not handed out again");
        assert!(s.remove_person(carl).unwrap());
        drop(s);
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.ensure_person("dora", None).unwrap(), 4, "not even after a reopen");
        let e = vec![0.0f32; DIM];
        assert!(matches!(s.add_sample_to(99, &e, "m1", 0.5, "h"), Err(StoreError::NoPerson(_))), "no sample for a missing person");
        assert!(s.person_by_name("ann").unwrap().is_some());
        assert_eq!(s.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn the_hnsw_index_is_dumped_beside_the_store_and_reloaded_only_while_current() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let mut s = Store::open(&path).unwrap();
        let vec_of = |i: usize| crate::gallery::hnsw::tests::random_unit(1, i as u64 + 1);
        for i in 0..300 {
            s.add_sample(&format!("p{i}"), &vec_of(i), "m1", 0.9, "x").unwrap();
        }
        let load = |s: &Store| {
            let mut g = Gallery::new();
            g.crossover = 100;
            g.index_kind = crate::gallery::IndexKind::Hnsw;
            s.load_into(&mut g, "m1").unwrap();
            g
        };
        let g1 = load(&s);
        let dump = path.with_extension("hnsw");
        let first = std::fs::read(&dump).expect("dump written after the build");
        let g2 = load(&s);
        for i in (0..300).step_by(23) {
            assert_eq!(g1.search(&vec_of(i), 3), g2.search(&vec_of(i), 3));
            assert_eq!(g2.search(&vec_of(i), 1)[0].name, format!("p{i}"));
        }
        assert_eq!(std::fs::read(&dump).unwrap(), first, "a current dump is reused, not rewritten");
        // The store changes: the old dump no longer matches, the index is rebuilt and re-dumped.
        s.add_sample("newcomer", &vec_of(999), "m1", 0.9, "y").unwrap();
        let g3 = load(&s);
        assert_eq!(g3.search(&vec_of(999), 1)[0].name, "newcomer");
        assert_ne!(std::fs::read(&dump).unwrap(), first);
        // A damaged dump is ignored (rebuilt), never trusted.
        std::fs::write(&dump, b"FSHNSW01 garbage").unwrap();
        assert_eq!(load(&s).search(&vec_of(5), 1)[0].name, "p5");
        // A well-formed dump whose entry point is out of range: rejected and rebuilt, no panic.
        let mut bytes = std::fs::read(&dump).unwrap();
        bytes[48..52].copy_from_slice(&100_000u32.to_le_bytes());
        std::fs::write(&dump, &bytes).unwrap();
        assert_eq!(load(&s).search(&vec_of(7), 1)[0].name, "p7");
        assert_ne!(std::fs::read(&dump).unwrap(), bytes, "the rejected dump was replaced by a rebuilt one");
    }
}
