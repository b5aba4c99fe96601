//! The identify stage: looks each embedding up in the gallery, applies the open-set decision
//! and the per-track vote, and publishes every track's start, decision and end on the decisions
//! bus. Decided tracks are reported back to the track stage (a message, not shared state) so it
//! stops spending embeddings on them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crossbeam_channel::Receiver;

use super::decision::{FaceCrop, TrackDecision, TrackEnd, TrackStart, TrackUpdate};
use super::vote::TrackVote;
use super::{IdentifyConfig, OperatingPoint};
use crate::embed::stage::Embedded;
use crate::embed::{CROP_SIDE, Embedding};
use crate::gallery::SharedGallery;
use crate::ingest::CameraNotice;
use crate::queue::{Bus, Outlet};
use crate::telemetry::metrics;
use crate::track::stage::TrackNote;

/// The identify stage's input: everything arrives through one queue, so a track's start is
/// always seen before its embeddings and its end after the embeddings it requested were queued.
pub enum IdentifyMsg {
    Track(TrackNote),
    Embedded(Embedded),
    Camera(CameraNotice),
}

struct TrackState {
    vote: TrackVote,
    received: u32,
    ended: Option<Ended>,
    embeddings: Vec<Embedding>,
    best_crop: Option<Arc<FaceCrop>>,
    /// Quality-weighted sum of the track's voting embeddings.
    weighted: Vec<f32>,
    started: SystemTime,
    qualities: Vec<f32>,
}

#[derive(Clone, Copy)]
struct Ended {
    first_seen: SystemTime,
    last_seen: SystemTime,
    frames: u64,
    requested: u32,
}

/// The stage loop; ends when every producer has gone, finishing the tracks still open.
/// Embeddings of `observed` cameras are also published one by one with their own nearest persons
/// ([`TrackUpdate::Matched`]), and their per-frame notes as [`TrackUpdate::Seen`].
pub fn identify_stage(cfg: IdentifyConfig, point: OperatingPoint, gallery: SharedGallery, observed: Arc<HashSet<Arc<str>>>, rx: Receiver<IdentifyMsg>, mut bus: Bus<TrackUpdate>, mut decided: impl Outlet<(Arc<str>, u64)>) {
    let mut tracks: HashMap<(Arc<str>, u64), TrackState> = HashMap::new();
    for msg in rx {
        match msg {
            IdentifyMsg::Camera(CameraNotice::State { camera, state, error }) => bus.publish(&TrackUpdate::Camera { camera, state, error }),
            IdentifyMsg::Track(TrackNote::Started { camera, track, bbox, score, at }) => {
                let st = TrackState { vote: TrackVote::default(), received: 0, ended: None, embeddings: Vec::new(), best_crop: None, weighted: Vec::new(), started: at, qualities: Vec::new() };
                tracks.insert((camera.clone(), track), st);
                bus.publish(&TrackUpdate::Started(Arc::new(TrackStart { camera, track, bbox, score, at })));
            }
            IdentifyMsg::Track(TrackNote::Seen(seen)) => bus.publish(&TrackUpdate::Seen(Arc::new(seen))),
            IdentifyMsg::Track(TrackNote::Ended { camera, track, first_seen, last_seen, frames, requested }) => {
                let key = (camera, track);
                if let Some(st) = tracks.get_mut(&key) {
                    st.ended = Some(Ended { first_seen, last_seen, frames, requested });
                    // Results still on their way are waited for, so the end names the person.
                    if st.received >= requested
                        && let Some(st) = tracks.remove(&key) {
                            finish(&key, st, &mut bus);
                        }
                }
            }
            IdentifyMsg::Embedded(e) => {
                let key = (e.request.camera.clone(), e.request.track);
                let Some(st) = tracks.get_mut(&key) else { continue };
                st.received += 1;
                let observe = observed.contains(&key.0);
                if let Some(d) = identify_one(&cfg, &point, &gallery, st, e, observe.then_some(&mut bus)) {
                    decided.put(key.clone());
                    bus.publish(&TrackUpdate::Decided(Arc::new(d)));
                }
                if st.ended.is_some_and(|e| st.received >= e.requested)
                    && let Some(st) = tracks.remove(&key) {
                        finish(&key, st, &mut bus);
                    }
            }
        }
    }
    // Input closed: finish whatever is left (results that never came were dropped upstream).
    let keys: Vec<_> = tracks.keys().cloned().collect();
    for key in keys {
        if let Some(mut st) = tracks.remove(&key) {
            if st.ended.is_none() {
                st.ended = Some(Ended { first_seen: st.started, last_seen: SystemTime::now(), frames: 0, requested: 0 });
            }
            finish(&key, st, &mut bus);
        }
    }
}

