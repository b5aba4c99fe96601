//! The events application on the decisions bus: each track update becomes an identity event
//! (`track_started`, `identified`, `track_ended`, `camera_state`) handed to every sink. Sent and
//! failed deliveries are counted per sink; a failing sink never stops the others.

use crossbeam_channel::Receiver;

use super::{Event, EventBody, EventSink, SendError, UNKNOWN, rfc3339};
use crate::detect::BBox;
use crate::identify::TrackUpdate;
use crate::queue::PushError;
use crate::telemetry::metrics;

/// The event for one update; `None` for camera states when they are not wanted.
pub fn to_event(update: &TrackUpdate, camera_states: bool) -> Option<Event> {
    let track_id = |camera: &str, id: u64| format!("{camera}-{id}");
    Some(match update {
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
            },
        ),
    })
}

/// Delivers every update to every sink until the bus closes.
pub fn run(rx: Receiver<TrackUpdate>, mut sinks: Vec<Box<dyn EventSink>>, camera_states: bool) {
    let m = metrics();
    for update in rx {
        let Some(event) = to_event(&update, camera_states) else { continue };
        for s in sinks.iter_mut() {
            match s.send(&event) {
                Ok(()) => m.events_sent.with_label_values(&[s.name()]).inc(),
                Err(SendError::Queue(PushError::Full)) if s.counts_own_drops() => {}
                Err(e) => m.events_failed.with_label_values(&[s.name(), e.reason()]).inc(),
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
