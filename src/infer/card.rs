//! Model cards: the TOML file beside each model that says where it came from, its sha256 and the
//! exact names and shapes of its inputs and outputs. Sessions are checked against them at load.

use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::InferError;

#[derive(Debug, Clone, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    #[serde(default = "float32")]
    pub dtype: String,
    /// -1 marks a dynamic dimension.
    pub shape: Vec<i64>,
}

fn float32() -> String {
    "float32".into()
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelCard {
    pub id: String,
    pub file: String,
    pub sha256: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    #[serde(default)]
    pub source: toml::Table,
    #[serde(default)]
    pub preprocessing: toml::Table,
    /// Calibrated decision values (e.g. the embedder's distance threshold), when the card has them.
    #[serde(default)]
    pub calibration: toml::Table,
}

impl ModelCard {
    pub fn read(path: &Path) -> Result<Self, InferError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| InferError::Card { path: path.to_path_buf(), reason: format!("cannot read: {e}") })?;
        toml::from_str(&text).map_err(|e| InferError::Card { path: path.to_path_buf(), reason: e.to_string() })
    }

    /// Refuses a model file whose bytes are not the ones the card describes.
    pub fn verify_file(&self, path: &Path) -> Result<(), InferError> {
        let bad = |reason: String| InferError::ModelFile { path: path.to_path_buf(), reason };
        let mut f = std::fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|e| bad(format!("cannot read: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let got = format!("{:x}", hasher.finalize());
        if !got.eq_ignore_ascii_case(&self.sha256) {
            return Err(bad(format!("sha256 is {got}, the card expects {}", self.sha256)));
        }
        Ok(())
    }

    /// A float from the `[calibration]` table.
    pub fn calibration_f32(&self, key: &str) -> Option<f32> {
        self.calibration.get(key).and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64))).map(|v| v as f32)
    }
}
