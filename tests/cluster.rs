//! Scale-out on real engines: a real PostgreSQL (initdb into a temp dir, on 127.0.0.1), a real
//! nats-server with JetStream, and two `facestream run` processes sharing one gallery and four
//! looping file cameras. Checks, in order: the cameras are split and each runs on exactly one
//! node; migrations applied again are a no-op; a person enrolled through node A's API is in node
//! B's index and identified on B's camera; `kill -9` of A moves its cameras to B within
//! `lease_s` + 5 s; PostgreSQL restarted under the running node: it keeps processing, counts
//! what it could not write, and catches up the gallery change made meanwhile; the JetStream
//! stream holds no event twice.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Proc, free_port};

const LEASE_S: f64 = 3.0;
const CAMERAS: [&str; 4] = ["cam-a", "cam-b", "cam-c", "cam-d"];

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(10))).build().into()
}

fn get_json(url: &str) -> Option<serde_json::Value> {
    let mut r = agent().get(url).call().ok()?;
    if r.status() != 200 {
        return None;
    }
    serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()
}

fn metric(base: &str, name: &str) -> Option<f64> {
    let text = agent().get(&format!("{base}/metrics")).call().ok()?.body_mut().read_to_string().ok()?;
    text.lines().filter(|l| l.starts_with(name) && (l.len() == name.len() || l[name.len()..].starts_with([' ', '{']))).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).reduce(|a, b| a + b)
}

fn wait_for<T>(what: &str, limit: Duration, f: impl FnMut() -> Option<T>) -> T {
    wait_for_or(what, limit, f, String::new)
}

/// `wait_for`, adding what `explain` says to the message when it times out.
fn wait_for_or<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>, explain: impl FnOnce() -> String) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() >= limit {
            panic!("timed out after {limit:?} waiting for {what}\n{}", explain());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// PostgreSQL's server programs (Debian keeps them off PATH).
fn pg_bin(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql").map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect()).unwrap_or_default();
    dirs.sort();
    dirs.into_iter().rev().map(|d| d.join(name)).find(|p| p.is_file()).unwrap_or_else(|| panic!("PostgreSQL's {name} is not installed: run `make setup` (Debian package postgresql)"))
}

/// PostgreSQL refuses to run as root: as root the server runs as `nobody`.
fn as_server_user(cmd: &mut Command) -> &mut Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.uid(65534).gid(65534);
    }
    cmd
}

struct Postgres {
    dir: PathBuf,
    port: u16,
    proc: Option<Proc>,
}

impl Postgres {
    fn init(root: &Path) -> Self {
        let dir = root.join("pg");
        std::fs::create_dir_all(&dir).unwrap();
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(root, Some(65534), Some(65534)).unwrap();
            std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        }
        let out = as_server_user(Command::new(pg_bin("initdb")).args(["-D", dir.join("data").to_str().unwrap(), "-U", "facestream", "--auth=trust", "-E", "UTF8", "--no-sync"])).output().unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let mut pg = Self { dir, port: free_port(), proc: None };
        pg.start();
        let mut c = wait_for("PostgreSQL to accept connections", Duration::from_secs(30), || postgres::Client::connect(&pg.url("postgres"), postgres::NoTls).ok());
        c.batch_execute("CREATE DATABASE facestream").unwrap();
        pg
    }

    fn url(&self, db: &str) -> String {
        format!("postgresql://facestream@127.0.0.1:{}/{db}", self.port)
    }

    fn start(&mut self) {
        let data = self.dir.join("data");
        let child = as_server_user(Command::new(pg_bin("postgres")).args(["-D", data.to_str().unwrap(), "-p", &self.port.to_string(), "-k", data.to_str().unwrap(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.proc = Some(Proc(child));
        wait_for("PostgreSQL to start", Duration::from_secs(30), || postgres::Client::connect(&self.url("postgres"), postgres::NoTls).ok());
    }

    /// A fast shutdown (SIGINT), waited for.
    fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            unsafe { libc::kill(p.0.id() as i32, libc::SIGINT) };
            let _ = p.0.wait();
        }
    }
}

fn node_config(dir: &Path, name: &str, port: u16, pg: &Postgres, nats_port: u16) -> PathBuf {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut cfg = format!(
        "[pipeline]\ndetect_workers = 1\nembed_workers = 1\n[infer]\nintra_threads = 1\n\
         [http]\nbind = \"127.0.0.1:{port}\"\n\
         [gallery]\nstore = \"{store}\"\n\
         [events]\nstdout = false\nfile = \"{events}\"\n\
         [events.nats]\nurl = \"nats://127.0.0.1:{nats_port}\"\n\
         [cluster]\ndatabase = \"{db}\"\nnode = \"{name}\"\nlease_s = {LEASE_S}\nurl = \"http://127.0.0.1:{port}\"\n",
        store = dir.join(format!("{name}.db")).display(),
        events = dir.join(format!("{name}.jsonl")).display(),
        db = pg.url("facestream"),
    );
    for cam in CAMERAS {
        cfg += &format!("[[cameras]]\nid = \"{cam}\"\nurl = \"{}\"\nrealtime = true\nloop = true\nmax_fps = 2\n", fixtures.join("ff-region-face-motion.avi").display());
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, cfg).unwrap();
    path
}

fn start_node(config: &Path, log: &Path) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_facestream"))
        .args(["run", "--config", config.to_str().unwrap()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Proc(child)
}

/// camera -> state, from a node's /api/cameras.
fn camera_states(base: &str) -> Option<Vec<(String, String)>> {
    let v = get_json(&format!("{base}/api/cameras"))?;
    let list = v.get("cameras").and_then(|c| c.as_array()).cloned().or_else(|| v.as_array().cloned())?;
    Some(list.iter().map(|c| (c["id"].as_str().unwrap_or("").to_string(), c["state"].as_str().unwrap_or("").to_string())).collect())
}

fn streaming(base: &str) -> Vec<String> {
    camera_states(base).unwrap_or_default().into_iter().filter(|(_, s)| s == "streaming").map(|(c, _)| c).collect()
}

fn events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn enroll(base: &str, name: &str, photo: &str) -> Result<(), String> {
    let mut r = agent().post(&format!("{base}/api/persons")).send(format!("{{\"name\":\"{name}\"}}").as_bytes()).map_err(|e| e.to_string())?;
    let body = r.body_mut().read_to_string().unwrap_or_default();
    if r.status() != 201 {
        return Err(format!("{}: {body}", r.status()));
    }
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["person"]["id"].as_u64().unwrap();
    let bytes = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(photo)).unwrap();
    let mut r = agent().post(&format!("{base}/api/persons/{id}/faces")).send(&bytes[..]).map_err(|e| e.to_string())?;
    if r.status() != 201 {
        return Err(format!("{}: {}", r.status(), r.body_mut().read_to_string().unwrap_or_default()));
    }
    Ok(())
}

/// Every message of the JetStream stream, as (subject, message id, payload).
fn stream_messages(nats_port: u16) -> Vec<(String, String, String)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = async_nats::connect(format!("127.0.0.1:{nats_port}")).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("FACESTREAM").await.expect("the sink created the stream");
        let info = stream.info().await.unwrap().clone();
        let mut out = Vec::new();
        for seq in info.state.first_sequence..=info.state.last_sequence {
            if let Ok(m) = stream.get_raw_message(seq).await {
                let id = m.headers.get("Nats-Msg-Id").map(|v| v.to_string()).unwrap_or_default();
                out.push((m.subject.to_string(), id, String::from_utf8_lossy(&m.payload).to_string()));
            }
        }
        out
    })
}

