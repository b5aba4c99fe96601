//! The streaming pipeline end to end with real GStreamer, real models and a real RTSP server on
//! 127.0.0.1: identity events from a clip, several codecs at once with a broken file among them,
//! and reconnection after the RTSP server goes away and comes back.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, bounded};
use facestream::config::Config;
use facestream::events::{Event, EventBody};
use facestream::gallery::Gallery;
use facestream::ingest::CameraState;
use facestream::photo::{Analyzer, enroll_photos};
use facestream::topology::{self, ChannelSink, Running};

fn config(toml_text: &str) -> Config {
    let mut cfg = Config::parse(toml_text, Path::new("test.toml")).unwrap();
    cfg.base_dir = Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
    cfg.events.stdout = false;
    cfg
}

const GALLERY: &str = r#"
[[gallery.people]]
name = "MEDS_S029"
images = ["tests/fixtures/meds-aa-S029-01.jpg"]
[[gallery.people]]
name = "MEDS_S001"
images = ["tests/fixtures/meds-aa-S001-01.jpg"]
[[gallery.people]]
name = "Paul_Rudd"
images = ["tests/fixtures/Paul.jpeg"]
[[gallery.people]]
name = "Chris_Pratt"
images = ["tests/fixtures/Chris.jpeg"]
"#;

fn start(cfg: &Config) -> (Running, Receiver<Event>) {
    let mut gallery = Gallery::new();
    let mut analyzer = Analyzer::new(cfg).expect("models (run `make setup`)");
    enroll_photos(&mut analyzer, &cfg.gallery.photos(&cfg.base_dir).unwrap(), &mut gallery).unwrap();
    let (tx, rx) = bounded(10_000);
    let running = topology::start(cfg, Arc::new(RwLock::new(gallery)), vec![Box::new(ChannelSink { name: "test", tx })]).unwrap();
    (running, rx)
}

