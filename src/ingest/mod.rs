//! Ingest: one GStreamer pipeline per camera, frames copied out of `appsink` with their real
//! stride into packed RGB, a per-camera fps cap, bus watching and reconnection with exponential
//! backoff and jitter. Each camera runs on its own thread; one camera's failure never touches another.

pub mod config;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use serde::Serialize;

pub mod pace;
pub mod rtsp_server;
pub mod thin;

pub use config::{CameraConfig, RtspTransport, SourceKind};

use crate::image::RgbImage;

const TEMPLATE_RTSP: &str = include_str!("../../pipelines/rtsp.pipeline");
const TEMPLATE_URI: &str = include_str!("../../pipelines/uri.pipeline");
const TEMPLATE_V4L2: &str = include_str!("../../pipelines/v4l2.pipeline");
const TEMPLATE_TEST: &str = include_str!("../../pipelines/test.pipeline");
const TEMPLATE_TAIL: &str = include_str!("../../pipelines/tail.pipeline");

/// First and largest reconnect delays.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("GStreamer could not start: {0}")]
    Init(String),
    #[error("camera {camera}: cannot build pipeline `{pipeline}`: {reason}")]
    Build { camera: String, pipeline: String, reason: String },
    #[error("camera {camera}: {reason}")]
    Stream { camera: String, reason: String },
}

/// Initialises GStreamer once per process.
pub fn init() -> Result<(), IngestError> {
    gst::init().map_err(|e| IngestError::Init(e.to_string()))
}

/// One decoded frame.
#[derive(Clone, Debug)]
pub struct Frame {
    pub camera: Arc<str>,
    /// Index of this frame among the frames the camera delivered (after the fps cap).
    pub seq: u64,
    /// Presentation time in the stream, when known.
    pub pts: Option<Duration>,
    /// Wall-clock time of capture, and the same moment on the monotonic clock for latency.
    pub captured_at: SystemTime,
    pub captured_instant: Instant,
    pub image: Arc<RgbImage>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraState {
    Connecting,
    Streaming,
    Backoff,
    Failed,
    Ended,
    Stopped,
    /// Configured but run by another node of the cluster (this node holds no lease on it).
    Standby,
}

impl CameraState {
    pub fn as_str(self) -> &'static str {
        match self {
            CameraState::Connecting => "connecting",
            CameraState::Streaming => "streaming",
            CameraState::Backoff => "backoff",
            CameraState::Failed => "failed",
            CameraState::Ended => "ended",
            CameraState::Stopped => "stopped",
            CameraState::Standby => "standby",
        }
    }
}

/// What a camera thread reports to the rest of the pipeline, besides frames.
#[derive(Clone, Debug)]
pub enum CameraNotice {
    State { camera: Arc<str>, state: CameraState, error: Option<String> },
}

/// Live view of one camera, shared with the HTTP side and the tests.
#[derive(Clone, Debug, Serialize)]
pub struct CameraStatus {
    pub id: String,
    pub state: CameraState,
    pub last_error: Option<String>,
    pub frames: u64,
    pub reconnects: u64,
    pub width: u32,
    pub height: u32,
}

