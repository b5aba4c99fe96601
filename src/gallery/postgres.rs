//! The shared gallery backend: PostgreSQL, for several nodes with one gallery. The schema is
//! versioned ([`MIGRATIONS`], applied at connect under an advisory lock, each once, recorded in
//! `facestream_migrations`). Every change of a person or a sample is recorded by a trigger in
//! `gallery_changes` and announced with `NOTIFY facestream_gallery`, so every node's in-memory
//! index follows (see `crate::cluster::sync`), whatever wrote the change.

use std::sync::Mutex;
use std::time::Duration;

use postgres::{Client, NoTls};

use super::store::{Backend, Export, PersonRow, SampleRow, StoreError, from_blob, now, to_blob};

/// The channel every gallery change is announced on (payload: the change's sequence number).
pub const CHANNEL: &str = "facestream_gallery";

/// Advisory lock key held while migrations run ("fsmigr" in ASCII).
const MIGRATION_LOCK: i64 = 0x6673_6d69_6772;

/// The schema, one step per version; a step never changes once released.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "gallery",
        "CREATE TABLE persons (
            id BIGSERIAL PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            metadata TEXT NOT NULL DEFAULT '{}',
            created BIGINT NOT NULL,
            updated BIGINT NOT NULL
        );
        CREATE TABLE samples (
            id BIGSERIAL PRIMARY KEY,
            person_id BIGINT NOT NULL REFERENCES persons(id) ON DELETE CASCADE,
            embedding BYTEA NOT NULL,
            model_id TEXT NOT NULL,
            quality REAL NOT NULL,
            image_sha256 TEXT NOT NULL,
            created BIGINT NOT NULL
        );
        CREATE INDEX samples_person ON samples(person_id);
        CREATE TABLE sample_crops (
            sample_id BIGINT PRIMARY KEY REFERENCES samples(id) ON DELETE CASCADE,
            jpeg BYTEA NOT NULL
        );
        CREATE TABLE gallery_changes (
            seq BIGSERIAL PRIMARY KEY,
            person_id BIGINT NOT NULL,
            at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE INDEX gallery_changes_at ON gallery_changes(at);
        CREATE FUNCTION facestream_gallery_changed() RETURNS trigger AS $$
        DECLARE
            pid BIGINT;
            s BIGINT;
        BEGIN
            IF TG_OP = 'DELETE' THEN
                IF TG_TABLE_NAME = 'persons' THEN pid := OLD.id; ELSE pid := OLD.person_id; END IF;
            ELSE
                IF TG_TABLE_NAME = 'persons' THEN pid := NEW.id; ELSE pid := NEW.person_id; END IF;
            END IF;
            INSERT INTO gallery_changes (person_id) VALUES (pid) RETURNING seq INTO s;
            PERFORM pg_notify('facestream_gallery', s::text);
            RETURN NULL;
        END $$ LANGUAGE plpgsql;
        CREATE TRIGGER persons_changed AFTER INSERT OR UPDATE OR DELETE ON persons
            FOR EACH ROW EXECUTE FUNCTION facestream_gallery_changed();
        CREATE TRIGGER samples_changed AFTER INSERT OR UPDATE OR DELETE ON samples
            FOR EACH ROW EXECUTE FUNCTION facestream_gallery_changed();",
    ),
    (
        2,
        "cluster",
        "CREATE TABLE cluster_nodes (
            node TEXT PRIMARY KEY,
            capacity INTEGER NOT NULL,
            url TEXT NOT NULL DEFAULT '',
            cameras TEXT NOT NULL DEFAULT '[]',
            started TIMESTAMPTZ NOT NULL DEFAULT now(),
            heartbeat TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE TABLE camera_leases (
            camera TEXT PRIMARY KEY,
            node TEXT NOT NULL,
            since TIMESTAMPTZ NOT NULL DEFAULT now(),
            expires TIMESTAMPTZ NOT NULL
        );",
    ),
    (
        3,
        "gate_log",
        "CREATE TABLE gate_log (
            id BIGSERIAL PRIMARY KEY,
            gate TEXT NOT NULL,
            camera TEXT NOT NULL,
            at_ms BIGINT NOT NULL,
            outcome TEXT NOT NULL,
            reason TEXT,
            person TEXT,
            track_id TEXT NOT NULL,
            latency_s DOUBLE PRECISION NOT NULL,
            evidence TEXT NOT NULL,
            crop BYTEA
        );
        CREATE INDEX gate_log_gate_at ON gate_log(gate, at_ms);",
    ),
    (
        4,
        "visitors",
        "CREATE TABLE visitors (
            id BIGSERIAL PRIMARY KEY,
            created_ms BIGINT NOT NULL,
            last_seen_ms BIGINT NOT NULL,
            state TEXT NOT NULL DEFAULT 'active',
            merged_into BIGINT,
            person_id BIGINT,
            tracks BIGINT NOT NULL DEFAULT 0,
            best_snapshot TEXT,
            best_quality DOUBLE PRECISION NOT NULL DEFAULT 0
        );
        CREATE TABLE visitor_faces (
            id BIGSERIAL PRIMARY KEY,
            visitor_id BIGINT NOT NULL,
            embedding BYTEA NOT NULL,
            model_id TEXT NOT NULL,
            quality DOUBLE PRECISION NOT NULL,
            at_ms BIGINT NOT NULL,
            track_id TEXT NOT NULL
        );
        CREATE INDEX visitor_faces_visitor ON visitor_faces(visitor_id);
        CREATE TABLE snapshots (
            id TEXT PRIMARY KEY,
            camera TEXT NOT NULL,
            track_id TEXT NOT NULL,
            at_ms BIGINT NOT NULL,
            person_id BIGINT,
            visitor_id BIGINT,
            quality DOUBLE PRECISION NOT NULL,
            face_file TEXT NOT NULL,
            context_file TEXT
        );
        CREATE INDEX snapshots_at ON snapshots(at_ms);
        CREATE TABLE snapshot_images (
            name TEXT PRIMARY KEY,
            jpeg BYTEA NOT NULL
        );
        CREATE TABLE sightings (
            id TEXT PRIMARY KEY,
            track_id TEXT NOT NULL,
            camera TEXT NOT NULL,
            first_ms BIGINT NOT NULL,
            last_ms BIGINT NOT NULL,
            person_id BIGINT,
            person_name TEXT,
            visitor_id BIGINT,
            snapshot TEXT,
            template BYTEA,
            model_id TEXT NOT NULL,
            quality DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX sightings_first ON sightings(first_ms);
        CREATE INDEX sightings_track ON sightings(track_id);
        CREATE TABLE visits (
            id BIGSERIAL PRIMARY KEY,
            site TEXT NOT NULL,
            person_id BIGINT,
            person_name TEXT,
            visitor_id BIGINT,
            first_ms BIGINT NOT NULL,
            last_ms BIGINT NOT NULL,
            tracks BIGINT NOT NULL,
            cameras TEXT NOT NULL
        );
        CREATE INDEX visits_last ON visits(last_ms);
        CREATE TABLE feedback (
            id BIGSERIAL PRIMARY KEY,
            track_id TEXT NOT NULL,
            action TEXT NOT NULL,
            person_id BIGINT,
            person_name TEXT,
            at_ms BIGINT NOT NULL
        );
        CREATE SEQUENCE visitor_change_seq;
        CREATE TABLE visitor_writers (
            writer TEXT PRIMARY KEY,
            v BIGINT NOT NULL
        );",
    ),
];

