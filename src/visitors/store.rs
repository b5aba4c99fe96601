//! The visitors' tables in the gallery store (SQLite, WAL): visitors and their faces, best-shot
//! snapshots (rows here, JPEG files in the snapshot folder), sightings (one row per track),
//! visits, and feedback. Every track is committed in one transaction, so a `kill -9` loses at
//! most the track being written; the JPEG files are written before their row, and a file without
//! a row is removed at the next start.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;

use super::cluster::{Cluster, Exemplar};

#[derive(Debug, thiserror::Error)]
pub enum VisitorStoreError {
    #[error("visitor store {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("visitor store: {0}")]
    Sql(#[from] rusqlite::Error),
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
    pub model_id: &'a str,
    pub quality: f32,
    /// Sites the camera belongs to, and the visits' gap.
    pub sites: &'a [String],
    pub gap_ms: i64,
}

pub struct VisitorStore {
    conn: Connection,
    pub path: PathBuf,
}

fn blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn unblob(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn opt_u64(v: Option<i64>) -> Option<u64> {
    v.map(|x| x as u64)
}

impl VisitorStore {
    pub fn open(path: &Path) -> Result<Self, VisitorStoreError> {
        let open_err = |reason: String| VisitorStoreError::Open { path: path.to_path_buf(), reason };
        let conn = crate::gallery::sqlite::open_sqlite(path).map_err(open_err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS visitors (
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
            );",
        )
        .map_err(|e| open_err(e.to_string()))?;
        Ok(Self { conn, path: path.to_path_buf() })
    }

    /// Changes when another connection (the CLI, the API) committed: the running application
    /// then reloads its clusters.
    pub fn data_version(&self) -> Result<i64, VisitorStoreError> {
        Ok(self.conn.query_row("PRAGMA data_version", [], |r| r.get(0))?)
    }

    /// The clusters to search (active and ignored visitors with faces of `model_id`).
    pub fn clusters(&self, model_id: &str) -> Result<Vec<Cluster>, VisitorStoreError> {
        let mut st = self.conn.prepare(
            "SELECT v.id, v.state, f.id, f.embedding, f.quality FROM visitors v JOIN visitor_faces f ON f.visitor_id = v.id
             WHERE v.state IN ('active', 'ignored') AND f.model_id = ?1 ORDER BY v.id, f.id",
        )?;
        let mut out: BTreeMap<u64, (bool, Vec<Exemplar>)> = BTreeMap::new();
        let rows = st.query_map([model_id], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?, r.get::<_, i64>(2)? as u64, r.get::<_, Vec<u8>>(3)?, r.get::<_, f64>(4)? as f32)))?;
        for row in rows {
            let (vid, state, fid, emb, q) = row?;
            let embedding = unblob(&emb);
            if !crate::gallery::store::is_unit_embedding(&embedding) {
                continue;
            }
            out.entry(vid).or_insert_with(|| (state == "ignored", Vec::new())).1.push(Exemplar { face_id: fid, embedding, quality: q });
        }
        Ok(out.into_iter().map(|(id, (ignored, ex))| Cluster::new(id, ignored, ex)).collect())
    }

