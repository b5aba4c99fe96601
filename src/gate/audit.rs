//! The gates' audit log: every decision with its evidence and (optionally) the best face crop as
//! a JPEG, in a table of the gallery store (SQLite, WAL: the gate writes while the API and the
//! CLI read). Rows older than `gate_log.keep_days` are purged at start and every hour.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("gate audit log in {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("gate audit log: {0}")]
    Sql(#[from] rusqlite::Error),
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

pub struct AuditLog {
    conn: Connection,
}

pub fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
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
        Ok(Self { conn })
    }

    /// Appends one decision (committed before this returns); its row id.
    #[allow(clippy::too_many_arguments)]
    pub fn append(&self, gate: &str, camera: &str, at: SystemTime, outcome: &str, reason: Option<&str>, person: Option<&str>, track_id: &str, latency_s: f64, evidence: &serde_json::Value, crop_jpeg: Option<&[u8]>) -> Result<i64, AuditError> {
        self.conn.execute(
            "INSERT INTO gate_log (gate, camera, at_ms, outcome, reason, person, track_id, latency_s, evidence, crop) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![gate, camera, millis(at), outcome, reason, person, track_id, latency_s, evidence.to_string(), crop_jpeg],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Deletes decisions older than `keep`; how many.
    pub fn purge(&self, keep: Duration, now: SystemTime) -> Result<usize, AuditError> {
        let cutoff = millis(now) - keep.as_millis() as i64;
        Ok(self.conn.execute("DELETE FROM gate_log WHERE at_ms < ?1", params![cutoff])?)
    }

    /// Decisions, newest first: of `gate` (all when None), at or after `since`, at most `limit`.
    pub fn entries(&self, gate: Option<&str>, since: Option<SystemTime>, limit: usize) -> Result<Vec<LogEntry>, AuditError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, gate, camera, at_ms, outcome, reason, person, track_id, latency_s, evidence, crop IS NOT NULL
             FROM gate_log WHERE (?1 IS NULL OR gate = ?1) AND at_ms >= ?2 ORDER BY at_ms DESC, id DESC LIMIT ?3",
        )?;
        let since = since.map(millis).unwrap_or(0);
        let rows = stmt.query_map(params![gate, since, limit as i64], |r| {
            let at_ms: i64 = r.get(3)?;
            let evidence: String = r.get(9)?;
            Ok(LogEntry {
                id: r.get(0)?,
                gate: r.get(1)?,
                camera: r.get(2)?,
                at_ms,
                time: crate::events::rfc3339(UNIX_EPOCH + Duration::from_millis(at_ms.max(0) as u64)),
                outcome: r.get(4)?,
                reason: r.get(5)?,
                person: r.get(6)?,
                track_id: r.get(7)?,
                latency_s: r.get(8)?,
                evidence: serde_json::from_str(&evidence).unwrap_or(serde_json::Value::Null),
                has_crop: r.get(10)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The face crop (JPEG) of one decision of `gate`.
    pub fn crop(&self, gate: &str, id: i64) -> Result<Option<Vec<u8>>, AuditError> {
        let mut stmt = self.conn.prepare("SELECT crop FROM gate_log WHERE id = ?1 AND gate = ?2")?;
        let mut rows = stmt.query(params![id, gate])?;
        Ok(match rows.next()? {
            Some(r) => r.get::<_, Option<Vec<u8>>>(0)?,
            None => None,
        })
    }

    /// References to a person in the log (for `forget`): the rows naming them are deleted.
    pub fn forget_person(&self, name: &str) -> Result<usize, AuditError> {
        Ok(self.conn.execute("DELETE FROM gate_log WHERE person = ?1", params![name])?)
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
        let id = log.append("door", "cam", now, "granted", None, Some("alice"), "cam-2", 0.25, &ev, Some(b"jpeg")).unwrap();
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