/// The connection string without its password, for logs and messages.
pub fn redact(url: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    if let Some((scheme, rest)) = url.split_once("://") {
        // postgresql://user:secret@host/db
        let rest = match rest.split_once('@') {
            Some((auth, host)) => format!("{}@{host}", auth.split(':').next().unwrap_or("")),
            None => rest.to_string(),
        };
        return format!("{scheme}://{rest}").split('?').next().unwrap_or("").to_string();
    }
    for part in url.split_whitespace() {
        out.push(if part.starts_with("password=") { "password=***".into() } else { part.to_string() });
    }
    out.join(" ")
}

pub(crate) fn pg_err(e: postgres::Error) -> StoreError {
    StoreError::Postgres(match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    })
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        pg_err(e)
    }
}

/// Runs blocking database work; inside the HTTP server's runtime it first tells tokio that this
/// thread blocks (the client drives a runtime of its own).
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Opens a connection (5 s connect timeout, TCP keepalives on).
pub fn open_client(url: &str) -> Result<Client, StoreError> {
    let mut cfg: postgres::Config = url.parse().map_err(|e: postgres::Error| StoreError::Postgres(format!("`{}` is not a PostgreSQL connection string: {e}", redact(url))))?;
    cfg.connect_timeout(Duration::from_secs(5)).keepalives(true).keepalives_idle(Duration::from_secs(10));
    if cfg.get_application_name().is_none() {
        cfg.application_name("facestream");
    }
    if cfg.get_options().is_none() {
        // "relation already exists, skipping" and the like are not news.
        cfg.options("-c client_min_messages=warning");
    }
    blocking(|| cfg.connect(NoTls)).map_err(|e| StoreError::Postgres(format!("cannot connect to {}: {e}", redact(url))))
}

