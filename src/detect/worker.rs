//! The detection stage: its input (each camera's frame queue, with the newest result of that
//! camera for the refine-only frames) and the worker loop. Workers run the full MTCNN cascade on
//! every `full_every`-th frame of a camera and only refine the known faces between.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select};

use super::{BBox, Face, Mtcnn};
use crate::ingest::Frame;
use crate::queue::Outlet;
use crate::telemetry::metrics;

pub enum FrameMsg {
    Frame(Frame),
    /// The camera broke off or ended: its tracks end once the frames before this are tracked.
    End { camera: Arc<str> },
}

/// `ticket` numbers a camera's messages in the order they left its queue, so the tracker can
/// restore that order after several detection workers finished them out of order.
pub enum Detection {
    Detected { frame: Frame, faces: Vec<Face>, ticket: u64 },
    End { camera: Arc<str>, ticket: u64 },
}

/// One camera's queue as the detection workers see it: the lock makes "take a message and number
/// it" one step, so tickets follow queue order exactly.
pub struct CameraInput {
    pub camera: Arc<str>,
    pub rx: Receiver<FrameMsg>,
    next_ticket: Mutex<u64>,
    /// The newest detection result of this camera, for the refine-only frames.
    recent: Mutex<Recent>,
    /// Signalled when `recent` changes (a refine frame waits for its predecessor's result).
    recent_changed: Condvar,
    /// Offset of this camera's full detections in the `full_every` cycle, so that the cameras'
    /// expensive frames do not all fall on the same moment.
    phase: u64,
    /// Served before the other cameras when several have frames waiting (a gate's camera).
    priority: bool,
    /// Workers detecting one of this camera's frames now. A second worker taking the camera's
    /// next frame would mostly wait for the first one's result (`known_since`) with its core idle.
    busy: AtomicUsize,
    /// When a worker last took a frame of this camera, as a number from `SERVICE` (0: never).
    served: AtomicU64,
}

/// Numbers the takes of every camera's frames in order: the camera served longest ago has the
/// smallest number.
static SERVICE: AtomicU64 = AtomicU64::new(1);

impl CameraInput {
    /// The input of one camera; `phase` staggers the cameras' full detections.
    pub fn new(camera: Arc<str>, rx: Receiver<FrameMsg>, phase: u64) -> Self {
        Self { camera, rx, next_ticket: Mutex::new(0), recent: Mutex::new(Recent::default()), recent_changed: Condvar::new(), phase, priority: false, busy: AtomicUsize::new(0), served: AtomicU64::new(0) }
    }

    /// Marks the camera as served first (gates: a crowded monitoring setup never delays the door).
    pub fn with_priority(mut self, priority: bool) -> Self {
        self.priority = priority;
        self
    }

    /// Takes the next message and numbers it; `Err` when the camera is gone and drained.
    fn take(&self) -> Result<Option<(FrameMsg, u64)>, ()> {
        let mut next = self.next_ticket.lock().unwrap_or_else(|p| p.into_inner());
        match self.rx.try_recv() {
            Ok(msg) => {
                self.served.store(SERVICE.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
                let t = *next;
                *next += 1;
                Ok(Some((msg, t)))
            }
            Err(crossbeam_channel::TryRecvError::Empty) => Ok(None),
            Err(crossbeam_channel::TryRecvError::Disconnected) => Err(()),
        }
    }
}

/// Longest a refine frame waits for the result of the frame before it.
const REFINE_WAIT: Duration = Duration::from_millis(250);

impl CameraInput {
    /// Records the faces found on frame `ticket` (when it is the newest) and wakes waiters.
    fn publish(&self, ticket: u64, boxes: Vec<BBox>) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.ticket.is_none_or(|t| t < ticket) {
            *recent = Recent { ticket: Some(ticket), boxes };
        }
        self.recent_changed.notify_all();
    }

