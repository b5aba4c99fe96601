//! Wires the stages with bounded channels and owns start-up and shutdown.
//!
//! ```text
//! camera threads ──(per-camera queue, drop oldest)──▶ detect workers ──(block)──▶ tracker
//!   tracker ──(embed queue, drop newest)──▶ batcher ──(block)──▶ embed workers ──▶ vote + sinks
//! ```
//! Shutdown cascades: cameras stop and send their end marker, every stage drains its input and
//! closes its output, the vote stage ends the last tracks and flushes the sinks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Select, SendTimeoutError, Sender, TrySendError, bounded};

use crate::config::Config;
use crate::detect::{BBox, Face, Mtcnn};
use crate::embed::batcher::Batcher;
use crate::embed::{CROP_BYTES, Embedder, align_into, crop_box};
use crate::events::vote::{TrackVote, VoteConfig};
use crate::events::{Event, EventBody, JsonLines, UNKNOWN};
use crate::gallery::{Match, SharedGallery};
use crate::infer::Runtime;
use crate::ingest::{self, CameraNotice, CameraState, CameraStatus, Frame, FrameSink};
use crate::telemetry::metrics;
use crate::track::{TrackConfig, Tracker, quality};

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("no enabled camera in the configuration; add a [[cameras]] entry")]
    NoCamera,
    #[error(transparent)]
    Ingest(#[from] ingest::IngestError),
    #[error(transparent)]
    Detect(#[from] crate::detect::DetectError),
    #[error(transparent)]
    Embed(#[from] crate::embed::EmbedError),
    #[error(transparent)]
    Infer(#[from] crate::infer::InferError),
    #[error(transparent)]
    Sink(#[from] crate::events::SinkError),
    #[error("cannot start thread: {0}")]
    Thread(std::io::Error),
}

/// Somewhere events go besides the configured sinks (tests, the HTTP event stream).
pub trait EventSink: Send {
    fn name(&self) -> &'static str;
    /// Delivers one event; errors are counted, never propagated into the pipeline.
    fn send(&mut self, event: &Event) -> Result<(), String>;
}

impl EventSink for JsonLines {
    fn name(&self) -> &'static str {
        JsonLines::name(self)
    }
    fn send(&mut self, event: &Event) -> Result<(), String> {
        self.write(&event.to_json()).map_err(|e| e.to_string())
    }
}

/// Sends events into a bounded channel without ever blocking; a full channel loses the event
/// (counted as failed with reason `queue_full`).
pub struct ChannelSink {
    pub name: &'static str,
    pub tx: Sender<Event>,
}

impl EventSink for ChannelSink {
    fn name(&self) -> &'static str {
        self.name
    }
    fn send(&mut self, event: &Event) -> Result<(), String> {
        self.tx.try_send(event.clone()).map_err(|e| match e {
            TrySendError::Full(_) => "queue_full".to_string(),
            TrySendError::Disconnected(_) => "disconnected".to_string(),
        })
    }
}

enum FrameMsg {
    Frame(Frame),
    /// The camera broke off or ended: its tracks end once the frames before this are tracked.
    End { camera: Arc<str> },
}

/// `ticket` numbers a camera's messages in the order they left its queue, so the tracker can
/// restore that order after several detection workers finished them out of order.
enum TrackMsg {
    Detected { frame: Frame, faces: Vec<Face>, ticket: u64 },
    End { camera: Arc<str>, ticket: u64 },
}

/// One camera's queue as the detection workers see it: the lock makes "take a message and number
/// it" one step, so tickets follow queue order exactly.
struct CameraInput {
    camera: Arc<str>,
    rx: Receiver<FrameMsg>,
    next_ticket: Mutex<u64>,
    /// The newest detection result of this camera, for the refine-only frames.
    recent: Mutex<Recent>,
    /// Signalled when `recent` changes (a refine frame waits for its predecessor's result).
    recent_changed: std::sync::Condvar,
    /// Offset of this camera's full detections in the `full_every` cycle, so that the cameras'
    /// expensive frames do not all fall on the same moment.
    phase: u64,
}

/// Longest a refine frame waits for the result of the frame before it.
const REFINE_WAIT: Duration = Duration::from_millis(250);

impl CameraInput {
    /// Records the faces found on frame `ticket` (when it is the newest) and wakes waiters.
    fn publish(&self, ticket: u64, boxes: Vec<BBox>) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.ticket.is_none_or(|t| t < ticket) {
            *recent = Recent { ticket: Some(ticket), boxes };
        }
        self.recent_changed.notify_all();
    }

    /// The faces of the newest result from frame `from` on, waiting up to `wait` for a worker
    /// that still detects frame `from`; `None` when it does not come in time.
    fn known_since(&self, from: u64, wait: Duration) -> Option<Vec<BBox>> {
        let deadline = Instant::now() + wait;
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if recent.ticket.is_some_and(|t| t >= from) {
                return Some(recent.boxes.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            recent = self.recent_changed.wait_timeout(recent, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// Faces of the newest detected frame of a camera (by ticket).
#[derive(Default)]
struct Recent {
    ticket: Option<u64>,
    boxes: Vec<BBox>,
}

struct EmbedRequest {
    camera: Arc<str>,
    track: u64,
    crop: Vec<u8>,
    bbox: BBox,
    captured_instant: Instant,
}

enum VoteMsg {
    Started { camera: Arc<str>, track: u64, bbox: BBox, score: f32, at: SystemTime },
    Result { camera: Arc<str>, track: u64, matches: Result<Vec<Match>, String>, threshold: f32, bbox: BBox, captured_instant: Instant },
    Ended { camera: Arc<str>, track: u64, first_seen: SystemTime, last_seen: SystemTime, frames: u64, requested: u32 },
    Camera(CameraNotice),
}

/// A running pipeline.
pub struct Running {
    stop: Arc<AtomicBool>,
    threads: Vec<(String, JoinHandle<()>)>,
    pub cameras: Vec<Arc<Mutex<CameraStatus>>>,
    pub gallery: SharedGallery,
}

impl Running {
    /// Asks every camera to stop; the stages drain and end by themselves.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// True once every thread has finished (all cameras ended and everything drained).
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|(_, h)| h.is_finished())
    }

    /// Waits for every stage to drain and end.
    pub fn join(self) {
        for (name, h) in self.threads {
            if h.join().is_err() {
                tracing::error!(thread = %name, "stage thread panicked");
            }
        }
    }

    pub fn camera_statuses(&self) -> Vec<CameraStatus> {
        self.cameras.iter().filter_map(|c| c.lock().ok().map(|s| s.clone())).collect()
    }
}

fn spawn(threads: &mut Vec<(String, JoinHandle<()>)>, name: String, f: impl FnOnce() + Send + 'static) -> Result<(), TopologyError> {
    let h = std::thread::Builder::new().name(name.clone()).spawn(f).map_err(TopologyError::Thread)?;
    threads.push((name, h));
    Ok(())
}

/// Starts every stage for the enabled cameras of `cfg`. Models are loaded (and fail) before any
/// camera starts.
pub fn start(cfg: &Config, gallery: SharedGallery, mut extra_sinks: Vec<Box<dyn EventSink>>) -> Result<Running, TopologyError> {
    let cams: Vec<_> = cfg.cameras.iter().filter(|c| c.enabled).cloned().collect();
    if cams.is_empty() {
        return Err(TopologyError::NoCamera);
    }
    ingest::init()?;
    let rt = Runtime::get(&cfg.infer)?;
    let m = metrics();
    m.gallery_size.set(gallery.read().map(|g| g.len() as i64).unwrap_or(0));

    // Load every model first: a missing model must stop us before any camera connects.
    let mut detectors = Vec::new();
    for _ in 0..cfg.pipeline.detect_workers {
        detectors.push(Mtcnn::new(&rt, cfg.detect.clone())?);
    }
    let mut embedders = Vec::new();
    for _ in 0..cfg.pipeline.embed_workers {
        embedders.push(Embedder::new(&rt, &cfg.embed)?);
    }
    let threshold = cfg.identify.threshold.unwrap_or(embedders[0].threshold);
    m.build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), "mtcnn", embedders[0].model_id(), rt.provider.as_str()])
        .set(1);
    let mut sinks = extra_sinks.drain(..).collect::<Vec<_>>();
    if cfg.events.stdout {
        sinks.push(Box::new(JsonLines::stdout()));
    }
    if let Some(path) = &cfg.events.file {
        let path = if path.is_absolute() { path.clone() } else { cfg.base_dir.join(path) };
        sinks.push(Box::new(JsonLines::rotating(&path, cfg.events.file_max_bytes, cfg.events.file_keep)?));
    }
    if let Some(w) = &cfg.events.webhook {
        sinks.push(Box::new(crate::events::sinks::WebhookSink::start(w.clone()).map_err(TopologyError::Thread)?));
    }
    if let Some(mq) = &cfg.events.mqtt {
        sinks.push(Box::new(crate::events::sinks::MqttSink::start(mq.clone()).map_err(TopologyError::Thread)?));
    }
    // Every per-camera series exists from the start, so dashboards and alerts see zeros, not gaps.
    for cam in &cams {
        let id = cam.id.as_str();
        m.frames_received.with_label_values(&[id]);
        m.frames_processed.with_label_values(&[id]);
        for reason in ["queue_full", "fps_cap"] {
            m.frames_dropped.with_label_values(&[id, reason]);
        }
        m.faces_detected.with_label_values(&[id]);
        m.tracks_started.with_label_values(&[id]);
        m.embeddings.with_label_values(&[id]);
        m.embed_requests_dropped.with_label_values(&[id]);
        for outcome in ["known", "unknown"] {
            m.identifications.with_label_values(&[id, outcome]);
        }
        m.camera_up.with_label_values(&[id]);
        m.camera_reconnects.with_label_values(&[id]);
        m.capture_to_event.with_label_values(&[id]);
    }
    for stage in ["detect", "align", "embed", "identify"] {
        m.stage_seconds.with_label_values(&[stage]);
    }
    for q in ["track", "embed"] {
        m.queue_depth.with_label_values(&[q]);
    }
    for s in &sinks {
        m.events_sent.with_label_values(&[s.name()]);
        m.events_failed.with_label_values(&[s.name(), "queue_full"]);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let decided: Decided = Arc::default();
    let (track_tx, track_rx) = bounded::<TrackMsg>(16);
    let (embed_tx, embed_rx) = bounded::<EmbedRequest>(cfg.pipeline.embed_queue);
    let (batch_tx, batch_rx) = bounded::<Vec<EmbedRequest>>(cfg.pipeline.embed_workers * 2);
    let (vote_tx, vote_rx) = bounded::<VoteMsg>(1024);

    // Cameras, each with its own queue.
    let mut inputs = Vec::new();
    let mut statuses = Vec::new();
    let mut min_faces = HashMap::new();
    for (i, cam) in cams.iter().enumerate() {
        let (tx, rx) = bounded::<FrameMsg>(cfg.pipeline.camera_queue);
        inputs.push(CameraInput { camera: Arc::from(cam.id.as_str()), rx: rx.clone(), next_ticket: Mutex::new(0), recent: Mutex::new(Recent::default()), recent_changed: std::sync::Condvar::new(), phase: inputs.len() as u64 });
        min_faces.insert(Arc::<str>::from(cam.id.as_str()), cam.min_face.unwrap_or(cfg.detect.min_face));
        let status = Arc::new(Mutex::new(CameraStatus {
            id: cam.id.clone(),
            state: CameraState::Connecting,
            last_error: None,
            frames: 0,
            reconnects: 0,
            width: 0,
            height: 0,
        }));
        statuses.push(status.clone());
        let sink = Arc::new(CameraQueue {
            camera: Arc::from(cam.id.as_str()),
            tx,
            rx,
            stop: stop.clone(),
            notices: vote_tx.clone(),
            last_state: Mutex::new(None),
        });
        let (cam, base, stop) = (cam.clone(), cfg.base_dir.clone(), stop.clone());
        let seed = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1);
        spawn(&mut threads, format!("camera-{}", cam.id), move || {
            ingest::run_camera(cam, &base, sink.clone(), status, stop, seed);
            sink.end();
        })?;
    }

    // Detection workers select over every camera queue (random among ready ones: fair).
    let min_faces = Arc::new(min_faces);
    let inputs = Arc::new(inputs);
    for (w, mut det) in detectors.into_iter().enumerate() {
        let (inputs, tx, min_faces) = (inputs.clone(), track_tx.clone(), min_faces.clone());
        spawn(&mut threads, format!("detect-{w}"), move || detect_worker(&mut det, &inputs, tx, &min_faces))?;
    }
    drop(inputs);
    drop(track_tx);

    {
        let (tcfg, vote_tx) = (cfg.track.clone(), vote_tx.clone());
        let decided = decided.clone();
        spawn(&mut threads, "track".into(), move || track_stage(tcfg, track_rx, embed_tx, vote_tx, decided))?;
    }
    {
        let bcfg = cfg.batch.clone();
        spawn(&mut threads, "batcher".into(), move || batch_stage(bcfg, embed_rx, batch_tx))?;
    }
    for (w, mut emb) in embedders.into_iter().enumerate() {
        let (rx, tx, gallery) = (batch_rx.clone(), vote_tx.clone(), gallery.clone());
        spawn(&mut threads, format!("embed-{w}"), move || embed_worker(&mut emb, rx, tx, &gallery, threshold))?;
    }
    drop(batch_rx);
    drop(vote_tx);
    {
        let (vcfg, show_states) = (cfg.identify.clone(), cfg.events.camera_states);
        spawn(&mut threads, "events".into(), move || vote_stage(vcfg, vote_rx, sinks, show_states, decided))?;
    }
    Ok(Running { stop, threads, cameras: statuses, gallery })
}

/// A camera's queue: drop-oldest for live sources, blocking for files played as fast as possible.
struct CameraQueue {
    camera: Arc<str>,
    tx: Sender<FrameMsg>,
    rx: Receiver<FrameMsg>,
    stop: Arc<AtomicBool>,
    notices: Sender<VoteMsg>,
    last_state: Mutex<Option<CameraState>>,
}

impl CameraQueue {
    fn end(&self) {
        // Blocking: the end marker must never be lost, and the detectors are draining.
        let _ = self.tx.send(FrameMsg::End { camera: self.camera.clone() });
    }
}

impl FrameSink for CameraQueue {
    fn frame(&self, frame: Frame, keep_newest: bool) -> bool {
        let m = metrics();
        m.frames_received.with_label_values(&[&self.camera]).inc();
        let mut msg = FrameMsg::Frame(frame);
        if keep_newest {
            loop {
                match self.tx.try_send(msg) {
                    Ok(()) => break,
                    Err(TrySendError::Full(back)) => {
                        // Keep the newest: the oldest waiting frame of this camera goes.
                        match self.rx.try_recv() {
                            Ok(FrameMsg::Frame(_)) => m.frames_dropped.with_label_values(&[&self.camera, "queue_full"]).inc(),
                            // An end marker is never dropped: put it back first in line.
                            Ok(end @ FrameMsg::End { .. }) => {
                                let _ = self.tx.send(end);
                            }
                            Err(_) => {}
                        }
                        msg = back;
                    }
                    Err(TrySendError::Disconnected(_)) => return false,
                }
            }
        } else {
            loop {
                match self.tx.send_timeout(msg, Duration::from_millis(100)) {
                    Ok(()) => break,
                    Err(SendTimeoutError::Timeout(back)) => {
                        if self.stop.load(Ordering::Relaxed) {
                            return false;
                        }
                        msg = back;
                    }
                    Err(SendTimeoutError::Disconnected(_)) => return false,
                }
            }
        }
        true
    }

    fn notice(&self, notice: CameraNotice) {
        let CameraNotice::State { state, .. } = &notice;
        let m = metrics();
        m.camera_up.with_label_values(&[&self.camera]).set((*state == CameraState::Streaming) as i64);
        for s in [CameraState::Connecting, CameraState::Streaming, CameraState::Backoff, CameraState::Failed, CameraState::Ended, CameraState::Stopped] {
            m.camera_state.with_label_values(&[&self.camera, s.as_str()]).set((s == *state) as i64);
        }
        if *state == CameraState::Backoff {
            m.camera_reconnects.with_label_values(&[&self.camera]).inc();
        }
        // Report changes only: "connecting" on every retry would flood the event stream.
        if let Ok(mut last) = self.last_state.lock() {
            if *last == Some(*state) {
                return;
            }
            *last = Some(*state);
        }
        let _ = self.notices.send_timeout(VoteMsg::Camera(notice), Duration::from_millis(100));
    }

    fn discontinuity(&self) {
        self.end();
    }

    fn skipped(&self, camera: &str) {
        metrics().frames_dropped.with_label_values(&[camera, "fps_cap"]).inc();
    }
}

fn detect_worker(det: &mut Mtcnn, inputs: &[CameraInput], tx: Sender<TrackMsg>, min_faces: &HashMap<Arc<str>, f32>) {
    let m = metrics();
    let default_min = det.config().min_face;
    let every = u64::from(det.config().full_every.max(1));
    let mut alive: Vec<usize> = (0..inputs.len()).collect();
    while !alive.is_empty() {
        let mut sel = Select::new();
        for &i in &alive {
            sel.recv(&inputs[i].rx);
        }
        // Ready among the cameras is picked at random: no camera starves the others.
        let k = sel.ready();
        let input = &inputs[alive[k]];
        let (msg, ticket) = {
            let mut next = input.next_ticket.lock().unwrap_or_else(|p| p.into_inner());
            match input.rx.try_recv() {
                Ok(msg) => {
                    let t = *next;
                    *next += 1;
                    (msg, t)
                }
                // Another worker took it first.
                Err(crossbeam_channel::TryRecvError::Empty) => continue,
                // The camera thread is gone and its queue is drained.
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    alive.swap_remove(k);
                    continue;
                }
            }
        };
        let out = match msg {
            FrameMsg::End { camera } => {
                // The camera broke off: nothing known carries over to its next frames.
                input.publish(ticket, Vec::new());
                TrackMsg::End { camera, ticket }
            }
            FrameMsg::Frame(frame) => {
                let started = Instant::now();
                let cpu = crate::telemetry::thread_cpu_seconds();
                let min_face = min_faces.get(&frame.camera).copied().unwrap_or(default_min);
                // Full cascade every `full_every` frames; between, refine the faces of the newest
                // result that includes the last full frame (waiting for it when another worker
                // still has it), or run the full cascade when that does not come in time.
                let since_full = (ticket + input.phase) % every;
                let priors = if since_full != 0 && ticket >= since_full { input.known_since(ticket - since_full, REFINE_WAIT) } else { None };
                let mode = if priors.is_some() { "refine" } else { "full" };
                let result = match &priors {
                    Some(boxes) => det.refine(&frame.image, boxes),
                    None => det.detect_with_min_face(&frame.image, min_face),
                };
                let faces = match result {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!(camera = %input.camera, seq = frame.seq, error = %e, "detection failed on a frame");
                        Vec::new()
                    }
                };
                m.stage_seconds.with_label_values(&["detect"]).observe(started.elapsed().as_secs_f64());
                m.stage_cpu_seconds.with_label_values(&["detect"]).inc_by((crate::telemetry::thread_cpu_seconds() - cpu).max(0.0));
                m.detect_frames.with_label_values(&[&frame.camera, mode]).inc();
                input.publish(ticket, faces.iter().map(|f| f.bbox).collect());
                m.capture_to_detect.observe(frame.captured_instant.elapsed().as_secs_f64());
                m.faces_detected.with_label_values(&[&frame.camera]).inc_by(faces.len() as u64);
                TrackMsg::Detected { frame, faces, ticket }
            }
        };
        m.queue_depth.with_label_values(&["track"]).set(tx.len() as i64);
        if tx.send(out).is_err() {
            return;
        }
    }
}