/// Fills a template's `{name}` placeholders.
fn fill(template: &str, values: &[(&str, String)]) -> String {
    let mut s = template.trim().to_string();
    for (k, v) in values {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

/// GStreamer strings are quoted in the launch line; refuse characters that would break out.
fn quote_safe(s: &str) -> Result<&str, String> {
    if s.contains('"') || s.contains('\\') || s.contains('\n') {
        Err(format!("`{s}` contains a quote, backslash or newline"))
    } else {
        Ok(s)
    }
}

/// The launch line for a source.
pub fn launch_line(kind: &SourceKind, cam: &CameraConfig) -> Result<String, String> {
    let head = match kind {
        SourceKind::Rtsp(url) => fill(
            TEMPLATE_RTSP,
            &[
                ("location", quote_safe(url)?.to_string()),
                ("latency", cam.latency_ms.to_string()),
                (
                    "protocols",
                    match cam.rtsp_transport {
                        RtspTransport::Auto => "udp+tcp",
                        RtspTransport::Tcp => "tcp",
                        RtspTransport::Udp => "udp",
                    }
                    .to_string(),
                ),
            ],
        ),
        SourceKind::Uri { uri, .. } => fill(TEMPLATE_URI, &[("uri", quote_safe(uri)?.to_string())]),
        SourceKind::V4l2(dev) => fill(TEMPLATE_V4L2, &[("device", quote_safe(dev)?.to_string())]),
        SourceKind::Test(p) => fill(TEMPLATE_TEST, &[("pattern", p.clone())]),
    };
    let live = kind.is_live();
    // Files played in real time pace at the sink clock; live sources keep only the newest frame;
    // files played as fast as possible block so that every frame is processed.
    let (sync, max_buffers, drop) = match (live, cam.realtime) {
        (true, _) => (false, 1, true),
        (false, true) => (true, 1, true),
        (false, false) => (false, 2, false),
    };
    let tail = fill(TEMPLATE_TAIL, &[("sync", sync.to_string()), ("max_buffers", max_buffers.to_string()), ("drop", drop.to_string())]);
    Ok(format!("{head} ! {tail}"))
}

/// Where a camera thread sends what it sees. Implemented by the topology (bounded channels with
/// their when-full policies) and by tests.
pub trait FrameSink: Send + Sync {
    /// Hands over a frame; returns false when the pipeline is shutting down.
    /// `keep_newest`: drop the oldest queued frame when full (live sources and files played in
    /// real time); otherwise wait (files played as fast as possible lose nothing).
    fn frame(&self, frame: Frame, keep_newest: bool) -> bool;
    fn notice(&self, notice: CameraNotice);
    /// A frame skipped before it reached the sink, and why.
    fn skipped(&self, _camera: &str, _why: Skip) {}
    /// Frames waiting in the camera's queue, and its capacity, for pacing ([`pace`]); None: the
    /// sink does not queue (tests).
    fn backlog(&self) -> Option<(usize, usize)> {
        None
    }
    /// The stream broke off (a live source is reconnecting): what was tracked so far has ended.
    fn discontinuity(&self) {}
}

/// Why a frame was skipped before it reached the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Over the camera's fps cap, after decoding.
    FpsCap,
    /// Over the camera's fps cap, left out before decoding ([`thin`]).
    FpsCapUndecoded,
    /// Load shed: the detectors were behind on this camera ([`pace`]).
    Shed,
}

impl Skip {
    /// The `reason` label of `facestream_frames_dropped_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::FpsCap => "fps_cap",
            Skip::FpsCapUndecoded => "fps_cap_undecoded",
            Skip::Shed => "shed",
        }
    }
}

/// Why one pipeline run ended.
enum RunEnd {
    Eos,
    Error(String),
    Stopped,
}

