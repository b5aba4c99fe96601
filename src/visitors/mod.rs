//! Visitors, an application on the decisions bus: the best shot of every track (`[snapshots]`),
//! unknown faces grouped online into pseudonymous visitors (`[visitors]`, see [`cluster`]),
//! visits per site with a gap rule (`[visits]`), retention of each kind purged in the
//! background, and the operations on them (name, ignore, merge, reject, forget, report: see
//! [`ops`]). Everything lives in the gallery store's file (see [`store`]).

pub mod cluster;
pub mod config;
pub mod ops;
pub mod report;
pub mod store;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use config::{SiteConfig, SnapshotsConfig, VisitorsConfig, VisitsConfig};

use crate::events::{Event, EventBody};
use crate::identify::TrackUpdate;
use crate::identify::decision::{FaceCrop, TrackEnd, snapshot_id};
use crate::queue::Tx;
use crate::telemetry::metrics;
use cluster::{Clusterer, Exemplar, Plan};
use store::{SnapshotRow, Subject, TrackRecord, VisitorStore, VisitorStoreError, visitor_name};

#[derive(Debug, thiserror::Error)]
pub enum VisitorsError {
    #[error(transparent)]
    Store(#[from] VisitorStoreError),
    #[error(transparent)]
    Infer(#[from] crate::infer::InferError),
    #[error("snapshot folder {path}: {error}")]
    Folder { path: PathBuf, error: std::io::Error },
}

/// Milliseconds since the Unix epoch.
pub fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// What the visitors application needs from the configuration.
pub struct VisitorsSetup<'a> {
    pub snapshots: &'a SnapshotsConfig,
    pub visitors: &'a VisitorsConfig,
    pub visits: &'a VisitsConfig,
    pub identify: &'a crate::identify::IdentifyConfig,
    /// The embedder's model card file (`Config::embed_card`): its id keys the clusters, its
    /// calibration gives the clustering threshold.
    pub embed_card: PathBuf,
    pub base_dir: &'a Path,
    /// The store (its SQLite file, or the cluster's database).
    pub store: crate::gallery::store::StoreSpec,
    /// Shifts the application's clock (tests replay a clip "the next day"; replays of old footage).
    pub clock_offset: Duration,
}

/// Encodes packed RGB as JPEG.
pub fn jpeg(rgb: &[u8], width: u32, height: u32) -> Option<Vec<u8>> {
    crate::image::jpeg(rgb, width, height, 85)
}

/// Writes a file whole or not at all (temporary file, then rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Deletes snapshot files by name (missing ones are fine: already gone).
pub fn delete_files(dir: &Path, names: &[String]) -> usize {
    names.iter().filter(|n| std::fs::remove_file(dir.join(n)).is_ok()).count()
}

pub struct Visitors {
    store: VisitorStore,
    snapshots: Option<(PathBuf, SnapshotsConfig)>,
    clusterer: Option<Clusterer>,
    vcfg: VisitorsConfig,
    visits: VisitsConfig,
    model_id: String,
    offset: Duration,
    data_version: i64,
}

impl Visitors {
    /// None when snapshots, visitors and visits are all off.
    pub fn new(setup: VisitorsSetup) -> Result<Option<Self>, VisitorsError> {
        let VisitorsSetup { snapshots, visitors, visits, identify, embed_card, base_dir, store, clock_offset } = setup;
        if !snapshots.enabled && !visitors.enabled && !visits.enabled {
            return Ok(None);
        }
        let model_id = crate::infer::ModelCard::read(&embed_card)?.id;
        let store_path = store.path.clone();
        let store = VisitorStore::open_spec(&store)?;
        let snapshots = if snapshots.enabled {
            let dir = snapshots.dir_for(base_dir, &store_path);
            std::fs::create_dir_all(&dir).map_err(|error| VisitorsError::Folder { path: dir.clone(), error })?;
            Some((dir, snapshots.clone()))
        } else {
            None
        };
        let clusterer = if visitors.enabled {
            let params = visitors.params(identify, &embed_card)?;
            let clusters = store.clusters(&model_id)?;
            tracing::info!(threshold = params.threshold, merge_threshold = params.merge_threshold, margin = params.margin, visitors = clusters.len(), "visitor clustering ready");
            Some(Clusterer::new(params, clusters))
        } else {
            None
        };
        let data_version = store.data_version()?;
        let mut v = Self { store, snapshots, clusterer, vcfg: visitors.clone(), visits: visits.clone(), model_id, offset: clock_offset, data_version };
        v.purge();
        v.remove_orphan_files();
        v.set_gauge();
        Ok(Some(v))
    }

    fn now(&self) -> SystemTime {
        SystemTime::now() + self.offset
    }

    fn set_gauge(&self) {
        metrics().visitors_active.set(self.clusterer.as_ref().map_or(0, |c| c.clusters().len()) as i64);
    }

