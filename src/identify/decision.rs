//! What the identify stage publishes on the decisions bus: a track's start, each identity
//! decision (with the embeddings and the best face crop it rests on), the track's end, and camera
//! state changes. Applications (event sinks today; gates, visits, clustering, harvest next)
//! subscribe to these and never reach into a stage.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::detect::BBox;
use crate::embed::Embedding;
use crate::gallery::Match;
use crate::ingest::CameraState;

/// One message on the decisions bus (cheap to clone: the big parts are shared).
#[derive(Clone, Debug)]
pub enum TrackUpdate {
    Started(Arc<TrackStart>),
    Decided(Arc<TrackDecision>),
    Ended(Arc<TrackEnd>),
    /// Observed cameras only (those a gate watches): the track's face in one frame, from its
    /// first (still tentative) frame on, with the frame itself.
    Seen(Arc<TrackSeen>),
    /// Observed cameras only: one embedding of the track and its nearest persons (before the
    /// track's vote), so an application can apply a stricter rule of its own.
    Matched(Arc<TrackMatch>),
    Camera { camera: Arc<str>, state: CameraState, error: Option<String> },
}

#[derive(Clone, Debug)]
pub struct TrackStart {
    pub camera: Arc<str>,
    pub track: u64,
    pub bbox: BBox,
    pub score: f32,
    pub at: SystemTime,
}

pub use crate::track::stage::TrackSeen;

/// One embedding of a track on an observed camera, looked up in the gallery on its own.
#[derive(Clone, Debug)]
pub struct TrackMatch {
    pub camera: Arc<str>,
    pub track: u64,
    pub bbox: BBox,
    pub quality: f32,
    pub captured_instant: Instant,
    /// The two nearest persons for this embedding alone, nearest first.
    pub matches: Vec<Match>,
    pub crop: Arc<FaceCrop>,
}

/// A face crop as the embedder saw it (aligned, `CROP_SIDE` square, packed RGB).
#[derive(Clone, Debug)]
pub struct FaceCrop {
    pub rgb: Vec<u8>,
    pub side: u32,
    pub quality: f32,
    /// The frame around it (small, face outlined), when best shots are kept.
    pub context: Option<Arc<crate::image::RgbImage>>,
}

/// The track's identity was decided (a person, or unknown).
#[derive(Clone, Debug)]
pub struct TrackDecision {
    pub camera: Arc<str>,
    pub track: u64,
    /// When the track started (with camera and track: its best shot's id).
    pub first_seen: SystemTime,
    /// None: unknown.
    pub person: Option<(u64, String)>,
    /// Distance of the deciding match (for unknown: of the nearest person).
    pub distance: f32,
    /// For unknown: the nearest person (not a name given to the face; for tuning).
    pub nearest: Option<(u64, String)>,
    pub threshold: f32,
    pub votes: u32,
    pub bbox: BBox,
    pub at: SystemTime,
    /// Seconds from the capture of the deciding frame to the decision.
    pub latency_s: f64,
    /// Every embedding of the track so far, oldest first.
    pub embeddings: Vec<Embedding>,
    /// The best-quality crop of the track so far.
    pub best_crop: Option<Arc<FaceCrop>>,
}

/// The track ended; `person` is its final identity.
#[derive(Clone, Debug)]
pub struct TrackEnd {
    pub camera: Arc<str>,
    pub track: u64,
    pub person: Option<(u64, String)>,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    pub frames: u64,
    pub embeddings: u32,
    pub best_distance: Option<f32>,
    /// The track's embeddings with their quality, oldest first (for applications that remember
    /// faces: visitors).
    pub faces: Vec<(Embedding, f32)>,
    /// The best-quality crop of the track.
    pub best_crop: Option<Arc<FaceCrop>>,
}

/// The id of a track's best shot (`/api/snapshots/{id}`): `<camera>-<track>-<start ms>`, unique
/// across restarts (track numbers start again, start times do not).
pub fn snapshot_id(camera: &str, track: u64, first_seen: SystemTime) -> String {
    let ms = first_seen.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    format!("{camera}-{track}-{ms}")
}

impl TrackUpdate {
    pub fn camera(&self) -> &str {
        match self {
            TrackUpdate::Started(s) => &s.camera,
            TrackUpdate::Decided(d) => &d.camera,
            TrackUpdate::Ended(e) => &e.camera,
            TrackUpdate::Seen(s) => &s.camera,
            TrackUpdate::Matched(m) => &m.camera,
            TrackUpdate::Camera { camera, .. } => camera,
        }
    }
}
