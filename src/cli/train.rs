//! `facestream train --head`: a triplet-loss projection on the frozen embedder, trained on a
//! labelled set (identities file or one folder per person), judged on identities it never saw.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::Args;

use facestream::config::Config;
use facestream::train::data::{self, Part};
use facestream::train::{Head, Mining, TrainConfig, train_head};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["head", "finetune"])))]
pub struct TrainArgs {
    /// Train a small projection head on the frozen embedder (embeddings computed once, cached).
    #[arg(long)]
    pub head: bool,
    /// Fine-tune the embedder's own last N blocks (1: `fc`; 2: `conv256_down_out` and `fc`; ...)
    /// on labelled photos: the frozen blocks run once per face, the trained ones every step.
    /// Writes `embedder.onnx` and its card `embedder.toml` to --out; `embed.model` runs it.
    #[arg(long, value_name = "N")]
    pub finetune: Option<usize>,
    /// Training faces, repeatable to mix sets: labelled photos (an identities file
    /// `path<TAB>identity`, or a folder with one sub-folder per person: the `eval` format), or a
    /// harvest folder from `run --harvest` (tracks as identities). The same name in two sets is one
    /// identity.
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// Harvested unknown tracks whose mean embeddings are at most this far apart are one person
    /// (unless they were on one camera at the same time); 0 keeps every track alone.
    #[arg(long, default_value_t = 0.35)]
    pub link: f32,
    /// Varied copies of each training photo's face (mirrored, shifted, lighter or darker, more or
    /// less contrast, blurred), embedded once; 0: none. Validation and held-out faces never are.
    #[arg(long, default_value_t = 0)]
    pub augment: usize,
    /// Folder for head.safetensors, head.toml (the model card) and curves.png.
    #[arg(long, default_value = "head")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,
    /// Batches per epoch (0: as many as the training faces fill).
    #[arg(long, default_value_t = 0)]
    pub steps: usize,
    /// Seed of the identity split, the batch draws and the evaluation draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Triplet margin (FaceNet: 0.2 on unit vectors, squared distances).
    #[arg(long, default_value_t = 0.2)]
    pub margin: f32,
    /// Identities per batch.
    #[arg(long, default_value_t = 32)]
    pub p: usize,
    /// Faces per identity in a batch.
    #[arg(long, default_value_t = 4)]
    pub k: usize,
    /// Adam learning rate (halved at 1/2 and again at 3/4 of the epochs); default 1e-3 for a
    /// head, 1e-5 for --finetune (pretrained weights: a head's rate wrecks them in a few steps).
    #[arg(long)]
    pub lr: Option<f64>,
    /// semi-hard (FaceNet) or hardest negatives.
    #[arg(long, value_parser = ["semi-hard", "hardest"], default_value = "semi-hard")]
    pub mining: String,
    /// Identities never trained on, that the before/after figures are reported on: `report` (the
    /// report split of `eval --open-set`, about half) or `none` (tiny sets: train on everyone;
    /// the figures are then on people the head has seen).
    #[arg(long = "hold-out", value_parser = ["report", "none"], default_value = "report")]
    pub hold_out: String,
    /// Share of the training identities kept for validation (early stopping, threshold; with
    /// fewer than a few hundred validation people the choice of epoch is noise).
    #[arg(long, default_value_t = 0.3)]
    pub validation: f64,
    /// Pull of the trained weights towards where they started (the identity for a head, the
    /// converted weights for --finetune; 0: none).
    #[arg(long, default_value_t = 0.0)]
    pub anchor: f64,
    /// Epochs without a better validation DIR before stopping.
    #[arg(long, default_value_t = 5)]
    pub patience: usize,
    /// Gallery size for DIR at FAR 1% (held-out and validation figures).
    #[arg(long, default_value_t = 100)]
    pub gallery: usize,
    /// Random gallery draws per evaluation.
    #[arg(long, default_value_t = 5)]
    pub trials: usize,
    /// Embedding cache (default: under the download cache, one file per identities file).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Analyzer threads for embedding the photos.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
}

