//! Cameras that go wrong, against the real binary: a file whose path holds `#`, `%` and spaces
//! plays; a truncated mp4 ends as a failure that names the file and a hint, not as `ended` with
//! no frames; an RTSP server that hangs (SIGSTOP, so the TCP session stays open) is noticed by
//! the stall watchdog within `stall_timeout_s` and the camera reconnects once it resumes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_facestream")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        // SAFETY: plain signal to a child we own (it may be stopped).
        unsafe { libc::kill(self.0.id() as i32, libc::SIGCONT) };
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_config(dir: &Path, cameras: &str) -> std::process::Output {
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, format!("[http]\nenabled = false\n[gallery]\nstore = \"{}\"\n[[gallery.people]]\nname = \"MEDS_S029\"\nimages = [\"{}\"]\n{cameras}", dir.join("g.db").display(), fixture("meds-aa-S029-01.jpg").display())).unwrap();
    Command::new(bin()).args(["--log", "warn", "--config"]).arg(&cfg).args(["run", "--duration", "60"]).output().unwrap()
}

#[test]
fn a_path_with_hash_percent_and_spaces_plays() {
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("cam #1 50% off");
    std::fs::create_dir_all(&odd).unwrap();
    let clip = odd.join("door #2.avi");
    std::fs::copy(fixture("ff-region-face-motion.avi"), &clip).unwrap();
    let out = run_config(dir.path(), &format!("[[cameras]]\nid = \"door\"\nurl = \"{}\"\nrealtime = false\n", clip.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("\"person\":\"MEDS_S029\""), "the clip was played and its face named: {stdout}");
}

#[test]
fn a_truncated_mp4_is_reported_as_a_failure_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(fixture("video_01.mp4")).unwrap();
    let cut = dir.path().join("cut.mp4");
    // Cut inside the header (moov): nothing can be decoded, though the file opens.
    std::fs::write(&cut, &full[..2000]).unwrap();
    let out = run_config(dir.path(), &format!("[[cameras]]\nid = \"cut\"\nurl = \"{}\"\nrealtime = false\n", cut.display()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a file without a decodable frame is a failure: {err}");
    assert!(err.contains("cameras failed") && err.contains("cut.mp4"), "the error names the camera's file: {err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"state\":\"failed\""), "{stdout}");
    assert!(!stdout.contains("\"state\":\"ended\""), "not reported as a clean end: {stdout}");
}

fn camera_state(port: u16) -> Option<(String, u64)> {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let body = agent.get(&format!("http://127.0.0.1:{port}/api/cameras")).call().ok()?.body_mut().read_to_string().ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some((v[0]["state"].as_str()?.to_string(), v[0]["frames"].as_u64()?))
}

fn stalls(port: u16) -> f64 {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let text = agent.get(&format!("http://127.0.0.1:{port}/metrics")).call().ok().and_then(|mut r| r.body_mut().read_to_string().ok()).unwrap_or_default();
    text.lines().filter(|l| l.starts_with("facestream_camera_stalls_total")).filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()).sum()
}

#[test]
fn a_hung_rtsp_server_is_noticed_by_the_stall_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let rtsp_port = free_port();
    let server = Kill(Command::new(bin()).args(["--log", "warn", "serve-rtsp"]).arg(fixture("video_01.mp4")).args(["--port", &rtsp_port.to_string()]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let http = free_port();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!("[events]\nstdout = false\n[http]\nbind = \"127.0.0.1:{http}\"\n[gallery]\nstore = \"{}\"\n[[cameras]]\nid = \"door\"\nurl = \"rtsp://127.0.0.1:{rtsp_port}/cam\"\nrtsp_transport = \"tcp\"\nlatency_ms = 0\nstall_timeout_s = 2\n", dir.path().join("g.db").display()),
    )
    .unwrap();
    let _app = Kill(Command::new(bin()).args(["--log", "warn", "--config"]).arg(&cfg).arg("run").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let wait = |what: &str, secs: u64, pred: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !pred() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait("the camera to stream", 60, &|| camera_state(http).is_some_and(|(s, f)| s == "streaming" && f > 0));
    // SAFETY: plain signal to the server child.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGSTOP) };
    let stopped = Instant::now();
    wait("the stall to be noticed", 30, &|| stalls(http) >= 1.0);
    eprintln!("stall noticed {:?} after the server hung", stopped.elapsed());
    wait("the camera to leave `streaming`", 5, &|| camera_state(http).is_some_and(|(s, _)| s != "streaming"));
    unsafe { libc::kill(server.0.id() as i32, libc::SIGCONT) };
    wait("the camera to stream again", 40, &|| camera_state(http).is_some_and(|(s, _)| s == "streaming"));
}
