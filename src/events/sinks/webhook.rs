//! The webhook sink: each event POSTed as JSON from a delivery thread with retries and
//! backoff; optionally signed (`X-Facestream-Signature: sha256=<HMAC-SHA256 of the body>`).

use std::time::Duration;

use crossbeam_channel::Receiver;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{QueuedSink, check_kinds, default_queue, default_retries, default_timeout};
use crate::events::Event;
use crate::telemetry::metrics;

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

impl WebhookConfig {
    /// Every problem as (key, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if !self.url.starts_with("http://") {
            p.push(("url".into(), format!("must start with http:// (got {})", self.url)));
        }
        if !(1..=1_000_000).contains(&self.queue) {
            p.push(("queue".into(), format!("must be 1..=1000000 events, got {}", self.queue)));
        }
        if !(1..=600_000).contains(&self.timeout_ms) {
            p.push(("timeout_ms".into(), format!("must be 1..=600000, got {}", self.timeout_ms)));
        }
        if self.retries > 100 {
            p.push(("retries".into(), format!("must be at most 100, got {}", self.retries)));
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

/// HMAC-SHA256 of the body, hex, as sent in `X-Facestream-Signature: sha256=...`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this never fails; an empty signature would be refused.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()) else { return String::new() };
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

pub fn start(cfg: WebhookConfig) -> std::io::Result<QueuedSink> {
    let (q, rx) = QueuedSink::new("webhook", cfg.queue, cfg.events.clone());
    std::thread::Builder::new().name("sink-webhook".into()).spawn(move || webhook_loop(cfg, rx))?;
    Ok(q)
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
