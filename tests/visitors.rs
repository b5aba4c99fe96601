//! Visitors on real clips: the four sign-language fixture clips played as four cameras with an
//! EMPTY gallery. Signer A (hoodie with a printed face) signs again, help and yes; signer B signs
//! book. They must become exactly two visitors (the print never a third), come back as the
//! same two "the next day" (an injected clock), be named after `visitors name`, and leave
//! nothing behind after `forget`. A `kill -9` while visitors are being written loses none.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::bounded;
use facestream::app::{self, App, AppOptions};
use facestream::config::Config;
use facestream::events::{ChannelSink, Event, EventBody};
use facestream::gallery::store::Store;
use facestream::visitors::store::VisitorStore;
use facestream::visitors::{ops, report};

const DAY: Duration = Duration::from_secs(86_400);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn config_text(store: &Path, http: bool) -> String {
    let mut t = format!(
        "[events]\nstdout = false\ncamera_states = false\n[http]\nenabled = {http}\nbind = \"127.0.0.1:0\"\n[gallery]\nstore = \"{}\"\n[snapshots]\nenabled = true\n[visitors]\nenabled = true\n[visits]\nenabled = true\n",
        store.display()
    );
    for name in ["again", "book", "help", "yes"] {
        t += &format!("[[cameras]]\nid = \"{name}\"\nurl = \"tests/fixtures/signs/{name}.mkv\"\n");
    }
    t
}

fn config(store: &Path, http: bool) -> Config {
    let mut cfg = Config::parse(&config_text(store, http), Path::new("visitors.toml")).unwrap();
    cfg.base_dir = root();
    cfg.validate_for_run(Path::new("visitors.toml")).unwrap();
    cfg
}

