//! `facestream visitors ...`, `facestream visits report` and `facestream forget`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use facestream::config::Config;
use facestream::gallery::store::StoreSpec;
use facestream::visitors::store::{VisitorStore, parse_visitor};
use facestream::visitors::{ops, report};

#[derive(Subcommand)]
pub enum VisitorsAction {
    /// Every visitor (active and ignored; --all adds merged and named ones).
    List {
        #[arg(long)]
        all: bool,
        /// `table` or `json`.
        #[arg(long, value_parser = ["table", "json"], default_value = "table")]
        format: String,
    },
    /// One visitor: state, faces, tracks, best shot, visits.
    Show { visitor: String },
    /// Make a visitor a person: its best faces are enrolled as NAME (quality-checked; faces near
    /// another person are refused); the next run names them.
    Name { visitor: String, name: String },
    /// Never count or name this visitor again (a poster, a printed face, a TV); --undo reverts.
    Ignore {
        visitor: String,
        #[arg(long)]
        undo: bool,
    },
    /// Merge visitor FROM into INTO (one person seen as two); FROM's id then redirects.
    Merge { into: String, from: String },
    /// "This track was not that person": recorded, the track leaves the person's visits, any
    /// sample enrolled from it is removed, and it is grouped with the visitors instead.
    Reject { track_id: String },
    /// Feedback recorded so far (rejected names), newest first.
    Feedback,
}

#[derive(Args)]
pub struct ReportArgs {
    /// The day: YYYY-MM-DD, today or yesterday (in visits.timezone).
    #[arg(long, default_value = "today")]
    pub day: String,
    /// Only this site (default: every site).
    #[arg(long)]
    pub site: Option<String>,
    #[arg(long, value_parser = ["table", "csv", "json"], default_value = "table")]
    pub format: String,
}

/// The store: `--store` (a SQLite file), else the config's (its file, or the cluster's database).
fn store_spec(cfg: &Config, store: Option<PathBuf>) -> Result<StoreSpec> {
    let spec = match store {
        Some(path) => StoreSpec::sqlite(path),
        None => cfg.store_spec(),
    };
    if spec.database.is_none() && !spec.path.is_file() {
        bail!("{}: no gallery store here (set gallery.store in the config or pass --store)", spec.path.display());
    }
    Ok(spec)
}

fn model_id(cfg: &Config) -> Result<String> {
    let card = cfg.embed_card();
    Ok(facestream::infer::ModelCard::read(&card).with_context(|| format!("{}: the embedder's model card (run `make setup`)", card.display()))?.id)
}

fn when(ms: i64) -> String {
    facestream::events::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64))
}

fn names(spec: &StoreSpec) -> Result<BTreeMap<u64, String>> {
    Ok(spec.open()?.persons()?.into_iter().map(|p| (p.id, p.name)).collect())
}

