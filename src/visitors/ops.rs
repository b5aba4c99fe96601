//! What people do with visitors, from the CLI or the API: name one (it becomes a person,
//! enrolled with its best faces), ignore one (a poster, a TV), merge two, reject a track's name
//! ("this was not alice"), and forget a person or visitor entirely.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::cluster::{Clusterer, Exemplar, Plan};
use super::store::{Subject, VisitorStore, VisitorStoreError, parse_visitor, visitor_name};
use crate::gallery::store::{StoreError, is_unit_embedding};

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Visitors(#[from] VisitorStoreError),
    #[error(transparent)]
    Gallery(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] crate::gate::audit::AuditError),
}

/// The sites a camera belongs to.
pub type SitesOf = Box<dyn Fn(&str) -> Vec<String> + Send + Sync>;

/// Where the operations act.
pub struct Places {
    /// The store: the node's SQLite file, or the cluster's database (gallery, visitors, gate log).
    pub gallery: crate::gallery::store::StoreSpec,
    /// The snapshot folder (files are deleted with their rows; unused with a shared store,
    /// which keeps the images).
    pub snapshot_dir: PathBuf,
    pub model_id: String,
    pub visits_gap_ms: i64,
    /// Sites of each camera (for rebuilt visits).
    pub sites_of: SitesOf,
}

fn visitor_or_err(store: &VisitorStore, s: &str) -> Result<super::store::VisitorRow, OpsError> {
    let id = parse_visitor(s).ok_or_else(|| VisitorStoreError::NoVisitor(s.to_string()))?;
    Ok(store.resolve(id)?.filter(|v| v.state != "merged").ok_or_else(|| VisitorStoreError::NoVisitor(s.to_string()))?)
}

#[derive(Clone, Debug, Serialize)]
pub struct Named {
    pub visitor: String,
    pub person: String,
    pub person_id: u64,
    pub enrolled: usize,
    pub skipped: Vec<String>,
}

/// Names a visitor: its best faces (at least `min_quality`, at most `max_faces`, none within
/// `threshold` of another person's sample) become samples of `name`; its sightings, visits and
/// snapshots carry the person from now on.
pub fn name(p: &Places, visitor: &str, name: &str, max_faces: usize, min_quality: f32, threshold: f32) -> Result<Named, OpsError> {
    let mut vs = VisitorStore::open_spec(&p.gallery)?;
    let v = visitor_or_err(&vs, visitor)?;
    if v.state == "named" {
        return Err(VisitorStoreError::Refused(format!("{} was already named (person {})", v.name, v.person_id.unwrap_or(0))).into());
    }
    let mut gallery = p.gallery.open()?;
    let others: Vec<(u64, String, Vec<f32>)> = {
        let persons = gallery.persons()?;
        gallery.samples(None)?.into_iter().filter_map(|s| persons.iter().find(|x| x.id == s.person_id).filter(|x| x.name != name).map(|x| (x.id, x.name.clone(), s.embedding))).collect()
    };
    let mut chosen = Vec::new();
    let mut skipped = Vec::new();
    for super::store::VisitorFace { embedding: emb, quality: q, sighting: track, .. } in vs.faces(v.id)? {
        if chosen.len() >= max_faces {
            break;
        }
        if q < min_quality || !is_unit_embedding(&emb) {
            skipped.push(format!("{track}: quality {q:.2} below {min_quality:.2}"));
            continue;
        }
        if let Some((_, other, _)) = others.iter().find(|(_, _, o)| crate::embed::distance(o, &emb) <= threshold) {
            skipped.push(format!("{track}: within {threshold:.3} of {other}'s face (it would take their name)"));
            continue;
        }
        chosen.push((emb, q, track));
    }
    if chosen.is_empty() {
        return Err(VisitorStoreError::Refused(format!("{} has no face good enough to enroll ({}); nothing was changed", v.name, if skipped.is_empty() { "its faces expired".to_string() } else { skipped.join("; ") })).into());
    }
    let pid = gallery.ensure_person(name, None)?;
    for (emb, q, track) in &chosen {
        gallery.add_sample_to(pid, emb, &p.model_id, *q, &format!("visitor:{}:{track}", v.id))?;
    }
    let mut tx = vs.begin()?;
    VisitorStore::mark_named(&mut *tx, v.id, pid)?;
    tx.commit().map_err(VisitorStoreError::from)?;
    Ok(Named { visitor: v.name, person: name.to_string(), person_id: pid, enrolled: chosen.len(), skipped })
}