#[test]
fn two_nodes_share_cameras_gallery_and_events_and_survive_failures() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut pg = Postgres::init(root);
    let nats_port = free_port();
    let _nats = Proc(Command::new(common::find_program("nats-server")).args(["-js", "-sd", root.join("nats").to_str().unwrap(), "-a", "127.0.0.1", "-p", &nats_port.to_string()]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let (pa, pb) = (free_port(), free_port());
    let (a, b) = (format!("http://127.0.0.1:{pa}"), format!("http://127.0.0.1:{pb}"));
    let mut node_a = start_node(&node_config(root, "node-a", pa, &pg, nats_port), &root.join("a.log"));
    let _node_b = start_node(&node_config(root, "node-b", pb, &pg, nats_port), &root.join("b.log"));
    let log = |n: &str| std::fs::read_to_string(root.join(n)).unwrap_or_default();

    // (a) The four cameras are split between the nodes, each streaming on exactly one.
    let split = wait_for("the four cameras to stream, split between the nodes", Duration::from_secs(120), || {
        let (sa, sb) = (streaming(&a), streaming(&b));
        let mut all: Vec<&String> = sa.iter().chain(&sb).collect();
        all.sort();
        all.dedup();
        // A node that starts first takes every camera; the other's share moves to it once it joins.
        (all.len() == 4 && sa.len() + sb.len() == 4 && !sa.is_empty() && !sb.is_empty()).then_some((sa, sb))
    });
    assert!(!split.0.is_empty() && !split.1.is_empty(), "both nodes run cameras: {split:?}\nA: {}\nB: {}", log("a.log"), log("b.log"));
    // The leases name the node that runs each camera (the view is a round old at most).
    let holder_of = |cam: &str| if split.0.iter().any(|c| c == cam) { "node-a" } else { "node-b" };
    let view = wait_for("/api/cluster to show both nodes alive and each camera's lease held by the node that runs it", Duration::from_secs(10), || {
        let v = get_json(&format!("{a}/api/cluster"))?;
        let alive = v["nodes"].as_array()?.iter().filter(|n| n["alive"] == true).count();
        (alive == 2 && CAMERAS.iter().all(|c| v["cameras"][*c].as_str() == Some(holder_of(c)))).then_some(v)
    });
    assert_eq!(view["node"], "node-a");
    // A camera in standby on one node receives no frames there. The counters are cumulative and a
    // node that started first may have run the camera before the other joined, so the check is
    // over a window: A's count grows while B's stays where it was.
    let standby_on_b = &split.0[0];
    let frames = |base: &str, cam: &str| metric(base, &format!("facestream_frames_received_total{{camera=\"{cam}\"}}")).unwrap_or(0.0);
    let (on_a0, on_b0) = (frames(&a, standby_on_b), frames(&b, standby_on_b));
    std::thread::sleep(Duration::from_secs(3));
    let (on_a1, on_b1) = (frames(&a, standby_on_b), frames(&b, standby_on_b));
    assert!(streaming(&a).contains(standby_on_b), "{standby_on_b} still runs on node A");
    assert!(on_a1 > on_a0, "{standby_on_b} receives frames on node A: {on_a0} -> {on_a1}");
    assert_eq!(on_b1, on_b0, "{standby_on_b} runs on node A only: node B's count moved {on_b0} -> {on_b1}");

    // (e) Both nodes applied the migrations at start; applying them again changes nothing.
    let migrate = |url: &str| Command::new(env!("CARGO_BIN_EXE_facestream")).args(["cluster", "migrate", "--database", url]).output().unwrap();
    let out = migrate(&pg.url("facestream"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("nothing to apply"), "{text}");
    let mut sql = postgres::Client::connect(&pg.url("facestream"), postgres::NoTls).unwrap();
    let versions: Vec<i32> = sql.query("SELECT version FROM facestream_migrations ORDER BY version", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, (1..=facestream::gallery::postgres::MIGRATIONS.len() as i32).collect::<Vec<_>>(), "each migration recorded once");

    // (c) A person enrolled through A's API is searchable on B and identified on B's camera.
    let before = metric(&b, "facestream_gallery_persons").unwrap_or(0.0);
    let t0 = Instant::now();
    enroll(&a, "MEDS_S029", "meds-aa-S029-01.jpg").unwrap();
    let enrolled = Instant::now();
    wait_for("node B's index to hold the person enrolled on A", Duration::from_secs(10), || (metric(&b, "facestream_gallery_persons").unwrap_or(0.0) > before).then_some(()));
    eprintln!("gallery change A -> B: searchable on B {:.0} ms after A's enrollment answered ({:.0} ms after the request)", enrolled.elapsed().as_secs_f64() * 1000.0, t0.elapsed().as_secs_f64() * 1000.0);
    // Node B's own event file: whichever camera B runs by now (a lease renewed late may have moved
    // one between the nodes since the split was read).
    let b_events = || events(&root.join("node-b.jsonl"));
    let on_b = wait_for_or(
        "node B to identify MEDS_S029 on one of its cameras",
        Duration::from_secs(90),
        || b_events().into_iter().find(|e| e["event"] == "identified" && e["person"] == "MEDS_S029"),
        || {
            let mut kinds: Vec<String> = b_events().iter().map(|e| format!("{} {} {}", e["camera"], e["event"], e["person"])).collect();
            kinds.sort();
            kinds.dedup();
            let b_log = log("b.log");
            let tail: Vec<&str> = b_log.lines().rev().take(40).collect();
            format!(
                "B's cameras at the split: {:?}, now: {:?}\nB's events (camera, kind, person): {kinds:?}\nB's metrics: persons {:?}, frames processed {:?}, faces {:?}\nB's log, last lines first:\n{}",
                split.1,
                camera_states(&b),
                metric(&b, "facestream_gallery_persons"),
                metric(&b, "facestream_frames_processed_total"),
                metric(&b, "facestream_faces_detected_total"),
                tail.join("\n")
            )
        },
    );
    eprintln!("identified on node B: {on_b}");
    assert_eq!(on_b["node"], "node-b");
    // Each node's /metrics names the node, and the dashboard's per-node row reads what they expose.
    let exposition = agent().get(&format!("{b}/metrics")).call().unwrap().body_mut().read_to_string().unwrap();
    assert!(exposition.lines().any(|l| l.starts_with("facestream_build_info{") && l.contains("node=\"node-b\"")), "build info names the node");
    assert!(common::dashboard_panels_exposed("Cluster:", &exposition) >= 6, "the Grafana board has its cluster row");

    // (b) kill -9 of node A: its cameras run on B within lease + 5 s.
    unsafe { libc::kill(node_a.0.id() as i32, libc::SIGKILL) };
    let _ = node_a.0.wait();
    let killed = Instant::now();
    wait_for("node B to run all four cameras after node A died", Duration::from_secs_f64(LEASE_S + 5.0), || (streaming(&b).len() == 4).then_some(()));
    eprintln!("failover: all cameras on B {:.1} s after kill -9 of A (lease_s {LEASE_S})", killed.elapsed().as_secs_f64());

    // (d) PostgreSQL restarted under the running node.
    drop(sql);
    let processed = |base: &str| metric(base, "facestream_frames_processed_total").unwrap_or(0.0);
    pg.stop();
    wait_for("node B to notice the database is gone", Duration::from_secs(20), || (metric(&b, "facestream_cluster_database_up") == Some(0.0)).then_some(()));
    let during = processed(&b);
    let refused = enroll(&b, "Chris", "Chris.jpeg");
    assert!(refused.is_err(), "an enrollment without the database is refused, not lost silently");
    std::thread::sleep(Duration::from_secs(3));
    assert!(processed(&b) > during, "node B keeps processing while the database is down");
    assert_eq!(streaming(&b).len(), 4, "and keeps its cameras");
    pg.start();
    // A change made while B's sync connection is still down is caught up from the change log.
    let mut sql = postgres::Client::connect(&pg.url("facestream"), postgres::NoTls).unwrap();
    let persons_before = metric(&b, "facestream_gallery_persons").unwrap_or(0.0);
    sql.batch_execute("DELETE FROM persons WHERE name = 'MEDS_S029'").unwrap();
    wait_for("node B to catch up the removal made right after the restart", Duration::from_secs(20), || (metric(&b, "facestream_gallery_persons").unwrap_or(1.0) < persons_before).then_some(()));
    wait_for("node B to renew its leases after the restart", Duration::from_secs(20), || (metric(&b, "facestream_cluster_database_up") == Some(1.0)).then_some(()));
    enroll(&b, "Chris", "Chris.jpeg").expect("enrollment works again after the restart");
    assert_eq!(streaming(&b).len(), 4, "no camera was lost over the restart");

    // No event is twice in the JetStream stream, and events came from both nodes' cameras.
    std::thread::sleep(Duration::from_secs(2));
    let msgs = stream_messages(nats_port);
    assert!(msgs.len() > 10, "events reached JetStream: {}", msgs.len());
    let mut ids: Vec<&str> = msgs.iter().map(|m| m.1.as_str()).collect();
    assert!(ids.iter().all(|i| i.len() == 32), "every message has its id");
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "no message id twice in the stream");
    let mut payloads: Vec<&str> = msgs.iter().map(|m| m.2.as_str()).collect();
    payloads.sort();
    payloads.dedup();
    assert_eq!(payloads.len(), n, "no event twice in the stream");
    for (subject, _, payload) in &msgs {
        let e: serde_json::Value = serde_json::from_str(payload).unwrap();
        assert_eq!(subject, &format!("facestream.{}.{}", e["camera"].as_str().unwrap(), e["event"].as_str().unwrap()));
        assert!(e["node"] == "node-a" || e["node"] == "node-b", "every event names its node: {payload}");
    }
    assert!(msgs.iter().any(|m| m.2.contains("\"identified\"") && m.2.contains("MEDS_S029")), "B's identification is in the stream");
}

fn unit(seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..facestream::embed::DIM)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    facestream::embed::normalized(&v)
}

