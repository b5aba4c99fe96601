//! Photo commands: detect, embed, compare, identify, demo.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde_json::json;

use super::{face_json, main_face, open_store};
use facestream::config::Config;
use facestream::detect::Face;
use facestream::embed::distance;
use facestream::identify::OperatingPoint;
use facestream::photo::Analyzer;
use facestream::{draw, image};

pub fn cmd_detect(cfg: &Config, images: &[PathBuf], draw_to: Option<&Path>) -> Result<ExitCode> {
    let rt = facestream::infer::Runtime::get(&cfg.infer)?;
    let mut detector = facestream::detect::Mtcnn::new(&rt, cfg.detect.clone())?;
    let into_dir = draw_to.is_some_and(|d| images.len() > 1 || d.is_dir());
    if let (Some(d), true) = (draw_to, into_dir) {
        std::fs::create_dir_all(d).with_context(|| format!("{}: cannot create folder", d.display()))?;
    }
    let mut failed = 0;
    for path in images {
        let result = (|| -> Result<()> {
            let mut img = image::load(path)?;
            let faces = detector.detect(&img)?;
            println!(
                "{}",
                json!({
                    "file": path,
                    "width": img.width,
                    "height": img.height,
                    "faces": faces.iter().map(face_json).collect::<Vec<_>>(),
                })
            );
            if let Some(d) = draw_to {
                let out = if into_dir {
                    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
                    d.join(format!("{stem}.faces.png"))
                } else {
                    d.to_path_buf()
                };
                draw::draw_faces(&mut img, &faces, None)?;
                draw::save(&img, &out)?;
                tracing::info!(file = %out.display(), faces = faces.len(), "drawn");
            }
            Ok(())
        })();
        if let Err(e) = result {
            failed += 1;
            eprintln!("error: {e:#}");
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} images failed", images.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cmd_embed(cfg: &Config, path: &Path, all: bool) -> Result<ExitCode> {
    let mut analyzer = Analyzer::new(cfg)?;
    let model = analyzer.embedder.model_id().to_string();
    if all {
        let img = image::load(path)?;
        let faces = analyzer.analyze(&img)?;
        let list: Vec<_> = faces
            .iter()
            .map(|(f, e)| {
                let mut v = face_json(f);
                v["embedding"] = json!(e);
                v
            })
            .collect();
        println!("{}", json!({"file": path, "model": model, "faces": list}));
    } else {
        let (face, emb) = main_face(&mut analyzer, path)?;
        let mut v = face_json(&face);
        v["embedding"] = json!(emb);
        println!("{}", json!({"file": path, "model": model, "face": v}));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cmd_compare(cfg: &Config, a: &Path, b: &Path, as_json: bool) -> Result<ExitCode> {
    let mut analyzer = Analyzer::new(cfg)?;
    let (_, ea) = main_face(&mut analyzer, a)?;
    let (_, eb) = main_face(&mut analyzer, b)?;
    let d = distance(&ea, &eb);
    let threshold = OperatingPoint::for_embedder(&cfg.identify, cfg.embed.threshold, &analyzer.embedder, 1).threshold;
    let same = d <= threshold;
    let verdict = if same { "same" } else { "different" };
    if as_json {
        println!("{}", json!({"a": a, "b": b, "distance": d, "threshold": threshold, "verdict": verdict}));
    } else {
        println!("{verdict}: distance {d:.4} (threshold {threshold:.4}) between {} and {}", a.display(), b.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cmd_identify(cfg: &Config, path: &Path, draw_to: Option<&Path>, store: Option<PathBuf>) -> Result<ExitCode> {
    let store = open_store(cfg, store)?;
    let mut analyzer = Analyzer::new(cfg)?;
    let mut gallery = cfg.gallery.new_gallery();
    store.load_into(&mut gallery, analyzer.embedder.model_id())?;
    let mut img = image::load(path)?;
    let faces = analyzer.analyze(&img)?;
    let point = OperatingPoint::for_embedder(&cfg.identify, cfg.embed.threshold, &analyzer.embedder, gallery.len());
    let threshold = point.threshold;
    let mut labels = Vec::new();
    let mut out = Vec::new();
    for (f, e) in &faces {
        let matches = e.as_ref().map(|e| gallery.search(e, 2)).unwrap_or_default();
        let (person, distance) = point.decide(&matches);
        let name = person.as_ref().map(|p| p.1.clone()).unwrap_or_else(|| "unknown".into());
        labels.push(name.clone());
        let mut v = face_json(f);
        v["person"] = json!(name);
        v["person_id"] = json!(person.as_ref().map(|p| p.0));
        v["distance"] = json!(distance);
        if person.is_none() {
            // The nearest person, for tuning: not a name given to this face.
            if let Some(m) = matches.first() {
                v["nearest_person"] = json!(m.name);
                v["nearest_distance"] = json!(m.distance);
            }
        }
        out.push(v);
    }
    println!("{}", json!({"file": path, "threshold": threshold, "faces": out}));
    if let Some(d) = draw_to {
        let plain: Vec<Face> = faces.iter().map(|(f, _)| f.clone()).collect();
        draw::draw_faces(&mut img, &plain, Some(&labels))?;
        draw::save(&img, d)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cmd_demo(cfg: &Config, fixtures: &Path) -> Result<ExitCode> {
    let mut analyzer = Analyzer::new(cfg)?;
    println!("== detection (min face {} px) ==", cfg.detect.min_face);
    for name in ["meds-aa-S001-01.jpg", "meds-aa-S029-01.jpg", "race.jpg", "girl-1741925_1920.jpg", "Paul.jpeg"] {
        let path = fixtures.join(name);
        let img = image::load(&path)?;
        let faces = analyzer.detect(&img)?;
        println!("{name:<28} {}x{:<5} {} face(s){}", img.width, img.height, faces.len(),
            faces.iter().map(|f| format!(" [{:.0},{:.0} {:.0}x{:.0} score {:.3}]", f.bbox.x1, f.bbox.y1, f.bbox.width(), f.bbox.height(), f.score)).collect::<String>());
    }
    println!("\n== comparison (threshold {:.3}) ==", analyzer.embedder.threshold);
    for (a, b) in [
        ("Paul.jpeg", "Paul2.jpeg"),
        ("meds-aa-S001-01.jpg", "meds-aa-S001-02.jpg"),
        ("Paul.jpeg", "Chris.jpeg"),
        ("meds-aa-S001-01.jpg", "meds-aa-S029-01.jpg"),
    ] {
        let (_, ea) = main_face(&mut analyzer, &fixtures.join(a))?;
        let (_, eb) = main_face(&mut analyzer, &fixtures.join(b))?;
        let d = distance(&ea, &eb);
        println!("{a:<22} vs {b:<22} distance {d:.3}  {}", if d <= analyzer.embedder.threshold { "same" } else { "different" });
    }
    Ok(ExitCode::SUCCESS)
}