/// Marks a visitor as ignored (never counted, never named) or active again.
pub fn ignore(p: &Places, visitor: &str, ignored: bool) -> Result<String, OpsError> {
    let mut vs = VisitorStore::open_spec(&p.gallery)?;
    let v = visitor_or_err(&vs, visitor)?;
    if v.state == "named" {
        return Err(VisitorStoreError::Refused(format!("{} is a person now; remove the person instead", v.name)).into());
    }
    vs.set_state(v.id, if ignored { "ignored" } else { "active" })?;
    Ok(v.name)
}

/// Merges visitor `from` into `into` (one person seen as two): `from` redirects to `into`.
pub fn merge(p: &Places, into: &str, from: &str) -> Result<String, OpsError> {
    let mut vs = VisitorStore::open_spec(&p.gallery)?;
    let (a, b) = (visitor_or_err(&vs, into)?, visitor_or_err(&vs, from)?);
    if a.id == b.id {
        return Err(VisitorStoreError::Refused(format!("{} and {} are already one visitor", into, from)).into());
    }
    if a.state == "named" || b.state == "named" {
        return Err(VisitorStoreError::Refused("a named visitor is a person now; merge before naming".into()).into());
    }
    let mut tx = vs.begin()?;
    VisitorStore::merge(&mut *tx, a.id, b.id)?;
    tx.commit().map_err(VisitorStoreError::from)?;
    Ok(a.name)
}

#[derive(Clone, Debug, Serialize)]
pub struct Rejected {
    pub track_id: String,
    pub person: String,
    /// The visitor the track now belongs to (none when its template already expired).
    pub visitor: Option<String>,
    /// Gallery samples that came from this track and were removed.
    pub samples_removed: usize,
}

/// "This track was not `person`": recorded; the track leaves the person's visits, any gallery
/// sample enrolled from it goes, and it is grouped with the unknown visitors instead.
pub fn reject(p: &Places, track_id: &str, params: super::cluster::ClusterParams, now_ms: i64) -> Result<Rejected, OpsError> {
    let mut vs = VisitorStore::open_spec(&p.gallery)?;
    let super::store::SightingFull { sighting, template, model_id: model, quality } = vs.sighting(track_id)?.ok_or_else(|| VisitorStoreError::NoTrack(track_id.to_string()))?;
    let Some(pid) = sighting.person_id else {
        return Err(VisitorStoreError::Refused(format!("track {track_id} was not named (it is {})", sighting.visitor_id.map(visitor_name).unwrap_or_else(|| "unknown".into()))).into());
    };
    let mut gallery = p.gallery.open()?;
    let person = gallery.person(pid)?.map(|x| x.name).or(sighting.person_name.clone()).unwrap_or_else(|| format!("person-{pid}"));
    let samples_removed = gallery.remove_samples_from(&format!(":{}", sighting.id))?;
    let sites = (p.sites_of)(&sighting.camera);
    let mut clusterer = Clusterer::new(params, vs.clusters(&p.model_id)?);
    let mut tx = vs.begin()?;
    VisitorStore::reject(&mut *tx, &sighting.id, pid, &person, now_ms, p.visits_gap_ms, &sites)?;
    let mut visitor = None;
    if let Some(t) = template.filter(|t| is_unit_embedding(t) && model == p.model_id) {
        let plan = clusterer.plan(&t);
        let id = match &plan {
            Plan::New => VisitorStore::new_visitor(&mut *tx, sighting.first_ms)?,
            Plan::Join { into, merge, .. } => {
                for m in merge {
                    VisitorStore::merge(&mut *tx, *into, *m)?;
                }
                *into
            }
        };
        let face_id = VisitorStore::add_face(&mut *tx, id, &t, &p.model_id, quality, sighting.last_ms, &sighting.id)?;
        let evicted = clusterer.apply(&plan, id, Exemplar { face_id, embedding: t, quality });
        VisitorStore::remove_faces(&mut *tx, &evicted.iter().map(|e| e.face_id).collect::<Vec<_>>())?;
        VisitorStore::assign_sighting(&mut *tx, &sighting.id, id, p.visits_gap_ms, &sites)?;
        visitor = Some(visitor_name(id));
    }
    tx.commit().map_err(VisitorStoreError::from)?;
    Ok(Rejected { track_id: sighting.id, person, visitor, samples_removed })
}