/// The training settings from the arguments, range-checked.
pub(super) fn settings(a: &TrainArgs) -> Result<TrainConfig> {
    let settings = TrainConfig {
        margin: a.margin,
        p: a.p,
        k: a.k,
        lr: a.lr.unwrap_or(if a.finetune.is_some() { 1e-5 } else { 1e-3 }),
        epochs: a.epochs,
        steps_per_epoch: a.steps,
        mining: if a.mining == "hardest" { Mining::Hardest } else { Mining::SemiHard },
        seed: a.seed,
        patience: a.patience,
        anchor: a.anchor,
    };
    if !(0.0..=0.5).contains(&a.validation) || a.p < 2 || a.k < 2 || !(a.margin > 0.0 && a.margin < 4.0) || !(settings.lr > 0.0 && settings.lr < 1.0) || !(0.0..=100.0).contains(&a.anchor) {
        bail!("--validation must be 0..0.5, --p and --k at least 2, --margin in (0, 4), --lr in (0, 1), --anchor in 0..100");
    }
    Ok(settings)
}

pub fn cmd_train(cfg: &Config, a: TrainArgs) -> Result<ExitCode> {
    if let Some(blocks) = a.finetune {
        return super::finetune::cmd_finetune(cfg, &a, blocks);
    }
    let settings = settings(&a)?;
    let started = std::time::Instant::now();
    let embed = embed_args(&a);
    let (e, site, labelled) = training_data(cfg, &a, &embed)?;
    let dim = e.samples.first().map(|s| s.1.len()).context("no photo with a usable face")?;
    let (train_people, val_people, held_people) = split(&e.names, &a);
    let train = train_rows(cfg, &a, &e, &labelled, &train_people)?;
    eprintln!(
        "{} identities: {} train ({} photos), {} validation, {} held out (never trained on; the report split of `eval --open-set`, seed {})",
        e.names.len(),
        train_people.len(),
        train.len(),
        val_people.len(),
        held_people.len(),
        a.seed
    );
    let val_gallery = a.gallery.min(val_people.len().saturating_sub(1)).max(2);
    let figures = |head: &Head, set: &[u32], gallery: usize, trials: usize| -> Result<data::Figures> {
        let rows: Vec<Vec<f32>> = e.samples.iter().map(|s| s.1.clone()).collect();
        let mapped = head.apply(&rows)?;
        let samples: Vec<(u32, Vec<f32>)> = e.samples.iter().zip(mapped).map(|(s, v)| (s.0, v)).collect();
        Ok(data::figures(&samples, set, gallery, trials, 200_000, a.seed)?)
    };
    let before = figures(&Head::identity(dim, &candle_core::Device::Cpu)?, &held_people, a.gallery, a.trials)?;
    eprintln!("held out, before: TAR@FAR0.1% {:.4}, DIR@FAR1% {:.4} (gallery {})", before.tar_at_far_01pct, before.dir_at_far_1pct, before.gallery);

    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        let _ = ctrlc_flag(flag);
    }
    let bar = super::train::EpochBar::new();
    let out = &a.out;
    if val_people.len() < 3 {
        eprintln!("warning: {} validation identities: too few to judge a head; the training loss picks the epoch", val_people.len());
    }
    let mut validate = |h: &Head| -> Result<Option<f64>, facestream::train::TrainError> {
        if val_people.len() < 3 {
            return Ok(None);
        }
        figures(h, &val_people, val_gallery, a.trials).map(|f| Some(f.dir_at_far_1pct)).map_err(|e| facestream::train::TrainError::Data(e.to_string()))
    };
    let mut on_best = |h: &Head, log: &facestream::train::EpochLog| -> Result<(), facestream::train::TrainError> {
        data::save_weights(h, out)?;
        tracing::info!(epoch = log.epoch, validation = log.validation, "best head so far saved");
        Ok(())
    };
    let stop = || interrupted.load(Ordering::SeqCst);
    let mut progress = |epoch: usize, step: usize, steps: usize, loss: f32, active: f32| bar.update(epoch, step, steps, loss, active);
    let t = train_head(&train, dim, &settings, &mut validate, &mut on_best, &stop, &mut progress)?;
    bar.0.finish_and_clear();
    if interrupted.load(Ordering::SeqCst) {
        eprintln!("interrupted: keeping the best head so far (epoch {})", t.best_epoch);
    }
    data::save_weights(&t.head, &a.out)?;
    let after = figures(&t.head, &held_people, a.gallery, a.trials)?;
    let threshold = if val_people.len() >= 3 { figures(&t.head, &val_people, val_gallery, a.trials)?.threshold_at_far_1pct } else { after.threshold_at_far_1pct };
    let (loss_curve, validation_curve) = data::curves(&t.log);
    let models = facestream::infer::locate_models(&cfg.infer);
    let parent = facestream::infer::ModelCard::read(&models.join(format!("{}.toml", facestream::embed::CARD))).map(|c| c.id).unwrap_or_else(|_| "unknown".into());
    let card = data::HeadCard {
        id: data::head_id(&parent, &t.head)?,
        parent_model: parent,
        dim,
        created: facestream::events::rfc3339(std::time::SystemTime::now()),
        data: a.data.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
        seed: a.seed,
        settings: data::settings_json(&settings),
        train_people: train_people.len(),
        train_photos: train.len(),
        validation_people: val_people.len(),
        best_epoch: t.best_epoch,
        loss_curve: loss_curve.clone(),
        validation_curve: validation_curve.clone(),
        held_out_before: before.clone(),
        held_out_after: after.clone(),
        threshold,
        training_seconds: started.elapsed().as_secs_f64(),
    };
    data::write_card(&card, &a.out)?;
    facestream::train::export::write_onnx(&t.head, &card.id, threshold, &models, &a.out)?;
    plot_curves(&a.out, &loss_curve, &validation_curve);
    print_summary(&before, &after, &t, threshold, started.elapsed().as_secs_f64(), &a.out);
    print_site_check(&site, &t.head, (before.threshold_at_far_1pct, threshold))?;
    Ok(ExitCode::SUCCESS)
}