/// Checks a connection before use and opens a new one when it broke: a connection `idle` for a
/// while may have lost its server (restarted) without having noticed. True when it was reopened.
pub fn reopen_if_broken(client: &mut Client, url: &str, idle: bool, what: &str) -> Result<bool, StoreError> {
    if client.is_closed() || (idle && blocking(|| client.is_valid(Duration::from_secs(2))).is_err()) {
        *client = open_client(url)?;
        tracing::info!(database = %redact(url), "{what} database reconnected");
        return Ok(true);
    }
    Ok(false)
}

/// Applies the migrations this database lacks, under an advisory lock so nodes starting together
/// apply each step once; returns the versions applied now (empty when already current).
pub fn migrate(client: &mut Client) -> Result<Vec<i32>, StoreError> {
    blocking(|| {
        client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
        let result = (|| -> Result<Vec<i32>, StoreError> {
            client.batch_execute("CREATE TABLE IF NOT EXISTS facestream_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied TIMESTAMPTZ NOT NULL DEFAULT now())")?;
            let have: Vec<i32> = client.query("SELECT version FROM facestream_migrations", &[])?.iter().map(|r| r.get(0)).collect();
            if let Some(newer) = have.iter().copied().filter(|v| !MIGRATIONS.iter().any(|m| m.0 == *v)).max() {
                return Err(StoreError::Postgres(format!("the database's schema is version {newer}, newer than this facestream knows ({}): upgrade facestream on this node", MIGRATIONS.len())));
            }
            let mut applied = Vec::new();
            for (version, name, sql) in MIGRATIONS.iter().filter(|m| !have.contains(&m.0)) {
                let mut tx = client.transaction()?;
                tx.batch_execute(sql).map_err(|e| StoreError::Postgres(format!("migration {version} ({name}): {}", pg_err(e))))?;
                tx.execute("INSERT INTO facestream_migrations (version, name) VALUES ($1, $2)", &[version, name])?;
                tx.commit()?;
                tracing::info!(version, name, "database migration applied");
                applied.push(*version);
            }
            Ok(applied)
        })();
        let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
        result
    })
}

pub struct PgStore {
    url: String,
    client: Mutex<Client>,
    last_used: Mutex<std::time::Instant>,
}