    pub fn begin(&mut self) -> Result<Transaction<'_>, VisitorStoreError> {
        Ok(self.conn.transaction()?)
    }

    pub fn new_visitor(tx: &Transaction, at_ms: i64) -> Result<u64, VisitorStoreError> {
        tx.execute("INSERT INTO visitors (created_ms, last_seen_ms) VALUES (?1, ?1)", params![at_ms])?;
        Ok(tx.last_insert_rowid() as u64)
    }

    pub fn add_face(tx: &Transaction, visitor: u64, embedding: &[f32], model_id: &str, quality: f32, at_ms: i64, track_id: &str) -> Result<u64, VisitorStoreError> {
        tx.execute(
            "INSERT INTO visitor_faces (visitor_id, embedding, model_id, quality, at_ms, track_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![visitor as i64, blob(embedding), model_id, quality, at_ms, track_id],
        )?;
        Ok(tx.last_insert_rowid() as u64)
    }

    pub fn remove_faces(tx: &Transaction, ids: &[u64]) -> Result<(), VisitorStoreError> {
        for id in ids {
            tx.execute("DELETE FROM visitor_faces WHERE id = ?1", params![*id as i64])?;
        }
        Ok(())
    }

    /// Merges `from` into `into`: faces, sightings, visits and snapshots follow; `from` redirects.
    pub fn merge(tx: &Transaction, into: u64, from: u64) -> Result<(), VisitorStoreError> {
        if into == from {
            return Ok(());
        }
        let (i, f) = (into as i64, from as i64);
        tx.execute("UPDATE visitor_faces SET visitor_id = ?1 WHERE visitor_id = ?2", params![i, f])?;
        tx.execute("UPDATE sightings SET visitor_id = ?1 WHERE visitor_id = ?2", params![i, f])?;
        tx.execute("UPDATE visits SET visitor_id = ?1 WHERE visitor_id = ?2", params![i, f])?;
        tx.execute("UPDATE snapshots SET visitor_id = ?1 WHERE visitor_id = ?2", params![i, f])?;
        tx.execute("UPDATE visitors SET merged_into = ?1 WHERE merged_into = ?2", params![i, f])?;
        tx.execute(
            "UPDATE visitors SET tracks = tracks + (SELECT tracks FROM visitors WHERE id = ?2),
                 created_ms = MIN(created_ms, (SELECT created_ms FROM visitors WHERE id = ?2)),
                 last_seen_ms = MAX(last_seen_ms, (SELECT last_seen_ms FROM visitors WHERE id = ?2)),
                 state = CASE WHEN state = 'ignored' OR (SELECT state FROM visitors WHERE id = ?2) = 'ignored' THEN 'ignored' ELSE state END
             WHERE id = ?1",
            params![i, f],
        )?;
        tx.execute("UPDATE visitors SET state = 'merged', merged_into = ?1, tracks = 0 WHERE id = ?2", params![i, f])?;
        Ok(())
    }

    pub fn insert_snapshot(tx: &Transaction, s: &SnapshotRow) -> Result<(), VisitorStoreError> {
        tx.execute(
            "INSERT OR REPLACE INTO snapshots (id, camera, track_id, at_ms, person_id, visitor_id, quality, face_file, context_file) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![s.id, s.camera, s.track_id, s.at_ms, s.person_id.map(|x| x as i64), s.visitor_id.map(|x| x as i64), s.quality, s.face_file, s.context_file],
        )?;
        Ok(())
    }

    /// The sighting of a track, its visits (one per site), the visitor's counters; true for each
    /// site where the track started a new visit.
    pub fn record_track(tx: &Transaction, t: &TrackRecord) -> Result<Vec<bool>, VisitorStoreError> {
        let (person, visitor) = match t.subject {
            Some(Subject::Person(p)) => (Some(p as i64), None),
            Some(Subject::Visitor(v)) => (None, Some(v as i64)),
            None => (None, None),
        };
        tx.execute(
            "INSERT OR REPLACE INTO sightings (id, track_id, camera, first_ms, last_ms, person_id, visitor_id, snapshot, template, model_id, quality, person_name) VALUES (?11, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?12)",
            params![t.track_id, t.camera, t.first_ms, t.last_ms, person, visitor, t.snapshot.map(|s| s.id.clone()), t.template.map(blob), t.model_id, t.quality, t.id, t.person_name],
        )?;
        if let Some(s) = t.snapshot {
            Self::insert_snapshot(tx, s)?;
        }
        if let Some(v) = visitor {
            tx.execute("UPDATE visitors SET tracks = tracks + 1, last_seen_ms = MAX(last_seen_ms, ?2) WHERE id = ?1", params![v, t.last_ms])?;
            if let Some(s) = t.snapshot {
                tx.execute("UPDATE visitors SET best_snapshot = ?2, best_quality = ?3 WHERE id = ?1 AND (best_snapshot IS NULL OR best_quality < ?3)", params![v, s.id, s.quality])?;
            }
        }
        let mut new = Vec::new();
        if person.is_none() && visitor.is_none() {
            return Ok(new);
        }
        for site in t.sites {
            new.push(Self::add_to_visit(tx, site, person, visitor, t.camera, t.first_ms, t.last_ms, t.gap_ms)?);
            if let (Some(_), Some(n)) = (person, t.person_name) {
                tx.execute("UPDATE visits SET person_name = ?1 WHERE person_id = ?2 AND person_name IS NULL", params![n, person])?;
            }
        }
        Ok(new)
    }

    /// Extends the subject's visit at `site` that this sighting touches (within `gap`), else starts one.
    #[allow(clippy::too_many_arguments)]
    fn add_to_visit(tx: &Transaction, site: &str, person: Option<i64>, visitor: Option<i64>, camera: &str, first: i64, last: i64, gap: i64) -> Result<bool, VisitorStoreError> {
        let found: Option<(i64, String)> = tx
            .query_row(
                "SELECT id, cameras FROM visits WHERE site = ?1 AND person_id IS ?2 AND visitor_id IS ?3 AND last_ms >= ?4 AND first_ms <= ?5 ORDER BY last_ms DESC LIMIT 1",
                params![site, person, visitor, first - gap, last + gap],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match found {
            Some((id, cams)) => {
                let mut set: BTreeSet<String> = serde_json::from_str(&cams).unwrap_or_default();
                set.insert(camera.to_string());
                tx.execute(
                    "UPDATE visits SET first_ms = MIN(first_ms, ?2), last_ms = MAX(last_ms, ?3), tracks = tracks + 1, cameras = ?4 WHERE id = ?1",
                    params![id, first, last, serde_json::to_string(&set).unwrap_or_default()],
                )?;
                Ok(false)
            }
            None => {
                tx.execute(
                    "INSERT INTO visits (site, person_id, visitor_id, first_ms, last_ms, tracks, cameras) VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6)",
                    params![site, person, visitor, first, last, serde_json::to_string(&[camera]).unwrap_or_default()],
                )?;
                Ok(true)
            }
        }
    }

    fn visitor_of_row(r: &rusqlite::Row) -> rusqlite::Result<VisitorRow> {
        let id = r.get::<_, i64>(0)? as u64;
        Ok(VisitorRow {
            id,
            name: visitor_name(id),
            state: r.get(1)?,
            merged_into: opt_u64(r.get(2)?),
            person_id: opt_u64(r.get(3)?),
            created_ms: r.get(4)?,
            last_seen_ms: r.get(5)?,
            tracks: r.get::<_, i64>(6)? as u64,
            best_snapshot: r.get(7)?,
            faces: r.get::<_, i64>(8)? as u64,
        })
    }

    const VISITOR_COLS: &'static str = "v.id, v.state, v.merged_into, v.person_id, v.created_ms, v.last_seen_ms, v.tracks, v.best_snapshot, (SELECT COUNT(*) FROM visitor_faces f WHERE f.visitor_id = v.id)";

    /// Visitors (merged ones only with `all`), oldest first.
    pub fn visitors(&self, all: bool) -> Result<Vec<VisitorRow>, VisitorStoreError> {
        let sql = format!("SELECT {} FROM visitors v WHERE ?1 OR v.state IN ('active', 'ignored') ORDER BY v.id", Self::VISITOR_COLS);
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map([all], Self::visitor_of_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn visitor(&self, id: u64) -> Result<Option<VisitorRow>, VisitorStoreError> {
        let sql = format!("SELECT {} FROM visitors v WHERE v.id = ?1", Self::VISITOR_COLS);
        Ok(self.conn.query_row(&sql, [id as i64], Self::visitor_of_row).optional()?)
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
        let mut st = self.conn.prepare("SELECT id, embedding, quality, track_id FROM visitor_faces WHERE visitor_id = ?1 ORDER BY quality DESC, id")?;
        let rows = st.query_map([visitor as i64], |r| Ok(VisitorFace { id: r.get::<_, i64>(0)? as u64, embedding: unblob(&r.get::<_, Vec<u8>>(1)?), quality: r.get::<_, f64>(2)? as f32, sighting: r.get(3)? }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn set_state(&mut self, id: u64, state: &str) -> Result<(), VisitorStoreError> {
        self.conn.execute("UPDATE visitors SET state = ?2 WHERE id = ?1", params![id as i64, state])?;
        Ok(())
    }

    /// A visitor becomes person `person_id`: its sightings, visits and snapshots now name the
    /// person; its faces go (they were enrolled as the person's samples by the caller).
    pub fn mark_named(tx: &Transaction, id: u64, person_id: u64) -> Result<(), VisitorStoreError> {
        let (v, p) = (id as i64, person_id as i64);
        tx.execute("UPDATE visitors SET state = 'named', person_id = ?2 WHERE id = ?1", params![v, p])?;
        tx.execute("UPDATE sightings SET person_id = ?2, visitor_id = NULL WHERE visitor_id = ?1", params![v, p])?;
        tx.execute("UPDATE visits SET person_id = ?2, visitor_id = NULL WHERE visitor_id = ?1", params![v, p])?;
        tx.execute("UPDATE snapshots SET person_id = ?2, visitor_id = NULL WHERE visitor_id = ?1", params![v, p])?;
        tx.execute("DELETE FROM visitor_faces WHERE visitor_id = ?1", params![v])?;
        Ok(())
    }

    pub fn snapshot(&self, id: &str) -> Result<Option<SnapshotRow>, VisitorStoreError> {
        Ok(self
            .conn
            .query_row("SELECT id, camera, track_id, at_ms, person_id, visitor_id, quality, face_file, context_file FROM snapshots WHERE id = ?1", [id], snapshot_of_row)
            .optional()?)
    }

    /// A sighting by its id, or the latest of a track id (`<camera>-<track>` as events name it).
    pub fn sighting(&self, id_or_track: &str) -> Result<Option<SightingFull>, VisitorStoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, track_id, camera, first_ms, last_ms, person_id, visitor_id, snapshot, template, model_id, quality, person_name FROM sightings WHERE id = ?1 OR track_id = ?1 ORDER BY id = ?1 DESC, first_ms DESC LIMIT 1",
                [id_or_track],
                |r| {
                    Ok(SightingFull {
                        sighting: Sighting { id: r.get(0)?, track_id: r.get(1)?, camera: r.get(2)?, first_ms: r.get(3)?, last_ms: r.get(4)?, person_id: opt_u64(r.get(5)?), person_name: r.get(11)?, visitor_id: opt_u64(r.get(6)?), snapshot: r.get(7)? },
                        template: r.get::<_, Option<Vec<u8>>>(8)?.map(|b| unblob(&b)),
                        model_id: r.get(9)?,
                        quality: r.get::<_, f64>(10)? as f32,
                    })
                },
            )
            .optional()?)
    }

    /// Sightings whose track started in `[from, to)` (ms), oldest first.
    pub fn sightings(&self, from: i64, to: i64) -> Result<Vec<Sighting>, VisitorStoreError> {
        let mut st = self.conn.prepare("SELECT id, track_id, camera, first_ms, last_ms, person_id, visitor_id, snapshot, person_name FROM sightings WHERE first_ms >= ?1 AND first_ms < ?2 ORDER BY first_ms")?;
        let rows = st.query_map(params![from, to], |r| {
            Ok(Sighting { id: r.get(0)?, track_id: r.get(1)?, camera: r.get(2)?, first_ms: r.get(3)?, last_ms: r.get(4)?, person_id: opt_u64(r.get(5)?), person_name: r.get(8)?, visitor_id: opt_u64(r.get(6)?), snapshot: r.get(7)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Visits that overlap `[from, to)` (ms), of visitors not ignored.
    pub fn visits(&self, from: i64, to: i64) -> Result<Vec<VisitRow>, VisitorStoreError> {
        let mut st = self.conn.prepare(
            "SELECT id, site, person_id, visitor_id, first_ms, last_ms, tracks, cameras, person_name FROM visits
             WHERE last_ms >= ?1 AND first_ms < ?2
               AND (visitor_id IS NULL OR visitor_id NOT IN (SELECT id FROM visitors WHERE state = 'ignored'))
             ORDER BY first_ms, id",
        )?;
        let rows = st.query_map(params![from, to], |r| {
            let cams: String = r.get(7)?;
            Ok(VisitRow {
                id: r.get::<_, i64>(0)? as u64,
                site: r.get(1)?,
                person_id: opt_u64(r.get(2)?),
                person_name: r.get(8)?,
                visitor_id: opt_u64(r.get(3)?),
                first_ms: r.get(4)?,
                last_ms: r.get(5)?,
                tracks: r.get::<_, i64>(6)? as u64,
                cameras: serde_json::from_str(&cams).unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Subjects with a visit at `site` that began before `before` (ms): who is returning.
    pub fn seen_before(&self, before: i64) -> Result<(BTreeSet<u64>, BTreeSet<u64>), VisitorStoreError> {
        let mut st = self.conn.prepare("SELECT DISTINCT person_id, visitor_id FROM visits WHERE first_ms < ?1")?;
        let mut persons = BTreeSet::new();
        let mut visitors = BTreeSet::new();
        let rows = st.query_map([before], |r| Ok((opt_u64(r.get(0)?), opt_u64(r.get(1)?))))?;
        for row in rows {
            match row? {
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
    pub fn reject(tx: &Transaction, sighting: &str, person_id: u64, person_name: &str, now_ms: i64, gap_ms: i64, sites: &[String]) -> Result<(), VisitorStoreError> {
        tx.execute("INSERT INTO feedback (track_id, action, person_id, person_name, at_ms) VALUES (?1, 'not_person', ?2, ?3, ?4)", params![sighting, person_id as i64, person_name, now_ms])?;
        let (first, last): (i64, i64) = tx.query_row("SELECT first_ms, last_ms FROM sightings WHERE id = ?1", [sighting], |r| Ok((r.get(0)?, r.get(1)?)))?;
        tx.execute("UPDATE sightings SET person_id = NULL WHERE id = ?1", [sighting])?;
        tx.execute("UPDATE snapshots SET person_id = NULL WHERE id = ?1", [sighting])?;
        Self::rebuild_visits(tx, Subject::Person(person_id), first, last, gap_ms, sites)
    }

    /// Rebuilds a subject's visits around `[first, last]` from its sightings.
    fn rebuild_visits(tx: &Transaction, subject: Subject, first: i64, last: i64, gap_ms: i64, sites: &[String]) -> Result<(), VisitorStoreError> {
        let (col, id) = match subject {
            Subject::Person(p) => ("person_id", p as i64),
            Subject::Visitor(v) => ("visitor_id", v as i64),
        };
        // The visits this sighting was part of span at most [first - gap, last + gap] on each side.
        let (lo, hi): (Option<i64>, Option<i64>) =
            tx.query_row(&format!("SELECT MIN(first_ms), MAX(last_ms) FROM visits WHERE {col} = ?1 AND last_ms >= ?2 AND first_ms <= ?3"), params![id, first - gap_ms, last + gap_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let (Some(lo), Some(hi)) = (lo, hi) else { return Ok(()) };
        tx.execute(&format!("DELETE FROM visits WHERE {col} = ?1 AND last_ms >= ?2 AND first_ms <= ?3"), params![id, lo, hi])?;
        let mut st = tx.prepare(&format!("SELECT camera, first_ms, last_ms FROM sightings WHERE {col} = ?1 AND first_ms >= ?2 AND first_ms <= ?3 ORDER BY first_ms"))?;
        let rows: Vec<(String, i64, i64)> = st.query_map(params![id, lo, hi], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?;
        let (person, visitor) = match subject {
            Subject::Person(p) => (Some(p as i64), None),
            Subject::Visitor(v) => (None, Some(v as i64)),
        };
        for (camera, f, l) in rows {
            for site in sites {
                Self::add_to_visit(tx, site, person, visitor, &camera, f, l, gap_ms)?;
            }
        }
        Ok(())
    }

    /// A sighting that turned out unknown joins `visitor` (its visits are added).
    pub fn assign_sighting(tx: &Transaction, sighting: &str, visitor: u64, gap_ms: i64, sites: &[String]) -> Result<(), VisitorStoreError> {
        tx.execute("UPDATE sightings SET visitor_id = ?2 WHERE id = ?1", params![sighting, visitor as i64])?;
        tx.execute("UPDATE snapshots SET visitor_id = ?2 WHERE id = ?1", params![sighting, visitor as i64])?;
        let (camera, first, last): (String, i64, i64) = tx.query_row("SELECT camera, first_ms, last_ms FROM sightings WHERE id = ?1", [sighting], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        tx.execute("UPDATE visitors SET tracks = tracks + 1, last_seen_ms = MAX(last_seen_ms, ?2) WHERE id = ?1", params![visitor as i64, last])?;
        for site in sites {
            Self::add_to_visit(tx, site, None, Some(visitor as i64), &camera, first, last, gap_ms)?;
        }
        Ok(())
    }

    /// Feedback rows (newest first).
    pub fn feedback(&self) -> Result<Vec<serde_json::Value>, VisitorStoreError> {
        let mut st = self.conn.prepare("SELECT id, track_id, action, person_id, person_name, at_ms FROM feedback ORDER BY id DESC")?;
        let rows = st.query_map([], |r| {
            Ok(serde_json::json!({"id": r.get::<_, i64>(0)?, "track_id": r.get::<_, String>(1)?, "action": r.get::<_, String>(2)?, "person_id": r.get::<_, Option<i64>>(3)?, "person": r.get::<_, Option<String>>(4)?, "at_ms": r.get::<_, i64>(5)?}))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes everything of one visitor (and of those merged into it): faces, sightings,
    /// visits, snapshots (rows; the files are returned for the caller to delete) and its rows.
    pub fn forget_visitor(&mut self, id: u64) -> Result<Vec<String>, VisitorStoreError> {
        let tx = self.conn.transaction()?;
        let mut ids = vec![id as i64];
        let mut i = 0;
        while i < ids.len() {
            let mut st = tx.prepare("SELECT id FROM visitors WHERE merged_into = ?1")?;
            let more: Vec<i64> = st.query_map([ids[i]], |r| r.get(0))?.collect::<Result<_, _>>()?;
            drop(st);
            ids.extend(more.into_iter().filter(|m| !ids.contains(m)).collect::<Vec<_>>());
            i += 1;
        }
        let mut files = Vec::new();
        for v in &ids {
            files.extend(Self::snapshot_files(&tx, "visitor_id", *v)?);
            tx.execute("DELETE FROM snapshots WHERE visitor_id = ?1", [v])?;
            tx.execute("DELETE FROM visitor_faces WHERE visitor_id = ?1", [v])?;
            tx.execute("DELETE FROM sightings WHERE visitor_id = ?1", [v])?;
            tx.execute("DELETE FROM visits WHERE visitor_id = ?1", [v])?;
            tx.execute("DELETE FROM visitors WHERE id = ?1", [v])?;
        }
        tx.commit()?;
        Ok(files)
    }

    /// The person id sightings recorded under this name (persons of the config).
    pub fn person_id_by_name(&self, name: &str) -> Result<Option<u64>, VisitorStoreError> {
        Ok(self.conn.query_row("SELECT person_id FROM sightings WHERE person_name = ?1 AND person_id IS NOT NULL LIMIT 1", [name], |r| r.get::<_, i64>(0)).optional()?.map(|x| x as u64))
    }

    /// Deletes a person's sightings, visits, snapshots and feedback (and the visitor rows that
    /// became the person); the files to delete are returned.
    pub fn forget_person(&mut self, person_id: u64) -> Result<Vec<String>, VisitorStoreError> {
        let tx = self.conn.transaction()?;
        let p = person_id as i64;
        let files = Self::snapshot_files(&tx, "person_id", p)?;
        tx.execute("DELETE FROM snapshots WHERE person_id = ?1", [p])?;
        tx.execute("DELETE FROM sightings WHERE person_id = ?1", [p])?;
        tx.execute("DELETE FROM visits WHERE person_id = ?1", [p])?;
        tx.execute("DELETE FROM feedback WHERE person_id = ?1", [p])?;
        tx.execute("DELETE FROM visitors WHERE person_id = ?1", [p])?;
        tx.commit()?;
        Ok(files)
    }

    fn snapshot_files(tx: &Transaction, col: &str, id: i64) -> Result<Vec<String>, VisitorStoreError> {
        let mut st = tx.prepare(&format!("SELECT face_file, context_file FROM snapshots WHERE {col} = ?1"))?;
        let rows: Vec<(String, Option<String>)> = st.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        Ok(rows.into_iter().flat_map(|(a, b)| std::iter::once(a).chain(b)).collect())
    }

    /// Retention: snapshots before `snapshots_before`, unnamed visitors' faces (and sightings'
    /// templates) before `faces_before`, visits and sightings before `visits_before` (all ms).
    /// Returns the snapshot files to delete and the counts removed.
    pub fn purge(&mut self, snapshots_before: i64, faces_before: i64, visits_before: i64) -> Result<(Vec<String>, PurgeCounts), VisitorStoreError> {
        let tx = self.conn.transaction()?;
        let mut files = Vec::new();
        {
            let mut st = tx.prepare("SELECT face_file, context_file FROM snapshots WHERE at_ms < ?1")?;
            let rows: Vec<(String, Option<String>)> = st.query_map([snapshots_before], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
            files.extend(rows.into_iter().flat_map(|(a, b)| std::iter::once(a).chain(b)));
        }
        let snapshots = tx.execute("DELETE FROM snapshots WHERE at_ms < ?1", [snapshots_before])?;
        tx.execute("UPDATE visitors SET best_snapshot = NULL WHERE best_snapshot IS NOT NULL AND best_snapshot NOT IN (SELECT id FROM snapshots)", [])?;
        tx.execute("UPDATE sightings SET snapshot = NULL WHERE snapshot IS NOT NULL AND snapshot NOT IN (SELECT id FROM snapshots)", [])?;
        let faces = tx.execute("DELETE FROM visitor_faces WHERE at_ms < ?1", [faces_before])?;
        tx.execute("UPDATE sightings SET template = NULL WHERE template IS NOT NULL AND last_ms < ?1", [faces_before])?;
        let visits = tx.execute("DELETE FROM visits WHERE last_ms < ?1", [visits_before])?;
        tx.execute("DELETE FROM sightings WHERE last_ms < ?1", [visits_before])?;
        tx.commit()?;
        Ok((files, PurgeCounts { snapshots, faces, visits }))
    }

    /// Every snapshot file name the store knows (to remove files left by a crash).
    pub fn snapshot_file_names(&self) -> Result<std::collections::HashSet<String>, VisitorStoreError> {
        let mut st = self.conn.prepare("SELECT face_file, context_file FROM snapshots")?;
        let rows: Vec<(String, Option<String>)> = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        Ok(rows.into_iter().flat_map(|(a, b)| std::iter::once(a).chain(b)).collect())
    }

    /// Row counts per table (for tests and `visitors list`'s summary).
    pub fn counts(&self) -> Result<HashMap<&'static str, i64>, VisitorStoreError> {
        let mut out = HashMap::new();
        for t in ["visitors", "visitor_faces", "snapshots", "sightings", "visits", "feedback"] {
            out.insert(t, self.conn.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))?);
        }
        Ok(out)
    }
}

fn snapshot_of_row(r: &rusqlite::Row) -> rusqlite::Result<SnapshotRow> {
    Ok(SnapshotRow {
        id: r.get(0)?,
        camera: r.get(1)?,
        track_id: r.get(2)?,
        at_ms: r.get(3)?,
        person_id: opt_u64(r.get(4)?),
        visitor_id: opt_u64(r.get(5)?),
        quality: r.get::<_, f64>(6)? as f32,
        face_file: r.get(7)?,
        context_file: r.get(8)?,
    })
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
        let tx = store.begin().unwrap();
        let rec = TrackRecord { id, track_id: id, camera, first_ms: at, last_ms: at + MIN, subject: Some(subject), person_name: Some("ann"), snapshot: Some(&snap), template: Some(template), model_id: "m", quality: 0.5, sites: &["all".to_string()], gap_ms: 10 * MIN };
        let new = VisitorStore::record_track(&tx, &rec).unwrap();
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
        let tx = s.begin().unwrap();
        let (v1, v2) = (VisitorStore::new_visitor(&tx, 0).unwrap(), VisitorStore::new_visitor(&tx, 0).unwrap());
        VisitorStore::add_face(&tx, v2, &t, "m", 0.4, 40 * MIN, "d").unwrap();
        tx.commit().unwrap();
        track(&mut s, "d", "door", 40 * MIN, Subject::Visitor(v2), &t);
        let tx = s.begin().unwrap();
        VisitorStore::merge(&tx, v1, v2).unwrap();
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
