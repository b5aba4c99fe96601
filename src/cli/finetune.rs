//! `facestream train --finetune N`: the embedder's last N blocks trained with the triplet loss on
//! labelled photos, judged on identities it never saw, written back as an ONNX model with its card.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use facestream::config::Config;
use facestream::train::data;
use facestream::train::finetune::{self, Blocks, Cached};
use facestream::train::graph::Graph;
use facestream::train::{TrainError, train};

use super::train::TrainArgs;

/// Photos by identity index.
type Photos = Vec<(u32, PathBuf)>;

/// The labelled photos of every `--data` set: identity names and (identity index, path).
fn photos(a: &TrainArgs) -> Result<(Vec<String>, Photos)> {
    let mut names: Vec<String> = Vec::new();
    let mut index: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for d in &a.data {
        if facestream::harvest::is_harvest(d) {
            bail!("{}: a harvest keeps one crop per track; --finetune trains on labelled photos (an identities file or a folder per person); use --head for harvests", d.display());
        }
        for l in facestream::dataset::read(d)? {
            let k = *index.entry(l.identity.clone()).or_insert_with(|| {
                names.push(l.identity.clone());
                names.len() as u32 - 1
            });
            out.push((k, l.path));
        }
    }
    Ok((names, out))
}

/// Figures on the identities `set` with the graph's weights as they are now.
fn figures(graph: &Graph, cached: &Cached, ids: &[u32], set: &[u32], gallery: usize, a: &TrainArgs) -> Result<data::Figures, TrainError> {
    let wanted: std::collections::HashSet<u32> = set.iter().copied().collect();
    let rows: Vec<usize> = (0..ids.len()).filter(|&r| wanted.contains(&ids[r])).collect();
    let emb = finetune::embed_cached(graph, cached, &rows)?;
    let samples: Vec<(u32, Vec<f32>)> = rows.iter().zip(emb).map(|(&r, e)| (ids[r], e)).collect();
    data::figures(&samples, set, gallery, a.trials, 200_000, a.seed)
}

