//! One gate's decision rule, on the decisions bus updates of its camera. Pure (no threads, no
//! I/O beyond the liveness scorer and the group lookup it is given), so every rule is unit-tested.
//!
//! A track's face counts at the gate when its box centre is inside the zone and its shorter side
//! is at least `min_face` pixels. Each embedding of a counting face is looked up on its own and
//! decided with the gate's threshold and margin; the gate grants person P when at least `votes`
//! embeddings within `window_s` name P and none names anyone else, P may pass (by name or group,
//! within the schedule), liveness (when on) passed, and P was not granted within `cooldown_s`.
//! Denials: `unknown` (`votes` embeddings in the window named nobody; the track may still be
//! granted later), `not_allowed`, `schedule`, `liveness`, `tailgating` (with `tailgating = "deny"`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::config::{GateConfig, Tailgating};
use super::schedule::Window;
use crate::detect::BBox;
use crate::identify::decision::{FaceCrop, TrackMatch, TrackSeen};
use crate::image::RgbImage;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Granted,
    Denied,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Unknown,
    NotAllowed,
    Schedule,
    Liveness,
    Tailgating,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Granted => "granted",
            Outcome::Denied => "denied",
        }
    }
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unknown => "unknown",
            Reason::NotAllowed => "not_allowed",
            Reason::Schedule => "schedule",
            Reason::Liveness => "liveness",
            Reason::Tailgating => "tailgating",
        }
    }
}

/// What a decision rests on.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Evidence {
    /// Distances of the agreeing embeddings (or, for unknown, of each embedding's nearest person).
    pub distances: Vec<f32>,
    pub threshold: f32,
    pub margin: f32,
    pub votes: u32,
    pub votes_needed: u32,
    /// The nearest person of an unknown face (NOT a name given to it; for tuning).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nearest: Option<String>,
    pub faces_in_zone: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub antispoof: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub motion: Option<f32>,
}

#[derive(Clone, Debug)]
pub struct GateDecision {
    pub gate: String,
    pub camera: Arc<str>,
    pub track: u64,
    pub outcome: Outcome,
    pub reason: Option<Reason>,
    pub person: Option<(u64, String)>,
    pub tailgating: bool,
    pub evidence: Evidence,
    /// Seconds from the first frame in which the face counted at the gate to this decision.
    pub latency_s: f64,
    pub at: SystemTime,
    pub crop: Option<Arc<FaceCrop>>,
}

/// Scores how likely a face is real (0..1); the anti-spoofing model in production.
pub trait SpoofScorer {
    fn score(&mut self, frame: &RgbImage, bbox: &BBox) -> Option<f32>;
}

/// A person's groups (from the store's metadata and the config's people).
pub type Groups = Box<dyn FnMut(u64, &str) -> Vec<String> + Send>;

struct Vote {
    at: Instant,
    person: Option<(u64, String)>,
    distance: f32,
    nearest: Option<String>,
}

#[derive(Default)]
struct GateTrack {
    first_counted: Option<Instant>,
    last_counted: Option<Instant>,
    last_seen: Option<Instant>,
    landmarks: Vec<[[f32; 2]; 5]>,
    antispoof: Vec<f32>,
    votes: VecDeque<Vote>,
    embeddings_counted: u32,
    best_crop: Option<Arc<FaceCrop>>,
    done: bool,
    denied_unknown: bool,
    /// A person the identity rule accepted, waiting for liveness evidence.
    pending: Option<(u64, String)>,
}

/// One gate's state.
pub struct GateEngine {
    pub cfg: GateConfig,
    pub threshold: f32,
    tz: jiff::tz::TimeZone,
    tracks: HashMap<u64, GateTrack>,
    granted_at: HashMap<u64, Instant>,
    groups: Groups,
}

/// Most landmark frames kept per track for the motion check.
const MAX_LANDMARK_FRAMES: usize = 300;
/// Tracks not seen for this long are forgotten (tentative tracks never get an end).
const FORGET_AFTER: Duration = Duration::from_secs(10);
/// Two faces count as in the zone together when seen within this much of each other.
const TOGETHER: Duration = Duration::from_millis(500);

impl GateEngine {
    pub fn new(cfg: GateConfig, threshold: f32, groups: Groups) -> Self {
        let tz = super::schedule::time_zone(cfg.timezone.as_deref());
        Self { cfg, threshold, tz, tracks: HashMap::new(), granted_at: HashMap::new(), groups }
    }

    /// Whether a face (box in a frame of `width` x `height`) counts at this gate.
    pub fn counts(&self, bbox: &BBox, width: u32, height: u32) -> bool {
        if bbox.width().min(bbox.height()) < self.cfg.min_face {
            return false;
        }
        let (cx, cy) = bbox.center();
        let (x, y) = (cx / width.max(1) as f32, cy / height.max(1) as f32);
        match &self.cfg.zone {
            Some(z) => super::zone::contains(z, x, y),
            None => (0.0..=1.0).contains(&x) && (0.0..=1.0).contains(&y),
        }
    }

