//! Gallery sync: every node's in-memory gallery follows the shared database. Each change of a
//! person or sample (on any node, through the CLI, the API, naming a visitor, or by hand in SQL)
//! is a row in `gallery_changes` written by a trigger in the changing transaction, announced by
//! `NOTIFY`. The sync thread `LISTEN`s, and on each notification (and at least once a second,
//! and at once after a reconnect) reads the log past what it has applied and reloads each changed
//! person from the database. Rows committed out of sequence order (two nodes writing at once) are
//! caught by re-reading the last ten seconds of the log too; reloading a person twice is harmless.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;

use crate::gallery::SharedGallery;
use crate::gallery::postgres::{CHANNEL, blocking, open_client, query_persons, query_samples};
use crate::gallery::store::is_unit_embedding;
use crate::telemetry::metrics;

/// The newest change sequence number (read before the gallery is loaded, so the sync starts
/// where the load began and misses nothing).
pub fn current_seq(url: &str) -> Result<i64, crate::gallery::store::StoreError> {
    let mut c = open_client(url)?;
    crate::gallery::postgres::migrate(&mut c)?;
    Ok(blocking(|| c.query_one("SELECT COALESCE(MAX(seq), 0) FROM gallery_changes", &[]))?.get(0))
}

pub struct SyncSetup {
    pub database: String,
    pub gallery: SharedGallery,
    /// Samples of other models are not searchable here (they were refused at load too).
    pub model_id: String,
    pub from_seq: i64,
    pub stop: Arc<AtomicBool>,
}

/// Puts one person's samples from the database into the gallery (or removes the person).
fn reload(c: &mut Client, gallery: &SharedGallery, model: &str, person: i64) -> Result<(), postgres::Error> {
    let p = query_persons(c, Some(person))?.pop();
    let samples = query_samples(c, Some(person))?;
    let mut g = gallery.write().unwrap_or_else(|p| p.into_inner());
    g.remove(person as u64);
    if let Some(p) = p {
        for s in samples.into_iter().filter(|s| s.model_id == model && is_unit_embedding(&s.embedding)) {
            if let Err(e) = g.add_with_id(person as u64, &p.name, s.embedding) {
                tracing::warn!(person = %p.name, error = %e, "gallery change not applied");
            }
        }
    }
    Ok(())
}

struct Cursor {
    last: i64,
    /// Sequence numbers applied in the re-read window.
    applied: HashSet<i64>,
}

/// Applies what the log holds past the cursor; the number of changes applied.
fn catch_up(c: &mut Client, s: &SyncSetup, cur: &mut Cursor) -> Result<usize, postgres::Error> {
    let rows = c.query(
        "SELECT seq, person_id, EXTRACT(EPOCH FROM clock_timestamp() - at)::float8 FROM gallery_changes
         WHERE seq > $1 OR at > now() - interval '10 seconds' ORDER BY seq",
        &[&cur.last],
    )?;
    let mut persons = BTreeSet::new();
    let mut ages = Vec::new();
    for r in &rows {
        let seq: i64 = r.get(0);
        if seq <= cur.last && cur.applied.contains(&seq) {
            continue;
        }
        persons.insert(r.get::<_, i64>(1));
        ages.push(r.get::<_, f64>(2));
        cur.applied.insert(seq);
        cur.last = cur.last.max(seq);
    }
    let oldest_kept = rows.first().map(|r| r.get::<_, i64>(0)).unwrap_or(cur.last);
    cur.applied.retain(|&q| q >= oldest_kept);
    for p in &persons {
        reload(c, &s.gallery, &s.model_id, *p)?;
    }
    if !ages.is_empty() {
        let m = metrics();
        m.gallery_sync_changes.with_label_values(&["applied"]).inc_by(ages.len() as u64);
        for a in &ages {
            m.gallery_sync_seconds.observe(a.max(0.0));
        }
        if let Ok(g) = s.gallery.read() {
            m.gallery_size.set(g.len() as i64);
        }
        tracing::debug!(changes = ages.len(), persons = persons.len(), "gallery changes applied from the cluster");
    }
    Ok(ages.len())
}

/// Follows the log until `stop`, reconnecting with backoff (the changes missed meanwhile are in
/// the log and applied at once after the reconnect).
pub fn run(s: SyncSetup) {
    let mut cur = Cursor { last: s.from_seq, applied: HashSet::new() };
    let mut delay = Duration::from_millis(250);
    while !s.stop.load(Ordering::SeqCst) {
        let mut c = match open_client(&s.database).and_then(|mut c| blocking(|| c.batch_execute(&format!("LISTEN {CHANNEL}"))).map(|_| c).map_err(Into::into)) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "gallery sync: database unreachable");
                crate::ingest::sleep_unless_stopped(delay, &s.stop);
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        delay = Duration::from_millis(250);
        tracing::info!(from_seq = cur.last, "gallery sync: listening for changes");
        if let Err(e) = follow(&mut c, &s, &mut cur) {
            metrics().gallery_sync_changes.with_label_values(&["failed"]).inc();
            tracing::warn!(error = %e, "gallery sync: connection lost; catching up after the reconnect");
        }
    }
}

fn follow(c: &mut Client, s: &SyncSetup, cur: &mut Cursor) -> Result<(), postgres::Error> {
    blocking(|| catch_up(c, s, cur))?;
    while !s.stop.load(Ordering::SeqCst) {
        // Wake on a notification, or after 250 ms to look at `stop` (a full catch-up at least
        // once a second covers a lost notification).
        let mut woke = false;
        let deadline = Instant::now() + Duration::from_secs(1);
        while !woke && !s.stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            let n = blocking(|| c.notifications().timeout_iter(Duration::from_millis(250)).next())?;
            woke = n.is_some();
        }
        if c.is_closed() {
            return blocking(|| c.batch_execute("SELECT 1"));
        }
        blocking(|| catch_up(c, s, cur))?;
    }
    Ok(())
}
