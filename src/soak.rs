//! The reliability harness behind `facestream soak`: the real application with N looping file
//! cameras and one RTSP camera whose server is stopped and restarted on a schedule, API load,
//! and event-stream clients that never read, for a set duration. Every few seconds it samples RSS,
//! threads, open descriptors, frames, drops, reconnects and the `/healthz` latency into a CSV
//! (flushed per row, so a crash keeps what was measured) and draws them as a PNG at the end.

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::app::{self, App, AppOptions};
use crate::config::Config;
use crate::ingest::CameraConfig;
use crate::ingest::rtsp_server::RtspServer;
use crate::telemetry::{self, metrics};

#[derive(Clone, Debug)]
pub struct SoakOptions {
    pub file_cameras: usize,
    pub clip: PathBuf,
    pub duration: f64,
    /// Seconds between restarts of the RTSP camera's server (down for 2 s each time).
    pub restart_every: f64,
    pub api_rps: f64,
    pub sse_clients: usize,
    pub sample_every: f64,
    /// CSV, PNG and the gallery store go here.
    pub out_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SoakError {
    #[error(transparent)]
    App(#[from] crate::app::AppError),
    #[error(transparent)]
    Ingest(#[from] crate::ingest::IngestError),
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{0}")]
    Setup(String),
}

/// One sample.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub rss_mb: f64,
    pub threads: u64,
    pub fds: u64,
    pub frames: f64,
    pub drops: f64,
    pub reconnects: f64,
    pub healthz_ms: f64,
}

/// What the run showed.
#[derive(Clone, Debug, Serialize)]
pub struct SoakSummary {
    pub samples: usize,
    pub rss_start_mb: f64,
    pub rss_end_mb: f64,
    pub rss_max_mb: f64,
    /// RSS growth over the second half of the run, in percent of its value at the half.
    pub rss_growth_last_half_pct: f64,
    pub fds_start: u64,
    pub fds_end: u64,
    pub fds_max: u64,
    pub threads_start: u64,
    pub threads_end: u64,
    pub threads_max: u64,
    pub reconnects: f64,
    pub frames: f64,
    pub drops: f64,
    pub healthz_p99_ms: f64,
    pub healthz_max_ms: f64,
    pub csv: PathBuf,
    pub png: PathBuf,
}

fn proc_field(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0)
}

/// A counter summed over its series, optionally only those with `label` = value.
fn counter_sum(name: &str, label: Option<(&str, &str)>) -> f64 {
    metrics()
        .registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| label.is_none_or(|(k, v)| m.get_label().iter().any(|l| l.name() == k && l.value() == v)))
        .map(|m| m.get_counter().get_value())
        .sum()
}

fn healthz_ms(port: u16) -> f64 {
    let started = Instant::now();
    let ok = (|| -> std::io::Result<()> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut s, &mut out)?;
        if out.starts_with(b"HTTP/1.1 200") { Ok(()) } else { Err(std::io::Error::other("not 200")) }
    })();
    if ok.is_ok() { started.elapsed().as_secs_f64() * 1e3 } else { f64::NAN }
}