    /// A track's face in one frame.
    pub fn on_seen(&mut self, s: &TrackSeen, scorer: Option<&mut dyn SpoofScorer>) -> Option<GateDecision> {
        self.forget_old(s.captured_instant);
        let counts = self.counts(&s.face.bbox, s.frame.width, s.frame.height);
        let liveness = self.cfg.liveness.clone();
        let t = self.tracks.entry(s.track).or_default();
        t.last_seen = Some(s.captured_instant);
        if !counts || t.done {
            return None;
        }
        t.first_counted.get_or_insert(s.captured_instant);
        t.last_counted = Some(s.captured_instant);
        if t.landmarks.len() < MAX_LANDMARK_FRAMES {
            t.landmarks.push(s.face.landmarks);
        }
        if let (Some(l), Some(scorer)) = (&liveness, scorer)
            && l.model && (t.antispoof.len() as u32) < l.model_frames {
                // Spread the model's frames over the frames the motion check looks at.
                let every = (l.motion_frames / l.model_frames).max(1) as usize;
                if (t.landmarks.len() - 1) % every == 0
                    && let Some(p) = scorer.score(&s.frame, &s.face.bbox) {
                        t.antispoof.push(p);
                    }
            }
        if t.pending.is_some() {
            return self.evaluate(&s.camera, s.track, s.captured_instant, s.at, false);
        }
        None
    }

    /// One embedding of a track, with its own nearest persons.
    pub fn on_matched(&mut self, m: &TrackMatch, width: u32, height: u32, at: SystemTime) -> Option<GateDecision> {
        let counts = self.counts(&m.bbox, width, height);
        let (threshold, margin, window) = (self.threshold, self.cfg.margin, Duration::from_secs_f32(self.cfg.window_s));
        let t = self.tracks.entry(m.track).or_default();
        if t.done || !counts {
            return None;
        }
        let (person, distance) = crate::identify::decide(&m.matches, threshold, margin);
        let nearest = m.matches.first().map(|b| b.name.clone());
        t.votes.push_back(Vote { at: m.captured_instant, person, distance: distance.unwrap_or(f32::INFINITY), nearest });
        while t.votes.front().is_some_and(|v| m.captured_instant.saturating_duration_since(v.at) > window) {
            t.votes.pop_front();
        }
        t.embeddings_counted += 1;
        if t.best_crop.as_ref().is_none_or(|c| m.quality > c.quality) {
            t.best_crop = Some(m.crop.clone());
        }
        self.evaluate(&m.camera, m.track, m.captured_instant, at, false)
    }

    /// The track ended: a face that counted but was never decided is denied.
    pub fn on_ended(&mut self, camera: &Arc<str>, track: u64, at: SystemTime) -> Option<GateDecision> {
        let now = self.tracks.get(&track).and_then(|t| t.last_seen).unwrap_or_else(Instant::now);
        let d = self.evaluate(camera, track, now, at, true);
        self.tracks.remove(&track);
        d
    }

    fn forget_old(&mut self, now: Instant) {
        self.tracks.retain(|_, t| t.last_seen.is_none_or(|s| now.saturating_duration_since(s) < FORGET_AFTER));
    }

    /// Faces counting at the gate around `now` (this track included).
    fn faces_in_zone(&self, now: Instant) -> usize {
        self.tracks.values().filter(|t| t.last_counted.is_some_and(|c| now.saturating_duration_since(c) <= TOGETHER && c.saturating_duration_since(now) <= TOGETHER)).count()
    }

    fn may_pass(&mut self, id: u64, name: &str, at: SystemTime) -> Result<(), Reason> {
        let by_name = self.cfg.allow_persons.iter().any(|p| p == name);
        let groups: Vec<String> = (self.groups)(id, name).into_iter().filter(|g| self.cfg.allow_groups.contains(g)).collect();
        if !by_name && groups.is_empty() {
            return Err(Reason::NotAllowed);
        }
        let open = |w: Vec<Window>| w.is_empty() || w.iter().any(|w| w.contains(at, &self.tz));
        let now_ok = (by_name && open(self.cfg.windows_for(None, Some(name)))) || groups.iter().any(|g| open(self.cfg.windows_for(Some(g), None)));
        if now_ok { Ok(()) } else { Err(Reason::Schedule) }
    }

