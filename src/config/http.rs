//! The `[http]` section (kept beside the other sections so the server's module never has to be
//! imported by the config).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub enabled: bool,
    /// Address to listen on. The default keeps it on this machine; use 0.0.0.0:9464 to expose it
    /// (then `token` is required, or `insecure = true`).
    pub bind: String,
    /// Events buffered per event-stream client; a client further behind loses events (counted).
    pub sse_buffer: usize,
    /// When set, every `/api/*` route needs `Authorization: Bearer <token>` (`/metrics`,
    /// `/healthz` and `/readyz` stay open).
    pub token: Option<String>,
    /// Allow a non-loopback `bind` without a token.
    pub insecure: bool,
    /// Largest image accepted by /api, in MiB.
    pub max_upload_mb: usize,
    /// Largest image accepted by /api, in megapixels (checked from the header, before decoding);
    /// images above `downscale_mpix` are downscaled before detection.
    pub max_image_mpix: f64,
    pub downscale_mpix: f64,
    /// Connections served at once with the normal header timeout; beyond it a new connection
    /// gets one second to send its request (idle and slow connections cannot starve others).
    pub max_connections: usize,
    /// Seconds a connection may take to send a request's headers (also the idle time between
    /// requests on a kept-alive connection).
    pub header_timeout_s: f64,
    /// Seconds a request body may take to arrive.
    pub body_timeout_s: f64,
    /// Image requests (recognize, add a face) analysed at once; more get 503 with Retry-After.
    pub max_image_requests: usize,
    /// Serve the web UI at `/ui/` (login with `token` when one is set).
    pub ui: bool,
    /// Live view: frames per second kept per camera while somebody watches, and their width in
    /// pixels (JPEGs are encoded at most once per kept frame, only when asked for).
    pub live_fps: f64,
    pub live_width: u32,
    /// How long a web UI login lasts, in hours.
    pub session_hours: f64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: "127.0.0.1:9464".into(),
            sse_buffer: 256,
            token: None,
            insecure: false,
            max_upload_mb: 10,
            max_image_mpix: 40.0,
            downscale_mpix: 4.0,
            max_connections: 256,
            header_timeout_s: 5.0,
            body_timeout_s: 30.0,
            max_image_requests: 2,
            ui: true,
            live_fps: 2.0,
            live_width: 640,
            session_hours: 12.0,
        }
    }
}

impl HttpConfig {
    /// Every problem as (key, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        match self.bind.parse::<SocketAddr>() {
            Err(e) => p.push(("bind".to_string(), format!("`{}` is not an address:port ({e})", self.bind))),
            Ok(addr) if self.enabled && !addr.ip().is_loopback() && self.token.is_none() && !self.insecure => p.push((
                "bind".to_string(),
                format!("`{}` is reachable from other machines but no http.token is set: set a token, or http.insecure = true to serve the API to anyone", self.bind),
            )),
            Ok(_) => {}
        }
        let mut range = |key: &str, v: f64, lo: f64, hi: f64, unit: &str| {
            if !(lo..=hi).contains(&v) {
                p.push((key.to_string(), format!("must be between {lo} and {hi}{unit}, got {v}")));
            }
        };
        range("sse_buffer", self.sse_buffer as f64, 1.0, 65536.0, " events");
        range("max_upload_mb", self.max_upload_mb as f64, 1.0, 1024.0, " MiB");
        range("max_image_mpix", self.max_image_mpix, 0.1, 268.0, " megapixels");
        range("downscale_mpix", self.downscale_mpix, 0.1, self.max_image_mpix.max(0.1), " megapixels (and at most max_image_mpix)");
        range("max_connections", self.max_connections as f64, 1.0, 16384.0, "");
        range("header_timeout_s", self.header_timeout_s, 0.1, 300.0, " s");
        range("body_timeout_s", self.body_timeout_s, 0.1, 3600.0, " s");
        range("max_image_requests", self.max_image_requests as f64, 1.0, 64.0, "");
        range("live_fps", self.live_fps, 0.1, 15.0, " frames per second");
        range("live_width", self.live_width as f64, 64.0, 1920.0, " pixels");
        range("session_hours", self.session_hours, 0.01, 720.0, " hours");
        if self.token.as_deref().is_some_and(|t| t.len() < 8) {
            p.push(("token".into(), "must be at least 8 characters".into()));
        }
        p
    }

    /// The first problem, if any.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }
}