/// Per-track bookkeeping of the embedding policy.
struct TrackInfo {
    first_seen: SystemTime,
    last_seen: SystemTime,
    frames: u64,
    requested: u32,
    best_quality: f32,
    /// Media time (see [`media_time`]) of the last embedding requested.
    last_embed: Option<Duration>,
    /// The vote stage has named the track (a person or unknown).
    decided: bool,
}

/// Tracks whose identity the vote stage has decided, handed back to the track stage so it stops
/// spending embeddings on them (a set, not a queue: nothing to drop).
type Decided = Arc<Mutex<std::collections::HashSet<(Arc<str>, u64)>>>;

struct CameraTracks {
    tracker: Tracker,
    info: HashMap<u64, TrackInfo>,
    /// Next ticket to track, and messages that arrived ahead of it.
    next_ticket: u64,
    pending: std::collections::BTreeMap<u64, TrackMsg>,
}

fn track_stage(cfg: TrackConfig, rx: Receiver<TrackMsg>, embed_tx: Sender<EmbedRequest>, vote_tx: Sender<VoteMsg>, decided: Decided) {
    let mut cams: HashMap<Arc<str>, CameraTracks> = HashMap::new();
    let mut crop = vec![0u8; CROP_BYTES];
    for msg in rx {
        let (camera, ticket) = match &msg {
            TrackMsg::Detected { frame, ticket, .. } => (frame.camera.clone(), *ticket),
            TrackMsg::End { camera, ticket } => (camera.clone(), *ticket),
        };
        {
            let mut d = decided.lock().unwrap_or_else(|p| p.into_inner());
            for (cam, id) in d.drain() {
                if let Some(info) = cams.get_mut(&cam).and_then(|c| c.info.get_mut(&id)) {
                    info.decided = true;
                }
            }
        }
        let ct = cams.entry(camera.clone()).or_insert_with(|| CameraTracks {
            tracker: Tracker::new(cfg.clone()),
            info: HashMap::new(),
            next_ticket: 0,
            pending: Default::default(),
        });
        ct.pending.insert(ticket, msg);
        // Track strictly in queue order: the tracker must never go back in time.
        while let Some(msg) = ct.pending.remove(&ct.next_ticket) {
            ct.next_ticket += 1;
            match msg {
                TrackMsg::End { .. } => {
                    // The camera ended or broke off: its tracks end (a reconnect starts new ones).
                    let ids = ct.tracker.finish().into_iter().map(|t| t.id).collect();
                    end_tracks(ct, &camera, ids, &vote_tx);
                }
                TrackMsg::Detected { frame, faces, .. } => {
                    if !track_frame(&cfg, ct, &camera, &frame, &faces, &mut crop, &embed_tx, &vote_tx) {
                        return;
                    }
                }
            }
        }
    }
    // Input closed: every camera ended; end what is left.
    for (camera, ct) in cams.iter_mut() {
        let ids = ct.tracker.finish().into_iter().map(|t| t.id).collect();
        end_tracks(ct, camera, ids, &vote_tx);
    }
}

