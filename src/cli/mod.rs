//! The command families of `facestream`, one file each; `main.rs` is clap and dispatch. This is
//! the command-line layer: it turns library errors into messages (anyhow) and exit codes.

pub mod bench;
pub mod cluster;
pub mod eval;
pub mod gallery;
pub mod gates;
pub mod photos;
pub mod run;
pub mod finetune;
pub mod train;
pub mod visitors;

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde_json::json;

use facestream::config::Config;
use facestream::detect::Face;
use facestream::gallery::store::Store;
use facestream::image;
use facestream::photo::{Analyzer, primary_face};

pub fn load_config(path: Option<&Path>) -> Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::embedded()?,
    })
}

pub fn face_json(f: &Face) -> serde_json::Value {
    json!({
        "bbox": [f.bbox.x1, f.bbox.y1, f.bbox.x2, f.bbox.y2],
        "score": f.score,
        "landmarks": f.landmarks,
    })
}

/// Loads an image and returns its main face and that face's embedding.
pub fn main_face(analyzer: &mut Analyzer, path: &Path) -> Result<(Face, Vec<f32>)> {
    let img = image::load(path)?;
    let faces = analyzer.detect(&img)?;
    let Some(i) = primary_face(&faces) else {
        bail!("{}: no face found (min face {} px)", path.display(), analyzer.detector.config().min_face);
    };
    let face = faces[i].clone();
    let emb = analyzer.embed(&img, std::slice::from_ref(&face))?.pop().flatten();
    let Some(emb) = emb else { bail!("{}: face too small to align", path.display()) };
    Ok((face, emb))
}

/// The gallery store: `--store` (a SQLite file), else the config's (the cluster's database with
/// `[cluster]`).
pub fn open_store(cfg: &Config, store: Option<PathBuf>) -> Result<Store> {
    Ok(match store {
        Some(path) => Store::open(&path)?,
        None => cfg.store_spec().open()?,
    })
}
