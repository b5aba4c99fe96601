//! Wires the stages with bounded queues and owns start-up and shutdown; nothing else.
//!
//! ```text
//! camera threads ──(camera queue, drop oldest)──▶ detect workers ──(block)──▶ track
//!   track ──(embed queue, drop newest)──▶ batcher ──(block)──▶ embed workers ──(block)──▶ identify
//!   track ──(notes)──────────────────────────────────────────────────────────(block)──▶ identify
//!   identify ──(decided feedback, drop newest)──▶ track
//!   identify ──▶ decisions bus ──(each subscriber its own queue, drop newest)──▶ events, ...
//! ```
//! Shutdown cascades: cameras stop and send their end marker, every stage drains its input and
//! closes its output, the identify stage ends the last tracks and the subscribers drain the bus.

mod camera;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;

pub use crate::events::{ChannelSink, EventSink};

use crate::cluster::Leases;
use crate::config::Config;
use crate::detect::Mtcnn;
use crate::detect::worker::{CameraInput, Detection, detect_worker};
use crate::embed::Embedder;
use crate::embed::stage::{EmbedRequest, Embedded, batch_stage, embed_worker};
use crate::gallery::SharedGallery;
use crate::identify::stage::{IdentifyMsg, identify_stage};
use crate::identify::{OperatingPoint, TrackUpdate};
use crate::infer::Runtime;
use crate::ingest::{self, CameraState, CameraStatus};
use crate::queue::{Bus, Tx, WhenFull, bounded};
use crate::telemetry::metrics;
pub use crate::track::stage::ObservePolicy;
use crate::track::stage::{TrackNote, TrackOutputs, track_stage};

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

/// A decisions-bus subscriber an application asks for before the pipeline starts.
pub struct Subscription {
    pub name: &'static str,
    pub capacity: usize,
    /// Cameras whose tracks the application needs frame by frame and embedding by embedding
    /// ([`TrackUpdate::Seen`], [`TrackUpdate::Matched`]); their embedding requests and frames
    /// are also served before the other cameras' when the CPU is short.
    pub observe: Vec<(String, ObservePolicy)>,
    /// Runs on a thread of its own until the bus closes.
    pub run: Box<dyn FnOnce(AppIo) + Send>,
}

/// What an application on the decisions bus gets: the updates, and a queue into the events
/// application for events of its own (delivered to every sink; drop newest when full, counted).
pub struct AppIo {
    pub updates: Receiver<TrackUpdate>,
    pub events: Tx<crate::events::Event>,
}

