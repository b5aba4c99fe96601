//! Harvest: every track's faces kept for training on a site's own people (`facestream run
//! --harvest DIR`, then `facestream train --head --data DIR`). One line per ended track in
//! `DIR/harvest.jsonl` (the track's embeddings from the bare embedder, their quality, the camera
//! and time span, the person it was identified as) and its best aligned crop in `DIR/crops/`.
//!
//! The labels come free from tracking, as in FaceNet's own data: the faces of one track are one
//! person; two tracks seen at the same time on one camera are two people. [`identities`] turns
//! tracks into training identities: tracks identified as the same person are one identity;
//! unknown tracks are linked when their mean embeddings are within `link` of each other and they
//! were never on one camera at the same time.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::identify::TrackUpdate;
use crate::identify::decision::{TrackEnd, snapshot_id};

pub const FILE: &str = "harvest.jsonl";

#[derive(Debug, thiserror::Error)]
pub enum HarvestError {
    #[error("harvest folder {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}:{line}: not a harvested track: {error}")]
    Line { path: PathBuf, line: usize, error: serde_json::Error },
    #[error("{path}: the tracks were embedded by model `{found}`, training needs the bare embedder's `{expected}` (harvest with a config without `embed.head`)")]
    Model { path: PathBuf, found: String, expected: String },
}

/// Training identities: (name, faces).
pub type Identities = Vec<(String, Vec<Vec<f32>>)>;

/// One harvested track.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HarvestedTrack {
    /// `<camera>-<track>-<start ms>`.
    pub id: String,
    pub camera: String,
    pub first_ms: i64,
    pub last_ms: i64,
    /// The person the pipeline identified (None: unknown).
    pub person: Option<String>,
    pub model_id: String,
    /// The best crop's file in `crops/` (aligned, 150x150 JPEG).
    pub crop: Option<String>,
    pub qualities: Vec<f32>,
    pub faces: Vec<Vec<f32>>,
}

impl HarvestedTrack {
    fn overlaps(&self, o: &HarvestedTrack) -> bool {
        self.camera == o.camera && self.first_ms <= o.last_ms && o.first_ms <= self.last_ms
    }

    fn centroid(&self) -> Vec<f32> {
        let dim = self.faces.first().map_or(0, |f| f.len());
        let mut c = vec![0.0; dim];
        for f in &self.faces {
            for (a, b) in c.iter_mut().zip(f) {
                *a += b;
            }
        }
        crate::embed::normalized(&c)
    }
}

/// What to keep.
#[derive(Clone, Debug)]
pub struct HarvestSettings {
    pub dir: PathBuf,
    /// Tracks with fewer embeddings are skipped (a glimpse teaches nothing).
    pub min_faces: usize,
    /// Faces below this quality are left out of a track.
    pub min_quality: f32,
    /// The bare embedder's model id (from its card).
    pub model_id: String,
}

pub struct Harvester {
    s: HarvestSettings,
    file: std::fs::File,
    pub kept: usize,
    pub skipped: usize,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> HarvestError + '_ {
    move |error| HarvestError::Io { path: path.to_path_buf(), error }
}

impl Harvester {
    /// Opens (or continues) a harvest folder.
    pub fn open(s: HarvestSettings) -> Result<Self, HarvestError> {
        let crops = s.dir.join("crops");
        std::fs::create_dir_all(&crops).map_err(io(&crops))?;
        let path = s.dir.join(FILE);
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
        Ok(Self { s, file, kept: 0, skipped: 0 })
    }

    /// Keeps one ended track (its crop first, then its line, flushed: a crash loses at most the
    /// track being written). Returns whether it was kept.
    pub fn keep(&mut self, e: &TrackEnd) -> Result<bool, HarvestError> {
        let (qualities, faces): (Vec<f32>, Vec<Vec<f32>>) = e.faces.iter().filter(|f| f.1 >= self.s.min_quality).map(|(emb, q)| (*q, emb.to_vec())).unzip();
        if faces.len() < self.s.min_faces.max(1) {
            self.skipped += 1;
            return Ok(false);
        }
        let id = snapshot_id(&e.camera, e.track, e.first_seen);
        let crop = match e.best_crop.as_ref().and_then(|c| crate::image::jpeg(&c.rgb, c.side, c.side, 90)) {
            Some(bytes) => {
                let name = format!("{id}.jpg");
                let path = self.s.dir.join("crops").join(&name);
                std::fs::write(&path, bytes).map_err(io(&path))?;
                Some(name)
            }
            None => None,
        };
        let t = HarvestedTrack {
            id,
            camera: e.camera.to_string(),
            first_ms: crate::visitors::millis(e.first_seen),
            last_ms: crate::visitors::millis(e.last_seen),
            person: e.person.as_ref().map(|p| p.1.clone()),
            model_id: self.s.model_id.clone(),
            crop,
            qualities,
            faces,
        };
        let mut line = serde_json::to_vec(&t).unwrap_or_default();
        line.push(b'\n');
        let path = self.s.dir.join(FILE);
        self.file.write_all(&line).and_then(|_| self.file.flush()).map_err(io(&path))?;
        self.kept += 1;
        Ok(true)
    }