/// The same operations give the same answers on SQLite and on PostgreSQL.
fn exercise(s: &mut facestream::gallery::store::Store) -> Vec<String> {
    use facestream::gallery::store::StoreError;
    let mut out = Vec::new();
    let ann = s.add_sample("ann", &unit(1), "m1", 0.9, "a1").unwrap();
    assert_eq!(s.add_sample("ann", &unit(2), "m1", 0.8, "a2").unwrap(), ann, "one person per name");
    let bob = s.ensure_person("bob", Some(&serde_json::json!({"note": "x"}))).unwrap();
    let face = s.add_face(bob, &unit(3), "m1", 0.7, "b1", Some(b"jpeg")).unwrap();
    assert!(matches!(s.add_face(9999, &unit(4), "m1", 0.7, "x", None), Err(StoreError::NoPerson(_))), "no sample for a missing person");
    assert_eq!(s.sample_crop(face).unwrap().as_deref(), Some(&b"jpeg"[..]));
    assert_eq!(s.samples_with_crops(bob).unwrap(), [face]);
    assert!(matches!(s.rename_person(bob, "ann"), Err(StoreError::NameTaken(_))));
    assert!(s.rename_person(bob, "robert").unwrap());
    assert!(s.set_groups(bob, &["staff".into()]).unwrap());
    let robert = s.person_by_name("robert").unwrap().unwrap();
    assert_eq!(robert.metadata, serde_json::json!({"note": "x", "groups": ["staff"]}), "other metadata kept");
    s.add_sample("ann", &unit(5), "m1", 0.5, "visitor:7:cam-1").unwrap();
    assert_eq!(s.remove_samples_from("visitor:7:cam-1").unwrap(), 1);
    assert_eq!(s.remove_sample(face).unwrap(), Some(bob));
    assert_eq!(s.remove_sample(face).unwrap(), None);
    assert_eq!(s.sample_crop(face).unwrap(), None, "the crop goes with its sample");
    let mut g = facestream::gallery::Gallery::new();
    assert_eq!(s.load_into(&mut g, "m1").unwrap(), 2);
    assert_eq!(g.search(&unit(2), 1)[0].name, "ann");
    assert!(s.load_into(&mut facestream::gallery::Gallery::new(), "m2").is_err(), "another model's samples are refused");
    let export = s.export().unwrap();
    assert!(s.remove_person(ann).unwrap());
    assert!(!s.remove_person(ann).unwrap());
    assert_eq!(s.import(&export).unwrap(), (2, 2));
    let again = s.ensure_person("carl", None).unwrap();
    assert!(again > bob, "ids are never reused");
    assert_eq!(s.integrity_check().unwrap(), "ok");
    for p in s.persons().unwrap() {
        out.push(format!("{} {} {}", p.name, p.samples, p.metadata));
    }
    for x in s.samples(None).unwrap() {
        out.push(format!("{} {} {} {}", x.model_id, x.quality, x.image_sha256, x.embedding.len()));
    }
    out
}