impl PgStore {
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let mut client = open_client(url)?;
        migrate(&mut client)?;
        Ok(Self { url: url.to_string(), client: Mutex::new(client), last_used: Mutex::new(std::time::Instant::now()) })
    }

    /// Runs `f` on the connection, opening a new one first when the old one broke (the server
    /// restarted): a call fails only while the database is unreachable.
    fn with<R>(&self, f: impl FnOnce(&mut Client) -> Result<R, postgres::Error>) -> Result<R, StoreError> {
        let mut guard = self.client.lock().unwrap_or_else(|p| p.into_inner());
        blocking(|| {
            // A connection idle for a while may have lost its server (restarted) without having
            // noticed: check before writing rather than retry a write that may have committed.
            let idle = self.last_used.lock().map(|t| t.elapsed() > Duration::from_secs(1)).unwrap_or(true);
            reopen_if_broken(&mut guard, &self.url, idle, "gallery")?;
            let r = f(&mut guard).map_err(pg_err);
            if let Ok(mut t) = self.last_used.lock() {
                *t = std::time::Instant::now();
            }
            r
        })
    }
}

fn person_row(r: &postgres::Row) -> PersonRow {
    let meta: String = r.get(2);
    PersonRow {
        id: r.get::<_, i64>(0) as u64,
        name: r.get(1),
        metadata: serde_json::from_str(&meta).unwrap_or(serde_json::Value::Null),
        created: r.get::<_, i64>(3) as u64,
        updated: r.get::<_, i64>(4) as u64,
        samples: r.get::<_, i64>(5) as u64,
    }
}

fn sample_row(r: &postgres::Row) -> SampleRow {
    SampleRow {
        id: r.get::<_, i64>(0) as u64,
        person_id: r.get::<_, i64>(1) as u64,
        model_id: r.get(2),
        quality: r.get::<_, f32>(3),
        image_sha256: r.get(4),
        created: r.get::<_, i64>(5) as u64,
        embedding: from_blob(r.get::<_, &[u8]>(6)),
    }
}

const PERSONS: &str = "SELECT p.id, p.name, p.metadata, p.created, p.updated, COUNT(s.id)
     FROM persons p LEFT JOIN samples s ON s.person_id = p.id";
const SAMPLES: &str = "SELECT id, person_id, model_id, quality, image_sha256, created, embedding FROM samples";

/// The persons (all, or one) with their sample counts.
pub(crate) fn query_persons(c: &mut Client, id: Option<i64>) -> Result<Vec<PersonRow>, postgres::Error> {
    let rows = match id {
        Some(id) => c.query(&format!("{PERSONS} WHERE p.id = $1 GROUP BY p.id"), &[&id])?,
        None => c.query(&format!("{PERSONS} GROUP BY p.id ORDER BY p.id"), &[])?,
    };
    Ok(rows.iter().map(person_row).collect())
}

pub(crate) fn query_samples(c: &mut Client, person: Option<i64>) -> Result<Vec<SampleRow>, postgres::Error> {
    let rows = match person {
        Some(p) => c.query(&format!("{SAMPLES} WHERE person_id = $1 ORDER BY id"), &[&p])?,
        None => c.query(&format!("{SAMPLES} ORDER BY id"), &[])?,
    };
    Ok(rows.iter().map(sample_row).collect())
}

fn ensure_person_tx(tx: &mut postgres::Transaction, name: &str, metadata: Option<&serde_json::Value>) -> Result<u64, postgres::Error> {
    let t = now() as i64;
    if let Some(row) = tx.query_opt("SELECT id FROM persons WHERE name = $1", &[&name])? {
        let id: i64 = row.get(0);
        if let Some(m) = metadata {
            tx.execute("UPDATE persons SET metadata = $1, updated = $2 WHERE id = $3", &[&m.to_string(), &t, &id])?;
        }
        return Ok(id as u64);
    }
    let meta = metadata.cloned().unwrap_or_else(|| serde_json::json!({})).to_string();
    // Two nodes enrolling one new name at once: the second insert finds the first one's row.
    let row = tx.query_one(
        "INSERT INTO persons (name, metadata, created, updated) VALUES ($1, $2, $3, $3)
         ON CONFLICT (name) DO UPDATE SET updated = EXCLUDED.updated RETURNING id",
        &[&name, &meta, &t],
    )?;
    Ok(row.get::<_, i64>(0) as u64)
}

