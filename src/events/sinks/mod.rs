//! Every configured event sink, and the one place they are registered ([`REGISTRY`]): a new sink
//! is one file here plus one line there (and its key in `EventsConfig`). Sinks that talk to other
//! systems (webhook, MQTT) have their own bounded queue and delivery thread, so a dead receiver
//! never slows the pipeline: when the queue is full the event is dropped and counted.

pub mod mqtt;
pub mod nats;
pub mod webhook;

use std::path::Path;

use crossbeam_channel::Receiver;

pub use mqtt::MqttConfig;
pub use nats::NatsConfig;
pub use webhook::{WebhookConfig, signature};

use super::{Event, EventSink, EventsConfig, JsonLines, SendError, SinkError};
use crate::queue::{Tx, WhenFull};
use crate::telemetry::metrics;

/// Builds a sink from the events config when it is configured there (`base`: the folder relative
/// paths resolve against).
type Builder = fn(&EventsConfig, &Path) -> Result<Option<Box<dyn EventSink>>, SinkError>;

/// Every sink kind, in the order events reach them.
pub const REGISTRY: &[Builder] = &[stdout, file, webhook_sink, mqtt_sink, nats_sink];

/// The sinks the config asks for.
/// Checks a list of event kinds (for `events.stdout_events`).
pub fn kinds_problem(events: &[String]) -> Option<(String, String)> {
    check_kinds(events).err()
}

pub fn from_config(cfg: &EventsConfig, base: &Path) -> Result<Vec<Box<dyn EventSink>>, SinkError> {
    let mut out = Vec::new();
    for build in REGISTRY {
        if let Some(s) = build(cfg, base)? {
            out.push(s);
        }
    }
    Ok(out)
}

fn stdout(cfg: &EventsConfig, _: &Path) -> Result<Option<Box<dyn EventSink>>, SinkError> {
    Ok(cfg.stdout.then(|| Box::new(JsonLines::stdout().only(cfg.stdout_events.clone())) as Box<dyn EventSink>))
}

fn file(cfg: &EventsConfig, base: &Path) -> Result<Option<Box<dyn EventSink>>, SinkError> {
    let Some(path) = &cfg.file else { return Ok(None) };
    let path = if path.is_absolute() { path.clone() } else { base.join(path) };
    Ok(Some(Box::new(JsonLines::rotating(&path, cfg.file_max_bytes, cfg.file_keep)?)))
}

fn webhook_sink(cfg: &EventsConfig, _: &Path) -> Result<Option<Box<dyn EventSink>>, SinkError> {
    let Some(w) = &cfg.webhook else { return Ok(None) };
    Ok(Some(Box::new(webhook::start(w.clone()).map_err(|error| SinkError::Thread { sink: "webhook", error })?)))
}

fn mqtt_sink(cfg: &EventsConfig, _: &Path) -> Result<Option<Box<dyn EventSink>>, SinkError> {
    let Some(m) = &cfg.mqtt else { return Ok(None) };
    Ok(Some(Box::new(mqtt::start(m.clone()).map_err(|error| SinkError::Thread { sink: "mqtt", error })?)))
}

fn nats_sink(cfg: &EventsConfig, _: &Path) -> Result<Option<Box<dyn EventSink>>, SinkError> {
    let Some(n) = &cfg.nats else { return Ok(None) };
    Ok(Some(Box::new(nats::start(n.clone()).map_err(|error| SinkError::Thread { sink: "nats", error })?)))
}

fn default_timeout() -> u64 {
    2000
}
fn default_retries() -> u32 {
    3
}
fn default_queue() -> usize {
    1024
}
fn default_mqtt_port() -> u16 {
    1883
}
fn default_qos() -> u8 {
    1
}
fn default_client_id() -> String {
    "facestream".into()
}
fn default_prefix() -> String {
    "facestream".into()
}

const KINDS: [&str; 6] = ["track_started", "identified", "track_ended", "camera_state", "gate_decision", "visitor"];

fn check_kinds(events: &[String]) -> Result<(), (String, String)> {
    for e in events {
        if !KINDS.contains(&e.as_str()) {
            return Err(("events".into(), format!("unknown event kind `{e}`; one of {}", KINDS.join(", "))));
        }
    }
    Ok(())
}

/// What every sink with its own delivery thread (webhook, MQTT, NATS) is on the events side: its
/// queue. Never blocks; when full the event is dropped and counted
/// (`facestream_events_failed_total{sink, reason="queue_full"}`).
pub struct QueuedSink {
    name: &'static str,
    tx: Tx<Event>,
    kinds: Vec<String>,
}

impl QueuedSink {
    fn new(name: &'static str, capacity: usize, kinds: Vec<String>) -> (Self, Receiver<Event>) {
        let dropped = metrics().events_failed.with_label_values(&[name, "queue_full"]);
        let (tx, rx) = crate::queue::bounded(capacity, WhenFull::DropNewest, dropped);
        (Self { name, tx, kinds }, rx)
    }

    fn offer(&self, event: &Event) -> Result<(), SendError> {
        if !self.kinds.is_empty() && !self.kinds.iter().any(|k| k == event.kind()) {
            return Ok(());
        }
        self.tx.push(event.clone()).map_err(SendError::Queue)
    }
}

impl EventSink for QueuedSink {
    fn name(&self) -> &'static str {
        self.name
    }
    fn counts_own_drops(&self) -> bool {
        true
    }
    fn send(&mut self, event: &Event) -> Result<(), SendError> {
        self.offer(event)
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(signature("Jefe", b"what do ya want for nothing?"), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn configs_are_validated() {
        let w: WebhookConfig = toml::from_str("url = \"ftp://x\"").unwrap();
        assert!(w.validate().is_err());
        let w: WebhookConfig = toml::from_str("url = \"http://127.0.0.1:1/hook\"\nevents = [\"identified\"]").unwrap();
        assert!(w.validate().is_ok());
        let m: MqttConfig = toml::from_str("host = \"127.0.0.1\"\nqos = 3").unwrap();
        assert!(m.validate().is_err());
        let m: MqttConfig = toml::from_str("host = \"127.0.0.1\"\nevents = [\"nope\"]").unwrap();
        assert!(m.validate().is_err());
    }
}