fn end_tracks(ct: &mut CameraTracks, camera: &Arc<str>, ids: Vec<u64>, vote_tx: &Sender<VoteMsg>) {
    for id in ids {
        if let Some(info) = ct.info.remove(&id) {
            let _ = vote_tx.send(VoteMsg::Ended {
                camera: camera.clone(),
                track: id,
                first_seen: info.first_seen,
                last_seen: info.last_seen,
                frames: info.frames,
                requested: info.requested,
            });
        }
    }
}

/// The clock of the embedding policy: the stream's own presentation time when it has one, so a
/// file processed flat out gets the same embeddings per track as the same file in real time;
/// else the capture time.
fn media_time(frame: &Frame) -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    frame.pts.unwrap_or_else(|| frame.captured_instant.saturating_duration_since(*START.get_or_init(Instant::now)))
}

/// Tracks one frame and queues the embeddings the policy asks for; false when the pipeline is
/// shutting down.
#[allow(clippy::too_many_arguments)]
fn track_frame(
    cfg: &TrackConfig,
    ct: &mut CameraTracks,
    camera: &Arc<str>,
    frame: &Frame,
    faces: &[Face],
    crop: &mut [u8],
    embed_tx: &Sender<EmbedRequest>,
    vote_tx: &Sender<VoteMsg>,
) -> bool {
    let m = metrics();
    let refresh = Duration::from_secs_f32(cfg.refresh_seconds);
    let decided_refresh = Duration::from_secs_f32(cfg.decided_refresh_seconds);
    let upd = ct.tracker.update(faces);
    m.frames_processed.with_label_values(&[camera]).inc();
    for id in &upd.confirmed {
        let Some(t) = ct.tracker.tracks().iter().find(|t| t.id == *id) else { continue };
        let Some(f) = &t.face else { continue };
        m.tracks_started.with_label_values(&[camera]).inc();
        ct.info.insert(
            *id,
            TrackInfo { first_seen: frame.captured_at, last_seen: frame.captured_at, frames: 0, requested: 0, best_quality: 0.0, last_embed: None, decided: false },
        );
        let _ = vote_tx.send(VoteMsg::Started { camera: camera.clone(), track: *id, bbox: f.bbox, score: f.score, at: frame.captured_at });
    }
    for (id, d) in &upd.matched {
        let face = &faces[*d];
        let Some(info) = ct.info.get_mut(id) else { continue };
        info.frames += 1;
        info.last_seen = frame.captured_at;
        if info.requested >= cfg.max_embeddings {
            continue;
        }
        let q = quality::geometric(face);
        let now = media_time(frame);
        let since_last = |t: Duration| now.saturating_sub(t);
        let due = if info.decided {
            info.last_embed.is_none_or(|t| since_last(t) >= decided_refresh)
        } else {
            info.requested == 0 || q > info.best_quality * cfg.quality_gain || info.last_embed.is_some_and(|t| since_last(t) >= refresh)
        };
        if !due {
            continue;
        }
        let Some(cb) = crop_box(&face.landmarks, false) else { continue };
        let started = Instant::now();
        if align_into(&frame.image, &cb, crop).is_err() {
            continue;
        }
        m.stage_seconds.with_label_values(&["align"]).observe(started.elapsed().as_secs_f64());
        let q = q * (0.5 + 0.5 * quality::sharpness(crop));
        info.best_quality = info.best_quality.max(q);
        info.last_embed = Some(now);
        let req = EmbedRequest { camera: camera.clone(), track: *id, crop: crop.to_vec(), bbox: face.bbox, captured_instant: frame.captured_instant };
        match embed_tx.try_send(req) {
            Ok(()) => info.requested += 1,
            Err(TrySendError::Full(_)) => m.embed_requests_dropped.with_label_values(&[camera]).inc(),
            Err(TrySendError::Disconnected(_)) => return false,
        }
    }
    m.queue_depth.with_label_values(&["embed"]).set(embed_tx.len() as i64);
    let ended: Vec<u64> = upd.ended.iter().map(|t| t.id).collect();
    end_tracks(ct, camera, ended, vote_tx);
    true
}