/// Plays the four clips once with the clock shifted by `offset`; every event, and the HTTP
/// checks `during` does while the app still runs (its base URL).
fn play(cfg: &Config, offset: Duration, during: impl FnOnce(Option<String>)) -> Vec<Event> {
    let (tx, rx) = bounded(10_000);
    let opts = AppOptions { http: cfg.http.enabled, extra_sinks: vec![Box::new(ChannelSink { name: "test", tx })], clock_offset: offset, ..AppOptions::default() };
    let app = App::start(cfg, app::load_gallery(cfg).unwrap(), opts).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !app.running.is_finished() {
        assert!(Instant::now() < deadline, "the clips did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    during(app.server.as_ref().map(|s| format!("http://{}", s.addr)));
    app.finish();
    rx.try_iter().collect()
}

/// camera -> visitor of each `visitor` event.
fn visitors_by_camera(events: &[Event]) -> HashMap<String, HashSet<String>> {
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    for e in events {
        if let EventBody::Visitor { visitor, .. } = &e.body {
            out.entry(e.camera.clone()).or_default().insert(visitor.clone());
        }
    }
    out
}

fn places(cfg: &Config, store: &Path) -> ops::Places {
    let card = facestream::infer::ModelCard::read(&facestream::infer::locate_models(&cfg.infer).join("faceapi_recognition.toml")).unwrap();
    ops::places(&cfg.snapshots, &cfg.visits, &cfg.base_dir, &facestream::gallery::store::StoreSpec::sqlite(store.to_path_buf()), card.id)
}

fn get(url: &str) -> (u16, Vec<u8>) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut r = agent.get(url).call().unwrap();
    (r.status().as_u16(), r.body_mut().read_to_vec().unwrap())
}

#[test]
fn two_signers_are_two_visitors_who_return_the_next_day_are_named_once_named_and_are_forgotten_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("gallery.db");
    let cfg = config(&store, true);

    // Day 1: nobody is known; every unknown track is grouped.
    let mut snapshot_ids = Vec::new();
    let events = play(&cfg, Duration::ZERO, |base| {
        let base = base.unwrap();
        let (status, body) = get(&format!("{base}/api/visitors"));
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["visitors"].as_array().unwrap().len(), 2, "{v}");
        let vs = VisitorStore::open(&store).unwrap();
        let best = vs.visitors(false).unwrap()[0].best_snapshot.clone().expect("a visitor has a best shot");
        let (status, jpeg) = get(&format!("{base}/api/snapshots/{best}"));
        assert_eq!(status, 200);
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "a JPEG");
        let (status, ctx) = get(&format!("{base}/api/snapshots/{best}?kind=context"));
        assert_eq!((status, &ctx[..2]), (200, &[0xFF, 0xD8][..]), "the context frame too");
        assert_eq!(get(&format!("{base}/api/snapshots/nope-1-2")).0, 404);
        let (status, body) = get(&format!("{base}/api/visits?day=today"));
        assert_eq!(status, 200);
        let r: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(r["visitors"], 2, "{r}");
        assert_eq!(get(&format!("{base}/api/visits?day=someday")).0, 400);
        // The dashboard's visitor panels query metrics /metrics exposes (no person label).
        let text = String::from_utf8(get(&format!("{base}/metrics")).1).unwrap();
        assert!(common::dashboard_panels_exposed("Visitor", &text) >= 5, "the visitors row is on the board");
        // (The registry is the process's: other tests in this binary may have counted too.)
        let again: f64 = text.lines().find_map(|l| l.strip_prefix("facestream_visitor_tracks_total{camera=\"again\",kind=\"visitor\"} ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0);
        assert!(again >= 1.0, "per-camera counters");
        assert!(!text.lines().any(|l| l.starts_with("facestream_visit") && (l.contains("visitor-") || l.contains("person="))), "never a person or visitor label");
    });
    let by_cam = visitors_by_camera(&events);
    eprintln!("day 1: {by_cam:?}");
    for e in &events {
        match &e.body {
            EventBody::Identified { person, .. } => assert_eq!(person, "unknown", "the gallery is empty"),
            EventBody::TrackEnded { snapshot, .. } => snapshot_ids.push(snapshot.clone().expect("every ended track names its best shot")),
            _ => {}
        }
    }
    let a: HashSet<String> = ["again", "help", "yes"].iter().flat_map(|c| by_cam.get(*c).cloned().unwrap_or_default()).collect();
    let b = by_cam.get("book").cloned().unwrap_or_default();
    assert_eq!(a.len(), 1, "signer A is one visitor in all three clips, the print on the hoodie never another: {by_cam:?}");
    assert_eq!(b.len(), 1, "signer B is one visitor: {by_cam:?}");
    assert!(a.is_disjoint(&b), "two signers, two visitors: {by_cam:?}");
    let vs = VisitorStore::open(&store).unwrap();
    let list = vs.visitors(false).unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let snap_dir = cfg.snapshots.dir_for(&cfg.base_dir, &store);
    for id in &snapshot_ids {
        let row = vs.snapshot(id).unwrap().unwrap_or_else(|| panic!("snapshot {id} has a row"));
        assert!(snap_dir.join(&row.face_file).is_file(), "{} exists", row.face_file);
    }

    // Day 2 (the clock one day on): the same two visitors, both returning; no new visitor.
    let events = play(&cfg, DAY, |_| {});
    let by_cam2 = visitors_by_camera(&events);
    assert_eq!(by_cam2.values().flatten().collect::<HashSet<_>>(), a.union(&b).collect::<HashSet<_>>(), "the same visitors come back: {by_cam2:?}");
    assert!(events.iter().all(|e| !matches!(&e.body, EventBody::Visitor { new: true, .. })), "nobody is new on day 2");
    let vs = VisitorStore::open(&store).unwrap();
    assert_eq!(vs.visitors(false).unwrap().len(), 2);
    let day2 = report::day(&vs, "today", "UTC", None, &Default::default(), SystemTime::now() + DAY).unwrap();
    assert_eq!((day2.visitors, day2.returning_visitors, day2.known_people), (2, 2, 0), "{day2:?}");
    let day1 = report::day(&vs, "today", "UTC", None, &Default::default(), SystemTime::now()).unwrap();
    assert_eq!((day1.visitors, day1.returning_visitors, day1.visits), (2, 0, 2), "{day1:?}");

    // Naming signer A's visitor makes the next run name her.
    let p = places(&cfg, &store);
    let visitor_a = a.iter().next().unwrap().clone();
    let named = ops::name(&p, &visitor_a, "signer_A", cfg.visitors.enroll_faces, cfg.visitors.min_quality, 0.3).unwrap();
    assert!(named.enrolled >= 1, "{named:?}");
    let events = play(&cfg, 2 * DAY, |_| {});
    let mut named_in = HashSet::new();
    for e in &events {
        if let EventBody::Identified { person, .. } = &e.body
            && person != "unknown"
        {
            assert_eq!(person, "signer_A");
            assert_ne!(e.camera, "book", "signer B is not signer A");
            named_in.insert(e.camera.clone());
        }
    }
    assert!(!named_in.is_empty(), "signer A was named in the run after naming: {events:?}");
    let vs = VisitorStore::open(&store).unwrap();
    let day3 = report::day(&vs, "today", "UTC", None, &Store::open(&store).unwrap().persons().unwrap().into_iter().map(|p| (p.id, p.name)).collect(), SystemTime::now() + 2 * DAY).unwrap();
    assert_eq!(day3.known_people, 1, "{day3:?}");
    assert!(day3.subjects.iter().any(|s| s.who == "signer_A" && s.returning), "her earlier visits are hers now: {day3:?}");

    // Forget both: no row and no file of either is left.
    ops::forget(&p, "signer_A").unwrap();
    ops::forget(&p, b.iter().next().unwrap()).unwrap();
    let vs = VisitorStore::open(&store).unwrap();
    let counts = vs.counts().unwrap();
    for t in ["visitors", "visitor_faces", "snapshots", "sightings", "visits", "feedback"] {
        assert_eq!(counts[t], 0, "{t} still has rows: {counts:?}");
    }
    assert!(Store::open(&store).unwrap().persons().unwrap().is_empty());
    let left: Vec<_> = std::fs::read_dir(&snap_dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "snapshot files left behind: {left:?}");
}

