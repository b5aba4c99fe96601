//! Multi-face tracking per camera, ByteTrack-style: a constant-velocity Kalman filter per track,
//! two-stage optimal assignment by IoU (high-score detections first, then low-score ones to the
//! tracks left over), tentative → confirmed after `confirm_hits`, ended after `max_age` missed frames.
//!
//! The tracker is deterministic: it sees only detections and a frame counter, never the clock.

mod assign;
pub mod config;
mod kalman;
pub mod quality;
pub mod stage;

pub use assign::assign;
pub use config::TrackConfig;

use crate::detect::{BBox, Face};
use kalman::BoxFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackState {
    Tentative,
    Confirmed,
}

#[derive(Clone, Debug)]
pub struct Track {
    pub id: u64,
    pub state: TrackState,
    filter: BoxFilter,
    pub hits: u32,
    /// Consecutive processed frames without a matching detection.
    pub missed: u32,
    pub first_frame: u64,
    pub last_frame: u64,
    /// The detection matched in the latest frame (None when missed).
    pub face: Option<Face>,
}

impl Track {
    pub fn predicted_box(&self) -> BBox {
        self.filter.bbox()
    }
}

/// What one frame did to the tracks.
#[derive(Debug, Default)]
pub struct FrameUpdate {
    /// Tracks confirmed in this frame (announce them).
    pub confirmed: Vec<u64>,
    /// (track id, detection index) for every confirmed track matched in this frame.
    pub matched: Vec<(u64, usize)>,
    /// Tracks that ended in this frame (only confirmed ones are reported).
    pub ended: Vec<Track>,
}

pub struct Tracker {
    cfg: TrackConfig,
    tracks: Vec<Track>,
    next_id: u64,
    frame: u64,
}

impl Tracker {
    pub fn new(cfg: TrackConfig) -> Self {
        Self { cfg, tracks: Vec::new(), next_id: 1, frame: 0 }
    }

    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    pub fn frame(&self) -> u64 {
        self.frame
    }

    /// Advances one processed frame with its detections.
    pub fn update(&mut self, dets: &[Face]) -> FrameUpdate {
        self.frame += 1;
        let mut out = FrameUpdate::default();
        for t in &mut self.tracks {
            t.filter.predict();
            t.face = None;
        }
        let high: Vec<usize> = (0..dets.len()).filter(|&i| dets[i].score >= self.cfg.high_score).collect();
        let low: Vec<usize> =
            (0..dets.len()).filter(|&i| dets[i].score >= self.cfg.low_score && dets[i].score < self.cfg.high_score).collect();

        // Stage 1: all tracks against high-score detections.
        let all_tracks: Vec<usize> = (0..self.tracks.len()).collect();
        let (m1, left_tracks, left_high) = self.match_sets(&all_tracks, &high, dets, self.cfg.match_iou);
        // Stage 2: remaining confirmed tracks against low-score detections.
        let confirmed_left: Vec<usize> =
            left_tracks.iter().copied().filter(|&t| self.tracks[t].state == TrackState::Confirmed).collect();
        let (m2, _, _) = self.match_sets(&confirmed_left, &low, dets, self.cfg.low_match_iou);

        let mut matched_tracks = vec![false; self.tracks.len()];
        for (t, d) in m1.into_iter().chain(m2) {
            matched_tracks[t] = true;
            let track = &mut self.tracks[t];
            track.filter.update(&dets[d].bbox);
            track.hits += 1;
            track.missed = 0;
            track.last_frame = self.frame;
            track.face = Some(dets[d].clone());
            if track.state == TrackState::Tentative && track.hits >= self.cfg.confirm_hits {
                track.state = TrackState::Confirmed;
                out.confirmed.push(track.id);
            }
            if track.state == TrackState::Confirmed {
                out.matched.push((track.id, d));
            }
        }
        // Unmatched tracks age; tentative ones die at the first miss (ByteTrack).
        let mut kept = Vec::with_capacity(self.tracks.len());
        for (i, mut t) in std::mem::take(&mut self.tracks).into_iter().enumerate() {
            if !matched_tracks[i] {
                t.missed += 1;
                let dead = t.state == TrackState::Tentative || t.missed > self.cfg.max_age;
                if dead {
                    if t.state == TrackState::Confirmed {
                        out.ended.push(t);
                    }
                    continue;
                }
            }
            kept.push(t);
        }
        self.tracks = kept;
        // New tentative tracks from unmatched high-score detections.
        for d in left_high {
            let mut t = Track {
                id: self.next_id,
                state: TrackState::Tentative,
                filter: BoxFilter::new(&dets[d].bbox),
                hits: 1,
                missed: 0,
                first_frame: self.frame,
                last_frame: self.frame,
                face: Some(dets[d].clone()),
            };
            self.next_id += 1;
            if self.cfg.confirm_hits <= 1 {
                t.state = TrackState::Confirmed;
                out.confirmed.push(t.id);
                out.matched.push((t.id, d));
            }
            self.tracks.push(t);
        }
        out
    }

    /// Ends every track (stream end or shutdown).
    pub fn finish(&mut self) -> Vec<Track> {
        std::mem::take(&mut self.tracks).into_iter().filter(|t| t.state == TrackState::Confirmed).collect()
    }