fn batch_stage(cfg: crate::embed::batcher::BatchConfig, rx: Receiver<EmbedRequest>, tx: Sender<Vec<EmbedRequest>>) {
    let mut b = Batcher::new(cfg);
    loop {
        let now = Instant::now();
        let wait = b.wait_time(now).unwrap_or(Duration::from_secs(3600));
        match rx.recv_timeout(wait) {
            Ok(req) => {
                if let Some(batch) = b.push(req, Instant::now()) {
                    if tx.send(batch).is_err() {
                        return;
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if let Some(batch) = b.flush() {
                    let _ = tx.send(batch);
                }
                return;
            }
        }
        if let Some(batch) = b.poll(Instant::now()) {
            if tx.send(batch).is_err() {
                return;
            }
        }
    }
}

fn embed_worker(emb: &mut Embedder, rx: Receiver<Vec<EmbedRequest>>, tx: Sender<VoteMsg>, gallery: &SharedGallery, threshold: f32) {
    let m = metrics();
    let mut buf: Vec<u8> = Vec::new();
    for batch in rx {
        m.batch_size.observe(batch.len() as f64);
        buf.clear();
        for r in &batch {
            buf.extend_from_slice(&r.crop);
        }
        let started = Instant::now();
        let cpu = crate::telemetry::thread_cpu_seconds();
        let result = emb.embed_crops(&buf);
        m.stage_seconds.with_label_values(&["embed"]).observe(started.elapsed().as_secs_f64());
        m.stage_cpu_seconds.with_label_values(&["embed"]).inc_by((crate::telemetry::thread_cpu_seconds() - cpu).max(0.0));
        let started = Instant::now();
        let outcomes: Vec<Result<Vec<Match>, String>> = match result {
            Ok(embs) => {
                let g = gallery.read();
                embs.iter()
                    .map(|e| match &g {
                        Ok(g) => Ok(g.search(e, 2)),
                        Err(_) => Err("gallery lock poisoned".to_string()),
                    })
                    .collect()
            }
            Err(e) => {
                tracing::warn!(error = %e, faces = batch.len(), "embedding batch failed");
                batch.iter().map(|_| Err(e.to_string())).collect()
            }
        };
        m.stage_seconds.with_label_values(&["identify"]).observe(started.elapsed().as_secs_f64());
        for (r, matches) in batch.into_iter().zip(outcomes) {
            m.embeddings.with_label_values(&[&r.camera]).inc();
            m.capture_to_embed.observe(r.captured_instant.elapsed().as_secs_f64());
            let msg = VoteMsg::Result { camera: r.camera, track: r.track, matches, threshold, bbox: r.bbox, captured_instant: r.captured_instant };
            if tx.send(msg).is_err() {
                return;
            }
        }
    }
}

struct VoteState {
    vote: TrackVote,
    received: u32,
    ended: Option<(SystemTime, SystemTime, u64, u32)>,
}

fn vote_stage(cfg: VoteConfig, rx: Receiver<VoteMsg>, mut sinks: Vec<Box<dyn EventSink>>, show_states: bool, decided: Decided) {
    let m = metrics();
    let mut tracks: HashMap<(Arc<str>, u64), VoteState> = HashMap::new();
    let mut emit = |e: Event, sinks: &mut Vec<Box<dyn EventSink>>| {
        for s in sinks.iter_mut() {
            match s.send(&e) {
                Ok(()) => m.events_sent.with_label_values(&[s.name()]).inc(),
                Err(reason) => {
                    let reason = if reason == "queue_full" || reason == "disconnected" { reason } else { "error".to_string() };
                    m.events_failed.with_label_values(&[s.name(), &reason]).inc();
                }
            }
        }
    };
    let track_id = |camera: &str, id: u64| format!("{camera}-{id}");
    let finish = |key: &(Arc<str>, u64), st: VoteState, sinks: &mut Vec<Box<dyn EventSink>>, emit: &mut dyn FnMut(Event, &mut Vec<Box<dyn EventSink>>)| {
        let Some((first, last, frames, _)) = st.ended else { return };
        let person = st.vote.person().cloned();
        let body = EventBody::TrackEnded {
            track_id: track_id(&key.0, key.1),
            person: person.as_ref().map(|p| p.1.clone()).unwrap_or_else(|| UNKNOWN.to_string()),
            person_id: person.map(|p| p.0),
            first_seen: crate::events::rfc3339(first),
            last_seen: crate::events::rfc3339(last),
            frames,
            embeddings: st.vote.embeddings,
            best_score: st.vote.best_distance.map(similarity),
        };
        emit(Event::new(&key.0, last, body), sinks);
    };
    for msg in rx {
        match msg {
            VoteMsg::Camera(CameraNotice::State { camera, state, error }) => {
                if show_states {
                    emit(Event::new(&camera, SystemTime::now(), EventBody::CameraState { state: state.as_str().to_string(), error }), &mut sinks);
                }
            }
            VoteMsg::Started { camera, track, bbox, score, at } => {
                tracks.insert((camera.clone(), track), VoteState { vote: TrackVote::default(), received: 0, ended: None });
                emit(Event::new(&camera, at, EventBody::TrackStarted { track_id: track_id(&camera, track), bbox: bbox_arr(&bbox), score }), &mut sinks);
            }
            VoteMsg::Result { camera, track, matches, threshold, bbox, captured_instant } => {
                let key = (camera.clone(), track);
                let Some(st) = tracks.get_mut(&key) else { continue };
                st.received += 1;
                if let Ok(matches) = matches {
                    if let Some(d) = st.vote.add(&matches, threshold, &cfg) {
                        decided.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone());
                        let latency = captured_instant.elapsed().as_secs_f64();
                        m.capture_to_event.with_label_values(&[&camera]).observe(latency);
                        let outcome = if d.person.is_some() { "known" } else { "unknown" };
                        m.identifications.with_label_values(&[&camera, outcome]).inc();
                        let body = EventBody::Identified {
                            track_id: track_id(&camera, track),
                            person: d.person.as_ref().map(|p| p.1.clone()).unwrap_or_else(|| UNKNOWN.to_string()),
                            person_id: d.person.as_ref().map(|p| p.0),
                            score: similarity(d.distance),
                            distance: d.distance,
                            threshold,
                            votes: d.votes,
                            bbox: bbox_arr(&bbox),
                            latency_s: latency,
                        };
                        emit(Event::new(&camera, SystemTime::now(), body), &mut sinks);
                    }
                }
                if st.ended.is_some_and(|e| st.received >= e.3) {
                    if let Some(st) = tracks.remove(&key) {
                        finish(&key, st, &mut sinks, &mut emit);
                    }
                }
            }
            VoteMsg::Ended { camera, track, first_seen, last_seen, frames, requested } => {
                let key = (camera, track);
                if let Some(st) = tracks.get_mut(&key) {
                    st.ended = Some((first_seen, last_seen, frames, requested));
                    // Results still on their way are waited for, so the end names the person.
                    if st.received >= requested {
                        if let Some(st) = tracks.remove(&key) {
                            finish(&key, st, &mut sinks, &mut emit);
                        }
                    }
                }
            }
        }
    }
    // Input closed: finish whatever is left (results that never came were dropped upstream).
    let keys: Vec<_> = tracks.keys().cloned().collect();
    for key in keys {
        if let Some(mut st) = tracks.remove(&key) {
            if st.ended.is_none() {
                let now = SystemTime::now();
                st.ended = Some((now, now, 0, 0));
            }
            finish(&key, st, &mut sinks, &mut emit);
        }
    }
}

fn bbox_arr(b: &BBox) -> [f32; 4] {
    [b.x1, b.y1, b.x2, b.y2]
}

/// Cosine similarity from the distance between unit vectors: d^2 = 2 - 2 cos.
pub fn similarity(distance: f32) -> f32 {
    1.0 - distance * distance / 2.0
}
