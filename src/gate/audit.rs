//! The gates' audit log: every decision with its evidence and (optionally) the best face crop as
//! a JPEG, in a table beside the gallery (the SQLite store, WAL: the gate writes while the API and
//! the CLI read; or with `[cluster]` the shared PostgreSQL database, one log for every node). Rows older than `gate_log.keep_days` are purged at start and every hour.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("gate audit log in {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("gate audit log: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("gate audit log (shared database): {0}")]
    Postgres(String),
}

/// One logged decision (what `gates log` prints and `/api/gates/{id}/log` returns).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LogEntry {
    pub id: i64,
    pub gate: String,
    pub camera: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub time: String,
    pub outcome: String,
    pub reason: Option<String>,
    pub person: Option<String>,
    pub track_id: String,
    pub latency_s: f64,
    pub evidence: serde_json::Value,
    pub has_crop: bool,
}

/// A decision not yet written (the shared database was unreachable).
struct Pending {
    gate: String,
    camera: String,
    at_ms: i64,
    outcome: String,
    reason: Option<String>,
    person: Option<String>,
    track_id: String,
    latency_s: f64,
    evidence: String,
    crop: Option<Vec<u8>>,
}

/// Decisions kept in memory while the shared database is down (oldest dropped beyond, counted).
const PENDING_MAX: usize = 10_000;

struct PgLog {
    url: String,
    client: Mutex<Option<postgres::Client>>,
    pending: Mutex<VecDeque<Pending>>,
}

enum Db {
    Sqlite(Connection),
    Postgres(Box<PgLog>),
}

pub struct AuditLog {
    db: Db,
}

pub fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn pg(e: impl std::fmt::Display) -> AuditError {
    AuditError::Postgres(e.to_string())
}

const COLUMNS: &str = "id, gate, camera, at_ms, outcome, reason, person, track_id, latency_s, evidence, crop IS NOT NULL";

/// A row as read: (id, gate, camera, at_ms), [outcome, reason, person], (track_id, latency_s,
/// evidence, has_crop).
type Row = ((i64, String, String, i64), [Option<String>; 3], (String, f64, String, bool));

fn entry(((id, gate, camera, at_ms), [outcome, reason, person], (track_id, latency_s, evidence, has_crop)): Row) -> LogEntry {
    LogEntry {
        id,
        gate,
        camera,
        at_ms,
        time: crate::events::rfc3339(UNIX_EPOCH + Duration::from_millis(at_ms.max(0) as u64)),
        outcome: outcome.unwrap_or_default(),
        reason,
        person,
        track_id,
        latency_s,
        evidence: serde_json::from_str(&evidence).unwrap_or(serde_json::Value::Null),
        has_crop,
    }
}

