//! Metrics and outputs against real servers on 127.0.0.1: a real Prometheus scraping /metrics, a
//! real Mosquitto broker, a webhook receiver (up and down), the SSE event stream, and the Grafana
//! dashboard's queries checked against the live /metrics output.

mod common;
use common::{Proc, find_program, free_port};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use facestream::config::Config;
use facestream::events::sinks::signature;
use facestream::gallery::Gallery;
use facestream::http::{self, AppState, HttpConfig};
use facestream::photo::{Analyzer, enroll_photos};
use facestream::telemetry::metrics;
use facestream::topology::{self, Running};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn config(extra: &str, realtime: bool, looped: bool) -> Config {
    let text = format!(
        r#"{extra}
[[gallery.people]]
name = "MEDS_S029"
images = ["tests/fixtures/meds-aa-S029-01.jpg"]
[[gallery.people]]
name = "Paul_Rudd"
images = ["tests/fixtures/Paul.jpeg"]
[[cameras]]
id = "clip"
url = "tests/fixtures/ff-region-face-motion.avi"
realtime = {realtime}
loop = {looped}
max_fps = 0
"#
    );
    let mut cfg = Config::parse(&text, Path::new("test.toml")).unwrap();
    cfg.base_dir = root();
    cfg.events.stdout = false;
    cfg
}

fn gallery(cfg: &Config) -> Arc<RwLock<Gallery>> {
    let mut g = Gallery::new();
    let mut a = Analyzer::new(cfg).expect("models (run `make setup`)");
    enroll_photos(&mut a, &cfg.gallery.photos(&cfg.base_dir).unwrap(), &mut g).unwrap();
    Arc::new(RwLock::new(g))
}

/// Starts the HTTP side and the pipeline; the event stream is wired as the pipeline's extra sink.
fn start_with_http(cfg: &Config) -> (Running, http::Server, AppState) {
    let g = gallery(cfg);
    let state = AppState::new(g.clone(), 256);
    let server = http::serve(&HttpConfig { bind: "127.0.0.1:0".into(), ..HttpConfig::default() }, state.clone(), None).unwrap();
    let running = topology::start(cfg, g, vec![Box::new(state.event_sink())]).unwrap();
    *state.cameras.lock().unwrap() = running.cameras.clone();
    state.models_loaded.store(true, std::sync::atomic::Ordering::SeqCst);
    (running, server, state)
}

