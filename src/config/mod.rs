//! The configuration file: serde structs with `deny_unknown_fields`, documented defaults and a
//! `validate()` that names the key and the file, all checked before any thread starts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::detect::DetectConfig;
use crate::embed::EmbedConfig;
use crate::embed::batcher::BatchConfig;
use crate::events::EventsConfig;
use crate::events::vote::VoteConfig;
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
    pub identify: VoteConfig,
    pub batch: BatchConfig,
    pub pipeline: PipelineConfig,
    pub gallery: GalleryConfig,
    pub events: EventsConfig,
    pub http: crate::http::HttpConfig,
    pub cameras: Vec<CameraConfig>,
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
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read { file: path.to_path_buf(), error })?;
        Self::parse(&text, path)
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
        let mut cfg: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { file: file.to_path_buf(), message: e.to_string() })?;
        cfg.base_dir = match file.parent() {
            Some(p) if file.is_file() && !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        cfg.validate(file)?;
        Ok(cfg)
    }

    pub fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let wrap = |section: &str, (key, message): (String, String)| ConfigError::Invalid {
            file: file.to_path_buf(),
            key: format!("{section}.{key}"),
            message,
        };
        self.detect.validate().map_err(|e| wrap("detect", e))?;
        self.embed.validate().map_err(|e| wrap("embed", e))?;
        if self.infer.intra_threads == 0 || self.infer.intra_threads > 256 {
            return Err(wrap("infer", ("intra_threads".into(), format!("must be 1..=256, got {}", self.infer.intra_threads))));
        }
        self.track.validate().map_err(|e| wrap("track", e))?;
        self.identify.validate().map_err(|e| wrap("identify", e))?;
        self.batch.validate().map_err(|e| wrap("batch", e))?;
        if let Some(w) = &self.events.webhook {
            w.validate().map_err(|e| wrap("events.webhook", e))?;
        }
        if let Some(m) = &self.events.mqtt {
            m.validate().map_err(|e| wrap("events.mqtt", e))?;
        }
        self.http.validate().map_err(|e| wrap("http", e))?;
        let p = &self.pipeline;
        for (key, v, max) in [("detect_workers", p.detect_workers, 64), ("embed_workers", p.embed_workers, 64), ("camera_queue", p.camera_queue, 1024), ("embed_queue", p.embed_queue, 65536)] {
            if v == 0 || v > max {
                return Err(wrap("pipeline", (key.into(), format!("must be 1..={max}, got {v}"))));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, cam) in self.cameras.iter().enumerate() {
            cam.validate().map_err(|e| wrap(&format!("cameras[{i}]"), e))?;
            if !seen.insert(cam.id.as_str()) {
                return Err(wrap(&format!("cameras[{i}]"), ("id".into(), format!("`{}` is used by another camera", cam.id))));
            }
        }
        Ok(())
    }

    /// Checks what `run` needs beyond [`Config::validate`]: at least one enabled camera, and a
    /// usable source for each.
    pub fn validate_for_run(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid { file: file.to_path_buf(), key, message };
        if !self.cameras.iter().any(|c| c.enabled) {
            return Err(invalid("cameras".into(), "lists no enabled camera; add a [[cameras]] entry with an id and a url".into()));
        }
        for (i, cam) in self.cameras.iter().enumerate().filter(|(_, c)| c.enabled) {
            cam.source(&self.base_dir).map_err(|m| invalid(format!("cameras[{i}].url"), m))?;
        }
        for (name, path) in self.gallery.photos(&self.base_dir).map_err(|e| invalid("gallery".into(), e.to_string()))? {
            if !path.is_file() {
                return Err(invalid("gallery".into(), format!("photo {} of `{name}` does not exist", path.display())));
            }
        }
        Ok(())
    }
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
    fn bad_value_names_the_key() {
        let err = Config::parse("[detect]\nmin_face = 2\n", Path::new("x.toml")).unwrap_err().to_string();
        assert!(err.contains("detect.min_face"), "{err}");
    }
}