/// Runs one camera until it ends, fails for good, or `stop` is set.
pub fn run_camera(cam: CameraConfig, base: &Path, sink: Arc<dyn FrameSink>, status: Arc<Mutex<CameraStatus>>, stop: Arc<AtomicBool>, seed: u64) {
    let camera: Arc<str> = Arc::from(cam.id.as_str());
    // Staggered start (the bench harness spreads looped clips so their loops do not coincide).
    sleep_unless_stopped(cam.start_delay, &stop);
    let set_state = |state: CameraState, error: Option<String>| {
        if let Ok(mut s) = status.lock() {
            s.state = state;
            if error.is_some() {
                s.last_error = error.clone();
            }
        }
        sink.notice(CameraNotice::State { camera: camera.clone(), state, error });
    };
    let fail = |e: String| {
        tracing::error!(camera = %camera, error = %e, "camera failed");
        set_state(CameraState::Failed, Some(e));
    };
    let (kind, line) = match cam.source(base).and_then(|k| launch_line(&k, &cam).map(|l| (k, l))) {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    let live = kind.is_live();
    let mut rng = seed | 1;
    let mut failures: u32 = 0;
    let mut seq: u64 = 0;
    let mut last_streaming: Option<Instant> = None;
    let min_interval = if cam.max_fps > 0.0 { Duration::from_secs_f32(1.0 / cam.max_fps) } else { Duration::ZERO };
    let verdict = Arc::new(thin::Verdict::default());
    let pace = Arc::new(pace::Pace::new(min_interval));
    loop {
        if stop.load(Ordering::Relaxed) {
            set_state(CameraState::Stopped, None);
            return;
        }
        set_state(CameraState::Connecting, None);
        tracing::info!(camera = %camera, pipeline = %line, "starting pipeline");
        let mut got_frames = false;
        // A file played in real time stands in for a camera, so it is treated like one: when the
        // pipeline falls behind, the oldest frame goes (counted) instead of the file slowing down.
        let keep_newest = live || cam.realtime;
        // Live sources and files alike: a file that opens but never yields a frame (cut inside its
        // header) would otherwise hang the camera for ever.
        let stall = (cam.stall_timeout_s > 0.0).then(|| Duration::from_secs_f32(cam.stall_timeout_s));
        let shaping = Shaping { min_interval, decode_threads: cam.decode_threads, verdict: verdict.clone(), pace: keep_newest.then(|| pace.clone()), looping: !live && cam.loop_file };
        let end = run_pipeline(&camera, &line, (keep_newest, stall), &shaping, &sink, &status, &stop, &mut seq, &mut got_frames, &set_state);
        if got_frames {
            last_streaming = Some(Instant::now());
        }
        match end {
            RunEnd::Stopped => {
                set_state(CameraState::Stopped, None);
                return;
            }
            RunEnd::Eos if !live && seq == 0 => {
                return fail(format!("{}: the file ended without a single decodable frame (truncated, or a codec without a decoder: {})", cam.url, PLUGIN_HINT));
            }
            RunEnd::Eos if !live => {
                if cam.loop_file && got_frames {
                    tracing::info!(camera = %camera, "end of file: looping");
                    sink.discontinuity();
                    continue;
                }
                tracing::info!(camera = %camera, frames = seq, "end of file");
                set_state(CameraState::Ended, None);
                return;
            }
            RunEnd::Error(e) if !live => return fail(format!("{}: {e} ({})", cam.url, error_hint(&e))),
            RunEnd::Eos | RunEnd::Error(_) => {
                let reason = match &end {
                    RunEnd::Error(e) => e.clone(),
                    _ => "stream ended".to_string(),
                };
                if !cam.reconnect {
                    return fail(format!("{reason} (reconnect is off)"));
                }
                if got_frames {
                    sink.discontinuity();
                }
                failures = if got_frames { 1 } else { failures + 1 };
                if cam.max_retries > 0 && failures > cam.max_retries {
                    return fail(format!("{reason} (gave up after {} retries)", cam.max_retries));
                }
                // A source that streamed within the last five minutes is flapping: probe at least
                // every 2 s so its short up-windows are not missed; otherwise back off to 30 s.
                let delay = backoff(failures, &mut rng);
                let delay = if last_streaming.is_some_and(|t| t.elapsed() < FLAPPING_WINDOW) { delay.min(FLAPPING_PROBE) } else { delay };
                tracing::warn!(camera = %camera, error = %reason, retry_in_ms = delay.as_millis() as u64, attempt = failures, "camera lost; reconnecting");
                set_state(CameraState::Backoff, Some(reason));
                if let Ok(mut s) = status.lock() {
                    s.reconnects += 1;
                }
                if !sleep_unless_stopped(delay, &stop) {
                    set_state(CameraState::Stopped, None);
                    return;
                }
            }
        }
    }
}

/// Handles the pipeline's pending bus messages; the end of the run when one says so.
fn drain_bus(bus: &gst::Bus, camera: &Arc<str>) -> Option<RunEnd> {
    while let Some(msg) = bus.pop() {
        use gst::MessageView;
        match msg.view() {
            MessageView::Error(err) => {
                let src = err.src().map(|s| s.path_string().to_string()).unwrap_or_default();
                let details = err.debug().map(|d| d.to_string()).unwrap_or_default();
                tracing::debug!(camera = %camera, %src, %details, "bus error");
                return Some(RunEnd::Error(format!("{} ({src})", err.error())));
            }
            MessageView::Eos(_) => return Some(RunEnd::Eos),
            MessageView::Warning(w) => tracing::warn!(camera = %camera, warning = %w.error(), "pipeline warning"),
            _ => {}
        }
    }
    None
}

/// A source that streamed this recently is treated as flapping (probed every FLAPPING_PROBE).
const FLAPPING_WINDOW: Duration = Duration::from_secs(300);
const FLAPPING_PROBE: Duration = Duration::from_secs(2);

const PLUGIN_HINT: &str = "install gstreamer1.0-libav for H.264/H.265/MPEG-4, gstreamer1.0-plugins-good/-bad/-ugly for the rest";

/// What to do about a GStreamer error, in words.
pub fn error_hint(e: &str) -> &'static str {
    let e = e.to_ascii_lowercase();
    if e.contains("missing") || e.contains("no decoder") || e.contains("not-negotiated") || e.contains("no suitable plugins") {
        PLUGIN_HINT
    } else if e.contains("not found") || e.contains("could not open") || e.contains("no such file") || e.contains("permission") {
        "check that the path or URL exists and is readable"
    } else if e.contains("stalled") {
        "no data arrived: for a file, it may be truncated or its codec unsupported; for a camera, check that it still sends"
    } else if e.contains("internal data stream error") || e.contains("decode") || e.contains("demux") {
        "the stream could not be decoded: the file may be corrupt or truncated, or its codec needs a plugin (gstreamer1.0-libav)"
    } else {
        "see the GStreamer error; run with --log debug for the pipeline's messages"
    }
}