/// A running pipeline.
pub struct Running {
    stop: Arc<AtomicBool>,
    threads: Vec<(String, JoinHandle<()>)>,
    pub cameras: Vec<Arc<Mutex<CameraStatus>>>,
    pub gallery: SharedGallery,
    pub operating_point: OperatingPoint,
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

/// Starts every stage for the enabled cameras of `cfg`, the configured event sinks plus
/// `extra_sinks` as the events application. Models are loaded (and fail) before any camera starts.
pub fn start(cfg: &Config, gallery: SharedGallery, extra_sinks: Vec<Box<dyn EventSink>>) -> Result<Running, TopologyError> {
    start_with(cfg, gallery, extra_sinks, Vec::new(), None, None)
}

/// [`start`] with further applications subscribed to the decisions bus, the web UI's live
/// view tap, and in a cluster the camera leases (a camera runs only while this node holds its
/// lease; standby otherwise).
pub fn start_with(cfg: &Config, gallery: SharedGallery, extra_sinks: Vec<Box<dyn EventSink>>, apps: Vec<Subscription>, live: Option<Arc<crate::live::LiveHub>>, leases: Option<Arc<Leases>>) -> Result<Running, TopologyError> {
    let cams: Vec<_> = cfg.cameras.iter().filter(|c| c.enabled).cloned().collect();
    if cams.is_empty() {
        return Err(TopologyError::NoCamera);
    }
    ingest::init()?;
    let rt = Runtime::get(&cfg.infer)?;
    let m = metrics();
    // Load every model first: a missing model must stop us before any camera connects.
    let detectors = (0..cfg.pipeline.detect_workers).map(|_| Mtcnn::new(&rt, cfg.detect.clone())).collect::<Result<Vec<_>, _>>()?;
    let embedders = (0..cfg.pipeline.embed_workers).map(|_| Embedder::load(&rt, &cfg.embed, cfg.embed_model().as_deref()).and_then(|e| e.with_head(cfg.embed_head().as_deref()))).collect::<Result<Vec<_>, _>>()?;
    let persons = gallery.read().map(|g| g.len()).unwrap_or(0);
    m.gallery_size.set(persons as i64);
    let point = OperatingPoint::for_embedder(&cfg.identify, cfg.embed.threshold, &embedders[0], persons);
    let threshold = format!("{:.4}", point.threshold);
    let source = format!("{:?}", point.source).to_lowercase();
    m.build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), "mtcnn", embedders[0].model_id(), rt.provider.as_str(), &threshold, &source, &cfg.cluster.node_name()]).set(1);
    tracing::info!(threshold = point.threshold, margin = point.margin, source = ?point.source, expected_far = ?point.expected_far, calibrated_gallery = ?point.calibrated_gallery, persons, "open-set operating point");
    let mut sinks = extra_sinks;
    sinks.extend(crate::events::sinks::from_config(&cfg.events, &cfg.base_dir)?);
    precreate_series(cfg, &sinks);

    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let q = |name: &str| m.queue_dropped.with_label_values(&[name]);
    let (track_tx, track_rx) = bounded::<Detection>(16, WhenFull::Block, q("track"));
    let (embed_tx, embed_rx) = bounded::<EmbedRequest>(cfg.pipeline.embed_queue, WhenFull::DropNewest, q("embed"));
    let (embed_prio_tx, embed_prio_rx) = bounded::<EmbedRequest>(256, WhenFull::DropNewest, q("embed_priority"));
    let (batch_tx, batch_rx) = bounded::<Vec<EmbedRequest>>(cfg.pipeline.embed_workers * 2, WhenFull::Block, q("batch"));
    let (id_tx, id_rx) = bounded::<IdentifyMsg>(1024, WhenFull::Block, q("identify"));
    let (decided_tx, decided_rx) = bounded::<(Arc<str>, u64)>(1024, WhenFull::DropNewest, q("decided_feedback"));

    // The decisions bus and its subscribers: the events application first, then the others.
    let mut bus = Bus::default();
    let events_rx = bus.subscribe("events", cfg.events.queue, m.bus_dropped.with_label_values(&["events"]));
    let (app_events_tx, app_events_rx) = bounded::<crate::events::Event>(1024, WhenFull::DropNewest, q("app_events"));
    let (camera_states, snapshots) = (cfg.events.camera_states, cfg.snapshots.enabled);
    let node = cfg.cluster.enabled().then(|| cfg.cluster.node_name());
    spawn(&mut threads, "events".into(), move || crate::events::dispatch::run(events_rx, app_events_rx, sinks, (camera_states, snapshots), node))?;
    let mut observed: HashMap<Arc<str>, ObservePolicy> = HashMap::new();
    for (camera, policy) in apps.iter().flat_map(|a| a.observe.iter()) {
        // Two applications watching one camera: the more demanding policy serves both.
        let e = observed.entry(Arc::from(camera.as_str())).or_insert(*policy);
        e.embed_interval = e.embed_interval.min(policy.embed_interval);
        e.max_embeddings = e.max_embeddings.max(policy.max_embeddings);
    }
    let observed_set: Arc<HashSet<Arc<str>>> = Arc::new(observed.keys().cloned().collect());
    for app in apps {
        let io = AppIo { updates: bus.subscribe(app.name, app.capacity, m.bus_dropped.with_label_values(&[app.name])), events: app_events_tx.clone() };
        spawn(&mut threads, format!("app-{}", app.name), move || (app.run)(io))?;
    }
    drop(app_events_tx);

    let (inputs, statuses) = start_cameras(cfg, &cams, (&stop, leases.as_deref()), &id_tx, &observed_set, &mut threads)?;
    let min_faces: Arc<HashMap<Arc<str>, f32>> = Arc::new(cams.iter().map(|c| (Arc::from(c.id.as_str()), c.min_face.unwrap_or(cfg.detect.min_face))).collect());
    let inputs = Arc::new(inputs);
    for (w, mut det) in detectors.into_iter().enumerate() {
        let (inputs, tx, min_faces) = (inputs.clone(), track_tx.clone(), min_faces.clone());
        let out = move |d: Detection| {
            metrics().queue_depth.with_label_values(&["track"]).set(tx.len() as i64);
            tx.push(d).is_ok()
        };
        spawn(&mut threads, format!("detect-{w}"), move || detect_worker(&mut det, &inputs, out, &min_faces))?;
    }
    drop((inputs, track_tx));
    let (tcfg, notes_tx, quality_floor) = (cfg.track.clone(), id_tx.clone(), cfg.identify.quality_floor);
    let context_width = if cfg.snapshots.enabled { cfg.snapshots.context_width } else { 0 };
    let notes = move |n: TrackNote| notes_tx.push(IdentifyMsg::Track(n)).is_ok();
    spawn(&mut threads, "track".into(), move || track_stage(tcfg, track_rx, decided_rx, TrackOutputs { embed: embed_tx, embed_priority: embed_prio_tx, observed, notes, quality_floor, context_width, live }))?;
    let bcfg = cfg.batch.clone();
    spawn(&mut threads, "batcher".into(), move || batch_stage(bcfg, embed_rx, embed_prio_rx, batch_tx))?;
    for (w, mut emb) in embedders.into_iter().enumerate() {
        let (rx, tx, flip) = (batch_rx.clone(), id_tx.clone(), cfg.embed.flip_tracks);
        let out = move |e: Embedded| tx.push(IdentifyMsg::Embedded(e)).is_ok();
        spawn(&mut threads, format!("embed-{w}"), move || embed_worker(&mut emb, flip, rx, out))?;
    }
    drop((batch_rx, id_tx));
    let (icfg, g, obs) = (cfg.identify.clone(), gallery.clone(), observed_set.clone());
    // Lost feedback only means a few more embeddings for that track (counted).
    let feedback = move |key: (Arc<str>, u64)| {
        let _ = decided_tx.push(key);
        true
    };
    spawn(&mut threads, "identify".into(), move || identify_stage(icfg, point, g, obs, id_rx, bus, feedback))?;
    Ok(Running { stop, threads, cameras: statuses, gallery, operating_point: point })
}

