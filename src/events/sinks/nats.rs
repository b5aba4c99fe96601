//! The NATS sink: every event published with JetStream to `<prefix>.<camera>.<event>` in the
//! stream `stream` (created when missing, subjects `<prefix>.>`), each with a `Nats-Msg-Id` made
//! from the event itself, so a publish repeated after a lost acknowledgement (or a reconnect) is
//! stored once (the stream's duplicate window). Its own thread and bounded queue: while the server
//! is down the sink retries the event in hand and the queue fills, and what does not fit is
//! dropped and counted (`facestream_events_failed_total{sink="nats"}`); the pipeline never waits.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{QueuedSink, check_kinds, default_prefix, default_queue};
use crate::events::Event;
use crate::telemetry::metrics;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// The server, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Subjects are `<subject_prefix>.<camera>.<event kind>`.
    #[serde(default = "default_prefix")]
    pub subject_prefix: String,
    /// The JetStream stream the events are stored in.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Create the stream when it does not exist (subjects `<subject_prefix>.>`, file storage).
    #[serde(default = "yes")]
    pub create_stream: bool,
    /// The stream's de-duplication window for new streams, in seconds.
    #[serde(default = "default_window")]
    pub duplicate_window_s: u64,
    /// Events waiting for the server; when full, new events are dropped and counted.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Kinds published (empty: all).
    #[serde(default)]
    pub events: Vec<String>,
}

fn default_stream() -> String {
    "FACESTREAM".into()
}
fn default_window() -> u64 {
    120
}
fn yes() -> bool {
    true
}

fn valid_token(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl NatsConfig {
    /// Every problem as (key, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if !(self.url.starts_with("nats://") || self.url.starts_with("tls://")) || self.url.len() < 8 {
            p.push(("url".into(), format!("must be nats://host:port, got `{}`", self.url)));
        }
        if !self.subject_prefix.split('.').all(valid_token) {
            p.push(("subject_prefix".into(), format!("`{}` must be dot-separated tokens of letters, digits, '-' and '_'", self.subject_prefix)));
        }
        if !valid_token(&self.stream) {
            p.push(("stream".into(), format!("`{}` must be letters, digits, '-' and '_'", self.stream)));
        }
        if !(1..=1_000_000).contains(&self.queue) {
            p.push(("queue".into(), format!("must be 1..=1000000 events, got {}", self.queue)));
        }
        if !(1..=86_400).contains(&self.duplicate_window_s) {
            p.push(("duplicate_window_s".into(), format!("must be 1..=86400 seconds, got {}", self.duplicate_window_s)));
        }
        if let Err(e) = check_kinds(&self.events) {
            p.push(e);
        }
        p
    }
}

/// A camera id as one subject token (characters NATS gives meaning to become `_`).
pub fn subject_token(s: &str) -> String {
    let t: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if t.is_empty() { "_".into() } else { t }
}

