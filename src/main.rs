//! The `facestream` command line: clap definitions and dispatch to `cli/`. The only place that
//! turns errors into exit codes.

mod cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

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
        /// Open-set report instead: galleries of several sizes, strangers searched too.
        #[arg(long)]
        open_set: bool,
        /// Open set and cluster: which half of the identities to report on (calibration, report, all).
        #[arg(long, value_parser = ["report", "calibration", "all"], default_value = "report")]
        split: String,
        /// Open set: decision rules to compare (distance, margin, ratio, cohort, cohort-margin).
        #[arg(long, value_delimiter = ',', default_value = "margin")]
        rules: Vec<String>,
        /// Open set: write the DIR/FAR curves as a PNG.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Clustering report instead: the visitors' online clustering of the split's photos
        /// (one photo = one track), pairwise precision and recall, clusters vs people.
        #[arg(long, conflicts_with = "open_set")]
        cluster: bool,
        /// Cluster: join thresholds to compare (default: the one `[visitors]` resolves to).
        #[arg(long = "cluster-thresholds", value_delimiter = ',')]
        cluster_thresholds: Vec<f32>,
        #[command(flatten)]
        open: cli::eval::OpenSetArgs,
    },
    /// Choose the open-set threshold for false-accept targets at each gallery size on the
    /// calibration half of a labelled set, verify it on the other half (people it never saw),
    /// and write it next to the embedder's model card (`identify.target_far` then picks it).
    Calibrate {
        /// Labelled photos: a `path<TAB>identity` file or a folder per person.
        #[arg(long)]
        identities: PathBuf,
        /// Share of strangers that may get a name, comma separated.
        #[arg(long = "target-far", value_delimiter = ',', default_value = "0.01,0.001")]
        target_far: Vec<f64>,
        /// Calibration file to write (default: beside the model card).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        open: cli::eval::OpenSetArgs,
    },
    /// Run the pipeline: every enabled camera of the config, identity events as JSON lines.
    /// Without --config the embedded default plays a fixture clip against a fixture gallery.
    /// Stops on SIGINT/SIGTERM (outputs flushed), or when every camera has ended.
    Run {
        /// Stop after this many seconds (0 = run until stopped or every camera ended).
        #[arg(long, default_value_t = 0.0)]
        duration: f64,
        /// Also keep every track's faces for training in DIR (`harvest.jsonl` + best crops; then
        /// `facestream train --head --data DIR`).
        #[arg(long, value_name = "DIR")]
        harvest: Option<PathBuf>,
    },
    Bench(cli::bench::BenchArgs),
    /// Train on your own labelled faces with FaceNet's triplet loss (`--head`: a projection on the
    /// frozen embedder); reports TAR/DIR before and after on unseen identities, writes the head.
    Train(cli::train::TrainArgs),
    /// Several nodes on one PostgreSQL database: apply the schema, show nodes and leases.
    Cluster(cli::cluster::ClusterArgs),
    /// Enroll persons into the gallery store: `--name NAME IMAGE...`, `--dir DIR` (one sub-folder per
    /// person) or `--video CLIP --name NAME`; faces that would poison the gallery are refused.
    Enroll(cli::gallery::EnrollArgs),
    /// Inspect and edit the gallery store.
    Gallery {
        #[command(subcommand)]
        action: cli::gallery::GalleryAction,
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
    BenchGallery(cli::bench::BenchGalleryArgs),
    Soak(cli::bench::SoakArgs),
    /// Access-control gates: the audit log of their decisions.
    Gates {
        #[command(subcommand)]
        action: GatesAction,
    },
    /// Unknown faces grouped into visitors: list, show, name (make a person), ignore, merge,
    /// reject a track's name.
    Visitors {
        #[command(subcommand)]
        action: cli::visitors::VisitorsAction,
        /// Gallery store (default: gallery.store of the config).
        #[arg(long, global = true)]
        store: Option<PathBuf>,
    },
    /// Visits per site and day.
    Visits {
        #[command(subcommand)]
        action: VisitsAction,
        /// Gallery store (default: gallery.store of the config).
        #[arg(long, global = true)]
        store: Option<PathBuf>,
    },
    /// Remove a person (by name) or a visitor (visitor-<n>) entirely: faces, samples, best
    /// shots (rows and files), sightings, visits, feedback and gate log references.
    Forget {
        subject: String,
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Reference receiver of signed gate commands (MQTT, webhook or stdin): checks the HMAC
    /// signature, the timestamp and the nonce, prints each verdict as a JSON line and runs
    /// --exec for accepted commands.
    GateReceiver(cli::gates::ReceiverArgs),
    /// Serve a clip as an RTSP camera on 127.0.0.1 (try a setup without a camera); prints the URL.
    ServeRtsp {
        clip: PathBuf,
        /// Port (0: any free one).
        #[arg(long, default_value_t = 8554)]
        port: u16,
        /// Mount point of the stream.
        #[arg(long, default_value = "/cam")]
        mount: String,
    },
    /// Validate a config file (or the embedded default) and print every problem, each with the
    /// file and the key; exit 1 if there is any. `run` applies the same checks before starting.
    Check,
    /// Detection and comparison on the bundled fixture photos, with readable output.
    Demo {
        /// Folder with the fixture photos.
        #[arg(long, default_value = "tests/fixtures")]
        fixtures: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum VisitsAction {
    /// One day: unique known people and visitors (returning ones marked), visits, first and
    /// last seen, dwell time, per camera and per hour.
    Report(cli::visitors::ReportArgs),
}

#[derive(Subcommand)]
pub enum GatesAction {
    /// Decisions, newest first, with person, reason and latency.
    Log(cli::gates::LogArgs),
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

fn run(cli: Cli) -> Result<ExitCode> {
    // `check` reports a bad config itself; every other command needs a valid one.
    let mut cfg = match cli.command {
        Command::Check | Command::ServeRtsp { .. } | Command::GateReceiver(_) => facestream::config::Config::default(),
        _ => cli::load_config(cli.global.config.as_deref())?,
    };
    match cli.command {
        Command::Detect { images, draw, min_face } => {
            if let Some(m) = min_face {
                cfg.detect.min_face = m;
                cfg.validate(Path::new("--min-face"))?;
            }
            cli::photos::cmd_detect(&cfg, &images, draw.as_deref())
        }
        Command::Embed { image, all } => cli::photos::cmd_embed(&cfg, &image, all),
        Command::Compare { a, b, json } => cli::photos::cmd_compare(&cfg, &a, &b, json),
        Command::Eval { identities, json, min_face, open_set, split, rules, plot, cluster, cluster_thresholds, open } => {
            if let Some(m) = min_face {
                cfg.detect.min_face = m;
                cfg.validate(Path::new("--min-face"))?;
            }
            if cluster {
                return cli::eval::cmd_cluster(&cfg, &identities, &open, &split, &cluster_thresholds, json.as_deref());
            }
            if open_set {
                return cli::eval::cmd_open_set(&cfg, &identities, &open, &split, &rules, plot.as_deref(), json.as_deref());
            }
            cli::eval::cmd_eval(&cfg, &identities, json.as_deref())
        }
        Command::Calibrate { identities, target_far, out, open } => cli::eval::cmd_calibrate(&cfg, &identities, &open, &target_far, out.as_deref()),
        Command::Demo { fixtures } => cli::photos::cmd_demo(&cfg, &fixtures),
        Command::Enroll(a) => cli::gallery::cmd_enroll(&cfg, a),
        Command::Gallery { action, store } => cli::gallery::cmd_gallery(&cfg, action, store),
        Command::Identify { image, draw, store } => cli::photos::cmd_identify(&cfg, &image, draw.as_deref(), store),
        Command::BenchGallery(a) => cli::bench::cmd_bench_gallery(a),
        Command::Soak(a) => cli::bench::cmd_soak(&cfg, a),
        Command::Bench(a) => cli::bench::cmd_bench(&cfg, a),
        Command::Train(a) => cli::train::cmd_train(&cfg, a),
        Command::Cluster(a) => cli::cluster::cmd_cluster(&cfg, a),
        Command::Run { duration, harvest } => {
            let file = cli.global.config.clone().unwrap_or_else(|| PathBuf::from("<embedded config/default.toml>"));
            cli::run::cmd_run(&cfg, &file, duration, harvest)
        }
        Command::Gates { action: GatesAction::Log(a) } => cli::gates::cmd_log(&cfg, a),
        Command::GateReceiver(a) => cli::gates::cmd_receiver(a),
        Command::Visitors { action, store } => cli::visitors::cmd_visitors(&cfg, action, store),
        Command::Visits { action: VisitsAction::Report(a), store } => cli::visitors::cmd_report(&cfg, a, store),
        Command::Forget { subject, store } => cli::visitors::cmd_forget(&cfg, &subject, store),
        Command::Check => cli::run::cmd_check(cli.global.config.as_deref()),
        Command::ServeRtsp { clip, port, mount } => cli::run::cmd_serve_rtsp(&clip, port, &mount),
    }
}