/// The faces of every `--data` set, identities merged by name: labelled photos are embedded
/// (cached), harvests were embedded while they were taken.
fn training_data(cfg: &Config, a: &TrainArgs, embed: &super::eval::OpenSetArgs) -> Result<(super::eval::Embedded, facestream::harvest::Identities, Vec<facestream::dataset::Labelled>)> {
    let card = facestream::infer::locate_models(&cfg.infer).join(format!("{}.toml", facestream::embed::CARD));
    let model_id = facestream::infer::ModelCard::read(&card).with_context(|| format!("{}: the embedder's model card (run `make setup`)", card.display()))?.id;
    let mut all = super::eval::Embedded { names: Vec::new(), samples: Vec::new(), failed: 0 };
    let mut index: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    let mut site = Vec::new();
    let mut labelled = Vec::new();
    for d in &a.data {
        let (names, samples): (Vec<String>, Vec<(u32, Vec<f32>)>) = if facestream::harvest::is_harvest(d) {
            let tracks = facestream::harvest::read(d, &model_id)?;
            let ids = facestream::harvest::identities(&tracks, a.link);
            let faces: usize = ids.iter().map(|i| i.1.len()).sum();
            eprintln!("{}: {} harvested tracks -> {} identities ({} faces; link {})", d.display(), tracks.len(), ids.len(), faces, a.link);
            let names = ids.iter().map(|i| i.0.clone()).collect();
            site.extend(ids.iter().cloned());
            (names, ids.into_iter().enumerate().flat_map(|(k, (_, f))| f.into_iter().map(move |v| (k as u32, v))).collect())
        } else {
            let e = super::eval::embed_labelled(cfg, d, embed)?;
            if e.samples.is_empty() {
                bail!("{}: no usable face in this set (a folder needs one sub-folder per person; an identities file `path<TAB>identity` lines)", d.display());
            }
            all.failed += e.failed;
            labelled.extend(facestream::dataset::read(d)?);
            (e.names, e.samples)
        };
        for (id, v) in samples {
            let name = &names[id as usize];
            let k = *index.entry(name.clone()).or_insert_with(|| {
                all.names.push(name.clone());
                all.names.len() as u32 - 1
            });
            all.samples.push((k, v));
        }
    }
    Ok((all, site, labelled))
}