    /// The application: runs until the decisions bus closes.
    pub fn run(mut self, updates: crossbeam_channel::Receiver<TrackUpdate>, events: Tx<Event>) {
        let (mut last_purge, mut last_check) = (Instant::now(), Instant::now());
        loop {
            match updates.recv_timeout(Duration::from_millis(250)) {
                Ok(TrackUpdate::Ended(e)) => self.on_ended(&e, &events),
                Ok(_) => {}
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
            if last_check.elapsed() > Duration::from_millis(500) {
                last_check = Instant::now();
                self.reload_if_changed();
            }
            if last_purge.elapsed() > Duration::from_secs(3600) {
                last_purge = Instant::now();
                self.purge();
            }
        }
    }

    /// Another process (the CLI, the API) changed the store: name, ignore, merge, forget apply at once.
    fn reload_if_changed(&mut self) {
        let Ok(v) = self.store.data_version() else { return };
        if v == self.data_version {
            return;
        }
        self.data_version = v;
        self.reload_clusters();
    }

    /// Retention of every kind; files of purged snapshots are deleted after their rows.
    pub fn purge(&mut self) {
        let now = millis(self.now());
        let day = 86_400_000.0;
        let snaps_keep = self.snapshots.as_ref().map_or(30.0, |s| s.1.keep_days);
        let (s, f, v) = (now - (snaps_keep * day) as i64, now - (self.vcfg.faces_keep_days * day) as i64, now - (self.visits.keep_days * day) as i64);
        match self.store.purge(s, f, v) {
            Ok((files, counts)) => {
                if let Some((dir, _)) = &self.snapshots {
                    delete_files(dir, &files);
                }
                if counts != Default::default() {
                    tracing::info!(snapshots = counts.snapshots, faces = counts.faces, visits = counts.visits, "visitors: retention purge");
                    self.reload_clusters();
                }
            }
            Err(e) => tracing::warn!(error = %e, "visitors: retention purge failed"),
        }
    }

    fn reload_clusters(&mut self) {
        if let Some(c) = &mut self.clusterer {
            match self.store.clusters(&self.model_id) {
                Ok(clusters) => *c = Clusterer::new(c.params, clusters),
                Err(e) => tracing::warn!(error = %e, "visitors: cannot reload the clusters"),
            }
        }
        self.set_gauge();
    }

    /// Snapshot files without a row (written just before a crash) are removed. A shared store
    /// keeps its images itself: the folder is then left alone.
    fn remove_orphan_files(&self) {
        let Some((dir, _)) = &self.snapshots.as_ref().filter(|_| !self.store.shared()) else { return };
        let Ok(known) = self.store.snapshot_file_names() else { return };
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if (name.ends_with(".jpg") || name.ends_with(".tmp")) && !known.contains(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Writes the track's best shot files (or, with a shared store, returns their bytes for the
    /// track's transaction); the row goes in with the track's transaction.
    fn write_snapshot(&self, e: &TrackEnd, crop: &FaceCrop, at_ms: i64) -> Option<(SnapshotRow, store::Images)> {
        let (dir, _) = self.snapshots.as_ref()?;
        let id = snapshot_id(&e.camera, e.track, e.first_seen);
        let m = metrics();
        let face_file = format!("{id}.jpg");
        let shared = self.store.shared();
        let result = (|| {
            let mut images = vec![(face_file.clone(), jpeg(&crop.rgb, crop.side, crop.side)?)];
            if let Some(c) = &crop.context {
                images.push((format!("{id}-context.jpg"), jpeg(&c.data, c.width, c.height)?));
            }
            if !shared {
                for (name, bytes) in &images {
                    write_atomic(&dir.join(name), bytes).ok()?;
                }
            }
            Some(images)
        })();
        match result {
            Some(images) => {
                m.snapshots.with_label_values(&[&e.camera, "written"]).inc();
                let context_file = images.get(1).map(|i| i.0.clone());
                let row = SnapshotRow { id, camera: e.camera.to_string(), track_id: format!("{}-{}", e.camera, e.track), at_ms, person_id: None, visitor_id: None, quality: crop.quality, face_file, context_file };
                Some((row, if shared { images } else { Vec::new() }))
            }
            None => {
                m.snapshots.with_label_values(&[&e.camera, "failed"]).inc();
                tracing::warn!(camera = %e.camera, track = e.track, dir = %dir.display(), "best shot could not be written");
                None
            }
        }
    }

    fn on_ended(&mut self, e: &TrackEnd, events: &Tx<Event>) {
        let m = metrics();
        let first_ms = millis(e.first_seen + self.offset);
        let last_ms = millis(e.last_seen + self.offset);
        let track_id = format!("{}-{}", e.camera, e.track);
        let sighting_id = snapshot_id(&e.camera, e.track, e.first_seen);
        let (mut snapshot, images) = e.best_crop.as_ref().and_then(|c| self.write_snapshot(e, c, first_ms)).unzip();
        let images = images.unwrap_or_default();
        let template = cluster::template(&e.faces);
        let best_quality = e.faces.iter().map(|f| f.1).fold(0.0f32, f32::max);
        let sites = if self.visits.enabled { self.visits.sites_of(&e.camera) } else { Vec::new() };
        let gap_ms = (self.visits.gap_s * 1000.0) as i64;
        let groupable = e.faces.len() as u32 >= self.vcfg.min_embeddings && best_quality >= self.vcfg.min_quality;
        let known = e.person.as_ref().map(|p| p.0);
        // What the transaction committed: the subject, the clustering step, new visits per site.
        type Committed = (Option<Subject>, Option<(Plan, u64)>, Vec<bool>);
        let result = (|| -> Result<Committed, VisitorStoreError> {
            let mut tx = self.store.begin()?;
            let mut subject = known.map(Subject::Person);
            let mut planned = None;
            if known.is_none()
                && groupable
                && let (Some(c), Some(t)) = (self.clusterer.as_mut(), template.as_ref())
            {
                let plan = c.plan(t);
                let id = match &plan {
                    Plan::New => VisitorStore::new_visitor(&mut *tx, first_ms)?,
                    Plan::Join { into, merge, .. } => {
                        for from in merge {
                            VisitorStore::merge(&mut *tx, *into, *from)?;
                        }
                        *into
                    }
                };
                let face_id = VisitorStore::add_face(&mut *tx, id, t, &self.model_id, best_quality, last_ms, &sighting_id)?;
                // The clusters in memory follow at once; if the commit fails they are reloaded.
                let evicted = c.apply(&plan, id, Exemplar { face_id, embedding: t.clone(), quality: best_quality });
                VisitorStore::remove_faces(&mut *tx, &evicted.iter().map(|x| x.face_id).collect::<Vec<_>>())?;
                subject = Some(Subject::Visitor(id));
                planned = Some((plan, id));
            }
            if let Some(s) = snapshot.as_mut() {
                match subject {
                    Some(Subject::Person(p)) => s.person_id = Some(p),
                    Some(Subject::Visitor(v)) => s.visitor_id = Some(v),
                    None => {}
                }
            }
            let rec = TrackRecord { id: &sighting_id, track_id: &track_id, camera: &e.camera, first_ms, last_ms, subject, person_name: e.person.as_ref().map(|p| p.1.as_str()), snapshot: snapshot.as_ref(), template: template.as_deref(), images: &images, model_id: &self.model_id, quality: best_quality, sites: &sites, gap_ms };
            let new_visits = VisitorStore::record_track(&mut *tx, &rec)?;
            tx.commit()?;
            Ok((subject, planned, new_visits))
        })();
        let (subject, planned, new_visits) = match result {
            Ok(r) => r,
            Err(err) => {
                tracing::error!(track = %track_id, error = %err, "visitors: the track could not be stored");
                m.visitor_tracks.with_label_values(&[&e.camera, "failed"]).inc();
                self.reload_clusters();
                if let Some(s) = &snapshot
                    && let Some((dir, _)) = &self.snapshots
                {
                    delete_files(dir, &[s.face_file.clone()].into_iter().chain(s.context_file.clone()).collect::<Vec<_>>());
                }
                return;
            }
        };
        for new in new_visits {
            if new {
                m.visits_started.with_label_values(&[&e.camera]).inc();
            }
        }
        let kind = match (subject, &planned) {
            (Some(Subject::Person(_)), _) => "known",
            (Some(Subject::Visitor(id)), _) if self.clusterer.as_ref().and_then(|c| c.get(id)).is_some_and(|c| c.ignored) => "ignored",
            (Some(Subject::Visitor(_)), _) => "visitor",
            (None, _) => "skipped",
        };
        m.visitor_tracks.with_label_values(&[&e.camera, kind]).inc();
        if let Some((plan, id)) = planned {
            let new = plan == Plan::New;
            if new {
                m.visitors_new.with_label_values(&[&e.camera]).inc();
            }
            let (distance, merged) = match &plan {
                Plan::New => (None, Vec::new()),
                Plan::Join { distance, merge, .. } => (Some(*distance), merge.iter().map(|m| visitor_name(*m)).collect()),
            };
            tracing::info!(track = %track_id, visitor = %visitor_name(id), new, distance = ?distance, merged = ?merged, "unknown track grouped");
            let body = EventBody::Visitor { track_id, visitor: visitor_name(id), new, distance, merged, snapshot: snapshot.map(|s| s.id) };
            let _ = events.push(Event::new(&e.camera, e.last_seen, body));
        }
        self.set_gauge();
    }
}

/// Pre-creates the per-camera series (dashboards see zeros, not gaps).
pub fn precreate_series(cameras: &[&str]) {
    let m = metrics();
    for cam in cameras {
        for kind in ["known", "visitor", "ignored", "skipped", "failed"] {
            m.visitor_tracks.with_label_values(&[cam, kind]);
        }
        m.visitors_new.with_label_values(&[cam]);
        m.visits_started.with_label_values(&[cam]);
        for r in ["written", "failed"] {
            m.snapshots.with_label_values(&[cam, r]);
        }
    }
}
