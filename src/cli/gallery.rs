//! Gallery commands: enroll, gallery list/show/remove/export/import.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::open_store;
use facestream::config::Config;
use facestream::identify::OperatingPoint;
use facestream::photo::{Analyzer, EnrollError, Enrollable};

#[derive(clap::Subcommand)]
pub enum GalleryAction {
    /// Every person with sample counts.
    List,
    /// One person with its samples (without the vectors).
    Show { name: String },
    /// Remove a person and all its samples.
    Remove { name: String },
    /// Write the whole gallery (persons, metadata, embeddings) as JSON.
    Export { file: PathBuf },
    /// Add persons and samples from an export.
    Import { file: PathBuf },
    /// Show or set a person's groups (for gates' allow_groups).
    Groups {
        name: String,
        /// Replace the groups (comma separated; empty string: none).
        #[arg(long, value_delimiter = ',')]
        set: Option<Vec<String>>,
    },
    /// Re-embed every enrolled face with the config's embedder (e.g. after `train --head` and
    /// `embed.head`), from the aligned crops kept at enrollment, in one transaction.
    Reembed {
        /// Remove the samples that have no kept crop (enrolled before crops were kept, or from a
        /// visitor) instead of refusing.
        #[arg(long)]
        drop_uncropped: bool,
    },
}

/// Enroll persons into the gallery store: `--name NAME IMAGE...`, `--dir DIR` (one sub-folder per
/// person) or `--video CLIP --name NAME`. Faces that would poison the gallery are refused: none,
/// several with none clearly dominant (without --box), too small, blurred, turned away.
#[derive(clap::Args)]
pub struct EnrollArgs {
    /// The person the images (or the clip) show.
    #[arg(long, required_unless_present = "dir", conflicts_with = "dir")]
    pub name: Option<String>,
    pub images: Vec<PathBuf>,
    /// A folder with one sub-folder per person, named after the person.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// A video clip of the person: a few distinct, best-quality frames of its main face are enrolled.
    #[arg(long, requires = "name", conflicts_with = "dir")]
    pub video: Option<PathBuf>,
    /// Frames enrolled from --video.
    #[arg(long, default_value_t = 3)]
    pub frames: usize,
    /// Which face to take from a photo with several: x1,y1,x2,y2 in pixels.
    #[arg(long, value_name = "X1,Y1,X2,Y2")]
    pub r#box: Option<String>,
    /// Gallery store (default: gallery.store of the config, else ~/.local/share/facestream/gallery.db).
    #[arg(long)]
    pub store: Option<PathBuf>,
}

fn parse_box(text: &str) -> Result<facestream::detect::BBox> {
    let v: Vec<f32> = text.split(',').map(|t| t.trim().parse::<f32>()).collect::<Result<_, _>>().with_context(|| format!("--box {text}: expected four numbers x1,y1,x2,y2"))?;
    if v.len() != 4 || v[2] <= v[0] || v[3] <= v[1] {
        bail!("--box {text}: expected x1,y1,x2,y2 with x2 > x1 and y2 > y1");
    }
    Ok(facestream::detect::BBox { x1: v[0], y1: v[1], x2: v[2], y2: v[3] })
}

/// One thing to enroll: a photo (analysed when its turn comes, so a crash loses nothing
/// committed) or a frame already picked from a clip.
enum Job {
    Photo(String, PathBuf),
    Frame(String, String, Box<Enrollable>),
}