/// Waits `d` in short steps; false as soon as `stop` is set.
/// Sleeps `d` unless `stop` is set first (checked every 20 ms); false when stopped.
pub fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !stop.load(Ordering::Relaxed)
}

/// Delay before reconnect attempt `n` (1-based): 1 s doubling to 30 s, with ±20% jitter so many
/// cameras behind one failed switch do not reconnect in lockstep. `rng` is an xorshift state.
pub fn backoff(n: u32, rng: &mut u64) -> Duration {
    let base = BACKOFF_MIN.as_secs_f64() * 2f64.powi(n.saturating_sub(1).min(10) as i32);
    let base = base.min(BACKOFF_MAX.as_secs_f64());
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let unit = (*rng % 10_000) as f64 / 10_000.0;
    Duration::from_secs_f64((base * (0.8 + 0.4 * unit)).min(BACKOFF_MAX.as_secs_f64()))
}

/// How a camera's pipeline spends its decoding: the fps cap, the decoders' threads, and whether
/// unreferenced frames are left out before decoding ([`thin`]).
struct Shaping {
    min_interval: Duration,
    decode_threads: u32,
    verdict: Arc<thin::Verdict>,
    /// Sources that drop when behind pace themselves by their queue; files played flat out wait.
    pace: Option<Arc<pace::Pace>>,
    /// A file that starts over at its end (`loop_file`).
    looping: bool,
}