fn wait_finished(running: &Running, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !running.is_finished() {
        assert!(Instant::now() < deadline, "pipeline did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the configured pipeline (its own sinks only) until every camera has ended.
fn run_to_end(cfg: &Config) {
    let running = topology::start(cfg, gallery(cfg), Vec::new()).unwrap();
    wait_finished(&running, 120);
    running.join();
}


fn get(url: &str) -> Option<String> {
    ureq::get(url).call().ok()?.body_mut().read_to_string().ok()
}



#[test]
fn prometheus_scrapes_frames_processed_for_the_camera() {
    let cfg = config("", true, true);
    let (running, server, _state) = start_with_http(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let prom_port = free_port();
    let conf = dir.path().join("prometheus.yml");
    std::fs::write(
        &conf,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: facestream\n    static_configs:\n      - targets: ['{}']\n",
            server.addr
        ),
    )
    .unwrap();
    let _prom = Proc(
        Command::new(find_program("prometheus"))
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let query = format!("http://127.0.0.1:{prom_port}/api/v1/query?query=facestream_frames_processed_total%7Bcamera%3D%22clip%22%7D");
    let deadline = Instant::now() + Duration::from_secs(90);
    let value = loop {
        assert!(Instant::now() < deadline, "Prometheus never reported facestream_frames_processed_total for camera clip");
        if let Some(body) = get(&query) {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            if let Some(val) = v["data"]["result"][0]["value"][1].as_str() {
                let n: f64 = val.parse().unwrap();
                if n > 0.0 {
                    break n;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(value > 0.0);
    running.stop();
    running.join();
    server.shutdown();
}

#[test]
fn mosquitto_receives_the_identified_event_on_the_camera_topic() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")).unwrap();
    let _broker = Proc(
        Command::new(find_program("mosquitto")).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start mosquitto"),
    );
    // Subscriber: waits for the broker, then collects every message.
    let mut opts = rumqttc::MqttOptions::new("test-subscriber", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = rumqttc::Client::new(opts, 100);
    client.subscribe("facestream/#", rumqttc::QoS::AtLeastOnce).unwrap();
    let got: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let subscribed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (got, subscribed) = (got.clone(), subscribed.clone());
        std::thread::spawn(move || {
            for n in conn.iter() {
                match n {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => subscribed.store(true, std::sync::atomic::Ordering::SeqCst),
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        got.lock().unwrap().push((p.topic.clone(), String::from_utf8_lossy(&p.payload).into_owned()));
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !subscribed.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "could not subscribe to the broker");
        std::thread::sleep(Duration::from_millis(50));
    }
    let cfg = config(&format!("[events.mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"facestream-test\"\n"), false, false);
    run_to_end(&cfg);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let msgs = got.lock().unwrap().clone();
        let hit = msgs.iter().any(|(topic, payload)| {
            topic == "facestream/clip/events" && {
                let v: serde_json::Value = serde_json::from_str(payload).unwrap();
                v["event"] == "identified" && v["person"] == "MEDS_S029"
            }
        });
        if hit {
            assert!(msgs.iter().any(|(t, p)| t == "facestream/status" && p == "online"), "availability published: {msgs:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no identified MEDS_S029 on facestream/clip/events: {msgs:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A minimal HTTP receiver: records (signature header, body) of every POST and answers 200.
/// Requests the webhook receiver got: (signature header, body).
type Received = Arc<Mutex<Vec<(Option<String>, String)>>>;

fn webhook_receiver() -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Received = Arc::default();
    let g = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let g = g.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut sig = None;
                    let mut len = 0usize;
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        let lower = l.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        if lower.starts_with("x-facestream-signature:") {
                            sig = Some(l.split_once(':').unwrap().1.trim().to_string());
                        }
                    }
                    let mut body = vec![0u8; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    g.lock().unwrap().push((sig, String::from_utf8_lossy(&body).into_owned()));
                    let mut w = &stream;
                    if w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, got)
}

#[test]
fn webhook_receives_signed_events() {
    let (port, got) = webhook_receiver();
    let cfg = config(&format!("[events.webhook]\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret = \"s3cret\"\n"), false, false);
    run_to_end(&cfg);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let msgs = got.lock().unwrap().clone();
        if let Some((sig, body)) = msgs.iter().find(|(_, b)| b.contains("\"identified\"") && b.contains("MEDS_S029")) {
            assert_eq!(sig.as_deref(), Some(format!("sha256={}", signature("s3cret", body.as_bytes())).as_str()));
            break;
        }
        assert!(Instant::now() < deadline, "webhook never got identified MEDS_S029: {msgs:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_dead_webhook_never_stalls_the_pipeline_and_is_counted() {
    let port = free_port(); // nothing listens there
    let m = metrics();
    let failed_before: u64 = ["delivery_error", "queue_full", "retries_exhausted"]
        .iter()
        .map(|r| m.events_failed.with_label_values(&["webhook", r]).get())
        .sum();
    let cfg = config(&format!("[events.webhook]\nurl = \"http://127.0.0.1:{port}/hook\"\nqueue = 1\nretries = 5\n"), false, false);
    let g = gallery(&cfg);
    let running = topology::start(&cfg, g, Vec::new()).unwrap();
    wait_finished(&running, 120);
    let status = running.camera_statuses().remove(0);
    running.join();
    // Every frame of the clip was still taken in (files played as fast as possible lose nothing).
    assert_eq!(status.frames, 101, "{status:?}");
    let failed_after: u64 = ["delivery_error", "queue_full", "retries_exhausted"]
        .iter()
        .map(|r| m.events_failed.with_label_values(&["webhook", r]).get())
        .sum();
    assert!(failed_after > failed_before, "failures were counted ({failed_before} -> {failed_after})");
    assert!(m.events_failed.with_label_values(&["webhook", "queue_full"]).get() > 0, "a full queue drops and counts instead of blocking");
}

#[test]
fn sse_clients_see_events_live_and_the_dashboard_queries_existing_metrics() {
    let cfg = config("", true, false);
    let g = gallery(&cfg);
    let state = AppState::new(g.clone(), 256);
    let server = http::serve(&HttpConfig { bind: "127.0.0.1:0".into(), ..HttpConfig::default() }, state.clone(), None).unwrap();
    // Connect the event-stream client before the pipeline starts.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(stream, "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n").unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let lines = lines.clone();
        let reader = BufReader::new(stream.try_clone().unwrap());
        std::thread::spawn(move || {
            for line in reader.lines() {
                match line {
                    Ok(l) => lines.lock().unwrap().push(l),
                    Err(_) => return,
                }
            }
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    let running = topology::start(&cfg, g, vec![Box::new(state.event_sink())]).unwrap();
    *state.cameras.lock().unwrap() = running.cameras.clone();
    state.models_loaded.store(true, std::sync::atomic::Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = lines.lock().unwrap().iter().any(|l| l.starts_with("data:") && l.contains("\"identified\"") && l.contains("MEDS_S029"));
        if seen {
            break;
        }
        assert!(Instant::now() < deadline, "no identified event on the SSE stream: {:?}", lines.lock().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(lines.lock().unwrap().iter().any(|l| l.to_ascii_lowercase().starts_with("content-type: text/event-stream")));

    let base = format!("http://{}", server.addr);
    assert_eq!(get(&format!("{base}/healthz")).unwrap().trim(), "ok");
    let ready: serde_json::Value = serde_json::from_str(&get(&format!("{base}/readyz")).unwrap()).unwrap();
    assert_eq!(ready["ready"], true);
    let cams: serde_json::Value = serde_json::from_str(&get(&format!("{base}/api/cameras")).unwrap()).unwrap();
    assert_eq!(cams[0]["id"], "clip");

    // Every metric a dashboard panel queries exists in the live /metrics output.
    let exposition = get(&format!("{base}/metrics")).unwrap();
    let exposed: std::collections::HashSet<String> = exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root().join("config/grafana/facestream.json")).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    let mut checked = 0;
    for p in panels {
        // Rows hold no query; the gate, visitor and cluster panels' metrics exist once a gate,
        // the visitors or a cluster run (tests/gates.rs, tests/visitors.rs and tests/cluster.rs
        // check them).
        let title = p["title"].as_str().unwrap_or("");
        if p["type"] == "row" || title.starts_with("Gate") || title.starts_with("Visitor") || title.starts_with("Cluster") {
            continue;
        }
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let mut found_any = false;
            for (i, _) in expr.match_indices("facestream_") {
                let name: String = expr[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                assert!(exposed.contains(&name), "panel `{}` queries {name}, which /metrics does not expose", p["title"]);
                found_any = true;
                checked += 1;
            }
            assert!(found_any, "panel `{}` queries no facestream metric", p["title"]);
        }
    }
    assert!(checked >= 10);
    running.stop();
    running.join();
    server.shutdown();
}
