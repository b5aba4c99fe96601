//! The events application on the decisions bus: each track update becomes an identity event
//! (`track_started`, `identified`, `track_ended`, `camera_state`) handed to every sink. Sent and
//! failed deliveries are counted per sink; a failing sink never stops the others.

use crossbeam_channel::Receiver;

use super::{Event, EventBody, EventSink, SendError, UNKNOWN, rfc3339};
use crate::detect::BBox;
use crate::identify::TrackUpdate;
use crate::queue::PushError;
use crate::telemetry::metrics;

/// The event for one update; `None` for camera states when they are not wanted and for the
/// observed cameras' per-frame and per-embedding updates (they are for applications).
pub fn to_event(update: &TrackUpdate, camera_states: bool, snapshots: bool) -> Option<Event> {
    use crate::identify::decision::snapshot_id;
    let track_id = |camera: &str, id: u64| format!("{camera}-{id}");
    Some(match update {
        TrackUpdate::Seen(_) | TrackUpdate::Matched(_) => return None,
        TrackUpdate::Camera { camera, state, error } => {
            if !camera_states {
                return None;
            }
            Event::new(camera, std::time::SystemTime::now(), EventBody::CameraState { state: state.as_str().to_string(), error: error.clone() })
        }
        TrackUpdate::Started(s) => Event::new(&s.camera, s.at, EventBody::TrackStarted { track_id: track_id(&s.camera, s.track), bbox: bbox_arr(&s.bbox), score: s.score }),
        TrackUpdate::Decided(d) => Event::new(
            &d.camera,
            d.at,
            EventBody::Identified {
                track_id: track_id(&d.camera, d.track),
                person: d.person.as_ref().map(|p| p.1.clone()).unwrap_or_else(|| UNKNOWN.to_string()),
                person_id: d.person.as_ref().map(|p| p.0),
                score: similarity(d.distance),
                distance: d.distance,
                threshold: d.threshold,
                votes: d.votes,
                bbox: bbox_arr(&d.bbox),
                latency_s: d.latency_s,
                nearest_person: d.nearest.as_ref().map(|n| n.1.clone()),
                nearest_distance: d.nearest.as_ref().map(|_| d.distance),
                snapshot: snapshots.then(|| snapshot_id(&d.camera, d.track, d.first_seen)),
            },
        ),
        TrackUpdate::Ended(e) => Event::new(
            &e.camera,
            e.last_seen,
            EventBody::TrackEnded {
                track_id: track_id(&e.camera, e.track),
                person: e.person.as_ref().map(|p| p.1.clone()).unwrap_or_else(|| UNKNOWN.to_string()),
                person_id: e.person.as_ref().map(|p| p.0),
                first_seen: rfc3339(e.first_seen),
                last_seen: rfc3339(e.last_seen),
                frames: e.frames,
                embeddings: e.embeddings,
                best_score: e.best_distance.map(similarity),
                snapshot: (snapshots && e.best_crop.is_some()).then(|| snapshot_id(&e.camera, e.track, e.first_seen)),
            },
        ),
    })
}

/// Delivers every update, and every event the applications raise (gate decisions, ...), to
/// every sink until the bus and every application have closed.
/// `snapshots`: best shots are kept (events name them).
/// Runs until the bus and the applications' queue close; `node`: stamped on every event (in a
/// cluster).
pub fn run(rx: Receiver<TrackUpdate>, app_events: Receiver<Event>, mut sinks: Vec<Box<dyn EventSink>>, (camera_states, snapshots): (bool, bool), node: Option<String>) {
    let m = metrics();
    let mut deliver = |event: &Event| {
        let stamped;
        let event = match &node {
            Some(n) if event.node.is_none() => {
                stamped = Event { node: Some(n.clone()), ..event.clone() };
                &stamped
            }
            _ => event,
        };
        for s in sinks.iter_mut() {
            match s.send(event) {
                Ok(()) => m.events_sent.with_label_values(&[s.name()]).inc(),
                Err(SendError::Queue(PushError::Full)) if s.counts_own_drops() => {}
                Err(e) => m.events_failed.with_label_values(&[s.name(), e.reason()]).inc(),
            }
        }
    };
    let (mut bus_open, mut apps_open) = (true, true);
    while bus_open || apps_open {
        let mut sel = crossbeam_channel::Select::new();
        let bus_op = bus_open.then(|| sel.recv(&rx));
        let apps_op = apps_open.then(|| sel.recv(&app_events));
        let op = sel.select();
        if Some(op.index()) == bus_op {
            match op.recv(&rx) {
                Ok(update) => {
                    if let Some(event) = to_event(&update, camera_states, snapshots) {
                        deliver(&event);
                    }
                }
                Err(_) => bus_open = false,
            }
        } else if Some(op.index()) == apps_op {
            match op.recv(&app_events) {
                Ok(event) => deliver(&event),
                Err(_) => apps_open = false,
            }
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
