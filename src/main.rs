//! The `facestream` command line. The only place that turns errors into exit codes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use facestream::config::Config;
use facestream::detect::Face;
use facestream::embed::distance;
use facestream::photo::{Analyzer, primary_face};
use facestream::{draw, eval, image};

#[derive(Parser)]
#[command(name = "facestream", version, about = "Real-time face recognition for video streams", long_about = None)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Global {
    /// Config file (TOML); without it the embedded config/default.toml is used.
    #[arg(long, short, global = true, env = "FACESTREAM_CONFIG")]
    config: Option<PathBuf>,
    /// Log filter, e.g. `info`, `debug`, `facestream=trace` (also RUST_LOG).
    #[arg(long, global = true, default_value = "info")]
    log: String,
}

#[derive(Subcommand)]
enum Command {
    /// Detect faces in images; prints one JSON line per image (boxes, 5 landmarks, scores).
    Detect {
        /// Image files (JPEG, PNG, TIFF, GIF, WebP, BMP); EXIF orientation is honoured.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Write each image with boxes and landmarks drawn: a file for one image, else a folder.
        #[arg(long)]
        draw: Option<PathBuf>,
        /// Smallest face side in pixels (overrides detect.min_face).
        #[arg(long)]
        min_face: Option<f32>,
    },
    /// Print the 128-d embedding of the main face of an image (or of every face with --all), as JSON.
    Embed {
        image: PathBuf,
        /// Embed every face, not only the most confident one.
        #[arg(long)]
        all: bool,
    },
    /// Compare the main faces of two images: distance and same/different at the threshold.
    Compare {
        a: PathBuf,
        b: PathBuf,
        /// Print JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// Measure verification accuracy over all pairs of a labelled photo list.
    Eval {
        /// File of `path<TAB>identity` lines (paths relative to the file; a `file identity` header is skipped).
        #[arg(long)]
        identities: PathBuf,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Smallest face side in pixels (overrides detect.min_face).
        #[arg(long)]
        min_face: Option<f32>,
    },
    /// Run the pipeline: every enabled camera of the config, identity events as JSON lines.
    /// Without --config the embedded default plays a fixture clip against a fixture gallery.
    /// Stops on SIGINT/SIGTERM (outputs flushed), or when every camera has ended.
    Run {
        /// Stop after this many seconds (0 = run until stopped or every camera ended).
        #[arg(long, default_value_t = 0.0)]
        duration: f64,
    },
    /// End-to-end harness: N cameras from a clip through the real pipeline; prints a table and
    /// optionally writes JSON. Capacity mode paces in real time; throughput mode runs flat out.
    Bench {
        /// capacity (real time, looped, --fps per camera) or throughput (as fast as possible).
        #[arg(long, value_enum, default_value = "capacity")]
        mode: BenchMode,
        /// Camera counts to run, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
        cameras: Vec<usize>,
        /// Clip each camera plays.
        #[arg(long, default_value = "tests/fixtures/video_01.mp4")]
        clip: PathBuf,
        /// Capacity mode: measured seconds per camera count.
        #[arg(long, default_value_t = 20.0)]
        duration: f64,
        /// Capacity mode: seconds before measuring.
        #[arg(long, default_value_t = 3.0)]
        warmup: f64,
        /// Capacity mode: frames per second each camera delivers.
        #[arg(long, default_value_t = 10.0)]
        fps: f32,
        /// Throughput mode: times each camera plays the clip.
        #[arg(long, default_value_t = 3)]
        loops: u32,
        /// Capacity mode: spread the camera starts evenly over this many seconds (the default
        /// clip's length), so looped clips do not all restart at once; 0 = start together.
        #[arg(long, default_value_t = 3.0)]
        stagger: f64,
        /// Also write the reports as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Enroll persons into the gallery store: `--name NAME IMAGE...` or `--dir DIR` (one sub-folder
    /// per person). A photo with no face, or several faces and no --box, is refused.
    Enroll {
        /// The person the images show.
        #[arg(long, required_unless_present = "dir", conflicts_with = "dir")]
        name: Option<String>,
        images: Vec<PathBuf>,
        /// A folder with one sub-folder per person, named after the person.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Which face to take from a photo with several: x1,y1,x2,y2 in pixels.
        #[arg(long, value_name = "X1,Y1,X2,Y2")]
        r#box: Option<String>,
        /// Gallery store (default: gallery.store of the config, else ~/.local/share/facestream/gallery.db).
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Inspect and edit the gallery store.
    Gallery {
        #[command(subcommand)]
        action: GalleryAction,
        /// Gallery store (default: gallery.store of the config, else ~/.local/share/facestream/gallery.db).
        #[arg(long, global = true)]
        store: Option<PathBuf>,
    },
    /// Every face in an image with its person (or unknown), as JSON; --draw writes the labelled image.
    Identify {
        image: PathBuf,
        #[arg(long)]
        draw: Option<PathBuf>,
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Gallery search benchmark on synthetic clustered embeddings: exact scan vs the HNSW graph vs
    /// the sketch scan, each through `Gallery::search`.
    BenchGallery {
        /// Identities per run, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
        sizes: Vec<usize>,
        /// Noisy samples per identity.
        #[arg(long, default_value_t = 3)]
        samples: usize,
        /// ef values to try (HNSW search breadth; shortlist length of the sketch scan).
        #[arg(long, value_delimiter = ',', default_value = "16,32,64,128")]
        ef: Vec<usize>,
        /// Indexes to measure besides the exact scan: hnsw, sketch.
        #[arg(long, value_delimiter = ',', default_value = "hnsw,sketch", value_parser = ["hnsw", "sketch"])]
        methods: Vec<String>,
        /// Queries per measurement.
        #[arg(long, default_value_t = 1000)]
        queries: usize,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Detection and comparison on the bundled fixture photos, with readable output.
    Demo {
        /// Folder with the fixture photos.
        #[arg(long, default_value = "tests/fixtures")]
        fixtures: PathBuf,
    },
}

#[derive(Subcommand)]
enum GalleryAction {
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
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BenchMode {
    Capacity,
    Throughput,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| cli.global.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::embedded()?,
    })
}

fn run(cli: Cli) -> Result<ExitCode> {
    let mut cfg = load_config(cli.global.config.as_deref())?;
    match cli.command {
        Command::Detect { images, draw, min_face } => {
            if let Some(m) = min_face {
                cfg.detect.min_face = m;
                cfg.validate(Path::new("--min-face"))?;
            }
            cmd_detect(&cfg, &images, draw.as_deref())
        }
        Command::Embed { image, all } => cmd_embed(&cfg, &image, all),
        Command::Compare { a, b, json } => cmd_compare(&cfg, &a, &b, json),
        Command::Eval { identities, json, min_face } => {
            if let Some(m) = min_face {
                cfg.detect.min_face = m;
                cfg.validate(Path::new("--min-face"))?;
            }
            cmd_eval(&cfg, &identities, json.as_deref())
        }
        Command::Demo { fixtures } => cmd_demo(&cfg, &fixtures),
        Command::Enroll { name, images, dir, r#box, store } => cmd_enroll(&cfg, name, images, dir, r#box, store),
        Command::Gallery { action, store } => cmd_gallery(&cfg, action, store),
        Command::Identify { image, draw, store } => cmd_identify(&cfg, &image, draw.as_deref(), store),
        Command::BenchGallery { sizes, samples, ef, methods, queries, json } => {
            let methods: Vec<&str> = methods.iter().map(String::as_str).collect();
            let reports = facestream::gallery::bench::run(&sizes, samples, &ef, &methods, queries, 42, |line| eprintln!("{line}"));
            print!("{}", facestream::gallery::bench::table(&reports));
            if let Some(p) = json {
                std::fs::write(&p, serde_json::to_string_pretty(&reports)?).with_context(|| format!("{}: cannot write", p.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { mode, cameras, clip, duration, warmup, fps, loops, stagger, json } => {
            let opts = facestream::bench::BenchOptions {
                mode: match mode {
                    BenchMode::Capacity => facestream::bench::Mode::Capacity,
                    BenchMode::Throughput => facestream::bench::Mode::Throughput,
                },
                cameras,
                clip,
                duration,
                warmup,
                fps,
                loops,
                stagger,
            };
            eprintln!("benchmark: {:?} mode, cameras {:?}, clip {}", opts.mode, opts.cameras, opts.clip.display());
            let reports = facestream::bench::run(&cfg, &opts, |r| {
                eprintln!("  {} camera(s): {:.1} frames/s, {:.2}% dropped, p99 capture-to-event {:.0} ms", r.cameras, r.frames_per_s, r.drop_pct, r.capture_to_event.p99_ms)
            })?;
            print!("{}", facestream::bench::table(&reports));
            if let Some(p) = json {
                std::fs::write(&p, serde_json::to_string_pretty(&reports)?).with_context(|| format!("{}: cannot write", p.display()))?;
            }
            if opts.mode == facestream::bench::Mode::Capacity {
                let best = reports.iter().filter(|r| r.holds).map(|r| r.cameras).max();
                match best {
                    Some(n) => println!("capacity: {n} camera(s) at {} fps hold (<1% drops, p99 capture-to-event < 250 ms)", opts.fps),
                    None => println!("capacity: no tested camera count holds at {} fps", opts.fps),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { duration } => {
            let file = cli.global.config.clone().unwrap_or_else(|| PathBuf::from("<embedded config/default.toml>"));
            cmd_run(&cfg, &file, duration)
        }
    }
}

fn face_json(f: &Face) -> serde_json::Value {
    json!({
        "bbox": [f.bbox.x1, f.bbox.y1, f.bbox.x2, f.bbox.y2],
        "score": f.score,
        "landmarks": f.landmarks,
    })
}

fn cmd_detect(cfg: &Config, images: &[PathBuf], draw_to: Option<&Path>) -> Result<ExitCode> {
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

/// Loads an image and returns its main face and that face's embedding.
fn main_face(analyzer: &mut Analyzer, path: &Path) -> Result<(Face, Vec<f32>)> {
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

fn cmd_embed(cfg: &Config, path: &Path, all: bool) -> Result<ExitCode> {
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

fn cmd_compare(cfg: &Config, a: &Path, b: &Path, as_json: bool) -> Result<ExitCode> {
    let mut analyzer = Analyzer::new(cfg)?;
    let (_, ea) = main_face(&mut analyzer, a)?;
    let (_, eb) = main_face(&mut analyzer, b)?;
    let d = distance(&ea, &eb);
    let threshold = analyzer.embedder.threshold;
    let same = d <= threshold;
    let verdict = if same { "same" } else { "different" };
    if as_json {
        println!("{}", json!({"a": a, "b": b, "distance": d, "threshold": threshold, "verdict": verdict}));
    } else {
        println!("{verdict}: distance {d:.4} (threshold {threshold:.4}) between {} and {}", a.display(), b.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn read_identities(file: &Path) -> Result<Vec<(PathBuf, String)>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("{}: cannot read", file.display()))?;
    let base = file.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((p, id)) = line.split_once('\t') else {
            bail!("{}:{}: expected `path<TAB>identity`, got {line:?}", file.display(), n + 1);
        };
        if n == 0 && (p == "file" || p == "path") {
            continue;
        }
        out.push((base.join(p), id.trim().to_string()));
    }
    Ok(out)
}

fn cmd_eval(cfg: &Config, identities: &Path, json_out: Option<&Path>) -> Result<ExitCode> {
    let list = read_identities(identities)?;
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

fn cmd_demo(cfg: &Config, fixtures: &Path) -> Result<ExitCode> {
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

fn cmd_run(cfg: &Config, file: &Path, duration: f64) -> Result<ExitCode> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, RwLock};
    use std::time::{Duration, Instant};

    cfg.validate_for_run(file)?;
    let photos = cfg.gallery.photos(&cfg.base_dir)?;
    let mut gallery = cfg.gallery.new_gallery();
    let mut analyzer = Analyzer::new(cfg)?;
    let store_path = cfg.gallery.store_path(&cfg.base_dir);
    let store = facestream::gallery::store::Store::open(&store_path)?;
    let n = store.load_into(&mut gallery, analyzer.embedder.model_id())?;
    tracing::info!(store = %store_path.display(), samples = n, persons = gallery.len(), "gallery store loaded");
    let n = facestream::photo::enroll_photos(&mut analyzer, &photos, &mut gallery)?;
    tracing::info!(persons = gallery.len(), photos = n, "gallery ready");
    let threshold = cfg.identify.threshold.unwrap_or(analyzer.embedder.threshold);
    let gallery = Arc::new(RwLock::new(gallery));
    let state = facestream::http::AppState::new(gallery.clone(), cfg.http.sse_buffer);
    let server = if cfg.http.enabled {
        // The API shares the gallery with the cameras: an enrollment is searchable at once.
        let api = facestream::http::api::router(
            facestream::http::api::ApiState {
                gallery: gallery.clone(),
                store: Arc::new(std::sync::Mutex::new(store)),
                analyzer: Arc::new(std::sync::Mutex::new(analyzer)),
                token: cfg.http.token.clone(),
                threshold,
                margin: cfg.identify.margin,
            },
            cfg.http.max_upload_mb << 20,
        );
        Some(facestream::http::serve(&cfg.http, state.clone(), Some(api))?)
    } else {
        None
    };
    let running = facestream::topology::start(cfg, gallery.clone(), vec![Box::new(state.event_sink())])?;
    if let Ok(mut c) = state.cameras.lock() {
        *c = running.cameras.clone();
    }
    state.models_loaded.store(true, Ordering::SeqCst);

    // SIGINT/SIGTERM set the flag; the pipeline drains and the sinks flush.
    let signalled = Arc::new(AtomicBool::new(false));
    {
        let signalled = signalled.clone();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name("signals".into()).spawn(move || {
            rt.block_on(async {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
                }
            });
            signalled.store(true, Ordering::SeqCst);
        })?;
    }
    let started = Instant::now();
    let limit = (duration > 0.0).then(|| Duration::from_secs_f64(duration));
    loop {
        if running.is_finished() {
            break;
        }
        let timed_out = limit.is_some_and(|l| started.elapsed() >= l);
        if signalled.load(Ordering::SeqCst) || timed_out {
            tracing::info!("stopping: draining the pipeline");
            running.stop();
            let deadline = Instant::now() + Duration::from_millis(1800);
            while !running.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !running.is_finished() {
                tracing::warn!("pipeline did not drain within 1.8 s; exiting anyway (events already written are flushed)");
                return Ok(ExitCode::SUCCESS);
            }
            break;
        }
        // Housekeeping: a gallery index rebuilt in the background is swapped in.
        if gallery.read().is_ok_and(|g| g.rebuild_ready()) {
            if let Ok(mut g) = gallery.write() {
                g.maintain();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let failed: Vec<_> = running
        .camera_statuses()
        .into_iter()
        .filter(|c| c.state == facestream::ingest::CameraState::Failed)
        .map(|c| format!("{} ({})", c.id, c.last_error.unwrap_or_default()))
        .collect();
    running.join();
    if let Some(server) = server {
        server.shutdown();
    }
    if !failed.is_empty() {
        eprintln!("cameras failed: {}", failed.join(", "));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn open_store(cfg: &Config, store: Option<PathBuf>) -> Result<facestream::gallery::store::Store> {
    let path = store.unwrap_or_else(|| cfg.gallery.store_path(&cfg.base_dir));
    Ok(facestream::gallery::store::Store::open(&path)?)
}

fn cmd_enroll(cfg: &Config, name: Option<String>, images: Vec<PathBuf>, dir: Option<PathBuf>, bbox: Option<String>, store: Option<PathBuf>) -> Result<ExitCode> {
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
        let gc = facestream::gallery::GalleryConfig { folder: Some(dir.clone()), ..Default::default() };
        list = gc.photos(Path::new("."))?;
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

fn cmd_gallery(cfg: &Config, action: GalleryAction, store: Option<PathBuf>) -> Result<ExitCode> {
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
        GalleryAction::Import { file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("{}: cannot read", file.display()))?;
            let data: facestream::gallery::store::Export = serde_json::from_str(&text).with_context(|| format!("{}: not a facestream gallery export", file.display()))?;
            let (p, s) = store.import(&data)?;
            eprintln!("imported {p} persons, {s} samples");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_identify(cfg: &Config, path: &Path, draw_to: Option<&Path>, store: Option<PathBuf>) -> Result<ExitCode> {
    let store = open_store(cfg, store)?;
    let mut analyzer = Analyzer::new(cfg)?;
    let mut gallery = cfg.gallery.new_gallery();
    store.load_into(&mut gallery, analyzer.embedder.model_id())?;
    let mut img = image::load(path)?;
    let faces = analyzer.analyze(&img)?;
    let threshold = cfg.identify.threshold.unwrap_or(analyzer.embedder.threshold);
    let mut labels = Vec::new();
    let mut out = Vec::new();
    for (f, e) in &faces {
        let (person, distance) = match e {
            Some(e) => facestream::identify::decide(&gallery.search(e, 2), threshold, cfg.identify.margin),
            None => (None, None),
        };
        let name = person.as_ref().map(|p| p.1.clone()).unwrap_or_else(|| "unknown".into());
        labels.push(name.clone());
        let mut v = face_json(f);
        v["person"] = json!(name);
        v["person_id"] = json!(person.map(|p| p.0));
        v["distance"] = json!(distance);
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
