//! The live view's tap on the pipeline: while somebody watches (the web UI's stream is open or a
//! frame was asked for in the last few seconds), the track stage leaves here each camera's newest
//! frame (shared, not copied) and its tracks' boxes, at most `fps` times a second; the HTTP side
//! encodes a small JPEG of it on request (once per frame, whoever asks) and streams the boxes.
//! Nobody watching costs one atomic load per frame.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::image::RgbImage;

/// How long after the last frame request (or the last stream client) the tap stays open.
const WATCH_GRACE: Duration = Duration::from_secs(5);

/// One track's box in a live frame.
#[derive(Clone, Debug, Serialize)]
pub struct LiveTrack {
    /// The same id as in the events (`<camera>-<n>`), so names come from `identified` events.
    pub track_id: String,
    pub bbox: [f32; 4],
    /// Confirmed tracks only get events; tentative ones are drawn dashed.
    pub confirmed: bool,
}

/// The boxes of one camera's frame, as streamed to the UI.
#[derive(Clone, Debug, Serialize)]
pub struct LiveBoxes {
    pub camera: String,
    pub seq: u64,
    pub width: u32,
    pub height: u32,
    /// Milliseconds since the Unix epoch of the frame's capture.
    pub at_ms: u64,
    pub tracks: Vec<LiveTrack>,
}

struct CameraFrame {
    frame: Arc<RgbImage>,
    seq: u64,
    taken: Instant,
    /// The JPEG of `seq`, once somebody asked.
    jpeg: Option<(u64, Arc<[u8]>)>,
}

/// Shared by the track stage (writer) and the HTTP side (readers).
pub struct LiveHub {
    /// Milliseconds since `epoch` until which the tap is open.
    open_until_ms: AtomicU64,
    epoch: Instant,
    interval: Duration,
    width: u32,
    cams: Mutex<HashMap<Arc<str>, CameraFrame>>,
    boxes: broadcast::Sender<Arc<str>>,
}

impl LiveHub {
    /// At most `fps` frames a second per camera, JPEGs at most `width` pixels wide.
    pub fn new(fps: f64, width: u32) -> Arc<Self> {
        let (boxes, _) = broadcast::channel(64);
        Arc::new(Self {
            open_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            interval: Duration::from_secs_f64(1.0 / fps.max(0.01)),
            width: width.max(16),
            cams: Mutex::new(HashMap::new()),
            boxes,
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Keeps the tap open for a few more seconds (a frame request, a stream client's tick).
    pub fn touch(&self) {
        self.open_until_ms.fetch_max(self.now_ms() + WATCH_GRACE.as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether anybody watches (the track stage's cheap check per frame).
    pub fn watched(&self) -> bool {
        self.open_until_ms.load(Ordering::Relaxed) > self.now_ms() || self.boxes.receiver_count() > 0
    }

    /// The track stage's call for every frame of `camera`: keeps the frame and streams the boxes
    /// when watched and the camera's interval has passed. `tracks` is called only then.
    pub fn offer(&self, camera: &Arc<str>, seq: u64, frame: &Arc<RgbImage>, at: SystemTime, tracks: impl FnOnce() -> Vec<LiveTrack>) {
        if !self.watched() {
            return;
        }
        {
            let Ok(mut cams) = self.cams.lock() else { return };
            if let Some(c) = cams.get(camera)
                && c.taken.elapsed() < self.interval
            {
                return;
            }
            cams.insert(camera.clone(), CameraFrame { frame: frame.clone(), seq, taken: Instant::now(), jpeg: None });
        }
        crate::telemetry::metrics().live_frames.with_label_values(&[camera]).inc();
        let at_ms = at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let boxes = LiveBoxes { camera: camera.to_string(), seq, width: frame.width, height: frame.height, at_ms, tracks: tracks() };
        if let Ok(json) = serde_json::to_string(&boxes) {
            let _ = self.boxes.send(Arc::from(json));
        }
    }

    /// The newest frame of `camera` as a JPEG at most `width` wide (encoded once per frame),
    /// with its sequence number; None when no frame was kept (nobody watched yet, or no camera).
    pub fn jpeg(&self, camera: &str) -> Option<(u64, Arc<[u8]>)> {
        self.touch();
        let (frame, seq) = {
            let cams = self.cams.lock().ok()?;
            let c = cams.get(camera)?;
            if let Some((s, j)) = &c.jpeg
                && *s == c.seq
            {
                return Some((*s, j.clone()));
            }
            (c.frame.clone(), c.seq)
        };
        // Encoded outside the lock: the track stage never waits for a JPEG.
        let started = Instant::now();
        let bytes: Arc<[u8]> = Arc::from(crate::image::jpeg_scaled(&frame, self.width, 75)?);
        crate::telemetry::metrics().stage_seconds.with_label_values(&["live_jpeg"]).observe(started.elapsed().as_secs_f64());
        crate::telemetry::metrics().live_jpegs.inc();
        if let Ok(mut cams) = self.cams.lock()
            && let Some(c) = cams.get_mut(camera)
            && c.seq == seq
        {
            c.jpeg = Some((seq, bytes.clone()));
        }
        Some((seq, bytes))
    }

    /// The boxes stream (JSON of [`LiveBoxes`]); while subscribed the tap stays open.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.touch();
        self.boxes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(w: u32, h: u32) -> Arc<RgbImage> {
        Arc::new(RgbImage { width: w, height: h, data: vec![128; (w * h * 3) as usize] })
    }

    #[test]
    fn nothing_is_kept_while_nobody_watches() {
        let hub = LiveHub::new(5.0, 320);
        let cam: Arc<str> = Arc::from("a");
        let mut asked = false;
        hub.offer(&cam, 1, &frame(64, 48), SystemTime::now(), || {
            asked = true;
            Vec::new()
        });
        assert!(!asked, "the tracks are not even listed while nobody watches");
        // A frame request opens the tap; the first offer after it is kept.
        assert!(hub.jpeg("a").is_none());
        hub.offer(&cam, 2, &frame(64, 48), SystemTime::now(), Vec::new);
        let (seq, jpeg) = hub.jpeg("a").expect("a frame once watched");
        assert_eq!(seq, 2);
        assert_eq!(&jpeg[..2], &[0xff, 0xd8], "a JPEG");
    }

    #[test]
    fn frames_are_capped_and_shrunk_and_boxes_streamed() {
        let hub = LiveHub::new(2.0, 320);
        let cam: Arc<str> = Arc::from("a");
        let mut rx = hub.subscribe();
        let t = || vec![LiveTrack { track_id: "a-1".into(), bbox: [1.0, 2.0, 30.0, 40.0], confirmed: true }];
        hub.offer(&cam, 1, &frame(1280, 720), SystemTime::now(), t);
        hub.offer(&cam, 2, &frame(1280, 720), SystemTime::now(), t);
        let (seq, jpeg) = hub.jpeg("a").unwrap();
        assert_eq!(seq, 1, "the second frame came within the interval (2 fps) and was not kept");
        let img = image::load_from_memory(&jpeg).unwrap();
        assert_eq!((img.width(), img.height()), (320, 180));
        let (_, again) = hub.jpeg("a").unwrap();
        assert!(Arc::ptr_eq(&jpeg, &again), "one encoding per frame");
        let msg = rx.try_recv().unwrap();
        let v: serde_json::Value = serde_json::from_str(&msg).unwrap();
        assert_eq!(v["tracks"][0]["track_id"], "a-1");
        assert_eq!(v["width"], 1280);
        assert!(rx.try_recv().is_err(), "the capped frame's boxes were not sent either");
    }
}
