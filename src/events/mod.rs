//! Identity events (JSON lines with a schema version) and the sinks that write them.

pub mod vote;

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
    },
    /// The camera changed state (connecting, streaming, backoff, failed, ended, stopped).
    CameraState { state: String, error: Option<String> },
}

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub schema_version: u32,
    pub time: String,
    pub camera: String,
    #[serde(flatten)]
    pub body: EventBody,
}

impl Event {
    pub fn new(camera: &str, at: SystemTime, body: EventBody) -> Self {
        Self { schema_version: SCHEMA_VERSION, time: rfc3339(at), camera: camera.to_string(), body }
    }

    pub fn kind(&self) -> &'static str {
        match self.body {
            EventBody::TrackStarted { .. } => "track_started",
            EventBody::Identified { .. } => "identified",
            EventBody::TrackEnded { .. } => "track_ended",
            EventBody::CameraState { .. } => "camera_state",
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
    /// Append events as JSON lines to this file (flushed per event).
    pub file: Option<PathBuf>,
    /// Also emit camera_state events.
    pub camera_states: bool,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self { stdout: true, file: None, camera_states: true }
    }
}

/// A sink that writes JSON lines and flushes after each event, so nothing is lost on a crash.
pub struct JsonLines {
    name: &'static str,
    out: Box<dyn Write + Send>,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: cannot open event file: {source}")]
pub struct SinkError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl JsonLines {
    pub fn stdout() -> Self {
        Self { name: "stdout", out: Box::new(std::io::stdout()) }
    }

    pub fn file(path: &Path) -> Result<Self, SinkError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| SinkError { path: path.to_path_buf(), source })?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| SinkError { path: path.to_path_buf(), source })?;
        Ok(Self { name: "file", out: Box::new(f) })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn write(&mut self, line: &str) -> std::io::Result<()> {
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
}