/// The training rows (validation and held-out rows keep their identity index), with
/// `--augment` varied copies of each training photo.
fn train_rows(cfg: &Config, a: &TrainArgs, e: &super::eval::Embedded, labelled: &[facestream::dataset::Labelled], train_people: &[u32]) -> Result<Vec<(u32, Vec<f32>)>> {
    let train_set: std::collections::HashSet<u32> = train_people.iter().copied().collect();
    let mut train: Vec<(u32, Vec<f32>)> = e.samples.iter().filter(|s| train_set.contains(&s.0)).cloned().collect();
    if a.augment == 0 {
        return Ok(train);
    }
    let index: std::collections::HashMap<&str, u32> = e.names.iter().enumerate().map(|(i, n)| (n.as_str(), i as u32)).collect();
    let photos: Vec<(u32, PathBuf)> = labelled.iter().filter_map(|l| index.get(l.identity.as_str()).filter(|i| train_set.contains(i)).map(|&i| (i, l.path.clone()))).collect();
    let bar = indicatif::ProgressBar::new(photos.len() as u64);
    let extra = facestream::train::augment::augmented_set(cfg, &photos, a.augment, a.seed, facestream::eval::embedded::Pick::Centre, a.workers, &|done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    eprintln!("--augment {}: {} varied faces of {} training photos added (mirrored, shifted, lighter or darker, blurred)", a.augment, extra.len(), photos.len());
    train.extend(extra);
    Ok(train)
}

/// The site's own people (the harvests' identities) enrolled from one frame, before and after.
/// `thresholds`: each side's distance at FAR 1% (the head changes the scale).
fn print_site_check(site: &[(String, Vec<Vec<f32>>)], head: &Head, thresholds: (f32, f32)) -> Result<()> {
    let Some(before) = facestream::harvest::site_check(site, thresholds.0) else { return Ok(()) };
    let mapped: Vec<(String, Vec<Vec<f32>>)> = site.iter().map(|(n, f)| Ok((n.clone(), head.apply(f)?))).collect::<Result<_>>()?;
    let after = facestream::harvest::site_check(&mapped, thresholds.1).unwrap_or(before.clone());
    println!("the harvested people ({} identities, {} faces identified, each enrolled from one frame; trained on unless held out):", before.identities, before.probes);
    // The margin in units of each side's threshold: the head changes the distances' scale.
    println!("{:<8} {:>8} {:>20} {:>26}", "", "rank-1", "margin / threshold", "other within the threshold");
    for (label, c, t) in [("before", &before, thresholds.0), ("after", &after, thresholds.1)] {
        println!("{label:<8} {:>8.4} {:>20.4} {:>18.4} ({t:.3})", c.rank1, c.margin / t.max(1e-6) as f64, c.other_within);
    }
    Ok(())
}

/// How the photos are embedded (the `eval` settings, fixed for training).
fn embed_args(a: &TrainArgs) -> super::eval::OpenSetArgs {
    super::eval::OpenSetArgs {
        gallery_sizes: vec![a.gallery],
        trials: a.trials,
        seed: a.seed,
        enroll: 1,
        min_photos: None,
        max_strangers: 1000,
        pick: "centre".into(),
        cache: a.cache.clone(),
        workers: a.workers,
    }
}

/// Training, validation and held-out identities (indices into `names`).
pub(super) fn split(names: &[String], a: &TrainArgs) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let part: Vec<Part> = names
        .iter()
        .map(|n| match data::part_of(n, a.seed, a.validation) {
            Part::Held if a.hold_out == "none" => Part::Train,
            p => p,
        })
        .collect();
    let people = |p: Part| (0..names.len() as u32).filter(|&i| part[i as usize] == p).collect::<Vec<u32>>();
    let (train_people, val_people, mut held_people) = (people(Part::Train), people(Part::Validation), people(Part::Held));
    if a.hold_out == "none" {
        eprintln!("warning: --hold-out none: the figures below are on people the head was trained on");
        held_people = train_people.clone();
    }
    (train_people, val_people, held_people)
}

