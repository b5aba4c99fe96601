//! The embedded gallery backend: SQLite in WAL mode (one file beside the node). Every enrollment
//! is one transaction, so a crash or `kill -9` leaves the store consistent with every committed
//! enrollment present.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use super::store::{Backend, Export, PersonRow, SampleRow, StoreError, from_blob, now, to_blob};

/// Stores made before ids were AUTOINCREMENT reused the highest deleted id; the persons table is
/// rebuilt once with AUTOINCREMENT (SQLite's table-rebuild procedure, foreign keys off meanwhile so
/// the samples stay), and the sequence starts above every id seen.
fn migrate_autoincrement(conn: &Connection) -> Result<(), rusqlite::Error> {
    let sql: String = conn.query_row("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'persons'", [], |r| r.get(0))?;
    if sql.to_ascii_uppercase().contains("AUTOINCREMENT") {
        return Ok(());
    }
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    let result = conn.execute_batch(
        "BEGIN IMMEDIATE;
         CREATE TABLE persons_new (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             name TEXT NOT NULL UNIQUE,
             metadata TEXT NOT NULL DEFAULT '{}',
             created INTEGER NOT NULL,
             updated INTEGER NOT NULL
         );
         INSERT INTO persons_new (id, name, metadata, created, updated) SELECT id, name, metadata, created, updated FROM persons;
         DROP TABLE persons;
         ALTER TABLE persons_new RENAME TO persons;
         COMMIT;",
    );
    if result.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    conn.pragma_update(None, "foreign_keys", "ON")?;
    result
}

/// Opens (creating its folder) the store's SQLite file the way every table of it is used: WAL
/// (readers never block the writer and a killed writer loses only its open transaction),
/// synchronous NORMAL, a 5 s busy timeout. The error is the reason, for the caller's error type.
pub fn open_sqlite(path: &Path) -> Result<Connection, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let conn = Connection::open(path).map_err(|e| e.to_string())?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| e.to_string())?;
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(|e| e.to_string())?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| e.to_string())?;
    Ok(conn)
}

pub struct Sqlite {
    conn: Connection,
}

impl Sqlite {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |reason: String| StoreError::Open { path: path.to_path_buf(), reason };
        let conn = open_sqlite(path).map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS persons (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                name TEXT NOT NULL UNIQUE,
                metadata TEXT NOT NULL DEFAULT '{}',
                created INTEGER NOT NULL,
                updated INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS samples (
                id INTEGER PRIMARY KEY,
                person_id INTEGER NOT NULL REFERENCES persons(id) ON DELETE CASCADE,
                embedding BLOB NOT NULL,
                model_id TEXT NOT NULL,
                quality REAL NOT NULL,
                image_sha256 TEXT NOT NULL,
                created INTEGER NOT NULL
            );
            CREATE INDEX IF NOT EXISTS samples_person ON samples(person_id);
            CREATE TABLE IF NOT EXISTS sample_crops (
                sample_id INTEGER PRIMARY KEY REFERENCES samples(id) ON DELETE CASCADE,
                jpeg BLOB NOT NULL
            );",
        )
        .map_err(|e| open_err(e.to_string()))?;
        migrate_autoincrement(&conn).map_err(|e| open_err(format!("cannot upgrade the persons table: {e}")))?;
        Ok(Self { conn })
    }

}