/// Sets the decoders' threads, thins H.264 before its decoder, and applies the fps cap before
/// conversion (a pad probe on the converter's sink pad): a frame that would be dropped is never
/// converted to RGB (past capacity, converting frames that were then dropped took CPU from
/// detection).
fn shape_input(pipeline: &gst::Pipeline, camera: &Arc<str>, sink: &Arc<dyn FrameSink>, shaping: &Shaping) {
    let Shaping { min_interval, decode_threads, .. } = *shaping;
    let (thin_camera, thin_sink, verdict) = (camera.clone(), sink.clone(), shaping.verdict.clone());
    // Audio is never used: decodebin stops at the encoded audio instead of decoding it.
    for e in pipeline.iterate_elements().into_iter().flatten() {
        if e.factory().is_some_and(|f| matches!(f.name().as_str(), "uridecodebin" | "decodebin")) {
            e.connect("autoplug-continue", false, |args| {
                let audio = args.get(2).and_then(|v| v.get::<gst::Caps>().ok()).and_then(|c| c.structure(0).map(|s| s.name().starts_with("audio/")));
                Some((!audio.unwrap_or(false)).to_value())
            });
        }
    }
    pipeline.connect("deep-element-added", false, move |args| {
        let e = args.get(2).and_then(|v| v.get::<gst::Element>().ok())?;
        let factory = e.factory()?;
        // The decoder's threads (libav video decoders have `max-threads`; audio decoders do not).
        if factory.name().starts_with("avdec_") && e.find_property("max-threads").is_some() {
            e.set_property_from_str("max-threads", &decode_threads.to_string());
        }
        if factory.name() == "avdec_h264" && !min_interval.is_zero() {
            thin::install(&e, &thin_camera, &thin_sink, min_interval, &verdict);
        }
        None
    });
    if (!min_interval.is_zero() || shaping.pace.is_some())
        && let Some(pad) = pipeline.by_name("convert").and_then(|c| c.static_pad("sink"))
    {
        let (sink, camera, pace) = (sink.clone(), camera.clone(), shaping.pace.clone());
        let last = std::sync::Mutex::new(None::<Duration>);
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(pts) = info.buffer().and_then(|b| b.pts()) {
                let now = Duration::from_nanos(pts.nseconds());
                let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                let paced = pace.as_ref().map_or(min_interval, |p| p.interval());
                if let Some(prev) = *last
                    && now >= prev
                    && now - prev < paced.mul_f32(0.9)
                {
                    sink.skipped(&camera, if now - prev < min_interval.mul_f32(0.9) { Skip::FpsCap } else { Skip::Shed });
                    // Taken and released here, then Handled: returning Drop after the binding
                    // has taken the buffer made GStreamer unref a null pointer (a CRITICAL per
                    // skipped frame on stderr).
                    drop(last);
                    drop(info.take_buffer());
                    return gst::PadProbeReturn::Handled;
                }
                *last = Some(now);
            }
            gst::PadProbeReturn::Ok
        });
    }
}

/// Counts a delivered frame; the first one of a run makes the camera `streaming`.
fn note_frame(camera: &Arc<str>, frame: &Frame, status: &Mutex<CameraStatus>, got_frames: &mut bool, set_state: &dyn Fn(CameraState, Option<String>)) {
    if !*got_frames {
        *got_frames = true;
        tracing::info!(camera = %camera, width = frame.image.width, height = frame.image.height, "streaming");
        if let Ok(mut s) = status.lock() {
            s.width = frame.image.width;
            s.height = frame.image.height;
        }
        set_state(CameraState::Streaming, None);
    }
    if let Ok(mut s) = status.lock() {
        s.frames += 1;
    }
}

/// The pipeline of a launch line, its appsink `sink` and its bus.
fn build(line: &str) -> Result<(gst::Pipeline, gst_app::AppSink, gst::Bus), String> {
    let pipeline = gst::parse::launch(line).map_err(|e| format!("cannot build pipeline: {e}"))?;
    let pipeline = pipeline.downcast::<gst::Pipeline>().map_err(|_| "launch line did not give a pipeline".to_string())?;
    let appsink = pipeline.by_name("sink").and_then(|e| e.downcast::<gst_app::AppSink>().ok()).ok_or("pipeline has no appsink named `sink`")?;
    let bus = pipeline.bus().ok_or("pipeline has no bus")?;
    Ok((pipeline, appsink, bus))
}