    /// Optimal IoU matching of `tracks` to `dets`; returns matches and the unmatched of each side.
    fn match_sets(&self, tracks: &[usize], det_idx: &[usize], dets: &[Face], min_iou: f32) -> (Vec<(usize, usize)>, Vec<usize>, Vec<usize>) {
        let cost: Vec<Vec<f32>> = tracks
            .iter()
            .map(|&t| {
                let pb = self.tracks[t].filter.bbox();
                det_idx.iter().map(|&d| 1.0 - pb.iou(&dets[d].bbox)).collect()
            })
            .collect();
        let a = assign(&cost, 1.0 - min_iou);
        let mut matches = Vec::new();
        let mut det_used = vec![false; det_idx.len()];
        let mut left_tracks = Vec::new();
        for (row, col) in a.iter().enumerate() {
            match col {
                Some(c) => {
                    det_used[*c] = true;
                    matches.push((tracks[row], det_idx[*c]));
                }
                None => left_tracks.push(tracks[row]),
            }
        }
        if tracks.is_empty() {
            left_tracks.clear();
        }
        let left_dets = det_idx.iter().enumerate().filter(|(i, _)| !det_used[*i]).map(|(_, &d)| d).collect();
        (matches, left_tracks, left_dets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(x: f32, y: f32, side: f32, score: f32) -> Face {
        Face { bbox: BBox { x1: x, y1: y, x2: x + side, y2: y + side }, score, landmarks: [[0.0; 2]; 5] }
    }

    fn ids_by_x(tr: &Tracker) -> Vec<(u64, f32)> {
        let mut v: Vec<_> = tr.tracks().iter().filter(|t| t.face.is_some()).map(|t| (t.id, t.face.as_ref().unwrap().bbox.x1)).collect();
        v.sort_by(|a, b| a.1.total_cmp(&b.1));
        v
    }

    #[test]
    fn a_steady_face_keeps_one_id_and_is_confirmed_after_n_hits() {
        let mut tr = Tracker::new(TrackConfig::default());
        let mut confirmed = Vec::new();
        for i in 0..20 {
            let u = tr.update(&[face(100.0 + i as f32 * 3.0, 50.0, 60.0, 0.99)]);
            confirmed.extend(u.confirmed);
            if i < 2 {
                assert!(u.matched.is_empty(), "not announced before confirmation");
            }
        }
        assert_eq!(confirmed, vec![1]);
        assert_eq!(tr.tracks().len(), 1);
        assert_eq!(tr.tracks()[0].id, 1);
    }

    #[test]
    fn crossing_paths_keep_their_ids() {
        // Two faces move towards each other horizontally at different heights, overlap and cross.
        let mut tr = Tracker::new(TrackConfig::default());
        let mut a_id = None;
        let mut b_id = None;
        for i in 0..40 {
            let t = i as f32;
            let a = face(20.0 + t * 8.0, 100.0, 60.0, 0.99);
            let b = face(340.0 - t * 8.0, 130.0, 60.0, 0.99);
            tr.update(&[a.clone(), b.clone()]);
            if i == 5 {
                let v = ids_by_x(&tr);
                a_id = Some(v[0].0);
                b_id = Some(v[1].0);
            }
        }
        // After crossing, A is on the right and B on the left, and each kept its id.
        let v = ids_by_x(&tr);
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].0, a_id.unwrap(), "A (now right) kept its id: {v:?}");
        assert_eq!(v[0].0, b_id.unwrap(), "B (now left) kept its id: {v:?}");
    }

    #[test]
    fn an_occlusion_gap_shorter_than_max_age_keeps_the_id() {
        let cfg = TrackConfig { max_age: 10, ..TrackConfig::default() };
        let mut tr = Tracker::new(cfg);
        let mut ended = Vec::new();
        for i in 0..30 {
            let x = 50.0 + i as f32 * 4.0;
            let dets = if (10..17).contains(&i) { vec![] } else { vec![face(x, 80.0, 70.0, 0.99)] };
            ended.extend(tr.update(&dets).ended);
        }
        assert!(ended.is_empty(), "track survived the 7-frame gap");
        assert_eq!(tr.tracks().len(), 1);
        assert_eq!(tr.tracks()[0].id, 1);
    }

    #[test]
    fn a_gap_longer_than_max_age_ends_the_track_and_starts_a_new_one() {
        let cfg = TrackConfig { max_age: 5, ..TrackConfig::default() };
        let mut tr = Tracker::new(cfg);
        let mut ended = Vec::new();
        for i in 0..30 {
            let dets = if (8..20).contains(&i) { vec![] } else { vec![face(100.0, 80.0, 70.0, 0.99)] };
            ended.extend(tr.update(&dets).ended.into_iter().map(|t| t.id));
        }
        assert_eq!(ended, vec![1]);
        assert_eq!(tr.tracks()[0].id, 2);
    }

    #[test]
    fn low_score_detections_extend_tracks_but_never_start_them() {
        let mut tr = Tracker::new(TrackConfig::default());
        for _ in 0..5 {
            tr.update(&[face(100.0, 100.0, 60.0, 0.99)]);
        }
        // The face blurs: low scores keep the track alive and matched.
        for _ in 0..20 {
            let u = tr.update(&[face(100.0, 100.0, 60.0, 0.8), face(400.0, 100.0, 60.0, 0.8)]);
            assert_eq!(u.matched.len(), 1);
        }
        assert_eq!(tr.tracks().len(), 1, "the lone low-score face started no track");
        assert_eq!(tr.tracks()[0].id, 1);
    }

    #[test]
    fn a_single_spurious_detection_is_never_confirmed() {
        let mut tr = Tracker::new(TrackConfig::default());
        let mut confirmed = 0;
        for i in 0..10 {
            let dets = if i == 3 { vec![face(300.0, 300.0, 50.0, 0.99)] } else { vec![] };
            confirmed += tr.update(&dets).confirmed.len();
        }
        assert_eq!(confirmed, 0);
        assert!(tr.tracks().is_empty());
    }
}