/// Searches the gallery for one embedding and adds it to the track's vote; the decision when
/// the vote reached (or changed) one.
fn identify_one(cfg: &IdentifyConfig, point: &OperatingPoint, gallery: &SharedGallery, st: &mut TrackState, e: Embedded, observe: Option<&mut Bus<TrackUpdate>>) -> Option<TrackDecision> {
    let m = metrics();
    let Embedded { request: r, embedding } = e;
    let embedding = embedding.ok()?;
    if st.best_crop.as_ref().is_none_or(|c| r.quality > c.quality) {
        // The context comes with the face that was the best when it was queued; keep the last one.
        let context = r.context.clone().or_else(|| st.best_crop.as_ref().and_then(|c| c.context.clone()));
        st.best_crop = Some(Arc::new(FaceCrop { rgb: r.crop.clone(), side: CROP_SIDE as u32, quality: r.quality, context }));
    }
    st.embeddings.push(embedding.clone());
    st.qualities.push(r.quality);
    if let Some(bus) = observe {
        // The embedding on its own, for applications with a rule of their own (gates).
        let matches = gallery.read().map(|g| g.search(&embedding, 2)).unwrap_or_default();
        let crop = Arc::new(FaceCrop { rgb: r.crop.clone(), side: CROP_SIDE as u32, quality: r.quality, context: None });
        bus.publish(&TrackUpdate::Matched(Arc::new(super::decision::TrackMatch {
            camera: r.camera.clone(),
            track: r.track,
            bbox: r.bbox,
            quality: r.quality,
            captured_instant: r.captured_instant,
            matches,
            crop,
        })));
    }
    if r.quality < cfg.quality_floor {
        // Too small, blurred or turned away to vote; kept with the track for the applications.
        return None;
    }
    // The track's quality-weighted mean embedding (or this one alone) is what is compared.
    let query = if cfg.aggregate {
        if st.weighted.is_empty() {
            st.weighted = vec![0.0; embedding.len()];
        }
        let w = r.quality.max(1e-3);
        for (a, b) in st.weighted.iter_mut().zip(&embedding) {
            *a += w * b;
        }
        crate::embed::normalized(&st.weighted)
    } else {
        embedding
    };
    let started = Instant::now();
    let matches = match gallery.read() {
        Ok(g) => g.search(&query, 2),
        Err(_) => {
            tracing::error!("gallery lock poisoned; the embedding is not identified");
            return None;
        }
    };
    m.stage_seconds.with_label_values(&["identify"]).observe(started.elapsed().as_secs_f64());
    let d = st.vote.add(&matches, point.threshold, cfg)?;
    let latency = r.captured_instant.elapsed().as_secs_f64();
    m.capture_to_event.with_label_values(&[&r.camera]).observe(latency);
    let outcome = if d.person.is_some() { "known" } else { "unknown" };
    m.identifications.with_label_values(&[&r.camera, outcome]).inc();
    Some(TrackDecision {
        camera: r.camera,
        track: r.track,
        first_seen: st.started,
        person: d.person,
        nearest: d.nearest.map(|(id, name, _)| (id, name)),
        distance: d.distance,
        threshold: point.threshold,
        votes: d.votes,
        bbox: r.bbox,
        at: SystemTime::now(),
        latency_s: latency,
        embeddings: st.embeddings.clone(),
        best_crop: st.best_crop.clone(),
    })
}

fn finish(key: &(Arc<str>, u64), st: TrackState, bus: &mut Bus<TrackUpdate>) {
    let Some(ended) = st.ended else { return };
    bus.publish(&TrackUpdate::Ended(Arc::new(TrackEnd {
        camera: key.0.clone(),
        track: key.1,
        person: st.vote.person().cloned(),
        first_seen: ended.first_seen,
        last_seen: ended.last_seen,
        frames: ended.frames,
        embeddings: st.vote.embeddings,
        best_distance: st.vote.best_distance,
        faces: st.embeddings.into_iter().zip(st.qualities).collect(),
        best_crop: st.best_crop,
    })));
}
