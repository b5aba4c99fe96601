//! The configuration file: serde structs with `deny_unknown_fields`, documented defaults and a
//! `validate()` that names the key and the file, all checked before any thread starts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::detect::DetectConfig;
use crate::embed::EmbedConfig;
use crate::infer::InferConfig;

/// The embedded default configuration (`config/default.toml`).
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub infer: InferConfig,
    pub detect: DetectConfig,
    pub embed: EmbedConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("{file}: `{key}` {message}")]
    Invalid { file: PathBuf, key: String, message: String },
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// The embedded default.
    pub fn embedded() -> Result<Self, ConfigError> {
        Self::parse(DEFAULT_TOML, Path::new("<embedded config/default.toml>"))
    }

    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let cfg: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { file: file.to_path_buf(), message: e.to_string() })?;
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