    /// The application: runs until the decisions bus closes.
    pub fn run(mut self, updates: crossbeam_channel::Receiver<TrackUpdate>) {
        for u in updates {
            if let TrackUpdate::Ended(e) = u
                && let Err(err) = self.keep(&e)
            {
                tracing::error!(track = e.track, camera = %e.camera, error = %err, "harvest: the track could not be kept");
            }
        }
        tracing::info!(kept = self.kept, skipped = self.skipped, dir = %self.s.dir.display(), "harvest finished");
    }
}

/// Reads a harvest folder (or its `harvest.jsonl`); every track must come from `model_id`.
pub fn read(path: &Path, model_id: &str) -> Result<Vec<HarvestedTrack>, HarvestError> {
    let file = if path.is_dir() { path.join(FILE) } else { path.to_path_buf() };
    let text = std::fs::read_to_string(&file).map_err(io(&file))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let t: HarvestedTrack = match serde_json::from_str(line) {
            Ok(t) => t,
            // A line cut by a crash is the last one: the tracks before it are whole.
            Err(_) if n + 1 == text.lines().count() && !text.ends_with('\n') => break,
            Err(error) => return Err(HarvestError::Line { path: file, line: n + 1, error }),
        };
        if t.model_id != model_id {
            return Err(HarvestError::Model { path: file, found: t.model_id, expected: model_id.to_string() });
        }
        out.push(t);
    }
    Ok(out)
}

/// True when `path` is a harvest (a folder with `harvest.jsonl`, or the file itself).
pub fn is_harvest(path: &Path) -> bool {
    path.join(FILE).is_file() || path.file_name().is_some_and(|n| n == FILE)
}

/// Training identities of harvested tracks, as (name, faces): identified tracks by person name;
/// unknown tracks linked (single linkage, centroid distance at most `link`) unless two of the
/// linked tracks were on one camera at the same time. Names of unknown groups are
/// `track:<first track id>`.
pub fn identities(tracks: &[HarvestedTrack], link: f32) -> Identities {
    let mut out: Vec<(String, Vec<Vec<f32>>)> = Vec::new();
    let mut by_person: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    let unknown: Vec<&HarvestedTrack> = tracks.iter().filter(|t| t.person.is_none()).collect();
    for t in tracks {
        if let Some(p) = &t.person {
            let k = *by_person.entry(p.as_str()).or_insert_with(|| {
                out.push((p.clone(), Vec::new()));
                out.len() - 1
            });
            out[k].1.extend(t.faces.iter().cloned());
        }
    }
    // Groups of unknown tracks: merge the closest pairs first, never two groups that overlap.
    let centroids: Vec<Vec<f32>> = unknown.iter().map(|t| t.centroid()).collect();
    let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
    for i in 0..unknown.len() {
        for j in i + 1..unknown.len() {
            let d = crate::embed::distance(&centroids[i], &centroids[j]);
            if d <= link {
                pairs.push((d, i, j));
            }
        }
    }
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut group: Vec<usize> = (0..unknown.len()).collect();
    let members = |group: &[usize], g: usize| -> Vec<usize> { (0..group.len()).filter(|&k| group[k] == g).collect() };
    for (_, i, j) in pairs {
        let (gi, gj) = (group[i], group[j]);
        if gi == gj {
            continue;
        }
        let (mi, mj) = (members(&group, gi), members(&group, gj));
        if mi.iter().any(|&a| mj.iter().any(|&b| unknown[a].overlaps(unknown[b]))) {
            continue;
        }
        for k in mj {
            group[k] = gi;
        }
    }
    let mut seen: std::collections::BTreeMap<usize, usize> = std::collections::BTreeMap::new();
    for (k, t) in unknown.iter().enumerate() {
        let slot = *seen.entry(group[k]).or_insert_with(|| {
            out.push((format!("track:{}", unknown[group[k]].id), Vec::new()));
            out.len() - 1
        });
        out[slot].1.extend(t.faces.iter().cloned());
    }
    out
}

/// Identification of the site's own people enrolled from one frame: each identity's first face is
/// its gallery entry, every other face is identified against them.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteCheck {
    pub identities: usize,
    pub probes: usize,
    /// Probes whose nearest gallery entry is their own identity.
    pub rank1: f64,
    /// Mean of (nearest other identity's distance - own identity's distance): the room a
    /// threshold has.
    pub margin: f64,
    /// Probes with another identity within `threshold`: a name a stranger could get.
    pub other_within: f64,
}