/// A track "was not" the person it was named: the track leaves the person's visits, joins the
/// visitors, and the feedback is recorded.
#[test]
fn a_rejected_name_is_recorded_and_the_track_becomes_a_visitor() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("gallery.db");
    let mut cfg = config(&store, false);
    // Signer B enrolled from one frame of `book`; the other clips stay unknown.
    let frames = facestream::ingest::clip_frames(&root().join("tests/fixtures/signs/book.mkv"), 10, 11).unwrap();
    let (_, f) = &frames[10];
    let png = dir.path().join("b.png");
    image::RgbImage::from_raw(f.width, f.height, f.data.clone()).unwrap().save(&png).unwrap();
    cfg.gallery.people.push(facestream::gallery::PersonPhotos { name: "signer_B".into(), images: vec![png], groups: Vec::new() });
    let events = play(&cfg, Duration::ZERO, |_| {});
    let named: Vec<&Event> = events.iter().filter(|e| matches!(&e.body, EventBody::TrackEnded { person, .. } if person == "signer_B")).collect();
    assert!(!named.is_empty(), "signer B was named in book");
    let EventBody::TrackEnded { track_id, .. } = &named[0].body else { unreachable!() };
    let vs = VisitorStore::open(&store).unwrap();
    let before = report::day(&vs, "today", "UTC", None, &Default::default(), SystemTime::now()).unwrap();
    assert_eq!((before.known_people, before.visitors), (1, 1), "{before:?}");
    let params = cfg.visitors.params(&cfg.identify, &cfg.embed_card()).unwrap();
    let r = ops::reject(&places(&cfg, &store), track_id, params, facestream::visitors::millis(SystemTime::now())).unwrap();
    assert_eq!(r.person, "signer_B");
    assert!(r.visitor.is_some(), "{r:?}");
    let vs = VisitorStore::open(&store).unwrap();
    let after = report::day(&vs, "today", "UTC", None, &Default::default(), SystemTime::now()).unwrap();
    assert_eq!((after.known_people, after.visitors), (0, 2), "the track left signer B's visits and became a second visitor: {after:?}");
    assert_eq!(vs.feedback().unwrap().len(), 1);
    assert!(ops::reject(&places(&cfg, &store), track_id, params, 0).is_err(), "it is no longer named");
}

