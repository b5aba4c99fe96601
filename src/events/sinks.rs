//! Event sinks that talk to other systems: webhook (HTTP POST) and MQTT. Each has its own bounded
//! queue and delivery thread with retries and backoff, so a dead receiver never slows the pipeline:
//! when the queue is full the event is dropped and counted.

use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::Event;
use crate::telemetry::metrics;
use crate::topology::EventSink;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed as JSON (`http://` only; put a TLS proxy in front for https).
    pub url: String,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Retries after a failed delivery (100 ms, 200 ms, 400 ms, ... apart).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// When set, each request carries `X-Facestream-Signature: sha256=<hex HMAC-SHA256 of the body>`.
    #[serde(default)]
    pub secret: Option<String>,
    /// Events waiting for delivery; when full, new events are dropped (counted).
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Event kinds to send (empty = all).
    #[serde(default)]
    pub events: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub host: String,
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// 0, 1 or 2.
    #[serde(default = "default_qos")]
    pub qos: u8,
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Events go to `<prefix>/<camera>/events`; availability (`online`/`offline`, retained, with a
    /// last will) to `<prefix>/status`.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default = "default_queue")]
    pub queue: usize,
    #[serde(default)]
    pub events: Vec<String>,
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

const KINDS: [&str; 4] = ["track_started", "identified", "track_ended", "camera_state"];

fn check_kinds(events: &[String]) -> Result<(), (String, String)> {
    for e in events {
        if !KINDS.contains(&e.as_str()) {
            return Err(("events".into(), format!("unknown event kind `{e}`; one of {}", KINDS.join(", "))));
        }
    }
    Ok(())
}

impl WebhookConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !self.url.starts_with("http://") {
            return Err(("url".into(), format!("must start with http:// (got {})", self.url)));
        }
        if self.queue == 0 || self.timeout_ms == 0 {
            return Err(("queue".into(), "queue and timeout_ms must be at least 1".into()));
        }
        check_kinds(&self.events)
    }
}

impl MqttConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.qos > 2 {
            return Err(("qos".into(), format!("must be 0, 1 or 2, got {}", self.qos)));
        }
        if self.host.is_empty() || self.queue == 0 {
            return Err(("host".into(), "host must be set and queue at least 1".into()));
        }
        check_kinds(&self.events)
    }
}

/// Queue side of an asynchronous sink: never blocks, drops and counts when full.
struct Queued {
    name: &'static str,
    tx: Sender<Event>,
    kinds: Vec<String>,
}

impl Queued {
    fn offer(&self, event: &Event) -> Result<(), String> {
        if !self.kinds.is_empty() && !self.kinds.iter().any(|k| k == event.kind()) {
            return Ok(());
        }
        self.tx.try_send(event.clone()).map_err(|e| match e {
            TrySendError::Full(_) => "queue_full".to_string(),
            TrySendError::Disconnected(_) => "disconnected".to_string(),
        })
    }
}

pub struct WebhookSink(Queued);

impl EventSink for WebhookSink {
    fn name(&self) -> &'static str {
        self.0.name
    }
    fn send(&mut self, event: &Event) -> Result<(), String> {
        self.0.offer(event)
    }
}

/// HMAC-SHA256 of the body, hex, as sent in `X-Facestream-Signature: sha256=...`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

impl WebhookSink {
    pub fn start(cfg: WebhookConfig) -> std::io::Result<Self> {
        let (tx, rx) = bounded::<Event>(cfg.queue);
        let kinds = cfg.events.clone();
        std::thread::Builder::new().name("sink-webhook".into()).spawn(move || webhook_loop(cfg, rx))?;
        Ok(Self(Queued { name: "webhook", tx, kinds }))
    }
}

fn webhook_loop(cfg: WebhookConfig, rx: Receiver<Event>) {
    let m = metrics();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(cfg.timeout_ms)))
        .http_status_as_error(true)
        .build()
        .into();
    for event in rx {
        let body = event.to_json();
        let mut attempt = 0;
        loop {
            let mut req = agent.post(&cfg.url).header("Content-Type", "application/json");
            if let Some(secret) = &cfg.secret {
                req = req.header("X-Facestream-Signature", &format!("sha256={}", signature(secret, body.as_bytes())));
            }
            match req.send(body.as_bytes()) {
                Ok(_) => {
                    m.events_sent.with_label_values(&["webhook_delivered"]).inc();
                    break;
                }
                Err(e) => {
                    m.events_failed.with_label_values(&["webhook", "delivery_error"]).inc();
                    if attempt >= cfg.retries {
                        tracing::warn!(url = %cfg.url, error = %e, "webhook delivery failed; event dropped");
                        m.events_failed.with_label_values(&["webhook", "retries_exhausted"]).inc();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100 << attempt.min(6)));
                    attempt += 1;
                }
            }
        }
    }
}

pub struct MqttSink {
    q: Queued,
}

impl EventSink for MqttSink {
    fn name(&self) -> &'static str {
        self.q.name
    }
    fn send(&mut self, event: &Event) -> Result<(), String> {
        self.q.offer(event)
    }
}

fn qos(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

impl MqttSink {
    pub fn start(cfg: MqttConfig) -> std::io::Result<Self> {
        let (tx, rx) = bounded::<Event>(cfg.queue);
        let kinds = cfg.events.clone();
        let status_topic = format!("{}/status", cfg.topic_prefix);
        let mut opts = rumqttc::MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
        opts.set_keep_alive(Duration::from_secs(15));
        opts.set_last_will(rumqttc::LastWill::new(&status_topic, "offline", rumqttc::QoS::AtLeastOnce, true));
        if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
            opts.set_credentials(u.clone(), p.clone());
        }
        let (client, mut connection) = rumqttc::Client::new(opts, cfg.queue.max(10));
        // The connection must be polled for anything to move; it also reconnects after errors.
        {
            let client = client.clone();
            let status_topic = status_topic.clone();
            std::thread::Builder::new().name("sink-mqtt-conn".into()).spawn(move || {
                let mut delay = Duration::from_millis(500);
                for notification in connection.iter() {
                    match notification {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                            delay = Duration::from_millis(500);
                            tracing::info!("MQTT connected");
                            let _ = client.try_publish(&status_topic, rumqttc::QoS::AtLeastOnce, true, "online");
                        }
                        Ok(_) => {}
                        Err(e) => {
                            metrics().events_failed.with_label_values(&["mqtt", "connection"]).inc();
                            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "MQTT connection error");
                            std::thread::sleep(delay);
                            delay = (delay * 2).min(Duration::from_secs(30));
                        }
                    }
                }
            })?;
        }
        let prefix = cfg.topic_prefix.clone();
        let q = qos(cfg.qos);
        std::thread::Builder::new().name("sink-mqtt".into()).spawn(move || {
            for event in rx {
                let topic = format!("{prefix}/{}/events", event.camera);
                if let Err(e) = client.try_publish(topic, q, false, event.to_json()) {
                    tracing::debug!(error = %e, "MQTT publish queue full; event dropped");
                    metrics().events_failed.with_label_values(&["mqtt", "queue_full"]).inc();
                }
            }
            let _ = client.try_publish(&status_topic, rumqttc::QoS::AtLeastOnce, true, "offline");
            let _ = client.disconnect();
        })?;
        Ok(Self { q: Queued { name: "mqtt", tx, kinds } })
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
