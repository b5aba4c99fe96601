//! A camera's side of the pipeline: its frame queue (drop oldest for live sources and files in
//! real time, blocking for files played flat out; an end marker is never dropped), its state
//! metrics, and its notices to the identify stage.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cluster::CameraLease;
use crate::ingest::{CameraConfig, CameraStatus};

use crate::detect::worker::FrameMsg;
use crate::identify::stage::IdentifyMsg;
use crate::ingest::{CameraNotice, CameraState, Frame, FrameSink, Skip};
use crate::queue::{Tx, WhenFull};
use crate::telemetry::metrics;

pub struct CameraQueue {
    pub camera: Arc<str>,
    pub tx: Tx<FrameMsg>,
    pub stop: Arc<AtomicBool>,
    pub notices: Tx<IdentifyMsg>,
    pub last_state: Mutex<Option<CameraState>>,
}

impl CameraQueue {
    pub fn new(camera: Arc<str>, capacity: usize, stop: Arc<AtomicBool>, notices: Tx<IdentifyMsg>) -> (Self, crossbeam_channel::Receiver<FrameMsg>) {
        let dropped = metrics().frames_dropped.with_label_values(&[&camera, "queue_full"]);
        let (tx, rx) = crate::queue::bounded(capacity, WhenFull::DropOldest, dropped);
        let tx = tx.with_pinned(|m| matches!(m, FrameMsg::End { .. }));
        (Self { camera, tx, stop, notices, last_state: Mutex::new(None) }, rx)
    }

    /// The camera ended or broke off; blocking: the end marker must never be lost, and the
    /// detectors are draining.
    pub fn end(&self) {
        let _ = self.tx.push_as(FrameMsg::End { camera: self.camera.clone() }, WhenFull::Block, None);
    }
}

impl FrameSink for CameraQueue {
    fn frame(&self, frame: Frame, keep_newest: bool) -> bool {
        metrics().frames_received.with_label_values(&[&self.camera]).inc();
        let policy = if keep_newest { WhenFull::DropOldest } else { WhenFull::Block };
        match self.tx.push_as(FrameMsg::Frame(frame), policy, Some(&self.stop)) {
            Ok(()) => true,
            Err(crate::queue::PushError::Full) => true,
            Err(_) => false,
        }
    }

    fn notice(&self, notice: CameraNotice) {
        let CameraNotice::State { state, .. } = &notice;
        let m = metrics();
        m.camera_up.with_label_values(&[&self.camera]).set((*state == CameraState::Streaming) as i64);
        for s in [CameraState::Connecting, CameraState::Streaming, CameraState::Backoff, CameraState::Failed, CameraState::Ended, CameraState::Stopped, CameraState::Standby] {
            m.camera_state.with_label_values(&[&self.camera, s.as_str()]).set((s == *state) as i64);
        }
        if *state == CameraState::Backoff {
            m.camera_reconnects.with_label_values(&[&self.camera]).inc();
        }
        // Report changes only: "connecting" on every retry would flood the event stream.
        if let Ok(mut last) = self.last_state.lock() {
            if *last == Some(*state) {
                return;
            }
            *last = Some(*state);
        }
        let _ = self.notices.push_within(IdentifyMsg::Camera(notice), Duration::from_millis(100));
    }

    fn discontinuity(&self) {
        self.end();
    }

    fn skipped(&self, camera: &str, why: Skip) {
        metrics().frames_dropped.with_label_values(&[camera, why.as_str()]).inc();
    }

    fn backlog(&self) -> Option<(usize, usize)> {
        Some((self.tx.len(), self.tx.capacity()))
    }
}

fn standby(queue: &CameraQueue, status: &Mutex<CameraStatus>) {
    if let Ok(mut s) = status.lock() {
        s.state = CameraState::Standby;
    }
    queue.notice(CameraNotice::State { camera: queue.camera.clone(), state: CameraState::Standby, error: None });
}

fn wait_while(cond: impl Fn() -> bool, stop: &AtomicBool) {
    while cond() && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A camera in a cluster: standby until this node holds its lease, then the usual camera loop
/// until the lease goes (the pipeline stops, its tracks end) or everything stops.
pub fn run_leased(cam: CameraConfig, base: &Path, queue: &Arc<CameraQueue>, status: Arc<Mutex<CameraStatus>>, stop: &Arc<AtomicBool>, seed: u64, lease: Arc<CameraLease>) {
    standby(queue, &status);
    loop {
        wait_while(|| !lease.is_active(), stop);
        if stop.load(Ordering::SeqCst) {
            return;
        }
        lease.set_running(true);
        let run_stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (run_stop, done, stop, lease) = (run_stop.clone(), done.clone(), stop.clone(), lease.clone());
            std::thread::Builder::new().name(format!("lease-{}", cam.id)).spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    if stop.load(Ordering::SeqCst) || !lease.is_active() {
                        run_stop.store(true, Ordering::SeqCst);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        crate::ingest::run_camera(cam.clone(), base, queue.clone(), status.clone(), run_stop.clone(), seed);
        done.store(true, Ordering::SeqCst);
        if let Ok(w) = watcher {
            let _ = w.join();
        }
        lease.set_running(false);
        queue.discontinuity();
        if !run_stop.load(Ordering::SeqCst) {
            // Ended by itself (a file that ended, a camera that failed): down until the lease goes.
            wait_while(|| lease.is_active(), stop);
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
        standby(queue, &status);
    }
}
