//! The track stage loop: one tracker per camera, fed in the camera's queue order (detection
//! workers finish out of order), and the embedding policy: which faces of a track to embed (a new
//! track, a clearly better face, a periodic refresh; rarely once the identity is decided).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Receiver;

use super::{TrackConfig, Tracker, quality};
use crate::detect::worker::Detection;
use crate::detect::{BBox, Face};
use crate::embed::stage::EmbedRequest;
use crate::embed::{CROP_BYTES, align_into, crop_box};
use crate::ingest::Frame;
use crate::queue::{Outlet, PushError, Tx};
use crate::telemetry::metrics;

/// A track's start and end, for the identify stage.
pub enum TrackNote {
    Started { camera: Arc<str>, track: u64, bbox: BBox, score: f32, at: SystemTime },
    /// `requested`: embeddings queued for the track, so the identify stage waits for them.
    Ended { camera: Arc<str>, track: u64, first_seen: SystemTime, last_seen: SystemTime, frames: u64, requested: u32 },
    /// Observed cameras only: a track's face in one frame (tentative tracks included, so an
    /// application sees the very first frame of a face).
    Seen(TrackSeen),
}

/// A track's face in one frame of an observed camera.
#[derive(Clone, Debug)]
pub struct TrackSeen {
    pub camera: Arc<str>,
    pub track: u64,
    pub face: Face,
    /// The whole frame (shared, not copied).
    pub frame: Arc<crate::image::RgbImage>,
    pub at: SystemTime,
    pub captured_instant: Instant,
    /// Faces the detector found in this frame (all tracks, for crowding rules).
    pub faces_in_frame: usize,
}