type CameraParts = (Vec<CameraInput>, Vec<Arc<Mutex<CameraStatus>>>);

/// One thread and one queue per camera.
fn start_cameras(cfg: &Config, cams: &[ingest::CameraConfig], (stop, leases): (&Arc<AtomicBool>, Option<&Leases>), notices: &Tx<IdentifyMsg>, priority: &HashSet<Arc<str>>, threads: &mut Vec<(String, JoinHandle<()>)>) -> Result<CameraParts, TopologyError> {
    let mut inputs = Vec::new();
    let mut statuses = Vec::new();
    for (i, cam) in cams.iter().enumerate() {
        let id: Arc<str> = Arc::from(cam.id.as_str());
        let (queue, rx) = camera::CameraQueue::new(id.clone(), cfg.pipeline.camera_queue, stop.clone(), notices.clone());
        let urgent = priority.contains(&id);
        inputs.push(CameraInput::new(id, rx, i as u64).with_priority(urgent));
        let status = Arc::new(Mutex::new(CameraStatus { id: cam.id.clone(), state: CameraState::Connecting, last_error: None, frames: 0, reconnects: 0, width: 0, height: 0 }));
        statuses.push(status.clone());
        let queue = Arc::new(queue);
        let (cam, base, stop) = (cam.clone(), cfg.base_dir.clone(), stop.clone());
        let seed = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1);
        let lease = leases.and_then(|l| l.get(&cam.id));
        spawn(threads, format!("camera-{}", cam.id), move || {
            match lease {
                None => ingest::run_camera(cam, &base, queue.clone(), status, stop, seed),
                Some(lease) => camera::run_leased(cam, &base, &queue, status, &stop, seed, lease),
            }
            queue.end();
        })?;
    }
    Ok((inputs, statuses))
}

/// Every per-camera series exists from the start, so dashboards and alerts see zeros, not gaps.
fn precreate_series(cfg: &Config, sinks: &[Box<dyn EventSink>]) {
    let m = metrics();
    for cam in cfg.cameras.iter().filter(|c| c.enabled) {
        let id = cam.id.as_str();
        m.frames_received.with_label_values(&[id]);
        m.frames_processed.with_label_values(&[id]);
        for reason in ["queue_full", "fps_cap", "fps_cap_undecoded", "shed"] {
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
    for q in ["track", "embed", "embed_priority", "batch", "identify", "decided_feedback", "app_events"] {
        m.queue_dropped.with_label_values(&[q]);
    }
    m.bus_dropped.with_label_values(&["events"]);
    for s in sinks {
        m.events_sent.with_label_values(&[s.name()]);
        m.events_failed.with_label_values(&[s.name(), "queue_full"]);
    }
}
