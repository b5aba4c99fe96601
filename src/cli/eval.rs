//! `facestream eval`: verification and identification accuracy over a labelled photo set.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde_json::json;

use super::main_face;
use facestream::config::Config;
use facestream::embed::distance;
use facestream::eval;
use facestream::photo::Analyzer;

pub fn cmd_eval(cfg: &Config, identities: &Path, json_out: Option<&Path>) -> Result<ExitCode> {
    let list: Vec<_> = facestream::dataset::read(identities)?.into_iter().map(|l| (l.path, l.identity)).collect();
    let mut analyzer = Analyzer::new(cfg)?;
    let mut embs: Vec<(String, Vec<f32>)> = Vec::new();
    let mut failed = 0;
    let started = std::time::Instant::now();
    for (i, (path, id)) in list.iter().enumerate() {
        match main_face(&mut analyzer, path) {
            Ok((_, e)) => embs.push((id.clone(), e)),
            Err(e) => {
                failed += 1;
                eprintln!("error: {e:#}");
            }
        }
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprint!("\rembedding photos: {}/{}", i + 1, list.len());
        } else if (i + 1) % 10 == 0 || i + 1 == list.len() {
            eprintln!("embedding photos: {}/{}", i + 1, list.len());
        }
    }
    eprintln!("embedded {} photos in {:.1} s", list.len(), started.elapsed().as_secs_f32());
    let (mut genuine, mut impostor) = (Vec::new(), Vec::new());
    for i in 0..embs.len() {
        for j in i + 1..embs.len() {
            let d = distance(&embs[i].1, &embs[j].1);
            if embs[i].0 == embs[j].0 { genuine.push(d) } else { impostor.push(d) }
        }
    }
    let report = eval::verification(&genuine, &impostor)?;
    let people = {
        let mut ids: Vec<_> = embs.iter().map(|(id, _)| id.as_str()).collect();
        ids.sort();
        ids.dedup();
        ids.len()
    };
    println!("photos: {} embedded, {failed} failed; people: {people}", embs.len());
    println!("pairs: {} genuine, {} impostor", report.genuine_pairs, report.impostor_pairs);
    println!("ROC AUC:          {:.4}", report.auc);
    let row = |name: &str, a: &eval::AtThreshold| println!("{name:<18}{:.4} at distance <= {:.4}", a.value, a.threshold);
    row("TAR @ FAR 1%:", &report.tar_at_far_1pct);
    row("TAR @ FAR 0.1%:", &report.tar_at_far_01pct);
    row("EER:", &report.eer);
    row("best accuracy:", &report.best_accuracy);
    println!("distances:        same person <= {:.4}, different people >= {:.4}", report.genuine_max, report.impostor_min);
    println!("threshold in use: {:.4} (model {})", analyzer.embedder.threshold, analyzer.embedder.model_id());
    let ident = eval::identification(&embs, analyzer.embedder.threshold).ok();
    if let Some(r) = &ident {
        println!("identification:   gallery {} (first photo per person), probes {}", r.gallery, r.probes);
        println!("rank-1:           {:.4}", r.rank1);
        println!("DIR @ FAR 1%:     {:.4} at distance <= {:.4}", r.dir_at_far_1pct.value, r.dir_at_far_1pct.threshold);
        println!("at threshold:     DIR {:.4}, FAR {:.4} (open set: each probe also searched as a stranger)", r.dir_at_threshold, r.far_at_threshold);
    }
    if let Some(p) = json_out {
        let v = json!({"photos": embs.len(), "failed": failed, "people": people, "model": analyzer.embedder.model_id(), "verification": report, "identification": ident});
        std::fs::write(p, serde_json::to_string_pretty(&v)?).with_context(|| format!("{}: cannot write", p.display()))?;
    }
    Ok(if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Options of the open-set report and of `calibrate`.
#[derive(clap::Args, Clone)]
pub struct OpenSetArgs {
    /// Gallery sizes to draw (people enrolled), comma separated.
    #[arg(long = "gallery-sizes", value_delimiter = ',', default_value = "10,100,1000")]
    pub gallery_sizes: Vec<usize>,
    /// Random gallery draws per size (their probes are pooled).
    #[arg(long, default_value_t = 3)]
    pub trials: usize,
    /// Seed of the split of identities into calibration and report halves, and of the draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Photos enrolled per gallery person (the others are probes).
    #[arg(long, default_value_t = 1)]
    pub enroll: usize,
    /// Only people with at least this many photos are drawn as gallery people with probes
    /// (default: --enroll + 1), so runs with different --enroll can compare the same people.
    #[arg(long)]
    pub min_photos: Option<usize>,
    /// Most stranger photos searched per draw.
    #[arg(long, default_value_t = 3000)]
    pub max_strangers: usize,
    /// Which face of a photo is the labelled one: centre (datasets like LFW) or confident.
    #[arg(long, value_parser = ["centre", "confident"], default_value = "centre")]
    pub pick: String,
    /// Embedding cache (default: under the download cache, one file per identities file).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Analyzer threads for embedding the photos.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
}

impl OpenSetArgs {
    fn draws(&self, size: usize, seed: u64) -> eval::open_set::Draws {
        eval::open_set::Draws { size, enroll: self.enroll, min_photos: self.min_photos.unwrap_or(self.enroll + 1), max_strangers: self.max_strangers, trials: self.trials, seed }
    }
}

/// The photos of a set, embedded (cached), as (identity index, embedding), with identity names.
pub(crate) struct Embedded {
    pub names: Vec<String>,
    pub samples: Vec<(u32, Vec<f32>)>,
    pub failed: usize,
}

fn default_cache(identities: &Path, flip: bool) -> PathBuf {
    let base = std::env::var_os("FACESTREAM_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")).join(".cache/facestream")
    });
    let abs = std::fs::canonicalize(identities).unwrap_or_else(|_| identities.to_path_buf());
    let h = facestream::dataset::fnv1a(abs.to_string_lossy().as_bytes(), 0);
    base.join("embeddings").join(format!("{h:016x}{}.bin", if flip { "-flip" } else { "" }))
}

