//! Every metric of the process, named in one place: `facestream_<what>_<unit>`, `_total` for
//! counters, `_seconds` for histograms. Labels stay low-cardinality (camera, stage, reason,
//! outcome, sink): never a track or person id.

use std::sync::OnceLock;

use prometheus::{CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

pub const FRAMES_RECEIVED: &str = "facestream_frames_received_total";
pub const FRAMES_PROCESSED: &str = "facestream_frames_processed_total";
pub const FRAMES_DROPPED: &str = "facestream_frames_dropped_total";
pub const FACES_DETECTED: &str = "facestream_faces_detected_total";
pub const DETECT_FRAMES: &str = "facestream_detect_frames_total";
pub const TRACKS_STARTED: &str = "facestream_tracks_started_total";
pub const EMBEDDINGS: &str = "facestream_embeddings_total";
pub const EMBED_REQUESTS_DROPPED: &str = "facestream_embed_requests_dropped_total";
pub const IDENTIFICATIONS: &str = "facestream_identifications_total";
pub const EVENTS_SENT: &str = "facestream_events_sent_total";
pub const EVENTS_FAILED: &str = "facestream_events_failed_total";
pub const CAMERA_UP: &str = "facestream_camera_up";
pub const CAMERA_STATE: &str = "facestream_camera_state";
pub const CAMERA_RECONNECTS: &str = "facestream_camera_reconnects_total";
pub const QUEUE_DEPTH: &str = "facestream_queue_depth";
pub const GALLERY_SIZE: &str = "facestream_gallery_persons";
pub const STAGE_CPU_SECONDS: &str = "facestream_stage_cpu_seconds_total";
pub const STAGE_SECONDS: &str = "facestream_stage_duration_seconds";
pub const CAPTURE_TO_EVENT_SECONDS: &str = "facestream_capture_to_event_seconds";
pub const CAPTURE_TO_DETECT_SECONDS: &str = "facestream_capture_to_detect_seconds";
pub const CAPTURE_TO_EMBED_SECONDS: &str = "facestream_capture_to_embed_seconds";
pub const BATCH_SIZE: &str = "facestream_embed_batch_size";
pub const BUILD_INFO: &str = "facestream_build_info";
pub const QUEUE_DROPPED: &str = "facestream_queue_dropped_total";
pub const BUS_DROPPED: &str = "facestream_bus_dropped_total";
pub const DECIDED_FEEDBACK_DROPPED: &str = "facestream_decided_feedback_dropped_total";
pub const CAMERA_STALLS: &str = "facestream_camera_stalls_total";
pub const CAMERA_TEARDOWN_STUCK: &str = "facestream_camera_teardown_stuck_total";
pub const HTTP_CONNECTIONS: &str = "facestream_http_connections_total";
pub const HTTP_REJECTED: &str = "facestream_http_rejected_total";
pub const GATE_DECISIONS: &str = "facestream_gate_decisions_total";
pub const GATE_DECISION_SECONDS: &str = "facestream_gate_decision_seconds";
pub const GATE_COMMANDS: &str = "facestream_gate_commands_total";
pub const VISITOR_TRACKS: &str = "facestream_visitor_tracks_total";
pub const VISITORS_NEW: &str = "facestream_visitors_new_total";
pub const VISITS_STARTED: &str = "facestream_visits_started_total";
pub const SNAPSHOTS: &str = "facestream_snapshots_total";
pub const VISITORS_ACTIVE: &str = "facestream_visitors_active";
pub const LIVE_FRAMES: &str = "facestream_live_frames_total";
pub const LIVE_JPEGS: &str = "facestream_live_jpegs_total";
pub const UI_LOGINS: &str = "facestream_ui_logins_total";
pub const GATE_LOG_PENDING: &str = "facestream_gate_log_pending";
pub const GATE_LOG_DROPPED: &str = "facestream_gate_log_dropped_total";
pub const CLUSTER_NODES: &str = "facestream_cluster_nodes";
pub const CLUSTER_LEASES: &str = "facestream_cluster_leases";
pub const CLUSTER_DATABASE_UP: &str = "facestream_cluster_database_up";
pub const CLUSTER_LEASE_CHANGES: &str = "facestream_cluster_lease_changes_total";
pub const GALLERY_SYNC_CHANGES: &str = "facestream_gallery_sync_changes_total";
pub const GALLERY_SYNC_SECONDS: &str = "facestream_gallery_sync_seconds";

pub struct Metrics {
    pub registry: Registry,
    pub frames_received: IntCounterVec,
    pub frames_processed: IntCounterVec,
    pub frames_dropped: IntCounterVec,
    pub faces_detected: IntCounterVec,
    pub detect_frames: IntCounterVec,
    pub tracks_started: IntCounterVec,
    pub embeddings: IntCounterVec,
    pub embed_requests_dropped: IntCounterVec,
    pub identifications: IntCounterVec,
    pub events_sent: IntCounterVec,
    pub events_failed: IntCounterVec,
    pub camera_up: IntGaugeVec,
    pub camera_state: IntGaugeVec,
    pub camera_reconnects: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub gallery_size: IntGauge,
    pub stage_seconds: HistogramVec,
    pub stage_cpu_seconds: CounterVec,
    pub capture_to_event: HistogramVec,
    pub capture_to_detect: Histogram,
    pub capture_to_embed: Histogram,
    pub batch_size: Histogram,
    pub build_info: IntGaugeVec,
    pub queue_dropped: IntCounterVec,
    pub bus_dropped: IntCounterVec,
    pub http_connections: IntCounterVec,
    pub http_rejected: IntCounterVec,
    pub camera_stalls: IntCounterVec,
    pub camera_teardown_stuck: IntCounterVec,
    pub gate_decisions: IntCounterVec,
    pub gate_latency: HistogramVec,
    pub gate_commands: IntCounterVec,
    pub visitor_tracks: IntCounterVec,
    pub visitors_new: IntCounterVec,
    pub visits_started: IntCounterVec,
    pub snapshots: IntCounterVec,
    pub visitors_active: IntGauge,
    pub live_frames: IntCounterVec,
    pub live_jpegs: prometheus::IntCounter,
    pub ui_logins: IntCounterVec,
    pub gate_log_pending: IntGauge,
    pub gate_log_dropped: prometheus::IntCounter,
    pub cluster_nodes: IntGauge,
    pub cluster_leases: IntGauge,
    pub cluster_database_up: IntGauge,
    pub cluster_lease_changes: IntCounterVec,
    pub gallery_sync_changes: IntCounterVec,
    pub gallery_sync_seconds: Histogram,
}

fn int_counter(r: &Registry, name: &str, help: &str) -> prometheus::IntCounter {
    let c = prometheus::IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

fn int_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0,
];

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new(STAGE_SECONDS, "Time spent per item in a stage (decode, detect, embed, identify)").buckets(LATENCY_BUCKETS.to_vec()),
            &["stage"],
        )
        .expect("valid metric");
        r.register(Box::new(stage_seconds.clone())).expect("unique metric");
        let capture_to_event = HistogramVec::new(
            HistogramOpts::new(CAPTURE_TO_EVENT_SECONDS, "From frame capture to the identity event it produced").buckets(LATENCY_BUCKETS.to_vec()),
            &["camera"],
        )
        .expect("valid metric");
        r.register(Box::new(capture_to_event.clone())).expect("unique metric");
        let batch_size = Histogram::with_opts(
            HistogramOpts::new(BATCH_SIZE, "Faces per embedding batch").buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
        )
        .expect("valid metric");
        r.register(Box::new(batch_size.clone())).expect("unique metric");
        let hist = |name: &str, help: &str| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec())).expect("valid metric");
            r.register(Box::new(h.clone())).expect("unique metric");
            h
        };
        let capture_to_detect = hist(CAPTURE_TO_DETECT_SECONDS, "From frame capture to the end of its detection (queueing included)");
        let capture_to_embed = hist(CAPTURE_TO_EMBED_SECONDS, "From frame capture to the embedding of a face from it (batching included)");
        let stage_cpu_seconds = CounterVec::new(Opts::new(STAGE_CPU_SECONDS, "CPU time of the thread doing a stage's work (detect, embed): its cost apart from waiting for a core"), &["stage"]).expect("valid metric");
        r.register(Box::new(stage_cpu_seconds.clone())).expect("unique metric");
        let gate_latency = HistogramVec::new(
            HistogramOpts::new(GATE_DECISION_SECONDS, "From the first frame in which a face counted at the gate to the gate's decision").buckets(LATENCY_BUCKETS.to_vec()),
            &["gate"],
        )
        .expect("valid metric");
        r.register(Box::new(gate_latency.clone())).expect("unique metric");
        let gallery_size = IntGauge::new(GALLERY_SIZE, "Persons in the gallery").expect("valid metric");
        r.register(Box::new(gallery_size.clone())).expect("unique metric");
        Self {
            frames_received: counter(&r, FRAMES_RECEIVED, "Frames delivered by the camera's pipeline (after the fps cap)", &["camera"]),
            frames_processed: counter(&r, FRAMES_PROCESSED, "Frames that went through detection and tracking", &["camera"]),
            frames_dropped: counter(&r, FRAMES_DROPPED, "Frames not processed, by reason (queue_full: the pipeline was behind; fps_cap: skipped by max_fps after decoding; fps_cap_undecoded: skipped by max_fps before decoding, an unreferenced H.264 frame; shed: skipped before conversion while the detectors were behind on this camera)", &["camera", "reason"]),
            faces_detected: counter(&r, FACES_DETECTED, "Faces found by the detector", &["camera"]),
            detect_frames: counter(&r, DETECT_FRAMES, "Frames detected, by mode (full: the whole cascade; refine: known faces only)", &["camera", "mode"]),
            tracks_started: counter(&r, TRACKS_STARTED, "Confirmed face tracks", &["camera"]),
            embeddings: counter(&r, EMBEDDINGS, "Faces embedded", &["camera"]),
            embed_requests_dropped: counter(&r, EMBED_REQUESTS_DROPPED, "Embedding requests dropped because the batcher queue was full", &["camera"]),
            identifications: counter(&r, IDENTIFICATIONS, "Identity decisions by outcome (known, unknown)", &["camera", "outcome"]),
            events_sent: counter(&r, EVENTS_SENT, "Events written per sink", &["sink"]),
            events_failed: counter(&r, EVENTS_FAILED, "Events a sink failed to deliver or dropped", &["sink", "reason"]),
            camera_up: gauge(&r, CAMERA_UP, "1 while the camera streams", &["camera"]),
            camera_state: gauge(&r, CAMERA_STATE, "1 for the camera's current state", &["camera", "state"]),
            camera_reconnects: counter(&r, CAMERA_RECONNECTS, "Reconnect attempts", &["camera"]),
            queue_depth: gauge(&r, QUEUE_DEPTH, "Items waiting in a stage's input queue", &["queue"]),
            gallery_size,
            stage_seconds,
            stage_cpu_seconds,
            capture_to_event,
            capture_to_detect,
            capture_to_embed,
            batch_size,
            build_info: gauge(&r, BUILD_INFO, "Build and runtime facts", &["version", "detector", "embedder", "provider", "threshold", "threshold_source", "node"]),
            queue_dropped: counter(&r, QUEUE_DROPPED, "Items a stage queue dropped by its when-full policy (track, batch, identify, decided feedback)", &["queue"]),
            camera_teardown_stuck: counter(&r, CAMERA_TEARDOWN_STUCK, "Camera pipelines abandoned because their change to NULL did not finish within 5 s", &["camera"]),
            camera_stalls: counter(&r, CAMERA_STALLS, "Live sources reconnected because no frame came for camera.stall_timeout_s", &["camera"]),
            http_connections: counter(&r, HTTP_CONNECTIONS, "HTTP connections by outcome (accepted; over_limit: served with a 1 s header timeout; accept_error)", &["outcome"]),
            http_rejected: counter(&r, HTTP_REJECTED, "API requests refused by a limit (busy: 503; too_large: image over the pixel budget)", &["reason"]),
            bus_dropped: counter(&r, BUS_DROPPED, "Track updates a decisions-bus subscriber lost because its queue was full", &["subscriber"]),
            gate_decisions: counter(&r, GATE_DECISIONS, "Gate decisions by outcome (granted, denied, suppressed) and reason (unknown, not_allowed, schedule, liveness, tailgating, cooldown; none for granted)", &["gate", "outcome", "reason"]),
            gate_latency,
            gate_commands: counter(&r, GATE_COMMANDS, "Signed gate commands by channel (webhook, mqtt) and result (sent, failed, dropped)", &["gate", "channel", "result"]),
            visitor_tracks: counter(&r, VISITOR_TRACKS, "Ended tracks by what the visitors application made of them (known: a person; visitor: grouped into a visitor; ignored: an ignored visitor's face; skipped: too few or too poor faces to group; failed: the store refused the write, e.g. its database was unreachable)", &["camera", "kind"]),
            visitors_new: counter(&r, VISITORS_NEW, "New visitors (unknown faces not seen before), by the camera that first saw them", &["camera"]),
            visits_started: counter(&r, VISITS_STARTED, "Visits started (a person or visitor arriving at a site after a gap longer than visits.gap_s), by camera", &["camera"]),
            snapshots: counter(&r, SNAPSHOTS, "Best shots written (result: written, failed)", &["camera", "result"]),
            visitors_active: int_gauge(&r, VISITORS_ACTIVE, "Visitor clusters with faces (active and ignored)"),
            live_frames: counter(&r, LIVE_FRAMES, "Frames kept for the web UI's live view (only while somebody watches; at most http.live_fps per camera)", &["camera"]),
            live_jpegs: int_counter(&r, LIVE_JPEGS, "Live-view JPEGs encoded (once per kept frame that somebody asked for)"),
            ui_logins: counter(&r, UI_LOGINS, "Web UI logins by result (ok, refused)", &["result"]),
            gate_log_pending: int_gauge(&r, GATE_LOG_PENDING, "Gate decisions kept in memory because the shared database was unreachable (written when it is back)"),
            gate_log_dropped: int_counter(&r, GATE_LOG_DROPPED, "Gate decisions lost because more than 10000 waited for the shared database"),
            cluster_nodes: int_gauge(&r, CLUSTER_NODES, "Live nodes of the cluster as this node last saw them (0 without [cluster])"),
            cluster_leases: int_gauge(&r, CLUSTER_LEASES, "Camera leases this node holds (the cameras it runs)"),
            cluster_database_up: int_gauge(&r, CLUSTER_DATABASE_UP, "1 while the cluster's PostgreSQL answers this node"),
            cluster_lease_changes: counter(&r, CLUSTER_LEASE_CHANGES, "Cameras this node took (acquired) or gave up (released: moved to another node; lost: taken while this node could not renew)", &["change"]),
            gallery_sync_changes: counter(&r, GALLERY_SYNC_CHANGES, "Gallery changes from the shared database applied to this node's index (result: applied, failed)", &["result"]),
            gallery_sync_seconds: histogram(&r, GALLERY_SYNC_SECONDS, "From a gallery change's commit on any node to its being searchable on this node", vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            registry: r,
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// CPU seconds used by the calling thread so far.
pub fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the struct passed; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc == 0 { ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9 } else { 0.0 }
}

/// A memory figure of this process from /proc/self/status (`VmRSS:`, `VmHWM:`, ...) in MiB; 0 when
/// unavailable.
pub fn proc_status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention_and_render() {
        let m = metrics();
        m.frames_processed.with_label_values(&["cam1"]).inc();
        let text = m.render();
        assert!(text.contains("facestream_frames_processed_total{camera=\"cam1\"} 1"), "{text}");
        for name in [FRAMES_RECEIVED, FRAMES_DROPPED, EVENTS_SENT, CAMERA_RECONNECTS] {
            assert!(name.starts_with("facestream_") && name.ends_with("_total"), "{name}");
        }
        assert!(STAGE_SECONDS.ends_with("_seconds") && CAPTURE_TO_EVENT_SECONDS.ends_with("_seconds"));
    }
}
