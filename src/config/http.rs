//! The `[http]` section (kept beside the other sections so the server's module never has to be
//! imported by the config).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub enabled: bool,
    /// Address to listen on. The default keeps it on this machine; use 0.0.0.0:9464 to expose it.
    pub bind: String,
    /// Events buffered per event-stream client; a client further behind loses events (counted).
    pub sse_buffer: usize,
    /// When set, gallery changes over /api need `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Largest image accepted by /api, in MiB.
    pub max_upload_mb: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { enabled: true, bind: "127.0.0.1:9464".into(), sse_buffer: 256, token: None, max_upload_mb: 10 }
    }
}

impl HttpConfig {
    /// Every problem as (key, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if let Err(e) = self.bind.parse::<SocketAddr>().map_err(|e| ("bind".to_string(), format!("`{}` is not an address:port ({e})", self.bind))) {
            p.push(e);
        }
        if self.sse_buffer == 0 {
            p.push(("sse_buffer".into(), "must be at least 1".into()));
        }
        p
    }

    /// The first problem, if any.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }
}