fn insert_sample(tx: &mut postgres::Transaction, pid: i64, embedding: &[f32], model_id: &str, quality: f32, sha: &str, created: i64) -> Result<i64, postgres::Error> {
    Ok(tx
        .query_one(
            "INSERT INTO samples (person_id, embedding, model_id, quality, image_sha256, created) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            &[&pid, &to_blob(embedding), &model_id, &quality, &sha, &created],
        )?
        .get(0))
}

/// What a backend call returns inside `with`: a database error, or the store's own verdict.
enum Outcome<T> {
    Done(T),
    Refused(StoreError),
}

impl PgStore {
    fn with_outcome<R>(&self, f: impl FnOnce(&mut Client) -> Result<Outcome<R>, postgres::Error>) -> Result<R, StoreError> {
        match self.with(f)? {
            Outcome::Done(r) => Ok(r),
            Outcome::Refused(e) => Err(e),
        }
    }
}

impl Backend for PgStore {
    fn add_face(&mut self, person_id: u64, embedding: &[f32], model_id: &str, quality: f32, image_sha256: &str, crop_jpeg: Option<&[u8]>) -> Result<u64, StoreError> {
        self.with_outcome(|c| {
            let mut tx = c.transaction()?;
            let t = now() as i64;
            if tx.execute("UPDATE persons SET updated = $1 WHERE id = $2", &[&t, &(person_id as i64)])? == 0 {
                return Ok(Outcome::Refused(StoreError::NoPerson(format!("id {person_id}"))));
            }
            let id = insert_sample(&mut tx, person_id as i64, embedding, model_id, quality, image_sha256, t)?;
            if let Some(jpeg) = crop_jpeg {
                tx.execute("INSERT INTO sample_crops (sample_id, jpeg) VALUES ($1, $2)", &[&id, &jpeg])?;
            }
            tx.commit()?;
            Ok(Outcome::Done(id as u64))
        })
    }

