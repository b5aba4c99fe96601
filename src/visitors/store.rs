//! The visitors' tables in the gallery store (SQLite, WAL): visitors and their faces, best-shot
//! snapshots (rows here, JPEG files in the snapshot folder), sightings (one row per track),
//! visits, and feedback. Every track is committed in one transaction, so a `kill -9` loses at
//! most the track being written; the JPEG files are written before their row, and a file without
//! a row is removed at the next start.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use std::cell::RefCell;

use serde::Serialize;

use crate::gallery::sql::{DbError, PgConn, Row, Sql, SqlConn, SqlTx, SqliteConn, Val};
use crate::gallery::store::StoreSpec;
use crate::vals;

use super::cluster::{Cluster, Exemplar};

#[derive(Debug, thiserror::Error)]
pub enum VisitorStoreError {
    #[error("visitor store {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("visitor store: {0}")]
    Db(#[from] DbError),
    #[error("no visitor `{0}` (see `facestream visitors list`)")]
    NoVisitor(String),
    #[error("no person or visitor `{0}` (see `facestream gallery list` and `facestream visitors list`)")]
    NoSubject(String),
    #[error("no track `{0}` in the sightings (it is older than the retention, or was never stored)")]
    NoTrack(String),
    #[error("{0}")]
    Refused(String),
    #[error("snapshot folder {path}: {error}")]
    Files { path: PathBuf, error: std::io::Error },
}

/// `visitor-<n>` for a visitor row id.
pub fn visitor_name(id: u64) -> String {
    format!("visitor-{id}")
}

/// The row id of `visitor-<n>` (or of a bare `<n>`).
pub fn parse_visitor(s: &str) -> Option<u64> {
    s.strip_prefix("visitor-").unwrap_or(s).parse().ok()
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct VisitorRow {
    pub id: u64,
    pub name: String,
    /// active, ignored, merged (into `merged_into`) or named (became `person_id`).
    pub state: String,
    pub merged_into: Option<u64>,
    pub person_id: Option<u64>,
    pub created_ms: i64,
    pub last_seen_ms: i64,
    pub tracks: u64,
    pub faces: u64,
    pub best_snapshot: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SnapshotRow {
    pub id: String,
    pub camera: String,
    pub track_id: String,
    pub at_ms: i64,
    pub person_id: Option<u64>,
    pub visitor_id: Option<u64>,
    pub quality: f32,
    pub face_file: String,
    pub context_file: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Sighting {
    /// `<camera>-<track>-<start ms>` (track numbers start again after a restart).
    pub id: String,
    pub track_id: String,
    pub camera: String,
    pub first_ms: i64,
    pub last_ms: i64,
    pub person_id: Option<u64>,
    pub person_name: Option<String>,
    pub visitor_id: Option<u64>,
    pub snapshot: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct VisitRow {
    pub id: u64,
    pub site: String,
    pub person_id: Option<u64>,
    pub person_name: Option<String>,
    pub visitor_id: Option<u64>,
    pub first_ms: i64,
    pub last_ms: i64,
    pub tracks: u64,
    pub cameras: Vec<String>,
}

/// One face (track template) of a visitor.
#[derive(Clone, Debug)]
pub struct VisitorFace {
    pub id: u64,
    pub embedding: Vec<f32>,
    pub quality: f32,
    /// The sighting it came from.
    pub sighting: String,
}

/// A sighting with its template (kept until the faces' retention) and how it was made.
#[derive(Clone, Debug)]
pub struct SightingFull {
    pub sighting: Sighting,
    pub template: Option<Vec<f32>>,
    pub model_id: String,
    pub quality: f32,
}

/// Who a track was: a person, a visitor, or nobody counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    Person(u64),
    Visitor(u64),
}

/// Snapshot images kept in the store: `(file name, JPEG bytes)`.
pub type Images = Vec<(String, Vec<u8>)>;

/// One track as the visitors application commits it.
pub struct TrackRecord<'a> {
    /// The sighting's id (`<camera>-<track>-<start ms>`, also its snapshot's).
    pub id: &'a str,
    pub track_id: &'a str,
    pub camera: &'a str,
    pub first_ms: i64,
    pub last_ms: i64,
    pub subject: Option<Subject>,
    /// The person's name as the pipeline knew it (persons of the config are not in the store).
    pub person_name: Option<&'a str>,
    pub snapshot: Option<&'a SnapshotRow>,
    /// The track's template, kept with the sighting (for feedback) until the faces' retention.
    pub template: Option<&'a [f32]>,
    /// The snapshot's JPEGs `(file name, bytes)` when the store keeps them (PostgreSQL, see
    /// [`VisitorStore::shared`]); empty when they were written to the snapshot folder.
    pub images: &'a [(String, Vec<u8>)],
    pub model_id: &'a str,
    pub quality: f32,
    /// Sites the camera belongs to, and the visits' gap.
    pub sites: &'a [String],
    pub gap_ms: i64,
}

pub struct VisitorStore {
    conn: RefCell<Box<dyn SqlConn>>,
    /// The SQLite file, or with PostgreSQL the node's local store path (for messages).
    pub path: PathBuf,
    /// With PostgreSQL: this connection's writer id (its commits are not "changes by others").
    writer: Option<String>,
}

fn blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn unblob(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// The visitors' tables in SQLite (PostgreSQL's are migration 4 in `gallery::postgres`).
const SQLITE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS visitors (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'active',
        merged_into INTEGER,
        person_id INTEGER,
        tracks INTEGER NOT NULL DEFAULT 0,
        best_snapshot TEXT,
        best_quality REAL NOT NULL DEFAULT 0
    );
    CREATE TABLE IF NOT EXISTS visitor_faces (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        visitor_id INTEGER NOT NULL,
        embedding BLOB NOT NULL,
        model_id TEXT NOT NULL,
        quality REAL NOT NULL,
        at_ms INTEGER NOT NULL,
        track_id TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS visitor_faces_visitor ON visitor_faces(visitor_id);
    CREATE TABLE IF NOT EXISTS snapshots (
        id TEXT PRIMARY KEY,
        camera TEXT NOT NULL,
        track_id TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        person_id INTEGER,
        visitor_id INTEGER,
        quality REAL NOT NULL,
        face_file TEXT NOT NULL,
        context_file TEXT
    );
    CREATE INDEX IF NOT EXISTS snapshots_at ON snapshots(at_ms);
    CREATE TABLE IF NOT EXISTS snapshot_images (
        name TEXT PRIMARY KEY,
        jpeg BLOB NOT NULL
    );
    CREATE TABLE IF NOT EXISTS sightings (
        id TEXT PRIMARY KEY,
        track_id TEXT NOT NULL,
        camera TEXT NOT NULL,
        first_ms INTEGER NOT NULL,
        last_ms INTEGER NOT NULL,
        person_id INTEGER,
        person_name TEXT,
        visitor_id INTEGER,
        snapshot TEXT,
        template BLOB,
        model_id TEXT NOT NULL,
        quality REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS sightings_first ON sightings(first_ms);
    CREATE INDEX IF NOT EXISTS sightings_track ON sightings(track_id);
    CREATE TABLE IF NOT EXISTS visits (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        site TEXT NOT NULL,
        person_id INTEGER,
        person_name TEXT,
        visitor_id INTEGER,
        first_ms INTEGER NOT NULL,
        last_ms INTEGER NOT NULL,
        tracks INTEGER NOT NULL,
        cameras TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS visits_last ON visits(last_ms);
    CREATE TABLE IF NOT EXISTS feedback (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        track_id TEXT NOT NULL,
        action TEXT NOT NULL,
        person_id INTEGER,
        person_name TEXT,
        at_ms INTEGER NOT NULL
    );";

const VISITOR_COLS: &str = "v.id, v.state, v.merged_into, v.person_id, v.created_ms, v.last_seen_ms, v.tracks, v.best_snapshot, (SELECT COUNT(*) FROM visitor_faces f WHERE f.visitor_id = v.id)";
const SNAPSHOT_COLS: &str = "id, camera, track_id, at_ms, person_id, visitor_id, quality, face_file, context_file";

fn visitor_of_row(r: &Row) -> Result<VisitorRow, DbError> {
    let id = r.u64(0)?;
    Ok(VisitorRow {
        id,
        name: visitor_name(id),
        state: r.text(1)?,
        merged_into: r.opt_u64(2)?,
        person_id: r.opt_u64(3)?,
        created_ms: r.i64(4)?,
        last_seen_ms: r.i64(5)?,
        tracks: r.u64(6)?,
        best_snapshot: r.opt_text(7)?,
        faces: r.u64(8)?,
    })
}

fn snapshot_of_row(r: &Row) -> Result<SnapshotRow, DbError> {
    Ok(SnapshotRow {
        id: r.text(0)?,
        camera: r.text(1)?,
        track_id: r.text(2)?,
        at_ms: r.i64(3)?,
        person_id: r.opt_u64(4)?,
        visitor_id: r.opt_u64(5)?,
        quality: r.f64(6)? as f32,
        face_file: r.text(7)?,
        context_file: r.opt_text(8)?,
    })
}

/// The file names of snapshot rows `(face_file, context_file)`.
fn file_names(rows: Vec<Row>) -> Result<Vec<String>, DbError> {
    let mut out = Vec::new();
    for r in rows {
        out.push(r.text(0)?);
        out.extend(r.opt_text(1)?);
    }
    Ok(out)
}

/// Drops the stored images (PostgreSQL keeps the JPEGs in the database) of these files.
fn drop_images(tx: &mut dyn Sql, files: &[String]) -> Result<(), DbError> {
    for f in files {
        tx.exec("DELETE FROM snapshot_images WHERE name = $1", vals![f])?;
    }
    Ok(())
}

impl VisitorStore {
    /// The visitors' tables in the SQLite file at `path` (created when missing).
    pub fn open(path: &Path) -> Result<Self, VisitorStoreError> {
        let open_err = |reason: String| VisitorStoreError::Open { path: path.to_path_buf(), reason };
        let conn = SqliteConn::open(path).map_err(open_err)?;
        conn.raw().execute_batch(SQLITE_SCHEMA).map_err(|e| open_err(e.to_string()))?;
        Ok(Self { conn: RefCell::new(Box::new(conn)), path: path.to_path_buf(), writer: None })
    }

    /// Where the gallery is: the same SQLite file, or the cluster's PostgreSQL database (then
    /// every node shares the visitors, their visits and the best shots, images included).
    pub fn open_spec(spec: &StoreSpec) -> Result<Self, VisitorStoreError> {
        let Some(url) = &spec.database else { return Self::open(&spec.path) };
        let open_err = |e: DbError| VisitorStoreError::Open { path: spec.path.clone(), reason: format!("{}: {e}", crate::gallery::postgres::redact(url)) };
        let mut conn = PgConn::connect(url).map_err(open_err)?;
        let mut r = [0u8; 8];
        let _ = getrandom::fill(&mut r);
        let writer = format!("{}-{:016x}", std::process::id(), u64::from_le_bytes(r));
        conn.set_commit_hook(
            "INSERT INTO visitor_writers (writer, v) VALUES ($1, nextval('visitor_change_seq')) ON CONFLICT (writer) DO UPDATE SET v = excluded.v".into(),
            vec![Val::Text(writer.clone())],
        );
        Ok(Self { conn: RefCell::new(Box::new(conn)), path: spec.path.clone(), writer: Some(writer) })
    }

    /// True when the tables are shared by nodes (PostgreSQL): snapshot images then go into the
    /// database instead of the local folder.
    pub fn shared(&self) -> bool {
        self.writer.is_some()
    }

    fn with<R>(&self, f: impl FnOnce(&mut dyn Sql) -> Result<R, DbError>) -> Result<R, VisitorStoreError> {
        let mut c = self.conn.borrow_mut();
        Ok(f(c.as_mut())?)
    }

    /// Runs `f` in one transaction, committed when it succeeds.
    fn in_tx<R>(&mut self, f: impl FnOnce(&mut dyn Sql) -> Result<R, DbError>) -> Result<R, VisitorStoreError> {
        let mut tx = self.conn.get_mut().begin()?;
        let r = f(&mut *tx)?;
        tx.commit()?;
        Ok(r)
    }

    /// Changes when another connection (the CLI, the API, another node) committed: the running
    /// application then reloads its clusters.
    pub fn data_version(&self) -> Result<i64, VisitorStoreError> {
        match &self.writer {
            None => self.with(|c| c.query_one("PRAGMA data_version", &[])?.i64(0)),
            Some(w) => self.with(|c| Ok(c.query_one("SELECT COALESCE(MAX(v), 0) FROM visitor_writers WHERE writer <> $1", vals![w])?.opt_i64(0)?.unwrap_or(0))),
        }
    }

    /// The clusters to search (active and ignored visitors with faces of `model_id`).
    pub fn clusters(&self, model_id: &str) -> Result<Vec<Cluster>, VisitorStoreError> {
        let rows = self.with(|c| {
            c.query(
                "SELECT v.id, v.state, f.id, f.embedding, f.quality FROM visitors v JOIN visitor_faces f ON f.visitor_id = v.id
                 WHERE v.state IN ('active', 'ignored') AND f.model_id = $1 ORDER BY v.id, f.id",
                vals![model_id],
            )
        })?;
        let mut out: BTreeMap<u64, (bool, Vec<Exemplar>)> = BTreeMap::new();
        for r in rows {
            let (vid, state, fid, q) = (r.u64(0)?, r.text(1)?, r.u64(2)?, r.f64(4)? as f32);
            let embedding = unblob(&r.blob(3)?);
            if !crate::gallery::store::is_unit_embedding(&embedding) {
                continue;
            }
            out.entry(vid).or_insert_with(|| (state == "ignored", Vec::new())).1.push(Exemplar { face_id: fid, embedding, quality: q });
        }
        Ok(out.into_iter().map(|(id, (ignored, ex))| Cluster::new(id, ignored, ex)).collect())
    }

    pub fn begin(&mut self) -> Result<Box<dyn SqlTx + '_>, VisitorStoreError> {
        Ok(self.conn.get_mut().begin()?)
    }

    pub fn new_visitor(tx: &mut dyn Sql, at_ms: i64) -> Result<u64, VisitorStoreError> {
        Ok(tx.query_one("INSERT INTO visitors (created_ms, last_seen_ms) VALUES ($1, $1) RETURNING id", vals![at_ms])?.u64(0)?)
    }

    pub fn add_face(tx: &mut dyn Sql, visitor: u64, embedding: &[f32], model_id: &str, quality: f32, at_ms: i64, track_id: &str) -> Result<u64, VisitorStoreError> {
        Ok(tx
            .query_one(
                "INSERT INTO visitor_faces (visitor_id, embedding, model_id, quality, at_ms, track_id) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                vals![visitor, blob(embedding), model_id, quality, at_ms, track_id],
            )?
            .u64(0)?)
    }

    pub fn remove_faces(tx: &mut dyn Sql, ids: &[u64]) -> Result<(), VisitorStoreError> {
        for id in ids {
            tx.exec("DELETE FROM visitor_faces WHERE id = $1", vals![*id])?;
        }
        Ok(())
    }

    /// Merges `from` into `into`: faces, sightings, visits and snapshots follow; `from` redirects.
    pub fn merge(tx: &mut dyn Sql, into: u64, from: u64) -> Result<(), VisitorStoreError> {
        if into == from {
            return Ok(());
        }
        for table in ["visitor_faces", "sightings", "visits", "snapshots"] {
            tx.exec(&format!("UPDATE {table} SET visitor_id = $1 WHERE visitor_id = $2"), vals![into, from])?;
        }
        tx.exec("UPDATE visitors SET merged_into = $1 WHERE merged_into = $2", vals![into, from])?;
        let Some(f) = tx.query_opt("SELECT tracks, created_ms, last_seen_ms, state FROM visitors WHERE id = $1", vals![from])? else {
            return Err(VisitorStoreError::NoVisitor(visitor_name(from)));
        };
        tx.exec(
            "UPDATE visitors SET tracks = tracks + $2, created_ms = LEAST(created_ms, $3), last_seen_ms = GREATEST(last_seen_ms, $4),
                 state = CASE WHEN state = 'ignored' OR $5 = 'ignored' THEN 'ignored' ELSE state END
             WHERE id = $1",
            vals![into, f.i64(0)?, f.i64(1)?, f.i64(2)?, f.text(3)?],
        )?;
        tx.exec("UPDATE visitors SET state = 'merged', merged_into = $1, tracks = 0 WHERE id = $2", vals![into, from])?;
        Ok(())
    }

    pub fn insert_snapshot(tx: &mut dyn Sql, s: &SnapshotRow) -> Result<(), VisitorStoreError> {
        tx.exec(
            "INSERT INTO snapshots (id, camera, track_id, at_ms, person_id, visitor_id, quality, face_file, context_file) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (id) DO UPDATE SET camera = excluded.camera, track_id = excluded.track_id, at_ms = excluded.at_ms, person_id = excluded.person_id,
                 visitor_id = excluded.visitor_id, quality = excluded.quality, face_file = excluded.face_file, context_file = excluded.context_file",
            vals![&s.id, &s.camera, &s.track_id, s.at_ms, s.person_id, s.visitor_id, s.quality, &s.face_file, s.context_file.clone()],
        )?;
        Ok(())
    }

    /// The sighting of a track, its visits (one per site), the visitor's counters; true for each
    /// site where the track started a new visit.
    pub fn record_track(tx: &mut dyn Sql, t: &TrackRecord) -> Result<Vec<bool>, VisitorStoreError> {
        let (person, visitor) = match t.subject {
            Some(Subject::Person(p)) => (Some(p as i64), None),
            Some(Subject::Visitor(v)) => (None, Some(v as i64)),
            None => (None, None),
        };
        tx.exec(
            "INSERT INTO sightings (id, track_id, camera, first_ms, last_ms, person_id, visitor_id, snapshot, template, model_id, quality, person_name) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (id) DO UPDATE SET track_id = excluded.track_id, camera = excluded.camera, first_ms = excluded.first_ms, last_ms = excluded.last_ms,
                 person_id = excluded.person_id, visitor_id = excluded.visitor_id, snapshot = excluded.snapshot, template = excluded.template,
                 model_id = excluded.model_id, quality = excluded.quality, person_name = excluded.person_name",
            vals![t.id, t.track_id, t.camera, t.first_ms, t.last_ms, person, visitor, t.snapshot.map(|s| s.id.clone()), t.template.map(blob), t.model_id, t.quality, t.person_name],
        )?;
        if let Some(s) = t.snapshot {
            Self::insert_snapshot(tx, s)?;
        }
        for (name, jpeg) in t.images {
            tx.exec("INSERT INTO snapshot_images (name, jpeg) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET jpeg = excluded.jpeg", vals![name, jpeg.clone()])?;
        }
        if let Some(v) = visitor {
            tx.exec("UPDATE visitors SET tracks = tracks + 1, last_seen_ms = GREATEST(last_seen_ms, $2) WHERE id = $1", vals![v, t.last_ms])?;
            if let Some(s) = t.snapshot {
                tx.exec("UPDATE visitors SET best_snapshot = $2, best_quality = $3 WHERE id = $1 AND (best_snapshot IS NULL OR best_quality < $3)", vals![v, &s.id, s.quality])?;
            }
        }
        let mut new = Vec::new();
        if person.is_none() && visitor.is_none() {
            return Ok(new);
        }
        for site in t.sites {
            new.push(Self::add_to_visit(tx, site, person, visitor, t.camera, t.first_ms, t.last_ms, t.gap_ms)?);
            if let (Some(_), Some(n)) = (person, t.person_name) {
                tx.exec("UPDATE visits SET person_name = $1 WHERE person_id = $2 AND person_name IS NULL", vals![n, person])?;
            }
        }
        Ok(new)
    }

    /// Extends the subject's visit at `site` that this sighting touches (within `gap`), else starts one.
    #[allow(clippy::too_many_arguments)]
    fn add_to_visit(tx: &mut dyn Sql, site: &str, person: Option<i64>, visitor: Option<i64>, camera: &str, first: i64, last: i64, gap: i64) -> Result<bool, VisitorStoreError> {
        let found = tx.query_opt(
            "SELECT id, cameras FROM visits WHERE site = $1 AND person_id IS NOT DISTINCT FROM $2 AND visitor_id IS NOT DISTINCT FROM $3 AND last_ms >= $4 AND first_ms <= $5 ORDER BY last_ms DESC LIMIT 1",
            vals![site, person, visitor, first - gap, last + gap],
        )?;
        match found {
            Some(r) => {
                let mut set: BTreeSet<String> = serde_json::from_str(&r.text(1)?).unwrap_or_default();
                set.insert(camera.to_string());
                tx.exec(
                    "UPDATE visits SET first_ms = LEAST(first_ms, $2), last_ms = GREATEST(last_ms, $3), tracks = tracks + 1, cameras = $4 WHERE id = $1",
                    vals![r.i64(0)?, first, last, serde_json::to_string(&set).unwrap_or_default()],
                )?;
                Ok(false)
            }
            None => {
                tx.exec(
                    "INSERT INTO visits (site, person_id, visitor_id, first_ms, last_ms, tracks, cameras) VALUES ($1, $2, $3, $4, $5, 1, $6)",
                    vals![site, person, visitor, first, last, serde_json::to_string(&[camera]).unwrap_or_default()],
                )?;
                Ok(true)
            }
        }
    }

    /// Visitors (merged ones only with `all`), oldest first.
    pub fn visitors(&self, all: bool) -> Result<Vec<VisitorRow>, VisitorStoreError> {
        let filter = if all { "" } else { "WHERE v.state IN ('active', 'ignored')" };
        let rows = self.with(|c| c.query(&format!("SELECT {VISITOR_COLS} FROM visitors v {filter} ORDER BY v.id"), &[]))?;
        Ok(rows.iter().map(visitor_of_row).collect::<Result<_, _>>()?)
    }

    pub fn visitor(&self, id: u64) -> Result<Option<VisitorRow>, VisitorStoreError> {
        let row = self.with(|c| c.query_opt(&format!("SELECT {VISITOR_COLS} FROM visitors v WHERE v.id = $1"), vals![id]))?;
        Ok(row.as_ref().map(visitor_of_row).transpose()?)
    }

    /// Follows merges: the visitor that `id` now is.
    pub fn resolve(&self, id: u64) -> Result<Option<VisitorRow>, VisitorStoreError> {
        let mut cur = self.visitor(id)?;
        for _ in 0..64 {
            match &cur {
                Some(v) if v.state == "merged" => cur = self.visitor(v.merged_into.unwrap_or(0))?,
                _ => break,
            }
        }
        Ok(cur)
    }

    /// A visitor's faces, best first.
    pub fn faces(&self, visitor: u64) -> Result<Vec<VisitorFace>, VisitorStoreError> {
        let rows = self.with(|c| c.query("SELECT id, embedding, quality, track_id FROM visitor_faces WHERE visitor_id = $1 ORDER BY quality DESC, id", vals![visitor]))?;
        let face = |r: &Row| -> Result<VisitorFace, DbError> { Ok(VisitorFace { id: r.u64(0)?, embedding: unblob(&r.blob(1)?), quality: r.f64(2)? as f32, sighting: r.text(3)? }) };
        Ok(rows.iter().map(face).collect::<Result<_, _>>()?)
    }

    pub fn set_state(&mut self, id: u64, state: &str) -> Result<(), VisitorStoreError> {
        self.in_tx(|tx| tx.exec("UPDATE visitors SET state = $2 WHERE id = $1", vals![id, state]).map(|_| ()))
    }

    /// A visitor becomes person `person_id`: its sightings, visits and snapshots now name the
    /// person; its faces go (they were enrolled as the person's samples by the caller).
    pub fn mark_named(tx: &mut dyn Sql, id: u64, person_id: u64) -> Result<(), VisitorStoreError> {
        tx.exec("UPDATE visitors SET state = 'named', person_id = $2 WHERE id = $1", vals![id, person_id])?;
        for table in ["sightings", "visits", "snapshots"] {
            tx.exec(&format!("UPDATE {table} SET person_id = $2, visitor_id = NULL WHERE visitor_id = $1"), vals![id, person_id])?;
        }
        tx.exec("DELETE FROM visitor_faces WHERE visitor_id = $1", vals![id])?;
        Ok(())
    }

    pub fn snapshot(&self, id: &str) -> Result<Option<SnapshotRow>, VisitorStoreError> {
        let row = self.with(|c| c.query_opt(&format!("SELECT {SNAPSHOT_COLS} FROM snapshots WHERE id = $1"), vals![id]))?;
        Ok(row.as_ref().map(snapshot_of_row).transpose()?)
    }

    /// A snapshot's JPEG: from the database when shared, else from the snapshot folder.
    pub fn snapshot_image(&self, dir: &Path, file: &str) -> Result<Option<Vec<u8>>, VisitorStoreError> {
        if !self.shared() {
            return match std::fs::read(dir.join(file)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(error) => Err(VisitorStoreError::Files { path: dir.join(file), error }),
            };
        }
        let row = self.with(|c| c.query_opt("SELECT jpeg FROM snapshot_images WHERE name = $1", vals![file]))?;
        Ok(row.map(|r| r.blob(0)).transpose()?)
    }

    /// A sighting by its id, or the latest of a track id (`<camera>-<track>` as events name it).
    pub fn sighting(&self, id_or_track: &str) -> Result<Option<SightingFull>, VisitorStoreError> {
        let row = self.with(|c| {
            c.query_opt(
                "SELECT id, track_id, camera, first_ms, last_ms, person_id, visitor_id, snapshot, template, model_id, quality, person_name FROM sightings WHERE id = $1 OR track_id = $1 ORDER BY id = $1 DESC, first_ms DESC LIMIT 1",
                vals![id_or_track],
            )
        })?;
        let full = |r: &Row| -> Result<SightingFull, DbError> {
            Ok(SightingFull {
                sighting: Sighting { id: r.text(0)?, track_id: r.text(1)?, camera: r.text(2)?, first_ms: r.i64(3)?, last_ms: r.i64(4)?, person_id: r.opt_u64(5)?, person_name: r.opt_text(11)?, visitor_id: r.opt_u64(6)?, snapshot: r.opt_text(7)? },
                template: r.opt_blob(8)?.map(|b| unblob(&b)),
                model_id: r.text(9)?,
                quality: r.f64(10)? as f32,
            })
        };
        Ok(row.as_ref().map(full).transpose()?)
    }

    /// Sightings whose track started in `[from, to)` (ms), oldest first.
    pub fn sightings(&self, from: i64, to: i64) -> Result<Vec<Sighting>, VisitorStoreError> {
        let rows = self.with(|c| c.query("SELECT id, track_id, camera, first_ms, last_ms, person_id, visitor_id, snapshot, person_name FROM sightings WHERE first_ms >= $1 AND first_ms < $2 ORDER BY first_ms, id", vals![from, to]))?;
        let one = |r: &Row| -> Result<Sighting, DbError> {
            Ok(Sighting { id: r.text(0)?, track_id: r.text(1)?, camera: r.text(2)?, first_ms: r.i64(3)?, last_ms: r.i64(4)?, person_id: r.opt_u64(5)?, person_name: r.opt_text(8)?, visitor_id: r.opt_u64(6)?, snapshot: r.opt_text(7)? })
        };
        Ok(rows.iter().map(one).collect::<Result<_, _>>()?)
    }

    /// Visits that overlap `[from, to)` (ms), of visitors not ignored.
    pub fn visits(&self, from: i64, to: i64) -> Result<Vec<VisitRow>, VisitorStoreError> {
        let rows = self.with(|c| {
            c.query(
                "SELECT id, site, person_id, visitor_id, first_ms, last_ms, tracks, cameras, person_name FROM visits
                 WHERE last_ms >= $1 AND first_ms < $2
                   AND (visitor_id IS NULL OR visitor_id NOT IN (SELECT id FROM visitors WHERE state = 'ignored'))
                 ORDER BY first_ms, id",
                vals![from, to],
            )
        })?;
        let one = |r: &Row| -> Result<VisitRow, DbError> {
            Ok(VisitRow {
                id: r.u64(0)?,
                site: r.text(1)?,
                person_id: r.opt_u64(2)?,
                person_name: r.opt_text(8)?,
                visitor_id: r.opt_u64(3)?,
                first_ms: r.i64(4)?,
                last_ms: r.i64(5)?,
                tracks: r.u64(6)?,
                cameras: serde_json::from_str(&r.text(7)?).unwrap_or_default(),
            })
        };
        Ok(rows.iter().map(one).collect::<Result<_, _>>()?)
    }

    /// Subjects with a visit at `site` that began before `before` (ms): who is returning.
    pub fn seen_before(&self, before: i64) -> Result<(BTreeSet<u64>, BTreeSet<u64>), VisitorStoreError> {
        let rows = self.with(|c| c.query("SELECT DISTINCT person_id, visitor_id FROM visits WHERE first_ms < $1", vals![before]))?;
        let mut persons = BTreeSet::new();
        let mut visitors = BTreeSet::new();
        for r in rows {
            match (r.opt_u64(0)?, r.opt_u64(1)?) {
                (Some(p), _) => {
                    persons.insert(p);
                }
                (_, Some(v)) => {
                    visitors.insert(v);
                }
                _ => {}
            }
        }
        Ok((persons, visitors))
    }

    /// Records that a track was not `person`; the track then counts as unknown (the caller
    /// clusters it). Its visits are rebuilt without it.
    pub fn reject(tx: &mut dyn Sql, sighting: &str, person_id: u64, person_name: &str, now_ms: i64, gap_ms: i64, sites: &[String]) -> Result<(), VisitorStoreError> {
        tx.exec("INSERT INTO feedback (track_id, action, person_id, person_name, at_ms) VALUES ($1, 'not_person', $2, $3, $4)", vals![sighting, person_id, person_name, now_ms])?;
        let r = tx.query_one("SELECT first_ms, last_ms FROM sightings WHERE id = $1", vals![sighting])?;
        let (first, last) = (r.i64(0)?, r.i64(1)?);
        tx.exec("UPDATE sightings SET person_id = NULL WHERE id = $1", vals![sighting])?;
        tx.exec("UPDATE snapshots SET person_id = NULL WHERE id = $1", vals![sighting])?;
        Self::rebuild_visits(tx, Subject::Person(person_id), first, last, gap_ms, sites)
    }

    /// Rebuilds a subject's visits around `[first, last]` from its sightings.
    fn rebuild_visits(tx: &mut dyn Sql, subject: Subject, first: i64, last: i64, gap_ms: i64, sites: &[String]) -> Result<(), VisitorStoreError> {
        let (col, id) = match subject {
            Subject::Person(p) => ("person_id", p as i64),
            Subject::Visitor(v) => ("visitor_id", v as i64),
        };
        // The visits this sighting was part of span at most [first - gap, last + gap] on each side.
        let r = tx.query_one(&format!("SELECT MIN(first_ms), MAX(last_ms) FROM visits WHERE {col} = $1 AND last_ms >= $2 AND first_ms <= $3"), vals![id, first - gap_ms, last + gap_ms])?;
        let (Some(lo), Some(hi)) = (r.opt_i64(0)?, r.opt_i64(1)?) else { return Ok(()) };
        tx.exec(&format!("DELETE FROM visits WHERE {col} = $1 AND last_ms >= $2 AND first_ms <= $3"), vals![id, lo, hi])?;
        let rows = tx.query(&format!("SELECT camera, first_ms, last_ms FROM sightings WHERE {col} = $1 AND first_ms >= $2 AND first_ms <= $3 ORDER BY first_ms"), vals![id, lo, hi])?;
        let (person, visitor) = match subject {
            Subject::Person(p) => (Some(p as i64), None),
            Subject::Visitor(v) => (None, Some(v as i64)),
        };
        for r in rows {
            let (camera, f, l) = (r.text(0)?, r.i64(1)?, r.i64(2)?);
            for site in sites {
                Self::add_to_visit(tx, site, person, visitor, &camera, f, l, gap_ms)?;
            }
        }
        Ok(())
    }

    /// A sighting that turned out unknown joins `visitor` (its visits are added).
    pub fn assign_sighting(tx: &mut dyn Sql, sighting: &str, visitor: u64, gap_ms: i64, sites: &[String]) -> Result<(), VisitorStoreError> {
        tx.exec("UPDATE sightings SET visitor_id = $2 WHERE id = $1", vals![sighting, visitor])?;
        tx.exec("UPDATE snapshots SET visitor_id = $2 WHERE id = $1", vals![sighting, visitor])?;
        let r = tx.query_one("SELECT camera, first_ms, last_ms FROM sightings WHERE id = $1", vals![sighting])?;
        let (camera, first, last) = (r.text(0)?, r.i64(1)?, r.i64(2)?);
        tx.exec("UPDATE visitors SET tracks = tracks + 1, last_seen_ms = GREATEST(last_seen_ms, $2) WHERE id = $1", vals![visitor, last])?;
        for site in sites {
            Self::add_to_visit(tx, site, None, Some(visitor as i64), &camera, first, last, gap_ms)?;
        }
        Ok(())
    }

    /// Feedback rows (newest first).
    pub fn feedback(&self) -> Result<Vec<serde_json::Value>, VisitorStoreError> {
        let rows = self.with(|c| c.query("SELECT id, track_id, action, person_id, person_name, at_ms FROM feedback ORDER BY id DESC", &[]))?;
        let one = |r: &Row| -> Result<serde_json::Value, DbError> {
            Ok(serde_json::json!({"id": r.i64(0)?, "track_id": r.text(1)?, "action": r.text(2)?, "person_id": r.opt_i64(3)?, "person": r.opt_text(4)?, "at_ms": r.i64(5)?}))
        };
        Ok(rows.iter().map(one).collect::<Result<_, _>>()?)
    }

    /// Deletes everything of one visitor (and of those merged into it): faces, sightings,
    /// visits, snapshots (rows; the files are returned for the caller to delete) and its rows.
    pub fn forget_visitor(&mut self, id: u64) -> Result<Vec<String>, VisitorStoreError> {
        self.in_tx(|tx| {
            let mut ids = vec![id as i64];
            let mut i = 0;
            while i < ids.len() {
                let more = tx.query("SELECT id FROM visitors WHERE merged_into = $1", vals![ids[i]])?;
                for r in more {
                    let m = r.i64(0)?;
                    if !ids.contains(&m) {
                        ids.push(m);
                    }
                }
                i += 1;
            }
            let mut files = Vec::new();
            for v in &ids {
                files.extend(file_names(tx.query("SELECT face_file, context_file FROM snapshots WHERE visitor_id = $1", vals![*v])?)?);
                for table in ["snapshots", "visitor_faces", "sightings", "visits"] {
                    tx.exec(&format!("DELETE FROM {table} WHERE visitor_id = $1"), vals![*v])?;
                }
                tx.exec("DELETE FROM visitors WHERE id = $1", vals![*v])?;
            }
            drop_images(tx, &files)?;
            Ok(files)
        })
    }

    /// The person id sightings recorded under this name (persons of the config).
    pub fn person_id_by_name(&self, name: &str) -> Result<Option<u64>, VisitorStoreError> {
        let row = self.with(|c| c.query_opt("SELECT person_id FROM sightings WHERE person_name = $1 AND person_id IS NOT NULL LIMIT 1", vals![name]))?;
        Ok(row.map(|r| r.u64(0)).transpose()?)
    }

    /// Deletes a person's sightings, visits, snapshots and feedback (and the visitor rows that
    /// became the person); the files to delete are returned.
    pub fn forget_person(&mut self, person_id: u64) -> Result<Vec<String>, VisitorStoreError> {
        self.in_tx(|tx| {
            let files = file_names(tx.query("SELECT face_file, context_file FROM snapshots WHERE person_id = $1", vals![person_id])?)?;
            for table in ["snapshots", "sightings", "visits", "feedback", "visitors"] {
                tx.exec(&format!("DELETE FROM {table} WHERE person_id = $1"), vals![person_id])?;
            }
            drop_images(tx, &files)?;
            Ok(files)
        })
    }

    /// Retention: snapshots before `snapshots_before`, unnamed visitors' faces (and sightings'
    /// templates) before `faces_before`, visits and sightings before `visits_before` (all ms).
    /// Returns the snapshot files to delete and the counts removed.
    pub fn purge(&mut self, snapshots_before: i64, faces_before: i64, visits_before: i64) -> Result<(Vec<String>, PurgeCounts), VisitorStoreError> {
        let shared = self.shared();
        self.in_tx(|tx| {
            let files = file_names(tx.query("SELECT face_file, context_file FROM snapshots WHERE at_ms < $1", vals![snapshots_before])?)?;
            let snapshots = tx.exec("DELETE FROM snapshots WHERE at_ms < $1", vals![snapshots_before])?;
            drop_images(tx, &files)?;
            tx.exec("UPDATE visitors SET best_snapshot = NULL WHERE best_snapshot IS NOT NULL AND best_snapshot NOT IN (SELECT id FROM snapshots)", &[])?;
            tx.exec("UPDATE sightings SET snapshot = NULL WHERE snapshot IS NOT NULL AND snapshot NOT IN (SELECT id FROM snapshots)", &[])?;
            let faces = tx.exec("DELETE FROM visitor_faces WHERE at_ms < $1", vals![faces_before])?;
            tx.exec("UPDATE sightings SET template = NULL WHERE template IS NOT NULL AND last_ms < $1", vals![faces_before])?;
            let visits = tx.exec("DELETE FROM visits WHERE last_ms < $1", vals![visits_before])?;
            tx.exec("DELETE FROM sightings WHERE last_ms < $1", vals![visits_before])?;
            if shared {
                // Only the newest three writers' marks matter (see `data_version`).
                tx.exec("DELETE FROM visitor_writers WHERE v < (SELECT v FROM visitor_writers ORDER BY v DESC OFFSET 2 LIMIT 1)", &[])?;
            }
            Ok((files, PurgeCounts { snapshots, faces, visits }))
        })
    }

    /// Every snapshot file name the store knows (to remove files left by a crash).
    pub fn snapshot_file_names(&self) -> Result<std::collections::HashSet<String>, VisitorStoreError> {
        let rows = self.with(|c| c.query("SELECT face_file, context_file FROM snapshots", &[]))?;
        Ok(file_names(rows)?.into_iter().collect())
    }

    /// Row counts per table (for tests and `visitors list`'s summary).
    pub fn counts(&self) -> Result<HashMap<&'static str, i64>, VisitorStoreError> {
        let mut out = HashMap::new();
        for t in ["visitors", "visitor_faces", "snapshots", "sightings", "visits", "feedback"] {
            out.insert(t, self.with(|c| c.query_one(&format!("SELECT COUNT(*) FROM {t}"), &[])?.i64(0))?);
        }
        Ok(out)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgeCounts {
    pub snapshots: usize,
    pub faces: usize,
    pub visits: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn track(store: &mut VisitorStore, id: &str, camera: &str, at: i64, subject: Subject, template: &[f32]) -> Vec<bool> {
        let snap = SnapshotRow { id: id.into(), camera: camera.into(), track_id: id.into(), at_ms: at, person_id: None, visitor_id: None, quality: 0.5, face_file: format!("{id}.jpg"), context_file: None };
        let mut tx = store.begin().unwrap();
        let rec = TrackRecord { id, track_id: id, camera, first_ms: at, last_ms: at + MIN, subject: Some(subject), person_name: Some("ann"), snapshot: Some(&snap), template: Some(template), images: &[], model_id: "m", quality: 0.5, sites: &["all".to_string()], gap_ms: 10 * MIN };
        let new = VisitorStore::record_track(&mut *tx, &rec).unwrap();
        tx.commit().unwrap();
        new
    }

    #[test]
    fn sightings_within_the_gap_make_one_visit_and_retention_purges_each_kind() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = VisitorStore::open(&dir.path().join("g.db")).unwrap();
        let t = crate::embed::normalized(&[1.0; crate::embed::DIM]);
        assert_eq!(track(&mut s, "a", "door", 0, Subject::Person(7), &t), [true], "the first sighting starts a visit");
        assert_eq!(track(&mut s, "b", "hall", 5 * MIN, Subject::Person(7), &t), [false], "4 min after the last: the same visit");
        assert_eq!(track(&mut s, "c", "door", 30 * MIN, Subject::Person(7), &t), [true], "24 min later: a new visit");
        let visits = s.visits(0, i64::MAX).unwrap();
        assert_eq!(visits.len(), 2);
        assert_eq!((visits[0].tracks, visits[0].cameras.clone(), visits[0].last_ms), (2, vec!["door".to_string(), "hall".to_string()], 6 * MIN));
        assert_eq!(visits[0].person_name.as_deref(), Some("ann"));
        // A visitor, then its merge into another: visits and sightings follow.
        let mut tx = s.begin().unwrap();
        let (v1, v2) = (VisitorStore::new_visitor(&mut *tx, 0).unwrap(), VisitorStore::new_visitor(&mut *tx, 0).unwrap());
        VisitorStore::add_face(&mut *tx, v2, &t, "m", 0.4, 40 * MIN, "d").unwrap();
        tx.commit().unwrap();
        track(&mut s, "d", "door", 40 * MIN, Subject::Visitor(v2), &t);
        let mut tx = s.begin().unwrap();
        VisitorStore::merge(&mut *tx, v1, v2).unwrap();
        tx.commit().unwrap();
        assert_eq!(s.resolve(v2).unwrap().unwrap().id, v1, "the merged id redirects");
        assert_eq!(s.visits(0, i64::MAX).unwrap().iter().filter(|v| v.visitor_id == Some(v1)).count(), 1);
        assert_eq!(s.clusters("m").unwrap().iter().map(|c| c.id).collect::<Vec<_>>(), [v1], "the faces moved too");
        // Retention: snapshots before 10 min, faces before 45 min, visits before 20 min.
        let (files, counts) = s.purge(10 * MIN, 45 * MIN, 20 * MIN).unwrap();
        assert_eq!(files, ["a.jpg", "b.jpg"]);
        assert_eq!(counts, PurgeCounts { snapshots: 2, faces: 1, visits: 1 });
        assert!(s.clusters("m").unwrap().is_empty(), "the visitor's only face expired");
        assert_eq!(s.visitor(v1).unwrap().unwrap().state, "active", "the visitor row stays (its visits count)");
    }
}