/// None with fewer than two identities (nothing to tell apart).
pub fn site_check(ids: &[(String, Vec<Vec<f32>>)], threshold: f32) -> Option<SiteCheck> {
    if ids.len() < 2 {
        return None;
    }
    let gallery: Vec<&Vec<f32>> = ids.iter().filter_map(|i| i.1.first()).collect();
    let (mut probes, mut right, mut margin, mut within) = (0usize, 0usize, 0.0f64, 0usize);
    for (k, (_, faces)) in ids.iter().enumerate() {
        for f in faces.iter().skip(1) {
            let d: Vec<f32> = gallery.iter().map(|g| crate::embed::distance(g, f)).collect();
            let own = d[k];
            let other = d.iter().enumerate().filter(|(j, _)| *j != k).map(|(_, v)| *v).fold(f32::INFINITY, f32::min);
            probes += 1;
            right += usize::from(own < other);
            margin += (other - own) as f64;
            within += usize::from(other <= threshold);
        }
    }
    let n = probes.max(1) as f64;
    Some(SiteCheck { identities: ids.len(), probes, rank1: right as f64 / n, margin: margin / n, other_within: within as f64 / n })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(axis: usize, noise: f32) -> Vec<f32> {
        let mut v = vec![0.0; 8];
        v[axis] = 1.0;
        v[(axis + 1) % 8] = noise;
        crate::embed::normalized(&v)
    }

    fn track(id: &str, camera: &str, first: i64, last: i64, person: Option<&str>, face: Vec<f32>) -> HarvestedTrack {
        HarvestedTrack { id: id.into(), camera: camera.into(), first_ms: first, last_ms: last, person: person.map(Into::into), model_id: "m".into(), crop: None, qualities: vec![0.5; 2], faces: vec![face.clone(), face] }
    }

    #[test]
    fn tracks_become_identities_by_person_by_likeness_and_never_across_a_shared_moment() {
        let tracks = vec![
            track("a1", "door", 0, 10, None, unit(0, 0.0)),
            track("a2", "hall", 100, 110, None, unit(0, 0.02)),
            // Looks like a1 but was beside it on the door camera: someone else (and so never
            // linked to a1's group through a2 either).
            track("x", "door", 5, 20, None, unit(0, -0.05)),
            track("b", "door", 200, 210, None, unit(3, 0.0)),
            track("k1", "door", 300, 310, Some("ann"), unit(5, 0.0)),
            track("k2", "hall", 400, 410, Some("ann"), unit(6, 0.0)),
        ];
        let ids = identities(&tracks, 0.3);
        let names: Vec<(&str, usize)> = ids.iter().map(|(n, f)| (n.as_str(), f.len())).collect();
        assert_eq!(names, [("ann", 4), ("track:a1", 4), ("track:x", 2), ("track:b", 2)]);
        assert_eq!(identities(&tracks, 0.0).len(), 5, "no linking: every unknown track alone");
    }

    #[test]
    fn the_site_check_enrolls_one_frame_and_counts_what_a_threshold_would_confuse() {
        let ids = vec![("a".to_string(), vec![unit(0, 0.0), unit(0, 0.1), unit(1, 0.0)]), ("b".to_string(), vec![unit(1, 0.05), unit(1, 0.0)])];
        let c = site_check(&ids, 0.2).unwrap();
        // a's second face is right; a's third (on b's axis) is wrong and within b; b's second is right.
        assert_eq!((c.identities, c.probes), (2, 3));
        assert!((c.rank1 - 2.0 / 3.0).abs() < 1e-9 && (c.other_within - 1.0 / 3.0).abs() < 1e-9, "{c:?}");
        assert!(site_check(&ids[..1], 0.2).is_none());
    }

    #[test]
    fn a_harvest_reads_back_skips_a_cut_last_line_and_refuses_another_model() {
        let dir = tempfile::tempdir().unwrap();
        let t = track("a1", "door", 0, 10, None, unit(0, 0.0));
        let mut text = serde_json::to_string(&t).unwrap() + "\n";
        std::fs::write(dir.path().join(FILE), &text).unwrap();
        assert!(is_harvest(dir.path()));
        assert_eq!(read(dir.path(), "m").unwrap(), std::slice::from_ref(&t));
        assert!(matches!(read(dir.path(), "other"), Err(HarvestError::Model { .. })));
        text += "{\"id\": \"cut";
        std::fs::write(dir.path().join(FILE), &text).unwrap();
        assert_eq!(read(dir.path(), "m").unwrap().len(), 1, "the cut line of a crash is left out");
        std::fs::write(dir.path().join(FILE), format!("nope\n{text}")).unwrap();
        assert!(matches!(read(dir.path(), "m"), Err(HarvestError::Line { line: 1, .. })));
    }
}