    /// The faces of the newest result from frame `from` on, waiting up to `wait` for a worker
    /// that still detects frame `from`; `None` when it does not come in time.
    fn known_since(&self, from: u64, wait: Duration) -> Option<Vec<BBox>> {
        let deadline = Instant::now() + wait;
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if recent.ticket.is_some_and(|t| t >= from) {
                return Some(recent.boxes.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            recent = self.recent_changed.wait_timeout(recent, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// Faces of the newest detected frame of a camera (by ticket).
#[derive(Default)]
struct Recent {
    ticket: Option<u64>,
    boxes: Vec<BBox>,
}

/// Among the live cameras with a frame waiting and no worker on it, the one served longest ago
/// (the cameras take turns: past capacity each gets the same share of the detectors); None when
/// there is none (then the worker waits for any camera's frame). Its position in `alive`.
fn pick_free(inputs: &[CameraInput], alive: &[usize]) -> Option<usize> {
    (0..alive.len())
        .filter(|&k| inputs[alive[k]].busy.load(Ordering::Relaxed) == 0 && !inputs[alive[k]].rx.is_empty())
        .min_by_key(|&k| inputs[alive[k]].served.load(Ordering::Relaxed))
}

/// One detection worker: takes frames from every camera's queue (the camera served longest ago
/// among those with a frame waiting and no other worker on them, so no camera starves the
/// others), runs the full cascade or refines known faces, and hands each result on, numbered by
/// its place in its camera's queue.
pub fn detect_worker(det: &mut Mtcnn, inputs: &[CameraInput], mut out: impl Outlet<Detection>, min_faces: &HashMap<Arc<str>, f32>) {
    let m = metrics();
    let default_min = det.config().min_face;
    let every = u64::from(det.config().full_every.max(1));
    let mut alive: Vec<usize> = (0..inputs.len()).collect();
    while !alive.is_empty() {
        // Priority cameras (gates) with a frame waiting go first.
        let urgent = alive.iter().position(|&i| inputs[i].priority && !inputs[i].rx.is_empty());
        let k = match urgent {
            Some(k) => k,
            // The camera served longest ago among those with a frame waiting and no worker on it.
            None if let Some(k) = pick_free(inputs, &alive) => k,
            None => {
                let mut sel = Select::new();
                for &i in &alive {
                    sel.recv(&inputs[i].rx);
                }
                // Nothing waiting: the first camera whose frame arrives (ties at random).
                sel.ready()
            }
        };
        let input = &inputs[alive[k]];
        let (msg, ticket) = match input.take() {
            Ok(Some(m)) => m,
            // Another worker took it first.
            Ok(None) => continue,
            // The camera thread is gone and its queue is drained.
            Err(()) => {
                alive.swap_remove(k);
                continue;
            }
        };
        let result = match msg {
            FrameMsg::End { camera } => {
                // The camera broke off: nothing known carries over to its next frames.
                input.publish(ticket, Vec::new());
                Detection::End { camera, ticket }
            }
            FrameMsg::Frame(frame) => {
                input.busy.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let cpu = crate::telemetry::thread_cpu_seconds();
                let min_face = min_faces.get(&frame.camera).copied().unwrap_or(default_min);
                // Full cascade every `full_every` frames; between, refine the faces of the newest
                // result that includes the last full frame (waiting for it when another worker
                // still has it), or run the full cascade when that does not come in time.
                let since_full = (ticket + input.phase) % every;
                let priors = if since_full != 0 && ticket >= since_full { input.known_since(ticket - since_full, REFINE_WAIT) } else { None };
                let mode = if priors.is_some() { "refine" } else { "full" };
                let result = match &priors {
                    Some(boxes) => det.refine(&frame.image, boxes),
                    None => det.detect_with_min_face(&frame.image, min_face),
                };
                let faces = match result {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!(camera = %input.camera, seq = frame.seq, error = %e, "detection failed on a frame");
                        Vec::new()
                    }
                };
                m.stage_seconds.with_label_values(&["detect"]).observe(started.elapsed().as_secs_f64());
                m.stage_cpu_seconds.with_label_values(&["detect"]).inc_by((crate::telemetry::thread_cpu_seconds() - cpu).max(0.0));
                m.detect_frames.with_label_values(&[&frame.camera, mode]).inc();
                input.publish(ticket, faces.iter().map(|f| f.bbox).collect());
                input.busy.fetch_sub(1, Ordering::Relaxed);
                m.capture_to_detect.observe(frame.captured_instant.elapsed().as_secs_f64());
                m.faces_detected.with_label_values(&[&frame.camera]).inc_by(faces.len() as u64);
                Detection::Detected { frame, faces, ticket }
            }
        };
        if !out.put(result) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_worker_takes_the_waiting_camera_served_longest_ago_that_no_other_worker_is_on() {
        let (txs, inputs): (Vec<_>, Vec<_>) = (0..3)
            .map(|i| {
                let (tx, rx) = crossbeam_channel::bounded(2);
                (tx, CameraInput::new(format!("cam{i}").into(), rx, 0))
            })
            .unzip();
        let alive = vec![0, 1, 2];
        assert_eq!(pick_free(&inputs, &alive), None, "no frame waiting anywhere");
        let fill = |k: usize| {
            while txs[k].try_send(FrameMsg::End { camera: "x".into() }).is_ok() {}
        };
        (0..3).for_each(fill);
        // Cameras 0 and 2 have workers on them: only camera 1 may be picked.
        inputs[0].busy.fetch_add(1, Ordering::Relaxed);
        inputs[2].busy.fetch_add(1, Ordering::Relaxed);
        for _ in 0..5 {
            assert_eq!(pick_free(&inputs, &alive), Some(1));
        }
        inputs[0].busy.fetch_sub(1, Ordering::Relaxed);
        inputs[2].busy.fetch_sub(1, Ordering::Relaxed);
        // Every camera free and always with a frame waiting: they take turns, each served once
        // before any is served again.
        let mut order = Vec::new();
        for _ in 0..30 {
            let k = pick_free(&inputs, &alive).unwrap();
            assert!(matches!(inputs[alive[k]].take(), Ok(Some(_))));
            fill(alive[k]);
            order.push(alive[k]);
        }
        for turn in order.chunks(3) {
            let mut t = turn.to_vec();
            t.sort();
            assert_eq!(t, [0, 1, 2], "{order:?}");
        }
        // A camera with nothing waiting is skipped, whatever its turn.
        while inputs[order[30 - 3]].take().is_ok_and(|m| m.is_some()) {}
        assert_ne!(pick_free(&inputs, &alive).map(|k| alive[k]), Some(order[30 - 3]));
        // The index returned is into `alive`, not into `inputs`.
        (0..3).for_each(fill);
        assert_eq!(pick_free(&inputs, &[2]), Some(0));
    }
}