#[allow(clippy::too_many_arguments)]
fn run_pipeline(
    camera: &Arc<str>,
    line: &str,
    (live, stall): (bool, Option<Duration>),
    shaping: &Shaping,
    sink: &Arc<dyn FrameSink>,
    status: &Arc<Mutex<CameraStatus>>,
    stop: &AtomicBool,
    seq: &mut u64,
    got_frames: &mut bool,
    set_state: &dyn Fn(CameraState, Option<String>),
) -> RunEnd {
    let (pipeline, appsink, bus) = match build(line) {
        Ok(x) => x,
        Err(e) => return RunEnd::Error(e),
    };
    shape_input(&pipeline, camera, sink, shaping);
    let min_interval = shaping.min_interval;
    let end = (|| {
        if let Err(e) = pipeline.set_state(gst::State::Playing) {
            // The bus usually holds the real reason (e.g. "could not open resource").
            return RunEnd::Error(bus_error(&bus).unwrap_or_else(|| format!("cannot start: {e}")));
        }
        let mut last_accept: Option<Duration> = None;
        let started = Instant::now();
        let mut last_sample = Instant::now();
        loop {
            if stop.load(Ordering::Relaxed) {
                return RunEnd::Stopped;
            }
            if let Some(end) = drain_bus(&bus, camera) {
                // A looping file starts over in the same pipeline: rebuilding it (type finding,
                // demuxer and decoder set-up, teardown) at every pass cost more than the pass's
                // decoding for a short clip. Tracks end at the jump, as they do at a rebuild.
                if matches!(end, RunEnd::Eos) && shaping.looping && *got_frames && pipeline.seek_simple(gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT, gst::ClockTime::ZERO).is_ok() {
                    tracing::info!(camera = %camera, "end of file: looping");
                    sink.discontinuity();
                    last_accept = None;
                    continue;
                }
                return end;
            }
            let Some(sample) = appsink.try_pull_sample(gst::ClockTime::from_mseconds(100)) else {
                // A looping file waits for the EOS on the bus (above), which all sinks agree on;
                // an appsink at its end answers at once, so the wait must not spin. Should the
                // message not come, the run ends after 5 s and the camera rebuilds its pipeline.
                if appsink.is_eos() && shaping.looping && last_sample.elapsed() < Duration::from_secs(5) {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                if appsink.is_eos() {
                    // A clean EOS may be followed by its bus message; either way the run is over.
                    return bus_error(&bus).map(RunEnd::Error).unwrap_or(RunEnd::Eos);
                }
                // A live source that went silent (a hung server keeps its TCP session open). Before
                // the first frame the limit is at least STARTUP_GRACE: opening a stream on a busy
                // machine (models loading, many cameras starting at once) can take longer.
                let limit_now = stall.map(|l| if *got_frames { l } else { l.max(STARTUP_GRACE) });
                if let Some(limit) = limit_now.filter(|l| last_sample.elapsed() > *l) {
                    crate::telemetry::metrics().camera_stalls.with_label_values(&[camera]).inc();
                    return RunEnd::Error(format!("no frame for {:.1} s: the source stalled (camera.stall_timeout_s)", limit.as_secs_f32()));
                }
                continue;
            };
            last_sample = Instant::now();
            // The fps cap measures stream time (pts) where there is one, so a file played as fast
            // as possible is thinned the same way as in real time; 10% slack absorbs jitter so a
            // 30 fps source capped at 15 gives 15, not 10.
            let now = match sample.buffer().and_then(|b| b.pts()) {
                Some(pts) => Duration::from_nanos(pts.nseconds()),
                None => started.elapsed(),
            };
            if let Some(prev) = last_accept
                && now >= prev && now - prev < min_interval.mul_f32(0.9) {
                    sink.skipped(camera, Skip::FpsCap);
                    continue;
                }
            let frame = match frame_from_sample(camera, &sample, *seq) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(camera = %camera, error = %e, "unusable frame skipped");
                    continue;
                }
            };
            last_accept = Some(now);
            note_frame(camera, &frame, status, got_frames, set_state);
            *seq += 1;
            if let (Some(pace), Some((waiting, capacity))) = (&shaping.pace, sink.backlog()) {
                pace.observe(waiting, capacity);
            }
            if !sink.frame(frame, live) {
                return RunEnd::Stopped;
            }
        }
    })();
    teardown(pipeline, camera);
    end
}