/// The event's message id: the same event always gets the same id.
pub fn message_id(json: &str) -> String {
    let d = Sha256::digest(json.as_bytes());
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

pub fn start(cfg: NatsConfig) -> std::io::Result<QueuedSink> {
    let (q, rx) = QueuedSink::new("nats", cfg.queue, cfg.events.clone());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("sink-nats".into()).spawn(move || rt.block_on(deliver(cfg, rx)))?;
    Ok(q)
}

async fn ensure_stream(js: &async_nats::jetstream::Context, cfg: &NatsConfig) -> Result<(), String> {
    if !cfg.create_stream {
        return js.get_stream(&cfg.stream).await.map(|_| ()).map_err(|e| format!("stream {}: {e}", cfg.stream));
    }
    let stream = async_nats::jetstream::stream::Config {
        name: cfg.stream.clone(),
        subjects: vec![format!("{}.>", cfg.subject_prefix)],
        duplicate_window: Duration::from_secs(cfg.duplicate_window_s),
        ..Default::default()
    };
    js.get_or_create_stream(stream).await.map(|_| ()).map_err(|e| format!("stream {}: {e}", cfg.stream))
}

/// Publishes one event until the server acknowledges it (stored, or known as a duplicate);
/// gives up only when the sink is closing.
async fn publish(js: &async_nats::jetstream::Context, cfg: &NatsConfig, ready: &mut bool, event: &Event, closing: bool) {
    let json = event.to_json();
    let id = message_id(&json);
    let subject = format!("{}.{}.{}", cfg.subject_prefix, subject_token(&event.camera), event.kind());
    let mut delay = Duration::from_millis(200);
    loop {
        if !*ready {
            match ensure_stream(js, cfg).await {
                Ok(()) => {
                    tracing::info!(stream = %cfg.stream, url = %cfg.url, "NATS JetStream ready");
                    *ready = true;
                }
                Err(e) => tracing::warn!(error = %e, "NATS JetStream not ready"),
            }
        }
        let sent = async {
            let ack = js.send_publish(subject.clone(), async_nats::jetstream::message::PublishMessage::build().payload(json.clone().into()).message_id(&id)).await.map_err(|e| e.to_string())?;
            ack.await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(Duration::from_secs(3), sent).await {
            Ok(Ok(ack)) => {
                let m = metrics();
                m.events_sent.with_label_values(&["nats"]).inc();
                if ack.duplicate {
                    tracing::debug!(id, "NATS: a repeated publish was de-duplicated by the stream");
                }
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "NATS publish failed");
                *ready = false;
            }
            Err(_) => tracing::warn!(retry_in_ms = delay.as_millis() as u64, "NATS publish not acknowledged in 3 s"),
        }
        metrics().events_failed.with_label_values(&["nats", "retry"]).inc();
        if closing {
            metrics().events_failed.with_label_values(&["nats", "closed"]).inc();
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn deliver(cfg: NatsConfig, rx: crossbeam_channel::Receiver<Event>) {
    let opts = async_nats::ConnectOptions::new()
        .name("facestream")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(3))
        .client_capacity(cfg.queue.clamp(64, 65536))
        .event_callback(|e| async move {
            match e {
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                async_nats::Event::Disconnected => {
                    metrics().events_failed.with_label_values(&["nats", "connection"]).inc();
                    tracing::warn!("NATS disconnected; reconnecting");
                }
                other => tracing::debug!(event = %other, "NATS"),
            }
        });
    let client = match opts.connect(cfg.url.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(url = %cfg.url, error = %e, "NATS sink cannot start; its events are dropped and counted");
            for _ in rx {
                metrics().events_failed.with_label_values(&["nats", "connection"]).inc();
            }
            return;
        }
    };
    let js = async_nats::jetstream::new(client.clone());
    let mut ready = false;
    loop {
        let r = rx.clone();
        let next = tokio::task::spawn_blocking(move || r.recv_timeout(Duration::from_millis(500))).await;
        match next {
            Ok(Ok(event)) => publish(&js, &cfg, &mut ready, &event, false).await,
            Ok(Err(crossbeam_channel::RecvTimeoutError::Timeout)) => continue,
            Ok(Err(crossbeam_channel::RecvTimeoutError::Disconnected)) | Err(_) => break,
        }
    }
    // The pipeline ended: what is still queued gets one try each.
    while let Ok(event) = rx.try_recv() {
        publish(&js, &cfg, &mut ready, &event, true).await;
    }
    let _ = client.flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_ids_are_stable_and_safe() {
        assert_eq!(subject_token("gate.front door*"), "gate_front_door_");
        assert_eq!(message_id("{\"a\":1}"), message_id("{\"a\":1}"));
        assert_ne!(message_id("{\"a\":1}"), message_id("{\"a\":2}"));
        assert_eq!(message_id("x").len(), 32);
        let c: NatsConfig = toml::from_str("url = \"nats://127.0.0.1:4222\"").unwrap();
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        let c: NatsConfig = toml::from_str("url = \"http://x\"\nstream = \"a.b\"\nevents = [\"nope\"]").unwrap();
        let keys: Vec<String> = c.problems().into_iter().map(|p| p.0).collect();
        assert_eq!(keys, ["url", "stream", "events"]);
    }
}
