//! Identity events (JSON lines with a schema version), the [`EventSink`] trait and every sink,
//! and the dispatcher: the events application on the decisions bus, which turns each track update
//! into an event and hands it to every sink.

pub mod dispatch;
pub mod sinks;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

/// Bumped when a field changes meaning or disappears (adding fields keeps the version).
pub const SCHEMA_VERSION: u32 = 1;

/// The name used for faces that match nobody in the gallery.
pub const UNKNOWN: &str = "unknown";

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventBody {
    /// A face track was confirmed (seen in `confirm_hits` frames).
    TrackStarted { track_id: String, bbox: [f32; 4], score: f32 },
    /// The track's identity was decided (a person, or `unknown`).
    Identified {
        track_id: String,
        person: String,
        person_id: Option<u64>,
        /// Cosine similarity of the deciding match (1 = identical).
        score: f32,
        /// Euclidean distance between unit embeddings (0..2), compared with `threshold`.
        distance: f32,
        threshold: f32,
        votes: u32,
        bbox: [f32; 4],
        /// Seconds from the capture of the deciding frame to this event.
        latency_s: f64,
        /// For `unknown`: the nearest enrolled person and their distance, for tuning (the face
        /// was NOT given that name).
        #[serde(skip_serializing_if = "Option::is_none")]
        nearest_person: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        nearest_distance: Option<f32>,
        /// The track's best shot (`/api/snapshots/{id}`, once the track ended), when kept.
        #[serde(skip_serializing_if = "Option::is_none")]
        snapshot: Option<String>,
    },
    /// The track ended (left the picture or the stream ended).
    TrackEnded {
        track_id: String,
        person: String,
        person_id: Option<u64>,
        first_seen: String,
        last_seen: String,
        frames: u64,
        embeddings: u32,
        best_score: Option<f32>,
        /// The track's best shot (`/api/snapshots/{id}`), when kept.
        #[serde(skip_serializing_if = "Option::is_none")]
        snapshot: Option<String>,
    },
    /// An unknown track was grouped into a visitor (a pseudonymous id, `visitor-<n>`).
    Visitor {
        track_id: String,
        visitor: String,
        /// First time this visitor was seen.
        new: bool,
        /// Distance of the track to the visitor's faces (none for a new visitor).
        distance: Option<f32>,
        /// Visitors merged into this one by this track (their ids now redirect here).
        merged: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        snapshot: Option<String>,
    },
    /// The camera changed state (connecting, streaming, backoff, failed, ended, stopped).
    CameraState { state: String, error: Option<String> },
    /// An access-control gate decided (see `gate`): granted, or denied with a reason.
    GateDecision {
        gate: String,
        track_id: String,
        /// "granted" or "denied".
        outcome: String,
        /// For denied: unknown, not_allowed, schedule, liveness, tailgating.
        reason: Option<String>,
        person: Option<String>,
        person_id: Option<u64>,
        /// Two or more faces were in the zone at the decision.
        tailgating: bool,
        /// Seconds from the first frame in which the face counted at the gate to the decision.
        latency_s: f64,
        /// Distances, votes, liveness scores.
        evidence: serde_json::Value,
        /// The audit log entry (`/api/gates/{gate}/log`), when the log is on.
        #[serde(skip_serializing_if = "Option::is_none")]
        log_id: Option<i64>,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub schema_version: u32,
    pub time: String,
    pub camera: String,
    /// The node that made the event (only in a cluster: track ids are per node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(flatten)]
    pub body: EventBody,
}

impl Event {
    pub fn new(camera: &str, at: SystemTime, body: EventBody) -> Self {
        Self { schema_version: SCHEMA_VERSION, time: rfc3339(at), camera: camera.to_string(), node: None, body }
    }

    pub fn kind(&self) -> &'static str {
        match self.body {
            EventBody::TrackStarted { .. } => "track_started",
            EventBody::Identified { .. } => "identified",
            EventBody::TrackEnded { .. } => "track_ended",
            EventBody::CameraState { .. } => "camera_state",
            EventBody::GateDecision { .. } => "gate_decision",
            EventBody::Visitor { .. } => "visitor",
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"event\":\"error\",\"error\":\"{e}\"}}"))
    }
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Where events go, as configured.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Print events as JSON lines on standard output.
    pub stdout: bool,
    /// Kinds printed on standard output (empty: every kind), e.g. ["gate_decision"].
    pub stdout_events: Vec<String>,
    /// Append events as JSON lines to this file (flushed per event).
    pub file: Option<PathBuf>,
    /// Rotate the event file when it grows past this many bytes (0 = never).
    pub file_max_bytes: u64,
    /// Rotated files to keep (events.jsonl.1 is the newest).
    pub file_keep: u32,
    /// Also emit camera_state events.
    pub camera_states: bool,
    /// POST each event as JSON to an HTTP endpoint.
    pub webhook: Option<sinks::WebhookConfig>,
    /// Publish each event to an MQTT broker.
    pub mqtt: Option<sinks::MqttConfig>,
    /// Publish each event to NATS JetStream (`<prefix>.<camera>.<event>`, de-duplicated by
    /// message id).
    pub nats: Option<sinks::NatsConfig>,
    /// Track updates waiting for the sinks (the events application's queue on the decisions
    /// bus); when full, updates are dropped and counted in `facestream_bus_dropped_total`.
    pub queue: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self { stdout: true, stdout_events: Vec::new(), file: None, file_max_bytes: 0, file_keep: 5, camera_states: true, webhook: None, mqtt: None, nats: None, queue: 4096 }
    }
}

