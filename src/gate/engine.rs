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
                if (t.landmarks.len() - 1).is_multiple_of(every)
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
            let ready = model_ready && motion_ready;
            if !ready && !ending {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Face;
    use crate::gallery::Match;

    fn gate(toml_extra: &str) -> GateConfig {
        toml::from_str(&format!("id = \"door\"\ncamera = \"cam\"\nallow_persons = [\"alice\"]\nallow_groups = [\"staff\"]\n{toml_extra}")).unwrap()
    }

    fn engine(extra: &str) -> GateEngine {
        let groups: Groups = Box::new(|_, name| if name == "bob" { vec!["staff".into()] } else { Vec::new() });
        GateEngine::new(gate(extra), 0.4, groups)
    }

    struct Clock(Instant);
    impl Clock {
        fn at(&self, ms: u64) -> Instant {
            self.0 + Duration::from_millis(ms)
        }
    }

    fn face(x: f32, side: f32, wiggle: f32) -> Face {
        let b = BBox { x1: x, y1: 100.0, x2: x + side, y2: 100.0 + side };
        let lm = |fx: f32, fy: f32| [x + fx * side, 100.0 + fy * side];
        Face { bbox: b, score: 0.999, landmarks: [lm(0.3, 0.4), lm(0.7, 0.4), lm(0.5 + wiggle, 0.6), lm(0.35, 0.8), lm(0.65, 0.8)] }
    }

    fn seen(track: u64, f: Face, at: Instant) -> TrackSeen {
        TrackSeen { camera: "cam".into(), track, face: f, frame: Arc::new(RgbImage::filled(640, 480, [0, 0, 0])), at: SystemTime::now(), captured_instant: at, faces_in_frame: 1 }
    }

    fn matched(track: u64, f: &Face, who: &[(u64, &str, f32)], at: Instant) -> TrackMatch {
        TrackMatch {
            camera: "cam".into(),
            track,
            bbox: f.bbox,
            quality: 0.8,
            captured_instant: at,
            matches: who.iter().map(|(id, n, d)| Match { person_id: *id, name: n.to_string(), distance: *d }).collect(),
            crop: Arc::new(FaceCrop { rgb: vec![0; 12], side: 2, quality: 0.8, context: None }),
        }
    }

    /// Feeds `n` frames of one face (seen + matched each frame); the decisions.
    fn pass(e: &mut GateEngine, track: u64, c: &Clock, start_ms: u64, n: u64, who: &[(u64, &str, f32)], scorer: &mut Option<Fixed>) -> Vec<GateDecision> {
        let mut out = Vec::new();
        for i in 0..n {
            let f = face(200.0, 100.0, if i % 2 == 0 { 0.0 } else { 0.03 });
            let t = c.at(start_ms + i * 50);
            out.extend(e.on_seen(&seen(track, f.clone(), t), scorer.as_mut().map(|s| s as &mut dyn SpoofScorer)));
            out.extend(e.on_matched(&matched(track, &f, who, t), 640, 480, SystemTime::now()));
        }
        out
    }

    struct Fixed(f32);
    impl SpoofScorer for Fixed {
        fn score(&mut self, _: &RgbImage, _: &BBox) -> Option<f32> {
            Some(self.0)
        }
    }

    const ALICE: &[(u64, &str, f32)] = &[(1, "alice", 0.2), (2, "bob", 0.7)];

    #[test]
    fn an_allowed_person_is_granted_once_after_the_votes_and_cooldown_holds() {
        let c = Clock(Instant::now());
        let mut e = engine("");
        let d = pass(&mut e, 1, &c, 0, 10, ALICE, &mut None);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!((d[0].outcome, d[0].person.as_ref().unwrap().1.as_str(), d[0].evidence.votes), (Outcome::Granted, "alice", 2));
        // The same person as a new track a moment later: within the cooldown, nothing.
        assert!(pass(&mut e, 2, &c, 1000, 10, ALICE, &mut None).is_empty());
        // After the cooldown (10 s): granted again.
        assert_eq!(pass(&mut e, 3, &c, 12_000, 10, ALICE, &mut None).len(), 1);
    }

    #[test]
    fn groups_names_and_strangers() {
        let c = Clock(Instant::now());
        let mut e = engine("");
        let bob = &[(2, "bob", 0.2), (1, "alice", 0.7)];
        assert_eq!(pass(&mut e, 1, &c, 0, 5, bob, &mut None)[0].outcome, Outcome::Granted, "bob is in the staff group");
        let carol = &[(3, "carol", 0.2), (1, "alice", 0.7)];
        let d = pass(&mut e, 2, &c, 0, 5, carol, &mut None);
        assert_eq!((d[0].outcome, d[0].reason), (Outcome::Denied, Some(Reason::NotAllowed)));
        let stranger = &[(1, "alice", 0.55), (2, "bob", 0.7)];
        let d = pass(&mut e, 3, &c, 0, 20, stranger, &mut None);
        assert_eq!(d.len(), 1, "denied once, never granted: {d:?}");
        assert_eq!((d[0].outcome, d[0].reason, d[0].person.clone()), (Outcome::Denied, Some(Reason::Unknown), None));
        assert_eq!(d[0].evidence.nearest.as_deref(), Some("alice"), "the nearest person is evidence, not a name");
    }

    #[test]
    fn disagreeing_embeddings_are_not_a_grant() {
        let c = Clock(Instant::now());
        let mut e = engine("");
        let f = face(200.0, 100.0, 0.0);
        let mut d = Vec::new();
        for (i, who) in [ALICE, &[(2, "bob", 0.2), (1, "alice", 0.7)]].iter().cycle().take(6).enumerate() {
            let t = c.at(i as u64 * 50);
            e.on_seen(&seen(1, f.clone(), t), None);
            d.extend(e.on_matched(&matched(1, &f, who, t), 640, 480, SystemTime::now()));
        }
        assert!(d.iter().all(|d| d.outcome != Outcome::Granted), "{d:?}");
    }

    #[test]
    fn small_faces_and_faces_outside_the_zone_do_not_count() {
        let e = engine("min_face = 80\nzone = [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]");
        assert!(!e.counts(&face(400.0, 60.0, 0.0).bbox, 640, 480), "too small");
        assert!(!e.counts(&face(50.0, 100.0, 0.0).bbox, 640, 480), "left half");
        assert!(e.counts(&face(400.0, 100.0, 0.0).bbox, 640, 480));
    }

    #[test]
    fn outside_the_schedule_is_denied() {
        let c = Clock(Instant::now());
        // A window that is never now: one minute long, twelve hours away.
        let now = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC);
        let h = (now.hour() as u32 + 12) % 24;
        let mut e = engine(&format!("timezone = \"UTC\"\n[[schedules]]\ngroup = \"staff\"\nfrom = \"{h:02}:00\"\nto = \"{h:02}:01\"\n"));
        e.cfg.allow_persons.clear();
        let bob = &[(2, "bob", 0.2), (1, "alice", 0.7)];
        let d = pass(&mut e, 1, &c, 0, 5, bob, &mut None);
        assert_eq!((d[0].outcome, d[0].reason), (Outcome::Denied, Some(Reason::Schedule)));
    }

    #[test]
    fn liveness_waits_for_evidence_and_refuses_a_spoof() {
        let c = Clock(Instant::now());
        let mut e = engine("[liveness]\nmotion = false\nmodel_frames = 2\nmotion_frames = 4\n");
        let d = pass(&mut e, 1, &c, 0, 10, ALICE, &mut Some(Fixed(0.9)));
        assert_eq!(d[0].outcome, Outcome::Granted);
        assert_eq!(d[0].evidence.antispoof, Some(0.9));
        let d = pass(&mut e, 2, &c, 20_000, 10, ALICE, &mut Some(Fixed(0.1)));
        assert_eq!((d[0].outcome, d[0].reason), (Outcome::Denied, Some(Reason::Liveness)));
        // Motion on: a face that never moves is refused.
        let mut e = engine("[liveness]\nmodel = false\nmotion_frames = 4\n");
        let f = face(200.0, 100.0, 0.0);
        let mut d = Vec::new();
        for i in 0..10 {
            let t = c.at(i * 50);
            d.extend(e.on_seen(&seen(1, f.clone(), t), None));
            d.extend(e.on_matched(&matched(1, &f, ALICE, t), 640, 480, SystemTime::now()));
        }
        assert_eq!((d[0].outcome, d[0].reason), (Outcome::Denied, Some(Reason::Liveness)), "{d:?}");
    }

    #[test]
    fn a_second_face_in_the_zone_is_tailgating() {
        let c = Clock(Instant::now());
        for (policy, outcome) in [("flag", Outcome::Granted), ("deny", Outcome::Denied)] {
            let mut e = engine(&format!("tailgating = \"{policy}\""));
            let mut d = Vec::new();
            for i in 0..6 {
                let t = c.at(i * 50);
                e.on_seen(&seen(7, face(20.0, 100.0, 0.0), t), None);
                let f = face(300.0, 100.0, 0.0);
                d.extend(e.on_seen(&seen(1, f.clone(), t), None));
                d.extend(e.on_matched(&matched(1, &f, ALICE, t), 640, 480, SystemTime::now()));
            }
            assert_eq!((d[0].outcome, d[0].tailgating, d[0].evidence.faces_in_zone), (outcome, true, 2), "{policy}");
        }
    }
}