#[derive(Clone, Debug, Serialize)]
pub struct Forgotten {
    pub subject: String,
    pub kind: &'static str,
    pub files_deleted: usize,
    pub gate_log_entries: usize,
}

/// Removes a person (by name) or a visitor (`visitor-<n>`) entirely: faces, samples,
/// snapshots (rows and files), sightings, visits, feedback and gate log references.
pub fn forget(p: &Places, subject: &str) -> Result<Forgotten, OpsError> {
    let mut vs = VisitorStore::open_spec(&p.gallery)?;
    let mut gallery = p.gallery.open()?;
    let audit = crate::gate::audit::AuditLog::open_spec(&p.gallery)?;
    if let Some(id) = parse_visitor(subject).filter(|_| subject.starts_with("visitor-"))
        && let Some(v) = vs.visitor(id)?
    {
        let files = vs.forget_visitor(v.id)?;
        return Ok(Forgotten { subject: v.name, kind: "visitor", files_deleted: super::delete_files(&p.snapshot_dir, &files), gate_log_entries: 0 });
    }
    let Some(person) = gallery.person_by_name(subject)? else {
        // A person of the config's [[gallery.people]] is not in the store: their sightings are.
        if let Some(pid) = vs.person_id_by_name(subject)? {
            let files = vs.forget_person(pid)?;
            let gate_log_entries = audit.forget_person(subject)?;
            return Ok(Forgotten { subject: subject.to_string(), kind: "config person (also remove them from [[gallery.people]])", files_deleted: super::delete_files(&p.snapshot_dir, &files), gate_log_entries });
        }
        return Err(VisitorStoreError::NoSubject(subject.to_string()).into());
    };
    let files = vs.forget_person(person.id)?;
    gallery.remove_person(person.id)?;
    let gate_log_entries = audit.forget_person(&person.name)?;
    Ok(Forgotten { subject: person.name, kind: "person", files_deleted: super::delete_files(&p.snapshot_dir, &files), gate_log_entries })
}

/// The subject of a sighting, for display.
pub fn subject_name(s: Option<Subject>) -> String {
    match s {
        Some(Subject::Person(p)) => format!("person-{p}"),
        Some(Subject::Visitor(v)) => visitor_name(v),
        None => "unknown".into(),
    }
}

/// The places of a configuration (`base_dir`: what relative paths resolve against).
pub fn places(snapshots: &super::SnapshotsConfig, visits: &super::VisitsConfig, base_dir: &Path, store: &crate::gallery::store::StoreSpec, model_id: String) -> Places {
    let visits = visits.clone();
    Places {
        gallery: store.clone(),
        snapshot_dir: snapshots.dir_for(base_dir, &store.path),
        model_id,
        visits_gap_ms: (visits.gap_s * 1000.0) as i64,
        sites_of: Box::new(move |camera| if visits.enabled { visits.sites_of(camera) } else { Vec::new() }),
    }
}
