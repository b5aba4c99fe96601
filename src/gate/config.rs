//! `[[gates]]` and `[gate_log]`: every key documented, every value checked before start.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::schedule::{Window, parse_hhmm};

/// What a gate does when two or more faces are in its zone at the decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tailgating {
    /// Grant as usual, with `tailgating: true` in the decision (default).
    #[default]
    Flag,
    /// Deny (reason `tailgating`).
    Deny,
}

/// One access-control gate: a camera, a zone in it, who may pass when, and how sure it must be.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// Names the gate in events, metrics, the audit log and the command topic.
    pub id: String,
    /// The `[[cameras]]` id that watches the door.
    pub camera: String,
    /// Polygon in normalised image coordinates (0..1, x right, y down), at least 3 points;
    /// default: the whole frame. A face counts when its box centre is inside.
    #[serde(default)]
    pub zone: Option<Vec<[f32; 2]>>,
    /// Smallest face (the shorter side of its box, pixels) that counts: only someone close to
    /// the door is decided on.
    #[serde(default = "default_min_face")]
    pub min_face: f32,
    /// Persons allowed by name (at any time unless a schedule names them too).
    #[serde(default)]
    pub allow_persons: Vec<String>,
    /// Groups allowed (a person's `groups`, set with `facestream gallery groups` or the API).
    #[serde(default)]
    pub allow_groups: Vec<String>,
    /// When each group (or person) may pass; a group without an entry may pass at any time.
    #[serde(default)]
    pub schedules: Vec<ScheduleEntry>,
    /// IANA time zone of the schedules (e.g. "Europe/Berlin"); default the system's.
    #[serde(default)]
    pub timezone: Option<String>,
    /// False-accept target of this gate's per-embedding decision, looked up in the embedder's
    /// open-set calibration (stricter than monitoring is up to you; default 0.001).
    #[serde(default = "default_target_far")]
    pub target_far: f64,
    /// A fixed distance threshold instead of `target_far`.
    #[serde(default)]
    pub threshold: Option<f32>,
    /// The best person must be at least this much nearer than the second-best.
    #[serde(default = "default_margin")]
    pub margin: f32,
    /// Embeddings of the track that must name the same person (and none another) ...
    #[serde(default = "default_votes")]
    pub votes: u32,
    /// ... within this many seconds.
    #[serde(default = "default_window")]
    pub window_s: f32,
    /// Seconds between two embeddings of a face at the gate (0: every frame).
    #[serde(default)]
    pub embed_interval_s: f32,
    /// Most embeddings per track at the gate.
    #[serde(default = "default_max_embeddings")]
    pub max_embeddings: u32,
    /// A person granted here is not granted again within this many seconds.
    #[serde(default = "default_cooldown")]
    pub cooldown_s: f32,
    /// Two or more faces in the zone: "flag" (default) or "deny".
    #[serde(default)]
    pub tailgating: Tailgating,
    #[serde(default)]
    pub liveness: Option<LivenessConfig>,
    /// HMAC key of the signed commands (webhook and MQTT); or `secret_file`.
    #[serde(default)]
    pub secret: Option<String>,
    /// File holding the HMAC key (first line), relative to the config file.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// POST a signed `open` command here on every grant.
    #[serde(default)]
    pub webhook: Option<String>,
    #[serde(default)]
    pub mqtt: Option<GateMqtt>,
}

/// A window of days and hours in which a group (or a person) may pass.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleEntry {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub person: Option<String>,
    /// "mon".."sun"; empty: every day.
    #[serde(default)]
    pub days: Vec<String>,
    /// "HH:MM", local time of the gate's time zone; `to` before `from` crosses midnight.
    pub from: String,
    pub to: String,
}