/// `kill -9` while the visitors are being written: every committed visitor is still there, the
/// store is consistent, and the next run finds the same people (no duplicate visitors).
#[test]
fn kill_9_during_clustering_loses_no_committed_visitor() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("gallery.db");
    let cfg_path = dir.path().join("visitors.toml");
    let text = config_text(&store, false).replace("tests/fixtures/", &format!("{}/tests/fixtures/", root().display()));
    std::fs::write(&cfg_path, &text).unwrap();
    let mut child = common::Proc(std::process::Command::new(env!("CARGO_BIN_EXE_facestream")).args(["--log", "warn", "-c"]).arg(&cfg_path).arg("run").stdout(std::process::Stdio::null()).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(120);
    let committed = loop {
        if let Ok(vs) = VisitorStore::open(&store)
            && let Ok(list) = vs.visitors(false)
            && !list.is_empty()
        {
            break list;
        }
        assert!(Instant::now() < deadline, "no visitor was committed");
        assert!(child.0.try_wait().unwrap().is_none(), "facestream ended before a visitor was written");
        std::thread::sleep(Duration::from_millis(10));
    };
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    let vs = VisitorStore::open(&store).unwrap();
    let after: Vec<u64> = vs.visitors(false).unwrap().iter().map(|v| v.id).collect();
    for v in &committed {
        assert!(after.contains(&v.id), "{} was committed before the kill and is gone", v.name);
    }
    assert_eq!(Store::open(&store).unwrap().integrity_check().unwrap(), "ok");
    drop(vs);
    // A whole run afterwards: two people, two visitors, the committed ones kept.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_facestream")).args(["--log", "warn", "-c"]).arg(&cfg_path).arg("run").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list = VisitorStore::open(&store).unwrap().visitors(false).unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    for v in &committed {
        assert!(list.iter().any(|x| x.id == v.id), "{} kept its id", v.name);
    }
}

/// The README's example, as a user runs it: `run`, then `visitors list` shows the two signers,
/// and the CLI's visits report and `forget` work on what it stored.
#[test]
fn the_example_config_finds_two_visitors_and_the_cli_reports_and_forgets_them() {
    let example = root().join("config/examples/visitors.toml");
    let cfg = Config::load(&example).unwrap();
    let store = cfg.gallery.store_path(&cfg.base_dir);
    let _ = std::fs::remove_dir_all(store.parent().unwrap());
    let bin = env!("CARGO_BIN_EXE_facestream");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(bin).args(["--log", "warn", "--config"]).arg(&example).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let events = cli(&["run"]);
    assert_eq!(events.lines().filter(|l| l.contains("\"event\":\"visitor\"")).count(), 4, "one visitor event per clip: {events}");
    let list = cli(&["visitors", "list"]);
    assert!(list.contains("2 visitor(s): 2 active"), "{list}");
    let report: serde_json::Value = serde_json::from_str(&cli(&["visits", "report", "--format", "json"])).unwrap();
    assert_eq!((report["visitors"].as_u64(), report["visits"].as_u64()), (Some(2), Some(2)), "{report}");
    assert_eq!(report["per_camera"].as_object().unwrap().len(), 4);
    let csv = cli(&["visits", "report", "--format", "csv"]);
    assert_eq!(csv.lines().count(), 3, "a header and one line per visitor: {csv}");
    let out = cli(&["forget", "visitor-2"]);
    assert!(out.contains("visitor-2 (visitor) forgotten"), "{out}");
    assert!(cli(&["visitors", "list"]).contains("1 visitor(s)"));
    let bad = std::process::Command::new(bin).args(["--log", "warn", "--config"]).arg(&example).args(["visitors", "name", "visitor-99", "x"]).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("no visitor `visitor-99`"), "{}", String::from_utf8_lossy(&bad.stderr));
    for sub in [&["visitors", "--help"][..], &["visits", "report", "--help"], &["forget", "--help"]] {
        assert!(!cli(sub).is_empty());
    }
}