impl Backend for Sqlite {
    /// [`Store::add_sample_to`] with the aligned face crop (a JPEG, shown by the web UI), in the
    /// same transaction; returns the sample id.
    fn add_face(&mut self, person_id: u64, embedding: &[f32], model_id: &str, quality: f32, image_sha256: &str, crop_jpeg: Option<&[u8]>) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        let t = now() as i64;
        if tx.execute("UPDATE persons SET updated = ?1 WHERE id = ?2", params![t, person_id as i64])? == 0 {
            return Err(StoreError::NoPerson(format!("id {person_id}")));
        }
        tx.execute(
            "INSERT INTO samples (person_id, embedding, model_id, quality, image_sha256, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![person_id as i64, to_blob(embedding), model_id, quality, image_sha256, t],
        )?;
        let id = tx.last_insert_rowid();
        if let Some(jpeg) = crop_jpeg {
            tx.execute("INSERT INTO sample_crops (sample_id, jpeg) VALUES (?1, ?2)", params![id, jpeg])?;
        }
        tx.commit()?;
        Ok(id as u64)
    }

    /// A sample's face crop (JPEG), when one was kept at enrollment.
    fn sample_crop(&self, sample_id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.conn.query_row("SELECT jpeg FROM sample_crops WHERE sample_id = ?1", [sample_id as i64], |r| r.get(0)).optional()?)
    }

    /// Sample ids that have a crop, among `person_id`'s samples.
    fn samples_with_crops(&self, person_id: u64) -> Result<Vec<u64>, StoreError> {
        let mut st = self.conn.prepare("SELECT c.sample_id FROM sample_crops c JOIN samples s ON s.id = c.sample_id WHERE s.person_id = ?1")?;
        let rows = st.query_map([person_id as i64], |r| r.get::<_, i64>(0).map(|v| v as u64))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Removes one sample (and its crop); returns its person's id, None when there was no such
    /// sample.
    fn remove_sample(&mut self, sample_id: u64) -> Result<Option<u64>, StoreError> {
        let tx = self.conn.transaction()?;
        let person: Option<i64> = tx.query_row("SELECT person_id FROM samples WHERE id = ?1", [sample_id as i64], |r| r.get(0)).optional()?;
        let Some(person) = person else { return Ok(None) };
        tx.execute("DELETE FROM sample_crops WHERE sample_id = ?1", [sample_id as i64])?;
        tx.execute("DELETE FROM samples WHERE id = ?1", [sample_id as i64])?;
        tx.execute("UPDATE persons SET updated = ?1 WHERE id = ?2", params![now() as i64, person])?;
        tx.commit()?;
        Ok(Some(person as u64))
    }

    /// Renames a person: false when there is no such person; `NameTaken` when another person has
    /// the name.
    fn rename_person(&mut self, id: u64, name: &str) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        if let Some(other) = tx.query_row("SELECT id FROM persons WHERE name = ?1", [name], |r| r.get::<_, i64>(0)).optional()?
            && other as u64 != id
        {
            return Err(StoreError::NameTaken(name.to_string()));
        }
        let n = tx.execute("UPDATE persons SET name = ?1, updated = ?2 WHERE id = ?3", params![name, now() as i64, id as i64])?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// Creates the person when new; returns the id.
    fn ensure_person(&mut self, name: &str, metadata: Option<&serde_json::Value>) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        let id = ensure_person_tx(&tx, name, metadata)?;
        tx.commit()?;
        Ok(id)
    }


    /// Adds one face sample (and the person when new) in one transaction; returns the person id.
    fn add_sample(&mut self, name: &str, embedding: &[f32], model_id: &str, quality: f32, image_sha256: &str) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        let pid = ensure_person_tx(&tx, name, None)?;
        let t = now() as i64;
        tx.execute(
            "INSERT INTO samples (person_id, embedding, model_id, quality, image_sha256, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![pid as i64, to_blob(embedding), model_id, quality, image_sha256, t],
        )?;
        tx.execute("UPDATE persons SET updated = ?1 WHERE id = ?2", params![t, pid as i64])?;
        tx.commit()?;
        Ok(pid)
    }

    /// Replaces a person's `groups` (in their metadata; other metadata keys are kept); false when
    /// there is no such person.
    fn set_groups(&mut self, id: u64, groups: &[String]) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let meta: Option<String> = tx.query_row("SELECT metadata FROM persons WHERE id = ?1", params![id as i64], |r| r.get(0)).optional()?;
        let Some(meta) = meta else { return Ok(false) };
        let mut value: serde_json::Value = serde_json::from_str(&meta).unwrap_or_else(|_| serde_json::json!({}));
        if !value.is_object() {
            value = serde_json::json!({});
        }
        value["groups"] = serde_json::json!(groups);
        tx.execute("UPDATE persons SET metadata = ?1, updated = ?2 WHERE id = ?3", params![value.to_string(), now() as i64, id as i64])?;
        tx.commit()?;
        Ok(true)
    }

    /// Removes the samples whose source (`image_sha256`) ends with `suffix` (samples enrolled
    /// from a visitor's track are `visitor:<id>:<track>`); how many.
    fn remove_samples_from(&mut self, suffix: &str) -> Result<usize, StoreError> {
        Ok(self.conn.execute("DELETE FROM samples WHERE substr(image_sha256, -length(?1)) = ?1", [suffix])?)
    }

    fn remove_person(&mut self, id: u64) -> Result<bool, StoreError> {
        Ok(self.conn.execute("DELETE FROM persons WHERE id = ?1", [id as i64])? > 0)
    }

    fn persons(&self) -> Result<Vec<PersonRow>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT p.id, p.name, p.metadata, p.created, p.updated, COUNT(s.id)
             FROM persons p LEFT JOIN samples s ON s.person_id = p.id GROUP BY p.id ORDER BY p.id",
        )?;
        let rows = st.query_map([], |r| {
            let meta: String = r.get(2)?;
            Ok(PersonRow {
                id: r.get::<_, i64>(0)? as u64,
                name: r.get(1)?,
                metadata: serde_json::from_str(&meta).unwrap_or(serde_json::Value::Null),
                created: r.get::<_, i64>(3)? as u64,
                updated: r.get::<_, i64>(4)? as u64,
                samples: r.get::<_, i64>(5)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn samples(&self, person_id: Option<u64>) -> Result<Vec<SampleRow>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT id, person_id, model_id, quality, image_sha256, created, embedding FROM samples
             WHERE (?1 IS NULL OR person_id = ?1) ORDER BY id",
        )?;
        let rows = st.query_map([person_id.map(|p| p as i64)], |r| {
            Ok(SampleRow {
                id: r.get::<_, i64>(0)? as u64,
                person_id: r.get::<_, i64>(1)? as u64,
                model_id: r.get(2)?,
                quality: r.get::<_, f64>(3)? as f32,
                image_sha256: r.get(4)?,
                created: r.get::<_, i64>(5)? as u64,
                embedding: from_blob(&r.get::<_, Vec<u8>>(6)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Imports persons and samples (all in one transaction); returns (persons, samples) added.
    fn reembed(&mut self, model_id: &str, embeddings: &[(u64, Vec<f32>)], remove: &[u64]) -> Result<usize, StoreError> {
        let tx = self.conn.transaction()?;
        let mut n = 0;
        for (id, e) in embeddings {
            n += tx.execute("UPDATE samples SET embedding = ?1, model_id = ?2 WHERE id = ?3", params![to_blob(e), model_id, *id as i64])?;
        }
        for id in remove {
            tx.execute("DELETE FROM samples WHERE id = ?1", [*id as i64])?;
        }
        tx.commit()?;
        Ok(n)
    }

    fn import(&mut self, data: &Export) -> Result<(usize, usize), StoreError> {
        let tx = self.conn.transaction()?;
        let mut samples = 0;
        for p in &data.persons {
            let pid = ensure_person_tx(&tx, &p.name, Some(&p.metadata))?;
            for s in &p.samples {
                tx.execute(
                    "INSERT INTO samples (person_id, embedding, model_id, quality, image_sha256, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![pid as i64, to_blob(&s.embedding), s.model_id, s.quality, s.image_sha256, s.created as i64],
                )?;
                samples += 1;
            }
        }
        tx.commit()?;
        Ok((data.persons.len(), samples))
    }

    /// SQLite's own consistency check ("ok" when sound).
    fn integrity_check(&self) -> Result<String, StoreError> {
        Ok(self.conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }
}

fn ensure_person_tx(tx: &rusqlite::Transaction, name: &str, metadata: Option<&serde_json::Value>) -> Result<u64, StoreError> {
    let t = now() as i64;
    if let Some(id) = tx.query_row("SELECT id FROM persons WHERE name = ?1", [name], |r| r.get::<_, i64>(0)).optional()? {
        if let Some(m) = metadata {
            tx.execute("UPDATE persons SET metadata = ?1, updated = ?2 WHERE id = ?3", params![m.to_string(), t, id])?;
        }
        return Ok(id as u64);
    }
    let meta = metadata.cloned().unwrap_or_else(|| serde_json::json!({}));
    tx.execute("INSERT INTO persons (name, metadata, created, updated) VALUES (?1, ?2, ?3, ?3)", params![name, meta.to_string(), t])?;
    Ok(tx.last_insert_rowid() as u64)
}
