//! Benchmark commands: `bench` (the end-to-end harness) and `bench-gallery` (gallery search).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use facestream::config::Config;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum BenchMode {
    Capacity,
    Throughput,
    /// Access-control gate decision latency, alone and beside monitoring cameras.
    Gate,
}

/// End-to-end harness: N cameras from a clip through the real pipeline; prints a table and
/// optionally writes JSON. Capacity mode paces in real time; throughput mode runs flat out.
#[derive(Args)]
pub struct BenchArgs {
    /// capacity (real time, looped, --fps per camera) or throughput (as fast as possible).
    #[arg(long, value_enum, default_value = "capacity")]
    pub mode: BenchMode,
    /// Camera counts to run, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub cameras: Vec<usize>,
    /// Clip each camera plays.
    #[arg(long, default_value = "tests/fixtures/video_01.mp4")]
    pub clip: PathBuf,
    /// Capacity mode: measured seconds per camera count.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Capacity mode: seconds before measuring.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Capacity mode: frames per second each camera delivers.
    #[arg(long, default_value_t = 10.0)]
    pub fps: f32,
    /// Throughput mode: times each camera plays the clip.
    #[arg(long, default_value_t = 3)]
    pub loops: u32,
    /// Capacity mode: spread the camera starts evenly over this many seconds (the default
    /// clip's length), so looped clips do not all restart at once; 0 = start together.
    #[arg(long, default_value_t = 3.0)]
    pub stagger: f64,
    /// Gate mode: monitoring cameras (10 fps, --clip) beside the gate camera, comma separated runs.
    #[arg(long, value_delimiter = ',', default_value = "0,6")]
    pub monitors: Vec<usize>,
    /// Gate mode: the clip the gate camera plays in a loop (each pass is one passage) ...
    #[arg(long, default_value = "tests/fixtures/ff-region-face-motion.avi")]
    pub gate_clip: PathBuf,
    /// ... showing this person of the config's gallery (any other grant counts as wrong).
    #[arg(long, default_value = "MEDS_S029")]
    pub gate_person: String,
    /// Gate mode: frames per second of the gate camera.
    #[arg(long, default_value_t = 20.0)]
    pub gate_fps: f32,
    /// Capacity mode: run each camera count twice, without and with a headless Chromium showing
    /// the web UI's live page (needs the Debian package `chromium`): what the live view costs.
    #[arg(long)]
    pub ui_client: bool,
    /// Also write the reports as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Gallery search benchmark on synthetic clustered embeddings: exact scan vs the HNSW graph vs
/// the sketch scan, each through `Gallery::search`.
#[derive(Args)]
pub struct BenchGalleryArgs {
    /// Identities per run, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    pub sizes: Vec<usize>,
    /// Noisy samples per identity.
    #[arg(long, default_value_t = 3)]
    pub samples: usize,
    /// ef values to try (HNSW search breadth; shortlist length of the sketch scan).
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128")]
    pub ef: Vec<usize>,
    /// Indexes to measure besides the exact scan: hnsw, sketch.
    #[arg(long, value_delimiter = ',', default_value = "hnsw,sketch", value_parser = ["hnsw", "sketch"])]
    pub methods: Vec<String>,
    /// Queries per measurement.
    #[arg(long, default_value_t = 1000)]
    pub queries: usize,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn cmd_bench_gallery(a: BenchGalleryArgs) -> Result<ExitCode> {
    let BenchGalleryArgs { sizes, samples, ef, methods, queries, json } = a;
    let methods: Vec<&str> = methods.iter().map(String::as_str).collect();
    let reports = facestream::gallery::bench::run(&sizes, samples, &ef, &methods, queries, 42, |line| eprintln!("{line}"));
    print!("{}", facestream::gallery::bench::table(&reports));
    if let Some(p) = json {
        std::fs::write(&p, serde_json::to_string_pretty(&reports)?).with_context(|| format!("{}: cannot write", p.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cmd_bench(cfg: &Config, a: BenchArgs) -> Result<ExitCode> {
    let BenchArgs { mode, cameras, clip, duration, warmup, fps, loops, stagger, json, monitors, gate_clip, gate_person, gate_fps, ui_client } = a;
    if let BenchMode::Gate = mode {
        let opts = facestream::bench::GateBenchOptions { clip: gate_clip, expected: gate_person, monitor_clip: clip, monitors, duration, gate_fps };
        eprintln!("gate benchmark: {} at {} fps with {:?} monitoring camera(s), {} s each", opts.clip.display(), opts.gate_fps, opts.monitors, opts.duration);
        let reports = facestream::bench::gate_latency(cfg, &opts, |r| {
            eprintln!("  {} monitor(s): {} decisions, p50 {:.0} ms, p99 {:.0} ms, {} wrong grant(s)", r.monitors, r.decisions, r.latency_p50_ms, r.latency_p99_ms, r.wrong_grants)
        })?;
        print!("{}", facestream::bench::gate_table(&reports));
        if let Some(p) = json {
            std::fs::write(&p, serde_json::to_string_pretty(&reports)?).with_context(|| format!("{}: cannot write", p.display()))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let opts = facestream::bench::BenchOptions {
        mode: match mode {
            BenchMode::Capacity => facestream::bench::Mode::Capacity,
            _ => facestream::bench::Mode::Throughput,
        },
        cameras,
        clip,
        duration,
        warmup,
        fps,
        loops,
        stagger,
        ui_client,
    };
    eprintln!("benchmark: {:?} mode, cameras {:?}, clip {}", opts.mode, opts.cameras, opts.clip.display());
    let reports = facestream::bench::run(cfg, &opts, |r| {
        eprintln!(
            "  {} camera(s){}: {:.1} frames/s, {:.2}% dropped, p99 capture-to-event {:.0} ms, CPU {:.0}%",
            r.cameras,
            if r.ui_client { " with the live page open" } else { "" },
            r.frames_per_s,
            r.drop_pct,
            r.capture_to_event.p99_ms,
            r.cpu_pct
        )
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

/// Reliability harness: the real application with looping file cameras, one RTSP camera whose
/// server restarts on a schedule, API load and event-stream clients that never read; samples RSS,
/// threads, descriptors, frames, drops, reconnects and /healthz latency into a CSV and a PNG.
#[derive(Args)]
pub struct SoakArgs {
    /// File cameras besides the RTSP one.
    #[arg(long, default_value_t = 3)]
    pub cameras: usize,
    #[arg(long, default_value = "tests/fixtures/video_01.mp4")]
    pub clip: PathBuf,
    /// Seconds to run.
    #[arg(long, default_value_t = 600.0)]
    pub duration: f64,
    /// Seconds between restarts of the RTSP server.
    #[arg(long, default_value_t = 20.0)]
    pub restart_every: f64,
    /// API requests per second (mostly reads, one recognize in ten).
    #[arg(long, default_value_t = 20.0)]
    pub api_rps: f64,
    /// Event-stream clients that never read.
    #[arg(long, default_value_t = 10)]
    pub sse_clients: usize,
    /// Seconds between samples.
    #[arg(long, default_value_t = 2.0)]
    pub sample_every: f64,
    /// Folder for soak.csv, soak.png and the run's gallery store.
    #[arg(long, default_value = "target/soak")]
    pub out: PathBuf,
}

pub fn cmd_soak(cfg: &Config, a: SoakArgs) -> Result<ExitCode> {
    let opts = facestream::soak::SoakOptions {
        file_cameras: a.cameras,
        clip: a.clip,
        duration: a.duration,
        restart_every: a.restart_every,
        api_rps: a.api_rps,
        sse_clients: a.sse_clients,
        sample_every: a.sample_every,
        out_dir: a.out,
    };
    eprintln!("soak: {} file camera(s) + 1 RTSP camera restarted every {} s, {} API req/s, {} silent SSE clients, {} s", opts.file_cameras, opts.restart_every, opts.api_rps, opts.sse_clients, opts.duration);
    let summary = facestream::soak::run(cfg, &opts, |s| {
        eprintln!("  t={:>6.0}s RSS {:>6.1} MB threads {:>3} fds {:>4} frames {:>7} drops {:>6} reconnects {:>3} /healthz {:.1} ms", s.t_s, s.rss_mb, s.threads, s.fds, s.frames, s.drops, s.reconnects, s.healthz_ms)
    })?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(ExitCode::SUCCESS)
}