#[test]
fn both_gallery_engines_agree_and_the_shared_one_syncs_logs_and_buffers() {
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, RwLock};
    let dir = tempfile::tempdir().unwrap();
    let mut pg = Postgres::init(dir.path());
    let url = pg.url("facestream");
    let sqlite = exercise(&mut facestream::gallery::store::Store::open(&dir.path().join("g.db")).unwrap());
    let shared = exercise(&mut facestream::gallery::store::Store::connect(&url, &dir.path().join("local.db")).unwrap());
    assert_eq!(sqlite, shared);

    // Migrations: applied once, a second run is a no-op.
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    assert!(facestream::gallery::postgres::migrate(&mut c).unwrap().is_empty());

    // A follower's index picks up every change through the change log.
    let follower = Arc::new(RwLock::new(facestream::gallery::Gallery::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let from_seq = facestream::cluster::sync::current_seq(&url).unwrap();
    let sync = {
        let s = facestream::cluster::sync::SyncSetup { database: url.clone(), gallery: follower.clone(), model_id: "m1".into(), from_seq, stop: stop.clone() };
        std::thread::spawn(move || facestream::cluster::sync::run(s))
    };
    let mut store = facestream::gallery::store::Store::connect(&url, &dir.path().join("local.db")).unwrap();
    let dora = store.add_sample("dora", &unit(9), "m1", 0.9, "d").unwrap();
    store.add_sample("eve", &unit(10), "other-model", 0.9, "e").unwrap();
    wait_for("the follower to find dora", Duration::from_secs(10), || follower.read().unwrap().search(&unit(9), 1).first().filter(|m| m.name == "dora").map(|_| ()));
    assert!(follower.read().unwrap().person_id("eve").is_none(), "another model's samples are not searchable");
    store.rename_person(dora, "dorothy").unwrap();
    wait_for("the rename to reach the follower", Duration::from_secs(10), || (follower.read().unwrap().search(&unit(9), 1)[0].name == "dorothy").then_some(()));

    // The gates' audit log: one table for every node; decisions made while the database is
    // down wait in memory and are written, in order, when it is back.
    let spec = store.spec();
    let log = facestream::gate::audit::AuditLog::open_spec(&spec).unwrap();
    let now = std::time::SystemTime::now();
    let ev = serde_json::json!({"votes": 2});
    let id = log.append("door", "cam", now, "granted", None, Some("dorothy"), "cam-1", 0.2, &ev, Some(b"jpeg")).unwrap().expect("written at once");
    assert_eq!(log.crop("door", id).unwrap().as_deref(), Some(&b"jpeg"[..]));
    pg.stop();
    for i in 0..3 {
        assert_eq!(log.append("door", "cam", now, "denied", Some("unknown"), None, &format!("cam-{}", i + 2), 0.3, &ev, None).unwrap(), None, "kept while the database is down");
    }
    assert!(store.add_sample("frank", &unit(11), "m1", 0.9, "f").is_err(), "an enrollment without the database fails, it is not lost silently");
    pg.start();
    // After the restart: the sync reconnects and catches up a change made meanwhile.
    let mut c = wait_for("the database back", Duration::from_secs(20), || postgres::Client::connect(&url, postgres::NoTls).ok());
    c.batch_execute("DELETE FROM persons WHERE name = 'dorothy'").unwrap();
    wait_for("the follower to catch up the removal", Duration::from_secs(20), || follower.read().unwrap().person_id("dorothy").is_none().then_some(()));
    assert!(log.append("door", "cam", now, "granted", None, Some("x"), "cam-9", 0.2, &ev, None).unwrap().is_some());
    let entries = log.entries(Some("door"), None, 100).unwrap();
    assert_eq!(entries.len(), 5, "the three kept decisions were written: {entries:?}");
    assert_eq!(log.forget_person("x").unwrap(), 1);
    store.add_sample("frank", &unit(11), "m1", 0.9, "f").expect("the store reconnects by itself");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    sync.join().unwrap();
}

#[test]
fn the_cluster_example_config_is_valid_and_bad_cluster_keys_are_named() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/cluster.toml");
    let cfg = facestream::config::Config::load(&example).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.cluster.enabled() && cfg.events.nats.is_some());
    let bad = "[cluster]\ndatabase = \"postgresql://x@127.0.0.1/db\"\nlease_s = 0.1\nnode = \"no spaces\"\n[events.nats]\nurl = \"http://x\"\n";
    let err = facestream::config::Config::parse(bad, Path::new("bad.toml")).unwrap_err().to_string();
    for key in ["cluster.lease_s", "cluster.node", "events.nats.url"] {
        assert!(err.contains(key), "{key} named in: {err}");
    }
}

