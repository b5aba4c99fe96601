//! The MQTT sink: events published to `<prefix>/<camera>/events` from a thread of its own, with
//! availability (`online`/`offline`, retained, with a last will) on `<prefix>/status`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{QueuedSink, check_kinds, default_client_id, default_mqtt_port, default_prefix, default_qos, default_queue};
use crate::telemetry::metrics;

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

impl MqttConfig {
    /// Every problem as (key, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if self.qos > 2 {
            p.push(("qos".into(), format!("must be 0, 1 or 2, got {}", self.qos)));
        }
        if self.host.is_empty() {
            p.push(("host".into(), "must be set".into()));
        }
        if !(1..=1_000_000).contains(&self.queue) {
            p.push(("queue".into(), format!("must be 1..=1000000 events, got {}", self.queue)));
        }
        if let Err(e) = check_kinds(&self.events) {
            p.push(e);
        }
        p
    }

    /// The first problem, if any.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }
}

fn qos(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

pub fn start(cfg: MqttConfig) -> std::io::Result<QueuedSink> {
    let (q, rx) = QueuedSink::new("mqtt", cfg.queue, cfg.events.clone());
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
    let level = qos(cfg.qos);
    std::thread::Builder::new().name("sink-mqtt".into()).spawn(move || {
        for event in rx {
            let topic = format!("{prefix}/{}/events", event.camera);
            if let Err(e) = client.try_publish(topic, level, false, event.to_json()) {
                tracing::debug!(error = %e, "MQTT publish queue full; event dropped");
                metrics().events_failed.with_label_values(&["mqtt", "queue_full"]).inc();
            }
        }
        let _ = client.try_publish(&status_topic, rumqttc::QoS::AtLeastOnce, true, "offline");
        let _ = client.disconnect();
    })?;
    Ok(q)
}