/// The least time a source gets to deliver its first frame before it counts as stalled.
const STARTUP_GRACE: Duration = Duration::from_secs(20);

/// Longest a pipeline's change to NULL may take before the camera goes on without it.
const TEARDOWN_WAIT: Duration = Duration::from_secs(5);

/// Stops a pipeline on a helper thread: GStreamer's change to NULL can block for good (seen in the
/// soak: an RTSP source stuck in gst_pad_stop_task after its server restarted), and a camera must
/// not hang with it. A pipeline that does not stop in time is abandoned (its thread and memory
/// stay; counted in facestream_camera_teardown_stuck_total) and the camera reconnects.
fn teardown(pipeline: gst::Pipeline, camera: &Arc<str>) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    let spawned = std::thread::Builder::new().name(format!("teardown-{camera}")).spawn(move || {
        let _ = pipeline.set_state(gst::State::Null);
        let _ = tx.send(());
    });
    if spawned.is_err() || rx.recv_timeout(TEARDOWN_WAIT).is_err() {
        crate::telemetry::metrics().camera_teardown_stuck.with_label_values(&[camera]).inc();
        tracing::error!(camera = %camera, "the GStreamer pipeline did not stop within 5 s; abandoned, reconnecting with a new one");
    }
}

fn bus_error(bus: &gst::Bus) -> Option<String> {
    while let Some(msg) = bus.pop() {
        if let gst::MessageView::Error(err) = msg.view() {
            return Some(err.error().to_string());
        }
    }
    None
}

fn frame_from_sample(camera: &Arc<str>, sample: &gst::Sample, seq: u64) -> Result<Frame, String> {
    let caps = sample.caps().ok_or("sample without caps")?;
    let info = gst_video::VideoInfo::from_caps(caps).map_err(|e| e.to_string())?;
    let buffer = sample.buffer().ok_or("sample without buffer")?;
    let map = buffer.map_readable().map_err(|e| e.to_string())?;
    // Never assume packed rows: GStreamer pads RGB rows to 4 bytes.
    let stride = info.stride()[0] as usize;
    let offset = info.offset()[0];
    let data = map.as_slice().get(offset..).ok_or("plane offset outside buffer")?;
    let image = RgbImage::from_strided(info.width(), info.height(), stride, data).map_err(|e| e.to_string())?;
    Ok(Frame {
        camera: camera.clone(),
        seq,
        pts: buffer.pts().map(|t| Duration::from_nanos(t.nseconds())),
        captured_at: SystemTime::now(),
        captured_instant: Instant::now(),
        image: Arc::new(image),
    })
}