/// Runs the harness; `progress` gets each sample.
pub fn run(base: &Config, opts: &SoakOptions, mut progress: impl FnMut(&Sample)) -> Result<SoakSummary, SoakError> {
    let io = |path: &PathBuf| {
        let path = path.clone();
        move |error| SoakError::Io { path: path.clone(), error }
    };
    std::fs::create_dir_all(&opts.out_dir).map_err(io(&opts.out_dir))?;
    let server = RtspServer::start(&opts.clip, 0, "/cam")?;
    let rtsp_port = server.port;
    let mut cfg = base.clone();
    cfg.events.stdout = false;
    cfg.events.file = None;
    cfg.http.enabled = true;
    cfg.http.bind = "127.0.0.1:0".into();
    cfg.gallery.store = Some(opts.out_dir.join("soak-gallery.db"));
    let camera = |text: String| toml::from_str::<CameraConfig>(&text).map_err(|e| SoakError::Setup(e.to_string()));
    let mut cams = vec![camera(format!("id = \"rtsp\"\nurl = \"{}\"\nrtsp_transport = \"tcp\"\nlatency_ms = 0\nmax_fps = 10\n", server.url))?];
    for i in 0..opts.file_cameras {
        let mut c = camera(format!("id = \"file{i}\"\nurl = \"{}\"\nloop = true\nmax_fps = 10\n", opts.clip.display()))?;
        c.start_delay = Duration::from_secs_f64(3.0 * i as f64 / opts.file_cameras.max(1) as f64);
        cams.push(c);
    }
    cfg.cameras = cams;
    cfg.validate_for_run(std::path::Path::new("<soak>")).map_err(|e| SoakError::Setup(e.to_string()))?;
    let app = App::start(&cfg, app::load_gallery(&cfg)?, AppOptions { http: true, ..AppOptions::default() })?;
    let port = app.server.as_ref().map(|s| s.addr.port()).ok_or_else(|| SoakError::Setup("no HTTP server".into()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let helpers = [
        restarter(server, rtsp_port, opts.clone(), stop.clone()),
        api_load(port, opts.api_rps, base.base_dir.join("tests/fixtures/Paul.jpeg"), stop.clone()),
    ];
    // Event-stream clients that connect and never read a byte.
    let silent: Vec<TcpStream> = (0..opts.sse_clients)
        .filter_map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.write_all(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
            Some(s)
        })
        .collect();
    let csv_path = opts.out_dir.join("soak.csv");
    let mut csv = std::fs::File::create(&csv_path).map_err(io(&csv_path))?;
    writeln!(csv, "t_s,rss_mb,threads,fds,frames,drops,reconnects,healthz_ms").map_err(io(&csv_path))?;
    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    while started.elapsed().as_secs_f64() < opts.duration {
        std::thread::sleep(Duration::from_secs_f64(opts.sample_every));
        let s = Sample {
            t_s: started.elapsed().as_secs_f64(),
            rss_mb: telemetry::proc_status_mb("VmRSS:"),
            threads: proc_field("Threads:"),
            fds: fds(),
            frames: counter_sum(telemetry::FRAMES_PROCESSED, None),
            // Frames the pipeline could not take (not the ones the fps cap skips on purpose).
            drops: counter_sum(telemetry::FRAMES_DROPPED, Some(("reason", "queue_full"))),
            reconnects: counter_sum(telemetry::CAMERA_RECONNECTS, None),
            healthz_ms: healthz_ms(port),
        };
        writeln!(csv, "{:.1},{:.1},{},{},{},{},{},{:.2}", s.t_s, s.rss_mb, s.threads, s.fds, s.frames, s.drops, s.reconnects, s.healthz_ms).map_err(io(&csv_path))?;
        csv.flush().map_err(io(&csv_path))?;
        progress(&s);
        samples.push(s);
    }
    stop.store(true, Ordering::SeqCst);
    drop(silent);
    tracing::info!("soak: stopping the application");
    let now = AtomicBool::new(true);
    if !app.run_until(None, &now, Duration::from_secs(10)) {
        tracing::warn!("soak: the pipeline did not drain within 10 s");
    }
    app.finish();
    tracing::info!("soak: application stopped");
    // The helpers end by themselves; a helper stuck in a request does not hold the report back.
    let deadline = Instant::now() + Duration::from_secs(5);
    while helpers.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let png = opts.out_dir.join("soak.png");
    let summary = summarize(&samples, csv_path, png.clone());
    plot(&png, &samples).map_err(|e| SoakError::Setup(e.to_string()))?;
    Ok(summary)
}

fn restarter(server: RtspServer, port: u16, opts: SoakOptions, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut server = Some(server);
        let mut last = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed().as_secs_f64() < opts.restart_every {
                continue;
            }
            if let Some(s) = server.take() {
                s.stop();
            }
            std::thread::sleep(Duration::from_secs(2));
            match RtspServer::start(&opts.clip, port, "/cam") {
                Ok(s) => server = Some(s),
                Err(e) => tracing::warn!(error = %e, "soak: RTSP server did not restart; retrying"),
            }
            last = Instant::now();
        }
        if let Some(s) = server {
            s.stop();
        }
    })
}