/// How an observed camera (one a gate watches) is served: embeddings at a steady interval
/// whatever the vote decided, up to `max_embeddings` per track, through the priority queue.
#[derive(Clone, Copy, Debug)]
pub struct ObservePolicy {
    pub embed_interval: Duration,
    pub max_embeddings: u32,
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

struct CameraTracks {
    tracker: Tracker,
    info: HashMap<u64, TrackInfo>,
    /// Next ticket to track, and messages that arrived ahead of it.
    next_ticket: u64,
    pending: std::collections::BTreeMap<u64, Detection>,
}

/// Where the track stage's output goes: embedding requests into the embed queue (drop newest,
/// counted per camera), track starts and ends to the identify stage.
pub struct TrackOutputs<N: Outlet<TrackNote>> {
    pub embed: Tx<EmbedRequest>,
    /// The observed cameras' embedding requests (served first by the batcher).
    pub embed_priority: Tx<EmbedRequest>,
    pub observed: HashMap<Arc<str>, ObservePolicy>,
    pub notes: N,
    /// Faces below this quality are not embedded: they would never vote (`identify.quality_floor`).
    pub quality_floor: f32,
    /// Width of the context frame sent with a track's best face so far (0: none).
    pub context_width: u32,
    /// The web UI's live view (frames and boxes while somebody watches).
    pub live: Option<Arc<crate::live::LiveHub>>,
}

/// The track stage: one tracker per camera, fed in each camera's queue order; decides which faces
/// to embed. `decided` brings the identify stage's feedback (tracks whose identity is decided are
/// then re-embedded only every `decided_refresh_seconds`).
pub fn track_stage<N: Outlet<TrackNote>>(cfg: TrackConfig, rx: Receiver<Detection>, decided: Receiver<(Arc<str>, u64)>, mut out: TrackOutputs<N>) {
    let mut cams: HashMap<Arc<str>, CameraTracks> = HashMap::new();
    let mut crop = vec![0u8; CROP_BYTES];
    for msg in rx {
        let (camera, ticket) = match &msg {
            Detection::Detected { frame, ticket, .. } => (frame.camera.clone(), *ticket),
            Detection::End { camera, ticket } => (camera.clone(), *ticket),
        };
        for (cam, id) in decided.try_iter() {
            if let Some(info) = cams.get_mut(&cam).and_then(|c| c.info.get_mut(&id)) {
                info.decided = true;
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
                Detection::End { .. } => {
                    // The camera ended or broke off: its tracks end (a reconnect starts new ones).
                    let ids = ct.tracker.finish().into_iter().map(|t| t.id).collect();
                    end_tracks(ct, &camera, ids, &mut out.notes);
                }
                Detection::Detected { frame, faces, .. } => {
                    if !track_frame(&cfg, ct, &camera, &frame, &faces, &mut crop, &mut out) {
                        return;
                    }
                }
            }
        }
    }
    // Input closed: every camera ended; end what is left.
    for (camera, ct) in cams.iter_mut() {
        let ids = ct.tracker.finish().into_iter().map(|t| t.id).collect();
        end_tracks(ct, camera, ids, &mut out.notes);
    }
}

fn end_tracks(ct: &mut CameraTracks, camera: &Arc<str>, ids: Vec<u64>, notes: &mut impl Outlet<TrackNote>) {
    for id in ids {
        if let Some(info) = ct.info.remove(&id) {
            notes.put(TrackNote::Ended {
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
    static START: OnceLock<Instant> = OnceLock::new();
    frame.pts.unwrap_or_else(|| frame.captured_instant.saturating_duration_since(*START.get_or_init(Instant::now)))
}

/// Tracks one frame and queues the embeddings the policy asks for; false when the pipeline is
/// shutting down.
fn track_frame<N: Outlet<TrackNote>>(cfg: &TrackConfig, ct: &mut CameraTracks, camera: &Arc<str>, frame: &Frame, faces: &[Face], crop: &mut [u8], out: &mut TrackOutputs<N>) -> bool {
    let m = metrics();
    let refresh = Duration::from_secs_f32(cfg.refresh_seconds);
    let decided_refresh = Duration::from_secs_f32(cfg.decided_refresh_seconds);
    let upd = ct.tracker.update(faces);
    m.frames_processed.with_label_values(&[camera]).inc();
    if let Some(live) = &out.live {
        live.offer(camera, frame.seq, &frame.image, frame.captured_at, || {
            let now = ct.tracker.frame();
            ct.tracker
                .tracks()
                .iter()
                .filter(|t| t.last_frame == now)
                .filter_map(|t| {
                    let b = t.face.as_ref()?.bbox;
                    Some(crate::live::LiveTrack { track_id: format!("{camera}-{}", t.id), bbox: [b.x1, b.y1, b.x2, b.y2], confirmed: ct.info.contains_key(&t.id) })
                })
                .collect()
        });
    }
    let observe = out.observed.get(camera).copied();
    if observe.is_some() {
        let now = ct.tracker.frame();
        for t in ct.tracker.tracks().iter().filter(|t| t.last_frame == now) {
            let Some(face) = &t.face else { continue };
            out.notes.put(TrackNote::Seen(TrackSeen {
                camera: camera.clone(),
                track: t.id,
                face: face.clone(),
                frame: frame.image.clone(),
                at: frame.captured_at,
                captured_instant: frame.captured_instant,
                faces_in_frame: faces.len(),
            }));
        }
    }
    for id in &upd.confirmed {
        let Some(t) = ct.tracker.tracks().iter().find(|t| t.id == *id) else { continue };
        let Some(f) = &t.face else { continue };
        m.tracks_started.with_label_values(&[camera]).inc();
        ct.info.insert(
            *id,
            TrackInfo { first_seen: frame.captured_at, last_seen: frame.captured_at, frames: 0, requested: 0, best_quality: 0.0, last_embed: None, decided: false },
        );
        out.notes.put(TrackNote::Started { camera: camera.clone(), track: *id, bbox: f.bbox, score: f.score, at: frame.captured_at });
    }
    for (id, d) in &upd.matched {
        let face = &faces[*d];
        let Some(info) = ct.info.get_mut(id) else { continue };
        info.frames += 1;
        info.last_seen = frame.captured_at;
        let max_embeddings = observe.map_or(cfg.max_embeddings, |o| o.max_embeddings);
        if info.requested >= max_embeddings {
            continue;
        }
        let q = quality::geometric(face);
        let now = media_time(frame);
        let since_last = |t: Duration| now.saturating_sub(t);
        let due = if let Some(o) = observe {
            info.last_embed.is_none_or(|t| since_last(t) >= o.embed_interval)
        } else if info.decided {
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
        if q < out.quality_floor {
            continue;
        }
        let best = q > info.best_quality;
        info.best_quality = info.best_quality.max(q);
        info.last_embed = Some(now);
        let b = face.bbox;
        let context = (best && out.context_width > 0).then(|| Arc::new(crate::image::thumbnail(&frame.image, out.context_width, Some([b.x1, b.y1, b.x2, b.y2]))));
        let req = EmbedRequest { camera: camera.clone(), track: *id, crop: crop.to_vec(), bbox: face.bbox, quality: q, captured_instant: frame.captured_instant, context };
        let queue = if observe.is_some() { &out.embed_priority } else { &out.embed };
        match queue.push(req) {
            Ok(()) => info.requested += 1,
            Err(PushError::Full) => m.embed_requests_dropped.with_label_values(&[camera]).inc(),
            Err(_) => return false,
        }
    }
    m.queue_depth.with_label_values(&["embed"]).set(out.embed.len() as i64);
    let ended: Vec<u64> = upd.ended.iter().map(|t| t.id).collect();
    end_tracks(ct, camera, ended, &mut out.notes);
    true
}
