//! `facestream visits report`: one day at a site (or all sites), in the configured time zone:
//! unique known people, unique visitors, visits, first and last seen, dwell, per camera and hour.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::store::{VisitorStore, VisitorStoreError, visitor_name};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("--day `{0}`: expected YYYY-MM-DD (or today / yesterday)")]
    Day(String),
    #[error("time zone `{0}`: {1}")]
    Zone(String, String),
    #[error(transparent)]
    Store(#[from] VisitorStoreError),
}

#[derive(Clone, Debug, Serialize)]
pub struct SubjectLine {
    /// A person's name or `visitor-<n>`.
    pub who: String,
    pub kind: &'static str,
    pub site: String,
    pub visits: u64,
    pub first_seen: String,
    pub last_seen: String,
    pub dwell_s: f64,
    pub cameras: Vec<String>,
    /// Seen on an earlier day too.
    pub returning: bool,
}

#[derive(Clone, Debug, Serialize, Default)]
pub struct CameraLine {
    pub known: usize,
    pub visitors: usize,
    pub tracks: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct DayReport {
    pub day: String,
    pub timezone: String,
    pub known_people: usize,
    pub visitors: usize,
    pub returning_known: usize,
    pub returning_visitors: usize,
    pub visits: usize,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    pub subjects: Vec<SubjectLine>,
    pub per_camera: BTreeMap<String, CameraLine>,
    /// Hour of day (00..23) to unique people and visitors seen in it.
    pub per_hour: BTreeMap<String, usize>,
}

/// [start, end) of a day in `tz`, in ms since the epoch.
pub fn day_range(day: &str, tz: &str, now: std::time::SystemTime) -> Result<(String, i64, i64), ReportError> {
    let zone = jiff::tz::TimeZone::get(tz).map_err(|e| ReportError::Zone(tz.to_string(), e.to_string()))?;
    let ts = jiff::Timestamp::try_from(now).map_err(|e| ReportError::Day(e.to_string()))?;
    let today = ts.to_zoned(zone.clone()).date();
    let date = match day {
        "today" => today,
        "yesterday" => today.yesterday().map_err(|e| ReportError::Day(e.to_string()))?,
        d => d.parse::<jiff::civil::Date>().map_err(|_| ReportError::Day(d.to_string()))?,
    };
    let start = date.to_zoned(zone.clone()).map_err(|e| ReportError::Day(e.to_string()))?;
    let end = date.tomorrow().map_err(|e| ReportError::Day(e.to_string()))?.to_zoned(zone).map_err(|e| ReportError::Day(e.to_string()))?;
    Ok((date.to_string(), start.timestamp().as_millisecond(), end.timestamp().as_millisecond()))
}

fn local(ms: i64, tz: &str) -> String {
    match (jiff::Timestamp::from_millisecond(ms), jiff::tz::TimeZone::get(tz)) {
        (Ok(t), Ok(z)) => t.to_zoned(z).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        _ => ms.to_string(),
    }
}

fn hour(ms: i64, tz: &str) -> String {
    match (jiff::Timestamp::from_millisecond(ms), jiff::tz::TimeZone::get(tz)) {
        (Ok(t), Ok(z)) => format!("{:02}", t.to_zoned(z).hour()),
        _ => "??".into(),
    }
}

/// The report of one day; `site` None: every site; `names` maps person ids to names.
pub fn day(store: &VisitorStore, day: &str, tz: &str, site: Option<&str>, names: &BTreeMap<u64, String>, now: std::time::SystemTime) -> Result<DayReport, ReportError> {
    let (label, from, to) = day_range(day, tz, now)?;
    let visits: Vec<_> = store.visits(from, to)?.into_iter().filter(|v| site.is_none_or(|s| v.site == s)).collect();
    let (before_p, before_v) = store.seen_before(from)?;
    let mut subjects: BTreeMap<(String, String), SubjectLine> = BTreeMap::new();
    let (mut known, mut visitors) = (BTreeSet::new(), BTreeSet::new());
    for v in &visits {
        let (who, kind, returning) = match (v.person_id, v.visitor_id) {
            (Some(p), _) => {
                known.insert(p);
                (names.get(&p).cloned().or_else(|| v.person_name.clone()).unwrap_or_else(|| format!("person-{p}")), "person", before_p.contains(&p))
            }
            (_, Some(id)) => {
                visitors.insert(id);
                (visitor_name(id), "visitor", before_v.contains(&id))
            }
            _ => continue,
        };
        let line = subjects.entry((v.site.clone(), who.clone())).or_insert_with(|| SubjectLine {
            who,
            kind,
            site: v.site.clone(),
            visits: 0,
            first_seen: local(v.first_ms, tz),
            last_seen: local(v.last_ms, tz),
            dwell_s: 0.0,
            cameras: Vec::new(),
            returning,
        });
        line.visits += 1;
        line.last_seen = local(v.last_ms, tz);
        line.dwell_s += (v.last_ms - v.first_ms) as f64 / 1000.0;
        for c in &v.cameras {
            if !line.cameras.contains(c) {
                line.cameras.push(c.clone());
            }
        }
    }
    let ignored: BTreeSet<u64> = store.visitors(false)?.into_iter().filter(|v| v.state == "ignored").map(|v| v.id).collect();
    let mut per_camera: BTreeMap<String, (BTreeSet<u64>, BTreeSet<u64>, usize)> = BTreeMap::new();
    let mut per_hour: BTreeMap<String, BTreeSet<(bool, u64)>> = BTreeMap::new();
    for s in store.sightings(from, to)? {
        let subject = match (s.person_id, s.visitor_id) {
            (Some(p), _) => (true, p),
            (_, Some(v)) if !ignored.contains(&v) => (false, v),
            _ => continue,
        };
        let e = per_camera.entry(s.camera.clone()).or_default();
        if subject.0 {
            e.0.insert(subject.1);
        } else {
            e.1.insert(subject.1);
        }
        e.2 += 1;
        per_hour.entry(hour(s.first_ms, tz)).or_default().insert(subject);
    }
    let first = visits.iter().map(|v| v.first_ms).min();
    let last = visits.iter().map(|v| v.last_ms).max();
    Ok(DayReport {
        day: label,
        timezone: tz.to_string(),
        known_people: known.len(),
        visitors: visitors.len(),
        returning_known: known.iter().filter(|p| before_p.contains(p)).count(),
        returning_visitors: visitors.iter().filter(|v| before_v.contains(v)).count(),
        visits: visits.len(),
        first_seen: first.map(|t| local(t, tz)),
        last_seen: last.map(|t| local(t, tz)),
        subjects: subjects.into_values().collect(),
        per_camera: per_camera.into_iter().map(|(c, (k, v, t))| (c, CameraLine { known: k.len(), visitors: v.len(), tracks: t })).collect(),
        per_hour: per_hour.into_iter().map(|(h, s)| (h, s.len())).collect(),
    })
}
