//! What a camera leaves out before the work, on the real GStreamer pipeline and the fixture clip
//! (`video_01.mp4`: 29.97 fps H.264, a keyframe every 30 frames, two unreferenced B-frames after
//! each reference frame):
//! - capped at 10 fps, the B-frames are left out before decoding and the cap still gets its 10
//!   frames/s from the reference frames; capped at 15, the references alone are too few and
//!   every frame is decoded;
//! - a looping file starts over inside one pipeline (one connect for many passes);
//! - a camera whose queue is always full sheds frames before conversion, one whose queue is
//!   always empty sheds none.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use facestream::ingest::{self, CameraConfig, CameraNotice, CameraState, CameraStatus, Frame, FrameSink, Skip};

#[derive(Default)]
struct Counting {
    frames: AtomicUsize,
    fps_cap: AtomicUsize,
    undecoded: AtomicUsize,
    shed: AtomicUsize,
    connects: AtomicUsize,
    loops: AtomicUsize,
    /// What `backlog` answers: (waiting, capacity).
    backlog: Option<(usize, usize)>,
    /// Stop the camera after this many frames.
    stop_after: Option<usize>,
    stop: Arc<AtomicBool>,
}

impl FrameSink for Counting {
    fn frame(&self, _frame: Frame, _keep_newest: bool) -> bool {
        let n = self.frames.fetch_add(1, Ordering::SeqCst) + 1;
        if self.stop_after.is_some_and(|max| n >= max) {
            self.stop.store(true, Ordering::SeqCst);
        }
        true
    }

    fn notice(&self, notice: CameraNotice) {
        let CameraNotice::State { state, .. } = notice;
        if state == CameraState::Connecting {
            self.connects.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn skipped(&self, _camera: &str, why: Skip) {
        match why {
            Skip::FpsCap => &self.fps_cap,
            Skip::FpsCapUndecoded => &self.undecoded,
            Skip::Shed => &self.shed,
        }
        .fetch_add(1, Ordering::SeqCst);
    }

    fn backlog(&self) -> Option<(usize, usize)> {
        self.backlog
    }

    fn discontinuity(&self) {
        self.loops.fetch_add(1, Ordering::SeqCst);
    }
}

fn camera(extra: &str) -> CameraConfig {
    let clip = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/video_01.mp4");
    toml::from_str(&format!("id = \"c\"\nurl = \"{}\"\n{extra}", clip.display())).expect("camera config")
}

fn play(cam: CameraConfig, sink: Counting) -> Arc<Counting> {
    ingest::init().expect("gstreamer");
    let sink = Arc::new(sink);
    let status = Arc::new(Mutex::new(CameraStatus { id: "c".into(), state: CameraState::Connecting, last_error: None, frames: 0, reconnects: 0, width: 0, height: 0 }));
    ingest::run_camera(cam, Path::new("."), sink.clone(), status, sink.stop.clone(), 1);
    sink
}

#[test]
fn unreferenced_frames_are_left_out_before_decoding_only_while_the_references_meet_the_cap() {
    // A frame left out by a pad probe used to make GStreamer unref a null pointer: a CRITICAL on
    // stderr for every one of them.
    gstreamer::init().unwrap();
    let criticals = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = criticals.clone();
    gstreamer::glib::log_set_handler(Some("GStreamer"), gstreamer::glib::LogLevels::LEVEL_CRITICAL, false, false, move |_, _, msg| {
        eprintln!("GStreamer-CRITICAL: {msg}");
        seen.fetch_add(1, Ordering::SeqCst);
    });
    // Played flat out (nothing dropped for being late): 90 frames, 3 s of stream time.
    let at10 = play(camera("max_fps = 10\nrealtime = false"), Counting::default());
    let (frames, undecoded) = (at10.frames.load(Ordering::SeqCst), at10.undecoded.load(Ordering::SeqCst));
    assert!((29..=31).contains(&frames), "the cap's 10 frames/s over 3 s, got {frames}");
    // The first second is decoded in full while the references' rate is measured; after it, the
    // two B-frames of every three frames are never decoded (40 of the last 60 frames).
    assert!((36..=44).contains(&undecoded), "B-frames left out before decoding: {undecoded}");

    let at15 = play(camera("max_fps = 15\nrealtime = false"), Counting::default());
    let (frames, undecoded) = (at15.frames.load(Ordering::SeqCst), at15.undecoded.load(Ordering::SeqCst));
    let decoded15 = frames + at15.fps_cap.load(Ordering::SeqCst);
    // Every frame the demuxer gives (89 of the clip's 90) is either delivered, dropped by the cap
    // after decoding or left out before it, the same count both ways.
    assert_eq!(at10.frames.load(Ordering::SeqCst) + at10.undecoded.load(Ordering::SeqCst) + at10.fps_cap.load(Ordering::SeqCst), decoded15);
    assert!((88..=90).contains(&decoded15), "{decoded15}");
    assert_eq!(undecoded, 0, "10 fps of references cannot feed a 15 fps cap: everything is decoded");
    assert!((43..=46).contains(&frames), "15 frames/s over 3 s, got {frames}");
    assert_eq!(criticals.load(Ordering::SeqCst), 0, "GStreamer reported critical errors");
}

#[test]
fn a_looping_file_starts_over_inside_one_pipeline() {
    let sink = Counting { stop_after: Some(200), ..Default::default() };
    let sink = play(camera("max_fps = 0\nrealtime = false\nloop = true"), sink);
    assert!(sink.frames.load(Ordering::SeqCst) >= 200);
    let loops = sink.loops.load(Ordering::SeqCst);
    assert!(loops >= 2, "200 frames of a 90-frame clip are at least two jumps back, got {loops}");
    assert_eq!(sink.connects.load(Ordering::SeqCst), 1, "one pipeline for every pass");
}

#[test]
fn a_camera_whose_queue_stays_full_sheds_before_conversion_and_one_that_is_served_does_not() {
    // In real time (a file standing in for a camera): 3 s at a 10 fps cap.
    // Always full: the interval widens by 10% a frame (100, 110, 121, ... ms), about 15 frames in
    // the clip's 3 s instead of 30.
    let behind = play(camera("max_fps = 10\nrealtime = true"), Counting { backlog: Some((2, 2)), ..Default::default() });
    let (slow, shed) = (behind.frames.load(Ordering::SeqCst), behind.shed.load(Ordering::SeqCst));

    let served = play(camera("max_fps = 10\nrealtime = true"), Counting { backlog: Some((0, 2)), ..Default::default() });
    let (frames, none) = (served.frames.load(Ordering::SeqCst), served.shed.load(Ordering::SeqCst));
    assert_eq!(none, 0, "nothing is shed while the queue is empty");
    assert!((28..=31).contains(&frames), "the cap's rate, got {frames}");
    assert!(shed >= 10 && slow * 3 < frames * 2, "a camera the detectors never catch up with paces itself down: {slow} frames ({shed} shed) against {frames}");
}