/// Runs until every camera ended (files) and returns all events.
fn run_to_end(cfg: &Config) -> Vec<Event> {
    let (running, rx) = start(cfg);
    let deadline = Instant::now() + Duration::from_secs(240);
    while !running.is_finished() {
        assert!(Instant::now() < deadline, "pipeline did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    running.join();
    rx.try_iter().collect()
}

fn identified(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Identified { person, .. } => Some((e.camera.clone(), person.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn the_face_motion_clip_identifies_meds_s029_and_nobody_else() {
    let cfg = config(&format!(
        "{GALLERY}\n[[cameras]]\nid = \"clip\"\nurl = \"tests/fixtures/ff-region-face-motion.avi\"\nrealtime = false\nmax_fps = 0\n"
    ));
    let events = run_to_end(&cfg);
    let ids = identified(&events);
    assert!(ids.iter().any(|(_, p)| p == "MEDS_S029"), "no identified MEDS_S029 in {ids:?}");
    for (_, p) in &ids {
        assert!(p == "MEDS_S029" || p == "unknown", "wrong person named: {p}");
    }
    // Every started track ends, and the end names the same person.
    let started = events.iter().filter(|e| matches!(e.body, EventBody::TrackStarted { .. })).count();
    let ended: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::TrackEnded { person, frames, .. } => Some((person.clone(), *frames)),
            _ => None,
        })
        .collect();
    assert_eq!(started, ended.len(), "{events:#?}");
    assert!(ended.iter().any(|(p, frames)| p == "MEDS_S029" && *frames > 10), "{ended:?}");
    // Events are valid JSON lines with the schema version.
    for e in &events {
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["schema_version"], 1);
    }
}

#[test]
fn several_codecs_at_once_and_a_broken_file_fails_alone() {
    let mut text = GALLERY.to_string();
    for (id, file) in [
        ("h264", "h264_aac.mp4"),
        ("h265", "h265_aac.mp4"),
        ("mpeg4", "mp4v_aac.mp4"),
        ("vp8", "vp8_opus.webm"),
        ("theora", "theora_vorbis.ogg"),
        ("broken", "bad/scrambled.mp4"),
        ("notvideo", "bad/text-named.mp4"),
    ] {
        text.push_str(&format!("[[cameras]]\nid = \"{id}\"\nurl = \"tests/fixtures/{file}\"\nrealtime = false\nmax_fps = 0\n"));
    }
    let cfg = config(&text);
    let (running, rx) = start(&cfg);
    let deadline = Instant::now() + Duration::from_secs(240);
    while !running.is_finished() {
        assert!(Instant::now() < deadline, "pipeline did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let statuses = running.camera_statuses();
    running.join();
    let events: Vec<Event> = rx.try_iter().collect();
    for s in &statuses {
        match s.id.as_str() {
            "broken" | "notvideo" => {
                assert_eq!(s.state, CameraState::Failed, "{s:?}");
                assert!(s.last_error.is_some());
                assert_eq!(s.frames, 0);
            }
            _ => {
                assert_eq!(s.state, CameraState::Ended, "{s:?}");
                assert!(s.frames >= 29, "{s:?}");
                let tracks = events.iter().filter(|e| e.camera == s.id && matches!(e.body, EventBody::TrackStarted { .. })).count();
                assert!(tracks >= 1, "camera {} produced no track", s.id);
            }
        }
    }
    let failed_events = events
        .iter()
        .filter(|e| matches!(&e.body, EventBody::CameraState { state, error } if state == "failed" && error.is_some()))
        .count();
    assert_eq!(failed_events, 2, "each broken camera reports its error as an event");
}

mod rtsp {
    use gstreamer as gst;
    use gstreamer::glib;
    use gstreamer_rtsp_server::prelude::*;
    use gstreamer_rtsp_server::{RTSPMediaFactory, RTSPServer};

    /// A real RTSP server on 127.0.0.1 on its own main loop, serving a fixture clip as H.264.
    pub struct Server {
        main_loop: glib::MainLoop,
        thread: Option<std::thread::JoinHandle<()>>,
        pub port: u16,
    }

    impl Server {
        pub fn start(clip: &std::path::Path, port: u16) -> Server {
            gst::init().unwrap();
            let clip = clip.to_path_buf();
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let thread = std::thread::spawn(move || {
                let ctx = glib::MainContext::new();
                let main_loop = glib::MainLoop::new(Some(&ctx), false);
                ctx.with_thread_default(|| {
                    let server = RTSPServer::new();
                    server.set_address("127.0.0.1");
                    server.set_service(&port.to_string());
                    let factory = RTSPMediaFactory::new();
                    factory.set_launch(&format!(
                        "( filesrc location=\"{}\" ! decodebin ! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 ! rtph264pay name=pay0 pt=96 )",
                        clip.display()
                    ));
                    server.mount_points().unwrap().add_factory("/cam", factory);
                    let source = server.attach(Some(&ctx)).unwrap();
                    tx.send((main_loop.clone(), server.bound_port() as u16)).unwrap();
                    main_loop.run();
                    // Drop every client so the camera sees the server go away.
                    server.client_filter(Some(&mut |_, _| gstreamer_rtsp_server::RTSPFilterResult::Remove));
                    if let Some(s) = ctx.find_source_by_id(&source) {
                        s.destroy();
                    }
                })
                .unwrap();
            });
            let (main_loop, port) = rx.recv().unwrap();
            Server { main_loop, thread: Some(thread), port }
        }

        pub fn stop(mut self) {
            self.main_loop.quit();
            if let Some(t) = self.thread.take() {
                t.join().unwrap();
            }
        }
    }
}

#[test]
fn rtsp_camera_gives_events_and_resumes_after_the_server_restarts() {
    let clip = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ff-region-face-motion.avi");
    let server = rtsp::Server::start(&clip, 0);
    let port = server.port;
    let cfg = config(&format!(
        "{GALLERY}\n[[cameras]]\nid = \"door\"\nurl = \"rtsp://127.0.0.1:{port}/cam\"\nrtsp_transport = \"tcp\"\nlatency_ms = 0\nmax_fps = 10\n"
    ));
    let (running, rx) = start(&cfg);
    let wait_for = |what: &str, secs: u64, pred: &dyn Fn(&Event) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}");
            if let Ok(e) = rx.recv_timeout(left)
                && pred(&e) {
                    return e;
                }
        }
    };
    let is_s029 = |e: &Event| matches!(&e.body, EventBody::Identified { person, .. } if person == "MEDS_S029");
    wait_for("MEDS_S029 over RTSP", 60, &is_s029);
    server.stop();
    wait_for("the camera noticing the server is gone", 30, &|e| {
        matches!(&e.body, EventBody::CameraState { state, .. } if state == "backoff")
    });
    let server = rtsp::Server::start(&clip, port);
    wait_for("streaming again after the restart", 90, &|e| {
        matches!(&e.body, EventBody::CameraState { state, .. } if state == "streaming")
    });
    wait_for("MEDS_S029 again after the reconnect", 60, &is_s029);
    let status = running.camera_statuses().remove(0);
    assert!(status.reconnects >= 1, "{status:?}");
    running.stop();
    running.join();
    server.stop();
}