impl AuditLog {
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let open_err = |reason: String| AuditError::Open { path: path.to_path_buf(), reason };
        let conn = crate::gallery::sqlite::open_sqlite(path).map_err(open_err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS gate_log (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                gate TEXT NOT NULL,
                camera TEXT NOT NULL,
                at_ms INTEGER NOT NULL,
                outcome TEXT NOT NULL,
                reason TEXT,
                person TEXT,
                track_id TEXT NOT NULL,
                latency_s REAL NOT NULL,
                evidence TEXT NOT NULL,
                crop BLOB
            );
            CREATE INDEX IF NOT EXISTS gate_log_gate_at ON gate_log(gate, at_ms);",
        )
        .map_err(|e| open_err(e.to_string()))?;
        Ok(Self { db: Db::Sqlite(conn) })
    }

    /// The log beside the gallery: the SQLite file, or the cluster's database (one log for
    /// every node).
    pub fn open_spec(spec: &crate::gallery::store::StoreSpec) -> Result<Self, AuditError> {
        let Some(url) = &spec.database else { return Self::open(&spec.path) };
        let mut c = crate::gallery::postgres::open_client(url).map_err(pg)?;
        crate::gallery::postgres::migrate(&mut c).map_err(pg)?;
        Ok(Self { db: Db::Postgres(Box::new(PgLog { url: url.clone(), client: Mutex::new(Some(c)), pending: Mutex::new(VecDeque::new()) })) })
    }

    /// Runs `f` on the shared database's connection (reopened when it broke).
    fn pg_with<R>(url: &str, client: &Mutex<Option<postgres::Client>>, f: impl FnOnce(&mut postgres::Client) -> Result<R, postgres::Error>) -> Result<R, AuditError> {
        let mut g = client.lock().unwrap_or_else(|p| p.into_inner());
        crate::gallery::postgres::blocking(|| {
            // Decisions are few: a liveness check first costs little and never repeats a write
            // that may have committed on a connection that died under it.
            if g.as_mut().is_none_or(|c| c.is_closed() || c.is_valid(Duration::from_secs(2)).is_err()) {
                *g = Some(crate::gallery::postgres::open_client(url).map_err(pg)?);
            }
            let c = g.as_mut().expect("connected above");
            f(c).map_err(pg)
        })
    }

    fn pg_insert(c: &mut postgres::Client, p: &Pending) -> Result<i64, postgres::Error> {
        Ok(c.query_one(
            "INSERT INTO gate_log (gate, camera, at_ms, outcome, reason, person, track_id, latency_s, evidence, crop) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            &[&p.gate, &p.camera, &p.at_ms, &p.outcome, &p.reason, &p.person, &p.track_id, &p.latency_s, &p.evidence, &p.crop],
        )?
        .get(0))
    }

    /// Appends one decision (committed before this returns); its row id. With the shared
    /// database down the decision is kept in memory (at most 10 000, the oldest dropped and
    /// counted) and written, in order, before the next one that can be: `Ok(None)` meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub fn append(&self, gate: &str, camera: &str, at: SystemTime, outcome: &str, reason: Option<&str>, person: Option<&str>, track_id: &str, latency_s: f64, evidence: &serde_json::Value, crop_jpeg: Option<&[u8]>) -> Result<Option<i64>, AuditError> {
        match &self.db {
            Db::Sqlite(conn) => {
                conn.execute(
                    "INSERT INTO gate_log (gate, camera, at_ms, outcome, reason, person, track_id, latency_s, evidence, crop) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    params![gate, camera, millis(at), outcome, reason, person, track_id, latency_s, evidence.to_string(), crop_jpeg],
                )?;
                Ok(Some(conn.last_insert_rowid()))
            }
            Db::Postgres(pg) => {
                let (url, client, pending) = (&pg.url, &pg.client, &pg.pending);
                let row = Pending {
                    gate: gate.into(),
                    camera: camera.into(),
                    at_ms: millis(at),
                    outcome: outcome.into(),
                    reason: reason.map(Into::into),
                    person: person.map(Into::into),
                    track_id: track_id.into(),
                    latency_s,
                    evidence: evidence.to_string(),
                    crop: crop_jpeg.map(<[u8]>::to_vec),
                };
                let mut q = pending.lock().unwrap_or_else(|p| p.into_inner());
                q.push_back(row);
                let mut last = None;
                let written = Self::pg_with(url, client, |c| {
                    while let Some(p) = q.front() {
                        last = Some(Self::pg_insert(c, p)?);
                        q.pop_front();
                    }
                    Ok(())
                });
                let m = crate::telemetry::metrics();
                while q.len() > PENDING_MAX {
                    q.pop_front();
                    m.gate_log_dropped.inc();
                }
                m.gate_log_pending.set(q.len() as i64);
                match written {
                    Ok(()) => Ok(last),
                    Err(e) => {
                        tracing::warn!(error = %e, pending = q.len(), "gate audit log: database unreachable; decision kept in memory until it is back");
                        Ok(None)
                    }
                }
            }
        }
    }

    /// Deletes decisions older than `keep`; how many.
    pub fn purge(&self, keep: Duration, now: SystemTime) -> Result<usize, AuditError> {
        let cutoff = millis(now) - keep.as_millis() as i64;
        match &self.db {
            Db::Sqlite(conn) => Ok(conn.execute("DELETE FROM gate_log WHERE at_ms < ?1", params![cutoff])?),
            Db::Postgres(pg) => Self::pg_with(&pg.url, &pg.client, |c| c.execute("DELETE FROM gate_log WHERE at_ms < $1", &[&cutoff]).map(|n| n as usize)),
        }
    }

    /// Decisions, newest first: of `gate` (all when None), at or after `since`, at most `limit`.
    pub fn entries(&self, gate: Option<&str>, since: Option<SystemTime>, limit: usize) -> Result<Vec<LogEntry>, AuditError> {
        let since = since.map(millis).unwrap_or(0);
        match &self.db {
            Db::Sqlite(conn) => {
                let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM gate_log WHERE (?1 IS NULL OR gate = ?1) AND at_ms >= ?2 ORDER BY at_ms DESC, id DESC LIMIT ?3"))?;
                let rows = stmt.query_map(params![gate, since, limit as i64], |r| {
                    Ok(entry(((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?), [r.get(4)?, r.get(5)?, r.get(6)?], (r.get(7)?, r.get(8)?, r.get(9)?, r.get(10)?))))
                })?;
                Ok(rows.collect::<Result<_, _>>()?)
            }
            Db::Postgres(pg) => Self::pg_with(&pg.url, &pg.client, |c| {
                let rows = c.query(&format!("SELECT {COLUMNS} FROM gate_log WHERE ($1::text IS NULL OR gate = $1) AND at_ms >= $2 ORDER BY at_ms DESC, id DESC LIMIT $3"), &[&gate, &since, &(limit as i64)])?;
                Ok(rows.iter().map(|r| entry(((r.get(0), r.get(1), r.get(2), r.get(3)), [r.get(4), r.get(5), r.get(6)], (r.get(7), r.get(8), r.get(9), r.get(10))))).collect())
            }),
        }
    }

    /// The face crop (JPEG) of one decision of `gate`.
    pub fn crop(&self, gate: &str, id: i64) -> Result<Option<Vec<u8>>, AuditError> {
        match &self.db {
            Db::Sqlite(conn) => {
                let mut stmt = conn.prepare("SELECT crop FROM gate_log WHERE id = ?1 AND gate = ?2")?;
                let mut rows = stmt.query(params![id, gate])?;
                Ok(match rows.next()? {
                    Some(r) => r.get::<_, Option<Vec<u8>>>(0)?,
                    None => None,
                })
            }
            Db::Postgres(pg) => Self::pg_with(&pg.url, &pg.client, |c| Ok(c.query_opt("SELECT crop FROM gate_log WHERE id = $1 AND gate = $2", &[&id, &gate])?.and_then(|r| r.get(0)))),
        }
    }

    /// References to a person in the log (for `forget`): the rows naming them are deleted.
    pub fn forget_person(&self, name: &str) -> Result<usize, AuditError> {
        match &self.db {
            Db::Sqlite(conn) => Ok(conn.execute("DELETE FROM gate_log WHERE person = ?1", params![name])?),
            Db::Postgres(pg) => Self::pg_with(&pg.url, &pg.client, |c| c.execute("DELETE FROM gate_log WHERE person = $1", &[&name]).map(|n| n as usize)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_logged_listed_and_purged() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("g.db")).unwrap();
        let now = SystemTime::now();
        let ev = serde_json::json!({"votes": 2});
        log.append("door", "cam", now - Duration::from_secs(3 * 86_400), "denied", Some("unknown"), None, "cam-1", 0.2, &ev, None).unwrap();
        let id = log.append("door", "cam", now, "granted", None, Some("alice"), "cam-2", 0.25, &ev, Some(b"jpeg")).unwrap().unwrap();
        log.append("garage", "cam2", now, "granted", None, Some("bob"), "cam2-1", 0.3, &ev, None).unwrap();
        let door = log.entries(Some("door"), None, 100).unwrap();
        assert_eq!(door.iter().map(|e| e.outcome.as_str()).collect::<Vec<_>>(), ["granted", "denied"], "newest first");
        assert_eq!(door[0].evidence, ev);
        assert!(door[0].has_crop && !door[1].has_crop);
        assert_eq!(log.crop("door", id).unwrap().as_deref(), Some(&b"jpeg"[..]));
        assert_eq!(log.crop("garage", id).unwrap(), None, "a crop is served for its own gate only");
        assert_eq!(log.entries(None, Some(now - Duration::from_secs(60)), 100).unwrap().len(), 2);
        assert_eq!(log.purge(Duration::from_secs(86_400), now).unwrap(), 1);
        assert_eq!(log.entries(Some("door"), None, 100).unwrap().len(), 1);
        assert_eq!(log.forget_person("alice").unwrap(), 1);
    }
}