/// A sink that writes JSON lines and flushes after each event, so nothing is lost on a crash.
/// A file sink can rotate by size.
pub struct JsonLines {
    name: &'static str,
    out: Box<dyn Write + Send>,
    rotate: Option<Rotation>,
    /// Kinds written (empty: all).
    kinds: Vec<String>,
}

struct Rotation {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    written: u64,
}

/// A sink could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{path}: cannot open event file: {error}")]
    File { path: PathBuf, error: std::io::Error },
    #[error("cannot start the {sink} sink's thread: {error}")]
    Thread { sink: &'static str, error: std::io::Error },
}

/// Why one event did not reach a sink (counted, never propagated into the pipeline).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Queue(#[from] crate::queue::PushError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl SendError {
    /// The `reason` label of `facestream_events_failed_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            SendError::Queue(e) => e.reason(),
            SendError::Io(_) => "error",
        }
    }
}

/// Somewhere events go: the configured sinks, the HTTP event stream, a test's channel.
pub trait EventSink: Send {
    fn name(&self) -> &'static str;
    /// Delivers one event; must not block for long (sinks that talk to other systems queue).
    fn send(&mut self, event: &Event) -> Result<(), SendError>;
    /// True when the sink's own queue already counted a drop it reports as `Full`.
    fn counts_own_drops(&self) -> bool {
        false
    }
}

impl EventSink for JsonLines {
    fn name(&self) -> &'static str {
        JsonLines::name(self)
    }
    fn send(&mut self, event: &Event) -> Result<(), SendError> {
        if !self.kinds.is_empty() && !self.kinds.iter().any(|k| k == event.kind()) {
            return Ok(());
        }
        Ok(self.write(&event.to_json())?)
    }
}

/// Sends events into a caller's bounded channel without ever blocking; a full channel loses the
/// event (counted as failed with reason `queue_full`).
pub struct ChannelSink {
    pub name: &'static str,
    pub tx: crossbeam_channel::Sender<Event>,
}

impl EventSink for ChannelSink {
    fn name(&self) -> &'static str {
        self.name
    }
    fn send(&mut self, event: &Event) -> Result<(), SendError> {
        use crate::queue::PushError;
        self.tx.try_send(event.clone()).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(_) => SendError::Queue(PushError::Full),
            crossbeam_channel::TrySendError::Disconnected(_) => SendError::Queue(PushError::Closed),
        })
    }
}

fn open_append(path: &Path) -> Result<(std::fs::File, u64), SinkError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|error| SinkError::File { path: path.to_path_buf(), error })?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|error| SinkError::File { path: path.to_path_buf(), error })?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((f, len))
}

impl JsonLines {
    pub fn stdout() -> Self {
        Self { name: "stdout", out: Box::new(std::io::stdout()), rotate: None, kinds: Vec::new() }
    }

    /// Writes only events of these kinds (empty: all).
    pub fn only(mut self, kinds: Vec<String>) -> Self {
        self.kinds = kinds;
        self
    }

    pub fn file(path: &Path) -> Result<Self, SinkError> {
        Self::rotating(path, 0, 0)
    }

    /// A file that is renamed to `<file>.1` (older ones shift up to `<file>.<keep>`) once it
    /// exceeds `max_bytes`; 0 disables rotation.
    pub fn rotating(path: &Path, max_bytes: u64, keep: u32) -> Result<Self, SinkError> {
        let (f, written) = open_append(path)?;
        let rotate = (max_bytes > 0).then(|| Rotation { path: path.to_path_buf(), max_bytes, keep: keep.max(1), written });
        Ok(Self { name: "file", out: Box::new(f), rotate, kinds: Vec::new() })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn write(&mut self, line: &str) -> std::io::Result<()> {
        if let Some(r) = &mut self.rotate {
            if r.written > 0 && r.written + line.len() as u64 + 1 > r.max_bytes {
                self.out.flush()?;
                let numbered = |n: u32| PathBuf::from(format!("{}.{n}", r.path.display()));
                let _ = std::fs::remove_file(numbered(r.keep));
                for n in (1..r.keep).rev() {
                    let _ = std::fs::rename(numbered(n), numbered(n + 1));
                }
                std::fs::rename(&r.path, numbered(1))?;
                let (f, _) = open_append(&r.path).map_err(|e| match e {
                    SinkError::File { error, .. } | SinkError::Thread { error, .. } => error,
                })?;
                self.out = Box::new(f);
                r.written = 0;
            }
            r.written += line.len() as u64 + 1;
        }
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_with_schema_and_kind() {
        let e = Event::new("door", SystemTime::UNIX_EPOCH, EventBody::TrackStarted { track_id: "door-1".into(), bbox: [1.0, 2.0, 3.0, 4.0], score: 0.99 });
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["schema_version"], SCHEMA_VERSION);
        assert_eq!(v["event"], "track_started");
        assert_eq!(v["camera"], "door");
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(e.kind(), "track_started");
    }

    #[test]
    fn file_sink_rotates_by_size_and_keeps_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut sink = JsonLines::rotating(&path, 100, 2).unwrap();
        for i in 0..10 {
            sink.write(&format!("{{\"n\":{i:020}}}")).unwrap();
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let cur = read(&path);
        let one = read(&dir.path().join("events.jsonl.1"));
        let two = read(&dir.path().join("events.jsonl.2"));
        assert!(cur.len() <= 100 && one.len() <= 100 && !two.is_empty());
        assert!(!dir.path().join("events.jsonl.3").exists(), "only `keep` rotated files");
        assert!(cur.ends_with("{\"n\":00000000000000000009}\n"), "{cur}");
    }
}
