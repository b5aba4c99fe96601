//! The application runner and the gallery API under load: `facestream_gallery_persons` follows
//! enrollments and deletions made over HTTP while the pipeline runs, and `/healthz` keeps
//! answering while a large gallery index is being built and a face is enrolled meanwhile.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use facestream::app::{self, App, AppOptions};
use facestream::config::Config;
use facestream::gallery::Gallery;
use facestream::gallery::store::Store;
use facestream::http::{self, AppState, HttpConfig, api};
use facestream::photo::Analyzer;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

fn metric(base: &str, name: &str) -> Option<f64> {
    let text = agent().get(&format!("{base}/metrics")).call().ok()?.body_mut().read_to_string().ok()?;
    text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' ')).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

fn wait_for_metric(base: &str, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = metric(base, name);
        if got == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} stayed {got:?}, expected {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn gallery_persons_metric_follows_api_enrollments_and_deletions() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[http]\nbind = \"127.0.0.1:0\"\n[gallery]\nstore = \"{}\"\n[[gallery.people]]\nname = \"MEDS_S029\"\nimages = [\"tests/fixtures/meds-aa-S029-01.jpg\"]\n[[cameras]]\nid = \"door\"\nurl = \"tests/fixtures/ff-region-face-motion.avi\"\nrealtime = true\nloop = true\nmax_fps = 5\n",
        dir.path().join("g.db").display()
    );
    let mut cfg = Config::parse(&text, Path::new("test.toml")).unwrap();
    cfg.base_dir = root();
    cfg.events.stdout = false;
    cfg.validate_for_run(Path::new("test.toml")).unwrap();
    let app = App::start(&cfg, app::load_gallery(&cfg).unwrap(), AppOptions { http: true, ..AppOptions::default() }).unwrap();
    let base = format!("http://{}", app.server.as_ref().unwrap().addr);
    wait_for_metric(&base, "facestream_gallery_persons", 1.0);
    let mut resp = agent().post(&format!("{base}/api/persons")).send(br#"{"name":"paul"}"#.as_slice()).unwrap();
    assert_eq!(resp.status(), 201);
    let body: serde_json::Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    let id = body["person"]["id"].as_u64().unwrap();
    let photo = std::fs::read(root().join("tests/fixtures/Paul.jpeg")).unwrap();
    assert_eq!(agent().post(&format!("{base}/api/persons/{id}/faces")).send(&photo[..]).unwrap().status(), 201);
    wait_for_metric(&base, "facestream_gallery_persons", 2.0);
    assert_eq!(agent().delete(&format!("{base}/api/persons/{id}")).call().unwrap().status(), 204);
    wait_for_metric(&base, "facestream_gallery_persons", 1.0);
    let stop = AtomicBool::new(true);
    assert!(app.run_until(None, &stop, Duration::from_secs(5)), "the pipeline drains");
    app.finish();
}

/// `n` seeded pseudo-random unit vectors.
fn random_units(n: usize, seed: u64) -> Vec<Vec<f32>> {
    facestream::embed::random_units(n, seed).chunks(facestream::embed::DIM).map(<[f32]>::to_vec).collect()
}

#[test]
fn healthz_answers_while_a_200k_person_index_is_built_and_a_face_is_enrolled() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::embedded().unwrap();
    let mut g = Gallery::new();
    g.begin_bulk();
    for (i, v) in random_units(200_000, 11).into_iter().enumerate() {
        g.add_with_id(i as u64 + 1_000_000, &format!("p{i}"), v).unwrap();
    }
    g.end_bulk(); // the first index, built now
    let gallery = Arc::new(RwLock::new(g));
    let store = Store::open(&dir.path().join("g.db")).unwrap();
    let router = api::router(
        api::ApiState { gallery: gallery.clone(), store: Arc::new(Mutex::new(store)), analyzer: Arc::new(Mutex::new(Analyzer::new(&cfg).unwrap())), token: None, threshold: 0.4, margin: 0.05 },
        10 << 20,
    );
    let server = http::serve(&HttpConfig { bind: "127.0.0.1:0".into(), ..HttpConfig::default() }, AppState::new(gallery.clone(), 8), Some(router)).unwrap();
    let base = format!("http://{}", server.addr);
    let (_, body) = {
        let mut r = agent().post(&format!("{base}/api/persons")).send(br#"{"name":"paul"}"#.as_slice()).unwrap();
        (r.status(), r.body_mut().read_to_string().unwrap())
    };
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["person"]["id"].as_u64().unwrap();
    // A rebuild of the whole index starts (as after many removals), then a face is enrolled
    // over HTTP while it runs, and /healthz is asked meanwhile.
    gallery.write().unwrap().start_background_rebuild();
    let building = Instant::now();
    let photo = std::fs::read(root().join("tests/fixtures/Paul.jpeg")).unwrap();
    let enroll = {
        let base = base.clone();
        std::thread::spawn(move || agent().post(&format!("{base}/api/persons/{id}/faces")).send(&photo[..]).unwrap().status())
    };
    let mut answered_during_build = 0;
    let mut slowest = Duration::ZERO;
    while !gallery.read().unwrap().rebuild_ready() || !enroll.is_finished() {
        let asked = Instant::now();
        let status = agent().get(&format!("{base}/healthz")).call().unwrap().status();
        assert_eq!(status, 200);
        slowest = slowest.max(asked.elapsed());
        if !gallery.read().unwrap().rebuild_ready() {
            answered_during_build += 1;
        }
        if building.elapsed() > Duration::from_secs(120) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(enroll.join().unwrap(), 201, "the enrollment went through during the build");
    eprintln!("/healthz answered {answered_during_build} times while the 200k index was built; slowest answer {slowest:?}");
    assert!(answered_during_build > 0, "/healthz answered while the index was being built");
    gallery.write().unwrap().maintain();
    assert_eq!(gallery.read().unwrap().search(&random_units(1, 11)[0], 1)[0].name, "p0");
    server.shutdown();
}