pub fn cmd_visitors(cfg: &Config, action: VisitorsAction, store: Option<PathBuf>) -> Result<ExitCode> {
    let spec = store_spec(cfg, store)?;
    let places = || -> Result<ops::Places> { Ok(ops::places(&cfg.snapshots, &cfg.visits, &cfg.base_dir, &spec, model_id(cfg)?)) };
    let mut out = std::io::stdout().lock();
    match action {
        VisitorsAction::List { all, format } => {
            let vs = VisitorStore::open_spec(&spec)?;
            let list = vs.visitors(all)?;
            if format == "json" {
                for v in &list {
                    writeln!(out, "{}", serde_json::to_string(v)?)?;
                }
            } else {
                writeln!(out, "{:<14} {:<8} {:>6} {:>5}  {:<24}  {:<24}  best shot", "visitor", "state", "tracks", "faces", "first seen", "last seen")?;
                for v in &list {
                    let state = match (v.state.as_str(), v.merged_into, v.person_id) {
                        ("merged", Some(m), _) => format!("-> visitor-{m}"),
                        ("named", _, Some(p)) => format!("-> person {p}"),
                        (s, _, _) => s.to_string(),
                    };
                    writeln!(out, "{:<14} {:<8} {:>6} {:>5}  {:<24}  {:<24}  {}", v.name, state, v.tracks, v.faces, when(v.created_ms), when(v.last_seen_ms), v.best_snapshot.as_deref().unwrap_or("-"))?;
                }
                let active = list.iter().filter(|v| v.state == "active").count();
                writeln!(out, "{} visitor(s): {active} active, {} ignored", list.iter().filter(|v| v.state == "active" || v.state == "ignored").count(), list.iter().filter(|v| v.state == "ignored").count())?;
            }
        }
        VisitorsAction::Show { visitor } => {
            let vs = VisitorStore::open_spec(&spec)?;
            let id = parse_visitor(&visitor).with_context(|| format!("`{visitor}` is not a visitor id (visitor-<n>)"))?;
            let Some(v) = vs.visitor(id)? else { bail!("no visitor `{visitor}` (see `facestream visitors list`)") };
            let now = vs.resolve(id)?;
            let faces: Vec<serde_json::Value> = vs.faces(id)?.into_iter().map(|f| serde_json::json!({"face": f.id, "quality": f.quality, "sighting": f.sighting})).collect();
            let visits: Vec<_> = vs.visits(0, i64::MAX)?.into_iter().filter(|x| x.visitor_id == Some(id)).collect();
            let v = serde_json::json!({"visitor": v, "now": now.map(|n| n.name), "faces": faces, "visits": visits});
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        }
        VisitorsAction::Name { visitor, name } => {
            if name.trim().is_empty() || name.len() > 200 {
                bail!("the name must be 1-200 characters");
            }
            let threshold = facestream::identify::OperatingPoint::for_card(&cfg.identify, cfg.embed.threshold, &cfg.embed_card(), 1)?.threshold;
            let n = ops::name(&places()?, &visitor, &name, cfg.visitors.enroll_faces, cfg.visitors.min_quality, threshold)?;
            writeln!(out, "{} is now {} (person {}): {} face(s) enrolled", n.visitor, n.person, n.person_id, n.enrolled)?;
            for s in &n.skipped {
                writeln!(out, "  not enrolled: {s}")?;
            }
        }
        VisitorsAction::Ignore { visitor, undo } => {
            let name = ops::ignore(&places()?, &visitor, !undo)?;
            writeln!(out, "{name} is {}", if undo { "counted again" } else { "ignored: never counted or named" })?;
        }
        VisitorsAction::Merge { into, from } => {
            let name = ops::merge(&places()?, &into, &from)?;
            writeln!(out, "{from} merged into {name}")?;
        }
        VisitorsAction::Reject { track_id } => {
            let params = cfg.visitors.params(&cfg.identify, &cfg.embed_card())?;
            let now = facestream::visitors::millis(SystemTime::now());
            let r = ops::reject(&places()?, &track_id, params, now)?;
            writeln!(out, "track {} was not {}: recorded; now {}; {} gallery sample(s) from it removed", r.track_id, r.person, r.visitor.as_deref().unwrap_or("unknown (its face expired)"), r.samples_removed)?;
        }
        VisitorsAction::Feedback => {
            for f in VisitorStore::open_spec(&spec)?.feedback()? {
                writeln!(out, "{f}")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cmd_report(cfg: &Config, a: ReportArgs, store: Option<PathBuf>) -> Result<ExitCode> {
    let spec = store_spec(cfg, store)?;
    if let Some(s) = &a.site
        && !cfg.visits.sites.is_empty()
        && !cfg.visits.sites.iter().any(|x| &x.id == s)
    {
        eprintln!("note: site `{s}` is not in this config (known: {})", cfg.visits.sites.iter().map(|x| x.id.as_str()).collect::<Vec<_>>().join(", "));
    }
    let vs = VisitorStore::open_spec(&spec)?;
    let r = report::day(&vs, &a.day, &cfg.visits.timezone, a.site.as_deref(), &names(&spec)?, SystemTime::now())?;
    let mut out = std::io::stdout().lock();
    match a.format.as_str() {
        "json" => writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?,
        "csv" => {
            writeln!(out, "day,site,who,kind,visits,first_seen,last_seen,dwell_s,cameras,returning")?;
            for s in &r.subjects {
                writeln!(out, "{},{},{},{},{},{},{},{:.0},{},{}", r.day, s.site, csv(&s.who), s.kind, s.visits, s.first_seen, s.last_seen, s.dwell_s, s.cameras.join(" "), s.returning)?;
            }
        }
        _ => {
            writeln!(out, "{} ({}): {} known people ({} returning), {} visitors ({} returning), {} visits; first seen {}, last seen {}", r.day, r.timezone, r.known_people, r.returning_known, r.visitors, r.returning_visitors, r.visits, r.first_seen.as_deref().unwrap_or("-"), r.last_seen.as_deref().unwrap_or("-"))?;
            if !r.subjects.is_empty() {
                writeln!(out, "\n{:<10} {:<24} {:<8} {:>6} {:<26} {:<26} {:>8}  cameras", "site", "who", "kind", "visits", "first seen", "last seen", "dwell s")?;
                for s in &r.subjects {
                    writeln!(out, "{:<10} {:<24} {:<8} {:>6} {:<26} {:<26} {:>8.0}  {}{}", s.site, s.who, s.kind, s.visits, s.first_seen, s.last_seen, s.dwell_s, s.cameras.join(","), if s.returning { "  (returning)" } else { "" })?;
                }
                writeln!(out, "\n{:<12} {:>6} {:>9} {:>7}", "camera", "known", "visitors", "tracks")?;
                for (c, l) in &r.per_camera {
                    writeln!(out, "{:<12} {:>6} {:>9} {:>7}", c, l.known, l.visitors, l.tracks)?;
                }
                writeln!(out, "\nhour  people+visitors")?;
                for (h, n) in &r.per_hour {
                    writeln!(out, "{h}    {n}")?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

pub fn cmd_forget(cfg: &Config, subject: &str, store: Option<PathBuf>) -> Result<ExitCode> {
    let spec = store_spec(cfg, store)?;
    let f = ops::forget(&ops::places(&cfg.snapshots, &cfg.visits, &cfg.base_dir, &spec, model_id(cfg).unwrap_or_default()), subject)?;
    println!("{} ({}) forgotten: faces, samples, snapshots ({} file(s)), sightings, visits and {} gate log entr(ies) removed", f.subject, f.kind, f.files_deleted, f.gate_log_entries);
    println!("note: a running facestream drops a forgotten visitor at once; a forgotten person stays in its memory until restarted (or delete them through the API)");
    Ok(ExitCode::SUCCESS)
}