pub(crate) fn embed_labelled(cfg: &Config, identities: &Path, a: &OpenSetArgs) -> Result<Embedded> {
    let list = facestream::dataset::read(identities)?;
    let pick = if a.pick == "confident" { eval::embedded::Pick::Confident } else { eval::embedded::Pick::Centre };
    let cache = a.cache.clone().unwrap_or_else(|| default_cache(identities, cfg.embed.flip));
    let bar = indicatif::ProgressBar::new(list.len() as u64);
    bar.set_style(indicatif::ProgressStyle::with_template("embedding photos {bar:40} {pos}/{len} ({per_sec}, {eta} left)").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let progress = |done: usize, total: usize| {
        bar.set_position(done as u64);
        // Without a terminal the bar is hidden: a line every 1000 photos instead.
        if !tty && (done.is_multiple_of(1000) || done == total) {
            eprintln!("embedding photos: {done}/{total}");
        }
    };
    let embs = eval::embedded::embed_set(cfg, &list, pick, a.workers, Some(&cache), &progress)?;
    bar.finish_and_clear();
    let mut names: Vec<String> = Vec::new();
    let mut index: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    let mut samples = Vec::new();
    let mut failed = 0;
    for (l, e) in list.iter().zip(embs) {
        let Some(e) = e else {
            failed += 1;
            continue;
        };
        let id = *index.entry(l.identity.clone()).or_insert_with(|| {
            names.push(l.identity.clone());
            names.len() as u32 - 1
        });
        samples.push((id, e));
    }
    eprintln!("{} photos of {} people embedded, {failed} without a usable face (cache {})", samples.len(), names.len(), cache.display());
    Ok(Embedded { names, samples, failed })
}

/// The identities of one split.
fn people_of(e: &Embedded, split: eval::open_set::Split, seed: u64) -> Vec<u32> {
    (0..e.names.len() as u32).filter(|&i| split == eval::open_set::Split::All || eval::open_set::split_of(&e.names[i as usize], seed) == split).collect()
}

fn rule_of(name: &str, margin: f32) -> Result<eval::open_set::Rule> {
    use eval::open_set::Rule;
    Ok(match name {
        "distance" => Rule::Distance,
        "margin" => Rule::Margin(margin),
        "ratio" => Rule::Ratio,
        "cohort" => Rule::Cohort,
        "cohort-margin" => Rule::CohortMargin(margin),
        other => anyhow::bail!("--rules: unknown rule `{other}` (distance, margin, ratio, cohort, cohort-margin)"),
    })
}

/// `facestream eval --open-set`: DIR/FAR at each gallery size on one split, per rule.
pub fn cmd_open_set(cfg: &Config, identities: &Path, a: &OpenSetArgs, split: &str, rules: &[String], plot: Option<&Path>, json_out: Option<&Path>) -> Result<ExitCode> {
    use eval::open_set::{Split, pooled, report};
    let split = match split {
        "calibration" => Split::Calibration,
        "all" => Split::All,
        _ => Split::Report,
    };
    let e = embed_labelled(cfg, identities, a)?;
    let people = people_of(&e, split, a.seed);
    let samples: Vec<(u32, &[f32])> = e.samples.iter().map(|(i, v)| (*i, v.as_slice())).collect();
    let analyzer = Analyzer::new(cfg)?;
    let rules = rules.iter().map(|r| rule_of(r, cfg.identify.margin)).collect::<Result<Vec<_>>>()?;
    println!("open set on the {} split (seed {}): {} people, {} trial(s) per size, {} enrolled photo(s) per person", split.as_str(), a.seed, people.len(), a.trials, a.enroll);
    println!("{:<22} {:>7} {:>7} {:>8} {:>7} {:>13} {:>14}   at the threshold in use", "rule", "gallery", "genuine", "strangers", "rank-1", "DIR@FAR1%", "DIR@FAR0.1%");
    let mut reports = Vec::new();
    let mut series = Vec::new();
    for &size in &a.gallery_sizes {
        let (g, probes) = pooled(&samples, &people, a.draws(size, a.seed));
        for &rule in &rules {
            // The threshold in use applies to distance rules only (other scores have other scales).
            let in_use = matches!(rule, eval::open_set::Rule::Distance | eval::open_set::Rule::Margin(_)).then(|| {
                facestream::identify::OperatingPoint::for_embedder(&cfg.identify, cfg.embed.threshold, &analyzer.embedder, g).threshold
            });
            let r = report(&probes, rule, g, a.trials, in_use);
            let at = r.at_threshold.map(|p| format!("t={:.3}: DIR {:.3}, FAR {:.4}, wrong names {:.4}", p.threshold, p.dir, p.far, p.wrong_name)).unwrap_or_default();
            println!("{:<22} {:>7} {:>7} {:>8} {:>7.3} {:>6.3} (t={:.3}) {:>6.3} (t={:.3})   {at}", r.rule, r.gallery, r.genuine, r.strangers, r.rank1, r.dir_at_far_1pct, r.threshold_at_far_1pct, r.dir_at_far_01pct, r.threshold_at_far_01pct);
            series.push((format!("{} G={}", r.rule, r.gallery), r.curve.iter().map(|&(_, d, f)| (f, d)).collect()));
            reports.push(r);
        }
    }
    if let Some(p) = plot {
        eval::plot::dir_far(p, &format!("open-set identification, {} split", split.as_str()), &series)?;
        eprintln!("plot written to {}", p.display());
    }
    if let Some(p) = json_out {
        let v = json!({"split": split, "seed": a.seed, "people": people.len(), "photos_failed": e.failed, "reports": reports});
        std::fs::write(p, serde_json::to_string_pretty(&v)?).with_context(|| format!("{}: cannot write", p.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `facestream calibrate`: thresholds for each FAR target and gallery size on the calibration
/// split, verified on the report split, written next to the embedder's card.
pub fn cmd_calibrate(cfg: &Config, identities: &Path, a: &OpenSetArgs, targets: &[f64], out: Option<&Path>) -> Result<ExitCode> {
    use eval::open_set::{Rule, Split, at, pooled, threshold_at_far};
    use facestream::identify::calibration::{Calibration, Entry};
    let e = embed_labelled(cfg, identities, a)?;
    let samples: Vec<(u32, &[f32])> = e.samples.iter().map(|(i, v)| (*i, v.as_slice())).collect();
    let (cal_people, rep_people) = (people_of(&e, Split::Calibration, a.seed), people_of(&e, Split::Report, a.seed));
    let analyzer = Analyzer::new(cfg)?;
    let model = analyzer.embedder.model_id().to_string();
    let path = out.map(Path::to_path_buf).unwrap_or_else(|| facestream::identify::calibration::beside(&analyzer.embedder.card_path));
    let rule = Rule::Margin(cfg.identify.margin);
    // The set by its folder and file name only (no machine paths in a file that may be committed).
    let set_name = identities.components().rev().take(2).collect::<Vec<_>>().into_iter().rev().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/");
    let source = format!("{set_name} ({} people: {} calibrate, {} verify; split seed {}; {} draws per size)", e.names.len(), cal_people.len(), rep_people.len(), a.seed, a.trials);
    let mut c = match Calibration::load(&path, &model) {
        Ok(Some(c)) if c.rule == rule.name() => c,
        _ => Calibration { model: model.clone(), rule: rule.name(), source: source.clone(), entries: Vec::new() },
    };
    c.source = source;
    println!("{:>8} {:>9} {:>10}   {:>22}   {:>22}", "gallery", "target", "threshold", "calibration DIR / FAR", "report DIR / FAR");
    for &size in &a.gallery_sizes {
        let (g, cal) = pooled(&samples, &cal_people, a.draws(size, a.seed));
        let (_, rep) = pooled(&samples, &rep_people, a.draws(size, a.seed ^ 0x5EED));
        for &target in targets {
            let t = threshold_at_far(&cal, rule, target);
            let (pc, pr) = (at(&cal, rule, t), at(&rep, rule, t));
            println!("{g:>8} {target:>9} {t:>10.4}   {:>10.3} / {:<9.4}   {:>10.3} / {:<9.4}", pc.dir, pc.far, pr.dir, pr.far);
            c.put(Entry { gallery_size: g, target_far: target, threshold: t, far: pc.far, dir: pc.dir });
        }
    }
    c.save(&path)?;
    println!("calibration written to {} (rule {}); `identify.target_far` picks from it at start", path.display(), c.rule);
    Ok(ExitCode::SUCCESS)
}

/// `facestream eval --cluster`: the visitors' online clustering on one split of a labelled set,
/// each photo standing in for a track, in a seeded random order; pairwise precision and recall
/// and clusters vs people, at the configured threshold (or each of `thresholds`).
pub fn cmd_cluster(cfg: &Config, identities: &Path, a: &OpenSetArgs, split: &str, thresholds: &[f32], json_out: Option<&Path>) -> Result<ExitCode> {
    use eval::open_set::Split;
    use facestream::visitors::cluster::{cluster_all, pair_scores};
    let split = match split {
        "calibration" => Split::Calibration,
        "all" => Split::All,
        _ => Split::Report,
    };
    let e = embed_labelled(cfg, identities, a)?;
    let people: std::collections::HashSet<u32> = people_of(&e, split, a.seed).into_iter().collect();
    let mut items: Vec<(u32, &[f32])> = e.samples.iter().filter(|(i, _)| people.contains(i)).map(|(i, v)| (*i, v.as_slice())).collect();
    // A seeded shuffle (Fisher-Yates on a splitmix64 stream): tracks arrive in no useful order.
    let mut state = a.seed ^ 0x9E37_79B9_7F4A_7C15;
    for i in (1..items.len()).rev() {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        items.swap(i, ((z ^ (z >> 31)) % (i as u64 + 1)) as usize);
    }
    let configured = cfg.visitors.params(&cfg.identify, &cfg.embed_card())?;
    let list: Vec<f32> = if thresholds.is_empty() { vec![configured.threshold] } else { thresholds.to_vec() };
    println!("clustering on the {} split (seed {}): {} photos of {} people, one photo = one track; margin {}, merge at {} x threshold", split.as_str(), a.seed, items.len(), people.len(), cfg.visitors.margin, cfg.visitors.merge_ratio);
    println!("{:>9} {:>10} {:>8} {:>9} {:>8} {:>7}", "threshold", "precision", "recall", "clusters", "people", "impure");
    let mut rows = Vec::new();
    for t in list {
        let started = std::time::Instant::now();
        let assigned = cluster_all(cfg.visitors.params_at(t), &items);
        let s = pair_scores(&assigned);
        println!("{:>9.3} {:>10.4} {:>8.4} {:>9} {:>8} {:>7}   ({:.1} s)", t, s.precision, s.recall, s.clusters, s.people, s.impure_clusters, started.elapsed().as_secs_f64());
        rows.push(json!({"threshold": t, "scores": s}));
    }
    if let Some(p) = json_out {
        let v = json!({"split": split, "seed": a.seed, "photos": items.len(), "people": people.len(), "margin": cfg.visitors.margin, "merge_ratio": cfg.visitors.merge_ratio, "results": rows});
        std::fs::write(p, serde_json::to_string_pretty(&v)?).with_context(|| format!("{}: cannot write", p.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
