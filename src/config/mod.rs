//! The configuration file: serde structs with `deny_unknown_fields`, documented defaults and a
//! `validate()` that names the key and the file, all checked before any thread starts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod http;

use crate::detect::DetectConfig;
use crate::embed::EmbedConfig;
use crate::embed::batcher::BatchConfig;
use crate::events::EventsConfig;
use crate::identify::IdentifyConfig;
use crate::gallery::GalleryConfig;
use crate::infer::InferConfig;
use crate::ingest::CameraConfig;
use crate::track::TrackConfig;

/// The embedded default configuration (`config/default.toml`).
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub infer: InferConfig,
    pub detect: DetectConfig,
    pub embed: EmbedConfig,
    pub track: TrackConfig,
    pub identify: IdentifyConfig,
    pub batch: BatchConfig,
    pub pipeline: PipelineConfig,
    pub gallery: GalleryConfig,
    pub events: EventsConfig,
    pub http: http::HttpConfig,
    pub cameras: Vec<CameraConfig>,
    /// Access-control gates (see `config/examples/gate.toml`).
    pub gates: Vec<crate::gate::GateConfig>,
    /// The gates' audit log.
    pub gate_log: crate::gate::GateLogConfig,
    /// Best shots of every track (see `config/examples/visitors.toml`).
    pub snapshots: crate::visitors::SnapshotsConfig,
    /// Unknown faces grouped into visitors.
    pub visitors: crate::visitors::VisitorsConfig,
    /// Visits per site and day.
    pub visits: crate::visitors::VisitsConfig,
    /// Several nodes sharing one gallery and the cameras (PostgreSQL; see `config/examples/cluster.toml`).
    pub cluster: crate::cluster::ClusterConfig,
    /// Folder that relative paths in the file resolve against (the file's folder; the current
    /// folder for the embedded default).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// Worker counts and queue sizes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Detection workers, one ONNX session each. On the 2-vCPU reference machine one detection and
    /// one embedding worker keep both vCPUs busy; more only add contention.
    pub detect_workers: usize,
    /// Embedding workers, one ONNX session each.
    pub embed_workers: usize,
    /// Frames a camera may queue for detection; when full the oldest is dropped (counted).
    pub camera_queue: usize,
    /// Embedding requests waiting for the batcher; when full new requests are dropped (counted).
    pub embed_queue: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self { detect_workers: 2, embed_workers: 1, camera_queue: 2, embed_queue: 256 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {error}")]
    Read { file: PathBuf, error: std::io::Error },
    #[error("{file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("{file}: `{key}` {message}")]
    Invalid { file: PathBuf, key: String, message: String },
    /// Every problem found, each naming its key (`facestream check` prints them all).
    #[error("{}", .problems.iter().map(|p| format!("{}: `{}` {}", .file.display(), p.key, p.message)).collect::<Vec<_>>().join("\n"))]
    Problems { file: PathBuf, problems: Vec<Problem> },
}

