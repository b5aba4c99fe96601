//! `facestream run` (the pipeline, with the HTTP server and the gallery API) and `facestream
//! check` (validate a config and print every problem).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

use facestream::app::{self, App, AppOptions};
use facestream::config::{Config, ConfigError};

pub fn cmd_run(cfg: &Config, file: &Path, duration: f64, harvest: Option<PathBuf>) -> Result<ExitCode> {
    cfg.validate_for_run(file)?;
    let mut apps = Vec::new();
    if let Some(dir) = harvest {
        apps.push(harvester(cfg, dir)?);
    }
    let loaded = app::load_gallery(cfg)?;
    let app = App::start(cfg, loaded, AppOptions { http: true, apps, ..AppOptions::default() })?;
    let signalled = watch_signals()?;
    let limit = (duration > 0.0).then(|| Duration::from_secs_f64(duration));
    if !app.run_until(limit, &signalled, Duration::from_millis(1800)) {
        tracing::warn!("pipeline did not drain within 1.8 s; exiting anyway (events already written are flushed)");
        return Ok(ExitCode::SUCCESS);
    }
    let failed = app.failed_cameras();
    app.finish();
    if !failed.is_empty() {
        eprintln!("cameras failed: {}", failed.join(", "));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The harvest application (`run --harvest DIR`): every ended track's faces from the bare
/// embedder, kept for `train`.
fn harvester(cfg: &Config, dir: PathBuf) -> Result<facestream::topology::Subscription> {
    if let Some(head) = &cfg.embed.head {
        anyhow::bail!("--harvest keeps the bare embedder's embeddings for training, but this config runs them through the head {} (embed.head): harvest with a config without it", head.display());
    }
    if let Some(model) = &cfg.embed.model {
        anyhow::bail!("--harvest keeps the converted embedder's embeddings for training, but this config embeds with the fine-tuned {} (embed.model): harvest with a config without it", model.display());
    }
    let card = facestream::infer::locate_models(&cfg.infer).join(format!("{}.toml", facestream::embed::CARD));
    let model_id = facestream::infer::ModelCard::read(&card).with_context(|| format!("{}: the embedder's model card (run `make setup`)", card.display()))?.id;
    let settings = facestream::harvest::HarvestSettings { dir: dir.clone(), min_faces: 3, min_quality: cfg.visitors.min_quality, model_id };
    let h = facestream::harvest::Harvester::open(settings)?;
    tracing::info!(dir = %dir.display(), "harvest: every track with 3 or more faces is kept for training");
    Ok(facestream::topology::Subscription { name: "harvest", capacity: 4096, observe: Vec::new(), run: Box::new(move |io| h.run(io.updates)) })
}

/// A flag set by SIGINT or SIGTERM (the pipeline then drains and the sinks flush).
fn watch_signals() -> Result<Arc<AtomicBool>> {
    let signalled = Arc::new(AtomicBool::new(false));
    let flag = signalled.clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        rt.block_on(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
            }
        });
        flag.store(true, Ordering::SeqCst);
    })?;
    Ok(signalled)
}

/// Loads and validates a config as `run` would, printing every problem (file and key) at once.
pub fn cmd_check(path: Option<&Path>) -> Result<ExitCode> {
    let file = path.map(Path::to_path_buf).unwrap_or_else(|| "<embedded config/default.toml>".into());
    let text = match path {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => t,
            Err(e) => return Ok(report(&ConfigError::Read { file, error: e })),
        },
        None => facestream::config::DEFAULT_TOML.to_string(),
    };
    let cfg = match Config::parse_unchecked(&text, &file) {
        Ok(cfg) => cfg,
        Err(e) => return Ok(report(&e)),
    };
    let cfg = if path.is_none() { Config::embedded().unwrap_or(cfg) } else { cfg };
    match cfg.validate_for_run(&file) {
        Ok(()) => {
            let cams = cfg.cameras.iter().filter(|c| c.enabled).count();
            println!("{}: ok ({cams} camera(s), {} gallery photo(s))", file.display(), cfg.gallery.photos(&cfg.base_dir).map(|p| p.len()).unwrap_or(0));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(report(&e)),
    }
}

fn report(e: &ConfigError) -> ExitCode {
    let problems = e.problems();
    for line in e.to_string().lines() {
        eprintln!("error: {line}");
    }
    eprintln!("{} problem(s) found", problems.len());
    ExitCode::FAILURE
}

/// `facestream serve-rtsp`: a clip served as an RTSP camera on 127.0.0.1 until SIGINT/SIGTERM.
pub fn cmd_serve_rtsp(clip: &Path, port: u16, mount: &str) -> Result<ExitCode> {
    let server = facestream::ingest::rtsp_server::RtspServer::start(clip, port, mount)?;
    println!("{}", server.url);
    eprintln!("serving {} at {} (each client plays it from the start; Ctrl-C stops)", clip.display(), server.url);
    let signalled = watch_signals()?;
    while !signalled.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    server.stop();
    Ok(ExitCode::SUCCESS)
}