fn api_load(port: u16, rps: f64, photo: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let image = std::fs::read(&photo).unwrap_or_default();
        let gap = Duration::from_secs_f64(1.0 / rps.max(0.1));
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let url = format!("http://127.0.0.1:{port}");
            // Mostly reads; one recognize in ten (the expensive endpoint, limited to 2 at once).
            let _ = if n.is_multiple_of(10) && !image.is_empty() { agent.post(&format!("{url}/api/recognize")).send(&image[..]) } else { agent.get(&format!("{url}/api/persons")).call() };
            n += 1;
            std::thread::sleep(gap);
        }
    })
}

fn summarize(s: &[Sample], csv: PathBuf, png: PathBuf) -> SoakSummary {
    let first = s.first().cloned();
    let last = s.last().cloned();
    let half = s.get(s.len() / 2).map_or(0.0, |x| x.rss_mb);
    let mut lat: Vec<f64> = s.iter().map(|x| x.healthz_ms).filter(|x| x.is_finite()).collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let p99 = lat.get(((lat.len() as f64 * 0.99).ceil() as usize).saturating_sub(1)).copied().unwrap_or(f64::NAN);
    let max_u = |f: fn(&Sample) -> u64| s.iter().map(f).max().unwrap_or(0);
    SoakSummary {
        samples: s.len(),
        rss_start_mb: first.as_ref().map_or(0.0, |x| x.rss_mb),
        rss_end_mb: last.as_ref().map_or(0.0, |x| x.rss_mb),
        rss_max_mb: s.iter().map(|x| x.rss_mb).fold(0.0, f64::max),
        rss_growth_last_half_pct: if half > 0.0 { (last.as_ref().map_or(half, |x| x.rss_mb) - half) / half * 100.0 } else { 0.0 },
        fds_start: first.as_ref().map_or(0, |x| x.fds),
        fds_end: last.as_ref().map_or(0, |x| x.fds),
        fds_max: max_u(|x| x.fds),
        threads_start: first.as_ref().map_or(0, |x| x.threads),
        threads_end: last.as_ref().map_or(0, |x| x.threads),
        threads_max: max_u(|x| x.threads),
        reconnects: last.as_ref().map_or(0.0, |x| x.reconnects),
        frames: last.as_ref().map_or(0.0, |x| x.frames),
        drops: last.as_ref().map_or(0.0, |x| x.drops),
        healthz_p99_ms: p99,
        healthz_max_ms: lat.last().copied().unwrap_or(f64::NAN),
        csv,
        png,
    }
}

fn plot(path: &std::path::Path, s: &[Sample]) -> Result<(), crate::eval::plot::PlotError> {
    let series = vec![
        ("RSS (MB / 10)".to_string(), s.iter().map(|x| (x.t_s, x.rss_mb / 10.0)).collect()),
        ("open descriptors".to_string(), s.iter().map(|x| (x.t_s, x.fds as f64)).collect()),
        ("threads".to_string(), s.iter().map(|x| (x.t_s, x.threads as f64)).collect()),
        ("/healthz ms".to_string(), s.iter().map(|x| (x.t_s, if x.healthz_ms.is_finite() { x.healthz_ms } else { 0.0 })).collect()),
    ];
    crate::eval::plot::lines(path, "facestream soak", "seconds", &series)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_reads_growth_extremes_and_p99() {
        let s: Vec<Sample> = (0..100)
            .map(|i| Sample { t_s: i as f64, rss_mb: if i < 50 { 400.0 } else { 400.0 + (i - 50) as f64 * 0.1 }, threads: 40, fds: 60 + (i % 3), frames: i as f64, drops: 0.0, reconnects: (i / 10) as f64, healthz_ms: if i == 7 { 90.0 } else { 1.0 } })
            .collect();
        let m = summarize(&s, "a.csv".into(), "a.png".into());
        assert_eq!((m.rss_start_mb, m.fds_max, m.threads_max, m.reconnects), (400.0, 62, 40, 9.0));
        assert!((m.rss_growth_last_half_pct - 4.9 / 400.0 * 100.0).abs() < 1e-6, "{}", m.rss_growth_last_half_pct);
        assert_eq!(m.healthz_p99_ms, 1.0, "one slow answer in 100 is beyond the 99th percentile");
        assert_eq!(m.healthz_max_ms, 90.0);
    }
}