/// Liveness at a gate: a passive anti-spoofing model on the face, and a motion check over the
/// track (a printed photo or a screen held still does not move like a head).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LivenessConfig {
    /// Run the passive anti-spoofing model (models/liveness.toml: Human's `liveness` graph).
    pub model: bool,
    /// Lowest mean "real" probability of the model over the sampled frames.
    pub model_min: f32,
    /// Frames of the face the model scores (spread over the track).
    pub model_frames: u32,
    /// Run the motion check.
    pub motion: bool,
    /// Lowest motion score (see `gate::liveness`): non-rigid landmark motion relative to the
    /// eye distance.
    pub motion_min: f32,
    /// Frames in the zone the motion check needs before it can pass.
    pub motion_frames: u32,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self { model: true, model_min: 0.5, model_frames: 3, motion: true, motion_min: 0.02, motion_frames: 10 }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateMqtt {
    pub host: String,
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// Default `facestream/gates/<id>/command`.
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

/// The gates' audit log (a table in the gallery store).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateLogConfig {
    /// Days a decision (with its evidence and face crop) is kept.
    pub keep_days: f64,
    /// Store the best face crop (JPEG) with each decision.
    pub crops: bool,
}

impl Default for GateLogConfig {
    fn default() -> Self {
        Self { keep_days: 90.0, crops: true }
    }
}

fn default_min_face() -> f32 {
    60.0
}
fn default_target_far() -> f64 {
    0.001
}
fn default_margin() -> f32 {
    0.05
}
fn default_votes() -> u32 {
    2
}
fn default_window() -> f32 {
    2.0
}
fn default_max_embeddings() -> u32 {
    40
}
fn default_cooldown() -> f32 {
    10.0
}
fn default_mqtt_port() -> u16 {
    1883
}