/// One problem of a config file: the key (`section.key`) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    /// The problems this error stands for (one for a read or parse error).
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ConfigError::Problems { problems, .. } => problems.clone(),
            ConfigError::Invalid { key, message, .. } => vec![Problem { key: key.clone(), message: message.clone() }],
            other => vec![Problem { key: String::new(), message: other.to_string() }],
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read { file: path.to_path_buf(), error })?;
        Self::parse(&text, path)
    }

    /// Where the gallery lives: the cluster's database when `[cluster]` is on (the local store
    /// path then holds only the index dump), else the SQLite store.
    pub fn store_spec(&self) -> crate::gallery::store::StoreSpec {
        crate::gallery::store::StoreSpec { path: self.gallery.store_path(&self.base_dir), database: self.cluster.database.clone() }
    }

    /// The embedded default.
    pub fn embedded() -> Result<Self, ConfigError> {
        let mut cfg = Self::parse(DEFAULT_TOML, Path::new("<embedded config/default.toml>"))?;
        // The default plays the bundled fixtures: from the checkout when run elsewhere.
        if !Path::new("tests/fixtures").is_dir() {
            cfg.base_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        }
        Ok(cfg)
    }

    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let cfg = Self::parse_unchecked(text, file)?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// `embed.model` resolved against the config file's folder.
    pub fn embed_model(&self) -> Option<PathBuf> {
        self.embed.model.as_ref().map(|m| if m.is_absolute() { m.clone() } else { self.base_dir.join(m) })
    }

    /// The embedder's model card file: the fine-tuned one of `embed.model`, or the converted one.
    pub fn embed_card(&self) -> PathBuf {
        match self.embed_model() {
            Some(dir) => dir.join(format!("{}.toml", crate::embed::FINETUNED_CARD)),
            None => crate::infer::locate_models(&self.infer).join(format!("{}.toml", crate::embed::CARD)),
        }
    }

    /// `embed.head` resolved against the config file's folder.
    pub fn embed_head(&self) -> Option<PathBuf> {
        self.embed.head.as_ref().map(|h| if h.is_absolute() { h.clone() } else { self.base_dir.join(h) })
    }

    /// Parses without checking the values (`facestream check` then reports every problem).
    pub fn parse_unchecked(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let mut cfg: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { file: file.to_path_buf(), message: e.to_string() })?;
        cfg.base_dir = match file.parent() {
            Some(p) if file.is_file() && !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(cfg)
    }

    /// Every problem of the values (not of the sources: see [`Config::run_problems`]).
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut add = |section: &str, list: Vec<(String, String)>| {
            out.extend(list.into_iter().map(|(key, message)| Problem { key: format!("{section}.{key}"), message }));
        };
        add("detect", self.detect.problems());
        add("embed", self.embed.problems());
        if self.infer.intra_threads == 0 || self.infer.intra_threads > 256 {
            add("infer", vec![("intra_threads".into(), format!("must be 1..=256, got {}", self.infer.intra_threads))]);
        }
        add("track", self.track.problems());
        add("identify", self.identify.problems());
        add("batch", self.batch.problems());
        let ev = &self.events;
        let mut evp = Vec::new();
        if let Some((_, m)) = crate::events::sinks::kinds_problem(&ev.stdout_events) {
            evp.push(("stdout_events".to_string(), m));
        }
        if ev.file_keep > 1000 {
            evp.push(("file_keep".to_string(), format!("must be at most 1000 rotated files, got {}", ev.file_keep)));
        }
        if !(1..=1_000_000).contains(&ev.queue) {
            evp.push(("queue".to_string(), format!("must be 1..=1000000 updates, got {}", ev.queue)));
        }
        if ev.file_max_bytes != 0 && ev.file_max_bytes < 4096 {
            evp.push(("file_max_bytes".to_string(), format!("must be 0 (no rotation) or at least 4096, got {}", ev.file_max_bytes)));
        }
        add("events", evp);
        let mut gp = Vec::new();
        if let Some(c) = self.gallery.index_crossover.filter(|c| !(1..=100_000_000).contains(c)) {
            gp.push(("index_crossover".to_string(), format!("must be 1..=100000000 samples, got {c}")));
        }
        if let Some(ef) = self.gallery.ef_search.filter(|e| !(1..=4096).contains(e)) {
            gp.push(("ef_search".to_string(), format!("must be 1..=4096, got {ef}")));
        }
        add("gallery", gp);
        if let Some(w) = &self.events.webhook {
            add("events.webhook", w.problems());
        }
        if let Some(m) = &self.events.mqtt {
            add("events.mqtt", m.problems());
        }
        if let Some(n) = &self.events.nats {
            add("events.nats", n.problems());
        }
        add("cluster", self.cluster.problems());
        add("http", self.http.problems());
        let p = &self.pipeline;
        for (key, v, max) in [("detect_workers", p.detect_workers, 64), ("embed_workers", p.embed_workers, 64), ("camera_queue", p.camera_queue, 1024), ("embed_queue", p.embed_queue, 65536)] {
            if v == 0 || v > max {
                add("pipeline", vec![(key.into(), format!("must be 1..={max}, got {v}"))]);
            }
        }
        let camera_ids: Vec<&str> = self.cameras.iter().map(|c| c.id.as_str()).collect();
        let mut gate_ids = std::collections::HashSet::new();
        for (i, g) in self.gates.iter().enumerate() {
            add(&format!("gates[{i}]"), g.problems(&camera_ids));
            if !gate_ids.insert(g.id.as_str()) {
                add(&format!("gates[{i}]"), vec![("id".into(), format!("`{}` is used by another gate", g.id))]);
            }
        }
        add("gate_log", self.gate_log.problems());
        add("snapshots", self.snapshots.problems());
        add("visitors", self.visitors.problems());
        add("visits", self.visits.problems(&camera_ids));
        let mut seen = std::collections::HashSet::new();
        for (i, cam) in self.cameras.iter().enumerate() {
            add(&format!("cameras[{i}]"), cam.problems());
            if !seen.insert(cam.id.as_str()) {
                add(&format!("cameras[{i}]"), vec![("id".into(), format!("`{}` is used by another camera", cam.id))]);
            }
        }
        out
    }

    /// Every problem of the values, as one error naming the file.
    pub fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        into_result(file, self.problems())
    }

    /// What `run` needs beyond the values: at least one enabled camera and a usable source for
    /// each, and every gallery photo present.
    pub fn run_problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut add = |key: String, message: String| out.push(Problem { key, message });
        if !self.cameras.iter().any(|c| c.enabled) {
            add("cameras".into(), "lists no enabled camera; add a [[cameras]] entry with an id and a url".into());
        }
        for (i, cam) in self.cameras.iter().enumerate().filter(|(_, c)| c.enabled) {
            if let Err(m) = cam.source(&self.base_dir) {
                add(format!("cameras[{i}].url"), m);
            }
        }
        match self.gallery.photos(&self.base_dir) {
            Ok(photos) => {
                for (name, path) in photos {
                    if !path.is_file() {
                        add("gallery".into(), format!("photo {} of `{name}` does not exist", path.display()));
                    }
                }
            }
            Err(e) => add("gallery".into(), e.to_string()),
        }
        out
    }

    /// Everything `run` checks before any thread starts: the values and the sources, all at once.
    pub fn validate_for_run(&self, file: &Path) -> Result<(), ConfigError> {
        let mut all = self.problems();
        all.extend(self.run_problems());
        into_result(file, all)
    }
}