pub fn cmd_enroll(cfg: &Config, a: EnrollArgs) -> Result<ExitCode> {
    let bbox = a.r#box.as_deref().map(parse_box).transpose()?;
    let mut store = open_store(cfg, a.store.clone())?;
    let mut analyzer = Analyzer::new(cfg)?;
    let model = analyzer.embedder.model_id().to_string();
    // The gallery as it is, to warn when a new person looks like someone already enrolled.
    let mut gallery = cfg.gallery.new_gallery();
    store.load_into(&mut gallery, &model)?;
    let point = OperatingPoint::for_embedder(&cfg.identify, cfg.embed.threshold, &analyzer.embedder, gallery.len().max(1));
    let jobs: Vec<Job> = if let Some(video) = &a.video {
        let name = a.name.clone().unwrap_or_default();
        let frames = facestream::ingest::clip_frames(video, 5, 600)?;
        let picks = facestream::photo::video_enrollables(&mut analyzer, &frames, video, a.frames.max(1), point.threshold);
        if picks.is_empty() {
            bail!("{}: no frame of {} frames has an enrollable face (too small, blurred or turned away in all)", video.display(), frames.len());
        }
        eprintln!("{}: {} distinct frame(s) of the main face picked from {} frames", video.display(), picks.len(), frames.len());
        picks.into_iter().map(|(i, e)| Job::Frame(name.clone(), format!("{} frame {i}", video.display()), Box::new(e))).collect()
    } else {
        let list: Vec<(String, PathBuf)> = if let Some(dir) = &a.dir {
            facestream::dataset::read_folder(dir)?.into_iter().map(|l| (l.identity, l.path)).collect()
        } else {
            let name = a.name.clone().unwrap_or_default();
            a.images.iter().map(|p| (name.clone(), p.clone())).collect()
        };
        if list.is_empty() {
            bail!("nothing to enroll: give images with --name, a --dir with one sub-folder per person, or --video");
        }
        list.into_iter().map(|(person, path)| Job::Photo(person, path)).collect()
    };
    let (mut ok, mut failed) = (0usize, 0usize);
    let total = jobs.len();
    let started = std::time::Instant::now();
    for (i, job) in jobs.into_iter().enumerate() {
        let (person, from, e): (String, String, Result<Enrollable, EnrollError>) = match job {
            Job::Photo(person, path) => {
                let e = facestream::photo::enrollable(&mut analyzer, &path, bbox);
                (person, path.display().to_string(), e)
            }
            Job::Frame(person, from, e) => (person, from, Ok(*e)),
        };
        let result = e.map_err(anyhow::Error::from).and_then(|e| {
            if gallery.person_id(&person).is_none()
                && let Some(m) = gallery.search(&e.embedding, 1).first().filter(|m| m.distance <= point.threshold) {
                    eprintln!("warning: {person} lies within the threshold of {} (distance {:.3} <= {:.3}): the same person twice, or a look-alike", m.name, m.distance, point.threshold);
                }
            let id = store.ensure_person(&person, None)?;
            store.add_face(id, &e.embedding, &model, e.quality, &e.image_sha256, e.crop_jpeg.as_deref())?;
            gallery.add_with_id(id, &person, e.embedding)?;
            Ok(())
        });
        match result {
            Ok(()) => {
                ok += 1;
                eprintln!("[{:>4}/{total}] {person}: {from} enrolled", i + 1);
            }
            Err(e) => {
                failed += 1;
                eprintln!("[{:>4}/{total}] error: {e}", i + 1);
            }
        }
    }
    eprintln!("{ok} enrolled, {failed} refused in {:.1} s into {}", started.elapsed().as_secs_f32(), store.location);
    Ok(if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

pub fn cmd_gallery(cfg: &Config, action: GalleryAction, store: Option<PathBuf>) -> Result<ExitCode> {
    let mut store = open_store(cfg, store)?;
    match action {
        GalleryAction::List => {
            for p in store.persons()? {
                println!("{}", json!({"id": p.id, "name": p.name, "samples": p.samples, "metadata": p.metadata, "created": p.created, "updated": p.updated}));
            }
        }
        GalleryAction::Show { name } => {
            let p = store.person_by_name(&name)?.ok_or_else(|| facestream::gallery::store::StoreError::NoPerson(name.clone()))?;
            let samples: Vec<_> = store
                .samples(Some(p.id))?
                .into_iter()
                .map(|s| json!({"id": s.id, "model": s.model_id, "quality": s.quality, "image_sha256": s.image_sha256, "created": s.created}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&json!({"person": p, "samples": samples}))?);
        }
        GalleryAction::Remove { name } => {
            let p = store.person_by_name(&name)?.ok_or_else(|| facestream::gallery::store::StoreError::NoPerson(name.clone()))?;
            store.remove_person(p.id)?;
            eprintln!("removed {name} ({} samples)", p.samples);
        }
        GalleryAction::Export { file } => {
            let data = store.export()?;
            std::fs::write(&file, serde_json::to_string(&data)?).with_context(|| format!("{}: cannot write", file.display()))?;
            eprintln!("exported {} persons to {}", data.persons.len(), file.display());
        }
        GalleryAction::Reembed { drop_uncropped } => return reembed(cfg, &mut store, drop_uncropped),
        GalleryAction::Groups { name, set } => {
            let p = store.person_by_name(&name)?.ok_or_else(|| facestream::gallery::store::StoreError::NoPerson(name.clone()))?;
            if let Some(groups) = set {
                let groups: Vec<String> = groups.into_iter().map(|g| g.trim().to_string()).filter(|g| !g.is_empty()).collect();
                store.set_groups(p.id, &groups)?;
                eprintln!("{name}: groups set to [{}]", groups.join(", "));
            }
            let p = store.person(p.id)?.ok_or_else(|| facestream::gallery::store::StoreError::NoPerson(name.clone()))?;
            println!("{}", json!({"name": p.name, "groups": facestream::gallery::store::groups_of(&p.metadata)}));
        }
        GalleryAction::Import { file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("{}: cannot read", file.display()))?;
            let data: facestream::gallery::store::Export = serde_json::from_str(&text).with_context(|| format!("{}: not a facestream gallery export", file.display()))?;
            let (p, s) = store.import(&data)?;
            eprintln!("imported {p} persons, {s} samples");
        }
    }
    Ok(ExitCode::SUCCESS)
}


/// `gallery reembed`: every sample's kept crop through the config's embedder.
fn reembed(cfg: &Config, store: &mut facestream::gallery::store::Store, drop_uncropped: bool) -> Result<ExitCode> {
    let mut analyzer = Analyzer::new(cfg)?;
    let model = analyzer.embedder.model_id().to_string();
    let samples = store.samples(None)?;
    let names: std::collections::HashMap<u64, String> = store.persons()?.into_iter().map(|p| (p.id, p.name)).collect();
    let side = facestream::embed::CROP_SIDE as u32;
    let (mut new, mut uncropped) = (Vec::new(), Vec::new());
    let bar = indicatif::ProgressBar::new(samples.len() as u64);
    for s in &samples {
        bar.inc(1);
        let crop = store.sample_crop(s.id)?.and_then(|jpeg| image::load_from_memory(&jpeg).ok()).map(|i| i.to_rgb8()).filter(|i| i.width() == side && i.height() == side);
        match crop {
            Some(rgb) => {
                let e = analyzer.embedder.embed_crops(rgb.as_raw())?.pop().context("the embedder returned nothing")?;
                new.push((s.id, e));
            }
            None => uncropped.push(s),
        }
    }
    bar.finish_and_clear();
    if !uncropped.is_empty() && !drop_uncropped {
        let mut who: Vec<&str> = uncropped.iter().filter_map(|s| names.get(&s.person_id).map(String::as_str)).collect();
        who.sort();
        who.dedup();
        bail!(
            "{} of {} samples have no kept crop and cannot be re-embedded (persons: {}); re-enroll them, or pass --drop-uncropped to remove those samples; nothing was changed",
            uncropped.len(),
            samples.len(),
            who.join(", ")
        );
    }
    let remove: Vec<u64> = uncropped.iter().map(|s| s.id).collect();
    let n = store.reembed(&model, &new, &remove)?;
    eprintln!("{n} samples re-embedded with {model}{} in {}", if remove.is_empty() { String::new() } else { format!(", {} without a crop removed", remove.len()) }, store.location);
    Ok(ExitCode::SUCCESS)
}
