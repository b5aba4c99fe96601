//! Helpers shared by the integration tests that start real servers on 127.0.0.1.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Child;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Kills a server process when the test ends, however it ends.
pub struct Proc(pub Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server program installed by `make setup` (Debian package of the same name).
pub fn find_program(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} is not installed: run `make setup` (it installs the Debian package {name})");
}

/// Checks that every metric the Grafana board's panels titled `prefix...` query is in
/// `exposition` (Prometheus text); how many queries were checked.
pub fn dashboard_panels_exposed(prefix: &str, exposition: &str) -> usize {
    let board = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/grafana/facestream.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(board).unwrap()).unwrap();
    let mut checked = 0;
    for p in dashboard["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row" && p["title"].as_str().unwrap_or("").starts_with(prefix)) {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("facestream_") {
                let name: String = expr[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                assert!(exposition.lines().any(|l| l.starts_with(&name)), "panel `{}` queries {name}, which /metrics does not expose", p["title"]);
                checked += 1;
            }
        }
    }
    checked
}