    fn sample_crop(&self, sample_id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|c| Ok(c.query_opt("SELECT jpeg FROM sample_crops WHERE sample_id = $1", &[&(sample_id as i64)])?.map(|r| r.get(0))))
    }

    fn samples_with_crops(&self, person_id: u64) -> Result<Vec<u64>, StoreError> {
        self.with(|c| {
            let rows = c.query("SELECT c.sample_id FROM sample_crops c JOIN samples s ON s.id = c.sample_id WHERE s.person_id = $1", &[&(person_id as i64)])?;
            Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
        })
    }

    fn remove_sample(&mut self, sample_id: u64) -> Result<Option<u64>, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let Some(row) = tx.query_opt("DELETE FROM samples WHERE id = $1 RETURNING person_id", &[&(sample_id as i64)])? else { return Ok(None) };
            let person: i64 = row.get(0);
            tx.execute("UPDATE persons SET updated = $1 WHERE id = $2", &[&(now() as i64), &person])?;
            tx.commit()?;
            Ok(Some(person as u64))
        })
    }

    fn rename_person(&mut self, id: u64, name: &str) -> Result<bool, StoreError> {
        self.with_outcome(|c| {
            let mut tx = c.transaction()?;
            if let Some(other) = tx.query_opt("SELECT id FROM persons WHERE name = $1", &[&name])?
                && other.get::<_, i64>(0) as u64 != id
            {
                return Ok(Outcome::Refused(StoreError::NameTaken(name.to_string())));
            }
            let n = tx.execute("UPDATE persons SET name = $1, updated = $2 WHERE id = $3", &[&name, &(now() as i64), &(id as i64)])?;
            tx.commit()?;
            Ok(Outcome::Done(n > 0))
        })
    }

    fn ensure_person(&mut self, name: &str, metadata: Option<&serde_json::Value>) -> Result<u64, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let id = ensure_person_tx(&mut tx, name, metadata)?;
            tx.commit()?;
            Ok(id)
        })
    }

    fn add_sample(&mut self, name: &str, embedding: &[f32], model_id: &str, quality: f32, image_sha256: &str) -> Result<u64, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let pid = ensure_person_tx(&mut tx, name, None)?;
            let t = now() as i64;
            insert_sample(&mut tx, pid as i64, embedding, model_id, quality, image_sha256, t)?;
            tx.execute("UPDATE persons SET updated = $1 WHERE id = $2", &[&t, &(pid as i64)])?;
            tx.commit()?;
            Ok(pid)
        })
    }

    fn set_groups(&mut self, id: u64, groups: &[String]) -> Result<bool, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let Some(row) = tx.query_opt("SELECT metadata FROM persons WHERE id = $1 FOR UPDATE", &[&(id as i64)])? else { return Ok(false) };
            let meta: String = row.get(0);
            let mut value: serde_json::Value = serde_json::from_str(&meta).unwrap_or_else(|_| serde_json::json!({}));
            if !value.is_object() {
                value = serde_json::json!({});
            }
            value["groups"] = serde_json::json!(groups);
            tx.execute("UPDATE persons SET metadata = $1, updated = $2 WHERE id = $3", &[&value.to_string(), &(now() as i64), &(id as i64)])?;
            tx.commit()?;
            Ok(true)
        })
    }

    fn remove_samples_from(&mut self, suffix: &str) -> Result<usize, StoreError> {
        self.with(|c| Ok(c.execute("DELETE FROM samples WHERE right(image_sha256, length($1)) = $1", &[&suffix])? as usize))
    }

    fn remove_person(&mut self, id: u64) -> Result<bool, StoreError> {
        self.with(|c| Ok(c.execute("DELETE FROM persons WHERE id = $1", &[&(id as i64)])? > 0))
    }

    fn persons(&self) -> Result<Vec<PersonRow>, StoreError> {
        self.with(|c| query_persons(c, None))
    }

    fn samples(&self, person_id: Option<u64>) -> Result<Vec<SampleRow>, StoreError> {
        self.with(|c| query_samples(c, person_id.map(|p| p as i64)))
    }

    fn reembed(&mut self, model_id: &str, embeddings: &[(u64, Vec<f32>)], remove: &[u64]) -> Result<usize, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let mut n = 0;
            for (id, e) in embeddings {
                n += tx.execute("UPDATE samples SET embedding = $1, model_id = $2 WHERE id = $3", &[&to_blob(e), &model_id, &(*id as i64)])? as usize;
            }
            for id in remove {
                tx.execute("DELETE FROM samples WHERE id = $1", &[&(*id as i64)])?;
            }
            tx.commit()?;
            Ok(n)
        })
    }

    fn import(&mut self, data: &Export) -> Result<(usize, usize), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let mut samples = 0;
            for p in &data.persons {
                let pid = ensure_person_tx(&mut tx, &p.name, Some(&p.metadata))?;
                for s in &p.samples {
                    insert_sample(&mut tx, pid as i64, &s.embedding, &s.model_id, s.quality, &s.image_sha256, s.created as i64)?;
                    samples += 1;
                }
            }
            tx.commit()?;
            Ok((data.persons.len(), samples))
        })
    }

    fn integrity_check(&self) -> Result<String, StoreError> {
        // Foreign keys hold by construction; what can go wrong is a sample without a person.
        self.with(|c| {
            let orphans: i64 = c.query_one("SELECT COUNT(*) FROM samples s LEFT JOIN persons p ON p.id = s.person_id WHERE p.id IS NULL", &[])?.get(0);
            Ok(if orphans == 0 { "ok".to_string() } else { format!("{orphans} samples without a person") })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(redact("postgresql://fs:secret@127.0.0.1:5432/facestream?sslmode=disable"), "postgresql://fs@127.0.0.1:5432/facestream");
        assert_eq!(redact("host=/tmp port=5432 user=fs password=secret dbname=x"), "host=/tmp port=5432 user=fs password=*** dbname=x");
    }

    #[test]
    fn migrations_are_numbered_in_order_without_gaps() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.0 as usize, i + 1, "migration {} out of order", m.1);
        }
    }
}
