//! Camera settings: where the video comes from and how it is paced, retried and sized.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RtspTransport {
    /// Let rtspsrc try UDP first, then TCP.
    #[default]
    Auto,
    Tcp,
    Udp,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Name used in events, logs and metric labels (letters, digits, `-`, `_`).
    pub id: String,
    /// `rtsp://…`, `file://…` or a plain path, `http(s)://…`, `v4l2:///dev/videoN`, or `test:PATTERN`
    /// (a GStreamer test pattern such as `test:ball`).
    pub url: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Most frames per second to process (0 = every frame). Extra frames are skipped before detection.
    #[serde(default = "default_max_fps")]
    pub max_fps: f32,
    /// Smallest face to detect on this camera, in pixels (default: detect.min_face).
    #[serde(default)]
    pub min_face: Option<f32>,
    /// Files: start again at the end instead of ending the camera.
    #[serde(default, rename = "loop")]
    pub loop_file: bool,
    /// Files: play at the file's own frame rate, as a camera would deliver it (false: as fast as
    /// the pipeline takes frames, every frame processed).
    #[serde(default = "yes")]
    pub realtime: bool,
    /// RTSP transport.
    #[serde(default)]
    pub rtsp_transport: RtspTransport,
    /// RTSP jitter buffer, milliseconds (0 = lowest latency).
    #[serde(default = "default_latency")]
    pub latency_ms: u32,
    /// Reconnect live sources (RTSP, HTTP, v4l2) after errors or end of stream, with exponential
    /// backoff from 1 s to 30 s plus jitter.
    #[serde(default = "yes")]
    pub reconnect: bool,
    /// Give up after this many failed reconnects in a row (0 = never give up).
    #[serde(default)]
    pub max_retries: u32,
    /// Seconds without a frame after which the source counts as stalled (counted in
    /// facestream_camera_stalls_total): a live source is reconnected, a file fails; 0 = never.
    #[serde(default = "default_stall")]
    pub stall_timeout_s: f32,
    /// Threads of the camera's video decoder (libav), 0 = one per core. One decoder thread per
    /// camera gave 15% more total frames/s past capacity (16 cameras on 2 vCPUs, BENCHMARKS.md):
    /// cameras already decode in parallel. Raise it for a single high-resolution camera.
    #[serde(default = "default_decode_threads")]
    pub decode_threads: u32,
    /// Wait this long before starting (not a config key: the bench harness staggers its cameras).
    #[serde(skip)]
    pub start_delay: std::time::Duration,
}

fn yes() -> bool {
    true
}
fn default_max_fps() -> f32 {
    10.0
}
fn default_stall() -> f32 {
    5.0
}
fn default_decode_threads() -> u32 {
    1
}
fn default_latency() -> u32 {
    200
}

/// The kind of source a URL names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    Rtsp(String),
    /// A URI for uridecodebin (file:// or http(s)://).
    Uri { uri: String, live: bool },
    V4l2(String),
    Test(String),
}

impl SourceKind {
    pub fn is_live(&self) -> bool {
        match self {
            SourceKind::Rtsp(_) | SourceKind::V4l2(_) | SourceKind::Test(_) => true,
            SourceKind::Uri { live, .. } => *live,
        }
    }
}

const TEST_PATTERNS: &[&str] = &["smpte", "ball", "snow", "black", "white", "red", "green", "blue", "checkers-8", "circular", "gradient", "pinwheel", "spokes"];

impl CameraConfig {
    /// Parses the URL into a source kind; `base` resolves relative file paths.
    pub fn source(&self, base: &std::path::Path) -> Result<SourceKind, String> {
        let url = self.url.trim();
        if url.starts_with("rtsp://") || url.starts_with("rtsps://") {
            return Ok(SourceKind::Rtsp(url.to_string()));
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            return Ok(SourceKind::Uri { uri: url.to_string(), live: true });
        }
        if let Some(dev) = url.strip_prefix("v4l2://") {
            if !dev.starts_with("/dev/") {
                return Err(format!("v4l2 URL must name a device, like v4l2:///dev/video0 (got {url})"));
            }
            return Ok(SourceKind::V4l2(dev.to_string()));
        }
        if let Some(pattern) = url.strip_prefix("test:") {
            let pattern = if pattern.is_empty() { "ball" } else { pattern };
            if !TEST_PATTERNS.contains(&pattern) {
                return Err(format!("unknown test pattern `{pattern}`; one of {}", TEST_PATTERNS.join(", ")));
            }
            return Ok(SourceKind::Test(pattern.to_string()));
        }
        let path = match url.strip_prefix("file://") {
            Some(p) => std::path::PathBuf::from(percent_decode(p)),
            None if url.contains("://") => return Err(format!("unsupported URL scheme in {url}; use rtsp://, file://, http(s)://, v4l2:// or test:")),
            None => std::path::PathBuf::from(url),
        };
        let path = if path.is_absolute() { path } else { base.join(path) };
        if !path.is_file() {
            return Err(format!("file {} does not exist", path.display()));
        }
        let abs = path.canonicalize().map_err(|e| format!("{}: {e}", path.display()))?;
        // A path may hold `#`, `%`, spaces...: escaped, so the URI names exactly this file.
        Ok(SourceKind::Uri { uri: format!("file://{}", percent_encode_path(&abs.to_string_lossy())), live: false })
    }

    /// Every problem as (key, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if self.id.is_empty() || !self.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            p.push(("id".into(), format!("must be non-empty letters, digits, `-` or `_` (got {:?})", self.id)));
        }
        if !(0.0..=240.0).contains(&self.max_fps) {
            p.push(("max_fps".into(), format!("must be between 0 (no cap) and 240, got {}", self.max_fps)));
        }
        if let Some(m) = self.min_face
            && !(12.0..=4096.0).contains(&m) {
                p.push(("min_face".into(), format!("must be between 12 and 4096 pixels, got {m}")));
            }
        if self.latency_ms > 10_000 {
            p.push(("latency_ms".into(), format!("must be at most 10000, got {}", self.latency_ms)));
        }
        if self.decode_threads > 64 {
            p.push(("decode_threads".into(), format!("must be 0 (one per core) ..= 64, got {}", self.decode_threads)));
        }
        if !(self.stall_timeout_s == 0.0 || (0.5..=3600.0).contains(&self.stall_timeout_s)) {
            p.push(("stall_timeout_s".into(), format!("must be 0 (off) or 0.5..=3600 seconds, got {}", self.stall_timeout_s)));
        }
        if self.id.len() > 64 {
            p.push(("id".into(), format!("must be at most 64 characters, got {}", self.id.len())));
        }
        // A file path must name a file that exists (`#`, `%` and spaces are fine: they are escaped).
        if self.url.contains('\n') || self.url.contains('"') {
            p.push(("url".into(), "must not contain quotes or line breaks".into()));
        }
        p
    }

    /// The first problem, if any.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }
}

/// Percent-encodes a file path for a `file://` URI (RFC 3986: unreserved characters and `/` stay).
pub fn percent_encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (a `file://` URL given in the config); malformed escapes stay as they are.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod uri_tests {
    use super::*;

    #[test]
    fn paths_with_hash_percent_and_spaces_round_trip() {
        let p = "/data/cam #1/50% off/a b.mp4";
        let e = percent_encode_path(p);
        assert_eq!(e, "/data/cam%20%231/50%25%20off/a%20b.mp4");
        assert_eq!(percent_decode(&e), p);
        assert_eq!(percent_decode("100%"), "100%", "a malformed escape stays");
    }
}