    fn evaluate(&mut self, camera: &Arc<str>, track: u64, now: Instant, at: SystemTime, ending: bool) -> Option<GateDecision> {
        let needed = self.cfg.votes as usize;
        let faces = self.faces_in_zone(now);
        let liveness = self.cfg.liveness.clone();
        let t = self.tracks.get(&track)?;
        if t.done {
            return None;
        }
        let first = t.first_counted?;
        // The identity rule: `votes` embeddings in the window name P, none names another.
        let named: Vec<(u64, String, f32)> = t.votes.iter().filter_map(|v| v.person.as_ref().map(|p| (p.0, p.1.clone(), v.distance))).collect();
        let candidate = match named.last() {
            Some((id, name, _)) if named.len() >= needed && named.iter().all(|v| v.0 == *id) => Some((*id, name.clone())),
            _ => t.pending.clone(),
        };
        let motion = liveness.as_ref().filter(|l| l.motion).and_then(|_| super::liveness::motion_score(&t.landmarks));
        let antispoof = (!t.antispoof.is_empty()).then(|| t.antispoof.iter().sum::<f32>() / t.antispoof.len() as f32);
        let (t_landmarks, t_scores) = (t.landmarks.len() as u32, t.antispoof.len() as u32);
        let unknown_distances: Vec<f32> = t.votes.iter().map(|v| v.distance).filter(|d| d.is_finite()).collect();
        let (n_votes, embeddings_counted, denied_unknown) = (t.votes.len(), t.embeddings_counted, t.denied_unknown);
        let nearest = t.votes.back().and_then(|v| v.nearest.clone());
        let crop = t.best_crop.clone();
        let mut evidence = Evidence {
            distances: Vec::new(),
            threshold: self.threshold,
            margin: self.cfg.margin,
            votes: 0,
            votes_needed: self.cfg.votes,
            nearest: None,
            faces_in_zone: faces,
            antispoof,
            motion,
        };
        let gate = self.cfg.id.clone();
        let decision = |outcome, reason, person, tailgating, evidence| GateDecision {
            gate: gate.clone(),
            camera: camera.clone(),
            track,
            outcome,
            reason,
            person,
            tailgating,
            evidence,
            latency_s: Instant::now().saturating_duration_since(first).as_secs_f64(),
            at,
            crop: crop.clone(),
        };
        let Some(person) = candidate else {
            let unknown = n_votes >= needed || (ending && embeddings_counted > 0);
            if denied_unknown || !unknown {
                return None;
            }
            evidence.distances = unknown_distances;
            evidence.votes = n_votes as u32;
            evidence.nearest = nearest;
            self.tracks.get_mut(&track)?.denied_unknown = true;
            return Some(decision(Outcome::Denied, Some(Reason::Unknown), None, false, evidence));
        };
        evidence.distances = named.iter().filter(|v| v.0 == person.0).map(|v| v.2).collect();
        evidence.votes = evidence.distances.len() as u32;
        let finish = |s: &mut Self, d: GateDecision| {
            if let Some(t) = s.tracks.get_mut(&track) {
                t.done = true;
                t.pending = None;
            }
            Some(d)
        };
        if let Err(reason) = self.may_pass(person.0, &person.1, at) {
            return finish(self, decision(Outcome::Denied, Some(reason), Some(person), false, evidence));
        }
        if let Some(l) = &liveness {
            let model_ready = !l.model || t_scores >= l.model_frames;
            let motion_ready = !l.motion || t_landmarks >= l.motion_frames;
            if !(model_ready && motion_ready) && !ending {
                if let Some(t) = self.tracks.get_mut(&track) {
                    t.pending = Some(person);
                }
                return None;
            }
            let model_ok = !l.model || antispoof.is_some_and(|p| p >= l.model_min);
            let motion_ok = !l.motion || motion.is_some_and(|m| m >= l.motion_min);
            if !(model_ok && motion_ok && model_ready && motion_ready) {
                return finish(self, decision(Outcome::Denied, Some(Reason::Liveness), Some(person), false, evidence));
            }
        }
        let tailgating = faces >= 2;
        if tailgating && self.cfg.tailgating == Tailgating::Deny {
            return finish(self, decision(Outcome::Denied, Some(Reason::Tailgating), Some(person), true, evidence));
        }
        let cooldown = Duration::from_secs_f32(self.cfg.cooldown_s);
        if self.granted_at.get(&person.0).is_some_and(|g| now.saturating_duration_since(*g) < cooldown) {
            // Granted moments ago (the same passage seen as a new track): not again.
            crate::telemetry::metrics().gate_decisions.with_label_values(&[&self.cfg.id, "suppressed", "cooldown"]).inc();
            finish(self, decision(Outcome::Granted, None, None, false, evidence.clone()));
            return None;
        }
        self.granted_at.insert(person.0, now);
        finish(self, decision(Outcome::Granted, None, Some(person), tailgating, evidence))
    }
}