pub const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl GateConfig {
    /// Every problem as (key, message); `cameras`: the configured camera ids.
    pub fn problems(&self, cameras: &[&str]) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let mut bad = |k: &str, m: String| p.push((k.to_string(), m));
        if self.id.is_empty() || !self.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            bad("id", format!("must be letters, digits, - or _ (it names MQTT topics and metrics), got `{}`", self.id));
        }
        if !cameras.contains(&self.camera.as_str()) {
            bad("camera", format!("`{}` is not a configured camera (known: {})", self.camera, cameras.join(", ")));
        }
        if let Some(z) = &self.zone {
            if z.len() < 3 {
                bad("zone", format!("needs at least 3 points, got {}", z.len()));
            }
            if z.iter().flatten().any(|v| !(0.0..=1.0).contains(v)) {
                bad("zone", "points are normalised image coordinates: every value in [0, 1]".into());
            }
        }
        if !(8.0..=4096.0).contains(&self.min_face) {
            bad("min_face", format!("must be 8..=4096 pixels, got {}", self.min_face));
        }
        if self.allow_persons.is_empty() && self.allow_groups.is_empty() {
            bad("allow_persons", "the gate allows nobody: list persons in allow_persons or groups in allow_groups".into());
        }
        if !(1e-6..=0.1).contains(&self.target_far) {
            bad("target_far", format!("must be in [1e-6, 0.1], got {}", self.target_far));
        }
        if let Some(t) = self.threshold.filter(|t| !(0.0..=2.0).contains(t)) {
            bad("threshold", format!("must be in [0, 2] (distance between unit vectors), got {t}"));
        }
        if !(0.0..=1.0).contains(&self.margin) {
            bad("margin", format!("must be in [0, 1], got {}", self.margin));
        }
        if !(1..=50).contains(&self.votes) {
            bad("votes", format!("must be 1..=50, got {}", self.votes));
        }
        if !(0.1..=60.0).contains(&self.window_s) {
            bad("window_s", format!("must be 0.1..=60 seconds, got {}", self.window_s));
        }
        if !(0.0..=10.0).contains(&self.embed_interval_s) {
            bad("embed_interval_s", format!("must be 0..=10 seconds, got {}", self.embed_interval_s));
        }
        if self.max_embeddings < self.votes || self.max_embeddings > 1000 {
            bad("max_embeddings", format!("must be votes..=1000, got {}", self.max_embeddings));
        }
        if !(0.0..=86_400.0).contains(&self.cooldown_s) {
            bad("cooldown_s", format!("must be 0..=86400 seconds, got {}", self.cooldown_s));
        }
        if let Some(tz) = &self.timezone
            && jiff::tz::TimeZone::get(tz).is_err() {
                bad("timezone", format!("`{tz}` is not an IANA time zone (e.g. Europe/Berlin, UTC)"));
            }
        let more = self.schedule_and_liveness_problems();
        for (k, m) in more {
            bad(&k, m);
        }
        if self.secret.is_some() && self.secret_file.is_some() {
            bad("secret", "set `secret` or `secret_file`, not both".into());
        }
        if (self.webhook.is_some() || self.mqtt.is_some()) && self.secret.is_none() && self.secret_file.is_none() {
            bad("secret", "commands are signed: set `secret` or `secret_file` for the webhook/MQTT command".into());
        }
        if let Some(s) = self.secret.as_ref().filter(|s| s.len() < 16) {
            bad("secret", format!("must be at least 16 characters, got {}", s.len()));
        }
        if let Some(w) = &self.webhook
            && !(w.starts_with("http://") || w.starts_with("https://")) {
                bad("webhook", format!("must be an http:// or https:// URL, got `{w}`"));
            }
        if let Some(m) = &self.mqtt
            && m.host.is_empty() {
                bad("mqtt.host", "must be set".into());
            }
        p
    }

    fn schedule_and_liveness_problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let mut bad = |k: &str, m: String| p.push((k.to_string(), m));
        for (i, s) in self.schedules.iter().enumerate() {
            let k = format!("schedules[{i}]");
            match (&s.group, &s.person) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => bad(&k, "needs exactly one of `group` or `person`".into()),
            }
            for d in &s.days {
                if !DAYS.contains(&d.as_str()) {
                    bad(&format!("{k}.days"), format!("`{d}` is not one of {}", DAYS.join(", ")));
                }
            }
            for (key, v) in [("from", &s.from), ("to", &s.to)] {
                if parse_hhmm(v).is_none() {
                    bad(&format!("{k}.{key}"), format!("must be HH:MM (00:00..24:00), got `{v}`"));
                }
            }
        }
        if let Some(l) = &self.liveness {
            if !l.model && !l.motion {
                bad("liveness", "turns both checks off: set model or motion to true, or remove [gates.liveness]".into());
            }
            if !(0.0..=1.0).contains(&l.model_min) {
                bad("liveness.model_min", format!("must be in [0, 1], got {}", l.model_min));
            }
            if !(1..=30).contains(&l.model_frames) {
                bad("liveness.model_frames", format!("must be 1..=30, got {}", l.model_frames));
            }
            if !(0.0..=1.0).contains(&l.motion_min) {
                bad("liveness.motion_min", format!("must be in [0, 1], got {}", l.motion_min));
            }
            if !(3..=300).contains(&l.motion_frames) {
                bad("liveness.motion_frames", format!("must be 3..=300, got {}", l.motion_frames));
            }
        }
        p
    }

    /// The HMAC key: `secret`, or the first line of `secret_file` (relative to `base`).
    pub fn secret(&self, base: &Path) -> Result<Option<String>, String> {
        if let Some(s) = &self.secret {
            return Ok(Some(s.clone()));
        }
        let Some(f) = &self.secret_file else { return Ok(None) };
        let path = if f.is_absolute() { f.clone() } else { base.join(f) };
        let text = std::fs::read_to_string(&path).map_err(|e| format!("gate `{}`: cannot read secret_file {}: {e}", self.id, path.display()))?;
        let key = text.lines().next().unwrap_or("").trim().to_string();
        if key.len() < 16 {
            return Err(format!("gate `{}`: the key in {} must be at least 16 characters", self.id, path.display()));
        }
        Ok(Some(key))
    }

    /// The MQTT command topic.
    pub fn command_topic(&self) -> Option<String> {
        self.mqtt.as_ref().map(|m| m.topic.clone().unwrap_or_else(|| format!("facestream/gates/{}/command", self.id)))
    }

    /// The schedule windows of a group or person (by name).
    pub fn windows_for(&self, group: Option<&str>, person: Option<&str>) -> Vec<Window> {
        self.schedules
            .iter()
            .filter(|s| (group.is_some() && s.group.as_deref() == group) || (person.is_some() && s.person.as_deref() == person))
            .filter_map(Window::from_entry)
            .collect()
    }
}

impl GateLogConfig {
    pub fn problems(&self) -> Vec<(String, String)> {
        if (0.0..=3650.0).contains(&self.keep_days) && self.keep_days > 0.0 {
            Vec::new()
        } else {
            vec![("keep_days".into(), format!("must be in (0, 3650] days, got {}", self.keep_days))]
        }
    }
}