/// Decodes a video file to RGB frames at `fps` (at most `limit` of them) through GStreamer, for
/// enrollment from a clip and for tests; the frames come with their presentation time.
pub fn clip_frames(path: &Path, fps: u32, limit: usize) -> Result<Vec<(Duration, RgbImage)>, IngestError> {
    init()?;
    let name = path.display().to_string();
    let stream = |reason: String| IngestError::Stream { camera: name.clone(), reason };
    if !path.is_file() {
        return Err(stream("no such file".into()));
    }
    let abs = std::fs::canonicalize(path).map_err(|e| stream(e.to_string()))?;
    let uri = gst::glib::filename_to_uri(&abs, None).map_err(|e| stream(e.to_string()))?;
    let line = format!("uridecodebin uri=\"{uri}\" ! videoconvert ! videorate ! video/x-raw,format=RGB,framerate={fps}/1 ! appsink name=sink sync=false");
    let pipeline = gst::parse::launch(&line)
        .map_err(|e| IngestError::Build { camera: name.clone(), pipeline: line.clone(), reason: e.to_string() })?
        .downcast::<gst::Pipeline>()
        .map_err(|_| stream("not a pipeline".into()))?;
    let sink = pipeline.by_name("sink").and_then(|s| s.downcast::<gst_app::AppSink>().ok()).ok_or_else(|| stream("no appsink".into()))?;
    pipeline.set_state(gst::State::Playing).map_err(|e| stream(format!("cannot play: {e}")))?;
    let mut out = Vec::new();
    let mut failure = None;
    while out.len() < limit {
        let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_seconds(10)) else {
            // End of stream or an error: an error is reported when no frame came at all.
            if let Some(bus) = pipeline.bus()
                && let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error])
                    && let gst::MessageView::Error(e) = msg.view() {
                        failure = Some(e.error().to_string());
                    }
            break;
        };
        let (Some(caps), Some(buf)) = (sample.caps(), sample.buffer()) else { continue };
        let Ok(info) = gst_video::VideoInfo::from_caps(caps) else { continue };
        let Ok(map) = buf.map_readable() else { continue };
        let pts = buf.pts().map(|t| Duration::from_nanos(t.nseconds())).unwrap_or_default();
        if let Ok(img) = RgbImage::from_strided(info.width(), info.height(), info.stride()[0] as usize, &map) {
            out.push((pts, img));
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
    match (out.is_empty(), failure) {
        (true, Some(reason)) => Err(stream(reason)),
        (true, None) => Err(stream("no frame could be decoded".into())),
        _ => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cam(url: &str) -> CameraConfig {
        toml::from_str(&format!("id = \"c\"\nurl = \"{url}\"\n")).unwrap()
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        let mut rng = 42;
        let d: Vec<f64> = (1..=8).map(|n| backoff(n, &mut rng).as_secs_f64()).collect();
        assert!((0.8..=1.2).contains(&d[0]), "{d:?}");
        assert!((1.6..=2.4).contains(&d[1]), "{d:?}");
        assert!((3.2..=4.8).contains(&d[2]), "{d:?}");
        assert!(d[7] <= 30.0 && d[7] >= 24.0, "{d:?}");
    }

    #[test]
    fn urls_map_to_source_kinds() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(cam("rtsp://127.0.0.1:8554/x").source(base).unwrap(), SourceKind::Rtsp("rtsp://127.0.0.1:8554/x".into()));
        assert_eq!(cam("v4l2:///dev/video0").source(base).unwrap(), SourceKind::V4l2("/dev/video0".into()));
        assert_eq!(cam("test:ball").source(base).unwrap(), SourceKind::Test("ball".into()));
        assert!(matches!(cam("tests/fixtures/video_01.mp4").source(base).unwrap(), SourceKind::Uri { live: false, .. }));
        assert!(cam("tests/fixtures/nope.mp4").source(base).unwrap_err().contains("does not exist"));
        assert!(cam("ftp://x/y").source(base).unwrap_err().contains("unsupported"));
        assert!(cam("test:nosuch").source(base).is_err());
    }

    #[test]
    fn live_sources_keep_the_newest_frame_and_files_block() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR"));
        let rtsp = cam("rtsp://127.0.0.1/x");
        let l = launch_line(&rtsp.source(base).unwrap(), &rtsp).unwrap();
        assert!(l.contains("max-buffers=1 drop=true") && l.contains("rtspsrc"), "{l}");
        let mut file = cam("tests/fixtures/video_01.mp4");
        file.realtime = false;
        let l = launch_line(&file.source(base).unwrap(), &file).unwrap();
        assert!(l.contains("sync=false max-buffers=2 drop=false") && l.contains("uridecodebin"), "{l}");
        file.realtime = true;
        let l = launch_line(&file.source(base).unwrap(), &file).unwrap();
        assert!(l.contains("sync=true max-buffers=1 drop=true"), "{l}");
    }
}