/// The visitors' operations, the same on both engines: sightings and visits with the gap rule,
/// visitors grouped, merged, ignored, named; a rejected name; forgetting; retention.
fn exercise_visitors(vs: &mut facestream::visitors::store::VisitorStore) -> Vec<String> {
    use facestream::visitors::store::{SnapshotRow, Subject, TrackRecord, VisitorStore};
    const MIN: i64 = 60_000;
    let sites = ["all".to_string(), "lobby".to_string()];
    let track = |vs: &mut VisitorStore, id: &str, camera: &str, at: i64, subject: Option<Subject>, name: Option<&str>, t: &[f32]| {
        let snap = SnapshotRow { id: id.into(), camera: camera.into(), track_id: format!("{camera}-{id}"), at_ms: at, person_id: None, visitor_id: None, quality: 0.5, face_file: format!("{id}.jpg"), context_file: Some(format!("{id}-context.jpg")) };
        let images = vec![(format!("{id}.jpg"), vec![0xFF, 0xD8, 1]), (format!("{id}-context.jpg"), vec![0xFF, 0xD8, 2])];
        let rec = TrackRecord { id, track_id: &snap.track_id.clone(), camera, first_ms: at, last_ms: at + MIN, subject, person_name: name, snapshot: Some(&snap), template: Some(t), images: &images, model_id: "m", quality: 0.5, sites: &sites, gap_ms: 10 * MIN };
        let mut tx = vs.begin().unwrap();
        let new = VisitorStore::record_track(&mut *tx, &rec).unwrap();
        tx.commit().unwrap();
        new
    };
    let mut out = Vec::new();
    out.push(format!("{:?}", track(vs, "a", "door", 0, Some(Subject::Person(7)), Some("ann"), &unit(1))));
    out.push(format!("{:?}", track(vs, "b", "hall", 5 * MIN, Some(Subject::Person(7)), Some("ann"), &unit(1))));
    out.push(format!("{:?}", track(vs, "c", "door", 30 * MIN, Some(Subject::Person(7)), Some("ann"), &unit(1))));
    let mut tx = vs.begin().unwrap();
    let (v1, v2, v3) = (VisitorStore::new_visitor(&mut *tx, 0).unwrap(), VisitorStore::new_visitor(&mut *tx, 0).unwrap(), VisitorStore::new_visitor(&mut *tx, 0).unwrap());
    let f = VisitorStore::add_face(&mut *tx, v2, &unit(2), "m", 0.4, 40 * MIN, "d").unwrap();
    VisitorStore::add_face(&mut *tx, v3, &unit(3), "m", 0.6, 41 * MIN, "e").unwrap();
    VisitorStore::add_face(&mut *tx, v3, &unit(4), "other", 0.6, 41 * MIN, "e").unwrap();
    tx.commit().unwrap();
    track(vs, "d", "door", 40 * MIN, Some(Subject::Visitor(v2)), None, &unit(2));
    track(vs, "e", "hall", 41 * MIN, Some(Subject::Visitor(v3)), None, &unit(3));
    track(vs, "f", "hall", 42 * MIN, None, None, &unit(5));
    let mut tx = vs.begin().unwrap();
    VisitorStore::merge(&mut *tx, v1, v2).unwrap();
    assert!(VisitorStore::merge(&mut *tx, v1, 999).is_err(), "no merge from a missing visitor");
    tx.commit().unwrap();
    assert_eq!(vs.resolve(v2).unwrap().unwrap().id, v1, "the merged id redirects");
    out.push(format!("{:?}", vs.clusters("m").unwrap().iter().map(|c| (c.id, c.ignored)).collect::<Vec<_>>()));
    vs.set_state(v3, "ignored").unwrap();
    out.push(format!("{:?}", vs.clusters("m").unwrap().iter().map(|c| (c.id, c.ignored)).collect::<Vec<_>>()));
    out.push(format!("{:?}", vs.faces(v1).unwrap().iter().map(|x| (x.id, x.quality, x.sighting.clone(), x.embedding.len())).collect::<Vec<_>>()));
    assert_eq!(vs.faces(v1).unwrap()[0].id, f);
    // "c was not ann": the track leaves her visits and joins visitor v1.
    let mut tx = vs.begin().unwrap();
    VisitorStore::reject(&mut *tx, "c", 7, "ann", 50 * MIN, 10 * MIN, &sites).unwrap();
    VisitorStore::assign_sighting(&mut *tx, "c", v1, 10 * MIN, &sites).unwrap();
    VisitorStore::mark_named(&mut *tx, v1, 8).unwrap();
    tx.commit().unwrap();
    let full = vs.sighting("door-c").unwrap().unwrap();
    out.push(format!("{:?} {:?} {} {}", full.sighting, full.template.map(|t| t.len()), full.model_id, full.quality));
    out.push(format!("{:?}", vs.visitors(true).unwrap()));
    out.push(format!("{:?}", vs.visitors(false).unwrap()));
    out.push(format!("{:?}", vs.visits(0, i64::MAX).unwrap()));
    out.push(format!("{:?}", vs.sightings(0, i64::MAX).unwrap()));
    out.push(format!("{:?}", vs.seen_before(35 * MIN).unwrap()));
    out.push(format!("{:?} {:?}", vs.snapshot("d").unwrap(), vs.snapshot("zz").unwrap()));
    out.push(format!("{:?} {:?}", vs.person_id_by_name("ann").unwrap(), vs.person_id_by_name("zed").unwrap()));
    out.push(format!("{:?}", vs.feedback().unwrap()));
    let mut files = vs.forget_visitor(v3).unwrap();
    files.sort();
    out.push(format!("{files:?}"));
    let mut files = vs.forget_person(7).unwrap();
    files.sort();
    out.push(format!("{files:?}"));
    let (mut files, counts) = vs.purge(41 * MIN, 41 * MIN, 41 * MIN).unwrap();
    files.sort();
    out.push(format!("{files:?} {counts:?}"));
    let mut names: Vec<String> = vs.snapshot_file_names().unwrap().into_iter().collect();
    names.sort();
    out.push(format!("{names:?}"));
    let mut counts: Vec<_> = vs.counts().unwrap().into_iter().collect();
    counts.sort();
    out.push(format!("{counts:?}"));
    out
}