pub fn cmd_finetune(cfg: &Config, a: &TrainArgs, blocks: usize) -> Result<ExitCode> {
    let settings = super::train::settings(a)?;
    let started = std::time::Instant::now();
    let (names, photos) = photos(a)?;
    let models = facestream::infer::locate_models(&cfg.infer);
    let card = facestream::infer::ModelCard::read(&models.join(format!("{}.toml", facestream::embed::CARD))).context("the embedder's model card (run `make setup`)")?;
    let bytes = std::fs::read(models.join(&card.file)).with_context(|| format!("{}: the embedder (run `make setup`)", card.file))?;
    let mut graph = Graph::load(&bytes, &candle_core::Device::Cpu)?;
    if blocks == 0 || blocks > graph.blocks.len() {
        bail!("--finetune {blocks}: the embedder has {} blocks ({}); give 1 to {}", graph.blocks.len(), graph.blocks.join(", "), graph.blocks.len());
    }
    let vars = graph.train_last(blocks)?;
    let trained: Vec<&String> = graph.blocks.iter().rev().take(blocks).collect();
    eprintln!("fine-tuning the last {blocks} of {} blocks ({}), {} tensors; reading them at {:?}", graph.blocks.len(), trained.iter().rev().map(|s| s.as_str()).collect::<Vec<_>>().join(", "), vars.len(), graph.boundary());

    let bar = indicatif::ProgressBar::new(photos.len() as u64);
    let paths: Vec<PathBuf> = photos.iter().map(|p| p.1.clone()).collect();
    let crops = facestream::train::augment::crop_set(cfg, &paths, facestream::eval::embedded::Pick::Centre, a.workers, &|done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let (ids, crops): (Vec<u32>, Vec<Vec<u8>>) = photos.iter().zip(crops).filter_map(|((id, _), c)| c.map(|c| (*id, c))).unzip();
    if crops.is_empty() {
        bail!("no photo with a usable face in {:?}", a.data);
    }
    let bar = indicatif::ProgressBar::new(crops.len() as u64);
    let cached = finetune::cache(&graph, &crops, &mut |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let (train_people, val_people, held_people) = super::train::split(&names, a);
    let in_train: std::collections::HashSet<u32> = train_people.iter().copied().collect();
    let train_rows: Vec<usize> = (0..ids.len()).filter(|&r| in_train.contains(&ids[r])).collect();
    eprintln!(
        "{} identities, {} faces ({} photos without a usable face): {} train ({} faces), {} validation, {} held out (never trained on; seed {}); frozen part done in {:.0} s",
        names.len(),
        crops.len(),
        photos.len() - crops.len(),
        train_people.len(),
        train_rows.len(),
        val_people.len(),
        held_people.len(),
        a.seed,
        started.elapsed().as_secs_f64()
    );
    let before = figures(&graph, &cached, &ids, &held_people, a.gallery, a)?;
    eprintln!("held out, before: TAR@FAR0.1% {:.4}, DIR@FAR1% {:.4} (gallery {})", before.tar_at_far_01pct, before.dir_at_far_1pct, before.gallery);

    let interrupted = Arc::new(AtomicBool::new(false));
    let _ = super::train::ctrlc_flag(interrupted.clone());
    let val_gallery = a.gallery.min(val_people.len().saturating_sub(1)).max(2);
    let model = Blocks::new(&graph, &cached, train_rows.clone(), vars, a.anchor);
    let labels: Vec<u32> = train_rows.iter().map(|&r| ids[r]).collect();
    let mut validate = |_: &dyn facestream::train::Trainable| -> Result<Option<f64>, TrainError> {
        if val_people.len() < 3 {
            return Ok(None);
        }
        Ok(Some(figures(&graph, &cached, &ids, &val_people, val_gallery, a)?.dir_at_far_1pct))
    };
    let bar = super::train::EpochBar::new();
    let mut progress = |epoch: usize, step: usize, steps: usize, loss: f32, active: f32| bar.update(epoch, step, steps, loss, active);
    std::fs::create_dir_all(&a.out).with_context(|| format!("{}: cannot create the output folder", a.out.display()))?;
    let write = |t: &Training| -> Result<PathBuf, TrainError> { write_model(&graph, &card.id, blocks, t, &models, a) };
    let mut on_best = |_: &dyn facestream::train::Trainable, log: &facestream::train::EpochLog| -> Result<(), TrainError> {
        write(&Training { threshold: None, log: std::slice::from_ref(log), before: &before, after: None, faces: train_rows.len(), people: (train_people.len(), val_people.len()), seconds: started.elapsed().as_secs_f64() })?;
        tracing::info!(epoch = log.epoch, validation = log.validation, "best fine-tuned weights so far written");
        Ok(())
    };
    let stop = || interrupted.load(Ordering::SeqCst);
    let t = train(&model, &labels, &settings, &mut validate, &mut on_best, &stop, &mut progress)?;
    bar.0.finish_and_clear();
    if interrupted.load(Ordering::SeqCst) {
        eprintln!("interrupted: keeping the best weights so far (epoch {})", t.best_epoch);
    }
    let after = figures(&graph, &cached, &ids, &held_people, a.gallery, a)?;
    let threshold = if val_people.len() >= 3 { figures(&graph, &cached, &ids, &val_people, val_gallery, a)?.threshold_at_far_1pct } else { after.threshold_at_far_1pct };
    let onnx = write(&Training { threshold: Some(threshold), log: &t.log, before: &before, after: Some(&after), faces: train_rows.len(), people: (train_people.len(), val_people.len()), seconds: started.elapsed().as_secs_f64() })?;
    let (loss_curve, validation_curve) = data::curves(&t.log);
    super::train::plot_curves(&a.out, &loss_curve, &validation_curve);
    println!("held-out identities ({} people, {} photos, never trained on):", after.people, after.photos);
    println!("{:<8} {:>14} {:>22}", "", "TAR@FAR0.1%", format!("DIR@FAR1% (G={})", after.gallery));
    println!("{:<8} {:>14.4} {:>22.4}", "before", before.tar_at_far_01pct, before.dir_at_far_1pct);
    println!("{:<8} {:>14.4} {:>22.4}", "after", after.tar_at_far_01pct, after.dir_at_far_1pct);
    println!("best epoch {} of {}{}; threshold {threshold:.3} (validation, FAR 1%); {:.0} s; {}", t.best_epoch, t.log.len() - 1, if t.stopped_early { " (stopped early)" } else { "" }, started.elapsed().as_secs_f64(), onnx.display());
    Ok(ExitCode::SUCCESS)
}

/// What goes into the fine-tuned model's card.
struct Training<'a> {
    threshold: Option<f32>,
    log: &'a [facestream::train::EpochLog],
    before: &'a data::Figures,
    after: Option<&'a data::Figures>,
    faces: usize,
    people: (usize, usize),
    seconds: f64,
}

fn settings_lr(a: &TrainArgs) -> f64 {
    a.lr.unwrap_or(1e-5)
}

/// Writes `embedder.onnx` (the parent with the trained weights) and `embedder.toml`.
fn write_model(graph: &Graph, parent: &str, blocks: usize, t: &Training, models: &std::path::Path, a: &TrainArgs) -> Result<PathBuf, TrainError> {
    let weights = graph.trained_weights()?;
    let mut h = Sha256::new();
    for (name, v) in &weights {
        h.update(name.as_bytes());
        h.update(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
    }
    let id = format!("{parent}+ft{blocks}-{}", &format!("{:x}", h.finalize())[..12]);
    let (loss, validation) = data::curves(t.log);
    let figures = |f: &data::Figures| toml::toml! { tar_at_far_01pct = (f.tar_at_far_01pct) dir_at_far_1pct = (f.dir_at_far_1pct) gallery = (f.gallery as i64) people = (f.people as i64) };
    let mut table = toml::toml! {
        written_by = "facestream train --finetune"
        blocks = (blocks as i64)
        tensors = (weights.iter().map(|w| w.0.clone()).collect::<Vec<_>>())
        data = (a.data.iter().map(|d| d.display().to_string()).collect::<Vec<_>>())
        seed = (a.seed as i64)
        margin = (a.margin as f64)
        batch = (format!("{} identities x {} faces", a.p, a.k))
        lr = (settings_lr(a))
        mining = (a.mining.clone())
        train_people = (t.people.0 as i64)
        train_faces = (t.faces as i64)
        validation_people = (t.people.1 as i64)
        loss_curve = (loss.iter().map(|&v| v as f64).filter(|v| v.is_finite()).collect::<Vec<f64>>())
        validation_curve = (validation.iter().copied().filter(|v| v.is_finite()).collect::<Vec<f64>>())
        seconds = (t.seconds)
    };
    table.insert("held_out_before".into(), toml::Value::Table(figures(t.before)));
    if let Some(after) = t.after {
        table.insert("held_out_after".into(), toml::Value::Table(figures(after)));
    }
    let threshold = t.threshold.unwrap_or(t.before.threshold_at_far_1pct);
    facestream::train::export::write_finetuned(&weights, &id, threshold, table, models, &a.out)
}