fn into_result(file: &Path, problems: Vec<Problem>) -> Result<(), ConfigError> {
    if problems.is_empty() { Ok(()) } else { Err(ConfigError::Problems { file: file.to_path_buf(), problems }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        Config::embedded().unwrap();
    }

    #[test]
    fn unknown_key_is_refused_with_its_name() {
        let err = Config::parse("[detect]\nmin_fce = 20\n", Path::new("x.toml")).unwrap_err().to_string();
        assert!(err.contains("x.toml") && err.contains("min_fce"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = "[detect]\nmin_face = 2\nmin_score = 7.0\n[track]\nmax_age = 0\n[pipeline]\nembed_workers = 0\n";
        let err = Config::parse(text, Path::new("x.toml")).unwrap_err();
        let keys: Vec<String> = err.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["detect.min_face", "detect.min_score", "track.max_age", "pipeline.embed_workers"]);
        assert_eq!(err.to_string().lines().count(), 4, "{err}");
    }

    #[test]
    fn visitor_sections_are_checked_before_start() {
        let text = "[visitors]\nmargin = 7\n[visits]\ntimezone = \"Mars/Olympus\"\n[[visits.sites]]\nid = \"a b\"\ncameras = [\"nope\"]\n[snapshots]\ncontext_width = 5\n[[cameras]]\nid = \"c\"\nurl = \"test:smpte\"\ndecode_threads = 999\n";
        let err = Config::parse(text, Path::new("x.toml")).unwrap_err();
        let keys: Vec<String> = err.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["snapshots.context_width", "visitors.margin", "visits.timezone", "visits.sites[0].id", "visits.sites[0].cameras", "cameras[0].decode_threads"]);
        Config::parse(include_str!("../../config/examples/visitors.toml"), Path::new("visitors.toml")).unwrap();
    }

    #[test]
    fn bad_value_names_the_key() {
        let err = Config::parse("[detect]\nmin_face = 2\n", Path::new("x.toml")).unwrap_err().to_string();
        assert!(err.contains("detect.min_face"), "{err}");
    }
}