#[test]
fn both_visitor_engines_agree_and_the_shared_one_keeps_images_and_tells_others_changed() {
    use facestream::gallery::store::StoreSpec;
    use facestream::visitors::store::VisitorStore;
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::init(dir.path());
    let shared = StoreSpec { path: dir.path().join("local.db"), database: Some(pg.url("facestream")) };
    let mut on_sqlite = VisitorStore::open_spec(&StoreSpec::sqlite(dir.path().join("g.db"))).unwrap();
    let mut on_pg = VisitorStore::open_spec(&shared).unwrap();
    assert!(!on_sqlite.shared() && on_pg.shared());
    let (a, b) = (exercise_visitors(&mut on_sqlite), exercise_visitors(&mut on_pg));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y);
    }
    assert_eq!(a.len(), b.len());
    eprintln!("{}", a.join("\n"));
    // PostgreSQL keeps the best shots' images (any node serves them); forgetting and retention
    // removed them with their rows.
    let left: Vec<String> = a[a.len() - 2].trim_matches(['[', ']']).split(", ").map(|s| s.trim_matches('"').to_string()).filter(|s| !s.is_empty()).collect();
    assert!(!left.is_empty(), "some snapshots are left after the purge");
    for name in &left {
        assert_eq!(on_pg.snapshot_image(dir.path(), name).unwrap().map(|b| b[..2].to_vec()), Some(vec![0xFF, 0xD8]), "{name} is in the database");
    }
    assert_eq!(on_pg.snapshot_image(dir.path(), "a.jpg").unwrap(), None, "a forgotten person's image is gone");
    let mut c = postgres::Client::connect(&pg.url("facestream"), postgres::NoTls).unwrap();
    let images: i64 = c.query_one("SELECT COUNT(*) FROM snapshot_images", &[]).unwrap().get(0);
    assert_eq!(images as usize, left.len(), "no image without its snapshot row");
    // Another writer's commit changes what this store sees; its own commits do not.
    let mut other = VisitorStore::open_spec(&shared).unwrap();
    let seen = on_pg.data_version().unwrap();
    let mut tx = on_pg.begin().unwrap();
    VisitorStore::new_visitor(&mut *tx, 0).unwrap();
    tx.commit().unwrap();
    assert_eq!(on_pg.data_version().unwrap(), seen, "its own commit is not a change by others");
    let mine = other.data_version().unwrap();
    let mut tx = other.begin().unwrap();
    VisitorStore::new_visitor(&mut *tx, 0).unwrap();
    tx.commit().unwrap();
    assert_ne!(on_pg.data_version().unwrap(), seen, "another writer's commit is seen");
    assert_eq!(other.data_version().unwrap(), mine, "and not by that writer itself");
    // The writers' marks are pruned by retention, without losing what others see.
    let before = on_pg.data_version().unwrap();
    for _ in 0..5 {
        let mut s = VisitorStore::open_spec(&shared).unwrap();
        s.set_state(1, "active").unwrap();
    }
    let after_writes = on_pg.data_version().unwrap();
    assert!(after_writes > before);
    on_pg.purge(0, 0, 0).unwrap();
    let writers: i64 = c.query_one("SELECT COUNT(*) FROM visitor_writers", &[]).unwrap().get(0);
    assert!(writers <= 4, "{writers} writer marks kept (the newest three, and the purge's own commit)");
    assert_eq!(on_pg.data_version().unwrap(), after_writes, "pruning changes nothing others see");
}