pub(super) fn plot_curves(out: &std::path::Path, loss_curve: &[f32], validation_curve: &[f64]) {
    let plot = out.join("curves.png");
    let loss_series: Vec<(f64, f64)> = loss_curve.iter().enumerate().map(|(i, &l)| ((i + 1) as f64, l as f64)).collect();
    let val_series: Vec<(f64, f64)> = validation_curve.iter().enumerate().map(|(i, &v)| (i as f64, v)).collect();
    if let Err(err) = facestream::eval::plot::lines(&plot, "triplet-loss head", "epoch", &[("training loss".into(), loss_series), ("validation DIR@FAR1%".into(), val_series)]) {
        eprintln!("warning: no plot ({err})");
    }
}

fn print_summary(before: &data::Figures, after: &data::Figures, t: &facestream::train::Trained, threshold: f32, seconds: f64, out: &std::path::Path) {
    println!("held-out identities ({} people, {} photos, never trained on):", after.people, after.photos);
    println!("{:<8} {:>14} {:>22}", "", "TAR@FAR0.1%", format!("DIR@FAR1% (G={})", after.gallery));
    println!("{:<8} {:>14.4} {:>22.4}", "before", before.tar_at_far_01pct, before.dir_at_far_1pct);
    println!("{:<8} {:>14.4} {:>22.4}", "after", after.tar_at_far_01pct, after.dir_at_far_1pct);
    println!(
        "best epoch {} of {}{}; threshold {:.3} (validation, FAR 1%); {:.0} s; written to {}",
        t.best_epoch,
        t.log.len() - 1,
        if t.stopped_early { " (stopped early)" } else { "" },
        threshold,
        seconds,
        out.display()
    );
}

/// The epoch progress bar: loss and active pairs per batch; one line per epoch without a terminal.
pub(super) struct EpochBar(pub indicatif::ProgressBar, bool);

impl EpochBar {
    pub(super) fn new() -> Self {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(indicatif::ProgressStyle::with_template("epoch {prefix} {bar:30} {pos}/{len} {msg}").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
        Self(bar, std::io::IsTerminal::is_terminal(&std::io::stderr()))
    }

    pub(super) fn update(&self, epoch: usize, step: usize, steps: usize, loss: f32, active: f32) {
        self.0.set_length(steps as u64);
        self.0.set_position(step as u64);
        self.0.set_prefix(epoch.to_string());
        self.0.set_message(format!("loss {loss:.4}, active pairs {:.0}%", active * 100.0));
        if !self.1 && step == steps {
            eprintln!("epoch {epoch}: loss {loss:.4}, active pairs {:.0}%", active * 100.0);
        }
    }
}

/// Ctrl-C sets `flag` (training stops after the batch and keeps the best head).
pub(super) fn ctrlc_flag(flag: Arc<AtomicBool>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("train-signal".into()).spawn(move || {
        rt.block_on(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                flag.store(true, Ordering::SeqCst);
            }
        })
    })?;
    Ok(())
}
