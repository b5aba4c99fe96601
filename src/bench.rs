//! The end-to-end harness behind `facestream bench`: plays N cameras from a clip through the real
//! pipeline, either paced in real time (capacity mode: does the machine keep up?) or as fast as
//! possible (throughput mode), and reports frames/s, faces/s, drops by reason, latency percentiles
//! from capture to detection, to embedding and to the identity event, batch sizes, CPU and peak RSS.
//!
//! Figures come from the pipeline's own Prometheus metrics (deltas between two snapshots), so the
//! harness measures exactly what an operator's dashboard shows.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::{Arc, RwLock};

use serde::Serialize;

use crate::config::Config;
use crate::gallery::Gallery;
use crate::ingest::CameraConfig;
use crate::photo::{Analyzer, enroll_photos};
use crate::telemetry::{self, metrics};
use crate::app::{App, AppOptions};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Capacity,
    Throughput,
}

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub mode: Mode,
    pub cameras: Vec<usize>,
    pub clip: PathBuf,
    /// Capacity mode: seconds measured per camera count (after `warmup`).
    pub duration: f64,
    pub warmup: f64,
    /// Capacity mode: frames per second each camera delivers for processing.
    pub fps: f32,
    /// Throughput mode: times each camera plays the clip.
    pub loops: u32,
    /// Capacity mode: camera starts are spread evenly over this many seconds, so that looped clips
    /// do not all restart (and start new tracks) at the same moment, as independent cameras would not.
    pub stagger: f64,
    /// Capacity mode: run each camera count twice, without and then with a headless Chromium
    /// showing the web UI's live page (what the live view costs).
    pub ui_client: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub samples: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub mode: Mode,
    pub cameras: usize,
    pub wall_s: f64,
    pub frames_received: u64,
    pub frames_processed: u64,
    pub frames_per_s: f64,
    pub frames_per_s_per_camera: f64,
    /// Processed frames/s of the least and the most served camera: how evenly load was shed.
    pub slowest_camera_fps: f64,
    pub fastest_camera_fps: f64,
    pub faces_detected: u64,
    pub faces_per_s: f64,
    pub embeddings: u64,
    pub dropped_queue_full: u64,
    /// Frames a camera shed before conversion because the detectors were behind on it.
    pub dropped_shed: u64,
    pub dropped_embed_requests: u64,
    /// Frames dropped or shed because the pipeline was behind / frames the cameras offered, in percent.
    pub drop_pct: f64,
    pub capture_to_detect: Percentiles,
    pub capture_to_embed: Percentiles,
    pub capture_to_event: Percentiles,
    /// Time inside the detector per processed frame, and inside the embedding session per face
    /// (batching included): the pipeline's stage costs, next to the criterion figures.
    pub detect_ms_per_frame: f64,
    pub embed_ms_per_face: f64,
    /// The same in CPU time of the stage's thread (what the work costs, without waiting for a core).
    pub detect_cpu_ms_per_frame: f64,
    pub embed_cpu_ms_per_face: f64,
    /// Frames through the full detection cascade, and frames only refined (`detect.full_every`).
    pub detect_full: u64,
    pub detect_refine: u64,
    pub batch_mean: f64,
    pub batches: u64,
    pub identifications_known: u64,
    pub identifications_unknown: u64,
    /// CPU time over wall time, in percent of one core (200% = both vCPUs busy).
    pub cpu_pct: f64,
    pub peak_rss_mb: f64,
    /// Capacity mode: under 1% drops and p99 capture-to-embedding under 250 ms.
    pub holds: bool,
    /// Process CPU milliseconds per processed frame (comparable across runs that processed
    /// different numbers of frames).
    pub cpu_ms_per_frame: f64,
    /// A headless Chromium showed the live page during the run; its own CPU (all its
    /// processes), and the live-view JPEGs facestream encoded for it.
    pub ui_client: bool,
    pub client_cpu_pct: f64,
    pub live_jpegs: u64,
    /// CPU of facestream's HTTP threads (where the live view's JPEGs are encoded and its stream
    /// is served), in percent of one core.
    pub http_cpu_pct: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    App(#[from] crate::app::AppError),
    #[error(transparent)]
    Photo(#[from] crate::photo::PhotoError),
    #[error(transparent)]
    Enroll(#[from] crate::photo::EnrollError),
    #[error(transparent)]
    Gallery(#[from] crate::gallery::GalleryError),
    #[error("{0}")]
    Config(String),
}

/// A counter: name, labels, value.
type CounterSample = (String, Vec<(String, String)>, f64);
/// A histogram: name, cumulative buckets (upper bound, count), sum, count.
type HistSample = (String, Vec<(f64, u64)>, f64, u64);

/// Sums of counters and merged histogram buckets, read from the registry.
#[derive(Clone, Debug, Default)]
struct Snapshot {
    counters: Vec<CounterSample>,
    hists: Vec<HistSample>,
}

fn snapshot() -> Snapshot {
    let mut s = Snapshot::default();
    for fam in metrics().registry.gather() {
        let name = fam.name().to_string();
        let kind = fam.get_field_type();
        for m in fam.get_metric() {
            let labels: Vec<(String, String)> = m.get_label().iter().map(|l| (l.name().to_string(), l.value().to_string())).collect();
            if kind == prometheus::proto::MetricType::COUNTER {
                s.counters.push((name.clone(), labels.clone(), m.get_counter().get_value()));
            }
            if kind == prometheus::proto::MetricType::HISTOGRAM {
                let h = m.get_histogram();
                let buckets: Vec<(f64, u64)> = h.get_bucket().iter().map(|b| (b.upper_bound(), b.cumulative_count())).collect();
                // Per-stage histograms are also kept apart, as `name:stage`.
                if let Some((_, stage)) = labels.iter().find(|(k, _)| k == "stage") {
                    s.hists.push((format!("{name}:{stage}"), buckets.clone(), h.get_sample_sum(), h.get_sample_count()));
                }
                s.hists.push((name.clone(), buckets, h.get_sample_sum(), h.get_sample_count()));
            }
        }
    }
    s
}

impl Snapshot {
    fn counter(&self, name: &str, label: Option<(&str, &str)>) -> f64 {
        self.counters
            .iter()
            .filter(|(n, labels, _)| n == name && label.is_none_or(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v)))
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Buckets merged over every label set: (upper bound, cumulative count), sum, count.
    fn hist(&self, name: &str) -> (Vec<(f64, u64)>, f64, u64) {
        let mut merged: Vec<(f64, u64)> = Vec::new();
        let (mut sum, mut count) = (0.0, 0);
        for (n, buckets, s, c) in &self.hists {
            if n != name {
                continue;
            }
            if merged.is_empty() {
                merged = buckets.clone();
            } else {
                for (m, b) in merged.iter_mut().zip(buckets) {
                    m.1 += b.1;
                }
            }
            sum += s;
            count += c;
        }
        (merged, sum, count)
    }
}

fn delta_hist(before: &Snapshot, after: &Snapshot, name: &str) -> (Vec<(f64, u64)>, f64, u64) {
    let (b, bs, bc) = before.hist(name);
    let (a, as_, ac) = after.hist(name);
    let buckets = a.iter().enumerate().map(|(i, (ub, c))| (*ub, c - b.get(i).map(|x| x.1).unwrap_or(0))).collect();
    (buckets, as_ - bs, ac - bc)
}

/// Quantile by linear interpolation inside the bucket (as Prometheus' histogram_quantile).
fn quantile(buckets: &[(f64, u64)], count: u64, q: f64) -> f64 {
    if count == 0 {
        return 0.0;
    }
    let rank = q * count as f64;
    let mut prev_ub = 0.0;
    let mut prev_c = 0u64;
    for &(ub, c) in buckets {
        if c as f64 >= rank {
            let in_bucket = (c - prev_c) as f64;
            let frac = if in_bucket > 0.0 { (rank - prev_c as f64) / in_bucket } else { 0.0 };
            return prev_ub + (ub - prev_ub) * frac;
        }
        prev_ub = ub;
        prev_c = c;
    }
    // Past the last finite bucket: report its bound (a lower bound of the truth).
    prev_ub
}

fn percentiles(before: &Snapshot, after: &Snapshot, name: &str) -> Percentiles {
    let (b, _, c) = delta_hist(before, after, name);
    Percentiles {
        samples: c,
        p50_ms: quantile(&b, c, 0.50) * 1e3,
        p95_ms: quantile(&b, c, 0.95) * 1e3,
        p99_ms: quantile(&b, c, 0.99) * 1e3,
    }
}

/// One `/proc/.../stat` file: (command name, parent pid, CPU seconds user + system).
fn proc_stat(path: &Path) -> Option<(String, u32, f64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let f: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // Fields after the command name start at field 3 (state): ppid is 4, utime 14, stime 15.
    let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((stat.get(open + 1..close)?.to_string(), num(4) as u32, (num(14) + num(15)) / hz.max(1.0)))
}

/// CPU seconds used by this process so far (user + system).
fn cpu_seconds() -> f64 {
    proc_stat(Path::new("/proc/self/stat")).map_or(0.0, |s| s.2)
}

use crate::telemetry::proc_status_mb;

fn peak_rss_mb() -> f64 {
    proc_status_mb("VmHWM:")
}

fn reset_peak_rss() {
    // Linux: writing 5 resets the peak resident set size of the process.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The config of one run: `n` cameras playing the clip, outputs off, HTTP on with `--ui-client`.
fn bench_config(base: &Config, opts: &BenchOptions, n: usize) -> Config {
    let mut cfg = base.clone();
    // The HTTP server runs in both runs of a pair; only the browser differs.
    cfg.http.enabled = opts.ui_client;
    cfg.http.bind = "127.0.0.1:0".into();
    cfg.http.token = None;
    cfg.http.ui = true;
    cfg.events.stdout = false;
    cfg.events.file = None;
    cfg.events.webhook = None;
    cfg.events.mqtt = None;
    cfg.cameras = (1..=n)
        .map(|i| {
            let delay = if opts.mode == Mode::Capacity { opts.stagger.max(0.0) * (i - 1) as f64 / n as f64 } else { 0.0 };
            let mut c: CameraConfig = toml::from_str(&format!("id = \"bench{i}\"\nurl = \"{}\"\n", opts.clip.display())).expect("camera");
            match opts.mode {
                Mode::Capacity => {
                    c.realtime = true;
                    c.loop_file = true;
                    c.max_fps = opts.fps;
                }
                Mode::Throughput => {
                    c.realtime = false;
                    c.loop_file = false;
                    c.max_fps = 0.0;
                }
            }
            c.start_delay = Duration::from_secs_f64(delay);
            c
        })
        .collect();
    cfg
}

/// Runs every requested camera count; `base` supplies the models, gallery and stage settings.
pub fn run(base: &Config, opts: &BenchOptions, mut progress: impl FnMut(&RunReport)) -> Result<Vec<RunReport>, BenchError> {
    if !opts.clip.is_file() {
        return Err(BenchError::Config(format!("clip {} does not exist", opts.clip.display())));
    }
    // The config's people only (never the user's store), shared by every run.
    let mut gallery = Gallery::new();
    enroll_photos(&mut Analyzer::new(base)?, &base.gallery.photos(&base.base_dir)?, &mut gallery)?;
    let gallery = Arc::new(RwLock::new(gallery));
    let mut reports = Vec::new();
    let clients: &[bool] = if opts.ui_client && opts.mode == Mode::Capacity { &[false, true] } else { &[false] };
    for (&n, &with_client) in opts.cameras.iter().flat_map(|n| clients.iter().map(move |c| (n, c))) {
        let cfg = bench_config(base, opts, n);
        let loops = if opts.mode == Mode::Throughput { opts.loops.max(1) } else { 1 };
        let mut before = None;
        let mut cpu0 = 0.0;
        let mut t0 = Instant::now();
        let mut client: Option<UiClient> = None;
        let (mut client_cpu0, mut http_cpu0) = (0.0, 0.0);
        for round in 0..loops {
            let app = App::start_on(&cfg, gallery.clone(), None, AppOptions { http: cfg.http.enabled, ..AppOptions::default() })?;
            let running = &app.running;
            if with_client && let Some(server) = &app.server {
                client = Some(UiClient::open(&format!("http://{}/ui/", server.addr))?);
            }
            if round == 0 {
                if opts.mode == Mode::Capacity {
                    std::thread::sleep(Duration::from_secs_f64(opts.warmup + opts.stagger.max(0.0)));
                }
                reset_peak_rss();
                before = Some(snapshot());
                cpu0 = cpu_seconds();
                client_cpu0 = client.as_ref().map_or(0.0, UiClient::cpu_seconds);
                http_cpu0 = threads_cpu_seconds("http");
                t0 = Instant::now();
            }
            match opts.mode {
                Mode::Capacity => {
                    std::thread::sleep(Duration::from_secs_f64(opts.duration));
                }
                Mode::Throughput => {
                    while !running.is_finished() {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
            if opts.mode == Mode::Capacity {
                let after = snapshot();
                let wall = t0.elapsed().as_secs_f64();
                let cpu = cpu_seconds() - cpu0;
                let client_cpu = client.as_ref().map_or(0.0, UiClient::cpu_seconds) - client_cpu0;
                let http_cpu = threads_cpu_seconds("http") - http_cpu0;
                if let Some(c) = client.take() {
                    c.close();
                }
                running.stop();
                let Some(b) = before.as_ref() else { return Err(BenchError::Config("no snapshot before the run".into())) };
                let mut r = report(opts.mode, n, b, &after, wall, cpu);
                r.ui_client = with_client;
                r.client_cpu_pct = client_cpu.max(0.0) * 100.0 / wall;
                r.http_cpu_pct = http_cpu.max(0.0) * 100.0 / wall;
                reports.push(r);
            }
            app.finish();
        }
        if opts.mode == Mode::Throughput {
            let after = snapshot();
            let wall = t0.elapsed().as_secs_f64();
            let Some(b) = before.as_ref() else { return Err(BenchError::Config("no snapshot before the run".into())) };
            reports.push(report(opts.mode, n, b, &after, wall, cpu_seconds() - cpu0));
        }
        if let Some(r) = reports.last() {
            progress(r);
        }
    }
    Ok(reports)
}

/// How much a counter (summed over the label sets that match `label`) grew from `b` to `a`.
fn grew(b: &Snapshot, a: &Snapshot, name: &str, label: Option<(&str, &str)>) -> f64 {
    (a.counter(name, label) - b.counter(name, label)).max(0.0)
}

/// Processed frames/s of the least and of the most served of the run's cameras (`bench1` ..
/// `benchN`; a camera that processed nothing counts, with 0).
fn camera_spread(b: &Snapshot, a: &Snapshot, n: usize, wall: f64) -> (f64, f64) {
    let rates: Vec<f64> = (1..=n)
        .map(|i| {
            let id = format!("bench{i}");
            grew(b, a, telemetry::FRAMES_PROCESSED, Some(("camera", id.as_str()))) / wall
        })
        .collect();
    let min = rates.iter().copied().reduce(f64::min).unwrap_or(0.0);
    let max = rates.iter().copied().reduce(f64::max).unwrap_or(0.0);
    (min, max)
}

fn report(mode: Mode, n: usize, b: &Snapshot, a: &Snapshot, wall: f64, cpu: f64) -> RunReport {
    let d = |name: &str, label: Option<(&str, &str)>| grew(b, a, name, label) as u64;
    let received = d(telemetry::FRAMES_RECEIVED, None);
    let processed = d(telemetry::FRAMES_PROCESSED, None);
    let queue_full = d(telemetry::FRAMES_DROPPED, Some(("reason", "queue_full")));
    let faces = d(telemetry::FACES_DETECTED, None);
    let (_, bsum, bcount) = delta_hist(b, a, telemetry::BATCH_SIZE);
    let capture_to_embed = percentiles(b, a, telemetry::CAPTURE_TO_EMBED_SECONDS);
    let capture_to_event = percentiles(b, a, telemetry::CAPTURE_TO_EVENT_SECONDS);
    let stage_sum = |stage: &str| delta_hist(b, a, &format!("{}:{stage}", telemetry::STAGE_SECONDS)).1;
    let embeddings = d(telemetry::EMBEDDINGS, None);
    let stage_cpu = |stage: &str| grew(b, a, telemetry::STAGE_CPU_SECONDS, Some(("stage", stage)));
    // Frames shed before conversion (the camera paced itself down) count as drops too: both are
    // frames a camera at its cap would have had processed.
    let shed = d(telemetry::FRAMES_DROPPED, Some(("reason", "shed")));
    let drop_pct = if received + shed > 0 { (queue_full + shed) as f64 * 100.0 / (received + shed) as f64 } else { 0.0 };
    let (slowest_camera_fps, fastest_camera_fps) = camera_spread(b, a, n, wall);
    RunReport {
        mode,
        cameras: n,
        wall_s: wall,
        frames_received: received,
        frames_processed: processed,
        frames_per_s: processed as f64 / wall,
        frames_per_s_per_camera: processed as f64 / wall / n as f64,
        slowest_camera_fps,
        fastest_camera_fps,
        faces_detected: faces,
        faces_per_s: faces as f64 / wall,
        embeddings,
        detect_ms_per_frame: if processed > 0 { stage_sum("detect") * 1e3 / processed as f64 } else { 0.0 },
        embed_ms_per_face: if embeddings > 0 { stage_sum("embed") * 1e3 / embeddings as f64 } else { 0.0 },
        detect_cpu_ms_per_frame: if processed > 0 { stage_cpu("detect") * 1e3 / processed as f64 } else { 0.0 },
        embed_cpu_ms_per_face: if embeddings > 0 { stage_cpu("embed") * 1e3 / embeddings as f64 } else { 0.0 },
        dropped_queue_full: queue_full,
        dropped_shed: shed,
        dropped_embed_requests: d(telemetry::EMBED_REQUESTS_DROPPED, None),
        drop_pct,
        capture_to_detect: percentiles(b, a, telemetry::CAPTURE_TO_DETECT_SECONDS),
        holds: drop_pct < 1.0 && capture_to_event.p99_ms < 250.0,
        capture_to_embed,
        capture_to_event,
        detect_full: d(telemetry::DETECT_FRAMES, Some(("mode", "full"))),
        detect_refine: d(telemetry::DETECT_FRAMES, Some(("mode", "refine"))),
        batch_mean: if bcount > 0 { bsum / bcount as f64 } else { 0.0 },
        batches: bcount,
        identifications_known: d(telemetry::IDENTIFICATIONS, Some(("outcome", "known"))),
        identifications_unknown: d(telemetry::IDENTIFICATIONS, Some(("outcome", "unknown"))),
        cpu_pct: cpu * 100.0 / wall,
        peak_rss_mb: peak_rss_mb(),
        cpu_ms_per_frame: if processed > 0 { cpu * 1e3 / processed as f64 } else { 0.0 },
        ui_client: false,
        client_cpu_pct: 0.0,
        live_jpegs: d(telemetry::LIVE_JPEGS, None),
        http_cpu_pct: 0.0,
    }
}

/// CPU seconds of this process's threads whose name starts with `prefix` (threads that ended
/// are not counted: the HTTP runtime's threads live as long as the server).
fn threads_cpu_seconds(prefix: &str) -> f64 {
    std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| proc_stat(&e.path().join("stat")))
        .filter(|(name, _, _)| name.starts_with(prefix))
        .map(|s| s.2)
        .sum()
}

/// A headless Chromium showing a page (the web UI's live view) until closed.
struct UiClient {
    child: std::process::Child,
    profile: PathBuf,
}

impl UiClient {
    fn open(url: &str) -> Result<Self, BenchError> {
        let program = ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .flat_map(|p| ["/usr/bin", "/usr/local/bin"].map(|d| Path::new(d).join(p)))
            .find(|p| p.is_file())
            .ok_or_else(|| BenchError::Config("--ui-client needs Chromium: install the Debian package `chromium` (make test-deps does)".into()))?;
        let profile = std::env::temp_dir().join(format!("facestream-bench-chromium-{}", std::process::id()));
        let child = std::process::Command::new(&program)
            .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions", "--disable-background-networking", "--window-size=1280,900", "--remote-debugging-port=0"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| BenchError::Config(format!("cannot start {}: {e}", program.display())))?;
        tracing::info!(%url, "headless Chromium showing the live page");
        Ok(Self { child, profile })
    }

    /// CPU seconds of the browser and all its processes so far.
    fn cpu_seconds(&self) -> f64 {
        let mut procs: Vec<(u32, u32, f64)> = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            if let Some((_, ppid, cpu)) = proc_stat(&entry.path().join("stat")) {
                procs.push((pid, ppid, cpu));
            }
        }
        let mut tree = vec![self.child.id()];
        let mut i = 0;
        while i < tree.len() {
            let parent = tree[i];
            tree.extend(procs.iter().filter(|p| p.1 == parent).map(|p| p.0));
            i += 1;
        }
        procs.iter().filter(|p| tree.contains(&p.0)).map(|p| p.2).sum()
    }

    fn close(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// The terminal table.
pub fn table(reports: &[RunReport]) -> String {
    let mut s = String::from(
        "mode        cams  frames/s  per-cam  cam min/max  faces/s  drop%   det p50/p99 ms   emb p50/p99 ms   event p50/p99 ms  batch  CPU%  CPU ms/frame  RSS MB  holds\n",
    );
    for r in reports {
        s.push_str(&format!(
            "{:<11} {:>4}  {:>8.1}  {:>7.1}  {:>5.1}/{:<5.1}  {:>7.1}  {:>5.2}  {:>6.1}/{:<7.1}  {:>6.1}/{:<7.1}  {:>7.1}/{:<7.1}  {:>5.2}  {:>5.0}  {:>12.2}  {:>6.0}  {}\n",
            if r.ui_client { "capacity+ui".to_string() } else { format!("{:?}", r.mode).to_lowercase() },
            r.cameras,
            r.frames_per_s,
            r.frames_per_s_per_camera,
            r.slowest_camera_fps,
            r.fastest_camera_fps,
            r.faces_per_s,
            r.drop_pct,
            r.capture_to_detect.p50_ms,
            r.capture_to_detect.p99_ms,
            r.capture_to_embed.p50_ms,
            r.capture_to_embed.p99_ms,
            r.capture_to_event.p50_ms,
            r.capture_to_event.p99_ms,
            r.batch_mean,
            r.cpu_pct,
            r.cpu_ms_per_frame,
            r.peak_rss_mb,
            if r.mode == Mode::Capacity { if r.holds { "yes" } else { "no" } } else { "-" },
        ));
    }
    // Each camera count with and without the browser: what the live view added.
    for pair in reports.windows(2) {
        let (off, on) = (&pair[0], &pair[1]);
        if !off.ui_client && on.ui_client && off.cameras == on.cameras && off.cpu_ms_per_frame > 0.0 {
            s.push_str(&format!(
                "live view, {} camera(s): facestream CPU {:.0}% -> {:.0}% ({:+.1}% per processed frame); its HTTP threads (JPEGs, stream) {:.1}% of a core without and {:.1}% with the page = {:.1}% of facestream's CPU; {} JPEGs encoded; the browser itself used {:.0}% CPU\n",
                on.cameras,
                off.cpu_pct,
                on.cpu_pct,
                (on.cpu_ms_per_frame / off.cpu_ms_per_frame - 1.0) * 100.0,
                off.http_cpu_pct,
                on.http_cpu_pct,
                (on.http_cpu_pct - off.http_cpu_pct) * 100.0 / on.cpu_pct.max(1e-9),
                on.live_jpegs,
                on.client_cpu_pct
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_reads_this_process() {
        let (name, ppid, cpu) = proc_stat(Path::new("/proc/self/stat")).expect("/proc/self/stat");
        assert!(!name.is_empty() && ppid > 0 && cpu >= 0.0, "{name} {ppid} {cpu}");
        assert!(threads_cpu_seconds("") >= 0.0);
    }

    #[test]
    fn quantile_interpolates_inside_buckets() {
        // 10 samples: 5 in (0, 0.01], 5 in (0.01, 0.02].
        let b = vec![(0.01, 5), (0.02, 10), (f64::INFINITY, 10)];
        assert!((quantile(&b, 10, 0.5) - 0.01).abs() < 1e-12);
        assert!((quantile(&b, 10, 0.75) - 0.015).abs() < 1e-12);
        assert_eq!(quantile(&b, 0, 0.5), 0.0);
    }

    #[test]
    fn camera_spread_counts_only_this_runs_cameras_and_a_starved_one() {
        let sample = |cam: &str, v: f64| (telemetry::FRAMES_PROCESSED.to_string(), vec![("camera".to_string(), cam.to_string())], v);
        let before = Snapshot { counters: vec![sample("bench1", 100.0), sample("bench2", 50.0), sample("bench3", 7.0), sample("other", 0.0)], hists: Vec::new() };
        // bench3 processed nothing in the window; `other` (an earlier run's camera) is not counted.
        let after = Snapshot { counters: vec![sample("bench1", 140.0), sample("bench2", 70.0), sample("bench3", 7.0), sample("other", 999.0)], hists: Vec::new() };
        assert_eq!(camera_spread(&before, &after, 3, 4.0), (0.0, 10.0));
        assert_eq!(camera_spread(&before, &after, 2, 4.0), (5.0, 10.0));
        // A camera that appeared only after the first snapshot counts from zero.
        assert_eq!(camera_spread(&Snapshot::default(), &after, 1, 10.0), (14.0, 14.0));
    }

    #[test]
    fn process_figures_are_readable() {
        assert!(cpu_seconds() >= 0.0);
        assert!(peak_rss_mb() > 0.0);
    }
}

/// Decision latency at an access-control gate: the gate camera plays `clip` in a loop in real
/// time (each pass is a new track: one passage), `monitors` monitoring cameras play `monitor_clip`
/// at 10 fps beside it; every gate decision's latency (first frame in which the face counted to
/// the decision) is collected, and grants to anyone but `expected` are counted as wrong.
#[derive(Clone, Debug, Serialize)]
pub struct GateReport {
    pub monitors: usize,
    pub seconds: f64,
    pub decisions: usize,
    pub granted: usize,
    pub wrong_grants: usize,
    pub denied: usize,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    /// Monitoring cameras' frames dropped (the door must not be the one that loses).
    pub monitor_drop_pct: f64,
    pub gate_drop_pct: f64,
}

pub struct GateBenchOptions {
    pub clip: PathBuf,
    pub expected: String,
    pub monitor_clip: PathBuf,
    pub monitors: Vec<usize>,
    pub duration: f64,
    pub gate_fps: f32,
}

fn sorted_quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

pub fn gate_latency(base: &Config, opts: &GateBenchOptions, mut progress: impl FnMut(&GateReport)) -> Result<Vec<GateReport>, BenchError> {
    for c in [&opts.clip, &opts.monitor_clip] {
        if !c.is_file() {
            return Err(BenchError::Config(format!("clip {} does not exist", c.display())));
        }
    }
    let mut gallery = Gallery::new();
    enroll_photos(&mut Analyzer::new(base)?, &base.gallery.photos(&base.base_dir)?, &mut gallery)?;
    if gallery.person_id(&opts.expected).is_none() {
        return Err(BenchError::Config(format!("`{}` is not in the config's gallery, so the gate cannot grant it", opts.expected)));
    }
    let gallery = Arc::new(RwLock::new(gallery));
    let dir = std::env::temp_dir().join(format!("facestream-gate-bench-{}", std::process::id()));
    let mut reports = Vec::new();
    for &n in &opts.monitors {
        let mut cfg = base.clone();
        cfg.events.stdout = false;
        cfg.events.file = None;
        cfg.events.webhook = None;
        cfg.events.mqtt = None;
        cfg.gallery.store = Some(dir.join(format!("gallery-{n}.db")));
        let camera = |id: String, url: &std::path::Path, fps: f32, delay: f64| {
            let mut c: CameraConfig = toml::from_str(&format!("id = \"{id}\"\nurl = \"{}\"\n", url.display())).expect("camera");
            (c.realtime, c.loop_file, c.max_fps, c.start_delay) = (true, true, fps, Duration::from_secs_f64(delay));
            c
        };
        cfg.cameras = vec![camera("door".into(), &opts.clip, opts.gate_fps, 0.0)];
        cfg.cameras.extend((1..=n).map(|i| camera(format!("monitor{i}"), &opts.monitor_clip, 10.0, 3.0 * i as f64 / n.max(1) as f64)));
        cfg.gates = vec![toml::from_str(&format!("id = \"bench\"\ncamera = \"door\"\nallow_persons = [\"{}\"]\ncooldown_s = 0.0\n", opts.expected)).expect("gate")];
        let (tx, rx) = crossbeam_channel::bounded(100_000);
        let sink = crate::events::ChannelSink { name: "bench", tx };
        let before = snapshot();
        let app = App::start_on(&cfg, gallery.clone(), None, AppOptions { http: false, extra_sinks: vec![Box::new(sink)], apps: Vec::new(), ..AppOptions::default() })?;
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(opts.duration));
        let seconds = t0.elapsed().as_secs_f64();
        app.running.stop();
        let after = snapshot();
        app.finish();
        let mut lat = Vec::new();
        let (mut granted, mut wrong, mut denied) = (0, 0, 0);
        for e in rx.try_iter() {
            if let crate::events::EventBody::GateDecision { outcome, person, latency_s, .. } = &e.body {
                lat.push(latency_s * 1000.0);
                if outcome == "granted" {
                    granted += 1;
                    if person.as_deref() != Some(opts.expected.as_str()) {
                        wrong += 1;
                    }
                } else {
                    denied += 1;
                }
            }
        }
        lat.sort_by(|a, b| a.total_cmp(b));
        // Frames lost because the pipeline was behind (not those the fps cap skips by design).
        let queue_full = |s: &Snapshot, cam: &str| {
            s.counters
                .iter()
                .filter(|(n, l, _)| n == telemetry::FRAMES_DROPPED && l.iter().any(|(k, v)| k == "camera" && v == cam) && l.iter().any(|(k, v)| k == "reason" && v == "queue_full"))
                .map(|(_, _, v)| v)
                .sum::<f64>()
        };
        let drop_pct = |cams: &[&str]| {
            let sum = |s: &Snapshot, name: &str| cams.iter().map(|c| s.counter(name, Some(("camera", c)))).sum::<f64>();
            let recv = sum(&after, telemetry::FRAMES_RECEIVED) - sum(&before, telemetry::FRAMES_RECEIVED);
            let dropped: f64 = cams.iter().map(|c| queue_full(&after, c) - queue_full(&before, c)).sum();
            if recv > 0.0 { 100.0 * dropped / recv } else { 0.0 }
        };
        let monitors: Vec<String> = (1..=n).map(|i| format!("monitor{i}")).collect();
        let monitor_refs: Vec<&str> = monitors.iter().map(String::as_str).collect();
        let r = GateReport {
            monitors: n,
            seconds,
            decisions: lat.len(),
            granted,
            wrong_grants: wrong,
            denied,
            latency_p50_ms: sorted_quantile(&lat, 0.5),
            latency_p99_ms: sorted_quantile(&lat, 0.99),
            latency_max_ms: lat.last().copied().unwrap_or(0.0),
            monitor_drop_pct: drop_pct(&monitor_refs),
            gate_drop_pct: drop_pct(&["door"]),
        };
        progress(&r);
        reports.push(r);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(reports)
}

pub fn gate_table(reports: &[GateReport]) -> String {
    let mut s = String::from("monitors  seconds  decisions  granted  wrong  denied  latency p50/p99/max ms   door drop%  monitors drop%\n");
    for r in reports {
        s += &format!(
            "{:>8}  {:>7.0}  {:>9}  {:>7}  {:>5}  {:>6}  {:>7.0} / {:>4.0} / {:>4.0}   {:>10.2}  {:>14.2}\n",
            r.monitors, r.seconds, r.decisions, r.granted, r.wrong_grants, r.denied, r.latency_p50_ms, r.latency_p99_ms, r.latency_max_ms, r.gate_drop_pct, r.monitor_drop_pct
        );
    }
    s
}