/// A node that runs the sign clips `cams` once each (not looped, not in real time) with the
/// visitors application on, sharing the cluster's database.
fn visitor_node_config(dir: &Path, name: &str, port: u16, pg: &Postgres, cams: &[&str]) -> PathBuf {
    let mut cfg = format!(
        "[pipeline]\ndetect_workers = 1\nembed_workers = 1\n[infer]\nintra_threads = 1\n\
         [http]\nbind = \"127.0.0.1:{port}\"\n\
         [gallery]\nstore = \"{store}\"\n\
         [events]\nstdout = false\n\
         [snapshots]\nenabled = true\n[visitors]\nenabled = true\n[visits]\nenabled = true\n\
         [cluster]\ndatabase = \"{db}\"\nnode = \"{name}\"\nlease_s = {LEASE_S}\n",
        store = dir.join(format!("{name}.db")).display(),
        db = pg.url("facestream"),
    );
    for cam in cams {
        cfg += &format!("[[cameras]]\nid = \"{cam}\"\nurl = \"{}\"\n", Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/signs/{cam}.mkv")).display());
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, cfg).unwrap();
    path
}

/// Waits until every camera of the node has ended and its tracks are stored.
fn clips_done(base: &str, cams: &[&str], sql: &mut postgres::Client, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let names: Vec<String> = cams.iter().map(|c| c.to_string()).collect();
    loop {
        let states = camera_states(base).unwrap_or_default();
        let ended = cams.iter().all(|c| states.iter().any(|(id, s)| id == c && s == "ended"));
        let stored: i64 = sql.query_one("SELECT COUNT(DISTINCT camera) FROM sightings WHERE camera = ANY($1)", &[&names]).map(|r| r.get(0)).unwrap_or(-1);
        if ended && stored == cams.len() as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "the clips of {base} did not end with their tracks stored: states {states:?}, cameras with sightings {stored}\n{}", std::fs::read_to_string(log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(200));
    }
    // The last track of a clip is committed just after the camera ends.
    std::thread::sleep(Duration::from_secs(2));
}

#[test]
fn two_nodes_count_one_set_of_visitors_and_share_their_best_shots() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let pg = Postgres::init(root);
    let mut sql = postgres::Client::connect(&pg.url("facestream"), postgres::NoTls).unwrap();
    let (pa, pb) = (free_port(), free_port());
    let (a, b) = (format!("http://127.0.0.1:{pa}"), format!("http://127.0.0.1:{pb}"));
    let log = |n: &str| std::fs::read_to_string(root.join(n)).unwrap_or_default();
    // Node A sees signer A (again) and signer B (book); node B later sees signer A twice more.
    let (cams_a, cams_b) = (["again", "book"], ["help", "yes"]);
    let mut node_a = start_node(&visitor_node_config(root, "node-a", pa, &pg, &cams_a), &root.join("a.log"));
    clips_done(&a, &cams_a, &mut sql, &root.join("a.log"));
    let visitors = |sql: &mut postgres::Client| -> Vec<(i64, String)> { sql.query("SELECT id, state FROM visitors WHERE state IN ('active', 'ignored') ORDER BY id", &[]).unwrap().iter().map(|r| (r.get(0), r.get(1))).collect() };
    let after_a = visitors(&mut sql);
    assert_eq!(after_a.len(), 2, "node A grouped its two signers: {after_a:?}\n{}", log("a.log"));
    assert_eq!(metric(&a, "facestream_visitors_active"), Some(2.0));

    let _node_b = start_node(&visitor_node_config(root, "node-b", pb, &pg, &cams_b), &root.join("b.log"));
    clips_done(&b, &cams_b, &mut sql, &root.join("b.log"));
    assert_eq!(visitors(&mut sql), after_a, "node B's tracks of signer A joined the visitor node A made: one visitor count\n{}", log("b.log"));
    let per_visitor: Vec<(i64, Vec<String>)> = sql
        .query("SELECT visitor_id, array_agg(DISTINCT camera ORDER BY camera) FROM sightings WHERE visitor_id IS NOT NULL GROUP BY visitor_id ORDER BY visitor_id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    eprintln!("cameras per visitor: {per_visitor:?}");
    assert!(per_visitor.iter().any(|(_, cams)| cams.iter().any(|c| c == "again") && cams.iter().any(|c| c == "help")), "signer A is one visitor across both nodes' cameras: {per_visitor:?}");
    // Either node's API answers for the whole site.
    for base in [&a, &b] {
        let v = get_json(&format!("{base}/api/visitors")).unwrap();
        assert_eq!(v["visitors"].as_array().unwrap().len(), 2, "{base}: {v}");
        let r = get_json(&format!("{base}/api/visits?day=today")).unwrap();
        assert_eq!(r["visitors"], 2, "{base}: {r}");
    }

    // Named through node B's API: node A's running clusters follow (the named visitor leaves
    // them), and A's gallery holds the new person.
    let signer_b = per_visitor.iter().find(|(_, cams)| cams == &["book".to_string()]).expect("signer B is seen on book only").0;
    let persons_on_a = metric(&a, "facestream_gallery_persons").unwrap_or(0.0);
    let mut r = agent().post(&format!("{b}/api/visitors/visitor-{signer_b}/name")).header("content-type", "application/json").send(&b"{\"name\":\"Signer B\"}"[..]).unwrap();
    assert_eq!(r.status(), 200, "{}", r.body_mut().read_to_string().unwrap_or_default());
    let named = Instant::now();
    wait_for("node A's visitor clusters to drop the visitor named on node B", Duration::from_secs(5), || (metric(&a, "facestream_visitors_active") == Some(1.0)).then_some(()));
    eprintln!("visitor named on B: out of A's clusters {:.0} ms later", named.elapsed().as_secs_f64() * 1000.0);
    wait_for("node A's gallery to hold Signer B", Duration::from_secs(5), || (metric(&a, "facestream_gallery_persons").unwrap_or(0.0) > persons_on_a).then_some(()));

    // Node A gone: node B still serves the best shots of A's cameras (they are in the database,
    // not in A's folder).
    unsafe { libc::kill(node_a.0.id() as i32, libc::SIGKILL) };
    let _ = node_a.0.wait();
    let snap: String = sql.query_one("SELECT id FROM snapshots WHERE camera = 'book' LIMIT 1", &[]).unwrap().get(0);
    for kind in ["face", "context"] {
        let mut r = agent().get(&format!("{b}/api/snapshots/{snap}?kind={kind}")).call().unwrap();
        let bytes = r.body_mut().read_to_vec().unwrap();
        assert_eq!((r.status().as_u16(), &bytes[..2]), (200, &[0xFF, 0xD8][..]), "{kind} of {snap} served by B");
    }
    assert!(!root.join("snapshots").exists() || std::fs::read_dir(root.join("snapshots")).unwrap().next().is_none(), "no image was written to a local folder");
    // The CLI reads the same shared tables.
    let out = Command::new(env!("CARGO_BIN_EXE_facestream")).args(["visitors", "list", "--config", root.join("node-b.toml").to_str().unwrap()]).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.lines().filter(|l| l.starts_with("visitor-")).count() == 1, "one visitor left after the naming:\n{text}{}", String::from_utf8_lossy(&out.stderr));
}
