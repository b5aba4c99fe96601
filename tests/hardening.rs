//! What a hostile or careless client could do to the HTTP side, against the real binary with a
//! real camera running: 1100 idle connections and 200 slowloris connections do not stop
//! `/healthz` from answering (slow ones are closed by the server); an 8192x8192 PNG sent to
//! recognize is refused from its header, with RSS staying within a bound; with a token every
//! `/api/*` route needs it; bad values and a non-loopback bind without a token are refused
//! before start.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_facestream")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `facestream run` with one looping camera and the HTTP API on `port`.
fn start(dir: &Path, port: u16, extra: &str) -> Running {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[events]\nstdout = false\n[http]\nbind = \"127.0.0.1:{port}\"\n{extra}\n[gallery]\nstore = \"{}\"\n[[cameras]]\nid = \"door\"\nurl = \"{}\"\nloop = true\nmax_fps = 5\n",
            dir.join("g.db").display(),
            root.join("tests/fixtures/ff-region-face-motion.avi").display()
        ),
    )
    .unwrap();
    let child = Command::new(bin()).args(["--log", "warn", "--config"]).arg(&cfg).arg("run").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let r = Running(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(port, "/healthz", None).is_none() {
        assert!(Instant::now() < deadline, "the server never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    r
}

/// One HTTP/1.1 request on a new connection; (status, body) or None when it could not be made.
fn request(port: u16, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text.split("\r\n\r\n").nth(1).unwrap_or("").to_string()))
}

fn get(port: u16, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    request(port, "GET", path, token, b"")
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .unwrap_or(0.0)
        / 1024.0
}

#[test]
fn idle_and_slowloris_connections_do_not_stop_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _app = start(dir.path(), port, "max_connections = 64\nheader_timeout_s = 3");
    let idle: Vec<TcpStream> = (0..1100).filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok()).collect();
    assert!(idle.len() > 1000, "the idle connections were opened ({})", idle.len());
    let asked = Instant::now();
    let answer = get(port, "/healthz", None);
    eprintln!("/healthz with {} idle connections open: {:?} after {:?}", idle.len(), answer.as_ref().map(|a| a.0), asked.elapsed());
    assert_eq!(answer.map(|a| a.0), Some(200), "/healthz answers while 1100 idle connections are held");
    // Slowloris: a request line, then a header byte now and then, never finished.
    let mut slow: Vec<TcpStream> = (0..200)
        .filter_map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").ok()?;
            Some(s)
        })
        .collect();
    let started = Instant::now();
    let mut closed = 0;
    while started.elapsed() < Duration::from_secs(12) && closed < slow.len() {
        closed = 0;
        for s in slow.iter_mut() {
            // A write to a connection the server has closed fails (at the latest the second time).
            if s.write_all(b"a").is_err() {
                closed += 1;
            }
        }
        assert_eq!(get(port, "/healthz", None).map(|a| a.0), Some(200), "/healthz answers during the slowloris");
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("{closed} of {} slowloris connections closed by the server after {:?}", slow.len(), started.elapsed());
    assert_eq!(closed, slow.len(), "the server closes connections that never finish their headers");
    drop(idle);
}

#[test]
fn a_huge_image_is_refused_from_its_header_and_reads_need_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let app = start(dir.path(), port, "token = \"s3cret-token\"");
    let pid = app.0.id();
    // An 8192x8192 PNG of one colour: 200 KB on the wire, 200 MB once decoded.
    let big = image::RgbImage::from_pixel(8192, 8192, image::Rgb([120, 110, 100]));
    let mut png = std::io::Cursor::new(Vec::new());
    big.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let png = png.into_inner();
    drop(big);
    let before = rss_mb(pid);
    let (status, body) = request(port, "POST", "/api/recognize", Some("s3cret-token"), &png).unwrap();
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("megapixels"), "{body}");
    let after = rss_mb(pid);
    eprintln!("RSS {before:.0} MB before, {after:.0} MB after the 8192x8192 PNG ({} bytes)", png.len());
    assert!(after - before < 100.0, "RSS grew by {:.0} MB (bound 100 MB)", after - before);
    // A normal recognize still answers.
    let photo = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/Paul.jpeg")).unwrap();
    assert_eq!(request(port, "POST", "/api/recognize", Some("s3cret-token"), &photo).map(|r| r.0), Some(200));
    // Reads and recognition need the token too; health and metrics stay open.
    assert_eq!(get(port, "/api/persons", None).map(|r| r.0), Some(401));
    assert_eq!(request(port, "POST", "/api/recognize", None, &photo).map(|r| r.0), Some(401));
    assert_eq!(get(port, "/api/persons", Some("s3cret-token")).map(|r| r.0), Some(200));
    assert_eq!(get(port, "/metrics", None).map(|r| r.0), Some(200));
    assert_eq!(get(port, "/readyz", None).map(|r| r.0), Some(200));
    // Names are bounded.
    let long = format!("{{\"name\":\"{}\"}}", "x".repeat(10_000));
    assert_eq!(request(port, "POST", "/api/persons", Some("s3cret-token"), long.as_bytes()).map(|r| r.0), Some(400));
}

#[test]
fn unbounded_values_and_an_open_bind_without_token_are_refused_before_start() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[http]\nsse_buffer = 1000000000000000\n", "http.sse_buffer"),
        ("[http]\nmax_upload_mb = 0\n", "http.max_upload_mb"),
        ("[events]\nfile_keep = 4294967295\n", "events.file_keep"),
        ("[events.webhook]\nurl = \"http://127.0.0.1:9/x\"\nqueue = 1000000000000000\n", "events.webhook.queue"),
        ("[http]\nbind = \"0.0.0.0:9464\"\n", "http.bind"),
    ];
    for (text, key) in cases {
        let cfg = dir.path().join("bad.toml");
        std::fs::write(&cfg, text).unwrap();
        let out = Command::new(bin()).args(["check", "--config"]).arg(&cfg).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key}: accepted");
        assert!(err.contains(key) && !err.contains("panicked"), "{key}: {err}");
        assert_ne!(out.status.code(), Some(134), "{key}: aborted instead of refusing");
    }
    // An open bind is fine with a token (or explicitly insecure).
    let cfg = dir.path().join("ok.toml");
    let clip = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/video_01.mp4");
    std::fs::write(&cfg, format!("[http]\nbind = \"0.0.0.0:9464\"\ntoken = \"a-long-token\"\n[[cameras]]\nid = \"c\"\nurl = \"{}\"\n", clip.display())).unwrap();
    let out = Command::new(bin()).args(["check", "--config"]).arg(&cfg).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
