//! Gallery commands: enroll, gallery list/show/remove/export/import.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::open_store;
use facestream::config::Config;
use facestream::photo::Analyzer;

pub fn cmd_enroll(cfg: &Config, name: Option<String>, images: Vec<PathBuf>, dir: Option<PathBuf>, bbox: Option<String>, store: Option<PathBuf>) -> Result<ExitCode> {
    let bbox = match bbox {
        Some(text) => {
            let v: Vec<f32> = text.split(',').map(|t| t.trim().parse::<f32>()).collect::<Result<_, _>>().with_context(|| format!("--box {text}: expected four numbers x1,y1,x2,y2"))?;
            if v.len() != 4 || v[2] <= v[0] || v[3] <= v[1] {
                bail!("--box {text}: expected x1,y1,x2,y2 with x2 > x1 and y2 > y1");
            }
            Some(v)
        }
        None => None,
    };
    let mut list: Vec<(String, PathBuf)> = Vec::new();
    if let Some(dir) = dir {
        list = facestream::dataset::read_folder(&dir)?.into_iter().map(|l| (l.identity, l.path)).collect();
        if list.is_empty() {
            bail!("{}: no photos found (expected one sub-folder per person)", dir.display());
        }
    } else if let Some(name) = name {
        if images.is_empty() {
            bail!("give at least one image for {name}");
        }
        list = images.into_iter().map(|p| (name.clone(), p)).collect();
    }
    let bbox = bbox.map(|b| facestream::detect::BBox { x1: b[0], y1: b[1], x2: b[2], y2: b[3] });
    let mut store = open_store(cfg, store)?;
    let mut analyzer = Analyzer::new(cfg)?;
    let model = analyzer.embedder.model_id().to_string();
    let (mut ok, mut failed) = (0usize, 0usize);
    let total = list.len();
    let started = std::time::Instant::now();
    for (i, (person, path)) in list.iter().enumerate() {
        match facestream::photo::enrollable(&mut analyzer, path, bbox).and_then(|e| {
            store.add_sample(person, &e.embedding, &model, e.quality, &e.image_sha256)?;
            Ok(e)
        }) {
            Ok(_) => {
                ok += 1;
                eprintln!("[{:>4}/{total}] {person}: {} enrolled", i + 1, path.display());
            }
            Err(e) => {
                failed += 1;
                eprintln!("[{:>4}/{total}] error: {e}", i + 1);
            }
        }
    }
    eprintln!("{ok} enrolled, {failed} refused in {:.1} s into {}", started.elapsed().as_secs_f32(), store.path.display());
    Ok(if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

pub fn cmd_gallery(cfg: &Config, action: crate::GalleryAction, store: Option<PathBuf>) -> Result<ExitCode> {
    let mut store = open_store(cfg, store)?;
    match action {
        crate::GalleryAction::List => {
            for p in store.persons()? {
                println!("{}", json!({"id": p.id, "name": p.name, "samples": p.samples, "metadata": p.metadata, "created": p.created, "updated": p.updated}));
            }
        }
        crate::GalleryAction::Show { name } => {
            let p = store.person_by_name(&name)?.ok_or_else(|| facestream::gallery::store::StoreError::NoPerson(name.clone()))?;
            let samples: Vec<_> = store
                .samples(Some(p.id))?
                .into_iter()
                .map(|s| json!({"id": s.id, "model": s.model_id, "quality": s.quality, "image_sha256": s.image_sha256, "created": s.created}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&json!({"person": p, "samples": samples}))?);
        }
        crate::GalleryAction::Remove { name } => {
            let p = store.person_by_name(&name)?.ok_or_else(|| facestream::gallery::store::StoreError::NoPerson(name.clone()))?;
            store.remove_person(p.id)?;
            eprintln!("removed {name} ({} samples)", p.samples);
        }
        crate::GalleryAction::Export { file } => {
            let data = store.export()?;
            std::fs::write(&file, serde_json::to_string(&data)?).with_context(|| format!("{}: cannot write", file.display()))?;
            eprintln!("exported {} persons to {}", data.persons.len(), file.display());
        }
        crate::GalleryAction::Import { file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("{}: cannot read", file.display()))?;
            let data: facestream::gallery::store::Export = serde_json::from_str(&text).with_context(|| format!("{}: not a facestream gallery export", file.display()))?;
            let (p, s) = store.import(&data)?;
            eprintln!("imported {p} persons, {s} samples");
        }
    }
    Ok(ExitCode::SUCCESS)
}

